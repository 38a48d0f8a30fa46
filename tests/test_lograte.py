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


def test_each_summary_counts_only_the_lines_held_since_the_last_one(caplog):
    """Mutants that survived: the held count kept after it was said (the second minute's line
    counted the first minute's too), a single held line not said at all, a reset that kept the
    old fault's count for the new fault's first line, the count's period said as 60 s for a
    log of another period, and held() counting keys instead of lines."""
    now = [0.0]
    say = RateLimitedLog(logging.getLogger("t.lograte"), every_s=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="t.lograte"):
        assert say(logging.WARNING, "a", "a")
        for _ in range(3):  # three held back in the first period
            now[0] += 1.0
            assert not say(logging.WARNING, "a", "a")
        assert say(logging.WARNING, "b", "b")  # b's first: said at once
        now[0] += 1.0
        assert not say(logging.WARNING, "b", "b")
        assert say.held() == 4  # lines, all keys together (3 of a, 1 of b)
        now[0] = 10.0
        assert say(logging.WARNING, "a", "a")  # the 3 held back
        now[0] = 11.0
        assert not say(logging.WARNING, "a", "a")  # one held back in the second period
        now[0] = 20.0
        assert say(logging.WARNING, "a", "a")  # that one alone, not 3 + 1
        now[0] = 21.0
        assert not say(logging.WARNING, "a", "a")
        say.reset()  # the fault is over: a new one starts without the old count
        assert say(logging.WARNING, "a", "a") and say.held() == 0
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["a", "b", "a (3 more like it in the last 10 s)",
                     "a (1 more like it in the last 10 s)", "a"], lines
