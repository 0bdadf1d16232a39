//! Connect failures: how long a slot waits before trying again, and what an error means.

use std::io;
use std::time::Duration;

use crate::args::RunConfig;

/// The longest wait before a failing slot connects again.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// The wait after a slot's first failed connect; it doubles with each failure after.
pub(super) const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// The wait before the next connect of a slot that failed `fails` times in a row.
pub(super) fn backoff(fails: u32) -> Duration {
    let f = fails.clamp(1, 8) - 1;
    (FIRST_BACKOFF * (1u32 << f)).min(MAX_BACKOFF)
}

/// A one-line description of a connect error with what to do about it.
pub fn describe_connect_error(e: &io::Error, cfg: &RunConfig) -> String {
    use rustix::io::Errno;
    let t = cfg.target;
    match Errno::from_io_error(e) {
        Some(Errno::CONNREFUSED) => format!("connection refused by {t}: is the server running?"),
        Some(Errno::NETUNREACH | Errno::HOSTUNREACH | Errno::NETDOWN | Errno::HOSTDOWN) => {
            format!("{t} is unreachable: {e}")
        }
        Some(Errno::ADDRNOTAVAIL | Errno::ADDRINUSE) => format!(
            "out of local ports for connections to {t} ({e}): add source addresses with --bind (e.g. --bind 127.0.0.1-127.0.0.8) or widen net.ipv4.ip_local_port_range"
        ),
        Some(Errno::MFILE | Errno::NFILE) => format!(
            "too many open files ({e}): raise the descriptor limit (`ulimit -n`) or use fewer --conns"
        ),
        _ => format!("connect to {t}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Errors;
    use clap::Parser;

    fn cfg() -> RunConfig {
        crate::args::Args::parse_from(["ringlab-client", "127.0.0.1:9"])
            .resolve()
            .expect("resolves")
    }

    #[test]
    fn connect_errors_are_classified_and_explained() {
        use rustix::io::Errno;
        let cfg = cfg();
        let mut e = Errors::default();
        for (errno, words) in [
            (Errno::CONNREFUSED, "refused"),
            (Errno::NETUNREACH, "unreachable"),
            (Errno::HOSTUNREACH, "unreachable"),
            (Errno::ADDRNOTAVAIL, "--bind"),
            (Errno::ADDRINUSE, "--bind"),
            (Errno::MFILE, "ulimit -n"),
        ] {
            let err = io::Error::from_raw_os_error(errno.raw_os_error());
            e.count_connect(&err);
            let msg = describe_connect_error(&err, &cfg);
            assert!(msg.contains(words), "{errno:?}: {msg}");
        }
        assert_eq!(e.connect_refused, 1);
        assert_eq!(e.connect_unreachable, 2);
        assert_eq!(e.connect_no_ports, 2);
        assert_eq!(e.connect_no_fds, 1);
        assert_eq!(e.connect(), 6);
        assert_eq!(e.data(), 0);
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(2), FIRST_BACKOFF * 2);
        assert_eq!(backoff(100), MAX_BACKOFF);
    }
}
