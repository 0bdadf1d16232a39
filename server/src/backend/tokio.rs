//! The tokio backend: tokio's multi-thread work-stealing runtime (epoll through mio), one worker
//! per listed CPU (pinned in `on_thread_start` unless `--no-pin`), a task per connection. This
//! is the runtime most Rust users would pick: idiomatic code, a read buffer per connection,
//! `write_all` of the session's output, the runtime's own timers for the session's deadline.
//!
//! Statistics live in a per-worker-thread [`LoopCore`] (tasks may migrate between workers;
//! each call lands in the core of the thread it runs on), collected when the workers stop.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ringlab_proto::Action;
use ringlab_runtime::cpus::pin_current_thread;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::pool::{accept_loop, drain, CoreAccess, Phases};
use crate::core::{shutdown_watch, stopped, ConnCore, LoopCore, PoolCtx};
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
            let cpu = cores[next.fetch_add(1, Ordering::Relaxed) % cores.len()];
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
        .max_blocking_threads(1)
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
        let mut accepts = Vec::new();
        for l in &ctx.listeners {
            let std_l = std::net::TcpListener::from(l.as_fd().try_clone_to_owned()?);
            let l = tokio::net::TcpListener::from_std(std_l)?;
            accepts.push(tokio::spawn(accept_conns(l, phases.clone(), live.clone())));
        }
        // Ready means every worker is pinned and named: wait (briefly) for them to start.
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        while started.load(Ordering::Acquire) < cores.len() && Instant::now() < deadline {
            tokio::task::yield_now().await;
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if let Some(e) = pin_failed.lock().expect("lock").take() {
            let _ = ctx.ready.send(Err(e));
            return Ok(());
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

async fn accept_conns(l: tokio::net::TcpListener, phases: Phases, live: Arc<AtomicUsize>) {
    accept_loop(&WorkerCore, &l, phases.stop.clone(), |s, conn| {
        live.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(serve(s, conn, phases.clone(), live.clone()));
    })
    .await
}

async fn serve(
    mut s: tokio::net::TcpStream,
    mut conn: ConnCore,
    mut phases: Phases,
    live: Arc<AtomicUsize>,
) {
    let cfg = with_core(|c| c.cfg.clone());
    let mut buf = vec![0u8; 16 * 1024];
    let (mut stopping, mut aborting) = (false, false);
    // Output taken from the session and not yet written, and how much of it was.
    let mut out: Option<(bytes::Bytes, usize)> = None;
    let (mut rd, mut wr) = s.split();
    loop {
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
    with_core(|c| c.stats.closed += 1);
    live.fetch_sub(1, Ordering::AcqRel);
}
