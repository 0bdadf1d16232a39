//! The server side of echo (`Session` with `Proto::Echo`) driven by a fuzzer-chosen schedule:
//! receives of any size (also while the session asks not to read, as an io_uring recv already
//! in flight does), partial sends, clock steps firing `--delay` releases, and a peer EOF. The
//! bytes that go out are always a prefix of the bytes that came in, and once everything is sent
//! and the clock has run, the output is exactly the input and an EOF'd session shuts down its
//! write side. (The same property runs in CI as a proptest: `echo_session_any_schedule`.)

#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use ringlab_proto::{Action, Now, Proto, ServerConfig, Session};

fuzz_target!(|data: &[u8]| {
    let [hw, delay, ops @ ..] = data else {
        return;
    };
    let cfg = ServerConfig {
        proto: Proto::Echo,
        out_high_water: usize::from(*hw) * 8 + 1,
        delay: Duration::from_millis(u64::from(*delay % 4) * 10),
        ..ServerConfig::default()
    };
    let start = Instant::now();
    let mut t = 0u64;
    let mut now = Now::with_fixed_date(start);
    let mut s = Session::new(&cfg, &now);
    let (mut input, mut output, mut taken) = (Vec::new(), Vec::new(), Vec::new());
    let mut eof = false;
    let mut i = 0;
    while i < ops.len() {
        let op = ops[i];
        i += 1;
        let arg = usize::from(op / 8);
        match op % 8 {
            // Receive the next bytes of the schedule as data (1..=32 of them).
            0..=2 | 7 if !eof => {
                let n = (arg + 1).min(ops.len() - i);
                let chunk = &ops[i..i + n];
                i += n;
                // Mostly only when the session wants to read; op 7 regardless.
                if op % 8 == 7 || s.wants_read(&cfg) {
                    s.on_recv(&cfg, chunk, &now);
                    input.extend_from_slice(chunk);
                }
            }
            3 => {
                while let Some(b) = s.take_output() {
                    taken.extend_from_slice(&b);
                }
            }
            4 => {
                let n = (arg * 4).min(taken.len());
                output.extend(taken.drain(..n));
                s.on_sent(&cfg, n, &now);
            }
            5 => {
                t += arg as u64;
                now = Now::with_fixed_date(start + Duration::from_millis(t));
                s.on_timeout(&cfg, &now);
            }
            6 if !eof => {
                eof = true;
                s.on_peer_eof(&cfg, &now);
            }
            _ => {}
        }
        let out_so_far = output.len() + taken.len();
        assert!(out_so_far <= input.len(), "more out than in");
        assert_eq!(
            &input[..output.len()],
            &output[..],
            "output is not a prefix of input"
        );
        assert_eq!(
            &input[output.len()..out_so_far],
            &taken[..],
            "taken output differs"
        );
        assert!(
            s.pending_output() >= taken.len(),
            "taken output not counted as pending"
        );
    }
    // Let the clock run and the peer read everything (bounded).
    for _ in 0..1000 {
        t += 50;
        now = Now::with_fixed_date(start + Duration::from_millis(t));
        s.on_timeout(&cfg, &now);
        while let Some(b) = s.take_output() {
            taken.extend_from_slice(&b);
        }
        let n = taken.len();
        output.append(&mut taken);
        s.on_sent(&cfg, n, &now);
        if s.pending_output() == 0 && s.buffered_input() == 0 {
            break;
        }
    }
    assert_eq!(output, input, "echo lost, added or reordered bytes");
    if eof {
        assert_eq!(s.action(), Action::ShutdownWrite);
    } else {
        assert_eq!(s.action(), Action::Continue);
    }
});
