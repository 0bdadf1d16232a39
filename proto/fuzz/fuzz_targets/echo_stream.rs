//! `EchoStream` verification against a fuzzer-chosen echo: the bytes that come back are the
//! sent stream XOR fuzzer bytes (any length, so also more than was sent). Verification must
//! find exactly the first wrong or excess byte, whole or split at a fuzzer-chosen point.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringlab_proto::echo::{EchoMismatch, EchoStream};

fuzz_target!(|data: &[u8]| {
    let [size, messages, cut, s0, s1, s2, s3, s4, s5, s6, s7, xor @ ..] = data else {
        return;
    };
    let msg_size = usize::from(*size % 64) + 1;
    let seed = u64::from_le_bytes([*s0, *s1, *s2, *s3, *s4, *s5, *s6, *s7]);
    let mut stream = EchoStream::new(msg_size, seed);
    let mut sent = BytesMut::new();
    for _ in 0..usize::from(*messages % 32) {
        stream.write_message(&mut sent);
    }
    assert_eq!(stream.outstanding_bytes(), sent.len() as u64);

    let echoed: Vec<u8> = xor
        .iter()
        .enumerate()
        .map(|(i, x)| sent.get(i).copied().unwrap_or(0) ^ x)
        .collect();
    let expected = match xor.iter().position(|&x| x != 0) {
        Some(i) if i < sent.len() => Some(EchoMismatch::Corrupt {
            offset: i as u64,
            expected: sent[i],
            got: echoed[i],
        }),
        _ if echoed.len() > sent.len() => Some(EchoMismatch::Excess {
            offset: sent.len() as u64,
            got: echoed[sent.len()],
        }),
        _ => None,
    };

    let at = usize::from(*cut) * echoed.len() / 255;
    let (a, b) = echoed.split_at(at);
    for pieces in [&[&echoed[..]][..], &[a, b][..]] {
        let mut s = stream.clone();
        let mut completed = 0;
        let mut error = None;
        for p in pieces {
            match s.on_recv(p) {
                Ok(n) => completed += n,
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        assert_eq!(error, expected);
        if expected.is_none() {
            assert_eq!(completed, (echoed.len() / msg_size) as u64);
            assert_eq!(s.received_bytes(), echoed.len() as u64);
            assert_eq!(s.outstanding_bytes(), (sent.len() - echoed.len()) as u64);
        }
    }
});
