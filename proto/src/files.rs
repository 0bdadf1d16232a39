//! Static files (`--root DIR`, `GET`/`HEAD /files/<path>`): the pure parts of serving them.
//!
//! The session never touches a file. It asks its loop for [`FileOp`]s (open beneath the root,
//! stat, read a range, close) and gets their outcome back as a [`FileDone`], like bytes from a
//! socket; the loop performs them in its own IO model. This module holds what needs no IO:
//! which paths may be asked for, the `Range` and `If-Modified-Since` rules, `Content-Type`
//! by extension, and the mapping of an `errno` to a status.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// The prefix of file URLs.
pub const PREFIX: &str = "/files/";

/// An operation on the connection's file that the session asks its loop to perform. A
/// connection has at most one file open; every operation but `Open` is on that file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileOp {
    /// Open `path` read-only beneath the root: `path` is relative and already checked by
    /// [`check_path`] (no `..`, no NUL, no empty or absolute segment); the loop must still
    /// refuse symlinks that lead out of the root (`openat2` with `RESOLVE_BENEATH`). Answered by
    /// [`FileDone::Opened`].
    Open { path: String },
    /// Stat the open file. Answered by [`FileDone::Stat`].
    Stat,
    /// Read up to `len` bytes at `offset`. Answered by [`FileDone::Read`]; a loop that sends
    /// files itself (`sendfile`) may instead send those bytes straight to the socket once all
    /// output taken before them is sent, and answer [`FileDone::Sent`].
    Read { offset: u64, len: usize },
    /// Close the open file. No answer: the session is done with it at once.
    Close,
}

/// What a file is, as far as serving it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file: served.
    Regular,
    /// A directory: never listed (403).
    Directory,
    /// Anything else (a device, a FIFO, a socket): refused (403).
    Other,
}

/// What [`FileOp::Stat`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMeta {
    /// Size in bytes.
    pub size: u64,
    /// Last modification, in whole seconds since the Unix epoch (may be negative).
    pub mtime: i64,
    pub kind: FileKind,
}

/// The outcome of a [`FileOp`]; errors are `errno` values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileDone {
    Opened(Result<(), i32>),
    Stat(Result<FileMeta, i32>),
    /// The bytes read (empty: end of file).
    Read(Result<Bytes, i32>),
    /// The loop sent this many bytes of the range straight from the file (0: end of file).
    Sent(Result<usize, i32>),
}

/// Why a file path is refused before any file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not a path this server serves (`..`, NUL, a bad escape, an empty segment...): 400.
    Bad(&'static str),
}

/// The relative path beneath the root that `/files/<rest>` names, percent-decoded, or why it
/// is refused. Refused: a segment `.` or `..` (also when encoded, `%2e%2e`), an empty segment
/// (`//`, which would also make an absolute path), NUL or any control byte, a bad `%` escape,
/// a decoded `/` (`%2f`, which would hide a segment boundary), bytes that are not UTF-8, and a
/// path longer than 1024 bytes.
pub fn check_path(rest: &str) -> Result<String, PathError> {
    const MAX: usize = 1024;
    if rest.is_empty() {
        return Err(PathError::Bad("no file named"));
    }
    if rest.len() > 3 * MAX {
        return Err(PathError::Bad("path too long"));
    }
    let mut out = Vec::with_capacity(rest.len());
    let mut first = true;
    for seg in rest.split('/') {
        let mut dec = Vec::with_capacity(seg.len());
        let b = seg.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i] == b'%' {
                let hex = |c: u8| (c as char).to_digit(16);
                let (Some(h), Some(l)) = (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) else {
                    return Err(PathError::Bad("bad percent escape"));
                };
                dec.push((h * 16 + l) as u8);
                i += 3;
            } else {
                dec.push(b[i]);
                i += 1;
            }
        }
        if dec.is_empty() {
            return Err(PathError::Bad("empty path segment"));
        }
        if dec == b"." || dec == b".." {
            return Err(PathError::Bad("dot segment"));
        }
        if dec.iter().any(|&c| c < 0x20 || c == 0x7f) {
            return Err(PathError::Bad("control byte in path"));
        }
        if dec.contains(&b'/') {
            return Err(PathError::Bad("encoded slash in path"));
        }
        if !first {
            out.push(b'/');
        }
        first = false;
        out.extend_from_slice(&dec);
    }
    if out.len() > MAX {
        return Err(PathError::Bad("path too long"));
    }
    String::from_utf8(out).map_err(|_| PathError::Bad("path is not UTF-8"))
}

/// The status a failed open or stat is answered with.
pub fn errno_status(errno: i32) -> u16 {
    const ENOENT: i32 = 2;
    const EACCES: i32 = 13;
    const EPERM: i32 = 1;
    const ENOTDIR: i32 = 20;
    const EISDIR: i32 = 21;
    const ENAMETOOLONG: i32 = 36;
    const ELOOP: i32 = 40;
    const EXDEV: i32 = 18;
    match errno {
        ENOENT | ENOTDIR | ENAMETOOLONG => 404,
        // EXDEV: RESOLVE_BENEATH refused a path leading out of the root (a symlink); ELOOP:
        // too many links, or a link where none may be.
        EACCES | EPERM | EISDIR | EXDEV | ELOOP => 403,
        _ => 500,
    }
}

/// The byte range a `Range` header selects from a file of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeAnswer {
    /// No usable range: send the whole file (no header, several ranges, another unit, or a
    /// value that does not parse, all of which RFC 9110 lets a server ignore).
    Whole,
    /// Bytes `start..end` (end exclusive, non-empty): 206.
    Part { start: u64, end: u64 },
    /// A valid range none of whose bytes exist: 416.
    Unsatisfiable,
}

/// Apply a `Range` header value (`bytes=a-b`, `bytes=a-`, `bytes=-n`) to a file of `size`
/// bytes.
pub fn range(value: Option<&[u8]>, size: u64) -> RangeAnswer {
    let Some(v) = value else {
        return RangeAnswer::Whole;
    };
    let Some(spec) = v
        .get(..6)
        .filter(|p| p.eq_ignore_ascii_case(b"bytes="))
        .map(|_| &v[6..])
    else {
        return RangeAnswer::Whole;
    };
    if spec.contains(&b',') {
        return RangeAnswer::Whole;
    }
    let Some(dash) = spec.iter().position(|&c| c == b'-') else {
        return RangeAnswer::Whole;
    };
    let num = |s: &[u8]| -> Option<u64> {
        let s = std::str::from_utf8(s).ok()?.trim_matches([' ', '\t']);
        if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (a, b) = (&spec[..dash], &spec[dash + 1..]);
    if a.iter().all(|c| *c == b' ' || *c == b'\t') {
        // A suffix: the last n bytes.
        let Some(n) = num(b) else {
            return RangeAnswer::Whole;
        };
        if n == 0 || size == 0 {
            return RangeAnswer::Unsatisfiable;
        }
        return RangeAnswer::Part {
            start: size.saturating_sub(n),
            end: size,
        };
    }
    let Some(start) = num(a) else {
        return RangeAnswer::Whole;
    };
    let last = if b.iter().all(|c| *c == b' ' || *c == b'\t') {
        None
    } else {
        match num(b) {
            Some(l) if l >= start => Some(l),
            _ => return RangeAnswer::Whole,
        }
    };
    if start >= size {
        return RangeAnswer::Unsatisfiable;
    }
    let end = last.map_or(size, |l| l.saturating_add(1).min(size));
    RangeAnswer::Part { start, end }
}

/// Whether a file last modified at `mtime` is unchanged since the `If-Modified-Since` value
/// (an HTTP date; one that does not parse is ignored, as RFC 9110 asks).
pub fn not_modified(value: Option<&[u8]>, mtime: i64) -> bool {
    let Some(since) = value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|s| httpdate::parse_http_date(s).ok())
    else {
        return false;
    };
    let since = match since.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    };
    mtime <= since
}

/// `mtime` (seconds since the epoch) as an HTTP date.
pub fn http_date(mtime: i64) -> String {
    let t = if mtime >= 0 {
        UNIX_EPOCH + Duration::from_secs(mtime as u64)
    } else {
        UNIX_EPOCH
    };
    httpdate::fmt_http_date(t.max(UNIX_EPOCH).min(SystemTime::UNIX_EPOCH + MAX_DATE))
}

/// httpdate formats years up to 9999.
const MAX_DATE: Duration = Duration::from_secs(253_402_300_799);

/// The `Content-Type` for a file name, by its extension.
pub fn content_type(path: &str) -> &'static str {
    let ext = path
        .rsplit('/')
        .next()
        .and_then(|name| name.rsplit_once('.'))
        .map(|(_, e)| e.to_ascii_lowercase());
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("txt" | "text") => "text/plain; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("json") => "application/json",
        Some("xml") => "application/xml",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("webp") => "image/webp",
        Some("ico") => "image/x-icon",
        Some("pdf") => "application/pdf",
        Some("wasm") => "application/wasm",
        Some("woff2") => "font/woff2",
        Some("mp4") => "video/mp4",
        Some("gz") => "application/gzip",
        Some("zip") => "application/zip",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(check_path("a/b.txt").unwrap(), "a/b.txt");
        assert_eq!(check_path("a%20b").unwrap(), "a b");
        for bad in [
            "",
            "..",
            "a/../b",
            "%2e%2e/etc/passwd",
            "%2E%2e",
            ".",
            "a/./b",
            "/etc/passwd",
            "a//b",
            "a/",
            "a%00b",
            "a%2fb",
            "%zz",
            "a%2",
            "%ff",
            "a\x01",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_path(&"a".repeat(1025)).is_err());
        assert!(
            check_path("..a").is_ok(),
            "a name that starts with dots is a name"
        );
    }

    #[test]
    fn ranges() {
        use RangeAnswer::*;
        let r = |v: &str, size| range(Some(v.as_bytes()), size);
        assert_eq!(range(None, 10), Whole);
        assert_eq!(r("bytes=0-0", 10), Part { start: 0, end: 1 });
        assert_eq!(r("bytes=2-", 10), Part { start: 2, end: 10 });
        assert_eq!(r("bytes=2-100", 10), Part { start: 2, end: 10 });
        assert_eq!(r("bytes=-3", 10), Part { start: 7, end: 10 });
        assert_eq!(r("bytes=-30", 10), Part { start: 0, end: 10 });
        assert_eq!(r("BYTES=1-2", 10), Part { start: 1, end: 3 });
        assert_eq!(r("bytes=10-", 10), Unsatisfiable);
        assert_eq!(r("bytes=-0", 10), Unsatisfiable);
        assert_eq!(r("bytes=0-", 0), Unsatisfiable);
        assert_eq!(r("bytes=5-2", 10), Whole);
        assert_eq!(r("bytes=0-1,3-4", 10), Whole);
        assert_eq!(r("items=0-1", 10), Whole);
        assert_eq!(r("bytes=x-1", 10), Whole);
        assert_eq!(r("bytes=1", 10), Whole);
        assert_eq!(r("bytes=18446744073709551615-", u64::MAX), Unsatisfiable);
        assert_eq!(
            r("bytes=0-18446744073709551615", 5),
            Part { start: 0, end: 5 }
        );
    }

    #[test]
    fn conditional() {
        let d = http_date(784_111_777);
        assert_eq!(d, "Sun, 06 Nov 1994 08:49:37 GMT");
        assert!(not_modified(Some(d.as_bytes()), 784_111_777));
        assert!(not_modified(Some(d.as_bytes()), 784_111_000));
        assert!(!not_modified(Some(d.as_bytes()), 784_111_778));
        assert!(!not_modified(Some(b"yesterday"), 0));
        assert!(!not_modified(None, 0));
    }

    #[test]
    fn statuses_and_types() {
        assert_eq!(errno_status(2), 404);
        assert_eq!(errno_status(18), 403);
        assert_eq!(errno_status(5), 500);
        assert_eq!(content_type("a/b.HTML"), "text/html; charset=utf-8");
        assert_eq!(content_type("a.b/c"), "application/octet-stream");
        assert_eq!(content_type("x.bin"), "application/octet-stream");
    }
}
