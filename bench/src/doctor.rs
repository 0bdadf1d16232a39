//! `ringlab-bench doctor`: what this machine allows and what will hold a benchmark back.

use std::fmt::Write as _;

use io_uring::{opcode, IoUring};
use rustix::process::{getrlimit, Resource};

fn sysctl(path: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/sys/{path}"))
        .ok()
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn limit(r: Resource) -> (String, String) {
    let l = getrlimit(r);
    let f = |v: Option<u64>| v.map_or("unlimited".to_string(), |v| v.to_string());
    (f(l.current), f(l.maximum))
}

/// Report of the machine, with a line of advice for each thing that will hold a benchmark back.
pub fn doctor() -> String {
    let mut out = String::new();
    let mut advice: Vec<String> = Vec::new();
    let (major, minor, release) = ringlab_runtime::uring::kernel_version();
    let _ = writeln!(out, "kernel                {release}");

    // io_uring
    match ringlab_runtime::uring::check_available() {
        Ok(()) => {
            let _ = writeln!(
                out,
                "io_uring              usable (every technique the uring backend needs is there)"
            );
        }
        Err(e) => {
            let _ = writeln!(out, "io_uring              NOT usable: {e}");
            advice.push(format!("io_uring: {e}"));
        }
    }
    let _ = writeln!(
        out,
        "io_uring_disabled     {}",
        sysctl("kernel/io_uring_disabled")
            .unwrap_or_else(|| "n/a (sysctl absent: pre-6.6 kernel)".into())
    );
    if let Ok(ring) = IoUring::new(8) {
        let p = ring.params();
        let feats = [
            ("NODROP", p.is_feature_nodrop()),
            ("FAST_POLL", p.is_feature_fast_poll()),
            ("EXT_ARG", p.is_feature_ext_arg()),
            ("NATIVE_WORKERS", p.is_feature_native_workers()),
            ("RECVSEND_BUNDLE", p.is_feature_recvsend_bundle()),
            ("MIN_TIMEOUT", p.is_feature_min_timeout()),
            ("NO_IOWAIT", p.is_feature_no_iowait()),
        ];
        let names: Vec<String> = feats
            .iter()
            .map(|(n, ok)| format!("{n}{}", if *ok { "" } else { " (no)" }))
            .collect();
        let _ = writeln!(out, "features              {}", names.join(", "));
        let mut probe = io_uring::Probe::new();
        if ring.submitter().register_probe(&mut probe).is_ok() {
            let ops = [
                (opcode::AcceptMulti::CODE, "ACCEPT (multishot 5.19)"),
                (opcode::RecvMulti::CODE, "RECV (multishot 6.0)"),
                (opcode::Send::CODE, "SEND"),
                (opcode::SendZc::CODE, "SEND_ZC (6.0)"),
                (opcode::SendMsgZc::CODE, "SENDMSG_ZC (6.1)"),
                (opcode::Shutdown::CODE, "SHUTDOWN"),
                (opcode::Close::CODE, "CLOSE"),
                (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
                (opcode::FixedFdInstall::CODE, "FIXED_FD_INSTALL (6.8)"),
            ];
            let names: Vec<String> = ops
                .iter()
                .map(|(c, n)| format!("{n}{}", if probe.is_supported(*c) { "" } else { " (no)" }))
                .collect();
            let _ = writeln!(out, "opcodes               {}", names.join(", "));
        }
        type SetFlags = fn(&mut io_uring::Builder);
        let flags: [(&str, SetFlags); 4] = [
            ("SINGLE_ISSUER+DEFER_TASKRUN (6.1)", |b| {
                b.setup_single_issuer().setup_defer_taskrun();
            }),
            ("COOP_TASKRUN (5.19)", |b| {
                b.setup_coop_taskrun();
            }),
            ("SQPOLL", |b| {
                b.setup_sqpoll(1000);
            }),
            ("SUBMIT_ALL (5.18)", |b| {
                b.setup_submit_all();
            }),
        ];
        let names: Vec<String> = flags
            .iter()
            .map(|(n, f)| {
                let mut b = IoUring::builder();
                f(&mut b);
                format!("{n}{}", if b.build(8).is_ok() { "" } else { " (no)" })
            })
            .collect();
        let _ = writeln!(out, "setup flags           {}", names.join(", "));
    }
    switches(&mut out, &mut advice);
    if (major, minor) < (6, 1) {
        advice.push("kernel                older than 6.1: the uring backend needs DEFER_TASKRUN (6.1); use --io epoll or upgrade".into());
    }

    // Limits
    let (nofile_soft, nofile_hard) = limit(Resource::Nofile);
    let _ = writeln!(
        out,
        "ulimit -n             soft {nofile_soft}, hard {nofile_hard}"
    );
    let nofile: u64 = nofile_hard.parse().unwrap_or(u64::MAX);
    if nofile < 100_000 {
        advice.push(format!(
            "descriptors: hard limit {nofile_hard} caps one process at about that many connections (server) or client sockets; run several server processes on one port (SO_REUSEPORT) or raise it where allowed (`ulimit -n`, limits.conf)"
        ));
    }
    let (ml_soft, ml_hard) = limit(Resource::Memlock);
    let _ = writeln!(out, "ulimit -l             soft {ml_soft}, hard {ml_hard} (bytes; io_uring accounts ring memory to memcg since 5.12)");
    for (name, path) in [
        ("fs.nr_open", "fs/nr_open"),
        ("fs.file-max", "fs/file-max"),
        ("somaxconn", "net/core/somaxconn"),
        ("tcp_max_syn_backlog", "net/ipv4/tcp_max_syn_backlog"),
        ("ip_local_port_range", "net/ipv4/ip_local_port_range"),
        ("tcp_tw_reuse", "net/ipv4/tcp_tw_reuse"),
        ("rmem_max / wmem_max", "net/core/rmem_max"),
        ("busy_poll / busy_read", "net/core/busy_poll"),
    ] {
        let v = sysctl(path).unwrap_or_else(|| "n/a".into());
        let v = match name {
            "rmem_max / wmem_max" => {
                format!("{v} / {}", sysctl("net/core/wmem_max").unwrap_or_default())
            }
            "busy_poll / busy_read" => {
                format!("{v} / {}", sysctl("net/core/busy_read").unwrap_or_default())
            }
            _ => v,
        };
        let _ = writeln!(out, "{name:<22}{v}");
    }
    if let Some(v) = sysctl("net/core/somaxconn").and_then(|v| v.parse::<u64>().ok()) {
        if v < 4096 {
            advice.push(format!("net.core.somaxconn={v} truncates the listen backlog (ringlab asks 4096): `sysctl -w net.core.somaxconn=65535`"));
        }
    }
    if let Some(r) = sysctl("net/ipv4/ip_local_port_range") {
        let p: Vec<u64> = r
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        if p.len() == 2 && p[1] > p[0] {
            let n = p[1] - p[0] + 1;
            let _ = writeln!(
                out,
                "ephemeral ports       {n} per source address and destination"
            );
            if n < 50_000 {
                advice.push(format!("only {n} ephemeral ports per (source address, destination): for more client connections widen net.ipv4.ip_local_port_range or give the client several source addresses (ringlab-client --bind 127.0.0.1-127.0.0.8)"));
            }
        }
    }

    // CPUs
    let cpus = ringlab_runtime::cpus::available_cpus();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "CPUs                  {} available ({cpus}): {model}",
        cpus.len()
    );
    for c in cpus.ids() {
        let t = |f: &str| {
            std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{c}/topology/{f}"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "?".into())
        };
        let gov = std::fs::read_to_string(format!(
            "/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor"
        ))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "n/a (no cpufreq: a VM or fixed clock)".into());
        let _ = writeln!(
            out,
            "  cpu{c:<3}              package {}, core {}, siblings {}, governor {gov}",
            t("physical_package_id"),
            t("core_id"),
            t("thread_siblings_list")
        );
        if gov == "powersave" || gov == "ondemand" || gov == "schedutil" {
            advice.push(format!("cpu{c} governor {gov}: frequency changes add noise; `cpupower frequency-set -g performance` (scripts/tune.sh)"));
        }
    }
    if cpus.len() < 2 {
        advice
            .push("one CPU: server and client must share it; results measure both together".into());
    }
    let _ = writeln!(out, "\nadvice:");
    if advice.is_empty() {
        let _ = writeln!(out, "  nothing here will hold a benchmark back");
    }
    for a in advice {
        let _ = writeln!(out, "  - {a}");
    }
    out
}

/// Try each ringlab-server switch that needs a kernel feature, on a scratch ring or epoll
/// instance, and say whether it works here (and why not).
fn switches(out: &mut String, advice: &mut Vec<String>) {
    use ringlab_runtime::uring::{BufRing, PBUF_RING_INC};
    type Try = fn() -> std::io::Result<()>;
    let tries: [(&str, &str, Try); 7] = [
        ("--fixed-files", "5.19", || {
            let ring = IoUring::new(8)?;
            ring.submitter().register_files_sparse(16)
        }),
        ("--sqpoll", "5.11 unprivileged", || {
            IoUring::<io_uring::squeue::Entry>::builder()
                .setup_sqpoll(10)
                .build(8)
                .map(drop)
        }),
        ("--send-zc", "6.0", || {
            let ring = IoUring::new(8)?;
            let mut probe = io_uring::Probe::new();
            ring.submitter().register_probe(&mut probe)?;
            if probe.is_supported(opcode::SendZc::CODE) {
                Ok(())
            } else {
                Err(std::io::Error::other("IORING_OP_SEND_ZC not in the probe"))
            }
        }),
        ("--recv-bundle", "6.10", || {
            if IoUring::new(8)?.params().is_feature_recvsend_bundle() {
                Ok(())
            } else {
                Err(std::io::Error::other("no IORING_FEAT_RECVSEND_BUNDLE"))
            }
        }),
        ("--buf-incremental", "6.12", || {
            let ring = IoUring::new(8)?;
            BufRing::with_flags(&ring, 0, 4, 4096, PBUF_RING_INC).map(drop)
        }),
        ("--napi-busy-poll", "6.9", || {
            let ring = IoUring::new(8)?;
            let mut napi = io_uring::types::Napi::new().set_busy_poll_timeout(10);
            ring.submitter().register_napi(&mut napi)
        }),
        ("--busy-poll (epoll)", "6.9", || {
            ringlab_runtime::epoll::Epoll::new()?.set_busy_poll(10, 8, false)
        }),
    ];
    for (flag, needs, f) in tries {
        match f() {
            Ok(()) => {
                let _ = writeln!(out, "switch {flag:<20} works (Linux {needs})");
            }
            Err(e) => {
                let _ = writeln!(
                    out,
                    "switch {flag:<20} NOT available: {e} (needs Linux {needs})"
                );
                advice.push(format!(
                    "{flag}: not available here ({e}); its row in `ringlab-bench features` will fail"
                ));
            }
        }
    }
}
