#!/usr/bin/env bash
# Every benchmark BENCHMARKS.md records, by name. It measures and prints; it never fails on
# speed. The machine is printed first: these machines are noisy, so each benchmark
# compares against a baseline in the same run and its figures are read as ratios.
#
#   ci/bench.sh                 all of them, in the order below (about 45 min on 2 cores)
#   ci/bench.sh NAME [ARGS...]  one of them, ARGS passed to it:
#     tunnel      cold_start_2800 vs the bare madsim program (seed pairs), seeds/s for
#                 churn_max_connections and close_recv_race (sim/benches/tunnel.rs)
#     seed-memory peak RSS of one seed per process (/usr/bin/time) for those three scenarios
#     loom        the loom suite, time per model (ci/loom.sh)
#     healthz     /_healthz requests/s, relay vs a minimal hyper server, same load generator
#     idle        resident memory per idle connection at 10,000 connections
#     fanout      events/s to 1, 100 and 1,000 consumers vs broadcast-channel baselines
#     store       commits/s with durable commits (synchronous = FULL) vs NORMAL, by batch size
#     relay       the relay process with 16 consumers in the public figures' terms: unpaced
#                 ingest, 4,000/s paced latency, a 32,768-event burst; writes
#                 docs/relay_bench.svg (latency CDF, delivery over time)
#     cold-start  scenarios/cold_start_2800.toml for real (run --real, 10 minutes): 2,800
#                 local upstream sockets, probe latency, the relay process's RSS and CPU
#     snapshot    scenarios/network_snapshot.toml for real (run --real, 10 minutes): the
#                 3,208-host table on loopback, its dead hosts refused, unresolved, black holes
set -euo pipefail
cd "$(dirname "$0")/.."

# 1,000 consumers or 10,000 idle connections hold that many loopback sockets per process.
ulimit -n 16384 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

machine() {
  echo "== machine"
  echo "nproc: $(nproc)"
  lscpu | head -n 15
  echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "open files limit: $(ulimit -n)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo
}

run() {
  echo "== $*"
  "$@"
  echo
}

tunnel() {
  run cargo sim-bench "$@"
}

seed_memory() {
  cargo sim --help >/dev/null # builds target/sim/release/windtunnel
  for scenario in cold_start_2800 churn_max_connections close_recv_race; do
    for seed in 1 2 3; do
      /usr/bin/time -f "$scenario seed $seed: peak RSS %M KiB, wall %e s" \
        target/sim/release/windtunnel run "scenarios/$scenario.toml" --seed "$seed" >/dev/null
    done
  done
}

loom() {
  run ci/loom.sh "$@"
}

real_example() {
  local example=$1
  shift
  cargo build --quiet --release -p relay --bin relay --example "$example"
  run "target/release/examples/$example" "$@"
}

healthz() { real_example http_bench healthz "$@"; }
store() { real_example store_bench "$@"; }
idle() { real_example http_bench idle "$@"; }
fanout() {
  if [ "$#" -eq 0 ]; then
    set -- --consumers 1,100,1000 --events 20000 --rounds 3
  fi
  real_example fanout_bench "$@"
}
relay() {
  if [ "$#" -eq 0 ]; then
    set -- --plot docs/relay_bench.svg
  fi
  real_example relay_bench "$@"
}
# The cold-start scenario itself, for real: the tunnel's own upstream actors on loopback
# sockets and the release relay binary as a child process (sim/src/worlds/real).
cold_start() {
  cargo build --release -p windtunnel -p relay
  run target/release/windtunnel run --real scenarios/cold_start_2800.toml --seed 1 \
    --relay-bin target/release/relay "$@"
}

# The snapshot's host table for real: its 3,208 hosts on loopback addresses in table order.
snapshot() {
  cargo build --release -p windtunnel -p relay
  run target/release/windtunnel run --real scenarios/network_snapshot.toml --seed 1 \
    --relay-bin target/release/relay "$@"
}

machine
name=${1:-all}
[ "$#" -gt 0 ] && shift
case "$name" in
  tunnel) tunnel "$@" ;;
  seed-memory) seed_memory ;;
  loom) loom "$@" ;;
  healthz) healthz "$@" ;;
  idle) idle "$@" ;;
  fanout) fanout "$@" ;;
  store) store "$@" ;;
  relay) relay "$@" ;;
  cold-start) cold_start "$@" ;;
  snapshot) snapshot "$@" ;;
  all)
    tunnel
    seed_memory
    loom
    healthz
    idle
    fanout
    store
    relay
    cold_start
    snapshot
    ;;
  *)
    echo "unknown benchmark '$name'; see the list at the top of $0" >&2
    exit 2
    ;;
esac
