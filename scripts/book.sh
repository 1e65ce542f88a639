#!/usr/bin/env bash
# The main job: set up (or reuse) .venv, run the whole book under a profile (default: quick), then render.
# Extra arguments go to `cascade-defect run`, e.g. `bash scripts/book.sh --profile smoke --only 01 02`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
export YOLO_OFFLINE="${YOLO_OFFLINE:-1}" YOLO_AUTOINSTALL="${YOLO_AUTOINSTALL:-0}"
export YOLO_CONFIG_DIR="${YOLO_CONFIG_DIR:-$root/.cache/ultralytics}"
exec .venv/bin/cascade-defect run "$@"
