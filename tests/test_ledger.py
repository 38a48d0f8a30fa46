"""The open violations in state_dir (maskd.ledger) on a real full disk (a 256 KiB tmpfs)."""

from __future__ import annotations

import logging

from maskd.ledger import OpenViolations
from maskd.types import ViolationEvent


def event(event_id: str, event_type: str = "start", seq: int = 0) -> ViolationEvent:
    return ViolationEvent(event_type, event_id, seq, "door", 1, 1_700_000_000.0, 0.9, 0.9,
                          (0.1, 0.1, 0.2, 0.2), end_reason="gone" if event_type == "end" else None)


def test_changes_a_full_disk_held_back_are_written_once_there_is_room(tmp_path, caplog):
    """An end the full disk refused left its start in the file for good: the next start ended
    that violation `restart` a second time. Held in memory, it goes with the next write."""
    from mqtt_broker import fill_disk, small_disk

    with small_disk(tmp_path / "disk") as d:
        ledger = OpenViolations(d)
        ledger.note(event("ended-while-full"))
        ledger.note(event("open-across"))
        filler = fill_disk(d)
        with caplog.at_level(logging.INFO, logger="maskd.ledger"):
            ledger.note(event("ended-while-full", "end", 1))
            ledger.note(event("started-while-full"))
            ledger.note(event("short", "start"))
            ledger.note(event("short", "end", 1))
            filler.unlink()
            ledger.note(event("open-across", "update", 1))
        ends = OpenViolations(d).restart_ends({"door"})
    assert sorted((e.event_id, e.seq) for e in ends) == [("open-across", 2),
                                                          ("started-while-full", 1)]
    assert caplog.text.count("cannot keep the open violations") == 1
    assert "kept in" in caplog.text.splitlines()[-1] and "again" in caplog.text
