"""Odd frames from cameras: each is turned into BGR once, at the source, or refused with a line
naming the camera and what is wrong; never read with the wrong colours."""

from __future__ import annotations

import io
import itertools
import logging
import sys
import threading
import time
import types

import cv2
import numpy as np
import pytest
from PIL import Image

from maskd.config import SourceConfig
from maskd.sources import (
    MAX_CORRUPT_IN_A_ROW,
    BadFrame,
    LiveSource,
    open_source,
    picamera2_formats,
    to_bgr,
)


def picture(h: int = 48, w: int = 64) -> np.ndarray:
    """A BGR picture with a red left half and a blue right half over a smooth ramp, so a swap
    of red and blue shows and a YUV round trip (chroma shared by 2x2 pixels) stays close."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:, :, 1] = np.linspace(40, 200, w, dtype=np.uint8)[None, :]
    img[:, : w // 2, 2] = 220  # red
    img[:, w // 2:, 0] = 220  # blue
    return img


# ------------------------------------------------------------------ to_bgr: any device's frame


def test_grey_bgra_views_and_read_only_frames_become_one_contiguous_bgr_picture():
    bgr = picture()
    grey = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    read_only = bgr.copy()
    read_only.flags.writeable = False
    wide = np.zeros((48, 80, 3), np.uint8)
    wide[:, 8:72] = bgr
    cases = {
        "grey": (grey, cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)),
        "grey, one channel": (grey[:, :, None], cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)),
        "BGRA (XRGB8888)": (bgra, bgr),
        "BGR": (bgr, bgr),
        "a crop of a wider buffer": (wide[:, 8:72], bgr),
        "every other pixel": (bgr[::2, ::2], bgr[::2, ::2].copy()),
        "read-only": (read_only, bgr),
    }
    for name, (raw, want) in cases.items():
        out = to_bgr(raw)
        assert out.shape == want.shape and out.dtype == np.uint8, name
        assert out.flags.c_contiguous, name
        assert np.array_equal(out, want), name


@pytest.mark.parametrize("raw, says", [
    (None, "no picture (the device returned NoneType)"),
    (np.zeros((0, 0, 3), np.uint8), "an empty frame"),
    (np.full((48, 64, 3), 40000, np.uint16), "uint16 pixels (shape (48, 64, 3)): maskd reads 8-bit"),
    (np.full((48, 64), 0.5, np.float32), "float32 pixels"),
    (np.zeros((48, 64, 2), np.uint8), "shape (48, 64, 2): not a grey, BGR or BGRA picture"),
    (np.zeros((48, 64, 5), np.uint8), "shape (48, 64, 5)"),
    (np.zeros((2, 48, 64, 3), np.uint8), "shape (2, 48, 64, 3)"),
    (np.zeros((1, 1), np.uint8), "1x1 pixels: too small"),
    (np.zeros((1, 1, 3), np.uint8), "1x1 pixels: too small"),
    (np.zeros((48, 1, 3), np.uint8), "1x48 pixels: too small"),
])
def test_a_frame_maskd_cannot_use_is_refused_saying_what_it_is(raw, says):
    """Was: one "corrupt or empty frame" for all of these, and a 1x1 grey frame passed."""
    with pytest.raises(BadFrame) as err:
        to_bgr(raw)
    assert says in str(err.value)


class OneKindCamera:
    """A capture handing out the same odd array every read."""

    def __init__(self, raw: np.ndarray):
        self.raw = raw

    def opener(self):
        return self

    def read(self):
        return True, self.raw.copy()

    def release(self):
        pass


def test_a_camera_giving_16_bit_frames_is_named_with_what_is_wrong_not_called_corrupt(caplog):
    cam = OneKindCamera(np.full((48, 64, 3), 40000, np.uint16))
    src = LiveSource("door-usb", cam.opener, reopen_min_s=0.01, reopen_max_s=0.02)
    reader = threading.Thread(target=src.read, daemon=True)  # read() returns no frame here
    with caplog.at_level(logging.WARNING, logger="maskd.sources"):
        reader.start()
        deadline = time.monotonic() + 5
        while src.stats["reopens"] < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        src.close()
        reader.join(5)
    assert src.stats["frames"] == 0 and src.stats["corrupt"] >= MAX_CORRUPT_IN_A_ROW
    assert src.stats["camera_lost_since"] is not None  # taken for lost, reopened with the backoff
    lines = [r.getMessage() for r in caplog.records if r.name == "maskd.sources"]
    assert any(m.startswith("door-usb: frame skipped: uint16 pixels") and "8-bit" in m
               for m in lines), lines
    assert len([m for m in lines if "frame skipped" in m]) == 1  # once, then rate-limited


def test_a_video_file_frame_of_an_unusable_kind_is_skipped_saying_what_it_is(tmp_path, caplog):
    from maskd.sources import VideoFileSource

    path = tmp_path / "clip.avi"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for _ in range(3):
        w.write(picture())
    w.release()
    src = VideoFileSource(path, camera="door")

    class Odd:
        """OpenCV's capture, its second frame handed out as 16-bit."""

        def __init__(self, cap):
            self.cap, self.n = cap, 0

        def read(self):
            ok, raw = self.cap.read()
            self.n += 1
            return ok, (raw.astype(np.uint16) if ok and self.n == 2 else raw)

        def release(self):
            self.cap.release()

        def get(self, prop):  # the file's frame count and position, as OpenCV's
            return self.cap.get(prop)

    src._cap = Odd(src._cap)
    with caplog.at_level(logging.WARNING, logger="maskd.sources"):
        frames = [src.read() for _ in range(3)]
    assert [f is not None for f in frames] == [True, True, False]
    assert src.stats["corrupt"] == 1
    assert f"door ({path}): frame skipped: uint16 pixels" in caplog.text  # the camera's name


# ------------------------------------------------------------------ picamera2's formats


def as_picamera2(bgr: np.ndarray, fmt: str, stride_px: int) -> np.ndarray:
    """``bgr`` as picamera2's capture_array hands out a main stream of format ``fmt``
    (Helpers.make_array): R,G,B / B,G,R(,X) arrays of the stream's width, YUV420 as planes of
    (h * 3/2, stride) bytes, YUYV as (h, stride / 2, 2); YUV rows padded to ``stride_px``
    pixels as libcamera pads them. MJPEG: ``as_mjpeg_buffer``."""
    h, w = bgr.shape[:2]
    if fmt == "RGB888":
        return bgr.copy()
    if fmt == "BGR888":
        return np.ascontiguousarray(bgr[:, :, ::-1])
    if fmt == "XRGB8888":
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    if fmt == "XBGR8888":
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA)
    padded = np.zeros((h, stride_px, 3), np.uint8)
    padded[:, :w] = bgr
    padded[:, w:] = (0, 255, 0)  # padding that would show as green
    i420 = cv2.cvtColor(padded, cv2.COLOR_BGR2YUV_I420)
    y = i420[:h]
    u = i420[h:h + h // 4].reshape(h // 2, stride_px // 2)
    v = i420[h + h // 4:].reshape(h // 2, stride_px // 2)
    if fmt == "YUV420":
        return i420
    if fmt == "YVU420":
        return np.concatenate([y, v.reshape(-1, stride_px), u.reshape(-1, stride_px)])
    assert fmt == "YUYV"
    out = np.empty((h, stride_px, 2), np.uint8)
    out[:, :, 0] = y
    out[:, 0::2, 1] = np.repeat(u, 2, axis=0)
    out[:, 1::2, 1] = np.repeat(v, 2, axis=0)
    return out


def as_mjpeg_buffer(jpeg: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """A JPEG as picamera2's capture_buffer hands out an MJPEG main stream: 1-D bytes the size
    of the whole buffer (as big as the picture's BGR, at least), the JPEG at its start, zeros
    after it."""
    buf = np.zeros(max(len(jpeg), int(np.prod(shape))), np.uint8)
    buf[:len(jpeg)] = np.frombuffer(jpeg, np.uint8)
    return buf


def jpeg_of(bgr: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()


def stand_in_picamera2(monkeypatch, bgr: np.ndarray, agreed: str, calls: dict,
                       jpegs: list[bytes] | None = None) -> None:
    """A picamera2 module whose camera agrees to the format ``agreed`` whatever is asked (as
    libcamera adjusts a request to what the camera has) and hands out ``bgr`` in it; an MJPEG
    camera hands out ``jpegs`` in turn (default: ``bgr``'s), and its capture_array decodes one
    with PIL as picamera2's does (Helpers.make_array), raising on a broken one."""
    frames = iter(itertools.cycle(jpegs or [jpeg_of(bgr)]))

    class StandInPicamera2:
        # libcamera's USB (UVC) cameras advertise no FrameDurationLimits (its uvcvideo pipeline)
        camera_controls = ({"AeEnable": None, "Brightness": None}
                           if agreed in ("YUYV", "MJPEG") else
                           {"AeEnable": None, "FrameDurationLimits": None})

        @staticmethod
        def global_camera_info():
            return [{"Model": "uvc", "Id": "/base/usb@1"}]

        def __init__(self, camera_num=0):
            calls["camera_num"] = camera_num

        def create_video_configuration(self, main, controls):
            calls["asked"] = dict(main)
            return {"main": dict(main), "controls": controls}

        def configure(self, config):
            # as picamera2's configure: FrameRate is FrameDurationLimits, refused where the
            # camera does not advertise it
            for name in config["controls"]:
                real = "FrameDurationLimits" if name == "FrameRate" else name
                if real not in self.camera_controls:
                    raise RuntimeError(f"Control {real} is not advertised by libcamera")
            self.camera_config = {"main": dict(config["main"], format=agreed)}

        def start(self):
            calls["started"] = True

        def capture_buffer(self, stream):
            time.sleep(0.01)
            assert agreed == "MJPEG", "maskd reads only MJPEG's raw buffer"
            return as_mjpeg_buffer(next(frames), bgr.shape)

        def capture_array(self, stream):
            if agreed == "MJPEG":
                return np.array(Image.open(io.BytesIO(self.capture_buffer(stream))))
            time.sleep(0.01)
            return as_picamera2(bgr, agreed, stride_px=bgr.shape[1] + 64)

        def stop(self):
            pass

        def close(self):
            calls["closed"] = True

    monkeypatch.setitem(sys.modules, "picamera2",
                        types.SimpleNamespace(Picamera2=StandInPicamera2))


@pytest.mark.parametrize("fmt", sorted(picamera2_formats()))
def test_each_format_picamera2_can_deliver_arrives_as_the_same_bgr_picture(monkeypatch, fmt):
    """maskd asks for RGB888 (B,G,R in memory); libcamera may agree to another format (a USB
    camera: YUYV or MJPEG), and picamera2 then hands that out. Was: read as if it were RGB888, so
    red and blue swapped places (BGR888, XBGR8888, MJPEG), YUV420 became a grey picture half again
    as tall, and YUYV frames were all "corrupt" for ever."""
    bgr = picture()
    calls: dict = {}
    stand_in_picamera2(monkeypatch, bgr, fmt, calls)
    src = open_source(SourceConfig(kind="picamera2", width=64, height=48, fps=10))
    give_up = threading.Timer(10.0, src.close)  # a frame that never comes fails, not hangs
    give_up.start()
    try:
        frame = src.read()
    finally:
        give_up.cancel()
        src.close()
    assert frame is not None, "no frame in 10 s"
    assert calls["asked"]["format"] == "RGB888"
    assert frame.image.shape == bgr.shape and frame.image.flags.c_contiguous
    diff = np.abs(frame.image.astype(int) - bgr.astype(int))
    if fmt in ("RGB888", "BGR888", "XRGB8888", "XBGR8888"):
        assert diff.max() == 0
    else:  # YUV, JPEG: chroma shared by neighbours, rounding; the padding's green never shows
        assert diff.mean() < 6, diff.mean()
    left, right = frame.image[:, :8].mean(axis=(0, 1)), frame.image[:, -8:].mean(axis=(0, 1))
    assert left[2] > 180 > left[0] and right[0] > 180 > right[2]  # red left, blue right


def test_a_broken_jpeg_from_an_mjpeg_camera_is_one_frame_skipped_not_a_lost_camera(
        monkeypatch, caplog):
    """A USB webcam listed by libcamera gives MJPEG; one JPEG broken on the way (cut short before
    its picture data, its start lost). Was: picamera2's own decode raised inside capture_array, maskd
    logged "read raised ..." as for an unplugged camera and reopened it; now the broken frame
    is skipped, counted as corrupt and named, with the camera's name first, and the frames
    around it arrive."""
    bgr = picture()
    good = jpeg_of(bgr)
    cut = good[:good.index(b"\xff\xda")]  # cut short before its picture data
    no_header = bytes(8) + good[8:]  # the start lost
    calls: dict = {}
    stand_in_picamera2(monkeypatch, bgr, "MJPEG", calls, [good, cut, good, no_header, good])
    src = open_source(SourceConfig(kind="picamera2", width=64, height=48, fps=10,
                                   reopen_min_s=0.01, reopen_max_s=0.02), camera="door")
    give_up = threading.Timer(10.0, src.close)
    give_up.start()
    try:
        with caplog.at_level(logging.INFO, logger="maskd.sources"):
            frames = [src.read() for _ in range(6)]
    finally:
        give_up.cancel()
        src.close()
    assert all(f is not None and np.abs(f.image.astype(int) - bgr).mean() < 6 for f in frames)
    stats = src.inner.stats
    assert stats["corrupt"] >= 2 and stats["read_errors"] == 0 and stats["reopens"] == 0, stats
    assert stats["camera_lost_since"] is None
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines and all(m.startswith("door (picamera2): frame skipped: a JPEG that cannot be "
                                      "decoded (") for m in lines), lines
    assert "raised" not in caplog.text and "reopen" not in caplog.text


def test_the_frame_skipped_line_starts_with_the_cameras_name(monkeypatch, caplog):
    """With several cameras the operator thinks in camera names (``cameras: {door: ...}``):
    the line about a frame skipped starts with it, as the loop's lines do, the source in
    brackets (was: ``/dev/video0: frame skipped: ...``), for a camera and a video file alike,
    and the real loop passes its camera's name to its source."""
    from maskd.config import Config
    from maskd.service import _camera_loop
    from maskd.sources import frame_line_name

    assert frame_line_name("/dev/video0", "door") == "door (/dev/video0)"
    assert frame_line_name("/dev/video0", None) == "/dev/video0"  # no camera name given
    cam = OneKindCamera(np.full((48, 64, 3), 40000, np.uint16))
    live = LiveSource("/dev/video0", cam.opener, reopen_min_s=0.01, camera="door")
    stand_in_picamera2(monkeypatch, picture(), "MJPEG", {}, [b"not a jpeg"])
    cfg = Config()
    cfg.camera = "back"
    cfg.source = SourceConfig(kind="picamera2", width=64, height=48, fps=10)
    loop = _camera_loop(cfg, None, None, None, list, None, True, None)
    reader = threading.Thread(target=live.read, daemon=True)
    with caplog.at_level(logging.WARNING, logger="maskd.sources"):
        reader.start()
        deadline = time.monotonic() + 5
        while ("back (picamera2): frame skipped" not in caplog.text
               or "door (/dev/video0): frame skipped" not in caplog.text) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        live.close()
        loop.source.close()
        reader.join(5)
    assert "door (/dev/video0): frame skipped: uint16 pixels" in caplog.text
    assert "back (picamera2): frame skipped: a JPEG that cannot be decoded" in caplog.text


def test_a_format_maskd_cannot_read_is_refused_at_the_open_naming_it(monkeypatch, caplog):
    calls: dict = {}
    stand_in_picamera2(monkeypatch, picture(), "NV12", calls)
    src = open_source(SourceConfig(kind="picamera2", width=64, height=48, fps=10,
                                   reopen_min_s=0.01, reopen_max_s=0.02))
    with caplog.at_level(logging.WARNING, logger="maskd.sources"):
        deadline = time.monotonic() + 5
        while "NV12" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
        src.close()
    assert "picamera2: cannot open (the camera gives NV12 frames, which maskd cannot read" in \
        caplog.text
    assert "source kind opencv" in caplog.text
    assert "started" not in calls and calls["closed"]



# ------------------------------------------------------------------ the real models


def test_odd_but_usable_frames_go_through_the_real_detector_and_classifier(default_model,
                                                                            yunet_model):
    """Each frame as a camera may hand it out, through ``to_bgr`` into the real pipeline (YuNet,
    the shipped classifier): the bare face is found and judged ``no_mask`` wherever the picture
    holds it, and a picture without one (black, white, 2x2) gives no face and no error."""
    from maskd.classifier import Classifier
    from maskd.config import Config
    from maskd.detectors import make_detector
    from maskd.pipeline import Pipeline
    from maskd.types import Frame

    skimage_data = pytest.importorskip("skimage.data")
    photo = np.ascontiguousarray(skimage_data.astronaut()[:, :, ::-1])  # 512x512, one bare face
    read_only = photo.copy()
    read_only.flags.writeable = False
    with_face = {
        "BGR": photo,
        "BGRA": cv2.cvtColor(photo, cv2.COLOR_BGR2BGRA),
        "grey": cv2.cvtColor(photo, cv2.COLOR_BGR2GRAY),
        "4056x3040": cv2.resize(photo, (4056, 3040)),
        "641x479": cv2.resize(photo, (641, 479)),
        "only the face": cv2.resize(photo[60:190, 160:290], (320, 320)),
        "read-only": read_only,
        "every other pixel": photo[::2, ::2],
        "mirrored view": photo[:, ::-1],
    }
    without = {"black": np.zeros_like(photo), "white": np.full_like(photo, 255),
               "2x2": photo[:2, :2]}
    cfg = Config()
    cfg.detector = cfg.detector.model_copy(update={"kind": "yunet", "model": yunet_model})
    detector, classifier = make_detector(cfg.detector), Classifier.open(default_model, 1)
    for name, raw in {**with_face, **without}.items():
        pipe = Pipeline(cfg, detector, classifier)
        verdicts = pipe.process(Frame(to_bgr(raw), 0, 1000.0)).verdicts
        if name in without:
            assert verdicts == [], name
            continue
        assert len(verdicts) == 1 and verdicts[0].label == "no_mask", (name, verdicts)



@pytest.mark.parametrize("listed, said", [
    ([], "cannot open (libcamera lists no camera: is its cable in"),
    ([{"Model": "imx708", "Id": "/base/i2c@1/imx708@1a", "Num": 0}],
     "cannot open (the camera did not open: Pipeline handler in use by another process; is "
     "another program using it"),
])
def test_a_missing_or_busy_pi_camera_is_said_in_words(monkeypatch, listed, said):
    """picamera2 itself raised "list index out of range" for no camera, and "Camera __init__
    sequence did not complete." (the cause only in its context) for one another program
    holds: the open retried for ever saying just that."""

    class StandInPicamera2:
        @staticmethod
        def global_camera_info():
            return listed

        def __init__(self, camera_num=0):
            self.global_camera_info()[camera_num]["Num"]  # as picamera2's __init__ starts
            try:  # as its _open_camera fails inside __init__'s try
                raise RuntimeError("Pipeline handler in use by another process")
            except RuntimeError:
                raise RuntimeError("Camera __init__ sequence did not complete.")  # noqa: B904

    monkeypatch.setitem(sys.modules, "picamera2",
                        types.SimpleNamespace(Picamera2=StandInPicamera2))
    assert why_it_never_opens(None).startswith(said)


def why_it_never_opens(uri: str | None) -> str:
    """What a picamera2 source that never opens says, after 0.3 s of tries."""
    src = open_source(SourceConfig(kind="picamera2", uri=uri, width=64, height=48, fps=10,
                                   reopen_min_s=0.01, reopen_max_s=0.02))
    try:
        threading.Timer(0.3, src.close).start()
        assert src.read() is None
    finally:
        src.close()
    return src.inner.stats["camera_lost_why"] or ""


def test_a_pi_with_two_cameras_runs_both_by_their_numbers(monkeypatch):
    """A Pi 5 has two camera ports: `source.kind: picamera2` always opened camera 0, and two
    such cameras in a cameras: map were refused as one source. uri is now the camera's number
    (as `rpicam-hello --list-cameras` numbers them); one libcamera does not list is said so."""
    from maskd.config import ConfigError, parse_config

    cfg = parse_config({"cameras": {"front": {"source": {"kind": "picamera2", "uri": "0"}},
                                    "back": {"source": {"kind": "picamera2", "uri": "1"}}}})
    assert [c.source.camera_num for c in cfg.cameras_resolved()] == [0, 1]
    with pytest.raises(ConfigError, match="two cameras|same source|both"):
        parse_config({"cameras": {"front": {"source": {"kind": "picamera2"}},
                                  "back": {"source": {"kind": "picamera2", "uri": "0"}}}})
    with pytest.raises(ConfigError, match="takes uri only as the camera's number"):
        parse_config({"source": {"kind": "picamera2", "uri": "/dev/video0"}})
    bgr = picture()
    calls: dict = {}
    stand_in_picamera2(monkeypatch, bgr, "RGB888", calls)  # lists one camera
    assert why_it_never_opens("1").startswith(
        "cannot open (libcamera lists 1 camera(s), numbered from 0: there is no camera 1")
    src = open_source(SourceConfig(kind="picamera2", uri="0", width=64, height=48, fps=10))
    try:
        assert src.read() is not None and calls["camera_num"] == 0
    finally:
        src.close()
