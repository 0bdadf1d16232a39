//! `--processes K`: the load from K client processes, merged exactly.
//!
//! The first process starts K-1 workers from its own binary with its own command line plus
//! their shares appended (later flags override earlier ones): `--conns`, `--rate`,
//! `--requests`, `--connect-rate`, `--cores`, `--bind`, and internal flags naming the worker
//! and where it writes its unsummarised result ([`Partial`]: histograms in HdrHistogram's V2
//! format). Every process sets up its loops and waits; the first starts them all together
//! (`go` on each worker's stdin), runs its own share, then adds the workers' histograms to its
//! own and summarises the sum, so percentiles come from one merged histogram. Interval logs
//! are merged the same way, interval by interval.
//!
//! SIGINT to the first process is forwarded to every worker (through pidfds); workers die
//! with the first process (`PR_SET_PDEATHSIG`); a worker that fails stops the run early.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags, Signal};

use crate::args::{RunConfig, SetupError};
use crate::report::{self, Partial, ProcessResult, Report};
use crate::run::{run_partial, shares, Gate, RunError};

/// How long workers may take to set up their loops.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn setup(msg: impl Into<String>) -> RunError {
    RunError::Setup(SetupError(msg.into()))
}

/// One process's share of the run.
#[derive(Clone, Debug, PartialEq)]
pub struct Share {
    pub conns: usize,
    pub cpus: ringlab_runtime::cpus::CpuList,
    pub rate: Option<f64>,
    pub requests: Option<u64>,
    pub connect_rate: Option<f64>,
    pub bind: Vec<IpAddr>,
}

/// Split a run among `cfg.processes` processes.
pub fn split(cfg: &RunConfig) -> Vec<Share> {
    let k = cfg.processes.max(1);
    let conns = shares(cfg.conns, k);
    let cpus = cfg.cpus.shares(k);
    let binds: Vec<Vec<IpAddr>> = if cfg.bind.is_empty() {
        vec![Vec::new(); k]
    } else if cfg.bind.len() >= k {
        let mut next = 0;
        shares(cfg.bind.len(), k)
            .into_iter()
            .map(|n| {
                let v = cfg.bind[next..next + n].to_vec();
                next += n;
                v
            })
            .collect()
    } else {
        (0..k).map(|i| vec![cfg.bind[i % cfg.bind.len()]]).collect()
    };
    let requests = cfg
        .requests
        .map(|n| shares(usize::try_from(n).unwrap_or(usize::MAX), k));
    (0..k)
        .map(|i| {
            let frac = conns[i] as f64 / cfg.conns as f64;
            let requests = requests.as_ref().map(|r| r[i] as u64);
            Share {
                conns: conns[i],
                cpus: cpus[i].clone(),
                rate: cfg.rate.map(|r| r * frac),
                requests,
                connect_rate: cfg.connect_rate.map(|r| r * frac),
                bind: binds[i].clone(),
            }
        })
        .collect()
}

/// `--bind` for a list of consecutive addresses: `A` or `A-B`.
fn bind_arg(b: &[IpAddr]) -> Option<String> {
    match b {
        [] => None,
        [one] => Some(one.to_string()),
        [first, .., last] => Some(format!("{first}-{last}")),
    }
}

/// In a worker, first thing: die with the first process, and make sure it is still there.
pub fn become_worker(parent: u32) -> Result<(), SetupError> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(|e| SetupError(format!("prctl(PR_SET_PDEATHSIG): {e}")))?;
    let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_pid() as u32);
    if ppid != parent {
        return Err(SetupError(format!(
            "--worker-of {parent} is not this process's parent; --worker-of is internal to --processes"
        )));
    }
    Ok(())
}

/// A worker's run: set up, say `ready`, wait for `go` on stdin, run, write the unsummarised
/// result to its `--worker-out` file. Returns its own exit code.
pub fn run_worker(cfg: RunConfig, stop: Arc<AtomicBool>) -> Result<u8, RunError> {
    let out = cfg
        .worker
        .as_ref()
        .map(|w| w.out.clone())
        .ok_or_else(|| setup("not a worker"))?;
    let gate: Gate = Box::new(|| {
        let mut o = std::io::stdout().lock();
        writeln!(o, "ready").map_err(|e| e.to_string())?;
        o.flush().map_err(|e| e.to_string())?;
        drop(o);
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.trim() == "go" {
            Ok(())
        } else {
            Err("the first process went away before the start".to_string())
        }
    });
    let cfg2 = cfg.clone();
    let partial = run_partial(cfg, stop, Some(gate))?;
    let json = serde_json::to_string(&partial).map_err(|e| RunError::Failed(e.to_string()))?;
    std::fs::write(&out, json)
        .map_err(|e| RunError::Failed(format!("cannot write {}: {e}", out.display())))?;
    Ok(report::build_from(&cfg2, partial).exit_code)
}

struct Worker {
    index: usize,
    pid: u32,
    share: Share,
    out: PathBuf,
    log: Option<PathBuf>,
}

fn describe(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

fn code_of(s: ExitStatus) -> u8 {
    match s.code() {
        Some(c) => u8::try_from(c).unwrap_or(1),
        None => 1,
    }
}

fn signal_all(fds: &[OwnedFd], sig: Signal) {
    for fd in fds {
        let _ = pidfd_send_signal(fd, sig);
    }
}

/// Run the group as its first process and merge everything into one report.
pub fn run_group(cfg: RunConfig, stop: Arc<AtomicBool>) -> Result<Report, RunError> {
    let exe = std::env::current_exe().map_err(|e| {
        setup(format!(
            "--processes: cannot find this program's binary: {e}"
        ))
    })?;
    if !exe
        .file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with("ringlab-client"))
    {
        return Err(setup(
            "--processes starts workers from the ringlab-client binary; run it from there",
        ));
    }
    let k = cfg.processes;
    let split = split(&cfg);
    let me = std::process::id();
    let tmp = std::env::temp_dir();
    let log_path = |i: usize| {
        cfg.hist_log
            .as_ref()
            .map(|_| tmp.join(format!("ringlab-client-{me}-{i}.hlog")))
    };
    let base: Vec<OsString> = std::env::args_os().skip(1).collect();

    let mut workers = Vec::new();
    let mut children: Vec<Child> = Vec::new();
    let mut stdins: Vec<ChildStdin> = Vec::new();
    let mut pidfds: Vec<OwnedFd> = Vec::new();
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, bool)>();
    let kill_all = |pidfds: &[OwnedFd], children: &mut Vec<Child>| {
        signal_all(pidfds, Signal::KILL);
        for c in children.iter_mut() {
            let _ = c.wait();
        }
    };
    for (i, share) in split.iter().enumerate().skip(1) {
        let out = tmp.join(format!("ringlab-client-{me}-worker-{i}.json"));
        let log = log_path(i);
        let mut cmd = Command::new(&exe);
        cmd.args(&base)
            .args(["--processes", "1", "--no-progress"])
            .args(["--conns", &share.conns.to_string()])
            .args(["--cores", &share.cpus.to_string()])
            .args(["--worker-of", &me.to_string()])
            .args(["--worker-index", &i.to_string()])
            .arg("--worker-out")
            .arg(&out);
        if let Some(r) = share.rate {
            cmd.args(["--rate", &r.to_string()]);
        }
        if let Some(n) = share.requests {
            cmd.args(["--requests", &n.to_string()]);
        }
        if let Some(r) = share.connect_rate {
            cmd.args(["--connect-rate", &r.to_string()]);
        }
        if let Some(b) = bind_arg(&share.bind) {
            cmd.args(["--bind", &b]);
        }
        if let Some(l) = &log {
            cmd.arg("--hist-log").arg(l);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                kill_all(&pidfds, &mut children);
                return Err(setup(format!("cannot start client process {i}: {e}")));
            }
        };
        let pid = child.id();
        let fd = Pid::from_raw(pid as i32).map(|p| pidfd_open(p, PidfdFlags::empty()));
        let Some(Ok(fd)) = fd else {
            let _ = child.kill();
            let _ = child.wait();
            kill_all(&pidfds, &mut children);
            return Err(setup(format!("pidfd_open for client process {i} failed")));
        };
        pidfds.push(fd);
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            children.push(child);
            kill_all(&pidfds, &mut children);
            return Err(setup("worker pipes missing"));
        };
        stdins.push(stdin);
        children.push(child);
        let tx = ready_tx.clone();
        let _ = thread::Builder::new()
            .name(format!("ringlab-out-{i}"))
            .spawn(move || {
                let mut ok = false;
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if !ok && line == "ready" {
                        ok = true;
                        let _ = tx.send((i, true));
                    }
                }
                if !ok {
                    let _ = tx.send((i, false));
                }
            });
        workers.push(Worker {
            index: i,
            pid,
            share: share.clone(),
            out,
            log,
        });
    }
    drop(ready_tx);
    let pidfds = Arc::new(pidfds);

    // Watch the workers: a failure before the end stops the run early; SIGINT is forwarded.
    let statuses: Arc<Mutex<Vec<Option<ExitStatus>>>> = Arc::new(Mutex::new(vec![None; k]));
    let done = Arc::new(AtomicBool::new(false));
    let gone = Arc::new(AtomicBool::new(false));
    let mut waiters = Vec::new();
    for (w, mut c) in workers.iter().zip(children) {
        let statuses = statuses.clone();
        let stop = stop.clone();
        let (i, pid) = (w.index, w.pid);
        let done = done.clone();
        let gone = gone.clone();
        waiters.push(thread::spawn(move || {
            let s = c.wait().ok();
            if let Some(s) = s {
                if !s.success() && !done.load(Ordering::Acquire) {
                    eprintln!(
                        "ringlab-client: process {i} (pid {pid}) failed ({}); stopping the others",
                        describe(s)
                    );
                    gone.store(true, Ordering::Release);
                    stop.store(true, Ordering::Release);
                }
            }
            if let Ok(mut v) = statuses.lock() {
                v[i] = s;
            }
        }));
    }
    let forwarder = {
        let stop = stop.clone();
        let done = done.clone();
        let pidfds = pidfds.clone();
        thread::spawn(move || {
            while !done.load(Ordering::Acquire) {
                if stop.load(Ordering::Acquire) {
                    signal_all(&pidfds, Signal::INT);
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // Our own share, started together with the workers.
    let n_workers = workers.len();
    let gate: Gate = Box::new(move || {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut ready = 0;
        while ready < n_workers {
            match ready_rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((_, true)) => ready += 1,
                Ok((i, false)) => return Err(format!("client process {i} did not start")),
                Err(_) => return Err("client processes were not ready in time".to_string()),
            }
        }
        for mut s in stdins {
            writeln!(s, "go").map_err(|e| format!("starting a client process: {e}"))?;
        }
        Ok(())
    });
    let own_share = &split[0];
    let mut own_cfg = cfg.clone();
    own_cfg.processes = 1;
    own_cfg.conns = own_share.conns;
    own_cfg.cpus = own_share.cpus.clone();
    own_cfg.rate = own_share.rate;
    own_cfg.requests = own_share.requests;
    own_cfg.connect_rate = own_share.connect_rate;
    own_cfg.bind = own_share.bind.clone();
    own_cfg.hist_log = log_path(0);
    own_cfg.json = None;
    own_cfg.progress = false;
    let own = run_partial(own_cfg, stop.clone(), Some(gate));
    done.store(true, Ordering::Release);
    if own.is_err() {
        signal_all(&pidfds, Signal::KILL);
    }
    // The workers run as long as we did (same duration, timeout): wait, bounded.
    let deadline = Instant::now() + cfg.timeout + Duration::from_secs(30);
    let mut interrupted = false;
    while waiters.iter().any(|w| !w.is_finished()) {
        if Instant::now() >= deadline {
            if interrupted {
                signal_all(&pidfds, Signal::KILL);
            } else {
                signal_all(&pidfds, Signal::INT);
                interrupted = true;
            }
        }
        thread::sleep(Duration::from_millis(20));
    }
    for w in waiters {
        let _ = w.join();
    }
    let _ = forwarder.join();
    let own = match own {
        Ok(p) => p,
        Err(e) => {
            for w in &workers {
                let _ = std::fs::remove_file(&w.out);
                if let Some(l) = &w.log {
                    let _ = std::fs::remove_file(l);
                }
            }
            return Err(e);
        }
    };

    let statuses = statuses.lock().map(|v| v.clone()).unwrap_or_default();
    let mut worst = 0u8;
    let mut problems = Vec::new();
    let mut merged = own.clone();
    let own_code = report::build_from(&cfg, own.clone()).exit_code;
    let mut processes = vec![ProcessResult::of(
        0,
        me,
        split[0].cpus.to_string(),
        split[0].conns,
        split[0].rate,
        &own,
        own_code,
    )];
    for w in &workers {
        let status = statuses.get(w.index).copied().flatten();
        let code = status.map_or(1, code_of);
        worst = worst.max(code);
        let got = std::fs::read_to_string(&w.out)
            .ok()
            .and_then(|t| serde_json::from_str::<Partial>(&t).ok());
        let _ = std::fs::remove_file(&w.out);
        match got {
            Some(p) => {
                merged.merge(&p);
                processes.push(ProcessResult::of(
                    w.index,
                    w.pid,
                    w.share.cpus.to_string(),
                    w.share.conns,
                    w.share.rate,
                    &p,
                    code,
                ));
            }
            None => {
                worst = worst.max(1);
                problems.push(format!(
                    "client process {} (pid {}) left no results ({}): its share is missing from the totals",
                    w.index,
                    w.pid,
                    status.map_or("no exit status".to_string(), describe)
                ));
                processes.push(ProcessResult::of(
                    w.index,
                    w.pid,
                    w.share.cpus.to_string(),
                    w.share.conns,
                    w.share.rate,
                    &Partial::new(),
                    code.max(1),
                ));
            }
        }
    }
    if let Some(out) = &cfg.hist_log {
        let logs: Vec<PathBuf> = (0..k).filter_map(log_path).collect();
        if let Err(e) = merge_logs(&logs, out, &cfg) {
            merged
                .messages
                .push(format!("--hist-log could not be merged: {e}"));
            merged.failed = true;
        }
        for l in &logs {
            let _ = std::fs::remove_file(l);
        }
    }
    let mut report = report::build_from(&cfg, merged);
    report.threads = report.cpu.len();
    report.processes = processes;
    report.messages.extend(problems);
    report.exit_code = report.exit_code.max(worst);
    Ok(report)
}

/// Merge the processes' interval logs into one at `out`: histograms of the same interval
/// (seconds from the start, which every process shares) and tag are added.
pub fn merge_logs(inputs: &[PathBuf], out: &Path, cfg: &RunConfig) -> std::io::Result<()> {
    crate::intervals::Merged::read(inputs)?.write(out, cfg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn cfg(extra: &[&str]) -> RunConfig {
        let mut argv = vec!["ringlab-client", "127.0.0.1:1"];
        argv.extend_from_slice(extra);
        crate::Args::parse_from(argv).resolve().expect("resolves")
    }

    #[test]
    fn splits_conns_rate_requests_bind() {
        let c = cfg(&[
            "--processes",
            "4",
            "--conns",
            "10",
            "--rate",
            "1000",
            "--requests",
            "103",
            "--bind",
            "127.0.0.1-127.0.0.8",
            "--cores",
            "0",
        ]);
        let s = split(&c);
        assert_eq!(s.len(), 4);
        assert_eq!(s.iter().map(|x| x.conns).sum::<usize>(), 10);
        assert_eq!(s.iter().map(|x| x.requests.unwrap()).sum::<u64>(), 103);
        let rate: f64 = s.iter().map(|x| x.rate.unwrap()).sum();
        assert!((rate - 1000.0).abs() < 1e-6);
        for x in &s {
            assert_eq!(x.bind.len(), 2, "two addresses each");
            assert_eq!(x.cpus.ids(), &[0], "processes share the one CPU");
        }
        assert_eq!(bind_arg(&s[1].bind).unwrap(), "127.0.0.3-127.0.0.4");
    }
}
