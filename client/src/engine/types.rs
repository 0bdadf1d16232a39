//! The values a thread's engine is given (its plan, the run's time line) and hands back (interval
//! histograms while it runs, its result at the end).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::stats::{Counters, Errors};

/// What one thread is asked to do.
#[derive(Clone, Debug)]
pub struct ThreadPlan {
    /// Thread number.
    pub index: usize,
    /// The CPU it runs on.
    pub cpu: usize,
    /// Global numbers of this thread's connections.
    pub conn_ids: Vec<usize>,
    /// Open loop: this thread's share of the rate (requests/s).
    pub rate: Option<f64>,
    /// This thread's share of --requests.
    pub requests: Option<u64>,
    /// This thread's share of --connect-rate (connections/s).
    pub connect_rate: Option<f64>,
    /// Offset of this thread's schedule, so threads interleave.
    pub phase: Duration,
}

/// The run's time line, common to all threads.
#[derive(Clone, Copy, Debug)]
pub struct Timeline {
    /// When loops start connecting.
    pub start: Instant,
    /// End of the warmup: requests meant to be sent from here on are measured.
    pub measure_start: Instant,
    /// End of the measured time (duration mode).
    pub end: Option<Instant>,
}

/// The samples of one interval of one thread: one second of measurement (`index` counts from
/// `measure_start`), or the last part of one. Loops send these to the main thread.
pub struct Interval {
    pub thread: usize,
    pub index: u64,
    /// Length of the interval (1 s, or less for the last one).
    pub length: Duration,
    pub corrected: Histogram<u64>,
    pub raw: Histogram<u64>,
    pub bytes: u64,
}

/// Why a thread stopped before its plan was done.
#[derive(Clone, Debug)]
pub struct GaveUp(pub String);

/// What a thread hands back when it is done.
pub struct ThreadResult {
    pub thread: usize,
    pub cpu: usize,
    pub corrected: Histogram<u64>,
    pub raw: Histogram<u64>,
    pub connect: Histogram<u64>,
    pub lag: Histogram<u64>,
    pub counters: Counters,
    pub errors: Errors,
    /// CPU time this thread used while measuring, and the wall time it measured for.
    pub cpu_time: Duration,
    pub cpu_wall: Duration,
    /// Last measured response (for the run's elapsed time).
    pub last_completion: Option<Instant>,
    /// When the thread stopped issuing requests (end of run, budget spent, gave up).
    pub ended_at: Instant,
    pub gave_up: Option<GaveUp>,
    /// First data error seen, for the report.
    pub first_data_error: Option<String>,
    /// First connect error seen, for the report.
    pub first_connect_error: Option<String>,
}
