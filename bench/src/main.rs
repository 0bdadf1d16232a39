//! `ringlab-bench`: the io_uring vs epoll comparison as one command. See `--help`. This file
//! only parses the command line and dispatches: the scenarios are in [`scenario`].

mod cgroup;
mod ctx;
mod doctor;
mod fleet;
mod hold;
mod merge;
mod netns;
mod on_signal;
mod opts;
mod peers;
mod plot;
mod procs;
mod profile;
mod report;
mod run;
mod scenario;
mod stats;
mod verdict;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};

use opts::Opts;

/// ringlab-bench: runs ringlab-server (pinned to one CPU) and ringlab-client (pinned to another)
/// over a matrix of scenarios, interleaving backends run by run (A B A B ...), and reports
/// medians: throughput, latency percentiles, server CPU per request, syscalls per request,
/// context switches, and each backend's ratio to epoll.
///
/// With no subcommand it runs `compare` (about two minutes; `--budget` buys precision with time). Reports go to
/// target/ringlab/<scenario>-<unix time>/ (report.md, results.json, SVG charts).
#[derive(Parser, Debug)]
#[command(name = "ringlab-bench", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    opts: Opts,
}

#[derive(Subcommand, Debug, Clone)]
enum Cmd {
    /// The verdict (default): echo 64 B at 512 connections, uring against epoll and an A/A
    /// control, side by side (their servers run at the same time, each with its own client,
    /// measured over one window, so the host's noise cancels in their ratios; --sequential: one
    /// after another), at equal offered load (25/50/75% of the slowest backend's capacity:
    /// server CPU per request, latency) and server-bound (each server's CPU capped by a cgroup:
    /// req/s); repetitions until every ratio's 95% interval is within ±3% on 10 pairs or more
    /// and every call is firm (it would repeat 9 runs in 10), or --budget runs out.
    /// Significant: uring differs from epoll and from epoll's second instance, each at 95%.
    /// --profile: where the server's CPU goes.
    Compare,
    /// The seed notes' tables: every request held 100 ms; clients 1 → 20,000; uring and epoll
    /// with one persistent connection per client and with a new connection per request,
    /// blocking pools of 1, 64 and 128 workers; the ideal line (clients / 0.1 s), each row's
    /// knee, the connection rate. About 4-5 minutes (--quick: under half a minute).
    Seeds,
    /// Open-loop rate sweep at 10% … 90% of the measured maximum: latency percentile curves.
    Latency,
    /// Payload sizes 64 B … 64 KiB.
    Sizes,
    /// Pinned vs unpinned vs client and server sharing a CPU; SO_REUSEPORT vs shared accept.
    Pinning,
    /// HTTP: ringlab-client and (when installed) wrk against each backend, nginx as reference.
    Http,
    /// What a request costs the client: ringlab-client (uring, epoll) and wrk against one
    /// epoll server capped at --server-share of a CPU (so every client drives it at the same
    /// rate), HTTP GET /, 64 connections; busy time of the client CPU per request and load per
    /// client core, against wrk with an A/A floor (a second wrk run). Goal: 1.5× wrk's load per
    /// core.
    Clients,
    /// Ablation: every io_uring technique (and the epoll twin's options) switched off or on
    /// alone, as a ratio against its backend's default, at 64 B and 32 KiB echo.
    Features,
    /// Seed 004's claims on select, poll and epoll (uring beside them): server CPU per request
    /// of 16 active connections at 10k req/s as idle ones grow (0, 100, 1k, 10k; --conns sets
    /// them; select only below FD_SETSIZE), and 1-8 very active connections in a closed loop;
    /// verdicts against epoll with an A/A floor.
    Multiplex,
    /// Paying for wake-ups: the server's --coalesce D (0-200 µs) at 10/25/50/75% of capacity,
    /// echo 64 B at 64 connections: server CPU per request and latency, uring vs epoll at each
    /// D and each against itself at D = 0 (A/A floor per load); a chart of CPU per request
    /// against p99.
    Coalesce,
    /// Hold N idle connections (default 1k, 10k, 50k, 100k; --conns sets them) while 64 active
    /// connections run echo; per backend: active throughput and p99, server RSS and kernel
    /// memory per connection, connect time. Checks the descriptor and port limits first and
    /// runs as many server and holder processes as they require.
    C10k,
    /// Static files, disk and network on one loop: a data set of hot (cached) and cold
    /// (dropped from the page cache before every run) files served by uring, epoll with each
    /// --file-io mode (blocking, threads, sendfile) and nginx (sendfile on, aio threads) when
    /// installed, under one mixed load: hot files at a fixed rate (latency p50/p99/p99.9) and
    /// cold files as fast as they come (req/s, MB/s); disk queue depth and reads from
    /// /proc/diskstats, server CPU per request; every row first verified byte for byte;
    /// interleaved repetitions, ratios against uring with 95% intervals and an A/A floor.
    /// Makes (or reuses) its data set first: 2 GiB by default (--data-size; a few GiB for
    /// full runs). Rows by --backends: uring, epoll (its three modes) or epoll-MODE (poll-MODE
    /// and select-MODE alike), tokio-uring, tokio, blocking, blocking-N, all. Not part of `all`.
    Files(scenario::FilesArgs),
    /// Every scenario above (c10k and files excluded: run them on their own).
    All,
    /// Internal (used by c10k and multiplex): open --count idle connections to ADDR and hold them.
    #[command(hide = true)]
    Hold {
        addr: std::net::SocketAddr,
        #[arg(long)]
        count: usize,
        #[arg(long, default_value = "127.0.0.1")]
        bind: String,
        #[arg(long)]
        cpu: Option<usize>,
        #[arg(long)]
        best_effort: bool,
        /// How long the echo check waits without a new answer.
        #[arg(long, default_value = "10s", value_parser = ringlab_runtime::duration::parse_duration)]
        verify_patience: std::time::Duration,
        /// uring-direct: entries of each ring's fixed-file table (default: the soft
        /// RLIMIT_NOFILE).
        #[arg(long)]
        fixed_table: Option<u32>,
        /// Hold until SIGTERM only, not until stdin closes (fleet mode: stdin is /dev/null on
        /// the far host; the holder is bounded by `timeout` there).
        #[arg(long)]
        no_stdin: bool,
    },
    /// Internal (files in fleet mode, run on the server host): make, check, prepare or verify
    /// the files scenario's data set there and print one JSON document.
    #[command(hide = true)]
    FilesData(scenario::files::remote::HelperArgs),
    /// What this machine allows (kernel, io_uring, limits, CPUs) and what will hold a
    /// benchmark back.
    Doctor,
    /// Reference peers to measure beside the backends with --peer: `peers build` compiles a
    /// plain-C edge-triggered epoll echo and a minimal multishot io_uring echo (liburing) from
    /// this repository's bench/peers/ with the system C compiler, and prints their --peer
    /// arguments.
    Peers {
        #[command(subcommand)]
        cmd: PeersCmd,
    },
    /// Merge HdrHistogram interval logs from several clients and print combined percentiles.
    Merge {
        /// Interval log files (ringlab-client --hist-log).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Print a shell completion script for ringlab-bench (e.g. `source <(ringlab-bench
    /// completions bash)`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        #[arg(value_name = "SHELL")]
        shell: String,
    },
    /// Print the man page (roff; read it with `ringlab-bench man | man -l -`).
    Man,
}

#[derive(Subcommand, Debug, Clone)]
enum PeersCmd {
    /// Compile the reference peers (and --with files) into --out and print the --peer
    /// arguments for them. Needs a C compiler; the io_uring one also liburing's headers
    /// (Debian: liburing-dev). Nothing is downloaded.
    Build {
        /// Where the binaries go (default target/ringlab/peers).
        #[arg(long)]
        out: Option<PathBuf>,
        /// The C compiler.
        #[arg(long, default_value = "cc")]
        cc: String,
        /// Also build a single-file C server of your own, as NAME=FILE.c (linked with
        /// liburing when it includes liburing.h); its --peer line passes the port as the
        /// first argument: edit it if your server takes it otherwise.
        #[arg(long, value_name = "NAME=FILE.c")]
        with: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringlab-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main(cli: Cli) -> Result<ExitCode> {
    let done = |r: Result<()>| r.map(|()| ExitCode::SUCCESS);
    let cmd = cli.cmd.unwrap_or(Cmd::Compare);
    // --peer is global (it may follow the subcommand), but only scenarios measure peers; the
    // scenarios that do not refuse it in scenario::run.
    let not_a_scenario = match &cmd {
        Cmd::Completions { .. } => Some("completions"),
        Cmd::Man => Some("man"),
        Cmd::Merge { .. } => Some("merge"),
        Cmd::Hold { .. } => Some("hold"),
        Cmd::FilesData(_) => Some("files-data"),
        Cmd::Peers { .. } => Some("peers build"),
        Cmd::Doctor => Some("doctor"),
        _ => None,
    };
    if let (Some(what), false) = (not_a_scenario, cli.opts.peer.is_empty()) {
        anyhow::bail!("{}", scenario::refuses_peers(what));
    }
    let name = match cmd {
        // Generated from this command line (ringlab_runtime::cli); an unknown shell is one line
        // and exit 2, like clap's usage errors.
        Cmd::Completions { shell } => {
            return Ok(ringlab_runtime::cli::completions(Cli::command(), &shell))
        }
        Cmd::Man => return Ok(ringlab_runtime::cli::man(Cli::command())),
        Cmd::Merge { files } => return done(merge::merge(&files)),
        Cmd::Hold {
            addr,
            count,
            bind,
            cpu,
            best_effort,
            verify_patience,
            fixed_table,
            no_stdin,
        } => {
            // The global --holder-io (one mode here; fds by default).
            let io = match cli.opts.holder_io.as_deref() {
                None => hold::HolderIo::Fds,
                Some([one]) => one.parse().map_err(anyhow::Error::msg)?,
                Some(_) => anyhow::bail!("hold: one --holder-io"),
            };
            return done(hold::hold(&hold::HoldArgs {
                addr,
                conns: count,
                bind: hold::parse_bind(&bind)?,
                cpu,
                best_effort,
                patience: verify_patience,
                io,
                fixed_table,
                watch_stdin: !no_stdin,
            }));
        }
        Cmd::Peers {
            cmd: PeersCmd::Build { out, cc, with },
        } => {
            return done(peers::build(&peers::BuildArgs {
                out: out.unwrap_or_else(|| scenario::default_target_dir().join("peers")),
                cc,
                with,
            }))
        }
        Cmd::Files(args) => return done(scenario::run_files(&args, &cli.opts)),
        Cmd::FilesData(a) => return done(scenario::files::remote::helper(&a)),
        Cmd::Doctor => {
            print!("{}", doctor::doctor());
            return Ok(ExitCode::SUCCESS);
        }
        Cmd::Compare => "compare",
        Cmd::Seeds => "seeds",
        Cmd::Latency => "latency",
        Cmd::Sizes => "sizes",
        Cmd::Pinning => "pinning",
        Cmd::Http => "http",
        Cmd::Clients => "clients",
        Cmd::Features => "features",
        Cmd::Multiplex => "multiplex",
        Cmd::Coalesce => "coalesce",
        Cmd::C10k => "c10k",
        Cmd::All => "all",
    };
    done(scenario::run(name, &cli.opts))
}
