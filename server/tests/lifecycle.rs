//! Lifecycle conformance: graceful shutdown, the second signal, thread pinning, start-up
//! errors and exit statistics, for every backend.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    json_u64, pattern, poll_until, read_to_eof, server_consumed, start_failure, Server,
    EXIT_TIMEOUT,
};

/// The name a backend gives the loop thread of `cpu`, as /proc shows it (15 bytes at most).
fn loop_thread_name(io: &str, cpu: usize) -> String {
    // The server keeps names within Linux's 15 bytes: `ringlab-<tag>-<cpu>`. The blocking
    // backend names workers by index (worker i runs on the i-th listed CPU); here the listed
    // CPUs are 0 and 1, so index and CPU agree.
    let tag = match io {
        "tokio-uring" => "tu",
        "blocking" => "blk",
        "select" => "sel",
        other => other,
    };
    format!("ringlab-{tag}-{cpu}")
}

/// Up to two CPUs this process may use (`0,1` here).
fn two_cpus() -> Vec<usize> {
    common::allowed_cpus().into_iter().take(2).collect()
}

fn cpu_arg(cpus: &[usize]) -> String {
    cpus.iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// How one HTTP response ended, as the shutdown test classifies it.
enum Outcome {
    /// Status and body, complete per Content-Length.
    Complete(u16, Vec<u8>),
    /// The connection ended before any byte of the response.
    Unanswered,
    /// The connection ended after part of the response: what the server must never do.
    Truncated(usize),
}

/// Read one Content-Length-framed response from `s` (bytes of it may already be in `buf`).
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Outcome {
    let mut tmp = [0u8; 16 * 1024];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..i]).to_string();
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("bad status line in {head:?}"));
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or_else(|| panic!("no Content-Length in {head:?}"));
            if buf.len() >= i + 4 + len {
                let body = buf[i + 4..i + 4 + len].to_vec();
                buf.drain(..i + 4 + len);
                return Outcome::Complete(status, body);
            }
        }
        match s.read(&mut tmp) {
            Ok(0) => {}
            Ok(n) => {
                buf.extend_from_slice(&tmp[..n]);
                continue;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no response and no close within the read timeout")
            }
            Err(_) => {} // reset: like EOF, judged by what arrived
        }
        return if buf.is_empty() {
            Outcome::Unanswered
        } else {
            Outcome::Truncated(buf.len())
        };
    }
}

/// Connect load client `id`; a failure fails the test (a client that never connected would
/// pass for one the shutdown left unanswered).
fn load_connect(addr: SocketAddr, id: u64) -> TcpStream {
    TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("load client {id}: connect to {addr}: {e}"))
}

/// One keep-alive client POSTing `body` to /echo back to back on `s` until its connection ends
/// (bounded in count and time). Returns complete responses; panics on a truncated or wrong one.
fn load_client(mut s: TcpStream, id: u64, done: Arc<AtomicU64>) -> u64 {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = Vec::new();
    let mut ok = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in 0..100_000u64 {
        if Instant::now() > deadline {
            break;
        }
        let body = pattern(id << 32 | i, 10_000);
        if s.write_all(&common::post("/echo", &body)).is_err() {
            break; // the server closed: nothing was sent, nothing is owed
        }
        match read_response(&mut s, &mut buf) {
            Outcome::Complete(status, got) => {
                assert_eq!(status, 200, "client {id} request {i}");
                common::assert_bytes_eq(&got, &body, &format!("client {id} request {i}"));
                ok += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Outcome::Unanswered => break,
            Outcome::Truncated(n) => {
                panic!(
                    "client {id} request {i}: the connection ended after {n} bytes of the response"
                )
            }
        }
    }
    ok
}

backend_tests! {
    /// SIGTERM in the middle of a load (8 keep-alive clients POSTing 10 KB to /echo back to
    /// back): every response any client got is complete and byte-exact, none truncated;
    /// requests the server did not take before draining get no response at all; exit 0.
    fn sigterm_under_load_truncates_nothing(io: &str) {
        const CLIENTS: u64 = 8;
        let mut srv = Server::start_with_stats(io, &["--proto", "http", "--grace", "10s"]);
        let done = Arc::new(AtomicU64::new(0));
        // Each client connects here, before the load starts: a failed connect fails the test.
        let clients: Vec<_> = (0..CLIENTS)
            .map(|id| {
                let (s, done) = (load_connect(srv.addr, id), done.clone());
                std::thread::spawn(move || load_client(s, id, done))
            })
            .collect();
        // Signal once the load is well under way (bounded wait).
        assert!(
            poll_until(Duration::from_secs(30), || done.load(Ordering::Relaxed) >= 400),
            "the load did not get going: {} responses",
            done.load(Ordering::Relaxed)
        );
        srv.stop();
        let mut total = 0;
        for c in clients {
            total += c.join().expect("a client saw a truncated or wrong response");
        }
        let (status, stdout, stderr) = srv.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "exit {status}\nstderr:\n{stderr}\nstdout:\n{stdout}");
        let st = srv.stats();
        eprintln!("{total} complete responses; server: {}", st["total"]);
        assert!(total >= 400);
        // Every request the server took in was answered completely: none lost in the drain.
        assert_eq!(json_u64(&st, "total.requests"), total, "{st:#}");
        assert_eq!(json_u64(&st, "total.accepted"), json_u64(&st, "total.closed"), "{st:#}");
    }

    /// SIGTERM while delayed echoes are in flight (read by the server, held by `--delay 2s`, not
    /// one byte at the client): every connection still receives its whole echo and then EOF,
    /// the server exits 0 within the grace period, and a connection made after the signal is
    /// not served.
    fn graceful_shutdown_delivers_in_flight(io: &str) {
        const N: usize = 50;
        const GRACE: Duration = Duration::from_secs(10);
        let mut srv = Server::start_with_stats(io, &["--delay", "2s", "--grace", "10s"]);
        let mut conns: Vec<TcpStream> = (0..N).map(|_| srv.connect()).collect();
        let msgs: Vec<Vec<u8>> = (0..N).map(|i| pattern(i as u64, 1000 + 37 * i)).collect();
        let sent = Instant::now();
        for (c, m) in conns.iter_mut().zip(&msgs) {
            c.write_all(m).unwrap();
        }
        // The server must have read the messages before it is told to stop (it stops reading
        // then): wait until the kernel shows every byte acknowledged and read by the server.
        let ports: Vec<u16> = conns.iter().map(|c| c.local_addr().unwrap().port()).collect();
        assert!(
            poll_until(Duration::from_secs(5), || server_consumed(srv.addr.port(), &ports)),
            "the server did not read the messages within 5 s"
        );
        let since = sent.elapsed();
        if since < Duration::from_millis(50) {
            std::thread::sleep(Duration::from_millis(50) - since);
        }
        srv.stop();
        let signalled = Instant::now();
        // The premise, checked: the server read every message (above), and no echo byte had
        // reached any client when the signal went out (looked at after it, so nothing that came
        // later can hide an earlier arrival). Every echo was in flight at SIGTERM.
        for (i, c) in conns.iter().enumerate() {
            c.set_nonblocking(true).unwrap();
            let mut b = [0u8; 1];
            match c.peek(&mut b) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                other => panic!(
                    "connection {i}: {other:?} at SIGTERM, {:?} after the messages: its echo was \
                     not in flight",
                    signalled - sent
                ),
            }
            c.set_nonblocking(false).unwrap();
        }

        // A connection made after the signal: refused, or closed/reset without an echo.
        assert!(srv.wait_stderr("draining", Duration::from_secs(20)), "no draining message");
        // The loops notice the shutdown flag within a turn of the wake-up; there is no outside
        // signal for that moment, so give them a moment before connecting.
        std::thread::sleep(Duration::from_millis(50));
        let late = TcpStream::connect_timeout(&srv.addr, Duration::from_secs(5));
        let late_outcome = match late {
            Err(e) => format!("refused: {e}"),
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
                let _ = s.write_all(b"late");
                let mut buf = [0u8; 16];
                match s.read(&mut buf) {
                    Ok(0) => "closed".to_string(),
                    Ok(n) => panic!("a connection made after SIGTERM was served: {:?}", &buf[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                        ) =>
                    {
                        format!("reset: {e}")
                    }
                    Err(e) => panic!(
                        "a connection made after SIGTERM was neither refused nor closed: {e}"
                    ),
                }
            }
        };
        eprintln!("late connection: {late_outcome}");

        for (i, (c, m)) in conns.iter_mut().zip(&msgs).enumerate() {
            let got = read_to_eof(c, m.len())
                .unwrap_or_else(|e| panic!("connection {i}: {e} before its echo and EOF"));
            common::assert_bytes_eq(&got, m, &format!("connection {i}'s echo during shutdown"));
        }
        drop(conns);
        let (status, stdout, stderr) = srv.wait_exit(GRACE + Duration::from_secs(5));
        assert!(status.success(), "exit {status}\nstderr:\n{stderr}\nstdout:\n{stdout}");
        // Within the grace period: the drain needed only the 2 s delay, so taking the whole
        // grace period would mean connections were aborted rather than finished.
        assert!(
            signalled.elapsed() < GRACE,
            "exit {:?} after SIGTERM, beyond the grace period",
            signalled.elapsed()
        );
        assert!(stdout.contains("stats "), "the summary is printed at exit: {stdout:?}");
        let st = srv.stats();
        assert_eq!(json_u64(&st, "total.bytes_out"), json_u64(&st, "total.bytes_in"), "{st:#}");
        assert_eq!(
            json_u64(&st, "total.bytes_out"),
            msgs.iter().map(|m| m.len() as u64).sum::<u64>(),
            "{st:#}"
        );
    }

    /// A second SIGTERM while draining exits at once, with a failure status.
    fn second_signal_exits_at_once(io: &str) {
        let mut srv = Server::start(io, &["--delay", "20s", "--grace", "60s"]);
        let mut c = srv.connect();
        c.write_all(b"held for 20 s").unwrap();
        let port = c.local_addr().unwrap().port();
        assert!(
            poll_until(Duration::from_secs(5), || server_consumed(srv.addr.port(), &[port])),
            "the server did not read the message"
        );
        srv.stop();
        assert!(srv.wait_stderr("draining", Duration::from_secs(20)), "no draining message");
        let t = Instant::now();
        srv.stop();
        // Far less than the 20 s the drain would take: a no-hang bound, not a timing claim.
        let (status, _, stderr) = srv.wait_exit(Duration::from_secs(10));
        assert!(!status.success(), "second signal: exit {status} should be a failure");
        assert!(t.elapsed() < Duration::from_secs(10));
        assert!(stderr.contains("second signal"), "{stderr}");
    }

    /// `--cores 0,1`: the loop threads are pinned to their CPU; `--no-pin`: they keep the
    /// process's whole mask.
    fn threads_pinned(io: &str) {
        let cpus = two_cpus();
        let mut srv = Server::start(io, &["--cores", &cpu_arg(&cpus)]);
        assert_eq!(srv.cores, cpu_arg(&cpus), "ready line cores=");
        let threads = common::threads_of(srv.pid);
        for &cpu in &cpus {
            let name = loop_thread_name(io, cpu);
            let found: Vec<_> = threads.iter().filter(|(_, comm, _)| *comm == name).collect();
            assert_eq!(found.len(), 1, "one thread named {name:?} in {threads:?}");
            assert_eq!(
                common::parse_cpu_list(&found[0].2),
                vec![cpu],
                "thread {name:?} Cpus_allowed_list"
            );
        }
        srv.stop_and_wait(EXIT_TIMEOUT);

        let mut srv = Server::start(io, &["--cores", &cpu_arg(&cpus), "--no-pin"]);
        let status = std::fs::read_to_string(format!("/proc/{}/status", srv.pid)).unwrap();
        let process_mask = common::parse_cpu_list(
            common::proc_status_field(&status, "Cpus_allowed_list").unwrap(),
        );
        assert_eq!(process_mask, common::allowed_cpus(), "the server inherits our mask");
        let threads = common::threads_of(srv.pid);
        for &cpu in &cpus {
            let name = loop_thread_name(io, cpu);
            let found: Vec<_> = threads.iter().filter(|(_, comm, _)| *comm == name).collect();
            assert_eq!(found.len(), 1, "one thread named {name:?} in {threads:?}");
            assert_eq!(
                common::parse_cpu_list(&found[0].2),
                process_mask,
                "--no-pin thread {name:?} keeps the full mask"
            );
        }
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// `--cores 999`: exit non-zero with one line naming the CPU.
    fn error_missing_cpu(io: &str) {
        let f = start_failure(io, &["--cores", "999"]);
        assert!(!f.status.success(), "{f:?}");
        let lines: Vec<&str> = f.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "one line: {:?}", f.stderr);
        assert!(lines[0].contains("999"), "names the CPU: {:?}", lines[0]);
        assert!(f.stdout.is_empty(), "no ready line: {:?}", f.stdout);
    }

    /// A port already in use: exit 1 with "address already in use".
    fn error_address_in_use(io: &str) {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap().to_string();
        let f = start_failure(io, &["--listen", &addr]);
        assert_eq!(f.status.code(), Some(1), "{f:?}");
        assert!(
            f.stderr.to_lowercase().contains("address already in use"),
            "{:?}",
            f.stderr
        );
        assert!(f.stderr.contains(&addr), "names the address: {:?}", f.stderr);
        drop(taken);
    }

    /// A port already served by another ringlab-server is a port in use too: the second server
    /// must fail the same way instead of silently sharing the port through SO_REUSEPORT (the
    /// kernel would then split new connections between two unrelated servers).
    fn error_address_in_use_by_another_server(io: &str) {
        let mut first = Server::start(io, &[]);
        let addr = first.addr.to_string();
        match Server::try_start(io, &["--listen", &addr]) {
            Err(f) => {
                assert_eq!(f.status.code(), Some(1), "{f:?}");
                assert!(
                    f.stderr.to_lowercase().contains("address already in use"),
                    "{:?}",
                    f.stderr
                );
            }
            Ok(mut second) => {
                second.stop_and_wait(EXIT_TIMEOUT);
                first.stop_and_wait(EXIT_TIMEOUT);
                panic!(
                    "a second server started on {addr}, already served by pid {}: both now \
                     accept on it (SO_REUSEPORT)",
                    first.pid
                );
            }
        }
        first.stop_and_wait(EXIT_TIMEOUT);
    }

    /// Echo statistics: connections, bytes, and the syscalls of each IO model.
    fn stats_echo(io: &str) {
        let mut srv = Server::start_with_stats(io, &[]);
        let mut total = 0u64;
        for i in 0..3 {
            let mut c = srv.connect();
            let m = pattern(i, 50_000);
            c.write_all(&m).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            assert_eq!(read_to_eof(&mut c, m.len()).unwrap(), m);
            total += m.len() as u64;
        }
        srv.stop_and_wait(EXIT_TIMEOUT);
        let st = srv.stats();
        assert_eq!(st["io"], io, "{st:#}");
        assert_eq!(st["proto"], "echo", "{st:#}");
        assert_eq!(json_u64(&st, "pid"), u64::from(srv.pid), "{st:#}");
        assert_eq!(json_u64(&st, "total.accepted"), 3, "{st:#}");
        assert_eq!(json_u64(&st, "total.closed"), 3, "{st:#}");
        assert_eq!(json_u64(&st, "total.bytes_in"), total, "{st:#}");
        assert_eq!(json_u64(&st, "total.bytes_out"), total, "{st:#}");
        assert!(json_u64(&st, "total.requests") >= 3, "{st:#}");
        assert_eq!(st["per_core"].as_array().map(Vec::len), Some(1), "{st:#}");
        match io {
            "uring" => {
                assert!(json_u64(&st, "total.syscalls.io_uring_enter") > 0, "{st:#}");
                assert_eq!(json_u64(&st, "total.syscalls.recv"), 0, "{st:#}");
                assert_eq!(json_u64(&st, "total.syscalls.send"), 0, "{st:#}");
            }
            "epoll" => {
                assert!(json_u64(&st, "total.syscalls.recv") > 0, "{st:#}");
                assert!(json_u64(&st, "total.syscalls.epoll_wait") > 0, "{st:#}");
            }
            "poll" | "select" => {
                // The loop waits in its own syscall, never in epoll_wait, and registers
                // nothing with the kernel between waits.
                assert!(json_u64(&st, &format!("total.syscalls.{io}")) > 0, "{st:#}");
                assert_eq!(json_u64(&st, "total.syscalls.epoll_wait"), 0, "{st:#}");
                assert_eq!(json_u64(&st, "total.syscalls.epoll_ctl"), 0, "{st:#}");
                assert!(json_u64(&st, "total.syscalls.recv") > 0, "{st:#}");
            }
            _ => {}
        }
    }
}

/// A peer that sends without ever reading its echo holds output the server cannot write: when
/// `--grace` is over after SIGTERM the server aborts the connection (counted as closed) and
/// exits 0. `extra` adds server arguments.
fn grace_over_aborts_a_peer_that_never_reads(io: &str, extra: &[&str]) {
    let mut args = vec!["--grace", "1s"];
    args.extend_from_slice(extra);
    let mut srv = Server::start_with_stats(io, &args);
    let mut conns = common::load::small_buffer_conns(&srv, 1);
    let chunk = pattern(3, 64 * 1024);
    let sent = common::load::push_until_blocked(&mut conns, 64 << 20, |_| &chunk[..]);
    assert!(sent[0] > 0, "nothing written");
    srv.stop();
    // A no-hang bound far above the 1 s grace period, not a timing claim.
    let (status, stdout, stderr) = srv.wait_exit(Duration::from_secs(30));
    assert!(
        status.success(),
        "exit {status}\nstderr:\n{stderr}\nstdout:\n{stdout}"
    );
    let st = srv.stats();
    assert_eq!(json_u64(&st, "total.accepted"), 1, "{st:#}");
    assert_eq!(
        json_u64(&st, "total.closed"),
        1,
        "the connection was not aborted when the grace period ended: {st:#}"
    );
    drop(conns);
}

backend_tests! {
    /// See [`grace_over_aborts_a_peer_that_never_reads`]: on every backend.
    fn grace_over_aborts_a_stuck_peer(io: &str) {
        grace_over_aborts_a_peer_that_never_reads(io, &[]);
    }
}

/// The same with `--fixed-files` (uring): such a connection has no process descriptor, and
/// must be aborted all the same.
#[test]
fn grace_over_aborts_a_stuck_peer_fixed_files() {
    if common::skip_backend("uring") {
        return;
    }
    grace_over_aborts_a_peer_that_never_reads("uring", &["--fixed-files"]);
}

/// `--buf-count` must be a power of two (uring): a clear error, exit non-zero.
#[test]
fn error_buf_count_not_power_of_two_uring() {
    if common::skip_backend("uring") {
        return;
    }
    for bad in ["3", "0"] {
        let f = start_failure("uring", &["--buf-count", bad]);
        assert!(!f.status.success(), "{f:?}");
        assert!(
            f.stderr.contains("--buf-count") && f.stderr.contains("power of two"),
            "{:?}",
            f.stderr
        );
        assert!(f.stderr.contains(bad), "names the value: {:?}", f.stderr);
    }
}

/// The skip rule: only exit code 2 with an io_uring message means "io_uring unavailable".
#[test]
fn uring_unavailable_is_recognised() {
    use std::os::unix::process::ExitStatusExt;
    let failure = |code: i32, stderr: &str| common::StartFailure {
        status: std::process::ExitStatus::from_raw(code << 8),
        stdout: String::new(),
        stderr: stderr.to_string(),
    };
    let disabled = "ringlab-server: io_uring is disabled: kernel.io_uring_disabled=2 (...)\n";
    assert_eq!(
        common::uring_unavailable_reason(&failure(2, disabled)).as_deref(),
        Some(disabled.trim())
    );
    assert_eq!(
        common::uring_unavailable_reason(&failure(1, disabled)),
        None
    );
    assert_eq!(
        common::uring_unavailable_reason(&failure(2, "error: unexpected argument '--x'")),
        None
    );
}

/// A server whose stdout and stderr are gone (the pipe's reader exited: `ringlab-server ... |
/// head -1`) still drains on SIGTERM, exits 0 and writes its statistics file. Before, the
/// signal thread's log line panicked it (writing to a closed stderr), SIGTERM was ignored from
/// then on and the server ran forever.
#[test]
fn sigterm_still_stops_a_server_whose_output_pipes_are_closed() {
    use std::io::BufRead;
    let stats = common::temp_path("closed-pipes.json");
    let mut child = std::process::Command::new(common::BIN)
        .args(["--io", "epoll", "--listen", "127.0.0.1:0", "--stats-json"])
        .arg(&stats)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert!(ready.starts_with("ready "), "{ready:?}");
    // Both readers are dropped above and here: the pipes are closed.
    drop(child.stderr.take());
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let exited = poll_until(Duration::from_secs(15), || {
        child.try_wait().ok().flatten().is_some()
    });
    if !exited {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the server ignored SIGTERM once its output pipes were closed");
    }
    let st = child.wait().unwrap();
    assert!(st.success(), "{st}");
    let text = std::fs::read_to_string(&stats).expect("the statistics file");
    let _ = std::fs::remove_file(&stats);
    assert!(text.contains("\"requests\""), "{text}");
}
