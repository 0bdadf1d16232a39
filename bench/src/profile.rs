//! Where the server's CPU goes (`--profile`): `perf record -e cpu-clock` on the server's CPUs
//! over the measured window (a software event: it works where there are no hardware counters),
//! then every sample of the server's processes sorted into the areas an IO model can and cannot
//! change. The classifier ([`classify`], [`tally`]) is pure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde::Serialize;

/// Where a sample landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Area {
    /// Syscall entry and exit, and the generic syscall bodies (fd lookup, argument copies).
    Syscall,
    /// The readiness machinery: epoll_wait, ep_*, poll/select, the poll callbacks.
    Readiness,
    /// io_uring's own machinery: io_uring_enter, io_* task work, CQE posting, io-wq.
    Uring,
    /// The TCP/IP stack and the socket layer (tcp_*, ip_*, skb, loopback, the data copies).
    Tcp,
    /// User space: the server binary and its libraries.
    User,
    /// Everything else (scheduler, memory allocation, interrupts, unknown).
    Other,
}

impl Area {
    pub const ALL: [Area; 6] = [
        Area::Syscall,
        Area::Readiness,
        Area::Uring,
        Area::Tcp,
        Area::User,
        Area::Other,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Area::Syscall => "syscall entry/exit",
            Area::Readiness => "readiness (epoll/poll)",
            Area::Uring => "io_uring machinery",
            Area::Tcp => "TCP/IP stack",
            Area::User => "user code",
            Area::Other => "other",
        }
    }
}

/// The area of a sample in `sym` (`kernel`: a kernel address).
pub fn classify(sym: &str, kernel: bool) -> Area {
    if !kernel {
        return Area::User;
    }
    let s = sym.trim_start_matches('_');
    let starts = |ps: &[&str]| ps.iter().any(|p| s.starts_with(p));
    // Order matters: the specific syscalls (epoll_wait, io_uring_enter) before the generic
    // entry code, and tcp_poll / sock_poll (readiness callbacks) before the TCP stack.
    if s.contains("io_uring") || starts(&["io_", "tctx_task_work", "io_wq", "io_worker"]) {
        if s.starts_with("io_schedule") {
            return Area::Other;
        }
        return Area::Uring;
    }
    if s.contains("epoll")
        || starts(&[
            "ep_",
            "do_poll",
            "do_sys_poll",
            "x64_sys_poll",
            "x64_sys_ppoll",
            "do_select",
            "core_sys_select",
            "x64_sys_select",
            "x64_sys_pselect",
            "pollwake",
            "pollwait",
            "poll_",
            "sock_poll",
            "tcp_poll",
        ])
    {
        return Area::Readiness;
    }
    if starts(&[
        "entry_SYSCALL",
        "entry_SYSRET",
        "do_syscall",
        "syscall_",
        "x64_sys_",
        "se_sys_",
        "do_sys_",
        "x64_sys_call",
        "exit_to_user_mode",
        "syscall_exit",
        "fdget",
        "fget",
        "fput",
        "sockfd_lookup",
        "sys_recvfrom",
        "sys_sendto",
        "sys_recvmsg",
        "sys_sendmsg",
        "sys_accept",
        "import_single_range",
        "import_ubuf",
        "rseq_",
        "syscall_return",
    ]) {
        return Area::Syscall;
    }
    if starts(&[
        "tcp",
        "ip_",
        "ipv4_",
        "ipv6_",
        "ip6_",
        "inet",
        "sk_",
        "sock_",
        "skb_",
        "kfree_skb",
        "consume_skb",
        "alloc_skb",
        "napi_",
        "dev_",
        "netif_",
        "net_rx",
        "process_backlog",
        "loopback",
        "validate_xmit",
        "neigh_",
        "nf_",
        "raw_v4",
        "csum_",
        "lock_sock",
        "release_sock",
        "copy_to_iter",
        "copy_from_iter",
        "copy_user",
        "rep_movs",
        "simple_copy_to_iter",
        "skb",
        "netdev",
        "qdisc",
        "sch_",
        "dst_",
    ]) {
        return Area::Tcp;
    }
    Area::Other
}

/// Samples per area of the server's processes, out of every sample on its CPUs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Breakdown {
    pub samples: u64,
    /// Samples on the server's CPUs that were not the server (idle, other processes).
    pub not_server: u64,
    /// Of `not_server`: the idle task's (pid 0), and of those the ones not in the halt itself
    /// (entering and leaving idle: the governor, tick stop and restart).
    pub idle: u64,
    pub idle_transitions: u64,
    /// Server samples with the scheduler or a timer anywhere on the stack (going to sleep,
    /// being woken, arming the wait's timer): the price of the idle/wake cycle inside the server.
    pub sleep_wake: u64,
    pub by_area: Vec<(Area, u64)>,
    /// The heaviest leaf symbols and their samples.
    pub top: Vec<(String, u64)>,
    /// Why there is no profile (perf missing, not permitted, ...), if there is none.
    pub note: Option<String>,
}

impl Breakdown {
    /// The share of the server's samples in `areas`, 0..=1.
    pub fn share(&self, areas: &[Area]) -> f64 {
        let n: u64 = self
            .by_area
            .iter()
            .filter(|(a, _)| areas.contains(a))
            .map(|x| x.1)
            .sum();
        if self.samples == 0 {
            0.0
        } else {
            n as f64 / self.samples as f64
        }
    }

    /// The share an IO model could remove at most: syscall entry/exit and readiness.
    pub fn ceiling(&self) -> f64 {
        self.share(&[Area::Syscall, Area::Readiness])
    }
}

/// Whether `sym` (a kernel symbol) is the scheduler or the timers that a sleep and a wake-up go
/// through.
pub fn is_sleep_wake(sym: &str) -> bool {
    let s = sym.trim_start_matches('_');
    [
        "schedule",
        "try_to_wake_up",
        "ttwu_",
        "wake_up_q",
        "enqueue_task",
        "dequeue_task",
        "pick_next",
        "put_prev",
        "set_next_task",
        "finish_task_switch",
        "context_switch",
        "switch_to",
        "switch_mm",
        "hrtimer_",
        "do_nanosleep",
        "update_curr",
        "psi_",
        "select_task_rq",
        "check_preempt",
    ]
    .iter()
    .any(|p| s.starts_with(p))
}

/// Whether `sym` is where an idle CPU actually waits (the halt), not its way in or out.
fn is_halt(sym: &str) -> bool {
    let s = sym.trim_start_matches('_');
    [
        "pv_native_safe_halt",
        "native_safe_halt",
        "default_idle",
        "mwait_idle",
        "intel_idle",
        "acpi_idle",
        "cpu_idle_poll",
    ]
    .iter()
    .any(|p| s.starts_with(p))
}

/// One frame of a sample: a kernel address or not, and its symbol.
type Frame = (bool, String);

/// `IP SYMBOL (DSO)` (the symbol may hold spaces, `+0x..` offsets are dropped).
fn frame(text: &str) -> Option<Frame> {
    let text = text.trim();
    let (ip, rest) = text.split_once(char::is_whitespace)?;
    let kernel = u64::from_str_radix(ip, 16).ok()? >= 0xffff_8000_0000_0000;
    let rest = rest.trim();
    let sym = rest.rfind(" (").map_or(rest, |i| rest[..i].trim());
    let sym = sym.split("+0x").next().unwrap_or(sym);
    Some((kernel, sym.to_string()))
}

/// The samples of `perf script -F pid,ip,sym,dso`: `PID IP SYMBOL (DSO)` per line, or with a
/// call graph (`perf record -g`) a `PID` line followed by tab-indented frames, leaf first.
fn samples(script: &str) -> Vec<(u32, Vec<Frame>)> {
    let mut out: Vec<(u32, Vec<Frame>)> = Vec::new();
    let mut open = false;
    for line in script.lines() {
        if line.trim().is_empty() {
            open = false;
        } else if line.starts_with('\t') {
            if let (true, Some(s), Some(f)) = (open, out.last_mut(), frame(line)) {
                s.1.push(f);
            }
        } else {
            let t = line.trim_start();
            let (pid, rest) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
            open = match pid.parse() {
                Ok(pid) => {
                    out.push((pid, frame(rest).into_iter().collect()));
                    true
                }
                Err(_) => false,
            };
        }
    }
    out
}

/// The area of a sample: its leaf's, or where the leaf is generic (a lock, an allocation, the
/// scheduler: [`Area::Other`]) the first caller's with an area of its own: a spin lock taken to
/// wake an epoll waiter is readiness machinery, one taken to queue a packet is the TCP stack.
/// (In a VM `cpu-clock` is a timer interrupt, not an NMI, so every sample taken while
/// interrupts were off lands on the `_irqrestore` that turns them back on: without the
/// callers, that one symbol would hold a fifth of the samples.)
pub fn area_of(frames: &[Frame]) -> Area {
    frames
        .iter()
        .map(|(k, s)| classify(s, *k))
        .find(|a| *a != Area::Other)
        .unwrap_or(Area::Other)
}

/// Tally `perf script -F pid,ip,sym,dso` output (see [`samples`]) for the processes `pids`.
pub fn tally(script: &str, pids: &[u32]) -> Breakdown {
    let mut areas: HashMap<Area, u64> = HashMap::new();
    let mut syms: HashMap<String, u64> = HashMap::new();
    let mut b = Breakdown::default();
    for (pid, frames) in samples(script) {
        if !pids.contains(&pid) {
            b.not_server += 1;
            if pid == 0 {
                b.idle += 1;
                if !frames.first().is_some_and(|f| is_halt(&f.1)) {
                    b.idle_transitions += 1;
                }
            }
            continue;
        }
        if frames.iter().any(|(k, s)| *k && is_sleep_wake(s)) {
            b.sleep_wake += 1;
        }
        let a = area_of(&frames);
        b.samples += 1;
        *areas.entry(a).or_default() += 1;
        let leaf = frames.first().map_or("[unknown]", |f| f.1.as_str());
        *syms.entry(leaf.to_string()).or_default() += 1;
    }
    b.by_area = Area::ALL
        .iter()
        .map(|a| (*a, areas.get(a).copied().unwrap_or(0)))
        .collect();
    let mut top: Vec<(String, u64)> = syms.into_iter().collect();
    top.sort_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
    top.truncate(12);
    b.top = top;
    b
}

/// The breakdown of `perf script` output from another host ([`crate::fleet`]'s profile script):
/// the samples of `pids`, or the one line saying why there are none.
pub fn from_remote(out: &str, pids: &[u32]) -> Breakdown {
    match out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("perf-failed: "))
    {
        Some(why) => Breakdown {
            note: Some(why.trim().to_string()),
            ..Breakdown::default()
        },
        None => tally(out, pids),
    }
}

/// A `perf record` in progress.
pub struct Recording {
    child: Result<Child, String>,
    data: PathBuf,
}

/// Start recording `cpu-clock` samples on `cpus` for `secs` into `data`.
pub fn record(data: &Path, cpus: &str, secs: f64) -> Recording {
    let child = if !crate::procs::have("perf") {
        Err("perf is not installed (apt-get install linux-tools-common or your distribution's perf)".into())
    } else {
        Command::new("perf")
            .args(["record", "-q", "-g", "-e", "cpu-clock", "-C", cpus, "-o"])
            .arg(data)
            .args(["--", "sleep", &format!("{secs:.3}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting perf: {e}"))
    };
    Recording {
        child,
        data: data.to_path_buf(),
    }
}

impl Recording {
    /// Wait for perf and sort the samples of `pids`.
    pub fn finish(self, pids: &[u32]) -> Breakdown {
        let failed = |note: String| Breakdown {
            note: Some(note),
            ..Breakdown::default()
        };
        let out = match self.child.map(Child::wait_with_output) {
            Err(e) => return failed(e),
            Ok(Err(e)) => return failed(format!("perf record: {e}")),
            Ok(Ok(o)) => o,
        };
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let first = err.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            return failed(format!(
                "perf record failed ({}): {first} (kernel.perf_event_paranoid, or run as root)",
                out.status
            ));
        }
        let script = Command::new("perf")
            .args(["script", "-F", "pid,ip,sym,dso", "-i"])
            .arg(&self.data)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        let _ = std::fs::remove_file(&self.data);
        match script {
            Ok(o) if o.status.success() => tally(&String::from_utf8_lossy(&o.stdout), pids),
            Ok(o) => failed(format!("perf script failed ({})", o.status)),
            Err(e) => failed(format!("perf script: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_symbols_fall_in_their_areas() {
        let k = |s| classify(s, true);
        for s in [
            "entry_SYSCALL_64",
            "do_syscall_64",
            "syscall_exit_to_user_mode",
            "__x64_sys_recvfrom",
            "__sys_sendto",
            "__fget_light",
            "fput",
        ] {
            assert_eq!(k(s), Area::Syscall, "{s}");
        }
        for s in [
            "do_epoll_wait",
            "__x64_sys_epoll_wait",
            "ep_poll_callback",
            "ep_send_events",
            "tcp_poll",
            "sock_poll",
            "do_sys_poll",
        ] {
            assert_eq!(k(s), Area::Readiness, "{s}");
        }
        for s in [
            "__x64_sys_io_uring_enter",
            "io_submit_sqes",
            "io_recv",
            "__io_run_local_work",
            "io_req_task_complete",
            "tctx_task_work",
            "io_wq_worker",
        ] {
            assert_eq!(k(s), Area::Uring, "{s}");
        }
        for s in [
            "tcp_sendmsg_locked",
            "__tcp_transmit_skb",
            "ip_finish_output2",
            "__dev_queue_xmit",
            "loopback_xmit",
            "skb_release_data",
            "__netif_receive_skb_core",
            "_copy_to_iter",
            "sock_recvmsg",
        ] {
            assert_eq!(k(s), Area::Tcp, "{s}");
        }
        for s in [
            "__schedule",
            "kmem_cache_alloc_node",
            "io_schedule",
            "[unknown]",
        ] {
            assert_eq!(k(s), Area::Other, "{s}");
        }
        assert_eq!(
            classify("ringlab_proto::session::Session::input", false),
            Area::User
        );
        assert_eq!(classify("__memmove_avx_unaligned_erms", false), Area::User);
    }

    const SCRIPT: &str = "\
    42 ffffffff8226e079 entry_SYSCALL_64 ([kernel.kallsyms])
    42 ffffffff8226e079 do_epoll_wait ([kernel.kallsyms])
    42 ffffffff8226e079 tcp_sendmsg_locked ([kernel.kallsyms])
    42 ffffffff8226e079 tcp_sendmsg_locked ([kernel.kallsyms])
    42 ffffffff8226e079 tcp_recvmsg ([kernel.kallsyms])
    42     55d0c0ffee00 <core::slice::iter::Iter<T> as core::iter::Iterator>::position (/x/ringlab-server)
    43     55d0c0ffee00 ringlab_proto::echo::x (/x/ringlab-server)
     0 ffffffff8225f8ab pv_native_safe_halt ([kernel.kallsyms])
  1234 ffffffff8225f8ab __schedule ([kernel.kallsyms])
garbage line
";

    const CALLGRAPH: &str = "\
 42 \n\tffffffff8226e079 _raw_spin_unlock_irqrestore ([kernel.kallsyms])
\tffffffff8226e000 try_to_wake_up ([kernel.kallsyms])
\tffffffff8226e100 ep_poll_callback ([kernel.kallsyms])
\tffffffff8226e200 sock_def_readable ([kernel.kallsyms])

 42 \n\tffffffff8226e079 _raw_spin_unlock_irqrestore ([kernel.kallsyms])
\tffffffff8226e300 __alloc_skb ([kernel.kallsyms])

 42 \n\tffffffff8226e079 __schedule ([kernel.kallsyms])
\t    55d0c0ffee00 main (/x/ringlab-server)

 42 \n\tffffffff8226e079 __schedule ([kernel.kallsyms])

 7 \n\tffffffff8225f8ab pv_native_safe_halt ([kernel.kallsyms])

 0 \n\tffffffff8225f8ab pv_native_safe_halt ([kernel.kallsyms])
\tffffffff8225f000 default_idle ([kernel.kallsyms])

 0 \n\tffffffff8225f8ab _raw_spin_unlock_irqrestore ([kernel.kallsyms])
\tffffffff8225f100 hrtimer_start_range_ns ([kernel.kallsyms])
\tffffffff8225f200 tick_nohz_idle_stop_tick ([kernel.kallsyms])
";

    #[test]
    fn a_generic_leaf_takes_its_callers_area() {
        let b = tally(CALLGRAPH, &[42]);
        assert_eq!((b.samples, b.not_server), (4, 3));
        // pid 0 is idle: one sample in the halt, one on the way into idle.
        assert_eq!((b.idle, b.idle_transitions), (2, 1));
        // The server's samples with the scheduler on the stack: the wake-up and both __schedule.
        assert_eq!(b.sleep_wake, 3);
        let n = |a| b.by_area.iter().find(|x| x.0 == a).unwrap().1;
        assert_eq!(n(Area::Readiness), 1, "woken through ep_poll_callback");
        assert_eq!(n(Area::Tcp), 1, "allocating an skb");
        assert_eq!(n(Area::User), 1);
        assert_eq!(n(Area::Other), 1, "nothing specific above it");
        assert_eq!(b.top[0], ("__schedule".into(), 2));
    }

    #[test]
    fn a_remote_profile_is_tallied_or_says_why_there_is_none() {
        let b = from_remote("perf-failed: perf is not installed on this host\n", &[7]);
        assert_eq!(
            b.note.as_deref(),
            Some("perf is not installed on this host")
        );
        assert_eq!(b.samples, 0);
        let script = "7 ffffffff81000000 tcp_sendmsg ([kernel.kallsyms])\n0 ffffffff81000001 pv_native_safe_halt ([kernel.kallsyms])\n";
        let b = from_remote(script, &[7]);
        assert_eq!((b.samples, b.not_server, b.idle), (1, 1, 1));
        assert!(b.note.is_none());
    }

    #[test]
    fn tallies_only_the_servers_samples() {
        let b = tally(SCRIPT, &[42, 43]);
        assert_eq!(b.samples, 7);
        assert_eq!(b.not_server, 2);
        let n = |a| b.by_area.iter().find(|x| x.0 == a).unwrap().1;
        assert_eq!(n(Area::Tcp), 3);
        assert_eq!(n(Area::User), 2);
        assert_eq!((n(Area::Syscall), n(Area::Readiness)), (1, 1));
        assert!((b.ceiling() - 2.0 / 7.0).abs() < 1e-12);
        assert_eq!(b.top[0], ("tcp_sendmsg_locked".into(), 2));
        assert!(b
            .top
            .iter()
            .any(|t| t.0 == "<core::slice::iter::Iter<T> as core::iter::Iterator>::position"));
        assert_eq!(tally("", &[1]).ceiling(), 0.0);
    }
}
