//! HTTP conformance: keep-alive, pipelining, HTTP/1.0, errors and limits, delays, statistics,
//! for every backend. Responses are parsed strictly (status line, headers, Content-Length or
//! chunked framing) and every connection is checked for stray bytes.

mod common;

use std::time::{Duration, Instant};

use common::load::{push_until_blocked, small_buffer_conns};
use common::{get, json_u64, pattern, post, HttpConn, Server, EXIT_TIMEOUT};

const HELLO: &[u8] = b"Hello, World!";

fn http_server(io: &str) -> Server {
    Server::start(io, &["--proto", "http"])
}

#[track_caller]
fn assert_hello(r: &common::Response) {
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.raw));
    assert_eq!(r.body, HELLO, "{:?}", String::from_utf8_lossy(&r.raw));
}

backend_tests! {
    /// Several requests, one after another, on one HTTP/1.1 connection.
    fn keep_alive(io: &str) {
        let mut srv = http_server(io);
        let mut c = HttpConn::new(srv.connect());
        for i in 0..5 {
            let r = c.request(&get("/"));
            assert_hello(&r);
            assert_eq!(r.version, "HTTP/1.1", "request {i}");
            assert!(!r.connection_has("close"), "request {i}: {:?}", r.headers);
            assert!(r.header("date").is_some(), "request {i} has a Date: {:?}", r.headers);
        }
        c.expect_open_and_quiet(Duration::from_millis(200));
        let r = c.request(&get("/"));
        assert_hello(&r);
        // Shutdown closes an idle keep-alive connection: EOF, then the server exits 0.
        srv.stop();
        c.expect_eof();
        drop(c);
        let (status, _, stderr) = srv.wait_exit(EXIT_TIMEOUT);
        assert!(status.success(), "{status}: {stderr}");
    }

    /// Pipelined requests in one write: responses in order, each byte for byte the response the
    /// same request gets alone (the Date value aside), nothing more.
    fn pipelined_in_one_write(io: &str) {
        let mut srv = http_server(io);
        let body = pattern(11, 3000);
        let requests: Vec<Vec<u8>> = vec![
            get("/"),
            get("/missing"),
            post("/echo", &body),
            get("/delay/0"),
            get("/"),
        ];
        // Each alone, on its own connection, for reference.
        let mut alone = Vec::new();
        for req in &requests {
            let mut c = HttpConn::new(srv.connect());
            alone.push(c.request(req));
        }
        let mut c = HttpConn::new(srv.connect());
        c.send(&requests.concat());
        for (i, want) in alone.iter().enumerate() {
            let got = c.response();
            assert_eq!(
                String::from_utf8_lossy(&got.raw_without_date()),
                String::from_utf8_lossy(&want.raw_without_date()),
                "pipelined response {i}"
            );
        }
        assert_eq!(alone[0].status, 200);
        assert_eq!(alone[1].status, 404);
        assert_eq!(alone[2].body, body);
        c.expect_open_and_quiet(Duration::from_millis(200));
        drop(c);
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// Many small pipelined requests in one write, answered in order.
    fn pipelined_many(io: &str) {
        let mut srv = http_server(io);
        let mut c = HttpConn::new(srv.connect());
        let mut batch = Vec::new();
        for i in 0..200 {
            batch.extend(post("/echo", format!("request {i}").as_bytes()));
        }
        c.send(&batch);
        for i in 0..200 {
            let r = c.response();
            assert_eq!(r.status, 200);
            assert_eq!(String::from_utf8_lossy(&r.body), format!("request {i}"));
        }
        c.expect_open_and_quiet(Duration::from_millis(100));
        drop(c);
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// A request trickling in a few bytes at a time is parsed all the same.
    fn request_in_pieces(io: &str) {
        let mut srv = http_server(io);
        let mut c = HttpConn::new(srv.connect());
        let body = pattern(12, 300);
        let req = post("/echo", &body);
        for piece in req.chunks(7) {
            c.send(piece);
            // Give each piece its own segment (loopback delivers at once; no ordering relies
            // on this pause).
            std::thread::sleep(Duration::from_millis(1));
        }
        let r = c.response();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, body);
        drop(c);
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// HTTP/1.0 without keep-alive: one response, then the server closes.
    fn http10_closes(io: &str) {
        let mut srv = http_server(io);
        let mut c = HttpConn::new(srv.connect());
        let r = c.request(b"GET / HTTP/1.0\r\n\r\n");
        assert_hello(&r);
        assert!(!r.connection_has("keep-alive"), "{:?}", r.headers);
        c.expect_eof();
        drop(c);
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// HTTP/1.0 with `Connection: keep-alive` stays open, and says so.
    fn http10_keep_alive(io: &str) {
        let mut srv = http_server(io);
        let mut c = HttpConn::new(srv.connect());
        for _ in 0..3 {
            let r = c.request(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
            assert_hello(&r);
            assert!(
                r.connection_has("keep-alive"),
                "an HTTP/1.0 client only keeps the connection if told: {:?}",
                r.headers
            );
        }
        c.expect_open_and_quiet(Duration::from_millis(200));
        // And a final one without keep-alive closes it.
        let r = c.request(b"GET / HTTP/1.0\r\n\r\n");
        assert_hello(&r);
        c.expect_eof();
        drop(c);
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// HTTP/1.1 `Connection: close`: the response, then EOF.
    fn http11_connection_close(io: &str) {
        let mut srv = http_server(io);
        let mut c = HttpConn::new(srv.connect());
        let r = c.request(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_hello(&r);
        assert!(r.connection_has("close"), "{:?}", r.headers);
        c.expect_eof();
        drop(c);
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// Malformed requests get 400 and the connection is closed (cleanly: EOF, not a reset),
    /// even if more requests were pipelined behind them.
    fn malformed_400_then_close(io: &str) {
        let mut srv = http_server(io);
        let bad: &[&[u8]] = &[
            b"this is not http\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
            b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        ];
        for req in bad {
            let mut c = HttpConn::new(srv.connect());
            let mut bytes = req.to_vec();
            bytes.extend(get("/")); // never answered
            let r = c.request(&bytes);
            // HTTP/9.9 may also be refused as 505; everything else is 400.
            let ok = r.status == 400 || (req.starts_with(b"GET / HTTP/9") && r.status == 505);
            assert!(
                ok,
                "{:?} -> {:?}",
                String::from_utf8_lossy(req),
                String::from_utf8_lossy(&r.raw)
            );
            assert!(r.connection_has("close"), "{:?}", r.headers);
            c.expect_eof();
        }
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// Unknown path: 404, and the connection stays usable.
    fn not_found(io: &str) {
        let mut srv = http_server(io);
        let mut c = HttpConn::new(srv.connect());
        let r = c.request(&get("/no/such/path"));
        assert_eq!(r.status, 404, "{:?}", String::from_utf8_lossy(&r.raw));
        assert_hello(&c.request(&get("/")));
        drop(c);
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// POST /echo returns the body: empty, binary, Content-Length and chunked, up to the limit.
    fn post_echo(io: &str) {
        let mut srv = http_server(io);
        let mut c = HttpConn::new(srv.connect());
        for len in [0usize, 1, 1000, 100_000, 1 << 20] {
            let body = pattern(len as u64, len);
            let r = c.request(&post("/echo", &body));
            assert_eq!(r.status, 200, "POST /echo of {len} bytes");
            common::assert_bytes_eq(&r.body, &body, "POST /echo body");
        }
        // Chunked request body, decoded.
        let r = c.request(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              5\r\nHello\r\n8\r\n, World!\r\n0\r\n\r\n",
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.body, HELLO);
        drop(c);
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// A request head over 8 KiB: 431, then close.
    fn head_too_large_431(io: &str) {
        let mut srv = http_server(io);
        let mut c = HttpConn::new(srv.connect());
        let req = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(9 * 1024)
        );
        let r = c.request(req.as_bytes());
        assert_eq!(r.status, 431, "{:?}", String::from_utf8_lossy(&r.raw));
        c.expect_eof();
        // Just under the limit is fine.
        let mut c = HttpConn::new(srv.connect());
        let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(7 * 1024));
        assert_hello(&c.request(req.as_bytes()));
        drop(c);
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// A body over the 1 MiB limit: 413, then close, without waiting for the body.
    fn body_too_large_413(io: &str) {
        let mut srv = http_server(io);
        let mut c = HttpConn::new(srv.connect());
        let head = format!(
            "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            (1 << 20) + 1
        );
        let mut req = head.into_bytes();
        req.extend(pattern(1, 1000)); // the start of the body only
        let r = c.request(&req);
        assert_eq!(r.status, 413, "{:?}", String::from_utf8_lossy(&r.raw));
        c.expect_eof();
        drop(c);
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// `GET /delay/150` never answers earlier than 150 ms after the request was sent.
    fn delay_never_early(io: &str) {
        let mut srv = http_server(io);
        let mut c = HttpConn::new(srv.connect());
        for _ in 0..2 {
            let sent = Instant::now();
            c.send(&get("/delay/150"));
            let waited = c.wait_first_byte() - sent;
            assert!(waited >= Duration::from_millis(150), "answered after {waited:?}");
            let r = c.response();
            assert!(r.raw.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&r.raw));
            assert_eq!(r.body, HELLO);
        }
        drop(c);
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// Pipelined `GET /delay/150` then a request answered at once: the second response waits
    /// behind the first (order kept), so it too arrives no earlier than 150 ms.
    fn delay_holds_back_pipelined(io: &str) {
        let mut srv = http_server(io);
        for second in ["/", "/missing"] {
            let mut c = HttpConn::new(srv.connect());
            let mut req = get("/delay/150");
            req.extend(get(second));
            let sent = Instant::now();
            c.send(&req);
            let waited = c.wait_first_byte() - sent;
            assert!(
                waited >= Duration::from_millis(150),
                "with {second} pipelined: first byte after {waited:?}"
            );
            let r1 = c.response();
            assert!(r1.raw.starts_with(b"HTTP/1.1 200"), "{:?}", String::from_utf8_lossy(&r1.raw));
            assert_eq!(r1.body, HELLO, "the delayed response comes first");
            let r2 = c.response();
            if second == "/" {
                assert_hello(&r2);
            } else {
                assert_eq!(r2.status, 404, "the 404 comes second");
            }
        }
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// 50 clients pipeline `POST /echo` requests (16 KiB bodies, up to 8 MiB per client) and
    /// never read a response: the server stops reading them (backpressure), its memory stays
    /// within --out-high-water per connection plus slack, and a fresh connection is served.
    fn pipelining_clients_that_never_read_bounded_memory(io: &str) {
        const CONNS: usize = 50;
        const EACH: usize = 8 << 20;
        let mut srv = Server::start_with_stats(io, &["--proto", "http"]);
        let body = pattern(4, 16 * 1024);
        // Warm up so lazily allocated loop state is in the baseline.
        {
            let mut c = HttpConn::new(srv.connect());
            for _ in 0..10 {
                assert_eq!(c.request(&post("/echo", &body)).body, body);
            }
        }
        let rss_before = srv.rss_kib();
        let one = post("/echo", &body);
        let stream = one.repeat(EACH / one.len() + 1);
        let mut conns = small_buffer_conns(&srv, CONNS);
        let sent = push_until_blocked(&mut conns, EACH, |n| &stream[n..(n + 64 * 1024).min(EACH)]);
        let total: usize = sent.iter().sum();
        let rss_after = srv.rss_kib();
        let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
        eprintln!(
            "clients got {} MiB of pipelined requests into the kernel; server RSS {rss_before} -> \
             {rss_after} KiB",
            total >> 20
        );
        // The budget: per stuck connection the high-water mark (256 KiB), one response past it
        // and one read's worth of buffered input (64 KiB each, generously), the loop's fixed
        // read buffers (uring: a 16 MiB provided-buffer ring), and 32 MiB for the allocator and
        // everything else. Unbounded growth would be the hundreds of MiB sent.
        let fixed_mib = if io == "uring" { 16 } else { 1 };
        let budget_mib = (32 + fixed_mib + CONNS * (256 + 64 + 64) / 1024) as u64;
        assert!(
            total > CONNS * (2 << 20),
            "the clients sent only {} MiB: the test did not load the server",
            total >> 20
        );
        let mut fresh = HttpConn::new(srv.connect());
        assert_eq!(fresh.request(&post("/echo", &body)).body, body, "a fresh connection");
        drop(fresh);
        drop(conns);
        srv.stop_and_wait(EXIT_TIMEOUT);
        let st = srv.stats();
        assert!(
            growth_mib < budget_mib,
            "server RSS grew by {growth_mib} MiB (budget {budget_mib}) while {} MiB were sent",
            total >> 20
        );
        if io == "uring" {
            assert!(json_u64(&st, "total.backpressure_pauses") > 0, "{st:#}");
        }
    }

    /// After a known number of requests, the exit statistics count them, the connections, and
    /// the syscalls of the IO model (no recv syscall under io_uring; recv under epoll).
    fn stats_count_requests(io: &str) {
        let mut srv = Server::start_with_stats(io, &["--proto", "http"]);
        const CONNS: u64 = 4;
        const PER_CONN: u64 = 5;
        for _ in 0..CONNS {
            let mut c = HttpConn::new(srv.connect());
            for _ in 0..PER_CONN - 1 {
                assert_hello(&c.request(&get("/")));
            }
            let r = c.request(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            assert_hello(&r);
            c.expect_eof();
        }
        srv.stop_and_wait(EXIT_TIMEOUT);
        let st = srv.stats();
        assert_eq!(json_u64(&st, "total.requests"), CONNS * PER_CONN, "{st:#}");
        assert_eq!(json_u64(&st, "total.accepted"), CONNS, "{st:#}");
        assert_eq!(json_u64(&st, "total.closed"), CONNS, "{st:#}");
        assert_eq!(json_u64(&st, "total.conn_errors"), 0, "{st:#}");
        assert_eq!(st["proto"], "http", "{st:#}");
        assert_eq!(st["io"], io, "{st:#}");
        match io {
            "uring" => {
                assert!(json_u64(&st, "total.syscalls.io_uring_enter") > 0, "{st:#}");
                assert_eq!(json_u64(&st, "total.syscalls.recv"), 0, "completion model: {st:#}");
            }
            "epoll" => {
                assert!(json_u64(&st, "total.syscalls.recv") > 0, "{st:#}");
                assert_eq!(json_u64(&st, "total.syscalls.io_uring_enter"), 0, "{st:#}");
            }
            _ => {}
        }
    }
}
