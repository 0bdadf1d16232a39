//! The verdict's statistics: paired ratios from interleaved repetitions, their 95% interval,
//! the A/A control (the noise floor, and the candidate against it), and the call. Pure: numbers in, numbers out.
//!
//! Repetition `i` runs every row once, interleaved (A B A' B ...), so run `i` of the candidate
//! and run `i` of the baseline saw the same machine: their ratio `candidate_i / baseline_i` is
//! the paired measurement, and the analysis works on the logs of those ratios (a ratio of 0.5
//! and one of 2 are equally far from 1).
//!
//! The interval is **Hodges–Lehmann** on the paired log ratios (the median of the Walsh
//! averages, its 95% interval from the exact Wilcoxon signed-rank distribution), not a
//! bootstrap, for three reasons that matter on a shared machine:
//! - it is robust: one repetition disturbed by someone else's compile moves a bootstrap of the
//!   mean with it, and barely moves the median of the Walsh averages;
//! - it is exact and deterministic: no resampling, no seed, the same data give the same
//!   interval;
//! - it is honest with few repetitions: below 6 pairs no 95% interval exists at all, and
//!   [`Interval::confidence`] says what the range of the data is worth (5 pairs: 93.75%, 2 pairs:
//!   50%), where a bootstrap would print a too-narrow interval labelled 95%.

/// The confidence the verdict asks for.
pub const LEVEL: f64 = 0.95;

/// A ratio with its interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    /// The point estimate (Hodges–Lehmann), as a ratio.
    pub ratio: f64,
    pub lo: f64,
    pub hi: f64,
    /// Pairs it rests on.
    pub n: usize,
    /// The interval's real coverage: [`LEVEL`] or a little more from 6 pairs on, less below.
    pub confidence: f64,
}

impl Interval {
    /// The larger of its two half-widths, relative to the ratio (0.03: ±3%).
    pub fn half_width(&self) -> f64 {
        (self.hi / self.ratio - 1.0).max(1.0 - self.lo / self.ratio)
    }

    /// Whether the interval contains `v`.
    pub fn contains(&self, v: f64) -> bool {
        self.lo <= v && v <= self.hi
    }

    /// Whether it overlaps `other`.
    pub fn overlaps(&self, other: &Interval) -> bool {
        self.lo <= other.hi && other.lo <= self.hi
    }
}

/// The A/A control of a comparison: a second instance of the baseline, measured in the same
/// repetitions as every other row.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Control {
    /// The control against the baseline: what the machine alone makes of two identical
    /// servers (the noise floor printed beside a verdict).
    pub floor: Interval,
    /// The candidate against the control, paired over the same repetitions, where the control
    /// is a second instance of this comparison's own baseline; `None` where it is not (a
    /// scenario whose rows have baselines of their own and one A/A row for all of them).
    pub vs: Option<Interval>,
}

/// What a comparison says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// The candidate differs, at 95%, from the baseline and (where there is one) from the
    /// baseline's second instance, in the same direction.
    Significant,
    /// The interval contains 1, or the candidate cannot be told from the A/A control.
    WithinNoise,
    /// It would be a difference, but too few pairs for a 95% interval.
    TooFewReps,
}

impl Call {
    pub fn text(self) -> &'static str {
        match self {
            Call::Significant => "significant",
            Call::WithinNoise => "within noise",
            Call::TooFewReps => "too few repetitions for a 95% interval",
        }
    }
}

/// The call on `iv` (candidate ÷ baseline) with the scenario's A/A control, where it has one.
///
/// With a control that is a second instance of the baseline, the candidate must differ from
/// both instances, each at 95% and on the same side: a difference the machine makes between
/// two identical servers (their position in the start order, which instance got the warmer
/// cache) then cannot pass for the candidate's, and the chance of calling a difference where
/// there is none stays at most 5% (both tests must pass, each at 5%). Without such a twin (a
/// row against its own baseline, one A/A row for the scenario) the candidate's interval must
/// lie outside the control's. That second test, two intervals apart, is much stricter than 95%:
/// it misses differences of the size of the intervals, which is why it is not used where the
/// paired test exists (with it, a 3–4% difference was called significant in one run and within
/// noise in the next, on intervals of ±1–3%).
pub fn call(iv: &Interval, control: Option<&Control>) -> Call {
    if iv.contains(1.0) {
        return Call::WithinNoise;
    }
    let mut confidence = iv.confidence;
    match control {
        Some(Control { vs: Some(v), .. }) => {
            if v.contains(1.0) || (v.ratio > 1.0) != (iv.ratio > 1.0) {
                return Call::WithinNoise;
            }
            confidence = confidence.min(v.confidence);
        }
        Some(Control { floor, vs: None }) if iv.overlaps(floor) => return Call::WithinNoise,
        _ => {}
    }
    if confidence < LEVEL {
        Call::TooFewReps
    } else {
        Call::Significant
    }
}

/// The two-sided 95% normal quantile, and the one-sided 90% one.
const Z95: f64 = 1.959_963_985;
const Z90: f64 = 1.281_551_566;

/// The standard normal distribution function.
fn phi(x: f64) -> f64 {
    0.5 * libm::erfc(-x / std::f64::consts::SQRT_2)
}

/// How firm a call is: the chance that a rerun with as many pairs makes the same call, and
/// the pairs with which the difference would be called significant 9 runs in 10.
///
/// A plug-in power calculation: this run's estimate is taken as the true difference and its
/// interval's width (in logs, over 2 × 1.96) as the estimate's standard error at this many
/// pairs; the error shrinks as 1/√pairs. It is a guide, not a guarantee (the estimate is itself
/// noisy, and a shared machine is not stationary), but it says which calls sit at the run's
/// own resolution: an effect the size of its interval's half-width is called significant about
/// half the time, whatever rule makes the call.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Repeat {
    /// The chance that a rerun with as many pairs makes the same call.
    pub chance: f64,
    /// The pairs with which the estimated difference would be called significant 9 times in 10
    /// (none when the estimate is no difference at all).
    pub pairs_for_90: Option<usize>,
}

/// How firm `call` is ([`Repeat`]); none below 95% coverage, and none where the call rests on
/// a floor that is not a twin of the baseline (two intervals apart: no simple power to give).
pub fn repeat(iv: &Interval, control: Option<&Control>, call: Call) -> Option<Repeat> {
    if call == Call::TooFewReps || iv.confidence < LEVEL || iv.n < 2 {
        return None;
    }
    let mut tests = vec![iv];
    match control {
        Some(Control { vs: Some(v), .. }) => {
            if v.confidence < LEVEL {
                return None;
            }
            tests.push(v);
        }
        Some(Control { vs: None, .. }) => return None,
        None => {}
    }
    let dir = if iv.ratio >= 1.0 { 1.0 } else { -1.0 };
    // Each test's estimate in standard errors, on the candidate's side of 1.
    let z: Vec<f64> = tests
        .iter()
        .map(|t| {
            let se = (t.hi.ln() - t.lo.ln()) / (2.0 * Z95);
            let d = dir * t.ratio.ln();
            if se > 0.0 {
                d / se
            } else if d > 0.0 {
                f64::INFINITY
            } else {
                0.0
            }
        })
        .collect();
    let weakest = z.iter().copied().fold(f64::INFINITY, f64::min);
    // Significant again needs every test to pass on the same side; the weakest decides.
    let p_sig = phi(weakest - Z95);
    let chance = if call == Call::Significant {
        p_sig
    } else {
        1.0 - p_sig
    };
    let pairs_for_90 = (weakest > 0.0).then(|| {
        if weakest.is_infinite() {
            iv.n
        } else {
            let f = (Z95 + Z90) / weakest;
            (iv.n as f64 * f * f).ceil().min(1e9) as usize
        }
    });
    Some(Repeat {
        chance,
        pairs_for_90,
    })
}

/// `ln(candidate_i / baseline_i)` for every rep where both were measured and positive.
pub fn log_ratios(pairs: &[(f64, f64)]) -> Vec<f64> {
    pairs
        .iter()
        .filter(|(c, b)| *c > 0.0 && *b > 0.0 && c.is_finite() && b.is_finite())
        .map(|(c, b)| (c / b).ln())
        .collect()
}

/// The paired ratio of `(candidate_i, baseline_i)` with its interval; none without a pair.
pub fn paired(pairs: &[(f64, f64)]) -> Option<Interval> {
    hodges_lehmann(&log_ratios(pairs))
}

/// Hodges–Lehmann on the paired differences `d` (logs): the estimate and interval, as ratios.
pub fn hodges_lehmann(d: &[f64]) -> Option<Interval> {
    let (est, lo, hi, n, confidence) = hl(d)?;
    Some(Interval {
        ratio: est.exp(),
        lo: lo.exp(),
        hi: hi.exp(),
        n,
        confidence,
    })
}

/// A paired difference `candidate − baseline` in the figure's own unit (µs of p99, say) with
/// its interval: the same Hodges–Lehmann estimate as [`paired`], on differences, not ratios.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Difference {
    pub est: f64,
    pub lo: f64,
    pub hi: f64,
    pub n: usize,
    pub confidence: f64,
}

impl Difference {
    /// `+37 µs (95% CI −12 – +80, 6 pairs)`, or the range and its confidence below 6 pairs.
    pub fn text(&self, unit: &str) -> String {
        if self.n < 2 {
            format!("{:+.0} {unit} (one repetition)", self.est)
        } else if self.confidence >= LEVEL {
            format!(
                "{:+.0} {unit} (95% CI {:+.0} – {:+.0}, {} pairs)",
                self.est, self.lo, self.hi, self.n
            )
        } else {
            format!(
                "{:+.0} {unit} (range {:+.0} – {:+.0} over {} reps, {:.0}% confidence)",
                self.est,
                self.lo,
                self.hi,
                self.n,
                self.confidence * 100.0
            )
        }
    }
}

/// The paired difference of `(candidate_i, baseline_i)` with its interval; none without a pair.
pub fn paired_difference(pairs: &[(f64, f64)]) -> Option<Difference> {
    let d: Vec<f64> = pairs
        .iter()
        .filter(|(c, b)| c.is_finite() && b.is_finite())
        .map(|(c, b)| c - b)
        .collect();
    let (est, lo, hi, n, confidence) = hl(&d)?;
    Some(Difference {
        est,
        lo,
        hi,
        n,
        confidence,
    })
}

/// Hodges–Lehmann on `d`: the median of the Walsh averages and the exact Wilcoxon interval
/// `(estimate, lo, hi, pairs, confidence)`.
fn hl(d: &[f64]) -> Option<(f64, f64, f64, usize, f64)> {
    let n = d.len();
    if n == 0 {
        return None;
    }
    let mut walsh = Vec::with_capacity(n * (n + 1) / 2);
    for i in 0..n {
        for j in i..n {
            walsh.push((d[i] + d[j]) / 2.0);
        }
    }
    walsh.sort_by(f64::total_cmp);
    let m = walsh.len();
    let est = if m % 2 == 1 {
        walsh[m / 2]
    } else {
        (walsh[m / 2 - 1] + walsh[m / 2]) / 2.0
    };
    let (k, confidence) = wilcoxon_k(n, 1.0 - LEVEL);
    Some((est, walsh[k - 1], walsh[m - k], n, confidence))
}

/// The rank `k` (1-based) of the Walsh averages that bound the interval, `[W(k), W(M+1-k)]`,
/// and its coverage: the largest `k` with `P(T+ <= k-1) <= alpha/2` under the signed-rank null;
/// 1 (the whole range) when even that is more likely, as below 6 pairs.
pub fn wilcoxon_k(n: usize, alpha: f64) -> (usize, f64) {
    let cdf = signed_rank_cdf(n);
    let mut k = 1;
    while k < cdf.len() && cdf[k] <= alpha / 2.0 {
        k += 1;
    }
    // cdf[k-1] = P(T <= k-1): the two tails left out.
    (k, (1.0 - 2.0 * cdf[k - 1]).max(0.0))
}

/// `P(T+ <= t)` for t = 0 ..= n(n+1)/2 under the null (every sign equally likely). Exact by
/// counting subsets of the ranks 1..=n with each sum (doubles: exact to n = 50 or so, and
/// accurate far beyond).
fn signed_rank_cdf(n: usize) -> Vec<f64> {
    let max = n * (n + 1) / 2;
    let mut ways = vec![0.0f64; max + 1];
    ways[0] = 1.0;
    for r in 1..=n {
        for s in (r..=max).rev() {
            ways[s] += ways[s - r];
        }
    }
    let total = 2f64.powi(n as i32);
    let mut acc = 0.0;
    ways.iter()
        .map(|w| {
            acc += w;
            acc / total
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic noise in [-1, 1): a small LCG, so the tests need no seed crate.
    fn noise(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    }

    /// `n` reps of a baseline around 100 and a candidate around `100 * shift`, each with
    /// uniform noise of ±`pct` (its standard deviation is pct/√3).
    fn reps(n: usize, shift: f64, pct: f64, seed: u64) -> Vec<(f64, f64)> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                let b = 100.0 * (1.0 + pct * noise(&mut s));
                let c = 100.0 * shift * (1.0 + pct * noise(&mut s));
                (c, b)
            })
            .collect()
    }

    #[test]
    fn a_difference_is_estimated_in_the_figures_unit_with_its_interval() {
        // p99s of about 1,000 µs, the candidate 80 µs higher, ±2% noise each: the estimate is
        // near +80 µs and its interval holds it; a shift of 0 gives an interval around 0.
        let shifted: Vec<(f64, f64)> = reps(12, 1.0, 0.02, 21)
            .into_iter()
            .map(|(c, b)| (c * 10.0 + 80.0, b * 10.0))
            .collect();
        let d = paired_difference(&shifted).unwrap();
        assert!((d.est - 80.0).abs() < 25.0, "{d:?}");
        assert!(d.lo < 80.0 && 80.0 < d.hi && d.lo > 0.0, "{d:?}");
        assert!(d.confidence >= LEVEL);
        let same = paired_difference(&reps(12, 1.0, 0.02, 22)).unwrap();
        assert!(same.lo < 0.0 && 0.0 < same.hi, "{same:?}");
        assert_eq!(
            paired_difference(&[(1100.0, 1000.0), (1140.0, 1000.0)])
                .unwrap()
                .text("µs"),
            "+120 µs (range +100 – +140 over 2 reps, 50% confidence)"
        );
        assert!(paired_difference(&[]).is_none());
    }

    /// An interval of `ratio` whose estimate lies `z` standard errors from 1, on `n` pairs.
    fn at_z(ratio: f64, z: f64, n: usize) -> Interval {
        let se = ratio.ln().abs() / z;
        Interval {
            ratio,
            lo: (ratio.ln() - Z95 * se).exp(),
            hi: (ratio.ln() + Z95 * se).exp(),
            n,
            confidence: 0.96,
        }
    }

    #[test]
    fn a_difference_at_the_runs_own_resolution_repeats_its_call_half_the_time() {
        // 1.07× with an interval that just excludes 1 (z = 1.96): a rerun calls it significant
        // about half the time, and (1.96 + 1.28)² / 1.96² ≈ 2.7 times the pairs make it 9 in 10.
        let iv = at_z(1.07, Z95, 7);
        let r = repeat(&iv, None, call(&iv, None)).unwrap();
        assert!((r.chance - 0.5).abs() < 0.01, "{r:?}");
        assert_eq!(r.pairs_for_90, Some(20));
        // Far from 1 (z = 6): the call repeats nearly always, and this run had pairs enough.
        let firm = at_z(0.90, 6.0, 10);
        let r = repeat(&firm, None, Call::Significant).unwrap();
        assert!(r.chance > 0.99 && r.pairs_for_90.unwrap() <= 10, "{r:?}");
        // No difference at all: "within noise" again 97.5% of the time, and no pair count.
        let none = Interval {
            ratio: 1.0,
            lo: 0.98,
            hi: 1.02,
            n: 10,
            confidence: 0.96,
        };
        let r = repeat(&none, None, Call::WithinNoise).unwrap();
        assert!(
            (r.chance - 0.975).abs() < 0.001 && r.pairs_for_90.is_none(),
            "{r:?}"
        );
        // A within-noise call on an estimate 1 SE from 1 repeats 1 − Φ(1 − 1.96) ≈ 83%.
        let small = at_z(1.01, 1.0, 10);
        let r = repeat(&small, None, Call::WithinNoise).unwrap();
        assert!((r.chance - 0.831).abs() < 0.005, "{r:?}");
        assert_eq!(r.pairs_for_90, Some(106));
    }

    #[test]
    fn the_weaker_of_the_baseline_and_its_twin_decides_how_firm_a_call_is() {
        let iv = at_z(1.07, 5.0, 10);
        let weak_twin = Control {
            floor: at_z(1.01, 0.5, 10),
            vs: Some(at_z(1.06, 2.5, 10)),
        };
        let alone = repeat(&iv, None, Call::Significant).unwrap();
        let with = repeat(&iv, Some(&weak_twin), Call::Significant).unwrap();
        assert!(alone.chance > 0.99, "{alone:?}");
        assert!((with.chance - phi(2.5 - Z95)).abs() < 1e-9, "{with:?}");
        assert!(with.pairs_for_90 > alone.pairs_for_90);
        // A twin on the other side of 1: significant again only by a miracle.
        let other_side = Control {
            floor: at_z(1.01, 0.5, 10),
            vs: Some(at_z(0.98, 1.0, 10)),
        };
        let r = repeat(&iv, Some(&other_side), Call::WithinNoise).unwrap();
        assert!(r.chance > 0.99 && r.pairs_for_90.is_none(), "{r:?}");
        // A floor that is no twin of the baseline, or too few pairs: no estimate.
        let floor_only = Control {
            floor: at_z(1.01, 0.5, 10),
            vs: None,
        };
        assert!(repeat(&iv, Some(&floor_only), Call::Significant).is_none());
        let few = Interval {
            confidence: 0.9,
            ..iv
        };
        assert!(repeat(&few, None, Call::TooFewReps).is_none());
    }

    #[test]
    fn the_repeat_chance_predicts_how_often_simulated_reruns_agree() {
        // A 2% difference on a machine that drifts ±10% between repetitions and ±3% between
        // runs, 10 repetitions: an effect near the resolution. Over 200 simulated runs, the
        // share called significant (0.41) and the mean predicted chance of "significant" (0.45)
        // agree within 0.1; neither is near 0 or 1 (the calls do flip).
        let mut sig = 0usize;
        let mut predicted = 0.0;
        let runs = 200;
        for seed in 0..runs {
            let (iv, ctl) = control_of(&triples(10, 1.02, 1.0, 0.10, 0.03, 1000 + seed));
            let c = call(&iv, Some(&ctl));
            if c == Call::Significant {
                sig += 1;
            }
            let r = repeat(&iv, Some(&ctl), c).unwrap();
            predicted += if c == Call::Significant {
                r.chance
            } else {
                1.0 - r.chance
            };
        }
        let observed = sig as f64 / runs as f64;
        let predicted = predicted / runs as f64;
        assert!(
            (0.2..0.8).contains(&observed),
            "observed {observed}, predicted {predicted}"
        );
        assert!(
            (observed - predicted).abs() < 0.1,
            "observed {observed}, predicted {predicted}"
        );
    }

    #[test]
    fn identical_samples_are_within_noise() {
        let pairs: Vec<(f64, f64)> = (0..8).map(|i| (50.0 + i as f64, 50.0 + i as f64)).collect();
        let iv = paired(&pairs).unwrap();
        assert_eq!((iv.ratio, iv.lo, iv.hi), (1.0, 1.0, 1.0));
        assert_eq!(call(&iv, None), Call::WithinNoise);
        assert_eq!(iv.half_width(), 0.0);
        assert!(iv.confidence >= LEVEL);
    }

    #[test]
    fn a_clear_shift_is_significant_with_its_interval_around_it() {
        let floor = paired(&reps(12, 1.0, 0.02, 7)).unwrap();
        assert!(floor.contains(1.0), "{floor:?}");
        let iv = paired(&reps(12, 1.10, 0.02, 8)).unwrap();
        assert!((iv.ratio - 1.10).abs() < 0.01, "{iv:?}");
        assert!(iv.lo > 1.06 && iv.hi < 1.14 && iv.contains(1.10), "{iv:?}");
        assert!(iv.confidence >= LEVEL);
        let ctl = Control { floor, vs: None };
        assert_eq!(call(&iv, Some(&ctl)), Call::Significant);
    }

    /// `n` repetitions of (candidate, baseline, A/A control) on a machine whose speed drifts by
    /// `drift` between repetitions (common to the three runs of one) and whose runs differ by
    /// `pct` each; the candidate is `shift` × the baseline, the control `aa` ×.
    fn triples(n: usize, shift: f64, aa: f64, drift: f64, pct: f64, seed: u64) -> Vec<[f64; 3]> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                let m = 100.0 * (1.0 + drift * noise(&mut s));
                let mut one = |k: f64| m * k * (1.0 + pct * noise(&mut s));
                [one(shift), one(1.0), one(aa)]
            })
            .collect()
    }

    fn control_of(t: &[[f64; 3]]) -> (Interval, Control) {
        let pick =
            |i: usize, j: usize| -> Vec<(f64, f64)> { t.iter().map(|r| (r[i], r[j])).collect() };
        let iv = paired(&pick(0, 1)).unwrap();
        let ctl = Control {
            floor: paired(&pick(2, 1)).unwrap(),
            vs: paired(&pick(0, 2)),
        };
        (iv, ctl)
    }

    #[test]
    fn a_small_shift_is_judged_against_the_second_instance_not_by_overlapping_intervals() {
        // 3% more on a machine that drifts ±10% between repetitions and ±2.5% between runs:
        // the candidate's interval and the A/A floor overlap, yet the candidate differs from
        // both instances of the baseline in the same runs.
        let t = triples(10, 1.03, 1.0, 0.10, 0.025, 41);
        let (iv, ctl) = control_of(&t);
        assert!(
            !iv.contains(1.0) && iv.overlaps(&ctl.floor),
            "{iv:?} {ctl:?}"
        );
        assert_eq!(call(&iv, Some(&ctl)), Call::Significant, "{iv:?} {ctl:?}");
        let floor_only = Control { vs: None, ..ctl };
        assert_eq!(call(&iv, Some(&floor_only)), Call::WithinNoise);
        // The same machine with no difference: within noise (every seed of these).
        for seed in 1..40 {
            let (iv, ctl) = control_of(&triples(16, 1.0, 1.0, 0.10, 0.015, seed));
            if call(&iv, Some(&ctl)) == Call::Significant {
                panic!("seed {seed}: {iv:?} {ctl:?}");
            }
        }
    }

    #[test]
    fn a_difference_the_second_instance_shares_is_within_noise() {
        // Both the candidate and the baseline's second instance sit 4% above the baseline
        // (say the baseline always got the better place): not the candidate's doing.
        let (iv, ctl) = control_of(&triples(16, 1.04, 1.04, 0.05, 0.005, 42));
        assert!(!iv.contains(1.0), "{iv:?}");
        assert!(ctl.vs.unwrap().contains(1.0), "{ctl:?}");
        assert_eq!(call(&iv, Some(&ctl)), Call::WithinNoise);
        // Against a control on the other side the candidate is not called either.
        let (iv, ctl) = control_of(&triples(16, 1.02, 1.06, 0.05, 0.005, 43));
        assert!(iv.lo > 1.0 && ctl.vs.unwrap().hi < 1.0, "{iv:?} {ctl:?}");
        assert_eq!(call(&iv, Some(&ctl)), Call::WithinNoise);
    }

    #[test]
    fn a_difference_inside_the_noise_floor_is_within_noise() {
        // An A/A floor of 0.95-1.05 (a noisy machine) swallows a real but small 3% shift.
        let floor = Interval {
            ratio: 1.0,
            lo: 0.95,
            hi: 1.05,
            n: 8,
            confidence: 0.95,
        };
        let iv = paired(&reps(20, 1.03, 0.005, 3)).unwrap();
        assert!(!iv.contains(1.0), "{iv:?}");
        assert_eq!(call(&iv, None), Call::Significant);
        let ctl = Control { floor, vs: None };
        assert_eq!(call(&iv, Some(&ctl)), Call::WithinNoise);
    }

    #[test]
    fn the_interval_narrows_as_reps_grow() {
        let few = paired(&reps(8, 1.10, 0.05, 11)).unwrap();
        let many = paired(&reps(64, 1.10, 0.05, 11)).unwrap();
        assert!(
            many.half_width() < few.half_width() * 0.6,
            "{few:?} {many:?}"
        );
        assert!(many.contains(1.10), "{many:?}");
    }

    #[test]
    fn too_few_pairs_give_no_95_percent_interval() {
        // Two pairs, both clearly above 1: the range, worth 50%, not a verdict.
        let iv = paired(&[(110.0, 100.0), (112.0, 100.0)]).unwrap();
        assert_eq!(iv.confidence, 0.5);
        assert_eq!(call(&iv, None), Call::TooFewReps);
        let five = paired(&reps(5, 1.2, 0.01, 5)).unwrap();
        assert_eq!(five.confidence, 1.0 - 2.0 / 32.0);
        assert_eq!(call(&five, None), Call::TooFewReps);
        assert_eq!(paired(&[]), None);
        assert_eq!(paired(&[(1.0, 0.0)]), None, "a zero baseline is no pair");
    }

    #[test]
    fn wilcoxon_ranks_match_the_tables() {
        // Two-sided 5% critical values of T: n=6 → 0, n=10 → 8, n=20 → 52 (k = T + 1).
        assert_eq!(wilcoxon_k(6, 0.05).0, 1);
        assert_eq!(wilcoxon_k(10, 0.05).0, 9);
        assert_eq!(wilcoxon_k(20, 0.05).0, 53);
        assert!((wilcoxon_k(6, 0.05).1 - (1.0 - 2.0 / 64.0)).abs() < 1e-12);
        assert_eq!(wilcoxon_k(1, 0.05), (1, 0.0));
    }

    #[test]
    fn one_wild_rep_barely_moves_the_estimate() {
        let mut pairs = reps(10, 1.10, 0.01, 21);
        let calm = paired(&pairs).unwrap();
        pairs[3].0 *= 3.0; // someone's compile landed on this candidate run
        let wild = paired(&pairs).unwrap();
        assert!(
            (wild.ratio / calm.ratio - 1.0).abs() < 0.02,
            "{calm:?} {wild:?}"
        );
    }
}
