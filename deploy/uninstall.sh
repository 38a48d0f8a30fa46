#!/usr/bin/env bash
# Remove the maskd service that deploy/install.sh installed.
#
#   sudo deploy/uninstall.sh [--purge] [--mqtt-clear | --no-mqtt-clear] [--dry-run] [--root DIR]
#
# Keeps /etc/maskd (your config), /var/lib/maskd (the MQTT outbox: events not yet delivered),
# the "maskd" user and your own files in /usr/share/maskd (it removes the ones install.sh listed
# in /usr/share/maskd/.maskd-installed) unless --purge is given. apt packages are left alone
# (other software may use them). Safe to run again: what is already gone is reported, not an error.
#   --purge          also delete /etc/maskd, /var/lib/maskd, all of /usr/share/maskd, the maskd
#                    user and its group, and the unit's drop-ins (/etc/systemd/system/
#                    maskd.service.d: systemctl edit)
#   --mqtt-clear     after stopping maskd, remove its retained topics from the broker (Home
#                    Assistant's device and entities) with `maskd mqtt-clear`; without this
#   --no-mqtt-clear  or this, it asks when run on a terminal, and does not otherwise
#   --dry-run        print what would be done, change nothing
#   --root DIR       remove files under DIR instead of /, and only print the system commands
#   MASKD_PREFIX=DIR (environment) the install folder install.sh was given; by default the one
#                    the installed unit runs maskd from, else /opt/maskd. It is deleted only if it
#                    holds install.sh's marker (.maskd-install), or a venv and docs and nothing else
set -euo pipefail

MODELS_ROOT=/usr/share/maskd
SERVICE_USER=maskd
DRY=0
ROOT=""
PURGE=0

MQTT_CLEAR=""  # yes / no; empty: ask on a terminal

usage() { sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

while [ $# -gt 0 ]; do
    case "$1" in
        --purge) PURGE=1 ;;
        --mqtt-clear) MQTT_CLEAR=yes ;;
        --no-mqtt-clear) MQTT_CLEAR=no ;;
        --dry-run) DRY=1 ;;
        --root) ROOT="$(realpath -m "${2:?--root needs a directory}")"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

# remove PATH...: delete files or folders under $ROOT; absent ones are reported, not an error.
remove() {
    local p
    for p in "$@"; do
        if [ -e "$ROOT$p" ] || [ -L "$ROOT$p" ]; then
            if [ "$DRY" = 1 ]; then echo "would run: rm -rf $ROOT$p"; else rm -rf -- "$ROOT$p"; say "removed $p"; fi
        else
            say "already absent: $p"
        fi
    done
}

if [ -z "$ROOT" ] && [ "$DRY" = 0 ] && [ "$(id -u)" != 0 ]; then
    die "run as root (sudo deploy/uninstall.sh), or try --dry-run"
fi
# The install folder: MASKD_PREFIX, else the one the installed unit runs maskd from; checked
# before anything is changed, and deleted only when it is maskd's (deploy/lib.sh).
unit_prefix="$(unit_prefix "$ROOT$UNIT_FILE")"
if [ -z "${MASKD_PREFIX:-}" ]; then
    MASKD_PREFIX="${unit_prefix:-/opt/maskd}"
elif [ -n "$unit_prefix" ] && [ "${MASKD_PREFIX%/}" != "$unit_prefix" ]; then
    die "MASKD_PREFIX=$MASKD_PREFIX, but the installed maskd.service runs maskd from $unit_prefix: run" \
        "again with MASKD_PREFIX=$unit_prefix (or without it); nothing changed"
fi
MASKD_PREFIX="${MASKD_PREFIX%/}"
note_prefix_var
prefix_ok "$MASKD_PREFIX" || die "MASKD_PREFIX=$MASKD_PREFIX cannot be maskd's install folder; refusing to delete it"
prefix_real=""  # the folder to delete, symbolic links resolved; empty: nothing to delete there
if [ -e "$ROOT$MASKD_PREFIX" ]; then
    prefix_real="$(realpath -e -- "$ROOT$MASKD_PREFIX")"
    in_root="$prefix_real"
    if [ -n "$ROOT" ] && [ "$ROOT" != / ]; then in_root="${prefix_real#"$ROOT"}"; fi
    if [ "$in_root" = "$prefix_real" ] && [ -n "$ROOT" ] && [ "$ROOT" != / ]; then
        die "$MASKD_PREFIX leads out of $ROOT (to $prefix_real); refusing to delete it"
    fi
    prefix_ok "$in_root" || die "$MASKD_PREFIX is $in_root, which cannot be maskd's install folder; refusing to delete it"
    where=""; [ "$in_root" = "$MASKD_PREFIX" ] || where=" (that is $in_root)"
    prefix_is_maskd "$prefix_real" || die "refusing to delete $MASKD_PREFIX$where:" \
        "it is not a maskd install folder (no $MASKD_MARKER, and more in it than a venv and docs)." \
        "If maskd was installed with another MASKD_PREFIX, run this with that one; nothing changed"
fi

if [ -e "$ROOT$UNIT_FILE" ]; then
    if booted; then sys systemctl disable --now maskd.service; else sys systemctl disable maskd.service; fi
fi
# Retained MQTT topics (Home Assistant's discovery configs above all) outlive maskd on the
# broker: offer to clear them while maskd and its config are still here, and the service stopped.
if [ -x "$ROOT/usr/local/bin/maskd" ] && [ -f "$ROOT/etc/maskd/config.yaml" ]; then
    if [ -z "$MQTT_CLEAR" ]; then
        if [ -t 0 ]; then
            read -r -p "Remove maskd's retained MQTT topics (Home Assistant device and entities) from the broker? [y/N] " answer || answer=""
            case "$answer" in [yY]*) MQTT_CLEAR=yes ;; *) MQTT_CLEAR=no ;; esac
        else
            MQTT_CLEAR=no
            say "retained MQTT topics left on the broker (no terminal to ask; --mqtt-clear removes them)"
        fi
    fi
    if [ "$MQTT_CLEAR" = yes ]; then
        # The installed maskd runs it, which may be older than this script (a checkout pulled
        # before the uninstall): one without --if-configured stopped here on its usage error
        # (exit 2) whatever the config; it is left out for such a maskd (no broker: exit 78).
        if_configured=--if-configured
        if [ "$DRY" = 0 ] && [ -z "$ROOT" ]; then
            usage="$(/usr/local/bin/maskd mqtt-clear --help 2>/dev/null || true)"
            case "$usage" in *--if-configured*) ;; *) if_configured="" ;; esac
        fi
        if ! sys /usr/local/bin/maskd mqtt-clear ${if_configured:+"$if_configured"} --config /etc/maskd/config.yaml; then
            die "maskd mqtt-clear failed (see above); maskd is stopped but still installed: run this again, or with --no-mqtt-clear to keep the topics"
        fi
    fi
elif [ "$MQTT_CLEAR" = yes ]; then
    say "cannot clear MQTT topics: /usr/local/bin/maskd or /etc/maskd/config.yaml is already gone"
fi
remove "$UNIT_FILE" /etc/udev/rules.d/99-maskd-coral.rules /usr/local/bin/maskd
if [ -n "$prefix_real" ]; then
    # A link to the folder goes with it.
    if [ "$DRY" = 1 ]; then
        echo "would run: rm -rf $prefix_real"
    else
        rm -rf -- "$prefix_real"
        if [ -L "$ROOT$MASKD_PREFIX" ]; then rm -f -- "$ROOT$MASKD_PREFIX"; fi
        say "removed $MASKD_PREFIX"
    fi
elif [ -L "$ROOT$MASKD_PREFIX" ]; then
    remove "$MASKD_PREFIX"  # a link to nothing
else
    say "already absent: $MASKD_PREFIX"
fi
# Without --purge only the files install.sh put in /usr/share/maskd go (its manifest; from an
# install older than that: the names it copies, and YuNet): an admin's own models stay, as the
# config that names them does.
if [ "$PURGE" = 1 ] || [ ! -d "$ROOT$MODELS_ROOT" ]; then
    remove "$MODELS_ROOT"
else
    if [ -f "$ROOT$MODELS_ROOT/$SHARE_MANIFEST" ]; then
        mapfile -t shipped < <(grep -v '^#' "$ROOT$MODELS_ROOT/$SHARE_MANIFEST" | sed '/^$/d')
    else
        shipped=("${MODEL_FILES[@]/#/models/}")
        for f in "$ROOT$MODELS_ROOT"/models/face_detection_yunet*.onnx; do
            [ -e "$f" ] && shipped+=("models/${f##*/}")
        done
    fi
    for rel in "${shipped[@]}"; do
        case "/$rel/" in */../*) continue ;; esac  # never out of the folder
        if [ -e "$ROOT$MODELS_ROOT/$rel" ]; then remove "$MODELS_ROOT/$rel"; fi
    done
    # The manifest stays while anything is kept: a second run without it would take the
    # admin's files for an older install's (an EdgeTPU model of a shipped name, a YuNet
    # `maskd models fetch` put there) and delete what the first run kept.
    shipped+=("$SHARE_MANIFEST")
    kept=()
    while IFS= read -r -d '' f; do
        rel="${f#"$ROOT$MODELS_ROOT"/}"
        printf '%s\n' "${shipped[@]}" | grep -qxF -- "$rel" || kept+=("$MODELS_ROOT/$rel")
    done < <(find "$ROOT$MODELS_ROOT" -mindepth 1 ! -type d -print0 | sort -z)
    if [ ${#kept[@]} -gt 0 ]; then
        say "kept ${kept[*]} (not installed by install.sh: your own files); --purge removes them"
    elif [ "$DRY" = 1 ]; then
        echo "would run: rm -rf $ROOT$MODELS_ROOT"
    else
        rm -rf -- "$ROOT$MODELS_ROOT"; say "removed $MODELS_ROOT"
    fi
fi
# `systemctl edit maskd` drop-ins: local settings, kept like the config unless --purge (a later
# install would otherwise run under them without a word).
DROPINS="$UNIT_FILE.d"
# Besides /var/lib/maskd the service writes only where a drop-in's ReadWritePaths= lets it
# (ProtectSystem=strict; a USB stick for snapshots.dir, docs/config.md): read before --purge
# removes the drop-ins, to tell of the pictures of people left there (below).
writable=()
if [ -d "$ROOT$DROPINS" ]; then
    # xargs splits at blanks outside quotes and drops the quotes, as systemd reads the list
    # ("/media/pi/USB DISK", -"/a b": a stick mounted under its label); line by line, so a
    # quote left open loses its line only, as in systemd. Each file's lines as systemd joins
    # them first: one ending in a backslash (not an escaped one) goes on with the next, comment
    # lines skipped (a long list over several lines)
    mapfile -t writable < <(awk 'FNR == 1 && held != "" { print held; held = "" }
            /^[ \t]*[#;]/ { next }
            { line = held $0; held = "" }
            match(line, /\\+$/) && RLENGTH % 2 { held = substr(line, 1, length(line) - 1) " "; next }
            { print line }
            END { if (held != "") print held }' "$ROOT$DROPINS"/*.conf 2>/dev/null \
        | sed -n 's/^[[:space:]]*ReadWritePaths[[:space:]]*=//p' \
        | while IFS= read -r line; do xargs -r printf '%s\n' <<< "$line" 2>/dev/null; done \
        | sed 's/^[-+]*//' | grep '^/' | sort -u || true)
fi
if [ "$PURGE" = 1 ]; then
    remove "$DROPINS"
elif [ -e "$ROOT$DROPINS" ]; then
    say "kept $DROPINS (your systemctl edit drop-ins); --purge removes it"
fi
if booted; then
    sys systemctl daemon-reload
    sys udevadm control --reload-rules || say "WARNING: udev did not reload its rules (not running?)"
fi

# pictures_left DIR WHAT FIND-TESTS...: snapshots and clips of people outlive snapshots.keep_days
# once maskd is gone (nothing prunes them): a WARNING with their count, saying WHAT to do. DIR
# may be a link to the folder (systemd follows it): -H looks into it.
pictures_left() {
    local dir="$1" what="$2" n=0
    shift 2
    if [ -d "$ROOT$dir" ]; then
        n="$(find -H "$ROOT$dir" -type f \( "$@" \) 2>/dev/null | wc -l || true)"
    fi
    if [ "$n" -gt 0 ]; then
        say "WARNING: $dir keeps $n snapshot or clip file(s) of people, and with maskd gone" \
            "nothing deletes them after keep_days: $what"
    fi
}
if [ "$PURGE" = 1 ]; then
    remove /etc/maskd /var/lib/maskd
    if getent passwd "$SERVICE_USER" >/dev/null; then
        sys userdel "$SERVICE_USER"
    else
        say "user $SERVICE_USER already absent"
    fi
    # userdel takes the user's group along only when no one else is in it.
    if getent group "$SERVICE_USER" >/dev/null; then
        others="$(getent group "$SERVICE_USER" | cut -d: -f4 | tr , '\n' | grep -vx "$SERVICE_USER" | paste -sd, -)" || true
        say "group $SERVICE_USER is still there${others:+ (members: $others)}: removing it"
        sys groupdel "$SERVICE_USER" \
            || say "kept group $SERVICE_USER (groupdel failed, see above); a later install.sh reuses it"
    fi
else
    say "kept /etc/maskd (config), /var/lib/maskd (undelivered events) and user $SERVICE_USER; --purge removes them"
    pictures_left /var/lib/maskd "--purge, or delete them yourself" -name '*.jpg' -o -name '*.mkv' -o -name '*.mp4'
fi
# Not deleted by --purge: such a folder is the admin's and may hold more. Only files named as
# maskd names snapshots and clips (<camera>-YYYYmmdd-HHMMSS-<event>.jpg, ...-HHMMSS[_N].mkv) count.
for dir in "${writable[@]}"; do
    case "$dir/" in /var/lib/maskd/*) continue ;; esac  # told above, or purged
    pictures_left "$dir" "delete them yourself (a folder your drop-in let maskd write to (ReadWritePaths=); --purge leaves it alone)" \
        -regextype posix-extended -regex \
        '.*/[A-Za-z0-9_-]+-[0-9]{8}-[0-9]{6}(-[A-Za-z0-9_-]+\.jpg|(_[0-9]+)?\.(mkv|mp4))'
done
