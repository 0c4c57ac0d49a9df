#!/usr/bin/env bash
# The third-party check of the relay's XRPC surface: starts the relay binary (built by
# `cargo test --workspace`/`cargo build`; RELAY_BIN to choose another) on loopback with a
# fresh database and calls it with the atproto client (ci/xrpc-check/check.cjs, @atproto/api
# pinned in package-lock.json; installed first if this checkout has not; needs Node.js 18+).
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v node >/dev/null 2>&1 || { echo "the xrpc check needs Node.js (node) on PATH" >&2; exit 1; }
if [ ! -d ci/xrpc-check/node_modules/@atproto/api ]; then
  npm ci --prefix ci/xrpc-check --no-audit --no-fund --loglevel=error
fi
relay_bin=${RELAY_BIN:-target/debug/relay}
[ -x "$relay_bin" ] || cargo build -q -p relay
work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
# The crawled names are made up (pdsN.example.com), so the existence check, which would
# refuse them for having no address, is off; the relay's own tests cover it.
"$relay_bin" serve --set "server.listen=127.0.0.1:$port" --set "store.path=$work/relay.db" \
  --set upstream.crawl_resolve_timeout_ms=0 >"$work/relay.log" 2>&1 &
relay_pid=$!
trap 'kill "$relay_pid" 2>/dev/null; wait "$relay_pid" 2>/dev/null; rm -rf "$work"' EXIT
for _ in $(seq 100); do
  curl -sf "http://127.0.0.1:$port/_readyz" >/dev/null 2>&1 && break
  kill -0 "$relay_pid" 2>/dev/null || { cat "$work/relay.log" >&2; exit 1; }
  sleep 0.1
done
node ci/xrpc-check/check.cjs "http://127.0.0.1:$port" || { tail -20 "$work/relay.log" >&2; exit 1; }
