//! (Over 800 lines: one driver with every io_uring technique the bench measures on and off —
//! multishot accept into fixed files, buffer rings, bundles, zero-copy sends — kept in one file
//! so the completion model's IO reads in one place.)
//!
//! The io_uring backend: the completion model at its best.
//!
//! * One multishot accept per listener (`IORING_ACCEPT_MULTISHOT`, 5.19), re-armed when it ends.
//! * One multishot recv per connection into a provided-buffer ring (`IORING_RECV_MULTISHOT`,
//!   6.0): an idle connection owns no read buffer. `-ENOBUFS` (ring empty) ends the multishot;
//!   it is re-armed once buffers are back, and the bytes wait in the socket meanwhile. While
//!   output waits on a slow peer, receives are single-shot from the same ring (one buffer per
//!   operation), so backpressure holds within one buffer of `--out-high-water`.
//! * Sends from owned buffers (the session's output, frozen), one in flight per connection;
//!   short sends resubmit the rest.
//! * Close as a ring operation too: in steady state the only syscall is one `io_uring_enter`
//!   per loop turn, which both submits and waits (`SINGLE_ISSUER` + `DEFER_TASKRUN`,
//!   registered ring fd). Shutdown is a direct `shutdown(2)`: `IORING_OP_SHUTDOWN` is always
//!   punted to an io-wq worker thread (measured with the `io_uring_queue_async_work`
//!   tracepoint), a thread hop per graceful close.
//! * CQ overflow: `IORING_FEAT_NODROP` keeps overflowed completions in the kernel; they are
//!   flushed by the next enter, counted, and nothing is lost.
//! * Files (`--root`): the session's file operations become ring operations: `OPENAT2` beneath
//!   the root (`RESOLVE_BENEATH`), `STATX` on the file, `READ` into a buffer of the connection's
//!   that is frozen and sent as it is (no copy), `CLOSE` without an answer. At most
//!   `--file-inflight` opens, stats and reads are in flight per loop; the rest wait in a FIFO
//!   queue (closes never wait: they do not touch the disk, and holding one back only holds a
//!   descriptor). They are operations on the connection's slot, so its buffers live and its
//!   close waits until they complete; an open that completes for a closing connection becomes
//!   its file and is closed with it. The loop's cache of open files (`--file-cache`, see
//!   [`crate::files`]) answers the open and stat of a hot file at once, with no ring operation
//!   (and ahead of the queue: they touch no disk). Files are `Arc<OwnedFd>`s shared by the
//!   cache and the connections serving them; `IORING_OP_CLOSE` closes one when the loop lets
//!   go of the last reference (`Arc::into_inner`), so uncached files close on the ring as
//!   before, and a cached one closes when the last of the cache and its readers lets go.
//! * `--file-fixed-bufs N`: reads go into N buffers registered with the ring
//!   (`IORING_OP_READ_FIXED`: mapped and pinned once, at registration, where a plain read
//!   imports its user buffer each time) instead of a fresh allocation per read. The pool
//!   ([`FixedBufs`]) lives in one mapping shared by an `Arc` between the loop and every buffer
//!   taken from it; a completed read becomes `Bytes` pointing into its buffer
//!   (`Bytes::from_owner`, no copy), and the buffer is free again when the last of those bytes
//!   is dropped (sent, or the connection gone). A read with no free buffer waits in the same
//!   FIFO as the other file operations; each turn, before waiting, the queue is looked at
//!   again. So the mapping outlives every read in flight (the operation's `FileIo` holds its
//!   buffer, and the ledger keeps that until the completion) and every `Bytes` into it (each
//!   holds the `Arc`); the registration is unregistered when the loop's `UringIo` goes, before
//!   the ring, or leaked with the ring's other buffers when operations never completed.
//!
//! Ownership: the connections live in the ring's operation ledger
//! ([`ringlab_runtime::ledger`]): a slot, its fd, its send buffer and its single-shot recv
//! buffer stay alive while any operation on them is in flight; the slot is freed only when its
//! close completes (cancel-then-close). A zero-copy send lends its buffer to the ledger under
//! its own identity until its notification. User data encodes (op, slot generation, slot).
//!
//! The loop itself (turn, timers, shutdown and grace, accept back-off, `--max-conns`) is
//! [`crate::event_loop`]; this file holds only the io_uring IO.

use std::collections::VecDeque;
use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use io_uring::{cqueue, opcode, squeue, types};
use ringlab_proto::files::{FileDone, FileOp};
use ringlab_proto::Action;
use ringlab_runtime::ledger::{user_data, Done, Ledger, SlotSock, Sock, NO_SLOT, OP_LENT};
use ringlab_runtime::on_sock;
use ringlab_runtime::poller::Coalesce;
use ringlab_runtime::uring::{
    build_ring, with_optlen, BufRing, FixedBuf, FixedBufs, Piece, Ring, RingConfig, SqPoll,
    UserData, PBUF_RING_INC,
};
use ringlab_runtime::wake::Waker;

use crate::config::Args;
use crate::core::{timer_key, ConnCore, LoopCore, LoopCtx};
use crate::event_loop::{admit_held, setup_failed, Driver, EventLoop};
use crate::files::{self, CacheNote, Cached, OpenCache};
use crate::stats::LoopStats;

const OP_ACCEPT: u8 = 1;
const OP_RECV: u8 = 2;
const OP_SEND: u8 = 3;
const OP_CANCEL_RECV: u8 = 6;
const OP_WAKE: u8 = 8;
const OP_CANCEL_ACCEPT: u8 = 9;
const OP_SHUTDOWN: u8 = 11;
/// File operations (`--root`): on a connection's slot, except the close of a file, which
/// refers to no memory and answers nobody.
const OP_FILE_OPEN: u8 = 12;
const OP_FILE_STAT: u8 = 13;
const OP_FILE_READ: u8 = 14;
const OP_FILE_CLOSE: u8 = 15;
/// `--fixed-rings`: the first ring's poll on another ring's eventfd (tagged with that ring).
const OP_RING_WAKE: u8 = 16;

/// Whether a zero-copy send's result says the kernel could not pin or account its pages
/// (ENOBUFS: the socket's option memory or the locked-memory limit; ENOMEM), rather than that
/// the connection failed.
fn zc_refused(res: i32) -> bool {
    res == -rustix::io::Errno::NOBUFS.raw_os_error()
        || res == -rustix::io::Errno::NOMEM.raw_os_error()
}

/// `IORING_NOTIF_USAGE_ZC_COPIED`: set in a zero-copy notification's result when the kernel
/// copied the data after all.
const ZC_COPIED: u32 = 1 << 31;
const POLLIN: u32 = rustix::event::PollFlags::IN.bits() as u32;
const BGID: u16 = 0;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Recv {
    Idle,
    Armed,
}

/// What a file operation in flight lends the kernel until it completes: its path and
/// `open_how`, its statx buffer, or its read buffer. All of it is on the heap (a `CString`, a
/// `Box`, a `BytesMut`'s allocation) or in the registered buffers' mapping (a `FixedBuf`), so it
/// does not move when the `Conn` that holds it moves within the ledger's slab; and the ledger
/// keeps that `Conn` until the operation completed.
enum FileIo {
    Open {
        _path: CString,
        _how: Box<types::OpenHow>,
    },
    Stat(Box<MaybeUninit<rustix::fs::Statx>>),
    Read {
        buf: ReadBuf,
        offset: u64,
        /// Bytes asked for.
        len: usize,
        /// Already resubmitted once for -EAGAIN (see [`UringIo::on_file`]).
        retried: bool,
    },
}

/// The buffer a file read fills.
enum ReadBuf {
    /// A fresh buffer, read into its spare capacity (`IORING_OP_READ`).
    Heap(BytesMut),
    /// A registered buffer (`--file-fixed-bufs`, `IORING_OP_READ_FIXED`).
    Fixed(FixedBuf),
}

// The kernel writes a whole `struct statx` (256 bytes) into the buffer of an `IORING_OP_STATX`.
const _: () = assert!(std::mem::size_of::<rustix::fs::Statx>() == 256);

/// The empty path of a statx on the file itself (`AT_EMPTY_PATH`).
const EMPTY_PATH: &std::ffi::CStr = c"";
const AT_EMPTY_PATH: i32 = rustix::fs::AtFlags::EMPTY_PATH.bits() as i32;

struct Conn {
    /// The socket, when it is a descriptor; `None` for a fixed file (or once given up to the
    /// ring's close).
    fd: Option<OwnedFd>,
    sock: Sock,
    /// The ring its socket operations go to (0: the loop's first; `--fixed-rings`).
    ring: u16,
    core: ConnCore,
    recv: Recv,
    /// The armed recv is multishot (else single-shot, one buffer).
    multishot: bool,
    /// Reading is paused by backpressure (for the statistics).
    paused: bool,
    recv_cancel_inflight: bool,
    /// Single-shot recv mode only: this connection's own read buffer.
    recv_buf: Option<Box<[u8]>>,
    /// The send in flight: the buffer and how much of it was already sent.
    send: Option<(Bytes, usize)>,
    shutdown_sent: bool,
    /// The connection's open file (`--root`): a plain descriptor, also with --fixed-files,
    /// shared with the loop's cache of open files and the other connections serving it.
    file: Option<Arc<OwnedFd>>,
    /// What that file came with, for the cache.
    cache_note: CacheNote,
    /// The file operation in flight on this slot, and what it lends the kernel.
    file_io: Option<FileIo>,
    /// A file operation of this connection waits in the loop's queue (`--file-inflight`).
    file_queued: bool,
}

impl AsMut<ConnCore> for Conn {
    fn as_mut(&mut self) -> &mut ConnCore {
        &mut self.core
    }
}

impl Conn {
    fn new(fd: Option<OwnedFd>, sock: Sock, core: ConnCore) -> Conn {
        Conn {
            fd,
            sock,
            ring: 0,
            core,
            recv: Recv::Idle,
            multishot: false,
            paused: false,
            recv_cancel_inflight: false,
            recv_buf: None,
            send: None,
            shutdown_sent: false,
            file: None,
            cache_note: CacheNote::None,
            file_io: None,
            file_queued: false,
        }
    }
}

impl SlotSock for Conn {
    fn sock(&self) -> Sock {
        self.sock
    }

    fn release(&mut self) -> Sock {
        match self.fd.take().map(IntoRawFd::into_raw_fd) {
            Some(fd) => Sock::Fd(fd),
            None => self.sock,
        }
    }
}

/// `--fixed-rings`: one of a loop's rings beyond the first, whose fixed-file table holds
/// connections of its own.
struct Extra<'r> {
    ring: Ring<'r>,
    bufs: Option<BufRing<'r>>,
    /// Registered with the ring (`IORING_REGISTER_EVENTFD`) and polled by the first ring; kept
    /// open for the loop's life.
    evfd: OwnedFd,
    /// Its eventfd fired, or it has completions or task work left: enter it this turn.
    flagged: bool,
}

/// Ring `k` of a loop: its first, or `extra[k - 1]` (`--fixed-rings`).
fn ring_mut<'a, 'r>(
    first: &'a mut Ring<'r>,
    extra: &'a mut [Extra<'r>],
    k: u16,
) -> &'a mut Ring<'r> {
    match k {
        0 => first,
        k => &mut extra[usize::from(k) - 1].ring,
    }
}

/// `--fixed-rings`: the fixed-file tables of all the loop's rings, as free indexes per ring.
struct Tables {
    /// Free indexes of each ring's table (ring 0 first), popped from the end.
    free: Vec<Vec<u32>>,
    placement: crate::config::Placement,
    /// `spread`: the ring that takes the next connection.
    next: usize,
}

impl Tables {
    fn new(rings: usize, cap: u32, placement: crate::config::Placement) -> Tables {
        Tables {
            free: (0..rings).map(|_| (0..cap).rev().collect()).collect(),
            placement,
            next: 0,
        }
    }

    /// A free index, and its ring, by the placement rule.
    fn take(&mut self) -> Option<(u16, u32)> {
        let n = self.free.len();
        let start = match self.placement {
            crate::config::Placement::Fill => 0,
            crate::config::Placement::Spread => self.next,
        };
        for k in (0..n).map(|i| (start + i) % n) {
            if let Some(i) = self.free[k].pop() {
                self.next = (k + 1) % n;
                return Some((k as u16, i));
            }
        }
        None
    }

    fn give_back(&mut self, ring: u16, i: u32) {
        self.free[ring as usize].push(i);
    }

    fn free_total(&self) -> usize {
        self.free.iter().map(Vec::len).sum()
    }
}

/// The IO of one io_uring loop.
struct UringIo<'r> {
    ring: Ring<'r>,
    bufs: Option<BufRing<'r>>,
    /// `--fixed-rings`: the loop's other rings (ring k is `extra[k - 1]`) and the tables of all.
    extra: Vec<Extra<'r>>,
    tables: Option<Tables>,
    /// The ring whose completions are being handled (their provided buffers are its).
    cur: u16,
    /// The connections and every operation in flight.
    conns: Ledger<Conn, Bytes>,
    listener: Arc<OwnedFd>,
    waker: Waker,
    args: Arc<Args>,
    cqes: Vec<cqueue::Entry>,
    accept_armed: bool,
    accept_cancel_sent: bool,
    /// Shutting down: no more accepting.
    stopped: bool,
    multishot_accept: bool,
    buf_size: usize,
    /// The kernel takes a total byte limit for multishot recv (`sqe->optlen`); cleared on the
    /// first -EINVAL.
    mshot_limit: bool,
    /// Accepted connections are fixed files (`--fixed-files`), in a table of `fixed_cap`.
    fixed: bool,
    fixed_cap: usize,
    /// The armed accept is multishot.
    accept_multi: bool,
    /// Accepting waits for a fixed-file slot to free.
    accept_full: bool,
    /// Fixed files accepted at --max-conns (echo), waiting for a slot.
    held_fixed: VecDeque<u32>,
    /// Sends of at least this many bytes are zero-copy (0: none).
    send_zc: usize,
    /// Multishot recvs are bundles.
    bundle: bool,
    /// Scratch list of the buffer pieces of one completion.
    pieces: Vec<Piece>,
    /// `--root`: the directory files are opened beneath.
    root: Option<Arc<OwnedFd>>,
    /// File operations (open, stat, read) in flight on the ring, at most `file_max`
    /// (`--file-inflight`); the others wait in `file_queue`, oldest first, as
    /// (slot, generation, operation).
    file_inflight: usize,
    file_max: usize,
    file_queue: VecDeque<(u32, u32, FileOp)>,
    /// `--file-cache`: the loop's open files.
    cache: OpenCache,
    /// `--file-fixed-bufs`: the registered read buffers.
    fixed_bufs: Option<FixedBufs<'r>>,
}

/// Run one io_uring loop until shutdown; returns its statistics.
pub fn run(ctx: LoopCtx) -> io::Result<LoopStats> {
    let a = ctx.args.clone();
    let rcfg = RingConfig {
        sq_entries: a.sq_entries,
        cq_entries: a.cq_entries,
        defer_taskrun: !a.no_defer_taskrun,
        register_ring_fd: !a.no_register_ring_fd,
        sqpoll: a.sqpoll.then_some(SqPoll {
            idle: a.sqpoll_idle,
            cpu: a
                .sqpoll_cpu
                .or(if a.no_pin { None } else { Some(ctx.cpu as u32) }),
        }),
    };
    let mut uring = build_ring(&rcfg).map_err(|e| setup_failed(&ctx, "io_uring_setup", e))?;
    let mut ring = Ring::new(&mut uring, &rcfg)
        .map_err(|e| setup_failed(&ctx, "io_uring_register(RING_FDS)", e))?;
    ring.set_coalesce(Coalesce::of(a.coalesce, a.coalesce_batch as usize))
        .map_err(|e| setup_failed(&ctx, "--coalesce", e))?;
    let mut fixed_cap = 0;
    if a.fixed_files {
        let n = if a.fixed_table > 0 {
            a.fixed_table
        } else {
            rustix::process::getrlimit(rustix::process::Resource::Nofile)
                .current
                .unwrap_or(1 << 20)
                .min(1 << 20) as u32
        };
        ring.submitter()
            .register_files_sparse(n)
            .map_err(|e| setup_failed(&ctx, &format!("io_uring_register(FILES_SPARSE, {n})"), e))?;
        fixed_cap = n as usize;
    }
    if !a.napi_busy_poll.is_zero() {
        let mut napi = types::Napi::new()
            .set_busy_poll_timeout(a.napi_busy_poll.as_micros().min(u128::from(u32::MAX)) as u32);
        ring.submitter()
            .register_napi(&mut napi)
            .map_err(|e| setup_failed(&ctx, "io_uring_register(NAPI)", e))?;
    }
    // `--fixed-rings N`: N - 1 more rings, each with a table and buffers of its own; the
    // provided buffers are shared out among all N.
    let rings = if a.fixed_files {
        a.fixed_rings.max(1)
    } else {
        1
    };
    let buf_count = if rings > 1 {
        (a.buf_count / rings).max(64).next_power_of_two()
    } else {
        a.buf_count
    };
    fn buf_ring<'a>(ctx: &LoopCtx, ring: &Ring<'a>, count: u16) -> io::Result<Option<BufRing<'a>>> {
        let a = &ctx.args;
        if a.no_multishot_recv {
            return Ok(None);
        }
        let flags = if a.buf_incremental { PBUF_RING_INC } else { 0 };
        let b = BufRing::with_flags(ring.uring(), BGID, count, a.buf_size, flags)
            .map_err(|e| setup_failed(ctx, "io_uring_register(PBUF_RING)", e))?;
        Ok(Some(b))
    }
    let bufs = buf_ring(&ctx, &ring, buf_count)?;
    // Only a few ring fds can be registered per thread (16): the others are entered by fd.
    // COOP_TASKRUN, not DEFER_TASKRUN: their task work then runs in whatever syscall the
    // thread makes next (the first ring's wait), so the loop enters one of them only to submit.
    let ecfg = RingConfig {
        register_ring_fd: false,
        defer_taskrun: false,
        ..rcfg.clone()
    };
    let mut extra_urings = Vec::with_capacity(usize::from(rings) - 1);
    for _ in 1..rings {
        extra_urings.push(build_ring(&ecfg).map_err(|e| {
            setup_failed(&ctx, &format!("io_uring_setup (--fixed-rings {rings})"), e)
        })?);
    }
    let mut extra = Vec::with_capacity(extra_urings.len());
    for u in extra_urings.iter_mut() {
        let r = Ring::new(u, &ecfg)
            .map_err(|e| setup_failed(&ctx, "io_uring_register(RING_FDS)", e))?;
        r.submitter()
            .register_files_sparse(fixed_cap as u32)
            .map_err(|e| {
                setup_failed(
                    &ctx,
                    &format!(
                        "io_uring_register(FILES_SPARSE, {fixed_cap}) (--fixed-rings {rings})"
                    ),
                    e,
                )
            })?;
        let evfd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .map_err(|e| setup_failed(&ctx, "eventfd", e.into()))?;
        r.submitter()
            .register_eventfd(evfd.as_raw_fd())
            .map_err(|e| setup_failed(&ctx, "io_uring_register(EVENTFD)", e))?;
        let bufs = buf_ring(&ctx, &r, buf_count)?;
        extra.push(Extra {
            ring: r,
            bufs,
            evfd,
            flagged: false,
        });
    }
    let tables =
        (rings > 1).then(|| Tables::new(usize::from(rings), fixed_cap as u32, a.fixed_placement));
    let fixed_bufs = match a.file_fixed_bufs {
        0 => None,
        n => Some(
            FixedBufs::register(ring.uring(), n, a.file_chunk as usize)
                .map_err(|e| fixed_bufs_failed(&ctx, n, a.file_chunk, e))?,
        ),
    };
    let n_extra = extra.len() as u64;
    let io = UringIo {
        ring,
        bufs,
        extra,
        cur: 0,
        // File operations act on the file, not the socket: a close waits for them.
        conns: Ledger::default().off_socket(&[OP_FILE_OPEN, OP_FILE_STAT, OP_FILE_READ]),
        listener: ctx.listener.clone(),
        waker: ctx.waker.clone(),
        args: a.clone(),
        cqes: Vec::with_capacity(1024),
        accept_armed: false,
        accept_cancel_sent: false,
        stopped: false,
        multishot_accept: !a.no_multishot_accept,
        buf_size: a.buf_size as usize,
        mshot_limit: !a.no_recv_limit,
        // With several tables, accepts arrive as descriptors and the loop places them.
        fixed: a.fixed_files && tables.is_none(),
        tables,
        fixed_cap,
        accept_multi: false,
        accept_full: false,
        held_fixed: VecDeque::new(),
        send_zc: a.send_zc,
        bundle: a.recv_bundle,
        pieces: Vec::new(),
        root: ctx.root.clone(),
        file_inflight: 0,
        file_max: a.file_inflight.max(1) as usize,
        file_queue: VecDeque::new(),
        cache: OpenCache::new(a.file_cache as usize, a.file_cache_valid),
        fixed_bufs,
    };
    let mut lp = EventLoop::new(ctx, io);
    lp.core.stats.syscalls.io_uring_register += 1
        + u64::from(!a.no_register_ring_fd)
        + u64::from(a.fixed_files)
        + u64::from(!a.napi_busy_poll.is_zero())
        + u64::from(a.file_fixed_bufs > 0)
        + 3 * n_extra;
    lp.core.stats.rings = 1 + n_extra;
    lp.io.arm_wake(&mut lp.core);
    for k in 1..=n_extra as u16 {
        lp.io.arm_ring_wake(&mut lp.core, k);
    }
    lp.io.accept(&mut lp.core);
    let r = lp.run();
    lp.io.finish(&mut lp.core);
    r.map(|()| {
        let mut s = lp.stats();
        s.cq_overflows = lp.io.ring.cq_overflow_events
            + lp.io
                .extra
                .iter()
                .map(|x| x.ring.cq_overflow_events)
                .sum::<u64>();
        s
    })
}

/// `--file-fixed-bufs` could not be registered: one line for the starter, naming the flag and,
/// for `ENOMEM` (the usual reason), the locked-memory limit the buffers count against.
fn fixed_bufs_failed(ctx: &LoopCtx, n: u16, chunk: u32, e: io::Error) -> io::Error {
    let kib = u64::from(n) * u64::from(chunk) / 1024;
    let hint = if e.raw_os_error() == Some(rustix::io::Errno::NOMEM.raw_os_error()) {
        let limit = match rustix::process::getrlimit(rustix::process::Resource::Memlock).current {
            Some(l) => format!("{} KiB", l / 1024),
            None => "unlimited".into(),
        };
        format!("; registered buffers are locked memory, counted against RLIMIT_MEMLOCK (soft limit {limit} here) unless the process has CAP_IPC_LOCK: raise it (ulimit -l, LimitMEMLOCK=) or lower --file-fixed-bufs or --file-chunk")
    } else {
        String::new()
    };
    let e = io::Error::new(
        e.kind(),
        format!("io_uring_register(BUFFERS) of {n} x {chunk} bytes ({kib} KiB) failed: {e}{hint}"),
    );
    setup_failed(ctx, &format!("--file-fixed-bufs {n}"), e)
}

impl Driver for UringIo<'_> {
    type Conn = Conn;
    type Conns = Ledger<Conn, Bytes>;

    fn conns(&mut self) -> &mut Ledger<Conn, Bytes> {
        &mut self.conns
    }

    fn wait(&mut self, core: &mut LoopCore, timeout: Option<Duration>) -> io::Result<()> {
        // Registered buffers given back during the turn (their bytes sent, or dropped with a
        // connection, wherever that happened) let queued reads go, in this same enter. One
        // answered without the ring changed a session: look again at once.
        let mut timeout = if !self.file_queue.is_empty() && self.file_next(core) {
            Some(Duration::ZERO)
        } else {
            timeout
        };
        // `--fixed-rings`: submit what the turn queued on the other rings (running their task
        // work too); one with completions or work left is looked at again before any sleep.
        for x in self.extra.iter_mut() {
            if x.ring.unsubmitted() > 0 {
                core.stats.extra_enters += 1;
                x.ring.submit_quiet(&mut core.stats.syscalls)?;
            }
            if x.ring.ready() {
                x.flagged = true;
                timeout = Some(Duration::ZERO);
            }
        }
        self.ring
            .submit_and_wait(1, timeout, &mut core.stats.syscalls)
    }

    fn dispatch(&mut self, core: &mut LoopCore) {
        let mut cqes = std::mem::take(&mut self.cqes);
        self.cur = 0;
        self.ring.reap(&mut cqes);
        for cqe in cqes.drain(..) {
            self.handle(core, cqe);
        }
        // `--fixed-rings`: every ring the first one heard from (its eventfd fired) or that had
        // completions or task work waiting. They are COOP_TASKRUN rings: their task work ran
        // in this thread's last syscall (the first ring's wait), so their completions are
        // there to take without entering them.
        for k in 0..self.extra.len() {
            let x = &mut self.extra[k];
            if !std::mem::take(&mut x.flagged) {
                continue;
            }
            x.ring.reap(&mut cqes);
            self.cur = k as u16 + 1;
            for cqe in cqes.drain(..) {
                self.handle(core, cqe);
            }
        }
        self.cur = 0;
        self.cqes = cqes;
    }

    fn pump(&mut self, core: &mut LoopCore, slot: u32) {
        UringIo::pump(self, core, slot);
    }

    fn add(&mut self, core: &mut LoopCore, fd: OwnedFd, conn: ConnCore) {
        // `--fixed-rings`: the accepted descriptor moves into a table with room (the table
        // takes its own reference to the socket, so the descriptor is closed at once); with
        // every table full, or if the kernel refuses, it is served as a descriptor.
        if let Some((ring, i)) = self.tables.as_mut().and_then(Tables::take) {
            let submitter = ring_mut(&mut self.ring, &mut self.extra, ring).submitter();
            core.stats.syscalls.io_uring_register += 1;
            match submitter.register_files_update(i, &[fd.as_raw_fd()]) {
                Ok(1) => {
                    core.stats.syscalls.close += 1;
                    drop(fd);
                    let mut c = Conn::new(None, Sock::Fixed(i), conn);
                    c.ring = ring;
                    let (slot, _) = self.conns.insert(c);
                    self.pump(core, slot);
                    return;
                }
                r => {
                    if let Some(t) = self.tables.as_mut() {
                        t.give_back(ring, i);
                    }
                    let why = match r {
                        Err(e) => e.to_string(),
                        Ok(n) => format!("{n} entries updated"),
                    };
                    tracing::warn!("ringlab-server: io_uring_register(FILES_UPDATE) into ring {ring}: {why}; serving the connection as a descriptor");
                }
            }
        }
        let sock = Sock::Fd(fd.as_raw_fd());
        let (slot, _) = self.conns.insert(Conn::new(Some(fd), sock, conn));
        self.pump(core, slot);
    }

    fn accept(&mut self, core: &mut LoopCore) {
        if self.accept_armed || self.stopped {
            return;
        }
        // Connections accepted while at --max-conns go first, once there is room.
        admit_held(self, core);
        while !self.held_fixed.is_empty() {
            let Some(conn) = core.admit() else { break };
            let Some(i) = self.held_fixed.pop_front() else {
                break;
            };
            let (slot, _) = self.conns.insert(Conn::new(None, Sock::Fixed(i), conn));
            self.pump(core, slot);
        }
        if !self.held_fixed.is_empty() || !core.may_accept() {
            return; // at --max-conns (echo): retried at `accept.retry_at`
        }
        let mut multishot = self.multishot_accept;
        if self.fixed || self.tables.is_some() {
            let (free, burst) = self.fixed_room();
            if free == 0 {
                self.accept_full = true;
                return;
            }
            multishot &= free > burst;
        }
        self.accept_full = false;
        let fd = types::Fd(self.listener.as_raw_fd());
        // A fixed file is no descriptor, so it has no close-on-exec flag (the kernel refuses it).
        let flags = if self.fixed {
            0
        } else {
            libc_flags::SOCK_CLOEXEC
        };
        let e = if multishot {
            opcode::AcceptMulti::new(fd)
                .allocate_file_index(self.fixed)
                .flags(flags)
                .build()
        } else {
            let mut a =
                opcode::Accept::new(fd, std::ptr::null_mut(), std::ptr::null_mut()).flags(flags);
            if self.fixed {
                a = a.file_index(Some(types::DestinationSlot::auto_target()));
            }
            a.build()
        };
        self.push(core, OP_ACCEPT, e);
        self.accept_armed = true;
        self.accept_multi = multishot;
    }

    fn accept_idle(&self) -> bool {
        !self.accept_armed
    }

    fn stop_accepting(&mut self, core: &mut LoopCore) {
        self.stopped = true;
        self.cancel_accept(core);
    }
}

impl UringIo<'_> {
    /// Queue an operation on no connection (the listener, the waker).
    fn push(&mut self, core: &mut LoopCore, op: u8, e: squeue::Entry) {
        // SAFETY: such entries refer only to the listener and the waker, which outlive the
        // ring's operations (the loop drains or leaks all of them before it returns), or to
        // no resource at all (cancels).
        unsafe {
            self.conns
                .push(&mut self.ring, op, e, &mut core.stats.syscalls)
        };
    }

    /// `--fixed-rings`: the first ring's eventfd poll on ring `k`'s eventfd (multishot, like
    /// the waker's; the eventfd is never read: each signal wakes the poll all the same).
    fn arm_ring_wake(&mut self, core: &mut LoopCore, k: u16) {
        let fd = self.extra[usize::from(k) - 1].evfd.as_raw_fd();
        let e = opcode::PollAdd::new(types::Fd(fd), POLLIN)
            .multi(true)
            .build();
        // SAFETY: the entry refers only to ring k's eventfd, which the loop keeps open until
        // its rings go (after every operation is drained or leaked).
        unsafe {
            self.conns.push_tagged(
                &mut self.ring,
                OP_RING_WAKE,
                u32::from(k),
                e,
                &mut core.stats.syscalls,
            )
        };
    }

    /// The ring the socket operations of connection `slot` go to, closing or not (the first
    /// ring for a free slot, where the ledger queues nothing anyway, and with one ring).
    fn ring_of(&mut self, slot: u32) -> u16 {
        if self.extra.is_empty() {
            return 0;
        }
        match self.conns.get_slot(slot) {
            Some((_, c)) => c.ring,
            None => 0,
        }
    }

    /// Queue operation `op` on connection `slot`: on its ring for a socket operation, on the
    /// first ring for a file operation (files are descriptors, not in any table).
    fn push_for(&mut self, core: &mut LoopCore, slot: u32, op: u8, e: squeue::Entry) {
        let k = match op {
            OP_FILE_OPEN | OP_FILE_STAT | OP_FILE_READ | OP_FILE_CLOSE => 0,
            _ => self.ring_of(slot),
        };
        let ring = ring_mut(&mut self.ring, &mut self.extra, k);
        // SAFETY: every entry built in this file for a connection refers only to its socket,
        // to buffers its `Conn` owns (the single-shot recv buffer, a file operation's `FileIo`,
        // whose registered buffer's mapping its `FixedBuf` keeps alive, and whose registration
        // the loop's `FixedBufs` keeps until no operation is in flight, or for good) or the loop
        // owns (the provided-buffer ring), and to descriptors that stay open while
        // the operation is in flight (the connection's file, closed only when no file operation
        // is in flight on it; the root, held by the loop, and forgotten open at exit if any
        // operation never completed); the ledger frees a `Conn` only when its close completes,
        // which waits for every operation on the slot, and the loop drains or leaks every
        // operation before the buffer ring goes.
        unsafe {
            self.conns
                .push_for(ring, slot, op, e, &mut core.stats.syscalls)
        };
    }

    /// Watch the waker with a multishot poll (an eventfd read would be punted to an io-wq
    /// worker thread); the eventfd itself is drained only when it fires, at shutdown.
    fn arm_wake(&mut self, core: &mut LoopCore) {
        use std::os::fd::AsFd;
        let fd = self.waker.as_fd().as_raw_fd();
        let e = opcode::PollAdd::new(types::Fd(fd), POLLIN)
            .multi(true)
            .build();
        self.push(core, OP_WAKE, e);
    }

    /// With `--fixed-files`: free slots in the table, and how many a multishot accept may take
    /// before the loop can stop it. An accept that finds the table full has already taken the
    /// connection off the listen queue, and the kernel then drops (resets) it; so near a full
    /// table only single-shot accepts run, one per free slot. A multishot accept takes at most
    /// the listen queue (`--backlog`) per turn, and its cancel is submitted before the next
    /// turn's accepts run, so it is kept only while more slots than that are free.
    fn fixed_room(&self) -> (usize, usize) {
        let free = match &self.tables {
            Some(t) => t.free_total(),
            None => self.fixed_cap.saturating_sub(self.conns.len()),
        };
        (free, self.args.backlog.max(0) as usize + 1)
    }

    /// Cancel whatever is still in flight and wait (briefly) for it, so that no buffer is freed
    /// while the kernel may still use it; leak what never completes.
    fn finish(&mut self, core: &mut LoopCore) {
        let UringIo {
            ring,
            bufs,
            extra,
            conns,
            fixed,
            bundle,
            ..
        } = self;
        let mut rings: Vec<(&mut Ring<'_>, &mut Option<BufRing<'_>>)> = vec![(ring, bufs)];
        rings.extend(extra.iter_mut().map(|x| (&mut x.ring, &mut x.bufs)));
        let left = conns.finish(&mut rings, *bundle, &mut core.stats.syscalls, |cqe| {
            // A connection accepted in the last moment: close it.
            let u = UserData::decode(cqe.user_data());
            if u.op == OP_ACCEPT && cqe.result() >= 0 && !*fixed {
                // SAFETY: a non-negative accept result (without --fixed-files) is a new
                // descriptor we own. Fixed files go with the ring.
                drop(unsafe { OwnedFd::from_raw_fd(cqe.result()) });
            }
            // A file opened in the last moment: close it (nobody will read it).
            if u.op == OP_FILE_OPEN && cqe.result() >= 0 {
                // SAFETY: a non-negative openat2 result is a new descriptor we own (files are
                // never opened into the fixed-file table).
                drop(unsafe { OwnedFd::from_raw_fd(cqe.result()) });
            }
        });
        if left > 0 {
            tracing::warn!("ringlab-server: {left} io_uring operations still in flight at exit; leaking their buffers");
            // An open that never completed may still resolve its path beneath the root.
            if let Some(root) = self.root.take() {
                std::mem::forget(root);
            }
            // A read that never completed may still write into its registered buffer.
            if let Some(f) = self.fixed_bufs.take() {
                f.leak();
            }
        }
    }

    fn handle(&mut self, core: &mut LoopCore, cqe: cqueue::Entry) {
        let (ud, res, flags) = (cqe.user_data(), cqe.result(), cqe.flags());
        match self.conns.complete(ud, res, flags) {
            Done::Op {
                ud,
                res,
                flags,
                more,
            } => self.on_op(core, ud, res, flags, more),
            Done::Returned { slot, res } => {
                // The kernel no longer reads the buffer of that zero-copy send.
                if res as u32 & ZC_COPIED != 0 {
                    core.stats.zc_copied += 1;
                }
                self.pump(core, slot);
            }
            Done::Pump(slot) => self.pump(core, slot),
            Done::Closed(c) => {
                core.stats.closed += 1;
                // `--fixed-rings`: its table index is free again (the close took it out).
                if let (Some(t), Sock::Fixed(i)) = (self.tables.as_mut(), c.sock) {
                    t.give_back(c.ring, i);
                }
                // A fixed-file slot is free again.
                if self.accept_full && core.accept.retry_at.is_none() {
                    self.accept(core);
                }
            }
            Done::Nothing => {}
        }
    }

    fn on_op(&mut self, core: &mut LoopCore, u: UserData, res: i32, flags: u32, more: bool) {
        match u.op {
            OP_ACCEPT => self.on_accept(core, res, more),
            OP_RECV => self.on_recv(core, u, res, flags, more),
            OP_SEND => self.on_send(core, u, res),
            OP_LENT => {
                // A zero-copy send's result; with F_MORE its notification follows, and the
                // ledger holds the buffer until then.
                core.stats.zc_sends += 1;
                if zc_refused(res) {
                    self.zc_fallback(core, u, res);
                } else {
                    self.on_send(core, u, res);
                }
            }
            OP_SHUTDOWN => {
                if let Some(c) = self.conns.get(u.slot, u.gen) {
                    core.write_shutdown(&mut c.core);
                    self.pump(core, u.slot);
                }
            }
            OP_CANCEL_RECV => {
                if let Some(c) = self.conns.get(u.slot, u.gen) {
                    c.recv_cancel_inflight = false;
                    self.pump(core, u.slot);
                }
            }
            OP_WAKE => {
                if res >= 0 {
                    core.stats.syscalls.other += 1;
                    self.waker.drain();
                }
                if !more && res != -rustix::io::Errno::CANCELED.raw_os_error() {
                    self.arm_wake(core);
                }
            }
            OP_RING_WAKE => {
                // Ring `u.gen` has task work or completions: entered in this turn's dispatch.
                let k = u.gen as usize;
                if (1..=self.extra.len()).contains(&k) {
                    self.extra[k - 1].flagged = true;
                    if !more && res != -rustix::io::Errno::CANCELED.raw_os_error() {
                        self.arm_ring_wake(core, k as u16);
                    }
                }
            }
            OP_CANCEL_ACCEPT => {}
            OP_FILE_OPEN | OP_FILE_STAT | OP_FILE_READ => self.on_file(core, u, res),
            // A file's close: nobody waits for it, and there is nothing to do if it failed.
            OP_FILE_CLOSE => {}
            _ => tracing::warn!("ringlab-server: unexpected completion {u:?} res={res}"),
        }
    }

    /// Stop the multishot accept (once): for a back-off, --max-conns, shutdown, or to go
    /// single-shot near a full fixed-file table.
    fn cancel_accept(&mut self, core: &mut LoopCore) {
        if !self.accept_armed || self.accept_cancel_sent {
            return;
        }
        self.accept_cancel_sent = true;
        let target = user_data(OP_ACCEPT, NO_SLOT, 0);
        let e = opcode::AsyncCancel::new(target).build();
        self.push(core, OP_CANCEL_ACCEPT, e);
    }

    fn on_accept(&mut self, core: &mut LoopCore, res: i32, more: bool) {
        if !more {
            self.accept_armed = false;
            self.accept_cancel_sent = false;
        }
        if res >= 0 && self.fixed {
            // A fixed-file index the kernel allocated: the connection lives in the ring's table.
            let i = res as u32;
            if self.stopped {
                // Accepted in the last moment: answer nothing, just close it.
                self.conns
                    .close_unowned(&mut self.ring, Sock::Fixed(i), &mut core.stats.syscalls);
            } else {
                match core.admit() {
                    Some(conn) => {
                        let (slot, _) = self.conns.insert(Conn::new(None, Sock::Fixed(i), conn));
                        self.pump(core, slot);
                    }
                    // At --max-conns (echo): held in the table until a slot frees.
                    None => self.held_fixed.push_back(i),
                }
                if !core.may_accept() {
                    self.cancel_accept(core);
                }
            }
        } else if res >= 0 {
            // SAFETY: a non-negative accept result is a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(res) };
            if self.stopped {
                core.stats.syscalls.close += 1;
                drop(fd);
            } else {
                match core.admit() {
                    Some(conn) => self.add(core, fd, conn),
                    // At --max-conns (echo): completions of the multishot already under way.
                    None => core.hold(fd),
                }
                if !core.may_accept() {
                    self.cancel_accept(core);
                }
            }
        } else {
            if res == -rustix::io::Errno::CANCELED.raw_os_error() {
                // Stopped for a back-off (it re-arms when that is over), for shutdown, or to
                // go single-shot near a full fixed-file table (re-arm at once).
                if !self.accept_armed && core.accept.retry_at.is_none() {
                    self.accept(core);
                }
                return;
            }
            if core.accept_failed(&io::Error::from_raw_os_error(-res)) {
                if more {
                    // Stop the multishot accept until the back-off is over.
                    self.cancel_accept(core);
                }
                return;
            }
        }
        if (self.fixed || self.tables.is_some()) && self.accept_armed && self.accept_multi {
            let (free, burst) = self.fixed_room();
            if free <= burst {
                // Near a full table: single-shot accepts from here (re-armed on the cancel).
                self.cancel_accept(core);
            }
        }
        if !self.accept_armed && core.accept.retry_at.is_none() {
            if self.accept_multi {
                core.stats.multishot_rearms += u64::from(!self.stopped);
            }
            self.accept(core);
        }
    }

    fn on_recv(&mut self, core: &mut LoopCore, u: UserData, res: i32, flags: u32, more: bool) {
        let UringIo {
            conns,
            bufs,
            extra,
            cur,
            pieces,
            ..
        } = self;
        // The completion came from ring `cur`: its buffers are that ring's.
        let bufs = match *cur {
            0 => bufs,
            k => &mut extra[usize::from(k) - 1].bufs,
        };
        // The provided buffers this completion filled, as pieces of bytes in order (a bundle's
        // several, an incremental buffer's next part).
        pieces.clear();
        let picked = match (cqueue::buffer_select(flags), bufs.as_mut()) {
            (Some(bid), Some(b)) => {
                let n = usize::try_from(res).unwrap_or(0);
                // SAFETY: `flags` and `res` are this recv completion's, seen once.
                unsafe { b.pieces(bid, n, self.bundle, cqueue::buffer_more(flags), pieces) };
                Some(b)
            }
            _ => None,
        };
        let Some(c) = conns.get(u.slot, u.gen) else {
            // A completion for a connection already gone: give its buffers back, but none the
            // kernel goes on filling.
            if let Some(b) = picked {
                for p in pieces.iter().filter(|p| p.done) {
                    b.recycle(p.bid);
                }
            }
            return;
        };
        if !more {
            c.recv = Recv::Idle;
        }
        if res > 0 {
            let n = res as usize;
            match (picked, c.recv_buf.as_ref()) {
                (Some(b), _) => {
                    if pieces.len() > 1 {
                        core.stats.recv_bundles += 1;
                    }
                    if pieces.iter().any(|p| !p.done) {
                        core.stats.buf_partial += 1;
                    }
                    // Every id is read before any is recycled: recycling republishes ring slots.
                    for p in pieces.iter() {
                        core.recv(&mut c.core, b.piece(p));
                    }
                    for p in pieces.iter().filter(|p| p.done) {
                        b.recycle(p.bid);
                    }
                }
                (None, Some(own)) => core.recv(&mut c.core, &own[..n.min(own.len())]),
                _ => {
                    tracing::warn!("ringlab-server: recv completion without a buffer; closing");
                    core.conn_error(&mut c.core);
                }
            }
        } else if res == 0 {
            core.peer_eof(&mut c.core);
        } else {
            match rustix::io::Errno::from_raw_os_error(-res) {
                rustix::io::Errno::NOBUFS => core.stats.enobufs += 1,
                rustix::io::Errno::CANCELED => {}
                // A kernel without the multishot byte limit rejects it: arm without from now on.
                rustix::io::Errno::INVAL if self.mshot_limit && c.multishot => {
                    self.mshot_limit = false;
                    tracing::info!("ringlab-server: this kernel has no multishot recv byte limit; using single-shot receives under backpressure instead");
                }
                _ => core.conn_error(&mut c.core),
            }
        }
        self.pump(core, u.slot);
    }

    fn on_send(&mut self, core: &mut LoopCore, u: UserData, res: i32) {
        let Some(c) = self.conns.get(u.slot, u.gen) else {
            return;
        };
        let Some((buf, off)) = c.send.take() else {
            return;
        };
        if res >= 0 {
            let off = off + res as usize;
            core.sent(&mut c.core, res as usize);
            if off < buf.len() {
                core.stats.short_sends += 1;
                self.submit_send(core, u.slot, buf, off);
            }
        } else {
            if res != -rustix::io::Errno::CANCELED.raw_os_error() {
                core.conn_error(&mut c.core);
            }
            c.core.session.on_send_failed();
        }
        self.pump(core, u.slot);
    }

    /// A zero-copy send the kernel refused for want of memory to pin its pages (the locked-
    /// memory limit, or the socket's option memory): nothing was sent. Say so once, stop
    /// zero-copy sends on this loop (the next would be refused as well), and send the same
    /// bytes again the copying way, so that the connection loses nothing.
    fn zc_fallback(&mut self, core: &mut LoopCore, u: UserData, res: i32) {
        if self.send_zc > 0 {
            tracing::warn!(
                "ringlab-server: loop on CPU {}: a zero-copy send was refused ({}): raise the locked-memory limit (ulimit -l, LimitMEMLOCK=) or net.core.optmem_max; this loop sends by copying from now on",
                core.stats.cpu,
                std::io::Error::from_raw_os_error(-res)
            );
            self.send_zc = 0;
        }
        core.stats.zc_fallbacks += 1;
        let Some(c) = self.conns.get(u.slot, u.gen) else {
            return;
        };
        let Some((buf, off)) = c.send.take() else {
            return;
        };
        self.submit_send(core, u.slot, buf, off);
    }

    fn submit_send(&mut self, core: &mut LoopCore, slot: u32, buf: Bytes, off: usize) {
        let Some((_, c)) = self.conns.open(slot) else {
            return;
        };
        let len = (buf.len() - off).min(u32::MAX as usize) as u32;
        // SAFETY (pointer arithmetic): `off < buf.len()`, so the pointer stays in the buffer.
        let ptr = buf[off..].as_ptr();
        let zc = self.send_zc > 0 && len as usize >= self.send_zc;
        let (sock, c_ring) = (c.sock, c.ring);
        let lend = zc.then(|| buf.clone());
        c.send = Some((buf, off));
        if let Some(buf) = lend {
            let e = on_sock!(sock, |t| opcode::SendZc::new(t, ptr, len)
                .flags(libc_flags::MSG_NOSIGNAL)
                .build());
            let sc = &mut core.stats.syscalls;
            // SAFETY: the entry reads `len` bytes of `buf` from `ptr`; the ledger holds `buf`
            // (a reference-counted buffer whose bytes never move) under this send's own
            // identity until its last completion, the notification; the socket is the
            // connection's, open until its close, which waits for this send.
            unsafe {
                self.conns.push_lent(
                    ring_mut(&mut self.ring, &mut self.extra, c_ring),
                    slot,
                    buf,
                    e,
                    sc,
                )
            };
        } else {
            let e = on_sock!(sock, |t| opcode::Send::new(t, ptr, len)
                .flags(libc_flags::MSG_NOSIGNAL)
                .build());
            self.push_for(core, slot, OP_SEND, e);
        }
    }

    /// Take the session's file operations and lower them to ring operations: at once while
    /// there is room (see [`Self::file_room`]) and nothing waits, else into the loop's queue.
    /// Returns whether one was answered without the ring (from the cache, or it could not be
    /// performed), so that the session must be looked at again.
    fn take_file_ops(&mut self, core: &mut LoopCore, slot: u32) -> bool {
        loop {
            let Some((_, c)) = self.conns.open(slot) else {
                return false;
            };
            let Some(op) = c.core.session.take_file_op() else {
                return false;
            };
            // A hot file: its open and the stat after it need no ring operation.
            let op = match self.cache.answer(op, core.clock.now(), &mut c.cache_note) {
                Ok(Cached::Opened(f)) => {
                    c.file = Some(f);
                    core.file_cached(&mut c.core);
                    self.release_retired(core);
                    return true;
                }
                Ok(Cached::Stat(meta)) => {
                    core.file_done(&mut c.core, FileDone::Stat(Ok(meta)));
                    return true;
                }
                Err(op) => op,
            };
            self.release_retired(core);
            let Some((gen, c)) = self.conns.open(slot) else {
                return false;
            };
            if op == FileOp::Close {
                // Fire and forget: the descriptor is given up to a ring close if this was its
                // last owner. Nothing in flight or queued of this connection uses it: the
                // session asks for a close only once every operation on the file was answered,
                // and the next `Open` is of a new file.
                if let Some(f) = c.file.take() {
                    self.close_file(core, f);
                }
                continue;
            }
            debug_assert!(
                c.file_io.is_none() && !c.file_queued,
                "one file operation at a time"
            );
            if self.file_queue.is_empty() && self.file_room(&op) {
                if let Err(done) = self.submit_file(core, slot, op) {
                    if let Some((_, c)) = self.conns.open(slot) {
                        core.file_done(&mut c.core, done);
                    }
                    return true;
                }
            } else if let Some((_, c)) = self.conns.open(slot) {
                c.file_queued = true;
                core.stats.file_queued += 1;
                self.file_queue.push_back((slot, gen, op));
            }
        }
    }

    /// Submit file operation `op` of connection `slot` (counted against `--file-inflight`); or
    /// the answer for the session if it cannot be performed.
    fn submit_file(&mut self, core: &mut LoopCore, slot: u32, op: FileOp) -> Result<(), FileDone> {
        let errno = |e: rustix::io::Errno| e.raw_os_error();
        let Some((_, c)) = self.conns.open(slot) else {
            return Ok(());
        };
        let file = c.file.as_ref().map(|f| types::Fd(f.as_raw_fd()));
        let (code, e, io) = match op {
            FileOp::Open { path } => {
                let Some(root) = self.root.as_ref() else {
                    return Err(FileDone::Opened(Err(errno(rustix::io::Errno::BADF))));
                };
                // A NUL is refused by the session's path check already.
                let Ok(path) = CString::new(path) else {
                    return Err(FileDone::Opened(Err(errno(rustix::io::Errno::INVAL))));
                };
                let how = Box::new(
                    types::OpenHow::new()
                        .flags(u64::from(files::open_flags().bits()))
                        .resolve(files::resolve_flags().bits()),
                );
                let e =
                    opcode::OpenAt2::new(types::Fd(root.as_raw_fd()), path.as_ptr(), &*how).build();
                let io = FileIo::Open {
                    _path: path,
                    _how: how,
                };
                (OP_FILE_OPEN, e, io)
            }
            FileOp::Stat => {
                let Some(fd) = file else {
                    return Err(FileDone::Stat(Err(errno(rustix::io::Errno::BADF))));
                };
                let mut buf = Box::new(MaybeUninit::<rustix::fs::Statx>::uninit());
                let e = opcode::Statx::new(fd, EMPTY_PATH.as_ptr(), buf.as_mut_ptr().cast())
                    .flags(AT_EMPTY_PATH)
                    .mask(files::statx_mask().bits())
                    .build();
                (OP_FILE_STAT, e, FileIo::Stat(buf))
            }
            FileOp::Read { offset, len } => {
                let Some(fd) = file else {
                    return Err(FileDone::Read(Err(errno(rustix::io::Errno::BADF))));
                };
                // `file_room` saw a free registered buffer (with --file-fixed-bufs); were there
                // none, a fresh buffer would do as well.
                let mut buf = match self.fixed_bufs.as_ref().and_then(FixedBufs::take) {
                    Some(b) => ReadBuf::Fixed(b),
                    None => ReadBuf::Heap(BytesMut::with_capacity(len.min(u32::MAX as usize))),
                };
                let e = read_entry(fd, &mut buf, offset, len);
                let io = FileIo::Read {
                    buf,
                    offset,
                    len,
                    retried: false,
                };
                (OP_FILE_READ, e, io)
            }
            FileOp::Close => return Ok(()),
        };
        c.file_io = Some(io);
        self.file_inflight += 1;
        self.push_for(core, slot, code, e);
        Ok(())
    }

    /// Whether `op` may be submitted now: fewer than `--file-inflight` in flight, and for a read
    /// with `--file-fixed-bufs`, a free registered buffer.
    fn file_room(&self, op: &FileOp) -> bool {
        self.file_inflight < self.file_max
            && (!matches!(op, FileOp::Read { .. })
                || self.fixed_bufs.as_ref().is_none_or(FixedBufs::has_free))
    }

    /// Submit queued file operations, oldest first, while the oldest has room (see
    /// [`Self::file_room`]); those of connections closed meanwhile are dropped. Returns whether
    /// one was answered without the ring (it could not be performed).
    fn file_next(&mut self, core: &mut LoopCore) -> bool {
        let mut answered = false;
        loop {
            let Some((slot, gen, op)) = self.file_queue.front() else {
                return answered;
            };
            let (slot, gen) = (*slot, *gen);
            let live = matches!(self.conns.open(slot), Some((g, c)) if g == gen && c.file_queued);
            if live && !self.file_room(op) {
                return answered;
            }
            let Some((_, _, op)) = self.file_queue.pop_front() else {
                return answered;
            };
            if !live {
                continue;
            }
            if let Some((_, c)) = self.conns.open(slot) {
                c.file_queued = false;
            }
            if let Err(done) = self.submit_file(core, slot, op) {
                if let Some((_, c)) = self.conns.open(slot) {
                    core.file_done(&mut c.core, done);
                }
                self.pump(core, slot);
                answered = true;
            }
        }
    }

    /// A file operation of `(u.slot, u.gen)` completed: hand its outcome to the session, unless
    /// the connection is closing (then only keep what must not leak: an opened file is kept as
    /// the connection's, which its close closes); then let a queued operation take its room.
    fn on_file(&mut self, core: &mut LoopCore, u: UserData, res: i32) {
        let Some(c) = self.conns.get(u.slot, u.gen) else {
            // Not expected: the ledger keeps a slot until every operation on it completed.
            // Still, an opened file must not leak.
            if u.op == OP_FILE_OPEN && res >= 0 {
                // SAFETY: a non-negative openat2 result is a new descriptor, ours.
                drop(unsafe { OwnedFd::from_raw_fd(res) });
            }
            self.file_inflight = self.file_inflight.saturating_sub(1);
            self.file_next(core);
            return;
        };
        let alive = c.core.session.action() != Action::Close;
        let done = match (c.file_io.take(), u.op) {
            (Some(FileIo::Open { .. }), OP_FILE_OPEN) => {
                if res >= 0 {
                    // SAFETY: a non-negative openat2 result is a new descriptor, ours.
                    c.file = Some(Arc::new(unsafe { OwnedFd::from_raw_fd(res) }));
                    FileDone::Opened(Ok(()))
                } else {
                    FileDone::Opened(Err(-res))
                }
            }
            (Some(FileIo::Stat(buf)), OP_FILE_STAT) => {
                if res >= 0 {
                    // SAFETY: the statx succeeded, so the kernel wrote the whole `struct statx`
                    // (the size checked above) into the buffer; every bit pattern is valid for
                    // its integer fields.
                    let st = unsafe { buf.assume_init() };
                    let meta = files::meta_of(st.stx_mode, st.stx_size, st.stx_mtime.tv_sec);
                    FileDone::Stat(Ok(meta))
                } else {
                    FileDone::Stat(Err(-res))
                }
            }
            (
                Some(FileIo::Read {
                    mut buf,
                    offset,
                    len,
                    retried,
                }),
                OP_FILE_READ,
            ) => {
                let again = -rustix::io::Errno::AGAIN.raw_os_error();
                if res == again && !retried && alive {
                    if let Some(fd) = c.file.as_ref().map(|f| types::Fd(f.as_raw_fd())) {
                        // A file opened O_NONBLOCK whose filesystem cannot read without
                        // blocking fails with -EAGAIN instead of being retried by the kernel:
                        // retry once in an io-wq worker (IOSQE_ASYNC), where it may block.
                        let e = read_entry(fd, &mut buf, offset, len).flags(squeue::Flags::ASYNC);
                        c.file_io = Some(FileIo::Read {
                            buf,
                            offset,
                            len,
                            retried: true,
                        });
                        self.push_for(core, u.slot, OP_FILE_READ, e);
                        return;
                    }
                }
                match buf {
                    _ if res < 0 => FileDone::Read(Err(-res)),
                    ReadBuf::Heap(mut buf) => {
                        let n = (res as usize).min(buf.capacity());
                        // SAFETY: the read completed and wrote its first `res` bytes into the
                        // spare capacity it was given (never more than the capacity).
                        unsafe { buf.set_len(n) };
                        FileDone::Read(Ok(buf.freeze()))
                    }
                    ReadBuf::Fixed(buf) => {
                        if alive {
                            core.stats.file_fixed_reads += 1;
                        }
                        // SAFETY: the read lent this buffer has completed (its completion is
                        // the one being handled), so the kernel no longer writes into it.
                        FileDone::Read(Ok(unsafe { buf.into_bytes(res as usize) }))
                    }
                }
            }
            (io, op) => {
                tracing::warn!(
                    "ringlab-server: file completion {op} does not match the operation in flight; closing the connection"
                );
                c.file_io = io;
                core.conn_error(&mut c.core);
                self.file_inflight = self.file_inflight.saturating_sub(1);
                self.file_next(core);
                return self.pump(core, u.slot);
            }
        };
        self.file_inflight -= 1;
        if alive {
            // A regular file opened and stated for a missed open goes into the cache.
            self.cache.stated(&mut c.cache_note, c.file.as_ref(), &done);
            core.file_done(&mut c.core, done);
        }
        self.release_retired(core);
        self.file_next(core);
        self.pump(core, u.slot);
    }

    /// The connection is closing: forget its queued file operation, and close its file unless
    /// an operation on it is still in flight (then once that completes: the completion pumps
    /// the slot again, and the ledger holds back the slot's close until then).
    fn end_files(&mut self, core: &mut LoopCore, slot: u32) {
        let Some((_, c)) = self.conns.open(slot) else {
            return;
        };
        let queued = std::mem::take(&mut c.file_queued);
        let file = if c.file_io.is_none() {
            c.file.take()
        } else {
            None
        };
        if queued {
            self.file_queue.retain(|q| q.0 != slot);
        }
        if let Some(f) = file {
            self.close_file(core, f);
        }
    }

    /// Let go of a file: closed through the ring (no answer is awaited) if this was its last
    /// reference; else the cache or another connection still serves it, and closes it later.
    fn close_file(&mut self, core: &mut LoopCore, f: Arc<OwnedFd>) {
        let Some(f) = Arc::into_inner(f) else {
            return;
        };
        let e = opcode::Close::new(types::Fd(f.into_raw_fd())).build();
        // SAFETY: a close refers to no memory; the descriptor was given up to it here, and no
        // operation in flight uses it: a file operation is in flight only for a connection
        // that holds a reference to its file, this was the last reference, and its last
        // holder had none in flight on it (callers let go of a file only then).
        unsafe {
            self.conns
                .push(&mut self.ring, OP_FILE_CLOSE, e, &mut core.stats.syscalls)
        };
    }

    /// Let go of the files the cache let go of (evicted, expired, replaced).
    fn release_retired(&mut self, core: &mut LoopCore) {
        while let Some(f) = self.cache.take_retired() {
            self.close_file(core, f);
        }
    }

    /// Bring the connection's operations in line with what its session wants.
    fn pump(&mut self, core: &mut LoopCore, slot: u32) {
        let Some((gen, c)) = self.conns.open(slot) else {
            return;
        };
        let sock = c.sock;
        match c.core.session.action() {
            Action::Close => {
                self.end_files(core, slot);
                // Cancel what is in flight on the socket, then (once it all completed, file
                // operations included) close it; the slot is freed when the close completes.
                let k = self.ring_of(slot);
                let ring = ring_mut(&mut self.ring, &mut self.extra, k);
                self.conns.close(ring, slot, &mut core.stats.syscalls);
                return;
            }
            Action::ShutdownWrite => {
                if !c.shutdown_sent && c.send.is_none() && c.fd.is_none() {
                    // A fixed file has no descriptor for shutdown(2): the ring does it.
                    c.shutdown_sent = true;
                    let e = on_sock!(sock, |t| opcode::Shutdown::new(t, libc_flags::SHUT_WR)
                        .build());
                    self.push_for(core, slot, OP_SHUTDOWN, e);
                } else if !c.shutdown_sent && c.send.is_none() {
                    // A direct shutdown(2), not IORING_OP_SHUTDOWN: the kernel always runs that
                    // opcode in an io-wq worker thread (its prep forces async), a thread hop
                    // per graceful close for what is a cheap, non-blocking call.
                    c.shutdown_sent = true;
                    core.stats.syscalls.shutdown += 1;
                    if let Some(fd) = c.fd.as_ref() {
                        let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Write);
                    }
                    core.write_shutdown(&mut c.core);
                    // The session moved on (lingering, or done): act on its new state.
                    return self.pump(core, slot);
                }
            }
            Action::Continue => {}
        }
        if self.take_file_ops(core, slot) {
            // Answered without the ring: the session may want something else now.
            return self.pump(core, slot);
        }
        let Some((_, c)) = self.conns.open(slot) else {
            return;
        };
        if c.send.is_none() {
            if let Some(b) = c.core.session.take_output() {
                self.submit_send(core, slot, b, 0);
            }
        }
        let Some((_, c)) = self.conns.open(slot) else {
            return;
        };
        let want = c.core.session.wants_read(&core.cfg);
        let pending = c.core.session.pending_output();
        let high_water = core.cfg.out_high_water;
        match c.recv {
            Recv::Idle if want && !c.recv_cancel_inflight => {
                // What the connection may still take in before backpressure: a multishot recv
                // is limited to it, so a slow reader never holds more than the mark.
                let room = high_water
                    .saturating_sub(pending + c.core.session.buffered_input())
                    .max(1);
                let e = match &mut c.recv_buf {
                    // Kernels with the multishot byte limit: the multishot ends by itself once
                    // it has delivered `room` bytes, and is re-armed with the room left then.
                    _ if self.bufs.is_some() && self.mshot_limit => {
                        c.multishot = true;
                        let e = recv_multi(sock, self.bundle);
                        with_optlen(e, room.min(u32::MAX as usize) as u32)
                    }
                    // No limit and nothing owed to the peer: an unlimited multishot.
                    _ if self.bufs.is_some() && pending == 0 => {
                        c.multishot = true;
                        recv_multi(sock, self.bundle)
                    }
                    // No limit and output waiting on the peer: one buffer at a time, so that at
                    // most one buffer arrives after the session decides to stop reading.
                    _ if self.bufs.is_some() => {
                        c.multishot = false;
                        let len = self.buf_size as u32;
                        on_sock!(sock, |t| opcode::Recv::new(t, std::ptr::null_mut(), len)
                            .buf_group(BGID)
                            .build()
                            .flags(squeue::Flags::BUFFER_SELECT))
                    }
                    Some(own) => {
                        let (p, n) = (own.as_mut_ptr(), own.len() as u32);
                        on_sock!(sock, |t| opcode::Recv::new(t, p, n).build())
                    }
                    None => {
                        let mut own = vec![0u8; self.buf_size].into_boxed_slice();
                        let (p, n) = (own.as_mut_ptr(), own.len() as u32);
                        let e = on_sock!(sock, |t| opcode::Recv::new(t, p, n).build());
                        c.recv_buf = Some(own);
                        e
                    }
                };
                c.recv = Recv::Armed;
                self.push_for(core, slot, OP_RECV, e);
            }
            // Stop a multishot recv when the session stops reading (backpressure, closing).
            // Without the kernel's byte limit, also at a quarter of the high-water mark: such a
            // multishot can deliver many buffers in one turn (the kernel retries it while data
            // and buffers last), so it is traded for single-shot receives well before the mark.
            // Bytes already on their way are still delivered and buffered by the session.
            Recv::Armed
                if c.multishot
                    && (!want || (!self.mshot_limit && pending >= high_water / 4))
                    && !c.recv_cancel_inflight =>
            {
                c.recv_cancel_inflight = true;
                let target = user_data(OP_RECV, slot, gen);
                let e = opcode::AsyncCancel::new(target).build();
                self.push_for(core, slot, OP_CANCEL_RECV, e);
            }
            _ => {}
        }
        let Some((_, c)) = self.conns.open(slot) else {
            return;
        };
        // A pause: reading stops because the peer has not taken its output.
        let paused = !want && pending >= high_water;
        if paused && !c.paused {
            core.stats.backpressure_pauses += 1;
        }
        c.paused = paused;
        core.sync_timer(&mut c.core, timer_key(slot, gen));
    }
}

/// A read from `fd` at `offset` of at most `len` bytes into `buf`: the spare capacity of a
/// fresh buffer, or a registered buffer (`READ_FIXED`, which names it by index; its address and
/// length stay within the registered range).
fn read_entry(fd: types::Fd, buf: &mut ReadBuf, offset: u64, len: usize) -> squeue::Entry {
    match buf {
        ReadBuf::Heap(b) => {
            let n = b.capacity().min(len).min(u32::MAX as usize) as u32;
            opcode::Read::new(fd, b.spare_capacity_mut().as_mut_ptr().cast(), n)
                .offset(offset)
                .build()
        }
        ReadBuf::Fixed(b) => {
            let n = b.capacity().min(len).min(u32::MAX as usize) as u32;
            opcode::ReadFixed::new(fd, b.as_mut_ptr(), n, b.index())
                .offset(offset)
                .build()
        }
    }
}

/// A multishot recv into the provided-buffer ring, as a bundle or not.
fn recv_multi(sock: Sock, bundle: bool) -> squeue::Entry {
    if bundle {
        on_sock!(sock, |t| opcode::RecvMultiBundle::new(t, BGID).build())
    } else {
        on_sock!(sock, |t| opcode::RecvMulti::new(t, BGID).build())
    }
}

/// Flag values the kernel interface needs, taken from rustix's definitions.
mod libc_flags {
    pub const SOCK_CLOEXEC: i32 = rustix::net::SocketFlags::CLOEXEC.bits() as i32;
    pub const MSG_NOSIGNAL: i32 = rustix::net::SendFlags::NOSIGNAL.bits() as i32;
    pub const SHUT_WR: i32 = rustix::net::Shutdown::Write as i32;
}
