//! ringlab-server: a thread-per-core TCP server whose IO backends share every line of protocol
//! logic ([`ringlab_proto`]) and loop plumbing ([`core`]); they differ only in how they do IO
//! ([`backend`]).

pub mod backend;
pub mod config;
pub mod core;
pub mod event_loop;
pub mod files;
pub mod listener;
pub mod metrics;
pub mod procs;
pub mod stats;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use anyhow::Context;
use ringlab_runtime::cpus::pin_current_thread;
use ringlab_runtime::uring::UringUnavailable;
use ringlab_runtime::wake::Waker;

pub use config::{Args, Io};
pub use stats::{LoopStats, ServerStats};

/// What SIGHUP does: nothing can be re-read, so it changes nothing, and the server says so.
pub const HUP_LINE: &str = "SIGHUP: nothing to re-read (ringlab-server has no configuration file, and its flags cannot change while it runs); nothing changed: restart it to apply new flags";

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// io_uring cannot be used here (exit code 2).
    #[error(transparent)]
    Uring(#[from] UringUnavailable),
    /// Anything else (exit code 1).
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// A running server's loops, signals and address.
pub struct Running {
    /// The address listened on.
    pub listen: std::net::SocketAddr,
    /// The CPUs with a loop each.
    pub cores: ringlab_runtime::cpus::CpuList,
    shutdown: Arc<AtomicBool>,
    wakers: Vec<Waker>,
    threads: Vec<thread::JoinHandle<std::io::Result<Vec<LoopStats>>>>,
    args: Arc<Args>,
    /// Where `--metrics` is served.
    pub metrics: Option<std::net::SocketAddr>,
}

impl Running {
    /// The line scripts wait for.
    pub fn ready_line(&self) -> String {
        let mut l = format!(
            "ready listen={} io={} cores={} pid={}",
            self.listen,
            self.args.io.name(),
            self.cores,
            std::process::id()
        );
        if let Some(m) = self.metrics {
            l += &format!(" metrics=http://{m}/metrics");
        }
        l
    }

    /// What `--coalesce` does on this backend and kernel, in words (none when it is off).
    pub fn coalesce_line(&self) -> Option<String> {
        let a = &self.args;
        if a.coalesce.is_zero() {
            return None;
        }
        let how = match a.io {
            Io::Uring => "in the kernel: each io_uring_enter waits for the batch with a minimum wait (min_wait_usec, Linux 6.12)".to_string(),
            io => format!(
                "{} has no minimum wait: a turn that woke for fewer sleeps that long (1 ns timer slack), then collects what is ready without blocking",
                io.name()
            ),
        };
        let kernel = rustix::system::uname();
        Some(format!(
            "--coalesce {:?}: a turn that woke for fewer than {} completions or events waits up to {:?} for more; {how}; kernel {}",
            a.coalesce,
            a.coalesce_batch,
            a.coalesce,
            kernel.release().to_string_lossy()
        ))
    }

    /// A handle that asks the loops to shut down gracefully.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            shutdown: self.shutdown.clone(),
            wakers: self.wakers.clone(),
        }
    }

    /// Wait for every loop to finish and sum their statistics.
    pub fn join(self) -> Result<ServerStats, ServerError> {
        let mut per_core = Vec::new();
        let mut first_err = None;
        for (i, t) in self.threads.into_iter().enumerate() {
            match t.join() {
                Ok(Ok(s)) => per_core.extend(s),
                Ok(Err(e)) => {
                    first_err.get_or_insert_with(|| anyhow::anyhow!("loop {i} failed: {e}"));
                }
                Err(_) => {
                    first_err.get_or_insert_with(|| anyhow::anyhow!("loop {i} panicked"));
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e.into());
        }
        let proto = self.args.proto.name();
        // One row per CPU: pool backends report a row per thread.
        let per_core = stats::merge_by_cpu(per_core);
        Ok(ServerStats::new(
            self.args.io.name(),
            proto,
            self.listen.to_string(),
            per_core,
        ))
    }
}

/// Asks a server's loops to shut down gracefully.
#[derive(Clone)]
pub struct Stopper {
    shutdown: Arc<AtomicBool>,
    wakers: Vec<Waker>,
}

impl Stopper {
    /// Stop accepting, finish what is in flight (up to `--grace`), then let the loops exit.
    pub fn stop(&self) {
        self.shutdown.store(true, Ordering::Release);
        for w in &self.wakers {
            w.wake();
        }
    }
}

/// Listening sockets bound elsewhere (by the first process of a `--processes` group): one per
/// loop, or a single one every loop shares; and the address they listen on.
pub type Bound = (Vec<Arc<std::os::fd::OwnedFd>>, std::net::SocketAddr);

/// Start the server's loops; returns once every loop accepts connections. Listens on
/// `--listen`, or on the sockets `--listen-fds` names (a worker of `--processes`).
pub fn start(args: Args) -> Result<Running, ServerError> {
    start_on(args, None)
}

/// [`start`], on listeners bound already (`bound`), if given.
pub fn start_on(args: Args, bound: Option<Bound>) -> Result<Running, ServerError> {
    let cores = args.cores.resolve().context("--cores")?;
    args.validate().map_err(anyhow::Error::msg)?;
    if args.io.needs_uring() {
        ringlab_runtime::uring::check_available()?;
    }
    if args.io == Io::Uring && !args.buf_count.is_power_of_two() {
        return Err(anyhow::anyhow!(
            "--buf-count must be a power of two no larger than 32768 (got {})",
            args.buf_count
        )
        .into());
    }
    if args.workers == 0 || args.workers > 10_000 {
        return Err(anyhow::anyhow!("--workers must be between 1 and 10000").into());
    }
    let pool = matches!(args.io, Io::Tokio | Io::Blocking);
    let args = Arc::new(args);
    let cfg = Arc::new(args.server_config());
    // The blocking pool has one accept thread, so one listener.
    let shared = args.accept == config::AcceptMode::Shared || args.io == Io::Blocking;
    let nlisteners = if args.io == Io::Blocking {
        1
    } else {
        cores.len()
    };
    let bound = match bound {
        Some(b) => Some(b),
        None if !args.listen_fds.is_empty() => {
            Some(listener::adopt_inherited(&args.listen_fds).context("inherited listeners")?)
        }
        None => None,
    };
    let (listeners, listen) = match bound {
        None => listener::listeners(args.listen, nlisteners, shared, args.backlog)
            .map_err(anyhow::Error::from)?,
        Some((l, addr)) if l.len() == nlisteners => (l, addr),
        Some((l, addr)) if l.len() == 1 => (vec![l[0].clone(); nlisteners], addr),
        Some((l, _)) => {
            return Err(
                anyhow::anyhow!("{} listeners given for {nlisteners} loops", l.len()).into(),
            )
        }
    };
    let proto = args.proto.name();
    let (board, metrics) = match args.metrics {
        Some(addr) => {
            let b = metrics::Board::new(args.io.name(), proto);
            let at =
                metrics::serve(addr, b.clone()).with_context(|| format!("--metrics {addr}"))?;
            (Some(b), Some(at))
        }
        None => (None, None),
    };
    let root = match &args.root {
        Some(dir) => Some(Arc::new(
            files::open_root(dir).map_err(anyhow::Error::from)?,
        )),
        None => None,
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    let limit = core::ConnLimit::new(usize::try_from(args.max_conns).unwrap_or(usize::MAX));
    let (ready_tx, ready_rx) = mpsc::sync_channel(cores.len() + 1);
    let shared = core::Shared {
        args: args.clone(),
        cfg: cfg.clone(),
        shutdown: shutdown.clone(),
        ready: ready_tx,
        limit,
        board,
        root,
    };
    let mut wakers = Vec::new();
    let mut threads = Vec::new();
    if pool {
        let waker = Waker::new().context("eventfd")?;
        wakers.push(waker.clone());
        let ctx = core::PoolCtx {
            cores: cores.ids().to_vec(),
            listeners,
            waker,
            shared: shared.clone(),
        };
        let io = args.io;
        let t = thread::Builder::new()
            .name(format!(
                "ringlab-{}",
                if io == Io::Tokio { "tokio" } else { "pool" }
            ))
            .spawn(move || match io {
                Io::Tokio => backend::tokio::run(ctx),
                _ => backend::blocking::run(ctx),
            })
            .context("spawning the pool thread")?;
        threads.push(t);
    } else {
        for (index, (&cpu, listener)) in cores.ids().iter().zip(listeners).enumerate() {
            let waker = Waker::new().context("eventfd")?;
            wakers.push(waker.clone());
            let ctx = core::LoopCtx {
                index,
                cpu,
                listener,
                waker,
                shared: shared.clone(),
            };
            let pin = !args.no_pin;
            let io = args.io;
            let t = thread::Builder::new()
                // Linux keeps 15 bytes of a thread name: keep `ringlab-<io>-<cpu>` short.
                .name(format!("ringlab-{}-{cpu}", io.thread_tag()))
                .spawn(move || {
                    if pin {
                        if let Err(e) = pin_current_thread(cpu) {
                            let _ = ctx.ready.send(Err(e.to_string()));
                            return Err(std::io::Error::other(e.to_string()));
                        }
                    }
                    let one = match io {
                        Io::Uring => backend::uring::run(ctx),
                        Io::Epoll => backend::epoll::run(ctx),
                        Io::Poll => backend::epoll::run_poll(ctx),
                        Io::Select => backend::epoll::run_select(ctx),
                        _ => backend::tokio_uring::run(ctx),
                    };
                    one.map(|s| vec![s])
                })
                .context("spawning a loop thread")?;
            threads.push(t);
        }
    }
    drop(shared); // only the loops hold the ready sender now
    let running = Running {
        listen,
        cores,
        shutdown,
        wakers,
        threads,
        args,
        metrics,
    };
    let loops = running.threads.len();
    if let Some(e) = ringlab_runtime::event_loop::setup_failure(&ready_rx, loops) {
        running.stopper().stop();
        let _ = running.join();
        return Err(anyhow::anyhow!(e).into());
    }
    Ok(running)
}
