//! The server side of one connection, as a sans-IO state machine.
//!
//! Life of a connection:
//!
//! ```text
//!  Open ──(error response or Connection: close)──▶ Closing   (input after it is dropped)
//!  Open, after peer EOF or server shutdown: answer what was received, then as Closing
//!  Closing ──(all output sent: Action::ShutdownWrite)──▶ Lingering ──(peer EOF or linger over)──▶ Done
//! ```
//!
//! Output is released strictly in request order: a response (or echoed chunk) that must wait for
//! its delay holds back everything behind it, so pipelining never reorders bytes.
//!
//! Timeouts (all measured on the `Now` values the backend passes in, and reported through
//! [`Session::deadline`] / [`Session::on_timeout`], so no backend keeps timers of its own):
//!
//! * header timeout (HTTP): a request head must be complete within `header_timeout` of the
//!   moment the session started waiting for it (the connection opened, or the first byte of a
//!   later request arrived, or the previous request was parsed with bytes of the next one
//!   behind it). When it expires with part of a head received, the answer is
//!   `408 Request Timeout` and the connection closes; with nothing received, it just closes.
//!   Not armed while the session itself holds input back (backpressure).
//! * idle timeout (echo and HTTP): no byte received, no byte sent and no output released for
//!   `idle_timeout`, and no output held by a delay. With nothing owed to the peer the
//!   connection closes gracefully (FIN); with output the peer never reads, it is aborted.
//! * request limit (HTTP): the `max_requests`-th response on a connection carries
//!   `Connection: close`, and the connection closes after it.
//!
//! Backpressure: while the bytes the session holds for the peer (ready, scheduled and taken by the
//! backend but not yet confirmed sent) exceed `out_high_water`, the session stops parsing and
//! [`Session::wants_read`] turns false; backends then stop reading from the socket. Input that was
//! already in flight is buffered, and parsed once the peer has read enough.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::files::{self, FileDone, FileKind, FileMeta, FileOp, RangeAnswer};
use crate::http::{self, RequestError, RequestParser};

/// The current time, as the backend's loop read it once per turn.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Monotonic time, for every deadline.
    pub at: Instant,
    /// The value of the HTTP `Date` header (IMF-fixdate, always 29 bytes).
    pub date: [u8; 29],
}

impl Now {
    /// A `Now` with a fixed date, for tests and tools that do not care about `Date`.
    pub fn with_fixed_date(at: Instant) -> Self {
        Now {
            at,
            date: *b"Sun, 06 Nov 1994 08:49:37 GMT",
        }
    }
}

/// Which protocol a server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// Every byte comes back unchanged.
    Echo,
    /// HTTP/1.1 (and 1.0) with keep-alive and pipelining.
    Http,
}

/// Settings shared by every session of a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The protocol spoken.
    pub proto: Proto,
    /// Echo: hold every received chunk this long before it goes back.
    pub delay: Duration,
    /// HTTP limits (header size and count, body size).
    pub limits: http::Limits,
    /// Stop parsing input while this many bytes wait to be sent to the peer.
    pub out_high_water: usize,
    /// After our side of a closing connection is shut down, keep draining input this long so
    /// that the peer reads our last response instead of a reset.
    pub linger: Duration,
    /// HTTP: how long a request head may take to arrive (see the module docs). Zero: no limit.
    pub header_timeout: Duration,
    /// How long a connection may make no progress in either direction. Zero: no limit.
    pub idle_timeout: Duration,
    /// HTTP: requests served per connection; the last response carries `Connection: close`.
    /// Zero: no limit.
    pub max_requests: u64,
    /// HTTP: serve `GET`/`HEAD /files/<path>` (the loop has a root directory to open beneath).
    pub files: bool,
    /// Files: bytes asked for by one read.
    pub file_chunk: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            proto: Proto::Echo,
            delay: Duration::ZERO,
            limits: http::Limits::default(),
            out_high_water: 256 * 1024,
            linger: Duration::from_secs(2),
            header_timeout: Duration::ZERO,
            idle_timeout: Duration::ZERO,
            max_requests: 0,
            files: false,
            file_chunk: 64 * 1024,
        }
    }
}

/// Which timeout [`Session::on_timeout`] acted on, for statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    /// The request head did not arrive within `header_timeout`.
    Header,
    /// No progress for `idle_timeout`.
    Idle,
}

/// What the backend must do next with the socket, besides sending output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Keep going: send output if there is any, read if [`Session::wants_read`].
    Continue,
    /// Everything has been sent: shut down the write side, then call
    /// [`Session::on_write_shutdown`].
    ShutdownWrite,
    /// Close the socket; the session is finished.
    Close,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Open,
    Closing,
    Lingering { until: Instant },
    Done,
}

/// A file response under way. While one is, no further request is parsed, so that responses
/// stay in request order.
#[derive(Debug)]
struct FileJob {
    req: http::Request,
    keep_alive: bool,
    path: String,
    stage: FileStage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FileStage {
    /// `Open` asked for.
    Opening,
    /// `Stat` asked for.
    Stating,
    /// Sending bytes `next..end`; `reading`: a `Read` is outstanding.
    Body { next: u64, end: u64, reading: bool },
}

/// Output at least this long is queued as its own buffer rather than copied.
const CHUNK_MIN: usize = 4096;

#[derive(Debug)]
struct Scheduled {
    at: Instant,
    bytes: Bytes,
}

/// The server side of one connection.
#[derive(Debug)]
pub struct Session {
    mode: Mode,
    peer_eof: bool,
    /// The server is shutting down: no more reading, finish what was received.
    stop_reading: bool,
    inbuf: BytesMut,
    /// HTTP only: the request parser (echo sessions carry none).
    parser: Option<Box<RequestParser>>,
    scheduled: VecDeque<Scheduled>,
    scheduled_bytes: usize,
    /// Ready output: whole buffers (`out_q`, sent first) and then the small writes (`out`).
    out_q: VecDeque<Bytes>,
    out_q_bytes: usize,
    out: BytesMut,
    in_flight: usize,
    /// Files: the response under way, and the operations asked of the loop, oldest first.
    file: Option<Box<FileJob>>,
    file_ops: VecDeque<FileOp>,
    /// The last time a byte came in, went out, or output was released.
    last_activity: Instant,
    /// HTTP: since when the session has been waiting for the rest of a request head.
    head_since: Option<Instant>,
    /// HTTP: requests answered on this connection.
    served: u64,
}

impl Session {
    /// A new connection's session; `now` is when the connection was accepted (the clock of
    /// its timeouts starts there).
    pub fn new(cfg: &ServerConfig, now: &Now) -> Self {
        Session {
            mode: Mode::Open,
            peer_eof: false,
            stop_reading: false,
            inbuf: BytesMut::new(),
            parser: match cfg.proto {
                Proto::Http => Some(Box::new(RequestParser::new())),
                Proto::Echo => None,
            },
            scheduled: VecDeque::new(),
            scheduled_bytes: 0,
            out_q: VecDeque::new(),
            out_q_bytes: 0,
            out: BytesMut::new(),
            in_flight: 0,
            file: None,
            file_ops: VecDeque::new(),
            last_activity: now.at,
            head_since: match cfg.proto {
                Proto::Http => Some(now.at),
                Proto::Echo => None,
            },
            served: 0,
        }
    }

    /// The server is at its connection limit (HTTP): answer `503 Service Unavailable` with
    /// `Connection: close` at once, read nothing, and close.
    pub fn refuse(&mut self, now: &Now) {
        let mut buf = BytesMut::new();
        http::write_error_response(
            &mut buf,
            503,
            &now.date,
            b"the server is at its connection limit",
        );
        self.emit(now.at, now, buf.freeze());
        self.mode = Mode::Closing;
        self.head_since = None;
        self.inbuf.clear();
    }

    /// Bytes held for the peer: ready, scheduled, and handed to the backend but not yet sent.
    pub fn pending_output(&self) -> usize {
        self.out.len() + self.out_q_bytes + self.scheduled_bytes + self.in_flight
    }

    /// Bytes received but not yet parsed (held back by backpressure or an incomplete request).
    pub fn buffered_input(&self) -> usize {
        self.inbuf.len()
    }

    /// Feed bytes received from the peer. Returns how many requests (HTTP requests, or echo
    /// chunks) were completed by them, for statistics and `--work`.
    pub fn on_recv(&mut self, cfg: &ServerConfig, data: &[u8], now: &Now) -> u32 {
        if !data.is_empty() {
            self.last_activity = now.at;
        }
        match self.mode {
            Mode::Open => {}
            // Our side is done talking: what the peer still sends is read and dropped.
            Mode::Closing | Mode::Lingering { .. } | Mode::Done => return 0,
        }
        if data.is_empty() {
            return 0;
        }
        // Echo fast path: nothing buffered and room to send, so echo straight from `data`
        // (one copy, the same one the buffered path would make).
        if cfg.proto == Proto::Echo && self.inbuf.is_empty() && self.has_room(cfg) {
            self.echo_chunk(cfg, data, now);
            return 1;
        }
        self.inbuf.extend_from_slice(data);
        self.process(cfg, now)
    }

    /// The peer shut down its write side (a read returned 0). Input already received is still
    /// answered; the write side is shut down once everything is sent.
    pub fn on_peer_eof(&mut self, _cfg: &ServerConfig, _now: &Now) {
        self.peer_eof = true;
        if let Mode::Lingering { .. } = self.mode {
            self.mode = Mode::Done;
        }
    }

    /// The backend's timer for [`Session::deadline`] fired (or any later time arrived).
    /// Returns the timeout that closed the connection, if one did.
    pub fn on_timeout(&mut self, cfg: &ServerConfig, now: &Now) -> Option<Expired> {
        if self.release_due(now.at) {
            self.last_activity = now.at;
        }
        if let Mode::Lingering { until } = self.mode {
            if now.at >= until {
                self.mode = Mode::Done;
            }
        }
        let mut expired = None;
        if self.idle_deadline(cfg).is_some_and(|d| now.at >= d) {
            expired = Some(Expired::Idle);
            self.head_since = None;
            self.inbuf.clear();
            // Nothing owed: a graceful close. Output the peer has not taken for so long: it is
            // not reading (or gone), so give up on it.
            self.mode = if self.pending_output() == 0 {
                Mode::Closing
            } else {
                Mode::Done
            };
        } else if self.header_deadline(cfg).is_some_and(|d| now.at >= d) {
            expired = Some(Expired::Header);
            self.head_since = None;
            if !self.inbuf.is_empty() {
                let mut buf = BytesMut::new();
                http::write_error_response(
                    &mut buf,
                    408,
                    &now.date,
                    b"the request head did not arrive in time",
                );
                self.emit(now.at, now, buf.freeze());
                // The peer gets a whole idle period to read it.
                self.last_activity = now.at;
            }
            self.mode = Mode::Closing;
            self.inbuf.clear();
        }
        // Released output may have made room for buffered input.
        self.process(cfg, now);
        expired
    }

    /// The next time at which [`Session::on_timeout`] must be called, if any.
    pub fn deadline(&self, cfg: &ServerConfig) -> Option<Instant> {
        let release = self.scheduled.front().map(|s| s.at);
        let linger = match self.mode {
            Mode::Lingering { until } => Some(until),
            _ => None,
        };
        [
            release,
            linger,
            self.idle_deadline(cfg),
            self.header_deadline(cfg),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When the idle timeout closes the connection, if it is armed: in `Open` or `Closing`,
    /// with no output held back by a delay (the server, not the peer, is waiting then).
    fn idle_deadline(&self, cfg: &ServerConfig) -> Option<Instant> {
        if cfg.idle_timeout.is_zero()
            || !matches!(self.mode, Mode::Open | Mode::Closing)
            || !self.scheduled.is_empty()
            || self.file_waiting()
        {
            return None;
        }
        Some(self.last_activity + cfg.idle_timeout)
    }

    /// When the header timeout expires, if it is armed: HTTP, open, waiting for the peer to
    /// finish a request head, not held back by backpressure or shutdown.
    fn header_deadline(&self, cfg: &ServerConfig) -> Option<Instant> {
        if cfg.header_timeout.is_zero()
            || self.mode != Mode::Open
            || self.peer_eof
            || self.stop_reading
            || !self.has_room(cfg)
        {
            return None;
        }
        self.head_since.map(|t| t + cfg.header_timeout)
    }

    /// Take every byte that is ready to be sent. The backend owns the returned buffer until it
    /// has written it, and reports progress with [`Session::on_sent`].
    /// Several buffers may be ready (file data is handed on without a copy): call it until it
    /// returns `None` to take them all.
    pub fn take_output(&mut self) -> Option<Bytes> {
        let b = match self.out_q.pop_front() {
            Some(b) => {
                self.out_q_bytes -= b.len();
                b
            }
            None if self.out.is_empty() => return None,
            None => self.out.split().freeze(),
        };
        self.in_flight += b.len();
        Some(b)
    }

    /// Whether output is ready to be taken.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty() || !self.out_q.is_empty()
    }

    /// The next file operation the loop must perform for this connection, if any (see
    /// [`FileOp`]; they must be performed in the order taken).
    pub fn take_file_op(&mut self) -> Option<FileOp> {
        self.file_ops.pop_front()
    }

    /// Whether a file operation is waiting to be taken.
    pub fn has_file_op(&self) -> bool {
        !self.file_ops.is_empty()
    }

    /// Whether the session waits for the outcome of a file operation it asked for (the
    /// server, not the peer, is slow then: the idle timeout is not armed).
    pub fn file_waiting(&self) -> bool {
        self.file.as_ref().is_some_and(|j| match j.stage {
            FileStage::Opening | FileStage::Stating => true,
            FileStage::Body { reading, .. } => reading,
        })
    }

    /// A file operation the loop took from [`Session::take_file_op`] completed. Returns how many
    /// requests were completed by input this unblocked (as [`Session::on_recv`]).
    pub fn on_file(&mut self, cfg: &ServerConfig, done: FileDone, now: &Now) -> u32 {
        let Some(mut job) = self.file.take() else {
            // The session gave up on the file meanwhile (aborted or timed out): ignore.
            return 0;
        };
        match (job.stage, done) {
            (FileStage::Opening, FileDone::Opened(Ok(()))) => {
                job.stage = FileStage::Stating;
                self.file_ops.push_back(FileOp::Stat);
                self.file = Some(job);
            }
            (FileStage::Opening, FileDone::Opened(Err(e))) => {
                self.file_error(cfg, &job, files::errno_status(e), false, now);
            }
            (FileStage::Stating, FileDone::Stat(Ok(meta))) => self.file_head(cfg, job, meta, now),
            (FileStage::Stating, FileDone::Stat(Err(e))) => {
                self.file_error(cfg, &job, files::errno_status(e), true, now);
            }
            (FileStage::Body { next, end, .. }, FileDone::Read(r)) => {
                let got = match r {
                    Ok(b) if !b.is_empty() => {
                        let want = (end - next).min(b.len() as u64) as usize;
                        let n = want as u64;
                        self.put(now, b.slice(..want));
                        Ok(n)
                    }
                    Ok(_) => Err(()),
                    Err(_) => Err(()),
                };
                self.file_advance(cfg, job, next, end, got, now);
            }
            (FileStage::Body { next, end, .. }, FileDone::Sent(r)) => {
                let got = match r {
                    Ok(n) if n > 0 => {
                        self.last_activity = now.at;
                        Ok((n as u64).min(end - next))
                    }
                    _ => Err(()),
                };
                self.file_advance(cfg, job, next, end, got, now);
            }
            (_, _) => {
                // An answer to an operation that was not asked for: a loop bug. Give up on
                // the connection rather than guess the framing.
                self.file_ops.push_back(FileOp::Close);
                self.mode = Mode::Done;
            }
        }
        self.process(cfg, now)
    }

    /// `n` bytes of taken output reached the kernel. Returns requests completed by input that
    /// this unblocked (backpressure released).
    pub fn on_sent(&mut self, cfg: &ServerConfig, n: usize, now: &Now) -> u32 {
        debug_assert!(n <= self.in_flight, "sent more than was taken");
        if n > 0 {
            self.last_activity = now.at;
        }
        self.in_flight = self.in_flight.saturating_sub(n);
        self.process(cfg, now)
    }

    /// The backend gave up on output it had taken (the connection failed): forget it.
    pub fn on_send_failed(&mut self) {
        self.in_flight = 0;
        self.out.clear();
        self.out_q.clear();
        self.out_q_bytes = 0;
        self.mode = Mode::Done;
    }

    /// Whether the backend should be reading from the socket now.
    pub fn wants_read(&self, cfg: &ServerConfig) -> bool {
        match self.mode {
            Mode::Open => !self.peer_eof && !self.stop_reading && self.has_room(cfg),
            // Input after our last response is read and dropped, so that the peer sees that
            // response rather than a reset caused by unread data.
            Mode::Closing | Mode::Lingering { .. } => !self.peer_eof,
            Mode::Done => false,
        }
    }

    /// The server is shutting down: read nothing more, answer what has been received (however
    /// long its delays), then close.
    pub fn begin_shutdown(&mut self) {
        self.stop_reading = true;
    }

    /// The connection failed (reset, error): nothing more will be sent or received.
    pub fn abort(&mut self) {
        self.mode = Mode::Done;
    }

    /// What the backend must do next.
    pub fn action(&self) -> Action {
        match self.mode {
            Mode::Done => Action::Close,
            Mode::Closing if self.pending_output() == 0 && self.file.is_none() => {
                Action::ShutdownWrite
            }
            // No more input will come: once everything answerable is answered and sent (what
            // is left in `inbuf` then is a request that can never complete), close our side.
            Mode::Open
                if (self.peer_eof || self.stop_reading)
                    && self.pending_output() == 0
                    && self.file.is_none() =>
            {
                Action::ShutdownWrite
            }
            _ => Action::Continue,
        }
    }

    /// The backend shut down the write side after [`Action::ShutdownWrite`].
    pub fn on_write_shutdown(&mut self, cfg: &ServerConfig, now: &Now) {
        self.mode = if self.peer_eof || cfg.linger.is_zero() {
            Mode::Done
        } else {
            Mode::Lingering {
                until: now.at + cfg.linger,
            }
        };
    }

    /// Whether the session is idle: nothing buffered, nothing pending, no partial request.
    pub fn is_idle(&self) -> bool {
        self.inbuf.is_empty() && self.pending_output() == 0 && self.file.is_none()
    }

    fn has_room(&self, cfg: &ServerConfig) -> bool {
        self.pending_output() < cfg.out_high_water
    }

    fn process(&mut self, cfg: &ServerConfig, now: &Now) -> u32 {
        let mut requests = 0;
        self.file_more(cfg);
        while self.mode == Mode::Open
            && !self.inbuf.is_empty()
            && self.has_room(cfg)
            && self.file.is_none()
        {
            match cfg.proto {
                Proto::Echo => {
                    let chunk = self.inbuf.split();
                    self.echo_chunk(cfg, &chunk, now);
                    requests += 1;
                }
                Proto::Http => match self
                    .parser
                    .get_or_insert_with(|| Box::new(RequestParser::new()))
                    .parse(&mut self.inbuf, &cfg.limits)
                {
                    Ok(Some(req)) => {
                        requests += 1;
                        self.respond(cfg, req, now);
                        // Bytes of the next request already here: its head is due from now.
                        self.head_since = (!self.inbuf.is_empty()).then_some(now.at);
                    }
                    Ok(None) => {
                        // A client that sent `Expect: 100-continue` waits for this before it
                        // sends the body (curl does, for large POSTs).
                        if self
                            .parser
                            .as_mut()
                            .is_some_and(|p| p.take_expect_continue())
                        {
                            let mut buf = BytesMut::new();
                            http::write_continue(&mut buf);
                            self.emit(now.at, now, buf.freeze());
                        }
                        break;
                    }
                    Err(e) => {
                        self.respond_error(&e, now);
                        break;
                    }
                },
            }
        }
        self.track_head(cfg, now);
        requests
    }

    /// HTTP: start the header clock when the first byte of a head arrives; stop it while the
    /// head is complete (a body is awaited) or the session is no longer open.
    fn track_head(&mut self, cfg: &ServerConfig, now: &Now) {
        let Some(parser) = self.parser.as_ref() else {
            return;
        };
        if self.mode != Mode::Open
            || !parser.awaiting_head()
            || !self.has_room(cfg)
            || self.file.is_some()
        {
            // No head awaited, or the session itself holds input back (backpressure): the
            // clock starts again once the peer is the one the session waits for.
            self.head_since = None;
        } else if self.head_since.is_none() && !self.inbuf.is_empty() {
            self.head_since = Some(now.at);
        }
    }

    fn echo_chunk(&mut self, cfg: &ServerConfig, data: &[u8], now: &Now) {
        if cfg.delay.is_zero() && self.scheduled.is_empty() {
            self.out.extend_from_slice(data);
        } else {
            self.schedule(now.at + cfg.delay, Bytes::copy_from_slice(data));
        }
    }

    fn respond(&mut self, cfg: &ServerConfig, req: http::Request, now: &Now) {
        self.served += 1;
        // The last request this connection may make is answered with `Connection: close`.
        let last = cfg.max_requests != 0 && self.served >= cfg.max_requests;
        let keep_alive = req.keep_alive && !last;
        let get = matches!(req.method, http::Method::Get | http::Method::Head);
        let path = req.path();
        if cfg.files {
            if let Some(rest) = path.strip_prefix(files::PREFIX) {
                if get {
                    match files::check_path(rest) {
                        Ok(p) => {
                            self.file_ops.push_back(FileOp::Open { path: p.clone() });
                            self.file = Some(Box::new(FileJob {
                                req,
                                keep_alive,
                                path: p,
                                stage: FileStage::Opening,
                            }));
                            return;
                        }
                        Err(files::PathError::Bad(why)) => {
                            let why = why.as_bytes().to_vec();
                            return self.respond_with(&req, keep_alive, 400, &why, &[], now);
                        }
                    }
                }
                return self.respond_with(&req, keep_alive, 405, b"", &[b"Allow: GET, HEAD"], now);
            }
        }
        // (status, body, delay, extra headers)
        let (status, body, delay, extra): (u16, &[u8], u64, &[&[u8]]) = match path {
            "/" if get => (200, HELLO, 0, &[]),
            "/" => (405, b"", 0, &[b"Allow: GET, HEAD"]),
            "/echo" if req.method == http::Method::Post => (200, &req.body, 0, &[]),
            "/echo" => (405, b"", 0, &[b"Allow: POST"]),
            p if p.starts_with("/delay/") && get => match parse_delay_ms(&p["/delay/".len()..]) {
                Some(ms) => (200, HELLO, ms, &[]),
                None => (400, BAD_DELAY, 0, &[]),
            },
            _ => (404, NOT_FOUND, 0, &[]),
        };
        let at = now.at + Duration::from_millis(delay);
        if at <= now.at && self.scheduled.is_empty() {
            // Due now with nothing ahead of it: straight into the send buffer, no copy.
            http::write_response_with(
                &mut self.out,
                &req,
                status,
                keep_alive,
                &now.date,
                extra,
                body,
            );
        } else {
            let mut buf = BytesMut::new();
            http::write_response_with(&mut buf, &req, status, keep_alive, &now.date, extra, body);
            self.schedule(at, buf.freeze());
        }
        if !keep_alive {
            self.mode = Mode::Closing;
            self.inbuf.clear();
        }
    }

    /// A response due now, behind whatever is queued (keep-alive as asked).
    fn respond_with(
        &mut self,
        req: &http::Request,
        keep_alive: bool,
        status: u16,
        body: &[u8],
        extra: &[&[u8]],
        now: &Now,
    ) {
        let mut buf = BytesMut::new();
        http::write_response_with(&mut buf, req, status, keep_alive, &now.date, extra, body);
        self.emit(now.at, now, buf.freeze());
        if !keep_alive {
            self.mode = Mode::Closing;
            self.inbuf.clear();
        }
    }

    /// The file could not be served: answer `status` instead (closing it if it was open).
    fn file_error(
        &mut self,
        _cfg: &ServerConfig,
        job: &FileJob,
        status: u16,
        opened: bool,
        now: &Now,
    ) {
        if opened {
            self.file_ops.push_back(FileOp::Close);
        }
        let body: &[u8] = match status {
            404 => NOT_FOUND,
            403 => b"Forbidden",
            _ => b"the file could not be read",
        };
        self.respond_with(&job.req, job.keep_alive, status, body, &[], now);
    }

    /// The open file's metadata arrived: answer with its head, and start its body.
    fn file_head(&mut self, cfg: &ServerConfig, mut job: Box<FileJob>, meta: FileMeta, now: &Now) {
        if meta.kind != FileKind::Regular {
            // Directories are never listed; devices, FIFOs and sockets are not files to serve.
            return self.file_error(cfg, &job, 403, true, now);
        }
        let modified = files::http_date(meta.mtime);
        let last_modified = format!("Last-Modified: {modified}");
        let mut extra: Vec<Vec<u8>> =
            vec![last_modified.into_bytes(), b"Accept-Ranges: bytes".to_vec()];
        let ctype = files::content_type(&job.path).as_bytes();
        let (status, start, end) =
            if files::not_modified(job.req.if_modified_since.as_deref(), meta.mtime) {
                (304, 0, 0)
            } else {
                match files::range(job.req.range.as_deref(), meta.size) {
                    RangeAnswer::Whole => (200, 0, meta.size),
                    RangeAnswer::Part { start, end } => {
                        extra.push(
                            format!("Content-Range: bytes {start}-{}/{}", end - 1, meta.size)
                                .into_bytes(),
                        );
                        (206, start, end)
                    }
                    RangeAnswer::Unsatisfiable => {
                        self.file_ops.push_back(FileOp::Close);
                        let cr = format!("Content-Range: bytes */{}", meta.size);
                        let body: &[u8] = b"Range Not Satisfiable";
                        return self.respond_with(
                            &job.req,
                            job.keep_alive,
                            416,
                            body,
                            &[cr.as_bytes()],
                            now,
                        );
                    }
                }
            };
        let extra: Vec<&[u8]> = extra.iter().map(|h| &h[..]).collect();
        let mut buf = BytesMut::new();
        let body = http::write_head(
            &mut buf,
            &job.req,
            status,
            job.keep_alive,
            &now.date,
            ctype,
            &extra,
            end - start,
        );
        self.emit(now.at, now, buf.freeze());
        if !body || start == end {
            self.file_ops.push_back(FileOp::Close);
            self.file_finished(&job);
            return;
        }
        job.stage = FileStage::Body {
            next: start,
            end,
            reading: false,
        };
        self.file = Some(job);
        self.file_more(cfg);
    }

    /// Body bytes `next..next + got` were delivered (read or sent); `Err`: the file ended early
    /// or failed after the head went out, so the framing cannot be kept: the connection closes
    /// after what was sent, and the peer sees a body shorter than its `Content-Length`.
    fn file_advance(
        &mut self,
        cfg: &ServerConfig,
        mut job: Box<FileJob>,
        next: u64,
        end: u64,
        got: Result<u64, ()>,
        _now: &Now,
    ) {
        match got {
            Ok(n) if next + n >= end => {
                self.file_ops.push_back(FileOp::Close);
                self.file_finished(&job);
            }
            Ok(n) => {
                job.stage = FileStage::Body {
                    next: next + n,
                    end,
                    reading: false,
                };
                self.file = Some(job);
                self.file_more(cfg);
            }
            Err(()) => {
                self.file_ops.push_back(FileOp::Close);
                self.mode = Mode::Closing;
                self.inbuf.clear();
            }
        }
    }

    /// A file response is complete: a `Connection: close` one closes the connection.
    fn file_finished(&mut self, job: &FileJob) {
        if !job.keep_alive {
            self.mode = Mode::Closing;
            self.inbuf.clear();
        }
    }

    /// Ask for the next piece of the body, if none is outstanding and there is room for it.
    fn file_more(&mut self, cfg: &ServerConfig) {
        let room = self.has_room(cfg);
        let Some(job) = self.file.as_mut() else {
            return;
        };
        if let FileStage::Body { next, end, reading } = &mut job.stage {
            if !*reading && room && !matches!(self.mode, Mode::Done) {
                *reading = true;
                let len = (*end - *next).min(cfg.file_chunk.max(1) as u64) as usize;
                self.file_ops.push_back(FileOp::Read { offset: *next, len });
            }
        }
    }

    fn respond_error(&mut self, e: &RequestError, now: &Now) {
        let mut buf = BytesMut::new();
        http::write_error_response(&mut buf, e.status(), &now.date, e.to_string().as_bytes());
        self.emit(now.at, now, buf.freeze());
        self.mode = Mode::Closing;
        self.inbuf.clear();
    }

    /// Queue `bytes` for release at `at`, behind everything queued before it. Output due now
    /// with nothing queued ahead of it goes straight to the send buffer.
    fn emit(&mut self, at: Instant, now: &Now, bytes: Bytes) {
        if at <= now.at && self.scheduled.is_empty() {
            self.push_out(bytes);
        } else {
            self.schedule(at, bytes);
        }
    }

    /// Output due now: behind anything scheduled (which keeps order), else ready at once.
    fn put(&mut self, now: &Now, bytes: Bytes) {
        self.emit(now.at, now, bytes);
    }

    /// Append to the ready output: small buffers are copied into `out`, large ones queued
    /// whole (no copy of file data).
    fn push_out(&mut self, bytes: Bytes) {
        if bytes.len() < CHUNK_MIN {
            self.out.extend_from_slice(&bytes);
            return;
        }
        if !self.out.is_empty() {
            let small = self.out.split().freeze();
            self.out_q_bytes += small.len();
            self.out_q.push_back(small);
        }
        self.out_q_bytes += bytes.len();
        self.out_q.push_back(bytes);
    }

    fn schedule(&mut self, at: Instant, bytes: Bytes) {
        self.scheduled_bytes += bytes.len();
        self.scheduled.push_back(Scheduled { at, bytes });
    }

    /// Move output that is due to the send buffer; returns whether any was.
    fn release_due(&mut self, now: Instant) -> bool {
        let mut released = false;
        while let Some(front) = self.scheduled.front() {
            if front.at > now {
                break;
            }
            let s = self.scheduled.pop_front().expect("front exists");
            self.scheduled_bytes -= s.bytes.len();
            self.push_out(s.bytes);
            released = true;
        }
        released
    }
}

const HELLO: &[u8] = b"Hello, World!";
const NOT_FOUND: &[u8] = b"Not Found";
const BAD_DELAY: &[u8] = b"delay must be a whole number of milliseconds, at most 60000";
const MAX_DELAY_MS: u64 = 60_000;

/// `/delay/{ms}`: digits only (no sign, no spaces), at most [`MAX_DELAY_MS`].
fn parse_delay_ms(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u64>().ok().filter(|&ms| ms <= MAX_DELAY_MS)
}
