//! `ringlab-server`: see `--help`.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use ringlab_runtime::procgroup;
use ringlab_server::config::LogFormat;
use ringlab_server::{procs, start, Args, ServerError, HUP_LINE};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    // `completions SHELL` and `man` as the first argument (ringlab_runtime::cli), before clap.
    if let Some(code) = ringlab_runtime::cli::intercept(<Args as clap::CommandFactory>::command) {
        return code;
    }
    let args = Args::parse();
    init_logs(args.log_format);
    if let Some(parent) = args.worker_of {
        if args.processes > 1 {
            tracing::error!("ringlab-server: --worker-of is internal to --processes; drop it");
            return ExitCode::from(1);
        }
        if let Err(e) = procgroup::become_worker(parent) {
            return fail(&anyhow::Error::from(e).into());
        }
    } else if !args.listen_fds.is_empty() {
        tracing::error!("ringlab-server: --listen-fds is internal to --processes; drop it");
        return ExitCode::from(1);
    }
    let worker = args.worker_of.is_some();
    let stats_json = args.stats_json.clone();
    // Register the handlers before the ready line, so a signal right after it is not lost.
    let mut signals = match Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("ringlab-server: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    if args.processes > 1 {
        return procs::parent_main(args, signals);
    }
    let tag = if worker {
        format!("ringlab-server[{}]", args.worker_index)
    } else {
        "ringlab-server".to_string()
    };
    let running = match start(args) {
        Ok(r) => r,
        Err(e) => return fail_tagged(&tag, &e),
    };
    if let Some(line) = running.coalesce_line() {
        if !worker {
            tracing::info!("ringlab-server: {line}");
        }
    }
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", running.ready_line());
        let _ = out.flush();
    }
    let stopper = running.stopper();
    let signal_tag = tag.clone();
    std::thread::Builder::new()
        .name("ringlab-signals".into())
        .spawn(move || {
            let mut seen = false;
            for sig in signals.forever() {
                if sig == SIGHUP {
                    tracing::info!("{signal_tag}: {HUP_LINE}");
                    continue;
                }
                if seen {
                    tracing::warn!("{signal_tag}: second signal, exiting at once");
                    std::process::exit(128 + sig);
                }
                seen = true;
                tracing::info!(
                    "{signal_tag}: signal {sig}: draining (send it again to exit at once)"
                );
                stopper.stop();
            }
        })
        .expect("spawning the signal thread");
    let stats = match running.join() {
        Ok(s) => s,
        Err(e) => return fail_tagged(&tag, &e),
    };
    // A worker's statistics go to the first process (through --stats-json), which prints the
    // group's sum.
    if !worker {
        // Not print!: it panics when stdout is gone (a closed pipe), and the statistics file
        // below must still be written.
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(stats.summary().as_bytes());
        let _ = out.flush();
    }
    if let Some(path) = stats_json {
        let json = serde_json::to_string_pretty(&stats).expect("stats serialize");
        if let Err(e) = std::fs::write(&path, json + "\n") {
            tracing::error!("{tag}: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

fn fail(e: &ServerError) -> ExitCode {
    fail_tagged("ringlab-server", e)
}

fn fail_tagged(tag: &str, e: &ServerError) -> ExitCode {
    tracing::error!("{tag}: {e}");
    match e {
        ServerError::Uring(_) => ExitCode::from(2),
        ServerError::Other(_) => ExitCode::from(1),
    }
}

/// Log lines go to stderr through `tracing`: `--log-format text|json`, filtered by RUST_LOG
/// (default `info`; a RUST_LOG that does not parse is said and ignored).
fn init_logs(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let (filter, bad) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::try_new(&v) {
            Ok(f) => (f, None),
            Err(e) => (
                EnvFilter::new("info"),
                Some(format!("RUST_LOG={v:?} ignored: {e}")),
            ),
        },
        _ => (EnvFilter::new("info"), None),
    };
    // A log line that cannot be written (stderr closed) is lost, not reported through
    // eprintln!, which would panic the thread logging it: the signal thread, among others.
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .log_internal_errors(false);
    let set = match format {
        LogFormat::Text => b.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => b.json().flatten_event(true).try_init(),
    };
    if set.is_ok() {
        if let Some(b) = bad {
            tracing::warn!("ringlab-server: {b}");
        }
    }
}
