"""`maskd check-config FILE`: validate a config the way `maskd run` would, then exit.

Exit 0 and "OK" when valid, else one line per bad key on stderr and exit 78 (EX_CONFIG), the
status systemd's RestartPreventExitStatus= keys on. It loads the config as `run` does, so both
reject the same configs: with MQTT on, that includes the password file or variable and the TLS
files (maskd.config.MqttConfig), read when the config is loaded. It also checks the preview
devices of this machine with the function `run` calls at start (maskd.preview.check_previews):
a missing or unusable framebuffer, or a window with an OpenCV without GUI support, would stop
`run` here whoever starts it. What depends on the user or session (writing the framebuffer, a
desktop session for the window) and the model files are warnings only: the service may run as
another user, with another environment, or on another machine; `maskd doctor` checks them, and
`run` stops with exit 78 when one is missing. Cameras and the broker are not opened.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from maskd.config import EX_CONFIG, Config, ConfigError, load_config
from maskd.preview import PreviewUnavailable, check_previews


def referenced_files(cfg: Config) -> dict[str, Path]:
    """The model files in the config, by dotted key (the MQTT files are validated on load)."""
    candidates = {
        "detector.model": cfg.detector.model,
        "classifier.model": cfg.classifier.model,
    }
    return {k: v for k, v in candidates.items() if v is not None}


def _file_problem(path: Path) -> str | None:
    """Why ``path`` is not a readable file here, or None; never raises (a too-long name does)."""
    try:
        if not path.is_file():
            return "does not exist here"
        if not os.access(path, os.R_OK):
            return "is not readable by this user"
    except OSError as err:
        return f"cannot be checked here ({err.strerror or err})"
    return None


def file_warnings(cfg: Config) -> list[str]:
    """One line per named model file that this user cannot read."""
    out = []
    for key, path in referenced_files(cfg).items():
        problem = _file_problem(path)
        if problem:
            out.append(f"warning: '{key}': {path} {problem}")
    return out


def main(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        print(str(err), file=sys.stderr)
        return EX_CONFIG
    try:
        lacking = check_previews(cfg, strict=False)
    except PreviewUnavailable as err:
        print(f"{args.config}: {err}", file=sys.stderr)
        return EX_CONFIG
    for line in file_warnings(cfg) + [f"warning: {w}" for w in lacking]:
        print(f"{args.config}: {line}", file=sys.stderr)
    print(f"OK: {args.config}")
    return 0
