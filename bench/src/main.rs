//! `ringlab-bench`: the io_uring vs epoll comparison as one command. See `--help`.

mod c10k;
mod doctor;
mod hold;
mod merge;
mod peers;
mod plot;
mod procs;
mod report;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use procs::Bins;
use report::{Machine, Report};
use run::{RunOpts, RunResult, RunSpec};

/// ringlab-bench: runs ringlab-server (pinned to one CPU) and ringlab-client (pinned to another)
/// over a matrix of scenarios, interleaving backends run by run (A B A B ...), and reports
/// medians: throughput, latency percentiles, server CPU per request, syscalls per request,
/// context switches, and each backend's ratio to epoll.
///
/// With no subcommand it runs `compare` (about a minute). Reports go to
/// target/ringlab/<scenario>-<unix time>/ (report.md, results.json, SVG charts).
#[derive(Parser, Debug)]
#[command(name = "ringlab-bench", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// Echo 64 B over 1, 16, 128, 512 connections: every backend side by side (default).
    Compare,
    /// The seed notes' tables: every request held 100 ms; clients 1 → 10,000; blocking pools of
    /// 1, 64 and 128 workers against uring and epoll.
    Seeds,
    /// Open-loop rate sweep at 10% … 90% of the measured maximum: latency percentile curves.
    Latency,
    /// Payload sizes 64 B … 64 KiB.
    Sizes,
    /// Pinned vs unpinned vs client and server sharing a CPU; SO_REUSEPORT vs shared accept.
    Pinning,
    /// HTTP: ringlab-client and (when installed) wrk against each backend, nginx as reference.
    Http,
    /// Ablation: every io_uring technique (and the epoll twin's options) switched off or on
    /// alone, as a ratio against its backend's default, at 64 B and 32 KiB echo.
    Features,
    /// Hold N idle connections (default 1k, 10k, 50k, 100k; --conns sets them) while 64 active
    /// connections run echo; per backend: active throughput and p99, server RSS and kernel
    /// memory per connection, connect time. Checks the descriptor and port limits first and
    /// runs as many server and holder processes as they require.
    C10k,
    /// Every scenario above (c10k excluded: run it on its own).
    All,
    /// Internal (used by c10k): open --count idle connections to ADDR and hold them.
    #[command(hide = true)]
    Hold {
        addr: std::net::SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        #[arg(long)]
        cpu: Option<usize>,
        #[arg(long)]
        best_effort: bool,
    },
    /// What this machine allows (kernel, io_uring, limits, CPUs) and what will hold a
    /// benchmark back.
    Doctor,
    /// Merge HdrHistogram interval logs from several clients and print combined percentiles.
    Merge {
        /// Interval log files (ringlab-client --hist-log).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Args, Debug, Clone)]
struct Opts {
    /// Shorten every scenario (one repetition, short runs): a smoke run.
    #[arg(long, global = true)]
    quick: bool,
    /// Backends to compare: a comma list of uring, epoll, tokio-uring, tokio, blocking, or `all`.
    #[arg(long, global = true, value_delimiter = ',')]
    backends: Option<Vec<String>>,
    /// Connection counts (comma list) instead of the scenario's.
    #[arg(long, global = true, value_delimiter = ',')]
    conns: Option<Vec<u32>>,
    /// Measured seconds per run instead of the scenario's.
    #[arg(long, global = true)]
    duration: Option<f64>,
    /// Repetitions of every run (medians are reported).
    #[arg(long, global = true)]
    reps: Option<usize>,
    /// CPU list for the server.
    #[arg(long, global = true, default_value = "0")]
    server_cores: String,
    /// CPU list for the client.
    #[arg(long, global = true, default_value = "1")]
    client_cores: String,
    /// The client's own IO (the same for every backend measured).
    #[arg(long, global = true, default_value = "epoll")]
    client_io: String,
    /// Client processes per run (ringlab-client --processes): the connections and the client
    /// CPU list are shared out, the results merged exactly (histograms added).
    #[arg(long, global = true, default_value_t = 1)]
    client_processes: usize,
    /// Report directory (default target/ringlab/<scenario>-<time>).
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Also count the server's syscalls with perf (raw_syscalls:sys_enter). Tracing slows every
    /// syscall, so this taxes the syscall-heavy backends more: use it for counts, not speed.
    #[arg(long, global = true)]
    perf: bool,
    /// Where ringlab-server and ringlab-client are (default: next to this executable).
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    /// Run the server in network namespace ringlab-srv (10.77.0.1) and the client in
    /// ringlab-cli, joined by a veth pair: traffic crosses a link (with its own queues, GRO and
    /// any loss or rate set there) instead of loopback. Make them with `sudo scripts/netns.sh up`
    /// first (root needed); the wrk and nginx rows are skipped.
    #[arg(long, global = true)]
    netns: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ringlab-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main(cli: Cli) -> Result<()> {
    let cmd = cli.cmd.clone().unwrap_or(Cmd::Compare);
    if let Cmd::Merge { files } = &cmd {
        return merge::merge(files);
    }
    if let Cmd::Hold {
        addr,
        count,
        bind,
        cpu,
        best_effort,
    } = &cmd
    {
        return hold::hold(&hold::HoldArgs {
            addr: *addr,
            conns: *count,
            bind: hold::parse_bind(bind)?,
            cpu: *cpu,
            best_effort: *best_effort,
        });
    }
    if let Cmd::Doctor = &cmd {
        print!("{}", doctor::doctor());
        return Ok(());
    }
    let bins = Bins::find(cli.opts.bin_dir.as_deref())?;
    let name = match &cmd {
        Cmd::Compare => "compare",
        Cmd::Seeds => "seeds",
        Cmd::Latency => "latency",
        Cmd::Sizes => "sizes",
        Cmd::Pinning => "pinning",
        Cmd::Http => "http",
        Cmd::Features => "features",
        Cmd::C10k => "c10k",
        Cmd::All => "all",
        Cmd::Merge { .. } | Cmd::Doctor | Cmd::Hold { .. } => unreachable!("handled above"),
    };
    let out = match &cli.opts.out {
        Some(o) => o.clone(),
        None => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            default_target_dir().join(format!("{name}-{t}"))
        }
    };
    let mut machine = Machine::read(&cli.opts.server_cores, &cli.opts.client_cores);
    let argv: Vec<String> = std::env::args().collect();
    let mut rep = Report::new(&out, &machine, &argv.join(" "))?;
    let netns = if cli.opts.netns {
        Some(run::Netns::check()?)
    } else {
        None
    };
    if let Some(n) = &netns {
        machine.link = format!(
            "a veth pair between network namespaces {} and {}",
            n.server_ns, n.client_ns
        );
    }
    let opts = RunOpts {
        perf: cli.opts.perf,
        tmp: run::tmpdir(&out)?,
        netns,
    };
    let b = Bench {
        bins,
        o: cli.opts.clone(),
        run: opts,
    };
    println!("ringlab-bench {name}: {}", machine.line());
    let scenarios: Vec<&str> = if name == "all" {
        vec![
            "compare", "seeds", "latency", "sizes", "pinning", "http", "features",
        ]
    } else {
        vec![name]
    };
    for s in scenarios {
        let r = match s {
            "compare" => b.compare(&mut rep),
            "seeds" => b.seeds(&mut rep),
            "latency" => b.latency(&mut rep),
            "sizes" => b.sizes(&mut rep),
            "pinning" => b.pinning(&mut rep),
            "features" => b.features(&mut rep),
            "c10k" => b.c10k(&mut rep),
            _ => b.http(&mut rep),
        };
        rep.write()?;
        r.with_context(|| format!("scenario {s}"))?;
    }
    let _ = std::fs::remove_dir_all(&b.run.tmp);
    rep.write()?;
    println!("\nreport: {}", out.join("report.md").display());
    Ok(())
}

/// `target/ringlab` of the workspace this binary was built in, or of the current directory.
fn default_target_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        // .../target/<profile>/ringlab-bench
        if let Some(target) = exe.parent().and_then(|p| p.parent()) {
            if target.file_name().is_some_and(|n| n == "target") {
                return target.join("ringlab");
            }
        }
    }
    PathBuf::from("target/ringlab")
}

/// The ablation rows: backend, variant name (empty: the default), extra server arguments.
const FEATURE_ROWS: &[(&str, &str, &[&str])] = &[
    ("uring", "", &[]),
    ("uring", "fixed-files", &["--fixed-files"]),
    ("uring", "no-register-ring-fd", &["--no-register-ring-fd"]),
    ("uring", "coop-taskrun", &["--no-defer-taskrun"]),
    ("uring", "sqpoll", &["--sqpoll"]),
    ("uring", "send-zc>=4KiB", &["--send-zc", "4096"]),
    ("uring", "recv-bundle", &["--recv-bundle"]),
    (
        "uring",
        "buf-incremental",
        &[
            "--buf-incremental",
            "--buf-size",
            "65536",
            "--buf-count",
            "256",
        ],
    ),
    ("uring", "no-multishot-recv", &["--no-multishot-recv"]),
    ("uring", "napi-busy-poll", &["--napi-busy-poll", "50us"]),
    (
        "uring",
        "small-rings",
        &["--sq-entries", "64", "--cq-entries", "128"],
    ),
    (
        "uring",
        "small-bufs",
        &["--buf-count", "64", "--buf-size", "4096"],
    ),
    ("epoll", "", &[]),
    ("epoll", "level-triggered", &["--level-triggered"]),
    ("epoll", "busy-poll", &["--busy-poll", "50us"]),
    ("epoll", "small-read-buf", &["--read-buf", "4096"]),
];

/// One line per (payload, row): its figures and its ratios to its backend's default.
fn feature_table(rows: &[RunResult]) -> String {
    use std::fmt::Write as _;
    let mut t = String::from("| payload | row | req/s | ×default | server CPU µs/req | ×default | syscalls/req | ×default | p99 µs | ×default | note |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "–".into()
        }
    };
    for r in rows {
        let backend = r.label.split_whitespace().next().unwrap_or("");
        let Some(base) = rows.iter().find(|d| d.label == backend && d.x == r.x) else {
            continue;
        };
        let sys = |x: &RunResult| x.syscalls_per_req.unwrap_or(0.0);
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {} | {:.2} | {} | {:.3} | {} | {:.0} | {} | {} |",
            r.x,
            r.label,
            r.rps,
            ratio(r.rps, base.rps),
            r.cpu_per_req_us,
            ratio(r.cpu_per_req_us, base.cpu_per_req_us),
            sys(r),
            ratio(sys(r), sys(base)),
            r.p99_us,
            ratio(r.p99_us, base.p99_us),
            if r.client_saturated {
                "client saturated"
            } else {
                ""
            }
        );
    }
    t
}

pub(crate) struct Bench {
    bins: Bins,
    o: Opts,
    run: RunOpts,
}

/// A backend row: label, the server arguments that make it.
pub(crate) fn backend_args(label: &str) -> Result<Vec<String>> {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    Ok(match label {
        "uring" | "epoll" | "tokio-uring" | "tokio" => v(&["--io", label]),
        "blocking" => v(&["--io", "blocking", "--workers", "64"]),
        l if l.starts_with("blocking-") => {
            let w: usize = l["blocking-".len()..]
                .parse()
                .with_context(|| format!("bad backend {l:?}"))?;
            vec![
                "--io".into(),
                "blocking".into(),
                "--workers".into(),
                w.to_string(),
            ]
        }
        other => bail!(
            "unknown backend {other:?} (uring, epoll, tokio-uring, tokio, blocking, blocking-N)"
        ),
    })
}

impl Bench {
    fn backends(&self, default: &[&str]) -> Vec<String> {
        match &self.o.backends {
            Some(b) if b.iter().any(|x| x == "all") => {
                ["uring", "epoll", "tokio-uring", "tokio", "blocking"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            }
            Some(b) => b.clone(),
            None => default.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn reps(&self, normal: usize) -> usize {
        self.o
            .reps
            .unwrap_or(if self.o.quick { 1 } else { normal })
            .max(1)
    }

    fn duration(&self, normal: f64) -> f64 {
        self.o
            .duration
            .unwrap_or(if self.o.quick { 0.5 } else { normal })
    }

    fn warmup(&self) -> f64 {
        if self.o.quick {
            0.2
        } else {
            0.5
        }
    }

    fn spec(
        &self,
        label: &str,
        x: f64,
        server: Vec<String>,
        client: Vec<String>,
        dur: f64,
    ) -> RunSpec {
        let mut client_args = vec!["--io".to_string(), self.o.client_io.clone()];
        if self.o.client_processes > 1 {
            client_args.extend([
                "--processes".to_string(),
                self.o.client_processes.to_string(),
            ]);
            if self.run.netns.is_some() {
                // One source address per client process on the client side of the link.
                client_args.extend(["--bind".to_string(), "10.77.0.10-10.77.0.17".to_string()]);
            }
        }
        client_args.extend(client);
        let mut server_args = vec!["--cores".to_string(), self.o.server_cores.clone()];
        server_args.extend(server);
        RunSpec {
            label: label.into(),
            x,
            server_args,
            client_args,
            client_cores: self.o.client_cores.clone(),
            duration_s: dur,
            warmup_s: self.warmup(),
        }
    }

    fn go(&self, specs: &[RunSpec], reps: usize) -> Result<(Vec<RunResult>, Vec<RunResult>)> {
        let (m, raw) = run::run_interleaved(&self.bins, specs, reps, &self.run, &mut |s| {
            eprintln!("  {s}")
        })?;
        if m.is_empty() {
            bail!("every run failed (see the messages above)");
        }
        Ok((m, raw))
    }

    fn echo_sweep(
        &self,
        rep: &mut Report,
        title: &str,
        blurb: &str,
        conns: &[u32],
        size: usize,
        backends: &[String],
    ) -> Result<Vec<RunResult>> {
        let dur = self.duration(2.0);
        let mut specs = Vec::new();
        for &c in conns {
            for b in backends {
                specs.push(self.spec(
                    b,
                    c as f64,
                    [backend_args(b)?, vec!["--proto".into(), "echo".into()]].concat(),
                    vec![
                        "--proto".into(),
                        "echo".into(),
                        "--size".into(),
                        size.to_string(),
                        "--conns".into(),
                        c.to_string(),
                    ],
                    dur,
                ));
            }
        }
        let (m, raw) = self.go(&specs, self.reps(3))?;
        let table = report::table(&m, "conns", "epoll");
        println!("\n{title}\n\n{table}");
        let mut text = format!("{blurb}\n\n{table}");
        if m.iter().any(|r| r.client_saturated) {
            text += "\n*client saturated*: the client, not the server, was the bottleneck on that row; the server's figures there are a lower bound.\n";
        }
        let slug = title
            .split_whitespace()
            .next()
            .unwrap_or("x")
            .to_lowercase();
        for (file, t, yd, f) in [
            (
                format!("{slug}-throughput.svg"),
                "throughput vs connections",
                "requests/s",
                (|r: &RunResult| r.rps) as fn(&RunResult) -> f64,
            ),
            (
                format!("{slug}-p99.svg"),
                "p99 latency vs connections",
                "p99 µs",
                |r: &RunResult| r.p99_us,
            ),
            (
                format!("{slug}-cpu.svg"),
                "server CPU per request",
                "µs CPU / request",
                |r: &RunResult| r.cpu_per_req_us,
            ),
        ] {
            plot::lines(&rep.dir.join(&file), t, "connections", yd, &m, f)?;
            text += &format!("\n![{t}]({file})\n");
        }
        rep.section(title, &text, &m, &raw);
        Ok(m)
    }

    fn compare(&self, rep: &mut Report) -> Result<()> {
        let conns = self.o.conns.clone().unwrap_or(vec![1, 16, 128, 512]);
        let backends = self.backends(&["uring", "epoll"]);
        self.echo_sweep(
            rep,
            "compare: echo 64 B",
            "Closed loop, one request in flight per connection, echo of 64-byte messages.",
            &conns,
            64,
            &backends,
        )?;
        Ok(())
    }

    fn sizes(&self, rep: &mut Report) -> Result<()> {
        let conns = self
            .o
            .conns
            .as_ref()
            .and_then(|c| c.first().copied())
            .unwrap_or(64);
        let backends = self.backends(&["uring", "epoll"]);
        let sizes: &[usize] = if self.o.quick {
            &[64, 4096, 65536]
        } else {
            &[64, 512, 4096, 16384, 65536]
        };
        let dur = self.duration(2.0);
        let mut specs = Vec::new();
        for &s in sizes {
            for b in &backends {
                specs.push(self.spec(
                    b,
                    s as f64,
                    [backend_args(b)?, vec!["--proto".into(), "echo".into()]].concat(),
                    vec![
                        "--proto".into(),
                        "echo".into(),
                        "--size".into(),
                        s.to_string(),
                        "--conns".into(),
                        conns.to_string(),
                    ],
                    dur,
                ));
            }
        }
        let (m, raw) = self.go(&specs, self.reps(3))?;
        let table = report::table(&m, "bytes", "epoll");
        println!("\nsizes: echo, {conns} connections\n\n{table}");
        plot::lines(
            &rep.dir.join("sizes-throughput.svg"),
            "throughput vs payload",
            "payload bytes",
            "requests/s",
            &m,
            |r| r.rps,
        )?;
        plot::lines(
            &rep.dir.join("sizes-bandwidth.svg"),
            "echo bandwidth vs payload",
            "payload bytes",
            "MB/s each way",
            &m,
            |r| r.rps * r.x / 1e6,
        )?;
        rep.section(
            "sizes",
            &format!("Echo with payloads from 64 B to 64 KiB, {conns} connections.\n\n{table}\n![throughput](sizes-throughput.svg)\n![bandwidth](sizes-bandwidth.svg)\n"),
            &m,
            &raw,
        );
        Ok(())
    }

    fn seeds(&self, rep: &mut Report) -> Result<()> {
        let q = self.o.quick;
        let async_clients: Vec<u32> = if q {
            vec![1, 8, 64, 512]
        } else {
            vec![
                1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 5000, 10000,
            ]
        };
        let mut rows: Vec<(String, Vec<u32>)> = Vec::new();
        let default = [
            "blocking-1",
            "blocking-64",
            "blocking-128",
            "uring",
            "epoll",
        ];
        for b in self.backends(&default) {
            let clients = match b.as_str() {
                "blocking-1" => {
                    if q {
                        vec![1, 4, 8]
                    } else {
                        vec![1, 2, 4, 8, 16, 32]
                    }
                }
                l if l.starts_with("blocking") => async_clients
                    .iter()
                    .copied()
                    .filter(|&c| c <= 512)
                    .collect(),
                _ => async_clients.clone(),
            };
            rows.push((b, clients));
        }
        let dur = self.duration(5.0);
        let mut specs = Vec::new();
        let max_len = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
        for i in 0..max_len {
            for (b, clients) in &rows {
                if let Some(&c) = clients.get(i) {
                    let mut s = self.spec(
                        b,
                        c as f64,
                        [backend_args(b)?, vec!["--proto".into(), "http".into()]].concat(),
                        [
                            "--proto",
                            "http",
                            "--path",
                            "/delay/100",
                            "--header",
                            "Connection: close",
                            "--conns",
                            &c.to_string(),
                            "--connect-rate",
                            "200000",
                            "--timeout",
                            "60s",
                        ]
                        .iter()
                        .map(|a| a.to_string())
                        .collect(),
                        dur,
                    );
                    s.warmup_s = if q { 0.5 } else { 1.5 };
                    specs.push(s);
                }
            }
        }
        let (m, raw) = self.go(&specs, self.reps(1))?;
        let lines = report::seeds_lines(&m);
        println!("\nseeds: every request held 100 ms (GET /delay/100), a new connection per request, one request in flight per client\n\n{lines}");
        plot::lines(
            &rep.dir.join("seeds-qps.svg"),
            "seed 000: QPS vs clients (each request held 100 ms)",
            "clients",
            "QPS",
            &m,
            |r| r.rps,
        )?;
        plot::lines(
            &rep.dir.join("seeds-latency.svg"),
            "seed 000: mean latency vs clients",
            "clients",
            "mean latency s",
            &m,
            |r| r.mean_us / 1e6,
        )?;
        rep.section(
            "seeds",
            &format!(
                "Seed 000's experiment: every request held 100 ms by the server (`GET /delay/100`), each client doing one request at a time on a new connection (`Connection: close`), as the seed's clients made independent requests. A blocking worker serves one connection at a time, so requests beyond the pool wait in its queue. The seed's shape, per backend:\n\n```\n{lines}```\n\n![QPS](seeds-qps.svg)\n![latency](seeds-latency.svg)\n"
            ),
            &m,
            &raw,
        );
        Ok(())
    }

    fn latency(&self, rep: &mut Report) -> Result<()> {
        let conns = self
            .o
            .conns
            .as_ref()
            .and_then(|c| c.first().copied())
            .unwrap_or(64);
        let backends = self.backends(&["uring", "epoll"]);
        let dur = self.duration(3.0);
        // 1. The maximum each backend reaches, closed loop.
        let mut specs = Vec::new();
        for b in &backends {
            specs.push(self.spec(
                b,
                0.0,
                [backend_args(b)?, vec!["--proto".into(), "echo".into()]].concat(),
                vec![
                    "--proto".into(),
                    "echo".into(),
                    "--conns".into(),
                    conns.to_string(),
                ],
                self.duration(2.0),
            ));
        }
        let (maxes, _) = self.go(&specs, 1)?;
        let max = maxes.iter().map(|r| r.rps).fold(f64::INFINITY, f64::min);
        if !max.is_finite() || max <= 0.0 {
            bail!("could not measure a maximum rate");
        }
        // 2. Open loop at fractions of the slowest backend's maximum, so every backend gets the
        //    same offered load.
        let fracs: &[f64] = if self.o.quick {
            &[0.5, 0.9]
        } else {
            &[0.1, 0.3, 0.5, 0.7, 0.8, 0.9]
        };
        let mut specs = Vec::new();
        for &f in fracs {
            let rate = (max * f).round();
            for b in &backends {
                specs.push(self.spec(
                    b,
                    (f * 100.0).round(),
                    [backend_args(b)?, vec!["--proto".into(), "echo".into()]].concat(),
                    vec![
                        "--proto".into(),
                        "echo".into(),
                        "--conns".into(),
                        conns.to_string(),
                        "--rate".into(),
                        rate.to_string(),
                    ],
                    dur,
                ));
            }
        }
        let (m, raw) = self.go(&specs, self.reps(3))?;
        let table = report::table(&m, "% of max", "epoll");
        println!(
            "\nlatency: open loop, {conns} connections, rates as % of {max:.0} req/s\n\n{table}"
        );
        plot::lines(
            &rep.dir.join("latency-p99.svg"),
            "p99 latency vs offered load",
            "% of max rate",
            "p99 µs (CO-corrected)",
            &m,
            |r| r.p99_us,
        )?;
        let hi: Vec<RunResult> = m
            .iter()
            .filter(|r| r.x == (fracs[fracs.len() - 1] * 100.0).round() || r.x == 50.0)
            .cloned()
            .collect();
        plot::percentile_curves(
            &rep.dir.join("latency-percentiles.svg"),
            "latency percentiles (open loop)",
            &hi,
        )?;
        rep.section(
            "latency",
            &format!(
                "Open loop (`--rate`), {conns} connections, latency from the intended send time (coordinated omission corrected). Rates are fractions of the slowest backend's closed-loop maximum ({max:.0} req/s), so every backend gets the same offered load.\n\n{table}\n![p99](latency-p99.svg)\n![percentiles](latency-percentiles.svg)\n"
            ),
            &m,
            &raw,
        );
        Ok(())
    }

    fn pinning(&self, rep: &mut Report) -> Result<()> {
        let conns = self
            .o
            .conns
            .as_ref()
            .and_then(|c| c.first().copied())
            .unwrap_or(64);
        let backends = self.backends(&["uring", "epoll"]);
        let dur = self.duration(2.0);
        let (s, c) = (self.o.server_cores.clone(), self.o.client_cores.clone());
        let all = format!("{s},{c}");
        let variants: Vec<(&str, Vec<String>, Vec<String>)> = vec![
            ("pinned", vec![], vec![]),
            ("unpinned", vec!["--no-pin".into()], vec!["--no-pin".into()]),
            ("same-cpu", vec![], vec!["--cores".into(), s.clone()]),
            (
                "reuseport-2",
                vec![
                    "--cores".into(),
                    all.clone(),
                    "--accept".into(),
                    "reuseport".into(),
                ],
                vec![],
            ),
            (
                "shared-accept-2",
                vec![
                    "--cores".into(),
                    all.clone(),
                    "--accept".into(),
                    "shared".into(),
                ],
                vec![],
            ),
        ];
        let mut specs = Vec::new();
        for (vi, (v, sx, cx)) in variants.iter().enumerate() {
            for b in &backends {
                let mut sp = self.spec(
                    &format!("{b} {v}"),
                    vi as f64,
                    [
                        backend_args(b)?,
                        vec!["--proto".into(), "echo".into()],
                        sx.clone(),
                    ]
                    .concat(),
                    [
                        vec![
                            "--proto".into(),
                            "echo".into(),
                            "--conns".into(),
                            conns.to_string(),
                        ],
                        cx.clone(),
                    ]
                    .concat(),
                    dur,
                );
                // A variant's --cores replaces the default one (clap takes each flag once).
                if let Some(i) = sp.client_args.iter().position(|a| a == "--cores") {
                    sp.client_cores = sp.client_args[i + 1].clone();
                    sp.client_args.drain(i..i + 2);
                }
                let positions: Vec<usize> = sp
                    .server_args
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| *a == "--cores")
                    .map(|(i, _)| i)
                    .collect();
                if let [first, .., last] = positions[..] {
                    sp.server_args[first + 1] = sp.server_args[last + 1].clone();
                    sp.server_args.drain(last..last + 2);
                }
                specs.push(sp);
            }
        }
        let (m, raw) = self.go(&specs, self.reps(3))?;
        let mut t = String::from("| variant | req/s | p99 µs | server CPU µs/req | ctx switches/req | note |\n|---|---:|---:|---:|---:|---|\n");
        for r in &m {
            t += &format!(
                "| {} | {:.0} | {:.1} | {:.2} | {:.3} | {} |\n",
                r.label,
                r.rps,
                r.p99_us,
                r.cpu_per_req_us,
                r.ctx_switches_per_req,
                if r.client_saturated {
                    "client saturated"
                } else {
                    ""
                }
            );
        }
        println!("\npinning: echo 64 B, {conns} connections\n\n{t}");
        rep.section(
            "pinning",
            &format!("Echo 64 B, {conns} connections. `pinned`: server on CPU {s}, client on CPU {c}; `unpinned`: the same threads, no affinity; `same-cpu`: client and server share CPU {s}; `reuseport-2` / `shared-accept-2`: two server loops (CPUs {all}) with a listener each or one shared listener, the client still on CPU {c}.\n\n{t}"),
            &m,
            &raw,
        );
        Ok(())
    }

    fn features(&self, rep: &mut Report) -> Result<()> {
        let conns = self
            .o
            .conns
            .as_ref()
            .and_then(|c| c.first().copied())
            .unwrap_or(64);
        let sizes: Vec<usize> = vec![64, 32 * 1024];
        let dur = self.duration(2.0);
        let mut specs = Vec::new();
        for &size in &sizes {
            for (backend, variant, extra) in FEATURE_ROWS {
                if self
                    .o
                    .backends
                    .as_ref()
                    .is_some_and(|b| !b.iter().any(|x| x == backend || x == "all"))
                {
                    continue;
                }
                let label = if variant.is_empty() {
                    backend.to_string()
                } else {
                    format!("{backend} {variant}")
                };
                let server = [
                    backend_args(backend)?,
                    vec!["--proto".into(), "echo".into()],
                    extra.iter().map(|a| a.to_string()).collect(),
                ]
                .concat();
                specs.push(self.spec(
                    &label,
                    size as f64,
                    server,
                    vec![
                        "--proto".into(),
                        "echo".into(),
                        "--size".into(),
                        size.to_string(),
                        "--conns".into(),
                        conns.to_string(),
                    ],
                    dur,
                ));
            }
        }
        if specs.is_empty() {
            bail!("features: no rows for --backends (it measures uring and epoll)");
        }
        let (m, raw) = self.go(&specs, self.reps(3))?;
        let table = feature_table(&m);
        println!("\nfeatures: echo, {conns} connections, each row against its backend's default in the same run\n\n{table}");
        rep.section(
            "features",
            &format!("Ablation: each row changes one thing against its backend's default (`uring`, `epoll`), measured interleaved in the same run; ratios are row ÷ default (for req/s higher is better, for the others lower is better). Echo, {conns} connections, payloads 64 B and 32 KiB. Where the client saturates, req/s is the client's limit and the server's CPU and syscalls per request are the figures that tell.\n\n{table}"),
            &m,
            &raw,
        );
        Ok(())
    }

    fn http(&self, rep: &mut Report) -> Result<()> {
        let conns = self.o.conns.clone().unwrap_or(if self.o.quick {
            vec![64]
        } else {
            vec![64, 256]
        });
        let backends = self.backends(&["uring", "epoll"]);
        let dur = self.duration(3.0);
        let mut specs = Vec::new();
        for &c in &conns {
            for b in &backends {
                specs.push(self.spec(
                    b,
                    c as f64,
                    [backend_args(b)?, vec!["--proto".into(), "http".into()]].concat(),
                    vec![
                        "--proto".into(),
                        "http".into(),
                        "--conns".into(),
                        c.to_string(),
                    ],
                    dur,
                ));
            }
        }
        let (mut m, mut raw) = self.go(&specs, self.reps(3))?;
        let mut notes = String::new();
        match peers::wrk_rows(
            &self.bins,
            &backends,
            &conns,
            dur,
            self.reps(3),
            &self.o.server_cores,
            &self.o.client_cores,
            &self.run,
        ) {
            Ok((wm, wraw)) => {
                m.extend(wm);
                raw.extend(wraw);
            }
            Err(e) => notes += &format!("\n- wrk rows skipped: {e:#}\n"),
        }
        match peers::nginx_rows(
            &self.bins,
            &conns,
            dur,
            self.reps(3),
            &self.o.server_cores,
            &self.o.client_cores,
            &self.o.client_io,
            &self.run,
        ) {
            Ok((nm, nraw)) => {
                m.extend(nm);
                raw.extend(nraw);
            }
            Err(e) => notes += &format!("\n- nginx reference row skipped: {e:#}\n"),
        }
        let table = report::table(&m, "conns", "epoll");
        println!("\nhttp: GET / (Hello, World!), keep-alive\n\n{table}{notes}");
        rep.section(
            "http",
            &format!("HTTP/1.1 `GET /` → `Hello, World!`, keep-alive, one request in flight per connection. Rows `X (wrk)` are wrk -t1 against backend X (its CPU per request measured the same way); `nginx` is nginx with one pinned worker serving the same response, driven by ringlab-client.\n\n{table}{notes}"),
            &m,
            &raw,
        );
        Ok(())
    }
}
