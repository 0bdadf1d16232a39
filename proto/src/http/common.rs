//! What the request and the response sides share: the protocol [`Version`], the syntax of the
//! `Connection` and `Content-Length` fields, httparse's errors in words, and small buffer helpers.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// HTTP version of a request or response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0: connections close after each response unless `Connection: keep-alive`.
    Http10,
    /// HTTP/1.1: connections persist unless `Connection: close`.
    Http11,
}

/// `bytes.slice(range)`, or empty when the range does not fit (it always does; no panic).
pub(super) fn slice(bytes: &Bytes, range: Range<usize>) -> Bytes {
    if range.start <= range.end && range.end <= bytes.len() {
        bytes.slice(range)
    } else {
        Bytes::new()
    }
}

/// `&buf[..end]`, clamped.
pub(super) fn prefix(buf: &[u8], end: usize) -> &[u8] {
    buf.get(..end).unwrap_or(buf)
}

/// Offset of `part` inside `whole`, when it lies inside it.
pub(super) fn offset_in(whole: &[u8], part: &[u8]) -> Option<Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(whole.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= whole.len()).then_some(start..end)
}

/// httparse's error in words.
pub(super) fn httparse_error(e: httparse::Error) -> &'static str {
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

/// The `close` and `keep-alive` tokens of `Connection` header fields.
#[derive(Default)]
pub(super) struct ConnectionTokens {
    close: bool,
    keep_alive: bool,
}

impl ConnectionTokens {
    pub(super) fn add(&mut self, value: &[u8]) {
        for token in value.split(|&b| b == b',') {
            let token = trim(token);
            if token.eq_ignore_ascii_case(b"close") {
                self.close = true;
            } else if token.eq_ignore_ascii_case(b"keep-alive") {
                self.keep_alive = true;
            }
        }
    }

    pub(super) fn keep_alive(&self, version: Version) -> bool {
        match version {
            Version::Http11 => !self.close,
            Version::Http10 => self.keep_alive && !self.close,
        }
    }
}

/// Strip optional whitespace (SP, HTAB) on both sides.
pub(super) fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// `1*DIGIT`, no sign, no list, no overflow.
pub(super) fn parse_content_length(value: &[u8]) -> Option<u64> {
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

/// Append the decimal digits of `n`, without allocating.
pub(super) fn put_decimal(out: &mut BytesMut, mut n: u64) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
