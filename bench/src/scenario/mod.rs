//! The scenarios, one module each behind [`Scenario`], and the run of one (or `all`) into a
//! report directory.

mod c10k;
mod coalesce;
mod compare;
mod features;
mod http;
mod latency;
mod multiplex;
mod pinning;
mod seeds;
mod sizes;

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::ctx::{Ctx, Scenario};
use crate::netns::Netns;
use crate::opts::Opts;
use crate::procs::Bins;
use crate::report::{Machine, Report};
use crate::run::{self, RunOpts};

/// Every scenario, in the order `all` runs them (c10k last: `all` leaves it out).
const SCENARIOS: [&dyn Scenario; 10] = [
    &compare::Compare,
    &seeds::Seeds,
    &latency::Latency,
    &sizes::Sizes,
    &pinning::Pinning,
    &http::Http,
    &features::Features,
    &multiplex::Multiplex,
    &coalesce::Coalesce,
    &c10k::C10k,
];

/// The scenarios `name` runs: that one, or for `all` every one but c10k.
fn named(name: &str) -> Result<Vec<&'static dyn Scenario>> {
    if name == "all" {
        return Ok(SCENARIOS
            .into_iter()
            .filter(|s| s.name() != "c10k")
            .collect());
    }
    let s = SCENARIOS.into_iter().find(|s| s.name() == name);
    Ok(vec![s.with_context(|| format!("no scenario {name:?}"))?])
}

/// Run scenario `name` (or `all`) with the flags `o`, writing the report after each.
pub fn run(name: &str, o: &Opts) -> Result<()> {
    let scenarios = named(name)?;
    let bins = Bins::find(o.bin_dir.as_deref())?;
    let out = match &o.out {
        Some(o) => o.clone(),
        None => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            default_target_dir().join(format!("{name}-{t}"))
        }
    };
    let mut machine = Machine::read(&o.server_cores, &o.client_cores);
    let argv: Vec<String> = std::env::args().collect();
    let mut rep = Report::new(&out, &machine, &argv.join(" "))?;
    let netns = if o.netns { Some(Netns::check()?) } else { None };
    if let Some(n) = &netns {
        machine.link = format!(
            "a veth pair between network namespaces {} and {}",
            n.server_ns, n.client_ns
        );
    }
    let ctx = Ctx {
        bins,
        o: o.clone(),
        run: RunOpts {
            perf: o.perf,
            tmp: run::tmpdir(&out)?,
            netns,
        },
    };
    println!("ringlab-bench {name}: {}", machine.line());
    for s in scenarios {
        let r = s.run(&ctx, &mut rep);
        rep.write()?;
        r.with_context(|| format!("scenario {}", s.name()))?;
    }
    let _ = std::fs::remove_dir_all(&ctx.run.tmp);
    rep.write()?;
    println!("\nreport: {}", out.join("report.md").display());
    Ok(())
}

/// `target/ringlab` of the workspace this binary was built in, or of the current directory.
fn default_target_dir() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        // .../target/<profile>/ringlab-bench
        if let Some(target) = exe.parent().and_then(|p| p.parent()) {
            if target.file_name().is_some_and(|n| n == "target") {
                return target.join("ringlab");
            }
        }
    }
    PathBuf::from("target/ringlab")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_every_scenario_but_c10k_in_order() {
        let names: Vec<&str> = named("all").unwrap().iter().map(|s| s.name()).collect();
        assert_eq!(
            names,
            [
                "compare",
                "seeds",
                "latency",
                "sizes",
                "pinning",
                "http",
                "features",
                "multiplex",
                "coalesce"
            ]
        );
        assert_eq!(named("c10k").unwrap()[0].name(), "c10k");
        assert!(named("nosuch").is_err());
    }
}
