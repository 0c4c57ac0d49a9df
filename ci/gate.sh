#!/usr/bin/env bash
# The concurrency gate: every check that must pass before a change lands, cheapest first,
# each step timed. BENCHMARKS.md records how long each tier takes on a 2-core machine.
# ci/test runs this (then the fuzzers, for the full tier).
#
#   ci/gate.sh          the full gate (the main branch): everything below
#   ci/gate.sh --quick  the quick tier (pull requests, budget 10 min cold on 2 cores): format,
#                       tidy, the workflow lint, production clippy, the simulation build
#                       with its unit tests and one seed of every madsim scenario (JUnit in
#                       target/quick/junit.xml, failing seeds' artifacts in
#                       target/quick/artifacts), loom, and the museum exhibits whose files
#                       (patched, or the catching scenario) the change touches (the change: what differs from the merge base
#                       with $QUICK_BASE, default origin/main, else main; committed or not)
#
# GATE_MUSEUM=loom runs only the museum's loom exhibits (ci/mutants.sh) instead of all.
set -euo pipefail
cd "$(dirname "$0")/.."

tier=full
case "${1:-}" in
  "") ;;
  --quick) tier=quick ;;
  *) echo "usage: ci/gate.sh [--quick]" >&2; exit 2 ;;
esac

timings=()
started=$SECONDS
step_started=$SECONDS
current=""
step() {
  finish_step
  current="$*"
  step_started=$SECONDS
  printf '\n==> %s\n' "$current"
}
finish_step() {
  if [ -n "$current" ]; then
    timings+=("$(printf '%5ds  %s' $((SECONDS - step_started)) "$current")")
  fi
}

step "format"
cargo fmt --all -- --check

step "tidy: every Rust file documents what it owns"
ci/tidy.sh

step "workflow lint: .github/workflows with actionlint"
ci/workflow-lint/run.sh

step "clippy (production build)"
cargo clippy --workspace --all-targets -- -D warnings

if [ "$tier" = quick ]; then
  step "simulation build: the tunnel's unit tests (oracles, scenarios, reports; madsim)"
  cargo sim-test --lib

  step "a sample of every scenario: seed 1 of each madsim scenario (JUnit: target/quick/junit.xml)"
  rm -rf target/quick
  cargo sim sweep scenarios --seed 1 --seeds 1 --jobs 2 --artifacts target/quick/artifacts \
    --junit target/quick/junit.xml

  step "loom: exhaustive models of the connection lifecycle"
  ci/loom.sh

  step "museum: the exhibits whose files this change touches"
  ci/museum-touched.sh

  finish_step
  printf '\nquick tier timings:\n'
  printf '%s\n' "${timings[@]}"
  printf '%5ds  total\n' $((SECONDS - started))
  printf '\nquick tier passed (the full gate runs on the main branch: ci/test)\n'
  exit 0
fi

step "clippy (simulation build, --cfg madsim)"
cargo sim-clippy -- -D warnings

step "clippy (loom-tests under shuttle and under --cfg loom)"
cargo clippy -p loom-tests --all-targets --features shuttle -- -D warnings
RUSTFLAGS="--cfg loom" cargo clippy --locked -p loom-tests --all-targets --target-dir target/loom -- -D warnings

step "plain tests: lifecycle (+ state machine vs reference model), relay on real loopback, scenario parsing, oracles, reports"
cargo test --workspace

step "xrpc check: the atproto client (@atproto/api) against the relay binary those tests built (~3 s)"
ci/xrpc-check/run.sh

step "shuttle: the lifecycle models with more threads, random and PCT schedulers"
cargo test -p loom-tests --features shuttle

step "simulation tests: scenarios over many seeds (madsim)"
# Two test threads per core: a test runs its seeds on two threads, but tests with one or
# three seeds leave a core idle at the harness's default of one test per core (603 s with
# the default on 2 cores, 372 s with this: BENCHMARKS.md, "atproto frames").
RUST_TEST_THREADS=$(($(nproc) * 2)) cargo sim-test

# Seed 1 of each: with the realistic-volume scenarios (~9 s a run, three runs a pair) seeds
# 1-2 took 410 s of the 45-minute budget; the back-to-back passes still put every pair
# after all the others, in one order or the other. The three passes run at once (alone and
# in reverse in child processes): 252 s instead of ~346 s one pass after another.
# `cargo sim isolation` would first rebuild the simulator (75 s on 2 cores): the madsim
# suite's build unifies the dev-dependencies' features (bitflags' `std`, through insta), so
# its rusqlite, relay and windtunnel differ from `cargo sim`'s. The suite's build has just
# produced the binary with the same code: this step runs that one.
step "isolation: every madsim scenario, seed 1, hashes the same alone (own process) as back to back in one process, in order and in reverse"
target/sim/release/windtunnel isolation scenarios --seeds 1

step "loom: exhaustive models of the connection lifecycle"
ci/loom.sh

if [ "${GATE_MUSEUM:-all}" = loom ]; then
  step "museum (loom exhibits only, GATE_MUSEUM=loom): every historical lifecycle bug must be caught by loom"
  ci/mutants.sh
else
  step "museum: every historical bug, re-introduced, must be caught by its scenario or loom model"
  ci/museum.sh
fi

finish_step
printf '\ngate timings:\n'
printf '%s\n' "${timings[@]}"
printf '%5ds  total\n' $((SECONDS - started))
printf '\ngate passed\n'
