#!/usr/bin/env bash
# Set up everything and run every benchmark in benchmarks/ (results: benchmarks/results/*.json, committed; --quick runs go to benchmarks/results/quick/, ignored).
# Pass --quick for a smaller, faster run. Record the numbers, with the machine, in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh bench
for bench in benchmarks/bench_*.py; do
  echo "== $bench"
  python "$bench" "$@"
done
