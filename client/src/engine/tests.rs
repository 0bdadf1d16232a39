//! The engine on a virtual clock: a fake driver and a fake echo (or HTTP) server in one
//! [`Pair`], after quinn-proto's `tests/util.rs`. Every time is a fixed base plus an offset, and
//! the loop wakes exactly at [`Engine::deadline`] or when the server answers, so every assertion
//! about time is exact and no test depends on how fast the machine is.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver};

use clap::Parser;
use hdrhistogram::Histogram;

use super::*;
use crate::args::{Args, RequestKind};
use crate::stats::{new_hist, record};

const MS: Duration = Duration::from_millis(1);
const US: Duration = Duration::from_micros(1);
/// Echo message size in these tests (`--size`).
const SIZE: usize = 16;

/// How the plan and the time line are set up.
struct Setup {
    args: Vec<&'static str>,
    rate: Option<f64>,
    requests: Option<u64>,
    warmup: Duration,
    /// A timed run's end (`None`: ends by --requests or never).
    end: Option<Duration>,
}

impl Setup {
    fn new(args: &[&'static str]) -> Setup {
        Setup {
            args: args.to_vec(),
            rate: None,
            requests: None,
            warmup: Duration::ZERO,
            end: None,
        }
    }
}

/// One request as the fake server saw it.
#[derive(Clone, Copy, Debug)]
struct Seen {
    slot: u32,
    /// When the driver took it from the engine.
    sent: Instant,
    /// When the server answers it (`None`: never).
    due: Option<Instant>,
}

/// An engine, the driver around it and the server behind it, on one virtual clock.
struct Pair {
    eng: Engine,
    t0: Instant,
    now: Instant,
    /// Per slot: request bytes the server has not answered yet, oldest first.
    unanswered: Vec<VecDeque<u8>>,
    /// Every request, in the order the server got it.
    seen: Vec<Seen>,
    /// The server's answer time for request `k`, from when it was sent (`None`: never).
    service: Box<dyn FnMut(usize) -> Option<Duration>>,
    /// Requests answered so far (indexes into `seen`), with when.
    answered: Vec<(usize, Instant)>,
    rx: Receiver<Interval>,
    work: Work,
    /// Bytes of one request.
    req_size: usize,
}

impl Pair {
    fn new(setup: Setup) -> Pair {
        let mut argv = vec!["ringlab-client", "127.0.0.1:9", "--size", "16"];
        argv.extend(&setup.args);
        let cfg = Args::parse_from(argv).resolve().expect("resolves");
        // The virtual clock's base: the only reading of a real clock in these tests.
        let t0 = Instant::now();
        let tl = Timeline {
            start: t0,
            measure_start: t0 + setup.warmup,
            end: setup.end.map(|e| t0 + e),
        };
        let plan = ThreadPlan {
            index: 0,
            cpu: 0,
            conn_ids: (0..cfg.conns).collect(),
            rate: setup.rate,
            requests: setup.requests,
            connect_rate: None,
            phase: Duration::ZERO,
        };
        let (tx, rx) = mpsc::channel();
        let slots = cfg.conns;
        let req_size = match &cfg.request {
            RequestKind::Echo { size, .. } => *size,
            RequestKind::Http { requests, .. } => requests[0].len(),
        };
        let stop = Arc::new(AtomicBool::new(false));
        Pair {
            eng: Engine::new(Arc::new(cfg), plan, tl, tx, stop),
            t0,
            now: t0,
            unanswered: vec![VecDeque::new(); slots],
            seen: Vec::new(),
            service: Box::new(|_| None),
            answered: Vec::new(),
            rx,
            work: Work::default(),
            req_size,
        }
    }

    /// A turn begins at `t0 + at`.
    fn at(&mut self, at: Duration) {
        self.at_instant(self.t0 + at);
    }

    fn at_instant(&mut self, t: Instant) {
        assert!(t >= self.now, "the virtual clock only moves forward");
        self.now = t;
        self.eng.tick(t);
    }

    /// The rest of the turn: poll, then act on the work as a driver does.
    fn end_turn(&mut self) {
        self.eng.poll(self.now);
        self.act();
    }

    /// A whole turn at `t0 + at` with no input.
    fn turn(&mut self, at: Duration) {
        self.at(at);
        self.end_turn();
    }

    /// Connects succeed at once; output goes to the server; closes complete at once.
    fn act(&mut self) {
        loop {
            self.eng.take_work(&mut self.work);
            if self.work.connect.is_empty() && self.work.pump.is_empty() {
                return;
            }
            let mut work = std::mem::take(&mut self.work);
            for slot in work.connect.drain(..) {
                self.eng.connect_started(slot);
                self.eng.connected(slot, Ok(()), self.now);
                self.pump(slot);
            }
            for slot in work.pump.drain(..) {
                self.pump(slot);
            }
            self.work = work;
        }
    }

    fn pump(&mut self, slot: u32) {
        if self.eng.wants_close(slot) {
            self.unanswered[slot as usize].clear();
            self.eng.closed(slot);
            return;
        }
        while let Some(b) = self.eng.take_output(slot) {
            self.eng.sent(b.len());
            assert_eq!(b.len() % self.req_size, 0, "whole requests");
            for _ in 0..b.len() / self.req_size {
                let due = (self.service)(self.seen.len()).map(|d| self.now + d);
                self.seen.push(Seen {
                    slot,
                    sent: self.now,
                    due,
                });
            }
            self.unanswered[slot as usize].extend(&b[..]);
        }
    }

    /// `n` bytes of `slot`'s unanswered requests come back, `corrupt` flipping one of them.
    fn echo(&mut self, slot: u32, n: usize, corrupt: Option<usize>) {
        let mut data: Vec<u8> = self.unanswered[slot as usize].drain(..n).collect();
        if let Some(i) = corrupt {
            data[i] ^= 0x20;
        }
        self.eng.recv(slot, &data, self.now);
        self.pump(slot);
    }

    /// Bytes slot `slot` has sent that are still unanswered.
    fn unanswered(&self, slot: u32) -> usize {
        self.unanswered[slot as usize].len()
    }

    /// Requests outstanding on `slot`, as the engine sees them.
    fn inflight(&self, slot: u32) -> usize {
        self.eng.slots[slot as usize]
            .conn
            .as_ref()
            .map_or(0, |c| c.inflight())
    }

    /// Run the loop until it may exit: wake at the engine's deadline or at the server's next
    /// answer, whichever is first; the server answers every request due by then, in order.
    fn run_to_end(&mut self) {
        for _ in 0..100_000 {
            if self.eng.finished() {
                return;
            }
            let next_answer = self
                .seen
                .iter()
                .skip(self.answered.len())
                .find_map(|s| s.due);
            let wake = next_answer.map_or(self.eng.deadline(), |a| a.min(self.eng.deadline()));
            self.at_instant(wake.max(self.now));
            while let Some(&s) = self.seen.get(self.answered.len()) {
                match s.due {
                    Some(due) if due <= self.now => {
                        self.answered.push((self.answered.len(), self.now));
                        self.echo(s.slot, SIZE, None);
                    }
                    _ => break,
                }
            }
            self.end_turn();
        }
        panic!("the loop did not finish");
    }

    fn finish(self) -> ThreadResult {
        self.finish_with_intervals().0
    }

    /// The result, and every interval the engine sent.
    fn finish_with_intervals(self) -> (ThreadResult, Vec<Interval>) {
        let r = self.eng.into_result(self.now);
        (r, self.rx.try_iter().collect())
    }
}

/// A histogram of the given latencies, as the engine records them.
fn hist(latencies: impl IntoIterator<Item = Duration>) -> Histogram<u64> {
    let mut h = new_hist();
    for d in latencies {
        record(&mut h, record::us(d));
    }
    h
}

#[test]
fn closed_loop_sends_the_next_request_when_the_response_is_complete() {
    let mut p = Pair::new(Setup::new(&["-c", "2"]));
    p.turn(Duration::ZERO);
    // One request per connection, no more.
    assert_eq!((p.unanswered(0), p.unanswered(1)), (SIZE, SIZE));
    assert_eq!((p.inflight(0), p.inflight(1)), (1, 1));

    // Half a response: nothing new goes out.
    p.at(MS);
    p.echo(0, SIZE / 2, None);
    p.end_turn();
    assert_eq!(p.unanswered(0), SIZE / 2);
    assert_eq!(p.inflight(0), 1);

    // The rest: the next request goes out at once, on that connection only.
    p.at(3 * MS);
    p.echo(0, SIZE / 2, None);
    p.end_turn();
    assert_eq!((p.unanswered(0), p.unanswered(1)), (SIZE, SIZE));
    assert_eq!((p.inflight(0), p.inflight(1)), (1, 1));
    assert_eq!(p.eng.counters.requests_sent, 3);
    assert_eq!(p.eng.counters.responses, 1);

    // Its latency runs from its send at 0 to the turn that completed it.
    let r = p.finish();
    assert_eq!(r.corrected, hist([3 * MS]));
    assert_eq!(r.raw, hist([3 * MS]));
    assert_eq!(r.counters.measured, 1);
}

#[test]
fn open_loop_sends_on_schedule_and_measures_from_the_intended_time() {
    // 1000 requests/s on one connection with one request in flight: one intended time per
    // millisecond. The server answers in 100 µs, except request 2, which takes 5 ms; the four
    // intended times that fall due meanwhile wait, and go out one after another once it is in.
    let mut p = Pair::new(Setup {
        rate: Some(1000.0),
        requests: Some(10),
        ..Setup::new(&["-c", "1"])
    });
    p.service = Box::new(|k| Some(if k == 2 { 5 * MS } else { 100 * US }));
    p.run_to_end();

    let intended: Vec<Instant> = (0..10).map(|k| p.t0 + k * MS).collect();
    assert_eq!(p.seen.len(), 10);
    // On time while the server keeps up: sent at the intended time.
    for (k, (seen, intended)) in p.seen.iter().zip(&intended).take(3).enumerate() {
        assert_eq!(seen.sent, *intended, "request {k}");
    }
    // Request 2's answer comes at 7 ms; 3..=6 are due by then and go out back to back.
    let sent_late: Vec<Duration> = (3..7).map(|k| p.seen[k].sent - p.t0).collect();
    assert_eq!(sent_late, [7 * MS, 7100 * US, 7200 * US, 7300 * US]);
    // Request 7 goes out behind 6, at 7.4 ms; from 8 on, on time again.
    assert_eq!(p.seen[7].sent - p.t0, 7400 * US);
    assert_eq!(p.seen[8].sent, intended[8]);
    assert_eq!(p.seen[9].sent, intended[9]);

    let done: Vec<Instant> = p.answered.iter().map(|&(_, t)| t).collect();
    let sent: Vec<Instant> = p.seen.iter().map(|s| s.sent).collect();
    let r = p.finish();
    // Coordinated omission corrected: from the intended time; raw: from the real send.
    assert_eq!(
        r.corrected,
        hist((0..10).map(|k| done[k] - intended[k])),
        "corrected latency runs from the intended send time"
    );
    assert_eq!(r.raw, hist((0..10).map(|k| done[k] - sent[k])));
    // The wait behind the stall shows in the corrected latency of requests 2..=6 (5, 4.1, 3.2,
    // 2.3 and 1.4 ms), and in the raw latency of request 2 only.
    assert_eq!(r.corrected.count_between(1000, u64::MAX), 5);
    assert_eq!(r.raw.count_between(1000, u64::MAX), 1);
    assert_eq!(r.lag, hist((0..10).map(|k| sent[k] - intended[k])));
    assert_eq!(r.counters.measured, 10);
    assert_eq!(r.counters.unsent, 0);
}

#[test]
fn a_request_times_out_at_its_virtual_time() {
    // The server never answers; the loop sleeps until each deadline the engine gives.
    // 700 ms: sweeps every 35 ms, and the timeout falls between interval boundaries.
    let mut p = Pair::new(Setup::new(&["-c", "1", "--timeout", "700ms"]));
    p.turn(Duration::ZERO);
    assert_eq!(p.inflight(0), 1);
    let sweep = p.eng.sweep_every;
    let fired = loop {
        let wake = p.eng.deadline();
        assert!(wake > p.now, "a deadline in the future");
        p.at_instant(wake);
        p.end_turn();
        if p.eng.errors.timeouts > 0 {
            break p.now - p.t0;
        }
        assert!(p.now - p.t0 < Duration::from_secs(2), "no timeout");
    };
    // Not before the timeout, and no later than one sweep after it.
    let timeout = 700 * MS;
    assert!(fired >= timeout, "fired at {fired:?}");
    assert!(fired <= timeout + sweep, "fired at {fired:?}");
    assert_eq!(p.eng.errors.timeouts, 1);
    // The connection was closed; it failed without answering, so it reconnects after a back-off.
    assert_eq!(p.eng.counters.closes, 1);
    assert_eq!(p.inflight(0), 0);
    assert!(p.eng.slots[0].retry_at.is_some());
}

#[test]
fn a_corrupted_echo_byte_is_a_data_error() {
    let mut p = Pair::new(Setup::new(&["-c", "1"]));
    p.turn(Duration::ZERO);
    p.at(MS);
    p.echo(0, SIZE, Some(5));
    p.end_turn();
    assert_eq!(p.eng.errors.echo_mismatch, 1);
    assert_eq!(p.eng.errors.requests_lost, 1);
    assert_eq!(p.eng.counters.responses, 0);
    assert!(p.eng.first_data_error.is_some());
    // The connection was closed (and is reopened later, after a back-off).
    assert_eq!(p.eng.counters.closes, 1);
    let r = p.finish();
    assert_eq!(r.corrected.len(), 0);
}

#[test]
fn warmup_requests_are_not_measured() {
    // Warm-up ends at 10 ms; the server answers in 4 ms. Requests sent at 0, 4 and 8 ms are
    // warm-up (the last one completes at 12 ms, while measuring); those from 12 ms on count.
    let mut p = Pair::new(Setup {
        warmup: 10 * MS,
        requests: Some(3),
        ..Setup::new(&["-c", "1"])
    });
    p.service = Box::new(|_| Some(4 * MS));
    p.run_to_end();
    let sent: Vec<Duration> = p.seen.iter().map(|s| s.sent - p.t0).collect();
    assert_eq!(
        sent,
        [Duration::ZERO, 4 * MS, 8 * MS, 12 * MS, 16 * MS, 20 * MS]
    );
    let r = p.finish();
    assert_eq!(r.counters.responses, 6);
    assert_eq!(r.counters.measured, 3);
    assert_eq!(r.corrected, hist([4 * MS; 3]));
    assert_eq!(r.counters.measured_bytes, 3 * SIZE as u64);
}

#[test]
fn a_response_ended_by_the_close_counts_in_its_interval() {
    let mut p = Pair::new(Setup::new(&["-c", "1", "--proto", "http"]));
    p.turn(Duration::ZERO);
    assert_eq!(p.inflight(0), 1);
    // No Content-Length: the body runs to the close, which completes the response.
    let resp = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhello";
    p.at(2 * MS);
    p.eng.recv(0, resp, p.now);
    assert_eq!(p.eng.counters.responses, 0);
    p.eng.eof(0);
    p.pump(0);
    p.end_turn();
    assert_eq!(p.eng.counters.responses, 1);
    assert_eq!(p.eng.counters.status.get(&200), Some(&1));
    let (r, intervals) = p.finish_with_intervals();
    assert_eq!(r.corrected, hist([2 * MS]));
    assert_eq!(r.counters.measured_bytes, resp.len() as u64);
    // The interval log's transfer adds up to the total.
    let interval_bytes: u64 = intervals.iter().map(|iv| iv.bytes).sum();
    assert_eq!(interval_bytes, r.counters.measured_bytes);
}

#[test]
fn requests_carry_the_fresh_reading_and_responses_the_turns_time() {
    let mut p = Pair::new(Setup::new(&["-c", "1"]));
    p.turn(Duration::ZERO);
    // The turn began at 3 ms; the driver reaches this response late in its batch, at 3.5 ms.
    p.at(3 * MS);
    let data: Vec<u8> = p.unanswered[0].drain(..).collect();
    p.eng.recv(0, &data, p.t0 + 3500 * US);
    p.pump(0);
    p.at(6 * MS);
    p.echo(0, SIZE, None);
    let r = p.finish();
    // The first request: sent at 0, done in the turn of 3 ms. The one issued in its place: sent
    // at 3.5 ms (not at the turn's 3 ms), done at 6 ms.
    assert_eq!(r.corrected, hist([3 * MS, 2500 * US]));
}

#[test]
fn a_loop_that_wakes_after_the_end_counts_every_intended_request() {
    // 1000 requests/s for 10 ms: ten intended times, 0..=9 ms. The server answers in 100 µs;
    // the loop runs every turn to 7 ms, then stalls and next wakes at 12 ms, past the end.
    // Requests 8 and 9 were due before the end and never sent: they are unsent, not lost from
    // the count (sent + unsent = the schedule's intended requests).
    let mut p = Pair::new(Setup {
        rate: Some(1000.0),
        end: Some(10 * MS),
        ..Setup::new(&["-c", "1"])
    });
    p.service = Box::new(|_| Some(100 * US));
    for ms in 0..8 {
        p.turn(ms * MS);
        p.at(ms * MS + 100 * US);
        p.echo(0, SIZE, None);
        p.end_turn();
    }
    assert_eq!(p.eng.counters.requests_sent, 8);
    p.turn(12 * MS);
    assert_eq!(
        p.eng.counters.requests_sent, 8,
        "nothing is sent after the end"
    );
    let r = p.finish();
    assert_eq!(
        r.counters.unsent, 2,
        "the two requests due before the end were never sent"
    );
    assert_eq!(r.counters.requests_sent + r.counters.unsent, 10);
}
