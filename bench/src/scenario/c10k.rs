//! `ringlab-bench c10k`: many idle connections held while a few active ones run, per backend.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

use crate::ctx::{backend_args, Ctx, Scenario};
use crate::hold::{direct, HolderIo};
use crate::procs::{open_fds, rss_kib, running, Server};
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

    /// Entries of one ring's fixed-file table: the kernel registers at most the soft
    /// RLIMIT_NOFILE (and 2^20) per ring.
    pub fn fixed_table(&self) -> u64 {
        self.nofile_soft.clamp(1, direct::MAX_TABLE)
    }

    /// Connections one holder process opens in mode `io`: fds, [`Limits::per_holder`];
    /// uring-direct, a fixed-file table per ring and up to [`DIRECT_MAX_RINGS`] rings (a
    /// descriptor each), at most [`DIRECT_PER_HOLDER`], and no more than its source addresses
    /// (a /24) have ports for.
    pub fn per_holder_io(&self, io: HolderIo) -> u64 {
        match io {
            HolderIo::Fds => self.per_holder(),
            HolderIo::UringDirect => {
                let rings = DIRECT_MAX_RINGS.min(self.per_process() / 2).max(1);
                DIRECT_PER_HOLDER
                    .min(self.fixed_table() * rings)
                    .min(MAX_ADDRS * self.ports * 9 / 10)
                    .max(1)
            }
        }
    }
}

/// Most connections one uring-direct holder process makes: 1,000,000 take two.
pub const DIRECT_PER_HOLDER: u64 = 500_000;
/// Most rings (fixed-file tables) one uring-direct holder opens.
pub const DIRECT_MAX_RINGS: u64 = 64;
/// Most source addresses one holder uses (127.G.H.1-254).
const MAX_ADDRS: u64 = 254;

/// One holder process's share of the idle connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HolderShare {
    pub count: u64,
    /// Source addresses (127.G.H.1-A).
    pub addrs: u64,
    /// uring-direct: rings, a fixed-file table each (fds: 0).
    pub rings: u64,
}

/// How `n` idle connections are shared out among holder processes in mode `io`. fds holders
/// use 8 source addresses each (as many connections as their descriptors); uring-direct
/// holders as many as keep every address under a quarter of its ephemeral ports (connect's port
/// search stays short), at least 8.
pub fn plan_holders(n: u64, lim: &Limits, io: HolderIo) -> Vec<HolderShare> {
    let per = lim.per_holder_io(io);
    let mut left = n;
    (0..processes_for(n, per))
        .map(|_| {
            let count = left.min(per);
            left -= count;
            match io {
                HolderIo::Fds => HolderShare {
                    count,
                    addrs: 8,
                    rings: 0,
                },
                HolderIo::UringDirect => HolderShare {
                    count,
                    addrs: count.div_ceil((lim.ports / 4).max(1)).clamp(8, MAX_ADDRS),
                    rings: count.div_ceil(lim.fixed_table()).max(1),
                },
            }
        })
        .collect()
}

/// Loops (one ring each for uring) that `procs` server processes run over `cores`: the CPU
/// list shared out, one CPU each when there are more processes than CPUs.
pub fn server_loops(cores: &str, procs: u64) -> u64 {
    cores
        .parse::<ringlab_runtime::cpus::CpuSpec>()
        .ok()
        .and_then(|s| s.resolve().ok())
        .map_or(procs, |l| {
            l.shares(procs as usize)
                .iter()
                .map(|c| c.len() as u64)
                .sum()
        })
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

/// Kernel memory that grows with sockets, machine-wide: slab (socket structs, inodes, files)
/// and its unreclaimable part from /proc/meminfo, TCP buffer memory and socket counts from
/// /proc/net/sockstat.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelMem {
    pub slab_kib: u64,
    pub sunreclaim_kib: u64,
    /// sockstat TCP `mem`, in pages (what `net.ipv4.tcp_mem` limits).
    pub tcp_pages: u64,
    pub tcp_inuse: u64,
    pub tcp_tw: u64,
}

impl KernelMem {
    pub fn read() -> KernelMem {
        let (tcp_pages, tcp_inuse, tcp_tw) =
            parse_sockstat(&std::fs::read_to_string("/proc/net/sockstat").unwrap_or_default());
        KernelMem {
            slab_kib: kib_field("/proc/meminfo", "Slab:"),
            sunreclaim_kib: kib_field("/proc/meminfo", "SUnreclaim:"),
            tcp_pages,
            tcp_inuse,
            tcp_tw,
        }
    }

    /// What [`crate::fleet::ssh::mem_script`] printed on a host: its kernel memory, and the
    /// descriptors and resident KiB of the processes it was asked about.
    pub fn parse_remote(text: &str) -> (KernelMem, u64, u64) {
        let kib = |key: &str| -> u64 {
            text.lines()
                .filter_map(|l| l.strip_prefix(key))
                .filter_map(|v| {
                    v.split_whitespace()
                        .next()
                        .and_then(|n| n.parse::<u64>().ok())
                })
                .sum()
        };
        let (tcp_pages, tcp_inuse, tcp_tw) = parse_sockstat(text);
        (
            KernelMem {
                slab_kib: kib("Slab:"),
                sunreclaim_kib: kib("SUnreclaim:"),
                tcp_pages,
                tcp_inuse,
                tcp_tw,
            },
            kib("fds "),
            kib("VmRSS:"),
        )
    }

    /// TCP buffer memory in KiB.
    pub fn tcp_kib(&self) -> u64 {
        self.tcp_pages * page_kib()
    }
}

fn page_kib() -> u64 {
    rustix::param::page_size() as u64 / 1024
}

/// `mem`, `inuse` and `tw` of the `TCP:` line of /proc/net/sockstat.
pub fn parse_sockstat(s: &str) -> (u64, u64, u64) {
    let Some(line) = s.lines().find(|l| l.starts_with("TCP:")) else {
        return (0, 0, 0);
    };
    let w: Vec<&str> = line.split_whitespace().collect();
    let get = |k: &str| {
        w.iter()
            .position(|x| *x == k)
            .and_then(|i| w.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("mem"), get("inuse"), get("tw"))
}

/// Wait (at most `bound`) until none of `pids` runs any more (gone, or a zombie).
fn wait_gone(pids: &[u32], bound: Duration) -> bool {
    let deadline = Instant::now() + bound;
    loop {
        if !pids.iter().any(|&p| running(p)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// After a teardown: sample kernel memory until slab is back within 5% of its growth from
/// `base` to `peak`, or stops moving (under 1 MiB over a second), or `bound` passes. The last
/// sample and how long it took.
fn settle_mem(
    base: KernelMem,
    peak: KernelMem,
    bound: Duration,
    read: &mut dyn FnMut() -> KernelMem,
) -> (KernelMem, f64) {
    let t = Instant::now();
    let growth = peak.slab_kib.saturating_sub(base.slab_kib);
    let mut recent: Vec<u64> = Vec::new();
    loop {
        let now = read();
        recent.push(now.slab_kib);
        let back = now.slab_kib.saturating_sub(base.slab_kib) * 20 <= growth;
        let still = recent.len() >= 5 && {
            let last = &recent[recent.len() - 5..];
            last.iter().max().unwrap_or(&0) - last.iter().min().unwrap_or(&0) < 1024
        };
        if back || still || t.elapsed() >= bound {
            return (now, t.elapsed().as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Share of the growth from `base` to `peak` that is gone at `after`, in percent.
fn returned_pct(base: u64, peak: u64, after: u64) -> f64 {
    let growth = peak.saturating_sub(base);
    if growth == 0 {
        return 100.0;
    }
    100.0 * (peak as f64 - after as f64) / growth as f64
}

/// The sysctls that decide whether `n` connections fit, read from /proc.
#[derive(Debug, Clone, Default)]
pub struct Sys {
    pub somaxconn: u64,
    /// net.ipv4.tcp_mem: min, pressure, max, in pages.
    pub tcp_mem: [u64; 3],
    pub file_max: u64,
    pub max_map_count: u64,
    /// nf_conntrack_max and nf_conntrack_count, where conntrack is loaded.
    pub conntrack: Option<(u64, u64)>,
    pub mem_available_kib: u64,
}

impl Sys {
    pub fn read() -> Sys {
        let read = |p: &str| std::fs::read_to_string(format!("/proc/sys/{p}")).ok();
        let num = |p: &str| read(p).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
        let mut tcp_mem = [0; 3];
        if let Some(v) = read("net/ipv4/tcp_mem") {
            for (d, x) in tcp_mem.iter_mut().zip(v.split_whitespace()) {
                *d = x.parse().unwrap_or(0);
            }
        }
        Sys {
            somaxconn: num("net/core/somaxconn"),
            tcp_mem,
            file_max: num("fs/file-max"),
            max_map_count: num("vm/max_map_count"),
            conntrack: read("net/netfilter/nf_conntrack_max").map(|m| {
                (
                    m.trim().parse().unwrap_or(0),
                    num("net/netfilter/nf_conntrack_count"),
                )
            }),
            mem_available_kib: kib_field("/proc/meminfo", "MemAvailable:"),
        }
    }
}

/// The server's listen backlog (SERVER_ARGS); somaxconn caps it.
const BACKLOG: u64 = 4096;
/// Kernel and process memory per idle connection pair measured at 100k (kernel-notes/scale.md:
/// up to 10.4 KiB of slab, 0.5 KiB of server RSS), with a margin.
const KIB_PER_PAIR: u64 = 12;
/// What scripts/tune.sh sets (kernel-notes/scale.md says why).
const TUNE_TCP_MEM: &str = "786432 1048576 1572864";

/// Whether each sysctl that decides whether `n` idle connections (both ends on this machine)
/// fit is high enough: one line each, `ok` or `LOW` with what it needs and the command that
/// fixes it.
pub fn check_sys(n: u64, s: &Sys) -> Vec<(bool, String)> {
    let fix = |kv: &str| {
        format!("fix: sudo scripts/tune.sh (sets it, --revert undoes), or sysctl -w {kv}")
    };
    let mut out = Vec::new();
    let mut check = |ok: bool, good: String, low: String| {
        out.push((ok, if ok { good } else { low }));
    };
    check(
        s.somaxconn >= BACKLOG,
        format!("net.core.somaxconn {} (the server asks a backlog of {BACKLOG})", s.somaxconn),
        format!(
            "net.core.somaxconn {} caps the server's listen backlog of {BACKLOG}: connect storms overflow it (SYNs dropped, retried after 1 s); {}",
            s.somaxconn,
            fix("net.core.somaxconn=65535")
        ),
    );
    // A socket holding any received byte is charged at least a page; the echo check and a
    // teardown can leave many holding one at once.
    let want_pages = n + 65_536;
    let gib = |pages: u64| pages as f64 * page_kib() as f64 / (1024.0 * 1024.0);
    check(
        s.tcp_mem[2] >= want_pages,
        format!(
            "net.ipv4.tcp_mem max {} pages ({:.1} GiB), room for a page per connection",
            s.tcp_mem[2],
            gib(s.tcp_mem[2])
        ),
        format!(
            "net.ipv4.tcp_mem max {} pages ({:.1} GiB) < {want_pages} for {n} connections (a socket holding any received byte is charged a whole page; past the max, TCP drops what arrives and the echo check stalls); {}",
            s.tcp_mem[2],
            gib(s.tcp_mem[2]),
            fix(&format!("net.ipv4.tcp_mem=\"{TUNE_TCP_MEM}\""))
        ),
    );
    // Both ends are sockets with a struct file each (direct descriptors too).
    let want_files = 2 * n + 65_536;
    check(
        s.file_max >= want_files,
        format!("fs.file-max {} (≥ {want_files}: two files a connection)", s.file_max),
        format!(
            "fs.file-max {} < {want_files}: both ends of every connection are files (direct descriptors too), past it socket() fails with ENFILE; {}",
            s.file_max,
            fix("fs.file-max=4194304")
        ),
    );
    check(
        s.max_map_count >= 65_530,
        format!(
            "vm.max_map_count {} (per process; a holder maps 3 areas a ring, a few hundred in all)",
            s.max_map_count
        ),
        format!(
            "vm.max_map_count {} is below the kernel's default 65530; {}",
            s.max_map_count,
            fix("vm.max_map_count=262144")
        ),
    );
    if let Some((max, count)) = s.conntrack {
        let want = 2 * n + 65_536;
        check(
            count == 0 || max >= want,
            if count == 0 {
                format!("nf_conntrack loaded, tracking nothing here (count 0, max {max})")
            } else {
                format!("net.netfilter.nf_conntrack_max {max} (tracking {count})")
            },
            format!(
                "net.netfilter.nf_conntrack_max {max} < {want}: conntrack is tracking ({count} entries) and drops new connections when full (\"table full, dropping packet\"); {}",
                fix("net.netfilter.nf_conntrack_max=2097152")
            ),
        );
    }
    let want_kib = n * KIB_PER_PAIR;
    check(
        s.mem_available_kib >= want_kib,
        format!(
            "MemAvailable {:.1} GiB (≥ {:.1} GiB: ~{KIB_PER_PAIR} KiB a connection pair)",
            s.mem_available_kib as f64 / 1048576.0,
            want_kib as f64 / 1048576.0
        ),
        format!(
            "MemAvailable {:.1} GiB < {:.1} GiB for {n} connection pairs (~{KIB_PER_PAIR} KiB each, mostly kernel slab): ask for fewer",
            s.mem_available_kib as f64 / 1048576.0,
            want_kib as f64 / 1048576.0
        ),
    );
    out
}

pub(super) struct Holder {
    child: Child,
    line: String,
}

/// Start the holder processes of [`plan_holders`] and wait (bounded) for each one's `held`
/// line: the holders that said it, and the children that failed or did not in time.
pub(super) fn start_holders(
    addr: &str,
    n: u64,
    lim: &Limits,
    io: HolderIo,
    cpu: Option<usize>,
    best_effort: bool,
) -> Result<(Vec<Holder>, Vec<Child>)> {
    let exe = std::env::current_exe().context("locating ringlab-bench")?;
    let plan = plan_holders(n, lim, io);
    if plan.len() > 254 {
        bail!(
            "{n} connections need {} holder processes ({io}), more than the 254 source-address blocks of 127.G.H.0/24",
            plan.len()
        );
    }
    // Fresh source addresses for every group of holders, so that the TIME_WAIT sockets a
    // previous group left on its ports do not collide with this one's.
    static GROUP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let group = 10 + GROUP.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 200;
    let mut started = Vec::new();
    for (i, share) in plan.iter().enumerate() {
        // Source addresses 127.G.I.1-A of its own for every holder: connect's port search stays
        // short when no address has most of its ports in use.
        let src = format!(
            "127.{group}.{}.1-127.{group}.{}.{}",
            i + 1,
            i + 1,
            share.addrs
        );
        let mut c = Command::new(&exe);
        c.args([
            "hold",
            addr,
            "--count",
            &share.count.to_string(),
            "--bind",
            &src,
        ]);
        c.args(["--holder-io", io.as_str()]);
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
    let deadline = Instant::now() + Duration::from_secs(holders_wait_s(n));
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
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.starts_with("held ") => holders.push(Holder { child, line }),
            _ => failed.push(child),
        }
    }
    Ok((holders, failed))
}

/// Hold `n` idle connections to the server of fleet session `s` from the client hosts, shared
/// out among them as the clients' connections are: `ringlab-bench hold` on each host (as many
/// processes there as its descriptor limit asks, each raising its soft limit to the hard one),
/// started through the session (their own process groups under the remote timeout, stopped by
/// PID when the session finishes or is dropped) and awaited: each one's `held` line with its
/// host. Their one checking echo per connection is counted beside the clients' responses. A
/// host holds at most 90% of its ephemeral ports' worth: the holders there bind no source
/// address of their own (a host has the one its route gives).
pub(super) fn start_remote_holders(
    s: &mut crate::fleet::session::Session<'_>,
    n: u64,
    io: HolderIo,
) -> Result<Vec<(String, String)>> {
    let f = s.fleet();
    let target = s.target()?.to_string();
    let shares = ringlab_runtime::cpus::even_shares(n as usize, f.clients.len().max(1));
    let mut argvs = Vec::new();
    for (ci, (h, &share)) in f.clients.iter().zip(&shares).enumerate() {
        let share = share as u64;
        if share == 0 {
            continue;
        }
        let l = h.limits;
        if share > l.ports * 9 / 10 {
            bail!(
                "client host {}: {share} idle connections to one server port need more than 90% of its {} ephemeral ports (one source address there): add client hosts, or widen net.ipv4.ip_local_port_range on it",
                h.ssh.dest,
                l.ports
            );
        }
        let lim = Limits {
            nofile_soft: l.nofile_hard,
            nofile_hard: l.nofile_hard,
            nr_open: l.nr_open,
            ports: l.ports,
        };
        let per = match io {
            HolderIo::Fds => lim.per_process(),
            HolderIo::UringDirect => lim.per_holder_io(io),
        };
        let k = processes_for(share, per) as usize;
        for c in ringlab_runtime::cpus::even_shares(share as usize, k.max(1)) {
            let argv = crate::fleet::ssh::raised(&[
                h.bench.clone(),
                "hold".into(),
                target.clone(),
                "--count".into(),
                c.to_string(),
                "--bind".into(),
                "0.0.0.0".into(),
                "--holder-io".into(),
                io.as_str().into(),
                "--no-stdin".into(),
            ]);
            argvs.push((ci, argv));
        }
    }
    let lines = s.beside("holder", &argvs, "held ", holders_wait_s(n))?;
    let echoed = lines.iter().map(|(_, l)| field(l, "echo_ok=") as u64).sum();
    s.add_beside_requests(echoed);
    Ok(lines)
}

/// How long holders of `n` connections may take to say `held` (the echo check alone may take
/// 120 s + 100 µs a connection).
pub(super) fn holders_wait_s(n: u64) -> u64 {
    180 + n / 1000
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
#[derive(Debug, Clone, Default)]
struct Row {
    label: String,
    holder_io: String,
    idle: u64,
    server_procs: u64,
    /// Server loops over all processes.
    server_loops: u64,
    /// io_uring instances over all of them (one per loop, or `--fixed-rings` each; 0 without).
    server_rings: u64,
    holders: u64,
    /// uring-direct holders: their rings (fixed-file tables), over all of them.
    holder_rings: u64,
    run: Option<RunResult>,
    rss_kib_per_conn: f64,
    slab_kib_per_conn: f64,
    tcp_kib_per_conn: f64,
    connect_s: f64,
    connect_p99_us: f64,
    /// Idle connections the holders could not verify (no echoed byte within their bound).
    unverified: u64,
    /// Descriptors the server processes held with every connection open.
    server_fds: u64,
    /// Kernel memory (machine-wide) before the idle connections, with them, and after the
    /// teardown settled.
    mem: [KernelMem; 3],
    /// From starting the holders to the last one's `held` line (connected and checked).
    open_s: f64,
    /// From telling the holders to stop to every holder and server process gone.
    teardown_s: f64,
    /// From then until kernel memory settled (`settle_mem`).
    settle_s: f64,
    note: String,
}

/// The holder modes asked for (`--holder-io`), or the default: uring-direct where this
/// kernel has it, else fds (with the reason).
fn holder_ios(asked: Option<&[String]>) -> Result<(Vec<HolderIo>, String)> {
    match asked {
        Some(list) => {
            let ios = list
                .iter()
                .map(|s| s.parse::<HolderIo>().map_err(anyhow::Error::msg))
                .collect::<Result<Vec<_>>>()?;
            if ios.contains(&HolderIo::UringDirect) {
                direct::check().map_err(|e| anyhow::anyhow!("--holder-io uring-direct: {e}"))?;
            }
            Ok((ios, String::new()))
        }
        None => Ok(match direct::check() {
            Ok(()) => (vec![HolderIo::UringDirect], String::new()),
            Err(e) => (
                vec![HolderIo::Fds],
                format!("  holders: fds, since uring-direct cannot run here ({e})\n"),
            ),
        }),
    }
}

/// `ringlab-bench c10k`.
pub struct C10k;

impl Scenario for C10k {
    fn name(&self) -> &'static str {
        "c10k"
    }

    fn fleet_needs_bench(&self) -> bool {
        true
    }

    fn run(&self, ctx: &Ctx, rep: &mut Report) -> Result<()> {
        let lim = Limits::read_and_raise();
        let idle: Vec<u64> = match &ctx.o.conns {
            Some(c) => c.iter().map(|&x| u64::from(x)).collect(),
            None if ctx.o.quick => vec![1000, 10000],
            None => vec![1000, 10000, 50000, 100000],
        };
        let (ios, io_note) = match (&ctx.run.fleet, ctx.o.holder_io.as_deref()) {
            // The client hosts' kernels are not this one: fds unless asked.
            (Some(_), None) => (
                vec![HolderIo::Fds],
                "  holders: fds on the client hosts (fleet mode; --holder-io uring-direct where their kernels have it)\n".to_string(),
            ),
            (_, asked) => holder_ios(asked)?,
        };
        let per = lim.per_process();
        let mut pre = format!(
            "limits: ulimit -n soft {} hard {}, fs.nr_open {}, {} ephemeral ports per source address, fixed-file table {} entries per ring\n{io_note}",
            lim.nofile_soft,
            lim.nofile_hard,
            lim.nr_open,
            lim.ports,
            lim.fixed_table()
        );
        for &n in &idle {
            let procs = processes_for(n + ACTIVE as u64 + 16, per);
            let loops = server_loops(&ctx.o.server_cores, 1);
            let rings = server_plan(
                "uring-fixed",
                n + ACTIVE as u64 + 16,
                per,
                &ctx.o.server_cores,
            )
            .ok()
            .and_then(|(a, _)| {
                a.iter()
                    .position(|x| x == "--fixed-rings")
                    .and_then(|i| a.get(i + 1)?.parse::<u64>().ok())
            })
            .unwrap_or(1);
            let _ = write!(
                pre,
                "  {n} idle + {ACTIVE} active: {procs} server process(es) of at most {per} connections ({} loops) for uring, uring-fixed-procs and epoll; 1 process of {loops} loop(s) with {rings} ring(s) each for uring-fixed",
                server_loops(&ctx.o.server_cores, procs)
            );
            for &io in &ios {
                let plan = plan_holders(n, &lim, io);
                let rings: u64 = plan.iter().map(|h| h.rings).sum();
                let _ = write!(
                    pre,
                    "; {} {io} holder process(es) of at most {} connections",
                    plan.len(),
                    lim.per_holder_io(io)
                );
                if io == HolderIo::UringDirect {
                    let _ = write!(
                        pre,
                        " ({rings} rings, up to {} source addresses each)",
                        plan.iter().map(|h| h.addrs).max().unwrap_or(0)
                    );
                }
            }
            pre.push('\n');
        }
        if lim.nofile_hard < 100_000 {
            pre += "  (the descriptor ceiling sets the process counts; where it can be raised: `ulimit -Hn` from a privileged parent, limits.conf, or LimitNOFILE=; scripts/tune.sh raises fs.nr_open and the port range)\n";
        }
        let most = idle.iter().copied().max().unwrap_or(0);
        let sys = Sys::read();
        let mut findings = check_sys(most + ACTIVE as u64, &sys);
        if let Some(f) = &ctx.run.fleet {
            // This machine's kernel serves nothing here: say what the hosts allow instead.
            findings.clear();
            for h in std::iter::once(&f.server).chain(&f.clients) {
                let l = h.limits;
                let _ = writeln!(
                    pre,
                    "  fleet: {} {}: ulimit -Hn {}, fs.nr_open {}, {} ephemeral ports",
                    h.role, h.ssh.dest, l.nofile_hard, l.nr_open, l.ports
                );
            }
        }
        let _ = writeln!(pre, "kernel, for {most} connections:");
        for (ok, line) in &findings {
            let _ = writeln!(pre, "  {} {line}", if *ok { "ok " } else { "LOW" });
        }
        println!("\nc10k preflight\n{pre}");
        let low: Vec<&str> = findings
            .iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, l)| l.split_whitespace().next().unwrap_or(""))
            .collect();
        if !low.is_empty() {
            eprintln!(
                "ringlab-bench: c10k: too low for {most} connections: {} (the preflight above says how to fix each); running anyway",
                low.join(", ")
            );
        }
        let labels = match &ctx.o.backends {
            Some(b) => b.clone(),
            None => vec![
                "uring".into(),
                "uring-fixed".into(),
                "uring-fixed-spread".into(),
                "epoll".into(),
            ],
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
            for &io in &ios {
                for label in &labels {
                    let row = c10k_row(ctx, label, io, n, &lim, dur, client_cpu);
                    match row {
                        Ok(r) => {
                            eprintln!(
                                "  {} idle={} holders={io} → {}",
                                r.label,
                                r.idle,
                                r.run
                                    .as_ref()
                                    .map_or("no result".into(), |x| format!("{:.0} req/s", x.rps))
                            );
                            rows.push(r);
                        }
                        Err(e) if crate::fleet::is_host_failure(&e) => return Err(e),
                        Err(e) => {
                            eprintln!("ringlab-bench: c10k {label} idle={n} holders={io}: {e:#}");
                            rows.push(Row {
                                label: label.clone(),
                                holder_io: io.to_string(),
                                idle: n,
                                note: format!("failed: {e:#}"),
                                ..Row::default()
                            });
                        }
                    }
                }
            }
        }
        let t = table(&rows);
        let m = memory_table(&rows);
        println!("\nc10k: {ACTIVE} active echo connections (64 B) beside N idle ones\n\n{t}\n{m}");
        let medians: Vec<RunResult> = rows.iter().filter_map(|r| r.run.clone()).collect();
        let ceiling = if ctx.o.quick {
            String::new()
        } else if ctx.run.fleet.is_some() {
            "\n(One process against the descriptor ceiling: not measured in fleet mode; it runs its holders and server on this machine.)\n".to_string()
        } else {
            ceiling(ctx, &lim, client_cpu)
        };
        println!("{ceiling}");
        rep.section(
            "c10k",
            &format!("{ceiling}\nN idle connections held open (each checked by one echoed byte) while {ACTIVE} active connections run closed-loop echo of 64 B for {dur} s. `uring-fixed` is the uring backend with `--fixed-files` in ONE process whose loop holds as many rings' fixed-file tables as the connections need (`--fixed-rings`, a new connection into the first ring with room, so the active connections, opened last, share a ring); `uring-fixed-spread` the same with the rings taken in turn (`--fixed-placement spread`: the active connections spread over every ring, the costly case); `uring-fixed-procs` is `--fixed-files` with one ring per process and as many processes as the tables need. Server loops (rings): the loops over all processes and, where a loop has several, the rings over all loops. Memory per connection is the growth from before the idle connections were opened to after, divided by N: server RSS (all server processes), kernel slab (socket, inode and file structures of both ends, since both are on this machine) and TCP buffer memory (/proc/net/sockstat). Holders are separate processes: `fds` holders keep a descriptor per connection (at most {} each), `uring-direct` holders make and keep them as io_uring direct descriptors (at most {} each, a fixed-file table of {} per ring); each holder has source addresses of its own. Server processes share the server CPU list. Unverified: idle connections whose echoed byte did not come back within the holders' bound (reported, not fatal). Connect p99 is the worst holder's: uring-direct holders make 256 connections at once per ring, so theirs includes waiting behind the others.\n\n```\n{pre}```\n\n{t}\n### Kernel memory, opening and teardown\n\nMachine-wide growth with the N idle connections open (both ends on this machine): /proc/meminfo Slab and SUnreclaim, /proc/net/sockstat TCP mem (pages). Open all: from starting the holders to every connection made and checked. Teardown: from telling the holders to stop to every holder and server process gone. Returned: the share of the slab growth gone once memory settled (back within 5%, or still for a second, at most 30 s after the teardown); sockets left: TCP sockets in use and in TIME_WAIT then (machine-wide).\n\n{m}",
                lim.per_holder_io(HolderIo::Fds),
                lim.per_holder_io(HolderIo::UringDirect),
                lim.fixed_table()),
            &medians,
            &medians,
        );
        // A requested row that failed fails the run (after the report is written), so that a
        // script sees it: one line naming every failed row.
        let failed: Vec<String> = rows
            .iter()
            .filter(|r| r.run.is_none())
            .map(|r| {
                if ios.len() > 1 {
                    format!("{} idle={} holders={}", r.label, r.idle, r.holder_io)
                } else {
                    format!("{} idle={}", r.label, r.idle)
                }
            })
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

/// The main table: one line per row.
fn table(rows: &[Row]) -> String {
    let mut t = String::from("| idle conns | backend | holder io | holders | holder rings | server procs | server loops (rings) | server fds | active req/s | p99 µs | server CPU µs/req | server RSS KiB/conn | kernel slab KiB/conn | TCP buffers KiB/conn | connect all s | connect p99 µs (worst holder) | unverified | note |\n|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for r in rows {
        let (rps, p99, cpu) = r
            .run
            .as_ref()
            .map_or((0.0, 0.0, 0.0), |x| (x.rps, x.p99_us, x.cpu_per_req_us));
        let _ = writeln!(
            t,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {:.3} | {:.2} | {:.0} | {} | {} |",
            r.idle,
            r.label,
            r.holder_io,
            r.holders,
            r.holder_rings,
            r.server_procs,
            if r.server_rings > r.server_loops {
                format!("{} ({})", r.server_loops, r.server_rings)
            } else {
                r.server_loops.to_string()
            },
            r.server_fds,
            rps,
            p99,
            cpu,
            r.rss_kib_per_conn,
            r.slab_kib_per_conn,
            r.tcp_kib_per_conn,
            r.connect_s,
            r.connect_p99_us,
            r.unverified,
            r.note
        );
    }
    t
}

/// Kernel memory in totals, the time to open everything and to tear it down.
fn memory_table(rows: &[Row]) -> String {
    let mut t = String::from("| idle conns | backend | holder io | Slab Δ MiB | SUnreclaim Δ MiB | TCP mem Δ pages | open all s | teardown s | slab returned % | settled in s | sockets left (in use / TIME_WAIT) |\n|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
    let mib = |a: u64, b: u64| (a as f64 - b as f64) / 1024.0;
    for r in rows.iter().filter(|r| r.run.is_some()) {
        let [m0, m1, m2] = r.mem;
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.1} | {:.1} | {} | {:.2} | {:.2} | {:.0} | {:.1} | {} / {} |",
            r.idle,
            r.label,
            r.holder_io,
            mib(m1.slab_kib, m0.slab_kib),
            mib(m1.sunreclaim_kib, m0.sunreclaim_kib),
            m1.tcp_pages as i64 - m0.tcp_pages as i64,
            r.open_s,
            r.teardown_s,
            returned_pct(m0.slab_kib, m1.slab_kib, m2.slab_kib),
            r.settle_s,
            m2.tcp_inuse,
            m2.tcp_tw
        );
    }
    t
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
            "uring --fixed-files --fixed-rings 3, 1 loop",
            vec![
                "--io".into(),
                "uring".into(),
                "--fixed-files".into(),
                "--fixed-rings".into(),
                "3".into(),
            ],
            3,
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
                start_holders(&server.addr, target, lim, HolderIo::Fds, client_cpu, true)?;
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
    io: HolderIo,
    n: u64,
    lim: &Limits,
    dur: f64,
    client_cpu: Option<usize>,
) -> Result<Row> {
    if let Some(f) = &ctx.run.fleet {
        return f.guard(|| fleet_row(ctx, f, label, io, n, dur));
    }
    let (args, procs) = row_plan(ctx, label, n, lim)?;
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
    let (rss0, mem0) = (rss(), KernelMem::read());
    let opening = Instant::now();
    let (holders, failed) = start_holders(&server.addr, n, lim, io, client_cpu, false)?;
    let open_s = opening.elapsed().as_secs_f64();
    let nholders = (holders.len() + failed.len()) as u64;
    if !failed.is_empty() {
        let errs = stop_holders(holders, failed);
        let _ = server.stop();
        bail!("a holder failed: {}", errs.join("; "));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (rss1, mem1) = (rss(), KernelMem::read());
    let server_fds = open_fds(&pids);
    let worst = |key: &str| {
        holders
            .iter()
            .map(|h| field(&h.line, key))
            .fold(0.0, f64::max)
    };
    let total = |key: &str| -> u64 { holders.iter().map(|h| field(&h.line, key) as u64).sum() };
    let (connect_s, connect_p99) = (worst("connect_s="), worst("connect_p99_us="));
    let (unverified, holder_rings) = (total("unverified="), total("rings="));
    let run = drive(&ctx.bins, &server.addr, &server.pids, &spec, &ctx.run);
    // Teardown: every holder told to stop and waited for, then the server; done when no holder
    // or server process is left.
    let tearing = Instant::now();
    let errs = stop_holders(holders, Vec::new());
    let stats = server.stop();
    let gone = wait_gone(&pids, Duration::from_secs(30));
    let teardown_s = tearing.elapsed().as_secs_f64();
    let (mem2, settle_s) = settle_mem(mem0, mem1, Duration::from_secs(30), &mut KernelMem::read);
    let run = run?;
    let stats = stats?;
    let mut note = Vec::new();
    if !errs.is_empty() {
        note.push(format!("holder errors: {}", errs.join("; ")));
    }
    if !gone {
        note.push("server processes still running 30 s after the stop".into());
    }
    Ok(Point {
        label,
        io,
        n,
        procs,
        holders: nholders,
        holder_rings,
        run,
        rss: [rss0, rss1],
        mem: [mem0, mem1, mem2],
        connect: (connect_s, connect_p99),
        unverified,
        server_fds,
        times: [open_s, teardown_s, settle_s],
        accepted: stats.total.accepted,
        rings: stats.total.rings,
        expected: n + ACTIVE as u64,
        note,
    }
    .row(ctx))
}

/// What one point measured, locally or in fleet mode, before it is a [`Row`].
struct Point<'a> {
    label: &'a str,
    io: HolderIo,
    /// Idle connections asked for.
    n: u64,
    procs: u64,
    holders: u64,
    holder_rings: u64,
    run: RunResult,
    /// Server RSS (KiB, all processes) before and with the idle connections.
    rss: [u64; 2],
    mem: [KernelMem; 3],
    /// The worst holder's time to connect all and its connect p99 (µs).
    connect: (f64, f64),
    unverified: u64,
    server_fds: u64,
    /// open_s, teardown_s, settle_s (see [`Row`]).
    times: [f64; 3],
    /// Connections the server accepted, and how many it should have.
    accepted: u64,
    expected: u64,
    /// io_uring instances over all server loops (0 for a backend without rings).
    rings: u64,
    /// Notes of its own path (holder errors, processes left, ...); the shared ones follow.
    note: Vec<String>,
}

impl Point<'_> {
    fn row(self, ctx: &Ctx) -> Row {
        let mut note = self.note;
        if self.accepted < self.expected {
            note.push(format!("server accepted only {}", self.accepted));
        }
        if self.unverified > 0 {
            note.push(format!(
                "{} idle connections not verified (no echoed byte while the holders waited, or closed)",
                self.unverified
            ));
        }
        if self.run.client_saturated {
            note.push("client saturated".into());
        }
        let n = self.n;
        let per = |a: u64, b: u64| (a as f64 - b as f64) / n.max(1) as f64;
        let [mem0, mem1, _] = &self.mem;
        let [open_s, teardown_s, settle_s] = self.times;
        Row {
            label: self.label.to_string(),
            holder_io: self.io.to_string(),
            idle: n,
            server_procs: self.procs,
            server_loops: server_loops(&ctx.o.server_cores, self.procs),
            server_rings: self.rings,
            holders: self.holders,
            holder_rings: self.holder_rings,
            rss_kib_per_conn: per(self.rss[1], self.rss[0]),
            slab_kib_per_conn: per(mem1.slab_kib, mem0.slab_kib),
            tcp_kib_per_conn: per(mem1.tcp_kib(), mem0.tcp_kib()),
            run: Some(self.run),
            connect_s: self.connect.0,
            connect_p99_us: self.connect.1,
            unverified: self.unverified,
            server_fds: self.server_fds,
            mem: self.mem,
            open_s,
            teardown_s,
            settle_s,
            note: note.join(", "),
        }
    }
}

/// [`server_plan`] for a row of `n` idle connections (and the active ones, and a margin).
fn row_plan(ctx: &Ctx, label: &str, n: u64, lim: &Limits) -> Result<(Vec<String>, u64)> {
    server_plan(
        label,
        n + ACTIVE as u64 + 16,
        lim.per_process(),
        &ctx.o.server_cores,
    )
}

/// The server of a c10k row for `conns` connections (idle, active and a margin) at `per`
/// connections per process (the descriptor ceiling) or per fixed-file table: its arguments and
/// process count.
///
/// * `uring-fixed`: ONE process whose loops hold their connections in as many rings'
///   fixed-file tables as needed (`--fixed-rings`, new connections to the first ring with
///   room); `uring-fixed-spread` the same with the rings taken in turn (`--fixed-placement
///   spread`: the active connections spread over every ring, the costly case);
/// * `uring-fixed-procs`: `--fixed-files` with a ring per process, as many processes as the
///   tables need (how it was done before `--fixed-rings`);
/// * every other backend: as many processes as the descriptor ceiling needs.
pub fn server_plan(label: &str, conns: u64, per: u64, cores: &str) -> Result<(Vec<String>, u64)> {
    let (backend, fixed) = match label {
        "uring-fixed" | "uring-fixed-spread" | "uring-fixed-procs" => ("uring", true),
        other => (other, false),
    };
    let mut args = vec!["--cores".to_string(), cores.to_string()];
    args.extend(backend_args(backend)?);
    args.extend(SERVER_ARGS.map(String::from));
    if fixed {
        args.push("--fixed-files".into());
    }
    let procs = match label {
        "uring-fixed" | "uring-fixed-spread" => {
            // The loops share one accept queue, not always evenly: one ring of slack each.
            let loops = server_loops(cores, 1);
            let mut rings = conns.div_ceil((loops * per).max(1)).max(1);
            if loops > 1 {
                rings += 1;
            }
            if rings > 1 {
                args.extend(["--fixed-rings".to_string(), rings.to_string()]);
                if label == "uring-fixed-spread" {
                    args.extend(["--fixed-placement".to_string(), "spread".to_string()]);
                }
            }
            1
        }
        _ => processes_for(conns, per),
    };
    if procs > 1 {
        args.extend(["--processes".to_string(), procs.to_string()]);
    }
    Ok((args, procs))
}

/// A c10k row in fleet mode: the server on its host (as many processes as its descriptor
/// limit asks), the holders on the client hosts and the active connections from their
/// ringlab-clients, all through one fleet session. Memory, descriptors and RSS are read on the
/// server host, so the kernel figures are the server's end only (on one machine they are both
/// ends'); the teardown is until the server has exited.
fn fleet_row(
    ctx: &Ctx,
    f: &crate::fleet::Fleet,
    label: &str,
    io: HolderIo,
    n: u64,
    dur: f64,
) -> Result<Row> {
    let sl = f.server.limits;
    let lim = Limits {
        nofile_soft: sl.nofile_hard,
        nofile_hard: sl.nofile_hard,
        nr_open: sl.nr_open,
        ports: sl.ports,
    };
    let (args, procs) = row_plan(ctx, label, n, &lim)?;
    let spec = ctx.spec(
        label,
        n as f64,
        Vec::new(),
        ["--proto", "echo", "--size", "64", "--conns"]
            .into_iter()
            .map(String::from)
            .chain([ACTIVE.to_string()])
            .collect(),
        dur,
    );
    let limit = holders_wait_s(n) + (spec.warmup_s + dur) as u64 + 120;
    let mut s = f.session(&ctx.run.tmp, limit)?;
    s.server(&args)?;
    let pids = s.server_pids();
    let script = crate::fleet::ssh::mem_script(&pids);
    let read = |s: &crate::fleet::session::Session<'_>| -> Result<(KernelMem, u64, u64)> {
        Ok(KernelMem::parse_remote(&s.on_server(&script)?))
    };
    let mut warm = spec.clone();
    warm.duration_s = 0.5;
    warm.warmup_s = 0.1;
    s.clients(&warm).context("warming the server up")?;
    std::thread::sleep(Duration::from_millis(300));
    let (mem0, _, rss0) = read(&s)?;
    let opening = Instant::now();
    let held = start_remote_holders(&mut s, n, io)?;
    let open_s = opening.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let (mem1, server_fds, rss1) = read(&s)?;
    let worst = |key: &str| held.iter().map(|h| field(&h.1, key)).fold(0.0, f64::max);
    let total = |key: &str| -> u64 { held.iter().map(|h| field(&h.1, key) as u64).sum() };
    let (connect_s, connect_p99) = (worst("connect_s="), worst("connect_p99_us="));
    let (unverified, holder_rings) = (total("unverified="), total("rings="));
    let run = s.clients(&spec)?;
    let tearing = Instant::now();
    let stats = s.finish()?;
    let teardown_s = tearing.elapsed().as_secs_f64();
    let mut remote = || {
        f.on_server(&crate::fleet::ssh::mem_script(&[]))
            .map(|t| KernelMem::parse_remote(&t).0)
            .unwrap_or_default()
    };
    let (mem2, settle_s) = settle_mem(mem0, mem1, Duration::from_secs(30), &mut remote);
    Ok(Point {
        label,
        io,
        n,
        procs,
        holders: held.len() as u64,
        holder_rings,
        run,
        rss: [rss0, rss1],
        mem: [mem0, mem1, mem2],
        connect: (connect_s, connect_p99),
        unverified,
        server_fds,
        times: [open_s, teardown_s, settle_s],
        accepted: stats.total.accepted,
        rings: stats.total.rings,
        expected: n + 2 * ACTIVE as u64,
        note: vec!["fleet: kernel memory of the server host (its end only)".to_string()],
    }
    .row(ctx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uring_fixed_holds_a_million_in_one_process_and_the_others_need_many() {
        let flag = |a: &[String], f: &str| {
            a.iter()
                .position(|x| x == f)
                .and_then(|i| a.get(i + 1).cloned())
        };
        let (a, procs) = server_plan("uring-fixed", 1_000_080, 19744, "0").unwrap();
        assert_eq!(procs, 1);
        assert!(a.contains(&"--fixed-files".to_string()), "{a:?}");
        assert_eq!(flag(&a, "--fixed-rings").as_deref(), Some("51"), "{a:?}");
        assert_eq!(flag(&a, "--fixed-placement"), None, "{a:?}");
        assert_eq!(flag(&a, "--processes"), None, "{a:?}");
        let (a, procs) = server_plan("uring-fixed-spread", 1_000_080, 19744, "0").unwrap();
        assert_eq!(procs, 1);
        assert_eq!(
            flag(&a, "--fixed-placement").as_deref(),
            Some("spread"),
            "{a:?}"
        );
        // One table is enough: one ring, and nothing to spread over.
        let (a, _) = server_plan("uring-fixed-spread", 1_080, 19744, "0").unwrap();
        assert_eq!(flag(&a, "--fixed-rings"), None, "{a:?}");
        assert_eq!(flag(&a, "--fixed-placement"), None, "{a:?}");
        // Two loops share the accepts: a ring of slack each.
        let (a, _) = server_plan("uring-fixed", 100_000, 19744, "0,1").unwrap();
        assert_eq!(flag(&a, "--fixed-rings").as_deref(), Some("4"), "{a:?}");
        for label in ["uring-fixed-procs", "epoll", "uring"] {
            let (a, procs) = server_plan(label, 1_000_080, 19744, "0").unwrap();
            assert_eq!(procs, 51, "{label}");
            assert_eq!(flag(&a, "--processes").as_deref(), Some("51"), "{label}");
            assert_eq!(flag(&a, "--fixed-rings"), None, "{label}");
        }
    }

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

    /// This machine: a 20,000-descriptor ceiling, the default ephemeral range.
    fn here() -> Limits {
        Limits {
            nofile_soft: 20000,
            nofile_hard: 20000,
            nr_open: 1 << 20,
            ports: 28232,
        }
    }

    #[test]
    fn a_million_takes_two_direct_holders_and_fifty_one_fd_holders() {
        let l = here();
        let direct = plan_holders(1_000_000, &l, HolderIo::UringDirect);
        assert_eq!(direct.len(), 2, "{direct:?}");
        for h in &direct {
            // 25 tables of 20,000; addresses for a quarter of 28,232 ports each.
            assert_eq!(
                *h,
                HolderShare {
                    count: 500_000,
                    addrs: 71,
                    rings: 25
                }
            );
        }
        let fds = plan_holders(1_000_000, &l, HolderIo::Fds);
        assert_eq!(fds.len(), 51);
        assert!(fds
            .iter()
            .all(|h| h.count <= 19_744 && h.rings == 0 && h.addrs == 8));
        for plan in [&direct, &fds] {
            assert_eq!(plan.iter().map(|h| h.count).sum::<u64>(), 1_000_000);
        }
    }

    #[test]
    fn direct_holders_need_rings_not_descriptors() {
        let l = here();
        // Small counts: one holder, one ring, the minimum of 8 addresses.
        assert_eq!(
            plan_holders(2000, &l, HolderIo::UringDirect),
            vec![HolderShare {
                count: 2000,
                addrs: 8,
                rings: 1
            }]
        );
        // Past one table: a second ring in the same process.
        let p = plan_holders(30_000, &l, HolderIo::UringDirect);
        assert_eq!((p.len(), p[0].rings), (1, 2));
        // 1.2 M: three holders, the last with the rest.
        let p = plan_holders(1_200_000, &l, HolderIo::UringDirect);
        let counts: Vec<u64> = p.iter().map(|h| h.count).collect();
        assert_eq!(counts, [500_000, 500_000, 200_000]);
        assert_eq!(p[2].rings, 10);
        // A 1024-descriptor shell: tables of 1024, at most 64 rings a holder.
        let small = Limits {
            nofile_soft: 1024,
            nofile_hard: 1024,
            ..l.clone()
        };
        assert_eq!(small.fixed_table(), 1024);
        assert_eq!(small.per_holder_io(HolderIo::UringDirect), 64 * 1024);
        let p = plan_holders(1_000_000, &small, HolderIo::UringDirect);
        assert_eq!(p.len(), 16);
        assert!(p.iter().all(|h| h.rings <= DIRECT_MAX_RINGS));
        // A narrow port range: the /24 of source addresses bounds a holder.
        let narrow = Limits { ports: 1000, ..l };
        assert_eq!(narrow.per_holder_io(HolderIo::UringDirect), 254 * 900);
        let p = plan_holders(1_000_000, &narrow, HolderIo::UringDirect);
        assert!(p.iter().all(|h| h.addrs == 254), "{p:?}");
        // A table never passes the kernel's 2^20.
        let huge = Limits {
            nofile_soft: 1 << 30,
            ..here()
        };
        assert_eq!(huge.fixed_table(), 1 << 20);
    }

    #[test]
    fn server_loops_follow_the_cpu_shares() {
        assert_eq!(server_loops("0", 1), 1);
        assert_eq!(server_loops("0", 51), 51);
        assert_eq!(server_loops("0,1", 1), 2);
        assert_eq!(server_loops("0,1", 3), 3);
    }

    #[test]
    fn server_host_memory_read_over_ssh() {
        let text = "Slab:             204800 kB\nSUnreclaim:        51200 kB\nsockets: used 300\nTCP: inuse 12 orphan 0 tw 3 alloc 20 mem 7\nUDP: inuse 1 mem 0\nVmRSS:\t    2048 kB\nVmRSS:\t    1024 kB\nfds 42\n";
        let (m, fds, rss) = KernelMem::parse_remote(text);
        assert_eq!((m.slab_kib, m.sunreclaim_kib), (204800, 51200));
        assert_eq!((m.tcp_pages, m.tcp_inuse, m.tcp_tw), (7, 12, 3));
        assert_eq!((fds, rss), (42, 3072));
        // The script, run here on this very process.
        let out = Command::new("sh")
            .arg("-c")
            .arg(crate::fleet::ssh::mem_script(&[std::process::id()]))
            .output()
            .unwrap();
        let (m, fds, rss) = KernelMem::parse_remote(&String::from_utf8_lossy(&out.stdout));
        assert!(m.slab_kib > 0 && fds > 2 && rss > 0, "{m:?} {fds} {rss}");
    }

    #[test]
    fn sockstat_and_returned_memory() {
        let s = "sockets: used 2000130\nTCP: inuse 2000052 orphan 0 tw 12 alloc 2000060 mem 153\nUDP: inuse 1 mem 2\n";
        assert_eq!(parse_sockstat(s), (153, 2_000_052, 12));
        assert_eq!(parse_sockstat("nothing"), (0, 0, 0));
        assert_eq!(returned_pct(100, 1100, 150), 95.0);
        assert_eq!(returned_pct(100, 100, 100), 100.0);
    }

    /// This machine's sysctls before scripts/tune.sh.
    fn sys_here() -> Sys {
        Sys {
            somaxconn: 4096,
            tcp_mem: [287_892, 383_858, 575_784],
            file_max: 2_466_116,
            max_map_count: 65_530,
            conntrack: Some((262_144, 0)),
            mem_available_kib: 23 * 1024 * 1024,
        }
    }

    fn low(n: u64, s: &Sys) -> Vec<String> {
        check_sys(n, s)
            .into_iter()
            .filter(|(ok, _)| !ok)
            .map(|(_, l)| l)
            .collect()
    }

    #[test]
    fn the_preflight_names_what_is_too_low_for_a_million_and_how_to_fix_it() {
        let s = sys_here();
        assert!(low(100_064, &s).is_empty(), "{:?}", low(100_064, &s));
        let l = low(1_000_064, &s);
        assert_eq!(l.len(), 1, "{l:?}");
        assert!(
            l[0].starts_with("net.ipv4.tcp_mem max 575784 pages")
                && l[0].contains("scripts/tune.sh")
                && l[0].contains(&format!("net.ipv4.tcp_mem=\"{TUNE_TCP_MEM}\"")),
            "{}",
            l[0]
        );
        // What tune.sh sets is enough.
        let tuned = Sys {
            somaxconn: 65535,
            tcp_mem: [786_432, 1_048_576, 1_572_864],
            file_max: 4_194_304,
            max_map_count: 262_144,
            ..s.clone()
        };
        assert!(low(1_000_064, &tuned).is_empty());
        // Conntrack binds only when it is tracking; each finding names its sysctl first.
        let tracking = Sys {
            conntrack: Some((262_144, 10)),
            somaxconn: 128,
            ..tuned.clone()
        };
        let l = low(1_000_064, &tracking);
        assert_eq!(l.len(), 2, "{l:?}");
        assert!(l[0].starts_with("net.core.somaxconn 128"));
        assert!(l[1].starts_with("net.netfilter.nf_conntrack_max 262144"));
        assert!(l.iter().all(|x| x.contains("fix: sudo scripts/tune.sh")));
        // Memory has no sysctl to fix it.
        let small = Sys {
            mem_available_kib: 4 * 1024 * 1024,
            ..tuned
        };
        assert!(low(1_000_064, &small)[0].starts_with("MemAvailable 4.0 GiB"));
    }
}
