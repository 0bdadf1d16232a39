//! Open-loop pacing, kept apart from the connection loop: a thread's share of `--rate` as a
//! sequence of intended send times. The loop asks which times are due; whether a connection
//! is free to send them is the loop's business, and any wait shows up as latency (measured from
//! the intended time) and as lag (actual minus intended send time).

use std::time::{Duration, Instant};

/// Evenly spaced intended send times: `start + phase + k / rate` for k = 0, 1, 2, …
#[derive(Clone, Debug)]
pub struct Schedule {
    start: Instant,
    phase_ns: f64,
    interval_ns: f64,
    k: u64,
    /// No intended time at or after this.
    until: Option<Instant>,
    /// At most this many in all.
    limit: Option<u64>,
}

impl Schedule {
    /// `rate` requests per second from `start + phase` on.
    pub fn new(start: Instant, rate: f64, phase: Duration) -> Schedule {
        Schedule {
            start,
            phase_ns: phase.as_nanos() as f64,
            interval_ns: 1e9 / rate,
            k: 0,
            until: None,
            limit: None,
        }
    }

    /// Produce no intended time at or after `t`.
    pub fn stop_at(&mut self, t: Instant) {
        self.until = Some(t);
    }

    /// Produce at most `n` intended times from now on.
    pub fn limit(&mut self, n: u64) {
        self.limit = Some(self.k + n);
    }

    fn at(&self, k: u64) -> Instant {
        let ns = self.phase_ns + k as f64 * self.interval_ns;
        self.start + Duration::from_nanos(ns as u64)
    }

    /// The next intended time, if the schedule has not ended.
    pub fn next(&self) -> Option<Instant> {
        if self.limit.is_some_and(|l| self.k >= l) {
            return None;
        }
        let t = self.at(self.k);
        match self.until {
            Some(u) if t >= u => None,
            _ => Some(t),
        }
    }

    /// Whether no intended time is left.
    pub fn ended(&self) -> bool {
        self.next().is_none()
    }

    /// Take the intended times due at `now`, calling `f` with each, in order.
    pub fn take_due(&mut self, now: Instant, mut f: impl FnMut(Instant)) {
        while let Some(t) = self.next() {
            if t > now {
                break;
            }
            self.k += 1;
            f(t);
        }
    }

    /// How many intended times fall before `t`.
    pub fn count_before(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.start).as_nanos() as f64 - self.phase_ns;
        if d <= 0.0 {
            0
        } else {
            (d / self.interval_ns).ceil() as u64
        }
    }

    /// Intended times produced so far.
    pub fn produced(&self) -> u64 {
        self.k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evenly_spaced_and_independent_of_polling() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 1000.0, Duration::from_micros(250));
        let mut got = Vec::new();
        // Poll late and irregularly: the times stay on the grid.
        s.take_due(t0 + Duration::from_millis(3), |t| got.push(t));
        s.take_due(t0 + Duration::from_micros(3100), |t| got.push(t));
        s.take_due(t0 + Duration::from_micros(5300), |t| got.push(t));
        let us: Vec<u128> = got.iter().map(|t| (*t - t0).as_micros()).collect();
        assert_eq!(us, vec![250, 1250, 2250, 3250, 4250, 5250]);
        assert_eq!(s.produced(), 6);
    }

    #[test]
    fn ends() {
        let t0 = Instant::now();
        let mut s = Schedule::new(t0, 100.0, Duration::ZERO);
        s.stop_at(t0 + Duration::from_millis(50));
        let mut n = 0;
        s.take_due(t0 + Duration::from_secs(1), |_| n += 1);
        assert_eq!(n, 5);
        assert!(s.ended());
        let mut s = Schedule::new(t0, 100.0, Duration::ZERO);
        s.limit(3);
        s.take_due(t0 + Duration::from_secs(1), |_| n += 1);
        assert_eq!(n, 8);
        assert!(s.ended());
    }
}
