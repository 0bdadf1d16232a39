//! io_uring driver pieces: availability check, ring setup, provided-buffer ring, user-data
//! encoding, and a submission path that never loses an entry when the SQ is full.
//!
//! Minimum kernels (checked by [`check_available`]):
//! * multishot accept, provided-buffer rings, registered ring fd: 5.19 (5.18 for the ring fd)
//! * multishot recv: 6.0
//! * `IORING_SETUP_SINGLE_ISSUER`: 6.0; `IORING_SETUP_DEFER_TASKRUN`: 6.1

use std::collections::VecDeque;
use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::stats::SyscallCounters;

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
    let mut b = IoUring::builder();
    b.setup_cqsize(cfg.cq_entries).setup_submit_all();
    if let Some(sq) = cfg.sqpoll {
        b.setup_sqpoll(sq.idle.as_millis().clamp(1, u128::from(u32::MAX)) as u32)
            .setup_single_issuer();
        if let Some(cpu) = sq.cpu {
            b.setup_sqpoll_cpu(cpu);
        }
    } else if cfg.defer_taskrun {
        b.setup_single_issuer().setup_defer_taskrun();
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
    submitter: io_uring::Submitter<'a>,
    sq: io_uring::SubmissionQueue<'a>,
    cq: io_uring::CompletionQueue<'a>,
    backlog: VecDeque<squeue::Entry>,
    /// Times the kernel flagged CQ overflow (entries kept by `IORING_FEAT_NODROP`, not lost).
    pub cq_overflow_events: u64,
}

impl<'a> Ring<'a> {
    /// Split `ring` for use by one loop, registering its fd if asked.
    pub fn new(ring: &'a mut IoUring, cfg: &RingConfig) -> io::Result<Ring<'a>> {
        let (mut submitter, sq, cq) = ring.split();
        if cfg.register_ring_fd {
            submitter.register_ring_fd()?;
        }
        Ok(Ring {
            submitter,
            sq,
            cq,
            backlog: VecDeque::new(),
            cq_overflow_events: 0,
        })
    }

    /// The submitter, for registration calls.
    pub fn submitter(&self) -> &io_uring::Submitter<'a> {
        &self.submitter
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

    /// One `io_uring_enter` that submits everything queued and waits for at least `want`
    /// completions or `timeout`. Interruptions, timeouts and a busy CQ are not errors.
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
        let r = match timeout {
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.submitter.submit_with_args(want, &args)
            }
            None => self.submitter.submit_and_wait(want),
        };
        self.sq.sync();
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

/// A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19): `count` buffers of `size`
/// bytes that the kernel picks from for buffer-select receives, so an idle connection owns no
/// read buffer at all.
///
/// Invariants this type keeps:
/// * the ring entries live in a page-aligned anonymous mapping and the buffers in one heap
///   allocation; both stay at the same address until `Drop`, which unregisters the group first;
/// * a buffer id the kernel handed out (in a CQE) is not given back to the kernel until the
///   owner calls [`BufRing::recycle`], so its bytes stay put while being read.
pub struct BufRing {
    entries: NonNull<types::BufRingEntry>,
    map_len: usize,
    count: u16,
    mask: u16,
    size: u32,
    bufs: Box<[u8]>,
    bgid: u16,
    tail: u16,
    /// For bundles: the ring position each buffer id was last published at, and the buffer id
    /// published at each ring slot. The kernel takes buffers strictly in ring order, so a bundle
    /// that starts with buffer `b` continues with the ids published after `b`'s position.
    pos_of: Box<[u16]>,
    bid_at: Box<[u16]>,
    /// Incremental consumption (`IOU_PBUF_RING_INC`): how far into each buffer the kernel has
    /// filled it so far.
    incremental: bool,
    filled: Box<[u32]>,
}

/// `IOU_PBUF_RING_INC` (Linux 6.12): buffers are consumed incrementally.
pub const PBUF_RING_INC: u16 = 2;

impl BufRing {
    /// Allocate `count` (a power of two, ≤ 32768) buffers of `size` bytes and register them as
    /// buffer group `bgid` with `ring`.
    pub fn new(
        submitter: &io_uring::Submitter<'_>,
        bgid: u16,
        count: u16,
        size: u32,
    ) -> io::Result<BufRing> {
        Self::with_flags(submitter, bgid, count, size, 0)
    }

    /// As [`BufRing::new`], with registration flags (`0` or [`PBUF_RING_INC`]).
    pub fn with_flags(
        submitter: &io_uring::Submitter<'_>,
        bgid: u16,
        count: u16,
        size: u32,
        flags: u16,
    ) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two no larger than 32768",
            ));
        }
        let map_len = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: an anonymous private mapping with no address hint aliases nothing; it is
        // unmapped only in `Drop`.
        let addr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                map_len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        }?;
        let entries = NonNull::new(addr.cast::<types::BufRingEntry>())
            .ok_or_else(|| io::Error::other("mmap returned null"))?;
        let bufs = vec![0u8; usize::from(count) * size as usize].into_boxed_slice();
        let mut br = BufRing {
            entries,
            map_len,
            count,
            mask: count - 1,
            size,
            bufs,
            bgid,
            tail: 0,
            pos_of: vec![0; usize::from(count)].into_boxed_slice(),
            bid_at: vec![0; usize::from(count)].into_boxed_slice(),
            incremental: flags & PBUF_RING_INC != 0,
            filled: vec![0; usize::from(count)].into_boxed_slice(),
        };
        // SAFETY: the mapping holds `count` entries and lives until `Drop` unregisters the group
        // (or the ring is destroyed first, which also drops the kernel's reference).
        unsafe {
            submitter.register_buf_ring_with_flags(addr as u64, count, bgid, flags)?;
        }
        for bid in 0..count {
            br.add(bid);
        }
        br.publish();
        Ok(br)
    }

    /// The buffer group id.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// Buffer size in bytes.
    pub fn buf_size(&self) -> u32 {
        self.size
    }

    /// Number of buffers.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// The first `len` bytes of buffer `bid`, as the kernel filled them.
    pub fn get(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid & self.mask) * self.size as usize;
        let len = len.min(self.size as usize);
        &self.bufs[start..start + len]
    }

    /// The bytes of one completion that selected buffer `bid` (from its flags) with result
    /// `len`, as `(buffer id, bytes)` pieces in order, appended to `out`:
    /// * plain: the first `len` bytes of `bid`;
    /// * bundle (`bundle`): `len` bytes spread over `bid` and the buffers published after it,
    ///   each full but the last;
    /// * incremental: the next `len` bytes of `bid` after what earlier completions filled.
    ///
    /// `done` is false only for an incremental buffer the kernel goes on filling
    /// (`IORING_CQE_F_BUF_MORE`); every id appended with `done` true must be given back with
    /// [`BufRing::recycle`] once its bytes are consumed, and only then.
    pub fn pieces(&mut self, bid: u16, len: usize, bundle: bool, more: bool, out: &mut Vec<Piece>) {
        let size = self.size as usize;
        let bid = bid & self.mask;
        if self.incremental {
            let start = self.filled[usize::from(bid)] as usize;
            let n = len.min(size.saturating_sub(start));
            out.push(Piece {
                bid,
                start,
                len: n,
                done: !more,
            });
            self.filled[usize::from(bid)] = if more { (start + n) as u32 } else { 0 };
            return;
        }
        if !bundle {
            out.push(Piece {
                bid,
                start: 0,
                len: len.min(size),
                done: true,
            });
            return;
        }
        let mut pos = self.pos_of[usize::from(bid)];
        let mut left = len;
        let mut first = true;
        // At most `count` buffers can be in one completion.
        for _ in 0..self.count {
            if left == 0 && !first {
                break;
            }
            first = false;
            let id = self.bid_at[usize::from(pos & self.mask)];
            let n = left.min(size);
            out.push(Piece {
                bid: id,
                start: 0,
                len: n,
                done: true,
            });
            left -= n;
            pos = pos.wrapping_add(1);
        }
    }

    /// The bytes of a piece made by [`BufRing::pieces`].
    pub fn piece(&self, p: &Piece) -> &[u8] {
        let start = usize::from(p.bid & self.mask) * self.size as usize + p.start;
        &self.bufs[start..start + p.len]
    }

    fn add(&mut self, bid: u16) {
        let idx = usize::from(self.tail & self.mask);
        self.pos_of[usize::from(bid & self.mask)] = self.tail;
        self.bid_at[idx] = bid;
        let addr = self.bufs.as_ptr() as u64 + u64::from(bid) * u64::from(self.size);
        // SAFETY: `idx < count`, so the entry lies inside the mapping; the kernel reads entries
        // only between the old and the new published tail, and this slot is past the published
        // tail until `publish`.
        let e = unsafe { &mut *self.entries.as_ptr().add(idx) };
        e.set_addr(addr);
        e.set_len(self.size);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&mut self) {
        // SAFETY: the tail field overlays the first entry's reserved bytes inside the mapping,
        // is 2-byte aligned, and is shared with the kernel only through atomic accesses.
        let tail = unsafe {
            &*(types::BufRingEntry::tail(self.entries.as_ptr().cast_const()) as *const AtomicU16)
        };
        tail.store(self.tail, Ordering::Release);
    }

    /// Give buffer `bid` back to the kernel once its bytes have been consumed.
    pub fn recycle(&mut self, bid: u16) {
        self.add(bid);
        self.publish();
    }
}

/// Part of one receive completion's bytes, in one provided buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// Buffer id.
    pub bid: u16,
    /// Offset of the bytes in the buffer.
    pub start: usize,
    /// Number of bytes.
    pub len: usize,
    /// The kernel is done with the buffer: recycle it after reading.
    pub done: bool,
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: the mapping was made in `new` with this length and is not used after this.
        // The kernel pins the ring's pages while the group is registered, so unmapping our view
        // cannot pull memory from under it; the owner unregisters or destroys the ring first.
        unsafe {
            let _ = rustix::mm::munmap(self.entries.as_ptr().cast(), self.map_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch ring, or `None` where io_uring is unavailable (a failure with
    /// RINGLAB_REQUIRE_URING=1).
    fn ring() -> Option<IoUring> {
        match IoUring::new(8) {
            Ok(r) => Some(r),
            Err(e) if std::env::var("RINGLAB_REQUIRE_URING").is_ok_and(|v| v == "1") => {
                panic!("RINGLAB_REQUIRE_URING=1 but io_uring is unavailable: {e}")
            }
            Err(_) => None,
        }
    }

    #[test]
    fn bundle_pieces_follow_ring_order_not_id_order() {
        let Some(ring) = ring() else { return };
        let mut br = BufRing::new(&ring.submitter(), 0, 4, 16).unwrap();
        // Published: positions 0..4 hold ids 0, 1, 2, 3. The kernel takes ids 0 and 1; they come
        // back out of order: id 1 at position 4, id 0 at position 5.
        br.recycle(1);
        br.recycle(0);
        // A bundle of 56 bytes starting with id 2 (position 2) continues with the ids published
        // after it: 3, then 1, then 0 (8 bytes).
        let mut out = Vec::new();
        br.pieces(2, 56, true, false, &mut out);
        let ids: Vec<(u16, usize)> = out.iter().map(|p| (p.bid, p.len)).collect();
        assert_eq!(ids, vec![(2, 16), (3, 16), (1, 16), (0, 8)]);
        assert!(out.iter().all(|p| p.done && p.start == 0));
        // Not a bundle: one piece, whatever follows.
        out.clear();
        br.pieces(2, 10, false, false, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].bid, out[0].len), (2, 10));
    }

    #[test]
    fn incremental_pieces_continue_where_the_last_ended() {
        let Some(ring) = ring() else { return };
        let mut br = match BufRing::with_flags(&ring.submitter(), 0, 4, 64, PBUF_RING_INC) {
            Ok(b) => b,
            // A kernel before 6.12 rejects the unknown INC flag of the PBUF_RING registration
            // with EINVAL: only that skips, and RINGLAB_REQUIRE_URING=1 (CI) makes it fail.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                if std::env::var("RINGLAB_REQUIRE_URING").is_ok_and(|v| v == "1") {
                    panic!("RINGLAB_REQUIRE_URING=1 but IOU_PBUF_RING_INC is refused ({e}): Linux 6.12 needed");
                }
                eprintln!("skipped: IOU_PBUF_RING_INC refused ({e}): a kernel before 6.12");
                return;
            }
            Err(e) => panic!("registering an incremental buffer ring: {e}"),
        };
        let mut out = Vec::new();
        br.pieces(1, 5, false, true, &mut out); // BUF_MORE: the kernel keeps the buffer
        br.pieces(1, 7, false, false, &mut out); // done with it
        br.pieces(1, 3, false, false, &mut out); // reused from the start after recycling
        let got: Vec<(usize, usize, bool)> = out.iter().map(|p| (p.start, p.len, p.done)).collect();
        assert_eq!(got, vec![(0, 5, false), (5, 7, true), (0, 3, true)]);
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
