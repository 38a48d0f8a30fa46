"""Frame sources: the Pi camera (picamera2), anything OpenCV opens, and folders of images.

Every source hands out ``maskd.types.Frame`` records (BGR uint8, ``seq`` from 0, capture timestamp;
live ones also the time since boot, so a step of the wall clock can be told from time passing)
through one small interface (``Source``). Two behaviours matter on a building entrance:

* A live source (camera, stream) must survive the real world: an unplugged USB camera, a dropped
  RTSP stream or a corrupt frame is logged, counted and the device reopened with exponential
  backoff, without ever raising out of ``read()``.
* The detection loop must never fall behind a live camera, so live sources are wrapped in
  ``LatestFrame``: a grabber thread keeps only the newest frame and counts the ones it dropped.

File sources (a video file, a folder of images) instead deliver every frame in order, once or in
a loop; their timestamps advance by 1/fps per frame from the start time, so tracking time-outs
behave the same whether a clip is processed faster or slower than real time.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import math
import os
import stat
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np

from maskd.clock import local_iso, system_clock
from maskd.config import SourceConfig, excerpt, shown_uri
from maskd.env import realtime
from maskd.files import dangling_link, open_regular
from maskd.images import (
    FolderError,
    ImageError,
    is_image_name,
    load_image_rgb,
    no_images,
    one_field,
    search_images,
)
from maskd.lograte import RateLimitedLog
from maskd.mailbox import Mailbox
from maskd.types import Frame, Source, SourceError

log = logging.getLogger("maskd.sources")

# What `scan` reads as a video (a name it was given; anything else is tried as an image): also
# NVR and camcorder exports (.ts, .mts, raw .h264) and old phones' .3gp, which `run` played but
# scan took for images ("not an image PIL can read").
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".mov", ".m4v", ".webm", ".mjpeg", ".mjpg",
                            ".ts", ".mts", ".m2ts", ".h264", ".264", ".h265", ".hevc", ".3gp",
                            ".mpg", ".mpeg", ".wmv", ".flv"})
# A file rate at or above this is no camera's: the file's own frame times that far apart (an
# AVI's are its header's rate, frame by frame) are no real times either (the 1% spares 960 fps).
MAX_FILE_FPS = 1000.0
MIN_FILE_STEP_S = 1.01 / MAX_FILE_FPS
# The longest a real-time file or folder waits for a frame (``Pace``): the loop hears a stop,
# and vouches to systemd's watchdog, only between frames.
PACE_MAX_WAIT_S = 5.0
MAX_CORRUPT_IN_A_ROW = 5  # a live device giving this many bad frames in a row is reopened
# A reconnect that shows no sign of life this long (an open stuck in the driver) is a hang, not
# an outage: the loop then stops vouching for it to systemd's watchdog. Longer than the 10 s
# stream open/read timeouts, shorter than the default WatchdogSec=30.
RECONNECT_STALL_S = 20.0
# A network stream that sends nothing this long (a camera rebooting, a network that drops
# packets without closing the connection) is reopened; opening one waits as long.
STREAM_TIMEOUT_MS = 10_000
BACKOFF_TICK_S = 1.0  # a backoff wait shows a sign of life at least this often
# OpenCV's FFmpeg backend opens one capture at a time in a process (a global lock inside it):
# stream opens take their turn here instead, where the wait shows a sign of life, so a camera
# queued behind other cameras' hung opens is not taken for a hang itself (LiveSource).
_STREAM_OPENS = threading.Lock()
# An outage ends only once frames have come for this long without a failure: then the backoff
# starts again from reopen_min_s and camera_lost_since is forgotten. A stream that gives a
# frame or two after each connect and drops again (a camera's overloaded web server, a flaky
# link) stays one outage, retried ever more slowly, instead of being reopened every second for
# ever. Time, not a frame count, since cameras run at anything from 1 to 30 frames/s; as long
# as the stream timeout, so a stream that merely delivers the frames buffered before a stall
# does not count as back.
STEADY_S = 10.0
# The frozen check (LiveSource, source.frozen_after_s) compares every n-th pixel of every n-th
# row, about this many rows: a few thousand bytes per frame, ~20 us on any frame size. A live
# sensor's noise changes a third or more of them from frame to frame even when 0.5 grey levels
# and after JPEG at quality 50 (tests/test_sources.py); a frozen stream changes none.
FROZEN_SAMPLE_ROWS = 48


class Capture(Protocol):
    """The low-level device interface a live source reopens (cv2.VideoCapture has this shape).

    ``read`` may raise BadFrame for a frame that came but cannot be decoded (a broken JPEG): it
    is skipped and counted as ``corrupt``, as one ``to_bgr`` refuses; anything else it raises
    is a failed read, and the device is reopened.
    """

    def read(self) -> tuple[bool, np.ndarray | None]: ...

    def release(self) -> None: ...


Opener = Callable[[], Capture]  # opens the device or raises (SourceError/OSError/RuntimeError)


def _new_stats() -> dict:
    # reopens: a live camera's (each try); loops: a looping file's passes started again, not
    # counted as reopens (was: the status page's and /metrics' "times a live camera was
    # reopened" grew by one every replay of a looping clip, thousands a day)
    return {"frames": 0, "skipped": 0, "reopens": 0, "loops": 0, "corrupt": 0, "read_errors": 0}


def frozen_sample(image: np.ndarray) -> np.ndarray:
    """The pixels the frozen check compares: a strided copy, not a resize, so the sensor's
    noise is kept (averaging it away would make a still scene look frozen)."""
    step = max(1, image.shape[0] // FROZEN_SAMPLE_ROWS)
    return image[::step, ::step].copy()


class BadFrame(ValueError):
    """A frame a device handed out that maskd cannot use; the message says what is wrong with it
    (a live source skips it, logs that and counts it as ``corrupt``)."""


MIN_FRAME_PX = 2  # a frame narrower or lower than this holds no picture


def frame_line_name(source: str, camera: str | None) -> str:
    """What a line about one of a source's frames starts with: the camera's name from the
    config, as the camera loop's own lines do, and the source in brackets (``door
    (/dev/video0)``); the source alone where no camera name is given (was: the source alone,
    ``/dev/video0: frame skipped: ...``, while with several cameras the operator thinks in
    camera names)."""
    return source if camera is None or camera == source else f"{camera} ({source})"


def to_bgr(image: object) -> np.ndarray:
    """What a device returned as every stage takes a frame: (H, W, 3) BGR uint8, C-contiguous.

    Grey (2-D or one channel) and BGRA (4 channels: XRGB8888, a PNG) are converted, a strided
    view (a crop, a flip) is copied once here rather than by every stage; anything else raises
    BadFrame naming what the frame is (was: 16-bit, float and 2-channel frames were all
    "corrupt or empty", and a 1x1 grey frame passed while a 1x1 colour one did not).
    """
    import cv2

    if not isinstance(image, np.ndarray):
        raise BadFrame(f"no picture (the device returned {type(image).__name__})")
    if image.size == 0:
        raise BadFrame(f"an empty frame (shape {image.shape})")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3, 4)):
        raise BadFrame(f"shape {image.shape}: not a grey, BGR or BGRA picture")
    if image.dtype != np.uint8:
        raise BadFrame(f"{image.dtype} pixels (shape {image.shape}): maskd reads 8-bit frames; "
                       "set the camera to an 8-bit format")
    if min(image.shape[:2]) < MIN_FRAME_PX:
        raise BadFrame(f"{image.shape[1]}x{image.shape[0]} pixels: too small to hold a picture")
    if image.ndim == 2 or image.shape[2] == 1:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(image)


class Backoff:
    """Exponential delay between reopen attempts, interruptible by a stop event.

    ``beat`` (monotonic) moves at least every BACKOFF_TICK_S while waiting, so a controlled wait
    can be told from a thread stuck in a driver.
    """

    def __init__(self, min_s: float, max_s: float, stop: threading.Event):
        self.min_s = min_s
        self.max_s = max(max_s, min_s)
        self.next_s = min_s
        self.beat = time.monotonic()
        self._stop = stop

    def wait(self) -> bool:
        """Sleep the current delay (then double it); False when stopped meanwhile."""
        delay = self.next_s
        self.next_s = min(self.next_s * 2.0, self.max_s)
        deadline = time.monotonic() + delay
        while True:
            self.beat = time.monotonic()
            left = deadline - self.beat
            if left <= 0:
                return True
            if self._stop.wait(min(left, BACKOFF_TICK_S)):
                return False

    def reset(self) -> None:
        self.next_s = self.min_s

    def due(self) -> bool:
        """Without waiting: whether the current delay has passed since the last try that was
        due (or since made); then the delay doubles. For a loop that must go on doing other
        things between tries (an idle loop tells the watchdog it is alive)."""
        now = time.monotonic()
        if now - self.beat < self.next_s:
            return False
        self.beat, self.next_s = now, min(self.next_s * 2.0, self.max_s)
        return True


class LiveSource:
    """A camera or stream that is reopened with backoff whenever it fails.

    ``opener`` builds a fresh ``Capture``; it is called lazily on the first ``read()`` and after
    every failure, so a camera that is absent at start is waited for, not fatal. While no frames
    come, ``stats["camera_lost_since"]`` holds when the outage began (ISO 8601) and
    ``reconnecting`` is True while the reopen loop shows signs of life. An outage ends only after
    STEADY_S of frames: until then a new failure shows the same start again and the backoff
    keeps growing. Repeated failure lines are rate-limited (maskd.lograte).

    A picture that stays exactly the same for ``frozen_after_s`` (None: never) is a frozen
    camera, an outage like the others: lost since the picture came, reopened with the backoff,
    and none of its frames delivered until the picture changes.
    """

    is_live = True

    def __init__(self, name: str, opener: Opener, reopen_min_s: float = 1.0,
                 reopen_max_s: float = 30.0, stream: bool = False,
                 frozen_after_s: float | None = None, camera: str | None = None):
        self.name = name
        self.camera = camera  # the config's name for it, which starts its lines about frames
        self._stream = stream  # opens take their turn (_STREAM_OPENS)
        self.stats = _new_stats()
        self.stats["camera_lost_since"] = None
        # why no frame comes while it is lost: the last failure's words (an open that fails, a
        # read that fails, frames maskd refuses, a frozen picture); the status line shows it
        self.stats["camera_lost_why"] = None
        self._opener = opener
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards the capture against close() from another thread
        self._cap: Capture | None = None
        self._backoff = Backoff(reopen_min_s, reopen_max_s, self._stop)
        self._seq = 0
        self._bad_in_a_row = 0
        self._failed_before = False  # the next successful open counts as a reopen
        # (wall time, time since boot) the outage began, None when steady; its length is told by
        # the second: NTP's first sync during an outage made it months long in the log
        self._lost_at: tuple[float, float] | None = None
        self._flowing_since: float | None = None  # monotonic, first frame since the last open
        self._opened_at: float | None = None  # monotonic, the open while no frame came since
        self._open_waited = False  # that open (FFmpeg's probe) waited out the stream time-out
        # (wall time, time since boot) of the last good frame: a read that fails after a stall
        # (the stream timeout) began the outage then, not when the read gave up
        self._last_frame_at: tuple[float, float] | None = None
        self._reopens_at_loss = 0  # stats["reopens"] when the outage began
        self._beat = time.monotonic()
        self._say = RateLimitedLog(log)
        self._frozen_after_s = frozen_after_s
        self._picture: np.ndarray | None = None  # the last frame's frozen_sample
        self._picture_since = (0.0, 0.0)  # (wall, monotonic) of the first frame showing it
        self._frozen = False

    @property
    def who(self) -> str:
        """What its lines start with: the camera's name, the source in brackets (with several
        cameras the operator thinks in camera names; the status line names the camera too)."""
        return frame_line_name(self.name, self.camera)

    @property
    def reconnecting(self) -> bool:
        """Camera lost and the reopen loop alive (waiting out a backoff or trying to open)."""
        beat = max(self._beat, self._backoff.beat)
        lost = self.stats["camera_lost_since"] is not None
        return lost and time.monotonic() - beat < RECONNECT_STALL_S

    def _lost(self, why: str, since: float | None = None, ago: float = 0.0) -> None:
        """No frames now, for ``why`` (the newest failure's words): the outage begins (``ago``
        seconds back, at wall time ``since``, else now), or one that had not ended yet goes on."""
        self.stats["camera_lost_why"] = why
        self._flowing_since = None
        if self._lost_at is None:
            wall, boot = system_clock()
            self._lost_at = (wall if since is None else since, boot - ago)
            self._reopens_at_loss = self.stats["reopens"]
        self.stats["camera_lost_since"] = local_iso(self._lost_at[0])

    def _found(self) -> None:
        """A good frame: no longer lost now; the outage ends once frames stay for STEADY_S."""
        now = time.monotonic()
        if self.stats["camera_lost_since"] is not None:
            self.stats["camera_lost_since"] = self.stats["camera_lost_why"] = None
            assert self._lost_at is not None
            self._say(logging.INFO, "found", "%s: frames again after %.1f s", self.who,
                      system_clock()[1] - self._lost_at[1])
        if self._flowing_since is None:
            self._flowing_since = now
        if self._lost_at is not None and now - self._flowing_since >= STEADY_S:
            reopens = self.stats["reopens"] - self._reopens_at_loss
            if reopens > 1 or self._say.held():  # it dropped out more than once: sum it up
                outage = system_clock()[1] - self._lost_at[1] - (now - self._flowing_since)
                log.info("%s: steady again for %.0f s after an outage of %.0f s (%d reopens)",
                         self.who, now - self._flowing_since, outage, reopens)
            self._lost_at = None
            self._backoff.reset()
            self._say.reset()

    def read(self) -> Frame | None:
        while not self._stop.is_set():
            self._beat = time.monotonic()
            cap = self._cap
            if cap is None:
                cap = self._open()
                if cap is None:
                    continue
            with self._lock:
                if self._stop.is_set():
                    break
                bad: BadFrame | None = None
                failure = "read failed (device unplugged or stream dropped)"  # when not ok
                began = time.monotonic()
                raised = False
                try:
                    ok, raw = cap.read()
                except BadFrame as err:  # a frame came, one that cannot be decoded: skipped
                    ok, raw, bad = True, None, err
                except Exception as err:  # a device driver can raise anything
                    ok, raw, raised = False, None, True
                    self._say(logging.WARNING, "raised", "%s: read raised %s: %s", self.who,
                              type(err).__name__, err)
                    failure = f"read raised {type(err).__name__}: {err}"
            ts, since_boot = system_clock()
            if not ok and not raised and self._skippable(began):
                # A damaged frame in a stream that goes on (OpenCV's read says False for an
                # MJPEG part that does not decode): skipped, as one to_bgr refuses. Dropping
                # the connection at each took the camera for lost, and one such frame every
                # few seconds grew the backoff towards reopen_max_s.
                self.stats["read_errors"] += 1
                self._bad_in_a_row += 1
                self._say(logging.WARNING, "corrupt", "%s: frame skipped: a read that failed at "
                          "once (a damaged frame?) (%d in a row)",
                          self.who, self._bad_in_a_row)
                continue
            if not ok:
                self.stats["read_errors"] += 1
                if self._bad_in_a_row and not raised:  # a stream of nothing but damaged frames?
                    failure = (f"read failed {self._bad_in_a_row + 1} times in a row (damaged "
                               "frames, or the device unplugged or the stream dropped)")
                if self._stream and self._opened_at is not None and not raised \
                        and (self._open_waited or not at_once(began)):
                    # FFmpeg waited a time-out for a picture it could decode, in the open's
                    # probe or this read (the probe's wait, then reads failing at once on
                    # frames that need the key frame, is the common case); a camera that
                    # hangs up fails both at once
                    failure = self._no_picture_why()
                self._say(logging.WARNING, "failed", "%s: %s; reopening", self.who, failure)
                self._drop(cap, failure, self._last_frame_at)
                continue
            try:
                if bad is not None:
                    raise bad
                image = to_bgr(raw)
            except BadFrame as err:
                self.stats["corrupt"] += 1
                self._bad_in_a_row += 1
                self._say(logging.WARNING, "corrupt", "%s: frame skipped: %s (%d in a row)",
                          self.who, err, self._bad_in_a_row)
                if self._bad_in_a_row >= MAX_CORRUPT_IN_A_ROW:
                    self._drop(cap, f"{self._bad_in_a_row} frames in a row maskd cannot use: {err}")
                continue
            self._bad_in_a_row = 0
            if self._stream and time.monotonic() - began >= STREAM_TIMEOUT_MS / 1000:
                # a frame that came only after the stream time-out had waited behind a stall
                # (FFmpeg hands out the part it held when its wait is cut): the picture from
                # before the stall, not now; the next one is
                self.stats["skipped"] += 1
                continue
            self._opened_at = None
            if self._is_frozen(image, ts):
                self._drop(cap, self.stats["camera_lost_why"])
                continue
            self._found()
            self._last_frame_at = (ts, since_boot)
            frame = Frame(image=image, seq=self._seq, timestamp=ts, source=self.name,
                          since_boot=since_boot)
            self._seq += 1
            self.stats["frames"] += 1
            return frame
        self._release()
        return None

    def _no_picture_why(self) -> str:
        """Why a stream that opened gave no picture before its reads failed: a camera joined
        mid-GOP sends only frames that cannot be decoded until its next key frame, and FFmpeg
        gives up after STREAM_TIMEOUT_MS (was: "device unplugged or stream dropped" while the
        stream flowed, each reopen joining mid-GOP again)."""
        assert self._opened_at is not None
        return (f"opened, but no picture came in {time.monotonic() - self._opened_at:.0f} s: "
                "the stream sends none, or its key frames are further apart than "
                f"{STREAM_TIMEOUT_MS / 1000:g} s (set the camera's I-frame interval, GOP, to "
                "2 s or less; H.264+ / smart codec stretch it)")

    def _skippable(self, began: float) -> bool:
        """Whether a failed read is a damaged frame to skip: it returned well before the stream
        time-out (a stall's read waits that out), and fewer than MAX_CORRUPT_IN_A_ROW bad frames
        in a row (a closed stream or an unplugged device fails at once, every time)."""
        return self._bad_in_a_row + 1 < MAX_CORRUPT_IN_A_ROW and at_once(began)

    def _is_frozen(self, image: np.ndarray, ts: float) -> bool:
        """Whether this frame shows the picture that has not changed for frozen_after_s (the
        camera is lost from when it came); a changed picture ends that."""
        if self._frozen_after_s is None:
            return False
        sample = frozen_sample(image)
        if self._picture is None or not np.array_equal(sample, self._picture):
            if self._frozen:
                self._frozen = False
                log.info("%s: the picture changes again (frozen since %s)", self.who,
                         local_iso(self._picture_since[0]))
            self._picture, self._picture_since = sample, (ts, time.monotonic())
            return False
        if self._frozen:
            return True
        since, since_mono = self._picture_since
        if time.monotonic() - since_mono < self._frozen_after_s:
            return False
        self._frozen = True
        flat = " (one flat colour: lens covered, or dark?)" if np.ptp(sample) == 0 else ""
        self._lost(f"frozen: the same picture since {local_iso(since)}{flat}", since,
                   time.monotonic() - since_mono)
        log.warning("%s: frozen: the same picture since %s%s; taken as lost, reopening", self.who,
                    local_iso(since), flat)
        return True

    def _open(self) -> Capture | None:
        """Open the device once; on failure log, wait the backoff delay and return None."""
        if self._failed_before:
            self.stats["reopens"] += 1
        try:
            cap = self._open_in_turn()
        except Exception as err:  # report any open failure and keep trying
            if self._stop.is_set():
                return None
            self._failed_before = True
            self._lost(f"cannot open ({err})")
            self._say(logging.WARNING, "open", "%s: cannot open (%s); retrying in %.1f s",
                      self.who, err, self._backoff.next_s)
            self._backoff.wait()
            return None
        if self._failed_before:
            self._say(logging.INFO, "reopened", "%s: reopened", self.who)
        self._failed_before = False
        self._opened_at = time.monotonic()
        with self._lock:
            if self._stop.is_set():
                _safe_release(cap)
                return None
            self._cap = cap
        return cap

    def _open_in_turn(self) -> Capture:
        """The opener; a stream's waits for its turn (``_STREAM_OPENS``), a sign of life every
        BACKOFF_TICK_S meanwhile, and gives up when the source is closed."""
        if not self._stream:
            return self._opener()
        while not _STREAM_OPENS.acquire(timeout=BACKOFF_TICK_S):
            self._beat = time.monotonic()
            if self._stop.is_set():
                raise SourceError(f"{self.name}: closed while waiting to open")
        began = time.monotonic()
        try:
            return self._opener()
        finally:
            _STREAM_OPENS.release()
            self._open_waited = not at_once(began)

    def _drop(self, cap: Capture, why: str,
              last_frame: tuple[float, float] | None = None) -> None:
        """Release the device after a failure (``why``), lost from now (or from ``last_frame``,
        (wall, since boot) of the last good frame, when the read failed after a stall), and
        wait the backoff."""
        with self._lock:
            if self._cap is cap:
                self._cap = None
            _safe_release(cap)
        self._bad_in_a_row = 0
        self._failed_before = True
        if last_frame is None:
            self._lost(why)
        else:
            self._lost(why, since=last_frame[0], ago=max(0.0, system_clock()[1] - last_frame[1]))
        self._backoff.wait()

    def _release(self) -> None:
        with self._lock:
            cap, self._cap = self._cap, None
        if cap is not None:
            _safe_release(cap)

    def close(self) -> None:
        self._stop.set()
        # A read blocked inside the driver keeps the lock; it releases the device itself then.
        # The release is done under the lock: a second close() (the loop's, after the signal
        # handler's) then waits for it, so the process never exits while another thread is
        # still inside OpenCV (a daemon thread in C++ at exit aborts it: "terminate called").
        if self._lock.acquire(timeout=5.0):
            try:
                cap, self._cap = self._cap, None
                if cap is not None:
                    _safe_release(cap)
            finally:
                self._lock.release()


def _safe_release(cap: Capture) -> None:
    try:
        cap.release()
    except Exception as err:  # releasing a dead device must not crash shutdown
        log.debug("release failed: %s", err)


class LatestFrame:
    """Wraps a live source: a grabber thread reads continuously and keeps only the newest frame.

    The consumer never sees a stale frame queued behind others; every frame overwritten before
    it was read counts in ``stats["skipped"]``.

    While no frame comes, ``read()`` calls ``on_wait`` (when set) every ``poll_s`` from the
    consumer's thread, so the run loop can tell systemd it is alive during a camera outage. A
    grabber that crashes makes ``read()`` raise, never look like a clean end.
    """

    is_live = True

    def __init__(self, inner: Source, poll_s: float = 0.5):
        self.inner = inner
        self.name = inner.name
        self.on_wait: Callable[[], None] | None = None
        self._poll_s = poll_s
        self._box: Mailbox[Frame] = Mailbox()  # closed by the grabber when the source ends
        self._closed = False
        self._crash: Exception | None = None  # the grabber's, raised on in read()
        self._thread = threading.Thread(target=self._grab, name=f"grab-{self.name}", daemon=True)
        self._thread.start()

    @property
    def stats(self) -> dict:
        s = dict(self.inner.stats)
        s["skipped"] = s.get("skipped", 0) + self._box.dropped
        s["camera_reconnecting"] = bool(getattr(self.inner, "reconnecting", False))
        return s

    def _grab(self) -> None:
        try:
            while not self._closed:
                frame = self.inner.read()
                if frame is None:
                    return
                self._box.put(frame)
        except Exception as err:  # never die silently: read() raises it in the loop's thread,
            self._crash = err  # whose one ERROR line names the camera, with this traceback
        finally:
            self._box.close()

    def read(self) -> Frame | None:
        while True:
            frame = self._box.get(self._poll_s)  # slices keep signal handlers responsive
            if self._closed:
                return None
            if frame is not None:
                return frame
            if self._box.closed:
                if (err := self._crash) is not None:  # the loop fails (exit 70): a restart
                    raise SourceError(f"{self.name}: frame grabber crashed: "
                                      f"{type(err).__name__}: {err}") from err
                return None
            if self.on_wait is not None:
                self.on_wait()

    def close(self) -> None:
        self._closed = True
        self._box.close()
        self.inner.close()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=10.0)


def fourcc_text(value: float) -> str:
    """OpenCV's CAP_PROP_FOURCC as its four letters ('AV01', 'hev1'); '' when it gives none."""
    code = int(value) if value and value > 0 else 0
    text = code.to_bytes(4, "little").decode("latin-1") if code < 2**32 else ""
    return text.strip("\0 ") if text.isprintable() else ""


def why_no_video(path: Path) -> str:
    """Why OpenCV could not open ``path`` as a video, as far as its first bytes tell: an empty
    file, an MP4 or MOV without its index (a recording still being written or cut short), else
    OpenCV's words (no video stream, a format it does not read). All were one line."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            boxes = _top_level_boxes(f, size)
    except OSError as err:
        return f"OpenCV cannot open this video file ({err.strerror or err})"
    if size == 0:
        return "an empty file (0 bytes), no video in it"
    if boxes and boxes[0] == b"ftyp" and b"moov" not in boxes:
        return ("an MP4/MOV without its index (no moov box): a recording still being written, or "
                "cut short before its end; a finished copy plays")
    return "OpenCV cannot open this video file (no video stream in it, or a format it does not read)"


def _top_level_boxes(f: BinaryIO, size: int, most: int = 64) -> list[bytes]:
    """The types of an ISO media file's top-level boxes (ftyp, moov, mdat ...), read from their
    8-byte headers; [] for a file that is not one."""
    types: list[bytes] = []
    at = 0
    while at + 8 <= size and len(types) < most:
        f.seek(at)
        head = f.read(16)
        length, kind = int.from_bytes(head[:4], "big"), head[4:8]
        if not kind.isalnum():  # not a box: not such a file, or past its boxes
            break
        types.append(kind)
        if length == 1 and len(head) == 16:  # a 64-bit size follows
            length = int.from_bytes(head[8:16], "big")
        if length < 8:  # 0: to the end of the file
            break
        at += length
    return types


def file_identity(path: Path) -> tuple[int, int, int, int] | None:
    """(inode, size, mtime, ctime) of a file now, which a file written again changes, and a
    chmod that makes it readable (ctime alone: one put back unreadable, then fixed, was never
    tried again); None when it is gone."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


class Pace:
    """Frames of a looping file or folder given as a camera gives them (it stands in for one):
    none before its time from the first frame, timed by the time since boot (a step of the wall
    clock moves nothing), and stamped with the clock when given (was: read as fast as the CPU
    went, a core burnt and event times minutes ahead of the clock). A frame the loop is late
    for is given at once and the clip goes on at its pace from there: a file's frames are all
    decoded anyway, so none is skipped. A wait is at most PACE_MAX_WAIT_S: a longer one (a gap
    in an NVR export, a folder's source.fps under 0.2) left the loop deaf to a stop and silent
    to the watchdog for it; the frames after keep their spacing from there, as after a late
    one. ``$MASKD_DEMO_FAST`` turns it off (``maskd.env.realtime``)."""

    def __init__(self) -> None:
        self._b0: float | None = None  # the time since boot the clip's time 0 is given at

    def stamp(self, at: float) -> tuple[float, float]:
        """Wait for the clip's time ``at`` (seconds); the clock's (time, since boot) then."""
        now = system_clock()[1]
        if self._b0 is None:  # the clip starts when it is first read (models loaded)
            self._b0 = now - at
        early = self._b0 + at - now
        if early > PACE_MAX_WAIT_S:  # the rest of a long wait is not waited
            self._b0 -= early - PACE_MAX_WAIT_S
        if early > 0:
            time.sleep(min(early, PACE_MAX_WAIT_S))
        else:
            self._b0 -= early  # late: the frames after keep their spacing, none rushed
        return system_clock()


def _same_content(a: tuple[int, ...] | None, b: tuple[int, ...] | None) -> bool:
    """Two ``file_identity`` of one content: the change time left out, which a chmod or a new
    hard link moves too (a looping file was reopened and said changed on disk for those)."""
    return a is None and b is None or a is not None and b is not None and a[:3] == b[:3]


class VideoFileSource:
    """A video file read with OpenCV: every frame in order, once or looping.

    Looping goes back to the first frame at its end, or reopens the file when it changed on
    disk, so a file replaced or truncated meanwhile plays as it is now (one WARNING says it
    changed); a pass that cannot open it or read a frame ends the source, and ``why_ended``
    says why, instead of reopening it at full speed.
    """

    is_live = False

    def __init__(self, path: Path, loop: bool = False, fps: float | None = None,
                 camera: str | None = None, realtime: bool = False):
        import cv2

        self.path = path
        self.name = str(path)
        self.camera = camera  # the config's name for it, which starts its lines about frames
        self.loop = loop
        self._pace = Pace() if realtime else None
        self.stats = _new_stats()
        self._said_cut_short = False
        self._cap = self._open()
        self._file = self._identity()  # file_identity as opened: a change is looked for
        self._played = self._file  # ... of the file the last frame came from
        self._closed = False
        self._seq = 0
        self._pos: float | None = None  # the file's own time of the frame just read, seconds
        # A file OpenCV opens but cannot read a frame from is a start-up error, not a source
        # that ends at once (and, with --loop, idles as if played).
        self._first = self._next_image()
        if self._first is None:
            codec = fourcc_text(self._cap.get(cv2.CAP_PROP_FOURCC))
            self._cap.release()
            raise SourceError(f"{path}: no frame can be read from this video file" + (
                f" (its codec, {codec}, may be one this OpenCV cannot decode: re-encode it to "
                "H.264 or MJPEG)" if codec else ""))
        file_fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(file_fps) if file_fps and 0 < file_fps < MAX_FILE_FPS else float(fps or 15.0)
        if file_fps and self.fps != file_fps:  # a rate no camera has: said, not silently replaced
            log.warning("%s: the file says %g frames/s, no real rate; its frames are timed at "
                        "%g frames/s (source.fps)", frame_line_name(self.name, self.camera),
                        file_fps, self.fps)
        self._t0 = time.time()
        self._pass_start = 0.0  # seconds after _t0 the pass's first frame is timed at
        self._pass_first: float | None = None  # the file's time of the pass's first frame
        self._offset = -1.0  # seconds after _t0 of the last frame handed out
        self._this_pass = 0
        self.why_ended: str | None = None  # set when a loop ends: nothing left to play

    def _identity(self) -> tuple[int, int, int, int] | None:
        return file_identity(self.path)

    def _open(self):
        import cv2

        self._check_openable()
        # Absolute, so FFmpeg never takes "cam1:door.mp4" or "pipe:0.mp4" for a protocol.
        cap = cv2.VideoCapture(str(self.path.absolute()))
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.path}: {why_no_video(self.path)}")
        return cap

    def _check_openable(self) -> None:
        """Refuse, with the real cause, what OpenCV would misreport or crash on: a name that is
        not UTF-8 (OpenCV's binding segfaults on it; ``run`` refuses such names in its config
        too), a missing or unreadable file, a named pipe or a device."""
        try:
            str(self.path).encode("utf-8")
        except UnicodeEncodeError:
            raise SourceError(f"{self.path}: a video file name must be UTF-8 (OpenCV cannot "
                              "open this one; rename the file)") from None
        try:
            open_regular(self.path).close()
        except FileNotFoundError:  # a link to a clip on a disk not mounted is there in `ls`
            raise SourceError(dangling_link(self.path) or f"{self.path}: no such video file"
                              ) from None
        except OSError as err:
            raise SourceError(f"{self.path}: {err.strerror or err}") from None

    def _next_image(self) -> np.ndarray | None:
        """The next usable frame of this pass, or None at its end.

        FFmpeg answers a packet it cannot decode with a failed read, as at the end of the file,
        and goes on with the next packet: so a failed read is tried again, and counted as a
        corrupt frame once a later read shows the file went on. MAX_CORRUPT_IN_A_ROW failed or
        unusable frames in a row end the pass; at the real end those extra reads return at once.
        """
        import cv2

        failed = bad = 0
        while failed + bad < MAX_CORRUPT_IN_A_ROW and not self._closed:
            ok, raw = self._cap.read()
            if not ok:
                failed += 1
                continue
            pos = self._cap.get(cv2.CAP_PROP_POS_MSEC)  # this frame's time in the file
            self._pos = pos / 1e3 if math.isfinite(pos) and pos >= 0 else None
            if failed:  # not the end after all: frames were lost in the middle of the file
                self.stats["corrupt"] += failed
                log.warning("%s: %d frame(s) that cannot be decoded skipped (before seq %d)",
                            frame_line_name(self.name, self.camera), failed, self._seq)
                bad, failed = bad + failed, 0
            try:
                return to_bgr(raw)
            except BadFrame as err:
                self.stats["corrupt"] += 1  # decoded but unusable: skip, within reason
                bad += 1
                log.warning("%s: frame skipped: %s", frame_line_name(self.name, self.camera),
                            err)
        if not self._said_grown():
            self._say_cut_short()
        return None

    def _say_cut_short(self) -> None:
        """A pass that ends where the file says more frames follow (a damaged stretch longer
        than MAX_CORRUPT_IN_A_ROW, a cut file) is said, once (a looping file's passes would say
        it again): it looked like a clean end of source."""
        import cv2

        # OpenCV's count of frames it decoded, those skipped as broken on top; and where the file
        # times its frames, the last one's time at the file's average rate. Short only when both
        # say so: frames FFmpeg dropped mid-file leave the count short, a variable rate the time.
        at = int(self._cap.get(cv2.CAP_PROP_POS_FRAMES) or 0) + self.stats["corrupt"]
        if self._pos is not None and self._seq:
            at = max(at, round(self._pos * self.fps))
        total = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if total > 0 and at < total - 1 and not self._said_cut_short:
            self._said_cut_short = True
            log.warning("%s: no frame could be read after frame %d of the %d the file says it "
                        "holds (damaged or cut short?); the rest of the file is not read",
                        frame_line_name(self.name, self.camera), at, total)

    def _said_grown(self) -> bool:
        """Whether a file read once grew while it was read, said then: a recording still being
        written (an NVR's or ffmpeg's .mkv or .ts) ends where its writer was when maskd caught
        up, and what was written after is not read (was: "end of source", as for a finished
        file, or "damaged or cut short?" where its header foretold a length). A looping file
        is opened again instead (``_note_change``)."""
        now = self._identity()
        if self.loop or now is None or self._file is None or now[0] != self._file[0] or \
                now[1] <= self._file[1]:
            return False
        log.warning("%s: the file grew while it was read (from %d to %d bytes: still being "
                    "recorded?); it ends where its writer was when maskd caught up, what was "
                    "written after is not read (read the finished file, or the camera's stream)",
                    frame_line_name(self.name, self.camera), self._file[1], now[1])
        return True

    def read(self) -> Frame | None:
        restarted = False
        while not self._closed:
            image = self._first if self._first is not None else self._next_image()
            self._first = None
            if image is not None:
                at = self._frame_offset()
                stamp, since_boot = self._pace.stamp(at) if self._pace else (self._t0 + at, None)
                frame = Frame(image=image, seq=self._seq, timestamp=stamp, source=self.name,
                              since_boot=since_boot)
                self._seq += 1
                self._this_pass += 1
                self.stats["frames"] += 1
                self._played = self._file
                return frame
            # The end (or a run of broken frames): stop, or start again when looping. A pass
            # without a single good frame ends the source instead of spinning forever.
            if not self.loop:
                self._closed = True  # ended for good, though OpenCV might read on past a run
                return None
            if restarted or self._this_pass == 0:
                self.why_ended = self._no_frame_left()
                return None
            if not self._rewind():
                self._cap.release()
                self._note_change()
                try:
                    self._cap = self._open()
                except SourceError as err:
                    self.why_ended = f"cannot loop: {err}"
                    return None
            self._new_pass()
            restarted = True
        return None

    def _new_pass(self) -> None:
        """The next frame read starts a pass, timed on after the last one handed out."""
        self.stats["loops"] += 1
        self._this_pass = 0
        self._pass_start, self._pass_first = self._offset + 1.0 / self.fps, None

    def again(self) -> bool:
        """After a loop ended (``why_ended``): whether the file, changed on disk since (put
        back, copied over again), now has a frame, read for the next ``read``. The run loop asks
        while it idles, as a lost camera is reopened; was: idle until maskd restarted. The file
        that played, unchanged, is tried at every ask: it failed for the disk's passing I/O
        errors (was: never tried again, as a file known bad is until it changes)."""
        now = self._identity()
        if self.why_ended is None or self._closed or now is None or (
                now == self._file and not _same_content(now, self._played)):
            return False
        self._file = now
        self._cap.release()
        try:
            self._cap = self._open()
        except SourceError as err:  # why now: what is there may not be what went (a copy cut short)
            self.why_ended = f"cannot loop: {err}"
            return False
        self._first = self._next_image()
        if self._first is None:
            self.why_ended = self._no_frame_left()
            return False
        self.why_ended = None
        self._new_pass()
        return True

    def _no_frame_left(self) -> str:
        return f"{self.path}: no frame left to loop over (emptied or truncated?)"

    def _frame_offset(self) -> float:
        """Seconds after the start the frame just read is timed at: by the file's own clock
        (a phone's variable rate, an NVR export's gaps: timed at the average rate, a face seen
        for 3 s lasted 15 s and a 60 s gap was no gap), from its pass's first frame; where the
        file gives no time, or one not after the last by more than a real rate's interval, 1/fps
        after the last frame (an AVI saying 1000 frames/s timed them 1 ms apart by its header, a
        face seen for 3 s lasted 45 ms, and never got an event)."""
        pos = self._pos
        if self._this_pass == 0:  # a pass's first frame: where the pass starts
            self._pass_first, at = pos, self._pass_start
        elif pos is not None and self._pass_first is not None and (
                by_file := self._pass_start + pos - self._pass_first) > self._offset + \
                MIN_FILE_STEP_S:
            at = by_file
        else:
            at = self._offset + 1.0 / self.fps
        self._offset = at
        return at

    def _rewind(self) -> bool:
        """Back to the first frame of the open file, when it is still the file of the last pass
        and the first frame reads again. Not a reopen: OpenCV opens one capture at a time in a
        process, so each pass's open waited while another camera's stream open hung (up to
        STREAM_TIMEOUT_MS), and the video played at that camera's pace."""
        import cv2

        if not _same_content(self._identity(), self._file) or \
                not self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0):
            return False
        self._first = self._next_image()
        return self._first is not None

    def _note_change(self) -> None:
        """One WARNING when the file changed on disk since the last pass: FFmpeg's own lines
        about a truncated file (e.g. "overread") would otherwise come with no word from us."""
        now = self._identity()
        if not _same_content(now, self._file) and now is not None and now[1] > 0:  # gone or empty: it ends
            was = f"{self._file[1]} bytes" if self._file else "gone"
            log.warning("%s: changed on disk while looping (was %s, now %d bytes); playing it as "
                        "it is now", self.name, was, now[1])
        self._file = now

    def close(self) -> None:
        self._closed = True
        self._cap.release()


def not_a_folder(folder: Path | str, missing: bool = False) -> str:
    """The one wording of an images source whose folder is not one, or is not there (`run` and
    check-config; was 'not a folder' for both). A camera's address given as the folder is
    shown with its password hidden, as every address is. A link to a folder on a disk not
    mounted says so, as a video file's does (was: 'no such folder', of a name ls shows)."""
    if missing and (link := dangling_link(Path(folder))):
        return link
    return f"{shown_uri(str(folder))}: {'no such folder' if missing else 'not a folder'}"


class ImageFolderSource:
    """A folder of images (sorted, recursive), once or looping, decoded as ``maskd classify`` does.

    A broken or vanished image is counted in ``stats["corrupt"]`` and skipped, and logged once
    per file and reason (not on every pass of a loop). When looping, every pass lists the folder
    again, so images added are read and removed ones dropped; a pass with nothing readable ends
    the source and ``why_ended`` says so. For this source ``Frame.source`` is the image's path,
    so reports can name the file.
    """

    is_live = False

    def __init__(self, folder: Path, loop: bool = False, fps: float = 15.0,
                 realtime: bool = False):
        if (kind := _kind_of(folder)) != "folder":
            raise SourceError(not_a_folder(folder, missing=kind == "missing"))
        self.folder = folder
        self.name = str(folder)
        self.loop = loop
        self.fps = fps  # source.fps: the images' rate, in real time too (``Pace``)
        self._pace = Pace() if realtime else None
        self.stats = _new_stats()
        self._unsearched: set[str] = set()  # folders said to be not searched, with why
        self.paths = self._list()
        if not self.paths:
            raise MissingSource(no_images(folder))
        self._files = self._identities()
        # (paths, file_identity) of the last pass that read an image: retried when unchanged
        self._played: tuple[list[Path], list[tuple[int, int, int, int] | None]] | None = None
        self._iter: Iterator[Path] = iter(self.paths)
        self._t0 = time.time()
        self._seq = 0
        self._good_this_pass = 0
        self._closed = False
        self._warned: set[tuple[Path, str]] = set()  # (image, why) already logged
        self.why_ended: str | None = None  # set when a loop ends: nothing readable left

    def _list(self) -> list[Path]:
        """The folder's images; a sub-folder that cannot be searched is a WARNING (once per
        folder and reason), as `scan` makes it an error record, never skipped silently."""
        paths: list[Path] = []
        for item in search_images(self.folder):
            if isinstance(item, Path):
                paths.append(item)
            elif str(item) not in self._unsearched:
                self._unsearched.add(str(item))
                log.warning("%s: its images there are not read", one_field(str(item)))
        return paths

    def _one_reads(self) -> bool:
        """Whether one of the listed images reads now."""
        for path in self.paths:
            try:
                load_image_rgb(path)
            except ImageError:
                continue
            return True
        return False

    def _identities(self) -> list[tuple[int, int, int, int] | None]:
        """``file_identity`` of each listed image: one written again under its name (a copy
        cut short, then whole) is not the image a pass could not read."""
        return [file_identity(p) for p in self.paths]

    def _next_pass(self, retry: bool = False) -> bool:
        """List the folder again for a new pass; False (and ``why_ended``) when nothing is left
        to read: no images, or the same images as a pass that could read none of them (but for
        a ``retry`` of the images that played, unchanged, once one of them reads again)."""
        if self._good_this_pass:
            self._played = (self.paths, self._files)
        before, self.paths = self.paths, self._list()
        files_before, self._files = self._files, self._identities()
        if self.paths != before and self.paths:
            old, new = set(before), set(self.paths)
            log.info("%s: %d images now (%d new, %d gone)", self.name, len(new), len(new - old),
                     len(old - new))
            self._warned = {w for w in self._warned if w[0] in new}
        if not self.paths:
            try:  # a stick pulled out, a failing card: its look-up fails (was: a crash, exit 70)
                kind = _kind_of(self.folder)
            except SourceError as err:
                self.why_ended = str(err)
                return False
            what = "folder has no images left" if kind == "folder" else "folder is gone"
            # one on a stick taken out says where its link leads, as a clip's (`ls` shows it)
            self.why_ended = (kind == "missing" and dangling_link(self.folder)
                              or f"{self.folder}: the {what}")
            return False
        if self._good_this_pass == 0 and (self.paths, self._files) == (before, files_before) \
                and not (retry and self._played == (before, files_before) and self._one_reads()):
            self.why_ended = none_read(self.folder)
            return False
        self._iter = iter(self.paths)
        self._good_this_pass = 0
        self.stats["loops"] += 1  # as a looping file's (was: 0 for ever in the status)
        return True

    def again(self) -> bool:
        """After a loop ended (``why_ended``): whether the folder has images to read again
        (listed anew; unreadable ones not written again since are not read again, and said
        again, at every try; those that played, unchanged, are read again once one of them
        reads: they failed for the disk's passing I/O errors). See VideoFileSource."""
        if self.why_ended is None or self._closed or not self._next_pass(retry=True):
            return False
        self.why_ended = None
        return True

    def read(self) -> Frame | None:
        import cv2

        while not self._closed:
            path = next(self._iter, None)
            if path is None:
                if not self.loop or not self._next_pass():
                    return None
                continue
            try:
                image = cv2.cvtColor(load_image_rgb(path), cv2.COLOR_RGB2BGR)
            except ImageError as err:
                self.stats["corrupt"] += 1
                if (path, str(err)) not in self._warned:
                    self._warned.add((path, str(err)))
                    # a newline in a file's name split the line: a forged log line after it
                    log.warning("unreadable or broken image skipped: %s", one_field(str(err)))
                continue
            at = self._seq / self.fps
            stamp, since_boot = self._pace.stamp(at) if self._pace else (self._t0 + at, None)
            frame = Frame(image=image, seq=self._seq, timestamp=stamp, source=str(path),
                          since_boot=since_boot)
            self._seq += 1
            self._good_this_pass += 1
            self.stats["frames"] += 1
            return frame
        return None

    def close(self) -> None:
        self._closed = True


def _is_device(uri: str) -> bool:
    """A camera index or a device node; a file or folder under /dev (/dev/shm) is not one. An
    index is ASCII digits: "²" or "０" passed isdigit() and then failed int() at every reopen
    for ever (or opened a camera source_identity could not see was another's)."""
    if uri.isascii() and uri.isdigit():
        return True
    return uri.startswith("/dev/") and _kind_of(Path(uri)) not in ("file", "folder")


def _is_stream(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def opencv_opener(uri: str, cfg: SourceConfig) -> Opener:
    """An opener for a camera (index or /dev/videoN) or a network stream through OpenCV."""

    def open_capture() -> Capture:
        import cv2

        began = time.monotonic()
        device = _is_device(uri)
        if device:
            if uri.startswith("/dev/") and not Path(uri).exists():
                raise SourceError(f"{uri} does not exist (camera unplugged?)")
            target: int | str = int(uri) if uri.isdigit() else uri
            cap = cv2.VideoCapture(target)
            if cap.isOpened():
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
                cap.set(cv2.CAP_PROP_FPS, cfg.fps)
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)
        else:  # a stream: bounded open/read time so a dead server does not hang the grabber
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS,
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
            cap = cv2.VideoCapture(uri, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            if device:
                answer = device_answer(f"/dev/video{uri}" if uri.isdigit() else uri)
            elif at_once(began):
                # asked only of a camera that answered at once: a stalled one waited out the
                # time-out already, and other cameras' opens wait their turn behind this one
                scheme = uri.lower().split("://", 1)[0]
                answer = name_answer(uri) or (http_answer(uri) if scheme in ("http", "https")
                                              else rtsp_answer(uri) if scheme == "rtsp" else None)
            else:
                answer = None
            raise SourceError(f"OpenCV cannot open {shown_uri(uri)}"
                              + (f": {answer}" if answer else ""))
        return cap

    return open_capture


# struct v4l2_capability (linux/videodev2.h): driver[16], card[32], bus_info[32], then u32s
# version, capabilities, device_caps, reserved[3]; 104 bytes, read by VIDIOC_QUERYCAP.
V4L2_CAPABILITY_SIZE = 104
VIDIOC_QUERYCAP = 0x80685600  # _IOR('V', 0, struct v4l2_capability)
V4L2_CAP_VIDEO_CAPTURE = 0x00000001
V4L2_CAP_VIDEO_CAPTURE_MPLANE = 0x00001000
V4L2_CAP_DEVICE_CAPS = 0x80000000  # device_caps holds this node's own capabilities


def device_answer(node: str) -> str | None:
    """Why a device node OpenCV could not open is no camera to this process, in a technician's
    words (no group to open it, not a video device, a node of a camera that gives no pictures),
    or None when the node says nothing more. A webcam makes two nodes and the Pi's codecs a dozen
    more (/dev/video10 and up); the wrong one was only "OpenCV cannot open", retried for ever."""
    import fcntl
    import pwd

    try:
        fd = os.open(node, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except PermissionError:
        try:
            user = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:
            user = f"uid {os.geteuid()}"
        return (f"permission denied to {user}: a camera's node is opened by the 'video' group "
                f"(sudo usermod -aG video {user}, then log in again; the service has the group)")
    except OSError:
        return None  # gone, or busy: the open's own failure stands
    try:
        cap = fcntl.ioctl(fd, VIDIOC_QUERYCAP, bytes(V4L2_CAPABILITY_SIZE))
    except OSError:
        return "not a video device (no V4L2 driver answers on it)"
    finally:
        os.close(fd)
    return capture_problem(cap)


def capture_problem(cap: bytes) -> str | None:
    """What a V4L2 node's struct v4l2_capability says against reading pictures from it, or None
    where it can capture video (then the failure lies elsewhere: the format, the driver)."""
    def text(start: int, size: int) -> str:
        return cap[start:start + size].split(b"\0", 1)[0].decode("utf-8", "replace")

    capabilities, device_caps = struct.unpack_from("<II", cap, 84)
    mine = device_caps if capabilities & V4L2_CAP_DEVICE_CAPS else capabilities
    if mine & (V4L2_CAP_VIDEO_CAPTURE | V4L2_CAP_VIDEO_CAPTURE_MPLANE):
        return None
    return (f"a node of {excerpt(text(16, 32))} ({excerpt(text(0, 16))}) that gives no pictures "
            "(a webcam's second node carries metadata, the Pi's /dev/video10 and up are its "
            "codecs): `ls -l /dev/v4l/by-id/` names each camera's picture node, ending "
            "-video-index0")


HTTP_PROBE_S = 3.0  # on top of the open's own time-out, within RECONNECT_STALL_S


def at_once(began: float) -> bool:
    """Whether a read or open that failed, begun at monotonic ``began``, failed well before the
    stream time-out: the other end answered (a damaged frame, a refusal), not a stall."""
    return time.monotonic() - began < STREAM_TIMEOUT_MS / 2000


def name_answer(uri: str) -> str | None:
    """Why a stream's host name gives no address, in the resolver's words, or None (it
    resolves, or is an address). FFmpeg's `Failed to resolve hostname` is silenced with its
    other lines, so a typo in the name, or a DHCP name the router forgot, read as a dead
    camera."""
    import socket
    import urllib.parse

    host = urllib.parse.urlsplit(uri).hostname
    if not host:
        return None
    try:
        socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        return (f"the name {host} does not resolve ({err.strerror}): a typo in source.uri, or "
                "the name server does not know the camera (an address of it works too)")
    except (OSError, UnicodeError):
        return None
    return None


def refusal(what: str, code: int, login: bool, kind: str) -> str:
    """A camera's refusal (``what``: its status line) in a technician's words."""
    if code in (401, 403):
        return (f"{what}: the camera refuses this user name and password (source.uri's "
                "user:password@)" if login else f"{what}: the camera asks for a login: put "
                "user:password@ in source.uri")
    if code == 404:
        return f"{what}: no stream at that path (the camera's manual names its {kind} URL)"
    return what


def _rtsp_describe(sock: Any, url: str, cseq: int, auth: str) -> tuple[int, str, str]:
    """Send DESCRIBE, read the answer's head: (status code, reason, its WWW-Authenticate)."""
    sock.sendall(f"DESCRIBE {url} RTSP/1.0\r\nCSeq: {cseq}\r\nAccept: application/sdp\r\n"
                 f"{auth}\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 65536:
        got = sock.recv(4096)
        if not got:
            break
        head += got
    lines = head.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or not status[0].startswith("RTSP/") or not status[1].isdigit():
        raise ValueError("no RTSP answer")
    challenges = [ln.split(":", 1)[1].strip() for ln in lines[1:]
                  if ln.lower().startswith("www-authenticate:")]
    digest = [c for c in challenges if c.lower().startswith("digest")]
    return int(status[1]), status[2] if len(status) > 2 else "", (digest or challenges or [""])[0]


def _rtsp_authorization(challenge: str, user: str, password: str, url: str) -> str:
    """The Authorization header answering a Basic or Digest (RFC 2617, MD5) challenge; its
    opaque and algorithm go back unchanged, as FFmpeg sends them (a camera refuses without)."""
    import base64
    import hashlib
    import re

    if not challenge.lower().startswith("digest"):
        return "Authorization: Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() \
            + "\r\n"
    p = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge[6:]))

    def md5(text: str) -> str:
        return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()

    ha1, ha2 = md5(f"{user}:{p.get('realm', '')}:{password}"), md5(f"DESCRIBE:{url}")
    nonce, extra = p.get("nonce", ""), ""
    if "auth" in p.get("qop", "").split(","):
        cnonce = os.urandom(8).hex()
        response = md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{ha2}")
        extra = f', qop=auth, nc=00000001, cnonce="{cnonce}"'
    else:
        response = md5(f"{ha1}:{nonce}:{ha2}")
    for key in ("opaque", "algorithm"):
        if key in p:
            extra += f', {key}="{p[key]}"'
    return (f'Authorization: Digest username="{user}", realm="{p.get("realm", "")}", '
            f'nonce="{nonce}", uri="{url}", response="{response}"{extra}\r\n')


def rtsp_answer(uri: str) -> str | None:
    """What an RTSP camera that OpenCV could not open answers to DESCRIBE, with the URL's login
    (Basic or Digest, as FFmpeg does), or None when it takes it or says nothing. OpenCV hides
    FFmpeg's '401 Unauthorized' here too: a changed password read as a dead camera."""
    import socket

    if (split := _split_login(uri)) is None:
        return None
    url, host, port, creds = split
    try:
        with socket.create_connection((host, port or 554), timeout=HTTP_PROBE_S) as sock:
            code, reason, challenge = _rtsp_describe(sock, url, 1, "")
            if code == 401 and creds is not None:
                code, reason, _ = _rtsp_describe(sock, url, 2, _rtsp_authorization(
                    challenge, *creds, url))
    except (OSError, ValueError, UnicodeError):
        return None
    return None if code < 300 else refusal(f"RTSP {code} {reason}", code, creds is not None,
                                            "RTSP")


def _split_login(uri: str) -> tuple[str, str, int | None, tuple[str, str] | None] | None:
    """A camera URL's (URL without its login, host, port, (user, password) or None), the
    login %-decoded, for the probes that ask the camera themselves; None when its port is out
    of range or no number (the open's own failure says it all)."""
    import urllib.parse

    parts = urllib.parse.urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname or ""
    netloc = (host if ":" not in host else f"[{host}]") + (f":{port}" if port else "")
    url = urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    creds = None if parts.username is None else (urllib.parse.unquote(parts.username),
                                                 urllib.parse.unquote(parts.password or ""))
    return url, host, port, creds


def http_answer(uri: str) -> str | None:
    """What an HTTP camera that OpenCV could not open answers, in a technician's words (a
    login refused, a wrong path, a web page where the stream was expected), or None when that
    says nothing more (no answer: the open's own failure stands). OpenCV hides FFmpeg's
    'HTTP error 401', so doctor and the journal could not tell a wrong password from a dead
    camera."""
    import urllib.error
    import urllib.request

    if (split := _split_login(uri)) is None:
        return None
    url, _, _, creds = split
    login = creds is not None
    logins = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    if creds is not None:  # Basic or Digest, whichever the camera asks for (FFmpeg does both)
        logins.add_password(None, url, *creds)
    opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(logins),
                                         urllib.request.HTTPDigestAuthHandler(logins))
    try:
        with opener.open(url, timeout=HTTP_PROBE_S) as r:
            kind = r.headers.get_content_type()
    except urllib.error.HTTPError as err:
        return refusal(f"HTTP {err.code} {err.reason}", err.code, login, "MJPEG")
    except (OSError, ValueError):
        return None  # refused, no answer, a name that does not resolve: said by the open
    if kind.startswith(("multipart/", "image/", "video/", "application/octet-stream")):
        return None
    page = "an HTML page" if kind == "text/html" else "a document"
    return (f"it answers with {page} ({kind}), not a video stream: a login or settings page? "
            "the stream's URL is another (the camera's manual names it)")


# How each main-stream format picamera2 can hand out becomes BGR, for the array its
# capture_array gives (picamera2's Helpers.make_array; its names are libcamera's, which give the
# order in a little-endian word: RGB888 is B,G,R in memory, XBGR8888 is R,G,B,X). maskd asks for
# RGB888, but libcamera may adjust the request to what the camera has (a USB webcam listed by
# libcamera, which source auto picks: YUYV or MJPEG), and capture_array then gives that format.
# MJPEG is read as its raw buffer (capture_buffer) and decoded here: picamera2's own decode (PIL,
# in capture_array) raises on a broken JPEG, which cannot be told from a dead camera.
def picamera2_formats() -> dict[str, tuple[int | None, int | None]]:
    """Per format maskd reads: the channels of its array (None: 2-D) and the OpenCV conversion
    to BGR (None: none needed); MJPEG's (None, None): its buffer is decoded by ``jpeg_frame``."""
    import cv2

    return {"RGB888": (3, None), "BGR888": (3, cv2.COLOR_RGB2BGR),
            "XRGB8888": (4, cv2.COLOR_BGRA2BGR), "XBGR8888": (4, cv2.COLOR_RGBA2BGR),
            "YUV420": (None, cv2.COLOR_YUV2BGR_I420), "YVU420": (None, cv2.COLOR_YUV2BGR_YV12),
            "YUYV": (2, cv2.COLOR_YUV2BGR_YUYV), "MJPEG": (None, None)}


def jpeg_frame(buffer: object) -> np.ndarray:
    """A camera's JPEG as BGR: picamera2's raw MJPEG buffer (1-D bytes: the JPEG, then whatever
    the rest of the buffer holds), decoded as OpenCV decodes a USB camera's MJPEG. One that
    cannot be decoded raises BadFrame, a frame skipped and counted as ``corrupt`` (was: PIL's
    decode raised inside capture_array, taken for an unplugged camera and reopened)."""
    import cv2

    if not isinstance(buffer, np.ndarray) or buffer.dtype != np.uint8 or buffer.ndim != 1:
        raise BadFrame(f"not a JPEG buffer (the camera returned {type(buffer).__name__} "
                       f"{getattr(buffer, 'dtype', '')}{getattr(buffer, 'shape', '')})")
    image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if image is None:
        raise BadFrame(f"a JPEG that cannot be decoded (a buffer of {buffer.size} bytes "
                       f"starting {bytes(buffer[:4]).hex(' ') or 'with nothing'})")
    return image


def picamera2_bgr(array: np.ndarray, fmt: str, width: int) -> np.ndarray:
    """One picamera2 main-stream array of format ``fmt`` (``picamera2_formats``; MJPEG: the raw
    buffer, ``jpeg_frame``) as BGR; ``width`` is the stream's, since YUV rows can carry padding.
    An array not of the format's shape is handed on as it is, for ``to_bgr`` to take or
    refuse."""
    import cv2

    if fmt == "MJPEG":
        return jpeg_frame(array)
    channels, code = picamera2_formats()[fmt]
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or code is None:
        return array
    if array.ndim != (2 if channels is None else 3) or (channels and array.shape[2] != channels):
        return array
    if fmt in ("YUV420", "YVU420") and array.shape[0] % 3:
        return array
    return cv2.cvtColor(np.ascontiguousarray(array), code)[:, :width]


class _Picamera2Capture:
    """picamera2 behind the ``Capture`` interface, handing out what it delivers as BGR.

    It asks for an RGB888 main stream (B,G,R in memory, OpenCV's order) of the configured size
    (picamera2 rounds an odd one down to even) and reads back the format libcamera agreed to:
    another one maskd can read is converted (``picamera2_bgr``; was: read as if it were RGB888,
    so R,G,B formats swapped red and blue and YUV420 gave a grey picture half again as tall), one
    it cannot is refused at the open, named (was: every frame "corrupt or empty", for ever).
    """

    def __init__(self, cfg: SourceConfig):
        from picamera2 import Picamera2  # apt package on the Pi; imported only when used

        self._cam = _new_picamera2(Picamera2, cfg.camera_num)
        try:
            # A frame rate only where the camera has the control: libcamera's USB (UVC) cameras
            # have no FrameDurationLimits, and asking for one made every open fail for ever
            # ("Control FrameDurationLimits is not advertised by libcamera").
            rate = ({"FrameRate": cfg.fps}
                    if "FrameDurationLimits" in getattr(self._cam, "camera_controls", {}) else {})
            if not rate:
                log.info("picamera2: the camera sets its own frame rate (it has no frame "
                         "duration control); %.4g fps is not asked for", cfg.fps)
            config = self._cam.create_video_configuration(
                main={"size": (cfg.width, cfg.height), "format": "RGB888"}, controls=rate)
            self._cam.configure(config)
            main = self._cam.camera_config["main"]
            self._format, self._width = str(main["format"]), int(main["size"][0])
            if self._format not in picamera2_formats():
                raise SourceError(f"the camera gives {self._format} frames, which maskd cannot "
                                  f"read (it reads {', '.join(picamera2_formats())}); a USB camera "
                                  "can be read as source kind opencv, uri /dev/videoN")
            if self._format != "RGB888":
                log.info("picamera2: the camera gives %s frames (RGB888 was asked for); they "
                         "are converted to BGR", self._format)
            self._cam.start()
        except Exception:
            self._cam.close()
            raise

    def read(self) -> tuple[bool, np.ndarray | None]:
        """The next frame as BGR; a broken JPEG raises BadFrame (``Capture``)."""
        grab = self._cam.capture_buffer if self._format == "MJPEG" else self._cam.capture_array
        return True, picamera2_bgr(grab("main"), self._format, self._width)

    def release(self) -> None:
        try:
            self._cam.stop()
        finally:
            self._cam.close()


def _new_picamera2(picamera2: Any, num: int = 0) -> Any:
    """``Picamera2(num)``, with its two common failures said in words: no such camera listed
    (it raised "list index out of range") and a camera another program holds (it raised
    "Camera __init__ sequence did not complete.", the cause only in libcamera's own log)."""
    listed = len(picamera2.global_camera_info())
    if not listed:
        raise RuntimeError("libcamera lists no camera: is its cable in, the right way round "
                           "(`rpicam-hello --list-cameras` lists what it sees)?")
    if num >= listed:
        raise RuntimeError(f"libcamera lists {listed} camera(s), numbered from 0: there is no "
                           f"camera {num} (source.uri; `rpicam-hello --list-cameras`)")
    try:
        return picamera2(num)
    except RuntimeError as err:
        if "did not complete" not in str(err):
            raise
        cause = f": {err.__context__}" if err.__context__ is not None else ""
        raise RuntimeError(f"the camera did not open{cause}; is another program using it (a "
                           "second maskd, rpicam-hello, a browser)?") from None


AUTO_DEVICE = "/dev/video0"  # what `auto` reads when there is no Pi camera


def picamera2_available() -> tuple[str | None, str | None]:
    """(the first camera picamera2 lists, by its model, or None; why picamera2 is broken if it
    is): not installed is no fault (a USB camera's Pi, any other Linux box); installed but not
    importable (a numpy of the wrong major version in the venv) or unable to list its cameras
    is, and passing over it without a word sent people to check the camera's cable."""
    try:
        from picamera2 import Picamera2
    except Exception as err:  # not installed; or libcamera missing underneath, a binary mismatch
        if isinstance(err, ModuleNotFoundError) and err.name == "picamera2":
            return None, None
        return None, f"picamera2 cannot be imported ({type(err).__name__}: {err})"
    try:
        cameras = Picamera2.global_camera_info()
    except Exception as err:
        return None, f"picamera2 cannot list the cameras ({type(err).__name__}: {err})"
    if not cameras:
        return None, None
    first = cameras[0]  # what Picamera2() opens: the Pi's own cameras come before USB ones
    usb = "/usb" in str(first.get("Id", ""))
    return f"{'a USB camera' if usb else 'the Pi camera'} ({first.get('Model', '?')})", None


def _noting(opener: Opener, note: str) -> Opener:
    """``opener`` whose failures also say ``note`` (why the Pi camera was not used)."""

    def open_capture() -> Capture:
        try:
            return opener()
        except SourceError as err:
            raise SourceError(f"{err}; the Pi camera was not tried: {note}") from None

    return open_capture


def live_source(name: str, opener: Opener, cfg: SourceConfig, stream: bool = False,
                camera: str | None = None) -> LatestFrame:
    """A reopening live source behind a LatestFrame (``camera``: ``open_source``).

    Under systemd's watchdog the backoff is capped at half WATCHDOG_USEC, so a camera that comes
    back is found well within one watchdog period.
    """
    from maskd.env import Environment

    low, high = cfg.reopen_min_s, cfg.reopen_max_s
    watchdog = Environment.read().watchdog_s
    if watchdog is not None and max(low, high) > watchdog / 2:
        log.info("%s: reconnect backoff capped at %.1f s (half the systemd watchdog)",
                 frame_line_name(name, camera), watchdog / 2)
        low, high = min(low, watchdog / 2), min(high, watchdog / 2)
    return LatestFrame(LiveSource(name, opener, low, high, stream, cfg.frozen_after_s, camera))


def _open_uri(uri: str, cfg: SourceConfig, camera: str | None) -> Source:
    """Dispatch on what ``uri`` looks like: camera, stream, folder or video file."""
    if _is_device(uri) or _is_stream(uri):
        return live_source(shown_uri(uri), opencv_opener(uri, cfg), cfg, _is_stream(uri), camera)
    path = Path(uri.removeprefix("file://"))
    if _file_or_folder(uri) == "folder":
        return ImageFolderSource(path, loop=cfg.loop, fps=cfg.fps, realtime=realtime(cfg.loop))
    return VideoFileSource(path, loop=cfg.loop, fps=cfg.fps, camera=camera,
                           realtime=realtime(cfg.loop))


class MissingSource(SourceError):
    """The file or folder a source names does not exist, or the folder holds no images (on
    this machine, now: it may on the device, or later)."""


class ClosedSource(MissingSource):
    """The video file a source names, or every image of its folder, is there but this user may
    not read it (a clip copied with sudo, root's 0600): the service's user may, or may not."""


def none_read(folder: Path) -> str:
    """The one wording of a folder of images none of which reads: a loop's end in `run`, and
    check-config's warning of images this user may not open."""
    return f"{folder}: none of its images can be read"


def _kind_of(path: Path) -> str:
    """"folder", "file", "other" (a device, a pipe) or "missing"; SourceError when the name
    cannot even be looked up (too long: ENAMETOOLONG came out of is_dir() as a bare OSError
    whose line held the whole name and no key)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        if err.errno == errno.ENOTDIR:
            return "missing"
        raise SourceError(f"{excerpt(str(path))}: cannot be looked up "
                          f"({err.strerror or err})") from None
    return "folder" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "other"


def _file_or_folder(uri: str) -> str:
    """What the file source ``uri`` names, "file" or "folder"; SourceError (MissingSource
    when it does not exist) for what `run` cannot read frames from."""
    path = Path(uri.removeprefix("file://"))
    kind = _kind_of(path)
    if kind == "missing":
        hint = "; the demo clip is kind: demo (--source demo)" if uri == "demo" else ""
        raise MissingSource(dangling_link(path) or
                            f"{shown_uri(uri)}: no such file, folder or device{hint}")
    if kind == "file" and is_image_name(path):
        raise SourceError(f"{uri}: a single image is not a source; give its folder")
    return "folder" if kind == "folder" else "file"


def source_file(cfg: SourceConfig) -> Path | None:
    """The file or folder on this machine ``cfg`` reads frames from (a clip, a folder of
    images), or None (a camera, a stream, the Pi camera, the demo)."""
    if cfg.kind == "images" and cfg.uri:
        return Path(cfg.uri)
    if cfg.kind in ("auto", "opencv") and cfg.uri and not (
            _is_device(cfg.uri) or _is_stream(cfg.uri)):
        return Path(cfg.uri.removeprefix("file://"))
    return None


def check_source_path(cfg: SourceConfig, contents: bool = True) -> None:
    """Raise what `open_source` raises for the file or folder ``cfg`` names, without opening
    it (MissingSource when it does not exist, or a folder holds no images; ``contents``: look
    for them, as the images source does when it opens, and ClosedSource when this user may
    open none of them, on which `run` idles): `run` stops on it (78), and
    check-config says it in the same words, so it is not `run` alone that finds a source file
    missing. Cameras, streams, the Pi camera and the demo are not looked at (a camera may come
    later)."""
    folder = path = source_file(cfg)
    if path is not None and cfg.uri and cfg.kind == "images":
        if (kind := _kind_of(path)) != "folder":
            raise (MissingSource if kind == "missing" else SourceError)(
                not_a_folder(cfg.uri, missing=kind == "missing"))
    elif path is not None and cfg.uri and _file_or_folder(cfg.uri) != "folder":
        folder = None
        if _kind_of(path) == "file" and not os.access(path, os.R_OK):  # `run`'s open says so
            raise ClosedSource(f"{path}: {os.strerror(errno.EACCES)}")
    if contents and folder is not None:
        found = search_images(folder)
        images = [item for item in found if isinstance(item, Path)]
        # a folder this user may not search holds images maybe (was said 'no images' alone)
        shut = next((item for item in found if isinstance(item, FolderError)
                     and not os.access(item.path, os.R_OK | os.X_OK)), None)
        if not images and shut is not None:
            raise ClosedSource(f"{no_images(folder)} ({shut})")
        if not images:
            raise MissingSource(no_images(folder))
        if not any(os.access(image, os.R_OK) for image in images):  # `run` idles on them
            raise ClosedSource(f"{none_read(folder)} ({images[0]}: "
                               f"{os.strerror(errno.EACCES)})")


def turned(frame: Frame, degrees: int) -> Frame:
    """``frame`` as ``source.rotate`` says the camera hangs: `run`'s loop and doctor both see
    the picture the right way up (doctor timed the camera's unturned frames)."""
    if not degrees:
        return frame
    return dataclasses.replace(frame, image=rotated(frame.image, degrees))


def rotated(image: np.ndarray, degrees: int) -> np.ndarray:
    """``image`` turned ``degrees`` (0, 90, 180, 270) clockwise, C-contiguous as a Frame's."""
    import cv2

    turn = {90: cv2.ROTATE_90_CLOCKWISE, 180: cv2.ROTATE_180,
            270: cv2.ROTATE_90_COUNTERCLOCKWISE}.get(degrees)
    return image if turn is None else cv2.rotate(image, turn)


def open_source(cfg: SourceConfig, camera: str | None = None) -> Source:
    """The source ``cfg`` describes; raises SourceError only for permanent problems.
    ``camera``: the config's name for the camera it is, which starts its lines about frames
    (``frame_line_name``). Its frames are as the camera gives them: the loop turns them by
    ``source.rotate`` (``rotated``)."""
    check_source_path(cfg, contents=False)  # the images source lists its folder itself
    if cfg.kind == "demo":
        from maskd.demo import open_demo_source

        return open_demo_source(cfg)
    if cfg.kind == "picamera2":
        try:
            import picamera2  # noqa: F401
        except Exception as err:
            raise SourceError(
                f"source kind picamera2: cannot import picamera2 ({err}); on Raspberry Pi OS "
                "install it with 'sudo apt install python3-picamera2' and create the venv with "
                "--system-site-packages") from None
        return live_source("picamera2", lambda: _Picamera2Capture(cfg), cfg, camera=camera)
    if cfg.kind == "images":
        assert cfg.uri, "SourceConfig refuses kind images without a uri"
        return ImageFolderSource(Path(cfg.uri), loop=cfg.loop, fps=cfg.fps,
                                 realtime=realtime(cfg.loop))
    if cfg.kind == "opencv":
        return _open_uri(cfg.uri or "0", cfg, camera)
    # auto
    if cfg.uri:
        return _open_uri(cfg.uri, cfg, camera)
    found, broken = picamera2_available()
    if found:
        log.info("source auto: using %s through picamera2", found)
        return live_source("picamera2", lambda: _Picamera2Capture(cfg), cfg, camera=camera)
    opener = opencv_opener(AUTO_DEVICE, cfg)
    if broken:
        log.warning("source auto: %s (maskd doctor's packages line; `sudo deploy/install.sh` "
                    "puts the tested versions back); using %s", broken, AUTO_DEVICE)
        opener = _noting(opener, broken)
    else:
        log.info("source auto: no Pi camera; using %s", AUTO_DEVICE)
    return live_source(AUTO_DEVICE, opener, cfg, camera=camera)
