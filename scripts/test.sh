#!/usr/bin/env bash
# The project's test command: set up (or reuse) .venv, lint, then run every test tier.
# Tests that need the real dataset read CASCADE_DATA_DIR (and the YOLO weights CASCADE_YOLO_WEIGHTS);
# they skip without it on a user's machine and fail under CI=true.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 YOLO_CONFIG_DIR="$root/.cache/ultralytics"
export MPLBACKEND=Agg
.venv/bin/ruff check src tests scripts
.venv/bin/python -m pytest "$@"
