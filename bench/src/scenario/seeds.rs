//! `seeds`: the seed notes' experiment, every request held 100 ms (`GET /delay/100`), 1 to
//! 20,000 clients, each with one request at a time. The async backends run it twice: with one
//! persistent connection per client (`keep-alive`, as a pooled client would), which follows
//! the seed's line (clients ÷ 0.1 s) as far as the machine allows, and with a new connection
//! per request (`new conn`, `Connection: close`, as the seed's clients made them), which the
//! machine's TCP connection rate caps. The blocking pools run it with a new connection per
//! request (a worker holds its connection: with keep-alive a pool serves its first N clients
//! only).

use anyhow::Result;

use super::c10k::{processes_for, Limits};
use crate::ctx::{Ctx, Scenario};
use crate::plot::{self, Reference};
use crate::report::{self, ideal_qps, Report, HOLD_S, ON_LINE};
use crate::run::{RunResult, RunSpec};

/// `ringlab-bench seeds`.
pub struct Seeds;

/// ringlab-server's `--max-conns` default: rows that could reach it get twice their clients.
const SERVER_MAX_CONNS: u32 = 10_000;

/// Seconds a run takes besides its warm-up, measured window and drain (server start and
/// stop, client set-up and exit), for the estimate printed at the start.
const PER_RUN_S: f64 = 0.3;

/// How the clients of a line connect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conn {
    /// One persistent connection per client (HTTP/1.1 keep-alive).
    KeepAlive,
    /// A new connection per request (`Connection: close`).
    NewConn,
}

impl Conn {
    fn name(self) -> &'static str {
        match self {
            Conn::KeepAlive => "keep-alive",
            Conn::NewConn => "new conn",
        }
    }
}

/// One line of the charts: a backend, how its clients connect, its client counts.
#[derive(Clone, Debug, PartialEq)]
struct Line {
    backend: String,
    conn: Conn,
    clients: Vec<u32>,
}

impl Line {
    fn label(&self) -> String {
        format!("{} {}", self.backend, self.conn.name())
    }

    /// Workers that serve one connection at a time (a blocking pool), if it is one.
    fn pool(&self) -> Option<u32> {
        match self.backend.as_str() {
            "blocking" => Some(64),
            b => b.strip_prefix("blocking-").and_then(|n| n.parse().ok()),
        }
    }
}

/// The lines for `backends`: client counts by kind of line (`conns`: every line gets those).
/// By default the async keep-alive lines go doubling to 512, then 1,000, 2,000, 5,000, 10,000
/// and 20,000 (two processes a side); the new-connection lines take fewer points (their
/// knee is near 2,000); the pools the points around their size; the synchronous server the
/// seed's 1 to 32.
fn plan(backends: &[String], quick: bool, conns: Option<&[u32]>) -> Vec<Line> {
    let pick = |full: &[u32], short: &[u32]| -> Vec<u32> {
        conns
            .map(<[u32]>::to_vec)
            .unwrap_or_else(|| if quick { short } else { full }.to_vec())
    };
    let mut lines = Vec::new();
    for b in backends {
        let line = |conn, clients| Line {
            backend: b.clone(),
            conn,
            clients,
        };
        let pool = line(Conn::NewConn, Vec::new()).pool();
        match pool {
            Some(1) => lines.push(line(Conn::NewConn, pick(&[1, 4, 16, 32], &[1, 4]))),
            Some(_) => lines.push(line(
                Conn::NewConn,
                pick(&[1, 16, 64, 128, 256, 512], &[1, 64, 256]),
            )),
            None => {
                lines.push(line(
                    Conn::KeepAlive,
                    pick(
                        &[
                            1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000, 2000, 5000, 10000, 20000,
                        ],
                        &[1, 100, 1000],
                    ),
                ));
                lines.push(line(
                    Conn::NewConn,
                    pick(&[1, 100, 1000, 2000, 5000, 10000], &[100, 1000]),
                ));
            }
        }
    }
    lines
}

/// The fastest keep-alive clients connect (a second's worth of 50,000 connections: faster, a
/// server on one CPU overflows its listen backlog, and the SYNs it drops return a second later).
const MAX_RAMP: f64 = 50_000.0;

/// How long runs measure and warm up.
#[derive(Clone, Copy, Debug)]
struct Timing {
    /// Measured seconds.
    dur: f64,
    /// Warm-up seconds before the clients' connections (see [`Timing::warm`]).
    warm: f64,
}

impl Timing {
    /// `--duration` or 3 s (`--quick`: 1 s, ten holds), after 1 s of warm-up (`--quick`: 0.3 s).
    fn of(ctx: &Ctx) -> Timing {
        let q = ctx.o.quick;
        Timing {
            dur: ctx.o.duration.unwrap_or(if q { 1.0 } else { 3.0 }),
            warm: if q { 0.3 } else { 1.0 },
        }
    }

    /// The warm-up of a run of `c` clients: half a second more per 10,000 of them, the time
    /// their connections take.
    fn warm(&self, c: u32) -> f64 {
        self.warm + f64::from(c) / 20_000.0
    }
}

/// About how long `lines` take: every run's warm-up, window, the drain of the requests in
/// flight at its end (a pool's queue: clients ÷ workers × the hold) and [`PER_RUN_S`].
fn estimate_s(lines: &[Line], t: Timing) -> f64 {
    lines
        .iter()
        .flat_map(|l| {
            l.clients.iter().map(move |&c| {
                let queue = l.pool().map_or(1, |w| c.div_ceil(w.max(1)).max(1));
                t.warm(c) + t.dur + f64::from(queue) * HOLD_S + PER_RUN_S
            })
        })
        .sum()
}

/// Source addresses for `clients` connections from `procs` client processes: enough that each
/// keeps under a quarter of its `ports` ephemeral ports (as c10k's holders do: from one
/// address, 20,000 connections made only 6,110 in a 5 s run here, with 16 all of them), the
/// same number for every process.
fn source_addrs(clients: u32, procs: u64, ports: u64) -> u64 {
    let each = u64::from(clients).div_ceil(procs.max(1));
    each.div_ceil((ports / 4).max(1)).max(1) * procs.max(1)
}

/// Processes a side needs for `clients` connections: one per [`Limits::per_process`] (the
/// descriptor ceiling, `ulimit -n`, less what a process keeps for itself).
fn sides_processes(clients: u32, per_process: u64) -> u64 {
    processes_for(u64::from(clients), per_process)
}

/// The run of `line` at `c` clients. Rows that could reach the server's default `--max-conns`
/// get twice their clients (a closing connection may still hold its slot when its client's
/// next one arrives); rows beyond one process's descriptors run that many server and client
/// processes (`--processes`), sharing the CPUs; rows of many clients connect from several
/// loopback addresses ([`source_addrs`]).
fn spec(ctx: &Ctx, line: &Line, c: u32, lim: &Limits) -> Result<RunSpec> {
    let t = Timing::of(ctx);
    let conns = c.to_string();
    // Keep-alive: the clients connect over one hold (or at [`MAX_RAMP`]), so their requests
    // are spread evenly over it (all at once, they would stay in step, and a window would
    // count whole rounds of them: ±1 round in 30). A new connection per request: no pacing
    // (--connect-rate also paces the reconnections, and their rate is what the row measures).
    let ramp = match line.conn {
        Conn::KeepAlive => format!("{:.0}", (f64::from(c) / HOLD_S).clamp(1.0, MAX_RAMP)),
        Conn::NewConn => "200000".to_string(),
    };
    let mut client = vec![
        "--path",
        "/delay/100",
        "--conns",
        &conns,
        "--connect-rate",
        &ramp,
        "--timeout",
        "60s",
    ];
    if line.conn == Conn::NewConn {
        client.extend(["--header", "Connection: close"]);
    }
    let mut s = ctx.proto_spec(&line.backend, f64::from(c), "http", &client, t.dur)?;
    s.label = line.label();
    s.warmup_s = t.warm(c);
    if c.saturating_mul(2) > SERVER_MAX_CONNS {
        s.server_args
            .extend(["--max-conns".into(), (u64::from(c) * 2).to_string()]);
    }
    let procs = sides_processes(c, lim.per_process());
    let clients_procs = procs.max(ctx.o.client_processes as u64);
    let addrs = source_addrs(c, clients_procs, lim.ports);
    if addrs > 1 && !s.client_args.iter().any(|a| a == "--bind") {
        s.client_args.extend([
            "--bind".into(),
            format!("127.0.0.1-127.0.0.{}", addrs.min(254)),
        ]);
    }
    if procs > 1 {
        s.server_args
            .extend(["--processes".into(), procs.to_string()]);
        if procs > ctx.o.client_processes as u64 {
            if let Some(i) = s.client_args.iter().position(|a| a == "--processes") {
                s.client_args.drain(i..i + 2);
            }
            s.client_args
                .extend(["--processes".into(), procs.to_string()]);
        }
    }
    Ok(s)
}

impl Scenario for Seeds {
    fn name(&self) -> &'static str {
        "seeds"
    }

    fn run(&self, ctx: &Ctx, rep: &mut Report) -> Result<()> {
        let default = [
            "blocking-1",
            "blocking-64",
            "blocking-128",
            "uring",
            "epoll",
        ];
        let lines = plan(&ctx.backends(&default), ctx.o.quick, ctx.o.conns.as_deref());
        let lim = Limits::read_and_raise();
        let t = Timing::of(ctx);
        let mut specs = Vec::new();
        let max_len = lines.iter().map(|l| l.clients.len()).max().unwrap_or(0);
        for i in 0..max_len {
            for l in &lines {
                if let Some(&c) = l.clients.get(i) {
                    specs.push(spec(ctx, l, c, &lim)?);
                }
            }
        }
        eprintln!(
            "seeds: {} runs of {} s measured after {} s warm-up or more: about {:.1} minutes",
            specs.len(),
            t.dur,
            t.warm,
            estimate_s(&lines, t) * ctx.reps(1) as f64 / 60.0
        );
        let (m, raw) = ctx.go(&specs, ctx.reps(1))?;
        let text = lines_text(&m, &lim, t);
        let out = report::seeds_lines(&m);
        let limit = connect_limit(&m).unwrap_or_default();
        println!(
            "\nseeds: every request held 100 ms (GET /delay/100), one request in flight per client; `keep-alive`: one persistent connection per client, `new conn`: a new connection per request\n\n{out}\n{limit}"
        );
        let ideal = |x: f64| ideal_qps(x);
        plot::lines_with(
            &rep.dir.join("seeds-qps.svg"),
            "seed 000: QPS vs clients (each request held 100 ms)",
            "clients",
            "QPS",
            &m,
            |r| r.rps,
            Some(Reference {
                label: "ideal: clients / 0.1 s",
                y: &ideal,
            }),
        )?;
        plot::lines_with(
            &rep.dir.join("seeds-ideal.svg"),
            "seed 000: QPS as a share of the ideal (clients / 0.1 s)",
            "clients",
            "QPS / ideal",
            &m,
            |r| r.rps / ideal_qps(r.x),
            Some(Reference {
                label: "ideal: clients / 0.1 s",
                y: &|_| 1.0,
            }),
        )?;
        plot::lines_with(
            &rep.dir.join("seeds-latency.svg"),
            "seed 000: mean latency vs clients",
            "clients",
            "mean latency s",
            &m,
            |r| r.mean_us / 1e6,
            Some(Reference {
                label: "ideal: the 0.1 s hold",
                y: &|_| HOLD_S,
            }),
        )?;
        rep.section(
            "seeds",
            &format!(
                "{text}\n```\n{out}```\n\n{limit}\n\n![QPS](seeds-qps.svg)\n![QPS as a share of the ideal](seeds-ideal.svg)\n![latency](seeds-latency.svg)\n"
            ),
            &m,
            &raw,
        );
        Ok(())
    }
}

/// The section's opening: the experiment, the flags rows got, and each row's knee.
fn lines_text(m: &[RunResult], lim: &Limits, t: Timing) -> String {
    let (dur, warm, per_process) = (t.dur, t.warm, lim.per_process());
    let mut t = format!(
        "Seed 000's experiment: every request held {HOLD_S} s by the server (`GET /delay/100`), each client doing one request at a time; {dur} s measured after {warm} s of warm-up (and half a second more per 10,000 clients), one run per point, every run on a fresh server. `keep-alive` rows: one persistent connection per client (as a pooled client would), the async backends only (a blocking worker would keep its connection for good); the clients connect over one hold (`--connect-rate` clients / {HOLD_S} s, at most {MAX_RAMP} a second), so their requests are spread over it rather than in step. `new conn` rows: a new connection per request (`Connection: close`), as the seed's clients made independent requests, unpaced (`--connect-rate 200000`); a blocking worker serves one connection at a time, so requests beyond the pool wait in its queue. Each line reads `clients. Latency: mean s, QPS: measured, ideal: clients / {HOLD_S} s (measured ÷ ideal)`, the seed's async line; a row's knee is where it falls more than {:.0}% below the ideal and stays there, and a row that left the line flattens where it comes within 10% of its most QPS for good (a pool's size, the machine's limit). Rows of more than {} clients ran ringlab-server with `--max-conns` twice their clients (its default, {SERVER_MAX_CONNS}, leaves no room at exactly 10,000 clients for a connection that arrives while a closing one still holds its slot); rows of more than {per_process} clients (the descriptor ceiling, `ulimit -n`, less what a process keeps for itself) ran as many server and client processes as that takes (`--processes`), sharing the same CPUs; rows of more than a quarter of the {} ephemeral ports connected from several loopback addresses (`--bind 127.0.0.1-127.0.0.N`), as connect's search for a free port grows long beyond that.\n\nKnees:\n\n",
        (1.0 - ON_LINE) * 100.0,
        SERVER_MAX_CONNS / 2,
        lim.ports,
    );
    for (l, k) in report::seeds_knees(m) {
        t += &format!("- {l}: {k}\n");
    }
    t
}

/// The connection-rate limit in one sentence: the async backends' new-connection rows at
/// their largest client count (the client's connections per second there) beside their
/// keep-alive rows at that count.
fn connect_limit(rows: &[RunResult]) -> Option<String> {
    let churn: Vec<&RunResult> = rows
        .iter()
        .filter(|r| r.label.ends_with(" new conn") && !r.label.starts_with("blocking"))
        .collect();
    let x = churn.iter().map(|r| r.x).fold(f64::NAN, f64::max);
    let at: Vec<&RunResult> = churn.into_iter().filter(|r| r.x == x).collect();
    if at.is_empty() {
        return None;
    }
    let backend = |r: &RunResult| r.label.split(' ').next().unwrap_or("").to_string();
    let list = |v: &[&RunResult], f: fn(&RunResult) -> f64, unit: &str| {
        v.iter()
            .map(|r| format!("{} {:.0}{unit}", backend(r), f(r)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let rates = list(&at, |r| r.connects_per_s, "");
    let qps = list(&at, |r| r.rps, "");
    let ideal = ideal_qps(x);
    if at.iter().all(|r| r.rps >= ON_LINE * ideal) {
        return Some(format!(
            "Connection rate: with a new connection per request the async backends stayed on the ideal line up to {x} clients ({qps} QPS); the client established {rates} connections a second, and the connection rate did not limit."
        ));
    }
    let ka: Vec<&RunResult> = rows
        .iter()
        .filter(|r| r.x == x && r.label.ends_with(" keep-alive"))
        .collect();
    let most_churn = at.iter().map(|r| r.rps).fold(0.0, f64::max);
    let cpu = |v: &[&RunResult]| list(v, |r| r.cpu_per_req_us, " µs");
    let (lo, hi) = at.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), r| {
        (lo.min(r.connects_per_s), hi.max(r.connects_per_s))
    });
    let same = if at.len() > 1 && hi <= 1.25 * lo {
        "every IO model stops at about the same rate, and "
    } else {
        ""
    };
    let why = if !ka.is_empty() && ka.iter().all(|r| r.rps >= 1.5 * most_churn) {
        format!(
            "That is this machine's rate of TCP connection setup and teardown (connect, accept, close for every request), not the IO model: {same}with one persistent connection per client the same servers reach {} QPS at the same {x} clients (server CPU per request {} against {} with a new connection).",
            list(&ka, |r| r.rps, ""),
            cpu(&ka),
            cpu(&at)
        )
    } else if ka.is_empty() {
        "Keep-alive was not measured at that count, so this run does not separate the connection rate from the IO model.".to_string()
    } else {
        format!(
            "Keep-alive at the same {x} clients reaches {} QPS, not well above it: the connections are not the only limit here.",
            list(&ka, |r| r.rps, "")
        )
    };
    Some(format!(
        "Connection rate: with a new connection per request the async backends stay below the ideal line at {x} clients ({qps} QPS of {ideal:.0}), where the client established {rates} connections a second (its connect counter over its run, warm-up included). {why}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_default_plan_follows_keep_alive_to_20000_and_churn_to_10000() {
        let lines = plan(
            &names(&[
                "blocking-1",
                "blocking-64",
                "blocking-128",
                "uring",
                "epoll",
            ]),
            false,
            None,
        );
        let labels: Vec<String> = lines.iter().map(Line::label).collect();
        assert_eq!(
            labels,
            [
                "blocking-1 new conn",
                "blocking-64 new conn",
                "blocking-128 new conn",
                "uring keep-alive",
                "uring new conn",
                "epoll keep-alive",
                "epoll new conn"
            ]
        );
        let max = |l: &Line| *l.clients.iter().max().unwrap();
        assert_eq!(max(&lines[0]), 32);
        assert_eq!(max(&lines[1]), 512);
        assert_eq!(max(&lines[3]), 20_000);
        assert!(lines[3].clients.contains(&10_000));
        assert_eq!(max(&lines[4]), 10_000);
        // The pools' points straddle their sizes.
        assert!(lines[1].clients.contains(&64) && lines[1].clients.contains(&128));
        assert!(lines[2].clients.contains(&128) && lines[2].clients.contains(&256));
    }

    #[test]
    fn the_default_run_fits_in_six_minutes_and_quick_in_one() {
        let all = names(&[
            "blocking-1",
            "blocking-64",
            "blocking-128",
            "uring",
            "epoll",
        ]);
        let t = |dur, warm| Timing { dur, warm };
        let full = estimate_s(&plan(&all, false, None), t(3.0, 1.0));
        assert!(full <= 6.0 * 60.0, "{full} s");
        let quick = estimate_s(&plan(&all, true, None), t(1.0, 0.3));
        assert!(quick <= 45.0, "{quick} s");
    }

    #[test]
    fn conns_replace_every_lines_counts() {
        let lines = plan(&names(&["uring", "blocking-8"]), false, Some(&[7, 70]));
        assert_eq!(lines.len(), 3);
        assert!(lines.iter().all(|l| l.clients == [7, 70]));
        assert_eq!(lines[2].pool(), Some(8));
        assert_eq!(lines[0].pool(), None);
    }

    #[test]
    fn a_pools_queue_drains_in_the_estimate() {
        let l = |backend: &str, clients| Line {
            backend: backend.into(),
            conn: Conn::NewConn,
            clients: vec![clients],
        };
        // 32 clients on one worker: 32 holds to drain; on an async backend one.
        let t = Timing {
            dur: 3.0,
            warm: 1.0,
        };
        let sync = estimate_s(&[l("blocking-1", 32)], t);
        let async_ = estimate_s(&[l("epoll", 32)], t);
        assert!((sync - async_ - 31.0 * HOLD_S).abs() < 1e-9);
    }

    #[test]
    fn more_clients_than_descriptors_take_more_processes() {
        let per = 20_000 - 256;
        assert_eq!(sides_processes(10_000, per), 1);
        assert_eq!(sides_processes(20_000, per), 2);
        assert_eq!(sides_processes(1, per), 1);
    }

    #[test]
    fn many_clients_connect_from_several_addresses() {
        // 28,232 ephemeral ports: a quarter is 7,058.
        assert_eq!(source_addrs(1000, 1, 28_232), 1);
        assert_eq!(source_addrs(7000, 1, 28_232), 1);
        assert_eq!(source_addrs(10_000, 1, 28_232), 2);
        // Two processes of 10,000: two addresses each.
        assert_eq!(source_addrs(20_000, 2, 28_232), 4);
        let warm = Timing {
            dur: 3.0,
            warm: 1.0,
        };
        assert_eq!(warm.warm(20_000), 2.0);
        assert!((warm.warm(1) - 1.0).abs() < 1e-4);
    }

    /// A context with the default flags plus `args`, binaries that are never run.
    fn ctx(args: &[&str]) -> Ctx {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            o: crate::opts::Opts,
        }
        let o =
            <Cli as clap::Parser>::parse_from(std::iter::once("t").chain(args.iter().copied())).o;
        Ctx {
            bins: crate::procs::Bins {
                server: "ringlab-server".into(),
                client: "ringlab-client".into(),
            },
            o,
            run: crate::run::RunOpts {
                perf: false,
                tmp: std::env::temp_dir(),
                netns: None,
                dropped: Default::default(),
                fleet: None,
            },
            peers: Vec::new(),
        }
    }

    fn lim() -> Limits {
        Limits {
            nofile_soft: 20_000,
            nofile_hard: 20_000,
            nr_open: 1 << 20,
            ports: 28_232,
        }
    }

    /// The value after `flag` in `args`, if it is there (once at most).
    fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
        let at: Vec<usize> = (0..args.len()).filter(|&i| args[i] == flag).collect();
        assert!(at.len() <= 1, "{flag} given {} times: {args:?}", at.len());
        at.first().map(|&i| args[i + 1].as_str())
    }

    #[test]
    fn the_rows_get_the_flags_their_client_count_needs() {
        let ctx = ctx(&[]);
        let line = |backend: &str, conn| Line {
            backend: backend.into(),
            conn,
            clients: vec![],
        };
        let ka = line("epoll", Conn::KeepAlive);
        let nc = line("uring", Conn::NewConn);
        // Few clients: the server's defaults, one process, one address; keep-alive connects
        // over one hold, a new connection per request unpaced.
        let s = spec(&ctx, &ka, 64, &lim()).unwrap();
        assert_eq!(s.label, "epoll keep-alive");
        assert_eq!(flag(&s.server_args, "--max-conns"), None);
        assert_eq!(flag(&s.server_args, "--processes"), None);
        assert_eq!(flag(&s.client_args, "--connect-rate"), Some("640"));
        assert_eq!(flag(&s.client_args, "--header"), None);
        assert_eq!(flag(&s.client_args, "--bind"), None);
        let s = spec(&ctx, &nc, 64, &lim()).unwrap();
        assert_eq!(s.label, "uring new conn");
        assert_eq!(flag(&s.client_args, "--header"), Some("Connection: close"));
        assert_eq!(flag(&s.client_args, "--connect-rate"), Some("200000"));
        // Exactly 10,000: room above the default --max-conns, still one process.
        let s = spec(&ctx, &ka, 10_000, &lim()).unwrap();
        assert_eq!(flag(&s.server_args, "--max-conns"), Some("20000"));
        assert_eq!(flag(&s.server_args, "--processes"), None);
        assert_eq!(flag(&s.client_args, "--processes"), None);
        assert_eq!(flag(&s.client_args, "--connect-rate"), Some("50000"));
        assert_eq!(flag(&s.client_args, "--bind"), Some("127.0.0.1-127.0.0.2"));
        assert_eq!(s.warmup_s, 1.5);
        // 20,000: two processes a side, --max-conns above 20,000.
        let s = spec(&ctx, &ka, 20_000, &lim()).unwrap();
        assert_eq!(flag(&s.server_args, "--max-conns"), Some("40000"));
        assert_eq!(flag(&s.server_args, "--processes"), Some("2"));
        assert_eq!(flag(&s.client_args, "--processes"), Some("2"));
        assert_eq!(flag(&s.client_args, "--bind"), Some("127.0.0.1-127.0.0.4"));
        assert_eq!(flag(&s.client_args, "--conns"), Some("20000"));
        // --client-processes 4 stays (more than the row needs), given once.
        let ctx4 = super::tests::ctx(&["--client-processes", "4"]);
        let s = spec(&ctx4, &ka, 20_000, &lim()).unwrap();
        assert_eq!(flag(&s.client_args, "--processes"), Some("4"));
        assert_eq!(flag(&s.server_args, "--processes"), Some("2"));
    }

    fn run(label: &str, x: f64, rps: f64, connects: f64, cpu: f64) -> RunResult {
        RunResult {
            label: label.into(),
            x,
            rps,
            connects_per_s: connects,
            cpu_per_req_us: cpu,
            mean_us: 100_000.0,
            ..RunResult::default()
        }
    }

    #[test]
    fn the_connect_limit_names_the_rate_and_the_keep_alive_rows() {
        let rows = [
            run("uring new conn", 2000.0, 19_400.0, 19_600.0, 25.0),
            run("uring new conn", 10_000.0, 19_200.0, 20_100.0, 24.0),
            run("epoll new conn", 10_000.0, 19_800.0, 20_400.0, 22.0),
            run("blocking-64 new conn", 20_000.0, 600.0, 600.0, 30.0),
            run("uring keep-alive", 10_000.0, 97_000.0, 1500.0, 3.0),
            run("epoll keep-alive", 10_000.0, 98_000.0, 1500.0, 3.0),
        ];
        let s = connect_limit(&rows).unwrap();
        assert!(
            s.contains("at 10000 clients (uring 19200, epoll 19800 QPS of 100000)"),
            "{s}"
        );
        assert!(
            s.contains("established uring 20100, epoll 20400 connections a second"),
            "{s}"
        );
        assert!(
            s.contains("That is this machine's rate of TCP connection setup and teardown"),
            "{s}"
        );
        assert!(s.contains("not the IO model: every IO model stops at about the same rate, and with one persistent"), "{s}");
        assert!(s.contains("reach uring 97000, epoll 98000 QPS"), "{s}");
        assert!(
            s.contains("uring 3 µs, epoll 3 µs against uring 24 µs, epoll 22 µs"),
            "{s}"
        );
    }

    #[test]
    fn the_connect_limit_claims_nothing_the_rows_do_not_show() {
        // On the line: no limit.
        let on = [run("epoll new conn", 1000.0, 9_800.0, 9_900.0, 20.0)];
        assert!(connect_limit(&on)
            .unwrap()
            .contains("the connection rate did not limit"));
        // Below it, with no keep-alive row there: no claim about the IO model.
        let alone = [run("epoll new conn", 10_000.0, 19_000.0, 19_500.0, 20.0)];
        let s = connect_limit(&alone).unwrap();
        assert!(!s.contains("not the IO model"), "{s}");
        assert!(s.contains("Keep-alive was not measured"), "{s}");
        assert!(!s.contains("this machine's rate"), "{s}");
        // Keep-alive no better: not the connections alone.
        let flat = [
            run("epoll new conn", 10_000.0, 19_000.0, 19_500.0, 20.0),
            run("epoll keep-alive", 10_000.0, 21_000.0, 100.0, 20.0),
        ];
        assert!(connect_limit(&flat).unwrap().contains("not the only limit"));
        // No new-connection rows of an async backend: nothing to say.
        assert_eq!(
            connect_limit(&[run("blocking-1 new conn", 1.0, 9.6, 9.6, 30.0)]),
            None
        );
    }
}
