//! SSH and scp command lines, and the shell scripts run on the far side (quoted for `sh`).

use std::path::Path;
use std::process::Command;

/// Options every ssh and scp gets: never prompt (`BatchMode`), fail fast on an unreachable
/// host, notice a lost connection within a few seconds, no chatter on stderr.
const FIXED_FIRST: [&str; 2] = ["-o", "BatchMode=yes"];
const DEFAULTS: [&str; 8] = [
    "-o",
    "ConnectTimeout=5",
    "-o",
    "ServerAliveInterval=1",
    "-o",
    "ServerAliveCountMax=3",
    "-o",
    "LogLevel=ERROR",
];

/// `s` as one word for a POSIX shell: unchanged when it is made of safe characters only,
/// else in single quotes (a `'` inside becoming `'\''`).
pub fn quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Words joined into one shell command line, each quoted.
pub fn join<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One destination as `ssh` takes it, with the user's `--ssh-option`s.
#[derive(Clone, Debug)]
pub struct Ssh {
    pub dest: String,
    pub options: Vec<String>,
}

impl Ssh {
    /// The options: BatchMode first (it always holds), then the user's (ssh keeps the first
    /// value of an option, so theirs win over the defaults that follow).
    fn opts(&self) -> Vec<String> {
        let mut v: Vec<String> = FIXED_FIRST.iter().map(|s| s.to_string()).collect();
        for o in &self.options {
            v.push("-o".into());
            v.push(o.clone());
        }
        v.extend(DEFAULTS.iter().map(|s| s.to_string()));
        v
    }

    /// `ssh OPTIONS -T DEST -- SCRIPT`: the script is one argument, which the remote shell
    /// runs as it stands (its words quoted by whoever built it).
    pub fn argv(&self, script: &str) -> Vec<String> {
        let mut v = vec!["ssh".to_string()];
        v.extend(self.opts());
        v.extend(["-T".into(), self.dest.clone(), "--".into(), script.into()]);
        v
    }

    /// `scp OPTIONS -q LOCAL DEST:REMOTE` (`remote` must be a plain path: see [`plain_path`]).
    pub fn scp_argv(&self, local: &Path, remote: &str) -> Vec<String> {
        let mut v = vec!["scp".to_string()];
        v.extend(self.opts());
        v.push("-q".into());
        v.push(local.display().to_string());
        v.push(format!("{}:{remote}", self.dest));
        v
    }

    pub fn command(&self, script: &str) -> Command {
        to_command(&self.argv(script))
    }

    pub fn scp(&self, local: &Path, remote: &str) -> Command {
        to_command(&self.scp_argv(local, remote))
    }
}

fn to_command(argv: &[String]) -> Command {
    let mut c = Command::new(&argv[0]);
    c.args(&argv[1..]);
    c
}

/// Whether `p` is an absolute path scp and the remote shell take as it is.
pub fn plain_path(p: &str) -> bool {
    p.starts_with('/')
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

/// The script that runs `argv` on a host as a process of its own (its own session and process
/// group: `setsid`), bounded by `timeout` (so a lost SSH connection cannot leave it running),
/// output in `dir/name.out` and `.err`. `timeout --foreground`: without it GNU timeout passes a
/// signal on to its child and then to its whole process group, so the child gets a SIGTERM
/// twice, and ringlab-server takes a second one as "exit at once" (seen: exit 143 instead of a
/// drained 0, about one run in eight). It prints `pid=PID` (the group to kill), then, with
/// `ready` = (PREFIX, S), waits (up to S seconds, while the process lives) for a line starting
/// PREFIX in its output and prints it, then waits for the process and prints `exit=CODE`, the
/// last lines of its stderr as `err: ...`, and, when `tail_file` exists, `--file--` and that
/// file.
pub fn spawn_script(
    dir: &str,
    limit_s: u64,
    argv: &[String],
    name: &str,
    ready: Option<(&str, u64)>,
    tail_file: Option<&str>,
) -> String {
    let out = quote(&format!("{name}.out"));
    let err = quote(&format!("{name}.err"));
    let mut s = format!(
        "cd {} || exit 97\nsetsid timeout --foreground -k 5 {limit_s} {} </dev/null >{out} 2>{err} &\np=$!\necho \"pid=$p\"\n",
        quote(dir),
        join(argv)
    );
    if let Some((prefix, secs)) = ready {
        let pat = quote(&format!("^{prefix}"));
        let ticks = secs.max(1) * 20;
        s += &format!(
            "n=0\nuntil grep -q {pat} {out} 2>/dev/null; do\n  st=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null)\n  if [ -z \"$st\" ] || [ \"$st\" = Z ] || [ $n -ge {ticks} ]; then break; fi\n  n=$((n+1)); sleep 0.05\ndone\ngrep {pat} {out}\n"
        );
    }
    s += &format!("wait $p\necho \"exit=$?\"\ntail -n 5 {err} | sed 's/^/err: /'\n");
    if let Some(f) = tail_file {
        let f = quote(f);
        s += &format!("if [ -s {f} ]; then echo --file--; cat {f}; fi\n");
    }
    s
}

/// `argv` run with its soft descriptor limit raised to the hard one (as the bench raises its
/// own locally, for the processes it starts): `sh -c 'ulimit -n ...; exec "$@"' sh ARGV`.
pub fn raised(argv: &[String]) -> Vec<String> {
    let mut v: Vec<String> = [
        "sh",
        "-c",
        "ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec \"$@\"",
        "sh",
    ]
    .map(String::from)
    .to_vec();
    v.extend(argv.iter().cloned());
    v
}

/// Print the memory that grows with sockets, host-wide (/proc/meminfo's slab lines and
/// /proc/net/sockstat), and the descriptors and resident memory of processes `pids`.
pub fn mem_script(pids: &[u32]) -> String {
    format!(
        "grep -E '^(Slab|SUnreclaim):' /proc/meminfo\ncat /proc/net/sockstat\nn=0\nfor p in {}; do\n  n=$((n + $(ls /proc/$p/fd 2>/dev/null | wc -l)))\n  grep -h VmRSS /proc/$p/status 2>/dev/null\ndone\necho \"fds $n\"\n",
        pid_list(pids)
    )
}

/// `pids` as a shell word list.
fn pid_list(pids: &[u32]) -> String {
    pids.iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Stop the process groups `pids` (each a `setsid` leader): SIGTERM, then SIGKILL to those
/// still there after a second. Prints nothing; exits 0.
pub fn kill_script(pids: &[u32]) -> String {
    let list = pid_list(pids);
    format!(
        "for p in {list}; do kill -TERM -- -$p 2>/dev/null; done\nsleep 1\nfor p in {list}; do kill -KILL -- -$p 2>/dev/null; done\nexit 0\n"
    )
}

/// Runs nginx in the foreground on a server host, for [`super::session::Session::nginx`]:
/// `sh -c NGINX_SCRIPT sh DIR TEMPLATE [PORT]`. TEMPLATE is nginx.conf with `__DIR__` for DIR
/// and `__PORT__` for the port: PORT, or a random one from 20000-59999, tried again (up to 10
/// times) while nginx says the address is in use. Once nginx wrote its pid file (it has bound
/// its listener) and has a worker, prints `ready listen=0.0.0.0:PORT pid=WORKER`; SIGTERM
/// stops nginx (the `timeout` in front passes it on) and the script exits with nginx's code.
pub const NGINX_SCRIPT: &str = r#"d=$1; tmpl=$2; fixed=$3
ng=$(command -v nginx 2>/dev/null) || ng=/usr/sbin/nginx
[ -x "$ng" ] || { echo "nginx is not installed on this host (Debian: apt-get install nginx-light)" >&2; exit 127; }
mkdir -p "$d/logs" || exit 1
tries=0
while :; do
  tries=$((tries + 1))
  if [ -n "$fixed" ]; then port=$fixed; else port=$((20000 + $(od -An -N2 -tu2 /dev/urandom | tr -d ' ') % 40000)); fi
  printf '%s\n' "$tmpl" | sed -e "s|__DIR__|$d|g" -e "s|__PORT__|$port|g" > "$d/nginx.conf"
  rm -f "$d/nginx.pid"
  "$ng" -p "$d" -c "$d/nginx.conf" 2> "$d/start.err" &
  m=$!
  n=0
  while [ ! -s "$d/nginx.pid" ] && kill -0 $m 2>/dev/null && [ $n -lt 200 ]; do n=$((n + 1)); sleep 0.05; done
  if [ -s "$d/nginx.pid" ] && kill -0 $m 2>/dev/null; then break; fi
  kill $m 2>/dev/null; wait $m 2>/dev/null
  if [ -n "$fixed" ] || [ $tries -ge 10 ] || ! cat "$d/start.err" "$d/nginx-error.log" 2>/dev/null | grep -q 'in use'; then
    cat "$d/start.err" "$d/nginx-error.log" 2>/dev/null | grep -v '^\s*$' | tail -n 3 >&2
    exit 1
  fi
done
w=""
n=0
while [ -z "$w" ] && [ $n -lt 100 ]; do
  w=$(cat /proc/$m/task/$m/children 2>/dev/null | awk '{print $1}')
  [ -n "$w" ] || { n=$((n + 1)); sleep 0.05; }
done
[ -n "$w" ] || { echo "nginx started no worker" >&2; kill $m; exit 1; }
trap 'kill -TERM $m 2>/dev/null' TERM
echo "ready listen=0.0.0.0:$port pid=$w"
wait $m; rc=$?
if [ $rc -gt 128 ]; then wait $m; rc=$?; fi
exit $rc
"#;

/// Print the host's descriptor and port limits for [`super::HostLimits::parse`].
pub const LIMITS_SCRIPT: &str = "echo \"nofile_hard=$(ulimit -Hn)\"\necho \"nr_open=$(cat /proc/sys/fs/nr_open 2>/dev/null)\"\necho \"ports=$(cat /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null)\"\n";

/// Send SIGTERM to the process groups `pids`. Prints nothing; exits 0.
pub fn term_script(pids: &[u32]) -> String {
    format!(
        "for p in {}; do kill -TERM -- -$p 2>/dev/null; done\nexit 0\n",
        pid_list(pids)
    )
}

/// Record `cpu-clock` samples (with call graphs, on the realtime clock) on `cpus` from now
/// until `to_ms` (Unix ms on the host's clock) into `DIR/NAME.data` and print those from
/// `from_ms` to `to_ms` as `perf script -F pid,ip,sym,dso` ([`crate::profile::tally`] reads
/// them); when perf is missing or fails, one line `perf-failed: WHY` instead. Started ahead
/// of the window, so that the SSH connection's setup is not taken from it.
pub fn profile_script(dir: &str, name: &str, cpus: &str, from_ms: u64, to_ms: u64) -> String {
    let data = quote(&format!("{name}.data"));
    let err = quote(&format!("{name}.perr"));
    let secs = |ms: u64| format!("{}.{:03}", ms / 1000, ms % 1000);
    format!(
        "command -v perf >/dev/null 2>&1 || {{ echo \"perf-failed: perf is not installed on this host (Debian: apt-get install linux-perf)\"; exit 0; }}\ncd {} || exit 97\nms=$(( {to_ms} + 100 - $(date +%s%3N) ))\n[ $ms -gt 0 ] || ms=1\nif ! perf record -q -g -k realtime -e cpu-clock -C {} -o {data} -- sleep $((ms / 1000)).$(printf %03d $((ms % 1000))) >/dev/null 2>{err}; then\n  echo \"perf-failed: perf record: $(head -n 1 {err}) (kernel.perf_event_paranoid, or run as root)\"\n  rm -f {data} {err}\n  exit 0\nfi\nperf script -F pid,ip,sym,dso --time {},{} -i {data} 2>/dev/null\nrm -f {data} {err}\n",
        quote(dir),
        quote(cpus),
        secs(from_ms),
        secs(to_ms)
    )
}

/// Shell lines that set `v` (v1 or v2) and `root` to the cgroup hierarchy holding the `cpu`
/// controller, as [`crate::cgroup::find`] picks it (a v1 mount with `cpu` first), or print
/// `cap-failed: WHY` and exit 0.
const CGROUP_ROOT: &str = r#"m=$(awk '$3 == "cgroup" && $4 ~ /(^|,)cpu(,|$)/ { print "v1 " $2; exit }' /proc/self/mounts)
if [ -z "$m" ]; then
  for d in $(awk '$3 == "cgroup2" { print $2 }' /proc/self/mounts); do
    if grep -qw cpu "$d/cgroup.controllers" 2>/dev/null; then m="v2 $d"; break; fi
  done
fi
[ -n "$m" ] || { echo "cap-failed: no cgroup cpu controller is mounted"; exit 0; }
v=${m%% *}; root=${m#* }
"#;

/// Cap processes `pids` at `share` of one CPU in a new cgroup `name` (v1: `cpu.cfs_period_us`
/// = `period_us` and `cpu.cfs_quota_us` = `quota_us`; v2: `cpu.max`): prints `cgroup=DIR
/// (FILES)`, or `cap-failed: WHY` (exit 0 either way; a group made before a failure is left
/// for [`uncap_script`]).
pub fn cap_script(name: &str, period_us: u64, quota_us: u64, pids: &[u32]) -> String {
    let name = quote(name);
    format!(
        "{CGROUP_ROOT}g=\"$root\"/{name}\n[ \"$v\" = v2 ] && echo +cpu > \"$root/cgroup.subtree_control\" 2>/dev/null\nmkdir \"$g\" 2>/dev/null || {{ echo \"cap-failed: cannot create cgroup $g (root and a writable cgroup file system are needed)\"; exit 0; }}\nif [ \"$v\" = v1 ]; then\n  echo {period_us} > \"$g/cpu.cfs_period_us\" && echo {quota_us} > \"$g/cpu.cfs_quota_us\" && what=\"cpu.cfs_period_us = {period_us}, cpu.cfs_quota_us = {quota_us}\"\nelse\n  echo \"{quota_us} {period_us}\" > \"$g/cpu.max\" && what=\"cpu.max = {quota_us} {period_us}\"\nfi\n[ -n \"$what\" ] || {{ echo \"cap-failed: cannot write the quota in $g\"; exit 0; }}\nfor p in {}; do\n  echo $p > \"$g/cgroup.procs\" 2>/dev/null || {{ echo \"cap-failed: cannot move process $p into $g\"; exit 0; }}\ndone\necho \"cgroup=$g ($what)\"\n",
        pid_list(pids)
    )
}

/// Remove every cgroup whose name starts with `prefix` in the `cpu` hierarchy (what is left
/// in one goes back to the root group first). Prints `uncap-failed: DIR` for one that stays;
/// exits 0.
pub fn uncap_script(prefix: &str) -> String {
    format!(
        "{}for g in \"$root\"/{}*; do\n  [ -d \"$g\" ] || continue\n  for p in $(cat \"$g/cgroup.procs\" 2>/dev/null); do echo $p > \"$root/cgroup.procs\" 2>/dev/null; done\n  rmdir \"$g\" 2>/dev/null || {{ sleep 0.2; rmdir \"$g\" 2>/dev/null; }} || echo \"uncap-failed: $g\"\ndone\nexit 0\n",
        CGROUP_ROOT.replace("echo \"cap-failed: no cgroup cpu controller is mounted\"; ", ""),
        quote(prefix)
    )
}

/// The line [`at_instants`] prints between its two reads.
pub const AT_INSTANTS_MARK: &str = "--- at the second instant\n";

/// `body` run at `from_ms` and again at `to_ms` (Unix ms on the host's clock), its two outputs
/// parted by [`AT_INSTANTS_MARK`]: one SSH call started ahead of both instants, so that the
/// connection's setup is not taken from the window between them.
pub fn at_instants(body: &str, from_ms: u64, to_ms: u64) -> String {
    format!(
        "w() {{ d=$(( $1 * 1000000 - $(date +%s%N) )); if [ $d -gt 0 ]; then sleep \"$(( d / 1000000000 )).$(printf %09d $(( d % 1000000000 )))\"; fi; }}\nw {from_ms}\n{body}\nprintf '%s' {}\nw {to_ms}\n{body}\n",
        quote(AT_INSTANTS_MARK)
    )
}

/// Print the `cpuN` lines of `/proc/stat` and the clock tick, for the busy time of CPUs.
pub const STAT_SCRIPT: &str = "grep '^cpu[0-9]' /proc/stat\necho \"tck $(getconf CLK_TCK)\"\n";

/// Print what [`super::ProcRead::parse`] reads of processes `pids`: `/proc/PID/stat`, each
/// thread's run time and context switches, RSS, the clock tick and the host's time; with
/// `disk` = (major, minor), also that device's `/proc/diskstats` line as `disk LINE`.
pub fn proc_script(pids: &[u32], disk: Option<(u32, u32)>) -> String {
    let list = pid_list(pids);
    let disk = disk.map_or(String::new(), |(a, b)| {
        format!("awk '$1 == {a} && $2 == {b} {{ print \"disk \" $0 }}' /proc/diskstats\n")
    });
    format!(
        "for p in {list}; do\n  [ -r /proc/$p/stat ] || continue\n  echo \"stat $(cat /proc/$p/stat)\"\n  for t in /proc/$p/task/*; do\n    echo \"sched $(cut -d' ' -f1 $t/schedstat 2>/dev/null)\"\n    grep -h ctxt_switches $t/status\n  done\n  grep -h VmRSS /proc/$p/status\ndone\necho \"tck $(getconf CLK_TCK)\"\necho \"now $(date +%s%N)\"\n{disk}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    /// What `sh` makes of a command line: its words.
    fn words(line: &str) -> Vec<String> {
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!("for w in {line}; do printf '%s\\0' \"$w\"; done"))
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .split('\0')
            .filter(|w| !w.is_empty())
            .map(String::from)
            .collect()
    }

    #[test]
    fn quoting_survives_the_shell() {
        assert_eq!(quote("--conns"), "--conns");
        assert_eq!(quote("10.0.0.1:9527"), "10.0.0.1:9527");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        let nasty = [
            "plain",
            "two words",
            "it's",
            "$(reboot)",
            "`id`",
            "a\"b",
            "semi;colon",
            "glob*",
            "back\\slash",
            "new\nline",
            "'",
            "''",
        ];
        assert_eq!(words(&join(&nasty)), nasty);
    }

    /// NGINX_SCRIPT as a host runs it (here, locally): `sh -c SCRIPT sh DIR TEMPLATE [PORT]`.
    fn nginx_script(dir: &std::path::Path, port: &str) -> std::process::Child {
        let template = crate::peers::nginx_conf(
            std::path::Path::new("__DIR__"),
            0,
            "0.0.0.0:__PORT__",
            &crate::peers::NginxSite::hello(),
        );
        std::process::Command::new("sh")
            .args(["-c", NGINX_SCRIPT, "sh"])
            .arg(dir)
            .args([template.as_str(), port])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Whether nginx is here (else skipped, or a failure under RINGLAB_REQUIRE_PEERS).
    fn sh(script: &str) -> String {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }

    #[test]
    fn reads_come_at_their_two_instants_from_one_call() {
        // Started well before both: each read is made at its instant, not when called.
        let t0 = now_ms();
        let (from, to) = (t0 + 300, t0 + 700);
        let out = sh(&at_instants("echo \"at $(date +%s%3N)\"", from, to));
        let (a, b) = out.split_once(AT_INSTANTS_MARK).expect("two reads");
        let at = |t: &str| -> u64 { t.trim().strip_prefix("at ").unwrap().parse().unwrap() };
        let (a, b) = (at(a), at(b));
        assert!(
            a >= from && a < from + 150,
            "first read at {a}, asked {from}"
        );
        assert!(b >= to && b < to + 150, "second read at {b}, asked {to}");
        // An instant already past: read at once.
        let out = sh(&at_instants("echo x", 1, 2));
        assert_eq!(out, format!("x\n{AT_INSTANTS_MARK}x\n"));
    }

    #[test]
    fn a_server_is_capped_in_a_cgroup_and_the_group_removed() {
        let can =
            rustix::process::geteuid().is_root() && crate::cgroup::CpuCap::create(0.5).is_ok();
        if !can {
            assert!(
                std::env::var("RINGLAB_REQUIRE_NETADMIN").as_deref() != Ok("1"),
                "RINGLAB_REQUIRE_NETADMIN=1 but no cgroup cpu controller can be written"
            );
            eprintln!("skipped: not root, or no writable cgroup cpu controller");
            return;
        }
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let prefix = format!("ringlab-test-{}-cap", std::process::id());
        let (period, quota) = crate::cgroup::period_and_quota(0.25);
        let out = sh(&cap_script(
            &format!("{prefix}-1"),
            period,
            quota,
            &[child.id()],
        ));
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix("cgroup="))
            .unwrap_or_else(|| panic!("{out}"));
        let dir = line.split_whitespace().next().unwrap().to_string();
        assert!(line.contains(&quota.to_string()), "{line}");
        let procs = std::fs::read_to_string(format!("{dir}/cgroup.procs")).unwrap();
        assert!(
            procs
                .split_whitespace()
                .any(|p| p == child.id().to_string()),
            "{procs}"
        );
        // Removed, with its member back in the root group (still running).
        let out = sh(&uncap_script(&prefix));
        assert!(!out.contains("uncap-failed"), "{out}");
        assert!(!std::path::Path::new(&dir).exists(), "{dir} is still there");
        assert!(child.try_wait().unwrap().is_none());
        let _ = child.kill();
        let _ = child.wait();
        // A process that is not there: one line saying why, and the group goes too.
        let out = sh(&cap_script(
            &format!("{prefix}-2"),
            period,
            quota,
            &[u32::MAX - 1],
        ));
        assert!(out.starts_with("cap-failed: cannot move process"), "{out}");
        sh(&uncap_script(&prefix));
        assert!(!std::path::Path::new(&dir.replace("-cap-1", "-cap-2")).exists());
    }

    fn have_nginx() -> bool {
        let ok = crate::peers::nginx_installed();
        if !ok {
            assert!(
                std::env::var_os("RINGLAB_REQUIRE_PEERS").is_none(),
                "RINGLAB_REQUIRE_PEERS=1 but nginx is not installed"
            );
            eprintln!("nginx is not installed: skipped");
        }
        ok
    }

    #[test]
    fn the_nginx_script_says_ready_serves_and_stops_on_sigterm() {
        if !have_nginx() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("ringlab-nginx-sh-{}", std::process::id()));
        let mut child = nginx_script(&dir, "");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let port = line
            .strip_prefix("ready listen=0.0.0.0:")
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("not a ready line: {line:?}"))
            .to_string();
        let worker: u32 = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("pid="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no worker pid: {line:?}"));
        assert!(std::path::Path::new(&format!("/proc/{worker}")).exists());
        let mut c = std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        c.read_to_string(&mut resp).unwrap();
        assert!(
            resp.starts_with("HTTP/1.1 200") && resp.ends_with("Hello, World!"),
            "{resp}"
        );
        // A second one on the same port says why it cannot, in its last lines, and fails.
        let mut taken = nginx_script(&dir.join("second"), &port);
        let st = taken.wait().unwrap();
        let mut err = String::new();
        taken
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(st.code(), Some(1), "{err}");
        assert!(err.contains("in use"), "{err}");
        // SIGTERM (as the `timeout` in front passes it on) stops nginx, worker included.
        let st = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let st = child.wait().unwrap();
        assert_eq!(st.code(), Some(0));
        let gone = (0..100).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(20));
            !std::path::Path::new(&format!("/proc/{worker}")).exists()
        });
        assert!(gone, "nginx's worker {worker} outlived the script");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ssh_argv_has_batch_mode_first_and_the_script_as_one_word() {
        let s = Ssh {
            dest: "root@10.0.0.1".into(),
            options: vec!["IdentityFile=/tmp/k ey".into(), "Port=2222".into()],
        };
        let v = s.argv("echo 'a b'");
        assert_eq!(&v[..3], ["ssh", "-o", "BatchMode=yes"]);
        assert_eq!(
            &v[3..7],
            ["-o", "IdentityFile=/tmp/k ey", "-o", "Port=2222"]
        );
        assert!(v.contains(&"ConnectTimeout=5".to_string()));
        assert_eq!(
            &v[v.len() - 4..],
            ["-T", "root@10.0.0.1", "--", "echo 'a b'"]
        );
        let c = s.scp_argv(Path::new("/x/ringlab-client"), "/tmp/d/ringlab-client");
        assert_eq!(&c[..3], ["scp", "-o", "BatchMode=yes"]);
        assert_eq!(
            &c[c.len() - 2..],
            ["/x/ringlab-client", "root@10.0.0.1:/tmp/d/ringlab-client"]
        );
        assert!(plain_path("/tmp/ringlab-fleet-1-2-h0"));
        assert!(!plain_path("/tmp/a b"));
        assert!(!plain_path("relative"));
        assert!(!plain_path("/tmp/$(x)"));
    }

    #[test]
    fn spawn_script_quotes_the_command_and_reports_pid_and_exit() {
        let dir = std::env::temp_dir().join(format!("ringlab-fleet-ssh-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let argv: Vec<String> = [
            "sh",
            "-c",
            "echo \"ready x=$1\"; echo oops >&2; exit 3",
            "-",
            "it's",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let script = spawn_script(
            dir.to_str().unwrap(),
            10,
            &argv,
            "t",
            Some(("ready ", 15)),
            None,
        );
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("pid="), "{text}");
        assert_eq!(lines[1], "ready x=it's", "{text}");
        assert_eq!(lines[2], "exit=3", "{text}");
        assert_eq!(lines[3], "err: oops", "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
