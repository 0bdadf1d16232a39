//! `--netns`: the server and the client in two network namespaces joined by a veth pair.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The two "hosts" made by `scripts/netns.sh up`.
#[derive(Clone, Debug)]
pub struct Netns {
    pub server_ns: String,
    pub client_ns: String,
    /// The server's address on the veth link.
    pub server_ip: String,
}

impl Netns {
    /// The namespaces `scripts/netns.sh up` makes; an error naming the script if they are absent.
    pub fn check() -> Result<Netns> {
        let prefix = std::env::var("RINGLAB_NETNS_PREFIX").unwrap_or_else(|_| "ringlab".into());
        let n = Netns {
            server_ns: format!("{prefix}-srv"),
            client_ns: format!("{prefix}-cli"),
            server_ip: "10.77.0.1".into(),
        };
        let out = Command::new("ip")
            .args(["netns", "list"])
            .output()
            .context("running `ip netns list` (install iproute2)")?;
        let list = String::from_utf8_lossy(&out.stdout);
        for ns in [&n.server_ns, &n.client_ns] {
            if !list
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns.as_str()))
            {
                bail!("--netns: namespace {ns} does not exist; create the pair with `sudo scripts/netns.sh up` (and remove it afterwards with `scripts/netns.sh down`)");
            }
        }
        Ok(n)
    }

    /// `program` run inside namespace `ns`.
    pub fn command(ns: &str, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        c
    }
}
