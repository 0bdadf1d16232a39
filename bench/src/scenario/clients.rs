//! `clients`: what a request costs the client. ringlab-client (uring and epoll) and wrk drive
//! the same server at the same rate, and the busy time of the client CPU per request is
//! compared: the figure behind "the client is not the bottleneck".
//!
//! Equal load without a rate knob: wrk has none (Debian ships wrk, not wrk2), so the server is
//! made the limit instead. Its CPU is capped by a cgroup (`--server-share`), every client runs
//! closed loop with the same connections, and each then drives it at the capped server's
//! capacity, the same rate for all (the table shows how close). Client cost is read the same
//! way for every client: the busy ticks of the client CPUs in `/proc/stat` over the run
//! (user, system, irq and softirq: the client and its share of the TCP stack), per request.

use anyhow::{bail, Result};

use crate::cgroup::CpuCap;
use crate::ctx::{Ctx, Scenario};
use crate::peers;
use crate::procs::have;
use crate::report::Report;
use crate::run::{self, RunResult, RunSpec};
use crate::verdict::{self, Metric};

/// `ringlab-bench clients`.
pub struct Clients;

/// The figure compared.
pub const CLIENT_CPU_PER_REQ: Metric = Metric {
    key: "client_cpu_us_per_request",
    name: "client CPU/request",
    get: |r| r.client_cpu_per_req_us,
};

/// The row every client is compared against, and its second instance.
const BASE: &str = "wrk";
/// ringlab-client should carry this many times wrk's load per core.
const GOAL: f64 = 1.5;

fn client_row(io: &str) -> String {
    format!("ringlab-client {io}")
}

impl Scenario for Clients {
    fn name(&self) -> &'static str {
        "clients"
    }

    fn run(&self, ctx: &Ctx, rep: &mut Report) -> Result<()> {
        if ctx.run.netns.is_some() {
            bail!("clients measures the client CPU of this machine: not run under --netns");
        }
        let conns = ctx.one_conns(64);
        let dur = ctx.duration(3.0);
        let reps = ctx.reps(6);
        let share = ctx.o.server_share;
        let mut notes = String::new();
        let fleet = ctx.run.fleet.as_deref();
        let cap = match fleet.map_or_else(|| CpuCap::create(share).map(Some), |_| Ok(None)) {
            Ok(c) => c,
            Err(e) => {
                let line = format!(
                    "the server's CPU could not be capped ({e:#}): every client drives it as fast as it can, so the rows are not at one rate and their costs per request are not at equal load"
                );
                eprintln!("clients: {line}");
                notes += &format!("\n- {line}\n");
                None
            }
        };
        let group = cap.as_ref().map(|c| c.dir.clone());
        // The server: the epoll twin over HTTP, the same for every row.
        let mut specs: Vec<RunSpec> = Vec::new();
        for io in ["uring", "epoll"] {
            let mut s = ctx.proto_spec(
                "epoll",
                conns as f64,
                "http",
                &["--conns", &conns.to_string()],
                dur,
            )?;
            set_client_io(&mut s.client_args, io);
            s.label = client_row(io);
            s.cgroup = group.clone();
            specs.push(s);
        }
        let server_args = specs[0].server_args.clone();
        // Fleet mode: wrk on every client host (and whether each has taskset).
        let (wrk, taskset) = match fleet {
            None => (
                have("wrk").then_some(()).ok_or_else(|| {
                    "wrk is not installed (Debian: `apt-get install wrk`)".to_string()
                }),
                Vec::new(),
            ),
            Some(f) => match peers::fleet_wrk_hosts(f) {
                Ok(t) => (Ok(()), t),
                Err(e) if crate::fleet::is_host_failure(&e) => return Err(e),
                Err(e) => (Err(format!("{e:#}")), Vec::new()),
            },
        };
        if let Err(why) = &wrk {
            let line = format!("{why}: the ringlab-client rows are measured without the baseline");
            eprintln!("clients: {line}");
            notes += &format!("\n- {line}\n");
        }
        let wrk = wrk.is_ok();
        // Fleet mode: how the first capping went on the server host.
        let mut capped: Option<std::result::Result<String, String>> = None;
        let mut raw: Vec<RunResult> = Vec::new();
        for r in 0..reps {
            eprintln!("  clients: repetition {}/{reps}", r + 1);
            if let Some(f) = fleet {
                for (spec, what) in specs.iter().map(|s| (s, None)).chain(
                    [BASE.to_string(), verdict::aa_of(BASE)]
                        .into_iter()
                        .filter(|_| wrk)
                        .map(|l| (&specs[0], Some(l))),
                ) {
                    let label = what.clone().unwrap_or_else(|| spec.label.clone());
                    let wrk_as = what.as_deref().map(|l| (l, &taskset[..], conns));
                    match fleet_one(ctx, f, spec, share, wrk_as, &mut capped) {
                        Ok(mut x) => {
                            x.label = label;
                            x.rep = r;
                            raw.push(x);
                        }
                        Err(e) if crate::fleet::is_host_failure(&e) => return Err(e),
                        Err(e) => eprintln!("  clients: {label} failed: {e:#}"),
                    }
                }
                continue;
            }
            let (_, runs) = ctx.go(&specs, 1)?;
            raw.extend(runs.into_iter().map(|mut x| {
                x.rep = r;
                x
            }));
            if wrk {
                for label in [BASE.to_string(), verdict::aa_of(BASE)] {
                    match peers::wrk_run(ctx, &server_args, conns, dur, group.as_deref()) {
                        Ok(mut x) => {
                            x.label = label;
                            x.rep = r;
                            raw.push(x);
                        }
                        Err(e) => eprintln!("  clients: {label} failed: {e:#}"),
                    }
                }
            }
        }
        drop(cap);
        if let Some(Err(why)) = &capped {
            let line = format!(
                "the server's CPU could not be capped ({why}): every client drives it as fast as it can, so the rows are not at one rate and their costs per request are not at equal load"
            );
            eprintln!("clients: {line}");
            notes += &format!("\n- {line}\n");
        }
        let capped = match fleet {
            None => group.is_some(),
            Some(_) => matches!(capped, Some(Ok(_))),
        };
        let labels: Vec<String> = ["uring", "epoll"]
            .iter()
            .map(|io| client_row(io))
            .chain(
                wrk.then(|| [BASE.to_string(), verdict::aa_of(BASE)])
                    .into_iter()
                    .flatten(),
            )
            .collect();
        let m: Vec<RunResult> = labels
            .iter()
            .filter_map(|l| {
                let runs: Vec<RunResult> = raw.iter().filter(|r| &r.label == l).cloned().collect();
                (!runs.is_empty()).then(|| run::combine(&runs))
            })
            .collect();
        let cands: Vec<String> = if wrk {
            ["uring", "epoll"].iter().map(|io| client_row(io)).collect()
        } else {
            Vec::new()
        };
        let vs = judge(
            &raw,
            &cands,
            conns,
            &if capped {
                format!("server capped at {share} CPU")
            } else {
                "server uncapped".to_string()
            },
        );
        let load_lines = load_per_core(&vs, &m);
        rep.add_verdicts("clients", &vs, &load_lines);
        let table = table(&m);
        let on = fleet.map_or(String::new(), |f| {
            format!(" on the server host {}", f.server.ssh.dest)
        });
        let cap_text = if capped {
            format!("the server (ringlab-server --io epoll --proto http{on}) capped at {share} of a CPU by a cgroup, so that it is the limit and every client drives it at the same rate")
        } else {
            "the server uncapped (see the note below)".to_string()
        };
        let cpu_where = match fleet {
            None => format!("the client CPU ({})", ctx.o.client_cores),
            Some(f) => format!(
                "the client CPUs ({}) of every client host ({}), summed",
                ctx.o.client_cores,
                f.clients
                    .iter()
                    .map(|h| h.ssh.dest.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let text = format!(
            "What a request costs the client: ringlab-client (`--io uring`, `--io epoll`) and wrk (`wrk -t1`; `wrk A/A` is a second wrk run in the same repetition, the noise floor) against the same server, HTTP/1.1 `GET /`, {conns} keep-alive connections, closed loop, {cap_text}. Client CPU is the busy time of {cpu_where} in /proc/stat over the measured window (user, system, irq, softirq: the client and the TCP work done on its CPU), per request; load per core is 10⁶ ÷ that. {reps} interleaved repetitions of {dur:.1} s (wrk: its whole run, no warm-up); medians, ratios paired with their 95% interval. The goal: ringlab-client carries at least {GOAL}× wrk's load per core.\n\n{table}\n{load_lines}{notes}",
        );
        println!("\nclients: what a request costs the client\n\n{table}\n{load_lines}{notes}");
        rep.section("clients", &text, &m, &raw);
        Ok(())
    }
}

/// One run on the fleet: a fresh server on the server host, capped at `share` there (how the
/// first capping went is kept in `capped`), the busy time of the client CPUs read on every
/// client host over the window; ringlab-client as `spec` says, or, with `wrk` = (label,
/// taskset per host, connections), `wrk -t1` from every client host.
fn fleet_one(
    ctx: &Ctx,
    f: &crate::fleet::Fleet,
    spec: &RunSpec,
    share: f64,
    wrk: Option<(&str, &[bool], u32)>,
    capped: &mut Option<std::result::Result<String, String>>,
) -> Result<RunResult> {
    f.guard(|| {
        let limit = (spec.warmup_s + spec.duration_s + 60.0).ceil() as u64;
        let mut s = f.session(&ctx.run.tmp, limit)?;
        s.server(&spec.server_args)?;
        let c = s.cap_server(share)?;
        capped.get_or_insert(c);
        s.watch_client_cpus(&ctx.o.client_cores);
        let r = match wrk {
            None => s.clients(spec)?,
            Some((label, taskset, conns)) => {
                let secs = spec.duration_s.ceil().max(1.0) as u64;
                peers::fleet_wrk_in(ctx, &mut s, label, conns, secs, taskset)?
            }
        };
        s.finish()?;
        Ok(r)
    })
}

/// The verdicts of every row in `cands` against wrk at `conns` (`load`: how the rate was set),
/// client CPU per request and req/s, each with wrk's twin as its A/A control where it ran.
fn judge(raw: &[RunResult], cands: &[String], conns: u32, load: &str) -> Vec<verdict::Verdict> {
    let pairs: Vec<verdict::Pair> = cands
        .iter()
        .map(|c| verdict::Pair {
            candidate: c.clone(),
            baseline: BASE.into(),
            x: conns as f64,
        })
        .collect();
    verdict::judge_all(
        raw,
        "clients",
        &pairs,
        |_| (conns, load.to_string()),
        |p, m| verdict::twin_control(raw, &p.candidate, &p.baseline, p.x, m),
        &[CLIENT_CPU_PER_REQ, verdict::RPS],
    )
}

/// Replace the `--io` value in client arguments (the context puts the bench's own first).
fn set_client_io(args: &mut Vec<String>, io: &str) {
    match args.iter().position(|a| a == "--io") {
        Some(i) if i + 1 < args.len() => args[i + 1] = io.to_string(),
        _ => args.extend(["--io".to_string(), io.to_string()]),
    }
}

/// The client CPU verdicts as load per core against wrk's, with the goal, and the rates the
/// rows ran at (medians `m`): the cap makes them close, not equal, and a client at a higher
/// rate batches more.
fn load_per_core(vs: &[verdict::Verdict], m: &[RunResult]) -> String {
    let rate = |l: &str| m.iter().find(|r| r.label == l).map_or(0.0, |r| r.rps);
    let mut out = String::new();
    for v in vs.iter().filter(|v| v.metric == CLIENT_CPU_PER_REQ.key) {
        if v.ratio <= 0.0 || v.ci95[0] <= 0.0 {
            continue;
        }
        // Load per core is the inverse of cost per request: the interval flips.
        let (r, lo, hi) = (1.0 / v.ratio, 1.0 / v.ci95[1], 1.0 / v.ci95[0]);
        let goal = if lo >= GOAL {
            "goal met"
        } else if hi < GOAL {
            "goal not met"
        } else {
            "the goal inside the interval"
        };
        out += &format!(
            "- {} carries {r:.2}× wrk's load per client core (95% CI {lo:.2}–{hi:.2}, {} pairs): {goal} (≥ {GOAL}×); at {:.0} req/s against wrk's {:.0}.\n",
            v.candidate,
            v.reps,
            rate(&v.candidate),
            rate(&v.baseline)
        );
    }
    out
}

fn table(m: &[RunResult]) -> String {
    let mut t = String::from(
        "| client | req/s | client CPU µs/req | load per client core (req/s) | server CPU µs/req | p99 µs | errors |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in m {
        let per_core = if r.client_cpu_per_req_us > 0.0 {
            format!("{:.0}", 1e6 / r.client_cpu_per_req_us)
        } else {
            "-".into()
        };
        t += &format!(
            "| {} | {:.0} | {:.2} | {per_core} | {:.2} | {:.0} | {:.0} |\n",
            r.label, r.rps, r.client_cpu_per_req_us, r.cpu_per_req_us, r.p99_us, r.errors
        );
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(label: &str, rep: usize, client_us: f64) -> RunResult {
        RunResult {
            label: label.into(),
            x: 64.0,
            rep,
            rps: 40_000.0,
            client_cpu_per_req_us: client_us,
            ..RunResult::default()
        }
    }

    #[test]
    fn the_client_io_is_replaced_not_repeated() {
        let mut a: Vec<String> = ["--io", "uring", "--conns", "64"]
            .map(String::from)
            .to_vec();
        set_client_io(&mut a, "epoll");
        assert_eq!(a, ["--io", "epoll", "--conns", "64"]);
        let mut b: Vec<String> = vec!["--conns".into(), "64".into()];
        set_client_io(&mut b, "uring");
        assert_eq!(b, ["--conns", "64", "--io", "uring"]);
    }

    #[test]
    fn load_per_core_is_the_inverse_of_cost_with_its_interval_flipped() {
        // ringlab-client at 4 µs, wrk at 8 µs (and its twin at 8): twice wrk's load per core.
        let mut raw = Vec::new();
        for r in 0..8 {
            let wobble = 1.0 + 0.01 * (r % 3) as f64;
            raw.push(run("ringlab-client uring", r, 4.0 * wobble));
            raw.push(run("wrk", r, 8.0));
            raw.push(run("wrk A/A", r, 8.0 * (1.0 + 0.005 * (r % 2) as f64)));
        }
        let vs: Vec<verdict::Verdict> = judge(&raw, &["ringlab-client uring".into()], 64, "capped")
            .into_iter()
            .filter(|v| v.metric == CLIENT_CPU_PER_REQ.key)
            .collect();
        assert_eq!(vs.len(), 1);
        assert!(vs[0].significant, "{}", vs[0].line());
        let m: Vec<RunResult> = ["ringlab-client uring", "wrk"]
            .iter()
            .map(|l| run(l, 0, 1.0))
            .collect();
        let text = load_per_core(&vs, &m);
        assert!(text.contains("ringlab-client uring carries 1.9"), "{text}");
        assert!(
            text.contains("at 40000 req/s against wrk's 40000"),
            "{text}"
        );
        assert!(text.contains("goal met"), "{text}");
        assert!(vs[0].ci95[1] < 1.0 / GOAL, "{}", vs[0].line());
    }

    #[test]
    fn a_cost_above_the_goal_says_so() {
        let mut raw = Vec::new();
        for r in 0..8 {
            raw.push(run("ringlab-client epoll", r, 7.0 + 0.05 * (r % 3) as f64));
            raw.push(run("wrk", r, 8.0));
        }
        let vs = judge(&raw, &["ringlab-client epoll".into()], 64, "capped");
        let text = load_per_core(&vs, &[]);
        assert!(text.contains("goal not met"), "{text}");
    }
}
