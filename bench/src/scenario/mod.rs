//! The scenarios, one module each behind [`Scenario`], and the run of one (or `all`) into a
//! report directory.

pub(crate) use compare::STEAL_NOTE;
pub use files::FilesArgs;

mod c10k;
mod clients;
mod coalesce;
mod compare;
mod features;
pub mod files;
mod http;
mod latency;
mod multiplex;
mod pinning;
mod seeds;
mod sizes;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::ctx::{Ctx, Scenario};
use crate::netns::Netns;
use crate::opts::Opts;
use crate::peers;
use crate::procs::Bins;
use crate::report::{Machine, Report};
use crate::run::{self, RunOpts};

/// Every scenario, in the order `all` runs them (c10k last: `all` leaves it out).
const SCENARIOS: [&dyn Scenario; 11] = [
    &compare::Compare,
    &seeds::Seeds,
    &latency::Latency,
    &sizes::Sizes,
    &pinning::Pinning,
    &http::Http,
    &clients::Clients,
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
    run_these(name, named(name)?, o)
}

/// Run `files` with its own flags `args` and the common ones `o`.
pub fn run_files(args: &FilesArgs, o: &Opts) -> Result<()> {
    let f = files::Files { args: args.clone() };
    run_these("files", vec![&f], o)
}

/// Run `scenarios` (called `name` in the report directory's name) with the flags `o`.
fn run_these(name: &str, scenarios: Vec<&dyn Scenario>, o: &Opts) -> Result<()> {
    // A scenario that measures no peer refuses --peer before it runs anything (`all` takes
    // them for the scenarios that do, and says which do not).
    if !o.peer.is_empty() && !scenarios.iter().any(|s| s.takes_peers()) {
        bail!("{}", refuses_peers(name));
    }
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
    let peers = peers::parse_peers(&o.peer)?;
    if !peers.is_empty() && netns.is_some() {
        bail!("--peer and --netns do not go together: peers run on the host");
    }
    let fleet = match crate::fleet::FleetOpts::of(o)? {
        None => None,
        Some(mut f) => {
            f.bench_on_clients = scenarios.iter().any(|s| s.fleet_needs_bench());
            f.bench_on_server = scenarios.iter().any(|s| s.fleet_needs_bench_on_server());
            if netns.is_some() || !peers.is_empty() {
                bail!("--server-host does not go with --netns or --peer");
            }
            machine.link = format!(
                "fleet: server on {}, clients on {} (over SSH)",
                f.server,
                f.clients.join(", ")
            );
            Some(std::sync::Arc::new(crate::fleet::Fleet::setup(f, &bins)?))
        }
    };
    let ctx = Ctx {
        bins,
        o: o.clone(),
        run: RunOpts {
            perf: o.perf,
            tmp: run::tmpdir(&out)?,
            netns,
            dropped: peers::Dropped::default(),
            fleet,
        },
        peers,
    };
    println!("ringlab-bench {name}: {}", machine.line());
    for s in scenarios {
        if !ctx.peers.is_empty() && !s.takes_peers() {
            println!(
                "{}: --peer rows are not measured here (peers are echo servers; this scenario varies ringlab-server's own flags or speaks HTTP)",
                s.name()
            );
        }
        let r = s.run(&ctx, &mut rep);
        if let Some(f) = &ctx.run.fleet {
            rep.section("fleet", &f.section(), &[], &[]);
            if let Ok(runs) = f.runs.lock() {
                let _ = std::fs::write(
                    out.join("fleet.json"),
                    serde_json::to_string_pretty(&*runs).unwrap_or_default(),
                );
            }
        }
        rep.write()?;
        // A host failure is its own one line (naming the host), whatever the scenario made of
        // it; anything else failed the scenario. The hosts' directories go when the fleet is
        // dropped, on every path.
        if let Some(e) = ctx.run.fleet.as_ref().and_then(|f| f.failure()) {
            return Err(e);
        }
        match r {
            Err(e) if crate::fleet::is_host_failure(&e) => return Err(e),
            r => r.with_context(|| format!("scenario {}", s.name()))?,
        }
    }
    if let Some(f) = &ctx.run.fleet {
        f.teardown();
    }
    if !ctx.peers.is_empty() {
        let mut t = String::from("Servers measured beside the backends (`--peer NAME=COMMAND`; rows `peer:NAME`), each started fresh for every run with `{port}` and `{cpu}` filled in, pinned to the server CPUs with taskset, stopped by signalling its own process group:\n\n");
        for p in &ctx.peers {
            t += &format!("- `{}`: `{}`\n", p.name, p.command);
        }
        let dropped = ctx.run.dropped.notes();
        if !dropped.is_empty() {
            t += &format!(
                "\nLeft out after failing (their earlier runs stay in the tables):\n\n{dropped}"
            );
        }
        rep.section("peers", &t, &[], &[]);
        rep.write()?;
    }
    let _ = std::fs::remove_dir_all(&ctx.run.tmp);
    rep.write()?;
    println!("\nreport: {}", out.join("report.md").display());
    Ok(())
}

/// The scenarios that take `--peer`, in the order `all` runs them.
pub fn peer_scenarios() -> Vec<&'static str> {
    SCENARIOS
        .into_iter()
        .filter(|s| s.takes_peers())
        .map(|s| s.name())
        .collect()
}

/// The one line that refuses `--peer` to `what` (a scenario or another subcommand).
pub fn refuses_peers(what: &str) -> String {
    format!(
        "{what} does not take --peer: peers are echo servers measured beside the backends in {} only",
        peer_scenarios().join(", ")
    )
}

/// `target/ringlab` of the workspace this binary was built in, or of the current directory.
pub fn default_target_dir() -> PathBuf {
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
    fn the_peer_scenarios_are_the_echo_comparisons() {
        assert_eq!(
            peer_scenarios(),
            ["compare", "latency", "sizes", "multiplex"]
        );
        assert_eq!(
            refuses_peers("pinning"),
            "pinning does not take --peer: peers are echo servers measured beside the backends in compare, latency, sizes, multiplex only"
        );
    }

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
                "clients",
                "features",
                "multiplex",
                "coalesce"
            ]
        );
        assert_eq!(named("c10k").unwrap()[0].name(), "c10k");
        assert!(named("nosuch").is_err());
    }
}
