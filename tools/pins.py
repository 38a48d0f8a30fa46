"""Pin the exact versions maskd is installed with, so an install made later gets what was tested.

A minor release of a dependency must not break a device installed months later, nor the tests of a
clean clone (on 2026-12-02 OpenCV 5.1 appeared on PyPI and removed an importer maskd's tools used).
Two files, each made here, never edited by hand:

- ``deploy/constraints-pi.txt``, what ``deploy/install.sh`` installs on a Pi: maskd's dependencies
  (pyproject.toml) resolved for aarch64 / CPython 3.11 (manylinux wheels only) under the rules
  below with ``pip download``; then the same pins must also download for x86_64, where install.sh
  runs on a plain Debian PC (tests/debian). The arm64 check (tests/arm64/check.sh, in CI) installs
  exactly this set and fails on any wheel the file does not pin.
- ``deploy/constraints-dev.txt``, what ``deploy/bootstrap.sh`` (the quick start and the tests)
  installs: ``pip freeze`` of ``.venv`` after ``./tests/run.sh`` passed in it.

    python tools/pins.py pi [--check]     # resolve now and (re)write deploy/constraints-pi.txt
    python tools/pins.py dev [--check]    # freeze .venv into deploy/constraints-dev.txt

``--check`` prints what would change and writes nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "deploy" / "constraints-pi.txt"
DEV_OUT = REPO / "deploy" / "constraints-dev.txt"
# Rules the resolution must obey beyond pyproject.toml, each with its reason.
RULES = {
    "numpy<2": "apt's python3-picamera2 and simplejpeg are built against numpy 1.x",
}
PYTHON = "3.11"  # Raspberry Pi OS Bookworm's python3
ARCHES = {
    "aarch64": ["manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64",
                "manylinux_2_28_aarch64"],
    "x86_64": ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_27_x86_64",
               "manylinux_2_28_x86_64"],
}
HEADER = "# Made by `python tools/pins.py"
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares it (`PyYAML`, `pyyaml` and `py_yaml` are one)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins_from_wheels(filenames: list[str]) -> dict[str, str]:
    """{normalized name: version} from wheel file names; anything else is refused by name."""
    pins: dict[str, str] = {}
    for fn in filenames:
        m = _WHEEL.match(fn)
        if not m:
            raise ValueError(f"not a wheel file name: {fn!r} (only wheels can be pinned)")
        name = normalize(m["name"])
        if name in pins and pins[name] != m["version"]:
            raise ValueError(f"two versions of {name}: {pins[name]} and {m['version']}")
        pins[name] = m["version"]
    return pins


def read_pins(path: Path) -> dict[str, str]:
    """{normalized name: version} of a constraints file of `name==version` lines."""
    pins: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version.strip():
            raise ValueError(f"{path.name}:{n}: {line!r} is not `name==version`")
        pins[normalize(name.strip())] = version.strip()
    return pins


def render(pins: dict[str, str], about: str) -> str:
    """A constraints file: a header saying how it was made and why, then sorted pins."""
    body = "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))
    return f"{about}# Do not edit by hand; see docs/install-pi.md, \"Pinned wheels\".\n{body}"


def about_pi(when: str) -> str:
    rules = "".join(f"#   {rule}: {why}\n" for rule, why in RULES.items())
    return (f"{HEADER} pi` on {when}: the wheels deploy/install.sh installs on a Pi\n"
            f"# (aarch64, CPython {PYTHON}), resolved from pyproject.toml's dependencies with:\n{rules}")


def about_dev(when: str, where: str) -> str:
    return (f"{HEADER} dev` on {when}: the versions deploy/bootstrap.sh installs\n"
            f"# (quick start, tests), frozen from a .venv ({where}) in which ./tests/run.sh passed.\n")


def requirements(repo: Path = REPO) -> list[str]:
    """maskd's runtime dependencies, as pyproject.toml states them."""
    return tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]


def download(arch: str, reqs: list[str], constraints: list[str], dest: Path) -> list[str]:
    """Wheel file names pip resolves for `arch`; raises with pip's own words when it cannot."""
    req, con = dest / "requirements.txt", dest / "constraints.txt"
    req.write_text("\n".join(reqs) + "\n")
    con.write_text("\n".join(constraints) + "\n")
    wheels = dest / f"wheels-{arch}"
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
           "--python-version", PYTHON, "--implementation", "cp", "--abi", "cp" + PYTHON.replace(".", ""),
           *(a for p in ARCHES[arch] for a in ("--platform", p)),
           "--dest", str(wheels), "-r", str(req), "-c", str(con)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip could not resolve the Pi's wheel set for {arch}:\n"
                           f"{done.stderr.strip()[-3000:]}")
    return sorted(p.name for p in wheels.glob("*.whl"))


def diff(old: dict[str, str], new: dict[str, str]) -> list[str]:
    """Human lines for what re-pinning would change."""
    lines = []
    for name in sorted(old.keys() | new.keys()):
        a, b = old.get(name), new.get(name)
        if a != b:
            lines.append(f"  {name}: {a or '(not pinned)'} -> {b or '(dropped)'}")
    return lines


def resolve_pi() -> dict[str, str]:
    """The Pi's pins, checked to download for x86_64 as well; raises RuntimeError if not."""
    with tempfile.TemporaryDirectory(prefix="maskd-pins-") as tmp:
        pins = pins_from_wheels(download("aarch64", requirements(), list(RULES), Path(tmp)))
        exact = [f"{n}=={v}" for n, v in sorted(pins.items())]
        # The same pins on x86_64 (install.sh on a Debian PC, tests/debian): no new resolution.
        x86 = pins_from_wheels(download("x86_64", requirements(), exact, Path(tmp)))
    if x86 != pins:
        raise RuntimeError("x86_64 resolves differently under the aarch64 pins:\n"
                           + "\n".join(diff(pins, x86)))
    return pins


def freeze(venv: Path) -> tuple[dict[str, str], str]:
    """({name: version} installed in ``venv`` except editable ones, "platform, CPython x.y.z")."""
    py = venv / "bin" / "python"
    if not py.exists():
        raise RuntimeError(f"{py} not found: run ./tests/run.sh first (it makes .venv and tests it)")
    done = subprocess.run([str(py), "-m", "pip", "freeze", "--exclude-editable"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip freeze failed in {venv}: {done.stderr.strip()[-2000:]}")
    pins: dict[str, str] = {}
    for line in done.stdout.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise RuntimeError(f"{venv}: {line!r} is not installed from a registry; cannot pin it")
        pins[normalize(name)] = version.strip()
    where = subprocess.run([str(py), "-c", "import platform; print(platform.machine(), "
                            "'CPython', platform.python_version())"],
                           capture_output=True, text=True).stdout.strip()
    return pins, where


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=["pi", "dev"], help="pi: deploy/constraints-pi.txt; "
                    "dev: deploy/constraints-dev.txt")
    ap.add_argument("--check", action="store_true", help="print what would change; write nothing")
    ap.add_argument("--out", type=Path, help="the constraints file (default: the one named above)")
    ap.add_argument("--venv", type=Path, default=REPO / ".venv", help="dev: the tested venv "
                    "(default: %(default)s)")
    args = ap.parse_args(argv)
    out = args.out or (OUT if args.which == "pi" else DEV_OUT)
    today = dt.date.today().isoformat()
    try:
        if args.which == "pi":
            pins = resolve_pi()
            about = about_pi(today)
            print(f"{len(pins)} wheels for aarch64 / CPython {PYTHON}; the same pins download for x86_64")
        else:
            pins, where = freeze(args.venv)
            about = about_dev(today, where)
            print(f"{len(pins)} packages in {args.venv} ({where})")
    except (RuntimeError, ValueError) as exc:
        print(f"pins: {exc}", file=sys.stderr)
        return 1
    old = read_pins(out) if out.exists() else {}
    changes = diff(old, pins)
    print("\n".join(changes) if changes else f"no change to {out}")
    if not args.check and (changes or not out.exists()):
        out.write_text(render(pins, about))
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
