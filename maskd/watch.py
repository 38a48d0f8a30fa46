"""Files read again when they change on disk under a running maskd.

Months into a run, credentials change: certbot or step-ca renew a client certificate, a
building rotates the MQTT password or the status page's password or token. Whoever holds such
files (maskd.mqtt.credentials, the status page) keeps a ``WatchedFiles``: it notices a new
version, loads it once it has settled, and keeps the last good value with one warning while a
changed version does not load.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Generic, TypeVar

from maskd.clock import local_iso

log = logging.getLogger(__name__)

# what identifies a file's version: a renewal by rename changes the inode, one in place the
# time or size; a file that cannot be read is its error
_Stamp = tuple[tuple[int, int, int] | str, ...]
# A changed version is read once it has stayed the same this long: a renewal that writes in
# place (truncate, write; the certificate, then its key) is not caught half way, which would
# be a warning at every renewal.
SETTLE_S = 2.0
# How often a holder asked all the time (the loop's status line every frame, the status page
# at every request) looks at its files.
LOOK_EVERY_S = 1.0
T = TypeVar("T")


class WatchedFiles(Generic[T]):
    """Files read together (the TLS trio, a password file): what was last loaded from them,
    and the version that failed to load with why. ``label`` starts its log lines and faults
    ("MQTT", "status page"); ``goes_on`` says what keeps working meanwhile ("connections go
    on")."""

    def __init__(self, paths: list[Path], what: str, value: T, label: str, goes_on: str) -> None:
        self.paths, self.what, self.value = paths, what, value
        self.label, self.goes_on = label, goes_on
        self.stamp = self.now()
        self.read_at = local_iso(time.time())
        self.failed: tuple[_Stamp, str] | None = None
        self._seen: tuple[_Stamp, float] | None = None  # a new version, and since when (monotonic)

    def now(self) -> _Stamp:
        out: list[tuple[int, int, int] | str] = []
        for p in self.paths:
            try:
                st = p.stat()
            except OSError as err:
                out.append(str(err))
            else:
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def changed(self) -> _Stamp | None:
        """The files' version when it differs from the one loaded and from one that failed,
        and has not changed for SETTLE_S: seen unchanged that long, or every file last written
        that long ago (a holder asked only now and then, the status page at a scrape every
        15 s, would otherwise turn away the first request after a rotation)."""
        stamp, t = self.now(), time.monotonic()
        if stamp == self.stamp:  # the loaded version (back, e.g. restored with its times)
            self.failed = self._seen = None
            return None
        if self.failed and self.failed[0] == stamp:
            return None
        if self._seen is None or self._seen[0] != stamp:
            self._seen = (stamp, t)
        written = [v[1] / 1e9 for v in stamp if isinstance(v, tuple)]
        quiet = len(written) == len(stamp) and time.time() - max(written) >= SETTLE_S
        return stamp if quiet or t - self._seen[1] >= SETTLE_S else None

    def reload(self, load: Callable[[], T], key: str = "") -> bool:
        """Load the files again with ``load`` when they changed (``changed``); True when the
        new version is in use. A ValueError keeps the last good value: one warning (``key``
        put before its words), and the fault until another version loads."""
        if (stamp := self.changed()) is None:
            return False
        try:
            value = load()
        except ValueError as err:
            self.failed = (stamp, f"{key}{err}")
            log.warning("%s", self.fault()[0])
            return False
        self.stamp, self.value, self.failed = stamp, value, None
        self.read_at = local_iso(time.time())
        return True

    def fault(self) -> list[str]:
        return ([f"{self.label}: {self.failed[1]}; {self.goes_on} with the {self.what} read at "
                 f"{self.read_at}"] if self.failed else [])
