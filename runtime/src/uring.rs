//! io_uring driver pieces: availability check, ring setup, provided-buffer ring, user-data
//! encoding, and a submission path that never loses an entry when the SQ is full.
//!
//! Minimum kernels (checked by [`check_available`]):
//! * multishot accept, provided-buffer rings, registered ring fd: 5.19 (5.18 for the ring fd)
//! * multishot recv: 6.0
//! * `IORING_SETUP_SINGLE_ISSUER`: 6.0; `IORING_SETUP_DEFER_TASKRUN`: 6.1

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::stats::SyscallCounters;

mod buf_ring;
mod fixed_bufs;

pub use buf_ring::{BufRing, Piece, PBUF_RING_INC};
pub use fixed_bufs::{FixedBuf, FixedBufs, MAX_FIXED_BUFS};

/// Why io_uring cannot be used here, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum UringUnavailable {
    /// `kernel.io_uring_disabled` forbids it.
    #[error("io_uring is disabled: kernel.io_uring_disabled={0} (set it to 0 with `sysctl -w kernel.io_uring_disabled=0`, or run with --io epoll)")]
    Disabled(u8),
    /// The kernel has no io_uring.
    #[error("io_uring is not supported by this kernel (ENOSYS); run with --io epoll")]
    NoSys,
    /// Denied though the sysctl allows it: a seccomp profile or an LSM.
    #[error("io_uring_setup was denied (EPERM) although kernel.io_uring_disabled={0}: a seccomp profile (Docker's default blocks io_uring) or an LSM forbids it; allow io_uring_setup/io_uring_enter/io_uring_register, or run with --io epoll")]
    Denied(u8),
    /// The kernel is too old for a technique ringlab uses.
    #[error(
        "kernel {kernel} is too old: {what} needs Linux {needs} or newer; run with --io epoll"
    )]
    TooOld {
        kernel: String,
        what: &'static str,
        needs: &'static str,
    },
    /// An opcode the probe says is missing.
    #[error("this kernel's io_uring lacks {0}; run with --io epoll")]
    MissingOp(&'static str),
    /// Setup failed for another reason.
    #[error("io_uring setup failed: {0}; run with --io epoll")]
    Other(io::Error),
}

/// The running kernel's version as (major, minor), from `uname`.
pub fn kernel_version() -> (u32, u32, String) {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy().into_owned();
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let major = it.next().unwrap_or(0);
    let minor = it.next().unwrap_or(0);
    (major, minor, release)
}

fn io_uring_disabled_sysctl() -> u8 {
    std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Check that io_uring can be used with every technique ringlab's uring backend needs.
pub fn check_available() -> Result<(), UringUnavailable> {
    let (major, minor, release) = kernel_version();
    if (major, minor) < (6, 1) {
        return Err(UringUnavailable::TooOld {
            kernel: release,
            what: "IORING_SETUP_DEFER_TASKRUN",
            needs: "6.1",
        });
    }
    let disabled = io_uring_disabled_sysctl();
    let ring = match IoUring::new(8) {
        Ok(r) => r,
        Err(e) => {
            return Err(match e.raw_os_error() {
                Some(libc_enosys) if libc_enosys == rustix::io::Errno::NOSYS.raw_os_error() => {
                    UringUnavailable::NoSys
                }
                Some(eperm) if eperm == rustix::io::Errno::PERM.raw_os_error() => {
                    if disabled > 0 {
                        UringUnavailable::Disabled(disabled)
                    } else {
                        UringUnavailable::Denied(disabled)
                    }
                }
                _ => UringUnavailable::Other(e),
            })
        }
    };
    let mut probe = io_uring::Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(UringUnavailable::Other)?;
    for (code, name) in [
        (opcode::AcceptMulti::CODE, "IORING_OP_ACCEPT"),
        (opcode::RecvMulti::CODE, "IORING_OP_RECV"),
        (opcode::Send::CODE, "IORING_OP_SEND"),
        (opcode::Shutdown::CODE, "IORING_OP_SHUTDOWN"),
        (opcode::Close::CODE, "IORING_OP_CLOSE"),
        (opcode::AsyncCancel::CODE, "IORING_OP_ASYNC_CANCEL"),
        (opcode::Read::CODE, "IORING_OP_READ"),
    ] {
        if !probe.is_supported(code) {
            return Err(UringUnavailable::MissingOp(name));
        }
    }
    Ok(())
}

/// How to build a ring.
#[derive(Clone, Debug)]
pub struct RingConfig {
    /// Submission queue entries.
    pub sq_entries: u32,
    /// Completion queue entries (≥ 2 × `sq_entries` is sensible: multishot ops post many CQEs).
    pub cq_entries: u32,
    /// `IORING_SETUP_SINGLE_ISSUER` + `IORING_SETUP_DEFER_TASKRUN` (the default), or, when false,
    /// `IORING_SETUP_COOP_TASKRUN`.
    pub defer_taskrun: bool,
    /// Register the ring fd so `io_uring_enter` skips the fd lookup.
    pub register_ring_fd: bool,
    /// `IORING_SETUP_SQPOLL`: a kernel thread polls the SQ; it sleeps after `idle` without
    /// work and runs on `cpu` when given. Replaces `defer_taskrun` (the kernel refuses both).
    pub sqpoll: Option<SqPoll>,
}

/// Settings of an SQPOLL thread.
#[derive(Clone, Copy, Debug)]
pub struct SqPoll {
    /// Spin this long without work before sleeping.
    pub idle: Duration,
    /// Pin the thread to this CPU.
    pub cpu: Option<u32>,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            sq_entries: 1024,
            cq_entries: 8192,
            defer_taskrun: true,
            register_ring_fd: true,
            sqpoll: None,
        }
    }
}

/// Build a ring in the calling thread (with `SINGLE_ISSUER`, the only thread that may submit).
pub fn build_ring(cfg: &RingConfig) -> io::Result<IoUring> {
    if cfg.cq_entries < cfg.sq_entries {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "the completion queue ({} entries) must be at least as large as the submission queue ({})",
                cfg.cq_entries, cfg.sq_entries
            ),
        ));
    }
    let mut b = IoUring::builder();
    b.setup_cqsize(cfg.cq_entries).setup_submit_all();
    if let Some(sq) = cfg.sqpoll {
        b.setup_sqpoll(sq.idle.as_millis().clamp(1, u128::from(u32::MAX)) as u32)
            .setup_single_issuer();
        if let Some(cpu) = sq.cpu {
            b.setup_sqpoll_cpu(cpu);
        }
    } else if cfg.defer_taskrun {
        // TASKRUN_FLAG: the kernel flags deferred work left over in the SQ ring's flags, which
        // [`Ring::submit_and_wait`] reads (see there).
        b.setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag();
    } else {
        b.setup_coop_taskrun().setup_taskrun_flag();
    }
    let ring = b.build(cfg.sq_entries)?;
    if !ring.params().is_feature_nodrop() {
        return Err(io::Error::other(
            "this kernel's io_uring lacks IORING_FEAT_NODROP (5.5); completions could be lost",
        ));
    }
    Ok(ring)
}

/// A ring split into its parts (the submitter keeps the registered ring fd), plus the backlog
/// of entries that did not fit in the SQ.
pub struct Ring<'a> {
    uring: &'a IoUring,
    submitter: io_uring::Submitter<'a>,
    sq: io_uring::SubmissionQueue<'a>,
    cq: io_uring::CompletionQueue<'a>,
    backlog: VecDeque<squeue::Entry>,
    /// Times the kernel flagged CQ overflow (entries kept by `IORING_FEAT_NODROP`, not lost).
    pub cq_overflow_events: u64,
    /// `DEFER_TASKRUN` (with `TASKRUN_FLAG`): completions wait as task work until an enter.
    deferred: bool,
    /// Enters that found deferred task work left over and ran a batch of it without waiting.
    pub taskrun_batches: u64,
    /// `--coalesce`: the turn's wait asks for a batch with a minimum wait.
    coalesce: Option<crate::poller::Coalesce>,
}

impl<'a> Ring<'a> {
    /// Split `ring` for use by one loop, registering its fd if asked.
    pub fn new(ring: &'a mut IoUring, cfg: &RingConfig) -> io::Result<Ring<'a>> {
        // Shared from here on, so that what registers with the ring for longer than a call (a
        // `BufRing`) can borrow it too.
        let uring: &'a IoUring = ring;
        // SAFETY: `ring` was borrowed uniquely for 'a and only shared borrows of it leave this
        // function, so these are its only submission and completion queues (making another
        // needs `submission_shared`/`completion_shared`, whose callers promise the same).
        let (sq, cq) = unsafe { (uring.submission_shared(), uring.completion_shared()) };
        let mut submitter = uring.submitter();
        if cfg.register_ring_fd {
            submitter.register_ring_fd()?;
        }
        Ok(Ring {
            uring,
            submitter,
            sq,
            cq,
            backlog: VecDeque::new(),
            cq_overflow_events: 0,
            taskrun_batches: 0,
            coalesce: None,
            deferred: cfg.defer_taskrun && cfg.sqpoll.is_none(),
        })
    }

    /// The submitter, for registration calls.
    pub fn submitter(&self) -> &io_uring::Submitter<'a> {
        &self.submitter
    }

    /// The io_uring itself, for registrations that outlive a call (see [`BufRing`]).
    pub fn uring(&self) -> &'a IoUring {
        self.uring
    }

    /// Queue an entry. When the SQ is full, the entries queued so far are submitted at once and
    /// the entry is retried; if the kernel still has no room, it waits in a backlog that
    /// [`Ring::submit_and_wait`] drains first, so order is kept and nothing is dropped.
    ///
    /// # Safety
    /// Every buffer and descriptor `entry` refers to must stay valid until its completion (the
    /// last one, for a multishot operation) has been reaped.
    pub unsafe fn push(&mut self, entry: squeue::Entry, counters: &mut SyscallCounters) {
        if self.backlog.is_empty() {
            // SAFETY: the caller guarantees the entry's resources outlive the operation.
            if unsafe { self.sq.push(&entry) }.is_ok() {
                return;
            }
            self.sq.sync();
            counters.io_uring_enter += 1;
            let _ = self.submitter.submit();
            self.sq.sync();
            // SAFETY: as above.
            if unsafe { self.sq.push(&entry) }.is_ok() {
                return;
            }
        }
        self.backlog.push_back(entry);
    }

    fn drain_backlog(&mut self) {
        while let Some(e) = self.backlog.front() {
            // SAFETY: entries in the backlog were pushed through `Ring::push`, whose caller
            // guaranteed their resources outlive the operation.
            if unsafe { self.sq.push(e) }.is_err() {
                break;
            }
            self.backlog.pop_front();
        }
    }

    /// `--coalesce`: from now on a loop turn's wait (a [`Ring::submit_and_wait`] for one
    /// completion) asks for `c.batch` completions with a minimum wait of
    /// `c.wait`: the kernel returns once the batch is there, or after `c.wait` if at least one
    /// completion is, or at the timeout (`min_wait_usec`, `IORING_FEAT_MIN_TIMEOUT`, Linux 6.12).
    pub fn set_coalesce(&mut self, c: Option<crate::poller::Coalesce>) -> io::Result<()> {
        if c.is_some() && !self.uring.params().is_feature_min_timeout() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "--coalesce needs io_uring's minimum wait (IORING_FEAT_MIN_TIMEOUT, Linux 6.12)",
            ));
        }
        if let Some(c) = c {
            if c.wait.as_micros() > u128::from(u32::MAX) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "--coalesce must be below 4294 s",
                ));
            }
        }
        self.coalesce = c;
        Ok(())
    }

    /// Run deferred task work the kernel held back (see [`Ring::submit_and_wait`]).
    fn run_deferred(&mut self, counters: &mut SyscallCounters) {
        /// Deferred items an enter runs per pass when asked for fewer completions.
        const PASS: usize = 20;
        self.cq.sync();
        let queued = self.cq.len();
        let room = (self.cq.capacity() / 2).saturating_sub(queued);
        if !self.sq.taskrun() || queued < PASS || room < PASS {
            return;
        }
        counters.io_uring_enter += 1;
        self.taskrun_batches += 1;
        // Up to `room` more completions, not waiting for them: the kernel runs that much of
        // the deferred work first, then finds too few and times out at once.
        let ts = types::Timespec::new();
        let args = types::SubmitArgs::new().timespec(&ts);
        let _ = self.submitter.submit_with_args(room, &args);
        self.sq.sync();
    }

    /// One `io_uring_enter` that submits everything queued and waits for at least `want`
    /// completions or `timeout`. Interruptions, timeouts and a busy CQ are not errors.
    ///
    /// On a `DEFER_TASKRUN` ring an enter runs at most `max(20, want)` deferred task-work items
    /// per pass, two passes at most (`IO_LOCAL_TW_DEFAULT_MAX`, Linux 6.13), and keeps the rest
    /// for the next one, so a loop that waits for one completion per turn runs a few dozen
    /// receives per turn: at 10,000 connections the deferred work then grows faster than it runs
    /// and the oldest connections wait seconds for data that has long arrived. So when a turn's
    /// wait (`timeout` given) returned a full pass of completions and the kernel flags leftover
    /// work (`IORING_SQ_TASKRUN`), a second enter asks for up to half the CQ with a zero timeout,
    /// which runs that much of the deferred work at once. Only then: an enter that asks for more
    /// completions than come sleeps on a timer, and doing it whenever work was flagged (a new
    /// item during the turn) cost the uring server 15–43% more CPU per request at 512
    /// connections.
    pub fn submit_and_wait(
        &mut self,
        want: usize,
        timeout: Option<Duration>,
        counters: &mut SyscallCounters,
    ) -> io::Result<()> {
        self.drain_backlog();
        self.sq.sync();
        if self.sq.cq_overflow() {
            self.cq_overflow_events += 1;
        }
        counters.io_uring_enter += 1;
        let co = self.coalesce.filter(|_| want == 1);
        let r = match (timeout, co) {
            (Some(t), co) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                match co {
                    Some(c) => self
                        .submitter
                        .submit_with_args(c.batch, &args.min_wait_usec(c.wait.as_micros() as u32)),
                    None => self.submitter.submit_with_args(want, &args),
                }
            }
            (None, Some(c)) => self.submitter.submit_with_args(
                c.batch,
                &types::SubmitArgs::new().min_wait_usec(c.wait.as_micros() as u32),
            ),
            (None, None) => self.submitter.submit_and_wait(want),
        };
        self.sq.sync();
        if timeout.is_some() && self.deferred {
            self.run_deferred(counters);
        }
        match r {
            Ok(_) => Ok(()),
            Err(e) => match rustix::io::Errno::from_io_error(&e) {
                Some(rustix::io::Errno::TIME)
                | Some(rustix::io::Errno::INTR)
                | Some(rustix::io::Errno::BUSY)
                | Some(rustix::io::Errno::AGAIN) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// Move the available completions into `out` (freeing the CQ for the kernel).
    pub fn reap(&mut self, out: &mut Vec<cqueue::Entry>) {
        self.cq.sync();
        out.extend(&mut self.cq);
        self.cq.sync();
    }

    /// Submit what is queued (one `io_uring_enter`, not waiting) with the ring's registered
    /// eventfd muted meanwhile, so that the completions this enter posts itself (sends that
    /// complete inline) do not signal it; what arrives from elsewhere while it is muted is
    /// caught by [`Ring::ready`] afterwards (the kernel posts or flags it before the enter
    /// returns). For a loop that hears of this ring only through that eventfd.
    pub fn submit_quiet(&mut self, counters: &mut SyscallCounters) -> io::Result<()> {
        self.drain_backlog();
        self.sq.sync();
        if self.sq.cq_overflow() {
            self.cq_overflow_events += 1;
        }
        counters.io_uring_enter += 1;
        self.cq.disable_eventfd();
        let r = self.submitter.submit();
        self.cq.enable_eventfd();
        // The kernel checks the muting after it flags new work; ours is checked after the
        // unmuting: this fence orders our store before the loads in `ready`.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        self.sq.sync();
        match r {
            Ok(_) => Ok(()),
            Err(e) => match rustix::io::Errno::from_io_error(&e) {
                Some(rustix::io::Errno::INTR)
                | Some(rustix::io::Errno::BUSY)
                | Some(rustix::io::Errno::AGAIN) => Ok(()),
                _ => Err(e),
            },
        }
    }

    /// Completions are waiting in the CQ, or task work is (`IORING_SQ_TASKRUN`: on a
    /// `DEFER_TASKRUN` ring, work an enter left over or that came since; on a `COOP_TASKRUN`
    /// ring, work the thread's next syscall runs): a loop that waits on another ring must look
    /// at this one again before it sleeps.
    pub fn ready(&mut self) -> bool {
        self.cq.sync();
        self.sq.sync();
        !self.cq.is_empty() || self.sq.taskrun()
    }

    /// Entries waiting in the backlog.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Entries queued in the SQ or the backlog, not yet submitted.
    pub fn unsubmitted(&self) -> usize {
        self.sq.len() + self.backlog.len()
    }
}

/// User data: which operation, on which slot, in which generation of that slot.
///
/// Layout: `op` in bits 56..64, `gen` in bits 32..56, `slot` in bits 0..32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UserData {
    pub op: u8,
    pub gen: u32,
    pub slot: u32,
}

impl UserData {
    /// Mask for the 24-bit generation.
    pub const GEN_MASK: u32 = (1 << 24) - 1;

    /// Encode; `gen` is truncated to 24 bits.
    pub const fn encode(self) -> u64 {
        ((self.op as u64) << 56) | (((self.gen & Self::GEN_MASK) as u64) << 32) | self.slot as u64
    }

    /// Decode what [`UserData::encode`] made.
    pub const fn decode(v: u64) -> UserData {
        UserData {
            op: (v >> 56) as u8,
            gen: ((v >> 32) as u32) & Self::GEN_MASK,
            slot: v as u32,
        }
    }
}

/// Set `sqe->optlen` of an entry, which the io-uring crate does not expose for `RecvMulti`: for
/// a multishot recv it is the total number of bytes after which the multishot ends by itself
/// (once a completion reaches it: the last one may carry the rest of its buffer); the kernel
/// answers -EINVAL where it does not know it.
///
/// The write goes through the entry's bytes, so it relies on the crate's layout: `squeue::Entry`
/// is the kernel's 64-byte `struct io_uring_sqe` (checked at compile time below) and `optlen`
/// sits at byte 44 of it (`SQE_OPTLEN_AT`; checked against the crate's own `SetSockOpt` encoding
/// by the test `with_optlen_writes_where_the_crate_puts_optlen`). Recheck both when the io-uring
/// version in the workspace `Cargo.toml` changes, and use the crate's setter once it has one.
pub fn with_optlen(e: squeue::Entry, optlen: u32) -> squeue::Entry {
    let mut bytes = sqe_bytes(e);
    bytes[SQE_OPTLEN_AT..SQE_OPTLEN_AT + 4].copy_from_slice(&optlen.to_ne_bytes());
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's `io_uring_sqe`, 64 bytes of
    // integers and unions of integers (size checked below): every byte pattern is a valid value.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(bytes) }
}

/// Offset of `optlen` in the kernel's `struct io_uring_sqe` (a union with `file_index` and
/// `addr_len`), from the head of that struct as the uapi header lays it out.
const SQE_OPTLEN_AT: usize = std::mem::offset_of!(SqeHead, optlen);

/// The kernel's `struct io_uring_sqe` up to `optlen`, with each union as its first member.
#[repr(C)]
#[allow(dead_code)] // a layout to measure, never built
struct SqeHead {
    opcode: u8,
    flags: u8,
    ioprio: u16,
    fd: i32,
    off: u64,
    addr: u64,
    len: u32,
    op_flags: u32,
    user_data: u64,
    buf_index: u16,
    personality: u16,
    optlen: u32,
}

const _: () = assert!(std::mem::size_of::<squeue::Entry>() == 64);
const _: () = assert!(std::mem::align_of::<squeue::Entry>() == 8);
const _: () = assert!(SQE_OPTLEN_AT == 44);

/// The bytes of an entry.
fn sqe_bytes(e: squeue::Entry) -> [u8; 64] {
    // SAFETY: `squeue::Entry` is 64 bytes (checked above) of integers and unions of integers
    // with no padding, so every byte of it is initialized.
    unsafe { std::mem::transmute::<squeue::Entry, [u8; 64]>(e) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_queue_smaller_than_the_submission_queue_is_refused_with_a_reason() {
        let cfg = RingConfig {
            sq_entries: 16384,
            cq_entries: 8192,
            ..RingConfig::default()
        };
        let e = build_ring(&cfg).err().expect("refused");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(
            e.to_string().contains(
                "(8192 entries) must be at least as large as the submission queue (16384)"
            ),
            "{e}"
        );
    }

    /// A scratch ring, or `None` where io_uring is unavailable (a failure with
    /// RINGLAB_REQUIRE_URING=1).
    pub(super) fn ring() -> Option<IoUring> {
        match IoUring::new(8) {
            Ok(r) => Some(r),
            Err(e) if std::env::var("RINGLAB_REQUIRE_URING").is_ok_and(|v| v == "1") => {
                panic!("RINGLAB_REQUIRE_URING=1 but io_uring is unavailable: {e}")
            }
            Err(_) => None,
        }
    }

    /// A small ring built as the loops build theirs, or `None` where io_uring is unavailable.
    pub(super) fn loop_ring() -> Option<IoUring> {
        ring()?;
        let cfg = RingConfig {
            sq_entries: 8,
            cq_entries: 16,
            ..RingConfig::default()
        };
        Some(build_ring(&cfg).unwrap())
    }

    #[test]
    fn with_optlen_writes_where_the_crate_puts_optlen() {
        // The crate's own encoding of `optlen` (`SetSockOpt`) is the reference: setting it
        // afterwards gives the same bytes as building it in.
        let opt = |n| {
            opcode::SetSockOpt::new(types::Fd(3), 1, 2, std::ptr::null(), n)
                .build()
                .user_data(9)
        };
        assert_eq!(
            sqe_bytes(with_optlen(opt(0), 0xA1B2_C3D4)),
            sqe_bytes(opt(0xA1B2_C3D4))
        );
        // On a multishot recv it changes those four bytes and nothing else.
        let recv = opcode::RecvMulti::new(types::Fd(5), 7)
            .build()
            .user_data(11);
        let before = sqe_bytes(recv.clone());
        let after = sqe_bytes(with_optlen(recv, 77));
        assert_eq!(after[SQE_OPTLEN_AT..SQE_OPTLEN_AT + 4], 77u32.to_ne_bytes());
        for i in (0..64).filter(|i| !(SQE_OPTLEN_AT..SQE_OPTLEN_AT + 4).contains(i)) {
            assert_eq!(before[i], after[i], "byte {i} changed");
        }
    }

    #[test]
    fn a_multishot_recv_with_optlen_stops_at_the_limit() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let Some(mut uring) = loop_ring() else { return };
        let mut ring = Ring::new(&mut uring, &RingConfig::default()).unwrap();
        let mut br = BufRing::new(ring.uring(), 0, 8, 64).unwrap();
        let (mut a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.write_all(&[7u8; 100]).unwrap();
        // End of stream after the bytes: a multishot without a limit ends there too.
        drop(a);
        let mut sc = SyscallCounters::default();
        let e = with_optlen(
            opcode::RecvMulti::new(types::Fd(b.as_raw_fd()), 0).build(),
            10,
        );
        // SAFETY: `b` and `br` outlive the operation: its final completion is reaped below.
        unsafe { ring.push(e.user_data(1), &mut sc) };
        let (mut total, mut cqes) = (0, Vec::new());
        loop {
            ring.submit_and_wait(1, None, &mut sc).unwrap();
            ring.reap(&mut cqes);
            let mut last = false;
            for cqe in cqes.drain(..) {
                if cqe.result() == -rustix::io::Errno::INVAL.raw_os_error() {
                    return; // a kernel without the multishot byte limit
                }
                let n = usize::try_from(cqe.result()).expect("bytes");
                if let Some(bid) = cqueue::buffer_select(cqe.flags()) {
                    // SAFETY: a completion of the recv on this group, reported once.
                    unsafe { br.discard(bid, n, false, false) };
                }
                total += n;
                last |= !cqueue::more(cqe.flags());
            }
            if last {
                break;
            }
        }
        // The kernel ends the multishot once it has delivered the limit (it may overshoot by the
        // rest of a buffer); without the limit it would deliver all 100 bytes, then end of stream.
        assert!((10..100).contains(&total), "{total} bytes delivered");
    }

    #[test]
    fn user_data_round_trips() {
        for (op, gen, slot) in [
            (0u8, 0u32, 0u32),
            (7, 123, 99),
            (255, UserData::GEN_MASK, u32::MAX),
        ] {
            let u = UserData { op, gen, slot };
            assert_eq!(UserData::decode(u.encode()), u);
        }
        let u = UserData {
            op: 1,
            gen: UserData::GEN_MASK + 5,
            slot: 3,
        };
        assert_eq!(UserData::decode(u.encode()).gen, 4);
    }
}
