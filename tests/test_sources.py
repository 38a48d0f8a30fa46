"""Frame sources: file order, loop vs once, broken images, a live device that dies and comes back."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskd.annotate import camera_text
from maskd.config import SourceConfig
from maskd.images import find_images
from maskd.sources import (
    MAX_CORRUPT_IN_A_ROW,
    ImageFolderSource,
    LatestFrame,
    LiveSource,
    SourceError,
    VideoFileSource,
    open_source,
)
from tools.mosquitto import wait_until


def _scene_images(scenes_dir: Path, n: int) -> list[Path]:
    return sorted((scenes_dir / "images").glob("*.jpg"))[:n]


def _write_clip(path: Path, images: list[np.ndarray], size=(320, 240), fps=10.0) -> None:
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert w.isOpened()
    for im in images:
        w.write(cv2.resize(im, size))
    w.release()


@pytest.fixture
def clip(tmp_path: Path, scenes_dir: Path) -> Path:
    """A 6-frame clip made from real scene photos."""
    images = [cv2.imread(str(p)) for p in _scene_images(scenes_dir, 6)]
    path = tmp_path / "clip.avi"
    _write_clip(path, images)
    return path


def _drain(src, limit: int = 1000) -> list:
    out = []
    while len(out) < limit:
        f = src.read()
        if f is None:
            break
        out.append(f)
    return out


def test_video_file_once_delivers_every_frame_in_order(clip: Path):
    src = open_source(SourceConfig(kind="auto", uri=str(clip)))
    assert isinstance(src, VideoFileSource) and not src.is_live
    frames = _drain(src)
    assert [f.seq for f in frames] == list(range(6))
    assert all(f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8 for f in frames)
    # Timestamps follow the file's frame rate, not the decode speed.
    assert np.allclose(np.diff([f.timestamp for f in frames]), 0.1, atol=1e-6)
    assert src.read() is None
    src.close()


def test_video_file_loop_starts_again(clip: Path):
    src = open_source(SourceConfig(kind="opencv", uri=str(clip), loop=True))
    frames = _drain(src, limit=15)
    assert len(frames) == 15 and [f.seq for f in frames] == list(range(15))
    # The 7th frame is the first one again.
    assert np.array_equal(frames[6].image, frames[0].image)
    # passes, not reopens: "times a live camera was reopened" (status page, /metrics) grew at
    # every replay of a looping clip
    assert src.stats["loops"] == 2 and src.stats["reopens"] == 0
    src.close()


def test_a_looping_video_keeps_its_pace_while_another_cameras_stream_open_hangs(clip: Path):
    """OpenCV opens one capture at a time in a process: a camera of the same `cameras:` map
    whose stream open hangs (a stalled network) held every pass's reopen of a looping video
    for its whole time-out, and the video played at that camera's pace (140 -> 12 fps)."""
    from tools.ipcamera import IpCamera

    src = open_source(SourceConfig(kind="opencv", uri=str(clip), loop=True))
    first = _drain(src, limit=6)
    with IpCamera(_stamped) as cam:
        cam.stall()  # a new connection is accepted and never answered
        hung = threading.Thread(target=lambda: cv2.VideoCapture(
            cam.url, cv2.CAP_FFMPEG, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, 4000]).release(), daemon=True)
        hung.start()
        time.sleep(0.5)  # its open is under way
        t0 = time.monotonic()
        frames = _drain(src, limit=30)  # five more passes
        took = time.monotonic() - t0
        hung.join()
    src.close()
    assert took < 1.5, f"30 frames of a looping video took {took:.1f} s beside a hung open"
    assert [f.seq for f in frames] == list(range(6, 36))
    assert all(np.array_equal(f.image, first[i % 6].image) for i, f in enumerate(frames))


def _break_frames(path: Path, which: set[int]) -> None:
    """Zero the start of those frames' JPEG data in an MJPG file, in place: FFmpeg then fails
    exactly those reads ("No JPEG data found") and goes on with the next frame."""
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 1) if data[i:i + 2] == b"\xff\xd8"]
    for n in which:
        data[starts[n]:starts[n] + 2000] = bytes(2000)
    path.write_bytes(data)


@pytest.fixture
def broken_clip(tmp_path: Path, scenes_dir: Path) -> tuple[Path, list[np.ndarray]]:
    """A 20-frame clip of scene photos whose frames 5 and 10-12 cannot be decoded, and the 16
    frames OpenCV itself reads from it, skipping its failed reads."""
    path = tmp_path / "broken.avi"
    _write_clip(path, [cv2.imread(str(p)) for p in _scene_images(scenes_dir, 20)])
    _break_frames(path, {5, 10, 11, 12})
    cap, good, failed = cv2.VideoCapture(str(path)), [], []
    for i in range(25):
        ok, image = cap.read()
        (good.append(image) if ok else failed.append(i))
    cap.release()
    assert failed == [5, 10, 11, 12, 20, 21, 22, 23, 24] and len(good) == 16  # as described
    return path, good


def test_frames_that_cannot_be_decoded_mid_file_are_skipped_and_counted_not_the_end(
        broken_clip, scenes_dir: Path, caplog):
    """FFmpeg fails the read of a broken packet as it does at the end of the file, then goes
    on: the frames after it are played, the lost ones counted and said."""
    path, good = broken_clip
    src = VideoFileSource(path)
    with caplog.at_level(logging.WARNING, logger="maskd.sources"):
        frames = _drain(src)
    assert len(frames) == 16
    assert all(np.array_equal(f.image, g) for f, g in zip(frames, good, strict=True))
    assert [f.seq for f in frames] == list(range(16))
    assert src.stats["corrupt"] == 4 and src.stats["frames"] == 16
    assert "1 frame(s) that cannot be decoded skipped (before seq 5)" in caplog.text
    assert "3 frame(s) that cannot be decoded skipped (before seq 9)" in caplog.text
    t = time.monotonic()
    assert src.read() is None and time.monotonic() - t < 0.5  # the real end ends at once
    assert src.stats["corrupt"] == 4  # and is no corrupt frame
    src.close()
    assert "the rest of the file is not read" not in caplog.text  # the real end is no cut

    # As many failed reads in a row as a live device may give end the file there: frame 19
    # after the run from 14 is never read. Said (it was a clean 'end of source', no line).
    _write_clip(path, [cv2.imread(str(p)) for p in _scene_images(scenes_dir, 20)])
    _break_frames(path, {5, 10, 11, 12} | set(range(14, 14 + MAX_CORRUPT_IN_A_ROW)))
    assert MAX_CORRUPT_IN_A_ROW == 5
    src = VideoFileSource(path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="maskd.sources"):
        frames = _drain(src)
    assert len(frames) == 10 and np.array_equal(frames[-1].image, good[9])
    assert src.read() is None
    src.close()
    assert re.search(r"no frame could be read after frame \d+ of the 20 the file says it holds "
                     r"\(damaged or cut short\?\); the rest of the file is not read", caplog.text)

    # A first frame that cannot be decoded is skipped too, not a file refused at start.
    _write_clip(path, [cv2.imread(str(p)) for p in _scene_images(scenes_dir, 3)])
    _break_frames(path, {0})
    src = VideoFileSource(path)
    assert len(_drain(src)) == 2 and src.stats["corrupt"] == 1
    src.close()


def test_a_file_rate_no_camera_has_is_said_and_replaced(tmp_path: Path, caplog):
    """A file saying 1000 frames/s was timed at source.fps without a word; then it was said, but
    an AVI's frames were still timed 1 ms apart (its own times are its header's rate): a face in
    view for 3 s of such a clip lasted 45 ms and never got an event (`maskd run`, real models)."""
    path = tmp_path / "fast.avi"
    _write_clip(path, [np.full((240, 320, 3), 90, np.uint8)] * 3, fps=1000.0)
    with caplog.at_level(logging.WARNING, logger="maskd.sources"):
        src = VideoFileSource(path, fps=12.0)
    assert src.fps == 12.0
    assert "the file says 1000 frames/s, no real rate; its frames are timed at 12 frames/s" in (
        caplog.text)
    times = [f.timestamp for f in _drain(src)]
    assert np.allclose(np.diff(times), 1 / 12), np.diff(times)
    src.close()


def test_a_looping_video_with_broken_frames_plays_whole_passes(broken_clip):
    path, good = broken_clip
    src = VideoFileSource(path, loop=True)
    frames = _drain(src, limit=33)  # two whole passes and the first frame again
    assert len(frames) == 33 and src.stats["loops"] == 2 and src.stats["corrupt"] == 2 * 4
    assert all(np.array_equal(f.image, good[i % 16]) for i, f in enumerate(frames))
    src.close()


def test_maskd_run_analyses_a_video_with_broken_frames_to_its_end(broken_clip, default_model):
    r = subprocess.run([sys.executable, "-m", "maskd", "run", "--source", str(broken_clip[0]),
                        "--exit-at-end", "--model", str(default_model), "--detector", "blazeface"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "frames 16 skipped 0" in r.stderr and "end of source" in r.stderr
    assert "3 frame(s) that cannot be decoded skipped" in r.stderr


def test_image_folder_sorted_recursive_skips_broken(tmp_path: Path, scenes_dir: Path, caplog):
    srcs = _scene_images(scenes_dir, 3)
    (tmp_path / "b").mkdir()
    shutil.copy(srcs[0], tmp_path / "a0.png")
    shutil.copy(srcs[1], tmp_path / "b" / "c1.png")
    (tmp_path / "a5_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    shutil.copy(srcs[2], tmp_path / "z2.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    assert [p.name for p in find_images(tmp_path)] == ["a0.png", "a5_broken.jpg", "c1.png",
                                                       "z2.jpg"]
    with caplog.at_level(logging.WARNING, logger="maskd.sources"):
        src = open_source(SourceConfig(kind="images", uri=str(tmp_path)))
        frames = _drain(src)
    assert [Path(f.source).name for f in frames] == ["a0.png", "c1.png", "z2.jpg"]
    assert src.stats["corrupt"] == 1 and src.stats["frames"] == 3
    assert "a5_broken.jpg" in caplog.text


def test_image_folder_loop_and_all_broken(tmp_path: Path, scenes_dir: Path):
    shutil.copy(_scene_images(scenes_dir, 1)[0], tmp_path / "x.png")
    src = ImageFolderSource(tmp_path, loop=True)
    assert len(_drain(src, limit=4)) == 4
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "y.png").write_bytes(b"garbage")
    # Looping over nothing readable ends instead of spinning forever.
    assert ImageFolderSource(bad, loop=True).read() is None


def test_a_looping_file_or_folder_plays_in_real_time_unless_maskd_demo_fast_is_set(
        clip: Path, monkeypatch):
    """A looping clip or folder stands in for a camera, as the looping demo: no frame before its
    time (the clip's 10 frames/s, source.fps for a folder), each stamped with the clock and the
    time since boot (was: read as fast as the CPU went, its times ahead of the clock). Once
    through, or with MASKD_DEMO_FAST set (the tests, tools/soak.py --video), as fast as it can."""
    from maskd.env import DEMO_FAST

    folder = clip.parent / "images"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((48, 64, 3), 40 * i, np.uint8))
    for cfg in (SourceConfig(kind="opencv", uri=str(clip), fps=10.0, loop=True),
                SourceConfig(kind="images", uri=str(folder), fps=10.0, loop=True)):
        for fast, loop, realtime in ((None, True, True), ("0", True, True), ("1", True, False),
                                     (None, False, False)):
            monkeypatch.delenv(DEMO_FAST, raising=False)
            if fast is not None:
                monkeypatch.setenv(DEMO_FAST, fast)
            src = open_source(cfg.model_copy(update={"loop": loop}))
            began = time.monotonic()
            frames = _drain(src, limit=4)
            took = time.monotonic() - began
            src.close()
            assert all((f.since_boot is not None) is realtime for f in frames), (cfg, fast, loop)
            if realtime:
                assert took >= 0.29, (cfg.kind, took)  # frames 1-3 at 0.1 s apart
                assert all(abs(f.timestamp - time.time()) < 1.0 for f in frames), cfg.kind


def test_a_looping_folder_counts_its_passes_as_loops_as_a_looping_clip(tmp_path: Path):
    """`loops` in the status (as a looping clip's, ``test_video_file_loop_starts_again``):
    was 0 for ever for a looping folder."""
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((48, 64, 3), 40 * i, np.uint8))
    src = ImageFolderSource(tmp_path, loop=True)
    assert len(_drain(src, limit=5)) == 5 and src.stats["loops"] == 2, src.stats


def test_permanent_problems_raise_source_error(tmp_path: Path, monkeypatch):
    with pytest.raises(SourceError, match="no such file"):
        open_source(SourceConfig(uri=str(tmp_path / "missing.mp4")))
    monkeypatch.chdir(tmp_path)  # `uri: demo` passed check-config, then named no way out
    with pytest.raises(SourceError, match=r"demo: no such file, folder or device; the demo clip "
                                          r"is kind: demo \(--source demo\)"):
        open_source(SourceConfig(uri="demo"))
    with pytest.raises(SourceError, match="no images"):
        open_source(SourceConfig(kind="images", uri=str(tmp_path)))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video")
    with pytest.raises(SourceError, match="cannot open"):
        open_source(SourceConfig(uri=str(bad)))


class FlakyCamera:
    """A capture that works, then is 'unplugged' (reads fail, opens fail), then comes back.
    An unplugged capture's reads fail from then on, as a real device's do, until it is opened
    again (a single failed read among good ones is a damaged frame, skipped)."""

    def __init__(self, image: np.ndarray):
        self.image = image
        self.plan: list[str] = []  # per read: "ok", "corrupt", "fail" (unplugged)
        self.open_failures = 0
        self.opens = 0
        self.released = 0
        self.dead = False

    def opener(self):
        if self.open_failures > 0:
            self.open_failures -= 1
            raise OSError("No such device")
        self.opens += 1
        self.dead = False
        return self

    def read(self):
        step = "fail" if self.dead else self.plan.pop(0) if self.plan else "ok"
        if step == "fail":
            self.dead = True
            return False, None
        if step == "corrupt":
            return True, np.zeros((0, 0, 3), np.uint8)
        return True, self.image.copy()

    def release(self):
        self.released += 1


def test_live_source_survives_unplug_and_corrupt_frames(caplog):
    cam = FlakyCamera(np.full((48, 64, 3), 7, np.uint8))
    cam.plan = ["ok", "corrupt", "ok", "fail"]
    cam.open_failures = 0
    src = LiveSource("usbcam", cam.opener, reopen_min_s=0.01, reopen_max_s=0.04)
    with caplog.at_level(logging.INFO, logger="maskd.sources"):
        assert src.read().seq == 0
        assert src.read().seq == 1  # the corrupt frame was skipped
        cam.open_failures = 3  # unplugged: the next read fails, then three opens fail
        t0 = time.monotonic()
        f = src.read()
        waited = time.monotonic() - t0
    assert f is not None and f.seq == 2 and f.image.shape == (48, 64, 3)
    # an unplugged device's reads fail at once, every one: MAX_CORRUPT_IN_A_ROW, then a reopen
    assert src.stats["corrupt"] == 1 and src.stats["read_errors"] == MAX_CORRUPT_IN_A_ROW
    assert src.stats["reopens"] == 4 and cam.opens == 2
    # Backoff grew: 0.01 + 0.02 + 0.04 + 0.04 at least.
    assert waited >= 0.1
    assert "cannot open" in caplog.text and "reopened" in caplog.text
    src.close()
    assert src.read() is None


def test_the_lines_of_a_lost_camera_start_with_its_name(monkeypatch, caplog):
    """``cameras: {front: ..., back: {source: {uri: /dev/video2}}}``: the journal's lines of
    an outage (read failed, cannot open, reopened, frames again, steady again) start with the
    camera's name from the config, the source in brackets, as the 'frame skipped' lines and
    the loop's own lines do (was: ``/dev/video2: cannot open (No such device); retrying``,
    while the status line said ``back: camera lost since ...``: the operator had to work out
    which camera that device was)."""
    import maskd.sources

    monkeypatch.setattr(maskd.sources, "STEADY_S", 0.2)
    cam = FlakyCamera(np.full((48, 64, 3), 7, np.uint8))
    cam.plan = ["ok", "fail"]
    src = LiveSource("/dev/video2", cam.opener, reopen_min_s=0.01, reopen_max_s=0.04,
                     camera="back")
    with caplog.at_level(logging.INFO, logger="maskd.sources"):
        assert src.read().seq == 0
        cam.open_failures = 2
        assert src.read() is not None
        deadline = time.monotonic() + 5
        while "steady again" not in caplog.text and time.monotonic() < deadline:
            src.read()
    src.close()
    lines = [r.getMessage() for r in caplog.records]
    for what in ("read failed", "cannot open (No such device)", "reopened", "frames again",
                 "steady again"):
        [line] = [m for m in lines if what in m]
        assert line.startswith(f"back (/dev/video2): {what}"), line


def test_an_outage_across_a_step_of_the_wall_clock_is_told_by_the_time_that_passed(monkeypatch,
                                                                                   caplog):
    """NTP's first sync (a Pi without a real-time clock) while a camera is away: the log names
    the outage by the time since boot (was: "frames again after 7776000.1 s")."""
    import maskd.sources

    monkeypatch.setattr(maskd.sources, "STEADY_S", 0.2)
    real, step = time.time, [0.0]
    monkeypatch.setattr(time, "time", lambda: real() + step[0])
    cam = FlakyCamera(np.full((48, 64, 3), 7, np.uint8))
    cam.plan = ["ok", "fail"]

    def opener():
        if cam.opens:  # the reopens: the clock steps 90 days while the camera is away
            step[0] = 90 * 86400.0
        return cam.opener()

    src = LiveSource("usbcam", opener, reopen_min_s=0.01, reopen_max_s=0.04)
    with caplog.at_level(logging.INFO, logger="maskd.sources"):
        assert src.read().seq == 0
        cam.open_failures = 2  # unplugged: the next read fails, then two opens fail
        assert src.read() is not None and src.stats["camera_lost_since"] is None
        time.sleep(0.3)
        assert src.read() is not None  # steady again: the outage is summed up
    src.close()
    told = [float(w) for r in caplog.records for w in
            re.findall(r"(?:after|outage of) ([\d.]+) s", r.getMessage())]
    assert len(told) == 2 and all(t < 60 for t in told), caplog.text


def test_close_interrupts_the_backoff_wait():
    cam = FlakyCamera(np.zeros((8, 8, 3), np.uint8))
    cam.open_failures = 10**6
    src = LiveSource("gone", cam.opener, reopen_min_s=30.0, reopen_max_s=30.0)
    result = []
    t = threading.Thread(target=lambda: result.append(src.read()))
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    src.close()
    t.join(timeout=5)
    assert not t.is_alive() and result == [None]
    assert time.monotonic() - t0 < 2


class SlowCamera:
    """A camera producing numbered frames at a fixed rate."""

    def __init__(self, period_s: float):
        self.period_s = period_s
        self.n = 0

    def read(self):
        time.sleep(self.period_s)
        self.n += 1
        return True, np.full((4, 4, 3), self.n % 256, np.uint8)

    def release(self):
        pass


def test_a_second_close_waits_for_the_first_ones_release():
    """A stop closes a live source twice: from a helper thread at the signal, then from the
    loop. The loop's close returned while the helper was still inside the capture's release
    (FFmpeg closing a stream), and the process could exit with a thread inside OpenCV, which
    aborts it ("terminate called without an active exception", exit -6, seen once in a test)."""
    released = threading.Event()

    class SlowRelease(SlowCamera):
        def release(self):
            time.sleep(0.5)
            released.set()

    src = LatestFrame(LiveSource("cam", lambda: SlowRelease(0.01), 0.01, 0.01))
    assert src.read() is not None
    helper = threading.Thread(target=src.close)
    helper.start()
    time.sleep(0.1)  # the helper is inside release()
    src.close()
    assert released.is_set(), "the second close returned before the capture was released"
    helper.join(5)


def test_latest_frame_skips_old_frames_and_counts_them():
    cam = SlowCamera(0.005)
    src = LatestFrame(LiveSource("fast", lambda: cam, 0.01, 0.01))
    first = src.read()
    time.sleep(0.3)  # a slow consumer: the camera produced many frames meanwhile
    second = src.read()
    src.close()
    assert second.seq > first.seq + 5
    # Everything between the two reads was dropped and counted, not queued.
    assert src.stats["skipped"] >= second.seq - first.seq - 2
    assert src.stats["frames"] >= second.seq + 1
    assert src.read() is None


def test_open_source_live_kinds_use_latest_frame(tmp_path: Path):
    src = open_source(SourceConfig(kind="opencv", uri="/dev/video97", reopen_min_s=0.01,
                                   reopen_max_s=0.01))
    try:
        assert isinstance(src, LatestFrame) and src.is_live
        time.sleep(0.1)
        assert src.stats["reopens"] >= 1 and src.stats["frames"] == 0
    finally:
        src.close()


def test_a_video_file_or_folder_under_dev_is_a_file_not_a_camera(clip: Path, tmp_path: Path):
    """/dev/shm is a RAM disk: a clip or a folder there plays like one anywhere else (was: taken
    for a camera, replayed as a reconnect after its end, for ever)."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm here")
    where = shm / f"maskd-test-{tmp_path.name}"
    where.mkdir()
    try:
        shutil.copy(clip, where / "clip.avi")
        src = open_source(SourceConfig(uri=str(where / "clip.avi")))
        assert isinstance(src, VideoFileSource) and len(_drain(src)) == 6
        src.close()
        (where / "clip.avi").unlink()
        cv2.imwrite(str(where / "door.jpg"), np.full((120, 160, 3), 90, np.uint8))
        src = open_source(SourceConfig(uri=str(where)))
        assert isinstance(src, ImageFolderSource) and len(_drain(src)) == 1
    finally:
        shutil.rmtree(where)


def test_a_video_without_a_readable_frame_is_refused_at_start(tmp_path: Path):
    """A valid file with no frame: a start-up error (exit 78 in `run`), not a source that ends
    at once and, with --loop, idles as if it had played."""
    path = tmp_path / "zero.avi"
    cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (64, 48)).release()
    for loop in (False, True):
        with pytest.raises(SourceError, match="no frame can be read from this video file"):
            open_source(SourceConfig(uri=str(path), loop=loop))


def test_a_video_file_that_cannot_be_opened_says_why(tmp_path: Path):
    """An empty file, an MP4 whose recording never finished (no moov box) and a file OpenCV
    cannot read were all "OpenCV cannot open this video file"."""
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    whole = tmp_path / "whole.mp4"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"mp4v"), 15.0, (64, 48))
    for _ in range(30):
        writer.write(np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8))
    writer.release()
    data = whole.read_bytes()
    assert data[4:8] == b"ftyp" and b"moov" in data
    unfinished = tmp_path / "unfinished.mp4"
    unfinished.write_bytes(data[:data.index(b"moov") - 4])  # the index is written last
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video at all " * 50)
    for path, says in ((empty, "an empty file (0 bytes)"),
                       (unfinished, "an MP4/MOV without its index (no moov box)"),
                       (junk, "OpenCV cannot open this video file (no video stream in it")):
        with pytest.raises(SourceError, match=re.escape(f"{path}: {says}")):
            open_source(SourceConfig(uri=str(path)))
    from maskd.sources import fourcc_text

    assert fourcc_text(cv2.VideoWriter_fourcc(*"AV01")) == "AV01" and fourcc_text(0.0) == ""


def test_a_password_in_a_stream_address_stays_out_of_logs_and_status(caplog):
    """rtsp://user:password@camera: the journal and the status page show the source's name."""
    caplog.set_level(logging.INFO)
    src = open_source(SourceConfig(uri="rtsp://admin:S3cret@127.0.0.1:1/stream",
                                   reopen_min_s=0.05, reopen_max_s=0.05))
    try:
        deadline = time.monotonic() + 10
        while "cannot open" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert src.name == "rtsp://admin:***@127.0.0.1:1/stream"
        assert "rtsp://admin:***@127.0.0.1:1/stream" in caplog.text
        assert "S3cret" not in caplog.text
    finally:
        src.close()


@pytest.mark.parametrize(("uri", "shown"), [
    ("rtsp://admin:Pa#S3cret@127.0.0.1:1/stream", "rtsp://admin:***@127.0.0.1:1/stream"),
    ("rtsp://admin:Pa?S3cret@127.0.0.1:1/stream", "rtsp://admin:***@127.0.0.1:1/stream"),
    ("http://127.0.0.1:1/videostream.cgi?loginuse=admin&loginpas=S3cret",
     "http://127.0.0.1:1/videostream.cgi?loginuse=admin&loginpas=***"),
])
def test_a_password_written_raw_or_in_a_cameras_own_parameter_stays_out_of_logs(uri, shown, caplog):
    """A # or ? typed into the password (unencoded), and a camera's own name for it."""
    caplog.set_level(logging.INFO)
    src = open_source(SourceConfig(uri=uri, reopen_min_s=0.05, reopen_max_s=0.05))
    try:
        deadline = time.monotonic() + 10
        while "cannot open" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        src.close()
    assert src.name == shown and shown in caplog.text and "S3cret" not in caplog.text


@pytest.mark.parametrize("uri", [
    "rtsp://127.0.0.1:554/user=admin_password=Xm_S3cret_channel=1_stream=0.sdp?real_stream",
    "http://cam/snap.cgi?user=admin&pw=S3cret", "http://cam/snap.cgi?user=admin&psw=S3cret",
    "http://cam/snap.cgi?u=admin&p=S3cret", "http://cam/v?credentials=S3cret",
    "https://cam/v?sig=S3cret", "rtsp//admin:S3cret@cam/x", "rtsp ://admin:S3cret@cam/x",
    # a quote or a ; typed into a query password: what followed it was shown
    "http://cam/video.cgi?user=admin&pwd=Ab'S3cret", 'http://cam/video.cgi?user=admin&pwd=Ab"S3cret',
    "rtsp://cam/s?password=Ab;S3cret",
])
def test_camera_address_forms_in_use_keep_their_password_out_of_what_is_shown(uri):
    """Forms cameras really use (an XMeye DVR's /user=admin_password=...; ?pw=, ?psw=, ?p=,
    ?credentials=, ?sig=) and scheme typos showed the password in the journal, the status
    line, the status page and the retained MQTT stats."""
    from maskd.config import shown_uri

    shown = shown_uri(uri)
    assert "S3cret" not in shown and "***" in shown, shown


def test_a_camera_address_given_as_an_images_folder_hides_its_password():
    """`source: {kind: images, uri: http://admin:pw@cam/x}`: check-config, run and doctor said
    'source: http://admin:pw@cam/x: no such folder', password and all."""
    with pytest.raises(SourceError) as err:
        open_source(SourceConfig(kind="images", uri="http://admin:S3cret@cam/x"))
    assert "S3cret" not in str(err.value) and "admin:***@cam/x" in str(err.value)


def test_an_address_without_a_secret_is_shown_as_it_is():
    from maskd.config import shown_uri

    for uri in ("rtsp://127.0.0.1:554/stream1", "http://cam:8080/video.mjpg?resolution=640",
                "/dev/video0", "/media/clips/door.mp4", "rtsp://cam/h264?profile=main&fps=15"):
        assert shown_uri(uri) == uri


def test_a_password_in_a_mistyped_stream_address_stays_out_of_the_error():
    """rtsp:/ with one slash is not a stream; the "no such file" message still hides the password."""
    with pytest.raises(SourceError) as err:
        open_source(SourceConfig(uri="rtsp:/admin:S3cret@127.0.0.1:1/stream"))
    assert "no such file" in str(err.value)
    assert "S3cret" not in str(err.value) and "admin:***@" in str(err.value)


def test_picamera2_missing_is_a_clear_error():
    try:
        import picamera2  # noqa: F401
        pytest.skip("picamera2 is installed here")
    except ImportError:
        pass
    with pytest.raises(SourceError, match="python3-picamera2"):
        open_source(SourceConfig(kind="picamera2"))


def test_real_opencv_capture_that_vanishes_and_comes_back(clip: Path, tmp_path: Path, caplog):
    """A stream-like OpenCV source (here a clip file) ends, disappears, reappears: frames resume."""
    from maskd.sources import opencv_opener

    cfg = SourceConfig(uri=str(clip))
    src = LiveSource("cam", opencv_opener(str(clip), cfg), reopen_min_s=0.01, reopen_max_s=0.05)
    first = [src.read() for _ in range(6)]
    assert [f.seq for f in first] == list(range(6))
    hidden = tmp_path / "hidden.avi"
    clip.rename(hidden)  # the 'device' is gone: the next read fails, reopening fails

    def bring_back():
        time.sleep(0.3)
        hidden.rename(clip)

    t = threading.Thread(target=bring_back)
    t.start()
    with caplog.at_level(logging.INFO, logger="maskd.sources"):
        again = src.read()
    t.join()
    src.close()
    assert again is not None and again.seq == 6
    assert np.array_equal(again.image, first[0].image)
    # the vanished file's reads fail at once: MAX_CORRUPT_IN_A_ROW of them, then the reopen
    assert src.stats["read_errors"] == MAX_CORRUPT_IN_A_ROW and src.stats["reopens"] >= 2
    assert "cannot open" in caplog.text and "reopened" in caplog.text


def test_live_frames_carry_the_time_since_boot_read_with_their_wall_time(clip: Path):
    """What lets the loop tell a step of the wall clock from time passing (maskd.clock); file
    sources make their times up and carry none."""
    from maskd.sources import opencv_opener

    since_boot = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)
    offset = time.time() - time.clock_gettime(since_boot)
    src = LiveSource("cam", opencv_opener(str(clip), SourceConfig(uri=str(clip))), 0.01, 0.05)
    frames = [src.read() for _ in range(3)]
    src.close()
    assert all(f.since_boot is not None for f in frames)
    assert frames[0].since_boot < frames[1].since_boot < frames[2].since_boot
    assert all(abs(f.timestamp - f.since_boot - offset) < 0.5 for f in frames)
    files = VideoFileSource(clip, fps=15.0)
    assert files.read().since_boot is None
    files.close()


def _stamped(i: int) -> np.ndarray:
    """Frame i of a test camera: i in its top-left pixel (mod 256), a gradient elsewhere."""
    img = np.tile(np.linspace(0, 255, 640, dtype=np.uint8)[None, :, None], (480, 1, 3))
    img[:16, :16] = i % 256
    return img


def _shown_since(cam, f, first: int) -> bool:  # noqa: ANN001
    """Frame ``f`` of ``_stamped`` shows camera ``cam``'s frame ``first`` or a later one (its
    number is kept mod 256: a frame from before ``first`` is far behind, not a little ahead)."""
    return (int(f.image[:16, :16].mean()) - first) % 256 <= cam.frame_index(time.monotonic()) - first


def _read_within(src, timeout: float):
    """src.read(), or None when it has not returned within ``timeout`` s (it may hang)."""
    got: list = []
    reader = threading.Thread(target=lambda: got.append(src.read()), daemon=True)
    reader.start()
    reader.join(timeout)
    return got[0] if got else None


def test_a_network_camera_that_goes_away_or_stalls_is_read_again(monkeypatch, caplog):
    """A real MJPEG-over-HTTP camera read through OpenCV's FFmpeg, as maskd reads an IP camera:
    it reboots (connection closed, then refused), later its network stalls (the connection stays
    open and silent); each time the source reopens it and reads the camera's picture of *now*."""
    import maskd.sources
    from tools.ipcamera import IpCamera

    monkeypatch.setattr(maskd.sources, "STREAM_TIMEOUT_MS", 2000)  # 10 s on a device
    with IpCamera(_stamped) as cam, caplog.at_level(logging.INFO, logger="maskd.sources"):
        src = open_source(SourceConfig(kind="opencv", uri=cam.url, reopen_min_s=0.2, reopen_max_s=1.0))
        try:
            assert isinstance(src, LatestFrame)  # a live source: its own grabber thread
            before = [src.read() for _ in range(5)]
            assert all(f is not None for f in before)
            for outage, away_s in ((cam.gone, 1.5), (cam.stall, 3.0)):
                outage()
                back = threading.Timer(away_s, cam.back)
                back.start()
                t0 = time.monotonic()
                f = _read_within(src, away_s + 10.0)
                back.join()
                assert f is not None, f"no frame {away_s + 10:.0f} s after the camera was {cam.outages[-1].kind}"
                assert time.monotonic() - t0 >= away_s - 0.5
                # then what the camera shows since it came back, not what it showed before it
                # went away (on a loaded machine frames already in the pipe may come first)
                came_back = cam.frame_index(cam.outages[-1].end) - 1
                until = time.monotonic() + 10.0
                while f is not None and time.monotonic() < until and not _shown_since(
                        cam, f, came_back):
                    f = _read_within(src, 10.0)
                assert f is not None and _shown_since(cam, f, came_back), \
                    f"a frame from before the camera was {cam.outages[-1].kind}"
            stats = dict(src.stats)
        finally:
            src.close()
    assert [o.kind for o in cam.outages] == ["gone", "stalled"]
    assert all(o.first_frame is not None for o in cam.outages)
    # gone: the closed stream's reads fail at once, MAX_CORRUPT_IN_A_ROW of them before the
    # reopen; stalled: one read that waited out the time-out is enough
    assert stats["read_errors"] == MAX_CORRUPT_IN_A_ROW + 1 and stats["reopens"] >= 2
    assert stats["camera_lost_since"] is None
    assert "read failed" in caplog.text and "frames again after" in caplog.text


def test_a_damaged_frame_from_a_network_camera_is_skipped_not_a_lost_camera(caplog):
    """One damaged JPEG in an MJPEG stream (OpenCV's read says False, the stream goes on) was
    taken for a dropped stream: the connection closed, the camera 'lost', and with one such
    frame every few seconds the backoff grew towards 30 s (about 60 of 700 frames read, one
    person standing still split into four violations). A failed read that returns at once on a
    stream that gave frames is skipped and counted; MAX_CORRUPT_IN_A_ROW of them reopen it."""
    from tools.ipcamera import IpCamera

    with IpCamera(_stamped, damage_every=10) as cam, \
            caplog.at_level(logging.INFO, logger="maskd.sources"):
        src = open_source(SourceConfig(kind="opencv", uri=cam.url))
        try:
            assert _read_within(src, 10.0) is not None
            t0 = time.monotonic()
            got = 0
            while time.monotonic() - t0 < 4.0:
                got += _read_within(src, 2.0) is not None
            stats = dict(src.stats)
        finally:
            src.close()
    assert stats["reopens"] == 0 and stats["camera_lost_since"] is None, stats
    assert stats["read_errors"] >= 3, stats  # one in ten of about 60 frames
    assert got >= 40, got
    assert "reopening" not in caplog.text and "frame skipped" in caplog.text


def _lost_why_of_a_gop_camera(tmp_path: Path, monkeypatch, hang_up_after: int | None) -> str:  # noqa: ANN001
    """Why a real H.264 MPEG-TS stream over HTTP, every connection joined 6 s before its next
    key frame (10 frames/s, key frames 7 s apart, SPS/PPS in every packet), was taken for lost:
    paced at its own rate, or cut off by the camera after ``hang_up_after`` bytes."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import maskd.sources

    clip = tmp_path / "gop.ts"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=size=320x240:rate=10",
                    "-t", "14", "-c:v", "libx264", "-g", "70", "-keyint_min", "70",
                    "-sc_threshold", "0", "-bf", "0", "-flags", "+global_header", "-bsf:v",
                    "dump_extra=freq=all", "-f", "mpegts", str(clip)], check=True, timeout=60)
    data = clip.read_bytes()
    rate = len(data) / 14.0  # bytes a second
    join = int(rate) // 188 * 188  # 1 s in: 6 s before the key frame at 7 s

    class Camera(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            at, t0 = join, time.monotonic()
            with contextlib.suppress(OSError):
                if hang_up_after is not None:
                    self.wfile.write(data[join:join + hang_up_after])
                    return
                while at < len(data):
                    due = join + int((time.monotonic() - t0) * rate) // 188 * 188
                    if due > at:
                        self.wfile.write(data[at:due])
                        at = due
                    time.sleep(0.02)

        def log_message(self, *args: object) -> None:
            pass

    monkeypatch.setattr(maskd.sources, "STREAM_TIMEOUT_MS", 2000)  # 10 s on a device
    server = ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/stream.ts"
    try:
        src = open_source(SourceConfig(kind="opencv", uri=url, reopen_min_s=5.0,
                                       reopen_max_s=5.0))
        try:
            wait_until(lambda: src.stats["camera_lost_why"] is not None, timeout=15.0)
            return src.stats["camera_lost_why"]
        finally:
            src.close()
    finally:
        server.shutdown()


@pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs ffmpeg to write an H.264 stream")
def test_a_stream_joined_far_from_its_next_key_frame_is_said_so_not_a_dropped_stream(
        tmp_path, monkeypatch, caplog):
    """A camera with a long I-frame interval (H.264+, smart codec, a low frame rate) joined
    mid-GOP sends only frames that cannot be decoded until its next key frame; FFmpeg gives up
    after the stream time-out. The line said "device unplugged or stream dropped" while the
    stream flowed (seen on a real RTSP server, gst-rtsp-server with a 25 s GOP): now it says
    no picture came since the open and names the key frames."""
    with caplog.at_level(logging.INFO, logger="maskd.sources"):
        why = _lost_why_of_a_gop_camera(tmp_path, monkeypatch, None)
    assert "no picture came" in why and "I-frame interval" in why, why
    assert "unplugged" not in why and "dropped" not in why, why
    assert "key frames are further apart than 2 s" in caplog.text, caplog.text


@pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs ffmpeg to write an H.264 stream")
def test_a_stream_the_camera_hangs_up_after_the_open_is_a_dropped_stream_not_its_gop(
        tmp_path, monkeypatch):
    """A camera that ends the connection right after the open (rebooting, out of sessions):
    the reads fail at once, not after the stream time-out, and the line said "no picture came
    in 0 s ... set the camera's I-frame interval", sending the operator to a setting that was
    not the cause. It says the stream dropped, as before the GOP line."""
    why = _lost_why_of_a_gop_camera(tmp_path, monkeypatch, 50 * 188)
    assert "dropped" in why and "I-frame" not in why, why


def test_a_network_camera_that_answers_but_gives_no_stream_says_what_it_answered():
    """A wrong password, a wrong path, a login page: OpenCV says only that it cannot open the
    URL, and doctor, the journal and the status line said 'cannot open (OpenCV cannot open
    URL)' for each, as for a dead camera. The camera's HTTP answer says which it is."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from maskd.sources import opencv_opener

    class Camera(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            code, kind = {"/login": (401, "text/html"), "/nope": (404, "text/html"),
                          "/": (200, "text/html; charset=utf-8")}[self.path.split("?")[0]]
            body = b"<html>camera</html>"
            self.send_response(code)
            if code == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="cam"')
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        for url, said in ((f"http://admin:S3cret@127.0.0.1:{server.server_address[1]}/login",
                           "HTTP 401 Unauthorized: the camera refuses this user name and password"),
                          (f"{base}/login", "HTTP 401 Unauthorized: the camera asks for a login"),
                          (f"{base}/nope", "HTTP 404 Not Found: no stream at that path"),
                          (f"{base}/", "an HTML page (text/html), not a video stream")):
            with pytest.raises(SourceError) as err:
                opencv_opener(url, SourceConfig(kind="opencv", uri=url))()
            assert said in str(err.value), str(err.value)
            assert "S3cret" not in str(err.value)
    finally:
        server.shutdown()


def test_a_network_camera_whose_name_does_not_resolve_says_so():
    """A camera named by a host name the name server does not know (a typo, a DHCP name the
    router forgot): OpenCV says only that it cannot open the URL, so the journal, the status
    line and doctor said `OpenCV cannot open URL`, as for a dead camera, and FFmpeg's `Failed
    to resolve hostname` is silenced. Now the name and the resolver's answer are said."""
    from maskd.sources import opencv_opener

    for url in ("http://admin:S3cret@camera-door.invalid:8080/stream.mjpg",
                "rtsp://admin:S3cret@camera-door.invalid/stream1"):
        with pytest.raises(SourceError) as err:
            opencv_opener(url, SourceConfig(kind="opencv", uri=url))()
        assert "OpenCV cannot open" in str(err.value)
        assert "the name camera-door.invalid does not resolve (" in str(err.value), str(err.value)
        assert "S3cret" not in str(err.value)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


@contextlib.contextmanager
def rtsp_camera(reply: Callable[[str, str, dict[str, str]], tuple[str, str]]):
    """A local RTSP camera: ``reply(method, url, the Authorization's parameters)`` gives each
    answer's status and header lines (CSeq is added); yields its port."""
    import socket

    def answer(conn: socket.socket) -> None:
        with conn:
            buf = b""
            while data := conn.recv(4096):
                buf += data
                while b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    lines = head.decode().split("\r\n")
                    method, url = lines[0].split()[:2]
                    fields = dict(ln.split(": ", 1) for ln in lines[1:])
                    auth = dict(re.findall(r'(\w+)="?([^",]*)"?', fields.get("Authorization", "")))
                    status, more = reply(method, url, auth)
                    conn.sendall(f"RTSP/1.0 {status}\r\nCSeq: {fields['CSeq']}\r\n{more}\r\n"
                                 .encode())

    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                threading.Thread(target=answer, args=(server.accept()[0],), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_an_rtsp_camera_that_refuses_the_password_says_so():
    """Most door cameras are read over RTSP: a changed password made FFmpeg's DESCRIBE get
    `401 Unauthorized` (after its Digest answer), and OpenCV said only `cannot open`, as for a
    dead camera. maskd asks the camera as FFmpeg does (Digest, MD5) and says its answer; the
    right password is no refusal."""
    from maskd.sources import opencv_opener, rtsp_answer

    def reply(method: str, url: str, auth: dict[str, str]) -> tuple[str, str]:
        right = _md5(f"{_md5('admin:IPCAM:Right')}:n0nce:{_md5(f'{method}:{url}')}")
        if method == "OPTIONS" or auth.get("response") == right:
            return "200 OK", ""
        return "401 Unauthorized", 'WWW-Authenticate: Digest realm="IPCAM", nonce="n0nce"\r\n'

    with rtsp_camera(reply) as port:
        url = f"rtsp://admin:S3cret@127.0.0.1:{port}/stream1"
        with pytest.raises(SourceError) as err:
            opencv_opener(url, SourceConfig(kind="opencv", uri=url))()
        assert "RTSP 401 Unauthorized: the camera refuses this user name and password" in \
            str(err.value), str(err.value)
        assert "S3cret" not in str(err.value)
        assert "asks for a login" in (rtsp_answer(f"rtsp://127.0.0.1:{port}/stream1") or "")
        assert rtsp_answer(f"rtsp://admin:Right@127.0.0.1:{port}/stream1") is None


def test_an_rtsp_camera_whose_digest_has_an_opaque_is_answered_as_ffmpeg_does():
    """A camera whose Digest challenge has qop and an opaque (RFC 2617: sent back unchanged):
    FFmpeg sends it back, logs in and is told the path is wrong (404), but maskd's own DESCRIBE
    left it out, was refused, and said the camera refuses the password, which is right."""
    from maskd.sources import opencv_opener

    def reply(method: str, url: str, auth: dict[str, str]) -> tuple[str, str]:
        right = _md5(":".join([_md5("admin:IPCAM:Right"), "n0nce", auth.get("nc", ""),
                               auth.get("cnonce", ""), "auth",
                               _md5(f"{method}:{auth.get('uri', '')}")]))
        if method == "OPTIONS":
            return "200 OK", ""
        if auth.get("response") == right and auth.get("opaque") == "0paque":
            return ("200 OK" if url.endswith("/stream1") else "404 Not Found"), ""
        return "401 Unauthorized", ('WWW-Authenticate: Digest realm="IPCAM", nonce="n0nce", '
                                    'qop="auth", opaque="0paque"\r\n')

    with rtsp_camera(reply) as port:
        url = f"rtsp://admin:Right@127.0.0.1:{port}/stream2"
        with pytest.raises(SourceError) as err:
            opencv_opener(url, SourceConfig(kind="opencv", uri=url))()
        assert "RTSP 404 Not Found: no stream at that path" in str(err.value), str(err.value)


def test_a_camera_url_with_a_port_out_of_range_is_still_cannot_open_naming_it():
    """The HTTP probe read the URL's port outside its guard: `http://h:99999/` raised a bare
    ValueError ('Port out of range'), not the opener's SourceError naming the URL."""
    from maskd.sources import opencv_opener

    for url in ("http://127.0.0.1:99999/video", "http://127.0.0.1:abc/video"):
        with pytest.raises(SourceError, match="OpenCV cannot open http://127.0.0.1:"):
            opencv_opener(url, SourceConfig(kind="opencv", uri=url))()


def test_a_password_in_a_network_cameras_query_stays_out_of_logs(monkeypatch, caplog):
    """A camera that takes its login in the query (``?user=admin&pwd=...``) is opened with it,
    and the journal sees ``pwd=***`` when the camera goes away."""
    import maskd.sources
    from tools.ipcamera import IpCamera

    monkeypatch.setattr(maskd.sources, "STREAM_TIMEOUT_MS", 2000)
    with IpCamera(_stamped) as cam, caplog.at_level(logging.INFO, logger="maskd.sources"):
        src = open_source(SourceConfig(kind="opencv", uri=f"{cam.url}?user=admin&pwd=S3cret",
                                       reopen_min_s=0.2, reopen_max_s=0.2))
        try:
            assert _read_within(src, 10.0) is not None
            cam.gone()
            deadline = time.monotonic() + 15
            while "cannot open" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            src.close()
    assert src.name == f"{cam.url}?user=admin&pwd=***"
    assert "cannot open" in caplog.text and "pwd=***" in caplog.text
    assert "S3cret" not in caplog.text


def test_network_cameras_waiting_their_turn_to_open_are_not_taken_for_hung(monkeypatch):
    """OpenCV opens one capture at a time in a process: with a building's switch stalled, three
    cameras' reopens queue behind each other's hung opens (each its whole time-out), and one
    that waited for two of them looked hung (no sign of life for RECONNECT_STALL_S): its loop
    stopped vouching to systemd's watchdog, though its reconnect was doing what it should."""
    import maskd.sources
    from tools.ipcamera import IpCamera

    monkeypatch.setattr(maskd.sources, "STREAM_TIMEOUT_MS", 1000)  # 10 s on a device
    monkeypatch.setattr(maskd.sources, "RECONNECT_STALL_S", 2.5)  # 20 s: twice the time-out
    cams = [IpCamera(_stamped).start() for _ in range(3)]
    srcs = [open_source(SourceConfig(kind="opencv", uri=c.url, reopen_min_s=0.1, reopen_max_s=0.2))
            for c in cams]
    try:
        assert all(_read_within(s, 10.0) is not None for s in srcs)
        for c in cams:
            c.stall()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not all(s.inner.stats["camera_lost_since"] for s in srcs):
            time.sleep(0.05)
        looked_hung = set()
        until = time.monotonic() + 8.0  # several rounds of three 1 s opens in turn
        while time.monotonic() < until:
            looked_hung |= {i for i, s in enumerate(srcs) if not s.inner.reconnecting}
            time.sleep(0.05)
    finally:
        for s in srcs:
            s.close()
        for c in cams:
            c.close()
    assert not looked_hung, f"cameras {sorted(looked_hung)} looked hung while waiting to open"


def test_auto_says_why_a_broken_picamera2_was_passed_over(tmp_path, monkeypatch, caplog):
    """`source.kind: auto` on a Pi whose picamera2 is installed but does not import (a numpy of
    the wrong major version in the venv: `numpy.dtype size changed`) fell back to /dev/video0
    without a word: the journal and doctor said '/dev/video0 does not exist (camera
    unplugged?)', and the technician went to check the ribbon cable."""
    import maskd.sources

    fake = tmp_path / "site" / "picamera2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        'raise ValueError("numpy.dtype size changed, may indicate binary incompatibility")\n')
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "picamera2", raising=False)
    missing = tmp_path / "video0"  # a /dev/video0 that is not there, wherever this runs
    monkeypatch.setattr(maskd.sources, "AUTO_DEVICE", str(missing), raising=False)
    with caplog.at_level(logging.INFO, logger="maskd.sources"):
        src = open_source(SourceConfig(reopen_min_s=0.05, reopen_max_s=0.05))
        try:
            deadline = time.monotonic() + 5
            while not src.stats.get("camera_lost_why") and time.monotonic() < deadline:
                time.sleep(0.02)
            why = src.stats["camera_lost_why"]
        finally:
            src.close()
    assert "picamera2 cannot be imported (ValueError: numpy.dtype size changed" in caplog.text
    assert "picamera2 cannot be imported" in why, why


def test_picamera2_adapter_with_a_stand_in_module(monkeypatch, caplog):
    """The picamera2 path configures a BGR (RGB888) main stream of the configured size; auto
    names the camera it takes (it said "the Pi camera" of a USB webcam libcamera listed)."""
    import sys
    import types

    calls = {}

    class FakePicamera2:
        camera_controls = {"FrameDurationLimits": None, "AeEnable": None}

        @staticmethod
        def global_camera_info():
            return [{"Model": "imx708", "Id": "/base/soc/i2c0mux/i2c@1/imx708@1a"}]

        def __init__(self, camera_num=0):
            calls["camera_num"] = camera_num

        def create_video_configuration(self, main, controls):
            calls["main"], calls["controls"] = main, controls
            return {"main": main}

        def configure(self, config):
            calls["configured"] = config
            self.camera_config = config  # what libcamera agreed to: as asked

        def start(self):
            calls["started"] = True

        def capture_array(self, stream):
            time.sleep(0.01)  # blocks until the next frame, like the real one
            w, h = calls["main"]["size"]
            return np.full((h, w, 3), 9, np.uint8)

        def stop(self):
            calls["stopped"] = True

        def close(self):
            calls["closed"] = True

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=FakePicamera2))
    with caplog.at_level(logging.INFO, logger="maskd.sources"):
        src = open_source(SourceConfig(kind="auto", width=320, height=240, fps=10))
    assert "source auto: using the Pi camera (imx708) through picamera2" in caplog.text
    try:
        assert src.name == "picamera2"
        f = src.read()
        assert f.image.shape == (240, 320, 3) and f.image[0, 0, 0] == 9
        assert calls["main"] == {"size": (320, 240), "format": "RGB888"}
        assert calls["controls"] == {"FrameRate": 10.0}
    finally:
        src.close()
    assert calls.get("stopped") and calls.get("closed")


class DroppingCamera(FlakyCamera):
    """A stream that gives two frames after every connect and then drops (``steady`` clears
    that); it notes when each open came and what the source said about the outage then."""

    def __init__(self, image: np.ndarray):
        super().__init__(image)
        self.steady = False
        self.opened_at: list[float] = []
        self.lost_since: list[str | None] = []
        self.src: LiveSource | None = None

    def opener(self):
        self.opened_at.append(time.monotonic())
        if self.src is not None and self.opens:
            self.lost_since.append(self.src.stats["camera_lost_since"])
        self.plan = [] if self.steady else ["ok", "ok", "fail"]
        return super().opener()

    def read(self):
        time.sleep(0.005)
        return super().read()


def test_a_stream_that_drops_after_every_frame_or_two_is_one_outage_retried_ever_more_slowly(
        monkeypatch, caplog):
    """Frames right after a reconnect do not end the outage: the backoff keeps growing, the
    outage keeps its first start, the journal gets one line per cause; frames for STEADY_S end
    it (was: the backoff reset on the first frame, so a stream that gave a frame or two and
    dropped was reopened every second for ever, 'lost' since moments ago each time)."""
    import maskd.sources

    monkeypatch.setattr(maskd.sources, "STEADY_S", 0.4, raising=False)
    cam = DroppingCamera(np.full((48, 64, 3), 7, np.uint8))
    src = LiveSource("flappy", cam.opener, reopen_min_s=0.05, reopen_max_s=0.4)
    cam.src = src
    with caplog.at_level(logging.INFO, logger="maskd.sources"):
        frames = [src.read() for _ in range(16)]  # 8 connects: waits 0.05, 0.1, 0.2, 0.4, ...
        assert all(f is not None for f in frames)
        gaps = np.diff(cam.opened_at)
        assert gaps[0] < 0.2 and all(g >= 0.35 for g in gaps[3:]), gaps
        # One outage, shown from its first start whenever no frames come (> 1 s of them).
        assert cam.opened_at[-1] - cam.opened_at[1] > 1.0
        assert len(cam.lost_since) == 7 and len(set(cam.lost_since)) == 1
        assert cam.lost_since[0] is not None and src.stats["camera_lost_since"] is None
        assert caplog.text.count("read failed") == 1 and caplog.text.count("reopened") == 1
        cam.steady = True  # the next connect keeps sending: frames for STEADY_S end the outage
        src.read()
        src.read()
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.6:
            assert src.read() is not None
        assert "steady again" in caplog.text and "(8 reopens)" in caplog.text
        cam.plan = ["fail"]  # a new outage: retried after reopen_min_s again, and logged at once
        src.read()
    assert cam.opened_at[-1] - cam.opened_at[-2] < 0.35 + 0.6 + 0.2
    assert src._backoff.next_s <= 0.1
    assert caplog.text.count("read failed") == 2
    src.close()


def _door(path: Path, shade: int) -> Path:
    """A small image of one grey level, written where ``path`` says."""
    cv2.imwrite(str(path), np.full((60, 80, 3), shade, np.uint8))
    return path


def test_a_looping_folder_is_listed_again_each_pass_and_a_bad_image_warned_about_once(
        tmp_path: Path, caplog):
    """Images added while looping are read, removed ones are dropped without a word, a broken
    one is logged once, not on every pass; when none is left the source ends saying so (was: the
    list fixed at start, a WARNING per pass for each deleted or broken file)."""
    _door(tmp_path / "a.png", 10)
    _door(tmp_path / "b.png", 20)
    (tmp_path / "c_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 half written")
    src = ImageFolderSource(tmp_path, loop=True)
    with caplog.at_level(logging.INFO, logger="maskd.sources"):
        names = [Path(f.source).name for f in _drain(src, limit=4)]
        assert names == ["a.png", "b.png", "a.png", "b.png"]  # next: c_broken.jpg, then a pass
        (tmp_path / "a.png").unlink()
        _door(tmp_path / "d.png", 30)
        names = [Path(f.source).name for f in _drain(src, limit=4)]
        assert names == ["b.png", "d.png", "b.png", "d.png"]
        for p in tmp_path.iterdir():
            p.unlink()
        assert src.read() is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "c_broken.jpg" in warnings[0], warnings
    assert src.stats["corrupt"] == 4  # skipped on each of 4 passes, said once
    assert "3 images now (1 new, 1 gone)" in caplog.text
    assert src.why_ended == f"{tmp_path}: the folder has no images left"


def test_a_folder_the_images_source_cannot_search_is_a_warning_once(tmp_path: Path, caplog):
    """A sub-folder not searched (here a link back to the folder: a loop) is said once, as
    `scan` makes it an error record, not skipped without a word on every pass."""
    _door(tmp_path / "a.png", 10)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "back").symlink_to(tmp_path, target_is_directory=True)
    with caplog.at_level(logging.INFO, logger="maskd.sources"):
        src = ImageFolderSource(tmp_path, loop=True)
        names = [Path(f.source).name for f in _drain(src, limit=3)]
    assert names == ["a.png"] * 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert str(tmp_path / "sub" / "back") in warnings[0] and "not read" in warnings[0]


def test_a_file_name_with_a_newline_is_one_warning_line(tmp_path: Path, caplog):
    """A broken image named `bad\\n<a log line>.jpg` (or a folder not searched so named) split
    `run`'s WARNING in two, the second half read as a line maskd logged; escaped as `scan`'s
    lines escape a name."""
    _door(tmp_path / "a.png", 10)
    (tmp_path / "bad\n2026-01-01 00:00:00,000 INFO maskd.service: all clear.jpg").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b\nack").symlink_to(tmp_path, target_is_directory=True)
    with caplog.at_level(logging.INFO, logger="maskd.sources"):
        src = ImageFolderSource(tmp_path)
        assert [Path(f.source).name for f in _drain(src, limit=3)] == ["a.png"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2 and not any("\n" in w for w in warnings), warnings
    assert any("bad\\n2026-01-01 00:00:00,000 INFO" in w for w in warnings)
    assert any("b\\nack: a link to a folder searched already" in w for w in warnings)


def test_a_looping_folder_whose_images_all_break_ends_saying_why(tmp_path: Path):
    _door(tmp_path / "a.png", 10)
    src = ImageFolderSource(tmp_path, loop=True)
    assert len(_drain(src, limit=3)) == 3
    (tmp_path / "a.png").write_bytes(b"not a png any more")
    assert src.read() is None
    assert src.why_ended == f"{tmp_path}: none of its images can be read"


def test_a_looping_video_truncated_in_place_says_so_once_and_ends_when_empty(tmp_path: Path,
                                                                             caplog):
    """Truncated: it plays what is left, with one WARNING that the file changed (FFmpeg's own
    complaint about the cut frame comes on every pass); emptied: the source ends saying why,
    with no reopening at full speed."""
    path = tmp_path / "clip.avi"
    noise = np.random.default_rng(0).integers(0, 256, (6, 240, 320, 3), np.uint8)
    _write_clip(path, list(noise))  # frames of ~50 KB: half the file holds whole frames
    src = VideoFileSource(path, loop=True)
    with caplog.at_level(logging.INFO, logger="maskd.sources"):
        assert len(_drain(src, limit=8)) == 8
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
        assert len(_drain(src, limit=30)) == 30
        loops = src.stats["loops"]
        path.write_bytes(b"")
        assert _drain(src, limit=50) == []
    assert src.stats["loops"] <= loops + 2
    assert caplog.text.count("changed on disk while looping") == 1
    assert src.why_ended is not None and str(path) in src.why_ended
    src.close()


def test_a_chmod_of_a_looping_video_is_no_change_of_its_content(tmp_path: Path, caplog):
    """The change time is compared only to try an ended loop again (a clip put back
    unreadable, then chmod-ed): a chmod or a new hard link of a clip playing as usual (a backup
    tool's, an admin's) was 'changed on disk while looping' and a reopen."""
    path = tmp_path / "clip.avi"
    _write_clip(path, list(np.random.default_rng(0).integers(0, 256, (4, 48, 64, 3), np.uint8)))
    src = VideoFileSource(path, loop=True)
    with caplog.at_level(logging.INFO, logger="maskd.sources"):
        assert len(_drain(src, limit=6)) == 6
        loops = src.stats["loops"]
        path.chmod(0o600)
        os.link(path, tmp_path / "backup.avi")
        assert len(_drain(src, limit=8)) == 8
    assert "changed on disk" not in caplog.text
    assert src.stats["loops"] == loops + 2 and src.stats["reopens"] == 0  # its passes
    src.close()


def test_a_looping_source_with_nothing_left_idles_saying_so_not_suggesting_loop(tmp_path: Path,
                                                                                 caplog):
    """The run loop names what happened, not '(use --exit-at-end or --loop)' to someone who
    gave --loop."""
    from loop_parts import service_for

    _door(tmp_path / "a.png", 10)
    src = ImageFolderSource(tmp_path, loop=True)
    svc = service_for(src)
    (tmp_path / "a.png").unlink()
    with caplog.at_level(logging.INFO):
        t = threading.Thread(target=svc.run, daemon=True)
        t.start()
        deadline = time.monotonic() + 10
        while "idle, trying" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.05)
        svc.stop()
        t.join(10)
    assert not t.is_alive()
    assert f"{tmp_path}: the folder has no images left; idle, trying it again" in caplog.text
    assert "--loop" not in caplog.text


def test_a_relative_video_name_with_a_colon_is_a_file_not_a_protocol(tmp_path, monkeypatch):
    """FFmpeg read '2026-12-04T12:' of '2026-12-04T12:30:00.mp4' as a protocol (and 'pipe:0.mp4'
    would read stdin): `run --source` such a file exited 78. OpenCV gets the absolute path."""
    monkeypatch.chdir(tmp_path)
    w = cv2.VideoWriter("v.mp4", cv2.VideoWriter.fourcc(*"mp4v"), 15.0, (64, 48))
    for _ in range(2):
        w.write(np.full((48, 64, 3), 90, np.uint8))
    w.release()
    for name in ("2026-12-04T12:30:00.mp4", "pipe:0.mp4", "./cam1:door.mp4"):
        shutil.copy("v.mp4", name)
        src = open_source(SourceConfig(uri=name))
        try:
            assert isinstance(src, VideoFileSource) and src.read().seq == 0
        finally:
            src.close()


def test_a_network_camera_whose_picture_freezes_is_lost_reopened_and_found_again(monkeypatch,
                                                                                  caplog):
    """A real MJPEG camera whose encoder hangs: the stream goes on at its frame rate, every frame
    the same JPEG. After frozen_after_s of the same picture the camera is lost (since the picture
    froze, one WARNING naming it), no frame of it is delivered and it is reopened; once the
    picture changes again it is found (was: "15 fps", healthy, blind for as long as it lasted)."""
    import maskd.sources
    from tools.ipcamera import IpCamera

    monkeypatch.setattr(maskd.sources, "STREAM_TIMEOUT_MS", 2000)
    with IpCamera(_stamped) as cam, caplog.at_level(logging.INFO, logger="maskd.sources"):
        src = open_source(SourceConfig(kind="opencv", uri=cam.url, reopen_min_s=0.2,
                                       reopen_max_s=0.5, frozen_after_s=1.0))
        try:
            assert all(_read_within(src, 10.0) is not None for _ in range(20))  # it moves
            assert src.stats["camera_lost_since"] is None
            frozen_wall = time.time()
            cam.freeze()
            deadline = time.monotonic() + 10
            while src.stats["camera_lost_since"] is None and time.monotonic() < deadline:
                _read_within(src, 0.5)
            since = src.stats["camera_lost_since"]
            assert since is not None, "a frozen camera is still taken for a live one"
            assert abs(datetime.fromisoformat(since).timestamp() - frozen_wall) < 1.5
            assert src.stats["camera_reconnecting"]
            assert _read_within(src, 2.5) is None  # the frozen picture is not delivered
            assert cam.connections >= 2  # reopened: a stuck stream may come back that way
            assert src.stats["camera_lost_since"] == since  # one outage, from when it froze
            cam.back()
            f = _read_within(src, 10.0)
            assert f is not None and src.stats["camera_lost_since"] is None
        finally:
            src.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "frozen" in r.message]
    assert len(warnings) == 1 and cam.url in warnings[0].message
    assert "picture changes again" in caplog.text


def test_a_still_scene_from_a_real_sensor_is_never_frozen(scenes_dir: Path):
    """The frozen check is exact: a still scene with a sensor's faintest noise (0.5 grey levels)
    still changes thousands of sampled pixels per frame after JPEG, so it never looks frozen."""
    from maskd.sources import frozen_sample

    base = cv2.resize(cv2.imread(str(_scene_images(scenes_dir, 1)[0])), (640, 480))
    rng = np.random.default_rng(1)
    samples = []
    for _ in range(10):
        noisy = np.clip(base + rng.normal(0, 0.5, base.shape), 0, 255).astype(np.uint8)
        ok, jpg = cv2.imencode(".jpg", noisy, [cv2.IMWRITE_JPEG_QUALITY, 50])
        samples.append(frozen_sample(cv2.imdecode(jpg, cv2.IMREAD_COLOR)))
    changed = [np.count_nonzero(a != b) for a, b in zip(samples[:-1], samples[1:], strict=True)]
    assert min(changed) > 0.1 * samples[0].size, changed


def test_a_stalled_cameras_outage_begins_at_its_last_frame(monkeypatch):
    """A stream that stalls is only given up after the stream timeout: camera_lost_since (and
    'frames again after N s') were counted from that read, not from the last frame (a 14 s
    stall was 'frames again after 4.0 s' on a device, with its 10 s timeout)."""
    from datetime import datetime

    import maskd.sources
    from tools.ipcamera import IpCamera

    monkeypatch.setattr(maskd.sources, "STREAM_TIMEOUT_MS", 4000)
    with IpCamera(_stamped) as cam:
        src = open_source(SourceConfig(kind="opencv", uri=cam.url, reopen_min_s=0.2,
                                       reopen_max_s=1.0))
        try:
            assert all(src.read() is not None for _ in range(5))
            stalled = time.time()
            cam.stall()
            deadline = time.monotonic() + 15
            while src.stats["camera_lost_since"] is None and time.monotonic() < deadline:
                time.sleep(0.1)
            since = src.stats["camera_lost_since"]
            found = time.time()
            cam.back()
            assert since is not None
        finally:
            src.close()
    assert found - stalled >= 3.5  # the read gave up after the 4 s timeout ...
    lost = datetime.fromisoformat(since).timestamp()
    assert lost <= stalled + 1.0, (lost - stalled)  # ... but the outage began with the stall


@pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs ffmpeg to write a variable-rate file")
def test_a_variable_rate_file_is_timed_by_its_own_clock(tmp_path):
    """Frames were timed seq / average fps: a phone's variable-rate clip or an NVR export
    with gaps (2 s at 30 fps, then one frame a second) put a 3 s sighting at 15 s and a gap
    of a minute at 1/fps. Now by the file's own frame times, from its first frame; looping
    goes on after the last frame of the pass."""
    from maskd.demo import astronaut_bgr

    face = tmp_path / "face.png"
    cv2.imwrite(str(face), cv2.resize(astronaut_bgr(), (160, 120)))
    clip = tmp_path / "vfr.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-loop", "1", "-i", str(face), "-t", "6", "-vf",
                    r"fps=30,select='lt(t\,2)+not(mod(n\,30))'", "-fps_mode", "vfr", "-c:v",
                    "mjpeg", str(clip)], check=True, timeout=60)
    src = VideoFileSource(clip, loop=True)
    times = []
    while len(times) < 2 * 64:
        frame = src.read()
        assert frame is not None
        times.append(frame.timestamp)
    src.close()
    rel = np.round(np.array(times) - times[0], 3)
    assert len(rel) == 128 and rel[59] == pytest.approx(59 / 30, abs=0.002)
    assert rel[60:64].tolist() == pytest.approx([2.0, 3.0, 4.0, 5.0], abs=0.002)
    assert rel[64] == pytest.approx(5.0 + 1 / src.fps, abs=0.002)  # the second pass
    assert rel[124:128].tolist() == pytest.approx((rel[60:64] + rel[64]).tolist(), abs=0.002)


@pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs ffmpeg to write a variable-rate file")
def test_a_whole_variable_rate_file_is_not_called_cut_short(tmp_path, caplog):
    """One frame a second for 4 s, then 30 a second: its last frame's time at the average rate
    is short of the frame count, and the whole file read was warned of as 'cut short'."""
    from maskd.demo import astronaut_bgr

    face = tmp_path / "face.png"
    cv2.imwrite(str(face), cv2.resize(astronaut_bgr(), (160, 120)))
    clip = tmp_path / "rev.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-loop", "1", "-i", str(face), "-t", "6", "-vf",
                    r"fps=30,select='gte(t\,4)+not(mod(n\,30))'", "-fps_mode", "vfr", "-c:v",
                    "libx264", "-pix_fmt", "yuv420p", str(clip)], check=True, timeout=60)
    with caplog.at_level(logging.WARNING, logger="maskd.sources"):
        n = len(_drain(VideoFileSource(clip)))
    assert n == 64 and "cut short" not in caplog.text, (n, caplog.text)


def test_a_device_node_that_is_no_camera_says_why():
    """/dev/null, a codec's node or a webcam's metadata node as source.uri were "OpenCV cannot
    open /dev/null", retried for ever as a lost camera; the node's own answer now says why."""
    import struct

    from maskd.sources import capture_problem, opencv_opener

    with pytest.raises(SourceError, match=r"OpenCV cannot open /dev/null: not a video device"):
        opencv_opener("/dev/null", SourceConfig(kind="opencv", uri="/dev/null"))()

    def capability(driver: bytes, card: bytes, caps: int, device_caps: int) -> bytes:
        return (driver.ljust(16, b"\0") + card.ljust(32, b"\0") + bytes(32)
                + struct.pack("<IIII", 0x60100, caps, device_caps, 0) + bytes(8))

    both = 0x84A00001  # a UVC webcam's driver: capture and metadata, device_caps given
    meta = capability(b"uvcvideo", b"HD Webcam C270", both, 0x04A00000)  # its second node
    assert len(meta) == 104
    said = capture_problem(meta)
    assert said is not None and "'HD Webcam C270' ('uvcvideo') that gives no pictures" in said
    assert "-video-index0" in said
    assert capture_problem(capability(b"uvcvideo", b"HD Webcam C270", both, 0x04200001)) is None
    # an old driver without device_caps: its capabilities are the node's
    assert capture_problem(capability(b"bcm2835-codec", b"decode", 0x04204000, 0)) is not None
    assert capture_problem(capability(b"unicam", b"unicam", 0x04001000, 0)) is None  # mplane


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="makes a device node and drops to nobody: needs root")
def test_a_camera_node_without_the_video_group_says_the_group():
    """A user not in the 'video' group (maskd run by hand) got "OpenCV cannot open /dev/video0"
    and nothing on what to do; the answer names the group. The node is a real character device
    (a /dev/null twin, root's, 0600) opened by a real process as nobody."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="maskd-dev-"))  # under /tmp: nobody may reach it
    folder.chmod(0o755)
    node = folder / "video7"
    try:
        os.mknod(node, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        shutil.rmtree(folder)
        pytest.skip("no device nodes here (a container without CAP_MKNOD)")
    try:
        _answer_as_nobody_and_root(node)
    finally:
        shutil.rmtree(folder)


def _answer_as_nobody_and_root(node: Path) -> None:
    from maskd.sources import device_answer

    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        try:
            os.close(read)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            said = device_answer(str(node)) or "None"
            os.write(write, said.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        said = f.read().decode()
    os.waitpid(child, 0)
    assert said.startswith("permission denied to ") and "'video' group" in said, said
    assert device_answer(str(node)) == "not a video device (no V4L2 driver answers on it)"


# ---------------------------------------------------------------- mutants that survived


def test_the_backoff_doubles_up_to_its_cap_and_shows_life_while_it_waits(monkeypatch):
    """Mutants that survived: a backoff not capped at reopen_max_s (a camera away for a day
    was tried again after hours), a wait that showed no sign of life for its whole delay (a
    30 s wait looked hung after RECONNECT_STALL_S), and a reopen_max_s under reopen_min_s
    (the config allows it) taken as the cap below the first delay."""
    import maskd.sources
    from maskd.sources import Backoff

    monkeypatch.setattr(maskd.sources, "BACKOFF_TICK_S", 0.05)
    stop = threading.Event()
    b = Backoff(0.05, 0.15, stop)
    delays = []
    for _ in range(4):
        delays.append(b.next_s)
        assert b.wait()
    assert delays == [0.05, 0.1, 0.15, 0.15]
    b.reset()
    assert b.next_s == 0.05
    low_cap = Backoff(0.1, 0.05, stop)
    assert low_cap.wait() and low_cap.next_s == 0.1
    slow = Backoff(0.6, 0.6, stop)
    waiter = threading.Thread(target=slow.wait)
    waiter.start()
    time.sleep(0.4)
    assert time.monotonic() - slow.beat < 0.2  # moved during the wait, not only at its start
    waiter.join(2)


def test_each_outage_is_summed_up_with_its_own_reopens_and_held_lines(monkeypatch, caplog):
    """Mutants that survived: the reopens of an outage counted from the start of the run (the
    second outage was summed up with the first one's reopens too), and an outage reopened once
    whose repeated lines were held back ended without its summary."""
    import maskd.sources

    monkeypatch.setattr(maskd.sources, "STEADY_S", 0.15)
    cam = FlakyCamera(np.full((48, 64, 3), 7, np.uint8))
    src = LiveSource("usbcam", cam.opener, reopen_min_s=0.01, reopen_max_s=0.02)

    def steady() -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 0.3:
            assert src.read() is not None

    def summaries() -> list[str]:
        return [r.getMessage() for r in caplog.records if "steady again" in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="maskd.sources"):
        assert src.read() is not None
        cam.plan, cam.open_failures = ["fail"], 2  # three opens: two fail
        steady()
        cam.plan, cam.open_failures = ["fail"], 1  # two opens: one fails
        steady()
        # reopened at once; its reads that failed at once (skipped as damaged frames until
        # the fifth) were said once and held back: summed up too
        cam.plan = ["fail"]
        steady()
    said = summaries()
    assert len(said) == 3, said
    assert [s.rsplit("(", 1)[1] for s in said] == ["3 reopens)", "2 reopens)", "1 reopens)"], said
    src.close()


def test_a_read_that_raises_reopens_at_once_and_a_stall_counts_in_the_outage(monkeypatch,
                                                                             caplog):
    """Mutants that survived: a read that raised taken for a damaged frame (skipped on the
    same capture, up to MAX_CORRUPT_IN_A_ROW times), not a broken device reopened at once;
    and an outage after a stall timed from when the read gave up, not from the last frame
    ("frames again after" left the stall out)."""
    import maskd.sources

    class Raising(FlakyCamera):
        def read(self):
            if self.plan and self.plan[0] == "raise":
                self.plan.pop(0)
                raise RuntimeError("VIDIOC_DQBUF: No such device")
            if self.plan and self.plan[0] == "stall":
                self.plan.pop(0)
                time.sleep(0.5)
                return False, None
            return super().read()

    cam = Raising(np.full((48, 64, 3), 7, np.uint8))
    src = LiveSource("usbcam", cam.opener, reopen_min_s=0.01, reopen_max_s=0.02)
    assert src.read() is not None
    cam.plan = ["raise"]
    assert src.read() is not None
    assert cam.opens == 2 and src.stats["reopens"] == 1 and src.stats["read_errors"] == 1
    src.close()
    monkeypatch.setattr(maskd.sources, "STREAM_TIMEOUT_MS", 400)  # a read of 0.2 s is a stall
    src = LiveSource("usbcam", cam.opener, reopen_min_s=0.01, reopen_max_s=0.02)
    assert src.read() is not None
    cam.plan = ["stall"]
    with caplog.at_level(logging.INFO, logger="maskd.sources"):
        assert src.read() is not None
    [after] = [float(w) for w in re.findall(r"frames again after ([\d.]+) s", caplog.text)]
    assert after >= 0.5, caplog.text
    src.close()


class ScriptedCapture:
    """OpenCV's capture as a file gives it: reads from ``script`` ("good", "unusable": a 16-bit
    frame, "failed": a read that fails), then failed reads (the end); ``props`` answers get()."""

    def __init__(self, script: list[str], props: dict[int, float]):
        self.script, self.props = list(script), props

    def read(self):
        step = self.script.pop(0) if self.script else "failed"
        if step == "failed":
            return False, None
        image = np.full((48, 64, 3), 90, np.uint8)
        return True, image.astype(np.uint16) if step == "unusable" else image

    def get(self, prop):
        return self.props.get(prop, 0.0)

    def set(self, prop, value):
        return False

    def release(self):
        pass


def _scripted(tmp_path: Path, script: list[str], props: dict[int, float]) -> VideoFileSource:
    path = tmp_path / "clip.avi"
    if not path.exists():
        w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
        for _ in range(3):
            w.write(np.full((48, 64, 3), 90, np.uint8))
        w.release()
    src = VideoFileSource(path)  # its first frame read from the real file
    src._cap.release()
    src._cap = ScriptedCapture(script, props)
    return src


def test_a_run_of_failed_and_unusable_frames_ends_the_pass_and_the_end_is_told_right(
        tmp_path: Path, caplog):
    """Mutants that survived: unusable frames (decoded, refused) not counted in the run that
    ends a pass, failed reads before one left out of it; a position OpenCV cannot give (NaN)
    taken as a time (the end of the file then raised); a file that ends one frame before its
    count, or whose count is short of its time (frames FFmpeg dropped), called cut short."""
    msec, at, count = cv2.CAP_PROP_POS_MSEC, cv2.CAP_PROP_POS_FRAMES, cv2.CAP_PROP_FRAME_COUNT
    src = _scripted(tmp_path, ["unusable"] * 5 + ["good"], {})
    assert src.read() is not None and src.read() is None
    src = _scripted(tmp_path, ["failed"] * 3 + ["unusable", "failed", "good"], {})
    assert src.read() is not None and src.read() is None
    assert src.stats["corrupt"] == 4
    with caplog.at_level(logging.WARNING, logger="maskd.sources"):
        src = _scripted(tmp_path, ["good"], {msec: float("nan"), at: 9, count: 10})
        first, second = src.read(), src.read()
        assert second.timestamp - first.timestamp == pytest.approx(0.1, abs=1e-4)
        assert src.read() is None
        src = _scripted(tmp_path, ["good"], {msec: 900.0, at: 5, count: 10})
        assert src.read() is not None and src.read() is not None and src.read() is None
    assert "cut short" not in caplog.text, caplog.text
    # a file that gives every frame the same time: timed 1/fps apart, never twice at one time
    src = _scripted(tmp_path, ["good", "good"], {msec: 0.0})
    times = [f.timestamp for f in _drain(src)]
    assert np.diff(times) == pytest.approx([0.1, 0.1], abs=1e-4), times


def test_a_looping_folder_times_its_passes_on_and_waits_for_new_images(tmp_path: Path, caplog):
    """Mutants that survived: a looping folder's frames timed from each pass's start (time
    went back at every pass), a pass that could read no image ending the source although
    images were added meanwhile, and an image warned about not warned again once it was
    removed and came back broken (the set of warnings only grew, month after month)."""
    _door(tmp_path / "a.png", 10)
    _door(tmp_path / "b.png", 20)
    src = ImageFolderSource(tmp_path, loop=True, fps=10.0)
    times = [f.timestamp for f in _drain(src, limit=4)]
    assert np.diff(times) == pytest.approx([0.1, 0.1, 0.1], abs=1e-4), times
    broken = tmp_path / "c_broken.jpg"
    for p in tmp_path.iterdir():
        p.unlink()
    broken.write_bytes(b"not a jpeg")
    src = ImageFolderSource(tmp_path, loop=True)
    with caplog.at_level(logging.WARNING, logger="maskd.sources"):
        _door(tmp_path / "d.png", 30)  # arrives while the first pass reads the broken one
        assert Path(src.read().source).name == "d.png"
        broken.unlink()
        assert [Path(f.source).name for f in _drain(src, limit=2)] == ["d.png", "d.png"]
        broken.write_bytes(b"still not a jpeg")
        assert [Path(f.source).name for f in _drain(src, limit=2)] == ["d.png", "d.png"]
    warned = [r.getMessage() for r in caplog.records if "c_broken.jpg" in r.getMessage()]
    assert len(warned) == 2, warned


def test_what_is_a_camera_index_or_node_and_what_an_absent_node_says():
    """Mutants that survived: "²" or "０" (isdigit() but no int()) taken for a camera index,
    and an absent /dev/video node said only as "OpenCV cannot open" (not unplugged?)."""
    from maskd.sources import _is_device, opencv_opener

    assert _is_device("0") and _is_device("12") and _is_device("/dev/video97")
    assert not _is_device("²") and not _is_device("０")
    with pytest.raises(SourceError, match=re.escape("/dev/video97 does not exist (camera "
                                                    "unplugged?)")):
        opencv_opener("/dev/video97", SourceConfig(kind="opencv", uri="/dev/video97"))()


def test_a_file_that_only_looks_like_boxes_is_no_unfinished_mp4(tmp_path: Path):
    """Mutant that survived: any file whose first 8 bytes read as a box (a text file
    "notavideo...") was "an MP4/MOV without its index"; an ISO file starts with ftyp."""
    from maskd.sources import frozen_sample, why_no_video

    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"notavideo, truly " * 50)
    assert why_no_video(junk).startswith("OpenCV cannot open this video file (no video stream")
    # the frozen check's sample: about FROZEN_SAMPLE_ROWS rows, strided by the height
    assert frozen_sample(np.zeros((480, 1920, 3), np.uint8)).shape[0] == 48


def test_what_an_http_camera_answers_beyond_a_plain_refusal():
    """Mutants that survived: a 403 without the words on the login, the URL's user and
    password never offered (a camera that takes them, then answers a web page, was said to
    refuse them), and a picture or raw bytes (a snapshot URL: OpenCV's own failure stands)
    called a document."""
    import base64
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from maskd.sources import opencv_opener

    login = "Basic " + base64.b64encode(b"admin:S3cret").decode()

    class Camera(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?")[0]
            code, kind = {"/forbidden": (403, "text/html"), "/snap": (200, "image/jpeg"),
                          "/raw": (200, "application/octet-stream"),
                          "/settings": (200, "text/html")}[path]
            if path == "/settings" and self.headers.get("Authorization") != login:
                code = 401
            self.send_response(code)
            if code == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="cam"')
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Camera)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    try:
        for url, said in (
                (f"http://127.0.0.1:{port}/forbidden",
                 ": HTTP 403 Forbidden: the camera asks for a login: put user:password@"),
                (f"http://admin:S3cret@127.0.0.1:{port}/settings",
                 ": it answers with an HTML page (text/html), not a video stream"),
                (f"http://127.0.0.1:{port}/snap", ""), (f"http://127.0.0.1:{port}/raw", "")):
            with pytest.raises(SourceError) as err:
                opencv_opener(url, SourceConfig(kind="opencv", uri=url))()
            shown = url.replace("S3cret", "***")
            assert str(err.value).startswith(f"OpenCV cannot open {shown}{said}"), str(err.value)
            if not said:
                assert str(err.value) == f"OpenCV cannot open {shown}", str(err.value)
    finally:
        server.shutdown()


def test_a_yuv420_picture_of_any_even_height_is_converted():
    """Mutant that survived: an I420 array told by an even row count (rows are 3/2 of the
    height: 369 for a height of 246) instead of one divisible by 3: such a picture went on
    as a grey one half again as tall."""
    from maskd.sources import picamera2_bgr

    bgr = np.full((246, 64, 3), (40, 120, 200), np.uint8)
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    assert i420.shape == (369, 64)
    out = picamera2_bgr(i420, "YUV420", 64)
    assert out.shape == (246, 64, 3) and np.abs(out.astype(int) - bgr).max() <= 3


def test_what_a_file_source_names_and_what_a_camera_list_says(tmp_path: Path, monkeypatch):
    """Mutants that survived: a single image opened as a one-frame video (not refused, naming
    its folder), a name under a file (a/b where a is a file) "cannot be looked up" rather than
    missing, a FOURCC OpenCV gives as negative raising instead of naming no codec, and a USB
    camera that libcamera lists called the Pi camera."""
    import types

    from maskd.sources import MissingSource, fourcc_text, picamera2_available

    photo = tmp_path / "door.jpg"
    cv2.imwrite(str(photo), np.full((48, 64, 3), 90, np.uint8))
    with pytest.raises(SourceError, match="a single image is not a source; give its folder"):
        open_source(SourceConfig(uri=str(photo)))
    with pytest.raises(MissingSource, match="no such file, folder or device"):
        open_source(SourceConfig(uri=str(photo / "clip.mp4")))
    assert fourcc_text(-1.0) == ""

    class Listed:
        @staticmethod
        def global_camera_info():
            return [{"Model": "HD Pro Webcam C920", "Id": "/base/axi/pcie@120000/rp1/usb@200000-1:1.0"}]

    monkeypatch.setitem(sys.modules, "picamera2", types.SimpleNamespace(Picamera2=Listed))
    assert picamera2_available() == ("a USB camera (HD Pro Webcam C920)", None)


def test_under_the_watchdog_both_ends_of_the_backoff_are_capped(monkeypatch):
    """Mutant that survived: only reopen_max_s capped at half the watchdog, so a
    reopen_min_s above it (8 s under WatchdogSec=10) still waited 8 s between tries."""
    from maskd.sources import live_source

    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    cam = FlakyCamera(np.zeros((8, 8, 3), np.uint8))
    src = live_source("cam", cam.opener, SourceConfig(reopen_min_s=8.0, reopen_max_s=20.0))
    try:
        backoff = src.inner._backoff
        assert (backoff.min_s, backoff.max_s, backoff.next_s) == (5.0, 5.0, 5.0)
    finally:
        src.close()


def test_the_stats_line_of_a_lost_camera_says_it_is_lost(caplog):
    """The journal's stats line, every 30 s, of a camera that is away: it says since when and
    why, in systemd's STATUS words, as it says grey pictures (was: ``door: 0.0 fps | ms capture 0.0 ... | active 0``, for hours,
    the same as a camera in an empty hall at night; the WARNING saying why came once a
    minute from another logger)."""
    from maskd.config import Config
    from maskd.service import _camera_loop
    from maskd.types import RunControl

    cfg = Config()
    cfg.camera = "door"
    cfg.source = SourceConfig(kind="opencv", uri="http://127.0.0.1:9/x.mjpg", reopen_min_s=0.05,
                              reopen_max_s=0.1)
    loop = _camera_loop(cfg, None, None, RunControl(), list, None, True, None)
    reader = threading.Thread(target=loop.source.read, daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 10
        while loop.source.stats["camera_lost_since"] is None and time.monotonic() < deadline:
            time.sleep(0.05)
        since = loop.source.stats["camera_lost_since"]
        assert since is not None
        with caplog.at_level(logging.INFO, logger="maskd.service"):
            loop._log_stats()
    finally:
        loop.source.close()
        reader.join(5)
    [line] = [r.getMessage() for r in caplog.records if " fps | " in r.getMessage()]
    assert line.startswith("door: 0.0 fps") and f" | active 0 | camera lost since {since} (cannot " \
        "open (" in line and line.endswith("); reconnecting"), line


def test_the_stats_line_comes_every_stats_interval_while_frames_flow(caplog, monkeypatch):
    """The journal's health line (fps, stage times, counts) is what an operator reads in
    `journalctl -u maskd`: a running loop writes it every STATS_EVERY_S, not only at the stop."""
    from loop_parts import BlankCamera, service_for

    from maskd import service
    from maskd.config import Config
    from maskd.sources import live_source

    monkeypatch.setattr(service, "STATS_EVERY_S", 0.3)  # 30 s in the service
    cfg = Config()
    cfg.camera = "door"
    loop = service_for(live_source("cam", BlankCamera().opener, SourceConfig()), cfg=cfg)
    runner = threading.Thread(target=loop.run, daemon=True)

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if " fps | " in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="maskd.service"):
        runner.start()
        try:
            assert wait_until(lambda: len(lines()) >= 2, 60), lines()
        finally:
            loop.stop()
            runner.join(30)
    assert all(x.startswith("door: ") and " | frames " in x for x in lines()), lines()


def test_the_stats_line_of_a_camera_that_sends_nothing_says_since_when(caplog):
    """A camera neither lost nor sending (a stalled stream, a driver whose read hangs): its
    stats line must not read like an empty hall (``0.0 fps | ... | active 0``); it ends with
    the time of the last frame, in systemd's STATUS words."""
    from loop_parts import BlankCamera, service_for

    from maskd.config import Config
    from maskd.sources import live_source

    cfg = Config()
    cfg.camera = "door"
    cfg.tracking.end_after_s = 0.5  # the gap after which "no frame" is said
    blank = BlankCamera()
    loop = service_for(live_source("cam", blank.opener, SourceConfig()), cfg=cfg)
    runner = threading.Thread(target=loop.run, daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: loop.frames >= 3, 60)
        blank.hang_read.set()
        assert wait_until(lambda: loop.stats().no_frame_since is not None, 60)
        since = loop.stats().no_frame_since
        with caplog.at_level(logging.INFO, logger="maskd.service"):
            loop._log_stats()
    finally:
        blank.hang_read.clear()
        loop.stop()
        runner.join(30)
    lines = [r.getMessage() for r in caplog.records if " fps | " in r.getMessage()]
    # (grey frames: after 5 s of them the line would say "grey pictures" before it)
    assert lines and lines[0].startswith("door: ") and re.search(
        rf" \| no frame for \d+ s \(since {re.escape(since)}\); camera not answering$",
        lines[0]) and " | active 0 | " in lines[0], lines


def test_the_stats_line_of_a_file_played_to_its_end_says_so(tmp_path, caplog):
    """A file source that ended idles until a signal: its stats line every 30 s said
    ``0.0 fps | ... | active 0`` for as long as it idled, like a camera in an empty hall."""
    from maskd.config import Config
    from maskd.service import _camera_loop
    from maskd.types import RunControl

    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((48, 64, 3), np.uint8))
    cfg = Config()
    cfg.camera = "door"
    cfg.source = SourceConfig(kind="images", uri=str(tmp_path))
    loop = _camera_loop(cfg, None, None, RunControl(), list, None, False, None)
    idle = threading.Thread(target=loop._source_ended, daemon=True)  # what the loop calls then
    try:
        with caplog.at_level(logging.INFO, logger="maskd.service"):
            idle.start()
            assert wait_until(lambda: loop.stats().source_ended, 10)
            loop._log_stats()
    finally:
        loop.stop()
        idle.join(5)
        loop.source.close()
    [line] = [r.getMessage() for r in caplog.records if " fps | " in r.getMessage()]
    assert line.startswith("door: 0.0 fps") and line.endswith(
        "| active 0 | end of the source; idle until stopped"), line


def test_a_looping_source_that_cannot_loop_any_more_is_a_problem_not_a_quiet_end(tmp_path):
    """A looping file or folder whose file was deleted (or emptied) idles until it plays again
    (the WARNING says so), but the status line said only ``end of the source; idle until
    stopped`` and ``problems`` was empty: the status page and Home Assistant showed that camera
    fine, at 0 fps, for good, while the other cameras of the map ran on."""
    loop = _door_loop(tmp_path, looping=True)
    assert loop.source.read() is not None
    (tmp_path / "a.jpg").unlink()
    assert loop.source.read() is None and loop.source.why_ended  # cannot loop: nothing left
    stats = _idled(loop)
    [problem] = stats.problems()
    assert problem == (f"end of the source ({tmp_path}: the folder has no images left); "
                       "trying it again until it plays"), problem
    assert stats.faults == ()  # the camera's own words, as a lost camera's: not said twice
    assert camera_text(stats) == problem  # systemd's status line and the previews' header


def test_a_looping_source_tried_again_says_why_it_cannot_play_now(tmp_path):
    """A looping file or folder that cannot loop is tried again until it plays, but the problem
    line (systemd's status, Home Assistant, the status page) kept the first reason for good: a
    folder deleted, then made again empty, or a clip deleted, then a file that is no video put
    there (a copy cut short), still said 'the folder is gone' or 'no such video file' of what
    `ls` shows. It says why it cannot play now."""
    from maskd.sources import VideoFileSource

    folder = tmp_path / "door"
    folder.mkdir()
    loop = _door_loop(folder, looping=True)
    loop.cfg.source.reopen_min_s = loop.cfg.source.reopen_max_s = 0.1
    assert loop.source.read() is not None
    shutil.rmtree(folder)
    assert loop.source.read() is None
    idle = threading.Thread(target=loop._source_ended, daemon=True)
    try:
        idle.start()
        assert wait_until(lambda: "the folder is gone" in str(loop.stats().problems()), 10)
        folder.mkdir()  # back, without its images
        assert wait_until(lambda: "the folder has no images left" in str(loop.stats().problems()),
                          10), loop.stats().problems()
    finally:
        loop.stop()
        idle.join(5)
        loop.source.close()

    clip = tmp_path / "clip.avi"
    _write_clip(clip, list(np.random.default_rng(0).integers(0, 256, (4, 48, 64, 3), np.uint8)))
    src = VideoFileSource(clip, loop=True)
    assert len(_drain(src, limit=4)) == 4
    clip.unlink()
    _drain(src, limit=8)
    assert src.why_ended == f"cannot loop: {clip}: no such video file"
    clip.write_text("not a video\n" * 100)
    assert not src.again()
    assert src.why_ended.startswith(f"cannot loop: {clip}: ") and (
        "no such video file" not in src.why_ended), src.why_ended
    src.close()


def test_a_file_played_to_its_end_is_still_no_problem(tmp_path):
    """The other side: a file that was not asked to loop ended as asked; no problem line."""
    assert _idled(_door_loop(tmp_path, looping=False)).problems() == []


def _door_loop(folder: Path, looping: bool):  # noqa: ANN202
    """Camera "door" on a folder of one black image, built as `maskd run` builds a loop."""
    from maskd.config import Config
    from maskd.service import _camera_loop
    from maskd.types import RunControl

    cv2.imwrite(str(folder / "a.jpg"), np.zeros((48, 64, 3), np.uint8))
    cfg = Config()
    cfg.camera = "door"
    cfg.source = SourceConfig(kind="images", uri=str(folder), loop=looping)
    return _camera_loop(cfg, None, None, RunControl(), list, None, False, None)


def _idled(loop):  # noqa: ANN001, ANN202
    """The loop's stats once its source has ended and it idles (what the loop calls then)."""
    idle = threading.Thread(target=loop._source_ended, daemon=True)
    try:
        idle.start()
        assert wait_until(lambda: loop.stats().source_ended, 10)
        return loop.stats()
    finally:
        loop.stop()
        idle.join(5)
        loop.source.close()


@pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs ffmpeg to write a recording")
def test_a_video_file_still_being_recorded_says_it_grew_at_its_end(tmp_path, caplog):
    """A recording still being written (ffmpeg or an NVR writing .mkv in real time) is read
    faster than it is written: the source caught up with the writer and ended as a finished
    file ends, "end of source", the rest of the recording never read and no word said. A real
    ffmpeg writes the file while it is read; its end now says the file grew meanwhile."""
    from maskd.sources import VideoFileSource

    clip = tmp_path / "recording.mkv"
    writer = subprocess.Popen(
        ["ffmpeg", "-nostdin", "-v", "error", "-re", "-f", "lavfi", "-i",
         "testsrc2=size=320x240:rate=10", "-t", "20", "-c:v", "libx264", "-tune", "zerolatency",
         "-g", "10", "-flush_packets", "1", "-f", "matroska", str(clip)],
        stdin=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: clip.exists() and clip.stat().st_size > 50_000, timeout=20.0)
        with caplog.at_level(logging.INFO, logger="maskd.sources"):
            src = VideoFileSource(clip)
            frames = 0
            while src.read() is not None:
                frames += 1
                time.sleep(0.05)  # a detector's pace, faster than the writer's 10 frames/s
            src.close()
    finally:
        writer.kill()
        writer.wait()
    assert 0 < frames < 200, frames  # it ended before the writer's 20 s
    assert "the file grew while it was read" in caplog.text, caplog.text
    assert "still being recorded" in caplog.text and "cut short" not in caplog.text


def test_a_looping_folder_that_ended_plays_again_once_it_has_images(tmp_path: Path):
    """`again`, which the idle run loop asks (a real loop: test_cameras.py): nothing while the
    folder stays empty, the next pass once an image is back."""
    _door(tmp_path / "a.png", 10)
    src = ImageFolderSource(tmp_path, loop=True)
    assert src.read() is not None
    (tmp_path / "a.png").unlink()
    assert src.read() is None and src.why_ended
    assert not src.again()
    _door(tmp_path / "b.png", 10)
    assert src.again() and src.why_ended is None
    assert src.read().source == str(tmp_path / "b.png")


def test_a_looping_folder_whose_unreadable_image_is_fixed_in_place_plays_again(tmp_path: Path):
    """The folder's only image broken (a copy cut short, a disk full) ends the loop with 'none
    of its images can be read; trying it again until it plays'; the same name written whole
    again was never tried (the same list of names), and the camera idled until a restart.
    The list's files unchanged are still not read again at every try."""
    img = _door(tmp_path / "a.png", 10)
    good = img.read_bytes()
    src = ImageFolderSource(tmp_path, loop=True)
    assert src.read() is not None
    img.write_bytes(b"")
    assert src.read() is None and "none of its images can be read" in src.why_ended
    assert not src.again()
    img.write_bytes(good)
    assert src.again() and src.why_ended is None
    assert src.read().source == str(img)


def test_a_looping_folder_linked_from_a_disk_gone_says_the_link(tmp_path):
    """A looping folder linked from a stick taken out (its mount gone: the link dangles) said
    'P: the folder is gone', of a name `ls` shows, in the problem line and Home Assistant,
    where a looping clip linked so says where its link leads, as the start does of both."""
    from maskd.sources import ImageFolderSource

    stick = tmp_path / "stick"
    (stick / "faces").mkdir(parents=True)
    cv2.imwrite(str(stick / "faces" / "a.jpg"), np.full((48, 64, 3), 128, np.uint8))
    door = tmp_path / "door"
    door.symlink_to(stick / "faces")
    src = ImageFolderSource(door, loop=True)
    assert src.read() is not None
    stick.rename(tmp_path / "stick.out")  # taken out
    assert src.read() is None
    assert src.why_ended == f"{door} is a link to {stick / 'faces'}, which is not there"
    (tmp_path / "stick.out").rename(stick)  # back
    assert src.again() and src.read() is not None


def test_a_looping_clip_played_again_after_it_was_gone_is_a_new_pass(tmp_path):
    """A looping clip deleted, then put back, plays again as a new pass: counted in `loops`
    (its replays, docs/service.md) and timed on after the last frame handed out, one frame
    interval a step, not by the old pass's start."""
    clip = tmp_path / "clip.avi"
    images = list(np.random.default_rng(0).integers(0, 256, (4, 48, 64, 3), np.uint8))
    _write_clip(clip, images)
    src = VideoFileSource(clip, loop=True)
    first = _drain(src, limit=4)
    loops = src.stats["loops"]
    clip.unlink()
    assert src.read() is None and src.why_ended == f"cannot loop: {clip}: no such video file"
    _write_clip(clip, images[::-1])  # back
    assert src.again() and src.why_ended is None
    again = _drain(src, limit=4)
    assert src.stats["loops"] == loops + 1, src.stats
    times = [f.timestamp for f in first + again]
    assert all(abs(b - a - 1 / src.fps) < 1e-6 for a, b in zip(times, times[1:], strict=False)), times
    src.close()


@pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs ffmpeg to write a file with a gap")
def test_a_looping_files_gap_is_waited_for_at_most_pace_max_wait_s(tmp_path):
    """A looping file plays in real time by its own frame times (``Pace``): a 40 s gap in an
    NVR export was a 40 s sleep inside read(), the loop deaf to SIGTERM (a real maskd run
    --loop took 37 s to stop) and silent to systemd's watchdog (30 s as shipped) the while.
    A wait is now at most PACE_MAX_WAIT_S, the frames after keep their spacing from there."""
    from maskd.sources import PACE_MAX_WAIT_S

    clip = tmp_path / "gap.mkv"
    subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc=size=160x120:rate=15",
                    "-vf", "setpts='if(gte(N,15),PTS+40/TB,PTS)'", "-frames:v", "30",
                    "-fps_mode", "vfr", "-c:v", "mjpeg", str(clip)], check=True, timeout=60)
    src = VideoFileSource(clip, loop=True, realtime=True)
    frames = _drain(src, limit=20)
    src.close()
    gap = frames[15].since_boot - frames[14].since_boot
    assert PACE_MAX_WAIT_S - 0.1 <= gap < PACE_MAX_WAIT_S + 1.0, gap
    after = frames[19].since_boot - frames[15].since_boot
    assert 4 / 15 - 0.02 <= after < 1.0, after  # 15 frames/s after it, not rushed
