//! What a thread measures: the latency histograms (corrected, raw, connect, lag), one-second
//! interval histograms sent to the main thread as they fill, and the CPU time used while
//! measuring. Wall time comes in as a value; the one clock read here is the thread's CPU clock,
//! at the start and the end of the measured time.

use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use super::types::Interval;
use crate::conn::Completion;
use crate::stats::{new_hist, record, Counters};

const SECOND: Duration = Duration::from_secs(1);

/// Microseconds, saturating.
pub(super) fn us(d: Duration) -> u64 {
    d.as_micros().min(u128::from(u64::MAX)) as u64
}

/// CPU time used by the calling thread.
pub fn thread_cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// One thread's measurements.
pub(super) struct Recorder {
    thread: usize,
    /// Requests meant to be sent from here on are measured.
    measure_start: Instant,
    measuring: bool,
    next_interval_at: Instant,
    interval_index: u64,
    interval_bytes: u64,
    /// When measuring started, and the thread's CPU time then.
    cpu_at_measure: Option<(Instant, Duration)>,
    /// CPU time used while measuring, and the wall time it measured for.
    cpu_result: (Duration, Duration),
    tx: Sender<Interval>,
    /// The interval being filled.
    icorrected: Histogram<u64>,
    iraw: Histogram<u64>,
    /// Totals: the sum of the intervals sent.
    pub(super) corrected: Histogram<u64>,
    pub(super) raw: Histogram<u64>,
    pub(super) connect: Histogram<u64>,
    pub(super) lag: Histogram<u64>,
    /// Last measured response.
    pub(super) last_completion: Option<Instant>,
}

impl Recorder {
    pub(super) fn new(thread: usize, measure_start: Instant, tx: Sender<Interval>) -> Recorder {
        Recorder {
            thread,
            measure_start,
            measuring: false,
            next_interval_at: measure_start,
            interval_index: 0,
            interval_bytes: 0,
            cpu_at_measure: None,
            cpu_result: (Duration::ZERO, Duration::ZERO),
            tx,
            icorrected: new_hist(),
            iraw: new_hist(),
            corrected: new_hist(),
            raw: new_hist(),
            connect: new_hist(),
            lag: new_hist(),
            last_completion: None,
        }
    }

    /// Whether responses are being recorded.
    pub(super) fn measuring(&self) -> bool {
        self.measuring
    }

    /// When the next interval boundary (or the start of measuring) is due.
    pub(super) fn next_boundary(&self) -> Instant {
        self.next_interval_at
    }

    /// The time is `now`: start measuring, or send the intervals that have ended.
    pub(super) fn tick(&mut self, now: Instant) {
        if now < self.next_interval_at {
            return;
        }
        if !self.measuring {
            self.measuring = true;
            self.cpu_at_measure = Some((now, thread_cpu_time()));
            self.next_interval_at = self.measure_start + SECOND;
            return;
        }
        while now >= self.next_interval_at {
            self.flush_interval(SECOND);
            self.next_interval_at += SECOND;
        }
    }

    fn flush_interval(&mut self, length: Duration) {
        let msg = Interval {
            thread: self.thread,
            index: self.interval_index,
            length,
            corrected: self.icorrected.clone(),
            raw: self.iraw.clone(),
            bytes: self.interval_bytes,
        };
        // Totals are the sum of the intervals.
        let _ = self.corrected.add(&self.icorrected);
        let _ = self.raw.add(&self.iraw);
        self.icorrected.reset();
        self.iraw.reset();
        self.interval_bytes = 0;
        self.interval_index += 1;
        let _ = self.tx.send(msg);
    }

    /// A response completed at `now`.
    pub(super) fn complete(&mut self, d: &Completion, now: Instant, counters: &mut Counters) {
        counters.responses += 1;
        if d.stamp.intended < self.measure_start || !self.measuring {
            return;
        }
        // Coordinated omission: latency runs from when the request was meant to go out.
        record(
            &mut self.icorrected,
            us(now.saturating_duration_since(d.stamp.intended)),
        );
        record(
            &mut self.iraw,
            us(now.saturating_duration_since(d.stamp.sent)),
        );
        counters.measured += 1;
        counters.measured_bytes += d.wire_bytes;
        self.interval_bytes += d.wire_bytes;
        self.last_completion = Some(now);
        if let Some(st) = d.status {
            *counters.status.entry(st).or_default() += 1;
        }
    }

    /// A scheduled request meant for `intended` went out at `sent`.
    pub(super) fn lag(&mut self, intended: Instant, sent: Instant) {
        if intended >= self.measure_start {
            record(&mut self.lag, us(sent.saturating_duration_since(intended)));
        }
    }

    /// A connect took `took`.
    pub(super) fn connect_time(&mut self, took: Duration) {
        record(&mut self.connect, us(took));
    }

    /// The thread stopped issuing requests at `now`: stop the CPU account.
    pub(super) fn stop_cpu(&mut self, now: Instant) {
        if let Some((t0, c0)) = self.cpu_at_measure.take() {
            self.cpu_result = (
                thread_cpu_time().saturating_sub(c0),
                now.saturating_duration_since(t0),
            );
        }
    }

    /// The loop has exited at `now`: send the last (partial) interval and close the accounts.
    /// Returns the CPU time used while measuring and the wall time it measured for.
    pub(super) fn finish(&mut self, now: Instant) -> (Duration, Duration) {
        if self.measuring {
            self.measuring = false;
            let length = now.saturating_duration_since(self.next_interval_at - SECOND);
            self.flush_interval(length.min(SECOND));
            self.next_interval_at = now + Duration::from_secs(3600);
        }
        self.stop_cpu(now);
        self.cpu_result
    }
}
