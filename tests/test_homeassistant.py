"""Every Home Assistant discovery payload maskd publishes passes Home Assistant's own MQTT
discovery schemas: tools/ha_validate.py, run inside the Home Assistant venv that
tools/ha_venv.py builds once (pyenv's Python 3.13) and caches outside the checkout.

Two sources of payloads, validated alike and whatever they contain, so a new entity or option
is checked as soon as maskd publishes it:
- discovery_config() for the layouts (one camera, snapshots on, the status page served, a
  ``cameras:`` map's camera);
- what a real broker holds: every retained ``homeassistant/.../config`` after ``maskd run``
  on the demo source ran against a real mosquitto (one camera with snapshots on, and a
  ``cameras:`` map of two).

Skips with the reason when the venv cannot be built here (no Python 3.13, no package index).
The first build takes about a minute (cold caches), then only a file check. Environment, read
by tools/ha_venv.py and this test only: MASKD_HA_VENV, MASKD_HA_PYTHON, and here
MASKD_HA_BUILD_TIMEOUT (seconds for a cold build, default 600).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mqtt_broker import Broker, retained_now

from maskd.config import MqttConfig
from maskd.mqtt import Topics, discovery_config
from tools import ha_venv

# Each camera's device payload has at least these platforms; "camera" when snapshots are on.
EXPECTED = {"binary_sensor", "switch", "sensor"}
SNAPSHOT_PLATFORMS = {"camera", "image"}


@pytest.fixture(scope="module")
def ha_python() -> Path:
    timeout = float(os.environ.get("MASKD_HA_BUILD_TIMEOUT", "600"))
    try:
        return ha_venv.ensure(timeout)
    except ha_venv.Unavailable as e:
        pytest.skip(f"Home Assistant {ha_venv.HA_VERSION} venv unavailable: {e}")


def check(messages: list[dict], python: Path) -> list[dict]:
    """Validate with Home Assistant's schemas; fail listing every rejected or dropped option.
    Returns the per-entity results."""
    assert messages, "no discovery payloads to check"
    out = ha_venv.validate(messages, python)
    results = out["results"]
    failed = [f"{r['topic']} {r['component']} {r['object_id']}: {r['error']}"
              for r in results if not r["ok"]]
    assert not failed, f"Home Assistant {out['homeassistant']} rejects:\n" + "\n".join(failed)
    ignored = [f"{r['topic']} {r['component']} {r['object_id']}: {r['ignored']}"
               for r in results if r.get("ignored")]
    assert not ignored, ("options Home Assistant drops without a word (unknown to the "
                         "platform):\n" + "\n".join(ignored))
    # Each device payload's components were all validated, as entities, not just the envelope.
    for i, msg in enumerate(messages):
        payload = msg["payload"] if isinstance(msg["payload"], dict) else json.loads(msg["payload"])
        comps = payload.get("components") or payload.get("cmps") or {}
        mine = [r for r in results if r["message"] == i and r["component"] != "device"]
        if "/device/" in msg["topic"]:
            assert len(mine) == len(comps), msg["topic"]
    return results


def platforms(results: list[dict], message: int) -> set[str]:
    """The platforms of the entities in ``messages[message]``."""
    return {r["component"] for r in results if r["message"] == message
            and r["component"] != "device" and not r.get("removal")}


def layouts() -> list[tuple[str, dict]]:
    """(topic, payload) for the layouts discovery_config() serves."""
    mq = MqttConfig()
    out = []
    for camera, device_status, snapshots, url in (
        ("cam1", False, False, None),  # the original single-camera config
        ("cam1", False, True, "http://maskd-door.local:8080/"),  # snapshots, status page
        ("door", True, True, None),  # a camera of a `cameras:` map: device and camera status
        ("yard", True, False, None),
    ):
        topics = Topics.build(mq, "dev1", camera, device_status=device_status)
        payload = discovery_config(topics, device_id="dev1", camera=camera, snapshots=snapshots,
                                   configuration_url=url)
        out.append((topics.discovery, payload))
    return out


def test_discovery_config_passes_home_assistant_schemas(ha_python):
    cases = layouts()
    results = check([{"topic": t, "payload": p} for t, p in cases], ha_python)
    for i, (topic, payload) in enumerate(cases):
        got = platforms(results, i)
        assert EXPECTED <= got, (topic, got)
        comps = payload.get("components") or payload.get("cmps") or {}
        has_snapshot = any(c.get("topic", "").endswith("/snapshot") for c in comps.values())
        assert bool(got & SNAPSHOT_PLATFORMS) == has_snapshot, (topic, got)
        # without snapshots the camera is withdrawn (Home Assistant keeps an omitted one)
        removed = {r["component"] for r in results if r["message"] == i and r.get("removal")}
        assert removed == (set() if has_snapshot else {"camera"}), (topic, removed)


def test_validator_reports_what_home_assistant_rejects(ha_python):
    """The check itself: abbreviations expanded as Home Assistant does, a bad template and an
    unknown option caught, a single-component topic understood."""
    dev = {"ids": ["x"], "name": "x"}
    messages = [
        {"topic": "homeassistant/sensor/n1/ok/config", "payload": json.dumps(
            {"~": "maskd/x", "stat_t": "~/state", "uniq_id": "u1", "dev": dev,
             "val_tpl": "{{ value_json.faces }}", "o": {"name": "maskd"}})},
        {"topic": "homeassistant/sensor/n1/bad/config", "payload": json.dumps(
            {"stat_t": "maskd/x/state", "uniq_id": "u2", "dev": dev, "val_tpl": "{{ value_json."})},
        {"topic": "homeassistant/binary_sensor/n1/typo/config", "payload": json.dumps(
            {"stat_t": "maskd/x/a", "uniq_id": "u3", "dev": dev, "json_atributes_topic": "a/b"})},
        {"topic": "homeassistant/device/d1/config", "payload": {
            "dev": dev, "o": {"name": "maskd"}, "cmps": {"c": {"p": "nonsense", "uniq_id": "u4"}}}},
    ]
    out = ha_venv.validate(messages, ha_python)
    assert out["homeassistant"] == ha_venv.HA_VERSION
    by_id = {r["object_id"]: r for r in out["results"]}
    assert by_id["ok"]["ok"] and not by_id["ok"]["ignored"]
    assert not by_id["bad"]["ok"] and "invalid template" in by_id["bad"]["error"]
    assert by_id["typo"]["ok"] and by_id["typo"]["ignored"] == ["json_atributes_topic"]
    assert not by_id["d1"]["ok"] and "platform" in by_id["d1"]["error"]


def run_maskd(config: str, tmp_path: Path, retained: list[str] | None = None) -> list[dict]:
    """`maskd run --source demo`'s config against a real mosquitto; then every retained
    discovery config the broker holds, as a restarted Home Assistant would receive them, each
    with the retained messages under ``retained`` (topic filters) as its samples."""
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config)
    with Broker(tmp_path / "broker") as b:
        r = subprocess.run(
            [sys.executable, "-m", "maskd", "run", "--config", str(cfg), "--exit-at-end",
             "--max-frames", "20", "--mqtt", b.url, "--state-dir", str(tmp_path / "state")],
            capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        samples = {t: p.decode() for t, p in retained_now(b, retained).items()} if retained else {}
        return [{**m, "samples": samples} for m in ha_venv.retained_configs(b.url)]


def rendered(results: list[dict], object_id: str) -> dict:
    [r] = [r for r in results if r["object_id"] == object_id]
    return r["rendered"]


def test_retained_discovery_after_a_real_run_passes(ha_python, tmp_path):
    """One camera, snapshots on: whatever retained discovery the run leaves passes."""
    messages = run_maskd("device_id: dev1\ncamera: door\nsource: {kind: demo}\n"
                         "mqtt: {snapshots: true}\n", tmp_path, ["maskd/dev1/door/stats"])
    topics = [m["topic"] for m in messages]
    assert "homeassistant/device/maskd_dev1_door/config" in topics, topics
    results = check(messages, ha_python)
    got = platforms(results, topics.index("homeassistant/device/maskd_dev1_door/config"))
    assert EXPECTED <= got and got & SNAPSHOT_PLATFORMS, got
    # the entities read the run's last retained messages as Home Assistant renders them
    stats = json.loads(messages[0]["samples"]["maskd/dev1/door/stats"])
    assert stats["problems"] == [] and stats["faults"] == [], stats
    assert rendered(results, "maskd_dev1_door_problem") == {
        "value_template": "OFF", "json_attributes_template": '{"problems": []}'}
    assert float(rendered(results, "maskd_dev1_door_fps")["value_template"]) > 0
    assert rendered(results, "maskd_dev1_door_outbox")["value_template"] == str(
        stats["outbox_depth"])  # as it was when that stats message left


def test_a_prefix_is_its_own_namespace_in_home_assistant():
    """Two sites on one broker told apart by `mqtt.prefix` (or a prefix changed): the discovery
    topic carried the prefix but the unique_ids and the device did not, so Home Assistant
    ignored the second site's entities as ids it already had and merged the devices. The
    default prefix keeps the ids it always had (no entity of an install is re-created)."""
    def ids(prefix: str) -> tuple[set[str], list[str]]:
        topics = Topics.build(MqttConfig(prefix=prefix), "dev1", "door")
        payload = discovery_config(topics, device_id="dev1", camera="door", snapshots=True)
        uids = {c["unique_id"] for c in payload["components"].values()}
        assert set(payload["components"]) == uids  # the component keys are the ids
        return uids, payload["device"]["identifiers"]

    default, default_device = ids("maskd")
    assert "maskd_dev1_door_violation" in default and default_device == ["maskd_dev1"]
    site2, site2_device = ids("site2")
    assert not default & site2 and site2_device == ["site2_dev1"]
    assert all(u.startswith("site2_dev1_door_") for u in site2)


def test_the_problem_sensor_is_on_with_the_lines_while_a_camera_is_lost_or_a_sink_fails(
        ha_python):
    """Home Assistant's problem entity, rendered by Home Assistant from stats as the sink
    publishes them: on with each line while the camera is lost and the outbox's disk is
    full, off again after."""
    from maskd.types import LoopStats

    topics = Topics.build(MqttConfig(), "dev1", "door")
    payload = discovery_config(topics, device_id="dev1", camera="door", snapshots=False)
    fault = "MQTT outbox: database or disk is full, 3 event(s) in memory"
    bad = LoopStats(fps=0.0, camera_lost_since="2026-12-05T09:00:00+00:00",
                    camera_lost_why="cannot open /dev/video0", camera_reconnecting=True,
                    faults=(fault,))
    messages = [{"topic": topics.discovery, "payload": payload, "samples": {
        topics.stats: json.dumps({**s.to_dict(), "outbox_depth": 3, "camera": "door"})}}
        for s in (bad, LoopStats(fps=9.5))]
    results = check(messages, ha_python)
    on, off = (r["rendered"] for r in results if r["object_id"] == "maskd_dev1_door_problem")
    lost = ("camera lost since 2026-12-05T09:00:00+00:00 (cannot open /dev/video0); "
            "reconnecting")
    assert on["value_template"] == "ON"
    assert json.loads(on["json_attributes_template"]) == {"problems": [lost, fault]}
    assert off == {"value_template": "OFF", "json_attributes_template": '{"problems": []}'}


def test_retained_discovery_of_a_cameras_map_passes(ha_python, tmp_path):
    """A `cameras:` map in one process: one retained payload per camera, all pass."""
    messages = run_maskd("device_id: dev1\ncameras:\n  door: {source: {kind: demo}}\n"
                         "  yard: {source: {kind: demo}}\n", tmp_path)
    topics = [m["topic"] for m in messages]
    want = [f"homeassistant/device/maskd_dev1_{c}/config" for c in ("door", "yard")]
    assert set(want) <= set(topics), topics
    results = check(messages, ha_python)
    for topic in want:
        assert EXPECTED <= platforms(results, topics.index(topic)), topic


def test_the_status_page_link_names_the_host_for_every_spelling_of_the_wildcard():
    """Home Assistant's link must reach the page: `0:8080` binds every interface like 0.0.0.0,
    so the link names this host, not http://0:8080/."""
    import socket

    from maskd.mqtt.sink import status_page_url

    here = socket.gethostname()
    for listen in ("0.0.0.0:8080", "0:8080", "[::]:8080"):
        assert status_page_url(listen) == f"http://{here}:8080/", listen
    assert status_page_url("127.0.0.1:8080") == "http://127.0.0.1:8080/"


def _by_hand(tmp_path: Path, *args: str, stdin: str = "", env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess:
    """`python -m tools.ha_venv` as docs/mqtt.md runs it by hand, with no Python 3.13 to build
    the venv: what it must say about its input comes before the venv is looked for."""
    repo = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "tools.ha_venv", *args], input=stdin,
                          capture_output=True, text=True, timeout=60, cwd=repo,
                          env={**os.environ, "MASKD_HA_VENV": str(tmp_path / "ha"),
                               "MASKD_HA_PYTHON": str(tmp_path / "no-python"),
                               **(env or {})})


def test_the_by_hand_commands_say_what_is_wrong_in_one_line(tmp_path: Path):
    """Each was a traceback (JSONDecodeError, TypeError in ha_validate, ConnectionRefusedError,
    ValueError) or, for an unset --password-env, a refused login told 15 s later as 'could not
    subscribe'."""
    from tools.mosquitto import free_port

    port = free_port()  # nothing listens there
    cases = [
        ([], "not json", "error: stdin is not JSON (Expecting value: line 1 column 1 (char 0))"),
        ([], '{"topic": 1}', "error: stdin holds a JSON dict, not a list of"),
        ([], '[{"topic": 1}]', 'error: stdin message 0: {"topic": 1} is not an object with a'),
        (["--broker", f"mqtt://127.0.0.1:{port}"], "",
         f"error: cannot connect to the broker at mqtt://127.0.0.1:{port}: Connection refused"),
        (["--broker", "mqtt://127.0.0.1:notaport"], "",
         "error: --broker 'mqtt://127.0.0.1:notaport': Port could not be cast to integer"),
        (["--broker", f"mqtt://127.0.0.1:{port}", "--password-env", "MASKD_TEST_UNSET_PW"], "",
         "error: --password-env MASKD_TEST_UNSET_PW: no such environment variable"),
    ]
    for args, stdin, says in cases:
        r = _by_hand(tmp_path, *args, stdin=stdin)
        assert r.returncode in (1, 2) and "Traceback" not in r.stderr, (args, r.stderr)
        assert r.stderr.startswith(says) and len(r.stderr.splitlines()) == 1, (args, r.stderr)


def test_a_refused_login_is_said_at_once(tmp_path: Path):
    import time

    with Broker(tmp_path / "mq", users={"maskd": "secret"}) as b:
        t0 = time.monotonic()
        r = _by_hand(tmp_path, "--broker", b.url, "--username", "maskd", "--password-env",
                     "MASKD_TEST_PW", env={"MASKD_TEST_PW": "wrong"})
        assert time.monotonic() - t0 < 10  # not the 15 s subscribe timeout
        assert r.stderr == f"error: the broker at {b.url} refused the login: Not authorized\n"
        r = _by_hand(tmp_path, "--broker", b.url, "--username", "maskd", "--password-env",
                     "MASKD_TEST_PW", env={"MASKD_TEST_PW": "secret"})  # read, then no venv
        assert r.stderr.startswith(f"0 retained discovery config(s) on {b.url}\nerror: "
                                   f"MASKD_HA_PYTHON={tmp_path / 'no-python'} is not a Python")


def test_every_entity_reads_and_drives_what_the_sink_publishes(ha_python, tmp_path):
    """Each discovered entity against what a running sink really publishes on a real broker,
    as Home Assistant reads it: the violation's ON/OFF is the binary sensor's payload_on /
    payload_off, the event entity's messages are its event_types, the switch's command topic
    turns detection off and on and its state topic says so in state_on / state_off, and each
    sensor's template renders its own count (five faces, three masked, two unmasked, one person
    in violation: no two alike, so a sensor on the wrong topic or field shows). Home Assistant's
    schemas accept a payload_on of `on`, a command_topic that nobody reads or an event topic
    with `update`s on it: each left an entity that never changed or an event that failed."""
    from mqtt_broker import Subscriber, retained_once, wait_until
    from mqtt_driver import script

    from maskd import __version__
    from maskd.config import Config
    from maskd.mqtt import MqttSink
    from maskd.types import FaceCounts, LoopStats, RunControl

    base = "maskd/dev1/door"
    disco = "homeassistant/device/maskd_dev1_door/config"
    with Broker(tmp_path / "broker") as b:
        sub = Subscriber(b, [f"{base}/#"])
        control = RunControl()
        sink = MqttSink.from_config(Config(device_id="dev1", camera="door",
                                           state_dir=tmp_path / "state",
                                           mqtt=MqttConfig(url=b.url, reconnect_min_s=0.2,
                                                           reconnect_max_s=1.0)), control)
        try:
            assert wait_until(lambda: sink.connected, 10)
            heartbeat = sub.wait_topic(f"{base}/stats")[0].payload.decode()  # no loop report yet
            start, update, end = script("a", 1, 1)
            sink.emit(start)
            sink.emit(update)
            sink.on_state(FaceCounts(faces=5, masked=3, unmasked=2, unjudged=0, active=1,
                                     detect_enabled=True, timestamp=time.time()))
            sink.on_stats(LoopStats(fps=9.5))
            assert sink.flush(10)
            full = json.loads(retained_once(b, lambda r: disco in r, [disco])[disco])
            comps = full["components"]
            by = {k.removeprefix("maskd_dev1_door_"): c for k, c in comps.items()}
            violation, event, switch = by["violation"], by["violation_event"], by["detect"]
            got = retained_once(b, lambda r: r.get(violation["state_topic"]) == b"ON"
                                and r.get(f"{base}/stats", b"").find(b"9.5") > 0,
                                [f"{base}/#"])
            assert got[violation["state_topic"]].decode() == violation["payload_on"]
            assert json.loads(got[violation["json_attributes_topic"]])["event_id"] == "a-0"
            samples = {t: p.decode() for t, p in got.items()}

            # the switch: Home Assistant's command reaches the run loop, its state follows
            for cmd, on in (("payload_off", False), ("payload_on", True)):
                sub.client.publish(switch["command_topic"], switch[cmd], qos=1)
                assert wait_until(lambda on=on: control.switch is on, 10), cmd
                state = "state_on" if on else "state_off"
                now = retained_once(b, lambda r, s=state: r.get(switch["state_topic"]) ==
                                    switch[s].encode(), [switch["state_topic"]])
                assert now.get(switch["state_topic"]) == switch[state].encode(), (state, now)
            attrs = retained_once(b, lambda r: True, [switch["json_attributes_topic"]])
            assert json.loads(attrs[switch["json_attributes_topic"]])["in_force"] == "on"

            sink.emit(end)
            assert sink.flush(10)
            off = retained_once(b, lambda r: r.get(violation["state_topic"]) == b"OFF",
                                [violation["state_topic"]])
            assert off[violation["state_topic"]].decode() == violation["payload_off"]
            assert sub.wait(lambda ms: sum(m.topic == event["state_topic"] for m in ms) >= 2, 10)
            kinds = [m.json()["event_type"] for m in sub.on(event["state_topic"])]
            assert kinds == ["start", "end"] and set(kinds) <= set(event["event_types"]), kinds
            # live only: a retained one would fire the event entity again at each restart of
            # Home Assistant (its automation telling of a violation long over)
            assert event["state_topic"] not in retained_now(b, [event["state_topic"]])
        finally:
            sink.close()
            sub.close()

    results = check([{"topic": disco, "payload": full, "samples": samples},
                     {"topic": disco, "payload": full,
                      "samples": {f"{base}/stats": heartbeat}}], ha_python)
    shown = {r["object_id"].removeprefix("maskd_dev1_door_"): r.get("rendered", {}).get(
        "value_template") for r in results if r["message"] == 0}
    assert {k: shown[k] for k in ("violations", "faces", "masked", "unmasked", "fps")} == {
        "violations": "1", "faces": "5", "masked": "3", "unmasked": "2", "fps": "9.5"}, shown
    stats = json.loads(samples[f"{base}/stats"])
    assert "outbox_depth" in by["outbox"]["value_template"]
    assert shown["outbox"] == str(stats["outbox_depth"])
    # before the loop's first report the fps is unknown, not a measured 0
    [fps_then] = [r["rendered"]["value_template"] for r in results
                  if r["message"] == 1 and r["object_id"].endswith("_fps")]
    assert fps_then not in ("0", "0.0"), fps_then
    # what docs/mqtt.md promises beside the topics: problems are `problem`s, health is
    # diagnostic, counts are measurements (long-term statistics), the version is shown
    assert {k for k, c in by.items() if c.get("device_class") == "problem"} == {
        "violation", "problem"}
    assert {k for k, c in by.items() if c.get("entity_category") == "diagnostic"} == {
        "outbox", "fps", "problem"}
    assert {k for k, c in by.items() if c.get("state_class") == "measurement"} == {
        "violations", "faces", "masked", "unmasked"}
    assert by["fps"]["unit_of_measurement"] == "fps"
    assert full["device"]["sw_version"] == full["origin"]["sw_version"] == __version__
