#!/usr/bin/env bash
# The main job (for now): list the shipped models with their integrity check, then measure
# their quality on a few held-out phantoms through the real inference path.
# Outputs go to demo_output/ (BENCHMARKS.md section, per-case CSV, quality.png).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
lowresseg models
python3 bench/quality.py --cases ${DEMO_CASES:-3} --tune-data phantom:4:1 --out demo_output
echo "demo outputs: $(pwd)/demo_output (quality.png, quality_cases.csv, BENCHMARKS.md)"
