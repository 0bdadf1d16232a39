#!/usr/bin/env bash
# Compare two builds of ringlab-server at equal offered load: did a change move the server's CPU
# per request? Each repetition runs every (backend, build) pair on a fresh server, in an order
# that alternates between repetitions (old new, new old, ...), with the same open-loop client
# (the NEW build's ringlab-client) at the same rate, read around the client's run; the result
# per backend is the median over the
# repetitions of new ÷ old CPU per request, with the range of the per-repetition ratios, beside
# an A/A line (old ÷ old, from a second old server in the same repetition) as the noise floor.
# Server CPU: the nanoseconds on CPU of every server thread (/proc/PID/task/*/schedstat).
#
#   scripts/ab-builds.sh OLD_BIN_DIR NEW_BIN_DIR [--reps 5] [--rate 30000] [--conns 512]
#                        [--secs 6] [--io "epoll uring"] [--port 9611]
#
# OLD_BIN_DIR and NEW_BIN_DIR hold ringlab-server (and NEW_BIN_DIR ringlab-client), e.g. two
# checkouts' target/release. Server on CPU 0, client on CPU 1; traffic only to 127.0.0.1.
# Every server is stopped by the PID this script started; each waits at most 10 s to be ready.
set -euo pipefail

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }
[ $# -ge 2 ] || { usage >&2; exit 2; }
old="$1"; new="$2"; shift 2
reps=5; rate=30000; conns=512; secs=6; ios="epoll uring"; port=9611
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) reps="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --conns) conns="$2"; shift 2 ;;
    --secs) secs="$2"; shift 2 ;;
    --io) ios="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "ab-builds.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
for f in "$old/ringlab-server" "$new/ringlab-server" "$new/ringlab-client"; do
  [ -x "$f" ] || { echo "ab-builds.sh: $f is missing or not executable" >&2; exit 2; }
done
command -v python3 >/dev/null || { echo "ab-builds.sh: python3 is needed for the summary" >&2; exit 2; }

out="$(mktemp -d)"
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill -TERM "$server_pid" 2>/dev/null; rm -rf "$out"; }
trap cleanup EXIT

cpu_ns() { cat /proc/"$1"/task/*/schedstat | awk '{s += $1} END {printf "%.0f\n", s}'; }

# run BUILD_DIR IO LABEL REP: one server, one client run; appends "label io rep cpu_us requests".
run() {
  local dir="$1" io="$2" label="$3" rep="$4" log="$out/server.log"
  "$dir/ringlab-server" --io "$io" --proto echo --listen "127.0.0.1:$port" --cores 0 \
    --max-conns 100000 >"$log" 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do grep -q '^ready ' "$log" && break; sleep 0.1; done
  grep -q '^ready ' "$log" || { echo "ab-builds.sh: $label $io did not start: $(tail -1 "$log")" >&2; exit 1; }
  local t0; t0=$(cpu_ns "$server_pid")
  "$new/ringlab-client" "127.0.0.1:$port" --io epoll --cores 1 -c "$conns" -R "$rate" \
    -d "${secs}s" --warmup 1s --no-progress --json "$out/client.json" >/dev/null
  local t1; t1=$(cpu_ns "$server_pid")
  kill -TERM "$server_pid"; wait "$server_pid" || true; server_pid=""
  local req; req=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests"])' "$out/client.json")
  echo "$label $io $rep $(( (t1 - t0) / 1000 )) $req" >>"$out/rows"
}

for rep in $(seq "$reps"); do
  for io in $ios; do
    if [ $((rep % 2)) -eq 1 ]; then order="old new old2"; else order="new old2 old"; fi
    for b in $order; do
      case "$b" in new) run "$new" "$io" new "$rep" ;; *) run "$old" "$io" "$b" "$rep" ;; esac
    done
  done
  echo "repetition $rep of $reps done" >&2
done

python3 - "$out/rows" <<'EOF'
import sys, statistics as st
rows = [l.split() for l in open(sys.argv[1])]
cpu = {}
for label, io, rep, us, req in rows:
    cpu[(label, io, int(rep))] = int(us) / max(int(req), 1)
for io in sorted({r[1] for r in rows}):
    reps = sorted({k[2] for k in cpu if k[1] == io})
    for name, a, b in (("new / old", "new", "old"), ("A/A old2 / old", "old2", "old")):
        ratios = [cpu[(a, io, r)] / cpu[(b, io, r)] for r in reps]
        print(f"{io:6} {name:15} CPU/request median {st.median(ratios):.3f}x "
              f"(range {min(ratios):.3f}-{max(ratios):.3f}, {len(ratios)} reps)")
    old_us = st.median(cpu[("old", io, r)] for r in reps)
    new_us = st.median(cpu[("new", io, r)] for r in reps)
    print(f"{io:6} server CPU/request: old {old_us:.2f} us, new {new_us:.2f} us (medians)")
EOF
