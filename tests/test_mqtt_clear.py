"""`maskd mqtt-clear` against a real mosquitto: a camera's retained topics (what MqttSink really
left, and older layouts' leftovers) are there before and gone after; a removed camera; a camera
that is online is refused; exit codes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mqtt_broker import Broker, Mqtt311Only, Subscriber, retained_now, wait_until
from mqtt_driver import counts, script

from maskd.cli import main
from maskd.commands.mqtt_clear import online_cameras, plan
from maskd.config import Config, MqttConfig, parse_config
from maskd.mqtt import MqttSink
from maskd.types import RunControl

REPO = Path(__file__).resolve().parents[1]
CAM = "maskd/dev1/cam1"
DISCOVERY = "homeassistant/device/maskd_dev1_cam1/config"
# what a running MqttSink leaves retained under its camera's topic
SINK_TOPICS = ("status", "status/detail", "violation/active", "violation/attributes", "violations",
               "faces", "state", "stats", "detect/state")


@pytest.fixture
def broker(tmp_path):
    with Broker(tmp_path / "broker") as b:
        yield b


def write_config(tmp_path: Path, broker: Broker, **extra: object) -> Path:
    data = {"device_id": "dev1", "state_dir": str(tmp_path / "state"),
            "mqtt": {"url": broker.url, "reconnect_min_s": 0.2, "reconnect_max_s": 1.0}, **extra}
    if "cameras" not in data:
        data.setdefault("camera", "cam1")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def as_acl_user(tmp_path: Path, broker: Broker, **mqtt: object) -> Path:
    """``write_config``'s config, connecting as the ACL's user ``maskd`` (password ``pw``)."""
    (tmp_path / "pw").write_text("pw\n")
    cfg = write_config(tmp_path, broker)
    data = yaml.safe_load(cfg.read_text())
    data["mqtt"].update(username="maskd", password_file=str(tmp_path / "pw"), **mqtt)
    cfg.write_text(yaml.safe_dump(data))
    return cfg


def run_sink(broker: Broker, state: Path, camera: str = "cam1", close: bool = True) -> MqttSink:
    """A real MqttSink with an event, counts and stats, as the run loop leaves them."""
    cfg = Config(device_id="dev1", camera=camera, state_dir=state,
                 mqtt=MqttConfig(url=broker.url, reconnect_min_s=0.2, reconnect_max_s=1.0,
                                 stats_interval_s=1))
    base = f"maskd/dev1/{camera}"
    sub = Subscriber(broker, ["homeassistant/#", f"{base}/#"])
    sink = MqttSink.from_config(cfg, RunControl(), model_name="m")
    assert sub.wait_topic(f"homeassistant/device/maskd_dev1_{camera}/config")
    for ev in script("c", 1, 0, left_open=1):
        sink.emit(dataclasses.replace(ev, camera=camera))
    sink.on_state(counts(2, 1, 1))
    assert sink.flush(10)
    left = {f"{base}/{t}" for t in SINK_TOPICS}  # the stats come with the heartbeat
    assert sub.wait(lambda ms: left <= {m.topic for m in ms}, 10), left - {m.topic for m in sub.messages}
    sub.close()
    if close:
        sink.close()
    return sink


def clear(capsys, *args: str) -> tuple[int, str, str]:
    rc = main(["mqtt-clear", "--wait", "1", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_clears_every_retained_topic_of_the_config_and_nothing_else(broker, tmp_path, capsys):
    run_sink(broker, tmp_path / "state")
    pub = Subscriber(broker, ["unused/x"])
    for topic, payload in [(f"{CAM}/old/leftover", b"1"),  # an older layout's leftover
                           ("maskd/dev1/status", b"offline"),  # the old device-level status
                           ("maskd/dev1/cam2/status", b"offline"),  # another camera: kept
                           ("maskd/dev2/cam1/status", b"online"),  # another device: kept
                           ("homeassistant/device/maskd_dev2_cam1/config", b"{}")]:
        pub.client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    pub.close()
    before = retained_now(broker)
    mine = {t for t in before if t.startswith(f"{CAM}/") or t == DISCOVERY
            or t.startswith("maskd/dev1/status")}
    # what MqttSink really leaves retained for a camera
    for t in [DISCOVERY, *(f"{CAM}/{t}" for t in SINK_TOPICS), f"{CAM}/old/leftover",
              "maskd/dev1/status"]:
        assert t in mine, t
    # a broker-side check that the plan knows the layout's retained topics (the device status
    # is no topic of this layout: an earlier cameras: map's leftover, cleared as found)
    assert {t for t in mine if t != f"{CAM}/old/leftover"
            and not t.startswith("maskd/dev1/status")} <= set(
        plan(parse_config(yaml.safe_load(write_config(tmp_path, broker).read_text())), None).known)

    cfg = write_config(tmp_path, broker)
    rc, out, err = clear(capsys, "--config", str(cfg), "--dry-run")
    assert rc == 0, err
    assert {ln.removeprefix("would clear ") for ln in out.splitlines()
            if ln.startswith("would clear ")} == mine
    assert retained_now(broker).keys() == before.keys()

    rc, out, err = clear(capsys, "--config", str(cfg))
    assert rc == 0, err
    cleared = [ln.removeprefix("cleared ") for ln in out.splitlines() if ln.startswith("cleared ")]
    assert set(cleared) == mine and cleared[0] == DISCOVERY  # Home Assistant's config goes first
    assert f"{len(mine)} retained topic(s) cleared" in out
    after = retained_now(broker)
    assert not mine & after.keys()
    assert after.keys() == before.keys() - mine  # other cameras and devices untouched

    rc, out, _ = clear(capsys, "--config", str(cfg))  # again: nothing there, still fine
    assert rc == 0 and "0 retained topic(s) cleared (none were there)" in out


def test_a_removed_camera_by_name(broker, tmp_path, capsys):
    run_sink(broker, tmp_path / "old", camera="back")
    run_sink(broker, tmp_path / "new", camera="front")
    cfg = write_config(tmp_path, broker, cameras={"front": {"source": {"kind": "demo"}}})
    back = {t for t in retained_now(broker) if t.startswith("maskd/dev1/back/")
            or t == "homeassistant/device/maskd_dev1_back/config"}
    assert len(back) >= 10
    rc, out, err = clear(capsys, "--config", str(cfg), "--camera", "back")
    assert rc == 0, err
    assert {ln.removeprefix("cleared ") for ln in out.splitlines() if ln.startswith("cleared ")} == back
    after = retained_now(broker)
    assert not back & after.keys()
    assert "homeassistant/device/maskd_dev1_front/config" in after  # the configured camera stays
    assert "maskd/dev1/front/status" in after


def test_an_online_camera_is_refused_unless_forced(broker, tmp_path, capsys):
    sink = run_sink(broker, tmp_path / "state", close=False)
    try:
        cfg = write_config(tmp_path, broker)
        before = retained_now(broker)
        assert before[f"{CAM}/status"] == b"online"
        rc, _, err = clear(capsys, "--config", str(cfg), "--camera", "cam1")
        assert rc == 75
        assert f"camera cam1 ({CAM}/status = online)" in err and "--force" in err
        assert retained_now(broker).keys() == before.keys()  # nothing touched
    finally:
        sink.close()
    # stopped: its status says offline, so no --force is needed
    rc, _, err = clear(capsys, "--config", str(cfg), "--camera", "cam1")
    assert rc == 0, err
    assert not [t for t in retained_now(broker) if t.startswith(f"{CAM}/")]


def test_a_broker_that_keeps_retained_messages_from_wildcards_still_shows_them(broker, tmp_path,
                                                                               capsys):
    """RabbitMQ 3 hands a retained message only to a subscription naming its topic: the scan's
    wildcards saw nothing, so a running camera's topics were cleared (Home Assistant lost the
    device while it ran) with `0 retained topic(s) cleared (none were there)`, exit 0, and a
    dry run found none. The layout's own topics are looked at one by one too."""
    from mqtt_broker import RetainedExactOnly

    relay = RetainedExactOnly(broker)
    sink = run_sink(broker, tmp_path / "state", close=False)
    try:
        cfg = write_config(tmp_path, broker)
        data = yaml.safe_load(cfg.read_text())
        data["mqtt"]["url"] = relay.url
        cfg.write_text(yaml.safe_dump(data))
        before = retained_now(broker)
        rc, out, err = clear(capsys, "--config", str(cfg), "--dry-run")
        assert rc == 0 and f"would clear {CAM}/status" in out and f"would clear {DISCOVERY}" in out
        assert "refused (exit 75)" in err, err
        rc, _, err = clear(capsys, "--config", str(cfg))
        assert rc == 75 and f"camera cam1 ({CAM}/status = online)" in err, err
        assert retained_now(broker) == before  # nothing touched
    finally:
        sink.close()
    rc, out, err = clear(capsys, "--config", str(cfg))
    assert rc == 0, err
    assert f"cleared {CAM}/status\n" in out and "none were there" not in out, out
    assert not [t for t in retained_now(broker) if t.startswith(f"{CAM}/")]
    relay.close()


def test_a_denied_tree_is_said_once_not_for_each_of_its_topics(tmp_path, capsys):
    """A user that may not subscribe under the camera's tree was warned of it once; looking at
    each of the layout's topics by name too (for RabbitMQ 3) added eleven more warnings, one
    for every topic under that tree, each saying the same thing of a topic already said."""
    with Broker(tmp_path / "b", deny_subscribe=["maskd/#"]) as broker:
        rc, _, err = clear(capsys, "--config", str(write_config(tmp_path, broker)))
    assert rc == 1, err
    assert f"may not subscribe to {CAM}/#:" in err
    assert f"may not subscribe to {CAM}/" not in err.replace(f"{CAM}/#:", ""), err


def test_a_dry_run_lists_a_running_cameras_topics(broker, tmp_path, capsys):
    """`--dry-run` clears nothing, so a running camera is no reason to refuse it: it was exit 75
    with "Stop it first", where docs/install-pi.md has the operator list an update's leftovers
    while the new service runs. It lists them, and says the clear itself would be refused."""
    sink = run_sink(broker, tmp_path / "state", close=False)
    try:
        cfg = write_config(tmp_path, broker)
        before = retained_now(broker)
        rc, out, err = clear(capsys, "--config", str(cfg), "--dry-run")
        assert rc == 0, err
        listed = {ln.removeprefix("would clear ") for ln in out.splitlines()
                  if ln.startswith("would clear ")}
        assert {f"{CAM}/status", DISCOVERY} <= listed and "nothing cleared" in out
        assert f"camera cam1 ({CAM}/status = online)" in err and "refused" in err, err
        assert retained_now(broker).keys() == before.keys()  # nothing touched
    finally:
        sink.close()


def test_a_second_mqtt_clear_at_the_same_time_is_named_not_blamed_on_the_broker(broker, tmp_path,
                                                                              capsys):
    """Two `mqtt-clear`s at once (an operator's and a script's) share the client id
    maskd-<device_id>.mqtt-clear, and the broker drops the older: it said `no SUBACK from the
    broker` (or blamed the ACL), exit 1. Now the takeover is named; nothing is cleared."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    run_sink(broker, tmp_path / "state")
    cfg = write_config(tmp_path, broker)
    before = retained_now(broker)

    # the other mqtt-clear: connected, and back at once when the broker drops it
    other = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="maskd-dev1.mqtt-clear",
                        protocol=mqtt.MQTTv5)
    other.reconnect_delay_set(0.1, 0.1)
    other.connect("127.0.0.1", broker.port)
    other.loop_start()
    try:
        time.sleep(0.5)
        rc, out, err = clear(capsys, "--config", str(cfg))
    finally:
        other.disconnect()
        other.loop_stop()
    assert rc == 1, out + err
    assert "is another `maskd mqtt-clear` running at the same time? Both connect as " \
        "maskd-dev1.mqtt-clear" in err, err
    assert retained_now(broker).keys() == before.keys()  # nothing cleared


def test_force_clears_what_a_killed_process_left_online(broker, tmp_path, capsys):
    pub = Subscriber(broker, ["unused/x"])
    for t, payload in [(f"{CAM}/status", b"online"), (f"{CAM}/status/detail", b'{"state":"online"}'),
                       (DISCOVERY, b"{}")]:
        pub.client.publish(t, payload, qos=1, retain=True).wait_for_publish(5)
    pub.close()
    cfg = write_config(tmp_path, broker)
    assert clear(capsys, "--config", str(cfg))[0] == 75
    rc, out, err = clear(capsys, "--config", str(cfg), "--force")
    assert rc == 0, err
    assert not retained_now(broker)


def test_a_killed_cameras_map_after_a_single_camera_run_needs_no_force(broker, tmp_path, capsys):
    """A single-camera run's clean stop leaves `<camera>/status/detail` saying offline; a
    cameras: map's process killed afterwards leaves that camera `online` and the device
    `offline`. Nothing runs, so no --force is needed. Was: exit 75, the stale detail taken for
    proof of the single-camera layout."""
    run_sink(broker, tmp_path / "state")
    cfg = write_config(tmp_path, broker, cameras={"cam1": {"source": {"kind": "demo"}},
                                                  "cam2": {"source": {"kind": "demo"}}})
    sub = Subscriber(broker, ["maskd/#"])
    run = subprocess.Popen([sys.executable, "-m", "maskd", "run", "--config", str(cfg)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
    try:
        assert sub.wait(lambda ms: any(m.topic == "maskd/dev1/status" and m.payload == b"online"
                                       for m in ms), 60)
        assert sub.wait(lambda ms: [m.payload for m in ms if m.topic == f"{CAM}/status"][-1:]
                        == [b"online"], 10)
        time.sleep(0.5)
    finally:
        run.kill()
        run.wait()
    assert sub.wait(lambda ms: [m.payload for m in ms if m.topic == "maskd/dev1/status"][-1:]
                    == [b"offline"], 10), "no last will"
    sub.close()
    left = retained_now(broker)
    assert left[f"{CAM}/status"] == b"online"
    assert f"{CAM}/status/detail" not in left  # the map's process removed the stale detail
    rc, out, err = clear(capsys, "--config", str(cfg))
    assert rc == 0, err
    assert not retained_now(broker)


def test_a_single_camera_config_leaves_a_running_cameras_maps_device_status(broker, tmp_path,
                                                                          capsys):
    """Another maskd on this device runs a `cameras:` map and owns `<prefix>/<device>/status`;
    a single-camera config's process never publishes it. Was: exit 75 naming that status as
    "the maskd process", and --force removed it (Home Assistant then showed the other
    process's cameras unavailable)."""
    run_sink(broker, tmp_path / "state")  # this config's camera, stopped
    other = Config(device_id="dev1", state_dir=tmp_path / "other",
                   cameras={"hall": {"source": {"kind": "demo"}}},
                   mqtt=MqttConfig(url=broker.url, reconnect_min_s=0.2, reconnect_max_s=1.0))
    sink = MqttSink.for_cameras(other, {"hall": RunControl()})
    try:
        assert wait_until(lambda: retained_now(broker, ("maskd/dev1/status",))
                          .get("maskd/dev1/status") == b"online")
        theirs = {t: v for t, v in retained_now(broker).items()
                  if t.startswith(("maskd/dev1/status", "maskd/dev1/hall/"))
                  or "maskd_dev1_hall" in t}
        cfg = write_config(tmp_path, broker)
        rc, out, err = clear(capsys, "--config", str(cfg))
        assert rc == 0, err
        assert "leaving maskd/dev1/status (online)" in err
        after = retained_now(broker)
        assert not [t for t in after if t.startswith(f"{CAM}/") or t == DISCOVERY]
        assert {t: after.get(t) for t in theirs} == theirs  # the other process's, untouched
    finally:
        sink.close()
    # stopped, its device status says offline: a leftover this config may clear
    assert retained_now(broker)["maskd/dev1/status"] == b"offline"
    rc, out, err = clear(capsys, "--config", str(cfg))
    assert rc == 0, err
    assert "cleared maskd/dev1/status" in out


@pytest.mark.parametrize("stdout", ["/dev/full", "closed"])
def test_output_that_cannot_be_written_is_exit_74_before_anything_is_cleared(broker, tmp_path,
                                                                           stdout):
    """stdout on a full disk was a traceback (exit 1); closed, every line went nowhere."""
    run_sink(broker, tmp_path / "state")
    before = retained_now(broker)
    cmd = [sys.executable, "-m", "maskd", "mqtt-clear", "--config",
           str(write_config(tmp_path, broker)), "--wait", "1"]
    if stdout == "closed":
        r = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *cmd], stderr=subprocess.PIPE,
                           text=True, timeout=60, cwd=REPO)
    else:
        with open(stdout, "w") as full:
            r = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, timeout=60,
                               cwd=REPO)
    assert r.returncode == 74, r.stderr
    assert "Traceback" not in r.stderr and "maskd mqtt-clear: " in r.stderr
    assert retained_now(broker) == before


@pytest.mark.parametrize("lines_read", [0, 1])
def test_a_reader_gone_mid_way_leaves_the_exit_code_to_the_check(broker, tmp_path, lines_read):
    """`| head -1`: the BrokenPipeError of the next line, a ConnectionError, was read as the
    broker's ("Broken pipe", exit 1) whatever was cleared. Now the run goes on and the check
    decides (0: all gone); a reader gone before the first line is 74, nothing cleared."""
    run_sink(broker, tmp_path / "state")
    before = retained_now(broker)
    p = subprocess.Popen([sys.executable, "-m", "maskd", "mqtt-clear", "--config",
                          str(write_config(tmp_path, broker)), "--wait", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert p.stdout is not None and p.stderr is not None
    first = [p.stdout.readline() for _ in range(lines_read)]
    p.stdout.close()
    err = p.stderr.read()
    rc = p.wait(timeout=60)
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception" not in err, err
    if lines_read:
        assert first[0].startswith("mqtt-clear: mqtt://") and rc == 0, err
        assert not retained_now(broker)
    else:
        assert rc == 74 and "standard output is closed" in err, err
        assert retained_now(broker) == before


def test_wait_0_still_sees_what_is_retained(broker, tmp_path, capsys):
    """A scan that ended before the retained messages came saw no online camera: `--wait 0`
    cleared a running camera's topics (exit 0, "none were there"). A negative or NaN wait is a
    usage error, as every wait on the command line."""
    sink = run_sink(broker, tmp_path / "state", close=False)
    try:
        cfg = write_config(tmp_path, broker)
        before = retained_now(broker)
        rc, _, err = clear(capsys, "--config", str(cfg), "--wait", "0")
        assert rc == 75, err
        assert retained_now(broker).keys() == before.keys()  # nothing touched
    finally:
        sink.close()
    rc, out, err = clear(capsys, "--config", str(cfg), "--wait", "0")
    assert rc == 0, err
    assert f"cleared {DISCOVERY}" in out and not retained_now(broker)
    for bad in ("-1", "nan"):
        with pytest.raises(SystemExit) as exc:
            main(["mqtt-clear", "--config", str(cfg), "--wait", bad])
        assert exc.value.code == 2


def test_a_publish_a_311_broker_drops_is_not_said_cleared(tmp_path, capsys):
    """An MQTT 3.1.1 broker acknowledges a publish its ACL denies: the discovery config stayed,
    yet was listed as "cleared" and then "NOT cleared ... (a running maskd publishes it
    again?)" with nothing running. Now listed once, as not cleared, with the ACL as a cause."""
    acl = "user maskd\ntopic readwrite maskd/#\ntopic read homeassistant/#\nuser admin\ntopic readwrite #"
    with Broker(tmp_path / "broker", users={"maskd": "pw", "admin": "pw"}, acl=acl) as broker:
        admin = Subscriber(broker, ["unused/x"], username="admin", password="pw")
        for t in (f"{CAM}/status", DISCOVERY):
            admin.client.publish(t, b"offline", qos=1, retain=True).wait_for_publish(5)
        relay = Mqtt311Only(broker)
        try:
            cfg = as_acl_user(tmp_path, broker, url=relay.url)
            rc, out, err = clear(capsys, "--config", str(cfg))
        finally:
            relay.close()
            admin.close()
    assert rc == 1, err
    assert f"cleared {CAM}/status" in out and DISCOVERY not in out
    assert f"NOT cleared {DISCOVERY}: still retained afterwards (the broker's ACL" in err


def _retained_as_admin(broker: Broker) -> dict[str, bytes]:
    """What is retained, read by the ACL's admin (retained_now's client is anonymous)."""
    sub = Subscriber(broker, ["#"], username="admin", password="pw")
    try:
        sub.client.publish("maskd-test/done", b"done", qos=1)  # comes after the retained ones
        assert sub.wait(lambda ms: any(m.topic == "maskd-test/done" for m in ms), 10)
        return {m.topic: m.payload for m in sub.messages if m.retain}
    finally:
        sub.close()


@pytest.mark.parametrize("reads", ["", "topic read maskd/+/+/detect/set\n"])
def test_a_user_that_may_not_read_its_topics_clears_nothing_unless_forced(tmp_path, capsys,
                                                                          reads):
    """mosquitto's acl_file grants a SUBSCRIBE to a user without read rights and then delivers
    nothing: mqtt-clear saw no retained topic, so no online camera, cleared a running camera's
    topics and said '0 retained topic(s) cleared (none were there)', exit 0. The user here has
    what maskd itself needs (write, and read on detect/set only): maskd doctor passes it."""
    acl = (f"user maskd\ntopic write maskd/#\n{reads}topic write homeassistant/#\n"
           "user admin\ntopic readwrite #")
    with Broker(tmp_path / "broker", users={"maskd": "pw", "admin": "pw"}, acl=acl) as broker:
        admin = Subscriber(broker, ["unused/x"], username="admin", password="pw")
        for t in (f"{CAM}/status", DISCOVERY):  # a running camera's
            admin.client.publish(t, b"online", qos=1, retain=True).wait_for_publish(5)
        # and the last face crop of a run with snapshots: a person's face kept on the broker
        admin.client.publish(f"{CAM}/snapshot", b"\xff\xd8face", qos=1,
                             retain=True).wait_for_publish(5)
        cfg = as_acl_user(tmp_path, broker)
        rc, out, err = clear(capsys, "--config", str(cfg))
        assert rc == 1 and "none were there" not in out, (out, err)
        assert (f"a message published under {CAM}/# did not come back: this user may subscribe "
                "there but not read" in err) and "nothing was cleared" in err
        assert _retained_as_admin(broker)[f"{CAM}/status"] == b"online"
        rc, out, err = clear(capsys, "--config", str(cfg), "--force")
        assert rc == 0, err
        assert "topic(s) of maskd's layout cleared without seeing them" in out
        left = _retained_as_admin(broker)
        admin.close()
    assert f"{CAM}/status" not in left and DISCOVERY not in left
    assert f"{CAM}/snapshot" not in left


def test_online_rules_per_layout():
    cfg = Config(device_id="d", cameras={"a": {"source": {"kind": "demo"}},
                                         "b": {"source": {"kind": "demo"}}})
    p = plan(cfg, None)
    assert p.cameras == ["a", "b"] and "maskd/d/status" in p.known
    assert "maskd/d/status" not in plan(cfg, "a").known  # --camera leaves the process alone
    # cameras: layout, process killed: its last will set the device offline, cameras stay online
    killed = {"maskd/d/a/status": b"online", "maskd/d/status": b"offline"}
    assert online_cameras(p, killed) == []
    running = {"maskd/d/a/status": b"online", "maskd/d/status": b"online"}
    assert online_cameras(p, running) == ["camera a (maskd/d/a/status = online)",
                                          "the maskd process (maskd/d/status = online)"]
    # single-camera layout: the camera's status is its last will (detail next to it)
    single = {"maskd/d/a/status": b"online", "maskd/d/a/status/detail": b"{}",
              "maskd/d/status": b"offline"}
    assert online_cameras(p, single) == ["camera a (maskd/d/a/status = online)"]
    # an earlier single-camera run's clean stop left its detail: the device status decides
    stale = {**killed, "maskd/d/a/status/detail": b'{"state":"offline","clean":true}'}
    assert online_cameras(p, stale) == []


def test_exit_codes_without_a_broker_or_url(tmp_path, capsys):
    class Closed:
        url = "mqtt://127.0.0.1:1"

    cfg = write_config(tmp_path, Closed)  # type: ignore[arg-type]
    rc, _, err = clear(capsys, "--config", str(cfg))
    assert rc == 1 and "mqtt://127.0.0.1:1" in err
    no_url = tmp_path / "nourl.yaml"
    no_url.write_text("device_id: dev1\n")
    rc, _, err = clear(capsys, "--config", str(no_url))
    assert rc == 78 and "mqtt.url is not set" in err
    # deploy/uninstall.sh's call: a config without a broker left nothing on one (was: exit 78,
    # and the uninstall stopped half-way after a "y" to its question)
    rc, out, err = clear(capsys, "--if-configured", "--config", str(no_url))
    assert rc == 0 and err == "" and f"mqtt.url is not set in {no_url}: no broker, nothing to clear" in out
    rc, _, err = clear(capsys, "--config", str(no_url), "--camera", "a/b")
    assert rc == 78 and "--camera 'a/b'" in err


def test_mqtts_to_a_plain_listener_says_what_to_try(broker, tmp_path, capsys):
    """run's log hints at mqtt:// when mqtts:// meets a plain listener; doctor and mqtt-clear
    (one way to connect) said only "Connection reset by peer"."""
    cfg = write_config(tmp_path, broker)
    cfg.write_text(cfg.read_text().replace("mqtt://", "mqtts://"))
    rc, _, err = clear(capsys, "--config", str(cfg))
    assert rc == 1
    assert err.strip().endswith("; is that port a plain (non-TLS) listener? Then use mqtt://"), err


def test_a_camera_that_comes_online_during_the_scan_is_refused(broker, tmp_path, capsys,
                                                               monkeypatch):
    """maskd started (its models loading) as mqtt-clear ran: it came online during the scan,
    whose subscription got its status as a live message (retain 0), which the scan ignored; so
    the camera looked stopped, its discovery and status were cleared while it ran (Home
    Assistant lost the device until its next restart), and mqtt-clear said "cleared", exit 0
    (2 of 6 real runs started together). A live `online` counts as much as a retained one."""
    from maskd.commands.mqtt_clear import _Clearer

    run_sink(broker, tmp_path / "state")  # stopped: offline
    real_wait = _Clearer._wait_answers
    started: list[MqttSink] = []

    def maskd_starts_after_the_suback(self, mids):  # noqa: ANN001, ANN202
        answered = real_wait(self, mids)
        if not started:  # the first scan's SUBACK: the scan is subscribed now
            started.append(run_sink(broker, tmp_path / "state", close=False))
        return answered

    monkeypatch.setattr(_Clearer, "_wait_answers", maskd_starts_after_the_suback)
    try:
        rc, _, err = clear(capsys, "--config", str(write_config(tmp_path, broker)))
        assert rc == 75, err
        assert f"camera cam1 ({CAM}/status = online)" in err
        now = retained_now(broker)
        assert now[f"{CAM}/status"] == b"online" and DISCOVERY in now
    finally:
        for sink in started:
            sink.close()


def test_a_broker_gone_after_clearing_still_names_what_it_acknowledged(broker, tmp_path, capsys,
                                                                      monkeypatch):
    """The broker stops between the clear and the check afterwards: what it acknowledged is
    listed, and the exit is 1 with the reason, not only "no SUBACK from the broker"."""
    from maskd.commands.mqtt_clear import _Clearer

    run_sink(broker, tmp_path / "state")
    real_clear = _Clearer.clear

    def clear_then_stop(self, topics):  # noqa: ANN001, ANN202
        failed = real_clear(self, topics)
        broker.stop()
        return failed

    monkeypatch.setattr(_Clearer, "clear", clear_then_stop)
    rc, out, err = clear(capsys, "--config", str(write_config(tmp_path, broker)))
    assert rc == 1
    assert f"cleared {DISCOVERY} (acknowledged, not checked afterwards)" in out
    assert "cannot check afterwards: no SUBACK from the broker" in err


def test_a_connection_lost_mid_clear_still_reads_the_answers_of_what_was_sent(tmp_path, capsys,
                                                                            monkeypatch):
    """A publish that failed part-way dropped the answers of the topics already sent: the
    discovery config the broker refused was listed as "cleared (acknowledged ...)". Now each
    sent topic is judged by its own PUBACK and the rest named "connection lost"."""
    from maskd.commands.mqtt_clear import _Clearer

    acl = "user maskd\ntopic readwrite maskd/#\ntopic read homeassistant/#\nuser admin\ntopic readwrite #"
    with Broker(tmp_path / "broker", users={"maskd": "pw", "admin": "pw"}, acl=acl) as broker:
        admin = Subscriber(broker, ["unused/x"], username="admin", password="pw")
        for t in (DISCOVERY, f"{CAM}/state", f"{CAM}/stats", f"{CAM}/status"):
            admin.client.publish(t, b"x", qos=1, retain=True).wait_for_publish(5)
        admin.close()
        real_init = _Clearer.__init__

        def stop_after_3(self, client):  # noqa: ANN001, ANN202
            real_init(self, client)
            publish, sent = client.publish, []

            def publish_or_stop(topic, *args, **kwargs):  # noqa: ANN001, ANN202
                if len(sent) == 3:  # the discovery config (refused) and two others, answered
                    broker.stop()
                    assert wait_until(lambda: not client.is_connected())
                info = publish(topic, *args, **kwargs)
                if info.rc == 0 and kwargs.get("retain"):  # not the read-back probe
                    sent.append(topic)
                    info.wait_for_publish(5)
                return info

            client.publish = publish_or_stop

        monkeypatch.setattr(_Clearer, "__init__", stop_after_3)
        cfg = as_acl_user(tmp_path, broker)
        rc, out, err = clear(capsys, "--config", str(cfg))
    assert rc == 1
    assert DISCOVERY not in out and f"NOT cleared {DISCOVERY}: Not authorized" in err
    cleared = [ln for ln in out.splitlines() if ln.startswith("cleared ")]
    assert len(cleared) == 2 and all(ln.endswith("(acknowledged, not checked afterwards)")
                                     for ln in cleared), out
    assert f"NOT cleared {CAM}/status: connection lost" in err


def test_the_real_command(broker, tmp_path):
    run_sink(broker, tmp_path / "state")
    cfg = write_config(tmp_path, broker)
    r = subprocess.run([sys.executable, "-m", "maskd", "mqtt-clear", "--config", str(cfg),
                        "--wait", "1"], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert f"cleared {DISCOVERY}" in r.stdout
    assert not retained_now(broker)
