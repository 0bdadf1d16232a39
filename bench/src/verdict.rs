//! Verdicts: a scenario's runs, paired by repetition, turned into ratios with their interval,
//! the A/A noise floor and the call ([`crate::stats`]), as `results.json` carries them and as
//! report.md prints them first.

use serde::Serialize;

use crate::run::RunResult;
use crate::stats::{self, Call, Control, Interval};

/// A figure of a run (`R`: a [`RunResult`], or a scenario's own run type) that a verdict
/// compares.
pub struct Metric<R = RunResult> {
    /// Its key in results.json.
    pub key: &'static str,
    /// Its name in the verdict line.
    pub name: &'static str,
    pub get: fn(&R) -> f64,
}

impl<R> Clone for Metric<R> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<R> Copy for Metric<R> {}

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
    /// The candidate against the A/A control (the baseline's second instance), paired over the
    /// same repetitions, where the control is a twin of this comparison's baseline.
    pub vs_control: Option<[f64; 2]>,
    pub significant: bool,
    /// `significant` (the candidate differs from the baseline and from its second instance,
    /// each at 95%: [`stats::call`]), `within noise`, or `too few repetitions for a 95%
    /// interval`.
    pub call: String,
    /// Pairs the interval rests on.
    pub reps: usize,
    /// The interval's real coverage (0.95 or more from 6 pairs; the data's range below).
    pub confidence: f64,
    /// The chance that a rerun with as many pairs makes the same call ([`stats::repeat`]: this
    /// run's estimate and spread taken as the truth); none below 95% coverage or where the
    /// control is not a twin of the baseline.
    pub repeat_chance: Option<f64>,
    /// The pairs with which the estimated difference would be called significant 9 runs in 10
    /// (none for an estimate of no difference at all).
    pub pairs_for_90: Option<usize>,
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

/// The label of `row`'s A/A control: a second instance of it, measured in the same runs.
pub fn aa_of(row: &str) -> String {
    format!("{row} A/A")
}

/// Whether `label` is an A/A control's row ([`aa_of`]).
pub fn is_aa(label: &str) -> bool {
    label.ends_with(" A/A")
}

/// The A/A control of `cand ÷ base` at `x` where the scenario runs a twin of `base` ([`aa_of`]
/// its label); none where `base` has no twin, and none for the twin itself.
pub fn twin_control(
    raw: &[RunResult],
    cand: &str,
    base: &str,
    x: f64,
    m: Metric,
) -> Option<Control> {
    control(raw, &aa_of(base), base, cand, base, x, m)
}

/// The A/A control of `cand ÷ base` at `x`: `aa ÷ aa_base` as the floor, and `cand ÷ aa` where
/// `aa` is a second instance of `base` (`aa_base == base`); none for the control itself, and
/// none before the control has a pair.
pub fn control(
    raw: &[RunResult],
    aa: &str,
    aa_base: &str,
    cand: &str,
    base: &str,
    x: f64,
    m: Metric,
) -> Option<Control> {
    if cand == aa {
        return None;
    }
    Some(Control {
        floor: interval(raw, aa, aa_base, x, m)?,
        vs: (aa_base == base)
            .then(|| interval(raw, cand, aa, x, m))
            .flatten(),
    })
}

/// The verdict on `cand` against `base` at `at` (`control`: the A/A control there).
pub fn judge(
    raw: &[RunResult],
    at: &At,
    cand: &str,
    base: &str,
    control: Option<&Control>,
    m: Metric,
) -> Option<Verdict> {
    let iv = interval(raw, cand, base, at.x, m)?;
    Some(of_interval(&iv, at, cand, base, control, m.key, m.name))
}

/// The verdict on `cand` against `base` at `at` from their interval `iv` (for figures that are
/// not fields of a [`RunResult`]: the caller pairs the runs and makes the interval); `key` and
/// `name` as [`Metric`]'s.
pub fn of_interval(
    iv: &Interval,
    at: &At,
    cand: &str,
    base: &str,
    control: Option<&Control>,
    key: &'static str,
    name: &'static str,
) -> Verdict {
    let c = stats::call(iv, control);
    let firm = stats::repeat(iv, control, c);
    Verdict {
        scenario: at.scenario.clone(),
        candidate: cand.into(),
        baseline: base.into(),
        conns: at.conns,
        load: at.load.clone(),
        metric: key.into(),
        ratio: iv.ratio,
        ci95: [iv.lo, iv.hi],
        noise_floor: control.map(|c| [c.floor.lo, c.floor.hi]),
        vs_control: control.and_then(|c| c.vs).map(|v| [v.lo, v.hi]),
        significant: c == Call::Significant,
        call: c.text().into(),
        reps: iv.n,
        confidence: iv.confidence,
        repeat_chance: firm.map(|f| f.chance),
        pairs_for_90: firm.and_then(|f| f.pairs_for_90),
        metric_name: name,
    }
}

/// One comparison to judge: the candidate row, its baseline row, and where (`x`).
#[derive(Clone, Debug, PartialEq)]
pub struct Pair {
    pub candidate: String,
    pub baseline: String,
    pub x: f64,
}

/// Every row of `raw` at every x against `base_of(row)`, where that baseline ran at the same x
/// (a row that is its own baseline is left out), in the order the rows first ran.
pub fn pairs_of(raw: &[RunResult], base_of: impl Fn(&str) -> Option<String>) -> Vec<Pair> {
    let mut out: Vec<Pair> = Vec::new();
    for r in raw {
        let Some(b) = base_of(&r.label) else {
            continue;
        };
        let p = Pair {
            candidate: r.label.clone(),
            baseline: b,
            x: r.x,
        };
        if p.candidate != p.baseline
            && !out.contains(&p)
            && raw.iter().any(|o| o.label == p.baseline && o.x == r.x)
        {
            out.push(p);
        }
    }
    out
}

/// A backend row's baseline: the same row with `baseline` for its backend (its first word):
/// `uring` → `epoll`, `uring (wrk)` → `epoll (wrk)`, `uring pinned` → `epoll pinned`.
pub fn same_row_of(label: &str, baseline: &str) -> String {
    match label.find(' ') {
        Some(i) => format!("{baseline}{}", &label[i..]),
        None => baseline.to_string(),
    }
}

/// The verdicts on every pair for each metric; `at(x)` says where x is (conns, load), `control`
/// gives a pair's A/A control ([`control`]) where the scenario has one.
pub fn judge_all(
    raw: &[RunResult],
    scenario: &str,
    pairs: &[Pair],
    at: impl Fn(f64) -> (u32, String),
    control: impl Fn(&Pair, Metric) -> Option<Control>,
    metrics: &[Metric],
) -> Vec<Verdict> {
    let mut out = Vec::new();
    for m in metrics {
        for p in pairs {
            let (conns, load) = at(p.x);
            let a = At {
                scenario: scenario.into(),
                conns,
                load,
                x: p.x,
            };
            let f = control(p, *m);
            out.extend(judge(raw, &a, &p.candidate, &p.baseline, f.as_ref(), *m));
        }
    }
    out
}

/// `0.96× (95% CI 0.93–0.99, 8 pairs)`, or with fewer than 6 pairs the range and what it is worth.
pub fn interval_text(ratio: f64, lo: f64, hi: f64, n: usize, confidence: f64) -> String {
    if confidence >= stats::LEVEL {
        format!("{ratio:.2}× (95% CI {lo:.2}–{hi:.2}, {n} pairs)")
    } else if n < 2 {
        format!("{ratio:.2}× (one repetition: no interval)")
    } else {
        format!(
            "{ratio:.2}× (range {lo:.2}–{hi:.2} over {n} reps, {:.0}% confidence)",
            confidence * 100.0
        )
    }
}

impl Verdict {
    /// `uring vs epoll, 512 conns, 50% load (30k req/s): server CPU/request 0.96× (95% CI
    /// 0.93–0.99), significant (A/A floor 0.98–1.02; vs the A/A 0.94–0.98)`.
    pub fn line(&self) -> String {
        let vs = self.vs_control.map_or(String::new(), |v| {
            format!("; vs the A/A {:.2}–{:.2}", v[0], v[1])
        });
        let floor = self
            .noise_floor
            .map_or(" (no A/A control for this row)".to_string(), |f| {
                format!(" (A/A floor {:.2}–{:.2}{vs})", f[0], f[1])
            });
        let load = if self.load.is_empty() {
            String::new()
        } else {
            format!(", {}", self.load)
        };
        format!(
            "{} vs {}, {} conns{load}: {} {}, {}{floor}{}",
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
            firmness(self.repeat_chance, self.pairs_for_90),
        )
    }
}

/// `; same call on a rerun ≈ 49%, significant 9 runs in 10 from ≈ 20 pairs`: how firm a call
/// is ([`stats::repeat`]); empty where there is no estimate.
pub fn firmness(chance: Option<f64>, pairs_for_90: Option<usize>) -> String {
    let Some(c) = chance else {
        return String::new();
    };
    let pairs = match pairs_for_90 {
        Some(p) if p > 100_000 => ", significant 9 runs in 10 only past 100,000 pairs".into(),
        Some(p) => format!(", significant 9 runs in 10 from ≈ {p} pairs"),
        None => String::new(),
    };
    format!("; same call on a rerun ≈ {:.0}%{pairs}", c * 100.0)
}

/// The ratio cell of a table row: `0.96 (0.93–0.99)`, `*` when significant; the range in
/// brackets when fewer than 6 pairs.
pub fn cell(iv: Option<&Interval>, control: Option<&Control>) -> String {
    match iv {
        None => "–".into(),
        Some(iv) => {
            let star = if stats::call(iv, control) == Call::Significant {
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
            rps: 1000.0,
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
        let ctl = control(
            &raw,
            "epoll A/A",
            "epoll",
            "uring",
            "epoll",
            1.0,
            CPU_PER_REQ,
        )
        .unwrap();
        assert_eq!(
            ctl.vs.unwrap().n,
            8,
            "the candidate against the A/A: every rep"
        );
        let v = judge(&raw, &at, "uring", "epoll", Some(&ctl), CPU_PER_REQ).unwrap();
        assert!(v.significant, "{v:?}");
        assert!(v.ratio > 0.9 && v.ratio < 0.91, "{v:?}");
        assert_eq!(v.noise_floor, Some([1.0, 1.0]));
        let line = v.line();
        assert!(
            line.starts_with("uring vs epoll, 512 conns, 50% load (30k req/s): server CPU/request 0.90× (95% CI 0.90–0.91, 7 pairs), significant (A/A floor 1.00–1.00; vs the A/A 0.90–0.91)"),
            "{line}"
        );
        // How firm the call is: far outside both intervals, a rerun repeats it.
        let chance = v.repeat_chance.unwrap();
        assert!(chance > 0.99, "{v:?}");
        assert!(v.pairs_for_90.unwrap() <= 7, "{v:?}");
        assert!(
            line.ends_with(&firmness(Some(chance), v.pairs_for_90)),
            "{line}"
        );
        assert_eq!(
            firmness(Some(0.494), Some(20)),
            "; same call on a rerun ≈ 49%, significant 9 runs in 10 from ≈ 20 pairs"
        );
        assert_eq!(firmness(Some(0.975), None), "; same call on a rerun ≈ 98%");
        assert_eq!(firmness(None, Some(20)), "");
        // A control that is not the baseline's twin gives its floor and no paired interval.
        let other = control(
            &raw,
            "epoll A/A",
            "epoll",
            "uring",
            "tokio",
            1.0,
            CPU_PER_REQ,
        );
        assert!(other.unwrap().vs.is_none());
        assert!(control(
            &raw,
            "nosuch A/A",
            "epoll",
            "uring",
            "epoll",
            1.0,
            CPU_PER_REQ
        )
        .is_none());
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
            "vs_control",
            "significant",
            "repeat_chance",
            "pairs_for_90",
        ] {
            assert!(json.get(k).is_some(), "{k} missing: {json}");
        }
        assert!(judge(&raw, &at, "tokio", "epoll", None, CPU_PER_REQ).is_none());
    }

    #[test]
    fn every_row_against_the_same_row_of_the_baseline() {
        let mut raw = Vec::new();
        for rep in 0..6 {
            for (l, x) in [
                ("uring", 64.0),
                ("epoll", 64.0),
                ("uring (wrk)", 64.0),
                ("epoll (wrk)", 64.0),
                ("uring", 128.0),
                ("nginx", 64.0),
            ] {
                raw.push(run(l, x, rep, 10.0));
            }
        }
        let p = pairs_of(&raw, |l| (l != "nginx").then(|| same_row_of(l, "epoll")));
        let got: Vec<(&str, &str, f64)> = p
            .iter()
            .map(|p| (p.candidate.as_str(), p.baseline.as_str(), p.x))
            .collect();
        assert_eq!(
            got,
            [
                ("uring", "epoll", 64.0),
                ("uring (wrk)", "epoll (wrk)", 64.0)
            ]
        );
        assert_eq!(same_row_of("uring pinned", "epoll"), "epoll pinned");
        let v = judge_all(
            &raw,
            "http",
            &p,
            |x| (x as u32, String::new()),
            |_, _| None,
            &[CPU_PER_REQ, RPS],
        );
        assert_eq!(v.len(), 4);
        assert!(v
            .iter()
            .all(|v| v.call == "within noise" && v.noise_floor.is_none()));
        assert_eq!(v[3].metric, "requests_per_s");
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
        assert_eq!(
            interval_text(1.1, 1.05, 1.2, 3, 0.75),
            "1.10× (range 1.05–1.20 over 3 reps, 75% confidence)"
        );
        assert!(
            v.line()
                .contains("1.10× (one repetition: no interval), too few"),
            "{}",
            v.line()
        );
    }
}
