#!/usr/bin/env bash
# Installs everything LowResSeg needs on a fresh Debian machine (idempotent; fast when already done).
#   scripts/setup.sh          runtime + training + test dependencies (what the tests need)
#   scripts/setup.sh runtime  only what `lowresseg segment/compare/demo` need (no torch)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

# Debian packages: dicom3tools provides dciodvfy, the independent DICOM validator the tests use.
APT_PACKAGES=(dicom3tools)
missing=()
for p in "${APT_PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

if [ "${1:-all}" = runtime ]; then
  $PY -m pip install -q -e ".[dicom,figures]"
  exit 0
fi

# torch first and pinned: 2.13.0 is the CPU build that lies on disk here (a plain `torch`
# would pull a multi-GB CUDA build). The [train] extra's range accepts it.
$PY -c "import torch" >/dev/null 2>&1 || $PY -m pip install -q "torch==2.13.0"
$PY -m pip install -q -e ".[train,dicom,figures,dev]"
