//! The server side's output: responses (status line, our headers, body).

use bytes::BytesMut;

use super::common::{put_decimal, Version};
use super::request::{Method, Request};

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
        416 => "Range Not Satisfiable",
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

/// Append the status line and the headers shared by every response, up to and including
/// `Content-Length` (when the status allows a body). Returns whether the status allows a body.
fn put_head_start(
    out: &mut BytesMut,
    version: Version,
    status: u16,
    date: &[u8; 29],
    body_len: usize,
) -> bool {
    put_head_typed(out, version, status, date, b"text/plain", body_len as u64)
}

/// [`put_head_start`] with the body's `Content-Type` and a length that need not be in memory.
fn put_head_typed(
    out: &mut BytesMut,
    version: Version,
    status: u16,
    date: &[u8; 29],
    content_type: &[u8],
    body_len: u64,
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
            out.extend_from_slice(b"Content-Type: ");
            out.extend_from_slice(content_type);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"Content-Length: ");
        put_decimal(out, body_len);
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
    put_head_end(out, req, keep_alive, extra);
    if send_body && body_allowed {
        out.extend_from_slice(body);
    }
}

/// Append the head of a response whose body (`body_len` bytes of `content_type`) the caller
/// sends after it, from a file: status line, our headers, `extra` header lines, and the
/// `Connection` header as [`write_response_with`] writes it. Returns whether a body follows
/// (not for `HEAD`, 304, 1xx or 204).
#[allow(clippy::too_many_arguments)]
pub fn write_head(
    out: &mut BytesMut,
    req: &Request,
    status: u16,
    keep_alive: bool,
    date: &[u8; 29],
    content_type: &[u8],
    extra: &[&[u8]],
    body_len: u64,
) -> bool {
    let extra_len: usize = extra.iter().map(|h| h.len() + 2).sum();
    out.reserve(HEAD_RESERVE + content_type.len() + extra_len);
    let body_allowed = put_head_typed(out, req.version, status, date, content_type, body_len);
    put_head_end(out, req, keep_alive, extra);
    body_allowed && req.method != Method::Head
}

/// The rest of a head after `Content-Length`: `extra` header lines, the `Connection` header
/// (`close` when `!keep_alive`, `keep-alive` when keeping an HTTP/1.0 connection open), the
/// blank line.
fn put_head_end(out: &mut BytesMut, req: &Request, keep_alive: bool, extra: &[&[u8]]) {
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
/// [`RequestParser::take_expect_continue`](super::RequestParser::take_expect_continue).
pub fn write_continue(out: &mut BytesMut) {
    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
}
