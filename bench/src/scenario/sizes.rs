//! `sizes`: echo with payloads from 64 B to 64 KiB.

use anyhow::Result;

use crate::ctx::{Ctx, Scenario};
use crate::plot;
use crate::report::{self, Report};
use crate::verdict;

/// `ringlab-bench sizes`.
pub struct Sizes;

impl Scenario for Sizes {
    fn name(&self) -> &'static str {
        "sizes"
    }

    fn takes_peers(&self) -> bool {
        true
    }

    fn run(&self, ctx: &Ctx, rep: &mut Report) -> Result<()> {
        let conns = ctx.one_conns(64);
        let backends = ctx.rows(&["uring", "epoll"]);
        let sizes: &[usize] = if ctx.o.quick {
            &[64, 4096, 65536]
        } else {
            &[64, 512, 4096, 16384, 65536]
        };
        let dur = ctx.duration(2.0);
        let mut specs = Vec::new();
        for &s in sizes {
            for b in &backends {
                let client = ["--size", &s.to_string(), "--conns", &conns.to_string()];
                specs.push(ctx.proto_spec(b, s as f64, "echo", &client, dur)?);
            }
        }
        // Six pairs: the fewest that give a 95% interval.
        let reps = ctx.reps(6);
        let specs = crate::ctx::with_aa(specs, reps, |l| l == "epoll");
        let (m, raw) = ctx.go(&specs, reps)?;
        let table = report::table(&m, &raw, "bytes", "epoll");
        let pairs = verdict::pairs_of(&raw, |l| {
            (!verdict::is_aa(l)).then(|| verdict::same_row_of(l, "epoll"))
        });
        let vs = verdict::judge_all(
            &raw,
            "sizes",
            &pairs,
            |x| (conns, format!("{x} B closed loop")),
            |p, m| verdict::twin_control(&raw, &p.candidate, &p.baseline, p.x, m),
            &[verdict::CPU_PER_REQ, verdict::RPS],
        );
        rep.add_verdicts("sizes", &vs, "");
        println!("\nsizes: echo, {conns} connections\n\n{table}");
        plot::lines(
            &rep.dir.join("sizes-throughput.svg"),
            "throughput vs payload",
            "payload bytes",
            "requests/s",
            &m,
            |r| r.rps,
        )?;
        plot::lines(
            &rep.dir.join("sizes-bandwidth.svg"),
            "echo bandwidth vs payload",
            "payload bytes",
            "MB/s each way",
            &m,
            |r| r.rps * r.x / 1e6,
        )?;
        rep.section(
                "sizes",
                &format!("Echo with payloads from 64 B to 64 KiB, {conns} connections, closed loop; {reps} interleaved repetitions, `epoll A/A` a second epoll server in the same runs (the noise floor).\n\n{table}\n![throughput](sizes-throughput.svg)\n![bandwidth](sizes-bandwidth.svg)\n"),
                &m,
                &raw,
            );
        Ok(())
    }
}
