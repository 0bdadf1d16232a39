//! Peers measured beside ringlab: wrk as a second client, nginx as a reference server. Each is
//! optional: when missing, the bench says how to install it and carries on.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::ctx::{backend_args, Ctx};
use crate::procs::{have, ProcSample, Server};
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
    let (bins, opts) = (&ctx.bins, &ctx.run);
    let (server_cores, client_cores) = (&ctx.o.server_cores, &ctx.o.client_cores);
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
                if opts.netns.is_some() {
                    bail!("not run under --netns (wrk runs on the host)");
                }
                let server = Server::start(bins, &args, &opts.tmp, None)?;
                let before = ProcSample::read(server.pid)?;
                let cmd = format!(
                    "taskset -c {client_cores} wrk -t1 -c{c} -d{}s --latency http://{}/",
                    dur.ceil() as u64,
                    server.addr
                );
                let out = Command::new("taskset")
                    .args(["-c", client_cores, "wrk", "-t1"])
                    .arg(format!("-c{c}"))
                    .arg(format!("-d{}s", dur.ceil() as u64))
                    .arg("--latency")
                    .arg(format!("http://{}/", server.addr))
                    .output()
                    .context("running wrk")?;
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
                let r = RunResult {
                    label: format!("{b} (wrk)"),
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
                    cpu_per_req_us: if reqs > 0.0 {
                        d.cpu_s() * 1e6 / reqs
                    } else {
                        0.0
                    },
                    ctx_switches_per_req: if reqs > 0.0 {
                        d.ctx_switches as f64 / reqs
                    } else {
                        0.0
                    },
                    percentiles: pct,
                    server_cmd: format!("{} {}", bins.server.display(), args.join(" ")),
                    client_cmd: cmd,
                    ..RunResult::default()
                };
                if groups.len() <= i {
                    groups.push(Vec::new());
                }
                groups[i].push(r);
                i += 1;
            }
        }
    }
    let medians = groups.iter().map(|g| combine(g)).collect();
    Ok((medians, groups.into_iter().flatten().collect()))
}

struct Nginx {
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

fn children_of(ppid: u32) -> Vec<u32> {
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                let parent = stat
                    .rsplit_once(')')
                    .and_then(|(_, r)| r.split_whitespace().nth(1))
                    .and_then(|p| p.parse::<u32>().ok());
                if parent == Some(ppid) {
                    v.push(pid);
                }
            }
        }
    }
    v
}

fn start_nginx(dir: &Path, cpu: usize) -> Result<(Nginx, String, u32)> {
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mask = format!("1{}", "0".repeat(cpu));
    let conf = format!(
        "worker_processes 1;\nworker_cpu_affinity {mask};\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\nevents {{ worker_connections 8192; use epoll; multi_accept on; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n  server {{\n    listen 127.0.0.1:{port};\n    location = / {{ default_type text/plain; return 200 \"Hello, World!\"; }}\n  }}\n}}\n",
        d = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf)?;
    let child = Command::new("nginx")
        .args(["-p"])
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting nginx")?;
    let ng = Nginx { child };
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
        std::thread::sleep(Duration::from_millis(20));
    }
    let worker = children_of(ng.child.id())
        .into_iter()
        .next()
        .context("nginx has no worker process")?;
    Ok((ng, addr, worker))
}

/// nginx (one worker pinned to the server CPU) driven by ringlab-client.
pub fn nginx_rows(
    ctx: &Ctx,
    conns: &[u32],
    dur: f64,
    reps: usize,
) -> Result<(Vec<RunResult>, Vec<RunResult>)> {
    let (bins, opts) = (&ctx.bins, &ctx.run);
    let (server_cores, client_cores) = (&ctx.o.server_cores, &ctx.o.client_cores);
    if !have("nginx") && !Path::new("/usr/sbin/nginx").is_file() {
        bail!("nginx is not installed (Debian: `apt-get install nginx-light`)");
    }
    let cpu: usize = server_cores
        .split([',', '-'])
        .next()
        .and_then(|c| c.parse().ok())
        .context("--server-cores must start with a CPU number for the nginx row")?;
    if opts.netns.is_some() {
        bail!("not run under --netns (nginx runs on the host)");
    }
    let dir = opts.tmp.join("nginx");
    std::fs::create_dir_all(dir.join("logs"))?;
    // nginx resolves relative paths in its config against its prefix: use absolute ones.
    let dir = std::fs::canonicalize(&dir).with_context(|| format!("{}", dir.display()))?;
    let (ng, addr, worker) = start_nginx(&dir, cpu)?;
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
                client_cores: client_cores.into(),
                duration_s: dur,
                warmup_s: 0.5,
                ..RunSpec::default()
            };
            let mut r = drive(bins, &addr, &[worker], &spec, opts)?;
            r.server_cmd = "nginx (1 worker, pinned, return 200 \"Hello, World!\")".into();
            groups[i].push(r);
        }
    }
    drop(ng);
    let medians = groups
        .iter()
        .filter(|g| !g.is_empty())
        .map(|g| combine(g))
        .collect();
    Ok((medians, groups.into_iter().flatten().collect()))
}
