#!/usr/bin/env bash
# The test command: installs what the tests need into .venv (scripts/setup.sh), then runs the suite there.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
VENV=${LOWRESSEG_VENV:-$PWD/.venv}
export PATH="$VENV/bin:$PATH" VIRTUAL_ENV="$VENV"   # the suite's subprocesses find lowresseg, vermin there
exec "$VENV/bin/python" -m pytest Testing -q "$@"
