"""Motion gating (maskd.motion) and its hook in the pipeline."""

from __future__ import annotations

import numpy as np
import pytest

from maskd.config import Config, ConfigError, load_config
from maskd.motion import MotionGate, moving_share, prepare, scaled_threshold
from maskd.pipeline import Pipeline
from maskd.types import Face, Frame


def scene(person: int | None = None, noise: int = 0, seed: int = 0) -> np.ndarray:
    """A 640x480 grey doorway; ``person``: x of a 120x300 darker block; ``noise``: sensor noise."""
    img = np.full((480, 640, 3), 150, np.uint8)
    img[:, 300:340] = 90  # a door frame
    if person is not None:
        img[100:400, person:person + 120] = 40
    if noise:
        rng = np.random.default_rng(seed)
        img = np.clip(img.astype(np.int16) + rng.integers(-noise, noise + 1, img.shape), 0, 255)
    return img.astype(np.uint8)


def test_prepare_shrinks_to_grey_rows():
    g = prepare(scene(), 90)
    assert g.shape == (90, 120) and g.dtype == np.float32


def test_prepare_never_enlarges_an_odd_frame():
    """A 20000x2 image (a few hundred bytes of PNG) was scaled up to 900000x90 float32, about
    800 MB for one frame; a Pi runs out of memory long before."""
    wide = prepare(np.zeros((2, 20000, 3), np.uint8), 90)
    assert wide.shape == (2, 8)
    tall = prepare(np.zeros((20000, 2, 3), np.uint8), 90)
    assert tall.shape == (90, 1)
    assert prepare(np.zeros((480, 640, 3), np.uint8), 90).shape == (90, 120)


def test_moving_share_counts_changed_pixels():
    bg = np.zeros((10, 10), np.float32)
    grey = bg.copy()
    grey[:2] = 100
    assert moving_share(grey, bg, 25) == pytest.approx(0.2)
    assert moving_share(grey, bg, 150) == 0.0


def test_moving_share_at_its_limits():
    """'More than threshold' grey levels: exactly the threshold is still; with a watched mask
    the share is of the watched pixels (half the frame watched, all of it moving: 1.0)."""
    bg = np.zeros((10, 10), np.float32)
    assert moving_share(bg + 25, bg, 25) == 0.0 and moving_share(bg + 25.5, bg, 25) == 1.0
    watched = np.zeros((10, 10), bool)
    watched[:5] = True
    grey = bg.copy()
    grey[:5] = 100
    assert moving_share(grey, bg, 25, watched) == 1.0


def test_the_threshold_shrinks_in_a_dim_scene_only_and_not_below_its_floor():
    """In proportion below BRIGHT_GREY (100) of mean grey, never under MIN_SCALE (a quarter) of
    itself, and never above itself in a bright scene."""
    def at(level: float) -> float:
        return scaled_threshold(25.0, np.full((4, 4), level, np.float32))

    assert at(200.0) == 25.0 and at(100.0) == 25.0
    assert at(50.0) == pytest.approx(12.5)
    assert at(10.0) == pytest.approx(6.25) and at(0.0) == pytest.approx(6.25)


def test_prepare_blurs_a_lone_bright_pixel():
    """The 3x3 blur spreads one hot pixel (sensor noise) over its neighbours: its peak drops to
    a quarter, under the default threshold's worth of change for most of it."""
    img = np.zeros((20, 20, 3), np.uint8)
    img[10, 10] = 255
    g = prepare(img, 20)
    assert g.shape == (20, 20) and g.max() == pytest.approx(255 / 4, abs=1)
    assert g.sum() == pytest.approx(255, abs=2)


def test_gate_limits_and_a_change_of_frame_size():
    """idle_every 1 detects every frame; min_area 0 counts every frame as moving (share 0
    reaches it); a camera that changes its frame size (a reopened stream) starts a new
    background and zone mask instead of comparing arrays of two shapes; moving frames counted."""
    every = MotionGate(idle_every=1)
    assert all(every.should_detect(scene(), tracking=False) for _ in range(5))
    zero = MotionGate(min_area=0.0, idle_every=100)
    assert all(zero.should_detect(scene(), tracking=False) for _ in range(5))
    gate = MotionGate(idle_every=100, include=[[(0.0, 0.0), (1.0, 0.0), (1.0, 1.0)]])
    for _ in range(3):
        gate.should_detect(scene(), tracking=False)
    assert gate.counts.moving == 1 and gate.share == 0.0
    small = np.full((240, 640, 3), 150, np.uint8)  # prepared 90x240, not 90x120
    assert gate.should_detect(small, tracking=False) and gate.share == 1.0  # new background
    assert not gate.should_detect(small, tracking=False)  # compared in the new size
    small[:, :320] = 20
    assert gate.should_detect(small, tracking=False)
    assert gate.counts.moving == 3 and gate.counts.frames == 6

def test_still_noisy_scene_skips_all_but_every_nth():
    gate = MotionGate(idle_every=15)
    decisions = [gate.should_detect(scene(noise=8, seed=i), tracking=False) for i in range(60)]
    # the first frame (no background yet), then every 15th
    assert [i for i, d in enumerate(decisions) if d] == [0, 15, 30, 45]
    assert gate.counts.skipped == 56 and gate.counts.frames == 60


def test_someone_entering_is_detected_at_once_and_while_tracked():
    gate = MotionGate(idle_every=15)
    for i in range(10):
        gate.should_detect(scene(noise=8, seed=i), tracking=False)
    assert gate.should_detect(scene(person=0, noise=8, seed=99), tracking=False)
    # standing still: no motion once learned into the background, but a live track keeps detection on
    for i in range(100):
        gate.moving(scene(person=0, noise=8, seed=i))
    assert not gate.moving(scene(person=0, noise=8, seed=500))
    assert gate.should_detect(scene(person=0, noise=8, seed=501), tracking=True)


def dim(image: np.ndarray, level: float, noise: int, seed: int) -> np.ndarray:
    """``image`` in a dim hall: scaled so its grey is ``level`` of what it was, sensor noise."""
    rng = np.random.default_rng(seed)
    out = image.astype(np.float32) * level + rng.integers(-noise, noise + 1, image.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("level", [0.25, 0.15])
def test_someone_entering_a_dim_hall_is_detected_at_once(level):
    """In a dim hall (mean grey about 36, or 21) a person walking in changes the shrunken grey
    by fewer than 25 levels: the gate said nothing moved, and detection waited for the idle
    frame (up to idle_every frames: 1-2 s). The threshold follows the scene's brightness; the
    dim hall's own noise still moves nothing."""
    gate = MotionGate(idle_every=15)
    still = [gate.should_detect(dim(scene(), level, 4, i), tracking=False) for i in range(25)]
    assert [i for i, d in enumerate(still) if d] == [0, 15]  # noise: idle frames only
    assert gate.should_detect(dim(scene(person=0), level, 4, 99), tracking=False)


def test_motion_where_faces_are_dropped_anyway_does_not_hold_the_detector_on():
    """A lobby screen inside a `zones.ignore` polygon (docs/config.md suggests one for a
    monitor) changed every few frames: the gate saw motion there, and detection ran on 214 of
    300 frames of an empty door (ran: 4.0 ms a frame against 0.7). Motion counts only where a
    face would count: outside ignore zones, inside include zones."""
    def lobby(i: int) -> np.ndarray:
        img = scene(noise=4, seed=i)
        img[20:110, 500:620] = (i // 5) * 37 % 256  # the screen: a new picture every 5 frames
        return img

    screen = [(500 / 640, 20 / 480), (620 / 640, 20 / 480), (620 / 640, 110 / 480),
              (500 / 640, 110 / 480)]
    for include, ignore in ((None, [screen]), ([[(0, 0), (0.75, 0), (0.75, 1), (0, 1)]], [])):
        gate = MotionGate(idle_every=15, include=include, ignore=ignore)
        ran = [gate.should_detect(lobby(i), tracking=False) for i in range(60)]
        assert [i for i, d in enumerate(ran) if d] == [0, 15, 30, 45], (include, ignore)
        person = lobby(60)
        person[100:400, 0:120] = 40  # someone walks in where faces count
        assert gate.should_detect(person, tracking=False)
    ungated = MotionGate(idle_every=15)
    assert sum(ungated.should_detect(lobby(i), tracking=False) for i in range(60)) > 10


def test_config_section_validated(tmp_path):
    assert Config().motion.enabled is True
    p = tmp_path / "c.yaml"
    p.write_text("motion:\n  threshold: 0\n  idle_every: 5\n")
    with pytest.raises(ConfigError, match="motion.threshold"):
        load_config(p)
    p.write_text("motion:\n  enabled: false\n  min_area: 0.01\n")
    assert load_config(p).motion.min_area == 0.01


class CountingDetector:
    name = "counting"

    def __init__(self, faces_from: int = 10**9) -> None:
        self.calls = 0
        self.faces_from = faces_from

    def detect(self, image):
        self.calls += 1
        if self.calls >= self.faces_from:
            return [Face((250.0, 150.0, 350.0, 270.0), 0.9)]
        return []

    def describe(self) -> str:
        return self.name


class FixedClassifier:
    def predict(self, crops):
        return np.full(len(crops), 0.9, np.float32)


@pytest.mark.parametrize("enabled", [True, False])
def test_pipeline_skips_detection_on_an_empty_scene(enabled):
    cfg = Config()
    cfg.motion.enabled = enabled
    det = CountingDetector()
    pipe = Pipeline(cfg, det, FixedClassifier())
    for i in range(45):
        pipe.process(Frame(scene(noise=6, seed=i), i + 1, (i + 1) / 15))
    assert pipe.counts.frames == 45
    if enabled:
        assert det.calls == 3 and pipe.counts.motion_skipped == 42
    else:
        assert det.calls == 45 and pipe.counts.motion_skipped == 0


def test_pipeline_keeps_detecting_while_a_track_lives():
    cfg = Config()
    det = CountingDetector(faces_from=1)  # a still face from the first frame on: no motion after it
    pipe = Pipeline(cfg, det, FixedClassifier())
    for i in range(30):
        pipe.process(Frame(scene(noise=6, seed=i), i + 1, (i + 1) / 15))
    assert det.calls == 30 and pipe.counts.motion_skipped == 0


def test_an_open_violation_keeps_the_detector_on_after_its_track_is_dropped(default_model):
    """A bare face standing still, detection switched off for a second (its track dropped) and
    on again: no motion and no track, so the gate idled (here 60 frames, 4 s) and the open
    violation ended `gone` after 3 s, then started again for the same person once the idle frame
    found them. The real loop's path (``detect=False`` is the switch), real models."""
    from maskd.config import parse_config
    from maskd.demo import DemoSource
    from maskd.service import build_classifier, build_detector

    cfg = parse_config({"detector": {"kind": "blazeface"},
                        "classifier": {"model": str(default_model)},
                        "motion": {"idle_every": 60}}, "test")
    pipe = Pipeline(cfg, build_detector(cfg), build_classifier(cfg))
    image = DemoSource().render(30)  # bare-faced, still
    fps, events = 15.0, []
    for seq in range(150):  # 3 s on, 1 s off, 6 s on
        frame = Frame(image, seq, 1_000_000.0 + seq / fps, "still")
        events += pipe.process(frame, detect=not 45 <= seq < 60).events
    assert [(e.event_type, e.end_reason) for e in events if e.event_type != "update"] == [
        ("start", None)]
    assert pipe.violations.active == 1


def test_the_pipelines_gate_watches_where_its_zones_count_faces():
    """The pipeline hands its zones to the gate (one rule, maskd.zones' shapes)."""
    cfg = Config(zones={"ignore": [[[0.7, 0.0], [1.0, 0.0], [1.0, 0.3], [0.7, 0.3]]]})
    det = CountingDetector()
    pipe = Pipeline(cfg, det, FixedClassifier())
    for i in range(20):
        img = scene(noise=4, seed=i)
        img[20:110, 500:620] = (i // 5) * 37 % 256  # a screen in the ignore zone
        pipe.process(Frame(img, i + 1, (i + 1) / 15))
    assert det.calls == 2 and pipe.counts.motion_skipped == 18  # the first and the idle frame
