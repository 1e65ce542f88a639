#!/usr/bin/env bash
# Create or reuse the project's virtual environment (.venv) and install the package with
# everything it needs. Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
python_bin="${PYTHON:-python3}"
venv="$root/.venv"
if [ ! -x "$venv/bin/python" ]; then
  echo "[bootstrap] creating $venv with $("$python_bin" --version)"
  "$python_bin" -m venv "$venv"
fi
stamp="$venv/.cascade-defect-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[bootstrap] installing cascade-defect and its dependencies (first run: several minutes, ~7 GB for PyTorch and CUDA)"
  echo "[bootstrap] free disk where the venv lives: $(df -h "$root" | awk 'NR==2 {print $4}')"
  # PyTorch's CUDA wheels are several GB: no second copy in pip's cache, and their downloads
  # unpacked beside the venv (a small /tmp must not stop the install); removed afterwards.
  pip_tmp="$root/.cache/pip-tmp"
  mkdir -p "$pip_tmp"
  trap 'rm -rf "$pip_tmp"' EXIT
  export PIP_NO_CACHE_DIR=1 TMPDIR="$pip_tmp"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e ".[dev]"
  "$venv/bin/python" -m ipykernel install --sys-prefix --name python3 >/dev/null
  echo "$want" > "$stamp"
else
  echo "[bootstrap] reusing $venv"
fi
