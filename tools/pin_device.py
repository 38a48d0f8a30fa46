"""Pin the exact wheels a Raspberry Pi install gets: writes deploy/constraints-pi.txt.

A Pi installed today must get the same wheels that CI tested, not whatever PyPI holds on the day
`deploy/install.sh` runs: a minor release of a dependency (OpenCV 5.1 removing an importer) must
not break a device installed months later. This resolves maskd's dependencies (pyproject.toml)
for the Pi (aarch64, CPython 3.11, manylinux wheels only) under the rules below, with
`pip download`, and writes one `name==version` line per wheel. It then checks that the same pins
also download for x86_64, where install.sh runs on a plain Debian PC (tests/debian).

    python tools/pin_device.py            # resolve now and (re)write deploy/constraints-pi.txt
    python tools/pin_device.py --check    # resolve now and print what would change; write nothing

After re-pinning, run the arm64 check (`sudo tests/arm64/check.sh`, part of CI), which installs
exactly the pinned set in a Debian arm64 root and fails on any wheel the file does not pin.
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
HEADER = "# Made by `python tools/pin_device.py`"
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


def render(pins: dict[str, str], when: str) -> str:
    """The constraints file: a header saying how it was made and why, then sorted pins."""
    rules = "".join(f"#   {rule}: {why}\n" for rule, why in RULES.items())
    body = "".join(f"{name}=={pins[name]}\n" for name in sorted(pins))
    return (f"{HEADER} on {when}: the wheels deploy/install.sh installs on a Pi\n"
            f"# (aarch64, CPython {PYTHON}), resolved from pyproject.toml's dependencies with:\n"
            f"{rules}# Do not edit by hand; re-run the tool, then the arm64 check (docs/install-pi.md).\n"
            f"{body}")


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="print what would change; write nothing")
    ap.add_argument("--out", type=Path, default=OUT, help="the constraints file (default: %(default)s)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="maskd-pins-") as tmp:
        try:
            names = download("aarch64", requirements(), list(RULES), Path(tmp))
            pins = pins_from_wheels(names)
            exact = [f"{n}=={v}" for n, v in sorted(pins.items())]
            # The same pins on x86_64 (install.sh on a Debian PC, tests/debian): no new resolution.
            x86 = pins_from_wheels(download("x86_64", requirements(), exact, Path(tmp)))
        except (RuntimeError, ValueError) as exc:
            print(f"pin_device: {exc}", file=sys.stderr)
            return 1
    if x86 != pins:
        print("pin_device: x86_64 resolves differently under the aarch64 pins:\n"
              + "\n".join(diff(pins, x86)), file=sys.stderr)
        return 1
    old = read_pins(args.out) if args.out.exists() else {}
    changes = diff(old, pins)
    print(f"{len(pins)} wheels for aarch64 / CPython {PYTHON}; the same pins download for x86_64")
    print("\n".join(changes) if changes else f"no change to {args.out}")
    if not args.check and (changes or not args.out.exists()):
        args.out.write_text(render(pins, dt.date.today().isoformat()))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
