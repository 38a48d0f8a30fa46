#!/usr/bin/env bash
# The test command: sets up .venv with the train/dev extras, a local mosquitto, then lint + pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
deploy/bootstrap.sh "train,demo,dev"
if ! command -v mosquitto >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq mosquitto mosquitto-clients) >/dev/null 2>&1 \
        || echo "warning: could not install mosquitto; MQTT tests will skip" >&2
fi
# chromium: the web preview is checked by a real headless-browser screenshot; shellcheck: deploy/*.sh;
# faketime: maskd started on a 1970 wall clock (a Pi with no RTC before NTP).
if { ! command -v chromium >/dev/null 2>&1 || ! command -v shellcheck >/dev/null 2>&1 \
     || ! command -v faketime >/dev/null 2>&1; } && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium shellcheck faketime) >/dev/null 2>&1 \
        || echo "warning: could not install chromium/shellcheck/faketime; the browser, shellcheck and 1970-clock tests will skip" >&2
fi
.venv/bin/ruff check maskd tools tests
exec .venv/bin/python -m pytest -q -ra "$@"
