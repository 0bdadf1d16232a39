//! epoll driver pieces: an epoll instance whose calls are counted, and the event buffer.
//!
//! Best practice for the readiness model, as ringlab's epoll backend uses it: edge-triggered
//! registration once per socket (`EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET`, so no `epoll_ctl`
//! is ever needed to arm or disarm writes), read until `EAGAIN`, write at once and rely on the
//! edge-triggered `EPOLLOUT` only after `EAGAIN`, and a large event array per `epoll_wait`.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::event::epoll;

use crate::stats::SyscallCounters;

pub use rustix::event::epoll::{Event, EventData, EventFlags};

/// What one readiness report says about a socket, the same way for every epoll loop: readable
/// on input, peer half-close, hang-up or error (a read then tells which); the peer has closed its
/// side on `EPOLLRDHUP`/`EPOLLHUP` (so a short read does not mean drained); writable on output
/// room, hang-up or error (a write then tells which).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Readiness {
    pub readable: bool,
    pub rdhup: bool,
    pub writable: bool,
}

impl Readiness {
    /// The readiness reported by `flags`.
    pub fn of(flags: EventFlags) -> Readiness {
        Readiness {
            readable: flags
                .intersects(EventFlags::IN | EventFlags::RDHUP | EventFlags::HUP | EventFlags::ERR),
            rdhup: flags.intersects(EventFlags::RDHUP | EventFlags::HUP),
            writable: flags.intersects(EventFlags::OUT | EventFlags::HUP | EventFlags::ERR),
        }
    }
}

/// A wait's timeout as the kernel takes it (epoll_pwait2, poll, select).
pub(crate) fn timespec(t: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec {
        tv_sec: t.as_secs() as _,
        tv_nsec: t.subsec_nanos() as _,
    }
}

/// An epoll instance.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// A new epoll instance (close-on-exec). Fails with one clear line where the kernel has no
    /// `epoll_pwait2` (before Linux 5.11), which every wait here uses.
    pub fn new() -> io::Result<Epoll> {
        let ep = Epoll {
            fd: epoll::create(epoll::CreateFlags::CLOEXEC)?,
        };
        // One wait that returns at once: the kernel says here, not mid-run, if it lacks the call.
        let mut none = Vec::with_capacity(1);
        match epoll::wait(
            &ep.fd,
            rustix::buffer::spare_capacity(&mut none),
            Some(&rustix::time::Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            }),
        ) {
            Err(rustix::io::Errno::NOSYS) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "epoll_pwait2 is missing (Linux 5.11 or later is needed for ringlab's epoll loops)",
            )),
            _ => Ok(ep),
        }
    }

    /// Register `fd` with `flags`, tagged with `data`.
    pub fn add(
        &self,
        fd: impl AsFd,
        data: u64,
        flags: EventFlags,
        counters: &mut SyscallCounters,
    ) -> io::Result<()> {
        counters.epoll_ctl += 1;
        epoll::add(&self.fd, fd, EventData::new_u64(data), flags)?;
        Ok(())
    }

    /// Change `fd`'s flags or tag.
    pub fn modify(
        &self,
        fd: impl AsFd,
        data: u64,
        flags: EventFlags,
        counters: &mut SyscallCounters,
    ) -> io::Result<()> {
        counters.epoll_ctl += 1;
        epoll::modify(&self.fd, fd, EventData::new_u64(data), flags)?;
        Ok(())
    }

    /// Unregister `fd`.
    pub fn delete(&self, fd: impl AsFd, counters: &mut SyscallCounters) -> io::Result<()> {
        counters.epoll_ctl += 1;
        epoll::delete(&self.fd, fd)?;
        Ok(())
    }

    /// Busy poll for up to `usecs` in `epoll_wait` (`EPIOCSPARAMS`, Linux 6.9), with at most
    /// `budget` packets per poll (the kernel allows up to 64 without CAP_NET_ADMIN).
    pub fn set_busy_poll(&self, usecs: u32, budget: u16, prefer: bool) -> io::Result<()> {
        /// `struct epoll_params` from `<linux/eventpoll.h>`.
        #[repr(C)]
        struct EpollParams {
            busy_poll_usecs: u32,
            busy_poll_budget: u16,
            prefer_busy_poll: u8,
            pad: u8,
        }
        const EPIOCSPARAMS: rustix::ioctl::Opcode =
            rustix::ioctl::opcode::write::<EpollParams>(0x8A, 0x01);
        let p = EpollParams {
            busy_poll_usecs: usecs,
            busy_poll_budget: budget,
            prefer_busy_poll: u8::from(prefer),
            pad: 0,
        };
        // SAFETY: EPIOCSPARAMS takes a pointer to a `struct epoll_params`, which `EpollParams`
        // mirrors field for field (8 bytes, `repr(C)`); the kernel only reads it.
        unsafe {
            rustix::ioctl::ioctl(
                &self.fd,
                rustix::ioctl::Setter::<EPIOCSPARAMS, EpollParams>::new(p),
            )
        }?;
        Ok(())
    }

    /// Wait for events (at most `events.capacity()`), up to `timeout`. `EINTR` returns no events.
    /// The timeout is kept to the nanosecond (`epoll_pwait2`, Linux 5.11; plain `epoll_pwait`
    /// would round it up to whole milliseconds).
    pub fn wait(
        &self,
        events: &mut Vec<Event>,
        timeout: Option<Duration>,
        counters: &mut SyscallCounters,
    ) -> io::Result<()> {
        events.clear();
        counters.epoll_wait += 1;
        let ts = timeout.map(timespec);
        match epoll::wait(
            &self.fd,
            rustix::buffer::spare_capacity(events),
            ts.as_ref(),
        ) {
            Ok(_) => Ok(()),
            Err(rustix::io::Errno::INTR) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod wait_tests {
    use super::*;
    use std::time::Instant;

    /// A wait of 200 µs on an idle epoll ends well before a millisecond at least once in 50
    /// tries: with the timeout rounded up to whole milliseconds (`epoll_pwait`), none can,
    /// since the kernel never ends a wait before its timeout.
    #[test]
    fn sub_millisecond_timeouts_are_kept() {
        let ep = Epoll::new().expect("epoll");
        let mut events = Vec::with_capacity(8);
        let mut counters = SyscallCounters::default();
        let shortest = (0..50)
            .map(|_| {
                let t = Instant::now();
                ep.wait(&mut events, Some(Duration::from_micros(200)), &mut counters)
                    .expect("wait");
                t.elapsed()
            })
            .min()
            .expect("50 waits");
        assert!(events.is_empty());
        assert!(
            shortest < Duration::from_micros(900),
            "the shortest of 50 waits of 200 µs took {shortest:?}: the timeout was rounded up to a millisecond"
        );
        assert!(shortest >= Duration::from_micros(200), "{shortest:?}");
    }
}

#[cfg(test)]
mod readiness_tests {
    use super::*;

    #[test]
    fn hang_up_and_error_wake_both_directions() {
        let r = Readiness::of(EventFlags::IN);
        assert_eq!((r.readable, r.rdhup, r.writable), (true, false, false));
        let r = Readiness::of(EventFlags::OUT);
        assert_eq!((r.readable, r.rdhup, r.writable), (false, false, true));
        let r = Readiness::of(EventFlags::RDHUP);
        assert_eq!((r.readable, r.rdhup, r.writable), (true, true, false));
        let r = Readiness::of(EventFlags::HUP);
        assert_eq!((r.readable, r.rdhup, r.writable), (true, true, true));
        let r = Readiness::of(EventFlags::ERR);
        assert_eq!((r.readable, r.rdhup, r.writable), (true, false, true));
    }
}
