#!/usr/bin/env bash
# The project's test command: set up (or reuse) .venv, lint, then run every test tier.
# Tests that need the real dataset read CASCADE_DATA_DIR (and the YOLO weights CASCADE_YOLO_WEIGHTS);
# they skip without it on a user's machine and fail under CI=true.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
bash scripts/bootstrap.sh
# The browser check opens the book in Debian's headless Chromium; install it where we can.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  echo "[test] installing Debian's chromium for the browser check"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "[test] could not install chromium; the browser check will skip (or fail under CI)"
fi
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=0 YOLO_CONFIG_DIR="$root/.cache/ultralytics"
export MPLBACKEND=Agg
.venv/bin/ruff check src tests scripts
.venv/bin/python -m pytest "$@"
