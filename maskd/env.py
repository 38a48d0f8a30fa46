"""Every environment variable maskd reads, read here and nowhere else.

The YAML config (maskd.config) says what to do; these few variables only say where the
installation put things and what the process runs under:

| variable | set by | meaning |
|---|---|---|
| ``MASKD_MODEL_DIR`` | the systemd unit, the installer's wrapper | folder holding the shipped classifier model |
| ``MASKD_YUNET`` | a user | YuNet ``.onnx`` to use when ``detector.model`` is unset |
| ``MASKD_DEMO_FAST`` | the tests, ``tools/soak.py``, ``tools/bench_writes.py`` | set (not empty or ``0``): a looping demo, video file or images folder plays as fast as it can, not in real time (maskd.demo, maskd.env.realtime; also ``tools/soak.py --video``) |
| ``NOTIFY_SOCKET`` | systemd (``Type=notify``) | where READY/WATCHDOG/STATUS go |
| ``WATCHDOG_USEC``, ``WATCHDOG_PID`` | systemd (``WatchdogSec=``) | the watchdog period, and for which process |
| ``JOURNAL_STREAM`` | systemd (stdout/stderr to the journal) | ``DEV:INODE`` of that stream: stderr is the journal when it matches (maskd.journal) |
| ``DISPLAY``, ``WAYLAND_DISPLAY`` | the desktop session | whether ``preview.window`` can open |
| ``TZ`` | a unit's ``Environment=`` | a time zone that a changed ``/etc/localtime`` does not move (maskd.clock.ZoneWatch) |
| the name in ``mqtt.password_env`` | the unit's drop-in | the broker password (the config names it) |

Two more are OpenCV's own, read by OpenCV and FFmpeg, not by maskd: ``maskd run``, ``scan``,
``classify`` and ``check-config`` only give them a default at their start (``quiet_opencv``), which a value in the
environment overrides:

| variable | maskd's default | meaning |
|---|---|---|
| ``OPENCV_FFMPEG_LOGLEVEL`` | ``-8`` (quiet) | FFmpeg's log level; any value also sends FFmpeg's lines to stdout, ``[OPENCV:FFMPEG:NN]`` |
| ``OPENCV_LOG_LEVEL`` | ``ERROR`` | OpenCV's own log lines (``[ WARN:...]``) below this level are not printed |
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path

MODEL_DIR = "MASKD_MODEL_DIR"
YUNET = "MASKD_YUNET"
DEMO_FAST = "MASKD_DEMO_FAST"
# OpenCV's variables maskd gives a default (quiet_opencv): each with its value, and the variables
# that turn its debug output on, which a default must not silence again. OpenCV's FFmpeg backend
# (cap_ffmpeg_impl.hpp) uses OPENCV_FFMPEG_LOGLEVEL, else level VERBOSE when OPENCV_FFMPEG_DEBUG
# is set; OPENCV_VIDEOIO_DEBUG / OPENCV_VIDEOCAPTURE_DEBUG print at OpenCV's WARNING level.
OPENCV_DEFAULTS = (
    ("OPENCV_FFMPEG_LOGLEVEL", "-8", ("OPENCV_FFMPEG_DEBUG",)),
    ("OPENCV_LOG_LEVEL", "ERROR", ("OPENCV_VIDEOIO_DEBUG", "OPENCV_VIDEOCAPTURE_DEBUG")),
)

log = logging.getLogger(__name__)


def _path(value: str | None) -> Path | None:
    return Path(value).expanduser() if value else None


@dataclass(frozen=True)
class Environment:
    """What the environment says, read in one go."""

    model_dir: Path | None = None
    yunet: Path | None = None
    notify_socket: str | None = None
    watchdog_usec: str = ""
    watchdog_pid: str = ""
    journal_stream: str = ""
    demo_fast: bool = False
    display: bool = False
    tz: str = ""  # TZ as set; the C library reads it itself, maskd only looks (ZoneWatch)

    @property
    def watchdog_s(self) -> float | None:
        """Seconds between watchdog deadlines from $WATCHDOG_USEC, or None when not ours / not set.

        $WATCHDOG_PID names the process the watchdog is meant for; a child that inherited the
        environment must not ping on the parent's behalf.
        """
        usec, pid = self.watchdog_usec, self.watchdog_pid
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            value = int(usec)
        except ValueError:
            log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
            return None
        return value / 1e6 if value > 0 else None

    @classmethod
    def read(cls, env: Mapping[str, str] | None = None) -> Environment:
        """The process environment (or ``env``, for tests)."""
        env = os.environ if env is None else env
        return cls(
            model_dir=_path(env.get(MODEL_DIR)),
            yunet=_path(env.get(YUNET)),
            notify_socket=env.get("NOTIFY_SOCKET") or None,
            watchdog_usec=env.get("WATCHDOG_USEC", ""),
            watchdog_pid=env.get("WATCHDOG_PID", ""),
            journal_stream=env.get("JOURNAL_STREAM", ""),
            demo_fast=env.get(DEMO_FAST, "") not in ("", "0"),
            display=bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")),
            tz=env.get("TZ", ""),
        )


def quiet_opencv(env: MutableMapping[str, str] | None = None) -> None:
    """Keep OpenCV and FFmpeg from printing a line or two at every reconnect of a camera away.

    A network camera that is unreachable costs each open attempt an FFmpeg line (``[tcp @ 0x..]
    Connection to tcp://... failed: Connection refused``) and, with OpenCV 4.11 and 5.0 (not 4.6),
    an OpenCV one (``[ WARN:0@..] global cap.cpp:... can't be used to capture by name``): ~5,700 a day in the
    journal at the 30 s backoff, while maskd says the same once a minute (``maskd.lograte``).
    FFmpeg's level cannot tell a refused connection from a decode error (both ERROR), so all its
    lines go, those about damaged pictures of a working stream too (``overread``); maskd logs
    what it can see itself (no frame, undecodable frames, a frozen picture).

    For ``maskd run``, ``scan``, ``classify`` and ``check-config`` (``maskd.cli.main``), whose
    own lines say what went wrong; ``doctor`` keeps OpenCV's and FFmpeg's words. Only defaults, set in the environment OpenCV reads:
    OpenCV 5.0 has read ``OPENCV_LOG_LEVEL`` once ``cv2`` is imported, 4.11 and 5.0 read the
    FFmpeg ones at the first open only (4.6 at every open), so this runs before ``cv2`` is
    imported. A variable already set, or a debug switch of the same part, wins:
    ``OPENCV_FFMPEG_LOGLEVEL=16`` shows FFmpeg's errors.
    """
    env = os.environ if env is None else env
    for name, value, switches in OPENCV_DEFAULTS:
        if not any(s in env for s in (name, *switches)):
            env[name] = value


def variable(name: str) -> str | None:
    """A variable the config names explicitly (``mqtt.password_env``)."""
    return os.environ.get(name)


def realtime(loop: bool) -> bool:
    """Whether a file, folder or demo source plays in real time: looping, it stands in for a
    camera, unless ``$MASKD_DEMO_FAST`` is set (the tests, tools/soak.py); once through, it
    is read as fast as the machine allows (the quick start, ``--exit-at-end`` runs wait)."""
    return loop and not Environment.read().demo_fast
