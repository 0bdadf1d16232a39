//! `--metrics ADDR`: the Prometheus text exposition, scraped and parsed by a real Prometheus
//! format parser, agrees with the exit statistics, on every backend.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::{json_u64, poll_until, Server, EXIT_TIMEOUT};
use prometheus_parse::{Sample, Scrape, Value};

/// The metrics address from the ready line (`metrics=http://ADDR/metrics`).
fn metrics_addr(srv: &Server) -> SocketAddr {
    srv.ready
        .split_whitespace()
        .find_map(|w| w.strip_prefix("metrics=http://"))
        .and_then(|w| w.strip_suffix("/metrics"))
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no metrics= in the ready line {:?}", srv.ready))
}

/// `METHOD PATH` against the metrics listener: (status line, body).
fn get(addr: SocketAddr, method: &str, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to --metrics");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    (
        head.lines().next().unwrap_or("").to_string(),
        body.to_string(),
    )
}

/// Scrape and parse `/metrics`.
fn scrape(addr: SocketAddr) -> Scrape {
    let (status, body) = get(addr, "GET", "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("the exposition parses")
}

/// The value of the sample `name` whose labels are exactly `labels`.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = s
        .samples
        .iter()
        .filter(|x| {
            x.metric == name
                && x.labels.len() == labels.len()
                && labels.iter().all(|(k, v)| x.labels.get(k) == Some(v))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {} samples", found.len());
    match &found[0].value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
        other => panic!("{name}: not a number: {other:?}"),
    }
}

/// Per-core values of `name` (by core label).
fn per_core(s: &Scrape, name: &str) -> HashMap<String, f64> {
    s.samples
        .iter()
        .filter(|x| x.metric == name)
        .filter_map(|x| {
            let core = x.labels.get("core")?.to_string();
            match x.value {
                Value::Counter(v) | Value::Gauge(v) => Some((core, v)),
                _ => None,
            }
        })
        .collect()
}

backend_tests! {
    fn metrics_agree_with_the_exit_statistics(io: &str) {
        let mut args = vec!["--cores", "0,1", "--metrics", "127.0.0.1:0"];
        if io == "blocking" {
            args.extend(["--workers", "40"]);
        }
        let mut srv = Server::start_with_stats(io, &args);
        let m = metrics_addr(&srv);
        let before = scrape(m);
        assert_eq!(value(&before, "ringlab_server_requests_total", &[]), 0.0);
        let info = before
            .samples
            .iter()
            .find(|x| x.metric == "ringlab_info")
            .expect("ringlab_info");
        assert_eq!(info.labels.get("io"), Some(io));
        assert_eq!(info.labels.get("proto"), Some("echo"));

        // 32 connections, 1 B to 256 KiB each, every byte echoed; then they close.
        let msgs: Vec<Vec<u8>> = (0..32)
            .map(|i| common::pattern(i as u64, 1 + (i * 8191) % (256 << 10)))
            .collect();
        let sent: u64 = msgs.iter().map(|v| v.len() as u64).sum();
        common::load::echo_many(srv.addr, msgs);
        // Once every connection is closed the loops have published their last turn.
        let mut last = None;
        assert!(
            poll_until(Duration::from_secs(10), || {
                let s = scrape(m);
                let done = value(&s, "ringlab_server_connections_closed_total", &[]) == 32.0
                    && value(&s, "ringlab_server_sent_bytes_total", &[]) == sent as f64;
                last = Some(s);
                done
            }),
            "the metrics never showed 32 closed connections and {sent} bytes sent"
        );
        let s = last.unwrap();
        assert_eq!(value(&s, "ringlab_server_connections_open", &[]), 0.0);
        assert_eq!(value(&s, "ringlab_server_received_bytes_total", &[]), sent as f64);
        // Per core adds up to the server's figure.
        for fam in ["requests_total", "sent_bytes_total", "connections_accepted_total"] {
            let cores = per_core(&s, &format!("ringlab_core_{fam}"));
            assert!(!cores.is_empty(), "no per-core {fam}");
            let sum: f64 = cores.values().sum();
            assert_eq!(sum, value(&s, &format!("ringlab_server_{fam}"), &[]), "{fam}");
        }
        let requests = value(&s, "ringlab_server_requests_total", &[]);
        assert!(requests >= 32.0, "{requests}");
        let hist = s
            .samples
            .iter()
            .find(|x| x.metric == "ringlab_server_service_seconds" && x.labels.get("le").is_none())
            .and_then(|x| match &x.value {
                Value::Histogram(h) => Some(h.clone()),
                _ => None,
            })
            .expect("the service-time histogram");
        assert!(hist.windows(2).all(|w| w[0].count <= w[1].count), "{hist:?}");
        let count = value(&s, "ringlab_server_service_seconds_count", &[]);
        assert_eq!(hist.last().map(|h| h.count), Some(count));
        if matches!(io, "uring" | "epoll" | "poll" | "select") {
            // Every request is counted at the turn that served it.
            assert_eq!(count, requests);
            assert!(value(&s, "ringlab_server_service_seconds_sum", &[]) > 0.0);
        } else {
            assert_eq!(count, 0.0, "{io} has no loop turns to time");
        }

        srv.stop_and_wait(EXIT_TIMEOUT);
        let st = srv.stats();
        for (key, fam) in [
            ("total.requests", "requests_total"),
            ("total.bytes_in", "received_bytes_total"),
            ("total.bytes_out", "sent_bytes_total"),
            ("total.accepted", "connections_accepted_total"),
            ("total.closed", "connections_closed_total"),
            ("total.conn_errors", "connection_errors_total"),
            ("total.enobufs", "enobufs_total"),
            ("total.cq_overflows", "cq_overflows_total"),
        ] {
            assert_eq!(
                json_u64(&st, key) as f64,
                value(&s, &format!("ringlab_server_{fam}"), &[]),
                "{key} at exit against ringlab_server_{fam} scraped after the load"
            );
        }
        // The syscalls after the last scrape are the shutdown's (waits, closes): the scraped
        // counts are at most the exit's.
        for kind in ["recv", "send", "accept", "epoll_wait", "io_uring_enter"] {
            let scraped = value(&s, "ringlab_server_syscalls_total", &[("kind", kind)]);
            let exit = json_u64(&st, &format!("total.syscalls.{kind}")) as f64;
            assert!(scraped <= exit, "{kind}: scraped {scraped} > {exit} at exit");
            if matches!(kind, "recv" | "send") {
                assert_eq!(scraped, exit, "{kind}");
            }
        }
    }
}

#[test]
fn the_metrics_listener_answers_only_get_metrics() {
    let mut srv = Server::start("epoll", &["--metrics", "127.0.0.1:0"]);
    let m = metrics_addr(&srv);
    assert_eq!(get(m, "GET", "/nope").0, "HTTP/1.1 404 Not Found");
    assert_eq!(
        get(m, "POST", "/metrics").0,
        "HTTP/1.1 405 Method Not Allowed"
    );
    let (status, body) = get(m, "HEAD", "/metrics");
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", ""));
    // A scraper that connects and says nothing holds the listener for 2 s at most.
    let _idle = TcpStream::connect(m).unwrap();
    let (status, _) = get(m, "GET", "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    srv.stop_and_wait(EXIT_TIMEOUT);
}

#[test]
fn metrics_refuses_processes_and_a_busy_address() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = busy.local_addr().unwrap().to_string();
    for (args, says) in [
        (
            vec!["--metrics", "127.0.0.1:0", "--processes", "2"],
            "--metrics serves one process's loops".to_string(),
        ),
        (vec!["--metrics", &busy], format!("--metrics {busy}: ")),
    ] {
        let f = common::start_failure("epoll", &args);
        assert!(!f.status.success(), "{args:?}");
        assert!(f.stderr.contains(&says), "{args:?}: {}", f.stderr);
        assert_eq!(f.stderr.trim().lines().count(), 1, "{}", f.stderr);
    }
}

#[test]
fn sighup_changes_nothing_and_says_so() {
    let mut srv = Server::start("epoll", &[]);
    srv.signal(rustix::process::Signal::HUP);
    assert!(
        srv.wait_stderr("SIGHUP: nothing to re-read", Duration::from_secs(5)),
        "{}",
        srv.stderr_now()
    );
    // Still serving.
    let mut c = srv.connect();
    c.write_all(b"ping").unwrap();
    let mut b = [0u8; 4];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ping");
    drop(c);
    assert!(srv.running());
    srv.stop_and_wait(EXIT_TIMEOUT);
}

#[test]
fn json_logs_are_one_object_a_line() {
    let mut srv = Server::start("epoll", &["--log-format", "json"]);
    srv.stop();
    assert!(srv.wait_stderr("draining", Duration::from_secs(5)));
    // One SIGTERM only: a second one means "exit at once" (status 143), which raced the drain.
    let (status, _, err) = srv.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "{status}\n{err}");
    for line in err.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(v["level"].is_string() && v["message"].is_string(), "{line}");
        assert!(v["timestamp"].is_string(), "{line}");
    }
    assert!(err.contains("signal 15: draining"), "{err}");
}
