#!/usr/bin/env bash
# Historical lifecycle bugs must be caught by loom. Each patch in ci/mutants/ re-introduces
# one bug into relay-lifecycle (its header says which bug, where it came from, and which
# model must catch it). For each: copy the workspace to a scratch directory, apply the
# patch, build the loom suite, run it, and require that it fails and that the named model
# is among the failures. A patch that no longer applies or no longer compiles fails this
# script: it would otherwise count as caught without testing anything.
#
# Usage: ci/mutants.sh [PATCH...]   (default: every ci/mutants/*.patch)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
# One fixed scratch path and one target dir for every mutant: cargo then rebuilds only the
# two small crates a patch touches, not loom and its dependencies. The scratch copy lives
# outside this repository: `git apply` run inside a repository's subdirectory silently
# skips paths outside that subdirectory.
scratch="${TMPDIR:-/tmp}/windtunnel-mutants-$(id -u)/workspace"
target="$root/target/mutants/target"
report="$root/target/mutants/report.txt"
mkdir -p "$target"
unset LOOM_MAX_PREEMPTIONS LOOM_MAX_DURATION LOOM_MAX_PERMUTATIONS LOOM_MAX_BRANCHES LOOM_CHECKPOINT_FILE
export RUSTFLAGS="--cfg loom"

patches=("$@")
[ ${#patches[@]} -gt 0 ] || patches=(ci/mutants/*.patch)

: >"$report"
survivors=0 # patches not killed as their header says
for patch in "${patches[@]}"; do
  name=$(basename "$patch" .patch)
  expected=$(sed -n 's/^Caught-by: //p' "$patch")
  [ -n "$expected" ] || { echo "$patch: no 'Caught-by:' line" >&2; exit 2; }

  rm -rf "$scratch"
  mkdir -p "$scratch"
  git ls-files -z | xargs -0 cp --parents -t "$scratch"
  if ! (cd "$scratch" && git apply --whitespace=nowarn "$root/$patch"); then
    echo "MUTANT $name: patch does not apply to this tree" >&2
    exit 2
  fi
  if (cd "$scratch" && git diff --no-index --quiet "$root/server" server); then
    echo "MUTANT $name: applying the patch changed nothing" >&2
    exit 2
  fi
  log="$root/target/mutants/$name.log"
  if ! (cd "$scratch" && cargo test --locked -q -p loom-tests --release --target-dir "$target" --no-run) >"$log" 2>&1; then
    echo "MUTANT $name: does not compile (see $log)" >&2
    tail -20 "$log" >&2
    exit 2
  fi
  # One process per model: a model that panics inside a destructor while unwinding aborts
  # its process, which would hide the verdicts of the models after it.
  models=$(cd "$scratch" && cargo test --locked -q -p loom-tests --release --target-dir "$target" \
    --test lifecycle -- --list 2>/dev/null | sed -n 's/^\(loom_suite::[a-z_]*\): test$/\1/p')
  [ -n "$models" ] || { echo "MUTANT $name: no loom models listed" >&2; exit 2; }
  failed=""
  : >"$log"
  for model in $models; do
    set +e
    (cd "$scratch" && timeout 600 cargo test --locked -q -p loom-tests --release --target-dir "$target" \
      --test lifecycle -- --exact "$model") >>"$log" 2>&1
    status=$?
    set -e
    if [ "$status" -eq 124 ]; then
      echo "MUTANT $name: $model timed out (see $log)" >&2
      exit 2
    fi
    if [ "$status" -ne 0 ]; then
      short=${model#loom_suite::}
      found_in=$(sed -n "s/^loom model $short: FAILED in execution \([0-9]*\).*/\1/p" "$log" | tail -1)
      failed="$failed $short${found_in:+@$found_in}"
    fi
  done
  failed=${failed# }
  if [ -z "$failed" ]; then
    line="SURVIVED $name: the loom suite passed with this bug in place"
    survivors=$((survivors + 1))
  elif [[ " $failed " != *" $expected"[@\ ]* ]]; then
    line="MISNAMED $name: loom failed ($failed) but not $expected, the model its header names"
    survivors=$((survivors + 1))
  else
    line="killed   $name by: $failed (model@execution that found it)"
  fi
  echo "$line" | tee -a "$report"
done
rm -rf "$scratch"

total=${#patches[@]}
echo "mutants: $((total - survivors)) of $total killed by loom (report: target/mutants/report.txt)"
[ "$survivors" -eq 0 ]
