"""Follow faces across frames, weigh the evidence on each one, and say who looks like whom.

Per-frame classifier output flickers (motion blur, a hand in front of the face, a detector
box that jitters); alarms must not. Each face becomes a track by greedy IoU matching (with
``predict_motion``, against where the track's smoothed velocity puts its box now, so one frame
the detector misses does not split someone walking past into two tracks). Only a
*fresh* classification is a vote: a score the pipeline reused from its cache saves CPU but
adds no evidence. The track's no-mask score is the median of its last ``window`` votes, and
it only counts as *violating* after ``min_votes`` votes in a row with that median at or above
``start_threshold``, the first and last of them at least ``min_span_s`` apart (one bad run of
frames is not enough; ``strong_span_s`` when the median is at least ``strong_threshold``);
it stops only when the median falls below the lower ``release_threshold`` (hysteresis).

A track also carries an appearance descriptor (``appearance``: colour layout of its face
crops, joined by the classifier's pooled features when the model gives them), so the violation
lifecycle can tell a person who was briefly lost from the next person
standing at the same spot. Pure and deterministic: no clocks, no randomness, so it is tested on
scripted detections.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from statistics import median

import cv2
import numpy as np

from maskd.config import TrackingConfig
from maskd.geometry import iou, rescale, same_place
from maskd.types import Box

# Appearance descriptor: hue x saturation x value histograms of three horizontal bands of the crop
# (hair/forehead, eyes, mouth/chin), so two people with similar colours but a different layout
# still differ. Hellinger-normalised: the dot product of two descriptors is their
# Bhattacharyya coefficient, 1 for identical colour layouts.
APPEARANCE_SIZE = 48
APPEARANCE_BANDS = 3
APPEARANCE_BINS = (8, 3, 3)  # hue, saturation, value
APPEARANCE_MOMENTUM = 0.7  # running mean over fresh crops: weight of what the track had
VELOCITY_SMOOTHING = 0.7  # weight of the velocity so far against the latest frame's
MAX_COAST_S = 2.0  # a lost face is expected to keep moving for at most this long
# Frame times are float epoch seconds (steps of about 0.24 us at today's 1.8e9 s), so a span of
# exactly N frame intervals can come out a hair short: 10 frames at 15 fps gave 0.5999998 s for
# about half of the start times and the rule's 0.6 s was missed. Far below any frame interval.
TIME_EPS = 1e-3


def at_least(span_s: float, limit_s: float) -> bool:
    """``span_s >= limit_s`` for time spans, robust to the rounding of epoch timestamps."""
    return span_s >= limit_s - TIME_EPS


def coast(box: Box, velocity: tuple[float, float], dt: float) -> Box:
    """``box`` moved on by ``velocity`` (box centre, pixels per second) for ``dt`` seconds, at
    most MAX_COAST_S: where a face that kept moving should be now."""
    dt = min(max(dt, 0.0), MAX_COAST_S)
    dx, dy = velocity[0] * dt, velocity[1] * dt
    x0, y0, x1, y1 = box
    return (x0 + dx, y0 + dy, x1 + dx, y1 + dy)


def smooth_velocity(velocity: tuple[float, float], old: Box, new: Box,
                    dt: float) -> tuple[float, float]:
    """The box centre's velocity after moving from ``old`` to ``new`` in ``dt`` seconds,
    exponentially smoothed (VELOCITY_SMOOTHING) against detector jitter."""
    if dt <= 0:
        return velocity
    vx = ((new[0] + new[2]) - (old[0] + old[2])) / 2 / dt
    vy = ((new[1] + new[3]) - (old[1] + old[3])) / 2 / dt
    a = VELOCITY_SMOOTHING
    return (a * velocity[0] + (1 - a) * vx, a * velocity[1] + (1 - a) * vy)


@dataclass
class Track:
    """One face followed over time."""

    track_id: int
    box: Box
    last_seen: float  # timestamp of the last frame it was matched in
    last_seq: int
    window: int
    missed: int = 0  # consecutive frames without a match
    scores: deque[float] = field(default_factory=deque)  # the last `window` votes
    smoothed: float | None = None  # median of the last `window` votes; None until judged
    above: int = 0  # consecutive votes with smoothed >= start_threshold
    above_since: float | None = None  # time of the first of those votes
    votes: int = 0  # fresh classifications so far
    violating: bool = False
    appearance: np.ndarray | None = field(default=None, repr=False)  # see appearance()
    anchor: Box = (0.0, 0.0, 0.0, 0.0)  # where the box first was (_new_track sets it)
    still_since: float = 0.0  # when it was there
    moved: bool = False  # its box has moved beyond static_tolerance at least once
    static: bool = False  # still for static_after_s: a picture, not a person
    reported_static: bool = False
    velocity: tuple[float, float] = (0.0, 0.0)  # box centre, pixels per second (smoothed)
    # matched again after a miss and not yet seen in a fresh crop: the box may be the next
    # person at the same spot (Tracker.identify)
    returned: bool = False

    def __post_init__(self) -> None:
        self.scores = deque(self.scores, maxlen=self.window)

    def start_over(self) -> None:
        """Drop the evidence gathered so far (the votes' window and the violating state): what
        it was evidence of is no longer this track's (maskd.events re-attach)."""
        self.scores.clear()
        self.smoothed, self.above, self.above_since, self.violating = None, 0, None, False

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
        separately with :meth:`add_score` so the caller can decide what to classify.
        """
        predict = self.cfg.predict_motion
        expected = [coast(t.box, t.velocity, timestamp - t.last_seen) if predict else t.box
                    for t in self.tracks]
        pairs = sorted(
            (
                (iou(e, b), ti, bi)
                for ti, e in enumerate(expected)
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
            t.velocity = smooth_velocity(t.velocity, t.box, boxes[bi], timestamp - t.last_seen)
            t.box, t.last_seen, t.last_seq = boxes[bi], timestamp, seq
            t.returned = t.returned or t.missed > 0
            t.missed = 0
            self._still(t)
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
                t = self._new_track(b, timestamp, seq)
                kept.append(t)
                assigned[bi] = t
        self.tracks = kept
        return [t for t in assigned if t is not None]

    def identify(self, track: Track, crop_bgr: np.ndarray,
                 features: np.ndarray | None = None) -> Track:
        """The track this fresh crop belongs to. A track matched again after a miss was
        matched on place alone, and at a door the next person steps into the same spot: when
        the crop looks less alike than ``same_person_similarity`` (the rule re-attach uses,
        maskd.events), it is someone new and gets a new track (new id, no votes, not
        violating); the old one is dropped, so its violation ends ``gone`` by the usual rule
        instead of passing to them. Call before :meth:`observe` folds the crop in."""
        if not track.returned:
            return track
        track.returned = False
        sim = similarity(track.appearance, appearance(crop_bgr, features))
        if sim is None or sim >= self.cfg.same_person_similarity:
            return track
        new = self._new_track(track.box, track.last_seen, track.last_seq)
        self.tracks = [new if t is track else t for t in self.tracks]
        return new

    def _new_track(self, box: Box, timestamp: float, seq: int) -> Track:
        """A track first seen now at ``box``: the next id, no votes, anchored where it is."""
        t = Track(self._next_id, box, timestamp, seq, self.cfg.window, anchor=box,
                  still_since=timestamp)
        self._next_id += 1
        return t

    def lost_sight(self) -> None:
        """No frame came for a while, shorter than a gap (a camera or loop that stalled): as
        after a miss, each track is checked at its next fresh crop (``identify``). It went on
        unchecked: the next person at the spot took over the event of the one who left (one
        event for two people), or a masked one ended it `masked`."""
        for t in self.tracks:
            t.returned = True

    def forget(self) -> None:
        """Drop every track (after a gap in the frames; maskd.pipeline); ids keep counting."""
        self.tracks = []

    def rescale(self, sx: float, sy: float) -> None:
        """The frame size changed by ``sx`` across and ``sy`` down (a camera reconfigured):
        every box and velocity follows, so a face keeps matching its track."""
        for t in self.tracks:
            t.box = rescale(t.box, sx, sy)
            t.anchor = rescale(t.anchor, sx, sy)
            t.velocity = (t.velocity[0] * sx, t.velocity[1] * sy)

    def shift(self, step: float) -> None:
        """Move every remembered time by ``step`` seconds: the wall clock stepped (maskd.clock),
        and a track's spans (its votes, how long it stood still) are of time that passed, not of
        the step."""
        for t in self.tracks:
            t.last_seen += step
            t.still_since += step
            if t.above_since is not None:
                t.above_since += step

    def _still(self, t: Track) -> None:
        """Follow whether the box has ever left where it first was (beyond static_tolerance of
        its size): a face that has not for static_after_s is a picture, for good; one that has is
        a person, for good, however still they stand afterwards."""
        after = self.cfg.static_after_s
        if after is None or t.static or t.moved:
            return
        if not same_place(t.anchor, t.box, self.cfg.static_tolerance):
            t.moved = True
        elif t.last_seen - t.still_since >= after:
            t.static = True
            t.violating = False

    def add_score(self, track: Track, no_mask: float | None, fresh: bool = True) -> None:
        """Add this frame's no-mask score and apply the evidence rule and hysteresis.

        ``None`` (face too small to judge) and a reused cached score (``fresh=False``) change
        nothing: only a fresh classification is a vote. The vote's time is the frame the track
        was last matched in.
        """
        if no_mask is None or not fresh or track.static:
            return
        track.votes += 1
        track.scores.append(float(no_mask))
        track.smoothed = float(median(track.scores))
        cfg = self.cfg
        if track.violating:
            if track.smoothed < cfg.release_threshold:
                track.violating = False
                track.above, track.above_since = 0, None
        elif track.smoothed >= cfg.start_threshold:
            if track.above == 0:
                track.above_since = track.last_seen
            track.above += 1
            since = track.last_seen if track.above_since is None else track.above_since
            span = track.last_seen - since
            strong = cfg.strong_threshold is not None and track.smoothed >= cfg.strong_threshold
            need = cfg.strong_span_s if strong else cfg.min_span_s
            if track.above >= cfg.min_votes and at_least(span, need):
                track.violating = True
        else:
            track.above, track.above_since = 0, None

    def observe(self, track: Track, crop_bgr: np.ndarray, features: np.ndarray | None = None) -> None:
        """Fold a freshly classified face crop (and the classifier's features of it) into the
        track's appearance."""
        desc = appearance(crop_bgr, features)
        if track.appearance is None or track.appearance.shape != desc.shape:
            track.appearance = desc
            return
        mixed = APPEARANCE_MOMENTUM * track.appearance + (1 - APPEARANCE_MOMENTUM) * desc
        track.appearance = mixed / max(float(np.linalg.norm(mixed)), 1e-12)


def appearance(crop_bgr: np.ndarray, features: np.ndarray | None = None) -> np.ndarray:
    """A unit-length descriptor of a face crop: its colour layout (``colour_layout``), and with
    the classifier's pooled ``features`` of the same crop, both halves unit-length and joined,
    so the dot product of two descriptors is the mean of the two similarities.

    The colour layout alone takes two people with alike hair, skin and background for one; the
    features see the face's shape as well (docs/eval_video.md, round twenty-three).
    """
    colour = colour_layout(crop_bgr)
    if features is None:
        return colour
    f = np.asarray(features, np.float32).ravel()
    norm = float(np.linalg.norm(f))
    # All-zero features say nothing: that half counts as unlike anything (never a merge).
    f = f / norm if np.isfinite(norm) and norm > 0.0 else np.zeros_like(f)
    return (np.concatenate([colour, f]) / np.sqrt(2.0)).astype(np.float32)


def colour_layout(crop_bgr: np.ndarray) -> np.ndarray:
    """A unit-length colour-layout descriptor of a face crop (see APPEARANCE_BINS).

    The crop is the classifier's crop (face box plus margin), so the descriptor follows the
    face's scale as a person walks up; hair, skin and what is around the face dominate it.
    """
    if crop_bgr.ndim != 3 or crop_bgr.shape[2] != 3 or crop_bgr.size == 0:
        raise ValueError(f"expected an (H, W, 3) BGR crop, got shape {crop_bgr.shape}")
    small = cv2.resize(np.ascontiguousarray(crop_bgr), (APPEARANCE_SIZE, APPEARANCE_SIZE),
                       interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_BGR2HSV)
    band = APPEARANCE_SIZE // APPEARANCE_BANDS
    hists = [
        cv2.calcHist([hsv[i * band:(i + 1) * band]], [0, 1, 2], None, list(APPEARANCE_BINS),
                     [0, 180, 0, 256, 0, 256]).ravel()
        for i in range(APPEARANCE_BANDS)
    ]
    h = np.sqrt(np.concatenate(hists) / max(float(sum(x.sum() for x in hists)), 1.0))
    return (h / max(float(np.linalg.norm(h)), 1e-12)).astype(np.float32)


def similarity(a: np.ndarray | None, b: np.ndarray | None) -> float | None:
    """How alike two appearance descriptors are, 1 for the same (with colour alone, their
    Bhattacharyya coefficient); None when one is unknown or they are of different kinds."""
    if a is None or b is None or a.shape != b.shape:
        return None
    return float(np.dot(a, b))
