//! `ringlab-bench merge`: combine HdrHistogram interval logs from several clients exactly
//! (histograms are added; no percentile is averaged).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{IntervalLogIterator, LogEntry};
use hdrhistogram::serialization::Deserializer;
use hdrhistogram::Histogram;

/// Merge `files` and print the combined percentiles (µs).
pub fn merge(files: &[PathBuf]) -> Result<()> {
    let mut total: Option<Histogram<u64>> = None;
    let mut d = Deserializer::new();
    let mut intervals = 0usize;
    for f in files {
        let text = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        for entry in IntervalLogIterator::new(&text) {
            let entry = entry
                .map_err(|e| anyhow::anyhow!("{}: malformed interval log: {e:?}", f.display()))?;
            if let LogEntry::Interval(ilh) = entry {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(ilh.encoded_histogram())
                    .with_context(|| format!("{}: bad base64 in an interval", f.display()))?;
                let h: Histogram<u64> = d
                    .deserialize(&mut std::io::Cursor::new(bytes))
                    .map_err(|e| anyhow::anyhow!("{}: bad histogram: {e:?}", f.display()))?;
                intervals += 1;
                match &mut total {
                    Some(t) => t
                        .add(&h)
                        .map_err(|e| anyhow::anyhow!("adding histograms: {e:?}"))?,
                    None => total = Some(h),
                }
            }
        }
    }
    let Some(t) = total else {
        bail!("no interval histograms in {} file(s)", files.len());
    };
    println!(
        "merged {intervals} intervals from {} file(s): {} requests",
        files.len(),
        t.len()
    );
    println!(
        "latency µs: mean {:.1}, stdev {:.1}, max {}",
        t.mean(),
        t.stdev(),
        t.max()
    );
    for p in [50.0, 75.0, 90.0, 99.0, 99.9, 99.99, 100.0] {
        println!("  {p:>6}%  {}", t.value_at_quantile(p / 100.0));
    }
    Ok(())
}
