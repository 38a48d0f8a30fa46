#!/usr/bin/env bash
# A real deploy/install.sh and deploy/uninstall.sh run on plain Debian, without touching this host.
#
# Usage: [MASKD_DEBIAN_SUITE=trixie] tests/debian/install_real.sh
#        (root; tests/test_install_real.py runs it in CI, for bookworm and trixie)
#
# A Debian root of MASKD_DEBIAN_SUITE (bookworm, the default: Python 3.11; trixie: 3.13) for this
# machine's architecture (debootstrap minbase + python3, python3-venv, python3-pip, systemd, udev:
# a plain Debian box, no Raspberry Pi packages) is built once and cached OUTSIDE the repository in
# $MASKD_DEBIAN_CACHE (default /var/cache/maskd-debian-<arch>, -<arch>-trixie for trixie). Each run works on a throw-away overlay of it (a copy where
# overlayfs is missing), so every run starts from the same clean box; pip's and apt's downloads
# are kept in the cache. In it, with this checkout copied to /root/maskd and a host name of its
# own (a UTS namespace), it runs `deploy/install.sh` as a user would (apt-get and pip for real),
# checks what it left, then `deploy/uninstall.sh` and `--purge`, and checks what is gone.
#
# What a chroot cannot check (no systemd as PID 1): see docs/install-pi.md, "Tested on plain
# Debian". Only /proc and /dev are mounted in the root, never /sys.
#
# Exit 0: all checks passed; 1: a check failed; 77: skipped, the reason on the last line.
# shellcheck disable=SC2317  # the helpers below are called through check "$@"
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source-path=SCRIPTDIR source=../debroot.sh disable=SC1091
source "$here/../debroot.sh"
say() { echo "debian: $*"; }
hostpy="$repo/.venv/bin/python"
HOST_NAME="maskd-debian-test"  # the root's host name: device_id must default to it

[ "$(id -u)" = 0 ] || debroot_skip "needs root (debootstrap, chroot, mount, unshare)"
[ -x "$hostpy" ] || debroot_skip "no $repo/.venv (run tests/run.sh first)"
command -v dpkg >/dev/null || debroot_skip "not a Debian-based host (no dpkg)"
arch="$(dpkg --print-architecture)"
suite="${MASKD_DEBIAN_SUITE:-bookworm}"
case "$suite" in
    bookworm) cache="${MASKD_DEBIAN_CACHE:-/var/cache/maskd-debian-$arch}" ;;
    trixie) cache="${MASKD_DEBIAN_CACHE:-/var/cache/maskd-debian-$arch-$suite}" ;;
    *) echo "MASKD_DEBIAN_SUITE: bookworm or trixie, not $suite" >&2; exit 2 ;;
esac
if ! command -v debootstrap >/dev/null; then
    say "installing debootstrap"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap) >/dev/null 2>&1 \
        || debroot_skip "cannot apt-get install debootstrap"
fi
command -v unshare >/dev/null || debroot_skip "no unshare (util-linux)"
unshare --uts true 2>/dev/null || debroot_skip "cannot unshare a UTS namespace (a container without the privilege)"

mkdir -p "$cache"
exec 9>"$cache/lock"
flock -w 1200 9 || debroot_skip "another run holds $cache/lock"
t0=$(date +%s)
debroot_build "$cache/root" "$arch" python3,python3-venv,python3-pip,systemd,udev "$cache/debootstrap.log" \
    "${MASKD_DEBIAN_MIRROR:-}" "$suite"
say "root ready in $(( $(date +%s) - t0 )) s"

# --- a throw-away box on top of the cached root ----------------------------------------------
run="$cache/run"
# rm_run: delete the throw-away box, never through a mount (/dev is bound into it).
rm_run() {
    if grep -q " $run/" /proc/mounts; then say "mounts left under $run: not deleting it"; return 0; fi
    rm -rf --one-file-system "$run"
}
if [ -d "$run" ]; then  # left by a killed run
    grep -o " $run/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m"; done
    rm_run
fi
mkdir -p "$run/upper" "$run/work" "$run/box" "$cache/pip" "$cache/apt-archives/partial" "$cache/apt-lists/partial"
box="$run/box"
# shellcheck disable=SC2317  # called by the EXIT trap
finish() { debroot_umount; rm_run; }
trap finish EXIT
if mount -t overlay overlay -o "lowerdir=$cache/root,upperdir=$run/upper,workdir=$run/work" "$box" 2>/dev/null; then
    DEBROOT_MOUNTS+=("$box")
else
    say "no overlayfs here: copying the root"
    cp -a "$cache/root/." "$box/"
fi
debroot_mount "$box"
debroot_bind "$cache/pip" "$box/root/.cache/pip"
debroot_bind "$cache/apt-archives" "$box/var/cache/apt/archives"
debroot_bind "$cache/apt-lists" "$box/var/lib/apt/lists"
# The checkout as a user has it: tracked and untracked-but-not-ignored files (no .venv, no build).
mkdir -p "$box/root/maskd"
git -C "$repo" ls-files -coz --exclude-standard \
    | tar -C "$repo" --null --ignore-failed-read -T - -cf - 2>/dev/null | tar -C "$box/root/maskd" -xf -
# Two face crops made here from maskd.demo's photo (scikit-image is the host venv's demo extra).
"$hostpy" - "$box/tmp/faces" <<'PY'
import sys
from pathlib import Path

import cv2

from maskd.demo import astronaut_bgr, draw_mask

out = Path(sys.argv[1])
out.mkdir(parents=True)
photo = astronaut_bgr()
for name, image in [("bare", photo), ("masked", draw_mask(photo))]:
    cv2.imwrite(str(out / f"{name}.png"), image[40:200, 150:300])
PY
chmod -R a+rX "$box/tmp/faces"

# in_box CMD...: run CMD in the box as root, in a UTS namespace named $HOST_NAME, clean environment.
in_box() {
    # shellcheck disable=SC2016  # expanded by that sh
    unshare --uts /bin/sh -c 'hostname "$0" && exec "$@"' "$HOST_NAME" \
        chroot "$box" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root \
        LANG=C.UTF-8 "$@"
}
as_maskd() { in_box runuser -u maskd -- "$@"; }
# This machine's own CAs (a TLS-intercepting proxy's, say): pip in the box reaches PyPI as here.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$box/usr/local/share/ca-certificates/"
    in_box update-ca-certificates >/dev/null 2>&1
fi

status=0
# check DESCRIPTION CMD...: CMD must succeed.
check() {
    local what="$1"; shift
    if "$@"; then say "ok: $what"; else say "FAIL: $what"; status=1; fi
}
# has FILE TEXT: FILE (a log) contains TEXT.
has() { grep -qF -- "$2" "$1" || { echo "  not in $(basename "$1"): $2" >&2; return 1; }; }
hasnt() { ! grep -qF -- "$2" "$1" || { echo "  in $(basename "$1"): $2" >&2; return 1; }; }
in_root_ok() { [ "$(in_box python3 -c 'import socket; print(socket.gethostname())')" = "$HOST_NAME" ]; }
check "the box has its own host name ($HOST_NAME)" in_root_ok
# shellcheck disable=SC2016  # expanded in the box
say "box: $(in_box sh -c '. /etc/os-release; echo "$PRETTY_NAME, $(python3 -V), $(dpkg --print-architecture)"')"

# --- install, as a user would: sudo deploy/install.sh from the checkout ----------------------
# ... by an admin whose umask is 027 (sudo keeps it): the installer must not pass it on to the
# venv, which the maskd user has to read.
logs="$cache/logs"
rm -rf "$logs"; mkdir -p "$logs"
t0=$(date +%s)
if in_box sh -c 'umask 027; cd /root/maskd && deploy/install.sh' >"$logs/install.log" 2>&1; then
    say "ok: deploy/install.sh exited 0 in $(( $(date +%s) - t0 )) s"
else
    cat "$logs/install.log"; say "FAIL: deploy/install.sh failed"; exit 1
fi
sed 's/^/  | /' "$logs/install.log"
L="$logs/install.log"
check "plain Debian detected: no python3-picamera2" has "$L" "not Raspberry Pi OS (or --no-picamera): no python3-picamera2"
check "apt-get ran for real" has "$L" "+ apt-get install -y --no-install-recommends"
no_picamera_asked() { ! grep -F 'apt-get install' "$L" | grep -q picamera2; }
check "apt-get was not asked for python3-picamera2" no_picamera_asked
build=file:///root/maskd/deploy/constraints-build.txt  # the build backend's pins as a file: URL (deploy/lib.sh build_pins)
check "pip ran for real, with $suite's pins and the build's" has "$L" \
    "+ env PIP_CONSTRAINT=$build PIP_BUILD_CONSTRAINT=$build /opt/maskd/.venv/bin/python -m pip install --quiet --constraint /root/maskd/deploy/constraints-pi-$suite.txt"
pins_held() {  # the repository's file against the box venv's own metadata (maskd.pins)
    in_box /opt/maskd/.venv/bin/python -c 'import sys; from pathlib import Path
from maskd.pins import differences, read_pins
bad = differences(read_pins(Path(sys.argv[1])))
print("\n".join(f"  not as pinned: {b}" for b in bad), file=sys.stderr); sys.exit(bool(bad))' \
        "/root/maskd/deploy/constraints-pi-$suite.txt"
}
check "the venv holds exactly the pinned versions" pins_held
as_maskd maskd doctor --config /etc/maskd/config.yaml --frames 1 >"$logs/doctor.out" 2>&1 || true
check "maskd doctor (as maskd) finds the pins install.sh left and all as pinned" \
    grep -qE '^packages +OK +all [0-9]+ as pinned in /opt/maskd/.venv/maskd-pins.txt' "$logs/doctor.out"
check "the config was validated as the maskd user" has "$L" "+ runuser -u maskd -- /opt/maskd/.venv/bin/maskd check-config"
check "reported as not configured" has "$L" "not configured: /etc/maskd/config.yaml is the example; the service is enabled but NOT started"
check "no start was attempted" hasnt "$L" "+ systemctl restart"
check "curl and ca-certificates are installed" in_box dpkg-query -W curl ca-certificates
check "picamera2 is not" eval '! in_box dpkg-query -W python3-picamera2 >/dev/null 2>&1'

# --- what the box has now --------------------------------------------------------------------
check "the venv exists" in_box test -x /opt/maskd/.venv/bin/python
as_maskd maskd --version >"$logs/version.out" 2>&1 || true
check "maskd --version (as maskd)" has "$logs/version.out" "maskd "
as_maskd maskd check-config /etc/maskd/config.yaml >"$logs/check-config.out" 2>&1 || true
check "maskd check-config /etc/maskd/config.yaml (as maskd)" has "$logs/check-config.out" "OK: /etc/maskd/config.yaml"
as_maskd maskd classify --json /tmp/faces >"$logs/classify.out" 2>&1 || true
check "maskd classify: the bare face is no_mask" has "$logs/classify.out" 'bare.png", "label": "no_mask"'
check "maskd classify: the masked face is mask" has "$logs/classify.out" 'masked.png", "label": "mask"'
# The demo source needs the demo extra (scikit-image), which a device does not: added for this check only.
in_box /opt/maskd/.venv/bin/pip install --quiet scikit-image >"$logs/demo-extra.out" 2>&1 \
    || { cat "$logs/demo-extra.out"; say "FAIL: pip install scikit-image (the demo extra)"; status=1; }
as_maskd maskd run --config /etc/maskd/config.yaml --source demo --exit-at-end --jsonl - \
    >"$logs/demo.out" 2>"$logs/demo.err" || { tail "$logs/demo.err" >&2; status=1; }
check "maskd run --source demo --exit-at-end (as maskd): a violation starts" has "$logs/demo.out" '"event_type": "start"'
check "... and ends" has "$logs/demo.out" '"event_type": "end"'
say "demo: $(grep -c event_type "$logs/demo.out" || true) events; $(grep -E ' fps \|' "$logs/demo.err" | tail -n1 | sed 's/.*INFO maskd.service: //')"
device_id="$(as_maskd /opt/maskd/.venv/bin/python -c \
    'from maskd.config import load_config; print(load_config("/etc/maskd/config.yaml").device_id)')"
check "device_id defaults to the host name (got $device_id)" test "$device_id" = "$HOST_NAME"
check "the unit is the checkout's" cmp -s "$repo/systemd/maskd.service" "$box/etc/systemd/system/maskd.service"
in_box systemd-analyze verify --man=no maskd.service >"$logs/verify.out" 2>&1 || echo "rc=$?" >>"$logs/verify.out"
check "systemd-analyze verify maskd.service (in the box): clean" test ! -s "$logs/verify.out"
[ -s "$logs/verify.out" ] && cat "$logs/verify.out"
check "enabled (systemctl is-enabled)" test "$(in_box systemctl is-enabled maskd.service 2>&1)" = enabled
check "... wanted by multi-user.target" test -L "$box/etc/systemd/system/multi-user.target.wants/maskd.service"
in_groups() { local g; for g in "$@"; do chroot "$box" id -nG maskd | tr ' ' '\n' | grep -qx "$g" || return 1; done; }
check "user maskd in video and plugdev" in_groups video plugdev
check "the udev rule is installed" test -f "$box/etc/udev/rules.d/99-maskd-coral.rules"
models="$(find "$box/usr/share/maskd" -type f ! -name .maskd-installed -printf '%P\n' | sort | tr '\n' ' ')"
check "models: the int8 models (the door's and scan's second draw) and sidecars only ($models)" \
    test "$models" = "models/maskd_mobilenetv2_int8.json models/maskd_mobilenetv2_int8.tflite models/maskd_mobilenetv2_int8_s43.json models/maskd_mobilenetv2_int8_s43.tflite "
# Every maskd model file outside the checkout: the device's (/usr/share/maskd/models) and the
# package's own copy in the venv, all of them the int8 model or its sidecar.
shipped="$(find "$box" -xdev \( -path "$box/root/maskd" -o -path "$box/proc" -o -path "$box/dev" \) -prune \
    -o -name 'maskd_mobilenetv2*' -print | sed "s|^$box||" | sort)"
say "maskd model files in the box: $(echo "$shipped" | tr '\n' ' ')"
only_int8() { ! echo "$shipped" | grep -vE '_int8(_s43)?\.(tflite|json)$'; }
check "no float32 model, no split.json: only int8 files" only_int8
writable_by_others() { find "$box/opt/maskd" "$box/usr/share/maskd" ! -type l -perm /022 -print | head -n 5; }
check "nothing in /opt/maskd or /usr/share/maskd is group- or world-writable" test -z "$(writable_by_others)"
check "state dir 0750 maskd:maskd" test "$(chroot "$box" stat -c '%U:%G %a' /var/lib/maskd)" = "maskd:maskd 750"
check "config 0640 root:maskd" test "$(chroot "$box" stat -c '%U:%G %a' /etc/maskd/config.yaml)" = "root:maskd 640"

# --- a second run (an update): nothing changes, the edited config stays ----------------------
# This time with umask 077: pip rewrites maskd in the venv, which must stay readable to maskd.
echo "# edited" >>"$box/etc/maskd/config.yaml"  # configured now: a real box would start it
t0=$(date +%s)
in_box sh -c 'umask 077; cd /root/maskd && deploy/install.sh' >"$logs/install2.log" 2>&1 \
    || { cat "$logs/install2.log"; say "FAIL: second deploy/install.sh"; status=1; }
say "second run: $(( $(date +%s) - t0 )) s"
as_maskd maskd check-config /etc/maskd/config.yaml >"$logs/check-config2.out" 2>&1 || true
check "second run (umask 077): maskd check-config still works as maskd" has "$logs/check-config2.out" "OK: /etc/maskd/config.yaml"
check "second run: config kept" has "$logs/install2.log" "kept /etc/maskd/config.yaml"
check "second run: no file re-installed" hasnt "$logs/install2.log" ": installed "
check "second run: no apt-get" hasnt "$logs/install2.log" "+ apt-get"
check "second run: configured, but no systemd to start it: said so" has "$logs/install2.log" \
    "systemd is not running here (a chroot or container): maskd.service is enabled and starts at the next boot"
check "second run: no start attempted" hasnt "$logs/install2.log" "+ systemctl restart"

# --- an update from an older example: its defaults noted, the example read as maskd on stdin ----
# install.sh copies the example the earlier install left to its temporary folder, which the
# maskd user cannot read; check-config --was reads it through /dev/stdin (a 0700 folder's file).
cp "$box/etc/maskd/config.yaml" "$logs/config.before-was"
sed -i 's/^  window: 9 /  window: 5 /' "$box/etc/maskd/config.yaml" "$box/etc/maskd/config.example.yaml"
in_box sh -c 'cd /root/maskd && deploy/install.sh' >"$logs/install-was.log" 2>&1 \
    || { cat "$logs/install-was.log"; say "FAIL: deploy/install.sh over an older example"; status=1; }
check "older example: given to check-config on stdin" has "$logs/install-was.log" \
    "check-config --was /dev/stdin /etc/maskd/config.yaml"
check "older example: a note for the key kept at its old default, read as maskd" \
    has "$logs/install-was.log" "note: 'tracking.window': 5 is the default of the example this config was made from"
cp "$logs/config.before-was" "$box/etc/maskd/config.yaml"

# --- an update over a config the new code refuses: said what that leaves, nothing restarted ----
cp "$box/etc/maskd/config.yaml" "$logs/config.good"
echo "sourse: {}" >>"$box/etc/maskd/config.yaml"
in_box sh -c 'cd /root/maskd && deploy/install.sh' >"$logs/install-bad.log" 2>&1 && rc=0 || rc=$?
check "bad config: install.sh exits 78 (check-config's)" test "$rc" = 78
check "bad config: says the new version is installed and maskd NOT restarted" has "$logs/install-bad.log" \
    "install.sh: the new version is installed, but /etc/maskd/config.yaml fails its check (above): maskd was NOT restarted"
cp "$logs/config.good" "$box/etc/maskd/config.yaml"

# --- uninstall, then --purge -----------------------------------------------------------------
in_box sh -c 'cd /root/maskd && deploy/uninstall.sh' </dev/null >"$logs/uninstall.log" 2>&1 \
    || { cat "$logs/uninstall.log"; say "FAIL: deploy/uninstall.sh"; status=1; }
sed 's/^/  | /' "$logs/uninstall.log"
for p in /etc/systemd/system/maskd.service /etc/systemd/system/multi-user.target.wants/maskd.service \
         /etc/udev/rules.d/99-maskd-coral.rules /usr/local/bin/maskd /opt/maskd /usr/share/maskd; do
    check "uninstall: $p is gone" test ! -e "$box$p" -a ! -L "$box$p"
done
check "uninstall: /etc/maskd, /var/lib/maskd and the user are kept" \
    sh -c "test -f '$box/etc/maskd/config.yaml' && test -d '$box/var/lib/maskd' && chroot '$box' id maskd >/dev/null"
# Someone else in the maskd group (an operator, camview, who reads the snapshots): userdel leaves the group.
in_box useradd --no-create-home --groups maskd camview
in_box sh -c 'cd /root/maskd && deploy/uninstall.sh --purge' </dev/null >"$logs/purge.log" 2>&1 \
    || { cat "$logs/purge.log"; say "FAIL: deploy/uninstall.sh --purge"; status=1; }
sed 's/^/  | /' "$logs/purge.log"
check "--purge: /etc/maskd and /var/lib/maskd are gone" test ! -e "$box/etc/maskd" -a ! -e "$box/var/lib/maskd"
check "--purge: the user maskd is gone" eval "! chroot '$box' id maskd >/dev/null 2>&1"
check "--purge: the group maskd is gone too, though camview was in it" \
    eval "! chroot '$box' getent group maskd >/dev/null"
check "--purge: said so" has "$logs/purge.log" "group maskd is still there (members: camview): removing it"

# --- install again where a maskd group is left (an older --purge, or made by hand) -----------
in_box groupadd --system maskd
in_box sh -c 'cd /root/maskd && deploy/install.sh --no-start' >"$logs/install3.log" 2>&1 \
    || { cat "$logs/install3.log"; say "FAIL: install.sh over a left maskd group"; status=1; }
check "install over a left group: the new user maskd has it as its group" \
    test "$(chroot "$box" id -gn maskd 2>&1)" = maskd

if [ "$status" = 0 ]; then say "PASS"; else say "FAIL (logs: $logs)"; fi
exit "$status"
