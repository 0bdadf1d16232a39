//! 10,000 connections from one client loop, each with one request outstanding at a time against
//! a server that holds every response for a while: every request must be answered. (At this
//! count the uring client once left thousands of responses unread until they timed out: an
//! `io_uring_enter` on a `DEFER_TASKRUN` ring runs only about twenty deferred receives, and the
//! loop waited for one completion per turn; see `Ring::submit_and_wait`.)

mod common;

use std::process::Command;
use std::sync::Mutex;

use common::RinglabServer;

const BIN: &str = env!("CARGO_BIN_EXE_ringlab-client");
const CONNS: u64 = 10_000;

/// One such run at a time: each needs 10,000 descriptors in this process (the server's side).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Raise this process's descriptor limit to what `need` requires, or say why it cannot.
fn room_for(need: u64) {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let lim = getrlimit(Resource::Nofile);
    let hard = lim.maximum.unwrap_or(u64::MAX);
    assert!(
        hard >= need,
        "this test needs {need} descriptors per process; the hard RLIMIT_NOFILE is {hard}"
    );
    if lim.current.unwrap_or(u64::MAX) < need {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(hard),
                maximum: lim.maximum,
            },
        )
        .expect("raise RLIMIT_NOFILE to its hard limit");
    }
}

io_tests! {
    fn ten_thousand_connections_are_all_answered(io: &str) {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        room_for(CONNS + 500);
        let srv = RinglabServer::start("echo", &["--delay", "500ms", "--max-conns", "12000"]);
        let dir = std::env::temp_dir()
            .join(format!("ringlab-client-scale-{}-{io}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let json = dir.join("out.json");
        let out = Command::new(BIN)
            .args([&srv.addr.to_string(), "--io", io, "--no-pin", "-c", &CONNS.to_string(),
                   "-d", "5s", "--warmup", "1s", "--timeout", "3s",
                   "--bind", "127.0.0.1-127.0.0.4", "--no-progress", "--json"])
            .arg(&json)
            .output()
            .expect("runs");
        let text = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
        let _ = std::fs::remove_dir_all(&dir);
        let c = &j["counters"];
        assert_eq!(c["connects"].as_u64(), Some(CONNS), "{text}");
        assert_eq!(j["errors"]["timeouts"].as_u64(), Some(0), "{text}");
        assert_eq!(j["errors_total"].as_u64(), Some(0), "{text}");
        // Every request sent was answered, and at 500 ms a request every connection made
        // several (the run is not idle connections timing out quietly).
        let sent = c["requests_sent"].as_u64().expect("requests_sent");
        assert_eq!(c["responses"].as_u64(), Some(sent), "{text}");
        assert!(sent >= 3 * CONNS, "{sent} requests from {CONNS} connections\n{text}");
        assert_eq!(out.status.code(), Some(0), "{text}");
    }
}
