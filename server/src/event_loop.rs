//! The one event loop of the epoll and uring backends, over a narrow IO [`Driver`]. (It lives
//! here, not in `runtime`, because it drives the server's connection state: [`LoopCore`],
//! [`ConnCore`] and the protocol session; the order of a turn and the shutdown phases it
//! follows are `ringlab_runtime::event_loop`'s.)
//!
//! Written once here: the turn (wait, read the clock, dispatch), timer firing, shutdown (stop
//! accepting, every session told to finish) and the end of the grace period (every connection
//! aborted), accept back-off and the `--max-conns` wait (held sockets served first). A driver
//! holds only its IO: how it accepts, receives, sends, shuts down the write side and closes.

use std::io;
use std::os::fd::OwnedFd;
use std::time::Duration;

use ringlab_runtime::event_loop::{Slots, Turn};

use crate::core::{timer_key_parts, ConnCore, LoopCore, LoopCtx};
use crate::stats::LoopStats;

/// The IO of one loop: what a backend provides to [`EventLoop`].
pub trait Driver {
    /// A connection: its session and the driver's IO state for it.
    type Conn: AsMut<ConnCore>;
    /// The connection table.
    type Conns: Slots<Conn = Self::Conn>;
    /// The connections, in slots with generations.
    fn conns(&mut self) -> &mut Self::Conns;
    /// Submit what is queued and wait for IO, at most `timeout`.
    fn wait(&mut self, core: &mut LoopCore, timeout: Option<Duration>) -> io::Result<()>;
    /// Hand what the last wait produced to the connections.
    fn dispatch(&mut self, core: &mut LoopCore);
    /// Bring the connection's IO in line with what its session wants (read, write, shut
    /// down, close), and arm its timer.
    fn pump(&mut self, core: &mut LoopCore, slot: u32);
    /// Serve a socket accepted earlier and held at `--max-conns`.
    fn add(&mut self, core: &mut LoopCore, fd: OwnedFd, conn: ConnCore);
    /// Accept (or arm the accept) as far as the limits allow.
    fn accept(&mut self, core: &mut LoopCore);
    /// Whether no accept is under way, so that [`Driver::accept`] may be called at the retry
    /// time.
    fn accept_idle(&self) -> bool;
    /// Stop accepting for good (shutdown).
    fn stop_accepting(&mut self, core: &mut LoopCore);
}

/// Serve the sockets held at `--max-conns`, as far as slots have freed: a driver calls this
/// first thing in [`Driver::accept`].
pub fn admit_held(io: &mut impl Driver, core: &mut LoopCore) {
    while let Some((fd, conn)) = core.unhold() {
        io.add(core, fd, conn);
    }
}

/// Report a failed setup to the starter and return the error, named by `what`.
pub fn setup_failed(ctx: &LoopCtx, what: &str, e: io::Error) -> io::Error {
    let e = io::Error::new(e.kind(), format!("{what}: {e}"));
    let _ = ctx.ready.send(Err(e.to_string()));
    e
}

/// One loop: its context, the state every backend shares, and its IO.
pub struct EventLoop<D> {
    pub ctx: LoopCtx,
    pub core: LoopCore,
    pub io: D,
}

impl<D: Driver> EventLoop<D> {
    /// A loop for `ctx` doing its IO through `io`.
    pub fn new(ctx: LoopCtx, io: D) -> Self {
        EventLoop {
            core: LoopCore::new(&ctx),
            ctx,
            io,
        }
    }

    /// Tell the starter the loop is ready, then run until it has shut down.
    pub fn run(&mut self) -> io::Result<()> {
        let _ = self.ctx.ready.send(Ok(()));
        let r = ringlab_runtime::event_loop::run(self);
        self.core.publish();
        r
    }

    /// The loop's statistics.
    pub fn stats(&self) -> LoopStats {
        self.core.stats.clone()
    }

    /// Every open connection in turn: `f` on its session, then the driver acts on it.
    fn each_conn(&mut self, f: impl Fn(&mut ConnCore)) {
        for slot in 0..self.io.conns().end() {
            if let Some((_, c)) = self.io.conns().open_at(slot) {
                f(c.as_mut());
                self.io.pump(&mut self.core, slot);
            }
        }
    }
}

impl<D: Driver> Turn for EventLoop<D> {
    fn shutdown_requested(&self) -> bool {
        self.ctx.shutdown_requested()
    }

    fn start_shutdown(&mut self) {
        self.core.begin_shutdown();
        self.io.stop_accepting(&mut self.core);
        self.each_conn(|c| c.session.begin_shutdown());
    }

    fn open(&mut self) -> usize {
        self.io.conns().count()
    }

    fn grace_over(&self, margin: Duration) -> bool {
        self.core
            .grace_deadline
            .is_some_and(|d| self.core.clock.now() >= d + margin)
    }

    fn abort_all(&mut self) {
        // Every connection, whatever names its socket (a descriptor or a fixed file).
        self.each_conn(|c| c.session.abort());
    }

    fn wait(&mut self) -> io::Result<()> {
        let timeout = self.core.wait_timeout();
        self.core.end_turn();
        self.io.wait(&mut self.core, timeout)?;
        self.core.tick();
        Ok(())
    }

    fn dispatch(&mut self) {
        self.io.dispatch(&mut self.core);
    }

    fn fire_timers(&mut self) {
        let expired = self.core.take_expired();
        for &(deadline, key) in &expired {
            let (slot, gen) = timer_key_parts(key);
            if let Some((g, c)) = self.io.conns().open_at(slot) {
                if g == gen && self.core.fire(c.as_mut(), deadline) {
                    self.io.pump(&mut self.core, slot);
                }
            }
        }
        self.core.put_expired(expired);
    }

    fn retry_accept(&mut self) {
        if self.io.accept_idle() && self.core.accept.retry_at.is_some() {
            let now = self.core.clock.now();
            if self.core.accept.ready(now) {
                self.io.accept(&mut self.core);
            }
        }
    }
}
