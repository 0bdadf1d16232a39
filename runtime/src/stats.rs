//! Syscall counters and the small per-loop clock every backend reads once per turn.

use std::time::{Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// Syscalls a loop made, by kind. Plain integers: each loop owns its counters.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct SyscallCounters {
    pub io_uring_enter: u64,
    pub io_uring_register: u64,
    pub epoll_wait: u64,
    pub epoll_ctl: u64,
    /// `poll(2)` waits (the poll backend).
    pub poll: u64,
    /// `select(2)` waits (the select backend).
    pub select: u64,
    pub accept: u64,
    pub recv: u64,
    pub send: u64,
    pub writev: u64,
    pub shutdown: u64,
    pub close: u64,
    /// File syscalls on the loop thread (`--root`: openat2, statx, pread, sendfile).
    #[serde(default)]
    pub file: u64,
    pub other: u64,
}

impl SyscallCounters {
    /// Total syscalls.
    pub fn total(&self) -> u64 {
        self.io_uring_enter
            + self.io_uring_register
            + self.epoll_wait
            + self.epoll_ctl
            + self.poll
            + self.select
            + self.accept
            + self.recv
            + self.send
            + self.writev
            + self.shutdown
            + self.close
            + self.file
            + self.other
    }

    /// Add another set of counters to this one.
    pub fn add(&mut self, o: &SyscallCounters) {
        self.io_uring_enter += o.io_uring_enter;
        self.io_uring_register += o.io_uring_register;
        self.epoll_wait += o.epoll_wait;
        self.epoll_ctl += o.epoll_ctl;
        self.poll += o.poll;
        self.select += o.select;
        self.accept += o.accept;
        self.recv += o.recv;
        self.send += o.send;
        self.writev += o.writev;
        self.shutdown += o.shutdown;
        self.close += o.close;
        self.file += o.file;
        self.other += o.other;
    }
}

/// Monotonic now plus the HTTP `Date` value, refreshed at most once a second.
#[derive(Debug)]
pub struct LoopClock {
    now: Instant,
    date: [u8; 29],
    date_at: Instant,
}

impl Default for LoopClock {
    fn default() -> Self {
        Self::new()
    }
}

impl LoopClock {
    /// A clock read now.
    pub fn new() -> Self {
        let now = Instant::now();
        LoopClock {
            now,
            date: format_date(),
            date_at: now,
        }
    }

    /// Read the clock (once per loop turn).
    pub fn update(&mut self) -> Instant {
        self.now = Instant::now();
        if self.now.duration_since(self.date_at).as_millis() >= 1000 {
            self.date = format_date();
            self.date_at = self.now;
        }
        self.now
    }

    /// The last reading.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The last `Date` value.
    pub fn date(&self) -> [u8; 29] {
        self.date
    }
}

fn format_date() -> [u8; 29] {
    let s = httpdate::fmt_http_date(SystemTime::now());
    let mut d = [b' '; 29];
    let n = s.len().min(29);
    d[..n].copy_from_slice(&s.as_bytes()[..n]);
    d
}
