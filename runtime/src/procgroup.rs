//! Process groups (`--processes N`), written once for the server and the client.
//!
//! The first process of a group (the parent) starts the others (the workers) from its own
//! binary with [`Group::spawn`], waits for every worker's ready line on its stdout
//! ([`Start::wait_ready`]), optionally releases them all together with a line on their stdins
//! ([`Start::release`]), signals them through pidfds ([`Signaller`]: a worker reaped and its PID
//! reused is never hit), and hears of their exits on a channel ([`Group::watch`]). A worker
//! calls [`become_worker`] first thing: it dies with the parent (`PR_SET_PDEATHSIG`).
//!
//! What the group means (shares, results, when to stop) stays with each binary; this module
//! only starts, watches and signals processes.
//!
//! Exit codes follow the shell's convention for both binaries ([`code_of`]): a process that
//! exits with code C counts as C, one killed by signal N as 128 + N.

use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

pub use rustix::process::Signal;
use rustix::process::{pidfd_open, pidfd_send_signal, Pid, PidfdFlags};

/// A process's exit status as an exit code, the shell's way: its exit code, or 128 + N if
/// signal N killed it (255 if that does not fit; 1 for anything else).
pub fn code_of(s: ExitStatus) -> u8 {
    match (s.code(), s.signal()) {
        (Some(c), _) => u8::try_from(c).unwrap_or(1),
        (None, Some(sig)) => u8::try_from(128 + sig).unwrap_or(255),
        _ => 1,
    }
}

/// An exit status in words: `exit code C` or `killed by signal N`.
pub fn describe(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => s.to_string(),
    }
}

/// Why a process cannot be a worker of the group it was started for.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// `prctl(PR_SET_PDEATHSIG)` failed.
    #[error("prctl(PR_SET_PDEATHSIG): {0}")]
    DeathSignal(io::Error),
    /// `--worker-of` names a process that is not this one's parent (given by hand, or the
    /// parent died before the prctl and this process was re-parented).
    #[error("--worker-of {parent}: that process is not this one's parent (it is {ppid}); --worker-of is internal to --processes")]
    NotParent { parent: u32, ppid: u32 },
}

/// In a worker, first thing: die with the parent (`SIGKILL` on its death), and make sure it is
/// still there.
pub fn become_worker(parent: u32) -> Result<(), WorkerError> {
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
        .map_err(|e| WorkerError::DeathSignal(e.into()))?;
    // The parent may have died before the prctl: then we were re-parented already.
    let ppid = rustix::process::getppid().map_or(0, |p| p.as_raw_pid().unsigned_abs());
    if ppid != parent {
        return Err(WorkerError::NotParent { parent, ppid });
    }
    Ok(())
}

/// A worker of a [`Group`]: its index among the processes (the parent is 0) and PID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub index: usize,
    pub pid: u32,
}

/// Signals every worker of a group through its pidfd (cheap to clone, for other threads).
#[derive(Clone, Debug)]
pub struct Signaller(Arc<Vec<OwnedFd>>);

impl Signaller {
    /// Send `sig` to every worker; one that has exited already is skipped (ESRCH).
    pub fn signal_all(&self, sig: Signal) {
        for fd in self.0.iter() {
            let _ = pidfd_send_signal(fd, sig);
        }
    }
}

/// Why a group could not be started (the workers started before are killed and reaped).
#[derive(Debug, thiserror::Error)]
#[error("cannot start process {index}: {why}")]
pub struct SpawnError {
    pub index: usize,
    pub why: String,
}

/// Why the workers were not all ready.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadyError {
    /// A worker closed its stdout (exited) before its ready line.
    #[error("process {0} did not start: it exited before it was ready")]
    Exited(usize),
    /// Not every worker was ready in time.
    #[error("{missing} of {total} worker processes were not ready within {timeout:?}")]
    Timeout {
        missing: usize,
        total: usize,
        timeout: Duration,
    },
}

/// The group's starting line: the workers' ready lines, and their stdins (if piped) to release
/// them together. [`Group::spawn`] returns it beside the group, so that it can move to the
/// thread that starts the parent's own share.
#[derive(Debug)]
pub struct Start {
    ready: mpsc::Receiver<(usize, bool)>,
    total: usize,
    stdins: Vec<ChildStdin>,
}

impl Start {
    /// Wait until every worker has printed its ready line, at most `timeout` in all.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), ReadyError> {
        let deadline = Instant::now() + timeout;
        let mut ready = 0;
        while ready < self.total {
            match self
                .ready
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok((_, true)) => ready += 1,
                Ok((i, false)) => return Err(ReadyError::Exited(i)),
                Err(_) => {
                    return Err(ReadyError::Timeout {
                        missing: self.total - ready,
                        total: self.total,
                        timeout,
                    })
                }
            }
        }
        Ok(())
    }

    /// Write `line` to every worker's stdin (the ones started with a piped stdin).
    pub fn release(self, line: &str) -> io::Result<()> {
        for mut s in self.stdins {
            writeln!(s, "{line}")?;
        }
        Ok(())
    }
}

/// The workers a parent started.
#[derive(Debug)]
pub struct Group {
    members: Vec<Member>,
    children: Vec<Child>,
    signaller: Signaller,
}

impl Group {
    /// Start one worker per `(index, command)`. Each one's stdout is piped and read on a thread
    /// of its own: the worker is ready at its first line that `is_ready` accepts, and did not
    /// start if its stdout closes before; the rest of its output is read and dropped. A piped
    /// stdin (set on the command) is kept for [`Start::release`]. If one worker cannot be
    /// started, the ones started before are killed and reaped.
    pub fn spawn(
        commands: impl IntoIterator<Item = (usize, Command)>,
        is_ready: fn(&str) -> bool,
    ) -> Result<(Group, Start), SpawnError> {
        let (tx, rx) = mpsc::channel();
        let mut members = Vec::new();
        let mut children = Vec::new();
        let mut pidfds = Vec::new();
        let mut stdins = Vec::new();
        for (index, mut cmd) in commands {
            let started = start_one(index, &mut cmd, is_ready, &tx);
            match started {
                Ok((child, pidfd, stdin)) => {
                    members.push(Member {
                        index,
                        pid: child.id(),
                    });
                    children.push(child);
                    pidfds.push(pidfd);
                    stdins.extend(stdin);
                }
                Err(why) => {
                    Signaller(Arc::new(pidfds)).signal_all(Signal::KILL);
                    for c in &mut children {
                        let _ = c.wait();
                    }
                    return Err(SpawnError { index, why });
                }
            }
        }
        let start = Start {
            ready: rx,
            total: members.len(),
            stdins,
        };
        let group = Group {
            members,
            children,
            signaller: Signaller(Arc::new(pidfds)),
        };
        Ok((group, start))
    }

    /// The workers, in the order started.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// What signals every worker.
    pub fn signaller(&self) -> Signaller {
        self.signaller.clone()
    }

    /// Kill every worker and reap it; returns how each ended, in the order started.
    pub fn kill(mut self) -> Vec<Option<ExitStatus>> {
        self.signaller.signal_all(Signal::KILL);
        self.children.iter_mut().map(|c| c.wait().ok()).collect()
    }

    /// Wait for every worker on a thread of its own: each exit arrives on `tx` as
    /// `wrap(index, status)`. If a waiter thread cannot be started, the error says so and the
    /// caller should kill the group (through a [`Signaller`] taken before).
    pub fn watch<E: Send + 'static>(
        self,
        tx: &mpsc::Sender<E>,
        wrap: fn(usize, ExitStatus) -> E,
    ) -> io::Result<()> {
        for (m, mut child) in self.members.iter().zip(self.children) {
            let tx = tx.clone();
            let index = m.index;
            thread::Builder::new()
                .name(format!("ringlab-wait-{index}"))
                .spawn(move || {
                    if let Ok(s) = child.wait() {
                        let _ = tx.send(wrap(index, s));
                    }
                })?;
        }
        Ok(())
    }
}

/// Start one worker: its child, pidfd and stdin (if piped), and the thread reading its stdout.
fn start_one(
    index: usize,
    cmd: &mut Command,
    is_ready: fn(&str) -> bool,
    ready: &mpsc::Sender<(usize, bool)>,
) -> Result<(Child, OwnedFd, Option<ChildStdin>), String> {
    let mut child = cmd.stdout(Stdio::piped()).spawn().map_err(|e| {
        let program = cmd.get_program().to_string_lossy().into_owned();
        format!("{program}: {e}")
    })?;
    let fail = |child: &mut Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        why
    };
    let pid = i32::try_from(child.id()).ok().and_then(Pid::from_raw);
    let pidfd = match pid.map(|p| pidfd_open(p, PidfdFlags::empty())) {
        Some(Ok(fd)) => fd,
        Some(Err(e)) => return Err(fail(&mut child, format!("pidfd_open: {e}"))),
        None => return Err(fail(&mut child, "pidfd_open: bad pid".to_string())),
    };
    let Some(stdout) = child.stdout.take() else {
        return Err(fail(&mut child, "its stdout is missing".to_string()));
    };
    let ready = ready.clone();
    let reader = thread::Builder::new()
        .name(format!("ringlab-out-{index}"))
        .spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if !sent && is_ready(&line) {
                    sent = true;
                    let _ = ready.send((index, true));
                }
            }
            if !sent {
                let _ = ready.send((index, false));
            }
        });
    if let Err(e) = reader {
        return Err(fail(&mut child, format!("starting a reader thread: {e}")));
    }
    let stdin = child.stdin.take();
    Ok((child, pidfd, stdin))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", script]).stdin(Stdio::null());
        c
    }

    fn status_of(script: &str) -> ExitStatus {
        sh(script).status().expect("sh runs")
    }

    /// Exit code C counts as C; killed by signal N counts as 128 + N, as in the shell (both
    /// binaries agree: the client once counted every signal as 1).
    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(code_of(status_of("exit 0")), 0);
        assert_eq!(code_of(status_of("exit 3")), 3);
        let killed = status_of("kill -KILL $$");
        assert_eq!(killed.signal(), Some(9));
        assert_eq!(code_of(killed), 137);
        assert_eq!(describe(killed), "killed by signal 9");
        let termed = status_of("kill -TERM $$");
        assert_eq!(code_of(termed), 128 + 15);
        assert_eq!(describe(status_of("exit 3")), "exit code 3");
        // The raw wait status of a signal death is the signal number.
        assert_eq!(code_of(ExitStatus::from_raw(2)), 130);
    }

    #[test]
    fn not_our_parent_is_refused() {
        let e = become_worker(1).expect_err("init is not this test's parent");
        assert!(e.to_string().contains("--worker-of 1"), "{e}");
    }

    /// Every worker prints its ready line, waits for `go`, then exits with its index: the
    /// group sees them ready, releases them, and hears every exit.
    #[test]
    fn ready_release_and_exits() {
        let cmds = (1..=3).map(|i| {
            let mut c = sh(&format!(
                "echo noise; echo ready; read line; [ \"$line\" = go ] && exit {i}; exit 99"
            ));
            c.stdin(Stdio::piped());
            (i, c)
        });
        let (g, start) = Group::spawn(cmds, |l| l == "ready").expect("spawn");
        assert_eq!(g.members().len(), 3);
        assert_eq!(
            g.members().iter().map(|m| m.index).collect::<Vec<_>>(),
            [1, 2, 3]
        );
        start.wait_ready(Duration::from_secs(30)).expect("ready");
        start.release("go").expect("release");
        let (tx, rx) = mpsc::channel();
        g.watch(&tx, |i, s| (i, s)).expect("watch");
        drop(tx);
        let mut got: Vec<(usize, u8)> = rx.iter().map(|(i, s)| (i, code_of(s))).collect();
        got.sort_unstable();
        assert_eq!(got, [(1, 1), (2, 2), (3, 3)]);
    }

    /// A worker that exits before its ready line is named; the others are killed on demand.
    #[test]
    fn exit_before_ready_is_named() {
        let cmds = [
            (1, sh("echo ready; sleep 60")),
            (2, sh("echo not-ready; exit 2")),
        ];
        let (g, start) = Group::spawn(cmds, |l| l == "ready").expect("spawn");
        let e = start
            .wait_ready(Duration::from_secs(30))
            .expect_err("process 2 exits");
        assert_eq!(e, ReadyError::Exited(2));
        let ends = g.kill();
        assert_eq!(ends.len(), 2);
        assert_eq!(ends[0].map(code_of), Some(137), "the sleeper is killed");
        assert_eq!(ends[1].map(code_of), Some(2));
    }

    #[test]
    fn ready_times_out() {
        let (g, start) = Group::spawn([(1, sh("sleep 60"))], |l| l == "ready").expect("spawn");
        let e = start
            .wait_ready(Duration::from_millis(50))
            .expect_err("never ready");
        assert!(
            matches!(
                e,
                ReadyError::Timeout {
                    missing: 1,
                    total: 1,
                    ..
                }
            ),
            "{e}"
        );
        g.kill();
    }

    /// A worker that cannot be started fails the group, naming it, and the ones started
    /// before are killed.
    #[test]
    fn spawn_failure_kills_the_started() {
        let mut sleeper = Command::new("sleep");
        sleeper.arg("61.25").stdin(Stdio::null());
        let cmds = [
            (1, sleeper),
            (2, Command::new("/nonexistent/ringlab-worker")),
        ];
        let e = Group::spawn(cmds, |l| l == "ready").expect_err("no such binary");
        assert_eq!(e.index, 2);
        assert!(e.to_string().contains("cannot start process 2"), "{e}");
        let me = std::process::id().to_string();
        let survivors: Vec<String> = std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|d| {
                let pid = d.ok()?.file_name().into_string().ok()?;
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let ours = status
                    .lines()
                    .any(|l| l.strip_prefix("PPid:").is_some_and(|p| p.trim() == me));
                (ours && cmdline == b"sleep\x0061.25\x00").then_some(pid)
            })
            .collect();
        assert!(
            survivors.is_empty(),
            "worker 1 outlived the failed start: {survivors:?}"
        );
    }
}
