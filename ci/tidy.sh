#!/usr/bin/env bash
# Every Rust source file starts with `//!` docs saying what it owns and why
# (rust-analyzer's tidy rule). Prints the offenders and fails if there are any.
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
