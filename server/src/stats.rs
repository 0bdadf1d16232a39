//! Per-loop statistics, summed at exit.

use serde::{Deserialize, Serialize};

use ringlab_runtime::stats::SyscallCounters;

/// What one loop did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct LoopStats {
    /// The CPU the loop ran on (pinned or not).
    pub cpu: usize,
    /// Completed requests (HTTP requests, or received chunks for echo).
    pub requests: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub accepted: u64,
    pub closed: u64,
    /// Accepts that failed (EMFILE, ENFILE, ...); the loop backed off.
    pub accept_errors: u64,
    /// Connections that ended in an error (reset, broken pipe).
    pub conn_errors: u64,
    pub syscalls: SyscallCounters,
    /// uring: multishot recvs that ended because the buffer ring was empty (re-armed).
    pub enobufs: u64,
    /// uring: multishot operations re-armed after they ended without IORING_CQE_F_MORE.
    pub multishot_rearms: u64,
    /// uring: short sends whose remainder was resubmitted.
    pub short_sends: u64,
    /// uring: turns at which the CQ had overflowed into the kernel's backlog (nothing lost).
    pub cq_overflows: u64,
    /// Times a connection's reading was paused because its output passed the high-water mark.
    pub backpressure_pauses: u64,
    /// uring --send-zc: zero-copy sends, and how many of them the kernel copied after all
    /// (`IORING_NOTIF_USAGE_ZC_COPIED`: on loopback every one is copied).
    pub zc_sends: u64,
    pub zc_copied: u64,
    /// uring --send-zc: zero-copy sends the kernel refused for want of lockable memory, sent
    /// again by copying (the loop then stops zero-copy sends).
    #[serde(default)]
    pub zc_fallbacks: u64,
    /// uring --recv-bundle: receive completions that carried more than one buffer.
    pub recv_bundles: u64,
    /// uring --buf-incremental: receive completions that left their buffer with the kernel
    /// for more (`IORING_CQE_F_BUF_MORE`).
    pub buf_partial: u64,
    /// HTTP: connections answered `503 Service Unavailable` at --max-conns.
    pub refused: u64,
    /// Echo: times a loop stopped accepting at --max-conns.
    pub limit_pauses: u64,
    /// HTTP: connections closed by --header-timeout.
    pub header_timeouts: u64,
    /// Connections closed by --idle-timeout.
    pub idle_timeouts: u64,
    /// Files (`--root`): files opened (or refused; cache hits not included), reads done (or `sendfile` calls), the
    /// bytes they moved, and operations that failed.
    #[serde(default)]
    pub file_opens: u64,
    #[serde(default)]
    pub file_reads: u64,
    #[serde(default)]
    pub file_bytes: u64,
    #[serde(default)]
    pub file_errors: u64,
    /// uring: file operations that waited in the loop's queue for room under
    /// `--file-inflight`.
    #[serde(default)]
    pub file_queued: u64,
    /// `--file-cache`: opens answered from the loop's cache of open files (not counted in
    /// `file_opens`, which counts the opens performed).
    #[serde(default)]
    pub file_cache_hits: u64,
    /// uring --file-fixed-bufs: reads into registered buffers (of `file_reads`).
    #[serde(default)]
    pub file_fixed_reads: u64,
    /// uring: io_uring instances the loop ran (1, or N with `--fixed-rings N`), and how many
    /// times the loop entered a ring other than its first (each such enter is also in
    /// `syscalls.io_uring_enter`).
    #[serde(default)]
    pub rings: u64,
    #[serde(default)]
    pub extra_enters: u64,
}

impl LoopStats {
    /// Add `o` into `self`.
    pub fn add(&mut self, o: &LoopStats) {
        self.rings += o.rings;
        self.extra_enters += o.extra_enters;
        self.requests += o.requests;
        self.bytes_in += o.bytes_in;
        self.bytes_out += o.bytes_out;
        self.accepted += o.accepted;
        self.closed += o.closed;
        self.accept_errors += o.accept_errors;
        self.conn_errors += o.conn_errors;
        self.syscalls.add(&o.syscalls);
        self.enobufs += o.enobufs;
        self.multishot_rearms += o.multishot_rearms;
        self.short_sends += o.short_sends;
        self.cq_overflows += o.cq_overflows;
        self.backpressure_pauses += o.backpressure_pauses;
        self.zc_sends += o.zc_sends;
        self.zc_copied += o.zc_copied;
        self.zc_fallbacks += o.zc_fallbacks;
        self.recv_bundles += o.recv_bundles;
        self.buf_partial += o.buf_partial;
        self.refused += o.refused;
        self.limit_pauses += o.limit_pauses;
        self.header_timeouts += o.header_timeouts;
        self.idle_timeouts += o.idle_timeouts;
        self.file_opens += o.file_opens;
        self.file_reads += o.file_reads;
        self.file_bytes += o.file_bytes;
        self.file_errors += o.file_errors;
        self.file_queued += o.file_queued;
        self.file_cache_hits += o.file_cache_hits;
        self.file_fixed_reads += o.file_fixed_reads;
    }
}

/// Statistics of a whole server run (the `--stats-json` document; `ringlab-bench` reads it
/// back).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerStats {
    pub io: String,
    pub proto: String,
    pub listen: String,
    pub pid: u32,
    pub total: LoopStats,
    pub per_core: Vec<LoopStats>,
    /// `--processes N` (N > 1): each process's share, the first process first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<ProcessStats>,
}

/// One process of a `--processes` group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProcessStats {
    /// 0 for the first process.
    pub index: usize,
    pub pid: u32,
    /// Its share of --cores.
    pub cores: String,
    /// How it ended: `ok`, or what went wrong.
    pub exit: String,
    /// Its loops summed (all zero if its statistics were lost with it).
    pub total: LoopStats,
}

/// What the group's first process reads back from a worker's `--stats-json`.
#[derive(Clone, Debug, Deserialize)]
pub struct WorkerStats {
    pub pid: u32,
    pub per_core: Vec<LoopStats>,
}

/// Merge rows of the same CPU (pool threads, or processes sharing a CPU), ordered by CPU.
pub fn merge_by_cpu(mut rows: Vec<LoopStats>) -> Vec<LoopStats> {
    rows.sort_by_key(|s| s.cpu);
    let mut merged: Vec<LoopStats> = Vec::new();
    for s in rows {
        match merged.last_mut() {
            Some(m) if m.cpu == s.cpu => m.add(&s),
            _ => merged.push(s),
        }
    }
    merged
}

impl ServerStats {
    /// Sum the loops.
    pub fn new(
        io: &'static str,
        proto: &'static str,
        listen: String,
        per_core: Vec<LoopStats>,
    ) -> Self {
        let mut total = LoopStats::default();
        for l in &per_core {
            total.add(l);
        }
        total.cpu = usize::MAX;
        ServerStats {
            io: io.into(),
            proto: proto.into(),
            listen,
            pid: std::process::id(),
            total,
            per_core,
            processes: Vec::new(),
        }
    }

    /// A human summary, several lines.
    pub fn summary(&self) -> String {
        let t = &self.total;
        let per_req = |n: u64| {
            if t.requests == 0 {
                0.0
            } else {
                n as f64 / t.requests as f64
            }
        };
        let s = &t.syscalls;
        let mut out = format!(
            "stats io={} proto={} requests={} bytes_in={} bytes_out={} accepted={} closed={} accept_errors={} conn_errors={}\n",
            self.io, self.proto, t.requests, t.bytes_in, t.bytes_out, t.accepted, t.closed,
            t.accept_errors, t.conn_errors
        );
        out += &format!(
            "limits refused={} limit_pauses={} header_timeouts={} idle_timeouts={}\n",
            t.refused, t.limit_pauses, t.header_timeouts, t.idle_timeouts
        );
        out += &format!(
            "syscalls total={} per_request={:.3} io_uring_enter={} epoll_wait={} epoll_ctl={} poll={} select={} accept={} recv={} send={} writev={} shutdown={} close={} file={}\n",
            s.total(), per_req(s.total()), s.io_uring_enter, s.epoll_wait, s.epoll_ctl, s.poll, s.select, s.accept,
            s.recv, s.send, s.writev, s.shutdown, s.close, s.file
        );
        if t.file_opens + t.file_cache_hits > 0 {
            out += &format!(
                "files opens={} cache_hits={} reads={} bytes={} errors={}",
                t.file_opens, t.file_cache_hits, t.file_reads, t.file_bytes, t.file_errors
            );
            if t.file_fixed_reads > 0 {
                out += &format!(" fixed_reads={}", t.file_fixed_reads);
            }
            out += "\n";
        }
        if self.io == "uring" {
            out += &format!(
                "uring enobufs={} multishot_rearms={} short_sends={} cq_overflows={} backpressure_pauses={} zc_sends={} zc_copied={} zc_fallbacks={} recv_bundles={} buf_partial={}\n",
                t.enobufs, t.multishot_rearms, t.short_sends, t.cq_overflows, t.backpressure_pauses,
                t.zc_sends, t.zc_copied, t.zc_fallbacks, t.recv_bundles, t.buf_partial
            );
            if t.rings > self.per_core.len() as u64 {
                out += &format!("rings total={} extra_enters={}\n", t.rings, t.extra_enters);
            }
        }
        for p in &self.processes {
            out += &format!(
                "process index={} pid={} cores={} requests={} accepted={} closed={} exit={}\n",
                p.index, p.pid, p.cores, p.total.requests, p.total.accepted, p.total.closed, p.exit
            );
        }
        for l in &self.per_core {
            out += &format!(
                "core cpu={} requests={} accepted={} closed={} syscalls={}\n",
                l.cpu,
                l.requests,
                l.accepted,
                l.closed,
                l.syscalls.total()
            );
        }
        out
    }
}
