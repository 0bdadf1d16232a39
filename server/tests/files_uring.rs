//! Static files through the io_uring backend (`--io uring --root DIR`): open, stat, read and
//! close as ring operations. Every byte is checked against the file; ranges, conditional
//! requests, refusals; many connections against a small `--file-inflight` (the loop's queue);
//! peers that leave in the middle of a file (no descriptor may leak); `--fixed-files`;
//! `--file-fixed-bufs` (reads into registered buffers, sent from there: with 1 buffer every read
//! waits for the bytes of the one before to be sent, so a buffer that never came back would
//! stall the test).
//!
//! (To be folded into the all-backend tests in `files.rs`.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{assert_bytes_eq, json_u64, pattern, poll_until, HttpConn, Response, Server};

const IO: &str = "uring";

/// The files of a test root: (name, size), contents `pattern(i, size)`.
const FILES: &[(&str, usize)] = &[
    ("empty.bin", 0),
    ("one.txt", 1),
    ("page.html", 4096),
    ("odd.bin", (1 << 20) + 12_345),
    ("five.bin", 5 << 20),
];

/// A root directory with [`FILES`], a subdirectory, a symlink within the root, and a symlink
/// to a file outside it (in a sibling directory of the root).
struct Root {
    _dir: tempfile::TempDir,
    path: PathBuf,
    /// The file a symlink leads to out of the root.
    outside: PathBuf,
}

impl Root {
    fn new() -> Root {
        let dir = tempfile::Builder::new()
            .prefix("ringlab-files-uring")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let path = dir.path().join("root");
        std::fs::create_dir(&path).unwrap();
        for (i, &(name, size)) in FILES.iter().enumerate() {
            std::fs::write(path.join(name), pattern(i as u64 + 1, size)).unwrap();
        }
        std::fs::create_dir(path.join("sub")).unwrap();
        std::fs::write(path.join("sub/inner.txt"), b"inner\n").unwrap();
        let outside = dir.path().join("secret.txt");
        std::fs::write(&outside, b"not to be served\n").unwrap();
        std::os::unix::fs::symlink(&outside, path.join("escape")).unwrap();
        std::os::unix::fs::symlink("../secret.txt", path.join("escape-rel")).unwrap();
        std::os::unix::fs::symlink("one.txt", path.join("link.txt")).unwrap();
        Root {
            _dir: dir,
            path,
            outside,
        }
    }

    fn dir(&self) -> &str {
        self.path.to_str().unwrap()
    }

    /// The contents of file `name` of [`FILES`].
    fn contents(name: &str) -> Vec<u8> {
        let i = FILES.iter().position(|&(n, _)| n == name).unwrap();
        pattern(i as u64 + 1, FILES[i].1)
    }
}

/// Opens the sessions asked for: performed, or answered from the cache of open files.
fn opens_asked(st: &serde_json::Value) -> u64 {
    json_u64(st, "total.file_opens") + json_u64(st, "total.file_cache_hits")
}

fn start(root: &Root, extra: &[&str]) -> Server {
    let mut args = vec!["--proto", "http", "--root", root.dir()];
    args.extend_from_slice(extra);
    Server::start_with_stats(IO, &args)
}

/// With `--file-fixed-bufs` in `extra`: every read went into a registered buffer.
#[track_caller]
fn assert_fixed_reads(extra: &[&str], st: &serde_json::Value) {
    if extra.contains(&"--file-fixed-bufs") {
        let (fixed, reads) = (
            json_u64(st, "total.file_fixed_reads"),
            json_u64(st, "total.file_reads"),
        );
        assert!(
            fixed > 0 && fixed == reads,
            "{fixed} of {reads} reads fixed: {st:#}"
        );
    }
}

fn get_with(path: &str, headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n").into_bytes()
}

#[track_caller]
fn assert_file(r: &Response, name: &str) {
    assert_eq!(r.status, 200, "{name}: {:?}", r.headers);
    let want = Root::contents(name);
    assert_eq!(
        r.header("content-length"),
        Some(want.len().to_string().as_str()),
        "{name}"
    );
    assert!(r.header("last-modified").is_some(), "{name}: Last-Modified");
    assert_bytes_eq(&r.body, &want, name);
}

/// Every file, pipelined in one write on one keep-alive connection, twice over, with the
/// refusals interleaved: each answer in order and exact.
fn pipelined_exact(extra: &[&str]) {
    let root = Root::new();
    let mut srv = start(&root, extra);
    let mut c = HttpConn::new(srv.connect());
    let mut batch = Vec::new();
    let mut want: Vec<(&str, u16)> = Vec::new();
    for _ in 0..2 {
        for &(name, _) in FILES {
            batch.extend(common::get(&format!("/files/{name}")));
            want.push((name, 200));
        }
        for (path, status) in [
            ("/files/missing.txt", 404),
            ("/files/sub", 403),
            ("/files/escape", 403),
            ("/files/escape-rel", 403),
            ("/files/sub/inner.txt", 200),
            ("/files/link.txt", 200),
        ] {
            batch.extend(common::get(path));
            want.push((path, status));
        }
    }
    c.send(&batch);
    for (what, status) in want {
        let r = c.response();
        assert_eq!(
            r.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&r.raw)
        );
        match what {
            "/files/sub/inner.txt" => assert_eq!(r.body, b"inner\n"),
            "/files/link.txt" => assert_eq!(r.body, Root::contents("one.txt")),
            w if !w.starts_with('/') => assert_file(&r, w),
            _ => {}
        }
        if what.starts_with("/files/escape") {
            let secret = std::fs::read(&root.outside).unwrap();
            assert!(
                !r.raw.windows(secret.len()).any(|w| w == secret),
                "the file outside the root leaked"
            );
        }
    }
    // The connection is still usable after all of that.
    let r = c.request(&common::get("/files/one.txt"));
    assert_file(&r, "one.txt");
    drop(c);
    srv.stop_and_wait(common::EXIT_TIMEOUT);
    let st = srv.stats();
    // Two rounds of 5 files + 5 more opens (404 and 403s fail at open or stat), + inner, link,
    // +1: opened, or answered from the cache of open files.
    assert_eq!(opens_asked(&st), 2 * 11 + 1, "{st:#}");
    let want_bytes: u64 = FILES.iter().map(|&(_, s)| s as u64).sum::<u64>() * 2 + 2 * 7 + 1;
    assert_eq!(json_u64(&st, "total.file_bytes"), want_bytes, "{st:#}");
    assert_fixed_reads(extra, &st);
}

#[test]
fn pipelined_files_exact() {
    pipelined_exact(&[]);
}

#[test]
fn pipelined_files_exact_fixed_files() {
    pipelined_exact(&["--fixed-files"]);
}

#[test]
fn small_chunks_and_small_high_water() {
    // Many reads per file, interleaved with backpressure.
    pipelined_exact(&["--file-chunk", "4096", "--out-high-water", "16384"]);
}

#[test]
fn pipelined_files_exact_fixed_bufs() {
    pipelined_exact(&["--file-fixed-bufs", "4"]);
}

#[test]
fn pipelined_files_exact_one_fixed_buf() {
    // Each read waits until the bytes of the one before have been sent.
    pipelined_exact(&["--file-fixed-bufs", "1"]);
}

#[test]
fn small_chunks_one_fixed_buf_fixed_files() {
    pipelined_exact(&[
        "--file-fixed-bufs",
        "1",
        "--file-chunk",
        "4096",
        "--out-high-water",
        "16384",
        "--fixed-files",
    ]);
}

#[test]
fn ranges_and_unsatisfiable() {
    let root = Root::new();
    let mut srv = start(&root, &[]);
    let odd = Root::contents("odd.bin");
    let size = odd.len();
    let mut c = HttpConn::new(srv.connect());
    let cases: Vec<(String, usize, usize)> = vec![
        ("bytes=0-0".into(), 0, 1),
        ("bytes=100-199".into(), 100, 200),
        ("bytes=-10".into(), size - 10, size),
        (format!("bytes={}-", size - 70_000), size - 70_000, size),
        ("bytes=65535-65537".into(), 65_535, 65_538),
        (format!("bytes=5-{}", size + 1000), 5, size),
    ];
    let mut batch = Vec::new();
    for (range, _, _) in &cases {
        batch.extend(get_with("/files/odd.bin", &format!("Range: {range}\r\n")));
    }
    c.send(&batch);
    for (range, start, end) in &cases {
        let r = c.response();
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {start}-{}/{size}", end - 1).as_str()),
            "{range}"
        );
        assert_bytes_eq(&r.body, &odd[*start..*end], range);
    }
    for range in [format!("bytes={size}-"), "bytes=-0".to_string()] {
        let r = c.request(&get_with("/files/odd.bin", &format!("Range: {range}\r\n")));
        assert_eq!(r.status, 416, "{range}");
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes */{size}").as_str())
        );
    }
    // An empty file has no satisfiable range.
    let r = c.request(&get_with("/files/empty.bin", "Range: bytes=0-\r\n"));
    assert_eq!(r.status, 416);
    // And the connection goes on.
    assert_file(&c.request(&common::get("/files/page.html")), "page.html");
    drop(c);
    srv.stop_and_wait(common::EXIT_TIMEOUT);
}

#[test]
fn conditional_and_head() {
    let root = Root::new();
    let mut srv = start(&root, &[]);
    let mut c = HttpConn::new(srv.connect());
    let r = c.request(&common::get("/files/page.html"));
    assert_file(&r, "page.html");
    assert_eq!(
        r.header("content-type"),
        Some("text/html; charset=utf-8"),
        "by extension"
    );
    let lm = r.header("last-modified").unwrap().to_string();
    let r = c.request(&get_with(
        "/files/page.html",
        &format!("If-Modified-Since: {lm}\r\n"),
    ));
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = c.request(&get_with(
        "/files/page.html",
        "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
    ));
    assert_file(&r, "page.html");

    // HEAD: the head of a GET, no body: the next response follows the head at once.
    let size = Root::contents("five.bin").len();
    c.send(b"HEAD /files/five.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    c.send(&common::get("/files/one.txt"));
    // The HEAD response's head, then the next response's head (bounded reads; the read
    // timeout bounds each).
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = |raw: &[u8]| raw.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    for _ in 0..64 {
        if head_end(&raw).is_some_and(|h| raw.len() >= h + 12) {
            break;
        }
        let n = c.stream.read(&mut buf).expect("reading the HEAD response");
        assert!(n > 0, "EOF after HEAD: {:?}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    }
    let h = head_end(&raw).expect("a response head");
    let head = String::from_utf8_lossy(&raw[..h]).to_string();
    let rest = String::from_utf8_lossy(&raw[h..]).to_string();
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {size}")),
        "{head}"
    );
    assert!(
        rest.starts_with("HTTP/1.1 200 "),
        "HEAD sent a body: {:?}",
        &rest[..rest.len().min(64)]
    );
    drop(c);
    srv.stop_and_wait(common::EXIT_TIMEOUT);
    let st = srv.stats();
    assert_eq!(json_u64(&st, "total.file_errors"), 0, "{st:#}");
}

/// Dot segments are refused before anything is opened (400); the connection goes on.
#[test]
fn dot_segments_400() {
    let root = Root::new();
    let mut srv = start(&root, &[]);
    for path in [
        "/files/../secret.txt",
        "/files/%2e%2e/secret.txt",
        "/files/%2E%2e/secret.txt",
        "/files/sub/../../secret.txt",
        "/files/a%00b",
        "/files//etc/passwd",
    ] {
        let mut c = HttpConn::new(srv.connect());
        let r = c.request(&common::get(path));
        assert_eq!(r.status, 400, "{path}: {}", String::from_utf8_lossy(&r.raw));
        assert!(!String::from_utf8_lossy(&r.raw).contains("not to be served"));
    }
    srv.stop_and_wait(common::EXIT_TIMEOUT);
    let st = srv.stats();
    assert_eq!(
        json_u64(&st, "total.file_opens"),
        0,
        "nothing opened: {st:#}"
    );
}

/// Many connections at once, each fetching the 5 MiB file, through at most `inflight` file
/// operations in flight (or fewer registered buffers): the rest wait in the loop's queue, and
/// every byte still arrives right.
fn many_through_a_small_queue(inflight: &str, extra: &[&str]) {
    let root = Root::new();
    let mut args = vec!["--file-inflight", inflight];
    args.extend_from_slice(extra);
    let mut srv = start(&root, &args);
    let want = Arc::new(Root::contents("five.bin"));
    let n = 12;
    let barrier = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (addr, want, barrier) = (srv.addr, want.clone(), barrier.clone());
            std::thread::spawn(move || {
                let mut c = HttpConn::new(common::connect(addr));
                barrier.wait();
                // Two requests per connection, pipelined: the second waits for the first.
                let mut req = common::get("/files/five.bin");
                req.extend(common::get("/files/odd.bin"));
                c.send(&req);
                let r = c.response();
                assert_eq!(r.status, 200, "connection {i}");
                assert_bytes_eq(&r.body, &want, &format!("connection {i}: five.bin"));
                assert_file(&c.response(), "odd.bin");
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client failed");
    }
    srv.stop_and_wait(common::EXIT_TIMEOUT);
    let st = srv.stats();
    assert!(
        json_u64(&st, "total.file_queued") > 0,
        "no file operation ever waited for room: {st:#}"
    );
    assert_eq!(opens_asked(&st), 2 * n as u64, "{st:#}");
    assert_eq!(json_u64(&st, "total.file_errors"), 0, "{st:#}");
    assert_fixed_reads(extra, &st);
}

#[test]
fn many_connections_file_inflight_2() {
    many_through_a_small_queue("2", &[]);
}

#[test]
fn many_connections_file_inflight_2_fixed_files() {
    many_through_a_small_queue("2", &["--fixed-files", "--cores", "all"]);
}

#[test]
fn many_connections_fixed_bufs_4() {
    // Room for 64 operations in flight, but only 4 buffers: reads wait for buffers.
    many_through_a_small_queue("64", &["--file-fixed-bufs", "4"]);
}

#[test]
fn many_connections_one_fixed_buf_on_every_core() {
    many_through_a_small_queue("64", &["--file-fixed-bufs", "1", "--cores", "all"]);
}

#[test]
fn many_connections_file_inflight_2_fixed_bufs_fixed_files() {
    many_through_a_small_queue("2", &["--file-fixed-bufs", "4", "--fixed-files"]);
}

/// Close `s` with a reset (SO_LINGER 0) instead of a FIN.
fn reset(s: TcpStream) {
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s);
}

/// Descriptors of the server, once they settle at `want` or below (bounded wait); the last
/// count seen.
fn fds_settle(srv: &Server, want: usize) -> usize {
    let mut last = 0;
    poll_until(Duration::from_secs(10), || {
        last = srv.open_fds();
        last <= want
    });
    last
}

/// Peers that leave in the middle of a file (after some of its body, or right after asking,
/// with a FIN or a reset): the server goes on serving, and closes every file it opened for them.
fn leavers(extra: &[&str]) {
    let root = Root::new();
    let mut args = vec!["--file-inflight", "2", "--file-chunk", "16384"];
    args.extend_from_slice(extra);
    let mut srv = start(&root, &args);
    // No connection yet: the listener, the ring, the waker, the root, stdio.
    let before = srv.open_fds();
    // What the loops' caches of open files may keep: five.bin and odd.bin, each loop.
    let cached = if extra.contains(&"--file-cache") {
        0
    } else {
        2 * common::parse_cpu_list(&srv.cores).len().max(1)
    };
    for round in 0..24 {
        let mut s = srv.connect();
        let mut req = common::get("/files/five.bin");
        req.extend(common::get("/files/odd.bin"));
        s.write_all(&req).unwrap();
        match round % 4 {
            // Leave at once, before the open can have completed.
            0 => reset(s),
            1 => drop(s),
            // Leave after some of the body.
            _ => {
                let mut got = 0;
                let mut buf = vec![0u8; 64 * 1024];
                while got < 200_000 {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "EOF in the middle of the body");
                    got += n;
                }
                if round % 4 == 2 {
                    reset(s)
                } else {
                    drop(s)
                }
            }
        }
    }
    // Bursts of peers that ask and leave at once, with more operations than room in flight:
    // some leave while theirs wait in the queue, some while theirs are in flight.
    for burst in 0..4 {
        let conns: Vec<TcpStream> = (0..16).map(|_| srv.connect()).collect();
        for mut s in &conns {
            s.write_all(&common::get("/files/odd.bin")).unwrap();
        }
        for s in conns {
            if burst % 2 == 0 {
                reset(s)
            } else {
                drop(s)
            }
        }
    }
    // Still serving, exactly.
    let mut c = HttpConn::new(srv.connect());
    assert_file(&c.request(&common::get("/files/odd.bin")), "odd.bin");
    drop(c);
    let after = fds_settle(&srv, before + cached);
    assert!(
        after <= before + cached,
        "descriptors leaked: {before} before (+{cached} cached), {after} after"
    );
    srv.stop_and_wait(common::EXIT_TIMEOUT);
    let st = srv.stats();
    assert_eq!(
        json_u64(&st, "total.accepted"),
        json_u64(&st, "total.closed")
    );
    assert_fixed_reads(extra, &st);
}

#[test]
fn peers_leaving_mid_file_leak_nothing() {
    leavers(&[]);
}

#[test]
fn peers_leaving_mid_file_leak_nothing_fixed_files() {
    leavers(&["--fixed-files"]);
}

#[test]
fn peers_leaving_mid_file_leak_nothing_uncached() {
    leavers(&["--file-cache", "0"]);
}

#[test]
fn peers_leaving_mid_file_leak_nothing_fixed_bufs() {
    leavers(&["--file-fixed-bufs", "4"]);
}

#[test]
fn peers_leaving_mid_file_give_back_the_one_fixed_buf() {
    // Every buffer a leaver held must come back, or the last fetch would wait forever.
    leavers(&["--file-fixed-bufs", "1"]);
}

/// Shutdown while files are being sent to peers that do not read: the grace period ends, the
/// connections are aborted with file operations possibly in flight, and the server exits
/// cleanly (nothing left in flight to leak). With `--file-fixed-bufs`, sends in flight carry
/// bytes of registered buffers, and reads wait in the queue for a buffer.
fn shutdown_during_transfers(extra: &[&str]) {
    let root = Root::new();
    let mut args = vec!["--grace", "300ms", "--out-high-water", "65536"];
    args.extend_from_slice(extra);
    let mut srv = start(&root, &args);
    let mut conns = Vec::new();
    for _ in 0..6 {
        let mut s = srv.connect();
        s.write_all(&common::get("/files/five.bin")).unwrap();
        conns.push(s);
    }
    // Each has its head and some body by now (or soon): the server waits on the peers.
    for s in &mut conns {
        let mut buf = [0u8; 1024];
        assert!(s.read(&mut buf).unwrap() > 0);
    }
    let (status, _, stderr) = {
        srv.stop();
        srv.wait_exit(common::EXIT_TIMEOUT)
    };
    assert!(status.success(), "{status}\n{stderr}");
    assert!(!stderr.contains("still in flight"), "{stderr}");
    let st = srv.stats();
    assert_eq!(opens_asked(&st), 6, "{st:#}");
    assert_fixed_reads(extra, &st);
    drop(conns);
}

#[test]
fn shutdown_with_files_in_flight() {
    shutdown_during_transfers(&[]);
}

#[test]
fn shutdown_with_files_in_flight_fixed_bufs() {
    shutdown_during_transfers(&["--file-fixed-bufs", "4"]);
}

#[test]
fn shutdown_with_files_in_flight_one_fixed_buf() {
    shutdown_during_transfers(&["--file-fixed-bufs", "1", "--fixed-files"]);
}

/// `--file-fixed-bufs` is refused in one line where it cannot apply.
#[test]
fn fixed_bufs_refused_in_one_line() {
    let root = Root::new();
    for (args, says) in [
        (
            &["--io", "epoll", "--proto", "http", "--root", root.dir()][..],
            "--file-fixed-bufs applies to --io uring only",
        ),
        (
            &["--io", "uring", "--proto", "http"][..],
            "--file-fixed-bufs reads files: add --root",
        ),
    ] {
        let args = [args, &["--file-fixed-bufs", "4"][..]].concat();
        common::assert_refused_in_one_line(&args, says);
    }
}

/// Registered buffers past `RLIMIT_MEMLOCK`: the server stops at start with one line naming
/// the flag and the limit (no panic). Without `CAP_IPC_LOCK` only: as root it is dropped
/// through `setpriv`, and the test is skipped where that is not possible.
#[test]
fn fixed_bufs_past_memlock_fail_in_one_line() {
    const CAP_IPC_LOCK: u32 = 14;
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = common::proc_status_field(&status, "CapEff")
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists());
    let mut cmd = match (eff & (1 << CAP_IPC_LOCK) != 0, setpriv) {
        (false, _) => std::process::Command::new(common::BIN),
        (true, Some(sp)) => {
            let mut c = std::process::Command::new(sp);
            c.args([
                "--inh-caps",
                "-ipc_lock",
                "--bounding-set",
                "-ipc_lock",
                common::BIN,
            ]);
            c
        }
        (true, None) => {
            // CI runs as root with util-linux: there this must run (RINGLAB_REQUIRE_NETADMIN).
            let why = Err("CAP_IPC_LOCK is set and there is no setpriv to drop it".to_string());
            if common::skip_unless("RINGLAB_REQUIRE_NETADMIN", "the RLIMIT_MEMLOCK case", why) {
                return;
            }
            unreachable!("skip_unless panics when required")
        }
    };
    let root = Root::new();
    {
        use std::os::unix::process::CommandExt;
        let lim = rustix::process::Rlimit {
            current: Some(256 * 1024),
            maximum: Some(256 * 1024),
        };
        // SAFETY: runs in the forked child before exec and makes one setrlimit syscall on a
        // value built before the fork: no allocation, no locks.
        unsafe {
            cmd.pre_exec(move || {
                rustix::process::setrlimit(rustix::process::Resource::Memlock, lim)
                    .map_err(std::io::Error::from)
            });
        }
    }
    let out = cmd
        .args(["--io", "uring", "--proto", "http", "--root", root.dir()])
        .args([
            "--file-fixed-bufs",
            "64",
            "--cores",
            "0",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run ringlab-server");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started past RLIMIT_MEMLOCK: {err}");
    assert!(
        err.contains("--file-fixed-bufs 64") && err.contains("RLIMIT_MEMLOCK (soft limit 256 KiB"),
        "stderr {err:?}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line, got {err:?}");
    assert!(!err.contains("panicked"), "{err}");
}

/// The idle timeout still closes a connection that stopped asking (a file connection is not
/// kept open by its finished file).
#[test]
fn idle_timeout_after_a_file() {
    let root = Root::new();
    let mut srv = start(&root, &["--idle-timeout", "300ms"]);
    let mut c = HttpConn::new(srv.connect());
    assert_file(&c.request(&common::get("/files/odd.bin")), "odd.bin");
    c.expect_eof();
    srv.stop_and_wait(common::EXIT_TIMEOUT);
    let st = srv.stats();
    assert_eq!(json_u64(&st, "total.idle_timeouts"), 1, "{st:#}");
}
