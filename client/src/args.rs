//! The command line, and its resolution into a [`RunConfig`] (addresses resolved, CPUs checked,
//! the request built once).

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use ringlab_runtime::cpus::{available_cpus, even_shares, CpuList, CpuSpec};

/// The client's own IO model (the same techniques as the server's backends).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Io {
    /// io_uring: connect, multishot recv into a provided-buffer ring, owned-buffer sends, one
    /// io_uring_enter per loop turn, SINGLE_ISSUER + DEFER_TASKRUN.
    Uring,
    /// epoll: edge-triggered, read until EAGAIN into one buffer per loop, write at once.
    Epoll,
}

impl Io {
    /// The name used on the command line and in output.
    pub fn name(self) -> &'static str {
        match self {
            Io::Uring => "uring",
            Io::Epoll => "epoll",
        }
    }
}

/// The protocol spoken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtoArg {
    /// Fixed-size messages (--size) that must come back byte for byte.
    Echo,
    /// HTTP/1.1 requests (--method, --path, --header, --body) with keep-alive.
    Http,
}

impl ProtoArg {
    /// The name used on the command line and in output.
    pub fn name(self) -> &'static str {
        match self {
            ProtoArg::Echo => "echo",
            ProtoArg::Http => "http",
        }
    }
}

/// ringlab-client: a load generator for ringlab-server (and any echo or HTTP/1.1 server).
///
/// Closed loop by default: every connection keeps --pipeline requests in flight. With --rate,
/// open loop: requests are sent on a fixed schedule, and latency is measured from the time each
/// request was meant to be sent (coordinated omission corrected, as wrk2 does), next to the raw
/// latency measured from the actual send.
///
/// Exit codes: 0 ok; 1 data errors (echo mismatch, malformed response) or no successful
/// request; 2 usage or setup error.
#[derive(Parser, Debug, Clone)]
// Later occurrences of a flag override earlier ones: `--processes` workers get the user's
// command line with their shares appended.
#[command(
    name = "ringlab-client",
    version,
    about,
    long_about,
    args_override_self = true,
    after_help = "Shell completions: `ringlab-client completions bash|zsh|fish|elvish|powershell` \
                  (bash: `source <(ringlab-client completions bash)`). \
                  Man page: `ringlab-client man` (read it with `ringlab-client man | man -l -`)."
)]
pub struct Args {
    /// Server address: `HOST:PORT`, or `http://HOST:PORT/PATH` (sets --path).
    #[arg(value_name = "ADDR")]
    pub target: String,
    /// Protocol.
    #[arg(long, value_enum, default_value_t = ProtoArg::Echo)]
    pub proto: ProtoArg,
    /// Start at this wall-clock instant (Unix time in milliseconds): set up the loops and
    /// connections' machinery, then wait for it before the warm-up begins, so several clients
    /// (on one host or many, e.g. ringlab-bench --client-hosts) measure from one instant. With
    /// --processes every process waits for it. More than a second in the past is an error (a
    /// clock off, or a start that came too late); at most an hour ahead.
    #[arg(long, value_name = "UNIX_MS")]
    pub start_at: Option<u64>,
    /// Connections in all (spread evenly over the --cores loops).
    #[arg(short = 'c', long, default_value_t = 64)]
    pub conns: usize,
    /// CPUs to run one pinned loop on each: `0`, `0-3`, `0,2,4` or `all` [default: the last
    /// available CPU, since the server defaults to CPU 0].
    #[arg(long)]
    pub cores: Option<CpuSpec>,
    /// Keep one thread per listed CPU but do not pin them.
    #[arg(long)]
    pub no_pin: bool,
    /// The client's own IO model.
    #[arg(long, value_enum, default_value_t = Io::Uring)]
    pub io: Io,
    /// How long to measure (after --warmup), e.g. 10s, 500ms, 1m.
    #[arg(short = 'd', long, value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// Stop after this many requests (after --warmup) instead of after a duration.
    #[arg(short = 'n', long)]
    pub requests: Option<u64>,
    /// Run this long before measuring; nothing from it enters the results (errors still count).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Open new connections at most this many per second in all (a ramp); 0 = at once.
    #[arg(long, default_value_t = 0.0)]
    pub connect_rate: f64,
    /// A request (or connect) not answered within this time counts as a timeout and its
    /// connection is closed and reopened.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    pub timeout: Duration,
    /// Requests each connection keeps in flight (closed loop), or may have in flight (open loop).
    #[arg(short = 'k', long, default_value_t = 1)]
    pub pipeline: usize,
    /// Open loop: send this many requests per second in all, on a fixed schedule.
    #[arg(short = 'R', long)]
    pub rate: Option<f64>,

    /// Echo: message size in bytes.
    #[arg(long, default_value_t = 64, help_heading = "echo")]
    pub size: usize,
    /// Echo: seed of the message contents.
    #[arg(long, default_value_t = 0x5eed, help_heading = "echo")]
    pub seed: u64,

    /// HTTP: request method.
    #[arg(long, default_value = "GET", help_heading = "http")]
    pub method: String,
    /// HTTP: request target (path and query).
    #[arg(long, help_heading = "http", conflicts_with = "paths")]
    pub path: Option<String>,
    /// HTTP: request targets, one a line (blank lines and lines starting with `#` are skipped):
    /// each connection sends them in turn, starting at its own offset (connection i of N at
    /// line i·L/N of L lines), and wraps around; a reconnected connection starts at its offset
    /// again. Every response is framed and checked as with --path.
    #[arg(long, value_name = "FILE", help_heading = "http")]
    pub paths: Option<PathBuf>,
    /// HTTP: extra header `Name: value` (repeatable).
    #[arg(short = 'H', long = "header", help_heading = "http")]
    pub headers: Vec<String>,
    /// HTTP: request body.
    #[arg(long, help_heading = "http")]
    pub body: Option<String>,
    /// HTTP: Host header value [default: ADDR's host and port].
    #[arg(long, help_heading = "http")]
    pub host: Option<String>,

    /// Source address, or an inclusive IPv4 range `A-B`, to bind connections to (round robin):
    /// each address has its own ephemeral ports, so a range lets one host open more
    /// connections than one address allows.
    #[arg(long, value_name = "ADDR[-ADDR]")]
    pub bind: Option<String>,

    /// Run the load from K client processes (this one and K-1 started from the same binary),
    /// for more connections than one process may hold: the descriptor ceiling is per process
    /// (`ulimit -n`; 20000 here, and not raisable), so K processes hold K times as many
    /// connections. --conns, --rate, --requests and --connect-rate are split among them, and
    /// --cores and --bind addresses are shared out (contiguous shares; with more processes
    /// than CPUs or addresses, one each round-robin, and processes SHARE CPUs). Every process
    /// gets the same --duration, --warmup and --timeout, and they start together. Results
    /// merge exactly: counts summed, latency histograms added (percentiles come from the
    /// merged histogram, never averaged), one --hist-log; the summary and --json look like a
    /// single run's plus a per-process breakdown. Exit code: the worst of them (a process
    /// killed by signal N counts as 128+N, as in the shell).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub processes: u16,
    /// Internal (set for --processes workers): the PID of the first process.
    #[arg(long, hide = true, requires = "worker_out")]
    pub worker_of: Option<u32>,
    /// Internal: this worker's index (the first process is 0).
    #[arg(long, hide = true, default_value_t = 0)]
    pub worker_index: u16,
    /// Internal: where this worker writes its unsummarised results.
    #[arg(long, hide = true)]
    pub worker_out: Option<PathBuf>,

    /// Write the full results (every percentile, every counter) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write an HdrHistogram interval log (V2 compressed, one interval a second, values in
    /// microseconds; untagged = corrected latency, `Tag=raw` = uncorrected in open loop).
    #[arg(long, value_name = "FILE")]
    pub hist_log: Option<PathBuf>,
    /// No live progress line (there is none anyway when stdout is not a terminal).
    #[arg(long)]
    pub no_progress: bool,

    /// uring: submission queue entries per loop.
    #[arg(long, default_value_t = 1024, help_heading = "io_uring")]
    pub sq_entries: u32,
    /// uring: completion queue entries per loop.
    #[arg(long, default_value_t = 8192, help_heading = "io_uring")]
    pub cq_entries: u32,
    /// uring: provided buffers per loop (a power of two).
    #[arg(long, default_value_t = 1024, help_heading = "io_uring")]
    pub buf_count: u16,
    /// uring: size of each provided buffer in bytes.
    #[arg(long, default_value_t = 16 * 1024, help_heading = "io_uring")]
    pub buf_size: u32,
    /// uring: COOP_TASKRUN instead of SINGLE_ISSUER + DEFER_TASKRUN (completions then run in
    /// any syscall the loop makes, not only in its waits).
    #[arg(long, help_heading = "io_uring")]
    pub no_defer_taskrun: bool,

    /// Coalesce wake-ups: a loop turn that woke for fewer than --coalesce-batch completions
    /// or events waits up to this long for more before it runs (e.g. 50us; 0: off): uring in
    /// the kernel (min_wait_usec, Linux 6.12), epoll with a precise sleep and a second wait that
    /// does not block. As the server's --coalesce; latency then includes up to this much.
    #[arg(long, value_parser = parse_duration, default_value = "0s", help_heading = "Wake-ups")]
    pub coalesce: Duration,
    /// With --coalesce: a turn with this many completions or events runs at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(2..=65536), help_heading = "Wake-ups")]
    pub coalesce_batch: u32,

    /// epoll: bytes of the one read buffer per loop.
    #[arg(long, default_value_t = 64 * 1024, help_heading = "epoll")]
    pub read_buf: usize,
    /// epoll: events fetched per epoll_wait.
    #[arg(long, default_value_t = 1024, help_heading = "epoll")]
    pub max_events: usize,
}

pub use ringlab_runtime::duration::parse_duration;

/// A usage or setup error: exit code 2, one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetupError(pub String);

fn setup(msg: impl Into<String>) -> SetupError {
    SetupError(msg.into())
}

/// The request each connection sends, built once.
#[derive(Clone, Debug)]
pub enum RequestKind {
    /// Echo messages of this size.
    Echo { size: usize, seed: u64 },
    /// HTTP requests, already encoded: one (--path), or one per line of --paths. A connection
    /// sends them in turn from its own offset ([`RequestKind::first_of`]).
    Http {
        requests: std::sync::Arc<[Bytes]>,
        head: bool,
        /// The connections they are spread over (--conns): connection `i` starts at request
        /// `i * requests.len() / spread`.
        spread: usize,
    },
}

impl RequestKind {
    /// The index of the first request connection `conn` sends.
    pub fn first_of(&self, conn: u64) -> usize {
        match self {
            RequestKind::Echo { .. } => 0,
            RequestKind::Http {
                requests, spread, ..
            } => {
                let spread = (*spread).max(1) as u64;
                ((conn % spread) * requests.len() as u64 / spread) as usize
            }
        }
    }
}

/// How far ahead `--start-at` may be.
pub const MAX_START_AHEAD: Duration = Duration::from_secs(3600);
/// How late a `--start-at` may be found and still start (at once).
pub const MAX_START_LATE: Duration = Duration::from_secs(1);

/// Wait until `at` (wall clock); an error if it passed more than [`MAX_START_LATE`] ago.
pub fn wait_until(at: SystemTime) -> Result<(), SetupError> {
    loop {
        let now = SystemTime::now();
        match at.duration_since(now) {
            // Sleep in slices of at most 100 ms so that a clock step is followed.
            Ok(left) if left > Duration::ZERO => {
                std::thread::sleep(left.min(Duration::from_millis(100)))
            }
            Ok(_) => return Ok(()),
            Err(late) if late.duration() <= MAX_START_LATE => return Ok(()),
            Err(late) => {
                return Err(setup(format!(
                    "--start-at was {} ms in the past when the client was ready (clocks apart, or started too late)",
                    late.duration().as_millis()
                )))
            }
        }
    }
}

/// Most lines a --paths file may have.
pub const MAX_PATHS: usize = 1_000_000;

/// The request targets of a --paths file: one a line, blank lines and `#` comments skipped;
/// each must start with '/' and hold no whitespace. One-line errors that name the line.
pub fn parse_paths(text: &str, file: &str) -> Result<Vec<String>, SetupError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        if !t.starts_with('/') || t.contains(char::is_whitespace) {
            return Err(setup(format!(
                "--paths {file}, line {}: {t:?} must start with '/' and contain no spaces",
                i + 1
            )));
        }
        if out.len() == MAX_PATHS {
            return Err(setup(format!(
                "--paths {file}: more than {MAX_PATHS} request targets"
            )));
        }
        out.push(t.to_string());
    }
    if out.is_empty() {
        return Err(setup(format!("--paths {file}: no request target in it")));
    }
    Ok(out)
}

/// What a run does, resolved and checked.
#[derive(Clone, Debug)]
pub struct RunConfig {
    pub target: SocketAddr,
    /// The target as given (for output).
    pub target_name: String,
    pub proto: ProtoArg,
    pub request: RequestKind,
    pub conns: usize,
    pub cpus: CpuList,
    pub pin: bool,
    pub io: Io,
    /// Measured time; `None` with `requests`.
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    pub warmup: Duration,
    pub connect_rate: Option<f64>,
    pub timeout: Duration,
    pub pipeline: usize,
    pub rate: Option<f64>,
    /// Source addresses, used round robin; empty = the kernel picks.
    pub bind: Vec<IpAddr>,
    pub json: Option<PathBuf>,
    pub hist_log: Option<PathBuf>,
    pub progress: bool,
    pub sq_entries: u32,
    pub cq_entries: u32,
    pub buf_count: u16,
    pub buf_size: u32,
    /// `--no-defer-taskrun`.
    pub defer_taskrun: bool,
    pub read_buf: usize,
    pub max_events: usize,
    /// `--coalesce` / `--coalesce-batch` (none when off).
    pub coalesce: Option<ringlab_runtime::poller::Coalesce>,
    /// `--processes`: client processes in all.
    pub processes: usize,
    /// `--start-at`: the wall-clock instant the run starts.
    pub start_at: Option<SystemTime>,
    /// Set in a `--processes` worker.
    pub worker: Option<WorkerRole>,
}

/// What a `--processes` worker is to its first process.
#[derive(Clone, Debug)]
pub struct WorkerRole {
    pub parent: u32,
    pub index: usize,
    /// Where its unsummarised results go.
    pub out: PathBuf,
}

impl RunConfig {
    /// Whether this is an open-loop (scheduled) run.
    pub fn open_loop(&self) -> bool {
        self.rate.is_some()
    }
}

/// Parse `ADDR` or `A-B` (inclusive, same family; IPv4 ranges only).
pub fn parse_bind(s: &str) -> Result<Vec<IpAddr>, String> {
    let bad =
        |why: &str| format!("--bind {s:?}: {why} (expected e.g. 127.0.0.1 or 127.0.0.1-127.0.0.8)");
    let parse_ip = |x: &str| {
        x.trim()
            .parse::<IpAddr>()
            .map_err(|_| bad("not an IP address"))
    };
    match s.split_once('-') {
        None => Ok(vec![parse_ip(s)?]),
        Some((a, b)) => match (parse_ip(a)?, parse_ip(b)?) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let (a, b) = (u32::from(a), u32::from(b));
                if a > b {
                    return Err(bad("range runs backwards"));
                }
                if b - a >= 65_536 {
                    return Err(bad("range larger than 65536 addresses"));
                }
                Ok((a..=b)
                    .map(|v| IpAddr::V4(std::net::Ipv4Addr::from(v)))
                    .collect())
            }
            _ => Err(bad("ranges are IPv4 only")),
        },
    }
}

impl Args {
    /// Check the arguments and resolve them into what a run needs.
    pub fn resolve(&self) -> Result<RunConfig, SetupError> {
        let (hostport, url_path) = split_target(&self.target)?;
        let target = hostport
            .to_socket_addrs()
            .map_err(|e| setup(format!("cannot resolve {hostport:?}: {e}")))?
            .next()
            .ok_or_else(|| setup(format!("{hostport:?} resolves to no address")))?;
        if self.conns == 0 {
            return Err(setup("--conns must be at least 1"));
        }
        if self.pipeline == 0 {
            return Err(setup("--pipeline must be at least 1"));
        }
        if self.coalesce > Duration::from_secs(1) {
            return Err(setup(
                "--coalesce is a wait of microseconds to milliseconds: at most 1s",
            ));
        }
        if self.cq_entries < self.sq_entries {
            return Err(setup(format!(
                "--cq-entries ({}) must be at least --sq-entries ({})",
                self.cq_entries, self.sq_entries
            )));
        }
        if self.size == 0 && self.proto == ProtoArg::Echo {
            return Err(setup("--size must be at least 1"));
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return Err(setup(
                    "--rate must be a positive number of requests per second",
                ));
            }
        }
        if !(self.connect_rate.is_finite() && self.connect_rate >= 0.0) {
            return Err(setup("--connect-rate must be a non-negative number"));
        }
        if self.requests == Some(0) {
            return Err(setup("--requests must be at least 1"));
        }
        if self.timeout.is_zero() {
            return Err(setup("--timeout must be positive"));
        }
        if !self.buf_count.is_power_of_two() {
            return Err(setup(format!(
                "--buf-count must be a power of two (got {})",
                self.buf_count
            )));
        }
        let cpus = match &self.cores {
            Some(spec) => spec.resolve().map_err(|e| setup(format!("--cores: {e}")))?,
            None => {
                let all = available_cpus();
                CpuList::from_ids(all.ids().last().copied())
            }
        };
        if cpus.is_empty() {
            return Err(setup("--cores: no CPU to run on"));
        }
        if self.processes <= 1 && self.conns < cpus.len() {
            return Err(setup(format!(
                "--conns {} is fewer than the {} loops of --cores {cpus}; give each loop a connection",
                self.conns,
                cpus.len()
            )));
        }
        if self.worker_of.is_some() && self.processes > 1 {
            return Err(setup("--worker-of is internal to --processes; drop it"));
        }
        if self.worker_of.is_none() && self.worker_out.is_some() {
            return Err(setup("--worker-out is internal to --processes; drop it"));
        }
        let processes = usize::from(self.processes);
        if processes > 1 {
            let conns = even_shares(self.conns, processes);
            for (i, share) in cpus.shares(processes).iter().enumerate() {
                if conns[i] < share.len() {
                    return Err(setup(format!(
                        "--conns {} over --processes {processes} gives process {i} {} connections for its {} loops (CPUs {share}); use more --conns",
                        self.conns,
                        conns[i],
                        share.len()
                    )));
                }
            }
            if self.requests.is_some_and(|n| n < processes as u64) {
                return Err(setup("--requests must be at least --processes"));
            }
        }
        let start_at = match self.start_at {
            Some(ms) => {
                let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
                if t.duration_since(SystemTime::now())
                    .is_ok_and(|ahead| ahead > MAX_START_AHEAD)
                {
                    return Err(setup(format!(
                        "--start-at {ms} is more than an hour ahead of this host's clock"
                    )));
                }
                Some(t)
            }
            None => None,
        };
        let bind = match &self.bind {
            Some(b) => parse_bind(b).map_err(setup)?,
            None => Vec::new(),
        };
        if bind.iter().any(|b| b.is_ipv4() != target.is_ipv4()) {
            return Err(setup(
                "--bind addresses must be of the target's address family",
            ));
        }
        let request = match self.proto {
            ProtoArg::Echo => RequestKind::Echo {
                size: self.size,
                seed: self.seed,
            },
            ProtoArg::Http => {
                let paths = match &self.paths {
                    Some(file) => {
                        let name = file.display().to_string();
                        let text = std::fs::read_to_string(file)
                            .map_err(|e| setup(format!("--paths {name}: {e}")))?;
                        parse_paths(&text, &name)?
                    }
                    None => {
                        let path = self
                            .path
                            .clone()
                            .or(url_path)
                            .unwrap_or_else(|| "/".to_string());
                        if !path.starts_with('/') || path.contains(char::is_whitespace) {
                            return Err(setup(format!(
                                "--path {path:?} must start with '/' and contain no spaces"
                            )));
                        }
                        vec![path]
                    }
                };
                if self.method.is_empty()
                    || !self
                        .method
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                {
                    return Err(setup(format!(
                        "--method {:?} is not an HTTP method token",
                        self.method
                    )));
                }
                let mut headers = Vec::new();
                for h in &self.headers {
                    let Some((k, v)) = h.split_once(':') else {
                        return Err(setup(format!("--header {h:?}: expected `Name: value`")));
                    };
                    let (k, v) = (k.trim(), v.trim());
                    if k.is_empty()
                        || k.contains(|c: char| c.is_whitespace() || c.is_control())
                        || v.contains(['\r', '\n'])
                    {
                        return Err(setup(format!("--header {h:?}: bad header name or value")));
                    }
                    if k.eq_ignore_ascii_case("content-length")
                        || k.eq_ignore_ascii_case("transfer-encoding")
                    {
                        return Err(setup(format!(
                            "--header {k}: set by the client from --body; leave it out"
                        )));
                    }
                    headers.push((k.to_string(), v.to_string()));
                }
                let host = self.host.clone().unwrap_or_else(|| hostport.clone());
                let body = self.body.clone().unwrap_or_default();
                let requests: Vec<Bytes> = paths
                    .iter()
                    .map(|path| {
                        let mut buf = BytesMut::new();
                        ringlab_proto::http::encode_request(
                            &mut buf,
                            &self.method,
                            path,
                            &host,
                            &headers,
                            body.as_bytes(),
                        );
                        buf.freeze()
                    })
                    .collect();
                RequestKind::Http {
                    requests: requests.into(),
                    head: self.method.eq_ignore_ascii_case("HEAD"),
                    spread: self.conns,
                }
            }
        };
        let duration = match (self.duration, self.requests) {
            (Some(d), _) if d.is_zero() => return Err(setup("--duration must be positive")),
            (Some(d), _) => Some(d),
            (None, Some(_)) => None,
            (None, None) => Some(Duration::from_secs(10)),
        };
        Ok(RunConfig {
            target,
            target_name: self.target.clone(),
            proto: self.proto,
            request,
            conns: self.conns,
            cpus,
            pin: !self.no_pin,
            io: self.io,
            duration,
            requests: self.requests,
            warmup: self.warmup,
            connect_rate: (self.connect_rate > 0.0).then_some(self.connect_rate),
            timeout: self.timeout,
            pipeline: self.pipeline,
            rate: self.rate,
            bind,
            json: self.json.clone(),
            hist_log: self.hist_log.clone(),
            progress: !self.no_progress,
            sq_entries: self.sq_entries,
            cq_entries: self.cq_entries,
            buf_count: self.buf_count,
            buf_size: self.buf_size,
            defer_taskrun: !self.no_defer_taskrun,
            read_buf: self.read_buf.max(512),
            max_events: self.max_events.max(1),
            coalesce: ringlab_runtime::poller::Coalesce::of(
                self.coalesce,
                self.coalesce_batch as usize,
            ),
            processes: usize::from(self.processes),
            start_at,
            worker: match (self.worker_of, &self.worker_out) {
                (Some(parent), Some(out)) => Some(WorkerRole {
                    parent,
                    index: usize::from(self.worker_index),
                    out: out.clone(),
                }),
                _ => None,
            },
        })
    }
}

/// `HOST:PORT` or `http://HOST:PORT/PATH` → (`HOST:PORT`, path).
fn split_target(t: &str) -> Result<(String, Option<String>), SetupError> {
    let t = t.trim();
    if let Some(rest) = t.strip_prefix("http://") {
        let (hp, path) = match rest.find('/') {
            Some(i) => (&rest[..i], Some(rest[i..].to_string())),
            None => (rest, None),
        };
        let hp = if hp
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            hp.to_string()
        } else {
            format!("{hp}:80")
        };
        return Ok((hp, path));
    }
    if t.starts_with("https://") {
        return Err(setup("https is not supported; use http:// or HOST:PORT"));
    }
    if t.rsplit_once(':')
        .is_none_or(|(_, p)| p.parse::<u16>().is_err())
    {
        return Err(setup(format!(
            "{t:?}: expected HOST:PORT (e.g. 127.0.0.1:9527) or http://HOST:PORT/PATH"
        )));
    }
    Ok((t.to_string(), None))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("7").is_err(), "a bare number needs a unit");
        assert_eq!(parse_duration("50us").unwrap(), Duration::from_micros(50));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5y").is_err());
        assert!(parse_duration("1e9s").is_err());
    }

    #[test]
    fn start_at_bounds() {
        let now_ms = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let at = |ms: u64| {
            Args::parse_from(["c", "127.0.0.1:1", "--start-at", &ms.to_string()]).resolve()
        };
        let c = at(now_ms + 200).unwrap();
        assert_eq!(
            c.start_at,
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(now_ms + 200))
        );
        assert!(at(now_ms + 2 * 3600 * 1000)
            .unwrap_err()
            .0
            .contains("more than an hour ahead"));
        // Waiting: a time just ahead is waited for; one long past is an error.
        let t0 = std::time::Instant::now();
        wait_until(SystemTime::now() + Duration::from_millis(150)).unwrap();
        assert!(
            t0.elapsed() >= Duration::from_millis(140),
            "{:?}",
            t0.elapsed()
        );
        wait_until(SystemTime::now() - Duration::from_millis(500)).unwrap();
        let e = wait_until(SystemTime::now() - Duration::from_secs(5)).unwrap_err();
        assert!(e.0.contains("in the past"), "{e}");
    }

    #[test]
    fn bind_ranges() {
        assert_eq!(parse_bind("127.0.0.1").unwrap().len(), 1);
        let r = parse_bind("127.0.0.1-127.0.0.8").unwrap();
        assert_eq!(r.len(), 8);
        assert_eq!(r[7], "127.0.0.8".parse::<IpAddr>().unwrap());
        assert!(parse_bind("127.0.0.9-127.0.0.1").is_err());
        assert!(parse_bind("::1-::2").is_err());
        assert!(parse_bind("nope").is_err());
    }

    #[test]
    fn targets() {
        assert_eq!(
            split_target("http://127.0.0.1:8080/x?y").unwrap(),
            ("127.0.0.1:8080".to_string(), Some("/x?y".to_string()))
        );
        assert_eq!(
            split_target("http://localhost").unwrap(),
            ("localhost:80".to_string(), None)
        );
        assert!(split_target("127.0.0.1").is_err());
        assert!(split_target("https://x:1").is_err());
    }

    #[test]
    fn resolves_defaults() {
        let a = Args::parse_from(["ringlab-client", "127.0.0.1:1"]);
        let c = a.resolve().unwrap();
        assert_eq!(c.duration, Some(Duration::from_secs(10)));
        assert_eq!(c.cpus.len(), 1);
        assert!(!c.open_loop());
        let a = Args::parse_from(["ringlab-client", "127.0.0.1:1", "--conns", "0"]);
        assert!(a.resolve().is_err());
        let a = Args::parse_from([
            "ringlab-client",
            "127.0.0.1:1",
            "--proto",
            "http",
            "-H",
            "bad",
        ]);
        assert!(a.resolve().is_err());
    }

    #[test]
    fn paths_file_one_target_a_line() {
        let p = parse_paths("# hot files\n/files/a\n\n  /files/b?x=1  \n", "f").unwrap();
        assert_eq!(p, ["/files/a", "/files/b?x=1"]);
        let e = parse_paths("/ok\nfiles/no-slash\n", "f").unwrap_err().0;
        assert_eq!(
            e,
            "--paths f, line 2: \"files/no-slash\" must start with '/' and contain no spaces"
        );
        assert!(parse_paths("/a b\n", "f").is_err());
        assert!(parse_paths("# nothing\n\n", "f")
            .unwrap_err()
            .0
            .contains("no request target"));

        let file = std::env::temp_dir().join(format!("ringlab-paths-{}.txt", std::process::id()));
        std::fs::write(&file, "/files/0\n/files/1\n/files/2\n/files/3\n").unwrap();
        let f = file.to_str().unwrap();
        let a = Args::parse_from([
            "c",
            "127.0.0.1:1",
            "--proto",
            "http",
            "--paths",
            f,
            "-c",
            "2",
        ]);
        let c = a.resolve().unwrap();
        std::fs::remove_file(&file).unwrap();
        let RequestKind::Http {
            requests, spread, ..
        } = &c.request
        else {
            panic!("not http");
        };
        assert_eq!((requests.len(), *spread), (4, 2));
        assert!(requests[3].starts_with(b"GET /files/3 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n"));
        // Connection 0 starts at line 0, connection 1 half way, connection 2 (of 2) wraps.
        assert_eq!(c.request.first_of(0), 0);
        assert_eq!(c.request.first_of(1), 2);
        assert_eq!(c.request.first_of(2), 0);
        // --path and --paths exclude each other; a missing file is one line.
        assert!(Args::try_parse_from(["c", "127.0.0.1:1", "--path", "/", "--paths", f]).is_err());
        let e = Args::parse_from(["c", "127.0.0.1:1", "--proto", "http", "--paths", f])
            .resolve()
            .unwrap_err()
            .0;
        assert!(e.starts_with(&format!("--paths {f}: ")), "{e}");
    }
}
