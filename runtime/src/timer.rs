//! A hashed timer wheel: O(1) insert, expiry in tick order, lazy cancellation.
//!
//! Each loop owns one. Entries carry a key (a connection slot) and the deadline they were set
//! for; the owner keeps the deadline it currently wants per key and ignores expiries that no
//! longer match it (lazy cancellation: re-arming is an insert, cancelling is nothing at all).

use std::time::{Duration, Instant};

/// A timer wheel with `SLOTS` buckets of `tick` each; later deadlines wait in their bucket for
/// the right lap.
#[derive(Debug)]
pub struct TimerWheel {
    start: Instant,
    tick: Duration,
    slots: Vec<Vec<(Instant, u64)>>,
    /// The next tick not yet processed.
    cursor: u64,
    len: usize,
    earliest: Option<Instant>,
}

const SLOTS: usize = 512;

impl TimerWheel {
    /// A wheel with 1 ms ticks starting at `now`.
    pub fn new(now: Instant) -> Self {
        Self::with_tick(now, Duration::from_millis(1))
    }

    /// A wheel with the given tick.
    pub fn with_tick(now: Instant, tick: Duration) -> Self {
        TimerWheel {
            start: now,
            tick,
            slots: (0..SLOTS).map(|_| Vec::new()).collect(),
            cursor: 0,
            len: 0,
            earliest: None,
        }
    }

    fn tick_of(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.start);
        (d.as_nanos() / self.tick.as_nanos()) as u64
    }

    /// Arm a timer for `key` at `deadline`.
    pub fn insert(&mut self, deadline: Instant, key: u64) {
        // A deadline in a tick already processed goes in the cursor's bucket: it fires next poll.
        let t = self.tick_of(deadline).max(self.cursor);
        self.slots[(t % SLOTS as u64) as usize].push((deadline, key));
        self.len += 1;
        self.earliest = Some(self.earliest.map_or(deadline, |e| e.min(deadline)));
    }

    /// Entries armed and not yet expired (including lazily cancelled ones).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is armed.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The earliest armed deadline (a lower bound: cancelled entries count), for the loop's wait.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.earliest
    }

    /// Move every entry whose deadline is at or before `now` into `expired` as `(deadline, key)`.
    pub fn poll(&mut self, now: Instant, expired: &mut Vec<(Instant, u64)>) {
        if self.len == 0 {
            self.cursor = self.tick_of(now);
            self.earliest = None;
            return;
        }
        match self.earliest {
            Some(e) if e <= now => {}
            _ => return,
        }
        let now_tick = self.tick_of(now);
        // At most one lap of buckets holds everything up to `now`.
        let last = now_tick.min(self.cursor + SLOTS as u64 - 1);
        let mut t = self.cursor;
        while t <= last {
            let bucket = &mut self.slots[(t % SLOTS as u64) as usize];
            let mut i = 0;
            while i < bucket.len() {
                if bucket[i].0 <= now {
                    expired.push(bucket.swap_remove(i));
                    self.len -= 1;
                } else {
                    i += 1;
                }
            }
            t += 1;
        }
        // Ticks wholly in the past are done; the current one may still hold later entries.
        self.cursor = now_tick;
        self.earliest = self.find_earliest();
    }

    /// The earliest deadline: walk the buckets from the cursor; the first bucket holding an
    /// entry of the current lap holds the earliest one (later buckets of this lap are later
    /// ticks). Only when no entry falls within one lap are all entries scanned.
    fn find_earliest(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        for t in self.cursor..self.cursor + SLOTS as u64 {
            let bucket = &self.slots[(t % SLOTS as u64) as usize];
            let in_lap = bucket
                .iter()
                .map(|e| e.0)
                .filter(|&d| self.tick_of(d).max(self.cursor) == t)
                .min();
            if in_lap.is_some() {
                return in_lap;
            }
        }
        self.slots.iter().flat_map(|b| b.iter().map(|e| e.0)).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_order_and_not_early() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let ms = Duration::from_millis;
        w.insert(t0 + ms(30), 3);
        w.insert(t0 + ms(10), 1);
        w.insert(t0 + ms(2000), 9); // beyond one lap
        let mut out = Vec::new();
        w.poll(t0 + ms(9), &mut out);
        assert!(out.is_empty());
        assert_eq!(w.next_deadline(), Some(t0 + ms(10)));
        w.poll(t0 + ms(10), &mut out);
        assert_eq!(out, vec![(t0 + ms(10), 1)]);
        out.clear();
        w.poll(t0 + ms(600), &mut out);
        assert_eq!(out, vec![(t0 + ms(30), 3)]);
        out.clear();
        w.poll(t0 + ms(1999), &mut out);
        assert!(out.is_empty(), "fired a timer one lap early");
        w.poll(t0 + ms(2000), &mut out);
        assert_eq!(out, vec![(t0 + ms(2000), 9)]);
        assert!(w.is_empty());
    }

    #[test]
    fn earliest_tracks_the_next_entry_across_laps() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let ms = Duration::from_millis;
        for i in 0..2000u64 {
            w.insert(t0 + ms(100 + (i * 7919) % 3000), i);
        }
        let mut out = Vec::new();
        let mut fired = 0;
        let mut last = t0;
        while !w.is_empty() {
            let next = w.next_deadline().expect("entries left");
            assert!(next >= last, "deadlines go backwards");
            out.clear();
            w.poll(next, &mut out);
            assert!(!out.is_empty(), "nothing fired at the announced deadline");
            assert!(out.iter().all(|(d, _)| *d <= next));
            fired += out.len();
            last = next;
        }
        assert_eq!(fired, 2000);
    }

    #[test]
    fn past_deadline_fires_next_poll() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(t0);
        let mut out = Vec::new();
        w.poll(t0 + Duration::from_millis(50), &mut out);
        w.insert(t0, 7);
        w.poll(t0 + Duration::from_millis(50), &mut out);
        assert_eq!(out, vec![(t0, 7)]);
    }
}
