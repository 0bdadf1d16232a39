//! `ringlab-bench hold`: a process that opens many idle connections to an echo server, checks
//! each is served (one byte echoed), and holds them until it is told to stop. `c10k` runs
//! several, since a process may hold only as many sockets as `ulimit -n` allows, or, with
//! `--holder-io uring-direct`, a few that hold their connections as io_uring direct descriptors
//! (no slot in the process's descriptor table: [`direct`]).
//!
//! Output, one line on stdout once every connection is up and checked:
//! `held N connect_s=T connect_p50_us=A connect_p99_us=B connect_max_us=C echo_ok=K unverified=U
//! verify_s=V io=IO rings=R`; then it waits for SIGTERM or for stdin to close, and exits 0. A
//! connect that fails is an error (exit 1, one line on stderr saying which and why), and so is
//! an echo that returns the wrong byte. The echo check is pipelined and bounded: a byte goes out
//! on each of a window of connections ([`WINDOW`] in flight), and the answers are collected
//! while they keep coming; when `--verify-patience` (10 s) passes without a new one, the
//! connections of the window still waiting are given up and the check goes on with the rest,
//! all of it within [`verify_max`] (120 s plus 100 µs per connection). What stays unanswered
//! (or was closed) is reported as `unverified=U`, with one line on stderr naming a few, instead
//! of failing the whole run. The window also bounds the socket memory the check charges at
//! once: a socket holding a received byte is charged a page of `net.ipv4.tcp_mem`, and a
//! million at once (a page each, 4 GiB) is past this machine's default.

pub mod direct;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How a holder makes and keeps its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderIo {
    /// Plain sockets, a descriptor each: a process holds `ulimit -n` of them.
    Fds,
    /// io_uring direct descriptors, made by IORING_OP_SOCKET into the rings' fixed-file tables:
    /// no descriptor each, so a process holds a table per ring ([`direct`]).
    UringDirect,
}

impl HolderIo {
    pub fn as_str(self) -> &'static str {
        match self {
            HolderIo::Fds => "fds",
            HolderIo::UringDirect => "uring-direct",
        }
    }
}

impl std::str::FromStr for HolderIo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fds" => Ok(HolderIo::Fds),
            "uring-direct" => Ok(HolderIo::UringDirect),
            _ => Err(format!("{s}: a holder's io is fds or uring-direct")),
        }
    }
}

impl std::fmt::Display for HolderIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What to hold.
pub struct HoldArgs {
    pub addr: SocketAddr,
    pub conns: usize,
    /// Source addresses, used round-robin (each gives one ephemeral range of ports per
    /// destination).
    pub bind: Vec<Ipv4Addr>,
    pub cpu: Option<usize>,
    /// Find the ceiling instead of failing: stop connecting at the first failed connect, and
    /// count the connections the server answers (`echo_ok`) rather than requiring all. fds only.
    pub best_effort: bool,
    /// How long the echo check waits without a new answer before it gives up on the
    /// connections still waiting.
    pub patience: Duration,
    pub io: HolderIo,
    /// uring-direct: entries of each ring's fixed-file table (default: the soft RLIMIT_NOFILE,
    /// the most the kernel registers).
    pub fixed_table: Option<u32>,
    /// Stop when stdin closes too (the parent died or is done). Off where stdin is /dev/null
    /// (fleet mode: the holder runs on another host under `timeout`, stopped by SIGTERM).
    pub watch_stdin: bool,
}

/// Connections whose echo check is in flight at once.
pub const WINDOW: usize = 1024;

/// The echo check of `n` connections never runs longer than this, however steadily answers
/// come: 120 s, plus 100 µs a connection (a server answering 10,000 a second).
pub fn verify_max(n: usize) -> Duration {
    Duration::from_secs(120) + Duration::from_micros(100 * n as u64)
}

/// Parse `A` or `A-B` (IPv4, a range by value, at most 4097 addresses).
pub fn parse_bind(s: &str) -> Result<Vec<Ipv4Addr>> {
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a, b),
        None => (s, s),
    };
    let a: Ipv4Addr = a.trim().parse().with_context(|| format!("--bind {s}"))?;
    let b: Ipv4Addr = b.trim().parse().with_context(|| format!("--bind {s}"))?;
    let (x, y) = (u32::from(a), u32::from(b));
    if y < x || y - x > 4096 {
        bail!("--bind {s}: the range must go up and hold at most 4097 addresses");
    }
    Ok((x..=y).map(Ipv4Addr::from).collect())
}

fn connect_one(addr: SocketAddr, src: Ipv4Addr, timeout: Duration) -> Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    // The port is chosen at connect (by the 4-tuple): a bind-time port search slows down with
    // every connection already bound to the address.
    ringlab_runtime::net::set_bind_address_no_port(&s)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())
        .with_context(|| {
            format!("bind {src}:0 (out of ephemeral ports? give more --bind addresses)")
        })?;
    s.connect_timeout(&addr.into(), timeout)
        .with_context(|| format!("connect {addr} from {src}"))?;
    s.set_tcp_nodelay(true)?;
    let t: TcpStream = s.into();
    t.set_read_timeout(Some(Duration::from_secs(10)))?;
    t.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(t)
}

/// Open, verify and hold the connections; returns when told to stop.
pub fn hold(a: &HoldArgs) -> Result<()> {
    if let Some(cpu) = a.cpu {
        ringlab_runtime::cpus::pin_current_thread(cpu).map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if a.bind.is_empty() {
        bail!("no source address");
    }
    let term = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, term.clone())?;
    match a.io {
        HolderIo::UringDirect if a.best_effort => {
            bail!("--best-effort is for --holder-io fds")
        }
        HolderIo::UringDirect => return direct::hold(a, &term),
        HolderIo::Fds => {}
    }
    let mut hist = connect_histogram()?;
    let mut conns = Vec::with_capacity(a.conns);
    let start = Instant::now();
    let mut connect_failed = 0;
    let timeout = Duration::from_secs(if a.best_effort { 3 } else { 10 });
    for i in 0..a.conns {
        if term.load(Ordering::Relaxed) {
            bail!("stopped after {i} of {} connections", a.conns);
        }
        let t0 = Instant::now();
        let s = match connect_one(a.addr, a.bind[i % a.bind.len()], timeout) {
            Ok(s) => s,
            Err(_) if a.best_effort => {
                connect_failed = 1;
                break;
            }
            Err(e) => return Err(e.context(format!("connection {i} of {}", a.conns))),
        };
        let _ = hist.record((t0.elapsed().as_micros() as u64).max(1));
        conns.push(s);
    }
    let connect_s = start.elapsed().as_secs_f64();
    if a.best_effort {
        let ok = echo_best_effort(&mut conns)?;
        println!(
            "held {} connect_s={connect_s:.3} connect_p50_us={} connect_p99_us={} connect_max_us={} echo_ok={ok} connect_failed={connect_failed}",
            conns.len(),
            hist.value_at_quantile(0.5),
            hist.value_at_quantile(0.99),
            hist.max()
        );
        std::io::stdout().flush()?;
        return wait_for_stop(conns, &term, a.watch_stdin);
    }
    // Served: one byte echoed on every connection.
    let t = Instant::now();
    let max = verify_max(conns.len());
    let v = verify(&mut conns, a.patience, max, &term)?;
    let verify_s = t.elapsed().as_secs_f64();
    report_held(conns.len(), connect_s, &hist, &v, verify_s, a, 0)?;
    wait_for_stop(conns, &term, a.watch_stdin)
}

/// Connect times in µs, up to a minute.
fn connect_histogram() -> Result<hdrhistogram::Histogram<u64>> {
    Ok(hdrhistogram::Histogram::<u64>::new_with_bounds(
        1, 60_000_000, 3,
    )?)
}

/// The `held` line (and, when some were not verified, one line on stderr naming a few).
fn report_held(
    n: usize,
    connect_s: f64,
    hist: &hdrhistogram::Histogram<u64>,
    v: &Verified,
    verify_s: f64,
    a: &HoldArgs,
    rings: usize,
) -> Result<()> {
    if !v.missing.is_empty() {
        let some: Vec<String> = v
            .missing
            .iter()
            .take(5)
            .map(|(i, why)| format!("{i} ({why})"))
            .collect();
        eprintln!(
            "hold: {} of {n} connections not verified (no echoed byte within {:?} of the last answer, or closed), e.g. {}",
            v.missing.len(),
            a.patience,
            some.join(", ")
        );
    }
    println!(
        "held {n} connect_s={connect_s:.3} connect_p50_us={} connect_p99_us={} connect_max_us={} echo_ok={} unverified={} verify_s={verify_s:.3} io={} rings={rings}",
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max(),
        v.ok,
        v.missing.len(),
        a.io
    );
    std::io::stdout().flush()?;
    Ok(())
}

/// What the echo check found.
#[derive(Debug, Default)]
pub struct Verified {
    pub ok: usize,
    /// Connections without a verified echo, and why (`no answer`, `closed`, an error).
    pub missing: Vec<(usize, String)>,
}

/// The byte connection `i` sends and expects back.
pub fn byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// Send byte `i % 251` on connection `i` and collect its echo, [`WINDOW`] connections at a
/// time: when `patience` passes without a new answer, the window's connections still waiting
/// are given up; past `max` in all, every connection not verified yet is. A wrong byte is an
/// error; a connection closed, failing or silent is reported in `missing`.
fn verify(
    conns: &mut [TcpStream],
    patience: Duration,
    max: Duration,
    term: &AtomicBool,
) -> Result<Verified> {
    use std::io::ErrorKind::{Interrupted, WouldBlock};
    // Whether connection i's byte went out.
    let mut sent = vec![false; conns.len()];
    let mut v = Verified::default();
    for s in conns.iter_mut() {
        s.set_nonblocking(true)?;
    }
    let start = Instant::now();
    let mut last = Instant::now();
    let mut window: Vec<usize> = Vec::with_capacity(WINDOW);
    let mut next = 0;
    loop {
        while window.len() < WINDOW && next < conns.len() {
            window.push(next);
            next += 1;
        }
        if window.is_empty() {
            break;
        }
        if start.elapsed() >= max || term.load(Ordering::Relaxed) {
            let why = "no answer (time bound of the check)";
            v.missing.extend(
                window
                    .drain(..)
                    .chain(next..conns.len())
                    .map(|i| (i, why.into())),
            );
            break;
        }
        let mut progress = false;
        let mut k = 0;
        while k < window.len() {
            let i = window[k];
            let s = &mut conns[i];
            let mut done = None;
            if !sent[i] {
                match s.write(&[byte(i)]) {
                    Ok(1) => sent[i] = true,
                    Err(e) if matches!(e.kind(), WouldBlock | Interrupted) => {}
                    Ok(_) => {}
                    Err(e) => done = Some(Err(format!("write: {e}"))),
                }
            }
            if sent[i] && done.is_none() {
                let mut got = [0u8; 1];
                match s.read(&mut got) {
                    Ok(1) if got[0] == byte(i) => done = Some(Ok(())),
                    Ok(1) => bail!("connection {i}: echo returned {} for {}", got[0], byte(i)),
                    Ok(_) => done = Some(Err("closed".into())),
                    Err(e) if matches!(e.kind(), WouldBlock | Interrupted) => {}
                    Err(e) => done = Some(Err(format!("read: {e}"))),
                }
            }
            match done {
                None => k += 1,
                Some(r) => {
                    window.swap_remove(k);
                    progress = true;
                    match r {
                        Ok(()) => v.ok += 1,
                        Err(why) => v.missing.push((i, why)),
                    }
                }
            }
        }
        let now = Instant::now();
        if progress {
            last = now;
        } else if now - last >= patience {
            v.missing
                .extend(window.drain(..).map(|i| (i, "no answer".to_string())));
            last = now;
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    for s in conns.iter_mut() {
        s.set_nonblocking(false)?;
    }
    v.missing.sort_by_key(|m| m.0);
    Ok(v)
}
/// Send one byte on every connection, then count the connections whose echo comes back
/// within a few seconds (a connection the server has not accepted stays silent).
fn echo_best_effort(conns: &mut [TcpStream]) -> Result<usize> {
    for s in conns.iter_mut() {
        s.set_nonblocking(true)?;
        let _ = s.write(&[7u8]);
    }
    let mut answered = vec![false; conns.len()];
    let mut ok = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_progress = Instant::now();
    while ok < conns.len()
        && Instant::now() < deadline
        && last_progress.elapsed() < Duration::from_secs(3)
    {
        for (i, s) in conns.iter_mut().enumerate() {
            if answered[i] {
                continue;
            }
            let mut b = [0u8; 1];
            if let Ok(1) = s.read(&mut b) {
                answered[i] = true;
                ok += 1;
                last_progress = Instant::now();
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(ok)
}

/// Hold `conns` until SIGTERM or, with `watch_stdin`, until stdin closes (at most an hour),
/// then drop them.
fn wait_for_stop<T>(conns: T, term: &AtomicBool, watch_stdin: bool) -> Result<()> {
    // Hold until SIGTERM or until the parent closes our stdin (it died or is done).
    let stdin_closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    if watch_stdin {
        let flag = stdin_closed.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            let mut stdin = std::io::stdin();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 {
                    break;
                }
            }
            flag.store(true, std::sync::atomic::Ordering::Relaxed);
        });
    }
    // Bounded: a holder never outlives one hour.
    let deadline = Instant::now() + Duration::from_secs(3600);
    while !term.load(std::sync::atomic::Ordering::Relaxed)
        && !stdin_closed.load(std::sync::atomic::Ordering::Relaxed)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(conns);
    Ok(())
}
