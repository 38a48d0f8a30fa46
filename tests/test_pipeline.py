"""crop_face geometry, per-frame judging, and the per-track classification cache."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from maskd.config import ClassifierConfig, Config
from maskd.geometry import crop_face
from maskd.pipeline import Pipeline, judge_faces
from maskd.types import Face, Frame


def ramp(h=100, w=160):
    """An image whose pixel (y, x) holds (y, x, 7) so crops can be checked by value."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 0] = np.arange(h)[:, None]
    img[:, :, 1] = np.arange(w)[None, :]
    img[:, :, 2] = 7
    return img


def test_crop_is_square_with_margin_and_centred():
    img = ramp()
    c = crop_face(img, (40, 30, 60, 50), 0.25)  # 20x20 box, side 30
    assert c.shape == (30, 30, 3)
    assert (c[0, 0, 0], c[0, 0, 1]) == (25, 35)
    assert (c[-1, -1, 0], c[-1, -1, 1]) == (54, 64)


def test_crop_of_a_tall_box_uses_the_longer_side():
    c = crop_face(ramp(), (70, 20, 80, 60), 0.0)
    assert c.shape == (40, 40, 3)
    assert (c[0, 0, 0], c[0, 0, 1]) == (20, 55)


def test_crop_off_the_edge_is_padded_by_repeating_edge_pixels():
    img = ramp()
    c = crop_face(img, (-10, -10, 10, 10), 0.0)
    assert c.shape == (20, 20, 3)
    assert (c[0, 0, 0], c[0, 0, 1]) == (0, 0)  # padded corner repeats pixel (0, 0)
    assert (c[15, 15, 0], c[15, 15, 1]) == (5, 5)
    c = crop_face(img, (150, 90, 170, 110), 0.5)  # bottom-right corner
    assert c.shape == (40, 40, 3)
    assert (c[-1, -1, 0], c[-1, -1, 1]) == (99, 159)


def test_crop_outside_or_degenerate_never_fails():
    img = ramp()
    assert crop_face(img, (500, 500, 520, 520), 0.1).shape == (24, 24, 3)
    assert crop_face(img, (10, 10, 10, 10), 0.1).shape == (1, 1, 3)
    grey = img[:, :, 0]
    assert crop_face(grey, (10, 10, 30, 30), 0.0).shape == (20, 20)


class ScriptedDetector:
    """Returns the faces given for each call in turn (scripted detections)."""

    def __init__(self, script):
        self.script = list(script)

    def detect(self, image):
        return [Face(tuple(map(float, b)), 0.9) for b in self.script.pop(0)]


class RedClassifier:
    """P(no_mask) = mean red of the crop / 255; counts crops so the cache can be measured."""

    input_size = 32

    def __init__(self):
        self.crops = 0
        self.calls = 0

    def predict(self, crops_rgb):
        self.calls += 1
        self.crops += len(crops_rgb)
        return np.array([c[:, :, 0].mean() / 255.0 for c in crops_rgb], np.float32)


def frame(seq, red=230):
    img = np.zeros((240, 320, 3), np.uint8)
    img[:, :, 2] = red  # BGR: red channel
    return Frame(img, seq, seq / 10.0)


def test_still_confident_track_is_rechecked_every_k_frames():
    cfg = Config()
    cfg.tracking.recheck_every, cfg.tracking.min_votes, cfg.tracking.min_span_s = 5, 3, 0.0
    det = ScriptedDetector([[(100, 100, 160, 160)]] * 20)
    clf = RedClassifier()
    pipe = Pipeline(cfg, det, clf)
    results = [pipe.process(frame(i)) for i in range(20)]
    # Frames 0-2 are the min_votes=3 fresh votes that confirm the violation; once settled the
    # track is re-checked every 5 frames: 7, 12, 17.
    assert clf.crops == 6
    assert pipe.counts.classified == 6 and pipe.counts.cached == 14
    assert all(r.verdicts[0].no_mask == pytest.approx(230 / 255) for r in results)
    assert pipe.tracker.tracks[0].violating
    assert pipe.tracker.tracks[0].votes == 6
    # Crops are handed out only for frames that were classified (the event's best crop).
    assert [bool(r.crops) for r in results[:8]] == [True] * 3 + [False] * 4 + [True]


def test_a_cached_score_is_never_a_vote():
    """Even when the cache may be used, a track gathering evidence is classified fresh, and
    a score reused from the cache does not move the track towards a violation."""
    cfg = Config()
    cfg.tracking.min_votes, cfg.tracking.min_span_s, cfg.tracking.recheck_every = 4, 0.0, 50
    pipe = Pipeline(cfg, ScriptedDetector([[(100, 100, 160, 160)]] * 6), RedClassifier())
    seen = []
    for i in range(6):
        pipe.process(frame(i))
        seen += [(t.votes, t.violating) for t in pipe.tracker.tracks]
    assert [votes for votes, _ in seen] == [1, 2, 3, 4, 4, 4]
    assert [violating for _, violating in seen] == [False, False, False, True, True, True]
    assert pipe.counts.cached == 2
    # Straight to the tracker: cached scores (fresh=False) add nothing.
    tracker = pipe.tracker
    (t,) = tracker.match([(400, 10, 460, 70)], 6, 0.6)
    for _ in range(10):
        tracker.add_score(t, 0.99, fresh=False)
    assert t.votes == 0 and t.smoothed is None and not t.violating


def test_moving_or_uncertain_tracks_are_classified_every_frame():
    cfg = Config()
    cfg.classifier.flip_band = 0.0  # one crop per classification; the mirrored view: see below
    moving = [[(100 + 12 * i, 100, 160 + 12 * i, 160)] for i in range(10)]
    clf = RedClassifier()
    pipe = Pipeline(cfg, ScriptedDetector(moving), clf)
    for i in range(10):
        pipe.process(frame(i))
    assert clf.crops == 10 and pipe.counts.cached == 0

    clf = RedClassifier()
    pipe = Pipeline(cfg, ScriptedDetector([[(100, 100, 160, 160)]] * 10), clf)
    for i in range(10):
        pipe.process(frame(i, red=128))  # p = 0.5: not confident
    assert clf.crops == 10


def test_small_faces_are_counted_not_judged_and_one_call_per_frame():
    cfg = Config()
    cfg.classifier.min_face_px = 24
    faces = [[(10, 10, 30, 30), (100, 100, 160, 160), (200, 20, 250, 70)]] * 3
    clf = RedClassifier()
    pipe = Pipeline(cfg, ScriptedDetector(faces), clf)
    r = pipe.process(frame(0))
    assert [v.no_mask is None for v in r.verdicts] == [True, False, False]
    assert r.verdicts[0].label is None
    assert clf.calls == 1 and clf.crops == 2
    pipe.process(frame(1))
    assert pipe.counts.small_faces == 2 and pipe.counts.faces == 6


def test_detect_disabled_skips_detector_and_ages_tracks():
    cfg = Config()
    cfg.tracking.max_missed_frames = 2
    det = ScriptedDetector([[(100, 100, 160, 160)]])
    pipe = Pipeline(cfg, det, RedClassifier())
    pipe.process(frame(0))
    for i in range(1, 4):
        r = pipe.process(frame(i), detect=False)
        assert r.verdicts == []
    assert pipe.tracker.tracks == []


def test_judge_faces_matches_crops():
    img = np.zeros((100, 100, 3), np.uint8)
    img[:50, :, 2] = 255  # top half red
    faces = [Face((10, 5, 40, 35), 0.9), Face((10, 60, 40, 90), 0.8), Face((0, 0, 5, 5), 0.7)]
    v = judge_faces(img, faces, RedClassifier(), ClassifierConfig(margin=0.0, min_face_px=10))
    assert v[0].no_mask == pytest.approx(1.0) and v[1].no_mask == pytest.approx(0.0)
    assert v[2].no_mask is None
    assert [x.face for x in v] == faces


def test_cache_on_the_demo_clip_saves_work_without_changing_the_outcome(default_model, yunet_model):
    """Real detector and classifier: caching saves most classifications, and the tracks
    become violating and are released at (almost) the same frames as without the cache."""
    from maskd.classifier import Classifier
    from maskd.demo import DemoSource
    from maskd.detectors import make_detector

    det = make_detector(Config().detector.model_copy(update={"kind": "yunet", "model": yunet_model}))
    clf = Classifier.open(default_model)
    timelines, stats = [], []
    for k in (1, 5):
        cfg = Config()
        cfg.tracking.recheck_every, cfg.tracking.min_span_s = k, 0.0  # the cache, not the span
        pipe, demo = Pipeline(cfg, det, clf), DemoSource()
        line = []
        looks = set()
        while (f := demo.read()) is not None:
            pipe.process(f)
            line.append(any(t.violating and t.seen_now for t in pipe.tracker.tracks))
            looks |= {t.appearance.size for t in pipe.tracker.tracks if t.appearance is not None}
        assert looks == {3 * 8 * 3 * 3 + 1280}  # colour layout and the model's pooled features
        timelines.append(line)
        stats.append(asdict(pipe.counts))
    uncached, cached = stats
    assert uncached["cached"] == 0 and uncached["classified"] == uncached["faces"] > 50
    assert cached["classified"] + cached["cached"] == cached["faces"] == uncached["faces"]
    assert cached["cached"] >= cached["faces"] // 2
    # Violating in the bare-faced half, released in the masked half, with and without cache;
    # the cache may notice the mask up to recheck_every frames later.
    half = len(timelines[0]) // 2
    for line in timelines:
        assert sum(line[:half]) >= half - 5 and not any(line[half + 10:])
    assert sum(a != b for a, b in zip(*timelines, strict=True)) <= 5


class LeftRedClassifier(RedClassifier):
    """P(no_mask) = mean red of the crop's left half: a mirrored crop gets another score."""

    def predict(self, crops_rgb):
        self.calls += 1
        self.crops += len(crops_rgb)
        return np.array([c[:, : c.shape[1] // 2, 0].mean() / 255.0 for c in crops_rgb], np.float32)


def test_second_opinion_mirrors_only_doubtful_faces():
    from maskd.pipeline import second_opinion

    half = np.zeros((40, 40, 3), np.uint8)
    half[:, :20, 2] = 255  # BGR red on the left half: 1.0 as is, 0.0 mirrored
    plain = np.zeros((40, 40, 3), np.uint8)
    clf = LeftRedClassifier()
    out = second_opinion(clf, [half, plain, half], [0.65, 0.0, 0.99], cut=0.7, band=0.1)
    assert out == pytest.approx([(0.65 + 0.0) / 2, 0.0, 0.99])
    assert clf.calls == 1 and clf.crops == 1  # one extra call, for the one doubtful face
    assert second_opinion(clf, [plain], [0.2], cut=0.7, band=0.1) == [0.2]
    assert clf.calls == 1


def test_faces_cut_off_by_the_frame_border_are_counted_not_judged():
    from maskd.pipeline import cut_off

    assert not cut_off((0, 0, 50, 50), 320, 240, 0)  # off: the old rule
    assert cut_off((0, 10, 50, 60), 320, 240, 2) and cut_off((270, 10, 320, 60), 320, 240, 2)
    assert cut_off((100, 200, 150, 239), 320, 240, 2)
    assert not cut_off((2, 2, 318, 238), 320, 240, 2)
    cfg = Config()
    cfg.classifier.edge_px = 2
    clf = RedClassifier()
    pipe = Pipeline(cfg, ScriptedDetector([[(0, 100, 60, 160), (100, 100, 160, 160)]]), clf)
    r = pipe.process(frame(0))
    assert [v.no_mask is None for v in r.verdicts] == [True, False]
    assert pipe.counts.edge_faces == 1 and clf.crops == 1



def test_scan_and_run_take_the_same_second_opinion():
    """classifier.flip_band applies to `maskd scan` (judge_faces) as it does to `run`."""
    img = np.zeros((240, 320, 3), np.uint8)
    img[20:80, 20:50, 2] = 255  # red on the left half of the first face only
    boxes = [(20, 20, 80, 80), (200, 20, 260, 80)]
    cfg = Config()
    cfg.classifier.margin, cfg.classifier.flip_band = 0.0, 0.5
    still = judge_faces(img, [Face(b, 0.9) for b in boxes], LeftRedClassifier(), cfg.classifier)
    run = Pipeline(cfg, ScriptedDetector([boxes]), LeftRedClassifier()).process(Frame(img, 0, 0.0))
    assert [v.no_mask for v in still] == pytest.approx([v.no_mask for v in run.verdicts])
    assert still[0].no_mask == pytest.approx(0.5)  # (1.0 + 0.0 mirrored) / 2


DAY = 86400.0
BOX = (100, 100, 160, 160)


def run_through_a_step(script, cfg, step, at, boot=50.0, wall0=1_700_000_000.0):
    """Frames of a live camera at 10 fps (wall time and time since boot read together), the
    wall clock stepping by ``step`` s from frame ``at`` on, as NTP's first sync does on a Pi."""
    pipe = Pipeline(cfg, ScriptedDetector(script), RedClassifier(), new_event_id=lambda: "ev")
    img = np.zeros((240, 320, 3), np.uint8)
    img[:, :, 2] = 230  # red: P(no_mask) 0.9
    results = []
    for i in range(len(script)):
        wall = wall0 + i / 10 + (step if i >= at else 0.0)
        results.append(pipe.process(Frame(img, i, wall, since_boot=boot + i / 10)))
    events = [(i, e.event_type, e.end_reason) for i, r in enumerate(results) for e in r.events]
    return pipe, events


def test_a_clock_step_forward_keeps_a_briefly_hidden_violator_one_event():
    """The violator is hidden for two frames as the clock jumps a week: the same event goes on
    (before, it ended as gone at once and the same person got a second start)."""
    cfg = Config()
    cfg.tracking.min_span_s = 0.2
    script = [[BOX]] * 10 + [[]] * 2 + [[BOX]] * 10
    pipe, events = run_through_a_step(script, cfg, 7 * DAY, at=10)
    assert events == [(2, "start", None)]
    assert pipe.violations.active == 1


def test_a_clock_step_back_does_not_freeze_the_gone_timeout():
    cfg = Config()
    cfg.tracking.min_span_s, cfg.tracking.end_after_s = 0.2, 2.0
    script = [[BOX]] * 10 + [[]] * 21
    pipe, events = run_through_a_step(script, cfg, -3600.0, at=10)
    # Last seen at frame 9; gone once 2 s of frames have passed (frame 29), not an hour later.
    assert events == [(2, "start", None), (29, "end", "gone")]


def messages_through_a_step(step: float):
    """The messages of a violation open across a step at frame 10 (start at frame 2, update
    at frame 21, gone after frame 29), with every field."""
    cfg = Config()
    cfg.tracking.min_span_s, cfg.tracking.end_after_s = 0.2, 2.0
    cfg.tracking.update_interval_s = 1.0
    script = [[BOX]] * 10 + [[(101, 100, 161, 160)]] * 20 + [[]] * 21
    pipe = Pipeline(cfg, ScriptedDetector(script), RedClassifier(), new_event_id=lambda: "ev")
    img = np.zeros((240, 320, 3), np.uint8)
    img[:, :, 2] = np.linspace(200, 250, 320, dtype=np.uint8)  # red: P(no_mask) rises
    out = []
    for i in range(len(script)):
        wall = 1_790_000_000.0 + i / 10 + (step if i >= 10 else 0.0)
        out += pipe.process(Frame(img, i, wall, since_boot=50.0 + i / 10)).events
    return out


def test_an_end_after_a_clock_step_back_never_comes_before_its_start():
    """fake-hwclock booted the Pi an hour late and NTP stepped it back while a violation was
    open: its end said an hour before its start (end_time - start_time = -3599.3 s), which
    Home Assistant and the building's log sort and subtract. Now every message says how long
    the violation lasted by the time that passed, and how far the clock stepped; the end is
    on the start's clock."""
    msgs = messages_through_a_step(-3600.0)
    start, end = msgs[0], msgs[-1]
    assert (start.event_type, start.duration_s, start.clock_step_s) == ("start", 0.0, 0.0)
    assert end.event_type == "end" and end.end_reason == "gone"
    assert end.duration_s == pytest.approx(2.7)  # frame 2 to its last sighting at frame 29
    assert end.clock_step_s == pytest.approx(-3600.0)
    assert end.end_time - end.start_time == pytest.approx(end.duration_s)
    updates = [m for m in msgs if m.event_type == "update"]
    assert updates and all(0 < m.duration_s < end.duration_s for m in updates)
    assert all(m.clock_step_s == pytest.approx(-3600.0) for m in updates)


def test_an_end_after_a_clock_step_forward_keeps_the_new_clocks_time():
    """Forward the end stays on the new clock (end_time's meaning since the start); the
    duration leaves the step out, and the step is said."""
    msgs = messages_through_a_step(7 * DAY)
    end = msgs[-1]
    assert end.end_time == pytest.approx(1_790_000_000.0 + 2.9 + 7 * DAY)
    assert end.duration_s == pytest.approx(2.7)
    assert end.clock_step_s == pytest.approx(7 * DAY)


@pytest.mark.parametrize("jitter", [-1.2e-6, -3e-4, 2e-6])
def test_a_microsecond_of_clock_jitter_neither_ends_before_the_start_nor_says_minus_zero(jitter):
    """A network camera's frames: the wall clock and the time since boot read a microsecond
    apart make a 'step' of -1.2 us; an end ~0 s after its start came 1.2 us before it, and
    clock_step_s said -0.0."""
    msgs = messages_through_a_step(jitter)
    end = msgs[-1]
    assert end.event_type == "end" and end.clock_step_s == 0.0
    assert str(end.clock_step_s) == "0.0"  # not "-0.0"
    assert end.end_time >= end.start_time + end.duration_s
    assert all(str(m.clock_step_s) == "0.0" for m in msgs)


def test_votes_across_a_clock_step_still_need_their_span():
    """Three votes in 0.3 s with a forward step among them are 0.3 s of evidence, not a week."""
    cfg = Config()
    cfg.tracking.min_votes, cfg.tracking.min_span_s = 3, 0.6
    _, events = run_through_a_step([[BOX]] * 10, cfg, 7 * DAY, at=2)
    assert events == [(6, "start", None)]  # votes at frames 0..6: 0.6 s
    cfg.tracking.static_after_s = 1.0  # and a face that never moved is a picture after 1 s,
    pipe, _ = run_through_a_step([[BOX]] * 12, cfg, 7 * DAY, at=2)  # not at the step
    assert [t.static for t in pipe.tracker.tracks] == [True]
    pipe, _ = run_through_a_step([[BOX]] * 9, cfg, 7 * DAY, at=2)
    assert [t.static for t in pipe.tracker.tracks] == [False]


@pytest.mark.parametrize("min_votes", [3, 1])
def test_after_a_gap_in_the_frames_the_next_person_at_the_spot_is_someone_new(min_votes):
    """A camera that stalls: the tracker counted misses in frames, and there were none, so
    whoever stood at the same spot when frames came back took over the open violation (no
    `gone`, no start of their own). So did one confirmed on the first frame back (min_votes 1):
    re-attach came before the `gone` end that was due, and the event went on, 20 s longer."""
    cfg = Config()
    cfg.tracking.min_span_s, cfg.tracking.min_votes = 0.0, min_votes
    pipe = Pipeline(cfg, ScriptedDetector([[(100, 100, 160, 160)]] * 40), RedClassifier(),
                    new_event_id=iter(f"ev{i}" for i in range(1, 9)).__next__)
    events = []
    for i in range(15):
        events += pipe.process(frame(i)).events
    for i in range(15, 40):  # 20 s later
        events += pipe.process(Frame(frame(i).image, i, i / 10.0 + 20.0)).events
    kinds = [(e.event_type, e.event_id, e.end_reason) for e in events]
    assert kinds == [("start", "ev1", None), ("end", "ev1", "gone"), ("start", "ev2", None)]
    assert events[1].end_time == pytest.approx(1.4)  # its last sighting, before the gap


def test_an_end_after_s_shorter_than_a_frame_interval_still_lets_a_violation_start():
    """`end_after_s: 0` (end as soon as the face is gone) passed check-config, but every frame
    then counted as a gap in the frames: all tracks started afresh each frame and no event
    could ever start. A gap is also at least three usual frame intervals."""
    cfg = Config()
    cfg.tracking.min_span_s, cfg.tracking.end_after_s = 0.0, 0.0
    pipe = Pipeline(cfg, ScriptedDetector([[(100, 100, 160, 160)]] * 10 + [[]] * 11),
                    RedClassifier(), new_event_id=lambda: "ev")
    events = [e for i in range(21) for e in pipe.process(frame(i)).events]
    kinds = [(e.event_type, e.end_reason) for e in events]
    assert kinds == [("start", None), ("end", "gone")], kinds


def test_a_start_on_a_reused_score_carries_the_crop_that_score_came_from():
    """Once the evidence is in, a violating track's score may come from the cache; a start on
    such a frame (held back by the cooldown, or by a picture check) had no crop, so no
    snapshot was ever saved for it."""
    cfg = Config()
    cfg.tracking.min_span_s, cfg.tracking.same_person_similarity = 0.0, 0.0
    cfg.tracking.cooldown_s = 1.25  # over between two re-checks: the start is on a cached score
    reds = [230] * 10 + [20] * 10 + [230] * 40
    pipe = Pipeline(cfg, ScriptedDetector([[(100, 100, 160, 160)]] * len(reds)), RedClassifier())
    starts = []
    for i, red in enumerate(reds):
        r = pipe.process(frame(i, red))
        starts += [(e, bool(r.crops)) for e in r.events if e.event_type == "start"]
    assert len(starts) == 2
    assert not starts[1][1]  # that frame reused a score ...
    assert all(e.best_crop is not None for e, _ in starts)  # ... and the event has a crop


def test_a_frame_over_max_faces_tracks_and_judges_only_the_biggest(default_model, yunet_model):
    """Real detector, classifier and tracker on a crowd of 6 near and 18 far faces with
    detector.max_faces 6: the near ones are tracked and judged, the rest counted, one
    classification each (a frame of thousands must not take longer than WatchdogSec)."""
    import cv2

    from maskd.classifier import Classifier
    from maskd.detectors import make_detector

    skimage_data = pytest.importorskip("skimage.data")
    face = np.ascontiguousarray(skimage_data.astronaut()[20:240, 130:350][:, :, ::-1])
    img = np.full((540, 960, 3), 90, np.uint8)
    near, far = cv2.resize(face, (120, 120)), cv2.resize(face, (60, 60))
    for i in range(6):
        img[20:140, 20 + 155 * i:140 + 155 * i] = near
    for r in range(3):
        for c in range(6):
            img[220 + 105 * r:280 + 105 * r, 50 + 155 * c:110 + 155 * c] = far
    cfg = Config()
    cfg.detector = cfg.detector.model_copy(update={
        "kind": "yunet", "model": yunet_model, "input_width": 960, "input_height": 540})
    det = make_detector(cfg.detector)
    assert len(det.detect(img)) == 24  # the detector itself finds the whole crowd
    cfg.detector.max_faces = 6
    pipe = Pipeline(cfg, det, Classifier.open(default_model, 1))
    result = pipe.process(Frame(img, 0, 1000.0))
    assert sorted(round(v.face.box[1]) < 200 for v in result.verdicts) == [True] * 6
    assert (len(pipe.tracker.tracks), pipe.counts.classified, pipe.counts.capped_faces) == (6, 6, 18)
