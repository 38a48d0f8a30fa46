"""Weekly detection windows: when the schedule lets detection run, pure functions of a time.

Windows are local wall-clock times on given weekdays, e.g. ``{days: [mon, tue, wed, thu, fri],
start: "07:30", end: "18:00"}``; a window whose end is before its start runs past midnight into
the next day. No windows: detection runs at all times (the switch alone decides).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Window:
    days: tuple[int, ...]  # 0 = Monday, as datetime.weekday()
    start: time
    end: time

    def covers(self, at: datetime) -> bool:
        t, day = at.time(), at.weekday()
        if self.start <= self.end:  # an end of 24:00 (time.max) takes the day's last instant too
            return day in self.days and self.start <= t and (t < self.end or self.end == time.max)
        # past midnight: the evening part on a listed day, the morning part on the day after
        return (day in self.days and t >= self.start) or \
            ((day - 1) % 7 in self.days and t < self.end)


def parse_time(text: str) -> time:
    """'HH:MM' (24 h) -> time; '24:00' is the end of the day. The error does not repeat the
    text: the config's line shows a bounded excerpt of it (a whole 5000-character value was)."""
    if text == "24:00":
        return time.max
    try:
        return datetime.strptime(text, "%H:%M").time()
    except ValueError:
        raise ValueError("is not a time HH:MM (00:00-24:00)") from None


def allows(windows: Sequence[Window], timestamp: float) -> bool:
    """Whether detection may run at ``timestamp`` (seconds since the epoch, local time zone)."""
    if not windows:
        return True
    at = datetime.fromtimestamp(timestamp)
    return any(w.covers(at) for w in windows)


def next_change(windows: Sequence[Window], timestamp: float, horizon_days: int = 8) -> float | None:
    """When ``allows`` next flips (to the minute), for the log and the switch's attributes.

    Steps through real time, not local clock times: across a DST change local minutes are
    skipped or repeated, and a walk over them missed the flip in a repeated hour (and named
    a time an hour in the past)."""
    if not windows:
        return None
    now = allows(windows, timestamp)
    at = timestamp - timestamp % 60  # local minutes start on whole UTC minutes
    for _ in range(horizon_days * 24 * 60):
        at += 60
        if allows(windows, at) != now:
            return at
    return None


def when(at: float, now: float) -> str:
    """A coming change as the log says it: ``Sun 02:00 CET, in 30 min``. The weekday and wall
    time alone misled twice: in the autumn's repeated hour "off until Sun 02:00", said at Sunday
    02:30, read as a week away (it was 30 minutes), and a zone's offset told the two 02:00s
    apart nowhere. Under half a minute away it counts seconds ("in 0 min" said nothing)."""
    secs = max(round(at - now), 0)
    mins = round(secs / 60)
    hours, days = mins // 60, mins // 1440
    left = f"{days} d {hours % 24} h" if days else \
        f"{hours} h {mins % 60} min" if hours else f"{mins} min" if mins else f"{secs} s"
    return f"{datetime.fromtimestamp(at).astimezone():%a %H:%M %Z}, in {left}"
