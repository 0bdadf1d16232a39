//! Real HTTP clients work against `--proto http` unchanged: curl (keep-alive, HTTP/1.0, POST
//! with `Expect: 100-continue`), wrk and ab, on every backend. When a tool is missing the test
//! says how to install it and passes, unless `RINGLAB_REQUIRE_PEERS=1` (CI) makes it fail.

mod common;

use std::process::Command;

use common::{Server, EXIT_TIMEOUT};

/// Whether `tool` can run here; panics under `RINGLAB_REQUIRE_PEERS=1` if not.
fn have(tool: &str, package: &str) -> bool {
    let found = Command::new(tool).arg("--version").output().is_ok()
        || Command::new(tool).arg("-V").output().is_ok();
    if !found {
        if std::env::var("RINGLAB_REQUIRE_PEERS").as_deref() == Ok("1") {
            panic!("{tool} is required (RINGLAB_REQUIRE_PEERS=1): apt-get install {package}");
        }
        eprintln!("skipped: {tool} not installed (apt-get install {package})");
    }
    found
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

backend_tests! {
    /// curl: GET keep-alive over two URLs on one connection, HTTP/1.0, 404, and a 2 MiB POST
    /// (curl sends `Expect: 100-continue` for it) echoed back byte for byte.
    fn curl(io: &str) {
        if !have("curl", "curl") {
            return;
        }
        let mut srv = Server::start(io, &["--proto", "http", "--max-body", "4194304"]);
        let url = format!("http://{}/", srv.addr);
        let (ok, out, err) = run(Command::new("curl").args(["-sS", "--max-time", "10", &url, &url]));
        assert!(ok, "curl failed: {err}");
        assert_eq!(out, "Hello, World!Hello, World!");
        assert!(!err.contains("Closing connection"), "{err}");

        let (ok, out, err) = run(Command::new("curl").args(["-sS", "-i", "--http1.0", "--max-time", "10", &url]));
        assert!(ok, "curl --http1.0 failed: {err}");
        assert!(out.starts_with("HTTP/1.0 200 OK\r\n"), "{out}");
        assert!(out.to_ascii_lowercase().contains("connection: close"), "{out}");

        let (ok, out, err) = run(Command::new("curl").args([
            "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
            &format!("http://{}/nope", srv.addr),
        ]));
        assert!(ok, "{err}");
        assert_eq!(out, "404");

        let body = common::pattern(7, 2 << 20);
        let path = common::temp_path("body.bin");
        std::fs::write(&path, &body).unwrap();
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-H", "Content-Type: application/octet-stream", "--data-binary"])
            .arg(format!("@{}", path.display()))
            .arg(format!("http://{}/echo", srv.addr))
            .output()
            .unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout == body, "POST /echo: {} bytes back, want {}", out.stdout.len(), body.len());
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// wrk: one second of keep-alive load, no socket errors, no non-2xx answers.
    fn wrk(io: &str) {
        if !have("wrk", "wrk") {
            return;
        }
        let mut srv = Server::start(io, &["--proto", "http"]);
        let (ok, out, err) = run(Command::new("wrk").args(["-t1", "-c16", "-d1s", &format!("http://{}/", srv.addr)]));
        assert!(ok, "wrk failed: {out}{err}");
        assert!(out.contains("Requests/sec:"), "{out}");
        assert!(!out.contains("Socket errors"), "{out}");
        assert!(!out.contains("Non-2xx"), "{out}");
        let reqs: u64 = out
            .lines()
            .find(|l| l.contains(" requests in "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert!(reqs > 0, "{out}");
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// ab: 500 requests over 10 connections, HTTP/1.0 without and with keep-alive (-k).
    fn ab(io: &str) {
        if !have("ab", "apache2-utils") {
            return;
        }
        let mut srv = Server::start(io, &["--proto", "http"]);
        let url = format!("http://{}/", srv.addr);
        for keep_alive in [false, true] {
            let mut cmd = Command::new("ab");
            cmd.args(["-q", "-n", "500", "-c", "10", "-s", "10"]);
            if keep_alive {
                cmd.arg("-k");
            }
            let (ok, out, err) = run(cmd.arg(&url));
            assert!(ok, "ab (keep-alive {keep_alive}) failed: {out}{err}");
            let field = |name: &str| -> Option<u64> {
                out.lines()
                    .find(|l| l.starts_with(name))
                    .and_then(|l| l.split_whitespace().last())
                    .and_then(|v| v.parse().ok())
            };
            assert_eq!(field("Complete requests:"), Some(500), "{out}");
            assert_eq!(field("Failed requests:"), Some(0), "{out}");
            if keep_alive {
                assert_eq!(field("Keep-Alive requests:"), Some(500), "{out}");
            }
        }
        srv.stop_and_wait(EXIT_TIMEOUT);
    }
}
