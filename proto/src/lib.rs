//! ringlab-proto: the protocol logic every ringlab backend shares, with no IO at all.
//!
//! Nothing in this crate opens a socket, makes a syscall or reads a clock. A backend feeds a
//! [`Session`] the bytes it received and the current time (as a [`Now`] value), takes the bytes
//! the session wants sent, and asks it for its next deadline. That is the whole contract, and it
//! is what lets the io_uring and epoll twins differ only in how they move bytes.
//!
//! * [`Session`]: the server side of one connection (echo or HTTP/1.1).
//! * [`http`]: the HTTP/1.1 request parser and response writer (server side), and the request
//!   encoder and response parser (client side).
//! * [`files`]: what serving static files needs without IO (paths, ranges, dates, types), and
//!   the file operations a session asks its loop for.
//! * [`echo`]: the client side of echo: deterministic message framing and byte-exact
//!   verification.

pub mod echo;
pub mod files;
pub mod http;
mod session;

pub use session::{Action, Expired, Now, Proto, ServerConfig, Session};
