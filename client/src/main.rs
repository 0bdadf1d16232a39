//! `ringlab-client`: see `--help`.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use ringlab_client::{procs, run_with_stop, Args, RunError};
use ringlab_runtime::procgroup;
use signal_hook::consts::SIGINT;

fn main() -> ExitCode {
    // `completions SHELL` and `man` as the first argument (ringlab_runtime::cli), before clap
    // takes them for the address.
    if let Some(code) = ringlab_runtime::cli::intercept(<Args as clap::CommandFactory>::command) {
        return code;
    }
    let args = Args::parse();
    let tag = match args.worker_of {
        Some(_) => format!("ringlab-client[{}]", args.worker_index),
        None => "ringlab-client".to_string(),
    };
    let cfg = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{tag}: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(w) = &cfg.worker {
        if let Err(e) = procgroup::become_worker(w.parent) {
            eprintln!("{tag}: {e}");
            return ExitCode::from(2);
        }
    }
    let json = cfg.json.clone();
    // SIGINT: stop early and report what was measured; a second SIGINT exits at once.
    let stop = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register_conditional_shutdown(SIGINT, 130, stop.clone());
    let _ = signal_hook::flag::register(SIGINT, stop.clone());
    let fail = |e: RunError| {
        eprintln!("{tag}: {e}");
        match e {
            RunError::Setup(_) => ExitCode::from(2),
            RunError::Failed(_) => ExitCode::from(1),
        }
    };
    if cfg.worker.is_some() {
        // A worker's results go to the first process, which reports the merged run.
        return match procs::run_worker(cfg, stop) {
            Ok(code) => ExitCode::from(code),
            Err(e) => fail(e),
        };
    }
    let report = match run_with_stop(cfg, stop) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    print!("{}", report.summary());
    let mut code = report.exit_code;
    if let Some(path) = json {
        if let Err(e) = std::fs::write(&path, report.to_json() + "\n") {
            eprintln!("ringlab-client: cannot write {}: {e}", path.display());
            code = code.max(1);
        }
    }
    ExitCode::from(code)
}
