"""Box and image geometry shared by every stage: pure functions on tuples and numpy arrays.

Boxes are (x0, y0, x1, y1) in pixels of the original frame (maskd.types.Box). One home for
each operation, so the detector, the classifier's crop and the tracker agree on what a box is.
"""

from __future__ import annotations

import cv2
import numpy as np

from maskd.types import Box

SAME_SIZE_RATIO = 2.0  # a lost face that comes back is at most this much larger or smaller


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 when either is empty."""
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def crop_face(image: np.ndarray, box: Box, margin: float) -> np.ndarray:
    """Square crop centred on ``box``, side = longer box side * (1 + 2 * margin).

    Parts outside the image are filled by repeating the edge pixels (no black bars the
    classifier never saw in training). Same channel order and dtype as ``image``; at least
    1x1 even for a degenerate box.
    """
    h, w = image.shape[:2]
    x0, y0, x1, y1 = box
    side = max(1, int(round(max(x1 - x0, y1 - y0) * (1.0 + 2.0 * margin))))
    left = int(round((x0 + x1) / 2 - side / 2))
    top = int(round((y0 + y1) / 2 - side / 2))
    cx0, cy0 = min(max(left, 0), w), min(max(top, 0), h)
    cx1, cy1 = min(max(left + side, 0), w), min(max(top + side, 0), h)
    if cx1 <= cx0 or cy1 <= cy0:  # entirely outside: nothing to repeat
        return np.zeros((side, side) + image.shape[2:], dtype=image.dtype)
    inner = image[cy0:cy1, cx0:cx1]
    pad = (cy0 - top, top + side - cy1, cx0 - left, left + side - cx1)
    if any(pad):
        inner = cv2.copyMakeBorder(inner, *pad, cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(inner)


def near(a: Box, b: Box) -> bool:
    """Two boxes are 'the same place' when their centres are within the larger box side."""
    ca = ((a[0] + a[2]) / 2, (a[1] + a[3]) / 2)
    cb = ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2)
    side = max(a[2] - a[0], a[3] - a[1], b[2] - b[0], b[3] - b[1])
    return (ca[0] - cb[0]) ** 2 + (ca[1] - cb[1]) ** 2 <= side**2


def same_size(a: Box, b: Box, ratio: float = SAME_SIZE_RATIO) -> bool:
    """The longer sides of two boxes differ by at most ``ratio`` (either way)."""
    sa, sb = max(a[2] - a[0], a[3] - a[1]), max(b[2] - b[0], b[3] - b[1])
    return max(sa, sb) <= ratio * max(min(sa, sb), 1e-9)
