"""``goals``: issue 16's two ratios against the seeds' way, measured side by side in one run.

- **per face**: ``maskd classify``'s whole per-file path (``classify_files``: decode on a worker
  thread, batched invokes, one resize, table quantisation) against the seeds' loop over the
  same files (``cv2.imread``, BGR->RGB, resize to 224, ``preprocess_input``, one Keras
  ``model.predict`` per file). Goal: >= 30x. The levers are shown one by one.
- **pipeline**: ``maskd scan``'s per-frame path (detector + ``judge_faces``, one classifier call
  per frame) against the seed-style pipeline (tools/seedstyle.py) on the same 1280x720 frames.
  Goal: >= 12x.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from tools.benchlib.common import INT8_MODEL, SHARED
from tools.benchlib.face import keras_model_for, load_keras
from tools.benchlib.frame import SSD_PB, YUNET_SHARED, detector_config
from tools.benchlib.inputs import clip_or_note

PER_FACE_GOAL = 30.0
PIPELINE_GOAL = 12.0
FILES = 569  # as in the measurement


def face_files(n: int) -> list[Path]:
    """``n`` facemask-4095 images spread evenly over both classes (sorted, every k-th)."""
    data = SHARED / "data" / "facemask-4095"
    files = sorted(p for p in data.glob("*/*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return files[:: max(1, len(files) // n)][:n]


def _timed(fn: Any) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_goals(args: argparse.Namespace, notes: list[str]) -> dict[str, Any]:
    keras_model = None if args.no_keras else load_keras(args.keras or keras_model_for(args.model), 224, notes)
    return {"per_face": _per_face(args, keras_model, notes),
            "pipeline": _pipeline(args, keras_model, notes)}


def _per_face(args: argparse.Namespace, keras_model: tuple[Any, str] | None,
              notes: list[str]) -> dict[str, Any] | None:
    from maskd.classifier import Classifier
    from maskd.commands.classify import classify_files
    from maskd.config import ClassifierConfig

    files = face_files(FILES // 4 if args.quick else FILES)
    if not files:
        notes.append(f"goals per face skipped: {SHARED / 'data' / 'facemask-4095'} absent")
        return None
    n = len(files)
    rows: list[dict[str, Any]] = []
    if keras_model is not None:
        from keras.applications.mobilenet_v2 import preprocess_input

        model = keras_model[0]
        size = int(model.input_shape[1])

        def seed_loop() -> None:
            for p in files:
                rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
                x = preprocess_input(cv2.resize(rgb, (size, size)).astype(np.float32))[None]
                model.predict(x, verbose=0)

        model.predict(np.zeros((1, size, size, 3), np.float32), verbose=0)  # warm-up (tracing)
        rows.append({"name": "seeds: imread + resize 224 + Keras predict per file",
                     "ms_per_face": 1e3 * _timed(seed_loop) / n})
    clf = Classifier.open(args.model if args.model.is_file() else INT8_MODEL,
                          threads=ClassifierConfig().threads)
    clf.predict([np.zeros((64, 64, 3), np.uint8)] * 2)  # warm-up
    full = clf.max_batch
    levers = [("maskd: decode inline, one invoke per face", 1, False),
              (f"maskd: decode inline, batched invokes (up to {full})", full, False),
              ("maskd: decode on a worker thread, one invoke per face", 1, True),
              (f"maskd classify: decode on a worker thread, batches of up to {full}", full, True)]
    for name, batch, thread in levers:
        clf.max_batch = batch
        t = _timed(lambda thread=thread: list(classify_files(clf, files, decode_thread=thread)))
        rows.append({"name": name, "ms_per_face": 1e3 * t / n})
    clf.max_batch = full
    seed = rows[0]["ms_per_face"] if keras_model is not None else None
    for r in rows:
        r["faces_per_s"] = 1e3 / r["ms_per_face"]
        r["x_vs_seed"] = seed / r["ms_per_face"] if seed else None
    return {"files": n, "input_size": clf.input_size, "rows": rows, "goal": PER_FACE_GOAL,
            "ratio": rows[-1]["x_vs_seed"]}


def _pipeline(args: argparse.Namespace, keras_model: tuple[Any, str] | None,
              notes: list[str]) -> dict[str, Any] | None:
    from maskd.classifier import Classifier
    from maskd.config import Config
    from maskd.detectors import find_yunet_model, make_detector
    from maskd.pipeline import judge_faces

    size = (1280, 720)
    got = clip_or_note(size, 30 if args.quick else 90, notes)
    if got is None:
        return None
    frames, clip = got
    rows: list[dict[str, Any]] = []
    if keras_model is not None and SSD_PB.is_file():
        from tools.seedstyle import SeedPipeline

        seed = SeedPipeline(keras_model[0], SSD_PB)
        seed.process(frames[0])
        before = seed.stats["faces"]
        t = _timed(lambda: [seed.process(f) for f in frames])
        rows.append({"name": "seed-style (ResNet-10 SSD + Keras predict per face)",
                     "fps": len(frames) / t, "faces": seed.stats["faces"] - before})
    elif keras_model is not None:
        notes.append(f"goals pipeline: seed-style row skipped, {SSD_PB} not found")
    cfg = Config()
    kind = "yunet" if (find_yunet_model() or YUNET_SHARED.is_file()) else "blazeface"
    cfg.detector = detector_config(kind, cfg.detector.input_width, cfg.detector.input_height)
    det = make_detector(cfg.detector)
    clf = Classifier.open(args.model if args.model.is_file() else INT8_MODEL, threads=cfg.classifier.threads)
    found = [0]

    def scan_frame(f: np.ndarray) -> None:
        verdicts = judge_faces(f, det.detect(f), clf, cfg.classifier)
        found[0] += len(verdicts)

    scan_frame(frames[0])
    found[0] = 0
    t = _timed(lambda: [scan_frame(f) for f in frames])
    rows.append({"name": f"maskd scan ({det.describe()}, int8, one call per frame)",
                 "fps": len(frames) / t, "faces": found[0]})
    seed_fps = rows[0]["fps"] if len(rows) > 1 else None
    for r in rows:
        r["x_vs_seed"] = r["fps"] / seed_fps if seed_fps else None
    return {"frames": len(frames), "size": f"{size[0]}x{size[1]}", "clip": clip, "rows": rows,
            "goal": PIPELINE_GOAL, "ratio": rows[-1]["x_vs_seed"]}
