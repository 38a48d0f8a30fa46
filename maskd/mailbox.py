"""A one-slot mailbox between two threads, for live video where only the newest item matters.

Used by the live sources (grabber -> loop) and by the previews (loop -> renderer): a slow
consumer gets the newest item instead of a queue of stale ones, and every item overwritten
unread is counted.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Mailbox(Generic[T]):
    """put() overwrites, so the consumer always gets the newest item."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.dropped = 0  # items overwritten before the consumer took them

    def put(self, item: T) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> T | None:
        """The newest item, or None on timeout / once closed and empty."""
        with self._cond:
            self._cond.wait_for(lambda: self._item is not None or self._closed, timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """No more items: wakes a waiting get(); an item still in the box is handed out first."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed
