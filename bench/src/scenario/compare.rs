//! `compare` (the default): the verdict. Echo 64 B, per connection count, measured two ways that
//! are stable enough to decide from:
//! - **equal offered load**: open loop at the same rates for every backend (percentages of the
//!   slowest backend's capacity, probed first): server CPU per request and latency;
//! - **server-bound capacity**: the server's CPU capped by a cgroup, a closed-loop client:
//!   requests/s is then the server's capacity at that share, never the client's.
//!
//! Repetitions run interleaved (candidate, baseline, A/A control), paired by repetition, and
//! continue until every headline interval is narrower than ±3% or `--budget` runs out.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::cgroup::CpuCap;
use crate::ctx::{Ctx, Scenario};
use crate::peers::{Dropped, Peer};
use crate::plot;
use crate::profile::{Area, Breakdown};
use crate::report::Report;
use crate::run::{self, RunResult, RunSpec};
use crate::stats;
use crate::verdict::{self, At, Metric, Verdict, CPU_PER_REQ, P99, RPS};

/// `ringlab-bench compare`.
pub struct Compare;

/// The headline precision the repetitions aim for: ±3%.
const TARGET: f64 = 0.03;
/// Pairs needed for a 95% interval (Wilcoxon: 6).
const MIN_REPS: usize = 6;
/// Pairs a point needs before it may stop at ±3%. With 6 pairs the 95% interval is the range
/// of the pairs' extremes, and a point that stops the first time that range happens to be
/// narrow stops on its luckiest repetitions (in the 2026-12-02 runs points stopped after 6–7
/// pairs at ±3% and their calls flipped between runs); from 10 on, the interval rests on more
/// than two values.
const MIN_STOP: usize = 10;
/// How firm every call of a point must be before it may stop ([`stats::repeat`]: the chance
/// that a rerun with as many pairs makes the same call). A ±3% interval is not enough on its
/// own: on 2026-12-04 a 1.02× difference with a ±1–2% interval was called significant in one
/// 5-minute run and within noise in the next (an effect the size of the run's resolution is
/// called each way about half the time, whatever the rule); such a point now runs on while
/// the budget lasts, and its pairs bring the call off the fence.
const FIRM: f64 = 0.9;
/// Host steal (% of the measured CPUs' time taken by the hypervisor for others) at which a
/// repetition of a point is left out of the statistics: side by side the host's noise mostly
/// cancels, but not when it takes this much. In the eighth session's ten runs a pair's ratio
/// strayed from its point's median by 1.3% on average (A/A: 1.0%) with steal under 1%, and by
/// 3.0% (A/A: 3.7%) with steal of 8% or more (11 of 250 pairs).
const STEAL_LIMIT: f64 = 8.0;
const SIZE: &str = "64";

/// The server-bound runs' CPU caps.
enum Caps {
    /// cgroups on this machine (side by side: one per place in the start order).
    Local(Vec<CpuCap>),
    /// Fleet mode: each run's server capped on the server host at `share` of a CPU by the run
    /// (`RunSpec::server_share`); `what` the probe's cgroup files.
    Remote { share: f64, what: String },
}

impl Scenario for Compare {
    fn name(&self) -> &'static str {
        "compare"
    }

    fn takes_peers(&self) -> bool {
        true
    }

    fn run(&self, ctx: &Ctx, rep: &mut Report) -> Result<()> {
        let plan = Plan::new(ctx)?;
        let started = Instant::now();
        eprintln!(
            "compare: probing capacity ({} at {:?} conns)",
            plan.rows.join(", "),
            plan.conns
        );
        let caps = probe(ctx, &plan)?;
        let (mut load_specs, mut load_at) = plan.load_specs(ctx, &caps)?;
        let cap = if ctx.run.netns.is_some() {
            Err("not under --netns (the server runs in another namespace's cgroup view)".into())
        } else if let Some(f) = ctx.run.fleet.as_deref() {
            // A group of its own for each run's server on the server host (the rows run one
            // after another there), made and removed by the run; tried once first.
            match f.guard(|| f.probe_cap(ctx.o.server_share))? {
                Ok(what) => Ok(Caps::Remote {
                    share: ctx.o.server_share,
                    what,
                }),
                Err(why) => Err(why),
            }
        } else {
            // Side by side, a group of its own for each row's server, each capped at an equal
            // part of the share: the same CPU budget for every row.
            let n = if plan.together { plan.rows.len() } else { 1 };
            CpuCap::create_many(ctx.o.server_share / n as f64, n)
                .map(Caps::Local)
                .map_err(|e| format!("{e:#}"))
        };
        let (cap_specs, cap_at) = match &cap {
            Ok(c) => plan.capacity_specs(ctx, c)?,
            Err(_) => (Vec::new(), Vec::new()),
        };
        let mut load_runs = vec![Vec::new(); load_specs.len()];
        let mut cap_runs = vec![Vec::new(); cap_specs.len()];
        let budget = plan.budget;
        let max_reps = ctx
            .o
            .reps
            .unwrap_or(if ctx.o.quick { 3 } else { usize::MAX });
        let fixed = ctx.o.reps.is_some();
        eprintln!(
            "compare: {:.1} s measured per run, repetitions until every headline interval is within ±3% or {:.0} s have passed",
            plan.dur,
            budget.as_secs_f64()
        );
        let mut reps = 0;
        // Point-repetitions left out for host steal (see STEAL_LIMIT).
        let mut stolen = 0;
        // Points whose every headline interval is already within ±3% (a real 95% interval)
        // run no more: the rest of the budget goes to the points still short of it.
        let mut done: Vec<f64> = Vec::new();
        // Once the runs would stop: the equal-load points left with no run (lowered after the
        // first repetition, or left out for steal) get one repetition more, on their own; an
        // empty row would be no answer at all.
        let mut catch_up: Option<(String, Vec<f64>)> = None;
        let ending = loop {
            let t = Instant::now();
            let per = plan.rows.len();
            let others: Vec<f64> = match &catch_up {
                Some((_, xs)) => all_but(&load_specs, &cap_specs, xs),
                None if fixed => Vec::new(),
                None => done.clone(),
            };
            let skip: &[f64] = &others;
            let load_order = running(&load_specs, per, reps, skip);
            let cap_order = running(&cap_specs, per, reps, skip);
            let n = load_order.len() + cap_order.len();
            let mut k = 0;
            let mut progress = |_: usize, s: &RunSpec| {
                k += 1;
                eprintln!("  rep {} [{k}/{n}] {} x={:.0}", reps + 1, s.label, s.x);
            };
            // Side by side, each server-bound row goes into the group of its place in the start
            // order, which rotates with it.
            let groups: Vec<std::path::PathBuf> = match &cap {
                Ok(Caps::Local(c)) if plan.together => c.iter().map(|g| g.dir.clone()).collect(),
                _ => Vec::new(),
            };
            for (specs, order, runs, groups) in [
                (&load_specs, &load_order, &mut load_runs, &[][..]),
                (&cap_specs, &cap_order, &mut cap_runs, &groups[..]),
            ] {
                if plan.together {
                    // One point at a time, its rows side by side.
                    for set in order.chunk_by(|&a, &b| specs[a].x == specs[b].x) {
                        run::run_together(
                            &ctx.bins,
                            specs,
                            run::Together { order: set, groups },
                            reps,
                            &ctx.run,
                            runs,
                            &mut progress,
                        )?;
                    }
                } else {
                    run::run_rep(&ctx.bins, specs, order, reps, &ctx.run, runs, &mut progress)?;
                }
            }
            reps += 1;
            if !fixed && !ctx.o.quick {
                for runs in [&mut load_runs, &mut cap_runs] {
                    stolen += leave_out_stolen(runs, reps - 1);
                }
            }
            if reps == 1 {
                // A load the rows could not keep is lowered once, to what they kept, and its
                // point starts over: a verdict at unequal loads would compare nothing.
                for l in plan.lower_behind(&mut load_specs, &mut load_at, &mut load_runs) {
                    eprintln!("compare: {l}");
                }
            }
            let raw: Vec<RunResult> = load_runs
                .iter()
                .chain(&cap_runs)
                .flatten()
                .cloned()
                .collect();
            for a in plan.converged(&raw, &load_at, &cap_at) {
                if !done.contains(&a) {
                    done.push(a);
                }
            }
            let widest = plan.widest(&raw, &load_at, &cap_at);
            let least_firm = plan.least_firm(&raw, &load_at, &cap_at);
            let stop = Stop {
                fixed,
                max_reps,
                budget,
            };
            // Another repetition takes about as long per run as this one, over the runs of
            // the points still running.
            let skip: &[f64] = if fixed { &[] } else { &done };
            let left = running(&load_specs, per, reps, skip).len()
                + running(&cap_specs, per, reps, skip).len();
            let next = t.elapsed().mul_f64(left as f64 / n.max(1) as f64);
            if let Some((e, _)) = catch_up {
                break format!(
                    "{e} The equal-load point(s) left with no run (lowered after the first repetition, or left out for steal) then ran once more, on their own."
                );
            }
            if let Some(e) = stop.ending(reps, widest, least_firm, started.elapsed() + next) {
                let empty = without_runs(&load_at, &load_runs);
                if empty.is_empty() {
                    break e;
                }
                eprintln!(
                    "compare: {} equal-load point(s) have no run yet: one repetition more for them",
                    empty.len()
                );
                catch_up = Some((e, empty));
            }
        };
        let cap_note = match &cap {
            Ok(Caps::Local(cs)) if cs.len() == 1 => format!(
                "Server-bound capacity: the server in cgroup {}, capped at {} of a CPU.",
                cs[0].what, cs[0].share
            ),
            Ok(Caps::Remote { share, what }) => format!(
                "Server-bound capacity: each run's server in a cgroup of its own on the server host {}, capped at {share} of a CPU ({what}).",
                ctx.run.fleet.as_ref().map_or("", |f| f.server.ssh.dest.as_str())
            ),
            Ok(Caps::Local(cs)) => format!(
                "Server-bound capacity: each server in a cgroup of its own, capped at {:.3} of a CPU ({} in all): {}.",
                cs.first().map_or(0.0, |c| c.share),
                ctx.o.server_share,
                cs.iter().map(|c| c.what.as_str()).collect::<Vec<_>>().join("; ")
            ),
            Err(e) => format!("Server-bound capacity skipped: no cgroup could be written ({e})."),
        };
        drop(cap);
        let (load_m, load_raw) = run::medians_and_raw(load_runs);
        let (cap_m, cap_raw) = run::medians_and_raw(cap_runs);
        let profiles = if ctx.o.profile {
            plan.profile(ctx, &caps)?
        } else {
            Vec::new()
        };

        let behind = plan.behind(&load_m, &load_at);
        for b in &behind {
            eprintln!("compare: {b}");
        }
        let ending = if stolen > 0 {
            format!("{ending} {stolen} point-repetition(s) left out: the host's steal reached {STEAL_LIMIT:.0}% of the measured CPUs during them.")
        } else {
            ending
        };
        let verdicts = plan.verdicts(&load_raw, &load_at, &cap_raw, &cap_at);
        let lines: Vec<String> = verdicts.iter().map(Verdict::line).collect();
        println!("\ncompare: the verdict\n");
        for l in &lines {
            println!("{l}");
        }
        println!("\n{ending}\n{cap_note}");
        let mut notes = format!("{ending}\n\n{cap_note}\n");
        for b in &behind {
            println!("{b}");
            notes += &format!("\n{b}\n");
        }
        let dropped = ctx.run.dropped.notes();
        if !dropped.is_empty() {
            println!("{dropped}");
            notes += &format!("\n{dropped}");
        }
        let prof = profile_text(&profiles);
        if let Some(ceiling) = ceiling_line(&profiles) {
            println!("{ceiling}");
            notes += &format!("\n{ceiling}\n");
        }
        rep.add_verdicts("compare", &verdicts, &notes);

        let load_table = plan.load_table(&load_m, &load_raw, &load_at);
        let cap_table = plan.cap_table(&cap_m, &cap_raw, &cap_at);
        println!(
            "\nequal offered load\n\n{load_table}\nserver-bound capacity\n\n{cap_table}{prof}"
        );
        let peers_note = if ctx.peers.is_empty() {
            String::new()
        } else {
            "\n\nRows `peer:NAME` are `--peer` servers, started fresh for every run like the backends, pinned to the server CPUs with taskset and measured from outside the same way (CPU over all their processes and threads).".to_string()
        };
        let loads = plan
            .loads
            .iter()
            .map(|l| format!("{l}%"))
            .collect::<Vec<_>>()
            .join(", ");
        let method = if plan.together {
            format!(
                "**Side by side** (the default; `--sequential` runs the rows one after another instead): in every run the {k} rows ({rows}) each have a fresh server of their own, all pinned to the server CPUs at the same time, each driven by its own client (the clients share the client CPUs) and all measured over the same window (the clients wait for one start instant); so whatever the host does during a run (other tenants, frequency, interrupts) happens to every row alike and cancels in their ratios, which rest on the runs' pairs. The servers start in an order that rotates between repetitions. **Equal offered load**: open loop (`ringlab-client --rate`, latency corrected for coordinated omission), every row at the same rate: {loads} of the slowest backend's capacity (measured alone) shared among the {k} rows, so the server CPUs are that busy in all; server CPU from /proc (schedstat) over the measured window only. **Server-bound capacity**: closed loop, each of the {k} servers in a cgroup of its own capped at an equal part of {share} of a CPU (the group goes with the place in the start order), so the servers, not the clients, are the limit; req/s compared. Up to {reps} repetitions of {dur:.1} s measured each (a point stops once all its intervals are within ±3% on at least {MIN_STOP} pairs and its calls would repeat 9 runs in 10); figures are medians, ratios are paired with their 95% interval (bracketed: the range, fewer than 6 pairs) and `*` when significant.",
                k = plan.rows.len(),
                rows = plan.rows.join(", "),
                share = ctx.o.server_share,
                dur = plan.dur,
            )
        } else {
            format!(
                "**Sequential** (`--sequential`): every run has one server alone on the server CPUs. **Equal offered load**: open loop (`ringlab-client --rate`, latency corrected for coordinated omission) at {loads} of the slowest backend's capacity, the same schedule for every backend; server CPU from /proc (schedstat) over the measured window only. **Server-bound capacity**: closed loop against the server capped at {share} of a CPU, so the server, not the client, is the limit. Rows run interleaved ({rows}; each repetition starts one row later), up to {reps} repetitions of {dur:.1} s measured each (a point stops once all its intervals are within ±3% on at least {MIN_STOP} pairs and its calls would repeat 9 runs in 10); figures are medians, ratios are paired with their 95% interval (bracketed: the range, fewer than 6 pairs) and `*` when significant.",
                rows = plan.rows.join(", "),
                share = ctx.o.server_share,
                dur = plan.dur,
            )
        };
        let mut text = format!(
            "Echo {SIZE} B. {method}{peers_note}\n\n### Equal offered load\n\n{load_table}\n### Server-bound capacity\n\n{cap_note}\n\n{cap_table}"
        );
        if !prof.is_empty() {
            text += &format!("\n### Where the server's CPU goes\n{prof}");
        }
        for (file, t, yd, f) in [
            (
                "compare-cpu.svg",
                "server CPU per request at equal load",
                "µs CPU / request",
                (|r: &RunResult| r.cpu_per_req_us) as fn(&RunResult) -> f64,
            ),
            (
                "compare-p99.svg",
                "p99 latency at equal load",
                "p99 µs",
                |r: &RunResult| r.p99_us,
            ),
        ] {
            if !load_m.is_empty() {
                plot::lines(
                    &rep.dir.join(file),
                    t,
                    "offered load, requests/s",
                    yd,
                    &load_m,
                    f,
                )?;
                text += &format!("\n![{t}]({file})\n");
            }
        }
        let mut all_m = load_m;
        all_m.extend(cap_m);
        let mut all_raw = load_raw;
        all_raw.extend(cap_raw);
        rep.section("compare", &text, &all_m, &all_raw);
        if let Some(obj) = rep.json.get_mut("compare").and_then(|v| v.as_object_mut()) {
            obj.insert("profiles".into(), serde_json::to_value(&profiles)?);
            obj.insert("capacity_probe".into(), serde_json::to_value(&caps)?);
        }
        Ok(())
    }
}

/// When the repetitions end.
struct Stop {
    /// `--reps` given: run exactly `max_reps`.
    fixed: bool,
    max_reps: usize,
    budget: Duration,
}

impl Stop {
    /// After `reps` repetitions whose widest headline interval is `widest` (and the fewest
    /// pairs any headline rests on) and whose least firm call would repeat with the chance
    /// `least_firm` (none where a call has no such estimate yet), with the next one expected
    /// to end at `next_end`: why they end, or none to run another.
    fn ending(
        &self,
        reps: usize,
        widest: Option<(f64, usize)>,
        least_firm: Option<f64>,
        next_end: Duration,
    ) -> Option<String> {
        if !self.fixed
            && widest.is_some_and(|(w, fewest)| fewest >= MIN_STOP && w <= TARGET)
            && least_firm.is_some_and(|f| f >= FIRM)
        {
            return Some(format!(
                "Stopped after {reps} repetitions: every headline interval is within ±3% and every call would repeat 9 runs in 10 (by the run's own estimate)."
            ));
        }
        let fence = match least_firm {
            Some(f) if f < FIRM => format!(
                "; the least firm call would repeat on a rerun ≈ {:.0}% of the time (a larger --budget brings it off the fence)",
                f * 100.0
            ),
            _ => String::new(),
        };
        let w = match widest {
            None => "some headline has no pair of runs yet".to_string(),
            Some((w, fewest)) if fewest >= MIN_REPS => {
                format!("the widest headline interval is ±{:.1}%{fence}", w * 100.0)
            }
            Some((w, _)) => format!(
                "the widest headline range is ±{:.1}% (fewer than {MIN_REPS} pairs: no 95% interval)",
                w * 100.0
            ),
        };
        if reps >= self.max_reps {
            return Some(format!(
                "Stopped after {reps} repetitions (--reps or --quick); {w}."
            ));
        }
        if !self.fixed && next_end > self.budget {
            return Some(format!(
                "The budget ({:.0} s, --budget) ran out after {reps} repetitions; {w}{}.",
                self.budget.as_secs_f64(),
                if reps < MIN_REPS {
                    " (a 95% interval needs 6: give a larger --budget)"
                } else {
                    ""
                }
            ));
        }
        None
    }
}

/// What compare runs: connection counts, rows (candidates, baseline, A/A), loads.
struct Plan {
    conns: Vec<u32>,
    /// Every row in run order: the candidates, the baseline, the A/A control.
    rows: Vec<String>,
    /// The other backends, then the peers.
    candidates: Vec<String>,
    /// Peers that failed (their rows are no headline any more).
    dropped: Dropped,
    baseline: String,
    aa: String,
    loads: Vec<f64>,
    /// Measured seconds per run.
    dur: f64,
    budget: Duration,
    /// Side by side: every point's rows run at the same time (not `--sequential`, not a fleet).
    together: bool,
}

impl Plan {
    fn new(ctx: &Ctx) -> Result<Plan> {
        let backends = ctx.backends(&["uring", "epoll"]);
        let Some(last) = backends.last() else {
            bail!("compare: no backends");
        };
        let baseline = if backends.iter().any(|b| b == "epoll") {
            "epoll".to_string()
        } else {
            last.clone()
        };
        let candidates: Vec<String> = backends
            .iter()
            .filter(|b| **b != baseline)
            .cloned()
            .chain(ctx.peers.iter().map(Peer::label))
            .collect();
        let aa = verdict::aa_of(&baseline);
        let mut rows = candidates.clone();
        rows.extend([baseline.clone(), aa.clone()]);
        let loads = ctx.o.loads.clone().unwrap_or(if ctx.o.quick {
            vec![50.0]
        } else {
            vec![25.0, 50.0, 75.0]
        });
        if loads.iter().any(|l| !(*l > 0.0 && *l <= 100.0)) {
            bail!("--loads takes percentages in (0, 100]");
        }
        if !(ctx.o.server_share >= 0.01 && ctx.o.server_share <= 64.0) {
            bail!("--server-share is a share of one CPU, from 0.01 (0.5: half a CPU)");
        }
        let conns = ctx.o.conns.clone().unwrap_or(vec![512]);
        let budget =
            ctx.o
                .budget
                .unwrap_or(Duration::from_secs(if ctx.o.quick { 30 } else { 120 }));
        let together = !ctx.o.sequential && ctx.run.fleet.is_none();
        // Runs per repetition: every row at each load, and server-bound, per conns; side by
        // side, one run holds every row, and starting its servers and clients together costs
        // more than one's.
        let points = conns.len() * (loads.len() + 1);
        let (runs, setup) = if together {
            (points, 0.3 + 0.1 * rows.len() as f64)
        } else {
            (points * rows.len(), 0.0)
        };
        let dur = match (ctx.o.duration, ctx.o.quick) {
            (Some(d), _) => d,
            (None, true) => ctx.duration(0.5),
            (None, false) => window(budget, runs, ctx.warmup() + setup),
        };
        Ok(Plan {
            conns,
            rows,
            candidates,
            dropped: ctx.run.dropped.clone(),
            baseline,
            aa,
            loads,
            dur,
            budget,
            together,
        })
    }

    /// A point's rate as the report shows it: `30k req/s`, side by side `3 × 10k req/s`.
    fn rate_label(&self, rate: f64) -> String {
        if self.together {
            format!("{} × {}", self.rows.len(), rate_text(rate))
        } else {
            rate_text(rate)
        }
    }

    /// The offered rate of each row at `load` percent of `capacity`: side by side the rows
    /// share it, so the server CPUs are as busy in all as one server alone at that load.
    fn rate(&self, capacity: f64, load: f64) -> f64 {
        let share = if self.together {
            self.rows.len() as f64
        } else {
            1.0
        };
        (capacity * load / 100.0 / share).round().max(1.0)
    }

    /// The run of row `row` (the A/A row is its baseline's backend) with `client` arguments.
    fn spec(&self, ctx: &Ctx, row: &str, x: f64, client: &[&str]) -> Result<RunSpec> {
        let backend = if row == self.aa { &self.baseline } else { row };
        let mut s = ctx.proto_spec(backend, x, "echo", client, self.dur)?;
        s.label = row.into();
        Ok(s)
    }

    /// Equal-load specs: per conns and load, every row at the same rate; x is the rate.
    fn load_specs(&self, ctx: &Ctx, caps: &[Probe]) -> Result<(Vec<RunSpec>, Vec<At>)> {
        let mut specs = Vec::new();
        let mut at: Vec<At> = Vec::new();
        for p in caps {
            for &l in &self.loads {
                let mut rate = self.rate(p.capacity_rps, l);
                while at.iter().any(|a| a.x == rate) {
                    rate += 1.0; // one x per (conns, load): runs are paired by it
                }
                at.push(At {
                    scenario: "compare".into(),
                    conns: p.conns,
                    load: format!("{l}% load ({})", self.rate_label(rate)),
                    x: rate,
                });
                let (c, r) = (p.conns.to_string(), rate.to_string());
                for row in &self.rows {
                    specs.push(self.spec(
                        ctx,
                        row,
                        rate,
                        &["--size", SIZE, "--conns", &c, "--rate", &r],
                    )?);
                }
            }
        }
        Ok((specs, at))
    }

    /// Server-bound specs: per conns, every row closed loop with the server in `cap`.
    fn capacity_specs(&self, ctx: &Ctx, cap: &Caps) -> Result<(Vec<RunSpec>, Vec<At>)> {
        let (caps, remote): (&[CpuCap], Option<f64>) = match cap {
            Caps::Local(c) => (c, None),
            Caps::Remote { share, .. } => (&[], Some(*share)),
        };
        let share = remote.unwrap_or_else(|| caps.iter().map(|c| c.share).sum::<f64>());
        let mut specs = Vec::new();
        let mut at = Vec::new();
        for &c in &self.conns {
            at.push(At {
                scenario: "compare".into(),
                conns: c,
                load: if self.together {
                    format!(
                        "server-bound ({} × {:.3} CPU)",
                        caps.len(),
                        caps.first().map_or(0.0, |c| c.share)
                    )
                } else {
                    format!("server-bound ({share} CPU)")
                },
                x: c as f64,
            });
            for row in &self.rows {
                let mut s = self.spec(
                    ctx,
                    row,
                    c as f64,
                    &["--size", SIZE, "--conns", &c.to_string()],
                )?;
                // Side by side the group goes with the place in the start order (run_together).
                if !self.together {
                    s.cgroup = caps.first().map(|c| c.dir.clone());
                }
                s.server_share = remote;
                specs.push(s);
            }
        }
        Ok((specs, at))
    }

    /// Each point's headline intervals (every candidate's against the baseline, at `x`; the A/A
    /// control is the noise floor printed beside them, not a headline): none before every one
    /// has a pair.
    fn headline(
        &self,
        raw: &[RunResult],
        load_at: &[At],
        cap_at: &[At],
    ) -> Vec<(f64, Option<Vec<stats::Interval>>)> {
        let mut out = Vec::new();
        for (ats, m) in [(load_at, CPU_PER_REQ), (cap_at, RPS)] {
            for a in ats {
                let ivs = self
                    .candidates
                    .iter()
                    .filter(|c| !self.dropped.has(c))
                    .map(|c| verdict::interval(raw, c, &self.baseline, a.x, m))
                    .collect();
                out.push((a.x, ivs));
            }
        }
        out
    }

    /// The points (their x) whose headline intervals are all within ±3% on at least
    /// [`MIN_STOP`] pairs, with calls that would repeat 9 runs in 10 ([`FIRM`]).
    fn converged(&self, raw: &[RunResult], load_at: &[At], cap_at: &[At]) -> Vec<f64> {
        let firm = self.firmness(raw, load_at, cap_at);
        self.headline(raw, load_at, cap_at)
            .into_iter()
            .filter(|(x, ivs)| {
                ivs.as_ref().is_some_and(|v| {
                    v.iter().all(|iv| {
                        iv.confidence >= stats::LEVEL
                            && iv.n >= MIN_STOP
                            && iv.half_width() <= TARGET
                    })
                }) && firm
                    .iter()
                    .filter(|(fx, _)| fx == x)
                    .all(|(_, f)| f.is_some_and(|f| f >= FIRM))
            })
            .map(|(x, _)| x)
            .collect()
    }

    /// How firm each headline call is, per point (its x): the chance that a rerun with as
    /// many pairs makes the same call, as its verdict line gives it (`repeat_chance`, against
    /// the baseline and its twin); none where a call has no estimate yet (fewer than 6 pairs).
    fn firmness(
        &self,
        raw: &[RunResult],
        load_at: &[At],
        cap_at: &[At],
    ) -> Vec<(f64, Option<f64>)> {
        let mut out = Vec::new();
        for (ats, m) in [(load_at, CPU_PER_REQ), (cap_at, RPS)] {
            for a in ats {
                for c in self.candidates.iter().filter(|c| !self.dropped.has(c)) {
                    let ctl = verdict::twin_control(raw, c, &self.baseline, a.x, m);
                    let v = verdict::judge(raw, a, c, &self.baseline, ctl.as_ref(), m);
                    out.push((a.x, v.and_then(|v| v.repeat_chance)));
                }
            }
        }
        out
    }

    /// The least firm headline call's chance of repeating ([`Plan::firmness`]); none while
    /// some call has no estimate.
    fn least_firm(&self, raw: &[RunResult], load_at: &[At], cap_at: &[At]) -> Option<f64> {
        self.firmness(raw, load_at, cap_at)
            .into_iter()
            .try_fold(1.0f64, |m, (_, f)| f.map(|f| m.min(f)))
    }

    /// The headline intervals' widest half-width, and the fewest pairs any of them rests on
    /// (a 95% interval from 6); none before every headline has a pair.
    fn widest(&self, raw: &[RunResult], load_at: &[At], cap_at: &[At]) -> Option<(f64, usize)> {
        let (mut w, mut fewest) = (0.0f64, usize::MAX);
        for (_, ivs) in self.headline(raw, load_at, cap_at) {
            for iv in ivs? {
                fewest = fewest.min(iv.n);
                w = w.max(iv.half_width());
            }
        }
        Some((w, fewest))
    }

    /// Every candidate's verdict: CPU per request at each equal load, capacity when bound.
    fn verdicts(
        &self,
        load_raw: &[RunResult],
        load_at: &[At],
        cap_raw: &[RunResult],
        cap_at: &[At],
    ) -> Vec<Verdict> {
        let mut out = Vec::new();
        for (raw, ats, m) in [(load_raw, load_at, CPU_PER_REQ), (cap_raw, cap_at, RPS)] {
            for a in ats {
                for c in &self.candidates {
                    let ctl = verdict::twin_control(raw, c, &self.baseline, a.x, m);
                    out.extend(verdict::judge(raw, a, c, &self.baseline, ctl.as_ref(), m));
                }
            }
        }
        out
    }

    /// A line for each equal-load point where some row did not get its offered rate (median
    /// achieved below 97% of it): not a comparison at equal load.
    fn behind(&self, medians: &[RunResult], at: &[At]) -> Vec<String> {
        let mut out = Vec::new();
        for a in at {
            let short: Vec<String> = medians
                .iter()
                .filter(|r| r.x == a.x && r.rps < BEHIND * a.x)
                .map(|r| format!("{} {:.0}%", r.label, r.rps / a.x * 100.0))
                .collect();
            if !short.is_empty() {
                out.push(format!(
                    "Not at equal load: at {} conns, {}, rows fell short of the offered rate ({} of it): the clients or the servers could not keep up, so their CPU per request is not comparable; use lower --loads.",
                    a.conns,
                    a.load,
                    short.join(", ")
                ));
            }
        }
        out
    }

    /// After the first repetition: every equal-load point where some row achieved less than
    /// [`BEHIND`] of its offered rate gets a rate of 95% of the lowest achieved, and its runs
    /// so far are dropped (one line each says so).
    fn lower_behind(
        &self,
        specs: &mut [RunSpec],
        at: &mut [At],
        runs: &mut [Vec<RunResult>],
    ) -> Vec<String> {
        let mut out = Vec::new();
        for k in 0..at.len() {
            let old = at[k].x;
            let kept = runs
                .iter()
                .flatten()
                .filter(|r| r.x == old)
                .map(|r| r.rps / old)
                .reduce(f64::min);
            let Some(kept) = kept.filter(|&m| m < BEHIND) else {
                continue;
            };
            let mut rate = (old * kept * 0.95).round().max(1.0);
            while at.iter().any(|a| a.x == rate) {
                rate -= 1.0; // one x per (conns, load)
            }
            for (s, r) in specs.iter_mut().zip(runs.iter_mut()) {
                if s.x == old {
                    s.x = rate;
                    if let Some(i) = s.client_args.iter().position(|a| a == "--rate") {
                        s.client_args[i + 1] = rate.to_string();
                    }
                    r.clear();
                }
            }
            let name = at[k]
                .load
                .split(" (")
                .next()
                .unwrap_or_default()
                .to_string();
            out.push(format!(
                "at {} conns, {name}: the rows kept only {:.0}% of {}; lowered to {} and started over",
                at[k].conns,
                kept * 100.0,
                self.rate_label(old),
                self.rate_label(rate)
            ));
            at[k].load = format!("{name}, lowered to {}", self.rate_label(rate));
            at[k].x = rate;
        }
        out
    }

    /// The ratio cell of `row` against the baseline at `x` (the A/A row is its own floor).
    fn cell(&self, raw: &[RunResult], row: &str, x: f64, m: Metric) -> String {
        if row == self.baseline {
            return "1".into();
        }
        let floor = verdict::twin_control(raw, row, &self.baseline, x, m);
        verdict::cell(
            verdict::interval(raw, row, &self.baseline, x, m).as_ref(),
            floor.as_ref(),
        )
    }

    fn load_table(&self, m: &[RunResult], raw: &[RunResult], at: &[At]) -> String {
        let b = &self.baseline;
        let mut t = format!("| conns | load | backend | achieved req/s | server CPU µs/req | ×{b} (95% CI) | p50 µs | p99 µs | ×{b} p99 (95% CI) | p99.9 µs | note |\n|---:|---|---|---:|---:|---|---:|---:|---|---:|---|\n");
        for a in at {
            if !m.iter().any(|r| r.x == a.x) {
                let _ = writeln!(
                    t,
                    "| {} | {} | – | – | – | – | – | – | – | – | no run completed at this load |",
                    a.conns, a.load
                );
            }
            for r in m.iter().filter(|r| r.x == a.x) {
                let _ = writeln!(
                    t,
                    "| {} | {} | {} | {:.0} | {:.2} | {} | {:.0} | {:.0} | {} | {:.0} | {} |",
                    a.conns,
                    a.load,
                    r.label,
                    r.rps,
                    r.cpu_per_req_us,
                    self.cell(raw, &r.label, a.x, CPU_PER_REQ),
                    r.p50_us,
                    r.p99_us,
                    self.cell(raw, &r.label, a.x, P99),
                    r.p999_us,
                    note(r)
                );
            }
        }
        t
    }

    fn cap_table(&self, m: &[RunResult], raw: &[RunResult], at: &[At]) -> String {
        if at.is_empty() {
            return String::new();
        }
        let b = &self.baseline;
        let mut t = format!("| conns | backend | req/s (capacity) | ×{b} (95% CI) | server CPU µs/req | p99 µs | server RSS MiB | note |\n|---:|---|---:|---|---:|---:|---:|---|\n");
        for a in at {
            for r in m.iter().filter(|r| r.x == a.x) {
                let _ = writeln!(
                    t,
                    "| {} | {} | {:.0} | {} | {:.2} | {:.0} | {:.1} | {} |",
                    a.conns,
                    r.label,
                    r.rps,
                    self.cell(raw, &r.label, a.x, RPS),
                    r.cpu_per_req_us,
                    r.p99_us,
                    r.server_rss_kib / 1024.0,
                    note(r)
                );
            }
        }
        t
    }

    /// One profiled run per backend (not the A/A) at the middle load of the first conns.
    fn profile(&self, ctx: &Ctx, caps: &[Probe]) -> Result<Vec<(String, Breakdown)>> {
        let Some(p) = caps.first() else {
            return Ok(Vec::new());
        };
        let l = self.loads[self.loads.len() / 2];
        // Alone on the server CPUs: the rate that makes them as busy as the load's.
        let rate = (p.capacity_rps * l / 100.0).round().max(1.0).to_string();
        let mut out = Vec::new();
        for row in self
            .rows
            .iter()
            .filter(|r| **r != self.aa && !self.dropped.has(r))
        {
            eprintln!("  profile {row}");
            let mut s = self.spec(
                ctx,
                row,
                0.0,
                &[
                    "--size",
                    SIZE,
                    "--conns",
                    &p.conns.to_string(),
                    "--rate",
                    &rate,
                ],
            )?;
            s.profile = Some(ctx.run.tmp.join(format!("perf-{row}.data")));
            match run::run(&ctx.bins, &s, &ctx.run) {
                Ok(r) => out.extend(
                    r.profile
                        .map(|b| (format!("{row}, {} conns, {l}% load", p.conns), b)),
                ),
                Err(e) if crate::fleet::is_host_failure(&e) => return Err(e),
                Err(e) => eprintln!("ringlab-bench: profile run {row} failed: {e:#}"),
            }
        }
        Ok(out)
    }
}

/// The capacity probe of one connection count: the slowest backend's closed-loop req/s.
#[derive(Clone, Debug, serde::Serialize)]
struct Probe {
    conns: u32,
    capacity_rps: f64,
    slowest: String,
}

/// A short closed-loop run of every backend per connection count: the slowest one's req/s is
/// the capacity the loads are percentages of (the client's limit if it is lower: then every
/// load is one the client can also keep). Side by side, the rows run together as they will be
/// measured (A/A row included), each client against its own server, and the capacity is the
/// slowest row's req/s times the rows: what the server CPUs and the client CPUs manage in all
/// when every row gets the same rate.
fn probe(ctx: &Ctx, plan: &Plan) -> Result<Vec<Probe>> {
    let mut out = Vec::new();
    for &c in &plan.conns {
        let mut specs = Vec::new();
        for row in plan.rows.iter().filter(|r| plan.together || **r != plan.aa) {
            let mut s = plan.spec(
                ctx,
                row,
                c as f64,
                &["--size", SIZE, "--conns", &c.to_string()],
            )?;
            s.duration_s = s.duration_s.min(1.0);
            specs.push(s);
        }
        let mut runs = vec![Vec::new(); specs.len()];
        let order: Vec<usize> = (0..specs.len()).collect();
        let mut progress = |_: usize, s: &RunSpec| eprintln!("  probe {} {c} conns", s.label);
        if plan.together {
            run::run_together(
                &ctx.bins,
                &specs,
                run::Together {
                    order: &order,
                    groups: &[],
                },
                0,
                &ctx.run,
                &mut runs,
                &mut progress,
            )?;
        } else {
            run::run_rep(
                &ctx.bins,
                &specs,
                &order,
                0,
                &ctx.run,
                &mut runs,
                &mut progress,
            )?;
        }
        let slowest = runs.iter().flatten().min_by(|a, b| a.rps.total_cmp(&b.rps));
        let together = if plan.together {
            runs.iter().filter(|r| !r.is_empty()).count() as f64
        } else {
            1.0
        };
        match slowest {
            Some(r) => out.push(Probe {
                conns: c,
                capacity_rps: r.rps * together,
                slowest: r.label.clone(),
            }),
            None => bail!("compare: every capacity probe at {c} connections failed (see above)"),
        }
    }
    Ok(out)
}

/// The points (x) of `at` that have no run in `runs`.
fn without_runs(at: &[At], runs: &[Vec<RunResult>]) -> Vec<f64> {
    at.iter()
        .map(|a| a.x)
        .filter(|x| !runs.iter().flatten().any(|r| r.x == *x))
        .collect()
}

/// Every point (x) of `a` and `b` but those in `keep`: what a repetition for `keep` alone skips.
fn all_but(a: &[RunSpec], b: &[RunSpec], keep: &[f64]) -> Vec<f64> {
    a.iter()
        .chain(b)
        .map(|s| s.x)
        .filter(|x| !keep.contains(x))
        .collect()
}

/// The run order of repetition `rep` (see [`rotated`]) without the points (x) in `skip`.
fn running(specs: &[RunSpec], per: usize, rep: usize, skip: &[f64]) -> Vec<usize> {
    rotated(specs.len(), per, rep)
        .into_iter()
        .filter(|&i| !skip.contains(&specs[i].x))
        .collect()
}

/// Measured seconds per run when `runs` runs make a repetition: enough that `budget` holds
/// about 8 repetitions (a 95% interval needs 6), with each run's warm-up and start-up on top,
/// between 0.8 s and 3 s. Longer windows are worth more than more runs: on a 2-vCPU VM a 3 s
/// window halves the run-to-run spread of CPU per request against a 0.8 s one.
fn window(budget: Duration, runs: usize, warmup: f64) -> f64 {
    let per_run = budget.as_secs_f64() / (8 * runs.max(1)) as f64;
    ((per_run - warmup - 0.15) * 10.0).floor().clamp(8.0, 30.0) / 10.0
}

/// Leave out repetition `rep` of every point (x) where some row's run had host steal of
/// [`STEAL_LIMIT`] or more: every row's run of that point and repetition, so that the pairs
/// stay pairs. `runs`: each spec's runs. How many points were left out.
fn leave_out_stolen(runs: &mut [Vec<RunResult>], rep: usize) -> usize {
    let mut xs: Vec<f64> = runs
        .iter()
        .flatten()
        .filter(|r| r.rep == rep && r.steal_pct >= STEAL_LIMIT)
        .map(|r| r.x)
        .collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for r in runs.iter_mut() {
        r.retain(|r| !(r.rep == rep && xs.contains(&r.x)));
    }
    xs.len()
}

/// The run order of repetition `rep` over `n` specs in groups of `k` rows: each group starts
/// one row later than in the repetition before (A B A' · B A' A · A' A B ...), so that no row
/// always runs first, or always right after the same other row.
pub(super) fn rotated(n: usize, k: usize, rep: usize) -> Vec<usize> {
    (0..n)
        .map(|i| {
            let (g, j) = (i / k, i % k);
            g * k + (j + rep) % k
        })
        .collect()
}

pub(super) fn note(r: &RunResult) -> String {
    let mut n = Vec::new();
    if r.client_saturated {
        n.push("client saturated or behind schedule".to_string());
    }
    if r.errors > 0.0 {
        n.push(format!("{} errors", r.errors));
    }
    if r.steal_pct >= STEAL_NOTE {
        n.push(format!("host steal {:.0}%", r.steal_pct));
    }
    n.join(", ")
}

/// An equal-load row that achieved less than this share of its offered rate was not at that
/// load.
const BEHIND: f64 = 0.97;

/// Steal time (% of the measured CPUs' time) from which a row says so: the host took that much
/// of the run from the VM.
pub(crate) const STEAL_NOTE: f64 = 2.0;

/// `30k req/s`.
pub(super) fn rate_text(r: f64) -> String {
    if r >= 10_000.0 {
        format!("{:.0}k req/s", r / 1000.0)
    } else {
        format!("{r:.0} req/s")
    }
}

/// The profile table: per backend, the share of the server's samples per area.
fn profile_text(profiles: &[(String, Breakdown)]) -> String {
    if profiles.is_empty() {
        return String::new();
    }
    let mut t = String::from("\n`perf record -g -e cpu-clock` on the server's CPU over the measured window, one extra run per backend; shares of the server's own samples. A sample whose leaf is generic (a lock, an allocation, the scheduler) counts in the area of its first caller that has one. The ceiling is what an IO model could remove at most: syscall entry/exit and the readiness machinery.\n\n| run | samples |");
    for a in Area::ALL {
        t += &format!(" {} |", a.name());
    }
    t += " heaviest symbols |\n|---|---:|";
    t += &"---:|".repeat(Area::ALL.len());
    t += "---|\n";
    for (what, b) in profiles {
        if let Some(n) = &b.note {
            let _ = writeln!(t, "| {what} | – | {} |", n);
            continue;
        }
        let _ = write!(t, "| {what} | {} |", b.samples);
        for a in Area::ALL {
            let _ = write!(t, " {:.1}% |", b.share(&[a]) * 100.0);
        }
        let top: Vec<String> = b
            .top
            .iter()
            .take(4)
            .map(|(s, n)| format!("`{s}` {:.1}%", *n as f64 * 100.0 / b.samples.max(1) as f64))
            .collect();
        let _ = writeln!(t, " {} |", top.join(", "));
    }
    t
}

/// From the epoll row: the largest share any IO model could remove.
fn ceiling_line(profiles: &[(String, Breakdown)]) -> Option<String> {
    let (what, b) = profiles
        .iter()
        .find(|(w, b)| w.starts_with("epoll,") && b.samples > 0)?;
    let sys = b.share(&[Area::Syscall]) * 100.0;
    let ready = b.share(&[Area::Readiness]) * 100.0;
    Some(format!(
        "Ceiling ({what}): syscall entry/exit {sys:.1}% + readiness machinery {ready:.1}% of the epoll server's samples: no IO model can remove more than {:.0}% of its CPU here; read the CPU verdicts against that.",
        b.ceiling() * 100.0
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_comes_from_the_epoll_row() {
        let b = Breakdown {
            samples: 100,
            by_area: vec![
                (Area::Syscall, 6),
                (Area::Readiness, 4),
                (Area::Tcp, 80),
                (Area::User, 10),
            ],
            ..Breakdown::default()
        };
        let p = vec![
            (
                "uring, 512 conns, 50% load".to_string(),
                Breakdown::default(),
            ),
            ("epoll, 512 conns, 50% load".to_string(), b),
        ];
        let l = ceiling_line(&p).unwrap();
        assert!(
            l.contains("syscall entry/exit 6.0% + readiness machinery 4.0%"),
            "{l}"
        );
        assert!(l.contains("more than 10%"), "{l}");
        assert!(ceiling_line(&p[..1]).is_none());
        assert!(profile_text(&p).contains(
            "| epoll, 512 conns, 50% load | 100 | 6.0% | 4.0% | 0.0% | 80.0% | 10.0% | 0.0% |"
        ));
    }

    #[test]
    fn repetitions_end_at_3_percent_or_when_the_budget_runs_out() {
        let s = |fixed, max_reps| Stop {
            fixed,
            max_reps,
            budget: Duration::from_secs(120),
        };
        let early = Duration::from_secs(30);
        let late = Duration::from_secs(121);
        let adaptive = s(false, usize::MAX);
        // Narrow but fewer than 6 pairs: not a 95% interval yet, go on; narrow on 6 to 9
        // pairs: a 95% interval, but too few to stop on.
        assert_eq!(adaptive.ending(3, Some((0.01, 3)), Some(1.0), early), None);
        assert_eq!(adaptive.ending(9, Some((0.01, 9)), Some(1.0), early), None);
        assert_eq!(
            adaptive.ending(10, Some((0.031, 10)), Some(1.0), early),
            None
        );
        assert_eq!(adaptive.ending(10, None, Some(1.0), early), None);
        let done = adaptive
            .ending(10, Some((0.029, 10)), Some(1.0), early)
            .unwrap();
        // Within ±3% on 10 pairs, but a call on the fence (or not yet estimated): go on while
        // the budget lasts, and say how firm the least firm call was when it runs out.
        assert_eq!(
            adaptive.ending(10, Some((0.02, 10)), Some(0.6), early),
            None
        );
        assert_eq!(adaptive.ending(10, Some((0.02, 10)), None, early), None);
        let fence = adaptive
            .ending(14, Some((0.02, 14)), Some(0.6), late)
            .unwrap();
        assert!(
            fence.contains("ran out after 14")
                && fence.contains("least firm call would repeat on a rerun ≈ 60%"),
            "{fence}"
        );
        assert!(
            done.starts_with("Stopped after 10 repetitions: every headline"),
            "{done}"
        );
        let short = adaptive
            .ending(8, Some((0.02, 8)), Some(1.0), late)
            .unwrap();
        assert!(
            short.contains("ran out after 8") && short.contains("interval is ±2.0%"),
            "{short}"
        );
        let out = adaptive
            .ending(4, Some((0.08, 4)), Some(1.0), late)
            .unwrap();
        assert!(
            out.contains("budget (120 s, --budget) ran out after 4")
                && out.contains("±8.0%")
                && out.contains("give a larger --budget"),
            "{out}"
        );
        // --reps N runs exactly N, whatever the intervals and the budget.
        assert_eq!(s(true, 8).ending(6, Some((0.01, 6)), Some(1.0), late), None);
        let fixed = s(true, 8)
            .ending(8, Some((0.01, 8)), Some(1.0), early)
            .unwrap();
        assert!(
            fixed.starts_with("Stopped after 8 repetitions (--reps"),
            "{fixed}"
        );
    }

    #[test]
    fn windows_grow_with_the_budget() {
        let w = |secs, runs| window(Duration::from_secs(secs), runs, 0.5);
        // Default (120 s, 12 runs a repetition): the shortest window.
        assert_eq!(w(120, 12), 0.8);
        // 5 minutes: 8 repetitions of 12 runs of 3.1 s, 2.4 s of it measured.
        assert_eq!(w(300, 12), 2.4);
        assert_eq!(w(3600, 12), 3.0);
        assert_eq!(w(300, 0), 3.0);
        // Side by side (4 points a repetition, 3 rows starting together: 0.6 s more each):
        // the default budget measures 2.5 s a run, 5 minutes 3 s.
        assert_eq!(window(Duration::from_secs(120), 4, 1.1), 2.5);
        assert_eq!(window(Duration::from_secs(300), 4, 1.1), 3.0);
    }

    fn plan(together: bool) -> Plan {
        Plan {
            conns: vec![512],
            rows: vec!["uring".into(), "epoll".into(), "epoll A/A".into()],
            candidates: vec!["uring".into()],
            dropped: Dropped::default(),
            baseline: "epoll".into(),
            aa: "epoll A/A".into(),
            loads: vec![50.0],
            dur: 1.0,
            budget: Duration::from_secs(60),
            together,
        }
    }

    #[test]
    fn a_load_the_rows_could_not_keep_is_lowered_once_and_started_over() {
        let p = plan(true);
        let spec = |label: &str, x: f64| RunSpec {
            label: label.into(),
            x,
            client_args: vec![
                "--rate".into(),
                x.to_string(),
                "--conns".into(),
                "512".into(),
            ],
            ..RunSpec::default()
        };
        let mut specs = vec![
            spec("uring", 20_000.0),
            spec("epoll", 20_000.0),
            spec("uring", 40_000.0),
            spec("epoll", 40_000.0),
        ];
        let run = |label: &str, x: f64, rps: f64| RunResult {
            label: label.into(),
            x,
            rps,
            ..RunResult::default()
        };
        let mut runs = vec![
            vec![run("uring", 20_000.0, 19_990.0)],
            vec![run("epoll", 20_000.0, 19_900.0)],
            vec![run("uring", 40_000.0, 38_000.0)],
            vec![run("epoll", 40_000.0, 36_000.0)],
        ];
        let at = |x: f64, l: &str| At {
            scenario: "compare".into(),
            conns: 512,
            load: format!("{l} (3 × {}k req/s)", x / 1000.0),
            x,
        };
        let mut ats = vec![at(20_000.0, "25% load"), at(40_000.0, "50% load")];
        let lines = p.lower_behind(&mut specs, &mut ats, &mut runs);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains("kept only 90% of 3 × 40k req/s"),
            "{lines:?}"
        );
        // 95% of the 36,000 the slower row kept.
        assert_eq!(ats[1].x, 34_200.0);
        assert_eq!(ats[1].load, "50% load, lowered to 3 × 34k req/s");
        assert_eq!(specs[2].x, 34_200.0);
        assert_eq!(specs[3].client_args[1], "34200");
        assert!(runs[2].is_empty() && runs[3].is_empty());
        // The point that kept its rate is untouched.
        assert_eq!(
            (ats[0].x, specs[0].x, runs[0].len()),
            (20_000.0, 20_000.0, 1)
        );
        // Should the runs stop now (--quick, or the budget), the lowered point has no run:
        // one repetition more runs it, and it alone (with the capacity points skipped).
        let empty = without_runs(&ats, &runs);
        assert_eq!(empty, [34_200.0]);
        let cap = [spec("uring", 512.0), spec("epoll", 512.0)];
        let skip = all_but(&specs, &cap, &empty);
        let mut order = running(&specs, 2, 1, &skip);
        order.sort_unstable();
        assert_eq!(order, [2, 3]);
        assert!(running(&cap, 2, 1, &skip).is_empty());
        // Had it no run even then, its row says so rather than vanish from the table.
        let t = p.load_table(&[run("uring", 20_000.0, 19_990.0)], &[], &ats);
        assert!(
            t.contains("| 512 | 50% load, lowered to 3 × 34k req/s | – |")
                && t.contains("no run completed at this load"),
            "{t}"
        );
    }

    #[test]
    fn a_point_whose_rows_fell_behind_their_rate_is_named() {
        let at = At {
            scenario: "compare".into(),
            conns: 512,
            load: "75% load (3 × 48k req/s)".into(),
            x: 48_000.0,
        };
        let row = |label: &str, rps: f64| RunResult {
            label: label.into(),
            x: 48_000.0,
            rps,
            ..RunResult::default()
        };
        let p = plan(true);
        let kept = [row("uring", 47_990.0), row("epoll", 47_000.0)];
        assert!(p.behind(&kept, std::slice::from_ref(&at)).is_empty());
        let short = [row("uring", 44_000.0), row("epoll", 47_000.0)];
        let lines = p.behind(&short, std::slice::from_ref(&at));
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("75% load (3 × 48k req/s)")
                && lines[0].contains("uring 92%")
                && !lines[0].contains("epoll"),
            "{lines:?}"
        );
    }

    #[test]
    fn side_by_side_rows_share_the_load() {
        // Alone, each row gets the load's rate; side by side the three share it, so the
        // server CPUs are as busy in all.
        assert_eq!(plan(false).rate(120_000.0, 50.0), 60_000.0);
        assert_eq!(plan(true).rate(120_000.0, 50.0), 20_000.0);
        assert_eq!(plan(true).rate(1.0, 1.0), 1.0);
    }

    /// A compare point at 512 connections, at `x`.
    fn at(x: f64) -> At {
        At {
            scenario: "compare".into(),
            conns: 512,
            load: String::new(),
            x,
        }
    }

    #[test]
    fn a_point_within_3_percent_whose_call_is_on_the_fence_runs_on() {
        let plan = plan(false);
        let (load_at, cap_at) = (vec![at(1000.0)], vec![]);
        // uring about 1% over epoll, its pairs 0.995× and 1.025× in turn: an interval of about
        // ±1.5% around 1.01 that holds 1, an estimate 1.3 standard errors from it. Within ±3%
        // on 12 pairs, but "within noise" would repeat only about 3 runs in 4.
        let mut raw = Vec::new();
        for rep in 0..12 {
            let r = if rep % 2 == 0 { 0.995 } else { 1.025 };
            for (label, cpu) in [("uring", 10.0 * r), ("epoll", 10.0), ("epoll A/A", 10.0)] {
                raw.push(RunResult {
                    label: label.into(),
                    x: 1000.0,
                    rep,
                    cpu_per_req_us: cpu,
                    ..RunResult::default()
                });
            }
        }
        let (w, fewest) = plan.widest(&raw, &load_at, &cap_at).unwrap();
        assert!(fewest == 12 && w < TARGET, "{w}");
        let f = plan.least_firm(&raw, &load_at, &cap_at).unwrap();
        assert!(f > 0.5 && f < FIRM, "{f}");
        assert!(plan.converged(&raw, &load_at, &cap_at).is_empty());
        // The same point with uring 1% over epoll in every pair: a firm call, it stops.
        for r in raw.iter_mut().filter(|r| r.label == "uring") {
            r.cpu_per_req_us = 10.1;
        }
        assert_eq!(plan.least_firm(&raw, &load_at, &cap_at), Some(1.0));
        assert_eq!(plan.converged(&raw, &load_at, &cap_at), [1000.0]);
    }

    #[test]
    fn a_point_within_3_percent_stops_running() {
        let plan = plan(false);
        let (load_at, cap_at) = (vec![at(1000.0)], vec![at(512.0)]);
        let mut raw = Vec::new();
        for rep in 0..10 {
            let wobble = 1.0 + 0.004 * (rep % 3) as f64;
            for (label, cpu) in [("uring", 9.0), ("epoll", 10.0), ("epoll A/A", 10.0)] {
                raw.push(RunResult {
                    label: label.into(),
                    x: 1000.0,
                    rep,
                    cpu_per_req_us: cpu * wobble,
                    ..RunResult::default()
                });
                // Server-bound: far apart from one repetition to the next.
                let rps = if rep % 2 == 0 { 1e5 } else { 1.4e5 };
                let rps = if label == "uring" && rep % 4 == 1 {
                    0.8e5
                } else {
                    rps
                };
                raw.push(RunResult {
                    label: label.into(),
                    x: 512.0,
                    rep,
                    rps: rps
                        * if label == "epoll" {
                            1.0
                        } else {
                            1.0 + 0.1 * (rep % 3) as f64
                        },
                    ..RunResult::default()
                });
            }
        }
        assert_eq!(plan.converged(&raw, &load_at, &cap_at), [1000.0]);
        let (w, fewest) = plan.widest(&raw, &load_at, &cap_at).unwrap();
        assert!(fewest == 10 && w > TARGET, "{w}");
        // Before six pairs there is no 95% interval, however narrow.
        let few: Vec<RunResult> = raw.iter().filter(|r| r.rep < 3).cloned().collect();
        assert!(plan.converged(&few, &load_at, &cap_at).is_empty());
        // Eight pairs give a 95% interval within ±3%, but too few to stop on.
        let eight: Vec<RunResult> = raw.iter().filter(|r| r.rep < 8).cloned().collect();
        assert!(plan.converged(&eight, &load_at, &cap_at).is_empty());
    }

    #[test]
    fn a_repetition_the_host_stole_from_is_left_out_for_every_row_of_its_point() {
        let r = |label: &str, x: f64, rep: usize, steal_pct: f64| RunResult {
            label: label.into(),
            x,
            rep,
            steal_pct,
            ..RunResult::default()
        };
        let mut runs = vec![
            vec![
                r("uring", 1.0, 0, 0.5),
                r("uring", 1.0, 1, 9.0),
                r("uring", 2.0, 1, 1.0),
            ],
            vec![
                r("epoll", 1.0, 0, 0.5),
                r("epoll", 1.0, 1, 2.0),
                r("epoll", 2.0, 1, 7.9),
            ],
        ];
        assert_eq!(leave_out_stolen(&mut runs, 1), 1);
        let left: Vec<(&str, f64, usize)> = runs
            .iter()
            .flatten()
            .map(|r| (r.label.as_str(), r.x, r.rep))
            .collect();
        assert_eq!(
            left,
            [
                ("uring", 1.0, 0),
                ("uring", 2.0, 1),
                ("epoll", 1.0, 0),
                ("epoll", 2.0, 1)
            ]
        );
        assert_eq!(leave_out_stolen(&mut runs, 0), 0);
    }

    #[test]
    fn each_repetition_starts_one_row_later() {
        assert_eq!(rotated(6, 3, 0), [0, 1, 2, 3, 4, 5]);
        assert_eq!(rotated(6, 3, 1), [1, 2, 0, 4, 5, 3]);
        assert_eq!(rotated(6, 3, 5), [2, 0, 1, 5, 3, 4]);
    }

    #[test]
    fn rates_read_plainly() {
        assert_eq!(rate_text(30_400.0), "30k req/s");
        assert_eq!(rate_text(950.0), "950 req/s");
    }
}
