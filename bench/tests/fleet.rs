//! Fleet mode end to end: scripts/fleet-demo.sh (three namespace "hosts" with their own sshd,
//! `ringlab-bench compare --quick` across them, client and server counts equal per run; then
//! multiplex (idle-connection holders on the client hosts), http (wrk on the client hosts) and
//! c10k across them, counts equal (holders' checking echoes included); a server that cannot
//! start (its port taken): one line naming the server host and the cause; a client host's sshd
//! killed mid-run: one line naming it; nothing left running after any). Needs root; skipped
//! otherwise, or failed when RINGLAB_REQUIRE_NETADMIN=1 (CI runs as root).

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ringlab-bench");

fn why_not() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("not root (network namespaces and sshd need it)".into());
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Err("ip (iproute2) not found".into());
    }
    Ok(())
}

/// The server and client binaries beside ringlab-bench, built when `cargo test` did not.
fn bin_dir() -> PathBuf {
    let dir = Path::new(BIN).parent().expect("bin dir").to_path_buf();
    if !dir.join("ringlab-server").is_file() || !dir.join("ringlab-client").is_file() {
        let release = dir.file_name().is_some_and(|n| n == "release");
        let mut c = Command::new(env!("CARGO"));
        c.args(["build", "-p", "ringlab-server", "-p", "ringlab-client"]);
        if release {
            c.arg("--release");
        }
        assert!(c.status().expect("cargo build").success());
    }
    dir
}

#[test]
fn fleet_demo_over_ssh_in_namespaces() {
    if let Err(reason) = why_not() {
        if std::env::var("RINGLAB_REQUIRE_NETADMIN").is_ok_and(|v| v == "1") {
            panic!("RINGLAB_REQUIRE_NETADMIN=1 but the fleet demo cannot run: {reason}");
        }
        println!("skipped: fleet demo: {reason}");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fleet-demo.sh");
    let dir = bin_dir();
    // Bounded: the script tears everything down on SIGTERM (its trap).
    let out = Command::new("timeout")
        .args(["-s", "TERM", "-k", "20", "540"])
        .arg(&script)
        .arg("--kill-client-sshd")
        .arg("--server-fails")
        .arg("--interrupt")
        .args(["--scenario", "multiplex --quick --backends epoll"])
        .args(["--scenario", "http --quick --backends epoll"])
        .args(["--scenario", "c10k --quick --conns 2000 --backends epoll"])
        .args([
            "--scenario",
            "compare --quick --backends epoll --reps 1 --profile",
        ])
        .args([
            "--scenario",
            "files --quick --backends uring,epoll-sendfile --no-aa",
        ])
        .args(["--scenario", "clients --quick"])
        .arg("--bin-dir")
        .arg(&dir)
        .env(
            "RINGLAB_FLEET_PREFIX",
            format!("rlft{}", std::process::id() % 100_000),
        )
        .output()
        .expect("runs fleet-demo.sh");
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "fleet-demo.sh failed ({}):\n{text}",
        out.status
    );
    assert!(text.contains("phase 1 ok"), "{text}");
    for s in ["multiplex", "http", "c10k", "compare", "files", "clients"] {
        assert!(text.contains(&format!("phase 4 ok: {s}: ")), "{s}: {text}");
    }
    // multiplex held 1000 idle connections from the client hosts: their echoes are counted.
    assert!(text.contains("+ holders 1000;"), "{text}");
    // http: wrk from the client hosts, its counts not compared.
    assert!(text.contains("epoll (wrk) x=64: server"), "{text}");
    // --profile: perf recorded the server host's CPUs; the server's own samples were found
    // (by the PIDs of its ready line), or, where perf is missing, the profile says so.
    let profile = text
        .lines()
        .find(|l| l.starts_with("profile epoll"))
        .unwrap_or_else(|| panic!("no profile line: {text}"));
    if have_perf() {
        let n: u64 = profile
            .split(": ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{profile}"));
        assert!(n > 0, "no sample of the server: {profile}");
    } else {
        assert!(profile.contains("perf is not installed"), "{profile}");
    }
    // files: its data set made on the server host, every row served it byte for byte there
    // and was measured from the client hosts (hot and cold clients on each), counts equal.
    for row in ["uring", "epoll sendfile"] {
        assert!(
            text.lines()
                .any(|l| l.contains(&format!(" {row} x=0: server "))
                    && l.contains("(hot): ")
                    && l.contains("(cold): ")),
            "files {row}: {text}"
        );
    }
    assert!(
        text.contains("kept for reuse on the server host: ringlab-files-data-quick"),
        "{text}"
    );
    // clients: the server capped in a cgroup on its host (removed after: the demo checks),
    // ringlab-client's and wrk's client CPU read on the client hosts.
    assert!(!text.contains("could not be capped"), "{text}");
    for row in ["ringlab-client uring", "ringlab-client epoll", "wrk"] {
        assert!(
            text.contains(&format!(" {row} x=64: server ")),
            "clients {row}: {text}"
        );
    }
    assert!(
        text.contains("ringlab-client epoll carries "),
        "clients: no load-per-core line: {text}"
    );
    assert!(text.contains("phase 3 ok"), "{text}");
    assert!(
        text.contains("last line: ringlab-bench: server host root@10.78.0.1: ringlab-server failed to start: "),
        "{text}"
    );
    assert!(text.contains("phase 2 ok"), "{text}");
    assert!(
        text.contains("last line: ringlab-bench: client host root@10.78.0.3:"),
        "{text}"
    );
}

/// Whether perf is on this machine (the demo's hosts share its file system).
fn have_perf() -> bool {
    Command::new("sh")
        .args(["-c", "command -v perf"])
        .output()
        .is_ok_and(|o| o.status.success())
}
