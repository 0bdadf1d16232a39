//! `files` in fleet mode: the data set lives on the server host, made, checked, put in its
//! page-cache state before every run and served from there; the disk counters are read there.
//! The bench runs its own binary on that host for the work on files (`ringlab-bench
//! files-data`, hidden, [`helper`]), which prints one JSON document for the bench to read over
//! SSH. The clients on the client hosts fetch the same paths as on one machine (the path lists
//! are copied to each host's directory); the byte-exact pass runs on the server host against
//! the server's loopback address, where the files are to compare with.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::data::{self, DataSet, DataSpec, Manifest};
use super::disk::Disk;
use super::verify::{self, Verified};
use crate::fleet::{ssh, Fleet};

/// `ringlab-bench files-data`: the files scenario's work on its data set, on the host that
/// holds it (fleet mode runs it on the server host over SSH). Prints one JSON document on
/// stdout; progress on stderr.
#[derive(clap::Args, Debug, Clone)]
pub struct HelperArgs {
    /// The data set's directory (made when missing or when its manifest does not match).
    #[arg(long)]
    pub data: PathBuf,
    #[arg(long, value_parser = data::parse_size)]
    pub data_size: u64,
    #[arg(long)]
    pub hot_files: usize,
    #[arg(long)]
    pub seed: u64,
    /// Cold files checked against the manifest (with every hot file) after making or reusing.
    #[arg(long, default_value_t = 0)]
    pub check_cold: usize,
    /// Put the page cache in a run's starting state: cold files dropped, hot ones read.
    #[arg(long, conflicts_with = "verify")]
    pub prepare: bool,
    /// The byte-exact pass against the server at ADDR (every hot file and --check-cold cold
    /// ones, whole and by two ranges). A server that fails it is reported in the JSON
    /// (`error`), not by the exit code.
    #[arg(long, value_name = "ADDR")]
    pub verify: Option<String>,
}

/// What [`helper`] prints after making or reusing the data set.
#[derive(Serialize, Deserialize)]
pub struct Made {
    /// The directory, canonical.
    pub dir: String,
    pub reused: bool,
    pub manifest: Manifest,
    pub disk: Option<Disk>,
    /// Why the disk columns stay empty, where there is no disk to read.
    pub disk_error: Option<String>,
    /// Whether it runs as root there (nginx then stays root to read the data).
    pub root: bool,
}

/// What [`helper`] prints after `--prepare`.
#[derive(Serialize, Deserialize)]
struct Prepared {
    hot_bytes: u64,
}

/// What [`helper`] prints after `--verify`.
#[derive(Serialize, Deserialize)]
struct Checked {
    ok: Option<Verified>,
    error: Option<String>,
}

/// `ringlab-bench files-data` (see [`HelperArgs`]).
pub fn helper(a: &HelperArgs) -> Result<()> {
    println!("{}", helper_doc(a)?);
    Ok(())
}

/// What [`helper`] prints.
fn helper_doc(a: &HelperArgs) -> Result<String> {
    let spec = DataSpec {
        size: a.data_size,
        hot_files: a.hot_files,
        seed: a.seed,
    };
    let set = data::ensure(&a.data, &spec, &mut |l| eprintln!("files-data: {l}"))?;
    let doc = if a.prepare {
        serde_json::to_string(&Prepared {
            hot_bytes: set.prepare_cache()?,
        })?
    } else if let Some(addr) = &a.verify {
        let sample = verify::cold_sample(&set, a.check_cold);
        let r = verify::verify(addr, &set, &sample);
        serde_json::to_string(&Checked {
            error: r.as_ref().err().map(|e| format!("{e:#}")),
            ok: r.ok(),
        })?
    } else {
        set.check(&verify::cold_sample(&set, a.check_cold))?;
        let dir = std::fs::canonicalize(&set.dir)?;
        let disk = Disk::of(&dir);
        serde_json::to_string(&Made {
            dir: dir
                .to_str()
                .context("the data directory's path is not UTF-8")?
                .to_string(),
            reused: set.reused,
            disk_error: disk.as_ref().err().cloned(),
            disk: disk.ok(),
            manifest: set.manifest,
            root: rustix::process::geteuid().is_root(),
        })?
    };
    Ok(doc)
}

/// The data set on the fleet's server host, and how to reach it.
pub struct Remote {
    /// ringlab-bench there.
    bench: String,
    /// `--data DIR --data-size N --hot-files N --seed N --check-cold K`.
    args: Vec<String>,
    /// How long making the set may take there.
    make_limit: Duration,
    pub root: bool,
}

impl Remote {
    /// Make (or reuse) the data set `spec` in `dir` on `f`'s server host and check it there:
    /// the set as the bench sees it (its `dir` a path on that host), the disk under it there.
    pub fn make(
        f: &Fleet,
        dir: &str,
        spec: &DataSpec,
        check_cold: usize,
    ) -> Result<(Remote, DataSet, Result<Disk, String>)> {
        if !ssh::plain_path(dir) {
            bail!("--data {dir:?}: in fleet mode, an absolute path on the server host of letters, digits, '-', '_', '.' and '/'");
        }
        let bench = f.server.bench.clone();
        if bench.is_empty() {
            bail!("ringlab-bench was not placed on the server host");
        }
        // Writing and hashing: at least 20 MB/s, plus a minute.
        let make_limit = Duration::from_secs(60 + spec.size / (20 << 20));
        let r = Remote {
            bench,
            args: vec![
                "--data".into(),
                dir.into(),
                "--data-size".into(),
                spec.size.to_string(),
                "--hot-files".into(),
                spec.hot_files.to_string(),
                "--seed".into(),
                spec.seed.to_string(),
                "--check-cold".into(),
                check_cold.to_string(),
            ],
            make_limit,
            root: false,
        };
        println!(
            "files: making or reusing the data set in {dir} on {} ({}; making it may take up to {} s)",
            f.server.ssh.dest,
            data::human(spec.size),
            make_limit.as_secs()
        );
        let out = f.on_server_within(&r.script(&[]), make_limit)?;
        let made: Made = serde_json::from_str(last_doc(&out))
            .context("reading ringlab-bench files-data's answer from the server host")?;
        let set = DataSet {
            dir: PathBuf::from(&made.dir),
            manifest: made.manifest,
            reused: made.reused,
        };
        let disk = match (made.disk, made.disk_error) {
            (Some(d), _) => Ok(d),
            (None, e) => Err(format!(
                "on {}: {}",
                f.server.ssh.dest,
                e.unwrap_or_else(|| "no disk".into())
            )),
        };
        Ok((
            Remote {
                root: made.root,
                ..r
            },
            set,
            disk,
        ))
    }

    /// The helper's command line with `extra`, as a script for the server host.
    fn script(&self, extra: &[&str]) -> String {
        let mut argv = vec![self.bench.clone(), "files-data".to_string()];
        argv.extend(self.args.iter().cloned());
        argv.extend(extra.iter().map(|s| s.to_string()));
        ssh::join(&argv)
    }

    /// Put the server host's page cache in a run's starting state.
    pub fn prepare(&self, f: &Fleet) -> Result<()> {
        let out = f.on_server_within(&self.script(&["--prepare"]), self.make_limit)?;
        let _: Prepared = serde_json::from_str(last_doc(&out))
            .context("reading ringlab-bench files-data --prepare's answer")?;
        Ok(())
    }

    /// The byte-exact pass on the server host against the server listening on `port` there:
    /// what it checked, or (inner error) why the server failed it.
    pub fn verify(&self, f: &Fleet, port: &str) -> Result<std::result::Result<Verified, String>> {
        let addr = format!("127.0.0.1:{port}");
        let out = f.on_server_within(&self.script(&["--verify", &addr]), self.make_limit)?;
        let c: Checked = serde_json::from_str(last_doc(&out))
            .context("reading ringlab-bench files-data --verify's answer")?;
        Ok(match (c.ok, c.error) {
            (Some(v), _) => Ok(v),
            (None, e) => Err(e.unwrap_or_else(|| "no answer".into())),
        })
    }
}

/// The last non-empty line of `out` (the helper's JSON document).
fn last_doc(out: &str) -> &str {
    out.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: HelperArgs,
    }

    #[test]
    fn the_helper_makes_prepares_and_verifies_and_says_so_in_json() {
        let tmp = std::env::temp_dir().join(format!("ringlab-files-helper-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let base = |extra: &[&str]| {
            let mut v = vec![
                "x",
                "--data",
                tmp.to_str().unwrap(),
                "--data-size",
                "3M",
                "--hot-files",
                "5",
                "--seed",
                "7",
                "--check-cold",
                "1",
            ];
            v.extend(extra);
            Cli::try_parse_from(v).unwrap().a
        };
        // Made, then reused: the JSON names it, with the manifest the bench reads.
        let made: Made = serde_json::from_str(&helper_doc(&base(&[])).unwrap()).unwrap();
        assert!(!made.reused);
        assert_eq!(made.manifest.hot().count(), 5);
        assert_eq!(made.manifest.data_size, 3 << 20);
        assert_eq!(
            PathBuf::from(&made.dir),
            std::fs::canonicalize(&tmp).unwrap()
        );
        assert!(made.disk.is_some() != made.disk_error.is_some());
        let again: Made = serde_json::from_str(&helper_doc(&base(&[])).unwrap()).unwrap();
        assert!(again.reused);
        // The cache prepared: every hot byte read.
        let p: Prepared =
            serde_json::from_str(&helper_doc(&base(&["--prepare"])).unwrap()).unwrap();
        let hot: u64 = made.manifest.hot().map(|e| e.size).sum();
        assert_eq!(p.hot_bytes, hot);
        // A server that is not there fails the pass in the JSON, not by an error.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c: Checked = serde_json::from_str(
            &helper_doc(&base(&["--verify", &format!("127.0.0.1:{port}")])).unwrap(),
        )
        .unwrap();
        assert!(c.ok.is_none());
        assert!(c.error.unwrap().contains("connecting"));
        // A file changed since: the set is made anew.
        let victim = made.manifest.hot().next().unwrap();
        std::fs::write(tmp.join(&victim.path), b"changed").unwrap();
        let anew: Made = serde_json::from_str(&helper_doc(&base(&[])).unwrap()).unwrap();
        assert!(!anew.reused);
        assert!(Cli::try_parse_from([
            "x",
            "--data",
            "/d",
            "--data-size",
            "1M",
            "--hot-files",
            "1",
            "--seed",
            "1",
            "--prepare",
            "--verify",
            "a"
        ])
        .is_err());
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn the_answer_is_the_last_line() {
        assert_eq!(last_doc("noise\n{\"a\":1}\n\n"), "{\"a\":1}");
        assert_eq!(last_doc(""), "");
    }
}
