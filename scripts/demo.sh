#!/usr/bin/env bash
# The main job: install the runtime into .venv (no torch), list the shipped models (integrity-checked),
# then segment the bundled sample with every shipped model and write every output to demo_output/:
# label volumes (NIfTI + Slicer .seg.nrrd), a DICOM version of the sample and its DICOM-SEG,
# comparison.csv/.json and comparison.png.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh runtime
VENV=${LOWRESSEG_VENV:-$PWD/.venv}
export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV"
lowresseg models
lowresseg demo --out demo_output --overwrite "$@"
