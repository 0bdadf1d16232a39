#!/usr/bin/env bash
# Run every cargo-fuzz target of proto/fuzz (its own workspace, libFuzzer) for a fixed number of
# runs each, and say how each went. This is for long runs (the goal: 10 million inputs per
# target); .ci/run calls it with a small --runs on every CI run.
#
#   scripts/fuzz.sh                     every target, 10000000 runs each (at most 7200 s each)
#   scripts/fuzz.sh --runs 20000        fewer runs (what CI does)
#   scripts/fuzz.sh --target echo_session
#   scripts/fuzz.sh --max-time 600      stop a target after this many seconds (default 7200)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`; without it: exit 2, one line saying so). With a
# nightly toolchain it fuzzes under AddressSanitizer (cargo-fuzz's default); on the stable
# toolchain alone it uses `--sanitizer none` (libFuzzer's coverage-guided search still runs, and
# a panic is still a crash: the targets are safe Rust, where ASan adds little).
# A crash leaves its input under proto/fuzz/artifacts/TARGET/ and makes the script exit 1.
#
# Where nightly is not to be had, the proptests in proto/tests/proptests.rs (run by
# `cargo test --workspace`) carry each target's property on generated inputs:
#   http_request  session_output_does_not_depend_on_splits, request_parser_never_panics_and_stays_bounded,
#                 request_parser_survives_mutated_requests
#   echo_stream   echo_stream_verifies_any_split
#   echo_session  echo_session_any_schedule
set -euo pipefail

runs=10000000
max_time=7200
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --target) only="$2"; shift 2 ;;
    --max-time) max_time="$2"; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fuzz.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$runs$max_time" in *[!0-9]*) echo "fuzz.sh: --runs and --max-time take whole numbers" >&2; exit 2 ;; esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: cargo-fuzz is missing; install it with: cargo install cargo-fuzz" >&2
  exit 2
fi
if rustup toolchain list 2>/dev/null | grep -q '^nightly' && cargo +nightly fuzz --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz)
  san=()
  echo "fuzz.sh: nightly toolchain: fuzzing under AddressSanitizer"
else
  fuzz=(cargo fuzz)
  san=(--sanitizer none)
  echo "fuzz.sh: stable toolchain: fuzzing with --sanitizer none"
fi

cd "$(dirname "$0")/../proto"
mapfile -t targets < <("${fuzz[@]}" list)
if [ -n "$only" ]; then
  printf '%s\n' "${targets[@]}" | grep -qx "$only" || { echo "fuzz.sh: no target $only (have: ${targets[*]})" >&2; exit 2; }
  targets=("$only")
fi

failed=0
summary=()
for t in "${targets[@]}"; do
  echo "== $t: $runs runs (at most ${max_time}s)"
  log="$(mktemp)"
  start=$(date +%s)
  set +e
  # Seed inputs kept in the repository (fuzz/seeds/TARGET), read beside the working corpus.
  corpora=()
  if [ -d "fuzz/seeds/$t" ]; then corpora=("fuzz/corpus/$t" "fuzz/seeds/$t"); mkdir -p "fuzz/corpus/$t"; fi
  "${fuzz[@]}" run "${san[@]}" "$t" "${corpora[@]}" -- -runs="$runs" -max_total_time="$max_time" -print_final_stats=1 2>&1 \
    | tee "$log" | grep -E '^(#[0-9]+ +(DONE|INITED)|==[0-9]+==|SUMMARY|Done|stat::number_of_executed_units)'
  status=${PIPESTATUS[0]}
  set -e
  secs=$(( $(date +%s) - start ))
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ "$status" -eq 0 ]; then
    summary+=("$t: ok, ${execs:-?} executions in ${secs}s")
  else
    summary+=("$t: FAILED (exit $status) after ${execs:-?} executions; see proto/fuzz/artifacts/$t/")
    failed=1
  fi
  rm -f "$log"
done
echo "== summary"
printf '%s\n' "${summary[@]}"
exit "$failed"
