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
//!
//! By role (this file only declares and re-exports; no module below uses it):
//!
//! * `request`: the server's request parser and its [`Limits`].
//! * `response`: the server's response writer.
//! * `client`: the client's request encoder and response parser.
//! * `chunked`: the in-place chunked decoder both parsers use.
//! * `scan`: the incremental search for the end of a head, both parsers use.
//! * `common`: [`Version`] and the field syntax (`Connection` tokens, `Content-Length`) both
//!   sides share.

#![warn(missing_docs)]

mod chunked;
mod client;
mod common;
mod request;
mod response;
mod scan;

pub use client::{
    encode_request, Response, ResponseError, ResponseParser, DEFAULT_MAX_RESPONSE_BODY,
    MAX_RESPONSE_HEAD, MAX_RESPONSE_HEADERS,
};
pub use common::Version;
pub use request::{Limits, Method, Request, RequestError, RequestParser};
pub use response::{
    reason_phrase, write_continue, write_error_response, write_head, write_response,
    write_response_with,
};
