//! `files`: disk and network on one loop, the workload where the completion model should win.
//!
//! A data set of small hot files (cached) and large cold ones (dropped from the page cache
//! before every run) is served by each row (a backend and its file-IO mode, nginx as an
//! anchor) under one mixed load: connections asking for hot files on a fixed schedule (open
//! loop, the same offered load for every row: their latency is what a loop that blocks on the
//! disk ruins) while other connections fetch cold files as fast as they come (closed loop:
//! throughput). Before measuring, every row must serve the data byte for byte. Rows run
//! interleaved, repetition by repetition, and are compared with the uring row (paired ratios,
//! 95% intervals, the A/A control as the noise floor).

pub mod data;
pub mod disk;
pub mod remote;
mod table;
pub mod verify;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ringlab_client::Report as ClientReport;

use crate::ctx::{backend_args, Ctx, Scenario};
use crate::peers::{self, Nginx, NginxSite};
use crate::procs::{ProcSample, Server};
use crate::report::Report;
use crate::verdict::At;
use data::{human, DataSet, DataSpec};
use disk::Disk;
use table::{FilesRun, Judge};

/// `ringlab-bench files`'s own flags (the common ones, `--quick`, `--backends`, `--duration`,
/// `--out`, the CPU lists, apply too).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct FilesArgs {
    /// Where the data set lives: made there when missing or when its manifest does not match
    /// these flags, reused otherwise. An existing directory must be empty or a data set of
    /// this bench. In fleet mode (--server-host) a directory on the server host, where the
    /// set is made, checked, served and kept for the next run (ringlab-bench is copied there
    /// to do it). [default: target/ringlab/files-data, files-data-quick with --quick; fleet
    /// mode: REMOTE_DIR/ringlab-files-data(-quick)]
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Total size of the data set (K, M, G, T: powers of 1024). The default keeps a run within
    /// minutes; full runs use a few GiB (e.g. 8G) so that the cold fetches of a run seldom come
    /// back to a file already read. Checked against the free space (statvfs) first.
    /// [default: 2G; --quick: 64M]
    #[arg(long, value_name = "SIZE", value_parser = data::parse_size)]
    pub data_size: Option<u64>,
    /// Hot files (4-64 KiB each; the rest of --data-size is cold files of 1-16 MiB).
    /// [default: 1000; --quick: 100]
    #[arg(long)]
    pub hot_files: Option<usize>,
    /// Hot requests per second, on a fixed schedule (open loop), the same for every row.
    /// [default: 2000; --quick: 500]
    #[arg(long)]
    pub hot_rate: Option<f64>,
    /// Connections asking for hot files. [default: 64; --quick: 16]
    #[arg(long)]
    pub hot_conns: Option<usize>,
    /// Connections fetching cold files, each as fast as they come (closed loop).
    /// [default: 8; --quick: 4]
    #[arg(long)]
    pub cold_conns: Option<usize>,
    /// Interleaved repetitions of every row (the same as --reps; 6 is the fewest that give a
    /// 95% interval). [default: 6; --quick: 1]
    #[arg(long)]
    pub runs: Option<usize>,
    /// Cold files fetched whole and by two ranges in the byte-exact pass before measuring.
    /// [default: 8; --quick: 3]
    #[arg(long)]
    pub verify_cold: Option<usize>,
    /// Seed of the data set's sizes and contents.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Leave out the A/A control (a second uring row): faster, but no noise floor.
    #[arg(long)]
    pub no_aa: bool,
}

/// `ringlab-bench files`.
pub struct Files {
    pub args: FilesArgs,
}

/// How a row serves files.
#[derive(Clone, Debug, PartialEq)]
enum Serve {
    /// ringlab-server with these arguments (backend and file-IO mode).
    Ringlab(Vec<String>),
    /// nginx, `sendfile on` or `aio threads`.
    Nginx { aio: bool },
}

#[derive(Clone, Debug, PartialEq)]
struct Row {
    label: String,
    serve: Serve,
}

/// The rows `--backends` names (default: uring and epoll's three file-IO modes).
fn rows_of(backends: Option<&[String]>) -> Result<Vec<Row>> {
    let default = ["uring", "epoll-blocking", "epoll-threads", "epoll-sendfile"];
    let all = [
        "uring",
        "epoll-blocking",
        "epoll-threads",
        "epoll-sendfile",
        "tokio-uring",
        "tokio",
        "blocking",
    ];
    let names: Vec<String> = match backends {
        None => default.iter().map(|s| s.to_string()).collect(),
        Some(b) if b.iter().any(|x| x == "all") => all.iter().map(|s| s.to_string()).collect(),
        Some(b) => b.to_vec(),
    };
    let mut rows = Vec::new();
    for n in &names {
        let readiness = ["epoll", "poll", "select"];
        let (backend, mode) = match n.split_once('-') {
            Some((b, m)) if readiness.contains(&b) => (b, Some(m)),
            _ => (n.as_str(), None),
        };
        let args = backend_args(backend).with_context(|| {
            format!("--backends {n}: files rows are uring, epoll-blocking, epoll-threads, epoll-sendfile (poll-… and select-… alike), tokio-uring, tokio, blocking, blocking-N, or all")
        })?;
        if readiness.contains(&backend) {
            // A readiness backend's row is its file-IO mode (epoll: all three).
            let modes: Vec<&str> = match mode {
                Some(m @ ("blocking" | "threads" | "sendfile")) => vec![m],
                Some(m) => {
                    bail!("--backends {n}: {m:?} is no file-IO mode (blocking, threads, sendfile)")
                }
                None => vec!["blocking", "threads", "sendfile"],
            };
            for m in modes {
                let mut a = args.clone();
                a.extend(["--file-io".to_string(), m.to_string()]);
                rows.push(Row {
                    label: format!("{backend} {m}"),
                    serve: Serve::Ringlab(a),
                });
            }
            continue;
        }
        rows.push(Row {
            label: backend.to_string(),
            serve: Serve::Ringlab(args),
        });
    }
    let mut seen = Vec::new();
    for r in &rows {
        if seen.contains(&r.label) {
            bail!("--backends: row {} given twice", r.label);
        }
        seen.push(r.label.clone());
    }
    if rows.is_empty() {
        bail!("--backends: no rows");
    }
    Ok(rows)
}

/// Everything a files run is made of.
struct Plan {
    data: DataSet,
    rows: Vec<Row>,
    baseline: String,
    aa: Option<String>,
    hot_paths: PathBuf,
    cold_paths: PathBuf,
    hot_rate: f64,
    hot_conns: usize,
    cold_conns: usize,
    runs: usize,
    dur: f64,
    warmup: f64,
    disk: Result<Disk, String>,
    /// The first server CPU (nginx's worker is pinned to it).
    cpu: usize,
    /// Fleet mode: the data set is on the server host (`data.dir` a path there).
    remote: Option<remote::Remote>,
}

/// The path lists' names in each client host's directory (fleet mode).
const HOT_PATHS: &str = "hot-paths.txt";
const COLD_PATHS: &str = "cold-paths.txt";

impl Scenario for Files {
    fn name(&self) -> &'static str {
        "files"
    }

    fn fleet_needs_bench_on_server(&self) -> bool {
        true
    }

    fn run(&self, ctx: &Ctx, rep: &mut Report) -> Result<()> {
        let a = &self.args;
        let q = ctx.o.quick;
        if ctx.run.netns.is_some() {
            bail!("files: not under --netns (the data set, the page cache and the disk counters are the host's)");
        }
        let pick =
            |v: Option<usize>, full: usize, quick: usize| v.unwrap_or(if q { quick } else { full });
        let spec = DataSpec {
            size: a.data_size.unwrap_or(if q { 64 << 20 } else { 2 << 30 }),
            hot_files: pick(a.hot_files, 1000, 100),
            seed: a.seed,
        };
        if !(1..=1_000_000).contains(&spec.hot_files) {
            bail!("--hot-files must be from 1 to 1000000");
        }
        let hot_rate = a.hot_rate.unwrap_or(if q { 500.0 } else { 2000.0 });
        if !(hot_rate.is_finite() && hot_rate > 0.0) {
            bail!("--hot-rate must be a positive number of requests per second");
        }
        let (hot_conns, cold_conns) = (pick(a.hot_conns, 64, 16), pick(a.cold_conns, 8, 4));
        if hot_conns == 0 || cold_conns == 0 {
            bail!("--hot-conns and --cold-conns must be at least 1");
        }
        let runs = a
            .runs
            .or(ctx.o.reps)
            .unwrap_or(if q { 1 } else { 6 })
            .max(1);
        let dur = ctx.o.duration.unwrap_or(if q { 1.0 } else { 5.0 });
        if !(dur > 0.0 && dur <= 3600.0) {
            bail!("--duration must be in (0, 3600] seconds");
        }
        let mut rows = rows_of(ctx.o.backends.as_deref())?;
        let baseline = rows[0].label.clone();
        let baseline = if rows.iter().any(|r| r.label == "uring") {
            "uring".to_string()
        } else {
            baseline
        };
        let aa = (!a.no_aa).then(|| format!("{baseline} A/A"));
        if let Some(aa) = &aa {
            let serve = rows
                .iter()
                .find(|r| r.label == baseline)
                .map(|r| r.serve.clone())
                .context("no baseline row")?;
            rows.push(Row {
                label: aa.clone(),
                serve,
            });
        }
        let mut notes = Vec::new();
        let fleet = ctx.run.fleet.as_deref();
        let nginx_there = match fleet {
            None => peers::nginx_installed(),
            Some(f) => f
                .guard(|| f.on_server("command -v nginx || ls /usr/sbin/nginx; true"))?
                .lines()
                .any(|l| l.trim_end().ends_with("/nginx")),
        };
        if nginx_there {
            for aio in [false, true] {
                rows.push(Row {
                    label: if aio {
                        "nginx aio threads"
                    } else {
                        "nginx sendfile"
                    }
                    .into(),
                    serve: Serve::Nginx { aio },
                });
            }
        } else {
            let on = fleet.map_or(String::new(), |f| {
                format!(" on the server host {}", f.server.ssh.dest)
            });
            let l = format!("nginx is not installed{on}: its anchor rows (`sendfile on`, `aio threads`) are left out (Debian: `apt-get install nginx-light`, or `apt-get install nginx`)");
            println!("files: {l}");
            notes.push(l);
        }
        let sample_n = pick(a.verify_cold, 8, 3);
        let quick_name = if q { "files-data-quick" } else { "files-data" };
        let (data, disk, remote) = match fleet {
            None => {
                let data_dir = a
                    .data
                    .clone()
                    .unwrap_or_else(|| super::default_target_dir().join(quick_name));
                let data = data::ensure(&data_dir, &spec, &mut |l| println!("files: {l}"))?;
                let sample: Vec<&data::Entry> = verify::cold_sample(&data, sample_n);
                data.check(&sample)?;
                let disk = Disk::of(&data_dir);
                (data, disk, None)
            }
            Some(f) => {
                // On the server host, outside the run's own directory (removed at the end),
                // so that the next run reuses it.
                let dir = match &a.data {
                    Some(d) => d.to_str().context("--data is not UTF-8")?.to_string(),
                    None => format!(
                        "{}/ringlab-{quick_name}",
                        ctx.o.remote_dir.trim_end_matches('/')
                    ),
                };
                let (r, data, disk) = f.guard(|| remote::Remote::make(f, &dir, &spec, sample_n))?;
                (data, disk, Some(r))
            }
        };
        if data.reused {
            println!(
                "files: reusing the data set in {} ({}, its manifest matches)",
                data.dir.display(),
                human(spec.size)
            );
        }
        let sample: Vec<data::Entry> = verify::cold_sample(&data, sample_n)
            .into_iter()
            .cloned()
            .collect();
        let (hot_paths, cold_paths) = data.write_paths(&ctx.run.tmp)?;
        if let Some(f) = fleet {
            f.guard(|| {
                f.put_on_clients(&hot_paths, HOT_PATHS)?;
                f.put_on_clients(&cold_paths, COLD_PATHS)
            })?;
        }
        if let Err(e) = &disk {
            let l = format!("disk columns left empty: {e}");
            println!("files: {l}");
            notes.push(l);
        }
        let cpu: usize = ctx
            .o
            .server_cores
            .split([',', '-'])
            .next()
            .and_then(|c| c.trim().parse().ok())
            .context("--server-cores must start with a CPU number")?;
        let plan = Plan {
            data,
            rows,
            baseline,
            aa,
            hot_paths,
            cold_paths,
            hot_rate,
            hot_conns,
            cold_conns,
            runs,
            dur,
            warmup: ctx.warmup(),
            disk,
            cpu,
            remote,
        };
        plan.go(ctx, rep, &sample, notes)
    }
}

/// What the byte-exact pass found per row.
#[derive(Clone, Debug, serde::Serialize)]
struct Check {
    label: String,
    ok: Option<verify::Verified>,
    error: Option<String>,
}

impl Plan {
    fn go(
        &self,
        ctx: &Ctx,
        rep: &mut Report,
        sample: &[data::Entry],
        mut notes: Vec<String>,
    ) -> Result<()> {
        let sample: Vec<&data::Entry> = sample.iter().collect();
        // The byte-exact pass: every row once, before anything is measured.
        let mut checks = Vec::new();
        for row in &self.rows {
            if row.label.ends_with(" A/A") {
                continue; // the same server as its baseline
            }
            println!("files: verifying {} byte for byte", row.label);
            let r = self.verify_row(ctx, row, &sample)?;
            match r {
                Ok(v) => checks.push(Check {
                    label: row.label.clone(),
                    ok: Some(v),
                    error: None,
                }),
                Err(e) => {
                    let e = format!("{e:#}");
                    eprintln!(
                        "ringlab-bench: files: {} FAILED before measuring, left out: {e}",
                        row.label
                    );
                    checks.push(Check {
                        label: row.label.clone(),
                        ok: None,
                        error: Some(e),
                    });
                }
            }
        }
        let failed: Vec<&Check> = checks.iter().filter(|c| c.error.is_some()).collect();
        let is_failed = |label: &str| {
            let base = label.strip_suffix(" A/A").unwrap_or(label);
            failed.iter().any(|c| c.label == base)
        };
        let rows: Vec<&Row> = self.rows.iter().filter(|r| !is_failed(&r.label)).collect();
        let per_run = self.warmup + self.dur + 1.5;
        if !rows.is_empty() {
            println!(
                "files: {} rows × {} repetitions of {:.1} s measured (about {:.0} s), hot {} req/s over {} connections, cold over {} connections",
                rows.len(),
                self.runs,
                self.dur,
                rows.len() as f64 * self.runs as f64 * per_run,
                self.hot_rate,
                self.hot_conns,
                self.cold_conns
            );
        }
        let mut raw: Vec<FilesRun> = Vec::new();
        for r in 0..self.runs {
            for i in super::compare::rotated(rows.len(), rows.len(), r) {
                let row = rows[i];
                eprintln!("  rep {} {}", r + 1, row.label);
                match self.measure(ctx, row, r) {
                    Ok(run) => raw.push(run),
                    Err(e) => eprintln!(
                        "ringlab-bench: files: run {} (rep {}) failed: {e:#}",
                        row.label,
                        r + 1
                    ),
                }
            }
        }
        let medians: Vec<FilesRun> = rows
            .iter()
            .filter_map(|row| {
                let runs: Vec<FilesRun> = raw
                    .iter()
                    .filter(|r| r.label == row.label)
                    .cloned()
                    .collect();
                (!runs.is_empty()).then(|| table::combine(&runs))
            })
            .collect();
        let judge = Judge {
            raw: &raw,
            baseline: &self.baseline,
            aa: self.aa.as_deref(),
        };
        let at = At {
            scenario: "files".into(),
            conns: (self.hot_conns + self.cold_conns) as u32,
            load: format!(
                "{} hot req/s offered + {} cold connections",
                self.hot_rate, self.cold_conns
            ),
            x: 0.0,
        };
        let labels: Vec<String> = medians.iter().map(|r| r.label.clone()).collect();
        let verdicts = judge.verdicts(&labels, &at);
        let t = if medians.is_empty() {
            "No row was measured.\n".to_string()
        } else {
            table::table(&medians, &judge)
        };
        for c in &failed {
            notes.push(format!(
                "**{} FAILED before measuring** (it did not start, or did not serve the data byte for byte) and was not measured: {}",
                c.label,
                c.error.as_deref().unwrap_or("")
            ));
        }
        let cold_fetched: f64 = medians
            .iter()
            .map(|r| r.cold_mb_s * 1e6 * self.dur)
            .fold(0.0, f64::max);
        if cold_fetched > self.data.manifest.cold_bytes() as f64 {
            notes.push(format!(
                "The busiest row fetched about {} of cold files in a run, more than the {} there are: later fetches found files already read in that run (page cache). A larger --data-size keeps them cold.",
                human(cold_fetched as u64),
                human(self.data.manifest.cold_bytes())
            ));
        }
        let notes_md: String = notes.iter().map(|n| format!("- {n}\n")).collect();
        let m = &self.data.manifest;
        let disk_name = match &self.disk {
            Ok(d) => format!("`{}`", d.name),
            Err(_) => "–".into(),
        };
        let (on_server, on_clients) = match ctx.run.fleet.as_deref() {
            None => (String::new(), String::new()),
            Some(f) => (
                format!(" of the server host {} (where each row's server runs)", f.server.ssh.dest),
                format!(
                    " of every client host ({}), each with its share of the connections and of the hot rate",
                    f.clients
                        .iter()
                        .map(|h| h.ssh.dest.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
        };
        let text = format!(
            "Static files over HTTP (`--root`, `GET /files/…`). Data set: {} in {} hot files (4–64 KiB, read into the page cache before every run) and {} cold files (1–16 MiB, dropped from it before every run with `posix_fadvise(POSIX_FADV_DONTNEED)`), seed {}, in `{}` on disk {disk_name}{on_server}. One run per row and repetition, on a fresh server pinned to CPU {}: **hot**: {} connections asking for hot files in turn at {} req/s in all, open loop (latency from the intended send time, corrected for coordinated omission); **cold**: {} connections fetching cold files in turn, closed loop; both ringlab-client processes on CPU {}{on_clients}, {:.1} s measured after {:.1} s of warm-up. Before measuring, each row must serve every hot file and {} cold files (whole and by two ranges each) byte for byte as the manifest's BLAKE3 hashes say; a row that does not is left out and named below. Disk: `/proc/diskstats` of the data's device over the measured window (queue depth: weighted ms in the queue ÷ elapsed ms; reads and MB read: requests completed and sectors × 512; the disk is the machine's, so other work on it shows too). Server CPU: user + system over the window (scheduler time where the kernel keeps it), per request of either kind. Rows ran interleaved, {} repetition(s); figures are medians; ratios are against `{}`, paired by repetition with their 95% interval (bracketed: the range, fewer than 6 pairs), `*` when significant{}.\n\n{t}\n{notes_md}",
            human(m.data_size),
            m.hot().count(),
            m.cold().count(),
            m.seed,
            self.data.dir.display(),
            self.cpu,
            self.hot_conns,
            self.hot_rate,
            self.cold_conns,
            ctx.o.client_cores,
            self.dur,
            self.warmup,
            sample.len(),
            self.runs,
            self.baseline,
            match &self.aa {
                Some(aa) => format!(
                    " (differing, each at 95%, from the baseline and from the A/A control `{aa}`, a second instance of it)"
                ),
                None => " (no A/A control: --no-aa)".into(),
            },
        );
        println!("\nfiles\n\n{t}\n{notes_md}");
        for v in &verdicts {
            println!("{}", v.line());
        }
        if !verdicts.is_empty() {
            rep.add_verdicts("files", &verdicts, "");
        }
        rep.section_json(
            "files",
            &text,
            serde_json::json!({
                "data": {
                    "dir": self.data.dir,
                    "size": m.data_size,
                    "hot_files": m.hot().count(),
                    "cold_files": m.cold().count(),
                    "cold_bytes": m.cold_bytes(),
                    "seed": m.seed,
                    "reused": self.data.reused,
                    "disk": self.disk.as_ref().map(|d| d.name.clone()).ok(),
                },
                "load": {
                    "hot_rate": self.hot_rate,
                    "hot_conns": self.hot_conns,
                    "cold_conns": self.cold_conns,
                    "duration_s": self.dur,
                    "warmup_s": self.warmup,
                    "runs": self.runs,
                    "baseline": self.baseline,
                    "aa": self.aa,
                },
                "verification": checks,
                "notes": notes,
                "medians": medians,
                "runs": raw,
            }),
        );
        if !failed.is_empty() {
            bail!(
                "{} of {} rows FAILED before measuring (did not start, or did not serve the data byte for byte): {} (see the report)",
                failed.len(),
                checks.len(),
                failed
                    .iter()
                    .map(|c| c.label.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        if raw.is_empty() {
            bail!("every run failed (see the messages above)");
        }
        Ok(())
    }

    /// The byte-exact pass against `row`'s server: the outer error is the fleet's (it ends
    /// the bench), the inner one the row's (it is left out).
    fn verify_row(
        &self,
        ctx: &Ctx,
        row: &Row,
        sample: &[&data::Entry],
    ) -> Result<Result<verify::Verified>> {
        let (Some(r), Some(f)) = (&self.remote, ctx.run.fleet.as_deref()) else {
            return Ok(self.start(ctx, row).and_then(|t| {
                let v = verify::verify(&t.addr, &self.data, sample);
                let stopped = t.stop();
                let v = v?;
                stopped?;
                Ok(v)
            }));
        };
        f.guard(|| {
            let mut s = f.session(&ctx.run.tmp, 600)?;
            self.start_on(&mut s, ctx, row, r)?;
            let port = s
                .target()?
                .rsplit_once(':')
                .map(|(_, p)| p.to_string())
                .context("the server's address has no port")?;
            let v = r.verify(f, &port);
            let stopped = finish(s, row);
            let v = v?;
            stopped?;
            Ok(v.map_err(anyhow::Error::msg))
        })
    }

    /// Start `row`'s server on the fleet's server host, in session `s`.
    fn start_on(
        &self,
        s: &mut crate::fleet::session::Session,
        ctx: &Ctx,
        row: &Row,
        r: &remote::Remote,
    ) -> Result<()> {
        match &row.serve {
            Serve::Ringlab(args) => s.server(&self.ringlab_args(ctx, args)),
            Serve::Nginx { aio } => {
                let site = nginx_site(&self.data.dir, *aio, r.root);
                let template =
                    peers::nginx_conf(Path::new("__DIR__"), self.cpu, "0.0.0.0:__PORT__", &site);
                s.nginx(&template)
            }
        }
    }

    /// ringlab-server's arguments for a row with backend arguments `args`.
    fn ringlab_args(&self, ctx: &Ctx, args: &[String]) -> Vec<String> {
        let mut a = vec!["--cores".to_string(), ctx.o.server_cores.clone()];
        a.extend(args.iter().cloned());
        a.extend(["--proto".into(), "http".into(), "--root".into()]);
        a.push(self.data.dir.display().to_string());
        a
    }

    /// Start `row`'s server.
    fn start(&self, ctx: &Ctx, row: &Row) -> Result<Target> {
        match &row.serve {
            Serve::Ringlab(args) => {
                let a = self.ringlab_args(ctx, args);
                let s = Server::start(&ctx.bins, &a, &ctx.run.tmp, None)?;
                Ok(Target {
                    addr: s.addr.clone(),
                    pids: s.pids.clone(),
                    cmd: format!("{} {}", ctx.bins.server.display(), a.join(" ")),
                    kind: TargetKind::Ringlab(s),
                })
            }
            Serve::Nginx { aio } => {
                let dir = ctx
                    .run
                    .tmp
                    .join(if *aio { "nginx-aio" } else { "nginx-sendfile" });
                std::fs::create_dir_all(dir.join("logs"))?;
                let dir = std::fs::canonicalize(&dir)?;
                let data = std::fs::canonicalize(&self.data.dir)?;
                let site = nginx_site(&data, *aio, rustix::process::geteuid().is_root());
                let (ng, addr, worker) = peers::start_nginx(&dir, self.cpu, &site)?;
                Ok(Target {
                    addr,
                    pids: vec![worker],
                    cmd: format!(
                        "nginx, one worker pinned to CPU {}: {} {} {}",
                        self.cpu,
                        site.main.trim(),
                        site.http.trim(),
                        site.server.trim()
                    ),
                    kind: TargetKind::Nginx(ng),
                })
            }
        }
    }

    /// One measured run of `row` (repetition `rep`).
    fn measure(&self, ctx: &Ctx, row: &Row, rep: usize) -> Result<FilesRun> {
        if let (Some(r), Some(f)) = (&self.remote, ctx.run.fleet.as_deref()) {
            return f.guard(|| self.measure_on(ctx, f, r, row, rep));
        }
        self.data.prepare_cache()?;
        let t = self.start(ctx, row)?;
        let r = self.drive(ctx, &t, row, rep);
        let stopped = t.stop();
        let mut r = r?;
        stopped?;
        r.rep = rep;
        Ok(r)
    }

    /// The two clients against the running `t`, the server and the disk measured over their
    /// measured window.
    fn drive(&self, ctx: &Ctx, t: &Target, row: &Row, rep: usize) -> Result<FilesRun> {
        let tag = format!("{}-{rep}", row.label.replace([' ', '/'], "_"));
        let hot_json = ctx.run.tmp.join(format!("hot-{tag}.json"));
        let cold_json = ctx.run.tmp.join(format!("cold-{tag}.json"));
        let rate = self.hot_rate.to_string();
        let hot_conns = self.hot_conns.to_string();
        let cold_conns = self.cold_conns.to_string();
        let hot_args: Vec<&str> = vec![
            "--paths",
            path_str(&self.hot_paths)?,
            "--conns",
            &hot_conns,
            "--rate",
            &rate,
            "--timeout",
            "5s",
        ];
        let cold_args: Vec<&str> = vec![
            "--paths",
            path_str(&self.cold_paths)?,
            "--conns",
            &cold_conns,
            // A 16 MiB file shared with the other cold fetches of a slow disk.
            "--timeout",
            "30s",
        ];
        let hot = self.client(ctx, &t.addr, &hot_args, &hot_json)?;
        let cold = self.client(ctx, &t.addr, &cold_args, &cold_json)?;
        std::thread::sleep(Duration::from_secs_f64(self.warmup));
        let disk = self.disk.as_ref().ok();
        let d0 = disk.and_then(Disk::sample);
        let t0 = Instant::now();
        let p0 = ProcSample::read_all(&t.pids)?;
        std::thread::sleep(Duration::from_secs_f64(self.dur));
        let p1 = ProcSample::read_all(&t.pids);
        let d1 = disk.and_then(Disk::sample);
        let elapsed_ms = t0.elapsed().as_secs_f64() * 1e3;
        let p = p1?.since(&p0);
        let limit = Duration::from_secs_f64(self.dur + 60.0);
        let client_cmds = vec![hot.cmd.clone(), cold.cmd.clone()];
        let hot_r = hot.finish(limit, &hot_json);
        let cold_r = cold.finish(limit, &cold_json);
        let (hot_r, cold_r) = (hot_r?, cold_r?);
        let requests = (hot_r.requests + cold_r.requests) as f64;
        if hot_r.requests == 0 {
            bail!("no hot request completed: {}", hot_r.messages.join("; "));
        }
        let lat = &hot_r.latency_us;
        Ok(FilesRun {
            label: row.label.clone(),
            rep,
            hot_offered_rps: self.hot_rate,
            hot_rps: hot_r.requests_per_sec,
            hot_p50_us: lat.at(50.0) as f64,
            hot_p99_us: lat.at(99.0) as f64,
            hot_p999_us: lat.at(99.9) as f64,
            hot_errors: hot_r.errors_total as f64,
            hot_behind: hot_r.saturation.behind_schedule,
            cold_rps: cold_r.requests_per_sec,
            cold_mb_s: cold_r.bytes_per_sec / 1e6,
            cold_errors: cold_r.errors_total as f64,
            non_2xx: (hot_r.non_2xx_3xx + cold_r.non_2xx_3xx) as f64,
            data_errors: (hot_r.data_errors + cold_r.data_errors) as f64,
            disk: d0.zip(d1).map(|(a, b)| b.since(&a, elapsed_ms)),
            server_cpu_s: p.cpu_s(),
            server_user_s: p.user_s,
            server_sys_s: p.sys_s,
            cpu_per_req_us: if requests > 0.0 {
                p.cpu_s() * 1e6 / requests
            } else {
                0.0
            },
            client_saturated: hot_r.saturation.cpu_saturated || cold_r.saturation.cpu_saturated,
            server_cmd: t.cmd.clone(),
            client_cmds,
        })
    }

    /// One measured run of `row` (repetition `rep`) on the fleet: the server host's page cache
    /// prepared, its server started there, the hot and the cold clients on every client host
    /// from one start instant, the server's CPU and the disk read on its host.
    fn measure_on(
        &self,
        ctx: &Ctx,
        f: &crate::fleet::Fleet,
        r: &remote::Remote,
        row: &Row,
        rep: usize,
    ) -> Result<FilesRun> {
        r.prepare(f)?;
        let limit = (self.warmup + self.dur + 90.0).ceil() as u64;
        let mut s = f.session(&ctx.run.tmp, limit)?;
        if let Ok(d) = &self.disk {
            s.watch_disk(d.major, d.minor);
        }
        self.start_on(&mut s, ctx, row, r)?;
        let spec = |args: &[&str]| {
            let mut a: Vec<String> = ["--io", &ctx.o.client_io, "--proto", "http"]
                .iter()
                .map(|s| s.to_string())
                .collect();
            a.extend(args.iter().map(|s| s.to_string()));
            crate::run::RunSpec {
                label: row.label.clone(),
                client_args: a,
                client_cores: ctx.o.client_cores.clone(),
                duration_s: self.dur,
                warmup_s: self.warmup,
                ..Default::default()
            }
        };
        let (rate, hc, cc) = (
            self.hot_rate.to_string(),
            self.hot_conns.to_string(),
            self.cold_conns.to_string(),
        );
        let hot = spec(&[
            "--paths",
            HOT_PATHS,
            "--conns",
            &hc,
            "--rate",
            &rate,
            "--timeout",
            "5s",
        ]);
        let cold = spec(&["--paths", COLD_PATHS, "--conns", &cc, "--timeout", "30s"]);
        let got = s.client_groups(&[("hot", &hot), ("cold", &cold)]);
        let stopped = finish(s, row);
        let (groups, w) = got?;
        stopped?;
        let [hot, cold] = &groups[..] else {
            bail!("expected the hot and the cold clients' results");
        };
        let sum = |g: &crate::fleet::session::Group, v: fn(&ClientReport) -> f64| {
            g.reports.iter().map(|(_, r)| v(r)).sum::<f64>()
        };
        let requests = hot.res.requests + cold.res.requests;
        let cpu_s = w.d.cpu_s();
        let disk = match (&self.disk, &w.disk) {
            (Ok(d), Some((a, b))) => d
                .read(a)
                .zip(d.read(b))
                .map(|(x, y)| y.since(&x, w.span_ms)),
            _ => None,
        };
        Ok(FilesRun {
            label: row.label.clone(),
            rep,
            hot_offered_rps: self.hot_rate,
            hot_rps: hot.res.rps,
            hot_p50_us: hot.res.p50_us,
            hot_p99_us: hot.res.p99_us,
            hot_p999_us: hot.res.p999_us,
            hot_errors: hot.res.errors,
            hot_behind: hot
                .reports
                .iter()
                .any(|(_, r)| r.saturation.behind_schedule),
            cold_rps: cold.res.rps,
            cold_mb_s: sum(cold, |r| r.bytes_per_sec) / 1e6,
            cold_errors: cold.res.errors,
            non_2xx: hot.res.non_2xx + cold.res.non_2xx,
            data_errors: hot.res.data_errors + cold.res.data_errors,
            disk,
            server_cpu_s: cpu_s,
            server_user_s: w.d.user_s,
            server_sys_s: w.d.sys_s,
            cpu_per_req_us: if requests > 0.0 {
                cpu_s * 1e6 / requests
            } else {
                0.0
            },
            client_saturated: groups
                .iter()
                .flat_map(|g| &g.reports)
                .any(|(_, r)| r.saturation.cpu_saturated),
            server_cmd: hot.res.server_cmd.clone(),
            client_cmds: hot.res.client_cmd.lines().map(str::to_string).collect(),
        })
    }

    /// Start one ringlab-client against `addr` with `args` (after the common ones).
    fn client(&self, ctx: &Ctx, addr: &str, args: &[&str], json: &Path) -> Result<ClientProc> {
        let dur = format!("{}ms", (self.dur * 1e3) as u64);
        let warm = format!("{}ms", (self.warmup * 1e3) as u64);
        let mut all: Vec<String> = vec![
            addr.to_string(),
            "--cores".into(),
            ctx.o.client_cores.clone(),
            "--io".into(),
            ctx.o.client_io.clone(),
            "--proto".into(),
            "http".into(),
            "--duration".into(),
            dur,
            "--warmup".into(),
            warm,
            "--no-progress".into(),
        ];
        all.extend(args.iter().map(|s| s.to_string()));
        let err = json.with_extension("err");
        let child = Command::new(&ctx.bins.client)
            .args(&all)
            .arg("--json")
            .arg(json)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err)?)
            .spawn()
            .with_context(|| format!("starting {}", ctx.bins.client.display()))?;
        Ok(ClientProc {
            child,
            err,
            cmd: format!("{} {}", ctx.bins.client.display(), all.join(" ")),
        })
    }
}

/// The nginx anchor's site: `location /files/ { alias DATA/; }`, with `sendfile on`, or with
/// `aio threads` on a pool of 4 threads (ringlab's --file-threads default) and 64 KiB buffers
/// (its --file-chunk). Both keep open files as ringlab's loops do (`--file-cache 256`,
/// `--file-cache-valid 1s`): `open_file_cache max=256 inactive=10s` (per worker, as ringlab's
/// is per loop) and `open_file_cache_valid 1s`, so no row pays an open and a stat per request
/// that another is spared.
fn nginx_site(data: &Path, aio: bool, root: bool) -> NginxSite {
    // Started as root, nginx's workers would switch to `nobody`, who may not read the data's
    // directories; stay root then (a bench).
    let user = if root { "user root;\n" } else { "" };
    let (main, mut http) = if aio {
        (
            format!("{user}thread_pool files threads=4 max_queue=65536;"),
            "sendfile off;\n  aio threads=files;\n  output_buffers 2 64k;".to_string(),
        )
    } else {
        (user.to_string(), "sendfile on;\n  aio off;".to_string())
    };
    http.push_str("\n  open_file_cache max=256 inactive=10s;\n  open_file_cache_valid 1s;");
    NginxSite {
        main,
        http,
        server: format!(
            "location /files/ {{ alias {}/; default_type application/octet-stream; }}",
            data.display()
        ),
    }
}

/// Stop a fleet session's server: ringlab-server's statistics read, nginx's not kept.
fn finish(s: crate::fleet::session::Session, row: &Row) -> Result<()> {
    match row.serve {
        Serve::Ringlab(_) => s.finish().map(|_| ()),
        Serve::Nginx { .. } => s.finish_uncounted(),
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}

/// A running ringlab-client, killed (by its PID) if dropped before it finished.
struct ClientProc {
    child: Child,
    err: PathBuf,
    cmd: String,
}

impl ClientProc {
    /// Wait for it (at most `limit`) and read its JSON report.
    fn finish(mut self, limit: Duration, json: &Path) -> Result<ClientReport> {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(st) = self.child.try_wait()? {
                break st;
            }
            if Instant::now() > deadline {
                bail!("ringlab-client did not finish within {limit:?}: killed");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let text = std::fs::read_to_string(json);
        let _ = std::fs::remove_file(json);
        let err = std::fs::read_to_string(&self.err).unwrap_or_default();
        let _ = std::fs::remove_file(&self.err);
        match text {
            Ok(s) => serde_json::from_str(&s).context("parsing ringlab-client's JSON"),
            Err(_) => bail!("ringlab-client wrote no results ({status}): {}", err.trim()),
        }
    }
}

impl Drop for ClientProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

enum TargetKind {
    Ringlab(Server),
    Nginx(Nginx),
}

/// A running row: ringlab-server or nginx.
struct Target {
    addr: String,
    /// The processes measured (nginx: its worker).
    pids: Vec<u32>,
    cmd: String,
    kind: TargetKind,
}

impl Target {
    fn stop(self) -> Result<()> {
        match self.kind {
            TargetKind::Ringlab(s) => s.stop().map(|_| ()),
            TargetKind::Nginx(n) => {
                drop(n);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(b: Option<&[&str]>) -> Result<Vec<String>> {
        let v: Option<Vec<String>> = b.map(|b| b.iter().map(|s| s.to_string()).collect());
        Ok(rows_of(v.as_deref())?
            .into_iter()
            .map(|r| r.label)
            .collect())
    }

    #[test]
    fn rows_are_backends_and_file_io_modes() {
        assert_eq!(
            labels(None).unwrap(),
            ["uring", "epoll blocking", "epoll threads", "epoll sendfile"]
        );
        assert_eq!(
            labels(Some(&[
                "uring",
                "epoll",
                "poll-sendfile",
                "tokio",
                "blocking-8"
            ]))
            .unwrap(),
            [
                "uring",
                "epoll blocking",
                "epoll threads",
                "epoll sendfile",
                "poll sendfile",
                "tokio",
                "blocking-8"
            ]
        );
        let r = rows_of(Some(&["epoll-sendfile".to_string()])).unwrap();
        assert_eq!(
            r[0].serve,
            Serve::Ringlab(
                ["--io", "epoll", "--file-io", "sendfile"]
                    .map(String::from)
                    .to_vec()
            )
        );
        assert_eq!(labels(Some(&["all"])).unwrap().len(), 7);
        let e = labels(Some(&["epoll-mmap"])).unwrap_err().to_string();
        assert!(e.contains("no file-IO mode"), "{e}");
        assert!(labels(Some(&["nosuch"])).is_err());
        assert!(labels(Some(&["uring", "uring"]))
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn nginx_serves_the_data_directory_beneath_files() {
        let s = nginx_site(Path::new("/d/data"), false, true);
        assert!(s.http.contains("sendfile on;"));
        assert!(s.server.contains("location /files/ { alias /d/data/;"));
        assert!(s.main.contains("user root;"));
        let a = nginx_site(Path::new("/d/data"), true, false);
        assert!(!a.main.contains("user root;"));
        assert!(a.main.contains("thread_pool files threads=4"));
        assert!(a.http.contains("aio threads=files;") && a.http.contains("sendfile off;"));
        for site in [&s, &a] {
            assert!(
                site.http.contains("open_file_cache max=256 inactive=10s;")
                    && site.http.contains("open_file_cache_valid 1s;"),
                "{}",
                site.http
            );
        }
        let conf = peers::nginx_conf(Path::new("/t"), 0, "127.0.0.1:8080", &a);
        assert!(conf.contains("listen 127.0.0.1:8080;"), "{conf}");
        assert!(conf.contains("worker_cpu_affinity 1;"), "{conf}");
    }
}
