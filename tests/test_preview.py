"""Preview: renderer pixels, framebuffer bytes and writer, frame dropping (the HTTP status page:
tests/test_statuspage.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskd.annotate import GREEN, RED, header_text
from maskd.config import ClassifierConfig, Config, is_loopback
from maskd.geometry import letterbox
from maskd.mailbox import Mailbox
from maskd.preview import (
    FbGeometry,
    FramebufferPreview,
    PreviewUnavailable,
    ThreadedPreview,
    WindowPreview,
    make_observers,
    opencv_gui_backend,
    parse_listen,
    read_fb_geometry,
    render,
    resolve_preview_flag,
    to_fb_bytes,
)
from maskd.types import Face, Frame, LoopStats, Verdict
from tools.mosquitto import wait_until

GREY = 128
NO_MASK_BOX = (40, 60, 140, 180)
MASK_BOX = (180, 60, 280, 180)
STATS = LoopStats(fps=9.5, active=1)
CUT = ClassifierConfig().threshold


def scene() -> tuple[Frame, list[Verdict]]:
    img = np.full((240, 320, 3), GREY, np.uint8)
    verdicts = [Verdict(Face(NO_MASK_BOX, 0.9), 0.9, CUT), Verdict(Face(MASK_BOX, 0.95), 0.1, CUT)]
    return Frame(img, 0, time.time(), "test"), verdicts


# ------------------------------------------------------------------ renderer


def test_header_text():
    assert header_text(LoopStats(fps=12.345, active=1)) == "12.3 fps | 1 active violation"
    assert header_text(LoopStats(fps=3, active=2)) == "3.0 fps | 2 active violations"
    assert header_text(LoopStats()) == "-- fps | 0 active violations"
    # more violating faces in view than open violations (one not started yet): none is lost,
    # never "(-1 faces not detected now)"
    assert header_text(LoopStats(fps=3, active=1, in_view=2)) == "3.0 fps | 1 active violation"


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


def test_a_lost_cameras_header_with_its_reason_wraps_inside_the_picture():
    """A lost camera's line says why (``camera_lost_why``); on a 320x240 picture it ran off the
    right edge, `reconnecting` and most of the reason with it. Now it is cut at spaces into
    lines that fit, each on its own black band, nothing dropped."""
    import cv2

    from maskd.annotate import camera_text, draw_verdicts, header_lines

    why = ("5 frames in a row maskd cannot use: uint16 pixels (shape (240, 320, 3)): maskd "
           "reads 8-bit frames; set the camera to an 8-bit format")
    text = camera_text(LoopStats(fps=0.0, camera_lost_since="2026-12-04T20:21:21+00:00",
                                 camera_lost_why=why, camera_reconnecting=True))
    assert text.endswith(f"({why}); reconnecting")
    image = np.full((240, 320, 3), GREY, np.uint8)
    out = draw_verdicts(image, [], header=text)
    scale, thick = max(0.35, 240 / 900), 1  # draw_verdicts' for this size
    lines = header_lines(text, 320 - 8, scale, thick)
    assert " ".join(lines) == text and len(lines) > 2
    assert all(cv2.getTextSize(ln, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] <= 312
               for ln in lines)
    (_, th), base = cv2.getTextSize(lines[-1], cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    bottom = len(lines) * (th + base + 8)
    last = out[bottom - th - base - 8:bottom, :60].reshape(-1, 3)  # the last line's band
    assert (last == 0).all(axis=1).sum() > 100 and (last > 200).all(axis=1).sum() > 5
    assert (out[bottom + 1:] == GREY).all()  # nothing drawn below it


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


def test_the_box_colours_are_green_for_a_mask_and_red_for_none():
    """The other tests compare against annotate's own constants: a GREEN that were red (or RED
    green) passed them, and the door's screen showed every face in one colour."""
    frame, verdicts = scene()
    out = render(frame, verdicts, STATS)
    (nx0, ny0, _, ny1), (mx0, my0, _, my1) = NO_MASK_BOX, MASK_BOX
    b, g, r = (int(c) for c in out[(ny0 + ny1) // 2, nx0])
    assert r > 200 and g < 50 and b < 50, "no mask: red"
    b, g, r = (int(c) for c in out[(my0 + my1) // 2, mx0])
    assert g > 150 and r < 50 and b < 50, "mask: green"


def test_a_face_at_the_top_edge_has_its_caption_below_the_box():
    """Above the box there is no room (it would be drawn off the picture): below it instead."""
    from maskd.annotate import draw_verdicts

    image = np.full((240, 320, 3), GREY, np.uint8)
    out = draw_verdicts(image, [Verdict(Face((40, 2, 140, 100), 0.9), 0.9, CUT)])
    below = out[102:114, 40:140].reshape(-1, 3)
    assert (np.abs(below.astype(int) - RED).sum(axis=1) < 60).sum() > 20


def test_boxes_on_a_big_picture_are_drawn_thicker():
    """One pixel is lost on a 1280x960 frame shown on a screen: thickness 3 there (1 per 320 px)."""
    from maskd.annotate import draw_verdicts

    image = np.full((960, 1280, 3), GREY, np.uint8)
    out = draw_verdicts(image, [Verdict(Face((100, 200, 500, 700), 0.9), 0.9, CUT)])
    row = out[450, 90:110]
    assert sum(tuple(px) == RED for px in row) >= 3


def test_a_header_line_exactly_as_wide_as_the_picture_is_not_cut():
    from maskd.annotate import header_lines

    scale, thick = 0.5, 1
    width = cv2.getTextSize("12.3 fps | 1", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0]
    assert header_lines("12.3 fps | 1", width, scale, thick) == ["12.3 fps | 1"]
    assert header_lines("12.3 fps | 1", width - 1, scale, thick) == ["12.3 fps |", "1"]


def test_captions_give_the_label_and_the_probability_of_that_label():
    """'Mask: 90.0%' is P(mask), 1 - no_mask; 'No Mask: 88.0%' is P(no_mask); '?' too small."""
    from maskd.annotate import caption_for

    face = Face(MASK_BOX, 0.9)
    assert caption_for(Verdict(face, 0.1, CUT)) == "Mask: 90.0%"
    assert caption_for(Verdict(face, 0.88, CUT)) == "No Mask: 88.0%"
    assert caption_for(Verdict(face, 0.123, CUT)) == "Mask: 87.7%"
    assert caption_for(Verdict(face, None, CUT)) == "?"


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


@pytest.mark.parametrize("files, match", [
    ({"virtual_size": ""}, "holds no usable geometry"),
    ({"virtual_size": "1920,1080,0"}, "holds no usable geometry"),
    ({"bits_per_pixel": "sixteen"}, "holds no usable geometry"),
    ({"stride": "100"}, r"rows of 100 bytes \(need >= 3840\)"),
    ({"virtual_size": "0,0", "stride": "0"}, "unusable geometry 0x0"),
])
def test_odd_sysfs_geometry_is_refused_at_start(tmp_path, files, match):
    """Odd kernel values gave a ValueError traceback (exit 1, restarted by systemd) or a
    preview that died on its first frame, instead of PreviewUnavailable (exit 78)."""
    d = tmp_path / "sys" / "fb0"
    d.mkdir(parents=True)
    for name, text in {"virtual_size": "1920,1080", "bits_per_pixel": "16", "stride": "3840",
                       **files}.items():
        (d / name).write_text(text + "\n")
    with pytest.raises(PreviewUnavailable, match=match):
        read_fb_geometry(Path("/dev/fb0"), sysfs=tmp_path / "sys")


def _screen_showing_the_scene(fb: Path, geo: FbGeometry, blank: bytes):
    """A framebuffer preview on the file ``fb`` (filled with ``blank`` first) once it shows
    the annotated scene; with that scene's frame."""
    fb.write_bytes(blank * geo.size_bytes)
    frame, verdicts = scene()
    preview = FramebufferPreview(fb, geometry=geo).start()
    preview.on_frame(frame, verdicts, STATS)
    want = to_fb_bytes(render(frame, verdicts, STATS, size=(geo.width, geo.height)), geo)
    assert wait_until(lambda: preview.shown == 1 and fb.read_bytes() == want, 10)
    return preview, frame


def test_framebuffer_writer_against_a_file(tmp_path):
    geo = FbGeometry(width=200, height=120, bits_per_pixel=32, stride=208 * 4)
    fb = tmp_path / "fb0"
    preview, _ = _screen_showing_the_scene(fb, geo, b"\xff")
    shown = fb.read_bytes()
    preview.close()  # (then it says maskd stopped: test_the_screen_says_maskd_stopped_...)
    # the screen shows red and green box pixels
    px = np.frombuffer(shown, np.uint8).reshape(120, 208, 4)[:, :200, :3]
    assert (np.abs(px.astype(int) - RED).sum(axis=2) < 40).sum() > 50
    assert (np.abs(px.astype(int) - GREEN).sum(axis=2) < 40).sum() > 50


def test_the_screen_says_maskd_stopped_instead_of_looking_live(tmp_path, monkeypatch):
    """The console keeps the last picture written to it after maskd ends (nothing redraws
    it): a stopped maskd left its last frame with '12.5 fps | 1 active violation' on the
    HDMI screen, looking live, for as long as it was stopped (a real `run` stopped by SIGTERM
    did). A stop now leaves that picture, without its boxes, under a line that says so."""
    from maskd import preview

    monkeypatch.setattr(preview, "local_iso", lambda t: "T", raising=False)
    geo = FbGeometry(width=200, height=120, bits_per_pixel=16, stride=208 * 2)
    fb = tmp_path / "fb0"
    screen, frame = _screen_showing_the_scene(fb, geo, b"\0")
    screen.close()
    from maskd.annotate import draw_verdicts

    picture = letterbox(frame.image, 200, 120, centre=True)[0]  # the last one, without its boxes
    assert fb.read_bytes() == to_fb_bytes(
        draw_verdicts(picture, [], header="maskd stopped at T; not detecting"), geo)


def test_framebuffer_missing_device_is_clear(tmp_path):
    with pytest.raises(PreviewUnavailable, match="does not exist"):
        FramebufferPreview(tmp_path / "fb9", geometry=FbGeometry(8, 8, 16, 16))


def test_a_framebuffer_that_comes_later_or_goes_away_is_shown_when_there(
        tmp_path, monkeypatch, caplog):
    """A Pi booted without its HDMI monitor has no /dev/fb0 (vc4 KMS): `run` stopped with exit
    78, which the unit does not restart, so nothing was detected at all. The preview now waits
    for the device: plugged in later, it shows the picture; a write that fails (the display
    gone; /dev/full stands in) pauses it until the device works again, instead of ending it."""
    from maskd import preview

    monkeypatch.setattr(preview, "FB_DIR", tmp_path)  # tmp_path/fbN stands in for /dev/fbN
    monkeypatch.setattr(preview, "FB_RETRY_S", 0.05)
    caplog.set_level("INFO", logger="maskd.preview")
    geo = FbGeometry(width=200, height=120, bits_per_pixel=32, stride=200 * 4)
    fb = tmp_path / "fb0"
    frame, verdicts = scene()
    screen = FramebufferPreview(fb, geometry=geo, max_fps=50, key="cameras.b.preview.framebuffer")
    screen.start()

    def shows(n: int) -> bool:
        screen.on_frame(frame, verdicts, STATS)
        time.sleep(0.02)
        return screen.shown >= n

    try:
        assert not wait_until(lambda: shows(1), 0.3) and not screen.available
        fb.symlink_to("/dev/full")  # a display that opens, but every write fails (ENOSPC)
        assert wait_until(lambda: not shows(1) and any(
            "No space left" in r.getMessage() for r in caplog.records), 10)
        assert screen.shown == 0
        fb.unlink()
        fb.write_bytes(b"\0" * geo.size_bytes)  # a working one
        want = to_fb_bytes(render(frame, verdicts, STATS, size=(200, 120)), geo)
        assert wait_until(lambda: shows(1) and fb.read_bytes() == want, 10)
    finally:
        screen.close()
    said = [r.getMessage() for r in caplog.records]
    assert said[0] == (f"cameras.b.preview.framebuffer: {fb} does not exist now (no HDMI monitor "
                       "since boot?); detection runs without this preview, which is tried again "
                       "every 10 s"), said
    assert any(f"writing {fb} failed: No space left on device; detection runs" in s for s in said)
    assert sum("is back (200x120)" in s for s in said) == 1, said


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


def test_a_closed_mailbox_wakes_its_waiting_consumer_and_hands_out_what_it_holds():
    """Mutants that survived: a close that did not wake a get() without a time-out (the
    preview thread waits so: close() gave up on it after 5 s and its teardown never ran), and
    ``closed`` that never said so (LatestFrame took a crashed grabber for a camera waited on)."""
    box: Mailbox[tuple] = Mailbox()
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(box.get()), daemon=True)
    waiter.start()
    time.sleep(0.1)
    assert not box.closed
    t0 = time.monotonic()
    box.close()
    waiter.join(2.0)
    assert not waiter.is_alive() and got == [None] and time.monotonic() - t0 < 1.0
    assert box.closed
    box = Mailbox()
    box.put((3,))
    box.close()
    assert box.closed and box.get() == (3,) and box.get() is None


def test_broken_preview_does_not_raise_into_the_loop():
    class Broken(ThreadedPreview):
        def show(self, image):
            raise RuntimeError("screen gone")

    frame, verdicts = scene()
    preview = Broken().start()
    preview.on_frame(frame, verdicts, STATS)
    assert wait_until(lambda: not preview._thread.is_alive(), 5)
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


def test_a_window_without_a_desktop_session_is_a_warning_for_check_config_and_stops_run(
        monkeypatch):
    """check_previews: what depends on the session (no $DISPLAY here, which the service may
    have) is returned for check-config to warn of, and raised for `run`, whose window needs it."""
    import maskd.preview
    from maskd.preview import NO_DISPLAY, check_previews

    monkeypatch.setattr(maskd.preview, "opencv_gui_backend", lambda *a: "GTK3")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    cfg = Config.model_validate({"preview": {"window": True}})
    assert check_previews(cfg, strict=False) == [f"preview.window: {NO_DISPLAY}"]
    with pytest.raises(PreviewUnavailable, match=r"^preview\.window: no desktop session"):
        check_previews(cfg)


def test_parse_listen():
    assert parse_listen("8080") == ("127.0.0.1", 8080)
    assert parse_listen(":8080") == ("127.0.0.1", 8080)
    assert parse_listen("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    for bad in ["host", "1.2.3.4:99999", "a:b:c"]:
        with pytest.raises(PreviewUnavailable, match="HOST:PORT"):
            parse_listen(bad)


# ------------------------------------------------------------------ HTTP


def test_is_loopback():
    assert is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("192.168.1.2") and not is_loopback("0.0.0.0")
    assert not is_loopback("maskd.local")


def test_make_observers_leaves_http_to_the_status_page():
    assert make_observers(Config.model_validate({"preview": {"http": "127.0.0.1:0"}})) == []


@pytest.mark.skipif(opencv_gui_backend() is not None or Path("/dev/fb0").exists(),
                    reason="this machine has a framebuffer or a GUI OpenCV")
def test_run_preview_flag_without_screen_is_exit_78():
    r = subprocess.run([sys.executable, "-m", "maskd", "run", "--preview", "--source", "demo"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 78
    assert r.stderr.strip().startswith("maskd run: --preview: no framebuffer at /dev/fb0")
    assert "preview.http: 127.0.0.1:8080" in r.stderr


# ------------------------------------------------------------------ a camera away


@pytest.mark.parametrize("from_start", [False, True])
def test_a_lost_camera_is_said_on_the_screen_and_the_page_not_a_frozen_live_picture(
        tmp_path, from_start):
    """The camera is unplugged under the real loop: the HDMI screen and the status page kept
    its last frame with '20.0 fps | 0 active violations' for the whole outage, looking live.
    Now the last picture is shown again under the line systemd's STATUS has, and the live
    view comes back with the camera. A camera away from the start (booted unplugged) showed
    nothing at all (the page's /frame.jpg: 503 for ever): now a black picture says so."""
    import threading
    import urllib.request

    from loop_parts import BlankCamera, service_for

    from maskd.annotate import camera_text
    from maskd.config import SourceConfig
    from maskd.preview import NO_FRAME_SIZE, encode_jpeg
    from maskd.sources import live_source
    from maskd.statuspage import StatusServer

    geo = FbGeometry(width=320, height=240, bits_per_pixel=16, stride=320 * 2)
    fb = tmp_path / "fb0"
    fb.write_bytes(b"\0" * geo.size_bytes)
    screen = FramebufferPreview(fb, geometry=geo, max_fps=50).start()
    page = StatusServer("127.0.0.1:0").start()
    view = page.attach("cam", "d", "c")
    cam = BlankCamera()
    if from_start:
        cam.present.clear()
    src = live_source("cam", cam.opener, SourceConfig())
    svc = service_for(src, [screen, view], [view])
    run = threading.Thread(target=svc.run, daemon=True)
    run.start()
    try:
        if not from_start:
            assert wait_until(lambda: svc.frames > 5, 10)
            cam.present.clear()  # unplugged
        # unplugged: its read fails, then its reopens (the reason the line gives from then on)
        assert wait_until(lambda: str(src.stats["camera_lost_why"]).startswith("cannot open"), 10)
        lost = LoopStats(camera_lost_since=src.stats["camera_lost_since"],
                         camera_lost_why=src.stats["camera_lost_why"], camera_reconnecting=True)
        assert camera_text(lost).startswith("camera lost since ")
        assert camera_text(lost).endswith(" (cannot open (No such device)); reconnecting")
        w, h = NO_FRAME_SIZE
        last = Frame(np.zeros((h, w, 3), np.uint8) if from_start
                     else np.full(cam.shape, 90, np.uint8), 0, 0.0)
        want = to_fb_bytes(render(last, [], lost, size=(geo.width, geo.height)), geo)
        assert wait_until(lambda: fb.read_bytes() == want, 5), "the screen does not say so"
        jpeg = urllib.request.urlopen(page.url + "frame.jpg", timeout=10).read()
        assert jpeg == encode_jpeg(render(last, [], lost)), "the page's picture does not say so"
        shown = screen.shown
        assert not wait_until(lambda: screen.shown > shown, 1.5)  # said once, not redrawn each wait
        cam.present.set()  # back: live frames again
        assert wait_until(lambda: screen.shown > shown and fb.read_bytes() != want, 10)
    finally:
        svc.stop()
        run.join(10)
        screen.close()


class Headers(ThreadedPreview):
    """A preview that keeps the header of every picture it is given."""

    def __init__(self) -> None:
        super().__init__(max_fps=50)
        self.said: list[str] = []

    def show(self, image):
        pass

    def on_frame(self, frame, verdicts, stats):
        from maskd.annotate import camera_text

        self.said.append(camera_text(stats))
        super().on_frame(frame, verdicts, stats)


def test_a_camera_without_a_first_frame_is_said_on_a_black_picture():
    """A driver whose first read hangs: the screen and the page showed nothing at all (no
    frame, not lost); now a black picture says what systemd's STATUS says, until frames come."""
    import threading

    from loop_parts import BlankCamera, service_for

    from maskd.config import SourceConfig
    from maskd.sources import live_source

    view = Headers().start()
    cam = BlankCamera()
    cam.hang_read.set()
    svc = service_for(live_source("cam", cam.opener, SourceConfig()), [view])
    run = threading.Thread(target=svc.run, daemon=True)
    run.start()
    try:
        assert wait_until(lambda: bool(view.said), 5)
        cam.hang_read.clear()
        assert wait_until(lambda: svc.frames >= 3, 10)
    finally:
        cam.hang_read.clear()
        svc.stop()
        run.join(10)
        view.close()
    assert view.said[0].startswith("waiting for the first frame since "), view.said
    assert view.said[-1].endswith("active violations"), view.said


def test_a_slow_camera_between_two_frames_is_no_outage():
    """The loop waits for the next frame of a 1.5 fps camera and says so (on_wait, no camera
    lost): the header is not redrawn as '0.0 fps' between each two frames (it flickered)."""
    import threading

    from loop_parts import BlankCamera, service_for

    from maskd.config import SourceConfig
    from maskd.sources import live_source

    view = Headers().start()
    src = live_source("cam", BlankCamera(fps=1.5).opener, SourceConfig())
    svc = service_for(src, [view])
    run = threading.Thread(target=svc.run, daemon=True)
    run.start()
    try:
        assert wait_until(lambda: svc.frames >= 5, 10)
    finally:
        svc.stop()
        run.join(10)
        view.close()
    measured = view.said[next(i for i, s in enumerate(view.said)  # before: the first frame's
                              if not s.startswith(("0.0 ", "waiting for the first frame"))):]
    assert len(measured) >= 3 and not any(s.startswith("0.0 fps") for s in measured), view.said


def test_a_camera_read_that_blocks_is_said_over_the_last_picture():
    """A driver whose read hangs (the camera neither lost nor sending): the last picture stood
    under its "20.0 fps" header until the watchdog's kill. Once no frame came for a gap
    (tracking.end_after_s, 1 s here) the header says so, with the time since the last frame."""
    import threading

    from loop_parts import BlankCamera, service_for

    from maskd.config import Config, SourceConfig
    from maskd.sources import live_source

    cfg = Config()
    cfg.tracking.end_after_s = 1.0
    view = Headers().start()
    cam = BlankCamera()
    svc = service_for(live_source("cam", cam.opener, SourceConfig()), [view], cfg=cfg)
    run = threading.Thread(target=svc.run, daemon=True)
    run.start()
    try:
        assert wait_until(lambda: svc.frames >= 5, 10)
        cam.hang_read.set()
        assert wait_until(lambda: any(s.startswith("no frame for 2 s") for s in view.said), 5)
        cam.hang_read.clear()
        n = len(view.said)
        assert wait_until(lambda: any(s.endswith("violations") for s in view.said[n:]), 5)
    finally:
        cam.hang_read.clear()
        svc.stop()
        run.join(10)
        view.close()
    stalled = [s for s in view.said if s.startswith("no frame for")]
    assert stalled[0].startswith("no frame for 1 s (since ") and "camera not answering" in stalled[0]
