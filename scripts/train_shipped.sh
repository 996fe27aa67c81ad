#!/usr/bin/env bash
# Trains and exports the shipped models (Resources/Models) exactly as their model cards record.
# CPU-only is fine (2 cores: about 90 minutes, plus ~7 minutes to generate the phantoms once);
# a GPU is used when present. Resumable: re-run it and finished runs are skipped, interrupted
# ones continue (--resume).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="${LOWRESSEG_VENV:-$PWD/.venv}/bin:$PATH"
DATA=${DATA:-phantom:80:1}
COMMON=(--data "$DATA" --width 8 --seed 0 --neg-ratio 1.0 --batch-size 16)
run() {  # name, then train options
  local name=$1; shift
  if [ -f "runs/$name/state.json" ]; then echo "== $name: already trained"; else
    echo "== training $name"
    lowresseg train "${COMMON[@]}" "$@" --out "runs/$name" --resume
  fi
  lowresseg export "runs/$name" --repository Resources/Models --overwrite
}
run elunet-jhead-32to256  --head jhead  --input-size 32  --epochs 12 --max-slices 2400
run elunet-interp-32to256 --head interp --input-size 32  --epochs 12 --max-slices 2400
run elunet-jhead-16to256  --head jhead  --input-size 16  --epochs 12 --max-slices 2400
run elunet-full-256       --head full   --input-size 256 --epochs 5  --max-slices 1200 --crop 128
run elunet-jhead-64to256  --head jhead  --input-size 64  --epochs 5  --max-slices 1800
