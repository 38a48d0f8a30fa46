"""Durable outbox for MQTT events: SQLite (WAL) in the state directory.

An event is written here *before* it is published and deleted only when the broker
acknowledges it (PUBACK), so a broker outage, a Wi-Fi drop, a crash or a power cut
between the two never loses it. Row ids come from AUTOINCREMENT, so they grow
monotonically across restarts and give the replay order.

Bounded by count and age: what falls off is logged and counted, never silently lost.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.sqlite3"


class OutboxError(OSError):
    """The outbox cannot be opened (state dir not writable, already in use): a setup problem."""


@dataclass(frozen=True)
class Row:
    id: int
    topic: str
    payload: dict
    created: float


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created);
"""


class Outbox:
    """A FIFO of (topic, JSON payload) rows that survives crashes; thread-safe."""

    def __init__(
        self,
        state_dir: Path | str,
        max_events: int = 100_000,
        max_age_s: float = 7 * 24 * 3600.0,
        durable: bool = True,
    ) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / OUTBOX_FILE
        self.max_events = max_events
        self.max_age_s = max_age_s
        self.dropped = 0  # rows discarded by the bounds since this process started
        self._unlogged_age = self._unlogged_count = 0
        self._last_drop_log = float("-inf")
        self._lock = threading.Lock()
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            # One process per outbox: two daemons sharing it would publish each other's rows.
            self._lock_fd = os.open(self.dir / "outbox.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise OutboxError(
                f"state dir {self.dir}: cannot create the MQTT outbox there: {err.strerror or err}"
            ) from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise OutboxError(
                f"state dir {self.dir}: outbox is in use by another maskd process "
                "(give each instance its own --state-dir)"
            ) from None
        try:
            self._db = self._open(durable)
        except BaseException:
            os.close(self._lock_fd)
            raise
        with self._lock:
            self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        if self._count:
            log.info("outbox %s: %d event(s) pending from a previous run", self.path, self._count)

    def _open(self, durable: bool) -> sqlite3.Connection:
        try:
            return self._connect(durable)
        except sqlite3.DatabaseError as err:
            # A damaged file must not stop the daemon; keep it aside for inspection.
            aside = self.path.with_name(f"{OUTBOX_FILE}.corrupt-{int(time.time())}")
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.rename(Path(str(aside) + suffix))
            log.error(
                "outbox %s is unreadable (%s); moved it to %s and started a new one",
                self.path, err, aside,
            )
            return self._connect(durable)

    def _connect(self, durable: bool) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed event survives a power cut, not only a process crash.
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            db.executescript(_SCHEMA)
            return db
        except sqlite3.OperationalError as err:
            raise OutboxError(f"outbox {self.path}: {err}") from None

    def put(self, topic: str, payload: dict, now: float | None = None) -> int:
        """Store one message durably (committed on return); returns its id."""
        now = time.time() if now is None else now
        text = json.dumps(payload, separators=(",", ":"))
        with self._lock:
            cur = self._db.execute(
                "INSERT INTO outbox (topic, payload, created) VALUES (?, ?, ?)", (topic, text, now)
            )
            self._count += 1
            row_id = int(cur.lastrowid)
        self.prune(now)
        return row_id

    def pending(self, after_id: int = 0, limit: int = 100) -> list[Row]:
        """Rows with id > after_id, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, created FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            ).fetchall()
        return [Row(r[0], r[1], json.loads(r[2]), r[3]) for r in rows]

    def remove(self, row_id: int) -> None:
        """Forget a row the broker acknowledged (a no-op when it was already dropped)."""
        with self._lock:
            n = self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,)).rowcount
            self._count -= n

    def depth(self) -> int:
        with self._lock:
            return self._count

    def max_id(self) -> int:
        with self._lock:
            r = self._db.execute("SELECT MAX(id) FROM outbox").fetchone()[0]
        return int(r or 0)

    def oldest_age(self, now: float | None = None) -> float | None:
        """Seconds since the oldest pending row was stored, None when empty."""
        now = time.time() if now is None else now
        with self._lock:
            r = self._db.execute("SELECT created FROM outbox ORDER BY id LIMIT 1").fetchone()
        return None if r is None else max(0.0, now - r[0])

    def prune(self, now: float | None = None) -> int:
        """Apply the bounds (oldest first); returns how many rows were dropped."""
        now = time.time() if now is None else now
        with self._lock:
            n_age = self._db.execute(
                "DELETE FROM outbox WHERE created < ?", (now - self.max_age_s,)
            ).rowcount
            self._count -= n_age
            n_count = 0
            if self._count > self.max_events:
                n_count = self._db.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                    (self._count - self.max_events,),
                ).rowcount
                self._count -= n_count
            self.dropped += n_age + n_count
        self._report_drops(n_age, n_count)
        return n_age + n_count

    def _report_drops(self, n_age: int, n_count: int) -> None:
        """One warning per minute at most: a full outbox during a long outage drops on every put."""
        self._unlogged_age += n_age
        self._unlogged_count += n_count
        now = time.monotonic()
        if not (self._unlogged_age or self._unlogged_count) or now - self._last_drop_log < 60:
            return
        if self._unlogged_age:
            log.warning(
                "outbox: dropped %d event(s) older than %.0f s that the broker never acknowledged",
                self._unlogged_age, self.max_age_s,
            )
        if self._unlogged_count:
            log.warning(
                "outbox: full (%d events); dropped the %d oldest unacknowledged event(s)",
                self.max_events, self._unlogged_count,
            )
        self._unlogged_age = self._unlogged_count = 0
        self._last_drop_log = now

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            finally:
                os.close(self._lock_fd)
