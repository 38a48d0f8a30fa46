"""Preview: renderer pixels, framebuffer bytes and writer, frame dropping, HTTP page in a real browser."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np
import pytest
from mqtt_broker import free_port

from maskd.annotate import GREEN, RED, header_text
from maskd.config import ClassifierConfig, Config
from maskd.geometry import letterbox
from maskd.mailbox import Mailbox
from maskd.preview import (
    FbGeometry,
    FramebufferPreview,
    HttpPreview,
    PreviewUnavailable,
    ThreadedPreview,
    WindowPreview,
    is_local,
    make_observers,
    opencv_gui_backend,
    parse_listen,
    read_fb_geometry,
    render,
    resolve_preview_flag,
    to_fb_bytes,
)
from maskd.types import Face, Frame, LoopStats, Verdict

GREY = 128
NO_MASK_BOX = (40, 60, 140, 180)
MASK_BOX = (180, 60, 280, 180)
STATS = LoopStats(fps=9.5, active=1)
CUT = ClassifierConfig().threshold


def scene() -> tuple[Frame, list[Verdict]]:
    img = np.full((240, 320, 3), GREY, np.uint8)
    verdicts = [Verdict(Face(NO_MASK_BOX, 0.9), 0.9, CUT), Verdict(Face(MASK_BOX, 0.95), 0.1, CUT)]
    return Frame(img, 0, time.time(), "test"), verdicts


def wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())


# ------------------------------------------------------------------ renderer


def test_header_text():
    assert header_text(LoopStats(fps=12.345, active=1)) == "12.3 fps | 1 active violation"
    assert header_text(LoopStats(fps=3, active=2)) == "3.0 fps | 2 active violations"
    assert header_text(LoopStats()) == "-- fps | 0 active violations"


def test_render_draws_red_and_green_boxes_and_header():
    frame, verdicts = scene()
    out = render(frame, verdicts, STATS)
    assert out.shape == frame.image.shape and out is not frame.image
    assert (frame.image == GREY).all(), "the source frame must not be drawn on"
    # box edges (1 px at this size) in the exact colours, interiors untouched
    for x0, y0, x1, y1, colour in [(*NO_MASK_BOX, RED), (*MASK_BOX, GREEN)]:
        for x, y in [(x0, (y0 + y1) // 2), (x1, (y0 + y1) // 2), ((x0 + x1) // 2, y1)]:
            assert tuple(out[y, x]) == colour, (x, y)
        assert (out[y0 + 3:y1 - 3, x0 + 3:x1 - 3] == GREY).all()
        # caption above the box in the box colour
        caption = out[y0 - 16:y0 - 2, x0:x1].reshape(-1, 3)
        assert (np.abs(caption.astype(int) - colour).sum(axis=1) < 60).sum() > 20
    # header: black band top-left with white text
    band = out[0:12, 0:60].reshape(-1, 3)
    assert (band == 0).all(axis=1).sum() > 100
    assert (band > 200).all(axis=1).sum() > 5


def test_render_at_screen_size_scales_boxes_not_lines():
    frame, verdicts = scene()
    out = render(frame, verdicts, STATS, size=(800, 400))  # scale 5/3: 533 wide, 133 px bars
    assert out.shape == (400, 800, 3)
    assert (out[100:, :133] == 0).all() and (out[:, 667:] == 0).all()
    x0, y0, x1, y1 = (round(c * 5 / 3) for c in NO_MASK_BOX)
    assert tuple(out[(y0 + y1) // 2, x0 + 133]) == RED
    assert (out[y0 + 5:y1 - 5, x0 + 133 + 5:x1 + 133 - 5] == GREY).all()


def test_render_marks_too_small_faces_grey():
    frame, _ = scene()
    out = render(frame, [Verdict(Face((10, 100, 30, 120), 0.8), None, CUT)], LoopStats())
    assert tuple(out[110, 10]) == (160, 160, 160)


# ------------------------------------------------------------------ framebuffer bytes


def test_letterbox_centres_on_black():
    img = np.full((32, 32, 3), 255, np.uint8)
    out, _ = letterbox(img, 64, 48, centre=True)
    assert out.shape == (48, 64, 3)
    assert (out[:, :8] == 0).all() and (out[:, 56:] == 0).all()
    assert (out[:, 8:56] == 255).all()


def test_to_fb_bytes_rgb565_with_stride_padding():
    geo = FbGeometry(width=64, height=48, bits_per_pixel=16, stride=160)
    red = np.zeros((32, 32, 3), np.uint8)
    red[..., 2] = 255  # BGR red
    data = to_fb_bytes(red, geo)
    assert len(data) == geo.size_bytes == 160 * 48
    rows = np.frombuffer(data, np.uint8).reshape(48, 160)
    px = rows[:, :128].copy().view("<u2")  # 64 pixels per row
    assert (px[:, 8:56] == 0xF800).all()  # pure red in RGB565
    assert (px[:, :8] == 0).all() and (px[:, 56:] == 0).all()  # letterbox bars
    assert (rows[:, 128:] == 0).all()  # stride padding untouched


def test_to_fb_bytes_xrgb8888_is_bgra_in_memory():
    geo = FbGeometry(width=40, height=30, bits_per_pixel=32, stride=160)
    img = np.zeros((30, 40, 3), np.uint8)
    img[:] = (10, 20, 30)  # B, G, R
    px = np.frombuffer(to_fb_bytes(img, geo), np.uint8).reshape(30, 40, 4)
    assert (px[..., :3] == (10, 20, 30)).all()


def test_unsupported_bpp_is_a_clear_error():
    with pytest.raises(PreviewUnavailable, match="8 bits per pixel"):
        to_fb_bytes(np.zeros((4, 4, 3), np.uint8), FbGeometry(4, 4, 8, 4))


def test_read_fb_geometry_from_sysfs(tmp_path):
    d = tmp_path / "sys" / "fb0"
    d.mkdir(parents=True)
    (d / "virtual_size").write_text("1920,2160\n")  # double-buffered: twice the visible height
    (d / "bits_per_pixel").write_text("16\n")
    (d / "stride").write_text("3840\n")
    (d / "modes").write_text("U:1920x1080p-0\n")
    geo = read_fb_geometry(Path("/dev/fb0"), sysfs=tmp_path / "sys")
    assert geo == FbGeometry(1920, 1080, 16, 3840)
    (d / "modes").unlink()
    assert read_fb_geometry(Path("/dev/fb0"), sysfs=tmp_path / "sys").height == 2160
    with pytest.raises(PreviewUnavailable, match="fb1/virtual_size"):
        read_fb_geometry(Path("/dev/fb1"), sysfs=tmp_path / "sys")


def test_framebuffer_writer_against_a_file(tmp_path):
    geo = FbGeometry(width=200, height=120, bits_per_pixel=32, stride=208 * 4)
    fb = tmp_path / "fb0"
    fb.write_bytes(b"\xff" * geo.size_bytes)
    frame, verdicts = scene()
    preview = FramebufferPreview(fb, geometry=geo).start()
    preview.on_frame(frame, verdicts, STATS)
    assert wait_for(lambda: preview.shown == 1, 10)
    preview.close()
    assert fb.read_bytes() == to_fb_bytes(render(frame, verdicts, STATS, size=(200, 120)), geo)
    # the screen shows red and green box pixels
    px = np.frombuffer(fb.read_bytes(), np.uint8).reshape(120, 208, 4)[:, :200, :3]
    assert (np.abs(px.astype(int) - RED).sum(axis=2) < 40).sum() > 50
    assert (np.abs(px.astype(int) - GREEN).sum(axis=2) < 40).sum() > 50


def test_framebuffer_missing_device_is_clear(tmp_path):
    with pytest.raises(PreviewUnavailable, match="does not exist"):
        FramebufferPreview(tmp_path / "fb9", geometry=FbGeometry(8, 8, 16, 16))


# ------------------------------------------------------------------ never slows the loop


class SlowPreview(ThreadedPreview):
    name = "slow"

    def show(self, image):
        time.sleep(0.2)


def test_slow_preview_drops_frames_not_the_loop():
    frame, verdicts = scene()
    preview = SlowPreview().start()
    t0 = time.perf_counter()
    for _ in range(200):
        preview.on_frame(frame, verdicts, STATS)
    per_call = (time.perf_counter() - t0) / 200
    preview.close()
    assert per_call < 0.002, f"on_frame took {per_call * 1000:.2f} ms"
    assert preview.dropped >= 190 and preview.shown <= 3


def test_preview_frame_rate_is_capped():
    class Counting(ThreadedPreview):
        def show(self, image):
            pass

    frame, verdicts = scene()
    preview = Counting(max_fps=5).start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        preview.on_frame(frame, verdicts, STATS)
        time.sleep(0.01)
    preview.close()
    assert 3 <= preview.shown <= 6, preview.shown


def test_mailbox_keeps_the_newest():
    box: Mailbox[tuple] = Mailbox()
    box.put((1,))
    box.put((2,))
    assert box.get(0.1) == (2,) and box.dropped == 1
    assert box.get(0.01) is None
    box.close()
    assert box.get() is None


def test_broken_preview_does_not_raise_into_the_loop():
    class Broken(ThreadedPreview):
        def show(self, image):
            raise RuntimeError("screen gone")

    frame, verdicts = scene()
    preview = Broken().start()
    preview.on_frame(frame, verdicts, STATS)
    assert wait_for(lambda: not preview._thread.is_alive(), 5)
    preview.on_frame(frame, verdicts, STATS)  # still harmless
    preview.close()


# ------------------------------------------------------------------ window / --preview


def test_opencv_gui_detection_parses_build_info():
    assert opencv_gui_backend("  GUI:                           NONE\n    Built-in Unicode font:  YES\n") is None
    assert opencv_gui_backend(cv2.getBuildInformation()) == opencv_gui_backend()
    assert opencv_gui_backend("  GUI:                           GTK3\n    GTK+:   YES (ver 3)\n") == "GTK3"
    old = "  GUI: \n    QT:                          NO\n    GTK+:                        YES (ver 2)\n"
    assert opencv_gui_backend(old) == "GTK+"
    assert opencv_gui_backend("  GUI: \n    QT: NO\n  Media I/O:\n    ZLib: YES\n") is None


@pytest.mark.skipif(opencv_gui_backend() is not None, reason="this OpenCV has GUI support")
def test_window_on_headless_opencv_says_what_to_do(tmp_path):
    with pytest.raises(PreviewUnavailable, match="no GUI support.*preview.http"):
        WindowPreview()
    with pytest.raises(PreviewUnavailable, match="preview.http: 127.0.0.1:8080"):
        resolve_preview_flag(Config().preview, fb=tmp_path / "fb0")


def test_preview_flag_prefers_the_framebuffer(tmp_path):
    fb = tmp_path / "fb0"
    fb.touch()
    assert resolve_preview_flag(Config().preview, fb=fb).framebuffer == fb


def test_parse_listen():
    assert parse_listen("8080") == ("127.0.0.1", 8080)
    assert parse_listen(":8080") == ("127.0.0.1", 8080)
    assert parse_listen("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    for bad in ["host", "1.2.3.4:99999", "a:b:c"]:
        with pytest.raises(PreviewUnavailable, match="HOST:PORT"):
            parse_listen(bad)


# ------------------------------------------------------------------ HTTP


class Feeder:
    """Plays the loop: hands frames to the observers at ~20 fps in a thread."""

    def __init__(self, observers):
        self.observers = observers
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        frame, verdicts = scene()
        seq = 0
        while not self.stop.is_set():
            f = Frame(frame.image, seq, time.time(), "test")
            for obs in self.observers:
                obs.on_frame(f, verdicts, STATS)
            seq += 1
            time.sleep(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


@pytest.fixture
def http_preview():
    cfg = Config.model_validate({"preview": {"http": "127.0.0.1:0"}})
    observers = make_observers(cfg)
    assert len(observers) == 1 and isinstance(observers[0], HttpPreview)
    yield observers[0]
    observers[0].close()


def test_http_serves_page_frame_and_stream(http_preview):
    url = http_preview.url
    assert url.startswith("http://127.0.0.1:")
    page = urllib.request.urlopen(url, timeout=5).read().decode()
    assert '<img id="live" src="/stream.mjpg"' in page
    with Feeder([http_preview]):
        jpeg = urllib.request.urlopen(url + "frame.jpg", timeout=10).read()
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (240, 320, 3)
        x0, y0, x1, y1 = NO_MASK_BOX
        assert np.abs(img[(y0 + y1) // 2, x0 - 1:x0 + 2].astype(int) - RED).sum(axis=1).min() < 90
        with urllib.request.urlopen(url + "stream.mjpg", timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("multipart/x-mixed-replace; boundary=")
            head = resp.read(200)
        assert head.startswith(b"--maskdframe\r\nContent-Type: image/jpeg\r\n")
    assert urllib.request.urlopen(url, timeout=5).status == 200
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url + "nope", timeout=5)
    assert err.value.code == 404


def test_http_idle_without_watchers(http_preview):
    frame, verdicts = scene()
    for _ in range(5):
        http_preview.on_frame(frame, verdicts, STATS)
    time.sleep(0.2)
    assert http_preview.shown == 0  # nobody watching: nothing rendered or encoded


def test_http_port_in_use_is_clear(http_preview):
    with pytest.raises(PreviewUnavailable, match="cannot listen on"):
        HttpPreview(f"127.0.0.1:{http_preview.port}")


def test_http_server_header_hides_the_python_version(http_preview):
    with urllib.request.urlopen(http_preview.url, timeout=5) as resp:
        assert resp.headers["Server"] == "maskd-preview"


def test_http_idle_connections_time_out():
    """A client that connects and sends nothing is closed, so idle sockets cannot pile up."""
    preview = HttpPreview("127.0.0.1:0", idle_timeout_s=0.5).start()
    try:
        with socket.create_connection(("127.0.0.1", preview.port), timeout=10) as conn:
            t0 = time.monotonic()
            assert conn.recv(1024) == b""  # the server hung up on us
            assert time.monotonic() - t0 < 5
    finally:
        preview.close()


@pytest.mark.parametrize(("listen", "level"), [("127.0.0.1:0", "INFO"), ("0.0.0.0:0", "WARNING")])
def test_http_bound_beyond_localhost_warns(caplog, listen, level):
    with caplog.at_level(logging.INFO, logger="maskd.preview"):
        HttpPreview(listen).start().close()
    (rec,) = [r for r in caplog.records if "preview at" in r.getMessage()]
    assert rec.levelname == level, rec.getMessage()
    if level == "WARNING":
        assert "reachable from the network" in rec.getMessage()
    assert is_local("localhost") and is_local("::1") and not is_local("192.168.1.2")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="needs chromium (apt-get install chromium; tests/run.sh does)")
def test_web_preview_in_a_real_headless_browser(http_preview, tmp_path):
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=400,300",
           http_preview.url]
    with Feeder([http_preview]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert shot.exists(), f"chromium wrote no screenshot (rc {proc.returncode}): {proc.stderr[-2000:]}"
    img = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[:2] == (300, 400)
    # the page shows the frame at 1:1 from the top-left corner
    for (x0, y0, x1, y1), colour in [(NO_MASK_BOX, RED), (MASK_BOX, GREEN)]:
        edge = img[y0 + 10:y1 - 10, x0 - 1:x0 + 2].astype(int)
        assert (np.abs(edge - colour).sum(axis=2).min(axis=1) < 90).mean() > 0.9, colour
        inside = img[y0 + 10:y1 - 10, x0 + 10:x1 - 10].astype(int)
        assert (np.abs(inside - GREY) < 12).all(axis=2).mean() > 0.95
    assert (img[250:, :] < 10).all(), "below the frame is the page's black background"


@pytest.mark.slow
def test_maskd_run_serves_the_live_view(tmp_path, default_model):
    """The run loop wires the HTTP preview: a browser-style fetch gets the annotated demo frames."""
    port = free_port()
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"source: {{kind: demo, loop: true}}\npreview: {{http: '127.0.0.1:{port}'}}\n"
                   f"classifier: {{model: {default_model}}}\nstate_dir: {tmp_path}\n")
    proc = subprocess.Popen([sys.executable, "-m", "maskd", "run", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ})
    try:
        url = f"http://127.0.0.1:{port}/"
        jpeg = None
        deadline = time.monotonic() + 60
        while jpeg is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                jpeg = urllib.request.urlopen(url + "frame.jpg", timeout=10).read()
            except OSError:
                time.sleep(0.2)
        assert jpeg is not None, proc.stderr.read() if proc.poll() is not None else "no frame in 60 s"
        img = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (480, 640, 3)
        assert (img[0:12, 0:40] < 40).all(axis=2).mean() > 0.5  # the fps / violations header band
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


@pytest.mark.skipif(opencv_gui_backend() is not None or Path("/dev/fb0").exists(),
                    reason="this machine has a framebuffer or a GUI OpenCV")
def test_run_preview_flag_without_screen_is_exit_78():
    r = subprocess.run([sys.executable, "-m", "maskd", "run", "--preview", "--source", "demo"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 78
    assert r.stderr.strip().startswith("maskd run: --preview: no framebuffer at /dev/fb0")
    assert "preview.http: 127.0.0.1:8080" in r.stderr
