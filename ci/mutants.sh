#!/usr/bin/env bash
# The loom half of the regression museum (ci/museum.sh): the exhibits in ci/museum/ whose
# header says `Caught-by: loom <model>` (historical relay-lifecycle bugs), each required to
# make its loom model fail. Kept so `ci/mutants.sh` still works; the gate runs the whole
# museum. Report: target/museum/report.txt.
#
# Usage: ci/mutants.sh [PATCH...]   (default: every loom exhibit in ci/museum/)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
  mapfile -t loom_exhibits < <(grep -l '^Caught-by: loom ' ci/museum/*.patch)
  set -- "${loom_exhibits[@]}"
fi
exec ci/museum.sh "$@"
