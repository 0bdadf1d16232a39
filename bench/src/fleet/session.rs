//! One server's life on the fleet. A [`Session`] starts ringlab-server on the server host
//! ([`Session::server`]), then, as the scenario needs: processes beside it on the client hosts
//! that must be up before the load (c10k's and multiplex's idle-connection holders:
//! [`Session::beside`]), one or more client runs (ringlab-client on every client host from one
//! start instant, each host's instant corrected by its clock offset: [`Session::clients`]; or a
//! peer tool such as wrk: [`Session::tool`]), and stops the server, reading its statistics and
//! recording the run's per-host table ([`Session::finish`]). Every remote process it started
//! and that still runs is stopped by PID (its process group) when the session is dropped,
//! whatever path leaves it.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use ringlab_client::intervals::Merged;
use ringlab_client::Report as ClientReport;
use ringlab_server::ServerStats;

use super::{
    call, call_within, host_args, host_rows, merge_hosts, read_end, run_table, ssh, Fleet,
    FleetRun, HostRow, Kind, ProcRead, Remote, START_MARGIN,
};
use crate::procs::ProcSample;
use crate::run::{RunResult, RunSpec};

/// The server of a session, up.
struct Up {
    /// `ADDR:PORT` the clients connect to.
    target: String,
    /// The PID the spawn script reported (the `timeout` leading its process group).
    pid: u32,
    /// The server's own processes (from its ready line), measured over the window.
    spids: Vec<u32>,
    cmd: String,
    /// Which program it is (ringlab-server, nginx).
    what: String,
}

/// A server's life on the fleet (see the module's comment).
pub struct Session<'a> {
    f: &'a Fleet,
    seq: u64,
    tmp: PathBuf,
    /// Seconds every remote process of the session is bounded by (its remote `timeout`).
    limit: u64,
    live: Vec<Remote>,
    server: Option<Up>,
    /// Responses the clients of this session received over their lives (every run of it).
    responses: u64,
    /// Requests made by processes beside the clients (the holders' one checking echo each).
    beside_requests: u64,
    /// Whether every client counted each response (ringlab-client does; wrk does not count the
    /// responses to requests in flight when it stops).
    exact: bool,
    /// The last client run's table, its server fields filled in by [`Session::finish`].
    last: Option<FleetRun>,
    /// Why the server's count cannot be set against the clients' (a server that keeps none).
    uncounted: Option<String>,
    /// A block device (major, minor) read with the server's CPU over every window.
    disk: Option<(u32, u32)>,
    /// The client hosts' CPUs whose busy time is read over every window.
    client_cpus: Option<Vec<usize>>,
    /// The server was put in a cgroup of this name on its host ([`Session::cap_server`]).
    cap: Option<String>,
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        self.f.stop_all(&mut self.live);
        self.uncap();
    }
}

/// Unix time in milliseconds.
fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `at` (our clock, Unix ms) on a clock `offset_ms` ahead of ours.
pub fn on_host_clock(at: u64, offset_ms: f64) -> u64 {
    (at as i64 + offset_ms.round() as i64).max(0) as u64
}

impl<'a> Session<'a> {
    /// A session whose remote processes live at most `limit_s` seconds each.
    pub(super) fn new(f: &'a Fleet, tmp: &Path, limit_s: u64) -> Result<Session<'a>> {
        let seq = {
            let mut s = f.seq.lock().map_err(|_| anyhow!("poisoned"))?;
            *s += 1;
            *s
        };
        Ok(Session {
            f,
            seq,
            tmp: tmp.to_path_buf(),
            limit: limit_s,
            live: Vec::new(),
            server: None,
            responses: 0,
            beside_requests: 0,
            exact: true,
            last: None,
            uncounted: None,
            disk: None,
            client_cpus: None,
            cap: None,
        })
    }

    /// The address the clients connect to (`ADDR:PORT`).
    pub fn target(&self) -> Result<&str> {
        Ok(&self.server.as_ref().context("no server started")?.target)
    }

    /// The fleet.
    pub fn fleet(&self) -> &'a Fleet {
        self.f
    }

    /// The server's processes (from its ready line).
    pub fn server_pids(&self) -> Vec<u32> {
        self.server.as_ref().map_or(Vec::new(), |u| u.spids.clone())
    }

    /// Run `script` on the server host (bounded): its stdout.
    pub fn on_server(&self, script: &str) -> Result<String> {
        self.f.on_server(script)
    }

    /// Cap the server's processes at `share` of one CPU in a cgroup on its host (v1
    /// `cpu.cfs_quota_us` or v2 `cpu.max`, as on one machine; removed when the server stops,
    /// and by the fleet's teardown or a signal): what was written, or (inner error) why there
    /// can be none there, for the run to go on uncapped.
    pub fn cap_server(&mut self, share: f64) -> Result<std::result::Result<String, String>> {
        let up = self.server.as_ref().context("no server started")?;
        let (period, quota) = crate::cgroup::period_and_quota(share);
        let name = format!("{}-{}", self.f.cap_prefix(), self.seq);
        let out = self
            .f
            .on_server(&ssh::cap_script(&name, period, quota, &up.spids))?;
        self.cap = Some(name);
        if let Some(l) = out.lines().find_map(|l| l.strip_prefix("cgroup=")) {
            return Ok(Ok(l.to_string()));
        }
        let why = out
            .lines()
            .find_map(|l| l.strip_prefix("cap-failed: "))
            .unwrap_or("the cap script said nothing");
        Ok(Err(format!("{}: {why}", self.f.server.name())))
    }

    /// Remove the server's cgroup, if [`Session::cap_server`] made one (best effort: what is
    /// left is removed by the fleet's teardown).
    fn uncap(&mut self) {
        if let Some(name) = self.cap.take() {
            match self.f.on_server(&ssh::uncap_script(&name)) {
                Ok(out) if out.contains("uncap-failed") => {
                    eprintln!("fleet: {}", out.trim())
                }
                Ok(_) => {}
                Err(e) => eprintln!("fleet: removing cgroup {name}: {e:#}"),
            }
        }
    }

    /// Read the busy time of CPUs `cpus` (a list such as `1` or `2-3`) on every client host over
    /// every window ([`WindowCpu::client_busy_s`]): the clients' cost.
    pub fn watch_client_cpus(&mut self, cpus: &str) {
        self.client_cpus = Some(crate::run::cpus_of(cpus));
    }

    /// Read the server host's block device `major:minor` (`/proc/diskstats`) with the
    /// server's CPU at the start and end of every window ([`WindowCpu::disk`]).
    pub fn watch_disk(&mut self, major: u32, minor: u32) {
        self.disk = Some((major, minor));
    }

    /// Start ringlab-server with `args` on the server host, listening on all its addresses, and
    /// wait for its ready line; one line naming the host and the cause if it does not start.
    pub fn server(&mut self, args: &[String]) -> Result<()> {
        let f = self.f;
        let srv = &f.server;
        let stats = format!("{}/server-{}.json", srv.dir, self.seq);
        let mut argv = vec![srv.bin.clone()];
        argv.extend(args.iter().cloned());
        argv.extend([
            "--listen".into(),
            format!("0.0.0.0:{}", f.o.server_port.unwrap_or(0)),
            "--stats-json".into(),
            stats.clone(),
        ]);
        self.start_server(&ssh::raised(&argv), Some(stats), "ringlab-server")
    }

    /// Start nginx on the server host with the configuration `template` (its listening port
    /// written `__PORT__`: --server-port, or a free one found by trying), and wait until it
    /// listens. Its count of requests is not known: the session's runs are not compared with
    /// it. nginx missing there is an error naming the host.
    pub fn nginx(&mut self, template: &str) -> Result<()> {
        let srv = &self.f.server;
        let argv: Vec<String> = vec![
            "sh".into(),
            "-c".into(),
            ssh::NGINX_SCRIPT.into(),
            "sh".into(),
            format!("{}/nginx-{}", srv.dir, self.seq),
            template.into(),
            self.f
                .o
                .server_port
                .map_or(String::new(), |p| p.to_string()),
        ];
        self.exact = false;
        self.uncounted = Some("nginx keeps no count of the requests it answered".into());
        self.start_server(&argv, None, "nginx")
    }

    /// Start `argv` on the server host as this session's server and wait for its line
    /// `ready listen=ADDR:PORT pid(s)=...`; `stats`: the file it writes its statistics to.
    fn start_server(&mut self, argv: &[String], stats: Option<String>, what: &str) -> Result<()> {
        let f = self.f;
        let srv = &f.server;
        let sname = srv.name();
        let seq = self.seq;
        let script = ssh::spawn_script(
            &srv.dir,
            self.limit,
            argv,
            &format!("server-{seq}"),
            Some(("ready ", 15)),
            stats.as_deref(),
        );
        let r = Remote::start(&srv.ssh, 0, Kind::Server, &script)
            .map_err(|e| anyhow!("{sname}: {e:#}"))?;
        self.live.push(r);
        let r = self.live.last_mut().context("server")?;
        let mut ready = None;
        while let Some(l) = r
            .line(Duration::from_secs(25))
            .map_err(|e| anyhow!("{sname}: {e:#}"))?
        {
            if let Some(p) = l.strip_prefix("pid=") {
                r.set_pid(p.trim().parse().ok());
            } else if l.starts_with("ready ") {
                ready = Some(l);
                break;
            } else if l.starts_with("exit=") {
                r.pending = Some(l);
                break;
            }
        }
        let Some(ready) = ready else {
            let why = ended_why(r);
            bail!("{sname}: {what} failed to start: {why}");
        };
        let field = |k: &str| {
            ready
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_string)
        };
        let port = field("listen=")
            .and_then(|a| a.rsplit_once(':').map(|(_, p)| p.to_string()))
            .with_context(|| format!("{sname}: ready line without listen=: {ready}"))?;
        let mut spids: Vec<u32> = field("pids=")
            .map(|l| l.split(',').filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default();
        if spids.is_empty() {
            spids = field("pid=")
                .and_then(|p| p.parse().ok())
                .into_iter()
                .collect();
        }
        let target = if f.server_addr.contains(':') {
            format!("[{}]:{port}", f.server_addr)
        } else {
            format!("{}:{port}", f.server_addr)
        };
        self.server = Some(Up {
            target,
            pid: r.pid.context("the server's spawn script printed no pid")?,
            spids,
            cmd: format!("{}: {}", srv.ssh.dest, ssh::join(argv)),
            what: what.to_string(),
        });
        Ok(())
    }

    /// Start `what` (each `(client host index, argv)`) on the client hosts beside the server,
    /// and wait (up to `wait_s` each) for each one's line starting `ready`: those lines, in
    /// order, with the host's destination. One that ends or says nothing in time ends the run
    /// with one line naming its host. They run until [`Session::finish`] (or the drop) stops
    /// them; one that ends before is a failure of the run it ends in.
    pub fn beside(
        &mut self,
        what: &str,
        argvs: &[(usize, Vec<String>)],
        ready: &str,
        wait_s: u64,
    ) -> Result<Vec<(String, String)>> {
        let f = self.f;
        let mut started = Vec::new();
        for (k, (ci, argv)) in argvs.iter().enumerate() {
            let h = f.clients.get(*ci).context("no such client host")?;
            let script = ssh::spawn_script(
                &h.dir,
                self.limit,
                argv,
                &format!("{what}-{}-{k}", self.seq),
                Some((ready, wait_s)),
                None,
            );
            let r = Remote::start(&h.ssh, ci + 1, Kind::Beside(what.to_string()), &script)
                .map_err(|e| anyhow!("{}: {e:#}", h.name()))?;
            self.live.push(r);
            started.push(self.live.len() - 1);
        }
        let mut lines = Vec::new();
        for i in started {
            let r = &mut self.live[i];
            let h = f.host(r.host);
            let hname = h.name();
            let mut got = None;
            while let Some(l) = r
                .line(Duration::from_secs(wait_s + 10))
                .map_err(|e| anyhow!("{hname}: {what}: {e:#}"))?
            {
                if let Some(p) = l.strip_prefix("pid=") {
                    r.set_pid(p.trim().parse().ok());
                } else if l.starts_with(ready) {
                    got = Some(l);
                    break;
                } else if l.starts_with("exit=") {
                    r.pending = Some(l);
                    break;
                }
            }
            match got {
                Some(l) => lines.push((h.ssh.dest.clone(), l)),
                None => {
                    let why = ended_why(r);
                    bail!("{hname}: {what} failed: {why}");
                }
            }
        }
        Ok(lines)
    }

    /// Count `n` responses a peer tool's clients received (see [`Session::tool`]).
    pub fn add_client_responses(&mut self, n: u64) {
        self.responses += n;
    }

    /// Count `n` requests made by the processes beside the clients (the server counts them).
    pub fn add_beside_requests(&mut self, n: u64) {
        self.beside_requests += n;
    }

    /// Stop the processes started by [`Session::beside`] (SIGTERM to their process groups) and
    /// check that each ended well.
    fn stop_beside(&mut self) -> Result<()> {
        let f = self.f;
        let mut beside: Vec<Remote> = Vec::new();
        let mut rest = Vec::new();
        for r in self.live.drain(..) {
            if matches!(r.kind, Kind::Beside(_)) {
                beside.push(r);
            } else {
                rest.push(r);
            }
        }
        self.live = rest;
        if beside.is_empty() {
            return Ok(());
        }
        let pids: Vec<(usize, u32)> = beside
            .iter()
            .filter_map(|r| r.pid.map(|p| (r.host, p)))
            .collect();
        f.signal_groups(&pids);
        let mut first_err = None;
        for r in beside.iter_mut() {
            let hname = f.host(r.host).name();
            let what = match &r.kind {
                Kind::Beside(w) => w.clone(),
                _ => String::new(),
            };
            let res = read_end(r, Duration::from_secs(20));
            r.set_pid(None);
            let e = match res {
                Ok(e) if e.code == Some(0) => continue,
                Ok(e) => anyhow!(
                    "{hname}: {what} exited with {:?}: {}",
                    e.code,
                    e.err.join(" / ")
                ),
                Err(e) => anyhow!("{hname}: {what}: {e:#}"),
            };
            first_err.get_or_insert(e);
        }
        // Anything that did not end is stopped by KILL.
        f.stop_all(&mut beside);
        first_err.map_or(Ok(()), Err)
    }

    /// One client run of `spec` against the server: ringlab-client on every client host with
    /// its share of the load, each from one start instant (corrected by its host's clock
    /// offset), the server's CPU read on its host over the measured window, the clients' JSON
    /// and interval logs fetched and merged exactly.
    pub fn clients(&mut self, spec: &RunSpec) -> Result<RunResult> {
        let (mut groups, _) = self.client_groups(&[("", spec)])?;
        Ok(groups.pop().context("no client group")?.res)
    }

    /// [`Session::clients`] for several groups of clients at once, each `(name, spec)` on every
    /// client host with its share of that spec's load, all from one start instant (the files
    /// scenario: hot fetches on a schedule beside cold ones as fast as they come). The specs
    /// share the first one's duration and warm-up; the server's CPU over the window is every
    /// group's. Each group's merged result with its hosts' reports, and the window.
    pub fn client_groups(
        &mut self,
        groups: &[(&str, &RunSpec)],
    ) -> Result<(Vec<Group>, WindowCpu)> {
        let f = self.f;
        let seq = self.seq;
        let spec0 = groups.first().context("no client group")?.1;
        let up = self.server.as_ref().context("no server started")?;
        let (target, spids, server_cmd) = (up.target.clone(), up.spids.clone(), up.cmd.clone());
        let run0 = {
            let n = self.last.as_ref().map_or(0, |r| r.client_runs) + 1;
            format!("{seq}-{n}")
        };
        let run_of = |name: &str| {
            if name.is_empty() {
                run0.clone()
            } else {
                format!("{run0}-{name}")
            }
        };
        // One start instant for all, on each host's own clock.
        let start_at = SystemTime::now() + START_MARGIN;
        let start_ms = unix_ms(start_at);
        let dur = format!("{}ms", (spec0.duration_s * 1e3) as u64);
        let warm = format!("{}ms", (spec0.warmup_s * 1e3) as u64);
        let n = f.clients.len();
        let mut cmds = Vec::new();
        // Per group: the hosts with a share of its connections (all, unless there are fewer
        // than hosts) and the instant each was given.
        let mut parts: Vec<Vec<(usize, u64)>> = Vec::new();
        for (name, spec) in groups {
            let run = run_of(name);
            let mut part = Vec::new();
            for (i, h) in f.clients.iter().enumerate() {
                let Some(args) = host_args(&spec.client_args, i, n) else {
                    continue;
                };
                let at = on_host_clock(start_ms, h.offset.offset_ms);
                part.push((i, at));
                let mut argv = vec![
                    h.bin.clone(),
                    target.clone(),
                    "--cores".into(),
                    spec.client_cores.clone(),
                    "--duration".into(),
                    dur.clone(),
                    "--warmup".into(),
                    warm.clone(),
                    "--start-at".into(),
                    at.to_string(),
                    "--no-progress".into(),
                    "--json".into(),
                    format!("{}/client-{run}.json", h.dir),
                    "--hist-log".into(),
                    format!("{}/client-{run}.hlog", h.dir),
                ];
                argv.extend(args);
                cmds.push(format!("{}: {}", h.ssh.dest, ssh::join(&argv)));
                let script = ssh::spawn_script(
                    &h.dir,
                    self.limit,
                    &argv,
                    &format!("client-{run}"),
                    None,
                    None,
                );
                let mut r = Remote::start(&h.ssh, i + 1, Kind::Client, &script)
                    .map_err(|e| anyhow!("{}: {e:#}", h.name()))?;
                match r.line(Duration::from_secs(15)) {
                    Ok(Some(l)) if l.starts_with("pid=") => r.set_pid(l[4..].trim().parse().ok()),
                    _ => {
                        let why = r.lost();
                        self.live.push(r);
                        bail!("{}: could not start ringlab-client: {why}", h.name());
                    }
                }
                self.live.push(r);
            }
            parts.push(part);
        }

        // The server's CPU over the measured window, read on its host; with a profile, perf
        // records the server's CPUs there over the window (started now, ahead of it: see
        // `ssh::profile_script`).
        let win0 = start_at + Duration::from_secs_f64(spec0.warmup_s);
        let profiling = spec0.profile.as_ref().map(|_| {
            let ssh = f.server.ssh.clone();
            let from = on_host_clock(unix_ms(win0), f.server.offset.offset_ms);
            let to = from + (spec0.duration_s * 1e3) as u64;
            let script = ssh::profile_script(
                &f.server.dir,
                &format!("perf-{run0}"),
                &crate::run::server_cpus(spec0),
                from,
                to,
            );
            let limit = Duration::from_secs_f64(spec0.warmup_s + spec0.duration_s + 90.0);
            std::thread::spawn(move || call_within(&ssh, &script, limit))
        });
        let cpu = self.window(&spids, win0, spec0.duration_s)?;

        // Every client's end (in the order started: group by group, host by host).
        let mut ends = Vec::new();
        let mut said = Vec::new();
        for r in self.live.iter_mut().filter(|r| r.kind == Kind::Client) {
            let hname = f.host(r.host).name();
            let e = read_end(r, Duration::from_secs(self.limit))
                .map_err(|e| anyhow!("{hname}: ringlab-client did not finish: {e:#}"))?;
            r.set_pid(None);
            said.push(format!(
                "{hname}: exit {}{}",
                e.code.unwrap_or(-1),
                if e.err.is_empty() {
                    String::new()
                } else {
                    format!(", {}", e.err.join(" / "))
                }
            ));
            if e.code.unwrap_or(-1) >= 2 {
                bail!(
                    "{hname}: ringlab-client exited with {}: {}",
                    e.code.unwrap_or(-1),
                    e.err.join(" / ")
                );
            }
            ends.push(e.code.unwrap_or(-1));
        }
        self.live.retain(|r| r.kind != Kind::Client);

        // Fetch and merge each group's results.
        let mut out = Vec::new();
        let mut all_hosts = Vec::new();
        let mut ends = ends.into_iter();
        let mut profiling = profiling;
        let mut failed = None;
        for ((name, spec), part) in groups.iter().zip(&parts) {
            let run = run_of(name);
            let local = self.tmp.join(format!("fleet-{run}"));
            std::fs::create_dir_all(&local)?;
            let mut reports = Vec::new();
            let mut logs = Vec::new();
            let group_ends: Vec<i32> = ends.by_ref().take(part.len()).collect();
            for &(i, _) in part {
                let h = &f.clients[i];
                let hname = h.name();
                let fetch = |file: String, what: &str| {
                    call(
                        &h.ssh,
                        &format!("cat {}", ssh::quote(&format!("{}/{file}", h.dir))),
                    )
                    .map_err(|e| anyhow!("{hname}: fetching {what}: {e:#}"))
                };
                let json = fetch(format!("client-{run}.json"), "results")?;
                let rep: ClientReport = serde_json::from_str(&json)
                    .with_context(|| format!("{hname}: parsing ringlab-client's JSON"))?;
                let hlog = fetch(format!("client-{run}.hlog"), "the interval log")?;
                let lp = local.join(format!("client-{i}.hlog"));
                std::fs::write(&lp, hlog)?;
                std::fs::write(local.join(format!("client-{i}.json")), json)?;
                logs.push(lp);
                reports.push((h.ssh.dest.clone(), rep));
            }
            let merged = Merged::read(&logs).context("merging the clients' interval logs")?;
            let mut res = merge_hosts(spec, &reports, &merged.corrected_total(), &group_ends);
            cpu.apply(&mut res);
            if let Some(h) = profiling.take() {
                let sname = f.server.name();
                res.profile = Some(match h.join() {
                    Ok(Ok(out)) => crate::profile::from_remote(&out, &spids),
                    Ok(Err(e)) => crate::profile::Breakdown {
                        note: Some(format!("{sname}: perf: {e:#}")),
                        ..Default::default()
                    },
                    Err(_) => crate::profile::Breakdown {
                        note: Some(format!("{sname}: the profile's thread failed")),
                        ..Default::default()
                    },
                });
            }
            res.server_cmd = server_cmd.clone();
            res.client_cmd = cmds.join("\n");
            let mut hosts = host_rows(&reports, &group_ends);
            for (row, &(i, at)) in hosts.iter_mut().zip(part) {
                row.offset_ms = f.clients[i].offset.offset_ms;
                row.start_at_ms = at;
                if !name.is_empty() {
                    row.host = format!("{} ({name})", row.host);
                }
            }
            self.responses += hosts.iter().map(|h| h.responses_total).sum::<u64>();
            all_hosts.extend(hosts);
            if res.requests == 0.0 {
                // The run's own failure (as on one machine), not a host's: reported, left out.
                let errors: Vec<String> = reports
                    .iter()
                    .map(|(h, r)| {
                        format!(
                            "{h}: {} responses, {} errors",
                            r.counters.responses, r.errors_total
                        )
                    })
                    .collect();
                let group = if name.is_empty() {
                    String::new()
                } else {
                    format!(" ({name} clients)")
                };
                failed.get_or_insert(anyhow::Error::new(super::RunFailed(format!(
                    "no request completed in the window on any client host{group} ({}; {})",
                    errors.join(", "),
                    said.join("; ")
                ))));
            }
            out.push(Group { res, reports });
        }
        // The run's table (printed when the server stops), failed or not.
        let total = RunResult {
            requests: out.iter().map(|g| g.res.requests).sum(),
            rps: out.iter().map(|g| g.res.rps).sum(),
            p99_us: out.first().map_or(0.0, |g| g.res.p99_us),
            server_cpu_s: cpu.d.cpu_s(),
            ..RunResult::default()
        };
        self.record(spec0, &total, all_hosts);
        match failed {
            Some(e) => Err(e),
            None => Ok((out, cpu)),
        }
    }

    /// Run `argvs` (each `(client host index, argv)`) on the client hosts, each from one start
    /// instant on its host's clock, for about `run_s` seconds: each one's exit code and stdout,
    /// in order, and the server's CPU over those seconds. Their counts are not the server's to
    /// the request (see [`FleetRun::exact`]).
    pub fn tool(
        &mut self,
        what: &str,
        argvs: &[(usize, Vec<String>)],
        run_s: f64,
    ) -> Result<(Vec<ToolEnd>, WindowCpu)> {
        let f = self.f;
        let spids = self
            .server
            .as_ref()
            .context("no server started")?
            .spids
            .clone();
        self.exact = false;
        let start_at = SystemTime::now() + START_MARGIN;
        let start_ms = unix_ms(start_at);
        let mut idx = Vec::new();
        let mut starts = Vec::new();
        for (k, (ci, argv)) in argvs.iter().enumerate() {
            let h = f.clients.get(*ci).context("no such client host")?;
            let at = on_host_clock(start_ms, h.offset.offset_ms);
            starts.push(at);
            // Sleep until the instant on the host's clock, then become the tool.
            let mut wrapped: Vec<String> = [
                "sh",
                "-c",
                "d=$(( $1 * 1000000 - $(date +%s%N) )); shift; if [ $d -gt 0 ]; then sleep \"$(( d / 1000000000 )).$(printf %09d $(( d % 1000000000 )))\"; fi; exec \"$@\"",
                "sh",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            wrapped.push(at.to_string());
            wrapped.extend(argv.iter().cloned());
            let name = format!("{what}-{}-{k}", self.seq);
            let script = ssh::spawn_script(
                &h.dir,
                self.limit,
                &wrapped,
                &name,
                None,
                Some(&format!("{name}.out")),
            );
            let r = Remote::start(&h.ssh, ci + 1, Kind::Tool(what.to_string()), &script)
                .map_err(|e| anyhow!("{}: {e:#}", h.name()))?;
            self.live.push(r);
            idx.push(self.live.len() - 1);
        }
        for &i in &idx {
            let r = &mut self.live[i];
            match r.line(Duration::from_secs(15)) {
                Ok(Some(l)) if l.starts_with("pid=") => r.set_pid(l[4..].trim().parse().ok()),
                _ => {
                    let why = r.lost();
                    bail!("{}: could not start {what}: {why}", f.host(r.host).name());
                }
            }
        }
        let cpu = self.window(&spids, start_at, run_s)?;
        let mut out = Vec::new();
        for (&i, &start_at_ms) in idx.iter().zip(&starts) {
            let r = &mut self.live[i];
            let hname = f.host(r.host).name();
            let e = read_end(r, Duration::from_secs(self.limit))
                .map_err(|e| anyhow!("{hname}: {what} did not finish: {e:#}"))?;
            r.set_pid(None);
            out.push(ToolEnd {
                code: e.code.unwrap_or(-1),
                stdout: e.file,
                start_at_ms,
            });
        }
        self.live.retain(|r| !r.kind.is_load());
        Ok((out, cpu))
    }

    /// Record a client run's table (its server fields filled in by [`Session::finish`]).
    pub fn record(&mut self, spec: &RunSpec, res: &RunResult, hosts: Vec<HostRow>) {
        let client_runs = self.last.as_ref().map_or(0, |r| r.client_runs) + 1;
        self.last = Some(FleetRun {
            seq: self.seq,
            label: spec.label.clone(),
            x: spec.x,
            server_requests: 0,
            client_responses: 0,
            beside_requests: 0,
            exact: true,
            not_compared: None,
            client_runs,
            requests: res.requests as u64,
            rps: res.rps,
            p99_us: res.p99_us,
            server_cpu_s: res.server_cpu_s,
            hosts,
        });
    }

    /// Stop what runs beside the clients, then the server (SIGTERM to its `timeout`, which
    /// passes it on): its statistics, its end checked, and the run's per-host table recorded
    /// with the server's count beside the clients'.
    pub fn finish(self) -> Result<ServerStats> {
        self.end()?
            .context("the server wrote no statistics (not ringlab-server)")
    }

    /// [`Session::finish`] for a server that keeps no statistics (nginx).
    pub fn finish_uncounted(self) -> Result<()> {
        self.end().map(|_| ())
    }

    fn end(mut self) -> Result<Option<ServerStats>> {
        let f = self.f;
        let sname = f.server.name();
        self.stop_beside()?;
        let up = self.server.take().context("no server started")?;
        call(&f.server.ssh, &format!("kill -TERM {}", up.pid))
            .map_err(|e| anyhow!("{sname}: stopping the server: {e:#}"))?;
        let i = self
            .live
            .iter()
            .position(|r| r.kind == Kind::Server)
            .context("no server session")?;
        let end = read_end(&mut self.live[i], Duration::from_secs(25))
            .map_err(|e| anyhow!("{sname}: {e:#}"))?;
        self.live[i].set_pid(None);
        self.uncap();
        if end.code != Some(0) {
            bail!(
                "{sname}: {} exited with {:?}: {}",
                up.what,
                end.code,
                end.err.join(" / ")
            );
        }
        let stats: Option<ServerStats> = match self.uncounted {
            Some(_) => None,
            None => Some(
                serde_json::from_str(&end.file)
                    .with_context(|| format!("{sname}: parsing the server's statistics"))?,
            ),
        };
        if let Some(mut run) = self.last.take() {
            run.server_requests = stats.as_ref().map_or(0, |s| s.total.requests);
            run.client_responses = self.responses;
            run.beside_requests = self.beside_requests;
            run.exact = self.exact;
            run.not_compared = self.uncounted.clone();
            eprintln!("{}", run_table(&run));
            if let Ok(mut v) = f.runs.lock() {
                v.push(run);
            }
        }
        Ok(stats)
    }

    /// The server processes `spids` measured on their host from `win0` for `dur_s` seconds,
    /// every remote process watched meanwhile. The reads are made at the window's two ends on
    /// each host's clock by one SSH call started now, ahead of the window
    /// ([`ssh::at_instants`]): an SSH connection takes up to most of a second to set up on
    /// these VMs, and reads made by calls started at the two instants came that much late,
    /// so a short window was read after its run had ended.
    fn window(&mut self, spids: &[u32], win0: SystemTime, dur_s: f64) -> Result<WindowCpu> {
        let f = self.f;
        let srv = &f.server;
        let sname = srv.name();
        let win1 = win0 + Duration::from_secs_f64(dur_s);
        let limit =
            win1.duration_since(SystemTime::now()).unwrap_or_default() + Duration::from_secs(30);
        let read = |h: &super::Host, body: &str| {
            let (a, b) = (
                on_host_clock(unix_ms(win0), h.offset.offset_ms),
                on_host_clock(unix_ms(win1), h.offset.offset_ms),
            );
            let (s, script, name) = (h.ssh.clone(), ssh::at_instants(body, a, b), h.name());
            std::thread::spawn(move || {
                call_within(&s, &script, limit).map_err(|e| anyhow!("{name}: reading /proc: {e:#}"))
            })
        };
        let server_read = read(srv, &ssh::proc_script(spids, self.disk));
        let client_reads: Vec<_> = match &self.client_cpus {
            Some(_) => f
                .clients
                .iter()
                .map(|h| read(h, ssh::STAT_SCRIPT))
                .collect(),
            None => Vec::new(),
        };
        self.watch_until(win1)?;
        let joined = |h: std::thread::JoinHandle<Result<String>>| -> Result<(String, String)> {
            let out = h
                .join()
                .map_err(|_| anyhow!("reading /proc: the thread failed"))??;
            let (a, b) = out
                .split_once(ssh::AT_INSTANTS_MARK)
                .context("reading /proc: the second read is missing")?;
            Ok((a.to_string(), b.to_string()))
        };
        let (s0, s1) = joined(server_read).map_err(|e| anyhow!("{sname}: {e:#}"))?;
        let (p0, p1) = (ProcRead::parse(&s0)?, ProcRead::parse(&s1)?);
        let d = p1.sample.since(&p0.sample);
        // Scale the CPU read between the two samples to the window.
        let span = (p1.now_ns - p0.now_ns) as f64 / 1e9;
        let k = if span > 0.0 { dur_s / span } else { 1.0 };
        let client_busy_s = match &self.client_cpus {
            None => None,
            Some(cpus) => {
                let mut sum = 0.0;
                for (h, r) in f.clients.iter().zip(client_reads) {
                    let (a, b) = joined(r)?;
                    let busy = |t: &str| {
                        crate::procs::busy_of(t, cpus).with_context(|| {
                            format!("{}: /proc/stat has no line for CPUs {cpus:?}", h.name())
                        })
                    };
                    let tck: f64 = a
                        .lines()
                        .find_map(|l| l.strip_prefix("tck "))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(100.0);
                    sum += busy(&b)?.saturating_sub(busy(&a)?) as f64 / tck;
                }
                Some(sum)
            }
        };
        Ok(WindowCpu {
            d: ProcSample {
                user_s: d.user_s * k,
                sys_s: d.sys_s * k,
                ctx_switches: (d.ctx_switches as f64 * k) as u64,
                run_ns: d.run_ns.map(|n| (n as f64 * k) as u64),
            },
            rss_kib: p1.rss_kib,
            disk: p0.disk.zip(p1.disk),
            span_ms: span * 1e3,
            client_busy_s,
        })
    }

    /// Sleep until `t`, watching every remote process: one that ended early is the run's end.
    fn watch_until(&mut self, t: SystemTime) -> Result<()> {
        let f = self.f;
        loop {
            for r in self.live.iter_mut() {
                if r.pending.is_some() || r.pid.is_none() {
                    continue;
                }
                match r.lines.try_recv() {
                    // A client that finished as its window ends (1: with errors, which its
                    // report counts): read on later.
                    Ok(Some(l))
                        if r.kind.is_load()
                            && (l == "exit=0" || (r.kind == Kind::Client && l == "exit=1")) =>
                    {
                        r.pending = Some(l)
                    }
                    Ok(Some(l)) if l.starts_with("exit=") => {
                        let who = f.host(r.host).name();
                        let prog = r.kind.program().to_string();
                        let code = l[5..].to_string();
                        // read_end reads the `exit=` line again, then the stderr lines.
                        r.pending = Some(l);
                        let end = read_end(r, Duration::from_secs(3)).unwrap_or_default();
                        r.set_pid(None);
                        bail!(
                            "{who}: {prog} died mid-run (exit {code}): {}",
                            end.err.join(" / ")
                        );
                    }
                    Ok(Some(_)) | Err(std::sync::mpsc::TryRecvError::Empty) => {}
                    Ok(None) | Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                        let who = f.host(r.host).name();
                        bail!("{who}: {} mid-run", r.lost());
                    }
                }
            }
            let left = t.duration_since(SystemTime::now()).unwrap_or_default();
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

/// One group of [`Session::client_groups`]: its hosts merged, and each host's report.
pub struct Group {
    pub res: RunResult,
    /// `(host, report)`, host by host.
    pub reports: Vec<(String, ClientReport)>,
}

/// How a tool run by [`Session::tool`] ended on its host.
pub struct ToolEnd {
    pub code: i32,
    pub stdout: String,
    /// The start instant it was given, on its host's clock (Unix ms).
    pub start_at_ms: u64,
}

/// The server's CPU over a measured window, read on its host (scaled to the window from the
/// span between the two reads).
pub struct WindowCpu {
    pub d: ProcSample,
    pub rss_kib: u64,
    /// The `/proc/diskstats` lines of the device watched ([`Session::watch_disk`]) at the
    /// window's start and end, read with the CPU.
    pub disk: Option<(String, String)>,
    /// Milliseconds between the two reads (on the server host's clock).
    pub span_ms: f64,
    /// Seconds the watched client CPUs were busy over the window, all client hosts together
    /// ([`Session::watch_client_cpus`]).
    pub client_busy_s: Option<f64>,
}

impl WindowCpu {
    /// Into `res`: the server's CPU, per request, context switches per request, RSS.
    pub fn apply(&self, res: &mut RunResult) {
        res.server_cpu_s = self.d.cpu_s();
        res.server_user_s = self.d.user_s;
        res.server_sys_s = self.d.sys_s;
        if res.requests > 0.0 {
            res.cpu_per_req_us = res.server_cpu_s * 1e6 / res.requests;
            res.ctx_switches_per_req = self.d.ctx_switches as f64 / res.requests;
            if let Some(b) = self.client_busy_s {
                res.client_cpu_per_req_us = b * 1e6 / res.requests;
            }
        }
        res.server_rss_kib = self.rss_kib as f64;
    }
}

/// Why a process that was to say it is ready ended instead: its stderr's last lines, or how
/// its SSH session ended.
fn ended_why(r: &mut Remote) -> String {
    let why = match read_end(r, Duration::from_secs(5)) {
        Ok(e) if !e.err.is_empty() => e.err.join(" / "),
        Ok(e) => format!("it exited with {:?} and said nothing on stderr", e.code),
        Err(e) => format!("{e:#}"),
    };
    r.set_pid(None);
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_instants_follow_each_hosts_clock() {
        // A host 12.4 ms ahead is told 12 ms later on its own clock; one behind, earlier.
        assert_eq!(on_host_clock(1_000_000, 12.4), 1_000_012);
        assert_eq!(on_host_clock(1_000_000, -7.6), 999_992);
        assert_eq!(on_host_clock(1_000_000, 0.0), 1_000_000);
        assert_eq!(on_host_clock(5, -100.0), 0);
    }
}
