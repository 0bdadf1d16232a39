//! `ringlab-bench files` end to end: a small data set, every default row verified byte for
//! byte and measured once, the report's table and JSON.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ringlab-bench");

/// Every default row must pass the byte-exact check before it is measured.
#[test]
fn quick_files_run_verifies_and_measures_every_default_row() {
    let base = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-files-{}", std::process::id()));
    let out = base.join("out");
    let run = Command::new(BIN)
        .args([
            "files",
            "--quick",
            "--no-aa",
            "--data-size",
            "16M",
            "--hot-files",
            "20",
        ])
        .args(["--hot-rate", "200", "--duration", "1", "--data"])
        .arg(base.join("data"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap_or_default();
    assert!(run.status.success(), "{stderr}\n{report}");
    assert!(!report.contains("FAILED"), "{report}");
    for row in [
        "| uring |",
        "| epoll blocking |",
        "| epoll threads |",
        "| epoll sendfile |",
    ] {
        let line = report
            .lines()
            .find(|l| l.starts_with(row))
            .unwrap_or_else(|| panic!("no row {row}:\n{report}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // Hot requests were answered, cold files fetched.
        assert!(cells[3].parse::<f64>().unwrap() > 0.0, "{line}");
        assert!(cells[9].parse::<f64>().unwrap() > 0.0, "{line}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    // Four rows (six where nginx is installed), each verified: 20 hot files and some cold ones.
    let checks = json["files"]["verification"].as_array().unwrap();
    assert!(checks.len() >= 4, "{checks:?}");
    assert!(
        checks
            .iter()
            .all(|c| c["error"].is_null() && c["ok"]["files"].as_u64().is_some_and(|n| n > 20)),
        "{checks:?}"
    );
    assert!(json["files"]["runs"].as_array().unwrap().len() >= 4);
    let _ = std::fs::remove_dir_all(&base);
}

#[test]
fn bad_data_size_and_foreign_data_dir_are_one_line_errors() {
    let base = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bench-files-bad-{}", std::process::id()));
    std::fs::create_dir_all(base.join("foreign")).unwrap();
    std::fs::write(base.join("foreign").join("mine.txt"), b"keep me").unwrap();
    let run = |args: &[&str]| {
        let o = Command::new(BIN)
            .arg("files")
            .args(args)
            .arg("--out")
            .arg(base.join("out"))
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    let (code, err) = run(&["--data-size", "lots"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is not a size"), "{err}");
    let foreign = base.join("foreign");
    let (code, err) = run(&["--quick", "--data", foreign.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not a ringlab data set"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(foreign.join("mine.txt").exists());
    let (code, err) = run(&["--quick", "--data-size", "512T"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("more than this bench makes"), "{err}");
    let _ = std::fs::remove_dir_all(&base);
}
