#!/usr/bin/env bash
# Run every benchmark with its full setting and rebuild the tables of benchmarks/README.md.
#
#   bash benchmarks/run_all.sh                 # full settings (the search-quality part takes ~2 hours)
#   bash benchmarks/run_all.sh --quick         # smoke settings, a few minutes
#   DATA=/path/to/cats-vs-dogs bash benchmarks/run_all.sh   # a real photo set as the harder dataset
#
# Results go to benchmarks/results/*.json; benchmarks/report.py prints the Markdown tables.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
QUICK=()
[ "${1:-}" = "--quick" ] && QUICK=(--quick)
DATA_ARGS=()
[ -n "${DATA:-}" ] && DATA_ARGS=(--data "$DATA")

echo "== 1. engine overhead"
"$PY" benchmarks/bench_engine.py "${QUICK[@]}"
if [ -n "${DATA:-}" ] && [ ${#QUICK[@]} -eq 0 ]; then
  "$PY" benchmarks/bench_engine.py --data "$DATA" --image-size 64 --out benchmarks/results/engine_photos.json
fi
echo "== 2. search quality per budget"
"$PY" benchmarks/bench_search_quality.py "${QUICK[@]}" "${DATA_ARGS[@]}" --budget "${BUDGET:-5m}" --seeds "${SEEDS:-0,1,2}"
if [ -f benchmarks/bench_parallel.py ]; then
  echo "== 3. parallel scaling and storage overhead"
  "$PY" benchmarks/bench_parallel.py "${QUICK[@]}"
fi
if [ -f benchmarks/bench_search_strategy.py ]; then
  echo "== search strategy"
  "$PY" benchmarks/bench_search_strategy.py "${QUICK[@]}"
fi
echo "== 4. data pipeline"
"$PY" benchmarks/bench_data_pipeline.py "${QUICK[@]}" "${DATA_ARGS[@]}"
echo "== tables"
"$PY" benchmarks/report.py
