//! Peers measured beside ringlab: wrk as a second client, nginx as a reference server. Each is
//! optional: when missing, the bench says how to install it and carries on.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::ctx::{backend_args, Ctx};
use crate::procs::{have, running, ProcSample, Server};
use crate::run::{combine, drive, RunResult, RunSpec};

/// Parse wrk's duration ("123.45us", "1.20ms", "2.00s") into microseconds.
fn wrk_us(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, mul) = if let Some(v) = s.strip_suffix("us") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1e3)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e6)
    } else {
        return None;
    };
    num.parse::<f64>().ok().map(|v| v * mul)
}

/// What wrk printed.
struct WrkOut {
    rps: f64,
    requests: f64,
    /// (percentile, µs)
    percentiles: Vec<(f64, f64)>,
    errors: f64,
}

fn parse_wrk(out: &str) -> Option<WrkOut> {
    let mut rps = None;
    let mut reqs = None;
    let mut pct = Vec::new();
    let mut errors = 0.0;
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().ok();
        } else if t.contains(" requests in ") {
            reqs = t.split_whitespace().next().and_then(|v| v.parse().ok());
        } else if let Some((p, v)) = t.split_once("%") {
            if let (Ok(p), Some(us)) = (p.trim().parse::<f64>(), wrk_us(v)) {
                pct.push((p, us));
            }
        } else if t.starts_with("Socket errors:") || t.starts_with("Non-2xx") {
            errors += t
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<f64>().ok())
                .sum::<f64>();
        }
    }
    Some(WrkOut {
        rps: rps?,
        requests: reqs?,
        percentiles: pct,
        errors,
    })
}

/// `wrk -t1` (pinned to the client CPUs) against each backend.
pub fn wrk_rows(
    ctx: &Ctx,
    backends: &[String],
    conns: &[u32],
    dur: f64,
    reps: usize,
) -> Result<(Vec<RunResult>, Vec<RunResult>)> {
    let server_cores = &ctx.o.server_cores;
    if let Some(f) = &ctx.run.fleet {
        return fleet_wrk_rows(ctx, f, backends, conns, dur, reps);
    }
    if !have("wrk") {
        bail!("wrk is not installed (Debian: `apt-get install wrk`)");
    }
    if !have("taskset") {
        bail!("taskset is not installed (Debian: `apt-get install util-linux`)");
    }
    let mut groups: Vec<Vec<RunResult>> = Vec::new();
    for _ in 0..reps {
        let mut i = 0;
        for &c in conns {
            for b in backends {
                let mut args = vec!["--cores".to_string(), server_cores.to_string()];
                args.extend(backend_args(b)?);
                args.extend(["--proto".to_string(), "http".to_string()]);
                let mut r = wrk_run(ctx, &args, c, dur, None)?;
                r.label = format!("{b} (wrk)");
                if groups.len() <= i {
                    groups.push(Vec::new());
                }
                groups[i].push(r);
                i += 1;
            }
        }
    }
    Ok(medians_and_runs(groups))
}

/// One `wrk -t1 -cC` run of `dur` seconds (pinned to the client CPUs) against a fresh
/// ringlab-server started with `server_args` (put in the cgroup `cap` first, when given). The
/// server's CPU is sampled around wrk's run, and so is the busy time of the client CPUs, which
/// wrk has to itself: its cost per request, measured as [`crate::run::measure`] measures
/// ringlab-client's (wrk has no warm-up: its window is its whole run, connects included).
pub fn wrk_run(
    ctx: &Ctx,
    server_args: &[String],
    c: u32,
    dur: f64,
    cap: Option<&Path>,
) -> Result<RunResult> {
    let (bins, opts) = (&ctx.bins, &ctx.run);
    let client_cores = &ctx.o.client_cores;
    if opts.netns.is_some() {
        bail!("not run under --netns (wrk runs on the host)");
    }
    let server = Server::start(bins, server_args, &opts.tmp, None)?;
    if let Some(dir) = cap {
        crate::cgroup::enter(dir, &server.pids)?;
    }
    let secs = dur.ceil() as u64;
    let cmd = format!(
        "taskset -c {client_cores} wrk -t1 -c{c} -d{secs}s --latency http://{}/",
        server.addr
    );
    let client_cpus = crate::run::cpus_of(client_cores);
    let before = ProcSample::read(server.pid)?;
    let busy0 = crate::procs::busy_ticks(&client_cpus);
    let out = Command::new("taskset")
        .args(["-c", client_cores, "wrk", "-t1"])
        .arg(format!("-c{c}"))
        .arg(format!("-d{secs}s"))
        .arg("--latency")
        .arg(format!("http://{}/", server.addr))
        .output()
        .context("running wrk")?;
    let busy1 = crate::procs::busy_ticks(&client_cpus);
    let after = ProcSample::read(server.pid)?;
    let _ = server.stop();
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(WrkOut {
        rps,
        requests: reqs,
        percentiles: pct,
        errors,
    }) = parse_wrk(&text)
    else {
        bail!("could not read wrk's output: {}", text.trim());
    };
    let d = after.since(&before);
    let get = |p: f64| pct.iter().find(|x| x.0 == p).map_or(0.0, |x| x.1);
    let per_req = |v: f64| if reqs > 0.0 { v / reqs } else { 0.0 };
    let client_busy_s = match (busy0, busy1) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64 / crate::run::ticks_per_s(),
        _ => 0.0,
    };
    Ok(RunResult {
        label: "wrk".into(),
        x: c as f64,
        requests: reqs,
        rps,
        p50_us: get(50.0),
        p90_us: get(90.0),
        p99_us: get(99.0),
        errors,
        server_cpu_s: d.cpu_s(),
        server_user_s: d.user_s,
        server_sys_s: d.sys_s,
        cpu_per_req_us: per_req(d.cpu_s() * 1e6),
        ctx_switches_per_req: per_req(d.ctx_switches as f64),
        client_cpu_per_req_us: per_req(client_busy_s * 1e6),
        percentiles: pct,
        server_cmd: format!("{} {}", bins.server.display(), server_args.join(" ")),
        client_cmd: cmd,
        ..RunResult::default()
    })
}

/// `wrk -t1` from every client host at once against each backend on the server host, its
/// connections shared out among the hosts (pinned with taskset to --client-cores where the
/// host has taskset). A client host without wrk: the rows are skipped with one line naming it.
/// Requests and req/s are the hosts' sums; wrk prints percentiles, not a histogram, so the
/// row's percentiles are the worst host's (an upper bound, not a merge), and its counts are not
/// set against the server's (wrk does not count the responses to requests in flight when it
/// stops).
fn fleet_wrk_rows(
    ctx: &Ctx,
    f: &crate::fleet::Fleet,
    backends: &[String],
    conns: &[u32],
    dur: f64,
    reps: usize,
) -> Result<(Vec<RunResult>, Vec<RunResult>)> {
    let taskset = fleet_wrk_hosts(f)?;
    let secs = dur.ceil().max(1.0) as u64;
    let mut groups: Vec<Vec<RunResult>> = Vec::new();
    for _ in 0..reps {
        let mut i = 0;
        for &c in conns {
            for b in backends {
                let mut args = vec!["--cores".to_string(), ctx.o.server_cores.clone()];
                args.extend(backend_args(b)?);
                args.extend(["--proto".to_string(), "http".to_string()]);
                let r = f.guard(|| {
                    let mut s = f.session(&ctx.run.tmp, secs + 40)?;
                    s.server(&args)?;
                    let mut res =
                        fleet_wrk_in(ctx, &mut s, &format!("{b} (wrk)"), c, secs, &taskset)?;
                    s.finish()?;
                    res.server_cmd =
                        format!("{}: {} {}", f.server.ssh.dest, f.server.bin, args.join(" "));
                    Ok(res)
                })?;
                if groups.len() <= i {
                    groups.push(Vec::new());
                }
                groups[i].push(r);
                i += 1;
            }
        }
    }
    Ok(medians_and_runs(groups))
}

/// Whether each client host of `f` has taskset; an error naming the first without wrk.
pub fn fleet_wrk_hosts(f: &crate::fleet::Fleet) -> Result<Vec<bool>> {
    let found = f.guard(|| f.on_clients("command -v wrk; command -v taskset; true"))?;
    let mut taskset = Vec::new();
    for (dest, out) in &found {
        if !out.lines().any(|l| l.trim_end().ends_with("/wrk")) {
            bail!("wrk is not installed on client host {dest} (Debian: `apt-get install wrk`)");
        }
        taskset.push(out.lines().any(|l| l.trim_end().ends_with("/taskset")));
    }
    Ok(taskset)
}

/// One `wrk -t1` run of `secs` seconds from every client host at once (row `label`, `c`
/// connections shared out among the hosts, pinned with taskset where `taskset` says the host
/// has it) against the server of session `s`: the hosts' sums, the worst host's percentiles,
/// the server's CPU over the run; its per-host table recorded in the session.
pub fn fleet_wrk_in(
    ctx: &Ctx,
    s: &mut crate::fleet::session::Session,
    label: &str,
    c: u32,
    secs: u64,
    taskset: &[bool],
) -> Result<RunResult> {
    let f = s.fleet();
    let n = f.clients.len();
    let spec = RunSpec {
        label: label.to_string(),
        x: c as f64,
        duration_s: secs as f64,
        ..RunSpec::default()
    };
    let url = format!("http://{}/", s.target()?);
    let shares = ringlab_runtime::cpus::even_shares(c as usize, n.max(1));
    let mut argvs = Vec::new();
    let mut cmds = Vec::new();
    for (k, &share) in shares.iter().enumerate() {
        if share == 0 {
            continue;
        }
        let mut argv: Vec<String> = Vec::new();
        if taskset.get(k).copied().unwrap_or(false) {
            argv.extend(["taskset".into(), "-c".into(), ctx.o.client_cores.clone()]);
        }
        argv.extend([
            "wrk".into(),
            "-t1".into(),
            format!("-c{share}"),
            format!("-d{secs}s"),
            "--latency".into(),
            url.clone(),
        ]);
        cmds.push(format!("{}: {}", f.clients[k].ssh.dest, argv.join(" ")));
        argvs.push((k, argv));
    }
    let (outs, cpu) = s.tool("wrk", &argvs, secs as f64)?;
    let mut hosts = Vec::new();
    let mut res = RunResult {
        label: spec.label.clone(),
        x: spec.x,
        client_cmd: cmds.join("\n"),
        ..RunResult::default()
    };
    let mut pct: Vec<(f64, f64)> = Vec::new();
    for ((k, _), end) in argvs.iter().zip(&outs) {
        let h = &f.clients[*k];
        let Some(w) = parse_wrk(&end.stdout) else {
            bail!(
                "client host {}: could not read wrk's output (exit {}): {}",
                h.ssh.dest,
                end.code,
                end.stdout.trim()
            );
        };
        let get = |p: f64| w.percentiles.iter().find(|x| x.0 == p).map_or(0.0, |x| x.1);
        res.requests += w.requests;
        res.rps += w.rps;
        res.errors += w.errors;
        for &(p, v) in &w.percentiles {
            match pct.iter_mut().find(|x| x.0 == p) {
                Some(x) => x.1 = x.1.max(v),
                None => pct.push((p, v)),
            }
        }
        hosts.push(crate::fleet::HostRow {
            host: h.ssh.dest.clone(),
            processes: 1,
            conns: shares[*k],
            requests: w.requests as u64,
            rps: w.rps,
            p50_us: get(50.0) as u64,
            p99_us: get(99.0) as u64,
            max_us: 0,
            errors: w.errors as u64,
            responses_total: w.requests as u64,
            exit_code: end.code,
            offset_ms: h.offset.offset_ms,
            start_at_ms: end.start_at_ms,
        });
    }
    let get = |p: f64| pct.iter().find(|x| x.0 == p).map_or(0.0, |x| x.1);
    res.p50_us = get(50.0);
    res.p90_us = get(90.0);
    res.p99_us = get(99.0);
    res.percentiles = pct.clone();
    cpu.apply(&mut res);
    s.add_client_responses(res.requests as u64);
    s.record(&spec, &res, hosts);
    Ok(res)
}

/// A running nginx (stopped gracefully when dropped).
pub struct Nginx {
    child: Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            // SIGQUIT: nginx's graceful stop.
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::QUIT);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The processes whose `/proc/PID/stat` field `field` (counted after the command name: 1 is the
/// parent, 2 the process group) is `value`.
fn procs_where(field: usize, value: u32) -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let got = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .and_then(|(_, r)| r.split_whitespace().nth(field)?.parse::<u32>().ok())
                });
            if got == Some(value) {
                v.push(pid);
            }
        }
    }
    v
}

fn children_of(ppid: u32) -> Vec<u32> {
    procs_where(1, ppid)
}

/// What an nginx serves besides the common settings: directives for the main context, the
/// `http` context and the `server` block.
#[derive(Clone, Debug, Default)]
pub struct NginxSite {
    pub main: String,
    pub http: String,
    pub server: String,
}

impl NginxSite {
    /// `GET /` → `Hello, World!`, as ringlab-server answers it.
    pub fn hello() -> NginxSite {
        NginxSite {
            server: "location = / { default_type text/plain; return 200 \"Hello, World!\"; }"
                .into(),
            ..NginxSite::default()
        }
    }
}

/// The whole nginx.conf: one worker pinned to `cpu`, listening on `listen` (e.g.
/// `127.0.0.1:8080`), its pid and error log in `dir`, serving `site`.
pub fn nginx_conf(dir: &Path, cpu: usize, listen: &str, site: &NginxSite) -> String {
    let mask = format!("1{}", "0".repeat(cpu));
    format!(
        "worker_processes 1;\nworker_cpu_affinity {mask};\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n{main}\nevents {{ worker_connections 8192; use epoll; multi_accept on; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n  {http}\n  server {{\n    listen {listen};\n    {server}\n  }}\n}}\n",
        d = dir.display(),
        main = site.main,
        http = site.http,
        server = site.server,
    )
}

/// Start nginx with its files in `dir` (absolute), one worker pinned to `cpu`, serving `site`
/// on a free loopback port: the running nginx, its address, its worker's PID.
pub fn start_nginx(dir: &Path, cpu: usize, site: &NginxSite) -> Result<(Nginx, String, u32)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let conf = nginx_conf(dir, cpu, &format!("127.0.0.1:{port}"), site);
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let bin = if have("nginx") {
        "nginx"
    } else {
        "/usr/sbin/nginx"
    };
    let child = Command::new(bin)
        .args(["-p"])
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nginx")?;
    let mut ng = Nginx { child };
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if std::net::TcpStream::connect(&addr).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "nginx did not start listening on {addr} (see {})",
                dir.join("nginx-error.log").display()
            );
        }
        if let Ok(Some(st)) = ng.child.try_wait() {
            // Errors in the configuration go to stderr, later ones to the error log.
            let mut log = String::new();
            if let Some(mut e) = ng.child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut log);
            }
            log += &std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default();
            bail!(
                "nginx exited at start ({st}): {}",
                log.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("(nothing in its error log)")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let worker = children_of(ng.child.id())
        .into_iter()
        .next()
        .context("nginx has no worker process")?;
    Ok((ng, addr, worker))
}

/// The nginx reference rows in fleet mode: nginx on the server host (one worker pinned to
/// `cpu` there, listening on all its addresses), driven by ringlab-client on the client hosts,
/// its worker's CPU read on its host. A server host without nginx skips the rows (one line).
fn fleet_nginx_rows(
    ctx: &Ctx,
    f: &crate::fleet::Fleet,
    cpu: usize,
    conns: &[u32],
    dur: f64,
    reps: usize,
) -> Result<(Vec<RunResult>, Vec<RunResult>)> {
    let found = f.guard(|| f.on_server("command -v nginx || ls /usr/sbin/nginx; true"))?;
    if !found.lines().any(|l| l.trim_end().ends_with("/nginx")) {
        bail!(
            "nginx is not installed on the server host {} (Debian: `apt-get install nginx-light` there)",
            f.server.ssh.dest
        );
    }
    let template = nginx_conf(
        Path::new("__DIR__"),
        cpu,
        "0.0.0.0:__PORT__",
        &NginxSite::hello(),
    );
    nginx_runs(ctx, conns, dur, reps, |spec| {
        f.guard(|| {
            let mut s = f.session(&ctx.run.tmp, (dur + spec.warmup_s) as u64 + 60)?;
            s.nginx(&template)?;
            let mut r = s.clients(spec)?;
            s.finish_uncounted()?;
            r.server_cmd = format!(
                "nginx on {} (1 worker, pinned to CPU {cpu}, return 200 \"Hello, World!\")",
                f.server.ssh.dest
            );
            Ok(r)
        })
    })
}

/// Whether nginx can be run (on PATH, or Debian's /usr/sbin/nginx).
pub fn nginx_installed() -> bool {
    have("nginx") || Path::new("/usr/sbin/nginx").is_file()
}

/// nginx (one worker pinned to the server CPU) driven by ringlab-client.
pub fn nginx_rows(
    ctx: &Ctx,
    conns: &[u32],
    dur: f64,
    reps: usize,
) -> Result<(Vec<RunResult>, Vec<RunResult>)> {
    let (bins, opts) = (&ctx.bins, &ctx.run);
    let server_cores = &ctx.o.server_cores;
    let cpu: usize = server_cores
        .split([',', '-'])
        .next()
        .and_then(|c| c.parse().ok())
        .context("--server-cores must start with a CPU number for the nginx row")?;
    if let Some(f) = &opts.fleet {
        return fleet_nginx_rows(ctx, f, cpu, conns, dur, reps);
    }
    if !nginx_installed() {
        bail!("nginx is not installed (Debian: `apt-get install nginx-light`)");
    }
    if opts.netns.is_some() {
        bail!("not run under --netns (nginx runs on the host)");
    }
    let dir = opts.tmp.join("nginx");
    std::fs::create_dir_all(dir.join("logs"))?;
    // nginx resolves relative paths in its config against its prefix: use absolute ones.
    let dir = std::fs::canonicalize(&dir).with_context(|| format!("{}", dir.display()))?;
    let (ng, addr, worker) = start_nginx(&dir, cpu, &NginxSite::hello())?;
    let r = nginx_runs(ctx, conns, dur, reps, |spec| {
        let mut r = drive(bins, &addr, &[worker], spec, opts)?;
        r.server_cmd = "nginx (1 worker, pinned, return 200 \"Hello, World!\")".into();
        Ok(r)
    });
    drop(ng);
    r
}

/// The nginx rows' runs: `reps` rounds over `conns`, ringlab-client speaking HTTP for `dur`
/// seconds, each run by `run`; the medians per connection count, and every run.
fn nginx_runs(
    ctx: &Ctx,
    conns: &[u32],
    dur: f64,
    reps: usize,
    mut run: impl FnMut(&RunSpec) -> Result<RunResult>,
) -> Result<(Vec<RunResult>, Vec<RunResult>)> {
    let mut groups: Vec<Vec<RunResult>> = vec![Vec::new(); conns.len()];
    for _ in 0..reps {
        for (i, &c) in conns.iter().enumerate() {
            let spec = RunSpec {
                label: "nginx".into(),
                x: c as f64,
                server_args: vec![],
                client_args: vec![
                    "--io".into(),
                    ctx.o.client_io.clone(),
                    "--proto".into(),
                    "http".into(),
                    "--conns".into(),
                    c.to_string(),
                ],
                client_cores: ctx.o.client_cores.clone(),
                duration_s: dur,
                warmup_s: 0.5,
                ..RunSpec::default()
            };
            groups[i].push(run(&spec)?);
        }
    }
    Ok(medians_and_runs(groups))
}

/// Runs grouped by row (one group per row, its repetitions): each non-empty group's medians
/// ([`combine`]), and every run.
fn medians_and_runs(mut groups: Vec<Vec<RunResult>>) -> (Vec<RunResult>, Vec<RunResult>) {
    // The i-th run of every row is repetition i: the statistics pair runs by it.
    for g in &mut groups {
        for (rep, r) in g.iter_mut().enumerate() {
            r.rep = rep;
        }
    }
    let medians = groups
        .iter()
        .filter(|g| !g.is_empty())
        .map(|g| combine(g))
        .collect();
    (medians, groups.into_iter().flatten().collect())
}

/// A server of the user's measured beside the backends (`--peer NAME=COMMAND`): started fresh
/// for every run, pinned to the server CPUs, measured from outside like the backends.
#[derive(Clone, Debug, PartialEq)]
pub struct Peer {
    pub name: String,
    /// The command, with `{port}`, `{cpu}` and `{cores}` still to fill in; run by `sh -c`.
    pub command: String,
}

/// Row labels of peers start with this: `peer:c-epoll`. No space, so that a peer's baseline
/// is the plain baseline row (`verdict::same_row_of`).
pub const PEER_PREFIX: &str = "peer:";

impl Peer {
    /// Parse `NAME=COMMAND`.
    pub fn parse(s: &str) -> Result<Peer> {
        let Some((name, command)) = s.split_once('=') else {
            bail!("--peer takes NAME=COMMAND (e.g. --peer c-epoll='./c-epoll-echo {{port}}'), not {s:?}");
        };
        let (name, command) = (name.trim(), command.trim());
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            bail!("--peer {s:?}: a peer's name is letters, digits, '-', '_' and '.'");
        }
        if command.is_empty() {
            bail!("--peer {name}: no command");
        }
        if !command.contains("{port}") {
            bail!("--peer {name}: the command must contain {{port}}, the port the bench gives it to listen on (127.0.0.1:{{port}})");
        }
        Ok(Peer {
            name: name.into(),
            command: command.into(),
        })
    }

    /// Its row label.
    pub fn label(&self) -> String {
        format!("{PEER_PREFIX}{}", self.name)
    }

    /// The command with `{port}`, `{cpu}` (the first server CPU) and `{cores}` (the list).
    pub fn command_for(&self, port: u16, cores: &str) -> String {
        let cpu = cores
            .split([',', '-'])
            .next()
            .unwrap_or("0")
            .trim()
            .to_string();
        self.command
            .replace("{port}", &port.to_string())
            .replace("{cpu}", &cpu)
            .replace("{cores}", cores)
    }
}

/// `--peer` values, checked: unique names, none named like a backend.
pub fn parse_peers(specs: &[String]) -> Result<Vec<Peer>> {
    let mut out: Vec<Peer> = Vec::new();
    for s in specs {
        let p = Peer::parse(s)?;
        if out.iter().any(|o| o.name == p.name) {
            bail!("--peer {}: given twice", p.name);
        }
        out.push(p);
    }
    Ok(out)
}

/// Peers that failed, with why: they are left out of every later run.
#[derive(Clone, Debug, Default)]
pub struct Dropped(std::sync::Arc<std::sync::Mutex<Vec<(String, String)>>>);

impl Dropped {
    /// Whether the row `label` was dropped.
    pub fn has(&self, label: &str) -> bool {
        self.0
            .lock()
            .map(|v| v.iter().any(|(l, _)| l == label))
            .unwrap_or(false)
    }

    /// Drop `label` for `why`, saying so on one line (once).
    pub fn drop_row(&self, label: &str, why: &str) {
        if let Ok(mut v) = self.0.lock() {
            if !v.iter().any(|(l, _)| l == label) {
                eprintln!("ringlab-bench: {label} left out from here on: {why}");
                v.push((label.into(), why.into()));
            }
        }
    }

    /// Every dropped row and why.
    pub fn all(&self) -> Vec<(String, String)> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// The report's lines on dropped peers, empty if none.
    pub fn notes(&self) -> String {
        self.all()
            .iter()
            .map(|(l, why)| format!("- {l} left out: {why}\n"))
            .collect()
    }
}

/// A running peer: its own process group (so that whatever it forks is stopped with it), its
/// output in a log file.
pub struct PeerProc {
    child: Child,
    pub addr: String,
    /// Its processes when it first accepted: its process group and every descendant, also
    /// those in groups of their own (`timeout` and `setsid` make one), measured together.
    pub pids: Vec<u32>,
    /// Those process groups of its own, each with a member that was in it: (pgid, member,
    /// the member's start time), signalled with the peer's group while that member lives.
    groups: Vec<(u32, u32, u64)>,
    log: std::path::PathBuf,
    pub cmd: String,
}

impl PeerProc {
    /// Start `peer` pinned to `cores` (taskset) on a free loopback port and wait (10 s at most)
    /// until it accepts a connection.
    pub fn start(peer: &Peer, cores: &str, tmp: &Path) -> Result<PeerProc> {
        use std::os::unix::process::CommandExt;
        if !have("taskset") {
            bail!("taskset is not installed (Debian: `apt-get install util-linux`)");
        }
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let cmd = peer.command_for(port, cores);
        let log = tmp.join(format!("peer-{}-{port}.log", peer.name));
        let out = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
        let child = Command::new("taskset")
            .args(["-c", cores, "sh", "-c"])
            .arg(&cmd)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .context("starting taskset")?;
        let mut p = PeerProc {
            child,
            addr: format!("127.0.0.1:{port}"),
            pids: Vec::new(),
            groups: Vec::new(),
            log,
            cmd: format!("taskset -c {cores} sh -c '{cmd}'"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = p.child.try_wait()? {
                bail!("it exited at start ({st}){}", p.output_tail());
            }
            if std::net::TcpStream::connect(&p.addr).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "it did not accept on {} within 10 s{}",
                    p.addr,
                    p.output_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        p.pids = group_and_descendants(p.child.id());
        for &pid in &p.pids {
            if let Some((pgid, start)) = pgid_and_start(pid) {
                if pgid != p.child.id() && !p.groups.iter().any(|g| g.0 == pgid) {
                    p.groups.push((pgid, pid, start));
                }
            }
        }
        Ok(p)
    }

    /// `: <its last line of output>`, or nothing.
    fn output_tail(&self) -> String {
        std::fs::read_to_string(&self.log)
            .ok()
            .and_then(|s| {
                s.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(str::to_string)
            })
            .map_or(String::new(), |l| format!(": {}", l.trim()))
    }

    /// Stop it (SIGTERM to its group, SIGKILL after 5 s); an error if it had already exited,
    /// which means it died during the run.
    pub fn stop(mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("it exited during the run ({st}){}", self.output_tail());
        }
        // A process of it that ended (its server under `timeout`, say) took its CPU time with
        // it: the peer died too, and its leader's exit, if it follows within a second, says how.
        if let Some(&gone) = self.pids.iter().find(|&&p| !running(p)) {
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline {
                if let Some(st) = self.child.try_wait()? {
                    bail!("it exited during the run ({st}){}", self.output_tail());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            bail!(
                "it exited during the run (its process {gone} ended){}",
                self.output_tail()
            );
        }
        self.signal_group(rustix::process::Signal::TERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                self.signal_group(rustix::process::Signal::KILL);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.signal_group(rustix::process::Signal::KILL);
        let _ = self.child.wait();
        Ok(())
    }

    /// Signal its process group (the group of the process the bench started: its PID), and
    /// each group of its own that one of its descendants made, while the member recorded in it
    /// is still there (so that the group id cannot have been reused).
    fn signal_group(&self, sig: rustix::process::Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, sig);
        }
        for &(pgid, member, start) in &self.groups {
            if pgid_and_start(member) == Some((pgid, start)) {
                if let Some(g) = rustix::process::Pid::from_raw(pgid as i32) {
                    let _ = rustix::process::kill_process_group(g, sig);
                }
            }
        }
    }
}

impl Drop for PeerProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal_group(rustix::process::Signal::KILL);
            let _ = self.child.wait();
        } else {
            // Anything it forked that outlived it.
            self.signal_group(rustix::process::Signal::KILL);
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// The processes in process group `pgid` and every descendant of its leader `pgid`, also
/// those that moved to a group of their own: the leader first.
fn group_and_descendants(pgid: u32) -> Vec<u32> {
    let mut v = vec![pgid];
    v.extend(procs_where(2, pgid).into_iter().filter(|&p| p != pgid));
    let mut i = 0;
    while i < v.len() {
        for c in children_of(v[i]) {
            if !v.contains(&c) {
                v.push(c);
            }
        }
        i += 1;
    }
    v
}

/// A process's group and start time (clock ticks after boot), from `/proc/PID/stat`.
fn pgid_and_start(pid: u32) -> Option<(u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): the group is field 5, the start time field 22.
    Some((f.get(2)?.parse().ok()?, f.get(19)?.parse().ok()?))
}

/// A reference peer this repository carries (bench/peers/), compiled by `peers build`.
struct Reference {
    name: &'static str,
    file: &'static str,
    source: &'static str,
    /// Link liburing.
    uring: bool,
    what: &'static str,
}

const REFERENCES: [Reference; 2] = [
    Reference {
        name: "c-epoll",
        file: "c-epoll-echo.c",
        source: include_str!("../peers/c-epoll-echo.c"),
        uring: false,
        what: "plain C, edge-triggered epoll, one thread",
    },
    Reference {
        name: "uring-min",
        file: "uring-min-echo.c",
        source: include_str!("../peers/uring-min-echo.c"),
        uring: true,
        what: "plain C and liburing: multishot accept and recv, a provided-buffer ring, one thread",
    },
];

/// What `peers build` was asked.
pub struct BuildArgs {
    pub out: std::path::PathBuf,
    pub cc: String,
    /// `NAME=FILE.c`: the user's own single-file C servers, built the same way.
    pub with: Vec<String>,
}

/// `ringlab-bench peers build`: compile the reference peers (and the user's own C files) with
/// the system C compiler, say what could not be built and why, and print the `--peer`
/// arguments. Nothing is downloaded.
pub fn build(a: &BuildArgs) -> Result<()> {
    std::fs::create_dir_all(a.out.join("src"))
        .with_context(|| format!("creating {}", a.out.display()))?;
    let out = std::fs::canonicalize(&a.out)?;
    let mut jobs: Vec<(String, std::path::PathBuf, bool, String)> = Vec::new();
    for r in &REFERENCES {
        let src = out.join("src").join(r.file);
        std::fs::write(&src, r.source)?;
        jobs.push((r.name.into(), src, r.uring, r.what.into()));
    }
    for w in &a.with {
        let Some((name, file)) = w.split_once('=') else {
            bail!("--with takes NAME=FILE.c, not {w:?}");
        };
        let src = std::fs::canonicalize(file).with_context(|| format!("--with {name}: {file}"))?;
        let text = std::fs::read_to_string(&src).with_context(|| format!("reading {file}"))?;
        jobs.push((
            name.into(),
            src,
            text.contains("liburing.h"),
            format!("your {file}"),
        ));
    }
    let mut peers = Vec::new();
    let mut failed = 0;
    for (name, src, uring, what) in jobs {
        let bin = out.join(&name);
        let mut cmd = Command::new(&a.cc);
        cmd.args(["-O2", "-Wall", "-Wextra", "-o"])
            .arg(&bin)
            .arg(&src);
        if uring {
            cmd.arg("-luring");
        }
        let res = cmd.output();
        match res {
            Err(e) => {
                bail!(
                    "cannot run the C compiler {:?}: {e} (Debian: `apt-get install gcc`, or --cc)",
                    a.cc
                )
            }
            Ok(o) if o.status.success() => {
                println!("built {name} ({what}): {}", bin.display());
                peers.push(format!("--peer '{name}={} {{port}}'", bin.display()));
            }
            Ok(o) => {
                failed += 1;
                let err = String::from_utf8_lossy(&o.stderr);
                let why = if uring && err.contains("liburing.h") {
                    "liburing's headers are missing (Debian: `apt-get install liburing-dev`)"
                        .to_string()
                } else {
                    err.lines()
                        .find(|l| l.contains("error"))
                        .unwrap_or(err.trim())
                        .to_string()
                };
                println!("not built {name}: {why}");
            }
        }
    }
    if have("nginx") || Path::new("/usr/sbin/nginx").is_file() {
        println!("nginx is installed: `ringlab-bench http` measures it (it serves HTTP, not echo)");
    } else {
        println!("nginx is not installed: `ringlab-bench http` runs without its row (Debian: `apt-get install nginx-light`)");
    }
    if peers.is_empty() {
        bail!("no peer could be built (see above)");
    }
    println!("\nringlab-bench compare {}", peers.join(" "));
    if failed > 0 {
        println!("({failed} peer(s) not built: see above)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_runs_are_numbered_by_repetition_so_the_statistics_pair_them() {
        let run = |label: &str, rps: f64| RunResult {
            label: label.into(),
            x: 64.0,
            rps,
            ..RunResult::default()
        };
        // Two rows, three repetitions each, as the peers' loops group them.
        let groups = vec![
            vec![
                run("uring (wrk)", 10.0),
                run("uring (wrk)", 20.0),
                run("uring (wrk)", 30.0),
            ],
            vec![
                run("epoll (wrk)", 1.0),
                run("epoll (wrk)", 2.0),
                run("epoll (wrk)", 3.0),
            ],
        ];
        let (_, raw) = medians_and_runs(groups);
        let pairs = crate::verdict::pairs(
            &raw,
            "uring (wrk)",
            "epoll (wrk)",
            64.0,
            crate::verdict::RPS,
        );
        assert_eq!(pairs, vec![(10.0, 1.0), (20.0, 2.0), (30.0, 3.0)]);
    }

    #[test]
    fn peers_parse_and_fill_in() {
        let p = Peer::parse("c-epoll=./c-epoll-echo {port} --cpu {cpu}").unwrap();
        assert_eq!(p.name, "c-epoll");
        assert_eq!(p.label(), "peer:c-epoll");
        assert_eq!(p.command_for(7001, "2,3"), "./c-epoll-echo 7001 --cpu 2");
        assert_eq!(
            Peer::parse("x=srv {port} {cores}")
                .unwrap()
                .command_for(1, "0-3"),
            "srv 1 0-3"
        );
        for bad in ["noequals", "=cmd {port}", "a b=cmd {port}", "x=", "x=cmd"] {
            assert!(Peer::parse(bad).is_err(), "{bad}");
        }
        let e = parse_peers(&["a=x {port}".into(), "a=y {port}".into()]).unwrap_err();
        assert!(e.to_string().contains("given twice"), "{e}");
    }

    #[test]
    fn a_peer_that_exits_at_start_says_why() {
        let tmp = std::env::temp_dir();
        let p = Peer::parse("bad=echo cannot bind {port} >&2; exit 3").unwrap();
        let e = PeerProc::start(&p, "0", &tmp).err().unwrap().to_string();
        assert!(
            e.contains("exited at start") && e.contains("cannot bind"),
            "{e}"
        );
    }

    /// ringlab-server as `cargo test --workspace` builds it beside the tests; none (skipped,
    /// or a failure under RINGLAB_REQUIRE_PEERS) where it is not there.
    fn server_beside_tests() -> Option<std::path::PathBuf> {
        let server = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent()?.parent().map(|d| d.join("ringlab-server")))
            .filter(|s| s.is_file());
        if server.is_none() {
            assert!(
                std::env::var_os("RINGLAB_REQUIRE_PEERS").is_none(),
                "ringlab-server is not built beside the tests (run `cargo test --workspace`)"
            );
            eprintln!("ringlab-server is not built beside the tests: skipped");
        }
        server
    }

    #[test]
    fn a_peer_is_stopped_with_whatever_it_forked() {
        let tmp = std::env::temp_dir();
        // The peer is a shell that forks `sleep` and runs ringlab-server (built beside the
        // tests by `cargo test --workspace`) as the listener.
        let Some(server) = server_beside_tests() else {
            return;
        };
        let p = Peer::parse(&format!(
            "x=sleep 600 & {} --io epoll --listen 127.0.0.1:{{port}}; wait",
            server.display()
        ))
        .unwrap();
        let proc = PeerProc::start(&p, "0", &tmp).unwrap();
        let pids = proc.pids.clone();
        assert!(pids.len() >= 3, "{pids:?}"); // sh, sleep, ringlab-server
        proc.stop().unwrap();
        std::thread::sleep(Duration::from_millis(100));
        for p in pids {
            assert!(!running(p), "{p} still running");
        }
    }

    /// A peer run under `timeout` (which moves itself and the server to a process group of its
    /// own) is measured with the server it runs and stopped with it.
    #[test]
    fn a_peer_in_a_group_of_its_own_is_measured_and_stopped() {
        let tmp = std::env::temp_dir();
        let Some(server) = server_beside_tests() else {
            return;
        };
        // `; true` keeps sh from exec'ing timeout: the bench's group is sh's, not timeout's.
        let p = Peer::parse(&format!(
            "x=timeout 600 {} --io epoll --listen 127.0.0.1:{{port}}; true",
            server.display()
        ))
        .unwrap();
        let proc = PeerProc::start(&p, "0", &tmp).unwrap();
        let pids = proc.pids.clone();
        let comm = |p: u32| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
        let server_pid = pids
            .iter()
            .copied()
            .find(|&p| comm(p).trim() == "ringlab-server")
            .unwrap_or_else(|| panic!("the server is not among the measured {pids:?}"));
        let group = |p: u32| pgid_and_start(p).map(|g| g.0);
        assert_ne!(
            group(server_pid),
            Some(pids[0]),
            "timeout made no group of its own"
        );
        proc.stop().unwrap();
        std::thread::sleep(Duration::from_millis(200));
        for p in pids {
            assert!(!running(p), "{p} ({}) still running", comm(p).trim());
        }
    }

    /// A peer whose server ends while the shell that started it lives on has died all the
    /// same: stop says so, instead of the bench failing to read the server's /proc files.
    #[test]
    fn a_peer_whose_server_ended_died_during_the_run() {
        let tmp = std::env::temp_dir();
        let Some(server) = server_beside_tests() else {
            return;
        };
        let p = Peer::parse(&format!(
            "x=timeout 0.5 {} --io epoll --listen 127.0.0.1:{{port}}; sleep 600",
            server.display()
        ))
        .unwrap();
        let proc = PeerProc::start(&p, "0", &tmp).unwrap();
        let leader = proc.pids[0];
        std::thread::sleep(Duration::from_millis(1000));
        let e = proc.stop().unwrap_err().to_string();
        assert!(e.contains("exited during the run (its process "), "{e}");
        std::thread::sleep(Duration::from_millis(100));
        assert!(!running(leader), "the peer's shell still runs");
    }
}
