"""Violation lifecycle on scripted detections: start, rate-limited update, the three end
reasons, re-attach after a brief loss, cooldown; and the JSON-lines sink."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from maskd.clock import local_iso
from maskd.config import TrackingConfig
from maskd.events import Violations
from maskd.jsonl import JsonlSink
from maskd.mqtt.schema import event_fields
from maskd.tracking import Tracker

FPS = 10.0
CFG = TrackingConfig(window=3, min_frames=3, min_span_s=0.0, start_threshold=0.7,
                     release_threshold=0.4, max_missed_frames=5, update_interval_s=1.0,
                     end_after_s=2.0, cooldown_s=5.0)


class Scene:
    """Tracker + Violations driven by scripted frames at 10 fps."""

    def __init__(self, cfg: TrackingConfig = CFG) -> None:
        counter = itertools.count(1)
        self.tracker = Tracker(cfg)
        self.violations = Violations(cfg, "door", new_id=lambda: f"ev{next(counter)}")
        self.events = []
        self.sent_at = []  # frame time each event was emitted at
        self.seq = 0

    def frame(self, *faces):
        """faces: (box, no_mask) pairs, or (box, no_mask, face crop) to give the track a look."""
        t = self.seq / FPS
        tracks = self.tracker.match([tuple(map(float, f[0])) for f in faces], self.seq, t)
        for tr, f in zip(tracks, faces, strict=True):
            self.tracker.add_score(tr, f[1])
            if len(f) > 2:
                self.tracker.observe(tr, f[2])
        crops = {tr.track_id: np.full((8, 8, 3), self.seq, np.uint8) for tr in tracks}
        new = self.violations.update(self.tracker.tracks, t, self.seq, (640, 480), crops)
        self.events += new
        self.sent_at += [t] * len(new)
        self.seq += 1

    def frames(self, n, *faces):
        for _ in range(n):
            self.frame(*faces)

    def kinds(self):
        return [(e.event_type, e.event_id, e.end_reason) for e in self.events]


BOX = (100, 100, 200, 200)


def test_one_violation_start_updates_then_masked_end():
    s = Scene()
    s.frames(2, (BOX, 0.2))
    s.frames(30, (BOX, 0.8))  # median 0.8 from frame 3, confirmed on frame 5
    s.frames(5, (BOX, 0.95))  # best score rises -> one update (rate limited)
    s.frames(10, (BOX, 0.05))  # masked up
    k = s.kinds()
    assert k[0] == ("start", "ev1", None)
    assert k[-1] == ("end", "ev1", "masked")
    assert [e for e in k if e[0] == "start"] == [("start", "ev1", None)]
    starts = s.events[0]
    assert starts.seq == 0 and starts.start_time == 0.5 and starts.frame_seq == 5
    assert starts.box == (100 / 640, 100 / 480, 200 / 640, 200 / 480)
    assert [e.seq for e in s.events] == list(range(len(s.events)))
    end = s.events[-1]
    assert end.top_score == 0.95 and end.end_reason == "masked"
    # The best crop is the one from the frame where the best score was reached.
    assert int(end.best_crop[0, 0, 0]) == end.frame_seq
    assert s.violations.active == 0


def test_updates_are_rate_limited():
    s = Scene()
    for i in range(40):  # score creeps up every frame: an update would be due every frame
        s.frame((BOX, 0.71 + i * 0.005))
    updates = [e for e in s.events if e.event_type == "update"]
    assert len(updates) >= 3, "a rising score must produce updates"
    # No two messages closer than update_interval_s, though news came every frame.
    gaps = [b - a for a, b in zip(s.sent_at, s.sent_at[1:], strict=False)]
    assert all(g >= CFG.update_interval_s - 1e-9 for g in gaps), gaps
    assert len(updates) <= 4
    assert all(u.top_score >= p.top_score for p, u in zip(s.events, s.events[1:], strict=False))


def test_no_update_without_news():
    s = Scene()
    s.frames(50, (BOX, 0.9))
    assert [e.event_type for e in s.events] == ["start"]


def test_no_update_goes_out_while_the_violator_is_out_of_sight():
    """An update that fell due while the person was not seen went out then, with the time to
    then: its duration_s was longer than the end's that followed (up to the last sighting),
    and its time after that end's end_time (a real run: an update "5.0 s" 0.13 s after the
    person left, then the end "4.867 s")."""
    s = Scene()
    s.frames(8, (BOX, 0.9))  # start at t=0.2
    s.frames(2, (BOX, 0.95))  # the best score rises at t=0.9 (news), then the person leaves
    s.frames(25)  # an update would be due at t=1.2; gone at t=2.9, end_time 0.9
    assert [e.event_type for e in s.events] == ["start", "end"]
    end = s.events[-1]
    assert (end.end_reason, end.end_time, end.duration_s) == ("gone", 0.9, 0.7)
    assert end.top_score == pytest.approx(0.95)  # the news goes with the end


def test_gone_end_after_end_after_s_with_last_seen_time():
    s = Scene()
    s.frames(10, (BOX, 0.9))  # seen until t=0.9
    s.frames(19)  # t=1.0 .. 2.8: still open
    assert s.violations.active == 1 and s.kinds()[-1][0] == "start"
    s.frames(1)  # t=2.9: lost for 2.0 s
    end = s.events[-1]
    assert (end.event_type, end.end_reason, end.end_time) == ("end", "gone", 0.9)


def test_a_violator_the_tracker_still_holds_is_not_ended_gone():
    """At a slow frame rate the tracker keeps a missed track (max_missed_frames) longer than
    end_after_s: the event ended `gone` while the track lived, and when the same track was
    found again a second start followed at once (no cooldown after `gone`)."""
    s = Scene(CFG.model_copy(update={"max_missed_frames": 40}))  # 4 s of frames > end_after_s 2 s
    s.frames(10, (BOX, 0.9))
    s.frames(30)  # hidden for 3 s; the tracker still holds the track
    s.frames(5, (BOX, 0.9))
    assert [e.event_type for e in s.events] == ["start"] and s.violations.active == 1
    s.frames(41)  # now the tracker drops it: gone, at the last sighting
    assert s.kinds()[-1] == ("end", "ev1", "gone") and s.events[-1].end_time == pytest.approx(4.4)


def test_flickering_detection_is_one_event():
    s = Scene()
    for i in range(60):
        s.frame(*([] if i % 4 == 3 else [(BOX, 0.9)]))
    assert [e.event_type for e in s.events] == ["start"]


def test_brief_loss_reattaches_to_the_same_event():
    """The tracker drops the person (8 frames > max_missed_frames) and starts a new track:
    the new track takes over the open event instead of opening a new one."""
    s = Scene()
    s.frames(10, (BOX, 0.9))
    s.frames(8)
    moved = (110, 105, 210, 205)
    s.frames(10, (moved, 0.9))
    assert [(e.event_type, e.event_id) for e in s.events] == [("start", "ev1"), ("update", "ev1")]
    assert s.events[1].track_id != s.events[0].track_id
    assert s.violations.active == 1
    s.frames(25)
    assert s.kinds()[-1] == ("end", "ev1", "gone")


def test_cooldown_delays_a_new_event_at_the_same_place():
    s = Scene()
    s.frames(10, (BOX, 0.9))
    s.frames(5, (BOX, 0.0))  # masked: end at t=1.1 (window 3: median drops on 2nd frame)
    end = s.events[-1]
    assert end.end_reason == "masked"
    s.frames(20, (BOX, 0.9))  # mask off again right away: still in the cooldown
    assert [e.event_type for e in s.events] == ["start", "end"]
    s.frames(30, (BOX, 0.9))
    starts = [e for e in s.events if e.event_type == "start"]
    assert len(starts) == 2 and starts[1].event_id == "ev2"
    assert starts[1].start_time - end.end_time >= CFG.cooldown_s - 1e-9


def test_cooldown_holds_on_the_same_track_whatever_it_looks_like():
    """A mask changes how a face looks: the look kept at a `masked` end was the track's running
    average with the masked crops in it, too unlike the bare face for the cooldown's 'same
    person', so the same person on the same track started again within the cooldown."""
    s = Scene(TrackingConfig(**{**CFG.model_dump(), "same_person_similarity": 0.9}))
    bare, masked = look(1), look(2)
    s.frames(10, (BOX, 0.9, bare))
    s.frames(5, (BOX, 0.0, masked))
    assert s.events[-1].end_reason == "masked"
    s.frames(20, (BOX, 0.9, look(3)))  # the track goes on; its look is no help
    assert [e.event_type for e in s.events] == ["start", "end"]
    s.frames(30, (BOX, 0.9, look(3)))
    assert [e.event_type for e in s.events] == ["start", "end", "start"]


def test_cooldown_is_per_place():
    s = Scene()
    s.frames(10, (BOX, 0.9))
    s.frames(5, (BOX, 0.0))
    other = (400, 100, 500, 200)
    s.frames(5, (BOX, 0.0), (other, 0.9))
    assert [e.event_type for e in s.events] == ["start", "end", "start"]


def test_two_people_two_events_and_shutdown_ends_both():
    s = Scene()
    s.frames(10, (BOX, 0.9), ((400, 100, 500, 200), 0.85))
    assert sorted(e.event_id for e in s.events) == ["ev1", "ev2"]
    ends = s.violations.close_all(5.0)
    assert [(e.event_type, e.end_reason, e.end_time) for e in ends] == [("end", "shutdown", 5.0)] * 2
    assert s.violations.active == 0


def test_masked_people_produce_nothing():
    s = Scene()
    s.frames(100, (BOX, 0.1), ((300, 50, 380, 130), 0.3))
    assert s.events == []


def test_jsonl_file_sink_writes_one_flushed_line_per_event(tmp_path):
    s = Scene()
    s.frames(10, (BOX, 0.9))
    s.events += s.violations.close_all(1.0)
    path = tmp_path / "sub" / "events.jsonl"
    sink = JsonlSink(str(path))
    sink.emit(s.events[0])
    # Flushed per line: readable before close.
    assert json.loads(path.read_text())["event_type"] == "start"
    sink.emit(s.events[1])
    assert sink.flush(1.0) is True
    sink.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [d["event_type"] for d in lines] == ["start", "end"]
    assert lines[1]["end_reason"] == "shutdown" and lines[0]["event_id"] == lines[1]["event_id"]
    assert set(lines[0]) >= {"event_id", "seq", "camera", "track_id", "start_time", "score",
                             "top_score", "box", "end_reason", "frame_seq", "duration_s",
                             "clock_step_s"}


def jsonl_event(i: int):
    from maskd.types import ViolationEvent

    return ViolationEvent("start", f"id{i}", 0, "cam", i, 1.0, 0.9, 0.9, (0, 0, 1, 1))


def test_a_jsonl_file_whose_last_line_a_power_cut_cut_gets_its_next_line_whole(tmp_path, caplog):
    """A power cut can leave the file's last line cut part-way (the card got the page with its
    first half only): the next run's first line was written on at its end, one line that is no
    JSON, and a reader lost that event. The cut line is ended first now, and said."""
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"event_type": "start", "event_id": "before"}\n{"event_type": "upd')
    with caplog.at_level(logging.WARNING, logger="maskd.jsonl"):
        sink = JsonlSink(str(path))
        sink.emit(jsonl_event(1))
        sink.close()
    lines = path.read_text().splitlines()
    assert lines[:2] == ['{"event_type": "start", "event_id": "before"}', '{"event_type": "upd']
    assert [json.loads(x)["event_id"] for x in lines[2:]] == ["id1"], lines
    assert [r.getMessage() for r in caplog.records] == [
        f"jsonl {path}: its last line was cut off (a power cut while it was written?); it is "
        "ended here, so the next event is a line of its own"]
    JsonlSink(str(path)).close()  # a whole last line: nothing added, nothing said
    assert path.read_text().splitlines() == lines and len(caplog.records) == 1


def test_standard_output_appended_to_a_file_a_power_cut_cut_gets_its_next_line_whole(tmp_path):
    """`maskd run --jsonl - >> events.jsonl` (or systemd's StandardOutput=append:): a last line
    a power cut cut was ended for `jsonl.path: FILE` and `/dev/stdout`, not for `-`, and the
    next run's first event was written on at its end (one line that is no JSON). A file opened
    where writes do not go at its end (systemd's file:, at its start) is left as it is."""
    path, other = tmp_path / "events.jsonl", tmp_path / "overwritten.jsonl"
    cut = b'{"event_type": "start", "event_id": "before"}\n{"event_type": "upd'
    path.write_bytes(cut)
    other.write_bytes(cut)
    code = ("import sys; sys.path.insert(0, 'tests'); from maskd.jsonl import JsonlSink; "
            "from test_events import jsonl_event; s = JsonlSink('-'); s.emit(jsonl_event(1)); "
            "s.close()")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with open(path, "ab") as out:
        done = subprocess.run([sys.executable, "-c", code], stdout=out, stderr=subprocess.PIPE,
                              text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    lines = path.read_text().splitlines()
    assert lines[:2] == ['{"event_type": "start", "event_id": "before"}', '{"event_type": "upd']
    assert [json.loads(x)["event_id"] for x in lines[2:]] == ["id1"], lines
    assert f"jsonl - ({path}): its last line was cut off" in done.stderr, done.stderr
    with open(other, "r+b") as out:  # at offset 0, as systemd's StandardOutput=file: opens it
        subprocess.run([sys.executable, "-c", code], stdout=out, check=True, timeout=60, env=env)
    assert other.read_bytes().startswith(b'{"event_type": "start", "event_id": "id1"')


def test_a_cut_last_line_whose_newline_the_card_refuses_is_not_said_ended(tmp_path):
    """The newline that ends a cut last line is refused (EIO injected by strace into its write
    in a real process): the WARNING that says the line was ended here is not given, as the
    line was not ended; the file is as it was."""
    from test_faults_mqtt import strace_injecting

    strace = strace_injecting()
    path = tmp_path / "events.jsonl"
    before = b'{"event_type": "start", "event_id": "before"}\n{"event_type": "upd'
    path.write_bytes(before)
    opened = ("import logging, sys; logging.basicConfig(); from maskd.jsonl import JsonlSink; "
              "JsonlSink(sys.argv[1]).close()")
    r = subprocess.run([strace, "-f", "-qq", "-o", str(tmp_path / "strace.log"), "-e",
                        "trace=write,pwrite64", "-P", str(path), "-e",
                        "inject=write,pwrite64:error=EIO:when=1", sys.executable, "-c", opened,
                        str(path)], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "INJECTED" in (tmp_path / "strace.log").read_text(), "the fault met no write"
    assert "cut off" not in r.stderr and path.read_bytes() == before, r.stderr


def test_a_jsonl_file_this_user_cannot_read_is_left_as_it_is_and_nothing_said(tmp_path):
    """A JSON lines file this user may append to but not read (0200, a real process without
    the capabilities that pass by file modes): whether its last line was cut is not known, so
    nothing is added and no WARNING says a cut line was ended (_ends_in_a_cut_line's promise)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux), to drop CAP_DAC_OVERRIDE")
    path = tmp_path / "events.jsonl"
    before = b'{"event_type": "start", "event_id": "before"}\n{"event_type": "upd'
    path.write_bytes(before)
    os.chmod(path, 0o200)
    opened = ("import logging, sys; logging.basicConfig(); from maskd.jsonl import JsonlSink; "
              "JsonlSink(sys.argv[1]).close()")
    r = subprocess.run([setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable,
                        "-c", opened, str(path)], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr == "" and path.read_bytes() == before, r.stderr


def test_jsonl_file_on_a_full_disk_gets_whole_lines_in_order_once_there_is_room(tmp_path, caplog):
    """A full card: the file must never hold half a line, no event line may be lost or
    reordered, the fault must show, and the lines must follow once there is room."""
    from mqtt_broker import fill_disk, small_disk

    from maskd.types import LoopStats

    with small_disk(tmp_path / "disk") as disk:
        path = disk / "events.jsonl"
        sink = JsonlSink(str(path))
        sink.emit(jsonl_event(0))
        filler = fill_disk(disk)
        with caplog.at_level(logging.ERROR, logger="maskd.jsonl"):
            for i in range(1, 30):  # the first few still fit in the file's last page
                sink.emit(jsonl_event(i))
        assert "cannot write: No space left on device" in caplog.text
        text = path.read_text()
        assert text.endswith("\n")
        written = [json.loads(x)["event_id"] for x in text.splitlines()]  # whole lines only
        assert 0 < len(written) < 30 and written == [f"id{i}" for i in range(len(written))]
        assert sink.faults() == [f"jsonl {path}: No space left on device, "
                                 f"{30 - len(written)} event line(s) waiting"]
        assert sink.flush(0.1) is False

        filler.unlink()
        sink.on_stats(LoopStats(fps=1.0, active=0))  # no new event needed
        assert sink.faults() == [] and sink.flush(0.1) is True
        sink.close()
        assert [json.loads(x)["event_id"] for x in path.read_text().splitlines()] == \
            [f"id{i}" for i in range(30)]


def test_a_reader_tailing_the_jsonl_file_on_a_full_disk_never_sees_part_of_a_line(
        tmp_path, monkeypatch):
    """`tail -F` on the file while the disk is full: each retry wrote the part of the line that
    fit in the file's last block and cut it back, so the reader got half lines glued to the
    next, and GNU tail, seeing the file truncated, read it all again from the start (every
    earlier event again at each retry). The room is taken before a byte is written."""
    from mqtt_broker import fill_disk, small_disk

    from maskd import files

    cuts: list[int] = []
    cut = os.ftruncate
    monkeypatch.setattr(files.os, "ftruncate", lambda fd, n: (cuts.append(n), cut(fd, n))[1])
    with small_disk(tmp_path / "disk") as disk:
        path = disk / "events.jsonl"
        sink = JsonlSink(str(path))
        sink.emit(jsonl_event(0))  # a short file: most of its last page is free
        size = path.stat().st_size
        fill_disk(disk)
        for i in range(1, 40):  # more than that page holds
            sink.emit(jsonl_event(i))
        text = path.read_text()
        sink.close()
    assert cuts == [], "a line was written in part and cut back"
    assert len(text) > size and text.endswith("\n")  # whole lines, as far as there was room
    assert [json.loads(x)["event_id"] for x in text.splitlines()] == \
        [f"id{i}" for i in range(len(text.splitlines()))]


def test_a_card_gone_read_only_is_said_as_such_by_json_lines_and_snapshots(tmp_path, caplog):
    """A failing SD card that the kernel remounts read-only: the JSON lines file and the
    snapshots on it say what that means where their write fails (was: a bare 'Read-only file
    system', the card named only a minute later by CardWatch, and only once it records an
    error); the lines wait and nothing is written twice."""
    from mqtt_broker import fail_card, sd_card

    from maskd.demo import DemoSource
    from maskd.files import READ_ONLY_NOW
    from maskd.snapshots import SnapshotStore, snapshot_name

    with sd_card(tmp_path / "card") as card, caplog.at_level(logging.ERROR):
        path = card / "events.jsonl"
        sink = JsonlSink(str(path))
        store = SnapshotStore(card / "snaps", keep_days=1, keep_mb=1)
        taker = store.taker("door", "crop")
        sink.emit(jsonl_event(0))
        fail_card(card)
        for i in range(1, 4):
            sink.emit(jsonl_event(i))
        store.put(snapshot_name("door", time.time(), "ev"), DemoSource().render(0))
        store.flush(5)
        assert sink.faults() == [f"jsonl {path}: {READ_ONLY_NOW}, 3 event line(s) waiting"]
        assert taker.faults() == [f"snapshots: cannot write to {card / 'snaps'}: {READ_ONLY_NOW}"]
        assert f"jsonl {path}: cannot write: {READ_ONLY_NOW}; 1 event line(s)" in caplog.text
        assert sink.flush(0.1) is False
        taker.close()
        sink.close()
        assert [json.loads(x)["event_id"] for x in path.read_text().splitlines()] == ["id0"]
    assert "Read-only file system" not in caplog.text


def test_jsonl_lines_that_wait_are_bounded_and_what_is_lost_is_said(tmp_path, caplog,
                                                                   monkeypatch):
    from mqtt_broker import fill_disk, small_disk

    import maskd.jsonl

    monkeypatch.setattr(maskd.jsonl, "MEMORY_MAX", 3)
    with small_disk(tmp_path / "disk") as disk:
        fill_disk(disk)
        sink = JsonlSink(str(disk / "events.jsonl"))
        for i in range(5):
            sink.emit(jsonl_event(i))
        assert sink.failed == 2 and sink.flush(0.1) is False
        with caplog.at_level(logging.ERROR, logger="maskd.jsonl"):
            sink.close()
        assert "3 event line(s) could not be written (No space left on device) and are lost" \
            in caplog.text
        assert sink.failed == 5


def test_a_jsonl_file_is_capped_by_max_mb_keeping_the_newest_lines(tmp_path, caplog):
    """Months at a door with no logrotate: the file must not fill the SD card. 10,000 events
    through the sink `run` builds from a config with a small `jsonl.max_mb`: the file and its
    one older copy each stay under the cap, and together they hold the newest events, whole,
    in order, none missing between them; each roll-over is one INFO line."""
    from maskd.config import parse_config
    from maskd.service import build_sinks
    from maskd.types import RunControl

    path = tmp_path / "events.jsonl"
    cfg = parse_config({"jsonl": {"path": str(path), "max_mb": 0.25}}, "test")
    [sink] = build_sinks(cfg, RunControl())
    cap = 0.25 * 1024 * 1024
    with caplog.at_level(logging.INFO, logger="maskd.jsonl"):
        for i in range(10_000):
            sink.emit(jsonl_event(i))
            if i % 1000 == 0:
                assert path.stat().st_size <= cap
    assert sink.flush(0.1) is True and sink.faults() == []
    sink.close()
    old = path.with_name(path.name + ".old")
    assert path.stat().st_size <= cap and old.stat().st_size <= cap
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, old.name]
    kept = [json.loads(x)["event_id"] for f in (old, path) for x in f.read_text().splitlines()]
    assert kept == [f"id{i}" for i in range(10_000 - len(kept), 10_000)]
    assert len(kept) * len(path.read_text().splitlines()[-1]) > cap  # more than one file's worth
    rolled = [r for r in caplog.records if "max_mb" in r.getMessage()]
    assert rolled and all(r.levelno == logging.INFO for r in rolled)


def test_a_jsonl_file_that_cannot_be_moved_at_its_cap_grows_on_losing_nothing(tmp_path, caplog):
    """`PATH.old` taken by a folder: the cap cannot move the file, so no line may be lost for
    it; one WARNING says so (not one a line) and the lines go on into the same file."""
    path = tmp_path / "events.jsonl"
    (tmp_path / "events.jsonl.old").mkdir()
    sink = JsonlSink(str(path), max_mb=1 / 1024)  # 1 KiB: a few lines
    with caplog.at_level(logging.WARNING, logger="maskd.jsonl"):
        for i in range(50):
            sink.emit(jsonl_event(i))
    assert sink.flush(0.1) is True
    sink.close()
    assert [json.loads(x)["event_id"] for x in path.read_text().splitlines()] == \
        [f"id{i}" for i in range(50)]
    (line,) = [r.getMessage() for r in caplog.records]
    assert "cannot rename it to" in line and "events.jsonl.old" in line


def test_a_symlinked_jsonl_file_is_capped_where_the_link_points(tmp_path):
    """`jsonl.path` a link to a file elsewhere (a USB stick, a log folder a consumer tails):
    the cap moved the link itself to `PATH.old` and began a plain file beside it, so the events
    left the place the link named (a `tail -F` there saw none again) for the link's folder, and
    the next cap deleted the link. The file the link names is the one moved and begun anew."""
    stick, etc = tmp_path / "stick", tmp_path / "etc"
    stick.mkdir()
    etc.mkdir()
    (etc / "events.jsonl").symlink_to(stick / "events.jsonl")
    sink = JsonlSink(str(etc / "events.jsonl"), max_mb=1 / 1024)  # 1 KiB: a few lines
    for i in range(50):
        sink.emit(jsonl_event(i))
    sink.close()
    assert (etc / "events.jsonl").is_symlink() and [p.name for p in etc.iterdir()] == ["events.jsonl"]
    assert sorted(p.name for p in stick.iterdir()) == ["events.jsonl", "events.jsonl.old"]
    kept = [json.loads(x)["event_id"] for f in ("events.jsonl.old", "events.jsonl")
            for x in (stick / f).read_text().splitlines()]
    assert kept == [f"id{i}" for i in range(50 - len(kept), 50)] and len(kept) > 3


def test_a_jsonl_path_like_dev_stdout_sent_to_a_file_is_never_moved_at_the_cap(tmp_path):
    """`jsonl.path: /dev/stdout` with maskd's output sent to a file (`> events.log`): the link
    leads through /proc to that open file, and the cap (100 MB by default) renamed the link
    itself to `/dev/stdout.old` and began a plain file in its place (as root, /dev/stdout then
    a file for every program until a reboot), the events leaving the file the output went to
    and each later cap deleting the half before. The link stays; every line goes to the file.
    A link of /dev's shape is made here, as the real one must not be touched."""
    dev = tmp_path / "dev"
    dev.mkdir()
    out = tmp_path / "events.log"
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)  # the shell's `>>`
    try:
        (dev / "stdout").symlink_to(f"/proc/self/fd/{fd}")
        sink = JsonlSink(str(dev / "stdout"), max_mb=1 / 1024)  # 1 KiB: a few lines
        for i in range(20):
            sink.emit(jsonl_event(i))
        assert sink.flush(0.1) is True
        sink.close()
    finally:
        os.close(fd)
    assert [p.name for p in dev.iterdir()] == ["stdout"] and (dev / "stdout").is_symlink()
    assert [json.loads(x)["event_id"] for x in out.read_text().splitlines()] == [
        f"id{i}" for i in range(20)]


def two_sinks_at_the_cap(path: Path) -> tuple[JsonlSink, JsonlSink, int]:
    """Two processes' sinks on one file with a 1 KiB cap, filled up to it a line each in turn;
    and how many lines that took."""
    first, second = (JsonlSink(str(path), max_mb=1 / 1024) for _ in range(2))
    n = 0
    while path.stat().st_size + len(json.dumps(event_fields(jsonl_event(n)))) + 1 <= 1024:
        (first if n % 2 else second).emit(jsonl_event(n))
        n += 1
    return first, second, n


def assert_both_halves_kept(first: JsonlSink, second: JsonlSink, path: Path, n: int) -> None:
    """Two more lines each way, then every one of the n + 4 lines is in PATH.old or PATH."""
    first.emit(jsonl_event(n + 2))
    second.emit(jsonl_event(n + 3))
    first.close()
    second.close()
    kept = sorted(int(json.loads(x)["event_id"][2:]) for f in (path.with_name(path.name + ".old"), path)
                  for x in f.read_text().splitlines())
    assert kept == list(range(n + 4))


def test_two_processes_at_the_cap_of_one_jsonl_file_keep_its_older_half(tmp_path, monkeypatch):
    """Two maskd processes appending to one file (a camera each), both at its cap at once: the
    second moved the first one's brand-new file over `PATH.old`, deleting the older half (the
    file as it was at the cap) a whole cap too early. Here the second's rename comes just after
    the first one's look at the file, as two processes may interleave."""
    import maskd.jsonl as jsonl_mod

    path = tmp_path / "events.jsonl"
    first, second, n = two_sinks_at_the_cap(path)
    replace = os.replace

    def meanwhile(src, dst):
        """The other process moves the file at its cap, between this one's look and rename."""
        monkeypatch.setattr(jsonl_mod.os, "replace", replace)
        first.emit(jsonl_event(n + 1))
        replace(src, dst)

    monkeypatch.setattr(jsonl_mod.os, "replace", meanwhile)
    second.emit(jsonl_event(n))
    monkeypatch.setattr(jsonl_mod.os, "replace", replace)
    assert_both_halves_kept(first, second, path, n)


def test_jsonl_max_mb_null_keeps_one_growing_file(tmp_path):
    """`jsonl.max_mb: null` is the file as before (for logrotate alone to rotate)."""
    from maskd.config import parse_config
    from maskd.service import build_sinks
    from maskd.types import RunControl

    path = tmp_path / "events.jsonl"
    [sink] = build_sinks(parse_config({"jsonl": {"path": str(path), "max_mb": None}}, "test"),
                         RunControl())
    for i in range(2000):
        sink.emit(jsonl_event(i))
    sink.close()
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert len(path.read_text().splitlines()) == 2000


def test_jsonl_path_may_be_a_pipe(tmp_path):
    """`jsonl.path: /dev/stdout` or a named pipe cannot be seeked or cut back; lines still go."""
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got: list[str] = []
    # The reader opens the pipe a moment after the sink starts opening it (a consumer started
    # alongside maskd): the sink waits for it instead of refusing the pipe.
    reader = threading.Thread(target=lambda: (time.sleep(0.5),
                                              got.extend(fifo.read_text().splitlines())))
    reader.start()
    sink = JsonlSink(str(fifo))
    for i in range(3):
        sink.emit(jsonl_event(i))
    assert sink.flush(0.1) is True and sink.faults() == []
    sink.close()
    reader.join(5)
    assert [json.loads(x)["event_id"] for x in got] == ["id0", "id1", "id2"]


def sink_on_a_fifo(tmp_path: Path) -> tuple[JsonlSink, int]:
    """A JSON lines sink on a named pipe, and its reader's descriptor (opened meanwhile, as a
    consumer started alongside maskd)."""
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    opened: list[int] = []
    opener = threading.Thread(target=lambda: opened.append(os.open(fifo, os.O_RDONLY)))
    opener.start()
    sink = JsonlSink(str(fifo))
    opener.join(5)
    return sink, opened[0]


def test_a_pipe_whose_reader_stops_reading_never_blocks_the_loop(tmp_path):
    """A named pipe whose consumer hangs (it keeps the pipe open and reads nothing): once the
    pipe was full, the write blocked the camera's loop for good, with the lock held: no more
    detection, no MQTT alarm after it (the JSON lines sink comes first), and SIGTERM could not
    stop maskd (systemd's SIGKILL). The lines now wait in memory, as on a full disk, and
    follow whole and in order once the reader reads again."""
    import fcntl
    import threading

    sink, fd = sink_on_a_fifo(tmp_path)
    fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ: the smallest pipe, full after a few lines
    n = 60  # far more than 4 KiB of lines
    done = threading.Event()

    def emit_all() -> None:
        for i in range(n):
            sink.emit(jsonl_event(i))
        done.set()

    threading.Thread(target=emit_all, daemon=True).start()
    assert done.wait(5), "emit blocked on a pipe nobody reads"
    assert sink.faults() and "waiting" in sink.faults()[0], sink.faults()
    assert sink.flush(0.1) is False
    got = b""
    os.set_blocking(fd, False)
    while True:  # the reader wakes up: what waits follows, whole and in order
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            chunk = b""
        got += chunk
        if not chunk and sink.flush(0.1):
            break
    sink.close()
    with contextlib.suppress(BlockingIOError):
        got += os.read(fd, 1 << 16)
    os.close(fd)
    assert [json.loads(x)["event_id"] for x in got.decode().splitlines()] == [
        f"id{i}" for i in range(n)]
    assert sink.faults() == []


def test_the_stop_waits_for_a_full_pipe_but_not_for_one_whose_reader_left(tmp_path):
    """The stop gives a pipe's slow reader up to its timeout to take what waits; a named pipe
    whose reader has gone is not full but broken (writable at once, EPIPE): waiting on it
    would spin the whole timeout through. Its lines wait for a next reader, as before."""

    sink, fd = sink_on_a_fifo(tmp_path)
    os.close(fd)  # the reader leaves
    sink.emit(jsonl_event(0))
    began = time.monotonic()
    assert sink.flush(5.0) is False
    assert time.monotonic() - began < 1.0
    assert "1 event line(s) waiting" in sink.faults()[0], sink.faults()
    sink.close()


def test_jsonl_file_follows_a_rotation_and_keeps_copytruncate_whole(tmp_path, caplog):
    """logrotate moves the file away (or deletes it): the next line goes to a new file at the
    path, not on into the old one nor into a deleted inode. copytruncate cuts it in place: the
    next line starts the file, no hole of NULs before it."""
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(str(path))

    def ids(p: Path) -> list[str]:
        return [json.loads(x)["event_id"] for x in p.read_text().splitlines()]

    sink.emit(jsonl_event(0))
    path.rename(tmp_path / "events.jsonl.1")
    with caplog.at_level(logging.INFO, logger="maskd.jsonl"):
        sink.emit(jsonl_event(1))
        sink.emit(jsonl_event(2))
        assert ids(tmp_path / "events.jsonl.1") == ["id0"] and ids(path) == ["id1", "id2"]
        assert caplog.text.count("the file was moved or deleted (rotated?); writing to a new "
                                 "file now") == 1
        path.unlink()
        sink.emit(jsonl_event(3))
        assert ids(path) == ["id3"]
        path.rename(tmp_path / "events.jsonl.1")
        path.write_text("")  # logrotate's `create`: the new file is there before the next line
        sink.emit(jsonl_event(4))
        assert ids(path) == ["id4"] and "the path names another file" in caplog.text
    shutil.copy(path, tmp_path / "events.jsonl.2")
    os.truncate(path, 0)
    sink.emit(jsonl_event(5))
    assert path.read_bytes().startswith(b"{") and ids(path) == ["id5"]
    # A path that cannot be opened again holds the lines back, as a full disk does.
    path.unlink()
    path.mkdir()
    sink.emit(jsonl_event(6))
    assert sink.faults() == [f"jsonl {path}: Is a directory, 1 event line(s) waiting"]
    path.rmdir()
    sink.emit(jsonl_event(7))
    assert ids(path) == ["id6", "id7"]
    assert sink.flush(0.1) is True and sink.faults() == [] and sink.failed == 0
    sink.close()


def test_jsonl_stdout_sink():
    code = (
        "from maskd.jsonl import JsonlSink\n"
        "from maskd.types import ViolationEvent\n"
        "s = JsonlSink('-')\n"
        "s.emit(ViolationEvent('start', 'x', 0, 'cam', 1, 1.0, 0.9, 0.9, (0, 0, 1, 1)))\n"
        "s.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["event_id"] == "x"


def stdout_sink_process(code: str) -> subprocess.Popen:
    """A Python process running ``code`` with a JSON lines sink ``s`` on its own standard
    output (``emit(i)`` sends event i), its stdin, stdout and stderr pipes of this test's."""
    head = ("import fcntl, logging, sys, threading\n"
            "from maskd.jsonl import JsonlSink\n"
            "from maskd.types import ViolationEvent\n"
            "def emit(i):\n"
            "    s.emit(ViolationEvent('start', str(i), 0, 'cam', 1, 1.0, 0.9, 0.9, (0, 0, 1, 1)))\n")
    return subprocess.Popen([sys.executable, "-c", head + code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_jsonl_stdout_whose_reader_is_gone_says_so_once_not_per_event():
    """`maskd run --jsonl - | consumer` whose consumer died: every line after is refused for
    good. Was: an ERROR line per event for as long as maskd ran. Now one line (then once a
    minute) with the count lost, a fault while it lasts, and no 'writing again' at the stop."""
    p = stdout_sink_process(
        "logging.basicConfig(level=logging.INFO, stream=sys.stderr)\n"
        "s = JsonlSink('-')\n"
        "sys.stdin.read()  # the reader is gone once this ends\n"
        "for i in range(5):\n"
        "    emit(i)\n"
        "print('FAULTS', s.faults(), s.failed, s.flush(1.0), file=sys.stderr)\n"
        "s.close()\n"
        "sys.stdout = None  # what Python would still flush at exit fails as before: not ours\n"
    )
    assert p.stdout is not None
    p.stdout.close()
    _, err = p.communicate("", timeout=60)
    assert p.returncode == 0, err
    said = [ln for ln in err.splitlines() if "maskd.jsonl" in ln]
    assert len(said) == 1 and "cannot write to standard output: Broken pipe" in said[0], err
    assert "1 event line(s) lost so far" in said[0], err
    assert "FAULTS [\"jsonl -: Broken pipe" in err and "5 event line(s) lost\"] 5 False" in err, err
    assert "writing again" not in err and "Traceback" not in err, err


def test_stdout_piped_to_a_reader_that_stops_reading_never_blocks_the_loop():
    """`maskd run --jsonl - | consumer` whose consumer hangs (reads nothing, keeps the pipe):
    once the pipe was full, the write blocked the camera's loop for good, as a named pipe's
    did (no detection, no MQTT alarm, no stop). Now stdout's pipe is written without blocking
    as the named pipe is: the lines wait and follow whole and in order, the stop waiting for
    the reader up to its timeout."""
    p = stdout_sink_process(
        "fcntl.fcntl(1, 1031, 4096)  # F_SETPIPE_SZ: the smallest pipe, full after a few lines\n"
        "s = JsonlSink('-')\n"
        "done = threading.Event()\n"
        "def emit_all():\n"
        "    for i in range(60):\n"
        "        emit(i)\n"
        "    done.set()\n"
        "threading.Thread(target=emit_all, daemon=True).start()\n"
        "print('EMITTED', done.wait(5), s.faults(), file=sys.stderr, flush=True)\n"
        "sys.stdin.readline()  # the reader reads again from now on\n"
        "print('FLUSHED', s.flush(60), s.faults(), file=sys.stderr, flush=True)\n"
        "s.close()\n"
    )
    assert p.stderr is not None
    said = ""
    deadline = time.monotonic() + 60
    # a loop blocked in the write, holding the lock, says nothing; the EMITTED line is waited
    # for whole: print() may send it in pieces, and a read took "EMITTED" alone (CI, loaded)
    while "\n" not in said.partition("EMITTED")[2]:
        if not select.select([p.stderr], [], [], max(0.0, deadline - time.monotonic()))[0]:
            p.kill()
            pytest.fail("the sink blocked writing to a full stdout pipe: " + said)
        # the descriptor, not the buffered file: a readline() that took in both lines at once
        # left EMITTED in the file's buffer, where select() never sees it (a CI failure)
        got = os.read(p.stderr.fileno(), 65536).decode()
        if not got:
            pytest.fail(f"the process ended (exit {p.wait()}) before EMITTED: " + said)
        said += got
    out, err = p.communicate("\n", timeout=120)
    first = said.split("EMITTED", 1)[1]
    assert first.startswith(" True"), said + err
    assert "the pipe is full: its reader has stopped reading" in first and "waiting" in first
    assert p.returncode == 0, err
    assert "FLUSHED True []" in err, err
    assert [json.loads(x)["event_id"] for x in out.splitlines()] == [str(i) for i in range(60)]


def test_jsonl_to_a_closed_stdout_is_refused_at_the_start():
    """`maskd run --jsonl - >&-`: Python makes sys.stdout None, and every event was an
    AttributeError traceback, lost, with exit 0. Now `run` stops at the start, as for a
    jsonl.path it cannot write."""
    r = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", sys.executable, "-m", "maskd", "run",
                        "--source", "demo", "--max-frames", "2", "--detector", "blazeface",
                        "--jsonl", "-"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 78, r.stderr
    assert "maskd run: jsonl.path -: cannot write there: standard output is closed" in r.stderr
    assert "Traceback" not in r.stderr


def test_jsonl_path_dev_stdout_on_the_journals_socket_is_refused_as_a_socket(tmp_path):
    """`jsonl.path: /dev/stdout` in the service, whose output is the journal's socket: open()
    says ENXIO, and `run` waited 5 s for a reader and stopped with 'a pipe nobody reads (start
    its reader first)'. Now at once, saying it is a socket and that `-` writes to standard
    output; check-config says the same of a socket on the disk."""
    import socket

    ours, theirs = socket.socketpair()
    with ours, theirs:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "maskd", "run", "--source", "demo",
                            "--max-frames", "2", "--detector", "blazeface", "--jsonl",
                            "/dev/stdout"], stdout=theirs, stderr=subprocess.PIPE, text=True,
                           timeout=120)
        took = time.monotonic() - t0
    words = "cannot write there: a socket, which cannot be opened as a file (standard output"
    assert r.returncode == 78 and f"jsonl.path /dev/stdout: {words}" in r.stderr, r.stderr
    assert "a pipe nobody reads" not in r.stderr and took < 5, took
    with socket.socket(socket.AF_UNIX) as listening:
        listening.bind(str(tmp_path / "s"))
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"jsonl: {{path: {tmp_path / 's'}}}\n")
        c = subprocess.run([sys.executable, "-m", "maskd", "check-config", str(cfg)],
                           capture_output=True, text=True, timeout=60)
    assert c.returncode == 78 and words in c.stdout + c.stderr, c.stdout + c.stderr


def test_a_jsonl_file_at_exactly_its_cap_is_moved_by_the_next_line_only(tmp_path):
    """max_mb is what the file may hold: a line that brings it to exactly the cap goes on into
    it, and only the next one, which would take it past, begins a new file."""
    line = len(json.dumps(event_fields(jsonl_event(0)))) + 1  # every idN of one digit: one length
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(str(path), max_mb=3 * line / (1024 * 1024))
    for i in range(3):
        sink.emit(jsonl_event(i))
    assert path.stat().st_size == 3 * line and not path.with_name("events.jsonl.old").exists()
    sink.emit(jsonl_event(3))
    sink.close()
    ids = [[json.loads(x)["event_id"] for x in p.read_text().splitlines()]
           for p in (path.with_name("events.jsonl.old"), path)]
    assert ids == [["id0", "id1", "id2"], ["id3"]]


def test_a_disk_full_again_within_the_minute_is_said_and_shown_at_once(tmp_path, caplog):
    """The lines were written again after a full disk, and the disk filled again a moment
    later: that second fault is a new one, said at once and shown in faults() (the status
    line, MQTT's problem sensor), not hidden for the rest of the first one's minute."""
    from mqtt_broker import fill_disk, small_disk

    with small_disk(tmp_path / "disk") as disk:
        path = disk / "events.jsonl"
        sink = JsonlSink(str(path))
        sink.emit(jsonl_event(0))
        with caplog.at_level(logging.INFO, logger="maskd.jsonl"):
            filler = fill_disk(disk)
            for i in range(1, 40):  # past the file's last page
                sink.emit(jsonl_event(i))
            assert sink.faults() and caplog.text.count("cannot write") == 1
            filler.unlink()
            sink.emit(jsonl_event(40))
            assert sink.faults() == [] and "writing again" in caplog.text
            fill_disk(disk)
            for i in range(41, 80):
                sink.emit(jsonl_event(i))
            assert caplog.text.count("cannot write") == 2, caplog.text
            waiting = sink.faults()
        assert waiting and waiting[0].startswith(f"jsonl {path}: No space left on device, ")
        sink.close()


def test_flush_is_false_once_lines_were_dropped_even_when_the_rest_got_written(tmp_path,
                                                                                monkeypatch):
    """flush promises 'every accepted line written': lines dropped beyond MEMORY_MAX while the
    disk was full are not, even once the disk has room and the rest went."""
    from mqtt_broker import fill_disk, small_disk

    import maskd.jsonl

    monkeypatch.setattr(maskd.jsonl, "MEMORY_MAX", 3)
    with small_disk(tmp_path / "disk") as disk:
        filler = fill_disk(disk)
        sink = JsonlSink(str(disk / "events.jsonl"))
        for i in range(5):
            sink.emit(jsonl_event(i))
        filler.unlink()
        assert sink.flush(0.1) is False and sink.failed == 2
        assert sink.faults() == []  # nothing waits any more: written, or lost and counted
        sink.close()
        assert [json.loads(x)["event_id"] for x in (disk / "events.jsonl").read_text().splitlines()] == [
            "id2", "id3", "id4"]


def test_a_line_longer_than_the_pipe_takes_at_once_reaches_the_reader_whole(tmp_path,
                                                                          monkeypatch):
    """A pipe takes a line over PIPE_BUF (4 KiB) in parts: the rest waits at the head, and the
    reader gets every line whole, once, newline and all, even when lines are dropped beyond
    MEMORY_MAX meanwhile (the rest of the line begun goes first, never the rest itself); after
    it, the oldest waiting line is the one dropped again."""
    import dataclasses
    import fcntl

    import maskd.jsonl

    monkeypatch.setattr(maskd.jsonl, "MEMORY_MAX", 2)
    sink, fd = sink_on_a_fifo(tmp_path)
    fcntl.fcntl(fd, 1031, 4096)  # F_SETPIPE_SZ: one page
    big = dataclasses.replace(jsonl_event(0), event_id="big")
    pad = 4097 - (len(json.dumps(event_fields(big))) + 1)
    big = dataclasses.replace(big, event_id="big" + "x" * pad)  # the pipe takes all but the newline

    def read_all() -> list[str]:
        got = b""
        os.set_blocking(fd, False)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # a sink that writes a line twice never ends
            try:
                chunk = os.read(fd, 1 << 16)
            except BlockingIOError:
                chunk = b""
            got += chunk
            if not chunk:
                sink.flush(0.1)  # what waits goes into the room just made
                if not sink.faults():
                    break
        with contextlib.suppress(BlockingIOError):
            got += os.read(fd, 1 << 16)
        assert got.endswith(b"\n")
        return [json.loads(x)["event_id"] for x in got.decode().splitlines()]

    sink.emit(big)  # 4096 bytes go, its newline waits
    sink.emit(jsonl_event(1))  # waits behind it: the pipe is full
    sink.emit(jsonl_event(2))  # one too many: id1 goes, not the newline of the line begun
    assert sink.failed == 1
    assert read_all() == [big.event_id, "id2"]
    for i in range(3, 40):  # whole lines only now (each under PIPE_BUF): the oldest go
        sink.emit(jsonl_event(i))
    ids = read_all()
    assert ids[-2:] == ["id38", "id39"] and ids[:-2] == [f"id{i}" for i in range(3, len(ids) + 1)]
    sink.close()
    os.close(fd)


def test_a_jsonl_file_capped_many_times_holds_no_moved_file_open(tmp_path):
    """Each roll-over and each rotation followed opens the path anew: the file before is closed,
    or months of roll-overs leak a descriptor each and keep deleted halves on the card."""
    path = tmp_path / "events.jsonl"
    before = len(os.listdir("/proc/self/fd"))
    sink = JsonlSink(str(path), max_mb=1 / 1024)  # 1 KiB: a roll-over every few lines
    for i in range(100):
        sink.emit(jsonl_event(i))
        if i % 25 == 0:
            path.rename(tmp_path / "events.jsonl.1")  # and logrotate now and then
    assert len(os.listdir("/proc/self/fd")) == before + 1  # the one file it writes
    sink.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_an_empty_jsonl_file_is_not_moved_over_the_older_half_by_a_line_over_the_cap(tmp_path):
    """A line bigger than max_mb goes whole into an empty file: moving the empty file to
    PATH.old would delete the older half kept there for nothing."""
    path = tmp_path / "events.jsonl"
    old = tmp_path / "events.jsonl.old"
    old.write_text("the older half\n")
    sink = JsonlSink(str(path), max_mb=10 / (1024 * 1024))  # 10 bytes: under any line
    sink.emit(jsonl_event(0))
    assert old.read_text() == "the older half\n"
    sink.emit(jsonl_event(1))
    sink.close()
    assert [json.loads(x)["event_id"] for x in old.read_text().splitlines()] == ["id0"]
    assert [json.loads(x)["event_id"] for x in path.read_text().splitlines()] == ["id1"]


def test_a_file_moved_by_another_process_after_this_ones_look_is_not_moved_again(tmp_path,
                                                                               monkeypatch):
    """Two processes at the cap of one file: the other moves it (and begins a new one) while
    this one waits for the file's lock; this one must then leave the path alone, or it moves
    the other's new file over PATH.old and the older half is deleted a whole cap early."""
    import maskd.jsonl as jsonl_mod

    path = tmp_path / "events.jsonl"
    first, second, n = two_sinks_at_the_cap(path)
    flock = jsonl_mod.fcntl.flock
    calls = []

    def meanwhile(fd, op):
        """The other process reaches the cap and moves the file before this one's lock."""
        if not calls:
            calls.append(fd)
            first.emit(jsonl_event(n + 1))
        return flock(fd, op)

    monkeypatch.setattr(jsonl_mod.fcntl, "flock", meanwhile)
    second.emit(jsonl_event(n))
    monkeypatch.setattr(jsonl_mod.fcntl, "flock", flock)
    assert_both_halves_kept(first, second, path, n)


def test_two_processes_appending_to_one_jsonl_file_never_write_over_each_others_lines(
        tmp_path, monkeypatch):
    """A maskd per camera, one jsonl.path: each line is appended at the end the file has when
    it is written (O_APPEND), even when the other process's line lands between this one's look
    at the end and its write."""
    import maskd.files

    path = tmp_path / "events.jsonl"
    first, second = JsonlSink(str(path), max_mb=None), JsonlSink(str(path), max_mb=None)
    first.emit(jsonl_event(0))
    reserve = maskd.files.reserve
    done = []

    def meanwhile(fd, offset, length):
        if not done:
            done.append(fd)
            second.emit(jsonl_event(2))
        reserve(fd, offset, length)

    monkeypatch.setattr(maskd.files, "reserve", meanwhile)
    first.emit(jsonl_event(1))
    monkeypatch.setattr(maskd.files, "reserve", reserve)
    first.close()
    second.close()
    assert sorted(json.loads(x)["event_id"] for x in path.read_text().splitlines()) == [
        "id0", "id1", "id2"]


def test_a_jsonl_file_with_standard_output_closed_is_written(tmp_path, monkeypatch):
    """`maskd run >&-` with jsonl.path a file: only `-` needs standard output."""
    monkeypatch.setattr(sys, "stdout", None)
    path = tmp_path / "events.jsonl"
    sink = JsonlSink(str(path))
    sink.emit(jsonl_event(0))
    sink.close()
    assert json.loads(path.read_text())["event_id"] == "id0"


def test_a_relative_chain_of_links_is_capped_where_it_ends(tmp_path):
    """`jsonl.path` a relative link to another relative link (`/etc/maskd/events.jsonl ->
    ../../var/log/...`): each is read from its own folder, to the file at the end."""
    for d in ("etc", "log", "stick"):
        (tmp_path / d).mkdir()
    (tmp_path / "log" / "events.jsonl").symlink_to("../stick/events.jsonl")
    (tmp_path / "etc" / "events.jsonl").symlink_to("../log/events.jsonl")
    sink = JsonlSink(str(tmp_path / "etc" / "events.jsonl"), max_mb=1 / 1024)
    for i in range(50):
        sink.emit(jsonl_event(i))
    sink.close()
    assert all((tmp_path / d / "events.jsonl").is_symlink() for d in ("etc", "log"))
    assert [p.name for p in (tmp_path / "log").iterdir()] == ["events.jsonl"]
    stick = tmp_path / "stick"
    assert sorted(p.name for p in stick.iterdir()) == ["events.jsonl", "events.jsonl.old"]
    kept = [json.loads(x)["event_id"] for f in ("events.jsonl.old", "events.jsonl")
            for x in (stick / f).read_text().splitlines()]
    assert kept == [f"id{i}" for i in range(50 - len(kept), 50)] and len(kept) > 3


class FlakyStdout:
    """A standard output that refuses lines while ``broken``."""

    def __init__(self) -> None:
        self.broken, self.lines = False, []

    def write(self, line: str) -> None:
        if self.broken:
            raise BrokenPipeError(32, "Broken pipe")
        self.lines.append(line)

    def flush(self) -> None:
        pass


def test_stdout_back_again_says_how_many_lines_were_lost_and_since_when(monkeypatch, caplog):
    """Standard output keeps nothing: when it takes lines again, the one line says how many
    were lost, and since when it failed: the first refusal, not the latest look at it."""
    import maskd.jsonl
    from maskd.lograte import Throttle

    out = FlakyStdout()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(maskd.jsonl, "Throttle", lambda: Throttle(0.0))  # every look said
    sink = JsonlSink("-")
    sink.emit(jsonl_event(0))
    out.broken = True
    first = time.time()
    sink.emit(jsonl_event(1))
    time.sleep(1.1)
    sink.emit(jsonl_event(2))
    out.broken = False
    with caplog.at_level(logging.WARNING, logger="maskd.jsonl"):
        sink.emit(jsonl_event(3))
    [said] = [r.getMessage() for r in caplog.records if "writing again" in r.getMessage()]
    since = {local_iso(t) for t in (first, first + 0.2)}  # with its date: a fault may last days
    assert any(f"failed since {s}:" in said for s in since), said
    assert said.endswith("; 2 event line(s) lost)"), said
    assert len(out.lines) == 2


def test_a_file_back_again_says_since_when_it_failed(tmp_path, monkeypatch, caplog):
    """The file's 'writing again' names when the fault began, however often it was said, with
    its date: a card full for two days said "failed since 03:45:48", which read as hours."""
    from mqtt_broker import fill_disk, small_disk

    import maskd.jsonl
    from maskd.lograte import Throttle

    monkeypatch.setattr(maskd.jsonl, "Throttle", lambda: Throttle(0.0))
    with small_disk(tmp_path / "disk") as disk:
        sink = JsonlSink(str(disk / "events.jsonl"))
        filler = fill_disk(disk)
        first = time.time()
        for i in range(30):
            sink.emit(jsonl_event(i))
        time.sleep(1.1)
        sink.emit(jsonl_event(30))
        filler.unlink()
        with caplog.at_level(logging.WARNING, logger="maskd.jsonl"):
            sink.emit(jsonl_event(31))
        sink.close()
    [said] = [r.getMessage() for r in caplog.records if "writing again" in r.getMessage()]
    since = {local_iso(t) for t in (first, first + 0.2)}  # with its date: a fault may last days
    assert any(f"failed since {s}:" in said for s in since), said


def look(seed):
    """A face crop of its own colours: hair, skin and chin bands differ from person to person."""
    rng = np.random.default_rng(seed)
    crop = np.empty((60, 60, 3), np.uint8)
    for band in range(3):
        crop[band * 20:(band + 1) * 20] = rng.integers(0, 256, 3)
    return crop + rng.integers(0, 12, crop.shape).astype(np.uint8)  # a little sensor noise


def test_appearance_tells_people_apart_and_is_stable_for_one_person():
    from maskd.tracking import appearance, similarity

    a, b = look(1), look(2)
    assert similarity(appearance(a), appearance(a)) == pytest.approx(1.0, abs=1e-6)
    jittered = np.roll(a, 2, axis=(0, 1))  # the same face, box a little off
    assert similarity(appearance(a), appearance(jittered)) > 0.9
    assert similarity(appearance(a), appearance(b)) < 0.5
    assert similarity(None, appearance(a)) is None


def test_a_queue_at_one_spot_is_one_event_per_person():
    """Different people, each 2 s at the same place, 1 s apart: one start each, although
    re-attach and the cooldown would have merged them by place alone."""
    s = Scene()
    for person in range(5):
        s.frames(20, (BOX, 0.9, look(person)))
        s.frames(10)
    starts = [e for e in s.events if e.event_type == "start"]
    assert len(starts) == 5 and len({e.event_id for e in starts}) == 5


def test_the_same_person_lost_and_found_stays_one_event():
    s = Scene()
    s.frames(20, (BOX, 0.9, look(7)))
    s.frames(10)  # lost for 1 s (the track is dropped after 5 frames)
    s.frames(20, (BOX, 0.9, look(7)))
    assert [e.event_type for e in s.events].count("start") == 1
    # Place alone (similarity 0) keeps the old rule: different looks, still one event.
    s = Scene(CFG.model_copy(update={"same_person_similarity": 0.0}))
    for person in range(3):
        s.frames(20, (BOX, 0.9, look(person)))
        s.frames(10)
    assert [e.event_type for e in s.events].count("start") == 1


def test_no_cooldown_after_gone():
    """The cooldown is for mask fiddling: after a person has gone, whoever is confirmed at the
    same spot next starts an event at once."""
    s = Scene()
    s.frames(10, (BOX, 0.9))
    s.frames(25)  # gone: ends 2 s after last seen
    assert s.kinds()[-1] == ("end", "ev1", "gone")
    t_end = s.seq / FPS
    s.frames(10, (BOX, 0.9))
    starts = [e for e in s.events if e.event_type == "start"]
    assert len(starts) == 2 and starts[1].start_time - t_end < 1.0


def test_a_person_hidden_while_walking_past_keeps_the_event():
    """Walking right at 100 px/s, hidden for 1.5 s (150 px, 1.5 box widths, too far for 'near'
    the last box): found again where the walk was heading, so one event, not two."""
    s = Scene()

    def box_at(i):
        x = 100 + 10 * i  # 10 px per frame at 10 fps
        return (x, 100, x + 100, 200)

    for i in range(20):
        s.frame((box_at(i), 0.9, look(3)))
    s.frames(15)  # hidden; the track is dropped after 5 frames, the event is kept for 2 s
    for i in range(35, 50):
        s.frame((box_at(i), 0.9, look(3)))
    assert [e.event_type for e in s.events].count("start") == 1
    # Someone else coming out at that place is still someone else.
    s2 = Scene()
    for i in range(20):
        s2.frame((box_at(i), 0.9, look(3)))
    s2.frames(15)
    for i in range(35, 50):
        s2.frame((box_at(i), 0.9, look(4)))
    assert [e.event_type for e in s2.events].count("start") == 2


def test_appearance_with_features_is_the_mean_of_both_similarities():
    from maskd.tracking import appearance, colour_layout, similarity

    a, b = look(1), look(2)
    rng = np.random.default_rng(5)
    fa, fb = rng.random(1280).astype(np.float32), rng.random(1280).astype(np.float32)
    da, db = appearance(a, fa), appearance(b, 3 * fb)  # the features' scale does not matter
    assert np.linalg.norm(da) == pytest.approx(1.0, abs=1e-6)
    cos = float(fa @ fb / np.linalg.norm(fa) / np.linalg.norm(fb))
    colour = similarity(colour_layout(a), colour_layout(b))
    assert similarity(da, db) == pytest.approx((colour + cos) / 2, abs=1e-5)
    assert similarity(da, appearance(a)) is None  # a colour-only look is of another kind
    blank = appearance(a, np.zeros(1280, np.float32))  # no features to go by: never a merge
    assert np.isfinite(blank).all() and similarity(blank, da) == pytest.approx(
        similarity(colour_layout(a), colour_layout(a)) / 2, abs=1e-5)


def test_observe_starts_over_when_the_kind_of_look_changes():
    from maskd.tracking import appearance

    tracker = Tracker(CFG)
    (t,) = tracker.match([BOX], 0, 0.0)
    tracker.observe(t, look(1))
    tracker.observe(t, look(1), np.ones(1280, np.float32))
    np.testing.assert_allclose(t.appearance, appearance(look(1), np.ones(1280, np.float32)))


@pytest.mark.shared
def test_two_queued_people_the_colours_merge_are_told_apart_by_the_features(scenes_dir, default_model):
    """Two different people of the select queue (seed 1) that the colour layout alone takes for
    one at today's threshold (round twenty-three): with the classifier's features they differ."""
    import cv2

    from maskd.classifier import Classifier
    from maskd.geometry import crop_face
    from maskd.tracking import appearance, colour_layout, similarity
    from tools.eval_scenes import load_scene

    clf = Classifier.open(default_model, threads=1)
    looks = []
    for stem, box in (("maksssksksss537", (95, 177, 195, 295)), ("maksssksksss51", (114, 159, 213, 286))):
        scene = load_scene(scenes_dir / "annotations" / f"{stem}.xml", scenes_dir / "images")
        assert any(np.allclose(b, box) for b in scene.boxes)  # the annotated, unmasked face
        crop = crop_face(cv2.imread(str(scene.image)), tuple(map(float, box)), 0.15)
        _, feats = clf.predict_embedded([np.ascontiguousarray(crop[:, :, ::-1])])
        looks.append((colour_layout(crop), appearance(crop, feats[0])))
    threshold = TrackingConfig().same_person_similarity
    assert similarity(looks[0][0], looks[1][0]) >= threshold
    assert similarity(looks[0][1], looks[1][1]) < threshold - 0.05


def test_a_file_source_that_ended_keeps_the_stats_and_the_jsonl_retries_going(tmp_path):
    """A file source that ended idles until a signal: its stats must go on (say ended, fps 0),
    not leave the last running numbers for MQTT to repeat with a fresh time, and JSON lines a
    full disk held back must still be written once there is room (on_stats retries them)."""
    import threading

    import cv2
    from loop_parts import RecordingSink, service_for
    from mqtt_broker import fill_disk, small_disk

    from maskd.config import parse_config
    from maskd.sources import open_source

    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        cv2.imwrite(str(images / f"{i}.jpg"), np.full((120, 160, 3), 90, np.uint8))
    cfg = parse_config({"mqtt": {"stats_interval_s": 1.0},
                        "source": {"kind": "images", "uri": str(images), "fps": 30}})
    with small_disk(tmp_path / "disk") as disk:
        jsonl = JsonlSink(str(disk / "events.jsonl"))
        filler = fill_disk(disk)
        jsonl.emit(jsonl_event(0))  # waits for room
        assert jsonl.faults()
        stats = RecordingSink()
        loop = service_for(open_source(cfg.source), sinks=[stats, jsonl], cfg=cfg)
        thread = threading.Thread(target=loop.run, kwargs={"flush_timeout": 1}, daemon=True)
        thread.start()
        deadline = time.monotonic() + 60
        while loop.frames < 3:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        filler.unlink()
        time.sleep(3.0)  # idle after the last image: more than two stats intervals
        assert jsonl.faults() == []
        loop.stop()
        thread.join(30)
    ended = [s for s in stats.stats if s["source_ended"]]
    assert len(ended) >= 3, ended
    assert all(s["frames"] == 3 and s["fps"] == 0 for s in ended[1:]), ended


class Timed:
    """Tracker + Violations driven at explicit frame times (exact boundaries, no 1/10 s)."""

    def __init__(self, cfg: TrackingConfig) -> None:
        counter = itertools.count(1)
        self.tracker = Tracker(cfg)
        self.violations = Violations(cfg, "door", new_id=lambda: f"ev{next(counter)}")
        self.events = []
        self.seq = 0

    def at(self, t, *faces):
        """faces: (box, no_mask) or (box, no_mask, crop); returns this frame's events."""
        tracks = self.tracker.match([tuple(map(float, f[0])) for f in faces], self.seq, t)
        for tr, f in zip(tracks, faces, strict=True):
            self.tracker.add_score(tr, f[1])
            if len(f) > 2:
                self.tracker.observe(tr, f[2])
        new = self.violations.update(self.tracker.tracks, t, self.seq, (640, 480))
        self.events += new
        self.seq += 1
        return [(e.event_type, e.event_id, e.end_reason) for e in new]


QUICK = TrackingConfig(window=1, min_votes=1, min_span_s=0.0, start_threshold=0.7,
                       release_threshold=0.4, max_missed_frames=2, update_interval_s=2.0,
                       end_after_s=10.0, cooldown_s=5.0)


def test_the_update_interval_and_the_cooldown_end_exactly_on_time():
    """An update is due update_interval_s after the last message (not later); the cooldown
    lasts cooldown_s after a masked end (not longer)."""
    s = Timed(QUICK)
    assert s.at(0.0, (BOX, 0.8)) == [("start", "ev1", None)]
    assert s.at(1.0, (BOX, 0.9)) == []  # news, but 1 s after the start
    assert s.at(2.0, (BOX, 0.9)) == [("update", "ev1", None)]
    assert s.at(3.0, (BOX, 0.1)) == [("end", "ev1", "masked")]
    assert [s.at(float(t), (BOX, 0.9)) for t in range(4, 8)] == [[]] * 4  # cooldown
    assert s.at(8.0, (BOX, 0.9)) == [("start", "ev2", None)]
    assert s.violations.started == 2


def test_the_cooldown_holds_for_the_same_person_on_a_new_track():
    """The mask went on (masked end), the tracker lost the face, and the same person (same
    place and size; no look to tell) was found on a new track: still their cooldown."""
    s = Timed(QUICK)
    s.at(0.0, (BOX, 0.8))
    s.at(1.0, (BOX, 0.1))  # masked
    for t in (1.5, 2.0, 2.5):
        s.at(t)  # the track is dropped
    assert s.tracker.tracks == []
    assert [s.at(t, (BOX, 0.9)) for t in (3.0, 4.0, 5.0)] == [[]] * 3
    assert s.at(6.0, (BOX, 0.9)) == [("start", "ev2", None)]


def test_a_much_smaller_face_at_the_spot_is_not_the_lost_person():
    """Re-attach needs the same size as well as the same place: a face less than half the
    size (someone further back) gets its own event."""
    s = Timed(QUICK)
    s.at(0.0, (BOX, 0.8))
    for t in (1.0, 2.0, 3.0):
        s.at(t)  # ev1's track is dropped; the event waits end_after_s
    small = (135, 135, 165, 165)  # same centre, 30 px against 100 px
    assert s.at(4.0, (small, 0.9)) == [("start", "ev2", None)]
    assert [v.event_id for v in s.violations._open] == ["ev1", "ev2"]


def test_a_picture_never_starts_an_event_and_a_person_does_once_they_move():
    cfg = QUICK.model_copy(update={"static_after_s": 30.0})
    s = Timed(cfg)
    assert [s.at(float(t), (BOX, 0.9)) for t in range(3)] == [[]] * 3
    assert s.tracker.tracks[0].violating and not s.tracker.tracks[0].moved
    assert s.at(3.0, ((130, 100, 230, 200), 0.9)) == [("start", "ev1", None)]


def test_two_people_side_by_side_keep_their_own_events():
    """B stands next to A (near by place, no look to tell them apart): B's confirmation must
    not take A's event while A is still in view, nor A's track keep B's event once B left."""
    a, b = BOX, (180, 100, 280, 200)  # centres 80 px apart: 'near'; overlap too small to match
    cfg = QUICK.model_copy(update={"end_after_s": 2.0})
    s = Timed(cfg)
    s.at(0.0, (a, 0.8))
    s.at(1.0, (a, 0.8), (b, 0.8))
    assert [(e.event_type, e.event_id, e.track_id) for e in s.events] == [
        ("start", "ev1", 1), ("start", "ev2", 2)]
    assert s.tracker.tracks[0].violating  # A's evidence was not taken away
    for t in (2.0, 3.0, 4.0, 5.0):
        s.at(t, (a, 0.8))  # B left; A stays
    assert ("end", "ev2", "gone") in [(e.event_type, e.event_id, e.end_reason) for e in s.events]
    assert [(v.event_id, v.track_id) for v in s.violations._open] == [("ev1", 1)]
    assert s.violations.started == 2


def test_re_attach_takes_the_event_last_seen():
    """Two lost events both near a newly confirmed track: the one seen last is taken over."""
    a, c, b = BOX, (260, 100, 360, 200), (180, 100, 280, 200)  # b is near both, a and c apart
    s = Timed(QUICK)
    s.at(0.0, (a, 0.8), (c, 0.8))
    s.at(1.0, (c, 0.8))  # A gone from view first
    for t in (2.0, 3.0, 4.0):
        s.at(t)
    assert s.tracker.tracks == [] and s.violations.active == 2
    s.at(5.0, (b, 0.8))
    assert [(v.event_id, v.track_id) for v in s.violations._open] == [("ev1", 1), ("ev2", 3)]


def test_an_event_follows_its_tracks_look_and_velocity():
    """The event keeps the track's latest look (the cooldown and re-attach compare it) and
    velocity (where a hidden walker is expected): from the start and on every frame seen."""
    s = Timed(QUICK.model_copy(update={"same_person_similarity": 0.0}))
    for i in range(3):  # walking, masked
        s.at(i / 10, ((100 + 8 * i, 100, 200 + 8 * i, 200), 0.1, look(1)))
    s.at(0.3, ((124, 100, 224, 200), 0.8, look(1)))  # confirmed while walking
    (v,) = s.violations._open
    (t,) = s.tracker.tracks
    assert v.appearance is not None and np.array_equal(v.appearance, t.appearance)
    assert t.velocity[0] > 0 and v.velocity == t.velocity
    for i in range(4, 9):
        s.at(i / 10, ((100 + 8 * i, 100, 200 + 8 * i, 200), 0.8, look(2)))
    assert np.array_equal(v.appearance, t.appearance)
    assert t.velocity[0] > 0 and v.velocity == t.velocity


def test_rescale_moves_the_boxes_of_missing_and_ended_violations():
    s = Timed(QUICK)
    s.at(0.0, (BOX, 0.8), ((400, 100, 500, 200), 0.8))
    s.at(1.0, ((400, 100, 500, 200), 0.1))  # ev2 ended masked; ev1's track missed
    v = s.violations._open[0]
    v.velocity = (10.0, 20.0)
    s.violations.rescale(0.5, 0.25)
    assert v.box == (50.0, 25.0, 100.0, 50.0) and v.velocity == (5.0, 5.0)
    assert s.violations._recent[0].box == (200.0, 25.0, 250.0, 50.0)


def test_an_end_is_never_before_its_start_plus_the_rounded_duration():
    s = Timed(QUICK)
    s.at(0.0004, (BOX, 0.8))
    s.at(1.0, (BOX, 0.1))
    start, end = s.events
    assert end.duration_s == 1.0
    assert end.end_time >= start.start_time + end.duration_s


def test_a_clock_step_moves_the_cooldown_with_it():
    """A forward step of the wall clock during a cooldown does not cut it short."""
    s = Timed(QUICK)
    s.at(0.0, (BOX, 0.8))
    s.at(1.0, (BOX, 0.1))  # masked at 1 s: cooldown to 6 s
    s.tracker.shift(100.0)
    s.violations.shift(100.0)
    assert s.at(102.0, (BOX, 0.9)) == []  # 1 s after the end by the time that passed
    assert s.at(106.0, (BOX, 0.9)) == [("start", "ev2", None)]


def test_end_all_gone_ends_each_at_its_last_sighting():
    s = Timed(QUICK)
    s.at(5.0, (BOX, 0.8))
    s.at(6.0, (BOX, 0.8))
    (end,) = s.violations.end_all_gone()
    assert (end.end_reason, end.end_time, end.duration_s) == ("gone", 6.0, 1.0)


def test_a_box_reaching_past_the_frame_is_sent_inside_it():
    """Detector boxes may reach past the frame's edges; a message's box is normalised to 0..1."""
    s = Timed(QUICK)
    s.at(0.0, ((-20, -10, 100, 100), 0.8), ((560, 400, 700, 520), 0.8))
    assert [e.box for e in s.events] == [(0.0, 0.0, 100 / 640, 100 / 480), (560 / 640, 400 / 480, 1.0, 1.0)]


def test_a_duration_is_never_negative():
    """A shutdown stamped before the start (the wall clock stepped back and no frame came since
    to notice it) says 0 s, not a negative duration."""
    s = Timed(QUICK)
    s.at(100.0, (BOX, 0.8))
    (end,) = s.violations.close_all(99.0)
    assert end.duration_s == 0.0 and end.end_time >= end.start_time


def test_a_passing_eagain_on_the_jsonl_file_is_tried_again_not_called_a_full_pipe(tmp_path):
    """`maskd run --jsonl FILE` whose first line meets EAGAIN (injected by strace; a network or
    FUSE file system may say it) on a regular file: the write is tried again, no error, every
    line in order (was: an ERROR 'the pipe is full: its reader has stopped reading' for a file,
    the lines held back until the next event)."""
    from test_faults_mqtt import strace_injecting

    strace = strace_injecting()
    path = tmp_path / "events.jsonl"
    r = subprocess.run(
        [strace, "-f", "-qq", "-o", str(tmp_path / "strace.log"), "-e", "trace=write", "-P",
         str(path), "-e", "inject=write:error=EAGAIN:when=1", sys.executable, "-m", "maskd",
         "run", "--source", "demo", "--exit-at-end", "--detector", "blazeface", "--jsonl",
         str(path)], capture_output=True, text=True, timeout=180,
        cwd=Path(__file__).resolve().parent.parent)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "INJECTED" in (tmp_path / "strace.log").read_text(), "the fault met no write"
    assert "jsonl" not in "".join(ln for ln in r.stderr.splitlines(keepends=True)
                                  if " ERROR " in ln or " WARNING " in ln), r.stderr[-3000:]
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [x["event_type"] for x in lines] == ["start", "end"], lines
