//! Tables (Markdown), the machine description, and the report directory.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::run::RunResult;
use crate::verdict::{self, Metric, Verdict};

/// The machine the bench ran on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu_model: String,
    pub cpus: usize,
    pub kernel: String,
    pub date_unix: u64,
    pub server_cores: String,
    pub client_cores: String,
    /// What the traffic crosses.
    pub link: String,
}

impl Machine {
    /// Read this machine's description.
    pub fn read(server_cores: &str, client_cores: &str) -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let uname = rustix::system::uname();
        Machine {
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: uname.release().to_string_lossy().into_owned(),
            date_unix: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            server_cores: server_cores.into(),
            client_cores: client_cores.into(),
            link: "loopback".into(),
        }
    }

    /// One line.
    pub fn line(&self) -> String {
        format!(
            "{} ({} CPUs), Linux {}, server on CPU {}, client on CPU {}, over {}",
            self.cpu_model, self.cpus, self.kernel, self.server_cores, self.client_cores, self.link
        )
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 || (v.fract() == 0.0 && v.abs() < 1e15) {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The main comparison table: one row per (x, backend), with ratios against `baseline`: paired
/// over the repetitions in `raw` with their 95% interval (bracketed: the range, fewer than 6
/// pairs; `*`: significant), or of the medians where `raw` has no pairs.
pub fn table(rows: &[RunResult], raw: &[RunResult], x_name: &str, baseline: &str) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| {x_name} | backend | req/s | vs {baseline} (95% CI) | p50 µs | p99 µs | p99.9 µs | server CPU µs/req | vs {baseline} (95% CI) | syscalls/req | ctx switches/req | note |"
    );
    let _ = writeln!(
        t,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    );
    let mut xs: Vec<f64> = rows.iter().map(|r| r.x).collect();
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    xs.dedup();
    for x in xs {
        for r in rows.iter().filter(|r| r.x == x) {
            // A row measured another way (`uring (wrk)`) compares with the baseline measured
            // the same way (`epoll (wrk)`).
            let own_baseline = match r.label.find(" (") {
                Some(i) => format!("{baseline}{}", &r.label[i..]),
                None => baseline.to_string(),
            };
            let base = rows.iter().find(|b| b.x == x && b.label == own_baseline);
            let ratio = |m: Metric, b: Option<f64>| match b {
                _ if r.label == own_baseline => "".into(),
                Some(b) if b > 0.0 => match verdict::interval(raw, &r.label, &own_baseline, x, m) {
                    Some(iv) => {
                        let ctl = verdict::twin_control(raw, &r.label, &own_baseline, x, m);
                        verdict::cell(Some(&iv), ctl.as_ref())
                    }
                    None => format!("{:.2}×", (m.get)(r) / b),
                },
                _ => "".into(),
            };
            let sys = match (r.syscalls_per_req, r.perf_syscalls_per_req) {
                (Some(s), Some(p)) => format!("{} (perf {})", fmt_num(s), fmt_num(p)),
                (Some(s), None) => fmt_num(s),
                (None, Some(p)) => format!("perf {}", fmt_num(p)),
                (None, None) => "–".into(),
            };
            let mut note = Vec::new();
            if r.client_saturated {
                note.push("client saturated".to_string());
            }
            if r.errors > 0.0 {
                note.push(format!("{} errors", r.errors));
            }
            if r.steal_pct >= crate::scenario::STEAL_NOTE {
                note.push(format!("host steal {:.0}%", r.steal_pct));
            }
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                fmt_num(x),
                r.label,
                fmt_num(r.rps),
                ratio(verdict::RPS, base.map(|b| b.rps)),
                fmt_num(r.p50_us),
                fmt_num(r.p99_us),
                if r.p999_us > 0.0 {
                    fmt_num(r.p999_us)
                } else {
                    "–".into()
                },
                fmt_num(r.cpu_per_req_us),
                ratio(verdict::CPU_PER_REQ, base.map(|b| b.cpu_per_req_us)),
                sys,
                fmt_num(r.ctx_switches_per_req),
                note.join(", ")
            );
        }
    }
    t
}

/// How long the server holds every request of the seeds experiment (`GET /delay/100`).
pub const HOLD_S: f64 = 0.1;

/// How far below the ideal line a point may be and still be on it (3%).
pub const ON_LINE: f64 = 0.97;

/// The seed's async line: every client always has one request held [`HOLD_S`], so `clients`
/// clients make `clients / HOLD_S` requests a second.
pub fn ideal_qps(clients: f64) -> f64 {
    clients / HOLD_S
}

/// Where a row leaves the ideal line.
#[derive(Clone, Debug, PartialEq)]
pub enum Knee {
    /// Within 3% of the ideal (or above it) at some point at or beyond `last` clients, the
    /// largest count measured.
    Follows { last: f64 },
    /// More than 3% below the ideal from `at` clients on, at every larger count too (a point
    /// below followed by one back on the line is noise, not a knee); `first` says it is the
    /// row's smallest count (below the line from the start).
    Leaves {
        at: f64,
        rps: f64,
        mean_s: f64,
        first: bool,
    },
}

/// The knee of one row's points `(clients, rps, mean latency s)`, in any order.
pub fn knee(points: &[(f64, f64, f64)]) -> Option<Knee> {
    let mut p = points.to_vec();
    p.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    let last = p.last()?.0;
    // The first point after the last one on the line.
    let on = p
        .iter()
        .rposition(|&(x, rps, _)| rps >= ON_LINE * ideal_qps(x));
    match on.map_or(Some(0), |i| (i + 1 < p.len()).then_some(i + 1)) {
        None => Some(Knee::Follows { last }),
        Some(i) => Some(Knee::Leaves {
            at: p[i].0,
            rps: p[i].1,
            mean_s: p[i].2,
            first: i == 0,
        }),
    }
}

/// A row's most QPS and the smallest count from which every point is within 10% of it: where
/// a row that left the ideal line flattens (a pool's size, the machine's limit). `points` as
/// for [`knee`].
pub fn ceiling(points: &[(f64, f64, f64)]) -> Option<(f64, f64)> {
    let mut p = points.to_vec();
    p.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap_or(std::cmp::Ordering::Equal));
    let most = p.iter().map(|q| q.1).fold(f64::NAN, f64::max);
    let below = p.iter().rposition(|q| q.1 < 0.9 * most);
    let from = p.get(below.map_or(0, |i| i + 1))?;
    Some((from.0, most))
}

/// A row's knee in one sentence, and where it flattens if it left the line.
pub fn knee_summary(points: &[(f64, f64, f64)]) -> Option<String> {
    let k = knee(points)?;
    let mut s = knee_line(&k);
    if let (Knee::Leaves { .. }, Some((from, most))) = (&k, ceiling(points)) {
        s += &format!(
            "; most QPS {} (within 10% of it from {from} clients on)",
            fmt_num(most)
        );
    }
    Some(s)
}

/// A row's knee in one sentence.
pub fn knee_line(k: &Knee) -> String {
    match *k {
        Knee::Follows { last } => {
            format!("on the ideal line (within 3%) up to {last} clients, the most measured")
        }
        Knee::Leaves {
            at,
            rps,
            mean_s,
            first,
        } => format!(
            "{} the ideal line by more than 3% {} {at} clients: QPS {} of {} ({:.1}%), latency {mean_s:.4} s",
            if first { "below" } else { "leaves" },
            if first { "from its first point," } else { "at" },
            fmt_num(rps),
            fmt_num(ideal_qps(at)),
            100.0 * rps / ideal_qps(at)
        ),
    }
}

/// The labels of `rows`, in their first order.
fn labels_of(rows: &[RunResult]) -> Vec<&str> {
    let mut labels: Vec<&str> = Vec::new();
    for r in rows {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    labels
}

/// Each row's [`knee_summary`]: `(label, summary)`, in the rows' order.
pub fn seeds_knees(rows: &[RunResult]) -> Vec<(String, String)> {
    labels_of(rows)
        .into_iter()
        .filter_map(|l| {
            let pts: Vec<(f64, f64, f64)> = rows
                .iter()
                .filter(|r| r.label == l)
                .map(|r| (r.x, r.rps, r.mean_us / 1e6))
                .collect();
            knee_summary(&pts).map(|k| (l.to_string(), k))
        })
        .collect()
}

/// The seed notes' shape, `64 clients. Latency: 0.1074, QPS: 536.2712`, grouped by row, each
/// line followed by the ideal QPS (clients / 0.1 s) and the share of it measured, each row
/// ending with its knee.
pub fn seeds_lines(rows: &[RunResult]) -> String {
    let mut t = String::new();
    for l in labels_of(rows) {
        let _ = writeln!(t, "{l}:");
        let mut own: Vec<&RunResult> = rows.iter().filter(|r| r.label == l).collect();
        own.sort_by(|a, b| a.x.partial_cmp(&b.x).unwrap_or(std::cmp::Ordering::Equal));
        for r in &own {
            let ideal = ideal_qps(r.x);
            let mut notes = Vec::new();
            if r.errors > 0.0 {
                notes.push(format!("{} errors/timeouts", r.errors));
            }
            if r.non_2xx > 0.0 {
                notes.push(format!("{} non-2xx responses", r.non_2xx));
            }
            let _ = writeln!(
                t,
                "{} clients. Latency: {:.4}, QPS: {:.4}, ideal: {ideal:.0} ({:.1}%){}",
                r.x,
                r.mean_us / 1e6,
                r.rps,
                100.0 * r.rps / ideal,
                if notes.is_empty() {
                    String::new()
                } else {
                    format!("  ({})", notes.join(", "))
                }
            );
        }
        let pts: Vec<(f64, f64, f64)> = own.iter().map(|r| (r.x, r.rps, r.mean_us / 1e6)).collect();
        if let Some(k) = knee_summary(&pts) {
            let _ = writeln!(t, "knee: {k}");
        }
    }
    t
}

/// A report directory: `report.md`, `results.json`, charts.
pub struct Report {
    pub dir: PathBuf,
    /// The title, machine and command.
    head: String,
    /// The scenarios' sections.
    pub md: String,
    pub json: serde_json::Map<String, serde_json::Value>,
    /// Every verdict, printed first in report.md and under `verdicts` in results.json.
    pub verdicts: Vec<Verdict>,
    /// The verdict section's text (per scenario: how the repetitions ended, the floor, ...).
    verdict_md: String,
}

impl Report {
    /// A new report in `dir` (created).
    pub fn new(dir: &Path, machine: &Machine, argv: &str) -> Result<Report> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut md = String::new();
        let _ = writeln!(md, "# ringlab-bench report\n");
        let _ = writeln!(md, "Machine: {}\n", machine.line());
        let _ = writeln!(md, "Command: `{argv}`\n");
        let _ = writeln!(
            md,
            "Every figure is the median of the repetitions, run interleaved (A B A B ...), each on a fresh server. Server CPU is the server's threads' time on a CPU from /proc (schedstat, nanoseconds; user + system ticks where there is none) over the client's measured window; syscalls/req are the server's own counters (tokio backends: perf only, with --perf)."
        );
        let mut json = serde_json::Map::new();
        json.insert("machine".into(), serde_json::to_value(machine)?);
        json.insert("command".into(), argv.into());
        Ok(Report {
            dir: dir.to_path_buf(),
            head: md,
            md: String::new(),
            json,
            verdicts: Vec::new(),
            verdict_md: String::new(),
        })
    }

    /// Add a scenario's verdicts (their lines first in report.md) with `notes` below them. Past
    /// a dozen, only the significant ones are listed (every one is in results.json).
    pub fn add_verdicts(&mut self, scenario: &str, vs: &[Verdict], notes: &str) {
        let _ = writeln!(self.verdict_md, "\n### {scenario}\n");
        let many = vs.len() > 12;
        for v in vs.iter().filter(|v| !many || v.significant) {
            let _ = writeln!(self.verdict_md, "- {}", v.line());
        }
        if many {
            let rest = vs.iter().filter(|v| !v.significant).count();
            let _ = writeln!(
                self.verdict_md,
                "- {rest} more comparisons within noise or with too few repetitions (the table below, and results.json)"
            );
        }
        if !notes.is_empty() {
            let _ = writeln!(self.verdict_md, "\n{notes}");
        }
        self.verdicts.extend(vs.iter().cloned());
    }

    /// Add a section with its table and data.
    pub fn section(&mut self, name: &str, text: &str, medians: &[RunResult], raw: &[RunResult]) {
        let _ = writeln!(self.md, "\n## {name}\n\n{text}");
        self.json.insert(
            name.into(),
            serde_json::json!({ "medians": medians, "runs": raw }),
        );
    }

    /// Add a section with its own data (`json`, under `name` in results.json).
    pub fn section_json(&mut self, name: &str, text: &str, json: serde_json::Value) {
        let _ = writeln!(self.md, "\n## {name}\n\n{text}");
        self.json.insert(name.into(), json);
    }

    /// Write `report.md` (the verdicts first) and `results.json`.
    pub fn write(&self) -> Result<()> {
        let mut md = self.head.clone();
        if !self.verdict_md.is_empty() {
            let _ = write!(
                md,
                "\n## Verdicts\n\nEach ratio is candidate ÷ baseline over repetitions run interleaved and paired (rep i of one with rep i of the other), with its 95% interval (Hodges–Lehmann); the A/A floor is the baseline against a second instance of itself in the same interleaving. *Significant* means the candidate differs at 95% from the baseline and from the baseline's second instance (the `vs the A/A` interval), both on the same side; where a row has no second instance of its own baseline (one A/A row for the scenario), its interval must exclude 1 and lie outside the floor. *Same call on a rerun* is how firm the call is: taking this run's difference and spread as the truth, the chance that a rerun with as many pairs makes the same call. Near 50% the difference is the size of the run's own resolution and the call can go either way; the pairs named would call the difference significant 9 runs in 10 (a guide, not a guarantee: the estimate is itself noisy).\n{}",
                self.verdict_md
            );
        }
        md += &self.md;
        std::fs::write(self.dir.join("report.md"), md)?;
        let mut json = self.json.clone();
        json.insert("verdicts".into(), serde_json::to_value(&self.verdicts)?);
        std::fs::write(
            self.dir.join("results.json"),
            serde_json::to_string_pretty(&json)? + "\n",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, x: f64, rps: f64, mean_s: f64) -> RunResult {
        RunResult {
            label: label.into(),
            x,
            rps,
            mean_us: mean_s * 1e6,
            ..RunResult::default()
        }
    }

    #[test]
    fn the_ideal_line_is_clients_over_the_hold() {
        assert_eq!(ideal_qps(1.0), 10.0);
        assert_eq!(ideal_qps(10_000.0), 100_000.0);
        assert_eq!(ideal_qps(20_000.0), 200_000.0);
    }

    #[test]
    fn a_row_on_the_line_to_its_end_has_no_knee() {
        // 97% of the ideal is still on it; above it too.
        let pts = [
            (1.0, 9.9, 0.1),
            (1000.0, 9700.0, 0.1),
            (2000.0, 20_500.0, 0.1),
        ];
        assert_eq!(knee(&pts), Some(Knee::Follows { last: 2000.0 }));
        assert_eq!(knee(&[]), None);
    }

    #[test]
    fn the_knee_is_where_the_row_leaves_the_line_for_good() {
        // Given out of order; 4% low at 64 clients and back on at 128 is noise, not the knee.
        let pts = [
            (5000.0, 34_000.0, 0.12),
            (64.0, 614.0, 0.1),
            (2000.0, 19_400.0, 0.1),
            (128.0, 1280.0, 0.1),
            (10_000.0, 32_000.0, 0.2),
        ];
        assert_eq!(
            knee(&pts),
            Some(Knee::Leaves {
                at: 5000.0,
                rps: 34_000.0,
                mean_s: 0.12,
                first: false
            })
        );
        assert_eq!(
            knee_line(&knee(&pts).unwrap()),
            "leaves the ideal line by more than 3% at 5000 clients: QPS 34000 of 50000 (68.0%), latency 0.1200 s"
        );
    }

    #[test]
    fn a_row_below_the_line_from_the_start_says_so() {
        // The synchronous server: flat at 9.6 QPS.
        let pts = [(1.0, 9.6, 0.104), (32.0, 9.6, 3.33)];
        let k = knee(&pts).unwrap();
        assert_eq!(
            k,
            Knee::Leaves {
                at: 1.0,
                rps: 9.6,
                mean_s: 0.104,
                first: true
            }
        );
        assert_eq!(
            knee_line(&k),
            "below the ideal line by more than 3% from its first point, 1 clients: QPS 9.60 of 10 (96.0%), latency 0.1040 s"
        );
    }

    #[test]
    fn a_pool_flattens_at_its_size() {
        // blocking-64, as measured: 3% under the line from the start (its 104 ms answers),
        // flat from 64 clients.
        let pts = [
            (1.0, 9.67, 0.104),
            (16.0, 149.3, 0.105),
            (64.0, 601.2, 0.105),
            (128.0, 605.7, 0.210),
            (256.0, 597.5, 0.418),
            (512.0, 598.6, 0.848),
        ];
        assert_eq!(ceiling(&pts), Some((64.0, 605.7)));
        assert_eq!(
            knee_summary(&pts).unwrap(),
            "below the ideal line by more than 3% from its first point, 1 clients: QPS 9.67 of 10 (96.7%), latency 0.1040 s; most QPS 606 (within 10% of it from 64 clients on)"
        );
        // A dip below 90% of the most, then back: flat only from after the dip.
        let dip = [(1.0, 100.0, 0.1), (2.0, 80.0, 0.1), (3.0, 95.0, 0.1)];
        assert_eq!(ceiling(&dip), Some((3.0, 100.0)));
        // On the line to the end: no ceiling in the summary.
        let on = [(1.0, 10.0, 0.1), (2.0, 20.0, 0.1)];
        assert!(!knee_summary(&on).unwrap().contains("most QPS"));
        assert_eq!(ceiling(&[]), None);
    }

    #[test]
    fn seeds_lines_keep_the_seed_shape_and_add_the_ideal() {
        let mut refused = row("uring keep-alive", 10_000.0, 60_000.0, 0.15);
        refused.non_2xx = 3.0;
        let rows = [
            row("uring keep-alive", 1.0, 9.9103, 0.1006),
            row("blocking-1 new conn", 1.0, 9.5991, 0.1039),
            refused,
            row("uring keep-alive", 5000.0, 49_000.0, 0.101),
        ];
        assert_eq!(
            seeds_lines(&rows),
            "uring keep-alive:\n\
             1 clients. Latency: 0.1006, QPS: 9.9103, ideal: 10 (99.1%)\n\
             5000 clients. Latency: 0.1010, QPS: 49000.0000, ideal: 50000 (98.0%)\n\
             10000 clients. Latency: 0.1500, QPS: 60000.0000, ideal: 100000 (60.0%)  (3 non-2xx responses)\n\
             knee: leaves the ideal line by more than 3% at 10000 clients: QPS 60000 of 100000 (60.0%), latency 0.1500 s; most QPS 60000 (within 10% of it from 10000 clients on)\n\
             blocking-1 new conn:\n\
             1 clients. Latency: 0.1039, QPS: 9.5991, ideal: 10 (96.0%)\n\
             knee: below the ideal line by more than 3% from its first point, 1 clients: QPS 9.60 of 10 (96.0%), latency 0.1039 s; most QPS 9.60 (within 10% of it from 1 clients on)\n"
        );
        let knees = seeds_knees(&rows);
        assert_eq!(knees.len(), 2);
        assert_eq!(knees[0].0, "uring keep-alive");
    }
}

#[cfg(test)]
mod table_tests {
    use super::*;

    fn run(label: &str, rep: usize, cpu: f64) -> RunResult {
        RunResult {
            label: label.into(),
            x: 64.0,
            rep,
            cpu_per_req_us: cpu,
            rps: 1000.0,
            ..RunResult::default()
        }
    }

    /// The cell of `row`'s server CPU ratio in `table`.
    fn cpu_cell(t: &str, row: &str) -> String {
        let line = t
            .lines()
            .find(|l| l.starts_with(&format!("| 64 | {row} |")))
            .unwrap_or_else(|| panic!("no {row}:\n{t}"));
        line.split('|').nth(9).unwrap().trim().to_string()
    }

    #[test]
    fn a_row_is_starred_only_when_it_differs_from_the_baseline_and_its_twin() {
        let mut raw = Vec::new();
        for rep in 0..8 {
            // The machine drifts by up to 20% between repetitions, alike for the three runs
            // of one; epoll's second instance runs 2% dear in every other repetition.
            let m = 1.0 + 0.2 * ((rep * 7) % 5) as f64 / 4.0;
            raw.push(run("epoll", rep, 10.0 * m));
            raw.push(run(
                "epoll A/A",
                rep,
                10.0 * m * (1.0 + 0.02 * (rep % 2) as f64),
            ));
            raw.push(run(
                "uring",
                rep,
                10.6 * m * (1.0 + 0.002 * (rep % 3) as f64),
            ));
            raw.push(run(
                "tokio",
                rep,
                10.1 * m * (1.0 + 0.001 * (rep % 3) as f64),
            ));
        }
        let m: Vec<RunResult> = ["epoll", "epoll A/A", "uring", "tokio"]
            .iter()
            .map(|l| raw.iter().find(|r| r.label == *l).unwrap().clone())
            .collect();
        let t = table(&m, &raw, "conns", "epoll");
        assert_eq!(cpu_cell(&t, "epoll"), "");
        // The A/A row: its own interval, the noise floor, never starred.
        assert!(
            cpu_cell(&t, "epoll A/A").starts_with("1.01 (1.00–1.02)"),
            "{t}"
        );
        // 6% dearer than both instances: significant.
        assert!(cpu_cell(&t, "uring").ends_with(" *"), "{t}");
        // 1% dearer than epoll, every time, but no different from its second instance.
        let tokio = cpu_cell(&t, "tokio");
        assert!(
            tokio.starts_with("1.01 (1.01–1.01)") && !tokio.ends_with('*'),
            "{t}"
        );
        // Without the twin in the runs, the same 1% is starred: the interval excludes 1.
        let alone: Vec<RunResult> = raw
            .iter()
            .filter(|r| r.label != "epoll A/A")
            .cloned()
            .collect();
        assert!(cpu_cell(&table(&m, &alone, "conns", "epoll"), "tokio").ends_with(" *"));
    }
}
