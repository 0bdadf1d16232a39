//! Echo against an in-process ringlab-server: integrity under load, pipelining, and data errors
//! (a server that corrupts one byte).

mod common;

use std::time::Duration;

use common::{echo_with, run_client, RinglabServer, ScriptedServer};

io_tests! {
    fn integrity_under_load(io: &str) {
        let srv = RinglabServer::start("echo", &[]);
        let addr = srv.addr.to_string();
        let r = run_client(
            &[&addr, "--io", io, "--no-pin", "-c", "32", "-k", "4", "--size", "1500", "-d", "1s"],
            Duration::from_secs(20),
        );
        assert_eq!(r.exit_code, 0, "{}", r.summary());
        assert!(r.requests > 100, "{}", r.summary());
        assert_eq!(r.errors_total, 0, "{}", r.summary());
        assert_eq!(r.data_errors, 0);
        // Every request sent was answered, every byte sent came back and was checked.
        assert_eq!(r.counters.responses, r.counters.requests_sent, "{}", r.summary());
        assert_eq!(r.counters.bytes_received, r.counters.bytes_sent);
        assert_eq!(r.counters.bytes_sent, r.counters.requests_sent * 1500);
        assert_eq!(r.bytes, r.requests * 1500);
        assert_eq!(r.latency_us.count, r.requests);
        assert_eq!(r.counters.connects, 32);
    }

    fn integrity_with_a_starved_buffer_ring(io: &str) {
        // uring: 4 provided buffers of 512 bytes for 16 connections: the ring runs dry
        // (-ENOBUFS) all the time; every byte must still arrive, in order, verified.
        let srv = RinglabServer::start("echo", &[]);
        let addr = srv.addr.to_string();
        let r = run_client(
            &[&addr, "--io", io, "--no-pin", "-c", "16", "-k", "2", "--size", "3000",
              "--buf-count", "4", "--buf-size", "512", "-n", "3000"],
            Duration::from_secs(30),
        );
        assert_eq!(r.exit_code, 0, "{}", r.summary());
        assert_eq!(r.requests, 3000);
        assert_eq!(r.errors_total, 0, "{}", r.summary());
        if io == "uring" {
            assert!(r.counters.enobufs > 0, "the ring never ran dry");
        }
    }

    fn coalesced_wakeups_lose_nothing(io: &str) {
        // --coalesce: each turn waits up to 300 µs for more completions or events; every
        // request is still answered and verified.
        let srv = RinglabServer::start("echo", &[]);
        let addr = srv.addr.to_string();
        let r = run_client(
            &[&addr, "--io", io, "--no-pin", "-c", "8", "--size", "200", "-n", "4000",
              "--coalesce", "300us", "--coalesce-batch", "4"],
            Duration::from_secs(30),
        );
        assert_eq!(r.exit_code, 0, "{}", r.summary());
        assert_eq!(r.requests, 4000);
        assert_eq!(r.errors_total, 0, "{}", r.summary());
        assert_eq!(r.data_errors, 0);
        assert_eq!(r.counters.responses, r.counters.requests_sent, "{}", r.summary());
    }

    fn warmup_is_excluded(io: &str) {
        let srv = RinglabServer::start("echo", &[]);
        let addr = srv.addr.to_string();
        let r = run_client(
            &[&addr, "--io", io, "--no-pin", "-c", "4", "--warmup", "400ms", "-n", "1000"],
            Duration::from_secs(20),
        );
        assert_eq!(r.exit_code, 0, "{}", r.summary());
        // Exactly the 1000 measured requests are in the results; the warmup's are not.
        assert_eq!(r.requests, 1000);
        assert_eq!(r.latency_us.count, 1000);
        assert!(r.counters.responses > 1000, "{}", r.summary());
        assert_eq!(r.counters.responses, r.counters.requests_sent);
    }

    fn several_loops_split_and_merge(io: &str) {
        let srv = RinglabServer::start("echo", &[]);
        let addr = srv.addr.to_string();
        let loops = ringlab_runtime::cpus::available_cpus().len();
        let conns = (2 * loops + 1).to_string();
        let r = run_client(
            &[&addr, "--io", io, "--no-pin", "--cores", "all", "-c", &conns, "-k", "3", "-n", "1001"],
            Duration::from_secs(20),
        );
        assert_eq!(r.exit_code, 0, "{}", r.summary());
        assert_eq!(r.threads, loops);
        assert_eq!(r.cpu.len(), loops);
        assert_eq!(r.requests, 1001, "shares of --requests add up");
        assert_eq!(r.counters.connects, 2 * loops as u64 + 1, "shares of --conns add up");
        assert_eq!(r.latency_us.count, 1001);
    }

    fn pipelining_exact_count(io: &str) {
        let srv = RinglabServer::start("echo", &[]);
        let addr = srv.addr.to_string();
        let r = run_client(
            &[&addr, "--io", io, "--no-pin", "-c", "3", "-k", "16", "--size", "100", "-n", "5000"],
            Duration::from_secs(20),
        );
        assert_eq!(r.exit_code, 0, "{}", r.summary());
        assert_eq!(r.requests, 5000, "{}", r.summary());
        assert_eq!(r.counters.requests_sent, 5000);
        assert_eq!(r.errors_total, 0);
    }

    fn large_messages_span_many_reads(io: &str) {
        let srv = RinglabServer::start("echo", &[]);
        let addr = srv.addr.to_string();
        // 256 KiB messages are split across many recv completions and partial sends.
        let r = run_client(
            &[&addr, "--io", io, "--no-pin", "-c", "2", "-k", "2", "--size", "262144", "-n", "200"],
            Duration::from_secs(30),
        );
        assert_eq!(r.exit_code, 0, "{}", r.summary());
        assert_eq!(r.requests, 200);
        assert_eq!(r.data_errors, 0);
    }

    fn corrupted_byte_is_a_data_error(io: &str) {
        // Flip one byte, once, 10 000 bytes into each connection's stream.
        let srv = ScriptedServer::start(echo_with(|off, chunk| {
            let at = 10_000u64;
            if off <= at && at < off + chunk.len() as u64 {
                chunk[(at - off) as usize] ^= 0x40;
            }
        }));
        let addr = srv.addr.to_string();
        let r = run_client(
            &[&addr, "--io", io, "--no-pin", "-c", "2", "--size", "100", "-d", "1s"],
            Duration::from_secs(20),
        );
        assert!(r.errors.echo_mismatch >= 1, "{}", r.summary());
        assert_eq!(r.data_errors, r.errors.echo_mismatch);
        assert_eq!(r.exit_code, 1, "a data error must fail the run");
        assert!(r.summary().contains("DATA ERRORS"), "{}", r.summary());
        assert!(r.messages.iter().any(|m| m.contains("mismatch")), "{:?}", r.messages);
        // The connection was reopened and the run went on.
        assert!(r.requests > 100, "{}", r.summary());
    }
}

#[test]
fn uring_coop_taskrun_loses_nothing_with_a_starved_buffer_ring() {
    // --no-defer-taskrun: completions run in any syscall, not only in the loop's waits; with
    // 4 provided buffers for 16 connections the multishot receives end (-ENOBUFS) and are
    // re-armed all the time, and every byte must still arrive, in order, verified.
    if common::skip_uring() {
        return;
    }
    let srv = RinglabServer::start("echo", &[]);
    let addr = srv.addr.to_string();
    let r = run_client(
        &[
            &addr,
            "--io",
            "uring",
            "--no-defer-taskrun",
            "--no-pin",
            "-c",
            "16",
            "-k",
            "2",
            "--size",
            "3000",
            "--buf-count",
            "4",
            "--buf-size",
            "512",
            "-n",
            "3000",
        ],
        Duration::from_secs(30),
    );
    assert_eq!(r.exit_code, 0, "{}", r.summary());
    assert_eq!(r.requests, 3000);
    assert_eq!(r.errors_total, 0, "{}", r.summary());
    assert_eq!(r.data_errors, 0);
    assert!(r.counters.enobufs > 0, "the ring never ran dry");
    assert_eq!(
        r.counters.responses,
        r.counters.requests_sent,
        "{}",
        r.summary()
    );
}
