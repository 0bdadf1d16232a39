//! Bad situations: each is counted or reported with a clear message, never a panic or a hang.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::{read_some, run_client, Scripted, ScriptedServer};

/// A port on 127.0.0.1 with nothing listening (bound, then released).
fn closed_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a.to_string()
}

io_tests! {
    fn connection_refused_is_reported_quickly(io: &str) {
        let addr = closed_port();
        // A 30 s run must give up long before its end.
        let r = run_client(&[&addr, "--io", io, "--no-pin", "-c", "4", "-d", "30s"], Duration::from_secs(10));
        let s = r.summary();
        assert!(r.errors.connect_refused >= 4, "{s}");
        assert_eq!(r.requests, 0);
        assert_eq!(r.exit_code, 1, "no request succeeded");
        assert!(r.messages.iter().any(|m| m.contains("refused")), "{:?}", r.messages);
        assert!(s.contains("no request succeeded"), "{s}");
        // Requests mode would otherwise never end.
        let r = run_client(&[&addr, "--io", io, "--no-pin", "-c", "2", "-n", "100"], Duration::from_secs(10));
        assert!(r.errors.connect_refused >= 2);
        assert_eq!(r.exit_code, 1);
    }

    fn server_closing_mid_response(io: &str) {
        // Read a request, answer half of it, close.
        let srv = ScriptedServer::start(Arc::new(|mut s: TcpStream, st: &Scripted| {
            let mut buf = [0u8; 4096];
            if let Some(n) = read_some(&mut s, &mut buf, st) {
                let _ = s.write_all(&buf[..n / 2]);
            }
        }));
        let addr = srv.addr.to_string();
        let r = run_client(
            &[&addr, "--io", io, "--no-pin", "-c", "2", "--size", "100", "-d", "1s"],
            Duration::from_secs(15),
        );
        let s = r.summary();
        assert!(r.errors.closed_mid_response >= 2, "{s}");
        assert!(r.errors.requests_lost >= 2, "{s}");
        assert_eq!(r.data_errors, 0, "a close is not a data error: {s}");
        assert_eq!(r.exit_code, 1, "no request succeeded");
        // Connections were reopened (with a back-off, not in a spin).
        let accepted = srv.state.accepted.load(Ordering::Relaxed);
        assert!((3..200).contains(&accepted), "accepted {accepted}");
    }

    fn reset_is_counted(io: &str) {
        // Answer the first request, then reset the connection (SO_LINGER 0) on the second.
        let srv = ScriptedServer::start(Arc::new(|mut s: TcpStream, st: &Scripted| {
            let mut buf = [0u8; 4096];
            if let Some(n) = read_some(&mut s, &mut buf, st) {
                let _ = s.write_all(&buf[..n]);
            }
            if read_some(&mut s, &mut buf, st).is_some() {
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
            }
        }));
        let addr = srv.addr.to_string();
        let r = run_client(
            &[&addr, "--io", io, "--no-pin", "-c", "2", "--size", "64", "-d", "1s"],
            Duration::from_secs(15),
        );
        let s = r.summary();
        assert!(r.errors.reset >= 1, "{s}");
        assert!(r.requests >= 2, "the first answers count: {s}");
        assert_eq!(r.data_errors, 0, "{s}");
        assert_eq!(r.exit_code, 0, "{s}");
    }

    fn silent_server_times_out(io: &str) {
        // Read and never answer.
        let srv = ScriptedServer::start(Arc::new(|mut s: TcpStream, st: &Scripted| {
            let mut buf = [0u8; 4096];
            while let Some(n) = read_some(&mut s, &mut buf, st) {
                if n == 0 {
                    return;
                }
            }
        }));
        let addr = srv.addr.to_string();
        let r = run_client(
            &[&addr, "--io", io, "--no-pin", "-c", "3", "-k", "2", "--timeout", "200ms", "-d", "1s"],
            Duration::from_secs(10),
        );
        let s = r.summary();
        // Every request sent timed out, and each is counted.
        assert!(r.errors.timeouts >= 6, "{s}");
        assert_eq!(r.errors.timeouts, r.counters.requests_sent, "{s}");
        assert!(s.contains("timeouts"), "{s}");
        assert_eq!(r.requests, 0);
        assert_eq!(r.exit_code, 1);
    }

    fn bind_range_spreads_source_addresses(io: &str) {
        let srv = ScriptedServer::start(common::echo_with(|_, _| {}));
        let addr = srv.addr.to_string();
        let r = run_client(
            &[&addr, "--io", io, "--no-pin", "-c", "8", "--bind", "127.0.0.1-127.0.0.4", "-n", "200"],
            Duration::from_secs(15),
        );
        assert_eq!(r.exit_code, 0, "{}", r.summary());
        let peers = srv.state.peers.lock().expect("peers").clone();
        let mut ips: Vec<_> = peers.iter().map(|p| p.ip()).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), 4, "{peers:?}");
    }

    fn connect_rate_ramps(io: &str) {
        let srv = ScriptedServer::start(common::echo_with(|_, _| {}));
        let addr = srv.addr.to_string();
        // 10 connections at 50/s: the last opens at least 9 × 20 ms after the first.
        let r = run_client(
            &[&addr, "--io", io, "--no-pin", "-c", "10", "--connect-rate", "50", "-d", "600ms"],
            Duration::from_secs(15),
        );
        assert_eq!(r.exit_code, 0, "{}", r.summary());
        assert_eq!(r.counters.connects, 10);
        let times = srv.state.accept_times.lock().expect("times").clone();
        assert_eq!(times.len(), 10);
        let spread = times[9].duration_since(times[0]);
        assert!(spread >= Duration::from_millis(170), "connects spread over {spread:?} only");
    }

    fn foreign_bind_address_is_explained(io: &str) {
        let addr = closed_port();
        // 192.0.2.1 (TEST-NET-1) is no address of this host: bind fails locally, nothing is sent.
        let r = run_client(
            &[&addr, "--io", io, "--no-pin", "-c", "1", "--bind", "192.0.2.1", "-d", "5s"],
            Duration::from_secs(10),
        );
        assert!(r.errors.connect_other >= 1, "{}", r.summary());
        assert!(r.messages.iter().any(|m| m.contains("--bind 192.0.2.1")), "{:?}", r.messages);
        assert_eq!(r.exit_code, 1);
    }
}
