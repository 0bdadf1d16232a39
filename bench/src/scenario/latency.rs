//! `latency`: open-loop rate sweep at fractions of the slowest backend's maximum.

use anyhow::{bail, Result};

use crate::ctx::{Ctx, Scenario};
use crate::plot;
use crate::report::{self, Report};
use crate::run::RunResult;

/// `ringlab-bench latency`.
pub struct Latency;

impl Scenario for Latency {
    fn name(&self) -> &'static str {
        "latency"
    }

    fn takes_peers(&self) -> bool {
        true
    }

    fn run(&self, ctx: &Ctx, rep: &mut Report) -> Result<()> {
        let conns = ctx.one_conns(64);
        let backends = ctx.rows(&["uring", "epoll"]);
        let dur = ctx.duration(3.0);
        // 1. The maximum each backend reaches, closed loop.
        let mut specs = Vec::new();
        for b in &backends {
            let client = ["--conns", &conns.to_string()];
            specs.push(ctx.proto_spec(b, 0.0, "echo", &client, ctx.duration(2.0))?);
        }
        let (maxes, _) = ctx.go(&specs, 1)?;
        let max = maxes.iter().map(|r| r.rps).fold(f64::INFINITY, f64::min);
        if !max.is_finite() || max <= 0.0 {
            bail!("could not measure a maximum rate");
        }
        // 2. Open loop at fractions of the slowest backend's maximum, so every backend gets the
        //    same offered load.
        let fracs: &[f64] = if ctx.o.quick {
            &[0.5, 0.9]
        } else {
            &[0.1, 0.3, 0.5, 0.7, 0.8, 0.9]
        };
        let mut specs = Vec::new();
        for &f in fracs {
            let rate = (max * f).round();
            for b in &backends {
                let client = ["--conns", &conns.to_string(), "--rate", &rate.to_string()];
                specs.push(ctx.proto_spec(b, (f * 100.0).round(), "echo", &client, dur)?);
            }
        }
        let (m, raw) = ctx.go(&specs, ctx.reps(3))?;
        let table = report::table(&m, &raw, "% of max", "epoll");
        println!(
            "\nlatency: open loop, {conns} connections, rates as % of {max:.0} req/s\n\n{table}"
        );
        plot::lines(
            &rep.dir.join("latency-p99.svg"),
            "p99 latency vs offered load",
            "% of max rate",
            "p99 µs (CO-corrected)",
            &m,
            |r| r.p99_us,
        )?;
        let hi: Vec<RunResult> = m
            .iter()
            .filter(|r| r.x == (fracs[fracs.len() - 1] * 100.0).round() || r.x == 50.0)
            .cloned()
            .collect();
        plot::percentile_curves(
            &rep.dir.join("latency-percentiles.svg"),
            "latency percentiles (open loop)",
            &hi,
        )?;
        rep.section(
                "latency",
                &format!(
                    "Open loop (`--rate`), {conns} connections, latency from the intended send time (coordinated omission corrected). Rates are fractions of the slowest backend's closed-loop maximum ({max:.0} req/s), so every backend gets the same offered load.\n\n{table}\n![p99](latency-p99.svg)\n![percentiles](latency-percentiles.svg)\n"
                ),
                &m,
                &raw,
            );
        Ok(())
    }
}
