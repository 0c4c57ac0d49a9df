#!/usr/bin/env bash
# Interop with the reference PDS (issue 21, item 4).
#
# Starts an in-memory PLC directory and Bluesky's reference PDS on loopback (pds.mjs), makes
# 3 accounts and 30 commits, and checks with third-party firehose clients that every commit
# the PDS made arrives, decodable:
#   (A) on the PDS's own ws://localhost:PDS/xrpc/com.atproto.sync.subscribeRepos;
#   (B) unless --pds-only: through our relay. The relay (RELAY_BIN, default
#       target/release/relay, built if absent) is started on a fresh database, is asked to crawl
#       "localhost:PDS" (POST /xrpc/com.atproto.sync.requestCrawl: a development host with its
#       own port, as an operator names a local PDS), and the same clients read the
#       relay's ws://127.0.0.1:RELAY/xrpc/com.atproto.sync.subscribeRepos?cursor=0, which must
#       carry every commit, decodable, with seq exactly 1, 2, 3, ...
# Two readers on each target, both from cursor 0:
#   check.py        MarshalX's Python atproto SDK, independent of Bluesky's TypeScript (which
#                   the PDS is): the main check, per frame and per commit (its docstring);
#   sync-check.mjs  Bluesky's @atproto/sync Firehose, as an AppView runs it: lexicon
#                   validation that needs CIDs as DAG-CBOR links (the Python decoder cannot
#                   tell a link from a byte string), commit signatures checked against the
#                   PLC directory's keys, every op proven against the commit's MST.
# Half the commits are written before the readers connect (they come from a cursor=0 replay;
# for (B) they are also written before the crawl request, so the relay has to read the PDS
# from cursor 0), half after (live).
#
#   ci/atproto-interop/run.sh [--pds-only]
#
# Exit 0 when every target run passed, 1 otherwise. Every wait has a timeout. Installs its own
# dependencies on first run (and again when package-lock.json or requirements.txt change) into
# ci/atproto-interop/node_modules and ci/atproto-interop/.venv (both gitignored). Needs Node.js
# 20 with its headers (/usr/include/node: better-sqlite3 compiles at install), a C++ toolchain,
# python3 3.11+ (the pinned set needs it; PYTHON=... to choose) with venv, and curl.
# INTEROP_KEEP=1 keeps the work directory (logs, databases); CHECK_TIMEOUT_S (default 30) is
# how long each reader may take.
#
# Pinned (package-lock.json, requirements.txt), as measured on the project's 2-core machine
# with Node 20.20 and Python 3.11:
#   @atproto/dev-env 0.3.215 (the newest whose engines allow Node 20), bringing @atproto/pds
#   0.4.217 and @did-plc/server 0.0.1; @atproto/ws-client overridden to 0.0.4 (0.1.8+ needs
#   Node 22); @atproto/sync 0.1.40 and @atproto/identity 0.4.12 (the versions dev-env brings);
#   better-sqlite3 10.1.0 (built from source); Python atproto 0.0.73 (libipld 3.5.0,
#   websockets 17.4, pydantic 2.14.4).
# Measured (2026-12-06): the first install takes 1.5-3.5 min: npm ci (474 packages, most of
# the time compiling better-sqlite3) 95 s on a quiet machine, 3 min 10 s with other builds
# sharing the 2 cores (load average 7); pip into the venv 12-20 s. A run after install:
# 8-18 s wall for (A), the longer with other builds running (the PLC and PDS start in 4-7 s;
# the readers need 2-6 s from there);
# (B) adds about 2 s: both targets together took 10 s wall (2026-12-07, quiet): the relay
# carries all 30 commits and 3 #identity and 3 #account frames, seq 1..36, each commit's
# signature and MST proof verified by @atproto/sync; the PDS's 3 #sync frames repeat the rev
# of the account's first commit and are dropped as stale (the relay keeps one rev per DID).
set -euo pipefail

# The relay's allowlist of upstream hosts it may dial over plain ws:// (no TLS); naming
# localhost there exactly also lets requestCrawl take it. An empty value leaves it out.
RELAY_INSECURE_WS_KEY=${RELAY_INSECURE_WS_KEY-upstream.insecure_ws_hosts}
# How long each firehose reader may take, from its start to the last commit.
CHECK_TIMEOUT_S=${CHECK_TIMEOUT_S:-30}

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

through_relay=1
for arg in "$@"; do
  case $arg in
    --pds-only) through_relay=0 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "run.sh: unknown argument $arg (try --help)" >&2
      exit 2
      ;;
  esac
done

say() { printf 'atproto-interop: %s\n' "$*"; }
die() {
  printf 'atproto-interop: %s\n' "$*" >&2
  exit 1
}
for tool in node npm curl; do
  command -v "$tool" >/dev/null 2>&1 || die "needs $tool on PATH"
done
python=${PYTHON:-python3}
command -v "$python" >/dev/null 2>&1 || die "needs $python on PATH (or PYTHON=...)"

# ---- dependencies (first run, or when a pin changed)
stamp() { sha256sum "$1" | cut -d' ' -f1; }
install_start=$SECONDS
if [ "$(cat "$here/node_modules/.interop-stamp" 2>/dev/null)" != "$(stamp "$here/package-lock.json")" ]; then
  say "installing the PDS (npm ci; compiles better-sqlite3, a minute or two)"
  (cd "$here" && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
  stamp "$here/package-lock.json" >"$here/node_modules/.interop-stamp"
fi
venv=$here/.venv
if [ "$(cat "$venv/.interop-stamp" 2>/dev/null)" != "$(stamp "$here/requirements.txt")" ]; then
  say "installing the Python atproto SDK into $venv"
  rm -rf "$venv"
  "$python" -m venv "$venv" || die "$python -m venv failed"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --require-virtualenv \
    -r "$here/requirements.txt" || die "pip install failed"
  stamp "$here/requirements.txt" >"$venv/.interop-stamp"
fi
if [ $((SECONDS - install_start)) -gt 1 ]; then
  say "installed in $((SECONDS - install_start)) s"
fi

relay_bin=${RELAY_BIN:-$repo/target/release/relay}
if [ "$through_relay" = 1 ] && [ ! -x "$relay_bin" ]; then
  [ -z "${RELAY_BIN:-}" ] || die "RELAY_BIN=$RELAY_BIN is not an executable"
  say "building the relay (cargo build --release -p relay)"
  (cd "$repo" && cargo build --release -p relay) || die "the relay does not build"
fi

# ---- run
run_start=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/atproto-interop.XXXXXX")
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${INTEROP_KEEP:-0}" = 1 ]; then
    say "kept $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 25000))
    if port_is_free "$p" && [[ " ${taken:-} " != *" $p "* ]]; then
      taken="${taken:-} $p"
      echo "$p"
      return
    fi
  done
  die "no free port found"
}
taken=""
pds_port=${PDS_PORT:-$(free_port)}
taken="$taken $pds_port"
plc_port=${PLC_PORT:-$(free_port)}
taken="$taken $plc_port"
relay_port=${RELAY_PORT:-$(free_port)}

# wait_for SECONDS PID DESCRIPTION COMMAND...: until COMMAND succeeds; fails if PID exits.
wait_for() {
  local limit=$1 pid=$2 what=$3
  shift 3
  local deadline=$((SECONDS + limit))
  until "$@"; do
    kill -0 "$pid" 2>/dev/null || return 2
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 0.1
  done
}

node "$here/pds.mjs" --work "$work" --pds-port "$pds_port" --plc-port "$plc_port" >"$work/pds.log" 2>&1 &
pds_pid=$!
pids+=("$pds_pid")
if ! wait_for 60 "$pds_pid" "the PDS" test -s "$work/pds.json"; then
  tail -20 "$work/pds.log" >&2
  die "the PLC directory and PDS did not come up on ports $plc_port, $pds_port within 60 s"
fi
say "PLC directory on localhost:$plc_port, PDS on localhost:$pds_port ($((SECONDS - run_start)) s)"
backfill_written() { grep -q '"kind":"\(phase\|failed\)"' "$work/expected.jsonl"; }
if ! wait_for 30 "$pds_pid" "the first writes" backfill_written; then
  tail -20 "$work/pds.log" >&2
  die "pds.mjs did not finish its first writes within 30 s"
fi

# (B) the relay, told to crawl the PDS before any reader connects
relay_result=""
if [ "$through_relay" = 1 ]; then
  relay_args=(serve
    --set "server.listen=127.0.0.1:$relay_port"
    --set "store.path=$work/relay.db"
    --set 'upstream.egress_allow=["127.0.0.0/8", "::1/128"]'
    --set upstream.startup_jitter_ms=0)
  if [ -n "$RELAY_INSECURE_WS_KEY" ]; then
    relay_args+=(--set "$RELAY_INSECURE_WS_KEY=[\"localhost\"]")
  fi
  "$relay_bin" "${relay_args[@]}" >"$work/relay.log" 2>&1 &
  relay_pid=$!
  pids+=("$relay_pid")
  relay_ready() { curl -sf -m 1 "http://127.0.0.1:$relay_port/_readyz" >/dev/null 2>&1; }
  if wait_for 20 "$relay_pid" "the relay" relay_ready; then
    code=$(curl -sS -m 5 -o "$work/crawl.out" -w '%{http_code}' -X POST \
      -H 'content-type: application/json' -d "{\"hostname\": \"localhost:$pds_port\"}" \
      "http://127.0.0.1:$relay_port/xrpc/com.atproto.sync.requestCrawl" 2>"$work/crawl.err") || code=000
    if [[ $code != 2?? ]]; then
      relay_result="relay: FAIL: POST /xrpc/com.atproto.sync.requestCrawl {\"hostname\": \"localhost:$pds_port\"} answered HTTP $code: $(cat "$work/crawl.out" "$work/crawl.err" 2>/dev/null | head -c 300 | tr '\n' ' ')"
    fi
  elif kill -0 "$relay_pid" 2>/dev/null; then
    relay_result="relay: FAIL: $relay_bin did not answer /_readyz on 127.0.0.1:$relay_port within 20 s"
  else
    relay_result="relay: FAIL: $relay_bin exited at startup (its log is below)"
  fi
  [ -z "$relay_result" ] && say "relay on 127.0.0.1:$relay_port, asked to crawl localhost:$pds_port (HTTP $code)"
fi

# The readers, all from cursor 0: check.py (the Python SDK; it says when it is connected) and
# sync-check.mjs (@atproto/sync) on each target.
checker() { # NAME URL [check.py options...]
  local name=$1 url=$2
  shift 2
  exec "$venv/bin/python" "$here/check.py" --name "$name" --url "$url" --expected "$work/expected.jsonl" \
    --connected-file "$work/connected.$name" --timeout "$CHECK_TIMEOUT_S" "$@" >"$work/check.$name.out" 2>&1
}
sync_checker() { # NAME URL
  exec node "$here/sync-check.mjs" --name "$1" --service "$2" --plc "http://localhost:$plc_port" \
    --expected "$work/expected.jsonl" --timeout "$CHECK_TIMEOUT_S" >"$work/check.${1//\//-}.out" 2>&1
}
targets=(pds)
checker pds "ws://localhost:$pds_port" &
pds_check_pid=$!
sync_checker pds/sync "ws://localhost:$pds_port" &
pds_sync_pid=$!
pids+=("$pds_check_pid" "$pds_sync_pid")
if [ "$through_relay" = 1 ] && [ -z "$relay_result" ]; then
  targets+=(relay)
  checker relay "ws://127.0.0.1:$relay_port" --dense-seq &
  relay_check_pid=$!
  sync_checker relay/sync "ws://127.0.0.1:$relay_port" &
  relay_sync_pid=$!
  pids+=("$relay_check_pid" "$relay_sync_pid")
fi
# The live phase starts when the check.py readers are connected (or have given up, or after
# 10 s); the @atproto/sync readers get whatever they missed from the replay.
wait_for 10 "$pds_check_pid" "" test -e "$work/connected.pds" || true
[ -z "${relay_check_pid:-}" ] || wait_for 10 "$relay_check_pid" "" test -e "$work/connected.relay" || true
touch "$work/go"

status=0
pds_failed=0
relay_failed=0
wait "$pds_check_pid" || pds_failed=1
wait "$pds_sync_pid" || pds_failed=1
if [ -n "${relay_check_pid:-}" ]; then
  wait "$relay_check_pid" || relay_failed=1
  wait "$relay_sync_pid" || relay_failed=1
fi
[ "$pds_failed" = 0 ] && [ "$relay_failed" = 0 ] || status=1

# ---- summary
echo
say "summary (run took $((SECONDS - run_start)) s):"
cat "$work/check.pds.out" "$work/check.pds-sync.out"
if [ "$through_relay" = 1 ]; then
  if [ -n "$relay_result" ]; then
    echo "$relay_result"
    status=1
  else
    cat "$work/check.relay.out" "$work/check.relay-sync.out"
  fi
  if [ -n "$relay_result" ] || [ "$relay_failed" = 1 ]; then
    echo "relay: the last lines of its log:"
    tail -8 "$work/relay.log" | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/relay:   | /'
    if [ -n "$RELAY_INSECURE_WS_KEY" ] && grep -q "$RELAY_INSECURE_WS_KEY" "$work/relay.log"; then
      echo "relay: (the plain-ws:// allowlist setting is named by RELAY_INSECURE_WS_KEY at the top of run.sh)"
    fi
  fi
else
  echo "relay: not run (--pds-only)"
fi
if grep -q '"kind":"failed"' "$work/expected.jsonl" 2>/dev/null; then
  tail -20 "$work/pds.log" >&2
  status=1
fi
exit "$status"
