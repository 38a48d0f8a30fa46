"""An update loses and repeats nothing (docs/install-pi.md "Updating").

A site runs an older maskd for months, then `git pull && sudo deploy/install.sh` restarts the
service on the new code with the same config and state_dir. Here the OLD code (a pinned commit of
main, unpacked with `git archive`) runs as a user set it up from its own config.example.yaml, on
the looping demo source, with a real mosquitto; the broker goes away so events wait in the
outbox, and the old run is stopped with a violation open (`kill -9`, or SIGTERM as systemd's
restart does). Then THIS code starts on what it left, and the broker comes back.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, SHARED
from mqtt_broker import Broker, Subscriber, retained_now, wait_until

from maskd.clip import segment_pattern
from maskd.snapshots import NAME as SNAPSHOT_NAME

DEVICE, CAMERA = "door1", "entrance"
CAM = f"maskd/{DEVICE}/{CAMERA}"
# Versions a site may run today: the last commit of main on 2026-12-01 (outbox only, .mp4
# clips) and on 2026-12-03 (.mkv clips); both before open_violations.json (maskd.ledger).
OLD = {"2026-12-01": "2f7c3d2df5657af05033dddcae52b49d374fa86b",
       "2026-12-03": "3f7d7060952e9844f4f69faacc6a4e8fd35a5f50"}


def old_code(commit: str, dest: Path) -> Path:
    """The tree of ``commit`` unpacked in ``dest`` (the repository is left as it is); a skip
    naming why where git or the commit is not there (a shallow clone, a tarball)."""
    git = shutil.which("git")
    if git is None or not (REPO / ".git").exists():
        pytest.skip("needs git and maskd's git history (the old version is built from it)")
    if subprocess.run([git, "-C", str(REPO), "cat-file", "-e", f"{commit}^{{commit}}"],
                      capture_output=True).returncode:
        pytest.skip(f"commit {commit[:7]} (the old version) is not in this clone: a shallow "
                    "clone? `git fetch --unshallow` gets it")
    dest.mkdir(parents=True)
    archive = subprocess.run([git, "-C", str(REPO), "archive", commit, "maskd", "deploy", "models"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def site_config(code: Path, site: Path, broker: Broker) -> Path:
    """The old version's deploy/config.example.yaml with the edits its install guide asks for,
    each by the key's own line, so a line gone from the example fails here, not silently."""
    text = (code / "deploy" / "config.example.yaml").read_text()
    edits = [(r"^device_id: null", f"device_id: {DEVICE}"), (r"^camera: camera", f"camera: {CAMERA}"),
             (r"^state_dir: /var/lib/maskd", f"state_dir: {site / 'state'}"),
             (r"^  kind: auto(?= .*picamera2)", "  kind: demo"), (r"^  loop: false", "  loop: true"),
             (r"^  kind: auto(?= .*yunet)", "  kind: blazeface"),
             (r"^  path: null", f"  path: {site / 'events.jsonl'}"),
             (r"^  url: null", f"  url: {broker.url}"),
             (r"^  dir: null", f"  dir: {site / 'snapshots'}"),
             (r"^  annotate_dir: null", f"  annotate_dir: {site / 'clips'}")]
    for pattern, line in edits:
        text, n = re.subn(pattern, line, text, count=1, flags=re.M)
        assert n == 1, f"{pattern} not in the old config.example.yaml"
    path = site / "config.yaml"
    path.write_text(text)
    return path


def maskd(code: Path, *args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(code), "MASKD_SHARED": str(SHARED)}
    return subprocess.Popen([sys.executable, "-m", "maskd", *args], env=env, **kw)


def check_config(code: Path, cfg: Path) -> subprocess.CompletedProcess:
    p = maskd(code, "check-config", str(cfg), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
              text=True)
    out, err = p.communicate(timeout=60)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def jsonl(site: Path) -> list[dict]:
    path = site / "events.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def in_outbox(site: Path, event_id: str) -> bool:
    """Whether the MQTT outbox holds ``event_id`` as open. JSON lines may have a start before
    the MQTT sink stored it: a kill in between leaves a violation no outbox knows, which no
    version can end in MQTT, so the tests kill only after this (read-only; the writer may be
    mid-transaction)."""
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{site / 'state' / 'outbox.sqlite3'}?mode=ro", uri=True,
                             timeout=1.0)
        try:
            return db.execute("SELECT 1 FROM open_events WHERE event_id = ?",
                              (event_id,)).fetchone() is not None
        finally:
            db.close()
    except sqlite3.Error:
        return False


def still_open(events: list[dict]) -> set[str]:
    return ({e["event_id"] for e in events if e["event_type"] == "start"}
            - {e["event_id"] for e in events if e["event_type"] == "end"})


def entities(discovery: dict[str, bytes]) -> dict[str, dict]:
    """Home Assistant's entities by unique id: what they are and the topics they read."""
    out = {}
    for topic, payload in discovery.items():
        if not payload or not topic.startswith("homeassistant/"):
            continue
        for key, comp in json.loads(payload).get("components", {}).items():
            if "unique_id" in comp:  # a platform alone removes a component (never an entity)
                out[comp["unique_id"]] = {"topic": topic, "key": key, **{
                    k: v for k, v in comp.items() if k.endswith("topic") or k == "platform"}}
    return out


@pytest.mark.parametrize(("version", "stop"), [("2026-12-01", signal.SIGKILL),
                                               ("2026-12-03", signal.SIGTERM)],
                         ids=["2026-12-01-kill", "2026-12-03-sigterm"])
def test_an_update_loses_and_repeats_nothing(tmp_path, default_model, version, stop):
    old = old_code(OLD[version], tmp_path / "old")
    site = tmp_path / "site"
    site.mkdir()
    broker = Broker(tmp_path / "broker", persistence=True).start()
    try:
        cfg = site_config(old, site, broker)
        assert check_config(old, cfg).returncode == 0
        seen = Subscriber(broker, ["maskd/#"])
        run = maskd(old, "run", "--config", str(cfg), cwd=site, stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL)
        try:
            assert seen.wait(lambda ms: any(m.topic == f"{CAM}/violation" for m in ms), 60), \
                "the old version published no violation"
            discovery_before = retained_now(broker, ["homeassistant/#"])

            def delivered() -> set[tuple[str, int]]:
                return {(m.json()["event_id"], m.json()["seq"]) for m in seen.messages
                        if m.topic == f"{CAM}/violation"}

            # Stopped with nothing in flight, so that what the broker acknowledged is what this
            # subscriber got; events from now on wait in the old version's outbox.
            assert wait_until(lambda: {(e["event_id"], e["seq"]) for e in jsonl(site)}
                              <= delivered(), 30)
            broker.stop()
            seen.close()
            # 4. install.sh checks the old config with the new version while the old one runs
            r = check_config(REPO, cfg)
            assert "Traceback" not in r.stderr, r.stderr
            assert r.returncode == 0, f"the new version refuses the old config: {r.stderr}"
            n = len(jsonl(site))
            # Stopped just after a start written while the broker was down: open, undelivered.
            assert wait_until(lambda: len(jsonl(site)) > n + 1 and jsonl(site)[-1]["event_type"]
                              == "start", 60, 0.02), "the old version wrote no new start"
            assert wait_until(lambda: in_outbox(site, jsonl(site)[-1]["event_id"]), 30, 0.02)
            run.send_signal(stop)
            run.wait(timeout=60)
        finally:
            if run.poll() is None:
                run.kill()
        old_lines = jsonl(site)
        snaps = [p.name for p in (site / "snapshots").iterdir()]
        clips = [p.name for p in (site / "clips").iterdir()]
        left_open = still_open(old_lines)
        if stop == signal.SIGKILL:
            assert left_open, "killed with nothing open: the test did not test it"
        else:
            assert not left_open and old_lines[-1]["end_reason"] == "shutdown"
        waiting = [(e["event_id"], e["seq"]) for e in old_lines
                   if (e["event_id"], e["seq"]) not in delivered()]
        assert waiting, "nothing waited in the outbox"

        broker.start()
        sub = Subscriber(broker, ["maskd/#"])
        run = maskd(REPO, "run", "--config", str(cfg), cwd=site, stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE, text=True)
        try:
            def got() -> list[tuple[str, int, str | None]]:
                return [(p["event_id"], p["seq"], p.get("end_reason")) for p in
                        (m.json() for m in sub.messages if m.topic == f"{CAM}/violation")]

            # 1. every event that waited, once and in order (the restart end after them)
            assert sub.wait(lambda _: {x[:2] for x in got()} >= set(waiting), 60), \
                f"never delivered: {set(waiting) - {x[:2] for x in got()}}"
            now_on = retained_now(broker, ["homeassistant/#", "maskd/#"])
            # a restart end that would be repeated comes at the start; give it the time
            assert wait_until(lambda: len(jsonl(site)) > len(old_lines) + 1, 30)
        finally:
            run.send_signal(signal.SIGTERM)
            _, err = run.communicate(timeout=60)
        assert run.returncode == 0, err
        assert "Traceback" not in err, err
        sub.close()
        broker.stop()
    finally:
        broker.stop()
    mqtt_got = got()
    old_ids = {e["event_id"] for e in old_lines}
    from_old = [x[:2] for x in mqtt_got if x[0] in old_ids and x[:2] in set(waiting)]
    assert from_old == waiting, "events that waited were lost, repeated or reordered"
    last_waiting = max(i for i, x in enumerate(mqtt_got) if x[:2] == waiting[-1])
    assert all(i > last_waiting for i, x in enumerate(mqtt_got) if x[2] == "restart"), \
        "a restart end overtook the events that waited before it"

    # 2. what the old run left open is ended exactly once, `restart`, in MQTT and JSON lines
    lines = jsonl(site)
    assert lines[:len(old_lines)] == old_lines
    for event_id in old_ids:
        mqtt_ends = [x for x in mqtt_got if x[0] == event_id and x[2] is not None]
        line_ends = [e["end_reason"] for e in lines
                     if e["event_id"] == event_id and e["event_type"] == "end"]
        assert len(line_ends) == 1, f"violation {event_id} ended {line_ends} in JSON lines"
        if event_id in left_open:
            assert line_ends == ["restart"], (event_id, line_ends)
            assert [x[2] for x in mqtt_ends] == ["restart"], (event_id, mqtt_ends)
        else:
            assert "restart" not in [x[2] for x in mqtt_ends], (event_id, mqtt_ends)
    assert not still_open(lines)  # the new run's own, ended `shutdown` at its SIGTERM

    # 3. Home Assistant keeps its device and every entity (unique id, topics), none left
    # behind; every availability topic it watches says online
    before, after = entities(discovery_before), entities(now_on)
    assert before, "the old version announced no entity"
    assert {uid: after.get(uid) for uid in before} == before
    announced = [json.loads(p) for t, p in now_on.items() if t.startswith("homeassistant/") and p]
    assert {t for t in discovery_before if discovery_before[t]} == {
        t for t in now_on if t.startswith("homeassistant/") and now_on[t]}
    assert {d["device"]["identifiers"][0] for d in announced} == {
        json.loads(p)["device"]["identifiers"][0] for p in discovery_before.values() if p}
    watched = {a["topic"] for d in announced for a in d["availability"]}
    assert watched and {t: now_on.get(t) for t in watched} == dict.fromkeys(watched, b"online")

    # 4. what the old version recorded is still the new retention's to count and delete
    assert snaps and clips
    # A kill that lands while the old version writes a snapshot leaves its temporary file
    # (`.<name>.tmp`, seen once in CI): not a snapshot, and the new version's start deletes it.
    partial = [n for n in snaps if n.startswith(".") and n.endswith(".tmp")]
    assert all(SNAPSHOT_NAME.fullmatch(n) for n in snaps if n not in partial), snaps
    assert all(SNAPSHOT_NAME.fullmatch(n[1:-4]) for n in partial), partial
    assert not [n for n in partial if (site / "snapshots" / n).exists()], partial
    assert all(segment_pattern(CAMERA).fullmatch(n) for n in clips), clips


@pytest.mark.parametrize("camera_after", [CAMERA, "hall"], ids=["same-camera", "renamed"])
def test_a_violation_only_the_outbox_knows_is_ended_once_in_every_sink(tmp_path, default_model,
                                                                       camera_after):
    """A version before open_violations.json (2026-12-04) kept the violations a `kill -9` left
    open in the MQTT outbox only: the next start ended them `restart` in MQTT, and JSON lines
    never got their end, nor with the camera renamed in the same update. Built here with this
    code (no git history needed): the kill leaves both records, then the ledger file goes, as
    the older version never wrote it."""
    site = tmp_path / "site"
    site.mkdir()
    broker = Broker(tmp_path / "broker")  # down: the start waits in the outbox
    cfg = site_config(REPO, site, broker)
    run = maskd(REPO, "run", "--config", str(cfg), cwd=site, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: jsonl(site)[-1:] and jsonl(site)[-1]["event_type"] == "start",
                          60, 0.02), "no violation started"
        assert wait_until(lambda: in_outbox(site, jsonl(site)[-1]["event_id"]), 30, 0.02)
        run.kill()
        run.wait(timeout=30)
    finally:
        if run.poll() is None:
            run.kill()
    (left_open,) = still_open(jsonl(site))
    (site / "state" / "open_violations.json").unlink()
    n = len(jsonl(site))
    with broker:
        sub = Subscriber(broker, [f"{CAM}/violation"])  # the camera's own topic, renamed or not
        run = maskd(REPO, "run", "--config", str(cfg), "--camera", camera_after,
                    "--max-frames", "30", cwd=site,
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _, err = run.communicate(timeout=120)
        assert run.returncode == 0, err
        assert sub.wait(lambda ms: any(m.json()["end_reason"] == "restart" for m in ms), 30), err
        time.sleep(0.5)  # a second end would follow the first at once
        sub.close()
    mqtt_ends = [m.json()["end_reason"] for m in sub.messages
                 if m.json()["event_id"] == left_open and m.json()["event_type"] == "end"]
    line_ends = [e["end_reason"] for e in jsonl(site)[n:]
                 if e["event_id"] == left_open and e["event_type"] == "end"]
    assert mqtt_ends == ["restart"]
    assert line_ends == ["restart"], f"JSON lines ended {left_open} {line_ends}"
    assert not (site / "state" / "open_violations.json").exists() or left_open not in json.loads(
        (site / "state" / "open_violations.json").read_text())
