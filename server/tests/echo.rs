//! Echo conformance: integrity under concurrency, half-close, reset, delay, buffer-ring
//! exhaustion and backpressure, for every backend.

mod common;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use common::load::{
    echo_many, half_close_echo, log_uniform_sizes, push_until_blocked, small_buffer_conns,
};
use common::{assert_bytes_eq, json_u64, pattern, read_to_eof, Server, EXIT_TIMEOUT};
use rand::Rng;

backend_tests! {
    /// 1,000 concurrent connections, log-uniform sizes 1 B..1 MiB, every byte verified.
    fn integrity_1000_connections(io: &str) {
        // RINGLAB_TEST_SEED=N reproduces a failed run (the seed is printed).
        let seed: u64 = std::env::var("RINGLAB_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| rand::rng().random());
        eprintln!("seed {seed} (RINGLAB_TEST_SEED)");
        let sizes = log_uniform_sizes(1000, seed);
        let total: usize = sizes.iter().sum();
        eprintln!("{} connections, {} MiB each way", sizes.len(), total >> 20);
        let msgs: Vec<Vec<u8>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| pattern(seed ^ i as u64, n))
            .collect();
        let mut srv = Server::start_with_stats(io, &["--cores", &cores_0_1()]);
        echo_many(srv.addr, msgs);
        srv.stop_and_wait(EXIT_TIMEOUT);
        let st = srv.stats();
        assert_eq!(json_u64(&st, "total.accepted"), 1000, "{st:#}");
        assert_eq!(json_u64(&st, "total.closed"), 1000, "{st:#}");
        assert_eq!(json_u64(&st, "total.bytes_in"), total as u64, "{st:#}");
        assert_eq!(json_u64(&st, "total.bytes_out"), total as u64, "{st:#}");
        assert_eq!(json_u64(&st, "total.conn_errors"), 0, "{st:#}");
    }

    /// The client half-closes; it still receives every byte, then EOF.
    fn half_close_small(io: &str) {
        let mut srv = Server::start(io, &[]);
        let mut s = srv.connect();
        let msg = pattern(7, 1000);
        s.write_all(&msg).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let got = read_to_eof(&mut s, msg.len()).expect("echo then EOF");
        assert_bytes_eq(&got, &msg, "echo after half-close");
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// Half-close after a message far larger than the socket buffers and the server's
    /// high-water mark: the writer runs on its own thread while this one reads.
    fn half_close_large(io: &str) {
        let mut srv = Server::start(io, &[]);
        half_close_echo(&srv, 8 << 20, Duration::ZERO);
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// A peer that resets mid-stream (SO_LINGER 0) does not disturb other connections; the
    /// server counts the error, closes everything it accepted, and exits 0.
    fn reset_by_peer(io: &str) {
        let mut srv = Server::start_with_stats(io, &[]);
        // A bystander opened before the reset and used after it.
        let mut bystander = srv.connect();
        bystander.write_all(b"before").unwrap();
        let mut got = [0u8; 6];
        bystander.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"before");

        let mut victim = srv.connect();
        let msg = pattern(9, 128 * 1024);
        victim.write_all(&msg).unwrap();
        // Mid-stream: some of the echo came back, more is on its way or unread.
        let mut part = vec![0u8; 16 * 1024];
        victim.read_exact(&mut part).unwrap();
        assert_bytes_eq(&part, &msg[..part.len()], "echo before the reset");
        socket2::SockRef::from(&victim)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(victim); // close with linger 0: RST instead of FIN

        bystander.write_all(b"after").unwrap();
        let mut got = [0u8; 5];
        bystander.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"after");
        let mut fresh = srv.connect();
        fresh.write_all(b"fresh").unwrap();
        fresh.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_eof(&mut fresh, 5).unwrap(), b"fresh");
        bystander.shutdown(Shutdown::Write).unwrap();
        assert_eq!(read_to_eof(&mut bystander, 0).unwrap(), b"");

        srv.stop_and_wait(EXIT_TIMEOUT);
        let st = srv.stats();
        assert_eq!(json_u64(&st, "total.accepted"), 3, "{st:#}");
        assert_eq!(json_u64(&st, "total.closed"), 3, "{st:#}");
        assert!(json_u64(&st, "total.conn_errors") >= 1, "the reset is counted: {st:#}");
    }

    /// Half-close right after sending, with the echo still held by `--delay`: every byte still
    /// comes back, then EOF.
    fn half_close_with_delay(io: &str) {
        let mut srv = Server::start(io, &["--delay", "100ms"]);
        let mut s = srv.connect();
        let msg = pattern(10, 50_000);
        let sent = Instant::now();
        s.write_all(&msg).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let got = read_to_eof(&mut s, msg.len()).expect("delayed echo then EOF");
        assert!(sent.elapsed() >= Duration::from_millis(100));
        assert_bytes_eq(&got, &msg, "delayed echo after half-close");
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// `--delay 100ms`: no chunk's echo arrives less than 100 ms after it was sent.
    fn delay_never_early(io: &str) {
        let mut srv = Server::start(io, &["--delay", "100ms"]);
        let mut s = srv.connect();
        for i in 0..3u64 {
            let msg = pattern(i, 100 + i as usize * 1000);
            let sent = Instant::now();
            s.write_all(&msg).unwrap();
            let mut first = [0u8; 1];
            s.read_exact(&mut first).unwrap();
            let waited = sent.elapsed();
            assert!(
                waited >= Duration::from_millis(100),
                "chunk {i}: echo arrived after {waited:?} < 100 ms"
            );
            let mut rest = vec![0u8; msg.len() - 1];
            s.read_exact(&mut rest).unwrap();
            assert_eq!(first[0], msg[0]);
            assert_bytes_eq(&rest, &msg[1..], "delayed echo");
        }
        srv.stop_and_wait(EXIT_TIMEOUT);
    }

    /// A tiny buffer ring (uring: 4 × 4 KiB; epoll: a 4 KiB read buffer) and 200 connections
    /// sending 256 KiB each at once: no byte is lost, and uring really ran out of buffers.
    fn buffer_ring_exhausted(io: &str) {
        let args: &[&str] = if io == "uring" {
            &["--buf-count", "4", "--buf-size", "4096"]
        } else {
            &["--read-buf", "4096"]
        };
        let mut srv = Server::start_with_stats(io, args);
        let msgs: Vec<Vec<u8>> = (0..200).map(|i| pattern(1000 + i, 256 * 1024)).collect();
        echo_many(srv.addr, msgs);
        srv.stop_and_wait(EXIT_TIMEOUT);
        let st = srv.stats();
        assert_eq!(json_u64(&st, "total.accepted"), 200, "{st:#}");
        assert_eq!(json_u64(&st, "total.bytes_in"), 200 * 256 * 1024, "{st:#}");
        if io == "uring" {
            assert!(
                json_u64(&st, "total.enobufs") > 0,
                "the buffer ring never ran out, so ENOBUFS handling was not exercised: {st:#}"
            );
        }
    }

    /// 50 clients send 8 MiB of echo each and never read: the server stops reading (the
    /// writes block), its memory stays bounded, and a fresh connection is still served.
    fn slow_readers_bounded_memory(io: &str) {
        const CONNS: usize = 50;
        const EACH: usize = 8 << 20;
        let mut srv = Server::start_with_stats(io, &[]);
        // Warm up both paths once so lazily allocated loop state is in the baseline.
        {
            let mut s = srv.connect();
            s.write_all(&pattern(1, 100_000)).unwrap();
            s.shutdown(Shutdown::Write).unwrap();
            assert_eq!(read_to_eof(&mut s, 100_000).unwrap().len(), 100_000);
        }
        let rss_before = srv.rss_kib();
        let mut conns = small_buffer_conns(&srv, CONNS);
        let chunk = pattern(2, 64 * 1024);
        let sent = push_until_blocked(&mut conns, EACH, |n| &chunk[..(EACH - n).min(chunk.len())]);
        let total: usize = sent.iter().sum();
        let rss_after = srv.rss_kib();
        let growth_mib = rss_after.saturating_sub(rss_before) / 1024;
        eprintln!(
            "clients got {} MiB into the kernel (min {} KiB, max {} KiB per connection); \
             server RSS {} -> {} KiB",
            total >> 20,
            sent.iter().min().unwrap() >> 10,
            sent.iter().max().unwrap() >> 10,
            rss_before,
            rss_after
        );
        // Measured while the clients are stuck; asserted after the rest of the checks ran, so a
        // failure reports all of them.
        let mut failures = Vec::new();
        // The budget: the loops' fixed read buffers (uring: a 1024 x 16 KiB provided-buffer ring
        // per loop, whose pages are touched as buffers are first used; epoll: one 64 KiB buffer
        // per loop), what each stuck connection may hold (high-water mark plus one read), and
        // 32 MiB for the allocator and everything else. Unbounded growth would be the 287+ MiB
        // sent.
        let loops = 2;
        let fixed_mib = match io {
            "uring" => loops * 16,
            _ => 1,
        };
        let budget_mib = (32 + fixed_mib + (CONNS * (256 + 64)) / 1024) as u64;
        if growth_mib >= budget_mib {
            failures.push(format!(
                "server RSS grew by {growth_mib} MiB (budget {budget_mib}) while {} MiB were sent to it",
                total >> 20
            ));
        }
        // A fresh connection is served while the others are stuck.
        let mut fresh = srv.connect();
        let msg = pattern(3, 10_000);
        fresh.write_all(&msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        fresh.read_exact(&mut got).expect("a fresh connection is served");
        assert_bytes_eq(&got, &msg, "fresh connection's echo");
        drop(fresh);
        drop(conns); // unread data: these close with a reset
        srv.stop_and_wait(EXIT_TIMEOUT);
        let st = srv.stats();
        eprintln!("stats: {}", st["total"]);
        // What the server read but did not send is what it holds in memory: per connection at
        // most the high-water mark (256 KiB) plus one read's worth (64 KiB, epoll's buffer).
        let held = json_u64(&st, "total.bytes_in") - json_u64(&st, "total.bytes_out");
        let limit = (CONNS as u64) * (256 + 64) * 1024;
        if held > limit {
            failures.push(format!(
                "the server holds {} KiB read but unsent ({} KiB per stuck connection), more \
                 than --out-high-water 256 KiB + 64 KiB each ({} KiB in all)",
                held >> 10,
                (held / CONNS as u64) >> 10,
                limit >> 10
            ));
        }
        if io == "uring" && json_u64(&st, "total.backpressure_pauses") == 0 {
            failures.push("uring never paused a connection's reading".to_string());
        }
        assert!(failures.is_empty(), "{io}: {}", failures.join("; "));
    }
}

/// `--cores` for two loops: the first two CPUs this process may use (`0,1` on most machines).
fn cores_0_1() -> String {
    let cpus = common::allowed_cpus();
    cpus.iter()
        .take(2)
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn pattern_is_deterministic() {
    assert_eq!(pattern(5, 100), pattern(5, 100));
    assert_ne!(pattern(5, 100), pattern(6, 100));
    assert_eq!(pattern(5, 3).len(), 3);
}
