//! Every kernel technique behind a switch (issue: kernel features measured) keeps every byte,
//! and is really in use when switched on: each test checks the evidence the technique leaves
//! (a counter, a kernel thread, the descriptor table), so a switch that silently does nothing
//! fails.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::load::{echo_many, half_close_echo, log_uniform_sizes};
use common::{json_u64, pattern, poll_until, threads_of, HttpConn, Server, BIN, EXIT_TIMEOUT};

/// Skip (or, with RINGLAB_REQUIRE_URING=1, fail) when io_uring is unavailable.
fn uring_ok() -> bool {
    !common::skip_backend("uring")
}

/// 150 concurrent connections with log-uniform sizes up to 1 MiB, every byte verified, then the
/// server's exit statistics.
fn integrity(io: &str, args: &[&str]) -> serde_json::Value {
    let seed = 0x5eed_u64 ^ args.len() as u64;
    let sizes = log_uniform_sizes(150, seed);
    let total: usize = sizes.iter().sum();
    let msgs: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| pattern(seed ^ i as u64, n))
        .collect();
    let mut srv = Server::start_with_stats(io, args);
    echo_many(srv.addr, msgs);
    srv.stop_and_wait(EXIT_TIMEOUT);
    let st = srv.stats();
    assert_eq!(json_u64(&st, "total.accepted"), 150, "{args:?}: {st:#}");
    assert_eq!(json_u64(&st, "total.closed"), 150, "{args:?}: {st:#}");
    assert_eq!(
        json_u64(&st, "total.bytes_in"),
        total as u64,
        "{args:?}: {st:#}"
    );
    assert_eq!(
        json_u64(&st, "total.bytes_out"),
        total as u64,
        "{args:?}: {st:#}"
    );
    assert_eq!(json_u64(&st, "total.conn_errors"), 0, "{args:?}: {st:#}");
    st
}

/// 8 MiB echoed through one connection while the client half-closes: backpressure, short
/// sends and the graceful shutdown path of the switch.
fn half_close_large(io: &str, args: &[&str]) {
    let mut srv = Server::start(io, args);
    half_close_echo(&srv, 8 << 20, Duration::ZERO);
    srv.stop_and_wait(EXIT_TIMEOUT);
}

/// HTTP keep-alive with pipelining: 3 × 40 requests on one connection, in order.
fn http_pipelined(io: &str, args: &[&str]) {
    let mut all = vec!["--proto", "http"];
    all.extend_from_slice(args);
    let mut srv = Server::start(io, &all);
    let mut c = HttpConn::new(srv.connect());
    for round in 0..3 {
        let mut batch = Vec::new();
        for i in 0..40 {
            let body = format!("r{round}-{i}");
            batch.extend_from_slice(
                format!(
                    "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
        c.send(&batch);
        for i in 0..40 {
            let r = c.response();
            assert_eq!(r.status, 200, "{args:?}");
            assert_eq!(r.body, format!("r{round}-{i}").as_bytes(), "{args:?}");
        }
    }
    drop(c);
    srv.stop_and_wait(EXIT_TIMEOUT);
}

#[test]
fn fixed_files_hold_no_process_descriptors() {
    if !uring_ok() {
        return;
    }
    let mut srv = Server::start_with_stats("uring", &["--fixed-files"]);
    let before = srv.open_fds();
    let mut conns: Vec<_> = (0..300).map(|_| srv.connect()).collect();
    for (i, s) in conns.iter_mut().enumerate() {
        let msg = pattern(i as u64, 100);
        s.write_all(&msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }
    let during = srv.open_fds();
    assert!(
        during < before + 10,
        "300 connections held as fixed files took process descriptors: {before} → {during}"
    );
    drop(conns);
    srv.stop_and_wait(EXIT_TIMEOUT);
    let st = srv.stats();
    assert_eq!(json_u64(&st, "total.accepted"), 300, "{st:#}");
    assert_eq!(json_u64(&st, "total.closed"), 300, "{st:#}");
}

#[test]
fn without_fixed_files_each_connection_is_a_descriptor() {
    // The control for the test above: it can tell the difference.
    if !uring_ok() {
        return;
    }
    let mut srv = Server::start("uring", &[]);
    let before = srv.open_fds();
    let mut conns: Vec<_> = (0..300).map(|_| srv.connect()).collect();
    for s in conns.iter_mut() {
        s.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
    }
    assert!(srv.open_fds() >= before + 300);
    drop(conns);
    srv.stop_and_wait(EXIT_TIMEOUT);
}

#[test]
fn fixed_files_keep_every_byte() {
    if !uring_ok() {
        return;
    }
    integrity("uring", &["--fixed-files", "--cores", "0"]);
    integrity("uring", &["--fixed-files", "--no-multishot-accept"]);
    half_close_large("uring", &["--fixed-files"]);
    http_pipelined("uring", &["--fixed-files"]);
}

#[test]
fn fixed_table_full_waits_for_a_free_slot_and_loses_nothing() {
    // An accept into a full fixed-file table would take the connection off the listen queue
    // and have the kernel reset it; the server instead stops accepting while the table is
    // full and accepts the waiting connection once a slot frees.
    if !uring_ok() {
        return;
    }
    let mut srv = Server::start_with_stats("uring", &["--fixed-files", "--fixed-table", "8"]);
    let mut held: Vec<_> = (0..8).map(|_| srv.connect()).collect();
    for s in held.iter_mut() {
        s.write_all(b"hi").unwrap();
        let mut b = [0u8; 2];
        s.read_exact(&mut b).unwrap();
    }
    // The ninth waits in the listen queue while the table is full...
    let mut ninth = srv.connect();
    ninth.write_all(b"ninth").unwrap();
    ninth
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut got = [0u8; 5];
    assert!(
        ninth.read_exact(&mut got).is_err(),
        "served beyond the table"
    );
    // ...and is served once a slot frees.
    drop(held.pop());
    ninth
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    ninth.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ninth");
    drop(held);
    drop(ninth);
    srv.stop_and_wait(EXIT_TIMEOUT);
    let st = srv.stats();
    assert_eq!(json_u64(&st, "total.accept_errors"), 0, "{st:#}");
    assert_eq!(json_u64(&st, "total.accepted"), 9, "{st:#}");
    assert_eq!(json_u64(&st, "total.conn_errors"), 0, "{st:#}");
}

#[test]
fn fixed_table_smaller_than_the_load_serves_every_connection() {
    // 200 connections through a 16-slot table: they queue, none is reset, every byte returns.
    if !uring_ok() {
        return;
    }
    let mut srv = Server::start_with_stats("uring", &["--fixed-files", "--fixed-table", "16"]);
    let msgs: Vec<Vec<u8>> = (0..200).map(|i| pattern(i, 20_000)).collect();
    echo_many(srv.addr, msgs);
    srv.stop_and_wait(EXIT_TIMEOUT);
    let st = srv.stats();
    assert_eq!(json_u64(&st, "total.accepted"), 200, "{st:#}");
    assert_eq!(json_u64(&st, "total.bytes_out"), 200 * 20_000, "{st:#}");
}

#[test]
fn fixed_rings_hold_several_tables_in_one_loop() {
    // Four rings with tables of 8: one loop holds 32 connections, none of them a descriptor of
    // the process; the 33rd waits until a slot frees anywhere; every ring's completions are
    // run by the loop that sleeps on the first.
    if !uring_ok() {
        return;
    }
    for placement in ["fill", "spread"] {
        let args = [
            "--fixed-files",
            "--fixed-table",
            "8",
            "--fixed-rings",
            "4",
            "--fixed-placement",
            placement,
        ];
        let mut srv = Server::start_with_stats("uring", &args);
        let before = srv.open_fds();
        let mut held: Vec<_> = (0..32).map(|_| srv.connect()).collect();
        for (i, s) in held.iter_mut().enumerate() {
            let msg = format!("conn {i:02}");
            s.write_all(msg.as_bytes()).unwrap();
            let mut b = [0u8; 7];
            s.read_exact(&mut b).unwrap();
            assert_eq!(&b, msg.as_bytes(), "{placement}");
        }
        // All 32 are in the rings' tables, not in the descriptor table.
        let during = srv.open_fds();
        assert!(
            during < before + 4,
            "{placement}: {during} descriptors with 32 connections open, {before} before"
        );
        // Every connection is served again after the others were: no ring is left unheard.
        for (i, s) in held.iter_mut().enumerate().rev() {
            let msg = format!("again {i:02}");
            s.write_all(msg.as_bytes()).unwrap();
            let mut b = [0u8; 8];
            s.read_exact(&mut b).unwrap();
            assert_eq!(&b, msg.as_bytes(), "{placement}");
        }
        let mut extra = srv.connect();
        extra.write_all(b"33rd").unwrap();
        extra
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut got = [0u8; 4];
        assert!(
            extra.read_exact(&mut got).is_err(),
            "{placement}: served beyond the tables"
        );
        // The slot that frees is in whichever ring that connection was in.
        drop(held.swap_remove(5));
        extra
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        extra.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"33rd", "{placement}");
        drop(held);
        drop(extra);
        srv.stop_and_wait(EXIT_TIMEOUT);
        let st = srv.stats();
        assert_eq!(json_u64(&st, "total.rings"), 4, "{st:#}");
        assert!(json_u64(&st, "total.extra_enters") > 0, "{st:#}");
        assert_eq!(json_u64(&st, "total.accepted"), 33, "{st:#}");
        assert_eq!(json_u64(&st, "total.closed"), 33, "{st:#}");
        assert_eq!(json_u64(&st, "total.conn_errors"), 0, "{st:#}");
        assert_eq!(json_u64(&st, "total.accept_errors"), 0, "{st:#}");
    }
    // Large transfers, half-closes and pipelined HTTP through tables of 2 in 8 rings.
    let many = [
        "--fixed-files",
        "--fixed-table",
        "2",
        "--fixed-rings",
        "8",
        "--fixed-placement",
        "spread",
    ];
    integrity("uring", &many);
    half_close_large("uring", &many);
    http_pipelined("uring", &many);
}

#[test]
fn sqpoll_runs_a_kernel_thread_and_keeps_every_byte() {
    if !uring_ok() {
        return;
    }
    let mut srv = Server::start("uring", &["--sqpoll", "--sqpoll-idle", "50ms"]);
    // The kernel names the thread when it first runs, which on a busy machine can be a moment
    // after the ring is set up.
    let found = poll_until(Duration::from_secs(10), || {
        threads_of(srv.pid)
            .iter()
            .any(|(_, comm, _)| comm.starts_with("iou-sqp-"))
    });
    assert!(found, "no SQPOLL thread: {:?}", threads_of(srv.pid));
    let mut s = srv.connect();
    s.write_all(b"sqpoll").unwrap();
    let mut got = [0u8; 6];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"sqpoll");
    drop(s);
    srv.stop_and_wait(EXIT_TIMEOUT);
    integrity("uring", &["--sqpoll"]);
    half_close_large("uring", &["--sqpoll"]);
}

#[test]
fn send_zc_is_used_and_keeps_every_byte() {
    if !uring_ok() {
        return;
    }
    let st = integrity("uring", &["--send-zc", "1"]);
    assert!(json_u64(&st, "total.zc_sends") > 0, "{st:#}");
    // Over a threshold only: 1 MiB never reaches it, so no zero-copy send is made.
    let st = integrity("uring", &["--send-zc", "2000000"]);
    assert_eq!(json_u64(&st, "total.zc_sends"), 0, "{st:#}");
    half_close_large("uring", &["--send-zc", "4096"]);
    http_pipelined("uring", &["--send-zc", "1"]);
}

#[test]
fn recv_bundles_are_used_and_keep_every_byte() {
    if !uring_ok() {
        return;
    }
    // Small buffers, so one receive spans many and the ring wraps and runs dry often.
    let st = integrity(
        "uring",
        &["--recv-bundle", "--buf-size", "1024", "--buf-count", "64"],
    );
    assert!(json_u64(&st, "total.recv_bundles") > 0, "{st:#}");
    half_close_large("uring", &["--recv-bundle", "--buf-size", "2048"]);
    http_pipelined("uring", &["--recv-bundle", "--buf-size", "512"]);
}

#[test]
fn incremental_buffers_are_used_and_keep_every_byte() {
    if !uring_ok() {
        return;
    }
    let st = integrity(
        "uring",
        &[
            "--buf-incremental",
            "--buf-size",
            "65536",
            "--buf-count",
            "8",
        ],
    );
    assert!(json_u64(&st, "total.buf_partial") > 0, "{st:#}");
    half_close_large("uring", &["--buf-incremental", "--buf-size", "65536"]);
    http_pipelined("uring", &["--buf-incremental", "--buf-size", "65536"]);
}

#[test]
fn napi_busy_poll_keeps_every_byte() {
    if !uring_ok() {
        return;
    }
    integrity("uring", &["--napi-busy-poll", "20us"]);
}

#[test]
fn every_uring_switch_at_once() {
    if !uring_ok() {
        return;
    }
    let all = [
        "--fixed-files",
        "--sqpoll",
        "--send-zc",
        "512",
        "--recv-bundle",
        "--buf-size",
        "4096",
        "--napi-busy-poll",
        "10us",
        "--cores",
        "0,1",
    ];
    integrity("uring", &all);
    half_close_large("uring", &all);
    http_pipelined("uring", &all);
}

#[test]
fn epoll_level_triggered_keeps_every_byte() {
    let args = ["--level-triggered", "--read-buf", "4096"];
    integrity("epoll", &args);
    // The evidence only level-triggered leaves: it registers just what a connection waits for
    // and changes that with epoll_ctl, where edge-triggered registers each socket once and never
    // touches it again (one epoll_ctl per connection, whatever the sizes). With the echoes held
    // by --delay, a connection's input ends while its output waits: level-triggered must take
    // EPOLLIN off then (EPOLL_CTL_MOD, or DEL after a hang-up).
    let held = ["--delay", "50ms", "--read-buf", "4096"];
    let ctl = |st: serde_json::Value| json_u64(&st, "total.syscalls.epoll_ctl");
    let lt = ctl(integrity(
        "epoll",
        &[&["--level-triggered"][..], &held].concat(),
    ));
    let et = ctl(integrity("epoll", &held));
    assert!(
        lt > et,
        "level-triggered made no epoll_ctl beyond edge-triggered's one per connection: {lt} vs {et}"
    );
    half_close_large("epoll", &args);
    http_pipelined("epoll", &args);
    integrity(
        "epoll",
        &["--level-triggered", "--accept", "shared", "--cores", "0,1"],
    );
}

#[test]
fn epoll_level_triggered_modifies_interest_under_backpressure() {
    // A reader that stops reading forces EAGAIN on the write side: the level-triggered twin
    // must ask for EPOLLOUT (and drop EPOLLIN) with EPOLL_CTL_MOD, where edge-triggered needs
    // no epoll_ctl beyond the one ADD per connection.
    let mut ctls = Vec::new();
    for args in [&["--level-triggered"][..], &[][..]] {
        let mut srv = Server::start_with_stats("epoll", args);
        // 16 MiB to a client that reads nothing for half a second: writes hit EAGAIN.
        half_close_echo(&srv, 16 << 20, Duration::from_millis(500));
        srv.stop_and_wait(EXIT_TIMEOUT);
        let st = srv.stats();
        let ctl = json_u64(&st, "total.syscalls.epoll_ctl");
        ctls.push(ctl);
    }
    assert!(
        ctls[0] > ctls[1],
        "level-triggered made no EPOLL_CTL_MOD beyond edge-triggered's: {ctls:?}"
    );
}

#[test]
fn epoll_busy_poll_keeps_every_byte() {
    integrity("epoll", &["--busy-poll", "20us"]);
}

#[test]
fn switches_for_another_backend_are_refused_with_one_line() {
    for (args, says) in [
        (
            &["--io", "epoll", "--sqpoll"][..],
            "--sqpoll applies to --io uring only",
        ),
        (
            &["--io", "tokio", "--coalesce", "50us"][..],
            "--coalesce applies to --io uring, epoll, poll and select (not tokio)",
        ),
        (
            &[
                "--io",
                "uring",
                "--sq-entries",
                "4096",
                "--cq-entries",
                "2048",
            ][..],
            "--cq-entries (2048) must be at least --sq-entries (4096)",
        ),
        (
            &["--io", "tokio", "--fixed-files"][..],
            "--fixed-files applies to --io uring only",
        ),
        (
            &["--io", "uring", "--level-triggered"][..],
            "--level-triggered applies to --io epoll only",
        ),
        (
            &["--io", "uring", "--busy-poll", "10us"][..],
            "--busy-poll applies to --io epoll only",
        ),
        (
            &["--io", "uring", "--recv-bundle", "--buf-incremental"][..],
            "cannot be combined",
        ),
        (
            &["--io", "uring", "--recv-bundle", "--no-multishot-recv"][..],
            "provided-buffer ring",
        ),
        (
            &["--io", "uring", "--fixed-table", "8"][..],
            "--fixed-table needs --fixed-files",
        ),
        (
            &["--io", "uring", "--fixed-rings", "4"][..],
            "--fixed-rings holds connections in fixed-file tables: add --fixed-files",
        ),
        (
            &[
                "--io",
                "uring",
                "--fixed-files",
                "--fixed-rings",
                "4",
                "--sqpoll",
            ][..],
            "--fixed-rings cannot be combined with --sqpoll",
        ),
        (
            &[
                "--io",
                "uring",
                "--fixed-files",
                "--fixed-placement",
                "spread",
            ][..],
            "--fixed-placement chooses among --fixed-rings",
        ),
        (
            &["--io", "uring", "--sqpoll-cpu", "0"][..],
            "--sqpoll-cpu needs --sqpoll",
        ),
        (
            &["--io", "uring", "--sqpoll", "--sqpoll-cpu", "4096"][..],
            "--sqpoll-cpu 4096: no such CPU",
        ),
    ] {
        common::assert_refused_in_one_line(args, says);
    }
}

#[test]
fn sqpoll_thread_sleeps_when_idle() {
    // With a short idle time the SQPOLL thread stops spinning: its CPU time stops growing.
    if !uring_ok() {
        return;
    }
    let mut srv = Server::start("uring", &["--sqpoll", "--sqpoll-idle", "5ms"]);
    let sqp = || {
        threads_of(srv.pid)
            .into_iter()
            .find(|(_, comm, _)| comm.starts_with("iou-sqp-"))
            .map(|(tid, _, _)| tid)
    };
    assert!(
        poll_until(Duration::from_secs(10), || sqp().is_some()),
        "no SQPOLL thread: {:?}",
        threads_of(srv.pid)
    );
    let tid = sqp().expect("an SQPOLL thread");
    let ticks = || cpu_ticks(&format!("/proc/{}/task/{tid}", srv.pid));
    // Let it go idle, then watch one second: a spinning thread would use ~100 ticks.
    std::thread::sleep(Duration::from_millis(200));
    let t0 = ticks();
    std::thread::sleep(Duration::from_secs(1));
    let used = ticks() - t0;
    assert!(used < 50, "the idle SQPOLL thread used {used} ticks in 1 s");
    srv.stop_and_wait(EXIT_TIMEOUT);
}

#[test]
fn fixed_files_honour_max_conns() {
    // Over --max-conns (echo) a fixed file the multishot accept already took is held in the
    // ring's table, unserved, until a slot frees; HTTP answers 503 from a fixed file too.
    if !uring_ok() {
        return;
    }
    let mut srv = Server::start_with_stats("uring", &["--fixed-files", "--max-conns", "2"]);
    let mut a = srv.connect();
    let mut b = srv.connect();
    for (s, m) in [(&mut a, b"first!"), (&mut b, b"second")] {
        s.write_all(m).unwrap();
        let mut got = [0u8; 6];
        s.read_exact(&mut got).unwrap();
        assert_eq!(&got, m);
    }
    let mut c = srv.connect();
    c.write_all(b"third!").unwrap();
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut got = [0u8; 6];
    assert!(c.read_exact(&mut got).is_err(), "served beyond --max-conns");
    drop(a);
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.read_exact(&mut got).expect("served once a slot freed");
    assert_eq!(&got, b"third!");
    drop((b, c));
    srv.stop_and_wait(EXIT_TIMEOUT);
    let st = srv.stats();
    assert_eq!(json_u64(&st, "total.accepted"), 3, "{st:#}");
    assert_eq!(json_u64(&st, "total.closed"), 3, "{st:#}");

    let mut srv = Server::start_with_stats(
        "uring",
        &["--fixed-files", "--max-conns", "1", "--proto", "http"],
    );
    let mut a = HttpConn::new(srv.connect());
    assert_eq!(a.request(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").status, 200);
    let mut b = HttpConn::new(srv.connect());
    let r = b.request(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.raw));
    b.expect_eof();
    drop(a);
    srv.stop_and_wait(EXIT_TIMEOUT);
    let st = srv.stats();
    assert_eq!(json_u64(&st, "total.refused"), 1, "{st:#}");
}

/// CPU ticks (user + system) so far of the process or thread at `proc_dir` (`/proc/PID` or
/// `/proc/PID/task/TID`). Panics when /proc cannot be read: a count of 0 would pass any "used
/// little CPU" check.
fn cpu_ticks(proc_dir: &str) -> u64 {
    let path = format!("{proc_dir}/stat");
    let stat = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    // utime and stime: fields 14 and 15, counted after the ")" that ends the name.
    let rest = stat
        .rsplit_once(')')
        .unwrap_or_else(|| panic!("{path}: no ')' in {stat:?}"))
        .1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> u64 {
        f.get(i)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{path}: field {} unreadable in {stat:?}", i + 3))
    };
    field(11) + field(12)
}

#[test]
fn epoll_level_triggered_does_not_spin_on_a_reset_it_cannot_act_on_yet() {
    // Level-triggered, the kernel reports ERR/HUP on every wait whatever the interest. A peer
    // that resets while its connection is neither read (past the high-water mark) nor written
    // (its echo held by --delay) must not make the loop spin until the delay is over.
    let mut srv = Server::start(
        "epoll",
        &[
            "--level-triggered",
            "--delay",
            "2s",
            "--out-high-water",
            "1024",
        ],
    );
    let mut s = srv.connect();
    s.write_all(&pattern(3, 64 * 1024)).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(s); // RST
    std::thread::sleep(Duration::from_millis(100));
    let t0 = cpu_ticks(&format!("/proc/{}", srv.pid));
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(&format!("/proc/{}", srv.pid)) - t0;
    assert!(
        used < 30,
        "the loop used {used} ticks in 1 s after the reset"
    );
    // Still serving.
    let mut c = srv.connect();
    c.write_all(b"ok").unwrap();
    let mut b = [0u8; 2];
    c.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"ok");
    drop(c);
    srv.stop_and_wait(EXIT_TIMEOUT);
}

/// `--coalesce` keeps every byte on each loop backend.
#[test]
fn coalesced_wakeups_keep_every_byte() {
    for io in ["uring", "epoll", "poll", "select"] {
        if common::skip_backend(io) {
            continue;
        }
        integrity(io, &["--coalesce", "200us", "--coalesce-batch", "8"]);
    }
}

/// The loop's waits (io_uring_enter, epoll_wait, poll, select) per request while 32 clients
/// each send a 64 B echo every 2 ms for about a quarter of a second.
fn waits_per_request(io: &str, extra: &[&str]) -> f64 {
    let mut args = vec!["--cores", "0"];
    args.extend_from_slice(extra);
    let mut srv = Server::start_with_stats(io, &args);
    let addr = srv.addr;
    let clients: Vec<_> = (0..32u64)
        .map(|i| {
            std::thread::spawn(move || {
                let mut s = common::connect(addr);
                let msg = pattern(i, 64);
                let mut got = vec![0u8; 64];
                for _ in 0..100 {
                    s.write_all(&msg).unwrap();
                    s.read_exact(&mut got).unwrap();
                    assert_eq!(got, msg);
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().expect("client");
    }
    srv.stop_and_wait(EXIT_TIMEOUT);
    let st = srv.stats();
    let key = match io {
        "uring" => "io_uring_enter",
        "epoll" => "epoll_wait",
        other => other,
    };
    let waits = json_u64(&st, &format!("total.syscalls.{key}"));
    let bytes = json_u64(&st, "total.bytes_in");
    assert_eq!(bytes, 32 * 100 * 64, "{st:#}");
    waits as f64 / (32.0 * 100.0)
}

/// Coalescing does what it says: with `--coalesce 5ms` the loop waits far fewer times per
/// request than without, on every loop backend (requests arrive one by one, 2 ms apart per
/// client, so without it most wake-ups find one request). A stalled machine (host steal) batches
/// the plain run's requests by itself, so a pair of runs that shows less than half is tried
/// again, three times at most: coalescing that does nothing fails all three.
#[test]
fn coalescing_batches_wakeups() {
    for io in ["uring", "epoll", "poll", "select"] {
        if common::skip_backend(io) {
            continue;
        }
        let mut tries: Vec<(f64, f64)> = Vec::new();
        while tries.len() < 3 && !tries.iter().any(|(c, p)| *c < p / 2.0) {
            let plain = waits_per_request(io, &[]);
            let coalesced = waits_per_request(io, &["--coalesce", "5ms"]);
            tries.push((coalesced, plain));
        }
        assert!(
            tries.iter().any(|(c, p)| *c < p / 2.0),
            "{io}: waits per request with --coalesce 5ms against without, in three tries: {tries:?}"
        );
    }
}

/// Whether this test process may run the server as another user with a small locked-memory
/// limit (root, with util-linux's prlimit and setpriv).
fn can_drop_privileges() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not root".into());
    }
    for tool in ["prlimit", "setpriv"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return Err(format!("{tool} is not installed (util-linux)"));
        }
    }
    Ok(())
}

/// With too little lockable memory the kernel refuses zero-copy sends (ENOMEM): the server says
/// so once, sends those bytes again by copying, and no connection loses a byte (before, each
/// refused send failed its connection without a word).
#[test]
fn a_refused_zero_copy_send_falls_back_to_copying_and_keeps_every_byte() {
    if !uring_ok()
        || common::skip_unless(
            "RINGLAB_REQUIRE_NETADMIN",
            "running the server unprivileged with a 1 MiB memlock limit",
            can_drop_privileges(),
        )
    {
        return;
    }
    use std::io::BufRead;
    use std::os::unix::fs::PermissionsExt;
    // A directory the unprivileged server can write its statistics to.
    let dir = std::env::temp_dir().join(format!("ringlab-zc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let stats = dir.join("stats.json");
    let mut child = Command::new("prlimit")
        .args(["--memlock=1048576:1048576", "setpriv", "--reuid=65534"])
        .args(["--regid=65534", "--clear-groups", BIN, "--io", "uring"])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--send-zc",
            "4096",
            "--stats-json",
        ])
        .arg(&stats)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("prlimit runs");
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut ready = String::new();
    out.read_line(&mut ready).unwrap();
    let field = |k: &str| {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .unwrap_or_else(|| panic!("no {k} in {ready:?}"))
            .to_string()
    };
    let addr: std::net::SocketAddr = field("listen=").parse().unwrap();
    let pid: i32 = field("pid=").parse().unwrap();
    // If an assertion below fails, the server (our child's image: prlimit and setpriv exec it)
    // must not outlive the test.
    struct KillOnPanic(i32);
    impl Drop for KillOnPanic {
        fn drop(&mut self) {
            if std::thread::panicking() {
                if let Some(p) = rustix::process::Pid::from_raw(self.0) {
                    let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
                }
            }
        }
    }
    let _guard = KillOnPanic(pid);
    // 64 connections of 32 KiB to 1 MiB: far more in flight than 1 MiB of pinned pages.
    let msgs: Vec<Vec<u8>> = (0..64)
        .map(|i| pattern(0x2c ^ i, (32 << 10) + (i as usize * 15_872)))
        .collect();
    let total: usize = msgs.iter().map(Vec::len).sum();
    echo_many(addr, msgs);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.matches("a zero-copy send was refused").count(),
        1,
        "{err}"
    );
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&stats).unwrap()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(json_u64(&st, "total.zc_fallbacks") > 0, "{st:#}");
    assert_eq!(json_u64(&st, "total.conn_errors"), 0, "{st:#}");
    assert_eq!(json_u64(&st, "total.bytes_out"), total as u64, "{st:#}");
}
