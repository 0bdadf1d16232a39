//! HTTP: status codes counted, keep-alive, pipelining, `Connection: close`, malformed
//! responses; against scripted servers (exact responses) and the in-process ringlab-server.

mod common;

use std::time::Duration;

use common::{http_fixed, run_client, RinglabServer, ScriptedServer};

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nHello, World!";

io_tests! {
    fn keep_alive_and_pipelining(io: &str) {
        let srv = ScriptedServer::start(http_fixed(OK));
        let addr = srv.addr.to_string();
        let r = run_client(
            &[&addr, "--proto", "http", "--io", io, "--no-pin", "-c", "4", "-k", "8", "-n", "4000"],
            Duration::from_secs(20),
        );
        let s = r.summary();
        assert_eq!(r.exit_code, 0, "{s}");
        assert_eq!(r.requests, 4000, "{s}");
        assert_eq!(r.status.get("200"), Some(&4000), "{s}");
        assert_eq!(r.bytes, 4000 * OK.len() as u64);
        assert_eq!(r.errors_total, 0, "{s}");
        // Keep-alive: one connection each, never reopened.
        assert_eq!(srv.state.accepted.load(std::sync::atomic::Ordering::Relaxed), 4);
        assert!(s.contains("Status codes: 200: 4000"), "{s}");
    }

    fn status_codes_are_counted(io: &str) {
        let srv = ScriptedServer::start(http_fixed(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n"));
        let addr = srv.addr.to_string();
        let r = run_client(
            &[&addr, "--proto", "http", "--io", io, "--no-pin", "-c", "2", "-n", "300"],
            Duration::from_secs(20),
        );
        assert_eq!(r.status.get("503"), Some(&300));
        assert_eq!(r.non_2xx_3xx, 300);
        assert!(r.summary().contains("Non-2xx or 3xx responses: 300"));
        assert_eq!(r.exit_code, 0, "answered requests are not data errors");
    }

    fn connection_close_reconnects(io: &str) {
        let srv = ScriptedServer::start(http_fixed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
        ));
        let addr = srv.addr.to_string();
        let r = run_client(
            &[&addr, "--proto", "http", "--io", io, "--no-pin", "-c", "2", "-n", "50"],
            Duration::from_secs(20),
        );
        let s = r.summary();
        assert_eq!(r.requests, 50, "{s}");
        assert_eq!(r.errors_total, 0, "{s}");
        assert!(r.counters.reconnects >= 40, "{s}");
    }

    fn malformed_response_is_a_data_error(io: &str) {
        let srv = ScriptedServer::start(http_fixed(b"HTTP/1.1 2x0 Nope\r\n\r\n"));
        let addr = srv.addr.to_string();
        let r = run_client(
            &[&addr, "--proto", "http", "--io", io, "--no-pin", "-c", "1", "-d", "500ms"],
            Duration::from_secs(20),
        );
        assert!(r.errors.malformed_response >= 1, "{}", r.summary());
        assert_eq!(r.exit_code, 1);
    }

    fn against_ringlab_server(io: &str) {
        let srv = RinglabServer::start("http", &[]);
        let addr = srv.addr.to_string();
        let r = run_client(
            &[&addr, "--proto", "http", "--io", io, "--no-pin", "-c", "8", "-k", "4", "-d", "1s"],
            Duration::from_secs(20),
        );
        let s = r.summary();
        assert_eq!(r.exit_code, 0, "{s}");
        assert!(r.requests > 100, "{s}");
        assert_eq!(r.status.get("200"), Some(&r.requests), "{s}");
        assert_eq!(r.errors_total, 0, "{s}");
        // POST /echo with a body, and a 404.
        let r = run_client(
            &[&addr, "--proto", "http", "--io", io, "--no-pin", "-c", "2", "-n", "200",
              "--method", "POST", "--path", "/echo", "--body", "ping", "-H", "X-Test: 1"],
            Duration::from_secs(20),
        );
        assert_eq!(r.status.get("200"), Some(&200), "{}", r.summary());
        let r = run_client(
            &[&addr, "--proto", "http", "--io", io, "--no-pin", "-c", "2", "-n", "100", "--path", "/nope"],
            Duration::from_secs(20),
        );
        assert_eq!(r.status.get("404"), Some(&100), "{}", r.summary());
    }

    fn paths_file_cycles_through_targets(io: &str) {
        let srv = RinglabServer::start("http", &[]);
        let addr = srv.addr.to_string();
        let file = std::env::temp_dir().join(format!("ringlab-paths-{io}-{}.txt", std::process::id()));
        std::fs::write(&file, "/\n/nope\n").unwrap();
        let r = run_client(
            &[&addr, "--proto", "http", "--io", io, "--no-pin", "-c", "2", "-n", "200",
              "--paths", file.to_str().unwrap()],
            Duration::from_secs(20),
        );
        std::fs::remove_file(&file).unwrap();
        let s = r.summary();
        assert_eq!(r.requests, 200, "{s}");
        assert_eq!(r.errors_total, 0, "{s}");
        // Each connection alternates between the two targets.
        assert_eq!(r.status.get("200"), Some(&100), "{s}");
        assert_eq!(r.status.get("404"), Some(&100), "{s}");
    }
}
