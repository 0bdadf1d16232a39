//! What the pool backends share: `tokio` and `tokio-uring` run a task per connection under an
//! async runtime and accept through [`accept_loop`]; `blocking` hands connections to worker
//! threads and shares the accept-error handling ([`accept_failed`]). The accept loop keeps the
//! backend contract of [`crate::backend`]: accept only while [`LoopCore::may_accept`] allows
//! (echo at `--max-conns`), wait for a slot when another loop took the last one, and back off
//! after EMFILE-like errors, all racing the shutdown signal. At shutdown the async pools
//! [`drain`]: connections finish within `--grace`, and what is left is aborted through
//! [`Phases::abort`] (the blocking workers check the grace deadline themselves).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ringlab_proto::files::{FileDone, FileOp};
use ringlab_runtime::event_loop::ABORT_MARGIN;

use tokio::sync::watch;

use crate::core::{
    accept_error_needs_backoff, stopped, ConnCore, LoopCore, ACCEPT_BACKOFF, LIMIT_POLL,
};

/// How a task reaches the [`LoopCore`] it runs under: tokio's worker-thread core (tasks migrate
/// between workers) or a tokio-uring loop's one core. Every access reads the clock first.
pub trait CoreAccess {
    /// Run `f` on the core.
    fn with<R>(&self, f: impl FnOnce(&mut LoopCore) -> R) -> R;
}

impl CoreAccess for Rc<RefCell<LoopCore>> {
    fn with<R>(&self, f: impl FnOnce(&mut LoopCore) -> R) -> R {
        let mut c = self.borrow_mut();
        c.tick();
        let r = f(&mut c);
        // A task may await for long after this: what it did is on the board now.
        c.publish();
        r
    }
}

/// A listener of an async runtime.
pub trait Acceptor {
    /// The connection type it yields.
    type Stream;
    /// Accept one connection.
    fn accept_one(&self) -> impl Future<Output = io::Result<Self::Stream>>;
}

impl Acceptor for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;
    async fn accept_one(&self) -> io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

impl Acceptor for tokio_uring::net::TcpListener {
    type Stream = tokio_uring::net::TcpStream;
    async fn accept_one(&self) -> io::Result<Self::Stream> {
        self.accept().await.map(|(s, _)| s)
    }
}

/// An accept failed with `err`: count it, and for errors worth a back-off (EMFILE, ENFILE,
/// ENOMEM...) start one and say so. Returns whether the caller must wait [`ACCEPT_BACKOFF`].
pub fn accept_failed(core: &mut LoopCore, err: &io::Error) -> bool {
    if !accept_error_needs_backoff(err) {
        return false;
    }
    core.stats.accept_errors += 1;
    let (cpu, now) = (core.stats.cpu, core.clock.now());
    core.accept.on_error(err, cpu, now);
    true
}

/// Sleep for `d` unless shutdown comes first; returns whether the sleep ran to its end.
async fn pause(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = stopped(stop) => false,
    }
}

/// Accept on `l` until shutdown, handing each admitted connection to `serve` (which spawns its
/// task). A connection accepted when another loop has just taken the last slot waits for one.
pub async fn accept_loop<C: CoreAccess, L: Acceptor>(
    core: &C,
    l: &L,
    mut stop: watch::Receiver<bool>,
    mut serve: impl FnMut(L::Stream, ConnCore),
) {
    loop {
        if !core.with(|c| c.may_accept()) {
            // Echo at --max-conns: accept nothing until a slot frees (the backlog holds the rest).
            if !pause(LIMIT_POLL, &mut stop).await {
                return;
            }
            continue;
        }
        let r = tokio::select! {
            r = l.accept_one() => r,
            _ = stopped(&mut stop) => return,
        };
        match r {
            Ok(s) => loop {
                if let Some(conn) = core.with(|c| c.admit()) {
                    serve(s, conn);
                    break;
                }
                if !pause(LIMIT_POLL, &mut stop).await {
                    return;
                }
            },
            Err(e) => {
                if core.with(|c| accept_failed(c, &e)) && !pause(ACCEPT_BACKOFF, &mut stop).await {
                    return;
                }
            }
        }
    }
}

/// What a connection task watches: shutdown (finish what is in flight, accept nothing new) and
/// the end of the grace period (abort what is left).
#[derive(Clone)]
pub struct Phases {
    pub stop: watch::Receiver<bool>,
    pub abort: watch::Receiver<bool>,
}

/// After shutdown: wait up to `grace` for the connections (`live()` of them) to finish, then
/// tell the rest to abort through `abort` and wait up to [`ABORT_MARGIN`] for them to close,
/// as the event loops do.
pub async fn drain(grace: Duration, live: impl Fn() -> usize, abort: &watch::Sender<bool>) {
    let tick = Duration::from_millis(5);
    let deadline = Instant::now() + grace;
    while live() > 0 && Instant::now() < deadline {
        tokio::time::sleep(tick).await;
    }
    if live() == 0 {
        return;
    }
    let _ = abort.send(true);
    let until = Instant::now() + ABORT_MARGIN;
    while live() > 0 && Instant::now() < until {
        tokio::time::sleep(tick).await;
    }
}

/// The answer to `op` when it could not be performed at all (its task failed, or no root was
/// given): the error `errno`, in the shape the session expects for that operation. `Close` has
/// no answer.
pub fn file_failed(op: &FileOp, errno: i32) -> Option<FileDone> {
    match op {
        FileOp::Open { .. } => Some(FileDone::Opened(Err(errno))),
        FileOp::Stat => Some(FileDone::Stat(Err(errno))),
        FileOp::Read { .. } => Some(FileDone::Read(Err(errno))),
        FileOp::Close => None,
    }
}
