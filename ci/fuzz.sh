#!/usr/bin/env bash
# Fuzz the relay's parsers and the wind tunnel's scenario parser briefly (libFuzzer, through
# libfuzzer-sys) and fail if any target crashes or breaks one of its asserted invariants.
#
# Targets (fuzz/fuzz_targets/, their own cargo workspace in fuzz/, built into fuzz/target):
#   upstream_frame  upstream event-stream frames (DAG-CBOR) through relay::atproto::frame::decode
#   ws_frames       raw WebSocket bytes read by tokio-tungstenite with the relay's limits
#   scenario        scenario files through windtunnel::scenario::Scenario::parse
#   relay_config    relay config files through relay::config::ConfigBuilder
#
# fuzz/ is a cargo-fuzz project (`cargo fuzz run <target>` works on it), but this script
# builds and runs the targets itself with the flags cargo-fuzz 0.13.2 uses: installing
# cargo-fuzz on a fresh CI machine cost 1.5-2 of the 45 minutes a CI run may take.
#
# Works on stable Rust: no sanitizer by default (the code fuzzed forbids `unsafe`; a panic,
# an overflow or a stack overflow is still a crash). FUZZ_SANITIZER=address builds with
# ASan through RUSTC_BOOTSTRAP=1. Each target starts from its checked-in seeds
# (fuzz/corpus/<target>) plus whatever earlier runs here found (fuzz/target/corpus/<target>,
# where new inputs go), with a dictionary of its format's tokens (fuzz/dict/). A crash
# leaves its input in fuzz/artifacts/<target>/.
#
#   ci/fuzz.sh                          every target, FUZZ_SECONDS (default 25) s each,
#                                       FUZZ_JOBS (default 2) targets at a time
#   ci/fuzz.sh scenario ws_frames       only these
#   FUZZ_SECONDS=600 ci/fuzz.sh scenario
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-25}
jobs=${FUZZ_JOBS:-2}
sanitizer=${FUZZ_SANITIZER:-none}
all_targets=(upstream_frame ws_frames scenario relay_config)
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=("${all_targets[@]}")
fi

clock() { date +%s; }

start=$(clock)
# What `cargo fuzz build --sanitizer <s> --debug-assertions` passes (cargo-fuzz 0.13.2):
# libFuzzer's coverage instrumentation, `cfg(fuzzing)`, debug assertions, one codegen unit.
# `--target` keeps these flags off build scripts and proc macros.
host=$(rustc -vV | sed -n 's/^host: //p')
rustflags="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4"
rustflags+=" -Cllvm-args=-sanitizer-coverage-inline-8bit-counters"
rustflags+=" -Cllvm-args=-sanitizer-coverage-pc-table"
rustflags+=" -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing"
rustflags+=" -Cllvm-args=-simplifycfg-branch-fold-threshold=0"
rustflags+=" -Cllvm-args=-sanitizer-coverage-stack-depth -Cdebug-assertions -Ccodegen-units=1"
case $sanitizer in
  none) ;;
  address)
    rustflags+=" -Zsanitizer=address"
    # -Zsanitizer is unstable; stable rustc accepts it only this way.
    export RUSTC_BOOTSTRAP=1
    ;;
  *)
    echo "FUZZ_SANITIZER is none or address, not $sanitizer" >&2
    exit 2
    ;;
esac
bin_dir=fuzz/target/$host/release

# The relay is fuzzed with exactly the dependency versions it ships with: the fuzz
# workspace's lockfile is the root one, to which cargo adds libFuzzer's crates.
cp Cargo.lock fuzz/Cargo.lock
# One cargo invocation builds every target (shared dependencies compile once).
RUSTFLAGS="$rustflags" cargo build --manifest-path fuzz/Cargo.toml --target "$host" --release \
  --config 'profile.release.debug="line-tables-only"' --bins
built=$(clock)

# One target: its log in fuzz/target/<target>.log, a summary line in <target>.result.
fuzz_one() {
  local target=$1 work=fuzz/target/corpus/$1 log=fuzz/target/$1.log
  local run_start status=0 runs rate cov verdict
  local options=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
  case $target in
    upstream_frame) options+=(-dict="$PWD/fuzz/dict/cbor.dict") ;;
    scenario | relay_config) options+=(-dict="$PWD/fuzz/dict/toml.dict") ;;
  esac
  mkdir -p "$work" "fuzz/artifacts/$target"
  run_start=$(clock)
  "$bin_dir/$target" -artifact_prefix="fuzz/artifacts/$target/" "${options[@]}" \
    "$work" "fuzz/corpus/$target" >"$log" 2>&1 || status=$?
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | cut -d' ' -f2) || true
  if [ "$status" -eq 0 ] && [ -n "$runs" ]; then
    verdict=ok
  else
    verdict="FAILED (exit $status)"
  fi
  printf '%-15s %4ss %10s execs %8s/s  cov %-6s %s\n' "$target" "$(($(clock) - run_start))" \
    "${runs:-?}" "${rate:-?}" "${cov:-?}" "$verdict" >"fuzz/target/$target.result"
}

mkdir -p fuzz/target
echo "==> fuzzing ${targets[*]}: ${seconds}s each, $jobs at a time"
running=0
for target in "${targets[@]}"; do
  rm -f "fuzz/target/$target.result"
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  fuzz_one "$target" &
  running=$((running + 1))
done
wait || true
finished=$(clock)

failed=()
for target in "${targets[@]}"; do
  result=fuzz/target/$target.result
  if [ ! -f "$result" ] || ! grep -q ' ok$' "$result"; then
    failed+=("$target")
    echo "fuzz target $target FAILED; the end of its log (fuzz/target/$target.log):"
    tail -n 60 "fuzz/target/$target.log" || true
    echo
  fi
done

echo "build $((built - start))s," \
  "runs $((finished - built))s, sanitizer $sanitizer"
for target in "${targets[@]}"; do
  cat "fuzz/target/$target.result" 2>/dev/null || echo "$target: no result"
done
echo "fuzz: $((${#targets[@]} - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "crashing inputs are in fuzz/artifacts/<target>/; reproduce one with"
  echo "  $bin_dir/<target> fuzz/artifacts/<target>/<file>"
  exit 1
fi
