//! ringlab-client: the load generator every ringlab figure comes from.
//!
//! * [`args`]: the command line and its resolution into a [`args::RunConfig`].
//! * [`schedule`]: open-loop pacing (intended send times), apart from any IO.
//! * [`conn`]: one connection's protocol state: what to send, what is outstanding with its
//!   intended and actual send times, byte-exact verification.
//! * [`engine`]: what both IO drivers share: connection life cycles, connect ramp, request
//!   issue and dispatch, timeouts, phases, recording.
//! * [`driver`]: one loop per IO model (`uring`, `epoll`) that only moves bytes.
//! * [`stats`], [`report`]: counters, bounded histograms, the summary, JSON and interval log.
//! * [`intervals`]: interval logs read and merged (the client's processes, `ringlab-bench merge`).
//! * [`run`]: one process's run: threads, pinning, the common time line, progress, merging.
//! * [`procs`]: `--processes K`: K processes started, released together and merged; over
//!   `ringlab_runtime::procgroup`.
//!
//! Layers, each module using only those below it (no import cycles): `procs`; `run`;
//! `driver`, `report`, `intervals`; `engine`; `conn`, `schedule`, `stats`; `args`.

pub mod args;
pub mod conn;
pub mod driver;
pub mod engine;
pub mod intervals;
pub mod procs;
pub mod report;
pub mod run;
pub mod schedule;
pub mod stats;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

pub use args::{Args, RunConfig};
pub use report::Report;
pub use run::RunError;

/// Run the load described by `cfg`; returns the report (its `exit_code` says how it went).
pub fn run(cfg: RunConfig) -> Result<Report, RunError> {
    run_with_stop(cfg, Arc::new(AtomicBool::new(false)))
}

/// [`run()`], ending early (as if its time were up) once `stop` is set, e.g. by SIGINT: one
/// process, or with `--processes` a group of them.
pub fn run_with_stop(cfg: RunConfig, stop: Arc<AtomicBool>) -> Result<Report, RunError> {
    if cfg.processes > 1 {
        procs::run_group(cfg, stop)
    } else {
        run::run_one(cfg, stop)
    }
}
