//! File operations (`--root`), as the readiness and blocking backends perform them: the same
//! syscalls on the loop (`--file-io blocking`, the blocking backend, tokio's blocking pool) or
//! on a pool of threads that wakes the loop (`--file-io threads`). The io_uring backends issue
//! the same operations as ring operations instead; what they ask and how the answers are
//! interpreted ([`FileOp`], [`FileDone`]) is the session's, shared by all.
//!
//! Opening is always `openat2(root, path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY,
//! RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)`: the session has refused `..` and friends already;
//! the kernel refuses symlinks that lead out of the root (`EXDEV`, answered 403). `O_NONBLOCK`
//! keeps a FIFO beneath the root from blocking the open (it is then refused as not a regular
//! file); it changes nothing for regular files.
//!
//! # The cache of open files (`--file-cache N`, `--file-cache-valid D`)
//!
//! Each uring and readiness loop (epoll, poll, select; every `--file-io`) keeps an
//! [`OpenCache`]: up to N regular files it opened, by path, with the [`FileMeta`] their statx
//! found and when they were opened (nginx's `open_file_cache` and `open_file_cache_valid`). An
//! `Open` of a path cached less than D ago is answered at once, without a syscall or a ring
//! operation, and the `Stat` that follows it is answered with the cached meta
//! ([`OpenCache::answer`]); any other `Open` is performed as without the cache, and once its
//! `Stat` finds a regular file the pair goes into the cache ([`OpenCache::stated`]). Errors,
//! directories and other non-regular files are never cached. An entry older than D is
//! dropped when it is asked for (and, one entry per lookup, by a sweep) and the file opened
//! anew. When full, an entry is evicted by the clock algorithm (second chance: an entry used
//! since the hand last passed is spared once). The cache is per loop: nothing is shared
//! between loops, no locks; `--file-threads` pool threads never touch it (the loop answers
//! hits itself and inserts what the pool opened).
//!
//! Files are shared, not copied: a cached file is an `Arc<OwnedFd>`, and every connection
//! serving it holds a clone; its descriptor is closed when the last owner lets go, be that
//! the cache (evicted, expired, replaced) or the last connection (`Close`). Of every file a
//! loop lets go of, the readiness loops drop their share (a plain close(2) when it was the
//! last); the uring loop keeps closing through
//! `IORING_OP_CLOSE` whenever it holds the last reference (`Arc::into_inner`), so an uncached
//! file (and an evicted one nobody serves) is still closed on the ring with no syscall of its
//! own, and drops its share otherwise. Both are safe: a ring operation on a file is only
//! ever in flight for a connection that holds a clone of its `Arc`, so the descriptor cannot be
//! closed under it.
//!
//! Like nginx's, the cache trusts what it found for D: within that time a file changed in
//! place is served with the size and modification time it had when it was opened
//! (`Content-Length`, `Last-Modified`, ranges, `304`s), and a file renamed over or deleted is
//! still served from its old descriptor (the old contents, which stay intact). A file that
//! shrank in place ends its response short and closes the connection, as it would while being
//! sent without the cache; one that grew is sent at its old length. After D the path is
//! opened and stated anew. A deleted file's space is held until its entry goes (on its next
//! request, the sweep, or eviction); an idle loop keeps up to N descriptors open. `0`
//! disables the cache (every request opens and stats); the tokio, tokio-uring and blocking
//! backends have none.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ringlab_proto::files::{FileDone, FileKind, FileMeta, FileOp};
use ringlab_runtime::wake::Waker;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, StatxFlags};

/// Open `dir` as the root files are opened beneath (a path descriptor, kept for the loop's life).
pub fn open_root(dir: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| {
        io::Error::new(
            io::Error::from(e).kind(),
            format!("--root {}: {e}", dir.display()),
        )
    })
}

/// The flags files are opened with.
pub fn open_flags() -> OFlags {
    OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY
}

/// The resolution rules files are opened with.
pub fn resolve_flags() -> ResolveFlags {
    ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS
}

/// The statx fields a [`FileMeta`] needs.
pub fn statx_mask() -> StatxFlags {
    StatxFlags::TYPE | StatxFlags::SIZE | StatxFlags::MTIME
}

/// A [`FileMeta`] from a statx result's mode, size and modification time.
pub fn meta_of(mode: u16, size: u64, mtime_sec: i64) -> FileMeta {
    let kind = match FileType::from_raw_mode(u32::from(mode)) {
        FileType::RegularFile => FileKind::Regular,
        FileType::Directory => FileKind::Directory,
        _ => FileKind::Other,
    };
    FileMeta {
        size,
        mtime: mtime_sec,
        kind,
    }
}

/// Perform `op` synchronously: `file` is the connection's open file (for every op but `Open`).
/// Returns the answer for the session and, for a successful `Open`, the new file. `Close` is not
/// performed here (the caller drops its file); it returns `None`.
pub fn exec(
    root: BorrowedFd<'_>,
    file: Option<&OwnedFd>,
    op: &FileOp,
) -> Option<(FileDone, Option<OwnedFd>)> {
    let errno = |e: rustix::io::Errno| e.raw_os_error();
    Some(match op {
        FileOp::Open { path } => {
            match rustix::fs::openat2(
                root,
                path.as_str(),
                open_flags(),
                Mode::empty(),
                resolve_flags(),
            ) {
                Ok(fd) => (FileDone::Opened(Ok(())), Some(fd)),
                Err(e) => (FileDone::Opened(Err(errno(e))), None),
            }
        }
        FileOp::Stat => {
            let r = match file {
                Some(f) => rustix::fs::statx(f, "", AtFlags::EMPTY_PATH, statx_mask())
                    .map(|s| meta_of(s.stx_mode, s.stx_size, s.stx_mtime.tv_sec))
                    .map_err(errno),
                None => Err(rustix::io::Errno::BADF.raw_os_error()),
            };
            (FileDone::Stat(r), None)
        }
        FileOp::Read { offset, len } => {
            let r = match file {
                Some(f) => pread(f.as_fd(), *offset, *len).map_err(errno),
                None => Err(rustix::io::Errno::BADF.raw_os_error()),
            };
            (FileDone::Read(r), None)
        }
        FileOp::Close => return None,
    })
}

/// Read up to `len` bytes at `offset` into a new buffer (retrying `EINTR`).
pub fn pread(fd: BorrowedFd<'_>, offset: u64, len: usize) -> Result<Bytes, rustix::io::Errno> {
    let mut buf = BytesMut::with_capacity(len);
    loop {
        match rustix::io::pread(fd, buf.spare_capacity_mut(), offset) {
            Ok((init, _)) => {
                let n = init.len();
                // SAFETY: pread initialised the first `n` bytes of the spare capacity.
                unsafe { buf.set_len(n) };
                return Ok(buf.freeze());
            }
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A loop's cache of open files (`--file-cache`, see the module docs): path → (file, meta,
/// when opened), at most `cap` entries, clock eviction, entries valid for `valid`.
pub struct OpenCache {
    cap: usize,
    valid: Duration,
    index: HashMap<Box<str>, usize>,
    entries: Vec<Entry>,
    /// The clock hand (the next eviction candidate) and the sweep's position.
    hand: usize,
    sweep: usize,
    /// Files the cache let go of, for the loop to close or drop ([`OpenCache::take_retired`]).
    retired: Vec<Arc<OwnedFd>>,
}

struct Entry {
    path: Box<str>,
    file: Arc<OwnedFd>,
    meta: FileMeta,
    opened_at: Instant,
    /// Used since the clock hand last passed.
    used: bool,
}

/// What a connection's open file came with, as far as the cache goes: set when the loop takes
/// its `Open`, used by the `Stat` that follows.
#[derive(Debug, Default)]
pub enum CacheNote {
    #[default]
    None,
    /// The file came from the cache: its `Stat` is answered with this.
    Hit(FileMeta),
    /// The file is being opened for real (the open was asked for at `at`): once stated, a
    /// regular file goes into the cache under `path`.
    Miss { path: String, at: Instant },
}

/// An operation the cache answered (see [`OpenCache::answer`]).
#[derive(Debug)]
pub enum Cached {
    /// `Open`: the cached file, now also the connection's. Answer `Opened(Ok(()))`.
    Opened(Arc<OwnedFd>),
    /// `Stat` of a file that came from the cache. Answer `Stat(Ok(meta))`.
    Stat(FileMeta),
}

impl OpenCache {
    /// A cache of at most `cap` files (0: off), each trusted for `valid` after it was opened.
    pub fn new(cap: usize, valid: Duration) -> Self {
        OpenCache {
            cap,
            valid,
            index: HashMap::with_capacity(cap.min(4096)),
            entries: Vec::with_capacity(cap.min(4096)),
            hand: 0,
            sweep: 0,
            retired: Vec::new(),
        }
    }

    /// Files cached now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Answer the connection's next file operation `op` from the cache if it can (an `Open`
    /// of a fresh entry, the `Stat` after it); else give it back, to be performed, having noted
    /// in `note` what the cache needs to know later (an `Open` it missed). `now`: the loop's
    /// clock. A `Close` (given back) forgets the note.
    pub fn answer(
        &mut self,
        op: FileOp,
        now: Instant,
        note: &mut CacheNote,
    ) -> Result<Cached, FileOp> {
        match op {
            FileOp::Open { path } => {
                *note = CacheNote::None;
                if self.cap == 0 {
                    return Err(FileOp::Open { path });
                }
                self.sweep_one(now);
                match self.get(&path, now) {
                    Some((file, meta)) => {
                        *note = CacheNote::Hit(meta);
                        Ok(Cached::Opened(file))
                    }
                    None => {
                        *note = CacheNote::Miss {
                            path: path.clone(),
                            at: now,
                        };
                        Err(FileOp::Open { path })
                    }
                }
            }
            FileOp::Stat => match std::mem::take(note) {
                CacheNote::Hit(meta) => Ok(Cached::Stat(meta)),
                other => {
                    *note = other;
                    Err(FileOp::Stat)
                }
            },
            FileOp::Close => {
                *note = CacheNote::None;
                Err(FileOp::Close)
            }
            op => Err(op),
        }
    }

    /// The answer `done` to an operation the loop performed for a connection whose file is
    /// `file`: a `Stat` that found a regular file after a missed `Open` caches the file. (Any
    /// other answer leaves the cache alone; a failed open or stat is never cached.)
    pub fn stated(&mut self, note: &mut CacheNote, file: Option<&Arc<OwnedFd>>, done: &FileDone) {
        let FileDone::Stat(r) = done else {
            if matches!(done, FileDone::Opened(Err(_))) {
                *note = CacheNote::None;
            }
            return;
        };
        let CacheNote::Miss { path, at } = std::mem::take(note) else {
            return;
        };
        if let (
            Ok(
                meta @ FileMeta {
                    kind: FileKind::Regular,
                    ..
                },
            ),
            Some(file),
        ) = (r, file)
        {
            self.insert(path.into(), file.clone(), *meta, at);
        }
    }

    /// A file the cache let go of since the last call (replaced, evicted, expired): the
    /// caller closes it if it holds the last reference, or drops its share. Call until `None`
    /// after [`OpenCache::answer`] and [`OpenCache::stated`].
    pub fn take_retired(&mut self) -> Option<Arc<OwnedFd>> {
        self.retired.pop()
    }

    fn fresh(&self, e: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(e.opened_at) < self.valid
    }

    fn get(&mut self, path: &str, now: Instant) -> Option<(Arc<OwnedFd>, FileMeta)> {
        let i = *self.index.get(path)?;
        if !self.fresh(&self.entries[i], now) {
            self.remove(i);
            return None;
        }
        let e = &mut self.entries[i];
        e.used = true;
        Some((e.file.clone(), e.meta))
    }

    /// Drop the entry at the sweep's position if it expired, and move the sweep on.
    fn sweep_one(&mut self, now: Instant) {
        if self.entries.is_empty() {
            return;
        }
        let i = self.sweep % self.entries.len();
        self.sweep = i + 1;
        if !self.fresh(&self.entries[i], now) {
            self.remove(i);
        }
    }

    fn insert(&mut self, path: Box<str>, file: Arc<OwnedFd>, meta: FileMeta, opened_at: Instant) {
        if self.cap == 0 {
            return;
        }
        let entry = Entry {
            path,
            file,
            meta,
            opened_at,
            used: false,
        };
        if let Some(&i) = self.index.get(&entry.path) {
            // Another connection's open of the same path got here first: the newer wins.
            let old = std::mem::replace(&mut self.entries[i], entry);
            self.retired.push(old.file);
            return;
        }
        if self.entries.len() < self.cap {
            self.index.insert(entry.path.clone(), self.entries.len());
            self.entries.push(entry);
            return;
        }
        // Full: the clock hand finds a victim (at most two rounds: the first clears the marks).
        let n = self.entries.len();
        let victim = loop {
            let i = self.hand % n;
            self.hand = i + 1;
            let e = &mut self.entries[i];
            if e.used {
                e.used = false;
            } else {
                break i;
            }
        };
        self.index.insert(entry.path.clone(), victim);
        let old = std::mem::replace(&mut self.entries[victim], entry);
        self.index.remove(&old.path);
        self.retired.push(old.file);
    }

    fn remove(&mut self, i: usize) {
        let old = self.entries.swap_remove(i);
        self.index.remove(&old.path);
        if let Some(moved) = self.entries.get(i) {
            self.index.insert(moved.path.clone(), i);
        }
        self.retired.push(old.file);
    }
}

/// A finished operation from the pool: the connection's key, the answer, and the file (the
/// one opened by `Open`, or the one the operation used, handed back).
pub struct PoolDone {
    pub key: u64,
    pub done: FileDone,
    pub file: Option<Arc<OwnedFd>>,
}

struct Job {
    key: u64,
    op: FileOp,
    file: Option<Arc<OwnedFd>>,
}

/// `--file-io threads`: a loop's pool of file threads (nginx's `aio threads`). The loop hands
/// operations over with [`FilePool::submit`]; a thread performs each with [`exec`], queues the
/// answer and wakes the loop through its eventfd; the loop collects answers with
/// [`FilePool::take_done`] when woken.
pub struct FilePool {
    jobs: Option<Sender<Job>>,
    done: Arc<Mutex<VecDeque<PoolDone>>>,
    threads: Vec<JoinHandle<()>>,
    /// Operations handed over and not yet collected.
    pub in_flight: usize,
}

impl FilePool {
    /// `n` threads opening beneath `root`, waking the loop through `waker`.
    pub fn new(n: usize, root: Arc<OwnedFd>, waker: Waker, cpu: usize) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let done = Arc::new(Mutex::new(VecDeque::new()));
        let mut threads = Vec::with_capacity(n);
        for i in 0..n.max(1) {
            let rx: Arc<Mutex<Receiver<Job>>> = rx.clone();
            let done = done.clone();
            let root = root.clone();
            let waker = waker.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("ringlab-file-{cpu}-{i}"))
                    .spawn(move || loop {
                        let job = match rx.lock().map(|r| r.recv()) {
                            Ok(Ok(job)) => job,
                            _ => return, // the loop is gone
                        };
                        let (answer, opened) = exec(root.as_fd(), job.file.as_deref(), &job.op)
                            .unwrap_or((
                                FileDone::Opened(Err(rustix::io::Errno::INVAL.raw_os_error())),
                                None,
                            ));
                        let file = opened.map(Arc::new).or(job.file);
                        if let Ok(mut q) = done.lock() {
                            q.push_back(PoolDone {
                                key: job.key,
                                done: answer,
                                file,
                            });
                        }
                        waker.wake();
                    })?,
            );
        }
        Ok(FilePool {
            jobs: Some(tx),
            done,
            threads,
            in_flight: 0,
        })
    }

    /// Hand `op` on `file` (the connection's, if open) to the pool, for the connection `key`.
    pub fn submit(&mut self, key: u64, op: FileOp, file: Option<Arc<OwnedFd>>) {
        if let Some(tx) = &self.jobs {
            if tx.send(Job { key, op, file }).is_ok() {
                self.in_flight += 1;
            }
        }
    }

    /// The answers that arrived (call when the loop's waker fired).
    pub fn take_done(&mut self, into: &mut Vec<PoolDone>) {
        if let Ok(mut q) = self.done.lock() {
            self.in_flight -= q.len().min(self.in_flight);
            into.extend(q.drain(..));
        }
    }
}

impl Drop for FilePool {
    fn drop(&mut self) {
        self.jobs = None; // the threads see the channel closed once the queue is empty
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tree() -> (tempfile::TempDir, OwnedFd) {
        let d = tempfile::tempdir().unwrap();
        std::fs::File::create(d.path().join("a.txt"))
            .unwrap()
            .write_all(b"hello files")
            .unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc/hostname", d.path().join("out")).unwrap();
        std::os::unix::fs::symlink("a.txt", d.path().join("in")).unwrap();
        let root = open_root(d.path()).unwrap();
        (d, root)
    }

    fn open(root: &OwnedFd, p: &str) -> (FileDone, Option<OwnedFd>) {
        exec(root.as_fd(), None, &FileOp::Open { path: p.into() }).unwrap()
    }

    #[test]
    fn open_stat_read() {
        let (_d, root) = tree();
        let (done, f) = open(&root, "a.txt");
        assert_eq!(done, FileDone::Opened(Ok(())));
        let f = f.unwrap();
        let (st, _) = exec(root.as_fd(), Some(&f), &FileOp::Stat).unwrap();
        let FileDone::Stat(Ok(m)) = st else {
            panic!("{st:?}")
        };
        assert_eq!((m.size, m.kind), (11, FileKind::Regular));
        let (r, _) = exec(
            root.as_fd(),
            Some(&f),
            &FileOp::Read {
                offset: 6,
                len: 100,
            },
        )
        .unwrap();
        assert_eq!(r, FileDone::Read(Ok(Bytes::from_static(b"files"))));
        let (r, _) = exec(
            root.as_fd(),
            Some(&f),
            &FileOp::Read {
                offset: 50,
                len: 10,
            },
        )
        .unwrap();
        assert_eq!(r, FileDone::Read(Ok(Bytes::new())), "past the end: EOF");
    }

    #[test]
    fn symlinks_out_of_the_root_are_refused_and_in_it_followed() {
        let (_d, root) = tree();
        assert_eq!(open(&root, "out").0, FileDone::Opened(Err(libc_exdev())));
        assert_eq!(open(&root, "in").0, FileDone::Opened(Ok(())));
        assert_eq!(
            open(&root, "missing").0,
            FileDone::Opened(Err(rustix::io::Errno::NOENT.raw_os_error()))
        );
        let (done, f) = open(&root, "sub");
        assert_eq!(done, FileDone::Opened(Ok(())));
        let (st, _) = exec(root.as_fd(), f.as_ref(), &FileOp::Stat).unwrap();
        assert!(matches!(
            st,
            FileDone::Stat(Ok(FileMeta {
                kind: FileKind::Directory,
                ..
            }))
        ));
    }

    fn libc_exdev() -> i32 {
        rustix::io::Errno::XDEV.raw_os_error()
    }

    fn fd() -> Arc<OwnedFd> {
        Arc::new(
            rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()).unwrap(),
        )
    }

    fn reg(size: u64) -> FileMeta {
        FileMeta {
            size,
            mtime: 1,
            kind: FileKind::Regular,
        }
    }

    type Hit = (Arc<OwnedFd>, FileMeta);

    /// Open `path` through the cache: the hit's file and meta, or, on a miss, a new file
    /// stated as `meta` (inserted when regular).
    fn through(
        c: &mut OpenCache,
        path: &str,
        now: Instant,
        meta: FileMeta,
    ) -> (Option<Hit>, Vec<Arc<OwnedFd>>) {
        let mut note = CacheNote::None;
        let hit = match c.answer(FileOp::Open { path: path.into() }, now, &mut note) {
            Ok(Cached::Opened(f)) => match c.answer(FileOp::Stat, now, &mut note) {
                Ok(Cached::Stat(m)) => Some((f, m)),
                other => panic!("{other:?}"),
            },
            Err(FileOp::Open { .. }) => {
                let f = fd();
                assert!(matches!(
                    c.answer(FileOp::Stat, now, &mut note),
                    Err(FileOp::Stat)
                ));
                c.stated(&mut note, Some(&f), &FileDone::Stat(Ok(meta)));
                None
            }
            other => panic!("{other:?}"),
        };
        let mut retired = Vec::new();
        while let Some(f) = c.take_retired() {
            retired.push(f);
        }
        (hit, retired)
    }

    #[test]
    fn cache_hits_expires_and_refuses_what_it_must_not_keep() {
        let t0 = Instant::now();
        let mut c = OpenCache::new(4, Duration::from_secs(1));
        assert!(
            through(&mut c, "a", t0, reg(5)).0.is_none(),
            "first: a miss"
        );
        let (hit, _) = through(&mut c, "a", t0 + Duration::from_millis(500), reg(9));
        let (f, m) = hit.expect("a hit within the validity");
        assert_eq!(m, reg(5), "the meta found when it was opened");
        assert_eq!(Arc::strong_count(&f), 2, "the cache's and ours");
        drop(f);
        // Expired: dropped and opened anew.
        let (hit, retired) = through(&mut c, "a", t0 + Duration::from_secs(1), reg(7));
        assert!(hit.is_none());
        assert_eq!(retired.len(), 1);
        assert_eq!(
            Arc::strong_count(&retired[0]),
            1,
            "nobody else holds it: close it"
        );
        assert_eq!(
            through(&mut c, "a", t0 + Duration::from_secs(1), reg(0))
                .0
                .unwrap()
                .1,
            reg(7)
        );
        // Directories, other files and failures are not cached.
        let dir = FileMeta {
            kind: FileKind::Directory,
            ..reg(0)
        };
        through(&mut c, "d", t0, dir);
        assert!(through(&mut c, "d", t0, dir).0.is_none());
        let mut note = CacheNote::None;
        assert!(c
            .answer(FileOp::Open { path: "e".into() }, t0, &mut note)
            .is_err());
        c.stated(&mut note, None, &FileDone::Opened(Err(2)));
        assert!(matches!(note, CacheNote::None));
        c.stated(&mut note, Some(&fd()), &FileDone::Stat(Err(2)));
        assert_eq!(c.len(), 1);
        // Off: nothing is kept.
        let mut off = OpenCache::new(0, Duration::from_secs(1));
        through(&mut off, "a", t0, reg(1));
        assert!(through(&mut off, "a", t0, reg(1)).0.is_none());
        assert!(off.is_empty());
    }

    #[test]
    fn cache_evicts_by_clock_within_its_bound() {
        let t0 = Instant::now();
        let mut c = OpenCache::new(2, Duration::from_secs(60));
        let mut retired = 0;
        through(&mut c, "a", t0, reg(1));
        through(&mut c, "b", t0, reg(2));
        assert!(through(&mut c, "a", t0, reg(0)).0.is_some(), "a is used");
        retired += through(&mut c, "c", t0, reg(3)).1.len();
        assert_eq!((c.len(), retired), (2, 1));
        assert!(
            through(&mut c, "a", t0, reg(0)).0.is_some(),
            "a was spared once"
        );
        assert!(through(&mut c, "b", t0, reg(0)).0.is_none(), "b went");
        for i in 0..100u64 {
            let p = format!("f{}", i % 7);
            let (hit, r) = through(&mut c, &p, t0, reg(i));
            retired += r.len();
            assert!(c.len() <= 2);
            if let Some((_, m)) = hit {
                assert_eq!(m.size % 7, i % 7, "{p}: the entry's own meta");
            }
        }
        assert!(retired > 50, "{retired}");
        for (p, &i) in &c.index {
            assert_eq!(&c.entries[i].path, p);
        }
        // Two connections opened the same path: the later insert replaces the earlier.
        let mut c = OpenCache::new(2, Duration::from_secs(60));
        let (mut n1, mut n2) = (CacheNote::None, CacheNote::None);
        let open = || FileOp::Open { path: "x".into() };
        assert!(c.answer(open(), t0, &mut n1).is_err());
        assert!(c.answer(open(), t0, &mut n2).is_err());
        c.stated(&mut n1, Some(&fd()), &FileDone::Stat(Ok(reg(1))));
        c.stated(&mut n2, Some(&fd()), &FileDone::Stat(Ok(reg(2))));
        assert!(c.take_retired().is_some());
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn the_pool_answers_and_wakes() {
        let (_d, root) = tree();
        let waker = Waker::new().unwrap();
        let mut pool = FilePool::new(2, Arc::new(root), waker.clone(), 0).unwrap();
        pool.submit(
            7,
            FileOp::Open {
                path: "a.txt".into(),
            },
            None,
        );
        let mut got = Vec::new();
        for _ in 0..500 {
            pool.take_done(&mut got);
            if !got.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].key, 7);
        assert_eq!(got[0].done, FileDone::Opened(Ok(())));
        let file = got[0].file.clone();
        assert!(file.is_some());
        assert_eq!(pool.in_flight, 0);
        pool.submit(7, FileOp::Read { offset: 0, len: 5 }, file);
        got.clear();
        for _ in 0..500 {
            pool.take_done(&mut got);
            if !got.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        assert_eq!(
            got[0].done,
            FileDone::Read(Ok(Bytes::from_static(b"hello")))
        );
    }
}
