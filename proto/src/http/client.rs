//! The client side: requests out, responses in.

use std::mem::MaybeUninit;
use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::chunked::{ChunkError, ChunkedDecoder};
use super::common::{
    httparse_error, parse_content_length, prefix, put_decimal, slice, trim, ConnectionTokens,
    Version,
};
use super::scan::{HeadScan, Scan};

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
