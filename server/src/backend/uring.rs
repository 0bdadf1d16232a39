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
//!
//! Ownership: a connection slot, its fd, its send buffer and its single-shot recv buffer stay
//! alive while any operation on them is in flight (`Conn::inflight`); the slot is freed only
//! when its close completes. User data encodes (op, slot generation, slot).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types};
use ringlab_proto::Action;
use ringlab_runtime::slab::Slab;
use ringlab_runtime::stats::SyscallCounters;
use ringlab_runtime::uring::{
    build_ring, BufRing, Piece, Ring, RingConfig, SqPoll, UserData, PBUF_RING_INC,
};

use crate::core::{
    accept_error_needs_backoff, timer_key, timer_key_parts, ConnCore, LoopCore, LoopCtx,
};
use crate::stats::LoopStats;

const OP_ACCEPT: u8 = 1;
const OP_RECV: u8 = 2;
const OP_SEND: u8 = 3;
const OP_CLOSE: u8 = 5;
const OP_CANCEL_RECV: u8 = 6;
const OP_CANCEL_FD: u8 = 7;
const OP_WAKE: u8 = 8;
const OP_CANCEL_ACCEPT: u8 = 9;
const OP_CANCEL_ANY: u8 = 10;
const OP_SHUTDOWN: u8 = 11;
const OP_SEND_ZC: u8 = 12;

const NO_SLOT: u32 = u32::MAX;
/// `IORING_NOTIF_USAGE_ZC_COPIED`: set in a zero-copy notification's result when the kernel
/// copied the data after all.
const ZC_COPIED: u32 = 1 << 31;
const POLLIN: u32 = rustix::event::PollFlags::IN.bits() as u32;
const BGID: u16 = 0;

fn ud(op: u8, slot: u32, gen: u32) -> u64 {
    UserData { op, gen, slot }.encode()
}

/// How operations name a connection's socket: a descriptor, or an index in the ring's
/// fixed-file table (`--fixed-files`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Sock {
    Fd(RawFd),
    Fixed(u32),
}

/// Build an entry for `$sock`, with `$t` bound to `types::Fd` or `types::Fixed` (the io-uring
/// crate takes either, but its target type is private, so the choice is made here).
macro_rules! on_sock {
    ($sock:expr, |$t:ident| $build:expr) => {
        match $sock {
            Sock::Fd(fd) => {
                let $t = types::Fd(fd);
                $build
            }
            Sock::Fixed(i) => {
                let $t = types::Fixed(i);
                $build
            }
        }
    };
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Recv {
    Idle,
    Armed,
}

struct Conn {
    /// The socket, when it is a descriptor; `None` for a fixed file.
    fd: Option<OwnedFd>,
    sock: Sock,
    /// The close has been submitted.
    closing: bool,
    core: ConnCore,
    recv: Recv,
    /// The armed recv is multishot (else single-shot, one buffer).
    multishot: bool,
    /// Reading is paused by backpressure (for the statistics).
    paused: bool,
    recv_cancel_inflight: bool,
    cancel_all_sent: bool,
    /// Single-shot recv mode only: this connection's own read buffer.
    recv_buf: Option<Box<[u8]>>,
    /// The send in flight: the buffer and how much of it was already sent.
    send: Option<(Bytes, usize)>,
    /// Zero-copy sends whose bytes the kernel may still read: held until their notification.
    zc_held: std::collections::VecDeque<Bytes>,
    shutdown_sent: bool,
    /// Operations in flight on this connection (multishot recv counts once).
    inflight: u32,
}

impl Conn {
    fn new(fd: Option<OwnedFd>, sock: Sock, core: ConnCore) -> Conn {
        Conn {
            fd,
            sock,
            closing: false,
            core,
            recv: Recv::Idle,
            multishot: false,
            paused: false,
            recv_cancel_inflight: false,
            cancel_all_sent: false,
            recv_buf: None,
            send: None,
            zc_held: Default::default(),
            shutdown_sent: false,
            inflight: 0,
        }
    }
}

struct Loop<'r> {
    ctx: LoopCtx,
    core: LoopCore,
    ring: Ring<'r>,
    bufs: Option<BufRing>,
    conns: Slab<Conn>,
    accept_armed: bool,
    accept_cancel_sent: bool,
    /// A cancel of the multishot accept is in flight (back-off or --max-conns).
    shutting_down: bool,
    /// Operations in flight on the whole ring.
    ops: u64,
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
    held_fixed: std::collections::VecDeque<u32>,
    /// Sends of at least this many bytes are zero-copy (0: none).
    send_zc: usize,
    /// Multishot recvs are bundles.
    bundle: bool,
    /// Scratch list of the buffer pieces of one completion.
    pieces: Vec<Piece>,
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
    let setup = |e: io::Error, what: &str| io::Error::new(e.kind(), format!("{what}: {e}"));
    let mut uring = match build_ring(&rcfg) {
        Ok(r) => r,
        Err(e) => {
            let e = setup(e, "io_uring_setup");
            let _ = ctx.ready.send(Err(e.to_string()));
            return Err(e);
        }
    };
    let ring = match Ring::new(&mut uring, &rcfg) {
        Ok(r) => r,
        Err(e) => {
            let e = setup(e, "io_uring_register(RING_FDS)");
            let _ = ctx.ready.send(Err(e.to_string()));
            return Err(e);
        }
    };
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
        if let Err(e) = ring.submitter().register_files_sparse(n) {
            let e = setup(e, &format!("io_uring_register(FILES_SPARSE, {n})"));
            let _ = ctx.ready.send(Err(e.to_string()));
            return Err(e);
        }
        fixed_cap = n as usize;
    }
    if !a.napi_busy_poll.is_zero() {
        let mut napi = types::Napi::new()
            .set_busy_poll_timeout(a.napi_busy_poll.as_micros().min(u128::from(u32::MAX)) as u32);
        if let Err(e) = ring.submitter().register_napi(&mut napi) {
            let e = setup(e, "io_uring_register(NAPI)");
            let _ = ctx.ready.send(Err(e.to_string()));
            return Err(e);
        }
    }
    let bufs = if a.no_multishot_recv {
        None
    } else {
        let flags = if a.buf_incremental { PBUF_RING_INC } else { 0 };
        match BufRing::with_flags(ring.submitter(), BGID, a.buf_count, a.buf_size, flags) {
            Ok(b) => Some(b),
            Err(e) => {
                let e = setup(e, "io_uring_register(PBUF_RING)");
                let _ = ctx.ready.send(Err(e.to_string()));
                return Err(e);
            }
        }
    };
    let mut lp = Loop {
        core: LoopCore::new(&ctx),
        ctx,
        ring,
        bufs,
        conns: Slab::default(),
        accept_armed: false,
        accept_cancel_sent: false,
        shutting_down: false,
        ops: 0,
        multishot_accept: !a.no_multishot_accept,
        buf_size: a.buf_size as usize,
        mshot_limit: !a.no_recv_limit,
        fixed: a.fixed_files,
        fixed_cap,
        accept_multi: false,
        accept_full: false,
        held_fixed: Default::default(),
        send_zc: a.send_zc,
        bundle: a.recv_bundle,
        pieces: Vec::new(),
    };
    lp.core.stats.syscalls.io_uring_register += 1
        + u64::from(!a.no_register_ring_fd)
        + u64::from(a.fixed_files)
        + u64::from(!a.napi_busy_poll.is_zero());
    lp.arm_wake();
    lp.arm_accept();
    let _ = lp.ctx.ready.send(Ok(()));
    let r = lp.run();
    lp.finish();
    r.map(|()| {
        let mut s = lp.core.stats.clone();
        s.cq_overflows = lp.ring.cq_overflow_events;
        s
    })
}

impl Loop<'_> {
    /// Queue an entry whose resources the caller keeps alive until its final completion.
    fn push(&mut self, e: squeue::Entry) {
        push_to(
            &mut self.ring,
            &mut self.ops,
            &mut self.core.stats.syscalls,
            e,
        );
    }

    /// Watch the waker with a multishot poll (an eventfd read would be punted to an io-wq
    /// worker thread); the eventfd itself is drained only when it fires, at shutdown.
    fn arm_wake(&mut self) {
        let e = opcode::PollAdd::new(types::Fd(self.ctx.waker_fd()), POLLIN)
            .multi(true)
            .build()
            .user_data(ud(OP_WAKE, NO_SLOT, 0));
        self.push(e);
    }

    /// With `--fixed-files`: free slots in the table, and how many a multishot accept may take
    /// before the loop can stop it. An accept that finds the table full has already taken the
    /// connection off the listen queue, and the kernel then drops (resets) it; so near a full
    /// table only single-shot accepts run, one per free slot. A multishot accept takes at most
    /// the listen queue (`--backlog`) per turn, and its cancel is submitted before the next
    /// turn's accepts run, so it is kept only while more slots than that are free.
    fn fixed_room(&self) -> (usize, usize) {
        let free = self.fixed_cap.saturating_sub(self.conns.len());
        (free, self.ctx.args.backlog.max(0) as usize + 1)
    }

    fn arm_accept(&mut self) {
        if self.accept_armed || self.shutting_down {
            return;
        }
        // Connections accepted while at --max-conns go first, once there is room.
        while let Some((fd, core)) = self.core.unhold() {
            let sock = Sock::Fd(fd.as_raw_fd());
            let (slot, _) = self.conns.insert(Conn::new(Some(fd), sock, core));
            self.pump(slot);
        }
        while !self.held_fixed.is_empty() {
            let Some(core) = self.core.admit() else { break };
            let Some(i) = self.held_fixed.pop_front() else {
                break;
            };
            let (slot, _) = self.conns.insert(Conn::new(None, Sock::Fixed(i), core));
            self.pump(slot);
        }
        if !self.held_fixed.is_empty() || !self.core.may_accept() {
            return; // at --max-conns (echo): retried at `accept.retry_at`
        }
        let mut multishot = self.multishot_accept;
        if self.fixed {
            let (free, burst) = self.fixed_room();
            if free == 0 {
                self.accept_full = true;
                return;
            }
            multishot &= free > burst;
        }
        self.accept_full = false;
        let fd = types::Fd(self.ctx.listener.as_raw_fd());
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
        self.push(e.user_data(ud(OP_ACCEPT, NO_SLOT, 0)));
        self.accept_armed = true;
        self.accept_multi = multishot;
    }

    fn run(&mut self) -> io::Result<()> {
        let mut cqes: Vec<cqueue::Entry> = Vec::with_capacity(1024);
        loop {
            if !self.shutting_down && self.ctx.shutdown_requested() {
                self.start_shutdown();
            }
            if self.shutting_down {
                if self.conns.is_empty() {
                    return Ok(());
                }
                if self.core.grace_over() {
                    self.abort_all();
                    if self.core.grace_deadline.is_some_and(|d| {
                        self.core.clock.now() > d + std::time::Duration::from_secs(1)
                    }) {
                        return Ok(());
                    }
                }
            }
            let timeout = self.core.wait_timeout();
            self.ring
                .submit_and_wait(1, timeout, &mut self.core.stats.syscalls)?;
            self.core.tick();
            self.ring.reap(&mut cqes);
            for cqe in cqes.drain(..) {
                self.handle(cqe);
            }
            let expired = self.core.take_expired();
            for &(deadline, key) in &expired {
                let (slot, gen) = timer_key_parts(key);
                if let Some(c) = self.conns.get(slot, gen) {
                    if self.core.fire(&mut c.core, deadline) {
                        self.pump(slot);
                    }
                }
            }
            self.core.put_expired(expired);
            if !self.accept_armed && self.core.accept.retry_at.is_some() {
                let now = self.core.clock.now();
                if self.core.accept.ready(now) {
                    self.arm_accept();
                }
            }
        }
    }

    fn start_shutdown(&mut self) {
        self.shutting_down = true;
        self.core.begin_shutdown();
        if self.accept_armed {
            self.cancel_accept();
        }
        for slot in 0..self.conns.capacity_slots() {
            if let Some((_, c)) = self.conns.get_slot(slot) {
                c.core.session.begin_shutdown();
                self.pump(slot);
            }
        }
    }

    fn abort_all(&mut self) {
        for slot in 0..self.conns.capacity_slots() {
            if let Some((_, c)) = self.conns.get_slot(slot) {
                // Every connection, a fixed file (no descriptor) as much as any.
                c.core.session.abort();
                self.pump(slot);
            }
        }
    }

    /// Cancel whatever is still in flight and wait (briefly) for it, so that no buffer is freed
    /// while the kernel may still use it.
    fn finish(&mut self) {
        if self.ops > 0 {
            let e = opcode::AsyncCancel2::new(types::CancelBuilder::any())
                .build()
                .user_data(ud(OP_CANCEL_ANY, NO_SLOT, 0));
            self.push(e);
        }
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        let mut cqes = Vec::new();
        while self.ops > 0 && std::time::Instant::now() < until {
            let left = until.saturating_duration_since(std::time::Instant::now());
            if self
                .ring
                .submit_and_wait(1, Some(left), &mut self.core.stats.syscalls)
                .is_err()
            {
                break;
            }
            self.ring.reap(&mut cqes);
            for cqe in cqes.drain(..) {
                if !cqueue::more(cqe.flags()) {
                    self.ops -= 1;
                }
                // A connection accepted in the last moment: close it.
                let u = UserData::decode(cqe.user_data());
                if u.op == OP_ACCEPT && cqe.result() >= 0 && !self.fixed {
                    // SAFETY: a non-negative accept result (without --fixed-files) is a new
                    // descriptor we own. Fixed files go with the ring.
                    drop(unsafe { OwnedFd::from_raw_fd(cqe.result()) });
                }
                if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                    if let Some(b) = self.bufs.as_mut() {
                        b.recycle(bid);
                    }
                }
            }
        }
        if self.ops > 0 {
            // The kernel may still write into these buffers: leak them rather than free them.
            eprintln!(
                "ringlab-server: {} io_uring operations still in flight at exit; leaking their buffers",
                self.ops
            );
            std::mem::forget(self.bufs.take());
            for c in self.conns.drain() {
                std::mem::forget(c);
            }
        }
    }

    fn handle(&mut self, cqe: cqueue::Entry) {
        let u = UserData::decode(cqe.user_data());
        let res = cqe.result();
        let flags = cqe.flags();
        let more = cqueue::more(flags);
        if !more {
            self.ops -= 1;
        }
        match u.op {
            OP_ACCEPT => self.on_accept(res, more),
            OP_RECV => self.on_recv(u, res, flags, more),
            OP_SEND => self.on_send(u, res),
            OP_SEND_ZC => {
                if cqueue::notif(flags) {
                    // The kernel no longer reads the oldest zero-copy buffer.
                    if res as u32 & ZC_COPIED != 0 {
                        self.core.stats.zc_copied += 1;
                    }
                    if let Some(c) = self.conns.get(u.slot, u.gen) {
                        c.zc_held.pop_front();
                        c.inflight -= 1;
                        self.pump(u.slot);
                    }
                } else {
                    // The result; with F_MORE a notification follows and the buffer is held.
                    self.core.stats.zc_sends += 1;
                    if more {
                        if let Some(c) = self.conns.get(u.slot, u.gen) {
                            if let Some((b, _)) = &c.send {
                                c.zc_held.push_back(b.clone());
                                c.inflight += 1;
                            }
                        }
                    }
                    self.on_send(u, res);
                }
            }
            OP_SHUTDOWN => {
                if let Some(c) = self.conns.get(u.slot, u.gen) {
                    c.inflight -= 1;
                    self.core.write_shutdown(&mut c.core);
                    self.pump(u.slot);
                }
            }
            OP_CLOSE => {
                if self.conns.get(u.slot, u.gen).is_some() {
                    self.core.stats.closed += 1;
                    self.conns.remove(u.slot);
                    // A fixed-file slot is free again.
                    if self.accept_full && self.core.accept.retry_at.is_none() {
                        self.arm_accept();
                    }
                }
            }
            OP_CANCEL_RECV | OP_CANCEL_FD => {
                if let Some(c) = self.conns.get(u.slot, u.gen) {
                    c.inflight -= 1;
                    if u.op == OP_CANCEL_RECV {
                        c.recv_cancel_inflight = false;
                    }
                    self.pump(u.slot);
                }
            }
            OP_WAKE => {
                if res >= 0 {
                    self.core.stats.syscalls.other += 1;
                    self.ctx.waker.drain();
                }
                if !more && res != -rustix::io::Errno::CANCELED.raw_os_error() {
                    self.arm_wake();
                }
            }
            OP_CANCEL_ACCEPT | OP_CANCEL_ANY => {}
            _ => eprintln!("ringlab-server: unexpected completion {u:?} res={res}"),
        }
    }

    /// Stop the multishot accept (once): for a back-off, --max-conns, or to go single-shot
    /// near a full fixed-file table.
    fn cancel_accept(&mut self) {
        if !self.accept_armed || self.accept_cancel_sent {
            return;
        }
        self.accept_cancel_sent = true;
        let e = opcode::AsyncCancel::new(ud(OP_ACCEPT, NO_SLOT, 0))
            .build()
            .user_data(ud(OP_CANCEL_ACCEPT, NO_SLOT, 0));
        self.push(e);
    }

    fn on_accept(&mut self, res: i32, more: bool) {
        if !more {
            self.accept_armed = false;
            self.accept_cancel_sent = false;
        }
        if res >= 0 && self.fixed {
            // A fixed-file index the kernel allocated: the connection lives in the ring's table.
            let i = res as u32;
            if self.shutting_down {
                // Accepted in the last moment: answer nothing, just close it.
                let e = opcode::Close::new(types::Fixed(i))
                    .build()
                    .user_data(ud(OP_CLOSE, NO_SLOT, 0));
                self.push(e);
            } else {
                match self.core.admit() {
                    Some(core) => {
                        let (slot, _) = self.conns.insert(Conn::new(None, Sock::Fixed(i), core));
                        self.pump(slot);
                    }
                    // At --max-conns (echo): held in the table until a slot frees.
                    None => self.held_fixed.push_back(i),
                }
                if !self.core.may_accept() {
                    self.cancel_accept();
                }
            }
        } else if res >= 0 {
            // SAFETY: a non-negative accept result is a new descriptor that nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(res) };
            if self.shutting_down {
                self.core.stats.syscalls.close += 1;
                drop(fd);
            } else {
                match self.core.admit() {
                    Some(core) => {
                        let sock = Sock::Fd(fd.as_raw_fd());
                        let (slot, _) = self.conns.insert(Conn::new(Some(fd), sock, core));
                        self.pump(slot);
                    }
                    // At --max-conns (echo): completions of the multishot already under way.
                    None => self.core.hold(fd),
                }
                if !self.core.may_accept() {
                    self.cancel_accept();
                }
            }
        } else {
            let err = io::Error::from_raw_os_error(-res);
            if res == -rustix::io::Errno::CANCELED.raw_os_error() {
                // Stopped for a back-off (it re-arms when that is over), for shutdown, or to
                // go single-shot near a full fixed-file table (re-arm at once).
                if !self.accept_armed && self.core.accept.retry_at.is_none() {
                    self.arm_accept();
                }
                return;
            }
            if accept_error_needs_backoff(&err) {
                self.core.stats.accept_errors += 1;
                let now = self.core.clock.now();
                self.core.accept.on_error(&err, self.ctx.cpu, now);
                if more {
                    // Stop the multishot accept until the back-off is over.
                    self.cancel_accept();
                }
                return;
            }
        }
        if self.fixed && self.accept_armed && self.accept_multi {
            let (free, burst) = self.fixed_room();
            if free <= burst {
                // Near a full table: single-shot accepts from here (re-armed on the cancel).
                self.cancel_accept();
            }
        }
        if !self.accept_armed && self.core.accept.retry_at.is_none() {
            if self.accept_multi {
                self.core.stats.multishot_rearms += u64::from(!self.shutting_down);
            }
            self.arm_accept();
        }
    }

    fn on_recv(&mut self, u: UserData, res: i32, flags: u32, more: bool) {
        let Loop {
            conns,
            core,
            bufs,
            pieces,
            ..
        } = self;
        // The provided buffers this completion filled, as pieces of bytes in order (a bundle's
        // several, an incremental buffer's next part).
        pieces.clear();
        let picked = match (cqueue::buffer_select(flags), bufs.as_mut()) {
            (Some(bid), Some(b)) => {
                let n = usize::try_from(res).unwrap_or(0);
                b.pieces(bid, n, self.bundle, cqueue::buffer_more(flags), pieces);
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
            c.inflight -= 1;
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
                    eprintln!("ringlab-server: recv completion without a buffer; closing");
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
                    eprintln!("ringlab-server: this kernel has no multishot recv byte limit; using single-shot receives under backpressure instead");
                }
                _ => core.conn_error(&mut c.core),
            }
        }
        self.pump(u.slot);
    }

    fn on_send(&mut self, u: UserData, res: i32) {
        let Some(c) = self.conns.get(u.slot, u.gen) else {
            return;
        };
        c.inflight -= 1;
        let Some((buf, off)) = c.send.take() else {
            return;
        };
        if res >= 0 {
            let off = off + res as usize;
            self.core.sent(&mut c.core, res as usize);
            if off < buf.len() {
                self.core.stats.short_sends += 1;
                self.submit_send(u.slot, buf, off);
            }
        } else {
            if res != -rustix::io::Errno::CANCELED.raw_os_error() {
                self.core.conn_error(&mut c.core);
            }
            c.core.session.on_send_failed();
        }
        self.pump(u.slot);
    }

    fn submit_send(&mut self, slot: u32, buf: Bytes, off: usize) {
        let Some((gen, c)) = self.conns.get_slot(slot) else {
            return;
        };
        let len = (buf.len() - off).min(u32::MAX as usize) as u32;
        // SAFETY (pointer arithmetic): `off < buf.len()`, so the pointer stays in the buffer.
        let ptr = buf[off..].as_ptr();
        let zc = self.send_zc > 0 && len as usize >= self.send_zc;
        let e = if zc {
            on_sock!(c.sock, |t| opcode::SendZc::new(t, ptr, len)
                .flags(libc_flags::MSG_NOSIGNAL)
                .build()
                .user_data(ud(OP_SEND_ZC, slot, gen)))
        } else {
            on_sock!(c.sock, |t| opcode::Send::new(t, ptr, len)
                .flags(libc_flags::MSG_NOSIGNAL)
                .build()
                .user_data(ud(OP_SEND, slot, gen)))
        };
        c.send = Some((buf, off));
        c.inflight += 1;
        self.push(e);
    }

    /// Bring the connection's operations in line with what its session wants.
    fn pump(&mut self, slot: u32) {
        let Some((gen, c)) = self.conns.get_slot(slot) else {
            return;
        };
        if c.closing {
            return;
        }
        let sock = c.sock;
        match c.core.session.action() {
            Action::Close => {
                if c.inflight > 0 {
                    if !c.cancel_all_sent {
                        c.cancel_all_sent = true;
                        c.inflight += 1;
                        let e = on_sock!(sock, |t| opcode::AsyncCancel2::new(
                            types::CancelBuilder::fd(t).all()
                        )
                        .build()
                        .user_data(ud(OP_CANCEL_FD, slot, gen)));
                        push_to(
                            &mut self.ring,
                            &mut self.ops,
                            &mut self.core.stats.syscalls,
                            e,
                        );
                    }
                    return;
                }
                // Nothing in flight: the socket can go. The slot is freed when the close
                // completes; the descriptor is the ring's to close from here.
                c.closing = true;
                let sock = match c.fd.take().map(IntoRawFd::into_raw_fd) {
                    Some(fd) => Sock::Fd(fd),
                    None => sock,
                };
                c.inflight += 1;
                let e = on_sock!(sock, |t| opcode::Close::new(t)
                    .build()
                    .user_data(ud(OP_CLOSE, slot, gen)));
                push_to(
                    &mut self.ring,
                    &mut self.ops,
                    &mut self.core.stats.syscalls,
                    e,
                );
                return;
            }
            Action::ShutdownWrite => {
                if !c.shutdown_sent && c.send.is_none() && c.fd.is_none() {
                    // A fixed file has no descriptor for shutdown(2): the ring does it.
                    c.shutdown_sent = true;
                    c.inflight += 1;
                    let e = on_sock!(sock, |t| opcode::Shutdown::new(t, libc_flags::SHUT_WR)
                        .build()
                        .user_data(ud(OP_SHUTDOWN, slot, gen)));
                    push_to(
                        &mut self.ring,
                        &mut self.ops,
                        &mut self.core.stats.syscalls,
                        e,
                    );
                } else if !c.shutdown_sent && c.send.is_none() {
                    // A direct shutdown(2), not IORING_OP_SHUTDOWN: the kernel always runs that
                    // opcode in an io-wq worker thread (its prep forces async), a thread hop
                    // per graceful close for what is a cheap, non-blocking call.
                    c.shutdown_sent = true;
                    self.core.stats.syscalls.shutdown += 1;
                    if let Some(fd) = c.fd.as_ref() {
                        let _ = rustix::net::shutdown(fd, rustix::net::Shutdown::Write);
                    }
                    self.core.write_shutdown(&mut c.core);
                    // The session moved on (lingering, or done): act on its new state.
                    return self.pump(slot);
                }
            }
            Action::Continue => {}
        }
        if c.send.is_none() {
            if let Some(b) = c.core.session.take_output() {
                self.submit_send(slot, b, 0);
            }
        }
        let Some((_, c)) = self.conns.get_slot(slot) else {
            return;
        };
        let want = c.core.session.wants_read(&self.core.cfg);
        let pending = c.core.session.pending_output();
        let high_water = self.core.cfg.out_high_water;
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
                c.inflight += 1;
                push_to(
                    &mut self.ring,
                    &mut self.ops,
                    &mut self.core.stats.syscalls,
                    e.user_data(ud(OP_RECV, slot, gen)),
                );
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
                c.inflight += 1;
                let e = opcode::AsyncCancel::new(ud(OP_RECV, slot, gen))
                    .build()
                    .user_data(ud(OP_CANCEL_RECV, slot, gen));
                push_to(
                    &mut self.ring,
                    &mut self.ops,
                    &mut self.core.stats.syscalls,
                    e,
                );
            }
            _ => {}
        }
        // A pause: reading stops because the peer has not taken its output.
        let paused = !want && pending >= high_water;
        if paused && !c.paused {
            self.core.stats.backpressure_pauses += 1;
        }
        c.paused = paused;
        let Some((_, c)) = self.conns.get_slot(slot) else {
            return;
        };
        self.core.sync_timer(&mut c.core, timer_key(slot, gen));
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

/// Queue an entry on `ring`, counting it in `ops` until its final completion.
fn push_to(ring: &mut Ring<'_>, ops: &mut u64, sc: &mut SyscallCounters, e: squeue::Entry) {
    *ops += 1;
    // SAFETY: every entry built in this file refers only to (a) fds owned by a live slot, the
    // listener or the waker, all of which outlive their operations because a slot is freed only
    // after its close completes and the loop drains all operations before it returns; (b)
    // buffers owned by the slot (send buffer, single-shot recv buffer) or by the loop (the
    // provided-buffer ring), kept under the same rule.
    unsafe { ring.push(e, sc) };
}

/// Set `sqe->optlen` (bytes 44..48 of the kernel's 64-byte `struct io_uring_sqe`, in a union
/// with `file_index`), which the io-uring crate does not expose for `RecvMulti`. For a
/// multishot recv it is the total number of bytes after which the multishot ends (the kernel
/// answers -EINVAL where it does not know it).
fn with_optlen(e: squeue::Entry, optlen: u32) -> squeue::Entry {
    const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's `io_uring_sqe`, 64 bytes of
    // integers and unions of integers (size checked above): it has no padding-dependent
    // invariants, so viewing it as bytes and back is sound for any byte values.
    let mut bytes: [u8; 64] = unsafe { std::mem::transmute::<squeue::Entry, [u8; 64]>(e) };
    bytes[44..48].copy_from_slice(&optlen.to_ne_bytes());
    // SAFETY: as above; every byte pattern is a valid `io_uring_sqe`.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(bytes) }
}

/// Flag values the kernel interface needs, taken from rustix's definitions.
mod libc_flags {
    pub const SOCK_CLOEXEC: i32 = rustix::net::SocketFlags::CLOEXEC.bits() as i32;
    pub const MSG_NOSIGNAL: i32 = rustix::net::SendFlags::NOSIGNAL.bits() as i32;
    pub const SHUT_WR: i32 = rustix::net::Shutdown::Write as i32;
}
