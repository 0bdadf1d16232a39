//! ringlab-runtime: per-core plumbing shared by ringlab's server and client.
//!
//! * [`cli`]: `completions SHELL` and `man`, generated from each program's clap command.
//! * [`cpus`]: CPU lists and pinning, checked after the fact.
//! * [`duration`]: the command-line duration parser every program uses.
//! * [`timer`]: a hashed timer wheel with lazy cancellation.
//! * [`stats`]: syscall counters and the per-loop clock.
//! * [`uring`]: io_uring availability, ring setup, provided-buffer ring, user data, backlog.
//! * [`epoll`]: a counted epoll instance.
//! * [`poller`]: one readiness-set interface over epoll, poll(2) and select(2).
//! * [`event_loop`]: the skeleton of every loop: the turn and the phases of shutdown.
//! * [`ledger`]: the io_uring operation ledger (slots, operations in flight, lent buffers, close).
//! * [`procgroup`]: `--processes N`: a group of processes started, released and watched together.
//! * [`net`]: socket options the wrappers lack (`IP_BIND_ADDRESS_NO_PORT`).
//! * [`slab`]: connection slots with generations.
//! * [`wake`]: an eventfd that other threads use to wake a loop.

pub mod cli;
pub mod cpus;
pub mod duration;
pub mod epoll;
pub mod event_loop;
pub mod ledger;
pub mod net;
pub mod poller;
pub mod procgroup;
pub mod slab;
pub mod stats;
pub mod timer;
pub mod uring;
pub mod wake;
