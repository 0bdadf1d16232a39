//! ringlab-bench end to end: the doctor, and the features ablation on a short run.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ringlab-bench");

fn out_dir(what: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-{what}-{}", std::process::id()))
}

/// The cells of the report's table row that starts with `start` (cell 0 is the empty text
/// before the first `|`).
fn report_row(report: &str, start: &str) -> Vec<String> {
    let line = report
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no row {start:?}:\n{report}"));
    line.split('|').map(|c| c.trim().to_string()).collect()
}

/// A number cell of a report row: its leading number (a ratio cell reads `R [LO–HI]`).
fn num(row: &[String], i: usize) -> f64 {
    row[i]
        .split_whitespace()
        .next()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("cell {i} is not a number: {row:?}"))
}

/// The interval of a ratio cell `R [LO–HI]`, if it has one.
fn interval(cell: &str) -> Option<(f64, f64)> {
    let inner = cell.split_once('[')?.1.strip_suffix(']')?;
    let (lo, hi) = inner.split_once('–')?;
    Some((lo.parse().ok()?, hi.parse().ok()?))
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
            "--reps",
            "1",
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
    // Columns: payload, row, then four (figure, ×default) pairs: req/s, server CPU µs/req,
    // syscalls/req, p99 µs; then the note.
    for size in ["64", "32768"] {
        let default = report_row(&report, &format!("| {size} | epoll |"));
        for technique in ["level-triggered", "busy-poll", "small-read-buf"] {
            let row = report_row(&report, &format!("| {size} | epoll {technique} |"));
            // Each ratio is this row's figure over its backend's default row's, same payload.
            for figure in [3, 5, 7, 9] {
                let (a, b) = (num(&row, figure), num(&default, figure));
                let cell = &row[figure + 1];
                if b > 0.0 {
                    let want = a / b;
                    let got = num(&row, figure + 1);
                    // One repetition: the paired ratio is this row's figure over the default's.
                    // The figures are rounded in the table: allow that much.
                    assert!(
                        (got - want).abs() <= 0.005 + 0.02 * want,
                        "{size} B {technique}: ×default {got} in cell {}, but {a} / {b} = {want:.3}\n{report}",
                        figure + 1
                    );
                    if let Some((lo, hi)) = interval(cell) {
                        assert!(
                            lo <= got && got <= hi,
                            "{size} B {technique}: ratio {got} outside its interval {cell}"
                        );
                    }
                } else {
                    assert_eq!(
                        cell, "–",
                        "{size} B {technique}: no default figure\n{report}"
                    );
                }
            }
        }
    }
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
    // Exit 0: no requested row failed (a failed row fails the run).
    assert!(out.status.success(), "{stderr}");
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    let epoll = report_row(&report, "| 300 | epoll |");
    let fixed = report_row(&report, "| 300 | uring-fixed |");
    // Columns: idle, backend, server procs, holders, server fds, active req/s, p99 µs, server
    // CPU µs/req, server RSS KiB/conn, kernel slab KiB/conn, TCP buffers KiB/conn, connect all
    // s, connect p99 µs, note.
    for r in [&epoll, &fixed] {
        assert!(!r[14].starts_with("failed"), "{r:?}\n{stderr}");
        // Memory per connection: measured for each row that held its connections. The server's
        // own memory grows with them; the kernel's figures are machine-wide (other processes
        // move them), so only their presence is checked.
        let rss = num(r, 9);
        assert!(
            rss.is_finite() && rss > 0.0,
            "server RSS per connection: {r:?}"
        );
        for i in [10, 11] {
            assert!(num(r, i).is_finite(), "kernel memory per connection: {r:?}");
        }
    }
    let fds = |r: &[String]| num(r, 5) as u64;
    assert!(
        fds(&epoll) >= 300,
        "epoll holds a descriptor per connection: {epoll:?}"
    );
    // Measured (a server holds at least its listener, ring and stdio: 0 means /proc was not
    // read), and few: fixed files take no process descriptors.
    assert!(
        (1..50).contains(&fds(&fixed)),
        "fixed files take no descriptors, and the count is measured (0: /proc unread): {fixed:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn c10k_exits_non_zero_naming_a_failed_row() {
    // One row runs (epoll), one cannot (no such backend): the report is still written, with the
    // failed row noted, and the run fails with one last line naming that row.
    let dir = out_dir("c10k-failed");
    let out = Command::new(BIN)
        .args([
            "c10k",
            "--quick",
            "--conns",
            "20",
            "--backends",
            "epoll,nosuch",
            "--duration",
            "0.2",
        ])
        .arg("--out")
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a failed row must fail the run:\n{stderr}"
    );
    let last = stderr.lines().last().unwrap_or("");
    assert!(
        last.contains("1 of 2 c10k rows failed: nosuch idle=20"),
        "last line: {last:?}\n{stderr}"
    );
    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(!report_row(&report, "| 20 | epoll |")[14].starts_with("failed"));
    assert!(report_row(&report, "| 20 | nosuch |")[14].starts_with("failed"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// An echo server on a thread per connection: connection with first byte `b` gets `answer(b)`
/// back after `delay(b)`, or nothing (the socket held open) when `answer` gives none.
fn odd_echo_server(
    answer: fn(u8) -> Option<u8>,
    delay: fn(u8) -> std::time::Duration,
) -> std::net::SocketAddr {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut b = [0u8; 1];
                if s.read_exact(&mut b).is_ok() {
                    std::thread::sleep(delay(b[0]));
                    if let Some(a) = answer(b[0]) {
                        let _ = s.write_all(&[a]);
                    }
                }
                // Hold the connection until the holder closes it.
                let _ = s.read(&mut b);
            });
        }
    });
    addr
}

/// `ringlab-bench hold ADDR --count N`, its stdin kept open: (exit status, stdout, stderr),
/// after closing stdin once the `held` line (or the exit) came.
fn hold(addr: std::net::SocketAddr, n: usize) -> (std::process::ExitStatus, String, String) {
    use std::io::{BufRead, Read};
    let mut child = Command::new(BIN)
        .args(["hold", &addr.to_string(), "--count", &n.to_string()])
        .args(["--verify-patience", "500ms"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let _ = out.read_line(&mut line);
    drop(child.stdin.take()); // a holder stops when its stdin closes
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (child.wait().unwrap(), line, err)
}

#[test]
fn a_holder_waits_for_slow_echoes_and_reports_the_unanswered_instead_of_failing() {
    // Slow but steady: answers spread over about a second (more than the patience of 0.5 s
    // in all, never 0.5 s between two): every connection verified.
    let addr = odd_echo_server(Some, |b| {
        std::time::Duration::from_millis(25 * u64::from(b))
    });
    let (st, line, err) = hold(addr, 40);
    assert!(st.success(), "{st}: {err}");
    assert!(
        line.starts_with("held 40 ") && line.contains(" echo_ok=40 unverified=0"),
        "{line}"
    );
    // Connections 3, 11, 19, 27, 35 never answered: reported, not fatal.
    let addr = odd_echo_server(|b| (b % 8 != 3).then_some(b), |_| std::time::Duration::ZERO);
    let (st, line, err) = hold(addr, 40);
    assert!(st.success(), "{st}: {err}");
    assert!(line.contains(" echo_ok=35 unverified=5"), "{line}");
    assert!(
        err.contains("5 of 40 connections not verified") && err.contains("3 (no answer)"),
        "{err}"
    );
    // A wrong byte is an error, not a slow answer.
    let addr = odd_echo_server(
        |b| Some(if b == 7 { 8 } else { b }),
        |_| std::time::Duration::ZERO,
    );
    let (st, line, err) = hold(addr, 20);
    assert!(!st.success() && line.is_empty(), "{st}: {line}");
    assert!(err.contains("connection 7: echo returned 8 for 7"), "{err}");
}
