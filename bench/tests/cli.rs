//! ringlab-bench end to end: the doctor, and the features ablation on a short run.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ringlab-bench");

fn out_dir(what: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-{what}-{}", std::process::id()))
}

#[test]
fn doctor_reports_kernel_limits_and_every_switch() {
    let out = Command::new(BIN).arg("doctor").output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for line in [
        "kernel ",
        "io_uring ",
        "ulimit -n",
        "fs.nr_open",
        "somaxconn",
        "ip_local_port_range",
        "tcp_max_syn_backlog",
        "CPUs",
        "switch --fixed-files",
        "switch --sqpoll",
        "switch --send-zc",
        "switch --recv-bundle",
        "switch --buf-incremental",
        "switch --napi-busy-poll",
        "switch --busy-poll (epoll)",
    ] {
        assert!(text.contains(line), "doctor lacks {line:?}:\n{text}");
    }
}

#[test]
fn features_writes_a_ratio_row_per_technique() {
    let dir = out_dir("features");
    let out = Command::new(BIN)
        .args([
            "features",
            "--quick",
            "--backends",
            "epoll",
            "--duration",
            "0.3",
        ])
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    for row in [
        "| 64 | epoll |",
        "| 64 | epoll level-triggered |",
        "| 32768 | epoll busy-poll |",
    ] {
        assert!(report.contains(row), "report lacks {row:?}:\n{report}");
    }
    // The default row is its own baseline.
    let default = report
        .lines()
        .find(|l| l.starts_with("| 64 | epoll |"))
        .unwrap();
    let cols: Vec<&str> = default.split('|').map(str::trim).collect();
    assert_eq!(cols[4], "1.00", "{default}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_scenario_option_fails_with_one_line() {
    let out = Command::new(BIN)
        .args(["features", "--backends", "nosuch", "--quick"])
        .arg("--out")
        .arg(out_dir("bad"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no rows for --backends"), "{err}");
}

#[test]
fn c10k_holds_idle_connections_and_reports_memory_per_connection() {
    let dir = out_dir("c10k");
    let out = Command::new(BIN)
        .args([
            "c10k",
            "--quick",
            "--conns",
            "300",
            "--backends",
            "epoll,uring-fixed",
            "--duration",
            "0.3",
        ])
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    let row = |backend: &str| -> Vec<String> {
        let line = report
            .lines()
            .find(|l| l.starts_with(&format!("| 300 | {backend} |")))
            .unwrap_or_else(|| panic!("no {backend} row:\n{report}"));
        line.split('|').map(|c| c.trim().to_string()).collect()
    };
    let epoll = row("epoll");
    let fixed = row("uring-fixed");
    // Columns: idle, backend, server procs, holders, server fds, ...
    let fds = |r: &[String]| r[5].parse::<u64>().unwrap();
    assert!(
        fds(&epoll) >= 300,
        "epoll holds a descriptor per connection: {epoll:?}"
    );
    assert!(
        fds(&fixed) < 50,
        "fixed files take no descriptors: {fixed:?}"
    );
    assert!(!epoll[14].starts_with("failed"), "{epoll:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
