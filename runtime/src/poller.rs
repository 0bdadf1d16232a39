//! Readiness sets: one interface over `epoll`, `poll(2)` and `select(2)`, so that one readiness
//! loop runs on any of them and the three differ only in how the kernel is asked.
//!
//! * [`Epoll`](crate::epoll::Epoll): the kernel keeps the interest set; a wait costs in
//!   proportion to the ready sockets. Edge- or level-triggered.
//! * [`PollSet`]: the interest set lives in this process as a `pollfd` array handed whole to
//!   every `poll`; the kernel walks every entry on each call (and the loop walks them all again
//!   for the results), so a wait costs in proportion to the watched sockets. Level-triggered.
//! * [`SelectSet`]: the interest set is two bitmaps of `FD_SETSIZE` (1024) bits, copied into and
//!   out of the kernel on every `select`, which scans them up to the highest descriptor.
//!   Level-triggered; a descriptor of 1024 or more cannot be watched at all, and adding one
//!   fails with an error that says so.
//!
//! Every set reports readiness as epoll's [`EventFlags`] (`IN`, `OUT`, `RDHUP`, `HUP`, `ERR`)
//! tagged with the `u64` given at registration, so the loop reads one kind of event. `poll` and
//! `select` ignore `ET` and `EXCLUSIVE`. A descriptor must leave a `poll` or `select` set
//! ([`Poller::closing`]) before it is closed: those sets hold descriptor numbers, not files.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use rustix::event::{FdSetElement, PollFd, PollFlags};

use crate::epoll::{timespec, Epoll, Event, EventData, EventFlags};
use crate::stats::SyscallCounters;

/// `--coalesce D` (`--coalesce-batch N`): a loop turn that woke for fewer than `batch`
/// completions or events waits up to `wait` for more before it runs, trading latency for fewer
/// wake-ups at moderate load. io_uring does it in the kernel, in the same `io_uring_enter`
/// (`min_wait_usec` of the extended wait argument, Linux 6.12, see
/// [`crate::uring::Ring::set_coalesce`]); a readiness set has no such wait, so
/// [`wait_coalesced`] sleeps `wait` (with 1 ns timer slack) and collects what became ready
/// meanwhile with a second wait that does not block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Coalesce {
    pub wait: Duration,
    pub batch: usize,
}

impl Coalesce {
    /// `--coalesce D` with `--coalesce-batch N`: none when `D` is zero.
    pub fn of(wait: Duration, batch: usize) -> Option<Coalesce> {
        (!wait.is_zero()).then_some(Coalesce {
            wait,
            batch: batch.max(2),
        })
    }
}

/// Wait on `set` as [`Poller::wait`] does; with `co`, when between one and `co.batch - 1`
/// events came, sleep `co.wait` and add what became ready meanwhile (`more` is scratch space
/// of the same capacity), merged by tag so that a socket is reported once.
pub fn wait_coalesced<P: Poller + ?Sized>(
    set: &mut P,
    events: &mut Vec<Event>,
    more: &mut Vec<Event>,
    timeout: Option<Duration>,
    co: Option<Coalesce>,
    counters: &mut SyscallCounters,
) -> io::Result<()> {
    set.wait(events, timeout, counters)?;
    let Some(c) = co else {
        return Ok(());
    };
    if events.is_empty() || events.len() >= c.batch {
        return Ok(());
    }
    counters.other += 1; // the sleep
    std::thread::sleep(c.wait);
    set.wait(more, Some(Duration::ZERO), counters)?;
    for e in more.drain(..) {
        let tag = e.data.u64();
        match events.iter_mut().find(|x| x.data.u64() == tag) {
            Some(x) => {
                // Event is packed: read, merge, write back.
                let (a, b) = (x.flags, e.flags);
                x.flags = a | b;
            }
            None => events.push(e),
        }
    }
    Ok(())
}

/// Make this thread's timed sleeps precise (1 ns timer slack instead of 50 µs), so that a
/// coalescing sleep of 10 µs is not a sleep of 60.
pub fn precise_sleeps() -> io::Result<()> {
    rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(1))?;
    Ok(())
}

/// `FD_SETSIZE` on Linux: `select` cannot watch a descriptor at or above it.
pub const FD_SETSIZE: usize = 1024;

/// A readiness set: register sockets with the events they wait for, wait for reports.
pub trait Poller {
    /// The system call it is, for messages (`epoll`, `poll`, `select`).
    fn name(&self) -> &'static str;
    /// Whether it can report edges (`EPOLLET`); when not, the loop runs level-triggered.
    fn edge_triggered(&self) -> bool;
    /// Watch `fd` for `flags`, reporting it with `data`.
    fn add(
        &mut self,
        fd: BorrowedFd<'_>,
        data: u64,
        flags: EventFlags,
        counters: &mut SyscallCounters,
    ) -> io::Result<()>;
    /// Change what `fd` is watched for (and its tag).
    fn modify(
        &mut self,
        fd: BorrowedFd<'_>,
        data: u64,
        flags: EventFlags,
        counters: &mut SyscallCounters,
    ) -> io::Result<()>;
    /// Stop watching `fd`.
    fn delete(&mut self, fd: BorrowedFd<'_>, counters: &mut SyscallCounters) -> io::Result<()>;
    /// `fd` is about to be closed: forget it if it is still watched (epoll forgets a closed
    /// file by itself; `poll` and `select` sets hold numbers that a new socket may reuse).
    fn closing(&mut self, fd: BorrowedFd<'_>);
    /// Wait up to `timeout` (none: until something is ready) and put the reports in `events`
    /// (cleared first). `EINTR` returns no events.
    fn wait(
        &mut self,
        events: &mut Vec<Event>,
        timeout: Option<Duration>,
        counters: &mut SyscallCounters,
    ) -> io::Result<()>;
}

impl Poller for Epoll {
    fn name(&self) -> &'static str {
        "epoll"
    }
    fn edge_triggered(&self) -> bool {
        true
    }
    fn add(
        &mut self,
        fd: BorrowedFd<'_>,
        data: u64,
        flags: EventFlags,
        counters: &mut SyscallCounters,
    ) -> io::Result<()> {
        Epoll::add(self, fd, data, flags, counters)
    }
    fn modify(
        &mut self,
        fd: BorrowedFd<'_>,
        data: u64,
        flags: EventFlags,
        counters: &mut SyscallCounters,
    ) -> io::Result<()> {
        Epoll::modify(self, fd, data, flags, counters)
    }
    fn delete(&mut self, fd: BorrowedFd<'_>, counters: &mut SyscallCounters) -> io::Result<()> {
        Epoll::delete(self, fd, counters)
    }
    fn closing(&mut self, _fd: BorrowedFd<'_>) {}
    fn wait(
        &mut self,
        events: &mut Vec<Event>,
        timeout: Option<Duration>,
        counters: &mut SyscallCounters,
    ) -> io::Result<()> {
        Epoll::wait(self, events, timeout, counters)
    }
}

fn poll_flags(f: EventFlags) -> PollFlags {
    let mut p = PollFlags::empty();
    for (e, q) in [
        (EventFlags::IN, PollFlags::IN),
        (EventFlags::OUT, PollFlags::OUT),
        (EventFlags::RDHUP, PollFlags::RDHUP),
    ] {
        if f.contains(e) {
            p |= q;
        }
    }
    p
}

fn event_flags(p: PollFlags) -> EventFlags {
    let mut f = EventFlags::empty();
    for (q, e) in [
        (PollFlags::IN, EventFlags::IN),
        (PollFlags::OUT, EventFlags::OUT),
        (PollFlags::RDHUP, EventFlags::RDHUP),
        (PollFlags::HUP, EventFlags::HUP),
        (PollFlags::ERR, EventFlags::ERR),
        (PollFlags::NVAL, EventFlags::ERR),
    ] {
        if p.contains(q) {
            f |= e;
        }
    }
    f
}

/// A `poll(2)` set: the `pollfd` array kept between waits, entries moved only on delete.
#[derive(Default)]
pub struct PollSet {
    fds: Vec<PollFd<'static>>,
    tags: Vec<u64>,
    /// Descriptor number -> index in `fds`.
    at: HashMap<RawFd, usize>,
}

impl PollSet {
    pub fn new() -> PollSet {
        PollSet::default()
    }

    fn entry(fd: BorrowedFd<'_>, flags: EventFlags) -> PollFd<'static> {
        // SAFETY: the number is only handed to poll(2), never used to reach a file, and the
        // caller removes it from the set (`delete` or `closing`) before closing it, so every
        // number in the set names the open socket it was added for (the `Poller` contract).
        let fd = unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) };
        PollFd::from_borrowed_fd(fd, poll_flags(flags))
    }

    fn remove(&mut self, raw: RawFd) -> bool {
        let Some(i) = self.at.remove(&raw) else {
            return false;
        };
        self.fds.swap_remove(i);
        self.tags.swap_remove(i);
        if let Some(moved) = self.fds.get(i) {
            self.at.insert(moved.as_fd().as_raw_fd(), i);
        }
        true
    }
}

impl Poller for PollSet {
    fn name(&self) -> &'static str {
        "poll"
    }
    fn edge_triggered(&self) -> bool {
        false
    }
    fn add(
        &mut self,
        fd: BorrowedFd<'_>,
        data: u64,
        flags: EventFlags,
        _counters: &mut SyscallCounters,
    ) -> io::Result<()> {
        let raw = fd.as_raw_fd();
        if self.at.contains_key(&raw) {
            return Err(exists());
        }
        self.at.insert(raw, self.fds.len());
        self.fds.push(PollSet::entry(fd, flags));
        self.tags.push(data);
        Ok(())
    }
    fn modify(
        &mut self,
        fd: BorrowedFd<'_>,
        data: u64,
        flags: EventFlags,
        _counters: &mut SyscallCounters,
    ) -> io::Result<()> {
        let i = *self.at.get(&fd.as_raw_fd()).ok_or_else(not_found)?;
        self.fds[i] = PollSet::entry(fd, flags);
        self.tags[i] = data;
        Ok(())
    }
    fn delete(&mut self, fd: BorrowedFd<'_>, _counters: &mut SyscallCounters) -> io::Result<()> {
        if self.remove(fd.as_raw_fd()) {
            Ok(())
        } else {
            Err(not_found())
        }
    }
    fn closing(&mut self, fd: BorrowedFd<'_>) {
        self.remove(fd.as_raw_fd());
    }
    fn wait(
        &mut self,
        events: &mut Vec<Event>,
        timeout: Option<Duration>,
        counters: &mut SyscallCounters,
    ) -> io::Result<()> {
        events.clear();
        counters.poll += 1;
        let ts = timeout.map(timespec);
        match rustix::event::poll(&mut self.fds, ts.as_ref()) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        // The whole array again, for the entries the kernel marked.
        for (p, &tag) in self.fds.iter().zip(&self.tags) {
            let r = p.revents();
            if !r.is_empty() {
                events.push(Event {
                    flags: event_flags(r),
                    data: EventData::new_u64(tag),
                });
            }
        }
        Ok(())
    }
}

/// A `select(2)` set: read and write bitmaps of `FD_SETSIZE` bits, copied for every wait.
pub struct SelectSet {
    read: Vec<FdSetElement>,
    write: Vec<FdSetElement>,
    /// Per descriptor number: its tag, when watched.
    tags: Vec<Option<u64>>,
    /// Scratch copies handed to the kernel.
    r_out: Vec<FdSetElement>,
    w_out: Vec<FdSetElement>,
    /// Scratch: what the last wait reported per descriptor.
    ready: Vec<EventFlags>,
    /// One more than the highest watched descriptor.
    nfds: usize,
}

impl Default for SelectSet {
    fn default() -> Self {
        let n = rustix::event::fd_set_num_elements(FD_SETSIZE, FD_SETSIZE as RawFd);
        SelectSet {
            read: vec![FdSetElement::default(); n],
            write: vec![FdSetElement::default(); n],
            tags: vec![None; FD_SETSIZE],
            r_out: vec![FdSetElement::default(); n],
            w_out: vec![FdSetElement::default(); n],
            ready: vec![EventFlags::empty(); FD_SETSIZE],
            nfds: 0,
        }
    }
}

impl SelectSet {
    pub fn new() -> SelectSet {
        SelectSet::default()
    }

    fn slot(fd: BorrowedFd<'_>) -> io::Result<usize> {
        let raw = fd.as_raw_fd();
        if raw < 0 || raw as usize >= FD_SETSIZE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "select cannot watch descriptor {raw}: it is at or above FD_SETSIZE ({FD_SETSIZE}); use --io poll or epoll for more connections"
                ),
            ));
        }
        Ok(raw as usize)
    }

    fn set(&mut self, fd: usize, flags: EventFlags) {
        let raw = fd as RawFd;
        rustix::event::fd_set_remove(&mut self.read, raw);
        rustix::event::fd_set_remove(&mut self.write, raw);
        if flags.intersects(EventFlags::IN | EventFlags::RDHUP) {
            rustix::event::fd_set_insert(&mut self.read, raw);
        }
        if flags.contains(EventFlags::OUT) {
            rustix::event::fd_set_insert(&mut self.write, raw);
        }
    }

    fn forget(&mut self, fd: usize) {
        self.set(fd, EventFlags::empty());
        self.tags[fd] = None;
        while self.nfds > 0 && self.tags[self.nfds - 1].is_none() {
            self.nfds -= 1;
        }
    }
}

impl Poller for SelectSet {
    fn name(&self) -> &'static str {
        "select"
    }
    fn edge_triggered(&self) -> bool {
        false
    }
    fn add(
        &mut self,
        fd: BorrowedFd<'_>,
        data: u64,
        flags: EventFlags,
        _counters: &mut SyscallCounters,
    ) -> io::Result<()> {
        let i = SelectSet::slot(fd)?;
        if self.tags[i].is_some() {
            return Err(exists());
        }
        self.tags[i] = Some(data);
        self.set(i, flags);
        self.nfds = self.nfds.max(i + 1);
        Ok(())
    }
    fn modify(
        &mut self,
        fd: BorrowedFd<'_>,
        data: u64,
        flags: EventFlags,
        _counters: &mut SyscallCounters,
    ) -> io::Result<()> {
        let i = SelectSet::slot(fd)?;
        if self.tags[i].is_none() {
            return Err(not_found());
        }
        self.tags[i] = Some(data);
        self.set(i, flags);
        Ok(())
    }
    fn delete(&mut self, fd: BorrowedFd<'_>, _counters: &mut SyscallCounters) -> io::Result<()> {
        let i = SelectSet::slot(fd)?;
        if self.tags[i].is_none() {
            return Err(not_found());
        }
        self.forget(i);
        Ok(())
    }
    fn closing(&mut self, fd: BorrowedFd<'_>) {
        if let Ok(i) = SelectSet::slot(fd) {
            if self.tags[i].is_some() {
                self.forget(i);
            }
        }
    }
    fn wait(
        &mut self,
        events: &mut Vec<Event>,
        timeout: Option<Duration>,
        counters: &mut SyscallCounters,
    ) -> io::Result<()> {
        events.clear();
        counters.select += 1;
        self.r_out.copy_from_slice(&self.read);
        self.w_out.copy_from_slice(&self.write);
        let ts = timeout.map(timespec);
        // SAFETY: the sets hold only descriptors added to this set and not yet deleted or
        // reported as closing, and the `Poller` contract has every one leave the set before it
        // is closed: all are open. Both arrays hold FD_SETSIZE bits, enough for `nfds`.
        let r = unsafe {
            rustix::event::select(
                self.nfds as i32,
                Some(&mut self.r_out),
                Some(&mut self.w_out),
                None,
                ts.as_ref(),
            )
        };
        match r {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        // Both result sets, bit by bit up to the highest descriptor.
        for (set, f) in [
            (&self.r_out, EventFlags::IN),
            (&self.w_out, EventFlags::OUT),
        ] {
            for fd in rustix::event::FdSetIter::new(set) {
                self.ready[fd as usize] |= f;
            }
        }
        for fd in 0..self.nfds {
            let f = std::mem::replace(&mut self.ready[fd], EventFlags::empty());
            if let (false, Some(tag)) = (f.is_empty(), self.tags[fd]) {
                events.push(Event {
                    flags: f,
                    data: EventData::new_u64(tag),
                });
            }
        }
        Ok(())
    }
}

fn exists() -> io::Error {
    io::Error::from(rustix::io::Errno::EXIST)
}

fn not_found() -> io::Error {
    io::Error::from(rustix::io::Errno::NOENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::net::UnixStream;

    fn tags(events: &[Event]) -> Vec<(u64, bool, bool)> {
        let mut v: Vec<_> = events
            .iter()
            .map(|e| {
                let f = e.flags;
                (
                    e.data.u64(),
                    f.contains(EventFlags::IN),
                    f.contains(EventFlags::OUT),
                )
            })
            .collect();
        v.sort_unstable();
        v
    }

    /// Every set reports what each socket is registered for, with its tag; a changed interest
    /// and a deleted socket are honoured; `closing` forgets a socket.
    fn reports_by_interest(set: &mut dyn Poller) {
        let mut sc = SyscallCounters::default();
        let (mut a, b) = UnixStream::pair().unwrap();
        let (c, _d) = UnixStream::pair().unwrap();
        set.add(b.as_fd(), 7, EventFlags::IN, &mut sc).unwrap();
        set.add(c.as_fd(), 9, EventFlags::IN, &mut sc).unwrap();
        assert!(
            set.add(b.as_fd(), 7, EventFlags::IN, &mut sc).is_err(),
            "{}: added twice",
            set.name()
        );
        let mut ev = Vec::with_capacity(16);
        set.wait(&mut ev, Some(Duration::ZERO), &mut sc).unwrap();
        assert_eq!(tags(&ev), [], "{}: nothing to read yet", set.name());
        a.write_all(b"x").unwrap();
        set.wait(&mut ev, Some(Duration::from_secs(5)), &mut sc)
            .unwrap();
        assert_eq!(tags(&ev), [(7, true, false)], "{}", set.name());
        // Writable interest on c (its buffer is empty), none on b.
        set.modify(c.as_fd(), 10, EventFlags::OUT, &mut sc).unwrap();
        set.modify(b.as_fd(), 7, EventFlags::empty(), &mut sc)
            .unwrap();
        set.wait(&mut ev, Some(Duration::ZERO), &mut sc).unwrap();
        assert_eq!(tags(&ev), [(10, false, true)], "{}", set.name());
        set.delete(c.as_fd(), &mut sc).unwrap();
        set.modify(b.as_fd(), 8, EventFlags::IN, &mut sc).unwrap();
        set.wait(&mut ev, Some(Duration::ZERO), &mut sc).unwrap();
        assert_eq!(tags(&ev), [(8, true, false)], "{}", set.name());
        set.closing(b.as_fd());
        if set.name() != "epoll" {
            set.wait(&mut ev, Some(Duration::ZERO), &mut sc).unwrap();
            assert_eq!(tags(&ev), [], "{}: forgotten", set.name());
        }
    }

    #[test]
    fn poll_select_and_epoll_report_the_same() {
        reports_by_interest(&mut Epoll::new().unwrap());
        reports_by_interest(&mut PollSet::new());
        reports_by_interest(&mut SelectSet::new());
    }

    /// A coalesced wait adds what became ready during the sleep, and reports a socket once.
    #[test]
    fn a_coalesced_wait_merges_by_socket() {
        let mut sc = SyscallCounters::default();
        let mut set = PollSet::new();
        let (mut a, b) = UnixStream::pair().unwrap();
        let (mut c, d) = UnixStream::pair().unwrap();
        set.add(b.as_fd(), 1, EventFlags::IN, &mut sc).unwrap();
        set.add(d.as_fd(), 2, EventFlags::IN, &mut sc).unwrap();
        a.write_all(b"x").unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(5));
            c.write_all(b"y").unwrap();
            c
        });
        let co = Coalesce::of(Duration::from_millis(200), 8);
        let (mut ev, mut more) = (Vec::with_capacity(8), Vec::with_capacity(8));
        wait_coalesced(&mut set, &mut ev, &mut more, None, co, &mut sc).unwrap();
        let _c = writer.join().unwrap();
        // Socket 1 was ready at once and again in the second wait (level-triggered): once.
        assert_eq!(tags(&ev), [(1, true, false), (2, true, false)]);
        assert_eq!(Coalesce::of(Duration::ZERO, 8), None);
    }
}
