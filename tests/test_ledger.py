"""The open violations in state_dir (maskd.ledger) on a real full disk (a 256 KiB tmpfs)."""

from __future__ import annotations

import fcntl
import json
import logging
import threading
import time
from dataclasses import replace

from maskd.ledger import LEDGER_FILE, OpenViolations
from maskd.types import ViolationEvent


def event(event_id: str, event_type: str = "start", seq: int = 0, camera: str = "door"
          ) -> ViolationEvent:
    return ViolationEvent(event_type, event_id, seq, camera, 1, 1_700_000_000.0, 0.9, 0.9,
                          (0.1, 0.1, 0.2, 0.2), end_reason="gone" if event_type == "end" else None)


def test_changes_a_full_disk_held_back_are_written_once_there_is_room(tmp_path, caplog):
    """An end the full disk refused left its start in the file for good: the next start ended
    that violation `restart` a second time. Held in memory, it goes with the next write."""
    from mqtt_broker import fill_disk, small_disk

    with small_disk(tmp_path / "disk") as d:
        ledger = OpenViolations(d)
        ledger.note(event("ended-while-full"))
        ledger.note(event("open-across"))
        filler = fill_disk(d)
        with caplog.at_level(logging.INFO, logger="maskd.ledger"):
            ledger.note(event("ended-while-full", "end", 1))
            ledger.note(event("started-while-full"))
            ledger.note(event("short", "start"))
            ledger.note(event("short", "end", 1))
            filler.unlink()
            ledger.note(event("open-across", "update", 1))
        ends = OpenViolations(d).restart_ends({"door"})
    assert sorted((e.event_id, e.seq) for e in ends) == [("open-across", 2),
                                                          ("started-while-full", 1)]
    assert caplog.text.count("cannot keep the open violations") == 1
    assert "open_violations.json (No space left on device): violations open" in caplog.text
    assert "kept in" in caplog.text.splitlines()[-1] and "again" in caplog.text


def test_a_state_dir_too_long_to_look_up_is_a_warning_not_a_stopped_start(tmp_path, caplog):
    """check-config accepts any state_dir without MQTT (the open violations are kept where they
    can be), but a name too long to look up raised out of the start's first read: `run` stopped
    with exit 78 and a bare '[Errno 36] File name too long'."""
    ledger = OpenViolations(tmp_path / ("d" * 300), ("door",))
    with caplog.at_level(logging.WARNING, logger="maskd.ledger"):
        assert ledger.restart_ends({"door"}) == []
        ledger.note(event("e1"))
        ledger.note(event("e1", "end", 1))
    assert caplog.text.count("cannot keep the open violations") == 1, caplog.text


def test_a_damaged_or_newer_file_is_read_without_stopping_the_start(tmp_path, caplog):
    """Entries that are no objects were a traceback at every start (exit 1, a restart loop);
    an entry with a key this version does not know (a newer maskd's, before a downgrade) was
    skipped, so that violation was never ended, and warned about at every start."""
    ledger = OpenViolations(tmp_path)
    ledger.note(event("newer"))
    entries = json.loads(ledger.path.read_text())  # as note() writes it since 50ec465 ...
    entries["newer"]["zone"] = "till"  # ... and a newer version's extra key
    entries |= {"not-an-object": 5, "a-list": ["x"], "no-box": {"camera": "door", "noted": None},
                "text-seq": {**entries["newer"], "seq": "0"},
                "other-camera": {"camera": "yard"}}
    ledger.path.write_text(json.dumps(entries))
    with caplog.at_level(logging.WARNING, logger="maskd.ledger"):
        ends = OpenViolations(tmp_path).restart_ends({"door"})
        assert [(e.event_id, e.event_type, e.seq, e.end_reason) for e in ends] == [
            ("newer", "end", 1, "restart")]
        assert caplog.text.count("an entry that is no violation removed") == 4
        caplog.clear()
        again = OpenViolations(tmp_path).restart_ends({"door"})  # a start killed before the end
    assert [e.event_id for e in again] == ["newer"] and caplog.text == ""
    assert set(json.loads(ledger.path.read_text())) == {"newer", "other-camera"}


def test_only_this_configs_removed_cameras_are_ended(tmp_path, caplog):
    """A camera removed from a `cameras:` map left its violations open for good. They are
    ended (one INFO line per camera) when an earlier run of this process left them, known by
    a camera the two share; a folder shared with another process without MQTT keeps that
    process's entries; with MQTT (the outbox's lock) every camera this config lacks noted by a
    process that held the outbox too is a removed one, an entry of an older maskd included."""
    OpenViolations(tmp_path, ("back", "front")).note(event("b1", camera="back"))
    OpenViolations(tmp_path, ("back", "front")).note(event("b2", camera="back"))
    OpenViolations(tmp_path, ("yard",)).note(event("y1", camera="yard"))  # another process
    OpenViolations(tmp_path, ("door",), outbox=True).note(event("d1", camera="door"))  # renamed
    entries = json.loads((tmp_path / "open_violations.json").read_text())
    entries["old"] = {**entries["y1"], "camera": "gate", "event_id": "old"}
    del entries["old"]["cameras"], entries["old"]["outbox"]  # noted by a maskd before this one
    (tmp_path / "open_violations.json").write_text(json.dumps(entries))
    ledger = OpenViolations(tmp_path, ("front",))
    with caplog.at_level(logging.INFO, logger="maskd.ledger"):
        ends = ledger.removed_ends({"front"})
    assert [(e.event_id, e.camera, e.event_type, e.seq, e.end_reason) for e in ends] == [
        ("b1", "back", "end", 1, "restart"), ("b2", "back", "end", 1, "restart")]
    assert [r.getMessage() for r in caplog.records] == [
        "camera back is no longer in the config: ending its 2 open violations (reason restart) "
        "and forgetting them"]
    for e in ends:  # the loop notes each end once every sink has it
        ledger.note(e)
    assert set(json.loads(ledger.path.read_text())) == {"y1", "d1", "old"}
    assert ledger.removed_ends({"front"}) == []
    mqtt = OpenViolations(tmp_path, ("front",), outbox=True)
    assert sorted(e.event_id for e in mqtt.removed_ends({"front"})) == ["d1", "old"]


def test_a_start_with_mqtt_leaves_the_entries_of_a_process_without_it_sharing_the_folder(
        tmp_path):
    """The outbox's lock keeps out a second process with MQTT, not one without (JSON lines
    only, state_dir set to the same folder): a start with MQTT took that process's open
    violation for a removed camera's, ended it `restart` in its own sinks while it went on, and
    said its camera was no longer in the config."""
    OpenViolations(tmp_path, ("garage",)).note(event("g1", camera="garage"))  # running now
    assert OpenViolations(tmp_path, ("door",), outbox=True).removed_ends({"door"}) == []
    assert "g1" in json.loads((tmp_path / "open_violations.json").read_text())


def test_a_restart_end_after_a_clock_step_back_is_not_before_its_start(tmp_path):
    """Started on fake-hwclock's time an hour late, noted 40 s on, then NTP stepped the clock
    back and the run was killed: the restart end was dated when last noted, on the new clock,
    an hour before the start it ends."""
    ledger = OpenViolations(tmp_path)
    start = time.time() + 3600.0  # what the late clock said at the start
    ledger.note(replace(event("late"), start_time=start, duration_s=0.0))
    ledger.note(replace(event("late", "update", 1), start_time=start, duration_s=40.0,
                        clock_step_s=-3600.0))
    [end] = OpenViolations(tmp_path).restart_ends({"door"})
    assert end.end_time == start + 40.0 and end.duration_s == 40.0
    assert end.clock_step_s == -3600.0


def test_a_restart_end_is_dated_when_the_violation_was_last_noted(tmp_path):
    """The end a killed run's violation gets is the last moment it was known open (when last
    noted), not its start nor the time of the restart."""
    ledger = OpenViolations(tmp_path)
    before = time.time()
    ledger.note(replace(event("old-record"), duration_s=None))  # an older record: no duration
    after = time.time()
    [end] = OpenViolations(tmp_path).restart_ends({"door"})
    assert before <= end.end_time <= after
    entries = json.loads(ledger.path.read_text())
    entries["old-record"]["noted"] = 1_700_000_100.0  # noted 100 s after its start, long ago
    ledger.path.write_text(json.dumps(entries))
    [end] = OpenViolations(tmp_path).restart_ends({"door"})
    assert end.end_time == 1_700_000_100.0


def test_restart_ends_come_oldest_noted_first_and_without_a_frame(tmp_path):
    """The ends go out in the order the violations were last known open, whatever the file's
    order; and no frame_seq of the killed run, whose frames the new run numbers afresh (a frame
    snapshot would wait for that number and draw a frame of another person)."""
    ledger = OpenViolations(tmp_path)
    ledger.note(replace(event("a"), frame_seq=7))
    ledger.note(event("b"))
    ledger.note(replace(event("a", "update", 1), frame_seq=9))  # a: first in the file, noted last
    ends = OpenViolations(tmp_path).restart_ends({"door"})
    assert [(e.event_id, e.seq, e.frame_seq) for e in ends] == [("b", 1, None), ("a", 2, None)]


def test_a_start_with_nothing_noted_makes_no_folder(tmp_path):
    """No violation noted yet: the start's look makes no state_dir (nor lock file)."""
    state = tmp_path / "state"
    ledger = OpenViolations(state, ("door",))
    assert ledger.restart_ends({"door"}) == [] and ledger.removed_ends({"door"}) == []
    assert not state.exists()


def test_a_note_waits_for_the_lock_another_process_holds(tmp_path):
    """Processes sharing a state_dir read and rewrite the file under its lock file: a note made
    while another holds it waits, and then keeps what the other wrote."""
    ledger = OpenViolations(tmp_path, ("door",))
    ledger.note(event("mine"))
    with open(tmp_path / f".{LEDGER_FILE}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process, rewriting the file
        t = threading.Thread(target=ledger.note, args=(event("mine", "update", 1),))
        t.start()
        time.sleep(0.3)
        assert t.is_alive(), "the note did not wait for the lock"
        entries = json.loads(ledger.path.read_text())
        entries["theirs"] = {**entries["mine"], "event_id": "theirs", "camera": "yard"}
        ledger.path.write_text(json.dumps(entries))
        fcntl.flock(lock, fcntl.LOCK_UN)
        t.join(5)
    entries = json.loads(ledger.path.read_text())
    assert set(entries) == {"mine", "theirs"} and entries["mine"]["seq"] == 1


def test_changes_written_are_not_held_on(tmp_path):
    """What was written is not kept in memory: months of violations leave nothing behind."""
    ledger = OpenViolations(tmp_path)
    for i in range(50):
        ledger.note(event(f"e{i}"))
        ledger.note(event(f"e{i}", "end", 1))
    assert ledger._held == {} and json.loads(ledger.path.read_text()) == {}


def test_a_file_that_is_no_object_or_no_json_is_started_afresh(tmp_path, caplog):
    """A file cut by a crash of the file system, or holding a list: the start goes on, and
    the next note writes a good file (was: every note failed for good, or a traceback)."""
    path = tmp_path / LEDGER_FILE
    for text in ("[1, 2]", '{"cut": {"camera": "do'):
        path.write_text(text)
        ledger = OpenViolations(tmp_path)
        with caplog.at_level(logging.WARNING, logger="maskd.ledger"):
            assert ledger.restart_ends({"door"}) == []
            ledger.note(event("new"))
        assert set(json.loads(path.read_text())) == {"new"}
        assert "cannot keep the open violations" not in caplog.text


def test_an_older_maskds_entry_without_the_newer_fields_is_ended(tmp_path):
    """An entry noted before duration_s and clock_step_s existed is still a violation to end."""
    ledger = OpenViolations(tmp_path)
    ledger.note(event("older"))
    entries = json.loads(ledger.path.read_text())
    for key in ("duration_s", "clock_step_s", "frame_seq", "end_time", "end_reason"):
        del entries["older"][key]
    ledger.path.write_text(json.dumps(entries))
    [end] = OpenViolations(tmp_path).restart_ends({"door"})
    assert (end.event_id, end.seq, end.end_reason) == ("older", 1, "restart")


def test_a_violation_started_and_updated_on_a_full_disk_is_kept_at_its_last_update(tmp_path):
    """Both a start and its update held back by a full disk: the update is what is written."""
    from mqtt_broker import fill_disk, small_disk

    with small_disk(tmp_path / "disk") as d:
        ledger = OpenViolations(d)
        ledger.note(event("first"))
        filler = fill_disk(d)
        ledger.note(event("full"))
        ledger.note(event("full", "update", 3))
        filler.unlink()
        ledger.note(event("after"))
        ends = OpenViolations(d).restart_ends({"door"})
    assert sorted((e.event_id, e.seq) for e in ends) == [("after", 1), ("first", 1), ("full", 4)]


def test_one_removed_cameras_one_violation_is_said_as_it(tmp_path, caplog):
    OpenViolations(tmp_path, ("back", "front")).note(event("b1", camera="back"))
    with caplog.at_level(logging.INFO, logger="maskd.ledger"):
        [end] = OpenViolations(tmp_path, ("front",)).removed_ends({"front"})
    assert end.event_id == "b1"
    assert [r.getMessage() for r in caplog.records] == [
        "camera back is no longer in the config: ending its 1 open violation (reason restart) "
        "and forgetting it"]


def test_a_removed_cameras_look_never_takes_this_configs_own_cameras(tmp_path):
    """removed_ends is for cameras the config no longer has: its own cameras' entries are
    restart_ends' (both at one start: ended once, not twice)."""
    OpenViolations(tmp_path, ("front",), outbox=True).note(event("f1", camera="front"))
    ledger = OpenViolations(tmp_path, ("front",), outbox=True)
    assert ledger.removed_ends({"front"}) == []
    assert [e.event_id for e in ledger.restart_ends({"front"})] == ["f1"]


def test_a_crowd_on_one_frame_is_noted_in_one_write_each_way(tmp_path, monkeypatch):
    """200 people (`detector.max_faces`) start on one frame and leave on a later one: the run
    loop writes the file once for each frame (was: once per event, each a rewrite of every
    open violation, so 158 starts held a real `maskd run`'s loop for 0.6 s here), and still
    each start is on file before any sink has it and each end leaves it only after every
    sink has it."""
    from loop_parts import RecordingSink, service_for

    import maskd.ledger
    from maskd.demo import DemoSource

    writes = []
    write = maskd.ledger.write_atomically
    monkeypatch.setattr(maskd.ledger, "write_atomically",
                        lambda path, data: (writes.append(path), write(path, data)))

    class OnFile(RecordingSink):
        """Whether the ledger held each event when this sink got it."""

        def emit(self, ev) -> None:
            self.events.append(ev.event_id in json.loads((tmp_path / LEDGER_FILE).read_text()))

    sink = OnFile()
    loop = service_for(DemoSource(), sinks=[sink])
    loop.ledger = OpenViolations(tmp_path, ("door",))
    crowd = [f"p{i:03d}" for i in range(200)]
    loop._emit([event(i) for i in crowd])
    assert len(writes) == 1
    loop._emit([event(i, "end", 1) for i in crowd])
    assert len(writes) == 2
    assert sink.events == [True] * 400
    assert json.loads((tmp_path / LEDGER_FILE).read_text()) == {}


def test_a_change_is_on_the_card_before_the_file_is_replaced_and_the_replacement_after(tmp_path):
    """A power cut (not a kill: what the page cache held is gone) right after a rewrite left
    open_violations.json empty (its new data never written before the rename: ext4's delayed
    allocation) or the version before (the rename never reached the card), and the next start
    without MQTT never ended a violation open then in JSON lines (`... is not readable JSON;
    starting it afresh`). Each rewrite now reaches the card in order, seen by strace in a real
    process: the new file's data synced, then the rename, then the folder synced."""
    import os
    import subprocess
    import sys

    from conftest import REPO
    from test_faults_mqtt import strace_injecting

    strace = strace_injecting()
    trace = tmp_path / "strace.txt"
    state = tmp_path / "state"
    write = ("import sys; from maskd.ledger import OpenViolations; from maskd.types import "
             "ViolationEvent as V; OpenViolations(sys.argv[1]).note(V('start', 'open', 0, "
             "'door', 1, 1.7e9, 0.9, 0.9, (0.1, 0.1, 0.2, 0.2)))")
    subprocess.run([strace, "-f", "-qq", "-y", "-o", str(trace), "-e",
                    "trace=fsync,fdatasync,rename,renameat,renameat2", sys.executable, "-c",
                    write, str(state)], check=True, timeout=60, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    calls = [line for line in trace.read_text().splitlines() if str(state) in line]
    synced = [i for i, line in enumerate(calls) if "sync(" in line]
    [renamed] = [i for i, line in enumerate(calls) if f'{LEDGER_FILE}")' in line]
    assert any(i < renamed and ".maskd-" in calls[i] for i in synced), calls
    assert any(i > renamed and calls[i].endswith(f"<{state}>) = 0") for i in synced), calls
    assert json.loads((state / LEDGER_FILE).read_text()).keys() == {"open"}


def test_a_damaged_file_is_said_once_not_at_every_read(tmp_path, caplog):
    """An open_violations.json that is no JSON (an empty file a power cut left before its writes
    were synced, a damaged card) was said at every read: five identical WARNING lines at each
    start of a real `maskd run`, and at every start after until a violation rewrote it."""
    (tmp_path / LEDGER_FILE).write_bytes(b"")
    ledger = OpenViolations(tmp_path, ("door",))
    with caplog.at_level(logging.WARNING, logger="maskd.ledger"):
        assert ledger.restart_ends({"door"}) == [] and ledger.removed_ends({"door"}) == []
        assert ledger.ended_elsewhere() == set()
        ledger.note(event("after"))
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / LEDGER_FILE} is not readable JSON; starting it afresh"]
    assert json.loads((tmp_path / LEDGER_FILE).read_text()).keys() == {"after"}
    # read whole, then damaged again (another power cut): said again, once
    assert ledger.ended_elsewhere() == set()
    (tmp_path / LEDGER_FILE).write_bytes(b'{"open": {"after"')
    with caplog.at_level(logging.WARNING, logger="maskd.ledger"):
        assert ledger.restart_ends({"door"}) == [] and ledger.ended_elsewhere() == set()
    assert [r.getMessage() for r in caplog.records] == [
        f"{tmp_path / LEDGER_FILE} is not readable JSON; starting it afresh"] * 2
