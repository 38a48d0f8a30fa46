"""``e2e``: the same clip through maskd's pipeline (cache on and off, two detectors) and the
seed-style pipeline (tools/seedstyle.py): fps and ratios."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from maskd.classifier import Classifier
from tools.benchlib.common import rel
from tools.benchlib.face import keras_model_for, load_keras
from tools.benchlib.frame import SSD_PB, YUNET_SHARED, detector_config
from tools.benchlib.inputs import NO_SCENES, clip_or_note, demo_frames, scene_photos


def _run_clip(process: Callable[[int, np.ndarray], Any], frames: list[np.ndarray],
              stats: dict[str, int]) -> tuple[float, dict[str, int]]:
    """Seconds to push every frame through ``process`` after one untimed warm-up frame, and
    the growth of ``stats`` over the timed frames only."""
    process(-1, frames[0])
    before = dict(stats)
    t0 = time.perf_counter()
    for i, f in enumerate(frames):
        process(i, f)
    seconds = time.perf_counter() - t0
    return seconds, {k: stats[k] - before.get(k, 0) for k in stats}


def bench_e2e(args: argparse.Namespace, notes: list[str]) -> dict[str, Any]:
    """Each clip through maskd (cache on/off, two detectors) and the seed-style pipeline."""
    keras_model = None
    if not args.no_keras:
        keras_model = load_keras(args.keras or keras_model_for(args.model), 224, notes)
    clips = args.clips
    if "demo" in clips and "scenes" in clips and not scene_photos():
        # the scenes clip would be the demo clip again: the same table twice, said nowhere
        notes.append(f"e2e scenes clip skipped: {NO_SCENES}, which the demo clip already is")
        clips = ["demo"]
    return {"clips": [bench_clip(kind, args, keras_model, notes) for kind in clips]}


def bench_clip(kind: str, args: argparse.Namespace, keras_model: tuple[Any, str] | None,
               notes: list[str]) -> dict[str, Any]:
    """One clip, same frames for every pipeline: fps, faces found, faces classified."""
    from maskd.config import Config
    from maskd.detectors import find_yunet_model, make_detector
    from maskd.pipeline import Pipeline
    from maskd.types import Frame

    size = (640, 480)
    if kind == "demo":
        try:
            got: tuple[list[np.ndarray], str] | None = demo_frames(args.frames, size)
        except Exception as err:  # noqa: BLE001 - no scikit-image
            notes.append(f"demo clip skipped: {err}")
            got = None
    else:
        got = clip_or_note(size, args.frames, notes)
    if got is None:
        return {"rows": [], "frames": 0, "size": "640x480", "clip": kind}
    frames, clip = got
    rows: list[dict[str, Any]] = []
    result = {"rows": rows, "frames": len(frames), "size": "640x480", "clip": clip}
    if not args.model.is_file():
        notes.append(f"end-to-end maskd rows skipped: {rel(args.model)} not found")
        return result
    # maskd's own choice: YuNet when its model is around, else BlazeFace (detector kind auto).
    main_det = "yunet" if (find_yunet_model() or YUNET_SHARED.is_file()) else "blazeface"
    label = {"yunet": "YuNet", "blazeface": "BlazeFace"}[main_det]
    variants = [(f"maskd ({label} 320x240, int8, cache)", main_det, None),
                ("maskd, no classification cache", main_det, 1),
                ("maskd with the seeds' detector (ResNet-10 SSD)", "opencv-ssd", None)]
    for name, det_name, recheck in variants:
        cfg = Config()
        cfg.detector = detector_config(det_name, cfg.detector.input_width, cfg.detector.input_height)
        if recheck is not None:
            cfg.tracking.recheck_every = recheck  # re-classify every face on every frame
        try:
            det = make_detector(cfg.detector)
        except Exception as err:  # noqa: BLE001
            notes.append(f"e2e {name} skipped: {err}")
            continue
        clf = Classifier.open(args.model, threads=cfg.classifier.threads)
        pipe = Pipeline(cfg, det, clf)
        seconds, st = _run_clip(lambda i, f, p=pipe: p.process(Frame(f, i + 1, (i + 1) / 15.0)),
                                frames, vars(pipe.counts))  # live PipelineCounts fields
        n = len(frames)
        rows.append({"name": name, "fps": n / seconds, "ms_per_frame": 1000 * seconds / n,
                     "faces": st["faces"], "classified": st["classified"], "cached": st["cached"],
                     "small_faces": st["small_faces"]})
    seed = _seed_row(keras_model, frames, notes) if keras_model is not None else None
    if seed is not None:
        rows.insert(0, seed)
        for r in rows:
            r["speedup_vs_seed"] = r["fps"] / seed["fps"]
    return result


def _seed_row(keras_model: tuple[Any, str], frames: list[np.ndarray], notes: list[str]
              ) -> dict[str, Any] | None:
    if not SSD_PB.is_file():
        notes.append(f"seed-style pipeline skipped: {SSD_PB} not found")
        return None
    from tools.seedstyle import SeedPipeline

    seed = SeedPipeline(keras_model[0], SSD_PB)
    seconds, st = _run_clip(lambda i, f: seed.process(f), frames, seed.stats)
    n = len(frames)
    return {"name": "seed-style (ResNet-10 SSD + Keras predict per face)", "fps": n / seconds,
            "ms_per_frame": 1000 * seconds / n, "faces": st["faces"], "classified": st["classified"]}
