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
# faketime: maskd started on a 1970 wall clock (a Pi with no RTC before NTP); ffmpeg: video files
# only a real encoder writes (variable frame rate); strace: I/O errors injected into a real
# process's reads and writes (a failing SD card).
if { ! command -v chromium >/dev/null 2>&1 || ! command -v shellcheck >/dev/null 2>&1 \
     || ! command -v faketime >/dev/null 2>&1 || ! command -v ffmpeg >/dev/null 2>&1 \
     || ! command -v strace >/dev/null 2>&1; } && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium shellcheck faketime ffmpeg strace) >/dev/null 2>&1 \
        || echo "warning: could not install chromium/shellcheck/faketime/ffmpeg/strace; the browser, shellcheck, 1970-clock, variable-rate video and injected I/O error tests will skip" >&2
fi
.venv/bin/ruff check maskd tools tests
# Three workers (pytest-xdist) on 2 cores: most tests wait on brokers, browsers and child
# processes (stop 49: 1295 s one by one, 775 s with two; stop 72, this suite: 19 m 09 s with two,
# the CPUs 69 % busy, 15 m 00 s with three). Work-stealing keeps the three CI-only root checks
# (arm64, two real installs: 1-2.5 min each) from ending up on one worker. MASKD_TEST_WORKERS=0
# runs all in this one process (a debugger, -x); arguments given here come after, so they win.
exec .venv/bin/python -m pytest -q -ra -n "${MASKD_TEST_WORKERS:-3}" --dist worksteal "$@"
