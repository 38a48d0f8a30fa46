"""sd_notify: a test-owned notify socket sees READY, WATCHDOG while frames flow, and no WATCHDOG after."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from loop_parts import BlankCamera, RecordingSink, service_for

from maskd import notify, service, sources
from maskd.config import Config, SourceConfig
from maskd.env import Environment
from maskd.notify import Notifier, SystemdNotifier, socket_address
from maskd.service import Service
from maskd.sources import LatestFrame, live_source
from maskd.types import Frame, LoopStats


class NotifySocket:
    """What systemd does: a bound AF_UNIX datagram socket; collects the messages."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(socket_address(address))
        self.sock.settimeout(0.05)
        self.messages: list[dict[str, str]] = []

    def drain(self, wait: float = 0.05) -> list[dict[str, str]]:
        got = []
        deadline = time.monotonic() + wait
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                if time.monotonic() >= deadline:
                    break
                continue
            got.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
        self.messages += got
        return got

    def close(self):
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    s = NotifySocket(str(tmp_path / "notify.sock"))
    yield s
    s.close()


FRAME = Frame(np.zeros((4, 4, 3), np.uint8), 0, 0.0)


class FakeClock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_socket_address_and_watchdog_env():
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@abc") == b"\0abc"
    assert Environment.read({"WATCHDOG_USEC": "30000000"}).watchdog_s == 30.0
    ours = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}
    assert Environment.read(ours).watchdog_s == 30.0
    not_ours = {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}
    assert Environment.read(not_ours).watchdog_s is None
    assert Environment.read({"WATCHDOG_USEC": "junk"}).watchdog_s is None
    assert Environment.read({}).watchdog_s is None


def test_nothing_without_notify_socket():
    n = SystemdNotifier(env=Environment.read({"WATCHDOG_USEC": "1000000"}))
    assert not n.enabled
    n.on_frame(FRAME, [], LoopStats(fps=1.0))
    n.close()


def test_ready_watchdog_status_stopping(notify_socket):
    clock = FakeClock()
    n = SystemdNotifier(env=Environment.read({"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "2000000"}),
                        clock=clock)
    assert n.enabled and n.watchdog_every_s == 1.0
    n.on_frame(FRAME, [], LoopStats(fps=0.0, active=0))
    first = notify_socket.drain()
    assert first == [{"READY": "1", "WATCHDOG": "1", "STATUS": "0.0 fps | 0 active violations"}]

    # frames flow for 3 s at 10 fps: READY never again, WATCHDOG once per half period
    for _ in range(30):
        clock.t += 0.1
        n.on_frame(FRAME, [], LoopStats(fps=10.0, active=1))
    msgs = notify_socket.drain()
    assert not any("READY" in m for m in msgs)
    pings = [m for m in msgs if "WATCHDOG" in m]
    assert len(pings) == 3
    assert all(m["STATUS"] == "10.0 fps | 1 active violation" for m in pings)

    # frames stop: the notifier has no timer of its own, so no WATCHDOG until frames come back
    clock.t += 10.0
    time.sleep(0.3)
    assert notify_socket.drain() == []
    n.on_frame(FRAME, [], LoopStats(fps=2.0))
    assert notify_socket.drain()[0]["WATCHDOG"] == "1"

    n.close()
    assert notify_socket.drain() == [{"STOPPING": "1", "STATUS": "stopping"}]


def test_status_refresh_without_watchdog(notify_socket):
    clock = FakeClock()
    n = SystemdNotifier(env=Environment.read({"NOTIFY_SOCKET": notify_socket.address}), clock=clock)
    assert n.watchdog_every_s is None
    for _ in range(120):  # 12 s at 10 fps
        clock.t += 0.1
        n.on_frame(FRAME, [], LoopStats(fps=10.0, active=0))
    msgs = notify_socket.drain()
    assert msgs[0]["READY"] == "1" and not any("WATCHDOG" in m for m in msgs)
    assert 2 <= len(msgs) <= 4  # STATUS at most every 5 s, not per frame
    n.close()


def test_problems_are_the_cameras_outage_and_the_faults_not_a_start_or_a_files_end():
    """What Home Assistant's problem sensor shows (``stats.problems``): the outage in the
    status line's words, then the sinks' faults."""
    from maskd.annotate import camera_text

    fault = "MQTT: broker refuses 1 topic(s), e.g. maskd/dev1/door/snapshot"
    assert LoopStats(fps=9.0).problems() == []
    assert LoopStats(fps=9.0, faults=(fault,)).problems() == [fault]
    lost = LoopStats(camera_lost_since="T0", camera_lost_why="cannot open", faults=(fault,))
    assert lost.problems() == ["camera lost since T0 (cannot open); reconnect stalled", fault]
    hung = LoopStats(no_frame_since="T0", no_frame_s=21.4)
    assert hung.problems() == ["no frame for 21 s (since T0); camera not answering"]
    assert LoopStats(first_frame_since="T0").problems() == []  # every start waits a moment
    assert LoopStats(first_frame_since="T0", camera_lost_since="T1").problems() == [
        "camera lost since T1; reconnect stalled"]
    assert LoopStats(source_ended=True).problems() == []
    assert [camera_text(s) for s in (lost, hung)] == [lost.problems()[0], hung.problems()[0]]
    assert lost.to_dict()["problems"] == lost.problems()


def test_the_status_lines_the_docs_show_are_the_ones_maskd_sends():
    """docs/service.md's and docs/install-pi.md's `Status: "..."` samples, from the stats they
    describe: the several cameras' sample showed a lost camera without its time zone and why
    (`back: camera lost since 2026-12-03T10:15:02; reconnecting`), a line maskd never sends."""
    import re

    from maskd.mqtt.sink import NOT_CONNECTED

    repo = Path(__file__).resolve().parents[1]
    shown = {s.replace("\\|", "|") for doc in ("service.md", "install-pi.md")
             for s in re.findall(r'Status: "([^"]*)"', (repo / "docs" / doc).read_text())}
    lost = LoopStats(camera_lost_since="2026-12-03T10:15:02+01:00", camera_lost_why="cannot open (...)",
                     camera_reconnecting=True)
    broker = f"{NOT_CONNECTED}2026-12-03T10:14:40+01:00, 3 event(s) waiting"
    sent = [notify.status_text(LoopStats(fps=14.8, active=1)),
            notify.status_text(LoopStats(fps=14.8, active=0)),
            notify.status_text(LoopStats(fps=14.8, detect_enabled=False, detect_in_force="schedule")),
            notify.status_text(lost),
            notify.status_text(LoopStats(no_frame_since="2026-12-03T10:15:02+01:00", no_frame_s=4.2)),
            notify.status_text(LoopStats(first_frame_since="2026-12-04T07:02:11+01:00"), "door"),
            notify.cameras_status_text({"back": lost, "front": LoopStats(fps=14.8, active=1,
                                                                        faults=(broker,))})]
    assert [s for s in sent if s not in shown] == [], sorted(shown)


def test_abstract_namespace_socket():
    name = f"@maskd-test-{uuid.uuid4().hex}"
    s = NotifySocket(name)
    try:
        n = SystemdNotifier(env=Environment.read({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "1000000"}))
        n.on_frame(FRAME, [], LoopStats(fps=5.0))
        assert s.drain()[0]["READY"] == "1"
        n.close()
    finally:
        s.close()


def test_socket_gone_does_not_raise(tmp_path):
    n = Notifier(str(tmp_path / "missing.sock"))
    assert n.send("READY=1") is False
    n.close()


def test_a_newline_in_a_status_stays_in_its_line(notify_socket):
    """A fault names a path, and a path may hold a newline (a YAML | block keeps one): each
    line of the datagram is one assignment, so the rest of the status was cut off and a line
    such as STOPPING=1 after the newline was a command of its own."""
    n = Notifier(notify_socket.address)
    assert n.send("STATUS=snapshots: cannot write to /media/usb/snaps\nSTOPPING=1", "READY=1")
    n.close()
    data = notify_socket.sock.recv(4096).decode()
    assert data.splitlines() == ["STATUS=snapshots: cannot write to /media/usb/snaps\\nSTOPPING=1",
                                 "READY=1"]


def test_full_socket_queue_never_blocks_the_loop(notify_socket):
    clock = FakeClock()
    n = SystemdNotifier(env=Environment.read({"NOTIFY_SOCKET": notify_socket.address, "WATCHDOG_USEC": "2000"}),
                        clock=clock)
    t0 = time.perf_counter()
    for _ in range(2000):  # nobody reads: the datagram queue fills up after a few
        clock.t += 0.01
        n.on_frame(FRAME, [], LoopStats(fps=100.0))
    assert time.perf_counter() - t0 < 5.0
    assert notify_socket.drain()[0]["READY"] == "1"
    n.close()


@pytest.mark.slow
def test_real_maskd_run_pings_while_frames_flow_and_while_idle_at_the_end(tmp_path,
                                                                          default_model):
    """`maskd run` under a fake systemd: READY after the first frame, WATCHDOG while a video
    file plays and while the loop idles after its end (waiting for a signal by design: without
    the pings systemd would kill it and the restart would play the file, and raise its events,
    again), STOPPING=1 on SIGTERM. (The demo source itself exits at its end; a file of its
    frames idles like any file.) That a loop without frames stops the pings is tested below."""
    import cv2

    from maskd.demo import SIZE, DemoSource

    demo, clip = DemoSource(), tmp_path / "demo.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"mp4v"), demo.fps, SIZE)
    while (frame := demo.read()) is not None:
        writer.write(frame.image)
    writer.release()
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    log = tmp_path / "stderr.log"
    env = {**os.environ, "NOTIFY_SOCKET": sock.address, "WATCHDOG_USEC": "200000"}  # ping every 0.1 s
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "maskd", "run", "--source", str(clip), "--model", str(default_model),
             "--state-dir", str(tmp_path / "state")],
            stdout=subprocess.DEVNULL, stderr=err, env=env, cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 120
        while "end of source" not in log.read_text():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the demo clip did not end in 120 s"
            sock.drain(0.1)
        sock.drain(0.3)
        while_flowing = list(sock.messages)
        assert [m for m in while_flowing if "READY" in m] == [while_flowing[0]], "READY once, first"
        pings = [m for m in while_flowing if "WATCHDOG" in m]
        assert len(pings) >= 3, while_flowing
        assert any(m.get("STATUS", "").endswith(("active violation", "active violations")) for m in pings)

        # the file has ended and the process idles: still pinged, and STATUS says why
        idle = [m for m in sock.drain(2.5) if "WATCHDOG" in m]
        assert proc.poll() is None
        assert len(idle) >= 3, idle
        assert idle[-1]["STATUS"] == "end of the source; idle until stopped", idle

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
        assert {"STOPPING": "1", "STATUS": "stopping"} in sock.drain(0.3)
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()


def test_real_maskd_run_says_a_looping_file_that_cannot_loop_is_tried_again(tmp_path, default_model):
    """A looping file emptied while `maskd run` plays it is tried again until it plays; systemd's
    STATUS said `end of the source; idle until stopped` before the fault that said it is tried
    again, and the journal's stats line `source ended, idle until stopped`: an operator reading
    `systemctl status maskd` was told it waits for a stop. Both say why and that it is retried."""
    import cv2

    clip = tmp_path / "door.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"MJPG"), 10, (160, 120))
    for _ in range(20):
        writer.write(np.full((120, 160, 3), 90, np.uint8))
    writer.release()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"detector": {"kind": "blazeface"},
                               "classifier": {"model": str(default_model)},
                               "source": {"uri": str(clip), "loop": True, "fps": 10}}))
    sock = NotifySocket(str(tmp_path / "notify.sock"))
    log = tmp_path / "stderr.log"
    env = {**os.environ, "NOTIFY_SOCKET": sock.address, "WATCHDOG_USEC": "1000000"}
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "maskd", "run", "--config", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=err, env=env,
                                cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 120
        while "READY" not in {k for m in sock.messages for k in m}:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            sock.drain(0.1)
        clip.write_bytes(b"")
        while "cannot loop" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            sock.drain(0.1)
        idle = [m["STATUS"] for m in sock.drain(1.5) if "STATUS" in m]
        why = f"cannot loop: {clip}: an empty file (0 bytes), no video in it"
        assert idle and idle[-1] == f"end of the source ({why}); trying it again until it plays", idle
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
        [line] = [x for x in log.read_text().splitlines() if " fps | " in x]  # the stop's
        assert line.endswith(f"| end of the source ({why}); trying it again until it plays"), line
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()


# ------------------------------------------------------------- camera outages and the watchdog


class LoopRunner:
    """The real run loop in a thread, with systemd's notify socket recorded on a timeline."""

    def __init__(self, svc, sock: NotifySocket):
        self.svc, self.sock = svc, sock
        self.timeline: list[tuple[float, dict[str, str]]] = []  # (monotonic, message)
        self.codes: list[int] = []
        self.thread = threading.Thread(target=lambda: self.codes.append(svc.run(1.0)), daemon=True)
        self.thread.start()

    def __enter__(self) -> LoopRunner:
        return self

    def __exit__(self, *exc: object) -> None:  # a failed assertion must not leave it running
        if self.thread.is_alive():
            self.stop()

    def watch(self, seconds: float, until: Callable[[], bool] | None = None) -> None:
        """Record the socket for ``seconds``, or until ``until()`` holds (``seconds`` is then the
        deadline: a wait for something to happen, not a window in which nothing may)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (until and until()):
            self.timeline += [(time.monotonic(), m) for m in self.sock.drain(0.05)]

    def pings(self, after: float = 0.0) -> list[float]:
        return [t for t, m in self.timeline if "WATCHDOG" in m and t >= after]

    def statuses(self) -> list[str]:
        return [m["STATUS"] for _, m in self.timeline if "STATUS" in m]

    def stop(self) -> int:
        self.svc.stop()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive()
        return self.codes[0]


@pytest.fixture
def under_systemd(notify_socket, monkeypatch):
    """NOTIFY_SOCKET and WatchdogSec=2 (a ping due every second), as systemd sets them."""
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.address)
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setattr(service, "STATS_EVERY_S", 1.0)
    return notify_socket


def test_a_camera_giving_only_frames_maskd_cannot_use_says_why_it_is_lost(under_systemd):
    """A USB camera set to a 16-bit format: it opens, every frame is refused (to_bgr) and it is
    reopened with the backoff for ever. systemd's STATUS (the previews' header is the same
    line), the status page and the stats said only "camera lost since ...; reconnecting", the
    reason in the journal alone; now each says why, in the refusal's words, from one place
    (the source's ``camera_lost_why``)."""
    from test_camera_frames import OneKindCamera
    from test_statuspage import get

    from maskd.statuspage import StatusServer

    cam = OneKindCamera(np.full((48, 64, 3), 40000, np.uint16))
    src = live_source("door", cam.opener, SourceConfig(reopen_min_s=0.05, reopen_max_s=0.1))
    srv = StatusServer("127.0.0.1:0", title="test-device").start()
    view = srv.attach("door", "blazeface", "none")
    sink = RecordingSink()
    why = ("frames in a row maskd cannot use: uint16 pixels (shape (48, 64, 3)): maskd reads "
           "8-bit frames; set the camera to an 8-bit format")
    with LoopRunner(service_for(src, [SystemdNotifier(), view], [sink, view]),
                    under_systemd) as run:
        run.watch(10, until=lambda: any(why in s for s in run.statuses()))
        page = json.loads(get(srv.url + "api/status")[2])["cameras"][0]
        run.watch(10, until=lambda: any(why in (s.get("camera_lost_why") or "")
                                        for s in sink.stats))
        assert run.stop() == 0
    lost = [s for s in run.statuses() if s.startswith("camera lost since ")]
    assert lost and all(s.endswith(f"{why}); reconnecting") for s in lost), lost
    assert page["camera_lost_since"] and page["camera_lost_why"].endswith(why), page
    assert any((s.get("camera_lost_why") or "").endswith(why) for s in sink.stats), sink.stats
    assert src.inner.stats["reopens"] >= 2 and src.inner.stats["frames"] == 0


def test_camera_away_longer_than_the_watchdog_keeps_pinging_and_says_so(under_systemd):
    """Issue 15 item 9: the camera is gone for 2.5 watchdog periods; the loop is fine, so systemd
    must not kill it. Pings go on, STATUS and stats say "camera lost since", and the default
    backoff (1..30 s) is capped at half the watchdog, so the camera is found again at once."""
    cam = BlankCamera()
    src = live_source("cam", cam.opener, SourceConfig())
    assert src.inner._backoff.max_s == 1.0
    sink = RecordingSink()
    with LoopRunner(service_for(src, [SystemdNotifier()], [sink]), under_systemd) as run:
        run.watch(1.5)
        frames_before = run.svc.frames
        assert frames_before > 5 and run.timeline[0][1]["READY"] == "1"
        cam.present.clear()  # unplugged
        lost_at, lost_wall = time.monotonic(), time.time()
        run.watch(5.0)
        during = [s for s in sink.stats if s.get("camera_lost_since")]
        assert run.svc.frames - frames_before <= 2
        cam.present.set()
        run.watch(2.0)
        frames_after, end = run.svc.frames, time.monotonic()
        assert run.stop() == 0

    gaps = np.diff([*run.pings(), end])  # from READY's ping to the end, outage included
    assert max(gaps) < 2.0, f"a watchdog gap of {max(gaps):.1f} s"
    assert len(run.pings(after=lost_at)) >= 4
    lost = [s for s in run.statuses() if s.startswith("camera lost since ")]
    assert lost and lost[0].endswith("; reconnecting")
    assert run.statuses()[-2].endswith(("active violation", "active violations"))  # back
    assert during and during[-1]["fps"] == 0.0  # not the last fps repeated
    assert abs(datetime.fromisoformat(during[-1]["camera_lost_since"]).timestamp() - lost_wall) < 2
    assert frames_after > frames_before + 10  # found again within the 2 s
    assert src.stats["camera_lost_since"] is None and src.stats["reopens"] >= 1


@pytest.mark.parametrize("hang", ["read", "open"])
def test_a_hung_camera_driver_stops_the_pings(under_systemd, monkeypatch, hang):
    """The watchdog still guards a hang: a read stuck in the driver is no controlled reconnect,
    nor is a reopen that makes no progress for RECONNECT_STALL_S."""
    monkeypatch.setattr(sources, "RECONNECT_STALL_S", 1.0)
    cam = BlankCamera()
    src = live_source("cam", cam.opener, SourceConfig(reopen_min_s=0.1))
    with LoopRunner(service_for(src, [SystemdNotifier()]), under_systemd) as run:
        run.watch(1.5)
        if hang == "read":
            cam.hang_read.set()
        else:
            cam.hang_open.set()
            cam.present.clear()  # the read fails, then the reopen hangs
        hung_at = time.monotonic()
        run.watch(3.5)
        cam.hang_read.clear()
        cam.hang_open.clear()
        cam.present.set()
        assert run.stop() == 0
    assert run.pings(after=hung_at + 1.0 + sources.RECONNECT_STALL_S) == []
    if hang == "open":
        assert any(s.endswith("; reconnect stalled") for s in run.statuses())


@pytest.mark.parametrize("camera", ["stalled stream", "hung driver"])
def test_a_blocked_camera_read_is_named_in_the_status_with_the_time_since_the_last_frame(
        under_systemd, monkeypatch, camera):
    """A network camera that stops sending without closing (a real MJPEG camera, stalled: the
    read blocks until the stream time-out) or a driver whose read hangs: `systemctl status`
    went on saying the last frame's "15.0 fps | 0 active violations" until the time-out, or
    until the watchdog killed the process. Once no frame has come for a gap (the loop's one gap
    rule: tracking.end_after_s here 1 s) it says so, with the time since the last frame; the
    watchdog still gets no ping from a read that blocks."""
    from tools.ipcamera import IpCamera

    monkeypatch.setattr(sources, "STREAM_TIMEOUT_MS", 4000)  # 10 s on a device
    cfg = Config()
    cfg.tracking.end_after_s = 1.0
    cfg.mqtt.stats_interval_s = 1.0
    sink = RecordingSink()
    ipcam = IpCamera(lambda i: np.full((120, 160, 3), i % 200, np.uint8)).start()
    blank = BlankCamera()
    src = (live_source("cam", blank.opener, SourceConfig()) if camera == "hung driver" else
           sources.open_source(SourceConfig(kind="opencv", uri=ipcam.url, reopen_min_s=0.2)))
    try:
        with LoopRunner(service_for(src, [SystemdNotifier()], [sink], cfg=cfg),
                        under_systemd) as run:
            run.watch(2.0)
            assert run.statuses()[-1].endswith("active violations"), run.statuses()
            if camera == "hung driver":
                blank.hang_read.set()
            else:
                ipcam.stall()
            stalled_at = time.monotonic()
            run.watch(3.0)  # within the stream's 4 s time-out
            blocked = [(t - stalled_at, m["STATUS"]) for t, m in run.timeline
                       if t > stalled_at and "STATUS" in m]
            stats = list(sink.stats)
            blank.hang_read.clear()
            ipcam.back()
            # frames again (the stalled stream's read times out at 4 s, then it is reopened)
            run.watch(15.0, until=lambda: run.statuses()[-1].endswith("active violations"))
            assert run.stop() == 0
    finally:
        ipcam.close()
    # Frames on their way at the stall (in the socket, in FFmpeg's buffer), or a line sent just
    # before it and read here after it, still say fps: a loop slowed by a loaded machine reads
    # them late (failed so: '121.6 fps' 0.12 s after the stall). The first line after those
    # names the blocked read.
    late = 0
    while late < len(blocked) and blocked[late][1].endswith("active violations"):
        late += 1
    assert late < len(blocked), f"no other STATUS while the read blocked: the fps stood {blocked}"
    first_at, first = blocked[late]
    assert 0.5 <= first_at < 2.0, blocked  # the last frame came up to a frame before the stall
    assert first.startswith("no frame for 1 s (since ") and "camera not answering" in first
    since = datetime.fromisoformat(first.split("(since ")[1].split(")")[0])
    assert abs(since.timestamp() - (time.time() - (time.monotonic() - stalled_at))) < 1.5
    assert not [t for t in run.pings(after=stalled_at + 1.0) if t < stalled_at + 3.0]
    said = [d for d in stats if d["no_frame_since"]]  # and MQTT's stats, every interval
    assert said and said[-1]["no_frame_s"] >= 1.5 and said[-1]["camera_lost_since"] is None
    assert stats[0]["no_frame_since"] is None  # while frames came
    assert run.statuses()[-1].endswith("active violations")  # frames again: fps again


@pytest.mark.parametrize("camera", ["stalled stream", "hung driver"])
def test_a_camera_that_hangs_before_its_first_frame_is_named_in_the_status(
        under_systemd, monkeypatch, camera):
    """A network camera that accepts the connection and sends nothing (a real MJPEG camera,
    stalled from the start: OpenCV's open waits for it) or a driver whose first read hangs:
    READY=1 waits for the first frame, and systemd saw no STATUS at all, `activating` and
    nothing else until TimeoutStartSec (180 s). Now STATUS names the camera and since when,
    refreshed while it waits; still no READY=1 and no ping, and MQTT's stats say it too."""
    from tools.ipcamera import IpCamera

    monkeypatch.setattr(sources, "STREAM_TIMEOUT_MS", 8000)  # past the watch: no time-out
    monkeypatch.setattr(notify, "STATUS_INTERVAL_S", 1.0)  # 5 s on a device
    cfg = Config(camera="door")
    cfg.mqtt.stats_interval_s = 1.0
    sink = RecordingSink()
    ipcam = IpCamera(lambda i: np.full((120, 160, 3), i % 200, np.uint8)).start()
    blank = BlankCamera()
    if camera == "hung driver":
        blank.hang_read.set()
        src = live_source("door", blank.opener, SourceConfig())
    else:
        ipcam.stall()
        src = sources.open_source(SourceConfig(kind="opencv", uri=ipcam.url))
    watch = [SystemdNotifier(camera="door")]  # as build() makes it
    began = time.time()
    try:
        with LoopRunner(service_for(src, watch, [sink], cfg=cfg), under_systemd) as run:
            run.watch(3.0)
            waiting = list(run.timeline)
            blank.hang_read.clear()
            ipcam.back()
            run.watch(3.0)
            assert run.stop() == 0
    finally:
        ipcam.close()
    statuses = [m["STATUS"] for _, m in waiting if "STATUS" in m]
    assert len(statuses) >= 2, waiting  # refreshed while it waits
    assert all(s.startswith("waiting for the first frame from camera door since ")
               for s in statuses), statuses
    since = datetime.fromisoformat(statuses[0].rsplit(" since ", 1)[1])
    assert abs(since.timestamp() - began) < 1.5, (statuses[0], began)
    assert not [m for _, m in waiting if "READY" in m or "WATCHDOG" in m], waiting
    said = [d for d in sink.stats if d["first_frame_since"]]
    assert said and said[0]["first_frame_since"] == statuses[0].rsplit(" since ", 1)[1]
    ready = [m for _, m in run.timeline if "READY" in m]
    assert len(ready) == 1 and ready[0]["STATUS"].endswith("active violations"), run.timeline
    assert sink.stats[-1]["first_frame_since"] is None  # frames came


@pytest.mark.slow
def test_real_maskd_run_names_its_camera_before_the_first_frame(tmp_path):
    """The real `maskd run --camera door` (build() makes its notifier) against a real MJPEG
    camera stalled from the start: STATUS names the camera before READY=1, which comes once the
    camera sends."""
    from tools.ipcamera import IpCamera

    sock = NotifySocket(str(tmp_path / "notify.sock"))
    cam = IpCamera(lambda i: np.full((120, 160, 3), i % 200, np.uint8)).start()
    cam.stall()
    env = {**os.environ, "NOTIFY_SOCKET": sock.address}
    proc = subprocess.Popen([sys.executable, "-m", "maskd", "run", "--source", cam.url,
                             "--camera", "door", "--detector", "blazeface"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.monotonic() + 60
        while not any("STATUS" in m for m in sock.messages):
            assert proc.poll() is None and time.monotonic() < deadline, sock.messages
            sock.drain(0.1)
        cam.back()
        while not any("READY" in m for m in sock.messages):
            assert proc.poll() is None and time.monotonic() < deadline, sock.messages
            sock.drain(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        cam.close()
        sock.close()
    first = next(m["STATUS"] for m in sock.messages if "STATUS" in m)
    assert first.startswith("waiting for the first frame from camera door since "), sock.messages


def test_with_several_cameras_each_one_without_a_first_frame_is_named(under_systemd,
                                                                      monkeypatch):
    """Both cameras' first reads hang: one STATUS names each, waiting for its first frame.
    Once door sends frames READY=1 goes out, and the line still says door2 waits (was: nothing
    until the first frame, then door2 'starting' for as long as it hung)."""
    monkeypatch.setattr(notify, "STATUS_INTERVAL_S", 1.0)
    cam2 = BlankCamera()
    cam2.hang_read.set()
    svc, cam = two_cameras(live_source("door2", cam2.opener, SourceConfig(reopen_min_s=0.1)),
                           hang=True)
    with LoopRunner(svc, under_systemd) as run:
        run.watch(2.0)
        both = list(run.timeline)
        cam.hang_read.clear()
        run.watch(2.0)
        cam2.hang_read.clear()
        assert run.stop() == 0
    lines = [m["STATUS"] for _, m in both if "STATUS" in m]
    assert not [m for _, m in both if "READY" in m]
    door, door2 = lines[-1].split("; door2: ")
    assert door.startswith("door: waiting for the first frame since "), lines
    assert door2.startswith("waiting for the first frame since "), lines
    later = [m["STATUS"] for _, m in run.timeline[len(both):] if "STATUS" in m]
    later = [s for s in later if s != "stopping"]
    assert [m for _, m in run.timeline[len(both):] if "READY" in m], run.timeline
    assert later and all(s.split("; door2: ")[1].startswith("waiting for the first frame since ")
                         for s in later), later
    assert later[-1].split("; door2: ")[0].endswith("active violations"), later


class CrashingCamera:
    """A source whose read() has a bug: the grabber thread dies on the third frame."""

    name = "buggy"
    is_live = True
    stats: dict = {}

    def __init__(self) -> None:
        self.n = 0

    def read(self):
        self.n += 1
        if self.n == 3:
            raise RuntimeError("bug in the capture code")
        time.sleep(0.05)
        return Frame(np.full((120, 160, 3), 90, np.uint8), self.n, time.time(), self.name)

    def close(self):
        pass


def test_a_crashed_frame_grabber_fails_the_run_for_a_restart(caplog):
    """Exit 70, not 0: with Restart=on-failure, systemd restarts only a failed service. One
    ERROR line, naming the camera, with the grabber's traceback (was: two, the first naming
    only the source)."""
    svc = service_for(LatestFrame(CrashingCamera()), cfg=Config(camera="door"))
    with caplog.at_level(logging.INFO):
        assert svc.run(flush_timeout=1.0) == 70
    assert svc.frames == 2 and svc.stop_reason == "error"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert [r.getMessage() for r in errors] == [
        "door: the loop failed: SourceError: buggy: frame grabber crashed: RuntimeError: bug in "
        "the capture code; maskd stops with exit status 70 (systemd restarts it)"]
    assert 'raise RuntimeError("bug in the capture code")' in caplog.text  # where it was


class EndingCamera(CrashingCamera):
    """A live source whose stream ends after two frames (the loop stops: live source closed)."""

    def read(self):
        self.n += 1
        return None if self.n > 2 else Frame(np.full((120, 160, 3), 90, np.uint8), self.n,
                                              time.time(), self.name)


def test_a_stop_that_cannot_end_the_violations_still_closes_the_sinks_and_fails(caplog):
    """A bug that breaks the stop's ending of the open violations: the sinks are still flushed
    and closed, one ERROR line says so, and the run fails (70) for a restart, not a clean 0
    (was: the exception went out of run(), the sinks never closed)."""
    sink = RecordingSink()
    svc = service_for(EndingCamera(), sinks=[sink], cfg=Config(camera="door"))

    def broken_close():
        raise KeyError("track 7")

    svc.pipeline.close = broken_close
    with caplog.at_level(logging.INFO):
        assert svc.run(flush_timeout=1.0) == 70
    assert sink.flushed and sink.closed and svc.finished.is_set()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "door: the stop could not end the open violations: KeyError: 'track 7'; they get no "
        "end (no state_dir, no MQTT: nothing keeps them)"]


# ------------------------------------------------------------- several cameras in one process


def two_cameras(second, hang: bool = False) -> tuple[Service, BlankCamera]:
    """The `cameras:` layout's loops around one SystemdNotifier, as build() makes them
    (``hang``: the first camera's read hangs from the start)."""
    cam = BlankCamera()
    if hang:
        cam.hang_read.set()
    watches = SystemdNotifier().for_cameras(["door", "door2"])
    loops = [service_for(live_source("door", cam.opener, SourceConfig(reopen_min_s=0.1)),
                         [watches[0]], cfg=Config(camera="door")),
             service_for(second, [watches[1]], cfg=Config(camera="door2"))]
    return Service(loops), cam


def test_with_several_cameras_one_hung_camera_stops_the_pings(under_systemd):
    """Camera door2's driver read hangs while door keeps sending frames: the pings must stop,
    so systemd restarts the process as it would with one camera (door's frames kept them going)."""
    cam2 = BlankCamera()
    svc, _ = two_cameras(live_source("door2", cam2.opener, SourceConfig(reopen_min_s=0.1)))
    with LoopRunner(svc, under_systemd) as run:
        run.watch(1.5)
        assert len(run.pings()) >= 2  # both cameras flow: pinged
        cam2.hang_read.set()
        hung_at = time.monotonic()
        run.watch(3.0)
        frames_door = svc.loops[0].frames
        run.watch(5.0, until=lambda: svc.loops[0].frames > frames_door)  # a loaded machine
        assert svc.loops[0].frames > frames_door  # door still runs
        cam2.hang_read.clear()
        assert run.stop() == 0
    assert run.pings(after=hung_at + 1.0) == []


def test_with_several_cameras_the_status_line_names_each_one(under_systemd):
    """door is unplugged while door2 runs: STATUS must say both, each by name, in every line,
    not flip between door's outage and door2's fps without saying whose they are."""
    svc, cam = two_cameras(live_source("door2", BlankCamera().opener, SourceConfig()))
    with LoopRunner(svc, under_systemd) as run:
        run.watch(1.5)
        cam.present.clear()  # door unplugged
        lost_at = time.monotonic()
        run.watch(3.0)
        assert run.stop() == 0
    running = [m["STATUS"] for t, m in run.timeline if "STATUS" in m and t < lost_at]
    assert running and all(s.startswith("door: ") and "; door2: " in s for s in running), running
    later = [m["STATUS"] for t, m in run.timeline if "STATUS" in m and t > lost_at + 1.0]
    later = [s for s in later if s != "stopping"]
    assert len(later) >= 2, later
    for s in later:
        door, door2 = s.split("; door2: ")
        assert door.startswith("door: camera lost since ") and door.endswith("; reconnecting"), s
        assert door2.endswith(("active violation", "active violations")), s


def test_with_several_cameras_the_status_line_says_a_shared_fault_once(notify_socket):
    """The cameras share the MQTT sink, so each one's stats hold the broker's line as it read it
    at its own time: a lost camera's 45 events waiting, the running one's 46. `systemctl status
    maskd` said the broker's line twice, one count stale (a real run of two cameras with the
    broker down), and once the broker was back, a lost camera's copy of it until that camera
    spoke again: a shared fault is said once, as the camera telling now reads it."""
    from maskd.mqtt.sink import NOT_CONNECTED

    def broker(n: int) -> str:
        return f"{NOT_CONNECTED}{since}, {n} event(s) waiting"

    def shared(*faults: str) -> dict:  # as a loop of the cameras: layout says its sinks'
        return {"faults": faults, "shared_faults": faults}

    clock = FakeClock()
    hub = SystemdNotifier(env=Environment.read({"NOTIFY_SOCKET": notify_socket.address}),
                          clock=clock)
    back, front = hub.for_cameras(["back", "front"])
    since = "2026-12-03T10:14:40+01:00"
    lost = {"camera_lost_since": since, "camera_reconnecting": True}
    back.on_wait(LoopStats(**lost, **shared(broker(45))))
    front.on_frame(FRAME, [], LoopStats(fps=14.8, active=1, **shared(
        broker(46), "jsonl -: cannot write: Broken pipe")))
    status = [m["STATUS"] for m in notify_socket.drain() if "STATUS" in m][-1]
    assert status == (f"back: camera lost since {since}; reconnecting; front: 14.8 fps | "
                      f"1 active violation | {broker(46)} | jsonl -: cannot write: Broken pipe"), status
    # the camera sending now holds the newest count, wherever it stands in the line
    clock.t += notify.STATUS_INTERVAL_S
    front.on_frame(FRAME, [], LoopStats(fps=14.8, **shared(broker(99))))
    clock.t += notify.STATUS_INTERVAL_S
    back.on_wait(LoopStats(**lost, **shared(broker(100))))
    status = [m["STATUS"] for m in notify_socket.drain() if "STATUS" in m][-1]
    assert status == (f"back: camera lost since {since}; reconnecting; front: 14.8 fps | "
                      f"0 active violations | {broker(100)}"), status
    # the broker back: front says so, whatever back's last copy held
    clock.t += notify.STATUS_INTERVAL_S
    front.on_frame(FRAME, [], LoopStats(fps=14.8))
    status = [m["STATUS"] for m in notify_socket.drain() if "STATUS" in m][-1]
    assert status == (f"back: camera lost since {since}; reconnecting; front: 14.8 fps | "
                      "0 active violations"), status
    # each camera's own fault is said, whatever digits its name holds (door1, door2)
    door1, door2 = hub.for_cameras(["door1", "door2"])
    for cam, name in ((door1, "door1"), (door2, "door2")):
        cam.on_frame(FRAME, [], LoopStats(fps=5.0, faults=(
            f"annotated clip {name}: recording paused (disk full)",)))
    status = [m["STATUS"] for m in notify_socket.drain() if "STATUS" in m][-1]
    assert status.endswith("| annotated clip door1: recording paused (disk full) | annotated "
                           "clip door2: recording paused (disk full)"), status


def test_with_several_cameras_a_crashed_loop_fails_the_process():
    """door2's frame grabber crashes: the process must end with 70 (systemd restarts it), not
    run on with door2 dead until someone notices."""
    svc, _ = two_cameras(LatestFrame(CrashingCamera()))
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(svc.run(flush_timeout=1.0)), daemon=True)
    t.start()
    t.join(20)
    if t.is_alive():
        svc.stop()
        t.join(20)
    assert done == [70]
    assert svc.loops[0].stop_reason == "camera door2 failed"


class SlowBroker(RecordingSink):
    """A sink whose flush takes ``takes_s`` to deliver what it holds (a broker slow to
    acknowledge), unless the stop asks it to stop waiting (``cancel``): then it is ``hurried``."""

    def __init__(self, takes_s: float) -> None:
        super().__init__()
        self.takes_s = takes_s
        self.hurried: bool | None = None

    def flush(self, timeout: float, cancel: threading.Event | None = None) -> bool:
        self.flushed.append(timeout)
        (cancel or threading.Event()).wait(min(timeout, self.takes_s))
        self.hurried = cancel is not None and cancel.is_set()
        return not self.hurried


class FailsWhen:
    """A live camera of changing pictures (each one detected: no motion gate skips it) whose
    frame grabber (``crash``) or detector on a Coral (``lose_coral``) fails once ``when()``."""

    def __init__(self, name: str, when: Callable[[], bool]) -> None:
        self.name, self.when = name, when
        self.rng = np.random.default_rng(0)

    def opener(self) -> FailsWhen:
        return self

    def read(self) -> tuple[bool, np.ndarray]:
        time.sleep(0.02)
        return True, self.rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)

    def release(self) -> None:
        pass

    def crash(self) -> LatestFrame:
        """The camera behind a frame grabber whose read has a bug that shows once ``when()``."""
        camera = self

        class Buggy:
            name, is_live, stats = self.name, True, {}

            def __init__(self) -> None:
                self.inner = live_source(camera.name, camera.opener, SourceConfig())

            def read(self):
                if camera.when():
                    raise RuntimeError("bug in the capture code")
                return self.inner.read()

            def close(self):
                self.inner.close()

        return LatestFrame(Buggy())

    def lose_coral(self, loop) -> None:
        """The loop's detector on a Coral that stops answering once ``when()``: its invoke
        goes through maskd.tflite.invoke as the SSD detector's does."""
        from maskd.tflite import invoke

        inner, when = loop.pipeline.detector, self.when

        class DeadCoral:
            def invoke(self) -> None:
                raise RuntimeError("Failed to execute request: USB transfer error")

        class OnTheCoral:
            def __getattr__(self, name: str):
                return getattr(inner, name)

            def detect(self, image_bgr):
                if when():
                    invoke(DeadCoral(), True, "the face detector")
                return inner.detect(image_bgr)

        loop.pipeline.detector = OnTheCoral()


@pytest.mark.parametrize("faults, code", [(("crash", "crash"), 70), (("coral", "coral"), 75),
                                          (("coral", "crash"), 70)])
def test_with_several_cameras_one_failing_hurries_no_other_cameras_stop(faults, code, caplog):
    """Two cameras fail one after the other (a bug both hit, the Coral they share going away,
    or one of each): door2 fails first and its stop waits for a slow broker; door fails
    meanwhile, and its failure stops the cameras still running, which must not read as a
    second stop request to door2, stopping already (was: door2 stopped waiting for delivery,
    `camera door failed while stopping: not waiting for delivery any longer`, its ended
    violations left to the outbox, for the next start: after the Coral is back). The exit is
    the worse status: 70 before 75."""
    slow = SlowBroker(takes_s=1.5)
    cams = [FailsWhen("door", lambda: bool(slow.flushed)),  # while door2 waits for its broker
            FailsWhen("door2", lambda: True)]
    loops = [service_for(cam.crash() if fault == "crash" else
                         live_source(cam.name, cam.opener, SourceConfig()),
                         sinks=[slow] if cam.name == "door2" else [], cfg=Config(camera=cam.name))
             for cam, fault in zip(cams, faults, strict=True)]
    for cam, loop, fault in zip(cams, loops, faults, strict=True):
        if fault == "coral":
            cam.lose_coral(loop)
    svc = Service(loops)
    done: list[int] = []
    t = threading.Thread(target=lambda: done.append(svc.run(flush_timeout=3.0)), daemon=True)
    with caplog.at_level(logging.INFO, logger="maskd.service"):
        t.start()
        t.join(30)
        if t.is_alive():
            svc.stop()
            t.join(20)
    assert done == [code], caplog.text
    assert [loop.stop_reason for loop in loops] == [
        "error" if fault == "crash" else "the Coral stopped answering" for fault in faults]
    assert slow.hurried is False, caplog.text  # door2's stop waited for its broker
    assert "while stopping" not in caplog.text


def test_a_coral_lost_and_a_stop_that_fails_too_is_70_as_the_worst_of_both(caplog):
    """The Coral goes away mid-frame and the stop then cannot end the open violations (the
    state the lost invoke left): that is a bug as well, and the exit is 70, the worse one, as
    `Service` ranks them for several cameras (was: 75, the stop's failure not counted)."""
    cam = FailsWhen("door", lambda: True)
    stops: list[tuple[str, str]] = []

    class StopSink(RecordingSink):  # the MQTT sink publishes it in status/detail
        def on_stop(self, stop: str, why: str) -> None:
            stops.append((stop, why))

    sink = StopSink()
    loop = service_for(live_source("door", cam.opener, SourceConfig()), sinks=[sink],
                       cfg=Config(camera="door"))
    cam.lose_coral(loop)

    def broken_close():
        raise KeyError("track 7")

    loop.pipeline.close = broken_close
    with caplog.at_level(logging.INFO, logger="maskd.service"):
        assert Service([loop]).run(flush_timeout=1.0) == 70
    assert loop.coral_lost and sink.flushed and sink.closed
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 2 and errors[0].startswith(
        "door: the face detector's Coral stopped answering") and errors[1].startswith(
        "door: the stop could not end the open violations: KeyError"), errors
    # told as the exit ranks it: failed (70), not coral_lost (75)
    assert stops == [("failed", "door: the stop could not end the open violations: KeyError: "
                                "'track 7'")], stops


# ---------------------------------------------------------------- mutants that survived


def test_a_failing_socket_is_said_once_per_streak_each_way(tmp_path, caplog):
    """Mutants that survived: a warning for every failed send (every frame, while systemd's
    socket is away), and a streak not ended by a send that works ("works again" at every
    send after, and the next failure never said)."""
    path = str(tmp_path / "notify.sock")
    n = Notifier(path)
    with caplog.at_level(logging.INFO, logger="maskd.notify"):
        assert not n.send("WATCHDOG=1") and not n.send("WATCHDOG=1")
        s = NotifySocket(path)
        assert n.send("WATCHDOG=1") and n.send("WATCHDOG=1")
        s.close()
        os.unlink(path)
        assert not n.send("WATCHDOG=1") and not n.send("WATCHDOG=1")
    n.close()
    lines = [r.getMessage().split(path)[0] for r in caplog.records]
    assert lines == ["sd_notify to ", "sd_notify to ", "sd_notify to "], caplog.text
    assert [r.levelname for r in caplog.records] == ["WARNING", "INFO", "WARNING"]


def test_one_camera_of_a_cameras_map_has_the_line_of_one_camera_named_where_it_waits(
        notify_socket):
    """Mutants that survived: a cameras: map of one camera gave its STATUS in the several
    cameras' form ("door: ..."), its wait for the first frame did not name it, and the one
    camera's line left out the sinks' faults."""
    clock = FakeClock()
    n = SystemdNotifier(env=Environment.read({"NOTIFY_SOCKET": notify_socket.address,
                                              "WATCHDOG_USEC": "2000000"}), clock=clock)
    [door] = n.for_cameras(["door"])
    door.on_wait(LoopStats(first_frame_since="2026-12-06T07:00:00+00:00"))
    assert notify_socket.drain() == [
        {"STATUS": "waiting for the first frame from camera door since 2026-12-06T07:00:00+00:00"}]
    clock.t += 1
    door.on_frame(FRAME, [], LoopStats(fps=10.0, active=0, faults=("MQTT: not connected",)))
    assert notify_socket.drain() == [{"READY": "1", "WATCHDOG": "1", "STATUS": "10.0 fps | "
                                      "0 active violations | MQTT: not connected"}]
    door.close()
    assert notify_socket.drain() == [{"STOPPING": "1", "STATUS": "stopping"}]


def test_a_camera_loop_that_stops_no_longer_holds_the_pings_back(notify_socket):
    """Mutants that survived: a stopped camera's loop kept holding the pings back (the other
    cameras' frames never pinged again: systemd restarted a working service) and kept its last
    numbers in the line, not "stopped"; READY=1 sent again after a wait."""
    clock = FakeClock()
    n = SystemdNotifier(env=Environment.read({"NOTIFY_SOCKET": notify_socket.address,
                                              "WATCHDOG_USEC": "2000000"}), clock=clock)
    front, back = n.for_cameras(["front", "back"])
    front.on_frame(FRAME, [], LoopStats(fps=5.0, active=0))
    back.on_frame(FRAME, [], LoopStats(fps=10.0, active=0))
    assert [m for m in notify_socket.drain() if "WATCHDOG" in m]
    front.close()
    clock.t += 1.0
    back.on_wait(LoopStats(camera_lost_since="2026-12-06T07:00:00+00:00", camera_reconnecting=True))
    clock.t += 1.0
    back.on_frame(FRAME, [], LoopStats(fps=10.0, active=0))
    got = notify_socket.drain()
    assert not any("READY" in m for m in got), got
    assert got[-1] == {"WATCHDOG": "1", "STATUS": "front: stopped; back: 10.0 fps | 0 active "
                                                  "violations"}, got
    back.close()
    assert notify_socket.drain() == [{"STOPPING": "1", "STATUS": "stopping"}]


def test_ready_is_sent_again_until_systemd_got_it_and_a_shared_fault_is_said_once(tmp_path):
    """Mutants that survived: a READY=1 whose datagram failed counted as sent (systemd, its
    socket back, never heard it: `systemctl start` timed out and the unit failed); and a fault
    of the shared sinks said once per camera in the one STATUS line."""
    path = str(tmp_path / "notify.sock")
    clock = FakeClock()
    n = SystemdNotifier(env=Environment.read({"NOTIFY_SOCKET": path}), clock=clock)
    n.on_frame(FRAME, [], LoopStats(fps=5.0))  # nobody listens yet
    s = NotifySocket(path)
    try:
        clock.t += 0.1
        n.on_frame(FRAME, [], LoopStats(fps=5.0))
        assert s.drain()[0]["READY"] == "1"
        front, back = n.for_cameras(["front", "back"])
        fault = "MQTT: broker refuses 1 topic(s)"
        front.on_frame(FRAME, [], LoopStats(fps=5.0, faults=(fault,)))
        clock.t += 6.0
        back.on_frame(FRAME, [], LoopStats(fps=7.0, faults=(fault,)))
        assert s.drain()[-1]["STATUS"] == "front: 5.0 fps | 0 active violations; back: 7.0 fps " \
                                          f"| 0 active violations | {fault}"
    finally:
        n.close()
        s.close()


def test_a_status_line_too_long_for_systemd_is_shortened_and_the_ping_still_counts(
        notify_socket):
    """systemd ignores a whole notify datagram of 4096 bytes or more, WATCHDOG=1 and READY=1 in
    it too ("Received notify message exceeded maximum size"). A real `maskd run` of 16 cameras
    (the most a map takes) with 63-character names, all lost at once (the site's switch down)
    and the broker gone for 30 s: its pings went out in datagrams of 4135 bytes, so systemd
    would have killed it every WatchdogSec. The STATUS= line is now cut to fit, marked."""
    clock = FakeClock()
    n = SystemdNotifier(env=Environment.read({"NOTIFY_SOCKET": notify_socket.address,
                                              "WATCHDOG_USEC": "2000000"}), clock=clock)
    names = [f"door{i:02d}_" + "é" * 57 for i in range(16)]  # two bytes each: a cut mid-letter
    watches = n.for_cameras(names)
    why = "cannot open (OpenCV cannot open rtsp://***@10.0.0.9:554/Streaming/Channels/101)"
    got = []
    for w in watches:
        w.on_wait(LoopStats(camera_lost_since="2026-12-06T17:19:31+00:00", camera_lost_why=why,
                            camera_reconnecting=True,
                            faults=("MQTT: broker not connected since 2026-12-06T17:19:31+00:00",)))
        while True:  # each at once: the socket's queue holds 10
            try:
                got.append(notify_socket.sock.recv(65536))
            except TimeoutError:
                break
    assert got and all(len(d) < 4096 for d in got), [(len(d), d[:30]) for d in got]
    pings = [d.decode() for d in got if b"WATCHDOG=1" in d]  # whole characters
    assert len(pings) == 1 and pings[0].endswith("..."), pings
    assert f"STATUS={names[0]}: camera lost since" in pings[0]
    n.close()


def test_the_status_line_says_when_detection_is_off_and_what_keeps_it_off(tmp_path,
                                                                          default_model):
    """Real `maskd run`, real broker: with detection off by the `schedule:` and then by the
    MQTT switch (Home Assistant), systemd's STATUS says so and why, as the status page does.
    It said "15.0 fps | 0 active violations" as when detecting, so `systemctl status` (and the
    HDMI preview's header, the same line) looked like a door watched while nothing was; the
    journal's stats line ended 'faces 0 ... | active 0' and said nothing either."""
    import cv2
    from mqtt_broker import Broker, Subscriber, wait_until

    from maskd.demo import SIZE, DemoSource

    demo, clip = DemoSource(), tmp_path / "demo.mp4"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter.fourcc(*"mp4v"), demo.fps, SIZE)
    while (frame := demo.read()) is not None:
        writer.write(frame.image)
    writer.release()
    today = datetime.now().weekday()  # off today and tomorrow: the looping file's clock runs fast
    days = [d for i, d in enumerate(("mon", "tue", "wed", "thu", "fri", "sat", "sun"))
            if i not in (today, (today + 1) % 7)]
    with Broker(tmp_path / "broker") as broker, contextlib.ExitStack() as cleanup:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(json.dumps({
            "camera": "door", "state_dir": str(tmp_path / "state"),
            "source": {"kind": "opencv", "uri": str(clip), "loop": True},
            "classifier": {"model": str(default_model)},
            "schedule": [{"days": days, "start": "00:00", "end": "24:00"}],
            "mqtt": {"url": broker.url}}))
        sub = cleanup.enter_context(contextlib.closing(
            Subscriber(broker, ["maskd/+/door/detect/attributes"])))
        sock = cleanup.enter_context(contextlib.closing(NotifySocket(str(tmp_path / "notify.sock"))))
        env = {**os.environ, "NOTIFY_SOCKET": sock.address, "WATCHDOG_USEC": "200000"}
        journal = cleanup.enter_context(open(tmp_path / "stderr.log", "w+"))
        proc = subprocess.Popen([sys.executable, "-m", "maskd", "run", "--config", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=journal, env=env,
                                cwd=Path(__file__).resolve().parents[1])
        cleanup.callback(lambda: proc.poll() is None and proc.kill())

        def status_until(ends: str) -> str:
            deadline, last = time.monotonic() + 60, ""
            while time.monotonic() < deadline and not last.endswith(ends):
                assert proc.poll() is None
                said = [m["STATUS"] for m in sock.drain(0.1) if "STATUS" in m]
                last = said[-1] if said else last
            return last

        assert status_until("detection off by the schedule").endswith(
            "0 active violations | detection off by the schedule")
        attrs = b'{"switch":"OFF","schedule":false,"in_force":"switch"}'
        assert wait_until(lambda: sub.messages, 20)
        topic = sub.messages[-1].topic.removesuffix("attributes") + "set"
        sub.client.publish(topic, "OFF", qos=1).wait_for_publish(5)
        assert wait_until(lambda: any(m.payload == attrs for m in sub.messages), 20)
        assert status_until("detection off by the switch").endswith(
            "0 active violations | detection off by the switch")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        # the journal's stats line too (the stop's last one): it read 'faces 0 ... active 0'
        stats = [ln for ln in (tmp_path / "stderr.log").read_text().splitlines()
                 if "maskd.service: door: " in ln and " fps | ms capture " in ln]
        assert stats and stats[-1].endswith("| active 0 | detection off by the switch"), stats


def test_with_several_cameras_each_ones_refused_subscription_is_in_the_status_line(
        tmp_path, default_model):
    """Real `maskd run` of cameras door1 and door2, a real broker whose ACL refuses both their
    detect/set subscriptions (both Home Assistant switches dead): `systemctl status maskd` said
    only 'MQTT: broker refuses the subscription to maskd/dev/door2/detect/set', the shared-fault
    rule taking the camera's digit in the topic for a count (door1's line and door2's one
    fault). A number inside a word (a name, a topic) is no count: each line is said."""
    from mqtt_broker import Broker

    topics = [f"maskd/dev/{cam}/detect/set" for cam in ("door1", "door2")]
    with Broker(tmp_path / "broker", deny_subscribe=topics) as broker, \
            contextlib.ExitStack() as cleanup:
        cfg = tmp_path / "config.yaml"
        cfg.write_text(json.dumps({
            "device_id": "dev", "state_dir": str(tmp_path / "state"),
            "classifier": {"model": str(default_model)}, "mqtt": {"url": broker.url},
            "cameras": {cam: {"source": {"kind": "demo", "loop": True}}
                        for cam in ("door1", "door2")}}))
        sock = cleanup.enter_context(contextlib.closing(NotifySocket(str(tmp_path / "notify.sock"))))
        proc = subprocess.Popen([sys.executable, "-m", "maskd", "run", "--config", str(cfg)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={**os.environ, "NOTIFY_SOCKET": sock.address},
                                cwd=Path(__file__).resolve().parents[1])
        cleanup.callback(lambda: proc.poll() is None and proc.kill())
        deadline, last, seen = time.monotonic() + 60, "", None
        while time.monotonic() < (deadline if seen is None else min(deadline, seen + 3)):
            assert proc.poll() is None
            said = [m["STATUS"] for m in sock.drain(0.1) if "STATUS" in m]
            last = said[-1] if said else last
            if seen is None and "subscription" in last:  # a few more of both cameras' lines
                seen = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    assert last.endswith(" | ".join(f"MQTT: broker refuses the subscription to {t}"
                                    for t in topics)), last
