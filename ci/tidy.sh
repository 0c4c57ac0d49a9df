#!/usr/bin/env bash
# Every Rust source file starts with `//!` docs saying what it owns and why
# (rust-analyzer's tidy rule), and relay code spawns only through relay::rt::spawn.
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
