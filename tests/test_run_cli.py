"""`maskd run` end to end as a subprocess: a clip made of real scene photos, JSON-lines events
checked against what the photos contain; signals, exit codes and config errors."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from loop_parts import RecordingSink

from maskd.classifier import Classifier
from maskd.config import ClassifierConfig, DetectorConfig, load_config
from maskd.demo import DemoSource, astronaut_bgr, draw_mask
from maskd.detectors import make_detector
from maskd.geometry import iou
from maskd.pipeline import judge_faces

FPS = 10
HOLD = 12  # frames each photo is shown
GAP = 15  # blank frames between photos: longer than end_after_s, so each violation ends "gone"
SIZE = (640, 480)
# Faces must be clearly judged on the clean frame so video compression cannot flip them.
SURE_NO_MASK, SURE_MASK = 0.85, 0.25
CONFIG = """\
camera: entrance
tracking:
  end_after_s: 1.0
  cooldown_s: 0.5
  window: 5
  min_frames: 3
"""


def maskd(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maskd", *args], capture_output=True, text=True,
                          timeout=300, **kw)


def bare_clip(path: Path, fourcc: str = "mp4v") -> Path:
    """The demo's bare-faced half (a violation that never ends by itself when looped)."""
    demo = DemoSource()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*fourcc), demo.fps, SIZE)
    for i in range(demo.frames_per_pass // 2):
        writer.write(demo.render(i))
    writer.release()
    return path


def letterbox(img: np.ndarray) -> tuple[np.ndarray, float, int, int]:
    h, w = img.shape[:2]
    s = min(SIZE[0] / w, SIZE[1] / h)
    nw, nh = round(w * s), round(h * s)
    x0, y0 = (SIZE[0] - nw) // 2, (SIZE[1] - nh) // 2
    out = np.full((SIZE[1], SIZE[0], 3), 90, np.uint8)
    out[y0:y0 + nh, x0:x0 + nw] = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
    return out, s, x0, y0


def annotations(xml: Path) -> list[tuple[str, tuple[float, ...]]]:
    root = ET.parse(xml).getroot()
    return [(o.findtext("name"), tuple(float(o.find("bndbox").findtext(k))
                                       for k in ("xmin", "ymin", "xmax", "ymax")))
            for o in root.iter("object")]


MJPG = cv2.VideoWriter.fourcc(*"MJPG")


def mjpg_roundtrip(frame: np.ndarray, path: Path) -> np.ndarray:
    """The frame as an MJPG clip will give it back."""
    w = cv2.VideoWriter(str(path), MJPG, FPS, SIZE)
    w.write(frame)
    w.release()
    cap = cv2.VideoCapture(str(path))
    ok, back = cap.read()
    cap.release()
    assert ok
    return back


def build_clip(scenes: Path, yunet: Path, model: Path, out: Path, with_violations: int = 6,
               without: int = 3, sure: tuple[float, float] = (SURE_MASK, SURE_NO_MASK),
               ) -> list[list[tuple[float, ...]]]:
    """Write an MJPG clip of scene photos (each held HOLD frames, then GAP blank frames).

    A photo is used when the pipeline agrees with its annotations and is sure of every face:
    each face judged no_mask (>= SURE_NO_MASK) overlaps an annotated ``without_mask`` box, and
    no judged face sits in the uncertain band. The photo is judged as the clip will show it
    (encoded and decoded): small faces can change verdict under compression, and MJPG codes
    every frame on its own, so that round trip is exactly what ``maskd run`` sees. Returns,
    per photo used, the (normalised) ``without_mask`` boxes that must each give one violation.
    """
    det = make_detector(DetectorConfig(kind="yunet", model=yunet))
    judge = ClassifierConfig()  # crop margin and smallest judged face exactly as `maskd run`
    clf = Classifier.open(model)
    writer = cv2.VideoWriter(str(out), MJPG, FPS, SIZE)
    blank = np.full((SIZE[1], SIZE[0], 3), 90, np.uint8)
    expected: list[list[tuple[float, ...]]] = []
    n_with = n_without = 0
    for xml in sorted((scenes / "annotations").glob("*.xml")):
        if n_with >= with_violations and n_without >= without:
            break
        img = cv2.imread(str(scenes / "images" / f"{xml.stem}.jpg"))
        if img is None:
            continue
        frame, s, x0, y0 = letterbox(img)
        frame = mjpg_roundtrip(frame, out.with_suffix(".probe.avi"))
        gt = [(name, (b[0] * s + x0, b[1] * s + y0, b[2] * s + x0, b[3] * s + y0))
              for name, b in annotations(xml)]
        verdicts = [v for v in judge_faces(frame, det.detect(frame), clf, judge)
                    if v.no_mask is not None]
        if any(sure[0] < v.no_mask < sure[1] for v in verdicts):
            continue
        bare = [v.face.box for v in verdicts if v.no_mask >= sure[1]]
        if not all(any(n == "without_mask" and iou(b, g) >= 0.3 for n, g in gt) for b in bare):
            continue
        if bare and n_with < with_violations:
            n_with += 1
        elif not bare and verdicts and n_without < without:
            n_without += 1
        else:
            continue
        expected.append([(b[0] / SIZE[0], b[1] / SIZE[1], b[2] / SIZE[0], b[3] / SIZE[1])
                         for b in bare])
        for _ in range(HOLD):
            writer.write(frame)
        for _ in range(GAP):
            writer.write(blank)
    writer.release()
    assert (n_with, n_without) == (with_violations, without), "not enough usable scene photos"
    return expected


@pytest.mark.slow
def test_run_on_a_clip_of_scene_photos_gives_one_violation_per_bare_face(
        tmp_path, scenes_dir, yunet_model, default_model):
    clip = tmp_path / "scenes.avi"
    expected = build_clip(scenes_dir, yunet_model, default_model, clip)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG)
    events = tmp_path / "events.jsonl"
    r = maskd("run", "--config", str(cfg), "--source", str(clip), "--exit-at-end",
              "--jsonl", str(events), "--model", str(default_model), "--detector", "yunet",
              "--detector-model", str(yunet_model), "--annotate", str(tmp_path / "annotated"))
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    starts = [e for e in lines if e["event_type"] == "start"]
    ends = [e for e in lines if e["event_type"] == "end"]
    n_expected = sum(len(b) for b in expected)
    assert n_expected >= 6
    assert len(starts) == n_expected, (expected, lines)
    assert sorted(e["event_id"] for e in ends) == sorted(e["event_id"] for e in starts)
    assert all(e["end_reason"] == "gone" and e["camera"] == "entrance" for e in ends)
    # Each violation starts while its photo is shown, at the place of a bare face.
    for e in starts:
        photo = e["frame_seq"] // (HOLD + GAP)
        assert any(iou(tuple(e["box"]), b) >= 0.5 for b in expected[photo]), (e, expected[photo])
    # The run logged its per-stage timings; the clip was written.
    assert "ms capture" in r.stderr and "classified" in r.stderr
    clips = list((tmp_path / "annotated").glob("*.mkv"))
    assert len(clips) == 1
    cap = cv2.VideoCapture(str(clips[0]))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(expected) * (HOLD + GAP)
    cap.release()


def test_bad_config_is_one_line_and_exit_78(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("tracking:\n  windw: 5\n")
    r = maskd("run", "--config", str(cfg), "--source", "demo")
    assert r.returncode == 78
    assert r.stderr.startswith(f"maskd run: {cfg}: unknown key 'tracking.windw'")
    assert len(r.stderr.splitlines()) == 1
    r = maskd("run", "--mqtt", "http://broker", "--source", "demo")
    assert r.returncode == 78 and "mqtt.url" in r.stderr and len(r.stderr.splitlines()) == 1


def test_exit_at_end_with_a_looping_source_is_refused_not_run_for_ever(tmp_path):
    """`--exit-at-end` with `--loop`, or with `source.loop: true` in the config, played the clip
    over and over until something killed it: a batch job or a one-shot unit hung."""
    r = maskd("run", "--source", "demo", "--loop", "--exit-at-end")
    assert r.returncode == 2 and "not allowed with argument" in r.stderr, r.stderr
    cfg = tmp_path / "loop.yaml"
    cfg.write_text("source: {kind: demo, loop: true}\n")
    r = maskd("run", "--config", str(cfg), "--exit-at-end")
    assert r.returncode == 78, r.stderr
    assert r.stderr == ("maskd run: --exit-at-end: source.loop is true in the config: a looping "
                        "source has no end to stop at; leave out one of them\n")


def test_missing_model_or_source_is_exit_78(tmp_path):
    """One line naming what the user typed (the option), not a config key of a file they may
    not have, as check-config and scan name it."""
    r = maskd("run", "--model", str(tmp_path / "nope.tflite"), "--source", "demo")
    assert r.returncode == 78 and "Traceback" not in r.stderr
    assert f"maskd run: --model: {tmp_path / 'nope.tflite'}: model file not found" in r.stderr, r.stderr
    r = maskd("run", "--detector", "yunet", "--detector-model", str(tmp_path / "nope.onnx"),
              "--source", "demo")
    assert r.returncode == 78 and "Traceback" not in r.stderr
    assert (f"maskd run: --detector-model: {tmp_path / 'nope.onnx'}: model file not found"
            in r.stderr), r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_more_stop_signals_while_maskd_stops_and_exits_leave_it_a_clean_stop(tmp_path,
                                                                            default_model, sig):
    """A second SIGTERM or Ctrl-C hurries the stop (docs/pipeline.md); one that came after the
    stop, while the process was exiting (tens of ms: threads, OpenCV, TFLite), killed it: -15
    or -2, sometimes "Exception ignored ... KeyboardInterrupt", after a clean stop. Signals
    every 5 ms from the first until the process is gone cover every moment of it."""
    clip, _ = bare_and_blank_clips(tmp_path)
    events = tmp_path / "events.jsonl"
    proc = looping_run(clip, events, default_model)
    try:
        _until_a_start(proc, events)
        while proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            time.sleep(0.005)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "Exception ignored" not in err, err[-2000:]
    assert f"{sig.name} received" in err


def test_missing_source_file_is_exit_78(tmp_path, default_model):
    r = maskd("run", "--model", str(default_model), "--detector", "blazeface",
              "--source", str(tmp_path / "missing.mp4"), "--exit-at-end")
    assert r.returncode == 78 and "missing.mp4" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_ends_open_violations_with_shutdown(tmp_path, default_model, sig):
    """A looping clip of a bare face never ends by itself; SIGTERM must end its violation.
    So must SIGHUP (an SSH session that closes): it killed maskd with violations left open,
    which a JSON-lines consumer never sees ended."""
    clip = bare_clip(tmp_path / "bare.mp4")
    events = tmp_path / "events.jsonl"
    # maskd as a terminal starts it, SIGHUP not ignored, however pytest was started (under
    # nohup maskd rightly keeps it ignored, and the hang-up below would wait for ever)
    before = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        proc = looping_run(clip, events, default_model)
    finally:
        signal.signal(signal.SIGHUP, before)
    try:
        _until_a_start(proc, events)
        os.kill(proc.pid, sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"{sig.name} received" in err
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    opened = {e["event_id"] for e in lines if e["event_type"] == "start"}
    closed = {e["event_id"] for e in lines if e["event_type"] == "end"}
    assert opened and opened == closed
    assert lines[-1]["event_type"] == "end" and lines[-1]["end_reason"] == "shutdown"


def test_a_running_maskd_follows_its_jsonl_file_when_it_is_rotated(tmp_path, default_model):
    """What logrotate does without a postrotate signal (SIGHUP would stop maskd): the file moved
    away twice while events come; each time the next lines go to a new file at the path."""
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "maskd", "run", "--source", "demo", "--loop", "--jsonl",
         str(events), "--model", str(default_model), "--detector", "blazeface"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def lines_at(path: Path, n: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and path.read_text().count("\n") >= n:
                return
            time.sleep(0.05)
        raise AssertionError(f"no {n} lines at {path} within 60 s")

    try:
        for old in ("events.jsonl.1", "events.jsonl.2"):
            lines_at(events, 2)
            events.rename(tmp_path / old)
        lines_at(events, 2)
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert err.count("the file was moved or deleted (rotated?); writing to a new file now") == 2
    files = [tmp_path / "events.jsonl.1", tmp_path / "events.jsonl.2", events]
    seqs = [[json.loads(x)["frame_seq"] for x in f.read_text().splitlines()] for f in files]
    assert all(seqs) and seqs[0][-1] < seqs[1][0] and seqs[1][-1] < seqs[2][0]  # no line late


# ----------------------------------------------------------------------------- in-process loop


class RecordingObserver:
    def __init__(self) -> None:
        self.frames: list[tuple[int, int, dict]] = []
        self.closed = False

    def on_frame(self, frame, verdicts, stats) -> None:
        self.frames.append((frame.seq, len(verdicts), stats.to_dict()))

    def close(self) -> None:
        self.closed = True


def demo_service(default_model, **kw):
    from maskd.config import Config
    from maskd.service import build

    cfg = Config()
    cfg.source.kind = "demo"
    cfg.detector.kind = "blazeface"
    cfg.classifier.model = default_model
    svc = build(cfg, exit_at_end=True, **kw).loops[0]
    sink, obs = RecordingSink(), RecordingObserver()
    svc.sinks.append(sink)
    svc.observers.append(obs)
    return svc, sink, obs


def test_loop_feeds_sinks_and_observers_and_flushes(default_model):
    svc, sink, obs = demo_service(default_model)
    assert svc.run(flush_timeout=7.0) == 0
    n = svc.frames
    assert n == DemoSource().frames_per_pass
    kinds = [e.event_type for e in sink.events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("start") == 1
    assert len({e.event_id for e in sink.events}) == 1
    assert sink.events[-1].end_reason in ("masked", "gone")
    assert len(sink.states) == n and sum(s["unmasked"] for s in sink.states) > 0
    assert sink.stats and sink.stats[-1]["frames"] == n and "classify" in sink.stats[-1]["ms"]
    assert len(sink.flushed) == 1 and 6.0 < sink.flushed[0] <= 7.0 and sink.closed
    assert [f[0] for f in obs.frames] == list(range(n)) and obs.closed
    assert max(f[2]["active"] for f in obs.frames) == 1 and obs.frames[-1][2]["fps"] > 0


def test_the_fps_shown_is_the_frames_processed_per_second_when_frames_come_unevenly(
        default_model):
    """Eight cameras of a map on two cores get their frames unevenly (one at once after
    another, then a long wait for the shared detector): the status page, its overlay and
    `maskd_fps` showed about 20 fps for cameras of 15 fps whose loops took 12 a second (an
    average of 1/interval, which short intervals inflate). The rate shown is now frames per
    second of time, as the log's stats line counts them."""
    svc, _, obs = demo_service(default_model, max_frames=24)
    read, n = svc.source.read, [0]

    def uneven():  # 5 ms, then 195 ms: 10 frames a second on average
        n[0] += 1
        time.sleep(0.005 if n[0] % 2 else 0.195)
        return read()

    svc.source.read = uneven
    t0 = time.monotonic()
    assert svc.run(flush_timeout=1.0) == 0
    rate = (len(obs.frames) - 1) / (time.monotonic() - t0)
    shown = obs.frames[-1][2]["fps"]
    assert 0.7 * rate < shown < 1.4 * rate, (shown, rate)


def run_a_slow_camera(obs, frames: int) -> None:
    """The real loop on a live camera of 1.6 fps until ``obs`` has seen ``frames`` frames (20 s
    at most)."""
    import threading

    from loop_parts import BlankCamera, service_for

    from maskd.config import SourceConfig
    from maskd.sources import live_source

    cam = BlankCamera(fps=1.6)
    svc = service_for(live_source("slow", cam.opener, SourceConfig()), [obs])
    runner = threading.Thread(target=svc.run, kwargs={"flush_timeout": 1.0}, daemon=True)
    runner.start()
    try:
        deadline = time.monotonic() + 20.0
        while len(obs.frames) < frames and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        svc.stop()
        runner.join(10.0)


def test_the_fps_shown_of_a_camera_slower_than_two_frames_a_second(tmp_path):
    """A live source hears from the loop every 0.5 s without a frame (``on_wait``), so every
    frame of a camera slower than 2 fps comes after such a wait: counting the rate afresh after
    each one counted nothing, and the status page, its overlay and `maskd_fps` kept the rate of
    the first frames after the open (3 at once from an IP camera's buffer: 1933 fps shown for a
    1 fps camera, for good), or 0. Only a wait without frames (the camera lost) starts it anew."""
    class Observer(RecordingObserver):
        def on_wait(self, stats) -> None:
            pass

    obs = Observer()
    run_a_slow_camera(obs, 6)
    assert len(obs.frames) >= 6
    shown = obs.frames[-1][2]["fps"]
    assert 1.0 < shown < 2.2, [f[2]["fps"] for f in obs.frames]  # 1.6, on a loaded machine less


def test_the_fps_shown_between_the_frames_of_a_slow_camera_is_not_zero(tmp_path):
    """Between two frames of a camera slower than 2 fps the loop tells the observers it waits
    (every 0.5 s), and it told them 0 fps: the status page, its overlay and `maskd_fps` showed
    a 1 fps camera at 0 fps half the time (/api/status polled: 1.68, 0.0, 0.0, 1.72, ...).
    Only a wait without frames (the camera lost) is 0 fps."""
    class Observer(RecordingObserver):
        def __init__(self) -> None:
            super().__init__()
            self.waits: list[float] = []

        def on_wait(self, stats) -> None:
            if self.frames:
                self.waits.append(stats.fps)

    obs = Observer()
    run_a_slow_camera(obs, 4)
    assert len(obs.frames) >= 4 and len(obs.waits) >= 2
    assert min(obs.waits[1:]) > 0.5, obs.waits  # the first: one frame, no rate yet


def test_a_broken_sink_or_preview_never_stops_detection_or_the_other_sinks(default_model,
                                                                           caplog):
    """One sink that raises (a bug in a publisher) is logged each time and the others still
    get every event; an observer that raises (a preview) is logged, closed and removed, and
    the loop goes on to the end of its source, exit 0."""
    svc, sink, obs = demo_service(default_model)

    class BrokenSink(RecordingSink):
        def emit(self, event) -> None:
            raise RuntimeError("publisher bug")

    class BrokenObserver(RecordingObserver):
        def on_frame(self, frame, verdicts, stats) -> None:
            raise RuntimeError("preview bug")

    broken, bad_view = BrokenSink(), BrokenObserver()
    svc.sinks.insert(0, broken)
    svc.observers.insert(0, bad_view)
    with caplog.at_level(logging.INFO, logger="maskd.service"):
        assert svc.run(flush_timeout=1.0) == 0
    assert svc.frames == DemoSource().frames_per_pass and len(obs.frames) == svc.frames
    kinds = [e.event_type for e in sink.events]
    assert kinds[0] == "start" and kinds[-1] == "end" and broken.closed
    assert caplog.text.count("sink recording failed in emit") == len(sink.events)
    assert caplog.text.count("observer BrokenObserver failed; removing it") == 1
    assert bad_view not in svc.observers and bad_view.closed


def test_a_sink_that_fails_one_event_of_a_frame_still_gets_the_others():
    """A frame's events go to each sink together (``emit_all``): a sink whose ``emit`` raised
    for one of them (a bug) lost the rest of that frame's, which the loop's ``emit`` per event
    had still given it. Each is tried; the error still reaches the loop, which logs it."""
    from maskd.types import EventSink, ViolationEvent

    class Flaky(EventSink):
        def __init__(self) -> None:
            self.got: list[str] = []

        def emit(self, event: ViolationEvent) -> None:
            if event.event_id == "b":
                raise RuntimeError("publisher bug")
            self.got.append(event.event_id)

    sink = Flaky()
    frame = [ViolationEvent("start", eid, 0, "door", i, 1_700_000_000.0, 0.9, 0.9,
                            (0.1, 0.1, 0.2, 0.2)) for i, eid in enumerate("abc")]
    with pytest.raises(RuntimeError, match="publisher bug"):
        sink.emit_all(frame)
    assert sink.got == ["a", "c"]


def test_undrained_sink_gives_exit_75(default_model):
    svc, sink, _ = demo_service(default_model)
    sink.drains = False
    assert svc.run(flush_timeout=0.5) == 75


def test_a_sink_whose_flush_raises_is_undrained_too_75_and_the_others_are_closed(default_model,
                                                                                 caplog):
    """A sink whose flush fails with an exception has not delivered what it accepted: with
    --exit-at-end that is 75 (systemd or the script runs it again), as for a flush that timed
    out, not a clean 0; the next sink is still flushed and closed."""
    svc, sink, _ = demo_service(default_model)
    after = RecordingSink()
    svc.sinks.append(after)

    def broken_flush(timeout, cancel=None):
        raise OSError("disk gone")

    sink.flush = broken_flush
    with caplog.at_level(logging.WARNING, logger="maskd.service"):
        assert svc.run(flush_timeout=0.5) == 75
    assert after.flushed and after.closed and sink.closed
    assert "camera: recording: not everything accepted was delivered" in caplog.messages


def test_a_signals_stop_waits_5_s_for_delivery_whatever_flush_timeout_says(default_model):
    """docs/reliability.md: the stop waits at most 5 s (--flush-timeout only with
    --exit-at-end), so that systemd's stop is not held 30 s by a broker that is down; what is
    not delivered stays in the outbox and the stop is still clean (0), not 75."""
    svc, sink, _ = demo_service(default_model)
    svc.exit_at_end = False  # the service: a camera, stopped by SIGTERM
    sink.drains = False
    svc.stop("SIGTERM")
    assert svc.run(flush_timeout=30.0) == 0
    assert len(sink.flushed) == 1 and 4.0 < sink.flushed[0] <= 5.0 and sink.closed


def test_exit_at_end_waits_flush_timeout_for_a_broker_that_is_down_then_75(tmp_path):
    """`maskd run --exit-at-end --flush-timeout S` (a script's): with the broker down the run
    waits S for delivery, not the default 30 s, then exits 75 with the events in the outbox.
    The demo stops at its end as with --exit-at-end (docs/pipeline.md), so its end is the same
    75, as --help says (was: 0 for "end of the demo" in --help, 75 from the run)."""
    from mqtt_broker import free_port

    codes = maskd("run", "--help").stdout.split("exit codes:")[1].split("\n  78")[0]
    assert re.search(r"^  75  [^\n]*the end of the demo", codes, re.M), codes
    assert re.search(r"^  0  .*of the demo, every\s+event delivered\)", codes, re.M | re.S), codes

    t0 = time.monotonic()
    r = maskd("run", "--source", "demo", "--detector", "blazeface", "--mqtt",
              f"mqtt://127.0.0.1:{free_port()}", "--state-dir", str(tmp_path / "state"),
              "--flush-timeout", "2")
    took = time.monotonic() - t0
    assert r.returncode == 75, r.stderr
    assert "event(s) not yet acknowledged; kept in" in r.stderr
    stop = re.search(r"(\d\d:\d\d:\d\d,\d+) INFO maskd.service: camera: stopping: end", r.stderr)
    gave_up = re.search(r"(\d\d:\d\d:\d\d,\d+) WARNING maskd.mqtt.sink: MQTT: \d+ event",
                        r.stderr)
    assert stop and gave_up, r.stderr

    def seconds(hms: str) -> float:
        h, m, rest = hms.split(":")
        return int(h) * 3600 + int(m) * 60 + float(rest.replace(",", "."))

    assert 1.5 < seconds(gave_up[1]) - seconds(stop[1]) < 10 and took < 60, r.stderr


def test_detection_switched_off_at_run_time(default_model):
    svc, sink, obs = demo_service(default_model, max_frames=30)
    svc.control.detect_enabled = False
    assert svc.run() == 0
    assert sink.events == [] and all(f[1] == 0 for f in obs.frames)
    assert svc.pipeline.counts.faces == 0 and svc.frames == 30
    assert all(s["detect_enabled"] is False for s in sink.states)


def test_mqtt_stats_uptime_keeps_counting_between_loop_reports(tmp_path, monkeypatch):
    """The loop hands its stats to the MQTT sink every STATS_EVERY_S; the sink publishes every
    stats_interval_s. uptime_s must be the sink's current one, not the loop's stale copy."""
    import threading

    from loop_parts import BlankCamera, service_for
    from mqtt_broker import Broker, Subscriber

    from maskd import service
    from maskd.config import Config
    from maskd.mqtt import MqttSink
    from maskd.sources import live_source

    monkeypatch.setattr(service, "STATS_EVERY_S", 3.0)
    with Broker(tmp_path / "broker") as broker:
        sub = Subscriber(broker, ["maskd/+/+/stats"])
        cfg = Config.model_validate({"state_dir": str(tmp_path / "state"),
                                     "mqtt": {"url": broker.url, "stats_interval_s": 1.0}})
        sink = MqttSink.from_config(cfg, model_name="test")
        cam = BlankCamera()
        svc = service_for(live_source("cam", cam.opener, cfg.source), sinks=[sink], cfg=cfg)
        runner = threading.Thread(target=svc.run, kwargs={"flush_timeout": 2.0}, daemon=True)
        runner.start()
        try:
            assert sub.wait(lambda ms: len(ms) >= 6, timeout=20)
        finally:
            svc.stop()
            runner.join(timeout=20)
            sub.close()
    msgs = [m.json() for m in sub.messages]
    uptimes = [m["uptime_s"] for m in msgs]
    assert any("frames" in m for m in msgs[:-1])  # loop stats were merged in
    assert (np.diff(uptimes) > 0).all(), uptimes


# ----------------------------------------------------------------------------- the demo


def test_demo_source_plays_the_clip_once_or_looping():
    from maskd.config import SourceConfig
    from maskd.sources import open_source

    src = open_source(SourceConfig(kind="demo"))
    frames = []
    while (f := src.read()) is not None:
        frames.append(f)
    n = src.frames_per_pass
    assert len(frames) == n == 120 and not src.is_live
    assert all(f.image.shape == (480, 640, 3) and f.image.dtype == np.uint8 for f in frames)
    assert [f.seq for f in frames] == list(range(n))
    assert np.allclose(np.diff([f.timestamp for f in frames]), 1 / src.fps)
    looped = open_source(SourceConfig(kind="demo", loop=True))
    seqs = [looped.read().seq for _ in range(n + 5)]
    assert seqs[-1] == n + 4 and looped.stats["loops"] == 1, looped.stats  # was 0 for ever
    looped.close()
    assert looped.read() is None


def test_run_source_demo_ends_with_its_clip_unless_looped(default_model):
    """`maskd run --source demo` stops at the clip's end without --exit-at-end (the
    quickstart); with --loop it plays on (here until --max-frames), as --help says."""
    common = ("run", "--source", "demo", "--max-frames", "130", "--detector", "blazeface",
              "--model", str(default_model))
    once = maskd(*common)
    assert once.returncode == 0 and "camera: stopping: end of source" in once.stderr, once.stderr
    assert "| frames 120 " in once.stderr
    looped = maskd(*common, "--loop")
    assert looped.returncode == 0, looped.stderr
    assert "camera: stopping: --max-frames 130 reached" in looped.stderr, looped.stderr
    assert "| frames 130 " in looped.stderr


def test_a_looping_demo_plays_in_real_time_with_the_clocks_times(tmp_path, default_model):
    """`maskd run --source demo --loop --http` (the status page and Home Assistant tried before
    a camera comes) plays at the clip's 15 frames/s, as a camera: was ~140 frames/s on a whole
    core, and its events' times (status page, MQTT, JSON lines) minutes ahead of the clock."""
    import urllib.request

    from mqtt_broker import free_port

    from maskd.env import DEMO_FAST

    page, events = f"127.0.0.1:{free_port()}", tmp_path / "events.jsonl"
    env = {k: v for k, v in os.environ.items() if k != DEMO_FAST}
    proc = subprocess.Popen(
        [sys.executable, "-m", "maskd", "run", "--source", "demo", "--loop", "--http", page,
         "--jsonl", str(events), "--model", str(default_model), "--detector", "blazeface"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)

    def status() -> dict | None:
        try:
            with urllib.request.urlopen(f"http://{page}/api/status", timeout=5) as reply:
                return json.load(reply)["cameras"][0]
        except OSError:
            return None

    def cpu_s() -> float:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    try:
        deadline = time.monotonic() + 120
        while (first := status()) is None or not first["frames"]:
            assert time.monotonic() < deadline and proc.poll() is None, "no frame in 120 s"
            time.sleep(0.2)
        began, cpu0 = time.monotonic(), cpu_s()
        time.sleep(10)
        last, wall_s, cpu = status(), time.monotonic() - began, cpu_s() - cpu0
        now = time.time()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    fps = (last["frames"] - first["frames"]) / wall_s
    assert 12 <= fps <= 16, (fps, last)
    assert abs(last["counts"]["timestamp"] - now) < 1.0, (last["counts"]["timestamp"], now)
    times = [json.loads(x)[k] for x in events.read_text().splitlines()
             for k in ("start_time", "end_time")]
    assert times and max(t for t in times if t is not None) < now + 1.0, (times, now)
    assert cpu / wall_s < 0.6, f"{cpu:.1f} s of CPU in {wall_s:.1f} s"


@pytest.mark.parametrize("kind", ["clip", "folder"])
def test_a_looping_file_or_folder_plays_at_its_rate_as_a_camera(tmp_path, default_model, kind):
    """`maskd run --source FILE|FOLDER --loop` (a clip standing in for a camera, as the looping
    demo) plays at the clip's own rate (CAP_PROP_FPS) or a folder's source.fps: was ~70
    frames/s from a 15 frames/s clip, a core burnt and its times ahead of the clock."""
    from maskd.env import DEMO_FAST

    if kind == "clip":
        source = bare_clip(tmp_path / "bare.mp4")
    else:
        source = tmp_path / "images"
        source.mkdir()
        demo = DemoSource()
        for i in range(0, 60, 6):
            cv2.imwrite(str(source / f"{i:03d}.jpg"), demo.render(i))
    env = {k: v for k, v in os.environ.items() if k != DEMO_FAST}
    r = maskd("run", "--source", str(source), "--loop", "--max-frames", "30", "--detector",
              "blazeface", "--model", str(default_model), env=env)
    assert r.returncode == 0 and "| frames 30 " in r.stderr, r.stderr
    fps = float(re.findall(r"camera: ([\d.]+) fps \|", r.stderr)[-1])
    assert fps <= 16.5, r.stderr


def test_a_real_time_demo_skips_what_a_slow_loop_missed_and_keeps_time_across_a_clock_step(
        monkeypatch):
    """As a camera: a loop slower than the clip gets the frame due now (the missed ones counted
    as skipped); a clock set back an hour does not hold the next frame for that hour, and the
    frames carry the time since boot, so tracking tells the step from time passing."""
    from maskd import demo as demo_mod
    from maskd.clock import system_clock

    src = DemoSource(loop=True, realtime=True)
    first = src.read()
    time.sleep(0.5)  # a slow detector
    late = src.read()
    assert abs(late.timestamp - time.time()) < 1 / src.fps, (late.timestamp, time.time())
    assert late.seq - first.seq - 1 == src.stats["skipped"] >= 5, (late.seq, src.stats)
    monkeypatch.setattr(demo_mod, "system_clock",
                        lambda: (system_clock()[0] - 3600, system_clock()[1]))
    began = time.monotonic()
    back = src.read()
    assert time.monotonic() - began < 0.5 and back.timestamp == pytest.approx(time.time() - 3600,
                                                                              abs=0.5)
    assert back.since_boot is not None and back.since_boot - late.since_boot < 0.5


def test_a_real_time_demo_gives_the_frame_due_now_and_waits_for_the_next_ones_time(monkeypatch):
    """On a clock the test moves: a loop 0.5 s slow gets the frame due then (seq 7 at 15
    frames/s, 6 skipped), not one ahead of its time, and the next frame waits for its own time
    (1/30 s), counted with the skipped frames (else a demo late once raced ever after)."""
    from maskd import demo as demo_mod

    boot, slept = [100.0], []

    def sleep(s: float) -> None:
        slept.append(s)
        boot[0] += s

    monkeypatch.setattr(demo_mod, "system_clock", lambda: (1e9 + boot[0], boot[0]))
    monkeypatch.setattr(demo_mod.time, "sleep", sleep)
    src = DemoSource(loop=True, realtime=True)
    assert src.read().seq == 0 and slept == []
    boot[0] += 0.5
    assert (src.read().seq, src.stats["skipped"], slept) == (7, 6, [])
    after = src.read()
    assert after.seq == 8 and slept == [pytest.approx(8 / 15 - 0.5)], slept
    assert (after.since_boot, after.timestamp) == pytest.approx((100 + 8 / 15, 1e9 + 100 + 8 / 15))


def test_only_a_looping_demo_plays_in_real_time_unless_maskd_demo_fast_is_set(monkeypatch):
    """A looping demo stands in for a camera: its frames carry the clock's time and the time
    since boot; a once-through one (the quick start) and one with MASKD_DEMO_FAST set (not
    empty or 0: the tests, tools/soak.py) play as fast as they can, on the clip's own times."""
    from maskd.config import SourceConfig
    from maskd.env import DEMO_FAST
    from maskd.sources import open_source

    for fast, loop, realtime in ((None, True, True), ("0", True, True), ("", True, True),
                                 ("1", True, False), (None, False, False)):
        monkeypatch.delenv(DEMO_FAST, raising=False)
        if fast is not None:
            monkeypatch.setenv(DEMO_FAST, fast)
        src = open_source(SourceConfig(kind="demo", loop=loop))
        frames = [src.read(), src.read()]
        assert all((f.since_boot is not None) is realtime for f in frames), (fast, loop)
        src.close()


def test_demo_face_is_found_moving_and_growing_and_the_mask_covers_its_lower_half():
    det = make_detector(DetectorConfig(kind="blazeface"))
    demo = DemoSource()
    half = demo.frames_per_pass // 2
    first, last_bare = det.detect(demo.render(0)), det.detect(demo.render(half - 1))
    assert len(first) == 1 and len(last_bare) == 1
    (a,), (b,) = first, last_bare
    assert (b.box[0] + b.box[2]) / 2 - (a.box[0] + a.box[2]) / 2 > 50  # it moves ...
    assert (b.box[2] - b.box[0]) > 1.1 * (a.box[2] - a.box[0])  # ... and comes closer
    photo = astronaut_bgr()
    (face,) = det.detect(photo)
    x0, y0, x1, y1 = (int(c) for c in face.box)
    diff = np.abs(photo.astype(int) - draw_mask(photo).astype(int)).mean(axis=2)
    h = y1 - y0
    lower, upper = diff[y0 + h // 2:y1, x0:x1].mean(), diff[y0:y0 + h // 3, x0:x1].mean()
    assert lower > 40 and upper < 5, (lower, upper)


@pytest.mark.parametrize("detector", ["blazeface", "yunet"])
def test_quickstart_demo_gives_exactly_one_violation(tmp_path, default_model, detector, request):
    extra = ["--detector", detector]
    if detector == "yunet":
        extra += ["--detector-model", str(request.getfixturevalue("yunet_model"))]
    r = maskd("run", "--source", "demo", "--exit-at-end", "--jsonl", "-", "--annotate",
              str(tmp_path / "demo"), "--model", str(default_model), *extra)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    kinds = [e["event_type"] for e in lines]
    assert kinds.count("start") == 1 and kinds.count("end") == 1, lines
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert len({e["event_id"] for e in lines}) == 1
    half = DemoSource().frames_per_pass // 2
    assert lines[0]["frame_seq"] < half  # started while bare-faced
    assert lines[-1]["end_reason"] in ("masked", "gone") and lines[-1]["top_score"] >= 0.7
    assert len(list((tmp_path / "demo").glob("camera-*.mkv"))) == 1


# ----------------------------------------------------------------------------- command line


def test_command_line_overrides_the_config_file(tmp_path):
    from maskd.cli import build_parser
    from maskd.commands.run import run_config
    from maskd.config import ConfigError

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("device_id: lobby\nsource:\n  kind: images\n  uri: /srv/in\n  fps: 5\n"
                        "classifier:\n  threads: 3\n")
    args = build_parser().parse_args(
        ["run", "--config", str(cfg_file), "--source", "rtsp://cam/1", "--camera", "door",
         "--mqtt", "mqtt://broker:1883", "--state-dir", str(tmp_path), "--jsonl", "-",
         "--annotate", str(tmp_path / "a"), "--loop", "--detector", "blazeface"])
    cfg = run_config(args)
    assert (cfg.device_id, cfg.camera) == ("lobby", "door")
    assert (cfg.source.kind, cfg.source.uri, cfg.source.fps, cfg.source.loop) == (
        "auto", "rtsp://cam/1", 5.0, True)
    assert cfg.classifier.threads == 3 and cfg.detector.kind == "blazeface"
    assert cfg.mqtt.url == "mqtt://broker:1883" and cfg.state_dir == tmp_path
    assert cfg.jsonl.path == "-" and cfg.preview.annotate_dir == tmp_path / "a"
    demo = run_config(build_parser().parse_args(["run", "--config", str(cfg_file), "--source", "demo"]))
    assert (demo.source.kind, demo.source.uri) == ("demo", None)
    with pytest.raises(ConfigError, match="camera"):
        run_config(build_parser().parse_args(["run", "--camera", "front door"]))


def test_file_source_without_exit_at_end_waits_for_sigterm(tmp_path, default_model):
    # a file (here the demo's frames) idles at its end; the demo source itself exits there
    demo, clip = DemoSource(), tmp_path / "demo.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"mp4v"), demo.fps, SIZE)
    while (frame := demo.read()) is not None and frame.seq < demo.frames_per_pass // 2:
        writer.write(frame.image)  # the bare-faced half: a violation is open at the end
    writer.release()
    jsonl = tmp_path / "events.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "maskd", "run", "--source", str(clip), "--model", str(default_model),
         "--detector", "blazeface", "--jsonl", str(jsonl)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        err = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and f"camera: end of source ({clip}); idle" not in err:
            line = proc.stderr.readline()
            assert line, "maskd run exited before the end of the file"
            err += line
        time.sleep(0.5)
        assert proc.poll() is None  # still waiting
        # nobody is looked at while it idles: the violations the file left open end now, not
        # at the signal (retained "active" stayed 1 for as long as it idled)
        events = [json.loads(line) for line in jsonl.read_text().splitlines()]
        starts = {e["event_id"] for e in events if e["event_type"] == "start"}
        ends = {e["event_id"]: e["end_reason"] for e in events if e["event_type"] == "end"}
        assert starts and set(ends) == starts, events
        assert "shutdown" in ends.values(), ends
        os.kill(proc.pid, signal.SIGINT)
        rest = proc.communicate(timeout=60)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err + rest
    assert "SIGINT received" in rest


def test_a_stop_signal_never_deadlocks_on_a_lock_the_main_thread_holds():
    """The stop signal's handler runs in the main thread, between two of its steps. It stopped
    the loops itself (Event.set, a log line): while the main thread held that Event's lock (an
    Event.wait, as a file source's idle end waits), the handler waited for ever for it, and
    maskd never stopped. The handler now only hands the signal to a thread of its own."""
    code = """
import os, signal, threading, time
from maskd.service import Service

class Loop:
    finished = threading.Event()
    stopped = threading.Event()
    def stop(self, reason, hurry=True):
        self.stopped.set()

loop = Loop()
restore = Service([loop]).install_signal_handlers()
with loop.stopped._cond:  # the main thread inside Event.wait's lock, as when a signal comes
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.3)  # the handler runs here
assert loop.stopped.wait(10), "not stopped"
restore()
print("stopped")
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert r.returncode == 0 and r.stdout.strip() == "stopped", (r.returncode, r.stderr[-2000:])


def test_sighup_stays_ignored_under_nohup():
    """`nohup maskd run &` asks to outlive the terminal: an ignored SIGHUP is left ignored."""
    from maskd.service import Service

    before = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        restore = Service([]).install_signal_handlers()
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
        restore()
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        restore = Service([]).install_signal_handlers()
        assert callable(signal.getsignal(signal.SIGHUP))  # a terminal's hang-up stops cleanly
        restore()
    finally:
        signal.signal(signal.SIGHUP, before)


def test_a_stop_asked_for_while_the_models_load_is_a_clean_stop(tmp_path, default_model,
                                                                monkeypatch, caplog):
    """SIGTERM or Ctrl-C while `run` loads its models (seconds on a Pi) killed it (-15) or
    ended in a KeyboardInterrupt traceback: now the stop is held and done the clean way."""
    from maskd import service
    from maskd.commands import run as run_cmd

    real_build = service.build

    def build_then_a_signal(*args, **kwargs):
        built = real_build(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGINT)  # arrives while build() has not returned yet
        return built

    monkeypatch.setattr(service, "build", build_then_a_signal)
    before = signal.getsignal(signal.SIGINT)
    args = _endless_demo_args(tmp_path, default_model)
    with caplog.at_level(logging.INFO, logger="maskd.service"):
        assert run_cmd.main(args) == 0
    assert "SIGINT received while starting: stopping" in caplog.text
    assert "camera: stopping: SIGINT" in caplog.text, caplog.text
    assert signal.getsignal(signal.SIGINT) == before  # handlers given back


def _endless_demo_args(tmp_path: Path, model: Path) -> argparse.Namespace:
    """`maskd run` on the looping demo with state and JSON lines: no end of its own, so only
    a stop ends it."""
    from maskd.cli import build_parser

    return build_parser().parse_args(
        ["run", "--source", "demo", "--model", str(model), "--detector", "blazeface",
         "--state-dir", str(tmp_path / "state"), "--jsonl", str(tmp_path / "ev.jsonl"),
         "--loop", "--max-frames", "1000"])


def test_a_stop_right_after_the_models_loaded_is_a_clean_stop(tmp_path, default_model,
                                                             monkeypatch, caplog):
    """Between the handlers that hold a stop while the models load and the service's own, the
    default ones were back: a SIGTERM there (the moment `maskd run: face detector: ...` is
    printed, MQTT and the outbox open) killed maskd (-15, every time in a real run signalled
    at that line), a Ctrl-C ended it 130 without the stop. Now it is held and done cleanly."""
    from maskd.commands import run as run_cmd

    real_notes = run_cmd.detector_notes
    seen: list[object] = []

    def notes_then_a_signal(*args, **kwargs):
        seen.append(handler := signal.getsignal(signal.SIGTERM))
        if callable(handler):  # SIG_DFL would kill pytest itself: the assertion below says it
            os.kill(os.getpid(), signal.SIGTERM)
        return real_notes(*args, **kwargs)

    monkeypatch.setattr(run_cmd, "detector_notes", notes_then_a_signal)
    before = signal.getsignal(signal.SIGTERM)
    args = _endless_demo_args(tmp_path, default_model)
    with caplog.at_level(logging.INFO, logger="maskd.service"):
        code = run_cmd.main(args)
    assert seen and callable(seen[0]), f"SIGTERM's handler there: {seen}"
    assert code == 0
    assert "camera: stopping: SIGTERM" in caplog.text, caplog.text
    assert signal.getsignal(signal.SIGTERM) == before  # handlers given back


def test_flags_that_cannot_reach_the_cameras_of_a_map_are_refused(tmp_path):
    """--annotate, --http, --loop and --preview were dropped silently with a `cameras:` config
    (or refused naming a key nobody wrote)."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cameras:\n  front: {source: {kind: demo}}\n  back: {source: {kind: demo}}\n")
    for flag in (["--annotate", str(tmp_path / "a")], ["--http", "127.0.0.1:0"], ["--loop"],
                 ["--preview"]):
        r = maskd("run", "--config", str(cfg), *flag, "--max-frames", "1")
        assert r.returncode == 78, r.stderr
        assert r.stderr.startswith(f"maskd run: {flag[0]}: the config has cameras:"), r.stderr
    assert not (tmp_path / "a").exists()
    r = maskd("run", "--config", str(cfg), "--camera", "x", "--max-frames", "1")
    assert r.returncode == 78 and len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("maskd run: --camera x: the config has cameras:"), r.stderr


def test_an_error_about_the_whole_config_does_not_quote_it(tmp_path):
    """A rule across cameras (loc '<top>') appended the whole config dump as `(got {...})`."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cameras:\n  front: {source: {uri: /dev/video0}}\n"
                   "  back: {source: {uri: '0'}}\n")
    for cmd in (["check-config", str(cfg)], ["run", "--config", str(cfg), "--max-frames", "1"]):
        r = maskd(*cmd)
        assert r.returncode == 78 and len(r.stderr.splitlines()) == 1, r.stderr
        assert "cameras front and back both read '/dev/video0'" in r.stderr, r.stderr
        assert "(got" not in r.stderr, r.stderr


def test_jsonl_path_that_cannot_take_lines_is_named_at_start(tmp_path):
    """A pipe nobody reads blocked the start for ever; a path inside a file or a folder said
    only '[Errno 17] File exists'."""
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    (tmp_path / "afile").write_text("x")
    for target, why in ((fifo, "a pipe nobody reads"), (tmp_path / "afile" / "ev.jsonl", ""),
                        (tmp_path, "Is a directory")):
        r = maskd("run", "--source", "demo", "--jsonl", str(target), "--max-frames", "1")
        assert r.returncode == 78, r.stderr
        assert f"maskd run: jsonl.path {target}: cannot write there: {why}" in r.stderr


def test_run_flags_out_of_range_are_usage_errors():
    for flag in (["--flush-timeout", "inf"], ["--flush-timeout", "-5"], ["--max-frames", "0"]):
        r = maskd("run", "--source", "demo", *flag)
        assert r.returncode == 2 and f"argument {flag[0]}:" in r.stderr, r.stderr


def test_an_option_its_config_key_refuses_is_exit_78_naming_the_command_line():
    """run --help: "an option's value that its config key refuses (--threads 0, --mqtt
    http://x: 'command line: ...')" is 78, so --threads reaches classifier.threads."""
    r = maskd("run", "--source", "demo", "--threads", "0")
    assert r.returncode == 78, r.stderr
    assert r.stderr == ("maskd run: command line: 'classifier.threads': Input should be greater "
                        "than or equal to 1 (got 0)\n")


def test_empty_names_and_paths_are_usage_errors_not_defaults():
    """`--jsonl ""` (an unset shell variable) would otherwise silently mean "no events file";
    `--config ""` would be the folder "." (Path("")), a config error (78) naming no option."""
    for flag in ("--jsonl", "--source", "--state-dir", "--mqtt", "--camera", "--annotate",
                 "--log-level", "--config"):  # the level was exit 78, a config error
        for empty in ("", " "):  # blank is empty too, not a file named ' '
            r = maskd("run", "--source", "demo", flag, empty, "--max-frames", "1")
            assert r.returncode == 2 and f"argument {flag}: is empty" in r.stderr, (flag, r.stderr)


def test_log_level_in_any_case(tmp_path):
    r = maskd("run", "--source", "demo", "--log-level", "debug", "--max-frames", "1",
              "--jsonl", str(tmp_path / "ev.jsonl"))
    assert r.returncode == 0 and " DEBUG " in r.stderr, r.stderr
    cfg = tmp_path / "c.yaml"
    cfg.write_text("log_level: warning\n")
    assert load_config(cfg).log_level == "WARNING"


def test_a_wall_clock_that_is_not_set_is_warned_about_once(tmp_path):
    """A Pi that booted with no saved time and no NTP yet says 1970: its schedule turned
    detection off "until Thu 08:00" and the events carried 1970, and nothing said why."""
    from maskd.clock import CLOCK_FLOOR, not_set

    assert not_set(time.time()) is None and not_set(CLOCK_FLOOR) is None
    if shutil.which("faketime") is None:
        pytest.skip("faketime (apt-get install faketime) runs maskd on a 1970 clock")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("schedule:\n  - {days: [mon, tue, wed, thu, fri], start: '08:00', end: '18:00'}\n")
    r = subprocess.run(["faketime", "1970-01-01 00:05:00", sys.executable, "-m", "maskd", "run",
                        "--config", str(cfg), "--source", "demo", "--max-frames", "3",
                        "--jsonl", str(tmp_path / "ev.jsonl")],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "TZ": "UTC", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("the wall clock says 1970-01-01 00:05 UTC: it is not set") == 1, r.stderr
    ok = maskd("run", "--config", str(cfg), "--source", "demo", "--max-frames", "1",
               "--jsonl", str(tmp_path / "ev2.jsonl"))
    assert ok.returncode == 0 and "not set" not in ok.stderr, ok.stderr


@contextlib.contextmanager
def _violation_on_a_network_camera(tmp_path, default_model, tracking: dict | None = None,
                                   **source):
    """The real loop (build()) reading a real IP camera that shows a bare face, ``source`` keys
    added to its config; yields (camera, loop, a RecordingSink) once a violation has started
    (with ``tracking`` keys that start none: once a face is seen)."""
    import threading

    from maskd.config import Config
    from maskd.service import build
    from tools.ipcamera import IpCamera

    demo = DemoSource()
    bare = demo.frames_per_pass // 2
    with IpCamera(lambda i: demo.render(i % bare), fps=demo.fps) as cam:
        cfg = Config.model_validate({
            "camera": "door", "state_dir": str(tmp_path / "state"),
            "source": {"kind": "opencv", "uri": cam.url, "reopen_min_s": 0.2, "reopen_max_s": 1.0,
                       **source},
            "classifier": {"model": str(default_model)}, "detector": {"kind": "blazeface"},
            "tracking": {"end_after_s": 1.0, **(tracking or {})},
            "jsonl": {"path": str(tmp_path / "events.jsonl")}})
        svc = build(cfg)
        seen = RecordingSink()
        svc.loops[0].sinks.append(seen)
        runner = threading.Thread(target=svc.run, kwargs={"flush_timeout": 2.0}, daemon=True)
        runner.start()
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (
                    seen.events or (tracking and any(st["faces"] for st in seen.states))):
                time.sleep(0.05)
            assert tracking or (seen.events and seen.events[0].event_type == "start")
            yield cam, svc.loops[0], seen
        finally:
            svc.stop()
            runner.join(timeout=20)


def _ends_within(seen: RecordingSink, timeout: float) -> list:
    """The end events the sink has once one came, or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(e.event_type == "end" for e in seen.events):
        time.sleep(0.05)
    return [e for e in seen.events if e.event_type == "end"]


def _quiet_state_within(seen: RecordingSink, timeout: float = 5.0) -> dict:
    """The counts the sinks hear last, once they say nobody is seen and nothing is open (or
    ``timeout`` passed): the loop tells them right after the end's sinks and ledger, so a test
    that looks the instant the end arrives can be a moment early."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not (
            seen.states and seen.states[-1]["active"] == 0 and seen.states[-1]["faces"] == 0):
        time.sleep(0.02)
    return seen.states[-1]


def test_a_camera_that_goes_away_ends_its_violation_gone_while_it_is_away(tmp_path,
                                                                           default_model):
    """An IP camera unplugged with a violation open: after tracking.end_after_s without a frame
    the violation ends `gone` at its last sighting and the sinks hear active 0, while the camera
    is still away (it was left `active` for the whole outage, ended only when frames came back)."""
    with _violation_on_a_network_camera(tmp_path, default_model) as (cam, _, seen):
        cam.gone()
        away = time.time()
        ended = _ends_within(seen, 15)
        assert cam.state == "gone"
        assert [e.end_reason for e in ended] == ["gone"], seen.events
        assert ended[0].end_time <= away
        last = _quiet_state_within(seen)
        assert last["active"] == 0 and last["faces"] == 0
        time.sleep(1.5)  # still away: nothing more, and no second end
        assert [e.event_type for e in seen.events].count("end") == 1
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [(e["event_type"], e.get("end_reason")) for e in lines if e["event_type"] != "update"] \
        == [("start", None), ("end", "gone")]


def test_a_camera_that_goes_away_with_no_violation_open_says_nobody_is_seen(tmp_path,
                                                                            default_model):
    """With a face in view and no violation open, the sinks' state (MQTT's retained `state`
    and `faces`) kept the last frame's face for the whole outage; now, as with one open,
    nobody is seen once the camera has been away for tracking.end_after_s."""
    with _violation_on_a_network_camera(tmp_path, default_model,
                                        tracking={"min_span_s": 60.0}) as (cam, _, seen):
        assert seen.states[-1]["faces"] >= 1
        cam.gone()
        last = _quiet_state_within(seen, 15)
        assert (last["faces"], last["active"]) == (0, 0), seen.states[-3:]
        assert not seen.events


def test_a_restart_whose_camera_never_opens_corrects_what_the_last_run_left_retained(
        tmp_path, monkeypatch):
    """A run killed with a violation open leaves `violations` 1, `faces` 1 and a `state` with
    `active` 1 retained; the next start ends it `restart`, but its counts went out only with a
    frame, so a camera that stayed away (unplugged in the same power cut) left them for good.
    Now the start says nobody is seen and nothing open, published once connected."""
    import threading

    from loop_parts import service_for
    from mqtt_broker import Broker, Subscriber

    from maskd import service
    from maskd.config import Config
    from maskd.mqtt import MqttSink
    from maskd.sources import live_source

    def never_opens():
        raise OSError("no camera (unplugged)")

    monkeypatch.setattr(service, "STATS_EVERY_S", 1.0)
    base = "maskd/pi/door"
    with Broker(tmp_path / "broker") as broker:
        old = Subscriber(broker, ["unused/x"])
        for topic, payload in (("violations", b"1"), ("faces", b"1"), ("state", json.dumps(
                {"faces": 1, "masked": 0, "unmasked": 1, "unjudged": 0, "active": 1}).encode())):
            old.client.publish(f"{base}/{topic}", payload, qos=1, retain=True).wait_for_publish(5)
        old.close()
        cfg = Config.model_validate({"device_id": "pi", "camera": "door",
                                     "state_dir": str(tmp_path / "state"),
                                     "source": {"reopen_min_s": 0.2, "reopen_max_s": 0.5},
                                     "mqtt": {"url": broker.url, "stats_interval_s": 1.0}})
        sink = MqttSink.from_config(cfg, model_name="test")
        svc = service_for(live_source("door", never_opens, cfg.source), sinks=[sink], cfg=cfg)
        runner = threading.Thread(target=svc.run, kwargs={"flush_timeout": 2.0}, daemon=True)
        runner.start()
        sub = Subscriber(broker, [f"{base}/violations", f"{base}/faces", f"{base}/state"])
        try:
            assert sub.wait(lambda ms: {m.topic for m in ms if m.payload == b"0"} >= {
                f"{base}/violations", f"{base}/faces"} and any(
                m.topic == f"{base}/state" and m.json()["faces"] == 0 for m in ms),
                timeout=20), sub.messages
            state = sub.on(f"{base}/state")[-1].json()
            assert (state["faces"], state["active"]) == (0, 0), state
        finally:
            svc.stop()
            runner.join(timeout=20)
            sub.close()
    assert svc.frames == 0


def test_a_violation_across_a_clock_step_back_ends_after_its_start(tmp_path, default_model,
                                                                   monkeypatch):
    """A Pi booted on fake-hwclock's time, an hour late, with a bare face at a real IP camera:
    NTP steps the wall clock back an hour, then the person leaves (the camera goes away). The
    `end` in the JSON lines file said an hour before its `start`; now it is dated on the
    start's clock, with how long the violation lasted and how far the clock stepped."""
    real = time.time
    with _violation_on_a_network_camera(tmp_path, default_model) as (cam, loop, seen):
        started = time.monotonic()
        time.sleep(1.0)
        monkeypatch.setattr(time, "time", lambda: real() - 3600.0)  # NTP's step back
        time.sleep(1.0)
        cam.gone()
        ended = _ends_within(seen, 15)
        lasted = time.monotonic() - started
    monkeypatch.undo()
    assert [e.end_reason for e in ended] == ["gone"], seen.events
    lines = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    start, end = lines[0], lines[-1]
    assert (start["event_type"], start["duration_s"], start["clock_step_s"]) == ("start", 0, 0)
    assert end["event_type"] == "end" and end["end_time"] >= end["start_time"]
    assert abs(end["clock_step_s"] + 3600.0) < 0.5
    assert 1.5 < end["duration_s"] < lasted + 0.5  # the time that passed, to the last sighting
    assert end["end_time"] - end["start_time"] == pytest.approx(end["duration_s"], abs=0.01)


def test_a_camera_whose_picture_freezes_is_lost_and_ends_its_violation_gone(tmp_path,
                                                                              default_model):
    """An IP camera whose encoder hangs with a bare face in view: the stream goes on, each frame
    the same picture. After source.frozen_after_s the camera is lost since the picture froze
    (fps 0, as for a camera away), after tracking.end_after_s more its violation ends `gone`,
    and the still picture starts no other; once the picture moves again, frames flow (was:
    "15 fps", healthy, and the violation active for as long as the picture stayed frozen)."""
    from datetime import datetime

    with _violation_on_a_network_camera(tmp_path, default_model,
                                        frozen_after_s=1.0) as (cam, loop, seen):
        cam.freeze()
        frozen = time.time()
        ended = _ends_within(seen, 15)
        assert [e.end_reason for e in ended] == ["gone"], seen.events
        assert ended[0].end_time <= frozen + 1.5  # its last sighting: the picture froze
        stats = loop.stats()
        assert stats.camera_lost_since and stats.fps == 0.0 and stats.camera_reconnecting
        assert abs(datetime.fromisoformat(stats.camera_lost_since).timestamp() - frozen) < 1.5
        last = _quiet_state_within(seen)
        assert last["active"] == 0 and last["faces"] == 0
        time.sleep(1.5)  # still frozen: nothing more from the still picture
        assert [e.event_type for e in seen.events].count("start") == 1
        frames = loop.frames
        cam.back()
        deadline = time.monotonic() + 10
        # the grabber clears camera_lost_since before its frame reaches the loop: wait for both
        while time.monotonic() < deadline and (loop.stats().camera_lost_since
                                               or loop.frames <= frames):
            time.sleep(0.05)
        assert loop.stats().camera_lost_since is None and loop.frames > frames


@pytest.mark.parametrize("with_mqtt", [False, True], ids=["jsonl", "jsonl+mqtt"])
def test_a_violation_open_at_kill_9_ends_restart_in_every_sink_once(tmp_path, default_model,
                                                                    with_mqtt):
    """kill -9 with a violation open: the next start ends it with reason restart in JSON lines
    (it stayed a start without an end for ever; only MQTT's outbox knew) and in MQTT, once
    each, and a start after that does not end it again."""
    import contextlib

    from mqtt_broker import Broker, Subscriber

    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(Broker(tmp_path / "broker")) if with_mqtt else None
        sub = Subscriber(broker, ["maskd/+/+/violation"]) if broker is not None else None
        if sub is not None:
            stack.callback(sub.close)
        opened, _ = _kill_9_then_start_twice(tmp_path, default_model,
                                             ["--mqtt", broker.url] if broker is not None else [])
        if sub is not None:
            assert sub.wait(lambda ms: sum(m.json()["event_type"] == "end" for m in ms)
                            >= len(opened), timeout=20)
            time.sleep(0.5)
            msgs = [m.json() for m in sub.messages]
            ends = [(m["event_id"], m["end_reason"]) for m in msgs
                    if m["event_type"] == "end" and m["event_id"] in opened]
            assert sorted(ends) == sorted((i, "restart") for i in opened), msgs


@pytest.mark.parametrize(("with_mqtt", "when"),
                         [(False, "1"), (True, "1"), (False, "1+"), (True, "1..10")],
                         ids=["one-error", "one-error-mqtt", "every-read", "start-mqtt"])
def test_a_start_that_cannot_read_the_open_violations_says_so_and_ends_each_once(
        tmp_path, default_model, with_mqtt, when):
    """kill -9 with a violation open, then a start whose reads of open_violations.json fail
    (EIO injected by strace): one I/O error left the violation open until the next start (days,
    for a service), and the warning spoke of a write ('cannot keep the open violations ...
    will not be ended at the next start'). The read is tried again now, so one error is not
    seen; a file that cannot be read is said as such, and each violation still ends once.
    ``start-mqtt``: the start's reads fail (the retries too), the file reads again for the
    outbox's `restart` end: that end was not noted (the file, unread, had not held it), so the
    start after ended the violation a second time (a second `end` in JSON lines)."""
    import contextlib

    from mqtt_broker import Broker
    from test_faults_mqtt import strace_injecting

    from maskd.ledger import LEDGER_FILE

    strace = strace_injecting()
    ledger = tmp_path / "state" / LEDGER_FILE
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(Broker(tmp_path / "broker")) if with_mqtt else None
        opened, err = _kill_9_then_start_twice(
            tmp_path, default_model, ["--mqtt", broker.url] if broker is not None else [],
            first=[strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=read", "-P", str(ledger),
                   "-e", f"inject=read:error=EIO:when={when}"])
    warned = [ln for ln in err.splitlines() if "WARNING maskd.ledger" in ln]
    if when == "1":  # read again: ended at that start, and nothing to say
        assert err.endswith(f"\n{len(opened)} ends in JSON lines") and warned == [], err[-3000:]
        return
    # without MQTT at the start after; with it now, from the outbox, and not again after
    assert err.endswith(f"\n{len(opened) if with_mqtt else 0} ends in JSON lines"), err[-3000:]
    [line] = warned
    now = "now where the MQTT outbox has them (in every sink), else " if with_mqtt else ""
    assert line.endswith(f"WARNING maskd.ledger: cannot read {ledger} (Input/output error): what "
                         f"a killed run left open there is ended {now}at a later start that "
                         "reads it; changes are written once it reads again"), line


def test_a_second_run_of_a_running_camera_on_its_state_dir_is_refused(tmp_path, default_model):
    """Without MQTT no outbox lock stops a second `maskd run` on the state_dir and camera of a
    running one (an operator's trial run with the service's config, MQTT taken out): it took
    the running camera's open violation for one a killed run left, ended it `restart` in its
    own JSON lines and marked it ended in the running one's record. Refused now (78, naming
    the camera and the folder), the record untouched; another camera there still runs."""
    clip, blank = bare_and_blank_clips(tmp_path)
    state = tmp_path / "state"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"state_dir: {state}\ncamera: door\n")
    events, trial = tmp_path / "events.jsonl", tmp_path / "trial.jsonl"
    common = ["--config", str(cfg), "--model", str(default_model), "--detector", "blazeface"]
    proc = subprocess.Popen([sys.executable, "-m", "maskd", "run", "--source", str(clip), "--loop",
                             "--jsonl", str(events), *common],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _until_a_start(proc, events)
        opened = {e["event_id"] for e in map(json.loads, events.read_text().splitlines())}
        r = maskd("run", "--source", str(blank), "--exit-at-end", "--jsonl", str(trial), *common)
        assert r.returncode == 78, r.stderr
        assert f"camera door is running in another maskd process on state_dir {state}" \
            in r.stderr, r.stderr
        assert not trial.exists() or trial.read_text() == ""
        entries = json.loads((state / "open_violations.json").read_text())
        assert opened <= set(entries) and not any(e.get("ended") for e in entries.values())
        r = maskd("run", "--source", str(blank), "--exit-at-end", "--jsonl", str(trial),
                  "--camera", "garage", *common)
        assert r.returncode == 0, r.stderr
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert proc.returncode == 0


def test_the_open_violations_are_kept_only_where_state_dir_is_in_use(tmp_path, default_model):
    """A quick `run --source x --jsonl -` (the quickstart) has no state_dir set and no MQTT: it
    must not write, or warn about, the system's /var/lib/maskd; a set state_dir keeps them."""
    from maskd.config import Config
    from maskd.service import build

    base = {"source": {"kind": "demo"}, "classifier": {"model": str(default_model)},
            "detector": {"kind": "blazeface"}}
    for extra, kept in (({}, False), ({"state_dir": str(tmp_path / "s")}, True),
                        ({"mqtt": {"url": "mqtt://127.0.0.1:1"}, "state_dir": str(tmp_path / "m")},
                         True)):
        cfg = Config.model_validate({**base, **extra})
        assert cfg.keeps_state is kept
        svc = build(cfg, max_frames=1)
        assert (svc.loops[0].ledger is not None) is kept
        svc.run(flush_timeout=0.5)
    assert not Config().keeps_state


def looping_run(source: Path, events: Path, model: Path) -> subprocess.Popen:
    """`maskd run` looping over ``source`` (a clip, a folder) with BlazeFace and ``model``, its
    events in the JSON lines file ``events``, its output piped as text."""
    return subprocess.Popen(
        [sys.executable, "-m", "maskd", "run", "--source", str(source), "--loop", "--jsonl",
         str(events), "--model", str(model), "--detector", "blazeface"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _until_a_start(proc: subprocess.Popen, events: Path) -> None:
    """Wait (up to 120 s) until the running ``proc`` wrote a violation start to ``events``."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if events.exists() and '"start"' in events.read_text():
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1]


def kill_9_at_a_start(proc: subprocess.Popen, events: Path) -> set[str]:
    """SIGKILL the running ``proc`` once it wrote a violation start to ``events``; the ids of
    the violations it left open (started, none ended)."""
    try:
        _until_a_start(proc, events)
        proc.kill()
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed = [json.loads(x) for x in events.read_text().splitlines()]
    opened = {e["event_id"] for e in killed if e["event_type"] == "start"}
    assert opened and not any(e["event_type"] == "end" for e in killed)
    return opened


def bare_and_blank_clips(tmp_path: Path) -> tuple[Path, Path]:
    """Two videos in ``tmp_path``: half a pass of the demo's bare-faced person (a violation
    starts), and 3 blank frames (nothing happens, the run ends)."""
    clip = bare_clip(tmp_path / "bare.mp4")
    blank = tmp_path / "blank.avi"
    writer = cv2.VideoWriter(str(blank), MJPG, FPS, SIZE)
    for _ in range(3):
        writer.write(np.full((SIZE[1], SIZE[0], 3), 90, np.uint8))
    writer.release()
    return clip, blank


def _kill_9_then_start_twice(tmp_path: Path, model: Path, extra: list[str],
                             first: list[str] | None = None) -> tuple[set[str], str]:
    """A run killed with a violation open, then two starts (the first under ``first``: strace,
    say); the JSON lines checked, the ids of the violations it left open and the first start's
    stderr returned."""
    clip, blank = bare_and_blank_clips(tmp_path)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\n")
    events = tmp_path / "events.jsonl"
    common = ["--config", str(cfg), "--jsonl", str(events), "--model", str(model),
              "--detector", "blazeface", *extra]
    opened = kill_9_at_a_start(subprocess.Popen(
        [sys.executable, "-m", "maskd", "run", "--source", str(clip), "--loop", *common],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), events)
    said = []
    for wrap in (first or [], []):  # the second start must not end it again
        r = subprocess.run([*wrap, sys.executable, "-m", "maskd", "run", "--source", str(blank),
                            "--exit-at-end", *common], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        ends = [json.loads(x)["event_type"] for x in events.read_text().splitlines()]
        said.append(f"{r.stderr}\n{ends.count('end')} ends in JSON lines")
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    ends = [e for e in lines if e["event_type"] == "end"]
    assert sorted(e["event_id"] for e in ends) == sorted(opened), lines
    assert all(e["end_reason"] == "restart" and e["end_time"] >= e["start_time"] for e in ends)
    return opened, said[0]


# An OpenCV or FFmpeg line, not maskd's: OpenCV's logger (`[ WARN:0@0.1] global cap.cpp:...`),
# FFmpeg's own (`[tcp @ 0x55..] Connection to tcp://... failed`) and OpenCV's callback that
# prints FFmpeg's lines on stdout when OPENCV_FFMPEG_LOGLEVEL/_DEBUG is set (`[OPENCV:FFMPEG:16]`).
OPENCV_LINE = re.compile(r"^\[(?:\s*(?:WARN|ERROR|INFO|DEBUG)\b|OPENCV:FFMPEG:|[\w-]+ @ 0x)",
                         re.M)


def _reopens(url: str) -> int:
    """The camera's reopen attempts so far, from the status page's /metrics (-1: no answer)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return -1
    found = re.search(r'^maskd_camera_reopens_total\{camera="door"\} (\S+)$', text, re.M)
    return int(float(found.group(1))) if found else -1


@pytest.mark.parametrize("kind", ["clip", "folder", "demo"])
def test_a_looping_clips_replays_are_loops_in_the_status_not_reopens(tmp_path, default_model,
                                                                      kind):
    """A looping file's replays are counted as `loops` in /api/status (docs/service.md: the
    MQTT stats carry the same LoopStats), not as a live camera's reopens (was: reopens grew by
    thousands a day with no camera trouble; then loops stayed 0 where the loop's stats left
    them out; a looping folder's and the looping demo's stayed 0 after that)."""
    import urllib.request

    from tools.mosquitto import free_port

    _, blank = bare_and_blank_clips(tmp_path)  # 3 frames a pass
    if kind == "folder":
        blank = tmp_path / "images"
        blank.mkdir()
        for i in range(3):
            cv2.imwrite(str(blank / f"{i}.png"), np.full((SIZE[1], SIZE[0], 3), 90, np.uint8))
    elif kind == "demo":
        blank = Path("demo")  # 120 frames a pass, as fast as it goes (MASKD_DEMO_FAST)
    page = f"127.0.0.1:{free_port()}"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"camera: door\npreview:\n  http: {page}\n")
    proc = subprocess.Popen([sys.executable, "-m", "maskd", "run", "--config", str(cfg),
                             "--source", str(blank), "--loop", "--model", str(default_model),
                             "--detector", "blazeface"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        cam: dict = {}
        deadline = time.monotonic() + 120
        while cam.get("loops", 0) < 3 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
            # IndexError: a page asked before its camera joined it (seen once in CI)
            with contextlib.suppress(OSError, ValueError, IndexError):
                with urllib.request.urlopen(f"http://{page}/api/status", timeout=5) as reply:
                    cam = json.loads(reply.read())["cameras"][0]
        assert proc.poll() is None and cam.get("loops", 0) >= 3, cam
        assert cam["reopens"] == 0 and cam["frames"] >= 3 * cam["loops"], cam
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def _run_until_reopened(tmp_path: Path, model: Path, uri: str, times: int,
                        env: dict[str, str] | None = None,
                        started: Callable[[], None] | None = None) -> tuple[str, str]:
    """A real `maskd run` reading ``uri`` until it has tried to reopen it ``times`` times, then
    SIGTERM; its (stdout, stderr). ``env`` adds to an environment without OpenCV's variables;
    ``started`` runs once the process has come up (its status page answers)."""
    from tools.mosquitto import free_port

    page = f"127.0.0.1:{free_port()}"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"camera: door\nsource:\n  uri: {uri}\n  reopen_min_s: 0.1\n"
                   f"  reopen_max_s: 0.2\npreview:\n  http: {page}\n")
    base = {k: v for k, v in os.environ.items() if not k.startswith("OPENCV_")}
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("w") as o, err.open("w") as e:
        proc = subprocess.Popen([sys.executable, "-m", "maskd", "run", "--config", str(cfg),
                                 "--model", str(model), "--detector", "blazeface"],
                                stdout=o, stderr=e, env={**base, **(env or {})})
        try:
            deadline = time.monotonic() + 120
            while _reopens(f"http://{page}") < 0 and proc.poll() is None:
                assert time.monotonic() < deadline, err.read_text()
                time.sleep(0.1)
            if started is not None:
                started()
            while _reopens(f"http://{page}") < times and proc.poll() is None:
                assert time.monotonic() < deadline, err.read_text()
                time.sleep(0.1)
            assert proc.poll() is None, err.read_text()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, err.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return out.read_text(), err.read_text()


REOPENS = 6  # open attempts of a camera away that each printed a line or two before


def test_a_camera_that_is_away_fills_no_journal_with_opencv_and_ffmpeg_lines(tmp_path,
                                                                             default_model):
    """Every reconnect of an unreachable network camera made FFmpeg print `Connection refused`
    and OpenCV a `[ WARN]` line on stderr (the journal: ~5,700 lines a day at the 30 s backoff);
    maskd gives OpenCV and FFmpeg quiet defaults, and says it itself, once a minute."""
    from tools.mosquitto import free_port

    out, err = _run_until_reopened(tmp_path, default_model,
                                   f"http://127.0.0.1:{free_port()}/stream.mjpg", REOPENS)
    assert OPENCV_LINE.findall(err + out) == [], err
    # maskd's own WARNING, rate-limited (the stats line at the stop names the outage too)
    assert sum("WARNING maskd.sources:" in ln and "cannot open (OpenCV cannot open" in ln
               for ln in err.splitlines()) == 1, err


def test_an_ip_camera_that_stops_fills_no_journal_with_opencv_and_ffmpeg_lines(tmp_path,
                                                                               default_model):
    """A real MJPEG camera (tools/ipcamera.py) read, then gone (its connection closed, new ones
    refused): no OpenCV or FFmpeg line over the reconnects either."""
    from tools.ipcamera import IpCamera

    with IpCamera(lambda i: np.full((240, 320, 3), i % 200, np.uint8), fps=10) as cam:
        out, err = _run_until_reopened(tmp_path, default_model, cam.url, REOPENS,
                                       started=cam.gone)
        assert cam.connections >= 1 and cam.state == "gone"
    assert OPENCV_LINE.findall(err + out) == [], err
    assert "cannot open (OpenCV cannot open" in err, err


@pytest.mark.parametrize("variable", ["OPENCV_FFMPEG_LOGLEVEL=16", "OPENCV_FFMPEG_DEBUG=1"])
def test_ffmpegs_lines_come_back_when_the_environment_asks_for_them(tmp_path, default_model,
                                                                    variable):
    """maskd's quiet levels are defaults: a unit's drop-in that sets one of OpenCV's variables
    gets FFmpeg's lines again (on stdout, through OpenCV's callback), one per attempt at least."""
    from tools.mosquitto import free_port

    name, value = variable.split("=")
    out, err = _run_until_reopened(tmp_path, default_model,
                                   f"http://127.0.0.1:{free_port()}/stream.mjpg", REOPENS,
                                   env={name: value})
    refused = [x for x in OPENCV_LINE.findall(out) if x.startswith("[OPENCV:FFMPEG:")]
    assert out.count("Connection refused") >= REOPENS and refused, out


def test_opencvs_quiet_defaults_give_way_to_what_the_environment_says():
    """Each default is set only where neither it nor a debug switch of the same part is: a
    `OPENCV_VIDEOIO_DEBUG=1` drop-in must not be silenced by maskd's OPENCV_LOG_LEVEL."""
    from maskd.env import OPENCV_DEFAULTS, quiet_opencv

    defaults = {name: value for name, value, _ in OPENCV_DEFAULTS}
    env: dict[str, str] = {}
    quiet_opencv(env)
    assert env == defaults
    for name, _, switches in OPENCV_DEFAULTS:
        for given in (name, *switches):
            env = {given: "1"}
            quiet_opencv(env)
            assert env == {given: "1", **{k: v for k, v in defaults.items() if k != name}}


def coral_config(tmp_path: Path) -> Path:
    """The shipped classifier on the Coral (the stand-in's delegate leaves it to the CPU)."""
    cfg = tmp_path / "coral.yaml"
    cfg.write_text("source: {kind: demo}\ndetector: {kind: blazeface}\n"
                   "classifier: {edgetpu: true}\n")
    return cfg


def test_a_coral_missing_at_start_is_waited_for_then_exit_75(tmp_path, monkeypatch, capsys,
                                                             caplog):
    """libedgetpu there, no Coral answering: `run` exited 78, which the unit does not restart,
    so the door had no detection until someone logged in. Now one ERROR naming the Coral, the
    systemd status says what it waits for, and after the wait exit 75 (one line) for a restart."""
    from coral import FakeCoral
    from test_notify import NotifySocket

    from maskd import tflite
    from maskd.cli import build_parser
    from maskd.commands import run as run_cmd

    fake = FakeCoral(tmp_path / "lib")
    monkeypatch.setattr(tflite, "EDGETPU_LIB", str(fake.lib))  # in-process: by its path
    monkeypatch.setenv("FAKE_CORAL_PLUGGED", str(fake.plugged))
    monkeypatch.setattr(tflite, "CORAL_WAIT_S", 1.5)
    monkeypatch.setattr(tflite, "CORAL_RETRY_S", 0.2)
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", sock.address)
    t0 = time.monotonic()
    try:
        with caplog.at_level(logging.ERROR, logger="maskd.tflite"):
            rc = run_cmd.main(build_parser().parse_args(
                ["run", "--config", str(coral_config(tmp_path))]))
        took = time.monotonic() - t0
        statuses = [m.get("STATUS") for m in sock.drain(0.2)]
    finally:
        sock.close()
    assert rc == 75 and 1.5 <= took < 30, (rc, took)
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("maskd run:")]
    says = (f"EdgeTPU requested but no Coral answers (Failed to load delegate from {fake.lib}): "
            "plug in the USB Accelerator (or check the PCIe/M.2 driver and permissions); "
            "`maskd run` waits up to 1.5 s for it, asking every 0.2 s, then exit 75, systemd "
            "starts maskd again (is the Coral plugged in?)")
    assert err == [f"maskd run: classifier.edgetpu: {says} (none after 1.5 s)"], err
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"classifier.edgetpu: {says}"], errors
    assert len(statuses) == 1 and statuses[0].startswith(
        "waiting for the Coral (classifier.edgetpu) since "), statuses


def test_a_coral_plugged_in_while_run_waits_is_used(tmp_path):
    """The real `maskd run` finds the stand-in by its real name (LD_LIBRARY_PATH), waits while
    it answers "no device", and starts detecting once it is plugged in, within one retry."""
    from coral import FakeCoral

    from maskd.classifier import default_model_path
    from maskd.tflite import CORAL_RETRY_S

    fake = FakeCoral(tmp_path / "lib")
    log = tmp_path / "stderr"
    no_coral = ("ERROR maskd.tflite: classifier.edgetpu: EdgeTPU requested but no Coral answers "
                "(Failed to load delegate from libedgetpu.so.1)")
    with log.open("w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "maskd", "run", "--config",
                                 str(coral_config(tmp_path)), "--max-frames", "3"],
                                stderr=stderr, env=fake.env())
    try:
        # plugged once run has found none (was: at a fixed 2 s, before a start slowed by a
        # loaded machine had looked, so it never waited)
        deadline = time.monotonic() + 60
        while no_coral not in log.read_text() and proc.poll() is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        fake.plug()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = log.read_text()
    assert proc.returncode == 0, err

    def logged_at(text: str) -> float:  # the log line's own time (asctime), in seconds
        line = next(ln for ln in err.splitlines() if text in ln)
        return time.mktime(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + int(line[20:23]) / 1000

    waited = logged_at("the Coral answers now; starting") - logged_at(no_coral)
    assert 0.5 < waited < 2.0 + CORAL_RETRY_S + 1.0, (waited, err)  # plugged at once, one retry
    assert "stopping: --max-frames 3 reached" in err
    # the shipped model is not compiled for the EdgeTPU: said, as check-config says it
    assert (f"WARNING maskd.tflite: {default_model_path()} is not compiled for the EdgeTPU (no "
            "edgetpu-custom-op in it), so it runs on the CPU although the Coral is asked for") in err


def test_a_stop_while_waiting_for_the_coral_is_a_clean_stop_at_once(tmp_path):
    """SIGTERM (systemctl stop) while `run` waits for a Coral: exit 0 within a second, not at
    the end of the 5 s between two tries."""
    from coral import FakeCoral

    fake = FakeCoral(tmp_path / "lib")
    proc = subprocess.Popen([sys.executable, "-m", "maskd", "run", "--config",
                             str(coral_config(tmp_path))],
                            stderr=subprocess.PIPE, text=True, env=fake.env())
    assert proc.stderr is not None
    for line in proc.stderr:  # the wait has begun: the first try found no Coral
        if "ERROR maskd.tflite: classifier.edgetpu: EdgeTPU requested but no Coral" in line:
            break
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and time.monotonic() - t0 < 1.5, (time.monotonic() - t0, err)
    assert "SIGTERM received while starting: stopping" in err


def _coral_unplugged_at_a_start(fake, tmp_path: Path, mqtt_url: str, aborts: bool = False
                                ) -> tuple[list[str], int, str]:
    """The real `maskd run` (device pi, camera door: the looping demo, the classifier on the
    stand-in Coral ``fake``, JSON lines and state in ``tmp_path``) until its first violation
    starts, then the Coral unplugged (``aborts``: its library then aborts the process): its
    command line, exit status and stderr."""
    cfg, events = tmp_path / "coral.yaml", tmp_path / "events.jsonl"
    cfg.write_text("device_id: pi\ncamera: door\nsource: {kind: demo, loop: true}\n"
                   "detector: {kind: blazeface}\nclassifier: {edgetpu: true}\n"
                   f"jsonl: {{path: {events}}}\nstate_dir: {tmp_path / 'state'}\n"
                   f"mqtt: {{url: '{mqtt_url}'}}\n")
    run = [sys.executable, "-m", "maskd", "run", "--config", str(cfg), "--flush-timeout", "0.5"]
    proc = subprocess.Popen(run, stderr=subprocess.PIPE, text=True, env=fake.env(aborts),
                            preexec_fn=no_core_dump)
    try:
        _until_a_start(proc, events)
        fake.unplug()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return run, proc.returncode, err


def test_a_coral_lost_while_running_is_one_error_line_and_exit_75_losing_nothing(tmp_path):
    """The Coral pulled out (or reset by a USB brown-out) while the real `maskd run` detects,
    a violation open: its next invoke failed, and the loop's crash path said so as a traceback
    ("run loop failed") and exited 70. Now one ERROR line says the Coral stopped answering and
    what happens next, the open violation ends in JSON lines and in the MQTT outbox (the broker
    away: kept there for the next start), and the exit is 75, so systemd's restart lands in
    the start's wait for the Coral; that start, the Coral back, detects again."""
    import sqlite3

    from coral import FakeCoral

    from maskd.clock import boot_id
    from maskd.commands.run import CORAL_LOST_FILE
    from maskd.tflite import CORAL_WAIT_S
    from tools.mosquitto import free_port

    fake = FakeCoral(tmp_path / "lib")
    fake.plug()
    events, state = tmp_path / "events.jsonl", tmp_path / "state"
    run, rc, err = _coral_unplugged_at_a_start(fake, tmp_path, f"mqtt://127.0.0.1:{free_port()}")
    assert rc == 75, err
    assert "Traceback" not in err, err
    errors = [ln for ln in err.splitlines() if " ERROR " in ln and "maskd.mqtt" not in ln]
    assert len(errors) == 1 and (
        "ERROR maskd.service: door: the classifier's Coral stopped answering (Failed to "
        "execute request: USB transfer error (stand-in: the Coral was unplugged). Node number"
        in errors[0]) and errors[0].endswith(
        "unplugged, or reset (a USB brown-out: check the power supply): exit 75, systemd starts "
        f"maskd again, and the start waits up to {CORAL_WAIT_S:g} s for the Coral"), errors
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    started = {e["event_id"] for e in lines if e["event_type"] == "start"}
    ended = {e["event_id"]: e["end_reason"] for e in lines if e["event_type"] == "end"}
    assert started and ended == dict.fromkeys(started, "shutdown"), lines
    with contextlib.closing(sqlite3.connect(f"file:{state / 'outbox.sqlite3'}?mode=ro",
                                            uri=True)) as db:
        kept = [json.loads(p) for (p,) in db.execute(
            "SELECT payload FROM outbox WHERE topic LIKE '%/violation' ORDER BY id")]
    assert {(e["event_id"], e["event_type"]) for e in kept} >= (
        {(i, "start") for i in started} | {(i, "end") for i in started}), kept
    assert json.loads((state / "open_violations.json").read_text()) == {}  # none left open
    note = state / CORAL_LOST_FILE  # when this run started, for the restart's spacing
    assert json.loads(note.read_text())["boot_id"] == boot_id()
    note.unlink()  # as a minute later (the spacing has its own test below)
    fake.plug()  # the restart, the Coral back: detects again
    r = subprocess.run([*run, "--max-frames", "3"], capture_output=True, text=True,
                       timeout=120, env=fake.env())
    assert r.returncode == 0 and "stopping: --max-frames 3 reached" in r.stderr, r.stderr


def no_core_dump() -> None:
    """In the child: a crash leaves no core file behind (an abort made on purpose)."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def test_an_abort_inside_libedgetpu_leaves_the_note_that_spaces_the_next_start(tmp_path):
    """libedgetpu's failed checks abort the process (SIGABRT): nothing of maskd's runs then,
    so the run wrote no note and the restarts after it were not spaced: five in five minutes
    met the unit's start limit. Now the run notes at its start that it uses the Coral, and an
    abrupt end leaves that note for the next start (its waiting has its own test below); the
    journal gets the Python stacks (faulthandler)."""
    from coral import FakeCoral

    from maskd.clock import boot_id, system_clock
    from maskd.commands.run import CORAL_LOST_FILE
    from tools.mosquitto import free_port

    fake = FakeCoral(tmp_path / "lib")
    fake.plug()
    t0 = system_clock()[1]
    _, rc, err = _coral_unplugged_at_a_start(fake, tmp_path, f"mqtt://127.0.0.1:{free_port()}",
                                             aborts=True)
    assert rc == -signal.SIGABRT, err
    assert "Fatal Python error: Aborted" in err and " in predict" in err, err
    note = json.loads((tmp_path / "state" / CORAL_LOST_FILE).read_text())
    assert note["boot_id"] == boot_id() and note["running"] is True, note
    assert t0 - 5 < note["started"] < t0 + 5, (note, t0)


def test_a_coral_lost_while_running_says_so_on_mqtt_and_at_the_next_start(tmp_path):
    """The Coral lost under the real `maskd run` with a real broker: the last status/detail
    says `clean: false`, `stop: coral_lost` and the runtime's words, and the restart's online
    detail `previous_stop: coral_lost`, so Home Assistant and the building's operators can tell
    the restart from an ordinary one (was: `clean: true`, then `previous_stop: clean`, as after
    `systemctl restart`; only the journal told)."""
    from coral import FakeCoral
    from mqtt_broker import Broker, Subscriber

    from maskd.commands.run import CORAL_LOST_FILE

    fake = FakeCoral(tmp_path / "lib")
    fake.plug()
    detail = "maskd/pi/door/status/detail"  # the single-camera layout's
    with Broker(tmp_path / "broker") as b:
        sub = Subscriber(b, [detail])
        run, rc, err = _coral_unplugged_at_a_start(fake, tmp_path, b.url)
        assert rc == 75, err
        assert sub.wait(lambda ms: any(m.json()["state"] == "offline" for m in ms), 10)
        stopped = sub.on(detail)[-1].json()
        assert (stopped["clean"], stopped["stop"]) == (False, "coral_lost"), stopped
        assert stopped["why"].startswith("door: the classifier's Coral stopped answering ("), stopped
        said = len(sub.on(detail))
        (tmp_path / "state" / CORAL_LOST_FILE).unlink()  # as a minute later (own test below)
        fake.plug()  # the restart, the Coral back
        r = subprocess.run([*run, "--max-frames", "3"], capture_output=True, text=True,
                           timeout=120, env=fake.env())
        assert r.returncode == 0, r.stderr
        assert sub.wait(lambda ms: len(ms) >= said + 2, 10)
        online, offline = (m.json() for m in sub.on(detail)[said:said + 2])
        sub.close()
    assert (online["state"], online["previous_stop"]) == ("online", "coral_lost"), online
    assert (offline["clean"], offline["stop"], offline["why"]) == (
        True, "clean", "door: --max-frames 3 reached"), offline


def test_a_start_more_than_a_minute_after_a_lost_coral_does_not_wait(tmp_path, caplog):
    """The note of a run that lost its Coral over a minute ago (this boot) asks for no wait:
    no 'this start waits -N s' line, no STATUS, and the note is gone."""
    from maskd.clock import boot_id, system_clock
    from maskd.commands.run import CORAL_LOST_FILE, CORAL_RESTART_SPACING_S, space_after_coral_loss
    from maskd.config import parse_config

    cfg = parse_config({"state_dir": str(tmp_path), "mqtt": {"url": "mqtt://127.0.0.1:1"}})
    note = tmp_path / CORAL_LOST_FILE
    note.write_text(json.dumps({"boot_id": boot_id(),
                                "started": system_clock()[1] - CORAL_RESTART_SPACING_S - 30}))
    said: list[str] = []
    with caplog.at_level(logging.INFO, logger="maskd"):
        space_after_coral_loss(cfg, said.append, lambda: False)
    assert said == [] and "waits" not in caplog.text and not note.exists()


def test_a_start_right_after_a_lost_coral_waits_out_a_minute_from_the_start_before(tmp_path):
    """A failing power supply resets the Coral again and again: each loss is exit 75 and a
    restart, and five within five minutes met the unit's start limit, which left maskd failed
    for good (no detection until someone logged in). The run that lost its Coral leaves its
    start in state_dir, and a start within a minute of it waits out the rest, saying so (one
    warning, systemd's STATUS); so does the note an abrupt end leaves (a run with the Coral
    notes its start); a note from another boot is no reason to wait."""
    from coral import FakeCoral
    from test_notify import NotifySocket

    from maskd.clock import boot_id, system_clock
    from maskd.commands.run import CORAL_LOST_FILE, CORAL_RESTART_SPACING_S

    fake = FakeCoral(tmp_path / "lib")
    fake.plug()
    state = tmp_path / "state"
    state.mkdir()
    cfg = tmp_path / "coral-state.yaml"
    cfg.write_text(coral_config(tmp_path).read_text() + f"state_dir: {state}\n")
    note = state / CORAL_LOST_FILE
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    took: dict[str, float] = {}
    before = {"lost": "lost its Coral",  # written by the run that lost it
              "running": "ended abruptly while it used the Coral (an abort inside libedgetpu, "
                         "or a kill: the journal says which)"}  # left by an abrupt end
    try:
        for boot, how in (("another boot", "lost"), (boot_id(), "lost"), (boot_id(), "running")):
            note.write_text(json.dumps({"boot_id": boot,
                                        "started": system_clock()[1] - CORAL_RESTART_SPACING_S + 12}
                                       | ({"running": True} if how == "running" else {})))
            t0 = time.monotonic()
            r = subprocess.run([sys.executable, "-m", "maskd", "run", "--config", str(cfg),
                                "--max-frames", "3"], capture_output=True, text=True,
                               timeout=120, env={**fake.env(), "NOTIFY_SOCKET": sock.address})
            took[f"{boot} {how}"] = time.monotonic() - t0
            statuses = [m.get("STATUS") or "" for m in sock.drain(0.2)]
            assert r.returncode == 0 and not note.exists(), r.stderr  # a clean end: none left
            waits = [ln for ln in r.stderr.splitlines() if "this start waits" in ln]
            if boot != boot_id():
                assert waits == [] and not any("lost Coral" in s for s in statuses), r.stderr
                continue
            [line] = waits
            assert f"WARNING maskd: the run before {before[how]}, and it started " in line and (
                line.endswith("so that restarts after a lost Coral come a minute apart and never "
                              "meet systemd's start limit")), line
            assert [s for s in statuses if "lost Coral" in s][0].endswith(
                " s after the lost Coral (restarts a minute apart)"), statuses
    finally:
        sock.close()
    # about 12 s less the start-up (seconds on a loaded machine)
    for how in before:
        assert took[f"{boot_id()} {how}"] - took["another boot lost"] > 2.5, took


def test_with_several_cameras_a_lost_coral_stops_every_camera_with_75(tmp_path, monkeypatch,
                                                                      caplog):
    """The cameras of a `cameras:` map share the one Coral: the first loop to find it gone
    stops the others too, as a crashed loop does (one with nobody in view would run on, its
    classifier idle, and the process with it: no restart, and the camera that lost it without
    detection for good), each ends what it had open, and the process exits 75; no traceback."""
    import threading

    from coral import FakeCoral

    from maskd import tflite
    from maskd.config import Config
    from maskd.service import build

    fake = FakeCoral(tmp_path / "lib")
    fake.plug()
    monkeypatch.setattr(tflite, "EDGETPU_LIB", str(fake.lib))  # in-process: by its path
    monkeypatch.setenv("FAKE_CORAL_PLUGGED", str(fake.plugged))
    events, empty = tmp_path / "events.jsonl", tmp_path / "empty"
    empty.mkdir()
    cv2.imwrite(str(empty / "hall.png"), np.full((SIZE[1], SIZE[0], 3), 90, np.uint8))
    svc = build(Config.model_validate({  # door2: nobody in view, its classifier never runs
        "cameras": {"door": {"source": {"kind": "demo", "loop": True}},
                    "door2": {"source": {"kind": "images", "uri": str(empty), "loop": True}}},
        "detector": {"kind": "blazeface"},
        "classifier": {"edgetpu": True}, "jsonl": {"path": str(events)}}))
    done: list[int] = []
    runner = threading.Thread(target=lambda: done.append(svc.run(flush_timeout=0.5)),
                              daemon=True)
    with caplog.at_level(logging.INFO, logger="maskd.service"):
        runner.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (
                events.exists() and '"start"' in events.read_text()):
            time.sleep(0.05)
        fake.unplug()
        runner.join(60)
        if runner.is_alive():
            svc.stop()
            runner.join(20)
    assert done == [75], caplog.text
    assert all(loop.finished.is_set() for loop in svc.loops)
    assert [loop.stop_reason for loop in svc.loops] == ["the Coral stopped answering",
                                                        "camera door lost the Coral"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].startswith(
        "door: the classifier's Coral stopped answering"), errors
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    started = {e["event_id"] for e in lines if e["event_type"] == "start"}
    assert started and {e["event_id"] for e in lines if e["event_type"] == "end"} == started


def test_a_folder_of_many_sizes_says_the_size_change_once_a_minute(tmp_path):
    """A folder of photos of many sizes logged 'the frame size changed' on nearly every frame
    (97 lines in 100 frames of scenes-dev; a looping folder without end)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(8):
        cv2.imwrite(str(folder / f"{i}.jpg"), np.full((120 + 40 * (i % 2), 160, 3), 90, np.uint8))
    r = maskd("run", "--source", str(folder), "--exit-at-end", "--jsonl", str(tmp_path / "e.jsonl"))
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stderr.splitlines() if "the frame size changed" in line]
    assert len(said) == 1, said


def test_a_picture_is_not_classified_afresh_on_every_frame(tmp_path, scenes_dir):
    """With tracking.static_after_s a bare-faced poster becomes a picture (no votes, no event),
    and was then classified afresh on nearly every frame (134 of 150, against 38 without the
    setting): the cache refused it because its label never matched its state."""
    photo = cv2.imread(str(scenes_dir / "images" / "maksssksksss757.jpg"))
    canvas = np.full((480, 640, 3), (90, 110, 100), np.uint8)
    canvas[40:440, 170:471] = cv2.resize(photo, (301, 400))
    poster = tmp_path / "poster.avi"
    w = cv2.VideoWriter(str(poster), cv2.VideoWriter_fourcc(*"MJPG"), 15, (640, 480))
    for _ in range(150):
        w.write(canvas)
    w.release()
    classified = {}
    for name, text in (("plain", ""), ("static", "tracking: {static_after_s: 2}\n")):
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(text or "{}\n")
        r = maskd("run", "--config", str(cfg), "--source", str(poster), "--exit-at-end",
                  "--jsonl", str(tmp_path / f"{name}.jsonl"))
        assert r.returncode == 0, r.stderr
        classified[name] = int(re.findall(r"classified (\d+) cached", r.stderr)[-1])
        if name == "static":
            assert "treated as a picture" in r.stderr, r.stderr[-2000:]
    assert classified["static"] <= classified["plain"], classified


@pytest.mark.parametrize("how", [["--exit-at-end"], ["--loop", "--max-frames", "3"]])
def test_a_folder_slower_than_end_after_s_keeps_its_first_track(tmp_path, scenes_dir, how):
    """At source.fps 0.25 (one photo every 4 s, end_after_s 3) the first interval had no
    usual interval to compare with and counted as a gap: the first track was dropped ('no frame
    for 4.0 s ... tracked afresh', though the folder gave every frame) and no event came.
    Looping, so in real time (frames stamped with the time since boot as a camera's), it was
    dropped again: only a live camera's first interval can be a stall."""
    folder = tmp_path / "slow"
    folder.mkdir()
    for n in "abc":
        shutil.copy(scenes_dir / "images" / "maksssksksss757.jpg", folder / f"{n}.jpg")
    cfg = tmp_path / "slow.yaml"
    cfg.write_text("source: {fps: 0.25}\n")
    env = {k: v for k, v in os.environ.items() if k != "MASKD_DEMO_FAST"}
    r = maskd("run", "--config", str(cfg), "--source", str(folder), *how, "--jsonl", "-",
              env=env)
    assert r.returncode == 0, r.stderr
    assert "tracked afresh" not in r.stderr, r.stderr[-2000:]
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["event_type"] for e in events] == ["start", "end"], events


def test_a_restart_end_given_with_mqtt_off_is_not_given_again_when_mqtt_is_back(
        tmp_path, default_model):
    """A run with MQTT killed with a violation open (the broker away, so the outbox keeps its
    record), a run with MQTT switched off (ends it `restart` in JSON lines), then MQTT back on:
    the outbox ends it in MQTT, but JSON lines must not get a second `end` (was: the outbox's
    record was taken for an older version's and ended again in every sink)."""
    clip, blank = bare_and_blank_clips(tmp_path)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\n")
    events = tmp_path / "events.jsonl"
    common = ["--config", str(cfg), "--jsonl", str(events), "--model", str(default_model),
              "--detector", "blazeface"]
    away = ["--mqtt", "mqtt://127.0.0.1:1", "--flush-timeout", "0.5"]
    opened = kill_9_at_a_start(subprocess.Popen(
        [sys.executable, "-m", "maskd", "run", "--source", str(clip), "--loop", *common, *away],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), events)
    r = maskd("run", "--source", str(blank), "--exit-at-end", *common)  # MQTT off
    assert r.returncode == 0, r.stderr
    for _ in range(2):  # MQTT on again, twice
        r = maskd("run", "--source", str(blank), "--exit-at-end", *common, *away)
        assert r.returncode == 75, r.stderr  # the events wait in the outbox for the broker
    ends = [e for e in map(json.loads, events.read_text().splitlines())
            if e["event_type"] == "end"]
    assert sorted(e["event_id"] for e in ends) == sorted(opened), ends


def test_a_schedule_window_that_ends_while_the_camera_is_away_turns_detection_off(
        tmp_path, default_model, caplog):
    """A window's end passes during a network camera's outage: detection is off by the wall
    clock then, as it would be with frames (the sinks hear it: Home Assistant's detection
    switch and `detect/state`), not only once a frame comes back, which after a long outage
    showed detection ON for hours outside the schedule."""
    from datetime import datetime

    from maskd import schedule
    from maskd.schedule import parse_time

    caplog.set_level(logging.INFO, logger="maskd.service")
    with _violation_on_a_network_camera(tmp_path, default_model,
                                        tracking={"min_span_s": 60.0}) as (cam, loop, seen):
        assert seen.states[-1]["detect_enabled"]
        cam.gone()
        today = datetime.now().weekday()  # the window ends now: it covers every other day
        loop._windows = [schedule.Window(tuple(d for d in range(7) if d != today),
                                         parse_time("00:00"), parse_time("24:00"))]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and seen.states[-1]["detect_enabled"]:
            time.sleep(0.05)
        assert cam.state == "gone" and loop.stats().camera_lost_since
        assert not seen.states[-1]["detect_enabled"], seen.states[-3:]
        assert loop.control.in_force == "schedule"
    assert "door: schedule turns detection off" in caplog.text


def test_a_schedule_window_that_ends_while_the_camera_is_away_and_the_switch_is_off_is_told(
        tmp_path, default_model):
    """The same with the operator's switch OFF: detection stays off, but what the sinks say
    of the schedule (MQTT's `detect/attributes`, `schedule: false`) was told only when a frame
    came back, the state being told while away only when detection turned."""
    from datetime import datetime

    from maskd import schedule
    from maskd.schedule import parse_time

    with _violation_on_a_network_camera(tmp_path, default_model,
                                        tracking={"min_span_s": 60.0}) as (cam, loop, seen):
        heard: list[bool] = []
        seen.on_state = lambda state: heard.append(loop.control.scheduled)  # type: ignore
        loop.control.switch = False
        cam.gone()
        deadline = time.monotonic() + 20
        told = -1  # until the camera is lost and the faces gone end (end_after_s) are told
        while time.monotonic() < deadline and (told != len(heard)
                                               or not loop.stats().camera_lost_since):
            told = len(heard)
            time.sleep(2.0)
        assert loop.stats().camera_lost_since and told == len(heard)
        heard.clear()
        today = datetime.now().weekday()  # the window ends now: it covers every other day
        loop._windows = [schedule.Window(tuple(d for d in range(7) if d != today),
                                         parse_time("00:00"), parse_time("24:00"))]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and False not in heard:
            time.sleep(0.05)
        assert False in heard, heard
        assert loop.control.in_force == "switch" and not loop.control.scheduled


def test_a_looping_file_emptied_mid_violation_ends_it_gone_and_plays_on(tmp_path, default_model):
    """A looping clip emptied while a violation is open idles and is tried again until it
    plays: its violation ended `shutdown`, which says maskd stopped, while it went on and
    raised the next violations of the file put back; it ends `gone` (whoever was in view
    left, as when a camera is lost)."""
    clip = bare_clip(tmp_path / "bare.avi", "MJPG")
    kept = clip.read_bytes()
    events = tmp_path / "events.jsonl"
    proc = looping_run(clip, events, default_model)
    seen = ""

    def wait_for(text: str) -> None:
        nonlocal seen
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and text not in seen and proc.poll() is None:
            seen += proc.stderr.readline()
        assert text in seen, seen

    try:
        _until_a_start(proc, events)
        clip.write_bytes(b"")
        wait_for("cannot loop")
        clip.write_bytes(kept)
        wait_for("plays again")
        played_on = len(events.read_text().splitlines())
        while len(events.read_text().splitlines()) == played_on and proc.poll() is None:
            time.sleep(0.05)  # the file put back raises its violations again
        before_stop = [json.loads(x) for x in events.read_text().splitlines()]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, seen + err
    ends = [e["end_reason"] for e in before_stop if e["event_type"] == "end"]
    assert ends and set(ends) == {"gone"}, ends



@contextlib.contextmanager
def disk_failing(proc: subprocess.Popen, paths: list[Path], calls: str, tmp_path: Path):
    """While inside: ``calls`` (strace's syscall names) on ``paths`` fail with EIO in the
    running ``proc`` (strace attached, then detached: the disk reads again)."""
    from test_faults_mqtt import strace_injecting

    tracer = subprocess.Popen(
        [strace_injecting(), "-f", "-o", str(tmp_path / "strace.log"), "-e", f"trace={calls}",
         *(a for p in paths for a in ("-P", str(p))), "-e", f"inject={calls}:error=EIO", "-p",
         str(proc.pid)],
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while "attached" not in (tracer.stderr.readline() if tracer.stderr else ""):
            assert time.monotonic() < deadline and tracer.poll() is None, "strace did not attach"
        yield
    finally:
        tracer.terminate()
        tracer.wait(10)


def _bare_folder(tmp_path: Path) -> Path:
    """A folder of the demo's bare-faced frames, one in three."""
    folder = tmp_path / "faces"
    folder.mkdir()
    demo = DemoSource()
    for i in range(0, demo.frames_per_pass // 2, 3):
        cv2.imwrite(str(folder / f"f{i:04d}.jpg"), demo.render(i))
    return folder


@pytest.mark.parametrize("case", ["folder-lookup", "clip-reads", "folder-images"])
def test_a_looping_source_whose_disk_fails_a_while_idles_and_plays_again(
        tmp_path, default_model, case):
    """A looping source on a stick pulled out or a card with passing I/O errors (EIO,
    injected by strace once the loop runs; the files as they were).
    - folder-lookup: the folder's own look-up fails where a pass ends. The loop crashed
      (`the loop failed: OSError: [Errno 5] ...`, exit 70, every open violation ended
      `shutdown`); it is a source that cannot loop, said so and tried again until it plays.
    - clip-reads: 'cannot loop: ... (Input/output error); trying it again until it plays',
      but it was tried again only once the file changed on disk, so it never played again.
    - folder-images: 'none of its images can be read', and the same images were tried again
      only once one changed on disk. The images that played, unchanged, are read again once
      one of them reads (the first in order a broken one, never read: the next that reads)."""
    from test_cameras import read_until, stop

    if case == "clip-reads":
        source = bare_clip(tmp_path / "bare.avi", "MJPG")
        failing, calls, idle = [source], "read,pread64", "idle, trying it again until it plays"
    else:
        source = _bare_folder(tmp_path)
        failing, calls, idle = (
            ([source], "newfstatat,statx,openat", "idle, trying it again until it plays")
            if case == "folder-lookup" else
            (sorted(source.iterdir()), "openat,read",
             "none of its images can be read; idle, trying it again"))
        if case == "folder-images":
            (source / "a-cut-short.jpg").write_bytes(b"\xff\xd8\xff not the rest")
    events = tmp_path / "events.jsonl"
    proc = looping_run(source, events, default_model)
    try:
        _until_a_start(proc, events)
        with disk_failing(proc, failing, calls, tmp_path):
            seen = read_until(proc, idle)
        hang = threading.Timer(120, proc.kill)  # never played again: a failure, not a hang
        hang.start()
        try:
            seen = read_until(proc, "plays again", seen) + stop(proc)
        finally:
            hang.cancel()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Input/output error" in seen, seen[-3000:]
    assert "the loop failed" not in seen
    if case == "folder-lookup":
        assert "faces': cannot be looked up (Input/output error); idle, trying it again " \
            "until it plays" in seen, seen[-3000:]
    if case == "clip-reads":
        assert "cannot loop: " in seen, seen[-3000:]
