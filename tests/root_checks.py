"""Running the opt-in root shell checks (tests/arm64/check.sh, tests/debian/install_real.sh).

They need root and minutes (a cached debootstrap root outside the repository), so they run in
CI (CI=true) or where their variable is 1, and exit 77 with the reason on the last line when
this machine cannot run them (pytest then skips with that reason).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest


def run_root_check(script: Path, opt_in: str, what: str, timeout: float,
                   env: dict[str, str] | None = None) -> tuple[int, str]:
    """(exit status, stdout + stderr) of ``bash script`` with ``env`` added to this process's
    environment; skips unless CI=true or opt_in=1."""
    if os.environ.get("CI") != "true" and os.environ.get(opt_in) != "1":
        pytest.skip(f"{what} runs in CI (CI=true) or with {opt_in}=1")
    r = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=timeout,
                       stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})
    out = r.stdout + r.stderr
    print(out)
    if r.returncode == 77:
        pytest.skip(out.strip().splitlines()[-1])
    return r.returncode, out
