"""Small faces: run any detector on overlapping tiles too and merge the results in original pixels."""

from __future__ import annotations

import numpy as np

from maskd.geometry import nms, tile_grid
from maskd.types import Face, FaceDetector


def inner_edge_mask(boxes: np.ndarray, tile: tuple[int, int, int, int], width: int, height: int,
                    margin: float = 2.0) -> np.ndarray:
    """True for boxes (in image pixels) that do NOT touch an edge of ``tile`` inside the image.

    A box touching an inner tile edge is probably a cut face; the neighbouring tile or the
    whole-frame pass sees it whole, so it is dropped rather than merged.
    """
    x0, y0, x1, y1 = tile
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    cut = np.zeros(len(b), bool)
    if x0 > 0:
        cut |= b[:, 0] <= x0 + margin
    if y0 > 0:
        cut |= b[:, 1] <= y0 + margin
    if x1 < width:
        cut |= b[:, 2] >= x1 - margin
    if y1 < height:
        cut |= b[:, 3] >= y1 - margin
    return ~cut


class Tiled:
    """Runs a detector on the whole frame plus ``tiles`` x ``tiles`` overlapping tiles.

    Every detector shrinks its input to the network size, which erases faces of a few pixels;
    a tile gives them tiles-times more network pixels, at the cost of 1 + tiles^2 runs. The
    whole-frame pass keeps faces bigger than a tile. Results are merged by NMS, in original pixels.
    """

    def __init__(self, inner: FaceDetector, tiles: int = 2, nms_threshold: float = 0.3,
                 overlap: float = 0.25):
        self.inner = inner
        self.tiles = tiles
        self.nms_threshold = nms_threshold
        self.overlap = overlap
        self.name = f"{inner.name}+tiles{tiles}"

    def describe(self) -> str:
        """The inner detector's description plus the tiling, for `maskd doctor`."""
        return f"{self.inner.describe()}, {self.tiles}x{self.tiles} tiles"

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        h, w = image_bgr.shape[:2]
        whole = (0, 0, w, h)
        found: list[Face] = []
        for win in [whole, *tile_grid(w, h, self.tiles, self.overlap)]:
            x0, y0, x1, y1 = win
            faces = self.inner.detect(np.ascontiguousarray(image_bgr[y0:y1, x0:x1]))
            if not faces:
                continue
            boxes = np.array([f.box for f in faces], np.float64) + [x0, y0, x0, y0]
            keep = inner_edge_mask(boxes, win, w, h) if win != whole else np.ones(len(faces), bool)
            for f, b, k in zip(faces, boxes, keep, strict=True):
                if k:
                    lm = None if f.landmarks is None else f.landmarks + np.float32([x0, y0])
                    found.append(Face(box=tuple(float(v) for v in b), score=f.score, landmarks=lm))
        if not found:
            return []
        keep_idx = nms(np.array([f.box for f in found]), np.array([f.score for f in found]),
                       self.nms_threshold)
        return [found[i] for i in keep_idx]

