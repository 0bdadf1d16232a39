//! The blocking backend: the baseline the seed notes argue against. A fixed pool of
//! `--workers` OS threads, each serving one connection at a time with blocking reads and
//! writes; one accept thread feeds a bounded queue, where waiting connections queue up as in the
//! seed's pool. `--workers 1` is the seed's synchronous server. A delay blocks its worker, as a
//! synchronous server's would.
//!
//! Each worker owns a [`LoopCore`] (its statistics are one row of the per-core table).
//!
//! Files (`--root`): the worker performs each file operation the session asks for itself, with
//! plain blocking syscalls ([`files::exec`]: openat2 beneath the root, statx, pread), between
//! its socket reads and writes and in the order asked; a read that misses the page cache blocks
//! the worker, as it would block a synchronous server. The open file lives with the connection
//! and is closed when the session says so, or with the connection.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ringlab_proto::files::FileOp;
use ringlab_proto::Action;
use ringlab_runtime::cpus::pin_current_thread;
use rustix::event::{poll, PollFd, PollFlags};

use super::pool::{accept_failed, file_failed};
use crate::core::{ConnCore, LoopCore, PoolCtx, ACCEPT_BACKOFF, LIMIT_POLL};
use crate::files;
use crate::stats::LoopStats;

/// How often a blocked worker looks up to see whether the server is shutting down.
const SHUTDOWN_POLL: Duration = Duration::from_millis(100);

/// Run the pool until shutdown; returns one [`LoopStats`] per worker.
pub fn run(ctx: PoolCtx) -> io::Result<Vec<LoopStats>> {
    let ctx = Arc::new(ctx);
    let workers = ctx.args.workers.max(1);
    let (tx, rx) = sync_channel::<(TcpStream, ConnCore)>(ctx.args.backlog.max(1) as usize);
    let rx = Arc::new(Mutex::new(rx));
    let mut handles = Vec::new();
    for w in 0..workers {
        let cpu = ctx.cores[w % ctx.cores.len()];
        let (ctx, rx) = (ctx.clone(), rx.clone());
        let h = thread::Builder::new()
            .name(format!("ringlab-blk-{w}"))
            .spawn(move || worker(&ctx, cpu, &rx))?;
        handles.push(h);
    }
    let _ = ctx.ready.send(Ok(()));
    let accept_stats = accept_loop(&ctx, tx);
    let mut stats = vec![accept_stats];
    for h in handles {
        match h.join() {
            Ok(Ok(s)) => stats.push(s),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a blocking worker panicked")),
        }
    }
    Ok(stats)
}

/// Accept until shutdown, handing connections to the workers (blocking when the queue is full).
fn accept_loop(ctx: &PoolCtx, tx: std::sync::mpsc::SyncSender<(TcpStream, ConnCore)>) -> LoopStats {
    let mut core = LoopCore::with(ctx.cfg.clone(), &ctx.args, ctx.cores[0], ctx.limit.clone());
    core.attach(ctx.board.as_ref());
    let listener = &ctx.listeners[0];
    while !ctx.shutdown_requested() {
        core.tick_publish();
        if !core.may_accept() {
            // Echo at --max-conns: accept nothing until a slot frees.
            thread::sleep(LIMIT_POLL);
            core.accept.retry_at = None;
            continue;
        }
        let mut fds = [
            PollFd::new(&**listener, PollFlags::IN),
            PollFd::new(&ctx.waker, PollFlags::IN),
        ];
        let _ = poll(&mut fds, None);
        ctx.waker.drain();
        loop {
            core.tick_publish();
            if !core.may_accept() {
                core.accept.retry_at = None;
                break;
            }
            core.stats.syscalls.accept += 1;
            match rustix::net::accept_with(&**listener, rustix::net::SocketFlags::CLOEXEC) {
                Ok(fd) => {
                    let conn = loop {
                        core.tick_publish();
                        if let Some(c) = core.admit() {
                            break Some(c);
                        }
                        if ctx.shutdown_requested() {
                            break None;
                        }
                        thread::sleep(LIMIT_POLL);
                    };
                    let Some(conn) = conn else {
                        return core.stats;
                    };
                    if tx.send((TcpStream::from(fd), conn)).is_err() {
                        return core.stats;
                    }
                }
                Err(rustix::io::Errno::AGAIN) => break,
                Err(e) => {
                    core.tick_publish();
                    if accept_failed(&mut core, &io::Error::from(e)) {
                        thread::sleep(ACCEPT_BACKOFF);
                    }
                    break;
                }
            }
        }
    }
    // Dropping `tx` lets idle workers see the end of the queue.
    core.stats
}

fn worker(
    ctx: &PoolCtx,
    cpu: usize,
    rx: &Mutex<Receiver<(TcpStream, ConnCore)>>,
) -> io::Result<LoopStats> {
    if !ctx.args.no_pin {
        pin_current_thread(cpu).map_err(|e| io::Error::other(e.to_string()))?;
    }
    let mut core = LoopCore::with(ctx.cfg.clone(), &ctx.args, cpu, ctx.limit.clone());
    core.attach(ctx.board.as_ref());
    loop {
        let next = rx.lock().expect("queue lock").recv_timeout(SHUTDOWN_POLL);
        match next {
            Ok((s, conn)) => {
                serve(ctx, &mut core, s, conn);
                core.publish();
            }
            Err(RecvTimeoutError::Timeout) => {
                if ctx.shutdown_requested() {
                    // Serve what is queued already, then stop.
                    while let Ok((s, conn)) = rx.lock().expect("queue lock").try_recv() {
                        serve(ctx, &mut core, s, conn);
                    }
                    break;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    Ok(core.stats)
}

fn serve(ctx: &PoolCtx, core: &mut LoopCore, mut s: TcpStream, mut conn: ConnCore) {
    let cfg = core.cfg.clone();
    let mut buf = vec![0u8; 16 * 1024];
    let mut stopping = false;
    // Output taken from the session and not yet written, and how much of it was.
    let mut out: Option<(bytes::Bytes, usize)> = None;
    // The connection's open file (`--root`); dropped, so closed, with the connection.
    let mut file: Option<OwnedFd> = None;
    loop {
        core.tick_publish();
        if !stopping && ctx.shutdown_requested() {
            stopping = true;
            core.begin_shutdown();
            conn.session.begin_shutdown();
        }
        if stopping && core.grace_over() {
            // The grace period is over: abort, as the event loops do.
            conn.session.abort();
        }
        if out.is_none() {
            out = conn.session.take_output().map(|b| (b, 0));
        }
        match conn.session.action() {
            Action::Close => break,
            Action::ShutdownWrite if out.is_none() => {
                core.stats.syscalls.shutdown += 1;
                let _ = s.shutdown(std::net::Shutdown::Write);
                core.write_shutdown(&mut conn);
                continue;
            }
            _ => {}
        }
        let deadline = conn.session.deadline(&cfg);
        let now = Instant::now();
        if deadline.is_some_and(|d| d <= now) {
            core.timeout(&mut conn);
            continue;
        }
        if let Some(op) = conn.session.take_file_op() {
            // Files: blocking syscalls on the worker, in the order the session asked.
            file_op(ctx, core, &mut conn, &mut file, op);
            continue;
        }
        let wait = deadline
            .map_or(SHUTDOWN_POLL, |d| (d - now).min(SHUTDOWN_POLL))
            .max(Duration::from_micros(1));
        if let Some((b, off)) = &mut out {
            // A write bounded by the session's deadline: a peer that never reads cannot pin the
            // worker past its idle timeout.
            let _ = s.set_write_timeout(Some(wait));
            core.stats.syscalls.send += 1;
            let r = s.write(&b[*off..]);
            core.tick_publish();
            match r {
                Ok(n) if n > 0 => {
                    core.sent(&mut conn, n);
                    *off += n;
                    if *off >= b.len() {
                        out = None;
                    }
                }
                Err(e) if timed_out(&e) => {}
                _ => {
                    out = None;
                    conn.session.on_send_failed();
                    core.stats.conn_errors += 1;
                }
            }
            continue;
        }
        if !conn.session.wants_read(&cfg) {
            // Nothing to read (or not allowed to): the worker just waits for the deadline.
            thread::sleep(wait);
            continue;
        }
        let _ = s.set_read_timeout(Some(wait.max(Duration::from_micros(1))));
        core.stats.syscalls.recv += 1;
        let got = s.read(&mut buf);
        // The read blocked: the time the bytes arrived is now, not the loop's top, or a
        // `--delay` measured from a stale clock would answer early.
        core.tick_publish();
        match got {
            Ok(0) => core.peer_eof(&mut conn),
            Ok(n) => core.recv(&mut conn, &buf[..n]),
            Err(e) if timed_out(&e) => {}
            Err(_) => core.conn_error(&mut conn),
        }
    }
    core.stats.syscalls.close += 1;
    core.stats.closed += 1;
}

/// Perform one file operation on the worker (it may block on the disk) and feed the answer to
/// the session. `Close` drops the file and has no answer.
fn file_op(
    ctx: &PoolCtx,
    core: &mut LoopCore,
    conn: &mut ConnCore,
    file: &mut Option<OwnedFd>,
    op: FileOp,
) {
    core.stats.syscalls.other += 1;
    if op == FileOp::Close {
        *file = None;
        return;
    }
    let answer = match ctx.root.as_deref() {
        Some(root) => files::exec(root.as_fd(), file.as_ref(), &op).map(|(done, opened)| {
            if opened.is_some() {
                *file = opened;
            }
            done
        }),
        None => file_failed(&op, rustix::io::Errno::BADF.raw_os_error()),
    };
    // The operation may have blocked: the session sees the time it returned.
    core.tick_publish();
    if let Some(done) = answer {
        core.file_done(conn, done);
    }
}

/// A blocking read or write that returned for its timeout (the socket's `SO_RCVTIMEO` or
/// `SO_SNDTIMEO`, set to the session's next deadline) or a signal, not for a failure.
fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}
