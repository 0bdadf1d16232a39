//! One process's run: check the environment, start one pinned loop per CPU, give them a common time
//! line, show progress, write the interval log, collect and merge the results.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::AtomicBool;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ringlab_runtime::cpus::{even_shares, pin_current_thread};

use crate::args::{Io, RunConfig, SetupError};
use crate::driver::{self, ThreadCtx};
use crate::engine::{Interval, ThreadPlan, ThreadResult, Timeline};
use crate::intervals::IntervalLog;
use crate::report::{self, fmt_bytes, fmt_us, Partial, Report};
use crate::stats::new_hist;

/// Why a run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Usage or setup (exit code 2).
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// A loop failed while running (exit code 1).
    #[error("{0}")]
    Failed(String),
}

fn setup(msg: impl Into<String>) -> RunError {
    RunError::Setup(SetupError(msg.into()))
}

/// What each loop thread does.
pub fn plans(cfg: &RunConfig) -> Vec<ThreadPlan> {
    let threads = cfg.cpus.len();
    let conns = even_shares(cfg.conns, threads);
    let mut next = 0;
    let mut requests_left = cfg.requests;
    cfg.cpus
        .ids()
        .iter()
        .enumerate()
        .map(|(i, &cpu)| {
            let ids: Vec<usize> = (next..next + conns[i]).collect();
            next += conns[i];
            let frac = conns[i] as f64 / cfg.conns as f64;
            let requests = cfg.requests.map(|n| {
                let share = if i + 1 == threads {
                    requests_left.unwrap_or(0)
                } else {
                    ((n as f64 * frac).round() as u64).min(requests_left.unwrap_or(0))
                };
                requests_left = requests_left.map(|l| l - share);
                share
            });
            ThreadPlan {
                index: i,
                cpu,
                conn_ids: ids,
                rate: cfg.rate.map(|r| r * frac),
                requests,
                connect_rate: cfg.connect_rate.map(|r| r * frac),
                phase: match cfg.rate {
                    Some(r) => Duration::from_secs_f64(i as f64 / r),
                    None => Duration::ZERO,
                },
            }
        })
        .collect()
}

/// Check what can be checked before starting: io_uring, the descriptor limit, output files.
fn preflight(cfg: &RunConfig) -> Result<(), RunError> {
    if cfg.io == Io::Uring {
        ringlab_runtime::uring::check_available().map_err(|e| setup(e.to_string()))?;
    }
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    if let Some(cur) = lim.current {
        let need = cfg.conns as u64 + 32 + 4 * cfg.cpus.len() as u64;
        if cur < need {
            return Err(setup(format!(
                "--conns {} needs about {need} file descriptors but `ulimit -n` is {cur}: raise it (ulimit -n {need}) or use fewer --conns",
                cfg.conns
            )));
        }
    }
    Ok(())
}

/// One second of all loops: how many reported it, its length, corrected and raw latency, bytes.
struct Merged {
    reported: usize,
    length: Duration,
    corrected: Histogram<u64>,
    raw: Histogram<u64>,
    bytes: u64,
}

/// Merges the loops' intervals second by second, for the log and the progress line.
struct Intervals {
    threads: usize,
    pending: BTreeMap<u64, Merged>,
    log: Option<IntervalLog>,
    log_error: Option<String>,
    last: Option<(u64, f64, u64, f64)>,
}

impl Intervals {
    fn add(&mut self, iv: Interval) {
        let e = self.pending.entry(iv.index).or_insert_with(|| Merged {
            reported: 0,
            length: Duration::ZERO,
            corrected: new_hist(),
            raw: new_hist(),
            bytes: 0,
        });
        e.reported += 1;
        e.length = e.length.max(iv.length);
        let _ = e.corrected.add(&iv.corrected);
        let _ = e.raw.add(&iv.raw);
        e.bytes += iv.bytes;
        // Every thread reported this second: write it and everything before it.
        if e.reported == self.threads {
            let index = iv.index;
            while let Some((&k, _)) = self.pending.first_key_value() {
                if k > index {
                    break;
                }
                self.emit(k);
            }
        }
    }

    fn emit(&mut self, k: u64) {
        let Some(Merged {
            length: len,
            corrected: c,
            raw: r,
            bytes,
            ..
        }) = self.pending.remove(&k)
        else {
            return;
        };
        let secs = len.as_secs_f64().max(1e-3);
        // The last, partial second (the drain) would misstate the rate on the progress line.
        if len >= Duration::from_millis(500) {
            self.last = Some((
                c.len(),
                c.len() as f64 / secs,
                if c.is_empty() {
                    0
                } else {
                    c.value_at_quantile(0.99)
                },
                bytes as f64 / secs,
            ));
        }
        if let Some(log) = &mut self.log {
            if let Err(e) = log.write(k, len, &c, &r) {
                self.log_error.get_or_insert(e.to_string());
            }
        }
    }

    fn flush(&mut self) {
        while let Some((&k, _)) = self.pending.first_key_value() {
            self.emit(k);
        }
    }
}

/// Run the load of one process (`--processes` 1) and summarise it.
pub fn run_one(cfg: RunConfig, stop: Arc<AtomicBool>) -> Result<Report, RunError> {
    let cfg2 = cfg.clone();
    let partial = run_partial(cfg, stop, None)?;
    Ok(report::build_from(&cfg2, partial))
}

/// Called once every loop is set up and before the time line starts (e.g. to start several
/// processes together); an error aborts the run.
pub type Gate = Box<dyn FnOnce() -> Result<(), String> + Send>;

/// Run the load and return what it measured, unsummarised (for merging with other processes).
pub fn run_partial(
    cfg: RunConfig,
    stop: Arc<AtomicBool>,
    gate: Option<Gate>,
) -> Result<Partial, RunError> {
    preflight(&cfg)?;
    let cfg = Arc::new(cfg);
    let plans = plans(&cfg);
    let threads = plans.len();
    let (ready_tx, ready_rx) = mpsc::sync_channel(threads);
    let (iv_tx, iv_rx) = mpsc::channel::<Interval>();
    let mut go = Vec::new();
    let mut handles = Vec::new();
    for plan in plans {
        let (go_tx, go_rx) = mpsc::channel();
        go.push(go_tx);
        let cpu = plan.cpu;
        let ctx = ThreadCtx {
            cfg: cfg.clone(),
            plan,
            ready: ready_tx.clone(),
            go: go_rx,
            tx: iv_tx.clone(),
            stop: stop.clone(),
        };
        let pin = cfg.pin;
        let io = cfg.io;
        let h = thread::Builder::new()
            .name(format!("ringlab-client-{}-{cpu}", io.name()))
            .spawn(move || -> std::io::Result<Option<ThreadResult>> {
                if pin {
                    if let Err(e) = pin_current_thread(cpu) {
                        ctx.start(Err(e.to_string()));
                        return Err(std::io::Error::other(e.to_string()));
                    }
                }
                match io {
                    Io::Uring => driver::uring::run(ctx),
                    Io::Epoll => driver::epoll::run(ctx),
                }
            })
            .map_err(|e| setup(format!("cannot start a loop thread: {e}")))?;
        handles.push(h);
    }
    drop(ready_tx);
    drop(iv_tx);
    if let Some(e) = ringlab_runtime::event_loop::setup_failure(&ready_rx, threads) {
        for g in &go {
            let _ = g.send(None);
        }
        for h in handles {
            let _ = h.join();
        }
        let hint = if cfg.io == Io::Uring {
            " (try --io epoll)"
        } else {
            ""
        };
        return Err(setup(format!("loop setup failed: {e}{hint}")));
    }

    if let Some(gate) = gate {
        if let Err(e) = gate() {
            for g in &go {
                let _ = g.send(None);
            }
            for h in handles {
                let _ = h.join();
            }
            return Err(setup(e));
        }
    }
    // `--start-at`: every process (and every host) waits for the same wall-clock instant.
    if let Some(at) = cfg.start_at {
        if let Err(e) = crate::args::wait_until(at) {
            for g in &go {
                let _ = g.send(None);
            }
            for h in handles {
                let _ = h.join();
            }
            return Err(RunError::Setup(e));
        }
    }
    // A common time line; the wall-clock time of the start of measurement for the log.
    let now = Instant::now();
    let wall = SystemTime::now();
    let start = now + Duration::from_millis(2);
    let measure_start = start + cfg.warmup;
    let tl = Timeline {
        start,
        measure_start,
        end: cfg.duration.map(|d| measure_start + d),
    };
    let base = wall + (measure_start - now);
    let log = match &cfg.hist_log {
        Some(p) => match IntervalLog::create(p, base, &cfg) {
            Ok(l) => Some(l),
            Err(e) => {
                for g in &go {
                    let _ = g.send(None);
                }
                for h in handles {
                    let _ = h.join();
                }
                return Err(setup(format!("--hist-log {}: {e}", p.display())));
            }
        },
        None => None,
    };
    for g in &go {
        let _ = g.send(Some(tl));
    }

    let bar = progress_bar(&cfg);
    let mut ivs = Intervals {
        threads,
        pending: BTreeMap::new(),
        log,
        log_error: None,
        last: None,
    };
    loop {
        match iv_rx.recv_timeout(Duration::from_millis(250)) {
            Ok(iv) => ivs.add(iv),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Some(b) = &bar {
            b.set_message(progress_text(&cfg, &tl, ivs.last));
            b.tick();
        }
    }
    ivs.flush();
    if let Some(b) = &bar {
        b.finish_and_clear();
    }

    let mut results = Vec::new();
    let mut errors = Vec::new();
    for (i, h) in handles.into_iter().enumerate() {
        match h.join() {
            Ok(Ok(Some(r))) => results.push(r),
            Ok(Ok(None)) => errors.push(format!("loop {i} did not start")),
            Ok(Err(e)) => errors.push(format!("loop {i} failed: {e}")),
            Err(_) => errors.push(format!("loop {i} panicked")),
        }
    }
    if let Some(log) = ivs.log.take() {
        if let Err(e) = log.finish() {
            ivs.log_error.get_or_insert(e.to_string());
        }
    }
    if !errors.is_empty() {
        return Err(RunError::Failed(errors.join("; ")));
    }
    // Measurement ends when the last thread stopped issuing requests (the end of the run, or
    // giving up). The measured requests are those meant to be sent in that window; the ones
    // still in flight at its end are awaited and counted, which in a steady state balances the
    // ones sent before the window and answered in it, so the window is the divisor. (Counting
    // up to the last answer instead diluted every rate by the tail: a server that answers one
    // request per 0.104 s, queueing 32 clients, read 5.8 req/s over a 5 s window, 5 / (5 +
    // 3.3).) With --requests the job is the count: it ends with its last answer.
    let end = window_end(
        cfg.requests.is_some(),
        results.iter().map(|r| (r.ended_at, r.last_completion)),
    )
    .unwrap_or_else(Instant::now);
    let elapsed = end.saturating_duration_since(measure_start);
    let mut partial = Partial::of(&results, elapsed);
    if stop.load(std::sync::atomic::Ordering::Relaxed) {
        partial
            .messages
            .push("interrupted: the results cover the time measured until then".to_string());
    }
    if let Some(e) = ivs.log_error {
        partial
            .messages
            .push(format!("--hist-log could not be written completely: {e}"));
        partial.failed = true;
    }
    Ok(partial)
}

/// The end of the measured window from each thread's (end of issuing, last measured answer):
/// the last end of issuing, or, for a fixed count of requests (`by_count`), the last answer if
/// later.
fn window_end(
    by_count: bool,
    threads: impl Iterator<Item = (Instant, Option<Instant>)>,
) -> Option<Instant> {
    threads
        .map(|(ended, last)| match last {
            Some(l) if by_count => l.max(ended),
            _ => ended,
        })
        .max()
}

fn progress_bar(cfg: &RunConfig) -> Option<ProgressBar> {
    if !cfg.progress || !std::io::stdout().is_terminal() {
        return None;
    }
    let b = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
    b.set_style(ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}").ok()?);
    Some(b)
}

fn progress_text(cfg: &RunConfig, tl: &Timeline, last: Option<(u64, f64, u64, f64)>) -> String {
    let now = Instant::now();
    if now < tl.measure_start {
        return format!(
            "warming up, {:.0}s left",
            (tl.measure_start - now).as_secs_f64().ceil()
        );
    }
    let left = match tl.end {
        Some(e) => format!(
            "{:.0}s left",
            e.saturating_duration_since(now).as_secs_f64().ceil()
        ),
        None => format!("{} requests", cfg.requests.unwrap_or(0)),
    };
    match last {
        Some((_, rps, p99, bps)) => format!(
            "{rps:.0} req/s, {}/s, p99 {} (last second); {left}",
            fmt_bytes(bps),
            fmt_us(p99)
        ),
        None => format!("measuring; {left}"),
    }
}

#[cfg(test)]
mod window_tests {
    use super::window_end;
    use std::time::{Duration, Instant};

    #[test]
    fn a_timed_run_is_divided_by_its_window_not_its_tail() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        // Two threads issued until 5 s; their last answers came 3.3 s later (a queueing server).
        let threads = [(at(5000), Some(at(8300))), (at(4990), Some(at(7000)))];
        assert_eq!(window_end(false, threads.into_iter()), Some(at(5000)));
        // A fixed count of requests is done when its last answer is in.
        assert_eq!(window_end(true, threads.into_iter()), Some(at(8300)));
        // No answer at all: the end of issuing.
        assert_eq!(window_end(true, [(at(10), None)].into_iter()), Some(at(10)));
        assert_eq!(window_end(false, std::iter::empty()), None);
    }
}
