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
use crate::profile::{Area, Breakdown};
use crate::report::Report;
use crate::run::{self, RunResult, RunSpec};
use crate::scenario::compare::{note, rate_text};
use crate::stats::{self, Difference};
use crate::verdict::{self, At, Pair, CPU_PER_REQ, P99};

/// `ringlab-bench coalesce`.
pub struct Coalesce;

const AA: &str = "epoll A/A";

/// The latency a coalescing wait may cost: a D is within budget when the upper end of its p99
/// difference against D = 0 (95% interval) is at most this.
const P99_BUDGET_US: f64 = 100.0;

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
        let floor = |p: &Pair, mt| {
            verdict::control(
                &raw,
                AA,
                &label("epoll", 0),
                &p.candidate,
                &p.baseline,
                p.x,
                mt,
            )
        };
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

        // p99 in µs against D = 0, paired by repetition (the budget is in µs, not a ratio).
        let p99_cost = |b: &str, d: u32, rate: f64| -> Option<Difference> {
            stats::paired_difference(&verdict::pairs(&raw, &label(b, d), &label(b, 0), rate, P99))
        };
        let mut t = String::from("| load | backend | D | server CPU µs/req | ×D=0 (95% CI) | p50 µs | p99 µs | p99 − D=0 | p99.9 µs | ctx switches/req | note |\n|---|---|---:|---:|---|---:|---:|---|---:|---:|---|\n");
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
                            let floor = verdict::control(
                                &raw,
                                AA,
                                &label("epoll", 0),
                                &l,
                                &label(b, 0),
                                rate,
                                mt,
                            );
                            verdict::cell(
                                verdict::interval(&raw, &l, &label(b, 0), rate, mt).as_ref(),
                                floor.as_ref(),
                            )
                        }
                    };
                    let p99_cell = if d == 0 {
                        "0".to_string()
                    } else {
                        p99_cost(b, d, rate).map_or("–".into(), |x| x.text("µs"))
                    };
                    let _ = writeln!(
                        t,
                        "| {} | {b} | {d} µs | {:.2} | {} | {:.0} | {:.0} | {} | {:.0} | {:.3} | {} |",
                        load_of(rate),
                        r.cpu_per_req_us,
                        cell(CPU_PER_REQ),
                        r.p50_us,
                        r.p99_us,
                        p99_cell,
                        r.p999_us,
                        r.ctx_switches_per_req,
                        note(r)
                    );
                }
            }
        }
        println!("\ncoalesce: echo 64 B, {conns} connections\n\n{t}");

        // Within the p99 budget: per load and backend, the D with the least CPU per request
        // among those whose p99 costs at most P99_BUDGET_US over D = 0 (95% upper bound); then
        // each backend at its own best point against epoll at its own.
        let mut budget = format!("| load | backend | best D within +{P99_BUDGET_US:.0} µs p99 | server CPU µs/req | ×D=0 (95% CI) | p99 − D=0 | A/A p99 floor |\n|---|---|---:|---:|---|---|---|\n");
        let mut best_vs = Vec::new();
        for &rate in &rates {
            let aa_p99 =
                stats::paired_difference(&verdict::pairs(&raw, AA, &label("epoll", 0), rate, P99));
            let mut best: Vec<(String, u32)> = Vec::new();
            for b in &backends {
                let cpu = |d: u32| {
                    m.iter()
                        .find(|r| r.label == label(b, d) && r.x == rate)
                        .map(|r| r.cpu_per_req_us)
                };
                let within =
                    |d: u32| d == 0 || p99_cost(b, d, rate).is_some_and(|c| c.hi <= P99_BUDGET_US);
                let Some(d) = waits
                    .iter()
                    .copied()
                    .filter(|&d| within(d) && cpu(d).is_some())
                    .min_by(|x, y| {
                        cpu(*x)
                            .unwrap_or(f64::MAX)
                            .total_cmp(&cpu(*y).unwrap_or(f64::MAX))
                    })
                else {
                    continue;
                };
                best.push((b.clone(), d));
                let (ratio, cost) = if d == 0 {
                    ("1".to_string(), "0".to_string())
                } else {
                    (
                        verdict::interval(&raw, &label(b, d), &label(b, 0), rate, CPU_PER_REQ)
                            .map_or("–".into(), |iv| {
                                verdict::interval_text(iv.ratio, iv.lo, iv.hi, iv.n, iv.confidence)
                            }),
                        p99_cost(b, d, rate).map_or("–".into(), |x| x.text("µs")),
                    )
                };
                let _ = writeln!(
                    budget,
                    "| {} | {b} | {d} µs | {:.2} | {ratio} | {cost} | {} |",
                    load_of(rate),
                    cpu(d).unwrap_or(0.0),
                    aa_p99.map_or("–".into(), |x| x.text("µs")),
                );
            }
            let at = At {
                scenario: "coalesce".into(),
                conns,
                load: format!(
                    "{}, each at its best D within +{P99_BUDGET_US:.0} µs p99",
                    load_of(rate)
                ),
                x: rate,
            };
            let base = best.iter().find(|(b, _)| b == "epoll");
            for (b, d) in best.iter().filter(|(b, _)| b != "epoll") {
                if let Some((_, de)) = base {
                    let floor = verdict::control(
                        &raw,
                        AA,
                        &label("epoll", 0),
                        &label(b, *d),
                        &label("epoll", *de),
                        rate,
                        CPU_PER_REQ,
                    );
                    best_vs.extend(verdict::judge(
                        &raw,
                        &at,
                        &label(b, *d),
                        &label("epoll", *de),
                        floor.as_ref(),
                        CPU_PER_REQ,
                    ));
                }
            }
        }
        let best_lines: String = best_vs
            .iter()
            .map(|v| format!("- {}\n", v.line()))
            .collect();
        println!("\ncoalesce: the least CPU per request within +{P99_BUDGET_US:.0} µs of p99\n\n{budget}\n{best_lines}");
        rep.add_verdicts(
            "coalesce",
            &best_vs,
            &format!("Each backend at the D that gives it the least server CPU per request while its p99 stays within +{P99_BUDGET_US:.0} µs of its own D = 0 (upper end of the 95% interval of the paired p99 difference), uring against epoll at those points."),
        );

        let profiles = if ctx.o.profile {
            profile_runs(ctx, &backends, &loads, &rates, waits, &c, dur)
        } else {
            Vec::new()
        };
        let prof = profile_text(&profiles);
        if !prof.is_empty() {
            println!("\ncoalesce: where the server's CPU goes, per load\n{prof}");
        }

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
            "Echo 64 B, {conns} connections, open loop at {} of the slowest backend's capacity ({}), the same schedule for every row; the server coalesces wake-ups with `--coalesce D` for D in {} µs (batch 32), the client does not. {reps} interleaved repetitions; ratios are paired with their 95% interval (bracketed: the range, fewer than 6 pairs), `*` when significant against the epoll A/A floor of that load; `p99 − D=0` is the paired difference of p99 in µs (Hodges–Lehmann, 95% interval).\n\n{t}\n![CPU per request against p99](coalesce-cpu-p99.svg)\n\nThe least CPU per request within +{P99_BUDGET_US:.0} µs of p99 (a D qualifies when the upper end of its p99 difference is at most that; D = 0 always does), with the A/A row's p99 difference as the floor of what a p99 can be resolved to here:\n\n{budget}\n{best_lines}{prof}",
            loads.iter().map(|l| format!("{l}%")).collect::<Vec<_>>().join(", "),
            rate_text(capacity),
            waits.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
        );
        rep.section("coalesce", &text, &m, &raw);
        Ok(())
    }
}

/// With `--profile`: per load, one run of each backend alone at D = 0 and at the largest D,
/// `perf record` on the server's CPU over its window.
fn profile_runs(
    ctx: &Ctx,
    backends: &[String],
    loads: &[f64],
    rates: &[f64],
    waits: &[u32],
    conns: &str,
    dur: f64,
) -> Vec<(String, Breakdown)> {
    let mut out = Vec::new();
    let dmax = waits.iter().copied().max().unwrap_or(0);
    for (l, rate) in loads.iter().zip(rates) {
        let r = rate.to_string();
        for b in backends {
            for d in [0, dmax] {
                let row = label(b, d);
                eprintln!("  profile {row} at {l}% load");
                let client = ["--size", "64", "--conns", conns, "--rate", &r];
                let mut s = match ctx.proto_spec(b, *rate, "echo", &client, dur) {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("ringlab-bench: profile run {row} not started: {e:#}");
                        continue;
                    }
                };
                s.server_args
                    .extend(["--coalesce".to_string(), format!("{d}us")]);
                s.label = row.clone();
                // perf takes a few hundred ms to start sampling: a longer window keeps its
                // recording inside the measured load.
                s.duration_s = s.duration_s.max(3.0);
                s.profile = Some(ctx.run.tmp.join(format!("perf-coalesce-{b}-{d}.data")));
                match run::run(&ctx.bins, &s, &ctx.run) {
                    Ok(res) => out.extend(res.profile.map(|p| (format!("{row}, {l}% load"), p))),
                    Err(e) => eprintln!("ringlab-bench: profile run {row} failed: {e:#}"),
                }
            }
        }
    }
    out
}

/// The per-load profile table: how busy the server's CPU was, how much of the rest was idle
/// and the way in and out of it, and the server's own samples by area, with the share that had
/// the scheduler or a timer on the stack (sleeping and being woken).
fn profile_text(profiles: &[(String, Breakdown)]) -> String {
    if profiles.is_empty() {
        return String::new();
    }
    let mut t = String::from("\n`perf record -g -e cpu-clock` on the server's CPU over the measured window, one extra run per backend, load and D (0 and the largest). Columns after `idle`: shares of the server's own samples; `sleep/wake` counts those with the scheduler or a timer anywhere on the stack (it overlaps the areas).\n\n| run | server busy | idle (in/out of idle) | sleep/wake |");
    for a in Area::ALL {
        t += &format!(" {} |", a.name());
    }
    t += "\n|---|---:|---|---:|";
    t += &"---:|".repeat(Area::ALL.len());
    t += "\n";
    for (what, b) in profiles {
        if let Some(n) = &b.note {
            let _ = writeln!(t, "| {what} | – | {n} |");
            continue;
        }
        let all = (b.samples + b.not_server).max(1) as f64;
        let _ = write!(
            t,
            "| {what} | {:.1}% | {:.1}% ({:.1}%) | {:.1}% |",
            b.samples as f64 * 100.0 / all,
            b.idle as f64 * 100.0 / all,
            b.idle_transitions as f64 * 100.0 / all,
            b.sleep_wake as f64 * 100.0 / b.samples.max(1) as f64,
        );
        for a in Area::ALL {
            let _ = write!(t, " {:.1}% |", b.share(&[a]) * 100.0);
        }
        t += "\n";
    }
    t
}
