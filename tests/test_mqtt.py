"""MqttSink against a real mosquitto on loopback (started and stopped by the tests)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_broker import (
    Broker,
    Subscriber,
    Tls,
    free_port,
    make_ca,
    retained_now,
    retained_once,
    unique_events,
    wait_until,
)
from mqtt_driver import counts, script

from maskd.config import BrokerUrl, Config, ConfigError, MqttConfig, parse_config
from maskd.mqtt import SCHEMA_ID, MqttSink, ViolationPayload, parse_switch
from maskd.types import RunControl
from maskd.watch import SETTLE_S

EVENT_SCHEMA = ViolationPayload.model_json_schema()

REPO = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("mqtt_driver.py")
BASE = "maskd/dev1"
CAM = f"{BASE}/cam1"
DISCO = "homeassistant/device/maskd_dev1_cam1"  # its Home Assistant device's topics


def check_schema(obj: dict, schema: dict = EVENT_SCHEMA) -> None:
    """The subset of JSON Schema that EVENT_SCHEMA uses (no extra dependency)."""
    types = {"object": dict, "string": str, "integer": int, "number": (int, float),
             "boolean": bool, "array": list, "null": type(None)}
    for key in schema["required"]:
        assert key in obj, f"missing {key}"
    for key, value in obj.items():
        rule = schema["properties"].get(key)
        assert rule is not None, f"undocumented field {key}"
        if "const" in rule:
            assert value == rule["const"], key
        if "enum" in rule:
            assert value in rule["enum"], key
        if "type" in rule:
            allowed = rule["type"] if isinstance(rule["type"], list) else [rule["type"]]
            ok = any(isinstance(value, types[t]) and not (t in ("integer", "number") and
                     isinstance(value, bool)) for t in allowed)
            assert ok, f"{key}={value!r} is not {allowed}"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            assert value >= rule.get("minimum", value), key
            assert value <= rule.get("maximum", value), key
        if isinstance(value, list):
            assert rule.get("minItems", 0) <= len(value) <= rule.get("maxItems", len(value)), key


def cfg_for(broker: Broker, state_dir: Path, **mqtt) -> Config:
    return Config(device_id="dev1", camera="cam1", state_dir=state_dir,
                  mqtt=MqttConfig(**{"url": broker.url, "reconnect_min_s": 0.2,
                                     "reconnect_max_s": 1.0, **mqtt}))


def events(sub: Subscriber) -> list[dict]:
    return [m.json() for m in sub.on(f"{CAM}/violation")]


def dedup(evs: list[dict]) -> list[tuple[str, int]]:
    return [(e["event_id"], e["seq"]) for e in unique_events(evs)]


def expected(tag: str, violations: int, updates: int) -> list[tuple[str, int]]:
    return [(e.event_id, e.seq) for e in script(tag, violations, updates)]


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
def broker(tmp_path):
    with Broker(tmp_path / "broker") as b:
        yield b


def start_driver(broker_url: str, state_dir: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(DRIVER), "--url", broker_url, "--state-dir", str(state_dir), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
    )


def read_until(proc: subprocess.Popen, line: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = proc.stdout.readline()
        if got.strip() == line:
            return
        if not got and proc.poll() is not None:
            break
    raise AssertionError(f"driver never printed {line!r}; stderr: {proc.stderr.read()[-2000:]}")


# ---- pure parts ----


def test_docs_carry_the_same_versioned_schema():
    text = (REPO / "docs" / "mqtt.md").read_text()
    m = re.search(r"<!-- event-schema -->\s*```json\n(.*?)```", text, re.S)
    assert m, "docs/mqtt.md must hold the event schema after <!-- event-schema -->"
    assert json.loads(m.group(1)) == json.loads(json.dumps(EVENT_SCHEMA))
    assert SCHEMA_ID in text


def test_url_and_switch_parsing():
    assert BrokerUrl.parse("mqtt://h") == BrokerUrl("h", 1883, False)
    assert BrokerUrl.parse("mqtts://h:9") == BrokerUrl("h", 9, True)
    # as every log line and error names the broker: an IPv6 address in brackets, as written
    # (was mqtt://::1:1883, which no one can tell apart or give back to mqtt.url)
    assert str(BrokerUrl.parse("mqtt://[::1]:1883")) == "mqtt://[::1]:1883"
    assert BrokerUrl.split(str(BrokerUrl.parse("mqtts://[fe80::1]:8883"))).host == "fe80::1"
    with pytest.raises(ConfigError, match="no credentials"):
        BrokerUrl.parse("mqtt://u:secret@h")
    assert parse_switch(b"ON") is True and parse_switch(b" off\n") is False
    assert parse_switch(b"maybe") is None
    # what a person types at mosquitto_pub, or another system sends, as well as ON / OFF
    for word in (b"on", b"true", b"1", b"enable", b"Enabled"):
        assert parse_switch(word) is True, word
    for word in (b"off", b"FALSE", b"0", b"disable", b"disabled"):
        assert parse_switch(word) is False, word


def test_config_mistakes_are_named(tmp_path, monkeypatch):
    """Caught where the config is validated, before a sink exists (tests/test_config_rules.py
    checks that `check-config` and `run` both refuse them)."""
    base = {"url": "mqtt://127.0.0.1:1", "username": "u"}

    def load(**mqtt: object) -> None:
        parse_config({"mqtt": mqtt})

    with pytest.raises(ConfigError, match="'mqtt.password_file': cannot read .*nope"):
        load(**base, password_file=str(tmp_path / "nope"))
    monkeypatch.delenv("MASKD_NO_SUCH_VAR", raising=False)
    with pytest.raises(ConfigError, match="MASKD_NO_SUCH_VAR is not set"):
        load(**base, password_env="MASKD_NO_SUCH_VAR")
    with pytest.raises(ConfigError, match="'mqtt.ca_file': .*use mqtts://"):
        load(url="mqtt://h", ca_file=str(tmp_path / "ca"))
    with pytest.raises(ConfigError, match="'mqtt.ca_file': cannot read .*No such file"):
        load(url="mqtts://h", ca_file=str(tmp_path / "ca"))


def test_start_does_not_block_without_broker(tmp_path):
    """No broker at all: construction returns at once and events go to the outbox."""
    t0 = time.monotonic()
    sink = MqttSink(MqttConfig(url="mqtt://127.0.0.1:9", reconnect_min_s=0.2), "d", "c", tmp_path)
    for ev in script("x", 2, 0):
        sink.emit(ev)
    assert time.monotonic() - t0 < 2.0
    assert sink.flush(0.3) is False
    assert sink.health()["outbox_depth"] == 4
    sink.close()


def test_a_group_starting_on_one_frame_is_one_durable_commit(tmp_path):
    """Five people starting together, then leaving together: the run loop stores each frame's
    events in one outbox transaction (was: a commit with its fsyncs each, 0.3 s of the loop for
    five with a 20 ms fsync, an SD card's), every one of them on disk when the loop goes on."""
    import sqlite3

    from loop_parts import service_for

    from maskd.demo import DemoSource
    from maskd.outbox import OUTBOX_FILE

    sink = MqttSink(MqttConfig(url="mqtt://127.0.0.1:9", reconnect_min_s=0.2), "d", "cam1",
                    tmp_path)
    commits = []  # the statements of each transaction that stored something
    statements: list[str] = []

    def traced(sql: str) -> None:
        statements.append(sql)
        if sql == "COMMIT":
            if any(s.startswith("INSERT INTO outbox") for s in statements):
                commits.append(statements[:])
            statements.clear()

    sink._outbox._db.set_trace_callback(traced)
    loop = service_for(DemoSource(), sinks=[sink])
    group = script("g", 5, 0)
    loop._emit([ev for ev in group if ev.event_type == "start"])
    assert len(commits) == 1
    with contextlib.closing(sqlite3.connect(tmp_path / OUTBOX_FILE)) as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 5
        assert db.execute("SELECT count(*) FROM open_events").fetchone()[0] == 5
    loop._emit([ev for ev in group if ev.event_type == "end"])
    assert len(commits) == 2
    with contextlib.closing(sqlite3.connect(tmp_path / OUTBOX_FILE)) as db:
        assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 10
        assert db.execute("SELECT count(*) FROM open_events").fetchone()[0] == 0
    sink.close()


def test_what_is_left_is_said_once_however_many_cameras_flush(tmp_path, caplog):
    """Each camera of a shared sink flushes it at a stop: with the broker down, the same
    "not yet acknowledged" line came once per camera."""
    sink = MqttSink(MqttConfig(url="mqtt://127.0.0.1:9", reconnect_min_s=0.2), "d", "c", tmp_path)
    for ev in script("x", 1, 0):
        sink.emit(ev)
    with caplog.at_level(logging.WARNING, logger="maskd"):
        assert sink.flush(0.2) is False and sink.flush(0.2) is False
        for ev in script("y", 1, 0):
            sink.emit(ev)
        assert sink.flush(0.2) is False  # more left than was said: said again
    said = [r.getMessage() for r in caplog.records if "not yet acknowledged" in r.getMessage()]
    assert [m.split(" event")[0] for m in said] == ["MQTT: 2", "MQTT: 4"]
    sink.close()


def test_the_running_marker_is_written_again_once_it_can_be(tmp_path, monkeypatch, caplog):
    """A full disk at start (or the state dir removed while running) left the last run's
    `clean` in mqtt-session.json for good: a kill later was reported as `clean` (or `none`)
    by the next start's previous_stop, and its cameras' retained topics were never cleared."""
    from maskd.mqtt import sink as sink_module

    monkeypatch.setattr(sink_module, "SESSION_CHECK_S", 0.2)
    real_write = sink_module.write_atomically
    full = {"on": True}

    def write(path, data):
        if full["on"]:
            raise OSError(28, "No space left on device")
        return real_write(path, data)

    monkeypatch.setattr(sink_module, "write_atomically", write)
    marker = tmp_path / sink_module.SESSION_FILE
    marker.write_text(json.dumps({"running": False, "stop": "clean"}))
    with caplog.at_level(logging.INFO, logger="maskd.mqtt"):
        sink = MqttSink(MqttConfig(url="mqtt://127.0.0.1:9", reconnect_min_s=0.2), "d", "c",
                        tmp_path)
        try:
            time.sleep(0.6)  # retried, and failing, without a line each time
            said = [r.getMessage() for r in caplog.records if str(marker) in r.getMessage()]
            assert len(said) == 1 and "tried again every 0.2 s" in said[0], said
            full["on"] = False  # room again
            # the file is written, then the line said: wait for both (the line came after the
            # check once, on a busy machine)
            assert wait_until(lambda: json.loads(marker.read_text()).get("running") and any(
                f"wrote {marker} again" in r.getMessage() for r in caplog.records), 5)
            assert json.loads(marker.read_text())["running"] is True
            marker.unlink()  # the state dir's files removed while running
            deadline = time.monotonic() + 5
            while not marker.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert json.loads(marker.read_text())["running"] is True  # a kill now is `unclean`
        finally:
            sink.close()
    assert json.loads(marker.read_text())["running"] is False  # the stop's marker is the last


# ---- against mosquitto ----


def test_events_state_and_discovery(broker, tmp_path):
    sub = Subscriber(broker, ["maskd/#", "homeassistant/#"])
    control = RunControl()
    sink = MqttSink.from_config(cfg_for(broker, tmp_path / "state"), control, model_name="m1")
    assert wait_until(lambda: sink.connected)
    assert sub.wait_topic(f"{CAM}/status")[-1].payload == b"online"

    evs = script("a", 1, 1)  # start, update, end
    for ev in evs:
        sink.emit(ev)
    sink.on_state(counts(2, 1, 1))
    sink.on_state(counts(3, 2, 1))  # within 1 s: suppressed
    assert sink.flush(10)
    got = [m.json() for m in sub.wait_topic(f"{CAM}/violation", 3)]
    assert [(e["event_type"], e["seq"]) for e in got] == [("start", 0), ("update", 1), ("end", 2)]
    for e, ev in zip(got, evs, strict=True):
        check_schema(e)
        assert e["schema"] == SCHEMA_ID and e["device_id"] == "dev1" and e["camera"] == "cam1"
        assert e["event_id"] == ev.event_id and e["model"] == "m1" and e["buffered"] is False
        assert e["box"] == [0.1, 0.2, 0.3, 0.4] and e["snapshot"] is False
    assert got[-1]["end_reason"] == "gone" and got[-1]["end_time"] is not None

    active = sub.wait(lambda ms: [m.payload for m in ms if m.topic == f"{CAM}/violation/active"]
                      [-1:] == [b"OFF"] and any(m.payload == b"ON" for m in ms), 5)
    assert active, [m.payload for m in sub.on(f"{CAM}/violation/active")]
    states = sub.wait_topic(f"{CAM}/state")
    assert len(states) == 1 and states[0].json()["faces"] == 2
    assert sub.wait_topic(f"{CAM}/detect/state")[-1].payload == b"ON"
    stats = sub.wait_topic(f"{CAM}/stats")[0].json()
    assert {"outbox_depth", "outbox_oldest_age_s", "reconnects", "outbox_dropped"} <= set(stats)

    disc = sub.wait_topic("homeassistant/device/maskd_dev1_cam1/config")[-1].json()
    # One process per camera (the single-camera layout): its last will is the camera's status.
    assert [a["topic"] for a in disc["availability"]] == [f"{CAM}/status"]
    assert disc["availability_mode"] == "all" and disc["device"]["model"] == "maskd face-mask detector"
    assert all(c.get("qos") == 1 for c in disc["components"].values() if "name" in c)
    platforms = sorted(c["platform"] for c in disc["components"].values())
    assert platforms.count("binary_sensor") == 2 and "switch" in platforms  # violation, problem
    n = len(sub.on("homeassistant/device/maskd_dev1_cam1/config"))
    sub.client.publish("homeassistant/status", "online", qos=1)
    assert len(sub.wait_topic("homeassistant/device/maskd_dev1_cam1/config", n + 1)) == n + 1

    sink.close()
    assert sub.wait(lambda ms: [m.payload for m in ms if m.topic == f"{CAM}/status"][-1:]
                    == [b"offline"], 5)
    assert sub.on(f"{CAM}/status/detail")[-1].json()["clean"] is True
    sub.close()


def test_stats_uptime_ignores_a_step_of_the_wall_clock(broker, tmp_path, monkeypatch):
    """NTP's first sync steps a Pi's wall clock by months after maskd started: `uptime_s`
    counts the time since boot (was: 90 days at once, or negative after a step back)."""
    sink = MqttSink.from_config(cfg_for(broker, tmp_path / "state"), model_name="m1")
    try:
        assert wait_until(lambda: sink.health()["connected"], 10)
        real = time.time
        for step in (90 * 86400.0, -90 * 86400.0):
            monkeypatch.setattr(time, "time", lambda step=step: real() + step)
            assert 0 <= sink.health()["uptime_s"] < 60
    finally:
        monkeypatch.undo()
        sink.close()


def test_status_detail_since_follows_a_step_of_the_wall_clock(broker, tmp_path, monkeypatch):
    """A Pi boots with its last shutdown's date and NTP steps it after maskd started: the
    retained `since` of status/detail is this run's start on the clock as it is when published
    (was: the start read off the unset clock, 90 days back, for the whole run)."""
    real, main = time.time, threading.get_ident()
    # the unset clock for the constructor only: the first connect (the sink's own thread, which
    # could come before this thread's undo under load) is after NTP's step
    monkeypatch.setattr(time, "time", lambda: real() - (
        90 * 86400.0 if threading.get_ident() == main else 0.0))
    sink = MqttSink.from_config(cfg_for(broker, tmp_path / "state"), model_name="m1")
    monkeypatch.undo()  # NTP's step
    sub = Subscriber(broker, [f"{CAM}/status/detail"])
    try:
        assert sub.wait_topic(f"{CAM}/status/detail")
        since = json.loads(sub.on(f"{CAM}/status/detail")[-1].payload)["since"]
        assert 0 <= time.time() - since < 60, since
    finally:
        sub.close()
        sink.close()


def test_snapshots_are_opt_in(broker, tmp_path):
    import numpy as np

    sub = Subscriber(broker, [f"{CAM}/#"])
    crop = np.full((40, 30, 3), 128, np.uint8)
    for snapshots, state in ((False, "s0"), (True, "s1")):
        sink = MqttSink.from_config(cfg_for(broker, tmp_path / state, snapshots=snapshots))
        ev = script(state, 1, 0)[0]
        ev.best_crop = crop
        sink.emit(ev)
        assert sink.flush(10)
        sink.close()
    sub.wait(lambda ms: any(m.topic == f"{CAM}/snapshot" and m.payload for m in ms), 3)
    snaps = [m for m in sub.on(f"{CAM}/snapshot") if m.payload]  # empty: the off run's withdrawal
    assert len(snaps) == 1 and snaps[0].payload[:2] == b"\xff\xd8" and not snaps[0].retain
    flags = {e["event_id"]: e["snapshot"] for e in events(sub)}
    assert flags == {"s0-0": False, "s1-0": True}
    sub.close()


def test_switching_snapshots_and_discovery_off_withdraws_what_an_earlier_run_left(broker,
                                                                                  tmp_path):
    """A run with `snapshots: true` leaves the last face crop retained; with `snapshots: false`
    no image may stay on the broker, and with `discovery: false` Home Assistant's device must
    go. Was: both stayed retained for ever (nothing withdrew them)."""
    import numpy as np

    disco = f"{DISCO}/config"
    sink = MqttSink.from_config(cfg_for(broker, tmp_path / "state", snapshots=True))
    ev = script("s", 1, 0)[0]
    ev.best_crop = np.full((40, 30, 3), 128, np.uint8)
    sink.emit(ev)
    assert sink.flush(10)
    sink.close()
    before = retained_now(broker, [f"{CAM}/#", "homeassistant/#"])
    assert before[f"{CAM}/snapshot"][:2] == b"\xff\xd8" and disco in before
    ha = Subscriber(broker, ["homeassistant/#"])
    assert ha.wait_topic(disco)  # the earlier run's, retained
    sink = MqttSink.from_config(cfg_for(broker, tmp_path / "state", snapshots=False,
                                        discovery=False))
    assert wait_until(lambda: sink.connected, 10)
    after = retained_once(broker, lambda r: f"{CAM}/snapshot" not in r and disco not in r,
                          [f"{CAM}/#", "homeassistant/#"])
    # withdrawn, never announced first: Home Assistant would add the device at each connect
    # and remove it at once
    assert ha.wait(lambda ms: any(m.topic == disco and not m.retain for m in ms), 5)
    assert [m.payload for m in ha.on(disco) if not m.retain] == [b""]
    ha.close()
    sink.close()
    assert f"{CAM}/snapshot" not in after and disco not in after, sorted(after)
    assert after[f"{CAM}/status"] == b"online"  # the rest is still there
    assert sink.faults() == []


def test_home_assistant_restarting_announces_nothing_with_discovery_off(broker, tmp_path):
    """`discovery: false`: Home Assistant's `online` (retained by some setups, sent at each of
    its starts) must not bring the device back that the config turned off: maskd does not
    listen on `homeassistant/status` then, and no discovery config goes to the broker."""
    disco = f"{DISCO}/config"
    ha = Subscriber(broker, ["homeassistant/#"])
    ha.client.publish("homeassistant/status", "online", qos=1, retain=True).wait_for_publish(5)
    sink = MqttSink.from_config(cfg_for(broker, tmp_path / "state", discovery=False))
    try:
        assert wait_until(lambda: sink.connected, 10)
        assert ha.wait(lambda ms: any(m.topic == disco for m in ms), 10)  # the withdrawal
        for _ in range(3):  # Home Assistant restarts
            ha.client.publish("homeassistant/status", "online", qos=1).wait_for_publish(5)
        assert not ha.wait(lambda ms: any(m.topic == disco and m.payload for m in ms), 3), \
            [m.payload[:80] for m in ha.on(disco)]
    finally:
        sink.close()
        ha.close()


def test_switching_snapshots_off_removes_home_assistants_camera_entity(broker, tmp_path):
    """With discovery on, the retained device config of a run with `snapshots: false` names the
    snapshot component by its platform alone, which Home Assistant takes as "remove it". Was:
    the component was left out, and Home Assistant keeps a component a device payload omits
    (homeassistant/components/mqtt/discovery.py): the camera entity stayed for ever."""
    disco = f"{DISCO}/config"
    uid = "maskd_dev1_cam1_snapshot"

    def retained_components(snapshots: bool) -> dict:
        sink = MqttSink.from_config(cfg_for(broker, tmp_path / "state", snapshots=snapshots))
        assert wait_until(lambda: sink.connected, 10)
        camera = {"platform": "camera"}  # snapshots off: the withdrawal; on: the entity
        cmps = json.loads(retained_once(
            broker, lambda r: disco in r and (json.loads(r[disco])["components"][uid] == camera)
            != snapshots, [disco])[disco])["components"]
        sink.close()
        return cmps

    camera = retained_components(True)[uid]
    assert camera["topic"] == f"{CAM}/snapshot" and camera["qos"] == 1  # as every component
    assert retained_components(False)[uid] == {"platform": "camera"}


def test_a_schedule_window_ending_shows_detection_off_with_the_switch_still_on(broker,
                                                                               tmp_path):
    """docs/mqtt.md: `detect/state` says whether detection runs now, switch and schedule
    both; outside the schedule the switch left ON shows `OFF` with `in_force: schedule`, so
    Home Assistant does not show a door as watched while nobody is looked for."""
    from maskd.types import FaceCounts

    control = RunControl()
    state, attrs = f"{CAM}/detect/state", f"{CAM}/detect/attributes"
    sub = Subscriber(broker, [state, attrs])
    sink = MqttSink.from_config(cfg_for(broker, tmp_path / "state"), control=control)
    try:
        assert [m.payload for m in sub.wait_topic(state)] == [b"ON"]
        control.scheduled = False  # the window ended
        sink.on_state(FaceCounts(faces=0, masked=0, unmasked=0, unjudged=0, active=0,
                                 detect_enabled=control.detect_enabled, timestamp=time.time()))
        assert sub.wait(lambda ms: len(sub.on(state)) >= 2, 10), sub.messages
        assert [m.payload for m in sub.on(state)] == [b"ON", b"OFF"]
        assert json.loads(sub.on(attrs)[-1].payload) == {"switch": "ON", "schedule": False,
                                                          "in_force": "schedule"}
    finally:
        sink.close()
        sub.close()


def test_a_schedule_window_ending_with_the_switch_off_is_in_the_attributes(broker, tmp_path):
    """With the switch OFF (the operator's), a window that ends or begins left
    `detect/attributes` saying `schedule: true` (or false) for good: it was published only
    when the state or what decides changed, and the switch decides both before and after."""
    from maskd.types import FaceCounts

    control = RunControl()
    attrs = f"{CAM}/detect/attributes"
    sub = Subscriber(broker, [attrs])
    sink = MqttSink.from_config(cfg_for(broker, tmp_path / "state"), control=control)
    try:
        assert sub.wait(lambda ms: len(sub.on(attrs)) >= 1, 10), sub.messages
        control.switch = False
        for scheduled in (True, False):  # the operator's OFF, then the window ends
            control.scheduled = scheduled
            sink.on_state(FaceCounts(faces=0, masked=0, unmasked=0, unjudged=0, active=0,
                                     detect_enabled=control.detect_enabled,
                                     timestamp=time.time()))
        assert sub.wait(lambda ms: json.loads(sub.on(attrs)[-1].payload).get("schedule") is False,
                        5), [m.payload for m in sub.on(attrs)]
        assert json.loads(sub.on(attrs)[-1].payload) == {"switch": "OFF", "schedule": False,
                                                          "in_force": "switch"}
    finally:
        sink.close()
        sub.close()


def test_detect_set_live_flips_retained_is_ignored(broker, tmp_path, caplog):
    sub = Subscriber(broker, [f"{CAM}/detect/#", f"{DISCO}/#"])
    sub.client.publish(f"{CAM}/detect/set", "OFF", qos=1, retain=True).wait_for_publish(5)
    control = RunControl()
    with caplog.at_level(logging.WARNING, logger="maskd.mqtt"):
        sink = MqttSink.from_config(cfg_for(broker, tmp_path / "state"), control)
        assert wait_until(lambda: sink.connected)
        assert switch_subscribed(sub)
        # the retained OFF has reached the sink (was: a 1 s sleep, and a check that held
        # whether or not it had come)
        assert wait_until(lambda: f"ignoring retained {CAM}/detect/set" in caplog.text, 10)
    assert control.detect_enabled is True
    sub.client.publish(f"{CAM}/detect/set", "OFF", qos=1)
    assert wait_until(lambda: control.detect_enabled is False, 5)
    assert sub.wait(lambda ms: [m.payload for m in ms if m.topic == f"{CAM}/detect/state"][-1:]
                    == [b"OFF"], 5)
    sub.client.publish(f"{CAM}/detect/set", "on", qos=1)
    assert wait_until(lambda: control.detect_enabled is True, 5)
    # A retained OFF sent while maskd runs is ignored as at a start (was: obeyed now, and
    # silently undone by the next restart's warning); the broker keeps the retain flag for
    # maskd (MQTT 5: retain as published), and the next live command still works.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="maskd.mqtt"):
        sub.client.publish(f"{CAM}/detect/set", "OFF", qos=1, retain=True)
        # its warning was said at the start (once a minute); a bad value after it, heard
        # after it (one client's messages keep their order), says the OFF was handled
        sub.client.publish(f"{CAM}/detect/set", "dunno", qos=1)
        assert wait_until(lambda: "expected ON or OFF, got b'dunno'" in caplog.text, 5)
    assert control.detect_enabled is True
    sub.client.publish(f"{CAM}/detect/set", b"", qos=1, retain=True)
    sub.client.publish(f"{CAM}/detect/set", "OFF", qos=1)
    assert wait_until(lambda: control.detect_enabled is False, 5)
    sink.close()
    sub.close()


def test_an_empty_detect_set_is_no_command_and_says_nothing(broker, tmp_path, caplog):
    """An empty message on detect/set is how a retained command is deleted (`maskd mqtt-clear`,
    `mosquitto_pub -r -n`), heard live by a running maskd: docs/mqtt.md, no warning."""
    sub, control, sink = _switch_under_test(broker, tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger="maskd.mqtt"):
            sub.client.publish(f"{CAM}/detect/set", b"", qos=1)
            sub.client.publish(f"{CAM}/detect/set", "OFF", qos=1)  # heard after it
            assert wait_until(lambda: control.detect_enabled is False, 5)
        assert "detect/set" not in caplog.text, caplog.text
    finally:
        sink.close()
        sub.close()


def _switch_under_test(broker, tmp_path) -> tuple[Subscriber, RunControl, MqttSink]:
    """A connected sink with its detection switch, and a subscriber that sends it commands and
    hears detect/state."""
    sub = Subscriber(broker, [f"{CAM}/detect/#", f"{DISCO}/#"])
    control = RunControl()
    sink = MqttSink.from_config(cfg_for(broker, tmp_path / "state"), control)
    assert wait_until(lambda: sink.connected)
    assert switch_subscribed(sub)
    return sub, control, sink



def switch_subscribed(sub: Subscriber) -> bool:
    """Whether the broker holds the sink's subscription to detect/set, told without a sleep:
    the sink subscribes before it publishes its discovery config, and the broker handles one
    client's packets in order, so once ``sub`` (subscribed to the config) has the config, the
    subscription is in place. (Was: a 0.5 s sleep.)"""
    return sub.wait(lambda ms: any(m.topic == f"{DISCO}/config" for m in ms), 10)


def test_a_flood_of_bad_detect_set_messages_is_one_line_per_cause(broker, tmp_path, caplog,
                                                                   monkeypatch):
    """Anyone who may publish on detect/set can send garbage as fast as the network allows:
    the journal gets one line per cause and interval saying how many were ignored (was: one
    WARNING per message), and a good command still works."""
    from maskd import lograte

    monkeypatch.setattr(lograte, "LOG_EVERY_S", 2.0)  # the interval, shortened for the test
    sub, control, sink = _switch_under_test(broker, tmp_path)

    def ignored() -> list[str]:
        return [r.getMessage() for r in caplog.records if "expected ON or OFF" in r.getMessage()]

    with caplog.at_level(logging.WARNING, logger="maskd.mqtt"):
        # an empty retained message deletes a retained command: no command, and no line
        sub.client.publish(f"{CAM}/detect/set", b"", qos=1, retain=True)
        for i in range(300):
            sub.client.publish(f"{CAM}/detect/set", f"garbage{i}", qos=1)
        sub.client.publish(f"{CAM}/detect/set", "OFF", qos=1)  # after all of them, in order
        assert wait_until(lambda: control.detect_enabled is False, 10)
        assert ignored() == [f"MQTT: {CAM}/detect/set: expected ON or OFF, got b'garbage0'; "
                             f"ignored"]
        time.sleep(2.1)
        sub.client.publish(f"{CAM}/detect/set", "late", qos=1)
        assert wait_until(lambda: len(ignored()) == 2, 5)
    assert ignored()[1] == (f"MQTT: {CAM}/detect/set: expected ON or OFF, got b'late'; ignored "
                            f"(299 more like it in the last 2 s)")
    sink.close()
    sub.close()


def test_a_flood_of_good_detect_set_commands_is_a_line_a_second(broker, tmp_path, caplog):
    """A client flipping the switch in a loop wrote one INFO line per message (32,000 in 30 s
    seen): a change is logged at most once a second per camera, saying how many came
    meanwhile; a repeated command that changes nothing is no line; the state still follows."""
    sub, control, sink = _switch_under_test(broker, tmp_path)

    def switched() -> list[str]:
        return [r.getMessage() for r in caplog.records if "switched" in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="maskd.mqtt"):
        sub.client.publish(f"{CAM}/detect/set", "ON", qos=1)  # on already: no line
        for i in range(400):
            sub.client.publish(f"{CAM}/detect/set", "OFF" if i % 2 == 0 else "ON", qos=1)
        sub.client.publish(f"{CAM}/detect/set", "OFF", qos=1)
        sub.client.publish(f"{CAM}/detect/flood-done", "x", qos=1)  # after all of them, in order
        assert sub.wait(lambda ms: any(m.topic.endswith("flood-done") for m in ms), 15)
        time.sleep(1.1)  # the sink has had them all
        assert control.detect_enabled is False
        assert [m.payload for m in sub.messages if m.topic == f"{CAM}/detect/state"][-1:] == [b"OFF"]
        sub.client.publish(f"{CAM}/detect/set", "ON", qos=1)  # a person, a second later
        assert wait_until(lambda: control.detect_enabled is True, 5)
        assert wait_until(lambda: switched()[-1:] and "switched on" in switched()[-1], 5)
    lines = switched()
    assert lines[0] == "MQTT: cam1: detection switched off remotely", lines
    assert len(lines) <= 8, lines  # a line a second at most, not 401
    assert "switched on" in lines[-1] and any("more like it in the last 1 s" in x for x in lines)
    sink.close()
    sub.close()


def test_a_flood_of_detect_set_commands_is_not_answered_in_kind(broker, tmp_path):
    """Every command on detect/set was answered at once with detect/state and its attributes,
    two retained QoS 1 messages, even an `ON` to a switch already on: a real `maskd run` under
    10,000 commands a second queued 34,000 of them in 10 s, the violations waiting 10-12 s
    behind them, no stats meanwhile, 125 MB more memory. A command that changes nothing now
    sends nothing, and the state follows changes at most DETECT_STATE_EVERY_S apart, always
    ending on the switch's last word; events go on at once."""
    sub, control, sink = _switch_under_test(broker, tmp_path)
    sent = len(sub.on(f"{CAM}/detect/state"))
    for _ in range(2000):  # on already: nothing to say
        sub.client.publish(f"{CAM}/detect/set", "ON", qos=1)
    for i in range(2000):
        sub.client.publish(f"{CAM}/detect/set", "OFF" if i % 2 == 0 else "ON", qos=1)
    sub.client.publish(f"{CAM}/detect/set", "OFF", qos=1)
    sub.client.publish(f"{CAM}/detect/flood-done", "x", qos=1)  # after all of them, in order
    assert sub.wait(lambda ms: any(m.topic.endswith("flood-done") for m in ms), 15)
    started = time.monotonic()
    for ev in script("f", 1, 0):  # events are not held up behind the switch's state
        sink.emit(ev)
    assert sink.flush(10)
    assert time.monotonic() - started < 2.0
    assert wait_until(lambda: [m.payload for m in sub.on(f"{CAM}/detect/state")][-1:] == [b"OFF"], 5)
    assert control.detect_enabled is False
    time.sleep(1.0)
    states = sub.on(f"{CAM}/detect/state")[sent:]
    assert len(states) <= 20, len(states)  # was 4,000: one per change
    assert states[-1].payload == b"OFF"
    attrs = sub.on(f"{CAM}/detect/attributes")
    assert len(attrs) <= 21 and attrs[-1].json()["switch"] == "OFF", len(attrs)
    sink.close()
    sub.close()


def test_huge_binary_messages_on_detect_set_are_not_read_as_text(broker, tmp_path):
    """A command is a few bytes; every message on detect/set was decoded as UTF-8 whole first:
    1 MB that is not UTF-8 took 11 ms of the interpreter (paho's thread, holding the GIL), so
    a flood of them (78 a second to a real `maskd run`) took its loop from 100 to 20 frames/s,
    for seconds after the flood had stopped. A message longer than any command is no command,
    undecoded: 240 MB of such junk costs the process no more CPU than 240 MB of ASCII (was:
    2.6 s more, the sender and the sink being this process)."""
    sub, control, sink = _switch_under_test(broker, tmp_path)

    def cpu_for(junk: bytes, then: str) -> float:
        """The process's CPU time until the sink has had 60 copies of ``junk`` and ``then``."""
        sub.client.publish(f"{CAM}/detect/set", junk, qos=1).wait_for_publish(10)  # warm up
        started = time.process_time()
        for _ in range(60):
            sub.client.publish(f"{CAM}/detect/set", junk, qos=1)
        sub.client.publish(f"{CAM}/detect/set", then, qos=1)
        assert wait_until(lambda: control.detect_enabled is (then == "ON"), 60)
        return time.process_time() - started

    ascii_cpu = cpu_for(b"a" * 4_000_000, "OFF")
    binary_cpu = cpu_for(b"\xff" * 4_000_000, "ON")
    assert binary_cpu < ascii_cpu + 1.0, (binary_cpu, ascii_cpu)
    sink.close()
    sub.close()


def test_a_flood_on_home_assistants_status_topic_is_one_announcement_a_second(
        broker, tmp_path, caplog):
    """Anyone who may publish on `homeassistant/status` can send `online` as fast as the
    network allows, or junk: the discovery config goes again at most once a second, the last
    `online` always followed by one, and the journal gets a line a minute (was: a 2.7 KB
    retained publish and an INFO line for each of them, 500 for 500). Junk (binary, empty,
    1 MB, JSON, a retained `offline`) announces nothing and stops nothing."""
    config = "homeassistant/device/maskd_dev1_cam1/config"
    sub = Subscriber(broker, [config, f"{CAM}/violation"])
    sub.client.publish("homeassistant/status", b"\xff\x00", qos=1, retain=True).wait_for_publish(5)
    sink = MqttSink.from_config(cfg_for(broker, tmp_path / "state"), model_name="m")
    assert wait_until(lambda: sink.connected)
    assert len(sub.wait_topic(config)) == 1

    def announced() -> list[str]:
        return [r.getMessage() for r in caplog.records if "announcing discovery" in r.getMessage()]

    with caplog.at_level(logging.INFO, logger="maskd.mqtt"):
        for junk in (b"", b"\x00\xff", b"x" * 1_000_000, b'{"state": "online"}', b"offline"):
            sub.client.publish("homeassistant/status", junk, qos=1)
        for _ in range(500):
            sub.client.publish("homeassistant/status", "online", qos=1)
        assert sub.wait(lambda ms: len(ms) >= 2, 5)  # the first one at once
        time.sleep(2.5)  # the flood is over; the one it held back has gone
        n = len(sub.on(config))
        assert 3 <= n <= 4, n  # at connect, at the first `online`, once after the flood
        assert len(announced()) == 1, announced()
        for ev in script("h", 1, 0):  # events go on
            sink.emit(ev)
        assert sink.flush(10) and sink.health()["reconnects"] == 0
    sink.close()
    sub.close()


def test_a_retained_online_on_home_assistants_status_is_no_restart(tmp_path, caplog):
    """Home Assistant may be set to retain its birth message (its MQTT options), and a tool
    may leave `online` retained there: the broker hands it to maskd at every connection,
    right after the connection's own discovery config. It was taken for a restart: the
    discovery config sent twice at each (re)connect and an INFO line saying Home Assistant
    restarted when it had not. A retained one is from before this connection: nothing; a live
    `online` still announces."""
    config = "homeassistant/device/maskd_dev1_cam1/config"
    with Broker(tmp_path / "broker", persistence=True) as broker:

        def announced() -> int:  # as the broker took them, whoever heard them
            return sum(f"'{config}'" in line and "Received PUBLISH from maskd-dev1-cam1" in line
                       for line in broker.log().splitlines())

        sub = Subscriber(broker, ["homeassistant/status"])
        sub.client.publish("homeassistant/status", "online", qos=1, retain=True).wait_for_publish(5)
        with caplog.at_level(logging.INFO, logger="maskd.mqtt"):
            sink = MqttSink.from_config(cfg_for(broker, tmp_path / "state"), model_name="m")
            assert wait_until(lambda: sink.connected)
            assert wait_until(lambda: announced() >= 1)
            broker.stop()  # the retained `online` is kept (persistence) and handed over again
            broker.start()
            assert wait_until(lambda: sink.health()["reconnects"] == 1 and sink.connected, 15)
            assert wait_until(lambda: announced() >= 2)
            time.sleep(2.0)  # a re-announcement would have come by now (REDISCOVER_EVERY_S)
            assert announced() == 2, announced()  # one per connection (was: two)
            assert "announcing discovery again" not in caplog.text, caplog.text
            sub.client.publish("homeassistant/status", "online", qos=1)  # Home Assistant, live
            assert wait_until(lambda: announced() == 3, 5)
            assert "Home Assistant restarted; announcing discovery again" in caplog.text
        sink.close()
        sub.close()


def test_lwt_on_kill_and_retained_state_after_restart(broker, tmp_path):
    sub = Subscriber(broker, ["maskd/#"])
    state = tmp_path / "state"
    d = start_driver(broker.url, state, "--then", "wait", "--violations", "1", "--updates", "0")
    read_until(d, "done")
    assert sub.wait(lambda ms: any(m.topic == f"{CAM}/violation" and m.json()["seq"] == 1
                                   for m in ms), 10)
    os.kill(d.pid, signal.SIGKILL)
    d.wait()
    assert sub.wait(lambda ms: [m.payload for m in ms if m.topic == f"{CAM}/status"][-1:]
                    == [b"offline"], 10), "no last will after SIGKILL"
    # the last will is retained: Home Assistant connecting later sees the camera offline, not
    # the `online` of the killed run for ever
    assert retained_now(broker, [f"{CAM}/status"])[f"{CAM}/status"] == b"offline"

    d = start_driver(broker.url, state, "--then", "wait")
    read_until(d, "connected")
    assert sub.wait(lambda ms: [m.payload for m in ms if m.topic == f"{CAM}/status"][-1:]
                    == [b"online"], 10)
    fresh = Subscriber(broker, ["maskd/#", "homeassistant/#"])  # sees only retained messages
    assert fresh.wait_topic(f"{CAM}/status/detail")
    assert fresh.wait_topic("homeassistant/device/maskd_dev1_cam1/config")
    retained = {m.topic: m.payload for m in fresh.messages if m.retain}
    assert retained[f"{CAM}/status"] == b"online"
    assert retained[f"{CAM}/violation/active"] == b"OFF"
    assert retained[f"{CAM}/detect/state"] == b"ON"
    assert json.loads(retained[f"{CAM}/status/detail"])["previous_stop"] == "unclean"
    assert f"{CAM}/violation" not in retained
    d.send_signal(signal.SIGTERM)
    assert d.wait(10) == 0
    assert fresh.wait(lambda ms: [m.payload for m in ms if m.topic == f"{CAM}/status"][-1:]
                      == [b"offline"], 5)
    fresh.close()
    sub.close()


def test_a_restart_end_reaches_home_assistants_event_entity(broker, tmp_path):
    """A run killed with a violation open: the next start ends it `restart` on `violation`, and
    Home Assistant's event entity (`violation/event`, each start and end) got nothing, so an
    automation waiting for the end never saw it (the end is stored before the first connect,
    and the entity's message went out only while connected)."""
    sub = Subscriber(broker, [f"{CAM}/violation/event", f"{CAM}/violation"])
    state = tmp_path / "state"
    d = start_driver(broker.url, state, "--then", "wait", "--violations", "1", "--updates", "0",
                     "--left-open", "1")
    read_until(d, "done")
    assert sub.wait(lambda ms: events(sub), 10)  # the start is on the broker
    os.kill(d.pid, signal.SIGKILL)
    d.wait()
    d = start_driver(broker.url, state, "--then", "wait")
    try:
        read_until(d, "connected")
        trigger = f"{CAM}/violation/event"
        def ends() -> list[dict]:
            return [m.json() for m in sub.on(trigger) if m.json()["event_type"] == "end"]

        assert sub.wait(lambda ms: ends(), 10), [m.payload for m in sub.messages]
        end, = ends()
        assert end["end_reason"] == "restart"
        assert end["event_id"] == events(sub)[0]["event_id"]
        # live only, as every trigger: retained, Home Assistant's restart would fire it again
        assert trigger not in retained_now(broker, [trigger])
    finally:
        d.send_signal(signal.SIGTERM)
        assert d.wait(10) == 0
        sub.close()


def test_the_run_loops_restart_end_reaches_the_event_entity_once_connected(tmp_path):
    """The run loop's `restart` end (maskd.ledger) is given before the broker answers: it
    reaches `violation/event` at the connect."""
    b = Broker(tmp_path / "b")  # configured, not started yet
    sink = MqttSink.from_config(cfg_for(b, tmp_path / "state", reconnect_min_s=1.0,
                                        reconnect_max_s=2.0), model_name="m")
    start, = script("r", 1, 0, left_open=1)
    end = dataclasses.replace(start, event_type="end", seq=1, end_time=start.start_time + 5,
                              end_reason="restart")
    sink.emit(end)
    with b:
        sub = Subscriber(b, [f"{CAM}/violation/event"])
        try:
            assert sub.wait(lambda ms: len(ms) >= 1, 10)
            got = sub.messages[0].json()
            assert (got["event_type"], got["end_reason"]) == ("end", "restart")
            assert got["event_id"] == end.event_id
        finally:
            sink.close()
            sub.close()


def test_counts_of_a_loop_that_sends_no_more_reach_a_broker_that_answers_late(tmp_path):
    """A clip that ended before the broker answered (a 3.1.1-only one costs a retry; a broker
    restarting; `--exit-at-end` waits for it): `violations`, `faces` and `state` were never
    retained, as the connect leaves the counts to the next frame or stats, and neither comes
    any more, so a killed run's `violations` `1` stayed for good. The heartbeat that stands in
    for the loop's stats carries the counts too."""
    b = Broker(tmp_path / "b")  # configured, not started yet
    sink = MqttSink.from_config(cfg_for(b, tmp_path / "state", reconnect_min_s=1.0,
                                        reconnect_max_s=2.0), model_name="m")
    sink.on_state(counts(2, 1, 1))  # the last frame's, before the broker is there
    with b:
        try:
            assert wait_until(lambda: sink.connected, 10)
            assert wait_until(lambda: {f"{CAM}/{t}" for t in ("violations", "faces", "state")}
                              <= retained_now(b).keys(), 5), retained_now(b).keys()
            assert retained_now(b)[f"{CAM}/faces"] == b"2"
        finally:
            sink.close()


def test_a_restart_end_after_a_clock_step_back_is_not_before_its_start(broker, tmp_path):
    """A run killed after NTP stepped the clock back an hour during a violation: the outbox's
    restart end was dated when its last message was stored, on the new clock, an hour before
    the start it ends."""
    from maskd.outbox import Outbox

    state = tmp_path / "state"
    start = time.time() + 3600.0  # fake-hwclock's late time at the start
    stored = ViolationPayload.build(script("late", 1, 1)[1], device_id="dev1", model="m1",
                                    snapshot=False).stored()
    stored |= {"start_time": start, "duration_s": 40.0, "clock_step_s": -3600.0}
    outbox = Outbox(state)
    outbox.put(f"{CAM}/violation", stored, track=(stored["event_id"], True))
    outbox.close()
    sub = Subscriber(broker, [f"{CAM}/violation"])
    sink = MqttSink.from_config(cfg_for(broker, state), model_name="m1")
    try:
        assert sink.flush(10)
        assert sub.wait(lambda ms: any(m.json()["end_reason"] == "restart" for m in ms), 10)
        ends = [e for e in events(sub) if e["end_reason"] == "restart"]
        check_schema(ends[0])
        assert ends[0]["end_time"] == start + 40.0 and ends[0]["duration_s"] == 40.0
    finally:
        sink.close()
        sub.close()


def test_cameras_dropped_after_a_kill_go_offline_with_no_violation_open(broker, tmp_path):
    """A killed run's camera that the next config has not: nothing else would ever reset its
    retained topics (the last will covers only the process's status). Was: `violation/active`
    ON and, in the cameras: layout, `status` online for ever. Chain: a single-camera process
    killed during a violation, then a real `maskd run` of a cameras: map without it (killed
    too), then a sink for part of that map."""
    state = tmp_path / "state"
    d = start_driver(broker.url, state, "--then", "wait", "--violations", "1", "--left-open", "1")
    read_until(d, "done")
    sub = Subscriber(broker, ["maskd/#"])
    assert sub.wait(lambda ms: [m.payload for m in ms if m.topic == f"{CAM}/violation/active"][-1:]
                    == [b"ON"], 10)
    # what a real loop leaves with one person in violation (the driver's counts say none)
    sub.client.publish(f"{CAM}/violations", "1", qos=1, retain=True).wait_for_publish(5)
    os.kill(d.pid, signal.SIGKILL)
    d.wait()
    cfg = tmp_path / "map.yaml"
    cfg.write_text(f"device_id: dev1\nmqtt: {{url: '{broker.url}'}}\ncameras:\n"
                   "  door: {source: {kind: demo}}\n  yard: {source: {kind: demo}}\n")
    run = subprocess.Popen([sys.executable, "-m", "maskd", "run", "--config", str(cfg),
                            "--state-dir", str(state)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert sub.wait(lambda ms: [m.payload for m in ms if m.topic == f"{BASE}/yard/status"][-1:]
                        == [b"online"], 60), "the cameras: map never came up"
        assert sub.wait(lambda ms: [m.payload for m in ms if m.topic == f"{CAM}/violation/active"
                                    ][-1:] == [b"OFF"], 10), "cam1's violation still ON"
        assert sub.wait(lambda ms: any(m.topic == f"{CAM}/violation" and m.json()["end_reason"]
                                       == "restart" for m in ms), 10)
    finally:
        run.kill()
        run.wait()
    sink = MqttSink(cfg_for(broker, state).mqtt, "dev1", "door", state,
                    cameras={"door": RunControl()})
    try:
        assert wait_until(lambda: sink.connected, 10)
        assert sub.wait(lambda ms: [m.payload for m in ms if m.topic == f"{BASE}/yard/status"
                                    ][-1:] == [b"offline"], 10), "yard still online"
        retained = retained_now(broker, ["maskd/#"])
    finally:
        sink.close()
        sub.close()
    assert retained[f"{CAM}/violation/active"] == b"OFF" and retained[f"{CAM}/status"] == b"offline"
    assert retained[f"{CAM}/violations"] == b"0"
    assert retained[f"{BASE}/yard/violation/active"] == b"OFF"
    assert retained[f"{BASE}/door/status"] == b"online"  # the configured camera is left alone


def test_test_brokers_listen_outside_the_ports_clients_are_given():
    """A stopped broker's port must not be taken by a client meanwhile (seen once in .ci/run:
    "Address already in use" on restart, after maskd had reconnected to it for seconds)."""
    lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    ports = {free_port() for _ in range(50)}
    assert len(ports) > 40 and not any(lo <= p <= hi for p in ports)


def test_a_broker_whose_port_was_taken_meanwhile_does_not_report_a_start(tmp_path):
    """Broker.start only checked that something answered on the port: with another process
    listening there, mosquitto exited with 'Address already in use' and start() returned as
    if it ran, so the caller talked to the other process."""
    b = Broker(tmp_path / "mq")
    with socket.socket() as other:
        other.bind(("127.0.0.1", b.port))
        other.listen()
        with pytest.raises(RuntimeError, match=rf"^mosquitto exited \(\d+\) on port {b.port}: "
                                               r"\d+: Error: Address already in use"):
            b.start()
    assert b.proc is None
    with b:  # the port free again: it starts, and the listener is its own
        assert b._listens() is True


def test_sigkill_with_pending_events_delivers_after_restart(broker, tmp_path):
    state = tmp_path / "state"
    broker.stop()  # events happen while the broker is down
    d = start_driver(broker.url, state, "--then", "wait", "--violations", "3", "--tag", "k")
    read_until(d, "done")
    os.kill(d.pid, signal.SIGKILL)
    d.wait()
    broker.start()
    sub = Subscriber(broker, [f"{CAM}/violation"])
    d = start_driver(broker.url, state, "--then", "exit", "--flush-timeout", "20")
    assert d.wait(30) == 0, d.stderr.read()
    want = expected("k", 3, 1)
    assert sub.wait(lambda ms: len(dedup([m.json() for m in ms])) >= len(want), 10)
    got = events(sub)
    assert dedup(got) == want
    assert all(e["buffered"] for e in got)
    sub.close()


def test_repeated_disconnects_during_a_burst_keep_order_and_completeness(broker, tmp_path,
                                                                        caplog):
    """Kick the sink off the broker (client-id takeover) five times while it publishes."""
    import threading

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    caplog.set_level(logging.INFO, logger="maskd.mqtt")
    sub = Subscriber(broker, [f"{CAM}/violation"])
    sink = MqttSink.from_config(cfg_for(broker, tmp_path / "state", reconnect_min_s=0.05,
                                        reconnect_max_s=0.2))
    assert wait_until(lambda: sink.connected)
    evs = script("b", 150, 2)  # 600 messages

    def produce() -> None:
        for ev in evs:
            sink.emit(ev)

    producer = threading.Thread(target=produce)
    producer.start()
    for _ in range(5):
        time.sleep(0.2)
        intruder = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="maskd-dev1-cam1")
        intruder.connect("127.0.0.1", broker.port)
        intruder.loop(0.2)
        intruder.disconnect()
    producer.join()
    assert sink.flush(30)
    assert sink.health()["reconnects"] >= 3
    assert "another client using the client id 'maskd-dev1-cam1'" in caplog.text
    sink.close()
    want = [(e.event_id, e.seq) for e in evs]
    assert sub.wait(lambda ms: len(dedup([m.json() for m in ms])) >= len(want), 10)
    got = events(sub)
    assert dedup(got) == want
    assert any(e["buffered"] for e in got)  # some were replayed across a reconnect
    sub.close()


def test_tls_client_cert_and_password(tmp_path, monkeypatch, tls):
    with Broker(tmp_path / "b", users={"maskd": "s3cret"}, tls=tls, require_client_cert=True) as b:
        sub = Subscriber(b, [f"{CAM}/violation"], username="maskd", password="s3cret",
                         client_cert=True)
        monkeypatch.setenv("MASKD_TEST_PW", "s3cret")
        cfg = cfg_for(b, tmp_path / "state", username="maskd", password_env="MASKD_TEST_PW",
                      ca_file=tls.ca, cert_file=tls.client_cert, key_file=tls.client_key)
        assert cfg.mqtt.url.startswith("mqtts://")
        sink = MqttSink.from_config(cfg)
        for ev in script("t", 1, 0):
            sink.emit(ev)
        assert sink.flush(15)
        sink.close()
        assert dedup(events(sub)) == expected("t", 1, 0)
        sub.close()


def restarted_and_delivered(b: Broker, sink: MqttSink, ev, **auth) -> Subscriber:  # noqa: ANN001
    """Restart the broker (taking what the test changed in its files), wait for the sink to
    connect again and deliver ``ev``: the subscriber, made after the restart, that got it."""
    b.stop()
    b.start()
    assert wait_until(lambda: sink.connected, 20), b.log()[-2000:]
    after = Subscriber(b, [f"{CAM}/violation"], **auth)
    sink.emit(ev)
    assert sink.flush(15)
    assert after.wait(lambda ms: len(ms) >= 1, 10)
    return after


def warned_once(caplog, part: str) -> None:  # noqa: ANN001
    warned = [r.getMessage() for r in caplog.records
              if r.levelno == logging.WARNING and part in r.getMessage()]
    assert len(warned) == 1, warned


def test_a_client_certificate_renewed_on_disk_is_used_from_the_next_connection(
        tmp_path, caplog, tls):
    """A client certificate is renewed months into a run (certbot, step-ca: the files replaced
    in place). The broker comes back trusting only the new issuer: maskd connects with the new
    certificate without a restart, and its status line drops the old one's end at once. Files
    changed into something that does not load leave the last good ones in use, and say so."""
    old = make_ca(tmp_path / "old", days=10, name="old issuer")
    new = make_ca(tmp_path / "new", name="new issuer")
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"

    def install(crt: Path, k: Path | None = None) -> None:  # as renewal tools do: a rename
        for src, dst in ((crt, cert), (k, key)):
            if src is not None:
                (tmp_path / "tmp").write_bytes(src.read_bytes())
                (tmp_path / "tmp").chmod(0o600)
                (tmp_path / "tmp").replace(dst)

    install(old.client_cert, old.client_key)
    trusted = tmp_path / "clients-ca.crt"  # whom the broker takes clients from
    trusted.write_text(tls.ca.read_text() + old.ca.read_text())
    server = Tls(trusted, tls.server_cert, tls.server_key, tls.client_cert, tls.client_key)
    with Broker(tmp_path / "b", tls=server, require_client_cert=True) as b:
        sub = Subscriber(b, [f"{CAM}/violation"], client_cert=True)
        cfg = cfg_for(b, tmp_path / "state", ca_file=tls.ca, cert_file=cert, key_file=key)
        with caplog.at_level(logging.INFO, logger="maskd"):
            sink = MqttSink.from_config(cfg)
            try:
                assert wait_until(lambda: sink.connected)
                [line] = sink.faults()
                assert line.startswith(f"mqtt.cert_file {cert}: the certificate expires on "), line
                evs = script("r", 1, 0)  # a start, then its end
                sink.emit(evs[0])
                assert sink.flush(15)

                install(new.client_cert)  # the certificate first, its key not yet
                assert sink.faults() == [line]  # not read while it may be half written
                assert wait_until(lambda: len(sink.faults()) == 2, 5 + SETTLE_S)
                broken = sink.faults()
                assert broken[0] == line, broken
                assert broken[1].startswith("MQTT: mqtt.ca_file/cert_file/key_file do not load: ")
                assert broken[1].endswith("; connections go on with the TLS files read at "
                                          f"{broken[1].rsplit(' ', 1)[1]}"), broken
                assert sink.faults() == broken  # tried again only once a file changes
                install(new.client_cert, new.client_key)
                assert wait_until(lambda: sink.faults() == [], 5 + SETTLE_S)  # a year ahead
                assert "read the changed TLS files (mqtt.cert_file until " in caplog.text

                trusted.write_text(tls.ca.read_text() + new.ca.read_text())  # the old issuer out
                after = restarted_and_delivered(b, sink, evs[1], client_cert=True)
            finally:
                sink.close()
    assert dedup(events(sub))[:1] + dedup(events(after)) == [(e.event_id, e.seq) for e in evs]
    sub.close()
    after.close()
    warned_once(caplog, "do not load")


def test_untrusted_broker_certificate_is_a_clear_error_and_retried(tmp_path, caplog, tls):
    """OpenSSL's words (`unable to get local issuer certificate`, or `self-signed certificate
    in certificate chain` when the broker sends its CA too) name no setting: the log and
    doctor's broker row say that mqtt.ca_file holds no CA of the broker's certificate."""
    from maskd.commands.doctor import probe_broker

    other = make_ca(tmp_path / "other-ca")
    said = f"; mqtt.ca_file {other.ca} holds no CA that signed the broker's certificate"
    with Broker(tmp_path / "b", tls=tls) as b:
        cfg = cfg_for(b, tmp_path / "state", ca_file=other.ca)
        verdict, detail = probe_broker(cfg)
        assert verdict == "FAIL" and said in detail, detail
        with caplog.at_level(logging.INFO, logger="maskd.mqtt"):
            sink = MqttSink.from_config(cfg)
            time.sleep(1.5)
            assert not sink.connected
            sink.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "certificate verify failed" in errors[0].lower(), errors
    assert said in errors[0], errors


def test_a_client_certificate_the_broker_refuses_is_named_by_run_and_doctor(tmp_path, caplog, tls):
    """A broker that requires client certificates (mosquitto: require_certificate true) turns
    down maskd's (none, or another CA's): under TLS 1.3 its alert is the answer to CONNECT.
    The sink's log and doctor's broker row name mqtt.cert_file (was: the sink `did not answer
    CONNECT ([SSL: TLSV1_ALERT_UNKNOWN_CA] ...)`, doctor only `closed the connection without
    answering CONNECT`); the event waits in the outbox and goes with the right certificate."""
    from maskd.commands.doctor import probe_broker

    other = make_ca(tmp_path / "other-ca", name="another CA")
    state = tmp_path / "state"
    with Broker(tmp_path / "b", tls=tls, require_client_cert=True) as b:
        for cert, key, said in ((None, None, "set mqtt.cert_file and mqtt.key_file"),
                                (other.client_cert, other.client_key,
                                 f"(mqtt.cert_file {other.client_cert}): give one signed by")):
            cfg = cfg_for(b, state, ca_file=tls.ca, cert_file=cert, key_file=key)
            verdict, detail = probe_broker(cfg)
            assert verdict == "FAIL" and said in detail, detail
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="maskd.mqtt"):
                sink = MqttSink.from_config(cfg)
                sink.emit(script("k", 1, 0)[0])
                assert wait_until(lambda: caplog.records, 10)
                assert not sink.connected and sink.health()["outbox_depth"] >= 1
                sink.close()
            assert all(said in r.getMessage() for r in caplog.records), caplog.text
        sink = MqttSink.from_config(cfg_for(b, state, ca_file=tls.ca, cert_file=tls.client_cert,
                                            key_file=tls.client_key))
        try:
            assert sink.flush(15) and sink.health()["outbox_depth"] == 0
        finally:
            sink.close()


def test_wrong_password_is_a_clear_error_and_retried(tmp_path, caplog):
    pw = tmp_path / "pw"
    pw.write_text("wrong-horse\n")
    with Broker(tmp_path / "b", users={"maskd": "s3cret"}) as b:
        cfg = cfg_for(b, tmp_path / "state", username="maskd", password_file=pw)
        with caplog.at_level(logging.INFO, logger="maskd.mqtt"):
            sink = MqttSink.from_config(cfg)
            sink.emit(script("w", 1, 0)[0])
            assert wait_until(lambda: b.log().count("not authorised") >= 3, 15), b.log()[-2000:]
            assert not sink.connected
            assert sink.health()["outbox_depth"] == 1  # kept for when the password is fixed
            sink.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("refused the connection" in e and "check mqtt.username" in e and str(pw) in e
               for e in errors), errors
    assert len(errors) == 1  # the same failure is logged once, not at every retry
    assert "wrong-horse" not in caplog.text


def test_a_password_changed_on_disk_is_used_from_the_next_connection(tmp_path, caplog):
    """The building rotates maskd's MQTT password: the file gets the new one and the broker
    restarts with it; maskd connects again without a restart. An empty file on the way (a
    write that truncates first) keeps the last password in use, and says so once."""
    pw = tmp_path / "pw"
    pw.write_text("old-horse\n")
    with Broker(tmp_path / "b", users={"maskd": "old-horse", "watcher": "w"}) as b:
        sub = Subscriber(b, [f"{CAM}/violation"], username="watcher", password="w")
        cfg = cfg_for(b, tmp_path / "state", username="maskd", password_file=pw)
        evs = script("p", 1, 0)  # a start, then its end
        with caplog.at_level(logging.INFO, logger="maskd"):
            sink = MqttSink.from_config(cfg)
            try:
                sink.emit(evs[0])
                assert sink.flush(15)
                pw.write_text("")
                assert wait_until(lambda: sink.faults() != [], 5 + SETTLE_S)
                [empty] = sink.faults()
                assert empty.startswith("MQTT: mqtt.password_file ") and (
                    "is empty; connections go on with the password read at " in empty), empty
                assert sink.faults() == [empty]
                pw.write_text("new-horse\n")
                assert wait_until(lambda: sink.faults() == [], 5 + SETTLE_S)
                subprocess.run(["mosquitto_passwd", "-b", str(b.dir / "passwd"), "maskd",
                                "new-horse"], check=True, capture_output=True)
                after = restarted_and_delivered(b, sink, evs[1], username="watcher", password="w")
            finally:
                sink.close()
    assert dedup(events(sub))[:1] + dedup(events(after)) == [(e.event_id, e.seq) for e in evs]
    sub.close()
    after.close()
    assert "read the changed mqtt.password_file; the next connection uses it" in caplog.text
    warned_once(caplog, "is empty")
    assert "horse" not in caplog.text


@pytest.mark.slow
def test_broker_outage_of_30s_loses_nothing(tmp_path):
    """Broker stopped 31 s in the middle of violations: all events arrive, in order."""
    with Broker(tmp_path / "b", persistence=True) as b:
        sub = Subscriber(b, [f"{CAM}/violation"], client_id="outage-sub", clean=False)
        d = start_driver(b.url, tmp_path / "state", "--then", "exit", "--violations", "25",
                         "--updates", "2", "--period", "0.4", "--flush-timeout", "60",
                         "--reconnect-max", "2")
        want = expected("v", 25, 2)  # 100 events over ~40 s
        assert sub.wait(lambda ms: len(ms) >= 10, 20)
        b.stop()
        t_down = time.monotonic()
        time.sleep(31)
        b.start()
        assert d.wait(90) == 0, d.stderr.read()[-3000:]
        assert sub.wait(lambda ms: len(dedup([m.json() for m in ms])) >= len(want), 30)
        got = events(sub)
        assert dedup(got) == want
        # live before and after the outage, replayed (buffered) across it
        assert any(e["buffered"] for e in got) and not all(e["buffered"] for e in got)
        assert time.monotonic() - t_down > 31
        sub.close()


# ---- MQTT 5, refused publishes, wrong listeners ----


def test_refused_publishes_are_kept_reported_and_offered_again(tmp_path, caplog, monkeypatch):
    """MQTT 5 PUBACK "Not authorized" (the broker's ACL): kept, reported, retried, delivered
    once the ACL lets them through. Under 3.1.1 mosquitto acknowledged them like any other."""
    monkeypatch.setattr("maskd.mqtt.sink.REFUSED_RETRY_S", 0.5)
    caplog.set_level(logging.INFO, logger="maskd.mqtt")
    with Broker(tmp_path / "b", acl=f"topic deny {CAM}/violation\ntopic readwrite #") as b:
        sub = Subscriber(b, [f"{CAM}/violation"])
        sink = MqttSink.from_config(cfg_for(b, tmp_path / "state"))
        for ev in script("r", 1, 1):
            sink.emit(ev)
        t0 = time.monotonic()
        assert sink.flush(20) is False
        assert time.monotonic() - t0 < 10  # all refused: no point waiting for the timeout
        h = sink.health()
        assert h["mqtt_version"] == "5" and h["refused"] == 3 and h["outbox_depth"] == 3
        assert sink.faults() == ["MQTT: 3 event(s) refused by the broker"]
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        refusals = [e for e in errors if "refused an event" in e]
        assert len(refusals) == 1 and "Not authorized" in refusals[0] and f"{CAM}/violation" in \
            refusals[0], errors  # logged once, not once per event or retry
        assert any("3 event(s) refused by the broker (Not authorized)" in e for e in errors)

        (b.dir / "acl").write_text("topic readwrite #\n")
        os.kill(b.proc.pid, signal.SIGHUP)  # mosquitto reloads its ACL
        assert wait_until(lambda: sink.health()["refused"] == 0, 10), b.log()[-1500:]
        assert sink.flush(10) is True
        assert sink.health()["refused"] == 0 and sink.faults() == []
        assert sub.wait(lambda ms: len(dedup([m.json() for m in ms])) >= 3, 5)
        assert dedup(events(sub)) == expected("r", 1, 1)
        sink.close()
        sub.close()


def test_a_broker_that_speaks_only_mqtt_311_gets_311(tmp_path, caplog):
    from mqtt_broker import Mqtt311Only

    caplog.set_level(logging.INFO, logger="maskd.mqtt")
    with Broker(tmp_path / "b") as b:
        relay = Mqtt311Only(b)
        sub = Subscriber(b, [f"{CAM}/violation"])
        sink = MqttSink.from_config(cfg_for(relay, tmp_path / "state"))  # type: ignore[arg-type]
        for ev in script("o", 1, 0):
            sink.emit(ev)
        assert sink.flush(15)
        assert relay.refused == 1 and sink.health()["mqtt_version"] == "3.1.1"
        assert "does not speak MQTT 5; using 3.1.1" in caplog.text
        assert "maskd doctor" in caplog.text  # where publish rights can still be checked
        sink.close()
        assert sub.wait(lambda ms: len(ms) >= 2, 5)
        assert dedup(events(sub)) == expected("o", 1, 0)
        sub.close()
        relay.close()


@pytest.mark.parametrize("old", ["HangsUpOnMqtt5", "SilentOnMqtt5Will"])
def test_a_311_broker_that_does_not_answer_an_mqtt5_connect_gets_311(tmp_path, caplog, old):
    """A broker older than MQTT 5 should refuse an MQTT 5 CONNECT (0x01); RabbitMQ 3 cannot parse
    it and hangs up, amqtt 0.12 reads one with a last will as 3.1.1 and waits for bytes that
    never come. `run` never connected to either and kept every event (`did not answer CONNECT
    ...; is that port a TLS listener?` or `... sent no CONNACK`, for good); `maskd doctor` said
    that too for RabbitMQ, and OK over 3.1.1 for amqtt (its probe has no will). Two unanswered
    MQTT 5 CONNECTs in a row are followed by a 3.1.1 one, in both."""
    import mqtt_broker

    from maskd.commands.doctor import OK, probe_broker

    caplog.set_level(logging.INFO, logger="maskd.mqtt")
    with Broker(tmp_path / "b") as b:
        relay = getattr(mqtt_broker, old)(b)
        verdict, detail = probe_broker(cfg_for(relay, tmp_path / "state"))
        assert verdict == OK and "MQTT 3.1.1" in detail, detail
        relay.refused = 0
        sub = Subscriber(b, [f"{CAM}/violation"])
        sink = MqttSink.from_config(cfg_for(relay, tmp_path / "state",  # type: ignore[arg-type]
                                            keepalive_s=5))
        for ev in script("w", 1, 0):
            sink.emit(ev)
        assert sink.flush(30), caplog.text
        # two unanswered, 3.1.1 answered, then MQTT 5 asked once more (a stuck broker answers)
        assert relay.refused == 3 and sink.health()["mqtt_version"] == "3.1.1"
        assert "trying MQTT 3.1.1" in caplog.text
        assert "does not speak MQTT 5; using 3.1.1" in caplog.text
        sink.close()
        assert sub.wait(lambda ms: len(ms) >= 2, 5)
        assert dedup(events(sub)) == expected("w", 1, 0)
        sub.close()
        relay.close()


@pytest.mark.parametrize("old", ["HangsUpOnMqtt5", "SilentOnMqtt5Will"])
def test_an_old_broker_that_answers_311_is_no_error_at_start_or_reconnect(tmp_path, caplog,
                                                                          monkeypatch, old):
    """RabbitMQ 3 (a real one: `did not answer CONNECT (Unspecified error); is that port a TLS
    listener?`) and amqtt answer only the 3.1.1 CONNECT tried after the MQTT 5 ones: maskd
    logged that ERROR at every start and every reconnect (once the minute had passed) before
    its 3.1.1 connection worked, noise for a broker that works. The fallback is said by its
    WARNING; an ERROR only where 3.1.1 goes unanswered too (a TLS listener, tested above)."""
    import mqtt_broker

    from maskd import lograte

    monkeypatch.setattr(lograte, "LOG_EVERY_S", 0.5)  # each reconnect past the minute
    caplog.set_level(logging.INFO, logger="maskd.mqtt")
    with Broker(tmp_path / "b") as b:
        relay = getattr(mqtt_broker, old)(b)
        sub = Subscriber(b, [f"{CAM}/violation"])
        sink = MqttSink.from_config(cfg_for(relay, tmp_path / "state",  # type: ignore[arg-type]
                                            keepalive_s=5))
        try:
            evs = script("r", 1, 0)
            sink.emit(evs[0])
            assert sink.flush(30), caplog.text
            b.stop()  # the broker restarts: maskd reconnects
            time.sleep(1.0)
            b.start()
            for ev in evs[1:]:
                sink.emit(ev)
            assert sink.flush(40), caplog.text
            assert sink.health()["mqtt_version"] == "3.1.1" and sink.reconnects >= 1
        finally:
            sink.close()
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors == [], errors
        assert "does not speak MQTT 5; using 3.1.1" in caplog.text
        assert sub.wait(lambda ms: len(ms) >= 1, 5)  # delivered (the rest: flush's PUBACKs)
        assert dedup(events(sub))[0] == expected("r", 1, 0)[0]
        sub.close()
        relay.close()


def test_an_old_broker_slow_to_answer_311_gets_311_not_a_reconnect_loop(tmp_path, caplog):
    """A 3.1.1 answer 2 s or more after the CONNECT is taken for a stuck mosquitto's and
    dropped to ask in MQTT 5 again; but RabbitMQ 3 on a loaded host (a Pi swapping, an auth
    backend) hangs up on every MQTT 5 CONNECT and answers every 3.1.1 one late: maskd went
    between them every few seconds for good, and no event was ever delivered. 3.1.1 answered
    late again and again, MQTT 5 never, is the broker's answer."""
    import mqtt_broker

    caplog.set_level(logging.INFO, logger="maskd.mqtt")
    with Broker(tmp_path / "b") as b:
        relay = mqtt_broker.HangsUpOnMqtt5(b)
        relay.answer_s = 2.5
        sub = Subscriber(b, [f"{CAM}/violation"])
        sink = MqttSink.from_config(cfg_for(relay, tmp_path / "state"))  # type: ignore[arg-type]
        try:
            for ev in script("l", 1, 0):
                sink.emit(ev)
            assert sink.flush(40), caplog.text
            assert sink.health()["mqtt_version"] == "3.1.1", caplog.text
            assert "does not speak MQTT 5; using 3.1.1" in caplog.text
        finally:
            sink.close()
        assert sub.wait(lambda ms: len(ms) >= 2, 5)
        assert dedup(events(sub)) == expected("l", 1, 0)
        sub.close()
        relay.close()


def test_a_broker_only_guessed_old_from_its_silence_is_asked_in_mqtt5_again(tmp_path, caplog):
    """Unanswered MQTT 5 CONNECTs are a guess that the broker is older than MQTT 5, and a
    mosquitto that hung up twice (stuck, cut off, going down) shows them too: a connection made
    on that guess kept maskd on 3.1.1 (a refused publish looks delivered) until its next start.
    Once that connection is lost, the next one asks in MQTT 5 first."""
    import mqtt_broker

    caplog.set_level(logging.INFO, logger="maskd.mqtt")
    with Broker(tmp_path / "b") as b:
        relay = mqtt_broker.HangsUpOnMqtt5(b)
        sub = Subscriber(b, [f"{CAM}/violation"])
        sink = MqttSink.from_config(cfg_for(relay, tmp_path / "state"))  # type: ignore[arg-type]
        sink.emit(script("g", 1, 0)[0])
        assert sink.flush(30), caplog.text
        # two unanswered, 3.1.1 answered, then MQTT 5 asked once more (a stuck broker answers)
        assert relay.refused == 3 and sink.health()["mqtt_version"] == "3.1.1"
        relay.old = False  # it was mosquitto all along
        b.stop()
        b.start()
        for ev in script("g", 1, 0)[1:]:
            sink.emit(ev)
        assert sink.flush(30), caplog.text
        assert sink.health()["mqtt_version"] == "5" and relay.refused == 3, caplog.text
        sink.close()
        assert sub.wait(lambda ms: len(dedup([m.json() for m in ms])) >= 2, 10)
        assert dedup(events(sub)) == expected("g", 1, 0)
        sub.close()
        relay.close()


@pytest.mark.parametrize("again", [False, True], ids=["stuck", "stuck-again"])
def test_a_stuck_mosquitto_answering_the_311_guess_is_asked_in_mqtt5_before_an_event(tmp_path,
                                                                                     again):
    """A mosquitto stuck a while (SIGSTOP here; a Pi swapping) answers no MQTT 5 CONNECT, so
    maskd's third CONNECT spoke 3.1.1, and the mosquitto, going on, answered that one: maskd
    stayed on 3.1.1 for the whole connection ('does not speak MQTT 5'), where a publish its ACL
    refuses looks delivered, and the event was dropped from the outbox as sent. A 3.1.1
    connection made on that guess asks in MQTT 5 once more before anything is sent.

    ``again``: stuck again right after it answered the 3.1.1 guess (a Pi swapping stalls more
    than once), it left the MQTT 5 CONNECT asked once more unanswered too: maskd took that for
    an old broker's answer and kept the next 3.1.1 connection, answered once it went on (376
    events lost in a real run). A 3.1.1 answer that came late is a stuck broker's."""
    with Broker(tmp_path / "b", acl=f"topic deny {CAM}/violation\ntopic readwrite #") as b:
        sink = MqttSink.from_config(cfg_for(b, tmp_path / "state", keepalive_s=5))
        try:
            assert wait_until(lambda: sink.connected, 10)
            os.kill(b.proc.pid, signal.SIGSTOP)
            try:
                assert wait_until(lambda: sink.health()["mqtt_version"] == "3.1.1", 40)
            finally:
                os.kill(b.proc.pid, signal.SIGCONT)
            if again:  # it answers the 3.1.1 guess, and stalls as MQTT 5 is asked once more
                assert wait_until(lambda: sink.health()["mqtt_version"] == "5", 20, every=0.001)
                os.kill(b.proc.pid, signal.SIGSTOP)
                try:
                    assert wait_until(lambda: sink.health()["mqtt_version"] == "3.1.1", 20)
                    time.sleep(5)  # the 3.1.1 CONNECT waits for it
                finally:
                    os.kill(b.proc.pid, signal.SIGCONT)
            assert wait_until(lambda: sink.connected, 20)
            sink.emit(script("s", 1, 0)[0])
            assert wait_until(lambda: sink.health()["refused"] == 1, 10), sink.health()
            assert sink.health()["mqtt_version"] == "5" and sink.health()["outbox_depth"] == 1
        finally:
            sink.close()


def _connection_errors(mq: MqttConfig, state_dir: Path, caplog: pytest.LogCaptureFixture,
                       timeout: float = 5.0) -> list[str]:
    """The ERROR lines of a sink that cannot connect with ``mq``, after several attempts; its
    event waits in the outbox."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="maskd.mqtt"):
        mq = mq.model_copy(update={"reconnect_min_s": 0.2, "reconnect_max_s": 0.5})
        sink = MqttSink(mq, "d", "c", state_dir)
        sink.emit(script("t", 1, 0)[0])
        assert wait_until(lambda: any(r.levelno >= logging.ERROR for r in caplog.records),
                          timeout), mq.url
        time.sleep(1.5)  # several more attempts
        assert not sink.connected and sink.health()["outbox_depth"] == 1
        sink.close()
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_tls_and_plain_listeners_mixed_up_are_named(tmp_path, caplog, tls):
    """mqtt:// at a TLS port: the broker drops the connection without a word; say why."""
    with Broker(tmp_path / "tls", tls=tls) as tls_b, Broker(tmp_path / "plain") as plain_b:
        cases = [(MqttConfig(url=tls_b.url.replace("mqtts://", "mqtt://")), "TLS listener"),
                 (MqttConfig(url=plain_b.url.replace("mqtt://", "mqtts://"), ca_file=tls.ca),
                  "plain (non-TLS) listener")]
        for mq, hint in cases:
            errors = _connection_errors(mq, tmp_path / hint.split()[0], caplog)
            assert len(errors) == 1 and hint in errors[0] and mq.url in errors[0], errors


def test_a_tls_listener_given_mqtt_is_one_line_a_minute_not_two(tmp_path, caplog, tls,
                                                               monkeypatch):
    """mqtt:// at a TLS port hangs up on every CONNECT, MQTT 5 or 3.1.1, so maskd goes back
    and forth between them: the journal got 'answered no MQTT 5 CONNECT; trying MQTT 3.1.1 (a
    broker older than MQTT 5 ...)' every minute beside the error that says what is wrong,
    two lines a minute, the second one a wrong lead. That guess is said once until a
    connection is made."""
    from maskd import lograte

    monkeypatch.setattr(lograte, "LOG_EVERY_S", 1.0)  # the minute, shortened for the test
    with Broker(tmp_path / "tls", tls=tls) as b:
        mq = MqttConfig(url=b.url.replace("mqtts://", "mqtt://"), reconnect_min_s=0.2,
                        reconnect_max_s=0.3)
        with caplog.at_level(logging.INFO, logger="maskd.mqtt"):
            sink = MqttSink(mq, "d", "c", tmp_path / "state")
            sink.emit(script("t", 1, 0)[0])
            time.sleep(6)  # the error comes with the 3.1.1 attempt, every third one
            sink.close()
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if "TLS listener" in m]) >= 3, said  # the minute did pass
    assert len([m for m in said if "trying MQTT 3.1.1" in m]) == 1, said


def test_a_listener_that_hangs_up_during_the_tls_handshake_is_no_client_certificate_fault(
        tmp_path, caplog, tls):
    """mqtts:// at a port that closes the connection on the TLS hello (a listener that speaks
    no TLS and hangs up cleanly): the line said "the broker hung up right after the TLS
    handshake, as one does that refuses the client certificate: set mqtt.cert_file", a
    handshake that never happened. Only a hang-up after the handshake is taken for that."""
    srv = socket.create_server(("127.0.0.1", 0))

    def hang_up() -> None:
        with contextlib.suppress(OSError):  # closed at the end
            while True:
                conn = srv.accept()[0]
                conn.recv(10)
                conn.shutdown(socket.SHUT_RDWR)  # a clean close (FIN): EOF, no reset
                conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        mq = MqttConfig(url=f"mqtts://127.0.0.1:{srv.getsockname()[1]}", ca_file=tls.ca)
        errors = _connection_errors(mq, tmp_path, caplog)
    finally:
        srv.close()
    assert errors and "EOF" in errors[0], errors
    assert "client certificate" not in errors[0] and "cert_file" not in errors[0], errors


def test_a_listener_that_never_answers_and_one_that_takes_only_qos_0_are_named(tmp_path, caplog):
    """A port that takes the connection and never sends a CONNACK (a hung broker, something
    else listening) is named as that after `keepalive_s` and retried, not taken for a TLS
    listener (was: `did not answer CONNECT (Keep alive timeout); is that port a TLS listener?`);
    a listener with mosquitto's `max_qos 0` refuses maskd's QoS 1 last will, and the error says
    what to change (was: only `QoS not supported`). Events wait in the outbox either way."""
    silent = socket.create_server(("127.0.0.1", 0))
    taken: list[socket.socket] = []

    def take() -> None:
        with contextlib.suppress(OSError):  # closed at the end
            while True:
                taken.append(silent.accept()[0])

    threading.Thread(target=take, daemon=True).start()
    qos0 = Broker(tmp_path / "qos0")
    qos0.conf.write_text(qos0.conf.read_text() + "max_qos 0\n")
    cases = [(MqttConfig(url=f"mqtt://127.0.0.1:{silent.getsockname()[1]}", keepalive_s=5),
              "sent no CONNACK within 5 s (mqtt.keepalive_s)"),
             (MqttConfig(url=qos0.url), "takes only QoS 0")]
    with qos0:
        for mq, hint in cases:
            # the silent port's error comes with the unanswered 3.1.1 CONNECT, the third (3 x
            # keepalive_s and the backoff: an MQTT 5 one is no error alone, amqtt's silence)
            errors = _connection_errors(mq, tmp_path / hint.split()[0], caplog, timeout=35.0)
            assert len(errors) == 1 and hint in errors[0] and mq.url in errors[0], errors
            assert "TLS" not in errors[0], errors
    silent.close()
    for conn in taken:
        conn.close()


def _stats_a_reconnect_sends(tmp_path, while_away) -> dict:
    """Connect, stop the broker, run ``while_away(sink)`` (a loop report made meanwhile), start
    the broker again: the stats the reconnect sends at once."""
    with Broker(tmp_path / "b") as b:
        cfg = cfg_for(b, tmp_path / "state", reconnect_min_s=0.2, reconnect_max_s=0.5)
        sink = MqttSink.from_config(cfg, model_name="m")
        try:
            assert wait_until(lambda: sink.connected, 10)
            b.stop()
            while_away(sink)
            b.start()
            assert wait_until(lambda: sink.connected, 10)
            stats = retained_once(b, lambda r: f"{CAM}/stats" in r, [f"{CAM}/stats"])
            return json.loads(stats[f"{CAM}/stats"])
        finally:
            sink.close()


OTHER_SINKS_FAULT = "JSON lines: /var/lib/maskd/events.jsonl: disk full"


def test_stats_sent_at_a_reconnect_do_not_say_the_broker_is_away(tmp_path, monkeypatch):
    """The loop's last report before a reconnect was made while the broker was away, and a
    reconnect sends it at once: its "broker not connected" line is dropped (Home Assistant's
    problem entity showed it for a minute after every outage); other sinks' faults stay."""
    from maskd.mqtt import sink as sink_mod
    from maskd.types import LoopStats

    monkeypatch.setattr(sink_mod, "DOWN_GRACE_S", 0.5)

    def away(sink):
        assert wait_until(lambda: any(f.startswith(sink_mod.NOT_CONNECTED)
                                      for f in sink.faults()), 10), sink.faults()
        sink.on_stats(LoopStats(fps=9.0, faults=(OTHER_SINKS_FAULT, *sink.faults())))  # as the loop

    sent = _stats_a_reconnect_sends(tmp_path, away)
    assert sent["fps"] == 9.0 and sent["faults"] == [OTHER_SINKS_FAULT] == sent["problems"], sent


def test_stats_sent_at_a_reconnect_carry_this_sinks_faults_of_now(tmp_path, monkeypatch):
    """A client certificate renewed while the broker refused it: the stats a reconnect sends
    still said 'the certificate expired ... the broker refuses the connection' beside
    `connected: true`, for a stats interval; this sink's lines of the loop's report give way
    to its lines of now, other sinks' stay."""
    from maskd.types import LoopStats

    def away(sink):
        expired = "mqtt.cert_file /x.crt: the certificate expired on 2026-11-11 00:00 UTC"
        monkeypatch.setattr(sink._credentials, "faults", lambda: [expired])
        sink.on_stats(LoopStats(fps=9.0, faults=(OTHER_SINKS_FAULT, *sink.faults())))
        monkeypatch.setattr(sink._credentials, "faults", lambda: [])  # renewed on disk

    sent = _stats_a_reconnect_sends(tmp_path, away)
    assert sent["faults"] == [OTHER_SINKS_FAULT] == sent["problems"], sent


def test_retained_state_and_stats_come_back_after_a_broker_lost_them(tmp_path):
    """A broker restarted without persistence forgets every retained message. On reconnect
    maskd publishes them again: state and faces with the next frame even when the counts did not
    change, stats at once (was: only after a change or a heartbeat, up to stats_interval_s)."""
    from maskd.types import LoopStats

    with Broker(tmp_path / "b") as b:
        cfg = cfg_for(b, tmp_path / "state", stats_interval_s=3600.0)
        sink = MqttSink.from_config(cfg, model_name="m")
        assert wait_until(lambda: sink.health()["connected"], 10)
        sink.on_state(counts(2, 1, 1))
        sink.on_stats(LoopStats(fps=12.5, frames=100))
        wanted = {f"{CAM}/state", f"{CAM}/faces", f"{CAM}/stats"}
        before = retained_once(b, lambda r: wanted <= set(r), [f"{CAM}/#"])
        assert wanted <= set(before), sorted(before)
        b.stop()
        b.start()  # no persistence: nothing retained any more
        assert wait_until(lambda: sink.health()["connected"], 20)
        time.sleep(1.2)  # past state_interval_s
        sink.on_state(counts(2, 1, 1))  # the same counts as before the restart
        after = retained_once(b, lambda r: wanted <= set(r), [f"{CAM}/#"])
        assert wanted <= set(after), sorted(after)
        assert after[f"{CAM}/faces"] == b"2" and json.loads(after[f"{CAM}/stats"])["fps"] == 12.5
        sink.close()


def test_stats_tell_at_once_that_a_reconnects_backlog_has_drained(tmp_path):
    """The stats a reconnect sends go before its replay, so they count the whole backlog: Home
    Assistant's outbox sensor said 90 for a minute (`stats_interval_s`) after a broker restart
    although all 90 were delivered within a second. Stats go again once the outbox is empty."""
    from maskd.types import LoopStats

    def depth(retained: dict[str, bytes]) -> int | None:
        return json.loads(retained.get(f"{CAM}/stats", b"{}")).get("outbox_depth")

    with Broker(tmp_path / "b") as b:
        cfg = cfg_for(b, tmp_path / "state", stats_interval_s=3600.0)
        sink = MqttSink.from_config(cfg, model_name="m")
        try:
            assert wait_until(lambda: sink.connected, 10)
            sink.on_stats(LoopStats(fps=9.0))
            b.stop()
            for ev in script("backlog", 20, 1):
                sink.emit(ev)
            b.start()
            assert wait_until(lambda: sink.connected and sink.health()["outbox_depth"] == 0, 10)
            stats = retained_once(b, lambda r: depth(r) == 0, [f"{CAM}/stats"], timeout=5.0)
            assert depth(stats) == 0  # was: 40 (the reconnect's) until the next stats
        finally:
            sink.close()


@contextlib.contextmanager
def state_watched(broker, tmp_path) -> Iterator[tuple[Subscriber, MqttSink]]:
    """A connected sink with 1 s state and stats intervals, and a subscriber to its state."""
    sub = Subscriber(broker, [f"{CAM}/state"])
    sink = MqttSink.from_config(cfg_for(broker, tmp_path / "state", stats_interval_s=1.0),
                                model_name="m")
    try:
        assert wait_until(lambda: sink.connected, 10)
        yield sub, sink
    finally:
        sink.close()
        sub.close()


def test_unchanged_state_goes_again_once_a_stats_interval_as_a_heartbeat(broker, tmp_path):
    """docs/mqtt.md: the state is sent on change, or once a stats interval when nothing
    changed, so a consumer can tell a quiet entrance from a silent maskd."""
    with state_watched(broker, tmp_path) as (sub, sink):
        sink.on_state(counts(1, 1, 0))
        assert sub.wait_topic(f"{CAM}/state")
        time.sleep(1.2)  # past state_interval_s and stats_interval_s (1 s each)
        sink.on_state(counts(1, 1, 0))  # the same counts
        assert len(sub.wait_topic(f"{CAM}/state", 2)) == 2


def test_a_loop_without_frames_still_sends_its_held_state_and_heartbeat(broker, tmp_path):
    """An image folder or clip that ended (the loop idles until SIGTERM: no frame, only its stats
    every stats_interval_s): the last frame's counts, held back by state_interval_s, waited for
    the stop, so the retained `state` said 2 faces for as long as it idled while the last frame
    had none, and no heartbeat went (docs/mqtt.md: once a stats interval). The loop's stats
    carry them now."""
    from maskd.types import LoopStats

    with state_watched(broker, tmp_path) as (sub, sink):
        sink.on_state(counts(2, 0, 2))
        sink.on_state(counts(0, 0, 0))  # the last frame, within state_interval_s: held
        assert sub.wait_topic(f"{CAM}/state")
        time.sleep(1.2)  # past state_interval_s; no frame comes any more
        sink.on_stats(LoopStats(fps=0.0, frames=5, source_ended=True))
        got = sub.wait_topic(f"{CAM}/state", 2)
        assert [json.loads(m.payload)["faces"] for m in got] == [2, 0], got
        time.sleep(1.2)  # past stats_interval_s, nothing changed: the heartbeat
        sink.on_stats(LoopStats(fps=0.0, frames=5, source_ended=True))
        got = sub.wait_topic(f"{CAM}/state", 3)
        assert [json.loads(m.payload)["faces"] for m in got] == [2, 0, 0], got


def test_an_event_emitted_just_after_the_connect_is_live_not_buffered(broker, tmp_path,
                                                                       monkeypatch):
    """The publisher thread notices a new connection at its next step (up to half a second
    later, more on a loaded Pi). An event emitted in between was called `buffered: true`, as if
    stored while the broker was away: a consumer that acts only on live alarms (docs/mqtt.md)
    skipped it. Stored before the connection is buffered; after it, live."""
    gate = threading.Event()
    step = MqttSink._step

    def held_step(self, st):  # noqa: ANN001, ANN202 - the publisher waits for the test
        gate.wait(20)
        return step(self, st)

    monkeypatch.setattr(MqttSink, "_step", held_step)
    sub = Subscriber(broker, [f"{CAM}/violation"])
    sink = MqttSink.from_config(cfg_for(broker, tmp_path / "state"), model_name="m")
    try:
        assert wait_until(lambda: sink.connected, 10)
        start = script("live", 1, 0)[0]
        sink.emit(start)  # connected: the broker has it at once, were the publisher quick
        gate.set()
        got = sub.wait_topic(f"{CAM}/violation")
        assert [(e["event_id"], e["buffered"]) for e in events(sub)] == [("live-0", False)], got
    finally:
        gate.set()
        sink.close()
        sub.close()


def test_the_attributes_are_the_newest_open_violations(broker, tmp_path):
    """Two people in violation at once: `violation/attributes` (the binary sensor's attributes
    in Home Assistant) is the newest open one, then the one left open when it ends."""
    sink = MqttSink.from_config(cfg_for(broker, tmp_path / "state"), model_name="m")
    attrs = f"{CAM}/violation/attributes"
    try:
        assert wait_until(lambda: sink.connected, 10)
        first, _, second, second_end = script("two", 2, 0)  # the first's end is not sent
        for ev in (first, second):
            sink.emit(ev)
        now = retained_once(broker, lambda r: b"two-1" in r.get(attrs, b""), [attrs])
        assert json.loads(now[attrs])["event_id"] == "two-1", now
        sink.emit(second_end)
        now = retained_once(broker, lambda r: b"two-0" in r.get(attrs, b""), [attrs])
        assert json.loads(now[attrs])["event_id"] == "two-0", now
    finally:
        sink.close()


def test_the_retained_state_at_a_clean_stop_is_the_last_one(tmp_path):
    """The state interval held back the last counts (a violation just ended): at the stop the
    retained state must be those, not an older one saying 'active 1' next to violations 0."""
    from dataclasses import replace

    with Broker(tmp_path / "b") as b:
        sink = MqttSink.from_config(cfg_for(b, tmp_path / "state"), model_name="m")
        assert wait_until(lambda: sink.health()["connected"], 10)
        sink.on_state(replace(counts(1, 0, 1), active=1))
        sink.on_state(replace(counts(0, 0, 0), active=0))  # within state_interval_s: held
        sink.close()
        retained = retained_now(b, [f"{CAM}/#"])
        state = json.loads(retained[f"{CAM}/state"])
        assert (state["active"], state["faces"]) == (0, 0) and retained[f"{CAM}/faces"] == b"0"
        assert retained[f"{CAM}/violations"] == b"0"


def test_a_heartbeat_of_the_counts_never_sends_an_older_copy_after_the_loops_newer_one(
        tmp_path, monkeypatch):
    """The publisher thread's heartbeat sends a camera's counts again (no stats from its loop
    for two intervals: a stalled loop, a clip that ended). It read them before its call and
    wrote them back inside it: a loop that gave newer counts meanwhile (a violation just
    ended) was overwritten, and the older 'active 1' was what stayed retained after the stop
    (seen once in the suite on a loaded machine). The heartbeat is held here, inside its call,
    while the loop gives its newer counts."""
    from dataclasses import replace

    test_thread = threading.current_thread()
    inside, release, done = threading.Event(), threading.Event(), threading.Event()
    send = MqttSink.camera_state

    def slow_heartbeat(self, cam, counts_now):  # noqa: ANN001
        if threading.current_thread() is test_thread or counts_now.active != 1 or \
                inside.is_set():
            return send(self, cam, counts_now)
        inside.set()
        release.wait(5)
        send(self, cam, counts_now)
        done.set()
        return None

    monkeypatch.setattr(MqttSink, "camera_state", slow_heartbeat)
    with Broker(tmp_path / "b") as b:
        sink = MqttSink.from_config(cfg_for(b, tmp_path / "state", stats_interval_s=1.0),
                                    model_name="m")
        assert wait_until(lambda: sink.health()["connected"], 10)
        sink.on_state(replace(counts(1, 0, 1), active=1))
        assert inside.wait(10)  # the heartbeat holds 'active 1' now
        threading.Timer(0.5, release.set).start()
        sink.on_state(replace(counts(0, 0, 0), active=0))  # the loop's newer counts
        assert done.wait(5)
        sink.close()
        retained = retained_now(b, [f"{CAM}/#"])
        state = json.loads(retained[f"{CAM}/state"])
        assert (state["active"], state["faces"]) == (0, 0), state


def test_a_stop_during_a_violation_leaves_no_violation_retained(tmp_path, default_model):
    """A stop (SIGTERM) while someone is in violation ends it (`shutdown`); everything retained
    must then agree for a late subscriber, the counts too. Was: `violation/active` OFF next to
    `violations` 1 and a `state` with `active: 1`, the counts of the frame before the stop.
    The real loop on the demo clip, stopped as soon as its violation starts."""
    from maskd.demo import DemoSource
    from maskd.pipeline import Pipeline
    from maskd.service import CameraLoop, build_classifier, build_detector
    from maskd.types import EventSink, ViolationEvent

    class SignalAtStart(EventSink):
        """Asks the loop to stop, as the SIGTERM handler does, once a violation is open."""

        def emit(self, event: ViolationEvent) -> None:
            if event.event_type == "start":
                loop.stop("SIGTERM")

    with Broker(tmp_path / "b") as b:
        cfg = parse_config({"device_id": "dev1", "camera": "cam1",
                            "state_dir": str(tmp_path / "state"), "source": {"kind": "demo"},
                            "detector": {"kind": "blazeface"},
                            "classifier": {"model": str(default_model)},
                            "mqtt": {"url": b.url}}, "test")
        sub = Subscriber(b, [f"{CAM}/#"])
        sink = MqttSink.from_config(cfg, model_name="m")
        assert wait_until(lambda: sink.connected, 10)
        loop = CameraLoop(cfg, DemoSource(), Pipeline(cfg, build_detector(cfg),
                                                      build_classifier(cfg)),
                          [sink, SignalAtStart()], [], RunControl(), max_frames=1000)
        assert loop.run(flush_timeout=5) == 0
        kinds = [(e["event_type"], e["end_reason"]) for e in events(sub)]
        assert kinds == [("start", None), ("end", "shutdown")], kinds
        assert [m.payload for m in sub.on(f"{CAM}/violations")][-2:] == [b"1", b"0"]
        retained = retained_now(b, [f"{CAM}/#"])
        sub.close()
    assert retained[f"{CAM}/violation/active"] == b"OFF"
    assert retained[f"{CAM}/violations"] == b"0"
    state = json.loads(retained[f"{CAM}/state"])
    assert state["active"] == 0
    # the rest is what the last frame showed (the camera is offline now: `status`)
    assert (state["faces"], state["unmasked"]) == (1, 1)
    assert retained[f"{CAM}/faces"] == b"1" and retained[f"{CAM}/status"] == b"offline"


def test_a_removed_cameras_end_goes_on_its_own_topic(broker, tmp_path):
    """The `restart` end maskd.ledger gives for a camera removed from the config, when the
    outbox did not end it already (its last message never stored): on that camera's topic,
    not on the first configured camera's (the fallback for unknown cameras)."""
    from maskd.types import ViolationEvent

    sub = Subscriber(broker, [f"{BASE}/+/violation"])
    sink = MqttSink(cfg_for(broker, tmp_path / "state").mqtt, "dev1", "front", tmp_path / "state",
                    cameras={"front": RunControl()})
    try:
        sink.emit(ViolationEvent("end", "gone-cam", 3, "back", 1, 1_700_000_000.0, 0.9, 0.9,
                                 (0.1, 0.1, 0.2, 0.2), end_reason="restart"))
        assert sub.wait(lambda ms: len(ms) >= 1, 10)
        time.sleep(0.3)
    finally:
        sink.close()
        sub.close()
    assert [(m.topic, m.json()["event_id"], m.json()["camera"]) for m in sub.messages] == [
        (f"{BASE}/back/violation", "gone-cam", "back")]


def test_a_camera_dropped_after_a_stop_the_broker_never_heard_is_marked_offline(tmp_path):
    """A clean stop while the broker is away (it crashed: no last will) cannot say offline,
    so the camera's `status` stays `online` and `violation/active` `ON`, retained. Renamed or
    removed before the next start, nothing replaced them (only a killed run's cameras were
    marked): Home Assistant showed a camera that no longer exists as available with its
    violation on, for good, and `mqtt-clear --camera` refused it as running."""
    from maskd.types import ViolationEvent

    state = tmp_path / "state"
    with Broker(tmp_path / "broker", persistence=True) as broker:
        mq = cfg_for(broker, state).mqtt
        old = MqttSink(mq, "dev1", "front", state)
        try:
            old.emit(ViolationEvent("start", "v1", 0, "front", 1, 1_700_000_000.0, 0.9, 0.9,
                                    (0.1, 0.1, 0.2, 0.2)))
            before = retained_once(broker, lambda r: r.get(f"{BASE}/front/violation/active")
                                   == b"ON" and r.get(f"{BASE}/front/status") == b"online")
            assert before.get(f"{BASE}/front/violation/active") == b"ON", before
            time.sleep(1.5)  # the broker's autosave (1 s) keeps them
            assert broker.proc is not None
            broker.proc.kill()  # a crash: no last will, the retained state as saved
            broker.proc.wait()
            # the stop ends what is open (as the run loop does), then closes
            old.emit(ViolationEvent("end", "v1", 1, "front", 1, 1_700_000_000.0, 0.9, 0.9,
                                    (0.1, 0.1, 0.2, 0.2), end_time=1_700_000_001.0,
                                    end_reason="shutdown"))
        finally:
            old.close()  # a clean stop the broker never hears
        broker.start()
        new = MqttSink(mq, "dev1", "back", state)
        try:
            got = retained_once(broker, lambda r: r.get(f"{BASE}/front/status") == b"offline"
                                and r.get(f"{BASE}/front/violation/active") == b"OFF",
                                topics=[f"{BASE}/front/#"], timeout=10)
        finally:
            new.close()
    assert got.get(f"{BASE}/front/status") == b"offline", got
    assert got.get(f"{BASE}/front/violation/active") == b"OFF", got
