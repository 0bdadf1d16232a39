//! `--processes K`: shares add up, and results merge exactly (histograms added, percentiles
//! from the merged histogram, never averaged).

mod common;

use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use clap::Parser;
use common::{echo_with, RinglabServer, ScriptedServer};
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use ringlab_client::report::{build_from, Partial};
use ringlab_client::stats::record;

const BIN: &str = env!("CARGO_BIN_EXE_ringlab-client");

fn cfg() -> ringlab_client::RunConfig {
    ringlab_client::Args::parse_from(["ringlab-client", "127.0.0.1:1", "-d", "1s"])
        .resolve()
        .expect("resolves")
}

/// Two processes' results where averaging percentiles would be badly wrong: one saw 1000
/// responses at 100 µs, the other 10 at 10 ms. Merged, the median is 100 µs (the average of
/// the two medians would be about 5 ms) and p99.9 is 10 ms. The histograms survive the JSON
/// the workers write. The merged report must equal the report of one process that saw all
/// 1010 samples, corrected and raw.
#[test]
fn merge_adds_histograms_not_percentiles() {
    let samples = |n: usize, us: u64| {
        let mut p = Partial::new();
        for _ in 0..n {
            record(&mut p.corrected, us);
            record(&mut p.raw, us);
        }
        p.counters.measured = n as u64;
        p.elapsed = Duration::from_secs(1);
        p
    };
    let a = samples(1000, 100);
    let b = samples(10, 10_000);
    // Through the workers' file format.
    let b: Partial = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
    assert_eq!(b.corrected.len(), 10);
    // One process that saw every sample: what the merge must reproduce exactly.
    let mut one = samples(1000, 100);
    for _ in 0..10 {
        record(&mut one.corrected, 10_000);
        record(&mut one.raw, 10_000);
    }
    one.counters.measured = 1010;
    let one = build_from(&cfg(), one);

    let mut merged = a.clone();
    merged.merge(&b);
    let r = build_from(&cfg(), merged);
    assert_eq!(r.requests, 1010);
    let p50 = r.latency_us.percentiles["50"];
    let p999 = r.latency_us.percentiles["99.9"];
    assert!((100..=101).contains(&p50), "merged median {p50}");
    assert!((10_000..=10_010).contains(&p999), "merged p99.9 {p999}");
    for (what, got, want) in [
        ("corrected", &r.latency_us, &one.latency_us),
        ("raw", &r.raw_latency_us, &one.raw_latency_us),
    ] {
        assert_eq!(got.count, 1010, "{what}");
        assert_eq!(got.percentiles, want.percentiles, "{what} percentiles");
        assert_eq!((got.min, got.max), (want.min, want.max), "{what} min, max");
        assert_eq!(got.mean, want.mean, "{what} mean");
    }
}

/// The interval-histogram counts of an interval log (untagged only).
fn log_count(path: &std::path::Path) -> u64 {
    let text = std::fs::read(path).expect("hist log written");
    let mut d = Deserializer::new();
    let mut n = 0;
    for e in IntervalLogIterator::new(&text) {
        if let LogEntry::Interval(ilh) = e.expect("log parses") {
            if ilh.tag().is_none() {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(ilh.encoded_histogram())
                    .expect("base64");
                let h: Histogram<u64> = d
                    .deserialize(&mut std::io::Cursor::new(bytes))
                    .expect("histogram");
                n += h.len();
            }
        }
    }
    n
}

io_tests! {
    /// `--processes 2` against a server: two processes ran (distinct PIDs, neither this test),
    /// each did some of the work, the merged request count is the sum of theirs and equals
    /// --requests, the merged histogram holds every sample, and so does the merged log.
    fn two_processes_merge(io: &str) {
        let srv = RinglabServer::start("echo", &[]);
        let dir = std::env::temp_dir()
            .join(format!("ringlab-client-procs-{}-{io}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let json = dir.join("out.json");
        let log = dir.join("out.hlog");
        let out = Command::new(BIN)
            .args([&srv.addr.to_string(), "--io", io, "--no-pin", "--processes", "2",
                   "-c", "4", "-n", "2001", "--timeout", "10s", "--json"])
            .arg(&json)
            .arg("--hist-log")
            .arg(&log)
            .output()
            .expect("runs");
        let summary = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(out.status.code(), Some(0), "{summary}\n{}", String::from_utf8_lossy(&out.stderr));
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("json");
        let requests = j["requests"].as_u64().expect("requests");
        assert_eq!(requests, 2001, "shares of --requests add up");
        assert_eq!(j["conns"].as_u64(), Some(4));
        assert_eq!(j["latency_us"]["count"].as_u64(), Some(requests));
        let procs = j["processes"].as_array().expect("processes[]");
        assert_eq!(procs.len(), 2);
        let mut sum = 0;
        for p in procs {
            let n = p["requests"].as_u64().expect("requests");
            assert!(n > 0, "{p:#}");
            assert_eq!(p["exit_code"].as_u64(), Some(0));
            assert_eq!(p["conns"].as_u64(), Some(2));
            sum += n;
        }
        assert_eq!(sum, requests, "merged count is the sum of the processes'");
        assert_ne!(procs[0]["pid"], procs[1]["pid"]);
        assert_ne!(procs[1]["pid"].as_u64(), Some(u64::from(std::process::id())));
        assert!(summary.contains("Process 1 (pid"), "{summary}");
        assert_eq!(log_count(&log), requests, "the merged log holds every sample");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Shares that cannot work are refused up front, in one line, with exit code 2.
#[test]
fn bad_shares_are_refused() {
    let out = Command::new(BIN)
        .args(["127.0.0.1:9", "--processes", "3", "-c", "2", "-d", "1s"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--conns"), "{err}");
}

/// The PIDs of `parent`'s live children started as `--processes` workers (`--worker-of`).
fn workers_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|d| {
        let pid: u32 = d.ok()?.file_name().to_str()?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
        };
        let alive = !field("State:")?.starts_with(['Z', 'X']);
        let child = field("PPid:")?.parse::<u32>().ok()? == parent;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let worker = cmdline.split(|&b| b == 0).any(|a| a == b"--worker-of");
        (alive && child && worker).then_some(pid)
    })
    .collect()
}

/// A worker killed by a signal mid-run: the first process names it, stops the run early,
/// and exits with the worst code of the group, the shell's 128 + N for a signal (137 for
/// SIGKILL; the client once counted any signal as 1).
#[test]
fn killed_worker_sets_the_exit_code() {
    let srv = ScriptedServer::start(echo_with(|_, _| {}));
    let mut client = Command::new(BIN)
        .args([
            &srv.addr.to_string(),
            "--io",
            "epoll",
            "--no-pin",
            "--processes",
            "2",
            "-c",
            "2",
            "-d",
            "60s",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("client starts");
    // Both processes have connected (so the worker was released and runs its share).
    let deadline = Instant::now() + Duration::from_secs(30);
    while srv.state.accepted.load(Ordering::Relaxed) < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let workers = workers_of(client.id());
    if srv.state.accepted.load(Ordering::Relaxed) < 2 || workers.len() != 1 {
        let _ = client.kill();
        let out = client.wait_with_output().expect("client output");
        panic!(
            "the group did not start: workers {workers:?}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let victim = workers[0];
    let pid = rustix::process::Pid::from_raw(victim as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill worker");
    let out = client.wait_with_output().expect("client output");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "process 1 (pid {victim}) failed (killed by signal 9)"
        )),
        "the message names the worker: {stderr}"
    );
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(summary.contains("Process 1 (pid"), "{summary}");
}

/// `--start-at UNIX_MS`: every process of the group waits for that instant, so nothing is
/// measured before it (the interval log's start is at or after it, plus the warm-up), and a
/// start long past is refused in one line with exit code 2.
#[test]
fn start_at_waits_for_the_instant() {
    let srv = RinglabServer::start("echo", &[]);
    let dir = std::env::temp_dir().join(format!("ringlab-client-start-at-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("out.hlog");
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let at = now_ms() + 1500;
    let t0 = Instant::now();
    let out = Command::new(BIN)
        .args([
            &srv.addr.to_string(),
            "--io",
            "epoll",
            "--no-pin",
            "--processes",
            "2",
        ])
        .args(["-c", "2", "-d", "200ms", "--warmup", "100ms", "--start-at"])
        .arg(at.to_string())
        .arg("--hist-log")
        .arg(&log)
        .output()
        .expect("runs");
    let took = t0.elapsed();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(took >= Duration::from_millis(1500 + 300 - 50), "{took:?}");
    let text = std::fs::read(&log).expect("hist log written");
    let start = IntervalLogIterator::new(&text)
        .find_map(|e| match e.expect("log parses") {
            LogEntry::StartTime(t) => Some(t),
            _ => None,
        })
        .expect("a StartTime");
    assert!(
        start.as_millis() as u64 >= at + 100,
        "measured from {start:?}, before --start-at {at} ms plus the warm-up"
    );
    let out = Command::new(BIN)
        .args([
            &srv.addr.to_string(),
            "--io",
            "epoll",
            "--no-pin",
            "-c",
            "1",
            "-d",
            "100ms",
        ])
        .arg("--start-at")
        .arg((now_ms() - 10_000).to_string())
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--start-at was") && err.lines().count() == 1,
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
