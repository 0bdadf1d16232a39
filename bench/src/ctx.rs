//! What a scenario is ([`Scenario`]) and what it runs with ([`Ctx`]): the flags, the
//! binaries, and the helpers every scenario uses to make and run its specs.

use anyhow::{bail, Context, Result};

use crate::opts::Opts;
use crate::peers::Peer;
use crate::procs::Bins;
use crate::report::Report;
use crate::run::{self, RunOpts, RunResult, RunSpec};

/// One scenario of the bench: a subcommand, and a section of the report.
pub trait Scenario {
    /// Its subcommand and the name of its report section.
    fn name(&self) -> &'static str;
    /// Run it, adding its section (tables, charts, data) to `rep`.
    fn run(&self, ctx: &Ctx, rep: &mut Report) -> Result<()>;
    /// Whether it measures `--peer` rows beside the backends (echo scenarios that compare
    /// backends do; those that vary ringlab-server's own flags, or speak HTTP, do not).
    fn takes_peers(&self) -> bool {
        false
    }
    /// Fleet mode: whether it runs ringlab-bench on the client hosts (idle-connection
    /// holders), which is then copied there too.
    fn fleet_needs_bench(&self) -> bool {
        false
    }
    /// Fleet mode: whether it runs ringlab-bench on the server host (the files scenario's
    /// data set), which is then copied there too.
    fn fleet_needs_bench_on_server(&self) -> bool {
        false
    }
}

/// What every scenario runs with: the binaries, the flags, the options of every run.
pub struct Ctx {
    pub bins: Bins,
    pub o: Opts,
    pub run: RunOpts,
    /// `--peer` servers, measured beside the backends where the scenario takes them.
    pub peers: Vec<Peer>,
}

/// A backend row: label, the server arguments that make it.
/// `specs` with an A/A control after every row whose label `is_baseline` picks: a second
/// instance of it ([`crate::verdict::aa_of`] its label) in the same interleaving, whose ratio to
/// it is the noise floor and against which every candidate is tested too
/// ([`crate::stats::call`]). None with one repetition: there is no pair to compare.
pub fn with_aa(
    specs: Vec<RunSpec>,
    reps: usize,
    is_baseline: impl Fn(&str) -> bool,
) -> Vec<RunSpec> {
    let mut out = Vec::with_capacity(specs.len() * 2);
    for s in specs {
        let twin = (reps > 1 && is_baseline(&s.label)).then(|| RunSpec {
            label: crate::verdict::aa_of(&s.label),
            ..s.clone()
        });
        out.push(s);
        out.extend(twin);
    }
    out
}

pub fn backend_args(label: &str) -> Result<Vec<String>> {
    let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    Ok(match label {
        "uring" | "epoll" | "tokio-uring" | "tokio" | "poll" | "select" => v(&["--io", label]),
        "blocking" => v(&["--io", "blocking", "--workers", "64"]),
        l if l.starts_with("blocking-") => {
            let w: usize = l["blocking-".len()..]
                .parse()
                .with_context(|| format!("bad backend {l:?}"))?;
            vec![
                "--io".into(),
                "blocking".into(),
                "--workers".into(),
                w.to_string(),
            ]
        }
        other => bail!(
            "unknown backend {other:?} (uring, epoll, tokio-uring, tokio, blocking, blocking-N, poll, select)"
        ),
    })
}

impl Ctx {
    /// `--backends` (`all`: every one), or the scenario's `default`.
    pub fn backends(&self, default: &[&str]) -> Vec<String> {
        match &self.o.backends {
            Some(b) if b.iter().any(|x| x == "all") => [
                "uring",
                "epoll",
                "tokio-uring",
                "tokio",
                "blocking",
                "poll",
                "select",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
            Some(b) => b.clone(),
            None => default.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The rows of a scenario that takes peers: `backends(default)`, then each `--peer`.
    pub fn rows(&self, default: &[&str]) -> Vec<String> {
        let mut v = self.backends(default);
        v.extend(self.peers.iter().map(Peer::label));
        v
    }

    /// The peer whose row is `label`.
    pub fn peer(&self, label: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.label() == label)
    }

    /// `--reps`, or one with `--quick`, or the scenario's `normal`.
    pub fn reps(&self, normal: usize) -> usize {
        self.o
            .reps
            .unwrap_or(if self.o.quick { 1 } else { normal })
            .max(1)
    }

    /// `--duration`, or half a second with `--quick`, or the scenario's `normal`.
    pub fn duration(&self, normal: f64) -> f64 {
        self.o
            .duration
            .unwrap_or(if self.o.quick { 0.5 } else { normal })
    }

    /// Warm-up before each measured window.
    pub fn warmup(&self) -> f64 {
        if self.o.quick {
            0.2
        } else {
            0.5
        }
    }

    /// A run of `label` at `x`: the server and client arguments with the common flags added.
    pub fn spec(
        &self,
        label: &str,
        x: f64,
        server: Vec<String>,
        client: Vec<String>,
        dur: f64,
    ) -> RunSpec {
        let mut client_args = vec!["--io".to_string(), self.o.client_io.clone()];
        if self.o.client_processes > 1 {
            client_args.extend([
                "--processes".to_string(),
                self.o.client_processes.to_string(),
            ]);
            if self.run.netns.is_some() {
                // One source address per client process on the client side of the link.
                client_args.extend(["--bind".to_string(), "10.77.0.10-10.77.0.17".to_string()]);
            }
        }
        client_args.extend(client);
        let mut server_args = vec!["--cores".to_string(), self.o.server_cores.clone()];
        let peer = self.peer(label).cloned();
        if peer.is_none() {
            server_args.extend(server);
        }
        RunSpec {
            peer,
            label: label.into(),
            x,
            server_args,
            client_args,
            client_cores: self.o.client_cores.clone(),
            duration_s: dur,
            warmup_s: self.warmup(),
            ..RunSpec::default()
        }
    }

    /// A run of backend `b` serving `proto` at `x`: the server gets the backend's arguments
    /// and `--proto`; the client `--proto` and then `client`.
    pub fn proto_spec(
        &self,
        b: &str,
        x: f64,
        proto: &str,
        client: &[&str],
        dur: f64,
    ) -> Result<RunSpec> {
        let server = if self.peer(b).is_some() {
            Vec::new()
        } else {
            [backend_args(b)?, vec!["--proto".into(), proto.into()]].concat()
        };
        let client = ["--proto", proto].into_iter().chain(client.iter().copied());
        Ok(self.spec(b, x, server, client.map(String::from).collect(), dur))
    }

    /// Run `specs` interleaved `reps` times: the medians and every run; an error if all failed.
    pub fn go(&self, specs: &[RunSpec], reps: usize) -> Result<(Vec<RunResult>, Vec<RunResult>)> {
        let (m, raw) = run::run_interleaved(&self.bins, specs, reps, &self.run, &mut |s| {
            eprintln!("  {s}")
        })?;
        if m.is_empty() {
            bail!("every run failed (see the messages above)");
        }
        Ok((m, raw))
    }

    /// The first `--conns`, or the scenario's `default` (scenarios that run one count).
    pub fn one_conns(&self, default: u32) -> u32 {
        self.o
            .conns
            .as_ref()
            .and_then(|c| c.first().copied())
            .unwrap_or(default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(label: &str, x: f64) -> RunSpec {
        RunSpec {
            label: label.into(),
            x,
            server_args: vec!["--io".into(), "epoll".into()],
            ..RunSpec::default()
        }
    }

    #[test]
    fn every_baseline_row_gets_its_twin_right_after_it() {
        let specs = vec![
            spec("uring", 1.0),
            spec("epoll", 1.0),
            spec("uring", 2.0),
            spec("epoll", 2.0),
        ];
        let out = with_aa(specs.clone(), 6, |l| l == "epoll");
        let labels: Vec<(&str, f64)> = out.iter().map(|s| (s.label.as_str(), s.x)).collect();
        assert_eq!(
            labels,
            [
                ("uring", 1.0),
                ("epoll", 1.0),
                ("epoll A/A", 1.0),
                ("uring", 2.0),
                ("epoll", 2.0),
                ("epoll A/A", 2.0)
            ]
        );
        assert_eq!(
            out[2].server_args, out[1].server_args,
            "a second instance of the same server"
        );
        // One repetition: no pair to compare, no twin.
        assert_eq!(with_aa(specs, 1, |l| l == "epoll").len(), 4);
    }
}
