"""The `maskd` command line: argument parsing only; each sub-command lives in maskd.commands."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from maskd import __version__, modelfiles


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, help="classifier .tflite (default: the shipped model)")
    p.add_argument("--threads", type=int, default=None, help="TFLite CPU threads")
    p.add_argument("--edgetpu", action="store_true", help="run the classifier on a Coral EdgeTPU")


def _add_detector_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detector", choices=["auto", "yunet", "blazeface", "ssd"], default=None)
    p.add_argument("--detector-model", type=Path, default=None, help="detector model file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maskd", description="Find people without a face mask in a camera feed; report them."
    )
    parser.add_argument("--version", action="version", version=f"maskd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("classify", help="classify face images as mask / no_mask")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image or folder (recursive)")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--config", type=Path, help="YAML config (classifier section: model, cut)")

    p = sub.add_parser("scan", help="detect faces and masks in images, folders or videos")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    _add_detector_args(p)
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--annotate", type=Path, metavar="OUTDIR", help="write annotated images here")
    p.add_argument("--config", type=Path, help="YAML config (detector/classifier sections)")

    p = sub.add_parser("run", help="run the camera loop until SIGTERM/SIGINT")
    p.add_argument("--config", type=Path, help="YAML config (default: built-in defaults)")
    p.add_argument("--source", help="override source: index, /dev/videoN, URL, video file or folder")
    p.add_argument("--device-id", help="override device_id")
    p.add_argument("--camera", help="override camera name")
    _add_detector_args(p)
    _add_model_args(p)
    p.add_argument("--loop", action="store_true", help="file sources: loop at the end")
    p.add_argument("--exit-at-end", action="store_true", help="file sources: stop at the end")
    p.add_argument("--jsonl", help="write events as JSON lines to FILE, or - for stdout")
    p.add_argument("--annotate", type=Path, metavar="OUTDIR", help="write an annotated clip here")
    p.add_argument("--mqtt", help="broker URL mqtt://host:port or mqtts://host:port")
    p.add_argument("--state-dir", type=Path, help="state directory (MQTT outbox)")
    p.add_argument("--flush-timeout", type=float, default=30.0,
                   help="with --exit-at-end: seconds to wait for the outbox to drain")
    p.add_argument("--preview", action="store_true", help="show the live view (framebuffer/window)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after N frames")
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR")

    p = sub.add_parser("models", help="download model files that cannot come from git (YuNet)")
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    p = msub.add_parser("fetch", help="download YuNet, checked against its pinned sha256")
    p.add_argument("--dest", type=Path, default=None, metavar="DIR",
                   help="folder to save it in (default: models/ in a checkout, else "
                        "/usr/share/maskd/models; both are where the detector looks)")
    p.add_argument("--yunet-url", default=modelfiles.YUNET_URL, metavar="URL",
                   help="download from here instead (http(s):// or file://; default: %(default)s)")
    p.add_argument("--yunet-sha256", default=modelfiles.YUNET_SHA256, metavar="HEX",
                   help="expect this sha256 instead of the pinned one (default: %(default)s); "
                        "the file is named after its content, never after the URL")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S",
                   help="network time-out in seconds (default: %(default)s)")

    p = sub.add_parser("check-config", help="validate a config file and exit (78 when invalid)")
    p.add_argument("config", type=Path)

    p = sub.add_parser("doctor", help="check camera, models, runtime, broker and state dir")
    p.add_argument("--config", type=Path, help="YAML config (default: /etc/maskd/config.yaml if present)")
    p.add_argument("--frames", type=int, default=5, help="frames to time per stage")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"maskd.commands.{args.command.replace('-', '_')}")
    try:
        return int(module.main(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
