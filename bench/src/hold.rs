//! `ringlab-bench hold`: a process that opens many idle connections to an echo server, checks
//! each is served (one byte echoed), and holds them until it is told to stop. `c10k` runs
//! several, since a process may hold only as many sockets as `ulimit -n` allows.
//!
//! Output, one line on stdout once every connection is up and checked:
//! `held N connect_s=T connect_p50_us=A connect_p99_us=B connect_max_us=C echo_ok=K unverified=U`;
//! then it waits for SIGTERM or for stdin to close, and exits 0. A connect that fails is an
//! error (exit 1, one line on stderr saying which and why), and so is an echo that returns the
//! wrong byte. The echo check is pipelined and bounded: a byte goes out on every connection,
//! then the answers are collected for as long as they keep coming (`--verify-patience`, 10 s
//! without a new one; 120 s at most); a loaded server that answers slowly is waited for, and
//! what stays unanswered (or was closed) is reported as `unverified=U`, with one line on stderr
//! naming a few, instead of failing the whole run.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// What to hold.
pub struct HoldArgs {
    pub addr: SocketAddr,
    pub conns: usize,
    /// Source addresses, used round-robin (each gives ~28k ephemeral ports).
    pub bind: Vec<Ipv4Addr>,
    pub cpu: Option<usize>,
    /// Find the ceiling instead of failing: stop connecting at the first failed connect, and
    /// count the connections the server answers (`echo_ok`) rather than requiring all.
    pub best_effort: bool,
    /// How long the echo check waits without a new answer before it reports the rest as
    /// unverified.
    pub patience: Duration,
}

/// The echo check never runs longer than this, however steadily answers come.
const VERIFY_MAX: Duration = Duration::from_secs(120);

/// Parse `A` or `A-B` (IPv4, same /24 or a range in the last octet... any range by value).
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
    let term = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, term.clone())?;
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut conns = Vec::with_capacity(a.conns);
    let start = Instant::now();
    let mut connect_failed = 0;
    let timeout = Duration::from_secs(if a.best_effort { 3 } else { 10 });
    for i in 0..a.conns {
        if term.load(std::sync::atomic::Ordering::Relaxed) {
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
        return wait_for_stop(conns, &term);
    }
    // Served: one byte echoed on every connection.
    let v = verify(&mut conns, a.patience, VERIFY_MAX)?;
    if !v.missing.is_empty() {
        let some: Vec<String> = v
            .missing
            .iter()
            .take(5)
            .map(|(i, why)| format!("{i} ({why})"))
            .collect();
        eprintln!(
            "hold: {} of {} connections not verified (no echoed byte within {:?} of the last answer, or closed), e.g. {}",
            v.missing.len(),
            conns.len(),
            a.patience,
            some.join(", ")
        );
    }
    println!(
        "held {} connect_s={connect_s:.3} connect_p50_us={} connect_p99_us={} connect_max_us={} echo_ok={} unverified={}",
        conns.len(),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max(),
        v.ok,
        v.missing.len()
    );
    std::io::stdout().flush()?;
    wait_for_stop(conns, &term)
}

/// What the echo check found.
struct Verified {
    ok: usize,
    /// Connections without a verified echo, and why (`no answer`, `closed`, an error).
    missing: Vec<(usize, String)>,
}

/// Send byte `i % 251` on connection `i`, every connection first, then collect the echoes until
/// all are in, or `patience` passes without a new one, or `max` in all. A wrong byte is an
/// error; a connection closed or silent is reported in `missing`.
fn verify(conns: &mut [TcpStream], patience: Duration, max: Duration) -> Result<Verified> {
    use std::io::ErrorKind::{Interrupted, WouldBlock};
    let byte = |i: usize| (i % 251) as u8;
    // 0: byte not sent yet, 1: sent, waiting, 2: done (verified or missing).
    let mut state = vec![0u8; conns.len()];
    let mut missing = Vec::new();
    let mut ok = 0;
    for s in conns.iter_mut() {
        s.set_nonblocking(true)?;
    }
    let start = Instant::now();
    let mut last = Instant::now();
    loop {
        let mut progress = false;
        let mut pending = 0;
        for (i, s) in conns.iter_mut().enumerate() {
            if state[i] == 0 {
                match s.write(&[byte(i)]) {
                    Ok(1) => state[i] = 1,
                    Err(e) if matches!(e.kind(), WouldBlock | Interrupted) => {}
                    Ok(_) => {}
                    Err(e) => {
                        state[i] = 2;
                        missing.push((i, format!("write: {e}")));
                        continue;
                    }
                }
            }
            if state[i] == 1 {
                let mut got = [0u8; 1];
                match s.read(&mut got) {
                    Ok(1) if got[0] == byte(i) => {
                        state[i] = 2;
                        ok += 1;
                        progress = true;
                    }
                    Ok(1) => bail!("connection {i}: echo returned {} for {}", got[0], byte(i)),
                    Ok(_) => {
                        state[i] = 2;
                        missing.push((i, "closed".into()));
                    }
                    Err(e) if matches!(e.kind(), WouldBlock | Interrupted) => {}
                    Err(e) => {
                        state[i] = 2;
                        missing.push((i, format!("read: {e}")));
                    }
                }
            }
            if state[i] != 2 {
                pending += 1;
            }
        }
        if pending == 0 {
            break;
        }
        let now = Instant::now();
        if progress {
            last = now;
        } else if now - last >= patience || now - start >= max {
            for (i, st) in state.iter().enumerate() {
                if *st != 2 {
                    missing.push((i, "no answer".into()));
                }
            }
            break;
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for s in conns.iter_mut() {
        s.set_nonblocking(false)?;
    }
    missing.sort_by_key(|m| m.0);
    Ok(Verified { ok, missing })
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

fn wait_for_stop(
    conns: Vec<TcpStream>,
    term: &std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Result<()> {
    // Hold until SIGTERM or until the parent closes our stdin (it died or is done).
    let stdin_closed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
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
