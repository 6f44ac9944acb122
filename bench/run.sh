#!/usr/bin/env bash
# The whole benchmark in one command: setup, then the mass-rollout, scale, metrics-cost,
# revision-cost and fleet runs.
#   bash bench/run.sh            # full: about 10 minutes on 2 cores
#   bash bench/run.sh --quick    # 2-second runs, 20,000-device scale run: about 3 minutes
# Figures are printed and written as JSON to bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash bench/setup.sh
mkdir -p bench/results
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
quick=()
[ "${1:-}" = "--quick" ] && quick=(--quick)
timeout 900 .venv/bin/python bench/enroll_bench.py "${quick[@]}" \
  --json-out "bench/results/enroll-${stamp}.json"
timeout 900 .venv/bin/python bench/scale_bench.py "${quick[@]}" \
  --json-out "bench/results/scale-${stamp}.json"
timeout 900 .venv/bin/python bench/metrics_cost.py "${quick[@]}" \
  --json-out "bench/results/metrics-cost-${stamp}.json"
timeout 900 .venv/bin/python bench/revision_cost.py "${quick[@]}" \
  --json-out "bench/results/revision-cost-${stamp}.json"
fleet=(--devices 300 --rate 250 --rounds 1)
[ "${1:-}" = "--quick" ] && fleet=(--devices 100 --rate 100 --duration 3 --rounds 1 --burst 100)
timeout 900 .venv/bin/python bench/fleet.py "${fleet[@]}" \
  --json-out "bench/results/fleet-${stamp}.json"
