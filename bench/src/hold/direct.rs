//! `hold --holder-io uring-direct`: the holder's connections as io_uring direct descriptors.
//!
//! No connection ever has a descriptor in the process's table. Each is made on a ring, as one
//! linked chain of four operations on slot S of the ring's sparse fixed-file table:
//! IORING_OP_SOCKET creates the socket into the slot (Linux 5.19), IORING_OP_URING_CMD
//! (SOCKET_URING_OP_SETSOCKOPT, 6.7) sets IP_BIND_ADDRESS_NO_PORT, IORING_OP_BIND (6.11) binds
//! its source address (the port is left to connect, as the descriptor holder does: a bind-time
//! port search slows with every socket already bound) and IORING_OP_CONNECT connects it. The
//! echo check is a linked IORING_OP_SEND of one byte and IORING_OP_RECV of its answer. Held
//! until told to stop; the tables are then unregistered, which closes every socket.
//!
//! How many a process holds: the kernel refuses a fixed-file table of more than RLIMIT_NOFILE
//! entries (and 2^20), but the limit applies per ring, and a direct descriptor takes no slot in
//! the process's table. So a holder opens as many rings as its connections need tables: at a
//! 20,000 limit, 25 rings (25 ring descriptors) hold 500,000 connections. Rings are worked one
//! after the other, [`WINDOW`] connections in flight on each.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use io_uring::{opcode, squeue, types, IoUring, Probe};
use rustix::process::{getrlimit, Resource};

use super::{byte, connect_histogram, report_held, verify_max, wait_for_stop, HoldArgs, Verified};

/// Connections being made, or being checked, at once on a ring. Making one takes four linked
/// entries, so the submission queue holds a full window.
pub const WINDOW: usize = 256;
const SQ_ENTRIES: u32 = 4 * WINDOW as u32;
/// A failed chain posts up to four completions.
const CQ_ENTRIES: u32 = 4 * SQ_ENTRIES;
/// The kernel's largest fixed-file table (IORING_MAX_FIXED_FILES).
pub const MAX_TABLE: u64 = 1 << 20;
/// Connects that see no completion for this long are stuck (a SYN retransmitted into a full
/// listen queue is answered within a few seconds).
const CONNECT_STALL: Duration = Duration::from_secs(30);

const OP_SOCKET: u64 = 1;
const OP_SOCKOPT: u64 = 2;
const OP_BIND: u64 = 3;
const OP_CONNECT: u64 = 4;
const OP_SEND: u64 = 5;
const OP_RECV: u64 = 6;

fn ud(op: u64, conn: usize) -> u64 {
    (op << 32) | conn as u64
}

fn ud_split(u: u64) -> (u64, usize) {
    (u >> 32, (u & 0xffff_ffff) as usize)
}

/// What every connection sends: byte `b` at offset `b`, so connection `i` sends `BYTES[i % 251]`
/// from memory that lives as long as the process.
static BYTES: [u8; 251] = {
    let mut a = [0u8; 251];
    let mut i = 0;
    while i < 251 {
        a[i] = i as u8;
        i += 1;
    }
    a
};

/// The value of IP_BIND_ADDRESS_NO_PORT, read by the kernel when the setsockopt runs.
static ONE: libc::c_int = 1;

/// Whether this kernel has what a direct-descriptor holder needs; the reason when not.
pub fn check() -> std::result::Result<(), String> {
    let ring = IoUring::new(8).map_err(|e| format!("io_uring unavailable: {e}"))?;
    let mut p = Probe::new();
    ring.submitter()
        .register_probe(&mut p)
        .map_err(|e| format!("io_uring probe: {e}"))?;
    for (code, name) in [
        (opcode::Socket::CODE, "SOCKET (Linux 5.19)"),
        (
            opcode::UringCmd16::CODE,
            "URING_CMD (socket setsockopt: Linux 6.7)",
        ),
        (opcode::Bind::CODE, "BIND (Linux 6.11)"),
        (opcode::Connect::CODE, "CONNECT"),
        (opcode::Send::CODE, "SEND"),
        (opcode::Recv::CODE, "RECV"),
    ] {
        if !p.is_supported(code) {
            return Err(format!("io_uring lacks IORING_OP_{name}"));
        }
    }
    ring.submitter()
        .register_files_sparse(1)
        .map_err(|e| format!("a sparse fixed-file table is refused: {e}"))?;
    Ok(())
}

/// Entries of one ring's fixed-file table: the soft RLIMIT_NOFILE (the kernel refuses more),
/// at most 2^20.
pub fn table_size() -> u32 {
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(MAX_TABLE);
    soft.clamp(1, MAX_TABLE) as u32
}

fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

const SOCKADDR_IN_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_in>() as _;

fn errno(res: i32) -> std::io::Error {
    std::io::Error::from_raw_os_error(-res)
}

/// What every operation points at: memory leaked once per process, so that no operation can
/// outlive it, whatever path the holder leaves by.
struct Targets {
    dst: &'static libc::sockaddr_in,
    dst_text: SocketAddr,
    srcs: &'static [libc::sockaddr_in],
    /// One byte per connection for its echo.
    recv: *mut u8,
    n: usize,
}

/// One ring and the connections it holds: global indices `first..end`, connection `i` in slot
/// `i - first`.
struct Ring {
    ring: IoUring,
    first: usize,
    end: usize,
}

/// Queue `entries` (one linked chain: kept together) and submit when the queue is full.
///
/// # Safety
///
/// Every buffer an entry points at must stay valid until its operation completes.
unsafe fn push(ring: &mut IoUring, entries: &[squeue::Entry]) -> Result<()> {
    for _ in 0..2 {
        {
            let mut sq = ring.submission();
            if sq.capacity() - sq.len() >= entries.len() {
                // SAFETY: forwarded from this function's contract.
                unsafe { sq.push_multiple(entries) }.map_err(|_| anyhow!("queue full"))?;
                return Ok(());
            }
        }
        ring.submit().context("io_uring_enter (submit)")?;
    }
    bail!("the submission queue stayed full")
}

/// Submit what is queued and wait at most `timeout` for a completion.
fn submit_wait(ring: &IoUring, timeout: Duration) -> Result<()> {
    let ts = types::Timespec::from(timeout.max(Duration::from_millis(1)));
    let args = types::SubmitArgs::new().timespec(&ts);
    match ring.submitter().submit_with_args(1, &args) {
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ETIME | libc::EINTR | libc::EBUSY)
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e).context("io_uring_enter (wait)"),
    }
}

/// The completions waiting on `ring`, as (operation, connection, result).
fn reap(ring: &mut IoUring, out: &mut Vec<(u64, usize, i32)>) {
    out.clear();
    for cqe in ring.completion() {
        let (op, conn) = ud_split(cqe.user_data());
        out.push((op, conn, cqe.result()));
    }
}

/// Open, verify and hold `a.conns` connections as direct descriptors.
pub fn hold(a: &HoldArgs, term: &AtomicBool) -> Result<()> {
    check().map_err(|e| anyhow!("--holder-io uring-direct: {e}"))?;
    let SocketAddr::V4(dst) = a.addr else {
        bail!("--holder-io uring-direct holds IPv4 connections");
    };
    let n = a.conns;
    if n > u32::MAX as usize {
        bail!("at most {} connections per holder", u32::MAX);
    }
    let table = a.fixed_table.unwrap_or_else(table_size).max(1);
    let t = Targets {
        dst: Box::leak(Box::new(sockaddr_in(dst))),
        dst_text: a.addr,
        srcs: Box::leak(
            a.bind
                .iter()
                .map(|ip| sockaddr_in(SocketAddrV4::new(*ip, 0)))
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        ),
        recv: Box::leak(vec![0u8; n].into_boxed_slice()).as_mut_ptr(),
        n,
    };
    let mut rings = Vec::new();
    for first in (0..n.max(1)).step_by(table as usize) {
        let ring = IoUring::builder()
            .setup_cqsize(CQ_ENTRIES)
            .build(SQ_ENTRIES)
            .with_context(|| format!("creating ring {}", rings.len()))?;
        ring.submitter().register_files_sparse(table).map_err(|e| {
            anyhow!(
                "registering a fixed-file table of {table} entries on ring {}: {e} (the kernel allows at most the soft RLIMIT_NOFILE, {}, and 2^20)",
                rings.len(),
                getrlimit(Resource::Nofile).current.map_or("unlimited".into(), |v| v.to_string())
            )
        })?;
        rings.push(Ring {
            ring,
            first,
            end: (first + table as usize).min(n),
        });
    }
    let mut hist = connect_histogram()?;
    let start = Instant::now();
    for r in &mut rings {
        connect_ring(r, &t, &mut hist, term)?;
    }
    let connect_s = start.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let deadline = t0 + verify_max(n);
    let mut v = Verified::default();
    for r in &mut rings {
        verify_ring(r, &t, a.patience, deadline, &mut v, term)?;
    }
    let verify_s = t0.elapsed().as_secs_f64();
    v.missing.sort_by_key(|m| m.0);
    report_held(n, connect_s, &hist, &v, verify_s, a, rings.len())?;
    wait_for_stop((), term, a.watch_stdin)?;
    // Close every connection now (the kernel would do it after the exit, from a worker).
    for r in &rings {
        let _ = r.ring.submitter().unregister_files();
    }
    Ok(())
}

/// Make the connections of one ring, [`WINDOW`] at a time; the first that fails is an error.
fn connect_ring(
    r: &mut Ring,
    t: &Targets,
    hist: &mut hdrhistogram::Histogram<u64>,
    term: &AtomicBool,
) -> Result<()> {
    let mut started = vec![Instant::now(); r.end - r.first];
    let mut failed: HashMap<usize, String> = HashMap::new();
    let mut done = Vec::new();
    let (mut next, mut inflight) = (r.first, 0usize);
    let mut last = Instant::now();
    let link = squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS;
    while next < r.end || inflight > 0 {
        if term.load(Ordering::Relaxed) {
            bail!("stopped while connecting (connection {next} of {})", t.n);
        }
        while inflight < WINDOW && next < r.end {
            let i = next;
            let slot = types::Fixed((i - r.first) as u32);
            let src = &t.srcs[i % t.srcs.len()];
            let dest = types::DestinationSlot::try_from_slot_target(slot.0)
                .map_err(|s| anyhow!("slot {s} out of range"))?;
            let chain = [
                opcode::Socket::new(libc::AF_INET, libc::SOCK_STREAM, 0)
                    .file_index(Some(dest))
                    .build()
                    .flags(link)
                    .user_data(ud(OP_SOCKET, i)),
                opcode::SetSockOpt::new(
                    slot,
                    libc::IPPROTO_IP as u32,
                    libc::IP_BIND_ADDRESS_NO_PORT as u32,
                    std::ptr::from_ref(&ONE).cast(),
                    std::mem::size_of::<libc::c_int>() as u32,
                )
                .build()
                .flags(link)
                .user_data(ud(OP_SOCKOPT, i)),
                opcode::Bind::new(slot, std::ptr::from_ref(src).cast(), SOCKADDR_IN_LEN)
                    .build()
                    .flags(link)
                    .user_data(ud(OP_BIND, i)),
                opcode::Connect::new(slot, std::ptr::from_ref(t.dst).cast(), SOCKADDR_IN_LEN)
                    .build()
                    .user_data(ud(OP_CONNECT, i)),
            ];
            // SAFETY: the option value is a static, the addresses are leaked (`Targets`):
            // all live as long as the process.
            unsafe { push(&mut r.ring, &chain)? };
            started[i - r.first] = Instant::now();
            next += 1;
            inflight += 1;
        }
        submit_wait(&r.ring, CONNECT_STALL.saturating_sub(last.elapsed()))?;
        reap(&mut r.ring, &mut done);
        for &(op, i, res) in &done {
            if op != OP_CONNECT {
                // A step before the connect failed (successes post nothing); the connect,
                // cancelled behind it, says when the chain is over.
                if res < 0 && res != -libc::ECANCELED {
                    let src = t.srcs[i % t.srcs.len()].sin_addr.s_addr;
                    let src = std::net::Ipv4Addr::from(u32::from_be(src));
                    let what = match op {
                        OP_SOCKET => format!("socket into fixed slot {}", i - r.first),
                        OP_SOCKOPT => "setsockopt IP_BIND_ADDRESS_NO_PORT".into(),
                        OP_BIND => format!(
                            "bind {src}:0 (out of ephemeral ports? give more --bind addresses)"
                        ),
                        _ => format!("operation {op}"),
                    };
                    failed
                        .entry(i)
                        .or_insert_with(|| format!("{what}: {}", errno(res)));
                }
                continue;
            }
            inflight -= 1;
            last = Instant::now();
            if res < 0 {
                let why = failed.remove(&i).unwrap_or_else(|| {
                    let src = t.srcs[i % t.srcs.len()].sin_addr.s_addr;
                    let src = std::net::Ipv4Addr::from(u32::from_be(src));
                    format!("connect {} from {src}: {}", t.dst_text, errno(res))
                });
                bail!("connection {i} of {}: {why}", t.n);
            }
            let _ = hist.record((started[i - r.first].elapsed().as_micros() as u64).max(1));
        }
        if done.is_empty() && last.elapsed() >= CONNECT_STALL {
            bail!(
                "{inflight} connects saw no completion for {CONNECT_STALL:?} (connections {}..{next} of {})",
                next - inflight,
                t.n
            );
        }
    }
    Ok(())
}

/// Check the connections of one ring, [`WINDOW`] at a time: when `patience` passes without a
/// new answer, the window's connections still waiting are cancelled and reported; past
/// `deadline`, every connection not verified yet is. A wrong byte is an error.
fn verify_ring(
    r: &mut Ring,
    t: &Targets,
    patience: Duration,
    deadline: Instant,
    v: &mut Verified,
    term: &AtomicBool,
) -> Result<()> {
    let mut failed_send: HashMap<usize, String> = HashMap::new();
    let mut done = Vec::new();
    let (mut next, mut inflight) = (r.first, 0usize);
    let mut last = Instant::now();
    loop {
        let now = Instant::now();
        if now >= deadline || term.load(Ordering::Relaxed) {
            // Past the bound: what is in flight is cancelled (and reported as it completes),
            // what was never sent is reported here.
            if inflight > 0 {
                cancel_all(r, t, &mut inflight, &mut failed_send, v)?;
            }
            let why = "no answer (time bound of the check)";
            v.missing
                .extend((next..r.end).map(|i| (i, why.to_string())));
            return Ok(());
        }
        while inflight < WINDOW && next < r.end {
            let i = next;
            let slot = types::Fixed((i - r.first) as u32);
            let pair = [
                opcode::Send::new(slot, &BYTES[byte(i) as usize], 1)
                    .build()
                    .flags(squeue::Flags::IO_LINK)
                    .user_data(ud(OP_SEND, i)),
                opcode::Recv::new(slot, t.recv.wrapping_add(i), 1)
                    .build()
                    .user_data(ud(OP_RECV, i)),
            ];
            // SAFETY: the byte sent is a static, the byte received lands in the leaked `recv`
            // (index i < n): both live as long as the process.
            unsafe { push(&mut r.ring, &pair)? };
            next += 1;
            inflight += 1;
        }
        if inflight == 0 {
            return Ok(());
        }
        let wait = patience
            .saturating_sub(last.elapsed())
            .min(deadline.saturating_duration_since(now));
        submit_wait(&r.ring, wait)?;
        reap(&mut r.ring, &mut done);
        let before = inflight;
        settle(&done, t, &mut inflight, &mut failed_send, v)?;
        if inflight < before {
            last = Instant::now();
        } else if last.elapsed() >= patience {
            cancel_all(r, t, &mut inflight, &mut failed_send, v)?;
            last = Instant::now();
        }
    }
}

/// Account for completions of the echo check.
fn settle(
    done: &[(u64, usize, i32)],
    t: &Targets,
    inflight: &mut usize,
    failed_send: &mut HashMap<usize, String>,
    v: &mut Verified,
) -> Result<()> {
    for &(op, i, res) in done {
        match op {
            OP_SEND => {
                if res < 0 && res != -libc::ECANCELED {
                    failed_send.insert(i, format!("write: {}", errno(res)));
                } else if res == 0 {
                    failed_send.insert(i, "write: nothing sent".into());
                }
            }
            OP_RECV => {
                *inflight -= 1;
                match res {
                    1 => {
                        // SAFETY: `i < n` (its index in `recv`), and the kernel wrote the byte
                        // before posting this completion; nothing else writes it.
                        let got = unsafe { t.recv.add(i).read() };
                        if got != byte(i) {
                            bail!("connection {i}: echo returned {got} for {}", byte(i));
                        }
                        v.ok += 1;
                    }
                    0 => v.missing.push((i, "closed".into())),
                    r if r == -libc::ECANCELED => {
                        let why = failed_send.remove(&i).unwrap_or_else(|| "no answer".into());
                        v.missing.push((i, why));
                    }
                    r => v.missing.push((i, format!("read: {}", errno(r)))),
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// Cancel every operation in flight on the ring and account for their completions (a cancelled
/// receive is `no answer`; one that completed first counts as what it was).
fn cancel_all(
    r: &mut Ring,
    t: &Targets,
    inflight: &mut usize,
    failed_send: &mut HashMap<usize, String>,
    v: &mut Verified,
) -> Result<()> {
    match r.ring.submitter().register_sync_cancel(
        Some(types::Timespec::from(Duration::from_secs(5))),
        types::CancelBuilder::any(),
    ) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e).context("cancelling the echo check's receives"),
    }
    let mut done = Vec::new();
    let until = Instant::now() + Duration::from_secs(10);
    while *inflight > 0 {
        if Instant::now() >= until {
            bail!("{inflight} cancelled receives did not complete within 10 s");
        }
        submit_wait(&r.ring, Duration::from_millis(100))?;
        reap(&mut r.ring, &mut done);
        settle(&done, t, inflight, failed_send, v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_data_keeps_operation_and_connection() {
        for (op, i) in [
            (OP_SOCKET, 0),
            (OP_RECV, 499_999),
            (OP_CONNECT, u32::MAX as usize),
        ] {
            assert_eq!(ud_split(ud(op, i)), (op, i));
        }
    }

    #[test]
    fn every_connection_sends_its_own_byte_from_the_static_table() {
        for i in [0, 1, 250, 251, 252, 100_000] {
            assert_eq!(BYTES[byte(i) as usize], byte(i));
        }
    }

    #[test]
    fn the_table_is_the_descriptor_limit_and_at_most_2_to_the_20() {
        let t = u64::from(table_size());
        assert!((1..=MAX_TABLE).contains(&t));
        if let Some(soft) = getrlimit(Resource::Nofile).current {
            assert_eq!(t, soft.clamp(1, MAX_TABLE));
        }
    }

    #[test]
    fn a_sockaddr_in_is_in_network_order() {
        let s = sockaddr_in("127.1.2.3:9527".parse().unwrap());
        assert_eq!(s.sin_family, libc::AF_INET as libc::sa_family_t);
        assert_eq!(u16::from_be(s.sin_port), 9527);
        assert_eq!(u32::from_be(s.sin_addr.s_addr), 0x7f01_0203);
    }
}
