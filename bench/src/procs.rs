//! Processes the bench runs, and what it measures of them from outside (/proc).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ringlab_server::ServerStats;

use crate::netns::Netns;

/// Where the sibling binaries are.
#[derive(Clone, Debug)]
pub struct Bins {
    pub server: PathBuf,
    pub client: PathBuf,
}

impl Bins {
    /// `ringlab-server` and `ringlab-client` next to this executable (or in `dir`).
    pub fn find(dir: Option<&Path>) -> Result<Bins> {
        let dir = match dir {
            Some(d) => d.to_path_buf(),
            None => std::env::current_exe()
                .context("locating ringlab-bench")?
                .parent()
                .map(Path::to_path_buf)
                .context("ringlab-bench has no parent directory")?,
        };
        let server = dir.join("ringlab-server");
        let client = dir.join("ringlab-client");
        for b in [&server, &client] {
            if !b.is_file() {
                bail!(
                    "{} not found next to ringlab-bench (in {}); build all three with `cargo build --release` at the workspace root (or pass --bin-dir)",
                    b.file_name().and_then(|n| n.to_str()).unwrap_or("?"),
                    dir.display()
                );
            }
        }
        Ok(Bins { server, client })
    }
}

/// Make the process `cmd` starts end with the bench: SIGTERM to it when the bench's thread that
/// started it ends (`PR_SET_PDEATHSIG`), so that a bench ended by any signal, SIGKILL included,
/// leaves no server or client of its own running. Servers and clients are started from the
/// bench's main thread, which lives as long as the bench.
pub fn ends_with_bench(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec, where only async-signal-safe
    // work is allowed: it makes one prctl system call and neither allocates nor takes a lock.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::TERM))
                .map_err(std::io::Error::from)
        })
    }
}

/// CPU time (user, system) and context switches of a process, summed over its threads.
#[derive(Clone, Copy, Debug, Default)]
pub struct ProcSample {
    pub user_s: f64,
    pub sys_s: f64,
    pub ctx_switches: u64,
    /// Time on a CPU in nanoseconds, summed over the threads (`/proc/PID/task/*/schedstat`):
    /// exact, where user and system time come in clock ticks (10 ms), too coarse for a one-second
    /// window. None where the kernel has no schedstat.
    pub run_ns: Option<u64>,
}

impl ProcSample {
    /// Read `/proc/PID/stat` and `/proc/PID/task/*/status`.
    pub fn read(pid: u32) -> Result<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Fields after the command name (which may contain spaces) start after the last ')'.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("malformed /proc/PID/stat")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // rest[0] is field 3 (state); utime is field 14, stime field 15.
        let tick = rustix::param::clock_ticks_per_second() as f64;
        let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).context("utime")?;
        let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).context("stime")?;
        let mut ctx = 0;
        let mut run_ns = Some(0u64);
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let ns = match std::fs::read_to_string(t.path().join("schedstat")) {
                    Ok(s) => s
                        .split_whitespace()
                        .next()
                        .and_then(|v| v.parse::<u64>().ok()),
                    // The thread ended since the listing (its time went with it): skip it.
                    Err(_) if !t.path().join("stat").exists() => continue,
                    Err(_) => None,
                };
                run_ns = run_ns.zip(ns).map(|(a, b)| a + b);
                if let Ok(s) = std::fs::read_to_string(t.path().join("status")) {
                    for line in s.lines() {
                        if let Some(v) = line
                            .strip_prefix("voluntary_ctxt_switches:")
                            .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                        {
                            ctx += v.trim().parse::<u64>().unwrap_or(0);
                        }
                    }
                }
            }
        }
        Ok(ProcSample {
            user_s: utime / tick,
            sys_s: stime / tick,
            ctx_switches: ctx,
            run_ns,
        })
    }

    /// `self - earlier`.
    pub fn since(&self, earlier: &ProcSample) -> ProcSample {
        ProcSample {
            user_s: (self.user_s - earlier.user_s).max(0.0),
            sys_s: (self.sys_s - earlier.sys_s).max(0.0),
            ctx_switches: self.ctx_switches.saturating_sub(earlier.ctx_switches),
            run_ns: self
                .run_ns
                .zip(earlier.run_ns)
                .map(|(a, b)| a.saturating_sub(b)),
        }
    }

    /// CPU seconds: from schedstat where there is one, else user + system.
    pub fn cpu_s(&self) -> f64 {
        self.run_ns
            .map_or(self.user_s + self.sys_s, |ns| ns as f64 / 1e9)
    }
}

/// Whether process `pid` is there and not a zombie.
pub fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()? != "Z"))
        .unwrap_or(false)
}

/// Resident memory of a process in KiB (`VmRSS`), 0 if it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

/// Steal time of `cpus` in clock ticks, summed (`/proc/stat`, the eighth value of each `cpuN`
/// line): time the hypervisor ran something else while these virtual CPUs wanted to run. None
/// where /proc/stat has no such line.
pub fn steal_ticks(cpus: &[usize]) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    steal_of(&stat, cpus)
}

fn steal_of(stat: &str, cpus: &[usize]) -> Option<u64> {
    ticks_of(stat, cpus, &[8])
}

/// Busy time of `cpus` in clock ticks, summed (`/proc/stat`: user, nice, system, irq and
/// softirq of each `cpuN` line; not idle, iowait or steal): everything these CPUs ran, the
/// processes on them and the kernel work done there in interrupts (on loopback, the TCP
/// receive of what was sent from them). None where /proc/stat has no such line.
pub fn busy_ticks(cpus: &[usize]) -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    busy_of(&stat, cpus)
}

/// The busy ticks of `cpus` in the text of `/proc/stat` (user, nice, system, irq, softirq).
pub fn busy_of(stat: &str, cpus: &[usize]) -> Option<u64> {
    ticks_of(stat, cpus, &[1, 2, 3, 6, 7])
}

/// The sum of the given columns (1 = user) of the `cpuN` lines of `cpus`.
fn ticks_of(stat: &str, cpus: &[usize], columns: &[usize]) -> Option<u64> {
    let mut sum = 0;
    for &c in cpus {
        let name = format!("cpu{c}");
        let line = stat
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))?;
        let f: Vec<&str> = line.split_whitespace().collect();
        for &i in columns {
            sum += f.get(i)?.parse::<u64>().ok()?;
        }
    }
    Some(sum)
}

/// Descriptors open in all of `pids` (from /proc/PID/fd; a process that is gone counts 0).
pub fn open_fds(pids: &[u32]) -> u64 {
    pids.iter()
        .map(|p| std::fs::read_dir(format!("/proc/{p}/fd")).map_or(0, |d| d.count() as u64))
        .sum()
}

impl ProcSample {
    /// The sum over several processes.
    pub fn read_all(pids: &[u32]) -> Result<ProcSample> {
        let mut t = ProcSample {
            run_ns: Some(0),
            ..ProcSample::default()
        };
        for &p in pids {
            let s = ProcSample::read(p)?;
            t.user_s += s.user_s;
            t.sys_s += s.sys_s;
            t.ctx_switches += s.ctx_switches;
            t.run_ns = t.run_ns.zip(s.run_ns).map(|(a, b)| a + b);
        }
        Ok(t)
    }
}

/// A running ringlab-server.
pub struct Server {
    child: Child,
    pub addr: String,
    pub pid: u32,
    /// Every server process (`--processes`): the first, then its children.
    pub pids: Vec<u32>,
    pub stats_path: PathBuf,
}

impl Server {
    /// Start `ringlab-server ARGS --listen 127.0.0.1:0 --stats-json TMP` and wait for its ready
    /// line.
    pub fn start(
        bins: &Bins,
        args: &[String],
        tmp: &Path,
        netns: Option<&Netns>,
    ) -> Result<Server> {
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let stats_path = tmp.join(format!("server-stats-{}-{seq}.json", std::process::id()));
        let (mut cmd, listen) = match netns {
            Some(n) => (
                Netns::command(&n.server_ns, &bins.server),
                format!("{}:0", n.server_ip),
            ),
            None => (Command::new(&bins.server), "127.0.0.1:0".to_string()),
        };
        let mut child = ends_with_bench(&mut cmd)
            .args(args)
            .args(["--listen", &listen, "--stats-json"])
            .arg(&stats_path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", bins.server.display()))?;
        let stdout = child.stdout.take().context("server stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready ") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let out = child.wait_with_output().ok();
                let err = out
                    .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_string())
                    .unwrap_or_default();
                bail!(
                    "ringlab-server {} did not become ready: {err}",
                    args.join(" ")
                );
            }
        };
        let field = |k: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
        };
        let addr = field("listen=").context("ready line without listen=")?;
        let pid = child.id();
        let mut pids = vec![pid];
        if let Some(list) = field("pids=") {
            for p in list.split(',').filter_map(|p| p.parse::<u32>().ok()) {
                if !pids.contains(&p) {
                    pids.push(p);
                }
            }
        }
        Ok(Server {
            child,
            addr,
            pid,
            pids,
            stats_path,
        })
    }

    /// SIGTERM, wait (bounded), and read the server's statistics.
    pub fn stop(mut self) -> Result<ServerStats> {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait()? {
                if !st.success() {
                    let mut err = String::new();
                    if let Some(mut e) = self.child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut e, &mut err);
                    }
                    bail!("ringlab-server exited with {st}: {}", err.trim());
                }
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("ringlab-server did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let s = std::fs::read_to_string(&self.stats_path)
            .with_context(|| format!("reading {}", self.stats_path.display()))?;
        let _ = std::fs::remove_file(&self.stats_path);
        serde_json::from_str(&s).with_context(|| {
            format!(
                "parsing the server's statistics ({})",
                self.stats_path.display()
            )
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_file(&self.stats_path);
    }
}

/// Whether `cmd` is on PATH.
pub fn have(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// Count `raw_syscalls:sys_enter` of `pid` for `secs` with perf, if perf can.
pub fn perf_syscalls(pid: u32, secs: f64) -> Option<std::thread::JoinHandle<Option<u64>>> {
    if !have("perf") {
        return None;
    }
    Some(std::thread::spawn(move || {
        let out = Command::new("perf")
            .args(["stat", "-x,", "-e", "raw_syscalls:sys_enter", "-p"])
            .arg(pid.to_string())
            .args(["--", "sleep", &format!("{secs:.3}")])
            .stdout(Stdio::null())
            .output()
            .ok()?;
        let err = String::from_utf8_lossy(&out.stderr);
        err.lines()
            .find(|l| l.contains("raw_syscalls:sys_enter"))
            .and_then(|l| l.split(',').next())
            .and_then(|v| v.trim().parse().ok())
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_eighth_value_of_each_cpu_line() {
        let stat = "cpu  10 0 5 100 1 0 2 9 0 0\ncpu0 5 0 2 50 1 0 1 4 0 0\ncpu1 5 0 3 50 0 0 1 5 0 0\nintr 1\n";
        assert_eq!(steal_of(stat, &[0]), Some(4));
        assert_eq!(steal_of(stat, &[0, 1]), Some(9));
        assert_eq!(steal_of(stat, &[2]), None);
        assert!(steal_ticks(&[0]).is_some());
    }

    #[test]
    fn busy_is_user_nice_system_irq_and_softirq() {
        //                 user nice sys idle iowait irq softirq steal
        let stat =
            "cpu  1 1 1 1 1 1 1 1 0 0\ncpu0 10 2 30 999 7 4 5 6 0 0\ncpu1 1 0 2 999 0 0 3 9 0 0\n";
        assert_eq!(busy_of(stat, &[0]), Some(10 + 2 + 30 + 4 + 5));
        assert_eq!(busy_of(stat, &[0, 1]), Some(51 + 6));
        assert_eq!(busy_of(stat, &[3]), None);
        assert!(busy_ticks(&[0]).is_some());
    }

    #[test]
    fn cpu_time_comes_from_schedstat_where_there_is_one() {
        let at = |ticks: f64, ns| ProcSample {
            user_s: ticks,
            sys_s: ticks,
            ctx_switches: 0,
            run_ns: ns,
        };
        // Ticks say 20 ms (two of 10 ms); the scheduler says 13.5 ms: the scheduler wins.
        let d = at(0.02, Some(1_013_500_000)).since(&at(0.01, Some(1_000_000_000)));
        assert!((d.cpu_s() - 0.0135).abs() < 1e-12, "{d:?}");
        let d = at(0.02, None).since(&at(0.01, Some(1)));
        assert!((d.cpu_s() - 0.02).abs() < 1e-12, "{d:?}");
        let me = ProcSample::read_all(&[std::process::id()]).unwrap();
        assert!(me.run_ns.is_some_and(|ns| ns > 0), "{me:?}");
    }
}
