"""deploy/install.sh and uninstall.sh for real on plain Debian (tests/debian/install_real.sh).

A cached Debian root, one for bookworm and one for trixie (debootstrap minbase + python3, venv,
pip, systemd, udev; no Raspberry Pi packages) in /var/cache/maskd-debian-<arch>[-trixie], outside
the repository; each run uses a
throw-away overlay of it, with its own host name. install.sh runs apt-get and pip for real, then
the box is checked (venv, `maskd --version`, check-config, classify and the demo as the maskd user,
unit verified and enabled but not started, device_id = host name, only the int8 model copied),
then uninstall.sh and --purge. Runs where CI=true or MASKD_INSTALL_REAL=1 (root, debootstrap,
chroot; about a minute to build the root the first time, ~30 s a run after), and skips with the
script's reason elsewhere. What a chroot cannot check (no systemd as PID 1) is listed in
docs/install-pi.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from root_checks import run_root_check

SCRIPT = Path(__file__).parent / "debian" / "install_real.sh"


@pytest.mark.slow
@pytest.mark.parametrize("suite, python", [("bookworm", "3.11"), ("trixie", "3.13")])
def test_real_install_and_uninstall_on_plain_debian(suite, python):
    """Both releases install.sh has pins for: Bookworm (Python 3.11, numpy 1.x) and Trixie
    (3.13, numpy 2.x), the two Raspberry Pi OS bases a Pi may be flashed with today."""
    rc, out = run_root_check(SCRIPT, "MASKD_INSTALL_REAL", "the real install in a Debian chroot "
                             "(root; a minute the first time)", timeout=1200,
                             env={"MASKD_DEBIAN_SUITE": suite})
    assert rc == 0, "\n".join(ln for ln in out.splitlines() if not ln.startswith("  | "))[-6000:]
    assert "debian: PASS" in out and "debian: FAIL" not in out
    for line in ["ok: plain Debian detected: no python3-picamera2", "ok: apt-get ran for real",
                 "ok: device_id defaults to the host name", "ok: enabled (systemctl is-enabled)",
                 "ok: reported as not configured", "ok: no float32 model, no split.json",
                 "ok: systemd-analyze verify maskd.service", "ok: --purge: the user maskd is gone"]:
        assert line in out, line
    assert f"Python {python}." in out  # the box's python3, as the script reports it
    assert "ok: the venv holds exactly the pinned versions" in out
    assert "ok: maskd doctor (as maskd) finds the pins install.sh left and all as pinned" in out
