//! The server's CPU cap: a cgroup with a CPU quota (v1 `cpu.cfs_quota_us` or v2 `cpu.max`),
//! so that the server, not the client, is the limit. The group is removed when [`CpuCap`] is
//! dropped, and on SIGINT or SIGTERM (the bench then exits): it never outlives the bench.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Which cgroup interface holds the `cpu` controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1, the `cpu` controller mounted here.
    V1(PathBuf),
    /// cgroup v2 (unified), mounted here.
    V2(PathBuf),
}

/// Where the `cpu` controller is, from `/proc/self/mounts`: a v1 mount with the `cpu` option
/// first (on a hybrid machine the controller lives there), else a v2 mount whose
/// `cgroup.controllers` (read by `controllers`) lists `cpu`.
pub fn find(mounts: &str, controllers: impl Fn(&Path) -> Option<String>) -> Option<Hierarchy> {
    let mut v2 = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [_, dir, fstype, options, ..] = f[..] else {
            continue;
        };
        let dir = PathBuf::from(dir);
        match fstype {
            "cgroup" if options.split(',').any(|o| o == "cpu") => {
                return Some(Hierarchy::V1(dir));
            }
            "cgroup2"
                if v2.is_none()
                    && controllers(&dir)
                        .is_some_and(|c| c.split_whitespace().any(|x| x == "cpu")) =>
            {
                v2 = Some(Hierarchy::V2(dir));
            }
            _ => {}
        }
    }
    v2
}

/// The files and values that cap a group at `share` of one CPU over `period_us`.
pub fn quota_files(h: &Hierarchy, share: f64, period_us: u64) -> Vec<(&'static str, String)> {
    let quota = ((share * period_us as f64).round() as u64).max(1000);
    match h {
        Hierarchy::V1(_) => vec![
            ("cpu.cfs_period_us", period_us.to_string()),
            ("cpu.cfs_quota_us", quota.to_string()),
        ],
        Hierarchy::V2(_) => vec![("cpu.max", format!("{quota} {period_us}"))],
    }
}

/// The period (µs) of a group capped at `share` of one CPU, and its quota (µs). Short periods
/// throttle in small slices: on a 2-vCPU VM the capacity of a server at half a CPU varied less
/// between runs with 5 ms periods than with 20 or 100 ms (below 5 ms the server no longer got
/// its whole quota). A smaller share gets a longer period, so that its quota stays at least the
/// kernel's 1 ms minimum.
pub fn period_and_quota(share: f64) -> (u64, u64) {
    let period = 5_000u64.max((1_000.0 / share).ceil() as u64);
    (period, ((share * period as f64).round() as u64).max(1000))
}

/// A cgroup capping its members' CPU; removed on drop.
#[derive(Debug)]
pub struct CpuCap {
    pub dir: PathBuf,
    /// The parent's process list: where members go back before the group is removed.
    parent_procs: PathBuf,
    pub share: f64,
    /// What it is, in words (for the report).
    pub what: String,
    /// Removes the group if a signal ends the bench while it exists.
    _on_signal: crate::on_signal::Registered,
}

impl CpuCap {
    /// A new group capped at `share` of one CPU (5 ms periods), or why there can be none.
    pub fn create(share: f64) -> Result<CpuCap> {
        Self::create_named(share, format!("ringlab-bench-{}", std::process::id()))
    }

    /// `n` groups, each capped at `share` of one CPU (`ringlab-bench-PID-I`; one alone is
    /// `ringlab-bench-PID`), or why there can be none (the groups made so far are removed).
    pub fn create_many(share: f64, n: usize) -> Result<Vec<CpuCap>> {
        if n == 1 {
            return Ok(vec![Self::create(share)?]);
        }
        (0..n)
            .map(|i| Self::create_named(share, format!("ringlab-bench-{}-{i}", std::process::id())))
            .collect()
    }

    fn create_named(share: f64, name: String) -> Result<CpuCap> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let h = find(&mounts, |d| {
            std::fs::read_to_string(d.join("cgroup.controllers")).ok()
        })
        .context("no cgroup cpu controller is mounted")?;
        let root = match &h {
            Hierarchy::V1(d) | Hierarchy::V2(d) => d.clone(),
        };
        if let Hierarchy::V2(_) = h {
            // Let the root's children use the controller (already on in most setups).
            let _ = std::fs::write(root.join("cgroup.subtree_control"), "+cpu");
        }
        let dir = root.join(name);
        std::fs::create_dir(&dir)
            .with_context(|| format!("cannot create cgroup {}", dir.display()))?;
        let parent_procs = root.join("cgroup.procs");
        let on_signal = {
            let (dir, parent) = (dir.clone(), parent_procs.clone());
            crate::on_signal::register(move || {
                // Its members are this bench's servers: stop them with it.
                stop_members(&dir);
                let _ = remove(&dir, &parent);
            })
        };
        let mut cap = CpuCap {
            parent_procs,
            dir,
            share,
            what: String::new(),
            _on_signal: on_signal,
        };
        let (period, _) = period_and_quota(share);
        let mut what = Vec::new();
        for (file, v) in quota_files(&h, share, period) {
            std::fs::write(cap.dir.join(file), &v)
                .with_context(|| format!("cannot write {v} to {}/{file}", cap.dir.display()))?;
            what.push(format!("{file} = {v}"));
        }
        cap.what = format!("{} ({})", cap.dir.display(), what.join(", "));
        Ok(cap)
    }
}

/// Put `pids` (whole processes, every thread) into the group at `dir`.
pub fn enter(dir: &Path, pids: &[u32]) -> Result<()> {
    for p in pids {
        std::fs::write(dir.join("cgroup.procs"), p.to_string())
            .with_context(|| format!("moving server {p} into cgroup {}", dir.display()))?;
    }
    Ok(())
}

/// Move whatever is left in `dir` back to the parent and remove the group.
fn remove(dir: &Path, parent_procs: &Path) -> Result<()> {
    for _ in 0..50 {
        if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
            for p in procs.split_whitespace() {
                let _ = std::fs::write(parent_procs, p);
            }
        }
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    bail!(
        "could not remove cgroup {}: remove it by hand",
        dir.display()
    )
}

/// SIGTERM every process in the group at `dir`.
fn stop_members(dir: &Path) {
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
    for p in procs
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
    {
        if let Some(pid) = rustix::process::Pid::from_raw(p) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        if let Err(e) = remove(&self.dir, &self.parent_procs) {
            eprintln!("ringlab-bench: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";
    const UNIFIED: &str = "\
proc /proc proc rw 0 0
cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0
";

    #[test]
    fn finds_the_cpu_controller_v1_first_then_v2() {
        let with_cpu = |_: &Path| Some("cpuset cpu io memory pids".to_string());
        let without = |_: &Path| Some(String::new());
        assert_eq!(
            find(HYBRID, without),
            Some(Hierarchy::V1("/sys/fs/cgroup/cpu".into()))
        );
        assert_eq!(
            find(UNIFIED, with_cpu),
            Some(Hierarchy::V2("/sys/fs/cgroup".into()))
        );
        assert_eq!(find(UNIFIED, without), None);
        let combined = "cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,cpu,cpuacct 0 0\n";
        assert_eq!(
            find(combined, without),
            Some(Hierarchy::V1("/sys/fs/cgroup/cpu,cpuacct".into()))
        );
        assert_eq!(
            find(HYBRID.replace(",cpu 0", ",x 0").as_str(), without),
            None
        );
    }

    #[test]
    fn half_a_cpu_in_both_interfaces() {
        let v1 = quota_files(&Hierarchy::V1("/x".into()), 0.5, 20_000);
        assert_eq!(
            v1,
            [
                ("cpu.cfs_period_us", "20000".to_string()),
                ("cpu.cfs_quota_us", "10000".to_string())
            ]
        );
        let v2 = quota_files(&Hierarchy::V2("/x".into()), 0.5, 20_000);
        assert_eq!(v2, [("cpu.max", "10000 20000".to_string())]);
    }
}
