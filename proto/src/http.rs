//! HTTP/1.1: server-side request parsing and response writing, client-side request encoding and
//! response parsing. Sans-IO: byte buffers in, values and bytes out.
//!
//! Both parsers are incremental and keep the bytes of a message in the caller's buffer until the
//! message is complete; only then do they remove exactly that message's bytes from its front.
//! They never rescan what they have already scanned, and they bound what they let accumulate
//! (see [`RequestParser::max_buffered`]), so a peer trickling bytes in or sending garbage costs
//! linear time and bounded memory.
//!
//! Chunked bodies are decoded in place: the decoded body is gathered right behind the head as
//! chunks arrive, and framing bytes that have been consumed are dropped, so a body made of many
//! tiny chunks takes no more buffer than its decoded size. The finished message is split off the
//! buffer without a copy, and the request's target and body are slices of it.

#![warn(missing_docs)]

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// Limits the request parser enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Request line plus headers, including the final CRLF (default 8 KiB) → 431 when exceeded.
    /// Trailers of a chunked body are held to the same size.
    pub max_head: usize,
    /// Number of header fields (default 64) → 431 when exceeded.
    pub max_headers: usize,
    /// Decoded body size (default 1 MiB) → 413 when exceeded.
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head: 8 * 1024,
            max_headers: 64,
            max_body: 1024 * 1024,
        }
    }
}

/// Request method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`: answered with the headers a `GET` would get, and no body.
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `OPTIONS`
    Options,
    /// Any other syntactically valid method token.
    Other(Bytes),
}

/// HTTP version of a request or response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: connections close after each response unless `Connection: keep-alive`.
    Http10,
    /// HTTP/1.1: connections persist unless `Connection: close`.
    Http11,
}

/// A complete request.
#[derive(Clone, Debug)]
pub struct Request {
    /// The method.
    pub method: Method,
    /// The request target as sent (origin-form), e.g. `/delay/100?x=1`.
    pub target: Bytes,
    /// The protocol version of the request line.
    pub version: Version,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
    /// The decoded body (Content-Length or chunked).
    pub body: Bytes,
}

impl Request {
    /// The path part of the target (before any `?`), or "" when it is not UTF-8.
    pub fn path(&self) -> &str {
        let target = &self.target[..];
        let path = match target.iter().position(|&b| b == b'?') {
            Some(q) => target.get(..q).unwrap_or_default(),
            None => target,
        };
        std::str::from_utf8(path).unwrap_or("")
    }
}

/// Why a request was rejected; each maps to one status code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    /// Not a valid HTTP/1.x request, or one we refuse to frame (→ 400).
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The head (or the trailers) exceeded [`Limits::max_head`], or there were more header
    /// fields than [`Limits::max_headers`] (→ 431).
    #[error("request header fields too large")]
    HeadTooLarge,
    /// The decoded body exceeds [`Limits::max_body`] (→ 413).
    #[error("payload too large")]
    BodyTooLarge,
}

impl RequestError {
    /// The status code to answer with.
    pub fn status(&self) -> u16 {
        match self {
            RequestError::Malformed(_) => 400,
            RequestError::HeadTooLarge => 431,
            RequestError::BodyTooLarge => 413,
        }
    }
}

/// Longest chunk-size line accepted (size, extensions and CRLF).
const MAX_CHUNK_LINE: usize = 1024;
/// Most hex digits in a chunk size (a `u64`).
const MAX_CHUNK_DIGITS: usize = 16;
/// Header slots kept on the stack; larger `max_headers` use a heap array.
const STACK_HEADERS: usize = 64;

/// Incremental request parser; one per connection.
#[derive(Debug, Default)]
pub struct RequestParser {
    state: ReqState,
}

#[derive(Debug)]
enum ReqState {
    /// Looking for the end of the head.
    Head(HeadScan),
    /// The head is parsed; waiting for (or decoding) the body.
    Body(ReqHead, BodyFraming),
}

impl Default for ReqState {
    fn default() -> Self {
        ReqState::Head(HeadScan::default())
    }
}

/// What the head of a request said, as offsets into the buffer.
#[derive(Debug)]
struct ReqHead {
    method: MethodKind,
    target: Range<usize>,
    version: Version,
    keep_alive: bool,
    head_len: usize,
    expect_continue: bool,
}

#[derive(Debug)]
enum MethodKind {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Other(Range<usize>),
}

#[derive(Debug)]
enum BodyFraming {
    /// `Content-Length` (0 when absent).
    Length(usize),
    /// `Transfer-Encoding: chunked`.
    Chunked(ChunkedDecoder),
}

impl RequestParser {
    /// A parser waiting for the first request of a connection.
    pub fn new() -> Self {
        RequestParser::default()
    }

    /// The most bytes the parser lets one incomplete request occupy in the buffer before it
    /// either completes the request or fails it: the head, the decoded body, and one partial
    /// chunk-size or trailer line. (Bytes of later pipelined requests come on top.)
    pub fn max_buffered(limits: &Limits) -> usize {
        limits
            .max_head
            .saturating_add(limits.max_body)
            .saturating_add(MAX_CHUNK_LINE.max(limits.max_head).max(2))
    }

    /// Whether the request in progress has a complete head asking for `100 Continue`
    /// (`Expect: 100-continue`, HTTP/1.1) and its body has not arrived yet. Returns true at most
    /// once per request, so the caller can answer with [`write_continue`] exactly once.
    pub fn take_expect_continue(&mut self) -> bool {
        match &mut self.state {
            ReqState::Body(head, _) => std::mem::take(&mut head.expect_continue),
            ReqState::Head(_) => false,
        }
    }

    /// Whether the parser is still waiting for the end of a request head (rather than for a
    /// body whose head it has parsed).
    pub fn awaiting_head(&self) -> bool {
        matches!(self.state, ReqState::Head(_))
    }

    /// Parse one request from the front of `buf`, removing its bytes. `Ok(None)`: need more.
    ///
    /// Between calls the caller may only append to `buf`. After an error the connection must be
    /// closed (the parser starts over if it is called again).
    pub fn parse(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
    ) -> Result<Option<Request>, RequestError> {
        let r = self.parse_inner(buf, limits);
        if r.is_err() {
            self.state = ReqState::default();
        }
        r
    }

    fn parse_inner(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
    ) -> Result<Option<Request>, RequestError> {
        loop {
            match &mut self.state {
                ReqState::Head(scan) => {
                    if buf.len() < scan.pos {
                        // The buffer lost bytes behind our back: start over.
                        *scan = HeadScan::default();
                    }
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    match scan.next(buf, limits.max_head) {
                        Scan::NeedMore => return Ok(None),
                        Scan::TooLarge => return Err(RequestError::HeadTooLarge),
                        Scan::FirstLine(end) => check_request_line(prefix(buf, end))?,
                        Scan::End(end) => {
                            if let Some((head, body)) =
                                parse_request_head(prefix(buf, end), limits)?
                            {
                                self.state = ReqState::Body(head, body);
                            }
                        }
                    }
                }
                ReqState::Body(head, framing) => {
                    if buf.len() < head.head_len {
                        self.state = ReqState::default();
                        continue;
                    }
                    let (total, body) = match framing {
                        BodyFraming::Length(n) => {
                            let total = head.head_len.saturating_add(*n);
                            if buf.len() < total {
                                return Ok(None);
                            }
                            (total, head.head_len..total)
                        }
                        BodyFraming::Chunked(dec) => {
                            if buf.len() < dec.read {
                                self.state = ReqState::default();
                                continue;
                            }
                            match dec.decode(buf, limits.max_body, limits.max_head) {
                                Ok(true) => (dec.read, dec.body()),
                                Ok(false) => return Ok(None),
                                Err(e) => return Err(e.into()),
                            }
                        }
                    };
                    let raw = buf.split_to(total).freeze();
                    let req = Request {
                        method: match &head.method {
                            MethodKind::Get => Method::Get,
                            MethodKind::Head => Method::Head,
                            MethodKind::Post => Method::Post,
                            MethodKind::Put => Method::Put,
                            MethodKind::Delete => Method::Delete,
                            MethodKind::Options => Method::Options,
                            MethodKind::Other(r) => Method::Other(slice(&raw, r.clone())),
                        },
                        target: slice(&raw, head.target.clone()),
                        version: head.version,
                        keep_alive: head.keep_alive,
                        body: slice(&raw, body),
                    };
                    self.state = ReqState::default();
                    return Ok(Some(req));
                }
            }
        }
    }
}

/// `bytes.slice(range)`, or empty when the range does not fit (it always does; no panic).
fn slice(bytes: &Bytes, range: Range<usize>) -> Bytes {
    if range.start <= range.end && range.end <= bytes.len() {
        bytes.slice(range)
    } else {
        Bytes::new()
    }
}

/// `&buf[..end]`, clamped.
fn prefix(buf: &[u8], end: usize) -> &[u8] {
    buf.get(..end).unwrap_or(buf)
}

/// Offset of `part` inside `whole`, when it lies inside it.
fn offset_in(whole: &[u8], part: &[u8]) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= whole.len()).then_some(start..end)
}

fn httparse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status code",
        httparse::Error::Token => "invalid method or target",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "unsupported HTTP version",
    }
}

/// Validate a complete request line as soon as it has arrived, so that garbage is refused
/// without waiting for a whole head.
fn check_request_line(line: &[u8]) -> Result<(), RequestError> {
    let mut req = httparse::Request::new(&mut []);
    let mut no_headers: [MaybeUninit<httparse::Header<'_>>; 0] = [];
    match req.parse_with_uninit_headers(line, &mut no_headers) {
        Ok(_) => Ok(()),
        Err(e) => Err(RequestError::Malformed(httparse_error(e))),
    }
}

/// Parse a complete head (`head` ends with its blank line). `Ok(None)`: httparse does not see
/// a complete head there (the scan goes on).
fn parse_request_head(
    head: &[u8],
    limits: &Limits,
) -> Result<Option<(ReqHead, BodyFraming)>, RequestError> {
    // Every header line takes at least 3 bytes, which bounds a silly `max_headers`.
    let max_headers = limits.max_headers.min(limits.max_head / 3 + 1);
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_HEADERS];
    let mut heap = Vec::new();
    let slots: &mut [MaybeUninit<httparse::Header<'_>>] = if max_headers <= STACK_HEADERS {
        stack.get_mut(..max_headers).unwrap_or_default()
    } else {
        heap.reserve_exact(max_headers);
        let spare = heap.spare_capacity_mut();
        let n = spare.len().min(max_headers);
        spare.get_mut(..n).unwrap_or_default()
    };
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(head, slots) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::HeadTooLarge),
        Err(e) => return Err(RequestError::Malformed(httparse_error(e))),
    };
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(RequestError::Malformed("incomplete request line"));
    };
    let version = match version {
        0 => Version::Http10,
        1 => Version::Http11,
        _ => return Err(RequestError::Malformed("unsupported HTTP version")),
    };
    let target = offset_in(head, path.as_bytes())
        .ok_or(RequestError::Malformed("invalid method or target"))?;
    let method = match method {
        "GET" => MethodKind::Get,
        "HEAD" => MethodKind::Head,
        "POST" => MethodKind::Post,
        "PUT" => MethodKind::Put,
        "DELETE" => MethodKind::Delete,
        "OPTIONS" => MethodKind::Options,
        other => MethodKind::Other(
            offset_in(head, other.as_bytes())
                .ok_or(RequestError::Malformed("invalid method or target"))?,
        ),
    };

    let mut content_length: Option<u64> = None;
    let mut transfer_encodings = 0u32;
    let mut chunked = false;
    let mut hosts = 0u32;
    let mut conn = ConnectionTokens::default();
    let mut expect_continue = false;
    for h in req.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(h.value)
                .ok_or(RequestError::Malformed("invalid Content-Length"))?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(RequestError::Malformed("conflicting Content-Length values"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encodings += 1;
            chunked = trim(h.value).eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case(b"connection") {
            conn.add(h.value);
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue = trim(h.value).eq_ignore_ascii_case(b"100-continue");
        }
    }
    if version == Version::Http11 && hosts == 0 {
        return Err(RequestError::Malformed("missing Host header"));
    }
    if hosts > 1 {
        return Err(RequestError::Malformed("more than one Host header"));
    }
    let framing = if transfer_encodings > 0 {
        if content_length.is_some() {
            return Err(RequestError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if version == Version::Http10 {
            return Err(RequestError::Malformed(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if transfer_encodings > 1 || !chunked {
            return Err(RequestError::Malformed("unsupported Transfer-Encoding"));
        }
        BodyFraming::Chunked(ChunkedDecoder::new(head_len))
    } else {
        let n = content_length.unwrap_or(0);
        match usize::try_from(n) {
            Ok(n) if n <= limits.max_body => BodyFraming::Length(n),
            _ => return Err(RequestError::BodyTooLarge),
        }
    };
    let keep_alive = conn.keep_alive(version);
    let has_body = match &framing {
        BodyFraming::Length(n) => *n > 0,
        BodyFraming::Chunked(_) => true,
    };
    Ok(Some((
        ReqHead {
            method,
            target,
            version,
            keep_alive,
            head_len,
            expect_continue: expect_continue && version == Version::Http11 && has_body,
        },
        framing,
    )))
}

/// The `close` and `keep-alive` tokens of `Connection` header fields.
#[derive(Default)]
struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
}

impl ConnectionTokens {
    fn add(&mut self, value: &[u8]) {
        for token in value.split(|&b| b == b',') {
            let token = trim(token);
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            }
        }
    }

    fn keep_alive(&self, version: Version) -> bool {
        match version {
            Version::Http11 => !self.close,
            Version::Http10 => self.keep_alive && !self.close,
        }
    }
}

/// Strip optional whitespace (SP, HTAB) on both sides.
fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// `1*DIGIT`, no sign, no list, no overflow.
fn parse_content_length(value: &[u8]) -> Option<u64> {
    let v = trim(value);
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if b.is_ascii_digit() {
            acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

// ------------------------------------------------------------------------------------------
// Scanning for the end of a head.

/// Incremental search for the blank line that ends a head. Remembers how far it got, so that
/// each byte is looked at once however the head arrives.
///
/// When the scan has to wait (or gives up) before the head is complete, it first reports the
/// first line once, so that the caller can refuse a garbage request or status line without
/// waiting for a whole head. A head that arrives whole is parsed once, not twice. Either way
/// the outcome depends only on the bytes, never on how they were split.
#[derive(Debug, Default, Clone, Copy)]
struct HeadScan {
    /// Bytes of the buffer already scanned.
    pos: usize,
    /// Whether a byte other than CR or LF was seen (leading empty lines are skipped).
    seen_content: bool,
    first_line: FirstLine,
}

#[derive(Debug, Default, Clone, Copy)]
enum FirstLine {
    /// Not complete yet.
    #[default]
    Pending,
    /// Complete (ends at this offset, exclusive), not yet reported.
    Unchecked(usize),
    /// Reported.
    Checked,
}

enum Scan {
    NeedMore,
    /// No end within the first `max_head` bytes.
    TooLarge,
    /// The first line ends at this offset (exclusive); reported at most once, and only before
    /// `NeedMore` or `TooLarge`.
    FirstLine(usize),
    /// A blank line ends here (exclusive): a candidate end of the head.
    End(usize),
}

impl HeadScan {
    fn next(&mut self, buf: &[u8], max_head: usize) -> Scan {
        let limit = buf.len().min(max_head);
        while self.pos < limit {
            let rest = buf.get(self.pos..limit).unwrap_or_default();
            if !self.seen_content {
                match rest.iter().position(|&b| b != b'\r' && b != b'\n') {
                    Some(k) => {
                        self.seen_content = true;
                        self.pos += k + 1;
                        continue;
                    }
                    None => {
                        self.pos = limit;
                        break;
                    }
                }
            }
            let Some(k) = rest.iter().position(|&b| b == b'\n') else {
                self.pos = limit;
                break;
            };
            let i = self.pos + k;
            self.pos = i + 1;
            if let FirstLine::Pending = self.first_line {
                // The first LF after content cannot also end the head.
                self.first_line = FirstLine::Unchecked(i + 1);
                continue;
            }
            let before = |back: usize| i.checked_sub(back).and_then(|j| buf.get(j)).copied();
            if before(1) == Some(b'\n') || (before(1) == Some(b'\r') && before(2) == Some(b'\n')) {
                return Scan::End(i + 1);
            }
        }
        if let FirstLine::Unchecked(end) = self.first_line {
            self.first_line = FirstLine::Checked;
            return Scan::FirstLine(end);
        }
        if buf.len() >= max_head {
            Scan::TooLarge
        } else {
            Scan::NeedMore
        }
    }
}

// ------------------------------------------------------------------------------------------
// Chunked transfer coding, decoded in place.

/// In-place decoder of a chunked body that starts at `start` in the buffer. Decoded bytes are
/// moved down to `start..start + decoded`; consumed framing between there and `read` is dropped
/// whenever the decoder waits for more input, so the buffer never holds more than the head, the
/// decoded body and one partial line.
#[derive(Debug, Clone)]
struct ChunkedDecoder {
    phase: ChunkPhase,
    start: usize,
    decoded: usize,
    /// Raw bytes before this offset are consumed.
    read: usize,
    /// Bytes after `read` known to hold no LF (for partial lines).
    scanned: usize,
    trailer_bytes: usize,
    /// Consumed framing bytes already removed from the buffer by compaction.
    dropped: usize,
}

#[derive(Debug, Clone, Copy)]
enum ChunkPhase {
    /// Expecting a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes to go.
    Data(usize),
    /// Expecting the CRLF after chunk data.
    DataEnd,
    /// Expecting trailer lines or the final empty line.
    Trailer,
}

#[derive(Debug)]
enum ChunkError {
    Malformed(&'static str),
    BodyTooLarge,
    TrailersTooLarge,
}

impl From<ChunkError> for RequestError {
    fn from(e: ChunkError) -> Self {
        match e {
            ChunkError::Malformed(m) => RequestError::Malformed(m),
            ChunkError::BodyTooLarge => RequestError::BodyTooLarge,
            ChunkError::TrailersTooLarge => RequestError::HeadTooLarge,
        }
    }
}

enum Line {
    /// The line ends with the LF at this offset.
    Complete(usize),
    Partial,
    TooLong,
}

impl ChunkedDecoder {
    fn new(start: usize) -> Self {
        ChunkedDecoder {
            phase: ChunkPhase::Size,
            start,
            decoded: 0,
            read: start,
            scanned: 0,
            trailer_bytes: 0,
            dropped: 0,
        }
    }

    fn body(&self) -> Range<usize> {
        self.start..self.start + self.decoded
    }

    /// Bytes the message took on the wire, once complete (framing dropped by compaction
    /// included).
    fn wire_len(&self) -> usize {
        self.read + self.dropped
    }

    /// Find the LF ending the line at `read`, if it comes within `max` bytes.
    fn line(&mut self, buf: &[u8], max: usize) -> Line {
        let avail = buf.len().saturating_sub(self.read);
        let window = avail.min(max);
        let from = self.read + self.scanned.min(window);
        let to = self.read + window;
        match buf
            .get(from..to)
            .and_then(|s| s.iter().position(|&b| b == b'\n'))
        {
            Some(k) => Line::Complete(from + k),
            None if avail >= max => Line::TooLong,
            None => {
                self.scanned = window;
                Line::Partial
            }
        }
    }

    fn consume_to(&mut self, end: usize) {
        self.read = end;
        self.scanned = 0;
    }

    /// Decode what `buf` holds. `Ok(true)`: the body and trailers are complete and the message
    /// is `buf[..self.read]`, the decoded body `buf[self.body()]`.
    fn decode(
        &mut self,
        buf: &mut BytesMut,
        max_body: usize,
        max_trailers: usize,
    ) -> Result<bool, ChunkError> {
        loop {
            match self.phase {
                ChunkPhase::Size => {
                    let nl = match self.line(buf, MAX_CHUNK_LINE) {
                        Line::Complete(nl) => nl,
                        Line::Partial => break,
                        Line::TooLong => {
                            return Err(ChunkError::Malformed("chunk size line too long"))
                        }
                    };
                    let size = parse_chunk_size_line(buf.get(self.read..nl).unwrap_or_default())?;
                    self.consume_to(nl + 1);
                    if size == 0 {
                        self.phase = ChunkPhase::Trailer;
                        continue;
                    }
                    let total = (self.decoded as u64).checked_add(size);
                    match total {
                        Some(t) if t <= max_body as u64 => {
                            // size <= max_body, which is a usize.
                            self.phase = ChunkPhase::Data(size as usize);
                        }
                        _ => return Err(ChunkError::BodyTooLarge),
                    }
                }
                ChunkPhase::Data(remaining) => {
                    let avail = buf.len().saturating_sub(self.read);
                    let n = avail.min(remaining);
                    let dst = self.start + self.decoded;
                    if n > 0 && dst != self.read {
                        // dst < read, and read + n <= buf.len().
                        buf.copy_within(self.read..self.read + n, dst);
                    }
                    self.decoded += n;
                    self.consume_to(self.read + n);
                    if n < remaining {
                        self.phase = ChunkPhase::Data(remaining - n);
                        break;
                    }
                    self.phase = ChunkPhase::DataEnd;
                }
                ChunkPhase::DataEnd => match (buf.get(self.read), buf.get(self.read + 1)) {
                    (Some(b'\r'), Some(b'\n')) => {
                        self.consume_to(self.read + 2);
                        self.phase = ChunkPhase::Size;
                    }
                    (None, _) | (Some(b'\r'), None) => break,
                    _ => return Err(ChunkError::Malformed("chunk data not followed by CRLF")),
                },
                ChunkPhase::Trailer => {
                    let room = max_trailers.saturating_sub(self.trailer_bytes).max(2);
                    let nl = match self.line(buf, room) {
                        Line::Complete(nl) => nl,
                        Line::Partial => break,
                        Line::TooLong => return Err(ChunkError::TrailersTooLarge),
                    };
                    let line = buf.get(self.read..nl).unwrap_or_default();
                    if line == b"\r" {
                        self.consume_to(nl + 1);
                        return Ok(true);
                    }
                    let len = line.len() + 1;
                    if self.trailer_bytes + len > max_trailers {
                        return Err(ChunkError::TrailersTooLarge);
                    }
                    check_trailer_line(line)?;
                    self.trailer_bytes += len;
                    self.consume_to(nl + 1);
                }
            }
        }
        self.compact(buf);
        Ok(false)
    }

    /// Drop consumed framing: move the unconsumed tail (at most a partial line) down behind
    /// the decoded body.
    fn compact(&mut self, buf: &mut BytesMut) {
        let dst = self.start + self.decoded;
        let len = buf.len();
        if self.read > dst && self.read <= len {
            buf.copy_within(self.read..len, dst);
            buf.truncate(dst + (len - self.read));
            self.dropped += self.read - dst;
            self.read = dst;
        }
    }
}

/// `chunk-size [ BWS ; chunk-ext ] CRLF` (without the LF) → the size.
fn parse_chunk_size_line(line: &[u8]) -> Result<u64, ChunkError> {
    let Some(line) = line.strip_suffix(b"\r") else {
        return Err(ChunkError::Malformed("chunk line not terminated by CRLF"));
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(ChunkError::Malformed("missing chunk size"));
    }
    if digits > MAX_CHUNK_DIGITS {
        return Err(ChunkError::Malformed(
            "chunk size has more than 16 hex digits",
        ));
    }
    let (hex, rest) = line.split_at(digits);
    let size = hex.iter().fold(0u64, |acc, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => b - b'A' + 10,
        };
        (acc << 4) | u64::from(d)
    });
    let mut rest = rest;
    while let [b' ' | b'\t', r @ ..] = rest {
        rest = r;
    }
    match rest {
        [] => Ok(size),
        [b';', ext @ ..] if ext.iter().all(|&b| is_field_byte(b)) => Ok(size),
        [b';', ..] => Err(ChunkError::Malformed("invalid chunk extension")),
        _ => Err(ChunkError::Malformed("invalid chunk size")),
    }
}

/// A byte allowed in a field value or extension: visible, SP, HTAB, obs-text.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A trailer field line (without the LF): `name: value CR`.
fn check_trailer_line(line: &[u8]) -> Result<(), ChunkError> {
    let bad = ChunkError::Malformed("invalid trailer field");
    let Some(line) = line.strip_suffix(b"\r") else {
        return Err(ChunkError::Malformed("chunk line not terminated by CRLF"));
    };
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return Err(bad);
    };
    let (name, value) = line.split_at(colon);
    if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
        return Err(bad);
    }
    if !value.iter().all(|&b| is_field_byte(b)) {
        return Err(bad);
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Responses (server side).

/// The reason phrase for a status code (RFC 9110), "" for codes we never send.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        417 => "Expectation Failed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Append the decimal digits of `n`, without allocating.
fn put_decimal(out: &mut BytesMut, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Append the status line and the headers shared by every response, up to and including
/// `Content-Length` (when the status allows a body). Returns whether the status allows a body.
fn put_head_start(
    out: &mut BytesMut,
    version: Version,
    status: u16,
    date: &[u8; 29],
    body_len: usize,
) -> bool {
    // Status codes are three digits; anything else is a caller bug, answered as 500.
    let status = if (100..=999).contains(&status) {
        status
    } else {
        500
    };
    out.extend_from_slice(match version {
        Version::Http11 => b"HTTP/1.1 ",
        Version::Http10 => b"HTTP/1.0 ",
    });
    put_decimal(out, u64::from(status));
    out.extend_from_slice(b" ");
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\nServer: ringlab\r\nDate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\n");
    let body_allowed = !(100..200).contains(&status) && status != 204 && status != 304;
    if body_allowed {
        if body_len > 0 || status == 200 {
            out.extend_from_slice(b"Content-Type: text/plain\r\n");
        }
        out.extend_from_slice(b"Content-Length: ");
        put_decimal(out, body_len as u64);
        out.extend_from_slice(b"\r\n");
    }
    body_allowed
}

/// Upper bound of a response head written here (status line and our headers).
const HEAD_RESERVE: usize = 192;

/// Append a response to `req` (HEAD: headers only, with the `Content-Length` the body would
/// have). The response has the request's version; `Connection: close` when `!keep_alive`, and
/// `Connection: keep-alive` when keeping an HTTP/1.0 connection open. No body is sent for 1xx,
/// 204 and 304.
pub fn write_response(
    out: &mut BytesMut,
    req: &Request,
    status: u16,
    keep_alive: bool,
    date: &[u8; 29],
    body: &[u8],
) {
    write_response_with(out, req, status, keep_alive, date, &[], body);
}

/// [`write_response`] with extra header lines (each `Name: value`, without CRLF), e.g. the
/// `Allow` header a 405 must carry.
pub fn write_response_with(
    out: &mut BytesMut,
    req: &Request,
    status: u16,
    keep_alive: bool,
    date: &[u8; 29],
    extra: &[&[u8]],
    body: &[u8],
) {
    let send_body = req.method != Method::Head;
    let extra_len: usize = extra.iter().map(|h| h.len() + 2).sum();
    out.reserve(HEAD_RESERVE + extra_len + if send_body { body.len() } else { 0 });
    let body_allowed = put_head_start(out, req.version, status, date, body.len());
    for h in extra {
        out.extend_from_slice(h);
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if req.version == Version::Http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if send_body && body_allowed {
        out.extend_from_slice(body);
    }
}

/// Append an error response (HTTP/1.1, `Connection: close`).
pub fn write_error_response(out: &mut BytesMut, status: u16, date: &[u8; 29], body: &[u8]) {
    out.reserve(HEAD_RESERVE + body.len());
    let body_allowed = put_head_start(out, Version::Http11, status, date, body.len());
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    if body_allowed {
        out.extend_from_slice(body);
    }
}

/// Append the interim `HTTP/1.1 100 Continue` response, for a request whose parser reported
/// [`RequestParser::take_expect_continue`].
pub fn write_continue(out: &mut BytesMut) {
    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
}

// ------------------------------------------------------------------------------------------
// Client side: requests out, responses in.

/// Append an HTTP/1.1 request. `Host` is added unless `headers` has one; `Content-Length` is
/// added when `body` is non-empty or the method is POST or PUT. `headers` must not carry
/// framing fields (`Content-Length`, `Transfer-Encoding`): the encoder frames the body itself
/// and drops such fields.
pub fn encode_request(
    out: &mut BytesMut,
    method: &str,
    target: &str,
    host: &str,
    headers: &[(String, String)],
    body: &[u8],
) {
    let extra: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    out.reserve(method.len() + target.len() + host.len() + extra + 64 + body.len());
    out.extend_from_slice(method.as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || method == "POST" || method == "PUT" {
        out.extend_from_slice(b"Content-Length: ");
        put_decimal(out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Largest response head the client accepts.
pub const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Most header fields in a response head.
pub const MAX_RESPONSE_HEADERS: usize = 128;
/// Default limit of a response body.
pub const DEFAULT_MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;

/// A complete response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The status code (never 1xx: interim responses are skipped).
    pub status: u16,
    /// The version of the status line.
    pub version: Version,
    /// Whether the server keeps the connection open after this response.
    pub keep_alive: bool,
    /// The decoded body.
    pub body: Bytes,
    /// Bytes the response took on the wire, interim 1xx responses before it included.
    pub wire_len: usize,
}

/// Why a response could not be parsed. The connection is unusable afterwards.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResponseError {
    /// Not a valid HTTP/1.x response.
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    /// The head did not end within [`MAX_RESPONSE_HEAD`] bytes (or trailers exceeded that).
    #[error("response head larger than {} bytes", MAX_RESPONSE_HEAD)]
    HeadTooLarge,
    /// More than [`MAX_RESPONSE_HEADERS`] header fields.
    #[error("response has more than {} header fields", MAX_RESPONSE_HEADERS)]
    TooManyHeaders,
    /// The body exceeds the parser's limit.
    #[error("response body larger than the limit of {limit} bytes")]
    BodyTooLarge {
        /// The limit, from [`ResponseParser::with_max_body`].
        limit: usize,
    },
    /// The connection ended before the response did.
    #[error("connection closed in the middle of a response")]
    UnexpectedEof,
}

/// Incremental response parser; one per client connection. Responses come back in request
/// order, so the caller says for each whether it answers a HEAD request.
#[derive(Debug)]
pub struct ResponseParser {
    max_body: usize,
    state: RespState,
    /// Wire bytes of interim responses already removed for the response in progress.
    interim: usize,
}

#[derive(Debug)]
enum RespState {
    Head(HeadScan),
    Body(RespHead, RespFraming),
}

#[derive(Debug)]
struct RespHead {
    status: u16,
    version: Version,
    keep_alive: bool,
    head_len: usize,
}

#[derive(Debug)]
enum RespFraming {
    Length(usize),
    Chunked(ChunkedDecoder),
    /// Until the server closes the connection.
    Close,
}

impl Default for ResponseParser {
    fn default() -> Self {
        ResponseParser::new()
    }
}

enum RespHeadParsed {
    /// A 1xx interim response of this many bytes: skip it.
    Interim(usize),
    Final(RespHead, RespFraming),
}

impl ResponseParser {
    /// A parser with the default body limit ([`DEFAULT_MAX_RESPONSE_BODY`]).
    pub fn new() -> Self {
        ResponseParser::with_max_body(DEFAULT_MAX_RESPONSE_BODY)
    }

    /// A parser that refuses bodies larger than `max_body` bytes.
    pub fn with_max_body(max_body: usize) -> Self {
        ResponseParser {
            max_body,
            state: RespState::Head(HeadScan::default()),
            interim: 0,
        }
    }

    fn reset(&mut self) {
        self.state = RespState::Head(HeadScan::default());
        self.interim = 0;
    }

    /// Parse one response from the front of `buf`, removing its bytes (and those of interim
    /// responses before it). `Ok(None)`: need more (for a body delimited by the end of the
    /// connection, call [`ResponseParser::on_eof`] when it comes). `head_request`: the response
    /// answers a HEAD request, so it has no body.
    pub fn parse(
        &mut self,
        buf: &mut BytesMut,
        head_request: bool,
    ) -> Result<Option<Response>, ResponseError> {
        let r = self.parse_inner(buf, head_request);
        if r.is_err() {
            self.reset();
        }
        r
    }

    fn parse_inner(
        &mut self,
        buf: &mut BytesMut,
        head_request: bool,
    ) -> Result<Option<Response>, ResponseError> {
        loop {
            match &mut self.state {
                RespState::Head(scan) => {
                    if buf.len() < scan.pos {
                        *scan = HeadScan::default();
                    }
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    match scan.next(buf, MAX_RESPONSE_HEAD) {
                        Scan::NeedMore => return Ok(None),
                        Scan::TooLarge => return Err(ResponseError::HeadTooLarge),
                        Scan::FirstLine(end) => check_status_line(prefix(buf, end))?,
                        Scan::End(end) => {
                            match parse_response_head(
                                prefix(buf, end),
                                head_request,
                                self.max_body,
                            )? {
                                None => {}
                                Some(RespHeadParsed::Interim(n)) => {
                                    let n = n.min(buf.len());
                                    let _ = buf.split_to(n);
                                    self.interim += n;
                                    self.state = RespState::Head(HeadScan::default());
                                }
                                Some(RespHeadParsed::Final(head, framing)) => {
                                    self.state = RespState::Body(head, framing);
                                }
                            }
                        }
                    }
                }
                RespState::Body(head, framing) => {
                    if buf.len() < head.head_len {
                        return Err(ResponseError::Malformed("buffer changed during parsing"));
                    }
                    let (total, wire, body) = match framing {
                        RespFraming::Length(n) => {
                            let total = head.head_len.saturating_add(*n);
                            if buf.len() < total {
                                return Ok(None);
                            }
                            (total, total, head.head_len..total)
                        }
                        RespFraming::Chunked(dec) => {
                            if buf.len() < dec.read {
                                return Err(ResponseError::Malformed(
                                    "buffer changed during parsing",
                                ));
                            }
                            match dec.decode(buf, self.max_body, MAX_RESPONSE_HEAD) {
                                Ok(true) => (dec.read, dec.wire_len(), dec.body()),
                                Ok(false) => return Ok(None),
                                Err(ChunkError::Malformed(m)) => {
                                    return Err(ResponseError::Malformed(m))
                                }
                                Err(ChunkError::BodyTooLarge) => {
                                    return Err(ResponseError::BodyTooLarge {
                                        limit: self.max_body,
                                    })
                                }
                                Err(ChunkError::TrailersTooLarge) => {
                                    return Err(ResponseError::HeadTooLarge)
                                }
                            }
                        }
                        RespFraming::Close => {
                            if buf.len() - head.head_len > self.max_body {
                                return Err(ResponseError::BodyTooLarge {
                                    limit: self.max_body,
                                });
                            }
                            return Ok(None);
                        }
                    };
                    let resp = self.finish(buf, total, wire, body);
                    return Ok(Some(resp));
                }
            }
        }
    }

    /// Split the finished response (`total` bytes of `buf`, `wire` bytes on the wire) off.
    fn finish(
        &mut self,
        buf: &mut BytesMut,
        total: usize,
        wire: usize,
        body: Range<usize>,
    ) -> Response {
        let (status, version, keep_alive) = match &self.state {
            RespState::Body(h, _) => (h.status, h.version, h.keep_alive),
            RespState::Head(_) => (0, Version::Http11, false),
        };
        let total = total.min(buf.len());
        let raw = buf.split_to(total).freeze();
        let resp = Response {
            status,
            version,
            keep_alive,
            body: slice(&raw, body),
            wire_len: self.interim + wire,
        };
        self.reset();
        resp
    }

    /// The server closed the connection. Completes a response whose body runs to the end of the
    /// connection; `Ok(None)` when no response was in progress; [`ResponseError::UnexpectedEof`]
    /// when one was cut short. Call [`ResponseParser::parse`] on everything received first.
    pub fn on_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Response>, ResponseError> {
        match &self.state {
            RespState::Body(head, RespFraming::Close) => {
                if buf.len() < head.head_len {
                    self.reset();
                    return Err(ResponseError::UnexpectedEof);
                }
                let total = buf.len();
                let body = head.head_len..total;
                Ok(Some(self.finish(buf, total, total, body)))
            }
            RespState::Head(_) if buf.is_empty() && self.interim == 0 => Ok(None),
            _ => {
                self.reset();
                Err(ResponseError::UnexpectedEof)
            }
        }
    }
}

fn check_status_line(line: &[u8]) -> Result<(), ResponseError> {
    let mut resp = httparse::Response::new(&mut []);
    let mut no_headers: [MaybeUninit<httparse::Header<'_>>; 0] = [];
    match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut resp,
        line,
        &mut no_headers,
    ) {
        Ok(_) => Ok(()),
        Err(e) => Err(ResponseError::Malformed(httparse_error(e))),
    }
}

fn parse_response_head(
    head: &[u8],
    head_request: bool,
    max_body: usize,
) -> Result<Option<RespHeadParsed>, ResponseError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, head, &mut slots)
    {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(ResponseError::TooManyHeaders),
        Err(e) => return Err(ResponseError::Malformed(httparse_error(e))),
    };
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(ResponseError::Malformed("incomplete status line"));
    };
    let version = match version {
        0 => Version::Http10,
        1 => Version::Http11,
        _ => return Err(ResponseError::Malformed("unsupported HTTP version")),
    };
    if status == 101 {
        return Err(ResponseError::Malformed(
            "unexpected 101 Switching Protocols",
        ));
    }
    if !(100..=599).contains(&status) {
        return Err(ResponseError::Malformed("invalid status code"));
    }
    if (100..200).contains(&status) {
        return Ok(Some(RespHeadParsed::Interim(head_len)));
    }
    let mut content_length: Option<u64> = None;
    let mut transfer_encoding = false;
    let mut chunked = false;
    let mut conn = ConnectionTokens::default();
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(h.value)
                .ok_or(ResponseError::Malformed("invalid Content-Length"))?;
            if content_length.is_some_and(|prev| prev != n) {
                return Err(ResponseError::Malformed(
                    "conflicting Content-Length values",
                ));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encoding = true;
            // The final coding decides: chunked, or else the body runs to the close.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or_default();
            chunked = trim(last).eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            conn.add(h.value);
        }
    }
    let mut keep_alive = conn.keep_alive(version);
    let no_body = head_request || status == 204 || status == 304;
    let framing = if no_body {
        RespFraming::Length(0)
    } else if transfer_encoding {
        if content_length.is_some() {
            return Err(ResponseError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if chunked {
            RespFraming::Chunked(ChunkedDecoder::new(head_len))
        } else {
            keep_alive = false;
            RespFraming::Close
        }
    } else if let Some(n) = content_length {
        match usize::try_from(n) {
            Ok(n) if n <= max_body => RespFraming::Length(n),
            _ => return Err(ResponseError::BodyTooLarge { limit: max_body }),
        }
    } else {
        keep_alive = false;
        RespFraming::Close
    };
    Ok(Some(RespHeadParsed::Final(
        RespHead {
            status,
            version,
            keep_alive,
            head_len,
        },
        framing,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8], limits: &Limits) -> Result<Vec<Request>, RequestError> {
        let mut p = RequestParser::new();
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(r) = p.parse(&mut buf, limits)? {
            out.push(r);
        }
        Ok(out)
    }

    #[test]
    fn chunked_body_is_compacted_while_waiting() {
        let limits = Limits::default();
        let mut p = RequestParser::new();
        let mut buf = BytesMut::from(
            &b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
        );
        let head_len = buf.len();
        assert!(p.parse(&mut buf, &limits).unwrap().is_none());
        // 100 one-byte chunks with long extensions: the buffer holds only head + decoded body
        // (+ a partial line) while the request is incomplete.
        for i in 0..100u8 {
            buf.extend_from_slice(b"1;some-extension=with-a-long-value\r\n");
            buf.extend_from_slice(&[b'a' + i % 26]);
            buf.extend_from_slice(b"\r\n");
            assert!(p.parse(&mut buf, &limits).unwrap().is_none());
            assert_eq!(buf.len(), head_len + usize::from(i) + 1);
        }
        buf.extend_from_slice(b"0\r\nX-Trailer: yes\r\n\r\nGET");
        let req = p.parse(&mut buf, &limits).unwrap().unwrap();
        assert_eq!(req.body.len(), 100);
        assert_eq!(&req.body[..3], b"abc");
        assert_eq!(&buf[..], b"GET");
    }

    #[test]
    fn head_scan_skips_leading_empty_lines() {
        let reqs = parse_all(
            b"\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(reqs.len(), 1);
        assert_eq!(&reqs[0].target[..], b"/x");
    }

    #[test]
    fn bare_lf_heads_are_accepted() {
        let reqs = parse_all(
            b"GET /x HTTP/1.1\nHost: a\n\nGET /y HTTP/1.0\n\n",
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[1].path(), "/y");
        assert!(!reqs[1].keep_alive);
    }

    #[test]
    fn head_exactly_at_the_limit_is_accepted() {
        let mut head = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        let limits = Limits {
            max_head: 100,
            ..Limits::default()
        };
        head.resize(100 - 4, b'x');
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(head.len(), 100);
        assert_eq!(parse_all(&head, &limits).unwrap().len(), 1);
        head.insert(30, b'y');
        assert_eq!(
            parse_all(&head, &limits).unwrap_err(),
            RequestError::HeadTooLarge
        );
    }

    #[test]
    fn chunk_size_line_parsing() {
        assert_eq!(parse_chunk_size_line(b"1aF\r").unwrap(), 0x1af);
        assert_eq!(parse_chunk_size_line(b"10 ; a=b\r").unwrap(), 16);
        assert_eq!(
            parse_chunk_size_line(b"ffffffffffffffff\r").unwrap(),
            u64::MAX
        );
        assert!(parse_chunk_size_line(b"1ffffffffffffffff\r").is_err());
        assert!(parse_chunk_size_line(b"\r").is_err());
        assert!(parse_chunk_size_line(b"5x\r").is_err());
        assert!(parse_chunk_size_line(b"5").is_err());
        assert!(parse_chunk_size_line(b"-5\r").is_err());
        assert!(parse_chunk_size_line(b"5;a\x01\r").is_err());
    }

    #[test]
    fn content_length_parsing() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b" 42 "), Some(42));
        assert_eq!(
            parse_content_length(b"18446744073709551615"),
            Some(u64::MAX)
        );
        assert_eq!(parse_content_length(b"18446744073709551616"), None);
        assert_eq!(parse_content_length(b"+1"), None);
        assert_eq!(parse_content_length(b"-1"), None);
        assert_eq!(parse_content_length(b""), None);
        assert_eq!(parse_content_length(b"1,1"), None);
        assert_eq!(parse_content_length(b"0x10"), None);
    }

    #[test]
    fn decimal_formatting() {
        for n in [0u64, 7, 10, 99, 100, 12345, u64::MAX] {
            let mut b = BytesMut::new();
            put_decimal(&mut b, n);
            assert_eq!(&b[..], n.to_string().as_bytes());
        }
    }

    #[test]
    fn expect_continue_is_reported_once() {
        let limits = Limits::default();
        let mut p = RequestParser::new();
        let mut buf = BytesMut::from(
            &b"POST /echo HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"
                [..],
        );
        assert!(!p.take_expect_continue());
        assert!(p.parse(&mut buf, &limits).unwrap().is_none());
        assert!(p.take_expect_continue());
        assert!(!p.take_expect_continue());
        buf.extend_from_slice(b"abc");
        assert_eq!(
            &p.parse(&mut buf, &limits).unwrap().unwrap().body[..],
            b"abc"
        );
    }
}
