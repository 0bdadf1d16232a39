#!/usr/bin/env bash
# Tune this machine for high connection counts and steadier benchmarks, saving what it changes
# so that `scripts/tune.sh --revert` puts it back.
#
#   scripts/tune.sh            apply (root), print each change and how to undo it
#   scripts/tune.sh --dry-run  print what would change
#   scripts/tune.sh --revert   restore the values saved by the last apply
#
# What it sets, and why:
#   net.core.somaxconn=65535            listen backlog ceiling (ringlab asks 4096)
#   net.ipv4.tcp_max_syn_backlog=65535  half-open connections during connect storms
#   net.ipv4.ip_local_port_range=1024 65535   ~64k ephemeral ports per source address
#   net.ipv4.tcp_tw_reuse=1             reuse TIME_WAIT ports for new outgoing connections
#   fs.nr_open=2097152, fs.file-max=4194304   descriptor ceilings (a process still needs
#                                        `ulimit -n`, which only a privileged parent can raise);
#                                        file-max counts every socket's file, direct descriptors
#                                        too: 1M connections with both ends here are 2M files
#   net.core.rmem_max / wmem_max=16777216      let sockets grow their buffers
#   net.ipv4.tcp_mem=786432 1048576 1572864   pages (3 / 4 / 6 GiB): a socket holding any received
#                                        byte is charged a whole page, so 1M sockets holding one
#                                        byte each need 4 GiB; the default max here is 2.2 GiB
#   vm.max_map_count=262144             headroom (per process; ringlab's processes map hundreds)
#   net.netfilter.nf_conntrack_max=2097152    where conntrack is loaded: a tracked connection
#                                        needs an entry (skipped when the module is not loaded)
#   CPU frequency governor=performance  where cpufreq exists (not in most VMs)
# kernel-notes/scale.md has the values and why for a million connections.
# It does not touch IRQ affinity: see kernel-notes/tuning.md for pinning NIC queues.
set -euo pipefail

state="${RINGLAB_TUNE_STATE:-/var/tmp/ringlab-tune.saved}"
mode="${1:-apply}"

settings=(
  "net.core.somaxconn=65535"
  "net.ipv4.tcp_max_syn_backlog=65535"
  "net.ipv4.ip_local_port_range=1024 65535"
  "net.ipv4.tcp_tw_reuse=1"
  "fs.nr_open=2097152"
  "fs.file-max=4194304"
  "net.core.rmem_max=16777216"
  "net.core.wmem_max=16777216"
  "net.ipv4.tcp_mem=786432 1048576 1572864"
  "vm.max_map_count=262144"
  "net.netfilter.nf_conntrack_max=2097152"
)

path_of() { echo "/proc/sys/${1//.//}"; }

case "$mode" in
  -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
  --revert)
    [ -f "$state" ] || { echo "tune.sh: nothing to revert ($state not found)" >&2; exit 1; }
    while IFS='=' read -r key value; do
      [ -n "$key" ] || continue
      if [[ "$key" == governor:* ]]; then
        f="${key#governor:}"; echo "$value" > "$f" && echo "restored $f = $value"
      else
        echo "$value" > "$(path_of "$key")" && echo "restored $key = $value"
      fi
    done < "$state"
    rm -f "$state"
    exit 0 ;;
  --dry-run|apply) ;;
  *) echo "tune.sh: unknown argument $mode (use --dry-run, --revert or no argument)" >&2; exit 2 ;;
esac

if [ "$mode" = apply ] && [ "$(id -u)" != 0 ]; then
  echo "tune.sh: must run as root to change sysctls (try --dry-run)" >&2; exit 1
fi
if [ "$mode" = apply ] && [ -f "$state" ]; then
  echo "tune.sh: $state exists: a previous apply was not reverted; run --revert first" >&2; exit 1
fi

changed=0
for kv in "${settings[@]}"; do
  key="${kv%%=*}"; want="${kv#*=}"; p="$(path_of "$key")"
  [ -r "$p" ] || { echo "skip $key: not present"; continue; }
  [ -w "$p" ] || [ "$mode" = --dry-run ] || { echo "skip $key: not writable here"; continue; }
  have="$(tr -s '\t ' '  ' < "$p")"
  if [ "$have" = "$want" ]; then echo "ok   $key = $have"; continue; fi
  echo "set  $key: $have -> $want   (undo: sysctl -w $key=\"$have\")"
  if [ "$mode" = apply ]; then
    echo "$key=$have" >> "$state"
    if ! echo "$want" > "$p" 2>/dev/null; then echo "     failed (read-only in this container?)"; fi
  fi
  changed=$((changed + 1))
done
for g in /sys/devices/system/cpu/cpu*/cpufreq/scaling_governor; do
  [ -e "$g" ] || { echo "skip governor: no cpufreq (a VM or fixed clock)"; break; }
  have="$(cat "$g")"
  [ "$have" = performance ] && continue
  echo "set  $g: $have -> performance"
  if [ "$mode" = apply ]; then echo "governor:$g=$have" >> "$state"; echo performance > "$g" || true; fi
  changed=$((changed + 1))
done
echo "ulimit -n is per process: this shell has soft $(ulimit -Sn), hard $(ulimit -Hn); raising the hard limit needs CAP_SYS_RESOURCE in the parent (limits.conf, systemd LimitNOFILE)."
if [ "$mode" = apply ] && [ "$changed" -gt 0 ]; then
  echo "saved the previous values in $state; undo everything with: scripts/tune.sh --revert"
fi
