#!/usr/bin/env bash
# Fleet mode end to end on one machine: three "hosts" made of network namespaces joined by a
# bridge (one server, two clients), each running its own sshd with a host key and a client key
# made for the demo in a temp dir; ringlab-bench runs from a fourth namespace (the one holding
# the bridge) and drives them over SSH. Nothing leaves the namespaces made here.
#
#   scripts/fleet-demo.sh [--kill-client-sshd] [--server-fails] [--interrupt]
#                         [--scenario 'NAME ARGS...'] [--bin-dir DIR] [--reports DIR]
#                         [-- EXTRA BENCH ARGS]
#
# --reports DIR: the reports of phases 1 and 4 (report.md, results.json, fleet.json) are copied
# to DIR/phase1, DIR/phase4-K before the demo's temp dir goes.
#
# Phase 1: `ringlab-bench compare --quick` across the hosts (--client-processes 2); checks that
# for every run the merged client response count equals the server's request count
# (fleet.json), and prints the per-host tables.
# Phase 2 (--kill-client-sshd): a longer run; one client host's sshd (listener and sessions)
# is killed mid-run; the bench must end with one line naming that host, and no ringlab process
# may be left in any namespace.
# Phase 3 (--server-fails): the server cannot start on its host (--server-port 22: the port of
# that host's sshd, taken); the bench must end non-zero with one line naming the server host
# and the cause, nothing left running, no remote directory left.
# Phase 4 (--scenario 'NAME ARGS', repeatable): another scenario across the hosts (e.g.
# 'multiplex --quick', 'http --quick', 'c10k --quick --conns 2000', 'files --quick'); every
# run whose clients count each response (not wrk's) must have the server's count equal to the
# clients' plus the idle-connection holders' checking echoes. files keeps its data set on the
# server host (REMOTE_DIR/ringlab-files-data*) for the next run: the only thing left there.
# Phase 5 (--interrupt): SIGTERM to ringlab-bench while its clients run; it must exit 143 with
# its "interrupted" line, every remote process stopped within 5 s (not at its remote timeout,
# a minute away), no remote directory left. Phases run in the order 1, 4, 3, 5, 2 (phase 2
# leaves a client host without its sshd).
# Everything (namespaces, bridge, sshd processes, temp dir) is removed on exit, failure
# included. Needs root, iproute2, openssh-server and jq (both installed with apt-get if missing).
# Names: RINGLAB_FLEET_PREFIX (default rlfleet); addresses 10.78.0.0/24.
set -euo pipefail

prefix="${RINGLAB_FLEET_PREFIX:-rlfleet}"
kill_phase=0
fail_phase=0
int_phase=0
scenarios=()
bin_dir=""
reports=""
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --kill-client-sshd) kill_phase=1; shift ;;
    --server-fails) fail_phase=1; shift ;;
    --interrupt) int_phase=1; shift ;;
    --scenario) scenarios+=("${2:?--scenario needs a scenario and its arguments}"); shift 2 ;;
    --bin-dir) bin_dir="${2:?--bin-dir needs a directory}"; shift 2 ;;
    --reports) reports="${2:?--reports needs a directory}"; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0"; exit 0 ;;
    *) echo "fleet-demo.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

die() { echo "fleet-demo.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (network namespaces)"
command -v ip >/dev/null || die "ip not found: install iproute2"
here="$(cd "$(dirname "$0")/.." && pwd)"
[ -n "$bin_dir" ] || bin_dir="$here/target/release"
bench="$bin_dir/ringlab-bench"
for b in ringlab-bench ringlab-server ringlab-client; do
  [ -x "$bin_dir/$b" ] || die "$bin_dir/$b not found: cargo build --release (or --bin-dir)"
done
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v jq >/dev/null || need+=(jq)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
command -v ssh-keygen >/dev/null || die "ssh-keygen not found (openssh-client)"

ctl="$prefix-ctl"
names=(srv c1 c2)
addrs=(10.78.0.1 10.78.0.2 10.78.0.3)
exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }
for n in ctl "${names[@]}"; do
  exists "$prefix-$n" && die "namespace $prefix-$n exists (another demo running, or left over: ip netns del $prefix-$n)"
done

tmp="$(mktemp -d /tmp/ringlab-fleet-demo.XXXXXX)"
sshd_pids=()
made_run_sshd=0
bench_pid=""

# Processes in namespace $1 whose command is $2 (by PID).
ns_procs() {
  local ns="$1" comm="$2" p
  exists "$ns" || return 0
  for p in $(ip netns pids "$ns" 2>/dev/null); do
    [ "$(cat /proc/"$p"/comm 2>/dev/null)" = "$comm" ] && echo "$p"
  done
  return 0
}
# The cgroups a capped server was put in on the server host (the clients scenario).
cgroups_left() {
  find /sys/fs/cgroup -maxdepth 3 -type d -name 'ringlab-fleet-*-cap-*' 2>/dev/null || true
}

ringlab_left() {
  local n
  for n in "${names[@]}"; do
    ns_procs "$prefix-$n" ringlab-client
    ns_procs "$prefix-$n" ringlab-server
    ns_procs "$prefix-$n" ringlab-bench
    ns_procs "$prefix-$n" wrk
    ns_procs "$prefix-$n" timeout
  done
}

# Wait (up to $2 tenths of a second, while the bench runs) for a ringlab-client in namespace $1.
client_appears() {
  local i
  for i in $(seq "$2"); do
    [ -n "$(ns_procs "$1" ringlab-client)" ] && return 0
    kill -0 "$bench_pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

cleanup() {
  local rc=$? p n
  set +e
  [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null && wait "$bench_pid" 2>/dev/null
  left="$(ringlab_left)"
  if [ -n "$left" ]; then
    echo "fleet-demo.sh: cleanup: stopping leftover processes $left" >&2
    kill $left 2>/dev/null
    [ $rc = 0 ] && rc=1
  fi
  for p in "${sshd_pids[@]}"; do kill "$p" 2>/dev/null; done
  # The sshd session processes forked by those listeners, by PID.
  for n in "${names[@]}"; do
    for p in $(ns_procs "$prefix-$n" sshd); do kill "$p" 2>/dev/null; done
  done
  for p in "${sshd_pids[@]}"; do wait "$p" 2>/dev/null; done
  for n in ctl "${names[@]}"; do exists "$prefix-$n" && ip netns del "$prefix-$n"; done
  [ $made_run_sshd = 1 ] && rmdir /run/sshd 2>/dev/null
  rm -rf "$tmp"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The network: a bridge in the control namespace, one veth to each host namespace.
ip netns add "$ctl"
ip -n "$ctl" link set lo up
ip -n "$ctl" link add br0 type bridge
ip -n "$ctl" addr add 10.78.0.254/24 dev br0
ip -n "$ctl" link set br0 up
for i in 0 1 2; do
  ns="$prefix-${names[$i]}"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add "rlf$$-$i" type veth peer name "rlfb$$-$i"
  ip link set "rlf$$-$i" netns "$ns"
  ip link set "rlfb$$-$i" netns "$ctl"
  ip -n "$ns" link set "rlf$$-$i" name eth0
  ip -n "$ns" addr add "${addrs[$i]}/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ctl" link set "rlfb$$-$i" master br0
  ip -n "$ctl" link set "rlfb$$-$i" up
done

# Keys made for the demo: one host key for the three sshds, one client key.
ssh-keygen -q -t ed25519 -N '' -C ringlab-fleet-host -f "$tmp/host_key"
ssh-keygen -q -t ed25519 -N '' -C ringlab-fleet-client -f "$tmp/id"
cp "$tmp/id.pub" "$tmp/authorized_keys"
echo "$(IFS=,; echo "${addrs[*]}") $(cat "$tmp/host_key.pub")" > "$tmp/known_hosts"
if [ ! -d /run/sshd ]; then mkdir -p /run/sshd; chmod 755 /run/sshd; made_run_sshd=1; fi
for i in 0 1 2; do
  cfg="$tmp/sshd-${names[$i]}.conf"
  cat > "$cfg" <<EOF
ListenAddress ${addrs[$i]}
Port 22
HostKey $tmp/host_key
PidFile none
AuthorizedKeysFile $tmp/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 100
MaxSessions 100
Subsystem sftp /usr/lib/openssh/sftp-server
LogLevel ERROR
EOF
  # nsenter --net, not `ip netns exec`: the latter also gives the process a mount namespace
  # with /sys mounted anew, without the cgroup file systems, and the clients scenario caps the
  # server in a cgroup on its host.
  nsenter --net="/run/netns/$prefix-${names[$i]}" /usr/sbin/sshd -D -e -f "$cfg" 2>>"$tmp/sshd-${names[$i]}.log" &
  sshd_pids+=($!)
done

sshopts=(--ssh-option "IdentityFile=$tmp/id" --ssh-option IdentitiesOnly=yes
         --ssh-option "UserKnownHostsFile=$tmp/known_hosts" --ssh-option GlobalKnownHostsFile=/dev/null
         --ssh-option StrictHostKeyChecking=yes)
for a in "${addrs[@]}"; do
  ok=0
  for _ in $(seq 50); do
    if ip netns exec "$ctl" ssh -o BatchMode=yes -o ConnectTimeout=2 -i "$tmp/id" -o IdentitiesOnly=yes \
        -o UserKnownHostsFile="$tmp/known_hosts" -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes \
        -o LogLevel=ERROR "root@$a" true 2>/dev/null; then ok=1; break; fi
    sleep 0.1
  done
  [ $ok = 1 ] || die "sshd on $a does not answer: $(cat "$tmp"/sshd-*.log)"
done
echo "fleet-demo: hosts up: server root@${addrs[0]}, clients root@${addrs[1]}, root@${addrs[2]} (namespaces $prefix-*)"

mkdir -p "$tmp/remote"
common=(--server-host "root@${addrs[0]}" --client-hosts "root@${addrs[1]},root@${addrs[2]}"
        "${sshopts[@]}" --remote-dir "$tmp/remote" --client-processes 2 --bin-dir "$bin_dir")

# Phase 1.
echo "fleet-demo: phase 1: ringlab-bench compare --quick across the fleet"
ip netns exec "$ctl" "$bench" compare --quick "${common[@]}" --out "$tmp/report1" "${extra[@]}" \
  > "$tmp/bench1.out" 2> "$tmp/bench1.err" || { cat "$tmp/bench1.err" >&2; die "phase 1: ringlab-bench failed"; }
runs="$(jq length "$tmp/report1/fleet.json")"
bad="$(jq -r '.[] | select(.server_requests != .client_responses) | "run \(.seq) \(.label) x=\(.x): server \(.server_requests), clients \(.client_responses)"' "$tmp/report1/fleet.json")"
[ "$runs" -gt 0 ] || die "phase 1: no run recorded"
[ -z "$bad" ] || die "phase 1: counts differ: $bad"
grep -E '^fleet: ' "$tmp/bench1.err" || true
jq -r '.[] | "run \(.seq) \(.label) x=\(.x): server \(.server_requests) = clients \(.client_responses); " + ([.hosts[] | "\(.host): \(.requests) req, p99 \(.p99_us) µs"] | join("; "))' "$tmp/report1/fleet.json"
echo "fleet-demo: last run per host:"
jq -r '.[-1].hosts[] | "  \(.host)  clock offset \(.offset_ms*100|round/100) ms  start-at \(.start_at_ms) (its clock)  processes \(.processes)  conns \(.conns)  requests \(.requests)  req/s \(.rps|floor)  p50 \(.p50_us) µs  p99 \(.p99_us) µs  errors \(.errors)"' "$tmp/report1/fleet.json"
[ -z "$(ringlab_left)" ] || die "phase 1: ringlab processes left: $(ringlab_left)"
[ -z "$(ls -A "$tmp/remote")" ] || die "phase 1: remote directories left: $(ls "$tmp/remote")"
echo "fleet-demo: phase 1 ok: $runs runs, merged client count = server count in every one, nothing left running"
if [ -n "$reports" ]; then mkdir -p "$reports" && cp -r "$tmp/report1" "$reports/phase1"; fi

# Phase 4: other scenarios.
k=0
for scenario in "${scenarios[@]}"; do
  k=$((k + 1))
  read -r -a sc <<< "$scenario"
  r="$tmp/report4-$k"
  echo "fleet-demo: phase 4: ringlab-bench ${sc[*]} across the fleet"
  ip netns exec "$ctl" "$bench" "${sc[@]}" "${common[@]}" --out "$r" "${extra[@]}" \
    > "$tmp/bench4-$k.out" 2> "$tmp/bench4-$k.err" || { cat "$tmp/bench4-$k.err" >&2; die "phase 4: ringlab-bench ${sc[*]} failed"; }
  runs="$(jq length "$r/fleet.json")"
  exact="$(jq '[.[] | select(.exact)] | length' "$r/fleet.json")"
  bad="$(jq -r '.[] | select(.exact and .server_requests != .client_responses + .beside_requests) | "run \(.seq) \(.label) x=\(.x): server \(.server_requests), clients \(.client_responses) + holders \(.beside_requests)"' "$r/fleet.json")"
  [ "$exact" -gt 0 ] || die "phase 4: ${sc[0]}: no run with exact counts recorded"
  [ -z "$bad" ] || die "phase 4: ${sc[0]}: counts differ: $bad"
  jq -r '.[] | "run \(.seq) \(.label) x=\(.x): server \(.server_requests) " + (if .not_compared then "(not compared: \(.not_compared); clients \(.client_responses))" elif .exact then "= clients \(.client_responses) + holders \(.beside_requests)" else "(wrk counted \(.client_responses): not compared)" end) + "; " + ([.hosts[] | "\(.host): \(.requests) req, p99 \(.p99_us) µs"] | join("; "))' "$r/fleet.json"
  grep -hE 'skipped|not in fleet mode|not installed|could not be capped|wrk.s load per client core' "$tmp/bench4-$k.out" "$tmp/bench4-$k.err" | sort -u | sed 's/^ *- */  note: /' || true
  # --profile: perf ran on the server host; say how many of its samples were the server's.
  jq -r '(.compare.profiles // [])[] | "profile \(.[0]): " + (if .[1].note then "none: \(.[1].note)" else "\(.[1].samples) server samples, \(.[1].not_server) others on its CPUs" end)' "$r/results.json" 2>/dev/null || true
  [ -z "$(ringlab_left)" ] || die "phase 4: ringlab processes left: $(ringlab_left)"
  [ -z "$(cgroups_left)" ] || die "phase 4: cgroups left: $(cgroups_left)"
  # The files scenario keeps its data set on the server host for the next run to reuse
  # (remote-dir/ringlab-files-data*, as it keeps target/ringlab/files-data on one machine).
  left="$(ls -A "$tmp/remote" | grep -v '^ringlab-files-data' || true)"
  [ -z "$left" ] || die "phase 4: remote directories left: $left"
  for d in "$tmp"/remote/ringlab-files-data*; do
    [ -e "$d" ] && echo "  kept for reuse on the server host: $(basename "$d") ($(du -sh "$d" | cut -f1))"
  done
  echo "fleet-demo: phase 4 ok: ${sc[0]}: $runs runs ($exact with exact counts, equal in every one), nothing left running"
  if [ -n "$reports" ]; then mkdir -p "$reports" && cp -r "$r" "$reports/phase4-$k"; fi
done

# What files kept for reuse goes now: the later phases check that nothing is left.
rm -rf "$tmp"/remote/ringlab-files-data*

# Phase 3: a server that cannot start (its port taken by the host's sshd).
if [ $fail_phase = 1 ]; then
  echo "fleet-demo: phase 3: the server's port taken on root@${addrs[0]} (its sshd's 22)"
  set +e
  ip netns exec "$ctl" "$bench" compare --quick --backends epoll --reps 1 "${common[@]}" --server-port 22 \
    --out "$tmp/report3" > "$tmp/bench3.out" 2> "$tmp/bench3.err"
  brc=$?
  set -e
  last="$(tail -n 1 "$tmp/bench3.err")"
  echo "fleet-demo: bench exit $brc, last line: $last"
  [ $brc != 0 ] || die "phase 3: the bench succeeded although the server could not start"
  [ "$(grep -c '^ringlab-bench: ' "$tmp/bench3.err")" = 1 ] || { cat "$tmp/bench3.err" >&2; die "phase 3: expected one ringlab-bench: line"; }
  [[ "$last" == "ringlab-bench: server host root@${addrs[0]}: ringlab-server failed to start: "* ]] || { cat "$tmp/bench3.err" >&2; die "phase 3: the last line does not name the server host"; }
  grep -qi 'in use' <<< "$last" || die "phase 3: the last line does not give the cause (address in use)"
  [ -z "$(ringlab_left)" ] || die "phase 3: ringlab processes left: $(ringlab_left)"
  [ -z "$(ls -A "$tmp/remote")" ] || die "phase 3: remote directories left: $(ls "$tmp/remote")"
  echo "fleet-demo: phase 3 ok: one line naming the server host and the cause, exit $brc, nothing left running"
fi

if [ $int_phase = 1 ]; then
  echo "fleet-demo: phase 5: SIGTERM to ringlab-bench mid-run"
  ip netns exec "$ctl" "$bench" compare --quick --backends epoll --reps 1 --duration 30 "${common[@]}" \
    --out "$tmp/report5" > "$tmp/bench5.out" 2> "$tmp/bench5.err" &
  bench_pid=$!
  client_appears "$prefix-c1" 300 || { cat "$tmp/bench5.err" >&2; die "phase 5: no ringlab-client appeared on ${addrs[1]}"; }
  [ "$(cat /proc/"$bench_pid"/comm 2>/dev/null)" = ringlab-bench ] || die "phase 5: pid $bench_pid is not ringlab-bench"
  sleep 1
  kill -TERM "$bench_pid"
  set +e; wait "$bench_pid"; brc=$?; set -e
  bench_pid=""
  [ $brc = 143 ] || { cat "$tmp/bench5.err" >&2; die "phase 5: bench exit $brc, not 143 (SIGTERM)"; }
  grep -q '^ringlab-bench: interrupted by SIGTERM' "$tmp/bench5.err" || { cat "$tmp/bench5.err" >&2; die "phase 5: no 'interrupted by SIGTERM' line"; }
  gone=""
  for i in $(seq 50); do [ -z "$(ringlab_left)" ] && { gone=$i; break; }; sleep 0.1; done
  [ -n "$gone" ] || die "phase 5: ringlab processes left 5 s after the bench ended: $(ringlab_left)"
  [ -z "$(ls -A "$tmp/remote")" ] || die "phase 5: remote directories left: $(ls "$tmp/remote")"
  echo "fleet-demo: phase 5 ok: exit 143, every remote process gone within $((gone / 10)).$((gone % 10)) s of the bench's exit, no remote directory left"
fi
if [ $kill_phase = 1 ]; then
  victim="$prefix-c2"
  echo "fleet-demo: phase 2: killing sshd on root@${addrs[2]} mid-run"
  ip netns exec "$ctl" "$bench" compare --quick --backends epoll --reps 1 --duration 4 "${common[@]}" \
    --out "$tmp/report2" > "$tmp/bench2.out" 2> "$tmp/bench2.err" &
  bench_pid=$!
  client_appears "$victim" 200 || { cat "$tmp/bench2.err" >&2; die "phase 2: no ringlab-client appeared on ${addrs[2]}"; }
  sleep 2
  for p in $(ns_procs "$victim" sshd); do kill -KILL "$p" 2>/dev/null || true; done
  set +e; wait "$bench_pid"; brc=$?; set -e
  bench_pid=""
  last="$(tail -n 1 "$tmp/bench2.err")"
  echo "fleet-demo: bench exit $brc, last line: $last"
  [ $brc != 0 ] || die "phase 2: the bench succeeded although a client host was lost"
  [ "$(grep -c '^ringlab-bench: ' "$tmp/bench2.err")" = 1 ] || { cat "$tmp/bench2.err" >&2; die "phase 2: expected one ringlab-bench: line"; }
  [[ "$last" == "ringlab-bench: client host root@${addrs[2]}:"* ]] || { cat "$tmp/bench2.err" >&2; die "phase 2: the last line does not name the lost host"; }
  # The lost host's client is bounded by its own duration and its remote timeout.
  for _ in $(seq 600); do [ -z "$(ringlab_left)" ] && break; sleep 0.1; done
  [ -z "$(ringlab_left)" ] || die "phase 2: ringlab processes left: $(ringlab_left)"
  echo "fleet-demo: phase 2 ok: one line naming the lost host, no ringlab process left in any namespace"
fi
echo "fleet-demo: ok"
