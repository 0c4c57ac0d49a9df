#!/usr/bin/env bash
# Every Rust source file starts with `//!` docs saying what it owns and why
# (rust-analyzer's tidy rule), relay code spawns only through relay::rt::spawn, every
# select! is biased, and every museum patch still applies to the tree (so a refactor that
# moves an exhibit's lines fails here in seconds, not 25 minutes later in the museum).
# Prints the offenders and fails if there are any.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=$(git ls-files --cached --others --exclude-standard '*.rs' | while read -r file; do
  [ -f "$file" ] || continue
  head -n 1 "$file" | grep -q '^//!' || echo "$file"
done)
if [ -n "$missing" ]; then
  echo "these files do not start with //! module docs:"
  echo "$missing"
  exit 1
fi

# The relay spawns only through `relay::rt::spawn`: that is what keeps its task census
# (`rt::tasks_alive`, the tunnel's leak signal) complete.
stray_spawns=$(git grep -nE 'tokio::(task::)?spawn\b' -- 'server/src/*.rs' ':!server/src/rt/mod.rs' || true)
if [ -n "$stray_spawns" ]; then
  echo "relay code spawning around relay::rt::spawn:"
  echo "$stray_spawns"
  exit 1
fi

# Every `select!` in the relay and the tunnel's actors is `biased`: real tokio (the turmoil
# engine, production) draws an unbiased select's branch order from an unseeded RNG, which
# would make turmoil runs of one seed differ.
unbiased=$(git grep -nA1 -E 'select! \{' -- 'server/src/*.rs' 'sim/src/*.rs' | grep -E '^[^:]+-[0-9]+-' | grep -v 'biased;' || true)
if [ -n "$unbiased" ]; then
  echo "select! without 'biased;' as its first line:"
  echo "$unbiased"
  exit 1
fi

# Every museum exhibit (and survivor) still applies to today's tree.
stale_patches=$(for patch in ci/museum/*.patch ci/museum/survivors/*.patch; do
  [ -e "$patch" ] || continue # survivors/ may be empty
  git apply --check "$patch" 2>/dev/null || echo "$patch"
done)
if [ -n "$stale_patches" ]; then
  echo "museum patches that no longer apply (regenerate them against the moved code):"
  echo "$stale_patches"
  exit 1
fi
