//! Live metrics (`--metrics ADDR`): the Prometheus text exposition format at `GET /metrics`,
//! served by one small thread outside the loops.
//!
//! What it costs the loops: each keeps its statistics as plain integers, as it always has (the
//! exit statistics are the same fields), and copies them into its own board slot once per turn:
//! an uncontended `try_lock` and a copy of a few hundred bytes. If the scraper holds the slot at
//! that instant the loop skips the copy and the next turn publishes. Before it waits, the loop
//! also reads the clock once to add the turn's requests to its service-time histogram. No
//! atomic is touched per event; with `--metrics` off, none of this runs.
//!
//! Service time: the time from the start of the turn that handled a request (after the wait
//! returned) to the end of that turn, when its response has been queued or sent. It is an upper
//! bound of each request's own time in the loop and the time a request that arrived with
//! others waited behind them. Loop backends only (uring, epoll, poll, select); the counters
//! come from every backend.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::stats::LoopStats;

/// Upper bounds of the service-time histogram's buckets: 1 µs · 2^k, k = 0..=20 (1 s), and +Inf.
pub const BUCKETS: usize = 22;

/// Service times: requests counted in the bucket of the turn that served them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ServiceHist {
    pub buckets: [u64; BUCKETS],
    /// Sum of the service times, nanoseconds (a turn's time once per request it served).
    pub sum_ns: u64,
}

impl ServiceHist {
    /// `n` requests served in a turn that took `d`.
    pub fn record(&mut self, d: Duration, n: u64) {
        let us = d.as_micros().max(1);
        // Bucket k holds times ≤ 2^k µs.
        let k = (128 - (us - 1).leading_zeros()) as usize;
        self.buckets[k.min(BUCKETS - 1)] += n;
        self.sum_ns = self
            .sum_ns
            .saturating_add((d.as_nanos() as u64).saturating_mul(n));
    }

    fn add(&mut self, o: &ServiceHist) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
        self.sum_ns += o.sum_ns;
    }

    /// The bucket's upper bound in seconds, as the exposition format writes it.
    fn le(k: usize) -> String {
        if k == BUCKETS - 1 {
            "+Inf".into()
        } else {
            format!("{}", (1u64 << k) as f64 / 1e6)
        }
    }
}

/// What one loop (or pool thread) publishes.
#[derive(Clone, Debug, Default)]
pub struct LoopMetrics {
    pub stats: LoopStats,
    pub service: ServiceHist,
}

/// One loop's slot on the board.
pub type Slot = Arc<Mutex<LoopMetrics>>;

/// Every loop's slot, and what the server is.
pub struct Board {
    io: &'static str,
    proto: &'static str,
    slots: Mutex<Vec<Slot>>,
    started: Instant,
}

impl Board {
    pub fn new(io: &'static str, proto: &'static str) -> Arc<Board> {
        Arc::new(Board {
            io,
            proto,
            slots: Mutex::new(Vec::new()),
            started: Instant::now(),
        })
    }

    /// A new slot for a loop on `cpu`.
    pub fn register(&self, cpu: usize) -> Slot {
        let slot = Arc::new(Mutex::new(LoopMetrics {
            stats: LoopStats {
                cpu,
                ..LoopStats::default()
            },
            ..LoopMetrics::default()
        }));
        if let Ok(mut v) = self.slots.lock() {
            v.push(slot.clone());
        }
        slot
    }

    /// Every slot's latest figures, merged per CPU (pool backends have several threads on one).
    pub fn per_core(&self) -> Vec<LoopMetrics> {
        let slots: Vec<Slot> = self.slots.lock().map(|v| v.clone()).unwrap_or_default();
        let mut rows: Vec<LoopMetrics> = slots
            .iter()
            .filter_map(|s| s.lock().ok().map(|g| g.clone()))
            .collect();
        rows.sort_by_key(|r| r.stats.cpu);
        let mut merged: Vec<LoopMetrics> = Vec::new();
        for r in rows {
            match merged.last_mut() {
                Some(m) if m.stats.cpu == r.stats.cpu => {
                    m.stats.add(&r.stats);
                    m.service.add(&r.service);
                }
                _ => merged.push(r),
            }
        }
        merged
    }

    /// The exposition text: per core (`ringlab_core_*{core="N"}`) and for the whole server
    /// (`ringlab_server_*`, the sums), so that no family mixes the two.
    pub fn render(&self) -> String {
        let cores = self.per_core();
        let mut total = LoopMetrics::default();
        for c in &cores {
            total.stats.add(&c.stats);
            total.service.add(&c.service);
        }
        let mut out = String::new();
        out += &format!(
            "# HELP ringlab_info The server's IO backend and protocol.\n# TYPE ringlab_info gauge\nringlab_info{{io=\"{}\",proto=\"{}\",version=\"{}\"}} 1\n",
            self.io,
            self.proto,
            env!("CARGO_PKG_VERSION")
        );
        out += &format!(
            "# HELP ringlab_uptime_seconds Seconds since the server started.\n# TYPE ringlab_uptime_seconds gauge\nringlab_uptime_seconds {:.3}\n",
            self.started.elapsed().as_secs_f64()
        );
        let rows: Vec<(Option<usize>, &LoopMetrics)> = cores
            .iter()
            .map(|c| (Some(c.stats.cpu), c))
            .chain([(None, &total)])
            .collect();
        // The counters, in LoopStats' field order: one family per scope.
        for scope in ["core", "server"] {
            let these: Vec<&(Option<usize>, &LoopMetrics)> = rows
                .iter()
                .filter(|(c, _)| c.is_some() == (scope == "core"))
                .collect();
            for (name, help, get) in COUNTERS {
                let fam = format!("ringlab_{scope}_{name}");
                out += &format!("# HELP {fam} {help}\n# TYPE {fam} counter\n");
                for (cpu, m) in &these {
                    let v = get(&m.stats);
                    out += &format!("{fam}{} {v}\n", labels(*cpu, None));
                }
            }
            let fam = format!("ringlab_{scope}_syscalls_total");
            out += &format!("# HELP {fam} System calls the loops made, by kind (uring: io_uring_enter; the kernel's own work is not counted).\n# TYPE {fam} counter\n");
            for (cpu, m) in &these {
                for (kind, v) in syscalls(&m.stats) {
                    out += &format!("{fam}{} {v}\n", labels(*cpu, Some(("kind", kind))));
                }
            }
            let fam = format!("ringlab_{scope}_connections_open");
            out += &format!(
                "# HELP {fam} Connections open now (accepted minus closed).\n# TYPE {fam} gauge\n"
            );
            for (cpu, m) in &these {
                let open = m.stats.accepted.saturating_sub(m.stats.closed);
                out += &format!("{fam}{} {open}\n", labels(*cpu, None));
            }
            let fam = format!("ringlab_{scope}_service_seconds");
            out += &format!("# HELP {fam} Request service time in the loop: the duration of the loop turn that served each request (uring, epoll, poll, select).\n# TYPE {fam} histogram\n");
            for (cpu, m) in &these {
                let mut cum = 0;
                for k in 0..BUCKETS {
                    cum += m.service.buckets[k];
                    out += &format!(
                        "{fam}_bucket{} {cum}\n",
                        labels(*cpu, Some(("le", &ServiceHist::le(k))))
                    );
                }
                out += &format!(
                    "{fam}_sum{} {}\n{fam}_count{} {cum}\n",
                    labels(*cpu, None),
                    m.service.sum_ns as f64 / 1e9,
                    labels(*cpu, None)
                );
            }
        }
        out
    }
}

/// `{core="0",kind="recv"}`, `{le="..."}` or nothing.
fn labels(cpu: Option<usize>, extra: Option<(&str, &str)>) -> String {
    let mut l = Vec::new();
    if let Some(c) = cpu {
        l.push(format!("core=\"{c}\""));
    }
    if let Some((k, v)) = extra {
        l.push(format!("{k}=\"{v}\""));
    }
    if l.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", l.join(","))
    }
}

/// The counters exported (`ringlab_core_NAME`, `ringlab_server_NAME`): name, help text, and the
/// field of the exit statistics it shows.
type Counter = (&'static str, &'static str, fn(&LoopStats) -> u64);

const COUNTERS: [Counter; 26] = [
    ("requests_total", "Completed requests (HTTP requests; echo: received chunks).", |s| s.requests),
    ("received_bytes_total", "Bytes received from clients.", |s| s.bytes_in),
    ("sent_bytes_total", "Bytes sent to clients.", |s| s.bytes_out),
    ("connections_accepted_total", "Connections accepted.", |s| s.accepted),
    ("connections_closed_total", "Connections closed.", |s| s.closed),
    ("connections_refused_total", "HTTP connections answered 503 at --max-conns.", |s| s.refused),
    ("accept_errors_total", "Accepts that failed (EMFILE, ENFILE, ...); the loop backed off.", |s| s.accept_errors),
    ("connection_errors_total", "Connections that ended in an error (reset, broken pipe).", |s| s.conn_errors),
    ("header_timeouts_total", "HTTP connections closed by --header-timeout.", |s| s.header_timeouts),
    ("idle_timeouts_total", "Connections closed by --idle-timeout.", |s| s.idle_timeouts),
    ("file_opens_total", "Files: opens performed (--root), refused ones included; cache hits are not.", |s| s.file_opens),
    ("file_cache_hits_total", "Files: opens answered from the loop's cache of open files (--file-cache).", |s| s.file_cache_hits),
    ("file_reads_total", "Files: reads done (or sendfile calls).", |s| s.file_reads),
    ("file_read_bytes_total", "Files: bytes read (or sent by sendfile).", |s| s.file_bytes),
    ("file_errors_total", "Files: file operations that failed (missing files included).", |s| s.file_errors),
    ("limit_pauses_total", "Times an echo loop stopped accepting at --max-conns.", |s| s.limit_pauses),
    ("backpressure_pauses_total", "Times a connection's reading paused because its output passed the high-water mark.", |s| s.backpressure_pauses),
    ("cq_overflows_total", "uring: turns at which the completion queue had overflowed into the kernel's backlog (nothing lost).", |s| s.cq_overflows),
    ("enobufs_total", "uring: multishot receives ended because the buffer ring was empty (re-armed).", |s| s.enobufs),
    ("multishot_rearms_total", "uring: multishot operations re-armed after they ended.", |s| s.multishot_rearms),
    ("short_sends_total", "uring: short sends whose remainder was resubmitted.", |s| s.short_sends),
    ("zerocopy_sends_total", "uring --send-zc: zero-copy sends.", |s| s.zc_sends),
    ("zerocopy_copied_total", "uring --send-zc: zero-copy sends the kernel copied after all.", |s| s.zc_copied),
    ("zerocopy_fallbacks_total", "uring --send-zc: zero-copy sends refused for want of lockable memory and sent again by copying.", |s| s.zc_fallbacks),
    ("recv_bundles_total", "uring --recv-bundle: receive completions that carried more than one buffer.", |s| s.recv_bundles),
    ("buffer_partial_total", "uring --buf-incremental: receive completions that left their buffer with the kernel.", |s| s.buf_partial),
];

fn syscalls(s: &LoopStats) -> [(&'static str, u64); 14] {
    let c = &s.syscalls;
    [
        ("io_uring_enter", c.io_uring_enter),
        ("io_uring_register", c.io_uring_register),
        ("epoll_wait", c.epoll_wait),
        ("epoll_ctl", c.epoll_ctl),
        ("poll", c.poll),
        ("select", c.select),
        ("accept", c.accept),
        ("recv", c.recv),
        ("send", c.send),
        ("writev", c.writev),
        ("shutdown", c.shutdown),
        ("close", c.close),
        ("file", c.file),
        ("other", c.other),
    ]
}

/// Bind `addr` and serve the board from a thread of its own, one request at a time (each
/// bounded: 2 s to send its request line and headers, at most 8 KiB of them). Returns the
/// address bound (port 0 picks one).
pub fn serve(addr: SocketAddr, board: Arc<Board>) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind(addr)?;
    let local = l.local_addr()?;
    std::thread::Builder::new()
        .name("ringlab-metrics".into())
        .spawn(move || {
            for s in l.incoming().flatten() {
                let _ = answer(s, &board);
            }
        })?;
    Ok(local)
}

/// One scrape: `GET /metrics` (or `/`) gets the text; anything else a 404 or 405.
fn answer(mut s: TcpStream, board: &Board) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut r = BufReader::new(std::io::Read::take(s.try_clone()?, 8192));
    let mut line = String::new();
    r.read_line(&mut line)?;
    // The headers, to the blank line (their content does not matter).
    let mut h = String::new();
    loop {
        h.clear();
        if r.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, body, ctype) = match (method, path) {
        ("GET" | "HEAD", "/metrics" | "/") => (
            "200 OK",
            board.render(),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "only /metrics is here\n".to_string(),
            "text/plain",
        ),
        _ => (
            "405 Method Not Allowed",
            "GET /metrics\n".to_string(),
            "text/plain",
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    if method != "HEAD" {
        s.write_all(body.as_bytes())?;
    }
    s.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_times_land_in_power_of_two_buckets() {
        let mut h = ServiceHist::default();
        h.record(Duration::from_nanos(300), 2); // ≤ 1 µs
        h.record(Duration::from_micros(1), 1); // ≤ 1 µs
        h.record(Duration::from_micros(3), 4); // ≤ 4 µs
        h.record(Duration::from_micros(1024), 1); // ≤ 1024 µs
        h.record(Duration::from_secs(5), 1); // +Inf
        assert_eq!(h.buckets[0], 3);
        assert_eq!(h.buckets[2], 4);
        assert_eq!(h.buckets[10], 1);
        assert_eq!(h.buckets[BUCKETS - 1], 1);
        assert_eq!(h.buckets.iter().sum::<u64>(), 9);
        assert_eq!(h.sum_ns, 600 + 1000 + 12_000 + 1_024_000 + 5_000_000_000);
        assert_eq!(ServiceHist::le(0), "0.000001");
        assert_eq!(ServiceHist::le(20), "1.048576");
        assert_eq!(ServiceHist::le(BUCKETS - 1), "+Inf");
    }

    #[test]
    fn the_board_sums_threads_per_core_and_cores_into_the_server() {
        let b = Board::new("epoll", "echo");
        let (a, a2, c) = (b.register(0), b.register(0), b.register(1));
        for (slot, req) in [(&a, 5), (&a2, 7), (&c, 11)] {
            let mut g = slot.lock().unwrap();
            g.stats.requests = req;
            g.stats.accepted = 3;
            g.stats.closed = 1;
            g.stats.syscalls.recv = req * 2;
            g.service.record(Duration::from_micros(3), req);
        }
        let per = b.per_core();
        assert_eq!(per.len(), 2);
        assert_eq!(per[0].stats.requests, 12);
        let text = b.render();
        for line in [
            "ringlab_core_requests_total{core=\"0\"} 12",
            "ringlab_core_requests_total{core=\"1\"} 11",
            "ringlab_server_requests_total 23",
            "ringlab_core_connections_open{core=\"0\"} 4",
            "ringlab_server_connections_open 6",
            "ringlab_server_syscalls_total{kind=\"recv\"} 46",
            "ringlab_core_service_seconds_bucket{core=\"1\",le=\"0.000004\"} 11",
            "ringlab_server_service_seconds_count 23",
            "ringlab_info{io=\"epoll\",proto=\"echo\"",
        ] {
            assert!(text.contains(line), "no {line:?} in\n{text}");
        }
    }
}
