"""The durable MQTT outbox: order, bounds, crash safety, damaged files, one owner."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from maskd.outbox import OUTBOX_FILE, Outbox, OutboxError


def test_fifo_order_survives_reopen_and_ids_keep_growing(tmp_path):
    ob = Outbox(tmp_path)
    ids = [ob.put("t/a", {"n": i}) for i in range(5)]
    ob.remove(ids[0])
    ob.remove(ids[2])
    assert [r.payload["n"] for r in ob.pending()] == [1, 3, 4]
    assert [r.payload["n"] for r in ob.pending(after_id=ids[3])] == [4]
    ob.close()

    ob = Outbox(tmp_path)
    assert ob.depth() == 3
    new = ob.put("t/a", {"n": 5})
    assert new > ids[-1]  # ids never reused, so replay order holds across restarts
    ob.remove(ids[1])
    ob.remove(ids[1])  # removing twice (a duplicate PUBACK) is harmless
    assert ob.depth() == 3
    assert [r.payload["n"] for r in ob.pending()] == [3, 4, 5]
    ob.close()


def test_count_bound_drops_oldest_with_log_and_counter(tmp_path, caplog):
    ob = Outbox(tmp_path, max_events=3)
    with caplog.at_level(logging.WARNING, logger="maskd.outbox"):
        for i in range(5):
            ob.put("t", {"n": i})
    assert ob.depth() == 3
    assert ob.dropped == 2
    assert [r.payload["n"] for r in ob.pending()] == [2, 3, 4]
    # logged at once, then at most once a minute (not once per put while full)
    assert caplog.text.count("dropped the") == 1 and "dropped the 1 oldest" in caplog.text
    ob.close()


def test_age_bound(tmp_path, caplog):
    ob = Outbox(tmp_path, max_age_s=60)
    ob.put("t", {"n": 0}, now=1000.0)
    ob.put("t", {"n": 1}, now=1050.0)
    assert ob.oldest_age(now=1055.0) == pytest.approx(55.0)
    with caplog.at_level(logging.WARNING, logger="maskd.outbox"):
        assert ob.prune(now=1070.0) == 1
    assert [r.payload["n"] for r in ob.pending()] == [1]
    assert ob.dropped == 1
    assert "older than 60 s" in caplog.text
    ob.remove(ob.pending()[0].id)
    assert ob.oldest_age() is None
    ob.close()


def test_rows_committed_before_sigkill_survive(tmp_path):
    """put() returns only after the row is durable: a process killed right after keeps them."""
    code = textwrap.dedent(
        f"""
        import os, signal
        from maskd.outbox import Outbox
        ob = Outbox({str(tmp_path)!r})
        for i in range(50):
            ob.put("t", {{"n": i}})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    ob = Outbox(tmp_path)
    assert [r.payload["n"] for r in ob.pending(limit=1000)] == list(range(50))
    ob.close()


def test_damaged_file_is_moved_aside(tmp_path, caplog):
    (tmp_path / OUTBOX_FILE).write_bytes(b"this is not sqlite" * 100)
    with caplog.at_level(logging.ERROR, logger="maskd.outbox"):
        ob = Outbox(tmp_path)
    assert "unreadable" in caplog.text
    assert any(p.name.startswith(OUTBOX_FILE + ".corrupt-") for p in tmp_path.iterdir())
    ob.put("t", {"n": 1})
    assert ob.depth() == 1
    ob.close()


def test_second_process_on_same_state_dir_is_refused(tmp_path):
    ob = Outbox(tmp_path)
    code = f"from maskd.outbox import Outbox; Outbox({str(tmp_path)!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "in use by another maskd process" in proc.stderr
    ob.close()
    Outbox(tmp_path).close()  # free again once the owner closed it


def test_unwritable_state_dir_is_a_clear_error(tmp_path):
    if os.geteuid() == 0:
        target = tmp_path / "file"
        target.write_text("x")
        bad = target / "sub"  # a path under a regular file: fails even for root
    else:
        bad = tmp_path / "ro"
        bad.mkdir(mode=0o500)
    with pytest.raises(OutboxError, match="state dir"):
        Outbox(bad)
