"""A clock pair for tests that step the wall clock (maskd.clock.Clock's shape)."""

from __future__ import annotations


class SteppedClock:
    """(wall time, time since boot) as a Pi without a real-time clock sees them: the second
    only moves on; the first can be stepped, as NTP does once the network is back."""

    def __init__(self, wall: float = 1_790_000_000.0, uptime: float = 100.0) -> None:
        self.wall, self.uptime = wall, uptime

    def __call__(self) -> tuple[float, float]:
        return self.wall, self.uptime

    def run(self, seconds: float) -> None:
        self.wall += seconds
        self.uptime += seconds
