//! Arbitrary bytes as requests to a session that serves files (`--root`), answered by a fake
//! loop: no panic; every path the session asks to open is relative, has no `.` or `..`
//! segment, no empty segment and no NUL; the output does not depend on how the input was split;
//! and `Range` never selects bytes outside the file.

#![no_main]

use std::time::Instant;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ringlab_proto::files::{self, FileDone, FileKind, FileMeta, FileOp, RangeAnswer};
use ringlab_proto::{Now, Proto, ServerConfig, Session};

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    // The Range rules on their own, against a size taken from the input.
    let size = u64::from(first) * 97;
    if let RangeAnswer::Part { start, end } = files::range(Some(input), size) {
        assert!(start < end && end <= size, "{start}..{end} of {size}");
    }
    if let Ok(s) = std::str::from_utf8(input) {
        if let Ok(p) = files::check_path(s) {
            check_relative(&p);
        }
    }
    let at = usize::from(first) * input.len() / 255;
    let (a, b) = input.split_at(at);
    let cfg = ServerConfig {
        proto: Proto::Http,
        files: true,
        file_chunk: 1000,
        ..ServerConfig::default()
    };
    assert_eq!(run(&cfg, &[input]), run(&cfg, &[a, b]), "output depends on the split");
});

fn check_relative(p: &str) {
    assert!(!p.starts_with('/') && !p.contains('\0'), "{p:?}");
    assert!(p.split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "{p:?}");
}

/// A file's contents, from its path: deterministic, up to 4999 bytes.
fn contents(path: &str) -> Vec<u8> {
    let h = path.bytes().fold(7u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    (0..h % 5000).map(|i| (i as u8) ^ (h as u8)).collect()
}

fn run(cfg: &ServerConfig, pieces: &[&[u8]]) -> Vec<u8> {
    let now = Now::with_fixed_date(Instant::now());
    let mut s = Session::new(cfg, &now);
    let mut out = Vec::new();
    let mut open: Option<Vec<u8>> = None;
    for piece in pieces {
        s.on_recv(cfg, piece, &now);
        // Answer operations and take output until neither is left (bounded).
        for _ in 0..100_000 {
            let mut moved = false;
            while let Some(b) = s.take_output() {
                out.extend_from_slice(&b);
                s.on_sent(cfg, b.len(), &now);
                moved = true;
            }
            if let Some(op) = s.take_file_op() {
                moved = true;
                let done = match op {
                    FileOp::Open { path } => {
                        check_relative(&path);
                        open = Some(contents(&path));
                        FileDone::Opened(Ok(()))
                    }
                    FileOp::Stat => FileDone::Stat(Ok(FileMeta {
                        size: open.as_ref().map_or(0, |f| f.len() as u64),
                        mtime: 784_111_777,
                        kind: FileKind::Regular,
                    })),
                    FileOp::Read { offset, len } => {
                        let f = open.as_ref().expect("a read of an open file");
                        let start = (offset as usize).min(f.len());
                        let end = (start + len).min(f.len());
                        FileDone::Read(Ok(Bytes::copy_from_slice(&f[start..end])))
                    }
                    FileOp::Close => {
                        assert!(open.take().is_some(), "close without an open file");
                        continue;
                    }
                };
                s.on_file(cfg, done, &now);
            }
            if !moved {
                break;
            }
        }
    }
    out
}
