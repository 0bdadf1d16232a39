//! One measured run: a fresh server, one client run against it, measurements from both sides.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ringlab_client::Report as ClientReport;
use ringlab_server::ServerStats;
use serde::Serialize;

use crate::netns::Netns;
use crate::peers::{Dropped, Peer, PeerProc};
use crate::procs::{busy_ticks, perf_syscalls, rss_kib, steal_ticks, Bins, ProcSample, Server};

/// What to run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunSpec {
    /// Row label (backend, or backend and variant).
    pub label: String,
    /// The swept parameter (connections, payload size, rate, clients).
    pub x: f64,
    pub server_args: Vec<String>,
    /// Client arguments besides the target, cores, duration, warm-up and JSON output.
    pub client_args: Vec<String>,
    pub client_cores: String,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Put the server in this cgroup (its directory) before the client starts: its CPU cap.
    #[serde(skip)]
    pub cgroup: Option<std::path::PathBuf>,
    /// Fleet mode: cap the server at this share of a CPU in a cgroup on its host.
    #[serde(skip)]
    pub server_share: Option<f64>,
    /// Record a CPU profile of the server's CPUs over the measured window into this file.
    #[serde(skip)]
    pub profile: Option<std::path::PathBuf>,
    /// Run this peer (`--peer`) instead of ringlab-server (`server_args` then only give its
    /// `--cores`).
    #[serde(skip)]
    pub peer: Option<Peer>,
}

/// What one run measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RunResult {
    pub label: String,
    pub x: f64,
    /// The repetition it belongs to (runs of one repetition are paired in the statistics).
    pub rep: usize,
    /// When its measured window began (Unix time, milliseconds): runs measured side by side
    /// share it.
    pub window_start_ms: u64,
    pub requests: f64,
    pub rps: f64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub errors: f64,
    /// HTTP responses other than 2xx or 3xx (e.g. `503` from a server at its --max-conns).
    pub non_2xx: f64,
    /// Connections the client established per second over its whole run (warm-up included):
    /// with a new connection per request, the rate of TCP connection setups and teardowns.
    pub connects_per_s: f64,
    /// Responses that were not what was sent (echo bytes that differ, malformed HTTP).
    pub data_errors: f64,
    /// Resident memory of the server's processes at the end of the window, KiB.
    pub server_rss_kib: f64,
    /// Host steal time over the window, % of the server's and client's CPUs' time: the
    /// hypervisor running something else while they wanted to run (a disturbed run).
    pub steal_pct: f64,
    /// Server CPU (user + system) over the measured window.
    pub server_cpu_s: f64,
    pub server_user_s: f64,
    pub server_sys_s: f64,
    pub cpu_per_req_us: f64,
    /// Server's own syscall counters over its whole life, per request it served.
    pub syscalls_per_req: Option<f64>,
    /// `raw_syscalls:sys_enter` counted by perf over the window, per request.
    pub perf_syscalls_per_req: Option<f64>,
    pub ctx_switches_per_req: f64,
    /// Client CPU use (1.0 = one core busy) as the client reports it.
    pub client_cpu: f64,
    /// Busy time of the client's CPUs over the window per request, µs (`/proc/stat`:
    /// everything they ran, the client and the kernel work done there). Measured the same way
    /// for ringlab-client and wrk, where a run has its client CPUs to itself (one target
    /// alone); 0 where not measured.
    pub client_cpu_per_req_us: f64,
    /// The client, not the server, was the bottleneck (or fell behind its schedule).
    pub client_saturated: bool,
    /// (percentile, microseconds), for percentile curves.
    pub percentiles: Vec<(f64, f64)>,
    /// The commands, to rerun by hand.
    pub server_cmd: String,
    pub client_cmd: String,
    /// Where the server's CPU went (runs with a profile).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<crate::profile::Breakdown>,
}

/// Options that apply to every run.
#[derive(Clone, Debug)]
pub struct RunOpts {
    pub perf: bool,
    pub tmp: std::path::PathBuf,
    /// Run server and client in these network namespaces (`--netns`).
    pub netns: Option<Netns>,
    /// Peers that failed once and are left out of every later run.
    pub dropped: Dropped,
    /// Fleet mode: the hosts every run goes to.
    pub fleet: Option<std::sync::Arc<crate::fleet::Fleet>>,
}

/// What a run measures: ringlab-server, or a peer.
pub enum Target {
    Ringlab(Server),
    Peer(PeerProc),
}

impl Target {
    /// Start the server of `spec`: its peer, or ringlab-server with its arguments.
    pub fn start(bins: &Bins, spec: &RunSpec, opts: &RunOpts) -> Result<Target> {
        match &spec.peer {
            Some(_) if opts.netns.is_some() => {
                bail!("peers run on the host: they are not measured under --netns")
            }
            Some(p) => Ok(Target::Peer(PeerProc::start(
                p,
                &server_cpus(spec),
                &opts.tmp,
            )?)),
            None => Ok(Target::Ringlab(Server::start(
                bins,
                &spec.server_args,
                &opts.tmp,
                opts.netns.as_ref(),
            )?)),
        }
    }

    pub fn addr(&self) -> &str {
        match self {
            Target::Ringlab(s) => &s.addr,
            Target::Peer(p) => &p.addr,
        }
    }

    /// Its processes (measured together).
    pub fn pids(&self) -> &[u32] {
        match self {
            Target::Ringlab(s) => &s.pids,
            Target::Peer(p) => &p.pids,
        }
    }

    /// The command that started it, to rerun by hand.
    pub fn cmd(&self, bins: &Bins, spec: &RunSpec) -> String {
        match self {
            Target::Ringlab(_) => {
                format!("{} {}", bins.server.display(), spec.server_args.join(" "))
            }
            Target::Peer(p) => p.cmd.clone(),
        }
    }

    /// Stop it: ringlab-server's statistics; for a peer, an error if it had died.
    pub fn stop(self) -> Result<Option<ServerStats>> {
        match self {
            Target::Ringlab(s) => s.stop().map(Some),
            Target::Peer(p) => p.stop().map(|()| None),
        }
    }
}

/// Run `spec` once on a fresh server (or peer).
pub fn run(bins: &Bins, spec: &RunSpec, opts: &RunOpts) -> Result<RunResult> {
    if let Some(f) = &opts.fleet {
        // A host that fails ends the bench: its error is a HostFailed, passed up (everything
        // stopped on the way, one line naming it).
        return f.run(spec, &opts.tmp);
    }
    let target = Target::start(bins, spec, opts)?;
    if let Some(dir) = &spec.cgroup {
        crate::cgroup::enter(dir, target.pids())?;
    }
    let r = drive(bins, target.addr(), target.pids(), spec, opts);
    finish(bins, spec, target, r)
}

/// Stop `target` after its measured run `r` and complete the run's figures: its command, its
/// syscalls per request; an error if the peer died or answered wrongly, or the run failed.
fn finish(bins: &Bins, spec: &RunSpec, target: Target, r: Result<RunResult>) -> Result<RunResult> {
    let server_cmd = target.cmd(bins, spec);
    let (stats, mut r) = match (target.stop(), r) {
        // A peer that died explains the client's failure better than the client does.
        (Err(e), _) | (Ok(_), Err(e)) => return Err(e),
        (Ok(stats), Ok(r)) => (stats, r),
    };
    checked(spec, &r)?;
    r.server_cmd = server_cmd;
    r.syscalls_per_req = stats.as_ref().and_then(syscalls_per_req);
    Ok(r)
}

/// A run of `s` that failed: a peer is left out from here on, with one line saying why; a
/// backend's run is reported and left out (its repetition then has no pair). A host failure
/// of fleet mode is no run's own: it is passed up and ends the bench.
fn failed(opts: &RunOpts, s: &RunSpec, e: anyhow::Error) -> Result<()> {
    if crate::fleet::is_host_failure(&e) {
        return Err(e);
    }
    if s.peer.is_some() {
        opts.dropped.drop_row(&s.label, &format!("{e:#}"));
    } else {
        eprintln!("ringlab-bench: run {} x={} failed: {e:#}", s.label, s.x);
    }
    Ok(())
}

/// A peer's run with wrong answers is an error (a ringlab backend's counts as errors in its
/// row, where a test would have caught it first).
pub fn checked(spec: &RunSpec, r: &RunResult) -> Result<()> {
    if spec.peer.is_some() && r.data_errors > 0.0 {
        bail!(
            "it answered wrongly: {} responses were not what was sent (ringlab-client verifies every echoed byte)",
            r.data_errors
        );
    }
    Ok(())
}

/// The server's own syscall count per request it served, over its whole life; none for the
/// async runtimes, whose syscalls ringlab does not count (perf sees them).
fn syscalls_per_req(s: &ServerStats) -> Option<f64> {
    let served = s.total.requests;
    (served > 0 && !matches!(s.io.as_str(), "tokio" | "tokio-uring"))
        .then(|| s.total.syscalls.total() as f64 / served as f64)
}

/// Run the client of `spec` against a server already listening at `addr` (processes `pids`),
/// measuring those processes from outside over the client's measured window.
pub fn drive(
    bins: &Bins,
    addr: &str,
    pids: &[u32],
    spec: &RunSpec,
    opts: &RunOpts,
) -> Result<RunResult> {
    if opts.fleet.is_some() {
        bail!("this scenario runs its clients itself: not in fleet mode (--server-host)");
    }
    measure(bins, &[(spec, addr, pids)], opts, false)
        .pop()
        .context("no run measured")?
}

/// `t` as Unix time in milliseconds.
fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// A client started for one target of [`measure`].
struct ClientRun {
    child: std::process::Child,
    json: std::path::PathBuf,
    cmd: String,
}

/// Start the client of `spec` against `addr`, writing its JSON under a name made from `pid`;
/// with `start_at` (Unix milliseconds) it waits for that instant before its warm-up.
fn spawn_client(
    bins: &Bins,
    addr: &str,
    pid: u32,
    spec: &RunSpec,
    opts: &RunOpts,
    start_at: Option<u64>,
) -> Result<ClientRun> {
    let json = opts.tmp.join(format!("client-{pid}-{}.json", spec.x));
    let dur = format!("{}ms", (spec.duration_s * 1e3) as u64);
    let warm = format!("{}ms", (spec.warmup_s * 1e3) as u64);
    let mut cmd = match &opts.netns {
        Some(n) => Netns::command(&n.client_ns, &bins.client),
        None => Command::new(&bins.client),
    };
    cmd.arg(addr)
        .args([
            "--cores",
            &spec.client_cores,
            "--duration",
            &dur,
            "--warmup",
            &warm,
        ])
        .arg("--json")
        .arg(&json)
        .args(&spec.client_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(at) = start_at {
        cmd.args(["--start-at", &at.to_string()]);
    }
    let shown = format!(
        "{}{} {addr} --cores {} --duration {dur} --warmup {warm} --json FILE {}",
        opts.netns
            .as_ref()
            .map_or(String::new(), |n| format!("ip netns exec {} ", n.client_ns)),
        bins.client.display(),
        spec.client_cores,
        spec.client_args.join(" ")
    );
    let child = crate::procs::ends_with_bench(&mut cmd)
        .spawn()
        .with_context(|| format!("starting {}", bins.client.display()))?;
    Ok(ClientRun {
        child,
        json,
        cmd: shown,
    })
}

/// Measure targets, each `(spec, addr, pids)` with its own client: one alone (`together`
/// false: its window starts one warm-up after the client starts), or all side by side
/// (`together`: every client waits for one start instant, so their measured windows are the
/// same interval of time, and every target's processes are sampled at its two ends). One
/// result per target, in order.
pub fn measure(
    bins: &Bins,
    targets: &[(&RunSpec, &str, &[u32])],
    opts: &RunOpts,
    together: bool,
) -> Vec<Result<RunResult>> {
    let Some(&(first, _, _)) = targets.first() else {
        return Vec::new();
    };
    // The start instant: late enough for every client to be started and set up before it
    // (a client more than a second late refuses to run).
    let start_at =
        together.then(|| unix_ms(std::time::SystemTime::now()) + 300 + 100 * targets.len() as u64);
    let clients: Vec<Result<ClientRun>> = targets
        .iter()
        .map(|&(spec, addr, pids)| {
            let pid = pids.first().copied().context("no server process")?;
            spawn_client(bins, addr, pid, spec, opts, start_at)
        })
        .collect();
    // The server is measured over the client's measured window only: from the end of its
    // warm-up to the end of its duration, not its start-up or its connections' teardown.
    // With a start instant the client's window is known exactly: it begins 2 ms after the
    // instant (the client's own start margin), plus the warm-up.
    let wait = match start_at {
        Some(ms) => {
            let at = std::time::UNIX_EPOCH
                + Duration::from_millis(ms + 2)
                + Duration::from_secs_f64(first.warmup_s);
            at.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
        }
        None => Duration::from_secs_f64(first.warmup_s),
    };
    std::thread::sleep(wait);
    let mut cpus: Vec<usize> = targets.iter().flat_map(|t| measured_cpus(t.0)).collect();
    cpus.sort_unstable();
    cpus.dedup();
    let steal0 = steal_ticks(&cpus);
    // Alone, a run has the client CPUs to itself: what they do is the client's cost.
    let client_cpus = (targets.len() == 1).then(|| cpus_of(&first.client_cores));
    let busy0 = client_cpus.as_ref().and_then(|c| busy_ticks(c));
    let window_start = std::time::Instant::now();
    let window_start_ms = unix_ms(std::time::SystemTime::now());
    let before: Vec<Result<ProcSample>> =
        targets.iter().map(|t| ProcSample::read_all(t.2)).collect();
    let window_end = window_start + Duration::from_secs_f64(first.duration_s);
    let mut perf: Vec<_> = targets
        .iter()
        .map(|t| {
            opts.perf
                .then(|| {
                    t.2.first()
                        .and_then(|&p| perf_syscalls(p, t.0.duration_s * 0.9))
                })
                .flatten()
        })
        .collect();
    let profiles: Vec<_> = targets
        .iter()
        .map(|t| {
            t.0.profile
                .as_ref()
                .map(|f| crate::profile::record(f, &server_cpus(t.0), t.0.duration_s * 0.9))
        })
        .collect();
    std::thread::sleep(window_end.saturating_duration_since(std::time::Instant::now()));
    let after: Vec<Result<ProcSample>> =
        targets.iter().map(|t| ProcSample::read_all(t.2)).collect();
    let client_busy_s = match (busy0, client_cpus.as_ref().and_then(|c| busy_ticks(c))) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a) as f64 / ticks_per_s()),
        _ => None,
    };
    let steal_pct = match (steal0, steal_ticks(&cpus)) {
        (Some(a), Some(b)) if !cpus.is_empty() => {
            let tick = rustix::param::clock_ticks_per_second() as f64;
            let avail = window_start.elapsed().as_secs_f64() * cpus.len() as f64;
            (b.saturating_sub(a)) as f64 / tick / avail.max(1e-9) * 100.0
        }
        _ => 0.0,
    };
    let rss: Vec<u64> = targets
        .iter()
        .map(|t| t.2.iter().map(|&p| rss_kib(p)).sum())
        .collect();
    let mut out = Vec::new();
    for (i, (client, (before, after))) in clients
        .into_iter()
        .zip(before.into_iter().zip(after))
        .enumerate()
    {
        let spec = targets[i].0;
        let perf_count = perf[i].take().and_then(|h| h.join().ok().flatten());
        out.push((|| {
            let c = client?;
            let res = c.child.wait_with_output()?;
            let (before, after) = (before?, after?);
            let cj = std::fs::read_to_string(&c.json);
            let _ = std::fs::remove_file(&c.json);
            let cj: ClientReport = match cj {
                Ok(s) => serde_json::from_str(&s).context("parsing the client's JSON")?,
                Err(_) => bail!(
                    "ringlab-client wrote no results ({}): {}",
                    res.status,
                    String::from_utf8_lossy(&res.stderr).trim()
                ),
            };
            let mut r = measured(spec, &cj, &after.since(&before), perf_count, c.cmd);
            r.server_rss_kib = rss[i] as f64;
            r.steal_pct = steal_pct;
            r.window_start_ms = window_start_ms;
            if let Some(b) = client_busy_s.filter(|_| r.requests > 0.0) {
                r.client_cpu_per_req_us = b * 1e6 / r.requests;
            }
            if r.requests == 0.0 && r.data_errors > 0.0 {
                bail!(
                    "it answered wrongly: none of its responses was what was sent ({} wrong; ringlab-client verifies every echoed byte)",
                    r.data_errors
                );
            }
            if r.requests == 0.0 {
                bail!(
                    "no request completed (client {}): {}",
                    res.status,
                    String::from_utf8_lossy(&res.stderr).trim()
                );
            }
            Ok(r)
        })());
    }
    for (i, p) in profiles.into_iter().enumerate() {
        if let (Some(p), Some(Ok(r))) = (p, out.get_mut(i)) {
            r.profile = Some(p.finish(targets[i].2));
        }
    }
    out
}

/// One run's figures: the client's report, and the server processes measured from outside
/// over the client's window (`d`; `perf`: syscalls perf counted over 90% of it).
fn measured(
    spec: &RunSpec,
    cj: &ClientReport,
    d: &ProcSample,
    perf: Option<u64>,
    client_cmd: String,
) -> RunResult {
    let requests = cj.requests as f64;
    let per_req = |v: f64| if requests > 0.0 { v / requests } else { 0.0 };
    let lat = &cj.latency_us;
    let pct = |p: f64| lat.at(p) as f64;
    RunResult {
        label: spec.label.clone(),
        x: spec.x,
        rep: 0,
        window_start_ms: 0,
        requests,
        rps: cj.requests_per_sec,
        mean_us: lat.mean,
        p50_us: pct(50.0),
        p90_us: pct(90.0),
        p99_us: pct(99.0),
        p999_us: pct(99.9),
        max_us: lat.max as f64,
        errors: cj.errors_total as f64,
        non_2xx: cj.non_2xx_3xx as f64,
        connects_per_s: cj.counters.connects as f64 / (cj.warmup_s + cj.elapsed_s).max(1e-9),
        data_errors: cj.data_errors as f64,
        server_rss_kib: 0.0,
        steal_pct: 0.0,
        server_cpu_s: d.cpu_s(),
        server_user_s: d.user_s,
        server_sys_s: d.sys_s,
        cpu_per_req_us: per_req(d.cpu_s() * 1e6),
        syscalls_per_req: None,
        perf_syscalls_per_req: perf
            .filter(|_| requests > 0.0)
            // perf counted over 90% of the window; scale the requests to match.
            .map(|c| c as f64 / (requests * 0.9)),
        ctx_switches_per_req: per_req(d.ctx_switches as f64),
        client_cpu: cj.cpu.iter().map(|t| t.busy).sum(),
        client_cpu_per_req_us: 0.0,
        client_saturated: cj.saturation.saturated,
        percentiles: lat
            .spectrum
            .iter()
            .map(|e| (e.percentile, e.value as f64))
            .collect(),
        server_cmd: String::new(),
        client_cmd,
        profile: None,
    }
}

/// Median of a slice (NaN-free input).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The median run of several: every field the median of the runs' values.
pub fn combine(runs: &[RunResult]) -> RunResult {
    let m = |f: fn(&RunResult) -> f64| median(runs.iter().map(f).collect());
    let mo = |f: fn(&RunResult) -> Option<f64>| {
        let v: Vec<f64> = runs.iter().filter_map(f).collect();
        (!v.is_empty()).then(|| median(v))
    };
    let first = &runs[0];
    // Percentile curve: of the run whose p99 is the median's nearest.
    let p99 = m(|r| r.p99_us);
    let curve = runs
        .iter()
        .min_by(|a, b| {
            (a.p99_us - p99)
                .abs()
                .partial_cmp(&(b.p99_us - p99).abs())
                .unwrap_or(std::cmp::Ordering::Equal)
        })
        .map(|r| r.percentiles.clone())
        .unwrap_or_default();
    RunResult {
        label: first.label.clone(),
        x: first.x,
        rep: 0,
        window_start_ms: first.window_start_ms,
        requests: m(|r| r.requests),
        rps: m(|r| r.rps),
        mean_us: m(|r| r.mean_us),
        p50_us: m(|r| r.p50_us),
        p90_us: m(|r| r.p90_us),
        p99_us: p99,
        p999_us: m(|r| r.p999_us),
        max_us: m(|r| r.max_us),
        errors: m(|r| r.errors),
        non_2xx: m(|r| r.non_2xx),
        connects_per_s: m(|r| r.connects_per_s),
        data_errors: m(|r| r.data_errors),
        server_rss_kib: m(|r| r.server_rss_kib),
        steal_pct: m(|r| r.steal_pct),
        server_cpu_s: m(|r| r.server_cpu_s),
        server_user_s: m(|r| r.server_user_s),
        server_sys_s: m(|r| r.server_sys_s),
        cpu_per_req_us: m(|r| r.cpu_per_req_us),
        syscalls_per_req: mo(|r| r.syscalls_per_req),
        perf_syscalls_per_req: mo(|r| r.perf_syscalls_per_req),
        ctx_switches_per_req: m(|r| r.ctx_switches_per_req),
        client_cpu: m(|r| r.client_cpu),
        client_cpu_per_req_us: m(|r| r.client_cpu_per_req_us),
        client_saturated: runs.iter().filter(|r| r.client_saturated).count() * 2 > runs.len(),
        percentiles: curve,
        server_cmd: first.server_cmd.clone(),
        client_cmd: first.client_cmd.clone(),
        profile: runs.iter().find_map(|r| r.profile.clone()),
    }
}

/// Run every spec `reps` times, interleaved (A B A B ...), and return the medians in spec
/// order together with every raw run.
pub fn run_interleaved(
    bins: &Bins,
    specs: &[RunSpec],
    reps: usize,
    opts: &RunOpts,
    progress: &mut dyn FnMut(&str),
) -> Result<(Vec<RunResult>, Vec<RunResult>)> {
    let mut all: Vec<Vec<RunResult>> = vec![Vec::new(); specs.len()];
    for rep in 0..reps {
        let order: Vec<usize> = (0..specs.len()).collect();
        run_rep(bins, specs, &order, rep, opts, &mut all, &mut |i, s| {
            progress(&format!(
                "[{}/{}] rep {} {} x={}",
                rep * specs.len() + i + 1,
                specs.len() * reps,
                rep + 1,
                s.label,
                s.x
            ))
        })?;
    }
    Ok(medians_and_raw(all))
}

/// Repetition `rep`: every spec once, in `order` (indices into `specs`), each run added to its
/// spec's list in `all` (a failed run is reported and left out: its rep then has no pair; a
/// host failure of fleet mode ends it with that error).
pub fn run_rep(
    bins: &Bins,
    specs: &[RunSpec],
    order: &[usize],
    rep: usize,
    opts: &RunOpts,
    all: &mut [Vec<RunResult>],
    progress: &mut dyn FnMut(usize, &RunSpec),
) -> Result<()> {
    for (k, &i) in order.iter().enumerate() {
        let s = &specs[i];
        if opts.dropped.has(&s.label) {
            continue;
        }
        progress(k, s);
        match run(bins, s, opts) {
            Ok(mut r) => {
                r.rep = rep;
                all[i].push(r);
            }
            Err(e) => failed(opts, s, e)?,
        }
    }
    Ok(())
}

/// What [`run_together`] runs: `order`, indices into the specs in start order, and the CPU-cap
/// groups of the places in that order (none: each spec's own).
#[derive(Clone, Copy, Debug)]
pub struct Together<'a> {
    pub order: &'a [usize],
    pub groups: &'a [std::path::PathBuf],
}

/// Repetition `rep` side by side: every spec of `order` (indices into `specs`) on its own
/// fresh server at the same time, each with its own client, all clients measuring over the
/// same window ([`measure`] together); the targets start in `order` (rotate it between
/// repetitions so that no row always starts first). Results go to `all` as in [`run_rep`]; a
/// target that fails is reported and left out, the others' runs still count. With `groups`,
/// the k-th target started goes into the k-th group (CPU caps: the rows change groups as the
/// order rotates), instead of its spec's.
pub fn run_together(
    bins: &Bins,
    specs: &[RunSpec],
    set: Together<'_>,
    rep: usize,
    opts: &RunOpts,
    all: &mut [Vec<RunResult>],
    progress: &mut dyn FnMut(usize, &RunSpec),
) -> Result<()> {
    let Together { order, groups } = set;
    let mut started: Vec<(usize, Target)> = Vec::new();
    for (k, &i) in order.iter().enumerate() {
        let s = &specs[i];
        if opts.dropped.has(&s.label) {
            continue;
        }
        progress(k, s);
        // The group of this place in the start order, if the set has groups; else the spec's.
        let group = match groups {
            [] => s.cgroup.as_ref(),
            g => g.get(started.len() % g.len()),
        };
        match Target::start(bins, s, opts) {
            Ok(t) => match group.map(|d| crate::cgroup::enter(d, t.pids())) {
                Some(Err(e)) => {
                    let _ = t.stop();
                    failed(opts, s, e)?;
                }
                _ => started.push((i, t)),
            },
            Err(e) => failed(opts, s, e)?,
        }
    }
    let targets: Vec<(&RunSpec, &str, &[u32])> = started
        .iter()
        .map(|(i, t)| (&specs[*i], t.addr(), t.pids()))
        .collect();
    let results = measure(bins, &targets, opts, true);
    for ((i, t), r) in started.into_iter().zip(results) {
        let s = &specs[i];
        match finish(bins, s, t, r) {
            Ok(mut r) => {
                r.rep = rep;
                all[i].push(r);
            }
            Err(e) => failed(opts, s, e)?,
        }
    }
    Ok(())
}

/// The median of each spec's runs (specs with none left out) and every run.
pub fn medians_and_raw(all: Vec<Vec<RunResult>>) -> (Vec<RunResult>, Vec<RunResult>) {
    let mut medians = Vec::new();
    let mut raw = Vec::new();
    for runs in all {
        if !runs.is_empty() {
            medians.push(combine(&runs));
            raw.extend(runs);
        }
    }
    (medians, raw)
}

/// The CPUs a run measures on: the server's and the client's (parsed from their lists; a list
/// that does not parse counts none).
/// The CPUs of a CPU list (`1`, `0-3`, `all`); none if it does not parse.
pub fn cpus_of(list: &str) -> Vec<usize> {
    list.parse::<ringlab_runtime::cpus::CpuSpec>()
        .and_then(|c| c.resolve())
        .map(|l| l.ids().to_vec())
        .unwrap_or_default()
}

/// `/proc/stat`'s clock ticks per second.
pub fn ticks_per_s() -> f64 {
    rustix::param::clock_ticks_per_second() as f64
}

fn measured_cpus(spec: &RunSpec) -> Vec<usize> {
    let mut v = Vec::new();
    for list in [server_cpus(spec), spec.client_cores.clone()] {
        if let Ok(l) = list
            .parse::<ringlab_runtime::cpus::CpuSpec>()
            .and_then(|c| c.resolve())
        {
            v.extend(l.ids().iter().copied());
        }
    }
    v.sort_unstable();
    v.dedup();
    v
}

/// The server's CPU list of `spec` (its `--cores`).
pub(crate) fn server_cpus(spec: &RunSpec) -> String {
    let mut cpus = "0".to_string();
    let mut it = spec.server_args.iter();
    while let Some(a) = it.next() {
        if a == "--cores" {
            if let Some(v) = it.next() {
                cpus = v.clone();
            }
        }
    }
    cpus
}

/// A scratch directory for a bench run.
pub fn tmpdir(out: &Path) -> Result<std::path::PathBuf> {
    let t = out.join("tmp");
    std::fs::create_dir_all(&t).with_context(|| format!("creating {}", t.display()))?;
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use ringlab_client::report::{build_from, Partial};

    /// What `ringlab-client --json` writes for 1000 measured requests of 100..=1099 µs.
    fn client_json() -> String {
        let cfg = ringlab_client::Args::parse_from(["c", "127.0.0.1:1", "--duration", "2s"])
            .resolve()
            .unwrap();
        let mut p = Partial::new();
        for v in 100..1100 {
            p.corrected.record(v).unwrap();
            p.raw.record(v).unwrap();
        }
        p.counters.measured = 1000;
        p.counters.connects = 250;
        p.counters.status.insert(200, 990);
        p.counters.status.insert(503, 10);
        p.elapsed = Duration::from_secs(2);
        build_from(&cfg, p).to_json()
    }

    fn spec() -> RunSpec {
        RunSpec {
            label: "epoll".into(),
            x: 64.0,
            server_args: vec![],
            client_args: vec![],
            client_cores: "1".into(),
            duration_s: 2.0,
            warmup_s: 0.5,
            ..RunSpec::default()
        }
    }

    #[test]
    fn reads_the_clients_report_as_its_type() {
        let cj: ClientReport = serde_json::from_str(&client_json()).unwrap();
        let d = ProcSample {
            user_s: 0.01,
            sys_s: 0.03,
            ctx_switches: 500,
            run_ns: None,
        };
        let r = measured(&spec(), &cj, &d, Some(900), "cmd".into());
        assert_eq!(r.requests, 1000.0);
        assert_eq!(r.rps, 500.0);
        assert_eq!(r.p50_us, 599.0);
        assert_eq!(r.p99_us, 1089.0);
        assert_eq!(r.max_us, 1099.0);
        assert!((r.mean_us - 599.5).abs() < 1.0, "{}", r.mean_us);
        assert!((r.cpu_per_req_us - 40.0).abs() < 1e-9);
        assert_eq!(r.ctx_switches_per_req, 0.5);
        assert_eq!(r.perf_syscalls_per_req, Some(1.0));
        // 250 connections over a 2 s run with no warm-up; ten 503s.
        assert_eq!(r.connects_per_s, 125.0);
        assert_eq!(r.non_2xx, 10.0);
        assert!(!r.client_saturated);
        assert_eq!(r.percentiles.last().map(|p| p.1), Some(1099.0));
    }

    #[test]
    fn a_missing_field_is_an_error_not_a_zero() {
        let mut v: serde_json::Value = serde_json::from_str(&client_json()).unwrap();
        v.as_object_mut().unwrap().remove("requests_per_sec");
        let e = serde_json::from_value::<ClientReport>(v).unwrap_err();
        assert!(
            e.to_string().contains("missing field `requests_per_sec`"),
            "{e}"
        );
    }

    #[test]
    fn server_syscalls_per_request_from_its_stats() {
        let mut l = ringlab_server::LoopStats {
            requests: 100,
            ..Default::default()
        };
        l.syscalls.recv = 100;
        l.syscalls.send = 100;
        l.syscalls.epoll_wait = 50;
        let json = |io| {
            let s = ServerStats::new(io, "echo", "127.0.0.1:1".into(), vec![l.clone()]);
            serde_json::from_str::<ServerStats>(&serde_json::to_string(&s).unwrap()).unwrap()
        };
        assert_eq!(syscalls_per_req(&json("epoll")), Some(2.5));
        assert_eq!(syscalls_per_req(&json("tokio")), None);
    }
}
