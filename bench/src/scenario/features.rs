//! `features`: the ablation, every io_uring technique (and epoll option) against its
//! backend's default.

use anyhow::{bail, Result};

use crate::ctx::{Ctx, Scenario};
use crate::report::Report;
use crate::run::RunResult;

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
        let (m, raw) = ctx.go(&specs, ctx.reps(3))?;
        let table = feature_table(&m);
        println!("\nfeatures: echo, {conns} connections, each row against its backend's default in the same run\n\n{table}");
        rep.section(
                "features",
                &format!("Ablation: each row changes one thing against its backend's default (`uring`, `epoll`), measured interleaved in the same run; ratios are row ÷ default (for req/s higher is better, for the others lower is better). Echo, {conns} connections, payloads 64 B and 32 KiB. Where the client saturates, req/s is the client's limit and the server's CPU and syscalls per request are the figures that tell.\n\n{table}"),
                &m,
                &raw,
            );
        Ok(())
    }
}

/// The ablation rows: backend, variant name (empty: the default), extra server arguments.
const FEATURE_ROWS: &[(&str, &str, &[&str])] = &[
    ("uring", "", &[]),
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
    ("epoll", "", &[]),
    ("epoll", "level-triggered", &["--level-triggered"]),
    ("epoll", "busy-poll", &["--busy-poll", "50us"]),
    ("epoll", "small-read-buf", &["--read-buf", "4096"]),
];

/// One line per (payload, row): its figures and its ratios to its backend's default.
fn feature_table(rows: &[RunResult]) -> String {
    use std::fmt::Write as _;
    let mut t = String::from("| payload | row | req/s | ×default | server CPU µs/req | ×default | syscalls/req | ×default | p99 µs | ×default | note |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
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
        let sys = |x: &RunResult| x.syscalls_per_req.unwrap_or(0.0);
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {} | {:.2} | {} | {:.3} | {} | {:.0} | {} | {} |",
            r.x,
            r.label,
            r.rps,
            ratio(r.rps, base.rps),
            r.cpu_per_req_us,
            ratio(r.cpu_per_req_us, base.cpu_per_req_us),
            sys(r),
            ratio(sys(r), sys(base)),
            r.p99_us,
            ratio(r.p99_us, base.p99_us),
            if r.client_saturated {
                "client saturated"
            } else {
                ""
            }
        );
    }
    t
}
