//! Counters and histograms of one loop thread, merged across threads at the end.
//!
//! Histograms are bounded (1 µs to 1 h, 3 significant digits) and recorded with saturating
//! records: a value beyond the bound is clamped, never an error, never a panic.

use std::collections::BTreeMap;
use std::io;

use hdrhistogram::Histogram;
use ringlab_runtime::stats::SyscallCounters;
use serde::{Deserialize, Serialize};

/// Highest value a latency histogram holds, in µs (one hour); larger values are clamped.
pub const HIST_MAX_US: u64 = 3_600_000_000;

/// A new bounded latency histogram in microseconds.
pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("static histogram bounds are valid")
}

/// Errors by kind; each counted once per occurrence.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Errors {
    /// connect: ECONNREFUSED.
    pub connect_refused: u64,
    /// connect: ENETUNREACH or EHOSTUNREACH.
    pub connect_unreachable: u64,
    /// connect: not established within --timeout (or ETIMEDOUT).
    pub connect_timeout: u64,
    /// connect/bind: no local port left (EADDRNOTAVAIL, EADDRINUSE): add addresses with --bind.
    pub connect_no_ports: u64,
    /// connect: too many open files (EMFILE/ENFILE): raise `ulimit -n`.
    pub connect_no_fds: u64,
    /// connect: anything else.
    pub connect_other: u64,
    /// The server reset the connection (ECONNRESET, EPIPE).
    pub reset: u64,
    /// The server closed the connection while requests were outstanding (one per connection).
    pub closed_mid_response: u64,
    /// Requests lost when their connection failed (reset, close, error) before an answer.
    pub requests_lost: u64,
    /// Other read errors.
    pub read_other: u64,
    /// Other write errors.
    pub write_other: u64,
    /// Requests not answered within --timeout (their connection is closed and reopened).
    pub timeouts: u64,
    /// Data errors: echo bytes that differ from what was sent.
    pub echo_mismatch: u64,
    /// Data errors: responses that do not parse.
    pub malformed_response: u64,
    /// Data errors: bytes arriving when no request was outstanding.
    pub unexpected_data: u64,
}

impl Errors {
    /// Add `o` into `self`.
    pub fn add(&mut self, o: &Errors) {
        self.connect_refused += o.connect_refused;
        self.connect_unreachable += o.connect_unreachable;
        self.connect_timeout += o.connect_timeout;
        self.connect_no_ports += o.connect_no_ports;
        self.connect_no_fds += o.connect_no_fds;
        self.connect_other += o.connect_other;
        self.reset += o.reset;
        self.closed_mid_response += o.closed_mid_response;
        self.requests_lost += o.requests_lost;
        self.read_other += o.read_other;
        self.write_other += o.write_other;
        self.timeouts += o.timeouts;
        self.echo_mismatch += o.echo_mismatch;
        self.malformed_response += o.malformed_response;
        self.unexpected_data += o.unexpected_data;
    }

    /// Connect errors of every kind.
    pub fn connect(&self) -> u64 {
        self.connect_refused
            + self.connect_unreachable
            + self.connect_timeout
            + self.connect_no_ports
            + self.connect_no_fds
            + self.connect_other
    }

    /// Data errors (they make the exit code 1).
    pub fn data(&self) -> u64 {
        self.echo_mismatch + self.malformed_response + self.unexpected_data
    }

    /// Every error.
    pub fn total(&self) -> u64 {
        self.connect()
            + self.reset
            + self.closed_mid_response
            + self.read_other
            + self.write_other
            + self.timeouts
            + self.data()
    }

    /// `(name, count)` for every kind, in a fixed order.
    pub fn kinds(&self) -> [(&'static str, u64); 15] {
        [
            ("connect_refused", self.connect_refused),
            ("connect_unreachable", self.connect_unreachable),
            ("connect_timeout", self.connect_timeout),
            ("connect_no_ports", self.connect_no_ports),
            ("connect_no_fds", self.connect_no_fds),
            ("connect_other", self.connect_other),
            ("reset", self.reset),
            ("closed_mid_response", self.closed_mid_response),
            ("requests_lost", self.requests_lost),
            ("read_other", self.read_other),
            ("write_other", self.write_other),
            ("timeouts", self.timeouts),
            ("echo_mismatch", self.echo_mismatch),
            ("malformed_response", self.malformed_response),
            ("unexpected_data", self.unexpected_data),
        ]
    }

    /// Count a failed connect (or socket/bind) by kind.
    pub fn count_connect(&mut self, e: &io::Error) {
        use rustix::io::Errno;
        match Errno::from_io_error(e) {
            Some(Errno::CONNREFUSED) => self.connect_refused += 1,
            Some(Errno::NETUNREACH | Errno::HOSTUNREACH | Errno::NETDOWN | Errno::HOSTDOWN) => {
                self.connect_unreachable += 1
            }
            Some(Errno::TIMEDOUT) => self.connect_timeout += 1,
            Some(Errno::ADDRNOTAVAIL | Errno::ADDRINUSE) => self.connect_no_ports += 1,
            Some(Errno::MFILE | Errno::NFILE) => self.connect_no_fds += 1,
            _ => self.connect_other += 1,
        }
    }
}

/// Counters of one thread (or, merged, of the run).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counters {
    /// Requests sent over the whole run (warmup included).
    pub requests_sent: u64,
    /// Responses received over the whole run (warmup included).
    pub responses: u64,
    /// Responses to measured requests (intended send time at or after the warmup): the
    /// histograms' sample count.
    pub measured: u64,
    /// Wire bytes of measured responses.
    pub measured_bytes: u64,
    /// Bytes written to and read from sockets over the whole run.
    pub bytes_sent: u64,
    pub bytes_received: u64,
    /// Connections established.
    pub connects: u64,
    /// Connections closed by the client (end of run, errors, timeouts).
    pub closes: u64,
    /// Connections reopened after an error, timeout or server close.
    pub reconnects: u64,
    /// Open loop: measured requests that were due but never sent before the end (behind
    /// schedule).
    pub unsent: u64,
    /// Measured responses by HTTP status code.
    pub status: BTreeMap<u16, u64>,
    /// uring: multishot recvs that ended because the buffer ring was empty (re-armed).
    pub enobufs: u64,
    /// uring: short sends whose remainder was resubmitted.
    pub short_sends: u64,
    /// uring: turns at which the CQ had overflowed into the kernel's backlog (nothing lost).
    pub cq_overflows: u64,
    /// Syscalls by kind.
    pub syscalls: SyscallCounters,
}

impl Counters {
    /// Add `o` into `self`.
    pub fn add(&mut self, o: &Counters) {
        self.requests_sent += o.requests_sent;
        self.responses += o.responses;
        self.measured += o.measured;
        self.measured_bytes += o.measured_bytes;
        self.bytes_sent += o.bytes_sent;
        self.bytes_received += o.bytes_received;
        self.connects += o.connects;
        self.closes += o.closes;
        self.reconnects += o.reconnects;
        self.unsent += o.unsent;
        for (k, v) in &o.status {
            *self.status.entry(*k).or_default() += v;
        }
        self.enobufs += o.enobufs;
        self.short_sends += o.short_sends;
        self.cq_overflows += o.cq_overflows;
        self.syscalls.add(&o.syscalls);
    }

    /// Measured responses whose status is not 2xx or 3xx.
    pub fn non_2xx_3xx(&self) -> u64 {
        self.status
            .iter()
            .filter(|(s, _)| !(200..400).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }
}

/// Record `v` µs into `h`, clamped to its bounds.
pub fn record(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us.clamp(1, HIST_MAX_US));
}
