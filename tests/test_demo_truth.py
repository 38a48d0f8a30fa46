"""The demo tells the truth: which detector runs and what it means, a header that never shows an
active violation without saying its face is not detected, a demo that ends with its clip, and a
final fps line that does not count idle time."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from loop_parts import RecordingSink, service_for

from maskd.annotate import header_text
from maskd.config import Config
from maskd.types import Frame, LoopStats

REPO = Path(__file__).resolve().parents[1]


def test_header_says_when_an_active_violations_face_is_not_detected():
    assert header_text(LoopStats(fps=12.345, active=1)) == "12.3 fps | 1 active violation"
    assert header_text(LoopStats(fps=10, active=1, in_view=1)) == "10.0 fps | 1 active violation"
    assert header_text(LoopStats(fps=10, active=1, in_view=0)) == \
        "10.0 fps | 1 active violation (1 face not detected now)"
    assert header_text(LoopStats(fps=10, active=3, in_view=1)) == \
        "10.0 fps | 3 active violations (2 faces not detected now)"
    assert header_text(LoopStats(fps=10, active=0, in_view=0)) == "10.0 fps | 0 active violations"


class Recorder:
    def __init__(self) -> None:
        self.stats: list[LoopStats] = []
        self.faces: list[int] = []

    def on_frame(self, frame, verdicts, stats) -> None:
        self.stats.append(stats)
        self.faces.append(len(verdicts))

    def close(self) -> None:
        pass


def run_demo(default_model: Path, detector: dict) -> tuple[Recorder, RecordingSink]:
    from maskd.config import parse_config
    from maskd.pipeline import Pipeline
    from maskd.service import CameraLoop, build_classifier, build_detector
    from maskd.sources import open_source
    from maskd.types import RunControl

    cfg = parse_config({"source": {"kind": "demo"}, "detector": detector,
                        "classifier": {"model": str(default_model)}}, "test")
    rec, sink = Recorder(), RecordingSink()
    pipeline = Pipeline(cfg, build_detector(cfg), build_classifier(cfg))
    svc = CameraLoop(cfg, open_source(cfg.source), pipeline, [sink], [rec], RunControl(),
                     exit_at_end=True)
    assert svc.run(flush_timeout=5) == 0
    return rec, sink


def test_blazeface_demo_never_shows_an_active_violation_on_an_unseen_face(default_model):
    rec, sink = run_demo(default_model, {"kind": "blazeface"})
    assert [e.event_type for e in sink.events][0] == "start"
    for stats, faces in zip(rec.stats, rec.faces, strict=True):
        assert stats.in_view is not None and stats.in_view <= faces
        if stats.active and stats.in_view < stats.active:
            assert "not detected now" in header_text(stats)
    # BlazeFace loses the masked face: the frames where that happens are said to be so
    lost = [s for s, n in zip(rec.stats, rec.faces, strict=True) if s.active and n == 0]
    assert all("(1 face not detected now)" in header_text(s) for s in lost)


@pytest.mark.shared
def test_yunet_demo_ends_masked_with_the_face_in_view(default_model, yunet_model):
    rec, sink = run_demo(default_model, {"kind": "yunet", "model": str(yunet_model)})
    kinds = [(e.event_type, e.end_reason) for e in sink.events]
    assert kinds[0] == ("start", None) and kinds[-1] == ("end", "masked"), kinds
    assert all(s.in_view == s.active for s in rec.stats)  # never an unseen active violation


def test_run_names_the_detector_and_what_blazeface_means(tmp_path, default_model):
    """The fresh-checkout case (no YuNet file anywhere): `maskd run --source demo` says plainly
    that BlazeFace runs and what that means, and ends with the clip without --exit-at-end."""
    # This checkout's maskd (cwd is tmp_path: without PYTHONPATH an installed one would run).
    env = {"PATH": "/usr/bin:/bin", "MASKD_YUNET": str(tmp_path / "none.onnx"), "HOME": str(tmp_path),
           "PYTHONPATH": str(REPO)}
    code = ("import sys, maskd.detectors.yunet as y, pathlib; "
            f"y.REPO_MODELS = y.SYSTEM_MODELS = pathlib.Path({str(tmp_path)!r}); "
            "from maskd.cli import main; sys.exit(main(sys.argv[1:]))")
    r = subprocess.run([sys.executable, "-c", code, "run", "--source", "demo", "--jsonl", "-",
                        "--model", str(default_model)], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr  # no --exit-at-end: the demo still ends with its clip
    assert "maskd run: face detector: blazeface" in r.stderr
    assert (f"YuNet's model file was not found ($MASKD_YUNET={tmp_path / 'none.onnx'}; `maskd "
            "models fetch` downloads it)") in r.stderr
    assert "in this demo: expect the masked half to show a box only now and then" in r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[0]["event_type"] == "start" and events[-1]["event_type"] == "end"


def test_blazefaces_fallback_is_said_in_the_words_of_the_command_and_the_source(tmp_path,
                                                                                default_model):
    """The same missed YuNet file, said three ways: `run` on a camera or file (violations end
    'gone'), no demo line there (its clip is not what runs), and `scan`'s photos (no events:
    masked faces go uncounted). Each was said in another's words without a test noticing."""
    import cv2

    (tmp_path / "in").mkdir()
    cv2.imwrite(str(tmp_path / "in" / "door.jpg"), np.full((96, 128, 3), 90, np.uint8))
    typo = tmp_path / "typo_yunet.onnx"
    base = [sys.executable, "-m", "maskd"]
    model = ["--model", str(default_model), "--detector-model", str(typo)]
    r = subprocess.run([*base, "run", "--source", str(tmp_path / "in"), "--max-frames", "1",
                        "--jsonl", "-", *model], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    missed = (f"maskd run: YuNet's model file was not found (detector.model {typo}; `maskd "
              "models fetch` downloads it), so this is BlazeFace, which often stops finding a "
              "face once a mask covers nose and mouth")
    assert (f"{missed}: a violation then ends as 'gone' rather than 'masked', and the header "
            "says '(1 face not detected now)' meanwhile\n") in r.stderr, r.stderr
    assert "in this demo" not in r.stderr
    r = subprocess.run([*base, "scan", str(tmp_path / "in" / "door.jpg"), *model],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (missed.replace("maskd run:", "maskd scan:") + ": masked faces are often not "
            "counted\n") in r.stderr, r.stderr


@pytest.mark.shared
def test_run_with_yunet_names_it_without_the_blazeface_warning(tmp_path, default_model, yunet_model):
    r = subprocess.run([sys.executable, "-m", "maskd", "run", "--source", "demo", "--jsonl", "-",
                        "--model", str(default_model), "--detector-model", str(yunet_model)],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert f"maskd run: face detector: yunet ({yunet_model})" in r.stderr
    assert "BlazeFace" not in r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[-1]["end_reason"] == "masked"


class TenBlankFrames:
    """A file-like (not live) source: ten grey frames, then the end."""

    is_live = False
    name = "blank"

    def __init__(self) -> None:
        self.stats = {"frames": 0}
        self.seq = 0

    def read(self) -> Frame | None:
        if self.seq >= 10:
            return None
        self.seq += 1
        return Frame(np.full((120, 160, 3), 128, np.uint8), self.seq - 1, 1000.0 + self.seq / 15)

    def close(self) -> None:
        pass


def test_final_fps_line_does_not_average_the_idle_time_in():
    sink = RecordingSink()
    svc = service_for(TenBlankFrames(), sinks=[sink], cfg=Config())
    done = threading.Event()
    t0 = time.monotonic()
    thread = threading.Thread(target=lambda: (svc.run(flush_timeout=1), done.set()), daemon=True)
    thread.start()
    while svc.frames < 10:
        assert time.monotonic() - t0 < 60
        time.sleep(0.01)
    busy = time.monotonic() - t0
    time.sleep(1.5)  # the file has ended: the loop idles until stopped
    svc.stop()
    assert done.wait(30)
    # The first stats after the end covers the frames; any later one the idle time (fps 0).
    first, *idle = [s for s in sink.stats if s["source_ended"]]
    assert first["frames"] == 10
    assert first["fps"] >= 10 / busy * 0.9, (first["fps"], busy)  # not 10 / (busy + 1.5)
    assert all(s["fps"] == 0 and s["frames"] == 10 for s in idle), idle
