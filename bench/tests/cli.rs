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
    // Columns: idle, backend, holder io, holders, holder rings, server procs, server loops,
    // server fds, active req/s, p99 µs, server CPU µs/req, server RSS KiB/conn, kernel slab
    // KiB/conn, TCP buffers KiB/conn, connect all s, connect p99 µs, unverified, note.
    for r in [&epoll, &fixed] {
        assert!(!r[18].starts_with("failed"), "{r:?}\n{stderr}");
        // Memory per connection: measured for each row that held its connections. The server's
        // own memory grows with them; the kernel's figures are machine-wide (other processes
        // move them), so only their presence is checked.
        let rss = num(r, 12);
        assert!(
            rss.is_finite() && rss > 0.0,
            "server RSS per connection: {r:?}"
        );
        for i in [13, 14] {
            assert!(num(r, i).is_finite(), "kernel memory per connection: {r:?}");
        }
        // Every idle connection verified; one holder, one server process and loop.
        assert_eq!(num(r, 17), 0.0, "unverified: {r:?}");
        assert_eq!((num(r, 4), num(r, 6), num(r, 7)), (1.0, 1.0, 1.0), "{r:?}");
        // The default holders: direct descriptors where the kernel has them (one ring for
        // 300), else descriptors.
        if uring_direct_usable() {
            assert_eq!((r[3].as_str(), num(r, 5)), ("uring-direct", 1.0), "{r:?}");
        } else {
            assert_eq!((r[3].as_str(), num(r, 5)), ("fds", 0.0), "{r:?}");
        }
    }
    let fds = |r: &[String]| num(r, 8) as u64;
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
    // The second table: kernel memory in totals, opening and teardown, per row. Columns: idle,
    // backend, holder io, Slab Δ MiB, SUnreclaim Δ MiB, TCP mem Δ pages, open all s, teardown
    // s, slab returned %, settled in s, sockets left.
    let m = report
        .lines()
        .skip_while(|l| !l.starts_with("| idle conns | backend | holder io | Slab"))
        .find(|l| l.starts_with("| 300 | epoll |"))
        .unwrap_or_else(|| panic!("no memory row for epoll:\n{report}"));
    let m: Vec<String> = m.split('|').map(|c| c.trim().to_string()).collect();
    for i in [4, 5, 6, 7, 8, 9, 10] {
        assert!(num(&m, i).is_finite(), "memory row cell {i}: {m:?}");
    }
    // Both ends of 300 connections were opened and checked, then everything was ended: both
    // take time, and a teardown is bounded (30 s per process group).
    assert!(
        num(&m, 7) > 0.0 && num(&m, 8) > 0.0 && num(&m, 8) < 60.0,
        "{m:?}"
    );
    // The preflight: the limits, the plan and a line per kernel setting.
    for want in [
        "fixed-file table",
        "holder process(es)",
        "net.core.somaxconn",
        "net.ipv4.tcp_mem",
        "fs.file-max",
        "MemAvailable",
    ] {
        assert!(
            report.contains(want),
            "the preflight lacks {want:?}:\n{report}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whether a holder can use io_uring direct descriptors here (IORING_OP_BIND: Linux 6.11);
/// with RINGLAB_REQUIRE_URING=1 (CI) not being able to is a failure.
fn uring_direct_usable() -> bool {
    let ok = io_uring::IoUring::new(8)
        .and_then(|r| {
            let mut p = io_uring::Probe::new();
            r.submitter().register_probe(&mut p)?;
            Ok(p.is_supported(io_uring::opcode::Bind::CODE)
                && p.is_supported(io_uring::opcode::Socket::CODE))
        })
        .unwrap_or(false);
    if !ok && std::env::var("RINGLAB_REQUIRE_URING").is_ok_and(|v| v == "1") {
        panic!("RINGLAB_REQUIRE_URING=1 but io_uring direct sockets are unavailable (IORING_OP_SOCKET and IORING_OP_BIND: Linux 6.11)");
    }
    ok
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
    assert!(!report_row(&report, "| 20 | epoll |")[18].starts_with("failed"));
    assert!(report_row(&report, "| 20 | nosuch |")[18].starts_with("failed"));
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

/// `ringlab-bench hold ADDR --count N --holder-io IO [EXTRA..]`, its stdin kept open: (exit
/// status, stdout, stderr), after closing stdin once the `held` line (or the exit) came.
/// `while_held` runs (with the holder's pid) before stdin is closed.
fn hold_with(
    addr: std::net::SocketAddr,
    n: usize,
    io: &str,
    extra: &[&str],
    while_held: impl FnOnce(u32),
) -> (std::process::ExitStatus, String, String) {
    use std::io::{BufRead, Read};
    let mut child = Command::new(BIN)
        .args(["hold", &addr.to_string(), "--count", &n.to_string()])
        .args(["--verify-patience", "500ms", "--holder-io", io])
        .args(extra)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let _ = out.read_line(&mut line);
    if line.starts_with("held ") {
        while_held(child.id());
    }
    drop(child.stdin.take()); // a holder stops when its stdin closes
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (child.wait().unwrap(), line, err)
}

fn hold(
    addr: std::net::SocketAddr,
    n: usize,
    io: &str,
) -> (std::process::ExitStatus, String, String) {
    hold_with(addr, n, io, &[], |_| {})
}

/// The slow, silent and wrong echo servers against a holder of mode `io`.
fn a_holder_waits_for_slow_echoes_and_reports_the_unanswered(io: &str) {
    // Slow but steady: answers spread over about a second (more than the patience of 0.5 s
    // in all, never 0.5 s between two): every connection verified.
    let addr = odd_echo_server(Some, |b| {
        std::time::Duration::from_millis(25 * u64::from(b))
    });
    let (st, line, err) = hold(addr, 40, io);
    assert!(st.success(), "{st}: {err}");
    assert!(
        line.starts_with("held 40 ")
            && line.contains(" echo_ok=40 unverified=0")
            && line.contains(&format!(" io={io} ")),
        "{line}"
    );
    // Connections 3, 11, 19, 27, 35 never answered: their check times out, and they are
    // reported, not fatal.
    let addr = odd_echo_server(|b| (b % 8 != 3).then_some(b), |_| std::time::Duration::ZERO);
    let (st, line, err) = hold(addr, 40, io);
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
    let (st, line, err) = hold(addr, 20, io);
    assert!(!st.success() && line.is_empty(), "{st}: {line}");
    assert!(err.contains("connection 7: echo returned 8 for 7"), "{err}");
}

#[test]
fn a_holder_waits_for_slow_echoes_and_reports_the_unanswered_instead_of_failing() {
    a_holder_waits_for_slow_echoes_and_reports_the_unanswered("fds");
}

#[test]
fn a_direct_descriptor_holder_reports_what_it_could_not_verify_instead_of_failing() {
    if !uring_direct_usable() {
        eprintln!("skipped: io_uring direct sockets unavailable");
        return;
    }
    a_holder_waits_for_slow_echoes_and_reports_the_unanswered("uring-direct");
}

/// A ringlab-server (built beside ringlab-bench by `cargo test --workspace`) on a free port:
/// the child and its address.
fn ringlab_server(args: &[&str]) -> (std::process::Child, std::net::SocketAddr) {
    use std::io::BufRead;
    let server = std::path::Path::new(BIN).with_file_name("ringlab-server");
    assert!(
        server.is_file(),
        "{} missing: build the workspace (cargo test --workspace builds it)",
        server.display()
    );
    let mut child = Command::new(server)
        .args(["--listen", "127.0.0.1:0", "--proto", "echo", "--cores", "0"])
        .args(["--max-conns", "100000", "--idle-timeout", "1h"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("listen="))
        .unwrap_or_else(|| panic!("no ready line: {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

#[test]
fn direct_descriptor_holders_verify_every_connection_of_a_real_server_without_descriptors() {
    if !uring_direct_usable() {
        eprintln!("skipped: io_uring direct sockets unavailable");
        return;
    }
    // 2,000 connections in tables of 512: four rings in one process, and (almost) no
    // descriptors: stdio, the rings and what the runtime holds.
    for server_args in [&["--io", "uring", "--fixed-files"][..], &["--io", "epoll"]] {
        let (mut server, addr) = ringlab_server(server_args);
        let mut fds = None;
        let (st, line, err) = hold_with(
            addr,
            2000,
            "uring-direct",
            &["--fixed-table", "512", "--bind", "127.66.1.1-127.66.1.8"],
            |pid| {
                fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                    .map(|d| d.count())
                    .ok()
            },
        );
        let _ = server.kill();
        let _ = server.wait();
        assert!(st.success(), "{server_args:?}: {st}: {err}");
        assert!(
            line.starts_with("held 2000 ")
                && line.contains(" echo_ok=2000 unverified=0 ")
                && line.contains(" io=uring-direct rings=4"),
            "{server_args:?}: {line}"
        );
        let fds = fds.expect("the holder's /proc/PID/fd");
        assert!(
            fds < 20,
            "2,000 connections held with {fds} descriptors ({server_args:?})"
        );
    }
}

/// Fleet mode without root or sshd: a host that cannot be reached, in one line.
#[test]
fn fleet_mode_names_an_unreachable_host_in_one_line() {
    // A server host nobody answers on (port 1 of loopback): the bench ends with one line
    // naming it, exit 1, and no report of runs; files and clients too (every scenario runs in
    // fleet mode; files makes its data set on the server host, which is reached first).
    for scenario in ["multiplex", "files", "clients"] {
        let dir = out_dir(&format!("fleet-unreachable-{scenario}"));
        let out = Command::new(BIN)
            .args([
                scenario,
                "--quick",
                "--server-host",
                "nobody@127.0.0.1",
                "--client-hosts",
                "nobody@127.0.0.1",
                "--ssh-option",
                "Port=1",
                "--out",
            ])
            .arg(&dir)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{scenario}: {err}");
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with("ringlab-bench: "))
            .collect();
        assert_eq!(lines.len(), 1, "{scenario}: {err}");
        // (Without an ssh client at all, the cause is that instead.)
        assert!(
            lines[0]
                .starts_with("ringlab-bench: server host nobody@127.0.0.1: unreachable over ssh")
                || lines[0].starts_with("ringlab-bench: server host nobody@127.0.0.1: running ssh"),
            "{scenario}: {err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
