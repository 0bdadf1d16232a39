//! Static files (`--root`) on every backend: bytes served exactly (whole files and ranges,
//! pipelined on one keep-alive connection), conditional requests, and every way out of the
//! root refused with its exact status. The epoll file-IO modes (`--file-io threads`,
//! `blocking`, `sendfile`) each run the same body.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{assert_bytes_eq, pattern, poll_until, HttpConn, Server, EXIT_TIMEOUT};

/// Files and their contents, beneath a fresh root.
struct Tree {
    root: PathBuf,
    files: Vec<(&'static str, Vec<u8>)>,
}

impl Tree {
    fn new() -> Tree {
        let root = common::temp_path("files");
        std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
        let files: Vec<(&'static str, Vec<u8>)> = vec![
            ("empty.txt", Vec::new()),
            ("one.bin", pattern(1, 1)),
            ("page.html", pattern(2, 4096)),
            ("sub/odd.bin", pattern(3, 1_234_567)),
            ("sub/deeper/five.bin", pattern(4, 5 * 1024 * 1024)),
            ("name with space.txt", pattern(5, 777)),
        ];
        for (name, data) in &files {
            std::fs::File::create(root.join(name))
                .unwrap()
                .write_all(data)
                .unwrap();
        }
        // Ways out: a symlink to a file outside, one to a directory outside, one up the tree.
        let outside = common::temp_path("outside");
        std::fs::write(&outside, b"secret").unwrap();
        std::os::unix::fs::symlink(&outside, root.join("out-file")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("out-dir")).unwrap();
        std::os::unix::fs::symlink("../..", root.join("sub/up")).unwrap();
        // A symlink inside the root is followed.
        std::os::unix::fs::symlink("page.html", root.join("alias.html")).unwrap();
        // A FIFO must neither block the loop nor be served.
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        Tree { root, files }
    }

    fn start(&self, io: &str, extra: &[&str]) -> Server {
        let root = self.root.to_str().unwrap();
        let mut args = vec!["--proto", "http", "--root", root, "--file-chunk", "16384"];
        if io == "blocking" {
            args.extend(["--workers", "8"]);
        }
        args.extend(extra);
        Server::start(io, &args)
    }
}

fn get(path: &str, extra: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n").into_bytes()
}

/// The URL path of a file in the tree.
fn url(name: &str) -> String {
    format!("/files/{}", name.replace(' ', "%20"))
}

/// Every file whole, then ranges of each, then HEAD and conditional requests, all pipelined on
/// one connection: statuses, headers and bytes exactly.
fn serves_files(srv: &Server, tree: &Tree) {
    let mut c = HttpConn::new(srv.connect());
    let mut batch = Vec::new();
    for (name, _) in &tree.files {
        batch.extend(get(&url(name), ""));
    }
    c.send(&batch);
    for (name, data) in &tree.files {
        let r = c.response();
        assert_eq!(r.status, 200, "{name}");
        assert_eq!(r.header("content-length"), Some(&*data.len().to_string()));
        assert!(r.header("last-modified").is_some(), "{name}");
        assert_bytes_eq(&r.body, data, name);
    }
    let page = &tree.files[2].1;
    assert_eq!(
        c.request(&get("/files/page.html", ""))
            .header("content-type"),
        Some("text/html; charset=utf-8")
    );
    // Ranges: first byte, middle, suffix, open end, past the end of a 5 MiB file.
    let five = &tree.files[4].1;
    let odd = &tree.files[3].1;
    let cases: [(&str, &str, &[u8], String); 5] = [
        (
            "sub/deeper/five.bin",
            "bytes=0-0",
            &five[..1],
            format!("bytes 0-0/{}", five.len()),
        ),
        (
            "sub/odd.bin",
            "bytes=1000-700000",
            &odd[1000..700_001],
            format!("bytes 1000-700000/{}", odd.len()),
        ),
        (
            "sub/odd.bin",
            "bytes=-5",
            &odd[odd.len() - 5..],
            format!("bytes {}-{}/{}", odd.len() - 5, odd.len() - 1, odd.len()),
        ),
        (
            "sub/deeper/five.bin",
            "bytes=3000000-",
            &five[3_000_000..],
            format!("bytes 3000000-{}/{}", five.len() - 1, five.len()),
        ),
        (
            "page.html",
            "bytes=4000-999999",
            &page[4000..],
            "bytes 4000-4095/4096".into(),
        ),
    ];
    let mut batch = Vec::new();
    for (name, range, ..) in &cases {
        batch.extend(get(&url(name), &format!("Range: {range}\r\n")));
    }
    c.send(&batch);
    for (name, range, want, content_range) in &cases {
        let r = c.response();
        assert_eq!(r.status, 206, "{name} {range}");
        assert_eq!(r.header("content-range"), Some(content_range.as_str()));
        assert_bytes_eq(&r.body, want, &format!("{name} {range}"));
    }
    let r = c.request(&get("/files/page.html", "Range: bytes=4096-\r\n"));
    assert_eq!(r.status, 416);
    assert_eq!(r.header("content-range"), Some("bytes */4096"));
    // HEAD: the length a GET would get, no body (the next response parses cleanly after it).
    c.send(b"HEAD /files/sub/odd.bin HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.head_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some(&*odd.len().to_string()));
    // Conditional: unchanged since its own Last-Modified → 304; since long ago → 200.
    let lm = c
        .request(&get("/files/one.bin", ""))
        .header("last-modified")
        .unwrap()
        .to_string();
    let r = c.request(&get(
        "/files/one.bin",
        &format!("If-Modified-Since: {lm}\r\n"),
    ));
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = c.request(&get(
        "/files/one.bin",
        "If-Modified-Since: Sun, 06 Nov 1994 08:49:37 GMT\r\n",
    ));
    assert_eq!(r.status, 200);
    // A symlink inside the root is followed.
    assert_bytes_eq(
        &c.request(&get("/files/alias.html", "")).body,
        page,
        "alias.html",
    );
    // And the connection is still good for the plain routes.
    assert_eq!(c.request(&get("/", "")).body, b"Hello, World!");
}

/// Every way out of the root, and everything that is not a regular file, with its status; the
/// connection stays open through all of them.
fn refuses_escapes(srv: &Server) {
    let mut c = HttpConn::new(srv.connect());
    for (path, status) in [
        ("/files/../Cargo.toml", 400),
        ("/files/sub/../../etc/passwd", 400),
        ("/files/%2e%2e/etc/passwd", 400),
        ("/files/%2E%2E%2fetc%2fpasswd", 400),
        ("/files/sub/%2e%2e/page.html", 400),
        ("/files//etc/passwd", 400),
        ("/files/a%00b", 400),
        ("/files/%zz", 400),
        ("/files/", 400),
        ("/files/out-file", 403),
        ("/files/out-dir/passwd", 403),
        ("/files/sub/up/etc/passwd", 403),
        ("/files/sub", 403),
        ("/files/fifo", 403),
        ("/files/missing.txt", 404),
        ("/files/page.html/x", 404),
    ] {
        let r = c.request(&get(path, ""));
        assert_eq!(
            r.status,
            status,
            "{path}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(!r.body.windows(6).any(|w| w == b"secret"), "{path}");
    }
    let r = c.request(b"POST /files/page.html HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD"));
    assert_eq!(c.request(&get("/", "")).status, 200, "still open");
}

/// Many connections fetching large files at once, one of them leaving in the middle: every
/// other body is exact, and the server's descriptors go back to where they were (but for the
/// one file each loop's cache of open files may have added).
fn concurrent_and_abandoned(srv: &Server, tree: &Tree) {
    let before = srv.open_fds() + loops(srv);
    let five = &tree.files[4].1;
    std::thread::scope(|s| {
        let mut hs = Vec::new();
        for i in 0..6 {
            let addr = srv.addr;
            hs.push(s.spawn(move || {
                let mut c = HttpConn::new(common::connect(addr));
                if i == 0 {
                    // Ask, read a little, and leave with the rest unread.
                    c.send(&get("/files/sub/deeper/five.bin", ""));
                    c.wait_first_byte();
                    return None;
                }
                let r = c.request(&get("/files/sub/deeper/five.bin", ""));
                Some(r.body)
            }));
        }
        for h in hs {
            if let Some(body) = h.join().unwrap() {
                assert_bytes_eq(&body, five, "five.bin, concurrently");
            }
        }
    });
    assert!(
        poll_until(Duration::from_secs(10), || srv.open_fds() <= before),
        "descriptors leaked: {} before, {} after",
        before,
        srv.open_fds()
    );
}

/// A file that shrinks while it is being sent ends the response short and closes the
/// connection (the framing cannot be kept); one that grows is sent as long as it was when the
/// response began, and the connection goes on. The bytes sent are always the file's.
///
/// With `zero_copy` (sendfile) the socket holds references to the page cache rather than
/// copies, so bytes handed to the kernel before the cut but not yet read by the peer may show
/// the cut (zeros): only the bytes that still exist are checked then.
fn changing_files(srv: &Server, tree: &Tree, zero_copy: bool) {
    let big = pattern(9, 24 * 1024 * 1024);
    let path = tree.root.join("changing.bin");
    std::fs::write(&path, &big).unwrap();
    let s = srv.connect();
    rustix::net::sockopt::set_socket_recv_buffer_size(&s, 64 * 1024).unwrap();
    let mut c = HttpConn::new(s);
    c.send(&get("/files/changing.bin", ""));
    c.send(&get("/", ""));
    c.wait_first_byte();
    // The server is now held back by the unread bytes; cut the file to 1 MiB under it.
    std::thread::sleep(Duration::from_millis(100));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(1024 * 1024)
        .unwrap();
    let mut raw = c.leftover().to_vec();
    let rest = common::read_to_eof(&mut c.stream, 64 * 1024 * 1024)
        .expect("an EOF, not a reset or a hang");
    raw.extend(rest);
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    assert!(
        head.contains(&format!("Content-Length: {}", big.len())),
        "{head}"
    );
    let body = &raw[head_end..];
    assert!(body.len() < big.len(), "a shorter body, then the close");
    let exact = if zero_copy {
        body.len().min(1024 * 1024)
    } else {
        body.len()
    };
    assert_bytes_eq(&body[..exact], &big[..exact], "the bytes that were sent");
    // Growing: the length at the start is what is sent; the next response follows cleanly.
    // (Another name: the cache of open files may still hold changing.bin as it was.)
    let _ = std::fs::remove_file(&path);
    let path = tree.root.join("growing.bin");
    std::fs::write(&path, &big[..100_000]).unwrap();
    let mut c = HttpConn::new(srv.connect());
    c.send(&get("/files/growing.bin", ""));
    c.wait_first_byte();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&big[100_000..300_000])
        .unwrap();
    let r = c.response();
    assert_eq!(r.body.len(), 100_000);
    assert_bytes_eq(&r.body, &big[..100_000], "grown file");
    assert_eq!(c.request(&get("/", "")).status, 200);
    let _ = std::fs::remove_file(&path);
}

fn run(io: &str, extra: &[&str]) {
    let tree = Tree::new();
    let mut srv = tree.start(io, extra);
    serves_files(&srv, &tree);
    refuses_escapes(&srv);
    concurrent_and_abandoned(&srv, &tree);
    changing_files(&srv, &tree, extra.contains(&"sendfile"));
    let stats_out = srv.stop_and_wait(EXIT_TIMEOUT);
    assert!(stats_out.contains("files opens="), "{stats_out}");
    cleanup(&tree.root);
}

/// The server's loops (its `cores=`).
fn loops(srv: &Server) -> usize {
    common::parse_cpu_list(&srv.cores).len().max(1)
}

fn cleanup(root: &Path) {
    let _ = std::fs::remove_dir_all(root);
}

backend_tests! {
    fn files_are_served_exactly_and_escapes_refused(io: &str) {
        run(io, &[]);
    }
}

#[test]
fn epoll_file_io_blocking() {
    run("epoll", &["--file-io", "blocking"]);
}

#[test]
fn epoll_file_io_sendfile() {
    run("epoll", &["--file-io", "sendfile"]);
}

#[test]
fn poll_file_io_sendfile() {
    run("poll", &["--file-io", "sendfile", "--file-threads", "1"]);
}

#[test]
fn epoll_level_triggered_sendfile() {
    run("epoll", &["--file-io", "sendfile", "--level-triggered"]);
}

#[test]
fn root_must_be_a_directory_and_http() {
    let tree = Tree::new();
    let root = tree.root.to_str().unwrap();
    let f = common::start_failure("epoll", &["--root", root]);
    assert!(f.stderr.contains("--proto http"), "{}", f.stderr);
    let file = tree.root.join("one.bin");
    let f = common::start_failure(
        "epoll",
        &["--proto", "http", "--root", file.to_str().unwrap()],
    );
    assert!(f.stderr.contains("not a directory"), "{}", f.stderr);
    let f = common::start_failure("epoll", &["--proto", "http", "--root", "/nonexistent/x"]);
    assert!(f.stderr.contains("/nonexistent/x"), "{}", f.stderr);
    let f = common::start_failure(
        "uring",
        &["--proto", "http", "--root", root, "--file-io", "threads"],
    );
    assert!(f.stderr.contains("--file-io"), "{}", f.stderr);
    cleanup(&tree.root);
}

#[test]
fn files_off_without_root() {
    let mut srv = Server::start("epoll", &["--proto", "http"]);
    let mut c = HttpConn::new(srv.connect());
    assert_eq!(c.request(&get("/files/x", "")).status, 404);
    srv.stop_and_wait(EXIT_TIMEOUT);
}

// The cache of open files (`--file-cache`, `--file-cache-valid`): uring and the readiness
// loops, in every file-IO mode. The tokio, tokio-uring and blocking backends have none.

/// One test per backend and file-IO mode that has the cache: `mod NAME { fn uring() .. }`.
macro_rules! cache_tests {
    ($($(#[$meta:meta])* fn $name:ident($io:ident : &str, $extra:ident : &[&str]) $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($io: &str, $extra: &[&str]) $body

            #[test]
            fn uring() {
                if common::skip_backend("uring") {
                    return;
                }
                body("uring", &[]);
            }
            #[test]
            fn epoll_threads() {
                body("epoll", &["--file-io", "threads"]);
            }
            #[test]
            fn epoll_blocking() {
                body("epoll", &["--file-io", "blocking"]);
            }
            #[test]
            fn epoll_sendfile() {
                body("epoll", &["--file-io", "sendfile"]);
            }
            #[test]
            fn poll_threads() {
                body("poll", &["--file-io", "threads", "--file-threads", "1"]);
            }
            #[test]
            fn select_sendfile() {
                body("select", &["--file-io", "sendfile"]);
            }
        }
    )*};
}

/// A fresh root with `files`: (name, contents).
fn cache_root(files: &[(String, Vec<u8>)]) -> PathBuf {
    let root = common::temp_path("file-cache");
    std::fs::create_dir_all(&root).unwrap();
    for (name, data) in files {
        std::fs::write(root.join(name), data).unwrap();
    }
    root
}

/// A server on `root` with `args`, `extra` (the mode) and `--stats-json`.
fn cache_server(io: &str, root: &Path, args: &[&str], extra: &[&str]) -> Server {
    let mut all = vec!["--proto", "http", "--root", root.to_str().unwrap()];
    all.extend(args);
    all.extend(extra);
    Server::start_with_stats(io, &all)
}

/// One loop, on the first CPU this test may use: the counts are then exact.
fn one_core() -> String {
    common::allowed_cpus()[0].to_string()
}

/// `GET url` `n` times, pipelined on one connection, then a range: every body exact, every
/// `Last-Modified` the same.
fn fetch_n(srv: &Server, url: &str, want: &[u8], n: usize) {
    let mut c = HttpConn::new(srv.connect());
    let mut batch = Vec::new();
    for _ in 0..n {
        batch.extend(get(url, ""));
    }
    c.send(&batch);
    let mut lm = None;
    for i in 0..n {
        let r = c.response();
        assert_eq!(r.status, 200, "request {i}");
        assert_bytes_eq(&r.body, want, &format!("{url}, request {i}"));
        let this = r.header("last-modified").map(str::to_string);
        assert!(lm.is_none() || lm == this, "Last-Modified changed");
        lm = this;
    }
    let r = c.request(&get(url, "Range: bytes=100-199\r\n"));
    assert_eq!(r.status, 206);
    assert_bytes_eq(&r.body, &want[100..200], "range");
}

cache_tests! {
    /// 20 requests of one file (and a range of it) on one loop: one open and 20 hits with the
    /// cache, identical bytes; 21 opens and no hit with `--file-cache 0`.
    fn hits_serve_the_same_bytes_without_opening(io: &str, extra: &[&str]) {
        let data = pattern(11, 200_000);
        let root = cache_root(&[("hot.bin".into(), data.clone())]);
        let core = one_core();
        for (cache, opens, hits) in [("256", 1, 20), ("0", 21, 0)] {
            let mut srv = cache_server(
                io,
                &root,
                &["--cores", &core, "--file-cache", cache, "--file-cache-valid", "1h"],
                extra,
            );
            fetch_n(&srv, "/files/hot.bin", &data, 20);
            let out = srv.stop_and_wait(EXIT_TIMEOUT);
            let st = srv.stats();
            let what = format!("--file-cache {cache}: {st:#}");
            assert_eq!(common::json_u64(&st, "total.file_opens"), opens, "{what}");
            assert_eq!(common::json_u64(&st, "total.file_cache_hits"), hits, "{what}");
            assert_eq!(common::json_u64(&st, "total.file_errors"), 0, "{what}");
            assert!(
                out.contains(&format!("files opens={opens} cache_hits={hits} ")),
                "{out}"
            );
        }
        cleanup(&root);
    }

    /// A file renamed over a cached one: within the validity either version is served whole
    /// (the cache may still hold the old one); after it, the new one.
    fn after_the_validity_a_replaced_file_is_served_new(io: &str, extra: &[&str]) {
        let (v1, v2) = (pattern(21, 50_000), pattern(22, 60_000));
        let root = cache_root(&[("a.bin".into(), v1.clone())]);
        let mut srv = cache_server(io, &root, &["--file-cache-valid", "300ms"], extra);
        fetch_n(&srv, "/files/a.bin", &v1, 3);
        let tmp = root.join("a.bin.new");
        std::fs::write(&tmp, &v2).unwrap();
        std::fs::rename(&tmp, root.join("a.bin")).unwrap();
        let mut c = HttpConn::new(srv.connect());
        let r = c.request(&get("/files/a.bin", ""));
        assert_eq!(r.status, 200);
        assert!(r.body == v1 || r.body == v2, "a whole version, not a mix");
        std::thread::sleep(Duration::from_millis(400));
        fetch_n(&srv, "/files/a.bin", &v2, 3);
        // Deleted: no longer served once the validity has passed.
        std::fs::remove_file(root.join("a.bin")).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(c.request(&get("/files/a.bin", "")).status, 404);
        drop(c);
        srv.stop_and_wait(EXIT_TIMEOUT);
        let st = srv.stats();
        assert!(common::json_u64(&st, "total.file_cache_hits") > 0, "{st:#}");
        cleanup(&root);
    }

    /// `--file-cache 2` and 10 files fetched by many connections at once, whole and by ranges,
    /// some leaving in the middle: entries are evicted under the readers' feet, every byte is
    /// exact, and once the clients are gone the descriptors are back to where they were, but
    /// for the two files each loop may keep.
    fn eviction_under_concurrent_readers_leaks_nothing(io: &str, extra: &[&str]) {
        let files: Vec<(String, Vec<u8>)> = (0..10u64)
            .map(|i| (format!("f{i}.bin"), pattern(30 + i, 1000 + i as usize * 37_000)))
            .collect();
        let root = cache_root(&files);
        let mut srv = cache_server(
            io,
            &root,
            &["--file-cache", "2", "--file-cache-valid", "1h", "--file-chunk", "16384"],
            extra,
        );
        let before = srv.open_fds();
        let files = &files;
        std::thread::scope(|s| {
            for t in 0..8usize {
                let addr = srv.addr;
                s.spawn(move || {
                    for j in 0..6usize {
                        let (name, data) = &files[(t * 7 + j * 3) % files.len()];
                        let url = format!("/files/{name}");
                        let mut c = HttpConn::new(common::connect(addr));
                        if (t + j) % 5 == 4 && data.len() > 200_000 {
                            // Ask, take the first bytes, and leave.
                            c.send(&get(&url, ""));
                            c.wait_first_byte();
                            continue;
                        }
                        let mut batch = get(&url, "");
                        batch.extend(get(&url, "Range: bytes=-500\r\n"));
                        batch.extend(get(&url, ""));
                        c.send(&batch);
                        let r = c.response();
                        assert_eq!(r.status, 200, "{name}");
                        assert_bytes_eq(&r.body, data, name);
                        let r = c.response();
                        assert_eq!(r.status, 206, "{name}");
                        assert_bytes_eq(&r.body, &data[data.len() - 500..], name);
                        assert_bytes_eq(&c.response().body, data, name);
                    }
                });
            }
        });
        let allowed = before + 2 * loops(&srv);
        assert!(
            poll_until(Duration::from_secs(10), || srv.open_fds() <= allowed),
            "descriptors leaked: {before} before (+2 cached per loop allowed), {} after",
            srv.open_fds()
        );
        srv.stop_and_wait(EXIT_TIMEOUT);
        let st = srv.stats();
        assert!(common::json_u64(&st, "total.file_opens") > 10, "evictions: {st:#}");
        assert!(common::json_u64(&st, "total.file_cache_hits") > 0, "{st:#}");
        cleanup(&root);
    }
}
