"""The annotated clip (maskd.clip, `preview.annotate_dir`) on the demo clip's real frames: it
rotates by video time and by size, the oldest segments of its camera go beyond the cap, and a
full disk pauses the recording with one clear line, never the loop."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from mqtt_broker import small_disk

from maskd import clip
from maskd.clip import MB, ClipWriter
from maskd.demo import DemoSource
from maskd.types import Frame, LoopStats


def feed(writer: ClipWriter, passes: int = 1) -> int:
    """The demo's frames (15 fps, 120 a pass) through the writer; returns how many."""
    src = DemoSource(loop=True)
    n = passes * src.frames_per_pass
    for _ in range(n):
        writer.on_frame(src.read(), [], LoopStats(fps=15.0))
    return n


def frames_in(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return n


def test_rotates_by_video_time_and_caps_the_total(tmp_path):
    other = tmp_path / "hall-20200101-000000.mkv"  # another camera's segment: never touched
    other.write_bytes(b"x" * 3 * MB)
    notes = tmp_path / "notes.txt"
    notes.write_text("kept")
    w = ClipWriter(tmp_path, "door", 15.0, segment_s=2.0, segment_mb=100, keep_mb=0.8)
    n = feed(w)
    w.close()
    assert len(w.paths) == 4  # 8 s of video in 2 s segments
    left = sorted(tmp_path.glob("door-*.mkv"), key=lambda p: p.stat().st_mtime)
    assert list(w.deleted) == list(w.paths)[:len(w.paths) - len(left)] and w.deleted
    assert sum(p.stat().st_size for p in left) <= 0.8 * MB
    assert left[-1] == w.paths[-1]
    assert all(frames_in(p) == 30 for p in left)  # each segment plays: 2 s at 15 fps
    assert w.frames == n and other.exists() and notes.exists()


def test_a_long_run_remembers_only_its_latest_segments(tmp_path, monkeypatch, caplog):
    """Months of rotation must not grow the writer: it keeps the latest names, not all of them.
    The delete line names the cap as configured (0.3 was said '0 MB')."""
    monkeypatch.setattr(clip, "RECENT", 2)
    w = ClipWriter(tmp_path, "door", 15.0, segment_s=1.0, segment_mb=100, keep_mb=0.3)
    with caplog.at_level(logging.INFO, logger="maskd.clip"):
        feed(w)
    w.close()
    assert "(the clips of door were over annotate_keep_mb 0.3 MB)" in caplog.text
    on_disk = sorted(tmp_path.glob("door-*.mkv"), key=lambda p: p.stat().st_mtime)
    assert len(w.paths) == 2 and w.paths[-1] == on_disk[-1]  # 8 segments of 1 s were written
    assert len(w.deleted) == 2 and not any(p.exists() for p in w.deleted)
    assert sum(p.stat().st_size for p in on_disk) <= 0.3 * MB  # the cap still sees every file


def test_frames_of_another_size_start_a_new_file(tmp_path, caplog):
    """A camera back at another resolution (or a folder of photos of mixed sizes): the open
    file cannot take the new size, so a new one starts; every frame is recorded."""
    import numpy as np

    from maskd.types import Frame

    w = ClipWriter(tmp_path, "door", 15.0, segment_s=3600, segment_mb=100, keep_mb=100)
    sizes = [(120, 160)] * 5 + [(240, 320)] * 7 + [(120, 160)] * 3
    with caplog.at_level(logging.INFO, logger="maskd.clip"):
        for i, (h, wd) in enumerate(sizes):
            w.on_frame(Frame(np.full((h, wd, 3), 90, np.uint8), i, i / 15.0, "cam"), [],
                       LoopStats(fps=15.0))
    w.close()
    assert [frames_in(p) for p in w.paths] == [5, 7, 3] and w.frames == 15
    assert "frames are 320x240 now (were 160x120); new file" in caplog.text


def test_rotates_by_size(tmp_path):
    w = ClipWriter(tmp_path, "door", 15.0, segment_s=3600, segment_mb=0.25, keep_mb=100)
    n = feed(w)
    w.close()
    sizes = [p.stat().st_size for p in w.paths]
    assert len(sizes) >= 4, sizes
    # each full segment ends at the first frame past the limit, plus what the muxer held: its
    # open cluster (a keyframe interval here) and its index
    assert all(0.25 * MB <= s < 0.25 * MB + 256 * 1024 for s in sizes[:-1]), sizes
    assert sum(frames_in(p) for p in w.paths) == n


def test_run_rotates_and_caps_the_clip(tmp_path, default_model):
    """Started from a shell (umask 022), the clip of everyone in view is still the maskd user's
    and its group's only, as the snapshots are."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preview:\n  annotate_segment_s: 2\n  annotate_segment_mb: 0.5\n"
                   "  annotate_keep_mb: 1\n")
    out = tmp_path / "clips"
    r = subprocess.run([sys.executable, "-m", "maskd", "run", "--config", str(cfg), "--source",
                        "demo", "--exit-at-end", "--annotate", str(out), "--detector", "blazeface",
                        "--model", str(default_model)], capture_output=True, text=True, timeout=300,
                       umask=0o022)
    assert r.returncode == 0, r.stderr
    left = list(out.glob("camera-*.mkv"))
    assert r.stderr.count("annotated clip: /") == 4  # four 2 s segments closed
    assert "were over annotate_keep_mb 1 MB" in r.stderr
    assert 1 <= len(left) < 4 and sum(p.stat().st_size for p in left) <= MB
    assert out.stat().st_mode & 0o777 == 0o750
    assert all(p.stat().st_mode & 0o777 == 0o640 and frames_in(p) > 0 for p in left)


def test_bad_clip_limits_are_config_errors(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("preview:\n  annotate_segment_mb: 50\n  annotate_keep_mb: 10\n")
    r = subprocess.run([sys.executable, "-m", "maskd", "check-config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 78
    assert "preview.annotate_keep_mb (10) is smaller than preview.annotate_segment_mb (50)" in r.stderr


def test_full_disk_pauses_the_clip_and_resumes(tmp_path, monkeypatch, caplog):
    with small_disk(tmp_path / "disk", "3m") as disk, caplog.at_level(logging.INFO, "maskd.clip"):
        w = ClipWriter(disk, "door", 15.0, segment_s=3600, segment_mb=100, keep_mb=100,
                       min_free=1 * MB)
        n = feed(w, passes=2)  # 2.8 MB of clip on a 3 MB disk that keeps 1 MB free
        assert w.flush()
        assert w.paused and w.dropped > 0 and w.frames + w.dropped == n
        assert "MB free, under the 1 MB kept free; recording paused (detection goes on)" in caplog.text
        first = w.paths[0]
        assert frames_in(first) == w.frames  # the closed segment still plays, index and all
        # room again: the next try opens a new segment
        monkeypatch.setattr(clip, "RETRY_S", 0.0)
        first.unlink()
        w._retry_at = 0.0
        feed(w)
        w.close()
        assert len(w.paths) == 2 and frames_in(w.paths[1]) > 0
        assert "recording again" in caplog.text


def test_run_survives_a_clip_on_a_full_disk(tmp_path, default_model):
    """The run goes on, and the paused recording is a problem in systemd's status line (so
    also Home Assistant's problem sensor and the status page), as paused snapshots are."""
    from test_notify import NotifySocket

    sock = NotifySocket(str(tmp_path / "notify"))
    env = {**os.environ, "NOTIFY_SOCKET": sock.address, "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    with small_disk(tmp_path / "disk", "1m") as disk:
        r = subprocess.run([sys.executable, "-m", "maskd", "run", "--source", "demo",
                            "--exit-at-end", "--jsonl", "-", "--annotate", str(disk),
                            "--detector", "blazeface", "--model", str(default_model)],
                           capture_output=True, text=True, timeout=300, env=env)
    sock.drain()
    sock.close()
    assert r.returncode == 0, r.stderr
    kinds = [json.loads(x)["event_type"] for x in r.stdout.splitlines()]
    assert kinds[0] == "start" and kinds[-1] == "end"
    assert "recording paused (detection goes on)" in r.stderr and "Traceback" not in r.stderr
    said = re.compile(r"annotated clip camera: recording paused \(\d+\.\d MB free, under the 16 MB "
                      r"kept free\)")
    statuses = [m["STATUS"] for m in sock.messages if "STATUS" in m]
    assert any(said.fullmatch(part) for s in statuses for part in s.split(" | ")), statuses[-3:]


@pytest.mark.parametrize("name", ["door-20260101-120000.mkv", "door-20260101-120000_2.mkv",
                                  "door-20260101-120000.mp4"])  # .mp4: an older version's
def test_segment_names(name):
    assert clip.segment_pattern("door").fullmatch(name)
    assert not clip.segment_pattern("door").fullmatch("hall-20260101-120000.mkv")
    assert not clip.segment_pattern("door").fullmatch("door-20260101-120000.avi")


def test_the_open_segment_plays_after_kill_9(tmp_path):
    """SIGKILL, a watchdog kill or a power cut leaves the segment being written as it is: it must
    still play up to about where it was cut (an mp4 without its index played nothing)."""
    script = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from maskd.clip import ClipWriter
        from maskd.demo import DemoSource
        from maskd.types import LoopStats
        src, w = DemoSource(loop=True), ClipWriter(Path({str(tmp_path)!r}), "door", 15.0)
        for _ in range(90):
            w.on_frame(src.read(), [], LoopStats(fps=15.0))
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    (seg,) = tmp_path.glob("door-*")  # an .mp4 here (older versions) read back 0 frames
    assert 30 <= frames_in(seg) <= 90  # what reached the disk before the kill plays


def test_an_older_versions_mp4_segments_count_toward_the_cap(tmp_path):
    old = tmp_path / "door-20200101-000000.mp4"
    old.write_bytes(b"x" * MB)
    os.utime(old, (1e9, 1e9))
    w = ClipWriter(tmp_path, "door", 15.0, segment_s=2.0, segment_mb=100, keep_mb=0.9)
    assert not old.exists() and list(w.deleted) == [old]  # over the cap at start: oldest first


def test_the_cap_keeps_this_runs_footage_when_the_clock_went_back(tmp_path):
    """A Pi without a real-time clock may boot on an earlier time than its last run's (1970
    without fake-hwclock, or up to an hour back after a power cut with it): the last run's
    segments then look newer than this run's, and the cap deleted the footage just recorded
    (3 of 4 segments here) and kept the old. This run's segments are the newest, whatever their
    dates."""
    tomorrow = time.time() + 86400
    before = [tmp_path / f"door-20991231-23595{i}.mkv" for i in range(2)]
    for i, p in enumerate(before):
        p.write_bytes(b"x" * (MB // 2))
        os.utime(p, (tomorrow + i, tomorrow + i))
    w = ClipWriter(tmp_path, "door", 15.0, segment_s=2.0, segment_mb=100, keep_mb=0.9)
    feed(w)
    w.close()
    assert not any(p.exists() for p in before)  # the last run's, oldest first
    assert list(w.deleted)[:2] == before
    kept = [p for p in w.paths if p.exists()]
    assert kept and kept == list(w.paths)[-len(kept):]  # this run's latest footage


def test_a_folder_that_could_not_be_created_is_created_at_the_retry(tmp_path, monkeypatch, caplog):
    """The ERROR line promises a retry every 30 s: once the obstacle is gone, the retry makes
    the folder and records (it used to wait for room in a folder nobody would create)."""
    blocker = tmp_path / "blk"
    blocker.write_text("a file where the folder's parent should be")
    with caplog.at_level(logging.INFO, "maskd.clip"):
        w = ClipWriter(blocker / "clips", "door", 15.0)
        assert w.paused and "cannot create the folder" in caplog.text
        feed(w)
        assert w.flush()
        blocker.unlink()
        monkeypatch.setattr(clip, "RETRY_S", 0.0)
        w._retry_at = 0.0
        n = feed(w)
        w.close()
    assert w.paused is None and "recording again" in caplog.text
    assert "frames not recorded (paused: cannot create the folder" in caplog.text  # not "room"
    assert (blocker / "clips").is_dir() and frames_in(w.paths[-1]) == n


def test_a_file_that_cannot_be_created_pauses_once_and_says_recording_again_only_then(
        tmp_path, monkeypatch, caplog):
    """A create refused for another reason than room (a folder this user may no longer write):
    each retry said 'recording again' and a new ERROR (two lines every 30 s, for ever)."""
    import os as real_os

    made = real_os.open
    refused = {"on": False}

    def deny(path, *args, **kwargs):
        if refused["on"] and str(path).endswith(clip.SUFFIX):
            raise PermissionError(13, "Permission denied")
        return made(path, *args, **kwargs)

    monkeypatch.setattr(clip.os, "open", deny)
    monkeypatch.setattr(clip, "RETRY_S", 0.0)
    with caplog.at_level(logging.INFO, "maskd.clip"):
        w = ClipWriter(tmp_path, "door", 15.0, segment_s=1.0, segment_mb=100, keep_mb=100)
        feed(w)
        assert w.flush() and w.paused is None
        refused["on"] = True
        feed(w, passes=2)  # a new file each second of video, each refused, retried at once
        assert w.flush() and w.paused
        paused = [r for r in caplog.records if "recording paused" in r.getMessage()]
        assert len(paused) == 1 and "recording again" not in caplog.text, caplog.text[-2000:]
        refused["on"] = False
        feed(w)
        w.close()
    assert w.paused is None and caplog.text.count("recording again") == 1


def test_segments_the_cap_cannot_delete_are_said_once_a_minute(tmp_path, monkeypatch, caplog):
    """Each segment the cap could not delete got a WARNING at every new file (a dozen lines
    every annotate_segment_s while a folder refused deletions)."""
    from pathlib import Path

    def refuse(self, missing_ok=False):
        raise PermissionError(13, "Permission denied")

    with caplog.at_level(logging.WARNING, "maskd.clip"):
        w = ClipWriter(tmp_path, "door", 15.0, segment_s=0.5, segment_mb=100, keep_mb=0.05)
        monkeypatch.setattr(Path, "unlink", refuse)
        feed(w, passes=2)  # 16 s of video: 32 files, each over the cap
        assert w.flush()
        monkeypatch.undo()
        w.close()
    said = [r for r in caplog.records if "cannot delete" in r.getMessage()]
    assert len(said) == 1, len(said)


def test_a_folder_deleted_mid_run_is_created_again(tmp_path):
    out = tmp_path / "clips"
    w = ClipWriter(out, "door", 15.0, segment_s=1.0, segment_mb=100, keep_mb=100)
    feed(w)
    assert w.flush()
    shutil.rmtree(out)  # an operator cleaning up, a tmpfiles rule
    n = feed(w)
    w.close()
    assert w.paused is None and w.dropped == 0
    assert out.is_dir() and sum(frames_in(p) for p in out.glob("door-*")) >= n - 15


def test_a_segment_deleted_while_written_starts_a_new_one(tmp_path, caplog):
    """By hand or by another writer's cap (two processes with one camera name in one folder): the
    frames must not go on into the unlinked file, which would never rotate; said once a minute."""
    w = ClipWriter(tmp_path, "door", 15.0, segment_s=3600, segment_mb=100, keep_mb=100)
    frames = DemoSource(loop=True)
    with caplog.at_level(logging.INFO, "maskd.clip"):
        for i in range(90):
            if i in (30, 60):
                assert w.flush()
                w.paths[-1].unlink(missing_ok=True)  # the old code wrote on into it
            w.on_frame(frames.read(), [], LoopStats(fps=15.0))
        w.close()
    assert len(w.paths) == 3 and frames_in(w.paths[-1]) == 29  # the 31st went to the lost file
    assert caplog.text.count("was deleted while being written") == 1
    assert "each needs its own camera name or folder" in caplog.text


def test_a_disk_full_of_its_own_clips_rolls_on(tmp_path, caplog):
    """Under the default keep_mb on a small card the clip itself fills the disk: its oldest
    closed segments go for room and it records on (it paused for good, with the oldest footage)."""
    with small_disk(tmp_path / "disk", "3m") as disk, caplog.at_level(logging.INFO, "maskd.clip"):
        other = disk / "hall-20200101-000000.mkv"  # another camera's: never touched
        other.write_bytes(b"x" * 100_000)
        notes = disk / "notes.txt"
        notes.write_text("kept")
        w = ClipWriter(disk, "door", 15.0, segment_s=3600, segment_mb=0.4, keep_mb=1000,
                       min_free=1 * MB)
        n = feed(w, passes=3)  # about 4 MB of clip on a 3 MB disk that keeps 1 MB free
        w.close()
        assert w.paused is None and w.dropped == 0 and w.frames == n
        assert w.deleted_for_room >= 2 and w.paths[-1].exists()
        assert not any(p.exists() for p in w.deleted) and list(w.deleted) == list(w.paths)[:len(w.deleted)]
        assert other.exists() and notes.read_text() == "kept"
        assert frames_in(w.paths[-1]) > 0 and "recording paused" not in caplog.text
        said = [r.getMessage() for r in caplog.records if "deleted for room" in r.getMessage()]
        assert 1 <= len(said) <= 2, said  # at once, then at the close: not one per segment


def test_a_disk_full_of_other_files_pauses_and_keeps_the_clips(tmp_path, caplog):
    """Room taken by files not of this camera: deleting all its segments would not make room,
    so none is deleted for nothing; the recording pauses as before."""
    with small_disk(tmp_path / "disk", "3m") as disk, caplog.at_level(logging.INFO, "maskd.clip"):
        w = ClipWriter(disk, "door", 15.0, segment_s=1.0, segment_mb=100, keep_mb=1000,
                       min_free=1 * MB)
        src = DemoSource(loop=True)
        for _ in range(40):  # under three 1 s segments, far under 1 MB together
            w.on_frame(src.read(), [], LoopStats(fps=15.0))
        assert w.flush()
        ours = sum(p.stat().st_size for p in disk.glob("door-*"))
        assert ours < 0.5 * MB
        (disk / "user.bin").write_bytes(b"x" * (shutil.disk_usage(disk).free - MB // 4))
        for _ in range(20):
            w.on_frame(src.read(), [], LoopStats(fps=15.0))
        w.close()
        assert w.paused and w.deleted_for_room == 0 and not w.deleted
        assert all(p.exists() for p in w.paths) and (disk / "user.bin").exists()
        assert "recording paused (detection goes on)" in caplog.text


def test_a_card_gone_read_only_pauses_the_clip_and_says_why(tmp_path, monkeypatch, caplog):
    """A failing SD card: the kernel remounts the clip's ext4 read-only under the writer, whose
    writes then fail without a word from OpenCV. The recording pauses with the reason (was: it
    went on "recording" into nothing, the log counting the frames), stays paused at each retry
    without a "recording again", and the close says how many frames were not recorded."""
    from mqtt_broker import fail_card, sd_card

    monkeypatch.setattr(clip, "WRITABLE_LOOK_S", 0.0)
    monkeypatch.setattr(clip, "RETRY_S", 0.0)
    with sd_card(tmp_path / "card", "64M") as card, caplog.at_level(logging.INFO, "maskd.clip"):
        w = ClipWriter(card / "clips", "door", 15.0)
        src = DemoSource(loop=True)  # one clock: the open segment goes on after the failure
        for _ in range(120):
            w.on_frame(src.read(), [], LoopStats(fps=15.0))
        assert w.flush() and w.paused is None and w.frames == 120
        fail_card(card)
        for _ in range(120):
            w.on_frame(src.read(), [], LoopStats(fps=15.0))
        assert w.flush() and w.faults() == [f"annotated clip door: recording paused ({w.paused})"]
        w.close()
    assert w.paused is not None and w.paused.startswith("its file system is read-only now"), w.paused
    assert 100 <= w.dropped < 120 and "recording again" not in caplog.text
    assert re.search(r"door: \d+ frames not recorded \(its file system is read-only now \(the "
                     r"kernel remounts it so after a storage error", caplog.text), caplog.text


def clip_with_writes_failing(tmp_path: Path, paths: list[str], when: str, script: str,
                             *args: str) -> tuple[dict, str]:
    """``script`` (a ClipWriter fed frames; the last stdout line JSON) run under strace that
    fails the writes to ``paths`` with EIO from the ``when``-th on: that JSON and the stderr."""
    from test_faults_mqtt import strace_injecting

    r = subprocess.run(
        [strace_injecting(), "-f", "-qq", "-o", str(tmp_path / "strace.log"), "-e", "trace=write",
         *[a for p in paths for a in ("-P", p)], "-e", f"inject=write:error=EIO:when={when}",
         sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "INJECTED" in (tmp_path / "strace.log").read_text(), "the fault met no write"
    return json.loads(r.stdout.splitlines()[-1]), r.stderr


def test_a_clip_whose_writes_fail_pauses_and_says_why(tmp_path):
    """A card whose writes fail with EIO (injected by strace into the clip's file only) without
    going read-only: FFmpeg stops writing at the first failed write and OpenCV says nothing, so
    the clip went on "recording" into a file that no longer grew, no problem line, no ERROR
    (reproduced with `maskd run --source demo --annotate`: faults [] for good). Now the file
    not growing pauses the recording with the reason, and a new file tried at the retry that
    does not grow either keeps it paused without a false "recording again". Each file's close
    line says the frames that never reached it (it claimed 519 frames of an empty file)."""
    out = tmp_path / "clips"
    t = time.time()  # the names the writer will give its files (one a second), traced by path
    paths = [str(out / f"door-{time.strftime('%Y%m%d-%H%M%S', time.localtime(t + i))}{s}.mkv")
             for i in range(-1, 170) for s in ("", "_1")]
    script = textwrap.dedent("""
        import json, logging, sys
        from pathlib import Path
        from maskd import clip
        from maskd.demo import DemoSource
        from maskd.types import LoopStats
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        clip.WRITABLE_LOOK_S = clip.RETRY_S = 0.0  # look at every frame, retry at once
        w = clip.ClipWriter(Path(sys.argv[1]), "door", 15.0)
        src = DemoSource(loop=True)
        for _ in range(4500):
            w.on_frame(src.read(), [], LoopStats(fps=15.0))
        w.flush()
        print(json.dumps({"faults": w.faults(), "paths": len(w.paths)}))
        w.close()
    """)
    said, stderr = clip_with_writes_failing(tmp_path, paths, "5+", script, str(out))
    assert said["faults"] and "stopped growing while frames were written to it: its writes " \
        "fail" in said["faults"][0], (said, stderr[-3000:])
    assert said["paths"] >= 2  # tried again, and that file did not grow either
    assert stderr.count("recording paused") == 1 and "recording again" not in stderr, \
        stderr[-3000:]
    closed = re.findall(r"annotated clip: (\S+) \((\d+) frames(?:; (?:(none) were written|the last "
                        r"(\d+) were not written): its writes failed)?\)", stderr)
    assert len(closed) == said["paths"], stderr[-3000:]
    for path, handed, none, lost in closed:  # FFmpeg's last 256 KiB (~25 frames) never came
        written = 0 if none else int(handed) - int(lost or 0)
        assert 0 <= written - frames_in(Path(path)) <= 30, (path, handed, none, lost)


def test_a_file_whose_first_write_fails_is_judged_at_the_last_files_bytes_per_frame(tmp_path):
    """A card whose writes fail (EIO) only a moment, at a new segment's first write: FFmpeg
    writes nothing more to that file, so it stays empty while the card works again, and an
    empty file was taken as failing only after STALL_EMPTY_S (5 minutes of video): 4500 frames
    at 15 fps lost without a word (reproduced with strace on a real ClipWriter). It is judged
    now at the bytes per frame of the file before it, as a file with content is at its own."""
    out = tmp_path / "clips"
    t0 = math.ceil(time.time()) + 3  # the first file's second; every later name is traced
    paths = [str(out / f"door-{time.strftime('%Y%m%d-%H%M%S', time.localtime(t0 + i))}{s}.mkv")
             for i in range(1, 200) for s in ("", "_1")]
    # 120 s of video: the old rule said nothing for 300 s; the new one speaks near frame 1000
    # and the next file records again by about 1030 (seen: 992, 1029)
    fps, n = 15.0, 1800
    script = textwrap.dedent("""
        import json, logging, sys, time
        from pathlib import Path
        from maskd import clip
        from maskd.demo import DemoSource
        from maskd.types import Frame, LoopStats
        logging.basicConfig(level=logging.INFO, stream=sys.stderr)
        clip.WRITABLE_LOOK_S = clip.RETRY_S = 0.0  # look at every frame, retry at once
        t0, fps, n = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
        w = clip.ClipWriter(Path(sys.argv[1]), "door", fps, segment_mb=2.0)
        src = DemoSource(loop=True)
        said = again = None
        time.sleep(max(0.0, t0 - time.time()))
        for i in range(n):
            if i == 100:  # the next file (at 2 MB) opens in a traced second
                w.flush()
                time.sleep(max(0.0, t0 + 1.2 - time.time()))
            w.on_frame(Frame(src.read().image, i, i / fps, "door"), [], LoopStats(fps=fps))
            w.flush()
            if said is None and w.faults():
                said = i
            if said is not None and again is None and not w.faults():
                again = i
        w.close()
        print(json.dumps({"said": said, "again": again, "paths": [p.name for p in w.paths]}))
    """)
    said, stderr = clip_with_writes_failing(tmp_path, paths, "1", script, str(out), str(t0),
                                            str(fps), str(n))
    first, failed = (out / name for name in said["paths"][:2])
    assert first.stat().st_size and not failed.stat().st_size, said  # the second file's write failed
    assert said["said"] is not None and "recording again" in stderr, (said, stderr[-3000:])
    # its close line says none of the frames handed to it were written (was: 'none were not
    # written', which says the opposite)
    assert re.search(rf"annotated clip: {re.escape(str(failed))} \(\d+ frames; none were "
                     r"written: its writes failed\)", stderr), stderr[-3000:]
    lost = n - sum(frames_in(out / name) for name in said["paths"])
    assert lost <= 60 * fps, (lost, said)  # the 8 MiB at the first file's ~10 KB a frame


def test_the_runs_first_file_empty_from_its_first_write_is_judged_at_5_minutes(tmp_path):
    """The run's first file, whose first write fails (EIO): no file before it grew at its
    close, so nothing tells its bytes per frame; it stays empty for good and is said to fail
    after STALL_EMPTY_S, 5 minutes of video (docs/reliability.md), not sooner (a still scene
    at the start is no failing card) and not later (footage lost without a word)."""
    out = tmp_path / "clips"
    t0 = math.ceil(time.time()) + 2  # the first file's second (or the next): traced
    paths = [str(out / f"door-{time.strftime('%Y%m%d-%H%M%S', time.localtime(t0 + i))}.mkv")
             for i in range(2)]
    fps, n = 2.0, 700  # 350 s of video
    script = textwrap.dedent("""
        import json, sys, time
        from pathlib import Path
        from maskd import clip
        from maskd.demo import DemoSource
        from maskd.types import Frame, LoopStats
        clip.WRITABLE_LOOK_S = clip.RETRY_S = 0.0  # look at every frame, retry at once
        t0, fps, n = float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
        w = clip.ClipWriter(Path(sys.argv[1]), "door", fps)
        src = DemoSource(loop=True)
        said = None
        time.sleep(max(0.0, t0 + 0.1 - time.time()))
        for i in range(n):
            w.on_frame(Frame(src.read().image, i, i / fps, "door"), [], LoopStats(fps=fps))
            w.flush()
            if said is None and w.faults():
                said = i
        w.close()
        print(json.dumps({"said": said, "paths": [p.name for p in w.paths]}))
    """)
    said, stderr = clip_with_writes_failing(tmp_path, paths, "1", script, str(out), str(t0),
                                            str(fps), str(n))
    assert not (out / said["paths"][0]).stat().st_size, said  # the first file's write failed
    assert said["said"] is not None, (said, stderr[-3000:])
    assert abs(said["said"] - 300 * fps) <= 2, said  # 5 minutes of video, to a frame or two


@pytest.mark.parametrize("gap", [0.0, 3.0])
def test_a_scene_that_turns_cheap_to_encode_is_no_failing_card(tmp_path, monkeypatch, caplog,
                                                               gap):
    """A camera's busy stretch, then its night (a dark still frame, a few hundred bytes a frame
    at 5 fps): FFmpeg's next 256 KiB block took over a minute to come, and the file judged by
    the busy stretch's bytes per frame was said to fail its writes at 30 s (ERROR, problem
    line, recording paused). The close of the file that has not grown says which it is: its
    held bytes reach the disk when writes work. So for a night in a new file (after a gap),
    judged while empty at the busy file's bytes per frame."""
    import numpy as np

    monkeypatch.setattr(clip, "WRITABLE_LOOK_S", 0.0)  # look at every frame
    fps, h, w = 5.0, 480, 640
    busy = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    dark = np.full((h, w, 3), 12, np.uint8)
    frames = [np.roll(busy, 7 * i, axis=1) for i in range(int(30 * fps))]
    frames += [dark.copy() for _ in range(int(90 * fps))]
    writer = ClipWriter(tmp_path, "door", fps)
    with caplog.at_level(logging.INFO, logger="maskd.clip"):
        for i, image in enumerate(frames):
            t = 1000.0 + i / fps + (gap if i >= 30 * fps else 0.0)
            writer.on_frame(Frame(image, i, t, "door"), [], LoopStats(fps=fps))
            if i % 25 == 0:
                assert writer.flush()
                assert writer.faults() == [], caplog.text[-2000:]
        writer.close()
    assert "stopped growing" not in caplog.text, caplog.text[-2000:]
    assert caplog.text.count("grew at its close") <= 1, caplog.text[-2000:]  # one new file at most
    assert sum(frames_in(p) for p in sorted(tmp_path.glob("*.mkv"))) == len(frames)


def test_even_size_repeats_the_last_row_and_column():
    import numpy as np

    img = np.arange(3 * 5 * 3, dtype=np.uint8).reshape(3, 5, 3)
    out = clip.even_size(img)
    assert out.shape == (4, 6, 3)
    assert (out[:3, :5] == img).all() and (out[3, :5] == img[2]).all()
    assert (out[:3, 5] == img[:, 4]).all()
    even = np.zeros((4, 6, 3), np.uint8)
    assert clip.even_size(even) is even


def test_odd_sized_frames_keep_every_row_and_column(tmp_path):
    """mp4v takes even sides only: a 301x400 frame came back 300x400, its last row lost."""
    import numpy as np

    from maskd.types import Frame

    img = np.zeros((301, 401, 3), np.uint8)
    img[-1, :] = 255  # the last row and column: white, the rest black
    img[:, -1] = 255
    w = ClipWriter(tmp_path, "door", 15.0)
    for i in range(15):
        w.on_frame(Frame(img, i, i / 15.0, "cam"), [], LoopStats(fps=15.0))
    w.close()
    cap = cv2.VideoCapture(str(w.paths[-1]))
    ok, back = cap.read()
    cap.release()
    assert ok and back.shape == (302, 402, 3)
    assert back[300, :380].mean() > 200 and back[:280, 400].mean() > 200  # kept, not cut off
    assert back[:280, :380].mean() < 30


def test_a_frame_too_big_for_mp4v_is_recorded_shrunk_and_the_clip_goes_on(tmp_path):
    """An images folder with a 9000x1700 panorama: mp4v cannot open a file 8192 or more pixels
    on a side, so the clip paused for RETRY_S and the photos after it were not recorded."""
    pano = np.zeros((1701, 9000, 3), np.uint8)
    pano[:, -1] = 255  # the last column: shrunk into the right edge, not cut off
    w = ClipWriter(tmp_path, "door", 15.0)
    w.on_frame(Frame(pano, 0, 0.0, "/srv/in/b_pano.png"), [], LoopStats(fps=15.0))
    for i in range(1, 6):
        w.on_frame(Frame(np.zeros((366, 512, 3), np.uint8), i, i / 15.0, "/srv/in/c.jpg"), [],
                   LoopStats(fps=15.0))
    w.close()
    assert (w.paused, w.dropped) == (None, 0)
    assert [frames_in(p) for p in w.paths] == [1, 5]
    cap = cv2.VideoCapture(str(w.paths[0]))
    ok, back = cap.read()
    cap.release()
    assert ok and back.shape == (1548, 8190, 3) and back[:, -1].mean() > 150


def record(w: ClipWriter, frames) -> None:
    """Live frames handed over one at a time, each written before the next: these tests are
    about where frames are placed, not about a writer too slow for the loop (below)."""
    for f in frames:
        w.on_frame(f, [], LoopStats())
        assert w.flush()


def live_frames(n: int, loop_fps: float, t0: float = 1000.0, gap_after: int = -1, gap_s: float = 0.0):
    """Frames as a live loop hands them on: the newest of a 30 fps camera, ``loop_fps`` a second
    (seq jumps), with seconds since boot; ``gap_s`` more after frame ``gap_after``."""
    import numpy as np

    from maskd.types import Frame

    for i in range(n):
        t = t0 + i / loop_fps + (gap_s if i > gap_after >= 0 else 0.0)
        yield Frame(np.full((120, 160, 3), i % 256, np.uint8), i * 4, t, "cam", since_boot=t - 900)


def test_frame_copies_places_frames_by_time():
    assert clip.frame_copies(1000.0, 30.0, 0, 1000.0) == 1  # the first: its own slot
    assert clip.frame_copies(1000.125, 30.0, 1, 1000.0) == 4  # slot 4 (3.75): 1-3 repeat the last
    assert clip.frame_copies(1000.02, 30.0, 1, 1000.0) == 1  # slot 1
    assert clip.frame_copies(1000.01, 30.0, 1, 1000.0) == 0  # slot 0 is written: dropped
    assert clip.frame_copies(1000 + 7 / 15, 15.0, 7, 1000.0) == 1  # a file: once each
    assert clip.frame_copies(995.0, 30.0, 30, 1000.0) == -179  # a clock gone back 6 s


def test_a_live_loop_slower_than_the_camera_plays_in_real_time(tmp_path):
    """60 s of a 30 fps camera taken 8 times a second: the file played in 16 s (480 frames at
    30 fps); now the last frame fills the slots between, so it plays in 60 s."""
    w = ClipWriter(tmp_path, "cam", 30.0, segment_s=600)
    record(w, live_frames(480, 8.0))
    w.close()
    (path,) = w.paths
    cap = cv2.VideoCapture(str(path))
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    n = frames_in(path)
    assert fps == pytest.approx(30.0) and n / fps == pytest.approx(60.0, abs=0.15)  # was 16 s
    assert w.frames == n and w.repeats == n - 480 and w.early == 0


def test_the_brief_harness_without_since_boot_plays_in_real_time(tmp_path):
    import numpy as np

    from maskd.types import Frame

    w = ClipWriter(tmp_path, "cam", 30.0, segment_s=600)
    for i in range(480):
        w.on_frame(Frame(image=np.full((120, 160, 3), i % 256, np.uint8), seq=i * 4,
                         timestamp=1000 + i / 8), [], LoopStats())
    w.close()
    assert frames_in(w.paths[0]) / 30.0 == pytest.approx(60.0, abs=0.15)


def test_a_loop_faster_than_the_clip_rate_drops_the_early_frames(tmp_path):
    w = ClipWriter(tmp_path, "cam", 15.0, segment_s=600)
    record(w, live_frames(300, 30.0))  # 10 s at 30 a second into a 15 fps clip
    w.close()
    n = frames_in(w.paths[0])
    assert 150 <= n <= 151 and w.early == 300 - n and w.repeats == 0


def test_segments_are_seconds_of_video_for_a_live_loop(tmp_path):
    w = ClipWriter(tmp_path, "cam", 30.0, segment_s=10.0, segment_mb=100, keep_mb=100)
    record(w, live_frames(8 * 35, 8.0))  # 35 s at 8 a second
    w.close()
    lengths = [frames_in(p) / 30.0 for p in w.paths]
    assert len(lengths) == 4 and all(abs(s - 10.0) <= 0.2 for s in lengths[:3]), lengths


def test_a_camera_gap_starts_a_new_file_instead_of_a_frozen_frame(tmp_path, caplog):
    """A camera away for 20 s: no 20 s of its last frame; a short gap (1 s) is held."""
    w = ClipWriter(tmp_path, "cam", 30.0, segment_s=600, segment_mb=100, keep_mb=100)
    with caplog.at_level(logging.INFO, "maskd.clip"):
        record(w, live_frames(40, 8.0, gap_after=19, gap_s=20.0))
        record(w, live_frames(40, 8.0, t0=2000.0, gap_after=19, gap_s=1.0))
        w.close()
    lengths = [frames_in(p) / 30.0 for p in w.paths]
    assert len(lengths) == 3, lengths  # 2000.0 is a gap too: a third file
    assert lengths[0] == pytest.approx(19 / 8, abs=0.1) and lengths[1] == pytest.approx(19 / 8, abs=0.1)
    assert lengths[2] == pytest.approx(39 / 8 + 1.0, abs=0.1)  # the 1 s is held, not cut
    assert "a gap of 20.1 s between frames; new file" in caplog.text


class SlowVideo:
    """OpenCV's writer on a slow machine or a disk that hangs: each write waits ``delay`` s,
    or until ``gate`` is set; the ``fail_at``-th write (counting from 1) raises. It wraps the
    real one (a Python subclass of cv2.VideoWriter corrupts memory)."""

    real = cv2.VideoWriter
    fourcc = staticmethod(cv2.VideoWriter.fourcc)
    delay = 0.0
    gate: threading.Event | None = None
    fail_at = 0
    writes = 0
    release_fails = False  # release() raises, as a writer an error left broken may

    def __init__(self, *args) -> None:
        self._w = SlowVideo.real(*args)

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self._w.isOpened()

    def release(self) -> None:
        self._w.release()
        if SlowVideo.release_fails:
            raise cv2.error("the encoder's state is broken")

    def write(self, image) -> None:
        SlowVideo.writes += 1
        if SlowVideo.writes == SlowVideo.fail_at:
            raise RuntimeError("an encoder bug")
        if SlowVideo.gate is not None:
            SlowVideo.gate.wait(30)
        time.sleep(SlowVideo.delay)
        self._w.write(image)


@pytest.fixture
def slow_video(monkeypatch):
    monkeypatch.setattr(SlowVideo, "writes", 0)
    monkeypatch.setattr(cv2, "VideoWriter", SlowVideo)
    return SlowVideo


def bar(i: int):
    """Frame ``i`` of the tests below: a white bar at x = 4 i, a number mp4v keeps exactly."""
    import numpy as np

    img = np.zeros((120, 160, 3), np.uint8)
    img[:, 4 * i:4 * i + 4] = 255
    return img


def bars(path: Path) -> list[int]:
    """Which ``bar`` each frame of a clip shows (read below the header)."""
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        out.append(int(img[60:].mean(axis=(0, 2)).argmax()) // 4)
    cap.release()
    return out


def test_a_stalled_writer_drops_frames_and_never_holds_up_the_loop(tmp_path, slow_video,
                                                                  monkeypatch, caplog):
    """Encoding ran in the loop: a write that stalls (a busy SD card, a slow encoder; or a
    loop slower than its camera, whose missed slots were all encoded there: x2.3 the loop's
    time at 5 MP / 30 fps) held detection up as long. Now on_frame hands the frame over and
    returns at once; what waits longest is dropped when the writer is behind (one line a
    minute), and the clip still plays in real time up to the latest frame."""
    from maskd.types import Frame

    gate = threading.Event()
    monkeypatch.setattr(slow_video, "gate", gate)
    threading.Timer(1.0, gate.set).start()  # the disk stalls for the first second
    w = ClipWriter(tmp_path, "cam", 30.0, segment_s=600, segment_mb=100, keep_mb=100)
    took, stamps = [], []
    with caplog.at_level(logging.INFO, "maskd.clip"):
        for i in range(40):  # 2 s of a live loop at 20 frames a second
            t = time.monotonic()
            stamps.append(t)
            w.on_frame(Frame(bar(i), i, time.time(), "cam",
                             since_boot=t), [], LoopStats())
            took.append(time.monotonic() - t)
            time.sleep(0.05)  # the loop's own work
        w.close()
    gate.set()
    assert max(took) < 0.25, took  # the first frame waited out the whole stall: 1 s
    assert w.behind > 0 and w.failures == 0 and w.early == 0
    said = [r.getMessage() for r in caplog.records if "the writer is behind" in r.getMessage()]
    assert len(said) == 1, said  # one line a minute, not one per frame
    assert f"{w.behind} frames dropped while the writer was behind" in caplog.text
    (path,) = w.paths
    shown = bars(path)
    assert shown[-1] == 39  # the oldest waiting went: the latest frame is there
    slots = math.floor((stamps[-1] - stamps[0]) * 30 + 0.5) + 1
    assert len(shown) == w.frames == slots  # real time, up to the last frame
    assert shown == sorted(shown) and len(set(shown)) == 40 - w.behind  # a dropped one's slots: the one before


def test_the_loop_hands_over_its_frame_and_the_boxes_go_on_a_copy(tmp_path):
    """The writer thread draws on a copy: the frame the loop (and the other observers) see
    stays as captured, and the clip has the boxes."""
    import numpy as np

    from maskd.types import Face, Frame, Verdict

    img = np.full((120, 160, 3), 90, np.uint8)
    before = img.copy()
    v = Verdict(Face((40.0, 30.0, 100.0, 90.0), 0.9), 0.95, 0.5)
    w = ClipWriter(tmp_path, "door", 15.0)
    w.on_frame(Frame(img, 0, 0.0, "cam"), [v], LoopStats(fps=15.0))
    w.close()
    assert (img == before).all()
    cap = cv2.VideoCapture(str(w.paths[0]))
    ok, back = cap.read()
    cap.release()
    red = back[35:85, 40].astype(int)  # the box's left edge; 30 px right of it: the picture
    assert ok and (red[:, 2] - red[:, 0]).mean() > 60 and abs(back[35:85, 70].mean() - 90) < 10


def test_the_close_writes_what_waits_and_never_hangs_on_a_stuck_disk(tmp_path, slow_video,
                                                                   monkeypatch, caplog):
    """A stop (SIGTERM, the end of a file) writes the frames still queued; a write that hangs
    (an SD card or a share that stopped answering) holds the stop up for CLOSE_S at most."""
    monkeypatch.setattr(slow_video, "delay", 0.05)
    w = ClipWriter(tmp_path, "door", 15.0)
    n = feed(w, passes=1)  # a file's frames wait for room: all of them are written
    t = time.monotonic()
    w.close()
    assert frames_in(w.paths[0]) == n == w.frames and w.behind == 0
    assert time.monotonic() - t < clip.CLOSE_S

    gate = threading.Event()
    monkeypatch.setattr(slow_video, "gate", gate)
    monkeypatch.setattr(slow_video, "delay", 0.0)
    monkeypatch.setattr(clip, "CLOSE_S", 0.5)
    stuck = ClipWriter(tmp_path / "stuck", "door", 30.0)
    try:
        with caplog.at_level(logging.INFO, "maskd.clip"):
            for f in live_frames(5, 8.0):
                stuck.on_frame(f, [], LoopStats())
            t = time.monotonic()
            stuck.close()
            assert time.monotonic() - t < 1.5
        assert "the writer did not finish within 0.5 s of the stop" in caplog.text
        assert stuck.behind >= 2  # the 2 waiting at the close, and those dropped before
    finally:
        gate.set()
        stuck._thread.join(10)
    assert not stuck._thread.is_alive()  # the disk woke up: the thread ended


def test_an_error_in_the_writer_thread_starts_a_new_file_and_recording_goes_on(
        tmp_path, slow_video, monkeypatch, caplog):
    """An unexpected error must not stop the recording for good (nor die unseen): the file is
    closed, the error said with its traceback, and the next frame starts a new file; a thread
    that died all the same is started again."""
    monkeypatch.setattr(slow_video, "fail_at", 20)
    w = ClipWriter(tmp_path, "door", 15.0, segment_s=3600, segment_mb=100, keep_mb=100)
    with caplog.at_level(logging.INFO, "maskd.clip"):
        n = feed(w)
        assert w.flush()
        assert "unexpected error" in caplog.text and "RuntimeError: an encoder bug" in caplog.text
        assert w.failures == 1 and len(w.paths) == 2 and frames_in(w.paths[0]) == 19

        class Dead(BaseException):
            """What the thread's guard lets through (SystemExit from a library, say)."""

        def die(shot):
            raise Dead

        monkeypatch.setattr(w, "_write", die)
        monkeypatch.setattr(threading, "excepthook", lambda args: None)  # its traceback: not here
        src = DemoSource()
        w.on_frame(src.read(), [], LoopStats(fps=15.0))
        w._thread.join(5)
        assert not w._thread.is_alive()
        monkeypatch.undo()  # the real _write (and VideoWriter) again
        feed(w)
        w.close()
    assert "the writer thread stopped; starting it again with a new file" in caplog.text
    assert len(w.paths) == 3 and frames_in(w.paths[1]) == n - 20 and frames_in(w.paths[2]) > 0


def test_a_writer_broken_when_its_thread_died_does_not_fail_the_close(tmp_path, slow_video,
                                                                     monkeypatch, caplog):
    """The writer thread died (an error its guard lets through) with a file open, and the
    writer it left raises in release(): close() says so and returns, its own ending done (was:
    the error came out of close(), and the service's stop, which closes its observers one after
    another before the sinks, skipped the rest: the sinks' flush of the end events among them)."""
    w = ClipWriter(tmp_path, "door", 15.0, segment_s=3600, segment_mb=100, keep_mb=100)
    feed(w)
    assert w.flush()
    path = w.paths[-1]

    class Dead(BaseException):
        """What the thread's guard lets through."""

    def die(shot):
        raise Dead

    monkeypatch.setattr(w, "_write", die)
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # its traceback: not here
    w.on_frame(DemoSource().read(), [], LoopStats(fps=15.0))
    w._thread.join(5)
    assert not w._thread.is_alive()
    monkeypatch.setattr(slow_video, "release_fails", True)
    with caplog.at_level(logging.INFO, "maskd.clip"):
        w.close()
    assert (f"annotated clip door: {path} could not be closed (error: the encoder's state is "
            "broken); it may not play to its end") in caplog.text
    assert w._writer is None and frames_in(path) > 0
    w.close()  # once closed, a second close is nothing


def test_an_observer_whose_close_raises_does_not_cut_the_stop_short(caplog):
    """Any observer (a clip, a preview) whose close() raises at the stop: the others, the
    source and the sinks are still closed and the sinks flushed (was: the error came out of the
    loop's stop, which skipped them all; MQTT's end events then waited for the next start)."""
    import numpy as np
    from loop_parts import RecordingSink, service_for

    from maskd.types import Frame, FrameObserver

    class Frames:
        name, is_live, stats = "file", False, {}
        closed = False

        def __init__(self) -> None:
            self.n = 0

        def read(self):
            self.n += 1
            return Frame(np.full((120, 160, 3), 90, np.uint8), self.n, time.time(), self.name
                         ) if self.n <= 3 else None

        def close(self) -> None:
            self.closed = True

    class Broken(FrameObserver):
        def close(self) -> None:
            raise cv2.error("the encoder's state is broken")

    class Kept(FrameObserver):
        closed = False

        def close(self) -> None:
            self.closed = True

    src, kept, sink = Frames(), Kept(), RecordingSink()
    loop = service_for(src, [Broken(), kept], [sink])
    loop.exit_at_end = True
    with caplog.at_level(logging.ERROR, "maskd.service"):
        assert loop.run(flush_timeout=1.0) == 0
    assert kept.closed and src.closed and sink.flushed and sink.closed
    assert "observer Broken failed to close" in caplog.text


def test_sigterm_closes_the_clip_with_every_frame_it_was_handed(tmp_path, default_model):
    """A stop by SIGTERM (systemd's) while the writer thread has frames waiting: they are
    written, the file is closed whole (its frame count in the log is what plays) and the run
    exits 0 well within TimeoutStopSec."""
    import re

    out = tmp_path / "clips"
    proc = subprocess.Popen([sys.executable, "-m", "maskd", "run", "--source", "demo", "--loop",
                             "--annotate", str(out), "--detector", "blazeface", "--model",
                             str(default_model)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(p.stat().st_size > 0 for p in out.glob("camera-*.mkv")):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.2)
        time.sleep(1.0)
        t = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert time.monotonic() - t < 30  # TimeoutStopSec is 60
    (path,) = out.glob("camera-*.mkv")
    (said,) = re.findall(r"annotated clip: \S+ \((\d+) frames\)", err)
    assert int(said) > 0 and frames_in(path) == int(said)
    assert "Traceback" not in err


def test_a_folder_that_is_a_link_to_nowhere_is_named_so(tmp_path, caplog):
    """A clip or snapshot folder that is a link whose target is gone (a stick not mounted):
    mkdir said 'File exists', naming neither the link nor its target, and check-config said OK.
    Both say it now, as a warning: the writer records once the link leads somewhere, and the
    door keeps its alarms meanwhile (a stop, exit 78, would not be restarted)."""
    import subprocess
    import sys

    gone = tmp_path / "stick" / "clips"
    link = tmp_path / "clips"
    link.symlink_to(gone)
    says = f"{link} is a link to {gone}, which is not there"
    with caplog.at_level(logging.ERROR, "maskd.clip"):
        w = ClipWriter(link, "door", 15.0)
        w.close()
    assert w.paused == f"cannot create the folder: {says}", w.paused
    config = tmp_path / "c.yaml"
    config.write_text(f"source: {{kind: demo}}\npreview: {{annotate_dir: '{link}'}}\n")
    for args in (("check-config", str(config)), ("run", "--config", str(config))):
        r = subprocess.run([sys.executable, "-m", "maskd", *args], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        assert (f"preview.annotate_dir {link}: cannot record clips there: {says} (recorded once "
                "it leads somewhere)") in r.stderr, r.stderr
        assert "warning: warning:" not in r.stderr  # check-config said it twice
    # a folder on a virtual file system never leads anywhere: exit 78, as for jsonl.path (was
    # a warning, 'recorded once it leads somewhere', and a run without clips)
    config.write_text("source: {kind: demo}\npreview: {annotate_dir: /proc/maskd-clips}\n")
    for args in (("check-config", str(config)), ("run", "--config", str(config))):
        r = subprocess.run([sys.executable, "-m", "maskd", *args], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 78, (args, r.stderr)
        assert "preview.annotate_dir /proc/maskd-clips: cannot record clips there" in r.stderr
        assert "leads somewhere" not in r.stderr


def test_frame_copies_rounds_half_a_slot_up_every_time():
    """'not round()': Python's round takes 0.5 and 2.5 down (to even) and 1.5 up."""
    assert clip.frame_copies(0.25, 2.0, 1, 0.0) == 1  # slot 0.5 -> 1
    assert clip.frame_copies(0.75, 2.0, 1, 0.0) == 2  # slot 1.5 -> 2
    assert clip.frame_copies(1.25, 2.0, 1, 0.0) == 3  # slot 2.5 -> 3


def test_the_cap_never_takes_a_camera_whose_name_begins_with_this_ones_nor_other_names(tmp_path):
    """'door' and 'door-side' in one folder: the door's cap deletes neither the other camera's
    segments nor a copy named like a segment plus more (a .bak, a .part)."""
    side = tmp_path / "door-side-20200101-000000.mkv"
    side.write_bytes(b"x" * 3 * clip.MB)
    bak = tmp_path / "door-20200101-000000.mkv.bak"
    bak.write_bytes(b"x" * 3 * clip.MB)
    w = ClipWriter(tmp_path, "door", 15.0, segment_s=3600, segment_mb=100, keep_mb=1)
    img = np.zeros((120, 160, 3), np.uint8)
    for i in range(15):
        w.on_frame(Frame(img, i, i / 15.0, "cam"), [], LoopStats(fps=15.0))
    w.close()
    assert side.exists() and bak.exists() and not w.deleted and w.paths[-1].exists()


def test_even_size_pads_either_side_alone():
    tall = np.zeros((5, 4, 3), np.uint8)
    wide = np.zeros((4, 5, 3), np.uint8)
    assert clip.even_size(tall).shape == (6, 4, 3) and clip.even_size(wide).shape == (4, 6, 3)


def test_a_gap_of_exactly_max_hold_is_held_and_one_slot_more_starts_a_new_file(tmp_path):
    """MAX_HOLD_S is how long a frame may be held: a gap of exactly that is held."""
    img = np.zeros((120, 160, 3), np.uint8)
    held = ClipWriter(tmp_path / "a", "door", 15.0)
    record(held, [Frame(img, 0, 0.0, "cam"), Frame(img, 1, 31 / 15, "cam")])  # 30 slots held
    held.close()
    cut = ClipWriter(tmp_path / "b", "door", 15.0)
    record(cut, [Frame(img, 0, 0.0, "cam"), Frame(img, 1, 32 / 15, "cam")])
    cut.close()
    assert len(held.paths) == 1 and frames_in(held.paths[0]) == 32
    assert len(cut.paths) == 2


def test_a_clock_gone_back_starts_a_new_file_and_records_on(tmp_path):
    """Frames placed by a clock that went back more than MAX_HOLD_S: a new file, every frame
    recorded (not each dropped as early until the clock catches up)."""
    img = np.zeros((120, 160, 3), np.uint8)
    w = ClipWriter(tmp_path, "door", 15.0)
    record(w, [Frame(img, i, 100 + i / 15, "cam") for i in range(15)])
    record(w, [Frame(img, 15 + i, 90 + i / 15, "cam") for i in range(15)])
    w.close()
    assert w.early == 0 and [frames_in(p) for p in w.paths] == [15, 15]


def test_a_wall_clock_step_back_starts_a_new_segment(tmp_path):
    """A live camera's frames are placed by the time since boot, but a segment's age is its
    frames' wall time: NTP stepping it an hour back must start a new file, or the open one
    is not rotated by segment_s for an hour more."""
    img = np.zeros((120, 160, 3), np.uint8)
    w = ClipWriter(tmp_path, "door", 15.0, segment_s=600)
    frames = [Frame(img, i, 10_000 + i / 15, "cam", since_boot=50 + i / 15) for i in range(15)]
    frames += [Frame(img, 15 + i, 10_000 - 3600 + (15 + i) / 15, "cam", since_boot=50 + (15 + i) / 15)
               for i in range(15)]
    record(w, frames)
    w.close()
    assert len(w.paths) == 2 and w.early == 0


def test_a_segment_by_the_name_of_one_on_disk_is_not_written_over(tmp_path):
    """maskd restarted within the second its last run opened a segment: the new one gets its
    own name, the footage before the restart stays."""
    now = time.time()
    kept = {}
    for s in range(-1, 6):
        p = tmp_path / f"door-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now + s))}.mkv"
        p.write_bytes(b"earlier run")
        kept[p] = b"earlier run"
    w = ClipWriter(tmp_path, "door", 15.0, keep_mb=1000)
    img = np.zeros((120, 160, 3), np.uint8)
    for i in range(15):
        w.on_frame(Frame(img, i, i / 15.0, "cam"), [], LoopStats(fps=15.0))
    w.close()
    assert all(p.read_bytes() == b"earlier run" for p in kept)
    assert w.paths[-1] not in kept and frames_in(w.paths[-1]) == 15


def test_a_paused_clip_resumes_by_deleting_its_own_old_segments_once_that_makes_room(
        tmp_path, monkeypatch):
    """Paused by other files; they shrink, not enough alone, but with this camera's oldest
    segments gone there is room: the retry deletes those and records on (it stayed paused)."""
    monkeypatch.setattr(clip, "RETRY_S", 0.0)
    with small_disk(tmp_path / "disk", "3m") as disk:
        w = ClipWriter(disk, "door", 15.0, segment_s=1.0, segment_mb=100, keep_mb=1000,
                       min_free=1 * clip.MB)
        src = DemoSource(loop=True)
        for _ in range(40):  # under three 1 s segments
            w.on_frame(src.read(), [], LoopStats(fps=15.0))
        assert w.flush() and w.paused is None
        user = disk / "user.bin"
        user.write_bytes(b"x" * (shutil.disk_usage(disk).free - clip.MB // 4))
        for _ in range(20):  # into the next segment, which cannot be begun
            w.on_frame(src.read(), [], LoopStats(fps=15.0))
        assert w.flush() and w.paused
        ours = sum(p.stat().st_size for p in disk.glob("door-*"))
        free = shutil.disk_usage(disk).free
        with open(user, "r+b") as f:  # room, with half of our segments' blocks
            f.truncate(user.stat().st_size - (clip.MB - free) + ours // 2)
        assert shutil.disk_usage(disk).free < clip.MB
        w._retry_at = 0.0
        feed(w)
        w.close()
        assert w.paused is None and w.deleted_for_room >= 1 and user.exists()


def test_no_file_is_begun_on_a_disk_already_short_of_room(tmp_path):
    with small_disk(tmp_path / "disk", "3m") as disk:
        (disk / "user.bin").write_bytes(b"x" * (shutil.disk_usage(disk).free - clip.MB // 2))
        w = ClipWriter(disk / "clips", "door", 15.0, min_free=1 * clip.MB)
        feed(w)
        w.close()
        assert w.paused and not list((disk / "clips").iterdir()) and not w.paths


def test_a_file_opencv_cannot_write_is_not_left_behind(tmp_path, monkeypatch):
    class Refusing:
        fourcc = staticmethod(cv2.VideoWriter.fourcc)

        def __init__(self, *args) -> None:
            pass

        def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
            return False

        def release(self) -> None:
            pass

    monkeypatch.setattr(cv2, "VideoWriter", Refusing)
    w = ClipWriter(tmp_path, "door", 15.0)
    img = np.zeros((120, 160, 3), np.uint8)
    w.on_frame(Frame(img, 0, 0.0, "cam"), [], LoopStats(fps=15.0))
    w.close()
    assert w.paused and "OpenCV cannot write" in w.paused and list(tmp_path.iterdir()) == []


def test_segments_of_exactly_keep_mb_are_all_kept(tmp_path):
    segs = [tmp_path / f"door-2020010{i}-000000.mkv" for i in range(1, 4)]
    for i, p in enumerate(segs):
        p.write_bytes(b"x" * (100_000 + i))
        os.utime(p, (1_700_000_000 + i, 1_700_000_000 + i))
    total = sum(p.stat().st_size for p in segs)
    w = ClipWriter(tmp_path, "door", 15.0, keep_mb=total / clip.MB)
    w.close()
    assert all(p.exists() for p in segs) and not w.deleted


def earlier_segments(disk, sizes):
    """An earlier run's closed segments of camera door, oldest first."""
    out = []
    for i, size in enumerate(sizes):
        p = disk / f"door-2020010{i + 1}-000000.mkv"
        p.write_bytes(b"x" * size)
        os.utime(p, (1_700_000_000 + i, 1_700_000_000 + i))
        out.append(p)
    return out


def test_a_long_segment_on_a_disk_full_of_its_own_clips_deletes_just_the_oldest_and_records_on(
        tmp_path, caplog):
    """Default-sized segments (minutes long): the disk fills while one is open; the oldest
    closed segments go, only as many as make room, and the open one records on."""
    with small_disk(tmp_path / "disk", "3m") as disk, caplog.at_level(logging.INFO, "maskd.clip"):
        old = earlier_segments(disk, [600_000, 600_000, 600_000])
        w = ClipWriter(disk, "door", 15.0, segment_s=3600, segment_mb=100, keep_mb=1000,
                       min_free=1 * clip.MB)
        n = feed(w)  # about 1.4 MB into one file: the disk keeps 1 MB free on the way
        w.close()
        assert w.paused is None and w.dropped == 0 and w.frames == n and len(w.paths) == 1
        assert not old[0].exists() and old[-1].exists()


def test_segments_are_not_deleted_for_room_the_open_one_would_have_to_make(tmp_path):
    """The open segment cannot be deleted: when this camera's closed segments alone cannot make
    room, none is deleted for nothing, even if the open one is big."""
    with small_disk(tmp_path / "disk", "3m") as disk:
        w = ClipWriter(disk, "door", 15.0, segment_s=1.0, segment_mb=100, keep_mb=1000,
                       min_free=1 * clip.MB)
        src = DemoSource(loop=True)
        for _ in range(20):  # a closed second, and the next begun
            w.on_frame(src.read(), [], LoopStats(fps=15.0))
        assert w.flush()
        w.segment_s = 3600.0  # the open one now grows on
        for _ in range(100):
            w.on_frame(src.read(), [], LoopStats(fps=15.0))
        assert w.flush() and w.paused is None and len(w.paths) == 2
        closed = w.paths[0]
        (disk / "user.bin").write_bytes(b"x" * (shutil.disk_usage(disk).free - clip.MB // 4))
        for _ in range(5):
            w.on_frame(src.read(), [], LoopStats(fps=15.0))
        w.close()
        assert w.paused and closed.exists() and w.deleted_for_room == 0


def test_the_writable_probe_runs_once_every_writable_look_s(tmp_path, monkeypatch):
    """The read-only probe creates a file on the card: once every WRITABLE_LOOK_S, not a
    create and delete per frame."""
    looks = []
    real = clip.read_only_now
    monkeypatch.setattr(clip, "read_only_now", lambda folder: looks.append(folder) or real(folder))
    w = ClipWriter(tmp_path, "door", 15.0)
    feed(w)
    w.close()
    assert 1 <= len(looks) <= 2, len(looks)


def test_a_segment_the_cap_cannot_delete_does_not_stop_the_cap(tmp_path, refuse_to_delete):
    """The oldest segment refusing deletion (another user's in a shared folder): the ones after
    it are deleted instead, and the cap holds (it stopped at the first refusal for good)."""
    segs = earlier_segments(tmp_path, [300_000] * 4)
    refuse_to_delete(segs[0])
    w = ClipWriter(tmp_path, "door", 15.0, keep_mb=700_000 / clip.MB)
    w.close()
    assert segs[0].exists() and list(w.deleted) == segs[1:3] and segs[3].exists()


def test_a_gap_is_filled_with_the_frame_before_it(tmp_path):
    """A live loop slower than the clip rate: the slots between two frames repeat the earlier
    one; the later frame shows from its own time on, not before."""
    w = ClipWriter(tmp_path, "door", 15.0)
    frames = [Frame(bar(i), i, 1000 + 3 * i / 15, "cam", since_boot=100 + 3 * i / 15)
              for i in range(3)]
    record(w, frames)
    w.close()
    assert bars(w.paths[0]) == [0, 0, 0, 1, 1, 1, 2]


def test_a_wall_clock_step_forward_opens_no_gap_in_a_live_clip(tmp_path):
    """Live frames are placed by the time since boot: NTP stepping the wall clock a minute on
    is no camera gap (no new file, no minute of a held frame)."""
    img = np.zeros((120, 160, 3), np.uint8)
    w = ClipWriter(tmp_path, "door", 15.0, segment_s=7200)
    frames = [Frame(img, i, 10_000 + i / 15 + (60 if i >= 15 else 0), "cam", since_boot=50 + i / 15)
              for i in range(30)]
    record(w, frames)
    w.close()
    assert len(w.paths) == 1 and frames_in(w.paths[0]) == 30


def test_frames_changing_size_at_every_frame_say_so_once_a_minute(tmp_path, caplog):
    """An images folder of photos of many sizes (`run --source DIR --annotate OUT`) changes the
    frame size at every frame: a new file each time is unavoidable, but each also logged
    `frames are WxH now`, 1542 lines in 3.5 minutes of a real run; the pipeline's own line
    about the same change is said once a minute with a count, and so is this one now."""
    import numpy as np

    from maskd.types import Frame

    w = ClipWriter(tmp_path, "photos", 10.0)
    with caplog.at_level(logging.INFO, "maskd.clip"):
        for i in range(12):
            img = np.zeros((240 + 2 * (i % 2), 320, 3), np.uint8)
            w.on_frame(Frame(img, i, i / 10.0), [], LoopStats())
            assert w.flush()
        w.close()
    said = [r.getMessage() for r in caplog.records if "frames are" in r.getMessage()]
    assert len(w.paths) == 12  # a file each: the open one cannot take another size
    assert said == ["annotated clip photos: frames are 320x242 now (were 320x240); new file"], said


def test_segments_on_a_fat32_stick_end_below_its_4_gib_file_limit(tmp_path, monkeypatch, caplog):
    """FAT (vfat, msdos: most sticks up to 32 GB) keeps no file of 4 GiB: a segment of a
    larger `preview.annotate_segment_mb` stopped growing there, and the clip was paused as a
    failing card ('stopped growing'). On such a file system (/proc/self/mountinfo, as
    `ownerless_fs` reads it) a segment now ends at FAT_SEGMENT_MB, said once; on exFAT at
    segment_mb. The rule, not the limit: FAT_SEGMENT_MB scaled down to 0.25 MB here. The line
    says FAT, not FAT32: vfat and msdos mount a FAT16 card (up to 2 GB) too, which keeps no
    file of 4 GiB either (was: '(FAT32)' of one)."""
    from maskd import files

    dev = os.stat(tmp_path).st_dev
    mountinfo = tmp_path / "mountinfo"
    monkeypatch.setattr(files, "MOUNTINFO", mountinfo)
    monkeypatch.setattr(clip, "FAT_SEGMENT_MB", 0.25, raising=False)
    caplog.set_level(logging.INFO, logger="maskd.clip")
    for fs in ("vfat", "exfat"):
        mountinfo.write_text(f"36 25 {os.major(dev)}:{os.minor(dev)} / / rw,noatime - {fs} "
                             "/dev/sda1 rw,fmask=0022\n")
        (out := tmp_path / fs).mkdir()
        w = ClipWriter(out, "door", 15.0, segment_s=3600, segment_mb=100_000, keep_mb=10**7)
        n = feed(w)
        w.close()
        sizes = [p.stat().st_size for p in w.paths]
        assert sum(frames_in(p) for p in w.paths) == n and w.paused is None
        if fs == "vfat":
            assert len(sizes) >= 4 and all(s < 0.25 * MB + 256 * 1024 for s in sizes), sizes
        else:
            assert len(sizes) == 1, sizes
    # on FAT a segment_mb below the cap stands (not raised to it), and nothing is said of it
    # (the sizes say little here: FFmpeg's buffer, about 256 KiB, is above both)
    mountinfo.write_text(f"36 25 {os.major(dev)}:{os.minor(dev)} / / rw,noatime - vfat "
                         "/dev/sda1 rw,fmask=0022\n")
    (out := tmp_path / "small").mkdir()
    w = ClipWriter(out, "gate", 15.0, segment_s=3600, segment_mb=0.1, keep_mb=10**7)
    feed(w)
    w.close()
    assert len(w.paths) >= 4, [p.stat().st_size for p in w.paths]
    said = [r.getMessage() for r in caplog.records if "4 GiB" in r.getMessage()]
    assert said == [f"annotated clip door: {tmp_path}/vfat is on vfat (FAT), which keeps no "
                    "file of 4 GiB: its segments end at 0.25 MB, not preview.annotate_segment_mb's "
                    "100000"], said
