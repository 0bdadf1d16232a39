//! The binary: the summary and the JSON agree, exit codes, no progress line when stdout is not
//! a terminal, one-line usage errors.

mod common;

use std::process::Command;

use common::RinglabServer;

const BIN: &str = env!("CARGO_BIN_EXE_ringlab-client");

/// The value after `label` on the summary line that starts with it.
fn field<'a>(summary: &'a str, label: &str) -> &'a str {
    summary
        .lines()
        .find_map(|l| l.trim_start().strip_prefix(label))
        .unwrap_or_else(|| panic!("no {label:?} in:\n{summary}"))
        .trim()
}

io_tests! {
    fn summary_and_json_agree(io: &str) {
        let srv = RinglabServer::start("echo", &[]);
        let dir = std::env::temp_dir().join(format!("ringlab-client-cli-{}-{io}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let json_path = dir.join("out.json");
        let out = Command::new(BIN)
            .args([&srv.addr.to_string(), "--io", io, "--no-pin", "-c", "8", "-R", "2000",
                   "-d", "1s", "--json"])
            .arg(&json_path)
            .output()
            .expect("runs");
        let summary = String::from_utf8(out.stdout).expect("utf-8");
        assert_eq!(out.status.code(), Some(0), "{summary}\n{}", String::from_utf8_lossy(&out.stderr));
        // Not a terminal: no progress line, no control characters.
        assert!(!summary.contains('\r') && !summary.contains('\u{1b}'), "{summary:?}");
        let j: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json_path).expect("json written")).expect("json parses");
        let requests = j["requests"].as_u64().expect("requests");
        assert!(requests > 1000);
        let line = field(&summary, &format!("{requests} requests in "));
        assert!(line.starts_with(&format!("{:.2}s", j["elapsed_s"].as_f64().expect("elapsed"))), "{line}");
        assert_eq!(field(&summary, "Requests/sec:"), format!("{:.2}", j["requests_per_sec"].as_f64().expect("rps")));
        for (p, label) in [("50", "50.000%"), ("99", "99.000%"), ("99.9", "99.900%"), ("100", "100.000%")] {
            let corrected = j["latency_us"]["percentiles"][p].as_u64().expect("percentile");
            let raw = j["raw_latency_us"]["percentiles"][p].as_u64().expect("percentile");
            let want = format!("{} {}", ringlab_client::report::fmt_us(corrected), ringlab_client::report::fmt_us(raw));
            let got: Vec<&str> = field(&summary, label).split_whitespace().collect();
            assert_eq!(got.join(" "), want, "{label}");
        }
        assert_eq!(j["latency_us"]["count"].as_u64(), Some(requests));
        assert_eq!(j["counters"]["measured"].as_u64(), Some(requests));
        assert_eq!(j["errors_total"].as_u64(), Some(0));
        assert_eq!(j["exit_code"].as_u64(), Some(0));
        assert_eq!(j["mode"], "open");
        assert_eq!(j["io"], io);
        assert!(j["saturation"]["saturated"].is_boolean());
        assert!(j["cpu"][0]["busy"].is_number());
        // The full spectrum ends at 100%, at the maximum.
        let spectrum = j["latency_us"]["spectrum"].as_array().expect("spectrum");
        assert!(spectrum.len() > 10);
        let last = spectrum.last().expect("last");
        assert_eq!(last["percentile"].as_f64(), Some(100.0));
        assert_eq!(last["value"], j["latency_us"]["max"]);
        assert!(field(&summary, "Errors:").starts_with("none"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    for args in [
        vec!["127.0.0.1:1", "--conns", "0"],
        vec!["127.0.0.1", "-d", "1s"],
        vec!["127.0.0.1:1", "--bind", "10.0.0.9-10.0.0.1"],
        vec!["127.0.0.1:1", "--cores", "4000"],
        vec!["127.0.0.1:1", "--sq-entries", "16384"],
    ] {
        let out = Command::new(BIN).args(&args).output().expect("runs");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("ringlab-client: "), "{err}");
    }
}

#[test]
fn refused_exits_1() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    drop(l);
    let out = Command::new(BIN)
        .args([&addr, "--io", "epoll", "--no-pin", "-d", "20s", "-c", "2"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("connection refused"), "{s}");
}
