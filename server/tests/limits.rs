//! Limits and timeouts, end to end on every backend: --max-conns (echo waits, HTTP 503),
//! --header-timeout (slowloris), --idle-timeout (HTTP keep-alive and echo), --max-requests,
//! --max-headers.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{get, json_u64, poll_until, read_to_eof, HttpConn, Server, EXIT_TIMEOUT};

const HELLO: &[u8] = b"Hello, World!";

/// Echo `msg` on `s` and check it.
#[track_caller]
fn echo(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).unwrap();
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).expect("echo");
    assert_eq!(got, msg);
}

/// Nothing arrives on `s` for `quiet` (and the connection is not closed).
#[track_caller]
fn assert_quiet(s: &mut TcpStream, quiet: Duration, what: &str) {
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        Ok(0) => panic!("{what}: closed"),
        Ok(n) => panic!("{what}: got {:?}", String::from_utf8_lossy(&b[..n])),
        Err(e) => panic!("{what}: {e}"),
    }
    s.set_read_timeout(Some(common::IO_TIMEOUT)).unwrap();
}

/// Read until EOF; returns what came and when the EOF did.
fn read_until_eof(s: &mut TcpStream) -> (Vec<u8>, Instant) {
    let got = read_to_eof(s, 1 << 20).expect("a clean EOF");
    (got, Instant::now())
}

backend_tests! {
    /// Echo at --max-conns: the next connection is not served (it waits in the backlog) until
    /// a connection closes; then it is, with its bytes intact.
    fn max_conns_echo_waits_for_a_slot(io: &str) {
        let mut srv = Server::start_with_stats(io, &["--max-conns", "2"]);
        let mut a = srv.connect();
        let mut b = srv.connect();
        echo(&mut a, b"first");
        echo(&mut b, b"second");
        let mut c = srv.connect(); // the kernel completes it; the server must not serve it
        c.write_all(b"third").unwrap();
        assert_quiet(&mut c, Duration::from_millis(500), "a connection beyond --max-conns");
        drop(a);
        let mut got = [0u8; 5];
        c.read_exact(&mut got).expect("served once a slot freed");
        assert_eq!(&got, b"third");
        echo(&mut b, b"still fine");
        drop((b, c));
        srv.stop_and_wait(EXIT_TIMEOUT);
        let st = srv.stats();
        assert_eq!(json_u64(&st, "total.accepted"), 3, "{st:#}");
        assert_eq!(json_u64(&st, "total.closed"), 3, "{st:#}");
        assert!(json_u64(&st, "total.limit_pauses") >= 1, "{st:#}");
        assert_eq!(json_u64(&st, "total.refused"), 0, "{st:#}");
    }

    /// HTTP at --max-conns: the next connection gets `503 Service Unavailable` with
    /// `Connection: close`, then EOF; once a slot frees, new connections are served again.
    fn max_conns_http_503(io: &str) {
        let mut srv = Server::start_with_stats(io, &["--proto", "http", "--max-conns", "2"]);
        let mut a = HttpConn::new(srv.connect());
        let mut b = HttpConn::new(srv.connect());
        assert_eq!(a.request(&get("/")).body, HELLO);
        assert_eq!(b.request(&get("/")).body, HELLO);
        let mut c = HttpConn::new(srv.connect());
        let mut req = get("/");
        req.extend(get("/")); // pipelined: neither is answered
        let r = c.request(&req);
        assert!(
            r.raw.starts_with(b"HTTP/1.1 503 Service Unavailable\r\n"),
            "{:?}",
            String::from_utf8_lossy(&r.raw)
        );
        assert!(r.connection_has("close"), "{:?}", r.headers);
        c.expect_eof();
        // The two served connections are unaffected.
        assert_eq!(a.request(&get("/")).body, HELLO);
        drop(a);
        // The freed slot is taken again (the close reaches the server asynchronously: retry).
        let served = poll_until(Duration::from_secs(10), || {
            let mut d = HttpConn::new(srv.connect());
            d.request(&get("/")).status == 200
        });
        assert!(served, "no connection was served after a slot freed");
        assert_eq!(b.request(&get("/")).body, HELLO);
        drop(b);
        srv.stop_and_wait(EXIT_TIMEOUT);
        let st = srv.stats();
        assert!(json_u64(&st, "total.refused") >= 1, "{st:#}");
        assert_eq!(json_u64(&st, "total.accepted"), json_u64(&st, "total.closed"), "{st:#}");
    }

    /// Slowloris: a client sending one header byte every 300 ms is answered 408 and closed
    /// once --header-timeout (1 s) has passed since it connected, while another connection
    /// keeps being served throughout; a client that sends nothing is closed without a response.
    fn header_timeout_slowloris(io: &str) {
        let mut srv = Server::start_with_stats(io, &["--proto", "http", "--header-timeout", "1s"]);
        let stop = Arc::new(AtomicBool::new(false));
        // A well-behaved keep-alive client, busy the whole time (bounded: at most 600 requests).
        let good = {
            let (addr, stop) = (srv.addr, stop.clone());
            std::thread::spawn(move || {
                let mut c = HttpConn::new(common::connect(addr));
                let mut n = 0;
                while !stop.load(Ordering::Acquire) && n < 600 {
                    let r = c.request(&get("/"));
                    assert_eq!(r.body, HELLO, "request {n} on the well-behaved connection");
                    n += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
                n
            })
        };
        let t0 = Instant::now(); // before connecting: no later than the server's accept
        let slow = srv.connect();
        let silent = srv.connect();
        let writer = {
            let mut w = slow.try_clone().unwrap();
            std::thread::spawn(move || {
                w.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
                // One byte every 300 ms, at most 40 (12 s), until the server closes.
                for _ in 0..40 {
                    std::thread::sleep(Duration::from_millis(300));
                    if w.write_all(b"a").is_err() {
                        break;
                    }
                }
            })
        };
        let mut slow = HttpConn::new(slow);
        let r = slow.response();
        let answered = t0.elapsed();
        assert!(
            r.raw.starts_with(b"HTTP/1.1 408 Request Timeout\r\n"),
            "{:?}",
            String::from_utf8_lossy(&r.raw)
        );
        assert!(r.connection_has("close"), "{:?}", r.headers);
        slow.expect_eof();
        assert!(answered >= Duration::from_secs(1), "408 after {answered:?}, before the 1 s timeout");
        // A no-hang bound far below the 60 s idle timeout: it was the header timeout.
        assert!(answered < Duration::from_secs(8), "408 only after {answered:?}");
        let mut silent = silent;
        let (got, at) = read_until_eof(&mut silent);
        assert!(got.is_empty(), "a silent client gets no response: {:?}", String::from_utf8_lossy(&got));
        assert!(at - t0 >= Duration::from_secs(1));
        stop.store(true, Ordering::Release);
        let served = good.join().expect("the well-behaved connection failed");
        assert!(served > 0);
        writer.join().unwrap();
        // And a fresh connection is served.
        assert_eq!(HttpConn::new(srv.connect()).request(&get("/")).body, HELLO);
        srv.stop_and_wait(EXIT_TIMEOUT);
        let st = srv.stats();
        assert!(json_u64(&st, "total.header_timeouts") >= 2, "{st:#}");
    }

    /// --idle-timeout: a keep-alive connection with nothing in flight is closed (cleanly) after
    /// the timeout; so is an echo connection with no bytes either way.
    fn idle_timeout_closes_idle_connections(io: &str) {
        let mut srv = Server::start_with_stats(io, &["--proto", "http", "--idle-timeout", "1s"]);
        let mut c = HttpConn::new(srv.connect());
        let t0 = Instant::now(); // before the request: no later than the server's last activity
        assert_eq!(c.request(&get("/")).body, HELLO);
        c.expect_eof();
        let closed = t0.elapsed();
        assert!(closed >= Duration::from_secs(1), "closed after {closed:?}");
        assert!(closed < Duration::from_secs(8), "closed only after {closed:?}");
        srv.stop_and_wait(EXIT_TIMEOUT);
        let st = srv.stats();
        assert_eq!(json_u64(&st, "total.idle_timeouts"), 1, "{st:#}");

        let mut srv = Server::start_with_stats(io, &["--idle-timeout", "1s"]);
        let mut s = srv.connect();
        let t0 = Instant::now();
        echo(&mut s, b"ping");
        let (got, at) = read_until_eof(&mut s);
        assert!(got.is_empty());
        assert!(at - t0 >= Duration::from_secs(1), "closed after {:?}", at - t0);
        srv.stop_and_wait(EXIT_TIMEOUT);
        let st = srv.stats();
        assert_eq!(json_u64(&st, "total.idle_timeouts"), 1, "{st:#}");
    }

    /// --max-requests 3: the third response carries `Connection: close`, then EOF; pipelined
    /// requests after it are not answered.
    fn max_requests_closes_the_connection(io: &str) {
        let mut srv = Server::start(io, &["--proto", "http", "--max-requests", "3"]);
        let mut c = HttpConn::new(srv.connect());
        c.send(&get("/").repeat(5));
        for i in 0..3 {
            let r = c.response();
            assert_eq!(r.body, HELLO, "response {i}");
            assert_eq!(r.connection_has("close"), i == 2, "response {i}: {:?}", r.headers);
        }
        c.expect_eof();
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// --max-headers: one header field too many is 431, the limit itself is fine; the default
    /// (64) refuses 100.
    fn max_headers_431(io: &str) {
        let req = |n: usize| {
            let mut r = String::from("GET / HTTP/1.1\r\nHost: x\r\n");
            for i in 1..n {
                r += &format!("X-H{i}: v\r\n");
            }
            r += "\r\n";
            r.into_bytes()
        };
        let mut srv = Server::start(io, &["--proto", "http", "--max-headers", "4"]);
        assert_eq!(HttpConn::new(srv.connect()).request(&req(4)).body, HELLO);
        let mut c = HttpConn::new(srv.connect());
        let r = c.request(&req(5));
        assert!(r.raw.starts_with(b"HTTP/1.1 431 "), "{:?}", String::from_utf8_lossy(&r.raw));
        c.expect_eof();
        srv.stop_and_wait(EXIT_TIMEOUT);
        let mut srv = Server::start(io, &["--proto", "http"]);
        let mut c = HttpConn::new(srv.connect());
        let r = c.request(&req(100));
        assert_eq!(r.status, 431, "{:?}", String::from_utf8_lossy(&r.raw));
        c.expect_eof();
        srv.stop_and_wait(EXIT_TIMEOUT);
    }
}

/// The limits are documented in --help, with their defaults.
#[test]
fn limits_are_documented_in_help() {
    let out = std::process::Command::new(common::BIN)
        .arg("--help")
        .output()
        .expect("ringlab-server --help");
    let help = String::from_utf8_lossy(&out.stdout);
    for (flag, default) in [
        ("--max-conns", "10000"),
        ("--header-timeout", "10s"),
        ("--idle-timeout", "60s"),
        ("--max-headers", "64"),
        ("--max-requests", "0"),
        ("--max-head", "8192"),
        ("--max-body", "1048576"),
    ] {
        let at = help
            .find(flag)
            .unwrap_or_else(|| panic!("{flag} not in --help:\n{help}"));
        let rest = &help[at..];
        let entry = &rest[..rest[2..].find("\n      --").map_or(rest.len(), |i| i + 2)];
        assert!(
            entry.contains(&format!("[default: {default}]")),
            "{flag}: default {default} not shown in {entry:?}"
        );
    }
    assert!(help.contains("503 Service Unavailable"), "{help}");
    assert!(help.contains("408 Request Timeout"), "{help}");
}

/// select(2) cannot watch a descriptor at or above FD_SETSIZE (1024): once the server's
/// descriptors reach it, a new connection is closed at once, stderr says why (once), and the
/// connections below the limit are still served. poll has no such limit.
#[test]
fn select_closes_connections_past_fd_setsize_and_says_why() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    // This process holds the client ends: room for them.
    let lim = getrlimit(Resource::Nofile);
    if lim.current.unwrap_or(u64::MAX) < 2400 {
        let hard = lim.maximum.unwrap_or(u64::MAX);
        assert!(
            hard >= 2400,
            "this test needs 2400 descriptors; the hard limit is {hard}"
        );
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: lim.maximum,
            },
        )
        .expect("raise RLIMIT_NOFILE");
    }
    for io in ["select", "poll"] {
        let srv = Server::start(io, &["--cores", "0", "--max-conns", "5000"]);
        let mut conns = Vec::new();
        let (mut served, mut closed) = (0, 0);
        for i in 0..1100u32 {
            let mut s = srv.connect();
            s.write_all(&i.to_le_bytes()).unwrap();
            let mut got = [0u8; 4];
            match s.read_exact(&mut got) {
                Ok(()) => {
                    assert_eq!(got, i.to_le_bytes());
                    served += 1;
                }
                Err(_) => closed += 1,
            }
            conns.push(s);
        }
        let said = "select cannot watch descriptor";
        if io == "select" {
            assert!(
                served > 900 && closed > 50,
                "{io}: served {served}, closed {closed}"
            );
            assert!(
                srv.wait_stderr(said, Duration::from_secs(5)),
                "{}",
                srv.stderr_now()
            );
            assert_eq!(srv.stderr_now().matches(said).count(), 1, "said once");
        } else {
            assert_eq!((served, closed), (1100, 0), "{io}");
            assert!(!srv.stderr_now().contains(said));
        }
        // The first connection is still served.
        echo(&mut conns[0], b"still here");
    }
}
