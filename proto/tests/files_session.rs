//! Static files through the sans-IO session: the session asks for file operations, a fake loop
//! answers them from an in-memory tree, and the tests check the bytes that come out.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::Conn;
use ringlab_proto::files::{FileDone, FileKind, FileMeta, FileOp};
use ringlab_proto::{Action, Proto, ServerConfig};

const ENOENT: i32 = 2;
const EXDEV: i32 = 18;
const MTIME: i64 = 784_111_777; // Sun, 06 Nov 1994 08:49:37 GMT

/// A loop with an in-memory root: answers every operation the session asks for.
struct Fs {
    files: HashMap<String, (Vec<u8>, FileKind)>,
    open: Option<String>,
    /// Every operation asked for, in order.
    log: Vec<FileOp>,
    /// Truncate reads to end the file at this length (the file shrank after its stat).
    shrink_to: Option<usize>,
    /// Answer reads as `sendfile` would (bytes go to the socket, not to the session).
    sendfile: bool,
    sent_direct: Vec<u8>,
}

impl Fs {
    fn new() -> Self {
        let mut files = HashMap::new();
        files.insert(
            "a.txt".to_string(),
            (b"0123456789".to_vec(), FileKind::Regular),
        );
        files.insert("dir".to_string(), (Vec::new(), FileKind::Directory));
        files.insert("empty.bin".to_string(), (Vec::new(), FileKind::Regular));
        let big: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        files.insert("sub/big.bin".to_string(), (big, FileKind::Regular));
        Fs {
            files,
            open: None,
            log: Vec::new(),
            shrink_to: None,
            sendfile: false,
            sent_direct: Vec::new(),
        }
    }

    /// Answer one operation, if the session asked for one.
    fn step(&mut self, c: &mut Conn) -> bool {
        let Some(op) = c.s.take_file_op() else {
            return false;
        };
        self.log.push(op.clone());
        let done = match op {
            FileOp::Open { path } => {
                if path.starts_with("escape") {
                    FileDone::Opened(Err(EXDEV))
                } else if self.files.contains_key(&path) {
                    assert!(self.open.is_none(), "two files open at once");
                    self.open = Some(path);
                    FileDone::Opened(Ok(()))
                } else {
                    FileDone::Opened(Err(ENOENT))
                }
            }
            FileOp::Stat => {
                let (data, kind) = &self.files[self.open.as_ref().expect("stat: a file is open")];
                FileDone::Stat(Ok(FileMeta {
                    size: data.len() as u64,
                    mtime: MTIME,
                    kind: *kind,
                }))
            }
            FileOp::Read { offset, len } => {
                let (data, _) = &self.files[self.open.as_ref().expect("read: a file is open")];
                let limit = self.shrink_to.unwrap_or(data.len()).min(data.len());
                let start = (offset as usize).min(limit);
                let end = (start + len).min(limit);
                if self.sendfile {
                    self.sent_direct.extend_from_slice(&data[start..end]);
                    FileDone::Sent(Ok(end - start))
                } else {
                    FileDone::Read(Ok(Bytes::copy_from_slice(&data[start..end])))
                }
            }
            FileOp::Close => {
                assert!(self.open.take().is_some(), "close without an open file");
                return true;
            }
        };
        c.requests += c.s.on_file(&c.cfg, done, &c.now);
        true
    }

    /// Answer operations and send output until neither is left.
    fn run(&mut self, c: &mut Conn) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut moved = self.step(c);
            while let Some(b) = c.s.take_output() {
                out.extend_from_slice(&b);
                c.requests += c.s.on_sent(&c.cfg, b.len(), &c.now);
                moved = true;
            }
            if !moved {
                return out;
            }
        }
    }
}

fn files_cfg() -> ServerConfig {
    ServerConfig {
        proto: Proto::Http,
        files: true,
        file_chunk: 4096,
        ..ServerConfig::default()
    }
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n").into_bytes()
}

/// Split a response stream into (head, body) pairs using Content-Length.
fn responses(mut out: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    while !out.is_empty() {
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a complete head")
            + 4;
        let head = String::from_utf8(out[..end].to_vec()).unwrap();
        let len: usize = header(&head, "Content-Length").map_or(0, |v| v.parse().unwrap());
        let len = if head.starts_with("HTTP/1.1 304") {
            0
        } else {
            len
        };
        let body = out[end..(end + len).min(out.len())].to_vec();
        out = &out[(end + len).min(out.len())..];
        v.push((head, body));
    }
    v
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(": ")?;
        n.eq_ignore_ascii_case(name).then_some(v)
    })
}

fn serve(input: &[u8]) -> (Vec<(String, Vec<u8>)>, Conn, Fs) {
    let mut c = Conn::new(files_cfg());
    let mut fs = Fs::new();
    c.recv(input);
    let out = fs.run(&mut c);
    (responses(&out), c, fs)
}

#[test]
fn whole_file_with_its_headers() {
    let (r, c, fs) = serve(&get("/files/a.txt", ""));
    assert_eq!(r.len(), 1);
    let (head, body) = &r[0];
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert_eq!(header(head, "Content-Length"), Some("10"));
    assert_eq!(
        header(head, "Content-Type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        header(head, "Last-Modified"),
        Some("Sun, 06 Nov 1994 08:49:37 GMT")
    );
    assert_eq!(header(head, "Accept-Ranges"), Some("bytes"));
    assert_eq!(body, b"0123456789");
    assert_eq!(c.action(), Action::Continue);
    assert!(fs.open.is_none(), "the file was closed");
    assert_eq!(c.requests, 1);
}

#[test]
fn a_large_file_comes_out_byte_exact_one_read_at_a_time() {
    let mut c = Conn::new(files_cfg());
    let mut fs = Fs::new();
    c.recv(&get("/files/sub/big.bin", ""));
    let out = fs.run(&mut c);
    let r = responses(&out);
    assert_eq!(r[0].1, fs.files["sub/big.bin"].0);
    let reads = fs
        .log
        .iter()
        .filter(|o| matches!(o, FileOp::Read { .. }))
        .count();
    assert_eq!(reads, 1_000_000usize.div_ceil(4096));
}

#[test]
fn reads_wait_for_the_peer_to_take_the_output() {
    let mut cfg = files_cfg();
    cfg.out_high_water = 16 * 1024;
    let mut c = Conn::new(cfg);
    let mut fs = Fs::new();
    c.recv(&get("/files/sub/big.bin", ""));
    // Answer operations without sending anything: the session must stop asking for reads
    // once the unsent output passes the high-water mark.
    while fs.step(&mut c) {}
    let pending = c.s.pending_output();
    assert!(
        (16 * 1024..16 * 1024 + 4096 + 512).contains(&pending),
        "{pending}"
    );
    assert!(!c.s.file_waiting());
    // Sending makes room, and the rest follows.
    let out = fs.run(&mut c);
    assert_eq!(
        responses(&out)[0].1,
        fs.files["sub/big.bin"].0,
        "the whole body once the peer reads"
    );
}

#[test]
fn head_has_the_length_and_no_body_and_reads_nothing() {
    let input = b"HEAD /files/a.txt HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut c = Conn::new(files_cfg());
    let mut fs = Fs::new();
    c.recv(input);
    let out = fs.run(&mut c);
    let text = String::from_utf8(out).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("Content-Length: 10\r\n"));
    assert!(text.ends_with("\r\n\r\n"), "no body: {text:?}");
    assert!(!fs.log.iter().any(|o| matches!(o, FileOp::Read { .. })));
}

#[test]
fn ranges_and_their_statuses() {
    let (r, ..) = serve(&get("/files/a.txt", "Range: bytes=2-4\r\n"));
    assert!(
        r[0].0.starts_with("HTTP/1.1 206 Partial Content"),
        "{}",
        r[0].0
    );
    assert_eq!(header(&r[0].0, "Content-Range"), Some("bytes 2-4/10"));
    assert_eq!(r[0].1, b"234");
    let (r, ..) = serve(&get("/files/a.txt", "Range: bytes=-3\r\n"));
    assert_eq!(r[0].1, b"789");
    let (r, ..) = serve(&get("/files/sub/big.bin", "Range: bytes=5000-\r\n"));
    assert_eq!(r[0].1, Fs::new().files["sub/big.bin"].0[5000..]);
    let (r, c, _) = serve(&get("/files/a.txt", "Range: bytes=10-\r\n"));
    assert!(r[0].0.starts_with("HTTP/1.1 416 Range Not Satisfiable"));
    assert_eq!(header(&r[0].0, "Content-Range"), Some("bytes */10"));
    assert_eq!(c.action(), Action::Continue, "a 416 keeps the connection");
    let (r, ..) = serve(&get("/files/a.txt", "Range: bytes=0-1,4-5\r\n"));
    assert!(
        r[0].0.starts_with("HTTP/1.1 200 OK"),
        "several ranges: the whole file"
    );
}

#[test]
fn if_modified_since_gives_304() {
    let (r, ..) = serve(&get(
        "/files/a.txt",
        "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
    ));
    assert!(
        r[0].0.starts_with("HTTP/1.1 304 Not Modified"),
        "{}",
        r[0].0
    );
    assert!(r[0].1.is_empty());
    let (r, ..) = serve(&get(
        "/files/a.txt",
        "If-Modified-Since: Sat, 05 Nov 1994 08:49:37 GMT\r\n",
    ));
    assert!(r[0].0.starts_with("HTTP/1.1 200 OK"));
}

#[test]
fn refusals_and_their_statuses() {
    for (path, status) in [
        ("/files/missing", "404"),
        ("/files/dir", "403"),
        ("/files/escape-link", "403"),
        ("/files/../etc/passwd", "400"),
        ("/files/%2e%2e/etc/passwd", "400"),
        ("/files/a%00b", "400"),
        ("/files//etc/passwd", "400"),
        ("/files/", "400"),
    ] {
        let (r, c, fs) = serve(&get(path, ""));
        assert!(
            r[0].0.starts_with(&format!("HTTP/1.1 {status} ")),
            "{path}: {}",
            r[0].0
        );
        assert_eq!(c.action(), Action::Continue, "{path}: keep-alive kept");
        assert!(fs.open.is_none(), "{path}: closed");
        if status == "400" {
            assert!(fs.log.is_empty(), "{path}: nothing opened");
        }
    }
    let (r, ..) = serve(b"POST /files/a.txt HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert!(r[0].0.starts_with("HTTP/1.1 405"));
    assert_eq!(header(&r[0].0, "Allow"), Some("GET, HEAD"));
}

#[test]
fn files_off_means_404() {
    let mut c = Conn::http();
    c.recv(&get("/files/a.txt", ""));
    assert!(c.s.take_file_op().is_none());
    let out = c.drain();
    assert!(out.starts_with(b"HTTP/1.1 404"));
}

#[test]
fn pipelined_requests_keep_their_order() {
    let mut input = get("/files/a.txt", "");
    input.extend(get("/", ""));
    input.extend(get("/files/missing", ""));
    input.extend(get("/files/a.txt", "Range: bytes=0-0\r\n"));
    let (r, c, _) = serve(&input);
    let statuses: Vec<&str> = r.iter().map(|(h, _)| &h[9..12]).collect();
    assert_eq!(statuses, ["200", "200", "404", "206"]);
    assert_eq!(r[0].1, b"0123456789");
    assert_eq!(r[1].1, b"Hello, World!");
    assert_eq!(r[3].1, b"0");
    assert_eq!(c.requests, 4);
}

#[test]
fn a_file_that_shrinks_closes_the_connection_after_what_was_sent() {
    let mut c = Conn::new(files_cfg());
    let mut fs = Fs::new();
    fs.shrink_to = Some(10_000);
    let mut input = get("/files/sub/big.bin", "");
    input.extend(get("/", ""));
    c.recv(&input);
    let out = fs.run(&mut c);
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(
        out.len() - end,
        10_000,
        "the bytes that existed, nothing else"
    );
    assert_eq!(
        c.action(),
        Action::ShutdownWrite,
        "then the connection ends"
    );
    assert!(fs.open.is_none());
}

#[test]
fn connection_close_ends_after_the_file() {
    let (r, c, _) = serve(&get("/files/a.txt", "Connection: close\r\n"));
    assert_eq!(header(&r[0].0, "Connection"), Some("close"));
    assert_eq!(r[0].1, b"0123456789");
    assert_eq!(c.action(), Action::ShutdownWrite);
}

#[test]
fn sendfile_answers_frame_the_body_the_same_way() {
    let mut c = Conn::new(files_cfg());
    let mut fs = Fs::new();
    fs.sendfile = true;
    let mut input = get("/files/sub/big.bin", "");
    input.extend(get("/", ""));
    c.recv(&input);
    let out = fs.run(&mut c);
    assert_eq!(fs.sent_direct, fs.files["sub/big.bin"].0);
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200 OK"));
    assert!(text.contains("Content-Length: 1000000\r\n"));
    assert!(
        text.ends_with("Hello, World!"),
        "the next response after the file"
    );
    assert_eq!(c.requests, 2);
}

#[test]
fn no_idle_timeout_while_the_loop_reads_the_file() {
    let mut cfg = files_cfg();
    cfg.idle_timeout = Duration::from_millis(100);
    let mut c = Conn::new(cfg);
    c.recv(&get("/files/a.txt", ""));
    let op = c.s.take_file_op();
    assert!(matches!(op, Some(FileOp::Open { .. })));
    assert!(c.s.file_waiting());
    assert_eq!(c.s.deadline(&c.cfg), None, "the server is the slow one");
    c.advance_to_ms(1000);
    assert_eq!(c.action(), Action::Continue);
    // The answer arrives late; the response still goes out.
    let mut fs = Fs::new();
    fs.open = Some("a.txt".into());
    c.requests += c.s.on_file(&c.cfg, FileDone::Opened(Ok(())), &c.now);
    let out = fs.run(&mut c);
    assert!(out.ends_with(b"0123456789"));
}

#[test]
fn an_aborted_session_ignores_late_answers() {
    let mut c = Conn::new(files_cfg());
    c.recv(&get("/files/a.txt", ""));
    let _ = c.s.take_file_op();
    c.s.abort();
    assert_eq!(c.action(), Action::Close);
    c.s.on_file(&c.cfg, FileDone::Opened(Ok(())), &c.now);
    assert_eq!(c.action(), Action::Close);
}
