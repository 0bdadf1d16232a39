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

/// An epoll instance.
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    /// A new epoll instance (close-on-exec).
    pub fn new() -> io::Result<Epoll> {
        Ok(Epoll {
            fd: epoll::create(epoll::CreateFlags::CLOEXEC)?,
        })
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

    /// Wait for events (at most `events.capacity()`), up to `timeout`. `EINTR` returns no events.
    pub fn wait(
        &self,
        events: &mut Vec<Event>,
        timeout: Option<Duration>,
        counters: &mut SyscallCounters,
    ) -> io::Result<()> {
        events.clear();
        counters.epoll_wait += 1;
        let ts = timeout.map(|t| rustix::time::Timespec {
            tv_sec: t.as_secs() as _,
            tv_nsec: t.subsec_nanos() as _,
        });
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
