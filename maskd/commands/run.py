"""`maskd run`: the camera loop until SIGTERM/SIGINT (or the end of a file with --exit-at-end).

Exit status: 0 clean stop; 75 (EX_TEMPFAIL) when --exit-at-end found a sink that could not
deliver everything within --flush-timeout (the MQTT outbox keeps it for the next start);
78 (EX_CONFIG) for anything wrong at start-up (config, model, detector, source, preview),
reported as one line on stderr so systemd does not restart-loop on it; 70 if the loop
crashed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from maskd.config import EX_CONFIG, Config, ConfigError, load_config, parse_config

log = logging.getLogger("maskd")


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, key = dotted.rpartition(".")
    target = data
    for part in filter(None, section.split(".")):
        target = target[part]
    target[key] = value


def override(cfg: Config, args: argparse.Namespace, mapping: dict[str, str]) -> Config:
    """Config with the given command-line options (arg name -> dotted key) applied when set.

    Re-validated as a whole, so a bad value on the command line is reported like one in YAML.
    """
    data = cfg.model_dump()
    for arg, key in mapping.items():
        value = getattr(args, arg, None)
        if value is not None and value is not False:
            _set(data, key, value)
    return parse_config(data, "command line")


# Options shared by `scan` and `run`.
MODEL_OPTIONS = {
    "detector": "detector.kind",
    "detector_model": "detector.model",
    "model": "classifier.model",
    "threads": "classifier.threads",
    "edgetpu": "classifier.edgetpu",
}
RUN_OPTIONS = {
    **MODEL_OPTIONS,
    "device_id": "device_id",
    "camera": "camera",
    "loop": "source.loop",
    "jsonl": "jsonl.path",
    "annotate": "preview.annotate_dir",
    "mqtt": "mqtt.url",
    "state_dir": "state_dir",
    "log_level": "log_level",
}


def run_config(args: argparse.Namespace) -> Config:
    """The config file (or defaults) with the command line on top."""
    cfg = override(load_config(args.config), args, RUN_OPTIONS)
    if args.source is not None:
        src = {"kind": "demo", "uri": None} if args.source == "demo" else {"kind": "auto", "uri": args.source}
        data = cfg.model_dump()
        data["source"].update(src)
        cfg = parse_config(data, "command line")
    if args.preview:
        from maskd.preview import resolve_preview_flag

        cfg = cfg.model_copy(update={"preview": resolve_preview_flag(cfg.preview)})
    return cfg


def startup_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean 'fix the setup', each carrying a message naming the problem."""
    from maskd.classifier import ModelError
    from maskd.detectors import DetectorError
    from maskd.preview import PreviewUnavailable
    from maskd.types import SourceError

    return (ConfigError, ModelError, DetectorError, SourceError, PreviewUnavailable, OSError)


def main(args: argparse.Namespace) -> int:
    from maskd.service import build

    try:
        cfg = run_config(args)
    except startup_errors() as err:
        print(f"maskd run: {err}", file=sys.stderr)
        return EX_CONFIG
    logging.basicConfig(level=cfg.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        service = build(cfg, exit_at_end=args.exit_at_end, max_frames=args.max_frames)
    except startup_errors() as err:
        print(f"maskd run: {err}", file=sys.stderr)
        return EX_CONFIG
    restore = service.install_signal_handlers()
    try:
        return service.run(flush_timeout=args.flush_timeout)
    finally:
        restore()
