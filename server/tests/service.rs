//! packaging/ringlab-server.service: systemd accepts the unit (`systemd-analyze verify`, with
//! ExecStart pointed at the binary under test), the server accepts the flags it starts with and
//! drains on the signal it stops with, and the settings that must agree with those flags do.

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Server, BIN, EXIT_TIMEOUT};

fn packaging(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(file)
}

fn unit_text() -> String {
    std::fs::read_to_string(packaging("ringlab-server.service")).expect("read the unit")
}

/// The `[Service]` section's settings, each key with its values in order.
fn service_settings(unit: &str) -> HashMap<String, Vec<String>> {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    let mut section = "";
    for line in unit.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line;
            continue;
        }
        if section == "[Service]" {
            let (k, v) = line.split_once('=').expect("Key=Value");
            map.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    map
}

/// The one value of `key` in `[Service]`.
fn one<'a>(settings: &'a HashMap<String, Vec<String>>, key: &str) -> &'a str {
    match settings.get(key).map(Vec::as_slice) {
        Some([v]) => v,
        other => panic!("[Service] {key}= should be set once: {other:?}"),
    }
}

/// The default value of RINGLAB_ARGS, from `Environment="RINGLAB_ARGS=..."`.
fn default_args(settings: &HashMap<String, Vec<String>>) -> String {
    settings
        .get("Environment")
        .into_iter()
        .flatten()
        .find_map(|v| v.trim_matches('"').strip_prefix("RINGLAB_ARGS="))
        .expect("Environment=\"RINGLAB_ARGS=...\"")
        .to_string()
}

/// ExecStart's arguments after the binary, with `$RINGLAB_ARGS` expanded as systemd does (an
/// unquoted `$VAR` splits at whitespace).
fn exec_start_args(settings: &HashMap<String, Vec<String>>) -> Vec<String> {
    let exec = one(settings, "ExecStart");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/bin/ringlab-server"), "{exec}");
    let env = default_args(settings);
    words
        .flat_map(|w| match w {
            "$RINGLAB_ARGS" | "${RINGLAB_ARGS}" => {
                env.split_whitespace().map(str::to_string).collect()
            }
            w => vec![w.to_string()],
        })
        .collect()
}

/// The value after `flag` in `args`.
fn flag_value<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    let i = args.iter().position(|a| a == flag)?;
    Some(
        args.get(i + 1)
            .unwrap_or_else(|| panic!("{flag} has no value")),
    )
}

/// The CPUs of a list like `0-1` or `0,2,4-5` (systemd's CPUAffinity= and the ready line's
/// `cores=` spell them differently).
fn cpu_list(s: &str) -> Vec<usize> {
    let num = |n: &str| {
        n.trim()
            .parse::<usize>()
            .unwrap_or_else(|_| panic!("CPU list {s:?}"))
    };
    s.split([',', ' '])
        .filter(|p| !p.is_empty())
        .flat_map(|p| match p.split_once('-') {
            Some((a, b)) => (num(a)..=num(b)).collect(),
            None => vec![num(p)],
        })
        .collect()
}

/// systemd-analyze, or a skip (a failure under RINGLAB_REQUIRE_PEERS=1, as in CI).
fn systemd_analyze() -> Option<&'static str> {
    let available = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .map_err(|e| format!("systemd-analyze not runnable ({e}); Debian: apt-get install systemd"))
        .and_then(|o| {
            o.status
                .success()
                .then_some(())
                .ok_or_else(|| format!("systemd-analyze --version: {o:?}"))
        });
    (!common::skip_unless("RINGLAB_REQUIRE_PEERS", "systemd-analyze", available))
        .then_some("systemd-analyze")
}

/// Write the unit with ExecStart's binary replaced by `exe` into a directory of its own, and run
/// `systemd-analyze verify` on it: (success, the stderr lines about this unit).
fn verify_with_binary(tool: &str, exe: &str, tag: &str) -> (bool, Vec<String>) {
    let dir = common::temp_path(&format!("unit-{tag}"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let unit = unit_text().replace(
        "ExecStart=/usr/bin/ringlab-server ",
        &format!("ExecStart={exe} "),
    );
    assert!(
        unit.contains(&format!("ExecStart={exe} ")),
        "ExecStart rewritten"
    );
    let path = dir.join("ringlab-server.service");
    std::fs::write(&path, unit).expect("write the unit");
    // --man=no: the man page named in Documentation= is installed by the package, not here
    // (scripts/package.sh --check verifies the installed unit with it).
    let out = Command::new(tool)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("systemd-analyze runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ours = stderr
        .lines()
        .filter(|l| l.contains("ringlab-server"))
        .map(str::to_string)
        .collect();
    (out.status.success(), ours)
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let Some(tool) = systemd_analyze() else {
        return;
    };
    let (ok, lines) = verify_with_binary(tool, BIN, "good");
    assert!(
        ok && lines.is_empty(),
        "verify: ok={ok}\n{}",
        lines.join("\n")
    );
    // The same check notices a unit that cannot start: it is not vacuous.
    let (ok, lines) = verify_with_binary(tool, "/nonexistent/ringlab-server", "bad");
    assert!(!ok && !lines.is_empty(), "a missing binary passed verify");
}

#[test]
fn the_unit_flags_start_a_server_that_drains_on_sigterm() {
    let settings = service_settings(&unit_text());
    let mut args = exec_start_args(&settings);
    assert_eq!(one(&settings, "KillSignal"), "SIGTERM");
    // Our harness passes --io and --listen itself: take the unit's --io, drop its --listen
    // (0.0.0.0:7000) for 127.0.0.1:0, keep every other flag as the unit has it.
    let io = flag_value(&args, "--io")
        .expect("the unit names --io")
        .to_string();
    for flag in ["--io", "--listen"] {
        if let Some(i) = args.iter().position(|a| a == flag) {
            args.drain(i..i + 2);
        }
    }
    if common::skip_backend(&io) {
        return;
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut srv = Server::start(&io, &args);
    let cores = srv
        .ready
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("cores="));
    assert_eq!(
        cores.map(cpu_list),
        Some(cpu_list(one(&settings, "CPUAffinity"))),
        "{}",
        srv.ready
    );
    let mut c = srv.connect();
    c.write_all(b"ping from the unit test").expect("send");
    let mut back = [0u8; 23];
    c.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"ping from the unit test");
    drop(c);
    // KillSignal=SIGTERM: drain, print statistics, exit 0.
    let stdout = srv.stop_and_wait(EXIT_TIMEOUT);
    assert!(stdout.contains("stats io="), "{stdout}");
}

#[test]
fn settings_agree_with_the_flags() {
    let settings = service_settings(&unit_text());
    let args = exec_start_args(&settings);
    // The loops pin to --cores; the unit's CPUAffinity must be the same CPUs.
    let cores = flag_value(&args, "--cores").expect("the unit names --cores");
    assert_eq!(cpu_list(one(&settings, "CPUAffinity")), cpu_list(cores));
    // systemd must wait longer than the server's drain before SIGKILL.
    let grace = flag_value(&args, "--grace").unwrap_or("5s");
    let grace = ringlab_server::config::parse_duration(grace).expect("--grace");
    let stop = ringlab_server::config::parse_duration(one(&settings, "TimeoutStopSec"))
        .expect("TimeoutStopSec in the server's duration syntax (e.g. 30s)");
    assert!(
        stop > grace + Duration::from_secs(1),
        "TimeoutStopSec {stop:?} vs --grace {grace:?}"
    );
    // Descriptors for at least --max-conns connections (plus listeners and rings).
    let max_conns: u64 = flag_value(&args, "--max-conns")
        .unwrap_or("10000")
        .parse()
        .expect("--max-conns");
    let nofile: u64 = one(&settings, "LimitNOFILE").parse().expect("LimitNOFILE");
    assert!(
        nofile > max_conns + 1000,
        "LimitNOFILE {nofile} vs --max-conns {max_conns}"
    );
    // With --processes the first process forwards SIGTERM itself: systemd signals only it.
    assert_eq!(one(&settings, "KillMode"), "mixed");
    // io_uring needs its system calls through the filter.
    let filter = settings.get("SystemCallFilter").expect("SystemCallFilter=");
    assert!(
        filter[0].split_whitespace().any(|g| g == "@aio"),
        "{filter:?}"
    );
    // /etc/default/ringlab-server shows the same default it would replace.
    let default_file = std::fs::read_to_string(packaging("ringlab-server.default")).expect("read");
    let shown = default_file
        .lines()
        .find_map(|l| l.strip_prefix("#RINGLAB_ARGS="))
        .expect("the default shown in ringlab-server.default");
    assert_eq!(shown.trim_matches('"'), default_args(&settings));
}
