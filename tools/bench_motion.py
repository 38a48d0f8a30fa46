#!/usr/bin/env python3
"""Motion gating (maskd.motion), measured: frames skipped and CPU saved on an empty doorway, and
the delay to the first detection when someone walks in, gating on vs off, same frames.

The clip: ``--empty`` frames of a still doorway (the first frame of maskd's demo clip with the
person painted out by the background, plus sensor noise of +-``--noise`` grey levels), then the
demo clip itself (someone in front of the camera). Detector and classifier as configured by
default (YuNet when its model is found, else BlazeFace).

    python tools/bench_motion.py [--empty 300] [--noise 6]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from maskd.classifier import Classifier
from maskd.config import Config
from maskd.demo import BACKGROUND, DemoSource
from maskd.detectors import find_yunet_model, make_detector
from maskd.pipeline import Pipeline
from maskd.types import Frame
from tools.inputs import non_negative_int, positive_int


def clip(empty: int, noise: int) -> tuple[list[np.ndarray], int]:
    demo = DemoSource()
    people = [demo.render(i) for i in range(demo.frames_per_pass)]
    blank = np.empty_like(people[0])
    blank[:] = BACKGROUND
    rng = np.random.default_rng(0)
    still = [np.clip(blank.astype(np.int16) + rng.integers(-noise, noise + 1, blank.shape), 0, 255)
             .astype(np.uint8) for _ in range(empty)]
    return still + people, empty


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(frames: list[np.ndarray], enter: int, gating: bool) -> dict:
    cfg = Config()
    if find_yunet_model() is None:
        cfg.detector.kind = "blazeface"
    cfg.motion.enabled = gating
    pipe = Pipeline(cfg, make_detector(cfg.detector), Classifier.open(threads=cfg.classifier.threads))
    first = None
    c0, t0, cpu_empty = cpu_s(), time.perf_counter(), 0.0
    for i, f in enumerate(frames):
        if i == enter:
            cpu_empty = cpu_s() - c0
        r = pipe.process(Frame(f, i + 1, (i + 1) / 15.0))
        if first is None and i >= enter and r.verdicts:
            first = i - enter
    return {"cpu_empty_ms_per_frame": 1e3 * cpu_empty / max(enter, 1),
            "wall_s": time.perf_counter() - t0, "skipped": pipe.counts.motion_skipped,
            "first_detection_frames": first, "events": pipe.violations.started}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--empty", type=positive_int, default=300)
    p.add_argument("--noise", type=non_negative_int, default=6)
    args = p.parse_args(argv)
    frames, enter = clip(args.empty, args.noise)
    res = {g: run(frames, enter, g) for g in (False, True)}
    off, on = res[False], res[True]
    print(f"{enter} empty frames then {len(frames) - enter} with a person (15 fps)")
    for name, r in (("gating off", off), ("gating on", on)):
        print(f"{name:10s}: detection skipped on {r['skipped']}/{enter} empty frames "
              f"({100 * r['skipped'] / enter:.0f}%), CPU {r['cpu_empty_ms_per_frame']:.2f} ms/frame "
              f"on the empty scene, first detection {r['first_detection_frames']} frames after entry, "
              f"violations started {r['events']}")
    saved = 1 - on["cpu_empty_ms_per_frame"] / max(off["cpu_empty_ms_per_frame"], 1e-9)
    print(f"CPU saved on the empty scene: {100 * saved:.0f}%; extra delay to the first detection: "
          f"{(on['first_detection_frames'] or 0) - (off['first_detection_frames'] or 0)} frames")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
