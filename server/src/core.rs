//! What every backend's loop shares: the clock, the timer wheel, statistics, `--work`, accept
//! back-off, the connection limit (`--max-conns`), and the per-connection wrapper around the
//! protocol [`Session`].
//!
//! A backend is a loop that moves bytes between sockets and these calls; everything a request
//! costs besides IO happens here, once, for all backends.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringlab_proto::{Expired, Now, Proto, ServerConfig, Session};
use ringlab_runtime::stats::LoopClock;
use ringlab_runtime::timer::TimerWheel;
use ringlab_runtime::wake::Waker;

use crate::config::Args;
use crate::metrics::{Board, ServiceHist, Slot};
use crate::stats::LoopStats;

/// What every loop or pool is started with, whatever its backend.
#[derive(Clone)]
pub struct Shared {
    /// Command-line settings.
    pub args: Arc<Args>,
    /// Protocol settings.
    pub cfg: Arc<ServerConfig>,
    /// Set when the server must shut down; the loop's or pool's waker tells it to look.
    pub shutdown: Arc<AtomicBool>,
    /// Each loop (or the pool) reports here once it is set up (or why it could not be).
    pub ready: SyncSender<Result<(), String>>,
    /// The server-wide connection limit.
    pub limit: Arc<ConnLimit>,
    /// `--metrics`: where each loop publishes its figures.
    pub board: Option<Arc<Board>>,
    /// `--root`: the directory files are opened beneath (a path descriptor).
    pub root: Option<Arc<OwnedFd>>,
}

impl Shared {
    /// Whether shutdown was requested.
    pub fn shutdown_requested(&self) -> bool {
        self.shutdown.load(Ordering::Acquire)
    }
}

/// Everything a loop thread is started with.
pub struct LoopCtx {
    /// Loop index (0..number of loops).
    pub index: usize,
    /// The CPU this loop is for.
    pub cpu: usize,
    /// The listener this loop accepts on (its own with SO_REUSEPORT, or the shared one).
    pub listener: Arc<OwnedFd>,
    /// Wakes this loop.
    pub waker: Waker,
    pub shared: Shared,
}

impl LoopCtx {
    /// The waker's descriptor, for a backend that reads it through its own IO.
    pub fn waker_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::{AsFd, AsRawFd};
        self.waker.as_fd().as_raw_fd()
    }
}

impl std::ops::Deref for LoopCtx {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// Everything a pool backend (one runtime or worker pool over several CPUs) is started with.
pub struct PoolCtx {
    /// The CPUs the pool's threads run on (round-robin when there are more threads).
    pub cores: Vec<usize>,
    /// The listeners to accept on.
    pub listeners: Vec<Arc<OwnedFd>>,
    /// Wakes the pool's shutdown watcher.
    pub waker: Waker,
    pub shared: Shared,
}

impl std::ops::Deref for PoolCtx {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// For async backends: a thread that blocks on `waker` until shutdown is requested, then flips
/// the returned watch channel to `true` (so no runtime has to poll the flag).
pub fn shutdown_watch(
    waker: Waker,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<tokio::sync::watch::Receiver<bool>> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    // A new thread carries its parent's name until it has started: return only once it has,
    // so that no two threads share a loop's name.
    let (started_tx, started_rx) = std::sync::mpsc::sync_channel(0);
    std::thread::Builder::new()
        .name("ringlab-stop".into())
        .spawn(move || {
            let _ = started_tx.send(());
            while !shutdown.load(Ordering::Acquire) {
                let mut fds = [rustix::event::PollFd::new(
                    &waker,
                    rustix::event::PollFlags::IN,
                )];
                let _ = rustix::event::poll(&mut fds, None);
                waker.drain();
            }
            let _ = tx.send(true);
        })?;
    let _ = started_rx.recv();
    Ok(rx)
}

/// Resolves once the watch from [`shutdown_watch`] says `true`.
pub async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// The server-wide limit on open connections (`--max-conns`), shared by every loop. Only
/// accepting and closing touch it, never the request path.
#[derive(Debug)]
pub struct ConnLimit {
    max: usize,
    open: AtomicUsize,
}

impl ConnLimit {
    /// A limit of `max` connections (at least 1).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnLimit {
            max: max.max(1),
            open: AtomicUsize::new(0),
        })
    }

    /// Whether a slot is free now (another loop may take it first).
    fn has_room(&self) -> bool {
        self.open.load(Ordering::Acquire) < self.max
    }

    /// Take a slot, if one is free.
    fn take(self: &Arc<Self>) -> Option<ConnSlot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| ConnSlot(self.clone()))
    }
}

/// One connection's place under the limit; given back when the connection's state is dropped.
#[derive(Debug)]
struct ConnSlot(Arc<ConnLimit>);

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How often a loop at the connection limit looks whether a slot has freed (slots free up on
/// any loop; there is no cross-loop wake-up for it).
pub const LIMIT_POLL: Duration = Duration::from_millis(10);

/// The protocol session of one connection and the deadline its timer is armed for.
pub struct ConnCore {
    pub session: Session,
    timer_at: Option<Instant>,
    /// The connection's slot under `--max-conns` (none for a refused connection).
    _slot: Option<ConnSlot>,
}

/// Timer-wheel key of a connection slot in a generation.
pub fn timer_key(slot: u32, gen: u32) -> u64 {
    (u64::from(gen) << 32) | u64::from(slot)
}

/// Slot and generation from a timer-wheel key.
pub fn timer_key_parts(key: u64) -> (u32, u32) {
    (key as u32, (key >> 32) as u32)
}

/// The loop-wide state every backend shares.
pub struct LoopCore {
    pub cfg: Arc<ServerConfig>,
    pub clock: LoopClock,
    pub wheel: TimerWheel,
    pub stats: LoopStats,
    work: Duration,
    expired: Vec<(Instant, u64)>,
    /// When shutdown began, the time after which remaining connections are dropped.
    pub grace_deadline: Option<Instant>,
    grace: Duration,
    pub accept: AcceptBackoff,
    limit: Arc<ConnLimit>,
    /// Echo: connections accepted after the limit was reached (by another loop, or by an
    /// accept already in flight), held unserved until a slot frees.
    held: VecDeque<OwnedFd>,
    limit_paused: bool,
    /// `--metrics`: this loop's slot on the board, its service-time histogram, and where the
    /// current turn started (time, requests done by then).
    metrics: Option<Slot>,
    service: ServiceHist,
    turn_start: Instant,
    turn_requests: u64,
}

impl LoopCore {
    /// State for the loop described by `ctx`.
    pub fn new(ctx: &LoopCtx) -> Self {
        let mut core = Self::with(ctx.cfg.clone(), &ctx.args, ctx.cpu, ctx.limit.clone());
        core.attach(ctx.board.as_ref());
        core
    }

    /// Publish this loop's figures on `board` (`--metrics`), if there is one.
    pub fn attach(&mut self, board: Option<&Arc<Board>>) {
        self.metrics = board.map(|b| b.register(self.stats.cpu));
    }

    /// Copy the statistics (and service times) to the board, unless the scraper is reading
    /// them this very instant: the next turn will. Called after work, before the loop may
    /// block: at the end of a turn, after an async task's access, before a blocking call.
    pub fn publish(&self) {
        if let Some(Ok(mut m)) = self.metrics.as_ref().map(|m| m.try_lock()) {
            m.stats.clone_from(&self.stats);
            m.service = self.service;
        }
    }

    /// The end of a turn (before the loop waits): count its requests at the turn's duration,
    /// and publish.
    pub fn end_turn(&mut self) {
        if self.metrics.is_none() {
            return;
        }
        let n = self.stats.requests - self.turn_requests;
        if n > 0 {
            self.service.record(self.turn_start.elapsed(), n);
            self.turn_requests = self.stats.requests;
        }
        self.publish();
    }

    /// State for a loop (or worker thread) on `cpu` with these settings.
    pub fn with(cfg: Arc<ServerConfig>, args: &Args, cpu: usize, limit: Arc<ConnLimit>) -> Self {
        let clock = LoopClock::new();
        let now = clock.now();
        LoopCore {
            cfg,
            clock,
            wheel: TimerWheel::new(now),
            stats: LoopStats {
                cpu,
                ..LoopStats::default()
            },
            work: args.work,
            expired: Vec::new(),
            grace_deadline: None,
            grace: args.grace,
            accept: AcceptBackoff::default(),
            limit,
            held: VecDeque::new(),
            limit_paused: false,
            metrics: None,
            service: ServiceHist::default(),
            turn_start: now,
            turn_requests: 0,
        }
    }

    /// Whether the loop should accept now. HTTP always accepts (over `--max-conns` the
    /// connection is answered 503 and closed, see [`LoopCore::admit`]). Echo at the limit, or
    /// with connections still held: no; the loop stops accepting and looks again at
    /// `accept.retry_at`, which this sets.
    pub fn may_accept(&mut self) -> bool {
        if self.cfg.proto == Proto::Http || (self.held.is_empty() && self.limit.has_room()) {
            self.limit_paused = false;
            return true;
        }
        if !self.limit_paused {
            self.limit_paused = true;
            self.stats.limit_pauses += 1;
        }
        let at = self.clock.now() + LIMIT_POLL;
        self.accept.retry_at = Some(self.accept.retry_at.map_or(at, |t| t.max(at)));
        false
    }

    /// A connection was just accepted: its state. Under the limit it is served; HTTP over the
    /// limit gets a session that answers `503 Service Unavailable` and closes (counted in
    /// `refused`). Echo over the limit: `None`, the caller keeps the socket unserved (see
    /// [`LoopCore::hold`]) and stops accepting.
    pub fn admit(&mut self) -> Option<ConnCore> {
        let now = self.now();
        let mut conn = ConnCore {
            session: Session::new(&self.cfg, &now),
            timer_at: None,
            _slot: None,
        };
        match self.limit.take() {
            Some(slot) => conn._slot = Some(slot),
            None if self.cfg.proto == Proto::Http => {
                self.stats.refused += 1;
                conn.session.refuse(&now);
            }
            None => {
                self.may_accept(); // schedules the retry
                return None;
            }
        }
        self.stats.accepted += 1;
        Some(conn)
    }

    /// Keep an accepted socket that [`LoopCore::admit`] could not serve yet.
    pub fn hold(&mut self, fd: OwnedFd) {
        self.held.push_back(fd);
    }

    /// A held socket and its state, once a slot is free.
    pub fn unhold(&mut self) -> Option<(OwnedFd, ConnCore)> {
        if self.held.is_empty() {
            return None;
        }
        let conn = self.admit()?;
        let fd = self.held.pop_front()?;
        Some((fd, conn))
    }

    /// An accept failed with `err`: for an error to back off from (not a transient one), count
    /// it and stop accepting until `accept.retry_at`. Returns whether the loop backs off.
    pub fn accept_failed(&mut self, err: &std::io::Error) -> bool {
        if !accept_error_needs_backoff(err) {
            return false;
        }
        self.stats.accept_errors += 1;
        let now = self.clock.now();
        self.accept.on_error(err, self.stats.cpu, now);
        true
    }

    /// Read the clock; once per loop turn.
    pub fn tick(&mut self) {
        self.clock.update();
        if self.metrics.is_some() {
            self.turn_start = self.clock.now();
            self.turn_requests = self.stats.requests;
        }
    }

    /// [`LoopCore::tick`], and publish what was done so far: for the blocking pool, whose
    /// threads tick before each call that may block.
    pub fn tick_publish(&mut self) {
        self.tick();
        self.publish();
    }

    /// The time as the sessions see it.
    pub fn now(&self) -> Now {
        Now {
            at: self.clock.now(),
            date: self.clock.date(),
        }
    }

    /// Start shutting down: from now on the loop has `--grace` to finish.
    pub fn begin_shutdown(&mut self) {
        if self.grace_deadline.is_none() {
            self.grace_deadline = Some(self.clock.now() + self.grace);
        }
    }

    /// Whether the grace period is over.
    pub fn grace_over(&self) -> bool {
        self.grace_deadline.is_some_and(|d| self.clock.now() >= d)
    }

    /// How long the loop may block: until the next timer, accept retry or grace deadline.
    pub fn wait_timeout(&self) -> Option<Duration> {
        let now = self.clock.now();
        [
            self.wheel.next_deadline(),
            self.accept.retry_at,
            self.grace_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
        .map(|d| d.saturating_duration_since(now))
    }

    /// Timers due now, as `(deadline, key)`; call [`LoopCore::fire`] for each.
    pub fn take_expired(&mut self) -> Vec<(Instant, u64)> {
        let mut v = std::mem::take(&mut self.expired);
        v.clear();
        self.wheel.poll(self.clock.now(), &mut v);
        v
    }

    /// Give back the vector from [`LoopCore::take_expired`] for reuse.
    pub fn put_expired(&mut self, v: Vec<(Instant, u64)>) {
        self.expired = v;
    }

    /// A timer for `conn` fired at `deadline`: if it is still the one the session wants, run
    /// the session's timeout handling. Returns whether it was current.
    pub fn fire(&mut self, conn: &mut ConnCore, deadline: Instant) -> bool {
        if conn.timer_at != Some(deadline) {
            return false; // superseded: lazily cancelled
        }
        conn.timer_at = None;
        self.on_timeout(conn);
        true
    }

    /// For backends whose runtime keeps the timers (async runtimes, blocking workers): the
    /// session's deadline has passed.
    pub fn timeout(&mut self, conn: &mut ConnCore) {
        self.tick();
        conn.timer_at = None;
        self.on_timeout(conn);
    }

    fn on_timeout(&mut self, conn: &mut ConnCore) {
        let now = self.now();
        match conn.session.on_timeout(&self.cfg, &now) {
            Some(Expired::Header) => self.stats.header_timeouts += 1,
            Some(Expired::Idle) => self.stats.idle_timeouts += 1,
            None => {}
        }
    }

    /// Bytes arrived on `conn`.
    pub fn recv(&mut self, conn: &mut ConnCore, data: &[u8]) {
        self.stats.bytes_in += data.len() as u64;
        let now = self.now();
        let n = conn.session.on_recv(&self.cfg, data, &now);
        self.completed(n);
    }

    /// A file operation the session asked for completed (`--root`).
    pub fn file_done(&mut self, conn: &mut ConnCore, done: ringlab_proto::files::FileDone) {
        use ringlab_proto::files::FileDone;
        match &done {
            FileDone::Opened(_) => self.stats.file_opens += 1,
            FileDone::Read(Ok(b)) => {
                self.stats.file_reads += 1;
                self.stats.file_bytes += b.len() as u64;
            }
            FileDone::Sent(Ok(n)) => {
                self.stats.file_reads += 1;
                self.stats.file_bytes += *n as u64;
                self.stats.bytes_out += *n as u64;
            }
            FileDone::Read(Err(_)) | FileDone::Sent(Err(_)) | FileDone::Stat(_) => {}
        }
        if matches!(
            done,
            FileDone::Opened(Err(_))
                | FileDone::Stat(Err(_))
                | FileDone::Read(Err(_))
                | FileDone::Sent(Err(_))
        ) {
            self.stats.file_errors += 1;
        }
        self.deliver_file(conn, done);
    }

    /// An `Open` answered from the loop's cache of open files (`--file-cache`): counted as a
    /// hit, not as an open.
    pub fn file_cached(&mut self, conn: &mut ConnCore) {
        self.stats.file_cache_hits += 1;
        self.deliver_file(conn, ringlab_proto::files::FileDone::Opened(Ok(())));
    }

    fn deliver_file(&mut self, conn: &mut ConnCore, done: ringlab_proto::files::FileDone) {
        let now = self.now();
        let n = conn.session.on_file(&self.cfg, done, &now);
        self.completed(n);
    }

    /// The peer closed its write side.
    pub fn peer_eof(&mut self, conn: &mut ConnCore) {
        let now = self.now();
        conn.session.on_peer_eof(&self.cfg, &now);
    }

    /// `n` bytes of `conn`'s output were written.
    pub fn sent(&mut self, conn: &mut ConnCore, n: usize) {
        self.stats.bytes_out += n as u64;
        let now = self.now();
        let r = conn.session.on_sent(&self.cfg, n, &now);
        self.completed(r);
    }

    /// The write side of `conn` was shut down.
    pub fn write_shutdown(&mut self, conn: &mut ConnCore) {
        let now = self.now();
        conn.session.on_write_shutdown(&self.cfg, &now);
    }

    /// `conn` failed (reset, broken pipe, other error).
    pub fn conn_error(&mut self, conn: &mut ConnCore) {
        self.stats.conn_errors += 1;
        conn.session.abort();
    }

    /// Arm the wheel for the session's deadline if it changed. Call after every session call.
    ///
    /// A deadline that moved later (the idle timeout moves with every byte) keeps the entry
    /// already armed: it fires early, the session finds nothing due, and the entry is re-armed
    /// for the new deadline then. So a busy connection inserts about one entry per idle period
    /// rather than one per request, and the wheel holds O(connections) entries.
    pub fn sync_timer(&mut self, conn: &mut ConnCore, key: u64) {
        let want = conn.session.deadline(&self.cfg);
        match (want, conn.timer_at) {
            (Some(w), Some(armed)) if w >= armed => {}
            (Some(w), _) => {
                conn.timer_at = Some(w);
                self.wheel.insert(w, key);
            }
            (None, _) => conn.timer_at = None, // the armed entry is ignored when it fires
        }
    }

    fn completed(&mut self, requests: u32) {
        if requests == 0 {
            return;
        }
        self.stats.requests += u64::from(requests);
        if !self.work.is_zero() {
            // The handler's CPU time, on the loop, as a blocking handler would spend it.
            let until = Instant::now() + self.work * requests;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
    }
}

/// Back-off after accept errors (EMFILE, ENFILE, ENOMEM...): stop accepting for a while instead
/// of spinning, keep serving the connections already open, and say so at most once a second.
#[derive(Debug, Default)]
pub struct AcceptBackoff {
    /// When to try accepting again.
    pub retry_at: Option<Instant>,
    refused: u64,
    last_report: Option<Instant>,
}

/// How long to wait before accepting again after an accept error.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

impl AcceptBackoff {
    /// An accept failed with `err` at `now`; returns the retry time.
    pub fn on_error(&mut self, err: &std::io::Error, cpu: usize, now: Instant) -> Instant {
        self.refused += 1;
        if self
            .last_report
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            let hint = match rustix::io::Errno::from_io_error(err) {
                Some(rustix::io::Errno::MFILE) => {
                    " (the process is at its descriptor limit: raise `ulimit -n`, or run more processes)"
                }
                Some(rustix::io::Errno::NFILE) => {
                    " (the system is out of descriptors: raise fs.file-max)"
                }
                _ => "",
            };
            tracing::warn!(
                "ringlab-server: loop on CPU {cpu}: accept failed: {err}{hint}; {} refused since last report, backing off {} ms",
                self.refused,
                ACCEPT_BACKOFF.as_millis()
            );
            self.refused = 0;
            self.last_report = Some(now);
        }
        let at = now + ACCEPT_BACKOFF;
        self.retry_at = Some(at);
        at
    }

    /// Whether the back-off is over at `now` (clears it if so).
    pub fn ready(&mut self, now: Instant) -> bool {
        match self.retry_at {
            Some(t) if now < t => false,
            _ => {
                self.retry_at = None;
                true
            }
        }
    }
}

/// Whether an accept error is one to back off from (rather than a transient one to ignore).
pub fn accept_error_needs_backoff(err: &std::io::Error) -> bool {
    !matches!(
        rustix::io::Errno::from_io_error(err),
        Some(rustix::io::Errno::AGAIN)
            | Some(rustix::io::Errno::INTR)
            | Some(rustix::io::Errno::CONNABORTED)
            | Some(rustix::io::Errno::PROTO)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn core(extra: &[&str]) -> LoopCore {
        let mut argv = vec!["ringlab-server"];
        argv.extend_from_slice(extra);
        let args = Args::parse_from(argv);
        let limit = ConnLimit::new(args.max_conns as usize);
        LoopCore::with(Arc::new(args.server_config()), &args, 0, limit)
    }

    /// The idle deadline moves with every byte; the wheel must not gain an entry each time.
    #[test]
    fn busy_connection_keeps_one_timer_entry() {
        let mut lc = core(&["--proto", "http", "--idle-timeout", "60s"]);
        let mut conn = lc.admit().expect("under the limit");
        for _ in 0..1000 {
            std::thread::sleep(Duration::from_micros(20));
            lc.tick();
            lc.recv(&mut conn, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
            lc.sync_timer(&mut conn, timer_key(1, 1));
            let out = conn.session.take_output().expect("a response");
            lc.tick();
            lc.sent(&mut conn, out.len());
            lc.sync_timer(&mut conn, timer_key(1, 1));
        }
        assert!(
            lc.wheel.len() <= 2,
            "{} wheel entries for one connection",
            lc.wheel.len()
        );
    }

    #[test]
    fn connection_limit_is_server_wide() {
        // Two loops given one limit, as the server gives every loop its one `ConnLimit`: a
        // connection on either counts against both, and a slot freed on one serves the other.
        let args = Args::parse_from(["ringlab-server", "--max-conns", "2"]);
        let cfg = Arc::new(args.server_config());
        let limit = ConnLimit::new(2);
        let mut one = LoopCore::with(cfg.clone(), &args, 0, limit.clone());
        let mut two = LoopCore::with(cfg, &args, 1, limit);
        let a = one.admit().expect("loop one: first connection");
        let b = two.admit().expect("loop two: second connection");
        assert!(!one.may_accept(), "loop one must see loop two's connection");
        assert!(
            two.admit().is_none(),
            "a third connection over a limit of 2"
        );
        assert!(
            one.admit().is_none(),
            "a third connection over a limit of 2"
        );
        drop(a); // closed on loop one
        assert!(
            two.may_accept(),
            "loop two must see the slot loop one freed"
        );
        let _c = two.admit().expect("loop two takes the freed slot");
        drop(b);
    }

    #[test]
    fn echo_at_the_limit_pauses_and_http_refuses() {
        let mut echo = core(&["--max-conns", "1"]);
        let first = echo.admit().expect("under the limit");
        assert!(!echo.may_accept());
        assert!(echo.admit().is_none());
        assert_eq!(echo.stats.limit_pauses, 1);
        assert!(echo.accept.retry_at.is_some());
        drop(first);
        assert!(echo.may_accept());

        let mut http = core(&["--proto", "http", "--max-conns", "1"]);
        let _first = http.admit().expect("under the limit");
        assert!(http.may_accept(), "HTTP accepts, to refuse with 503");
        let mut refused = http.admit().expect("a refusing session");
        assert_eq!(http.stats.refused, 1);
        let out = refused.session.take_output().expect("the 503");
        assert!(out.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"));
    }
}
