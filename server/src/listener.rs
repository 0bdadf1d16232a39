//! Listening sockets: one per loop with SO_REUSEPORT, or one shared by all loops.

use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};

/// Why listening failed, with what to do about it.
fn explain(addr: SocketAddr, e: io::Error) -> io::Error {
    use rustix::io::Errno;
    let hint = match Errno::from_io_error(&e) {
        Some(Errno::ADDRINUSE) => {
            "address already in use: another server listens there; choose another --listen port (port 0 picks a free one)"
        }
        Some(Errno::ACCESS) => "permission denied: ports below 1024 need CAP_NET_BIND_SERVICE",
        Some(Errno::ADDRNOTAVAIL) => "this host has no such address",
        Some(Errno::MFILE) => "out of file descriptors: raise `ulimit -n`",
        _ => "",
    };
    let sep = if hint.is_empty() { "" } else { ": " };
    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}{sep}{hint}"))
}

fn listener(addr: SocketAddr, reuseport: bool, backlog: i32) -> io::Result<Socket> {
    let s = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    if reuseport {
        s.set_reuse_port(true)?;
    }
    // Accepted sockets inherit TCP_NODELAY from the listener: no setsockopt per connection.
    s.set_tcp_nodelay(true)?;
    s.bind(&addr.into())?;
    s.listen(backlog)?;
    Ok(s)
}

/// Listeners for `loops` loops: `loops` SO_REUSEPORT sockets on one port, or one shared socket
/// handed to every loop. Returns them and the address actually bound (port 0 resolved).
pub fn listeners(
    addr: SocketAddr,
    loops: usize,
    shared: bool,
    backlog: i32,
) -> io::Result<(Vec<Arc<OwnedFd>>, SocketAddr)> {
    if addr.port() != 0 {
        // SO_REUSEPORT lets any socket of the same user join a port's group, so a second
        // server started on a busy port would silently take half its connections. A plain
        // bind fails with EADDRINUSE when anyone listens there: check that first.
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into()).map_err(|e| explain(addr, e))?;
    }
    let first = listener(addr, !shared, backlog).map_err(|e| explain(addr, e))?;
    let bound = first
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("listener has no inet address"))?;
    let first = Arc::new(OwnedFd::from(first));
    let mut out = vec![first.clone()];
    for _ in 1..loops {
        if shared {
            out.push(first.clone());
        } else {
            let s = listener(bound, true, backlog).map_err(|e| explain(bound, e))?;
            out.push(Arc::new(OwnedFd::from(s)));
        }
    }
    Ok((out, bound))
}

/// Take over listening sockets inherited from the first process of a `--processes` group
/// (`--listen-fds`). Returns them (one per loop, or one to share) and their address.
///
/// Why inheritance rather than each process binding its own SO_REUSEPORT sockets: the first
/// process binds every listener of the group, so the exclusive-bind probe above (no second
/// server may join a busy port) stays meaningful, port 0 is resolved once, and no process can
/// fail to bind after the others started. The workers never bind at all.
pub fn adopt_inherited(fds: &[i32]) -> io::Result<(Vec<Arc<OwnedFd>>, SocketAddr)> {
    use std::os::fd::{BorrowedFd, FromRawFd};
    let mut out: Vec<(i32, Arc<OwnedFd>)> = Vec::new();
    for &raw in fds {
        if let Some((_, fd)) = out.iter().find(|(r, _)| *r == raw) {
            let fd = fd.clone();
            out.push((raw, fd));
            continue;
        }
        if raw <= 2 {
            return Err(io::Error::other(format!(
                "--listen-fds {raw}: not an inherited listener"
            )));
        }
        // SAFETY: the borrow lives only for the two checks below, which fail with EBADF (and
        // change nothing) if `raw` is not an open descriptor.
        let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
        let listening = rustix::net::sockopt::socket_acceptconn(borrowed).unwrap_or(false);
        if !listening {
            return Err(io::Error::other(format!(
                "--listen-fds {raw}: not an inherited listening socket (this flag is internal to --processes)"
            )));
        }
        // Close it again on any further exec: it was inheritable only for our own exec.
        rustix::io::fcntl_setfd(borrowed, rustix::io::FdFlags::CLOEXEC)?;
        // SAFETY: `raw` is open and a listening socket (checked above), the first process
        // handed it to this process by number, and nothing else in this process owns it: this
        // runs once at start-up, before any other descriptor is wrapped, and duplicates in the
        // list share this one owner.
        let owned = Arc::new(unsafe { OwnedFd::from_raw_fd(raw) });
        out.push((raw, owned));
    }
    let first = out
        .first()
        .ok_or_else(|| io::Error::other("--listen-fds: no descriptor"))?;
    let addr = rustix::net::getsockname(&*first.1)?;
    let addr = SocketAddr::try_from(addr)
        .map_err(|_| io::Error::other("an inherited listener has no inet address"))?;
    Ok((out.into_iter().map(|(_, fd)| fd).collect(), addr))
}
