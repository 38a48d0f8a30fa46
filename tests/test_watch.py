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


def test_a_version_that_fails_is_warned_about_once_and_a_fixed_one_loads(tmp_path, settle, caplog):
    """Mutants that survived: the failed version remembered as the loaded one's stamp, or
    compared the wrong way round, which warned at every look (each second, for a status page
    asked all the time) or never loaded the fixed file; and a loaded version not remembered,
    so the same file was "changed" and loaded again at every look."""
    import logging

    f = tmp_path / "secret"
    f.write_text("old")
    files = _watched(f)

    def load() -> str:
        text = f.read_text()
        if " " in text:
            raise ValueError("a space in it")
        return text

    past = time.time() - 60
    f.write_text("b d")
    os.utime(f, (past, past))
    with caplog.at_level(logging.WARNING, logger="maskd.watch"):
        for _ in range(3):
            assert not files.reload(load)
    assert files.value == "old" and caplog.text.count("a space in it") == 1, caplog.text
    assert files.fault() and files.fault()[0].startswith("test: a space in it; it goes on with")
    f.write_text("new")
    os.utime(f, (past - 10, past - 10))
    assert files.reload(load) and files.value == "new" and files.fault() == []
    assert files.changed() is None and not files.reload(load)  # loaded: no change any more


def test_the_fault_names_when_the_value_in_use_was_read(tmp_path, settle, monkeypatch):
    """The fault says which version goes on: the one read last, not the one at start."""
    reads = iter(["first", "second", "third"])
    monkeypatch.setattr(watch, "local_iso", lambda _t: next(reads))
    f = tmp_path / "secret"
    f.write_text("old")
    files = _watched(f)  # read at "first"
    past = time.time() - 60
    f.write_text("new")
    os.utime(f, (past, past))
    assert files.reload(f.read_text)  # read at "second"
    f.write_text("bad")
    os.utime(f, (past - 10, past - 10))

    def refuse() -> str:
        raise ValueError("no")

    assert not files.reload(refuse)
    assert files.fault() == ["test: no; it goes on with the secret read at second"]


def test_a_file_replaced_by_one_of_the_same_size_and_time_is_a_new_version(tmp_path, settle):
    """A renewal by rename (`mv`, `cp -p` then `mv`, certbot's symlink swap) may keep the size
    and the time: the inode tells it; one written in place within the same clock tick keeps
    the time: the size tells it."""
    f, new = tmp_path / "secret", tmp_path / "secret.new"
    f.write_text("aaa")
    past = time.time() - 60
    os.utime(f, (past, past))
    files = _watched(f)
    st = f.stat()
    new.write_text("bbb")
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, f)
    assert f.stat().st_size == st.st_size and f.stat().st_mtime_ns == st.st_mtime_ns
    assert files.reload(f.read_text) and files.value == "bbb"
    st = f.stat()
    f.write_text("cccc")  # in place: the same inode
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert files.reload(f.read_text) and files.value == "cccc"


def test_a_version_dated_ahead_settles_by_being_seen_unchanged(tmp_path, settle):
    """A file whose time is ahead of this clock (copied with its time from a machine ahead,
    or written before this Pi's clock was set) never looks written long ago: it is read once
    seen unchanged for SETTLE_S, and a version that changes again meanwhile starts that wait
    over."""
    f = tmp_path / "secret"
    f.write_text("old")
    files = _watched(f)
    ahead = time.time() + 3600
    f.write_text("ne")
    os.utime(f, (ahead, ahead))
    assert files.changed() is None
    time.sleep(settle + 0.1)
    f.write_text("new")  # changed again: its own wait starts now
    os.utime(f, (ahead + 1, ahead + 1))
    assert files.changed() is None
    time.sleep(settle + 0.1)
    assert files.changed() is not None


def test_a_file_written_just_now_next_to_old_ones_is_not_taken_half_written(tmp_path, settle):
    """The certificate renewed long ago, its key being written now: it is the newest file
    that must be quiet, not the oldest."""
    cert, key = tmp_path / "c", tmp_path / "k"
    cert.write_text("c")
    key.write_text("k")
    past = time.time() - 60
    os.utime(cert, (past, past))
    os.utime(key, (past, past))
    files = _watched(cert, key)
    key.write_text("k2")  # now
    assert files.changed() is None
