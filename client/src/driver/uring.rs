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
//! Ownership: the sockets live in the ring's operation ledger ([`ringlab_runtime::ledger`], the
//! server's too): a socket, its connect address and its send buffer stay alive while any
//! operation on them is in flight; the socket's slot is freed only when its close completes
//! (cancel-then-close), and at exit what never completed is leaked, never freed. User data
//! encodes (op, ledger generation, ledger slot); the ledger slot maps to the engine's slot.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types};
use ringlab_runtime::ledger::{Done, Ledger, SlotSock, Sock as Target};
use ringlab_runtime::uring::{build_ring, BufRing, Ring, RingConfig, UserData};
use socket2::SockAddr;

use super::{new_socket, ThreadCtx};
use crate::engine::{Engine, ThreadResult, Work};

const OP_CONNECT: u8 = 1;
const OP_RECV: u8 = 2;
const OP_SEND: u8 = 3;

const BGID: u16 = 0;
/// Re-read the clock every this many completions within one turn.
const TICK_EVERY: usize = 32;

struct Sock {
    /// The engine's slot this socket serves.
    slot: u32,
    /// The socket; `None` once given up to the ring's close.
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
}

impl SlotSock for Sock {
    fn sock(&self) -> Target {
        Target::Fd(self.raw)
    }

    fn release(&mut self) -> Target {
        Target::Fd(self.fd.take().map_or(self.raw, IntoRawFd::into_raw_fd))
    }
}

struct Loop<'r> {
    eng: Engine,
    ring: Ring<'r>,
    /// `None` only once leaked at exit.
    bufs: Option<BufRing>,
    /// The sockets and every operation in flight (the client lends no buffers).
    socks: Ledger<Sock, ()>,
    /// The ledger slot and generation of each engine slot's socket.
    by_slot: Vec<Option<(u32, u32)>>,
    work: Work,
    /// Sockets (ledger slot and generation) whose multishot recv ended for lack of buffers.
    starved: VecDeque<(u32, u32)>,
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
    let bufs = match BufRing::new(ring.submitter(), BGID, cfg.buf_count, cfg.buf_size) {
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
        by_slot: vec![None; eng.slots()],
        eng,
        ring,
        bufs: Some(bufs),
        socks: Ledger::default(),
        work: Work::default(),
        starved: VecDeque::new(),
    };
    lp.eng.counters.syscalls.io_uring_register += 3;
    let r = lp.run();
    if r.is_err() {
        lp.eng.abort();
    }
    lp.finish();
    let Loop {
        eng,
        ring,
        bufs,
        socks,
        ..
    } = lp;
    let overflows = ring.cq_overflow_events;
    // Whatever is left has nothing in flight: dropping it closes its socket.
    drop(socks);
    drop(bufs);
    let mut res = eng.into_result();
    res.counters.cq_overflows = overflows;
    r.map(|()| Some(res))
}

impl Loop<'_> {
    /// Queue operation `op` on the socket in ledger slot `ls`.
    fn push_for(&mut self, ls: u32, op: u8, e: squeue::Entry) {
        // SAFETY: every entry built in this file refers only to a socket's descriptor and to
        // buffers its `Sock` owns (the send buffer, the connect address) or the loop owns (the
        // provided-buffer ring); the ledger frees a `Sock` only when its close completes, and
        // at exit every operation is drained, or leaked with the buffer ring if some never is.
        unsafe {
            self.socks
                .push_for(&mut self.ring, ls, op, e, &mut self.eng.counters.syscalls)
        };
    }

    fn run(&mut self) -> io::Result<()> {
        let mut cqes: Vec<cqueue::Entry> = Vec::with_capacity(1024);
        self.eng.tick();
        loop {
            self.eng.poll();
            self.do_work();
            if self.eng.finished() {
                return Ok(());
            }
            let timeout = self.eng.wait_timeout();
            self.ring
                .submit_and_wait(1, timeout, &mut self.eng.counters.syscalls)?;
            self.eng.tick();
            self.ring.reap(&mut cqes);
            for (i, cqe) in cqes.drain(..).enumerate() {
                if i > 0 && i % TICK_EVERY == 0 {
                    self.eng.tick();
                }
                self.handle(cqe);
            }
        }
    }

    fn do_work(&mut self) {
        // Every buffer is back in the ring by now: re-arm as many starved receivers as it holds.
        let budget = self.bufs.as_ref().map_or(0, |b| usize::from(b.count()));
        for _ in 0..budget {
            let Some((ls, gen)) = self.starved.pop_front() else {
                break;
            };
            if let Some(s) = self.socks.get(ls, gen) {
                s.starved = false;
                let slot = s.slot;
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
        let addr = Box::new(SockAddr::from(target));
        let e = opcode::Connect::new(types::Fd(fd.as_raw_fd()), addr.as_ptr().cast(), addr.len())
            .build();
        let (ls, gen) = self.socks.insert(Sock {
            slot,
            raw: fd.as_raw_fd(),
            fd: Some(fd),
            _addr: addr,
            connecting: true,
            recv_armed: false,
            starved: false,
            send: None,
        });
        self.by_slot[slot as usize] = Some((ls, gen));
        self.eng.connect_started(slot);
        self.push_for(ls, OP_CONNECT, e);
    }

    /// The open (not closing) socket of engine slot `slot`, with its ledger slot.
    fn sock(&mut self, slot: u32) -> Option<(u32, &mut Sock)> {
        let (ls, gen) = (*self.by_slot.get(slot as usize)?)?;
        match self.socks.open(ls) {
            Some((g, s)) if g == gen => Some((ls, s)),
            _ => None,
        }
    }

    fn handle(&mut self, cqe: cqueue::Entry) {
        match self
            .socks
            .complete(cqe.user_data(), cqe.result(), cqe.flags())
        {
            Done::Op {
                ud,
                res,
                flags,
                more,
            } => match ud.op {
                OP_CONNECT => self.on_connect(ud, res),
                OP_RECV => self.on_recv(ud, res, flags, more),
                OP_SEND => self.on_send(ud, res),
                _ => eprintln!("ringlab-client: unexpected completion {ud:?} res={res}"),
            },
            Done::Pump(ls) => {
                if let Some((_, s)) = self.socks.get_slot(ls) {
                    let slot = s.slot;
                    self.pump(slot);
                }
            }
            Done::Closed(s) => {
                self.by_slot[s.slot as usize] = None;
                self.eng.closed(s.slot);
            }
            Done::Returned { .. } | Done::Nothing => {}
        }
    }

    fn on_connect(&mut self, u: UserData, res: i32) {
        let Some(s) = self.socks.get(u.slot, u.gen) else {
            return;
        };
        s.connecting = false;
        let slot = s.slot;
        let r = if res >= 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(-res))
        };
        if res != -rustix::io::Errno::CANCELED.raw_os_error() {
            self.eng.connected(slot, r);
        }
        self.pump(slot);
    }

    fn on_recv(&mut self, u: UserData, res: i32, flags: u32, more: bool) {
        let Loop {
            socks,
            eng,
            bufs,
            starved,
            ..
        } = self;
        let Some(s) = socks.get(u.slot, u.gen) else {
            if let (Some(bid), Some(b)) = (cqueue::buffer_select(flags), bufs.as_mut()) {
                b.recycle(bid);
            }
            return;
        };
        let slot = s.slot;
        if !more {
            s.recv_armed = false;
        }
        if res > 0 {
            match (cqueue::buffer_select(flags), bufs.as_mut()) {
                (Some(bid), Some(b)) => {
                    eng.recv(slot, b.get(bid, res as usize));
                    b.recycle(bid);
                }
                _ => {
                    let e = io::Error::other("recv completion without a buffer");
                    eng.io_error(slot, &e, false);
                }
            }
        } else if res == 0 {
            eng.eof(slot);
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
                _ => eng.io_error(slot, &io::Error::from_raw_os_error(-res), false),
            }
        }
        self.pump(slot);
    }

    fn on_send(&mut self, u: UserData, res: i32) {
        let Some(s) = self.socks.get(u.slot, u.gen) else {
            return;
        };
        let slot = s.slot;
        let Some((buf, off)) = s.send.take() else {
            return;
        };
        if res >= 0 {
            let off = off + res as usize;
            self.eng.sent(res as usize);
            if off < buf.len() {
                self.eng.counters.short_sends += 1;
                self.submit_send(slot, buf, off);
            }
        } else if res != -rustix::io::Errno::CANCELED.raw_os_error() {
            self.eng
                .io_error(slot, &io::Error::from_raw_os_error(-res), true);
        }
        self.pump(slot);
    }

    fn submit_send(&mut self, slot: u32, buf: Bytes, off: usize) {
        let Some((ls, s)) = self.sock(slot) else {
            return;
        };
        let len = (buf.len() - off).min(u32::MAX as usize) as u32;
        let e = opcode::Send::new(types::Fd(s.raw), buf[off..].as_ptr(), len)
            .flags(MSG_NOSIGNAL)
            .build();
        s.send = Some((buf, off));
        self.push_for(ls, OP_SEND, e);
    }

    /// Bring the socket's operations in line with what the engine wants.
    fn pump(&mut self, slot: u32) {
        let Some((ls, s)) = self.sock(slot) else {
            return; // none, or closing
        };
        let (connecting, sending) = (s.connecting, s.send.is_some());
        if self.eng.wants_close(slot) {
            // Cancel what is in flight on the socket, then (once it all completed) close it;
            // the slot is freed when the close completes.
            self.socks
                .close(&mut self.ring, ls, &mut self.eng.counters.syscalls);
            return;
        }
        if connecting {
            return;
        }
        if !sending {
            if let Some(b) = self.eng.take_output(slot) {
                self.submit_send(slot, b, 0);
            }
        }
        let wants_read = self.eng.wants_read(slot);
        let Some((ls, s)) = self.sock(slot) else {
            return;
        };
        if !s.recv_armed && !s.starved && wants_read {
            s.recv_armed = true;
            let e = opcode::RecvMulti::new(types::Fd(s.raw), BGID).build();
            self.push_for(ls, OP_RECV, e);
        }
    }

    /// Cancel whatever is still in flight and wait (briefly) for it, so that no buffer or
    /// address is freed while the kernel may still use it.
    fn finish(&mut self) {
        let Loop {
            ring,
            bufs,
            socks,
            eng,
            ..
        } = self;
        // What never completes is leaked with the buffer ring, never freed.
        let left = socks.finish(ring, bufs, &mut eng.counters.syscalls, |_| {});
        if left > 0 {
            eprintln!("ringlab-client: {left} io_uring operations still in flight at exit; leaking their buffers");
        }
    }
}

const MSG_NOSIGNAL: i32 = rustix::net::SendFlags::NOSIGNAL.bits() as i32;
