//! What every IO driver's loop shares: connection slots and their life cycle, the connect ramp,
//! request issue (closed loop) and dispatch from the schedule (open loop), timeouts, the run's
//! phases, and recording into histograms and counters.
//!
//! A driver is a loop that moves bytes between sockets and these calls. It owns the sockets;
//! the engine owns everything else, and tells the driver through [`Work`] which slots to
//! connect and which to pump (send output, close). Slots are numbered `0..n` per thread; a
//! driver tags its in-flight operations with its own generation per socket so that a late
//! completion never reaches the next socket of the same slot.
//!
//! Phases: `Run` (requests issued; before `measure_start` they are warmup and not recorded),
//! `Drain` (no new requests; connections close once their answers are in, or at the drain
//! deadline, when what is left counts as timeouts), `Done`.
//!
//! Time, as in `ringlab_proto::Session`: the engine never reads the wall clock. The driver
//! passes the turn's time to [`Engine::tick`]; responses, timeouts, connects and phases are
//! timed by it (the bytes a turn handles were there when it began). Calls that may issue
//! requests ([`Engine::connected`], [`Engine::recv`], [`Engine::poll`]) take a fresh reading
//! too, which stamps those requests: a request issued late in a batch of events would
//! otherwise look older than it is (measured: +45 µs on the median at 64 connections against
//! wrk, which reads the clock per request). The next time the engine needs the loop awake goes
//! out as a value ([`Engine::deadline`]). The tests run it on a virtual clock (`tests.rs`).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::args::RunConfig;
use crate::conn::{Conn, DataError, Eof, Stamp};
use crate::schedule::Schedule;
use crate::stats::{Counters, Errors};

mod connect;
mod record;
#[cfg(test)]
mod tests;
mod types;

use connect::backoff;
pub use connect::describe_connect_error;
pub use record::thread_cpu_time;
use record::Recorder;
pub use types::{GaveUp, Interval, ThreadPlan, ThreadResult, Timeline};

/// Connections and requests the driver must act on.
#[derive(Default, Debug)]
pub struct Work {
    /// Slots to open a connection for (call [`Engine::connect_started`] per slot).
    pub connect: Vec<u32>,
    /// Slots whose output or state changed (send what is queued, close if asked).
    pub pump: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No socket. Waiting in the connect queue, or for a back-off, or for nothing (done).
    Idle,
    Connecting {
        since: Instant,
    },
    Open,
    /// The driver must close the socket and then call [`Engine::closed`].
    Closing,
}

struct Slot {
    id: usize,
    state: State,
    conn: Option<Conn>,
    bind: Option<SocketAddr>,
    /// Consecutive failed connects.
    fails: u32,
    /// The current connection ended in an error.
    failed: bool,
    /// The current connection completed at least one request.
    answered: bool,
    retry_at: Option<Instant>,
    in_spare: bool,
    connected_before: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Run,
    Drain { deadline: Instant },
    Done,
}

/// The shared per-thread state.
pub struct Engine {
    pub cfg: Arc<RunConfig>,
    plan: ThreadPlan,
    tl: Timeline,
    now: Instant,
    phase: Phase,
    slots: Vec<Slot>,
    /// Slots with a live socket (Connecting, Open or Closing).
    live: usize,
    connect_queue: VecDeque<u32>,
    next_connect_at: Instant,
    connect_interval: Option<Duration>,
    schedule: Option<Schedule>,
    /// Open loop: intended times due but not yet sent.
    backlog: VecDeque<Instant>,
    /// Open loop: slots that may take another request (may hold stale entries).
    spare: VecDeque<u32>,
    /// Closed loop: measured requests left to issue (--requests).
    budget: Option<u64>,
    consecutive_connect_failures: u32,
    last_connect_success: Instant,
    next_sweep: Instant,
    sweep_every: Duration,
    ended_at: Option<Instant>,
    stop: Arc<AtomicBool>,
    /// A slot settled during the drain since the last [`Engine::poll`]: whether the run is done
    /// is checked there, once a turn (the check reads every slot: once per answer or close it
    /// cost O(connections²) over a drain, ~10⁸ slot reads at 10,000 connections).
    recheck_done: bool,
    work: Work,
    // Results.
    rec: Recorder,
    pub counters: Counters,
    pub errors: Errors,
    gave_up: Option<GaveUp>,
    first_data_error: Option<String>,
    first_connect_error: Option<String>,
}

impl Engine {
    /// The engine of thread `plan` on the run's `timeline`. Its time is `timeline.start` until
    /// the first [`Engine::tick`].
    pub fn new(
        cfg: Arc<RunConfig>,
        plan: ThreadPlan,
        tl: Timeline,
        tx: Sender<Interval>,
        stop: Arc<AtomicBool>,
    ) -> Engine {
        let slots: Vec<Slot> = plan
            .conn_ids
            .iter()
            .map(|&id| Slot {
                id,
                state: State::Idle,
                conn: None,
                bind: if cfg.bind.is_empty() {
                    None
                } else {
                    Some(SocketAddr::new(cfg.bind[id % cfg.bind.len()], 0))
                },
                fails: 0,
                failed: false,
                answered: false,
                retry_at: None,
                in_spare: false,
                connected_before: false,
            })
            .collect();
        let connect_queue = (0..slots.len() as u32).collect();
        let schedule = plan.rate.map(|r| {
            let mut s = Schedule::new(tl.start, r, plan.phase);
            if let Some(end) = tl.end {
                s.stop_at(end);
            }
            if let Some(n) = plan.requests {
                s.limit(s.count_before(tl.measure_start) + n);
            }
            s
        });
        let sweep_every =
            (cfg.timeout / 20).clamp(Duration::from_millis(1), Duration::from_millis(100));
        Engine {
            connect_interval: plan
                .connect_rate
                .map(|r| Duration::from_secs_f64(1.0 / r.max(1e-6))),
            budget: if plan.rate.is_none() {
                plan.requests
            } else {
                None
            },
            rec: Recorder::new(plan.index, tl.measure_start, tx),
            plan,
            now: tl.start,
            phase: Phase::Run,
            slots,
            live: 0,
            connect_queue,
            next_connect_at: tl.start,
            schedule,
            backlog: VecDeque::new(),
            spare: VecDeque::new(),
            consecutive_connect_failures: 0,
            last_connect_success: tl.start,
            next_sweep: tl.start,
            sweep_every,
            ended_at: None,
            stop,
            recheck_done: false,
            work: Work::default(),
            counters: Counters::default(),
            errors: Errors::default(),
            gave_up: None,
            first_data_error: None,
            first_connect_error: None,
            tl,
            cfg,
        }
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The time given to the last [`Engine::tick`].
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The time is `now`: the turn's reading, taken by the driver once at the top of every
    /// loop turn (and again every so many events of a large batch, so that latencies stay exact).
    pub fn tick(&mut self, now: Instant) {
        self.now = now;
        if self.phase != Phase::Done {
            self.rec.tick(now);
        }
    }

    /// When the loop must be awake next: the next connect, scheduled send, sweep, interval
    /// boundary or drain deadline (once the run is done, a short wait for the closes).
    pub fn deadline(&self) -> Instant {
        if self.phase == Phase::Done {
            return self.now + Duration::from_millis(10);
        }
        let mut next = self.next_sweep.min(self.rec.next_boundary());
        if !self.connect_queue.is_empty() {
            next = next.min(self.next_connect_at);
        }
        if let Some(s) = &self.schedule {
            if self.phase == Phase::Run {
                if let Some(t) = s.next() {
                    next = next.min(t);
                }
            }
        }
        if let Phase::Drain { deadline } = self.phase {
            next = next.min(deadline);
        }
        if let Some(end) = self.tl.end {
            if self.phase == Phase::Run {
                next = next.min(end);
            }
        }
        next
    }

    /// Whether the loop may exit: the run is over and every socket is closed.
    pub fn finished(&self) -> bool {
        self.phase == Phase::Done && self.live == 0
    }

    /// Move the work gathered so far (by [`Engine::poll`] and by the calls that handled
    /// completions) into `out`, whose vectors the driver empties after acting on them.
    pub fn take_work(&mut self, out: &mut Work) {
        std::mem::swap(&mut self.work, out);
    }

    /// Decide the turn's work: phase changes, timeouts, connects, scheduled requests. Call once
    /// a turn, after handling completions; then [`Engine::take_work`]. `sent`: a fresh reading,
    /// which stamps the scheduled requests handed to connections here.
    pub fn poll(&mut self, sent: Instant) {
        let now = self.now;
        // Open loop: take what is due first, so that a run ending in this turn (a loop that
        // woke late) still counts every request its schedule intended before the end: sent
        // below, or counted unsent when the drain begins.
        if self.phase == Phase::Run {
            if let Some(s) = &mut self.schedule {
                let backlog = &mut self.backlog;
                s.take_due(now, |t| backlog.push_back(t));
            }
        }
        // Phase changes.
        if self.phase == Phase::Run {
            let over = self.stop.load(Ordering::Relaxed)
                || self.tl.end.is_some_and(|e| now >= e)
                || self.budget == Some(0)
                // (--requests in open loop: every scheduled request sent, none left waiting)
                || (self.schedule.as_ref().is_some_and(|s| s.ended()) && self.backlog.is_empty());
            if over {
                self.begin_drain();
            }
        }
        if std::mem::take(&mut self.recheck_done) {
            self.check_done();
        }
        if now >= self.next_sweep {
            self.next_sweep = now + self.sweep_every;
            self.sweep();
        }
        if let Phase::Drain { deadline } = self.phase {
            if now >= deadline {
                self.end_drain();
            }
        }
        // Connects, paced by --connect-rate.
        if self.phase == Phase::Run {
            while let Some(&slot) = self.connect_queue.front() {
                if self.next_connect_at > now {
                    break;
                }
                self.connect_queue.pop_front();
                if self.slots[slot as usize].state != State::Idle {
                    continue;
                }
                if let Some(iv) = self.connect_interval {
                    self.next_connect_at += iv;
                    // Far behind (a stalled loop): restart the ramp from now, never a flood.
                    if self.next_connect_at + Duration::from_millis(100) < now {
                        self.next_connect_at = now;
                    }
                }
                self.work.connect.push(slot);
            }
        }
        // Open loop: hand what is due to connections with room.
        if self.phase == Phase::Run {
            self.dispatch(sent);
        }
    }

    fn begin_drain(&mut self) {
        self.ended_at.get_or_insert(self.now);
        self.rec.stop_cpu(self.now);
        let deadline = self.now + self.cfg.timeout;
        self.phase = Phase::Drain { deadline };
        // Due but never sent: behind schedule.
        let ms = self.tl.measure_start;
        self.counters.unsent += self.backlog.iter().filter(|t| **t >= ms).count() as u64;
        self.backlog.clear();
        self.connect_queue.clear();
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            match s.state {
                State::Connecting { .. } => {
                    s.state = State::Closing;
                    self.work.pump.push(i as u32);
                }
                State::Open if s.conn.as_ref().is_none_or(|c| c.inflight() == 0) => {
                    s.state = State::Closing;
                    self.work.pump.push(i as u32);
                }
                _ => {}
            }
        }
        self.check_done();
    }

    fn end_drain(&mut self) {
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            if let (State::Open | State::Closing, Some(c)) = (s.state, s.conn.as_mut()) {
                self.errors.timeouts += c.abandon() as u64;
            }
            if matches!(s.state, State::Open | State::Connecting { .. }) {
                s.state = State::Closing;
                self.work.pump.push(i as u32);
            }
        }
        self.phase = Phase::Done;
    }

    fn check_done(&mut self) {
        if matches!(self.phase, Phase::Drain { .. })
            && self
                .slots
                .iter()
                .all(|s| matches!(s.state, State::Idle | State::Closing))
        {
            self.phase = Phase::Done;
        }
    }

    /// Timeouts, back-offs, giving up. Runs every `sweep_every` (timeouts are that coarse).
    fn sweep(&mut self) {
        let now = self.now;
        let timeout = self.cfg.timeout;
        let running = self.phase == Phase::Run;
        for i in 0..self.slots.len() {
            let s = &mut self.slots[i];
            match s.state {
                State::Connecting { since } if now.saturating_duration_since(since) >= timeout => {
                    self.errors.connect_timeout += 1;
                    self.first_connect_error.get_or_insert_with(|| {
                        format!("connect to {} timed out after {timeout:?}", self.cfg.target)
                    });
                    s.failed = true;
                    self.consecutive_connect_failures += 1;
                    s.state = State::Closing;
                    self.work.pump.push(i as u32);
                }
                State::Open => {
                    let Some(c) = s.conn.as_mut() else { continue };
                    if c.oldest_sent()
                        .is_some_and(|t| now.saturating_duration_since(t) >= timeout)
                    {
                        self.errors.timeouts += c.abandon() as u64;
                        s.failed = true;
                        s.state = State::Closing;
                        self.work.pump.push(i as u32);
                    }
                }
                State::Idle if running && s.retry_at.is_some_and(|t| t <= now) => {
                    s.retry_at = None;
                    self.connect_queue.push_back(i as u32);
                }
                _ => {}
            }
        }
        // Nothing connects: stop trying rather than spin until the end of the run.
        if running
            && self.slots.iter().all(|s| !matches!(s.state, State::Open))
            && self.consecutive_connect_failures >= 3 * (self.slots.len().min(4) as u32)
            && now.saturating_duration_since(self.last_connect_success) >= Duration::from_secs(1)
        {
            let why = self
                .first_connect_error
                .clone()
                .unwrap_or_else(|| "connections keep failing".to_string());
            self.gave_up = Some(GaveUp(format!(
                "gave up after {} failed connects in a row: {why}",
                self.consecutive_connect_failures
            )));
            self.begin_drain();
        }
    }

    /// Open loop: hand the due intended times to connections with room, as sent at `sent`.
    fn dispatch(&mut self, sent: Instant) {
        while let Some(&intended) = self.backlog.front() {
            let Some(slot) = self.spare.pop_front() else {
                return;
            };
            let s = &mut self.slots[slot as usize];
            s.in_spare = false;
            let Some(c) = s.conn.as_mut() else { continue };
            if s.state != State::Open || c.peer_closing() || c.inflight() >= self.cfg.pipeline {
                continue;
            }
            self.backlog.pop_front();
            // The raw (uncorrected) latency starts at the real send, the corrected one at the
            // intended time.
            c.push_request(Stamp { intended, sent });
            let room = c.inflight() < self.cfg.pipeline;
            self.counters.requests_sent += 1;
            self.rec.lag(intended, sent);
            if room {
                s.in_spare = true;
                self.spare.push_back(slot);
            }
            self.work.pump.push(slot);
        }
    }

    fn mark_spare(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        if !s.in_spare {
            s.in_spare = true;
            self.spare.push_back(slot);
        }
    }

    /// Closed loop: issue requests on `slot` until its pipeline is full, as sent (and meant to
    /// be sent) at `now`, a fresh reading (see the module's notes on time).
    fn fill(&mut self, slot: u32, now: Instant) {
        let ms = self.tl.measure_start;
        let s = &mut self.slots[slot as usize];
        let Some(c) = s.conn.as_mut() else { return };
        while self.phase == Phase::Run
            && s.state == State::Open
            && !c.peer_closing()
            && c.inflight() < self.cfg.pipeline
        {
            if now >= ms {
                match &mut self.budget {
                    Some(0) => break,
                    Some(b) => *b -= 1,
                    None => {}
                }
            }
            c.push_request(Stamp {
                intended: now,
                sent: now,
            });
            self.counters.requests_sent += 1;
        }
    }

    /// Where slot `slot` connects to, and the local address to bind first, if any.
    pub fn connect_target(&self, slot: u32) -> (SocketAddr, Option<SocketAddr>) {
        (self.cfg.target, self.slots[slot as usize].bind)
    }

    /// The driver started connecting `slot`.
    pub fn connect_started(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.state = State::Connecting { since: self.now };
        self.live += 1;
    }

    /// The socket for `slot` could not even be created or bound (no syscall in flight).
    pub fn connect_setup_failed(&mut self, slot: u32, e: &io::Error) {
        self.note_connect_error(e);
        let s = &mut self.slots[slot as usize];
        s.fails += 1;
        s.state = State::Idle;
        self.consecutive_connect_failures += 1;
        let backoff = backoff(s.fails);
        s.retry_at = Some(self.now + backoff);
        s.failed = false;
    }

    fn note_connect_error(&mut self, e: &io::Error) {
        self.errors.count_connect(e);
        if self.first_connect_error.is_none() {
            self.first_connect_error = Some(describe_connect_error(e, &self.cfg));
        }
    }

    /// The connect of `slot` finished with `res`.
    /// `sent`: a fresh reading, which stamps the requests it issues on the new connection.
    pub fn connected(&mut self, slot: u32, res: io::Result<()>, sent: Instant) {
        let now = self.now;
        let s = &mut self.slots[slot as usize];
        let State::Connecting { since } = s.state else {
            return; // closing already (timeout, end of run)
        };
        if let Err(e) = res {
            s.failed = true;
            s.state = State::Closing;
            self.consecutive_connect_failures += 1;
            self.note_connect_error(&e);
            self.work.pump.push(slot);
            return;
        }
        self.rec.connect_time(now.saturating_duration_since(since));
        self.counters.connects += 1;
        if s.connected_before {
            self.counters.reconnects += 1;
        }
        s.connected_before = true;
        s.failed = false;
        s.answered = false;
        self.consecutive_connect_failures = 0;
        self.last_connect_success = now;
        s.conn = Some(Conn::new(&self.cfg.request, s.id as u64));
        if self.phase == Phase::Run {
            s.state = State::Open;
            if self.schedule.is_some() {
                self.mark_spare(slot);
                self.dispatch(sent);
            } else {
                self.fill(slot, sent);
            }
        } else {
            s.state = State::Closing;
        }
        self.work.pump.push(slot);
    }

    /// Bytes arrived on `slot`. Responses they complete are timed at the turn's [`Engine::tick`];
    /// `sent`, a fresh reading, stamps the requests issued in their place.
    pub fn recv(&mut self, slot: u32, data: &[u8], sent: Instant) {
        self.counters.bytes_received += data.len() as u64;
        let now = self.now;
        let Some((c, rec, counters)) = self.open_conn(slot) else {
            return; // closing: input is dropped
        };
        let mut completed = 0u32;
        let r = c.on_recv(data, |d| {
            completed += 1;
            rec.complete(&d, now, counters);
        });
        if let Err(e) = r {
            self.data_error(slot, e);
            return;
        }
        if completed > 0 {
            self.slots[slot as usize].answered = true;
            self.after_responses(slot, sent);
        }
    }

    /// The connection of `slot` if it is open, and what recording its responses takes.
    fn open_conn(&mut self, slot: u32) -> Option<(&mut Conn, &mut Recorder, &mut Counters)> {
        let s = &mut self.slots[slot as usize];
        if s.state != State::Open {
            return None;
        }
        Some((s.conn.as_mut()?, &mut self.rec, &mut self.counters))
    }

    fn after_responses(&mut self, slot: u32, sent: Instant) {
        let s = &mut self.slots[slot as usize];
        let Some(c) = s.conn.as_ref() else { return };
        if c.peer_closing() {
            // The server closes after this response; anything still outstanding is lost.
            let lost = c.inflight();
            if lost > 0 {
                self.errors.requests_lost += lost as u64;
                self.errors.closed_mid_response += 1;
            }
            s.state = State::Closing;
        } else if self.phase != Phase::Run {
            if c.inflight() == 0 {
                s.state = State::Closing;
                self.recheck_done = true;
            }
        } else if self.schedule.is_some() {
            self.mark_spare(slot);
            self.dispatch(sent);
        } else {
            self.fill(slot, sent);
        }
    }

    fn data_error(&mut self, slot: u32, e: DataError) {
        match &e {
            DataError::EchoMismatch(_) => self.errors.echo_mismatch += 1,
            DataError::Malformed(_) => self.errors.malformed_response += 1,
            DataError::Unexpected => self.errors.unexpected_data += 1,
        }
        if self.first_data_error.is_none() {
            self.first_data_error = Some(e.to_string());
        }
        let s = &mut self.slots[slot as usize];
        if let Some(c) = s.conn.as_mut() {
            self.errors.requests_lost += c.abandon() as u64;
        }
        s.failed = true;
        s.state = State::Closing;
    }

    /// The server closed its side of `slot` (a read returned 0).
    pub fn eof(&mut self, slot: u32) {
        let now = self.now;
        let Some((c, rec, counters)) = self.open_conn(slot) else {
            return;
        };
        let r = c.on_eof(|d| rec.complete(&d, now, counters));
        let s = &mut self.slots[slot as usize];
        match r {
            Ok(Eof::Clean) => {
                // Closed while idle (a server's keep-alive limit): reconnect without back-off.
                s.state = State::Closing;
            }
            Ok(Eof::MidResponse(n)) => {
                self.errors.closed_mid_response += 1;
                self.errors.requests_lost += n as u64;
                if let Some(c) = s.conn.as_mut() {
                    c.abandon();
                }
                s.failed = true;
                s.state = State::Closing;
            }
            Err(e) => self.data_error(slot, e),
        }
    }

    /// A read or write on `slot` failed.
    pub fn io_error(&mut self, slot: u32, e: &io::Error, write: bool) {
        use rustix::io::Errno;
        let s = &mut self.slots[slot as usize];
        if s.state != State::Open {
            return;
        }
        match Errno::from_io_error(e) {
            Some(Errno::CONNRESET | Errno::PIPE | Errno::CONNABORTED) => self.errors.reset += 1,
            _ if write => self.errors.write_other += 1,
            _ => self.errors.read_other += 1,
        }
        if let Some(c) = s.conn.as_mut() {
            self.errors.requests_lost += c.abandon() as u64;
        }
        s.failed = true;
        s.state = State::Closing;
    }

    /// `n` bytes of `slot`'s output reached the kernel.
    pub fn sent(&mut self, n: usize) {
        self.counters.bytes_sent += n as u64;
    }

    /// Output queued for `slot`, to be written.
    pub fn take_output(&mut self, slot: u32) -> Option<Bytes> {
        let s = &mut self.slots[slot as usize];
        if s.state != State::Open {
            return None;
        }
        s.conn.as_mut()?.take_output()
    }

    /// Whether the driver should read from `slot`.
    pub fn wants_read(&self, slot: u32) -> bool {
        self.slots[slot as usize].state == State::Open
    }

    /// Whether the driver must close `slot`'s socket (and then call [`Engine::closed`]).
    pub fn wants_close(&self, slot: u32) -> bool {
        self.slots[slot as usize].state == State::Closing
    }

    /// Whether `slot` is connecting.
    pub fn is_connecting(&self, slot: u32) -> bool {
        matches!(self.slots[slot as usize].state, State::Connecting { .. })
    }

    /// The driver closed `slot`'s socket: reconnect it (after a back-off if it failed) while
    /// the run goes on.
    pub fn closed(&mut self, slot: u32) {
        let now = self.now;
        let s = &mut self.slots[slot as usize];
        if s.state == State::Idle {
            return;
        }
        self.live -= 1;
        self.counters.closes += 1;
        s.conn = None;
        s.state = State::Idle;
        s.in_spare = false;
        // A connection that failed before answering anything counts as a failed attempt, and
        // attempts back off; one that did useful work is reopened at once.
        if s.failed && !s.answered {
            s.fails += 1;
        } else {
            s.fails = 0;
        }
        if self.phase == Phase::Run {
            if s.fails > 0 {
                s.retry_at = Some(now + backoff(s.fails));
            } else {
                self.connect_queue.push_back(slot);
            }
        }
        s.failed = false;
        s.answered = false;
        self.recheck_done = true;
    }

    /// Stop now (the loop failed): close everything.
    pub fn abort(&mut self) {
        self.begin_drain();
        self.end_drain();
    }

    /// The thread's results. Call once the loop has exited, at `now`.
    pub fn into_result(mut self, now: Instant) -> ThreadResult {
        if self.rec.measuring() {
            self.now = now;
        }
        let (cpu_time, cpu_wall) = self.rec.finish(now);
        let rec = self.rec;
        ThreadResult {
            thread: self.plan.index,
            cpu: self.plan.cpu,
            corrected: rec.corrected,
            raw: rec.raw,
            connect: rec.connect,
            lag: rec.lag,
            counters: self.counters,
            errors: self.errors,
            cpu_time,
            cpu_wall,
            last_completion: rec.last_completion,
            ended_at: self.ended_at.unwrap_or(self.now),
            gave_up: self.gave_up,
            first_data_error: self.first_data_error,
            first_connect_error: self.first_connect_error,
        }
    }
}
