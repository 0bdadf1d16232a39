//! Faults the kernel interface produces: descriptor exhaustion on accept (EMFILE) for every
//! backend, and io_uring's completion-queue overflow.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use common::{json_u64, pattern, read_to_eof, Server, EXIT_TIMEOUT};

/// The server's CPU time (user + system) in seconds, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / ticks
}

fn echo_once(s: &mut std::net::TcpStream, id: u64) {
    let m = pattern(id, 1000);
    s.write_all(&m).unwrap();
    let mut got = vec![0u8; m.len()];
    s.read_exact(&mut got).expect("echo");
    assert_eq!(got, m);
}

backend_tests! {
    /// At the descriptor limit the server keeps serving the connections it has, backs off
    /// accepting instead of spinning, says so with the fix, and accepts the waiting connections
    /// once descriptors free up.
    fn emfile_backs_off_and_recovers(io: &str) {
        // Blocking: more workers than the descriptors allow connections, so that what limits it
        // here is descriptors, not its one-connection-per-worker model.
        let args: &[&str] = if io == "blocking" { &["--workers", "80"] } else { &[] };
        let mut srv = Server::start_with_nofile(io, args, 64);
        // More connections than the server can hold: the kernel completes them all (backlog),
        // the server accepts until EMFILE.
        let mut conns: Vec<_> = (0..100).map(|_| srv.connect()).collect();
        assert!(
            srv.wait_stderr("ulimit -n", Duration::from_secs(10)),
            "no EMFILE message naming the fix: {}",
            srv.stderr_now()
        );
        // Not spinning: over one second of back-off the server uses little CPU.
        let c0 = cpu_seconds(srv.pid);
        std::thread::sleep(Duration::from_secs(1));
        let used = cpu_seconds(srv.pid) - c0;
        assert!(used < 0.5, "{io} spun at the descriptor limit: {used:.2} s CPU in 1 s");
        // An early connection is still served (the blocking pool serves its first workers').
        echo_once(&mut conns[0], 1);
        // Free descriptors: close most of the connections, and the last one gets served.
        let mut last = conns.pop().unwrap();
        let t = Instant::now();
        conns.truncate(10);
        last.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        echo_once(&mut last, 2);
        assert!(t.elapsed() < Duration::from_secs(15));
        drop(conns);
        drop(last);
        srv.stop_and_wait(EXIT_TIMEOUT);
    }
}

/// A completion queue far smaller than the completions in flight overflows into the kernel's
/// backlog (IORING_FEAT_NODROP): the server notices, flushes, and no byte is lost or reordered.
#[test]
fn uring_cq_overflow_loses_nothing() {
    if common::skip_backend("uring") {
        return;
    }
    let mut srv = Server::start_with_stats(
        "uring",
        &[
            "--sq-entries",
            "8",
            "--cq-entries",
            "8",
            "--buf-size",
            "4096",
        ],
    );
    let handles: Vec<_> = (0..64u64)
        .map(|i| {
            let addr = srv.addr;
            std::thread::spawn(move || {
                let mut s = common::connect(addr);
                let m = pattern(500 + i, 256 * 1024);
                let w = {
                    let mut s2 = s.try_clone().unwrap();
                    let m2 = m.clone();
                    std::thread::spawn(move || {
                        s2.write_all(&m2).unwrap();
                        s2.shutdown(Shutdown::Write).unwrap();
                    })
                };
                let got = read_to_eof(&mut s, m.len()).unwrap();
                w.join().unwrap();
                assert!(
                    got == m,
                    "connection {i}: echo differs ({} of {} bytes)",
                    got.len(),
                    m.len()
                );
                let _ = s.shutdown(Shutdown::Both);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("a connection failed");
    }
    srv.stop_and_wait(EXIT_TIMEOUT);
    let st = srv.stats();
    assert_eq!(json_u64(&st, "total.bytes_out"), 64 * 256 * 1024, "{st:#}");
    assert!(
        json_u64(&st, "total.cq_overflows") > 0,
        "the CQ never overflowed, so the overflow path was not exercised: {st:#}"
    );
}
