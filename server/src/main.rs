//! `ringlab-server`: see `--help`.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use ringlab_server::{start, Args, ServerError};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

fn main() -> ExitCode {
    let args = Args::parse();
    let stats_json = args.stats_json.clone();
    // Register the handlers before the ready line, so a signal right after it is not lost.
    let mut signals = match Signals::new([SIGINT, SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ringlab-server: cannot install signal handlers: {e}");
            return ExitCode::from(1);
        }
    };
    let running = match start(args) {
        Ok(r) => r,
        Err(e) => return fail(&e),
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", running.ready_line());
        let _ = out.flush();
    }
    let stopper = running.stopper();
    std::thread::Builder::new()
        .name("ringlab-signals".into())
        .spawn(move || {
            let mut seen = false;
            for sig in signals.forever() {
                if seen {
                    eprintln!("ringlab-server: second signal, exiting at once");
                    std::process::exit(128 + sig);
                }
                seen = true;
                eprintln!("ringlab-server: signal {sig}: draining (send it again to exit at once)");
                stopper.stop();
            }
        })
        .expect("spawning the signal thread");
    let stats = match running.join() {
        Ok(s) => s,
        Err(e) => return fail(&e),
    };
    print!("{}", stats.summary());
    let _ = std::io::stdout().flush();
    if let Some(path) = stats_json {
        let json = serde_json::to_string_pretty(&stats).expect("stats serialize");
        if let Err(e) = std::fs::write(&path, json + "\n") {
            eprintln!("ringlab-server: cannot write {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    ExitCode::SUCCESS
}

fn fail(e: &ServerError) -> ExitCode {
    eprintln!("ringlab-server: {e}");
    match e {
        ServerError::Uring(_) => ExitCode::from(2),
        ServerError::Other(_) => ExitCode::from(1),
    }
}
