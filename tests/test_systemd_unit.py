"""The shipped unit: `systemd-analyze verify` clean, and the promises the docs make about it."""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "maskd.service"
ANALYZE = shutil.which("systemd-analyze")
SYSTEM_UNITS = Path("/usr/lib/systemd/system")


def directives() -> dict[str, list[str]]:
    """'Section.Key' -> values (a key may repeat)."""
    out: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key}", []).append(value)
    return out


@pytest.mark.skipif(ANALYZE is None or not SYSTEM_UNITS.is_dir(), reason="needs systemd-analyze")
def test_systemd_analyze_verify_is_clean(tmp_path):
    # A throw-away root holding the unit, the system's own units it depends on, and an
    # executable where install.sh puts maskd, so verify checks everything but the real Pi.
    root = tmp_path / "root"
    exe = root / exec_start_path().relative_to("/")
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, root / "etc/systemd/system/maskd.service")
    shutil.copytree(SYSTEM_UNITS, root / "usr/lib/systemd/system", symlinks=True)
    r = subprocess.run([ANALYZE, "verify", "--man=no", f"--root={root}", "maskd.service"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def exec_start_path() -> Path:
    return Path(directives()["Service.ExecStart"][0].split()[0])


def test_unit_promises():
    d = directives()
    one = {k: v[-1] for k, v in d.items()}
    assert one["Service.Type"] == "notify" and "Service.WatchdogSec" in one
    assert one["Service.Restart"] == "on-failure"
    # a bad config (78) and a mistyped ExecStart option (argparse: 2) are not restarted
    assert {"2", "78"} <= set(one["Service.RestartPreventExitStatus"].split())
    assert one["Service.User"] == "maskd"
    assert set(one["Service.SupplementaryGroups"].split()) == {"video", "plugdev"}
    assert one["Service.ConfigurationDirectory"] == "maskd" and one["Service.StateDirectory"] == "maskd"
    for key in ["NoNewPrivileges", "ProtectHome", "PrivateTmp"]:
        assert one[f"Service.{key}"] == "yes", key
    assert one["Service.ProtectSystem"] == "strict"
    assert set(one["Service.RestrictAddressFamilies"].split()) <= {"AF_UNIX", "AF_INET", "AF_INET6",
                                                                     "AF_NETLINK"}
    assert "Service.PrivateDevices" not in one, "PrivateDevices hides the camera and the Coral"
    # the command line the installer lays down
    assert one["Service.ExecStart"] == "/opt/maskd/.venv/bin/maskd run --config /etc/maskd/config.yaml"
    install = (REPO / "deploy" / "install.sh").read_text()
    assert 'VENV="$MASKD_PREFIX/.venv"' in install and 'MASKD_PREFIX="${MASKD_PREFIX:-/opt/maskd}"' in install
    # another MASKD_PREFIX is written into the installed unit: it replaces exactly this folder
    assert 's|/opt/maskd/|$MASKD_PREFIX/|g' in install
    assert {ln.split("=", 1)[0] for ln in UNIT.read_text().splitlines()
            if "/opt/maskd" in ln and not ln.startswith("#")} == {"Documentation", "ExecStart"}
    assert "/etc/maskd/config.yaml" in install


def test_unit_parses_as_ini():
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment]
    cp.read(UNIT)
    assert cp.sections() == ["Unit", "Service", "Install"]
    assert cp["Install"]["WantedBy"] == "multi-user.target"


def test_restarts_that_wait_never_meet_the_start_limit():
    """Exit 75 is restarted, and some of its causes repeat (a Coral reset by a failing power
    supply, a network that is not up): each such start must take longer than the start limit's
    interval over its burst, or five in a row leave the unit failed for good; and a start that
    waits out both of its waits must still be within TimeoutStartSec."""
    from maskd.commands.run import CORAL_RESTART_SPACING_S
    from maskd.preview import NAME_WAIT_S
    from maskd.tflite import CORAL_WAIT_S

    one = {k: v[-1] for k, v in directives().items()}
    each = float(one["Unit.StartLimitIntervalSec"]) / int(one["Unit.StartLimitBurst"])
    restart_s = float(one["Service.RestartSec"])
    assert CORAL_RESTART_SPACING_S + restart_s > each  # a Coral lost again and again
    assert CORAL_WAIT_S + restart_s > each and NAME_WAIT_S + restart_s > each
    # a start after a lost Coral: the spacing, then the Coral's wait, then the models (a Pi 3)
    assert CORAL_RESTART_SPACING_S + CORAL_WAIT_S + 20 < float(one["Service.TimeoutStartSec"])
