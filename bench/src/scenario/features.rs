//! `features`: the ablation, every io_uring technique (and epoll option) against its
//! backend's default.

use anyhow::{bail, Result};

use crate::ctx::{Ctx, Scenario};
use crate::report::Report;
use crate::run::RunResult;
use crate::verdict::{self, Metric};

/// `ringlab-bench features`.
pub struct Features;

impl Scenario for Features {
    fn name(&self) -> &'static str {
        "features"
    }

    fn run(&self, ctx: &Ctx, rep: &mut Report) -> Result<()> {
        let conns = ctx.one_conns(64);
        let sizes: Vec<usize> = vec![64, 32 * 1024];
        let dur = ctx.duration(2.0);
        let mut specs = Vec::new();
        for &size in &sizes {
            for (backend, variant, extra) in FEATURE_ROWS {
                if ctx
                    .o
                    .backends
                    .as_ref()
                    .is_some_and(|b| !b.iter().any(|x| x == backend || x == "all"))
                {
                    continue;
                }
                let label = if variant.is_empty() {
                    backend.to_string()
                } else {
                    format!("{backend} {variant}")
                };
                let client = ["--size", &size.to_string(), "--conns", &conns.to_string()];
                let mut s = ctx.proto_spec(backend, size as f64, "echo", &client, dur)?;
                s.label = label;
                s.server_args.extend(extra.iter().map(|a| a.to_string()));
                specs.push(s);
            }
        }
        if specs.is_empty() {
            bail!("features: no rows for --backends (it measures uring and epoll)");
        }
        // Six pairs: the fewest that give a 95% interval.
        let (m, raw) = ctx.go(&specs, ctx.reps(6))?;
        let table = feature_table(&m, &raw);
        let pairs = verdict::pairs_of(&raw, |l| {
            let backend = l.split_whitespace().next().unwrap_or("");
            (!verdict::is_aa(l)).then(|| backend.to_string())
        });
        let vs = verdict::judge_all(
            &raw,
            "features",
            &pairs,
            |x| (conns, format!("{x} B closed loop")),
            |p, m| verdict::twin_control(&raw, &p.candidate, &p.baseline, p.x, m),
            &[verdict::CPU_PER_REQ, verdict::RPS],
        );
        rep.add_verdicts("features", &vs, "");
        println!("\nfeatures: echo, {conns} connections, each row against its backend's default in the same run\n\n{table}");
        rep.section(
                "features",
                &format!("Ablation: each row changes one thing against its backend's default (`uring`, `epoll`), measured interleaved in the same run; ratios are row ÷ default paired over the repetitions, with their 95% interval (bracketed: the range, fewer than 6 repetitions), `*` where the row differs at 95%, in the same direction, both from the default and from the `A/A` row, a second instance of the default in the same interleaving (the A/A row's own interval is the noise floor) (for req/s higher is better, for the others lower is better). Echo, {conns} connections, payloads 64 B and 32 KiB. Where the client saturates, req/s is the client's limit and the server's CPU and syscalls per request are the figures that tell.\n\n{table}"),
                &m,
                &raw,
            );
        Ok(())
    }
}

/// The ablation rows: backend, variant name (empty: the default; `A/A`: a second instance of
/// the default, the noise floor), extra server arguments.
const FEATURE_ROWS: &[(&str, &str, &[&str])] = &[
    ("uring", "", &[]),
    ("uring", "A/A", &[]),
    ("uring", "fixed-files", &["--fixed-files"]),
    ("uring", "no-register-ring-fd", &["--no-register-ring-fd"]),
    ("uring", "coop-taskrun", &["--no-defer-taskrun"]),
    ("uring", "sqpoll", &["--sqpoll"]),
    ("uring", "send-zc>=4KiB", &["--send-zc", "4096"]),
    ("uring", "recv-bundle", &["--recv-bundle"]),
    (
        "uring",
        "buf-incremental",
        &[
            "--buf-incremental",
            "--buf-size",
            "65536",
            "--buf-count",
            "256",
        ],
    ),
    ("uring", "no-multishot-recv", &["--no-multishot-recv"]),
    ("uring", "napi-busy-poll", &["--napi-busy-poll", "50us"]),
    (
        "uring",
        "small-rings",
        &["--sq-entries", "64", "--cq-entries", "128"],
    ),
    (
        "uring",
        "small-bufs",
        &["--buf-count", "64", "--buf-size", "4096"],
    ),
    ("uring", "metrics", &["--metrics", "127.0.0.1:0"]),
    ("epoll", "", &[]),
    ("epoll", "A/A", &[]),
    ("epoll", "metrics", &["--metrics", "127.0.0.1:0"]),
    ("epoll", "level-triggered", &["--level-triggered"]),
    ("epoll", "busy-poll", &["--busy-poll", "50us"]),
    ("epoll", "small-read-buf", &["--read-buf", "4096"]),
];

/// One line per (payload, row): its figures and its ratios to its backend's default, paired
/// over the repetitions in `raw` with their interval.
fn feature_table(rows: &[RunResult], raw: &[RunResult]) -> String {
    use std::fmt::Write as _;
    let mut t = String::from("| payload | row | req/s | ×default (95% CI) | server CPU µs/req | ×default (95% CI) | syscalls/req | ×default | p99 µs | ×default (95% CI) | note |\n|---:|---|---:|---|---:|---|---:|---:|---:|---|---|\n");
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else {
            "–".into()
        }
    };
    for r in rows {
        let backend = r.label.split_whitespace().next().unwrap_or("");
        let Some(base) = rows.iter().find(|d| d.label == backend && d.x == r.x) else {
            continue;
        };
        let ci = |m: Metric| {
            if r.label == backend {
                return "1.00".to_string();
            }
            let fl = verdict::twin_control(raw, &r.label, backend, r.x, m);
            verdict::cell(
                verdict::interval(raw, &r.label, backend, r.x, m).as_ref(),
                fl.as_ref(),
            )
        };
        let sys = |x: &RunResult| x.syscalls_per_req.unwrap_or(0.0);
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {} | {:.2} | {} | {:.3} | {} | {:.0} | {} | {} |",
            r.x,
            r.label,
            r.rps,
            ci(verdict::RPS),
            r.cpu_per_req_us,
            ci(verdict::CPU_PER_REQ),
            sys(r),
            ratio(sys(r), sys(base)),
            r.p99_us,
            ci(verdict::P99),
            if r.client_saturated {
                "client saturated"
            } else {
                ""
            }
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(label: &str, rep: usize, rps: f64) -> RunResult {
        RunResult {
            label: label.into(),
            x: 64.0,
            rep,
            rps,
            cpu_per_req_us: 10.0,
            p99_us: 100.0,
            ..RunResult::default()
        }
    }

    #[test]
    fn each_row_gets_an_interval_and_the_a_a_floor() {
        let mut raw = Vec::new();
        for rep in 0..6 {
            let wobble = 1.0 + rep as f64 * 0.002;
            raw.push(run("epoll", rep, 1000.0));
            raw.push(run("epoll A/A", rep, 1000.0 * wobble));
            raw.push(run("epoll busy-poll", rep, 1200.0 * wobble));
            raw.push(run("epoll level-triggered", rep, 1003.0));
        }
        let m: Vec<RunResult> = [
            "epoll",
            "epoll A/A",
            "epoll busy-poll",
            "epoll level-triggered",
        ]
        .iter()
        .map(|l| run(l, 0, raw.iter().find(|r| r.label == *l).unwrap().rps))
        .collect();
        let t = feature_table(&m, &raw);
        let cols = |row: &str| -> Vec<String> {
            let line = t
                .lines()
                .find(|l| l.starts_with(&format!("| 64 | {row} |")))
                .unwrap_or_else(|| panic!("no {row}:\n{t}"));
            line.split('|').map(|c| c.trim().to_string()).collect()
        };
        assert_eq!(cols("epoll")[4], "1.00");
        assert_eq!(cols("epoll A/A")[4], "1.00 (1.00–1.01)");
        assert_eq!(cols("epoll busy-poll")[4], "1.21 (1.20–1.21) *");
        // 0.3% more on every rep, but no different from the A/A row (a second epoll): no star.
        assert_eq!(cols("epoll level-triggered")[4], "1.00 (1.00–1.00)");
        assert!(!t.contains("±6%"));
    }
}
