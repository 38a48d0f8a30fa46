"""Every environment variable maskd reads, read here and nowhere else.

The YAML config (maskd.config) says what to do; these few variables only say where the
installation put things and what the process runs under:

| variable | set by | meaning |
|---|---|---|
| ``MASKD_MODEL_DIR`` | the systemd unit, the installer's wrapper | folder holding the shipped classifier model |
| ``MASKD_YUNET`` | a user | YuNet ``.onnx`` to use when ``detector.model`` is unset |
| ``NOTIFY_SOCKET`` | systemd (``Type=notify``) | where READY/WATCHDOG/STATUS go |
| ``WATCHDOG_USEC``, ``WATCHDOG_PID`` | systemd (``WatchdogSec=``) | the watchdog period, and for which process |
| ``DISPLAY``, ``WAYLAND_DISPLAY`` | the desktop session | whether ``preview.window`` can open |
| the name in ``mqtt.password_env`` | the unit's drop-in | the broker password (the config names it) |
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

MODEL_DIR = "MASKD_MODEL_DIR"
YUNET = "MASKD_YUNET"

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
    display: bool = False

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
            display=bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY")),
        )


def variable(name: str) -> str | None:
    """A variable the config names explicitly (``mqtt.password_env``)."""
    return os.environ.get(name)
