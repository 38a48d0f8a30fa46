"""The rate-limited log line that sources and the outbox share."""

from __future__ import annotations

import logging

from maskd.lograte import RateLimitedLog


def test_a_repeated_line_comes_at_once_then_once_a_minute_with_a_count(caplog):
    now = [0.0]
    say = RateLimitedLog(logging.getLogger("t.lograte"), clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="t.lograte"):
        assert say(logging.WARNING, "a", "cam: read failed %s", "x")
        for _ in range(99):  # a fault every 0.5 s for ~50 s: held back, counted
            now[0] += 0.5
            assert not say(logging.WARNING, "a", "cam: read failed %s", "x")
        assert say(logging.INFO, "b", "other cause")  # each cause has its own minute
        now[0] = 60.0
        assert say(logging.WARNING, "a", "cam: read failed %s", "x")
        say.reset()  # the fault is over: the next one is news again
        assert say(logging.WARNING, "a", "cam: read failed %s", "x")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["cam: read failed x", "other cause",
                     "cam: read failed x (99 more like it in the last 60 s)", "cam: read failed x"]


def test_throttle_says_each_key_at_once_then_once_per_period():
    """The one rule behind every "logged at once, then at most once a minute" line."""
    from maskd.lograte import Throttle

    now = [1000.0]
    t = Throttle(60.0, clock=lambda: now[0])
    assert t.due("a") and t.due("b") and not t.due("a")
    now[0] += 59.9
    assert not t.due("a")
    now[0] += 0.1
    assert t.due("a") and t.due("b") and not t.due("a")
    t.reset()
    assert t.due("a") and t.due("b")
