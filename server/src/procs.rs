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
//! its own, and exits with the worst exit status of the group. A worker that exits before the
//! group was told to stop is a failure: the parent names it and stops the rest. Workers die
//! with the parent (`PR_SET_PDEATHSIG`).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use ringlab_runtime::cpus::{CpuList, CpuSpec};
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};
use signal_hook::iterator::Signals;

use crate::config::{AcceptMode, Io};
use crate::stats::{merge_by_cpu, LoopStats, ProcessStats, ServerStats, WorkerStats};
use crate::{listener, Args, ServerError};

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

/// In a worker, first thing: die with the parent, and make sure it is still there.
pub fn become_worker(parent: u32) -> Result<(), ServerError> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .context("prctl(PR_SET_PDEATHSIG)")?;
    // The parent may have died before the prctl: then we were re-parented already.
    let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32);
    if ppid != parent {
        return Err(anyhow!(
            "--worker-of {parent}: that process is not this one's parent (it is {ppid}); --worker-of is internal to --processes"
        )
        .into());
    }
    Ok(())
}

/// A worker the parent started.
struct Worker {
    index: usize,
    pid: u32,
    cores: CpuList,
    pidfd: OwnedFd,
    stats_path: PathBuf,
}

/// What the parent hears about while the group runs.
enum Event {
    /// A worker exited.
    Exit(usize, ExitStatus),
    /// The parent's own loops finished.
    Own(Box<Result<ServerStats, ServerError>>),
}

/// A process's exit status as an exit code (death by signal N: 128 + N).
fn code_of(s: ExitStatus) -> u8 {
    match (s.code(), s.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(255),
        _ => 1,
    }
}

fn describe(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

fn signal_all(workers: &[(u32, OwnedFd)], sig: Signal) {
    for (_, fd) in workers {
        // ESRCH once a worker has exited: nothing to do.
        let _ = pidfd_send_signal(fd, sig);
    }
}

fn err_code(e: &ServerError) -> u8 {
    match e {
        ServerError::Uring(_) => 2,
        ServerError::Other(_) => 1,
    }
}

/// Run a group of `--processes` servers as its first process; returns the exit code.
pub fn parent_main(mut args: Args, mut signals: Signals) -> ExitCode {
    let fail = |e: &ServerError| {
        eprintln!("ringlab-server: {e}");
        ExitCode::from(err_code(e))
    };
    let n = usize::from(args.processes);
    let cores = match args.cores.resolve() {
        Ok(c) => c,
        Err(e) => return fail(&anyhow!("--cores: {e}").into()),
    };
    if let Err(e) = args.validate() {
        return fail(&anyhow!(e).into());
    }
    let shares = cpu_shares(&cores, n);
    // Listeners each process needs, as in `start`: the blocking pool has one accept thread.
    let shared = args.accept == AcceptMode::Shared;
    let per_process: Vec<usize> = shares
        .iter()
        .map(|s| if args.io == Io::Blocking { 1 } else { s.len() })
        .collect();
    let total = if shared { 1 } else { per_process.iter().sum() };
    let (all, addr) = match listener::listeners(args.listen, total, shared, args.backlog) {
        Ok(x) => x,
        Err(e) => return fail(&anyhow::Error::from(e).into()),
    };
    // One chunk per process: its loops' listeners, or the one everybody shares.
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
    drop(rest);

    // Our own share first: a failure here (io_uring unavailable, bad flags) stops everything
    // before any worker exists.
    let full_args = args.clone();
    args.cores = CpuSpec::List(shares[0].clone());
    let own_listeners = std::mem::take(&mut chunks[0]);
    let running = match crate::start_on(args.clone(), Some((own_listeners, addr))) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    let stopper = running.stopper();

    let (tx, rx) = mpsc::channel::<Event>();
    let mut workers: Vec<Worker> = Vec::new();
    let mut children: Vec<Child> = Vec::new();
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<u32, String>)>();
    let started = spawn_workers(&shares, &mut chunks, &ready_tx);
    drop(chunks); // the workers hold their listeners now; ours must not keep them open
    let mut failure: Option<String> = None;
    match started {
        Ok(list) => {
            for (w, c) in list {
                workers.push(w);
                children.push(c);
            }
        }
        Err(e) => failure = Some(format!("{e:#}")),
    }
    drop(ready_tx);
    let pidfds: Arc<Vec<(u32, OwnedFd)>> = Arc::new(
        workers
            .iter()
            .filter_map(|w| Some((w.pid, w.pidfd.try_clone().ok()?)))
            .collect(),
    );

    // Every worker's ready line (or why not).
    if failure.is_none() {
        let deadline = Instant::now() + WORKER_READY_TIMEOUT;
        let mut ready = 0;
        while ready < workers.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match ready_rx.recv_timeout(left) {
                Ok((_, Ok(_))) => ready += 1,
                Ok((i, Err(why))) => {
                    failure = Some(format!("process {i} did not start: {why}"));
                    break;
                }
                Err(_) => {
                    failure = Some(format!(
                        "{} of {} worker processes were not ready within {WORKER_READY_TIMEOUT:?}",
                        workers.len() - ready,
                        workers.len()
                    ));
                    break;
                }
            }
        }
    }
    if let Some(f) = failure {
        eprintln!("ringlab-server: {f}; stopping the others");
        signal_all(&pidfds, Signal::KILL);
        let mut worst = 1u8;
        for (w, mut c) in workers.iter().zip(children) {
            if let Ok(s) = c.wait() {
                // A worker that found io_uring unavailable says so with code 2: keep it.
                if s.code() == Some(2) {
                    worst = worst.max(2);
                }
            }
            let _ = std::fs::remove_file(&w.stats_path);
        }
        stopper.stop();
        let _ = running.join();
        return ExitCode::from(worst);
    }

    let pids: Vec<String> = std::iter::once(std::process::id())
        .chain(workers.iter().map(|w| w.pid))
        .map(|p| p.to_string())
        .collect();
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "ready listen={addr} io={} cores={cores} pid={} processes={n} pids={}",
            full_args.io.name(),
            std::process::id(),
            pids.join(",")
        );
        let _ = out.flush();
    }

    // From here the group runs: watch for signals, worker exits and our own loops.
    let stopping = Arc::new(AtomicBool::new(false));
    {
        let stopping = stopping.clone();
        let fwd = pidfds.clone();
        let stopper = stopper.clone();
        let spawned = thread::Builder::new()
            .name("ringlab-signals".into())
            .spawn(move || {
                let mut seen = false;
                for sig in signals.forever() {
                    let sig_fwd = Signal::from_named_raw(sig).unwrap_or(Signal::TERM);
                    if seen {
                        eprintln!("ringlab-server: second signal, exiting at once (and every process)");
                        signal_all(&fwd, sig_fwd);
                        std::process::exit(128 + sig);
                    }
                    seen = true;
                    stopping.store(true, Ordering::Release);
                    eprintln!(
                        "ringlab-server: signal {sig}: draining all {n} processes (send it again to exit at once)"
                    );
                    signal_all(&fwd, sig_fwd);
                    stopper.stop();
                }
            });
        if let Err(e) = spawned {
            eprintln!("ringlab-server: cannot start the signal thread: {e}");
            signal_all(&pidfds, Signal::KILL);
            std::process::exit(1);
        }
    }
    for (w, mut c) in workers.iter().zip(children) {
        let tx = tx.clone();
        let i = w.index;
        let spawned = thread::Builder::new()
            .name(format!("ringlab-wait-{i}"))
            .spawn(move || {
                if let Ok(s) = c.wait() {
                    let _ = tx.send(Event::Exit(i, s));
                }
            });
        if spawned.is_err() {
            eprintln!("ringlab-server: cannot start a waiter thread; stopping");
            signal_all(&pidfds, Signal::KILL);
            std::process::exit(1);
        }
    }
    {
        let tx = tx.clone();
        let _ = thread::Builder::new()
            .name("ringlab-join".into())
            .spawn(move || {
                let _ = tx.send(Event::Own(Box::new(running.join())));
            });
    }
    drop(tx);

    let mut exits: Vec<Option<ExitStatus>> = vec![None; n];
    let mut own: Option<Result<ServerStats, ServerError>> = None;
    let mut worst: u8 = 0;
    let mut problems: Vec<String> = Vec::new();
    let mut kill_deadline: Option<Instant> = None;
    let mut killed = false;
    let mut pending = workers.len() + 1;
    let stop_all = |why: &str, stopping: &AtomicBool| {
        if !stopping.swap(true, Ordering::AcqRel) {
            eprintln!("ringlab-server: {why}; stopping the other processes");
            signal_all(&pidfds, Signal::TERM);
            stopper.stop();
        }
    };
    while pending > 0 {
        if kill_deadline.is_none() && stopping.load(Ordering::Acquire) {
            // Drains take at most --grace; past that (and a margin) a process is stuck.
            kill_deadline = Some(Instant::now() + full_args.grace + Duration::from_secs(10));
        }
        let ev = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(ev) => ev,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if kill_deadline.is_some_and(|d| Instant::now() >= d) && !killed {
                    killed = true;
                    problems.push("some processes did not finish draining in time; killed".into());
                    worst = worst.max(1);
                    signal_all(&pidfds, Signal::KILL);
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        pending -= 1;
        match ev {
            Event::Exit(i, s) => {
                let w = &workers[i - 1];
                exits[i] = Some(s);
                if !stopping.load(Ordering::Acquire) {
                    let msg = format!(
                        "process {i} (pid {}, cores {}) exited unexpectedly: {}",
                        w.pid,
                        w.cores,
                        describe(s)
                    );
                    problems.push(msg.clone());
                    worst = worst.max(code_of(s).max(1));
                    stop_all(&msg, &stopping);
                } else if !s.success() {
                    problems.push(format!(
                        "process {i} (pid {}) failed: {}",
                        w.pid,
                        describe(s)
                    ));
                    worst = worst.max(code_of(s).max(1));
                }
            }
            Event::Own(r) => {
                if let Err(e) = &*r {
                    let msg = format!("process 0 (pid {}) failed: {e}", std::process::id());
                    problems.push(msg.clone());
                    worst = worst.max(err_code(e));
                    stop_all(&msg, &stopping);
                }
                own = Some(*r);
            }
        }
    }

    // Sum what every process reported.
    let mut rows: Vec<LoopStats> = Vec::new();
    let mut processes = Vec::new();
    let own_total = match &own {
        Some(Ok(s)) => {
            rows.extend(s.per_core.iter().cloned());
            (s.total.clone(), "ok".to_string())
        }
        Some(Err(e)) => (LoopStats::default(), format!("failed: {e}")),
        None => (LoopStats::default(), "unknown".to_string()),
    };
    processes.push(ProcessStats {
        index: 0,
        pid: std::process::id(),
        cores: shares[0].to_string(),
        exit: own_total.1,
        total: total_of(&own_total.0),
    });
    for w in &workers {
        let status = exits[w.index];
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
                    problems.push(format!(
                        "process {} (pid {}) left no statistics",
                        w.index, w.pid
                    ));
                    worst = worst.max(1);
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
    let proto = match full_args.proto {
        crate::config::ProtoArg::Echo => "echo",
        crate::config::ProtoArg::Http => "http",
    };
    let mut stats = ServerStats::new(
        full_args.io.name(),
        proto,
        addr.to_string(),
        merge_by_cpu(rows),
    );
    stats.processes = processes;
    print!("{}", stats.summary());
    let _ = std::io::stdout().flush();
    for p in &problems {
        eprintln!("ringlab-server: {p}");
    }
    if let Some(path) = &full_args.stats_json {
        let json = serde_json::to_string_pretty(&stats).unwrap_or_default();
        if let Err(e) = std::fs::write(path, json + "\n") {
            eprintln!("ringlab-server: cannot write {}: {e}", path.display());
            worst = worst.max(1);
        }
    }
    ExitCode::from(worst)
}

fn total_of(t: &LoopStats) -> LoopStats {
    let mut t = t.clone();
    t.cpu = usize::MAX;
    t
}

/// Start workers 1..N; returns each with its `Child`. Their ready lines (or why they exited
/// first) arrive on `ready`.
fn spawn_workers(
    shares: &[CpuList],
    chunks: &mut [Vec<Arc<OwnedFd>>],
    ready: &mpsc::Sender<(usize, Result<u32, String>)>,
) -> anyhow::Result<Vec<(Worker, Child)>> {
    let exe = std::env::current_exe().context("finding this program's binary to start workers")?;
    let base = worker_base_args(std::env::args_os().skip(1));
    let me = std::process::id();
    let mut out = Vec::new();
    for i in 1..shares.len() {
        let fds = std::mem::take(&mut chunks[i]);
        use std::os::fd::AsRawFd;
        let numbers: Vec<String> = fds.iter().map(|f| f.as_raw_fd().to_string()).collect();
        let stats_path = std::env::temp_dir().join(format!("ringlab-server-{me}-worker-{i}.json"));
        let mut cmd = Command::new(&exe);
        cmd.args(&base)
            .arg("--cores")
            .arg(shares[i].to_string())
            .arg("--stats-json")
            .arg(&stats_path)
            .args(["--worker-of", &me.to_string()])
            .args(["--worker-index", &i.to_string()])
            .arg("--listen-fds")
            .arg(numbers.join(","))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let keep = fds.clone();
        // SAFETY: the closure runs in the forked child before exec; it only makes fcntl calls
        // on descriptors the parent owns (kept alive by `keep`), which allocate nothing and
        // take no lock: clearing FD_CLOEXEC there lets exactly these listeners survive the
        // exec, in this child only.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &keep {
                    rustix::io::fcntl_setfd(&**fd, rustix::io::FdFlags::empty())?;
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting worker process {i} ({})", exe.display()))?;
        let pid = child.id();
        let pidfd = match Pid::from_raw(pid as i32).map(|p| pidfd_open(p, PidfdFlags::empty())) {
            Some(Ok(fd)) => fd,
            other => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(anyhow!(
                    "pidfd_open for worker {i}: {}",
                    other.map_or("bad pid".to_string(), |r| format!("{:?}", r.err()))
                ));
            }
        };
        let stdout = child.stdout.take().context("worker stdout")?;
        let ready = ready.clone();
        thread::Builder::new()
            .name(format!("ringlab-out-{i}"))
            .spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                let mut sent = false;
                for line in lines.by_ref() {
                    let Ok(line) = line else { break };
                    if !sent && line.starts_with("ready ") {
                        sent = true;
                        let pid = line
                            .split_whitespace()
                            .find_map(|kv| kv.strip_prefix("pid="))
                            .and_then(|p| p.parse().ok())
                            .unwrap_or(pid);
                        let _ = ready.send((i, Ok(pid)));
                    }
                }
                if !sent {
                    let _ = ready.send((i, Err("it exited before it was ready".into())));
                }
            })
            .context("starting a reader thread")?;
        out.push((
            Worker {
                index: i,
                pid,
                cores: shares[i].clone(),
                pidfd,
                stats_path,
            },
            child,
        ));
        drop(fds);
    }
    Ok(out)
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
