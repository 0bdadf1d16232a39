//! The io_uring driver: the completion model, done the way the server's uring backend does it.
//!
//! * Connect as a ring operation (`IORING_OP_CONNECT`) on a blocking socket; the target
//!   address lives in the socket's slot until the connect completes.
//! * One multishot recv per connection into a provided-buffer ring (`IORING_RECV_MULTISHOT`,
//!   6.0): an idle connection owns no read buffer. `-ENOBUFS` (the ring ran dry within one turn)
//!   ends the multishot; such connections wait in a FIFO and are re-armed at the next turns, at
//!   most as many per turn as the ring has buffers (all are back by then: each is recycled as soon
//!   as its bytes are verified), so a dry ring never turns into a storm of failing re-arms.
//! * Sends from owned buffers (the connection's queued requests, frozen), one in flight per
//!   connection; short sends resubmit the rest.
//! * Close as a ring operation, after cancelling whatever is in flight on the socket.
//! * One `io_uring_enter` per loop turn that both submits and waits (`SINGLE_ISSUER` +
//!   `DEFER_TASKRUN`, registered ring fd), bounded by the engine's next deadline.
//! * CQ overflow: `IORING_FEAT_NODROP` keeps overflowed completions in the kernel; counted.
//!
//! Ownership: a slot's socket, its connect address and its send buffer stay alive while any
//! operation on them is in flight (`Sock::inflight`); the socket is forgotten only when its
//! close completes. User data encodes (op, socket generation, slot).

use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Instant;

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types};
use ringlab_runtime::stats::SyscallCounters;
use ringlab_runtime::uring::{build_ring, BufRing, Ring, RingConfig, UserData};
use socket2::SockAddr;

use super::{new_socket, ThreadCtx};
use crate::engine::{Engine, ThreadResult, Work};

const OP_CONNECT: u8 = 1;
const OP_RECV: u8 = 2;
const OP_SEND: u8 = 3;
const OP_CLOSE: u8 = 4;
const OP_CANCEL_FD: u8 = 5;
const OP_CANCEL_ANY: u8 = 6;

const NO_SLOT: u32 = u32::MAX;
const BGID: u16 = 0;
/// Re-read the clock every this many completions within one turn.
const TICK_EVERY: usize = 32;

fn ud(op: u8, slot: u32, gen: u32) -> u64 {
    UserData { op, gen, slot }.encode()
}

struct Sock {
    gen: u32,
    /// The socket; `None` once its close has been submitted.
    fd: Option<OwnedFd>,
    raw: RawFd,
    /// The connect target, read by the kernel until the connect completes.
    _addr: Box<SockAddr>,
    connecting: bool,
    recv_armed: bool,
    /// Waiting in `Loop::starved` for buffers after `-ENOBUFS`.
    starved: bool,
    /// The send in flight: the buffer and how much of it was already sent.
    send: Option<(Bytes, usize)>,
    cancel_sent: bool,
    /// Operations in flight on this socket (a multishot recv counts once).
    inflight: u32,
}

struct Loop<'r> {
    eng: Engine,
    ring: Ring<'r>,
    /// `None` only once leaked at exit.
    bufs: Option<BufRing<'r>>,
    socks: Vec<Option<Sock>>,
    next_gen: u32,
    /// Operations in flight on the whole ring.
    ops: u64,
    work: Work,
    /// Slots (with their socket generation) whose multishot recv ended for lack of buffers.
    starved: std::collections::VecDeque<(u32, u32)>,
}

/// Set up a ring in this thread, wait for the start, run the thread's share of the load.
pub fn run(ctx: ThreadCtx) -> io::Result<Option<ThreadResult>> {
    let cfg = ctx.cfg.clone();
    let rcfg = RingConfig {
        sq_entries: cfg.sq_entries,
        cq_entries: cfg.cq_entries,
        defer_taskrun: true,
        register_ring_fd: true,
        sqpoll: None,
    };
    let what = |e: io::Error, what: &str| io::Error::new(e.kind(), format!("{what}: {e}"));
    let mut uring = match build_ring(&rcfg) {
        Ok(r) => r,
        Err(e) => {
            let e = what(e, "io_uring_setup");
            ctx.start(Err(e.to_string()));
            return Err(e);
        }
    };
    let ring = match Ring::new(&mut uring, &rcfg) {
        Ok(r) => r,
        Err(e) => {
            let e = what(e, "io_uring_register(RING_FDS)");
            ctx.start(Err(e.to_string()));
            return Err(e);
        }
    };
    let bufs = match BufRing::new(ring.uring(), BGID, cfg.buf_count, cfg.buf_size) {
        Ok(b) => b,
        Err(e) => {
            let e = what(e, "io_uring_register(PBUF_RING)");
            ctx.start(Err(e.to_string()));
            return Err(e);
        }
    };
    let Some(eng) = ctx.start(Ok(())) else {
        return Ok(None);
    };
    let mut lp = Loop {
        socks: (0..eng.slots()).map(|_| None).collect(),
        eng,
        ring,
        bufs: Some(bufs),
        next_gen: 0,
        ops: 0,
        work: Work::default(),
        starved: std::collections::VecDeque::new(),
    };
    lp.eng.counters.syscalls.io_uring_register += 3;
    let r = lp.run();
    if r.is_err() {
        lp.eng.abort();
    }
    lp.finish();
    let Loop {
        eng, ring, bufs, ..
    } = lp;
    let overflows = ring.cq_overflow_events;
    drop(bufs);
    let mut res = eng.into_result(Instant::now());
    res.counters.cq_overflows = overflows;
    r.map(|()| Some(res))
}

impl Loop<'_> {
    fn push(&mut self, e: squeue::Entry) {
        push_to(
            &mut self.ring,
            &mut self.ops,
            &mut self.eng.counters.syscalls,
            e,
        );
    }

    fn run(&mut self) -> io::Result<()> {
        let mut cqes: Vec<cqueue::Entry> = Vec::with_capacity(1024);
        self.eng.tick(Instant::now());
        loop {
            self.eng.poll(Instant::now());
            self.do_work();
            if self.eng.finished() {
                return Ok(());
            }
            let timeout = Some(
                self.eng
                    .deadline()
                    .saturating_duration_since(Instant::now()),
            );
            self.ring
                .submit_and_wait(1, timeout, &mut self.eng.counters.syscalls)?;
            self.eng.tick(Instant::now());
            self.ring.reap(&mut cqes);
            for (i, cqe) in cqes.drain(..).enumerate() {
                if i > 0 && i % TICK_EVERY == 0 {
                    self.eng.tick(Instant::now());
                }
                self.handle(cqe);
            }
        }
    }

    fn do_work(&mut self) {
        // Every buffer is back in the ring by now: re-arm as many starved receivers as it holds.
        let budget = self.bufs.as_ref().map_or(0, |b| usize::from(b.count()));
        for _ in 0..budget {
            let Some((slot, gen)) = self.starved.pop_front() else {
                break;
            };
            if let Some(s) = self.sock(slot, gen) {
                s.starved = false;
                self.pump(slot);
            }
        }
        let mut work = std::mem::take(&mut self.work);
        // Acting on work can make more (a failed connect closes, a close frees a slot).
        for _ in 0..4 {
            self.eng.take_work(&mut work);
            if work.connect.is_empty() && work.pump.is_empty() {
                break;
            }
            for slot in work.connect.drain(..) {
                self.connect(slot);
            }
            for slot in work.pump.drain(..) {
                self.pump(slot);
            }
        }
        self.work = work;
    }

    fn connect(&mut self, slot: u32) {
        let (target, bind) = self.eng.connect_target(slot);
        self.eng.counters.syscalls.other += 2 + u64::from(bind.is_some());
        let sock = match new_socket(target, bind, false) {
            Ok(s) => s,
            Err(e) => {
                self.eng.connect_setup_failed(slot, &e);
                return;
            }
        };
        let fd = OwnedFd::from(sock);
        let gen = self.next_gen & UserData::GEN_MASK;
        self.next_gen = self.next_gen.wrapping_add(1);
        let addr = Box::new(SockAddr::from(target));
        let e = opcode::Connect::new(types::Fd(fd.as_raw_fd()), addr.as_ptr().cast(), addr.len())
            .build()
            .user_data(ud(OP_CONNECT, slot, gen));
        self.socks[slot as usize] = Some(Sock {
            gen,
            raw: fd.as_raw_fd(),
            fd: Some(fd),
            _addr: addr,
            connecting: true,
            recv_armed: false,
            starved: false,
            send: None,
            cancel_sent: false,
            inflight: 1,
        });
        self.eng.connect_started(slot);
        self.push(e);
    }

    /// The socket of `slot` if it is still of generation `gen`.
    fn sock(&mut self, slot: u32, gen: u32) -> Option<&mut Sock> {
        match self.socks.get_mut(slot as usize) {
            Some(Some(s)) if s.gen == gen => Some(s),
            _ => None,
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
            OP_CONNECT => {
                let Some(s) = self.sock(u.slot, u.gen) else {
                    return;
                };
                s.inflight -= 1;
                s.connecting = false;
                let r = if res >= 0 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(-res))
                };
                if res != -rustix::io::Errno::CANCELED.raw_os_error() {
                    self.eng.connected(u.slot, r, Instant::now());
                }
                self.pump(u.slot);
            }
            OP_RECV => self.on_recv(u, res, flags, more),
            OP_SEND => self.on_send(u, res),
            OP_CLOSE => {
                if self.sock(u.slot, u.gen).is_some() {
                    self.socks[u.slot as usize] = None;
                    self.eng.closed(u.slot);
                }
            }
            OP_CANCEL_FD => {
                if let Some(s) = self.sock(u.slot, u.gen) {
                    s.inflight -= 1;
                    self.pump(u.slot);
                }
            }
            OP_CANCEL_ANY => {}
            _ => eprintln!("ringlab-client: unexpected completion {u:?} res={res}"),
        }
    }

    fn on_recv(&mut self, u: UserData, res: i32, flags: u32, more: bool) {
        let Loop {
            socks,
            eng,
            bufs,
            starved,
            ..
        } = self;
        let s = match socks.get_mut(u.slot as usize) {
            Some(Some(s)) if s.gen == u.gen => s,
            _ => {
                if let (Some(bid), Some(b)) = (cqueue::buffer_select(flags), bufs.as_mut()) {
                    // SAFETY: `flags` and `res` are this recv completion's, seen once.
                    unsafe { b.discard(bid, res.max(0) as usize, false, false) };
                }
                return;
            }
        };
        if !more {
            s.recv_armed = false;
            s.inflight -= 1;
        }
        if res > 0 {
            match (cqueue::buffer_select(flags), bufs.as_mut()) {
                (Some(bid), Some(b)) => {
                    // SAFETY: `flags` and `res` are this recv completion's, seen once.
                    eng.recv(u.slot, unsafe { b.get(bid, res as usize) }, Instant::now());
                    b.recycle(bid);
                }
                _ => {
                    let e = io::Error::other("recv completion without a buffer");
                    eng.io_error(u.slot, &e, false);
                }
            }
        } else if res == 0 {
            eng.eof(u.slot);
        } else {
            match rustix::io::Errno::from_raw_os_error(-res) {
                rustix::io::Errno::NOBUFS => {
                    eng.counters.enobufs += 1;
                    if !more && !s.starved {
                        s.starved = true;
                        starved.push_back((u.slot, u.gen));
                    }
                }
                rustix::io::Errno::CANCELED => {}
                _ => eng.io_error(u.slot, &io::Error::from_raw_os_error(-res), false),
            }
        }
        self.pump(u.slot);
    }

    fn on_send(&mut self, u: UserData, res: i32) {
        let Some(s) = self.sock(u.slot, u.gen) else {
            return;
        };
        s.inflight -= 1;
        let Some((buf, off)) = s.send.take() else {
            return;
        };
        if res >= 0 {
            let off = off + res as usize;
            self.eng.sent(res as usize);
            if off < buf.len() {
                self.eng.counters.short_sends += 1;
                self.submit_send(u.slot, buf, off);
            }
        } else if res != -rustix::io::Errno::CANCELED.raw_os_error() {
            self.eng
                .io_error(u.slot, &io::Error::from_raw_os_error(-res), true);
        }
        self.pump(u.slot);
    }

    fn submit_send(&mut self, slot: u32, buf: Bytes, off: usize) {
        let Some(Some(s)) = self.socks.get_mut(slot as usize) else {
            return;
        };
        let len = (buf.len() - off).min(u32::MAX as usize) as u32;
        let e = opcode::Send::new(types::Fd(s.raw), buf[off..].as_ptr(), len)
            .flags(MSG_NOSIGNAL)
            .build()
            .user_data(ud(OP_SEND, slot, s.gen));
        s.send = Some((buf, off));
        s.inflight += 1;
        self.push(e);
    }

    /// Bring the socket's operations in line with what the engine wants.
    fn pump(&mut self, slot: u32) {
        let Some(Some(s)) = self.socks.get_mut(slot as usize) else {
            return;
        };
        if s.fd.is_none() {
            return; // closing
        }
        let (raw, gen) = (s.raw, s.gen);
        if self.eng.wants_close(slot) {
            if s.inflight > 0 {
                if !s.cancel_sent {
                    s.cancel_sent = true;
                    s.inflight += 1;
                    let e =
                        opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(raw)).all())
                            .build()
                            .user_data(ud(OP_CANCEL_FD, slot, gen));
                    self.push(e);
                }
                return;
            }
            // Nothing in flight: the fd can go. The slot is freed when the close completes.
            let fd = s.fd.take().map(IntoRawFd::into_raw_fd).unwrap_or(raw);
            s.inflight += 1;
            let e = opcode::Close::new(types::Fd(fd))
                .build()
                .user_data(ud(OP_CLOSE, slot, gen));
            self.push(e);
            return;
        }
        if s.connecting {
            return;
        }
        if s.send.is_none() {
            if let Some(b) = self.eng.take_output(slot) {
                self.submit_send(slot, b, 0);
            }
        }
        let Some(Some(s)) = self.socks.get_mut(slot as usize) else {
            return;
        };
        if !s.recv_armed && !s.starved && self.eng.wants_read(slot) {
            s.recv_armed = true;
            s.inflight += 1;
            let e = opcode::RecvMulti::new(types::Fd(raw), BGID)
                .build()
                .user_data(ud(OP_RECV, slot, gen));
            self.push(e);
        }
    }

    /// Cancel whatever is still in flight and wait (briefly) for it, so that no buffer or
    /// address is freed while the kernel may still use it.
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
                .submit_and_wait(1, Some(left), &mut self.eng.counters.syscalls)
                .is_err()
            {
                break;
            }
            self.ring.reap(&mut cqes);
            for cqe in cqes.drain(..) {
                if !cqueue::more(cqe.flags()) {
                    self.ops -= 1;
                }
                if let (Some(bid), Some(b)) =
                    (cqueue::buffer_select(cqe.flags()), self.bufs.as_mut())
                {
                    // SAFETY: a recv completion on the group, seen once.
                    unsafe { b.discard(bid, cqe.result().max(0) as usize, false, false) };
                }
                let u = UserData::decode(cqe.user_data());
                if u.op == OP_CLOSE {
                    if let Some(Some(s)) = self.socks.get_mut(u.slot as usize) {
                        if s.gen == u.gen {
                            self.socks[u.slot as usize] = None;
                        }
                    }
                }
            }
        }
        if self.ops > 0 {
            // The kernel may still use these buffers and addresses: leak them, never free them.
            eprintln!(
                "ringlab-client: {} io_uring operations still in flight at exit; leaking their buffers",
                self.ops
            );
            if let Some(b) = self.bufs.take() {
                b.leak();
            }
            std::mem::forget(std::mem::take(&mut self.socks));
        }
        // Whatever is left has nothing in flight: dropping it closes its socket.
        self.socks.clear();
    }
}

/// Queue an entry on `ring`, counting it in `ops` until its final completion.
fn push_to(ring: &mut Ring<'_>, ops: &mut u64, sc: &mut SyscallCounters, e: squeue::Entry) {
    *ops += 1;
    // SAFETY: every entry built in this file refers only to (a) fds owned by a live slot's
    // `Sock`, which is dropped only after its close completes (or, at exit, after every
    // operation has completed, or leaked if some never did); (b) buffers owned by that `Sock`
    // (the send buffer, the connect address) or by the loop (the provided-buffer ring), kept
    // under the same rule.
    unsafe { ring.push(e, sc) };
}

const MSG_NOSIGNAL: i32 = rustix::net::SendFlags::NOSIGNAL.bits() as i32;
