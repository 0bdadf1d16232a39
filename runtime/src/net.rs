//! Socket options the wrappers do not cover.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

/// `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2): a `bind(ADDR:0)` that follows takes the address but
/// leaves choosing the port to `connect`, which checks the whole 4-tuple for uniqueness.
///
/// Without it, each `bind(ADDR:0)` searches the bind table for a port nobody on ADDR holds,
/// which gets slower with every socket already bound there (measured: 50,000 bound connections
/// took 58–104 s to open, against ~3 s for 10,000), and limits ADDR to one range of ports for
/// every destination. Neither rustix nor socket2 wraps this option, hence libc.
pub fn set_bind_address_no_port(fd: impl AsFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: `fd` is a live descriptor for the duration of the call (borrowed); the kernel reads
    // exactly `size_of::<c_int>()` bytes from `&one`, a live local of that size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::from_ref(&one).cast::<libc::c_void>(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_without_port_then_connect_gets_a_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let s = rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
            None,
        )
        .unwrap();
        set_bind_address_no_port(&s).unwrap();
        let src: std::net::SocketAddr = "127.0.0.2:0".parse().unwrap();
        rustix::net::bind(&s, &src).unwrap();
        // Bound to the address, but no port yet.
        let local = rustix::net::getsockname(&s).unwrap();
        let local = std::net::SocketAddr::try_from(local).unwrap();
        assert_eq!(local.port(), 0, "{local}");
        rustix::net::connect(&s, &l.local_addr().unwrap()).unwrap();
        let local = std::net::SocketAddr::try_from(rustix::net::getsockname(&s).unwrap()).unwrap();
        assert_eq!(local.ip().to_string(), "127.0.0.2");
        assert_ne!(local.port(), 0);
    }
}
