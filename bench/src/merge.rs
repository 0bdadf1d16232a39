//! `ringlab-bench merge`: combine HdrHistogram interval logs from several clients exactly
//! (histograms are added; no percentile is averaged), with the client's own merge
//! (`ringlab_client::intervals`): corrected latency and the raw (`Tag=raw`) latency of open-loop
//! logs are added apart, so no request counts twice.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Result};
use hdrhistogram::Histogram;
use ringlab_client::intervals::Merged;

/// What the merged logs hold.
struct Summary {
    files: usize,
    /// Intervals with a corrected histogram, and with a raw one.
    intervals: (usize, usize),
    corrected: Histogram<u64>,
    raw: Histogram<u64>,
}

fn summarize(files: &[PathBuf]) -> Result<Summary> {
    let m = Merged::read(files)?;
    let intervals = m.counts();
    if intervals == (0, 0) {
        bail!("no interval histograms in {} file(s)", files.len());
    }
    Ok(Summary {
        files: files.len(),
        intervals,
        corrected: m.corrected_total(),
        raw: m.raw_total(),
    })
}

fn render(s: &Summary) -> String {
    let mut o = String::new();
    let t = &s.corrected;
    let _ = writeln!(
        o,
        "merged {} intervals from {} file(s): {} requests",
        s.intervals.0,
        s.files,
        t.len()
    );
    let _ = writeln!(
        o,
        "latency µs: mean {:.1}, stdev {:.1}, max {}",
        t.mean(),
        t.stdev(),
        t.max()
    );
    for p in [50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0] {
        let _ = writeln!(o, "  {p:>6}%  {}", t.value_at_quantile(p / 100.0));
    }
    if s.intervals.1 > 0 {
        let r = &s.raw;
        let _ = writeln!(
            o,
            "uncorrected latency µs (Tag=raw, {} intervals): mean {:.1}, max {}, p99 {}",
            s.intervals.1,
            r.mean(),
            r.max(),
            r.value_at_quantile(0.99)
        );
    }
    o
}

/// Merge `files` and print the combined percentiles (µs).
pub fn merge(files: &[PathBuf]) -> Result<()> {
    print!("{}", render(&summarize(files)?));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use ringlab_client::intervals::IntervalLog;
    use std::time::{Duration, SystemTime};

    /// An open-loop client's log: `n` requests a second for `secs` seconds, corrected latency
    /// 5 ms, raw 50 µs.
    fn open_loop_log(path: &std::path::Path, secs: u64, n: u64) {
        let cfg = ringlab_client::Args::parse_from(["c", "127.0.0.1:1", "--rate", "1000"])
            .resolve()
            .unwrap();
        let mut log = IntervalLog::create(path, SystemTime::now(), &cfg).unwrap();
        let mut c = Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap();
        let mut r = c.clone();
        c.record_n(5000, n).unwrap();
        r.record_n(50, n).unwrap();
        for i in 0..secs {
            log.write(i, Duration::from_secs(1), &c, &r).unwrap();
        }
        log.finish().unwrap();
    }

    #[test]
    fn open_loop_logs_count_each_request_once() {
        let dir = std::env::temp_dir().join(format!("ringlab-bench-merge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let files = vec![dir.join("a.hlog"), dir.join("b.hlog")];
        open_loop_log(&files[0], 3, 100);
        open_loop_log(&files[1], 2, 40);
        let s = summarize(&files).unwrap();
        // The corrected count is the sum of the clients' corrected counts; the raw intervals
        // are kept apart, not added to it.
        assert_eq!(s.corrected.len(), 3 * 100 + 2 * 40);
        assert!(
            s.corrected.min() >= 4990,
            "raw latency mixed into corrected"
        );
        assert_eq!(s.raw.len(), 3 * 100 + 2 * 40);
        let text = render(&s);
        assert!(
            text.starts_with("merged 3 intervals from 2 file(s): 380 requests\n"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
