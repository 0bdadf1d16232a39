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
//! Ownership: every operation goes through the ring's [`Ledger`] (shared with the server's uring
//! backend): a slot's socket, its connect address and its send buffer live in the ledger's slot,
//! which is freed only when its close completes, after every other operation on it has (cancel,
//! then close). User data encodes (op, ledger generation, ledger slot); the ledger slot of an
//! engine slot is kept in `Loop::slots`.

use std::io;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};
use std::time::Instant;

use bytes::Bytes;
use io_uring::{cqueue, opcode, squeue, types};
use ringlab_runtime::ledger::{Done, Ledger, SlotSock, Sock as LedgerSock};
use ringlab_runtime::uring::{build_ring, BufRing, Ring, RingConfig, UserData};
use socket2::SockAddr;

use super::{handle_all, run_loop, slot_socket, Driver, ThreadCtx};
use crate::engine::{Engine, ThreadResult};

const OP_CONNECT: u8 = 1;
const OP_RECV: u8 = 2;
const OP_SEND: u8 = 3;

const BGID: u16 = 0;

/// One connection's socket and what the kernel may read while operations are in flight.
struct Sock {
    /// The engine's slot for this socket.
    slot: u32,
    /// The socket; `None` once it was given up to the ring's close.
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
    fn sock(&self) -> LedgerSock {
        LedgerSock::Fd(self.raw)
    }
    fn release(&mut self) -> LedgerSock {
        LedgerSock::Fd(self.fd.take().map_or(self.raw, IntoRawFd::into_raw_fd))
    }
}

struct Loop<'r> {
    eng: Engine,
    ring: Ring<'r>,
    /// `None` only once leaked at exit.
    bufs: Option<BufRing<'r>>,
    ledger: Ledger<Sock, ()>,
    /// The ledger slot and generation of each engine slot's socket.
    slots: Vec<Option<(u32, u32)>>,
    /// Ledger slots (with their generation) whose multishot recv ended for lack of buffers.
    starved: std::collections::VecDeque<(u32, u32)>,
}

/// Set up a ring in this thread, wait for the start, run the thread's share of the load.
pub fn run(ctx: ThreadCtx) -> io::Result<Option<ThreadResult>> {
    let cfg = ctx.cfg.clone();
    let rcfg = RingConfig {
        sq_entries: cfg.sq_entries,
        cq_entries: cfg.cq_entries,
        defer_taskrun: cfg.defer_taskrun,
        register_ring_fd: true,
        sqpoll: None,
    };
    let mut uring = match build_ring(&rcfg) {
        Ok(r) => r,
        Err(e) => return Err(ctx.setup_failed(e, "io_uring_setup")),
    };
    let mut ring = match Ring::new(&mut uring, &rcfg) {
        Ok(r) => r,
        Err(e) => return Err(ctx.setup_failed(e, "io_uring_register(RING_FDS)")),
    };
    if let Err(e) = ring.set_coalesce(cfg.coalesce) {
        return Err(ctx.setup_failed(e, "--coalesce"));
    }
    let bufs = match BufRing::new(ring.uring(), BGID, cfg.buf_count, cfg.buf_size) {
        Ok(b) => b,
        Err(e) => return Err(ctx.setup_failed(e, "io_uring_register(PBUF_RING)")),
    };
    let Some(eng) = ctx.start(Ok(())) else {
        return Ok(None);
    };
    let mut lp = Loop {
        slots: vec![None; eng.slots()],
        eng,
        ring,
        bufs: Some(bufs),
        ledger: Ledger::default(),
        starved: std::collections::VecDeque::new(),
    };
    lp.eng.counters.syscalls.io_uring_register += 3;
    let r = run_loop(&mut lp);
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

impl Driver for Loop<'_> {
    fn engine(&mut self) -> &mut Engine {
        &mut self.eng
    }

    fn connect(&mut self, slot: u32) {
        let Some((sock, target)) = slot_socket(&mut self.eng, slot, false) else {
            return;
        };
        let fd = OwnedFd::from(sock);
        let addr = Box::new(SockAddr::from(target));
        let e = opcode::Connect::new(types::Fd(fd.as_raw_fd()), addr.as_ptr().cast(), addr.len())
            .build();
        let (ls, gen) = self.ledger.insert(Sock {
            slot,
            raw: fd.as_raw_fd(),
            fd: Some(fd),
            _addr: addr,
            connecting: true,
            recv_armed: false,
            starved: false,
            send: None,
        });
        self.slots[slot as usize] = Some((ls, gen));
        self.eng.connect_started(slot);
        self.push(ls, OP_CONNECT, e);
    }

    /// Bring the engine slot's operations in line with what the engine wants.
    fn pump(&mut self, slot: u32) {
        let Some((ls, gen)) = self.slots[slot as usize] else {
            return;
        };
        if self.eng.wants_close(slot) {
            // Cancel what is in flight, then close; the slot is freed when the close completes.
            self.ledger
                .close(&mut self.ring, ls, &mut self.eng.counters.syscalls);
            return;
        }
        let Some((g, s)) = self.ledger.open(ls) else {
            return; // closing
        };
        if g != gen || s.connecting {
            return;
        }
        if s.send.is_none() {
            if let Some(b) = self.eng.take_output(slot) {
                self.submit_send(ls, b, 0);
            }
        }
        let Some((_, s)) = self.ledger.open(ls) else {
            return;
        };
        if !s.recv_armed && !s.starved && self.eng.wants_read(slot) {
            s.recv_armed = true;
            let e = opcode::RecvMulti::new(types::Fd(s.raw), BGID).build();
            self.push(ls, OP_RECV, e);
        }
    }

    fn before_work(&mut self) {
        // Every buffer is back in the ring by now: re-arm as many starved receivers as it holds.
        let budget = self.bufs.as_ref().map_or(0, |b| usize::from(b.count()));
        for _ in 0..budget {
            let Some((ls, gen)) = self.starved.pop_front() else {
                break;
            };
            if let Some(s) = self.ledger.get(ls, gen) {
                s.starved = false;
                let slot = s.slot;
                self.pump(slot);
            }
        }
    }

    fn turn(&mut self, deadline: Instant) -> io::Result<()> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        self.ring
            .submit_and_wait(1, Some(timeout), &mut self.eng.counters.syscalls)?;
        self.eng.tick(Instant::now());
        let mut cqes = Vec::new();
        self.ring.reap(&mut cqes);
        handle_all(self, cqes, Loop::handle);
        Ok(())
    }
}

impl Loop<'_> {
    /// Queue `e` as operation `op` of ledger slot `ls`.
    fn push(&mut self, ls: u32, op: u8, e: squeue::Entry) {
        // SAFETY: every entry built in this file refers only to the socket, connect address or
        // send buffer of ledger slot `ls` (kept in its `Sock`, which the ledger frees only after
        // the slot's close completes, and which leaks at exit if some operation never
        // completed) or to the provided-buffer ring, which outlives the loop (or is leaked).
        unsafe {
            self.ledger
                .push_for(&mut self.ring, ls, op, e, &mut self.eng.counters.syscalls)
        };
    }

    fn handle(&mut self, cqe: cqueue::Entry) {
        match self
            .ledger
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
                if let Some((_, s)) = self.ledger.get_slot(ls) {
                    let slot = s.slot;
                    self.pump(slot);
                }
            }
            Done::Closed(s) => {
                self.slots[s.slot as usize] = None;
                self.eng.closed(s.slot);
            }
            Done::Returned { .. } | Done::Nothing => {}
        }
    }

    fn on_connect(&mut self, u: UserData, res: i32) {
        let Some(s) = self.ledger.get(u.slot, u.gen) else {
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
            self.eng.connected(slot, r, Instant::now());
        }
        self.pump(slot);
    }

    fn on_recv(&mut self, u: UserData, res: i32, flags: u32, more: bool) {
        let Loop {
            ledger,
            eng,
            bufs,
            starved,
            ..
        } = self;
        let Some(s) = ledger.get(u.slot, u.gen) else {
            if let (Some(bid), Some(b)) = (cqueue::buffer_select(flags), bufs.as_mut()) {
                // SAFETY: `flags` and `res` are this recv completion's, seen once.
                unsafe { b.discard(bid, res.max(0) as usize, false, false) };
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
                    // SAFETY: `flags` and `res` are this recv completion's, seen once.
                    eng.recv(slot, unsafe { b.get(bid, res as usize) }, Instant::now());
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
        let Some(s) = self.ledger.get(u.slot, u.gen) else {
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
                self.submit_send(u.slot, buf, off);
            }
        } else if res != -rustix::io::Errno::CANCELED.raw_os_error() {
            self.eng
                .io_error(slot, &io::Error::from_raw_os_error(-res), true);
        }
        self.pump(slot);
    }

    /// Send `buf[off..]` on ledger slot `ls`; the buffer stays in the slot until the send
    /// completes.
    fn submit_send(&mut self, ls: u32, buf: Bytes, off: usize) {
        let Some((_, s)) = self.ledger.open(ls) else {
            return;
        };
        let len = (buf.len() - off).min(u32::MAX as usize) as u32;
        let e = opcode::Send::new(types::Fd(s.raw), buf[off..].as_ptr(), len)
            .flags(MSG_NOSIGNAL)
            .build();
        s.send = Some((buf, off));
        self.push(ls, OP_SEND, e);
    }

    /// Cancel whatever is still in flight and wait (briefly) for it, so that no buffer or
    /// address is freed while the kernel may still use it.
    fn finish(&mut self) {
        let Loop {
            ledger,
            ring,
            bufs,
            eng,
            ..
        } = self;
        let left = ledger.finish(
            &mut [(ring, bufs)],
            false,
            &mut eng.counters.syscalls,
            |_| {},
        );
        if left > 0 {
            // The ledger leaked its slots and the provided buffers: the kernel may still use them.
            eprintln!(
                "ringlab-client: {left} io_uring operations still in flight at exit; leaking their buffers"
            );
        }
    }
}

const MSG_NOSIGNAL: i32 = rustix::net::SendFlags::NOSIGNAL.bits() as i32;
