//! The readiness backends: epoll (the readiness model at its best), and poll(2) and select(2)
//! (the same loop, with the interest set handed to the kernel on every wait).
//!
//! * Every socket is registered once, edge-triggered, for `EPOLLIN | EPOLLOUT | EPOLLRDHUP`:
//!   no `epoll_ctl` is ever needed to arm or disarm writes (one per connection in all).
//! * Listeners: accept until `EAGAIN` (`accept4` with `SOCK_NONBLOCK | SOCK_CLOEXEC`); a shared
//!   listener is registered with `EPOLLEXCLUSIVE` so one loop is woken per connection.
//! * Reads go into one buffer per loop (`--read-buf`), until `EAGAIN` or a short read (with ET a
//!   short read means the socket was drained; later data raises a new edge; a pending FIN is
//!   known from `EPOLLRDHUP` and read to the end), at most 16 reads per connection per turn so
//!   one flood cannot starve the others (the rest continue next turn without blocking).
//! * Writes happen at once, from the session's output; several pending buffers go out in one
//!   `writev`; only on `EAGAIN` does the connection wait for the edge-triggered `EPOLLOUT`.
//! * Large event arrays (`--max-events`).
//!
//! `--level-triggered` measures the other discipline: sockets are registered without
//! `EPOLLET` for only the events the session needs (`EPOLLIN` while it wants input, `EPOLLOUT`
//! only after a write hit `EAGAIN`), one read per readiness report, and interest changes are
//! `EPOLL_CTL_MOD` calls. `--busy-poll` sets the epoll instance's busy-poll time
//! (`EPIOCSPARAMS`, 6.9).
//!
//! `--io poll` and `--io select` run this same IO over a [`PollSet`] or a [`SelectSet`]
//! (see [`ringlab_runtime::poller`]): both are level-triggered by nature, so they run the
//! `--level-triggered` discipline, with interest changes made in this process's arrays rather
//! than by syscalls, and every wait walking every watched socket. select cannot watch a
//! descriptor at or above `FD_SETSIZE` (1024): such a connection is closed with a message that
//! says so.
//!
//! Files (`--root`): a readiness loop cannot wait for a disk (a regular file is always
//! "ready", and a read that misses the page cache blocks the thread), so it has the choices a
//! real readiness server has (`--file-io`): `threads` hands each file operation to a pool of
//! threads per loop that wakes the loop through its eventfd when done (nginx's `aio threads`);
//! `blocking` does them on the loop; `sendfile` opens and stats on the loop and moves the
//! body with sendfile(2), zero copy, once the head is sent (a miss blocks the loop too).
//! In every mode the loop keeps its cache of open files (`--file-cache`, see
//! [`crate::files`]): a hit is answered on the loop (the pool never sees it); what the pool
//! opens and stats is cached by the loop when the answer comes back.
//!
//! The loop itself (turn, timers, shutdown and grace, accept back-off, `--max-conns`) is
//! [`crate::event_loop`]; this file holds only the readiness IO.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ringlab_proto::Action;
use ringlab_runtime::epoll::{Epoll, Event, EventFlags};
use ringlab_runtime::poller::{
    precise_sleeps, wait_coalesced, Coalesce, PollSet, Poller, SelectSet,
};
use ringlab_runtime::slab::Slab;
use ringlab_runtime::wake::Waker;
use rustix::io::Errno;
use rustix::net::{RecvFlags, SendFlags, SocketFlags};

use ringlab_proto::files::{FileDone, FileOp};

use crate::config::{AcceptMode, FileIo};
use crate::core::{timer_key, timer_key_parts, ConnCore, LoopCore, LoopCtx};
use crate::event_loop::{admit_held, setup_failed, Driver, EventLoop};
use crate::files::{CacheNote, Cached, FilePool, OpenCache, PoolDone};
use crate::stats::LoopStats;

const LISTENER: u64 = u64::MAX - 1;
const WAKER: u64 = u64::MAX;
const READS_PER_TURN: u32 = 16;
const MAX_IOV: usize = 64;

struct Conn {
    fd: OwnedFd,
    core: ConnCore,
    readable: bool,
    writable: bool,
    rdhup: bool,
    /// Output taken from the session and not yet written, oldest first; `pending_off` bytes of
    /// the first buffer are already written.
    pending: VecDeque<Bytes>,
    pending_off: usize,
    shut: bool,
    /// The peer's EOF was read.
    eof: bool,
    /// Level-triggered mode: the events the socket is registered for, whether it is in the
    /// epoll set at all, and whether the kernel reported HUP or ERR for it.
    interest: EventFlags,
    registered: bool,
    hup: bool,
    /// Files: the connection's open file, whether a file operation is with the pool, and
    /// (`--file-io sendfile`) the body range to send once the output before it is out.
    file: Option<Arc<OwnedFd>>,
    file_busy: bool,
    sendfile: Option<(u64, usize)>,
    /// What the connection's file came with, for the cache.
    cache_note: CacheNote,
}

impl AsMut<ConnCore> for Conn {
    fn as_mut(&mut self) -> &mut ConnCore {
        &mut self.core
    }
}

/// The IO of one readiness loop over the set `P` (epoll, poll or select).
struct EpollIo<P> {
    epoll: P,
    listener: Arc<OwnedFd>,
    waker: Waker,
    conns: Slab<Conn>,
    buf: Vec<u8>,
    events: Vec<Event>,
    /// Connections that still had input when their read budget ran out.
    again: Vec<(u32, u32)>,
    listening: bool,
    /// `--level-triggered`, or a set that has no edges (poll, select).
    lt: bool,
    /// A new connection the set could not watch was reported (once per loop).
    told_unwatchable: bool,
    /// The listener's registration flags, and whether it is out of the set while accepting
    /// backs off (level-triggered: a listener with a backlog would otherwise report readiness
    /// on every wait, and the loop would spin until the retry time).
    listener_flags: EventFlags,
    listener_muted: bool,
    /// `--coalesce`, and scratch space for its second wait.
    coalesce: Option<Coalesce>,
    more: Vec<Event>,
    /// Files (`--root`): the root, how files are read, the pool (`--file-io threads`) and its
    /// answers.
    root: Option<Arc<OwnedFd>>,
    file_io: FileIo,
    pool: Option<FilePool>,
    pool_done: Vec<PoolDone>,
    /// `--file-cache`: the loop's open files.
    cache: OpenCache,
}

/// Run one epoll loop until shutdown; returns its statistics.
pub fn run(ctx: LoopCtx) -> io::Result<LoopStats> {
    let busy_poll = ctx.args.busy_poll;
    run_on(ctx, "epoll setup", move || {
        let epoll = Epoll::new()?;
        if !busy_poll.is_zero() {
            let us = busy_poll.as_micros().min(u128::from(u32::MAX)) as u32;
            epoll
                .set_busy_poll(us, 64, false)
                .map_err(|e| io::Error::new(e.kind(), format!("ioctl(EPIOCSPARAMS): {e}")))?;
        }
        Ok(epoll)
    })
}

/// Run one poll(2) loop until shutdown.
pub fn run_poll(ctx: LoopCtx) -> io::Result<LoopStats> {
    run_on(ctx, "poll setup", || Ok(PollSet::new()))
}

/// Run one select(2) loop until shutdown.
pub fn run_select(ctx: LoopCtx) -> io::Result<LoopStats> {
    run_on(ctx, "select setup", || Ok(SelectSet::new()))
}

/// Run one readiness loop over the set `make` builds.
fn run_on<P: Poller>(
    ctx: LoopCtx,
    what: &str,
    make: impl FnOnce() -> io::Result<P>,
) -> io::Result<LoopStats> {
    let mut sc = Default::default();
    let setup = (|| -> io::Result<(P, EventFlags)> {
        let mut set = make()?;
        set.add(
            ctx.waker.as_fd(),
            WAKER,
            EventFlags::IN | EventFlags::ET,
            &mut sc,
        )?;
        let mut lflags = EventFlags::IN;
        if !ctx.args.level_triggered {
            lflags |= EventFlags::ET;
        }
        if ctx.args.accept == AcceptMode::Shared {
            lflags |= EventFlags::EXCLUSIVE;
        }
        set.add(ctx.listener.as_fd(), LISTENER, lflags, &mut sc)?;
        Ok((set, lflags))
    })();
    let (set, listener_flags) = setup.map_err(|e| setup_failed(&ctx, what, e))?;
    let file_io = ctx.args.file_io();
    let pool = match (&ctx.root, file_io) {
        (Some(root), FileIo::Threads) => Some(
            FilePool::new(
                ctx.args.file_threads as usize,
                root.clone(),
                ctx.waker.clone(),
                ctx.cpu,
            )
            .map_err(|e| setup_failed(&ctx, "file threads", e))?,
        ),
        _ => None,
    };
    let coalesce = Coalesce::of(ctx.args.coalesce, ctx.args.coalesce_batch as usize);
    if coalesce.is_some() {
        precise_sleeps().map_err(|e| setup_failed(&ctx, "prctl(PR_SET_TIMERSLACK)", e))?;
    }
    let io = EpollIo {
        lt: ctx.args.level_triggered || !set.edge_triggered(),
        epoll: set,
        listener: ctx.listener.clone(),
        waker: ctx.waker.clone(),
        conns: Slab::default(),
        buf: vec![0; ctx.args.read_buf.max(512)],
        events: Vec::with_capacity(ctx.args.max_events.max(1)),
        again: Vec::new(),
        listening: true,
        told_unwatchable: false,
        listener_flags,
        listener_muted: false,
        coalesce,
        more: Vec::with_capacity(ctx.args.max_events.max(1)),
        root: ctx.root.clone(),
        file_io,
        pool,
        pool_done: Vec::new(),
        cache: OpenCache::new(ctx.args.file_cache as usize, ctx.args.file_cache_valid),
    };
    let mut lp = EventLoop::new(ctx, io);
    lp.core.stats.syscalls.add(&sc);
    lp.run()?;
    Ok(lp.stats())
}

impl<P: Poller> Driver for EpollIo<P> {
    type Conn = Conn;
    type Conns = Slab<Conn>;

    fn conns(&mut self) -> &mut Slab<Conn> {
        &mut self.conns
    }

    fn wait(&mut self, core: &mut LoopCore, timeout: Option<Duration>) -> io::Result<()> {
        // Connections with input left over from their read budget: look again at once (and do
        // not hold them back to coalesce).
        let (timeout, co) = if self.again.is_empty() {
            (timeout, self.coalesce)
        } else {
            (Some(Duration::ZERO), None)
        };
        wait_coalesced(
            &mut self.epoll,
            &mut self.events,
            &mut self.more,
            timeout,
            co,
            &mut core.stats.syscalls,
        )
    }

    fn dispatch(&mut self, core: &mut LoopCore) {
        for (slot, gen) in std::mem::take(&mut self.again) {
            if self.conns.get(slot, gen).is_some() {
                self.pump(core, slot);
            }
        }
        let events = std::mem::take(&mut self.events);
        for ev in events.iter() {
            match ev.data.u64() {
                WAKER => {
                    self.waker.drain();
                    self.files_done(core);
                }
                LISTENER => self.accept(core),
                key => self.ready(core, key, ev.flags),
            }
        }
        self.events = events;
    }

    fn pump(&mut self, core: &mut LoopCore, slot: u32) {
        EpollIo::<P>::pump(self, core, slot);
    }

    fn add(&mut self, core: &mut LoopCore, fd: OwnedFd, conn: ConnCore) {
        self.add_conn(core, fd, conn);
    }

    fn accept(&mut self, core: &mut LoopCore) {
        if !self.listening || core.accept.retry_at.is_some() {
            return;
        }
        self.mute_listener(core, false);
        // Connections accepted while at --max-conns go first, once there is room.
        admit_held(self, core);
        loop {
            if !core.may_accept() {
                // At --max-conns (echo): the listen backlog holds the rest.
                self.mute_listener(core, true);
                return;
            }
            core.stats.syscalls.accept += 1;
            match rustix::net::accept_with(
                &*self.listener,
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            ) {
                Ok(fd) => match core.admit() {
                    Some(conn) => self.add_conn(core, fd, conn),
                    None => {
                        // Another loop took the last slot meanwhile.
                        core.hold(fd);
                        return;
                    }
                },
                Err(Errno::AGAIN) => return,
                Err(e) => {
                    if core.accept_failed(&io::Error::from(e)) {
                        self.mute_listener(core, true);
                        return;
                    }
                }
            }
        }
    }

    fn accept_idle(&self) -> bool {
        self.listening
    }

    fn stop_accepting(&mut self, core: &mut LoopCore) {
        if self.listening {
            self.listening = false;
            let _ = self
                .epoll
                .delete(self.listener.as_fd(), &mut core.stats.syscalls);
        }
    }
}

impl<P: Poller> EpollIo<P> {
    /// `--file-io threads`: hand the pool's answers to their connections.
    fn files_done(&mut self, core: &mut LoopCore) {
        let Some(pool) = self.pool.as_mut() else {
            return;
        };
        let mut done = std::mem::take(&mut self.pool_done);
        pool.take_done(&mut done);
        for d in done.drain(..) {
            let (slot, gen) = timer_key_parts(d.key);
            // A connection closed meanwhile: its answer (and any file it opened) is dropped.
            if let Some(c) = self.conns.get(slot, gen) {
                c.file_busy = false;
                if matches!(d.done, FileDone::Opened(Ok(()))) {
                    c.file = d.file;
                }
                self.cache
                    .stated(&mut c.cache_note, c.file.as_ref(), &d.done);
                release_retired(&mut self.cache, core);
                core.file_done(&mut c.core, d.done);
                self.pump(core, slot);
            }
        }
        self.pool_done = done;
    }

    /// Level-triggered: take the listener out of the set while accepting backs off (`mute`), and
    /// put it back when accepting resumes. Edge-triggered needs neither: no new edge, no report.
    fn mute_listener(&mut self, core: &mut LoopCore, mute: bool) {
        if !self.lt || !self.listening || self.listener_muted == mute {
            return;
        }
        let sc = &mut core.stats.syscalls;
        let fd = self.listener.as_fd();
        // Out and back in rather than a change of interest: EPOLLEXCLUSIVE (shared accept) may
        // only be given when adding.
        let r = if mute {
            self.epoll.delete(fd, sc)
        } else {
            self.epoll.add(fd, LISTENER, self.listener_flags, sc)
        };
        match r {
            Ok(()) => self.listener_muted = mute,
            Err(e) => tracing::warn!(
                "ringlab-server: {}: cannot {} the listener: {e}",
                self.epoll.name(),
                if mute { "pause" } else { "resume" }
            ),
        }
    }

    /// The kernel reported `flags` for the connection with timer key `key`.
    fn ready(&mut self, core: &mut LoopCore, key: u64, f: EventFlags) {
        let (slot, gen) = timer_key_parts(key);
        let lt = self.lt;
        let Some(c) = self.conns.get(slot, gen) else {
            return;
        };
        if lt && f.intersects(EventFlags::HUP | EventFlags::ERR) {
            c.hup = true;
        }
        if f.intersects(EventFlags::IN | EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR) {
            c.readable = true;
        }
        if f.intersects(EventFlags::RDHUP | EventFlags::HUP) {
            c.rdhup = true;
        }
        if f.intersects(EventFlags::OUT | EventFlags::HUP | EventFlags::ERR) {
            c.writable = true;
        }
        self.pump(core, slot);
    }

    /// Register an accepted connection.
    fn add_conn(&mut self, core: &mut LoopCore, fd: OwnedFd, conn: ConnCore) {
        let conn = Conn {
            fd,
            core: conn,
            readable: false,
            writable: true, // a new socket has an empty send buffer
            rdhup: false,
            pending: VecDeque::new(),
            pending_off: 0,
            shut: false,
            eof: false,
            interest: EventFlags::IN | EventFlags::RDHUP,
            registered: true,
            hup: false,
            file: None,
            file_busy: false,
            sendfile: None,
            cache_note: CacheNote::None,
        };
        let (slot, gen) = self.conns.insert(conn);
        let c = self.conns.get(slot, gen).expect("just inserted");
        let flags = if self.lt {
            c.interest
        } else {
            EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::ET
        };
        if let Err(e) = self.epoll.add(
            c.fd.as_fd(),
            timer_key(slot, gen),
            flags,
            &mut core.stats.syscalls,
        ) {
            if !self.told_unwatchable {
                self.told_unwatchable = true;
                tracing::warn!(
                    "ringlab-server: {} cannot watch a new connection, closing it (and others like it, without saying so again): {e}",
                    self.epoll.name()
                );
            }
            core.stats.conn_errors += 1;
            self.close(core, slot);
            return;
        }
        // A refused connection (HTTP at --max-conns) has its 503 ready: send it now.
        self.pump(core, slot);
    }

    fn close(&mut self, core: &mut LoopCore, slot: u32) {
        if let Some(c) = self.conns.remove(slot) {
            // Closing the last reference removes it from an epoll set as well; a poll or
            // select set holds the number, which the next socket may reuse.
            self.epoll.closing(c.fd.as_fd());
            core.stats.syscalls.close += 1;
            core.stats.closed += 1;
            drop(c.fd);
        }
    }

    /// Move bytes until the connection would block, then do what its session asks.
    fn pump(&mut self, core: &mut LoopCore, slot: u32) {
        let mut reads = 0;
        loop {
            let EpollIo { conns, buf, .. } = self;
            let Some((gen, c)) = conns.get_slot(slot) else {
                return;
            };
            if let Err(_e) = flush(c, core) {
                core.conn_error(&mut c.core);
            }
            match c.core.session.action() {
                Action::Close => {
                    self.close(core, slot);
                    return;
                }
                Action::ShutdownWrite if !c.shut => {
                    c.shut = true;
                    core.stats.syscalls.shutdown += 1;
                    let _ = rustix::net::shutdown(&c.fd, rustix::net::Shutdown::Write);
                    core.write_shutdown(&mut c.core);
                    continue;
                }
                _ => {}
            }
            if file_step(
                c,
                core,
                timer_key(slot, gen),
                self.file_io,
                self.root.as_deref(),
                self.pool.as_mut(),
                &mut self.cache,
            ) {
                continue;
            }
            if c.readable && c.core.session.wants_read(&core.cfg) {
                if reads == READS_PER_TURN {
                    self.again.push((slot, gen));
                    break;
                }
                reads += 1;
                core.stats.syscalls.recv += 1;
                let got = rustix::net::recv(&c.fd, &mut buf[..], RecvFlags::empty());
                if self.lt {
                    // One read per readiness report: the next epoll_wait reports the rest.
                    c.readable = false;
                }
                match got {
                    Ok((0, _)) => {
                        c.readable = false;
                        c.eof = true;
                        core.peer_eof(&mut c.core);
                    }
                    Ok((n, _)) => {
                        if n < buf.len() && !c.rdhup {
                            c.readable = false; // drained; new data raises a new edge
                        }
                        core.recv(&mut c.core, &buf[..n]);
                    }
                    Err(Errno::AGAIN) => c.readable = false,
                    Err(Errno::INTR) => {}
                    Err(_) => {
                        c.readable = false;
                        core.conn_error(&mut c.core);
                    }
                }
                continue;
            }
            break;
        }
        let EpollIo { conns, epoll, .. } = self;
        let mut failed = false;
        if let Some((gen, c)) = conns.get_slot(slot) {
            if self.lt {
                // Register for exactly what the connection waits for now.
                let mut want = EventFlags::empty();
                if !c.eof && c.core.session.wants_read(&core.cfg) {
                    want |= EventFlags::IN | EventFlags::RDHUP;
                }
                if !c.writable && (!c.pending.is_empty() || c.sendfile.is_some()) {
                    want |= EventFlags::OUT;
                }
                let key = timer_key(slot, gen);
                let sc = &mut core.stats.syscalls;
                let r = if c.hup && want.is_empty() {
                    // HUP and ERR are reported whatever the interest, and level-triggered on
                    // every wait: with nothing to do until a timer fires, leave the set rather
                    // than spin on them.
                    let r = if c.registered {
                        epoll.delete(c.fd.as_fd(), sc)
                    } else {
                        Ok(())
                    };
                    c.registered = false;
                    r
                } else if !c.registered {
                    c.registered = true;
                    c.interest = want;
                    epoll.add(c.fd.as_fd(), key, want, sc)
                } else if want != c.interest {
                    c.interest = want;
                    epoll.modify(c.fd.as_fd(), key, want, sc)
                } else {
                    Ok(())
                };
                if r.is_err() {
                    core.conn_error(&mut c.core);
                    failed = true;
                }
            }
            core.sync_timer(&mut c.core, timer_key(slot, gen));
        }
        if failed {
            // The session now asks for the close.
            self.pump(core, slot);
        }
    }
}

/// Do the connection's next file operation, if it has one and none is under way: on the loop
/// (`blocking`, and `sendfile` but for reads), handed to the pool (`threads`), or, for a
/// `sendfile` read, sendfile(2) once every byte before it is sent. Returns whether the session
/// was answered (it may have new output or operations: pump again).
fn file_step(
    c: &mut Conn,
    core: &mut LoopCore,
    key: u64,
    mode: FileIo,
    root: Option<&OwnedFd>,
    pool: Option<&mut FilePool>,
    cache: &mut OpenCache,
) -> bool {
    if let Some((offset, len)) = c.sendfile {
        if !c.pending.is_empty() || c.core.session.has_output() || !c.writable {
            return false; // the head (or what precedes it) goes first
        }
        let Some(file) = c.file.clone() else {
            c.sendfile = None;
            core.file_done(&mut c.core, FileDone::Sent(Err(Errno::BADF.raw_os_error())));
            return true;
        };
        let mut off = offset;
        core.stats.syscalls.file += 1;
        match rustix::fs::sendfile(&c.fd, &*file, Some(&mut off), len) {
            Ok(n) => {
                c.sendfile = None;
                core.file_done(&mut c.core, FileDone::Sent(Ok(n)));
            }
            Err(Errno::AGAIN) => {
                c.writable = false;
                return false;
            }
            Err(Errno::INTR) => {}
            Err(e) => {
                c.sendfile = None;
                core.file_done(&mut c.core, FileDone::Sent(Err(e.raw_os_error())));
                core.conn_error(&mut c.core);
            }
        }
        return true;
    }
    if c.file_busy {
        return false;
    }
    let Some(op) = c.core.session.take_file_op() else {
        return false;
    };
    let Some(root) = root else {
        // Sessions ask for files only with --root.
        c.core.session.abort();
        return true;
    };
    // A hot file: its open and the stat after it are answered on the loop, in every mode.
    let op = match cache.answer(op, core.clock.now(), &mut c.cache_note) {
        Ok(Cached::Opened(f)) => {
            c.file = Some(f);
            release_retired(cache, core);
            core.file_cached(&mut c.core);
            return true;
        }
        Ok(Cached::Stat(meta)) => {
            core.file_done(&mut c.core, FileDone::Stat(Ok(meta)));
            return true;
        }
        Err(op) => {
            release_retired(cache, core);
            op
        }
    };
    match (op, mode) {
        (FileOp::Close, _) => {
            // The cache, another connection or (for a moment) the pool may still hold it: the
            // last owner closes it.
            if let Some(f) = c.file.take() {
                release(f, core);
            }
        }
        (FileOp::Read { offset, len }, FileIo::Sendfile) => c.sendfile = Some((offset, len)),
        (op, FileIo::Threads) => match pool {
            Some(pool) => {
                c.file_busy = true;
                pool.submit(key, op, c.file.clone());
            }
            None => c.core.session.abort(),
        },
        (op, FileIo::Blocking | FileIo::Sendfile) => {
            core.stats.syscalls.file += 1;
            if let Some((done, opened)) = crate::files::exec(root.as_fd(), c.file.as_deref(), &op) {
                if let Some(f) = opened {
                    c.file = Some(Arc::new(f));
                }
                cache.stated(&mut c.cache_note, c.file.as_ref(), &done);
                release_retired(cache, core);
                core.file_done(&mut c.core, done);
            }
        }
    }
    true
}

/// Let go of a file: closed (counted) if this was the last reference.
fn release(f: Arc<OwnedFd>, core: &mut LoopCore) {
    if let Some(fd) = Arc::into_inner(f) {
        core.stats.syscalls.close += 1;
        drop(fd);
    }
}

/// Let go of the files the cache let go of.
fn release_retired(cache: &mut OpenCache, core: &mut LoopCore) {
    while let Some(f) = cache.take_retired() {
        release(f, core);
    }
}

/// Write the session's output until done or `EAGAIN`. Errors mean the connection failed.
fn flush(c: &mut Conn, core: &mut LoopCore) -> Result<(), Errno> {
    loop {
        while let Some(b) = c.core.session.take_output() {
            c.pending.push_back(b);
        }
        if c.pending.is_empty() || !c.writable {
            return Ok(());
        }
        let r = if c.pending.len() == 1 {
            core.stats.syscalls.send += 1;
            rustix::net::send(&c.fd, &c.pending[0][c.pending_off..], SendFlags::NOSIGNAL)
        } else {
            core.stats.syscalls.writev += 1;
            let mut iov: [IoSlice<'_>; MAX_IOV] = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, b) in c.pending.iter().take(MAX_IOV).enumerate() {
                iov[i] = IoSlice::new(if i == 0 { &b[c.pending_off..] } else { b });
                n += 1;
            }
            rustix::io::writev(c.fd.as_fd(), &iov[..n])
        };
        match r {
            Ok(mut n) => {
                core.sent(&mut c.core, n);
                while n > 0 {
                    let first = c.pending[0].len() - c.pending_off;
                    if n >= first {
                        n -= first;
                        c.pending.pop_front();
                        c.pending_off = 0;
                    } else {
                        c.pending_off += n;
                        n = 0;
                    }
                }
            }
            Err(Errno::AGAIN) => {
                c.writable = false;
                return Ok(());
            }
            Err(Errno::INTR) => {}
            Err(e) => {
                c.pending.clear();
                c.pending_off = 0;
                c.core.session.on_send_failed();
                return Err(e);
            }
        }
    }
}
