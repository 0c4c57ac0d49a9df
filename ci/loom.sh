#!/usr/bin/env bash
# The loom suite: every lifecycle model in loom-tests, explored exhaustively (no preemption
# bound, no duration or permutation limit: loom stops silently at those, so they are
# cleared here and in the code). Runs one model at a time so each reported wall time is its
# own. Prints, per model, the executions loom ran and the time; the same lines go to
# target/loom/report.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
unset LOOM_MAX_PREEMPTIONS LOOM_MAX_DURATION LOOM_MAX_PERMUTATIONS LOOM_MAX_BRANCHES LOOM_CHECKPOINT_FILE
export RUSTFLAGS="--cfg loom"
mkdir -p target/loom
log=target/loom/suite.log
set +e
cargo test --locked -p loom-tests --release --target-dir target/loom --test lifecycle \
  -- --test-threads=1 --nocapture 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
grep -o 'loom model .*' "$log" >target/loom/report.txt || true
echo
echo "loom models (executions, wall time):"
cat target/loom/report.txt
exit "$status"
