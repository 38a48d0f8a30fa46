"""One camera's frame path: detect faces, crop, classify (one call per frame), track, and turn
violating tracks into events. A frame goes in, a ``FrameResult`` with its verdicts and events
comes out; nothing flows back.

``crop_face`` (maskd.geometry) is the one crop function of the project: a square around the face box with a
margin, padded where it runs off the image, so the classifier always sees a whole,
undistorted face the way it was trained.

On a Pi the classifier is the expensive stage, and a person standing at a door is in view
for hundreds of frames. ``Pipeline`` therefore keeps, per track, the last classification and
reuses it while the track is confident (score far from 0.5), settled (the score agrees with
the track's violating state, so no decision waits on it) and still (box barely moved),
re-checking every ``tracking.recheck_every`` frames. What that saves is counted in
``Pipeline.stats``. A reused score is shown, but it is never a vote (maskd.tracking): the
cache saves CPU, it adds no evidence.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from maskd import zones
from maskd.clock import FRAME_STEP_S, StepWatch, system_clock
from maskd.config import ClassifierConfig, Config
from maskd.events import Violations
from maskd.geometry import crop_face, iou, rescale, shorter_side
from maskd.lograte import RateLimitedLog, Throttle
from maskd.motion import MotionGate
from maskd.night import GreyWatch
from maskd.tracking import Track, Tracker
from maskd.types import (
    Box,
    Face,
    FaceDetector,
    Frame,
    MaskClassifier,
    Verdict,
    ViolationEvent,
    scores_and_features,
)

log = logging.getLogger(__name__)

# A cached score is reused only while |p - 0.5| >= CONFIDENT_MARGIN (p <= 0.2 or p >= 0.8) ...
CONFIDENT_MARGIN = 0.3
# ... and the box overlaps the box it was classified at by at least this much.
STILL_IOU = 0.7
# A gap (no frame: a stalled camera) is also at least this many usual frame intervals (the
# median of the last GAP_HISTORY), so an `end_after_s` shorter than a slow loop's frame interval
# does not make every frame a gap that starts all tracks afresh (then no event could ever start).
GAP_FRAMES = 3
GAP_HISTORY = 15
# Frames lost to a stall (Tracker.lost_sight) are also at least this long: a loaded Pi's loop
# takes the camera's newest frame, and its intervals jitter (0.3-0.5 s among 0.1 s ones, some
# of a second), so 3 usual intervals checked every track's identity several times a second;
# a person turning was then taken for someone new (a second event, the first ended `gone`).
STALL_MIN_S = 1.0


def judgeable(face: Face, min_face_px: int) -> bool:
    """Faces whose shorter side is below ``min_face_px`` are too small to judge reliably."""
    return shorter_side(face.box) >= min_face_px


def biggest(faces: list[Face], cap: int) -> list[Face]:
    """At most ``cap`` faces, the biggest (nearest, best judged), in detection order: the
    tracker is quadratic in faces and each costs a classification, so a frame of thousands
    must not hold the loop (and the watchdog's pings) for minutes."""
    if len(faces) <= cap:
        return faces
    keep = sorted(sorted(range(len(faces)), key=lambda i: -shorter_side(faces[i].box))[:cap])
    return [faces[i] for i in keep]


def cut_off(box: Box, width: int, height: int, edge_px: int) -> bool:
    """The face box reaches within ``edge_px`` of the frame border: part of the face is
    outside the picture (someone stepping in), and half a face looks like no mask."""
    if edge_px <= 0:
        return False
    x0, y0, x1, y1 = box
    return x0 < edge_px or y0 < edge_px or x1 > width - edge_px or y1 > height - edge_px


def classify_crops(classifier: MaskClassifier, crops_bgr: list[np.ndarray]) -> list[float]:
    """P(no_mask) per BGR crop, all in one classifier call."""
    if not crops_bgr:
        return []
    return [float(p) for p in classifier.predict(_rgb(crops_bgr))]


def embed_crops(classifier: MaskClassifier,
                crops_bgr: list[np.ndarray]) -> tuple[list[float], list[np.ndarray | None]]:
    """P(no_mask) and the classifier's pooled features per BGR crop, in the same one call;
    the features are None for a classifier without them (no ``predict_embedded``)."""
    if not crops_bgr:
        return [], []
    scores, features = scores_and_features(classifier, _rgb(crops_bgr))
    rows: list[np.ndarray | None] = [None] * len(crops_bgr) if features is None else list(features)
    return [float(p) for p in scores], rows


def _rgb(crops_bgr: list[np.ndarray]) -> list[np.ndarray]:
    return [np.ascontiguousarray(c[:, :, ::-1]) for c in crops_bgr]


def second_opinion(classifier: MaskClassifier, crops_bgr: list[np.ndarray], scores: list[float],
                   cut: float, band: float) -> list[float]:
    """Scores within ``band`` of ``cut`` averaged with the score of the mirrored crop.

    A face near the cut is the one a single view gets wrong (a hand, a turned head); its mirror
    image is a second, slightly different look at the same evidence, in one extra call.
    """
    doubtful = [i for i, p in enumerate(scores) if abs(p - cut) < band]
    if not doubtful:
        return scores
    mirrored = classify_crops(classifier, [np.ascontiguousarray(crops_bgr[i][:, ::-1])
                                           for i in doubtful])
    out = list(scores)
    for i, q in zip(doubtful, mirrored, strict=True):
        out[i] = (scores[i] + q) / 2.0
    return out


def judge_crops(classifier: MaskClassifier, crops_bgr: list[np.ndarray],
                cfg: ClassifierConfig) -> tuple[list[float], list[np.ndarray | None]]:
    """P(no_mask) per crop as every command judges a fresh crop: one classifier call, then the
    mirrored second opinion for doubtful ones when ``cfg.flip_band`` is set; with the first
    view's features (``embed_crops``)."""
    scores, features = embed_crops(classifier, crops_bgr)
    if cfg.flip_band > 0:
        scores = second_opinion(classifier, crops_bgr, scores, cfg.threshold, cfg.flip_band)
    return scores, features


def judge_faces(image: np.ndarray, faces: list[Face], classifier: MaskClassifier,
                cfg: ClassifierConfig) -> list[Verdict]:
    """Verdicts for every face of one image, no tracking (``maskd scan``): the same crop,
    ``judge_crops`` and cut as a fresh classification in ``Pipeline.process``."""
    idx = [i for i, f in enumerate(faces) if judgeable(f, cfg.min_face_px)]
    scores, _ = judge_crops(classifier, [crop_face(image, faces[i].box, cfg.margin) for i in idx], cfg)
    by_idx = dict(zip(idx, scores, strict=True))
    return [Verdict(f, by_idx.get(i), cfg.threshold) for i, f in enumerate(faces)]


@dataclass
class _Cached:
    score: float
    box: Box
    seq: int
    crop: np.ndarray  # the crop that score came from: a start on a reused score still has one


@dataclass
class PipelineCounts:
    """What the pipeline did since start (part of the loop's stats)."""

    frames: int = 0
    faces: int = 0
    small_faces: int = 0  # too small to judge
    edge_faces: int = 0  # cut off by the frame border (classifier.edge_px)
    classified: int = 0  # fresh classifier calls, one per face
    cached: int = 0  # faces that reused their track's cached score
    motion_skipped: int = 0  # frames whose detection the motion gate skipped (maskd.motion)
    zoned_faces: int = 0  # outside the include zones or inside an ignore zone (maskd.zones)
    static_faces: int = 0  # tracks found to be pictures (tracking.static_after_s)
    capped_faces: int = 0  # over detector.max_faces in their frame: not tracked or judged
    grey_frames: int = 0  # frames while the camera sent grey pictures (maskd.night)


@dataclass
class FrameResult:
    """What one frame turned into."""

    frame: Frame
    verdicts: list[Verdict]
    events: list[ViolationEvent]  # start/update/end messages this frame caused, in order
    crops: dict[int, np.ndarray]  # track id -> BGR crop classified in this frame
    timings_ms: dict[str, float] = field(default_factory=dict)  # detect, classify, track


class Pipeline:
    """detect -> crop -> classify (cached per track) -> track -> violations, one frame at a time."""

    def __init__(self, cfg: Config, detector: FaceDetector, classifier: MaskClassifier,
                 new_event_id: Callable[[], str] | None = None, live: bool = True) -> None:
        self.cfg = cfg
        # A file, folder or the demo gives every frame, in real time too (looping): none of its
        # intervals is a stall, the first included (``_after_gap``)
        self.live = live
        self.detector = detector
        self.classifier = classifier
        self.tracker = Tracker(cfg.tracking)
        self.violations = (Violations(cfg.tracking, cfg.camera) if new_event_id is None
                           else Violations(cfg.tracking, cfg.camera, new_event_id))
        self._cache: dict[int, _Cached] = {}
        self.counts = PipelineCounts()
        self.night = GreyWatch(cfg.camera)
        self._last: Frame | None = None
        self._size: tuple[int, int] | None = None  # (width, height) of the last frame
        self._steps = StepWatch(0.0)  # every step: spans are of the time since boot
        self._gap_log = Throttle()
        self._cap_log = Throttle()
        # a folder of photos of many sizes changes size on nearly every frame
        self._size_log = RateLimitedLog(log)
        self._intervals: deque[float] = deque(maxlen=GAP_HISTORY)
        m = cfg.motion
        # motion counts where faces count: a screen in an ignore zone held the detector on
        self.motion = (MotionGate(m.threshold, m.min_area, m.frame_height, m.alpha, m.idle_every,
                                  include=cfg.zones.include, ignore=cfg.zones.ignore)
                       if m.enabled else None)

    def _reuse(self, track: Track, box: Box, seq: int) -> float | None:
        """The cached score of this track when it may stand in for a fresh classification."""
        c = self._cache.get(track.track_id)
        if c is None or track.returned:
            return None  # back after a miss: a fresh crop tells whether it is the same person
        if seq - c.seq >= self.cfg.tracking.recheck_every:
            return None
        if abs(c.score - 0.5) < CONFIDENT_MARGIN or iou(c.box, box) < STILL_IOU:
            return None
        # Evidence gathered for a change of state needs fresh votes; a picture's never does (it
        # casts none: its bare face was classified afresh on nearly every frame)
        if (c.score >= 0.5) != track.violating and not track.static:
            return None
        return c.score

    def _follow_size(self, width: int, height: int) -> None:
        """Boxes are in pixels of the frame: when its size changes (a camera reconfigured) the
        remembered ones are rescaled to it, or the person in view matched no track, got a second
        event, and the open one was sent with its box normalised by the wrong size."""
        old, self._size = self._size, (width, height)
        if old is None or old == (width, height):
            return
        sx, sy = width / old[0], height / old[1]
        self._size_log(logging.INFO, "size", "%s: the frame size changed from %dx%d to %dx%d; "
                       "tracks and violations follow", self.cfg.camera, old[0], old[1], width,
                       height)
        self.tracker.rescale(sx, sy)
        self.violations.rescale(sx, sy)
        for c in self._cache.values():
            c.box = rescale(c.box, sx, sy)

    def _follow_clock(self, frame: Frame) -> None:
        """Frame times are wall-clock times, and the wall clock of a Pi steps (no real-time
        clock; NTP sets it once the network is up). Tracks and violations measure spans and
        time-outs in them, so on any step, however small, everything they remember moves with
        it: each span is then one of the time since boot (a step of 0.9 s among three votes
        0.13 s apart made them a second of evidence). Only steps of FRAME_STEP_S are logged."""
        if frame.since_boot is None:
            return  # times made up from seq / fps: they cannot step
        step = self._steps.step(frame.timestamp, frame.since_boot)
        if not step:
            return
        self.tracker.shift(step)
        self.violations.shift(step)
        if abs(step) >= FRAME_STEP_S:
            log.warning("%s: the wall clock stepped %+.1f s; track and violation times move "
                        "with it", self.cfg.camera, step)

    def _gap(self, timestamp: float, since_boot: float | None) -> float | None:
        """Seconds since the last frame (None before the first), on the clock that never steps
        where both sides have it."""
        last = self._last
        if last is None:
            return None
        if since_boot is not None and last.since_boot is not None:
            return since_boot - last.since_boot  # the wall clock may have stepped
        return timestamp - last.timestamp

    def _is_gap(self, gap: float) -> bool:
        """The one gap rule (here and while no frame comes, ``end_gone``): no frame for
        end_after_s or longer, and for GAP_FRAMES usual frame intervals."""
        usual = statistics.median(self._intervals) if self._intervals else 0.0
        return gap >= max(self.cfg.tracking.end_after_s, GAP_FRAMES * usual)

    def _after_gap(self, frame: Frame) -> None:
        """No frame for a gap (``_is_gap``: a camera that stalled or was away, a loop far
        behind): whoever is in view now cannot be told from whoever was before, and the place
        alone is no identity (maskd.events). The tracks start afresh, so an open violation
        ends `gone` at its last sighting and a new person at the same spot gets their own."""
        gap = self._gap(frame.timestamp, frame.since_boot)
        if gap is None:
            return
        # A file or folder gives every frame (looping in real time too): its first interval is
        # its rate, no gap, though slower than end_after_s (fps 0.25 lost the first track)
        is_gap = self._is_gap(gap) and (self.live and frame.since_boot is not None
                                        or bool(self._intervals))
        # Shorter than a gap, but frames were lost (GAP_FRAMES usual intervals, STALL_MIN_S):
        # whoever is at a track's spot now may have stepped in meanwhile, as after a miss
        # (Tracker.lost_sight)
        lost = bool(self._intervals) and gap >= max(
            STALL_MIN_S, GAP_FRAMES * statistics.median(self._intervals))
        self._intervals.append(gap)  # a rare stall barely moves the median
        if not self.tracker.tracks:
            return
        if is_gap:
            self._forget(gap)
        elif lost:
            self.tracker.lost_sight()

    def _forget(self, gap: float) -> None:
        if self._gap_log.due():
            log.info("%s: no frame for %.1f s (tracking.end_after_s is %g s): the faces in "
                     "view are tracked afresh", self.cfg.camera, gap,
                     self.cfg.tracking.end_after_s)
        self.tracker.forget()
        self._cache.clear()

    def process(self, frame: Frame, detect: bool = True) -> FrameResult:
        """Run one frame through every stage; ``detect=False`` skips detection (paused)."""
        ccfg = self.cfg.classifier
        counts = self.counts
        t0 = time.perf_counter()
        self.night.look(frame.image, frame.timestamp)
        counts.grey_frames += self.night.grey
        if detect and self.motion is not None:
            # An open violation whose track was dropped (missed, or detection switched off for
            # a moment) may belong to someone standing still: idling now would end it `gone`
            # and start it again once the idle frame finds them.
            tracking = bool(self.tracker.tracks) or self.violations.active > 0
            detect = self.motion.should_detect(frame.image, tracking=tracking)
            counts.motion_skipped += not detect
        faces = self.detector.detect(frame.image) if detect else []
        h, w = frame.image.shape[:2]
        zcfg = self.cfg.zones
        if faces and (zcfg.include is not None or zcfg.ignore):
            kept = [f for f in faces if zones.counts(f.box, w, h, zcfg.include, zcfg.ignore)]
            counts.zoned_faces += len(faces) - len(kept)
            faces = kept
        if len(faces) > self.cfg.detector.max_faces:
            counts.capped_faces += len(faces) - self.cfg.detector.max_faces
            if self._cap_log.due():
                log.warning("%s: %d faces in one frame; the %d biggest are tracked and judged "
                            "(detector.max_faces)", self.cfg.camera, len(faces),
                            self.cfg.detector.max_faces)
            faces = biggest(faces, self.cfg.detector.max_faces)
        t1 = time.perf_counter()
        self._follow_size(w, h)
        self._follow_clock(frame)
        self._after_gap(frame)
        tracks = self.tracker.match([f.box for f in faces], frame.seq, frame.timestamp)
        for t in tracks:
            if t.static and not t.reported_static:
                t.reported_static = True
                counts.static_faces += 1
                log.info("%s: track %d has not moved for %.0f s: treated as a picture (poster, "
                         "screen), no event", self.cfg.camera, t.track_id,
                         self.cfg.tracking.static_after_s)
        scores: list[float | None] = [None] * len(faces)
        todo: list[int] = []
        for i, (f, t) in enumerate(zip(faces, tracks, strict=True)):
            if not judgeable(f, ccfg.min_face_px):
                counts.small_faces += 1
                continue
            if cut_off(f.box, w, h, ccfg.edge_px):
                counts.edge_faces += 1
                continue
            cached = self._reuse(t, f.box, frame.seq)
            if cached is None:
                todo.append(i)
            else:
                scores[i] = cached
                counts.cached += 1
        t2 = time.perf_counter()
        crops = {tracks[i].track_id: crop_face(frame.image, faces[i].box, ccfg.margin) for i in todo}
        todo_crops = [crops[tracks[i].track_id] for i in todo]
        fresh, features = judge_crops(self.classifier, todo_crops, ccfg)
        t3 = time.perf_counter()
        for i, p, feat in zip(todo, fresh, features, strict=True):
            crop = crops.pop(tracks[i].track_id)
            tracks[i] = t = self.tracker.identify(tracks[i], crop, feat)
            crops[t.track_id] = crop
            scores[i] = p
            self._cache[t.track_id] = _Cached(p, faces[i].box, frame.seq, crop)
            self.tracker.observe(t, crop, feat)
        counts.classified += len(todo)
        voted = set(todo)
        for i, (t, s) in enumerate(zip(tracks, scores, strict=True)):
            self.tracker.add_score(t, s, fresh=i in voted)
        alive = {t.track_id for t in self.tracker.tracks}
        for tid in [k for k in self._cache if k not in alive]:
            del self._cache[tid]
        # each live track's latest classified crop (this frame's where it was classified now)
        latest = {tid: c.crop for tid, c in self._cache.items()}
        events = self.violations.update(self.tracker.tracks, frame.timestamp, frame.seq, (w, h),
                                        latest)
        t4 = time.perf_counter()
        counts.frames += 1
        counts.faces += len(faces)
        self._last = frame
        return FrameResult(
            frame=frame,
            verdicts=[Verdict(f, s, ccfg.threshold) for f, s in zip(faces, scores, strict=True)],
            events=events,
            crops=crops,
            timings_ms={
                "detect": (t1 - t0) * 1e3,
                "classify": (t3 - t2) * 1e3,
                "track": ((t2 - t1) + (t4 - t3)) * 1e3,
            },
        )

    def end_gone(self) -> list[ViolationEvent]:
        """While no frame comes (a live camera away and reconnecting): once that is a gap, the
        open violations end `gone` at their last sighting now, not when (if ever) frames
        return; a camera that never comes back must not show a violation for days."""
        if not self.violations.active or (waited := self.no_frame_for()) is None:
            return []
        self._forget(waited[1])
        return self.violations.end_all_gone()

    def source_gone(self) -> list[ViolationEvent]:
        """The source has nothing to play for now (a looping file emptied or deleted, tried
        again as a lost camera is): the open violations end `gone` at their last sighting, and
        whoever is in view once it plays again is tracked afresh (was: ended `shutdown`, which
        says maskd stopped, while it went on)."""
        self.tracker.forget()
        self._cache.clear()
        return self.violations.end_all_gone()

    def no_frame_for(self) -> tuple[Frame, float] | None:
        """The last frame and the seconds since it, once that is a gap (``_is_gap``); None
        before the first frame and while frames come as usual."""
        last = self._last
        if last is None:
            return None
        gap = self._gap(*system_clock())
        return None if gap is None or not self._is_gap(gap) else (last, gap)

    def close(self) -> list[ViolationEvent]:
        """End every open violation (reason ``shutdown``) at the last frame's time."""
        last = self._last
        return self.violations.close_all(time.time() if last is None else last.timestamp)
