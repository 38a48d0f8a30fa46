"""maskd.watch.WatchedFiles on real files: when a changed version counts as settled."""

from __future__ import annotations

import os
import time

import pytest

from maskd import watch
from maskd.watch import WatchedFiles


@pytest.fixture
def settle(monkeypatch) -> float:
    monkeypatch.setattr(watch, "SETTLE_S", 0.5)
    return 0.5


def _watched(*paths) -> WatchedFiles[str]:
    return WatchedFiles(list(paths), "secret", "old", "test", "it goes on")


def test_a_file_written_just_now_is_read_once_it_stayed_the_same(tmp_path, settle):
    """Written in place (truncate, write): a look in between must not take half of it."""
    f = tmp_path / "secret"
    f.write_text("old")
    files = _watched(f)
    f.write_text("ne")  # half of it, this instant
    assert files.changed() is None
    time.sleep(settle + 0.1)
    assert files.changed() is not None


def test_a_file_last_written_a_while_ago_is_read_at_the_first_look(tmp_path, settle):
    """A holder asked now and then (the status page at a Prometheus scrape every 15 s) looks
    first after the rotation is long done: it must not turn that request away (was: a version
    counted as settled only once seen unchanged for SETTLE_S, so the first look never took it)."""
    f = tmp_path / "secret"
    f.write_text("old")
    files = _watched(f)
    f.write_text("new")
    past = time.time() - 60
    os.utime(f, (past, past))
    assert files.changed() is not None
    assert files.reload(f.read_text) and files.value == "new"


def test_a_file_missing_a_moment_is_waited_for_even_when_the_others_are_old(tmp_path, settle):
    """`rm` then write (no rename): while the key is gone the others' old times say nothing."""
    cert, key = tmp_path / "c", tmp_path / "k"
    cert.write_text("c")
    key.write_text("k")
    past = time.time() - 60
    os.utime(cert, (past, past))
    files = _watched(cert, key)
    key.unlink()
    assert files.changed() is None
    key.write_text("k2")
    os.utime(key, (past, past))
    assert files.changed() is not None
