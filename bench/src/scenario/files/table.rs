//! What one files run measured ([`FilesRun`]), the medians of a row's runs, the verdicts
//! against the baseline row, and the report's table.

use std::fmt::Write as _;

use serde::Serialize;

use super::disk::DiskDelta;
use crate::run::median;
use crate::stats::{self, Control, Interval};
use crate::verdict::{self, At, Verdict};

/// One run of one row: the hot and the cold load together against a fresh server.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FilesRun {
    pub label: String,
    pub rep: usize,
    /// Hot files: open loop at this rate (requests/s), the same for every row.
    pub hot_offered_rps: f64,
    pub hot_rps: f64,
    /// Hot latency in µs from the intended send time (corrected for coordinated omission).
    pub hot_p50_us: f64,
    pub hot_p99_us: f64,
    pub hot_p999_us: f64,
    pub hot_errors: f64,
    /// The hot client fell behind its schedule (the server did not keep up, or the client).
    pub hot_behind: bool,
    pub cold_rps: f64,
    /// Wire bytes of cold responses, per second, in MB (10^6).
    pub cold_mb_s: f64,
    pub cold_errors: f64,
    /// Responses neither 2xx nor 3xx, and responses that were malformed, of both loads.
    pub non_2xx: f64,
    pub data_errors: f64,
    /// The disk holding the data over the measured window (none: not found in /proc/diskstats).
    pub disk: Option<DiskDelta>,
    /// Server CPU over the measured window (schedstat; user + system ticks where there is none).
    pub server_cpu_s: f64,
    pub server_user_s: f64,
    pub server_sys_s: f64,
    /// `server_cpu_s` per request of either kind.
    pub cpu_per_req_us: f64,
    /// A client loop was CPU-bound: the client, not the server, may have been the limit.
    pub client_saturated: bool,
    pub server_cmd: String,
    pub client_cmds: Vec<String>,
}

/// A figure of a [`FilesRun`] that the verdicts compare.
pub type FilesMetric = crate::verdict::Metric<FilesRun>;

pub const HOT_P99: FilesMetric = FilesMetric {
    key: "hot_p99_us",
    name: "hot p99 latency",
    get: |r| r.hot_p99_us,
};
pub const COLD_MBS: FilesMetric = FilesMetric {
    key: "cold_mb_per_s",
    name: "cold MB/s",
    get: |r| r.cold_mb_s,
};
pub const CPU_PER_REQ: FilesMetric = FilesMetric {
    key: "server_cpu_us_per_request",
    name: "server CPU/request",
    get: |r| r.cpu_per_req_us,
};
pub const METRICS: [FilesMetric; 3] = [HOT_P99, COLD_MBS, CPU_PER_REQ];

/// The median run of several (of one row): every figure the median of the runs'.
pub fn combine(runs: &[FilesRun]) -> FilesRun {
    let m = |f: fn(&FilesRun) -> f64| median(runs.iter().map(f).collect());
    let first = &runs[0];
    let disks: Vec<DiskDelta> = runs.iter().filter_map(|r| r.disk).collect();
    let disk = (!disks.is_empty()).then(|| {
        let dm = |f: fn(&DiskDelta) -> f64| median(disks.iter().map(f).collect());
        DiskDelta {
            reads: dm(|d| d.reads as f64) as u64,
            sectors_read: dm(|d| d.sectors_read as f64) as u64,
            read_mb_s: dm(|d| d.read_mb_s),
            queue_depth: dm(|d| d.queue_depth),
            reads_in_flight: dm(|d| d.reads_in_flight),
        }
    });
    let most = |f: fn(&FilesRun) -> bool| runs.iter().filter(|r| f(r)).count() * 2 > runs.len();
    FilesRun {
        label: first.label.clone(),
        rep: 0,
        hot_offered_rps: first.hot_offered_rps,
        hot_rps: m(|r| r.hot_rps),
        hot_p50_us: m(|r| r.hot_p50_us),
        hot_p99_us: m(|r| r.hot_p99_us),
        hot_p999_us: m(|r| r.hot_p999_us),
        hot_errors: m(|r| r.hot_errors),
        hot_behind: most(|r| r.hot_behind),
        cold_rps: m(|r| r.cold_rps),
        cold_mb_s: m(|r| r.cold_mb_s),
        cold_errors: m(|r| r.cold_errors),
        non_2xx: m(|r| r.non_2xx),
        data_errors: m(|r| r.data_errors),
        disk,
        server_cpu_s: m(|r| r.server_cpu_s),
        server_user_s: m(|r| r.server_user_s),
        server_sys_s: m(|r| r.server_sys_s),
        cpu_per_req_us: m(|r| r.cpu_per_req_us),
        client_saturated: most(|r| r.client_saturated),
        server_cmd: first.server_cmd.clone(),
        client_cmds: first.client_cmds.clone(),
    }
}

/// The interval of `cand ÷ base` of `m`, runs paired by repetition.
pub fn interval(raw: &[FilesRun], cand: &str, base: &str, m: FilesMetric) -> Option<Interval> {
    let pairs: Vec<(f64, f64)> = raw
        .iter()
        .filter(|c| c.label == cand)
        .filter_map(|c| {
            raw.iter()
                .find(|b| b.label == base && b.rep == c.rep)
                .map(|b| ((m.get)(c), (m.get)(b)))
        })
        .collect();
    stats::paired(&pairs)
}

/// How the rows compare: every row against `baseline`, with the A/A row's interval (`aa`) as
/// the noise floor.
pub struct Judge<'a> {
    pub raw: &'a [FilesRun],
    pub baseline: &'a str,
    pub aa: Option<&'a str>,
}

impl Judge<'_> {
    /// The A/A control of `row`: the baseline's second instance against it, and `row`
    /// against that instance.
    fn control(&self, row: &str, m: FilesMetric) -> Option<Control> {
        let aa = self.aa.filter(|&aa| aa != row)?;
        Some(Control {
            floor: interval(self.raw, aa, self.baseline, m)?,
            vs: interval(self.raw, row, aa, m),
        })
    }

    /// The table cell of `row`'s ratio of `m`: `0.85 (0.80–0.90) *`, `–` for the baseline.
    pub fn cell(&self, row: &str, m: FilesMetric) -> String {
        if row == self.baseline {
            return String::new();
        }
        verdict::cell(
            interval(self.raw, row, self.baseline, m).as_ref(),
            self.control(row, m).as_ref(),
        )
    }

    /// The verdicts on every row but the baseline and the A/A control, for every metric, at
    /// `at`.
    pub fn verdicts(&self, rows: &[String], at: &At) -> Vec<Verdict> {
        let mut out = Vec::new();
        for m in METRICS {
            for row in rows {
                if row == self.baseline || Some(row.as_str()) == self.aa {
                    continue;
                }
                if let Some(iv) = interval(self.raw, row, self.baseline, m) {
                    out.push(verdict::of_interval(
                        &iv,
                        at,
                        row,
                        self.baseline,
                        self.control(row, m).as_ref(),
                        m.key,
                        m.name,
                    ));
                }
            }
        }
        out
    }
}

/// A row's notes: errors, the client's limits, falling behind.
fn note(r: &FilesRun) -> String {
    let mut n = Vec::new();
    if r.hot_behind {
        n.push("hot load behind schedule".to_string());
    }
    if r.client_saturated {
        n.push("client saturated".to_string());
    }
    if r.hot_errors + r.cold_errors > 0.0 {
        n.push(format!("{} errors", r.hot_errors + r.cold_errors));
    }
    if r.non_2xx > 0.0 {
        n.push(format!("{} non-2xx", r.non_2xx));
    }
    if r.data_errors > 0.0 {
        n.push(format!("{} malformed", r.data_errors));
    }
    n.join(", ")
}

/// The report's table: one line per row (medians), ratios against the baseline with their 95%
/// interval (bracketed: the range, fewer than 6 pairs; `*`: significant against the A/A floor).
pub fn table(medians: &[FilesRun], j: &Judge) -> String {
    let b = j.baseline;
    let mut t = format!(
        "| backend | hot req/s offered | hot req/s achieved | hot p50 µs | hot p99 µs | ×{b} hot p99 (95% CI) | hot p99.9 µs | cold req/s | cold MB/s | ×{b} cold MB/s (95% CI) | disk queue depth | disk reads | disk MB read | server CPU µs/req | ×{b} CPU/req (95% CI) | note |\n|---|---:|---:|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---|---|\n"
    );
    for r in medians {
        let (qd, reads, mb) = match &r.disk {
            Some(d) => (
                format!("{:.2}", d.queue_depth),
                format!("{}", d.reads),
                format!("{:.0}", d.sectors_read as f64 * 512.0 / 1e6),
            ),
            None => ("–".into(), "–".into(), "–".into()),
        };
        let _ = writeln!(
            t,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.1} | {:.1} | {} | {qd} | {reads} | {mb} | {:.1} | {} | {} |",
            r.label,
            r.hot_offered_rps,
            r.hot_rps,
            r.hot_p50_us,
            r.hot_p99_us,
            j.cell(&r.label, HOT_P99),
            r.hot_p999_us,
            r.cold_rps,
            r.cold_mb_s,
            j.cell(&r.label, COLD_MBS),
            r.cpu_per_req_us,
            j.cell(&r.label, CPU_PER_REQ),
            note(r)
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(label: &str, rep: usize, p99: f64, mbs: f64, cpu: f64) -> FilesRun {
        FilesRun {
            label: label.into(),
            rep,
            hot_offered_rps: 2000.0,
            hot_rps: 1999.6,
            hot_p50_us: 80.0,
            hot_p99_us: p99,
            hot_p999_us: p99 * 3.0,
            cold_rps: 40.0,
            cold_mb_s: mbs,
            disk: Some(DiskDelta {
                reads: 12000,
                sectors_read: 2_000_000,
                read_mb_s: 200.0,
                queue_depth: 3.5,
                reads_in_flight: 3.4,
            }),
            cpu_per_req_us: cpu,
            ..FilesRun::default()
        }
    }

    /// Six repetitions of uring, its A/A control, and epoll blocking (p99 five times uring's,
    /// half the cold throughput, CPU/request within noise).
    fn raw() -> Vec<FilesRun> {
        let mut v = Vec::new();
        for rep in 0..6 {
            let w = 1.0 + 0.01 * (rep % 3) as f64;
            v.push(run("uring", rep, 300.0 * w, 200.0, 20.0 * w));
            v.push(run("uring A/A", rep, 300.0, 200.0 * w, 20.0));
            let mut e = run("epoll blocking", rep, 1500.0 * w, 100.0, 20.0 * w);
            e.hot_behind = true;
            e.hot_errors = if rep == 0 { 3.0 } else { 0.0 };
            e.disk = None;
            v.push(e);
        }
        v
    }

    #[test]
    fn the_table_has_a_line_per_row_with_ratios_against_the_baseline() {
        let raw = raw();
        let m: Vec<FilesRun> = ["uring", "epoll blocking", "uring A/A"]
            .iter()
            .map(|l| {
                combine(
                    &raw.iter()
                        .filter(|r| r.label == *l)
                        .cloned()
                        .collect::<Vec<_>>(),
                )
            })
            .collect();
        let j = Judge {
            raw: &raw,
            baseline: "uring",
            aa: Some("uring A/A"),
        };
        let t = table(&m, &j);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 5, "{t}");
        assert!(lines[0].starts_with("| backend | hot req/s offered | hot req/s achieved | hot p50 µs | hot p99 µs | ×uring hot p99 (95% CI) |"), "{t}");
        assert_eq!(
            lines[0].matches('|').count(),
            lines[1].matches('|').count(),
            "{t}"
        );
        assert_eq!(
            lines[2],
            "| uring | 2000 | 2000 | 80 | 303 |  | 909 | 40.0 | 200.0 |  | 3.50 | 12000 | 1024 | 20.2 |  |  |"
        );
        // epoll blocking: p99 5×, significant; MB/s 0.5×, significant; CPU the same: no star.
        assert!(
            lines[3].starts_with("| epoll blocking | 2000 | 2000 | 80 | 1515 | 5.00 (5.00–5.00) * | 4545 | 40.0 | 100.0 | 0.50 (0.50–0.50) * | – | – | – | 20.2 | 1.00 (1.00–1.00) | hot load behind schedule |"),
            "{}",
            lines[3]
        );
        // The A/A row against its baseline, no floor of its own.
        assert!(lines[4].starts_with("| uring A/A |"), "{t}");
        let at = At {
            scenario: "files".into(),
            conns: 64,
            load: "2000 hot req/s".into(),
            x: 0.0,
        };
        let rows: Vec<String> = m.iter().map(|r| r.label.clone()).collect();
        let vs = j.verdicts(&rows, &at);
        // Three metrics for the one candidate (the baseline and the A/A row are not judged).
        assert_eq!(vs.len(), 3);
        assert!(vs.iter().all(|v| v.candidate == "epoll blocking"));
        let calls: Vec<(&str, &str)> = vs
            .iter()
            .map(|v| (v.metric.as_str(), v.call.as_str()))
            .collect();
        assert_eq!(
            calls,
            [
                ("hot_p99_us", "significant"),
                ("cold_mb_per_s", "significant"),
                ("server_cpu_us_per_request", "within noise")
            ]
        );
        assert!(vs[0].noise_floor.is_some());
        assert!(vs[0].line().starts_with(
            "epoll blocking vs uring, 64 conns, 2000 hot req/s: hot p99 latency 5.00×"
        ));
    }

    #[test]
    fn one_repetition_gives_ratios_without_intervals() {
        let raw: Vec<FilesRun> = raw().into_iter().filter(|r| r.rep == 0).collect();
        let j = Judge {
            raw: &raw,
            baseline: "uring",
            aa: None,
        };
        assert_eq!(j.cell("epoll blocking", HOT_P99), "5.00 [5.00–5.00]");
        assert_eq!(j.cell("uring", HOT_P99), "");
        assert_eq!(j.cell("nosuch", HOT_P99), "–");
        let m = combine(
            &raw.iter()
                .filter(|r| r.label == "epoll blocking")
                .cloned()
                .collect::<Vec<_>>(),
        );
        assert_eq!(note(&m), "hot load behind schedule, 3 errors");
    }
}
