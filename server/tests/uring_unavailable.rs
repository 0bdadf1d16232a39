//! When io_uring cannot be used, the uring backends stop at once with exit code 2 and one line
//! that says why and suggests `--io epoll`; nothing falls back silently. Here io_uring_setup is
//! denied by a seccomp filter, as Docker's default profile does, and epoll still starts under
//! the same filter.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

/// `io_uring_setup` has number 425 on every architecture (it came after the syscall tables
/// were unified).
const SYS_IO_URING_SETUP: i64 = 425;
const EPERM: u32 = 1;

fn deny_io_uring() -> BpfProgram {
    let rules = BTreeMap::from([(SYS_IO_URING_SETUP, vec![])]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(EPERM),
        std::env::consts::ARCH
            .try_into()
            .expect("a seccomp-capable architecture"),
    )
    .expect("filter");
    filter.try_into().expect("compile filter")
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The server exited by itself with this code.
    Exited(Option<i32>),
    /// Still running at the time limit (then stopped with SIGTERM).
    StillRunning,
}

/// Run the server with io_uring denied; returns its outcome, stdout and stderr.
fn run_denied(io: &str, limit: Duration) -> (Outcome, String, String) {
    let prog = deny_io_uring();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringlab-server"));
    cmd.args(["--io", io, "--listen", "127.0.0.1:0", "--cores", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure runs in the forked child before exec; it only makes the prctl and
    // seccomp syscalls on a program compiled before the fork (no allocation, no locks).
    unsafe {
        cmd.pre_exec(move || {
            seccompiler::apply_filter(&prog).map_err(|e| std::io::Error::other(e.to_string()))
        });
    }
    let mut child = cmd.spawn().expect("spawn ringlab-server");
    let deadline = Instant::now() + limit;
    let outcome = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Outcome::Exited(st.code());
        }
        if Instant::now() > deadline {
            let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            child.wait().expect("wait after TERM");
            break Outcome::StillRunning;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let (mut out, mut err) = (String::new(), String::new());
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_string(&mut out)
        .expect("read stdout");
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut err)
        .expect("read stderr");
    (outcome, out, err)
}

#[test]
fn uring_backends_exit_2_with_one_line_when_seccomp_denies_io_uring() {
    for io in ["uring", "tokio-uring"] {
        let (outcome, out, err) = run_denied(io, Duration::from_secs(10));
        assert_eq!(
            outcome,
            Outcome::Exited(Some(2)),
            "--io {io}; stderr: {err}"
        );
        assert!(
            !out.contains("ready"),
            "--io {io} must not become ready: {out}"
        );
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "--io {io}: expected one line, got: {err}");
        assert!(
            lines[0].contains("seccomp"),
            "--io {io}: names the cause: {err}"
        );
        assert!(
            lines[0].contains("--io epoll"),
            "--io {io}: suggests the fix: {err}"
        );
    }
}

#[test]
fn epoll_starts_under_the_same_filter() {
    // The filter denies only io_uring: epoll becomes ready and is stopped by the time limit.
    let (outcome, out, err) = run_denied("epoll", Duration::from_millis(1500));
    assert!(
        out.contains("ready listen=127.0.0.1:"),
        "epoll did not start: {err}"
    );
    assert_eq!(outcome, Outcome::StillRunning, "stderr: {err}");
}
