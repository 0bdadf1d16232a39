//! ringlab-bench compare end to end: the verdict comes first, results.json carries it, and the
//! CPU-cap cgroup does not outlive the run. Runs the real binaries on a short schedule; asserts
//! what the report says and holds, never a timing.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ringlab-bench");

fn out_dir(what: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("verdict-{what}-{}", std::process::id()))
}

/// This bench process's CPU-cap cgroups, wherever the cpu controller is mounted.
fn leftover_cgroups(bench_pid: u32) -> Vec<String> {
    // One group (`--sequential`), or one per row side by side (`ringlab-bench-PID-I`).
    let name = format!("ringlab-bench-{bench_pid}");
    let mut out = Vec::new();
    for root in [
        "/sys/fs/cgroup/cpu",
        "/sys/fs/cgroup/cpu,cpuacct",
        "/sys/fs/cgroup",
    ] {
        for e in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let n = e.file_name().to_string_lossy().to_string();
            if n == name || n.starts_with(&format!("{name}-")) {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

#[test]
fn compare_quick_prints_the_verdict_first_and_writes_it_to_results_json() {
    let dir = out_dir("compare");
    let child = Command::new(BIN)
        .args(["compare", "--quick", "--reps", "2", "--duration", "0.3"])
        .arg("--out")
        .arg(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        leftover_cgroups(pid).is_empty(),
        "cgroup left behind: {:?}",
        leftover_cgroups(pid)
    );

    let stdout = String::from_utf8_lossy(&out.stdout);
    // (On a loaded machine the load may have been lowered to what the rows kept.)
    let first_verdict = stdout
        .find("uring vs epoll, 512 conns, 50% load (")
        .or_else(|| stdout.find("uring vs epoll, 512 conns, 50% load, lowered to "));
    let first_table = stdout.find("| conns |");
    assert!(
        first_verdict.is_some() && first_verdict < first_table,
        "the verdict is printed first:\n{stdout}"
    );

    let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
    let verdicts = report.find("## Verdicts").expect("a verdict section");
    let tables = report.find("### Equal offered load").expect("the tables");
    assert!(verdicts < tables, "{report}");
    assert!(
        report.contains(": server CPU/request ") && report.contains("(A/A floor "),
        "{report}"
    );
    // Two reps are too few for a 95% interval, and the report says so instead of a call.
    assert!(report.contains("over 2 reps, 50% confidence"), "{report}");
    assert!(!report.contains(", significant ("), "{report}");
    assert!(
        report.contains("Stopped after 2 repetitions"),
        "how the repetitions ended:\n{report}"
    );
    assert!(
        report.contains("Server-bound capacity: each server in a cgroup of its own, capped at 0.167 of a CPU (0.5 in all)")
            || report.contains("Server-bound capacity skipped: no cgroup could be written"),
        "{report}"
    );
    assert!(dir.join("compare-cpu.svg").is_file());

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
    assert!(json.get("machine").is_some() && json.get("compare").is_some());
    let vs = json["verdicts"].as_array().expect("verdicts");
    assert!(!vs.is_empty());
    let v = &vs[0];
    assert_eq!(v["scenario"], "compare");
    assert_eq!(v["candidate"], "uring");
    assert_eq!(v["baseline"], "epoll");
    assert_eq!(v["conns"], 512);
    assert_eq!(v["metric"], "server_cpu_us_per_request");
    assert_eq!(v["significant"], false);
    let ci = v["ci95"].as_array().unwrap();
    let (lo, hi) = (ci[0].as_f64().unwrap(), ci[1].as_f64().unwrap());
    let ratio = v["ratio"].as_f64().unwrap();
    assert!(lo <= ratio && ratio <= hi, "{v}");
    assert_eq!(v["noise_floor"].as_array().map(Vec::len), Some(2), "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Side by side (the default), a point's rows are measured over one window; `--sequential`
/// measures them one after another. Read from each raw run's window start in results.json.
#[test]
fn compare_measures_a_points_rows_side_by_side_unless_sequential() {
    for (flag, together) in [(None, true), (Some("--sequential"), false)] {
        let dir = out_dir(if together { "together" } else { "sequential" });
        let out = Command::new(BIN)
            .args(["compare", "--quick", "--reps", "2", "--duration", "0.4"])
            .args(flag)
            .arg("--out")
            .arg(&dir)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{flag:?}: {stderr}");
        let report = std::fs::read_to_string(dir.join("report.md")).unwrap();
        let method = if together {
            "**Side by side**"
        } else {
            "**Sequential**"
        };
        assert!(report.contains(method), "{report}");
        // Side by side the three rows share the load's rate (lowered, on a loaded machine, to
        // what they kept).
        let shared = report.contains("50% load (3 × ") || report.contains("lowered to 3 × ");
        assert_eq!(shared, together, "{report}");
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap())
                .unwrap();
        let raw = json["compare"]["runs"].as_array().expect("every run");
        let mut sets: std::collections::BTreeMap<(String, u64), Vec<u64>> = Default::default();
        for r in raw {
            let key = (r["x"].to_string(), r["rep"].as_u64().unwrap());
            sets.entry(key)
                .or_default()
                .push(r["window_start_ms"].as_u64().unwrap());
        }
        // Equal load and server-bound, two repetitions each (one at equal load if its rate
        // was lowered after the first).
        assert!((3..=4).contains(&sets.len()), "{sets:?}");
        for (key, mut starts) in sets {
            assert_eq!(starts.len(), 3, "uring, epoll and the A/A row at {key:?}");
            starts.sort_unstable();
            if together {
                assert!(
                    starts[2] - starts[0] <= 20,
                    "one window at {key:?}: {starts:?}"
                );
            } else {
                // Each run's window starts after the one before it has ended.
                assert!(
                    starts.windows(2).all(|w| w[1] - w[0] >= 400),
                    "one after another at {key:?}: {starts:?}"
                );
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_bad_load_is_refused_in_one_line() {
    let out = Command::new(BIN)
        .args(["compare", "--quick", "--loads", "150"])
        .arg("--out")
        .arg(out_dir("badload"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--loads takes percentages"), "{err}");
    let _ = std::fs::remove_dir_all(out_dir("badload"));
}

/// The processes whose command line mentions `needle` (the bench's report directory: its
/// servers' statistics files live there).
fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        // A zombie has an empty command line: it runs nothing.
        if String::from_utf8_lossy(&cmd).contains(needle) {
            out.push(pid);
        }
    }
    out
}

/// A bench killed outright (SIGKILL: no handler runs) leaves none of its servers running:
/// each dies with it (PR_SET_PDEATHSIG).
#[test]
fn a_killed_bench_leaves_no_server_running() {
    let dir = out_dir("killed");
    let mut child = Command::new(BIN)
        .args(["compare", "--quick", "--duration", "3"])
        .arg("--out")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let needle = dir.join("tmp").display().to_string();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = Vec::new();
    while seen.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        seen = processes_mentioning(&needle);
    }
    assert!(!seen.is_empty(), "no server of the bench was seen running");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut left = processes_mentioning(&needle);
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = processes_mentioning(&needle);
    }
    assert!(
        left.is_empty(),
        "left running after the bench was killed: {left:?}"
    );
    // SIGKILL gave the bench no chance to remove its CPU-cap group, if it had made one.
    for g in leftover_cgroups(pid) {
        let _ = std::fs::remove_dir(g);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bench interrupted (SIGINT, as Ctrl-C sends) while its servers run in CPU-cap groups
/// removes the groups, stops those servers, says so in one line and exits 130.
#[test]
fn an_interrupted_bench_removes_its_cgroups_and_stops_its_servers() {
    let dir = out_dir("interrupted");
    let child = Command::new(BIN)
        .args(["compare", "--quick", "--duration", "3"])
        .arg("--out")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let needle = dir.join("tmp").display().to_string();
    // The server-bound part comes after the equal-load rows: wait for its groups.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    let mut groups = Vec::new();
    while groups.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            break;
        }
        groups = leftover_cgroups(pid);
    }
    if groups.is_empty() {
        let out = child.wait_with_output().unwrap();
        let report = std::fs::read_to_string(dir.join("report.md")).unwrap_or_default();
        assert!(
            report.contains("Server-bound capacity skipped: no cgroup could be written"),
            "no CPU-cap group appeared, and the report does not say why:\n{}\n{report}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!("skipped: this machine's cgroups cannot be written");
        let _ = std::fs::remove_dir_all(&dir);
        return;
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let st = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains("ringlab-bench: interrupted by SIGINT"),
        "{stderr}"
    );
    assert!(
        leftover_cgroups(pid).is_empty(),
        "cgroups left after SIGINT: {:?}",
        leftover_cgroups(pid)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut left = processes_mentioning(&needle);
    while !left.is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(100));
        left = processes_mentioning(&needle);
    }
    assert!(left.is_empty(), "left running after SIGINT: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
