//! `pinning`: pinned, unpinned, client and server on one CPU; SO_REUSEPORT vs a shared listener.

use anyhow::Result;

use crate::ctx::{Ctx, Scenario};
use crate::report::Report;
use crate::run::RunResult;
use crate::verdict;

/// `ringlab-bench pinning`.
pub struct Pinning;

impl Scenario for Pinning {
    fn name(&self) -> &'static str {
        "pinning"
    }

    fn run(&self, ctx: &Ctx, rep: &mut Report) -> Result<()> {
        let conns = ctx.one_conns(64);
        let backends = ctx.backends(&["uring", "epoll"]);
        let dur = ctx.duration(2.0);
        let (s, c) = (ctx.o.server_cores.clone(), ctx.o.client_cores.clone());
        let all = format!("{s},{c}");
        let variants: Vec<(&str, Vec<String>, Vec<String>)> = vec![
            ("pinned", vec![], vec![]),
            ("unpinned", vec!["--no-pin".into()], vec!["--no-pin".into()]),
            ("same-cpu", vec![], vec!["--cores".into(), s.clone()]),
            (
                "reuseport-2",
                vec![
                    "--cores".into(),
                    all.clone(),
                    "--accept".into(),
                    "reuseport".into(),
                ],
                vec![],
            ),
            (
                "shared-accept-2",
                vec![
                    "--cores".into(),
                    all.clone(),
                    "--accept".into(),
                    "shared".into(),
                ],
                vec![],
            ),
        ];
        let mut specs = Vec::new();
        for (vi, (v, sx, cx)) in variants.iter().enumerate() {
            for b in &backends {
                let conns = conns.to_string();
                let client: Vec<&str> = ["--conns", conns.as_str()]
                    .into_iter()
                    .chain(cx.iter().map(String::as_str))
                    .collect();
                let mut sp = ctx.proto_spec(b, vi as f64, "echo", &client, dur)?;
                sp.label = format!("{b} {v}");
                sp.server_args.extend(sx.iter().cloned());
                // A variant's --cores replaces the default one (clap takes each flag once).
                if let Some(i) = sp.client_args.iter().position(|a| a == "--cores") {
                    sp.client_cores = sp.client_args[i + 1].clone();
                    sp.client_args.drain(i..i + 2);
                }
                let positions: Vec<usize> = sp
                    .server_args
                    .iter()
                    .enumerate()
                    .filter(|(_, a)| *a == "--cores")
                    .map(|(i, _)| i)
                    .collect();
                if let [first, .., last] = positions[..] {
                    sp.server_args[first + 1] = sp.server_args[last + 1].clone();
                    sp.server_args.drain(last..last + 2);
                }
                specs.push(sp);
            }
        }
        // Six pairs: the fewest that give a 95% interval.
        let reps = ctx.reps(6);
        let specs = crate::ctx::with_aa(specs, reps, |l| l.starts_with("epoll "));
        let (m, raw) = ctx.go(&specs, reps)?;
        let ci = |r: &RunResult, m: verdict::Metric| {
            let base = match r.label.strip_suffix(" A/A") {
                Some(b) => b.to_string(),
                None => verdict::same_row_of(&r.label, "epoll"),
            };
            if base == r.label {
                String::new()
            } else {
                let ctl = verdict::twin_control(&raw, &r.label, &base, r.x, m);
                verdict::cell(
                    verdict::interval(&raw, &r.label, &base, r.x, m).as_ref(),
                    ctl.as_ref(),
                )
            }
        };
        let mut t = String::from("| variant | req/s | vs epoll (95% CI) | p99 µs | server CPU µs/req | vs epoll (95% CI) | ctx switches/req | note |\n|---|---:|---|---:|---:|---|---:|---|\n");
        for r in &m {
            t += &format!(
                "| {} | {:.0} | {} | {:.1} | {:.2} | {} | {:.3} | {} |\n",
                r.label,
                r.rps,
                ci(r, verdict::RPS),
                r.p99_us,
                r.cpu_per_req_us,
                ci(r, verdict::CPU_PER_REQ),
                r.ctx_switches_per_req,
                if r.client_saturated {
                    "client saturated"
                } else {
                    ""
                }
            );
        }
        let pairs = verdict::pairs_of(&raw, |l| {
            (!verdict::is_aa(l)).then(|| verdict::same_row_of(l, "epoll"))
        });
        let names: Vec<&str> = variants.iter().map(|v| v.0).collect();
        let vs = verdict::judge_all(
            &raw,
            "pinning",
            &pairs,
            |x| (conns, names.get(x as usize).unwrap_or(&"").to_string()),
            |p, m| verdict::twin_control(&raw, &p.candidate, &p.baseline, p.x, m),
            &[verdict::CPU_PER_REQ, verdict::RPS],
        );
        rep.add_verdicts("pinning", &vs, "");
        println!("\npinning: echo 64 B, {conns} connections\n\n{t}");
        rep.section(
                "pinning",
                &format!("Echo 64 B, {conns} connections. `pinned`: server on CPU {s}, client on CPU {c}; `unpinned`: the same threads, no affinity; `same-cpu`: client and server share CPU {s}; `reuseport-2` / `shared-accept-2`: two server loops (CPUs {all}) with a listener each or one shared listener, the client still on CPU {c}. Closed loop, {reps} interleaved repetitions; each `epoll X A/A` row is a second epoll server of variant X in the same runs (the noise floor of that variant).\n\n{t}"),
                &m,
                &raw,
            );
        Ok(())
    }
}
