//! Chunked transfer coding, decoded in place; used by the request and the response parser.

use std::ops::Range;

use bytes::BytesMut;

/// Longest chunk-size line accepted (size, extensions and CRLF).
pub(super) const MAX_CHUNK_LINE: usize = 1024;
/// Most hex digits in a chunk size (a `u64`).
const MAX_CHUNK_DIGITS: usize = 16;

/// In-place decoder of a chunked body that starts at `start` in the buffer. Decoded bytes are
/// moved down to `start..start + decoded`; consumed framing between there and `read` is dropped
/// whenever the decoder waits for more input, so the buffer never holds more than the head, the
/// decoded body and one partial line.
#[derive(Debug, Clone)]
pub(super) struct ChunkedDecoder {
    phase: ChunkPhase,
    start: usize,
    decoded: usize,
    /// Raw bytes before this offset are consumed.
    pub(super) read: usize,
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
pub(super) enum ChunkError {
    Malformed(&'static str),
    BodyTooLarge,
    TrailersTooLarge,
}

enum Line {
    /// The line ends with the LF at this offset.
    Complete(usize),
    Partial,
    TooLong,
}

impl ChunkedDecoder {
    pub(super) fn new(start: usize) -> Self {
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

    pub(super) fn body(&self) -> Range<usize> {
        self.start..self.start + self.decoded
    }

    /// Bytes the message took on the wire, once complete (framing dropped by compaction
    /// included).
    pub(super) fn wire_len(&self) -> usize {
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
    pub(super) fn decode(
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
