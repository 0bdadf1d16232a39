//! Server configuration: the command line (clap) and what the loops share.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use ringlab_proto::{Proto, ServerConfig};
use ringlab_runtime::cpus::CpuSpec;

/// IO backends. Every one runs the same protocol code; they differ only in how they do IO.
/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `--fixed-placement`: which of a loop's rings takes a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Placement {
    /// The first ring with room.
    Fill,
    /// The rings in turn (skipping full ones).
    Spread,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Io {
    /// io_uring completion model (raw io-uring crate): multishot accept, multishot recv into a
    /// provided-buffer ring, owned-buffer sends, one io_uring_enter per loop turn,
    /// SINGLE_ISSUER + DEFER_TASKRUN.
    Uring,
    /// epoll readiness model: edge-triggered, accept/read until EAGAIN, write at once.
    Epoll,
    /// One tokio-uring runtime per CPU: io_uring through an ergonomic async runtime.
    TokioUring,
    /// tokio's multi-thread work-stealing runtime (epoll via mio), one worker per CPU.
    Tokio,
    /// A pool of --workers OS threads doing blocking IO, one connection per worker at a time.
    Blocking,
    /// poll(2) readiness: the epoll loop's level-triggered discipline over a pollfd array that
    /// the kernel walks whole on every wait.
    Poll,
    /// select(2) readiness: as poll, over FD_SETSIZE-bit sets; refuses (closes) a connection whose
    /// descriptor is 1024 or more.
    Select,
}

impl Io {
    /// The name used on the command line and in output.
    pub fn name(self) -> &'static str {
        match self {
            Io::Uring => "uring",
            Io::Epoll => "epoll",
            Io::TokioUring => "tokio-uring",
            Io::Tokio => "tokio",
            Io::Blocking => "blocking",
            Io::Poll => "poll",
            Io::Select => "select",
        }
    }

    /// The short tag in thread names (`ringlab-<tag>-<cpu>`, within Linux's 15 bytes).
    pub fn thread_tag(self) -> &'static str {
        match self {
            Io::TokioUring => "tu",
            Io::Blocking => "blk",
            Io::Select => "sel",
            other => other.name(),
        }
    }

    /// Every backend, in the order reports list them.
    pub const ALL: [Io; 7] = [
        Io::Uring,
        Io::Epoll,
        Io::TokioUring,
        Io::Tokio,
        Io::Blocking,
        Io::Poll,
        Io::Select,
    ];

    /// Whether the backend needs io_uring.
    pub fn needs_uring(self) -> bool {
        matches!(self, Io::Uring | Io::TokioUring)
    }
}

/// How a readiness backend reads files (`--file-io`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FileIo {
    /// A pool of threads per loop does the file operations; an eventfd wakes the loop.
    Threads,
    /// pread(2) on the loop: a page-cache miss blocks the loop.
    Blocking,
    /// sendfile(2) from the file to the socket, on the loop.
    Sendfile,
}

impl FileIo {
    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            FileIo::Threads => "threads",
            FileIo::Blocking => "blocking",
            FileIo::Sendfile => "sendfile",
        }
    }
}

/// How listening sockets are spread over the loops.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AcceptMode {
    /// One SO_REUSEPORT listener per loop; the kernel spreads connections.
    Reuseport,
    /// One listener polled by every loop (EPOLLEXCLUSIVE for epoll).
    Shared,
}

/// Protocol, as given on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProtoArg {
    /// Every byte comes back unchanged.
    Echo,
    /// HTTP/1.1: GET / → Hello, World!; GET /delay/{ms}; POST /echo; 404 otherwise.
    Http,
}

impl ProtoArg {
    /// The name used on the command line and in the statistics.
    pub fn name(self) -> &'static str {
        match self {
            ProtoArg::Echo => "echo",
            ProtoArg::Http => "http",
        }
    }
}

/// ringlab-server: a thread-per-core TCP server with interchangeable IO backends.
///
/// One event loop per listed CPU, each pinned there and owning its ring or epoll instance,
/// connections, buffers and timers. Prints `ready listen=ADDR io=IO cores=LIST pid=N` once it
/// accepts connections (with --processes, followed by `processes=N pids=LIST`).
/// SIGINT/SIGTERM: stop accepting, finish responses in flight (up to --grace), print
/// statistics, exit 0; a second signal exits at once.
#[derive(Parser, Debug, Clone)]
#[command(
    name = "ringlab-server",
    version,
    about,
    long_about,
    after_help = "Shell completions: `ringlab-server completions bash|zsh|fish|elvish|powershell` \
                  (bash: `source <(ringlab-server completions bash)`). \
                  Man page: `ringlab-server man` (read it with `ringlab-server man | man -l -`)."
)]
pub struct Args {
    /// IO backend.
    #[arg(long, value_enum, default_value_t = Io::Uring)]
    pub io: Io,
    /// Protocol.
    #[arg(long, value_enum, default_value_t = ProtoArg::Echo)]
    pub proto: ProtoArg,
    /// Address to listen on (port 0 picks a free port; the ready line tells which).
    #[arg(long, default_value = "127.0.0.1:9527")]
    pub listen: SocketAddr,
    /// CPUs to run one loop on each: `0`, `0-3`, `0,2,4` or `all`.
    #[arg(long, default_value = "0")]
    pub cores: CpuSpec,
    /// Keep one thread per listed CPU but do not pin them.
    #[arg(long)]
    pub no_pin: bool,
    /// Listener per loop (reuseport) or one shared listener.
    #[arg(long, value_enum, default_value_t = AcceptMode::Reuseport)]
    pub accept: AcceptMode,
    /// Echo: hold every received chunk this long before sending it back (e.g. 100ms).
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub delay: Duration,
    /// Burn this much CPU on the loop per request (e.g. 50us), as a blocking handler would.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub work: Duration,
    /// On SIGINT/SIGTERM, wait at most this long for responses in flight.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    pub grace: Duration,
    /// Write statistics as JSON to this file on exit.
    #[arg(long)]
    pub stats_json: Option<std::path::PathBuf>,
    /// Serve live metrics at http://ADDR/metrics in the Prometheus text format (per core and
    /// for the whole server: requests, bytes, connections, timeouts, syscalls by kind, io_uring
    /// counters, a histogram of request service time in the loop), from a thread outside the
    /// loops; each loop copies its counters there once per turn. E.g. 127.0.0.1:9100 (port 0
    /// picks one: the ready line says which). Not with --processes.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// How log lines on stderr are written: text, or json (one object a line). RUST_LOG
    /// filters them (default: info). The ready line and the exit statistics on stdout are the
    /// same either way.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Stop reading from a connection while this many bytes wait to be sent to it.
    #[arg(long, default_value_t = 256 * 1024)]
    pub out_high_water: usize,
    /// HTTP: largest request head (request line + headers) in bytes; larger → 431.
    #[arg(long, default_value_t = 8 * 1024)]
    pub max_head: usize,
    /// HTTP: most header fields in a request; more → 431.
    #[arg(long, default_value_t = 64)]
    pub max_headers: usize,
    /// HTTP: largest request body in bytes; larger → 413.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_body: usize,
    /// Most connections open at once (the whole server, all loops). Beyond it, echo stops
    /// accepting until a connection closes (new clients wait in the listen backlog); HTTP
    /// accepts, answers `503 Service Unavailable` with `Connection: close`, and closes.
    /// Counted as `limit_pauses` (echo) and `refused` (HTTP) in the statistics.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_conns: u64,
    /// HTTP: a request head must arrive within this long of the connection opening (or of its
    /// first byte, for later requests on the connection). Then: with part of a head received,
    /// `408 Request Timeout` and close; with nothing received, close without a response.
    /// 0s: no limit.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub header_timeout: Duration,
    /// Close a connection on which no byte went either way for this long (HTTP: a keep-alive
    /// connection with nothing in flight; echo: no bytes in either direction). Output held by
    /// --delay or /delay/{ms} does not count as idle. With nothing owed to the peer the close
    /// is graceful (FIN); output the peer has not read for this long is dropped (reset).
    /// 0s: no limit.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub idle_timeout: Duration,
    /// HTTP: requests per connection; the last response carries `Connection: close` and the
    /// connection closes after it. 0: no limit.
    #[arg(long, default_value_t = 0)]
    pub max_requests: u64,
    /// HTTP: serve the files beneath DIR at `GET`/`HEAD /files/<path>` (Content-Type by
    /// extension, Last-Modified and If-Modified-Since, one `Range: bytes=` range). Paths are
    /// opened beneath DIR with openat2(RESOLVE_BENEATH): `..`, encoded dots, NUL and symlinks
    /// leading out of DIR are refused (400 or 403); directories are not listed (403).
    #[arg(long, value_name = "DIR", help_heading = "Files")]
    pub root: Option<std::path::PathBuf>,
    /// Files, epoll/poll/select: how the readiness loop reads them. `threads` hands every file
    /// operation to a pool of --file-threads threads per loop, which wakes the loop when done
    /// (nginx's `aio threads`); `blocking` does them on the loop (a read that misses the page
    /// cache stalls every connection of that loop); `sendfile` sends file bytes to the socket
    /// with sendfile(2) (no copy through user space, but it too blocks the loop on a miss).
    /// uring always uses its ring; tokio its blocking pool; tokio-uring its own file API; the
    /// blocking backend plain reads.
    /// [default for epoll, poll and select: threads]
    #[arg(long, value_enum, help_heading = "Files")]
    pub file_io: Option<FileIo>,
    /// Files, --file-io threads: threads per loop. tokio: its blocking pool, which does the
    /// file IO, has at most this many threads per worker.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=256), help_heading = "Files")]
    pub file_threads: u32,
    /// Files: bytes one read asks for (and the most one send of file data carries).
    #[arg(long, default_value_t = 64 * 1024, value_parser = clap::value_parser!(u32).range(512..=16 * 1024 * 1024), help_heading = "Files")]
    pub file_chunk: u32,
    /// Files, uring: file operations in flight per loop at most (the disk's queue from one
    /// loop); more wait in the loop's queue.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096), help_heading = "Files")]
    pub file_inflight: u32,
    /// Files, uring and epoll/poll/select (every --file-io): open files each loop keeps, by
    /// path, with their size and modification time (nginx's `open_file_cache`), so that a hot
    /// file is served without an open and a stat per request. 0: off. The tokio, tokio-uring
    /// and blocking backends have no cache and ignore it.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(0..=1_000_000), help_heading = "Files")]
    pub file_cache: u32,
    /// Files, --file-cache: how long a cached file is trusted (nginx's
    /// `open_file_cache_valid`). Within it a file changed in place is served with the size and
    /// time it had when opened (one that shrank ends its response short and the connection
    /// closes), and one renamed over or deleted keeps being served from the old descriptor;
    /// after it the path is opened and stated anew.
    #[arg(long, value_parser = parse_duration, default_value = "1s", help_heading = "Files")]
    pub file_cache_valid: Duration,
    /// Files, uring: read into N buffers of --file-chunk bytes registered with each ring
    /// (IORING_OP_READ_FIXED), and send the bytes from there without a copy. A read waits in
    /// the loop's queue for a free buffer; a buffer is free again once its bytes are sent, so
    /// N bounds reads in flight plus file data waiting for slow peers (a peer that does not
    /// read holds up to --out-high-water of it until it reads, leaves or times out). The
    /// buffers are locked memory, N x --file-chunk per loop, counted against RLIMIT_MEMLOCK
    /// (ulimit -l) without CAP_IPC_LOCK. 0: off (reads into fresh buffers).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=16384), help_heading = "Files")]
    pub file_fixed_bufs: u16,
    /// blocking: number of worker threads (1 = the seed notes' synchronous server), spread
    /// round-robin over --cores.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Listen backlog (also the blocking backend's queue of accepted connections).
    #[arg(long, default_value_t = 4096)]
    pub backlog: i32,
    /// Run N server processes on one port (SO_REUSEPORT), each thread-per-core over its share
    /// of --cores.
    ///
    /// What it is for: the descriptor ceiling is per process (`ulimit -n`; 20000 here, and not
    /// raisable), and every epoll connection takes a slot in it, so N processes hold N times
    /// as many connections. (io_uring --fixed-files connections take no slot.)
    ///
    /// CPUs are split in contiguous shares (`--cores 0-3 --processes 2`: 0,1 and 2,3). With
    /// more processes than CPUs each process gets one CPU, round-robin, and processes SHARE
    /// CPUs (`--cores 0,1 --processes 4`: 0, 1, 0, 1), each pinned to its own.
    ///
    /// The first process binds every listener, starts the others (this binary, the same
    /// arguments), prints one ready line ending `processes=N pids=FIRST,..`, forwards
    /// SIGINT/SIGTERM to them, and prints (and --stats-json writes) their summed statistics
    /// with a per-process breakdown. If one dies, it names it, stops the rest and exits
    /// non-zero (the worst code of the group; killed by signal N counts as 128+N); the others
    /// die with the first.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub processes: u16,
    /// Internal (set by the first process for the others): the PID of the first process.
    #[arg(long, hide = true, requires = "listen_fds")]
    pub worker_of: Option<u32>,
    /// Internal: this worker's index among the processes (the first process is 0).
    #[arg(long, hide = true, default_value_t = 0)]
    pub worker_index: u16,
    /// Internal: inherited listening sockets (descriptor numbers), one per loop or one shared.
    #[arg(long, hide = true, value_delimiter = ',')]
    pub listen_fds: Vec<i32>,

    /// uring: submission queue entries.
    #[arg(long, default_value_t = 1024, help_heading = "io_uring")]
    pub sq_entries: u32,
    /// uring: completion queue entries.
    #[arg(long, default_value_t = 8192, help_heading = "io_uring")]
    pub cq_entries: u32,
    /// uring: provided buffers per loop (a power of two).
    #[arg(long, default_value_t = 1024, help_heading = "io_uring")]
    pub buf_count: u16,
    /// uring: size of each provided buffer in bytes.
    #[arg(long, default_value_t = 16 * 1024, help_heading = "io_uring")]
    pub buf_size: u32,
    /// uring: arm a single-shot accept per connection instead of one multishot accept.
    #[arg(long, help_heading = "io_uring")]
    pub no_multishot_accept: bool,
    /// uring: single-shot recv into a per-connection buffer instead of multishot recv into the
    /// provided-buffer ring (each connection then owns a --buf-size buffer while it is open).
    #[arg(long, help_heading = "io_uring")]
    pub no_multishot_recv: bool,
    /// uring: do not give multishot recvs a total byte limit (sqe->optlen, the room left below
    /// --out-high-water); under backpressure use single-shot receives instead, as on kernels
    /// without the limit.
    #[arg(long, help_heading = "io_uring")]
    pub no_recv_limit: bool,
    /// uring: COOP_TASKRUN instead of SINGLE_ISSUER + DEFER_TASKRUN.
    #[arg(long, help_heading = "io_uring")]
    pub no_defer_taskrun: bool,
    /// uring: do not register the ring fd.
    #[arg(long, help_heading = "io_uring")]
    pub no_register_ring_fd: bool,
    /// uring: hold accepted connections as direct (fixed) descriptors: multishot accept
    /// allocates them in each ring's sparse file table and recv/send/close use the table, so
    /// no per-operation fd lookup and no slot in the process descriptor table (Linux 5.19).
    /// Graceful shutdown then goes through IORING_OP_SHUTDOWN (an io-wq hop).
    #[arg(long, help_heading = "io_uring")]
    pub fixed_files: bool,
    /// uring: entries of each ring's fixed-file table with --fixed-files (0: the soft
    /// RLIMIT_NOFILE, the most the kernel allows); beyond it accepts fail with ENFILE and back off.
    #[arg(long, default_value_t = 0, help_heading = "io_uring")]
    pub fixed_table: u32,
    /// uring with --fixed-files: hold each loop's connections in N rings' fixed-file tables
    /// instead of one, so that one loop (one thread, one process) holds N × --fixed-table
    /// connections. The kernel caps a table at the soft RLIMIT_NOFILE, so this is how a single
    /// process gets past the descriptor ceiling without running more processes.
    ///
    /// How: the loop sleeps on its first ring; every other ring (COOP_TASKRUN, so its task work
    /// runs in the thread's next syscall) signals an eventfd (IORING_REGISTER_EVENTFD) that the
    /// first ring polls, and the loop takes that ring's completions; it enters another ring
    /// only to submit to it. A connection's operations all go to its own ring.
    /// Accepts arrive as descriptors and are moved into a table with room
    /// (IORING_REGISTER_FILES_UPDATE, then close), placed by --fixed-placement. Each ring has
    /// its own provided-buffer ring of --buf-count ÷ N buffers (a power of two, at least 64).
    /// Not with --sqpoll (a polling thread per ring).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=4096), help_heading = "io_uring")]
    pub fixed_rings: u16,
    /// uring with --fixed-rings: which ring a new connection goes to: fill (the first with
    /// room: connections opened together share a ring, and a turn enters few rings) or spread
    /// (the rings in turn: busy connections are spread over every ring, the costly case).
    #[arg(long, value_enum, default_value_t = Placement::Fill, help_heading = "io_uring")]
    pub fixed_placement: Placement,
    /// uring: IORING_SETUP_SQPOLL: a kernel thread per ring polls the SQ, so submissions need no
    /// syscall (io_uring_enter is still used to wait). Uses COOP_TASKRUN, as DEFER_TASKRUN cannot
    /// be combined with SQPOLL. The thread runs on --sqpoll-cpu.
    #[arg(long, help_heading = "io_uring")]
    pub sqpoll: bool,
    /// uring: how long the SQPOLL thread spins without work before it sleeps (e.g. 10ms).
    #[arg(long, value_parser = parse_duration, default_value = "10ms", help_heading = "io_uring")]
    pub sqpoll_idle: Duration,
    /// uring: CPU for the SQPOLL threads (default: each ring's own loop CPU, so the server
    /// uses no more CPUs than --cores lists).
    #[arg(long, help_heading = "io_uring")]
    pub sqpoll_cpu: Option<u32>,
    /// uring: send payloads of at least this many bytes with IORING_OP_SEND_ZC (zero copy,
    /// Linux 6.0; the buffer is held until the kernel's notification). 0: never.
    #[arg(long, default_value_t = 0, help_heading = "io_uring")]
    pub send_zc: usize,
    /// uring: multishot recv bundles (IORING_RECVSEND_BUNDLE, Linux 6.10): one completion
    /// carries several provided buffers.
    #[arg(long, help_heading = "io_uring")]
    pub recv_bundle: bool,
    /// uring: incremental provided-buffer consumption (IOU_PBUF_RING_INC, Linux 6.12): a
    /// receive takes only the part of a buffer it fills, so large buffers are shared by many
    /// small reads. Use with a larger --buf-size (e.g. 65536).
    #[arg(long, help_heading = "io_uring")]
    pub buf_incremental: bool,
    /// uring: NAPI busy poll for this long per wait (IORING_REGISTER_NAPI, Linux 6.9), e.g.
    /// 50us; it needs a device with NAPI (not loopback). 0: off.
    #[arg(long, value_parser = parse_duration, default_value = "0s", help_heading = "io_uring")]
    pub napi_busy_poll: Duration,

    /// epoll: bytes of the one read buffer per loop.
    #[arg(long, default_value_t = 64 * 1024, help_heading = "epoll")]
    pub read_buf: usize,
    /// Coalesce wake-ups: a loop turn that woke for fewer than --coalesce-batch completions
    /// or events waits up to this long for more before it runs (e.g. 50us; 0: off). uring:
    /// in the kernel, in the same io_uring_enter (min_wait_usec, Linux 6.12); epoll, poll and
    /// select: a precise sleep of that long, then a wait that does not block, merged (epoll has
    /// no minimum wait). Fewer wake-ups at moderate load, at the price of up to this much
    /// latency. Not for the pool backends.
    #[arg(long, value_parser = parse_duration, default_value = "0s", help_heading = "Wake-ups")]
    pub coalesce: Duration,
    /// With --coalesce: a turn with this many completions or events runs at once.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(2..=65536), help_heading = "Wake-ups")]
    pub coalesce_batch: u32,
    /// epoll: events fetched per epoll_wait.
    #[arg(long, default_value_t = 1024, help_heading = "epoll")]
    pub max_events: usize,
    /// epoll: busy poll for this long in epoll_wait (EPIOCSPARAMS, Linux 6.9), e.g. 50us; it
    /// needs a device with NAPI (not loopback). 0: off.
    #[arg(long, value_parser = parse_duration, default_value = "0s", help_heading = "epoll")]
    pub busy_poll: Duration,
    /// epoll: level-triggered instead of edge-triggered: read once per readiness event and
    /// switch EPOLLIN/EPOLLOUT interest with EPOLL_CTL_MOD as the session needs them.
    #[arg(long, help_heading = "epoll")]
    pub level_triggered: bool,
}

pub use ringlab_runtime::duration::parse_duration;

impl Args {
    /// How a readiness loop reads files (`--file-io`, threads unless given).
    pub fn file_io(&self) -> FileIo {
        self.file_io.unwrap_or(FileIo::Threads)
    }

    /// Reject switches that do not apply to the chosen backend or cannot be combined, and
    /// switches the running kernel is too old for. One line each, naming the flag.
    pub fn validate(&self) -> Result<(), String> {
        if self.metrics.is_some() && self.processes > 1 {
            return Err("--metrics serves one process's loops: not with --processes (give each server process its own --metrics address by running them separately)".into());
        }
        if let Some(root) = &self.root {
            if self.proto != ProtoArg::Http {
                return Err("--root serves files over HTTP: add --proto http".into());
            }
            match std::fs::metadata(root) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(format!("--root {}: not a directory", root.display())),
                Err(e) => return Err(format!("--root {}: {e}", root.display())),
            }
        }
        if let Some(m) = self.file_io {
            if !matches!(self.io, Io::Epoll | Io::Poll | Io::Select) {
                return Err(format!(
                    "--file-io {} applies to --io epoll, poll and select; {} does its file IO its own way",
                    m.name(),
                    self.io.name()
                ));
            }
        }
        if self.cq_entries < self.sq_entries {
            return Err(format!(
                "--cq-entries ({}) must be at least --sq-entries ({})",
                self.cq_entries, self.sq_entries
            ));
        }
        let uring_only: [(&str, bool); 8] = [
            ("--fixed-files", self.fixed_files),
            ("--sqpoll", self.sqpoll),
            ("--send-zc", self.send_zc > 0),
            ("--recv-bundle", self.recv_bundle),
            ("--buf-incremental", self.buf_incremental),
            ("--napi-busy-poll", !self.napi_busy_poll.is_zero()),
            ("--fixed-table", self.fixed_table > 0),
            ("--file-fixed-bufs", self.file_fixed_bufs > 0),
        ];
        for (flag, set) in uring_only {
            if set && self.io != Io::Uring {
                return Err(format!("{flag} applies to --io uring only"));
            }
        }
        if !self.coalesce.is_zero()
            && !matches!(self.io, Io::Uring | Io::Epoll | Io::Poll | Io::Select)
        {
            return Err(format!(
                "--coalesce applies to --io uring, epoll, poll and select (not {})",
                self.io.name()
            ));
        }
        if self.coalesce > Duration::from_secs(1) {
            return Err("--coalesce is a wait of microseconds to milliseconds: at most 1s".into());
        }
        if !self.busy_poll.is_zero() && self.io != Io::Epoll {
            return Err("--busy-poll applies to --io epoll only".into());
        }
        if self.level_triggered && self.io != Io::Epoll {
            return Err(match self.io {
                Io::Poll | Io::Select => format!(
                    "--level-triggered applies to --io epoll only ({} is always level-triggered)",
                    self.io.name()
                ),
                _ => "--level-triggered applies to --io epoll only".into(),
            });
        }
        if self.file_fixed_bufs > 0 && self.root.is_none() {
            return Err("--file-fixed-bufs reads files: add --root".into());
        }
        if self.fixed_table > 0 && !self.fixed_files {
            return Err("--fixed-table needs --fixed-files".into());
        }
        if self.fixed_rings > 1 {
            if !self.fixed_files {
                return Err("--fixed-rings holds connections in fixed-file tables: add --fixed-files (and --io uring)".into());
            }
            if self.sqpoll {
                return Err("--fixed-rings cannot be combined with --sqpoll (each ring would need a polling thread)".into());
            }
        }
        if self.fixed_placement != Placement::Fill && self.fixed_rings == 1 {
            return Err(
                "--fixed-placement chooses among --fixed-rings: add --fixed-rings N (N > 1)".into(),
            );
        }
        if self.no_multishot_recv && (self.recv_bundle || self.buf_incremental) {
            return Err(
                "--recv-bundle and --buf-incremental need the provided-buffer ring; drop --no-multishot-recv"
                    .into(),
            );
        }
        if self.recv_bundle && self.buf_incremental {
            return Err("--recv-bundle and --buf-incremental cannot be combined".into());
        }
        if self.sqpoll_cpu.is_some() && !self.sqpoll {
            return Err("--sqpoll-cpu needs --sqpoll".into());
        }
        if let Some(cpu) = self.sqpoll_cpu {
            let avail = ringlab_runtime::cpus::available_cpus();
            if !avail.ids().contains(&(cpu as usize)) {
                return Err(format!(
                    "--sqpoll-cpu {cpu}: no such CPU available to this process (available: {avail})"
                ));
            }
        }
        if self.napi_busy_poll.as_micros() > u128::from(u32::MAX)
            || self.busy_poll.as_micros() > u128::from(u32::MAX)
        {
            return Err("busy-poll times must be below 4294 s".into());
        }
        let kernel = ringlab_runtime::uring::kernel_version();
        for (flag, set, needs) in [
            ("--fixed-files", self.fixed_files, (5, 19)),
            ("--send-zc", self.send_zc > 0, (6, 0)),
            ("--recv-bundle", self.recv_bundle, (6, 10)),
            ("--buf-incremental", self.buf_incremental, (6, 12)),
            ("--napi-busy-poll", !self.napi_busy_poll.is_zero(), (6, 9)),
            ("--busy-poll", !self.busy_poll.is_zero(), (6, 9)),
        ] {
            if set && (kernel.0, kernel.1) < needs {
                return Err(format!(
                    "{flag} needs Linux {}.{} or newer; this kernel is {}",
                    needs.0, needs.1, kernel.2
                ));
            }
        }
        Ok(())
    }

    /// The protocol settings every session shares.
    pub fn server_config(&self) -> ServerConfig {
        let mut c = ServerConfig {
            proto: match self.proto {
                ProtoArg::Echo => Proto::Echo,
                ProtoArg::Http => Proto::Http,
            },
            delay: self.delay,
            out_high_water: self.out_high_water.max(1),
            header_timeout: self.header_timeout,
            idle_timeout: self.idle_timeout,
            max_requests: self.max_requests,
            files: self.root.is_some(),
            file_chunk: self.file_chunk as usize,
            ..ServerConfig::default()
        };
        c.limits.max_head = self.max_head;
        c.limits.max_headers = self.max_headers;
        c.limits.max_body = self.max_body;
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("50us").unwrap(), Duration::from_micros(50));
        assert!(parse_duration("7").is_err(), "a bare number needs a unit");
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("200h").is_err(), "over 7 days");
        assert!(parse_duration("1e9s").is_err());
    }
}
