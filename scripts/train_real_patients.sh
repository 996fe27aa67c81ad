#!/usr/bin/env bash
# Issue 28: every shipped model retrained on real patients (lgg:train + real:train as the main data;
# phantoms only for raw and healthy heads), normaliser head-mode-ratio-v2, on 2 CPU cores.
# Run folders live OUTSIDE the repository: $LOWRESSEG_RUNS (default ~/lowresseg-runs).
# Resumable: every epoch writes last.pt (an epoch is well under 20 minutes here); re-run this script
# and finished runs are skipped, interrupted ones continue with --resume.
# The data mix is the one that held real:val in the first session's trials (docs/method.md, "Issue 28, first
# session": 140 varied tumour phantoms keep the large BraTS tumours; 30 healthy twins against false positives).
# Two queues run side by side, one torch thread each. When a model passes the ship rule
# (docs/method.md, issue 28) its line moves into scripts/train_shipped.sh with the card it produced.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="${LOWRESSEG_VENV:-$PWD/.venv}/bin:$PATH"
RUNS=${LOWRESSEG_RUNS:-$HOME/lowresseg-runs}
DATA=${DATA:-lgg:train*6+real:train*5+phantom:100:1:capped+phantom:40:2+phantom:30:3:healthy}
COMMON=(--width 8 --neg-ratio 1.0 --batch-size 16 --val-fraction 0.1 --patience 100 --ema 0.998
        --augment cut-large --max-slices 2500 --threads 1)
run() {  # run folder name, then train options
  local name=$1; shift
  if [ -f "$RUNS/$name/state.json" ]; then echo "== $name: already trained"; return; fi
  echo "== training $name ($(date -u +%H:%M))"
  local t0=$SECONDS
  lowresseg train --data "$DATA" "${COMMON[@]}" "$@" --out "$RUNS/$name" --resume
  echo "== $name: $((SECONDS - t0)) s in this call"
}
lowresseg fetch-real >/dev/null
mkdir -p "$RUNS"
# slice the data once (cached in ~/.cache/lowresseg), before the queues start
lowresseg train --data "$DATA" "${COMMON[@]}" --head interp --input-size 16 --epochs 0 --out "$RUNS/.slice-cache" --resume >/dev/null
rm -rf "$RUNS/.slice-cache"
# Order: the seeds of the head-vs-bilinear claim first, then the other sizes; full-256, the longest run, last (about 26 min per 32² run, one thread each, on the 2-core machine).
queue_a() {
  run r28-jhead-32-s0 --head jhead --input-size 32 --epochs 24 --seed 0
  run r28-jhead-32-s1 --head jhead --input-size 32 --epochs 24 --seed 1
  run r28-jhead-16-s0 --head jhead --input-size 16 --epochs 24 --seed 0
  run r28-jhead-32-s2 --head jhead --input-size 32 --epochs 24 --seed 2
  run r28-jhead-64-s0 --head jhead --input-size 64 --epochs 24 --seed 0
}
queue_b() {
  run r28-interp-32-s0 --head interp --input-size 32 --epochs 24 --seed 0
  run r28-interp-32-s1 --head interp --input-size 32 --epochs 24 --seed 1
  run r28-interp-32-s2 --head interp --input-size 32 --epochs 24 --seed 2
  # full-256 on CPU: 128² crops of the same slices (uniformly placed), inferred on whole slices; validation on
  # 200 whole slices (on whole 256² slices it would take most of the epoch). About 6-7 min per epoch on one
  # core beside another run: ~2.5 h, so it usually continues in a second session (--resume).
  run r28-full-256-s0 --head full --input-size 256 --crop 128 --epochs 24 --seed 0 --max-val-slices 200
}
queue_a > "$RUNS/queue_a.log" 2>&1 &
queue_b > "$RUNS/queue_b.log" 2>&1 &
failed=""
wait %1 || failed="$failed queue_a"
wait %2 || failed="$failed queue_b"
[ -z "$failed" ] || { echo "training failed in:$failed; see $RUNS/queue_*.log, then re-run this script" >&2; exit 1; }
echo "all issue-28 runs trained (logs: $RUNS/queue_*.log)"
