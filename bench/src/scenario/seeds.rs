//! `seeds`: the seed notes' experiment, every request held 100 ms, clients 1 to 10,000.

use anyhow::Result;

use crate::ctx::{Ctx, Scenario};
use crate::plot;
use crate::report::{self, Report};

/// `ringlab-bench seeds`.
pub struct Seeds;

impl Scenario for Seeds {
    fn name(&self) -> &'static str {
        "seeds"
    }

    fn run(&self, ctx: &Ctx, rep: &mut Report) -> Result<()> {
        let q = ctx.o.quick;
        let async_clients: Vec<u32> = if q {
            vec![1, 8, 64, 512]
        } else {
            vec![
                1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 5000, 10000,
            ]
        };
        let mut rows: Vec<(String, Vec<u32>)> = Vec::new();
        let default = [
            "blocking-1",
            "blocking-64",
            "blocking-128",
            "uring",
            "epoll",
        ];
        for b in ctx.backends(&default) {
            let clients = match b.as_str() {
                "blocking-1" => {
                    if q {
                        vec![1, 4, 8]
                    } else {
                        vec![1, 2, 4, 8, 16, 32]
                    }
                }
                l if l.starts_with("blocking") => async_clients
                    .iter()
                    .copied()
                    .filter(|&c| c <= 512)
                    .collect(),
                _ => async_clients.clone(),
            };
            rows.push((b, clients));
        }
        let dur = ctx.duration(5.0);
        let mut specs = Vec::new();
        let max_len = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
        for i in 0..max_len {
            for (b, clients) in &rows {
                if let Some(&c) = clients.get(i) {
                    let client = [
                        "--path",
                        "/delay/100",
                        "--header",
                        "Connection: close",
                        "--conns",
                        &c.to_string(),
                        "--connect-rate",
                        "200000",
                        "--timeout",
                        "60s",
                    ];
                    let mut s = ctx.proto_spec(b, c as f64, "http", &client, dur)?;
                    s.warmup_s = if q { 0.5 } else { 1.5 };
                    specs.push(s);
                }
            }
        }
        let (m, raw) = ctx.go(&specs, ctx.reps(1))?;
        let lines = report::seeds_lines(&m);
        println!("\nseeds: every request held 100 ms (GET /delay/100), a new connection per request, one request in flight per client\n\n{lines}");
        plot::lines(
            &rep.dir.join("seeds-qps.svg"),
            "seed 000: QPS vs clients (each request held 100 ms)",
            "clients",
            "QPS",
            &m,
            |r| r.rps,
        )?;
        plot::lines(
            &rep.dir.join("seeds-latency.svg"),
            "seed 000: mean latency vs clients",
            "clients",
            "mean latency s",
            &m,
            |r| r.mean_us / 1e6,
        )?;
        rep.section(
                "seeds",
                &format!(
                    "Seed 000's experiment: every request held 100 ms by the server (`GET /delay/100`), each client doing one request at a time on a new connection (`Connection: close`), as the seed's clients made independent requests. A blocking worker serves one connection at a time, so requests beyond the pool wait in its queue. The seed's shape, per backend:\n\n```\n{lines}```\n\n![QPS](seeds-qps.svg)\n![latency](seeds-latency.svg)\n"
                ),
                &m,
                &raw,
            );
        Ok(())
    }
}
