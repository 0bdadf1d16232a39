//! Timeouts and per-connection limits of the sans-IO session: header timeout (408), idle
//! timeout, the request limit and the connection-limit refusal (503), on a virtual clock.

mod common;

use std::time::Duration;

use common::*;
use ringlab_proto::{Action, Expired, Now, Proto, ServerConfig};

fn http_with(header_ms: u64, idle_ms: u64) -> Conn {
    Conn::new(ServerConfig {
        proto: Proto::Http,
        header_timeout: Duration::from_millis(header_ms),
        idle_timeout: Duration::from_millis(idle_ms),
        ..ServerConfig::default()
    })
}

impl Conn {
    /// Milliseconds from the start to the session's deadline.
    fn deadline_ms(&self) -> Option<u128> {
        self.s
            .deadline(&self.cfg)
            .map(|d| d.duration_since(self.start).as_millis())
    }

    /// Move the clock to `start + ms` and report the timeout to the session.
    fn timeout_at(&mut self, ms: u64) -> Option<Expired> {
        self.now = Now::with_fixed_date(self.start + Duration::from_millis(ms));
        self.s.on_timeout(&self.cfg, &self.now)
    }

    fn recv_at(&mut self, ms: u64, data: &[u8]) {
        self.now = Now::with_fixed_date(self.start + Duration::from_millis(ms));
        self.recv(data);
    }
}

const TIMEOUT_408: &str = "408 Request Timeout";
const TIMEOUT_MSG: &str = "the request head did not arrive in time";

#[test]
fn defaults_arm_no_timer() {
    let c = Conn::http();
    assert_eq!(c.deadline_ms(), None);
    let mut c = Conn::new(ServerConfig::default());
    c.recv(b"echo");
    c.drain();
    assert_eq!(c.deadline_ms(), None);
}

#[test]
fn partial_head_times_out_with_408_then_close() {
    let mut c = http_with(1000, 0);
    assert_eq!(
        c.deadline_ms(),
        Some(1000),
        "armed from the connection's start"
    );
    c.recv_at(100, b"GET / HT");
    assert_eq!(
        c.deadline_ms(),
        Some(1000),
        "bytes of the head do not extend it"
    );
    assert_eq!(c.timeout_at(999), None);
    assert!(c.drain().is_empty());
    assert_eq!(c.timeout_at(1000), Some(Expired::Header));
    assert_eq!(show(&c.drain()), error_response(TIMEOUT_408, TIMEOUT_MSG));
    assert_eq!(c.action(), Action::ShutdownWrite);
    // A late completion of the head is dropped.
    c.recv_at(1001, b"TP/1.1\r\nHost: a\r\n\r\n");
    assert!(c.drain().is_empty());
    assert_eq!(c.requests, 0);
}

#[test]
fn nothing_received_closes_without_a_response() {
    let mut c = http_with(1000, 0);
    assert_eq!(c.timeout_at(1000), Some(Expired::Header));
    assert!(c.drain().is_empty(), "no 408 to a client that never spoke");
    assert_eq!(c.action(), Action::ShutdownWrite);
}

#[test]
fn slowloris_trickle_is_cut_off_at_the_header_timeout() {
    let mut c = http_with(1000, 5000);
    let head = b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut t = 0;
    for &b in head.iter().take(3) {
        c.recv_at(t, &[b]);
        t += 300;
    }
    // t = 900: still waiting; the deadline has not moved.
    assert_eq!(c.deadline_ms(), Some(1000));
    assert_eq!(c.timeout_at(1000), Some(Expired::Header));
    assert_eq!(show(&c.drain()), error_response(TIMEOUT_408, TIMEOUT_MSG));
}

#[test]
fn header_clock_restarts_with_each_request() {
    let mut c = http_with(1000, 0);
    c.recv_at(500, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(c.requests, 1);
    c.drain();
    assert_eq!(
        c.deadline_ms(),
        None,
        "between requests only the idle timeout applies"
    );
    c.recv_at(1400, b"GET / ");
    assert_eq!(c.deadline_ms(), Some(2400));
    // A pipelined partial head behind a complete request: due from when it was parsed.
    c.recv_at(1500, b"HTTP/1.1\r\nHost: a\r\n\r\nGET /x");
    assert_eq!(c.requests, 2);
    assert_eq!(c.deadline_ms(), Some(2500));
}

#[test]
fn header_clock_stops_while_the_body_is_awaited() {
    let mut c = http_with(1000, 0);
    c.recv_at(
        10,
        b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nab",
    );
    assert_eq!(c.deadline_ms(), None, "the head is complete");
    c.recv_at(3000, b"cde");
    assert_eq!(c.requests, 1);
}

#[test]
fn header_clock_waits_while_the_session_holds_input_back() {
    let mut c = Conn::new(ServerConfig {
        proto: Proto::Http,
        header_timeout: Duration::from_millis(1000),
        out_high_water: 10,
        ..ServerConfig::default()
    });
    // The first response passes the high-water mark: the rest is not parsed until it is sent.
    c.recv_at(0, b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HT");
    assert_eq!(c.requests, 1);
    assert_eq!(
        c.deadline_ms(),
        None,
        "the server, not the peer, is holding things up"
    );
    // The peer reads at t = 5 s: the partial head's clock starts then.
    c.now = Now::with_fixed_date(c.start + Duration::from_millis(5000));
    c.drain();
    assert_eq!(c.deadline_ms(), Some(6000));
}

#[test]
fn idle_keep_alive_connection_closes_gracefully() {
    let mut c = http_with(0, 2000);
    c.recv_at(100, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    c.drain();
    assert_eq!(c.deadline_ms(), Some(2100));
    assert_eq!(c.timeout_at(2099), None);
    assert_eq!(c.timeout_at(2100), Some(Expired::Idle));
    assert!(c.drain().is_empty());
    assert_eq!(c.action(), Action::ShutdownWrite, "nothing owed: FIN");
}

#[test]
fn idle_with_unread_output_aborts() {
    let mut c = http_with(0, 2000);
    c.recv_at(0, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    // The backend took the response but the peer never reads it: no byte is reported sent.
    let taken = c.s.take_output().expect("a response");
    assert!(!taken.is_empty());
    assert_eq!(c.timeout_at(2000), Some(Expired::Idle));
    assert_eq!(
        c.action(),
        Action::Close,
        "output the peer does not take is dropped"
    );
}

#[test]
fn progress_in_either_direction_defers_the_idle_timeout() {
    let mut c = http_with(0, 2000);
    c.recv_at(0, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let taken = c.s.take_output().unwrap();
    c.now = Now::with_fixed_date(c.start + Duration::from_millis(1500));
    c.s.on_sent(&c.cfg, taken.len() / 2, &c.now);
    assert_eq!(c.deadline_ms(), Some(3500));
}

#[test]
fn delayed_output_is_not_idleness() {
    let mut c = http_with(0, 1000);
    c.recv_at(0, b"GET /delay/5000 HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        c.deadline_ms(),
        Some(5000),
        "the server holds the response, not the peer"
    );
    assert_eq!(c.timeout_at(5000), None);
    assert!(!c.drain().is_empty());
    assert_eq!(c.deadline_ms(), Some(6000));
}

#[test]
fn echo_idle_timeout() {
    let mut c = Conn::new(ServerConfig {
        proto: Proto::Echo,
        idle_timeout: Duration::from_millis(1000),
        header_timeout: Duration::from_millis(10),
        ..ServerConfig::default()
    });
    assert_eq!(c.deadline_ms(), Some(1000), "echo has no header timeout");
    c.recv_at(700, b"abc");
    assert_eq!(c.drain(), b"abc");
    assert_eq!(c.deadline_ms(), Some(1700));
    assert_eq!(c.timeout_at(1700), Some(Expired::Idle));
    assert_eq!(c.action(), Action::ShutdownWrite);
}

#[test]
fn max_requests_closes_after_the_last_one() {
    let mut c = Conn::new(ServerConfig {
        proto: Proto::Http,
        max_requests: 3,
        ..ServerConfig::default()
    });
    let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    c.recv(&get.repeat(5));
    let out = show(&c.drain());
    assert_eq!(c.requests, 3, "requests past the limit are not parsed");
    let responses: Vec<&str> = out.split("HTTP/1.1 ").skip(1).collect();
    assert_eq!(responses.len(), 3, "{out}");
    assert!(!responses[1].contains("Connection: close"), "{out}");
    assert!(responses[2].contains("Connection: close"), "{out}");
    assert_eq!(c.action(), Action::ShutdownWrite);
}

#[test]
fn refused_connection_gets_503_and_closes() {
    let mut c = Conn::http();
    c.s.refuse(&c.now);
    c.recv(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        show(&c.drain()),
        error_response(
            "503 Service Unavailable",
            "the server is at its connection limit"
        )
    );
    assert_eq!(c.requests, 0);
    assert_eq!(c.action(), Action::ShutdownWrite);
}
