#!/usr/bin/env python3
"""Measure maskd against the seeds' way, side by side, in one run on this machine.

Sections (``--sections``, default all):

- ``face``:  one face through Keras ``model.predict`` (the seeds' code path), Keras
  ``model(x)``, TFLite float32 and int8 at 1 and 2 (and all) threads, EdgeTPU when present.
  Medians after warm-up and the speed-up of each over Keras ``predict``.
- ``macs``:  the classifier's multiply-accumulate count, counted from the model's own layers,
  and what fraction of this CPU's nominal int8 peak the int8 model reaches.
- ``frame``: each face detector at 320x240 and 640x480, plain, 2x upscaled and 2x2 tiled.
- ``e2e``:   a clip through maskd's pipeline (with and without the per-track classification
  cache) and through a seed-style pipeline (tools/seedstyle.py), same frames: fps and ratios.
- ``goals``: issue 16's ratios against the seeds' way, in one run: ``maskd classify``'s per-file
  path vs the seeds' Keras ``predict`` loop over the same files (goal >= 30x), and ``maskd
  scan``'s per-frame path vs the seed-style pipeline on 1280x720 frames (goal >= 12x).
- ``estimates``: Raspberry Pi 4/5 and Coral figures from published per-model latencies,
  labelled as estimates with their sources (run this tool on the device to replace them).

It must run unchanged on a Pi: TensorFlow is optional (Keras rows are skipped with a note),
only the TFLite runtime and OpenCV are needed for the maskd parts.

    python tools/bench.py                 # everything, table on stdout
    python tools/bench.py --quick --json out/bench.json

The sections live in tools/benchlib/ (one module each); this file is the command line.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import cv2

from tools.benchlib.common import EDGETPU_MODEL, FLOAT_MODEL, INT8_MODEL, thread_counts
from tools.benchlib.e2e import bench_e2e
from tools.benchlib.estimates import bench_estimates
from tools.benchlib.face import bench_face
from tools.benchlib.frame import BENCH_DETECTORS, bench_frame
from tools.benchlib.goals import bench_goals
from tools.benchlib.macs import bench_macs, cpu_peak, model_macs
from tools.benchlib.report import plot, render
from tools.inputs import keras_file, non_negative_int, out_dir, out_file, positive_int, write_out

ALL_SECTIONS = ("face", "macs", "frame", "e2e", "goals", "estimates")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sections", default=",".join(ALL_SECTIONS),
                   help=f"comma list of {', '.join(ALL_SECTIONS)} (default: all)")
    p.add_argument("--quick", action="store_true", help="few repeats, 320x240 only, short clip")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON ('-' = stdout)")
    p.add_argument("--plot", type=Path, metavar="DIR", help="write bench_face.png / bench_e2e_N.png here")
    p.add_argument("--model", type=Path, default=INT8_MODEL, help="int8 .tflite")
    p.add_argument("--float-model", type=Path, default=FLOAT_MODEL, help="float32 .tflite")
    p.add_argument("--edgetpu-model", type=Path, default=EDGETPU_MODEL, help="EdgeTPU-compiled .tflite")
    p.add_argument("--keras", type=Path, default=None,
                   help="Keras model (default: the one the int8 model's sidecar names, when present)")
    p.add_argument("--no-keras", action="store_true", help="skip Keras rows even when TF is installed")
    p.add_argument("--detectors", default="yunet,blazeface,opencv-ssd",
                   help="comma list for the per-frame section: yunet, blazeface, opencv-ssd "
                        "or a TFLite SSD's .tflite path")
    p.add_argument("--frames", type=positive_int, default=None, help="clip length for e2e (default 120, quick 30)")
    p.add_argument("--clips", default=None,
                   help="e2e clips: scenes (scenes-dev photos, panned), demo (maskd's demo clip); "
                        "default scenes,demo (quick: scenes)")
    p.add_argument("--warmup", type=non_negative_int, default=None)
    p.add_argument("--repeats", type=positive_int, default=None)
    args = p.parse_args(argv)
    args.sections = _names(p, "--sections", args.sections)
    bad = set(args.sections) - set(ALL_SECTIONS)
    if bad:
        p.error(f"unknown section(s) {sorted(bad)}; choose from {ALL_SECTIONS}")
    args.detectors = _names(p, "--detectors", args.detectors)
    for name in args.detectors:
        if (problem := detector_problem(name)) is not None:
            p.error(f"--detectors {name}: {problem}")
    args.warmup = args.warmup if args.warmup is not None else (3 if args.quick else 10)
    args.repeats = args.repeats if args.repeats is not None else (15 if args.quick else 100)
    args.frame_repeats = max(5, args.repeats // 4)
    args.frames = args.frames or (30 if args.quick else 120)
    args.clips = _names(p, "--clips", args.clips or ("scenes" if args.quick else "scenes,demo"))
    if bad := sorted(set(args.clips) - {"scenes", "demo"}):
        p.error(f"unknown clip(s) {bad}; --clips takes scenes and/or demo")
    for flag, path, kind in (("--model", args.model, "int8"),
                             ("--float-model", args.float_model, "float32")):
        said = model_kind(path)
        if said is not None and said != kind:
            p.error(f"{flag} {path} is a {said} model (its sidecar's quantization); {flag} "
                    f"takes a {kind} model")
    if args.keras is not None and not args.no_keras:
        keras_file(args.keras)  # before the timing, not after it
    # Output places now: a folder that cannot be made was a traceback after minutes of timing.
    if args.json and args.json != "-":
        out_file(Path(args.json))
    if args.plot:
        out_dir(args.plot)
    return args


def _names(p: argparse.ArgumentParser, flag: str, text: str) -> list[str]:
    """A comma list's names; none at all (',') is a usage error: it used to run nothing, exit 0."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        p.error(f"{flag} {text!r} names nothing")
    return names


def detector_problem(name: str) -> str | None:
    """Why ``name`` cannot be timed by the frame section, or None. A name it does not know was
    taken for a TFLite SSD file and skipped with a note (an empty table, exit 0)."""
    if name in BENCH_DETECTORS:
        return None
    if name.endswith(".tflite"):
        return None if Path(name).is_file() else "no such TFLite SSD model file"
    times = f"{', '.join(BENCH_DETECTORS)} (../shared's OpenCV SSD) or a TFLite SSD's .tflite path"
    needs = {"centerface": "a CenterFace .onnx model", "ssd": "an SSD model file"}
    if name in needs:  # maskd's own kinds
        return f"needs {needs[name]}, which bench does not look for; it times {times}"
    return f"unknown detector; choose from {times}"


def model_kind(path: Path) -> str | None:
    """The quantization a model's sidecar gives it (tools/convert.py writes one), so a float
    model passed as the int8 one is refused, not timed and labelled 'TFLite int8'. None when
    the file or sidecar is missing or unreadable: the face section names that itself."""
    from maskd.classifier import ModelError, read_sidecar

    if not path.is_file():
        return None
    try:
        kind = read_sidecar(path).raw.get("quantization")
    except ModelError:
        return None
    return kind if isinstance(kind, str) else None


def run(args: argparse.Namespace) -> dict[str, Any]:
    notes: list[str] = []
    res: dict[str, Any] = {"time": time.time(), "notes": notes, "quick": args.quick,
                           "machine": {"cpu": cpu_peak()["cpu"], "cores": thread_counts()[-1],
                                       "python": platform.python_version(),
                                       "platform": platform.platform(),
                                       "opencv": cv2.__version__, "loadavg_start": _loadavg()}}
    if "face" in args.sections:
        res["face"] = bench_face(args, notes)
    if "macs" in args.sections:
        res["macs"] = bench_macs(args, res.get("face"), notes)
    if "frame" in args.sections:
        res["frame"] = bench_frame(args, notes)
    if "e2e" in args.sections:
        res["e2e"] = bench_e2e(args, notes)
    if "goals" in args.sections:
        res["goals"] = bench_goals(args, notes)
    if "estimates" in args.sections:
        res["estimates"] = bench_estimates(res.get("macs") or model_macs(args, notes))
    res["machine"]["loadavg_end"] = _loadavg()
    return res


def _loadavg() -> list[float] | None:
    """1/5/15-minute load: timings on a shared machine mean little without it."""
    try:
        return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    res = run(args)
    text = render(res)
    if args.json == "-":
        sys.stderr.write(text)
        json.dump(res, sys.stdout, indent=1, default=float)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(text)
        if args.json:
            write_out(Path(args.json), json.dumps(res, indent=1, default=float) + "\n")
    if args.plot:
        try:
            for p in plot(res, args.plot):
                print(f"wrote {p}", file=sys.stderr)
        except ImportError:
            print("--plot needs matplotlib (pip install matplotlib)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
