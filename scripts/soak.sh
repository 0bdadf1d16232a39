#!/usr/bin/env bash
# Soak test: each backend in turn runs an echo server and an HTTP server (pinned to CPU 0)
# under mixed load from ringlab-client (pinned to CPU 1) for a set time, while the servers'
# resident memory (/proc/PID/status VmRSS) and open descriptors (/proc/PID/fd) are sampled to a
# CSV. At the end it prints, per backend and server, the figures before, under and after the
# load, and whether memory levelled off and the descriptors came back.
#
#   scripts/soak.sh                       60 s per backend, every backend, sample every 2 s
#   scripts/soak.sh --duration 30         seconds per backend
#   scripts/soak.sh --interval 5          seconds between samples
#   scripts/soak.sh --backends "uring epoll"
#   scripts/soak.sh --out DIR             where the CSV, client JSON and logs go (target/soak)
#   scripts/soak.sh --no-build            use the release binaries already built
#
# The load, per backend (all to 127.0.0.1, every process bounded in time):
#   echo  steady: 50 connections, 512 B messages, closed loop, for the whole duration
#   echo  churn : back-to-back short runs of 20 connections x 200 requests (connect, echo,
#                 disconnect), each run bounded by --requests and `timeout 30`
#   http  steady: 50 keep-alive connections; the server has --max-requests 100, so every
#                 connection is closed and reopened after 100 requests
#   http  churn : 10 connections sending `Connection: close` (one request per connection)
# Exit status: 0 when every client finished without data errors (echo mismatches, malformed
# responses, unexpected bytes) and every server exited 0 after SIGTERM; 1 otherwise.
# Only processes this script started are signalled, by PID.
set -euo pipefail

duration=60
interval=2
backends="uring epoll tokio-uring tokio blocking"
build=1
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/target/soak"
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration="$2"; shift 2 ;;
    --interval) interval="$2"; shift 2 ;;
    --backends) backends="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "soak.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$duration$interval" in *[!0-9]*|'') echo "soak.sh: --duration and --interval take whole seconds" >&2; exit 2 ;; esac
[ "$interval" -ge 1 ] && [ "$duration" -ge "$interval" ] || { echo "soak.sh: need 1 <= interval <= duration" >&2; exit 2; }

if [ "$build" = 1 ]; then
  (cd "$root" && cargo build --release --locked -p ringlab-server -p ringlab-client)
fi
srv_bin="$root/target/release/ringlab-server"
cli_bin="$root/target/release/ringlab-client"
[ -x "$srv_bin" ] && [ -x "$cli_bin" ] || { echo "soak.sh: release binaries missing (drop --no-build)" >&2; exit 2; }

mkdir -p "$out"
stamp="$(date +%Y%m%d-%H%M%S)"
csv="$out/soak-$stamp.csv"
echo "backend,server,phase,t_s,rss_kib,fds" > "$csv"

started=()   # PIDs of every process this script started
cleanup() {
  local p
  for p in "${started[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${started[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# start_server NAME ARGS...: sets SRV_PID and SRV_ADDR.
start_server() {
  local name="$1"; shift
  local log="$out/$stamp-$name.log"
  "$srv_bin" --listen 127.0.0.1:0 --cores 0 "$@" > "$log" 2>&1 &
  SRV_PID=$!
  started+=("$SRV_PID")
  SRV_ADDR=""
  local i
  for i in $(seq 1 100); do
    SRV_ADDR="$(sed -n 's/^ready listen=\([^ ]*\) .*/\1/p' "$log")"
    [ -n "$SRV_ADDR" ] && return 0
    kill -0 "$SRV_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "soak.sh: $name did not start:" >&2
  cat "$log" >&2
  exit 1
}

rss_of() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
fds_of() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

# sample BACKEND PHASE T: one CSV row per server.
sample() {
  echo "$1,echo,$2,$3,$(rss_of "$ECHO_PID"),$(fds_of "$ECHO_PID")" >> "$csv"
  echo "$1,http,$2,$3,$(rss_of "$HTTP_PID"),$(fds_of "$HTTP_PID")" >> "$csv"
}

# Sum of the data-error counters in a client's --json file (missing file: one error).
data_errors() {
  [ -s "$1" ] || { echo 1; return; }
  grep -oE '"(echo_mismatch|malformed_response|unexpected_data)": *[0-9]+' "$1" \
    | awk -F: '{s += $2} END {print s + 0}'
}

status=0
summary=()
for io in $backends; do
  echo "== $io: ${duration}s of mixed load"
  extra=()
  [ "$io" = blocking ] && extra=(--workers 128)
  start_server "$io-echo" --io "$io" --proto echo "${extra[@]}"
  ECHO_PID=$SRV_PID; ECHO_ADDR=$SRV_ADDR
  start_server "$io-http" --io "$io" --proto http --max-requests 100 "${extra[@]}"
  HTTP_PID=$SRV_PID; HTTP_ADDR=$SRV_ADDR
  sleep 1
  sample "$io" before 0

  cli=("$cli_bin" --cores 1 --no-progress)
  j="$out/$stamp-$io"
  "${cli[@]}" "$ECHO_ADDR" --proto echo --conns 50 --size 512 --duration "${duration}s" --json "$j-echo-steady.json" > "$j-echo-steady.txt" 2>&1 &
  c1=$!; started+=("$c1")
  "${cli[@]}" "http://$HTTP_ADDR/" --proto http --conns 50 --duration "${duration}s" --json "$j-http-steady.json" > "$j-http-steady.txt" 2>&1 &
  c2=$!; started+=("$c2")
  "${cli[@]}" "http://$HTTP_ADDR/" --proto http --conns 10 -H "Connection: close" --duration "${duration}s" --json "$j-http-churn.json" > "$j-http-churn.txt" 2>&1 &
  c3=$!; started+=("$c3")
  (
    end=$((SECONDS + duration)); runs=0; failed=0
    while [ "$SECONDS" -lt "$end" ] && [ "$runs" -lt $((duration * 20)) ]; do
      runs=$((runs + 1))
      timeout 30 "${cli[@]}" "$ECHO_ADDR" --proto echo --conns 20 --requests 200 --size 64 \
        --json "$j-echo-churn-last.json" > /dev/null 2>&1 || failed=$((failed + 1))
      [ "$(data_errors "$j-echo-churn-last.json")" = 0 ] || failed=$((failed + 1))
    done
    echo "$runs $failed" > "$j-echo-churn.result"
  ) &
  c4=$!; started+=("$c4")

  t=0
  while [ "$t" -lt "$duration" ]; do
    sleep "$interval"
    t=$((t + interval))
    sample "$io" load "$t"
  done
  for c in "$c1" "$c2" "$c3" "$c4"; do wait "$c" || true; done
  sleep 3   # connections close; then the figures should be back at the baseline
  sample "$io" after $((t + 3))

  kill -TERM "$ECHO_PID" "$HTTP_PID"
  for p in "$ECHO_PID" "$HTTP_PID"; do
    if ! wait "$p"; then echo "soak.sh: server $p did not exit 0" >&2; status=1; fi
  done

  read -r churn_runs churn_failed < "$j-echo-churn.result" || { churn_runs=0; churn_failed=1; }
  errs=0
  for f in echo-steady http-steady http-churn; do
    e="$(data_errors "$j-$f.json")"
    errs=$((errs + e))
    reqs="$(grep -oE '"requests": *[0-9]+' "$j-$f.json" 2>/dev/null | head -1 | grep -oE '[0-9]+$' || echo 0)"
    echo "   client $f: $reqs requests, data errors $e"
  done
  echo "   client echo-churn: $churn_runs runs of 20 connections x 200 requests, failed runs $churn_failed"
  [ "$errs" = 0 ] && [ "$churn_failed" = 0 ] || status=1
  for s in echo http; do
    line="$(awk -F, -v b="$io" -v s="$s" '
      $1 == b && $2 == s {
        if ($3 == "before") { r0 = $5; f0 = $6 }
        else if ($3 == "after") { ra = $5; fa = $6 }
        else {
          n++; r[n] = $5; f[n] = $6
          if ($5 > rmax) rmax = $5
          if ($6 > fmax) fmax = $6
        }
      }
      END {
        third = int(n / 3); if (third < 1) third = 1
        for (i = 1; i <= third; i++) if (r[i] > early) early = r[i]
        for (i = n - third + 1; i <= n; i++) if (r[i] > late) late = r[i]
        level = (late <= early * 1.05 + 2048) ? "yes" : "NO"
        fdback = (fa <= f0) ? "yes" : "NO"
        printf "rss_kib start=%d load_first=%d load_end=%d max=%d after=%d levelled=%s | fds start=%d load_end=%d max=%d after=%d back=%s",
          r0, r[1], r[n], rmax, ra, level, f0, f[n], fmax, fa, fdback
      }' "$csv")"
    echo "   $s server: $line"
    summary+=("$io $s: $line")
    case "$line" in *=NO*) status=1 ;; esac
  done
  grep -h '^\(stats\|limits\) ' "$out/$stamp-$io-echo.log" "$out/$stamp-$io-http.log" | sed 's/^/   server /' || true
done

echo "== summary (CSV: $csv)"
printf '%s\n' "${summary[@]}"
exit "$status"
