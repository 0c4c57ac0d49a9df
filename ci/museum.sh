#!/usr/bin/env bash
# Regression museum: every historical bug must still be caught. Each patch in ci/museum/
# re-introduces one bug into the relay (server/ only); its header says which bug (`Bug:`),
# where it came from (`History:`) and what must catch it (`Caught-by:`), one of
#
#   Caught-by: loom <model>
#       the loom suite (every model in its own process) must fail, <model> among the failures;
#   Caught-by: scenario <scenarios/x.toml> seed=<N> oracle=<oracle>
#       the patched tree's simulator must FAIL that scenario at that seed with <oracle>
#       among the violated oracles (the scenario must pass unpatched: ci/test's simulation
#       tests run seeds 1..=20 of every scenario, so pick a seed in that range);
#   Caught-by: test <package> [--test <suite>] <test path>
#       that test of the package's library (cargo test -p <package> --lib), or of its
#       test suite <package dir>/tests/<suite>/main.rs, must fail: real threads, for bugs
#       only true parallelism shows, which the single-threaded tunnel cannot.
#
# For each patch: copy the working tree (tracked and untracked, not ignored) to a scratch
# directory outside the repository, apply the patch, require that it changed something,
# build, run what its header names, and judge:
#   KILLED    the named model / oracle failed
#   SURVIVED  everything passed with the bug in place (a gap in the checks: fix the checks)
#   MISNAMED  something else failed, not what the header names
# A patch that does not apply, changes nothing, touches anything outside server/, does not
# compile, or names something that does not exist fails the script at once (exit 2): it
# would otherwise count as caught without testing anything.
#
# ci/museum/survivors/ holds bug ideas that no check catches yet (their headers say why and
# what would); they are not run by default:
# `ci/museum.sh ci/museum/survivors/<x>.patch` shows one SURVIVE. Move one into ci/museum/
# once a check kills it.
#
# Usage: ci/museum.sh [PATCH...]   (default: every ci/museum/*.patch)
#        ci/museum.sh --drop-caches   removes the build caches below (~9 GB: copies of the
#                                     test and simulator builds); the next run rebuilds them
# Writes target/museum/report.txt (one line per patch, with build and run times), a log per
# patch in target/museum/logs/, and each failing run's artifact folder in
# target/museum/artifacts/<patch>/. Exit 0 if every patch was killed, 1 if any survived or
# was misnamed, 2 if a patch is broken.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out="$root/target/museum"
# One fixed scratch path (kept between runs) and persistent target dirs for every patch (loom: target/museum/loom;
# simulator: target/museum/sim; unit tests: target/museum/plain; the simulator's, reached through a `target` symlink in the scratch copy so the
# `cargo sim` alias builds there): cargo then rebuilds only the workspace crates, never the
# dependencies. The scratch copy lives outside this repository: `git apply` run inside a
# repository's subdirectory silently skips paths outside that subdirectory.
scratch_parent="${TMPDIR:-/tmp}/windtunnel-museum-$(id -u)"
scratch="$scratch_parent/workspace"
report="$out/report.txt"
if [ "${1:-}" = --drop-caches ]; then
  rm -rf "$out/plain" "$out/sim" "$out/loom"
  exit 0
fi
mkdir -p "$scratch_parent" "$out/logs" "$out/artifacts" "$out/loom"
# A cold museum starts from the simulation build's compiled dependencies (the gate's madsim
# suite and isolation step have just built them with the same flags and profile): copied,
# not linked, so patched builds never touch target/sim. Only the workspace crates (other
# paths, other hashes) are then built for the first exhibit: ~4 minutes less on 2 cores.
if [ ! -d "$out/sim/release" ] && [ -d "$root/target/sim/release/deps" ]; then
  mkdir -p "$out/sim"
  cp -a "$root/target/sim/release" "$out/sim/"
fi
# Likewise unit-test exhibits start from the plain test build's dependencies.
if [ ! -d "$out/plain/debug" ] && [ -d "$root/target/debug/deps" ]; then
  mkdir -p "$out/plain"
  cp -a "$root/target/debug" "$out/plain/"
fi
# The scratch path is shared by every run of this script by this user: one at a time.
exec 9>"$scratch_parent/lock"
flock 9

unset LOOM_MAX_PREEMPTIONS LOOM_MAX_DURATION LOOM_MAX_PERMUTATIONS LOOM_MAX_BRANCHES LOOM_CHECKPOINT_FILE
# The simulator's `--cfg madsim` comes from the alias's `build.rustflags`; RUSTFLAGS would
# replace it. Loom builds set their own RUSTFLAGS below.
unset RUSTFLAGS
# Simulator builds: the `cargo sim` alias as is, plus incremental compilation, no debug
# info and opt-level 0 for the three workspace crates (the dependencies keep the alias's
# profile and stay cached). A patch then costs a 3-20 s rebuild instead of minutes: LLVM's
# optimisation of the two crates a patch rebuilds was most of a build. Builds and runs:
# 801 + 143 s of a 970 s museum at opt-level 3, 736 + 151 s of 913 s at 1, 278 + 253 s of
# 559 s at 0 (the unoptimised exhibits run slower, the builds shrink more: BENCHMARKS.md,
# "The gate"). The behaviour, hence every trace hash, is the same as `cargo sim`'s.
sim_cargo=(cargo --locked
  --config profile.release.incremental=true
  --config profile.release.package.relay.debug=0
  --config profile.release.package.relay-lifecycle.debug=0
  --config profile.release.package.windtunnel.debug=0
  --config profile.release.package.relay.opt-level=0
  --config profile.release.package.relay-lifecycle.opt-level=0
  --config profile.release.package.windtunnel.opt-level=0)
loom_cargo=(env "RUSTFLAGS=--cfg loom" cargo test --locked -q -p loom-tests --release --target-dir "$out/loom")
loom_model='^loom ([a-z_0-9]+)$'
unit_test='^test ([a-z_-]+) (--test [a-z_0-9]+ )?([a-z_0-9:]+)$'
scenario_run='^scenario ([^ ]+\.toml) seed=([0-9]+|0x[0-9a-fA-F]+) oracle=([a-z_]+)$'

patches=("$@")
[ ${#patches[@]} -gt 0 ] || patches=(ci/museum/*.patch)
# Loom exhibits first, then the rest, each in the given order: a loom exhibit patches
# relay-lifecycle, which every simulator build depends on, so interleaving the two kinds
# would rebuild the lifecycle crate and everything above it for each simulator exhibit.
loom_first=() others=()
for patch in "${patches[@]}"; do
  if [ -f "$patch" ] && grep -q '^Caught-by: loom ' "$patch"; then
    loom_first+=("$patch")
  else
    others+=("$patch")
  fi
done
patches=("${loom_first[@]}" "${others[@]}")

# Make the scratch copy hold exactly the working tree's files (tracked and untracked, not
# ignored), rewriting only those whose content differs: a rewritten file gets a fresh mtime,
# so cargo rebuilds exactly the crates whose sources differ from its last build (the file
# the previous patch changed included), and no others.
sync_scratch() {
  local want="$scratch_parent/want" have="$scratch_parent/have" file
  mkdir -p "$scratch"
  git ls-files --cached --others --exclude-standard | while IFS= read -r file; do
    [ -f "$file" ] && printf '%s\n' "$file"
  done | LC_ALL=C sort >"$want"
  (cd "$scratch" && find . -path ./target -prune -o -type f -printf '%P\n') | LC_ALL=C sort >"$have"
  LC_ALL=C comm -13 "$want" "$have" | while IFS= read -r file; do rm -f "$scratch/$file"; done
  while IFS= read -r file; do
    if ! cmp -s "$file" "$scratch/$file"; then
      mkdir -p "$scratch/$(dirname "$file")"
      cp "$file" "$scratch/$file"
    fi
  done <"$want"
  ln -sfn "$out" "$scratch/target"
}

broken() { echo "MUSEUM $name: $*" >&2; exit 2; }
seconds() { echo $(($(date +%s) - $1)); }

start_all=$(date +%s)
: >"$report"
survivors=0 # patches not killed as their header says
for patch in "${patches[@]}"; do
  name=$(basename "$patch" .patch)
  [ -f "$patch" ] || broken "no such patch file: $patch"
  patch=$(realpath "$patch")
  for field in Bug History Caught-by; do
    grep -q "^$field: " "$patch" || broken "no '$field:' line in $patch"
  done
  caught=$(sed -n 's/^Caught-by: //p' "$patch")
  if [[ $caught =~ $loom_model ]]; then
    kind=loom model=${BASH_REMATCH[1]}
  elif [[ $caught =~ $scenario_run ]]; then
    kind=scenario scenario=${BASH_REMATCH[1]} seed=${BASH_REMATCH[2]} oracle=${BASH_REMATCH[3]}
    [ -f "$scenario" ] || broken "names $scenario, which does not exist"
    if grep -q '^expect *= *{ *fail' "$scenario"; then
      broken "names $scenario, an expect-fail scenario (name one that must pass unpatched)"
    fi
  elif [[ $caught =~ $unit_test ]]; then
    kind=test package=${BASH_REMATCH[1]} test_target=${BASH_REMATCH[2]:---lib} test_path=${BASH_REMATCH[3]}
  else
    broken "cannot read 'Caught-by: $caught' (want 'loom <model>', 'scenario <file> seed=<N> oracle=<name>' or 'test <package> [--test <suite>] <path>')"
  fi
  touched=$(git apply --numstat "$patch" | awk '{print $3}')
  [ -n "$touched" ] || broken "is not a patch"
  if grep -qv '^server/' <<<"$touched"; then
    broken "touches files outside server/ (exhibits re-introduce relay bugs, nothing else)"
  fi

  sync_scratch
  (cd "$scratch" && git apply --whitespace=nowarn "$patch") || broken "patch does not apply to this tree"
  if (cd "$scratch" && git diff --no-index --quiet "$root/server" server); then
    broken "applying the patch changed nothing"
  fi
  log="$out/logs/$name.log"
  : >"$log"
  started=$(date +%s)

  if [ "$kind" = loom ]; then
    (cd "$scratch" && "${loom_cargo[@]}" --no-run) >>"$log" 2>&1 || { tail -20 "$log" >&2; broken "does not compile (see $log)"; }
    models=$(cd "$scratch" && "${loom_cargo[@]}" --test lifecycle -- --list 2>/dev/null |
      sed -n 's/^\(loom_suite::[a-z_0-9]*\): test$/\1/p')
    [ -n "$models" ] || broken "no loom models listed (see $log)"
    grep -qx "loom_suite::$model" <<<"$models" || broken "names loom model $model, which does not exist"
    built=$(seconds "$started")
    started=$(date +%s)
    # One process per model: a model that panics inside a destructor while unwinding aborts
    # its process, which would hide the verdicts of the models after it.
    failed=""
    for each in $models; do
      set +e
      (cd "$scratch" && timeout 600 "${loom_cargo[@]}" --test lifecycle -- --exact "$each") >>"$log" 2>&1
      status=$?
      set -e
      [ "$status" -ne 124 ] || broken "$each timed out (see $log)"
      if [ "$status" -ne 0 ]; then
        short=${each#loom_suite::}
        found_in=$(sed -n "s/^loom model $short: FAILED in execution \([0-9]*\).*/\1/p" "$log" | tail -1)
        failed="$failed $short${found_in:+@$found_in}"
      fi
    done
    failed=${failed# }
    ran=$(seconds "$started")
    times="[build ${built}s, run ${ran}s]"
    if [ -z "$failed" ]; then
      line="SURVIVED $name: the loom suite passed with this bug in place $times"
    elif [[ " $failed " != *" $model"[@\ ]* ]]; then
      line="MISNAMED $name: loom failed ($failed) but not $model, the model its header names $times"
    else
      line="KILLED   $name: loom $model; failed: $failed (model@execution) $times"
    fi
  elif [ "$kind" = test ]; then
    # shellcheck disable=SC2086 # $test_target is `--lib` or `--test <target>`
    unit_cargo=(cargo test --locked -q -p "$package" $test_target --target-dir "$out/plain")
    (cd "$scratch" && "${unit_cargo[@]}" --no-run) >>"$log" 2>&1 || { tail -20 "$log" >&2; broken "does not compile (see $log)"; }
    listed=$(cd "$scratch" && "${unit_cargo[@]}" -- --list 2>/dev/null || true)
    grep -qx "$test_path: test" <<<"$listed" || broken "names test $test_path of $package, which does not exist"
    built=$(seconds "$started")
    started=$(date +%s)
    set +e
    (cd "$scratch" && timeout 600 "${unit_cargo[@]}" -- --exact "$test_path") >>"$log" 2>&1
    status=$?
    set -e
    ran=$(seconds "$started")
    times="[build ${built}s, run ${ran}s]"
    [ "$status" -ne 124 ] || broken "$test_path timed out (see $log)"
    if [ "$status" -eq 0 ]; then
      line="SURVIVED $name: $package's $test_path passed with this bug in place $times"
    elif grep -qxF -- "---- $test_path stdout ----" "$log"; then
      line="KILLED   $name: test $test_path; $(grep -m1 -A1 ' panicked at ' "$log" | tail -1 | cut -c1-100) $times"
    else
      line="MISNAMED $name: $package's tests failed without $test_path failing $times"
    fi
  else
    (cd "$scratch" && "${sim_cargo[@]}" sim check "$scenario") >>"$log" 2>&1 ||
      { tail -20 "$log" >&2; broken "does not compile, or $scenario is invalid (see $log)"; }
    built=$(seconds "$started")
    started=$(date +%s)
    artifacts="$out/artifacts/$name"
    rm -rf "$artifacts"
    set +e
    (cd "$scratch" && timeout 900 target/sim/release/windtunnel run "$scenario" --seed "$seed" \
      --artifacts "$artifacts") >>"$log" 2>&1
    status=$?
    set -e
    ran=$(seconds "$started")
    times="[build ${built}s, run ${ran}s]"
    [ "$status" -ne 124 ] || broken "$scenario seed=$seed timed out (see $log)"
    [ "$status" -le 1 ] || { tail -20 "$log" >&2; broken "the simulator exited $status (see $log)"; }
    headline=$(grep -m1 -E '^(PASSED|FAILED) ' "$log" || true)
    [ -n "$headline" ] || broken "the simulator printed no verdict (see $log)"
    violated=$(sed -n 's/^  oracles: //p' "$log" | tr ',' '\n' | sed -n 's/^ *\([a-z_]*\) VIOLATED$/\1/p' | tr '\n' ' ')
    violated=${violated% }
    if [ "$status" -eq 0 ]; then
      line="SURVIVED $name: $scenario seed=$seed passed with this bug in place $times"
    elif [[ " $violated " != *" $oracle "* ]]; then
      line="MISNAMED $name: $scenario seed=$seed failed ${violated:-?} but not $oracle, the oracle its header names $times"
    else
      line="KILLED   $name: $scenario seed=$seed $oracle; violated: $violated $times"
    fi
  fi
  case $line in KILLED*) ;; *) survivors=$((survivors + 1)) ;; esac
  echo "$line" | tee -a "$report"
done

total=${#patches[@]}
summary="museum: $((total - survivors)) of $total killed in $(seconds "$start_all")s (report: target/museum/report.txt)"
echo "$summary" | tee -a "$report"
[ "$survivors" -eq 0 ]
