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
//! * [`run`]: threads, pinning, the common time line, progress, merging.

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

pub use args::{Args, RunConfig};
pub use report::Report;
pub use run::{run, run_with_stop, RunError};
