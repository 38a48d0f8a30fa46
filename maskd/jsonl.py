"""The JSON lines event sink: each event's own payload fields (maskd.mqtt.schema), one line each."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import IO

from maskd.mqtt.schema import event_fields
from maskd.types import EventSink, ViolationEvent

log = logging.getLogger(__name__)


class JsonlSink(EventSink):
    """Events as JSON lines on stdout (``-``) or appended to a file, flushed per line.

    A consumer tailing the file or reading the pipe sees each event as soon as it happens;
    nothing waits in a buffer when the process is killed.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.failed = 0
        if target == "-":
            self._fh: IO[str] = sys.stdout
            self._owns = False
        else:
            p = Path(target)
            p.parent.mkdir(parents=True, exist_ok=True)
            self._fh = p.open("a", encoding="utf-8")
            self._owns = True

    def emit(self, event: ViolationEvent) -> None:
        try:
            self._fh.write(json.dumps(event_fields(event)) + "\n")
            self._fh.flush()
        except (OSError, ValueError) as err:  # disk full, closed pipe: report, keep the loop up
            self.failed += 1
            log.error("jsonl %s: cannot write event %s: %s", self.target, event.event_id, err)

    def flush(self, timeout: float) -> bool:
        """Lines are flushed as written; True unless a write failed."""
        return self.failed == 0

    def close(self) -> None:
        if self._owns:
            self._fh.close()
