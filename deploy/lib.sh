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
# booted: systemd runs this system (sd_booted(3): /run/systemd/system), as on any installed
# Debian or Raspberry Pi OS. Not in a chroot, a container or an image build: there the unit is
# only enabled (a link, which systemctl makes offline), and systemd and udev read the new files
# at the next boot. --dry-run and --root print what a booted system would run.
booted() { [ "$DRY" = 1 ] || [ -n "$ROOT" ] || [ -d /run/systemd/system ]; }
