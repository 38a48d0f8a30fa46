# Sourced by deploy/install.sh and deploy/uninstall.sh: their messages, and the one rule for
# system commands (apt, users, pip, systemctl): run only for a real install, never under
# --dry-run or --root. The caller sets DRY and ROOT.
# shellcheck shell=bash

ME="$(basename "$0")"
die() { echo "$ME: $*" >&2; exit 1; }
say() { echo "$ME: $*"; }
sys() {
    if [ "$DRY" = 1 ] || [ -n "$ROOT" ]; then echo "would run: $*"; else echo "+ $*"; "$@"; fi
}
