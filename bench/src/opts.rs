//! The flags every scenario takes (`ringlab-bench --help`, "Options").

use std::path::PathBuf;

// Flags common to every scenario (global: they may follow the subcommand). A plain comment:
// a doc comment here would be clap help text.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Shorten every scenario (one repetition, compare: up to three; short runs): a smoke run.
    #[arg(long, global = true)]
    pub quick: bool,
    /// Backends to compare: a comma list of uring, epoll, tokio-uring, tokio, blocking,
    /// blocking-N (N workers), poll, select, or `all`.
    #[arg(long, global = true, value_delimiter = ',')]
    pub backends: Option<Vec<String>>,
    /// Connection counts (comma list) instead of the scenario's.
    #[arg(long, global = true, value_delimiter = ',')]
    pub conns: Option<Vec<u32>>,
    /// Measured seconds per run instead of the scenario's.
    #[arg(long, global = true)]
    pub duration: Option<f64>,
    /// Repetitions of every run (medians are reported; compare: exactly this many, instead of
    /// until every interval is within ±3%).
    #[arg(long, global = true)]
    pub reps: Option<usize>,
    /// CPU list for the server.
    #[arg(long, global = true, default_value = "0")]
    pub server_cores: String,
    /// CPU list for the client.
    #[arg(long, global = true, default_value = "1")]
    pub client_cores: String,
    /// The client's own IO (the same for every backend measured).
    #[arg(long, global = true, default_value = "epoll")]
    pub client_io: String,
    /// Client processes per run (ringlab-client --processes): the connections and the client
    /// CPU list are shared out, the results merged exactly (histograms added).
    #[arg(long, global = true, default_value_t = 1)]
    pub client_processes: usize,
    /// Report directory (default target/ringlab/<scenario>-<time>).
    #[arg(long, global = true)]
    pub out: Option<PathBuf>,
    /// Also count the server's syscalls with perf (raw_syscalls:sys_enter). Tracing slows every
    /// syscall, so this taxes the syscall-heavy backends more: use it for counts, not speed.
    #[arg(long, global = true)]
    pub perf: bool,
    /// Where ringlab-server and ringlab-client are (default: next to this executable).
    #[arg(long, global = true)]
    pub bin_dir: Option<PathBuf>,
    /// Run the server in network namespace ringlab-srv (10.77.0.1) and the client in
    /// ringlab-cli, joined by a veth pair: traffic crosses a link (with its own queues, GRO and
    /// any loss or rate set there) instead of loopback. Make them with `sudo scripts/netns.sh up`
    /// first (root needed); the wrk and nginx rows are skipped.
    #[arg(long, global = true)]
    pub netns: bool,
    /// compare: how long the repetitions may run (e.g. 90s, 5m). Repetitions continue until
    /// every headline interval is narrower than ±3% on at least 10 pairs and every call would
    /// repeat 9 runs in 10 (by the run's own estimate: "same call on a rerun"), or this runs out.
    /// Default: about two minutes (30 s with --quick); a longer budget buys narrower intervals
    /// and steadier calls.
    #[arg(long, global = true, value_parser = ringlab_runtime::duration::parse_duration)]
    pub budget: Option<std::time::Duration>,
    /// compare: offered loads, in percent of the slowest backend's measured capacity.
    #[arg(long, global = true, value_delimiter = ',')]
    pub loads: Option<Vec<f64>>,
    /// compare: run the rows one after another (each alone on the server CPUs, interleaved by
    /// repetition) instead of side by side. Side by side (the default) runs every row's server
    /// at the same time, each with its own client, measured over one window, so the host's
    /// noise is common to all of them and cancels in their ratios.
    #[arg(long, global = true)]
    pub sequential: bool,
    /// c10k: how the holder processes make and keep the idle connections: fds (a descriptor
    /// each, so a process per `ulimit -n` of them) or uring-direct (io_uring direct
    /// descriptors, IORING_OP_SOCKET into fixed-file tables: up to 500,000 per process;
    /// Linux 6.11). A comma list measures every row once per mode. Default: uring-direct where
    /// the kernel has it, else fds. (`hold` takes one.)
    #[arg(long, global = true, value_delimiter = ',')]
    pub holder_io: Option<Vec<String>>,
    /// compare: the server's CPU cap for the server-bound capacity, as a share of one CPU (side
    /// by side, the rows' servers get an equal part of it each, in cgroups of their own).
    #[arg(long, global = true, default_value_t = 0.5)]
    pub server_share: f64,
    /// A server of your own measured beside the backends, as NAME=COMMAND (repeatable): an
    /// echo server that listens on 127.0.0.1:{port}; `{port}`, `{cpu}` (the first server CPU)
    /// and `{cores}` (the server CPU list) are filled in; run with `sh -c`, pinned to the
    /// server CPUs, started fresh for every run, measured from outside like the backends (CPU
    /// over all its processes and threads), stopped by SIGTERM to its process group. Its rows
    /// are `peer:NAME`, compared against epoll. compare, latency, sizes and multiplex take
    /// peers (`all` runs them there); the others refuse --peer. A peer that fails to start, dies or answers wrongly is reported on one line and
    /// left out of later runs. `ringlab-bench peers build` makes two reference peers.
    #[arg(long, global = true, value_name = "NAME=COMMAND")]
    pub peer: Vec<String>,
    /// compare, coalesce: also record where the server's CPU goes with `perf record -e
    /// cpu-clock` on the server's CPUs (compare: one extra run per backend at the middle load;
    /// coalesce: per load, each backend at D = 0 and at the largest D, with idle and sleep/wake
    /// shares).
    #[arg(long, global = true)]
    pub profile: bool,
    /// Fleet mode: run the server on this host over SSH (a destination as `ssh` takes it,
    /// e.g. root@10.0.0.1); needs --client-hosts. Every scenario runs this way (c10k's and
    /// multiplex's holders and http's wrk on the client hosts, http's nginx row and files' data
    /// set on the server host; --profile records with perf on the server host; see
    /// kernel-notes/scale.md).
    #[arg(
        long,
        global = true,
        value_name = "SSH_DEST",
        help_heading = "Fleet (several hosts over SSH)"
    )]
    pub server_host: Option<String>,
    /// Fleet mode: the client hosts (comma list of SSH destinations); each runs
    /// `ringlab-client --processes K` (--client-processes) with its share of the connections
    /// and rate, all from one start instant.
    #[arg(
        long,
        global = true,
        value_delimiter = ',',
        value_name = "SSH_DEST",
        help_heading = "Fleet (several hosts over SSH)"
    )]
    pub client_hosts: Option<Vec<String>>,
    /// Fleet mode: an ssh/scp option (`-o OPTION`, e.g. IdentityFile=~/.ssh/bench or
    /// Port=2222), repeatable. BatchMode=yes is always set; keys come from the agent or ~/.ssh.
    #[arg(
        long,
        global = true,
        value_name = "OPTION",
        help_heading = "Fleet (several hosts over SSH)"
    )]
    pub ssh_option: Vec<String>,
    /// Fleet mode: the address the clients connect to [default: the host of --server-host].
    #[arg(
        long,
        global = true,
        value_name = "HOST",
        help_heading = "Fleet (several hosts over SSH)"
    )]
    pub server_addr: Option<String>,
    /// Fleet mode: the port the server listens on, on every address of its host (for a
    /// firewall that opens one port) [default: any free port, read from its ready line].
    #[arg(
        long,
        global = true,
        value_name = "PORT",
        help_heading = "Fleet (several hosts over SSH)"
    )]
    pub server_port: Option<u16>,
    /// Fleet mode: copy the binaries to every host even where a matching build is installed.
    #[arg(long, global = true, help_heading = "Fleet (several hosts over SSH)")]
    pub install: bool,
    /// Fleet mode: where each host's per-run directory (binaries, outputs) is made.
    #[arg(
        long,
        global = true,
        default_value = "/tmp",
        value_name = "DIR",
        help_heading = "Fleet (several hosts over SSH)"
    )]
    pub remote_dir: String,
    /// Fleet mode: keep each host's per-run directory afterwards.
    #[arg(long, global = true, help_heading = "Fleet (several hosts over SSH)")]
    pub keep: bool,
    /// Fleet mode: refuse to run when a host's clock is further than this from ours
    /// (measured over SSH before the first run).
    #[arg(long, global = true, default_value = "50ms", value_parser = ringlab_runtime::duration::parse_duration, help_heading = "Fleet (several hosts over SSH)")]
    pub max_clock_offset: std::time::Duration,
}
