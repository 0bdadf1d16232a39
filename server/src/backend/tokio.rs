//! The tokio backend: tokio's multi-thread work-stealing runtime (epoll through mio), one worker
//! per listed CPU (pinned in `on_thread_start` unless `--no-pin`), a task per connection. This
//! is the runtime most Rust users would pick: idiomatic code, a read buffer per connection,
//! `write_all` of the session's output, the runtime's own timers for the session's deadline.
//!
//! Statistics live in a per-worker-thread [`LoopCore`] (tasks may migrate between workers;
//! each call lands in the core of the thread it runs on), collected when the workers stop.
//!
//! Files (`--root`) go where tokio sends all file IO: its blocking pool. Each file operation
//! the session asks for runs as [`files::exec`] inside `tokio::task::spawn_blocking` (openat2
//! beneath the root, statx, pread: plain blocking syscalls on a pool thread), and the
//! connection's task awaits the answer while it goes on writing the output the session has,
//! watching its deadline and shutdown. That is what `tokio::fs` itself does (a
//! `tokio::fs::File` runs every read through `spawn_blocking`), minus what `tokio::fs` cannot
//! do: it has no `openat2`, so no `RESOLVE_BENEATH`, and a symlink beneath the root could lead
//! out of it. The open file is an `Arc<OwnedFd>` so that the blocking task can own a clone.
//! The pool has up to `--file-threads` threads per worker; they are unpinned from any one CPU
//! (a new thread inherits the affinity of the worker that spawned it) and run anywhere on
//! `--cores`.

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ringlab_proto::files::{FileDone, FileOp};
use ringlab_proto::Action;
use ringlab_runtime::cpus::pin_current_thread;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::pool::{accept_loop, drain, file_failed, CoreAccess, Phases};
use crate::core::{shutdown_watch, stopped, ConnCore, LoopCore, PoolCtx};
use crate::files;
use crate::stats::LoopStats;

thread_local! {
    static CORE: RefCell<Option<LoopCore>> = const { RefCell::new(None) };
}

fn with_core<R>(f: impl FnOnce(&mut LoopCore) -> R) -> R {
    CORE.with(|c| {
        let mut c = c.borrow_mut();
        let core = c
            .as_mut()
            .expect("the worker's core is set in on_thread_start");
        core.tick();
        let r = f(core);
        // A task may await for long after this: what it did is on the board now.
        core.publish();
        r
    })
}

/// Run the runtime until shutdown; returns one [`LoopStats`] per worker thread.
pub fn run(ctx: PoolCtx) -> io::Result<Vec<LoopStats>> {
    let collected: Arc<Mutex<Vec<LoopStats>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let (cores, args, cfg) = (ctx.cores.clone(), ctx.args.clone(), ctx.cfg.clone());
    let limit = ctx.limit.clone();
    let board = ctx.board.clone();
    let pin = !args.no_pin;
    let pin_failed: Arc<Mutex<Option<String>>> = Arc::default();
    let started = Arc::new(AtomicUsize::new(0));
    let start = {
        let (pin_failed, cores, args, cfg, limit, board) = (
            pin_failed.clone(),
            cores.clone(),
            args.clone(),
            cfg.clone(),
            limit.clone(),
            board.clone(),
        );
        let started = started.clone();
        move || {
            // The workers start first, all of them when the runtime is built (`run` waits for
            // them before it accepts); any thread after them is one of the blocking pool's,
            // started on demand for file IO: no loop of its own, not pinned to one CPU.
            let index = next.fetch_add(1, Ordering::AcqRel);
            if index >= cores.len() {
                if pin {
                    unpin_to(&cores);
                }
                return;
            }
            let cpu = cores[index];
            // Name the worker after its CPU, as the other backends' loops are named.
            if let Ok(name) = std::ffi::CString::new(format!("ringlab-tokio-{cpu}")) {
                let _ = rustix::thread::set_name(&name);
            }
            if pin {
                if let Err(e) = pin_current_thread(cpu) {
                    pin_failed
                        .lock()
                        .expect("lock")
                        .get_or_insert(e.to_string());
                }
            }
            CORE.with(|c| {
                let mut core = LoopCore::with(cfg.clone(), &args, cpu, limit.clone());
                core.attach(board.as_ref());
                *c.borrow_mut() = Some(core)
            });
            started.fetch_add(1, Ordering::AcqRel);
        }
    };
    let stop = {
        let collected = collected.clone();
        move || {
            if let Some(core) = CORE.with(|c| c.borrow_mut().take()) {
                collected.lock().expect("lock").push(core.stats);
            }
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores.len())
        // The blocking pool does the file IO (`--root`): --file-threads per worker at most.
        .max_blocking_threads((args.file_threads as usize * cores.len()).max(1))
        .thread_name("ringlab-tokio")
        .on_thread_start(start)
        .on_thread_stop(stop)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ctx.ready.send(Err(format!("tokio runtime: {e}")));
            return Err(e);
        }
    };
    let grace = args.grace;
    let r = rt.block_on(async move {
        let rx = shutdown_watch(ctx.waker.clone(), ctx.shutdown.clone())?;
        let mut stop = rx.clone();
        let (abort_tx, abort) = watch::channel(false);
        let phases = Phases { stop: rx, abort };
        let live = Arc::new(AtomicUsize::new(0));
        // Ready means every worker is pinned and named: wait (briefly) for them to start. Only
        // then accept: no file IO, so no blocking-pool thread, can start before the workers
        // have (`start` tells them apart by their order).
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while started.load(Ordering::Acquire) < cores.len() && Instant::now() < deadline {
            tokio::task::yield_now().await;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if let Some(e) = pin_failed.lock().expect("lock").take() {
            let _ = ctx.ready.send(Err(e));
            return Ok(());
        }
        let mut accepts = Vec::new();
        for l in &ctx.listeners {
            let std_l = std::net::TcpListener::from(l.as_fd().try_clone_to_owned()?);
            let l = tokio::net::TcpListener::from_std(std_l)?;
            let root = ctx.root.clone();
            accepts.push(tokio::spawn(accept_conns(
                l,
                phases.clone(),
                live.clone(),
                root,
            )));
        }
        let _ = ctx.ready.send(Ok(()));
        let _ = stopped(&mut stop).await;
        for a in accepts {
            let _ = a.await;
        }
        // Connections finish on their own (the sessions drain) within --grace, or are aborted.
        drain(grace, || live.load(Ordering::Acquire), &abort_tx).await;
        Ok::<(), io::Error>(())
    });
    rt.shutdown_timeout(std::time::Duration::from_millis(100));
    r?;
    let stats = std::mem::take(&mut *collected.lock().expect("lock"));
    Ok(stats)
}

/// The core of the worker thread a task runs on.
struct WorkerCore;

impl CoreAccess for WorkerCore {
    fn with<R>(&self, f: impl FnOnce(&mut LoopCore) -> R) -> R {
        with_core(f)
    }
}

/// A blocking-pool thread's affinity: any CPU of the pool, not the one of the worker that
/// spawned it (best effort: on failure it keeps that worker's CPU).
fn unpin_to(cores: &[usize]) {
    let mut set = rustix::thread::CpuSet::new();
    for &c in cores {
        set.set(c);
    }
    let _ = rustix::thread::sched_setaffinity(None, &set);
}

async fn accept_conns(
    l: tokio::net::TcpListener,
    phases: Phases,
    live: Arc<AtomicUsize>,
    root: Option<Arc<OwnedFd>>,
) {
    accept_loop(&WorkerCore, &l, phases.stop.clone(), |s, conn| {
        live.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(serve(s, conn, phases.clone(), live.clone(), root.clone()));
    })
    .await
}

/// A file operation running on the blocking pool: its task, and the operation (to answer it
/// if the task fails).
type FileTask = (
    tokio::task::JoinHandle<Option<(FileDone, Option<OwnedFd>)>>,
    FileOp,
);

/// Start the session's next file operation on the blocking pool; `Close` just drops the file
/// (no blocking task holds it then: operations run one at a time). Returns the running
/// operation, or the answer when there was nothing to run.
fn start_file_op(
    op: FileOp,
    root: &Option<Arc<OwnedFd>>,
    file: &mut Option<Arc<OwnedFd>>,
) -> Result<FileTask, Option<FileDone>> {
    if op == FileOp::Close {
        *file = None;
        return Err(None);
    }
    let Some(root) = root.clone() else {
        return Err(file_failed(&op, rustix::io::Errno::BADF.raw_os_error()));
    };
    let f = file.clone();
    let task_op = op.clone();
    // tokio::fs would do the same: a blocking syscall on the blocking pool. It is not used
    // because it cannot open beneath a directory (no openat2 with RESOLVE_BENEATH).
    let task =
        tokio::task::spawn_blocking(move || files::exec(root.as_fd(), f.as_deref(), &task_op));
    Ok((task, op))
}

async fn serve(
    mut s: tokio::net::TcpStream,
    mut conn: ConnCore,
    mut phases: Phases,
    live: Arc<AtomicUsize>,
    root: Option<Arc<OwnedFd>>,
) {
    let cfg = with_core(|c| c.cfg.clone());
    let mut buf = vec![0u8; 16 * 1024];
    let (mut stopping, mut aborting) = (false, false);
    // Output taken from the session and not yet written, and how much of it was.
    let mut out: Option<(bytes::Bytes, usize)> = None;
    // The connection's open file, and the file operation running on the blocking pool.
    let mut file: Option<Arc<OwnedFd>> = None;
    let mut fop: Option<FileTask> = None;
    let (mut rd, mut wr) = s.split();
    loop {
        while fop.is_none() {
            let Some(op) = conn.session.take_file_op() else {
                break;
            };
            match start_file_op(op, &root, &mut file) {
                Ok(t) => fop = Some(t),
                Err(None) => {}
                Err(Some(done)) => with_core(|c| c.file_done(&mut conn, done)),
            }
        }
        if out.is_none() {
            out = conn.session.take_output().map(|b| (b, 0));
        }
        match conn.session.action() {
            Action::Close => break,
            Action::ShutdownWrite if out.is_none() => {
                let _ = wr.shutdown().await;
                with_core(|c| c.write_shutdown(&mut conn));
                continue;
            }
            _ => {}
        }
        let want = conn.session.wants_read(&cfg);
        let deadline = conn.session.deadline(&cfg);
        // Writes race the session's deadline too: a peer that never reads cannot pin the task.
        let pending = out.as_ref().map_or(&[][..], |(b, off)| &b[*off..]);
        tokio::select! {
            r = wr.write(pending), if out.is_some() => match r {
                Ok(n) if n > 0 => {
                    with_core(|c| c.sent(&mut conn, n));
                    if let Some((b, off)) = &mut out {
                        *off += n;
                        if *off >= b.len() {
                            out = None;
                        }
                    }
                }
                _ => {
                    out = None;
                    conn.session.on_send_failed();
                    with_core(|c| c.stats.conn_errors += 1);
                }
            },
            r = async { (&mut fop.as_mut().expect("guarded").0).await }, if fop.is_some() => {
                let (_, op) = fop.take().expect("guarded");
                let done = match r {
                    Ok(Some((done, opened))) => {
                        if let Some(fd) = opened {
                            file = Some(Arc::new(fd));
                        }
                        Some(done)
                    }
                    // The blocking task panicked or was cancelled (the runtime is stopping).
                    Ok(None) | Err(_) => file_failed(&op, rustix::io::Errno::IO.raw_os_error()),
                };
                if let Some(done) = done {
                    with_core(|c| c.file_done(&mut conn, done));
                }
            }
            r = rd.read(&mut buf), if want => match r {
                Ok(0) => with_core(|c| c.peer_eof(&mut conn)),
                Ok(n) => with_core(|c| c.recv(&mut conn, &buf[..n])),
                Err(_) => with_core(|c| c.conn_error(&mut conn)),
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                with_core(|c| c.timeout(&mut conn));
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
    // A file operation still running finishes on its own and drops what it holds (a file it
    // opened included); the connection's file closes here.
    drop(fop);
    drop(file);
    with_core(|c| c.stats.closed += 1);
    live.fetch_sub(1, Ordering::AcqRel);
}
