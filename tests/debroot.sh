# Sourced by tests/arm64/check.sh and tests/debian/install_real.sh: a Debian root built
# once with debootstrap and cached OUTSIDE the repository, and the mounts a chroot into it needs
# (undone on exit). The caller uses `set -euo pipefail`.
# shellcheck shell=bash

# debroot_skip MSG: exit 77, the tests' "skipped", with the reason on the last line.
debroot_skip() { echo "SKIP: $*"; exit 77; }

# debroot_mirror [MIRROR]: MIRROR if given, else this machine's Debian mirror (its apt sources),
# else deb.debian.org.
debroot_mirror() {
    local mirror="${1:-}"
    if [ -z "$mirror" ]; then
        mirror="$(grep -rhoE '^(URIs:|deb) +https?://[^ ]*debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
            | grep -v security | head -n1 | awk '{print $2}' || true)"
    fi
    echo "${mirror:-http://deb.debian.org/debian}"
}

# debroot_build ROOT ARCH PACKAGES LOG [MIRROR] [SUITE]: `debootstrap --variant=minbase` SUITE
# (default bookworm) for ARCH with the comma-separated PACKAGES into ROOT, unless
# ROOT/.maskd-root-ok says it is there.
# Two stages, the second in a chroot, so a foreign ARCH works under qemu-user's binfmt_misc too.
# It is built next to ROOT and moved in place only when complete. debootstrap failing (no
# mirror) skips; the second stage failing is an error.
debroot_build() {
    local root="$1" arch="$2" include="$3" log="$4" suite="${6:-bookworm}" mirror
    [ -e "$root/.maskd-root-ok" ] && return 0
    mirror="$(debroot_mirror "${5:-}")"
    mkdir -p "$(dirname "$root")"
    echo "building a Debian $suite $arch root in $root (from $mirror; minutes, once)"
    rm -rf "$root.tmp"
    debootstrap --arch="$arch" --foreign --variant=minbase --include="$include" \
        "$suite" "$root.tmp" "$mirror" >"$log" 2>&1 \
        || debroot_skip "debootstrap (first stage) failed, see $log"
    chroot "$root.tmp" /debootstrap/debootstrap --second-stage >>"$log" 2>&1 \
        || { echo "debootstrap second stage failed, see $log" >&2; exit 1; }
    touch "$root.tmp/.maskd-root-ok"
    rm -rf "$root"
    mv "$root.tmp" "$root"
}

# Mount points to undo at exit, in reverse order (debroot_umount is the EXIT trap).
DEBROOT_MOUNTS=()
# shellcheck disable=SC2317  # called by the EXIT trap
debroot_umount() {
    local i
    for ((i = ${#DEBROOT_MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -l "${DEBROOT_MOUNTS[$i]}" 2>/dev/null || true
    done
    DEBROOT_MOUNTS=()
}
trap debroot_umount EXIT

# debroot_bind SRC DEST: bind-mount SRC on DEST (created), undone at exit.
debroot_bind() {
    mkdir -p "$2"
    mount --bind "$1" "$2"
    DEBROOT_MOUNTS+=("$2")
}

# debroot_mount ROOT: /proc and /dev in ROOT, unless already there. Never /sys: Python's
# cpuinfo readers would see the host's topology (under emulation, another architecture's).
debroot_mount() {
    local root="$1"
    if ! mountpoint -q "$root/proc"; then
        mount -t proc proc "$root/proc"
        DEBROOT_MOUNTS+=("$root/proc")
    fi
    mountpoint -q "$root/dev" || debroot_bind /dev "$root/dev"
}
