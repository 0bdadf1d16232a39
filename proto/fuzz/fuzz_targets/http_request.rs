//! Arbitrary bytes into an HTTP `Session`, whole and split at a fuzzer-chosen point: no panic,
//! the same output and request count either way, and input buffering stays within the parser's
//! bound whenever the session is not held back by output backpressure.

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ringlab_proto::http::{Limits, RequestParser};
use ringlab_proto::{Now, Proto, ServerConfig, Session};

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let at = usize::from(first) * input.len() / 255;
    let (a, b) = input.split_at(at);
    let small = ServerConfig {
        proto: Proto::Http,
        limits: Limits {
            max_head: 256,
            max_headers: 8,
            max_body: 512,
        },
        ..ServerConfig::default()
    };
    let default = ServerConfig {
        proto: Proto::Http,
        ..ServerConfig::default()
    };
    for cfg in [&small, &default] {
        let whole = run(cfg, &[input]);
        let split = run(cfg, &[a, b]);
        assert_eq!(whole, split, "output depends on how the input was split");
    }
});

/// Feed `pieces` one by one, sending all output after each; return output and request count.
fn run(cfg: &ServerConfig, pieces: &[&[u8]]) -> (Vec<u8>, u32) {
    let start = Instant::now();
    let now = Now::with_fixed_date(start);
    let bound = RequestParser::max_buffered(&cfg.limits);
    let mut s = Session::new(cfg, &now);
    let mut out = Vec::new();
    let mut requests = 0;
    for piece in pieces {
        requests += s.on_recv(cfg, piece, &now);
        requests += drain(&mut s, cfg, &now, &mut out);
        if s.pending_output() < cfg.out_high_water {
            assert!(
                s.buffered_input() <= bound,
                "{} bytes buffered, bound {bound}",
                s.buffered_input()
            );
        }
    }
    let later = Now::with_fixed_date(start + Duration::from_secs(61));
    s.on_timeout(cfg, &later);
    requests += drain(&mut s, cfg, &later, &mut out);
    (out, requests)
}

fn drain(s: &mut Session, cfg: &ServerConfig, now: &Now, out: &mut Vec<u8>) -> u32 {
    let mut requests = 0;
    while let Some(b) = s.take_output() {
        out.extend_from_slice(&b);
        requests += s.on_sent(cfg, b.len(), now);
    }
    requests
}
