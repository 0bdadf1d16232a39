//! The tokio-uring backend: one `tokio_uring` runtime per listed CPU (thread pinned), a
//! SO_REUSEPORT listener each, a task per connection with owned-buffer reads and writes. What an
//! ergonomic io_uring runtime costs and gives.
//!
//! Known limits of tokio-uring 0.5, measured against the raw `uring` backend: no multishot
//! accept or recv, no provided-buffer rings (each connection owns a read buffer while a read is
//! posted), one `io_uring_enter` per runtime park rather than per batch of our choosing, and no
//! `DEFER_TASKRUN`.
//!
//! Completion-model pitfall handled here: dropping a posted read future (say, because a timer
//! branch of `select!` won) would cancel the operation, and bytes the kernel had already copied
//! would be lost. So a connection keeps its read and write futures alive across turns (a write
//! races the session's deadline too, so a peer that never reads cannot pin it forever) and only
//! ever drops them when the connection closes.
//!
//! Files (`--root`) go through tokio-uring's own file API, every operation on the ring:
//!
//! * Open: `tokio_uring::fs::File::open` (and `OpenOptions`) is `IORING_OP_OPENAT` on a path
//!   relative to the working directory, with no directory descriptor and no `RESOLVE_*` flags,
//!   so it cannot keep a symlink beneath the root from leading out of it. tokio-uring 0.5 has no
//!   openat2, but it does export its escape hatch for operations it lacks:
//!   `UnsubmittedOneshot::new(data, transform, sqe)` submits a raw SQE on the runtime's ring and
//!   keeps `data` alive until the completion, even if the future is dropped first. So the open
//!   is `IORING_OP_OPENAT2(root, path, flags, RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` built
//!   with the io-uring crate tokio-uring itself is built on (0.6), with the same flags as every
//!   other backend ([`files::open_flags`], [`files::resolve_flags`]), and the descriptor the
//!   kernel returns becomes a `tokio_uring::fs::File`. The kernel resolves the path inline when
//!   the dentries are cached, else on an io-wq worker: the loop never blocks on a path walk
//!   (an openat2 syscall on the loop, wrapped with `File::from_std`, would).
//! * Stat: `File::statx_builder()` with the fields a [`ringlab_proto::files::FileMeta`] needs
//!   (`IORING_OP_STATX` on the open file).
//! * Read: `File::read_at` into a buffer the operation owns until it completes (ownership
//!   passing), handed to the session as `Bytes` without a copy.
//! * Close: `File::close` (`IORING_OP_CLOSE`), awaited in the connection's order of file
//!   operations, so the next request's open follows it.
//!
//! A connection runs one file operation at a time, as the session asks for them, and keeps its
//! future across turns like the socket's; meanwhile it goes on writing, reading, and watching
//! its deadline and shutdown. When the connection closes, an operation still in flight is
//! awaited rather than dropped (a dropped open would leave the descriptor it returns open),
//! and the file is closed.

use std::cell::RefCell;
use std::ffi::CString;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ringlab_proto::files::{FileDone, FileOp};
use ringlab_proto::Action;
use tokio::sync::watch;
use tokio_uring::fs::File;
use tokio_uring::net::{TcpListener, TcpStream};
use tokio_uring::{InFlightOneshot, OneshotOutputTransform, UnsubmittedOneshot};
use tokio_uring_io_uring::{cqueue, opcode, types};

use super::pool::{accept_loop, drain, CoreAccess, Phases};
use crate::core::{shutdown_watch, stopped, ConnCore, LoopCore, LoopCtx};
use crate::files;
use crate::stats::LoopStats;

const READ_BUF: usize = 16 * 1024;

type Core = Rc<RefCell<LoopCore>>;

/// Run one tokio-uring runtime until shutdown; returns its statistics.
pub fn run(ctx: LoopCtx) -> io::Result<LoopStats> {
    let core: Core = Rc::new(RefCell::new(LoopCore::new(&ctx)));
    let mut b = tokio_uring::builder();
    b.entries(ctx.args.sq_entries);
    let rt = match tokio_uring::Runtime::new(&b) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ctx.ready.send(Err(format!("tokio-uring runtime: {e}")));
            return Err(e);
        }
    };
    let grace = ctx.args.grace;
    let c2 = core.clone();
    rt.block_on(async move {
        let std_l = std::net::TcpListener::from(ctx.listener.as_fd().try_clone_to_owned()?);
        let listener = TcpListener::from_std(std_l);
        let rx = shutdown_watch(ctx.waker.clone(), ctx.shutdown.clone())?;
        let mut stop = rx.clone();
        let (abort_tx, abort) = watch::channel(false);
        let phases = Phases {
            stop: rx.clone(),
            abort,
        };
        let live = Rc::new(RefCell::new(0usize));
        let (core, live2) = (c2.clone(), live.clone());
        let root = ctx.root.clone();
        let accept = tokio_uring::spawn(async move {
            accept_loop(&core, &listener, rx, |s, conn| {
                *live2.borrow_mut() += 1;
                let (core, phases, live, root) =
                    (core.clone(), phases.clone(), live2.clone(), root.clone());
                tokio_uring::spawn(serve(s, conn, core, phases, live, root));
            })
            .await
        });
        let _ = ctx.ready.send(Ok(()));
        let _ = stopped(&mut stop).await;
        let _ = accept.await;
        // Connections finish on their own (the sessions drain) within --grace, or are aborted.
        drain(grace, || *live.borrow(), &abort_tx).await;
        Ok::<(), io::Error>(())
    })?;
    let stats = core.borrow().stats.clone();
    Ok(stats)
}

type ReadFut<'a> = Pin<Box<dyn Future<Output = tokio_uring::BufResult<usize, Vec<u8>>> + 'a>>;
type WriteFut<'a> = Pin<Box<dyn Future<Output = tokio_uring::BufResult<usize, Bytes>> + 'a>>;

/// What a file operation on the ring came back with.
enum FileOutcome {
    /// The session's answer, and the file an `Open` opened.
    Done(FileDone, Option<File>),
    /// A `Close` finished (the session expects no answer).
    Closed,
}

type FileFut = Pin<Box<dyn Future<Output = FileOutcome>>>;

/// What an openat2 on the ring must keep alive until it completes: the SQE points at the path
/// and the `open_how`, and names the root by its raw descriptor.
struct OpenAt2Data {
    _root: Arc<OwnedFd>,
    _path: CString,
    _how: Box<types::OpenHow>,
}

/// Turns an openat2 completion into a `File`.
struct OpenAt2Done;

impl OneshotOutputTransform for OpenAt2Done {
    type Output = io::Result<File>;
    type StoredData = OpenAt2Data;

    fn transform_oneshot_output(self, _data: OpenAt2Data, cqe: cqueue::Entry) -> io::Result<File> {
        let fd = cqe.result();
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(-fd));
        }
        // SAFETY: a non-negative result of IORING_OP_OPENAT2 (into the descriptor table, not a
        // fixed slot) is a new descriptor that nothing else owns: the File takes it over and
        // closes it.
        Ok(unsafe { File::from_raw_fd(fd) })
    }
}

/// `openat2(root, path, files::open_flags(), files::resolve_flags())` on the runtime's ring.
fn open_beneath(
    root: Arc<OwnedFd>,
    path: &str,
) -> io::Result<InFlightOneshot<OpenAt2Data, OpenAt2Done>> {
    let path = CString::new(path).map_err(|_| io::Error::from(rustix::io::Errno::INVAL))?;
    let how = Box::new(
        types::OpenHow::new()
            .flags(u64::from(files::open_flags().bits()))
            .resolve(files::resolve_flags().bits()),
    );
    // The pointers in the SQE stay valid until the completion: the path's bytes and the
    // `open_how` are heap allocations that do not move when `OpenAt2Data` does, and tokio-uring
    // keeps the data (and so the root's descriptor) until the completion arrives, even when the
    // future is dropped first.
    let sqe = opcode::OpenAt2::new(
        types::Fd(root.as_raw_fd()),
        path.as_ptr(),
        &*how as *const types::OpenHow,
    )
    .build();
    let data = OpenAt2Data {
        _root: root,
        _path: path,
        _how: how,
    };
    Ok(UnsubmittedOneshot::new(data, OpenAt2Done, sqe).submit())
}

fn errno(e: &io::Error) -> i32 {
    e.raw_os_error()
        .unwrap_or(rustix::io::Errno::IO.raw_os_error())
}

/// Start `op` on the ring. `file` is the connection's open file; `Close` takes it.
fn start_file_op(op: FileOp, root: &Option<Arc<OwnedFd>>, file: &mut Option<Rc<File>>) -> FileFut {
    let badf = rustix::io::Errno::BADF.raw_os_error();
    match op {
        FileOp::Open { path } => {
            let opened = match root.clone() {
                Some(root) => open_beneath(root, &path),
                None => Err(io::Error::from_raw_os_error(badf)),
            };
            Box::pin(async move {
                let r = match opened {
                    Ok(op) => op.await,
                    Err(e) => Err(e),
                };
                match r {
                    Ok(f) => FileOutcome::Done(FileDone::Opened(Ok(())), Some(f)),
                    Err(e) => FileOutcome::Done(FileDone::Opened(Err(errno(&e))), None),
                }
            })
        }
        FileOp::Stat => {
            let f = file.clone();
            Box::pin(async move {
                let r = match f {
                    Some(f) => f
                        .statx_builder()
                        .mask(files::statx_mask().bits())
                        .statx()
                        .await
                        .map(|st| files::meta_of(st.stx_mode, st.stx_size, st.stx_mtime.tv_sec))
                        .map_err(|e| errno(&e)),
                    None => Err(badf),
                };
                FileOutcome::Done(FileDone::Stat(r), None)
            })
        }
        FileOp::Read { offset, len } => {
            let f = file.clone();
            Box::pin(async move {
                let r = match f {
                    Some(f) => {
                        // The buffer is the operation's until it completes, then the session's.
                        let (r, buf) = f.read_at(Vec::with_capacity(len), offset).await;
                        r.map(|_| Bytes::from(buf)).map_err(|e| errno(&e))
                    }
                    None => Err(badf),
                };
                FileOutcome::Done(FileDone::Read(r), None)
            })
        }
        FileOp::Close => {
            let f = file.take();
            Box::pin(async move {
                // One operation at a time: no other holds the file now.
                if let Some(Ok(f)) = f.map(Rc::try_unwrap) {
                    let _ = f.close().await;
                }
                FileOutcome::Closed
            })
        }
    }
}

async fn serve(
    s: TcpStream,
    mut conn: ConnCore,
    core: Core,
    mut phases: Phases,
    live: Rc<RefCell<usize>>,
    root: Option<Arc<OwnedFd>>,
) {
    let with = |f: &mut dyn FnMut(&mut LoopCore)| core.with(f);
    let cfg = core.borrow().cfg.clone();
    let mut spare = Some(vec![0u8; READ_BUF]);
    let mut read: Option<ReadFut<'_>> = None;
    // The write in flight: its future, and how long the buffer it writes is.
    let mut write: Option<(WriteFut<'_>, usize)> = None;
    // Output taken from the session and not yet written (the part after a short write).
    let mut out: Option<Bytes> = None;
    let (mut stopping, mut aborting) = (false, false);
    // The connection's open file, and the file operation in flight.
    let mut file: Option<Rc<File>> = None;
    let mut fop: Option<FileFut> = None;
    loop {
        if fop.is_none() {
            if let Some(op) = conn.session.take_file_op() {
                fop = Some(start_file_op(op, &root, &mut file));
            }
        }
        if out.is_none() && write.is_none() {
            out = conn.session.take_output();
        }
        if let Some(b) = out.take() {
            if write.is_none() {
                let len = b.len();
                write = Some((Box::pin(s.write(b).submit()), len));
            } else {
                out = Some(b);
            }
        }
        match conn.session.action() {
            Action::Close => break,
            Action::ShutdownWrite if write.is_none() => {
                let _ = s.shutdown(std::net::Shutdown::Write);
                with(&mut |c| c.write_shutdown(&mut conn));
                continue;
            }
            _ => {}
        }
        if read.is_none() && conn.session.wants_read(&cfg) {
            let buf = spare.take().unwrap_or_else(|| vec![0u8; READ_BUF]);
            read = Some(Box::pin(s.read(buf)));
        }
        let deadline = conn.session.deadline(&cfg);
        tokio::select! {
            (r, buf) = async { write.as_mut().expect("guarded").0.as_mut().await }, if write.is_some() => {
                let len = write.take().map_or(0, |w| w.1);
                match r {
                    Ok(n) if n > 0 => {
                        with(&mut |c| c.sent(&mut conn, n));
                        if n < len {
                            out = Some(buf.slice(n..len)); // short write: the rest goes next
                        }
                    }
                    _ => {
                        conn.session.on_send_failed();
                        with(&mut |c| c.stats.conn_errors += 1);
                    }
                }
            }
            outcome = async { fop.as_mut().expect("guarded").await }, if fop.is_some() => {
                fop = None;
                if let FileOutcome::Done(done, opened) = outcome {
                    if let Some(f) = opened {
                        file = Some(Rc::new(f));
                    }
                    core.with(|c| c.file_done(&mut conn, done));
                }
            }
            (r, buf) = async { read.as_mut().expect("guarded").await }, if read.is_some() => {
                read = None;
                match r {
                    Ok(0) => with(&mut |c| c.peer_eof(&mut conn)),
                    Ok(n) => with(&mut |c| c.recv(&mut conn, &buf[..n])),
                    Err(_) => with(&mut |c| c.conn_error(&mut conn)),
                }
                spare = Some(buf);
            }
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now).into()), if deadline.is_some() => {
                with(&mut |c| c.timeout(&mut conn));
            }
            _ = stopped(&mut phases.stop), if !stopping => {
                stopping = true;
                conn.session.begin_shutdown();
            }
            _ = stopped(&mut phases.abort), if !aborting => {
                aborting = true;
                conn.session.abort();
            }
            else => break,
        }
    }
    drop(read);
    drop(write);
    // A file operation in flight completes first (dropping an open would leak the descriptor
    // it returns); then the file closes on the ring.
    if let Some(f) = fop.take() {
        if let FileOutcome::Done(_, Some(opened)) = f.await {
            let _ = opened.close().await;
        }
    }
    if let Some(Ok(f)) = file.take().map(Rc::try_unwrap) {
        let _ = f.close().await;
    }
    {
        let mut c = core.borrow_mut();
        c.stats.closed += 1;
        c.publish();
    }
    *live.borrow_mut() -= 1;
}
