"""Box and image geometry shared by every stage: pure functions on tuples and numpy arrays.

Boxes are (x0, y0, x1, y1) in pixels of the original frame (maskd.types.Box). One home for
each operation, so the detector, the classifier's crop and the tracker agree on what a box is.
Box arrays (N, 4) for the detectors' NMS and tiling, and the one ``letterbox`` that both the
detectors (network input) and the previews (screen) fit images with, live here too.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from maskd.types import Box

SAME_SIZE_RATIO = 2.0  # a lost face that comes back is at most this much larger or smaller


def shorter_side(box: Box) -> float:
    """A face's size as every size rule reads it: the shorter side of its box, in pixels."""
    return min(box[2] - box[0], box[3] - box[1])


def shorter_sides(boxes: np.ndarray) -> np.ndarray:
    """``shorter_side`` of every box of an (..., 4) array (NaN boxes give NaN)."""
    b = np.asarray(boxes, np.float64)
    return np.minimum(b[..., 2] - b[..., 0], b[..., 3] - b[..., 1])


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


def rescale(box: Box, sx: float, sy: float) -> Box:
    """``box`` in a frame scaled by ``sx`` across and ``sy`` down: the same place in the
    picture after the camera's frame size changed (maskd.pipeline)."""
    x0, y0, x1, y1 = box
    return (x0 * sx, y0 * sy, x1 * sx, y1 * sy)


def same_place(a: Box, b: Box, tolerance: float) -> bool:
    """Every edge of ``b`` within ``tolerance`` x the larger side of ``a`` of where it is in
    ``a``: the box has not moved (a picture) beyond detector jitter."""
    tol = tolerance * max(a[2] - a[0], a[3] - a[1])
    return all(abs(p - q) <= tol for p, q in zip(a, b, strict=True))


def same_size(a: Box, b: Box, ratio: float = SAME_SIZE_RATIO) -> bool:
    """The longer sides of two boxes differ by at most ``ratio`` (either way)."""
    sa, sb = max(a[2] - a[0], a[3] - a[1]), max(b[2] - b[0], b[3] - b[1])
    return max(sa, sb) <= ratio * max(min(sa, sb), 1e-9)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix (N, M) between boxes ``a`` (N, 4) and ``b`` (M, 4) given as x0, y0, x1, y1."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        if order.size == 1:
            break
        ious = box_iou(boxes[i], boxes[order[1:]])[0]
        order = order[1:][ious <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float,
                 points: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MediaPipe's weighted NMS: each kept box is the score-weighted mean of its cluster.

    Averaging the overlapping anchors' boxes (and keypoints) gives steadier boxes than plain NMS,
    which matters for a tracker. Returns (boxes, scores, points) of the clusters, best first.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64)
    order = np.argsort(-scores, kind="stable")
    out_b, out_s, out_p = [], [], []
    while order.size:
        i = int(order[0])
        ious = box_iou(boxes[i], boxes[order])[0]
        cluster = order[ious > iou_threshold]
        cluster = cluster if cluster.size else order[:1]
        w = scores[cluster][:, None]
        out_b.append((boxes[cluster] * w).sum(0) / w.sum())
        out_s.append(scores[i])
        if points is not None:
            out_p.append((points[cluster] * w[:, :, None]).sum(0) / w.sum())
        order = order[ious <= iou_threshold]
    pts = np.asarray(out_p) if points is not None else None
    return np.asarray(out_b).reshape(-1, 4), np.asarray(out_s), pts


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes (N, 4) cut to a width x height image, so no box reaches outside the frame."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
    return b


def tile_grid(width: int, height: int, tiles: int, overlap: float = 0.25
              ) -> list[tuple[int, int, int, int]]:
    """``tiles`` x ``tiles`` overlapping windows (x0, y0, x1, y1) covering the image.

    Each tile spans 1/tiles of the side plus ``overlap`` of that, so a face cut by one tile's
    edge lies whole inside its neighbour when it is smaller than the overlap.
    """
    def spans(length: int) -> list[tuple[int, int]]:
        if tiles == 1:
            return [(0, length)]
        size = min(length, int(np.ceil(length / tiles * (1 + overlap))))
        starts = np.linspace(0, length - size, tiles).round().astype(int)
        return [(int(s), int(s) + size) for s in starts]

    return [(x0, y0, x1, y1) for y0, y1 in spans(height) for x0, x1 in spans(width)]


@dataclass(frozen=True)
class Letterbox:
    """How an image was fitted into a bigger canvas: scaled by ``scale``, placed at (x0, y0).

    The detectors place it top-left (padding right/bottom, as Coral's examples do), so mapping
    network boxes back is a single division; the previews centre it on the screen.
    """

    scale: float
    width: int  # the scaled image inside the canvas
    height: int
    x0: int = 0  # where the scaled image starts in the canvas
    y0: int = 0

    def _offset(self, a: np.ndarray) -> np.ndarray:
        """(x0, y0) repeated to match the last axis: 4 for boxes, 2 for points."""
        return np.tile(np.asarray([self.x0, self.y0], np.float64), a.shape[-1] // 2)

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Canvas boxes (..., 4) or points (..., 2) -> pixels of the original image."""
        a = np.asarray(boxes, np.float64)
        return (a - self._offset(a)) / self.scale

    def to_canvas(self, boxes: np.ndarray) -> np.ndarray:
        """Original boxes (..., 4) or points (..., 2) -> pixels of the canvas."""
        a = np.asarray(boxes, np.float64)
        return a * self.scale + self._offset(a)


def letterbox(image: np.ndarray, width: int, height: int, centre: bool = False
              ) -> tuple[np.ndarray, Letterbox]:
    """Fit ``image`` into ``width`` x ``height`` keeping its aspect ratio, padded with black.

    Top-left by default (detector input); ``centre`` for a screen. An image that already has
    the size is returned as it is, not copied. Padding uses OpenCV, not numpy: it releases the
    GIL, so a preview thread does not hold up the loop meanwhile.
    """
    h, w = image.shape[:2]
    scale = min(width / w, height / h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    x0, y0 = ((width - nw) // 2, (height - nh) // 2) if centre else (0, 0)
    lb = Letterbox(scale, nw, nh, x0, y0)
    if (w, h) == (width, height):
        return image, lb
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (nw, nh), interpolation=interp) if (nw, nh) != (w, h) else image
    out = cv2.copyMakeBorder(resized, y0, height - nh - y0, x0, width - nw - x0,
                             cv2.BORDER_CONSTANT, value=(0, 0, 0, 0))
    return out, lb
