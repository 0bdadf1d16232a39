//! `ringlab-bench c10k`: many idle connections held while a few active ones run, per backend.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::ctx::{backend_args, Ctx, Scenario};
use crate::procs::{open_fds, rss_kib, Server};
use crate::report::Report;
use crate::run::{drive, RunResult};

/// Active connections running echo beside the idle ones.
const ACTIVE: usize = 64;
/// Echo, a full listen backlog, and no connection limit or idle timeout that would close the
/// idle connections this scenario holds on purpose.
pub(super) const SERVER_ARGS: [&str; 8] = [
    "--proto",
    "echo",
    "--backlog",
    "4096",
    "--max-conns",
    "10000000",
    "--idle-timeout",
    "24h",
];
/// Descriptors a process keeps for itself (listeners, eventfds, rings, stdio, epoll).
const HEADROOM: u64 = 256;

/// The limits that decide how many processes a count of connections needs.
#[derive(Debug, Clone)]
pub struct Limits {
    pub nofile_soft: u64,
    pub nofile_hard: u64,
    pub nr_open: u64,
    /// Ephemeral ports per (source address, destination).
    pub ports: u64,
}

impl Limits {
    /// Read them, raising this process's soft descriptor limit to the hard one (children
    /// inherit it).
    pub fn read_and_raise() -> Limits {
        let l = getrlimit(Resource::Nofile);
        let hard = l.maximum.unwrap_or(1 << 20);
        if l.current.unwrap_or(0) < hard {
            let _ = setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(hard),
                    maximum: l.maximum,
                },
            );
        }
        let soft = getrlimit(Resource::Nofile).current.unwrap_or(hard);
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let nr_open = read("/proc/sys/fs/nr_open").trim().parse().unwrap_or(0);
        let range: Vec<u64> = read("/proc/sys/net/ipv4/ip_local_port_range")
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        let ports = match range[..] {
            [lo, hi] if hi >= lo => hi - lo + 1,
            _ => 28232,
        };
        Limits {
            nofile_soft: soft,
            nofile_hard: hard,
            nr_open,
            ports,
        }
    }

    /// Connections one process may hold.
    pub fn per_process(&self) -> u64 {
        self.nofile_soft.saturating_sub(HEADROOM).max(1)
    }

    /// Connections one holder process opens: its descriptors, and 90% of one source
    /// address's ports (each holder has its own address).
    pub fn per_holder(&self) -> u64 {
        self.per_process().min(self.ports * 9 / 10).max(1)
    }
}

/// Processes needed for `n` connections at `per` each.
pub fn processes_for(n: u64, per: u64) -> u64 {
    n.div_ceil(per.max(1)).max(1)
}

fn kib_field(file: &str, key: &str) -> u64 {
    std::fs::read_to_string(file)
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix(key)
                    .and_then(|v| v.split_whitespace().next().and_then(|n| n.parse().ok()))
            })
        })
        .unwrap_or(0)
}

/// Kernel memory that grows with sockets: slab (socket structs, inodes, files) in KiB, and TCP
/// buffer memory from /proc/net/sockstat in KiB.
fn kernel_mem() -> (u64, u64) {
    let slab = kib_field("/proc/meminfo", "Slab:");
    let pages = std::fs::read_to_string("/proc/net/sockstat")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("TCP:")).and_then(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.iter()
                    .position(|x| *x == "mem")
                    .and_then(|i| w.get(i + 1))
                    .and_then(|v| v.parse::<u64>().ok())
            })
        })
        .unwrap_or(0);
    (slab, pages * rustix::param::page_size() as u64 / 1024)
}

pub(super) struct Holder {
    child: Child,
    line: String,
}

pub(super) fn start_holders(
    addr: &str,
    n: u64,
    per: u64,
    cpu: Option<usize>,
    best_effort: bool,
) -> Result<(Vec<Holder>, Vec<Child>)> {
    let exe = std::env::current_exe().context("locating ringlab-bench")?;
    let count = processes_for(n, per);
    // Fresh source addresses for every group of holders, so that the TIME_WAIT sockets a
    // previous group left on its ports do not collide with this one's.
    static GROUP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let group = 10 + GROUP.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 200;
    let mut started = Vec::new();
    let mut left = n;
    for i in 0..count {
        let take = left.min(per);
        left -= take;
        // Eight source addresses per holder (127.G.I.1-8): connect's port search stays short
        // when no address has most of its ports in use.
        let src = format!("127.{group}.{}.1-127.{group}.{}.8", i + 1, i + 1);
        let mut c = Command::new(&exe);
        c.args(["hold", addr, "--count", &take.to_string(), "--bind", &src]);
        if let Some(cpu) = cpu {
            c.args(["--cpu", &cpu.to_string()]);
        }
        if best_effort {
            c.arg("--best-effort");
        }
        let child = c
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting a holder")?;
        started.push(child);
    }
    // Wait for every "held" line, bounded by the count.
    let timeout = Duration::from_secs(60 + n / 1000);
    let mut holders = Vec::new();
    let mut failed = Vec::new();
    for mut child in started {
        let out = child.stdout.take().context("holder stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(timeout) {
            Ok(line) if line.starts_with("held ") => holders.push(Holder { child, line }),
            _ => failed.push(child),
        }
    }
    Ok((holders, failed))
}

pub(super) fn stop_holders(holders: Vec<Holder>, failed: Vec<Child>) -> Vec<String> {
    let mut errors = Vec::new();
    let mut all: Vec<Child> = holders.into_iter().map(|h| h.child).collect();
    let nfailed = failed.len();
    all.extend(failed);
    for c in &mut all {
        drop(c.stdin.take()); // closing stdin tells a holder to stop
        if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    let n = all.len();
    for (i, c) in all.into_iter().enumerate() {
        match c.wait_with_output() {
            Ok(o) if i >= n - nfailed || !o.status.success() => {
                errors.push(String::from_utf8_lossy(&o.stderr).trim().to_string())
            }
            Ok(_) => {}
            Err(e) => errors.push(e.to_string()),
        }
    }
    errors
}

fn field(line: &str, key: &str) -> f64 {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// One c10k row.
#[derive(Debug, Clone)]
struct Row {
    label: String,
    idle: u64,
    server_procs: u64,
    holders: u64,
    run: Option<RunResult>,
    rss_kib_per_conn: f64,
    slab_kib_per_conn: f64,
    tcp_kib_per_conn: f64,
    connect_s: f64,
    connect_p99_us: f64,
    /// Descriptors the server processes held with every connection open.
    server_fds: u64,
    note: String,
}

/// `ringlab-bench c10k`.
pub struct C10k;

impl Scenario for C10k {
    fn name(&self) -> &'static str {
        "c10k"
    }

    fn run(&self, ctx: &Ctx, rep: &mut Report) -> Result<()> {
        let lim = Limits::read_and_raise();
        let idle: Vec<u64> = match &ctx.o.conns {
            Some(c) => c.iter().map(|&x| u64::from(x)).collect(),
            None if ctx.o.quick => vec![1000, 10000],
            None => vec![1000, 10000, 50000, 100000],
        };
        let per = lim.per_process();
        let per_holder = lim.per_holder();
        let mut pre = format!(
            "limits: ulimit -n soft {} hard {}, fs.nr_open {}, {} ephemeral ports per source address\n",
            lim.nofile_soft, lim.nofile_hard, lim.nr_open, lim.ports
        );
        for &n in &idle {
            let _ = writeln!(
                pre,
                "  {n} idle + {ACTIVE} active: {} server process(es) of at most {per} connections, {} holder process(es) of at most {per_holder}",
                processes_for(n + ACTIVE as u64, per),
                processes_for(n, per_holder)
            );
        }
        if lim.nofile_hard < 100_000 {
            pre += "  (the descriptor ceiling sets the process counts; where it can be raised: `ulimit -Hn` from a privileged parent, limits.conf, or LimitNOFILE=; scripts/tune.sh raises fs.nr_open and the port range)\n";
        }
        println!("\nc10k preflight\n{pre}");
        let labels = match &ctx.o.backends {
            Some(b) => b.clone(),
            None => vec!["uring".into(), "uring-fixed".into(), "epoll".into()],
        };
        let dur = ctx.duration(3.0);
        let client_cpu: Option<usize> = ctx
            .o
            .client_cores
            .split(',')
            .next()
            .and_then(|c| c.parse().ok());
        let mut rows = Vec::new();
        for &n in &idle {
            for label in &labels {
                let row = c10k_row(ctx, label, n, &lim, dur, client_cpu);
                match row {
                    Ok(r) => {
                        eprintln!(
                            "  {} idle={} → {}",
                            r.label,
                            r.idle,
                            r.run
                                .as_ref()
                                .map_or("no result".into(), |x| format!("{:.0} req/s", x.rps))
                        );
                        rows.push(r);
                    }
                    Err(e) => {
                        eprintln!("ringlab-bench: c10k {label} idle={n}: {e:#}");
                        rows.push(Row {
                            label: label.clone(),
                            idle: n,
                            server_procs: 0,
                            holders: 0,
                            run: None,
                            rss_kib_per_conn: 0.0,
                            slab_kib_per_conn: 0.0,
                            tcp_kib_per_conn: 0.0,
                            connect_s: 0.0,
                            connect_p99_us: 0.0,
                            server_fds: 0,
                            note: format!("failed: {e:#}"),
                        });
                    }
                }
            }
        }
        let mut t = String::from("| idle conns | backend | server procs | holders | server fds | active req/s | p99 µs | server CPU µs/req | server RSS KiB/conn | kernel slab KiB/conn | TCP buffers KiB/conn | connect all s | connect p99 µs (worst holder) | note |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for r in &rows {
            let (rps, p99, cpu) = r
                .run
                .as_ref()
                .map_or((0.0, 0.0, 0.0), |x| (x.rps, x.p99_us, x.cpu_per_req_us));
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.3} | {:.2} | {:.0} | {} |",
                r.idle,
                r.label,
                r.server_procs,
                r.holders,
                r.server_fds,
                rps,
                p99,
                cpu,
                r.rss_kib_per_conn,
                r.slab_kib_per_conn,
                r.tcp_kib_per_conn,
                r.connect_s,
                r.connect_p99_us,
                r.note
            );
        }
        println!("\nc10k: {ACTIVE} active echo connections (64 B) beside N idle ones\n\n{t}");
        let medians: Vec<RunResult> = rows.iter().filter_map(|r| r.run.clone()).collect();
        let ceiling = if ctx.o.quick {
            String::new()
        } else {
            ceiling(ctx, &lim, client_cpu)
        };
        println!("{ceiling}");
        rep.section(
            "c10k",
            &format!("{ceiling}\nN idle connections held open (each checked by one echoed byte) while {ACTIVE} active connections run closed-loop echo of 64 B for {dur} s. `uring-fixed` is the uring backend with `--fixed-files`. Memory per connection is the growth from before the idle connections were opened to after, divided by N: server RSS (all server processes), kernel slab (socket, inode and file structures of both ends, since both are on this machine) and TCP buffer memory (/proc/net/sockstat). Holders are separate processes (at most {per_holder} connections each, one source address each); server processes share the server CPU list.\n\n```\n{pre}```\n\n{t}"),
            &medians,
            &medians,
        );
        // A requested row that failed fails the run (after the report is written), so that a
        // script sees it: one line naming every failed row.
        let failed: Vec<String> = rows
            .iter()
            .filter(|r| r.run.is_none())
            .map(|r| format!("{} idle={}", r.label, r.idle))
            .collect();
        if !failed.is_empty() {
            bail!(
                "{} of {} c10k rows failed: {} (see the note column)",
                failed.len(),
                rows.len(),
                failed.join(", ")
            );
        }
        Ok(())
    }
}

/// How many connections ONE server process serves before its descriptor ceiling: epoll
/// and uring with descriptors share the process table; uring with `--fixed-files` has a
/// table per ring (each at most RLIMIT_NOFILE entries) and none in the process table.
fn ceiling(ctx: &Ctx, lim: &Limits, client_cpu: Option<usize>) -> String {
    let s = ctx.o.server_cores.clone();
    let two = if s.contains(',') || s.contains('-') {
        s.clone()
    } else {
        format!("{s},{}", client_cpu.unwrap_or(1))
    };
    let variants: Vec<(&str, Vec<String>, u64)> = vec![
        ("epoll, 1 loop", vec!["--io".into(), "epoll".into()], 2),
        (
            "epoll, 2 loops",
            vec!["--io".into(), "epoll".into(), "--cores".into(), two.clone()],
            2,
        ),
        (
            "uring --fixed-files, 1 ring",
            vec!["--io".into(), "uring".into(), "--fixed-files".into()],
            2,
        ),
        (
            "uring --fixed-files, 2 rings",
            vec![
                "--io".into(),
                "uring".into(),
                "--fixed-files".into(),
                "--cores".into(),
                two.clone(),
            ],
            3,
        ),
    ];
    let mut t = format!("\n### One process against the descriptor ceiling (ulimit -n {})\n\nHolders open connections until connects fail (the server stopped accepting and its listen queue is full); the count is the connections the one server process answered.\n\n| server | connections served | server fds | note |\n|---|---:|---:|---|\n", lim.nofile_soft);
    for (label, extra, mult) in variants {
        let mut args = vec!["--cores".to_string(), s.clone()];
        args.extend(extra);
        // A later --cores wins: drop the first pair if the variant has its own.
        if args.iter().filter(|a| *a == "--cores").count() > 1 {
            args.drain(0..2);
        }
        args.extend(SERVER_ARGS.map(String::from));
        let target = mult * lim.per_process() + 8192;
        let r = (|| -> Result<(u64, u64)> {
            let server = Server::start(&ctx.bins, &args, &ctx.run.tmp, ctx.run.netns.as_ref())?;
            let (holders, failed) =
                start_holders(&server.addr, target, lim.per_holder(), client_cpu, true)?;
            let served: u64 = holders
                .iter()
                .map(|h| field(&h.line, "echo_ok=") as u64)
                .sum();
            let fds = open_fds(&server.pids);
            let errs = stop_holders(holders, failed);
            let _ = server.stop();
            if !errs.is_empty() {
                bail!("holder errors: {}", errs.join("; "));
            }
            Ok((served, fds))
        })();
        match r {
            Ok((served, fds)) => {
                eprintln!("  ceiling {label}: {served} served");
                let _ = writeln!(t, "| {label} | {served} | {fds} | |");
            }
            Err(e) => {
                let _ = writeln!(t, "| {label} | – | – | failed: {e:#} |");
            }
        }
    }
    t
}

fn c10k_row(
    ctx: &Ctx,
    label: &str,
    n: u64,
    lim: &Limits,
    dur: f64,
    client_cpu: Option<usize>,
) -> Result<Row> {
    let (backend, fixed) = match label {
        "uring-fixed" => ("uring", true),
        other => (other, false),
    };
    let procs = processes_for(n + ACTIVE as u64 + 16, lim.per_process());
    let mut args = vec!["--cores".to_string(), ctx.o.server_cores.clone()];
    args.extend(backend_args(backend)?);
    args.extend(SERVER_ARGS.map(String::from));
    if fixed {
        args.push("--fixed-files".into());
    }
    if procs > 1 {
        args.extend(["--processes".to_string(), procs.to_string()]);
    }
    let server = Server::start(&ctx.bins, &args, &ctx.run.tmp, ctx.run.netns.as_ref())
        .with_context(|| format!("starting the server ({})", args.join(" ")))?;
    let pids = server.pids.clone();
    let rss = || pids.iter().map(|&p| rss_kib(p)).sum::<u64>();
    let spec = ctx.spec(
        label,
        n as f64,
        Vec::new(),
        vec![
            "--proto".into(),
            "echo".into(),
            "--size".into(),
            "64".into(),
            "--conns".into(),
            ACTIVE.to_string(),
        ],
        dur,
    );
    // Warm up first, so that memory every server touches once whatever the connection
    // count (the provided buffers the kernel cycles through, the read buffer, the rings)
    // is in the baseline and not counted per connection.
    let mut warm = spec.clone();
    warm.duration_s = 0.5;
    warm.warmup_s = 0.1;
    drive(&ctx.bins, &server.addr, &server.pids, &warm, &ctx.run)
        .context("warming the server up")?;
    std::thread::sleep(Duration::from_millis(300));
    let (rss0, (slab0, tcp0)) = (rss(), kernel_mem());
    let (holders, failed) = start_holders(&server.addr, n, lim.per_holder(), client_cpu, false)?;
    let nholders = (holders.len() + failed.len()) as u64;
    if !failed.is_empty() {
        let errs = stop_holders(holders, failed);
        let _ = server.stop();
        bail!("a holder failed: {}", errs.join("; "));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (rss1, (slab1, tcp1)) = (rss(), kernel_mem());
    let server_fds = open_fds(&pids);
    let connect_s = holders
        .iter()
        .map(|h| field(&h.line, "connect_s="))
        .fold(0.0, f64::max);
    let connect_p99 = holders
        .iter()
        .map(|h| field(&h.line, "connect_p99_us="))
        .fold(0.0, f64::max);
    let unverified: u64 = holders
        .iter()
        .map(|h| field(&h.line, "unverified=") as u64)
        .sum();
    let run = drive(&ctx.bins, &server.addr, &server.pids, &spec, &ctx.run);
    let errs = stop_holders(holders, Vec::new());
    let stats = server.stop();
    let run = run?;
    let stats = stats?;
    let accepted = stats.total.accepted;
    let mut note = Vec::new();
    if accepted < n + ACTIVE as u64 {
        note.push(format!("server accepted only {accepted}"));
    }
    if unverified > 0 {
        note.push(format!(
            "{unverified} idle connections not verified (no echoed byte while the holders waited, or closed)"
        ));
    }
    if !errs.is_empty() {
        note.push(format!("holder errors: {}", errs.join("; ")));
    }
    if run.client_saturated {
        note.push("client saturated".into());
    }
    let per = |a: u64, b: u64| (a as f64 - b as f64) / n.max(1) as f64;
    Ok(Row {
        label: label.to_string(),
        idle: n,
        server_procs: procs,
        holders: nholders,
        run: Some(run),
        rss_kib_per_conn: per(rss1, rss0),
        slab_kib_per_conn: per(slab1, slab0),
        tcp_kib_per_conn: per(tcp1, tcp0),
        connect_s,
        connect_p99_us: connect_p99,
        server_fds,
        note: note.join(", "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_counts_round_up() {
        assert_eq!(processes_for(1, 19744), 1);
        assert_eq!(processes_for(19744, 19744), 1);
        assert_eq!(processes_for(19745, 19744), 2);
        assert_eq!(processes_for(100_080, 19744), 6);
        assert_eq!(processes_for(0, 10), 1);
    }

    #[test]
    fn holder_share_respects_ports() {
        let l = Limits {
            nofile_soft: 1 << 20,
            nofile_hard: 1 << 20,
            nr_open: 1 << 20,
            ports: 28232,
        };
        assert_eq!(l.per_holder(), 28232 * 9 / 10);
        let l = Limits {
            nofile_soft: 20000,
            ..l
        };
        assert_eq!(l.per_process(), 20000 - HEADROOM);
        assert_eq!(l.per_holder(), 20000 - HEADROOM);
    }
}
