//! The tokio-uring backend: one `tokio_uring` runtime per listed CPU (thread pinned), a
//! SO_REUSEPORT listener each, a task per connection with owned-buffer reads and writes. What an
//! ergonomic io_uring runtime costs and gives.
//!
//! Known limits of tokio-uring 0.5, measured against the raw `uring` backend: no multishot
//! accept or recv, no provided-buffer rings (each connection owns a read buffer while a read is
//! posted), one `io_uring_enter` per runtime park rather than per batch of our choosing, and no
//! `DEFER_TASKRUN`.
//!
//! Completion-model pitfall handled here: dropping a posted read future (say, because a timer
//! branch of `select!` won) would cancel the operation, and bytes the kernel had already copied
//! would be lost. So a connection keeps its read and write futures alive across turns (a write
//! races the session's deadline too, so a peer that never reads cannot pin it forever) and only
//! ever drops them when the connection closes.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use ringlab_proto::Action;
use tokio::sync::watch;
use tokio_uring::net::{TcpListener, TcpStream};

use super::pool::{accept_loop, drain, CoreAccess, Phases};
use crate::core::{shutdown_watch, stopped, ConnCore, LoopCore, LoopCtx};
use crate::stats::LoopStats;

const READ_BUF: usize = 16 * 1024;

type Core = Rc<RefCell<LoopCore>>;

/// Run one tokio-uring runtime until shutdown; returns its statistics.
pub fn run(ctx: LoopCtx) -> io::Result<LoopStats> {
    let core: Core = Rc::new(RefCell::new(LoopCore::new(&ctx)));
    let mut b = tokio_uring::builder();
    b.entries(ctx.args.sq_entries);
    let rt = match tokio_uring::Runtime::new(&b) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ctx.ready.send(Err(format!("tokio-uring runtime: {e}")));
            return Err(e);
        }
    };
    let grace = ctx.args.grace;
    let c2 = core.clone();
    rt.block_on(async move {
        let std_l = std::net::TcpListener::from(ctx.listener.as_fd().try_clone_to_owned()?);
        let listener = TcpListener::from_std(std_l);
        let rx = shutdown_watch(ctx.waker.clone(), ctx.shutdown.clone())?;
        let mut stop = rx.clone();
        let (abort_tx, abort) = watch::channel(false);
        let phases = Phases {
            stop: rx.clone(),
            abort,
        };
        let live = Rc::new(RefCell::new(0usize));
        let (core, live2) = (c2.clone(), live.clone());
        let accept = tokio_uring::spawn(async move {
            accept_loop(&core, &listener, rx, |s, conn| {
                *live2.borrow_mut() += 1;
                tokio_uring::spawn(serve(s, conn, core.clone(), phases.clone(), live2.clone()));
            })
            .await
        });
        let _ = ctx.ready.send(Ok(()));
        let _ = stopped(&mut stop).await;
        let _ = accept.await;
        // Connections finish on their own (the sessions drain) within --grace, or are aborted.
        drain(grace, || *live.borrow(), &abort_tx).await;
        Ok::<(), io::Error>(())
    })?;
    let stats = core.borrow().stats.clone();
    Ok(stats)
}

type ReadFut<'a> = Pin<Box<dyn Future<Output = tokio_uring::BufResult<usize, Vec<u8>>> + 'a>>;
type WriteFut<'a> = Pin<Box<dyn Future<Output = tokio_uring::BufResult<usize, Bytes>> + 'a>>;

async fn serve(
    s: TcpStream,
    mut conn: ConnCore,
    core: Core,
    mut phases: Phases,
    live: Rc<RefCell<usize>>,
) {
    let with = |f: &mut dyn FnMut(&mut LoopCore)| core.with(f);
    let cfg = core.borrow().cfg.clone();
    let mut spare = Some(vec![0u8; READ_BUF]);
    let mut read: Option<ReadFut<'_>> = None;
    // The write in flight: its future, and how long the buffer it writes is.
    let mut write: Option<(WriteFut<'_>, usize)> = None;
    // Output taken from the session and not yet written (the part after a short write).
    let mut out: Option<Bytes> = None;
    let (mut stopping, mut aborting) = (false, false);
    loop {
        if out.is_none() && write.is_none() {
            out = conn.session.take_output();
        }
        if let Some(b) = out.take() {
            if write.is_none() {
                let len = b.len();
                write = Some((Box::pin(s.write(b).submit()), len));
            } else {
                out = Some(b);
            }
        }
        match conn.session.action() {
            Action::Close => break,
            Action::ShutdownWrite if write.is_none() => {
                let _ = s.shutdown(std::net::Shutdown::Write);
                with(&mut |c| c.write_shutdown(&mut conn));
                continue;
            }
            _ => {}
        }
        if read.is_none() && conn.session.wants_read(&cfg) {
            let buf = spare.take().unwrap_or_else(|| vec![0u8; READ_BUF]);
            read = Some(Box::pin(s.read(buf)));
        }
        let deadline = conn.session.deadline(&cfg);
        tokio::select! {
            (r, buf) = async { write.as_mut().expect("guarded").0.as_mut().await }, if write.is_some() => {
                let len = write.take().map_or(0, |w| w.1);
                match r {
                    Ok(n) if n > 0 => {
                        with(&mut |c| c.sent(&mut conn, n));
                        if n < len {
                            out = Some(buf.slice(n..len)); // short write: the rest goes next
                        }
                    }
                    _ => {
                        conn.session.on_send_failed();
                        with(&mut |c| c.stats.conn_errors += 1);
                    }
                }
            }
            (r, buf) = async { read.as_mut().expect("guarded").await }, if read.is_some() => {
                read = None;
                match r {
                    Ok(0) => with(&mut |c| c.peer_eof(&mut conn)),
                    Ok(n) => with(&mut |c| c.recv(&mut conn, &buf[..n])),
                    Err(_) => with(&mut |c| c.conn_error(&mut conn)),
                }
                spare = Some(buf);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                with(&mut |c| c.timeout(&mut conn));
            }
            _ = stopped(&mut phases.stop), if !stopping => {
                stopping = true;
                conn.session.begin_shutdown();
            }
            _ = stopped(&mut phases.abort), if !aborting => {
                aborting = true;
                conn.session.abort();
            }
            else => break,
        }
    }
    drop(read);
    drop(write);
    {
        let mut c = core.borrow_mut();
        c.stats.closed += 1;
        c.publish();
    }
    *live.borrow_mut() -= 1;
}
