//! `--processes N`: N server processes on one port, started, signalled and summed by the first.
//!
//! Every PID signalled here is the server this test started, or a worker that its ready line
//! names and that /proc shows as that server's child.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{
    json_u64, pattern, poll_until, proc_status_field, skip_backend, Server, EXIT_TIMEOUT,
};

/// Up to two CPUs this process may use, as a `--cores` list.
fn cores_arg() -> String {
    common::allowed_cpus()
        .into_iter()
        .take(2)
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The `pids=` of a ready line.
fn ready_pids(srv: &Server) -> Vec<u32> {
    let pids = srv
        .ready
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("pids="))
        .unwrap_or_else(|| panic!("ready line {:?} has no pids=", srv.ready));
    pids.split(',')
        .map(|p| p.parse().expect("pids= lists numbers"))
        .collect()
}

/// The parent PID of `pid`, if it is alive (not a zombie).
fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let state = proc_status_field(&status, "State")?;
    if state.starts_with('Z') || state.starts_with('X') {
        return None;
    }
    proc_status_field(&status, "PPid")?.parse().ok()
}

/// Start a 3-process group and check its shape: 3 PIDs, the first the server itself, each of
/// the others alive and its child.
fn start_group(io: &str) -> (Server, Vec<u32>) {
    let cores = cores_arg();
    let srv = Server::start_with_stats(io, &["--processes", "3", "--cores", &cores]);
    assert!(
        srv.ready.contains(" processes=3 "),
        "ready line: {:?}",
        srv.ready
    );
    assert_eq!(srv.cores, cores, "cores= lists every CPU of the group");
    let pids = ready_pids(&srv);
    assert_eq!(pids.len(), 3, "three processes: {:?}", srv.ready);
    assert_eq!(pids[0], srv.pid, "the first of pids= is the first process");
    for &p in &pids[1..] {
        assert_ne!(p, srv.pid);
        assert_eq!(
            parent_of(p),
            Some(srv.pid),
            "worker {p} is alive and the first process's child"
        );
    }
    (srv, pids)
}

fn echo_round(srv: &Server, conns: usize) {
    let mut socks: Vec<_> = (0..conns).map(|_| srv.connect()).collect();
    for (i, s) in socks.iter_mut().enumerate() {
        s.write_all(&pattern(i as u64, 100 + i)).unwrap();
    }
    for (i, s) in socks.iter_mut().enumerate() {
        let want = pattern(i as u64, 100 + i);
        let mut got = vec![0u8; want.len()];
        s.read_exact(&mut got)
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        common::assert_bytes_eq(&got, &want, &format!("connection {i}'s echo"));
    }
}

/// Three processes serve one port: every one of them accepts some of many connections, every
/// echo is exact, SIGTERM to the first stops all with exit 0, and the statistics are the sum.
fn serves_and_stops(io: &str) {
    const CONNS: usize = 60;
    let (mut srv, pids) = start_group(io);
    echo_round(&srv, CONNS);
    let stdout = srv.stop_and_wait(EXIT_TIMEOUT);
    assert!(
        stdout.contains("process index=2"),
        "per-process summary: {stdout}"
    );
    for &p in &pids[1..] {
        assert!(
            poll_until(Duration::from_secs(5), || parent_of(p).is_none()),
            "worker {p} outlived the group"
        );
    }
    let stats = srv.stats();
    assert_eq!(
        json_u64(&stats, "total.accepted"),
        CONNS as u64,
        "{stats:#}"
    );
    assert_eq!(
        json_u64(&stats, "total.requests"),
        CONNS as u64,
        "{stats:#}"
    );
    let procs = stats["processes"].as_array().expect("processes[]");
    assert_eq!(procs.len(), 3);
    let mut sum = 0;
    for (i, p) in procs.iter().enumerate() {
        assert_eq!(p["pid"].as_u64(), Some(u64::from(pids[i])));
        assert_eq!(p["exit"].as_str(), Some("ok"), "{p:#}");
        let a = json_u64(p, "total.accepted");
        // SO_REUSEPORT hashes 60 connections over 3 listeners: a process that gets none of
        // them has probability 3 * (2/3)^60, about 1e-10.
        assert!(a > 0, "process {i} accepted nothing: {stats:#}");
        sum += a;
    }
    assert_eq!(sum, CONNS as u64, "the sum of the processes");
}

/// SIGKILL to one worker: the first process names it, stops the others and exits non-zero.
fn killed_worker_stops_group(io: &str) {
    let (mut srv, pids) = start_group(io);
    echo_round(&srv, 6);
    let victim = pids[1];
    assert_eq!(parent_of(victim), Some(srv.pid), "only our server's child");
    let pid = rustix::process::Pid::from_raw(victim as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).expect("kill worker");
    let (status, _stdout, stderr) = srv.wait_exit(EXIT_TIMEOUT);
    assert!(
        !status.success(),
        "exit {status} after a worker died\n{stderr}"
    );
    assert_eq!(
        status.code(),
        Some(137),
        "the worst exit of the group: SIGKILL counts as 128 + 9\n{stderr}"
    );
    assert!(
        stderr.contains("killed by signal 9"),
        "the message says how it died: {stderr}"
    );
    assert!(
        stderr.contains(&format!("process 1 (pid {victim}")) && stderr.contains("unexpectedly"),
        "the message names the worker: {stderr}"
    );
    for &p in &pids[2..] {
        assert!(
            poll_until(Duration::from_secs(5), || parent_of(p).is_none()),
            "worker {p} outlived the group"
        );
    }
}

#[test]
fn uring_serves_and_stops() {
    if !skip_backend("uring") {
        serves_and_stops("uring");
    }
}

#[test]
fn epoll_serves_and_stops() {
    serves_and_stops("epoll");
}

#[test]
fn uring_killed_worker_stops_group() {
    if !skip_backend("uring") {
        killed_worker_stops_group("uring");
    }
}

#[test]
fn epoll_killed_worker_stops_group() {
    killed_worker_stops_group("epoll");
}

/// Internal flags are refused when given by hand, with one line.
#[test]
fn internal_flags_are_refused() {
    let f = common::start_failure("epoll", &["--listen-fds", "7"]);
    assert!(!f.status.success());
    assert!(f.stderr.contains("internal"), "{}", f.stderr);
    let f = common::start_failure("epoll", &["--worker-of", "1", "--listen-fds", "7"]);
    assert!(!f.status.success());
    assert!(f.stderr.contains("--worker-of"), "{}", f.stderr);
}
