"""``frame``: each face detector per frame, plain, 2x upscaled and 2x2 tiled."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tools.benchlib.common import SHARED, measure
from tools.benchlib.inputs import clip_or_note

BENCH_DETECTORS = ("yunet", "blazeface", "opencv-ssd")  # by name; a TFLite SSD by its path
YUNET_SHARED = SHARED / "models" / "face_detection_yunet_2026may.onnx"
SSD_PB = SHARED / "models" / "opencv_face_detector_uint8.pb"


def detector_config(name: str, w: int, h: int, upscale: float = 1.0, tiles: int = 1) -> Any:
    """DetectorConfig for a bench detector name (yunet, blazeface, opencv-ssd, or a .tflite SSD)."""
    from maskd.config import DetectorConfig
    from maskd.detectors import find_yunet_model

    kw: dict[str, Any] = {"input_width": w, "input_height": h, "upscale": upscale, "tiles": tiles}
    if name == "yunet":
        model = find_yunet_model() or (YUNET_SHARED if YUNET_SHARED.is_file() else None)
        return DetectorConfig(kind="yunet", model=model, **kw)
    if name == "blazeface":
        return DetectorConfig(kind="blazeface", **kw)
    if name == "opencv-ssd":
        # The seeds' detector; it always resizes to its own 300x300 blob.
        return DetectorConfig(kind="ssd", model=SSD_PB, score_threshold=0.5, **kw)
    return DetectorConfig(kind="ssd", model=Path(name), **kw)


def bench_frame(args: argparse.Namespace, notes: list[str]) -> dict[str, Any]:
    """Each detector at each frame size, plain / upscaled / tiled, on a real scene frame."""
    from maskd.detectors import make_detector

    sizes = [(320, 240)] if args.quick else [(320, 240), (640, 480)]
    modes = [("plain", 1.0, 1), ("upscale x2", 2.0, 1), ("tiles 2x2", 1.0, 2)]
    rows: list[dict[str, Any]] = []
    frames = {}
    for w, h in sizes:
        got = clip_or_note((w, h), 1, notes)
        if got is None:
            return {"rows": rows}
        frames[(w, h)] = got[0][0]
    for name in args.detectors:
        for w, h in sizes:
            frame = frames[(w, h)]
            for mode, up, tiles in modes:
                try:
                    det = make_detector(detector_config(name, w, h, up, tiles))
                except Exception as err:  # noqa: BLE001 - a missing model is a note, not a crash
                    notes.append(f"detector {name} {w}x{h} {mode} skipped: {err}")
                    continue
                faces = det.detect(frame)
                t = measure(lambda d=det, f=frame: d.detect(f), max(1, args.warmup // 2), args.frame_repeats)
                rows.append({"detector": name, "size": f"{w}x{h}", "mode": mode, **t,
                             "fps": 1000.0 / t["median_ms"], "faces": len(faces)})
    return {"rows": rows}
