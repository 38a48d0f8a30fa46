"""The Pi's stack on arm64 under qemu-user emulation (tests/arm64/check.sh), in CI.

Runs where CI=true or MASKD_ARM64=1 (the first run builds a cached Debian arm64 root in
/var/cache/maskd-arm64, minutes; later runs reuse it), and skips with the script's reason where
it cannot run (not root, no binfmt_misc, no package mirror). The full check (400 images, the
whole clip, cortex-a72 and cortex-a76) is `sudo tests/arm64/check.sh --full`.
Emulation proves correctness, never speed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from root_checks import run_root_check

SCRIPT = Path(__file__).parent / "arm64" / "check.sh"


@pytest.mark.slow
def test_pi_stack_on_arm64_agrees_with_x86():
    rc, out = run_root_check(SCRIPT, "MASKD_ARM64", "the emulated arm64 check (minutes; "
                             "`tests/arm64/check.sh --full` for the whole check)", timeout=3000)
    assert rc == 0, out[-4000:]
    assert "labels agree on" in out and "same " in out and "arm64: PASS" in out
