"""Motion gating: skip face detection while nothing moves in front of an empty door.

The way Frigate's motion detector works, made small: each frame is shrunk to a few dozen rows
of grey (``prepare``), compared with a running average of the previous frames (the background,
``cv2.accumulateWeighted``), and the pixels that differ by more than ``threshold`` grey levels
(less in a dim scene: ``scaled_threshold``) are counted (``moving_share``), where faces would
count (``watched_mask``: the zones). A frame moves when that share reaches ``min_area``.

``MotionGate.should_detect`` says whether a frame needs the face detector: always while
something moves or a track is alive (someone is there, perhaps standing still; the pipeline
counts an open violation as one), and otherwise
only every ``idle_every``-th frame, so a face that appears without motion (lights, a camera
that just reopened, a person who stood still long enough to become background) is still found
within ``idle_every`` frames. The first frame always runs the detector.

Pure numpy/cv2, no other maskd module: the pipeline owns the gate and counts what it skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

Polygon = Sequence[tuple[float, float]]  # corners as shares of the frame's width and height

MAX_ASPECT = 4  # prepared frames are at most this many times wider than tall
# The threshold is for a lit scene: in a dim one every difference is smaller (a person walking
# into a hall of mean grey 36 changed the shrunken grey by under 25 levels, and was found only
# at the idle frame). Below BRIGHT_GREY of mean background it shrinks in proportion, down to
# MIN_SCALE of itself (shrinking and blurring average a dim sensor's noise away).
BRIGHT_GREY = 100.0
MIN_SCALE = 0.25


def prepare(image_bgr: np.ndarray, height: int) -> np.ndarray:
    """BGR frame -> float32 grey of at most ``height`` rows (aspect kept up to MAX_ASPECT),
    lightly blurred.

    Never enlarged and never wider than MAX_ASPECT x height: a 20000x2 frame scaled to 90
    rows would be 900000 columns (hundreds of MB of float32). Area averaging when shrinking
    already removes most sensor noise; the 3x3 blur takes the rest.
    """
    h, w = image_bgr.shape[:2]
    height = min(height, h)
    width = min(max(1, round(w * height / h)), MAX_ASPECT * height)
    small = cv2.resize(image_bgr, (width, height), interpolation=cv2.INTER_AREA)
    grey = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small
    return cv2.GaussianBlur(grey, (3, 3), 0).astype(np.float32)


def moving_share(grey: np.ndarray, background: np.ndarray, threshold: float,
                 watched: np.ndarray | None = None) -> float:
    """Share (0..1) of pixels whose grey level differs from the background by more than
    ``threshold``; with ``watched`` (a bool mask), of the watched pixels only."""
    moved = np.abs(grey - background) > threshold
    if watched is None:
        return float(np.count_nonzero(moved)) / grey.size
    return float(np.count_nonzero(moved & watched)) / max(1, int(np.count_nonzero(watched)))


def watched_mask(shape: tuple[int, int], include: Sequence[Polygon] | None,
                 ignore: Sequence[Polygon]) -> np.ndarray | None:
    """Where motion counts in a prepared frame of ``shape``: inside an include zone (all of it
    without one) and outside every ignore zone, as faces count (maskd.zones); None for all.
    A screen in an ignore zone held the detector on in front of an empty door."""
    if include is None and not ignore:
        return None
    h, w = shape

    def fill(polygons: Sequence[Polygon]) -> np.ndarray:
        canvas = np.zeros((h, w), np.uint8)
        for p in polygons:
            cv2.fillPoly(canvas, [np.array([(x * w, y * h) for x, y in p], np.int32)], 1)
        return canvas.astype(bool)

    watched = fill(include) if include is not None else np.ones((h, w), bool)
    return watched & ~fill(ignore) if ignore else watched


def scaled_threshold(threshold: float, background: np.ndarray) -> float:
    """``threshold`` for a scene as bright as ``background`` (see BRIGHT_GREY)."""
    return threshold * min(1.0, max(MIN_SCALE, float(background.mean()) / BRIGHT_GREY))


def update_background(background: np.ndarray, grey: np.ndarray, alpha: float) -> None:
    """Running average in place: background = (1 - alpha) * background + alpha * grey."""
    cv2.accumulateWeighted(grey, background, alpha)


@dataclass
class MotionCounts:
    """What the gate saw since start."""

    frames: int = 0  # frames it was asked about
    moving: int = 0  # frames with motion
    skipped: int = 0  # frames whose detection it skipped


class MotionGate:
    """Decides per frame whether the face detector must run (see the module docstring)."""

    def __init__(self, threshold: float = 25.0, min_area: float = 0.001, height: int = 90,
                 alpha: float = 0.05, idle_every: int = 15,
                 include: Sequence[Polygon] | None = None, ignore: Sequence[Polygon] = ()) -> None:
        self._zones = (include, ignore)
        self._watched: tuple[tuple[int, int], np.ndarray | None] | None = None  # per shape
        self.threshold = float(threshold)
        self.min_area = float(min_area)
        self.height = int(height)
        self.alpha = float(alpha)
        self.idle_every = max(1, int(idle_every))
        self.counts = MotionCounts()
        self.share = 0.0  # moving share of the last frame
        self._background: np.ndarray | None = None
        self._since_detect = 0

    def moving(self, image_bgr: np.ndarray) -> bool:
        """Whether this frame moves against the background; learns the frame into it."""
        grey = prepare(image_bgr, self.height)
        bg = self._background
        if bg is None or bg.shape != grey.shape:
            self._background = grey.copy()
            self.share = 1.0  # nothing to compare with: treat as motion
            return True
        if self._watched is None or self._watched[0] != grey.shape:
            self._watched = (grey.shape, watched_mask(grey.shape, *self._zones))
        self.share = moving_share(grey, bg, scaled_threshold(self.threshold, bg),
                                  self._watched[1])
        update_background(bg, grey, self.alpha)
        return self.share >= self.min_area

    def should_detect(self, image_bgr: np.ndarray, tracking: bool) -> bool:
        """True when the detector must run on this frame: motion, a live track, or the idle
        period is over. Counts the frames it skips."""
        c = self.counts
        c.frames += 1
        moving = self.moving(image_bgr)
        c.moving += moving
        self._since_detect += 1
        if moving or tracking or self._since_detect >= self.idle_every:
            self._since_detect = 0
            return True
        c.skipped += 1
        return False
