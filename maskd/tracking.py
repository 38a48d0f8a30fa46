"""Follow faces across frames and smooth each one's no-mask score.

Per-frame classifier output flickers (motion blur, a hand in front of the face, a detector
box that jitters); alarms must not. Each face becomes a track by greedy IoU matching; its
no-mask score is the median of its last N scores, and it only counts as *violating* after
``min_frames`` consecutive frames at or above ``start_threshold``; it stops only when the
smoothed score falls below the lower ``release_threshold`` (hysteresis). Pure and
deterministic: no clocks, no randomness, so it is tested on scripted detections.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from statistics import median

from maskd.config import TrackingConfig
from maskd.types import Box, Verdict


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0 when either is empty."""
    ix = min(a[2], b[2]) - max(a[0], b[0])
    iy = min(a[3], b[3]) - max(a[1], b[1])
    if ix <= 0 or iy <= 0:
        return 0.0
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@dataclass
class Track:
    """One face followed over time."""

    track_id: int
    box: Box
    first_seen: float
    last_seen: float  # timestamp of the last frame it was matched in
    last_seq: int
    window: int
    hits: int = 1
    missed: int = 0  # consecutive frames without a match
    scores: deque[float] = field(default_factory=deque)
    smoothed: float | None = None  # median of the last `window` scores; None until judged
    above: int = 0  # consecutive judged frames with smoothed >= start_threshold
    violating: bool = False

    def __post_init__(self) -> None:
        self.scores = deque(self.scores, maxlen=self.window)

    @property
    def seen_now(self) -> bool:
        """Matched in the latest frame."""
        return self.missed == 0


class Tracker:
    """Greedy IoU tracker with per-track score smoothing and hysteresis."""

    def __init__(self, cfg: TrackingConfig) -> None:
        self.cfg = cfg
        self.tracks: list[Track] = []
        self._next_id = 1

    def match(self, boxes: list[Box], seq: int, timestamp: float) -> list[Track]:
        """Assign each box to a track (new ones for unmatched boxes); age and drop the rest.

        Returns the track of each box, in the order of ``boxes``. Scores are added
        separately with :meth:`record` so the caller can decide what to classify.
        """
        pairs = sorted(
            (
                (iou(t.box, b), ti, bi)
                for ti, t in enumerate(self.tracks)
                for bi, b in enumerate(boxes)
            ),
            key=lambda p: (-p[0], p[1], p[2]),
        )
        assigned: list[Track | None] = [None] * len(boxes)
        used: set[int] = set()
        for overlap, ti, bi in pairs:
            if overlap < self.cfg.iou_threshold or overlap <= 0.0:
                break
            if ti in used or assigned[bi] is not None:
                continue
            used.add(ti)
            t = self.tracks[ti]
            t.box, t.last_seen, t.last_seq = boxes[bi], timestamp, seq
            t.hits += 1
            t.missed = 0
            assigned[bi] = t
        kept: list[Track] = []
        for ti, t in enumerate(self.tracks):
            if ti not in used:
                t.missed += 1
                if t.missed > self.cfg.max_missed_frames:
                    continue
            kept.append(t)
        for bi, b in enumerate(boxes):
            if assigned[bi] is None:
                t = Track(self._next_id, b, timestamp, timestamp, seq, self.cfg.window)
                self._next_id += 1
                kept.append(t)
                assigned[bi] = t
        self.tracks = kept
        return [t for t in assigned if t is not None]

    def record(self, track: Track, no_mask: float | None) -> None:
        """Add this frame's no-mask score (None: face too small to judge) and apply hysteresis."""
        if no_mask is None:
            return
        track.scores.append(float(no_mask))
        track.smoothed = float(median(track.scores))
        cfg = self.cfg
        if track.violating:
            if track.smoothed < cfg.release_threshold:
                track.violating = False
                track.above = 0
        elif track.smoothed >= cfg.start_threshold:
            track.above += 1
            if track.above >= cfg.min_frames:
                track.violating = True
        else:
            track.above = 0

    def update(self, verdicts: list[Verdict], seq: int, timestamp: float) -> list[Track]:
        """Match and record a whole frame of verdicts at once; returns each verdict's track."""
        tracks = self.match([v.face.box for v in verdicts], seq, timestamp)
        for t, v in zip(tracks, verdicts, strict=True):
            self.record(t, v.no_mask)
        return tracks
