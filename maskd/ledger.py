"""The open violations, kept in ``state_dir`` whatever the sinks are.

A run killed with a violation open (``kill -9``, power loss) never sends its `end`. The next
start must end it with reason ``restart`` in every sink, JSON lines as much as MQTT, and only
once. So the run loop notes each start and update here before any sink gets it, and an end
after every sink got it; at start the service ends what is still noted (``restart_ends``),
and each of those ends, once given to every sink, leaves the file like any other end.

One small JSON file, read and rewritten under a lock file, so several processes sharing a
``state_dir`` (one per camera) keep each other's entries.
"""

from __future__ import annotations

import fcntl
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

from maskd.files import write_atomically
from maskd.types import ViolationEvent

log = logging.getLogger(__name__)

LEDGER_FILE = "open_violations.json"


class OpenViolations:
    """``state_dir``'s record of the violations open now, by event id."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LEDGER_FILE
        self._lock = threading.Lock()  # camera threads of one process
        self._warned = False

    def note(self, event: ViolationEvent) -> None:
        """A start or update: the violation is open now; an end: it is not any more."""
        rec = None
        if event.event_type != "end":
            rec = asdict(replace(event, best_crop=None))
            del rec["best_crop"]
            rec["noted"] = time.time()

        def change(entries: dict) -> None:
            if rec is None:
                entries.pop(event.event_id, None)
            else:
                entries[event.event_id] = rec

        self._under_lock(change)

    def restart_ends(self, cameras: set[str]) -> list[ViolationEvent]:
        """The `end` (reason ``restart``) of every violation of ``cameras`` a killed run left
        open; its end time is when it was last noted, the last moment it was known open."""
        found: list[dict] = []
        self._under_lock(lambda entries: found.extend(entries.values()), write=False)
        ends = []
        for rec in sorted(found, key=lambda r: r.get("noted", 0.0)):
            if rec.get("camera") not in cameras:
                continue  # another process's camera (a shared state_dir): it ends its own
            try:
                noted = float(rec.pop("noted", 0.0))
                ev = ViolationEvent(**{**rec, "box": tuple(rec["box"])})
            except (TypeError, ValueError, KeyError) as err:
                log.warning("%s: an entry that is no violation skipped (%s)", self.path, err)
                continue
            ends.append(replace(ev, event_type="end", seq=ev.seq + 1, end_reason="restart",
                                end_time=max(noted, ev.start_time), frame_seq=None))
        return ends

    def _under_lock(self, change: Callable[[dict], object], write: bool = True) -> None:
        """``change`` the entries read under the lock file, then write them back; where
        ``state_dir`` cannot keep them, a warning (once) and nothing else."""
        with self._lock:
            if not write and not self.path.exists():
                return  # nothing noted yet: no folder made, no warning before a violation
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path.with_name(f".{LEDGER_FILE}.lock"), "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    entries = self._read()
                    change(entries)
                    if write:
                        write_atomically(self.path, json.dumps(entries).encode("utf-8"))
            except (OSError, TypeError, ValueError) as err:
                if not self._warned:
                    self._warned = True
                    log.warning("cannot keep the open violations in %s (%s): violations open "
                                "when maskd is killed will not be ended at the next start",
                                self.path, err)

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except ValueError:
            log.warning("%s is not readable JSON; starting it afresh", self.path)
            return {}
        return data if isinstance(data, dict) else {}
