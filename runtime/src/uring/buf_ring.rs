//! The provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19): buffers the kernel picks
//! from for buffer-select receives, registered for as long as the value lives.

use std::io;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{types, IoUring};

/// `IOU_PBUF_RING_INC` (Linux 6.12): buffers are consumed incrementally.
pub const PBUF_RING_INC: u16 = 2;

/// A provided-buffer ring: `count` buffers of `size` bytes registered as one buffer group, that
/// the kernel picks from for buffer-select receives, so an idle connection owns no read buffer.
///
/// It owns the registration: it borrows the [`IoUring`] the group is registered with (so the
/// ring outlives it), and dropping it unregisters the group (`IORING_UNREGISTER_PBUF_RING`) before
/// the memory is unmapped; after that the kernel picks no buffer from it (a receive still armed
/// on the group completes with `-ENOBUFS`) and the group id is free again.
///
/// # Operations in flight
/// An operation that selects from the group may write into any buffer the ring holds until its
/// final completion has been reaped. Queuing one is `unsafe` ([`super::Ring::push`], io-uring's
/// `SubmissionQueue::push`): the caller promises that this value is not dropped before then,
/// since an operation that has already picked a buffer and is still copying into it (a receive
/// run by an io-wq worker) would write into unmapped memory. An owner that must stop while such
/// operations are still in flight calls [`BufRing::leak`]: the group is unregistered and the
/// memory stays mapped for the rest of the process.
///
/// Invariants this type keeps:
/// * the ring entries and the buffers live in one anonymous mapping owned by this value (entries
///   first, page-aligned as the kernel requires; buffers from the next page), reached only
///   through raw pointers, so nothing in Rust claims the bytes the kernel writes;
/// * each buffer is either the kernel's (published; never read here), being filled
///   incrementally (the bytes before the kernel's fill mark are readable), or handed out by a
///   completion (readable, until [`BufRing::recycle`] gives it back): a buffer is published again
///   only once handed out, so the kernel never holds it twice and never writes bytes being read.
pub struct BufRing<'r> {
    uring: &'r IoUring,
    map: NonNull<u8>,
    map_len: usize,
    /// Offset of buffer 0 in the mapping.
    bufs_at: usize,
    count: u16,
    mask: u16,
    size: u32,
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
    /// Who holds each buffer.
    holder: Box<[Holder]>,
}

/// Who holds a buffer of the ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    /// Published: the kernel may write it at any time.
    Kernel,
    /// Incremental, and the kernel goes on filling it past `filled`.
    Filling,
    /// Handed out by a completion: ours to read until recycled.
    User,
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

impl<'r> BufRing<'r> {
    /// Map `count` (a power of two, ≤ 32768) buffers of `size` bytes and register them with
    /// `uring` as buffer group `bgid`.
    pub fn new(uring: &'r IoUring, bgid: u16, count: u16, size: u32) -> io::Result<BufRing<'r>> {
        Self::with_flags(uring, bgid, count, size, 0)
    }

    /// As [`BufRing::new`], with registration flags (`0` or [`PBUF_RING_INC`]).
    pub fn with_flags(
        uring: &'r IoUring,
        bgid: u16,
        count: u16,
        size: u32,
        flags: u16,
    ) -> io::Result<BufRing<'r>> {
        if !count.is_power_of_two() || count > 32768 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two no larger than 32768",
            ));
        }
        let page = rustix::param::page_size();
        let entries_len = usize::from(count) * std::mem::size_of::<types::BufRingEntry>();
        let bufs_at = entries_len.next_multiple_of(page);
        let map_len = usize::from(count)
            .checked_mul(size as usize)
            .and_then(|b| b.checked_add(bufs_at))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "buffers too large"))?;
        // SAFETY: an anonymous private mapping with no address hint aliases nothing; it is
        // unmapped only by `Drop`, after the group is unregistered.
        let addr = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                map_len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        }?;
        // SAFETY: the mapping holds `count` entries at its page-aligned start and stays mapped
        // until `Drop` has unregistered the group (or for good, after `leak`).
        let registered = unsafe {
            uring
                .submitter()
                .register_buf_ring_with_flags(addr as u64, count, bgid, flags)
        };
        if let Err(e) = registered {
            // SAFETY: the mapping was made above with this length and the kernel never saw it.
            let _ = unsafe { rustix::mm::munmap(addr, map_len) };
            return Err(e);
        }
        let n = usize::from(count);
        let mut br = BufRing {
            uring,
            map: NonNull::new(addr.cast::<u8>()).expect("mmap succeeded, so not null"),
            map_len,
            bufs_at,
            count,
            mask: count - 1,
            size,
            bgid,
            tail: 0,
            pos_of: vec![0; n].into_boxed_slice(),
            bid_at: vec![0; n].into_boxed_slice(),
            incremental: flags & PBUF_RING_INC != 0,
            filled: vec![0; n].into_boxed_slice(),
            holder: vec![Holder::Kernel; n].into_boxed_slice(),
        };
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

    /// The first `len` bytes of buffer `bid`, handed out by a plain completion (not a bundle,
    /// not an incremental ring); give `bid` back with [`BufRing::recycle`] once they are read.
    ///
    /// # Safety
    /// `bid` and `len` are the buffer id (from the flags) and the result of a completion of an
    /// operation that selected from this group, and that completion is reported here (or to
    /// [`BufRing::pieces`] or [`BufRing::discard`]) only once: the kernel is done writing it.
    pub unsafe fn get(&mut self, bid: u16, len: usize) -> &[u8] {
        assert!(
            !self.incremental,
            "an incremental ring's bytes come in pieces"
        );
        let bid = bid & self.mask;
        self.hand_out(bid, Holder::User);
        self.bytes(bid, 0, len.min(self.size as usize))
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
    /// [`BufRing::recycle`] once its bytes are read, and only then.
    ///
    /// # Safety
    /// `bid`, `len`, `bundle` and `more` describe a completion of an operation that selected from
    /// this group (its buffer id, its result, whether the operation was a bundle, and
    /// `IORING_CQE_F_BUF_MORE`), and that completion is reported here only once.
    pub unsafe fn pieces(
        &mut self,
        bid: u16,
        len: usize,
        bundle: bool,
        more: bool,
        out: &mut Vec<Piece>,
    ) {
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
            self.hand_out(bid, if more { Holder::Filling } else { Holder::User });
            return;
        }
        if !bundle {
            out.push(Piece {
                bid,
                start: 0,
                len: len.min(size),
                done: true,
            });
            self.hand_out(bid, Holder::User);
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
            self.hand_out(id, Holder::User);
            left -= n;
            pos = pos.wrapping_add(1);
        }
    }

    /// Give back the buffers of a completion whose bytes nobody reads (its connection is gone,
    /// or the loop is stopping), but none the kernel goes on filling.
    ///
    /// # Safety
    /// As for [`BufRing::pieces`].
    pub unsafe fn discard(&mut self, bid: u16, len: usize, bundle: bool, more: bool) {
        let mut out = Vec::new();
        // SAFETY: the caller's promise, passed on.
        unsafe { self.pieces(bid, len, bundle, more, &mut out) };
        for p in out.iter().filter(|p| p.done) {
            self.recycle(p.bid);
        }
    }

    /// The bytes of a piece made by [`BufRing::pieces`].
    ///
    /// Panics if the piece's buffer has been given back since (the kernel may be writing it).
    pub fn piece(&self, p: &Piece) -> &[u8] {
        let bid = p.bid & self.mask;
        let end = p.start.saturating_add(p.len);
        let readable = match self.holder[usize::from(bid)] {
            Holder::User => end <= self.size as usize,
            Holder::Filling => end <= self.filled[usize::from(bid)] as usize,
            Holder::Kernel => false,
        };
        assert!(readable, "piece {p:?} is not in a buffer handed out to us");
        self.bytes(bid, p.start, p.len)
    }

    /// Give buffer `bid` back to the kernel once its bytes have been read.
    ///
    /// Panics if the buffer was not handed out by a completion or was given back already:
    /// publishing it twice would let the kernel fill it for two receives at once.
    pub fn recycle(&mut self, bid: u16) {
        let bid = bid & self.mask;
        let h = &mut self.holder[usize::from(bid)];
        assert!(
            *h == Holder::User,
            "buffer {bid} given back while {h:?} holds it"
        );
        *h = Holder::Kernel;
        self.add(bid);
        self.publish();
    }

    /// Unregister the group but keep its memory mapped for the rest of the process: for an owner
    /// that stops while operations that selected from the group may still be in flight.
    pub fn leak(self) {
        let _ = self.uring.submitter().unregister_buf_ring(self.bgid);
        std::mem::forget(self);
    }

    /// Record that a completion handed buffer `bid` out.
    fn hand_out(&mut self, bid: u16, to: Holder) {
        let h = &mut self.holder[usize::from(bid)];
        assert!(
            *h != Holder::User,
            "buffer {bid} reported by a completion while already handed out"
        );
        *h = to;
    }

    /// `len` bytes of buffer `bid` (masked) from `start`, which the caller checked are ours.
    fn bytes(&self, bid: u16, start: usize, len: usize) -> &[u8] {
        let size = self.size as usize;
        assert!(start.saturating_add(len) <= size);
        let at = self.bufs_at + usize::from(bid) * size + start;
        // SAFETY: `bid < count` and `start + len <= size`, so the bytes lie inside the mapping,
        // which lives as long as `self`; they belong to a buffer the kernel handed out (or the
        // prefix it has filled so far), which it does not write until `recycle` republishes it,
        // and `recycle` needs `&mut self`, so not while this borrow lives.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(at), len) }
    }

    fn add(&mut self, bid: u16) {
        let idx = usize::from(self.tail & self.mask);
        self.pos_of[usize::from(bid)] = self.tail;
        self.bid_at[idx] = bid;
        let addr =
            self.map.as_ptr() as u64 + self.bufs_at as u64 + u64::from(bid) * u64::from(self.size);
        // SAFETY: `idx < count`, so the entry lies inside the mapping's entry area; the kernel
        // reads entries only between the old and the new published tail, and this slot is past
        // the published tail until `publish`.
        let e = unsafe { &mut *self.map.as_ptr().cast::<types::BufRingEntry>().add(idx) };
        e.set_addr(addr);
        e.set_len(self.size);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&mut self) {
        let entries = self.map.as_ptr().cast::<types::BufRingEntry>().cast_const();
        // SAFETY: the tail field overlays the first entry's reserved bytes inside the mapping,
        // is 2-byte aligned, and is shared with the kernel only through atomic accesses.
        let tail = unsafe { &*(types::BufRingEntry::tail(entries) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
    }
}

impl Drop for BufRing<'_> {
    fn drop(&mut self) {
        // Unregister first, so the kernel picks no buffer from memory about to be unmapped; if
        // the kernel refuses (it cannot while the ring lives), leak the memory instead.
        if self
            .uring
            .submitter()
            .unregister_buf_ring(self.bgid)
            .is_ok()
        {
            // SAFETY: the mapping was made in `with_flags` with this length; the kernel no longer
            // references it (the group is unregistered), and every borrow of its bytes borrows
            // `self`, which is going away.
            let _ = unsafe { rustix::mm::munmap(self.map.as_ptr().cast(), self.map_len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::panic::{catch_unwind, AssertUnwindSafe};

    use io_uring::{cqueue, opcode};

    use super::*;
    use crate::stats::SyscallCounters;
    use crate::uring::tests::{loop_ring, ring};
    use crate::uring::{Ring, RingConfig};

    /// Take `bid` as a plain completion of `len` bytes would hand it out.
    fn take(br: &mut BufRing<'_>, bid: u16, len: usize) {
        // SAFETY: nothing was submitted on this ring, so no operation writes any buffer.
        unsafe { br.pieces(bid, len, false, false, &mut Vec::new()) };
    }

    #[test]
    fn dropping_unregisters_the_group() {
        let Some(ring) = ring() else { return };
        let first = BufRing::new(&ring, 3, 4, 16).unwrap();
        // While it lives, the group id is taken.
        let twice = BufRing::new(&ring, 3, 4, 16).map(drop).unwrap_err();
        assert_eq!(
            twice.raw_os_error(),
            Some(rustix::io::Errno::EXIST.raw_os_error())
        );
        drop(first);
        // Dropped: the kernel let go of the group, so the id can be registered again.
        let again = BufRing::new(&ring, 3, 4, 16).expect("group 3 is free after drop");
        again.leak();
        BufRing::new(&ring, 3, 4, 16).expect("group 3 is free after leak");
    }

    #[test]
    fn a_leaked_group_hands_out_no_more_buffers() {
        let Some(mut uring) = loop_ring() else { return };
        let mut ring = Ring::new(&mut uring, &RingConfig::default()).unwrap();
        let br = BufRing::new(ring.uring(), 5, 4, 16).unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut sc = SyscallCounters::default();
        let e = opcode::RecvMulti::new(types::Fd(b.as_raw_fd()), 5).build();
        // SAFETY: `b` outlives the operation (its final completion is reaped below) and the
        // group's memory is never unmapped (leaked below) while it is armed.
        unsafe { ring.push(e.user_data(1), &mut sc) };
        ring.submit_and_wait(0, None, &mut sc).unwrap();
        br.leak();
        a.write_all(b"hello").unwrap();
        let mut cqes = Vec::new();
        while cqes.is_empty() {
            ring.submit_and_wait(1, None, &mut sc).unwrap();
            ring.reap(&mut cqes);
        }
        assert_eq!(cqes[0].result(), -rustix::io::Errno::NOBUFS.raw_os_error());
        assert!(!cqueue::more(cqes[0].flags()));
    }

    #[test]
    fn the_kernel_fills_the_mapped_buffers() {
        let Some(mut uring) = loop_ring() else { return };
        let mut ring = Ring::new(&mut uring, &RingConfig::default()).unwrap();
        let mut br = BufRing::new(ring.uring(), 0, 4, 8).unwrap();
        let (mut a, b) = UnixStream::pair().unwrap();
        let mut sc = SyscallCounters::default();
        let e = opcode::RecvMulti::new(types::Fd(b.as_raw_fd()), 0).build();
        // SAFETY: `b` and `br` outlive the operation: its final completion (end of stream) is
        // reaped below, before either is dropped.
        unsafe { ring.push(e.user_data(1), &mut sc) };
        let mut got = Vec::new();
        let mut cqes = Vec::new();
        let mut pieces = Vec::new();
        // Twice as many bytes as the ring holds: buffers must come back to be used again.
        for chunk in [&b"0123456789abcdef"[..], b"ghijklmnopqrstuv"] {
            a.write_all(chunk).unwrap();
            let want = got.len() + chunk.len();
            while got.len() < want {
                ring.submit_and_wait(1, None, &mut sc).unwrap();
                ring.reap(&mut cqes);
                for cqe in cqes.drain(..) {
                    let bid = cqueue::buffer_select(cqe.flags()).expect("a buffer");
                    let n = usize::try_from(cqe.result()).expect("bytes");
                    pieces.clear();
                    // SAFETY: a completion of the recv on this group, reported once.
                    unsafe { br.pieces(bid, n, false, false, &mut pieces) };
                    for p in &pieces {
                        got.extend_from_slice(br.piece(p));
                    }
                    for p in &pieces {
                        br.recycle(p.bid);
                    }
                }
            }
        }
        assert_eq!(got, b"0123456789abcdefghijklmnopqrstuv");
        drop(a);
        loop {
            ring.submit_and_wait(1, None, &mut sc).unwrap();
            ring.reap(&mut cqes);
            if cqes.iter().any(|c| !cqueue::more(c.flags())) {
                break;
            }
        }
    }

    #[test]
    fn misuse_panics_instead_of_sharing_a_buffer_with_the_kernel() {
        let Some(ring) = ring() else { return };
        let mut br = BufRing::new(&ring, 0, 4, 16).unwrap();
        // Never handed out: giving it back would publish it twice.
        assert!(catch_unwind(AssertUnwindSafe(|| br.recycle(2))).is_err());
        take(&mut br, 2, 10);
        let mut out = Vec::new();
        // SAFETY: as in `take`.
        unsafe { br.pieces(1, 4, false, false, &mut out) };
        assert_eq!(br.piece(&out[0]).len(), 4);
        br.recycle(2);
        br.recycle(1);
        // Given back already: twice is refused, and so is reading it.
        assert!(catch_unwind(AssertUnwindSafe(|| br.recycle(2))).is_err());
        assert!(catch_unwind(AssertUnwindSafe(|| br.piece(&out[0]).len())).is_err());
    }

    #[test]
    fn bundle_pieces_follow_ring_order_not_id_order() {
        let Some(ring) = ring() else { return };
        let mut br = BufRing::new(&ring, 0, 4, 16).unwrap();
        // Published: positions 0..4 hold ids 0, 1, 2, 3. The kernel takes ids 0 and 1; they come
        // back out of order: id 1 at position 4, id 0 at position 5.
        take(&mut br, 0, 16);
        take(&mut br, 1, 16);
        br.recycle(1);
        br.recycle(0);
        // A bundle of 56 bytes starting with id 2 (position 2) continues with the ids published
        // after it: 3, then 1, then 0 (8 bytes).
        let mut out = Vec::new();
        // SAFETY: nothing was submitted on this ring, so no operation writes any buffer.
        unsafe { br.pieces(2, 56, true, false, &mut out) };
        let ids: Vec<(u16, usize)> = out.iter().map(|p| (p.bid, p.len)).collect();
        assert_eq!(ids, vec![(2, 16), (3, 16), (1, 16), (0, 8)]);
        assert!(out.iter().all(|p| p.done && p.start == 0));
        for p in &out {
            br.recycle(p.bid);
        }
        // Not a bundle: one piece, whatever follows.
        out.clear();
        // SAFETY: as above.
        unsafe { br.pieces(2, 10, false, false, &mut out) };
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].bid, out[0].len), (2, 10));
    }

    #[test]
    fn incremental_pieces_continue_where_the_last_ended() {
        let Some(ring) = ring() else { return };
        let mut br = match BufRing::with_flags(&ring, 0, 4, 64, PBUF_RING_INC) {
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
        // SAFETY: nothing was submitted on this ring, so no operation writes any buffer.
        unsafe {
            br.pieces(1, 5, false, true, &mut out); // BUF_MORE: the kernel keeps the buffer
        }
        // The part filled so far is readable, but the buffer is not ours to give back.
        assert_eq!(br.piece(&out[0]).len(), 5);
        assert!(catch_unwind(AssertUnwindSafe(|| br.recycle(1))).is_err());
        // SAFETY: as above.
        unsafe { br.pieces(1, 7, false, false, &mut out) }; // done with it
        br.recycle(1);
        // SAFETY: as above.
        unsafe { br.pieces(1, 3, false, false, &mut out) }; // reused from the start
        let got: Vec<(usize, usize, bool)> = out.iter().map(|p| (p.start, p.len, p.done)).collect();
        assert_eq!(got, vec![(0, 5, false), (5, 7, true), (0, 3, true)]);
    }
}
