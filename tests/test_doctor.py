"""`maskd doctor` against real parts: demo camera, real detector/classifier, a real mosquitto."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from mqtt_broker import Broker

from maskd.commands.doctor import Check, coral_devices, missing_video_device, table
from maskd.config import SourceConfig, host_device_id

REPO = Path(__file__).resolve().parents[1]


def doctor(cfg: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maskd", "doctor", "--config", str(cfg), "--frames", "3"],
                          capture_output=True, text=True, timeout=180, cwd=REPO,
                          env={**os.environ, **env})


def rows(stdout: str) -> dict[str, tuple[str, str]]:
    out = {}
    lines = stdout.splitlines()
    assert lines[0].split() == ["CHECK", "RESULT", "DETAIL"]
    width = lines[0].index("RESULT")
    for ln in lines[1:]:
        name, rest = ln[:width].strip(), ln[width:]
        verdict, _, detail = rest.partition("  ")
        out[name] = (verdict.strip(), detail.strip())
    return out


def write_cfg(tmp_path: Path, text: str) -> Path:
    (tmp_path / "state").mkdir(exist_ok=True)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nsource: {{kind: demo}}\n" + text)
    return cfg


@pytest.mark.slow
def test_all_green_with_real_parts(tmp_path, default_model):
    with Broker(tmp_path / "broker", users={"door": "s3cret"}) as broker:
        (tmp_path / "pw").write_text("s3cret\n")
        cfg = write_cfg(tmp_path, f"classifier: {{model: {default_model}}}\n"
                        "detector: {kind: blazeface}\n"
                        f"mqtt: {{url: '{broker.url}', username: door, password_file: {tmp_path / 'pw'}}}\n")
        r = doctor(cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    got = rows(r.stdout)
    for name in ["config", "state dir", "tflite runtime", "classifier", "detector", "camera", "broker",
                 "timing"]:
        assert got[name][0] == "OK", (name, got[name])
    assert "as 'door'" in got["broker"][1]
    assert "input 128x128" in got["detector"][1] or "input 192x192" in got["detector"][1]
    assert "demo: 640x480" in got["camera"][1]
    # the per-stage budget of docs/performance.md, measured here (OK or WARN: it is timing)
    assert "640x480 at 15 fps" in got["budget"][1] and "2 faces" in got["budget"][1], got["budget"]
    assert "3 frames" in got["timing"][1] and "ms/face" in got["timing"][1]


def test_failures_are_named_and_exit_non_zero(tmp_path):
    with Broker(tmp_path / "broker", users={"door": "s3cret"}) as broker:
        cfg = write_cfg(tmp_path, f"classifier: {{model: {tmp_path / 'missing.tflite'}}}\n"
                        "detector: {kind: blazeface}\n"
                        f"mqtt: {{url: '{broker.url}', username: door, password_env: DOOR_PW}}\n")
        r = doctor(cfg, DOOR_PW="wrong")
    assert r.returncode == 1, r.stdout + r.stderr
    got = rows(r.stdout)
    assert got["classifier"] == (
        "FAIL", f"classifier.model: {tmp_path / 'missing.tflite'}: model file not found")
    assert got["broker"][0] == "FAIL" and "refused" in got["broker"][1]
    assert got["camera"][0] == "OK" and got["detector"][0] == "OK"
    assert got["timing"][0] == "--"
    assert "required checks failed: classifier, broker" in r.stderr


def test_broker_down_and_state_dir_missing(tmp_path):
    from mqtt_broker import free_port

    cfg = tmp_path / "c.yaml"
    (tmp_path / "afile").write_text("")
    cfg.write_text(f"state_dir: {tmp_path / 'afile' / 'nope'}\nsource: {{kind: demo}}\n"
                   f"mqtt: {{url: 'mqtt://127.0.0.1:{free_port()}'}}\n")
    got = rows(doctor(cfg).stdout)
    assert got["broker"][0] == "FAIL" and "Connection refused" in got["broker"][1]
    assert got["state dir"][0] == "FAIL" and "cannot be created" in got["state dir"][1]


@pytest.mark.parametrize("where", ["missing", "a file"])
def test_the_state_dir_row_says_what_run_does(tmp_path, where):
    """doctor and run agree on the state dir: one that does not exist but can be made is made
    by run (doctor said FAIL 'does not exist', check-config OK and run worked); a file in its
    place stops run (exit 78, 'File exists'), and doctor called it missing."""
    from mqtt_broker import free_port

    d = tmp_path / "state" / "deeper"
    if where == "a file":
        d.parent.mkdir()
        d.write_text("")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state_dir: {d}\nsource: {{kind: demo}}\n"
                   f"mqtt: {{url: 'mqtt://127.0.0.1:{free_port()}'}}\n")
    verdict, detail = rows(doctor(cfg).stdout)["state dir"]
    checked = subprocess.run([sys.executable, "-m", "maskd", "check-config", str(cfg)],
                             capture_output=True, text=True)
    if where == "missing":
        assert (verdict, checked.returncode) == ("--", 0) and "run creates it" in detail
    else:
        assert (verdict, checked.returncode) == ("FAIL", 78), (detail, checked.stderr)
        assert "File exists" in detail and "File exists" in checked.stderr


def test_a_broker_that_takes_the_connection_and_says_nothing_is_called_stuck(tmp_path):
    """A listener that accepts and never answers (a paused mosquitto) was 'no answer to CONNECT
    ...; is that port a TLS listener? Then use mqtts://' in doctor and mqtt-clear: a TLS
    listener hangs up on a plain CONNECT, it does not keep silent (`run` says 'stuck')."""
    import socket

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # the kernel completes the handshake; nobody ever reads or writes
    url = f"mqtt://127.0.0.1:{silent.getsockname()[1]}"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"state_dir: {tmp_path}\nsource: {{kind: demo}}\nmqtt: {{url: '{url}'}}\n")
    try:
        said = (f"{url}: took the connection but sent no CONNACK within 8 s: check that an MQTT "
                "broker listens there and is not stuck")
        assert rows(doctor(cfg).stdout)["broker"] == ("FAIL", said)
        r = subprocess.run([sys.executable, "-m", "maskd", "mqtt-clear", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and said in r.stderr and "TLS" not in r.stderr, r.stderr
    finally:
        silent.close()


def test_bad_config_is_exit_78(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("sourse: {}\n")
    r = doctor(cfg)
    assert r.returncode == 78
    assert rows(r.stdout)["config"][0] == "FAIL" and "unknown key 'sourse'" in r.stdout
    # named on stderr as every other failure is (was: stderr empty, the reason in the table)
    assert "unknown key 'sourse'" in r.stderr and "maskd doctor:" in r.stderr


def test_table_and_helpers(tmp_path):
    text = table([Check("camera", "OK", "fine"), Check("edgetpu device", "--", "none", False)])
    assert text.splitlines() == ["CHECK           RESULT  DETAIL",
                                 "camera          OK      fine",
                                 "edgetpu device  --      none"]
    # a fake sysfs with a Coral USB in its bootloader id
    d = tmp_path / "sys" / "1-1"
    d.mkdir(parents=True)
    for k, v in {"idVendor": "1a6e", "idProduct": "089a", "busnum": "1", "devnum": "4"}.items():
        (d / k).write_text(v + "\n")
    found = coral_devices(tmp_path / "sys", tmp_path / "dev")
    assert len(found) == 1 and "1a6e:089a" in found[0] and "NOT accessible" in found[0]


def test_missing_video_device_is_reported_at_once(tmp_path):
    cfg = tmp_path / "c.yaml"
    (tmp_path / "state").mkdir()
    # a stable /dev/v4l/by-id/ name too (was 15 s of reconnect attempts per camera)
    for uri, hint in [("/dev/video97", "another number? ls /dev/video*"),
                      ("/dev/v4l/by-id/usb-door-video-index0", "another name? ls /dev/v4l/by-id")]:
        cfg.write_text(f"state_dir: {tmp_path / 'state'}\nsource: {{kind: opencv, uri: {uri}}}\n"
                       "detector: {kind: blazeface}\n")
        t0 = time.monotonic()
        got = rows(doctor(cfg).stdout)
        assert got["camera"] == ("FAIL", f"{uri}: no such device (camera unplugged, or {hint})")
        assert time.monotonic() - t0 < 14  # not CAMERA_TIMEOUT_S (15 s) of waiting for a frame
    assert missing_video_device(SourceConfig(kind="auto", uri="96")) == "/dev/video96"
    assert missing_video_device(SourceConfig(kind="opencv")) == (
        None if Path("/dev/video0").exists() else "/dev/video0")
    assert missing_video_device(SourceConfig(kind="auto")) is None  # may be the Pi camera
    assert missing_video_device(SourceConfig(kind="auto", uri="rtsp://cam/1")) is None


def test_every_camera_of_a_cameras_map_is_checked(tmp_path, default_model):
    """One row per camera: the demo gives a frame, a /dev/video that is not there fails at once;
    the timing check still runs on the camera that works."""
    (tmp_path / "state").mkdir()
    cfg = tmp_path / "config.yaml"  # not write_cfg: its top-level source clashes with cameras
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nclassifier: {{model: {default_model}}}\n"
                   "detector: {kind: blazeface}\n"
                   "cameras:\n  front: {source: {kind: demo}}\n"
                   "  back: {source: {uri: /dev/video97}}\n")
    t0 = time.monotonic()
    r = doctor(cfg)
    got = rows(r.stdout)
    assert got["camera front"][0] == "OK" and "first frame" in got["camera front"][1]
    assert got["camera back"] == ("FAIL", got["camera back"][1])
    assert "/dev/video97: no such device" in got["camera back"][1]
    assert got["timing"][0] == "OK"
    assert r.returncode == 1 and "camera back" in r.stderr
    assert time.monotonic() - t0 < 60


def test_previews_of_every_camera_are_checked_and_a_running_maskd_is_no_failure(tmp_path):
    """With a `cameras:` map doctor checked no preview at all (run then exited 78). A port held
    by another program is a warning (run detects without the page, and tries again); one held by a running maskd's status page is OK (doctor runs
    beside the service). Without mqtt.url a state dir that does not exist yet is no failure:
    run creates it for the open violations."""
    from mqtt_broker import free_port

    from maskd.statuspage import StatusServer

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    page = StatusServer("127.0.0.1:0").start()
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"state_dir: {tmp_path / 'nope'}\ndetector: {{kind: blazeface}}\ncameras:\n"
                   f"  front: {{source: {{kind: demo}}, preview: {{http: '127.0.0.1:{busy.getsockname()[1]}'}}}}\n"
                   f"  back: {{source: {{kind: demo}}, preview: {{http: '127.0.0.1:{page.port}', "
                   f"framebuffer: {tmp_path / 'fb0'}}}}}\n"
                   f"  side: {{source: {{kind: demo}}, preview: {{http: '127.0.0.1:{free_port()}'}}}}\n")
    try:
        r = doctor(cfg)
    finally:
        page.close()
        busy.close()
    got = rows(r.stdout)
    assert got["preview http (front)"][0] == "WARN", got
    assert "Address already in use (by another program?); detection runs" in got["preview http (front)"][1]
    assert got["preview http (back)"][0] == "OK" and "running maskd" in got["preview http (back)"][1]
    assert got["preview fb (back)"][0] == "FAIL" and "does not exist" in got["preview fb (back)"][1]
    assert got["preview http (side)"][0] == "OK"
    assert got["state dir"][0] == "--" and "run creates it" in got["state dir"][1]
    assert r.returncode == 1
    assert "required checks failed: preview fb (back)" in r.stderr


def test_camera_row_says_why_no_frame_came(tmp_path, monkeypatch):
    """doctor shows errors only (its root logger is at ERROR), which also hid the sources'
    warning that says why a camera gives no frame (was: only 'no frame within N s')."""
    import logging

    from mqtt_broker import free_port

    from maskd.commands import doctor as doc
    from maskd.config import load_config

    cfg = write_cfg(tmp_path, "")
    cfg.write_text(cfg.read_text().replace(
        "{kind: demo}", f"{{kind: opencv, uri: 'http://127.0.0.1:{free_port()}/s'}}"))
    monkeypatch.setattr(doc, "CAMERA_TIMEOUT_S", 3.0)
    root = logging.getLogger()
    monkeypatch.setattr(root, "level", logging.ERROR)  # as doctor's main() sets it
    d = doc.Doctor(load_config(cfg), 1)
    d.camera()
    (check,) = d.checks
    assert check.verdict == doc.FAIL and "cannot open" in check.detail, check.detail
    assert "retrying" not in check.detail  # doctor has stopped trying by then


def test_a_camera_that_stalls_during_the_timing_is_a_warning(tmp_path, monkeypatch):
    """A network camera that stops sending while doctor times the loop: the timing row said
    OK with the frames it got (36 of 200), and nothing said the camera went quiet."""
    import logging

    from maskd.commands import doctor as doc
    from maskd.config import load_config
    from maskd.demo import DemoSource
    from tools.ipcamera import IpCamera

    demo = DemoSource()
    monkeypatch.setattr(doc, "CAMERA_TIMEOUT_S", 2.0)
    monkeypatch.setattr(logging.getLogger(), "level", logging.ERROR)
    with IpCamera(lambda i: demo.render(i % demo.frames_per_pass)) as cam:
        cfg = write_cfg(tmp_path, "detector: {kind: blazeface}\n")
        cfg.write_text(cfg.read_text().replace("{kind: demo}", f"{{kind: opencv, uri: '{cam.url}'}}"))
        d = doc.Doctor(load_config(cfg), 200)
        d.classifier_check()
        d.detector_check()
        d.camera()
        threading.Timer(1.0, cam.stall).start()
        d.timing()
        d.source.close()
    timing, = (c for c in d.checks if c.name == "timing")
    assert timing.verdict == doc.WARN, timing.detail
    assert "of 200 frames" in timing.detail and "no frame for 2 s" in timing.detail


def test_scan_models_row(tmp_path):
    """The models `scan` averages: OK with the shipped twin, WARN naming a missing one (the
    door does not need it, so doctor still passes)."""
    cfg = write_cfg(tmp_path, "detector: {kind: blazeface}\n")
    got = rows(doctor(cfg).stdout)
    assert got["scan models"] == ("OK", "scan averages the classifier with "
                                        "maskd_mobilenetv2_int8_s43.tflite")
    gone = tmp_path / "gone.tflite"
    cfg = write_cfg(tmp_path, f"detector: {{kind: blazeface}}\nclassifier: {{still_extra_models: [{gone}]}}\n")
    r = doctor(cfg)
    verdict, detail = rows(r.stdout)["scan models"]
    assert verdict == "WARN" and f"not found: {gone}" in detail
    assert rows(r.stdout)["classifier"][0] == "OK"


def test_packages_row_compares_the_venv_with_the_pins_install_sh_left(tmp_path):
    """Against this venv's real metadata: as pinned, a changed version and a missing package
    (named, WARN, never a failed doctor), and no pins file at all (a checkout, not an install)."""
    from importlib.metadata import version

    from maskd.commands.doctor import Doctor
    from maskd.config import load_config

    doc = Doctor(load_config(write_cfg(tmp_path, "")), frames=1)
    pins = tmp_path / "maskd-pins.txt"
    pins.write_text(f"# made by tools/pins.py\nnumpy=={version('numpy')}\nPyYAML=={version('pyyaml')}\n")
    doc.packages(pins)
    assert doc.checks[-1] == Check("packages", "OK", f"all 2 as pinned in {pins}", False)
    pins.write_text(f"numpy==1.0.0\nnot-a-maskd-dependency==1.2.3\npyyaml=={version('pyyaml')}\n")
    doc.packages(pins)
    assert doc.checks[-1].verdict == "WARN" and not doc.checks[-1].failed
    assert doc.checks[-1].detail.startswith(
        f"2 of 3 not as tested: not-a-maskd-dependency missing (pinned 1.2.3), "
        f"numpy {version('numpy')} (pinned 1.0.0); `sudo deploy/install.sh`")
    doc.packages(tmp_path / "none" / "maskd-pins.txt")
    assert doc.checks[-1].verdict == "--" and "not installed by deploy/install.sh" in doc.checks[-1].detail


def test_packages_row_names_a_package_installed_beside_the_pins(tmp_path):
    """A venv holding a package its pins do not name (someone's later `pip install`): this very
    venv's real metadata, seen through a venv folder whose pins leave one package out."""
    import importlib.metadata

    from maskd.commands.doctor import Doctor
    from maskd.config import load_config
    from maskd.pins import NOT_PINNED, PINS_FILE, normalize

    real = Path(sys.prefix)
    sites = [str(p) for p in real.glob("lib/python3*/site-packages")]
    if not sites:
        pytest.skip(f"{real} has no lib/python3*/site-packages")
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / "lib").symlink_to(real / "lib")
    dists = {normalize(d.metadata["Name"]): d.version
             for d in importlib.metadata.distributions(path=sites)}
    assert "pytest" in dists
    pinned = {n: v for n, v in dists.items() if n not in NOT_PINNED and n != "pytest"}
    (venv / PINS_FILE).write_text("".join(f"{n}=={v}\n" for n, v in sorted(pinned.items())))
    doc = Doctor(load_config(write_cfg(tmp_path, "")), frames=1)
    doc.packages(venv / PINS_FILE)
    assert doc.checks[-1].verdict == "WARN" and not doc.checks[-1].failed
    assert doc.checks[-1].detail.startswith("1 not pinned: pytest installed, not pinned; "), \
        doc.checks[-1].detail
    (venv / PINS_FILE).write_text("".join(f"{n}=={v}\n" for n, v in sorted(dists.items())
                                          if n not in NOT_PINNED))
    doc.packages(venv / PINS_FILE)
    assert doc.checks[-1].verdict == "OK", doc.checks[-1].detail


def test_install_sh_leaves_the_pins_where_doctor_looks(tmp_path):
    from maskd.pins import PINS_FILE

    root = tmp_path / "root"
    r = subprocess.run(["bash", str(REPO / "deploy" / "install.sh"), "--root", str(root), "--no-start"],
                       capture_output=True, text=True, timeout=120, cwd=REPO, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    left = root / "opt" / "maskd" / ".venv" / PINS_FILE
    assert left.read_text().startswith("# Made by `python tools/pins.py pi`")


def test_auto_without_yunet_warns_as_run_does(tmp_path, monkeypatch):
    """doctor said "detector OK blazeface-full" with no hint, while `run` warns that BlazeFace
    loses masked faces and that `maskd models fetch` gets YuNet: doctor says the same now."""
    from maskd.commands.doctor import Doctor
    from maskd.config import Config

    monkeypatch.delenv("MASKD_YUNET", raising=False)
    monkeypatch.setattr("maskd.detectors.yunet.REPO_MODELS", tmp_path)
    monkeypatch.setattr("maskd.detectors.yunet.SYSTEM_MODELS", tmp_path)
    doc = Doctor(Config(), frames=1)
    doc.detector_check()
    got = {c.name: c for c in doc.checks}
    assert got["detector"].verdict == "OK" and got["detector"].detail.startswith("blazeface")
    assert [c.name for c in doc.checks] == ["detector", "yunet"]  # the detector said once
    assert got["yunet"].verdict == "WARN" and not got["yunet"].required
    assert "`maskd models fetch` downloads it" in got["yunet"].detail
    assert "often stops finding a face once a mask covers nose and mouth" in got["yunet"].detail


def test_paths_the_units_sandbox_leaves_read_only_are_named(tmp_path, monkeypatch, request):
    """Under the unit's ProtectSystem=strict only /var/lib/maskd (and a drop-in's
    ReadWritePaths=) is writable: a state_dir, jsonl.path, snapshots.dir or annotate_dir
    elsewhere made the service fail at start ("Read-only file system", exit 78) while doctor,
    run outside the sandbox, said "writable"."""
    from maskd.commands import doctor as doc
    from maskd.config import load_config

    unit = tmp_path / "maskd.service"
    unit.write_text((REPO / "systemd/maskd.service").read_text())
    (tmp_path / "maskd.service.d").mkdir()
    # a drop-in's folder that is there (one missing is left out: test_sandbox.py's
    # test_a_read_write_paths_folder_missing_is_no_writable_place_to_doctor)
    events = Path(tempfile.mkdtemp(dir="/dev/shm"))
    request.addfinalizer(lambda: shutil.rmtree(events))
    (tmp_path / "maskd.service.d/override.conf").write_text(f"[Service]\nReadWritePaths=-{events}\n")
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    monkeypatch.setattr(doc, "API_WRITABLE", ())  # /dev/shm: a stick outside /tmp here

    def sandbox(name: str, text: str) -> list:
        (tmp_path / name).write_text(text)
        d = doc.Doctor(load_config(tmp_path / name), 1)
        d.sandbox()
        return d.checks

    cfg = ("source: {kind: demo}\nstate_dir: /data/maskd\nmqtt: {url: 'mqtt://127.0.0.1'}\n"
           f"jsonl: {{path: {events}/maskd.jsonl}}\nsnapshots: {{dir: /srv/snaps}}\n"
           "preview: {annotate_dir: /tmp/annotated}\n")
    checks = sandbox("c.yaml", cfg)
    got = {c.detail.split(":")[0]: c for c in checks}
    assert set(got) == {"state_dir", "snapshots.dir", "preview.annotate_dir"}  # jsonl: the drop-in's
    assert all(c.name == "sandbox" and c.verdict == doc.WARN and not c.required for c in checks)
    assert "/data/maskd is read-only to the service (ProtectSystem=strict" in got["state_dir"].detail
    # /srv/snaps, not made yet: the folder there now, as systemd leaves a missing - folder out
    # (only root writes /srv: not -/srv, test_sandbox.py's
    # test_doctors_read_write_paths_for_a_stick_not_mounted_names_its_mount_point)
    there = "/srv/snaps"
    assert f"`systemctl edit maskd` and add [Service] ReadWritePaths=-{there} (" in got["snapshots.dir"].detail
    assert "service's own /tmp (PrivateTmp=)" in got["preview.annotate_dir"].detail
    # several cameras: the shared places once, each camera's own clip folder by its key
    checks = sandbox("multi.yaml", "state_dir: /data/maskd\nmqtt: {url: 'mqtt://127.0.0.1'}\n"
                     "cameras:\n  a: {source: {kind: demo}}\n  b: {source: {kind: demo, fps: 10}, "
                     "preview: {annotate_dir: /srv/clips}}\n")
    assert [c.detail.split(":")[0] for c in checks] == ["state_dir", "cameras.b.preview.annotate_dir"]
    # under /var/lib/maskd (a relative path is the unit's WorkingDirectory's): nothing to say
    assert sandbox("inside.yaml", "source: {kind: demo}\nmqtt: {url: 'mqtt://127.0.0.1'}\n"
                   "jsonl: {path: events.jsonl}\nsnapshots: {dir: /var/lib/maskd/snaps}\n") == []
    # the folder to open, of a file (its rotation writes PATH.old beside it) and quoted as
    # systemd reads it where it holds a space (a stick mounted under its label; the first
    # folder missing under /srv, which only root may write: _there)
    checks = sandbox("folders.yaml", "source: {kind: demo}\njsonl: {path: /srv/log/maskd.jsonl}\n"
                     "snapshots: {dir: '/srv/USB DISK/snaps'}\n")
    assert [c.detail.split("ReadWritePaths=")[1].split(" (")[0] for c in checks] == [
        "-/srv/log", "-'/srv/USB DISK'"]
    # PrivateTmp= gives the service a /var/tmp of its own too
    checks = sandbox("vartmp.yaml", "source: {kind: demo}\nsnapshots: {dir: /var/tmp/snaps}\n")
    assert [(c.verdict, c.detail.split(" is ")[1][:27]) for c in checks] == [
        (doc.WARN, "in the service's own /tmp (")]
    # no installed unit: not run as the service, nothing to say either
    monkeypatch.setattr(doc, "UNIT_FILE", tmp_path / "none.service")
    assert sandbox("c.yaml", cfg) == []


def test_a_place_linked_out_of_the_state_folder_is_named_where_it_leads(monkeypatch, request):
    """`ln -s /media/usb/snaps /var/lib/maskd/snaps` and `snapshots.dir: /var/lib/maskd/snaps`
    (a stick, the link under the writable folder): the sandbox row said nothing, as the path's
    words are under /var/lib/maskd, and the service stopped at start (exit 78, 'Read-only file
    system': systemd's mounts follow the link, test_sandbox.py::test_a_stick_linked_from_the_
    state_folder_needs_its_read_write_paths). The link's target is judged, and a
    ReadWritePaths= that is a link is followed as systemd follows it."""
    from maskd.commands import doctor as doc
    from maskd.config import load_config

    if not os.access("/dev/shm", os.W_OK):  # outside /tmp, the service's own (PrivateTmp=)
        pytest.skip("no /dev/shm here")
    tmp_path = Path(tempfile.mkdtemp(dir="/dev/shm"))
    request.addfinalizer(lambda: shutil.rmtree(tmp_path))
    state, usb = tmp_path / "state", tmp_path / "usb"
    (usb / "snaps").mkdir(parents=True)
    state.mkdir()
    (state / "snaps").symlink_to(usb / "snaps")
    unit = tmp_path / "maskd.service"
    unit.write_text((REPO / "systemd/maskd.service").read_text())
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    monkeypatch.setattr(doc, "SERVICE_DIR", state)
    monkeypatch.setattr(doc, "API_WRITABLE", ())  # /dev/shm: a stick outside /tmp here
    (tmp_path / "c.yaml").write_text(f"source: {{kind: demo}}\nsnapshots: {{dir: {state}/snaps}}\n")

    def sandbox() -> list:
        d = doc.Doctor(load_config(tmp_path / "c.yaml"), 1)
        d.sandbox()
        return d.checks

    [check] = sandbox()
    assert check.verdict == doc.WARN and check.detail.startswith(
        f"snapshots.dir: {state}/snaps (a link to {usb}/snaps) is read-only to the service")
    # the -: systemd fails the whole start (226/NAMESPACE) on a ReadWritePaths= folder that is
    # missing (the stick not mounted: the link's "later"), unless it is written with a -
    # (systemd.exec(5)); the line, put into a drop-in as given, covers the folder
    advice = f"[Service] ReadWritePaths=-{usb}/snaps (the - lets the service start while"
    assert advice in check.detail
    (tmp_path / "maskd.service.d").mkdir()
    (tmp_path / "maskd.service.d/override.conf").write_text(
        "[Service]\n" + check.detail.split("[Service] ")[1].split(" (")[0] + "\n")
    assert sandbox() == []
    (tmp_path / "media").symlink_to(usb)  # the drop-in names the stick by another link
    (tmp_path / "maskd.service.d/override.conf").write_text(
        f"[Service]\nReadWritePaths={tmp_path}/media\n")
    assert sandbox() == []


def test_a_drop_ins_missing_read_write_path_without_its_dash_is_named(tmp_path, monkeypatch,
                                                                      request):
    """`systemctl edit maskd` with ReadWritePaths=/media/usb/snaps, the stick not mounted (or
    a folder not made yet): systemd refuses to start the unit at all (226/NAMESPACE,
    systemd.exec(5): only a path written with - is passed over when missing), and doctor said
    nothing, its own advice being the - form. It names the path and both ways out; one that is
    there, or written with its -, is fine."""
    from maskd.commands import doctor as doc
    from maskd.config import load_config

    unit = tmp_path / "maskd.service"
    unit.write_text((REPO / "systemd/maskd.service").read_text())
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    (tmp_path / "maskd.service.d").mkdir()
    (tmp_path / "c.yaml").write_text("source: {kind: demo}\n")
    usb, there = tmp_path / "usb/snaps", tmp_path / "there"
    there.mkdir()
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")  # a link to a stick not mounted

    def sandbox(drop_in: str) -> list[str]:
        (tmp_path / "maskd.service.d/override.conf").write_text(f"[Service]\n{drop_in}\n")
        d = doc.Doctor(load_config(tmp_path / "c.yaml"), 1)
        d.sandbox()
        assert all(c.verdict == doc.WARN and not c.required for c in d.checks)
        return [c.detail for c in d.checks]

    assert sandbox(f"ReadWritePaths={usb} {there}") == [
        f"ReadWritePaths={usb} (`systemctl cat maskd`) is missing, so systemd refuses to start "
        f"the service (226/NAMESPACE); create it, or write ReadWritePaths=-{usb.parent} in its "
        "place (the - lets the service start while it is missing)"]
    assert [d.split(" (")[0] for d in sandbox(f"ReadWritePaths={tmp_path}/gone")] == [
        f"ReadWritePaths={tmp_path}/gone"]
    assert sandbox(f"ReadWritePaths=-{usb} {there}\nReadWritePaths=+-{usb}") == []
    assert sandbox(f"ReadWritePaths={usb}\nReadWritePaths=") == []  # cleared
    # a folder maskd is still to make on a stick that is there (its user's): that row and the
    # read-only row gave two folders (-STICK/snaps, -STICK); the first, followed, still stopped
    # the service at start (exit 78, tools/sandbox.py). Both name the stick, and followed, no row
    stick = Path(tempfile.mkdtemp(dir="/dev/shm"))  # outside /tmp, the service's own
    monkeypatch.setattr(doc, "API_WRITABLE", ())  # and taken for a stick
    request.addfinalizer(lambda: shutil.rmtree(stick))
    os.chown(stick, 65534, 65534)
    (tmp_path / "c.yaml").write_text(f"source: {{kind: demo}}\nsnapshots: {{dir: {stick}/snaps}}\n")
    rows = sandbox(f"ReadWritePaths={stick}/snaps")
    assert len(rows) == 2 and all(f"ReadWritePaths=-{stick} " in r for r in rows), rows
    assert sandbox(f"ReadWritePaths=-{stick}") == []
    (stick / "snaps").mkdir()  # made: the folder itself is named, not the whole stick
    [row] = sandbox("ReadWritePaths=")
    assert f"ReadWritePaths=-{stick}/snaps " in row, row


def test_a_read_write_path_with_its_plus_before_its_dash_is_ignored_as_systemd_does(
        tmp_path, monkeypatch, request):
    """`ReadWritePaths=+-/media/usb`: systemd takes a - only before the + (systemd.exec(5):
    "specify - first"), so '+-PATH' leaves '-PATH', no absolute path, and the word is ignored
    ('ReadWritePaths= path is not absolute, ignoring', systemd-analyze verify): the stick stays
    read-only and the service stops at start (exit 78). doctor took it for -PATH and said
    nothing; it now says the folder is read-only, as with no ReadWritePaths=. -+PATH stands."""
    from maskd.commands import doctor as doc
    from maskd.config import load_config

    unit = tmp_path / "maskd.service"
    unit.write_text((REPO / "systemd/maskd.service").read_text())
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    stick = Path(tempfile.mkdtemp(dir="/dev/shm"))  # outside /tmp, the service's own
    monkeypatch.setattr(doc, "API_WRITABLE", ())  # and taken for a stick
    request.addfinalizer(lambda: shutil.rmtree(stick))
    (tmp_path / "maskd.service.d").mkdir()
    (tmp_path / "c.yaml").write_text(f"source: {{kind: demo}}\nsnapshots: {{dir: {stick}}}\n")

    def sandbox(words: str) -> list[str]:
        (tmp_path / "maskd.service.d/override.conf").write_text(
            f"[Service]\nReadWritePaths={words}\n")
        d = doc.Doctor(load_config(tmp_path / "c.yaml"), 1)
        d.sandbox()
        return [c.detail for c in d.checks]

    if shutil.which("systemd-analyze"):  # what systemd makes of the word
        (tmp_path / "t.service").write_text(
            f"[Service]\nExecStart=/bin/true\nReadWritePaths=+-{stick} -+{stick} "
            f"/dev/..{stick}\n")
        r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "t.service")],
                           capture_output=True, text=True, timeout=60)
        assert f"path is not absolute, ignoring: -{stick}\n" in r.stderr + "\n", r.stderr
        assert f"ignoring: +{stick}" not in r.stderr, r.stderr
        assert f"path is not normalized, ignoring: /dev/..{stick}\n" in r.stderr + "\n"
    for ignored in (f"+-{stick}", f"/dev/..{stick}", f"-/dev/..{stick}"):  # '..': ignored
        [row] = sandbox(ignored)
        assert f"snapshots.dir: {stick} is read-only to the service" in row, (ignored, row)
    assert sandbox(f"-+{stick}") == [] and sandbox(f"-{stick}") == []


def test_read_write_paths_with_systemd_specifiers_are_filled_in_as_systemd_does(
        tmp_path, monkeypatch, request):
    """`systemctl edit maskd` with ReadWritePaths=-%C/maskd-usb (systemd.unit(5): %C is
    /var/cache for the system manager, %% a %): doctor took the word for a path not absolute
    and said the folder the service writes was read-only to it. The specifiers of a fixed folder
    are filled in (%h is root's home, not User='s); any other (%Y, the unit file's folder) is not
    guessed: the read-only row is then no warning and names the word it cannot judge."""
    from maskd.commands import doctor as doc
    from maskd.config import load_config

    unit = tmp_path / "maskd.service"
    unit.write_text((REPO / "systemd/maskd.service").read_text())
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    (tmp_path / "maskd.service.d").mkdir()
    words = "-%S/maskd-usb %C/a -%L/b +%t/c %T/d %V/e %E/f %h/g /srv/100%%/%n/%N -%Y/x"
    (tmp_path / "maskd.service.d/override.conf").write_text(f"[Service]\nReadWritePaths={words}\n")
    if shutil.which("systemd-analyze"):  # systemd takes each word (none 'not absolute')
        (tmp_path / "t.service").write_text(f"[Service]\nExecStart=/bin/true\nReadWritePaths={words}\n")
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "t.service")],
                           capture_output=True, text=True, timeout=60)
        assert "ReadWritePaths" not in r.stderr and "specifier" not in r.stderr, r.stderr
    assert doc.unit_read_write_paths(unit) == [Path(p) for p in (
        "/var/lib/maskd-usb", "/var/cache/a", "/var/log/b", "/run/c", "/tmp/d", "/var/tmp/e",
        "/etc/f", "/root/g", "/srv/100%/maskd.service/maskd")]
    assert doc.unit_unjudged(unit) == [("-%Y/x", "%Y")]  # the unit file's folder
    # a % at the word's end stays as systemd keeps it; a name holding .. (not a part ..) is a path
    (tmp_path / "maskd.service.d/override.conf").write_text(
        "[Service]\nReadWritePaths=-/srv/x% /srv/a..b\n")
    assert doc.unit_unjudged(unit) == []
    assert doc.unit_read_write_paths(unit) == [Path("/srv/x%"), Path("/srv/a..b")]
    # the row, of a stick whose folder is written with a %% (outside /tmp: the service's own)
    stick = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="usb%Y"))
    request.addfinalizer(lambda: shutil.rmtree(stick))
    monkeypatch.setattr(doc, "API_WRITABLE", ())  # /dev/shm taken for a stick
    (tmp_path / "c.yaml").write_text(f"source: {{kind: demo}}\nsnapshots: {{dir: {stick}/s}}\n")

    def sandbox(drop_in: str) -> list:
        (tmp_path / "maskd.service.d/override.conf").write_text(f"[Service]\n{drop_in}\n")
        d = doc.Doctor(load_config(tmp_path / "c.yaml"), 1)
        d.sandbox()
        return d.checks

    written = str(stick).replace("%", "%%")
    assert sandbox(f"ReadWritePaths=-{written}") == []
    [row] = sandbox(f"ReadWritePaths=-{stick}")  # its % as a specifier: %Y, not judged
    assert row.verdict == doc.INFO and row.detail.endswith(
        f"unless ReadWritePaths=-{stick} opens it (doctor cannot tell which folder systemd "
        f"makes of %Y: `systemctl show maskd -p ReadWritePaths` says)"), row
    [row] = sandbox('ReadWritePaths="-/media/pi/USB DISK/%Y"')  # quoted, as it is to be written
    assert row.detail.endswith("unless ReadWritePaths='-/media/pi/USB DISK/%Y' opens it (doctor "
                               "cannot tell which folder systemd makes of %Y: `systemctl show "
                               "maskd -p ReadWritePaths` says)"), row
    [row] = sandbox("ReadWritePaths=")  # nothing unjudged: the warning as before
    assert row.verdict == doc.WARN and row.detail.endswith("226/NAMESPACE)"), row
    row = sandbox(f"ReadWritePaths={written}/gone")[0]  # missing without its -: named filled in
    assert row.detail.startswith(f"ReadWritePaths={stick}/gone (`systemctl cat maskd`) is "
                                 "missing"), row


def test_a_read_write_path_ending_in_a_percent_is_that_folder_as_systemd_takes_it(
        tmp_path, monkeypatch, request):
    """systemd keeps a % at a word's end as it is (specifier_printf: 'a stray %, also end with
    %'): ReadWritePaths=-/dev/shm/usb% opens that folder. doctor said the folder the service
    writes there was read-only to it, unless the word opened it, 'doctor cannot tell which
    folder systemd makes of a % at its end'. It is that folder now: no row."""
    from maskd.commands import doctor as doc
    from maskd.config import load_config

    stick = Path(tempfile.mkdtemp(dir="/dev/shm", suffix="usb%"))
    request.addfinalizer(lambda: shutil.rmtree(stick))
    if shutil.which("systemd-analyze"):  # systemd takes the word, % and all
        (tmp_path / "t.service").write_text(
            f"[Service]\nExecStart=/bin/true\nReadWritePaths=-{stick} {stick.name}\n")
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "t.service")],
                           capture_output=True, text=True, timeout=60)
        assert "specifier" not in r.stderr and f"ignoring: {stick.name}\n" in r.stderr, r.stderr
    unit = tmp_path / "maskd.service"
    unit.write_text((REPO / "systemd/maskd.service").read_text())
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    monkeypatch.setattr(doc, "API_WRITABLE", ())  # /dev/shm taken for a stick
    (tmp_path / "maskd.service.d").mkdir()
    (tmp_path / "maskd.service.d/override.conf").write_text(f"[Service]\nReadWritePaths=-{stick}\n")
    (tmp_path / "c.yaml").write_text(f"source: {{kind: demo}}\nsnapshots: {{dir: {stick}/s}}\n")
    assert doc.unit_read_write_paths(unit) == [stick] and doc.unit_unjudged(unit) == []
    d = doc.Doctor(load_config(tmp_path / "c.yaml"), 1)
    d.sandbox()
    assert d.checks == []


def test_a_place_linked_into_home_is_named_as_a_link(tmp_path, monkeypatch):
    """`ln -s /home/pi/snaps /var/lib/maskd/snaps`, `snapshots.dir: /var/lib/maskd/snaps`: the
    sandbox row said '/var/lib/maskd/snaps is under /home ... move it to /var/lib/maskd', of a
    path that is there. It names where the link leads, as the read-only line does."""
    from maskd.commands import doctor as doc
    from maskd.config import load_config

    unit = tmp_path / "maskd.service"
    unit.write_text((REPO / "systemd/maskd.service").read_text())
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    home, state = tmp_path / "home", tmp_path / "state"
    monkeypatch.setattr(doc, "PROTECT_HOME", (str(home),))
    monkeypatch.setattr(doc, "SERVICE_DIR", state)
    (home / "pi/snaps").mkdir(parents=True)
    state.mkdir()
    (state / "snaps").symlink_to(home / "pi/snaps")
    (tmp_path / "c.yaml").write_text(f"source: {{kind: demo}}\nsnapshots: {{dir: {state}/snaps}}\n")
    d = doc.Doctor(load_config(tmp_path / "c.yaml"), 1)
    d.sandbox()
    assert [c.detail.split(", which")[0] for c in d.checks] == [
        f"snapshots.dir: {state}/snaps (a link to {home}/pi/snaps) is under {home}"]


def test_a_drop_in_that_opens_home_or_shares_tmp_is_followed(tmp_path, monkeypatch):
    """`systemctl edit maskd` with ProtectHome=read-only (a model kept in /home/pi) or
    PrivateTmp=no: doctor's sandbox row still said the service 'does not see' the file
    '(ProtectHome=yes ...)' and that it fails at start, where the service reads it. The row
    follows the unit's last ProtectHome= and PrivateTmp= as systemd does; a folder it writes
    there is then read-only as any other (ProtectSystem=strict), open to a ReadWritePaths=."""
    from maskd.commands import doctor as doc
    from maskd.config import load_config

    unit = tmp_path / "maskd.service"
    unit.write_text((REPO / "systemd/maskd.service").read_text())
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    (tmp_path / "maskd.service.d").mkdir()
    (tmp_path / "c.yaml").write_text(
        "source: {kind: demo}\ndetector: {kind: yunet, model: /home/pi/yunet.onnx}\n"
        "classifier: {model: /var/tmp/mask.tflite}\nsnapshots: {dir: /home/pi/snaps}\n")

    def sandbox(drop_in: str) -> list[str]:
        (tmp_path / "maskd.service.d/override.conf").write_text(f"[Service]\n{drop_in}\n")
        d = doc.Doctor(load_config(tmp_path / "c.yaml"), 1)
        d.sandbox()
        return [c.detail.split(" (")[0].split(",")[0] for c in d.checks]

    rw = "snapshots.dir: /home/pi/snaps is read-only to the service"
    assert sandbox("ProtectHome=read-only\nPrivateTmp=no") == [rw]
    # a folder there (/home/pi/snaps is not, here: a missing one is left out, test_sandbox.py's
    # test_a_read_write_paths_folder_missing_is_no_writable_place_to_doctor)
    assert sandbox("ProtectHome=read-only\nPrivateTmp=no\nReadWritePaths=/home") == []
    assert sandbox("ProtectHome=no\nPrivateTmp=false") == [rw]
    assert sandbox("ProtectHome=No\nPrivateTmp=FALSE") == [rw]  # a boolean in any case
    assert sandbox("ProtectHome=tmpfs") == [
        "detector.model: /home/pi/yunet.onnx is under /home", "classifier.model: /var/tmp/mask"
        ".tflite is in /var/tmp", "snapshots.dir: /home/pi/snaps is under /home"]
    assert sandbox("ProtectHome=off\nPrivateTmp=yes") == [
        "classifier.model: /var/tmp/mask.tflite is in /var/tmp", rw]
    # a value systemd cannot parse is ignored ('Failed to parse ..., ignoring'): the one
    # before it stands (the unit's yes; a drop-in's no)
    assert sandbox("ProtectHome=read_only\nPrivateTmp=nope") == sandbox("ProtectHome=yes")
    assert sandbox("ProtectHome=no\nPrivateTmp=no\nPrivateTmp=nope") == [rw]
    # systemd 257's disconnected: a /tmp of its own too
    assert sandbox("PrivateTmp=disconnected") == sandbox("ProtectHome=yes")
    # a name only as written (systemd ignores ProtectHome=Read-Only, PrivateTmp=Disconnected)
    assert sandbox("ProtectHome=no\nPrivateTmp=no\nProtectHome=Read-Only\n"
                   "PrivateTmp=Disconnected") == [rw]
    assert sandbox("ProtectHome=TMPFS") == sandbox("ProtectHome=yes")
    # tmpfs: /home is an empty folder to the service, not closed as with yes
    (tmp_path / "maskd.service.d/override.conf").write_text("[Service]\nProtectHome=tmpfs\n")
    d = doc.Doctor(load_config(tmp_path / "c.yaml"), 1)
    d.sandbox()
    assert "(ProtectHome=tmpfs: empty to it, whatever" in d.checks[0].detail, d.checks[0].detail
    (tmp_path / "maskd.service.d/override.conf").write_text("[Service]\nProtectHome=true\n")
    d = doc.Doctor(load_config(tmp_path / "c.yaml"), 1)
    d.sandbox()
    assert "(ProtectHome=yes: empty and closed to it, whatever" in d.checks[0].detail


def test_a_drop_ins_protect_system_is_followed(tmp_path, monkeypatch):
    """`systemctl edit maskd` with ProtectSystem=full (only /usr, /boot, /efi and /etc
    read-only): the sandbox row still said a snapshots.dir in /srv was 'read-only to the service
    (ProtectSystem=strict ...), which then fails at start', where the service writes it. The
    row follows the unit's last ProtectSystem= as systemd does, and names the read-only top."""
    from maskd.commands import doctor as doc
    from maskd.config import load_config

    unit = tmp_path / "maskd.service"
    unit.write_text((REPO / "systemd/maskd.service").read_text())
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    (tmp_path / "maskd.service.d").mkdir()
    (tmp_path / "c.yaml").write_text("source: {kind: demo}\nsnapshots: {dir: /srv/snaps}\n"
                                     "jsonl: {path: /etc/maskd/events.jsonl}\n")

    def sandbox(drop_in: str) -> list[str]:
        (tmp_path / "maskd.service.d/override.conf").write_text(f"[Service]\n{drop_in}\n")
        d = doc.Doctor(load_config(tmp_path / "c.yaml"), 1)
        d.sandbox()
        return [c.detail.split("), ")[0] for c in d.checks]

    strict = ["jsonl.path: /etc/maskd/events.jsonl is read-only to the service (ProtectSystem="
              "strict: only /var/lib/maskd is writable",
              "snapshots.dir: /srv/snaps is read-only to the service (ProtectSystem=strict: only "
              "/var/lib/maskd is writable"]
    assert sorted(sandbox("")) == strict
    assert sandbox("ProtectSystem=full") == [
        "jsonl.path: /etc/maskd/events.jsonl is read-only to the service (ProtectSystem=full: "
        "/etc is read-only"]
    assert sandbox("ProtectSystem=yes") == sandbox("ProtectSystem=off") == []
    assert sandbox("ProtectSystem=full\nProtectSystem=sometimes") == sandbox(  # ignored
        "ProtectSystem=full")
    assert sorted(sandbox("ProtectSystem=no\nProtectSystem=strict")) == strict
    # a name only as written: systemd ignores ProtectSystem=Full ('Failed to parse protect
    # system value, ignoring': systemd-analyze verify) and the unit's strict stands; a
    # boolean in any case
    assert sorted(sandbox("ProtectSystem=Full")) == strict
    assert sandbox("ProtectSystem=NO") == []
    # yes and full keep /usr, /boot and /efi read-only
    (tmp_path / "c.yaml").write_text("source: {kind: demo}\nsnapshots: {dir: /boot/snaps}\n"
                                     "jsonl: {path: /usr/local/maskd/events.jsonl}\n"
                                     "preview: {annotate_dir: /efi/clips}\n")
    for protect in ("yes", "full"):
        assert sorted(sandbox(f"ProtectSystem={protect}")) == [
            f"jsonl.path: /usr/local/maskd/events.jsonl is read-only to the service (ProtectSystem="
            f"{protect}: /usr is read-only",
            f"preview.annotate_dir: /efi/clips is read-only to the service (ProtectSystem="
            f"{protect}: /efi is read-only",
            f"snapshots.dir: /boot/snaps is read-only to the service (ProtectSystem={protect}: "
            "/boot is read-only"]


def test_a_link_loop_in_a_path_is_no_failure_of_the_sandbox_row(tmp_path, monkeypatch):
    """`snapshots.dir` a link to itself (`ln -s`, a typo): the writes row says 'Too many levels
    of symbolic links', a warning, and the sandbox row, judging where the link leads, failed,
    'RuntimeError: Symlink loop', a required check (doctor exited 1) that hid the row's other
    lines. A loop leads nowhere: the path is judged as written, as the rest of the row goes."""
    from maskd.commands import doctor as doc
    from maskd.config import load_config

    unit = tmp_path / "maskd.service"
    unit.write_text((REPO / "systemd/maskd.service").read_text())
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    monkeypatch.setattr(doc, "SERVICE_DIR", tmp_path / "state")
    (tmp_path / "state").mkdir()
    (tmp_path / "state/loop").symlink_to(tmp_path / "state/loop")
    (tmp_path / "rw").symlink_to(tmp_path / "rw")  # a drop-in's ReadWritePaths= loops too
    (tmp_path / "maskd.service.d").mkdir()
    (tmp_path / "maskd.service.d/override.conf").write_text(
        f"[Service]\nReadWritePaths={tmp_path}/rw\n")
    (tmp_path / "c.yaml").write_text(
        f"source: {{kind: demo}}\nsnapshots: {{dir: {tmp_path}/state/loop}}\n"
        "classifier: {model: /home/pi/loop/mask.tflite}\n")
    d = doc.Doctor(load_config(tmp_path / "c.yaml"), 1)
    d.sandbox()
    assert [(c.name, c.verdict, c.detail.split(" is ")[0]) for c in d.checks] == [
        ("sandbox", doc.WARN, "classifier.model: /home/pi/loop/mask.tflite")]


def test_a_file_under_home_the_service_cannot_see_is_named(tmp_path, monkeypatch):
    """A model or password file in /home/pi (mode 0755 there, read by `sudo -u maskd maskd
    doctor`): doctor and check-config said OK, and the service, which sees /home empty and
    closed (ProtectHome=yes), stopped at start with 'detector.model: /home/pi/...: Permission
    denied' of a file every user may read (tools/sandbox.py, a real run). The sandbox row
    names each file the service reads there, and in /tmp (its own: 'model file not found')."""
    from maskd.commands import doctor as doc
    from maskd.config import load_config

    unit = tmp_path / "maskd.service"
    unit.write_text((REPO / "systemd/maskd.service").read_text())
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    (tmp_path / "c.yaml").write_text(
        "source: {kind: demo}\ndetector: {kind: yunet, model: /home/pi/models/yunet.onnx}\n"
        "classifier: {model: /root/mask.tflite}\n")
    d = doc.Doctor(load_config(tmp_path / "c.yaml"), 1)
    d.sandbox()
    got = [(c.name, c.verdict, c.required, c.detail) for c in d.checks]
    assert got == [("sandbox", doc.WARN, False, f"{key}: {path} is under {top}, which the service "
                    "does not see (ProtectHome=yes: empty and closed to it, whatever "
                    "ReadWritePaths= says), so it then fails at start; move it to /etc/maskd "
                    "(root:maskd 0640) or /var/lib/maskd")
                   for key, path, top in (
                       ("detector.model", "/home/pi/models/yunet.onnx", "/home"),
                       ("classifier.model", "/root/mask.tflite", "/root"))]
    # a clip or folder of images the source plays, in /home/pi/Videos: 'cannot be looked up'
    (tmp_path / "c.yaml").write_text("source: {kind: opencv, uri: /home/pi/Videos/door.mp4}\n")
    d = doc.Doctor(load_config(tmp_path / "c.yaml"), 1)
    d.sandbox()
    assert [c.detail.split(", which")[0] for c in d.checks] == [
        "source.uri: /home/pi/Videos/door.mp4 is under /home"]
    assert d.checks[0].detail.endswith("move it to a folder outside /home and /root, such as "
                                       "/srv"), d.checks[0].detail  # a video: not /etc/maskd
    # one copied to /tmp to try: the service has a /tmp of its own ('model file not found')
    (tmp_path / "c.yaml").write_text("source: {kind: demo}\ndetector: {kind: yunet, model: "
                                     "/tmp/yunet.onnx}\n")
    d = doc.Doctor(load_config(tmp_path / "c.yaml"), 1)
    d.sandbox()
    assert [c.detail for c in d.checks] == [
        "detector.model: /tmp/yunet.onnx is in /tmp, of which the service has its own, empty at "
        "each start (PrivateTmp=): it does not see this file, so it then fails at start; move it "
        "to /etc/maskd (root:maskd 0640) or /var/lib/maskd"]
    # whole parts of the path: /home2 and /tmpdata are neither /home nor /tmp
    (tmp_path / "c.yaml").write_text("source: {kind: demo}\ndetector: {kind: yunet, model: "
                                     "/home2/yunet.onnx}\nclassifier: {model: /tmpdata/m.tflite}\n")
    d = doc.Doctor(load_config(tmp_path / "c.yaml"), 1)
    d.sandbox()
    assert d.checks == []


def test_a_folder_under_home_is_not_opened_by_read_write_paths(tmp_path, monkeypatch):
    """`snapshots.dir: /home/pi/snaps`: the sandbox row said to add ReadWritePaths=/home/pi/snaps,
    and with it said nothing; systemd drops a ReadWritePaths= under a ProtectHome=yes folder
    (systemd#7153), and the service stopped at start with 'Permission denied'
    (tools/sandbox.py --rw, a real run). The row says the folder is hidden and where to move it."""
    from maskd.commands import doctor as doc
    from maskd.config import load_config

    unit = tmp_path / "maskd.service"
    unit.write_text((REPO / "systemd/maskd.service").read_text())
    (tmp_path / "maskd.service.d").mkdir()
    (tmp_path / "maskd.service.d/override.conf").write_text(
        "[Service]\nReadWritePaths=-/home/pi\n")  # - : no /home/pi on this machine
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    (tmp_path / "c.yaml").write_text("source: {kind: demo}\nsnapshots: {dir: /home/pi/snaps}\n")
    d = doc.Doctor(load_config(tmp_path / "c.yaml"), 1)
    d.sandbox()
    assert [c.detail for c in d.checks] == [
        "snapshots.dir: /home/pi/snaps is under /home, which the service does not see "
        "(ProtectHome=yes: empty and closed to it, whatever ReadWritePaths= says), so it then "
        "fails at start; move it to /var/lib/maskd, or a folder outside /home and /root with its "
        "ReadWritePaths="]


def test_state_dir_without_mqtt_is_checked_as_run_uses_it(tmp_path):
    """Set in the config, state_dir keeps the open violations even without MQTT, and run stops
    (exit 78, "cannot keep the open violations there") on one it cannot create or write, as
    check-config does: so doctor fails it. Was: "not used (mqtt.url not set)", so a read-only
    one went unnoticed; then a WARN and exit 0 for a config run refuses."""
    from mqtt_broker import small_disk

    with small_disk(tmp_path / "ro") as ro:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"state_dir: {ro}\nsource: {{kind: demo}}\n")
        r = doctor(cfg)
        ran = subprocess.run([sys.executable, "-m", "maskd", "run", "--config", str(cfg),
                              "--max-frames", "1"], capture_output=True, text=True, timeout=120,
                             cwd=REPO)
    verdict, detail = rows(r.stdout)["state dir"]
    assert ran.returncode == 78 and "Read-only file system" in ran.stderr, ran.stderr
    assert verdict == "FAIL" and "Read-only file system" in detail and "open violations" in detail
    assert r.returncode == 1 and "state dir" in r.stderr, r.stdout + r.stderr
    (tmp_path / "afile").write_text("")  # a file where the folder should be: run's 78 too
    cfg.write_text(f"state_dir: {tmp_path / 'afile'}\nsource: {{kind: demo}}\n")
    verdict, detail = rows(doctor(cfg).stdout)["state dir"]
    assert verdict == "FAIL" and "File exists" in detail
    (tmp_path / "bare.yaml").write_text("source: {kind: demo}\n")
    verdict, detail = rows(doctor(tmp_path / "bare.yaml").stdout)["state dir"]
    assert verdict == "--" and "not used" in detail


def test_the_files_and_folders_run_writes_are_checked_as_run_checks_them(tmp_path):
    """jsonl.path and snapshots.dir where nothing can be made (a file where their folder
    should be) stop run (exit 78): doctor fails each, in run's words (was: not looked at, every
    row OK and exit 0 for a config run and check-config refuse)."""
    (tmp_path / "afile").write_text("")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"source: {{kind: demo}}\njsonl: {{path: {tmp_path / 'afile' / 'ev.jsonl'}}}\n"
                   f"snapshots: {{dir: {tmp_path / 'afile' / 'snaps'}}}\n")
    ran = subprocess.run([sys.executable, "-m", "maskd", "run", "--config", str(cfg),
                          "--max-frames", "1"], capture_output=True, text=True, timeout=120,
                         cwd=REPO)
    assert ran.returncode == 78, ran.stderr
    r = doctor(cfg)
    said = [ln.split(None, 2)[1:] for ln in r.stdout.splitlines() if ln.startswith("writes ")]
    assert [v for v, _ in said] == ["FAIL", "FAIL"], r.stdout
    for _, line in said:
        assert line in ran.stderr and "Not a directory" in line, (line, ran.stderr)
    assert r.returncode == 1, r.stdout + r.stderr
    cfg.write_text(f"source: {{kind: demo}}\njsonl: {{path: {tmp_path / 'ev.jsonl'}}}\n")
    assert "writes " not in doctor(cfg).stdout  # a place run can write: no row


def test_a_full_state_dir_says_full_not_unwritable_by_this_user(tmp_path):
    """A state dir whose file system has no room for a file (ENOSPC) said "not writable by this
    user", sending one to chown a folder the service can no more write than this user."""
    from mqtt_broker import small_disk

    with small_disk(tmp_path / "full", inodes=1) as full:  # its root takes the only inode
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"state_dir: {full}\nsource: {{kind: demo}}\n")
        verdict, detail = rows(doctor(cfg).stdout)["state dir"]
    assert verdict == "WARN" and f"{full} is not writable: No space left on device" in detail


def test_a_secret_file_every_user_can_read_is_a_warning_as_check_config_says(tmp_path):
    """check-config and run warn of a token file every user can read (0644); doctor said
    nothing of it."""
    with tempfile.TemporaryDirectory() as d:  # tmp_path's folders are closed to other users
        folder = Path(d)
        folder.chmod(0o755)
        token = folder / "http.token"
        token.write_text("0123456789abcdef\n")
        token.chmod(0o644)
        cfg = write_cfg(tmp_path, f"preview: {{http_token_file: {token}}}\n")
        said = subprocess.run([sys.executable, "-m", "maskd", "check-config", str(cfg)],
                              capture_output=True, text=True, timeout=60, cwd=REPO).stderr
        if "readable by every user" not in said:
            pytest.skip(f"{folder.parent} is closed to other users")
        r = doctor(cfg)
    assert rows(r.stdout)["secret file"] == ("WARN", said.strip().split(": warning: ", 1)[1])
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_wall_clock_that_is_not_set_is_a_warning(tmp_path):
    """A Pi on a network without NTP says 1970 (the schedule and the events follow it): the
    clock row says so, as `maskd run` does; not a required check."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text("source: {kind: demo}\n")
    assert rows(doctor(cfg).stdout)["clock"][0] == "OK"
    if shutil.which("faketime") is None:
        pytest.skip("faketime (apt-get install faketime) runs maskd on a 1970 clock")
    r = subprocess.run(["faketime", "1970-01-01 00:05:00", sys.executable, "-m", "maskd", "doctor",
                        "--config", str(cfg), "--frames", "3"], capture_output=True, text=True,
                       timeout=180, cwd=REPO, env={**os.environ, "TZ": "UTC", "FAKETIME_DONT_FAKE_MONOTONIC": "1"})
    verdict, detail = rows(r.stdout)["clock"]
    assert verdict == "WARN" and "1970-01-01 00:05 UTC: it is not set" in detail, r.stdout
    assert r.returncode == 0, r.stdout + r.stderr


def test_doctor_beside_a_running_camera_named_doctor_leaves_it_connected(tmp_path):
    """Doctor connected as `maskd-<device_id>-doctor`, the client id of a running single-camera
    maskd whose camera is named `doctor`: the broker dropped the service's connection (its last
    will set the camera offline in Home Assistant)."""
    from mqtt_broker import Subscriber

    from maskd.config import load_config
    from maskd.mqtt import MqttSink
    from maskd.types import RunControl

    with Broker(tmp_path / "broker") as broker:
        cfg = write_cfg(tmp_path, f"device_id: pi\ncamera: doctor\ndetector: {{kind: blazeface}}\n"
                        f"mqtt: {{url: '{broker.url}'}}\n")
        sub = Subscriber(broker, ["maskd/pi/doctor/status"])
        sink = MqttSink.from_config(load_config(cfg), RunControl(), model_name="m")
        try:
            assert sub.wait(lambda ms: [m.payload for m in ms][-1:] == [b"online"])
            r = doctor(cfg)
            time.sleep(0.5)
            assert rows(r.stdout)["broker"][0] == "OK", r.stdout
            assert [m.payload for m in sub.messages] == [b"online"]  # never offline meanwhile
            assert "already connected" not in broker.log()
        finally:
            sink.close()
            sub.close()


@pytest.mark.parametrize("stdout", ["/dev/full", "closed"])
def test_a_table_that_cannot_be_written_is_exit_74(tmp_path, stdout):
    """`maskd doctor > report.txt` on a full disk ended in a traceback (exit 1, as if a check had
    failed); with stdout closed the table went nowhere and the exit was 0."""
    cfg = write_cfg(tmp_path, "detector: {kind: blazeface}\n")
    cmd = [sys.executable, "-m", "maskd", "doctor", "--config", str(cfg), "--frames", "1"]
    if stdout == "closed":
        r = subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *cmd], stderr=subprocess.PIPE,
                           text=True, timeout=180, cwd=REPO)
        said = "maskd doctor: standard output is closed"
    else:
        with open(stdout, "w") as full:
            r = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, timeout=180,
                               cwd=REPO)
        said = "maskd doctor: cannot write to standard output (/dev/full): No space left on device"
    assert r.returncode == 74, r.stderr
    assert "Traceback" not in r.stderr and r.stderr.strip().splitlines()[-1] == said


@pytest.mark.skipif(Path("/dev/fb7").exists(), reason="this machine has a /dev/fb7")
def test_a_framebuffer_missing_at_boot_is_a_warning_as_run_says(tmp_path):
    """A /dev/fbN missing now (no HDMI monitor since boot) failed the doctor; `run` detects
    without it and shows it once it comes, so it is a warning in `run`'s words. A regular file
    where the device belongs stays a failure (`run` refuses it)."""
    from maskd.commands.doctor import FAIL, WARN, _check_fb

    assert _check_fb(Path("/dev/fb7")) == (WARN, (
        "/dev/fb7 does not exist now (no HDMI monitor since boot?); detection runs without "
        "this preview, which is tried again every 10 s"))
    (tmp_path / "fb0").write_text("")
    verdict, detail = _check_fb(tmp_path / "fb0")
    assert verdict == FAIL and "is not a framebuffer device (a regular file" in detail


def test_a_missing_coral_is_said_in_runs_words(tmp_path):
    """libedgetpu there, no Coral: the library row passes, the device row fails with the words
    `run` waits and exits 75 with (run no longer exits 78 on it), the classifier row with what
    opening it here found."""
    from coral import FakeCoral

    from maskd.tflite import coral_devices

    if coral_devices():
        pytest.skip("a Coral is plugged in here")
    fake = FakeCoral(tmp_path / "lib")
    cfg = write_cfg(tmp_path, "detector: {kind: blazeface}\nclassifier: {edgetpu: true}\n")
    r = doctor(cfg, **fake.env())
    assert r.returncode == 1, r.stdout + r.stderr
    got = rows(r.stdout)
    waits = ("plug in the USB Accelerator (or check the PCIe/M.2 driver and permissions); "
             "`maskd run` waits up to 90 s for it, asking every 5 s, then exit 75, systemd starts "
             "maskd again (is the Coral plugged in?)")
    assert got["edgetpu library"] == ("OK", "libedgetpu.so.1 loads")
    assert got["edgetpu device"] == ("FAIL", "no Coral answers (no Coral USB (1a6e:089a / "
                                     f"18d1:9302) or PCIe (/dev/apex_0) found): {waits}")
    assert got["classifier"] == ("FAIL", "EdgeTPU requested but no Coral answers (Failed to "
                                 "load delegate from libedgetpu.so.1): plug in the USB "
                                 "Accelerator (or check the PCIe/M.2 driver and permissions)")
    assert got["edgetpu model"][0] == "WARN" and got["edgetpu model"][1].startswith(
        "classifier.edgetpu: ") and "is not compiled for the EdgeTPU" in got["edgetpu model"][1]


def test_a_stock_device_id_is_the_same_warning_in_check_config_doctor_and_run(tmp_path):
    """`device_id: raspberrypi` (the host name of every Pi left at Raspberry Pi OS's default):
    each command says it in the same words, as a warning (run starts)."""
    with Broker(tmp_path / "b") as broker:
        cfg = write_cfg(tmp_path, f"device_id: raspberrypi\nmqtt: {{url: '{broker.url}'}}\n")
        said = subprocess.run([sys.executable, "-m", "maskd", "check-config", str(cfg)],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        assert said.returncode == 0, said.stderr
        (line,) = [ln.split(": warning: ", 1)[1] for ln in said.stderr.splitlines()
                   if "'device_id'" in ln]
        origin = ("this machine's host name" if host_device_id() == "raspberrypi"
                  else "set in the config")
        assert line.startswith(f"'device_id': 'raspberrypi' ({origin}) is Raspberry Pi"), line
        assert rows(doctor(cfg).stdout)["device id"] == ("WARN", line)
        run = subprocess.run([sys.executable, "-m", "maskd", "run", "--config", str(cfg),
                              "--max-frames", "1", "--jsonl", "-"], capture_output=True,
                             text=True, timeout=120, cwd=REPO)
        assert run.returncode == 0, run.stderr[-2000:]
        assert f"WARNING maskd: {line}" in run.stderr
        cfg.write_text(cfg.read_text().replace("raspberrypi", "entrance-1"))
        assert rows(doctor(cfg).stdout)["device id"] == (
            "OK", "entrance-1 (MQTT client id and topics)")


def test_tls_certificates_near_their_end_are_the_same_warning_in_check_config_doctor_run(
        tmp_path):
    """A client certificate that expires makes the broker refuse maskd from that day on, the
    events piling up in the outbox: a month ahead each command says so in the same words (a
    warning: run starts), and so does the running sink's status line. The broker's own
    certificate, which only a connection shows, is said by doctor and the running sink."""
    import yaml
    from mqtt_broker import make_ca, wait_until

    from maskd.config import parse_config
    from maskd.mqtt import MqttSink

    tls = make_ca(tmp_path / "ca", days=10)
    tls.client_key.chmod(0o600)
    with Broker(tmp_path / "b", tls=tls, require_client_cert=True) as broker:
        cfg = write_cfg(tmp_path, f"device_id: door-1\nmqtt: {{url: '{broker.url}', "
                                  f"ca_file: '{tls.ca}', cert_file: '{tls.client_cert}', "
                                  f"key_file: '{tls.client_key}'}}\n")
        said = subprocess.run([sys.executable, "-m", "maskd", "check-config", str(cfg)],
                              capture_output=True, text=True, timeout=60, cwd=REPO)
        assert said.returncode == 0, said.stderr
        lines = [ln.split(": warning: ", 1)[1] for ln in said.stderr.splitlines()
                 if "certificate" in ln]
        assert [ln.split(" ", 1)[0] for ln in lines] == ["mqtt.cert_file", "mqtt.ca_file"], lines
        for line, path in zip(lines, (tls.client_cert, tls.ca), strict=True):
            assert line.startswith(f"{line.split()[0]} {path}: the certificate expires on "), line
            assert "(in 9 days); renew it before then (a running maskd reads" in line, line
        checked = rows(doctor(cfg).stdout)
        assert checked["certificates"] == ("WARN", "; ".join(lines))
        verdict, detail = checked["broker"]
        ends = lines[1].split("expires on ", 1)[1].split(" (", 1)[0]  # the same CA run, same day
        server = (f"broker {broker.url}: the certificate expires on {ends[:10]}")
        assert verdict == "WARN" and f"the broker's certificate until {ends[:10]}; " in detail
        [said_broker] = [p for p in detail.split("; ") if p.startswith(server)]
        assert said_broker.endswith("(in 9 days)"), detail
        assert f"; {said_broker}; the broker's administrator must renew it before then" in detail
        run = subprocess.run([sys.executable, "-m", "maskd", "run", "--config", str(cfg),
                              "--max-frames", "1", "--jsonl", "-"], capture_output=True,
                             text=True, timeout=120, cwd=REPO)
        assert run.returncode == 0, run.stderr[-2000:]
        assert all(f"WARNING maskd: {line}" in run.stderr for line in lines), run.stderr[-2000:]
        sink = MqttSink.from_config(parse_config(yaml.safe_load(cfg.read_text()), str(cfg)))
        try:
            assert wait_until(lambda: sink.connected), "a certificate still valid connects"
            *mine, theirs = sink.faults()
            assert mine == lines and theirs.startswith(server) and theirs.endswith(
                "(in 9 days); the broker's administrator must renew it before then"), theirs
        finally:
            sink.close()
    make_ca(tmp_path / "renewed")  # for a year
    (tmp_path / "renewed" / "client.key").chmod(0o600)
    cfg.write_text(cfg.read_text().replace(str(tmp_path / "ca"), str(tmp_path / "renewed")))
    verdict, detail = rows(doctor(cfg).stdout)["certificates"]
    days = [(datetime.strptime(d, "%Y-%m-%d").replace(tzinfo=UTC) - datetime.now(UTC)).days
            for d in re.fullmatch(r"cert_file until (\S+), ca_file until (\S+)", detail).groups()]
    assert verdict == "OK" and all(363 <= d <= 365 for d in days), (verdict, detail)


def test_model_rows_name_the_edgetpu_key_that_wants_the_missing_library(tmp_path):
    """The classifier and detector rows said 'turn the EdgeTPU off (--edgetpu,
    classifier.edgetpu, detector.edgetpu)', the loader's words for no known key, beside the
    library row's 'set classifier.edgetpu: false'."""
    import ctypes

    try:
        ctypes.CDLL("libedgetpu.so.1")
        pytest.skip("libedgetpu is installed here")
    except OSError:
        pass
    model = tmp_path / "face_edgetpu.tflite"
    model.write_bytes(b"x")
    cfg = write_cfg(tmp_path, "classifier: {edgetpu: true}\n"
                              f"detector: {{kind: ssd, model: {model}, edgetpu: true}}\n")
    got = rows(doctor(cfg).stdout)
    for row, key in (("classifier", "classifier.edgetpu"), ("detector", "detector.edgetpu")):
        verdict, detail = got[row]
        assert verdict == "FAIL" and detail.startswith(f"{key}: EdgeTPU requested but "), detail
        assert detail.endswith(f"set {key}: false to run on the CPU"), detail


def test_doctor_sees_the_camera_turned_as_run_does(tmp_path, default_model):
    """doctor timed the camera's frames unturned: `source.rotate: 90` said 640x480 and its timing
    detected on the picture `run` never sees."""
    cfg = tmp_path / "config.yaml"
    (tmp_path / "state").mkdir()
    cfg.write_text(f"state_dir: {tmp_path / 'state'}\nsource: {{kind: demo, rotate: 90}}\n"
                   f"classifier: {{model: {default_model}}}\ndetector: {{kind: blazeface}}\n")
    got = rows(doctor(cfg).stdout)
    assert got["camera"][0] == "OK" and "480x640 first frame" in got["camera"][1], got["camera"]


def test_read_write_paths_are_read_as_systemd_reads_them(tmp_path):
    """A drop-in's empty ReadWritePaths= clears what the unit listed, and a leading - (missing
    is fine) or + (outside the namespace) is a flag, not part of the path."""
    from maskd.commands.doctor import unit_read_write_paths

    unit = tmp_path / "maskd.service"
    unit.write_text("[Service]\nReadWritePaths=/srv/a -/srv/b\n")
    assert unit_read_write_paths(unit) == [Path("/srv/a"), Path("/srv/b")]
    (tmp_path / "maskd.service.d").mkdir()
    (tmp_path / "maskd.service.d/20-add.conf").write_text("[Service]\nReadWritePaths=+/srv/d\n")
    (tmp_path / "maskd.service.d/10-clear.conf").write_text(
        "[Service]\nReadWritePaths=\nReadWritePaths=/srv/c\n")
    assert unit_read_write_paths(unit) == [Path("/srv/c"), Path("/srv/d")]
    # a USB stick mounted under its label: quoted, as systemd splits the list, also from the
    # middle of a word (/media/pi/"MY STICK"), and a tab between words as a space is
    (tmp_path / "maskd.service.d/30-usb.conf").write_text(
        '[Service]\nReadWritePaths="/media/pi/USB DISK" -"/media/pi/my clips"\t/media/pi/"MY STICK"\n')
    assert unit_read_write_paths(unit)[2:] == [Path("/media/pi/USB DISK"), Path("/media/pi/my clips"),
                                               Path("/media/pi/MY STICK")]


def test_a_read_write_paths_line_with_a_quote_left_open_keeps_the_words_before_it(tmp_path):
    """systemd reads ReadWritePaths= word by word into the unit's list and stops at a quote
    left open ('Failed to extract first word, ignoring'): the words before it are kept. doctor
    dropped the whole line and said the folder of its first word was read-only to the service;
    a line that is only an open quote adds nothing (and clears nothing)."""
    from maskd.commands.doctor import unit_read_write_paths

    unit = tmp_path / "maskd.service"
    unit.write_text('[Service]\nReadWritePaths=/srv/a\nReadWritePaths=rel -/media/usb "/media/pi/USB DISK\n'
                    'ReadWritePaths="/srv/b\n')
    if shutil.which("systemd-analyze"):  # it takes the words before the open quote one by one
        (tmp_path / "t.service").write_text(
            "[Service]\nExecStart=/bin/true\n" + unit.read_text().partition("\n")[2])
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "t.service")],
                           capture_output=True, text=True, timeout=60)
        assert r.stderr.count("Failed to extract first word, ignoring") == 2, r.stderr
        assert "path is not absolute, ignoring: rel\n" in r.stderr, r.stderr
    assert unit_read_write_paths(unit) == [Path("/srv/a"), Path("/media/usb")]


def test_read_write_paths_continued_on_the_next_line_are_read(tmp_path):
    """systemd joins a line that ends in a backslash with the next one (the backslash a space),
    so a long ReadWritePaths= list may go on over several lines: doctor read the first line
    only and, once it read quotes, not even that (a lone backslash: no path at all), and then
    said the folders the service may write were read-only to it and to add them again."""
    from maskd.commands.doctor import unit_read_write_paths

    unit = tmp_path / "maskd.service"
    unit.write_text("[Service]\nReadWritePaths=/var/lib/maskd\n")
    (tmp_path / "maskd.service.d").mkdir()
    (tmp_path / "maskd.service.d/override.conf").write_text(
        '[Service]\nReadWritePaths=/srv/snaps \\\n    "/media/pi/USB DISK" \\\n  -/srv/clips\n'
        "ReadWritePaths=/srv/last\\\n")  # the last line's backslash: nothing to go on with
    assert unit_read_write_paths(unit) == [
        Path("/var/lib/maskd"), Path("/srv/snaps"), Path("/media/pi/USB DISK"),
        Path("/srv/clips"), Path("/srv/last")]


def test_a_state_dir_nearly_full_is_a_warning_with_what_is_free(tmp_path):
    """Under 100 MiB free the outbox and the open violations may soon have no room: a warning
    (the full and the read-only state dirs have their own tests)."""
    from mqtt_broker import small_disk

    from maskd.commands.doctor import Doctor
    from maskd.config import load_config

    with small_disk(tmp_path / "small", "4m") as small:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(f"state_dir: {small}\nsource: {{kind: demo}}\n")
        doc = Doctor(load_config(cfg), frames=1)
        doc.state_dir()
    assert doc.checks == [Check("state dir", "WARN", f"{small} writable, 4 MiB free (open "
                                "violations)")]


def test_packages_row_names_four_differences_and_counts_the_rest(tmp_path):
    """At most four named, then "and N more": never "and 0 more"."""
    from maskd.commands.doctor import Doctor
    from maskd.config import load_config

    doc = Doctor(load_config(write_cfg(tmp_path, "")), frames=1)
    pins = tmp_path / "maskd-pins.txt"
    for n, more in ((4, ""), (5, " and 1 more")):
        pins.write_text("".join(f"gone-{i}==1.0\n" for i in range(n)))
        doc.packages(pins)
        assert doc.checks[-1].detail.startswith(
            f"{n} of {n} not as tested: "
            + ", ".join(f"gone-{i} missing (pinned 1.0)" for i in range(4)) + f"{more}; "), \
            doc.checks[-1].detail


def test_the_first_camera_that_gives_a_frame_is_the_one_timed(tmp_path):
    """With a `cameras:` map the timing uses the first working camera, turned as that camera
    is; the others are closed once they gave their frame."""
    from maskd.commands.doctor import Doctor
    from maskd.config import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("cameras:\n  front: {source: {kind: demo}}\n"
                   "  back: {source: {kind: demo, rotate: 90}}\n")
    doc = Doctor(load_config(cfg), frames=1)
    doc.camera()
    try:
        assert [(c.name, c.verdict) for c in doc.checks] == [("camera front", "OK"),
                                                             ("camera back", "OK")]
        assert doc.rotate == 0 and doc.first_frame.image.shape[:2] == (480, 640)
    finally:
        doc.source.close()


def test_an_outbox_that_cannot_store_events_fails_doctor(tmp_path):
    """An outbox `run` cannot use (here: not a database) is a failed required check, as the
    service then keeps events in memory only; a state dir not made yet is no failure."""
    from maskd.commands.doctor import Doctor
    from maskd.config import load_config
    from maskd.outbox import OUTBOX_FILE

    cfg = write_cfg(tmp_path, "mqtt: {url: 'mqtt://127.0.0.1:1'}\n")
    (tmp_path / "state" / OUTBOX_FILE).write_bytes(b"not a database, " * 100)
    doc = Doctor(load_config(cfg), frames=1)
    doc.outbox()
    got = doc.checks[-1]
    assert got.name == "outbox" and got.verdict == "FAIL" and "unreadable" in got.detail
    assert got.failed, got
    cfg.write_text(cfg.read_text().replace(str(tmp_path / "state"), str(tmp_path / "none")))
    doc = Doctor(load_config(cfg), frames=1)
    doc.outbox()
    assert doc.checks[-1].verdict == "--" and not doc.checks[-1].failed


def test_a_framebuffer_this_user_cannot_write_fails(tmp_path, monkeypatch):
    """A framebuffer that is there but not writable by the service's user (not in the video
    group): `run` cannot draw on it, so the row fails and names the likely cause."""
    from maskd import preview
    from maskd.commands import doctor as doc

    fb = tmp_path / "fb0"
    monkeypatch.setattr(preview, "check_framebuffer", lambda _fb: preview.FbGeometry(64, 48, 16, 128))
    writable = {fb: True}
    monkeypatch.setattr(doc.os, "access", lambda p, _mode: writable[Path(p)])
    assert doc._check_fb(fb) == ("OK", f"{fb}: 64x48 RGB565")
    writable[fb] = False
    assert doc._check_fb(fb) == ("FAIL", f"{fb}: 64x48 RGB565 but not writable (video group?)")


def test_a_check_that_raises_is_a_failed_row_and_the_others_still_run(tmp_path):
    """One broken check must not hide the rest, nor pass: its row fails with the error."""
    from maskd.commands.doctor import Doctor
    from maskd.config import load_config

    doc = Doctor(load_config(write_cfg(tmp_path, "")), frames=1)
    names = ("clock", "secrets", "device_id_check", "certificates", "state_dir", "cards",
             "sandbox", "runtime", "packages", "classifier_check", "edgetpu", "detector_check",
             "camera", "broker", "outbox", "preview", "timing")
    for name in names:
        setattr(doc, name, lambda: None)

    def detector_check() -> None:
        raise RuntimeError("boom\nsecond line")

    doc.detector_check = detector_check
    doc.timing = lambda: doc.add("timing", "--", "ran", False)
    assert doc.run_all() == [Check("detector", "FAIL", "RuntimeError: boom"),
                             Check("timing", "--", "ran", False)]
    assert doc.checks[0].failed


def test_the_budget_row_uses_the_timed_cameras_own_rate(tmp_path):
    """With a cameras: map the top-level source is no camera's: the budget was judged at its
    default 15 fps (66.7 ms) though the camera asks for 120 (8.3 ms)."""
    from maskd.commands.doctor import Doctor
    from maskd.config import load_config

    cfg = tmp_path / "config.yaml"
    cfg.write_text("cameras:\n  door: {source: {kind: demo, fps: 120}}\n"
                   "motion: {frame_height: 240}\n")
    doc = Doctor(load_config(cfg), frames=1)
    doc.camera()
    assert doc.checks[-1].name == "camera door" and doc.checks[-1].verdict == "OK", doc.checks
    doc.detector = type("NoFaces", (), {"detect": lambda self, image: []})()
    doc.classifier = type("Quick", (), {"predict": lambda self, crops: []})()
    doc.budget(doc.first_frame.image, 0.0)
    assert doc.checks[-1].detail.startswith("640x480 at 120 fps (budget 8.3 ms/frame)"), \
        doc.checks[-1]
    doc.source.close()


def test_the_budget_row_counts_every_camera_of_a_map(tmp_path):
    """The cameras of a map share one detector (one camera at a time) and the CPU: eight
    cameras at 15 fps are 120 frames a second. The budget was judged at the timed camera's 15
    fps alone (66.7 ms), OK, while the real run of eight network cameras skipped a third to
    half of their frames on this machine. Three cameras here: 45 frames a second, 22.2 ms."""
    from maskd.commands.doctor import Doctor
    from maskd.config import load_config

    class Slow:
        def detect(self, image: object) -> list:
            time.sleep(0.03)
            return []

    cams = {f"door{i}": {"source": {"kind": "demo"}} for i in range(3)}
    for n, verdict, start in ((1, "OK", "640x480 at 15 fps (budget 66.7 ms/frame)"),
                              (3, "WARN", "640x480 at 45 fps, 3 cameras together "
                                          "(budget 22.2 ms/frame)")):
        cfg = tmp_path / "config.yaml"
        cfg.write_text(json.dumps({"cameras": dict(list(cams.items())[:n])}))
        doc = Doctor(load_config(cfg), frames=1)
        doc.camera()
        doc.detector = Slow()
        doc.classifier = type("Quick", (), {"predict": lambda self, crops: []})()
        doc.budget(doc.first_frame.image, 0.0)
        got = doc.checks[-1]
        doc.source.close()
        assert got.verdict == verdict and got.detail.startswith(start), got


def test_the_budget_row_judges_a_frame_with_two_faces(tmp_path):
    """docs/performance.md's budget: a frame with two faces must fit 1/fps. A classifier taking
    40 ms a face fits one face (40 ms) but not two (80 ms) in 15 fps' 66.7 ms."""
    import numpy as np

    from maskd.commands.doctor import Doctor
    from maskd.config import load_config

    class NoFaces:
        def detect(self, image: np.ndarray) -> list:
            return []

    class Slow:
        def __init__(self, s: float) -> None:
            self.s = s

        def predict(self, crops: list) -> list:
            time.sleep(self.s * len(crops))
            return []

    doc = Doctor(load_config(write_cfg(tmp_path, "")), frames=1)
    doc.detector = NoFaces()
    for per_face, verdict in ((0.04, "WARN"), (0.002, "OK")):
        doc.classifier = Slow(per_face)
        doc.budget(np.zeros((48, 64, 3), np.uint8), 0.0)
        got = doc.checks[-1]
        assert got.verdict == verdict, got
        assert got.detail.startswith("64x48 at 15 fps (budget 66.7 ms/frame)"), got
        assert ("; 2 faces do not fit 15 fps here" in got.detail) == (verdict == "WARN"), got


def test_a_source_in_tmp_is_told_a_place_a_folder_of_images_can_be_read_from(tmp_path,
                                                                           monkeypatch):
    """A clip or folder of images in /tmp (the service's own, empty): doctor's sandbox row said
    to move it to '/etc/maskd (root:maskd 0640)', a model's place; a folder of images moved so
    (0640: no x) lists but opens none, and the service idled with 0 frames (seen in
    tools/sandbox.py). It now gives a source the advice it gives one under /home."""
    from maskd.commands import doctor as doc
    from maskd.config import load_config

    unit = tmp_path / "maskd.service"
    unit.write_text((REPO / "systemd/maskd.service").read_text())
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    (tmp_path / "c.yaml").write_text("source: {kind: images, uri: /tmp/frames}\n")
    d = doc.Doctor(load_config(tmp_path / "c.yaml"), 1)
    d.sandbox()
    [check] = d.checks
    assert check.detail.endswith(f"move it to {doc._SOURCE_GOES}") and "0640" not in check.detail


def test_doctor_run_as_root_says_its_rows_are_roots_view(tmp_path, monkeypatch):
    """`sudo maskd doctor`, not `sudo -u maskd maskd doctor`: root reads what the service's user
    may not (a folder of images left root's 0600 was camera OK, while the service idled with 0
    frames) and nothing said so. Its first row after config now warns, naming the command; not
    a failure (exit 0), and no such row for another user. Only of a service user there is: root
    with no such account (maskd run by root in a container, no unit installed) or a unit run as
    root (User=root, or User= emptied in a drop-in) was told `sudo -u maskd`, 'unknown user'."""
    import pwd

    from maskd.commands import doctor as doc

    if os.geteuid() != 0:
        pytest.skip("needs root")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("source: {kind: demo}\n")
    unit = tmp_path / "maskd.service"
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    unit.write_text("[Service]\nUser=nobody\n")
    row = doc.root_row(cfg)
    assert row is not None and (row.name, row.verdict, row.required) == ("user", doc.WARN, False)
    assert row.detail == ("run as root, which reads what the service's user nobody may not: the "
                          f"rows below are root's view; run `sudo -u nobody maskd doctor --config "
                          f"{cfg}`"), row.detail
    for users in ("User=root", "User=nobody\nUser=", "User=0"):
        unit.write_text(f"[Service]\n{users}\n")
        assert doc.root_row(cfg) is None, users
    unit.unlink()  # no unit: the service's user is maskd, where there is such an account
    try:
        pwd.getpwnam("maskd")
        named = True
    except KeyError:
        named = False
    assert (doc.root_row(cfg) is not None) == named
    r = doctor(cfg)  # the real command (no unit here)
    assert r.returncode == 0 and ("user" in rows(r.stdout)) == named, r.stdout
    monkeypatch.setattr(doc.os, "geteuid", lambda: 1000)
    unit.write_text("[Service]\nUser=nobody\n")
    assert doc.root_row(cfg) is None


def test_doctor_run_as_root_names_a_numeric_service_user_as_sudo_takes_it(tmp_path, monkeypatch):
    """User= takes a UID (User=65534): the row told to run `sudo -u 65534 maskd doctor`, and
    sudo takes a bare number as a name: 'unknown user 65534', the account there or not. It now
    names the account (`sudo -u nobody`), and is left out for a UID with no account, as a name
    with none is (`sudo -u '#4242'` is 'unknown user' too)."""
    import pwd

    from maskd.commands import doctor as doc

    if os.geteuid() != 0:
        pytest.skip("needs root")
    unit = tmp_path / "maskd.service"
    monkeypatch.setattr(doc, "UNIT_FILE", unit)
    name = pwd.getpwuid(65534).pw_name
    unit.write_text("[Service]\nUser=65534\n")
    row = doc.root_row(None)
    assert row is not None and row.detail.endswith(f"run `sudo -u {name} maskd doctor`"), row
    unused = next(uid for uid in range(4242, 5000) if uid not in {p.pw_uid for p in pwd.getpwall()})
    unit.write_text(f"[Service]\nUser={unused}\n")
    assert doc.root_row(None) is None


def test_a_backslash_in_quotes_escapes_as_systemd_reads_it(tmp_path):
    """systemd's ReadWritePaths= takes a backslash as an escape inside quotes too, single ones
    included: "/srv/My\\ Stick" is /srv/My Stick and '/srv/it\\'s' /srv/it's. doctor read them
    as a shell does (/srv/My\\ Stick; the second a quote left open, the line's rest dropped), so
    it said a folder the service writes was read-only to it, or missing."""
    from maskd.commands.doctor import unit_read_write_paths

    line = "ReadWritePaths=\"/srv/My\\ Stick\" '/srv/it\\'s' /srv/c '/srv/d\\\\e'\n"
    # a backslash the line's end strips a space from (not the next line's) escapes nothing:
    # systemd drops that word ('Failed to extract first word'), keeping the ones before it
    line += "ReadWritePaths=/srv/f /srv/g\\ \n"
    unit = tmp_path / "maskd.service"
    unit.write_text("[Service]\n" + line)
    if shutil.which("systemd-analyze"):  # its words, made relative so that it names them
        (tmp_path / "t.service").write_text(
            "[Service]\nExecStart=/bin/true\n" + line.replace("/srv/", ""))
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(tmp_path / "t.service")],
                           capture_output=True, text=True, timeout=60)
        said = re.findall(r"path is not absolute, ignoring: (.*)", r.stderr)
        assert said == ["My Stick", "it's", "c", "d\\e", "f"], r.stderr
        assert r.stderr.count("Failed to extract first word, ignoring") == 1, r.stderr
    assert unit_read_write_paths(unit) == [Path("/srv/My Stick"), Path("/srv/it's"),
                                           Path("/srv/c"), Path("/srv/d\\e"), Path("/srv/f")]
