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

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

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
