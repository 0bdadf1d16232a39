//! `--processes N`: N server processes on one port.
//!
//! The first process (the parent) binds every listener of the group (one per loop of every
//! process, SO_REUSEPORT, or one shared), runs its own share of the loops, and re-executes its
//! own binary for the others with the same arguments minus `--processes`, plus internal flags
//! naming their share: `--cores SHARE --worker-of PARENT --worker-index I --listen-fds A,B
//! --stats-json TMP`. The listeners reach the workers by descriptor inheritance (see
//! [`crate::listener::adopt_inherited`] for why the workers never bind).
//!
//! The parent waits for every worker's ready line before it prints its own, forwards
//! SIGINT/SIGTERM to every worker (through pidfds, so a reaped worker's PID can never be hit
//! once reused), sums the workers' statistics (read back from their `--stats-json` files) with
//! its own, and exits with the worst exit status of the group (a worker killed by signal N
//! counts as 128 + N). A worker that exits before the group was told to stop is a failure: the
//! parent names it and stops the rest. Workers die with the parent (`PR_SET_PDEATHSIG`).
//! Starting, watching and signalling the processes is `ringlab_runtime::procgroup`'s, shared
//! with the client.

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use ringlab_runtime::cpus::{CpuList, CpuSpec};
use ringlab_runtime::procgroup::{code_of, describe, Group, Member, Signal, Signaller};
use signal_hook::iterator::Signals;

use crate::config::{AcceptMode, Io};
use crate::stats::{merge_by_cpu, LoopStats, ProcessStats, ServerStats, WorkerStats};
use crate::{listener, Args, Running, ServerError, Stopper};

/// How long a worker may take to print its ready line.
const WORKER_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Each process's share of `cores`: contiguous, nearly equal shares when there are at least as
/// many CPUs as processes; otherwise one CPU each, round-robin (processes then share CPUs).
pub fn cpu_shares(cores: &CpuList, processes: usize) -> Vec<CpuList> {
    cores.shares(processes)
}

/// The command line for a worker: ours minus the flags the parent sets per worker
/// (`--processes`, `--cores`, `--stats-json`, `--listen-fds` and the other internal ones).
pub fn worker_base_args(argv: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    const DROP: [&str; 6] = [
        "--processes",
        "--cores",
        "--stats-json",
        "--worker-of",
        "--worker-index",
        "--listen-fds",
    ];
    let mut out = Vec::new();
    let mut it = argv.into_iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if DROP.contains(&s.as_ref()) {
            it.next(); // its value
            continue;
        }
        if DROP
            .iter()
            .any(|d| s.strip_prefix(d).is_some_and(|r| r.starts_with('=')))
        {
            continue;
        }
        out.push(a);
    }
    out
}

/// A worker the parent started: its share, and where it leaves its statistics.
struct Worker {
    index: usize,
    pid: u32,
    cores: CpuList,
    stats_path: PathBuf,
}

/// What the parent hears about while the group runs.
enum Event {
    /// A worker exited.
    Exit(usize, ExitStatus),
    /// The parent's own loops finished.
    Own(Box<Result<ServerStats, ServerError>>),
}

fn err_code(e: &ServerError) -> u8 {
    match e {
        ServerError::Uring(_) => 2,
        ServerError::Other(_) => 1,
    }
}

/// The group before any process starts: every process's CPUs, and its listeners (bound here).
struct Layout {
    cores: CpuList,
    shares: Vec<CpuList>,
    /// One chunk per process: its loops' listeners, or the one everybody shares.
    chunks: Vec<Vec<Arc<OwnedFd>>>,
    addr: SocketAddr,
}

impl Layout {
    fn bind(args: &Args) -> Result<Layout, ServerError> {
        let n = usize::from(args.processes);
        let cores = args.cores.resolve().map_err(|e| anyhow!("--cores: {e}"))?;
        args.validate().map_err(|e| anyhow!(e))?;
        let shares = cpu_shares(&cores, n);
        // Listeners each process needs, as in `start`: the blocking pool has one accept thread.
        let shared = args.accept == AcceptMode::Shared;
        let per_process: Vec<usize> = shares
            .iter()
            .map(|s| if args.io == Io::Blocking { 1 } else { s.len() })
            .collect();
        let total = if shared { 1 } else { per_process.iter().sum() };
        let (all, addr) = listener::listeners(args.listen, total, shared, args.backlog)
            .map_err(anyhow::Error::from)?;
        let mut chunks: Vec<Vec<Arc<OwnedFd>>> = Vec::with_capacity(n);
        let mut rest = all.into_iter();
        for &k in &per_process {
            let chunk: Vec<_> = if shared {
                rest.as_slice().iter().take(1).cloned().collect()
            } else {
                rest.by_ref().take(k).collect()
            };
            chunks.push(chunk);
        }
        Ok(Layout {
            cores,
            shares,
            chunks,
            addr,
        })
    }
}

/// Run a group of `--processes` servers as its first process; returns the exit code.
pub fn parent_main(args: Args, signals: Signals) -> ExitCode {
    let fail = |e: &ServerError| {
        tracing::error!("ringlab-server: {e}");
        ExitCode::from(err_code(e))
    };
    let mut layout = match Layout::bind(&args) {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    // Our own share first: a failure here (io_uring unavailable, bad flags) stops everything
    // before any worker exists.
    let mut own_args = args.clone();
    own_args.cores = CpuSpec::List(layout.shares[0].clone());
    let own_listeners = std::mem::take(&mut layout.chunks[0]);
    let running = match crate::start_on(own_args, Some((own_listeners, layout.addr))) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let stopper = running.stopper();
    let (group, workers) = match start_workers(&mut layout) {
        Ok(g) => g,
        Err(code) => {
            stopper.stop();
            let _ = running.join();
            return ExitCode::from(code);
        }
    };
    print_ready(&args, &layout, &workers);

    // From here the group runs: watch for signals, worker exits and our own loops.
    let stopping = Arc::new(AtomicBool::new(false));
    let signaller = group.signaller();
    forward_signals(signals, &signaller, &stopper, &stopping, workers.len() + 1);
    let events = watch(group, running, &signaller);
    let mut outcome = collect(
        &events, &workers, &signaller, &stopper, &stopping, args.grace,
    );
    let stats = sum_stats(&args, &layout, &workers, &mut outcome);
    {
        // Not print!: it panics when stdout is gone (a closed pipe).
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(stats.summary().as_bytes());
        let _ = out.flush();
    }
    for p in &outcome.problems {
        tracing::warn!("ringlab-server: {p}");
    }
    if let Some(path) = &args.stats_json {
        let json = serde_json::to_string_pretty(&stats).unwrap_or_default();
        if let Err(e) = std::fs::write(path, json + "\n") {
            tracing::error!("ringlab-server: cannot write {}: {e}", path.display());
            outcome.worst = outcome.worst.max(1);
        }
    }
    ExitCode::from(outcome.worst)
}

/// Start workers 1..N on their listeners and wait for their ready lines. If that fails, the
/// workers are killed, and the error is the exit code: 1, or 2 if a worker found io_uring
/// unavailable.
fn start_workers(layout: &mut Layout) -> Result<(Group, Vec<Worker>), u8> {
    let started = match std::env::current_exe() {
        Ok(exe) => {
            let base = worker_base_args(std::env::args_os().skip(1));
            let me = std::process::id();
            let commands = (1..layout.shares.len()).map(|i| {
                let fds = std::mem::take(&mut layout.chunks[i]);
                let stats = stats_path(me, i);
                (
                    i,
                    worker_command(&exe, &base, me, i, &layout.shares[i], fds, &stats),
                )
            });
            Group::spawn(commands, |line| line.starts_with("ready ")).map_err(|e| e.to_string())
        }
        Err(e) => Err(format!(
            "finding this program's binary to start workers: {e}"
        )),
    };
    // The workers hold their listeners now; ours must not keep them open.
    layout.chunks.clear();
    let (group, start) = started.map_err(|why| {
        tracing::error!("ringlab-server: {why}; stopping the others");
        1u8
    })?;
    let me = std::process::id();
    let workers: Vec<Worker> = group
        .members()
        .iter()
        .map(|&Member { index, pid }| Worker {
            index,
            pid,
            cores: layout.shares[index].clone(),
            stats_path: stats_path(me, index),
        })
        .collect();
    if let Err(why) = start.wait_ready(WORKER_READY_TIMEOUT) {
        tracing::error!("ringlab-server: {why}; stopping the others");
        // A worker that found io_uring unavailable says so with code 2: keep it.
        let two = group.kill().iter().flatten().any(|s| s.code() == Some(2));
        for w in &workers {
            let _ = std::fs::remove_file(&w.stats_path);
        }
        return Err(if two { 2 } else { 1 });
    }
    Ok((group, workers))
}

fn stats_path(parent: u32, i: usize) -> PathBuf {
    std::env::temp_dir().join(format!("ringlab-server-{parent}-worker-{i}.json"))
}

/// Worker `i`'s command: `base` plus its share, with exactly its listeners inherited.
fn worker_command(
    exe: &Path,
    base: &[OsString],
    parent: u32,
    i: usize,
    cores: &CpuList,
    fds: Vec<Arc<OwnedFd>>,
    stats: &Path,
) -> Command {
    let numbers: Vec<String> = fds.iter().map(|f| f.as_raw_fd().to_string()).collect();
    let mut cmd = Command::new(exe);
    cmd.args(base)
        .arg("--cores")
        .arg(cores.to_string())
        .arg("--stats-json")
        .arg(stats)
        .args(["--worker-of", &parent.to_string()])
        .args(["--worker-index", &i.to_string()])
        .arg("--listen-fds")
        .arg(numbers.join(","))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit());
    // SAFETY: the closure runs in the forked child before exec; it only makes fcntl calls
    // on descriptors the parent owns (kept alive by `fds`, which the command holds until it
    // is dropped after the spawn), which allocate nothing and take no lock: clearing
    // FD_CLOEXEC there lets exactly these listeners survive the exec, in this child only.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                rustix::io::fcntl_setfd(&**fd, rustix::io::FdFlags::empty())?;
            }
            Ok(())
        });
    }
    cmd
}

/// The group's one ready line, once every process is ready.
fn print_ready(args: &Args, layout: &Layout, workers: &[Worker]) {
    let pids: Vec<String> = std::iter::once(std::process::id())
        .chain(workers.iter().map(|w| w.pid))
        .map(|p| p.to_string())
        .collect();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "ready listen={} io={} cores={} pid={} processes={} pids={}",
        layout.addr,
        args.io.name(),
        layout.cores,
        std::process::id(),
        args.processes,
        pids.join(",")
    );
    let _ = out.flush();
}

/// SIGINT/SIGTERM: forward it to every worker and drain our own loops; a second one exits at
/// once (and every worker with us).
fn forward_signals(
    mut signals: Signals,
    signaller: &Signaller,
    stopper: &Stopper,
    stopping: &Arc<AtomicBool>,
    n: usize,
) {
    let (fwd, stopper, stopping) = (signaller.clone(), stopper.clone(), stopping.clone());
    let spawned = thread::Builder::new()
        .name("ringlab-signals".into())
        .spawn(move || {
            let mut seen = false;
            for sig in signals.forever() {
                if sig == signal_hook::consts::SIGHUP {
                    tracing::info!("ringlab-server: {}", crate::HUP_LINE);
                    continue;
                }
                let sig_fwd = Signal::from_named_raw(sig).unwrap_or(Signal::TERM);
                if seen {
                    tracing::warn!("ringlab-server: second signal, exiting at once (and every process)");
                    fwd.signal_all(sig_fwd);
                    std::process::exit(128 + sig);
                }
                seen = true;
                stopping.store(true, Ordering::Release);
                tracing::info!(
                    "ringlab-server: signal {sig}: draining all {n} processes (send it again to exit at once)"
                );
                fwd.signal_all(sig_fwd);
                stopper.stop();
            }
        });
    if let Err(e) = spawned {
        tracing::error!("ringlab-server: cannot start the signal thread: {e}");
        signaller.signal_all(Signal::KILL);
        std::process::exit(1);
    }
}

/// Every worker's exit, and the end of our own loops, as events.
fn watch(group: Group, running: Running, signaller: &Signaller) -> mpsc::Receiver<Event> {
    let (tx, rx) = mpsc::channel();
    if group.watch(&tx, Event::Exit).is_err() {
        tracing::error!("ringlab-server: cannot start a waiter thread; stopping");
        signaller.signal_all(Signal::KILL);
        std::process::exit(1);
    }
    let _ = thread::Builder::new()
        .name("ringlab-join".into())
        .spawn(move || {
            let _ = tx.send(Event::Own(Box::new(running.join())));
        });
    rx
}

/// How the group ended.
struct Outcome {
    /// Each worker's exit status, by index (none for the first process).
    exits: Vec<Option<ExitStatus>>,
    own: Option<Result<ServerStats, ServerError>>,
    worst: u8,
    problems: Vec<String>,
}

/// Stop the group (once) because of `why`.
fn stop_all(why: &str, stopping: &AtomicBool, signaller: &Signaller, stopper: &Stopper) {
    if !stopping.swap(true, Ordering::AcqRel) {
        tracing::error!("ringlab-server: {why}; stopping the other processes");
        signaller.signal_all(Signal::TERM);
        stopper.stop();
    }
}

/// Wait until every process has ended. One that ends before the group was told to stop is
/// named and stops the rest; once stopping, a process still there after `grace` (and a
/// margin) is killed.
fn collect(
    events: &mpsc::Receiver<Event>,
    workers: &[Worker],
    signaller: &Signaller,
    stopper: &Stopper,
    stopping: &AtomicBool,
    grace: Duration,
) -> Outcome {
    let mut out = Outcome {
        exits: vec![None; workers.len() + 1],
        own: None,
        worst: 0,
        problems: Vec::new(),
    };
    let mut kill_deadline: Option<Instant> = None;
    let mut killed = false;
    let mut pending = workers.len() + 1;
    while pending > 0 {
        if kill_deadline.is_none() && stopping.load(Ordering::Acquire) {
            // Drains take at most --grace; past that (and a margin) a process is stuck.
            kill_deadline = Some(Instant::now() + grace + Duration::from_secs(10));
        }
        let ev = match events.recv_timeout(Duration::from_millis(200)) {
            Ok(ev) => ev,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if kill_deadline.is_some_and(|d| Instant::now() >= d) && !killed {
                    killed = true;
                    out.problems
                        .push("some processes did not finish draining in time; killed".into());
                    out.worst = out.worst.max(1);
                    signaller.signal_all(Signal::KILL);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        pending -= 1;
        match ev {
            Event::Exit(i, s) => {
                let w = &workers[i - 1];
                out.exits[i] = Some(s);
                if !stopping.load(Ordering::Acquire) {
                    let msg = format!(
                        "process {i} (pid {}, cores {}) exited unexpectedly: {}",
                        w.pid,
                        w.cores,
                        describe(s)
                    );
                    out.problems.push(msg.clone());
                    out.worst = out.worst.max(code_of(s).max(1));
                    stop_all(&msg, stopping, signaller, stopper);
                } else if !s.success() {
                    out.problems.push(format!(
                        "process {i} (pid {}) failed: {}",
                        w.pid,
                        describe(s)
                    ));
                    out.worst = out.worst.max(code_of(s).max(1));
                }
            }
            Event::Own(r) => {
                if let Err(e) = &*r {
                    let msg = format!("process 0 (pid {}) failed: {e}", std::process::id());
                    out.problems.push(msg.clone());
                    out.worst = out.worst.max(err_code(e));
                    stop_all(&msg, stopping, signaller, stopper);
                }
                out.own = Some(*r);
            }
        }
    }
    out
}

/// Sum what every process reported, with a per-process breakdown; a worker that ended well
/// but left no statistics is a problem.
fn sum_stats(args: &Args, layout: &Layout, workers: &[Worker], out: &mut Outcome) -> ServerStats {
    let mut rows: Vec<LoopStats> = Vec::new();
    let (own_total, own_exit) = match &out.own {
        Some(Ok(s)) => {
            rows.extend(s.per_core.iter().cloned());
            (s.total.clone(), "ok".to_string())
        }
        Some(Err(e)) => (LoopStats::default(), format!("failed: {e}")),
        None => (LoopStats::default(), "unknown".to_string()),
    };
    let mut processes = vec![ProcessStats {
        index: 0,
        pid: std::process::id(),
        cores: layout.shares[0].to_string(),
        exit: own_exit,
        total: total_of(&own_total),
    }];
    for w in workers {
        let status = out.exits[w.index];
        let got = std::fs::read_to_string(&w.stats_path)
            .ok()
            .and_then(|t| serde_json::from_str::<WorkerStats>(&t).ok());
        let _ = std::fs::remove_file(&w.stats_path);
        let mut total = LoopStats::default();
        let mut exit = match status {
            Some(s) if s.success() => "ok".to_string(),
            Some(s) => describe(s),
            None => "unknown".to_string(),
        };
        match got {
            Some(ws) if ws.pid == w.pid => {
                for r in &ws.per_core {
                    total.add(r);
                }
                rows.extend(ws.per_core);
            }
            _ => {
                if status.is_some_and(|s| s.success()) {
                    out.problems.push(format!(
                        "process {} (pid {}) left no statistics",
                        w.index, w.pid
                    ));
                    out.worst = out.worst.max(1);
                }
                exit += " (statistics lost)";
            }
        }
        processes.push(ProcessStats {
            index: w.index,
            pid: w.pid,
            cores: w.cores.to_string(),
            exit,
            total: total_of(&total),
        });
    }
    let proto = args.proto.name();
    let mut stats = ServerStats::new(
        args.io.name(),
        proto,
        layout.addr.to_string(),
        merge_by_cpu(rows),
    );
    stats.processes = processes;
    stats
}

fn total_of(t: &LoopStats) -> LoopStats {
    let mut t = t.clone();
    t.cpu = usize::MAX;
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(ids: &[usize]) -> CpuList {
        CpuList::from_ids(ids.iter().copied())
    }

    #[test]
    fn shares_are_contiguous_or_round_robin() {
        let s = cpu_shares(&list(&[0, 1, 2, 3]), 2);
        assert_eq!(s, vec![list(&[0, 1]), list(&[2, 3])]);
        let s = cpu_shares(&list(&[0, 1, 2]), 2);
        assert_eq!(s, vec![list(&[0, 1]), list(&[2])]);
        let s = cpu_shares(&list(&[0, 1]), 3);
        assert_eq!(s, vec![list(&[0]), list(&[1]), list(&[0])]);
        let s = cpu_shares(&list(&[0, 1]), 4);
        assert_eq!(s, vec![list(&[0]), list(&[1]), list(&[0]), list(&[1])]);
    }

    #[test]
    fn worker_args_drop_per_process_flags() {
        let argv: Vec<OsString> = [
            "--io",
            "epoll",
            "--processes",
            "3",
            "--cores=0,1",
            "--stats-json",
            "/tmp/x",
            "--listen",
            "127.0.0.1:0",
            "--processes=2",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        let got: Vec<String> = worker_base_args(argv)
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(got, ["--io", "epoll", "--listen", "127.0.0.1:0"]);
    }
}
