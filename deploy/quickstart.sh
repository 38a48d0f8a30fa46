#!/usr/bin/env bash
# The main job on any machine, no camera or broker needed: set up .venv, fetch the YuNet face
# detector (sha256-pinned; skipped with a plain message where the network cannot reach it), then
# run maskd end to end on a demo clip rendered from a photo that ships with scikit-image (bare
# face, then a drawn mask). Prints the violation events as JSON lines and writes an annotated clip
# to out/demo/ (camera-<time>.mkv).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
deploy/bootstrap.sh demo
if ! .venv/bin/maskd models fetch --timeout 20; then
    echo "quickstart: continuing without YuNet: the demo runs with BlazeFace and says what that means" >&2
fi
exec .venv/bin/maskd run --source demo --exit-at-end --jsonl - --annotate out/demo "$@"
