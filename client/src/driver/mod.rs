//! IO drivers. Each is one file with one loop that moves bytes between sockets and the shared
//! [`crate::engine::Engine`]; a driver must:
//!
//! * open a socket for every slot in [`Work::connect`](crate::engine::Work) (bound to
//!   [`Engine::connect_target`]'s source address, if any), call `connect_started`, and report
//!   the outcome with `connected` (or `connect_setup_failed` when no connect was started);
//! * feed every received byte, in order, to `Engine::recv`, report EOF (`eof`), errors
//!   (`io_error`) and bytes written (`sent`), and write whatever `take_output` returns, in
//!   order, without loss;
//! * read while `wants_read`; when `wants_close`, stop everything on the socket, close it, and
//!   call `closed` (only then is the slot reused);
//! * call `tick` at the top of each turn (and often enough while handling a large batch that
//!   latencies stay exact to the microsecond), `poll` + `take_work` once a turn, block at most
//!   until the engine's `deadline`, and return when `finished`, with nothing left in flight.
//!
//! The turn itself is written once, in [`run_loop`]; a driver implements [`Driver`]: how it
//! connects a slot, how it moves a slot's bytes (`pump`), and how it waits for and handles what
//! its IO model reports (`turn`).

pub mod epoll;
pub mod uring;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::Instant;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::args::RunConfig;
use crate::engine::{Engine, Interval, ThreadPlan, Timeline, Work};

/// Everything a loop thread is started with.
pub struct ThreadCtx {
    pub cfg: Arc<RunConfig>,
    pub plan: ThreadPlan,
    /// The loop reports here once it is set up (or why it could not be).
    pub ready: SyncSender<Result<(), String>>,
    /// Then it waits here for the run's time line (`None`: another loop failed, stop).
    pub go: Receiver<Option<Timeline>>,
    /// Interval histograms go here.
    pub tx: Sender<Interval>,
    /// Set when the run must stop early.
    pub stop: Arc<AtomicBool>,
}

impl ThreadCtx {
    /// Report the setup's outcome; on success wait for the start and build the engine.
    pub fn start(self, setup: Result<(), String>) -> Option<Engine> {
        let ok = setup.is_ok();
        let _ = self.ready.send(setup);
        if !ok {
            return None;
        }
        let tl = self.go.recv().ok().flatten()?;
        Some(Engine::new(self.cfg, self.plan, tl, self.tx, self.stop))
    }
}

impl ThreadCtx {
    /// Setup failed in `what` with `e`: report it (the run stops) and return the error, named.
    pub fn setup_failed(self, e: io::Error, what: &str) -> io::Error {
        let e = io::Error::new(e.kind(), format!("{what}: {e}"));
        self.start(Err(e.to_string()));
        e
    }
}

/// Re-read the clock every this many events or completions within one turn, so that latencies
/// stay exact while a large batch is handled.
pub const TICK_EVERY: usize = 32;

/// What [`run_loop`] needs of a driver: the IO it lowers the engine's work to.
pub trait Driver {
    /// The engine the loop serves.
    fn engine(&mut self) -> &mut Engine;
    /// Open `slot`'s socket and start its connect (reporting the outcome to the engine).
    fn connect(&mut self, slot: u32);
    /// Bring `slot`'s IO in line with what the engine wants (send, read, close).
    fn pump(&mut self, slot: u32);
    /// Wait for IO to be ready or complete, at most until `deadline`, and handle it.
    fn turn(&mut self, deadline: Instant) -> io::Result<()>;
    /// At the top of every turn, before new work is taken.
    fn before_work(&mut self) {}
}

/// The one client loop: read the clock, let the engine pace and time out, act on its work
/// (connects, slots to pump) until it makes no more, return when it is finished, else wait for
/// the IO model and handle what it reports.
pub fn run_loop(d: &mut impl Driver) -> io::Result<()> {
    let mut work = Work::default();
    d.engine().tick(Instant::now());
    loop {
        d.engine().poll(Instant::now());
        d.before_work();
        // Acting on work can make more (a failed connect closes, a close frees a slot).
        for _ in 0..4 {
            d.engine().take_work(&mut work);
            if work.connect.is_empty() && work.pump.is_empty() {
                break;
            }
            for slot in work.connect.drain(..) {
                d.connect(slot);
            }
            for slot in work.pump.drain(..) {
                d.pump(slot);
            }
        }
        if d.engine().finished() {
            return Ok(());
        }
        let deadline = d.engine().deadline();
        d.turn(deadline)?;
    }
}

/// Handle a turn's events or completions in order, re-reading the clock every [`TICK_EVERY`].
pub fn handle_all<D: Driver, T>(d: &mut D, items: impl IntoIterator<Item = T>, f: fn(&mut D, T)) {
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 && i % TICK_EVERY == 0 {
            d.engine().tick(Instant::now());
        }
        f(d, item);
    }
}

/// The socket for `slot`'s connect, bound as the engine says, and its target; when it cannot be
/// made, the engine is told (`connect_setup_failed`) and there is none.
pub fn slot_socket(eng: &mut Engine, slot: u32, nonblocking: bool) -> Option<(Socket, SocketAddr)> {
    let (target, bind) = eng.connect_target(slot);
    eng.counters.syscalls.other += 2 + u64::from(bind.is_some());
    match new_socket(target, bind, nonblocking) {
        Ok(s) => Some((s, target)),
        Err(e) => {
            eng.connect_setup_failed(slot, &e);
            None
        }
    }
}

/// A TCP socket for `target`, bound to `bind` if given, with TCP_NODELAY; close-on-exec.
/// io_uring wants it blocking (io_uring honours O_NONBLOCK by failing with EAGAIN instead of
/// waiting); epoll wants it non-blocking.
pub fn new_socket(
    target: SocketAddr,
    bind: Option<SocketAddr>,
    nonblocking: bool,
) -> io::Result<Socket> {
    let ty = if nonblocking {
        Type::STREAM.nonblocking()
    } else {
        Type::STREAM
    };
    let s = Socket::new(Domain::for_address(target), ty, Some(Protocol::TCP))?;
    s.set_tcp_nodelay(true)?;
    if let Some(b) = bind {
        if b.is_ipv4() && b.port() == 0 {
            // Let connect choose the port by the whole 4-tuple: fast at any count, and more
            // connections per source address than a bind-time search allows.
            ringlab_runtime::net::set_bind_address_no_port(&s)?;
        }
        if let Err(e) = s.bind(&SockAddr::from(b)) {
            if e.raw_os_error() == Some(rustix::io::Errno::ADDRNOTAVAIL.raw_os_error()) {
                // At bind, EADDRNOTAVAIL means a foreign address, not a lack of ports.
                return Err(io::Error::new(
                    io::ErrorKind::AddrNotAvailable,
                    format!("--bind {} is not an address of this host", b.ip()),
                ));
            }
            return Err(e);
        }
    }
    Ok(s)
}
