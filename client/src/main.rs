//! `ringlab-client`: see `--help`.

use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::Parser;
use ringlab_client::{run_with_stop, Args, RunError};
use signal_hook::consts::SIGINT;

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match args.resolve() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringlab-client: {e}");
            return ExitCode::from(2);
        }
    };
    let json = cfg.json.clone();
    // SIGINT: stop early and report what was measured; a second SIGINT exits at once.
    let stop = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register_conditional_shutdown(SIGINT, 130, stop.clone());
    let _ = signal_hook::flag::register(SIGINT, stop.clone());
    let report = match run_with_stop(cfg, stop) {
        Ok(r) => r,
        Err(e @ RunError::Setup(_)) => {
            eprintln!("ringlab-client: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("ringlab-client: {e}");
            return ExitCode::from(1);
        }
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
