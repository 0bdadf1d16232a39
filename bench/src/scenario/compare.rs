//! `compare`: echo 64 B over 1, 16, 128, 512 connections, every backend side by side.

use anyhow::Result;

use crate::ctx::{Ctx, Scenario};
use crate::plot;
use crate::report::{self, Report};
use crate::run::RunResult;

/// `ringlab-bench compare`.
pub struct Compare;

impl Scenario for Compare {
    fn name(&self) -> &'static str {
        "compare"
    }

    fn run(&self, ctx: &Ctx, rep: &mut Report) -> Result<()> {
        let conns = ctx.o.conns.clone().unwrap_or(vec![1, 16, 128, 512]);
        let backends = ctx.backends(&["uring", "epoll"]);
        echo_sweep(
            ctx,
            rep,
            "compare: echo 64 B",
            "Closed loop, one request in flight per connection, echo of 64-byte messages.",
            &conns,
            64,
            &backends,
        )?;
        Ok(())
    }
}

fn echo_sweep(
    ctx: &Ctx,
    rep: &mut Report,
    title: &str,
    blurb: &str,
    conns: &[u32],
    size: usize,
    backends: &[String],
) -> Result<Vec<RunResult>> {
    let dur = ctx.duration(2.0);
    let mut specs = Vec::new();
    for &c in conns {
        for b in backends {
            let client = ["--size", &size.to_string(), "--conns", &c.to_string()];
            specs.push(ctx.proto_spec(b, c as f64, "echo", &client, dur)?);
        }
    }
    let (m, raw) = ctx.go(&specs, ctx.reps(3))?;
    let table = report::table(&m, "conns", "epoll");
    println!("\n{title}\n\n{table}");
    let mut text = format!("{blurb}\n\n{table}");
    if m.iter().any(|r| r.client_saturated) {
        text += "\n*client saturated*: the client, not the server, was the bottleneck on that row; the server's figures there are a lower bound.\n";
    }
    let slug = chart_prefix(title);
    for (file, t, yd, f) in [
        (
            format!("{slug}-throughput.svg"),
            "throughput vs connections",
            "requests/s",
            (|r: &RunResult| r.rps) as fn(&RunResult) -> f64,
        ),
        (
            format!("{slug}-p99.svg"),
            "p99 latency vs connections",
            "p99 µs",
            |r: &RunResult| r.p99_us,
        ),
        (
            format!("{slug}-cpu.svg"),
            "server CPU per request",
            "µs CPU / request",
            |r: &RunResult| r.cpu_per_req_us,
        ),
    ] {
        plot::lines(&rep.dir.join(&file), t, "connections", yd, &m, f)?;
        text += &format!("\n![{t}]({file})\n");
    }
    rep.section(title, &text, &m, &raw);
    Ok(m)
}

/// The chart files' prefix: the title's first word, letters and digits only
/// (`compare: echo 64 B` → `compare`, so `compare-cpu.svg`).
fn chart_prefix(title: &str) -> String {
    let word = title.split_whitespace().next().unwrap_or("x");
    let p: String = word
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect::<String>()
        .to_lowercase();
    if p.is_empty() {
        "x".into()
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_files_are_plain_words() {
        assert_eq!(chart_prefix("compare: echo 64 B"), "compare");
        assert_eq!(chart_prefix("Sizes"), "sizes");
        assert_eq!(chart_prefix(": odd"), "x");
    }
}
