//! The server side's input: the incremental request parser and the limits it enforces.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::chunked::{ChunkError, ChunkedDecoder, MAX_CHUNK_LINE};
use super::common::{
    httparse_error, offset_in, parse_content_length, prefix, slice, trim, ConnectionTokens, Version,
};
use super::scan::{HeadScan, Scan};

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
    /// The value of the last `Range` header, if any (files: one `bytes=` range is honoured).
    pub range: Option<Bytes>,
    /// The value of the last `If-Modified-Since` header, if any.
    pub if_modified_since: Option<Bytes>,
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
    range: Option<Range<usize>>,
    if_modified_since: Option<Range<usize>>,
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
    /// once per request, so the caller can answer with [`write_continue`](super::write_continue) exactly once.
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
                        range: head.range.clone().map(|r| slice(&raw, r)),
                        if_modified_since: head.if_modified_since.clone().map(|r| slice(&raw, r)),
                    };
                    self.state = ReqState::default();
                    return Ok(Some(req));
                }
            }
        }
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
    let mut range = None;
    let mut if_modified_since = None;
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
        } else if name.eq_ignore_ascii_case(b"range") {
            range = offset_in(head, trim(h.value));
        } else if name.eq_ignore_ascii_case(b"if-modified-since") {
            if_modified_since = offset_in(head, trim(h.value));
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
            range,
            if_modified_since,
        },
        framing,
    )))
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
