"""A lower score cut for big faces only: someone close to the camera is the person at the door.

Blurred crowd faces far away are what a lower cut brings in everywhere (docs/eval_video.md, round
one); a face that fills much of the frame and is scored just under the cut is mostly a real face
seen badly (blown up, turned, half lit). The wrapped detector runs at the lower cut and
``keep_by_size`` drops what is both small and under the normal cut.

"Big" is a share of the frame, not a pixel count: ``big_px`` was chosen on 640x480 frames, so a
camera giving 1280x960 needs twice the pixels for the same closeness (``scaled_big_px``).
Without that, a higher-resolution camera would let far, small crowd faces in at the lower cut.
"""

from __future__ import annotations

import numpy as np

from maskd.geometry import shorter_side
from maskd.types import Face, FaceDetector

REFERENCE_SIDE = 480  # the shorter frame side big_face_px is given for (640x480 clips)


def scaled_big_px(big_px: float, image_shape: tuple[int, ...]) -> float:
    """``big_px`` (given for a 480-line frame) for a frame of ``image_shape`` (h, w, ...): scaled
    with the frame's shorter side."""
    return big_px * min(image_shape[0], image_shape[1]) / REFERENCE_SIDE


def keep_by_size(faces: list[Face], cut: float, big_px: float) -> list[Face]:
    """Faces scored at or above ``cut``, and lower-scored ones whose box is at least ``big_px``
    on its shorter side (image pixels)."""
    return [f for f in faces if f.score >= cut or shorter_side(f.box) >= big_px]


class BigFaceCut:
    """Wraps a detector built with the big-face cut; keeps its small faces only above ``cut``."""

    def __init__(self, inner: FaceDetector, cut: float, big_px: float, big_score: float) -> None:
        self.inner, self.cut, self.big_px, self.big_score = inner, cut, big_px, big_score
        self.name = inner.name

    def describe(self) -> str:
        return (f"{self.inner.describe()}; faces >= {self.big_px:g} px (in a {REFERENCE_SIDE}-line "
                f"frame, scaled with the frame) kept from score {self.big_score:g}, smaller ones "
                f"from {self.cut:g}")

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        return keep_by_size(self.inner.detect(image_bgr), self.cut,
                            scaled_big_px(self.big_px, image_bgr.shape))
