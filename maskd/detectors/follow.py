"""Find a tracked face again by its own pixels in a frame where the detector lost it.

YuNet drops a blurred, turned or fast face for a frame or a few, often just before the person
leaves the view; the track then waits without evidence and may never gather the votes and span
an alarm needs (docs/eval_video.md, round thirty-one). The face's grey patch from its last
detection, scaled to PATCH_PX across, is looked for by normalised cross-correlation in a window
of one box size around where it was. Pure functions on numpy arrays; maskd.pipeline decides
when to use them (``tracking.follow_frames``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from maskd.types import Box

PATCH_PX = 32  # the patch's width after scaling: cheap, and blur matters less
MIN_CORRELATION = 0.7  # fixed before round thirty-one was run, not swept
MIN_CONTRAST = 2.0  # grey levels (standard deviation): a flat patch matches anything


@dataclass(frozen=True)
class FacePatch:
    """What a detection of a face leaves to find it by: its grey pixels, scaled by ``scale``
    (PATCH_PX / box width), and the box's size in frame pixels."""

    pixels: np.ndarray  # uint8, (round(h * scale), PATCH_PX)
    scale: float
    width: float
    height: float


def _grey(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)


def face_patch(image_bgr: np.ndarray, box: Box) -> FacePatch | None:
    """The patch to find ``box``'s face by later; None where the box has too few pixels in the
    image or no contrast (nothing to tell it from the background by)."""
    h, w = image_bgr.shape[:2]
    x0, y0, x1, y1 = (int(round(v)) for v in box)
    bw, bh = x1 - x0, y1 - y0
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if bw < 4 or bh < 4 or cx0 > x0 or cy0 > y0 or cx1 < x1 or cy1 < y1:
        return None  # part of the face is outside the frame: its patch would not be its face
    scale = PATCH_PX / bw
    size = (PATCH_PX, max(1, int(round(bh * scale))))
    pixels = cv2.resize(_grey(image_bgr[y0:y1, x0:x1]), size, interpolation=cv2.INTER_AREA)
    if float(pixels.std()) < MIN_CONTRAST:
        return None
    return FacePatch(pixels, scale, float(bw), float(bh))


def find_again(image_bgr: np.ndarray, patch: FacePatch, near: Box,
               min_correlation: float = MIN_CORRELATION) -> Box | None:
    """Where ``patch``'s face is in ``image_bgr``, looked for within one box size of ``near``
    on every side; None when nothing there correlates at least ``min_correlation``. The box
    returned has the patch's size, wholly inside the image."""
    h, w = image_bgr.shape[:2]
    cx, cy = (near[0] + near[2]) / 2, (near[1] + near[3]) / 2
    wx0 = max(int(round(cx - 1.5 * patch.width)), 0)
    wy0 = max(int(round(cy - 1.5 * patch.height)), 0)
    wx1 = min(int(round(cx + 1.5 * patch.width)), w)
    wy1 = min(int(round(cy + 1.5 * patch.height)), h)
    if wx1 - wx0 < patch.width or wy1 - wy0 < patch.height:
        return None
    size = (int(round((wx1 - wx0) * patch.scale)), int(round((wy1 - wy0) * patch.scale)))
    ph, pw = patch.pixels.shape
    if size[0] < pw or size[1] < ph:
        return None
    window = cv2.resize(_grey(image_bgr[wy0:wy1, wx0:wx1]), size, interpolation=cv2.INTER_AREA)
    result = cv2.matchTemplate(window, patch.pixels, cv2.TM_CCOEFF_NORMED)
    _, best, _, (bx, by) = cv2.minMaxLoc(result)
    if not np.isfinite(best) or best < min_correlation:
        return None
    x0 = min(max(wx0 + bx / patch.scale, 0.0), w - patch.width)
    y0 = min(max(wy0 + by / patch.scale, 0.0), h - patch.height)
    return (x0, y0, x0 + patch.width, y0 + patch.height)
