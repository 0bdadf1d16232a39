#!/usr/bin/env bash
# Two "hosts" on one machine: network namespaces joined by a veth pair, so ringlab traffic
# crosses a real link (veth, with its own queues, GRO and optional netem) instead of loopback.
#
#   scripts/netns.sh up [--delay 1ms] [--loss 0.1%] [--rate 10gbit]   create them (root)
#   scripts/netns.sh down                                              remove them
#   scripts/netns.sh status                                            show them
#   scripts/netns.sh exec server|client CMD...                         run CMD in one of them
#
# Names and addresses (override with the environment):
#   RINGLAB_NETNS_PREFIX=ringlab   namespaces ringlab-srv and ringlab-cli
#   server side 10.77.0.1/24 on veth ringlab-s, client side 10.77.0.2/24 on veth ringlab-c,
#   and 10.77.0.10-17 as extra client source addresses (ringlab-client --bind 10.77.0.10-10.77.0.17)
#
# --delay uses tc netem on both veth ends (so --delay 1ms adds 2 ms of RTT); kernels built
# without sch_netem (CONFIG_NET_SCH_NETEM, e.g. Firecracker guests) refuse it with a message.
# --loss drops that share of incoming TCP packets in each namespace with nftables (`numgen
# random`), on the receive side so that it behaves like loss on the wire; it needs `nft`
# (apt-get install nftables). --rate shapes each end with tc tbf.
# `up` refuses to run if the namespaces exist; `down` removes only the namespaces it names.
# Example:
#   scripts/netns.sh up --delay 1ms
#   scripts/netns.sh exec server ./target/release/ringlab-server --listen 10.77.0.1:9527 &
#   scripts/netns.sh exec client ./target/release/ringlab-client 10.77.0.1:9527 --duration 5s
#   scripts/netns.sh down
set -euo pipefail

prefix="${RINGLAB_NETNS_PREFIX:-ringlab}"
srv="$prefix-srv"
cli="$prefix-cli"
vs="${prefix:0:8}-s"
vc="${prefix:0:8}-c"
srv_ip=10.77.0.1
cli_ip=10.77.0.2

die() { echo "netns.sh: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "must run as root (network namespaces need CAP_NET_ADMIN)"; }
need_ip() { command -v ip >/dev/null || die "ip not found: install iproute2 (apt-get install iproute2)"; }
exists() { ip netns list 2>/dev/null | awk '{print $1}' | grep -qx "$1"; }

cmd="${1:-}"
[ -n "$cmd" ] || { sed -n '2,22p' "$0"; exit 2; }
shift || true

case "$cmd" in
  -h|--help|help) sed -n '2,22p' "$0"; exit 0 ;;
  up)
    need_root; need_ip
    delay=""; loss=""; rate=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --delay) delay="${2:?--delay needs a value like 1ms}"; shift 2 ;;
        --loss) loss="${2:?--loss needs a value like 0.1%}"; shift 2 ;;
        --rate) rate="${2:?--rate needs a value like 10gbit}"; shift 2 ;;
        *) die "unknown option $1 (use --delay, --loss, --rate)" ;;
      esac
    done
    if exists "$srv" || exists "$cli"; then die "$srv or $cli already exists: run '$0 down' first"; fi
    # Undo a half-made setup if any step fails.
    trap 'ip netns del "$srv" 2>/dev/null || true; ip netns del "$cli" 2>/dev/null || true' ERR
    ip netns add "$srv"
    ip netns add "$cli"
    ip link add "$vs" type veth peer name "$vc"
    ip link set "$vs" netns "$srv"
    ip link set "$vc" netns "$cli"
    ip -n "$srv" addr add "$srv_ip/24" dev "$vs"
    ip -n "$cli" addr add "$cli_ip/24" dev "$vc"
    for i in $(seq 10 17); do ip -n "$cli" addr add "10.77.0.$i/24" dev "$vc"; done
    for ns in "$srv" "$cli"; do
      ip -n "$ns" link set lo up
      # Wide ephemeral port range and short FIN timeout for connection churn inside the namespace.
      ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="1024 65535" || true
      ip netns exec "$ns" sysctl -qw net.core.somaxconn=65535 || true
      ip netns exec "$ns" sysctl -qw net.ipv4.tcp_max_syn_backlog=65535 || true
    done
    ip -n "$srv" link set "$vs" up
    ip -n "$cli" link set "$vc" up
    if [ -n "$delay" ]; then
      command -v tc >/dev/null || die "tc not found: install iproute2"
      if ! ip netns exec "$srv" tc qdisc add dev "$vs" root netem delay "$delay" limit 100000 2>/dev/null; then
        ip netns del "$srv"; ip netns del "$cli"
        die "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): --delay is not available here (--loss and --rate are)"
      fi
      ip netns exec "$cli" tc qdisc add dev "$vc" root netem delay "$delay" limit 100000
    elif [ -n "$rate" ]; then
      command -v tc >/dev/null || die "tc not found: install iproute2"
      for pair in "$srv:$vs" "$cli:$vc"; do
        ip netns exec "${pair%%:*}" tc qdisc add dev "${pair#*:}" root tbf rate "$rate" burst 256kbit latency 50ms
      done
    fi
    if [ -n "$delay" ] && [ -n "$rate" ]; then
      echo "netns.sh: note: --rate is not applied together with --delay (one root qdisc per device)" >&2
    fi
    if [ -n "$loss" ]; then
      command -v nft >/dev/null || { ip netns del "$srv"; ip netns del "$cli"; die "nft not found: install nftables (apt-get install nftables) for --loss"; }
      pct="${loss%\%}"
      # Parts per million of packets to drop.
      ppm="$(awk -v p="$pct" 'BEGIN { if (p !~ /^[0-9]*\.?[0-9]+$/ || p > 100) exit 1; printf "%d", p * 10000 }')" \
        || { ip netns del "$srv"; ip netns del "$cli"; die "--loss takes a percentage like 0.5% (got $loss)"; }
      for ns in "$srv" "$cli"; do
        ip netns exec "$ns" nft -f - <<NFT
table inet ringlab_loss {
  chain pre {
    type filter hook prerouting priority -300; policy accept;
    meta l4proto tcp numgen random mod 1000000 < $ppm counter drop
  }
}
NFT
      done
    fi
    trap - ERR
    # Reachability: a TCP connect to a closed port is answered (refused) across the link.
    probe="$(ip netns exec "$cli" timeout 3 bash -c "exec 3<>/dev/tcp/$srv_ip/9" 2>&1 || true)"
    if [[ "$probe" != *refused* ]] && [ -z "$loss" ]; then
      die "the veth link does not pass traffic ($probe)"
    fi
    echo "up: $srv ($srv_ip on $vs) <-> $cli ($cli_ip, 10.77.0.10-17 on $vc)${delay:+ delay $delay}${loss:+ loss $loss}${rate:+ rate $rate}"
    ;;
  down)
    need_root; need_ip
    gone=0
    for ns in "$srv" "$cli"; do
      if exists "$ns"; then ip netns del "$ns"; gone=$((gone + 1)); fi
    done
    echo "down: removed $gone namespace(s)"
    ;;
  status)
    need_ip
    for ns in "$srv" "$cli"; do
      if exists "$ns"; then
        echo "$ns:"; ip -n "$ns" -br addr 2>/dev/null | sed 's/^/  /'
        ip netns exec "$ns" tc qdisc show 2>/dev/null | grep -E "netem|tbf" | sed 's/^/  /' || true
        ip netns exec "$ns" nft list table inet ringlab_loss 2>/dev/null | grep -E "drop" | sed 's/^ */  loss rule: /' || true
      else
        echo "$ns: absent"
      fi
    done
    ;;
  exec)
    need_root; need_ip
    which="${1:-}"; shift || true
    case "$which" in
      server) ns="$srv" ;;
      client) ns="$cli" ;;
      *) die "exec needs 'server' or 'client', then the command" ;;
    esac
    [ $# -gt 0 ] || die "exec $which needs a command"
    exists "$ns" || die "$ns does not exist: run '$0 up' first"
    exec ip netns exec "$ns" "$@"
    ;;
  *) die "unknown command $cmd (up, down, status, exec)" ;;
esac
