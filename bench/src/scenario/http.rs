//! `http`: HTTP `GET /` with ringlab-client, wrk (when installed) and nginx as a reference.

use anyhow::Result;

use crate::ctx::{Ctx, Scenario};
use crate::peers;
use crate::report::{self, Report};
use crate::verdict;

/// `ringlab-bench http`.
pub struct Http;

impl Scenario for Http {
    fn name(&self) -> &'static str {
        "http"
    }

    fn run(&self, ctx: &Ctx, rep: &mut Report) -> Result<()> {
        let conns =
            ctx.o
                .conns
                .clone()
                .unwrap_or(if ctx.o.quick { vec![64] } else { vec![64, 256] });
        let backends = ctx.backends(&["uring", "epoll"]);
        let dur = ctx.duration(3.0);
        let mut specs = Vec::new();
        for &c in &conns {
            for b in &backends {
                let client = ["--conns", &c.to_string()];
                specs.push(ctx.proto_spec(b, c as f64, "http", &client, dur)?);
            }
        }
        // Six pairs: the fewest that give a 95% interval.
        let reps = ctx.reps(6);
        let specs = crate::ctx::with_aa(specs, reps, |l| l == "epoll");
        let (mut m, mut raw) = ctx.go(&specs, reps)?;
        let mut notes = String::new();
        match peers::wrk_rows(ctx, &backends, &conns, dur, reps) {
            Ok((wm, wraw)) => {
                m.extend(wm);
                raw.extend(wraw);
            }
            Err(e) if crate::fleet::is_host_failure(&e) => return Err(e),
            Err(e) => notes += &format!("\n- wrk rows skipped: {e:#}\n"),
        }
        match peers::nginx_rows(ctx, &conns, dur, reps) {
            Ok((nm, nraw)) => {
                m.extend(nm);
                raw.extend(nraw);
            }
            Err(e) if crate::fleet::is_host_failure(&e) => return Err(e),
            Err(e) => notes += &format!("\n- nginx reference row skipped: {e:#}\n"),
        }
        let table = report::table(&m, &raw, "conns", "epoll");
        let pairs = verdict::pairs_of(&raw, |l| {
            (l != "nginx" && !verdict::is_aa(l)).then(|| verdict::same_row_of(l, "epoll"))
        });
        let vs = verdict::judge_all(
            &raw,
            "http",
            &pairs,
            |x| (x as u32, "closed loop".into()),
            |p, m| verdict::twin_control(&raw, &p.candidate, &p.baseline, p.x, m),
            &[verdict::CPU_PER_REQ, verdict::RPS],
        );
        rep.add_verdicts("http", &vs, "");
        println!("\nhttp: GET / (Hello, World!), keep-alive\n\n{table}{notes}");
        rep.section(
                "http",
                &format!("HTTP/1.1 `GET /` → `Hello, World!`, keep-alive, one request in flight per connection, {reps} interleaved repetitions; `epoll A/A` is a second epoll server in the same runs (the noise floor; the wrk rows have none). Rows `X (wrk)` are wrk -t1 against backend X (its CPU per request measured the same way); `nginx` is nginx with one pinned worker serving the same response, driven by ringlab-client.\n\n{table}{notes}"),
                &m,
                &raw,
            );
        Ok(())
    }
}
