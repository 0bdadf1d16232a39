//! The epoll driver: the readiness model, done the way the server's epoll backend does it.
//!
//! * Non-blocking connect: `EINPROGRESS`, then the edge-triggered `EPOLLOUT` (or
//!   `EPOLLERR`/`EPOLLHUP`) tells it finished, and `SO_ERROR` tells how.
//! * Every socket is registered once, edge-triggered, for `EPOLLIN | EPOLLOUT | EPOLLRDHUP`: no
//!   `epoll_ctl` is ever needed to arm or disarm writes (one per connection in all).
//! * Reads go into one buffer per loop (`--read-buf`), until `EAGAIN` or a short read, at most
//!   16 reads per connection per turn so one flood cannot starve the others.
//! * Writes happen at once, as soon as requests are queued; only on `EAGAIN` does the
//!   connection wait for the edge-triggered `EPOLLOUT`.
//! * Large event arrays (`--max-events`); the wait is bounded by the engine's next deadline.

use std::io;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use bytes::Bytes;
use ringlab_runtime::epoll::{Epoll, Event, EventFlags, Readiness};
use ringlab_runtime::poller::{precise_sleeps, wait_coalesced, Coalesce};
use ringlab_runtime::uring::UserData;
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags};
use socket2::SockAddr;

use super::{handle_all, run_loop, slot_socket, Driver, ThreadCtx};
use crate::engine::{Engine, ThreadResult};

const READS_PER_TURN: u32 = 16;

struct Sock {
    gen: u32,
    fd: OwnedFd,
    connecting: bool,
    readable: bool,
    writable: bool,
    rdhup: bool,
    /// Output taken from the engine and not yet written, with how much of it is written.
    pending: Option<(Bytes, usize)>,
}

struct Loop {
    eng: Engine,
    epoll: Epoll,
    socks: Vec<Option<Sock>>,
    next_gen: u32,
    buf: Vec<u8>,
    events: Vec<Event>,
    /// Slots that still had input when their read budget ran out.
    again: Vec<(u32, u32)>,
    /// `--coalesce`, and scratch space for its second wait.
    coalesce: Option<Coalesce>,
    more: Vec<Event>,
}

fn key(slot: u32, gen: u32) -> u64 {
    (u64::from(gen) << 32) | u64::from(slot)
}

/// Set up an epoll instance in this thread, wait for the start, run the thread's share.
pub fn run(ctx: ThreadCtx) -> io::Result<Option<ThreadResult>> {
    let cfg = ctx.cfg.clone();
    let epoll = match Epoll::new() {
        Ok(e) => e,
        Err(e) => return Err(ctx.setup_failed(e, "epoll_create")),
    };
    if cfg.coalesce.is_some() {
        if let Err(e) = precise_sleeps() {
            return Err(ctx.setup_failed(e, "prctl(PR_SET_TIMERSLACK)"));
        }
    }
    let Some(eng) = ctx.start(Ok(())) else {
        return Ok(None);
    };
    let mut lp = Loop {
        socks: (0..eng.slots()).map(|_| None).collect(),
        eng,
        epoll,
        next_gen: 0,
        buf: vec![0; cfg.read_buf],
        events: Vec::with_capacity(cfg.max_events),
        again: Vec::new(),
        coalesce: cfg.coalesce,
        more: Vec::with_capacity(cfg.max_events),
    };
    let r = run_loop(&mut lp);
    if r.is_err() {
        lp.eng.abort();
    }
    // Dropping the sockets closes them.
    lp.socks.clear();
    r.map(|()| Some(lp.eng.into_result(Instant::now())))
}

impl Driver for Loop {
    fn engine(&mut self) -> &mut Engine {
        &mut self.eng
    }

    fn connect(&mut self, slot: u32) {
        let Some((sock, target)) = slot_socket(&mut self.eng, slot, true) else {
            return;
        };
        let gen = self.next_gen & UserData::GEN_MASK;
        self.next_gen = self.next_gen.wrapping_add(1);
        let flags = EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::ET;
        if let Err(e) = self.epoll.add(
            &sock,
            key(slot, gen),
            flags,
            &mut self.eng.counters.syscalls,
        ) {
            self.eng.connect_setup_failed(slot, &e);
            return;
        }
        self.eng.counters.syscalls.other += 1;
        let connecting = match sock.connect(&SockAddr::from(target)) {
            Ok(()) => false,
            Err(e) if e.raw_os_error() == Some(Errno::INPROGRESS.raw_os_error()) => true,
            Err(e) => {
                self.eng.connect_setup_failed(slot, &e);
                return;
            }
        };
        self.socks[slot as usize] = Some(Sock {
            gen,
            fd: OwnedFd::from(sock),
            connecting,
            readable: false,
            writable: !connecting,
            rdhup: false,
            pending: None,
        });
        self.eng.connect_started(slot);
        if !connecting {
            self.eng.connected(slot, Ok(()), Instant::now());
            self.pump(slot);
        }
    }

    /// Move bytes until the socket would block, then do what the engine asks.
    fn pump(&mut self, slot: u32) {
        let mut reads = 0;
        loop {
            let Loop {
                socks, eng, buf, ..
            } = self;
            let Some(Some(s)) = socks.get_mut(slot as usize) else {
                return;
            };
            if eng.wants_close(slot) {
                self.close(slot);
                return;
            }
            if s.connecting {
                return;
            }
            if let Err(e) = flush(s, slot, eng) {
                eng.io_error(slot, &e, true);
                continue;
            }
            if s.readable && eng.wants_read(slot) {
                if reads == READS_PER_TURN {
                    let gen = s.gen;
                    self.again.push((slot, gen));
                    return;
                }
                reads += 1;
                eng.counters.syscalls.recv += 1;
                match rustix::net::recv(&s.fd, &mut buf[..], RecvFlags::empty()) {
                    Ok((0, _)) => {
                        s.readable = false;
                        eng.eof(slot);
                    }
                    Ok((n, _)) => {
                        if n < buf.len() && !s.rdhup {
                            s.readable = false; // drained; new data raises a new edge
                        }
                        eng.recv(slot, &buf[..n], Instant::now());
                    }
                    Err(Errno::AGAIN) => s.readable = false,
                    Err(Errno::INTR) => {}
                    Err(e) => {
                        s.readable = false;
                        eng.io_error(slot, &e.into(), false);
                    }
                }
                continue;
            }
            return;
        }
    }

    fn turn(&mut self, deadline: Instant) -> io::Result<()> {
        let (timeout, co) = if self.again.is_empty() {
            (
                deadline.saturating_duration_since(Instant::now()),
                self.coalesce,
            )
        } else {
            (Duration::ZERO, None)
        };
        let mut events = std::mem::take(&mut self.events);
        wait_coalesced(
            &mut self.epoll,
            &mut events,
            &mut self.more,
            Some(timeout),
            co,
            &mut self.eng.counters.syscalls,
        )?;
        self.eng.tick(Instant::now());
        for (slot, gen) in std::mem::take(&mut self.again) {
            if self.live(slot, gen) {
                self.pump(slot);
            }
        }
        handle_all(self, events.drain(..), Loop::on_event);
        self.events = events;
        Ok(())
    }
}

impl Loop {
    fn on_event(&mut self, ev: Event) {
        let k = ev.data.u64();
        let (slot, gen) = (k as u32, (k >> 32) as u32);
        let Some(Some(s)) = self.socks.get_mut(slot as usize) else {
            return;
        };
        if s.gen != gen {
            return;
        }
        let r = Readiness::of(ev.flags);
        s.readable |= r.readable;
        s.rdhup |= r.rdhup;
        s.writable |= r.writable;
        if s.connecting && r.writable {
            s.connecting = false;
            self.eng.counters.syscalls.other += 1;
            let r = match rustix::net::sockopt::socket_error(&s.fd) {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(io::Error::from(e)),
                Err(e) => Err(io::Error::from(e)),
            };
            self.eng.connected(slot, r, Instant::now());
        }
        self.pump(slot);
    }

    fn live(&self, slot: u32, gen: u32) -> bool {
        matches!(self.socks.get(slot as usize), Some(Some(s)) if s.gen == gen)
    }

    fn close(&mut self, slot: u32) {
        if let Some(s) = self.socks[slot as usize].take() {
            // Closing the last reference removes it from the epoll set as well.
            self.eng.counters.syscalls.close += 1;
            drop(s.fd);
            self.eng.closed(slot);
        }
    }
}

/// Write the engine's output for `slot` until done or `EAGAIN`.
fn flush(s: &mut Sock, slot: u32, eng: &mut Engine) -> io::Result<()> {
    loop {
        if s.pending.is_none() {
            s.pending = eng.take_output(slot).map(|b| (b, 0));
        }
        let Some((b, off)) = s.pending.as_mut() else {
            return Ok(());
        };
        if !s.writable {
            return Ok(());
        }
        eng.counters.syscalls.send += 1;
        match rustix::net::send(&s.fd, &b[*off..], SendFlags::NOSIGNAL) {
            Ok(n) => {
                eng.sent(n);
                *off += n;
                if *off >= b.len() {
                    s.pending = None;
                }
            }
            Err(Errno::AGAIN) => {
                s.writable = false;
                return Ok(());
            }
            Err(Errno::INTR) => {}
            Err(e) => {
                s.pending = None;
                return Err(e.into());
            }
        }
    }
}
