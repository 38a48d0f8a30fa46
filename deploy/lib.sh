# Sourced by deploy/install.sh, uninstall.sh and bootstrap.sh: their messages, and the one rule for
# system commands (apt, users, pip, systemctl): run only for a real install, never under
# --dry-run or --root. The caller sets DRY and ROOT.
# shellcheck shell=bash

ME="$(basename "$0")"
die() { echo "$ME: $*" >&2; exit 1; }
say() { echo "$ME: $*"; }
sys() {
    if [ "$DRY" = 1 ] || [ -n "$ROOT" ]; then echo "would run: $*"; else echo "+ $*"; "$@"; fi
}
# booted: systemd runs this system (sd_booted(3): /run/systemd/system), as on any installed
# Debian or Raspberry Pi OS. Not in a chroot, a container or an image build: there the unit is
# only enabled (a link, which systemctl makes offline), and systemd and udev read the new files
# at the next boot. --dry-run and --root print what a booted system would run.
booted() { [ "$DRY" = 1 ] || [ -n "$ROOT" ] || [ -d /run/systemd/system ]; }
# The unit install.sh writes and uninstall.sh removes (its drop-ins: "$UNIT_FILE.d").
# shellcheck disable=SC2034  # read by install.sh and uninstall.sh
UNIT_FILE=/etc/systemd/system/maskd.service

# The install folder (the venv and the docs): MASKD_PREFIX, /opt/maskd by default. Not the
# generic PREFIX, which a root shell may well export for other software: it is not read.
# install.sh writes it into the unit's ExecStart=, leaves MASKD_MARKER in it, and uninstall.sh
# deletes only a folder that holds that marker (or, from an install older than the marker, a
# venv and the docs and nothing else).
MASKD_MARKER=.maskd-install
# prefix_ok P: P can be an install folder: absolute, at least two levels deep, plain characters
# (it goes into the unit as it is), no . or .. part, and not where the unit's sandbox hides files
# (ProtectHome=, PrivateTmp=) or where maskd's other files or the system's live.
prefix_ok() {
    [[ "$1" =~ ^(/[A-Za-z0-9_][A-Za-z0-9._+-]*){2,}$ ]] || return 1
    case "$1" in
        /home/*|/root/*|/tmp/*|/var/tmp/*|/run/*|/proc/*|/sys/*|/dev/*|/boot/*|/etc/*) return 1 ;;
        /usr/share/maskd|/usr/share/maskd/*|/var/lib/maskd|/var/lib/maskd/*) return 1 ;;
    esac
}
# only_entries DIR NAME...: DIR holds nothing but (some of) NAME...
only_entries() {
    local dir="$1" e name ok
    shift
    for e in "$dir"/* "$dir"/.[!.]* "$dir"/..?*; do
        [ -e "$e" ] || [ -L "$e" ] || continue
        ok=0
        for name in "$@"; do [ "${e##*/}" = "$name" ] && ok=1; done
        [ "$ok" = 1 ] || return 1
    done
}
# prefix_is_maskd DIR: DIR is a maskd install folder (see above).
prefix_is_maskd() {
    [ -d "$1" ] && { [ -f "$1/$MASKD_MARKER" ] \
        || { [ -f "$1/.venv/pyvenv.cfg" ] && only_entries "$1" .venv share; }; }
}
# unit_prefix UNIT: the install folder an installed maskd.service runs maskd from (its ExecStart=),
# or nothing: where an update (install.sh) and uninstall.sh find it without MASKD_PREFIX.
unit_prefix() {
    [ -f "$1" ] || return 0
    sed -n 's|^ExecStart=\(/[^ ]*\)/\.venv/bin/maskd .*|\1|p' "$1" | head -n 1
}
# note_prefix_var: say so when PREFIX is set, as someone who means the install folder may expect.
note_prefix_var() {
    if [ -n "${PREFIX:-}" ] && [ "$PREFIX" != "$MASKD_PREFIX" ]; then
        say "note: PREFIX=$PREFIX is not read; the install folder is MASKD_PREFIX ($MASKD_PREFIX)"
    fi
}
# The model files install.sh copies from the checkout's models/ (those that are there): the int8
# classifier, its sidecar, its EdgeTPU twin when built, and the second training draw `maskd scan`
# averages with it (not the float32 model or the split).
# shellcheck disable=SC2034  # read by install.sh and uninstall.sh
MODEL_FILES=(maskd_mobilenetv2_int8.tflite maskd_mobilenetv2_int8.json maskd_mobilenetv2_int8_edgetpu.tflite
             maskd_mobilenetv2_int8_s43.tflite maskd_mobilenetv2_int8_s43.json)
# install.sh lists each file it put in /usr/share/maskd here (one path a line, relative to it):
# uninstall.sh removes those and keeps the admin's own (docs/install-pi.md: EdgeTPU models).
# shellcheck disable=SC2034
SHARE_MANIFEST=.maskd-installed
# venv_runs_pip DIR: the venv in DIR has a python that runs pip. `python3 -m venv` without
# python3-venv's ensurepip fails after making bin/python: such a venv is made anew.
venv_runs_pip() { "$1/bin/python" -m pip --version >/dev/null 2>&1; }
# build_pins FILE: BUILD_PINS, the environment (for `env`) in which pip builds maskd with FILE's
# pins. pip builds it in an isolated environment from pyproject.toml's [build-system] requires,
# which --constraint does not reach: every install ran PyPI's newest setuptools, as root. pip
# 23.0.1 (Bookworm) and 25.1.1 (Trixie) let PIP_CONSTRAINT in (their inner pip inherits it and
# ignores PIP_BUILD_CONSTRAINT); pip 26.3 only PIP_BUILD_CONSTRAINT, its --build-constraint.
# Both as a file: URL: pip splits them at whitespace, and a checkout in "/home/pi/My Projects"
# stopped at 'Could not open constraint file: /home/pi/My'.
# shellcheck disable=SC2034  # read by install.sh and bootstrap.sh
build_pins() {
    local url
    url=$(file_url "$1")
    BUILD_PINS=("PIP_CONSTRAINT=$url" "PIP_BUILD_CONSTRAINT=$url")
}
# file_url PATH: PATH made absolute as a file: URL, its bytes but [A-Za-z0-9/._~-] as %XX.
file_url() {
    local LC_ALL=C path url="file://" c i
    path=$(realpath -m -- "$1")
    for ((i = 0; i < ${#path}; i++)); do
        c=${path:i:1}
        case $c in
            [A-Za-z0-9/._~-]) url+=$c ;;
            *) printf -v c '%%%02X' "'$c"; url+=$c ;;
        esac
    done
    echo "$url"
}
