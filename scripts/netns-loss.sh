#!/usr/bin/env bash
# Echo integrity over a lossy link: two network namespaces joined by a veth pair, `tc netem`
# loss and delay on both ends, ringlab-server in one namespace and ringlab-client (echo,
# bounded --requests) in the other. Passes when the client exits 0 with no data errors (echo
# mismatches, malformed or unexpected bytes), every request completed, no request was lost,
# and the server exits 0 after SIGTERM. The namespaces (and with them the veth pair) are
# always removed, whatever happens.
#
#   sudo scripts/netns-loss.sh                          5% loss, 20ms delay, uring server
#   sudo scripts/netns-loss.sh --loss 10 --delay 50ms --io epoll
#   sudo scripts/netns-loss.sh --requests 50000 --size 4096 --conns 32
#   sudo scripts/netns-loss.sh --no-build               use the release binaries already built
#
# Needs root (ip netns, tc) and iproute2. Names carry this script's PID, so parallel runs do
# not collide. Only the server this script started is signalled, by PID.
#
# Kernels built without sch_netem (some VM kernels) cannot delay packets: the script then says
# so and drops packets with an nftables `numgen random` rule in each namespace instead (loss
# only, no delay), counting what it dropped.
set -euo pipefail

loss=5
delay=20ms
requests=20000
size=1024
conns=16
io=uring
build=1
root="$(cd "$(dirname "$0")/.." && pwd)"
while [ $# -gt 0 ]; do
  case "$1" in
    --loss) loss="$2"; shift 2 ;;
    --delay) delay="$2"; shift 2 ;;
    --requests) requests="$2"; shift 2 ;;
    --size) size="$2"; shift 2 ;;
    --conns) conns="$2"; shift 2 ;;
    --io) io="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "netns-loss.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "netns-loss.sh: needs root for ip netns and tc" >&2; exit 2; }
command -v ip > /dev/null && command -v tc > /dev/null \
  || { echo "netns-loss.sh: needs iproute2 (ip, tc)" >&2; exit 2; }

if [ "$build" = 1 ]; then
  (cd "$root" && cargo build --release --locked -p ringlab-server -p ringlab-client)
fi
srv_bin="$root/target/release/ringlab-server"
cli_bin="$root/target/release/ringlab-client"
[ -x "$srv_bin" ] && [ -x "$cli_bin" ] || { echo "netns-loss.sh: release binaries missing" >&2; exit 2; }

id=$$
ns_s="ringlab-srv-$id"
ns_c="ringlab-cli-$id"
veth_s="rls$id"   # interface names: at most 15 bytes
veth_c="rlc$id"
srv_ip=10.213.0.1
cli_ip=10.213.0.2
port=9527
work="$(mktemp -d)"
srv_pid=""

cleanup() {
  if [ -n "$srv_pid" ]; then
    kill -KILL "$srv_pid" 2> /dev/null || true
  fi
  ip netns del "$ns_s" 2> /dev/null || true
  ip netns del "$ns_c" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

ip netns add "$ns_s"
ip netns add "$ns_c"
ip link add "$veth_s" type veth peer name "$veth_c"
ip link set "$veth_s" netns "$ns_s"
ip link set "$veth_c" netns "$ns_c"
ip -n "$ns_s" addr add "$srv_ip/24" dev "$veth_s"
ip -n "$ns_c" addr add "$cli_ip/24" dev "$veth_c"
for ns in "$ns_s" "$ns_c"; do ip -n "$ns" link set lo up; done
ip -n "$ns_s" link set "$veth_s" up
ip -n "$ns_c" link set "$veth_c" up
lossy=netem
if ! tc -n "$ns_s" qdisc add dev "$veth_s" root netem loss "$loss%" delay "$delay" 2> "$work/tc.err"; then
  if ! grep -q "qdisc kind is unknown" "$work/tc.err"; then cat "$work/tc.err" >&2; exit 1; fi
  command -v nft > /dev/null || { echo "netns-loss.sh: no sch_netem in this kernel and no nft for the fallback" >&2; exit 2; }
  lossy=nft
  echo "note: this kernel has no sch_netem (tc netem): delay NOT applied; loss applied with nftables instead"
  per10k="$(awk -v l="$loss" 'BEGIN { printf "%d", l * 100 }')"
  for ns_dev in "$ns_s:$veth_s" "$ns_c:$veth_c"; do
    ns="${ns_dev%%:*}"; dev="${ns_dev#*:}"
    ip netns exec "$ns" nft add table inet ringlab_loss
    ip netns exec "$ns" nft add chain inet ringlab_loss out "{ type filter hook output priority 0 ; }"
    ip netns exec "$ns" nft add rule inet ringlab_loss out oifname "$dev" numgen random mod 10000 lt "$per10k" counter drop
  done
else
  tc -n "$ns_c" qdisc add dev "$veth_c" root netem loss "$loss%" delay "$delay"
fi
if [ "$lossy" = netem ]; then
  echo "link: $ns_c ($cli_ip) <-> $ns_s ($srv_ip), netem loss $loss% delay $delay each way"
else
  echo "link: $ns_c ($cli_ip) <-> $ns_s ($srv_ip), nftables loss $loss% each way, no delay"
fi

ip netns exec "$ns_s" "$srv_bin" --io "$io" --listen "$srv_ip:$port" --cores 0 \
  --stats-json "$work/server.json" > "$work/server.log" 2>&1 &
srv_pid=$!   # `ip netns exec` execs the server: this is its PID
for _ in $(seq 1 100); do
  grep -q '^ready ' "$work/server.log" && break
  kill -0 "$srv_pid" 2> /dev/null || break
  sleep 0.1
done
grep '^ready ' "$work/server.log" || { echo "netns-loss.sh: the server did not start:" >&2; cat "$work/server.log" >&2; exit 1; }

# --timeout far above the worst retransmission back-off, so that no request is abandoned.
set +e
ip netns exec "$ns_c" timeout 600 "$cli_bin" "$srv_ip:$port" --proto echo --conns "$conns" \
  --requests "$requests" --size "$size" --cores 1 --timeout 60s --no-progress \
  --json "$work/client.json" > "$work/client.txt" 2>&1
client_rc=$?
set -e
cat "$work/client.txt"

kill -TERM "$srv_pid"
set +e
wait "$srv_pid"
server_rc=$?
set -e
srv_pid=""
grep -h '^\(stats\|limits\) ' "$work/server.log" || true

for ns_dev in "$ns_s:$veth_s" "$ns_c:$veth_c"; do
  ns="${ns_dev%%:*}"; dev="${ns_dev#*:}"
  if [ "$lossy" = netem ]; then
    echo "netem on $dev: $(tc -s -n "$ns" qdisc show dev "$dev" | grep -oE 'Sent [0-9]+ bytes [0-9]+ pkt \(dropped [0-9]+' | head -1))"
  else
    sent="$(ip -n "$ns" -s link show dev "$dev" | awk '/TX:/ { getline; print $2; exit }')"
    dropped="$(ip netns exec "$ns" nft list chain inet ringlab_loss out | grep -oE 'packets [0-9]+' | grep -oE '[0-9]+' | head -1)"
    echo "nftables on $dev: $sent packets sent, ${dropped:-0} dropped"
  fi
  retrans="$(ip netns exec "$ns" nstat -az TcpRetransSegs 2> /dev/null | awk '/TcpRetransSegs/ { print $2 }')"
  echo "TCP segments retransmitted in $ns: ${retrans:-unknown}"
done

num() { grep -oE "\"$1\": *[0-9]+" "$work/client.json" | head -1 | grep -oE '[0-9]+$' || echo missing; }
srvnum() { grep -oE "\"$1\": *[0-9]+" "$work/server.json" | head -1 | grep -oE '[0-9]+$' || echo missing; }
ok=1
check() { # NAME VALUE WANT
  if [ "$2" = "$3" ]; then echo "ok   $1 = $2"; else echo "FAIL $1 = $2 (want $3)"; ok=0; fi
}
check "client exit code" "$client_rc" 0
check "server exit code" "$server_rc" 0
check "client echo_mismatch" "$(num echo_mismatch)" 0
check "client malformed_response" "$(num malformed_response)" 0
check "client unexpected_data" "$(num unexpected_data)" 0
check "client requests_lost" "$(num requests_lost)" 0
check "client timeouts" "$(num timeouts)" 0
check "client reset" "$(num reset)" 0
check "client requests completed" "$(num requests)" "$requests"
check "server conn_errors" "$(srvnum conn_errors)" 0
[ "$lossy" = netem ] && link="$loss% loss, $delay delay" || link="$loss% loss (nftables, no delay)"
[ "$ok" = 1 ] && echo "PASS: $requests echo requests of $size B over $link: 0 bytes lost or corrupted" \
  || { echo "FAIL"; exit 1; }
