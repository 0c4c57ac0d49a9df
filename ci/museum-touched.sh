#!/usr/bin/env bash
# The museum exhibits a change touches: every ci/museum/*.patch that edits a file this
# change edits or whose catching scenario file it edits, run by ci/museum.sh (the quick tier's museum step; the full gate runs them
# all). The change is what differs from the merge base with $QUICK_BASE (default
# origin/main, else main), committed or not. Prints which exhibits it chose and why.
set -euo pipefail
cd "$(dirname "$0")/.."

base_ref=${QUICK_BASE:-}
if [ -z "$base_ref" ]; then
  if git rev-parse --verify -q origin/main >/dev/null; then base_ref=origin/main; else base_ref=main; fi
fi
base=$(git merge-base HEAD "$base_ref" 2>/dev/null) || {
  echo "museum-touched: no merge base with $base_ref (set QUICK_BASE); running every exhibit" >&2
  exec ci/museum.sh
}
changed=$(
  {
    git diff --name-only "$base"
    git ls-files --others --exclude-standard
  } | LC_ALL=C sort -u
)
chosen=()
for patch in ci/museum/*.patch; do
  touched=$(git apply --numstat "$patch" | awk '{print $3}')
  # Its own file (a rewritten patch or header) and the scenario that must catch it count too.
  touched="$touched
$patch
$(sed -n 's/^Caught-by: scenario \([^ ]*\.toml\) .*/\1/p' "$patch")"
  if grep -qxFf <(printf '%s\n' "$touched" | sed '/^$/d') <<<"$changed"; then
    chosen+=("$patch")
  fi
done
if [ ${#chosen[@]} -eq 0 ]; then
  echo "museum-touched: this change (against $base_ref) edits no file an exhibit patches or is caught by; none to run"
  exit 0
fi
echo "museum-touched: ${#chosen[@]} exhibit(s) patch, or are caught by, files this change (against $base_ref) edits:"
printf '  %s\n' "${chosen[@]}"
exec ci/museum.sh "${chosen[@]}"
