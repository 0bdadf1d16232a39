//! The files bench's data set: small "hot" files and large "cold" ones with pseudo-random
//! contents from a seed, a manifest of each file's size and hash, reuse when the manifest
//! matches, and the page-cache state each run starts from (cold files dropped, hot ones read).
//!
//! The hash is BLAKE3 (the `blake3` crate, kept by the BLAKE3 authors): it is fast enough that
//! hashing a few GiB while writing them costs little next to the disk (SIMD, several GB/s), it
//! is a cryptographic hash, so a served file that differs from its manifest entry cannot match
//! by accident, and the crate is maintained and widely used. A faster non-cryptographic hash
//! (xxHash) would do for catching corruption, but buys nothing here: the disk is the limit.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// The manifest's file name in the data directory.
pub const MANIFEST: &str = "ringlab-files-manifest.json";
/// What [`Manifest::format`] says; a change to the generator or layout bumps it.
const FORMAT: u32 = 1;
/// Hot files are 4-64 KiB, cold files 1-16 MiB (log-uniform sizes).
pub const HOT_MIN: u64 = 4 << 10;
pub const HOT_MAX: u64 = 64 << 10;
pub const COLD_MIN: u64 = 1 << 20;
pub const COLD_MAX: u64 = 16 << 20;
/// The largest data set made.
pub const MAX_SIZE: u64 = 1 << 40;

/// What the data set is made from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataSpec {
    /// Total bytes of all files.
    pub size: u64,
    /// Hot files (the rest of `size` is cold files).
    pub hot_files: usize,
    pub seed: u64,
}

/// One file of the data set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the data directory (`hot/h00012.bin`).
    pub path: String,
    pub size: u64,
    /// BLAKE3 of the contents, hex.
    pub blake3: String,
    pub hot: bool,
}

/// The data set's manifest (`ringlab-files-manifest.json`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    pub format: u32,
    pub seed: u64,
    pub data_size: u64,
    pub hot_files: usize,
    pub files: Vec<Entry>,
}

impl Manifest {
    pub fn hot(&self) -> impl Iterator<Item = &Entry> {
        self.files.iter().filter(|e| e.hot)
    }

    pub fn cold(&self) -> impl Iterator<Item = &Entry> {
        self.files.iter().filter(|e| !e.hot)
    }

    /// Bytes of the cold files.
    pub fn cold_bytes(&self) -> u64 {
        self.cold().map(|e| e.size).sum()
    }

    fn matches(&self, spec: &DataSpec) -> bool {
        self.format == FORMAT
            && self.seed == spec.seed
            && self.data_size == spec.size
            && self.hot_files == spec.hot_files
    }
}

/// A data set on disk.
#[derive(Clone, Debug)]
pub struct DataSet {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Whether it was there already (not made by this run).
    pub reused: bool,
}

/// A small, fast pseudo-random generator (xoshiro256**, seeded through SplitMix64): the
/// contents need to be reproducible from the seed and incompressible, not secret. Written out
/// here (a dozen lines) so that the bytes a seed gives can never change with a crate's version.
struct Prng([u64; 4]);

impl Prng {
    fn new(seed: u64) -> Prng {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Prng([next(), next(), next(), next()])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Log-uniform in [lo, hi].
    fn log_uniform(&mut self, lo: u64, hi: u64) -> u64 {
        let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
        ((l + (h - l) * self.unit()).exp() as u64).clamp(lo, hi)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let v = self.next_u64().to_le_bytes();
        rest.copy_from_slice(&v[..rest.len()]);
    }
}

/// The files of `spec`: paths and sizes (no contents), hot ones first.
pub fn layout(spec: &DataSpec) -> Result<Vec<(String, u64, bool)>> {
    if spec.size > MAX_SIZE {
        bail!(
            "--data-size {} is more than this bench makes ({})",
            human(spec.size),
            human(MAX_SIZE)
        );
    }
    let mut rng = Prng::new(spec.seed ^ 0x0051_22e5);
    let mut out = Vec::new();
    let mut total = 0u64;
    for i in 0..spec.hot_files {
        let size = rng.log_uniform(HOT_MIN, HOT_MAX);
        total += size;
        out.push((format!("hot/h{i:05}.bin"), size, true));
    }
    if total + COLD_MIN > spec.size {
        bail!(
            "--data-size {} is too small for {} hot files ({}) and one cold file of at least {}: give at least {}",
            human(spec.size),
            spec.hot_files,
            human(total),
            human(COLD_MIN),
            human(total + COLD_MIN)
        );
    }
    let mut i = 0;
    while total < spec.size {
        let left = spec.size - total;
        let mut size = rng.log_uniform(COLD_MIN, COLD_MAX).min(left);
        // No cold file below the minimum: a small remainder goes to this one.
        if left - size < COLD_MIN {
            size = left.min(COLD_MAX + COLD_MIN);
        }
        total += size;
        out.push((format!("cold/c{i:05}.bin"), size, false));
        i += 1;
    }
    Ok(out)
}

/// `1.5 GiB`, `64.0 MiB`, `12.0 KiB`, `100 B`.
pub fn human(b: u64) -> String {
    let b = b as f64;
    if b >= (1u64 << 30) as f64 {
        format!("{:.1} GiB", b / (1u64 << 30) as f64)
    } else if b >= (1u64 << 20) as f64 {
        format!("{:.1} MiB", b / (1u64 << 20) as f64)
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}

/// Parse a size: bytes, or with a binary unit `K`, `M`, `G`, `T` (`KiB`, `MB`... the same:
/// powers of 1024), e.g. `2G`, `512MiB`, `1.5g`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 2G, 512M, 1048576)"))?;
    let mul: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        u => return Err(format!("{s:?}: unknown unit {u:?} (K, M, G or T)")),
    };
    let v = n * mul as f64;
    if !v.is_finite() || v < 1.0 || v > (1u64 << 50) as f64 {
        return Err(format!("{s:?} is out of range"));
    }
    Ok(v as u64)
}

/// The contents of file `index` of the data set of `seed`, written to `w` (`size` bytes) and
/// hashed on the way: the hash, hex.
fn write_contents(w: &mut impl Write, seed: u64, index: usize, size: u64) -> Result<String> {
    let mut rng = Prng::new(seed ^ (index as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        rng.fill(&mut buf[..n]);
        h.update(&buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    Ok(h.finalize().to_hex().to_string())
}

/// BLAKE3 of a file, hex (read through `buf`).
pub fn hash_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((h.finalize().to_hex().to_string(), n))
}

/// Read `len` bytes at `offset` of a file.
pub fn read_range(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut v = vec![0u8; len];
    f.read_exact_at(&mut v, offset)
        .with_context(|| format!("reading {} at {offset}", path.display()))?;
    Ok(v)
}

/// Bytes free for an unprivileged user on the filesystem of `dir` (statvfs).
fn free_bytes(dir: &Path) -> Result<u64> {
    let v = rustix::fs::statvfs(dir).with_context(|| format!("statvfs {}", dir.display()))?;
    Ok(v.f_bavail.saturating_mul(v.f_frsize))
}

/// The manifest in `dir`, if there is one that parses.
fn read_manifest(dir: &Path) -> Option<Manifest> {
    let s = std::fs::read_to_string(dir.join(MANIFEST)).ok()?;
    serde_json::from_str(&s).ok()
}

/// Whether every file of `m` is in `dir` with its size and not changed since the manifest was
/// written (mtime no later than the manifest's).
fn files_intact(dir: &Path, m: &Manifest) -> bool {
    let Ok(written) = std::fs::metadata(dir.join(MANIFEST)).and_then(|md| md.modified()) else {
        return false;
    };
    m.files.iter().all(|e| {
        std::fs::metadata(dir.join(&e.path)).is_ok_and(|md| {
            md.is_file() && md.len() == e.size && md.modified().is_ok_and(|t| t <= written)
        })
    })
}

/// The data set of `spec` in `dir`: reused when its manifest matches `spec` and every file is
/// there with its size; otherwise made (after checking that `dir` is writable and has the
/// space). A directory that is neither empty nor a data set of ours is refused, never cleared.
/// `progress` gets a line now and then.
pub fn ensure(dir: &Path, spec: &DataSpec, progress: &mut dyn FnMut(&str)) -> Result<DataSet> {
    if let Some(m) = read_manifest(dir) {
        if m.matches(spec) && files_intact(dir, &m) {
            return Ok(DataSet {
                dir: dir.to_path_buf(),
                manifest: m,
                reused: true,
            });
        }
    }
    let files = layout(spec)?;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("--data {}: cannot create it", dir.display()))?;
    let ours = dir.join(MANIFEST).exists();
    let foreign = std::fs::read_dir(dir)
        .with_context(|| format!("--data {}: cannot list it", dir.display()))?
        .flatten()
        .any(|e| {
            let n = e.file_name();
            !(n == "hot" || n == "cold" || n == MANIFEST || n.to_string_lossy().ends_with(".tmp"))
        });
    if foreign || (!ours && (dir.join("hot").exists() || dir.join("cold").exists())) {
        bail!(
            "--data {}: not empty and not a ringlab data set (no {MANIFEST}): give an empty or new directory",
            dir.display()
        );
    }
    // Writable? (A probe file, so that a read-only directory fails here, on one line.)
    let probe = dir.join(".ringlab-probe.tmp");
    std::fs::write(&probe, b"x")
        .with_context(|| format!("--data {}: not writable", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    // The old set's files go first: their space counts as free.
    let _ = std::fs::remove_file(dir.join(MANIFEST));
    for sub in ["hot", "cold"] {
        let p = dir.join(sub);
        if p.exists() {
            std::fs::remove_dir_all(&p)
                .with_context(|| format!("removing the old data set's {}", p.display()))?;
        }
    }
    let free = free_bytes(dir)?;
    let margin = 64 << 20;
    if free < spec.size + margin {
        bail!(
            "--data {}: --data-size {} needs {} free there (and 64 MiB to spare), the filesystem has {} (statvfs): free space, give a smaller --data-size, or another --data",
            dir.display(),
            human(spec.size),
            human(spec.size),
            human(free)
        );
    }
    for sub in ["hot", "cold"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    progress(&format!(
        "making the data set in {}: {} in {} hot and {} cold files (seed {})",
        dir.display(),
        human(spec.size),
        spec.hot_files,
        files.len() - spec.hot_files,
        spec.seed
    ));
    let t = Instant::now();
    let mut entries = Vec::with_capacity(files.len());
    let mut done = 0u64;
    let mut said = Instant::now();
    for (i, (path, size, hot)) in files.into_iter().enumerate() {
        let full = dir.join(&path);
        let tmp = full.with_extension("tmp");
        let mut f = std::io::BufWriter::with_capacity(
            1 << 20,
            File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?,
        );
        let hash = write_contents(&mut f, spec.seed, i, size)
            .with_context(|| format!("writing {}", tmp.display()))?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        // On disk before the manifest says so, and clean pages (which fadvise can drop).
        f.sync_data()
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &full)?;
        done += size;
        if said.elapsed().as_secs() >= 5 {
            said = Instant::now();
            progress(&format!(
                "  {} of {} written",
                human(done),
                human(spec.size)
            ));
        }
        entries.push(Entry {
            path,
            size,
            blake3: hash,
            hot,
        });
    }
    let m = Manifest {
        format: FORMAT,
        seed: spec.seed,
        data_size: spec.size,
        hot_files: spec.hot_files,
        files: entries,
    };
    let tmp = dir.join(format!("{MANIFEST}.tmp"));
    std::fs::write(&tmp, serde_json::to_string_pretty(&m)? + "\n")?;
    std::fs::rename(&tmp, dir.join(MANIFEST))?;
    progress(&format!("  made in {:.1} s", t.elapsed().as_secs_f64()));
    Ok(DataSet {
        dir: dir.to_path_buf(),
        manifest: m,
        reused: false,
    })
}

impl DataSet {
    pub fn path(&self, e: &Entry) -> PathBuf {
        self.dir.join(&e.path)
    }

    /// Check the hot files and `sample` cold files on disk against the manifest (a reused data
    /// set may have been changed by hand since): an error naming the first that differs.
    pub fn check(&self, sample: &[&Entry]) -> Result<()> {
        for e in self.manifest.hot().chain(sample.iter().copied()) {
            let (h, n) = hash_file(&self.path(e))?;
            if h != e.blake3 || n != e.size {
                bail!(
                    "the data set in {} is damaged: {} is not what its manifest says (delete the directory to make it anew)",
                    self.dir.display(),
                    e.path
                );
            }
        }
        Ok(())
    }

    /// The page-cache state a run starts from: every cold file dropped
    /// (`posix_fadvise(POSIX_FADV_DONTNEED)`: clean pages go; the files were synced when made)
    /// and every hot file read (so it is cached). Returns the bytes of hot files read.
    pub fn prepare_cache(&self) -> Result<u64> {
        for e in self.manifest.cold() {
            let p = self.path(e);
            let f = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
            rustix::fs::fadvise(&f, 0, None, rustix::fs::Advice::DontNeed)
                .with_context(|| format!("posix_fadvise(DONTNEED) {}", p.display()))?;
        }
        let mut buf = vec![0u8; 64 << 10];
        let mut n = 0;
        for e in self.manifest.hot() {
            let p = self.path(e);
            let mut f = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
            loop {
                let k = f.read(&mut buf)?;
                if k == 0 {
                    break;
                }
                n += k as u64;
            }
        }
        Ok(n)
    }

    /// Write the request targets of the hot and the cold files (`/files/<path>`), one a line,
    /// for `ringlab-client --paths`: `(hot, cold)`.
    pub fn write_paths(&self, dir: &Path) -> Result<(PathBuf, PathBuf)> {
        let hot = dir.join("hot-paths.txt");
        let cold = dir.join("cold-paths.txt");
        let lines = |it: &mut dyn Iterator<Item = &Entry>| {
            it.map(|e| format!("{}{}\n", ringlab_proto::files::PREFIX, e.path))
                .collect::<String>()
        };
        std::fs::write(&hot, lines(&mut self.manifest.hot()))?;
        std::fs::write(&cold, lines(&mut self.manifest.cold()))?;
        Ok((hot, cold))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(size: u64, hot: usize) -> DataSpec {
        DataSpec {
            size,
            hot_files: hot,
            seed: 7,
        }
    }

    #[test]
    fn sizes_parse_in_binary_units() {
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("64 k").unwrap(), 64 << 10);
        assert!(parse_size("lots").is_err());
        assert!(parse_size("2X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("0").is_err());
        assert_eq!(human(3 << 29), "1.5 GiB");
        assert_eq!(human(100), "100 B");
    }

    #[test]
    fn layout_adds_up_within_the_size_bounds() {
        let s = spec(256 << 20, 50);
        let l = layout(&s).unwrap();
        assert_eq!(l.iter().map(|f| f.1).sum::<u64>(), s.size);
        let (hot, cold): (Vec<_>, Vec<_>) = l.iter().partition(|f| f.2);
        assert_eq!(hot.len(), 50);
        assert!(hot.iter().all(|f| (HOT_MIN..=HOT_MAX).contains(&f.1)));
        assert!(cold.len() > 5, "{}", cold.len());
        assert!(cold
            .iter()
            .all(|f| (COLD_MIN..=COLD_MAX + COLD_MIN).contains(&f.1)));
        // The same seed gives the same layout, another seed another.
        assert_eq!(layout(&s).unwrap(), l);
        assert_ne!(
            layout(&DataSpec {
                seed: 8,
                ..s.clone()
            })
            .unwrap(),
            l
        );
        let e = layout(&spec(1 << 20, 50)).unwrap_err().to_string();
        assert!(e.contains("too small"), "{e}");
    }

    #[test]
    fn made_once_then_reused_while_the_manifest_matches() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let s = spec(3 << 20, 8);
        let mut lines = Vec::new();
        let a = ensure(&dir, &s, &mut |l| lines.push(l.to_string())).unwrap();
        assert!(!a.reused);
        assert!(lines[0].starts_with("making the data set"), "{lines:?}");
        assert_eq!(a.manifest.files.len(), 8 + a.manifest.cold().count());
        // Every file is on disk with the size and hash its manifest gives.
        for e in &a.manifest.files {
            let (h, n) = hash_file(&a.path(e)).unwrap();
            assert_eq!((h.as_str(), n), (e.blake3.as_str(), e.size), "{}", e.path);
        }
        // Contents differ between files (not one stream repeated).
        let f0 = std::fs::read(a.path(&a.manifest.files[0])).unwrap();
        let f1 = std::fs::read(a.path(&a.manifest.files[1])).unwrap();
        assert_ne!(f0[..4096], f1[..4096]);
        // Second time: reused, nothing written.
        let b = ensure(&dir, &s, &mut |_| panic!("nothing to make")).unwrap();
        assert!(b.reused);
        assert_eq!(b.manifest, a.manifest);
        let sample: Vec<&Entry> = b.manifest.cold().take(1).collect();
        b.check(&sample).unwrap();
        assert!(b.prepare_cache().unwrap() > 0);
        let (hot, cold) = b.write_paths(tmp.path()).unwrap();
        let hot = std::fs::read_to_string(hot).unwrap();
        assert_eq!(hot.lines().count(), 8);
        assert_eq!(hot.lines().next(), Some("/files/hot/h00000.bin"));
        assert!(std::fs::read_to_string(cold)
            .unwrap()
            .starts_with("/files/cold/c00000.bin\n"));
        // A file of the wrong size: made anew.
        let victim = b.path(&b.manifest.files[0]);
        std::fs::write(&victim, b"short").unwrap();
        let c = ensure(&dir, &s, &mut |_| {}).unwrap();
        assert!(!c.reused);
        assert_eq!(c.manifest, a.manifest, "same seed, same data");
        // Same size, other bytes: not caught by the cheap check, caught by check().
        let victim = c.path(&c.manifest.files[1]);
        let mut bytes = std::fs::read(&victim).unwrap();
        bytes[10] ^= 1;
        std::fs::write(&victim, bytes).unwrap();
        let e = c.check(&[]).unwrap_err().to_string();
        assert!(
            e.contains("is damaged") && e.contains("hot/h00001.bin"),
            "{e}"
        );
        // Another spec: made anew in the same directory.
        let d = ensure(&dir, &spec(4 << 20, 8), &mut |_| {}).unwrap();
        assert!(!d.reused);
        assert_eq!(d.manifest.data_size, 4 << 20);
    }

    #[test]
    fn refuses_foreign_or_unwritable_directories_and_too_little_space() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("notes.txt"), b"mine").unwrap();
        let e = ensure(tmp.path(), &spec(3 << 20, 4), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a ringlab data set"), "{e}");
        assert!(tmp.path().join("notes.txt").exists(), "never cleared");
        // More than the filesystem has.
        let empty = tmp.path().join("big");
        let e = ensure(&empty, &spec(1 << 39, 4), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(e.contains("free there") && e.contains("statvfs"), "{e}");
        // A path beneath a file cannot be made.
        let e = ensure(
            &tmp.path().join("notes.txt").join("d"),
            &spec(3 << 20, 4),
            &mut |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("cannot create it"), "{e}");
    }
}
