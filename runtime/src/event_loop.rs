//! The skeleton every event loop runs, whatever its IO model: one turn after another (wait for
//! IO, hand it out, fire timers, accept again when allowed), and the phases of shutdown
//! (serving; draining for the grace period; aborting what is left; exit).
//!
//! A loop provides the steps through [`Turn`]; this module fixes their order and the shutdown
//! rules, once, for every loop. It knows nothing of connections or protocols: the server's
//! `event_loop` module implements [`Turn`] over its connection state and a narrow IO driver
//! (epoll or io_uring).

use std::io;
use std::time::Duration;

use crate::ledger::{Ledger, SlotSock};
use crate::slab::Slab;

/// How long past the grace period a loop waits for the connections it aborted to be closed
/// (a ring's closes complete asynchronously) before it exits anyway.
pub const ABORT_MARGIN: Duration = Duration::from_secs(1);

/// The steps of one loop.
pub trait Turn {
    /// Whether shutdown was requested (looked at once a turn).
    fn shutdown_requested(&self) -> bool;
    /// Stop accepting and ask every connection to finish: the grace period starts.
    fn start_shutdown(&mut self);
    /// Connections open or closing.
    fn open(&mut self) -> usize;
    /// Whether the grace period has been over for `margin` (or more).
    fn grace_over(&self, margin: Duration) -> bool;
    /// Abort every connection that is left.
    fn abort_all(&mut self);
    /// Submit what is queued and wait for IO, at most until the next deadline; then read the
    /// clock.
    fn wait(&mut self) -> io::Result<()>;
    /// Hand what is ready or complete to the connections.
    fn dispatch(&mut self);
    /// Fire the timers that are due.
    fn fire_timers(&mut self);
    /// Accept again if an accept back-off or the connection-limit wait is over.
    fn retry_accept(&mut self);
}

/// A loop's connections, in slots with generations: what the skeleton needs to visit them all
/// (at shutdown, at the end of the grace period) and to find the one a timer names.
pub trait Slots {
    /// What a slot holds.
    type Conn;
    /// The open (not closing) connection in `slot`, with its generation.
    fn open_at(&mut self, slot: u32) -> Option<(u32, &mut Self::Conn)>;
    /// One past the highest slot ever used.
    fn end(&self) -> u32;
    /// Connections open or closing.
    fn count(&self) -> usize;
}

impl<T> Slots for Slab<T> {
    type Conn = T;
    fn open_at(&mut self, slot: u32) -> Option<(u32, &mut T)> {
        self.get_slot(slot)
    }
    fn end(&self) -> u32 {
        self.capacity_slots()
    }
    fn count(&self) -> usize {
        self.len()
    }
}

impl<T: SlotSock, B> Slots for Ledger<T, B> {
    type Conn = T;
    fn open_at(&mut self, slot: u32) -> Option<(u32, &mut T)> {
        self.open(slot)
    }
    fn end(&self) -> u32 {
        self.capacity_slots()
    }
    fn count(&self) -> usize {
        self.len()
    }
}

/// Run `t` until it has shut down: every connection finished, or aborted when the grace period
/// is over (and gone, or [`ABORT_MARGIN`] later in any case).
pub fn run(t: &mut impl Turn) -> io::Result<()> {
    let mut draining = false;
    loop {
        if !draining && t.shutdown_requested() {
            draining = true;
            t.start_shutdown();
        }
        if draining {
            if t.open() == 0 {
                return Ok(());
            }
            if t.grace_over(Duration::ZERO) {
                t.abort_all();
                if t.open() == 0 || t.grace_over(ABORT_MARGIN) {
                    return Ok(());
                }
            }
        }
        t.wait()?;
        t.dispatch();
        t.fire_timers();
        t.retry_accept();
    }
}

/// Wait for the setup reports of `loops` loop threads (each sends one on `ready`, or drops its
/// sender when it dies first); the first failure, if any, once all have reported.
pub fn setup_failure(
    ready: &std::sync::mpsc::Receiver<Result<(), String>>,
    loops: usize,
) -> Option<String> {
    let mut failure = None;
    for _ in 0..loops {
        match ready.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                failure.get_or_insert(e);
            }
            Err(_) => {
                failure.get_or_insert_with(|| "a loop exited during setup".to_string());
            }
        }
    }
    failure
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loop on a virtual clock: `conns` connections, each finishing `finish_in` turns after
    /// shutdown (never, if `None`); aborting closes one only `close_in` turns later.
    #[derive(Default)]
    struct Fake {
        turn: u32,
        shutdown_at: u32,
        grace_turns: u32,
        conns: u32,
        finish_in: Option<u32>,
        close_in: u32,
        shutdown_started: Option<u32>,
        aborted_at: Option<u32>,
        log: Vec<&'static str>,
    }

    impl Turn for Fake {
        fn shutdown_requested(&self) -> bool {
            self.turn >= self.shutdown_at
        }
        fn start_shutdown(&mut self) {
            self.shutdown_started = Some(self.turn);
            self.log.push("start_shutdown");
        }
        fn open(&mut self) -> usize {
            let s = self.shutdown_started.unwrap_or(u32::MAX);
            let finished = self
                .finish_in
                .is_some_and(|f| self.turn >= s.saturating_add(f));
            let closed = self
                .aborted_at
                .is_some_and(|a| self.turn >= a + self.close_in);
            if finished || closed {
                0
            } else {
                self.conns as usize
            }
        }
        fn grace_over(&self, margin: Duration) -> bool {
            // One turn is a virtual 100 ms.
            let extra = (margin.as_millis() / 100) as u32;
            self.shutdown_started
                .is_some_and(|s| self.turn >= s + self.grace_turns + extra)
        }
        fn abort_all(&mut self) {
            self.aborted_at.get_or_insert(self.turn);
            self.log.push("abort_all");
        }
        fn wait(&mut self) -> io::Result<()> {
            self.turn += 1;
            assert!(self.turn < 1000, "the loop never ended");
            Ok(())
        }
        fn dispatch(&mut self) {}
        fn fire_timers(&mut self) {}
        fn retry_accept(&mut self) {}
    }

    #[test]
    fn drains_then_exits_without_aborting() {
        let mut f = Fake {
            shutdown_at: 3,
            grace_turns: 50,
            conns: 2,
            finish_in: Some(4),
            ..Fake::default()
        };
        run(&mut f).unwrap();
        assert_eq!(f.turn, 7);
        assert_eq!(f.log, ["start_shutdown"]);
    }

    #[test]
    fn aborts_at_the_end_of_grace_and_waits_for_the_closes() {
        let mut f = Fake {
            shutdown_at: 1,
            grace_turns: 5,
            conns: 1,
            close_in: 3,
            ..Fake::default()
        };
        run(&mut f).unwrap();
        assert_eq!(f.aborted_at, Some(6));
        assert_eq!(f.turn, 9, "exits once the aborted connection is closed");
    }

    #[test]
    fn gives_up_on_closes_after_the_margin() {
        let mut f = Fake {
            shutdown_at: 1,
            grace_turns: 5,
            conns: 1,
            close_in: 500,
            ..Fake::default()
        };
        run(&mut f).unwrap();
        assert_eq!(
            f.turn,
            1 + 5 + 10,
            "grace, then the 1 s margin of ten 100 ms turns"
        );
    }
}
