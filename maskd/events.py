"""Turn violating tracks into violation events: one start, rate-limited updates, one end.

A person without a mask must become ONE violation with a stable ``event_id``, not an alarm
per frame. The lifecycle, all driven by frame timestamps (so it is deterministic and tested
on scripted tracks):

- ``start``: a track is confirmed violating (see maskd.tracking) and no event is open for it.
- ``update``: at most every ``update_interval_s``, and only when the best score rose or the
  event moved to another track, in a frame its track is seen in; carries the best score so far
  and the best face crop.
- ``end``: ``masked`` (the track's smoothed score fell below the release threshold),
  ``gone`` (its track not seen for ``end_after_s``; end_time is when it was last seen) or
  ``shutdown``.
- Every message says how long the violation has lasted (``duration_s``, by the time that passed:
  steps of the wall clock left out) and how far the wall clock stepped since its start
  (``clock_step_s``). ``start_time`` stays as the start message gave it, so after a step back
  the wall clock's end would come before it; ``end_time`` is never earlier than
  ``start_time + duration_s`` (it is then the end on the start's clock).
- Re-attach: while an event's track is missing (before it ends as gone), a newly confirmed
  violating track of the same person takes the event over (same event_id, no new start), so a
  person briefly lost by the tracker stays one violation. The track it was taken from loses its
  evidence (``Track.start_over``): ownerless, it would start an alarm for whoever it matched next.
- Cooldown: for ``cooldown_s`` after an event ends as ``masked``, a violation confirmed for the
  same person does not start a new event yet; it starts when the cooldown is over if it still
  holds (the same track still in view always counts as the same person). This keeps a person
  fiddling with a mask from producing a start/end pair every few seconds. After ``gone`` there
  is no cooldown: that person has left, and at a door the next
  one steps into the same spot.

"The same person" is not "the same place": at a door everyone stands at the same spot, one
after the other. A track is the same person as an event when its box is near the event's last
box (or near where that box was heading, for someone hidden while walking past another), of a
similar size, and its appearance is at least ``same_person_similarity`` alike
(maskd.tracking.appearance); without appearance on either side, place and size decide.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from maskd.config import TrackingConfig
from maskd.geometry import near, rescale, same_size
from maskd.tracking import Track, at_least, coast, similarity
from maskd.types import Box, EndReason, EventType, ViolationEvent

log = logging.getLogger(__name__)


@dataclass
class _Violation:
    event_id: str
    track_id: int
    start_time: float
    box: Box  # pixels, last seen
    appearance: np.ndarray | None  # the track's appearance when last seen
    last_seen: float
    score: float
    top_score: float
    best_seq: int
    best_crop: np.ndarray | None
    last_msg_time: float
    next_seq: int = 0
    dirty: bool = False  # something worth an update happened since the last message
    velocity: tuple[float, float] = (0.0, 0.0)  # box centre, pixels per second (smoothed)
    stepped: float = 0.0  # how far the wall clock stepped since start_time (``shift``)

    def expected_box(self, now: float) -> Box:
        """Where the face should be now if it kept moving as it did (someone hidden while
        walking past another person)."""
        return coast(self.box, self.velocity, now - self.last_seen)

    def follow(self, track: Track) -> None:
        """Move to the track's box and take its velocity."""
        self.box, self.last_seen, self.velocity = track.box, track.last_seen, track.velocity


@dataclass
class _Ended:
    box: Box
    end_time: float
    appearance: np.ndarray | None
    track_id: int  # the same track still in view is the same person, whatever it looks like


class Violations:
    """The open violations of one camera; feed it the tracker's tracks every frame."""

    def __init__(
        self,
        cfg: TrackingConfig,
        camera: str,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.cfg = cfg
        self.camera = camera
        self._new_id = new_id
        self._open: list[_Violation] = []
        self._recent: list[_Ended] = []  # events ended as masked, still in their cooldown
        self._size = (1, 1)
        self.started = 0

    def _same_person(self, boxes: tuple[Box, ...], look: np.ndarray | None, t: Track,
                     since_first: bool = False) -> bool:
        """``t`` is the person expected at one of ``boxes``, looking like ``look`` (module
        docstring). With ``since_first``, where ``t`` was first seen counts as well: a track
        that began by the lost one may have moved on from there before it was confirmed."""
        mine = (t.box, t.anchor) if since_first else (t.box,)
        if not any(near(b, m) and same_size(b, m) for b in boxes for m in mine):
            return False
        sim = similarity(look, t.appearance)
        return sim is None or sim >= self.cfg.same_person_similarity

    def _gone(self, v: _Violation, by_id: dict[int, Track], now: float) -> bool:
        """``v`` ends `gone` now: its track not seen for ``end_after_s``, and not while the
        tracker still holds it (missed for max_missed_frames, longer than end_after_s at a slow
        frame rate): found again, that track is the same person, and an end then would be
        followed by a second start at once. Such a violation is not re-attached either: a track
        confirmed on its first frame after a gap in the frames took it over (no `gone`)."""
        return v.track_id not in by_id and at_least(now - v.last_seen, self.cfg.end_after_s)

    def _may_start(self, t: Track) -> bool:
        """Confirmed violating, and (with static-face suppression on) seen to move: a picture
        never moves, so it never gets an event; a person who stands perfectly still from the
        first frame gets one once they move."""
        return t.violating and (self.cfg.static_after_s is None or t.moved)

    @property
    def active(self) -> int:
        """Open violations (including ones whose track is briefly missing)."""
        return len(self._open)

    def update(
        self,
        tracks: list[Track],
        now: float,
        frame_seq: int,
        frame_size: tuple[int, int],
        crops: dict[int, np.ndarray] | None = None,
    ) -> list[ViolationEvent]:
        """Advance the lifecycle to time ``now``; returns the events to emit, in order.

        ``tracks`` are all the tracker's tracks (seen or briefly missed); ``crops`` maps a
        track id to its latest classified face crop (the one its current score came from),
        kept as the event's best crop.
        """
        self._size = frame_size
        crops = crops or {}
        out: list[ViolationEvent] = []
        self._recent = [r for r in self._recent if now - r.end_time < self.cfg.cooldown_s]
        by_id = {t.track_id: t for t in tracks}
        owned = {v.track_id for v in self._open}

        # Re-attach newly confirmed tracks to events whose own track went missing.
        for t in tracks:
            if not (self._may_start(t) and t.seen_now) or t.track_id in owned:
                continue
            lost = [
                v for v in self._open
                if not (v.track_id in by_id and by_id[v.track_id].seen_now)
                and not self._gone(v, by_id, now)
                and self._same_person((v.box, v.expected_box(now)), v.appearance, t, True)
            ]
            if lost:
                v = max(lost, key=lambda v: v.last_seen)
                log.info("violation %s: re-attached from track %d to %d", v.event_id,
                         v.track_id, t.track_id)
                owned.discard(v.track_id)
                if v.track_id in by_id:
                    # the tracker still holds the track the person left: ownerless, it would
                    # start an event on that evidence for whoever it matches next
                    by_id[v.track_id].start_over()
                v.track_id = t.track_id
                v.dirty = True
                owned.add(t.track_id)

        for v in list(self._open):
            t = by_id.get(v.track_id)
            if t is not None and t.seen_now:
                v.follow(t)
                if t.smoothed is not None:
                    v.score = t.smoothed
                if not t.violating:
                    out.append(self._end(v, "masked", now))
                    continue
                if t.appearance is not None:  # the look without the mask, for the cooldown
                    v.appearance = t.appearance
                if v.score > v.top_score:
                    v.top_score, v.best_seq, v.dirty = v.score, frame_seq, True
                    if t.track_id in crops:
                        v.best_crop = crops[t.track_id]
            elif self._gone(v, by_id, now):
                out.append(self._end(v, "gone", v.last_seen))
                continue
            else:  # not seen now: news waits for a sighting (or goes with the end), or an
                continue  # update lasted longer than the end at the last sighting after it
            if v.dirty and now - v.last_msg_time >= self.cfg.update_interval_s:
                out.append(self._message(v, "update", now))

        owned = {v.track_id for v in self._open}
        for t in tracks:
            if not (self._may_start(t) and t.seen_now) or t.track_id in owned:
                continue
            if any(r.track_id == t.track_id or self._same_person((r.box,), r.appearance, t)
                   for r in self._recent):
                continue  # cooldown: starts later if it still holds
            score = t.smoothed if t.smoothed is not None else 0.0
            v = _Violation(
                event_id=self._new_id(), track_id=t.track_id, start_time=now, box=t.box,
                appearance=t.appearance, last_seen=now, score=score, top_score=score, best_seq=frame_seq,
                best_crop=crops.get(t.track_id), last_msg_time=now, velocity=t.velocity,
            )
            self._open.append(v)
            self.started += 1
            out.append(self._message(v, "start", now))
        return out

    def rescale(self, sx: float, sy: float) -> None:
        """The frame size changed by ``sx`` across and ``sy`` down: the remembered boxes follow
        (re-attach and the cooldown compare them with the tracks' boxes, and a message's box is
        normalised by the frame size it is sent at)."""
        for v in self._open:
            v.box = rescale(v.box, sx, sy)
            v.velocity = (v.velocity[0] * sx, v.velocity[1] * sy)
        for r in self._recent:
            r.box = rescale(r.box, sx, sy)

    def shift(self, step: float) -> None:
        """Move the remembered times by ``step`` seconds: the wall clock stepped (a Pi without a
        real-time clock, NTP setting it; maskd.clock). Forward, a briefly hidden violator's
        event would end as gone and start again when they are found, and a cooldown would
        lapse; back, both would wait out the step. ``start_time`` stays: it names the event in
        every message, as the start message gave it; the step is counted instead, so that
        ``duration_s`` leaves it out and an end never comes before its start."""
        for v in self._open:
            v.stepped += step
            v.last_seen += step
            v.last_msg_time += step
        for r in self._recent:
            r.end_time += step

    def close_all(self, now: float) -> list[ViolationEvent]:
        """End every open violation with reason ``shutdown`` (the loop is stopping)."""
        return [self._end(v, "shutdown", now) for v in list(self._open)]

    def end_all_gone(self) -> list[ViolationEvent]:
        """End every open violation ``gone`` at its last sighting (no frame came for
        ``end_after_s``: the camera is away; maskd.pipeline ``end_gone``)."""
        return [self._end(v, "gone", v.last_seen) for v in list(self._open)]

    def _end(self, v: _Violation, reason: EndReason, end_time: float) -> ViolationEvent:
        self._open.remove(v)
        if reason == "masked":  # the cooldown is for a mask put on and taken off again
            self._recent.append(_Ended(v.box, end_time, v.appearance, v.track_id))
        ev = self._message(v, "end", end_time)
        # after a step back the new clock's end comes before the start: the end on the
        # start's clock then, which a consumer sorting or subtracting the two can use; by the
        # step itself, not its rounding (a microsecond's jitter back made an end 1 us before
        # its start), and never before start + the rounded duration the message gives
        ev.end_time = max(end_time - min(v.stepped, 0.0), v.start_time + ev.duration_s)
        ev.end_reason = reason
        return ev

    def _message(self, v: _Violation, kind: EventType, now: float) -> ViolationEvent:
        """The event of ``kind`` about ``v`` at ``now``; its frame_seq is that of v's best
        crop (the frame a snapshot shows), not of the frame that ended it."""
        w, h = self._size
        x0, y0, x1, y1 = v.box
        norm = (
            min(max(x0 / w, 0.0), 1.0), min(max(y0 / h, 0.0), 1.0),
            min(max(x1 / w, 0.0), 1.0), min(max(y1 / h, 0.0), 1.0),
        )
        ev = ViolationEvent(
            event_type=kind, event_id=v.event_id, seq=v.next_seq, camera=self.camera,
            track_id=v.track_id, start_time=v.start_time, score=v.score, top_score=v.top_score,
            box=norm, frame_seq=v.best_seq, best_crop=v.best_crop,
            duration_s=round(max(now - v.start_time - v.stepped, 0.0), 3),
            clock_step_s=round(v.stepped, 3) + 0.0,  # + 0.0: never -0.0 for a jitter back
        )
        v.next_seq += 1
        v.last_msg_time = now
        v.dirty = False
        return ev
