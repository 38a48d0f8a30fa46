"""Opt-in local snapshots (maskd.snapshots) on the demo clip's real frames: one JPEG per event
(the best crop, or the frame with boxes), one folder for several cameras, retention by age and
by size (oldest first, at start, after writes and periodically), and a full disk or an
unwritable folder that is logged while detection goes on."""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from clocks import SteppedClock
from loop_parts import RecordingSink
from mqtt_broker import fill_disk, small_disk

from maskd import snapshots
from maskd.annotate import RED
from maskd.config import parse_config
from maskd.demo import DemoSource
from maskd.pipeline import Pipeline
from maskd.service import CameraLoop, build_classifier, build_detector
from maskd.snapshots import SnapshotStore, snapshot_name
from maskd.types import LoopStats, RunControl, ViolationEvent

DAY = 86400.0


def maskd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maskd", *args], capture_output=True, text=True,
                          timeout=300)


def run_demo(tmp_path: Path, default_model: Path, what: str) -> tuple[RecordingSink, Path]:
    """The real loop on the demo clip with a recording sink and a snapshot taker."""
    folder = tmp_path / "snaps"
    cfg = parse_config({"camera": "door", "source": {"kind": "demo"},
                        "detector": {"kind": "blazeface"},
                        "classifier": {"model": str(default_model)},
                        "snapshots": {"dir": str(folder), "what": what}}, "test")
    store = SnapshotStore.from_config(cfg.snapshots)
    assert store is not None
    taker = store.taker(cfg.camera, what)
    sink = RecordingSink()
    loop = CameraLoop(cfg, DemoSource(), Pipeline(cfg, build_detector(cfg), build_classifier(cfg)),
                      [sink, taker], [taker], RunControl(), exit_at_end=True)
    assert loop.run(flush_timeout=5) == 0
    assert store.written >= 1 and store.failed == 0
    return sink, folder


def started(events: list) -> dict:
    return {e.event_id: e for e in events if e.event_type == "start"}


def test_crop_snapshot_is_the_events_best_crop(tmp_path, default_model):
    sink, folder = run_demo(tmp_path, default_model, "crop")
    starts = started(sink.events)
    assert len(starts) == 1
    files = sorted(p.name for p in folder.iterdir())
    assert files == sorted(snapshot_name("door", e.start_time, i) for i, e in starts.items())
    for event_id, start in starts.items():
        best = [e for e in sink.events if e.event_id == event_id][-1].best_crop
        path = folder / snapshot_name("door", start.start_time, event_id)
        assert path.stat().st_mode & 0o777 == 0o640  # faces: not for every user of the Pi
        img = cv2.imread(str(path))
        assert img is not None and img.shape == best.shape  # a decodable JPEG of the crop
        assert img.shape[0] == img.shape[1] >= 40  # crop_face is square
        assert np.abs(img.astype(int) - best.astype(int)).mean() < 6  # JPEG of the same pixels


def test_frame_snapshot_is_the_start_frame_with_its_boxes(tmp_path, default_model):
    sink, folder = run_demo(tmp_path, default_model, "frame")
    (event_id, start), = started(sink.events).items()
    img = cv2.imread(str(folder / snapshot_name("door", start.start_time, event_id)))
    assert img is not None and img.shape == (480, 640, 3)
    # the face's red box is drawn where the event's (normalised) box is
    x0, y0, x1, y1 = (round(v * s) for v, s in zip(start.box, (640, 480, 640, 480), strict=True))
    edge = img[max(y0 - 4, 0):y0 + 5, x0:x1].reshape(-1, 3).astype(int)
    red = (np.abs(edge - np.array(RED)) < 60).all(axis=1)
    assert red.mean() > 0.3, red.mean()
    # ... on the very frame the violation started on
    demo = DemoSource()
    for _ in range(start.frame_seq + 1):
        frame = demo.read()
    inside = (slice(y0 + 10, y1 - 10), slice(x0 + 10, x1 - 10))
    diff = np.abs(img[inside].astype(int) - frame.image[inside].astype(int)).mean()
    assert diff < 6, diff


def test_run_writes_one_file_per_event_per_camera_into_one_folder(tmp_path, default_model):
    """`maskd run` with a cameras: map: one store, files named per camera; the frame variant."""
    folder = tmp_path / "snaps"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"cameras:\n  door:\n    source: {{kind: demo}}\n  hall:\n    source: {{kind: demo}}\n"
                   f"detector: {{kind: blazeface}}\nsnapshots:\n  dir: {folder}\n  what: frame\n")
    events = tmp_path / "events.jsonl"
    r = maskd("run", "--config", str(cfg), "--exit-at-end", "--jsonl", str(events),
              "--model", str(default_model))
    assert r.returncode == 0, r.stderr
    starts = [e for e in map(json.loads, events.read_text().splitlines())
              if e["event_type"] == "start"]
    assert sorted(e["camera"] for e in starts) == ["door", "hall"]
    want = sorted(snapshot_name(e["camera"], e["start_time"], e["event_id"]) for e in starts)
    assert sorted(p.name for p in folder.iterdir()) == want
    for name in want:
        img = cv2.imread(str(folder / name))
        assert img is not None and img.shape == (480, 640, 3)
    assert "snapshots: one JPEG per violation event in" in r.stderr


# ----------------------------------------------------------------------------- retention


def demo_jpeg(i: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", DemoSource().render(i))
    assert ok
    return buf.tobytes()


def make_files(folder: Path, ages_days: list[float]) -> list[Path]:
    """Snapshot files of real demo frames, the i-th ages_days[i] old (by mtime)."""
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    out = []
    for i, age in enumerate(ages_days):
        p = folder / snapshot_name("door", now - age * DAY, f"ev{i:02d}")
        p.write_bytes(demo_jpeg(i * 7))
        os.utime(p, (now - age * DAY, now - age * DAY))
        out.append(p)
    return out


def test_retention_by_age_at_start_spares_other_files(tmp_path):
    folder = tmp_path / "snaps"
    old1, old2, fresh = make_files(folder, [10.0, 7.5, 1.0])
    foreign = folder / "holiday.jpg"
    foreign.write_bytes(demo_jpeg(3))
    os.utime(foreign, (0, 0))
    (folder / ".door-20200101-000000-ev.jpg.tmp").write_bytes(b"half")  # a crash mid-write
    (folder / ".notes.jpg.tmp").mkdir()  # someone else's: neither deleted nor stopping retention
    (folder / ".other.jpg.tmp").write_bytes(b"not ours")
    store = SnapshotStore(folder, keep_days=7, keep_mb=100)
    store.close()
    assert sorted(store.deleted) == sorted([old1, old2])
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [fresh.name, foreign.name, ".notes.jpg.tmp", ".other.jpg.tmp"])


def test_retention_by_size_deletes_the_oldest_first(tmp_path):
    folder = tmp_path / "snaps"
    files = make_files(folder, [5, 4, 3, 2, 1, 0.5])
    sizes = [snapshots.on_disk(p.stat()) for p in files]
    keep = sum(sizes[-3:]) + 100  # room for the newest three
    store = SnapshotStore(folder, keep_days=30, keep_mb=keep / snapshots.MB)
    store.flush(5)
    assert list(store.deleted) == files[:3]
    # a new snapshot pushes out the oldest that is left, and the cap holds
    store.put(snapshot_name("door", time.time(), "new"), DemoSource().render(50))
    store.close()
    left = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime)
    assert files[3] in store.deleted and left[-1].name.endswith("-new.jpg")
    assert sum(snapshots.on_disk(p.stat()) for p in left) <= keep


def test_keep_mb_holds_on_the_card_for_a_far_faces_small_crops(tmp_path):
    """A face 48 px across is a JPEG of about 2 KB, which takes a whole 4 KiB block on the
    card: keep_mb counted the bytes in the files, so the folder took 2.3 times keep_mb."""
    folder = tmp_path / "snaps"
    store = SnapshotStore(folder, keep_days=7, keep_mb=0.25)
    face = cv2.resize(DemoSource().render(20)[100:300, 200:400], (48, 48))
    for i in range(400):
        store.put(snapshot_name("door", time.time(), f"ev{i:03d}"), face)
        if i % 20 == 0:
            store.flush(5)
    store.close()
    files = list(folder.iterdir())
    assert store.written == 400 and len(files) > 20
    assert sum(p.stat().st_size for p in files) < 4096 * len(files)  # small files, whole blocks
    assert sum(p.stat().st_blocks * 512 for p in files) <= 0.25 * snapshots.MB


def test_a_snapshot_that_cannot_be_deleted_does_not_stop_retention(tmp_path, refuse_to_delete,
                                                                   caplog):
    """The oldest one refusing deletion (another user's in a shared sticky folder, an
    immutable file) stopped every deletion after it: the folder grew past keep_mb for good,
    with one WARNING a minute about that one file."""
    folder = tmp_path / "snaps"
    files = make_files(folder, [5, 4, 3, 2, 1, 0.5])
    sizes = [snapshots.on_disk(p.stat()) for p in files]
    keep = sum(sizes[-3:]) + 100  # room for the newest three
    refuse_to_delete(files[0])
    with caplog.at_level(logging.WARNING, logger="maskd.snapshots"):
        store = SnapshotStore(folder, keep_days=30, keep_mb=keep / snapshots.MB)
        store.close()
    assert files[0] not in store.deleted and files[1] in store.deleted
    left = list(folder.iterdir())
    assert files[0] in left and sum(p.stat().st_size for p in left) <= keep  # the cap holds
    assert f"cannot delete {files[0]}: Operation not permitted" in caplog.text


def test_a_long_life_remembers_only_the_latest_deleted_files(tmp_path, monkeypatch):
    """Months of retention must not grow the store: a count, and only the latest names."""
    monkeypatch.setattr(snapshots, "RECENT", 3)
    folder = tmp_path / "snaps"
    image = DemoSource().render(0)
    one = len(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, snapshots.JPEG_QUALITY])[1])
    store = SnapshotStore(folder, keep_days=30, keep_mb=2.5 * one / snapshots.MB)  # two files
    names = [snapshot_name("door", time.time(), f"ev{i:02d}") for i in range(10)]
    for name in names:
        store.put(name, image)
        assert store.flush(5)
    store.close()
    assert store.n_deleted == 8 and [p.name for p in store.deleted] == names[5:8]
    assert sorted(p.name for p in folder.iterdir()) == sorted(names[8:])


def test_an_event_that_ends_while_another_waits_for_its_frame_is_forgotten(tmp_path):
    """Two people at once: the first's end comes in the frame the second's start waits for.
    The taker must forget both events when they end (an entry kept per event would grow for
    as long as the service runs)."""
    store = SnapshotStore(tmp_path / "snaps", keep_days=30, keep_mb=100)
    taker = store.taker("door", "frame")
    src = DemoSource()
    stats = LoopStats(fps=15.0)

    def message(kind: str, ev: str, seq: int, frame_seq: int) -> ViolationEvent:
        return ViolationEvent(kind, ev, seq, "door", 1, 0.0, 0.9, 0.9, (0.1, 0.1, 0.3, 0.3),
                              frame_seq=frame_seq)

    # as in the loop: a frame's messages, then the observers see that frame
    frames = [src.read() for _ in range(3)]
    taker.emit(message("start", "a", 0, 0))
    taker.on_frame(frames[0], [], stats)  # a's snapshot
    taker.emit(message("start", "b", 0, 1))
    taker.emit(message("end", "a", 1, 0))  # its best frame is already saved
    taker.on_frame(frames[1], [], stats)  # b's snapshot
    taker.emit(message("end", "b", 1, 1))
    taker.on_frame(frames[2], [], stats)
    assert store.flush(5)
    taker.close()
    assert store.written == 2
    assert taker._saved == {} and taker._pending == []


def test_retention_runs_periodically_without_new_events(tmp_path, monkeypatch):
    monkeypatch.setattr(snapshots, "PRUNE_EVERY_S", 0.05)
    monkeypatch.setattr(snapshots, "RESCAN_S", 0.05)
    folder = tmp_path / "snaps"
    store = SnapshotStore(folder, keep_days=1, keep_mb=100)
    try:
        assert store.flush(5)  # the start's retention is done: what follows is periodic
        late, = make_files(folder, [3.0])  # appears (by hand, or a copy) after the start
        deadline = time.monotonic() + 5
        while late.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not late.exists() and list(store.deleted) == [late]
    finally:
        store.close()


def test_a_clock_step_re_dates_its_own_snapshots_and_no_others(tmp_path, caplog):
    """A Pi ten days switched off boots on the old time; NTP's jump must not make the snapshots
    written before it look ten days old (keep_days 7), while older files still go."""
    folder = tmp_path / "snaps"
    earlier, = make_files(folder, [6.0])  # an earlier boot's, six days before this boot's time
    clock = SteppedClock(wall=time.time())
    store = SnapshotStore(folder, keep_days=7, keep_mb=100, clock=clock)
    names = [snapshot_name("door", clock.wall, f"ev{i}") for i in range(2)]
    for name in names:
        store.put(name, DemoSource().render(0))
    assert store.flush(5)
    mine = [folder / n for n in names]
    before = [p.stat().st_mtime for p in mine]
    clock.run(30)
    clock.wall += 10 * DAY  # NTP steps the clock
    with caplog.at_level(logging.WARNING, logger="maskd.snapshots"):
        store.prune()
    assert "the clock stepped +864000 s; 2 snapshot(s)" in caplog.text
    assert all(p.exists() for p in mine)
    assert [p.stat().st_mtime for p in mine] == pytest.approx([t + 10 * DAY for t in before])
    assert not earlier.exists()  # really sixteen days old: not re-dated
    store.prune(rescan=True)  # the folder read again: the files' own times agree
    assert all(p.exists() for p in mine)
    clock.run(7 * DAY)
    store.prune()
    store.close()
    assert not any(p.exists() for p in mine)


def test_an_earlier_runs_snapshots_from_before_the_clock_was_set_are_kept(tmp_path, caplog):
    """A Pi that booted in 1970 (no network yet) took snapshots, and maskd restarted before NTP
    set the clock: the next run's first retention read those files as 56 years old and deleted
    them (a line at DEBUG only). Their dates say nothing; their keep_days counts from when a run
    on a set clock first sees them, as the outbox keeps such rows."""
    folder = tmp_path / "snaps"
    unset = make_files(folder, [0.0, 0.0])
    for i, p in enumerate(unset):
        os.utime(p, (3600.0 + i, 3600.0 + i))  # stamped by the kernel's 1970 clock
    old, = make_files(folder, [8.0])  # a run's on a set clock: still goes
    clock = SteppedClock(wall=time.time())
    with caplog.at_level(logging.WARNING, logger="maskd.snapshots"):
        store = SnapshotStore(folder, keep_days=7, keep_mb=100, clock=clock)
        store.flush(5)
    assert all(p.exists() for p in unset) and not old.exists()
    assert "2 snapshot(s) dated before the clock was set" in caplog.text
    assert all(abs(p.stat().st_mtime - clock.wall) < 5 for p in unset)  # a restart agrees
    clock.run(7 * DAY + 60)
    store.prune(rescan=True)
    store.close()
    assert not any(p.exists() for p in unset)


def test_an_earlier_runs_unset_clock_snapshots_are_kept_when_this_run_began_unset(tmp_path):
    """The usual case on a Pi booting in 1970: this run starts before NTP too, so its first
    retention sees the earlier run's files as new; then NTP steps the clock, and the next
    retention deleted them as 56 years old (only this run's own files were re-dated)."""
    folder = tmp_path / "snaps"
    earlier = make_files(folder, [0.0, 0.0])
    for p in earlier:
        os.utime(p, (600.0, 600.0))
    clock = SteppedClock(wall=700.0, uptime=700.0)  # the clock not set yet
    store = SnapshotStore(folder, keep_days=7, keep_mb=100, clock=clock)
    store.flush(5)
    assert all(p.exists() for p in earlier)
    clock.run(30)
    clock.wall = time.time()  # NTP
    store.prune()
    assert all(p.exists() for p in earlier)
    clock.run(7 * DAY + 60)
    store.prune()
    store.close()
    assert not any(p.exists() for p in earlier)


def test_keep_mb_deletes_an_earlier_runs_snapshots_before_this_runs_when_the_clock_went_back(
        tmp_path):
    """A Pi without a real-time clock may run on an earlier time than the run before it (1970
    without fake-hwclock, or fake-hwclock's time after a power cut): once the folder was read
    again (hourly), keep_mb deleted this run's newest snapshots first and kept the older
    run's, dated later. This run's are the newest, in the order written."""
    folder = tmp_path / "snaps"
    earlier = make_files(folder, [-1.0, -1.0])  # an earlier run's, dated a day ahead of now
    image = DemoSource().render(0)
    one = len(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, snapshots.JPEG_QUALITY])[1])
    store = SnapshotStore(folder, keep_days=30, keep_mb=4.5 * one / snapshots.MB)
    names = [snapshot_name("door", time.time(), f"new{i}") for i in range(4)]
    for name in names[:3]:
        store.put(name, image)
    assert store.flush(5)
    store.prune(rescan=True)  # the hourly re-read of the folder
    store.put(names[3], image)
    assert store.flush(5)
    store.close()
    assert all(not p.exists() for p in earlier) and all((folder / n).exists() for n in names[1:])


# ----------------------------------------------------------------------------- faults


def test_full_disk_is_logged_and_detection_goes_on(tmp_path, default_model):
    with small_disk(tmp_path / "disk", "256k") as disk:
        fill_disk(disk)
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"snapshots:\n  dir: {disk}\n")
        r = maskd("run", "--config", str(cfg), "--source", "demo", "--exit-at-end", "--jsonl", "-",
                  "--detector", "blazeface", "--model", str(default_model))
    assert r.returncode == 0, r.stderr
    kinds = [json.loads(x)["event_type"] for x in r.stdout.splitlines()]
    assert kinds[0] == "start" and kinds[-1] == "end"  # events went on
    assert f"snapshots: cannot write to {disk}: No space left on device" in r.stderr
    assert "detection goes on" in r.stderr
    assert "Traceback" not in r.stderr


def test_unwritable_folder_is_a_fault_not_a_crash(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = SnapshotStore(blocker / "snaps", keep_days=1, keep_mb=1)
    taker = store.taker("door", "crop")
    with caplog.at_level(logging.ERROR, "maskd.snapshots"):
        store.put(snapshot_name("door", time.time(), "ev"), DemoSource().render(0))
        store.flush(5)
        assert taker.faults() == [f"snapshots: cannot write to {blocker / 'snaps'}: Not a directory"]
    assert store.failed == 1 and "detection goes on" in caplog.text
    taker.close()
    taker.close()  # as a sink and as an observer: once is enough
    assert store._closed


def test_close_returns_in_time_when_the_disk_stalls(tmp_path, caplog):
    """A disk that stops answering (a stalled SD card) must not hold up the stop: the MQTT
    flush and the offline status come after this close. Was: close() waited for room in the
    full queue forever. The stall is real: the writer's temporary file is a FIFO nobody reads,
    so its open() blocks in the kernel as a hung write would."""
    folder = tmp_path / "snaps"
    store = SnapshotStore(folder, keep_days=7, keep_mb=100)
    assert store.flush(5)  # the start's retention is done (it would tidy a stray .tmp)
    stalled = snapshot_name("door", time.time(), "stall")
    folder.mkdir()
    os.mkfifo(folder / f".{stalled}.tmp")
    image = DemoSource().render(0)
    store.put(stalled, image)
    while store._q.qsize():  # the writer took it and hangs in open()
        time.sleep(0.01)
    for i in range(snapshots.MAX_PENDING + 5):
        store.put(snapshot_name("door", time.time(), f"ev{i}"), image)
    assert store.dropped == 5
    closing = threading.Thread(target=store.close, kwargs={"timeout": 1.0}, daemon=True)
    with caplog.at_level(logging.INFO, logger="maskd.snapshots"):
        closing.start()
        closing.join(3.0)  # in a thread: the old close() never returned
    assert not closing.is_alive(), "close() still waits for the stalled disk"
    assert store.dropped == 5 + snapshots.MAX_PENDING
    assert (f"the disk did not finish within 1 s of the stop; {snapshots.MAX_PENDING} "
            f"snapshot(s) still waiting were dropped") in caplog.text
    assert f"{5 + snapshots.MAX_PENDING} dropped" in caplog.text  # the summary counts them
    reader = os.open(folder / f".{stalled}.tmp", os.O_RDONLY | os.O_NONBLOCK)  # the disk wakes
    try:
        store._thread.join(5)
        assert not store._thread.is_alive()  # it wrote the one it held, then ended
    finally:
        os.close(reader)


def test_a_keep_mb_smaller_than_one_snapshot_is_a_warning(tmp_path, caplog):
    """keep_mb below one snapshot's size keeps nothing: every file goes right after its write.
    A legitimate value for small crops can be too small for whole frames, so the config cannot
    refuse it; the log must say it (was: a DEBUG line only), once a minute, not per snapshot."""
    frame = DemoSource().render(0)
    copy = tmp_path / "copy.jpg"  # its room on this disk, which keep_mb counts
    copy.write_bytes(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY,
                                                  snapshots.JPEG_QUALITY])[1].tobytes())
    size = snapshots.on_disk(copy.stat())
    store = SnapshotStore(tmp_path / "snaps", keep_days=7, keep_mb=size / 2 / snapshots.MB)
    names = [snapshot_name("door", time.time(), f"ev{i}") for i in range(3)]
    with caplog.at_level(logging.WARNING, logger="maskd.snapshots"):
        for name in names:
            store.put(name, frame)
        assert store.flush(5)
    store.close()
    assert store.written == 3 and list(tmp_path.joinpath("snaps").iterdir()) == []
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"snapshots: {names[0]} ({size / 1024:.0f} KiB) is bigger than "
                        f"snapshots.keep_mb ({size / 2 / snapshots.MB:g} MB) and was deleted "
                        f"right after it was written (1 so far); raise keep_mb to keep any "
                        f"snapshot"]
    assert store.too_big == 3


# ----------------------------------------------------------------------------- limits, sharing


def one_size() -> int:
    image = DemoSource().render(0)
    return len(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, snapshots.JPEG_QUALITY])[1])


def test_a_snapshot_exactly_keep_days_old_and_a_folder_of_exactly_keep_mb_are_kept(tmp_path):
    """'Older than keep_days' and 'over keep_mb': at exactly the limit nothing goes."""
    folder = tmp_path / "snaps"
    clock = SteppedClock(wall=1_790_000_000.0)
    edge = folder / snapshot_name("door", clock.wall - 7 * DAY, "edge")
    folder.mkdir()
    edge.write_bytes(demo_jpeg(0))
    os.utime(edge, (clock.wall - 7 * DAY, clock.wall - 7 * DAY))
    store = SnapshotStore(folder, keep_days=7, keep_mb=100, clock=clock)
    store.close()
    assert edge.exists() and store.n_deleted == 0
    files = make_files(tmp_path / "sized", [3, 2, 1])
    total = sum(snapshots.on_disk(p.stat()) for p in files)
    store = SnapshotStore(tmp_path / "sized", keep_days=30, keep_mb=total / snapshots.MB)
    store.close()
    assert all(p.exists() for p in files) and store.n_deleted == 0


def test_a_snapshot_saved_again_under_its_name_is_counted_once(tmp_path):
    """A better crop saves the event's file again: its size replaces the one before in the
    folder's total, or keep_mb deletes snapshots the folder has room for."""
    image = DemoSource().render(0)
    store = SnapshotStore(tmp_path / "snaps", keep_days=30, keep_mb=2.5 * one_size() / snapshots.MB)
    first = snapshot_name("door", time.time(), "first")
    for _ in range(4):
        store.put(first, image)
    store.put(snapshot_name("door", time.time(), "second"), image)
    store.close()
    assert store.written == 5 and store.n_deleted == 0 and len(list((tmp_path / "snaps").iterdir())) == 2


def test_a_clock_step_after_retention_or_a_hand_deleted_its_own_snapshots_re_dates_the_rest(
        tmp_path):
    """This run's snapshots deleted by keep_mb, or by hand and then the folder read again: a
    clock step afterwards still re-dates the ones left (was: an error on the gone one, the
    rest left looking days old)."""
    image = DemoSource().render(0)
    folder = tmp_path / "snaps"
    clock = SteppedClock(wall=time.time())
    store = SnapshotStore(folder, keep_days=7, keep_mb=2.5 * one_size() / snapshots.MB, clock=clock)
    names = [snapshot_name("door", clock.wall, f"ev{i}") for i in range(4)]
    for name in names:
        store.put(name, image)  # the first two go by keep_mb
    assert store.flush(5) and store.n_deleted == 2
    clock.run(30)
    clock.wall += 10 * DAY
    store.prune()
    assert (folder / names[2]).exists() and (folder / names[3]).exists()
    (folder / names[2]).unlink()  # and one by hand
    store.prune(rescan=True)
    clock.run(30)
    clock.wall += 10 * DAY
    store.prune()
    store.close()
    assert (folder / names[3]).exists()


def test_snapshots_of_others_and_folders_are_never_counted_touched_or_deleted(tmp_path, caplog):
    """Only files named like its own: another program's old JPEG is neither deleted nor
    re-dated, and a folder named like a snapshot is passed over without a word."""
    folder = tmp_path / "snaps"
    folder.mkdir()
    holiday = folder / "holiday.jpg"
    holiday.write_bytes(demo_jpeg(3))
    old = time.time() - 30 * DAY
    os.utime(holiday, (old, old))
    named = folder / snapshot_name("door", old, "a-folder")
    named.mkdir()
    os.utime(named, (old, old))
    with caplog.at_level(logging.WARNING, logger="maskd.snapshots"):
        store = SnapshotStore(folder, keep_days=7, keep_mb=0.001)
        store.close()
    assert holiday.stat().st_mtime == old and named.is_dir() and store.n_deleted == 0
    assert caplog.text == ""


def test_a_run_on_an_unset_clock_leaves_an_earlier_unset_runs_dates_alone(tmp_path, caplog):
    """Both runs before NTP: the earlier run's 1970 dates are on this run's clock too, so
    nothing is re-dated (that is for a run on a set clock)."""
    folder = tmp_path / "snaps"
    earlier, = make_files(folder, [0.0])
    os.utime(earlier, (600.0, 600.0))
    with caplog.at_level(logging.WARNING, logger="maskd.snapshots"):
        store = SnapshotStore(folder, keep_days=7, keep_mb=100,
                              clock=SteppedClock(wall=700.0, uptime=700.0))
        store.close()
    assert earlier.stat().st_mtime == 600.0 and "re-dated" not in caplog.text


def test_unset_clock_snapshots_dated_now_at_the_step_go_after_older_ones_by_keep_mb(tmp_path):
    """At NTP's step an earlier run's 1970 snapshots are dated now: keep_mb then deletes a
    snapshot truly older (an earlier run's on a set clock) before them."""
    folder = tmp_path / "snaps"
    older, unset = make_files(folder, [1.0, 0.0])
    os.utime(unset, (600.0, 600.0))  # the unset one, from 1970
    total = older.stat().st_size + unset.stat().st_size + one_size()
    clock = SteppedClock(wall=700.0, uptime=700.0)  # this run before NTP too
    store = SnapshotStore(folder, keep_days=30, keep_mb=(total - 1) / snapshots.MB, clock=clock)
    assert store.flush(5) and store.n_deleted == 0
    clock.run(30)
    clock.wall = time.time()  # NTP
    store.prune()
    store.put(snapshot_name("door", clock.wall, "new"), DemoSource().render(0))  # one too many
    store.close()
    assert list(store.deleted) == [older] and unset.exists()


def test_a_full_disk_leaves_no_temporary_file(tmp_path):
    """A snapshot that does not fit: its temporary file goes too, or its blocks stay taken."""
    with small_disk(tmp_path / "disk", "256k") as disk:
        folder = disk / "snaps"
        store = SnapshotStore(folder, keep_days=7, keep_mb=100)
        assert store.flush(5)
        folder.mkdir(exist_ok=True)
        (disk / "filler").write_bytes(b"x" * (shutil.disk_usage(disk).free - 8192))
        store.put(snapshot_name("door", time.time(), "big"), DemoSource().render(0))
        assert store.flush(5)
        store.close()
        assert store.failed == 1 and list(folder.iterdir()) == []


def test_a_shared_store_stays_open_until_every_camera_closed(tmp_path):
    """Two cameras, one folder: the first camera's close (as a sink and as an observer, two
    calls) does not close the store under the second."""
    store = SnapshotStore(tmp_path / "snaps", keep_days=7, keep_mb=100, users=2)
    a, b = store.taker("door", "crop"), store.taker("yard", "crop")
    a.close()
    a.close()
    crop = DemoSource().render(0)[:80, :80]
    b.emit(ViolationEvent("start", "y1", 0, "yard", 1, time.time(), 0.9, 0.9, (0, 0, 1, 1),
                          best_crop=crop))
    assert store.flush(5)
    b.close()
    assert store.written == 1 and store._closed


def test_a_put_after_the_close_is_dropped_at_once(tmp_path):
    store = SnapshotStore(tmp_path / "snaps", keep_days=7, keep_mb=100)
    store.close()
    store.put(snapshot_name("door", time.time(), "late"), DemoSource().render(0))
    assert store.flush(0.1) is True and store.written == 0


def test_flush_is_false_until_the_starts_retention_is_done(tmp_path, monkeypatch):
    scan = SnapshotStore._scan

    def slow(self, now):
        time.sleep(1.0)
        scan(self, now)

    monkeypatch.setattr(SnapshotStore, "_scan", slow)
    store = SnapshotStore(tmp_path / "snaps", keep_days=7, keep_mb=100)
    assert store.flush(0.1) is False
    assert store.flush(5) is True
    store.close()


def test_a_crop_is_saved_once_per_crop_and_forgotten_at_the_end(tmp_path):
    """Messages that carry the same best crop save it once (an SD card written every second
    for nothing); a better crop saves again; the end forgets the event."""
    store = SnapshotStore(tmp_path / "snaps", keep_days=7, keep_mb=100)
    taker = store.taker("door", "crop")
    image = DemoSource().render(0)
    crop, better = image[:80, :80], image[80:160, :80]

    def message(kind: str, seq: int, c) -> ViolationEvent:
        return ViolationEvent(kind, "ev", seq, "door", 1, time.time(), 0.9, 0.9, (0, 0, 1, 1),
                              best_crop=c)

    taker.emit(message("start", 0, crop))
    taker.emit(message("update", 1, crop))
    taker.emit(message("update", 2, crop))
    taker.emit(message("update", 3, better))
    taker.emit(message("end", 4, better))
    assert store.flush(5)
    taker.close()
    assert store.written == 2 and taker._saved == {}


def test_a_frame_shown_once_is_saved_once_for_its_messages(tmp_path):
    """A start and its end on one frame (a stop right after it began): one file written."""
    store = SnapshotStore(tmp_path / "snaps", keep_days=7, keep_mb=100)
    taker = store.taker("door", "frame")
    frame = DemoSource().read()
    for kind, seq in (("start", 0), ("end", 1)):
        taker.emit(ViolationEvent(kind, "ev", seq, "door", 1, time.time(), 0.9, 0.9,
                                  (0.1, 0.1, 0.3, 0.3), frame_seq=frame.seq))
    taker.on_frame(frame, [], LoopStats(fps=15.0))
    assert store.flush(5)
    taker.close()
    assert store.written == 1


def test_names_are_in_utc_whatever_the_time_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    try:
        assert snapshot_name("door", 0.0, "ev") == "door-19700101-000000-ev.jpg"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_the_folder_is_made_private_whatever_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        store = SnapshotStore(tmp_path / "snaps", keep_days=7, keep_mb=100)
        store.put(snapshot_name("door", time.time(), "ev"), DemoSource().render(0))
        store.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "snaps").stat().st_mode) == 0o750


def test_a_fault_clears_once_a_snapshot_is_written_again(tmp_path):
    blocker = tmp_path / "snaps"
    blocker.write_text("not a folder yet")
    store = SnapshotStore(blocker, keep_days=7, keep_mb=100)
    store.put(snapshot_name("door", time.time(), "a"), DemoSource().render(0))
    assert store.flush(5) and store.faults()
    blocker.unlink()
    store.put(snapshot_name("door", time.time(), "b"), DemoSource().render(0))
    assert store.flush(5)
    store.close()
    assert store.faults() == [] and store.written == 1


def test_periodic_retention_runs_every_prune_every_s_not_without_end(tmp_path, monkeypatch):
    """Once the first periodic look is due, the next is PRUNE_EVERY_S after it: the writer
    thread never spins (a core of a Pi busy for nothing)."""
    monkeypatch.setattr(snapshots, "PRUNE_EVERY_S", 0.1)
    calls = []
    prune = SnapshotStore.prune

    def counted(self, rescan=False):
        calls.append(rescan)
        prune(self, rescan)

    monkeypatch.setattr(SnapshotStore, "prune", counted)
    store = SnapshotStore(tmp_path / "snaps", keep_days=7, keep_mb=100)
    time.sleep(1.0)
    store.close()
    assert 5 <= len(calls) <= 15, len(calls)


def test_close_waits_no_longer_than_its_timeout_when_the_disk_stalls(tmp_path):
    folder = tmp_path / "snaps"
    store = SnapshotStore(folder, keep_days=7, keep_mb=100)
    assert store.flush(5)
    stalled = snapshot_name("door", time.time(), "stall")
    folder.mkdir()
    os.mkfifo(folder / f".{stalled}.tmp")
    image = DemoSource().render(0)
    store.put(stalled, image)
    while store._q.qsize():
        time.sleep(0.01)
    for i in range(snapshots.MAX_PENDING):
        store.put(snapshot_name("door", time.time(), f"ev{i}"), image)
    t = time.monotonic()
    closing = threading.Thread(target=store.close, kwargs={"timeout": 1.0}, daemon=True)
    closing.start()
    closing.join(5.0)
    took = time.monotonic() - t
    reader = os.open(folder / f".{stalled}.tmp", os.O_RDONLY | os.O_NONBLOCK)
    try:
        store._thread.join(5)
    finally:
        os.close(reader)
    assert took < 1.6, took


def test_a_crowd_that_starts_at_once_gets_every_frame_snapshot(tmp_path):
    """Twice MAX_PENDING people start on one frame (a crowd; `detector.max_faces` allows 200):
    every one gets its snapshot on a healthy disk (was: the queue took MAX_PENDING of them and
    the rest were dropped as if the disk were slow, each copy of the one frame encoded again)."""
    store = SnapshotStore(tmp_path / "snaps", keep_days=7, keep_mb=100)
    taker = store.taker("door", "frame")
    frame = DemoSource().read()
    n = 2 * snapshots.MAX_PENDING
    for i in range(n):
        taker.emit(ViolationEvent("start", f"ev{i:02d}", 0, "door", i, time.time(), 0.9, 0.9,
                                  (0.1, 0.1, 0.3, 0.3), frame_seq=frame.seq))
    taker.on_frame(frame, [], LoopStats(fps=15.0))
    assert store.flush(10)
    taker.close()
    assert store.dropped == 0 and store.written == n
    assert len(list((tmp_path / "snaps").glob("door-*.jpg"))) == n


def test_a_crowd_that_starts_at_once_gets_every_crop_snapshot(tmp_path):
    """`what: crop`, four times MAX_PENDING people starting on one frame: their crops are small,
    so every one is saved on a healthy disk (was: 84 of 158 dropped in a real `maskd run` of a
    crowd without MQTT, as if the disk were slow); the bound is the size of what waits."""
    store = SnapshotStore(tmp_path / "snaps", keep_days=7, keep_mb=100)
    taker = store.taker("door", "crop")
    image = DemoSource().render(0)
    n = 4 * snapshots.MAX_PENDING
    for i in range(n):
        crop = image[i % 4 * 100:i % 4 * 100 + 96, i // 4 * 4:i // 4 * 4 + 96].copy()
        taker.emit(ViolationEvent("start", f"ev{i:03d}", 0, "door", i, time.time(), 0.9, 0.9,
                                  (0.1, 0.1, 0.3, 0.3), best_crop=crop))
    assert store.flush(10)
    taker.close()
    assert store.dropped == 0 and store.written == n
