"""Fault suite, MQTT side: real mosquitto, real SQLite on a real (tiny) tmpfs, real kills.

Each test is one fault from docs/reliability.md, injected the way it happens on a device:
the disk fills while the broker is down, the broker's ACL refuses the events, the daemon is
killed with violations open. Together they run in well under a minute.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path

import pytest
from loop_parts import close_loops
from mqtt_broker import (
    Broker,
    Mqtt311Only,
    NoPubacks,
    QuotaExceeded,
    StrictReceiveMaximum,
    Subscriber,
    card_error,
    fail_card,
    fill_disk,
    free_port,
    sd_card,
    small_disk,
    unique_events,
    wait_until,
)
from mqtt_driver import script
from test_cameras import read_until as read_stderr_until
from test_mqtt import (
    CAM,
    REPO,
    cfg_for,
    check_schema,
    dedup,
    events,
    read_until,
    start_driver,
)

from maskd.commands.doctor import FAIL, OK, WARN, inspect_outbox, probe_broker
from maskd.config import MqttConfig
from maskd.mqtt import MqttSink
from maskd.notify import status_text
from maskd.outbox import RETRY_S, Outbox
from maskd.types import FaceCounts, LoopStats


def test_disk_full_mid_run_broker_down_then_up(tmp_path, caplog):
    """The issue's reproduction: state dir on a 256 KiB tmpfs, broker down, two events, the
    tmpfs filled, more events, the broker back. Nothing is lost, the publisher thread lives,
    the fault shows in stats, faults() (status text) and doctor, and goes when space returns."""
    caplog.set_level(logging.WARNING)
    with small_disk(tmp_path / "state") as state, \
            Broker(tmp_path / "b", persistence=True) as b:
        sub = Subscriber(b, [f"{CAM}/violation", f"{CAM}/stats"], client_id="fault-sub",
                         clean=False)
        b.stop()
        cfg = cfg_for(b, state, outbox_reserve_kb=32, stats_interval_s=1.0)
        sink = MqttSink.from_config(cfg, model_name="m")
        evs = script("d", 100, 1)
        for ev in evs[:2]:
            sink.emit(ev)
        filler = fill_disk(state)
        n = 2
        while sink.health()["memory_queue"] < 5:  # free pages take a few, then memory
            sink.emit(evs[n])
            n += 1
        evs = evs[:n]
        h = sink.health()
        assert h["outbox_depth"] == len(evs) and h["memory_queue"] > 0
        assert h["outbox_error"] == "database or disk is full"
        assert sink.faults()[0].startswith("MQTT outbox: database or disk is full, ")
        status = status_text(LoopStats(fps=9.8, active=0, faults=tuple(sink.faults())))
        assert status.startswith("9.8 fps | 0 active violations | MQTT outbox: database or disk")
        verdict, detail = inspect_outbox(cfg)
        assert verdict == FAIL and "the disk is full" in detail, detail

        b.start()  # the broker is back; the disk is still full
        want = [(e.event_id, e.seq) for e in evs]
        assert sub.wait(lambda ms: len(dedup(violations(ms))) >= len(want), 20)
        assert dedup(violations(sub.messages)) == want  # all of them, in order
        assert wait_until(lambda: sink.health()["outbox_depth"] == 0, 10)
        assert sink._worker.is_alive()  # the bug: an OperationalError in remove() ended it
        assert sub.wait(lambda ms: any(m.topic == f"{CAM}/stats" and m.json()["outbox_error"]
                                       for m in ms), 5), "stats never reported the fault"

        filler.unlink()  # space returns
        assert wait_until(lambda: sink.health()["outbox_error"] is None, 10), sink.health()
        assert sink.faults() == [] and inspect_outbox(cfg)[0] == OK
        late = script("late", 1, 0)[0]
        sink.emit(late)
        assert sink.health()["memory_queue"] == 0  # stored durably again
        assert sink.flush(10)
        assert sub.wait(lambda ms: (late.event_id, 0) in dedup(violations(ms)), 5)
        sink.close()
        sub.close()
    assert "unexpected error" not in caplog.text


def test_events_lost_from_a_full_memory_queue_are_a_problem_for_a_while_not_for_good(
        tmp_path, monkeypatch):
    """A disk full for a while, the broker away: the memory queue overflows and events are lost.
    That is a problem line (status line, Home Assistant's problem sensor) while the fault lasts
    and for LOST_SHOWN_S after the last loss, then no more: was, for the rest of the process's
    life, months, so the problem sensor stayed on after the disk and broker were long fine."""
    import maskd.mqtt.sink as sink_mod

    monkeypatch.setattr(sink_mod, "LOST_SHOWN_S", 2.0, raising=False)
    with small_disk(tmp_path / "state") as state, Broker(tmp_path / "b") as b:
        b.stop()
        cfg = cfg_for(b, state, outbox_reserve_kb=32, memory_queue_max=3)
        sink = MqttSink.from_config(cfg, model_name="m")
        filler = fill_disk(state)
        for ev in script("lost", 20, 0):
            sink.emit(ev)
        assert sink.health()["memory_dropped"] > 0
        lost = [f for f in sink.faults() if "memory queue full" in f]
        assert lost, sink.faults()
        filler.unlink()
        b.start()
        assert wait_until(lambda: sink.health()["outbox_error"] is None
                          and sink.health()["outbox_depth"] == 0, 15), sink.health()
        assert lost[0] in sink.faults()  # just lost: still said a while, with the fault gone
        assert wait_until(lambda: sink.faults() == [], 5), sink.faults()
        assert sink.health()["memory_dropped"] > 0  # still counted since start
        sink.close()


def test_start_on_a_full_disk_delivers_what_was_pending_and_keeps_new_events(tmp_path, caplog):
    """A Pi restarted with a full card: the outbox must still open (SQLite cannot create its
    shared-memory file there), send what the last run left, and keep new events in memory
    until there is room."""
    caplog.set_level(logging.WARNING)
    with small_disk(tmp_path / "state") as state, \
            Broker(tmp_path / "b", persistence=True) as b:
        sub = Subscriber(b, [f"{CAM}/violation"], client_id="full-start-sub", clean=False)
        b.stop()
        cfg = cfg_for(b, state, outbox_reserve_kb=32)
        evs = script("s", 100, 1)
        sink = MqttSink.from_config(cfg, model_name="m")
        for ev in evs[:3]:  # start, update, end of one violation
            sink.emit(ev)
        sink.close()  # broker down: they stay in the outbox
        filler = fill_disk(state)

        sink = MqttSink.from_config(cfg, model_name="m")  # was: OutboxError, no start at all
        assert "opened it without SQLite's shared-memory file" in caplog.text
        assert sink.health()["outbox_depth"] == 3
        for ev in evs[3:6]:  # the next violation
            sink.emit(ev)
        h = sink.health()
        assert h["outbox_depth"] == 6 and h["memory_queue"] == 3, h
        fault = sink.faults()[0] if sink.faults() else ""
        assert fault.startswith("MQTT outbox: ") and "full" in fault, sink.faults()
        verdict, detail = inspect_outbox(cfg)
        assert verdict == FAIL and "until there is room again" in detail, detail

        b.start()
        want = [(e.event_id, e.seq) for e in evs[:6]]
        assert sub.wait(lambda ms: len(dedup(violations(ms))) >= len(want), 20)
        assert dedup(violations(sub.messages)) == want  # the old ones first, then the new
        assert wait_until(lambda: sink.health()["outbox_depth"] == 0, 10)

        filler.unlink()
        assert wait_until(lambda: sink.faults() == [], 10), sink.faults()
        sink.emit(evs[6])
        assert sink.health()["memory_queue"] == 0  # stored durably again
        verdict, detail = inspect_outbox(cfg)  # readable again while maskd runs
        assert verdict == OK and "event(s) pending" in detail, detail
        assert sink.flush(10)
        sink.close()
        sub.close()
    assert "unexpected error" not in caplog.text


def test_a_state_dir_gone_read_only_keeps_delivering_and_says_why(tmp_path, caplog):
    """A failing SD card: the kernel remounts its ext4 read-only under the running outbox, and
    SQLite says only 'disk I/O error'. Events still reach the broker (through memory, also
    across an outage), the fault and doctor name the read-only file system, and the stop
    closes the outbox (was: OSError from giving back the reserve, a traceback, no close)."""
    caplog.set_level(logging.WARNING)
    with sd_card(tmp_path / "card") as card, Broker(tmp_path / "b", persistence=True) as b:
        sub = Subscriber(b, [f"{CAM}/violation"], client_id="ro-sub", clean=False)
        cfg = cfg_for(b, card / "state")
        sink = MqttSink.from_config(cfg, model_name="m")
        evs = script("ro", 5, 1, left_open=1)  # open at the stop: its record cannot be kept
        for ev in evs[:3]:
            sink.emit(ev)
        assert sink.flush(10) and sink.faults() == []
        fail_card(card)
        for ev in evs[3:8]:
            sink.emit(ev)
        fault = sink.faults()[0] if sink.faults() else ""
        assert fault.startswith("MQTT outbox: disk I/O error: its file system is read-only now "
                                "(the kernel remounts it so after a storage error: a failing "
                                "SD card?"), sink.faults()
        verdict, detail = inspect_outbox(cfg)
        assert verdict == FAIL and "read-only now" in detail, detail
        assert "kept in memory only" in detail

        b.stop()
        for ev in evs[8:12]:  # the last violation's start and update come later
            sink.emit(ev)
        assert sink.health()["memory_queue"] >= 4  # and any not acknowledged yet
        b.start()
        want = [(e.event_id, e.seq) for e in evs[:12]]
        assert sub.wait(lambda ms: dedup(violations(ms)) == want, 20), dedup(violations(sub.messages))
        assert sink.flush(10) and sink.health()["memory_queue"] == 0
        # Nothing left to store: the publisher's maintain() (every RETRY_S) must not take that
        # for storage working again while the card is read-only (was: "storage works again"
        # after events were delivered from memory, the fault gone until the next one).
        time.sleep(2.5 * RETRY_S)
        assert any("read-only now" in f for f in sink.faults()), sink.faults()
        for ev in evs[12:]:
            sink.emit(ev)
        want = [(e.event_id, e.seq) for e in evs]
        assert sub.wait(lambda ms: dedup(violations(ms)) == want, 20), dedup(violations(sub.messages))
        assert sink.flush(10)
        sink.close()
        sub.close()
    assert re.search(r"which message \d+ violation\(s\) sent last could not be stored \(disk "
                     r"I/O error: its file system is read-only now", caplog.text), caplog.text
    assert "unexpected error" not in caplog.text and "works again" not in caplog.text
    assert re.search(r"cannot write \S+/mqtt-session\.json: its file system is read-only now "
                     r"\(.*\); the next start will report this stop as unclean", caplog.text), \
        caplog.text


def _statuses(sock: socket.socket) -> list[str]:
    """The STATUS= lines a finished run sent to its (systemd's) notify socket."""
    sock.setblocking(False)
    out = []
    while True:
        try:
            out += [ln for ln in sock.recv(4096).decode().splitlines() if ln.startswith("STATUS=")]
        except BlockingIOError:
            return out


def test_errors_the_cards_file_system_records_are_a_problem_with_or_without_mqtt(
        tmp_path, default_model):
    """A card that starts failing: ext4 counts its errors in the superblock (until an fsck
    repairs them), before the kernel remounts it read-only, if it ever does. A real `maskd run`
    names them for every place it writes there, with one WARNING: in systemd's status line and
    Home Assistant's problem sensor with MQTT, in the status line with JSON lines alone (was:
    only the MQTT outbox looked, so a run without MQTT never said it); doctor warns in a card
    row; events are still delivered. A card without errors says nothing."""
    from maskd.commands.doctor import Doctor

    device, cam = "door1", "entrance"
    recorded = (r": its file system \(ext4 on loop\d+\) has recorded 1 error\(s\) at \S+ \(the "
                r"last in \w+\): a failing SD card\? `dmesg` says more; back up /etc/maskd and "
                r"replace the card soon \(the kernel makes it read-only at such an error, if not "
                r"already\)")

    def run(card, *more: str) -> tuple[subprocess.CompletedProcess, list[str]]:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(tmp_path / "notify"))
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"}
        env.pop("WATCHDOG_PID", None)
        try:
            r = subprocess.run(
                [sys.executable, "-m", "maskd", "run", "--source", "demo", "--exit-at-end",
                 "--device-id", device, "--camera", cam, "--jsonl", str(card / "events.jsonl"),
                 "--model", str(default_model), "--detector", "blazeface", *more],
                capture_output=True, text=True, timeout=180, cwd=REPO, env=env)
            return r, _statuses(sock)
        finally:
            sock.close()
            (tmp_path / "notify").unlink()

    # 256 MB: doctor's state dir row is OK from 100 MiB free
    with sd_card(tmp_path / "card", "256M", "continue") as card, Broker(tmp_path / "b") as b:
        cfg = cfg_for(b, card / "state")
        r, statuses = run(card, "--mqtt", b.url, "--state-dir", str(card / "state"))
        assert r.returncode == 0, r.stderr[-3000:]
        assert statuses and not any("has recorded" in s for s in statuses + [r.stderr]), statuses
        doc = Doctor(cfg, 1)
        doc.state_dir()
        doc.cards()
        assert [c.verdict for c in doc.checks] == [OK], doc.checks

        card_error(card)
        sub = Subscriber(b, [f"maskd/{device}/{cam}/stats", f"maskd/{device}/{cam}/violation"])
        r, statuses = run(card, "--mqtt", b.url, "--state-dir", str(card / "state"))
        assert r.returncode == 0, r.stderr[-3000:]
        said = re.compile(rf".*state_dir {card}/state \(and jsonl\.path\){recorded}")
        assert len([ln for ln in r.stderr.splitlines() if said.fullmatch(ln)]) == 1, r.stderr[-3000:]
        assert any(said.fullmatch(s) for s in " | ".join(statuses).split(" | ")), statuses[-3:]
        assert sub.wait(lambda ms: any(m.topic.endswith("/stats") and any(
            said.fullmatch(p) for p in m.json()["problems"]) for m in ms), 10), sub.messages
        assert any(m.topic.endswith("/violation") for m in sub.messages)  # still delivered
        sub.close()

        r, statuses = run(card)  # JSON lines alone: no outbox, the card said all the same
        assert r.returncode == 0, r.stderr[-3000:]
        said = re.compile(rf".*jsonl\.path {card}/events\.jsonl{recorded}")
        assert any(said.fullmatch(s) for s in " | ".join(statuses).split(" | ")), statuses[-3:]
        assert len([ln for ln in r.stderr.splitlines() if said.fullmatch(ln)]) == 1, r.stderr[-3000:]
        assert (card / "events.jsonl").read_text().count('"event_type"') > 4  # still written
        doc = Doctor(cfg.model_copy(update={"jsonl": cfg.jsonl.model_copy(
            update={"path": str(card / "events.jsonl")})}), 1)
        doc.state_dir()
        doc.cards()
        (writable, row) = doc.checks
        assert writable.verdict == OK and "writable" in writable.detail, doc.checks
        assert row.name == "card" and row.verdict == WARN, row
        assert re.fullmatch(rf"state_dir {card}/state \(and jsonl\.path\){recorded}", row.detail), row


def test_read_only_now_sees_both_kinds_of_read_only_mount(tmp_path):
    """A mount made read-only (its flags say so) and ext4's emergency remount (kernel 6.x
    leaves the flags rw: only a write finds out); a writable folder is left without a trace."""
    from maskd.files import read_only_now

    with small_disk(tmp_path / "ro", "64k") as ro, sd_card(tmp_path / "card") as card:
        assert not read_only_now(ro) and not read_only_now(card)
        assert list(ro.iterdir()) == [] and sorted(p.name for p in card.iterdir()) == ["lost+found"]
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        fail_card(card)
        assert read_only_now(ro) and read_only_now(card)
    assert not read_only_now(tmp_path / "no such folder")


def violations(ms: list) -> list[dict]:
    return [m.json() for m in ms if m.topic == f"{CAM}/violation"]


def test_a_first_start_on_a_full_disk_runs_and_delivers(tmp_path, default_model):
    """`maskd run` with a state dir on a full disk and no outbox yet (a first start, or a
    damaged outbox moved aside): it must run and deliver from memory (was: exit 78, and systemd
    never restarts after 78), saying why nothing is stored."""
    topic = "maskd/door1/entrance/violation"
    with small_disk(tmp_path / "state") as state, Broker(tmp_path / "b") as b:
        fill_disk(state)
        sub = Subscriber(b, [topic])
        r = subprocess.run(
            [sys.executable, "-m", "maskd", "run", "--source", "demo", "--exit-at-end",
             "--device-id", "door1", "--camera", "entrance", "--mqtt", b.url, "--state-dir",
             str(state), "--model", str(default_model), "--detector", "blazeface",
             "--flush-timeout", "30"],
            capture_output=True, text=True, timeout=180, cwd=REPO)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "cannot create the outbox: database or disk is full" in r.stderr
        assert sub.wait(lambda ms: len(ms) >= 2, 10)
        assert [m.json()["event_type"] for m in sub.messages] == ["start", "end"]
        sub.close()


def strace_injecting() -> str:
    """strace's path, where it can trace here (a container may forbid ptrace); else a skip."""
    tool = shutil.which("strace")
    if tool is None:
        pytest.skip("strace is not installed (apt-get install strace): it injects the I/O errors")
    if subprocess.run([tool, "-qq", "-o", "/dev/null", "true"], capture_output=True).returncode:
        pytest.skip("strace cannot trace here (ptrace not permitted)")
    return tool


def test_a_first_start_whose_outbox_creation_fails_part_way_runs_and_delivers(
        tmp_path, default_model):
    """A first start on a card whose writes fail after SQLite wrote the outbox's first page (an
    I/O error injected into every later write by strace): the half-made file holds nothing to
    send, so maskd runs and delivers from memory as it does when the disk is full (was: exit 78,
    which systemd never restarts: the door went unwatched until someone looked)."""
    strace = strace_injecting()
    topic = "maskd/door1/entrance/violation"
    state = tmp_path / "state"
    state.mkdir()
    db = state / "outbox.sqlite3"
    with Broker(tmp_path / "b") as b:
        sub = Subscriber(b, [topic])
        r = subprocess.run(
            [strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=pwrite64",
             "-P", str(db), "-P", f"{db}-wal",
             "-e", "inject=pwrite64:error=EIO:when=2+",
             sys.executable, "-m", "maskd", "run", "--source", "demo", "--exit-at-end",
             "--device-id", "door1", "--camera", "entrance", "--mqtt", b.url, "--state-dir",
             str(state), "--model", str(default_model), "--detector", "blazeface",
             "--flush-timeout", "30"],
            capture_output=True, text=True, timeout=180, cwd=REPO)
        assert r.returncode == 0, r.stderr[-3000:]
        assert db.stat().st_size > 0, "the fault did not come after the first page"
        assert "cannot create the outbox: disk I/O error" in r.stderr
        assert sub.wait(lambda ms: len(ms) >= 2, 10)
        assert [m.json()["event_type"] for m in sub.messages] == ["start", "end"]
        sub.close()


def test_a_start_whose_card_cannot_read_the_outbox_exits_75_for_systemd_to_retry(
        tmp_path, default_model):
    """Events left pending by a run with the broker away, then a start whose card fails every
    read of the outbox (EIO injected by strace): exit 75, naming the file and the error, so
    systemd starts maskd again, and the events stay for that start (was: exit 78, a setup
    error systemd never restarts: the door unwatched until someone looked). That start ends
    a minute after it began, so the restarts never meet the unit's start limit (was: at once,
    and the fifth restart within half a minute left the unit failed for good). Meanwhile
    systemctl status says why it waits (was: 'start failed: exits in 58 s', no cause), and a
    stop then ends it cleanly (was: exit 75, so `systemctl stop` left the unit failed)."""
    from test_notify import NotifySocket

    strace = strace_injecting()
    state = tmp_path / "state"
    db = state / "outbox.sqlite3"
    run = [sys.executable, "-m", "maskd", "run", "--source", "demo", "--exit-at-end",
           "--mqtt", f"mqtt://127.0.0.1:{free_port()}", "--state-dir", str(state), "--model",
           str(default_model), "--detector", "blazeface", "--flush-timeout", "1"]
    first = subprocess.run(run, capture_output=True, text=True, timeout=180, cwd=REPO)
    assert first.returncode == 75, first.stderr[-3000:]
    with closing(sqlite3.connect(db)) as con:
        pending = con.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    assert pending >= 2
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    failing = subprocess.Popen(
        [strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=pread64", "-P", str(db), "-P",
         f"{db}-wal", "-e", "inject=pread64:error=EIO:when=1+", *run],
        stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "NOTIFY_SOCKET": sock.address})
    try:
        seen = read_stderr_until(failing, "this start ends in", timeout=60)
        # Failing within seconds, five restarts met the unit's start limit (5 in 300 s) in
        # half a minute and left maskd failed for good: each such start lasts a minute.
        time.sleep(3)
        assert failing.poll() is None, seen
        [maskd] = Path(f"/proc/{failing.pid}/task/{failing.pid}/children").read_text().split()
        os.kill(int(maskd), signal.SIGTERM)  # a stop ends the wait (strace passes on its end)
        _, err = failing.communicate(timeout=30)
    finally:
        if failing.poll() is None:
            failing.kill()
            failing.communicate()
        statuses = [m.get("STATUS") or "" for m in sock.drain(0.2)]
        sock.close()
    err = seen + err
    assert failing.returncode == 0, err[-3000:]
    assert "SIGTERM received while waiting after a failed start: stopping" in err, err[-3000:]
    [status] = [s for s in statuses if "exits in" in s]
    assert re.fullmatch(rf"start failed \(outbox {re.escape(str(db))}: disk I/O error\): "
                        r"exits in (5\d|60) s with 75 \(restarts a minute apart\)",
                        status), statuses
    assert f"maskd run: outbox {db}: disk I/O error" in err, err[-3000:]
    assert re.search(r"WARNING maskd: this start ends in (5\d|60) s with exit 75, so that "
                     r"systemd's restarts come a minute apart", err), err[-3000:]
    with closing(sqlite3.connect(db)) as con:
        assert con.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == pending
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_stop_on_a_full_disk_does_not_promise_the_next_start_what_is_only_in_memory(
        tmp_path, default_model):
    """Broker down, state dir full: the stop said every unacknowledged event was "kept in
    .../outbox.sqlite3 for the next start", and the next line said they were lost."""
    with small_disk(tmp_path / "state") as state:
        fill_disk(state)
        r = subprocess.run(
            [sys.executable, "-m", "maskd", "run", "--source", "demo", "--exit-at-end",
             "--mqtt", f"mqtt://127.0.0.1:{free_port()}", "--state-dir", str(state), "--model",
             str(default_model), "--detector", "blazeface", "--flush-timeout", "1"],
            capture_output=True, text=True, timeout=180, cwd=REPO)
    assert r.returncode == 75, r.stderr[-3000:]
    said = [ln for ln in r.stderr.splitlines() if "not yet acknowledged" in ln]
    assert said and "0 kept in" in said[0] and "held in memory only" in said[0], said
    assert "could not be stored" in r.stderr and "are lost" in r.stderr


def test_acl_denied_publish_is_kept_and_reported_and_exits_75(tmp_path, default_model):
    """`maskd run --exit-at-end` against a broker whose ACL denies the violation topic: exit 75,
    the refusal in the log and the systemd status, the events kept for a later start."""
    device, cam = "door1", "entrance"
    topic = f"maskd/{device}/{cam}/violation"
    state = tmp_path / "state"
    status_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    status_sock.bind(str(tmp_path / "notify"))
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"), "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    with Broker(tmp_path / "b", acl=f"topic deny {topic}\ntopic readwrite #") as b:
        r = subprocess.run(
            [sys.executable, "-m", "maskd", "run", "--source", "demo", "--exit-at-end",
             "--device-id", device, "--camera", cam, "--mqtt", b.url, "--state-dir", str(state),
             "--model", str(default_model), "--detector", "blazeface", "--flush-timeout", "30"],
            capture_output=True, text=True, timeout=180, cwd=REPO, env=env)
    assert r.returncode == 75, r.stderr[-3000:]
    assert f"refused an event on {topic}: Not authorized" in r.stderr
    assert "2 event(s) refused by the broker (Not authorized)" in r.stderr
    status_sock.setblocking(False)
    statuses = []
    while True:
        try:
            statuses += [ln for ln in status_sock.recv(4096).decode().splitlines()
                         if ln.startswith("STATUS=")]
        except BlockingIOError:
            break
    status_sock.close()
    assert any("MQTT: 1 event(s) refused by the broker" in s for s in statuses), statuses[-5:]

    ob = Outbox(state)  # kept, in order
    assert [r.payload["event_type"] for r in ob.pending()] == ["start", "end"]
    ob.close()
    with Broker(tmp_path / "b2") as b2:  # a broker that takes them: the next start delivers
        sub = Subscriber(b2, [topic])
        d = start_driver(b2.url, state, "--then", "exit", "--flush-timeout", "20")
        assert d.wait(30) == 0, d.stderr.read()[-2000:]
        assert sub.wait(lambda ms: len(ms) >= 2, 5)
        assert [m.json()["event_type"] for m in sub.messages] == ["start", "end"]
        sub.close()


def test_doctor_checks_publish_rights_mqtt5_and_by_round_trip_on_311(tmp_path):
    deny = "topic deny maskd/dev1/cam1/doctor\ntopic readwrite #"
    with Broker(tmp_path / "open") as open_b, Broker(tmp_path / "acl", acl=deny) as acl_b:
        for broker, want in ((open_b, OK), (acl_b, FAIL)):
            relay = Mqtt311Only(broker)
            for url, version in ((broker.url, "MQTT 5"), (relay.url, "MQTT 3.1.1")):
                verdict, detail = probe_broker(cfg_for(relay if "3.1.1" in version else broker,
                                                       tmp_path / "state"))
                assert verdict == want and version in detail and url in detail, detail
                if want == OK:
                    assert ("round trip" if "3.1.1" in version else "may publish") in detail
                elif version == "MQTT 5":
                    assert "publishing refused on maskd/dev1/cam1/doctor: Not authorized" in detail
                else:
                    assert "never came back" in detail
            relay.close()


def test_doctor_fails_a_listener_whose_limits_run_cannot_keep(tmp_path):
    """The limits a broker's CONNACK announces, held against what `run` sends: a listener that
    takes only QoS 0 (maskd's last will and messages are QoS 1) and a maximum packet size below
    the discovery config (never sent: Home Assistant would not find the device) are FAIL with
    what to change; without discovery that limit is no problem. Was: `no PUBACK for a test
    publish` for the first, OK for the second."""
    qos0, small = Broker(tmp_path / "qos0"), Broker(tmp_path / "small")
    qos0.conf.write_text(qos0.conf.read_text() + "max_qos 0\n")
    small.conf.write_text(small.conf.read_text() + "max_packet_size 2000\n")
    with qos0, small:
        verdict, detail = probe_broker(cfg_for(qos0, tmp_path / "state"))
        assert verdict == FAIL and "takes only QoS 0" in detail and "max_qos 0" in detail, detail
        verdict, detail = probe_broker(cfg_for(small, tmp_path / "state"))
        assert verdict == FAIL, detail
        size = re.search(r"at most 2000 bytes .* discovery config on homeassistant/device/"
                         r"maskd_dev1_cam1/config is (\d+) bytes", detail)
        assert size and int(size[1]) > 2000, detail
        verdict, detail = probe_broker(cfg_for(small, tmp_path / "state", discovery=False))
        assert verdict == OK, detail


def test_doctor_warns_when_the_acl_keeps_detect_set_from_maskd(tmp_path):
    """mosquitto grants a SUBSCRIBE that its ACL gives no read right for, then never delivers:
    with write-only rights under the prefix the Home Assistant switch did nothing and doctor
    said OK. A round trip beside detect/set tells (MQTT 5 and 3.1.1), never on the live
    switch's own topic."""
    write_only = ("topic readwrite maskd/dev1/cam1/doctor\ntopic write maskd/#\n"
                  "topic readwrite homeassistant/#")
    with Broker(tmp_path / "open") as open_b, Broker(tmp_path / "acl", acl=write_only) as acl_b:
        for broker, want in ((open_b, OK), (acl_b, WARN)):
            live = Subscriber(open_b, [f"{CAM}/detect/set"])
            relay = Mqtt311Only(broker)
            for url in (broker.url, relay.url):
                cfg = cfg_for(relay if url == relay.url else broker, tmp_path / "state")
                verdict, detail = probe_broker(cfg)
                assert verdict == want and url in detail, detail
                if want == OK:
                    assert f"may receive on {CAM}/detect/doctor" in detail, detail
                else:
                    assert (f"never came back on {CAM}/detect/doctor" in detail
                            and f"read {CAM}/detect/set" in detail), detail
            relay.close()
            time.sleep(0.5)
            assert live.messages == [], "doctor touched the live switch"
            live.close()


def test_doctor_checks_publish_rights_under_the_discovery_prefix(tmp_path):
    """An ACL granting only the device's prefix hides the device from Home Assistant: doctor
    says so (MQTT 5 and 3.1.1), and passes once discovery is off."""
    with Broker(tmp_path / "acl", acl="topic deny homeassistant/#\ntopic readwrite #") as b:
        relay = Mqtt311Only(b)
        for broker in (b, relay):
            verdict, detail = probe_broker(cfg_for(broker, tmp_path / "state"))
            assert verdict == FAIL, detail
            assert "homeassistant/device/maskd_dev1_cam1/doctor" in detail
            assert "discovery_prefix (homeassistant/#)" in detail
            verdict, detail = probe_broker(cfg_for(broker, tmp_path / "state", discovery=False))
            assert verdict == OK and "homeassistant" not in detail, detail
        relay.close()


def test_doctor_checks_the_publish_rights_of_a_cameras_maps_cameras(tmp_path):
    """With a `cameras:` map `run` publishes for those cameras, never for the top-level
    `camera`: doctor must check their topics (an ACL granting exactly them passes; one missing
    a camera fails naming it), MQTT 5 and 3.1.1."""
    from maskd.config import parse_config

    grant = ["topic readwrite maskd/dev1/status/#", "topic readwrite homeassistant/#",
             "topic readwrite maskd/dev1/front/#"]
    cams = [g for g in grant if "status" not in g] + ["topic readwrite maskd/dev1/back/#"]
    with Broker(tmp_path / "all", acl="\n".join([*grant, "topic readwrite maskd/dev1/back/#"])
                ) as every, Broker(tmp_path / "one", acl="\n".join(grant)) as front_only, \
            Broker(tmp_path / "nodev", acl="\n".join(cams)) as no_device_status:
        for broker, want in ((every, OK), (front_only, FAIL), (no_device_status, FAIL)):
            relay = Mqtt311Only(broker)
            for url in (broker.url, relay.url):
                cfg = parse_config({"device_id": "dev1", "state_dir": str(tmp_path / "state"),
                                    "mqtt": {"url": url},
                                    "cameras": {"front": {"source": {"kind": "demo"}},
                                                "back": {"source": {"kind": "demo"}}}})
                verdict, detail = probe_broker(cfg)
                assert verdict == want, detail
                assert "maskd/dev1/camera/" not in detail, detail
                if broker is no_device_status:  # the device's status (its last will) refused
                    assert "maskd/dev1/status/doctor" in detail, detail
                    continue
                assert "maskd/dev1/back/doctor" in detail, detail
                if want == OK:
                    assert "maskd/dev1/front/doctor" in detail, detail
                    assert "homeassistant/device/maskd_dev1_back/doctor" in detail, detail
            relay.close()


def test_refused_discovery_and_state_are_reported(tmp_path, caplog):
    """Retained messages that are not events (discovery, state) refused by the broker's ACL:
    an error naming the topic, stats.refused_topics and faults(); gone once accepted."""
    caplog.set_level(logging.WARNING)
    deny = f"topic deny homeassistant/#\ntopic deny {CAM}/stats\ntopic readwrite #"
    with Broker(tmp_path / "b", acl=deny) as b:
        sink = MqttSink.from_config(cfg_for(b, tmp_path / "state"))
        assert wait_until(lambda: sink.connected, 10)
        sink.on_stats(LoopStats(frames=1))
        assert wait_until(lambda: sink.health()["refused_topics"] == 2, 10)
        text = caplog.text
        assert "refused homeassistant/device/maskd_dev1_cam1/config: Not authorized" in text
        assert f"refused {CAM}/stats: Not authorized" in text
        assert sink.faults() == ["MQTT: broker refuses 2 topic(s), e.g. "
                                 "homeassistant/device/maskd_dev1_cam1/config"]
        assert sink.health()["refused"] == 0  # no event was refused
        sink.close()


def test_a_refused_topic_is_no_fault_once_the_broker_takes_it_again(tmp_path):
    """The ACL fixed (mosquitto reloads it on SIGHUP): the next message on the refused topic is
    accepted and the fault goes, from faults() (status line, status page) and stats."""
    deny = f"topic deny {CAM}/violations\ntopic readwrite #"
    with Broker(tmp_path / "b", acl=deny) as b:
        sub = Subscriber(b, [f"{CAM}/violations"])
        sink = MqttSink.from_config(cfg_for(b, tmp_path / "state"))
        assert wait_until(lambda: sink.connected, 10)

        def people(active: int) -> FaceCounts:
            return FaceCounts(faces=1, masked=0, unmasked=active, unjudged=0, active=active,
                              detect_enabled=True, timestamp=time.time())

        sink.on_state(people(1))
        assert wait_until(lambda: sink.health()["refused_topics"] == 1, 10)
        assert sink.faults() == [f"MQTT: broker refuses 1 topic(s), e.g. {CAM}/violations"]
        (b.dir / "acl").write_text("topic readwrite #\n")
        os.kill(b.proc.pid, signal.SIGHUP)  # mosquitto reloads its ACL
        flips = iter(range(10 ** 6))  # a change each time: each is published
        assert wait_until(lambda: (sink.on_state(people(next(flips) % 2))
                                   or sub.on(f"{CAM}/violations")), 20), b.log()[-1500:]
        assert wait_until(lambda: sink.health()["refused_topics"] == 0, 10), sink.faults()
        assert sink.faults() == []
        sink.close()
        sub.close()


def test_an_acl_that_refuses_every_topic_is_not_a_line_per_topic_every_minute(tmp_path, caplog):
    """An ACL that grants maskd no topic of its own (`topic read maskd/#`, a common slip): each
    refused topic is named once, then the steady fault is one line a minute for the side topics
    (and one for the events), not one per topic (was: about 8 ERROR lines a minute per camera
    for as long as the ACL stayed wrong, 11,500 a day, though reliability.md promises every
    fault at most once a minute). Here the minute is shortened."""
    from maskd.lograte import Throttle

    deny = "topic read maskd/#\ntopic readwrite homeassistant/#"
    with Broker(tmp_path / "b", acl=deny) as b:
        sink = MqttSink.from_config(cfg_for(b, tmp_path / "state"))
        assert wait_until(lambda: sink.connected, 10)
        sink._log_once_a_minute = Throttle(every_s=0.4)
        with caplog.at_level(logging.ERROR, logger="maskd.mqtt.sink"):
            for n in range(5):  # five "minutes" of the fault, people coming and going
                sink.on_state(FaceCounts(faces=1, masked=0, unmasked=n % 2, unjudged=0,
                                         active=n % 2, detect_enabled=True,
                                         timestamp=time.time()))
                sink.on_stats(LoopStats(frames=1))
                time.sleep(0.6)
            sink.close()  # its offline status: refused again
    lines = [r.getMessage() for r in caplog.records if "refused maskd/" in r.getMessage()]
    named = {re.search(r"refused (\S+):", m).group(1) for m in lines}
    assert {f"{CAM}/stats", f"{CAM}/violations", f"{CAM}/status"} <= named, lines
    # every topic once, then at most one line for each "minute" and the close's
    assert len(lines) <= len(named) + 5 + 1, "\n".join(lines)


def test_a_steady_refusal_is_said_again_each_minute_for_events_and_other_topics_alike(
        tmp_path, caplog, monkeypatch):
    """After each topic is named, the steady fault is one line a minute for the events and one
    for the other topics (docs/mqtt.md): a refusal of the one kind within the minute of the
    other's line must not hide it (the events' line says how many are kept), and the line
    comes back each minute for as long as the ACL stays wrong. The minute runs on a clock of
    the test's own."""
    from maskd.lograte import Throttle

    monkeypatch.setattr("maskd.mqtt.sink.REFUSED_RETRY_S", 0.3)
    deny = "topic read maskd/#\ntopic readwrite homeassistant/#"
    clock = [0.0]
    with Broker(tmp_path / "b", acl=deny) as b:
        sink = MqttSink.from_config(cfg_for(b, tmp_path / "state"), model_name="m")
        assert wait_until(lambda: sink.connected, 10)
        sink._log_once_a_minute = Throttle(every_s=60.0, clock=lambda: clock[0])
        flips = iter(range(10 ** 6))  # a change each time: each is published, and refused

        def lines(what: str) -> int:
            sink.on_state(FaceCounts(faces=1, masked=0, unmasked=1, unjudged=0,
                                     active=next(flips) % 2, detect_enabled=True,
                                     timestamp=time.time()))
            return len([r for r in caplog.records if what in r.getMessage()])

        event, side = f"refused an event on {CAM}/violation:", f"refused {CAM}/violations:"
        try:
            with caplog.at_level(logging.ERROR, logger="maskd.mqtt.sink"):
                sink.emit(script("a", 1, 0)[0])
                assert wait_until(lambda: lines(event) >= 1 and lines(side) >= 1, 20)
                for minute in (1, 2):
                    clock[0] = 61.0 * minute
                    assert wait_until(lambda m=minute: lines(event) >= 1 + m, 20), \
                        (minute, caplog.text[-3000:])
                    assert wait_until(lambda m=minute: lines(side) >= 1 + m, 20), \
                        (minute, caplog.text[-3000:])
        finally:
            sink.close()
    assert sink.health()["refused"] == 1


def test_reconnect_during_a_clean_stop_leaves_offline(tmp_path):
    """The broker hangs while maskd stops, then restarts: the reconnect during close() must
    not announce `online` again (the clean disconnect sends no will), or Home Assistant shows
    a stopped camera as available."""
    with Broker(tmp_path / "b") as b:
        sink = MqttSink.from_config(cfg_for(b, tmp_path / "state"))
        assert wait_until(lambda: sink.connected, 10)
        time.sleep(0.3)
        os.kill(b.proc.pid, signal.SIGSTOP)  # close() now waits for its PUBACKs
        closer = threading.Thread(target=sink.close)
        closer.start()
        time.sleep(0.5)
        os.kill(b.proc.pid, signal.SIGKILL)
        b.proc.wait()
        b.proc = None
        b.start()
        closer.join(30)
        assert not closer.is_alive()
        sub = Subscriber(b, [f"{CAM}/status", f"{CAM}/status/detail"])
        assert sub.wait(lambda ms: len(ms) >= 2, 5)
        assert [m.payload for m in sub.on(f"{CAM}/status")] == [b"offline"]
        assert json.loads(sub.on(f"{CAM}/status/detail")[0].payload)["state"] == "offline"
        sub.close()


@pytest.mark.parametrize("second_signal", [True, False])
def test_a_stop_against_a_stuck_broker_waits_the_flush_timeout_once(tmp_path, second_signal):
    """A broker that stopped answering: the flush waited its timeout for the events, then
    close() waited 5 s more for the offline status's PUBACKs: more than the docs' 'at most
    --flush-timeout' (docs/mqtt.md), and a second stop signal (the flush's ``cancel``) did not
    cut that second wait either (12 s where the docs promise 5, and 'at once')."""
    with Broker(tmp_path / "b") as b:
        sink = MqttSink.from_config(cfg_for(b, tmp_path / "state"))
        assert wait_until(lambda: sink.connected, 10)
        os.kill(b.proc.pid, signal.SIGSTOP)
        try:
            for ev in script("x", 1, 0):
                sink.emit(ev)
            if second_signal:
                hurry = threading.Event()
                threading.Timer(0.5, hurry.set).start()
                t0 = time.monotonic()
                assert sink.flush(30.0, hurry) is False
                assert time.monotonic() - t0 < 2.0
            else:  # the flush waits its timeout and gives up
                assert sink.flush(1.0) is False
            t0 = time.monotonic()
            sink.close()
            closing = time.monotonic() - t0
        finally:
            os.kill(b.proc.pid, signal.SIGCONT)
    assert closing < 4.0, closing  # no second 5 s wait (the worker's join and paho's stop remain)


def test_a_stop_as_the_link_drops_still_closes_everything(tmp_path, monkeypatch):
    """The connection gone, paho's disconnect callback not yet run: the offline publishes
    fail at once, and close() raised on them (the outbox was not closed, the session file
    still said running, the threads lived on)."""
    import paho.mqtt.client as mqtt

    with Broker(tmp_path / "b") as b:
        sink = MqttSink.from_config(cfg_for(b, tmp_path / "state"))
        assert wait_until(lambda: sink.connected, 10)

        def no_conn(*args, **kwargs):
            info = mqtt.MQTTMessageInfo(1)
            info.rc = mqtt.MQTT_ERR_NO_CONN
            return info

        monkeypatch.setattr(sink._client, "publish", no_conn)
        sink.close()
        assert not sink._worker.is_alive()
        assert json.loads((tmp_path / "state" / "mqtt-session.json").read_text())["running"] is False


def test_kill9_with_open_violations_then_restart_ends_them(tmp_path):
    """Violations open at a kill -9 get their `end` (reason "restart") from the next start."""
    state = tmp_path / "state"
    with Broker(tmp_path / "b") as b:
        sub = Subscriber(b, [f"{CAM}/violation"])
        d = start_driver(b.url, state, "--then", "wait", "--violations", "3", "--updates", "1",
                         "--left-open", "2", "--tag", "o")
        read_until(d, "done")
        first = [(e.event_id, e.seq) for e in script("o", 3, 1, left_open=2)]  # 7 messages
        assert sub.wait(lambda ms: len(dedup([m.json() for m in ms])) >= 7, 10)
        os.kill(d.pid, signal.SIGKILL)
        d.wait()

        d = start_driver(b.url, state, "--then", "exit", "--flush-timeout", "20")
        assert d.wait(30) == 0, d.stderr.read()[-2000:]
        assert "ending it with reason restart" in d.stderr.read()
        assert sub.wait(lambda ms: len(dedup([m.json() for m in ms])) >= 9, 10)
        got = events(sub)
        assert dedup(got) == first + [("o-1", 2), ("o-2", 2)]
        ends = {e["event_id"]: e for e in got if e["event_type"] == "end"}
        assert {k: e["end_reason"] for k, e in ends.items()} == {
            "o-0": "gone", "o-1": "restart", "o-2": "restart"}
        for k in ("o-1", "o-2"):
            check_schema(ends[k])
            assert ends[k]["end_time"] >= ends[k]["start_time"] and ends[k]["buffered"]

        d = start_driver(b.url, state, "--then", "exit")  # nothing is left open now
        assert d.wait(30) == 0
        time.sleep(0.5)
        assert len(dedup(events(sub))) == 9
        sub.close()


def test_snapshots_beyond_the_memory_bound_are_counted_and_not_promised(tmp_path, caplog):
    """mqtt.snapshots: true and an outage longer than MAX_SNAPSHOTS messages: the oldest
    snapshots are dropped (they are only in memory), which is logged and counted, and their
    events go out saying "snapshot": false. Was: silent, and every event said true while only
    the newest 32 snapshots were ever sent."""
    from maskd.demo import DemoSource
    from maskd.mqtt.sink import MAX_SNAPSHOTS

    caplog.set_level(logging.WARNING)
    # The subscriber's session is in place before the outage, and the broker keeps it (and
    # queues for it) across the restart: subscribed only after the restart, it missed what
    # the sink sent if the sink reconnected first (failed CI under load).
    b = Broker(tmp_path / "b", persistence=True)
    with b:
        sub = Subscriber(b, [f"{CAM}/violation", f"{CAM}/snapshot"], client_id="snap-sub",
                         clean=False)
    sink = MqttSink.from_config(cfg_for(b, tmp_path / "state", snapshots=True), model_name="m")
    frame = DemoSource().render(0)
    evs = script("o", 20, 0)  # 40 messages, each with a face crop
    for ev in evs:
        ev.best_crop = frame[100:228, 250:378]
        sink.emit(ev)
    dropped = len(evs) - MAX_SNAPSHOTS
    assert sink.health()["snapshots_dropped"] == dropped
    lines = [r.getMessage() for r in caplog.records if "snapshots wait" in r.getMessage()]
    assert lines == [f"MQTT: more than {MAX_SNAPSHOTS} snapshots wait for the broker; the oldest "
                     f'was dropped, its event goes out with "snapshot": false (1 dropped since '
                     f"start)"]  # once a minute, not once per snapshot
    with b:
        assert sink.flush(20)
        # as sent (the retained snapshot comes once more if the subscriber subscribes again
        # after the sink published: its reconnect after the broker's start)
        assert sub.wait(lambda ms: len([m for m in ms if not m.retain])
                        >= len(evs) + MAX_SNAPSHOTS, 30)
        got = events(sub)
        assert dedup(got) == [(e.event_id, e.seq) for e in evs]
        assert [e["snapshot"] for e in got] == [False] * dropped + [True] * MAX_SNAPSHOTS
        snaps = [m for m in sub.on(f"{CAM}/snapshot") if not m.retain]
        assert len(snaps) == MAX_SNAPSHOTS and all(m.payload[:2] == b"\xff\xd8" for m in snaps)
        sink.close()
        sub.close()


def test_a_snapshot_larger_than_the_brokers_packet_limit_is_dropped_not_the_connection(
        tmp_path, caplog):
    """A broker with `max_packet_size` (MQTT 5: in its CONNACK) smaller than a face crop: the
    crop is dropped, logged and counted, its event says "snapshot": false, and the connection
    stays up. Was: the broker cut the connection at every such crop (last will: offline), the
    crop was lost without a word and the warning blamed a client id used twice."""
    import numpy as np

    caplog.set_level(logging.WARNING)
    b = Broker(tmp_path / "b")
    b.conf.write_text(b.conf.read_text() + "max_packet_size 20000\n")
    with b:
        sub = Subscriber(b, [f"{CAM}/#"])
        sink = MqttSink.from_config(cfg_for(b, tmp_path / "state", snapshots=True),
                                    model_name="m")
        assert wait_until(lambda: sink.connected)
        evs = script("p", 2, 0)
        evs[0].best_crop = np.full((40, 30, 3), 128, np.uint8)  # a few hundred bytes
        evs[2].best_crop = np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)
        for ev in evs:
            sink.emit(ev)
        assert sink.flush(10)
        assert sub.wait(lambda ms: len([m for m in ms if m.topic == f"{CAM}/violation"]) >= 4, 5)
        time.sleep(0.5)  # a disconnect would show by now
        got = events(sub)
        assert dedup(got) == [(e.event_id, e.seq) for e in evs]
        assert [e["snapshot"] for e in got] == [True, False, False, False]
        assert len(sub.on(f"{CAM}/snapshot")) == 1
        assert b"offline" not in [m.payload for m in sub.on(f"{CAM}/status")]
        health = sink.health()
        assert (health["reconnects"], health["snapshots_dropped"]) == (0, 1)
        assert any("larger than broker" in r.getMessage() and "20000" in r.getMessage()
                   for r in caplog.records)
        sink.close()
        sub.close()


def test_a_message_larger_than_the_brokers_packet_limit_never_cuts_the_connection(
        tmp_path, caplog):
    """A broker whose `max_packet_size` (MQTT 5: in its CONNACK) is smaller than Home
    Assistant's discovery config (about 2.7 KB) and than one event (an odd, long event id):
    neither is sent, each is said once with the sizes, the event stays in the outbox as refused
    (and goes once a broker takes it), and every other event and message goes on the one
    connection. Was: mosquitto cut the connection at the discovery config on every connect, so
    maskd reconnected every `reconnect_min_s` for good, two log lines each time, the last will
    said offline, and no event was ever delivered."""
    caplog.set_level(logging.WARNING)
    limit, state = 1500, tmp_path / "state"
    b = Broker(tmp_path / "b")
    b.conf.write_text(b.conf.read_text() + f"max_packet_size {limit}\n")
    evs = script("p", 3, 0)
    big = "p-1-" + "x" * limit
    evs[2:4] = [dataclasses.replace(ev, event_id=big) for ev in evs[2:4]]
    with b:
        sub = Subscriber(b, [f"{CAM}/#", "homeassistant/#"])
        sink = MqttSink.from_config(cfg_for(b, state), model_name="m")
        assert wait_until(lambda: sink.connected)
        for ev in evs:
            sink.emit(ev)
        assert not sink.flush(10)  # at once: only the refused ones remain
        assert sub.wait(lambda ms: len([m for m in ms if m.topic == f"{CAM}/violation"]) >= 4, 5)
        time.sleep(0.5)  # a disconnect would show by now
        assert dedup(events(sub)) == [(e.event_id, e.seq) for e in evs if e.event_id != big]
        assert b"offline" not in [m.payload for m in sub.on(f"{CAM}/status")]
        assert not [m for m in sub.messages if m.topic.startswith("homeassistant/")]
        # its attributes and Home Assistant event, too large as well, were taken again with
        # the next violation's: what stays refused is the discovery config
        assert wait_until(lambda: sink.health()["refused_topics"] == 1)
        health = sink.health()
        assert (health["reconnects"], health["refused"]) == (0, 2)
        assert sink.faults() == ["MQTT: 2 event(s) refused by the broker",
                                 "MQTT: broker refuses 1 topic(s), e.g. "
                                 "homeassistant/device/maskd_dev1_cam1/config"]
        said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("homeassistant/device/maskd_dev1_cam1/config was not sent" in m
                   and f"at most {limit} bytes" in m and "discovery" in m for m in said), said
        assert any(f"refused an event on {CAM}/violation" in m and f"at most {limit} bytes" in m
                   and "kept in the outbox" in m for m in said), said
        sink.close()
        sub.close()
    with Broker(tmp_path / "b2") as b2:  # no limit: the kept events go, in order
        sub = Subscriber(b2, [f"{CAM}/violation"])
        sink = MqttSink.from_config(cfg_for(b2, state), model_name="m")
        assert sink.flush(10)
        assert sub.wait(lambda ms: len(ms) >= 2, 5)
        assert dedup(events(sub)) == [(big, 0), (big, 1)]
        sink.close()
        sub.close()


def test_a_message_at_the_brokers_packet_limit_goes_and_one_byte_over_does_not(tmp_path):
    """The size maskd counts for a PUBLISH is MQTT 5's Maximum Packet Size (the whole packet),
    to the byte, also where the remaining length takes a third byte (16384): a message exactly
    at the broker's `max_packet_size` is delivered, the next size up is not sent (a broker that
    counts as MQTT 5 says cuts the connection for it, and for the same message after every
    reconnect; mosquitto leaves out the length bytes) and the connection stays."""

    def size(topic: str, body: bytes) -> int:  # MQTT 5 QoS 1 PUBLISH, no properties
        remaining = 2 + len(topic) + 2 + 1 + len(body)
        return 1 + (1 if remaining < 128 else 2 if remaining < 128 ** 2 else 3) + remaining

    over, fit, after = f"{CAM}/probe/over", f"{CAM}/probe/fit", f"{CAM}/probe/after"
    big = b"x" * (16384 - (5 + len(over)))  # remaining length 16384: 16388 bytes
    at = b"x" * (16383 - (5 + len(fit)))  # 16386 bytes
    assert (size(over, big), size(fit, at)) == (16388, 16386)

    def check(limit: int) -> None:
        b = Broker(tmp_path / f"b{limit}")
        b.conf.write_text(b.conf.read_text() + f"max_packet_size {limit}\n")
        with b:
            sub = Subscriber(b, [f"{CAM}/probe/#"])
            sink = MqttSink.from_config(cfg_for(b, tmp_path / f"s{limit}"), model_name="m")
            assert wait_until(lambda: sink.connected)
            sink._side(over, big)
            sink._side(fit, at)
            sink._side(after, "1")
            assert sub.wait(lambda ms: {m.topic for m in ms} >= {fit, after}, 20), \
                (limit, [m.topic for m in sub.messages], b.log()[-1500:])
            assert sub.on(over) == [], limit
            assert sink.connected and sink.health()["reconnects"] == 0, (limit, b.log()[-1500:])
            assert sink.health()["refused_topics"] == 1, limit
            sink.close()
            sub.close()

    check(16386)
    check(16387)


def test_maskd_run_under_a_small_packet_limit_delivers_and_names_what_it_cannot_send(
        tmp_path, default_model):
    """The same broker limit under a real `maskd run --exit-at-end` (the demo's violation, real
    stats and state): exit 0 with every event delivered on the one connection, and one line
    naming the discovery config that was not sent. Was: a reconnect a second until the
    flush timed out, exit 75, no event delivered."""
    device, cam = "door1", "entrance"
    b = Broker(tmp_path / "b")
    b.conf.write_text(b.conf.read_text() + "max_packet_size 1500\n")
    with b:
        sub = Subscriber(b, [f"maskd/{device}/{cam}/violation"])
        r = subprocess.run(
            [sys.executable, "-m", "maskd", "run", "--source", "demo", "--exit-at-end",
             "--device-id", device, "--camera", cam, "--mqtt", b.url, "--state-dir",
             str(tmp_path / "state"), "--model", str(default_model), "--detector", "blazeface",
             "--flush-timeout", "20"],
            capture_output=True, text=True, timeout=180, cwd=REPO)
        assert r.returncode == 0, r.stderr[-3000:]
        assert sub.wait(lambda ms: len(ms) >= 2, 5)
        assert [m.json()["event_type"] for m in sub.messages] == ["start", "end"]
        sub.close()
    said = [ln for ln in r.stderr.splitlines() if "was not sent" in ln]
    assert len(said) == 1, r.stderr[-3000:]
    assert f"homeassistant/device/maskd_{device}_{cam}/config" in said[0]
    assert "at most 1500 bytes" in said[0]
    assert "lost connection" not in r.stderr, r.stderr[-3000:]


def test_a_broker_that_enforces_a_small_receive_maximum_gets_every_event(tmp_path):
    """A broker whose CONNACK says Receive Maximum 5 and that means it (HiveMQ, Moquette: more
    unacknowledged QoS 1 messages than that is DISCONNECT 0x93): maskd keeps at most that many
    in flight, and a burst goes out whole, in order, on one connection. Was: paho ignores the
    announced limit and sent up to 20 at once, so the broker cut the connection (a warning, the
    last will `offline`) 37 to 74 times for these 60 events, the unacknowledged ones sent again
    after each reconnect, and on a loaded machine they were not all delivered after 15 s."""
    b = Broker(tmp_path / "b")
    b.conf.write_text(b.conf.read_text() + "max_inflight_messages 5\n")  # announced in CONNACK
    with b:
        relay = StrictReceiveMaximum(b, 5)
        sub = Subscriber(b, [f"{CAM}/violation"])
        sink = MqttSink(MqttConfig(url=relay.url, reconnect_min_s=0.2, reconnect_max_s=1.0),
                        "dev1", "cam1", tmp_path / "state")
        evs = script("r", 30, 0)  # 60 messages, emitted faster than the broker acknowledges
        for ev in evs:
            sink.emit(ev)
        assert sink.flush(15), (relay.exceeded, sink.health())
        assert sub.wait(lambda ms: len(ms) >= len(evs), 5)
        assert dedup(events(sub)) == [(e.event_id, e.seq) for e in evs]
        assert (relay.exceeded, sink.health()["reconnects"]) == (0, 0)
        sink.close()
        relay.close()
        sub.close()


def _behind_no_pubacks(b: Broker, tmp_path, monkeypatch) -> tuple[NoPubacks, MqttSink]:
    """A connected sink to ``b`` behind `NoPubacks` (holding back every PUBACK), the stall's
    grace shortened to 1 s for the test."""
    from maskd.mqtt import sink as sink_mod

    monkeypatch.setattr(sink_mod, "DOWN_GRACE_S", 1.0)
    relay = NoPubacks(b)
    sink = MqttSink(MqttConfig(url=relay.url, reconnect_min_s=0.2, reconnect_max_s=0.5),
                    "dev1", "cam1", tmp_path / "state")
    assert wait_until(lambda: sink.connected)
    return relay, sink


def test_a_broker_that_acknowledges_nothing_is_named_and_the_events_sent_again(
        tmp_path, caplog, monkeypatch):
    """A broker that keeps the connection (PINGs answered) but acknowledges no event: after the
    grace the status line says so; after twice the grace one warning, and the connection is
    dropped so that the reconnect sends the events again (MQTT sends a message again only on a
    new connection), and again while it lasts; once the broker acknowledges, they are
    delivered and the line goes. Was: `connected`, a healthy status line, not a word, and the
    events in flight for as long as that connection lasted."""
    caplog.set_level(logging.WARNING)
    with Broker(tmp_path / "b") as b:
        sub = Subscriber(b, [f"{CAM}/violation"])
        relay, sink = _behind_no_pubacks(b, tmp_path, monkeypatch)
        evs = script("n", 2, 0)
        for ev in evs:
            sink.emit(ev)
        assert wait_until(lambda: sink.faults() != [], 5)
        assert re.fullmatch(r"MQTT: broker acknowledged nothing for \d s, 4 event\(s\) waiting",
                            sink.faults()[0]), sink.faults()
        assert wait_until(lambda: sink.reconnects >= 2, 10)  # dropped, sent again, dropped
        said = [r.getMessage() for r in caplog.records if "acknowledged none" in r.getMessage()]
        assert len(said) == 1 and relay.url in said[0] and "outbox" in said[0], said
        assert sink.health()["outbox_depth"] == 4
        relay.hold.clear()  # the broker acknowledges again: the next connection delivers
        assert sink.flush(10)
        assert wait_until(lambda: sink.faults() == [], 2), sink.faults()
        assert sub.wait(lambda ms: len(unique_events([m.json() for m in ms])) >= 4, 5)
        assert dedup(events(sub)) == [(e.event_id, e.seq) for e in evs]
        sink.close()
        relay.close()
        sub.close()


def test_a_broker_slow_to_acknowledge_keeps_its_connection_for_twice_the_grace(
        tmp_path, monkeypatch):
    """The grace first only names the stall (the status line); the connection is dropped after
    twice the grace (docs/mqtt.md, 60 s): a broker that is slow, not stuck, keeps its
    connection and the events are not sent twice meanwhile. Grace shortened to 2 s."""
    from maskd.mqtt import sink as sink_mod

    grace = 2.0
    monkeypatch.setattr(sink_mod, "DOWN_GRACE_S", grace)
    with Broker(tmp_path / "b") as b:
        relay = NoPubacks(b)
        sink = MqttSink(MqttConfig(url=relay.url, reconnect_min_s=0.2, reconnect_max_s=0.5),
                        "dev1", "cam1", tmp_path / "state")
        try:
            assert wait_until(lambda: sink.connected)
            t0 = time.monotonic()
            sink.emit(script("s", 1, 0)[0])
            assert wait_until(lambda: sink.faults() != [], 10)  # named after the grace
            time.sleep(max(0.0, t0 + 1.7 * grace - time.monotonic()))
            dropped, elapsed = sink.reconnects, time.monotonic() - t0
            # not before twice the grace from the send, which came after t0
            assert dropped == 0 or elapsed >= 2 * grace, (dropped, elapsed)
            assert wait_until(lambda: sink.reconnects >= 1, 15)  # then dropped, sent again
        finally:
            sink.close()
            relay.close()


def test_a_reconnect_after_an_outage_with_events_in_flight_is_not_taken_for_a_stall(
        tmp_path, caplog, monkeypatch):
    """Events in flight when the broker went away for longer than twice the grace: the new
    connection sends them again and is not dropped as one that acknowledges nothing, nor does
    the status line say so; the outage was the broker away, told as such. Was: the stall was
    timed from before the outage, so the first step on the new connection dropped it at once
    ('acknowledged none of the 2 event(s) sent in the last 4 s'), the last will `offline`
    again, and the events waited for the next reconnect."""
    from maskd.mqtt import sink as sink_mod

    caplog.set_level(logging.WARNING)
    with Broker(tmp_path / "b") as b:
        relay, sink = _behind_no_pubacks(b, tmp_path, monkeypatch)
        evs = script("o", 1, 0)
        for ev in evs:
            sink.emit(ev)
        time.sleep(0.5)  # sent, not acknowledged: in flight
        b.stop()
        assert wait_until(lambda: not sink.connected, 5)
        time.sleep(3 * sink_mod.DOWN_GRACE_S)  # away for longer than the stall's 2 x grace
        relay.hold.clear()
        b.start()
        assert wait_until(lambda: sink.connected, 5)
        assert not [f for f in sink.faults() if "acknowledged nothing" in f], sink.faults()
        assert sink.flush(10), sink.health()
        said = [r.getMessage() for r in caplog.records if "acknowledged none" in r.getMessage()]
        assert said == [] and sink.health()["reconnects"] == 1, (said, sink.health())
        sink.close()
        relay.close()


def test_a_refusal_for_an_exceeded_quota_says_so_and_is_delivered_once_it_allows(
        tmp_path, caplog, monkeypatch):
    """A broker that answers PUBACK 0x97 "Quota exceeded" (a cloud broker's rate limit): the
    events are kept and offered again like any refusal, and the error names the quota, not an
    ACL (was: `does the broker's ACL let this client publish there?`); once the quota allows,
    they are acknowledged and leave the outbox."""
    from maskd.mqtt import sink as sink_mod

    monkeypatch.setattr(sink_mod, "REFUSED_RETRY_S", 1.0)  # shortened for the test
    caplog.set_level(logging.ERROR)
    with Broker(tmp_path / "b") as b:
        relay = QuotaExceeded(b)
        sink = MqttSink(MqttConfig(url=relay.url, reconnect_min_s=0.2, reconnect_max_s=1.0),
                        "dev1", "cam1", tmp_path / "state")
        for ev in script("q", 1, 0):
            sink.emit(ev)
        assert wait_until(lambda: sink.health()["refused"] == 2, 5), sink.health()
        said = [r.getMessage() for r in caplog.records if "refused an event" in r.getMessage()]
        assert len(said) == 1 and "Quota exceeded" in said[0], said
        assert "quota or rate limit" in said[0] and "ACL" not in said[0], said
        relay.exceeded.clear()  # flush() would say False at once: only refused ones remain
        assert wait_until(lambda: sink.health()["outbox_depth"] == 0, 5), sink.health()
        # (the retained state refused meanwhile stays listed until it is sent again)
        assert sink.health()["refused"] == 0
        assert not [f for f in sink.faults() if "event(s) refused" in f], sink.faults()
        sink.close()
        relay.close()


def test_refused_events_drain_at_the_brokers_pace_once_it_takes_them(tmp_path, monkeypatch):
    """A week of a wrong ACL leaves thousands of refused events; once the broker takes them
    again, the timed retry offered one window (50) every REFUSED_RETRY_S, so 658 refused events
    took 13 minutes (a 100 000-event outbox, 33 hours) while a reconnect's replay drains at
    once. A retry whose window is all taken offers the next window at once; one refused again
    waits the full interval."""
    from maskd.mqtt import sink as sink_mod

    monkeypatch.setattr(sink_mod, "REFUSED_RETRY_S", 3.0)  # shortened for the test
    with Broker(tmp_path / "b") as b:
        relay = QuotaExceeded(b)
        sink = MqttSink(MqttConfig(url=relay.url, reconnect_min_s=0.2, reconnect_max_s=1.0),
                        "dev1", "cam1", tmp_path / "state")
        for ev in script("q", 100, 0):  # 200 messages: four windows
            sink.emit(ev)
        assert wait_until(lambda: sink.health()["refused"] == 200, 10), sink.health()
        time.sleep(sink_mod.REFUSED_RETRY_S + 0.5)  # a timed retry, still refused: waits again
        relay.exceeded.clear()
        # the next timed retry (within 3 s) takes a window, and the windows after it follow at
        # the broker's pace; before, each waited an interval: the last one 9 s after the first.
        # Timed from the first window taken, not from the clear: under load a window's round
        # trip through the relay takes up to 2 s, and 5 s from the clear failed a sound sink.
        assert wait_until(lambda: sink.health()["outbox_depth"] < 200, 15), sink.health()
        assert wait_until(lambda: sink.health()["outbox_depth"] == 0,
                          2.5 * sink_mod.REFUSED_RETRY_S), sink.health()
        assert sink.health()["refused"] == 0 and sink.health()["reconnects"] == 0
        sink.close()
        relay.close()


def test_a_retry_refused_again_waits_the_interval_not_a_loop(tmp_path, monkeypatch):
    """Refused events are offered again every REFUSED_RETRY_S (docs/mqtt.md): a retry refused
    again waits the full interval, it does not count as a window taken and offer the next at
    once, which for as long as the fault lasts (an ACL wrong for a week) would send them in a
    loop at the broker's pace. This relay's broker delivers each refused offer, so a consumer
    sees them: about one copy each interval."""
    from maskd.mqtt import sink as sink_mod

    monkeypatch.setattr(sink_mod, "REFUSED_RETRY_S", 1.0)  # shortened for the test
    with Broker(tmp_path / "b") as b:
        sub = Subscriber(b, [f"{CAM}/violation"])
        relay = QuotaExceeded(b)
        t0 = time.monotonic()
        sink = MqttSink(MqttConfig(url=relay.url, reconnect_min_s=0.2, reconnect_max_s=1.0),
                        "dev1", "cam1", tmp_path / "state")
        try:
            for ev in script("q", 1, 0):
                sink.emit(ev)
            offered = lambda: len(sub.on(f"{CAM}/violation"))  # noqa: E731
            assert wait_until(lambda: offered() >= 6, 20), offered()  # two retries
            time.sleep(2.5)  # a loop would offer them hundreds of times meanwhile
            elapsed = time.monotonic() - t0
            assert offered() <= 2 * (2 + elapsed / sink_mod.REFUSED_RETRY_S), (offered(), elapsed)
            assert sink.health()["refused"] == 2 and sink.health()["reconnects"] == 0
        finally:
            sink.close()
            relay.close()
            sub.close()


def test_connections_dropped_for_another_reason_do_not_blame_a_shared_client_id(tmp_path, caplog):
    """mosquitto's `message_size_limit` answers a too-large snapshot with a PUBACK code paho
    cannot read, and paho drops the connection (Protocol error), at every crop. Was: after three
    such drops the warning asked whether another client used the client id; only drops without
    a reason (what a takeover looks like) or "Session taken over" are blamed on it now."""
    import numpy as np

    caplog.set_level(logging.WARNING)
    b = Broker(tmp_path / "b")
    b.conf.write_text(b.conf.read_text() + "message_size_limit 20000\n")
    with b:
        sink = MqttSink.from_config(cfg_for(b, tmp_path / "state", snapshots=True),
                                    model_name="m")
        assert wait_until(lambda: sink.connected)
        noise = np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8)
        for ev in script("m", 4, 0):
            ev.best_crop = noise
            sink.emit(ev)
            assert sink.flush(10)
        assert wait_until(lambda: sink.connected and sink.reconnects >= 3)
        sink.close()
    lost = [r.getMessage() for r in caplog.records if "lost connection" in r.getMessage()]
    assert len(lost) >= 3 and not any("client id" in m for m in lost), lost
    # and the warning names the likely cause (was: only `Protocol error`)
    assert all("packet paho cannot read" in m and "max_packet_size" in m for m in lost), lost


def test_a_broker_that_drops_every_connection_at_once_is_retried_with_backoff(tmp_path):
    """mosquitto's `message_size_limit` below the discovery config's size answers it with a
    PUBACK code paho cannot read, and paho drops the connection: at every connect, for good.
    Such connections in a row are retried with the growing backoff (`reconnect_min_s`
    doubling to `reconnect_max_s`), and one that lasts starts it again. Was: paho restarts its
    backoff at every CONNACK, so maskd reconnected every `reconnect_min_s` for good (30 times
    in 6 s here; with the shipped 1 s, two log lines and a last will a second)."""
    b = Broker(tmp_path / "b")
    b.conf.write_text(b.conf.read_text() + "message_size_limit 1000\n")
    with b:
        mq = MqttConfig(url=b.url, reconnect_min_s=0.2, reconnect_max_s=1.6)
        sink = MqttSink(mq, "dev1", "cam1", tmp_path / "state")
        assert wait_until(lambda: sink.reconnects >= 1, 5)
        time.sleep(6.0)
        storm = sink.reconnects
        # 0.4, 0.8, 1.6, 1.6, ... s between attempts: at most 6 in those 6 s
        assert 2 <= storm <= 7, storm
        b.stop()  # the limit lifted: the next attempt (at most reconnect_max_s) stays
        b.conf.write_text(b.conf.read_text().replace("message_size_limit 1000\n", ""))
        b.start()
        sink.emit(script("d", 1, 0)[0])
        assert sink.flush(5)
        reconnects = sink.reconnects
        time.sleep(1.0)
        assert sink.connected and sink.reconnects == reconnects
        sink.close()


def test_a_damaged_outbox_page_found_while_running_does_not_stop_delivery(tmp_path, caplog):
    """A bad page in the events a previous run left (was: every read failed as a passing fault,
    and nothing, not even new events, reached the broker again, restart after restart). What
    can be read is sent, then the new events, in order; the damage is one ERROR line."""
    from test_outbox import damage_lines, damage_page

    caplog.set_level(logging.WARNING)
    state = tmp_path / "state"
    ob = Outbox(state, durable=False)
    for i in range(200):
        ob.put(f"{CAM}/violation", {"event_id": f"old-{i}", "seq": 0, "pad": "x" * 300})
    ob.close()
    damage_page(state, "outbox", "first")
    with Broker(tmp_path / "b") as b:
        sub = Subscriber(b, [f"{CAM}/violation"])
        sink = MqttSink.from_config(cfg_for(b, state), model_name="m")
        new = script("new", 2, 1)
        for ev in new:
            sink.emit(ev)
        want = [(e.event_id, e.seq) for e in new]
        assert sub.wait(lambda ms: want[-1] in dedup(violations(ms)), 20), sink.health()
        got = dedup(violations(sub.messages))
        (line,) = damage_lines(caplog)
        lost = int(line.split("; ")[-1].split()[0])
        assert 0 < lost < 20, line
        assert got == [(f"old-{i}", 0) for i in range(lost, 200)] + want
        assert wait_until(lambda: sink.health()["outbox_depth"] == 0, 10)
        assert sink.faults() == [] and sink.flush(10)
        sink.close()
        sub.close()
    assert "unexpected error" not in caplog.text and "retrying" not in caplog.text


def test_broker_down_shows_in_the_systemd_status_after_a_grace(tmp_path, default_model, monkeypatch):
    """The real loop (demo clip, looped) with the broker's port closed: systemd's STATUS says
    nothing for the grace, then since when the broker is away and how many events wait; a
    broker that comes up clears it, and one restarted within the grace never shows."""
    from test_notify import LoopRunner, NotifySocket

    from maskd import service
    from maskd.config import Config
    from maskd.mqtt import sink as mqtt_sink

    grace = 3.0
    monkeypatch.setattr(mqtt_sink, "DOWN_GRACE_S", grace, raising=False)
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", sock.address)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # a ping, with STATUS, every 0.5 s
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    broker = Broker(tmp_path / "b")  # its port stays closed until start()
    cfg = Config(device_id="dev1", camera="cam1", state_dir=tmp_path / "state",
                 source={"kind": "demo", "loop": True}, detector={"kind": "blazeface"},
                 classifier={"model": default_model},
                 mqtt={"url": broker.url, "reconnect_min_s": 0.2, "reconnect_max_s": 0.5})
    started = time.time()
    down = re.compile(r"MQTT: broker not connected since (\S+), (\d+) event\(s\) waiting")

    def faults(after: float) -> list[re.Match]:
        return [m for t, s in run.timeline if t >= after and "STATUS" in s
                for m in [down.search(s["STATUS"])] if m]

    try:
        with LoopRunner(service.build(cfg), sock) as run:
            t0 = time.monotonic()
            run.watch(grace - 1.0)
            assert run.statuses() and faults(0) == [], run.statuses()[-3:]  # within the grace
            run.watch(3.0)
            seen = faults(t0 + grace + 0.5)
            assert seen, run.statuses()[-3:]
            since = datetime.fromisoformat(seen[-1].group(1)).timestamp()
            assert started - 1 <= since <= started + 30
            assert int(seen[-1].group(2)) >= 1  # the demo's violation starts, kept in the outbox

            broker.start()
            run.watch(2.0)
            back = time.monotonic()
            run.watch(1.5)
            assert run.statuses() and faults(back) == [], run.statuses()[-3:]

            broker.stop()  # a quick broker restart: reconnected within the grace, no fault
            broker.start()
            blip = time.monotonic()
            run.watch(grace + 1.0)
            assert faults(blip) == [], run.statuses()[-3:]
            assert run.stop() == 0
    finally:
        broker.stop()
        sock.close()


def test_with_several_cameras_the_status_says_the_broker_as_it_is_now_not_a_lost_cameras_copy(
        tmp_path, default_model, monkeypatch):
    """Two cameras of a `cameras:` map share the broker: `back` (an RTSP stream nobody serves)
    told systemd its stats, the broker's line in them, while the broker was away; the broker
    comes back and `front` tells its frame. `systemctl status maskd` went on saying the broker
    was not connected, from back's copy, until back spoke again (every 0.5 s while it is lost;
    a STATUS sent meanwhile stood for 5 s). Shared faults are said as the camera telling now
    reads them; a camera's own (its paused clip) stays its own."""
    from test_notify import FRAME, NotifySocket

    from maskd import service
    from maskd.config import Config
    from maskd.mqtt import sink as mqtt_sink
    from maskd.mqtt.sink import NOT_CONNECTED

    monkeypatch.setattr(mqtt_sink, "DOWN_GRACE_S", 0.0, raising=False)
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    monkeypatch.setenv("NOTIFY_SOCKET", sock.address)
    monkeypatch.setenv("WATCHDOG_USEC", "1000000")  # both cameras' words make a ping: sent
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    broker = Broker(tmp_path / "b")  # its port stays closed until start()
    cfg = Config(device_id="dev1", state_dir=tmp_path / "state", detector={"kind": "blazeface"},
                 classifier={"model": default_model},
                 mqtt={"url": broker.url, "reconnect_min_s": 0.2, "reconnect_max_s": 0.5},
                 cameras={"front": {"source": {"kind": "demo", "loop": True}},
                          "back": {"source": {"uri": "rtsp://127.0.0.1:9/none"}}})
    svc = service.build(cfg)
    front, back = svc.loops
    watch = {loop: next(o for o in loop.observers if hasattr(o, "_hub")) for loop in svc.loops}
    try:
        assert wait_until(lambda: (s := back._stats(0.0, {})).camera_lost_since is not None
                          and NOT_CONNECTED in " ".join(s.faults), 10)
        watch[back].on_frame(FRAME, [], back._stats(0.0, {}))
        assert NOT_CONNECTED in sock.drain()[-1]["STATUS"]
        broker.start()
        assert wait_until(lambda: not front._stats(5.0, {}).faults, 10)
        watch[front].on_frame(FRAME, [], front._stats(5.0, {}))
        told = sock.drain()[-1]
        assert "WATCHDOG" in told and NOT_CONNECTED not in told["STATUS"], told
    finally:
        close_loops(svc.loops)
        broker.stop()
        sock.close()


def test_a_damaged_open_violation_record_does_not_stop_the_start(tmp_path, caplog):
    """A record of an open violation in a real outbox file that is no violation (a JSON object
    without seq, or no JSON) was a KeyError traceback and exit 1 at every start (a restart loop):
    now skipped with a warning, the pending events delivered and the sound record ended once."""
    import sqlite3

    state = tmp_path / "state"
    b = Broker(tmp_path / "b")  # configured, not started: the first run's events stay stored
    sink = MqttSink.from_config(cfg_for(b, state), model_name="m")
    evs = script("o", 2, 0, left_open=1)  # o-0 start, end; o-1 start, left open
    for ev in evs:
        sink.emit(ev)
    sink.close()
    db = sqlite3.connect(state / "outbox.sqlite3")
    db.executemany("INSERT INTO open_events (event_id, topic, payload, updated) VALUES "
                   "(?, ?, ?, ?)", [("no-seq", f"{CAM}/violation", '{"event_id": "no-seq"}', 1.0),
                                    ("no-json", f"{CAM}/violation", "{not json", 2.0)])
    db.commit()
    db.close()
    caplog.set_level(logging.WARNING)
    with b:
        sub = Subscriber(b, [f"{CAM}/violation"])
        sink = MqttSink.from_config(cfg_for(b, state), model_name="m")
        assert sink.flush(20)
        assert sub.wait(lambda ms: len(dedup([m.json() for m in ms])) >= 4, 10)
        got = events(sub)
        assert dedup(got) == [(e.event_id, e.seq) for e in evs] + [("o-1", 1)]
        assert got[-1]["end_reason"] == "restart"
        check_schema(got[-1])
        sink.close()
        sub.close()
    assert caplog.text.count("that is no violation skipped") == 1, caplog.text


def test_a_session_file_that_is_no_object_says_unknown_not_clean(tmp_path):
    """mqtt-session.json holding JSON that is no object (damaged) was read as a clean stop."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "mqtt-session.json").write_text("[1, 2]")
    with Broker(tmp_path / "b") as b:
        sub = Subscriber(b, [f"{CAM}/status/detail"])
        sink = MqttSink.from_config(cfg_for(b, state), model_name="m")
        assert sub.wait(lambda ms: bool(ms), 10)
        assert sub.messages[0].json()["previous_stop"] == "unknown"
        sink.close()
        sub.close()


def test_a_session_file_from_a_newer_maskd_is_read_by_the_keys_this_one_knows(tmp_path):
    """After a downgrade the older maskd reads a newer one's mqtt-session.json by the keys it
    knows (why the file carries no layout number, docs/reliability.md): a killed newer run with
    a key this version does not know is still an unclean stop, and the file is rewritten."""
    import json

    state = tmp_path / "state"
    state.mkdir()
    session = state / "mqtt-session.json"
    session.write_text(json.dumps({"running": True, "pid": 1, "time": 1.0, "cameras": [CAM],
                                   "layout": 2, "zones": {"till": [0, 0, 9, 9]}}))
    with Broker(tmp_path / "b") as b:
        sub = Subscriber(b, [f"{CAM}/status/detail"])
        sink = MqttSink.from_config(cfg_for(b, state), model_name="m")
        assert sub.wait(lambda ms: bool(ms), 10)
        assert sub.messages[0].json()["previous_stop"] == "unclean"
        written = json.loads(session.read_text())
        assert written["running"] is True and written["cameras"] == [CAM], written
        sink.close()
        sub.close()
    assert json.loads(session.read_text())["running"] is False


def test_a_subscription_the_broker_refuses_is_an_error_and_a_fault_until_it_is_granted(
        tmp_path, caplog):
    """A broker whose ACL refuses maskd's SUBSCRIBE to detect/set (mosquitto's dynamic-security
    plugin: SUBACK 0x87, 0x80 over MQTT 3.1.1) leaves the Home Assistant switch dead. Was:
    nothing said so while running. Now an ERROR names the topic and what no longer works, and
    the status lists it until a connection gets the subscription; `maskd doctor` warns of it.
    """
    ha, switch = "homeassistant/status", f"{CAM}/detect/set"
    want = [f"MQTT: broker refuses the subscription to {t}" for t in (ha, switch)]

    def refused_sink(target: Broker | Mqtt311Only, why: str) -> MqttSink:
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="maskd.mqtt"):
            sink = MqttSink.from_config(cfg_for(target, tmp_path / "state"))
            assert wait_until(lambda: sink.faults() == want, 10), sink.faults()
        assert (f"refused the subscription to {switch}: {why}; the detection switch (Home "
                f"Assistant, detect/set) does nothing (does the broker's ACL let this client "
                f"subscribe there?)") in caplog.text, caplog.text
        assert (f"refused the subscription to {ha}: {why}; Home Assistant's restarts go "
                f"unseen") in caplog.text, caplog.text
        status = status_text(LoopStats(fps=9.8, active=0, faults=tuple(sink.faults())))
        assert f"subscription to {switch}" in status, status
        return sink

    with Broker(tmp_path / "b", deny_subscribe=[switch, ha]) as broker:
        relay = Mqtt311Only(broker)
        refused_sink(relay, "Unspecified error").close()
        # doctor asks on detect/set itself (was: only beside it, on detect/doctor: OK here)
        for target, why in ((broker, "Not authorized"), (relay, "Unspecified error")):
            verdict, detail = probe_broker(cfg_for(target, tmp_path / "state"))
            assert verdict == WARN, detail
            assert f"may not subscribe to {switch} ({why}): the broker's ACL" in detail, detail
        relay.close()
        sink = refused_sink(broker, "Not authorized")
        broker.stop()
        broker.deny_subscribe([ha])  # the switch is mended, Home Assistant's status not yet
        broker.start()
        assert wait_until(lambda: sink.connected and sink.faults() == want[:1], 15), sink.faults()
        verdict, detail = probe_broker(cfg_for(broker, tmp_path / "state"))
        assert verdict == WARN and detail.endswith(
            f"may receive on {CAM}/detect/doctor; may not subscribe to {ha} (Not authorized): "
            f"Home Assistant's restarts go unseen, so maskd sends its discovery again only when "
            f"it reconnects"), detail
        broker.stop()
        broker.deny_subscribe([])  # the ACL is mended
        broker.start()
        assert wait_until(lambda: sink.connected and sink.faults() == [], 15), sink.faults()
        assert probe_broker(cfg_for(broker, tmp_path / "state"))[0] == OK
        sink.close()


@pytest.mark.parametrize("between", ["", "killed", "unread_once"])
def test_a_clean_stop_whose_outbox_cannot_record_an_end_does_not_end_it_again(
        tmp_path, default_model, between):
    """A violation stored in the outbox, then the card fails every write of the outbox (EIO
    injected by strace, attached once the start is out) and the violation ends: its end goes
    to the broker from memory, but the record that it ended cannot be stored. After a clean
    stop (SIGTERM), the next start took the stored start for a killed run's: 'still open when
    maskd last stopped uncleanly', a second `end` (reason restart) in MQTT and in JSON lines.
    Now what the outbox could not record is kept beside it for the next start: one end each.
    ``killed_between``: a start on the card still failing the writes, killed (a power cut, the
    watchdog), came first: it removed the file as it read it, so the start after said the
    violation was still open and ended it again; the file now goes once its records are stored.
    ``unread_once``: the next start's read of that file fails once (an I/O error on the failing
    card): the file was removed unread and the violation ended again; the read is tried again."""
    killed_between = between == "killed"
    strace = strace_injecting()
    state = tmp_path / "state"
    db = state / "outbox.sqlite3"
    jsonl = tmp_path / "events.jsonl"
    topic = "maskd/door1/entrance/violation"
    with Broker(tmp_path / "b") as b:
        sub = Subscriber(b, [topic])
        common = ["--device-id", "door1", "--camera", "entrance", "--mqtt", b.url, "--state-dir",
                  str(state), "--model", str(default_model), "--detector", "blazeface",
                  "--jsonl", str(jsonl)]
        proc = subprocess.Popen([sys.executable, "-m", "maskd", "run", "--source", "demo",
                                 "--loop", *common], stderr=subprocess.PIPE, text=True, cwd=REPO)
        tracer = None
        try:
            seen = read_stderr_until(proc, "violation start", timeout=120)
            assert wait_until(lambda: any(m.json()["event_type"] == "start"
                                          for m in sub.messages), 20)
            tracer = subprocess.Popen(
                [strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=pwrite64,write", "-P",
                 str(db), "-P", f"{db}-wal", "-e", "inject=pwrite64,write:error=EIO:when=1+",
                 "-p", str(proc.pid)], stderr=subprocess.PIPE, text=True)
            time.sleep(2)  # attached (it says nothing with -qq)
            seen = read_stderr_until(proc, "violation end", seen, timeout=120)
            assert wait_until(lambda: any(m.json()["event_type"] == "end"
                                          for m in sub.messages), 20)
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
        finally:
            for p in (proc, tracer):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.communicate()
        assert proc.returncode == 0, (seen + err)[-3000:]
        assert "could not be stored (disk I/O error); kept in outbox-records.json for the " \
            "next start" in err, (seen + err)[-3000:]
        if killed_between:
            killed = subprocess.Popen(
                [strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=pwrite64,write", "-P",
                 str(db), "-P", f"{db}-wal", "-e", "inject=pwrite64,write:error=EIO:when=1+",
                 sys.executable, "-m", "maskd", "run", "--source", "demo", "--loop", *common],
                stderr=subprocess.PIPE, text=True, cwd=REPO)
            try:
                read_stderr_until(killed, "violation start", timeout=120)
                time.sleep(1)
                [child] = Path(f"/proc/{killed.pid}/task/{killed.pid}/children").read_text().split()
                os.kill(int(child), signal.SIGKILL)  # maskd itself, not strace
                killed.communicate(timeout=30)
            finally:
                if killed.poll() is None:
                    killed.kill()
                    killed.communicate()
        records = state / "outbox-records.json"
        unread = [strace, "-f", "-qq", "-o", "/dev/null", "-e", "trace=read", "-P", str(records),
                  "-e", "inject=read:error=EIO:when=1"] if between == "unread_once" else []
        r = subprocess.run([*unread, sys.executable, "-m", "maskd", "run", "--source", "demo",
                            "--max-frames", "3", *common],
                           capture_output=True, text=True, timeout=180, cwd=REPO)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "cannot read what the last stop" not in r.stderr, r.stderr[-3000:]
        first = next(m.json()["event_id"] for m in sub.messages)
        # (the killed start's own violation is rightly ended so)
        assert f"violation {first} was still open" not in r.stderr, r.stderr[-3000:]
        assert killed_between or "stopped uncleanly" not in r.stderr, r.stderr[-3000:]
        assert not (state / "outbox-records.json").exists()  # stored in the outbox now
        with closing(sqlite3.connect(db)) as con:
            assert con.execute("SELECT COUNT(*) FROM open_events").fetchone()[0] == 0
        time.sleep(1)
        sub.close()
    ends: dict[str, int] = {}
    for m in sub.messages:
        if m.json()["event_type"] == "end":
            ends[m.json()["event_id"]] = ends.get(m.json()["event_id"], 0) + 1
    assert ends and set(ends.values()) == {1}, ends
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    ended = [e["event_id"] for e in lines if e["event_type"] == "end"]
    # one end each (the killed start's may come without its start: killed before its line)
    assert len(ended) == len(set(ended)), lines
    assert {e["event_id"] for e in lines if e["event_type"] == "start"} <= set(ended), lines
