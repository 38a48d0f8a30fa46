"""`maskd run --mqtt URL --state-dir DIR` end to end: a clip of real scene photos, a real
mosquitto, the subscriber's view checked against the same run's JSON lines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
from mqtt_broker import Broker, Subscriber
from test_mqtt import check_schema, dedup
from test_run_cli import CONFIG, SIZE, build_clip, maskd

DEVICE = "door1"
BASE = f"maskd/{DEVICE}"
CAM = f"{BASE}/entrance"  # CONFIG says camera: entrance


def run_args(tmp_path, clip, broker, state, yunet_model, default_model, *extra: str) -> list[str]:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(CONFIG + f"device_id: {DEVICE}\n")
    return ["run", "--config", str(cfg), "--source", str(clip), "--exit-at-end",
            "--mqtt", broker.url, "--state-dir", str(state), "--model", str(default_model),
            "--detector", "yunet", "--detector-model", str(yunet_model), *extra]


def test_run_on_a_clip_publishes_documented_events(tmp_path, scenes_dir, yunet_model,
                                                   default_model):
    clip = tmp_path / "scenes.mp4"
    build_clip(scenes_dir, yunet_model, default_model, clip, with_violations=3, without=1)
    events = tmp_path / "events.jsonl"
    with Broker(tmp_path / "broker") as b:
        sub = Subscriber(b, ["maskd/#", "homeassistant/#"])
        r = maskd(*run_args(tmp_path, clip, b, tmp_path / "state", yunet_model, default_model,
                            "--jsonl", str(events)))
        assert r.returncode == 0, r.stderr
        lines = [json.loads(x) for x in events.read_text().splitlines()]
        assert sum(e["event_type"] == "start" for e in lines) >= 3
        assert sub.wait(lambda ms: sum(m.topic == f"{CAM}/violation" for m in ms) >= len(lines))
        got = [m.json() for m in sub.on(f"{CAM}/violation")]
        # Same messages, same order as the JSON-lines sink saw them; documented payloads.
        assert dedup(got) == [(e["event_id"], e["seq"]) for e in lines]
        for e, line in zip(got, lines, strict=True):
            check_schema(e)
            assert e["device_id"] == DEVICE and e["camera"] == "entrance"
            assert e["model"] == default_model.name
            for key in ("event_type", "track_id", "start_time", "end_time", "box", "end_reason",
                        "score", "top_score"):
                assert e[key] == line[key], key
        active = [m.payload for m in sub.on(f"{CAM}/violation/active")]
        assert b"ON" in active and active[-1] == b"OFF"
        assert any(m.json()["faces"] >= 1 for m in sub.on(f"{CAM}/state"))
        assert sub.on(f"{CAM}/status")[-1].payload == b"offline"
        assert sub.on(f"{CAM}/status/detail")[-1].json()["clean"] is True
        assert sub.on(f"homeassistant/device/maskd_{DEVICE}_entrance/config")
        sub.close()


def test_broker_down_exits_75_and_the_next_start_delivers(tmp_path, scenes_dir, yunet_model,
                                                          default_model):
    clip = tmp_path / "scenes.mp4"
    build_clip(scenes_dir, yunet_model, default_model, clip, with_violations=2, without=0)
    events = tmp_path / "events.jsonl"
    state = tmp_path / "state"
    b = Broker(tmp_path / "broker")  # configured, not started: the broker is down
    r = maskd(*run_args(tmp_path, clip, b, state, yunet_model, default_model,
                        "--jsonl", str(events), "--flush-timeout", "2"))
    assert r.returncode == 75, r.stderr
    assert "not yet acknowledged" in r.stderr
    # the journal names the sink in an operator's words, not by its Python class
    assert "entrance: MQTT: not everything accepted was delivered" in r.stderr, r.stderr
    assert "Sink" not in r.stderr, r.stderr
    lines = [json.loads(x) for x in events.read_text().splitlines()]
    assert lines

    blank = tmp_path / "blank.mp4"  # the next start sees nobody
    writer = cv2.VideoWriter(str(blank), cv2.VideoWriter.fourcc(*"mp4v"), 10, SIZE)
    for _ in range(10):
        writer.write(np.full((SIZE[1], SIZE[0], 3), 90, np.uint8))
    writer.release()
    with b:
        sub = Subscriber(b, [f"{CAM}/violation"])
        r = maskd(*run_args(tmp_path, blank, b, state, yunet_model, default_model))
        assert r.returncode == 0, r.stderr
        assert sub.wait(lambda ms: len(dedup([m.json() for m in ms])) >= len(lines))
        got = [m.json() for m in sub.messages]
        assert dedup(got) == [(e["event_id"], e["seq"]) for e in lines]
        assert all(e["buffered"] for e in got)
        sub.close()


def test_a_signal_while_waiting_for_the_broker_stops_the_wait(tmp_path, scenes_dir, yunet_model,
                                                              default_model):
    """--exit-at-end waits up to --flush-timeout for a broker that is down; Ctrl-C then stops
    the wait at once (exit 75), and the events stay in the outbox."""
    clip = tmp_path / "scenes.mp4"
    build_clip(scenes_dir, yunet_model, default_model, clip, with_violations=1, without=0)
    state = tmp_path / "state"
    b = Broker(tmp_path / "broker")  # configured, not started: the broker is down
    err = tmp_path / "stderr.txt"
    with err.open("w") as fh:
        p = subprocess.Popen([sys.executable, "-m", "maskd",
                              *run_args(tmp_path, clip, b, state, yunet_model, default_model,
                                        "--flush-timeout", "600")], stderr=fh)
    try:
        deadline = time.monotonic() + 120
        while "stopping: end of source" not in err.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "stopping: end of source" in err.read_text()
        time.sleep(1.0)  # inside the wait
        assert p.poll() is None
        sent = time.monotonic()
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=30) == 75
        took = time.monotonic() - sent
    finally:
        if p.poll() is None:
            p.kill()
    text = err.read_text()
    assert took < 10, text
    assert "SIGINT while stopping: not waiting for delivery any longer" in text
    assert "not yet acknowledged" in text and "kept in" in text


def test_killed_daemon_leaves_last_will_and_restart_restores_retained_state(tmp_path,
                                                                           default_model):
    """The real daemon on the looping demo source: SIGKILL -> LWT; restart -> retained state."""
    state = tmp_path / "state"

    def start(b: Broker) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "maskd", "run", "--source", "demo", "--loop", "--device-id", DEVICE,
             "--camera", "entrance", "--mqtt", b.url, "--state-dir", str(state),
             "--model", str(default_model), "--detector", "blazeface"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def last(sub: Subscriber, topic: str, payload: bytes, timeout: float = 60) -> bool:
        return sub.wait(lambda ms: [m.payload for m in ms if m.topic == topic][-1:] == [payload],
                        timeout)

    with Broker(tmp_path / "broker") as b:
        sub = Subscriber(b, ["maskd/#"])
        proc = start(b)
        try:
            assert last(sub, f"{CAM}/status", b"online"), "daemon never came online"
            assert sub.wait_topic(f"{CAM}/state", timeout=60)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            assert last(sub, f"{CAM}/status", b"offline", 15), "no last will after SIGKILL"
            t_restart = time.monotonic()
            proc = start(b)
            assert last(sub, f"{CAM}/status", b"online")
            fresh = Subscriber(b, ["maskd/#"])
            assert fresh.wait_topic(f"{CAM}/detect/state")
            retained = {m.topic: m.payload for m in fresh.messages if m.retain}
            assert retained[f"{CAM}/status"] == b"online"
            assert retained[f"{CAM}/violation/active"] in (b"ON", b"OFF")
            assert json.loads(retained[f"{CAM}/status/detail"])["previous_stop"] == "unclean"
            assert time.monotonic() - t_restart < 60
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert last(fresh, f"{CAM}/status", b"offline", 10)
            assert fresh.on(f"{CAM}/status/detail")[-1].json()["clean"] is True
            assert last(fresh, f"{CAM}/violation/active", b"OFF", 10)
            fresh.close()
        finally:
            if proc.poll() is None:
                proc.kill()
        sub.close()


def test_a_start_outside_the_schedule_never_says_detection_on(tmp_path, default_model):
    """Started outside the `schedule:` windows, `detect/state` said `ON` (and the attributes
    `schedule: true`) until the loop's first look at the clock turned it `OFF`: Home
    Assistant's switch flipped on and off at every restart (an update, a power cut) during
    the off hours, and an automation on it ran, while detection never did."""
    from datetime import datetime

    today = datetime.now().weekday()  # off today and tomorrow, whatever the demo's clock does
    days = [d for i, d in enumerate(("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
            if i not in (today, (today + 1) % 7)]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(json.dumps({  # the cameras: layout, whose sink connects before the loops exist
        "schedule": [{"days": days, "start": "00:00", "end": "24:00"}],
        "cameras": {"entrance": {"source": {"kind": "demo", "loop": True}}}}))
    with Broker(tmp_path / "broker") as b:
        sub = Subscriber(b, [f"{CAM}/detect/#", f"{CAM}/stats"])
        proc = subprocess.Popen(
            [sys.executable, "-m", "maskd", "run", "--config", str(cfg), "--device-id", DEVICE,
             "--mqtt", b.url,
             "--state-dir", str(tmp_path / "state"), "--model", str(default_model),
             "--detector", "blazeface"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert sub.wait_topic(f"{CAM}/stats", timeout=60), "no stats: the loop never ran"
            time.sleep(1.0)  # a detect/state the loop's turn would follow has come by now
            assert [m.payload for m in sub.on(f"{CAM}/detect/state")] == [b"OFF"]
            assert [m.json() for m in sub.on(f"{CAM}/detect/attributes")] == [
                {"switch": "ON", "schedule": False, "in_force": "schedule"}]
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, err
            assert "schedule turns detection off until" in err  # still said at the start
        finally:
            if proc.poll() is None:
                proc.kill()
            sub.close()
