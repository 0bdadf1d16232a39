// Over 800 lines: the one harness every server test file shares (server process, skip guards, HTTP client, /proc readers); `load` is split out.
//! The conformance suite's harness: start the real `ringlab-server` binary, wait for its ready
//! line, talk to it over loopback, signal it by PID, read its exit statistics.
//!
//! Rules every test follows: every network operation has a timeout, every loop is bounded in
//! count and time, traffic goes only to 127.0.0.1, and a server is only ever signalled by the PID
//! of the child this harness started (never by name).
//!
//! [`backend_tests!`] runs each test body once per backend; the backends are listed in one
//! place, [`for_each_backend!`].

#![allow(dead_code)] // each test file uses a different part of the harness

pub mod load;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The server binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ringlab-server");
/// How long a server may take to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Read/write timeout of test sockets: a no-hang bound, never a timing assertion.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a server may take to exit after SIGTERM when nothing is in flight.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// Define tests that run once per backend.
///
/// ```ignore
/// backend_tests! {
///     fn echoes(io: &str) { let srv = common::Server::start(io, &[]); ... }
/// }
/// ```
///
/// expands to `mod echoes { #[test] fn uring() {..} #[test] fn epoll() {..} }`, each calling the
/// body with its backend's `--io` name, after skipping a backend this machine cannot run (see
/// [`skip_backend`]). Attributes before `fn` (e.g. `#[ignore]`) go on every generated test.
#[macro_export]
macro_rules! backend_tests {
    () => {};
    ($(#[$meta:meta])* fn $name:ident($io:ident : &str) $body:block $($rest:tt)*) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            fn body($io: &str) $body

            $crate::for_each_backend!(body $(#[$meta])*);
        }
        $crate::backend_tests!($($rest)*);
    };
}

/// `--workers` for the blocking backend when a test does not choose: above the 1,000
/// concurrent connections of the largest test.
pub const BLOCKING_WORKERS: &str = "1100";

/// The backends every [`backend_tests!`] body runs against: `(test fn name, --io value)`.
/// Adding a backend (`tokio_uring`/"tokio-uring", `tokio`, `blocking`) is one line here, e.g.
/// `$crate::backend_test!(tokio_uring, "tokio-uring", $body $(#[$meta])*);`; [`skip_backend`]
/// already treats every `*uring*` backend as needing io_uring. Some bodies then need
/// backend-specific expectations: loop-thread names in `threads_pinned` (the pool backends name
/// their threads differently, and /proc truncates names to 15 bytes), and the blocking backend
/// serves one connection per worker, so it needs `--workers` at least the test's concurrency.
#[macro_export]
macro_rules! for_each_backend {
    ($body:ident $(#[$meta:meta])*) => {
        $crate::backend_test!(uring, "uring", $body $(#[$meta])*);
        $crate::backend_test!(epoll, "epoll", $body $(#[$meta])*);
        $crate::backend_test!(tokio_uring, "tokio-uring", $body $(#[$meta])*);
        $crate::backend_test!(tokio, "tokio", $body $(#[$meta])*);
        $crate::backend_test!(blocking, "blocking", $body $(#[$meta])*);
        $crate::backend_test!(poll, "poll", $body $(#[$meta])*);
        $crate::backend_test!(select, "select", $body $(#[$meta])*);
    };
}

/// One generated test: skip the backend if this machine cannot run it, else run the body.
#[macro_export]
macro_rules! backend_test {
    ($fname:ident, $io:literal, $body:ident $(#[$meta:meta])*) => {
        #[test]
        $(#[$meta])*
        fn $fname() {
            if $crate::common::skip_backend($io) {
                return;
            }
            $body($io)
        }
    };
}

/// Whether the tests for backend `io` must be skipped on this machine.
///
/// io_uring can be unavailable (old kernel, `kernel.io_uring_disabled`, a seccomp profile); the
/// server then exits with code 2 and says why on stderr. That is detected once per test binary
/// by starting a uring server. With `RINGLAB_REQUIRE_URING=1` an unavailable io_uring fails the
/// test instead of skipping it.
pub fn skip_backend(io: &str) -> bool {
    if !io.contains("uring") {
        return false;
    }
    // One probe per backend and test binary.
    static PROBES: OnceLock<Mutex<HashMap<String, Result<(), String>>>> = OnceLock::new();
    let probes = PROBES.get_or_init(Mutex::default);
    let mut probes = probes.lock().unwrap_or_else(|e| e.into_inner());
    let probe = probes
        .entry(io.to_string())
        .or_insert_with(|| match Server::try_start(io, &[]) {
            Ok(mut srv) => {
                srv.stop_and_wait(EXIT_TIMEOUT);
                Ok(())
            }
            // Another failure is not a missing io_uring: the test itself will fail on it.
            Err(f) => uring_unavailable_reason(&f).map_or(Ok(()), Err),
        })
        .clone();
    drop(probes);
    skip_unless("RINGLAB_REQUIRE_URING", "io_uring unavailable", probe)
}

/// The skip guard: whether a test must be skipped because this machine lacks what it needs
/// (`available` says why not). Prints "skipped: WHAT: REASON" and returns `true`, unless the
/// environment variable `require` is `1` (`.ci/run` sets them), which makes it a failure.
pub fn skip_unless(require: &str, what: &str, available: Result<(), String>) -> bool {
    let Err(reason) = available else {
        return false;
    };
    if std::env::var(require).is_ok_and(|v| v == "1") {
        panic!("{require}=1 but {what}: {reason}");
    }
    println!("skipped: {what}: {reason}");
    eprintln!("skipped: {what}: {reason}");
    true
}

/// Why io_uring is unavailable, if that is how the server failed to start: exit code 2 and a
/// message about io_uring (the server's contract for a missing io_uring).
pub fn uring_unavailable_reason(f: &StartFailure) -> Option<String> {
    (f.status.code() == Some(2) && f.stderr.contains("io_uring"))
        .then(|| f.stderr.trim().to_string())
}

/// A server that exited before it printed its ready line.
#[derive(Debug)]
pub struct StartFailure {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A running `ringlab-server` child process.
pub struct Server {
    /// The address it listens on (from the ready line).
    pub addr: SocketAddr,
    /// Its PID (from the ready line, checked against the child's).
    pub pid: u32,
    /// The backend (`--io`).
    pub io: String,
    /// The `cores=` of the ready line.
    pub cores: String,
    /// Where `--stats-json` writes, if the server was started with [`Server::start_with_stats`].
    pub stats_path: Option<PathBuf>,
    /// The whole ready line.
    pub ready: String,
    child: Child,
    exited: Option<ExitStatus>,
    stdout_rx: Receiver<String>,
    stdout_thread: Option<JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
}

fn spawn_stdout(out: ChildStdout) -> (Receiver<String>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let t = thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (rx, t)
}

fn spawn_stderr(err: ChildStderr) -> (Arc<Mutex<String>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(String::new()));
    let b = buf.clone();
    let t = thread::spawn(move || {
        let mut r = BufReader::new(err);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => b.lock().unwrap().push_str(&line),
            }
        }
    });
    (buf, t)
}

fn signal_pid(pid: u32, sig: rustix::process::Signal) -> std::io::Result<()> {
    let raw = i32::try_from(pid).map_err(std::io::Error::other)?;
    let pid = rustix::process::Pid::from_raw(raw)
        .ok_or_else(|| std::io::Error::other("pid 0 is not a process"))?;
    rustix::process::kill_process(pid, sig).map_err(std::io::Error::from)
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

/// A fresh path under Cargo's temporary directory for integration tests.
pub fn temp_path(what: &str) -> PathBuf {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ringlab-{what}-{}-{n}", std::process::id()))
}

impl Server {
    /// Start `ringlab-server --listen 127.0.0.1:0 --io IO ARGS...` (no `--listen` of ours if
    /// ARGS has one) and wait for its ready line; panics (with the server's stderr) if it does
    /// not start.
    pub fn start(io: &str, args: &[&str]) -> Server {
        match Server::try_start(io, args) {
            Ok(s) => s,
            Err(f) => panic!(
                "ringlab-server --io {io} {args:?} exited before it was ready ({}):\nstderr:\n{}\nstdout:\n{}",
                f.status, f.stderr, f.stdout
            ),
        }
    }

    /// Like [`Server::start`], with `--stats-json FILE` added; read it with [`Server::stats`].
    pub fn start_with_stats(io: &str, args: &[&str]) -> Server {
        let path = temp_path("stats.json");
        let p = path.to_str().expect("utf-8 temp path").to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--stats-json", p.as_str()]);
        let mut s = Server::start(io, &all);
        s.stats_path = Some(path);
        s
    }

    /// Start a server; `Err` if it exits before its ready line. Panics if it neither gets ready
    /// nor exits within [`READY_TIMEOUT`] (the child is killed).
    pub fn try_start(io: &str, args: &[&str]) -> Result<Server, StartFailure> {
        Server::try_start_with_nofile(io, args, None)
    }

    /// Like [`Server::start`], with the server's descriptor limit (`RLIMIT_NOFILE`, soft and
    /// hard) set to `nofile`.
    pub fn start_with_nofile(io: &str, args: &[&str], nofile: u64) -> Server {
        match Server::try_start_with_nofile(io, args, Some(nofile)) {
            Ok(s) => s,
            Err(f) => panic!("ringlab-server --io {io} {args:?} (nofile {nofile}) failed: {f:?}"),
        }
    }

    fn try_start_with_nofile(
        io: &str,
        args: &[&str],
        nofile: Option<u64>,
    ) -> Result<Server, StartFailure> {
        let mut cmd = Command::new(BIN);
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            let lim = rustix::process::Rlimit {
                current: Some(n),
                maximum: Some(n),
            };
            // SAFETY: runs in the forked child before exec and makes one setrlimit syscall on a
            // value built before the fork: no allocation, no locks.
            unsafe {
                cmd.pre_exec(move || {
                    rustix::process::setrlimit(rustix::process::Resource::Nofile, lim)
                        .map_err(std::io::Error::from)
                });
            }
        }
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        // The blocking backend serves one connection per worker: give it as many workers as the
        // most concurrent connections any test opens, unless the test sets --workers itself.
        if io == "blocking" && !args.contains(&"--workers") {
            cmd.args(["--workers", BLOCKING_WORKERS]);
        }
        let mut child = cmd
            .args(["--io", io])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {BIN}: {e}"));
        let (stdout_rx, stdout_thread) = spawn_stdout(child.stdout.take().expect("piped stdout"));
        let (stderr, stderr_thread) = spawn_stderr(child.stderr.take().expect("piped stderr"));
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut early = Vec::new();
        let ready = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match stdout_rx.recv_timeout(left) {
                Ok(line) if line.starts_with("ready ") => break Some(line),
                Ok(line) => early.push(line),
                Err(RecvTimeoutError::Disconnected) => break None,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = signal_pid(child.id(), rustix::process::Signal::KILL);
                    let _ = child.wait();
                    let _ = stderr_thread.join();
                    panic!(
                        "ringlab-server --io {io} {args:?} printed no ready line within {READY_TIMEOUT:?}\nstderr:\n{}\nstdout:\n{}",
                        stderr.lock().unwrap(),
                        early.join("\n")
                    );
                }
            }
        };
        let Some(ready) = ready else {
            // stdout closed: the process is exiting; collect how.
            let status = wait_child(&mut child, READY_TIMEOUT).unwrap_or_else(|| {
                let _ = signal_pid(child.id(), rustix::process::Signal::KILL);
                let _ = child.wait();
                panic!("ringlab-server closed stdout without a ready line but did not exit")
            });
            let _ = stdout_thread.join();
            let _ = stderr_thread.join();
            let stderr = stderr.lock().unwrap().clone();
            return Err(StartFailure {
                status,
                stdout: early.join("\n"),
                stderr,
            });
        };
        let field = |k: &str| {
            ready
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(k)?.strip_prefix('='))
                .unwrap_or_else(|| panic!("ready line {ready:?} has no {k}="))
                .to_string()
        };
        let addr: SocketAddr = field("listen").parse().expect("listen= is an address");
        let pid: u32 = field("pid").parse().expect("pid= is a number");
        assert_eq!(pid, child.id(), "ready line pid= is the child's PID");
        assert_eq!(field("io"), io, "ready line io=");
        assert!(addr.ip().is_loopback(), "listening on loopback: {addr}");
        assert_ne!(addr.port(), 0, "port 0 resolved in the ready line");
        Ok(Server {
            addr,
            pid,
            io: io.to_string(),
            cores: field("cores"),
            stats_path: None,
            ready: ready.clone(),
            child,
            exited: None,
            stdout_rx,
            stdout_thread: Some(stdout_thread),
            stderr,
            stderr_thread: Some(stderr_thread),
        })
    }

    /// Send SIGTERM (graceful shutdown; a second one exits at once).
    pub fn stop(&self) {
        self.signal(rustix::process::Signal::TERM);
    }

    /// Send `sig` to the server, by PID.
    pub fn signal(&self, sig: rustix::process::Signal) {
        assert!(self.exited.is_none(), "signalling a server that exited");
        signal_pid(self.pid, sig).unwrap_or_else(|e| panic!("kill({}, {sig:?}): {e}", self.pid));
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited.is_none()
    }

    /// Wait for the server to exit; returns its status, the rest of its stdout (after the
    /// ready line) and its whole stderr. Panics if it does not exit within `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> (ExitStatus, String, String) {
        let status = match self.exited {
            Some(s) => s,
            None => match wait_child(&mut self.child, timeout) {
                Some(s) => s,
                None => panic!(
                    "ringlab-server (pid {}) did not exit within {timeout:?}\nstderr:\n{}",
                    self.pid,
                    self.stderr_now()
                ),
            },
        };
        self.exited = Some(status);
        if let Some(t) = self.stdout_thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        let stdout: Vec<String> = self.stdout_rx.try_iter().collect();
        (status, stdout.join("\n"), self.stderr_now())
    }

    /// SIGTERM, then wait for a successful exit; returns stdout after the ready line.
    pub fn stop_and_wait(&mut self, timeout: Duration) -> String {
        self.stop();
        let (status, stdout, stderr) = self.wait_exit(timeout);
        assert!(
            status.success(),
            "server exited with {status} after SIGTERM\nstderr:\n{stderr}\nstdout:\n{stdout}"
        );
        stdout
    }

    /// The exit statistics written by `--stats-json` (after the server has exited).
    pub fn stats(&mut self) -> serde_json::Value {
        assert!(self.exited.is_some(), "stats are written at exit");
        let path = self
            .stats_path
            .clone()
            .expect("server started with start_with_stats");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "reading {}: {e}\nstderr:\n{}",
                path.display(),
                self.stderr_now()
            )
        });
        let _ = std::fs::remove_file(&path);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stats JSON {text:?}: {e}"))
    }

    /// What the server wrote to stderr so far.
    pub fn stderr_now(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait (polling, bounded) until stderr contains `pat`; returns whether it did.
    pub fn wait_stderr(&self, pat: &str, timeout: Duration) -> bool {
        poll_until(timeout, || self.stderr_now().contains(pat))
    }

    /// Resident memory of the server, from /proc/PID/status, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("/proc/PID/status");
        proc_status_field(&status, "VmRSS")
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Descriptors the server has open, from /proc/PID/fd.
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid))
            .expect("/proc/PID/fd")
            .count()
    }

    /// Connect a blocking client socket (with [`IO_TIMEOUT`] read/write timeouts).
    pub fn connect(&self) -> TcpStream {
        connect(self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exited.is_none() && matches!(self.child.try_wait(), Ok(None)) {
            // Still our unreaped child, so the PID cannot have been reused.
            let _ = signal_pid(self.pid, rustix::process::Signal::KILL);
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- ringlab-server --io {} (pid {}) stderr ---\n{}",
                self.io,
                self.pid,
                self.stderr_now()
            );
        }
        if let Some(p) = &self.stats_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Wait for a child to exit, polling with a bounded deadline.
fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// Run a server that is expected to fail at start; returns how it failed.
pub fn start_failure(io: &str, args: &[&str]) -> StartFailure {
    match Server::try_start(io, args) {
        Ok(mut s) => {
            s.stop();
            let _ = s.wait_exit(EXIT_TIMEOUT);
            panic!("ringlab-server --io {io} {args:?} started but should have failed");
        }
        Err(f) => f,
    }
}

/// Run `ringlab-server ARGS --listen 127.0.0.1:0` (ARGS names the backend) and assert that it
/// refuses to start with exactly one line on stderr containing `says`.
#[track_caller]
pub fn assert_refused_in_one_line(args: &[&str], says: &str) {
    let out = Command::new(BIN)
        .args(args)
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("run ringlab-server");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} was accepted");
    assert!(err.contains(says), "{args:?}: stderr {err:?}");
    assert_eq!(
        err.trim().lines().count(),
        1,
        "{args:?}: one line, got {err:?}"
    );
}

/// Poll `f` every few milliseconds until it holds or `timeout` passes.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

/// A blocking connection to `addr` with connect, read and write timeouts.
pub fn connect(addr: SocketAddr) -> TcpStream {
    assert!(addr.ip().is_loopback(), "tests only talk to loopback");
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Read until EOF (bounded by the socket's read timeout and `max` bytes).
pub fn read_to_eof(s: &mut TcpStream, max: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > max {
                    return Err(std::io::Error::other(format!(
                        "more than {max} bytes before EOF"
                    )));
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Where two byte strings first differ, for failure messages.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// Assert that `got` equals `want` without dumping megabytes on failure.
#[track_caller]
pub fn assert_bytes_eq(got: &[u8], want: &[u8], what: &str) {
    if let Some(i) = first_difference(got, want) {
        panic!(
            "{what}: got {} bytes, want {}; first difference at byte {i} (got {:?}, want {:?})",
            got.len(),
            want.len(),
            got.get(i),
            want.get(i)
        );
    }
}

/// Deterministic pseudo-random bytes for message `id` (xorshift: cheap in debug builds).
pub fn pattern(id: u64, len: usize) -> Vec<u8> {
    let mut x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A field of a /proc status file (`Name:\tvalue`), trimmed.
pub fn proc_status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// `(tid, comm, Cpus_allowed_list)` of every thread of process `pid`.
pub fn threads_of(pid: u32) -> Vec<(u32, String, String)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task") {
        let e = e.expect("task entry");
        let Ok(tid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
        let cpus = proc_status_field(&status, "Cpus_allowed_list")
            .unwrap_or_default()
            .to_string();
        out.push((tid, comm.trim().to_string(), cpus));
    }
    out
}

/// The CPUs this (test) process may run on, from /proc/self/status.
pub fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let list = proc_status_field(&status, "Cpus_allowed_list").expect("Cpus_allowed_list");
    parse_cpu_list(list)
}

/// Parse a kernel CPU list (`0-3,5`).
pub fn parse_cpu_list(list: &str) -> Vec<usize> {
    let mut v = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => v.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap()),
            None => v.push(part.parse().unwrap()),
        }
    }
    v
}

/// One TCP socket as /proc/net/tcp shows it.
#[derive(Debug, Clone, Copy)]
pub struct TcpEntry {
    pub local_port: u16,
    pub remote_port: u16,
    pub state: u8,
    /// Bytes sent and not yet acknowledged.
    pub tx_queue: u64,
    /// Bytes received and not yet read by the application.
    pub rx_queue: u64,
}

/// Every IPv4 TCP socket of this network namespace.
pub fn proc_net_tcp() -> Vec<TcpEntry> {
    let text = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp");
    let port = |a: &str| {
        let p = a.rsplit(':').next().unwrap_or("0");
        u16::from_str_radix(p, 16).unwrap_or(0)
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (tx, rx) = f.get(4)?.split_once(':')?;
            Some(TcpEntry {
                local_port: port(f.get(1)?),
                remote_port: port(f.get(2)?),
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                tx_queue: u64::from_str_radix(tx, 16).ok()?,
                rx_queue: u64::from_str_radix(rx, 16).ok()?,
            })
        })
        .collect()
}

/// Whether every byte the clients (`client_ports`) sent to the server on `server_port` has been
/// acknowledged and read by the server application (a real signal, not a sleep).
pub fn server_consumed(server_port: u16, client_ports: &[u16]) -> bool {
    let entries = proc_net_tcp();
    client_ports.iter().all(|&cp| {
        let client_done = entries
            .iter()
            .any(|e| e.local_port == cp && e.remote_port == server_port && e.tx_queue == 0);
        let server_done = entries
            .iter()
            .any(|e| e.local_port == server_port && e.remote_port == cp && e.rx_queue == 0);
        client_done && server_done
    })
}

/// A JSON number as u64, with a readable failure.
#[track_caller]
pub fn json_u64(v: &serde_json::Value, path: &str) -> u64 {
    let mut cur = v;
    for k in path.split('.') {
        cur = &cur[k];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("stats {path} is not a number in {v:#}"))
}

// ---------------------------------------------------------------------------------------------
// HTTP/1.x client side, just enough to check the server byte by byte.

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The response exactly as received.
    pub raw: Vec<u8>,
}

impl Response {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether a `Connection` header lists `token`.
    pub fn connection_has(&self, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The raw bytes with the `Date` value blanked (it changes once a second).
    pub fn raw_without_date(&self) -> Vec<u8> {
        let text = String::from_utf8_lossy(&self.raw);
        let head_end = text.find("\r\n\r\n").map_or(text.len(), |i| i + 4);
        let mut out = String::new();
        for line in text[..head_end].split_inclusive("\r\n") {
            if line.len() >= 5 && line[..5].eq_ignore_ascii_case("date:") {
                out.push_str("Date: <blanked>\r\n");
            } else {
                out.push_str(line);
            }
        }
        let mut v = out.into_bytes();
        v.extend_from_slice(&self.raw[head_end.min(self.raw.len())..]);
        v
    }
}

/// A blocking HTTP client connection that keeps unparsed bytes between responses.
pub struct HttpConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

const MAX_RESPONSE: usize = 16 * 1024 * 1024;

impl HttpConn {
    pub fn new(stream: TcpStream) -> Self {
        HttpConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Send raw bytes.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("sending a request");
    }

    /// Send a request and read its response.
    pub fn request(&mut self, bytes: &[u8]) -> Response {
        self.send(bytes);
        self.response()
    }

    fn fill(&mut self) -> std::io::Result<usize> {
        let mut tmp = [0u8; 16 * 1024];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn need(&mut self, n: usize, what: &str) {
        while self.buf.len() < n {
            match self.fill() {
                Ok(0) => panic!(
                    "connection closed in the middle of {what}; have {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
                Ok(_) => {}
                Err(e) => panic!(
                    "reading {what}: {e}; have {:?}",
                    String::from_utf8_lossy(&self.buf)
                ),
            }
            assert!(self.buf.len() <= MAX_RESPONSE, "response too large");
        }
    }

    /// Read exactly one response (Content-Length or chunked body).
    pub fn response(&mut self) -> Response {
        self.response_to(false)
    }

    /// The response to a `HEAD` request: its head only (its `Content-Length` is the body a
    /// `GET` would get).
    pub fn head_response(&mut self) -> Response {
        self.response_to(true)
    }

    fn response_to(&mut self, head_request: bool) -> Response {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            let have = self.buf.len();
            self.need(have + 1, "a response head");
            assert!(self.buf.len() <= 64 * 1024, "response head too large");
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .unwrap_or_else(|_| panic!("response head is not UTF-8: {:?}", &self.buf[..head_end]))
            .to_string();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_string();
        assert!(
            version == "HTTP/1.1" || version == "HTTP/1.0",
            "bad status line {status_line:?}"
        );
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let mut headers = Vec::new();
        for l in lines.filter(|l| !l.is_empty()) {
            let (k, v) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("bad header line {l:?}"));
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
        let mut r = Response {
            version,
            status,
            headers,
            body: Vec::new(),
            raw: Vec::new(),
        };
        let chunked = r
            .header("transfer-encoding")
            .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
        let end = if chunked {
            let mut pos = head_end;
            loop {
                let line_end = loop {
                    if let Some(i) = find(&self.buf[pos..], b"\r\n") {
                        break pos + i;
                    }
                    let have = self.buf.len();
                    self.need(have + 1, "a chunk size");
                };
                let size_text = std::str::from_utf8(&self.buf[pos..line_end]).unwrap_or("");
                let size_hex = size_text.split(';').next().unwrap_or("").trim();
                let size = usize::from_str_radix(size_hex, 16)
                    .unwrap_or_else(|_| panic!("bad chunk size line {size_text:?}"));
                pos = line_end + 2;
                if size == 0 {
                    // No trailers expected: the final CRLF.
                    self.need(pos + 2, "the end of a chunked body");
                    assert_eq!(&self.buf[pos..pos + 2], b"\r\n", "trailers not expected");
                    break pos + 2;
                }
                self.need(pos + size + 2, "a chunk");
                r.body.extend_from_slice(&self.buf[pos..pos + size]);
                assert_eq!(&self.buf[pos + size..pos + size + 2], b"\r\n", "chunk end");
                pos += size + 2;
            }
        } else if let Some(cl) = r.header("content-length").filter(|_| !head_request) {
            let n: usize = cl
                .parse()
                .unwrap_or_else(|_| panic!("Content-Length {cl:?}"));
            assert!(n <= MAX_RESPONSE, "Content-Length {n} too large");
            self.need(head_end + n, "a response body");
            r.body = self.buf[head_end..head_end + n].to_vec();
            head_end + n
        } else {
            assert!(
                head_request || status < 200 || status == 204 || status == 304,
                "response {status} has neither Content-Length nor chunked body: {head:?}"
            );
            head_end
        };
        r.raw = self.buf.drain(..end).collect();
        r
    }

    /// Block until at least one byte of the next response is here; returns when it arrived.
    pub fn wait_first_byte(&mut self) -> Instant {
        if self.buf.is_empty() {
            self.need(1, "the first byte of a response");
        }
        Instant::now()
    }

    /// Bytes received but not part of a parsed response.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }

    /// Expect a clean EOF next (no more bytes, no reset), within the read timeout.
    #[track_caller]
    pub fn expect_eof(&mut self) {
        assert!(
            self.buf.is_empty(),
            "unexpected bytes after the last response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        match self.fill() {
            Ok(0) => {}
            Ok(_) => panic!(
                "expected EOF, got more bytes: {:?}",
                String::from_utf8_lossy(&self.buf)
            ),
            Err(e) => panic!("expected a clean EOF, got {e}"),
        }
    }

    /// Expect that nothing arrives and the connection stays open for `quiet`.
    #[track_caller]
    pub fn expect_open_and_quiet(&mut self, quiet: Duration) {
        self.stream.set_read_timeout(Some(quiet)).unwrap();
        let r = self.fill();
        self.stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        match r {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Ok(0) => panic!("the server closed the connection"),
            Ok(_) => panic!("unexpected bytes: {:?}", String::from_utf8_lossy(&self.buf)),
            Err(e) => panic!("connection failed: {e}"),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `GET path HTTP/1.1` with a Host header.
pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes()
}

/// `POST path HTTP/1.1` with a Content-Length body.
pub fn post(path: &str, body: &[u8]) -> Vec<u8> {
    let mut v = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}
