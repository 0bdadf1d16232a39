//! Results: per-thread histograms merged, the wrk-like summary and the JSON document (the
//! HdrHistogram interval log is [`crate::intervals`]'s). The summary and the JSON are rendered
//! from one [`Report`], so they cannot disagree.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::args::RunConfig;
use crate::engine::ThreadResult;
use crate::stats::{new_hist, Counters, Errors};

/// Percentiles in the summary and under `percentiles` in the JSON.
pub const PERCENTILES: [f64; 6] = [50.0, 90.0, 99.0, 99.9, 99.99, 100.0];

/// A thread is "near 100%" busy from this fraction of its wall time on.
pub const CPU_SATURATED: f64 = 0.90;

/// One histogram, summarised.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistSummary {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub stdev: f64,
    pub max: u64,
    /// `PERCENTILES` by name ("50", "99.9", "100").
    pub percentiles: BTreeMap<String, u64>,
    /// The full percentile spectrum (HdrHistogram's percentile distribution, two ticks per
    /// half distance): value (µs) at each percentile, with the count up to it.
    pub spectrum: Vec<SpectrumPoint>,
}

/// A point of the percentile spectrum.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SpectrumPoint {
    pub percentile: f64,
    pub value: u64,
    pub count: u64,
}

/// The name of a percentile as used in the JSON (`99.9`, `100`).
pub fn pct_name(p: f64) -> String {
    let s = format!("{p:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl HistSummary {
    /// Summarise `h` (values in µs).
    pub fn of(h: &Histogram<u64>) -> HistSummary {
        let empty = h.is_empty();
        let percentiles = PERCENTILES
            .iter()
            .map(|&p| {
                let v = if empty {
                    0
                } else {
                    h.value_at_quantile(p / 100.0)
                };
                (pct_name(p), v)
            })
            .collect();
        let spectrum = if empty {
            Vec::new()
        } else {
            h.iter_quantiles(2)
                .map(|v| SpectrumPoint {
                    percentile: v.quantile_iterated_to() * 100.0,
                    value: h.highest_equivalent(v.value_iterated_to()),
                    count: v.count_since_last_iteration(),
                })
                .collect()
        };
        HistSummary {
            count: h.len(),
            min: if empty { 0 } else { h.min() },
            mean: if empty { 0.0 } else { h.mean() },
            stdev: if empty { 0.0 } else { h.stdev() },
            max: if empty { 0 } else { h.max() },
            percentiles,
            spectrum,
        }
    }

    /// The value at `PERCENTILES[i]`.
    pub fn at(&self, p: f64) -> u64 {
        self.percentiles.get(&pct_name(p)).copied().unwrap_or(0)
    }
}

/// One loop's CPU use while measuring.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ThreadCpu {
    pub thread: usize,
    pub cpu: usize,
    /// CPU time / wall time while measuring (1.0 = one CPU fully busy).
    pub busy: f64,
}

/// Whether the client, not the server, may have been the limit.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct Saturation {
    /// Any reason below.
    pub saturated: bool,
    /// A loop's CPU use was near 100%.
    pub cpu_saturated: bool,
    /// Open loop: requests went out late or not at all.
    pub behind_schedule: bool,
    pub warnings: Vec<String>,
}

/// Everything a run produced (the `--json` document; `ringlab-bench` reads it back).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Report {
    pub client: String,
    pub version: String,
    pub target: String,
    pub proto: String,
    pub io: String,
    /// `closed` or `open`.
    pub mode: String,
    pub conns: usize,
    pub threads: usize,
    pub cores: String,
    pub pipeline: usize,
    /// Open loop: the requested rate (requests/s).
    pub rate: Option<f64>,
    pub warmup_s: f64,
    /// Measured time: from the end of the warmup to the end of the run (or to the last
    /// measured response, whichever is later).
    pub elapsed_s: f64,
    /// Measured responses (each one a sample in the latency histograms).
    pub requests: u64,
    pub requests_per_sec: f64,
    /// Wire bytes of measured responses.
    pub bytes: u64,
    pub bytes_per_sec: f64,
    /// Latency in µs from the intended send time (open loop: the schedule's; closed loop: the
    /// actual send, so equal to `raw_latency_us`).
    pub latency_us: HistSummary,
    /// Latency in µs from the actual send time (not corrected for coordinated omission).
    pub raw_latency_us: HistSummary,
    /// Time to establish connections, in µs (whole run).
    pub connect_us: HistSummary,
    /// Open loop: actual minus intended send time, in µs.
    pub lag_us: Option<HistSummary>,
    pub errors: Errors,
    pub errors_total: u64,
    pub data_errors: u64,
    /// Measured responses by status code (HTTP).
    pub status: BTreeMap<String, u64>,
    pub non_2xx_3xx: u64,
    pub counters: Counters,
    pub cpu: Vec<ThreadCpu>,
    pub saturation: Saturation,
    /// Notes on what went wrong (first data error, connect failures, giving up).
    pub messages: Vec<String>,
    pub exit_code: u8,
    /// `--processes K` (K > 1): each process's share and results; the figures above are the
    /// exact merge of these (histograms added).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessResult>,
}

/// One client process of a `--processes` run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessResult {
    /// 0 for the first process.
    pub index: usize,
    pub pid: u32,
    pub cores: String,
    pub conns: usize,
    pub rate: Option<f64>,
    /// Measured responses.
    pub requests: u64,
    pub requests_per_sec: f64,
    pub elapsed_s: f64,
    /// Its own latency (µs), for comparison only: the run's percentiles come from the merged
    /// histogram.
    pub latency_p50_us: u64,
    pub latency_p99_us: u64,
    pub latency_max_us: u64,
    pub errors_total: u64,
    pub exit_code: u8,
}

impl ProcessResult {
    /// Summarise one process's result.
    pub fn of(
        index: usize,
        pid: u32,
        cores: String,
        conns: usize,
        rate: Option<f64>,
        p: &Partial,
        exit_code: u8,
    ) -> Self {
        let h = &p.corrected;
        let at = |q: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            }
        };
        let secs = p.elapsed.as_secs_f64();
        ProcessResult {
            index,
            pid,
            cores,
            conns,
            rate,
            requests: p.counters.measured,
            requests_per_sec: if secs > 0.0 {
                p.counters.measured as f64 / secs
            } else {
                0.0
            },
            elapsed_s: secs,
            latency_p50_us: at(0.5),
            latency_p99_us: at(0.99),
            latency_max_us: if h.is_empty() { 0 } else { h.max() },
            errors_total: p.errors.total(),
            exit_code,
        }
    }
}

/// What a run measured before it is summarised: the histograms themselves (so results of
/// several processes merge exactly, by adding histograms), counters, errors, notes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Partial {
    #[serde(with = "hist_b64")]
    pub corrected: Histogram<u64>,
    #[serde(with = "hist_b64")]
    pub raw: Histogram<u64>,
    #[serde(with = "hist_b64")]
    pub connect: Histogram<u64>,
    #[serde(with = "hist_b64")]
    pub lag: Histogram<u64>,
    pub counters: Counters,
    pub errors: Errors,
    pub messages: Vec<String>,
    pub cpu: Vec<ThreadCpu>,
    /// Measured time.
    pub elapsed: Duration,
    /// Something went wrong besides the measurement (exit code at least 1).
    pub failed: bool,
}

impl Partial {
    /// An empty result.
    pub fn new() -> Partial {
        Partial {
            corrected: new_hist(),
            raw: new_hist(),
            connect: new_hist(),
            lag: new_hist(),
            counters: Counters::default(),
            errors: Errors::default(),
            messages: Vec::new(),
            cpu: Vec::new(),
            elapsed: Duration::ZERO,
            failed: false,
        }
    }

    /// The threads' results, merged.
    pub fn of(results: &[ThreadResult], elapsed: Duration) -> Partial {
        let mut p = Partial::new();
        p.elapsed = elapsed;
        for r in results {
            p.add_thread(r);
        }
        p
    }

    /// Add another process's result: histograms added (never percentiles averaged), counters
    /// summed, notes kept once, the longer measured time.
    pub fn merge(&mut self, o: &Partial) {
        let _ = self.corrected.add(&o.corrected);
        let _ = self.raw.add(&o.raw);
        let _ = self.connect.add(&o.connect);
        let _ = self.lag.add(&o.lag);
        self.counters.add(&o.counters);
        self.errors.add(&o.errors);
        for m in &o.messages {
            if !self.messages.contains(m) {
                self.messages.push(m.clone());
            }
        }
        self.cpu.extend(o.cpu.iter().cloned());
        self.elapsed = self.elapsed.max(o.elapsed);
        self.failed |= o.failed;
    }

    fn add_thread(&mut self, r: &ThreadResult) {
        let _ = self.corrected.add(&r.corrected);
        let _ = self.raw.add(&r.raw);
        let _ = self.connect.add(&r.connect);
        let _ = self.lag.add(&r.lag);
        self.counters.add(&r.counters);
        self.errors.add(&r.errors);
        // Giving up names the first connect error already.
        let connect_note = if r.gave_up.is_some() {
            None
        } else {
            r.first_connect_error.clone()
        };
        for m in [
            r.gave_up.as_ref().map(|g| g.0.clone()),
            connect_note,
            r.first_data_error.clone(),
        ]
        .iter()
        .flatten()
        {
            if !self.messages.contains(m) {
                self.messages.push(m.clone());
            }
        }
        let busy = if r.cpu_wall.is_zero() {
            0.0
        } else {
            r.cpu_time.as_secs_f64() / r.cpu_wall.as_secs_f64()
        };
        self.cpu.push(ThreadCpu {
            thread: r.thread,
            cpu: r.cpu,
            busy,
        });
    }
}

impl Default for Partial {
    fn default() -> Self {
        Partial::new()
    }
}

/// Histograms in JSON: HdrHistogram's V2 serialization, base64.
mod hist_b64 {
    use base64::Engine as _;
    use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
    use hdrhistogram::Histogram;
    use serde::{de::Error as _, ser::Error as _, Deserialize, Serializer};

    pub fn serialize<S: Serializer>(h: &Histogram<u64>, s: S) -> Result<S::Ok, S::Error> {
        let mut buf = Vec::new();
        V2Serializer::new()
            .serialize(h, &mut buf)
            .map_err(|e| S::Error::custom(format!("{e:?}")))?;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(buf))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Histogram<u64>, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(D::Error::custom)?;
        Deserializer::new()
            .deserialize(&mut std::io::Cursor::new(bytes))
            .map_err(|e| D::Error::custom(format!("bad histogram: {e:?}")))
    }
}

/// Merge the threads' results into a report.
pub fn build(cfg: &RunConfig, results: &[ThreadResult], elapsed: Duration) -> Report {
    build_from(cfg, Partial::of(results, elapsed))
}

/// Summarise a (possibly merged) result into a report.
pub fn build_from(cfg: &RunConfig, p: Partial) -> Report {
    let Partial {
        corrected,
        raw,
        connect,
        lag,
        counters,
        errors,
        mut messages,
        cpu,
        elapsed,
        failed,
    } = p;
    let secs = elapsed.as_secs_f64().max(1e-9);
    let requests = counters.measured;
    let rps = requests as f64 / secs;
    let lag_summary = cfg.open_loop().then(|| HistSummary::of(&lag));
    let mut sat = Saturation::default();
    if let Some(c) = cpu.iter().find(|c| c.busy >= CPU_SATURATED) {
        sat.cpu_saturated = true;
        sat.warnings.push(format!(
            "client saturated: loop {} (CPU {}) was {:.0}% busy; the client, not the server, may be the limit (add --cores)",
            c.thread,
            c.cpu,
            c.busy * 100.0
        ));
    }
    if let (Some(rate), Some(l)) = (cfg.rate, &lag_summary) {
        let p99 = l.at(99.0);
        let short = rps < 0.95 * rate && cfg.requests.is_none();
        if p99 > 1000 || counters.unsent > 0 || short {
            sat.behind_schedule = true;
            sat.warnings.push(format!(
                "open loop fell behind schedule: {rps:.0} of {rate:.0} requests/s, send lag p99 {} max {}, {} due but never sent; the client or too few connections (--conns, --pipeline) could not keep the rate; corrected latencies include the wait",
                fmt_us(p99),
                fmt_us(l.max),
                counters.unsent
            ));
        }
    }
    sat.saturated = sat.cpu_saturated || sat.behind_schedule;
    let data_errors = errors.data();
    let mut exit_code = 0;
    if data_errors > 0 {
        exit_code = 1;
    }
    if requests == 0 {
        exit_code = 1;
        messages.push("no request succeeded".to_string());
    }
    if failed {
        exit_code = exit_code.max(1);
    }
    Report {
        client: "ringlab-client".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        target: cfg.target_name.clone(),
        proto: cfg.proto.name().into(),
        io: cfg.io.name().into(),
        mode: if cfg.open_loop() { "open" } else { "closed" }.into(),
        conns: cfg.conns,
        threads: cfg.cpus.len(),
        cores: cfg.cpus.to_string(),
        pipeline: cfg.pipeline,
        rate: cfg.rate,
        warmup_s: cfg.warmup.as_secs_f64(),
        elapsed_s: secs,
        requests,
        requests_per_sec: rps,
        bytes: counters.measured_bytes,
        bytes_per_sec: counters.measured_bytes as f64 / secs,
        latency_us: HistSummary::of(&corrected),
        raw_latency_us: HistSummary::of(&raw),
        connect_us: HistSummary::of(&connect),
        lag_us: lag_summary,
        errors_total: errors.total(),
        data_errors,
        errors,
        status: counters
            .status
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect(),
        non_2xx_3xx: counters.non_2xx_3xx(),
        counters,
        cpu,
        saturation: sat,
        messages,
        exit_code,
        processes: Vec::new(),
    }
}

/// `123.45us`, `1.23ms`, `1.23s`, as wrk prints durations.
pub fn fmt_us(us: u64) -> String {
    fmt_us_f(us as f64)
}

fn fmt_us_f(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.2}us")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

/// `1.23KB`, `4.56MB` (powers of 1024, as wrk prints sizes).
pub fn fmt_bytes(b: f64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i + 1 < units.len() {
        v /= 1024.0;
        i += 1;
    }
    format!("{v:.2}{}", units[i])
}

impl Report {
    /// The human summary, like wrk's.
    pub fn summary(&self) -> String {
        let mut o = String::new();
        let loops = if self.threads == 1 {
            format!("1 loop on CPU {}", self.cores)
        } else {
            format!("{} loops on CPUs {}", self.threads, self.cores)
        };
        let mode = match self.rate {
            Some(r) => format!("open loop at {r} requests/s"),
            None => "closed loop".to_string(),
        };
        let _ = writeln!(
            o,
            "Running {:.2}s test @ {} ({}, io {})",
            self.elapsed_s, self.target, self.proto, self.io
        );
        let _ = writeln!(
            o,
            "  {loops}, {} connections, {mode}, pipeline {}{}",
            self.conns,
            self.pipeline,
            if self.warmup_s > 0.0 {
                format!(", after {:.2}s warmup", self.warmup_s)
            } else {
                String::new()
            }
        );
        let l = &self.latency_us;
        let r = &self.raw_latency_us;
        let _ = writeln!(o, "  {:<14}{:>10}{:>10}{:>10}", "", "Avg", "Stdev", "Max");
        let open = self.mode == "open";
        let _ = writeln!(
            o,
            "  {:<14}{:>10}{:>10}{:>10}",
            "Latency",
            fmt_us_f(l.mean),
            fmt_us_f(l.stdev),
            fmt_us(l.max)
        );
        if open {
            let _ = writeln!(
                o,
                "  {:<14}{:>10}{:>10}{:>10}",
                "Raw latency",
                fmt_us_f(r.mean),
                fmt_us_f(r.stdev),
                fmt_us(r.max)
            );
            let _ = writeln!(
                o,
                "  Latency Distribution (corrected from the intended send time; raw from the actual send)"
            );
        } else {
            let _ = writeln!(
                o,
                "  Latency Distribution (closed loop: from the actual send; use --rate for corrected latency)"
            );
        }
        for p in PERCENTILES {
            if open {
                let _ = writeln!(
                    o,
                    "  {:>8}%{:>12}{:>12}",
                    format!("{p:.3}"),
                    fmt_us(l.at(p)),
                    fmt_us(r.at(p))
                );
            } else {
                let _ = writeln!(o, "  {:>8}%{:>12}", format!("{p:.3}"), fmt_us(l.at(p)));
            }
        }
        let c = &self.connect_us;
        let _ = writeln!(
            o,
            "  Connect       {} connects, avg {}, p99 {}, max {}",
            c.count,
            fmt_us_f(c.mean),
            fmt_us(c.at(99.0)),
            fmt_us(c.max)
        );
        if let Some(lag) = &self.lag_us {
            let _ = writeln!(
                o,
                "  Send lag      avg {}, p99 {}, max {}; {} due but never sent",
                fmt_us_f(lag.mean),
                fmt_us(lag.at(99.0)),
                fmt_us(lag.max),
                self.counters.unsent
            );
        }
        let _ = writeln!(
            o,
            "  {} requests in {:.2}s, {} read",
            self.requests,
            self.elapsed_s,
            fmt_bytes(self.bytes as f64)
        );
        if !self.status.is_empty() {
            let codes: Vec<String> = self
                .status
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            let _ = writeln!(o, "  Status codes: {}", codes.join(", "));
        }
        if self.non_2xx_3xx > 0 {
            let _ = writeln!(o, "  Non-2xx or 3xx responses: {}", self.non_2xx_3xx);
        }
        let errs: Vec<String> = self
            .errors
            .kinds()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        if errs.is_empty() {
            let _ = writeln!(o, "  Errors: none");
        } else {
            let _ = writeln!(o, "  Errors: {} ({})", self.errors_total, errs.join(", "));
        }
        if self.data_errors > 0 {
            let _ = writeln!(o, "  DATA ERRORS: {}", self.data_errors);
        }
        let busy: Vec<String> = self
            .cpu
            .iter()
            .map(|c| format!("CPU {} {:.0}%", c.cpu, c.busy * 100.0))
            .collect();
        let _ = writeln!(o, "  Client CPU: {}", busy.join(", "));
        for p in &self.processes {
            let _ = writeln!(
                o,
                "  Process {} (pid {}, CPUs {}, {} connections): {} requests, {:.2}/s, p50 {}, p99 {}, max {}, errors {}, exit {}",
                p.index,
                p.pid,
                p.cores,
                p.conns,
                p.requests,
                p.requests_per_sec,
                fmt_us(p.latency_p50_us),
                fmt_us(p.latency_p99_us),
                fmt_us(p.latency_max_us),
                p.errors_total,
                p.exit_code
            );
        }
        let _ = writeln!(o, "Requests/sec: {:>12.2}", self.requests_per_sec);
        let _ = writeln!(o, "Transfer/sec: {:>12}", fmt_bytes(self.bytes_per_sec));
        for w in &self.saturation.warnings {
            let _ = writeln!(o, "WARNING: {w}");
        }
        for m in &self.messages {
            let _ = writeln!(o, "NOTE: {m}");
        }
        o
    }

    /// The JSON document.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_us(999), "999.00us");
        assert_eq!(fmt_us(1500), "1.50ms");
        assert_eq!(fmt_us(2_500_000), "2.50s");
        assert_eq!(fmt_bytes(512.0), "512.00B");
        assert_eq!(fmt_bytes(2048.0), "2.00KB");
        assert_eq!(pct_name(99.9), "99.9");
        assert_eq!(pct_name(100.0), "100");
        assert_eq!(pct_name(99.99), "99.99");
    }

    #[test]
    fn summary_of_empty_histogram() {
        let s = HistSummary::of(&new_hist());
        assert_eq!(s.count, 0);
        assert_eq!(s.at(99.0), 0);
    }
}
