//! The io_uring operation ledger: which operations are in flight, on which slot, holding which
//! buffer, so that nothing the kernel may still use is ever freed or reused.
//!
//! One ledger per ring, shared by the server's uring backend and the client's uring driver:
//!
//! * slots with generations ([`Slab`]): user data names (op, generation, slot), and a completion
//!   for a slot that was freed and reused meanwhile reaches nobody;
//! * operations in flight per slot and per ring: every push counts, every final completion (no
//!   `IORING_CQE_F_MORE`) settles; a slot leaves the ledger only when its close completes, and
//!   its close is submitted only when nothing else is in flight on it;
//! * cancel-then-close ([`Ledger::close`]): a slot with operations in flight first cancels every
//!   operation on its socket, then closes it once they have all completed. The cancels name the
//!   operations by their user data, one per op code in flight, not by descriptor: the kernel
//!   finds a user-data cancel in one bucket of its cancel hash, but a descriptor cancel walks
//!   every armed poll of the ring (at 10,000 connections a close cost the client ~30% of its
//!   CPU in `io_cancel_req_match`, and the drain at the end of a run took a second);
//! * lent buffers ([`Ledger::push_lent`]): an operation that borrows a buffer beyond its result
//!   (`IORING_OP_SEND_ZC`, whose buffer the kernel reads until its notification) gets its own
//!   identity in the user data, so a notification frees exactly the buffer it names, in
//!   whatever order the kernel posts them;
//! * drain or leak at exit ([`Ledger::finish`]): cancel everything, wait a bounded time, and leak
//!   what never completed rather than free memory the kernel may still touch.
//!
//! Op codes from [`FIRST_RESERVED_OP`] up are the ledger's own; a user's op codes are below.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, squeue, types};

use crate::slab::Slab;
use crate::stats::SyscallCounters;
use crate::uring::{BufRing, Ring, UserData};

/// The first op code the ledger reserves for itself; users' op codes must be below it.
pub const FIRST_RESERVED_OP: u8 = 0xF0;
/// The close of a slot's socket.
pub const OP_CLOSE: u8 = 0xF0;
/// A cancel of operations on a slot's socket, before its close (by user data or descriptor).
pub const OP_CANCEL_FD: u8 = 0xF1;
/// The cancel of everything on the ring, at exit.
pub const OP_CANCEL_ANY: u8 = 0xF2;
/// An operation that holds a lent buffer until its last completion (a zero-copy send). Its
/// completions reach the user as [`Done::Op`] with this op code and the owner's slot.
pub const OP_LENT: u8 = 0xF3;
/// The slot of an operation on no slot (a listener, a waker).
pub const NO_SLOT: u32 = u32::MAX;

/// `IORING_CQE_F_MORE`.
const F_MORE: u32 = 1 << 1;

/// How long [`Ledger::finish`] waits for the cancelled operations to complete.
pub const FINISH_WAIT: Duration = Duration::from_secs(2);

/// User data for `op` on `slot` of generation `gen`.
pub fn user_data(op: u8, slot: u32, gen: u32) -> u64 {
    UserData { op, gen, slot }.encode()
}

/// How operations name a socket: a descriptor, or an index in the ring's fixed-file table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Sock {
    Fd(RawFd),
    Fixed(u32),
}

/// Build an entry for a [`Sock`], with `$t` bound to `types::Fd` or `types::Fixed` (the io-uring
/// crate takes either, but its target type is private, so the choice is made by this macro).
#[macro_export]
macro_rules! on_sock {
    ($sock:expr, |$t:ident| $build:expr) => {
        match $sock {
            $crate::ledger::Sock::Fd(fd) => {
                let $t = ::io_uring::types::Fd(fd);
                $build
            }
            $crate::ledger::Sock::Fixed(i) => {
                let $t = ::io_uring::types::Fixed(i);
                $build
            }
        }
    };
}

/// What a slot's value tells the ledger about its socket.
pub trait SlotSock {
    /// How operations name the socket.
    fn sock(&self) -> Sock;
    /// Give the socket up to the ring's close: from now on nothing else may close it (an
    /// `OwnedFd` is turned into a raw descriptor here).
    fn release(&mut self) -> Sock;
}

/// Where entries go: the ring (or, in tests, a list).
pub trait Submit {
    /// Queue `entry`.
    ///
    /// # Safety
    /// As [`Ring::push`]: every buffer and descriptor `entry` refers to stays valid until its
    /// last completion has been reaped.
    unsafe fn submit(&mut self, entry: squeue::Entry, counters: &mut SyscallCounters);
}

impl Submit for Ring<'_> {
    unsafe fn submit(&mut self, entry: squeue::Entry, counters: &mut SyscallCounters) {
        // SAFETY: the caller's contract is `Ring::push`'s.
        unsafe { self.push(entry, counters) }
    }
}

/// Op codes below this are counted per code on each slot, so that a close can cancel them by
/// user data; an operation of a higher code (or a lent one) makes the close cancel by
/// descriptor instead.
const COUNTED_OPS: usize = 16;

struct Entry<T> {
    value: T,
    /// Operations in flight on this slot (a multishot counts once, until its final completion).
    inflight: u32,
    /// Of those, the user's operations per op code (below [`COUNTED_OPS`]).
    by_op: [u8; COUNTED_OPS],
    /// Of those, the user's operations not counted in `by_op` (a higher op code, a lent buffer,
    /// or a count past 255).
    uncounted: u32,
    cancel_sent: bool,
    closing: bool,
}

impl<T> Entry<T> {
    fn new(value: T) -> Self {
        Entry {
            value,
            inflight: 0,
            by_op: [0; COUNTED_OPS],
            uncounted: 0,
            cancel_sent: false,
            closing: false,
        }
    }

    /// One more user operation of code `op` (`None`: a lent one) in flight.
    fn count(&mut self, op: Option<u8>) {
        self.inflight += 1;
        match op.and_then(|o| self.by_op.get_mut(usize::from(o))) {
            Some(n) if *n < u8::MAX => *n += 1,
            _ => self.uncounted += 1,
        }
    }

    /// One user operation of code `op` (`None`: a lent one) over.
    fn uncount(&mut self, op: Option<u8>) {
        self.inflight -= 1;
        match op.and_then(|o| self.by_op.get_mut(usize::from(o))) {
            Some(n) if *n > 0 => *n -= 1,
            _ => self.uncounted = self.uncounted.saturating_sub(1),
        }
    }
}

/// What a close's cancel names.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CancelKey {
    /// Every operation with this user data (`IORING_ASYNC_CANCEL_ALL`): a lookup in the
    /// kernel's cancel hash.
    UserData(u64),
    /// Every operation on this socket (`IORING_ASYNC_CANCEL_FD | _ALL`): a walk over every
    /// armed poll of the ring.
    Sock(Sock),
}

impl CancelKey {
    fn entry(self) -> squeue::Entry {
        match self {
            CancelKey::UserData(ud) => {
                opcode::AsyncCancel2::new(types::CancelBuilder::user_data(ud).all()).build()
            }
            CancelKey::Sock(s) => on_sock!(s, |t| opcode::AsyncCancel2::new(
                types::CancelBuilder::fd(t).all()
            )
            .build()),
        }
    }
}

/// A buffer lent to the kernel by one operation of slot `(slot, gen)`.
struct Lent<B> {
    slot: u32,
    gen: u32,
    _buf: B,
}

/// A completion, after the ledger has done its bookkeeping.
#[derive(Debug)]
pub enum Done<T> {
    /// A completion of the user's operation `ud.op` (or of [`OP_LENT`], with the owner's slot
    /// and generation in `ud`). The slot may be gone (`Ledger::get` says so): then only give
    /// back what the completion carries (a provided buffer, an accepted socket).
    Op {
        ud: UserData,
        res: i32,
        flags: u32,
        more: bool,
    },
    /// A lent buffer was given back (a zero-copy notification); `res` is the notification's.
    Returned { slot: u32, res: i32 },
    /// An internal operation on `slot` completed: look at the slot again.
    Pump(u32),
    /// The slot's close completed; the slot is free and its value is returned.
    Closed(T),
    /// Nothing for the user.
    Nothing,
}

/// The ledger of one ring: slots of `T` and buffers of type `B` lent to the kernel.
pub struct Ledger<T, B> {
    slots: Slab<Entry<T>>,
    lent: Slab<Lent<B>>,
    ops: u64,
    /// Op codes (bits, below [`COUNTED_OPS`]) that do not act on the slot's socket: a close
    /// waits for them but does not cancel them.
    off_socket: u16,
}

impl<T, B> Default for Ledger<T, B> {
    fn default() -> Self {
        Ledger {
            slots: Slab::default(),
            lent: Slab::default(),
            ops: 0,
            off_socket: 0,
        }
    }
}

impl<T: SlotSock, B> Ledger<T, B> {
    /// Store `value` in a new slot; returns its (slot, generation).
    pub fn insert(&mut self, value: T) -> (u32, u32) {
        self.slots.insert(Entry::new(value))
    }

    /// Declare op codes whose operations act on something else than the slot's socket (a file
    /// the connection reads): [`Ledger::close`] waits for them without cancelling them.
    pub fn off_socket(mut self, ops: &[u8]) -> Self {
        for &op in ops {
            assert!(
                usize::from(op) < COUNTED_OPS,
                "op code {op} is not counted per code"
            );
            self.off_socket |= 1 << op;
        }
        self
    }

    /// The value of `slot` if it is still of generation `gen`.
    pub fn get(&mut self, slot: u32, gen: u32) -> Option<&mut T> {
        self.slots.get(slot, gen).map(|e| &mut e.value)
    }

    /// The value of `slot` and its generation, unless the slot is free or closing.
    pub fn open(&mut self, slot: u32) -> Option<(u32, &mut T)> {
        match self.slots.get_slot(slot) {
            Some((gen, e)) if !e.closing => Some((gen, &mut e.value)),
            _ => None,
        }
    }

    /// The value of `slot` and its generation, closing or not.
    pub fn get_slot(&mut self, slot: u32) -> Option<(u32, &mut T)> {
        self.slots.get_slot(slot).map(|(g, e)| (g, &mut e.value))
    }

    /// Slots in use (closing ones included).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether no slot is in use.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// One past the highest slot ever used.
    pub fn capacity_slots(&self) -> u32 {
        self.slots.capacity_slots()
    }

    /// Operations in flight on the whole ring.
    pub fn ops(&self) -> u64 {
        self.ops
    }

    /// Operations in flight on `slot` (0 for a free slot).
    pub fn inflight(&mut self, slot: u32) -> u32 {
        self.slots.get_slot(slot).map_or(0, |(_, e)| e.inflight)
    }

    /// Buffers lent to the kernel by operations of `slot` (of generation `gen`).
    pub fn lent_by(&mut self, slot: u32, gen: u32) -> usize {
        (0..self.lent.capacity_slots())
            .filter(|&i| {
                self.lent
                    .get_slot(i)
                    .is_some_and(|(_, l)| (l.slot, l.gen) == (slot, gen))
            })
            .count()
    }

    /// Queue an operation on no slot (tagged `op` with [`NO_SLOT`]).
    ///
    /// # Safety
    /// As [`Submit::submit`].
    pub unsafe fn push(
        &mut self,
        sq: &mut impl Submit,
        op: u8,
        e: squeue::Entry,
        sc: &mut SyscallCounters,
    ) {
        self.ops += 1;
        // SAFETY: the caller's contract.
        unsafe { sq.submit(e.user_data(user_data(op, NO_SLOT, 0)), sc) };
    }

    /// Queue an operation on no slot, tagged `op` with [`NO_SLOT`] and `tag` in the generation
    /// field (which the completion's [`UserData::gen`] gives back: e.g. which of several rings
    /// an eventfd poll watches).
    ///
    /// # Safety
    /// As [`Submit::submit`].
    pub unsafe fn push_tagged(
        &mut self,
        sq: &mut impl Submit,
        op: u8,
        tag: u32,
        e: squeue::Entry,
        sc: &mut SyscallCounters,
    ) {
        self.ops += 1;
        // SAFETY: the caller's contract.
        unsafe { sq.submit(e.user_data(user_data(op, NO_SLOT, tag)), sc) };
    }

    /// Queue operation `op` on `slot`; it counts as in flight on the slot until its final
    /// completion, and the slot is not freed before. Returns false (and queues nothing) if the
    /// slot is free.
    ///
    /// # Safety
    /// As [`Submit::submit`]; resources owned by the slot's value qualify (the value lives until
    /// the slot's close completes, which waits for every operation on it).
    pub unsafe fn push_for(
        &mut self,
        sq: &mut impl Submit,
        slot: u32,
        op: u8,
        e: squeue::Entry,
        sc: &mut SyscallCounters,
    ) -> bool {
        debug_assert!(op < FIRST_RESERVED_OP, "op code {op:#x} is reserved");
        let Some((gen, entry)) = self.slots.get_slot(slot) else {
            return false;
        };
        entry.count(Some(op));
        self.ops += 1;
        // SAFETY: the caller's contract.
        unsafe { sq.submit(e.user_data(user_data(op, slot, gen)), sc) };
        true
    }

    /// Queue an operation of `slot` that reads `buf` until its last completion (a zero-copy
    /// send: the result, then a notification). The buffer is held under the operation's own
    /// identity and dropped at exactly that operation's last completion. Returns false (and
    /// queues nothing) if the slot is free.
    ///
    /// # Safety
    /// As [`Ledger::push_for`]; `e` may point into `buf` (which must not move when moved, as
    /// `Bytes` and boxed slices do not).
    pub unsafe fn push_lent(
        &mut self,
        sq: &mut impl Submit,
        slot: u32,
        buf: B,
        e: squeue::Entry,
        sc: &mut SyscallCounters,
    ) -> bool {
        let Some((gen, entry)) = self.slots.get_slot(slot) else {
            return false;
        };
        entry.count(None);
        self.ops += 1;
        let (lslot, lgen) = self.lent.insert(Lent {
            slot,
            gen,
            _buf: buf,
        });
        // SAFETY: the caller's contract; the buffer stays in `lent` until the last completion.
        unsafe { sq.submit(e.user_data(user_data(OP_LENT, lslot, lgen)), sc) };
        true
    }

    /// Cancel-then-close: with operations in flight on `slot`, cancel every one on its socket
    /// (once) and return false; with none, give the socket up to a ring close and return true.
    /// The slot is freed when the close completes ([`Done::Closed`]).
    pub fn close(&mut self, sq: &mut impl Submit, slot: u32, sc: &mut SyscallCounters) -> bool {
        let off_socket = self.off_socket;
        let Some((gen, entry)) = self.slots.get_slot(slot) else {
            return false;
        };
        if entry.closing {
            return true;
        }
        if entry.inflight > 0 {
            if !entry.cancel_sent {
                entry.cancel_sent = true;
                for key in cancel_keys(entry, slot, gen, off_socket) {
                    entry.inflight += 1;
                    self.ops += 1;
                    let e = key.entry();
                    // SAFETY: a cancel refers to no memory (the key is a value in the entry);
                    // a descriptor it names is the slot's, open until the slot's close.
                    unsafe { sq.submit(e.user_data(user_data(OP_CANCEL_FD, slot, gen)), sc) };
                }
            }
            return false;
        }
        entry.closing = true;
        entry.inflight += 1;
        self.ops += 1;
        let sock = entry.value.release();
        let e = on_sock!(sock, |t| opcode::Close::new(t).build());
        // SAFETY: a close refers to no memory; the socket was given up to it by `release`.
        unsafe { sq.submit(e.user_data(user_data(OP_CLOSE, slot, gen)), sc) };
        true
    }

    /// Close a socket that belongs to no slot (a fixed file accepted too late).
    pub fn close_unowned(&mut self, sq: &mut impl Submit, sock: Sock, sc: &mut SyscallCounters) {
        self.ops += 1;
        let e = on_sock!(sock, |t| opcode::Close::new(t).build());
        // SAFETY: a close refers to no memory; the caller owns `sock` and gives it up here.
        unsafe { sq.submit(e.user_data(user_data(OP_CLOSE, NO_SLOT, 0)), sc) };
    }

    /// One operation on `(slot, gen)` is over: the user's of code `op` (`None`: a lent one),
    /// or the ledger's own (`internal`).
    fn settle(&mut self, slot: u32, gen: u32, op: Option<u8>, internal: bool) {
        if let Some(e) = self.slots.get(slot, gen) {
            if internal {
                e.inflight -= 1;
            } else {
                e.uncount(op);
            }
        }
    }

    /// Book a completion and say what it means for the user.
    pub fn complete(&mut self, ud: u64, res: i32, flags: u32) -> Done<T> {
        let u = UserData::decode(ud);
        let more = flags & F_MORE != 0;
        if !more {
            self.ops -= 1;
        }
        match u.op {
            OP_LENT => {
                let Some(l) = self.lent.get(u.slot, u.gen) else {
                    return Done::Nothing;
                };
                let (slot, gen) = (l.slot, l.gen);
                if !more {
                    // The kernel is done with the buffer this operation lent: only that one goes.
                    self.lent.remove(u.slot);
                    self.settle(slot, gen, None, false);
                }
                if cqueue::notif(flags) {
                    return match self.slots.get(slot, gen) {
                        Some(_) => Done::Returned { slot, res },
                        None => Done::Nothing,
                    };
                }
                let ud = UserData {
                    op: OP_LENT,
                    gen,
                    slot,
                };
                Done::Op {
                    ud,
                    res,
                    flags,
                    more,
                }
            }
            OP_CLOSE => match self.slots.get(u.slot, u.gen) {
                Some(_) => match self.slots.remove(u.slot) {
                    Some(e) => Done::Closed(e.value),
                    None => Done::Nothing,
                },
                None => Done::Nothing,
            },
            OP_CANCEL_FD => {
                self.settle(u.slot, u.gen, None, true);
                match self.slots.get(u.slot, u.gen) {
                    Some(_) => Done::Pump(u.slot),
                    None => Done::Nothing,
                }
            }
            OP_CANCEL_ANY => Done::Nothing,
            _ => {
                if !more {
                    self.settle(u.slot, u.gen, Some(u.op), false);
                }
                Done::Op {
                    ud: u,
                    res,
                    flags,
                    more,
                }
            }
        }
    }

    /// At exit: cancel everything in flight and wait up to [`FINISH_WAIT`] for it, handing every
    /// completion to `on_cqe` first (to close a socket accepted in the last moment) and giving
    /// the provided buffers completions carry back to their ring's `bufs`. Returns the number of
    /// operations that never completed; then the slots, the lent buffers and the provided-buffer
    /// rings are leaked, never freed: the kernel may still use them. `bundle`: the groups'
    /// receives are bundles (a completion may carry several buffers).
    ///
    /// `rings`: every ring this ledger's operations went to, each with its own provided-buffer
    /// ring. With one, the wait sleeps on it; with several (whose completions the first no
    /// longer hears of once its eventfd polls are cancelled) they are looked at in turn, a
    /// millisecond apart.
    pub fn finish(
        &mut self,
        rings: &mut [(&mut Ring<'_>, &mut Option<BufRing<'_>>)],
        bundle: bool,
        sc: &mut SyscallCounters,
        mut on_cqe: impl FnMut(&cqueue::Entry),
    ) -> u64 {
        if self.ops > 0 {
            for (ring, _) in rings.iter_mut() {
                let e = opcode::AsyncCancel2::new(types::CancelBuilder::any()).build();
                // SAFETY: a cancel refers to no memory.
                unsafe { self.push(*ring, OP_CANCEL_ANY, e, sc) };
            }
        }
        let until = Instant::now() + FINISH_WAIT;
        let mut cqes = Vec::new();
        let single = rings.len() == 1;
        'wait: while self.ops > 0 && Instant::now() < until {
            let left = until.saturating_duration_since(Instant::now());
            let wait = if single {
                left
            } else {
                left.min(Duration::from_millis(1))
            };
            for (ring, bufs) in rings.iter_mut() {
                if ring.submit_and_wait(1, Some(wait), sc).is_err() {
                    break 'wait;
                }
                ring.reap(&mut cqes);
                for cqe in cqes.drain(..) {
                    on_cqe(&cqe);
                    if let (Some(bid), Some(b)) =
                        (cqueue::buffer_select(cqe.flags()), bufs.as_mut())
                    {
                        let (n, more) = (
                            cqe.result().max(0) as usize,
                            cqueue::buffer_more(cqe.flags()),
                        );
                        // SAFETY: a receive completion on the group, reaped here once.
                        unsafe { b.discard(bid, n, bundle, more) };
                    }
                    // Closed values have nothing in flight: dropping them is safe.
                    drop(self.complete(cqe.user_data(), cqe.result(), cqe.flags()));
                }
            }
        }
        if self.ops > 0 {
            std::mem::forget(std::mem::take(&mut self.slots));
            std::mem::forget(std::mem::take(&mut self.lent));
            for (_, bufs) in rings.iter_mut() {
                if let Some(b) = bufs.take() {
                    b.leak();
                }
            }
        }
        self.ops
    }
}

/// What a close of `slot` (of generation `gen`) cancels: by user data, each op code with
/// operations in flight on the socket; by descriptor when some are not counted per code.
fn cancel_keys<T: SlotSock>(
    entry: &Entry<T>,
    slot: u32,
    gen: u32,
    off_socket: u16,
) -> Vec<CancelKey> {
    if entry.uncounted > 0 {
        return vec![CancelKey::Sock(entry.value.sock())];
    }
    (0..COUNTED_OPS as u8)
        .filter(|&op| entry.by_op[usize::from(op)] > 0 && off_socket & (1 << op) == 0)
        .map(|op| CancelKey::UserData(user_data(op, slot, gen)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `IORING_CQE_F_NOTIF`.
    const F_NOTIF: u32 = 1 << 3;

    #[derive(Debug)]
    struct Conn(RawFd);

    impl SlotSock for Conn {
        fn sock(&self) -> Sock {
            Sock::Fd(self.0)
        }
        fn release(&mut self) -> Sock {
            Sock::Fd(self.0)
        }
    }

    /// A submission queue that keeps what it is given.
    #[derive(Default)]
    struct Sq(Vec<squeue::Entry>);

    impl Submit for Sq {
        unsafe fn submit(&mut self, entry: squeue::Entry, _: &mut SyscallCounters) {
            self.0.push(entry);
        }
    }

    /// A buffer that counts its drops into a shared list of freed ids.
    #[derive(Debug)]
    struct Buf(u32, std::rc::Rc<std::cell::RefCell<Vec<u32>>>);

    impl Drop for Buf {
        fn drop(&mut self) {
            self.1.borrow_mut().push(self.0);
        }
    }

    fn nop() -> squeue::Entry {
        opcode::Nop::new().build()
    }

    #[test]
    fn notifications_out_of_order_free_the_buffer_they_name() {
        let freed = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut l: Ledger<Conn, Buf> = Ledger::default();
        let (mut sq, mut sc) = (Sq::default(), SyscallCounters::default());
        let (slot, gen) = l.insert(Conn(7));
        for id in 0..3 {
            // SAFETY: nothing is submitted to a kernel.
            assert!(unsafe { l.push_lent(&mut sq, slot, Buf(id, freed.clone()), nop(), &mut sc) });
        }
        let uds: Vec<u64> = sq.0.iter().map(|e| e.get_user_data()).collect();
        assert_eq!(l.inflight(slot), 3);
        // Results, in order, each announcing a notification (F_MORE): nothing is freed yet.
        for &ud in &uds {
            match l.complete(ud, 100, F_MORE) {
                Done::Op { ud: u, res, .. } => {
                    assert_eq!((u.op, u.slot, u.gen, res), (OP_LENT, slot, gen, 100));
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(freed.borrow().is_empty());
        assert_eq!(l.lent_by(slot, gen), 3);
        // Notifications out of order: the third send's, then the first's, then the second's.
        for (i, want) in [(2usize, vec![2]), (0, vec![2, 0]), (1, vec![2, 0, 1])] {
            match l.complete(uds[i], 0, F_NOTIF) {
                Done::Returned { slot: s, .. } => assert_eq!(s, slot),
                other => panic!("{other:?}"),
            }
            assert_eq!(*freed.borrow(), want, "after the notification of send {i}");
        }
        assert_eq!(l.inflight(slot), 0);
        assert_eq!(l.ops(), 0);
    }

    #[test]
    fn a_failed_lent_operation_frees_its_buffer_at_its_result() {
        let freed = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let mut l: Ledger<Conn, Buf> = Ledger::default();
        let (mut sq, mut sc) = (Sq::default(), SyscallCounters::default());
        let (slot, _) = l.insert(Conn(7));
        // SAFETY: nothing is submitted to a kernel.
        unsafe { l.push_lent(&mut sq, slot, Buf(9, freed.clone()), nop(), &mut sc) };
        let ud = sq.0[0].get_user_data();
        assert!(matches!(l.complete(ud, -32, 0), Done::Op { res: -32, .. }));
        assert_eq!(*freed.borrow(), vec![9]);
        assert_eq!(l.inflight(slot), 0);
    }

    #[test]
    fn close_waits_for_every_operation_then_frees_the_slot() {
        let mut l: Ledger<Conn, ()> = Ledger::default();
        let (mut sq, mut sc) = (Sq::default(), SyscallCounters::default());
        let (slot, gen) = l.insert(Conn(5));
        // SAFETY: nothing is submitted to a kernel.
        unsafe { l.push_for(&mut sq, slot, 1, nop(), &mut sc) };
        assert!(
            !l.close(&mut sq, slot, &mut sc),
            "an operation is in flight"
        );
        assert!(!l.close(&mut sq, slot, &mut sc));
        let ops: Vec<u8> =
            sq.0.iter()
                .map(|e| UserData::decode(e.get_user_data()).op)
                .collect();
        assert_eq!(
            ops,
            vec![1, OP_CANCEL_FD],
            "one cancel, however often asked"
        );
        // The operation ends (multishot: the F_MORE completion does not count), then the cancel.
        let op_ud = sq.0[0].get_user_data();
        assert!(matches!(
            l.complete(op_ud, 10, F_MORE),
            Done::Op { more: true, .. }
        ));
        assert_eq!(l.inflight(slot), 2);
        assert!(matches!(l.complete(op_ud, -125, 0), Done::Op { .. }));
        let cancel_ud = sq.0[1].get_user_data();
        assert!(matches!(l.complete(cancel_ud, 1, 0), Done::Pump(s) if s == slot));
        assert!(l.close(&mut sq, slot, &mut sc));
        assert!(l.open(slot).is_none(), "closing");
        let close_ud = sq.0[2].get_user_data();
        assert_eq!(UserData::decode(close_ud).op, OP_CLOSE);
        assert!(matches!(l.complete(close_ud, 0, 0), Done::Closed(Conn(5))));
        assert!(l.is_empty());
        // A late completion for the old generation reaches nobody.
        assert!(l.get(slot, gen).is_none());
        let (slot2, gen2) = l.insert(Conn(6));
        assert_eq!(slot2, slot);
        assert_ne!(gen2, gen);
        assert!(l.get(slot, gen).is_none());
        assert_eq!(l.ops(), 0);
    }

    /// The keys a close of `slot` would cancel by now.
    fn keys(l: &mut Ledger<Conn, ()>, slot: u32) -> Vec<CancelKey> {
        let off = l.off_socket;
        let (gen, e) = l.slots.get_slot(slot).expect("a live slot");
        cancel_keys(e, slot, gen, off)
    }

    #[test]
    fn a_close_cancels_by_user_data_each_op_code_in_flight_on_the_socket() {
        const RECV: u8 = 2;
        const SEND: u8 = 3;
        const FILE_READ: u8 = 14;
        let mut l: Ledger<Conn, ()> = Ledger::default().off_socket(&[FILE_READ]);
        let (mut sq, mut sc) = (Sq::default(), SyscallCounters::default());
        let (slot, gen) = l.insert(Conn(9));
        for op in [RECV, SEND, SEND, FILE_READ] {
            // SAFETY: nothing is submitted to a kernel.
            unsafe { l.push_for(&mut sq, slot, op, nop(), &mut sc) };
        }
        let ud = |op| user_data(op, slot, gen);
        // One completed send leaves the other one: its code is still cancelled, once; the
        // file read is waited for, not cancelled.
        assert!(matches!(l.complete(ud(SEND), 64, 0), Done::Op { .. }));
        assert_eq!(
            keys(&mut l, slot),
            vec![CancelKey::UserData(ud(RECV)), CancelKey::UserData(ud(SEND))],
            "by user data (a hash lookup), never by descriptor (a walk over every armed poll)"
        );
        // A multishot completion that goes on does not end its operation.
        assert!(matches!(l.complete(ud(RECV), 10, F_MORE), Done::Op { .. }));
        assert!(matches!(l.complete(ud(SEND), 64, 0), Done::Op { .. }));
        assert_eq!(keys(&mut l, slot), vec![CancelKey::UserData(ud(RECV))]);
        // The close submits exactly those cancels, then waits for the receive and the file read.
        let before = sq.0.len();
        assert!(!l.close(&mut sq, slot, &mut sc));
        let cancels: Vec<u64> = sq.0[before..].iter().map(|e| e.get_user_data()).collect();
        assert_eq!(cancels, vec![user_data(OP_CANCEL_FD, slot, gen)]);
        assert!(matches!(l.complete(ud(RECV), -125, 0), Done::Op { .. }));
        assert!(matches!(l.complete(cancels[0], 1, 0), Done::Pump(s) if s == slot));
        assert!(
            !l.close(&mut sq, slot, &mut sc),
            "the file read is still in flight"
        );
        assert!(matches!(l.complete(ud(FILE_READ), 100, 0), Done::Op { .. }));
        assert!(l.close(&mut sq, slot, &mut sc));
        assert_eq!(l.ops(), 1, "only the close is in flight");
    }

    #[test]
    fn a_close_with_a_lent_or_uncounted_operation_cancels_by_descriptor() {
        let mut l: Ledger<Conn, ()> = Ledger::default();
        let (mut sq, mut sc) = (Sq::default(), SyscallCounters::default());
        let (slot, _) = l.insert(Conn(4));
        // SAFETY: nothing is submitted to a kernel.
        unsafe { l.push_lent(&mut sq, slot, (), nop(), &mut sc) };
        assert_eq!(keys(&mut l, slot), vec![CancelKey::Sock(Sock::Fd(4))]);
        let (slot2, _) = l.insert(Conn(5));
        // SAFETY: nothing is submitted to a kernel.
        unsafe { l.push_for(&mut sq, slot2, COUNTED_OPS as u8, nop(), &mut sc) };
        assert_eq!(keys(&mut l, slot2), vec![CancelKey::Sock(Sock::Fd(5))]);
        // 256 operations of one code in flight: the 256th is not counted per code.
        let (slot3, gen3) = l.insert(Conn(6));
        for _ in 0..256 {
            // SAFETY: nothing is submitted to a kernel.
            unsafe { l.push_for(&mut sq, slot3, 1, nop(), &mut sc) };
        }
        assert_eq!(keys(&mut l, slot3), vec![CancelKey::Sock(Sock::Fd(6))]);
        assert!(matches!(
            l.complete(user_data(1, slot3, gen3), 0, 0),
            Done::Op { .. }
        ));
        assert_eq!(l.inflight(slot3), 255);
    }
}
