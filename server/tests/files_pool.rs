//! Static files (`--root`) on the pool backends: tokio (its blocking pool), tokio-uring (its
//! file API on the ring) and blocking (`--workers 4`, plain reads on the worker). Each backend
//! serves a tree of pseudo-random files over one pipelined keep-alive connection byte for byte,
//! with ranges, conditional requests, HEAD and every refusal; survives clients that vanish in
//! the middle of a file without keeping a descriptor; and drains a large transfer at SIGTERM.
//!
//! io_uring must be available here: the tokio-uring tests fail rather than skip without it.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant, UNIX_EPOCH};

use common::{
    assert_bytes_eq, get, json_u64, pattern, poll_until, read_to_eof, HttpConn, Response, Server,
};

/// Run each body once per pool backend: `mod NAME { #[test] fn tokio() .. }`.
macro_rules! pool_tests {
    () => {};
    ($(#[$meta:meta])* fn $name:ident($io:ident : &str) $body:block $($rest:tt)*) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($io: &str) $body

            #[test]
            fn tokio() {
                body("tokio")
            }

            #[test]
            fn tokio_uring() {
                body("tokio-uring")
            }

            #[test]
            fn blocking() {
                body("blocking")
            }
        }
        pool_tests!($($rest)*);
    };
}

/// The files of the tree: name, size, pattern seed.
const FILES: &[(&str, usize, u64)] = &[
    ("empty.bin", 0, 1),
    ("one.bin", 1, 2),
    ("four-k.bin", 4096, 3),
    ("odd.bin", (1 << 20) + 12_345, 4),
    ("five-m.bin", 5 << 20, 5),
];

/// Every file's modification time: 2001-09-09 01:46:40 UTC.
const MTIME: u64 = 1_000_000_000;
const MTIME_HTTP: &str = "Sun, 09 Sep 2001 01:46:40 GMT";
const BEFORE_MTIME_HTTP: &str = "Sun, 09 Sep 2001 01:46:39 GMT";

/// A root with [`FILES`] (mtime [`MTIME`]), a directory `sub/` (holding `inner.txt`), a FIFO
/// `fifo` with no writer (opening it must not wait for one), a symlink
/// `inside.bin` to `four-k.bin`, and two symlinks out of the root to a secret beside it:
/// `escape` (absolute) and `escape-rel` (`../<outside>/secret.txt`). Returns the root and the
/// outside directory (both removed when dropped).
fn tree() -> (tempfile::TempDir, tempfile::TempDir) {
    let root = tempfile::tempdir().expect("temp root");
    let outside = tempfile::tempdir().expect("temp dir outside the root");
    let secret = outside.path().join("secret.txt");
    std::fs::write(&secret, b"secret: outside the root").unwrap();
    for &(name, len, seed) in FILES {
        let p = root.path().join(name);
        std::fs::write(&p, pattern(seed, len)).unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(UNIX_EPOCH + Duration::from_secs(MTIME))
            .unwrap();
    }
    std::fs::create_dir(root.path().join("sub")).unwrap();
    std::fs::write(root.path().join("sub/inner.txt"), b"inner").unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.path().join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
    std::os::unix::fs::symlink("four-k.bin", root.path().join("inside.bin")).unwrap();
    std::os::unix::fs::symlink(&secret, root.path().join("escape")).unwrap();
    let rel = Path::new("..")
        .join(outside.path().file_name().unwrap())
        .join("secret.txt");
    std::os::unix::fs::symlink(&rel, root.path().join("escape-rel")).unwrap();
    assert_eq!(
        std::fs::read(root.path().join("escape-rel")).unwrap(),
        b"secret: outside the root",
        "the relative symlink does lead out of the root"
    );
    (root, outside)
}

fn file(name: &str) -> Vec<u8> {
    let &(_, len, seed) = FILES
        .iter()
        .find(|f| f.0 == name)
        .unwrap_or_else(|| panic!("no file {name}"));
    pattern(seed, len)
}

/// The arguments of a server for `io` serving `root`.
fn args<'a>(io: &str, root: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let root = root.to_str().expect("utf-8 temp path");
    let mut args = vec!["--proto", "http", "--cores", "all", "--root", root];
    if io == "blocking" {
        args.extend(["--workers", "4"]);
    }
    args.extend_from_slice(extra);
    args
}

/// A server for `io` serving `root`.
fn start(io: &str, root: &Path, extra: &[&str]) -> Server {
    Server::start(io, &args(io, root, extra))
}

/// `GET path` with extra header lines.
fn get_with(path: &str, headers: &[&str]) -> Vec<u8> {
    let mut r = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// What one response of a pipelined batch must be.
type Check = Box<dyn Fn(&Response)>;

#[track_caller]
fn assert_status(r: &Response, status: u16, what: &str) {
    assert_eq!(
        r.status,
        status,
        "{what}: {:?}",
        String::from_utf8_lossy(&r.raw[..r.raw.len().min(400)])
    );
}

/// A whole file: 200, its bytes exactly, and the file headers.
#[track_caller]
fn assert_file(r: &Response, name: &str) {
    assert_status(r, 200, name);
    assert_bytes_eq(&r.body, &file(name), name);
    assert_eq!(r.header("last-modified"), Some(MTIME_HTTP), "{name}");
    assert_eq!(r.header("accept-ranges"), Some("bytes"), "{name}");
    assert_eq!(
        r.header("content-type"),
        Some("application/octet-stream"),
        "{name}"
    );
    assert!(!r.connection_has("close"), "{name}: kept alive");
}

/// Descriptors the server has open, once they stop changing (a closing connection's descriptor
/// may take a moment to go).
fn settled_fds(srv: &Server) -> usize {
    let mut last = srv.open_fds();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(50));
        let now = srv.open_fds();
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

pool_tests! {
    /// Over one keep-alive connection, every request written at once (pipelined): each file
    /// byte for byte (0 B, 1 B, 4 KiB, an odd size over 1 MiB, 5 MiB, and a symlink beneath the
    /// root), ranges (206 with Content-Range), an unsatisfiable range (416), If-Modified-Since
    /// (304, and 200 when older), missing (404), a directory, a FIFO and symlinks out of the
    /// root (403), dot segments plain and encoded and an empty segment (400); then the
    /// connection still serves, and HEAD answers the head alone.
    fn serves_files_pipelined(io: &str) {
        let (root, _outside) = tree();
        let mut srv = Server::start_with_stats(io, &args(io, root.path(), &[]));
        let mut c = HttpConn::new(srv.connect());

        let mut batch = Vec::new();
        let mut expect: Vec<Check> = Vec::new();
        for &(name, _, _) in FILES {
            batch.extend(get(&format!("/files/{name}")));
            expect.push(Box::new(move |r| assert_file(r, name)));
        }
        batch.extend(get("/files/inside.bin"));
        expect.push(Box::new(|r| {
            assert_status(r, 200, "a symlink beneath the root");
            assert_bytes_eq(&r.body, &file("four-k.bin"), "inside.bin");
        }));
        batch.extend(get_with("/files/odd.bin", &["Range: bytes=100-1099"]));
        expect.push(Box::new(|r| {
            assert_status(r, 206, "bytes=100-1099");
            let size = file("odd.bin").len();
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes 100-1099/{size}").as_str())
            );
            assert_bytes_eq(&r.body, &file("odd.bin")[100..1100], "odd.bin 100-1099");
        }));
        batch.extend(get_with("/files/five-m.bin", &["Range: bytes=-70000"]));
        expect.push(Box::new(|r| {
            assert_status(r, 206, "bytes=-70000");
            let f = file("five-m.bin");
            let n = f.len();
            assert_eq!(
                r.header("content-range"),
                Some(format!("bytes {}-{}/{n}", n - 70_000, n - 1).as_str())
            );
            assert_bytes_eq(&r.body, &f[n - 70_000..], "the last 70000 bytes of five-m.bin");
        }));
        batch.extend(get_with("/files/four-k.bin", &["Range: bytes=4096-"]));
        expect.push(Box::new(|r| {
            assert_status(r, 416, "bytes=4096- of 4096 bytes");
            assert_eq!(r.header("content-range"), Some("bytes */4096"));
        }));
        let ims = format!("If-Modified-Since: {MTIME_HTTP}");
        batch.extend(get_with("/files/odd.bin", &[&ims]));
        expect.push(Box::new(|r| {
            assert_status(r, 304, "If-Modified-Since the mtime");
            assert!(r.body.is_empty());
            assert_eq!(r.header("last-modified"), Some(MTIME_HTTP));
        }));
        let older = format!("If-Modified-Since: {BEFORE_MTIME_HTTP}");
        batch.extend(get_with("/files/one.bin", &[&older]));
        expect.push(Box::new(|r| assert_file(r, "one.bin")));
        for (path, status, what) in [
            ("/files/missing.bin", 404, "a missing file"),
            ("/files/sub/missing.bin", 404, "a missing file in a directory"),
            ("/files/sub", 403, "a directory"),
            ("/files/fifo", 403, "a FIFO (not a regular file)"),
            ("/files/sub/", 400, "an empty segment"),
            ("/files/escape", 403, "an absolute symlink out of the root"),
            ("/files/escape-rel", 403, "a relative symlink out of the root"),
            ("/files/../x", 400, "a dot segment"),
            ("/files/%2e%2e/x", 400, "an encoded dot segment"),
            ("/files/sub/%2E%2E/one.bin", 400, "an encoded dot segment, upper case"),
        ] {
            batch.extend(get(path));
            expect.push(Box::new(move |r| {
                assert_status(r, status, &format!("{what} ({path})"));
                assert!(!r.body.windows(6).any(|w| w == b"secret"), "{path}");
                assert!(!r.connection_has("close"), "{path}: kept alive");
            }));
        }
        batch.extend(get("/files/sub/inner.txt"));
        expect.push(Box::new(|r| {
            assert_status(r, 200, "a file in a directory");
            assert_eq!(r.body, b"inner");
            assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        }));
        // The big ones again, back to back: each Close is followed at once by the next Open.
        for name in ["five-m.bin", "odd.bin", "empty.bin", "five-m.bin"] {
            batch.extend(get(&format!("/files/{name}")));
            expect.push(Box::new(move |r| assert_file(r, name)));
        }
        c.send(&batch);
        // What the statistics must show: every request not refused by its path opened a file,
        // and every body byte was read from one.
        let (mut opens, mut body_bytes) = (0, 0);
        for (i, check) in expect.iter().enumerate() {
            let r = c.response();
            eprintln!("response {i}: {}", r.status);
            check(&r);
            opens += u64::from(r.status != 400);
            if matches!(r.status, 200 | 206) {
                body_bytes += r.body.len() as u64;
            }
        }
        assert!(c.leftover().is_empty(), "bytes after the last response");

        // The connection still serves, one request at a time.
        let r = c.request(&get("/files/four-k.bin"));
        assert_file(&r, "four-k.bin");
        (opens, body_bytes) = (opens + 1, body_bytes + 4096);
        let r = c.request(&get("/"));
        assert_status(&r, 200, "GET / after files");

        // HEAD: the head GET would have (Content-Length included), no body.
        let mut h = srv.connect();
        h.write_all(b"HEAD /files/odd.bin HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let raw = read_to_eof(&mut h, 64 * 1024).expect("HEAD response");
        let text = String::from_utf8(raw).expect("a head is text");
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
        assert!(text.ends_with("\r\n\r\n"), "no body after the head: {text:?}");
        let cl = format!("Content-Length: {}\r\n", file("odd.bin").len());
        assert!(text.contains(&cl), "HEAD carries GET's Content-Length: {text:?}");
        assert!(text.contains(&format!("Last-Modified: {MTIME_HTTP}\r\n")), "{text:?}");
        opens += 1;

        drop(c);
        srv.stop_and_wait(common::EXIT_TIMEOUT);
        let st = srv.stats();
        assert_eq!(json_u64(&st, "total.file_opens"), opens, "{st:#}");
        assert_eq!(json_u64(&st, "total.file_bytes"), body_bytes, "{st:#}");
        // The opens that failed: two missing files, two symlinks out of the root.
        assert_eq!(json_u64(&st, "total.file_errors"), 4, "{st:#}");
        assert_eq!(json_u64(&st, "total.accepted"), json_u64(&st, "total.closed"), "{st:#}");
    }

    /// Clients that vanish in the middle of a file (after part of the body, before any of it,
    /// right after sending the request) leave the server serving and holding no descriptor of
    /// theirs: the count in /proc/PID/fd comes back to what it was.
    fn disconnect_mid_file_leaks_nothing(io: &str) {
        let (root, _outside) = tree();
        let mut srv = start(io, root.path(), &[]);
        // Warm up (a first file served and closed), then measure.
        let mut c = HttpConn::new(srv.connect());
        assert_file(&c.request(&get("/files/odd.bin")), "odd.bin");
        drop(c);
        let baseline = settled_fds(&srv);

        for round in 0..3 {
            // Part of the body read, then gone (unread data: the close is a reset).
            let mut s = srv.connect();
            s.write_all(&get("/files/five-m.bin")).unwrap();
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            while got < 200 * 1024 {
                let n = s.read(&mut buf).expect("part of the body");
                assert!(n > 0, "round {round}: EOF after {got} bytes");
                got += n;
            }
            drop(s);
            // Pipelined requests, nothing read.
            let mut s = srv.connect();
            let mut reqs = get("/files/five-m.bin");
            reqs.extend(get("/files/odd.bin"));
            s.write_all(&reqs).unwrap();
            std::thread::sleep(Duration::from_millis(20));
            drop(s);
            // Gone before the answer could be written; its write side closed first.
            let s = srv.connect();
            (&s).write_all(&get("/files/five-m.bin")).unwrap();
            s.shutdown(std::net::Shutdown::Both).unwrap();
            drop(s);
        }
        let mut last = 0;
        let back = poll_until(Duration::from_secs(15), || {
            last = srv.open_fds();
            last <= baseline
        });
        assert!(back, "{last} descriptors open, {baseline} before the clients came and went");
        assert!(srv.running(), "the server survived the clients");

        // It still serves whole files.
        let mut c = HttpConn::new(srv.connect());
        assert_file(&c.request(&get("/files/five-m.bin")), "five-m.bin");
        assert_file(&c.request(&get("/files/one.bin")), "one.bin");
        drop(c);
        srv.stop_and_wait(common::EXIT_TIMEOUT);
    }

    /// SIGTERM in the middle of large transfers: the reading client gets its whole file, byte
    /// for byte, and then EOF; a client that stopped reading is cut off when the grace period
    /// ends; the server exits 0 within the grace period (and the abort margin).
    fn sigterm_mid_transfer(io: &str) {
        const GRACE: Duration = Duration::from_secs(3);
        let (root, _outside) = tree();
        let mut srv = start(io, root.path(), &["--grace", "3s"]);
        // A reader, part way through its body at SIGTERM.
        let mut reader = srv.connect();
        reader.write_all(&get("/files/five-m.bin")).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while got.len() < 256 * 1024 {
            let n = reader.read(&mut buf).expect("the start of the body");
            assert!(n > 0, "EOF after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        // A client that asks for the big file three times (more than the socket buffers hold)
        // and reads nothing.
        let mut stalled = srv.connect();
        socket2::SockRef::from(&stalled)
            .set_recv_buffer_size(64 * 1024)
            .unwrap();
        let mut reqs = Vec::new();
        for _ in 0..3 {
            reqs.extend(get("/files/five-m.bin"));
        }
        stalled.write_all(&reqs).unwrap();
        std::thread::sleep(Duration::from_millis(100));

        let signalled = Instant::now();
        srv.stop();
        let rest = read_to_eof(&mut reader, 6 << 20).expect("the rest of the body, then EOF");
        got.extend_from_slice(&rest);
        let head_end = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head")
            + 4;
        let head = String::from_utf8_lossy(&got[..head_end]).to_string();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head:?}");
        assert_bytes_eq(&got[head_end..], &file("five-m.bin"), "the body drained at SIGTERM");

        let (status, stdout, stderr) = srv.wait_exit(GRACE + Duration::from_secs(10));
        let took = signalled.elapsed();
        assert!(status.success(), "exit {status}\nstderr:\n{stderr}\nstdout:\n{stdout}");
        assert!(
            took < GRACE + Duration::from_secs(2),
            "exit {took:?} after SIGTERM, grace {GRACE:?}"
        );
        // The stalled client was cut off: part of its responses, then the end (EOF or reset).
        stalled.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut n = 0usize;
        let end = loop {
            match stalled.read(&mut buf) {
                Ok(0) => break "EOF".to_string(),
                Ok(k) => n += k,
                Err(e) => break e.to_string(),
            }
            assert!(n < 3 * (5 << 20), "the stalled client got all three files");
        };
        assert!(
            !end.contains("timed out") && !end.contains("temporarily unavailable"),
            "the stalled connection did not end: {end}"
        );
        eprintln!("stalled client: {n} bytes, then {end}");
    }
}
