//! Verdicts: a scenario's runs, paired by repetition, turned into ratios with their interval,
//! the A/A noise floor and the call ([`crate::stats`]), as `results.json` carries them and as
//! report.md prints them first.

use serde::Serialize;

use crate::run::RunResult;
use crate::stats::{self, Call, Interval};

/// A figure of a run that a verdict compares.
#[derive(Clone, Copy)]
pub struct Metric {
    /// Its key in results.json.
    pub key: &'static str,
    /// Its name in the verdict line.
    pub name: &'static str,
    pub get: fn(&RunResult) -> f64,
}

pub const CPU_PER_REQ: Metric = Metric {
    key: "server_cpu_us_per_request",
    name: "server CPU/request",
    get: |r| r.cpu_per_req_us,
};

pub const RPS: Metric = Metric {
    key: "requests_per_s",
    name: "req/s",
    get: |r| r.rps,
};

pub const P99: Metric = Metric {
    key: "p99_us",
    name: "p99 latency",
    get: |r| r.p99_us,
};

/// One comparison's verdict (an element of results.json's `verdicts`).
#[derive(Clone, Debug, Serialize)]
pub struct Verdict {
    pub scenario: String,
    pub candidate: String,
    pub baseline: String,
    pub conns: u32,
    pub load: String,
    pub metric: String,
    pub ratio: f64,
    pub ci95: [f64; 2],
    /// The A/A control's interval, where the scenario has one.
    pub noise_floor: Option<[f64; 2]>,
    pub significant: bool,
    /// `significant`, `within noise`, or `too few repetitions for a 95% interval`.
    pub call: String,
    /// Pairs the interval rests on.
    pub reps: usize,
    /// The interval's real coverage (0.95 or more from 6 pairs; the data's range below).
    pub confidence: f64,
    #[serde(skip)]
    metric_name: &'static str,
}

/// Where a comparison sits: its scenario, connection count, load, and the runs' `x`.
#[derive(Clone, Debug)]
pub struct At {
    pub scenario: String,
    pub conns: u32,
    pub load: String,
    pub x: f64,
}

/// `(candidate_i, baseline_i)` of `metric` for every repetition `i` with a run of both
/// labels at `x` in `raw`.
pub fn pairs(raw: &[RunResult], cand: &str, base: &str, x: f64, m: Metric) -> Vec<(f64, f64)> {
    raw.iter()
        .filter(|c| c.label == cand && c.x == x)
        .filter_map(|c| {
            raw.iter()
                .find(|b| b.label == base && b.x == x && b.rep == c.rep)
                .map(|b| ((m.get)(c), (m.get)(b)))
        })
        .collect()
}

/// The interval of `cand ÷ base` at `at`, if any pair was measured.
pub fn interval(raw: &[RunResult], cand: &str, base: &str, x: f64, m: Metric) -> Option<Interval> {
    stats::paired(&pairs(raw, cand, base, x, m))
}

/// The verdict on `cand` against `base` at `at` (`floor`: the A/A interval there).
pub fn judge(
    raw: &[RunResult],
    at: &At,
    cand: &str,
    base: &str,
    floor: Option<&Interval>,
    m: Metric,
) -> Option<Verdict> {
    let iv = interval(raw, cand, base, at.x, m)?;
    let c = stats::call(&iv, floor);
    Some(Verdict {
        scenario: at.scenario.clone(),
        candidate: cand.into(),
        baseline: base.into(),
        conns: at.conns,
        load: at.load.clone(),
        metric: m.key.into(),
        ratio: iv.ratio,
        ci95: [iv.lo, iv.hi],
        noise_floor: floor.map(|f| [f.lo, f.hi]),
        significant: c == Call::Significant,
        call: c.text().into(),
        reps: iv.n,
        confidence: iv.confidence,
        metric_name: m.name,
    })
}

/// `0.96× (95% CI 0.93–0.99)`, or with fewer than 6 pairs the range and what it is worth.
pub fn interval_text(ratio: f64, lo: f64, hi: f64, n: usize, confidence: f64) -> String {
    if confidence >= stats::LEVEL {
        format!("{ratio:.2}× (95% CI {lo:.2}–{hi:.2})")
    } else {
        format!(
            "{ratio:.2}× (range {lo:.2}–{hi:.2} over {n} rep{}, {:.0}% confidence)",
            if n == 1 { "" } else { "s" },
            confidence * 100.0
        )
    }
}

impl Verdict {
    /// `uring vs epoll, 512 conns, 50% load (30k req/s): server CPU/request 0.96× (95% CI
    /// 0.93–0.99), significant (A/A floor 0.98–1.02)`.
    pub fn line(&self) -> String {
        let floor = self
            .noise_floor
            .map_or(" (no A/A control in this scenario)".to_string(), |f| {
                format!(" (A/A floor {:.2}–{:.2})", f[0], f[1])
            });
        let load = if self.load.is_empty() {
            String::new()
        } else {
            format!(", {}", self.load)
        };
        format!(
            "{} vs {}, {} conns{load}: {} {}, {}{floor}",
            self.candidate,
            self.baseline,
            self.conns,
            self.metric_name,
            interval_text(
                self.ratio,
                self.ci95[0],
                self.ci95[1],
                self.reps,
                self.confidence
            ),
            self.call,
        )
    }
}

/// The ratio cell of a table row: `0.96 (0.93–0.99)`, `*` when significant; the range in
/// brackets when fewer than 6 pairs.
pub fn cell(iv: Option<&Interval>, floor: Option<&Interval>) -> String {
    match iv {
        None => "–".into(),
        Some(iv) => {
            let star = if stats::call(iv, floor) == Call::Significant {
                " *"
            } else {
                ""
            };
            if iv.confidence >= stats::LEVEL {
                format!("{:.2} ({:.2}–{:.2}){star}", iv.ratio, iv.lo, iv.hi)
            } else {
                format!("{:.2} [{:.2}–{:.2}]{star}", iv.ratio, iv.lo, iv.hi)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(label: &str, x: f64, rep: usize, cpu: f64) -> RunResult {
        RunResult {
            label: label.into(),
            x,
            rep,
            cpu_per_req_us: cpu,
            ..RunResult::default()
        }
    }

    #[test]
    fn pairs_by_repetition_and_skips_a_failed_run() {
        let mut raw = Vec::new();
        for rep in 0..8 {
            raw.push(run("uring", 1.0, rep, 9.0 + rep as f64 * 0.01));
            if rep != 3 {
                raw.push(run("epoll", 1.0, rep, 10.0));
            }
            raw.push(run("epoll A/A", 1.0, rep, 10.0));
            raw.push(run("epoll", 2.0, rep, 99.0));
        }
        let p = pairs(&raw, "uring", "epoll", 1.0, CPU_PER_REQ);
        assert_eq!(p.len(), 7);
        assert!(p.iter().all(|(_, b)| *b == 10.0));
        let at = At {
            scenario: "compare".into(),
            conns: 512,
            load: "50% load (30k req/s)".into(),
            x: 1.0,
        };
        let floor = interval(&raw, "epoll A/A", "epoll", 1.0, CPU_PER_REQ).unwrap();
        let v = judge(&raw, &at, "uring", "epoll", Some(&floor), CPU_PER_REQ).unwrap();
        assert!(v.significant, "{v:?}");
        assert!(v.ratio > 0.9 && v.ratio < 0.91, "{v:?}");
        assert_eq!(v.noise_floor, Some([1.0, 1.0]));
        let line = v.line();
        assert!(
            line.starts_with("uring vs epoll, 512 conns, 50% load (30k req/s): server CPU/request 0.90× (95% CI 0.90–0.91), significant (A/A floor 1.00–1.00)"),
            "{line}"
        );
        let json = serde_json::to_value(&v).unwrap();
        for k in [
            "scenario",
            "candidate",
            "baseline",
            "conns",
            "load",
            "metric",
            "ratio",
            "ci95",
            "noise_floor",
            "significant",
        ] {
            assert!(json.get(k).is_some(), "{k} missing: {json}");
        }
        assert!(judge(&raw, &at, "tokio", "epoll", None, CPU_PER_REQ).is_none());
    }

    #[test]
    fn few_reps_print_a_range_not_a_95_percent_interval() {
        let raw = vec![run("a", 1.0, 0, 11.0), run("b", 1.0, 0, 10.0)];
        let at = At {
            scenario: "x".into(),
            conns: 1,
            load: String::new(),
            x: 1.0,
        };
        let v = judge(&raw, &at, "a", "b", None, CPU_PER_REQ).unwrap();
        assert!(!v.significant);
        assert!(
            v.line()
                .contains("1.10× (range 1.10–1.10 over 1 rep, 0% confidence), too few"),
            "{}",
            v.line()
        );
    }
}
