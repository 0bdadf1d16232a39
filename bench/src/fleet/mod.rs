//! Fleet mode (`--server-host`, `--client-hosts`): the server on one host and a
//! `ringlab-client --processes K` on each client host, all over SSH.
//!
//! Before the first run: every host reached (one line naming it if not), its clock offset
//! measured over SSH (refused beyond `--max-clock-offset`), the binaries checked
//! (`--version` and SHA-256 against this build's) and copied with scp into a per-host
//! directory when missing or different (`--install` always; ringlab-bench too where the
//! scenario runs holders). Every run ([`session`]): the server started and its ready line
//! awaited; processes beside it started where the scenario needs them (idle-connection
//! holders); every client given one start instant, on its own host's clock (ours plus its
//! offset); the server's CPU read from /proc over SSH at the window's ends; the clients' JSON
//! and HdrHistogram interval logs fetched and merged exactly (histograms added). Every remote
//! process runs under `setsid` and `timeout` and is stopped by its PID (process group) on the
//! way out. A host that fails ends the whole bench: its error ([`HostFailed`]) is passed up through the
//! scenario to `main`, which prints it as one line naming the host; every remote process is
//! stopped on the way ([`session::Session`]'s drop) and the hosts' directories removed
//! ([`Fleet`]'s drop).

pub mod session;
pub mod ssh;

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use ringlab_client::Report as ClientReport;
use serde::Serialize;

use crate::opts::Opts;
use crate::procs::{Bins, ProcSample};
use crate::run::{RunResult, RunSpec};
use ssh::Ssh;

/// How long before the start instant the clients are launched.
const START_MARGIN: Duration = Duration::from_millis(2500);

/// A host of the fleet.
#[derive(Debug)]
pub struct Host {
    pub role: &'static str,
    pub ssh: Ssh,
    /// This host's own directory for the whole bench (binaries, outputs).
    pub dir: String,
    /// The binary to run there (ours copied, or one found that matches).
    pub bin: String,
    /// ringlab-bench there, where the scenario runs it (idle-connection holders, the files
    /// scenario's data set).
    pub bench: String,
    /// What the host allows a process.
    pub limits: HostLimits,
    /// Its clock against ours, measured at setup.
    pub offset: Offset,
    /// Whether `dir` was made there (and so is removed at the end, unless --keep).
    pub made: bool,
}

impl Host {
    fn name(&self) -> String {
        format!("{} host {}", self.role, self.ssh.dest)
    }
}

/// A host's clock against ours.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Offset {
    /// Its clock minus ours, ms.
    pub offset_ms: f64,
    /// Round trip of the sample used, ms (the estimate is good to half of it).
    pub rtt_ms: f64,
}

/// One clock sample: our time before asking, the host's answer, our time after (ns).
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub t0: i128,
    pub remote: i128,
    pub t1: i128,
}

/// The offset from the sample with the shortest round trip (NTP's rule: its midpoint is the
/// best guess of when the host read its clock).
pub fn estimate(samples: &[Sample]) -> Option<Offset> {
    let s = samples.iter().min_by_key(|s| s.t1 - s.t0)?;
    let mid = (s.t0 + s.t1) / 2;
    Some(Offset {
        offset_ms: (s.remote - mid) as f64 / 1e6,
        rtt_ms: (s.t1 - s.t0) as f64 / 1e6,
    })
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// One SSH session that answers each line we send with the host's time.
fn measure_offset(ssh: &Ssh) -> Result<Offset> {
    let mut child = ssh
        .command("while read -r x; do date +%s%N; done")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ssh")?;
    let mut input = child.stdin.take().context("ssh stdin")?;
    let mut out = BufReader::new(child.stdout.take().context("ssh stdout")?);
    let mut samples = Vec::new();
    let mut fail = None;
    for i in 0..9 {
        let t0 = now_ns();
        let mut line = String::new();
        if writeln!(input, "x").and_then(|()| input.flush()).is_err()
            || out.read_line(&mut line).unwrap_or(0) == 0
        {
            fail = Some("unreachable over ssh");
            break;
        }
        let t1 = now_ns();
        let Ok(remote) = line.trim().parse::<i128>() else {
            fail = Some("`date +%s%N` did not answer with nanoseconds (not GNU date?)");
            break;
        };
        // The first answer also carries the session's start: left out.
        if i > 0 {
            samples.push(Sample { t0, remote, t1 });
        }
    }
    drop(input);
    let err = finish(child);
    match (fail, estimate(&samples)) {
        (None, Some(o)) => Ok(o),
        (f, _) => bail!("{}: {err}", f.unwrap_or("no clock sample")),
    }
}

/// Wait for an ssh child (bounded) and return its stderr's last line.
fn finish(mut child: Child) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut e = String::new();
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut e);
    }
    last_line(&e)
}

fn last_line(s: &str) -> String {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string()
}

/// Run `script` on `ssh`, bounded: its stdout, or an error with its stderr's last line.
fn call(ssh: &Ssh, script: &str) -> Result<String> {
    call_within(ssh, script, Duration::from_secs(30))
}

/// [`call`] with its own bound.
fn call_within(ssh: &Ssh, script: &str, limit: Duration) -> Result<String> {
    let child = ssh
        .command(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ssh")?;
    let out = wait_output(child, limit)?;
    if !out.status.success() {
        let e = last_line(&String::from_utf8_lossy(&out.stderr));
        bail!(
            "{}",
            match out.status.code() {
                Some(255) => format!("unreachable over ssh: {e}"),
                c => format!("remote command failed ({c:?}): {e}"),
            }
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn wait_output(mut child: Child, limit: Duration) -> Result<std::process::Output> {
    // Read both pipes while waiting: a child whose output outgrows a pipe's buffer (64 KiB: a
    // fetched interval log, a profile's samples) blocks writing until someone reads.
    let drain = |p: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut v);
            }
            v
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("ssh did not finish within {} s", limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// The local binary's `--version` line and SHA-256.
fn local_identity(bin: &Path) -> Result<(String, String)> {
    let v = Command::new(bin)
        .arg("--version")
        .output()
        .with_context(|| format!("{} --version", bin.display()))?;
    let sum = Command::new("sha256sum")
        .arg(bin)
        .output()
        .context("sha256sum (coreutils)")?;
    let sum = String::from_utf8_lossy(&sum.stdout);
    Ok((
        String::from_utf8_lossy(&v.stdout).trim().to_string(),
        sum.split_whitespace().next().unwrap_or("").to_string(),
    ))
}

/// A host of the fleet failed (unreachable, lost, a process that did not start or died): the
/// one line naming it. It ends the whole bench: scenarios pass it up instead of leaving a run
/// out ([`is_host_failure`]).
#[derive(Debug)]
pub struct HostFailed(pub String);

impl std::fmt::Display for HostFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HostFailed {}

/// A run on the fleet that failed on its own account (no request completed), not a host's:
/// reported and left out as on one machine ([`Fleet::guard`] passes it as it is).
#[derive(Debug)]
pub struct RunFailed(pub String);

impl std::fmt::Display for RunFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RunFailed {}

/// Whether `e` is a host failure of fleet mode (which ends the bench).
pub fn is_host_failure(e: &anyhow::Error) -> bool {
    e.downcast_ref::<HostFailed>().is_some()
}

/// One of this build's binaries, to find or copy on a host.
struct Binary {
    name: &'static str,
    /// Its `--version` line and SHA-256.
    version: String,
    sum: String,
    local: std::path::PathBuf,
}

/// Where `b` is on host `h`: the one on its PATH when it is this very build (and not
/// `--install`), else ours copied with scp into the host's directory (made here first).
fn place(h: &mut Host, b: &Binary, install: bool) -> Result<String> {
    let name = h.name();
    let bin_name = b.name;
    let check = format!(
        "mkdir -p {dir} || exit 96\np=$(command -v {bin_name} 2>/dev/null)\nif [ -n \"$p\" ]; then echo \"path=$p\"; echo \"sum=$(sha256sum < \"$p\" | cut -d' ' -f1)\"; echo \"version=$(\"$p\" --version 2>/dev/null | head -n 1)\"; fi\n",
        dir = ssh::quote(&h.dir)
    );
    let out = call(&h.ssh, &check).map_err(|e| anyhow!("{name}: {e:#}"))?;
    h.made = true;
    let field = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|s| s.trim().to_string())
    };
    let found = field("path=");
    let same = field("version=").as_deref() == Some(b.version.as_str())
        && field("sum=").as_deref() == Some(b.sum.as_str());
    if let (Some(p), true, false) = (&found, same, install) {
        eprintln!("fleet: {name}: using {p} ({}, same build)", b.version);
        return Ok(p.clone());
    }
    let dest = format!("{}/{bin_name}", h.dir);
    let why = match (&found, install) {
        (_, true) => "--install".to_string(),
        (None, _) => "not installed".to_string(),
        (Some(p), _) => format!("{p} is another build"),
    };
    copy_to(h, &b.local, &dest, bin_name, Duration::from_secs(120))?;
    let v = call(&h.ssh, &format!("{} --version", ssh::quote(&dest)))
        .map_err(|e| anyhow!("{name}: the copied {bin_name} does not run: {e:#}"))?;
    if v.trim() != b.version {
        bail!(
            "{name}: the copied {bin_name} says {:?}, not {:?}",
            v.trim(),
            b.version
        );
    }
    eprintln!("fleet: {name}: copied {bin_name} to {dest} ({why})");
    Ok(dest)
}

/// Copy `local` to `remote` on host `h` with scp (bounded by `limit`); an error naming the
/// host and `what` if it fails.
fn copy_to(h: &Host, local: &Path, remote: &str, what: &str, limit: Duration) -> Result<()> {
    let name = h.name();
    let st = h
        .ssh
        .scp(local, remote)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running scp")
        .and_then(|c| wait_output(c, limit))
        .map_err(|e| anyhow!("{name}: copying {what}: {e:#}"))?;
    if !st.status.success() {
        bail!(
            "{name}: scp of {what} failed: {}",
            last_line(&String::from_utf8_lossy(&st.stderr))
        );
    }
    Ok(())
}

/// What a host allows a process (read over SSH at setup, from [`ssh::LIMITS_SCRIPT`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct HostLimits {
    /// The hard descriptor limit (`ulimit -Hn`; processes there raise their soft one to it).
    pub nofile_hard: u64,
    pub nr_open: u64,
    /// Ephemeral ports (`net.ipv4.ip_local_port_range`).
    pub ports: u64,
}

impl HostLimits {
    pub fn parse(text: &str) -> HostLimits {
        let get = |k: &str| -> Vec<u64> {
            text.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| {
                    v.split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        // `unlimited` (no number): as high as the kernel lets a process go.
        let nr_open = get("nr_open=").first().copied().unwrap_or(1 << 20);
        let nofile_hard = get("nofile_hard=").first().copied().unwrap_or(nr_open);
        let ports = match get("ports=")[..] {
            [lo, hi] if hi >= lo => hi - lo + 1,
            _ => 28232,
        };
        HostLimits {
            nofile_hard,
            nr_open,
            ports,
        }
    }
}

/// What the fleet flags ask for.
#[derive(Clone, Debug)]
pub struct FleetOpts {
    pub server: String,
    pub clients: Vec<String>,
    pub ssh_options: Vec<String>,
    pub server_addr: Option<String>,
    pub server_port: Option<u16>,
    pub install: bool,
    pub remote_dir: String,
    pub keep: bool,
    pub max_offset: Duration,
    /// ringlab-bench is needed on the client hosts (the scenario runs holders there).
    pub bench_on_clients: bool,
    /// ringlab-bench is needed on the server host (the scenario makes its data set there).
    pub bench_on_server: bool,
}

impl FleetOpts {
    /// The fleet flags of `o`, if any was given.
    pub fn of(o: &Opts) -> Result<Option<FleetOpts>> {
        let (server, clients) = match (&o.server_host, &o.client_hosts) {
            (None, None) => return Ok(None),
            (Some(s), Some(c)) if !c.is_empty() => (s.clone(), c.clone()),
            _ => bail!("fleet mode needs both --server-host and --client-hosts"),
        };
        if !ssh::plain_path(&o.remote_dir) {
            bail!(
                "--remote-dir {:?}: an absolute path of letters, digits, '-', '_', '.' and '/'",
                o.remote_dir
            );
        }
        Ok(Some(FleetOpts {
            server,
            clients,
            ssh_options: o.ssh_option.clone(),
            server_addr: o.server_addr.clone(),
            server_port: o.server_port,
            install: o.install,
            remote_dir: o.remote_dir.trim_end_matches('/').to_string(),
            keep: o.keep,
            max_offset: o.max_clock_offset,
            bench_on_clients: false,
            bench_on_server: false,
        }))
    }
}

/// The prefix of the cgroups of a fleet whose server host's directory is `dir`: its last part
/// (unique to the run) and `-cap`.
fn cap_prefix_of(dir: &str) -> String {
    format!("{}-cap", dir.rsplit('/').next().unwrap_or(dir))
}

/// The host part of an ssh destination (`user@host`, `ssh://user@host:port`, `[v6]`).
pub fn host_of(dest: &str) -> String {
    let d = dest.strip_prefix("ssh://").unwrap_or(dest);
    let d = d.rsplit_once('@').map_or(d, |(_, h)| h);
    if let Some(rest) = d.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest).to_string();
    }
    if dest.starts_with("ssh://") {
        if let Some((h, p)) = d.rsplit_once(':') {
            if p.parse::<u16>().is_ok() {
                return h.to_string();
            }
        }
    }
    d.to_string()
}

/// A run of the fleet, as reported per host.
#[derive(Clone, Debug, Serialize)]
pub struct HostRow {
    pub host: String,
    pub processes: usize,
    pub conns: usize,
    pub requests: u64,
    pub rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub errors: u64,
    /// Responses over the whole run (warm-up included), to set against the server's count.
    pub responses_total: u64,
    pub exit_code: i32,
    /// The host's clock offset (its clock minus ours, ms), and the start instant it was given
    /// on its own clock (Unix ms): ours plus its offset.
    pub offset_ms: f64,
    pub start_at_ms: u64,
}

/// One run as the fleet saw it.
#[derive(Clone, Debug, Serialize)]
pub struct FleetRun {
    pub seq: u64,
    pub label: String,
    pub x: f64,
    /// Requests the server answered over its life, and the clients' responses over theirs
    /// (warm-up included): equal when nothing was lost.
    pub server_requests: u64,
    pub client_responses: u64,
    /// Requests made by processes beside the clients, which the server counts too (the idle
    /// connection holders' one checking echo each): `server_requests` is `client_responses`
    /// plus these when nothing was lost.
    pub beside_requests: u64,
    /// Whether the clients count every response (ringlab-client); wrk does not count the
    /// responses to the requests it has in flight when it stops, so its counts fall short.
    pub exact: bool,
    /// Why the counts are not compared when it is not wrk's counting (a server that keeps no
    /// count: nginx).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_compared: Option<String>,
    /// Client runs against this one server (a warm-up run counts).
    pub client_runs: u64,
    pub requests: u64,
    pub rps: f64,
    pub p99_us: f64,
    pub server_cpu_s: f64,
    pub hosts: Vec<HostRow>,
}

/// The hosts, set up.
#[derive(Debug)]
pub struct Fleet {
    pub o: FleetOpts,
    pub server: Host,
    pub clients: Vec<Host>,
    /// The address clients connect to (the server host's, or --server-addr).
    pub server_addr: String,
    seq: Mutex<u64>,
    pub runs: Mutex<Vec<FleetRun>>,
    torn_down: Mutex<bool>,
    /// Whether a server was capped in a cgroup on its host (teardown removes what is left).
    capped: std::sync::atomic::AtomicBool,
    /// The host failure that ended the fleet's use (see [`Fleet::guard`]).
    failed: Mutex<Option<String>>,
    /// Stops every remote process and removes the hosts' directories if a signal ends the
    /// bench (Drop handlers do not run then).
    _on_signal: Option<crate::on_signal::Registered>,
}

/// The remote process groups alive now, as (host index, PID): what a signal must stop.
static REMOTE_PIDS: Mutex<Vec<(usize, u32)>> = Mutex::new(Vec::new());

/// Stop the process groups `pids` on `ssh`'s host (TERM, then KILL a second later).
fn stop_groups(ssh: &Ssh, name: &str, pids: &[u32]) {
    if let Err(e) = call(ssh, &ssh::kill_script(pids)) {
        eprintln!(
            "fleet: {name}: could not stop pids {pids:?}: {e:#} (each is bounded by its remote timeout)"
        );
    }
}

impl Drop for Fleet {
    /// The hosts' directories go whatever path ends the bench.
    fn drop(&mut self) {
        self.teardown();
    }
}

/// What a remote process is, for the watch and the messages.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Server,
    Client,
    /// A peer tool in ringlab-client's place (wrk), named.
    Tool(String),
    /// A process beside the clients (an idle-connection holder), named.
    Beside(String),
}

impl Kind {
    fn program(&self) -> &str {
        match self {
            Kind::Server => "ringlab-server",
            Kind::Client => "ringlab-client",
            Kind::Tool(w) | Kind::Beside(w) => w,
        }
    }

    /// Whether it is the load (ringlab-client or a tool): it ends by itself, `exit=0` at the
    /// end of its run.
    fn is_load(&self) -> bool {
        matches!(self, Kind::Client | Kind::Tool(_))
    }
}

/// A remote process started by a run: where, its PID, and the ssh session watching it.
struct Remote {
    host: usize,
    kind: Kind,
    /// Its process group's PID on the host, once the spawn script said it (see
    /// [`Remote::set_pid`]).
    pid: Option<u32>,
    lines: mpsc::Receiver<Option<String>>,
    child: Child,
    stderr: std::sync::Arc<Mutex<String>>,
    /// A line read ahead (a client's `exit=0` seen while watching), given out next.
    pending: Option<String>,
}

impl Remote {
    fn start(ssh: &Ssh, host: usize, kind: Kind, script: &str) -> Result<Remote> {
        let mut child = ssh
            .command(script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running ssh")?;
        let out = child.stdout.take().context("ssh stdout")?;
        let err = child.stderr.take().context("ssh stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(Some(l)).is_err() {
                    return;
                }
            }
            let _ = tx.send(None);
        });
        let stderr = std::sync::Arc::new(Mutex::new(String::new()));
        let s2 = stderr.clone();
        std::thread::spawn(move || {
            let mut e = String::new();
            let _ = BufReader::new(err).read_to_string(&mut e);
            if let Ok(mut s) = s2.lock() {
                *s = e;
            }
        });
        Ok(Remote {
            host,
            kind,
            pid: None,
            lines: rx,
            child,
            stderr,
            pending: None,
        })
    }

    /// Its process group on the host is `pid` (or none any more: ended, or stopped): kept in
    /// [`REMOTE_PIDS`] for a signal to stop.
    fn set_pid(&mut self, pid: Option<u32>) {
        if let Ok(mut l) = REMOTE_PIDS.lock() {
            if let Some(old) = self.pid {
                if let Some(i) = l.iter().position(|&e| e == (self.host, old)) {
                    l.swap_remove(i);
                }
            }
            if let Some(p) = pid {
                l.push((self.host, p));
            }
        }
        self.pid = pid;
    }

    /// The next line within `limit`: `Ok(None)` at the end of the session.
    fn line(&mut self, limit: Duration) -> Result<Option<String>> {
        if let Some(l) = self.pending.take() {
            return Ok(Some(l));
        }
        match self.lines.recv_timeout(limit) {
            Ok(Some(l)) => Ok(Some(l)),
            Ok(None) | Err(mpsc::RecvTimeoutError::Disconnected) => Ok(None),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!("no answer within {limit:?}"),
        }
    }

    /// Why the session ended: ssh's exit code and the last line it printed on stderr.
    fn lost(&mut self) -> String {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut st = None;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = self.child.try_wait() {
                st = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(50));
        let e = self
            .stderr
            .lock()
            .map(|e| last_line(&e))
            .unwrap_or_default();
        match st.and_then(|s| s.code()) {
            Some(255) => format!("the SSH connection was lost (ssh exit 255: {e})"),
            c => format!("the SSH session ended early (ssh exit {c:?}: {e})"),
        }
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        self.set_pid(None);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `exit=`, `err:` and `--file--` parts of a finished spawn script.
#[derive(Debug, Default)]
struct Ended {
    code: Option<i32>,
    err: Vec<String>,
    file: String,
}

/// A log line without the timestamp and level a tracing subscriber puts first
/// (`2026-12-02T08:55:54.451751Z ERROR ringlab-server: ...` → `ringlab-server: ...`).
fn untimed(line: &str) -> &str {
    let mut w = line.splitn(3, ' ');
    match (w.next(), w.next(), w.next()) {
        (Some(t), Some(lvl), Some(rest))
            if t.len() > 20
                && t.ends_with('Z')
                && t.as_bytes().get(10) == Some(&b'T')
                && ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&lvl) =>
        {
            rest.trim_start()
        }
        _ => line,
    }
}

fn read_end(r: &mut Remote, limit: Duration) -> Result<Ended> {
    let deadline = Instant::now() + limit;
    let mut e = Ended::default();
    let mut in_file = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(l) = r.line(left.max(Duration::from_millis(1)))? else {
            break;
        };
        if in_file {
            e.file.push_str(&l);
            e.file.push('\n');
        } else if let Some(c) = l.strip_prefix("exit=") {
            e.code = c.trim().parse().ok();
        } else if let Some(m) = l.strip_prefix("err: ") {
            e.err.push(untimed(m).to_string());
        } else if l == "--file--" {
            in_file = true;
        }
    }
    if e.code.is_none() {
        bail!("{}", r.lost());
    }
    Ok(e)
}

impl Fleet {
    /// Reach every host, measure its clock, check or copy the binaries.
    pub fn setup(o: FleetOpts, bins: &Bins) -> Result<Fleet> {
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let base = format!(
            "{}/ringlab-fleet-{stamp}-{}",
            o.remote_dir,
            std::process::id()
        );
        let mk = |role: &'static str, dest: &str, i: usize| Host {
            role,
            ssh: Ssh {
                dest: dest.to_string(),
                options: o.ssh_options.clone(),
            },
            // One directory per host, even where hosts share a file system.
            dir: format!("{base}-h{i}"),
            bin: String::new(),
            bench: String::new(),
            limits: HostLimits::default(),
            offset: Offset::default(),
            made: false,
        };
        let server = mk("server", &o.server, 0);
        let clients: Vec<Host> = o
            .clients
            .iter()
            .enumerate()
            .map(|(i, d)| mk("client", d, i + 1))
            .collect();
        let server_addr = o.server_addr.clone().unwrap_or_else(|| host_of(&o.server));
        let mut f = Fleet {
            o,
            server,
            clients,
            server_addr,
            seq: Mutex::new(0),
            runs: Mutex::new(Vec::new()),
            torn_down: Mutex::new(false),
            capped: std::sync::atomic::AtomicBool::new(false),
            failed: Mutex::new(None),
            _on_signal: None,
        };
        f._on_signal = Some(f.on_signal());
        // On failure `f` is dropped, which removes what was made on the hosts.
        match f.prepare(bins) {
            Ok(()) => Ok(f),
            Err(e) => Err(anyhow::Error::new(HostFailed(format!("{e:#}")))),
        }
    }

    fn hosts_mut(&mut self) -> impl Iterator<Item = &mut Host> {
        std::iter::once(&mut self.server).chain(self.clients.iter_mut())
    }

    fn hosts(&self) -> impl Iterator<Item = &Host> {
        std::iter::once(&self.server).chain(self.clients.iter())
    }

    fn prepare(&mut self, bins: &Bins) -> Result<()> {
        let max = self.o.max_offset;
        let install = self.o.install;
        let bench = std::env::current_exe().context("locating ringlab-bench")?;
        let ident = |name: &'static str, p: &Path| -> Result<Binary> {
            let (version, sum) = local_identity(p)?;
            Ok(Binary {
                name,
                version,
                sum,
                local: p.to_path_buf(),
            })
        };
        let server_bin = ident("ringlab-server", &bins.server)?;
        let client_bin = ident("ringlab-client", &bins.client)?;
        let (on_clients, on_server) = (self.o.bench_on_clients, self.o.bench_on_server);
        let bench_bin = if on_clients || on_server {
            Some(ident("ringlab-bench", &bench)?)
        } else {
            None
        };
        for h in self.hosts_mut() {
            let name = h.name();
            let off = measure_offset(&h.ssh).map_err(|e| anyhow!("{name}: {e:#}"))?;
            h.offset = off;
            eprintln!(
                "fleet: {name}: clock offset {:+.2} ms (±{:.2} ms, half the round trip)",
                off.offset_ms,
                off.rtt_ms / 2.0
            );
            if off.offset_ms.abs() > max.as_secs_f64() * 1e3 {
                bail!(
                    "{name}: clock offset {:+.1} ms exceeds --max-clock-offset {} ms (sync the clocks: chrony or PTP)",
                    off.offset_ms,
                    max.as_millis()
                );
            }
            let server = h.role == "server";
            let main = if server { &server_bin } else { &client_bin };
            h.bin = place(h, main, install)?;
            let bench_here = if server { on_server } else { on_clients };
            if let (true, Some(b)) = (bench_here, &bench_bin) {
                h.bench = place(h, b, install)?;
            }
            let lim = call(&h.ssh, ssh::LIMITS_SCRIPT).map_err(|e| anyhow!("{name}: {e:#}"))?;
            h.limits = HostLimits::parse(&lim);
        }
        Ok(())
    }

    /// What a signal does to the fleet: stop every remote process group alive (host by host,
    /// at once), then remove the hosts' directories (unless --keep; a directory not made yet is
    /// not there to remove).
    fn on_signal(&self) -> crate::on_signal::Registered {
        let hosts: Vec<(Ssh, String, String)> = self
            .hosts()
            .map(|h| (h.ssh.clone(), h.name(), h.dir.clone()))
            .collect();
        let keep = self.o.keep;
        crate::on_signal::register(move || {
            let pids = REMOTE_PIDS.lock().map(|l| l.clone()).unwrap_or_default();
            let handles: Vec<_> = hosts
                .iter()
                .enumerate()
                .map(|(i, (ssh, name, dir))| {
                    let mine: Vec<u32> = pids.iter().filter(|e| e.0 == i).map(|e| e.1).collect();
                    let (ssh, name, dir) = (ssh.clone(), name.clone(), dir.clone());
                    std::thread::spawn(move || {
                        if !mine.is_empty() {
                            eprintln!("fleet: {name}: stopping process groups {mine:?}");
                            stop_groups(&ssh, &name, &mine);
                        }
                        if i == 0 {
                            // The server's cgroups (a capped server's), now empty.
                            let _ = call(&ssh, &ssh::uncap_script(&cap_prefix_of(&dir)));
                        }
                        if !keep {
                            let _ = call(&ssh, &format!("rm -rf {}", ssh::quote(&dir)));
                        }
                    })
                })
                .collect();
            for h in handles {
                let _ = h.join();
            }
        })
    }

    /// Remove every host's directory (unless --keep). Idempotent.
    pub fn teardown(&self) {
        let Ok(mut done) = self.torn_down.lock() else {
            return;
        };
        if *done {
            return;
        }
        *done = true;
        if self.capped.load(std::sync::atomic::Ordering::Relaxed) {
            // Sessions remove their groups; one a failure left is removed here.
            let _ = call(&self.server.ssh, &ssh::uncap_script(&self.cap_prefix()));
        }
        for h in self.hosts().filter(|h| h.made) {
            if self.o.keep {
                eprintln!("fleet: {}: kept {}", h.name(), h.dir);
                continue;
            }
            if let Err(e) = call(&h.ssh, &format!("rm -rf {}", ssh::quote(&h.dir))) {
                eprintln!("fleet: {}: could not remove {}: {e:#}", h.name(), h.dir);
            }
        }
    }

    /// Whether a server can be capped at `share` of a CPU on the server host: a group made
    /// with that quota and removed at once; its cgroup files, or (inner error) why not.
    pub fn probe_cap(&self, share: f64) -> Result<std::result::Result<String, String>> {
        let (period, quota) = crate::cgroup::period_and_quota(share);
        let prefix = self.cap_prefix();
        let out = self.on_server(&ssh::cap_script(
            &format!("{prefix}-probe"),
            period,
            quota,
            &[],
        ))?;
        self.on_server(&ssh::uncap_script(&prefix))?;
        Ok(match out.lines().find_map(|l| l.strip_prefix("cgroup=")) {
            Some(l) => Ok(l
                .split_once(" (")
                .map_or(l, |(_, w)| w.trim_end_matches(')'))
                .to_string()),
            None => Err(format!(
                "{}: {}",
                self.server.name(),
                out.lines()
                    .find_map(|l| l.strip_prefix("cap-failed: "))
                    .unwrap_or("the cap script said nothing")
            )),
        })
    }

    /// The name every cgroup of this fleet's servers starts with (on the server host).
    pub fn cap_prefix(&self) -> String {
        self.capped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        cap_prefix_of(&self.server.dir)
    }

    fn host(&self, i: usize) -> &Host {
        if i == 0 {
            &self.server
        } else {
            &self.clients[i - 1]
        }
    }

    /// Stop every remote process in `live` by PID (its process group), host by host.
    fn stop_all(&self, live: &mut Vec<Remote>) {
        let mut by_host: std::collections::BTreeMap<usize, Vec<u32>> = Default::default();
        for r in live.iter() {
            if let Some(p) = r.pid {
                by_host.entry(r.host).or_default().push(p);
            }
        }
        let handles: Vec<_> = by_host
            .into_iter()
            .map(|(h, pids)| {
                let ssh = self.host(h).ssh.clone();
                let name = self.host(h).name();
                std::thread::spawn(move || stop_groups(&ssh, &name, &pids))
            })
            .collect();
        for h in handles {
            let _ = h.join();
        }
        live.clear();
    }

    /// Run `script` on the server host (bounded): its stdout.
    pub fn on_server(&self, script: &str) -> Result<String> {
        call(&self.server.ssh, script).map_err(|e| anyhow!("{}: {e:#}", self.server.name()))
    }

    /// [`Fleet::on_server`] with its own bound (a long job: the files scenario's data set).
    pub fn on_server_within(&self, script: &str, limit: Duration) -> Result<String> {
        call_within(&self.server.ssh, script, limit)
            .map_err(|e| anyhow!("{}: {e:#}", self.server.name()))
    }

    /// Copy `local` to every client host's directory as `name` (which a client run there can
    /// then name relative to its directory, where it starts).
    pub fn put_on_clients(&self, local: &Path, name: &str) -> Result<()> {
        if !ssh::plain_path(&format!("/{name}")) || name.contains('/') {
            bail!("{name:?}: a plain file name");
        }
        for h in &self.clients {
            copy_to(
                h,
                local,
                &format!("{}/{name}", h.dir),
                name,
                Duration::from_secs(60),
            )?;
        }
        Ok(())
    }

    /// Run `script` on every client host (bounded): each host's destination and stdout.
    pub fn on_clients(&self, script: &str) -> Result<Vec<(String, String)>> {
        self.clients
            .iter()
            .map(|h| {
                call(&h.ssh, script)
                    .map(|out| (h.ssh.dest.clone(), out))
                    .map_err(|e| anyhow!("{}: {e:#}", h.name()))
            })
            .collect()
    }

    /// Send SIGTERM to the process groups `pids` (each `(host, pid)`), host by host.
    fn signal_groups(&self, pids: &[(usize, u32)]) {
        let mut by_host: std::collections::BTreeMap<usize, Vec<u32>> = Default::default();
        for &(h, p) in pids {
            by_host.entry(h).or_default().push(p);
        }
        for (h, pids) in by_host {
            if let Err(e) = call(&self.host(h).ssh, &ssh::term_script(&pids)) {
                eprintln!(
                    "fleet: {}: could not signal pids {pids:?}: {e:#}",
                    self.host(h).name()
                );
            }
        }
    }

    /// A session on this fleet (one server's life; see [`session`]): its remote processes
    /// live at most `limit_s` seconds each. Refused once a host has failed.
    pub fn session(&self, tmp: &Path, limit_s: u64) -> Result<session::Session<'_>> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        session::Session::new(self, tmp, limit_s)
    }

    /// `body` on this fleet: any error it returns but a [`RunFailed`] is a host failure that
    /// ends the bench ([`HostFailed`]), remembered so that every later use of the fleet refuses
    /// at once.
    pub fn guard<T>(&self, body: impl FnOnce() -> Result<T>) -> Result<T> {
        body().map_err(|e| {
            if is_host_failure(&e) || e.downcast_ref::<RunFailed>().is_some() {
                return e;
            }
            let f = HostFailed(format!("{e:#}"));
            if let Ok(mut m) = self.failed.lock() {
                m.get_or_insert_with(|| f.0.clone());
            }
            anyhow::Error::new(f)
        })
    }

    /// The host failure that ended the fleet's use, if one did.
    pub fn failure(&self) -> Option<anyhow::Error> {
        let m = self.failed.lock().ok()?;
        m.as_ref()
            .map(|s| anyhow::Error::new(HostFailed(s.clone())))
    }

    /// Run `spec` across the fleet: a fresh server, one client run, the server stopped.
    pub fn run(&self, spec: &RunSpec, tmp: &Path) -> Result<RunResult> {
        self.guard(|| {
            let window = spec.warmup_s + spec.duration_s;
            let limit = (START_MARGIN.as_secs_f64() + window + 30.0).ceil() as u64;
            let mut s = self.session(tmp, limit)?;
            s.server(&spec.server_args)?;
            if let Some(share) = spec.server_share {
                s.cap_server(share)?.map_err(anyhow::Error::msg)?;
            }
            let mut r = s.clients(spec)?;
            let stats = s.finish()?;
            let served = stats.total.requests;
            if served > 0 && !matches!(stats.io.as_str(), "tokio" | "tokio-uring") {
                r.syscalls_per_req = Some(stats.total.syscalls.total() as f64 / served as f64);
            }
            Ok(r)
        })
    }

    /// The report's section: the hosts, their clock offsets, and every run per host.
    pub fn section(&self) -> String {
        let mut t = String::from(
            "Fleet mode: the server and the clients on separate hosts over SSH (every client given one start instant as `--start-at` on its own host's clock: ours plus that host's offset, shown per host and run below; clock offsets measured over SSH before the first run, the sample with the shortest round trip).\n\n| role | host | binary | clock offset ms | ± ms |\n|---|---|---|---:|---:|\n",
        );
        for h in self.hosts() {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {:+.2} | {:.2} |",
                h.role,
                h.ssh.dest,
                h.bin,
                h.offset.offset_ms,
                h.offset.rtt_ms / 2.0
            );
        }
        if let Ok(runs) = self.runs.lock() {
            for r in runs.iter() {
                t += "\n";
                t += &run_table(r);
            }
        }
        t
    }
}

/// `--conns`, `--rate`, `--requests` and `--connect-rate` of `args` shared out among `n`
/// hosts (host `i`'s share; an absent `--conns` is the client's default, 64); `--processes`
/// at most the host's connections; the rest as is. `None`: host `i`'s share is no connection
/// (fewer connections than hosts), so it sits this run out.
pub fn host_args(args: &[String], i: usize, n: usize) -> Option<Vec<String>> {
    let get = |names: &[&str]| -> Option<String> {
        let mut v = None;
        let mut it = args.iter();
        while let Some(a) = it.next() {
            for nm in names {
                if a == nm {
                    v = it.clone().next().cloned();
                } else if let Some(x) = a.strip_prefix(&format!("{nm}=")) {
                    v = Some(x.to_string());
                }
            }
        }
        v
    };
    let total: usize = get(&["--conns", "-c"])
        .and_then(|c| c.parse().ok())
        .unwrap_or(64);
    let conns = ringlab_runtime::cpus::even_shares(total, n.max(1));
    let mine = conns.get(i).copied().unwrap_or(0);
    if mine == 0 {
        return None;
    }
    let frac = mine as f64 / total.max(1) as f64;
    let mut out = Vec::new();
    let mut it = args.iter();
    let split = [
        "--conns",
        "-c",
        "--rate",
        "-R",
        "--requests",
        "-n",
        "--connect-rate",
        "--processes",
    ];
    while let Some(a) = it.next() {
        if split.contains(&a.as_str()) {
            it.next();
            continue;
        }
        if split.iter().any(|s| a.starts_with(&format!("{s}="))) {
            continue;
        }
        out.push(a.clone());
    }
    if let Some(p) = get(&["--processes"]).and_then(|p| p.parse::<usize>().ok()) {
        out.extend(["--processes".to_string(), p.min(mine).to_string()]);
    }
    out.extend(["--conns".to_string(), mine.to_string()]);
    if let Some(r) = get(&["--rate", "-R"]).and_then(|r| r.parse::<f64>().ok()) {
        out.extend(["--rate".to_string(), format!("{}", r * frac)]);
    }
    if let Some(r) = get(&["--requests", "-n"]).and_then(|r| r.parse::<usize>().ok()) {
        let shares = ringlab_runtime::cpus::even_shares(r, n.max(1));
        out.extend(["--requests".to_string(), shares[i].to_string()]);
    }
    if let Some(r) = get(&["--connect-rate"]).and_then(|r| r.parse::<f64>().ok()) {
        out.extend(["--connect-rate".to_string(), format!("{}", r * frac)]);
    }
    Some(out)
}

/// The per-host rows of one run.
fn host_rows(reports: &[(String, ClientReport)], ends: &[i32]) -> Vec<HostRow> {
    reports
        .iter()
        .zip(ends)
        .map(|((host, r), &code)| HostRow {
            host: host.clone(),
            processes: r.processes.len().max(1),
            conns: r.conns,
            requests: r.requests,
            rps: r.requests_per_sec,
            p50_us: r.latency_us.at(50.0),
            p99_us: r.latency_us.at(99.0),
            max_us: r.latency_us.max,
            errors: r.errors_total,
            responses_total: r.counters.responses,
            exit_code: code,
            offset_ms: 0.0,
            start_at_ms: 0,
        })
        .collect()
}

/// The clients' reports of one run as one result: counts and rates added, latency from the
/// merged histogram `hist` (the hosts' interval logs added), never averaged.
pub fn merge_hosts(
    spec: &RunSpec,
    reports: &[(String, ClientReport)],
    hist: &Histogram<u64>,
    ends: &[i32],
) -> RunResult {
    let sum = |f: fn(&ClientReport) -> f64| reports.iter().map(|(_, r)| f(r)).sum::<f64>();
    let q = |p: f64| hist.value_at_quantile(p / 100.0) as f64;
    let _ = ends;
    RunResult {
        label: spec.label.clone(),
        x: spec.x,
        requests: sum(|r| r.requests as f64),
        rps: sum(|r| r.requests_per_sec),
        mean_us: hist.mean(),
        p50_us: q(50.0),
        p90_us: q(90.0),
        p99_us: q(99.0),
        p999_us: q(99.9),
        max_us: hist.max() as f64,
        errors: sum(|r| r.errors_total as f64),
        non_2xx: sum(|r| r.non_2xx_3xx as f64),
        connects_per_s: sum(|r| r.counters.connects as f64 / (r.warmup_s + r.elapsed_s).max(1e-9)),
        data_errors: sum(|r| r.data_errors as f64),
        client_cpu: sum(|r| r.cpu.iter().map(|t| t.busy).sum()),
        client_saturated: reports.iter().any(|(_, r)| r.saturation.saturated),
        percentiles: [50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0]
            .iter()
            .map(|&p| (p, q(p)))
            .collect(),
        ..RunResult::default()
    }
}

impl FleetRun {
    /// Whether the server's count is the clients' (and the processes' beside them): `None`
    /// where the clients do not count every response (wrk).
    pub fn counts_equal(&self) -> Option<bool> {
        (self.exact && self.not_compared.is_none())
            .then(|| self.server_requests == self.client_responses + self.beside_requests)
    }
}

/// One run's per-host table (markdown, also printed).
pub fn run_table(r: &FleetRun) -> String {
    let beside = if r.beside_requests > 0 {
        format!(
            " + {} checking echoes of the idle-connection holders",
            r.beside_requests
        )
    } else {
        String::new()
    };
    let runs = if r.client_runs > 1 {
        format!(" over {} client runs", r.client_runs)
    } else {
        String::new()
    };
    let counts = match r.counts_equal() {
        Some(eq) => format!(
            "server answered {}, clients received {}{runs}{beside} ({})",
            r.server_requests,
            r.client_responses,
            if eq { "equal" } else { "DIFFERENT" }
        ),
        None => match &r.not_compared {
            Some(why) => format!(
                "the clients counted {} (not compared: {why})",
                r.client_responses
            ),
            None => format!(
                "server answered {}, the clients counted {} (not compared: wrk does not count the responses to requests in flight when it stops)",
                r.server_requests, r.client_responses
            ),
        },
    };
    let mut t = format!(
        "run {} {} x={}: {} requests, {:.0} req/s, p99 {:.0} µs; {counts}\n\n| host | clock offset ms | start-at (its clock) | processes | conns | requests | req/s | p50 µs | p99 µs | max µs | errors | exit |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        r.seq, r.label, r.x, r.requests, r.rps, r.p99_us,
    );
    for h in &r.hosts {
        let _ = writeln!(
            t,
            "| {} | {:+.2} | {} | {} | {} | {} | {:.0} | {} | {} | {} | {} | {} |",
            h.host,
            h.offset_ms,
            h.start_at_ms,
            h.processes,
            h.conns,
            h.requests,
            h.rps,
            h.p50_us,
            h.p99_us,
            h.max_us,
            h.errors,
            h.exit_code
        );
    }
    t
}

/// What [`ssh::proc_script`] printed, read.
#[derive(Clone, Debug, Default)]
pub struct ProcRead {
    pub sample: ProcSample,
    pub rss_kib: u64,
    pub now_ns: i128,
    /// The `/proc/diskstats` line asked for, if it was.
    pub disk: Option<String>,
}

impl ProcRead {
    pub fn parse(text: &str) -> Result<ProcRead> {
        let mut tck = 100.0;
        let (mut ut, mut st, mut ctx, mut rss) = (0.0, 0.0, 0u64, 0u64);
        let mut run_ns = Some(0u64);
        let mut now = 0;
        let mut procs = 0;
        let mut disk = None;
        for l in text.lines() {
            if let Some(s) = l.strip_prefix("disk ") {
                disk = Some(s.to_string());
            } else if let Some(s) = l.strip_prefix("stat ") {
                let rest = s
                    .rsplit_once(')')
                    .map(|(_, r)| r)
                    .context("malformed stat")?;
                let f: Vec<&str> = rest.split_whitespace().collect();
                ut += f
                    .get(11)
                    .and_then(|v| v.parse::<f64>().ok())
                    .context("utime")?;
                st += f
                    .get(12)
                    .and_then(|v| v.parse::<f64>().ok())
                    .context("stime")?;
                procs += 1;
            } else if let Some(s) = l.strip_prefix("sched") {
                // An empty value: the thread ended between the listing and the read (its time
                // is gone with it); an unreadable one: no schedstat, ticks are used instead.
                if !s.trim().is_empty() {
                    run_ns = run_ns.zip(s.trim().parse::<u64>().ok()).map(|(a, b)| a + b);
                }
            } else if let Some((k, v)) = l.split_once(':') {
                let v = v
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
                match k {
                    "voluntary_ctxt_switches" | "nonvoluntary_ctxt_switches" => ctx += v,
                    "VmRSS" => rss += v,
                    _ => {}
                }
            } else if let Some(v) = l.strip_prefix("tck ") {
                tck = v.trim().parse().unwrap_or(100.0);
            } else if let Some(v) = l.strip_prefix("now ") {
                now = v.trim().parse().unwrap_or(0);
            }
        }
        if procs == 0 {
            bail!("the server's processes are gone from /proc");
        }
        Ok(ProcRead {
            sample: ProcSample {
                user_s: ut / tck,
                sys_s: st / tck,
                ctx_switches: ctx,
                run_ns,
            },
            rss_kib: rss,
            now_ns: now,
            disk,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use ringlab_client::report::{build_from, Partial};

    #[test]
    fn a_remote_command_with_more_output_than_a_pipe_holds_finishes() {
        // 1 MB on stdout and 100 kB on stderr: the child blocks unless both are read while
        // it runs.
        let child = Command::new("sh")
            .args([
                "-c",
                "head -c 100000 /dev/zero >&2; head -c 1000000 /dev/zero; exit 3",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = wait_output(child, Duration::from_secs(20)).unwrap();
        assert_eq!(out.stdout.len(), 1_000_000);
        assert_eq!(out.stderr.len(), 100_000);
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn offset_from_the_shortest_round_trip() {
        // Host 250 ms ahead. A slow sample (asymmetric, 40 ms) would say otherwise; the
        // 2 ms one is used.
        let s = [
            Sample {
                t0: 0,
                remote: 250_000_000 + 35_000_000,
                t1: 40_000_000,
            },
            Sample {
                t0: 100_000_000,
                remote: 351_000_000,
                t1: 102_000_000,
            },
            Sample {
                t0: 200_000_000,
                remote: 455_000_000,
                t1: 210_000_000,
            },
        ];
        let o = estimate(&s).unwrap();
        assert!((o.offset_ms - 250.0).abs() < 1e-9, "{o:?}");
        assert!((o.rtt_ms - 2.0).abs() < 1e-9);
        // Behind.
        let o = estimate(&[Sample {
            t0: 1_000_000_000,
            remote: 900_000_000,
            t1: 1_000_000_000,
        }])
        .unwrap();
        assert!((o.offset_ms + 100.0).abs() < 1e-9);
        assert!(estimate(&[]).is_none());
    }

    #[test]
    fn log_lines_lose_their_timestamp() {
        assert_eq!(
            untimed(
                "2026-12-02T08:55:54.451751Z ERROR ringlab-server: cannot listen on 0.0.0.0:22"
            ),
            "ringlab-server: cannot listen on 0.0.0.0:22"
        );
        assert_eq!(untimed("  WARN x: y"), "  WARN x: y");
        assert_eq!(untimed("ringlab-client: bad"), "ringlab-client: bad");
    }

    #[test]
    fn host_limits_parse() {
        let l = HostLimits::parse("nofile_hard=1048576\nnr_open=1048576\nports=32768\t60999\n");
        assert_eq!(
            (l.nofile_hard, l.nr_open, l.ports),
            (1048576, 1048576, 28232)
        );
        // `ulimit -Hn` says unlimited: as far as nr_open; an unreadable range: Linux's default.
        let l = HostLimits::parse("nofile_hard=unlimited\nnr_open=524288\nports=\n");
        assert_eq!((l.nofile_hard, l.ports), (524288, 28232));
        // What the script prints here parses.
        let out = Command::new("sh")
            .arg("-c")
            .arg(ssh::LIMITS_SCRIPT)
            .output()
            .unwrap();
        let l = HostLimits::parse(&String::from_utf8_lossy(&out.stdout));
        assert!(l.nofile_hard > 0 && l.ports > 1000, "{l:?}");
    }

    #[test]
    fn host_failures_are_told_apart_and_keep_their_line() {
        let e = anyhow::Error::new(HostFailed("client host root@h: lost".into()));
        assert!(is_host_failure(&e));
        assert_eq!(format!("{e:#}"), "client host root@h: lost");
        assert!(!is_host_failure(&anyhow!("a run failed")));
    }

    #[test]
    fn host_part_of_destinations() {
        assert_eq!(host_of("10.0.0.1"), "10.0.0.1");
        assert_eq!(host_of("root@10.0.0.1"), "10.0.0.1");
        assert_eq!(host_of("ssh://me@box:2222"), "box");
        assert_eq!(host_of("me@[fe80::1]"), "fe80::1");
        assert_eq!(host_of("bench-server"), "bench-server");
    }

    #[test]
    fn loads_are_shared_out_among_hosts() {
        let a: Vec<String> = [
            "--io",
            "epoll",
            "--size",
            "64",
            "--conns",
            "5",
            "--rate",
            "1000",
            "--processes",
            "2",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let h0 = host_args(&a, 0, 2).unwrap();
        let h1 = host_args(&a, 1, 2).unwrap();
        assert_eq!(
            h0,
            [
                "--io",
                "epoll",
                "--size",
                "64",
                "--processes",
                "2",
                "--conns",
                "3",
                "--rate",
                "600"
            ]
        );
        assert_eq!(
            h1,
            [
                "--io",
                "epoll",
                "--size",
                "64",
                "--processes",
                "2",
                "--conns",
                "2",
                "--rate",
                "400"
            ]
        );
        // No --conns: the client's default, shared.
        let d = host_args(&["--requests=9".to_string()], 2, 3).unwrap();
        assert_eq!(d, ["--conns", "21", "--requests", "3"]);
        // One connection over two hosts with two processes each: the first host runs it in
        // one process, the second sits the run out.
        let one: Vec<String> = ["--processes", "2", "--conns", "1"]
            .map(String::from)
            .to_vec();
        assert_eq!(
            host_args(&one, 0, 2).unwrap(),
            ["--processes", "1", "--conns", "1"]
        );
        assert_eq!(host_args(&one, 1, 2), None);
    }

    fn report(n: u64, us: u64, conns: &str) -> ClientReport {
        let cfg = ringlab_client::Args::parse_from(["c", "127.0.0.1:1", "-d", "1s", "-c", conns])
            .resolve()
            .unwrap();
        let mut p = Partial::new();
        for _ in 0..n {
            p.corrected.record(us).unwrap();
            p.raw.record(us).unwrap();
        }
        p.counters.measured = n;
        p.counters.responses = n + 7;
        p.elapsed = Duration::from_secs(1);
        serde_json::from_str(&build_from(&cfg, p).to_json()).unwrap()
    }

    #[test]
    fn hosts_merge_exactly_and_keep_their_rows() {
        // Host a: 1000 responses at 100 µs; host b: 10 at 10 ms. Merged: p50 100 µs, p99.9
        // 10 ms, 1010 requests (the average of the medians would be about 5 ms).
        let reps = vec![
            ("a".to_string(), report(1000, 100, "4")),
            ("b".to_string(), report(10, 10_000, "2")),
        ];
        let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        h.record_n(100, 1000).unwrap();
        h.record_n(10_000, 10).unwrap();
        let spec = RunSpec {
            label: "epoll".into(),
            x: 6.0,
            ..RunSpec::default()
        };
        let r = merge_hosts(&spec, &reps, &h, &[0, 0]);
        assert_eq!(r.requests, 1010.0);
        assert_eq!(r.rps, 1010.0);
        assert_eq!(r.p50_us, 100.0);
        assert!((r.p999_us - 10_000.0).abs() <= 10.0, "{}", r.p999_us);
        let rows = host_rows(&reps, &[0, 1]);
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].requests, rows[0].conns, rows[0].p50_us),
            (1000, 4, 100)
        );
        assert_eq!(
            (rows[1].requests, rows[1].conns, rows[1].exit_code),
            (10, 2, 1)
        );
        assert_eq!(rows[0].responses_total + rows[1].responses_total, 1024);
        let run = FleetRun {
            seq: 1,
            label: "epoll".into(),
            x: 6.0,
            server_requests: 1024,
            client_responses: 1024,
            beside_requests: 0,
            exact: true,
            not_compared: None,
            client_runs: 1,
            requests: 1010,
            rps: 1010.0,
            p99_us: r.p99_us,
            server_cpu_s: 0.1,
            hosts: rows,
        };
        let t = run_table(&run);
        assert!(
            t.contains("server answered 1024, clients received 1024 (equal)"),
            "{t}"
        );
        assert!(
            t.contains("| a | +0.00 | 0 | 1 | 4 | 1000 | 1000 | 100 |"),
            "{t}"
        );
        // Holders' checking echoes are the server's too; wrk's counts are not compared.
        let mut held = run.clone();
        held.server_requests = 1524;
        held.beside_requests = 500;
        assert_eq!(held.counts_equal(), Some(true));
        assert!(run_table(&held).contains("+ 500 checking echoes"), "{t}");
        held.beside_requests = 499;
        assert_eq!(held.counts_equal(), Some(false));
        held.exact = false;
        assert_eq!(held.counts_equal(), None);
        assert!(run_table(&held).contains("not compared"));
    }

    #[test]
    fn proc_reads_over_ssh_parse() {
        let text = "stat 42 (ringlab-server) S 1 42 42 0 -1 0 0 0 0 0 150 50 0 0 20 0 2 0\nsched 1500000000\nvoluntary_ctxt_switches:\t10\nnonvoluntary_ctxt_switches:\t5\nsched 500000000\nvoluntary_ctxt_switches:\t1\nnonvoluntary_ctxt_switches:\t0\nVmRSS:\t  2048 kB\ntck 100\nnow 1700000000000000000\n";
        let p = ProcRead::parse(text).unwrap();
        assert!((p.sample.user_s - 1.5).abs() < 1e-9);
        assert!((p.sample.sys_s - 0.5).abs() < 1e-9);
        assert_eq!(p.sample.run_ns, Some(2_000_000_000));
        assert_eq!(p.sample.ctx_switches, 16);
        assert_eq!(p.rss_kib, 2048);
        assert_eq!(p.now_ns, 1_700_000_000_000_000_000);
        // And what the script prints for this very process.
        let out = Command::new("sh")
            .arg("-c")
            .arg(ssh::proc_script(&[std::process::id()], None))
            .output()
            .unwrap();
        let me = ProcRead::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        assert!(
            me.sample.run_ns.is_some_and(|n| n > 0) && me.rss_kib > 0,
            "{me:?}"
        );
        assert!(ProcRead::parse("tck 100\n").is_err());
        assert_eq!(me.disk, None);
        // With a device: its /proc/diskstats line, as the files scenario reads it.
        let stats = std::fs::read_to_string("/proc/diskstats").unwrap();
        let Some(first) = stats.lines().next() else {
            return; // no block device at all
        };
        let f: Vec<u32> = first
            .split_whitespace()
            .take(2)
            .map(|v| v.parse().unwrap())
            .collect();
        let out = Command::new("sh")
            .arg("-c")
            .arg(ssh::proc_script(&[std::process::id()], Some((f[0], f[1]))))
            .output()
            .unwrap();
        let me = ProcRead::parse(&String::from_utf8_lossy(&out.stdout)).unwrap();
        let line = me.disk.expect("the device's line");
        let (name, _) = crate::scenario::files::disk::parse(&line, f[0], f[1]).unwrap();
        assert_eq!(Some(name.as_str()), first.split_whitespace().nth(2));
    }
}
