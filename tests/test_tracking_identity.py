"""Track identity through the whole pipeline: one event per person, none for a masked one.

A fake detector (scripted boxes) and a fake classifier (P(no_mask) = the crop's mean red) on
flat-coloured frames: each colour is one person's look, so who stands in the box is known.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np

from maskd.config import Config
from maskd.events import Violations
from maskd.pipeline import Pipeline
from maskd.tracking import Tracker
from maskd.types import Box, Face, Frame

Script = list[tuple[np.ndarray, list[Box]]]


class Boxes:
    """Returns the boxes set for the current frame."""

    def __init__(self) -> None:
        self.faces: list[Face] = []

    def detect(self, image: np.ndarray) -> list[Face]:
        return self.faces


class RedClassifier:
    """P(no_mask) = mean red of the crop / 255."""

    input_size = 32

    def predict(self, crops_rgb: list[np.ndarray]) -> np.ndarray:
        return np.array([c[:, :, 0].mean() / 255 for c in crops_rgb], np.float32)


def person(red: int, blue: int, h: int = 480, w: int = 640) -> np.ndarray:
    """A frame filled with one person's colours (BGR)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 2], img[:, :, 0] = red, blue
    return img


A, B = person(230, 40), person(230, 200)  # two unmasked people (P 0.9) who look different
M = person(13, 120)  # a masked person (P 0.05)
X = (200.0, 150.0, 280.0, 230.0)


def run(script: Script, fps: float = 15.0,
        steps: Callable[[int], float] | None = None,
        stalls: Callable[[int], float] | None = None) -> list[tuple]:
    """(frame or 'close', event type, event id, end reason) of every event of the script."""
    det, ids = Boxes(), itertools.count()
    pipe = Pipeline(Config(), det, RedClassifier(), new_event_id=lambda: f"ev{next(ids)}")
    out: list[tuple] = []
    for i, (img, boxes) in enumerate(script):
        det.faces = [Face(b, 0.9) for b in boxes]
        late = stalls(i) if stalls else 0.0  # no frame came for that long before this one
        wall = 1000 + i / fps + late + (steps(i) if steps else 0.0)
        r = pipe.process(Frame(img, i, wall, since_boot=10 + i / fps + late))
        out += [(i, e.event_type, e.event_id, e.end_reason) for e in r.events]
    return out + [("close", e.event_type, e.event_id, e.end_reason) for e in pipe.close()]


def starts(events: list[tuple]) -> list[str]:
    return [e[2] for e in events if e[1] == "start"]


def test_a_masked_person_stepping_into_the_spot_gets_no_alarm():
    """A stood 0.4 s (too short for an alarm) and left; M stepped in two frames later. The
    track passed to M with A's votes and started an alarm on M, then ended it `masked`."""
    assert run([(A, [X])] * 6 + [(A, [])] * 2 + [(M, [X])] * 30) == []


def test_a_queue_at_one_spot_after_a_short_miss_is_two_events():
    events = run([(A, [X])] * 45 + [(A, [])] * 3 + [(B, [X])] * 45)
    assert len(starts(events)) == 2
    assert ("close", "end", "ev0", "shutdown") not in events  # A's ends when A left


def test_the_next_person_is_not_held_back_by_the_cooldown_of_the_one_before():
    """A took the mask on (end `masked`, cooldown) and left; B, unmasked, stepped in: B's
    alarm waited for the cooldown, since B had A's track (the same track is the same person)."""
    events = run([(A, [X])] * 30 + [(M, [X])] * 30 + [(M, [])] * 3 + [(B, [X])] * 90)
    assert len(starts(events)) == 2
    (b_start,) = [e[0] for e in events if e[1] == "start" and e[2] == "ev1"]
    assert b_start < 63 + 15  # B's own evidence (0.6 s), no cooldown (10 s)


def test_a_violator_who_left_ends_gone_not_masked_by_the_next_person():
    events = run([(A, [X])] * 45 + [(A, [])] * 2 + [(M, [X])] * 60)
    assert [e[1:] for e in events] == [("start", "ev0", None), ("end", "ev0", "gone")]


def test_the_next_person_at_the_spot_after_the_frames_stalled_is_someone_new():
    """No frame for 2.5 s (a camera or loop that stalled, shorter than a gap) and then the next
    person at the spot: the track went on without a miss, so nobody looked who it was. A's
    event passed to B (one event for two people, real models: `gone` 6.8 s), and masked M
    ended it `masked`, though one missed frame (66 ms) was enough to tell them apart."""
    def stall(i: int) -> float:
        return 2.5 if i >= 30 else 0.0

    events = run([(A, [X])] * 30 + [(B, [X])] * 45, stalls=stall)
    assert len(starts(events)) == 2
    assert [e[1:] for e in run([(A, [X])] * 30 + [(M, [X])] * 45, stalls=stall)] == [
        ("start", "ev0", None), ("end", "ev0", "gone")]
    # one person, the frames stalled: still one event
    assert len(starts(run([(A, [X])] * 75, stalls=stall))) == 1


def test_a_loop_whose_frame_intervals_jitter_still_alarms_on_a_person_turning_their_head():
    """A loaded Pi's loop takes the camera's newest frame: 66 ms intervals and now and then
    0.4 s. Each 0.4 s one was taken for a stall (three usual intervals), so every track's
    identity was checked several times a second; a person turning their head (the look 0.85
    alike) was taken for someone new again and again, their votes dropped each time: no
    alarm in 10 s (real faces: a second event after the first ended `gone`)."""
    turned = A.copy()
    turned[:168] = (40, 40, 40)  # hair shows as the head turns

    def jitter(i: int) -> float:
        return 0.33 * (i // 3)

    script = [((A if i % 2 == 0 else turned), [X]) for i in range(150)]
    assert [e[1:] for e in run(script, stalls=jitter) if e[1] != "update"] == [
        ("start", "ev0", None), ("end", "ev0", "shutdown")]


def test_the_track_an_event_was_taken_from_starts_nothing_for_the_next_person():
    """A steps aside (a new track takes over A's event); masked M then stands where A was,
    matched to A's old, still violating track: that alarm started on M at once."""
    y = (270.0, 150.0, 350.0, 230.0)
    split = A.copy()
    split[:, :275] = M[:, :275]  # M on the left at X, A on the right at Y
    events = run([(A, [X])] * 10 + [(A, [y])] * 5 + [(split, [y, X])] * 20, fps=5.0)
    assert starts(events) == ["ev0"]


def test_re_attach_clears_the_evidence_of_the_track_left_behind():
    """Without looks to tell people apart (the tracker on its own), the track left behind still
    carried A's votes: whoever it matched next started an alarm on them."""
    cfg = Config().tracking.model_copy(update={"min_span_s": 0.0, "max_missed_frames": 30})
    tracker, ids = Tracker(cfg), itertools.count()
    violations = Violations(cfg, "door", new_id=lambda: f"ev{next(ids)}")
    y = (270.0, 150.0, 350.0, 230.0)
    events = []
    script = [[(X, 0.9)]] * 5 + [[(y, 0.9)]] * 5 + [[(y, 0.9), (X, 0.05)]] * 10
    for i, faces in enumerate(script):
        tracks = tracker.match([b for b, _ in faces], i, i / 10)
        for t, (_, p) in zip(tracks, faces, strict=True):
            tracker.add_score(t, p)
        events += violations.update(tracker.tracks, i / 10, i, (640, 480))
    assert [e.event_type for e in events] == ["start"]
    assert [v.track_id for v in violations._open] == [2]  # re-attached to A's new track


def test_a_wall_clock_step_below_a_second_is_no_evidence():
    """Three votes 0.13 s apart with a 0.9 s step of the wall clock among them were taken for
    1 s of evidence (steps under a second were not followed)."""
    assert run([(A, [X])] * 3 + [(A, [])] * 30, steps=lambda i: 0.9 if i >= 2 else 0.0) == []
    # the same three frames really 1 s apart are evidence
    events = run([(A, [X])] * 3 + [(A, [])] * 60, fps=2.0)
    assert [e[1] for e in events] == ["start", "end"]


def test_a_change_of_frame_size_keeps_the_person_and_the_event():
    """640x480 to 320x240 (a camera reconfigured): the boxes in the old size matched nothing,
    the same person got a second event, and the first ended with its box in the old size."""
    det = Boxes()
    pipe = Pipeline(Config(), det, RedClassifier(), new_event_id=iter(["ev0", "ev1"]).__next__)
    small = person(230, 40, 240, 320)
    script = [(A, X)] * 30 + [(small, tuple(v / 2 for v in X))] * 90
    events = []
    for i, (img, box) in enumerate(script):
        det.faces = [Face(box, 0.9)]
        events += pipe.process(Frame(img, i, 1000 + i / 15, since_boot=10 + i / 15)).events
    events += pipe.close()
    assert [(e.event_type, e.event_id) for e in events if e.event_type != "update"] == [
        ("start", "ev0"), ("end", "ev0")]
    expected = (X[0] / 640, X[1] / 480, X[2] / 640, X[3] / 480)
    assert np.allclose(events[-1].box, expected)


def test_one_person_whose_box_jumps_twice_is_one_event():
    """Two jumps of the detector box, each past the tracker's overlap: the second track was
    confirmed 85 px from the event's last box, too far for 'near', and the same person got a
    second event. Where that track was first seen (45 px off) is near."""
    def right(box: Box, dx: float) -> Box:
        return (box[0] + dx, box[1], box[2] + dx, box[3])

    events = run([(A, [X])] * 30 + [(A, [right(X, 45)])] * 3 + [(A, [right(X, 85)])] * 40)
    assert starts(events) == ["ev0"]
    # someone else who steps in by A's last box and moves on is still someone else
    events = run([(A, [X])] * 30 + [(B, [right(X, 45)])] * 3 + [(B, [right(X, 85)])] * 40)
    assert len(starts(events)) == 2
