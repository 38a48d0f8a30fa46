"""The two clocks a device needs: the wall clock, and the time since boot, which NTP never steps.

A Raspberry Pi has no real-time clock. It boots on the time it was switched off (fake-hwclock)
and jumps to the right time once the network lets NTP through; after a week switched off that
jump is a week. Whatever ages stored data (the MQTT outbox, the snapshot folder) measures age by
the time since boot where it can, so that the jump ages nothing.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path

from maskd.env import Environment

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")
LOCALTIME = Path("/etc/localtime")  # the machine's time zone (timedatectl relinks it)
ZONE_CHECK_S = 60.0
STEP_S = 60.0  # the wall clock moving this much more (or less) than the time since boot: a step
# Between two frames the two clocks are read together, so any difference this large is a step
# worth a warning; the tracker and the violations follow every step (maskd.pipeline), since a
# step of a fraction of a second is still a fraction of their spans.
FRAME_STEP_S = 1.0
# 2026-01-01 00:00 UTC: no maskd of this version ran before it, so a wall clock before it is not
# set (a Pi with neither fake-hwclock's saved time nor NTP yet starts in 1970).
CLOCK_FLOOR = 1_767_225_600.0

Clock = Callable[[], tuple[float, float]]  # () -> (wall time, seconds since boot)

_SINCE_BOOT = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def system_clock() -> tuple[float, float]:
    """The wall clock and the time since boot (CLOCK_BOOTTIME: never stepped, counts suspend)."""
    return time.time(), time.clock_gettime(_SINCE_BOOT)


def boot_id() -> str:
    """This boot's id; where the kernel does not say, one for this process (then only what this
    process stored is aged by the time since boot)."""
    try:
        found = BOOT_ID_FILE.read_text().strip()
    except OSError:
        found = ""
    return found or f"process-{uuid.uuid4().hex}"


def not_set(wall: float) -> str | None:
    """The warning for a wall clock that cannot be right (before CLOCK_FLOOR), else None: event
    times and the schedule's windows silently followed 1970 (detection off "until Thu 08:00")."""
    if wall >= CLOCK_FLOOR:
        return None
    said = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(wall))
    return (f"the wall clock says {said}: it is not set (no real-time clock, and no NTP yet); "
            "event times, snapshot names and the schedule follow it until NTP sets it, and "
            "maskd follows that step")


def local_iso(wall: float) -> str:
    """A wall time as status lines and logs show it: ISO 8601, local time, to the second."""
    return datetime.fromtimestamp(wall).astimezone().isoformat(timespec="seconds")


def oldest_first(dated: dict[Path, float], written: Iterable[Path]) -> list[Path]:
    """Files (path -> mtime) oldest first, for a retention that deletes from the front: by their
    dates, but those this process ``written`` after all others, in that order. A Pi without a
    real-time clock may run on an earlier time than a run before it (a boot in 1970, or
    fake-hwclock's time after a power cut, or a step back): by dates alone, a cap deleted what
    was just recorded and kept the older run's files, dated later."""
    order = {p: i for i, p in enumerate(written)}
    return sorted(dated, key=lambda p: (order.get(p, -1), dated[p], p))


class Uptime:
    """Seconds since it was made, by the time since boot: NTP's first sync on a Pi without a
    real-time clock steps the wall clock by days or months, and an uptime read off the wall clock
    jumped with it (or went negative on a step back)."""

    def __init__(self, clock: Clock = system_clock) -> None:
        self._clock = clock
        self._t0 = clock()[1]

    def __call__(self) -> float:
        return self._clock()[1] - self._t0


class StepWatch:
    """Tells a step of the wall clock from readings of (wall time, time since boot).

    The difference of the two clocks holds still while the wall clock merely runs (NTP slews
    both alike); a step moves it. ``step`` returns how far the wall clock stepped since the
    last step it returned (or the first reading), once it is at least ``limit`` either way,
    and 0.0 otherwise: what a reader adds to the wall times it remembered.
    """

    def __init__(self, limit: float) -> None:
        self.limit = limit
        self._offset: float | None = None

    def step(self, wall: float, since_boot: float) -> float:
        offset = wall - since_boot
        if self._offset is None:
            self._offset = offset
            return 0.0
        step = offset - self._offset
        if abs(step) < self.limit:
            return 0.0
        self._offset = offset
        return step


class ZoneWatch:
    """Follows a change of the machine's time zone while maskd runs.

    The C library reads the zone once per process: after ``timedatectl set-timezone`` (or
    raspi-config) the schedule kept judging windows, and the log named times, in the old zone
    until a restart. ``poll`` looks at ``/etc/localtime`` at most every ``every_s`` seconds and
    reloads the zone (``time.tzset``) when it changed; it returns the new zone's name then,
    unless ``TZ`` names another zone (a unit's ``Environment=TZ=``), which the file does not move.
    A ``TZ`` that names the file itself (``TZ=:/etc/localtime``) follows it.
    """

    def __init__(self, path: Path = LOCALTIME, every_s: float = ZONE_CHECK_S) -> None:
        self._path = path
        self._every = every_s
        self._seen = self._stamp()
        self._next = time.monotonic() + every_s

    def _stamp(self) -> tuple[str, int, int, int] | None:
        try:
            target = os.readlink(self._path) if self._path.is_symlink() else ""
            st = self._path.stat()
        except OSError:
            return None
        return target, st.st_ino, st.st_mtime_ns, st.st_size

    def poll(self) -> str | None:
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + self._every
        stamp = self._stamp()
        if stamp == self._seen:
            return None
        self._seen = stamp
        tz = Environment.read().tz
        if tz and os.path.normpath(tz.lstrip(":")) != str(self._path):  # the zone is TZ's, not
            return None  # this file's: "time zone now" named a change that changed nothing
        if tz:  # TZ=:/etc/localtime: the C library reads its file again only when TZ's text
            # changed, so tzset kept the old zone (and the line named it as the new one): the
            # same file, spelled the other way
            here = str(self._path)
            os.environ["TZ"] = f":{self._path.parent}/./{self._path.name}" \
                if tz.lstrip(":") == here else f":{here}"
        time.tzset()
        return time.strftime("%Z")
