#!/usr/bin/env bash
# Installs everything LowResSeg needs, into a project virtual environment (idempotent; fast when done).
#   scripts/setup.sh          runtime + training + test dependencies (what the tests need)
#   scripts/setup.sh runtime  only what `lowresseg segment/compare/demo` need (no torch)
#
# Python packages go into $LOWRESSEG_VENV (default: .venv in the repository), made from $PYTHON
# (default: python3, 3.9 or newer). Nothing is ever pip-installed into that interpreter itself, so a
# stock Debian/Ubuntu python3 (PEP 668 "externally managed") works as well as a pyenv build.
# Only apt needs root: the Debian packages below are installed when missing (as root, or with sudo),
# and a machine without either works when they are already present.
#
# LOWRESSEG_SETUP_DRY_RUN=1 prints every command that would change the machine, prefixed "+ ",
# instead of running it (Testing/test_setup_script.py checks that pip only ever runs inside the venv).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}
case "$MODE" in all|runtime) ;; *) echo "usage: scripts/setup.sh [all|runtime]" >&2; exit 2 ;; esac
PY=${PYTHON:-python3}
VENV=${LOWRESSEG_VENV:-$PWD/.venv}
VPY="$VENV/bin/python"
DRY=${LOWRESSEG_SETUP_DRY_RUN:-0}

say() { echo "setup: $*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }
run() {  # every command that changes the machine goes through here
  if [ "$DRY" = 1 ]; then echo "+ $*"; else "$@"; fi
}

apt_install() {  # packages..., installs those that dpkg does not know yet
  local missing=() p
  command -v dpkg >/dev/null 2>&1 || { say "no dpkg: install $* with your package manager"; return 1; }
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=()
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo=(sudo); else
      say "needs root: apt-get install ${missing[*]}  (run it as root or with sudo, then run this again)"
      return 1
    fi
  fi
  say "installing Debian packages: ${missing[*]}"
  run "${sudo[@]}" apt-get update -qq
  run "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
}

# --- the interpreter the environment is made from ----------------------------------------------
command -v "$PY" >/dev/null 2>&1 || die "no '$PY' found: install Python 3.9 or newer, or set PYTHON=/path/to/python3"
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
  || die "$("$PY" -V 2>&1) is too old: LowResSeg needs Python 3.9 or newer (set PYTHON=...)"

# --- Debian packages: dicom3tools provides dciodvfy, the independent DICOM validator ------------
if ! apt_install dicom3tools; then
  [ "$MODE" = runtime ] || die "the tests need dciodvfy (Debian package dicom3tools)"
  say "continuing without dciodvfy: the demo's DICOM-SEG will not be validated"
fi
# the tests make a throw-away TLS certificate for the edge server with the openssl command
if [ "$MODE" != runtime ]; then apt_install openssl || die "the tests need the openssl command (Debian package openssl)"; fi
# the PACS tests (Testing/test_pacs.py) run a real Orthanc with its DICOMweb plugin on 127.0.0.1
# (required, as dciodvfy is: CI must not pass without PACS coverage). Debian enables a newly installed Orthanc as a
# system service that starts at every boot; the tests start their own, so one installed here is disabled again.
if [ "$MODE" != runtime ]; then
  had_orthanc=0; dpkg -s orthanc >/dev/null 2>&1 && had_orthanc=1
  apt_install orthanc orthanc-dicomweb \
    || die "the tests need Orthanc with its DICOMweb plugin (Debian packages orthanc, orthanc-dicomweb)"
  if [ "$had_orthanc" = 0 ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    say "disabling the orthanc system service that Debian enabled (the tests start their own Orthanc)"
    if [ "$(id -u)" = 0 ]; then run systemctl disable --now orthanc || true; else run sudo -n systemctl disable --now orthanc || true; fi
  fi
fi

# --- the virtual environment ---------------------------------------------------------------------
venv_ok() { [ -x "$VPY" ] && "$VPY" -c 'import pip' >/dev/null 2>&1; }
if ! venv_ok; then
  if ! "$PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    # Debian/Ubuntu split venv/ensurepip off into python3-venv (python3.X-venv for a versioned python)
    ver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    apt_install "python$ver-venv" || die "'$PY -m venv' needs Debian's python$ver-venv (apt-get install python$ver-venv)"
  fi
  say "creating the virtual environment $VENV from $("$PY" -V 2>&1)"
  run rm -rf "$VENV"
  run "$PY" -m venv "$VENV"
fi

# --- Python packages, only ever with the environment's own pip -----------------------------------
EXTRAS="dicom,figures"; [ "$MODE" = runtime ] || EXTRAS="train,dicom,figures,dev"
# The stamp records what was installed: same pyproject and extras -> nothing to do.
STAMP="$VENV/.lowresseg-$MODE"
want="$EXTRAS $(cksum < pyproject.toml)"
stamp_ok() { [ -f "$1" ] && [ "$(cut -d' ' -f2- "$1")" = "$(cksum < pyproject.toml)" ]; }
if { stamp_ok "$STAMP" || { [ "$MODE" = runtime ] && stamp_ok "$VENV/.lowresseg-all"; }; } \
   && "$VPY" -c 'import LowResSegLib' >/dev/null 2>&1; then
  say "environment $VENV is up to date ($MODE)"
  exit 0
fi
if [ "$MODE" != runtime ]; then
  # torch first and pinned: 2.13.0 is the CPU build that lies on disk here (a plain `torch`
  # would pull a multi-GB CUDA build). The [train] extra's range accepts it.
  "$VPY" -c 'import torch' >/dev/null 2>&1 || run "$VPY" -m pip install -q "torch==2.13.0"
fi
run "$VPY" -m pip install -q -e ".[$EXTRAS]"
if [ "$DRY" = 1 ]; then echo "+ write $STAMP"; else echo "$want" > "$STAMP"; fi
say "ready: activate with 'source $VENV/bin/activate', or run $VENV/bin/lowresseg"
