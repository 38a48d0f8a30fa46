"""Pin the exact versions maskd is installed with, so an install made later gets what was tested.

A minor release of a dependency must not break a device installed months later, nor the tests of a
clean clone (on 2026-12-02 OpenCV 5.1 appeared on PyPI and removed an importer maskd's tools used).
Two files, each made here, never edited by hand:

- ``deploy/constraints-pi-<release>.txt``, what ``deploy/install.sh`` installs on a Pi with
  Raspberry Pi OS Bookworm (CPython 3.11) or Trixie (3.13): maskd's dependencies (pyproject.toml)
  resolved for aarch64 and that Python (manylinux wheels only) under the release's rules below
  with ``pip download``; then the same pins must also download for x86_64, where install.sh runs
  on a plain Debian PC (tests/debian). The arm64 check (tests/arm64/check.sh) installs exactly
  such a set and fails on any wheel the file does not pin.
- ``deploy/constraints-dev.txt``, what ``deploy/bootstrap.sh`` (the quick start and the tests)
  installs: ``pip freeze --all`` of ``.venv`` (pip and setuptools too) after ``./tests/run.sh``
  passed in it.
- ``deploy/constraints-build.txt``, what pip builds maskd with on a Pi (pyproject.toml's
  ``[build-system] requires``, run as root in pip's isolated build environment, which
  ``--constraint`` does not reach; deploy/lib.sh's ``build_pins``): their versions in that same
  ``.venv``, where tests/test_wheel.py built maskd's wheel with them. Written with the dev file.

    .venv/bin/python tools/pins.py pi [--check]   # resolve now and (re)write deploy/constraints-pi-*.txt
    .venv/bin/python tools/pins.py dev [--check]   # freeze .venv into deploy/constraints-{dev,build}.txt

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
from typing import NamedTuple

from packaging.requirements import Requirement

from maskd.pins import normalize, parse_pins, read_pins
from tools.inputs import out_dir, write_out

REPO = Path(__file__).resolve().parents[1]
DEV_OUT = REPO / "deploy" / "constraints-dev.txt"
BUILD_OUT = REPO / "deploy" / "constraints-build.txt"


class Release(NamedTuple):
    """A Raspberry Pi OS release install.sh supports: its python3 and the rules the resolution
    must obey beyond pyproject.toml (each with its reason)."""

    name: str
    python: str
    rules: dict[str, str]

    @property
    def out(self) -> Path:
        return REPO / "deploy" / f"constraints-pi-{self.name}.txt"


RELEASES = {r.name: r for r in (
    Release("bookworm", "3.11", {
        "numpy<2": "Bookworm's apt python3-picamera2 and simplejpeg are built against numpy 1.x"}),
    Release("trixie", "3.13", {
        "numpy>=2.2": "Trixie's numpy is 2.2 (apt): its python3-picamera2 and simplejpeg are built against it"}),
)}
ARCHES = {
    "aarch64": ["manylinux2014_aarch64", "manylinux_2_17_aarch64", "manylinux_2_27_aarch64",
                "manylinux_2_28_aarch64"],
    "x86_64": ["manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_27_x86_64",
               "manylinux_2_28_x86_64"],
}
HEADER = "# Made by `python tools/pins.py"
_WHEEL = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-[^-]+-[^-]+-[^-]+\.whl$")


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


def render(pins: dict[str, str], about: str) -> str:
    """A constraints file: a header saying how it was made and why, then sorted pins."""
    body = "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))
    return f"{about}# Do not edit by hand; see docs/install-pi.md, \"Pinned wheels\".\n{body}"


def about_pi(release: Release, when: str) -> str:
    """The Pi file's header: the command, the release and every rule with its reason, so the
    file explains itself on a device where nobody has the docs at hand."""
    rules = "".join(f"#   {rule}: {why}\n" for rule, why in release.rules.items())
    return (f"{HEADER} pi` on {when}: the wheels deploy/install.sh installs on a Pi with\n"
            f"# Raspberry Pi OS {release.name.capitalize()} (aarch64, CPython {release.python}), "
            f"resolved from pyproject.toml's\n# dependencies with:\n{rules}")


def about_dev(when: str, where: str) -> str:
    """The dev file's header: what it was frozen from (a venv's platform and Python decide
    whether bootstrap.sh can use it elsewhere)."""
    return (f"{HEADER} dev` on {when}: the versions deploy/bootstrap.sh installs\n"
            f"# (quick start, tests), frozen from a .venv ({where}) in which ./tests/run.sh passed.\n")


def about_build(when: str, where: str) -> str:
    """The build file's header: what it pins and where those versions were tested."""
    return (f"{HEADER} dev` on {when}: the build backend pip builds maskd with in\n"
            "# deploy/install.sh (pyproject.toml's [build-system] requires), at its versions in a .venv\n"
            f"# ({where}) in which ./tests/run.sh passed (tests/test_wheel.py builds with them).\n")


def requirements(repo: Path = REPO) -> list[str]:
    """maskd's runtime dependencies, as pyproject.toml states them."""
    return tomllib.loads((repo / "pyproject.toml").read_text())["project"]["dependencies"]


def build_requirements(repo: Path = REPO) -> list[str]:
    """What pip installs to build maskd (pyproject.toml's [build-system] requires)."""
    return tomllib.loads((repo / "pyproject.toml").read_text())["build-system"]["requires"]


def build_pins(tested: dict[str, str], repo: Path = REPO) -> dict[str, str]:
    """Each build requirement at its version in ``tested`` (a freeze of the tested venv); raises
    RuntimeError, naming it, for one the venv lacks or holds outside pyproject's range."""
    pins = {}
    for text in build_requirements(repo):
        req = Requirement(text)
        name = normalize(req.name)
        if name not in tested or not req.specifier.contains(tested[name], prereleases=True):
            raise RuntimeError(f"build requirement {text} is {tested.get(name, 'not installed')} "
                               "in the venv: install it there (the dev extra has it) and test again")
        pins[name] = tested[name]
    return pins


def download(arch: str, python: str, reqs: list[str], constraints: list[str],
             dest: Path) -> list[str]:
    """Wheel file names pip resolves for `arch` and CPython `python`; raises with pip's own
    words when it cannot."""
    req, con = dest / "requirements.txt", dest / "constraints.txt"
    req.write_text("\n".join(reqs) + "\n")
    con.write_text("\n".join(constraints) + "\n")
    wheels = dest / f"wheels-{arch}-{python}"
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "--abi", "cp" + python.replace(".", ""),
           *(a for p in ARCHES[arch] for a in ("--platform", p)),
           "--dest", str(wheels), "-r", str(req), "-c", str(con)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip could not resolve the Pi's wheel set for {arch} / {python}:\n"
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


def resolve_pi(release: Release) -> dict[str, str]:
    """A release's pins, checked to download for x86_64 as well; raises RuntimeError if not."""
    with tempfile.TemporaryDirectory(prefix="maskd-pins-") as tmp:
        pins = pins_from_wheels(download("aarch64", release.python, requirements(),
                                         list(release.rules), Path(tmp)))
        exact = [f"{n}=={v}" for n, v in sorted(pins.items())]
        # The same pins on x86_64 (install.sh on a Debian PC, tests/debian): no new resolution.
        x86 = pins_from_wheels(download("x86_64", release.python, requirements(), exact, Path(tmp)))
    if x86 != pins:
        raise RuntimeError(f"{release.name}: x86_64 resolves differently under the aarch64 pins:\n"
                           + "\n".join(diff(pins, x86)))
    return pins


def freeze(venv: Path) -> tuple[dict[str, str], str]:
    """({name: version} installed in ``venv`` except editable ones, "platform, CPython x.y.z")."""
    py = venv / "bin" / "python"
    if not py.exists():
        raise RuntimeError(f"{py} not found: run ./tests/run.sh first (it makes .venv and tests it)")
    # --all: pip, setuptools (a dev requirement: the wheel test builds with it) and wheel too;
    # without it pip leaves them out and they float with every new release
    done = subprocess.run([str(py), "-m", "pip", "freeze", "--all", "--exclude-editable"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"pip freeze failed in {venv}: {done.stderr.strip()[-2000:]}")
    # A package not from a registry ("name @ file://...") has no version to pin: refused by name.
    pins = parse_pins(done.stdout, f"pip freeze of {venv}")
    where = subprocess.run([str(py), "-c", "import platform; print(platform.machine(), "
                            "'CPython', platform.python_version())"],
                           capture_output=True, text=True).stdout.strip()
    return pins, where


def update(out: Path, pins: dict[str, str], about: str, check: bool) -> None:
    """Print what changes in ``out``; write it unless ``check``."""
    old = read_pins(out) if out.exists() else {}
    changes = diff(old, pins)
    text = render(pins, about)
    # The first line holds the date: a file that differs only there is left alone.
    same = out.exists() and out.read_text().splitlines()[1:] == text.splitlines()[1:]
    print("\n".join(changes) if changes else f"no change to the pins in {out}")
    if not check and not same:
        write_out(out, text)  # a full disk: one line, and the old file kept (never 0 bytes)
        print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=["pi", "dev"], help="pi: deploy/constraints-pi-<release>.txt "
                    "for each release; dev: deploy/constraints-dev.txt and constraints-build.txt")
    ap.add_argument("--check", action="store_true", help="print what would change; write nothing")
    ap.add_argument("--release", choices=sorted(RELEASES), action="append",
                    help="pi: only this release (repeatable; default: all)")
    ap.add_argument("--out-dir", type=Path, default=REPO / "deploy",
                    help="where the files go (default: %(default)s)")
    ap.add_argument("--venv", type=Path, default=REPO / ".venv", help="dev: the tested venv "
                    "(default: %(default)s)")
    args = ap.parse_args(argv)
    if not args.check:  # made and tried now: a missing folder was a traceback after resolving
        out_dir(args.out_dir)
    today = dt.date.today().isoformat()
    try:
        if args.which == "dev":
            pins, where = freeze(args.venv)
            print(f"{len(pins)} packages in {args.venv} ({where})")
            update(args.out_dir / DEV_OUT.name, pins, about_dev(today, where), args.check)
            update(args.out_dir / BUILD_OUT.name, build_pins(pins), about_build(today, where),
                   args.check)
            return 0
        for name in args.release or list(RELEASES):
            release = RELEASES[name]
            pins = resolve_pi(release)
            print(f"{name}: {len(pins)} wheels for aarch64 / CPython {release.python}; "
                  "the same pins download for x86_64")
            update(args.out_dir / release.out.name, pins, about_pi(release, today), args.check)
    except (RuntimeError, ValueError) as exc:
        print(f"pins: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
