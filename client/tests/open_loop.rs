//! Open loop: coordinated-omission correction against a server that stalls once, the schedule
//! kept, and the HdrHistogram interval log read back with the `hdrhistogram` crate.
//!
//! No latency bound here (a test asserts behaviour, never a speed): the stall is the test's own,
//! and "the schedule kept" is a count, the requests the client's own schedule intends in the
//! measured window. Latency under offered load is measured by `ringlab-bench latency` (open loop
//! at fractions of the slowest backend's maximum, CO-corrected percentiles per backend).

mod common;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{config, echo_with, run_client, RinglabServer, ScriptedServer};
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;
use ringlab_client::schedule::Schedule;

const STALL: Duration = Duration::from_millis(500);

/// The requests the client's own schedule intends in the measured window of a `--rate
/// --duration` run with `args`: for each loop thread's plan, its intended send times from the end
/// of the warmup to the end of the run.
fn scheduled(args: &[&str]) -> u64 {
    let cfg = config(args);
    let end = cfg.warmup + cfg.duration.expect("a --duration run");
    let t0 = Instant::now();
    ringlab_client::run::plans(&cfg)
        .iter()
        .map(|p| {
            let s = Schedule::new(t0, p.rate.expect("an open-loop run"), p.phase);
            s.count_before(t0 + end) - s.count_before(t0 + cfg.warmup)
        })
        .sum()
}

io_tests! {
    fn co_correction_shows_a_stall_that_raw_latency_hides(io: &str) {
        // Every connection's echo stalls for 500 ms once, one second into the run: what a
        // stop-the-world pause in a server looks like.
        let stall_at: &'static Mutex<Option<Instant>> = Box::leak(Box::new(Mutex::new(None)));
        let srv = ScriptedServer::start(echo_with(move |_, _| {
            let at = *stall_at.lock().expect("lock");
            if let Some(at) = at {
                let now = Instant::now();
                if now >= at && now < at + STALL {
                    std::thread::sleep(at + STALL - now);
                }
            }
        }));
        *stall_at.lock().expect("lock") = Some(Instant::now() + Duration::from_millis(1000));
        let addr = srv.addr.to_string();
        // 500 requests/s for 4 s: 2000 samples, 250 of them scheduled during the stall.
        let args = [&addr, "--io", io, "--no-pin", "-c", "4", "-R", "500", "-d", "4s", "--size", "64"];
        let r = run_client(&args, Duration::from_secs(30));
        let s = r.summary();
        assert_eq!(r.exit_code, 0, "{s}");
        assert_eq!(r.mode, "open");
        // The schedule accounted for exactly through the stall: every request it intends in the
        // measured window is measured (sent late) or reported unsent, none silently dropped.
        assert_eq!(r.requests + r.counters.unsent, scheduled(&args), "{s}\n{:?}", r.counters);
        let corrected = r.latency_us.at(99.0);
        let raw = r.raw_latency_us.at(99.0);
        // Corrected: the requests scheduled during the stall waited up to its length.
        assert!(corrected >= 400_000, "corrected p99 {corrected} us should show the 500 ms stall\n{s}");
        // Raw: only the 4 requests in flight when it began saw it (0.2% of the samples), so the
        // stall moves the corrected p99 and not the raw one (corrected >= raw sample by sample).
        assert!(raw < corrected, "raw p99 {raw} us should not show the stall\n{s}");
        assert!(r.raw_latency_us.max >= 400_000, "the raw max still sees it\n{s}");
        // Falling behind during the stall is reported.
        let lag = r.lag_us.as_ref().expect("open loop reports lag");
        assert!(lag.max >= 400_000, "{s}");
        assert!(r.saturation.behind_schedule, "{s}");
        assert!(s.contains("fell behind schedule"), "{s}");
    }

    fn open_loop_request_count(io: &str) {
        let srv = RinglabServer::start("echo", &[]);
        let addr = srv.addr.to_string();
        let r = run_client(
            &[&addr, "--io", io, "--no-pin", "-c", "3", "-R", "2000", "-n", "700", "--warmup", "100ms"],
            Duration::from_secs(20),
        );
        assert_eq!(r.exit_code, 0, "{}", r.summary());
        assert_eq!(r.requests, 700, "{}", r.summary());
        assert_eq!(r.counters.unsent, 0);
        assert_eq!(r.lag_us.as_ref().map(|l| l.count), Some(700));
    }

    fn schedule_is_kept_and_interval_log_round_trips(io: &str) {
        let srv = RinglabServer::start("echo", &[]);
        let addr = srv.addr.to_string();
        let dir = std::env::temp_dir().join(format!("ringlab-client-test-{}-{io}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let log = dir.join("latency.hlog");
        let log_s = log.to_string_lossy().into_owned();
        let args = [&addr, "--io", io, "--no-pin", "-c", "8", "-R", "1000", "-d", "2500ms",
                    "--warmup", "300ms", "--hist-log", &log_s];
        let r = run_client(&args, Duration::from_secs(30));
        let s = r.summary();
        assert_eq!(r.exit_code, 0, "{s}");
        // The schedule: the requests it means to send in the measured 2.5 s (2500), each one
        // measured or reported unsent, not one more or less. (How many went unsent depends on
        // whether the loop woke in time at the very end, a matter of the machine's load: the
        // bench measures that as send lag; here only the exact count is a property.)
        let intended = scheduled(&args);
        assert_eq!(intended, 2500, "1000/s for 2.5 s");
        assert_eq!(r.requests + r.counters.unsent, intended, "{s}\n{:?}", r.counters);

        let text = std::fs::read(&log).expect("log written");
        let mut corrected = Histogram::<u64>::new(3).expect("hist");
        let mut raw = Histogram::<u64>::new(3).expect("hist");
        let (mut n_corr, mut n_raw, mut start_time, mut base_time) = (0, 0, None, None);
        let mut last_ts = -1.0f64;
        let mut de = Deserializer::new();
        for entry in IntervalLogIterator::new(&text) {
            match entry.expect("log entry parses") {
                LogEntry::StartTime(t) => start_time = Some(t),
                LogEntry::BaseTime(t) => base_time = Some(t),
                LogEntry::Interval(ilh) => {
                    let bytes = base64_decode(ilh.encoded_histogram());
                    let h: Histogram<u64> = de.deserialize(&mut bytes.as_slice()).expect("V2 histogram decodes");
                    let ts = ilh.start_timestamp().as_secs_f64();
                    assert!(ilh.duration() <= Duration::from_millis(1001));
                    match ilh.tag().map(|t| t.as_str().to_string()) {
                        None => {
                            assert!(ts > last_ts, "intervals in order");
                            last_ts = ts;
                            n_corr += 1;
                            corrected.add(&h).expect("add");
                        }
                        Some(t) if t == "raw" => {
                            n_raw += 1;
                            raw.add(&h).expect("add");
                        }
                        Some(t) => panic!("unexpected tag {t}"),
                    }
                }
            }
        }
        assert!(start_time.is_some() && base_time.is_some());
        assert!((3..=4).contains(&n_corr), "one interval a second: {n_corr}");
        assert_eq!(n_corr, n_raw);
        // The log holds exactly the measured samples, and agrees with the summary.
        assert_eq!(corrected.len(), r.requests);
        assert_eq!(raw.len(), r.requests);
        assert_eq!(corrected.max(), r.latency_us.max);
        assert_eq!(corrected.value_at_quantile(0.99), r.latency_us.at(99.0));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Standard base64 (the log's encoding), decoded without another dependency.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64 character {c}"),
        }
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c) << (18 - 6 * i);
        }
        let n = chunk.len() * 6 / 8;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    out
}
