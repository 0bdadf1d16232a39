//! The disk under the data set, from `/proc/diskstats`: reads completed, sectors read, and the
//! average queue depth over a window (field 11, the weighted milliseconds requests spent in
//! the queue, over the window's milliseconds: Little's law).

use std::path::Path;

use serde::Serialize;

/// One device's counters (the fields of its `/proc/diskstats` line that the bench uses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskSample {
    /// Field 1: reads completed.
    pub reads: u64,
    /// Field 3: sectors read (512 bytes each, whatever the device's sector size).
    pub sectors_read: u64,
    /// Field 4: milliseconds spent reading.
    pub read_ms: u64,
    /// Field 11: weighted milliseconds doing I/O (each request's time in the queue, summed).
    pub weighted_ms: u64,
}

/// What a device did over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct DiskDelta {
    pub reads: u64,
    pub sectors_read: u64,
    /// Bytes read from the device per second.
    pub read_mb_s: f64,
    /// Average requests in the device's queue (reads and writes): Δfield 11 / Δwall ms.
    pub queue_depth: f64,
    /// Average reads in flight: Δfield 4 / Δwall ms.
    pub reads_in_flight: f64,
}

impl DiskSample {
    /// `self - earlier` over `elapsed_ms` of wall time.
    pub fn since(&self, earlier: &DiskSample, elapsed_ms: f64) -> DiskDelta {
        let ms = elapsed_ms.max(1e-9);
        let sectors = self.sectors_read.saturating_sub(earlier.sectors_read);
        DiskDelta {
            reads: self.reads.saturating_sub(earlier.reads),
            sectors_read: sectors,
            read_mb_s: sectors as f64 * 512.0 / 1e6 / (ms / 1e3),
            queue_depth: self.weighted_ms.saturating_sub(earlier.weighted_ms) as f64 / ms,
            reads_in_flight: self.read_ms.saturating_sub(earlier.read_ms) as f64 / ms,
        }
    }
}

/// The line of device `major:minor` in the text of `/proc/diskstats`: `(name, sample)`.
pub fn parse(text: &str, major: u32, minor: u32) -> Option<(String, DiskSample)> {
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 14 {
            continue;
        }
        if f[0].parse::<u32>().ok() != Some(major) || f[1].parse::<u32>().ok() != Some(minor) {
            continue;
        }
        // f[2] is the name; field N (1-based, after the name) is f[2 + N].
        let n = |i: usize| f[2 + i].parse::<u64>().ok();
        return Some((
            f[2].to_string(),
            DiskSample {
                reads: n(1)?,
                sectors_read: n(3)?,
                read_ms: n(4)?,
                weighted_ms: n(11)?,
            },
        ));
    }
    None
}

/// The block device holding `path`, as it appears in `/proc/diskstats`.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Disk {
    pub name: String,
    pub major: u32,
    pub minor: u32,
}

impl Disk {
    /// The device of the filesystem holding `path`; why not, where it has none in
    /// /proc/diskstats (tmpfs, overlayfs and other filesystems without one block device).
    pub fn of(path: &Path) -> Result<Disk, String> {
        let st = rustix::fs::stat(path).map_err(|e| format!("stat {}: {e}", path.display()))?;
        let (major, minor) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
        let text = std::fs::read_to_string("/proc/diskstats")
            .map_err(|e| format!("/proc/diskstats: {e}"))?;
        match parse(&text, major, minor) {
            Some((name, _)) => Ok(Disk { name, major, minor }),
            None => Err(format!(
                "{} is on device {major}:{minor}, which /proc/diskstats does not list (tmpfs, overlayfs or a filesystem over several devices)",
                path.display()
            )),
        }
    }

    /// Its counters now.
    pub fn sample(&self) -> Option<DiskSample> {
        let text = std::fs::read_to_string("/proc/diskstats").ok()?;
        self.read(&text)
    }

    /// Its counters in `text` (`/proc/diskstats`, or its line read on another host).
    pub fn read(&self, text: &str) -> Option<DiskSample> {
        parse(text, self.major, self.minor).map(|(_, s)| s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
 253       0 vda 412390 10021 31254018 270551 998201 512330 45210344 1210034 0 630120 1499870 0 0 0 0 51230 19285
 253       1 vda1 400000 10000 31000000 260000 990000 510000 45000000 1200000 2 620000 1480000
   7       0 loop0 12 0 24 1 0 0 0 0 0 4 1 0 0 0 0 0 0
";

    #[test]
    fn parses_the_devices_line_by_number() {
        let (name, s) = parse(SAMPLE, 253, 0).unwrap();
        assert_eq!(name, "vda");
        assert_eq!(
            s,
            DiskSample {
                reads: 412390,
                sectors_read: 31254018,
                read_ms: 270551,
                weighted_ms: 1499870,
            }
        );
        // An older kernel's 14-field line (no discard or flush fields) parses too.
        assert_eq!(parse(SAMPLE, 253, 1).unwrap().1.weighted_ms, 1480000);
        assert_eq!(parse(SAMPLE, 8, 0), None);
        assert_eq!(parse("garbage\n1 2 x\n", 1, 2), None);
    }

    #[test]
    fn queue_depth_is_weighted_ms_over_wall_ms() {
        let a = DiskSample {
            reads: 100,
            sectors_read: 8000,
            read_ms: 50,
            weighted_ms: 1000,
        };
        let b = DiskSample {
            reads: 1100,
            sectors_read: 8000 + 2 * 1_000_000,
            read_ms: 50 + 4000,
            weighted_ms: 1000 + 8000,
        };
        // Over 2 s: 1000 reads, 1 GB, 8 s of queue time = 4 requests in the queue on average.
        let d = b.since(&a, 2000.0);
        assert_eq!(d.reads, 1000);
        assert_eq!(d.sectors_read, 2_000_000);
        assert!((d.read_mb_s - 512.0).abs() < 1e-9, "{d:?}");
        assert!((d.queue_depth - 4.0).abs() < 1e-12, "{d:?}");
        assert!((d.reads_in_flight - 2.0).abs() < 1e-12, "{d:?}");
        // Counters that went backwards (a device reset) give zeros, not garbage.
        assert_eq!(a.since(&b, 1000.0).reads, 0);
    }

    #[test]
    fn finds_the_device_of_a_real_path_or_says_why_not() {
        match Disk::of(Path::new("/")) {
            Ok(d) => assert!(d.sample().is_some(), "{d:?}"),
            Err(e) => assert!(e.contains("does not list"), "{e}"),
        }
    }
}
