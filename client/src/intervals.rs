//! Interval logs written, read and merged, once: in the client library because the client
//! writes them ([`IntervalLog`]) and merges its processes' logs, and the bench, which depends
//! on this library for the report types, merges clients' logs with the same code.
//!
//! A log holds one interval a second (the format of Java's `HistogramLogWriter`): the
//! untagged histogram is the corrected latency, the `Tag=raw` one (open loop only) the raw
//! latency of the same requests. Merging adds the histograms of the same interval (seconds
//! from the start of measurement, which the clients of one run share) and the same tag; a
//! raw histogram is never added to a corrected one, which would count every request twice.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use hdrhistogram::serialization::interval_log::{
    IntervalLogIterator, IntervalLogWriterBuilder, LogEntry, Tag,
};
use hdrhistogram::serialization::{Deserializer, V2DeflateSerializer};
use hdrhistogram::Histogram;

use crate::args::RunConfig;
use crate::stats::new_hist;

/// An HdrHistogram interval log (the format of Java's `HistogramLogWriter`, V2 compressed
/// histograms in base64), one interval a second. Values are microseconds; the untagged
/// histograms are the corrected latency, `Tag=raw` ones the raw latency (open loop only).
pub struct IntervalLog {
    out: BufWriter<File>,
    serializer: V2DeflateSerializer,
    line: Vec<u8>,
    raw: bool,
}

impl IntervalLog {
    /// Create `path` and write the header; `base` is the wall-clock time of the start of
    /// measurement (interval timestamps count from it).
    pub fn create(path: &Path, base: SystemTime, cfg: &RunConfig) -> io::Result<IntervalLog> {
        let mut out = BufWriter::new(File::create(path)?);
        let mut head = Vec::new();
        {
            let mut ser = V2DeflateSerializer::new();
            let mut b = IntervalLogWriterBuilder::new();
            b.add_comment(&format!(
                "ringlab-client {} @ {} ({}, io {}, {} connections, {}); values in microseconds (HistogramLogProcessor: -outputValueUnitRatio 1000 for ms); Interval_Max in ms",
                env!("CARGO_PKG_VERSION"),
                cfg.target_name,
                cfg.proto.name(),
                cfg.io.name(),
                cfg.conns,
                match cfg.rate {
                    Some(r) => format!("open loop at {r}/s; untagged = corrected, Tag=raw = uncorrected"),
                    None => "closed loop".to_string(),
                }
            ))
            .add_comment("[Histogram log format version 1.3]")
            .with_start_time(base)
            .with_base_time(base)
            .with_max_value_divisor(1000.0);
            b.begin_log_with(&mut head, &mut ser)?;
        }
        head.extend_from_slice(
            b"\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"\n",
        );
        out.write_all(&head)?;
        Ok(IntervalLog {
            out,
            serializer: V2DeflateSerializer::new(),
            line: Vec::new(),
            raw: cfg.open_loop(),
        })
    }

    fn write_one(
        &mut self,
        h: &Histogram<u64>,
        start: Duration,
        length: Duration,
        tag: Option<Tag<'_>>,
    ) -> io::Result<()> {
        self.line.clear();
        {
            let mut w = IntervalLogWriterBuilder::new()
                .with_max_value_divisor(1000.0)
                .begin_log_with(&mut self.line, &mut self.serializer)?;
            w.write_histogram(h, start, length, tag)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        // The per-line builder repeats the divisor comment; keep only the histogram line.
        let text = std::mem::take(&mut self.line);
        for l in text.split_inclusive(|b| *b == b'\n') {
            if !l.starts_with(b"#") {
                self.out.write_all(l)?;
            }
        }
        self.line = text;
        Ok(())
    }

    /// Write interval `index` (seconds from the start of measurement) of length `length`.
    pub fn write(
        &mut self,
        index: u64,
        length: Duration,
        corrected: &Histogram<u64>,
        raw: &Histogram<u64>,
    ) -> io::Result<()> {
        let start = Duration::from_secs(index);
        self.write_one(corrected, start, length, None)?;
        if self.raw {
            self.write_one(raw, start, length, Tag::new("raw"))?;
        }
        Ok(())
    }

    /// Flush to the file.
    pub fn finish(mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// One interval of the merged logs: each tag's histograms added.
#[derive(Debug)]
pub struct Interval {
    /// The longest length any log gave this interval.
    pub length: Duration,
    /// Untagged: latency from the intended send time.
    pub corrected: Option<Histogram<u64>>,
    /// `Tag=raw`: latency from the actual send time.
    pub raw: Option<Histogram<u64>>,
}

/// Several interval logs added interval by interval.
#[derive(Debug, Default)]
pub struct Merged {
    /// The earliest start time of the logs, since the Unix epoch.
    pub start: Option<Duration>,
    /// By interval index (seconds from the start).
    pub intervals: BTreeMap<u64, Interval>,
}

fn bad(path: &Path, what: &str, e: impl std::fmt::Debug) -> io::Error {
    io::Error::other(format!("{}: {what}: {e:?}", path.display()))
}

fn add_into(slot: &mut Option<Histogram<u64>>, h: &Histogram<u64>) -> Result<(), String> {
    slot.get_or_insert_with(new_hist)
        .add(h)
        .map_err(|e| format!("{e:?}"))
}

impl Merged {
    /// The logs at `paths`, merged.
    pub fn read(paths: &[impl AsRef<Path>]) -> io::Result<Merged> {
        let mut m = Merged::default();
        for p in paths {
            m.add_log(p.as_ref())?;
        }
        Ok(m)
    }

    /// Add the log at `path`.
    pub fn add_log(&mut self, path: &Path) -> io::Result<()> {
        let text = std::fs::read(path)
            .map_err(|e| io::Error::new(e.kind(), format!("reading {}: {e}", path.display())))?;
        let mut d = Deserializer::new();
        for entry in IntervalLogIterator::new(&text) {
            match entry.map_err(|e| bad(path, "malformed interval log", e))? {
                LogEntry::StartTime(t) => {
                    self.start = Some(self.start.map_or(t, |s| s.min(t)));
                }
                LogEntry::Interval(ilh) => {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(ilh.encoded_histogram())
                        .map_err(|e| bad(path, "bad base64 in an interval", e))?;
                    let h: Histogram<u64> = d
                        .deserialize(&mut std::io::Cursor::new(bytes))
                        .map_err(|e| bad(path, "bad histogram", e))?;
                    let index = ilh.start_timestamp().as_secs_f64().round() as u64;
                    let iv = self.intervals.entry(index).or_insert(Interval {
                        length: Duration::ZERO,
                        corrected: None,
                        raw: None,
                    });
                    iv.length = iv.length.max(ilh.duration());
                    let slot = match ilh.tag() {
                        Some(t) if t.as_str() == "raw" => &mut iv.raw,
                        _ => &mut iv.corrected,
                    };
                    add_into(slot, &h).map_err(|e| bad(path, "adding histograms", e))?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Intervals that carry a corrected histogram, and those that carry a raw one.
    pub fn counts(&self) -> (usize, usize) {
        let c = self.intervals.values().filter(|i| i.corrected.is_some());
        let r = self.intervals.values().filter(|i| i.raw.is_some());
        (c.count(), r.count())
    }

    /// Every interval's corrected histogram added.
    pub fn corrected_total(&self) -> Histogram<u64> {
        self.total(|i| i.corrected.as_ref())
    }

    /// Every interval's raw histogram added (empty for closed-loop logs).
    pub fn raw_total(&self) -> Histogram<u64> {
        self.total(|i| i.raw.as_ref())
    }

    fn total(&self, pick: fn(&Interval) -> Option<&Histogram<u64>>) -> Histogram<u64> {
        let mut t = new_hist();
        for h in self.intervals.values().filter_map(pick) {
            // Every histogram here was already added into one of the same bounds.
            let _ = t.add(h);
        }
        t
    }

    /// Write the merged log to `out`, with the header of a run configured as `cfg`.
    pub fn write(&self, out: &Path, cfg: &RunConfig) -> io::Result<()> {
        let base = SystemTime::UNIX_EPOCH + self.start.unwrap_or_default();
        let mut log = IntervalLog::create(out, base, cfg)?;
        let empty = new_hist();
        for (&i, iv) in &self.intervals {
            let c = iv.corrected.as_ref().unwrap_or(&empty);
            let r = iv.raw.as_ref().unwrap_or(&empty);
            log.write(i, iv.length, c, r)?;
        }
        log.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// An open-loop log at `path` of `secs` intervals, each with `n` corrected samples of
    /// `corrected_us` and `n` raw ones of `raw_us`.
    fn open_loop_log(path: &Path, secs: u64, n: u64, corrected_us: u64, raw_us: u64) {
        let cfg = crate::Args::parse_from(["ringlab-client", "127.0.0.1:1", "--rate", "1000"])
            .resolve()
            .expect("resolves");
        let mut log = IntervalLog::create(path, SystemTime::now(), &cfg).expect("creates");
        for i in 0..secs {
            let (mut c, mut r) = (new_hist(), new_hist());
            c.record_n(corrected_us, n).expect("in bounds");
            r.record_n(raw_us, n).expect("in bounds");
            log.write(i, Duration::from_secs(1), &c, &r)
                .expect("writes");
        }
        log.finish().expect("flushes");
    }

    #[test]
    fn merging_adds_each_tag_apart() {
        let dir = std::env::temp_dir().join(format!("ringlab-intervals-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b, out) = (dir.join("a.hlog"), dir.join("b.hlog"), dir.join("m.hlog"));
        open_loop_log(&a, 3, 100, 5000, 50);
        open_loop_log(&b, 2, 40, 7000, 70);
        let m = Merged::read(&[&a, &b]).unwrap();
        assert_eq!(m.counts(), (3, 3));
        assert_eq!(m.corrected_total().len(), 3 * 100 + 2 * 40);
        assert_eq!(m.raw_total().len(), 3 * 100 + 2 * 40);
        assert!(
            m.corrected_total().min() >= 4990,
            "raw mixed into corrected"
        );
        assert!(m.raw_total().max() <= 80, "corrected mixed into raw");
        // Written and read back: the same intervals.
        let cfg = crate::Args::parse_from(["ringlab-client", "127.0.0.1:1", "--rate", "1000"])
            .resolve()
            .unwrap();
        m.write(&out, &cfg).unwrap();
        let back = Merged::read(&[&out]).unwrap();
        assert_eq!(back.counts(), (3, 3));
        assert_eq!(back.corrected_total().len(), 380);
        assert_eq!(back.intervals[&0].corrected.as_ref().unwrap().len(), 140);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
