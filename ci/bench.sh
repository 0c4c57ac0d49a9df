#!/usr/bin/env bash
# Fan-out benchmark in real mode (tokio, loopback sockets, SQLite on disk): builds
# server/examples/fanout_bench.rs in release, prints the machine, then the figures.
# It measures and prints; it never fails on speed. Arguments go to the benchmark
# (see --help); without any, the configuration recorded in BENCHMARKS-fanout.md runs.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$#" -eq 0 ]; then
  set -- --consumers 1,100,1000 --events 20000 --rounds 3
fi

# 1,000 consumers hold 2,000 loopback sockets in this one process (both ends).
ulimit -n 8192 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== machine"
echo "nproc: $(nproc)"
lscpu | head -n 15
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "open files limit: $(ulimit -n)"
echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo
echo "== cargo run --release -p relay --example fanout_bench -- $*"
cargo run --quiet --release -p relay --example fanout_bench -- "$@"
