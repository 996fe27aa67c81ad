#!/usr/bin/env bash
# Issue 28: export the runs of scripts/train_real_patients.sh that have finished (one model repository per
# seed, each card with its volume calibration), score them with bench/quality.py on lgg:val, real:val and
# held-out phantoms (the cases of the shipped models' tables in docs/), then apply the ship rule
# (bench/ship_rule.py) and compare jhead with interp over the seeds (bench/seeds.py).
# Every model is exported with its final weights (the moving average of the last epoch): on real patients the
# validation split's best epoch was an early, under-trained one (docs/method.md, issue 28).
# Writes only under $LOWRESSEG_RUNS (default ~/lowresseg-runs); docs/ is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${LOWRESSEG_VENV:-$PWD/.venv}/bin:$PATH"
RUNS=${LOWRESSEG_RUNS:-$HOME/lowresseg-runs}
DATA=${EVAL_DATA:-lgg:val,real:val,phantom:10:1001}
for seed in 0 1 2; do
  repo="$RUNS/candidates-s$seed" out="$RUNS/bench-s$seed"
  runs=()
  for run in "$RUNS"/r28-*-s$seed; do [ -f "$run/state.json" ] && runs+=("$run"); done
  [ ${#runs[@]} -gt 0 ] || continue
  mkdir -p "$repo"
  for run in "${runs[@]}"; do
    lowresseg export "$run" --repository "$repo" --overwrite --checkpoint final
  done
  python bench/quality.py --repository "$repo" --data "$DATA" --threads "${THREADS:-0}" --out "$out" --write-cards
  python bench/ship_rule.py --shipped docs --candidates "$out"
done
folders=()
for seed in 0 1 2; do [ -d "$RUNS/bench-s$seed" ] && folders+=("$RUNS/bench-s$seed"); done
python bench/seeds.py --a elunet-jhead-32to256 --b elunet-interp-32to256 "${folders[@]}" || true
