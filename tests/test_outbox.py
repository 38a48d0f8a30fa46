"""The durable MQTT outbox: order, bounds, crash safety, damaged files, one owner."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from contextlib import closing
from pathlib import Path

import pytest
from clocks import SteppedClock

from maskd.clock import local_iso
from maskd.outbox import OUTBOX_FILE, OUTBOX_LAYOUT, Outbox, OutboxError

DAY = 24 * 3600.0


def test_fifo_order_survives_reopen_and_ids_keep_growing(tmp_path):
    ob = Outbox(tmp_path)
    ids = [ob.put("t/a", {"n": i}) for i in range(5)]
    ob.remove(ids[0])
    ob.remove(ids[2])
    assert [r.payload["n"] for r in ob.pending()] == [1, 3, 4]
    assert [r.payload["n"] for r in ob.pending(after_id=ids[3])] == [4]
    ob.close()

    ob = Outbox(tmp_path)
    assert ob.depth() == 3
    new = ob.put("t/a", {"n": 5})
    assert new > ids[-1]  # ids never reused, so replay order holds across restarts
    ob.remove(ids[1])
    ob.remove(ids[1])  # removing twice (a duplicate PUBACK) is harmless
    assert ob.depth() == 3
    assert [r.payload["n"] for r in ob.pending()] == [3, 4, 5]
    ob.close()


def test_a_start_without_records_left_by_a_stop_says_nothing_of_them(tmp_path, caplog):
    """outbox-records.json is there only after a stop that could not store what it held; an
    ordinary start (none there) reads nothing and says nothing of it (the warning 'cannot read
    what the last stop could not store' is for a file there that cannot be read)."""
    with caplog.at_level(logging.INFO, logger="maskd.outbox"):
        for _ in range(2):
            box = Outbox(tmp_path)
            box.put("t/events", {"event_type": "start"})
            box.close()
    assert "could not store" not in caplog.text, caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert not (tmp_path / "outbox-records.json").exists()


def test_count_bound_drops_oldest_with_log_and_counter(tmp_path, caplog):
    ob = Outbox(tmp_path, max_events=3)
    with caplog.at_level(logging.WARNING, logger="maskd.outbox"):
        for i in range(5):
            ob.put("t", {"n": i})
    assert ob.depth() == 3
    assert ob.dropped == 2
    assert [r.payload["n"] for r in ob.pending()] == [2, 3, 4]
    # logged at once, then at most once a minute (not once per put while full) ...
    assert caplog.text.count("dropped the") == 1 and "dropped the 1 oldest" in caplog.text
    with caplog.at_level(logging.WARNING, logger="maskd.outbox"):
        ob.close()
    # ... and what the minute still held when the process stops (was: never said)
    assert caplog.text.count("dropped the") == 2 and "dropped the 1 oldest" in caplog.text.split(
        "dropped the 1 oldest", 1)[1]


def test_age_bound(tmp_path, caplog):
    clock = SteppedClock()
    ob = Outbox(tmp_path, max_age_s=60, clock=clock)
    ob.put("t", {"n": 0})
    clock.run(50)
    ob.put("t", {"n": 1})
    clock.run(5)
    assert ob.oldest_age() == pytest.approx(55.0)
    clock.run(15)
    with caplog.at_level(logging.WARNING, logger="maskd.outbox"):
        assert ob.prune() == 1
    assert [r.payload["n"] for r in ob.pending()] == [1]
    assert ob.dropped == 1
    assert "older than 60 s" in caplog.text
    ob.remove(ob.pending()[0].id)
    assert ob.oldest_age() is None
    ob.close()


def test_rows_aged_out_are_not_counted_against_the_count_bound_too(tmp_path):
    """Rows the age bound drops make room: the count bound must not drop more on top."""
    clock = SteppedClock()
    ob = Outbox(tmp_path, max_events=3, max_age_s=60, clock=clock)
    ob.put("t", {"n": 0})
    ob.put("t", {"n": 1})
    clock.run(50)
    ob.put("t", {"n": 2})
    clock.run(20)  # 0 and 1 are now too old
    ob.put("t", {"n": 3})
    ob.put("t", {"n": 4})
    assert [r.payload["n"] for r in ob.pending()] == [2, 3, 4]
    assert ob.dropped == 2
    ob.close()


def test_a_row_dated_ahead_of_the_clock_is_no_negative_age():
    """Another boot's row stored while that boot's clock was ahead: age 0, not negative."""
    from maskd.outbox import row_age

    now = (2_000_000_000.0, 100.0)
    assert row_age(now[0] + 500.0, "earlier", None, "this", now) == 0.0
    assert row_age(now[0] - 500.0, "earlier", None, "this", now) == 500.0
    assert row_age(0.0, "this", 150.0, "this", now) == 0.0  # by the time since boot


def test_a_clock_step_forward_does_not_age_out_events_stored_before_it(tmp_path, caplog):
    """A Pi switched off for ten days boots on the time it stopped (fake-hwclock); events stored
    while the network is still down must survive NTP's ten-day jump once it is back."""
    clock = SteppedClock()
    ob = Outbox(tmp_path, max_age_s=7 * DAY, clock=clock)
    ids = [ob.put("t", {"n": i}) for i in range(3)]
    clock.run(30)
    clock.wall += 10 * DAY  # NTP steps the clock
    with caplog.at_level(logging.WARNING, logger="maskd.outbox"):
        assert ob.prune() == 0
        ob.put("t", {"n": 3})  # a put prunes too
    assert [r.id for r in ob.pending()][:3] == ids and ob.dropped == 0
    assert "older than" not in caplog.text
    assert ob.oldest_age() == pytest.approx(30.0)  # not ten days
    ob.close()

    ob = Outbox(tmp_path, max_age_s=7 * DAY, clock=clock)  # a restart in the same boot
    assert ob.oldest_age() == pytest.approx(30.0) and ob.prune() == 0
    clock.run(7 * DAY - 29)  # the bound itself still holds, by the time since boot
    assert ob.prune() == 3 and [r.payload["n"] for r in ob.pending()] == [3]
    ob.close()


def test_rows_of_an_earlier_boot_are_aged_by_the_wall_clock(tmp_path):
    clock = SteppedClock(uptime=5 * DAY)
    ob = Outbox(tmp_path, max_age_s=7 * DAY, clock=clock, boot="boot-1")
    ob.put("t", {"n": 0})
    clock.run(DAY)
    ob.put("t", {"n": 1})
    ob.close()

    clock.run(6.5 * DAY)  # the Pi was off; the new boot's uptime starts again near zero
    clock.uptime = 20.0
    ob = Outbox(tmp_path, max_age_s=7 * DAY, clock=clock, boot="boot-2")
    assert ob.oldest_age() == pytest.approx(7.5 * DAY)
    assert ob.prune() == 1 and [r.payload["n"] for r in ob.pending()] == [1]
    ob.close()


@pytest.mark.parametrize("when", ["while running", "between two runs"])
def test_rows_stored_before_a_step_keep_their_age_into_the_next_boot(tmp_path, caplog, when):
    """A Pi off for ten days boots on the time it stopped (fake-hwclock), stores events while
    the broker is away, and NTP steps the clock in that boot; a power cut minutes later: the next
    boot ages those rows by the wall clock, and dates ten days behind dropped them all as older
    than 7 days (they are re-dated with the step, as the snapshots written before it are)."""
    clock = SteppedClock(wall=1_790_000_000.0 - 10 * DAY)
    ob = Outbox(tmp_path, max_age_s=7 * DAY, clock=clock, boot="boot-A")
    for i in range(3):
        ob.put("t", {"n": i})
    if when == "between two runs":
        ob.close()
    clock.run(60)
    clock.wall += 10 * DAY  # NTP steps the clock
    if when == "between two runs":
        ob = Outbox(tmp_path, max_age_s=7 * DAY, clock=clock, boot="boot-A")
    with caplog.at_level(logging.WARNING, logger="maskd.outbox"):
        assert ob.prune() == 0
    assert "re-dated" in caplog.text
    ob.close()

    clock.run(300)  # the power cut; the next boot's uptime starts again
    clock.uptime = 30.0
    ob = Outbox(tmp_path, max_age_s=7 * DAY, clock=clock, boot="boot-B")
    assert ob.prune() == 0 and [r.payload["n"] for r in ob.pending()] == [0, 1, 2]
    assert ob.oldest_age() == pytest.approx(360.0)
    ob.close()


def test_rows_an_earlier_boot_stored_on_an_unset_clock_survive_ntp_setting_it(tmp_path):
    """A Pi that booted in 1970 (no fake-hwclock, no network: no NTP, no broker) kept its
    events; the next boot's NTP made them 56 years old, and the first prune dropped them all.
    Their dates say nothing: only the count bound (and delivery) removes them."""
    clock = SteppedClock(wall=600.0, uptime=600.0)
    ob = Outbox(tmp_path, max_age_s=7 * DAY, max_events=3, clock=clock, boot="boot-1")
    for i in range(2):
        ob.put("t", {"n": i})
        clock.run(60)
    ob.close()

    clock.wall, clock.uptime = time.time(), 30.0  # the next boot, its clock set by NTP
    ob = Outbox(tmp_path, max_age_s=7 * DAY, max_events=3, clock=clock, boot="boot-2")
    assert ob.prune() == 0 and ob.dropped == 0 and ob.oldest_age() == 0.0
    clock.run(8 * DAY)
    assert ob.prune() == 0 and [r.payload["n"] for r in ob.pending()] == [0, 1]
    for i in range(2, 4):
        ob.put("t", {"n": i})
    assert [r.payload["n"] for r in ob.pending()] == [1, 2, 3]  # the count bound still holds
    ob.close()


def test_doctor_ages_the_rows_as_maskd_does(tmp_path):
    """Rows stored before NTP stepped the clock ten days on: `maskd doctor` (its own process,
    the real clocks) reports them as new, as maskd itself does, not as ten days old."""
    from maskd.clock import system_clock
    from maskd.commands.doctor import inspect_outbox
    from maskd.config import Config, MqttConfig

    def before_the_step() -> tuple[float, float]:
        wall, uptime = system_clock()
        return wall - 10 * DAY, uptime

    ob = Outbox(tmp_path, max_age_s=7 * DAY, clock=before_the_step)
    ob.put("t", {"n": 0})
    ob.close()
    ob = Outbox(tmp_path, max_age_s=7 * DAY)  # the real clock, after the step
    assert ob.prune() == 0 and ob.oldest_age() < 60
    ob.close()
    cfg = Config(device_id="dev1", camera="cam1", state_dir=tmp_path,
                 mqtt=MqttConfig(url="mqtt://127.0.0.1:1883"))
    detail = inspect_outbox(cfg)[1]
    assert "1 event(s) pending (oldest 0 s)" in detail, detail


OLD_SCHEMA = """
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL,
                     payload TEXT NOT NULL, created REAL NOT NULL);
CREATE INDEX outbox_created ON outbox (created);
CREATE TABLE open_events (event_id TEXT PRIMARY KEY, topic TEXT NOT NULL, payload TEXT NOT NULL,
                          updated REAL NOT NULL);
"""


def write_old_outbox(d, created: float, n: int = 3) -> None:
    """An outbox as maskd wrote it before its rows carried their boot."""
    db = sqlite3.connect(d / OUTBOX_FILE)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA)
    db.executemany("INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)",
                   [("t", f'{{"n": {i}, "pad": "{"x" * 3000}"}}', created) for i in range(n)])
    db.commit()
    db.close()


def test_an_outbox_written_before_boot_columns_is_upgraded_and_keeps_its_rows(tmp_path):
    clock = SteppedClock()
    write_old_outbox(tmp_path, created=clock.wall - 2 * DAY)
    ob = Outbox(tmp_path, max_age_s=7 * DAY, clock=clock)
    assert [r.payload["n"] for r in ob.pending()] == [0, 1, 2]
    assert ob.oldest_age() == pytest.approx(2 * DAY)  # old rows: by the wall clock
    new = ob.put("t", {"n": 3})
    assert new > 3
    clock.run(5 * DAY + 1)
    assert ob.prune() == 3 and [r.payload["n"] for r in ob.pending()] == [3]
    ob.close()


def test_an_outbox_written_before_open_violations_were_kept_ends_those_it_holds(tmp_path):
    """maskd before 2026-12-01 kept no record of its open violations: killed with one open while
    the broker was away, its start waits in the outbox. The update delivers that start, so the
    violation must be known open from the pending messages, or its end never comes (was:
    open_events() empty, the start delivered, no `restart` end in MQTT or JSON lines)."""
    def v(event_id: str, seq: int, kind: str) -> str:
        return json.dumps({"event_type": kind, "event_id": event_id, "seq": seq,
                           "camera": "door", "track_id": 1, "start_time": 1.0, "score": 0.9,
                           "top_score": 0.9, "box": [0.1, 0.1, 0.2, 0.2]})

    with closing(sqlite3.connect(tmp_path / OUTBOX_FILE)) as db:
        db.executescript(OLD_SCHEMA.split("CREATE TABLE open_events")[0])  # the outbox alone
        db.executemany("INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)",
                       [("m/d/door/violation", v("a", 0, "start"), 1.0),
                        ("m/d/door/violation", v("b", 0, "start"), 2.0),
                        ("m/d/door/violation", v("a", 1, "end"), 3.0),
                        ("m/d/door/violation", v("b", 1, "update"), 4.0)])
        db.commit()
    ob = Outbox(tmp_path)
    (last,) = ob.open_events()
    assert last.topic == "m/d/door/violation" and last.created == 4.0
    assert (last.payload["event_id"], last.payload["seq"]) == ("b", 1)
    assert [r.payload["event_id"] for r in ob.pending()] == ["a", "b", "a", "b"]  # all kept
    ob.close()
    ob = Outbox(tmp_path)  # the next start: the record is this version's own now
    assert [r.payload["event_id"] for r in ob.open_events()] == ["b"]
    ob.close()


def write_newer_outbox(d: Path, scratch: Path, killed: bool = True) -> dict[str, bytes]:
    """An outbox of a later layout (a column this version does not fill) as a newer maskd
    leaves it, ``killed`` with its last event still in the WAL or stopped; returns its files'
    bytes."""
    scratch.mkdir()
    with closing(sqlite3.connect(scratch / OUTBOX_FILE, isolation_level=None)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA wal_autocheckpoint=0")  # the last rows stay in the WAL
        db.executescript(OLD_SCHEMA)
        db.execute("ALTER TABLE outbox ADD COLUMN qos INTEGER NOT NULL DEFAULT 1")
        db.execute(f"PRAGMA user_version={OUTBOX_LAYOUT + 1}")
        db.execute("INSERT INTO outbox (topic, payload, created) VALUES ('t', '{}', 1.0)")
        for name in (OUTBOX_FILE, f"{OUTBOX_FILE}-wal") if killed else ():
            shutil.copyfile(scratch / name, d / name)  # copied while open: as a kill leaves it
    if not killed:  # closed: the WAL is in the file, and gone
        shutil.copyfile(scratch / OUTBOX_FILE, d / OUTBOX_FILE)
    return {p.name: p.read_bytes() for p in d.iterdir() if p.name.startswith(OUTBOX_FILE)}


@pytest.mark.parametrize("killed", [True, False], ids=["killed", "stopped"])
def test_an_outbox_of_a_newer_layout_is_refused_and_left_byte_for_byte(tmp_path, killed):
    """A downgrade meets the newer layout: a clear refusal at the start, in doctor's words too,
    the file and its WAL left as they were, and no file added to a stopped one's (was:
    started, then every new event failed to store, waited in memory and was lost at exit)."""
    from maskd.commands.doctor import FAIL, inspect_outbox
    from maskd.config import Config, MqttConfig

    state = tmp_path / "state"
    state.mkdir()
    before = write_newer_outbox(state, tmp_path / "newer", killed)
    assert set(before) == {OUTBOX_FILE, f"{OUTBOX_FILE}-wal"} if killed else {OUTBOX_FILE}
    says = (f"outbox {state / OUTBOX_FILE} was written by a newer maskd (layout "
            f"{OUTBOX_LAYOUT + 1}; this one reads up to {OUTBOX_LAYOUT}): install that version "
            "again, or move the file aside")
    with pytest.raises(OutboxError) as refused:
        Outbox(state)
    assert str(refused.value).startswith(says), refused.value
    cfg = Config(device_id="dev1", camera="cam1", state_dir=state,
                 mqtt=MqttConfig(url="mqtt://127.0.0.1:1883"))
    verdict, detail = inspect_outbox(cfg)
    assert verdict == FAIL and detail == str(refused.value), detail
    for name, data in before.items():
        assert (state / name).read_bytes() == data, name
    if not killed:
        assert sorted(p.name for p in state.iterdir()) == sorted([OUTBOX_FILE, "outbox.lock"])


def test_an_outbox_without_a_layout_number_is_read_and_given_this_one(tmp_path):
    """A file from before the number was kept (user_version 0) keeps its rows and gets it."""
    write_old_outbox(tmp_path, created=time.time())
    ob = Outbox(tmp_path)
    assert [r.payload["n"] for r in ob.pending()] == [0, 1, 2]
    ob.close()
    with closing(sqlite3.connect(tmp_path / OUTBOX_FILE)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == OUTBOX_LAYOUT
    Outbox(tmp_path).close()  # and reads what it wrote


def test_an_old_outbox_on_a_full_disk_opens_and_is_upgraded_by_a_start_with_room(disk, caplog):
    from mqtt_broker import fill_disk

    clock = SteppedClock()
    write_old_outbox(disk, created=clock.wall)
    filler = fill_disk(disk)
    with caplog.at_level(logging.WARNING, logger="maskd.outbox"):
        ob = Outbox(disk, reserve_bytes=32 * 1024, clock=clock)
    assert "cannot add the rows' boot" in caplog.text  # aged by the wall clock meanwhile
    ob.put("t", {"n": 3})  # kept in memory: the disk is full
    clock.run(60)
    assert ob.oldest_age() == pytest.approx(60.0) and ob.prune() == 0
    filler.unlink()
    retry_until_stored(ob)
    assert [r.payload["n"] for r in ob.pending()] == [0, 1, 2, 3]
    ob.close()

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="maskd.outbox"):
        ob = Outbox(disk, clock=clock)
    assert "rows now carry their boot" in caplog.text
    assert [r.payload["n"] for r in ob.pending()] == [0, 1, 2, 3]
    ob.close()


def test_the_full_disk_lines_name_the_keys_that_size_the_reserve_and_the_memory(disk, caplog):
    """"cannot reserve 1024 KiB ... (at most 1000)": which setting is that? The operator who
    wants a bigger memory queue or a smaller reserve on a small card is told the key."""
    from mqtt_broker import fill_disk

    filler = fill_disk(disk)
    with caplog.at_level(logging.WARNING, logger="maskd.outbox"):
        ob = Outbox(disk, reserve_bytes=32 * 1024, memory_max=7)
        ob.put("t", {"n": 1})
    ob.close()
    filler.unlink()
    line = next(r.getMessage() for r in caplog.records if "cannot reserve" in r.getMessage())
    assert "cannot reserve 32 KiB (mqtt.outbox_reserve_kb)" in line, line
    assert "(at most 7, mqtt.memory_queue_max)" in line, line


def test_rows_committed_before_sigkill_survive(tmp_path):
    """put() returns only after the row is durable: a process killed right after keeps them."""
    code = textwrap.dedent(
        f"""
        import os, signal
        from maskd.outbox import Outbox
        ob = Outbox({str(tmp_path)!r})
        for i in range(50):
            ob.put("t", {{"n": i}})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ob = Outbox(tmp_path)
    assert [r.payload["n"] for r in ob.pending(limit=1000)] == list(range(50))
    ob.close()


def test_damaged_file_is_moved_aside(tmp_path, caplog):
    (tmp_path / OUTBOX_FILE).write_bytes(b"this is not sqlite" * 100)
    with caplog.at_level(logging.ERROR, logger="maskd.outbox"):
        ob = Outbox(tmp_path, durable=False)
    assert "unreadable" in caplog.text
    assert any(p.name.startswith(OUTBOX_FILE + ".corrupt-") for p in tmp_path.iterdir())
    ob.put("t", {"n": 1})
    assert ob.depth() == 1
    ob.close()


def test_damaged_files_kept_aside_are_bounded_newest_kept(tmp_path, caplog):
    """A failing SD card damages the outbox again and again over the months: each damaged file
    (up to tens of MiB at the count bound) is kept aside for inspection, but only the latest
    few, or they would fill the card that is failing. Damage twice in one second keeps both."""
    from maskd.outbox import CORRUPT_KEEP

    rounds = CORRUPT_KEEP + 2
    with caplog.at_level(logging.INFO, logger="maskd.outbox"):
        for i in range(rounds):  # as fast as it goes: several in one second
            (tmp_path / OUTBOX_FILE).write_bytes(f"damage {i} ".encode() * 100)
            Outbox(tmp_path, durable=False).close()
    kept = sorted(tmp_path.glob(OUTBOX_FILE + ".corrupt-*"))
    assert len(kept) == CORRUPT_KEEP
    assert sorted(p.read_bytes()[:9] for p in kept) == \
        [f"damage {i} ".encode() for i in range(rounds - CORRUPT_KEEP, rounds)]
    removed = [r.getMessage() for r in caplog.records if "deleted the older" in r.getMessage()]
    assert len(removed) == rounds - CORRUPT_KEEP


def damage_page(state_dir, table: str, which: str = "root") -> int:
    """Overwrite one page of the outbox (closed, checkpointed) with 0xFF, as a failing SD card
    does: ``table``'s root page, or the first or last leaf below it; returns its number."""
    path = state_dir / OUTBOX_FILE
    with closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = db.execute("PRAGMA page_size").fetchone()[0]
        page = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (table,)).fetchone()[0]
    data = bytearray(path.read_bytes())
    if which != "root":
        at = (page - 1) * size + (100 if page == 1 else 0)
        assert data[at] in (0x02, 0x05), "an interior page: the table spans several pages"
        if which == "last":
            page = int.from_bytes(data[at + 8:at + 12], "big")  # its right-most child
        else:
            cell = (page - 1) * size + int.from_bytes(data[at + 12:at + 14], "big")
            page = int.from_bytes(data[cell:cell + 4], "big")
    data[(page - 1) * size:page * size] = b"\xff" * size
    path.write_bytes(bytes(data))
    return page


def fill_and_close(state_dir, n: int = 300, track: bool = False) -> None:
    ob = Outbox(state_dir, durable=False)
    for i in range(n):
        ob.put("t", {"n": i, "pad": "x" * 200}, track=(f"e{i}", True) if track else None)
    ob.close()


def drain(ob: Outbox) -> list[int]:
    """Read and acknowledge everything pending, as the publisher does; the payloads' n."""
    got: list[int] = []
    while rows := ob.pending(limit=100):
        got += [r.payload["n"] for r in rows]
        for r in rows:
            ob.remove(r.id)
    return got


def damage_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "unreadable in part" in r.getMessage()]


def test_a_damaged_page_found_after_the_start_is_moved_aside_and_the_rest_delivered(tmp_path,
                                                                                    caplog):
    """A bad page that the start does not read (was: every read failed as a passing error,
    "retrying", and nothing, not even new events, was delivered again, restart after restart).
    The readable events are saved into a new file, the damaged one is kept aside."""
    fill_and_close(tmp_path)
    damage_page(tmp_path, "outbox", "first")
    with caplog.at_level(logging.ERROR, logger="maskd.outbox"):
        ob = Outbox(tmp_path, durable=False)
        assert caplog.records == [] and ob.depth() == 300  # the start read no row
        got = drain(ob)
    (line,) = damage_lines(caplog)
    lost = 300 - len(got)
    assert 0 < lost < 30 and got == list(range(lost, 300)), got[:3]
    assert f"with the {len(got)} pending event(s) that could be read; {lost} could not" in line
    assert str(tmp_path / OUTBOX_FILE) in line and "retrying" not in caplog.text
    assert len(list(tmp_path.glob(OUTBOX_FILE + ".corrupt-*"))) == 1
    new = ob.put("t", {"n": 300})
    assert new == 301 and ob.fault is None and ob.in_memory() == 0
    assert drain(ob) == [300]
    ob.close()
    ob = Outbox(tmp_path)
    assert ob.put("t", {"n": 301}) == 302  # ids never reused
    ob.close()


def test_damage_inside_a_page_never_walks_back_and_the_readable_events_are_saved(tmp_path):
    """Part of a page overwritten (not a whole one): a garbage cell read as rowid -1 sent the
    salvage back to the start, rows 1, 2, 1, 2, ... for ever (maskd hung at its start), or into
    'cannot copy the readable events (UNIQUE constraint failed)': 0 saved, all reported lost.
    Each page of a small outbox damaged in turn, in a child process with a time limit: the walk
    ends, keys only grow, and what is saved is what was read."""
    import json

    base = tmp_path / "base"
    base.mkdir()
    ob = Outbox(base, durable=False)
    for i in range(10):
        ob.put("t", {"n": i, "pad": "x" * 1500})
    ob.close()
    with closing(sqlite3.connect(base / OUTBOX_FILE)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        pages, size = (db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size"))
    assert pages > 5  # the events span several pages
    for page in range(1, pages):  # page 0 is the schema: nothing is readable without it
        state = tmp_path / f"p{page}"
        shutil.copytree(base, state)
        with open(state / OUTBOX_FILE, "r+b") as f:
            f.seek(page * size + 100)
            f.write(b"\xff" * 2000)
    code = textwrap.dedent(
        f"""
        import io, itertools, json, logging, sqlite3
        from contextlib import closing
        from pathlib import Path
        from maskd.outbox import OUTBOX_FILE, Outbox, _readable
        for page in range(1, {pages}):
            state = Path({str(tmp_path)!r}) / f"p{{page}}"
            with closing(sqlite3.connect(state / OUTBOX_FILE)) as src:
                keys = [r[0] for r in itertools.islice(
                    _readable(src, "outbox", "topic, payload, created, boot, uptime"), 100)]
            said = io.StringIO()
            logging.getLogger("maskd.outbox").addHandler(logging.StreamHandler(said))
            ob = Outbox(state, durable=False)
            got = []
            while rows := ob.pending(limit=100):
                got += [r.payload["n"] for r in rows]
                for r in rows:
                    ob.remove(r.id)
            ob.close()
            print(json.dumps({{"page": page, "keys": keys, "got": got, "log": said.getvalue()}}))
        """
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    results = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["page"] for x in results] == list(range(1, pages))
    for x in results:
        keys, got, said = x["keys"], x["got"], x["log"]
        assert len(keys) <= 10 and keys == sorted(set(keys)), x
        assert "cannot copy" not in said, x
        assert got == sorted(set(got)) and set(got) <= set(range(10)), x
        if "unreadable in part" in said:
            assert f"with the {len(got)} pending event(s) that could be read" in said, x


def test_a_damaged_index_at_the_start_costs_no_event(tmp_path, caplog):
    """The start's own reads hit the bad page (was: a traceback, exit 1, and systemd's restart
    loop). The events themselves are whole: all of them are kept and sent."""
    fill_and_close(tmp_path)
    damage_page(tmp_path, "outbox_created")
    with caplog.at_level(logging.ERROR, logger="maskd.outbox"):
        ob = Outbox(tmp_path, durable=False)
    (line,) = damage_lines(caplog)
    assert "with the 300 pending event(s) that could be read; 0 could not" in line
    assert ob.depth() == 300 and drain(ob) == list(range(300))
    ob.close()


def test_a_damaged_open_violations_table_does_not_stop_storing_events(tmp_path, caplog):
    """A bad page where new open-violation records go (was: every put with a track failed,
    so every event stayed in memory only, lost at the next kill)."""
    fill_and_close(tmp_path, track=True)
    damage_page(tmp_path, "open_events", "last")
    with caplog.at_level(logging.ERROR, logger="maskd.outbox"):
        ob = Outbox(tmp_path, durable=False)
        ob.put("t", {"n": 300, "pad": ""}, track=("e300", True))
        assert ob.in_memory() == 0 and ob.fault is None  # stored durably
    (line,) = damage_lines(caplog)
    assert "with the 300 pending event(s) that could be read; 0 could not" in line
    ob.close()
    ob = Outbox(tmp_path)
    still_open = [r.payload["n"] for r in ob.open_events()]
    assert 270 < len(still_open) < 300 and still_open[-1] == 300
    assert drain(ob) == list(range(301))
    ob.close()


def test_second_process_on_same_state_dir_is_refused(tmp_path):
    ob = Outbox(tmp_path)
    code = f"from maskd.outbox import Outbox; Outbox({str(tmp_path)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "in use by another maskd process" in proc.stderr
    ob.close()
    Outbox(tmp_path).close()  # free again once the owner closed it


def test_state_dir_deleted_while_running_is_rebuilt_with_everything_pending(tmp_path, caplog):
    """rm -rf of the state dir while maskd runs: SQLite went on writing to the unlinked file,
    so every pending event vanished at exit (while the log said 'kept'), and a second maskd
    was no longer refused. Now the outbox is rebuilt there, with its rows and its lock."""
    caplog.set_level(logging.WARNING)
    state = tmp_path / "state"
    ob = Outbox(state, durable=False)
    ob.put("t", {"i": 0}, track=("v1", True))
    ob.put("t", {"i": 1})
    shutil.rmtree(state)
    ob.put("t", {"i": 2})
    ob.maintain()
    assert (state / OUTBOX_FILE).exists()
    assert "removed while maskd runs" in caplog.text and "rebuilt with its 3" in caplog.text
    ob.put("t", {"i": 3})
    ob.remove(ob.pending()[0].id)
    code = f"from maskd.outbox import Outbox; Outbox({str(state)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "in use by another maskd process" in proc.stderr
    ob.close()
    again = Outbox(state)
    assert [r.payload["i"] for r in again.pending()] == [1, 2, 3]
    assert [r.payload["i"] for r in again.open_events()] == [0]
    again.close()


def test_unwritable_state_dir_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        target = tmp_path / "file"
        target.write_text("x")
        bad = target / "sub"  # a path under a regular file: fails even for root
    else:
        bad = tmp_path / "ro"
        bad.mkdir(mode=0o500)
    with pytest.raises(OutboxError, match="state_dir"):
        Outbox(bad)


# ---- storage faults, on a real full disk (a 256 KiB tmpfs) ----


@pytest.fixture
def disk(tmp_path):
    from mqtt_broker import small_disk

    with small_disk(tmp_path / "disk") as d:
        yield d


def full_disk(d: Path) -> Path:
    """Fill ``d``'s file system with the outbox in it open, its WAL emptied first: whether a
    write then needs room must not hang on how many frames the WAL kept from earlier writes.
    That differs by SQLite version (TensorFlow's bundled one, which a test file importing it
    puts in this process, reuses them where Debian's grows the file) and by each earlier write
    (the layout number's), so these tests passed alone and failed after such a file."""
    from mqtt_broker import fill_disk

    with closing(sqlite3.connect(d / OUTBOX_FILE)) as db:
        busy = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    assert busy == 0 and (d / f"{OUTBOX_FILE}-wal").stat().st_size == 0
    return fill_disk(d)


# A reserve that holds the WAL of draining ten big rows from an empty WAL (WAL_PAGES frames
# before a checkpoint, and prune's one transaction over all their pages); 32 KiB was enough
# only while the WAL kept frames of earlier writes.
DRAIN_RESERVE = 64 * 1024


def big(i: int) -> dict:
    return {"n": i, "pad": "x" * 3000}  # most puts then need a new page: the disk fills fast


def retry_until_stored(ob: Outbox) -> None:
    """maintain() retries at most every RETRY_S; a test waits for it."""
    import time

    deadline = time.monotonic() + 10
    while (ob.in_memory() or ob.fault) and time.monotonic() < deadline:
        ob.maintain()
        time.sleep(0.1)


def test_full_disk_keeps_events_in_memory_in_order_until_they_can_be_stored(disk, caplog):
    ob = Outbox(disk, reserve_bytes=32 * 1024)
    first = [ob.put("t", big(i)) for i in range(2)]
    filler = full_disk(disk)
    began = time.time()
    with caplog.at_level(logging.ERROR, logger="maskd.outbox"):
        later = [ob.put("t", big(i)) for i in range(2, 12)]  # never raises
    since = {local_iso(t) for t in (began, time.time())}  # with its date: it may last days
    assert ob.in_memory() > 0 and ob.fault == "database or disk is full"
    assert "cannot store an event: database or disk is full" in caplog.text
    ids = first + later
    assert ids == sorted(ids) and ob.depth() == 12
    assert [r.payload["n"] for r in ob.pending(limit=100)] == list(range(12))
    assert [r.id for r in ob.pending(after_id=ids[5], limit=3)] == ids[6:9]

    filler.unlink()
    ids.append(ob.put("t", big(12)))  # room again, but behind the held ones: never ahead of them
    assert [r.id for r in ob.pending(limit=100)] == ids
    with caplog.at_level(logging.WARNING, logger="maskd.outbox"):
        retry_until_stored(ob)
    assert ob.in_memory() == 0 and ob.fault is None and ob.depth() == 13
    assert any(f"storage works again (it failed since {t}: " in caplog.text for t in since), \
        caplog.text
    ob.close()
    ob = Outbox(disk)  # everything is on disk now, in order, with its id
    assert [(r.payload["n"], r.id) for r in ob.pending(limit=100)] == list(enumerate(ids))
    ob.close()


@pytest.mark.parametrize("before", ["nothing", "a damaged file"])
def test_a_new_outbox_on_a_full_disk_is_created_once_there_is_room(disk, caplog, before):
    """A first start, or a damaged outbox moved aside, on a full card: SQLite cannot create the
    file. maskd must start anyway (was: exit 78, or a traceback), keep events in memory in
    order, and create the outbox and store them once there is room."""
    from mqtt_broker import fill_disk

    from maskd.commands.doctor import inspect_outbox
    from maskd.config import Config, MqttConfig

    if before == "a damaged file":
        (disk / OUTBOX_FILE).write_bytes(b"this is not sqlite" * 100)
    filler = fill_disk(disk)
    with caplog.at_level(logging.ERROR, logger="maskd.outbox"):
        ob = Outbox(disk, reserve_bytes=32 * 1024)  # never raises
    assert "cannot create the outbox: database or disk is full" in caplog.text
    assert ob.fault == "database or disk is full" and ob.open_events() == []
    ids = [ob.put("t", {"n": i}, track=("e1", i < 2)) for i in range(3)]
    assert ids == [1, 2, 3] and ob.in_memory() == 3 and ob.depth() == 3
    assert [r.payload["n"] for r in ob.pending()] == [0, 1, 2]
    assert [r.id for r in ob.rows([3, 1])] == [1, 3]
    ob.remove(ids[0])  # acknowledged from memory
    assert ob.prune() == 0 and ob.shrink() == 0 and ob.oldest_age() is not None
    cfg = Config(device_id="dev1", camera="cam1", state_dir=disk,
                 mqtt=MqttConfig(url="mqtt://127.0.0.1:1883", outbox_reserve_kb=32))
    verdict, detail = inspect_outbox(cfg)
    assert verdict == "FAIL" and "not created yet" in detail and "disk is full" in detail, detail

    filler.unlink()
    retry_until_stored(ob)
    assert ob.in_memory() == 0 and ob.fault is None and ob.depth() == 2
    ob.put("t", {"n": 3})
    assert ob.in_memory() == 0  # stored durably again
    ob.close()
    ob = Outbox(disk)
    assert [(r.id, r.payload["n"]) for r in ob.pending()] == [(2, 1), (3, 2), (4, 3)]
    assert ob.open_events() == []  # e1's last message said it ended
    ob.close()


def test_an_outbox_opened_on_a_full_disk_can_be_read_by_others_once_there_is_room(disk, caplog):
    """A start on a full card opens the outbox in exclusive mode; `maskd doctor` (another
    process) must be able to read it again once there is room, without a restart."""
    from mqtt_broker import fill_disk

    def others_read() -> int | str:
        try:
            with closing(sqlite3.connect(f"file:{disk / OUTBOX_FILE}?mode=ro", uri=True,
                                         timeout=0.2)) as db:
                return db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        except sqlite3.Error as err:
            return str(err)

    ob = Outbox(disk, reserve_bytes=32 * 1024)
    ob.put("t", {"n": 0})
    ob.close()
    filler = fill_disk(disk)
    with caplog.at_level(logging.WARNING, logger="maskd.outbox"):
        ob = Outbox(disk, reserve_bytes=32 * 1024)
        assert "opened it without SQLite's shared-memory file" in caplog.text
        assert others_read() == "database is locked"
        ob.put("t", {"n": 1})  # in memory
        filler.unlink()
        retry_until_stored(ob)
        assert "other programs can read it" in caplog.text
    assert others_read() == 2
    ob.put("t", {"n": 2})
    assert others_read() == 3 and ob.in_memory() == 0
    assert [r.payload["n"] for r in ob.pending()] == [0, 1, 2]
    ob.close()


def test_what_was_delivered_from_memory_is_what_the_next_start_ends_after(disk):
    """On a full disk a violation's next messages wait in memory and may be delivered from
    there. The record of its last message (the next start ends an open violation with the seq
    after it) must follow them (was: it kept the last *stored* one, so the next start sent an
    `end` with a seq already delivered, which de-duplicating consumers drop)."""
    def msg(seq: int, kind: str) -> dict:
        return {"event_id": "e1", "seq": seq, "event_type": kind, "pad": "x" * 3000}

    ob = Outbox(disk, reserve_bytes=32 * 1024)
    ob.remove(ob.put("t", msg(0, "start"), track=("e1", True)))  # stored, then delivered
    filler = full_disk(disk)
    for seq in (1, 2):
        row = ob.put("t", msg(seq, "update"), track=("e1", True))
        ob.remove(row)  # delivered from memory, never stored
    ob.close()  # a clean stop with the disk still full: the reserve takes the record
    filler.unlink()
    ob = Outbox(disk, reserve_bytes=32 * 1024)
    assert [r.payload["seq"] for r in ob.open_events()] == [2]

    filler = full_disk(disk)
    ob.remove(ob.put("t", msg(3, "end"), track=("e1", False)))  # the end, from memory
    assert [r.payload["seq"] for r in ob.open_events()] == [2]  # not written yet: no room
    filler.unlink()
    retry_until_stored(ob)
    assert ob.open_events() == []  # ended: the next start sends nothing more for e1
    ob.close()


def test_memory_queue_is_bounded_and_what_it_drops_is_counted_and_logged(disk, caplog):
    ob = Outbox(disk, reserve_bytes=0, memory_max=3)
    full_disk(disk)
    with caplog.at_level(logging.ERROR, logger="maskd.outbox"):
        ids = [ob.put("t", big(i)) for i in range(20)]
    held = ob.in_memory()
    assert held == 3 and ob.memory_dropped > 0
    assert ob.depth() == 20 - ob.memory_dropped
    assert [r.id for r in ob.pending(limit=100)][-3:] == ids[-3:]  # the newest are kept
    assert "memory queue full (3 events" in caplog.text
    with caplog.at_level(logging.ERROR, logger="maskd.outbox"):
        ob.close()
    # every drop is said by the time the process stops (was: the first minute's alone)
    said = [int(n) for n in re.findall(r"memory queue full .*?dropped the (\d+) oldest",
                                       caplog.text)]
    assert sum(said) == ob.memory_dropped, (said, ob.memory_dropped)


def test_drops_said_after_the_fault_passed_still_say_why(disk, caplog):
    """The once-a-minute line about memory drops may come after the disk has room again (the
    drops of the minute before): it says the fault they were dropped for (was: 'none of them
    stored: None')."""
    ob = Outbox(disk, reserve_bytes=0, memory_max=3)
    filler = full_disk(disk)
    with caplog.at_level(logging.ERROR, logger="maskd.outbox"):
        for i in range(20):
            ob.put("t", big(i))
    assert ob.memory_dropped > 3  # the first said at once, the rest held for the minute
    filler.unlink()
    ob.maintain()  # room: what waits in memory is stored, the fault is over
    assert ob.fault is None and ob.in_memory() == 0
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="maskd.outbox"):
        ob.close()  # says what the minute still held
    [line] = [r.getMessage() for r in caplog.records if "memory queue full" in r.getMessage()]
    assert "None" not in line and "disk is full" in line, line


def test_acknowledged_rows_are_deleted_on_a_full_disk_with_the_reserve(disk, caplog):
    ob = Outbox(disk, reserve_bytes=DRAIN_RESERVE)
    ids = [ob.put("t", big(i)) for i in range(10)]
    filler = full_disk(disk)
    with caplog.at_level(logging.WARNING, logger="maskd.outbox"):
        for i in ids:
            ob.remove(i)  # the bug: sqlite3.OperationalError here ended the publisher thread
    assert ob.depth() == 0
    assert f"released the {DRAIN_RESERVE // 1024} KiB reserve" in caplog.text
    # The released room is for draining: new events wait in memory, not on it.
    assert ob.fault == f"disk full: less than {DRAIN_RESERVE // 1024} KiB free" and ob.fault_since is not None
    new = ob.put("t", big(99))
    assert ob.in_memory() == 1
    filler.unlink()
    retry_until_stored(ob)
    assert ob.in_memory() == 0 and ob.fault is None
    assert (disk / "outbox.reserve").stat().st_blocks * 512 >= DRAIN_RESERVE
    assert [r.id for r in ob.pending()] == [new]
    ob.close()


def test_a_delete_that_fails_is_retried_and_the_row_is_not_handed_out_again(disk):
    ob = Outbox(disk, reserve_bytes=0)  # no reserve: the deletes themselves fail
    ids = [ob.put("t", big(i)) for i in range(10)]
    filler = full_disk(disk)
    for i in ids:
        ob.remove(i)
    assert ob.fault == "database or disk is full"
    assert ob.depth() == 0 and ob.pending() == []  # acknowledged: not sent again
    assert ob.rows(ids) == [] and ob.oldest_age() is None  # nor replayed, nor waiting
    filler.unlink()
    retry_until_stored(ob)
    assert ob.depth() == 0 and ob.pending() == []
    ob.close()
    ob = Outbox(disk)
    assert ob.depth() == 0  # deleted for real once there was room
    ob.close()


def test_bounds_apply_on_a_full_disk(disk):
    clock = SteppedClock()
    ob = Outbox(disk, max_age_s=60, reserve_bytes=DRAIN_RESERVE, clock=clock)
    for i in range(10):
        ob.put("t", big(i))
    full_disk(disk)
    clock.run(1000)
    assert ob.prune() == 10  # one transaction over many pages: needs the reserve
    assert ob.depth() == 0 and ob.dropped == 10
    ob.close()


def test_open_violations_are_remembered_across_restarts(tmp_path):
    ob = Outbox(tmp_path)
    ob.put("v", {"event_id": "a", "seq": 0}, track=("a", True))
    ob.put("v", {"event_id": "b", "seq": 0}, track=("b", True))
    ob.put("v", {"event_id": "a", "seq": 1}, track=("a", True))
    ob.put("v", {"event_id": "b", "seq": 1}, track=("b", False))  # b ended
    ob.put("other", {"n": 1})  # untracked
    ob.close()
    ob = Outbox(tmp_path)
    (last,) = ob.open_events()
    assert last.topic == "v" and last.payload == {"event_id": "a", "seq": 1}
    ob.close()


def test_a_drained_backlog_gives_its_space_back_and_the_outbox_goes_on(tmp_path, caplog):
    ob = Outbox(tmp_path, durable=False)
    path = tmp_path / OUTBOX_FILE
    ids = [ob.put("t/a", {"n": i, "pad": "x" * 400}) for i in range(6000)]  # a long outage
    for i in ids[:-1]:
        ob.remove(i)
    assert ob.shrink() == 0  # one event still waits: nothing is rewritten
    big = path.stat().st_size
    assert big > 2 << 20
    ob.remove(ids[-1])
    with caplog.at_level(logging.INFO, logger="maskd.outbox"):
        ob.maintain()  # the publisher's periodic call prunes, then shrinks
    assert path.stat().st_size < 64 * 1024 < big
    assert "gave" in caplog.text and "KiB of unused space back" in caplog.text
    assert ob.shrink() == 0  # nothing left to give back
    new = ob.put("t/a", {"n": "after"})
    assert new > ids[-1] and [r.payload["n"] for r in ob.pending()] == ["after"]
    ob.close()
    assert [r.payload["n"] for r in Outbox(tmp_path).pending()] == ["after"]


def test_a_drained_backlog_is_given_back_even_on_a_full_disk(tmp_path):
    from mqtt_broker import fill_disk, small_disk

    with small_disk(tmp_path / "disk", "4m") as d:
        ob = Outbox(d, reserve_bytes=0)  # no reserve to release: any room comes from the shrink
        ids = [ob.put("t", big(i)) for i in range(600)]
        for i in ids:
            ob.remove(i)
        filler = fill_disk(d)
        assert ob.shrink() > 2 << 20
        assert shutil.disk_usage(d).free > 2 << 20  # given back to the file system
        filler.unlink()
        new = ob.put("t", big(600))
        assert ob.in_memory() == 0 and ob.fault is None  # stored, not held in memory
        ob.close()
        assert [r.id for r in Outbox(d).pending()] == [new]


def backlog_with_little_room(d: Path, ob: Outbox) -> None:
    """A week's backlog in ``ob`` (4000 events, over 2 MiB), and the card, shared with other
    files, left with half the outbox's size free."""
    for k in range(20):
        ob.put_all([("t", {"n": k * 200 + i, "pad": "x" * 500}, None) for i in range(200)])
    stored = (d / OUTBOX_FILE).stat().st_size
    assert stored > 2 << 20
    (d / "other").write_bytes(b"\0" * (shutil.disk_usage(d).free - stored // 2))


def test_a_backlog_that_ages_out_at_once_is_dropped_with_little_room(tmp_path):
    """A week's backlog an earlier boot left, past the age bound when the Pi is back: dropping
    it in one commit wrote the whole file to the WAL again (8 MiB here, 64 MiB for 100 000
    events), so with less room than that the bounds failed at every prune, for good, the disk
    full, the reserve gone and new events only in memory; and with room the WAL kept that size
    while one event waited."""
    from mqtt_broker import small_disk

    clock = SteppedClock(uptime=5 * DAY)
    with small_disk(tmp_path / "disk", "16m") as d:
        ob = Outbox(d, durable=False, clock=clock, boot="boot-1")
        ob.close()
        backlog_with_little_room(d, ob := Outbox(d, durable=False, clock=clock, boot="boot-1"))
        ob.close()
        clock.run(8 * DAY)
        clock.uptime = 60.0
        ob = Outbox(d, clock=clock, boot="boot-2")
        new = ob.put("t", {"n": "new"})  # the broker still away: it waits
        assert ob.dropped == 4000 and ob.fault is None and ob.in_memory() == 0
        assert [r.id for r in ob.pending()] == [new]
        assert (d / f"{OUTBOX_FILE}-wal").stat().st_size <= 1 << 20
        ob.close()


def test_a_backlog_re_dated_at_a_clock_step_needs_little_room(tmp_path):
    """NTP's step re-dates this boot's rows (so the next boot ages them right); one commit for
    a week's backlog wrote the whole file to the WAL again, and with less room than that the
    prune failed at every try, re-dating again each time, the bounds never applied."""
    from mqtt_broker import small_disk

    clock = SteppedClock()
    with small_disk(tmp_path / "disk", "16m") as d:
        ob = Outbox(d, clock=clock)
        ob.prune()  # this boot's rows are looked at once after the open
        backlog_with_little_room(d, ob)
        clock.run(30)
        clock.wall += 10 * DAY  # NTP steps the clock
        new = ob.put("t", {"n": "new"})
        assert ob.fault is None and ob.in_memory() == 0 and ob.depth() == 4001
        assert (d / f"{OUTBOX_FILE}-wal").stat().st_size <= 1 << 20
        ob.close()
        with closing(sqlite3.connect(d / OUTBOX_FILE)) as db:
            assert db.execute("SELECT min(created) FROM outbox").fetchone()[0] > clock.wall - 60
            assert db.execute("SELECT max(id) FROM outbox").fetchone()[0] == new


def test_a_wal_a_large_commit_left_is_cut_back(tmp_path):
    """A large commit (what waited in memory through a full disk, stored at once) grows the WAL;
    SQLite reuses that file but never shrinks it, so it kept its largest size for good."""
    ob = Outbox(tmp_path)
    ob.put_all([("t", {"n": i, "pad": "x" * 500}, None) for i in range(4000)])
    wal = tmp_path / f"{OUTBOX_FILE}-wal"
    assert wal.stat().st_size > 2 << 20
    ob.put("t", {"n": "one"})
    ob.put("t", {"n": "two"})  # the WAL is checkpointed and begun again
    assert wal.stat().st_size <= 1 << 20
    ob.close()


def prune_steps(ob: Outbox) -> int:
    """SQLite's work for one prune (its virtual machine's steps, in thousands): a count that
    does not hang on the machine's speed or load, as a time would."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    ob._db.set_progress_handler(count, 1000)
    ob.prune()
    ob._db.set_progress_handler(None, 0)
    return steps[0]


@pytest.mark.parametrize("change", ["re-date", "age out this boot's", "age out an earlier boot's"])
def test_a_prune_in_parts_takes_time_in_proportion_to_the_backlog(tmp_path, monkeypatch, change):
    """Each part picked the rows to change by sorting every row still to change again: twice the
    backlog took four times as long, 6.2 s to re-date 100 000 events at NTP's step here (0.3 s in
    one commit), 2.5 s to drop them when aged, while the camera loop waited on the outbox."""
    monkeypatch.setattr("maskd.outbox.PRUNE_ROWS", 20)
    work = []
    for n in (2000, 4000):
        clock = SteppedClock(uptime=5 * DAY)
        d = tmp_path / f"{n}"
        ob = Outbox(d, durable=False, clock=clock, boot="boot-1")
        ob.prune()  # this boot's rows are looked at once after the open
        for k in range(0, n, 500):
            ob.put_all([("t", {"n": k + i}, None) for i in range(500)])
        if change == "re-date":
            clock.run(30)
            clock.wall += 10 * DAY  # NTP steps the clock
        else:
            clock.run(8 * DAY)
        if change == "age out an earlier boot's":
            ob.close()
            clock.uptime = 60.0
            ob = Outbox(d, durable=False, clock=clock, boot="boot-2")
        work.append(prune_steps(ob))
        left = ob.depth()
        ob.close()
        assert left == (n if change == "re-date" else 0)
    assert work[1] < 2.5 * work[0], work


def test_a_second_close_leaves_other_files_alone(tmp_path):
    """Two owners closing the outbox (two camera loops ending together) must not close its file
    descriptors twice: by then their numbers may belong to another file of the process."""
    ob = Outbox(tmp_path / "a")
    ob.put("t", {"n": 1})
    ob.close()
    others = [os.open(tmp_path / f"other{i}", os.O_RDWR | os.O_CREAT, 0o600) for i in range(4)]
    try:
        ob.close()
        for fd in others:
            os.fstat(fd)  # still open: not taken for the outbox's lock or reserve file
    finally:
        for fd in others:
            os.close(fd)
    again = Outbox(tmp_path / "a")
    assert [r.payload for r in again.pending()] == [{"n": 1}]
    again.close()


def test_doctor_says_the_reserve_a_running_maskd_holds(tmp_path):
    """The reserve maskd keeps for a full disk is exactly outbox_reserve_kb: doctor, beside the
    running service, says it is held (a reserve of exactly that size is held)."""
    from maskd.commands.doctor import inspect_outbox
    from maskd.config import Config, MqttConfig

    cfg = Config(device_id="dev1", camera="cam1", state_dir=tmp_path,
                 mqtt=MqttConfig(url="mqtt://127.0.0.1:1883"))
    ob = Outbox(tmp_path, reserve_bytes=cfg.mqtt.outbox_reserve_kb * 1024)
    try:
        ob.put("t", {"n": 0})
        verdict, detail = inspect_outbox(cfg)
    finally:
        ob.close()
    assert verdict == "OK" and "1 event(s) pending" in detail and detail.endswith(
        " free, reserve held"), detail


def faulted_once_ready(tmp_path: Path, script: str, inject: str) -> tuple[str, str]:
    """Run ``script`` (argv[1]: ``tmp_path``) until it prints `ready`, attach strace to it
    failing the outbox WAL's writes as ``inject`` says, let it go on; its stdout and stderr.
    So only what the script does after `ready` meets the fault (strace's counts of a whole
    run depend on SQLite's writes at the start)."""
    from test_faults_mqtt import strace_injecting

    strace = strace_injecting()
    p = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), str(tmp_path)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=Path(__file__).resolve().parent.parent)
    assert p.stdout is not None and p.stdin is not None
    assert p.stdout.readline() == "ready\n"
    log = tmp_path / "strace.log"
    tracer = subprocess.Popen(
        [strace, "-f", "-o", str(log), "-e", "trace=pwrite64", "-P",
         str(tmp_path / f"{OUTBOX_FILE}-wal"), "-e", f"inject=pwrite64:{inject}",
         "-p", str(p.pid)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 10
        while "attached" not in (tracer.stderr.readline() if tracer.stderr else ""):
            assert time.monotonic() < deadline and tracer.poll() is None, "strace did not attach"
        out, err = p.communicate("go\n", timeout=60)
    finally:
        tracer.terminate()
        tracer.wait(10)
    assert "INJECTED" in log.read_text(), "the fault met no write"
    assert p.returncode == 0, err
    return out, err


def test_an_io_error_deleting_on_a_disk_with_room_is_not_called_a_full_disk(tmp_path):
    """A delete that meets an I/O error (strace, attached once the rows are stored, fails the
    next WAL write with EIO) on a disk with room: it is said and retried as what it is (was:
    `disk full; released the reserve`, and the fault read `disk full` with gigabytes free,
    sending the operator to delete files instead of looking at the card)."""
    out, err = faulted_once_ready(tmp_path, """
        import logging, sys, time
        from pathlib import Path
        from maskd.outbox import Outbox
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        ob = Outbox(Path(sys.argv[1]))
        ids = [ob.put("t", {"n": i}) for i in range(5)]
        print("ready", flush=True)
        sys.stdin.readline()
        ob.remove(ids[0])
        print("fault:", ob.fault, flush=True)
        for i in ids[1:]:
            ob.remove(i)
        deadline = time.monotonic() + 10
        while ob.fault and time.monotonic() < deadline:
            ob.maintain()
            time.sleep(0.05)
        print("after:", ob.fault, ob.depth(), flush=True)
        ob.close()
    """, "error=EIO:when=1")
    assert "disk full" not in out + err, out + err
    assert "cannot delete acknowledged events: disk I/O error" in err, err
    assert "after: None 0" in out, out


def test_a_stop_that_cannot_record_an_end_does_not_say_it_stored_events(tmp_path):
    """A violation's end delivered from memory while every write fails (strace), then the stop:
    the stop says the record could not be stored, and nothing else (was also: `stored 0
    event(s) that were held in memory`, a WARNING of a store that stored nothing)."""
    out, err = faulted_once_ready(tmp_path, """
        import logging, sys
        from pathlib import Path
        from maskd.outbox import Outbox
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        ob = Outbox(Path(sys.argv[1]))
        ob.put("v", {"event_id": "a", "seq": 0}, track=("a", True))
        print("ready", flush=True)
        sys.stdin.readline()
        end = ob.put("v", {"event_id": "a", "seq": 1}, track=("a", False))
        ob.remove(end)  # the broker acknowledged it: delivered from memory
        ob.close()
    """, "error=EIO:when=1+")
    assert "which message 1 violation(s) sent last could not be stored" in err, err
    assert "stored 0 event(s)" not in err, err


def test_an_own_outbox_on_a_card_gone_read_only_is_said_read_only(tmp_path):
    """The outbox of maskd's own user on a card mounted read-only is 'Read-only file system',
    not a file of another user's that wants a chown (access() fails there for every user: the
    owner is what tells them apart)."""
    from mqtt_broker import small_disk

    with small_disk(tmp_path / "card") as card:
        Outbox(card).close()
        subprocess.run(["mount", "-o", "remount,ro", str(card)], check=True)
        with pytest.raises(OutboxError) as err:
            Outbox(card)
        assert str(err.value) == (f"state_dir {card}: cannot create the MQTT outbox there: "
                                  "Read-only file system")
