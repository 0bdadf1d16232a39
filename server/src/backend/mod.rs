//! IO backends. Each is one file with one loop that moves bytes between sockets and the shared
//! [`crate::core`]; a backend must:
//!
//! * accept on `ctx.listener` and keep accepting (backing off on EMFILE/ENFILE through
//!   [`crate::core::AcceptBackoff`], never spinning), but only while
//!   [`crate::core::LoopCore::may_accept`] says so (echo at `--max-conns`), and get each new
//!   connection's state from [`crate::core::LoopCore::admit`] (which answers 503 for HTTP over
//!   the limit; a socket it cannot take yet is held and retried at `accept.retry_at`);
//! * race every blocking write against the session's deadline, so that a peer that never reads
//!   is still closed by `--idle-timeout`;
//! * feed every received byte, in order, to [`crate::core::LoopCore::recv`], report EOF, errors
//!   and written bytes, and send whatever the session has ready, in order, without loss;
//! * read only while the session `wants_read` (backpressure), and do what its `action()` says
//!   (shut down the write side, close);
//! * arm the session's deadline in the shared timer wheel after every session call;
//! * on shutdown: stop accepting, `begin_shutdown` every session, exit when no connection is
//!   left or the grace period is over, and report its statistics.
//!
//! The readiness and completion backends (`epoll`, `uring`) get all of that from the one loop in
//! [`crate::event_loop`]: each is a [`crate::event_loop::Driver`] that holds only its IO (how it
//! lowers accept, receive, send, shut down the write side and close to syscalls or ring
//! operations). The pool backends (`tokio`, `tokio-uring`, `blocking`) run their runtimes' loops.

pub mod blocking;
pub mod epoll;
pub mod pool;
pub mod tokio;
pub mod tokio_uring;
pub mod uring;
