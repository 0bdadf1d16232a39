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
                    Some(iv) => verdict::cell(Some(&iv), None),
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

/// The seed notes' shape: `64 clients. Latency: 0.1074, QPS: 536.2712`, grouped by backend.
pub fn seeds_lines(rows: &[RunResult]) -> String {
    let mut labels: Vec<&str> = Vec::new();
    for r in rows {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    let mut t = String::new();
    for l in labels {
        let _ = writeln!(t, "{l}:");
        for r in rows.iter().filter(|r| r.label == l) {
            let _ = writeln!(
                t,
                "{} clients. Latency: {:.4}, QPS: {:.4}{}",
                r.x,
                r.mean_us / 1e6,
                r.rps,
                if r.errors > 0.0 {
                    format!("  ({} errors/timeouts)", r.errors)
                } else {
                    String::new()
                }
            );
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
                "\n## Verdicts\n\nEach ratio is candidate ÷ baseline over repetitions run interleaved and paired (rep i of one with rep i of the other), with its 95% interval (Hodges–Lehmann); the A/A floor is the baseline against a second instance of itself in the same interleaving. *Significant* means the interval excludes 1 and lies outside the floor.\n{}",
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
