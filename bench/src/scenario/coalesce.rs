//! `coalesce`: paying for wake-ups. At moderate load much of a server's CPU goes to going idle
//! and waking up; `--coalesce D` lets each loop turn wait up to D for more than one completion
//! (io_uring: a minimum wait inside `io_uring_enter`, Linux 6.12; epoll: a precise sleep and a
//! second, non-blocking `epoll_wait`). At equal offered loads (percentages of the slowest
//! backend's capacity, probed first) and for each D: server CPU per request and latency, uring
//! against epoll at the same D, and each backend against itself at D = 0, with an epoll A/A
//! floor per load. The client does not coalesce, so the arrivals are the same for every row.

use std::fmt::Write as _;

use anyhow::{bail, Result};

use crate::ctx::{Ctx, Scenario};
use crate::plot;
use crate::report::Report;
use crate::run::{RunResult, RunSpec};
use crate::scenario::compare::{note, rate_text};
use crate::verdict::{self, Pair, CPU_PER_REQ, P99};

/// `ringlab-bench coalesce`.
pub struct Coalesce;

const AA: &str = "epoll A/A";

/// The row label of `backend` at coalescing `d` µs.
fn label(backend: &str, d: u32) -> String {
    format!("{backend} D={d}µs")
}

impl Scenario for Coalesce {
    fn name(&self) -> &'static str {
        "coalesce"
    }

    fn run(&self, ctx: &Ctx, rep: &mut Report) -> Result<()> {
        let backends = ctx.backends(&["uring", "epoll"]);
        if !backends.iter().any(|b| b == "epoll") {
            bail!("coalesce measures against epoll: include it in --backends");
        }
        let conns = ctx.one_conns(64);
        let loads = ctx.o.loads.clone().unwrap_or(if ctx.o.quick {
            vec![50.0]
        } else {
            vec![10.0, 25.0, 50.0, 75.0]
        });
        if loads.iter().any(|l| !(*l > 0.0 && *l <= 100.0)) {
            bail!("--loads takes percentages in (0, 100]");
        }
        let waits: &[u32] = if ctx.o.quick {
            &[0, 50, 200]
        } else {
            &[0, 10, 25, 50, 100, 200]
        };
        let dur = ctx.duration(1.5);
        let reps = ctx.reps(6);
        let c = conns.to_string();

        // The slowest backend's capacity, closed loop, not coalescing.
        eprintln!(
            "coalesce: probing capacity ({} at {conns} conns)",
            backends.join(", ")
        );
        let mut probe = Vec::new();
        for b in &backends {
            let mut s = ctx.proto_spec(b, 0.0, "echo", &["--size", "64", "--conns", &c], dur)?;
            s.duration_s = s.duration_s.min(1.0);
            probe.push(s);
        }
        let (pm, _) = ctx.go(&probe, 1)?;
        let Some(capacity) = pm.iter().map(|r| r.rps).reduce(f64::min) else {
            bail!("coalesce: every capacity probe failed");
        };

        let mut specs: Vec<RunSpec> = Vec::new();
        let mut rates = Vec::new();
        for &l in &loads {
            let mut rate = (capacity * l / 100.0).round().max(1.0);
            while rates.contains(&rate) {
                rate += 1.0;
            }
            rates.push(rate);
            let r = rate.to_string();
            let client = ["--size", "64", "--conns", &c, "--rate", &r];
            for &d in waits {
                for b in &backends {
                    let mut s = ctx.proto_spec(b, rate, "echo", &client, dur)?;
                    s.server_args
                        .extend(["--coalesce".to_string(), format!("{d}us")]);
                    s.label = label(b, d);
                    specs.push(s);
                }
            }
            let mut s = ctx.proto_spec("epoll", rate, "echo", &client, dur)?;
            s.label = AA.into();
            specs.push(s);
        }
        let (m, raw) = ctx.go(&specs, reps)?;

        // Verdicts: uring against epoll at the same D; each backend at D against D = 0.
        let mut pairs = Vec::new();
        for &rate in &rates {
            for &d in waits {
                for b in backends.iter().filter(|b| *b != "epoll") {
                    pairs.push(Pair {
                        candidate: label(b, d),
                        baseline: label("epoll", d),
                        x: rate,
                    });
                }
                if d > 0 {
                    for b in &backends {
                        pairs.push(Pair {
                            candidate: label(b, d),
                            baseline: label(b, 0),
                            x: rate,
                        });
                    }
                }
            }
        }
        let floor = |p: &Pair, mt| verdict::interval(&raw, AA, &label("epoll", 0), p.x, mt);
        let load_of = |x: f64| {
            let i = rates.iter().position(|r| *r == x).unwrap_or(0);
            format!("{}% load ({})", loads[i], rate_text(x))
        };
        let vs = verdict::judge_all(
            &raw,
            "coalesce",
            &pairs,
            |x| (conns, load_of(x)),
            floor,
            &[CPU_PER_REQ, P99],
        );
        rep.add_verdicts(
            "coalesce",
            &vs,
            "Rows: backend D=coalescing wait. The A/A floor at each load is epoll D=0µs against a second instance of itself.",
        );

        let mut t = String::from("| load | backend | D | server CPU µs/req | ×D=0 (95% CI) | p50 µs | p99 µs | ×D=0 p99 (95% CI) | p99.9 µs | ctx switches/req | note |\n|---|---|---:|---:|---|---:|---:|---|---:|---:|---|\n");
        for &rate in &rates {
            for b in &backends {
                for &d in waits {
                    let l = label(b, d);
                    let Some(r) = m.iter().find(|r| r.label == l && r.x == rate) else {
                        continue;
                    };
                    let cell = |mt| {
                        if d == 0 {
                            "1".to_string()
                        } else {
                            let floor = verdict::interval(&raw, AA, &label("epoll", 0), rate, mt);
                            verdict::cell(
                                verdict::interval(&raw, &l, &label(b, 0), rate, mt).as_ref(),
                                floor.as_ref(),
                            )
                        }
                    };
                    let _ = writeln!(
                        t,
                        "| {} | {b} | {d} µs | {:.2} | {} | {:.0} | {:.0} | {} | {:.0} | {:.3} | {} |",
                        load_of(rate),
                        r.cpu_per_req_us,
                        cell(CPU_PER_REQ),
                        r.p50_us,
                        r.p99_us,
                        cell(P99),
                        r.p999_us,
                        r.ctx_switches_per_req,
                        note(r)
                    );
                }
            }
        }
        println!("\ncoalesce: echo 64 B, {conns} connections\n\n{t}");

        // CPU per request against p99: one curve per backend and load, through its D points.
        let mut curve: Vec<RunResult> = Vec::new();
        for r in &m {
            if r.label == AA {
                continue;
            }
            let b = r.label.split(' ').next().unwrap_or("");
            let mut c = r.clone();
            c.label = format!("{b} {}", load_of(r.x));
            c.x = r.p99_us;
            curve.push(c);
        }
        plot::lines(
            &rep.dir.join("coalesce-cpu-p99.svg"),
            "server CPU per request against p99 (each point one D)",
            "p99 µs",
            "µs CPU / request",
            &curve,
            |r| r.cpu_per_req_us,
        )?;
        let text = format!(
            "Echo 64 B, {conns} connections, open loop at {} of the slowest backend's capacity ({}), the same schedule for every row; the server coalesces wake-ups with `--coalesce D` for D in {} µs (batch 32), the client does not. {reps} interleaved repetitions; ratios are paired with their 95% interval (bracketed: the range, fewer than 6 pairs), `*` when significant against the epoll A/A floor of that load.\n\n{t}\n![CPU per request against p99](coalesce-cpu-p99.svg)\n",
            loads.iter().map(|l| format!("{l}%")).collect::<Vec<_>>().join(", "),
            rate_text(capacity),
            waits.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
        );
        rep.section("coalesce", &text, &m, &raw);
        Ok(())
    }
}
