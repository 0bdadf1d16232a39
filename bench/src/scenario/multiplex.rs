//! `multiplex`: seed 004's two claims about the readiness interfaces, measured. "select and poll
//! slow down linearly as connections grow, epoll does not": server CPU per request for 16 active
//! connections at a fixed rate while idle connections are held beside them (0, 100, 1,000,
//! 10,000; select only below its `FD_SETSIZE` of 1024 descriptors). "With few, very active
//! connections select and poll beat epoll": 1, 2, 4 and 8 connections in a closed loop.
//! select, poll, epoll and uring run the same loop and session code (`--io select|poll|epoll`
//! share one readiness loop); every verdict is against epoll with an epoll A/A floor.

use anyhow::{bail, Result};

use crate::ctx::{backend_args, Ctx, Scenario};
use crate::hold::HolderIo;
use crate::plot;
use crate::report::{self, Report};
use crate::run::{self, drive, RunResult, Target};
use crate::scenario::c10k::{
    holders_wait_s, start_holders, start_remote_holders, stop_holders, Limits, SERVER_ARGS,
};
use crate::verdict::{self, Pair, CPU_PER_REQ, RPS};

/// `ringlab-bench multiplex`.
pub struct Multiplex;

/// Active connections beside the idle ones.
const ACTIVE: u32 = 16;
/// Their offered load: open loop, well below what any of the four serves on one CPU.
const RATE: u32 = 10_000;
/// The most idle connections a select server is given: its descriptors must stay below
/// FD_SETSIZE (1024) with the active ones, the listener and its own.
const SELECT_MAX_IDLE: u64 = 900;
const BASE: &str = "epoll";
const AA: &str = "epoll A/A";

impl Scenario for Multiplex {
    fn name(&self) -> &'static str {
        "multiplex"
    }

    fn takes_peers(&self) -> bool {
        true
    }

    fn fleet_needs_bench(&self) -> bool {
        true
    }

    fn run(&self, ctx: &Ctx, rep: &mut Report) -> Result<()> {
        let backends = ctx.rows(&["select", "poll", "epoll", "uring"]);
        if !backends.iter().any(|b| b == BASE) {
            bail!("multiplex measures against epoll: include it in --backends");
        }
        let mut rows = backends;
        rows.push(AA.into());
        let idle: Vec<u64> = match &ctx.o.conns {
            Some(c) => c.iter().map(|&x| u64::from(x)).collect(),
            None if ctx.o.quick => vec![0, 1000],
            None => vec![0, 100, 1000, 10000],
        };
        let reps = ctx.reps(5);
        let dur = ctx.duration(2.0);
        let lim = Limits::read_and_raise();
        let client_cpu: Option<usize> = ctx
            .o
            .client_cores
            .split(',')
            .next()
            .and_then(|c| c.parse().ok());

        // 1. Idle connections grow, 16 active ones at a fixed rate.
        let mut runs: Vec<Vec<RunResult>> = vec![Vec::new(); idle.len() * rows.len()];
        let mut skipped = Vec::new();
        for r in 0..reps {
            for (i, &n) in idle.iter().enumerate() {
                for k in 0..rows.len() {
                    // Each repetition starts one row later.
                    let j = (k + r) % rows.len();
                    let row = &rows[j];
                    let backend = if row == AA { BASE } else { row.as_str() };
                    if backend == "select" && n > SELECT_MAX_IDLE {
                        if r == 0 {
                            skipped.push(format!(
                                "select with {n} idle connections: its descriptors would pass FD_SETSIZE (1024)"
                            ));
                        }
                        continue;
                    }
                    if ctx.run.dropped.has(row) {
                        continue;
                    }
                    eprintln!("  rep {}/{reps} {n} idle {row}", r + 1);
                    match idle_run(ctx, row, backend, n, &lim, dur, client_cpu) {
                        Ok(mut x) => {
                            x.rep = r;
                            runs[i * rows.len() + j].push(x);
                        }
                        Err(e) if crate::fleet::is_host_failure(&e) => return Err(e),
                        Err(e) if ctx.peer(row).is_some() => {
                            ctx.run.dropped.drop_row(row, &format!("{e:#}"))
                        }
                        Err(e) => {
                            eprintln!("ringlab-bench: multiplex {row} with {n} idle: {e:#}")
                        }
                    }
                }
            }
        }
        let (idle_m, idle_raw) = run::medians_and_raw(runs);
        if idle_m.is_empty() {
            bail!("every multiplex run failed (see the messages above)");
        }
        let floor = |p: &Pair, m| verdict::twin_control(&idle_raw, &p.candidate, BASE, p.x, m);
        let pairs = verdict::pairs_of(&idle_raw, against_epoll);
        let mut vs = verdict::judge_all(
            &idle_raw,
            "multiplex",
            &pairs,
            |x| (ACTIVE, format!("{x} idle, {RATE} req/s")),
            floor,
            &[CPU_PER_REQ],
        );
        let idle_table = report::table(&idle_m, &idle_raw, "idle conns", BASE);

        // 2. A few very active connections, closed loop, nothing idle.
        let few: &[u32] = if ctx.o.quick { &[1, 8] } else { &[1, 2, 4, 8] };
        let mut specs = Vec::new();
        for &c in few {
            for row in &rows {
                let backend = if row == AA { BASE } else { row.as_str() };
                let client = ["--size", "64", "--conns", &c.to_string()];
                let mut s = ctx.proto_spec(backend, f64::from(c), "echo", &client, dur)?;
                s.label = row.clone();
                specs.push(s);
            }
        }
        let (few_m, few_raw) = ctx.go(&specs, reps)?;
        let floor = |p: &Pair, m| verdict::twin_control(&few_raw, &p.candidate, BASE, p.x, m);
        let pairs = verdict::pairs_of(&few_raw, against_epoll);
        vs.extend(verdict::judge_all(
            &few_raw,
            "multiplex",
            &pairs,
            |x| (x as u32, "closed loop".into()),
            floor,
            &[CPU_PER_REQ, RPS],
        ));
        let few_table = report::table(&few_m, &few_raw, "conns", BASE);

        let notes = skipped.join("\n");
        rep.add_verdicts("multiplex", &vs, &notes);
        println!(
            "\nmultiplex: {ACTIVE} active connections at {RATE} req/s beside idle ones\n\n{idle_table}\nmultiplex: a few very active connections, closed loop\n\n{few_table}\n{notes}"
        );
        plot::lines(
            &rep.dir.join("multiplex-idle.svg"),
            "server CPU per request as idle connections grow",
            "idle connections",
            "µs CPU / request",
            &idle_m,
            |r| r.cpu_per_req_us,
        )?;
        plot::lines(
            &rep.dir.join("multiplex-few.svg"),
            "server CPU per request, few very active connections",
            "connections (closed loop)",
            "µs CPU / request",
            &few_m,
            |r| r.cpu_per_req_us,
        )?;
        let text = format!(
            "Seed 004's claims about select, poll and epoll (and uring beside them), each backend on one CPU, the same loop and session code; echo 64 B, {reps} interleaved repetitions, verdicts against epoll with an epoll A/A floor.\n\n**Idle connections grow**: {ACTIVE} active connections at {RATE} req/s (open loop) while idle connections are held open beside them by holder processes; server CPU per request over the measured window.\n\n{idle_table}\n{}![idle](multiplex-idle.svg)\n\n**A few very active connections**: closed loop, nothing idle.\n\n{few_table}\n![few](multiplex-few.svg)\n",
            if notes.is_empty() {
                String::new()
            } else {
                format!("{notes}\n\n")
            }
        );
        let mut all_m = idle_m;
        all_m.extend(few_m);
        let mut all_raw = idle_raw;
        all_raw.extend(few_raw);
        rep.section("multiplex", &text, &all_m, &all_raw);
        Ok(())
    }
}

/// Every row but epoll and its A/A control is measured against epoll.
fn against_epoll(label: &str) -> Option<String> {
    (label != BASE && label != AA).then(|| BASE.to_string())
}

/// One run: a fresh `backend` server, `n` idle connections held, the active ones measured.
fn idle_run(
    ctx: &Ctx,
    label: &str,
    backend: &str,
    n: u64,
    lim: &Limits,
    dur: f64,
    client_cpu: Option<usize>,
) -> Result<RunResult> {
    let server = if ctx.peer(backend).is_some() {
        Vec::new()
    } else {
        [
            backend_args(backend)?,
            SERVER_ARGS.map(String::from).to_vec(),
        ]
        .concat()
    };
    let spec = ctx.spec(
        label,
        n as f64,
        server,
        ["--proto", "echo", "--size", "64", "--conns"]
            .into_iter()
            .map(String::from)
            .chain([ACTIVE.to_string(), "--rate".into(), RATE.to_string()])
            .collect(),
        dur,
    );
    if let Some(f) = &ctx.run.fleet {
        // The server on its host, the holders on the client hosts beside the clients.
        return f.guard(|| {
            let wait = if n > 0 { holders_wait_s(n) } else { 0 };
            let limit = (spec.warmup_s + spec.duration_s) as u64 + wait + 40;
            let mut s = f.session(&ctx.run.tmp, limit)?;
            s.server(&spec.server_args)?;
            if n > 0 {
                start_remote_holders(&mut s, n, HolderIo::Fds)?;
            }
            let r = s.clients(&spec)?;
            s.finish()?;
            Ok(r)
        });
    }
    let target = Target::start(&ctx.bins, &spec, &ctx.run)?;
    let (holders, failed) = if n > 0 {
        start_holders(target.addr(), n, lim, HolderIo::Fds, client_cpu, false)?
    } else {
        (Vec::new(), Vec::new())
    };
    if !failed.is_empty() {
        let errs = stop_holders(holders, failed);
        let _ = target.stop();
        bail!("a holder failed: {}", errs.join("; "));
    }
    let r = drive(&ctx.bins, target.addr(), target.pids(), &spec, &ctx.run);
    let errs = stop_holders(holders, Vec::new());
    let cmd = target.cmd(&ctx.bins, &spec);
    let stopped = target.stop();
    stopped?;
    let mut r = r?;
    run::checked(&spec, &r)?;
    if !errs.is_empty() {
        bail!("a holder failed: {}", errs.join("; "));
    }
    r.server_cmd = cmd;
    Ok(r)
}
