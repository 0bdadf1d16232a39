//! `--peer`: servers of the user's measured beside the backends, and `peers build`.

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ringlab-bench");

fn tmp(what: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("peers-{what}-{}", std::process::id()))
}

/// The processes whose command line mentions `marker`.
fn running_with(marker: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name()
            .to_str()
            .is_some_and(|n| n.parse::<u32>().is_ok())
        {
            if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                if c.contains(marker) {
                    v.push(format!("{}: {c}", e.file_name().to_string_lossy()));
                }
            }
        }
    }
    v
}

/// `peers build` compiles the reference peers; `compare` puts the ones that work in the verdict
/// and the tables beside epoll, and reports and leaves out one that exits at start, one that
/// dies mid-run and one that answers wrongly, without losing the other rows or leaving a
/// process behind.
#[test]
fn compare_measures_peers_and_leaves_out_the_ones_that_fail() {
    let dir = tmp("compare");
    let peers = dir.join("bin");
    let out = Command::new(BIN)
        .args(["peers", "build", "--out"])
        .arg(&peers)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("built c-epoll"), "{text}");
    let uring = text.contains("built uring-min");
    if !uring {
        // The io_uring peer needs liburing's headers; CI installs them.
        assert!(
            std::env::var_os("RINGLAB_REQUIRE_PEERS").is_none(),
            "uring-min was not built:\n{text}"
        );
        assert!(text.contains("not built uring-min: "), "{text}");
    }
    let c_epoll = peers.join("c-epoll");
    let server = Path::new(BIN).with_file_name("ringlab-server");
    let mut args: Vec<String> = [
        "compare",
        "--backends",
        "epoll",
        "--loads",
        "50",
        "--reps",
        "2",
        "--duration",
        "0.3",
        "--quick",
    ]
    .map(String::from)
    .to_vec();
    let mut peer = |p: String| args.extend(["--peer".to_string(), p]);
    peer(format!("c-epoll={} {{port}}", c_epoll.display()));
    if uring {
        peer(format!(
            "uring-min={} {{port}}",
            peers.join("uring-min").display()
        ));
    }
    peer("gone=echo no such thing {port} >&2; exit 3".into());
    // Listens, then is killed 0.4 s later: during the probe's run.
    peer(format!(
        "dies=timeout 0.4 {} --io epoll --listen 127.0.0.1:{{port}}",
        server.display()
    ));
    // An HTTP server: echo requests get HTTP errors back, not their bytes.
    peer(format!(
        "wrong={} --io epoll --proto http --listen 127.0.0.1:{{port}}",
        server.display()
    ));
    let report_dir = dir.join("report");
    let out = Command::new(BIN)
        .args(&args)
        .arg("--out")
        .arg(&report_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{err}");
    // One line per failed peer, saying why.
    for (label, why) in [
        (
            "peer:gone",
            "exited at start (exit status: 3): no such thing",
        ),
        ("peer:dies", "exited during the run"),
        ("peer:wrong", "answered wrongly"),
    ] {
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.contains(&format!("{label} left out")))
            .collect();
        assert_eq!(lines.len(), 1, "{label}: {lines:?}\n{err}");
        assert!(lines[0].contains(why), "{label}: {}", lines[0]);
    }
    let report = std::fs::read_to_string(report_dir.join("report.md")).unwrap();
    // The working peers have verdicts against epoll at equal load and server-bound, and rows.
    let mut working = vec!["peer:c-epoll"];
    if uring {
        working.push("peer:uring-min");
    }
    for p in &working {
        let verdicts: Vec<&str> = report
            .lines()
            .filter(|l| l.starts_with("- ") && l.contains(&format!("{p} ")) && l.contains("epoll"))
            .collect();
        assert!(
            verdicts.len() >= 2,
            "{p}: no verdicts at equal load and server-bound:\n{report}"
        );
        assert!(
            report.contains(&format!("| {p} |")),
            "{p}: no table row\n{report}"
        );
    }
    assert!(report.contains("| epoll |") && report.contains("| epoll A/A |"));
    for gone in ["peer:gone", "peer:dies", "peer:wrong"] {
        assert!(
            report.contains(&format!("- {gone} left out: ")),
            "{gone}\n{report}"
        );
        assert!(!report.contains(&format!("| {gone} |")), "{gone}\n{report}");
    }
    // Every peer process was stopped.
    let left = running_with(&dir.display().to_string());
    assert!(left.is_empty(), "still running: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_peer_flag_fails_with_one_line() {
    for (flag, want) in [
        ("nocommand", "--peer takes NAME=COMMAND"),
        ("x=./srv", "must contain {port}"),
        ("a b=./srv {port}", "a peer's name is"),
    ] {
        let out = Command::new(BIN)
            .args(["compare", "--quick", "--peer", flag, "--out"])
            .arg(tmp("bad"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{flag}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{flag}: {err}");
        assert!(err.contains(want), "{flag}: {err}");
    }
}

/// Only compare, latency, sizes and multiplex measure peers: every other scenario, and every
/// subcommand that is not a scenario, refuses --peer in one line before it runs anything.
#[test]
fn scenarios_without_peers_refuse_the_flag_in_one_line() {
    let out_dir = tmp("refused");
    for cmd in [
        &["seeds"][..],
        &["pinning"],
        &["http"],
        &["features"],
        &["coalesce"],
        &["c10k"],
        &["files"],
        &["doctor"],
        &["peers", "build"],
        &["merge", "nothing.hlog"],
        &["completions", "bash"],
        &["man"],
    ] {
        let started = std::time::Instant::now();
        let out = Command::new(BIN)
            .args(cmd)
            .args(["--peer", "c-epoll=./c-epoll {port}", "--out"])
            .arg(&out_dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{cmd:?}: {err}");
        let what = if cmd[0] == "peers" {
            "peers build"
        } else {
            cmd[0]
        };
        assert!(
            err.contains(&format!("{what} does not take --peer"))
                && err.contains("compare, latency, sizes, multiplex"),
            "{cmd:?}: {err}"
        );
        assert!(
            out.stdout.is_empty(),
            "{cmd:?} printed {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!out_dir.exists(), "{cmd:?} made its report directory");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{cmd:?} ran"
        );
    }
}
