"""Rate limits for log lines of faults that may repeat on every call: said at once, then at
most once a minute per cause, with how many were held back, so a fault that repeats every
second is one line a minute in the journal, not 3600."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

LOG_EVERY_S = 60.0  # a repeated line is logged at most this often (per key)


class Throttle:
    """Whether a message for ``key`` is due: at once for a key not seen (or after ``reset``),
    then at most every ``every_s``. The one "once a minute" rule of every sink and source."""

    def __init__(self, every_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = LOG_EVERY_S if every_s is None else every_s  # read now: tests shorten it
        self._clock = clock
        self._last: dict[str, float] = {}

    def due(self, key: str = "") -> bool:
        now = self._clock()
        if now - self._last.get(key, float("-inf")) < self.every_s:
            return False
        self._last[key] = now
        return True

    def reset(self) -> None:
        """Every key is due again (the fault they were about is over)."""
        self._last.clear()


class RateLimitedLog(Throttle):
    """``log(level, key, msg, *args)``: the first line of a ``key`` at once, the next ones at most
    every ``every_s``; a line after held-back ones says how many there were."""

    def __init__(self, logger: logging.Logger, every_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(every_s, clock)
        self._log = logger
        self._held: dict[str, int] = {}

    def __call__(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Log now or hold back; True when the line was logged."""
        if not self.due(key):
            self._held[key] = self._held.get(key, 0) + 1
            return False
        held = self._held.pop(key, 0)
        if held:
            msg += " (%d more like it in the last %.0f s)"
            args = (*args, held, self.every_s)
        self._log.log(level, msg, *args, stacklevel=2)  # where the caller is, not here
        return True

    def held(self) -> int:
        """How many lines are held back now, all keys together."""
        return sum(self._held.values())

    def reset(self) -> None:
        super().reset()
        self._held.clear()
