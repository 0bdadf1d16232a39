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
//! with the first process (`PR_SET_PDEATHSIG`); a worker that fails stops the run early. The
//! exit code is the worst of the group's, a worker killed by signal N counting as 128 + N.
//! Starting, watching and signalling the processes is `ringlab_runtime::procgroup`'s, shared
//! with the server.

use std::ffi::OsString;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ringlab_runtime::cpus::even_shares;
use ringlab_runtime::procgroup::{code_of, describe, Group, Signal, Signaller, Start};

use crate::args::{RunConfig, SetupError};
use crate::report::{self, Partial, ProcessResult, Report};
use crate::run::{run_partial, Gate, RunError};

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
    let conns = even_shares(cfg.conns, k);
    let cpus = cfg.cpus.shares(k);
    let binds: Vec<Vec<IpAddr>> = if cfg.bind.is_empty() {
        vec![Vec::new(); k]
    } else if cfg.bind.len() >= k {
        let mut next = 0;
        even_shares(cfg.bind.len(), k)
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
        .map(|n| even_shares(usize::try_from(n).unwrap_or(usize::MAX), k));
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

/// A worker the first process started: its share, and where it leaves its results.
struct Worker {
    index: usize,
    pid: u32,
    share: Share,
    out: PathBuf,
    log: Option<PathBuf>,
}

/// Where the workers leave their results and interval logs: the temporary directory, under
/// names that carry the first process's PID.
struct Files {
    dir: PathBuf,
    me: u32,
    logs: bool,
}

impl Files {
    fn out(&self, i: usize) -> PathBuf {
        self.dir
            .join(format!("ringlab-client-{}-worker-{i}.json", self.me))
    }

    fn log(&self, i: usize) -> Option<PathBuf> {
        self.logs.then(|| {
            self.dir
                .join(format!("ringlab-client-{}-{i}.hlog", self.me))
        })
    }
}

/// Run the group as its first process and merge everything into one report.
pub fn run_group(cfg: RunConfig, stop: Arc<AtomicBool>) -> Result<Report, RunError> {
    let exe = worker_exe()?;
    let split = split(&cfg);
    let files = Files {
        dir: std::env::temp_dir(),
        me: std::process::id(),
        logs: cfg.hist_log.is_some(),
    };
    let base: Vec<OsString> = std::env::args_os().skip(1).collect();
    let commands = split
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, share)| (i, worker_command(&exe, &base, &files, i, share)));
    let (group, start) =
        Group::spawn(commands, |line| line == "ready").map_err(|e| setup(e.to_string()))?;
    let workers: Vec<Worker> = group
        .members()
        .iter()
        .map(|m| Worker {
            index: m.index,
            pid: m.pid,
            share: split[m.index].clone(),
            out: files.out(m.index),
            log: files.log(m.index),
        })
        .collect();
    let signaller = group.signaller();
    let watch = Watch::start(group, &workers, cfg.processes, &stop)?;

    // Our own share, started together with the workers.
    let own_cfg = own_config(&cfg, &split[0], files.log(0));
    let own = run_partial(own_cfg, stop.clone(), Some(release_gate(start)));
    // The workers run as long as we did (same duration, timeout): wait, bounded.
    let statuses = watch.finish(
        &signaller,
        own.is_err(),
        cfg.timeout + Duration::from_secs(30),
    );
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
    Ok(merge_group(&cfg, &split, &files, own, &workers, &statuses))
}

/// This binary, which the workers are started from.
fn worker_exe() -> Result<PathBuf, RunError> {
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
    Ok(exe)
}

/// Worker `i`'s command line: ours (`base`) with its share appended.
fn worker_command(
    exe: &Path,
    base: &[OsString],
    files: &Files,
    i: usize,
    share: &Share,
) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args(base)
        .args(["--processes", "1", "--no-progress"])
        .args(["--conns", &share.conns.to_string()])
        .args(["--cores", &share.cpus.to_string()])
        .args(["--worker-of", &files.me.to_string()])
        .args(["--worker-index", &i.to_string()])
        .arg("--worker-out")
        .arg(files.out(i));
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
    if let Some(l) = files.log(i) {
        cmd.arg("--hist-log").arg(l);
    }
    cmd.stdin(Stdio::piped()).stderr(Stdio::inherit());
    cmd
}

/// The first process's own share of the run.
fn own_config(cfg: &RunConfig, share: &Share, log: Option<PathBuf>) -> RunConfig {
    let mut own = cfg.clone();
    own.processes = 1;
    own.conns = share.conns;
    own.cpus = share.cpus.clone();
    own.rate = share.rate;
    own.requests = share.requests;
    own.connect_rate = share.connect_rate;
    own.bind = share.bind.clone();
    own.hist_log = log;
    own.json = None;
    own.progress = false;
    own
}

/// Called once our own loops are set up: wait for every worker's ready line, then start them
/// all (`go`).
fn release_gate(start: Start) -> Gate {
    Box::new(move || {
        start.wait_ready(READY_TIMEOUT).map_err(|e| e.to_string())?;
        start
            .release("go")
            .map_err(|e| format!("starting a client process: {e}"))
    })
}

/// The workers while the run lasts: a worker that fails before the end stops the run early,
/// and a stop (SIGINT, or that failure) is forwarded to every worker as SIGINT.
struct Watch {
    /// Set once our own share is over: exits from then on are the run's normal end.
    done: Arc<AtomicBool>,
    /// Every worker's exit status, by index, once all have exited.
    exits: JoinHandle<Vec<Option<ExitStatus>>>,
    forwarder: JoinHandle<()>,
}

impl Watch {
    fn start(
        group: Group,
        workers: &[Worker],
        processes: usize,
        stop: &Arc<AtomicBool>,
    ) -> Result<Watch, RunError> {
        let signaller = group.signaller();
        let (tx, rx) = mpsc::channel::<(usize, ExitStatus)>();
        if let Err(e) = group.watch(&tx, |i, s| (i, s)) {
            signaller.signal_all(Signal::KILL);
            return Err(setup(format!("cannot watch the client processes: {e}")));
        }
        drop(tx);
        let done = Arc::new(AtomicBool::new(false));
        let pids: Vec<(usize, u32)> = workers.iter().map(|w| (w.index, w.pid)).collect();
        let exits = {
            let (stop, done) = (stop.clone(), done.clone());
            thread::spawn(move || {
                let mut statuses = vec![None; processes];
                for (i, s) in rx {
                    if !s.success() && !done.load(Ordering::Acquire) {
                        let pid = pids.iter().find(|p| p.0 == i).map_or(0, |p| p.1);
                        eprintln!(
                            "ringlab-client: process {i} (pid {pid}) failed ({}); stopping the others",
                            describe(s)
                        );
                        stop.store(true, Ordering::Release);
                    }
                    statuses[i] = Some(s);
                }
                statuses
            })
        };
        let forwarder = {
            let (stop, done) = (stop.clone(), done.clone());
            thread::spawn(move || {
                while !done.load(Ordering::Acquire) {
                    if stop.load(Ordering::Acquire) {
                        signaller.signal_all(Signal::INT);
                        return;
                    }
                    thread::sleep(Duration::from_millis(20));
                }
            })
        };
        Ok(Watch {
            done,
            exits,
            forwarder,
        })
    }

    /// Our own share is over (`failed`: with an error, so the workers are killed): wait for
    /// every worker, at most `limit`, then interrupt them, then kill them.
    fn finish(
        self,
        signaller: &Signaller,
        failed: bool,
        limit: Duration,
    ) -> Vec<Option<ExitStatus>> {
        self.done.store(true, Ordering::Release);
        if failed {
            signaller.signal_all(Signal::KILL);
        }
        let deadline = Instant::now() + limit;
        let mut interrupted = false;
        while !self.exits.is_finished() {
            if Instant::now() >= deadline {
                if interrupted {
                    signaller.signal_all(Signal::KILL);
                } else {
                    signaller.signal_all(Signal::INT);
                    interrupted = true;
                }
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = self.forwarder.join();
        self.exits.join().unwrap_or_default()
    }
}

/// Add the workers' results to ours, merge the interval logs, and summarise: the exit code is
/// the worst of the group's.
fn merge_group(
    cfg: &RunConfig,
    split: &[Share],
    files: &Files,
    own: Partial,
    workers: &[Worker],
    statuses: &[Option<ExitStatus>],
) -> Report {
    let k = cfg.processes;
    let log_path = |i: usize| files.log(i);
    let mut worst = 0u8;
    let mut problems = Vec::new();
    let mut merged = own.clone();
    let own_code = report::build_from(cfg, own.clone()).exit_code;
    let result = |index: usize, pid: u32, share: &Share, p: &Partial, code: u8| {
        ProcessResult::of(
            index,
            pid,
            share.cpus.to_string(),
            share.conns,
            share.rate,
            p,
            code,
        )
    };
    let mut processes = vec![result(0, files.me, &split[0], &own, own_code)];
    for w in workers {
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
                processes.push(result(w.index, w.pid, &w.share, &p, code));
            }
            None => {
                worst = worst.max(1);
                problems.push(format!(
                    "client process {} (pid {}) left no results ({}): its share is missing from the totals",
                    w.index,
                    w.pid,
                    status.map_or("no exit status".to_string(), describe)
                ));
                processes.push(result(
                    w.index,
                    w.pid,
                    &w.share,
                    &Partial::new(),
                    code.max(1),
                ));
            }
        }
    }
    if let Some(out) = &cfg.hist_log {
        let logs: Vec<PathBuf> = (0..k).filter_map(log_path).collect();
        if let Err(e) = merge_logs(&logs, out, cfg) {
            merged
                .messages
                .push(format!("--hist-log could not be merged: {e}"));
            merged.failed = true;
        }
        for l in &logs {
            let _ = std::fs::remove_file(l);
        }
    }
    let mut report = report::build_from(cfg, merged);
    report.threads = report.cpu.len();
    report.processes = processes;
    report.messages.extend(problems);
    report.exit_code = report.exit_code.max(worst);
    report
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
