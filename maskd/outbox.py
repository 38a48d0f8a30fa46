"""Durable outbox for MQTT events: SQLite (WAL) in the state directory.

An event is written here *before* it is published and deleted only when the broker
acknowledges it (PUBACK), so a broker outage, a Wi-Fi drop, a crash or a power cut
between the two never loses it. Ids grow monotonically across restarts and give the
replay order.

Storage faults (a full disk, I/O errors) never reach the caller. An event that cannot be
stored waits in a bounded in-memory queue, in order behind the stored ones, until it is
delivered or can be stored; a delete that failed is retried (``maintain``). A reserve file
keeps room for the deletes that drain the outbox when something else fills the disk, and
while it cannot be held new events stay in memory rather than eat that room.

Bounded by count and age (the memory queue by count): what falls off is logged and
counted, never silently lost. A row's age is kept by the time since boot, which NTP never
steps: a Pi without a real-time clock starts on the time it was switched off, and if it was
off for longer than the age bound, the clock's jump when the network returns must not drop
the events stored before it. Only rows of earlier boots are aged by the wall clock, so when the
clock steps, the rows of this boot are re-dated with it (as the snapshots are). It also
keeps the last stored message of every open violation, so the next start can end the ones a
killed process left open.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator
from contextlib import closing, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from maskd.clock import CLOCK_FLOOR, STEP_S, Clock, StepWatch, boot_id, local_iso, system_clock
from maskd.config import shown_path
from maskd.files import (
    create_failure,
    failed_write,
    ownerless_fs,
    read_again_once,
    read_only_now,
    write_atomically,
)
from maskd.lograte import RateLimitedLog

log = logging.getLogger(__name__)

OUTBOX_FILE = "outbox.sqlite3"
RESERVE_FILE = "outbox.reserve"
LOCK_FILE = "outbox.lock"
# The open-violations records a stop could not store in the outbox (its writes failing: a card's
# I/O errors), kept beside it for the next start (``Outbox._take_back_records``).
RECORDS_FILE = "outbox-records.json"
WAL_PAGES = 8  # checkpoint this often: the WAL then reuses its own few pages, even on a full disk
RETRY_S = 1.0  # how often maintain() retries what a storage fault left undone
PRUNE_EVERY_S = 60.0
PRUNE_ROWS = 500  # rows the bounds drop per commit: the WAL holds one commit's pages at a time
WAL_KEEP = 1 << 20  # a WAL a larger write left is cut back to this at its next checkpoint
SHRINK_BYTES = 1 << 20  # an emptied outbox gives back its unused pages once they reach this
CORRUPT_KEEP = 3  # damaged outbox files kept aside for inspection (the latest; each up to ~50 MiB)

T = TypeVar("T")
Track = tuple[str, bool]  # (event id, still open after this message)
_FULL_OR_IO = (13, 10)  # SQLITE_FULL, SQLITE_IOERR (ENOSPC can surface as either)
_DAMAGED = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB: the file itself is damaged
_LAST_KEY = (1 << 63) - 1
# The outbox's layout, kept in SQLite's user_version: 1 since rows carry their boot; 0 in a file
# written before the number was kept (with or without those columns: both are read and
# upgraded). A change an older maskd cannot write to raises it, so that version, put back by a
# downgrade, refuses the file at the start instead of failing to store every new event. The
# other state files carry no number (docs/reliability.md says why): their JSON is read key by
# key, unknown keys are left out, and a change they cannot take needs a new file name.
OUTBOX_LAYOUT = 1


def no_outbox_there(state_dir: Path, why: str) -> str:
    """The one wording, for `run` and check-config, of a state dir the outbox cannot be made in;
    it names the key (was: 'state dir', and the whole of a name thousands of characters long)."""
    return f"state_dir {shown_path(state_dir)}: cannot create the MQTT outbox there: {why}"


def _name(table: Callable[[int], object], attr: str, n: int) -> str:
    """A user's or group's name from its number (the number where it has none)."""
    try:
        return str(getattr(table(n), attr))
    except KeyError:
        return str(n)


def another_users_file(path: Path) -> str | None:
    """'P belongs to root:root (mode 0644) and maskd, this maskd's user, cannot read and write
    it: ...; give the folder back: sudo chown -R ...' where ``path``, a file of the state folder,
    is another user's that this process cannot read and write; None otherwise (its own file on
    a read-only card is said by what fails on it)."""
    import grp
    import pwd

    try:
        st = path.stat()
    except OSError:
        return None
    if st.st_uid == os.geteuid() or os.access(path, os.R_OK | os.W_OK):
        return None
    me = _name(pwd.getpwuid, "pw_name", os.geteuid())
    head = (f"{shown_path(path)} belongs to {_name(pwd.getpwuid, 'pw_name', st.st_uid)}:"
            f"{_name(grp.getgrgid, 'gr_name', st.st_gid)} (mode {st.st_mode & 0o7777:04o}) "
            f"and {me}, this maskd's user, cannot read and write it")
    if (mount := mounted_for_another(path)) is not None:
        return f"{head}: {mount}"  # chown -R fails there: Operation not permitted
    return (f"{head}: made by maskd run as another user (sudo maskd instead of sudo -u {me} "
            f"maskd?); give the folder back: sudo chown -R {me}:"
            f"{_name(grp.getgrgid, 'gr_name', os.getegid())} {shown_path(path.parent)}")


def mounted_for_another(path: Path) -> str | None:
    """'its file system (exfat) keeps no owners: ...; mount it with uid=maskd,gid=maskd ...'
    where ``path`` is on a stick's FAT, exFAT or NTFS (``ownerless_fs``), whose mount decides
    who may write (an fstab line without uid=: root alone); None elsewhere. Was: 'give the
    folder back: sudo chown -R ...', which fails there, or (ntfs-3g) does nothing."""
    import grp
    import pwd

    if (fs := ownerless_fs(path)) is None:
        return None
    me = _name(pwd.getpwuid, "pw_name", os.geteuid())
    return (f"its file system ({fs}) keeps no owners: the mount gives every file one owner and "
            f"mode, which chown cannot change; mount it with "
            f"uid={me},gid={_name(grp.getgrgid, 'gr_name', os.getegid())} in its options "
            "(docs/config.md, a USB stick)")


def left_by_another_user(path: Path) -> str | None:
    """``another_users_file`` of ``path`` where its folder is this user's own (the state folder,
    or a JSON lines file, snapshot or clip folder in it): a root run's leftover in maskd's
    place, which the chown gives back; None in a folder of another's (/var/log, a stick's top),
    whose chown -R is not maskd's advice to give (was: a bare 'Permission denied')."""
    try:
        if path.parent.stat().st_uid != os.geteuid():
            return None
    except OSError:
        return None
    return another_users_file(path)


def foreign_outbox(state_dir: Path) -> str | None:
    """'outbox F belongs to root:root ...' (``another_users_file``) for the first of the
    outbox's files in ``state_dir`` this process cannot read and write: left by maskd run as
    another user (``sudo maskd run``, a restore as root). SQLite opens such a file read-only,
    or says only 'unable to open database file'; the lock said 'Permission denied' under the
    name of a folder that is writable."""
    # not RECORDS_FILE: it is only read, and replaced by a rename (the folder's right)
    for name in (LOCK_FILE, OUTBOX_FILE, f"{OUTBOX_FILE}-wal", f"{OUTBOX_FILE}-shm", RESERVE_FILE):
        if why := another_users_file(state_dir / name):
            return f"outbox {why}"
    return None


def newer_outbox(state_dir: Path) -> str | None:
    """Why `run`, check-config and doctor refuse the outbox in ``state_dir`` (one rule, one
    wording): it was written by a newer maskd (its layout above OUTBOX_LAYOUT). None when
    this version reads it, when there is none, and when it cannot be read (the open says why).
    Read-only, so a refused file is left as it was: a read-write connection's close folds a
    killed run's WAL into the file; without a WAL the file alone is read (immutable), so no
    SQLite index file is made either (one made by check-config or doctor run as root would
    belong to root, not to the service's user)."""
    path = Path(state_dir) / OUTBOX_FILE
    wal = Path(f"{path}-wal")
    try:
        if path.stat().st_size == 0:
            return None
        alone = "" if wal.exists() and wal.stat().st_size > 0 else "&immutable=1"
        with closing(sqlite3.connect(f"file:{path}?mode=ro{alone}", uri=True,
                                     timeout=2.0)) as db:
            found = db.execute("PRAGMA user_version").fetchone()[0]
    except (OSError, sqlite3.Error):
        return None
    if found <= OUTBOX_LAYOUT:
        return None
    return (f"outbox {path} was written by a newer maskd (layout {found}; this one reads up to "
            f"{OUTBOX_LAYOUT}): install that version again, or move the file aside, with its -wal "
            "and -shm files if there are any, to start with an empty outbox (its unsent events "
            "stay in it)")


class OutboxError(OSError):
    """The outbox cannot be opened (state dir not writable, already in use): a setup problem."""


class OutboxUnreadable(OutboxError):
    """The card fails the outbox's reads or writes at the start (an I/O error): the hardware's
    state, not the setup, so `run` exits 75 for systemd to start it again; what it holds
    stays for that start."""


@dataclass(frozen=True)
class Row:
    id: int
    topic: str
    payload: dict
    created: float  # for open_events(): when the violation's last message was stored
    uptime: float | None = None  # seconds since boot when stored (rows of this boot only)


def _offset(now: tuple[float, float]) -> float:
    """The wall clock less the time since boot: what a row's date is its uptime plus."""
    return now[0] - now[1]


def row_age(created: float, boot: str | None, uptime: float | None, this_boot: str,
            now: tuple[float, float]) -> float:
    """Seconds since a row was stored: by the time since boot for a row of this boot, by the
    wall clock (the only one two boots share) for any other; 0 for another boot's row stored
    while the wall clock was not set (before CLOCK_FLOOR: its date says nothing, and NTP's
    first sync made it decades old, dropping every event a boot in 1970 kept)."""
    wall, since_boot = now
    if boot == this_boot and uptime is not None:
        return max(0.0, since_boot - uptime)
    if created < CLOCK_FLOOR:
        return 0.0
    return max(0.0, wall - created)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    created REAL NOT NULL,
    boot TEXT,
    uptime REAL
);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created);
"""
_OPEN_EVENTS = """
CREATE TABLE IF NOT EXISTS open_events (
    event_id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    updated REAL NOT NULL
)"""
_SCHEMA += _OPEN_EVENTS + ";\n"


def _file_ident(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a file, None when it is not there."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def sqlite_code(err: sqlite3.Error) -> int:
    """SQLite's primary result code of ``err`` (SQLITE_FULL, SQLITE_BUSY, ...), 0 when unknown."""
    return getattr(err, "sqlite_errorcode", 0) & 0xFF


def _full_or_io(err: sqlite3.Error) -> bool:
    return sqlite_code(err) in _FULL_OR_IO


def _damaged(err: sqlite3.Error | OSError) -> bool:
    return isinstance(err, sqlite3.Error) and sqlite_code(err) in _DAMAGED


def _readable(src: sqlite3.Connection, table: str, cols: str) -> Iterator[tuple]:
    """The rows of ``table`` in a damaged file that can still be read (rowid first, in rowid
    order): a read that fails goes on past the damage, so a bad page costs only its own rows.
    A damaged page can also hand back a key out of order (a garbage cell reads as rowid -1):
    such a row is passed over, so keys only grow and the walk ends (it went back to the start:
    rows 1, 2, 1, 2, ... for ever, and the copy failed on the repeated id)."""
    read = f"SELECT rowid, {cols} FROM {table} WHERE rowid > ? ORDER BY rowid"
    after: int | None = 0
    while after is not None:
        try:
            for row in src.execute(read, (after,)):
                if row[0] <= after:
                    continue
                after = row[0]
                yield row
            return
        except sqlite3.DatabaseError:
            after = _past_damage(src, table, after)


def _past_damage(src: sqlite3.Connection, table: str, after: int) -> int | None:
    """The key to read on after when the rows beyond ``after`` cannot be read: the next key if it
    can be found (only its row is damaged), else the last key the damaged pages may hold, found
    by doubling steps and halving back (a few dozen lookups); None: nothing beyond is readable.
    Always beyond ``after``: a key found out of order is the damage's, passed over."""
    def seek(key: int) -> tuple[bool, int | None]:
        try:
            found = next((k for (k,) in src.execute(f"SELECT rowid FROM {table} WHERE rowid > ? "
                                                    "ORDER BY rowid", (key,)) if k > key), None)
        except sqlite3.DatabaseError:
            return False, None
        return True, found

    ok, key = seek(after)
    if ok:
        return key
    bad, step = after, 1
    while not seek(bad + step)[0]:
        bad, step = bad + step, step * 2
        if bad + step > _LAST_KEY:
            return None
    good = bad + step
    while good - bad > 1:
        mid = (bad + good) // 2
        bad, good = (bad, mid) if seek(mid)[0] else (mid, good)
    return good


def _sound(topic: object, payload: object, when: object) -> bool:
    """A row read from a damaged file that holds what maskd wrote (a page may hold garbage)."""
    try:
        return (isinstance(topic, str) and isinstance(when, (int, float))
                and isinstance(payload, str) and isinstance(json.loads(payload), dict))
    except ValueError:
        return False


def _rows_in(db: sqlite3.Connection) -> int | None:
    """The rows of a damaged file's outbox: by an index, else by the table; None if neither reads."""
    for query in ("SELECT COUNT(*) FROM outbox", "SELECT COUNT(*) FROM outbox NOT INDEXED"):
        try:
            return db.execute(query).fetchone()[0]
        except sqlite3.DatabaseError:
            pass
    return None


def _record(db: sqlite3.Connection, row: Row, event_id: str, still_open: bool) -> None:
    """Keep ``row`` as violation ``event_id``'s last message while it is open; forget it after."""
    if still_open:
        db.execute("INSERT OR REPLACE INTO open_events (event_id, topic, payload, updated) "
                   "VALUES (?, ?, ?, ?)", (event_id, row.topic, _dumps(row.payload), row.created))
    else:
        db.execute("DELETE FROM open_events WHERE event_id = ?", (event_id,))


def _dumps(payload: dict) -> str:
    return json.dumps(payload, separators=(",", ":"))


class Outbox:
    """A FIFO of (topic, JSON payload) rows that survives crashes and storage faults; thread-safe."""

    def __init__(
        self,
        state_dir: Path | str,
        max_events: int = 100_000,
        max_age_s: float = 7 * 24 * 3600.0,
        durable: bool = True,
        memory_max: int = 1000,
        reserve_bytes: int = 1 << 20,
        clock: Clock = system_clock,
        boot: str | None = None,
    ) -> None:
        """``clock`` and ``boot`` (default: this boot's id) are for tests that step the clock."""
        self.dir = Path(state_dir)
        self._clock = clock
        self._boot = boot if boot is not None else boot_id()
        self._by_boot = True  # rows carry their boot (False: an old outbox on a full disk)
        self._steps = StepWatch(STEP_S)
        self._redated = False  # this boot's rows checked against the clock since the open
        self.path = self.dir / OUTBOX_FILE
        self.max_events = max_events
        self.max_age_s = max_age_s
        self.memory_max = memory_max
        self.reserve_bytes = reserve_bytes
        self.dropped = 0  # stored rows discarded by the bounds since this process started
        self.memory_dropped = 0  # unstored events discarded because the memory queue was full
        self.memory_dropped_at: float | None = None  # time.monotonic() of the latest such drop
        self._dropped_why: str | None = None  # the fault of the latest drop: its line may come later
        self._unlogged_age = self._unlogged_count = self._unlogged_memory = 0
        self._warn = RateLimitedLog(log)
        self._lock = threading.Lock()
        self._memory: OrderedDict[int, tuple[Row, Track | None]] = OrderedDict()
        self._unremoved: set[int] = set()  # acknowledged, but the delete failed: retried
        # The newest open-violations record of each violation whose message went to memory:
        # written with that message, or on its own once there is room (it may be delivered
        # from memory first), so the next start ends it after the last seq really sent.
        self._tracks: dict[str, tuple[Row, bool]] = {}
        self._taken_back: set[str] = set()  # those of them the last stop left (RECORDS_FILE)
        self._records_left = False  # RECORDS_FILE is there until they are stored
        # Storage errors by kind (store / delete / read): (message, since); an operation of
        # the same kind that succeeds clears its entry.
        self._errors: dict[str, tuple[str, float]] = {}
        self._short_since: float | None = None  # since when the reserve is not held
        self._durable = durable
        # None: a start on a full disk could not create the outbox (maintain() creates it);
        # exclusive: it was opened without SQLite's shared-memory file (maintain() shares it).
        self._db: sqlite3.Connection | None = None
        self._exclusive = False
        self._closed = False
        self._next_retry = self._next_prune = 0.0
        self._count = self._last_id = 0  # an outbox not created yet holds nothing
        self._ident: tuple[int, int] | None = None
        self._reserve_fd = -1
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            # One process per outbox: two daemons sharing it would publish each other's rows.
            self._lock_fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise OutboxError(foreign_outbox(self.dir) or no_outbox_there(
                self.dir, create_failure(self.dir, True, err))) from None
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise OutboxError(
                f"state_dir {shown_path(self.dir)}: outbox is in use by another maskd process "
                "(give each instance its own --state-dir)"
            ) from None
        try:
            # read before anything writes to it; SQLite opens another user's file read-only
            # and each event then failed to be stored, and was lost at the stop
            if refused := newer_outbox(self.dir) or foreign_outbox(self.dir):
                raise OutboxError(refused)
            self._db = self._open(durable)
            self._reserve_fd = os.open(self.dir / RESERVE_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            with self._lock:
                try:
                    self._read_counts()
                except sqlite3.Error as err:  # damage the open did not touch
                    if not self._damage(err):
                        raise
                    self._read_counts()
        except BaseException as err:
            if self._db is not None:
                self._db.close()
            for fd in (self._reserve_fd, self._lock_fd):
                if fd >= 0:
                    os.close(fd)
            if isinstance(err, OSError) and not isinstance(err, OutboxError):
                raise OutboxError(f"outbox {self.path}: {err.strerror or err}") from None
            if isinstance(err, sqlite3.Error):
                error = OutboxUnreadable if _full_or_io(err) else OutboxError
                raise error(f"outbox {self.path}: cannot read it: {err}") from None
            raise
        self._ident = _file_ident(self.path)  # to notice the file being removed under us
        self._next_check = 0.0
        self._reserve_held = True  # until _hold_reserve() says otherwise
        self._set_held(self._hold_reserve())
        self._take_back_records()
        if self._count:
            log.info("outbox %s: %d event(s) pending from a previous run", self.path, self._count)

    def _read_counts(self) -> None:
        """How many rows are stored, and the highest id ever handed out (ids are never reused)."""
        if self._db is None:
            return
        self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        seq = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        high = self._db.execute("SELECT MAX(id) FROM outbox").fetchone()[0]
        self._last_id = max(int(seq[0]) if seq else 0, int(high or 0), self._last_id)

    def _open(self, durable: bool) -> sqlite3.Connection | None:
        """The outbox's connection; None when there is none yet and the disk is too full to
        create it: events wait in memory and maintain() creates it once there is room."""
        try:
            return self._connect(durable)
        except sqlite3.OperationalError as err:
            if not _full_or_io(err):
                raise OutboxError(f"outbox {self.path}: {err}") from None
            if self._unborn():  # nothing stored to send: start, and create it later
                self._failed("store", "create the outbox", err)
                return None
            # On a full disk SQLite cannot create its shared-memory file; in exclusive mode it
            # keeps that index in memory instead, so maskd still starts and sends what is pending.
            # The price: `maskd doctor` cannot read the outbox until there is room again.
            try:
                db = self._connect(durable, exclusive=True)
            except sqlite3.Error as again:  # a setup problem or the card's, not a crash
                error = OutboxUnreadable if _full_or_io(again) else OutboxError
                raise error(f"outbox {self.path}: {err}") from None
            self._exclusive = True
            log.warning("outbox %s: %s at start; opened it without SQLite's shared-memory file "
                        "(other programs cannot read it until there is room again); new "
                        "events are kept in memory until there is room", self.path, err)
            return db
        except sqlite3.DatabaseError as err:
            return self._replace_damaged(err)

    def _damage(self, err: sqlite3.Error | OSError) -> bool:
        """Whether ``err`` says the file is damaged (under the lock); if so it is replaced (no
        passing fault: retrying would fail for good and stop delivery)."""
        if self._db is None or not _damaged(err):
            return False
        _rollback(self._db)
        try:
            self._db = self._replace_damaged(err)
        except OSError as move:  # cannot move it aside: maintain() opens the file anew
            self._failed("store", "replace the damaged outbox", move)
        return True

    def _replace_damaged(self, err: sqlite3.Error) -> sqlite3.Connection | None:
        """A damaged file must not stop the daemon: keep it aside for inspection and go on with a
        new one holding every row that can still be read from it; the new connection, or None
        when a full disk does not let it be created yet."""
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        aside = self._aside_name()
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(str(aside) + suffix))
        self._forget_old_asides(aside)
        known, self._count, self._exclusive = self._count, 0, False
        db = self._open(self._durable)  # a new file now, or None on a full disk
        self._ident = _file_ident(self.path)
        if db is None:
            log.error("outbox %s is unreadable (%s); moved it to %s; no room for a new one yet, "
                      "its events stay there", self.path, err, aside)
            return None
        saved, lost = self._salvage(aside, db, known)
        log.error("outbox %s is unreadable in part (%s); moved it to %s and started a new one "
                  "with the %d pending event(s) that could be read; %s could not be read",
                  self.path, err, aside, saved, "an unknown number" if lost is None else lost)
        return db

    def _aside_name(self) -> Path:
        """``outbox.sqlite3.corrupt-<time>``, or ``-<time>-<n>`` when damage came twice in one
        second: a name taken would have the rename replace a file kept aside, and its events."""
        base = f"{OUTBOX_FILE}.corrupt-{int(time.time())}"
        aside, n = self.path.with_name(base), 1
        while aside.exists():
            n += 1
            aside = self.path.with_name(f"{base}-{n}")
        return aside

    def _forget_old_asides(self, newest: Path) -> None:
        """Keep ``newest`` and the CORRUPT_KEEP - 1 before it (by the time in their names): a
        card that fails again and again must not fill up with copies of the outbox."""
        stamps: dict[Path, tuple[int, ...]] = {}
        for p in self.dir.glob(f"{OUTBOX_FILE}.corrupt-*"):
            parts = p.name.rsplit(".corrupt-", 1)[1].split("-")  # its -wal and -shm go with it
            if p != newest and all(x.isdigit() for x in parts):
                stamps[p] = tuple(int(x) for x in parts)
        older = sorted(stamps, key=stamps.__getitem__)
        for old in older[:max(0, len(older) - (CORRUPT_KEEP - 1))]:
            try:
                for suffix in ("", "-wal", "-shm"):
                    Path(str(old) + suffix).unlink(missing_ok=True)
            except OSError as err:
                log.warning("outbox: cannot delete %s, an older damaged outbox: %s", old,
                            failed_write(err, self.dir))
                continue
            log.info("outbox: deleted the older damaged outbox %s (the latest %d are kept)", old,
                     CORRUPT_KEEP)

    def _salvage(self, aside: Path, db: sqlite3.Connection, known: int) -> tuple[int, int | None]:
        """Copy what can be read from the damaged file ``aside`` into the new outbox ``db``
        (events with their ids, less those acknowledged, and the open violations); returns
        (events saved, events unreadable: None when not known). ``known``: the rows it held."""
        src = sqlite3.connect(aside)
        saved = acked = 0
        try:
            expected = _rows_in(src)
            try:
                have = {r[1] for r in src.execute("PRAGMA table_info(outbox)")}
            except sqlite3.DatabaseError:
                have = set()
            boot = "boot, uptime" if {"boot", "uptime"} <= have else "NULL, NULL"
            seq = [0]
            try:
                seq = src.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"
                                  ).fetchone() or seq
            except sqlite3.DatabaseError:
                pass
            high = max(self._last_id, int(seq[0]))
            db.execute("BEGIN IMMEDIATE")
            for row in _readable(src, "outbox", f"topic, payload, created, {boot}"):
                if row[0] in self._unremoved:
                    acked += 1
                elif _sound(*row[1:4]):
                    db.execute("INSERT INTO outbox (id, topic, payload, created, boot, uptime) "
                               "VALUES (?, ?, ?, ?, ?, ?)", row)
                    saved += 1
                    high = max(high, row[0])
            for row in _readable(src, "open_events", "event_id, topic, payload, updated"):
                if isinstance(row[1], str) and _sound(*row[2:]):
                    db.execute("INSERT OR REPLACE INTO open_events (event_id, topic, payload, "
                               "updated) VALUES (?, ?, ?, ?)", row[1:])
            if not db.execute("UPDATE sqlite_sequence SET seq = ? WHERE name = 'outbox'",
                              (high,)).rowcount:
                db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)", (high,))
            db.execute("COMMIT")
        except sqlite3.Error as err:
            _rollback(db)
            log.error("outbox %s: cannot copy the readable events from %s into it (%s); they "
                      "stay there", self.path, aside, err)
            saved = 0
        finally:
            src.close()
        self._unremoved.clear()
        self._count = saved
        self._last_id = max(self._last_id, high)
        expected = expected if expected is not None else known or None
        return saved, None if expected is None else max(0, expected - acked - saved)

    def _unborn(self) -> bool:
        """No outbox yet, or only what a failed first open leaves: nothing to send. That is an
        empty file, or SQLite's first page alone (a card failing after it: every table needs a
        page of its own, so it holds none; was: taken for an outbox, exit 78), and no WAL."""
        try:
            if Path(f"{self.path}-wal").stat().st_size > 0:
                return False
        except FileNotFoundError:
            pass
        except OSError:  # cannot tell: taken as an outbox with events to send
            return False
        try:
            with open(self.path, "rb") as f:
                head = f.read(18)
                size = os.fstat(f.fileno()).st_size
        except FileNotFoundError:
            return True
        except OSError:  # cannot tell: taken as an outbox with events to send
            return False
        sqlite = len(head) == 18 and head.startswith(b"SQLite format 3\0")
        page = int.from_bytes(head[16:18], "big") if sqlite else 0
        return size == 0 or size <= (65536 if page == 1 else page)

    def _reopen(self) -> None:
        """With room again, open the outbox as a start with room would have: create it where a
        start on a full disk could not, or leave exclusive mode so that other programs (`maskd
        doctor`) can read it again. A failure is logged and tried again by maintain()."""
        try:
            if self._db is None:
                self._db = self._connect(self._durable)
                self._ident = _file_ident(self.path)
                done = "created it; new events are stored there again"
            else:
                # Out of WAL is the only way out of exclusive mode; the read gives up the lock.
                self._db.execute("PRAGMA journal_mode=DELETE")
                self._db.execute("PRAGMA locking_mode=NORMAL")
                self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()
                mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode != "wal":
                    raise sqlite3.OperationalError(f"journal mode stays {mode!r}")
                self._exclusive = False
                done = "opened it with SQLite's shared-memory file; other programs can read it"
        except sqlite3.Error as err:
            if self._damage(err):
                return
            self._warn(logging.WARNING, "reopen", "outbox %s: cannot reopen it yet (%s); "
                       "trying again", self.path, err)
            return
        log.warning("outbox %s: there is room again; %s", self.path, done)

    def _connect(self, durable: bool, exclusive: bool = False) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            if exclusive:  # before WAL is entered: no shared-memory file is ever made
                db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed event survives a power cut, not only a process crash.
            db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            db.execute(f"PRAGMA wal_autocheckpoint={WAL_PAGES}")
            db.execute(f"PRAGMA journal_size_limit={WAL_KEEP}")
            found = db.execute("PRAGMA user_version").fetchone()[0]
            self._add_open_events(db)
            db.executescript(_SCHEMA)
            self._by_boot = self._add_boot_columns(db)
            if self._by_boot and found < OUTBOX_LAYOUT:
                try:
                    db.execute(f"PRAGMA user_version={OUTBOX_LAYOUT}")
                except sqlite3.OperationalError:  # a full disk: a start with room writes it
                    pass
            return db
        except BaseException:
            db.close()
            raise

    def _add_open_events(self, db: sqlite3.Connection) -> None:
        """An outbox written before the open-violations record (maskd before 2026-12-01) gets
        it, filled from its pending messages: a violation whose last one is no `end` was open
        when that version stopped, and is ended `restart` like any other (was: its start was
        delivered after the update and its end never came). Table and rows in one transaction,
        so a start that cannot write them (a full disk) leaves the file for the next to do."""
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "outbox" not in tables or "open_events" in tables:
            return
        try:
            db.execute("BEGIN IMMEDIATE")
            db.execute(_OPEN_EVENTS)
            seeded = set()
            for topic, payload, created in db.execute(
                    "SELECT topic, payload, created FROM outbox ORDER BY id").fetchall():
                try:
                    p = json.loads(payload)
                    event_id, kind = str(p["event_id"]), p["event_type"]
                except (ValueError, TypeError, KeyError):
                    continue  # not a violation's message (state, stats: none were stored)
                _record(db, Row(0, topic, p, created), event_id, kind != "end")
                seeded.add(event_id)
            db.execute("COMMIT")
        except sqlite3.OperationalError as err:
            _rollback(db)
            log.warning("outbox %s: cannot add the open violations' record (%s); tried again "
                        "at the next start", self.path, err)
            return
        n = db.execute("SELECT COUNT(*) FROM open_events").fetchone()[0]
        if n:
            log.info("outbox %s: written by an older maskd; %d violation(s) open in its pending "
                     "messages (of %d) will be ended `restart`", self.path, n, len(seeded))

    def _add_boot_columns(self, db: sqlite3.Connection) -> bool:
        """An outbox written before rows carried their boot gets the columns (its rows: NULL,
        aged by the wall clock); False when that cannot be written now (a full disk): then every
        row is aged by the wall clock until a start with room adds them."""
        have = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
        missing = [c for c in ("boot TEXT", "uptime REAL") if c.split()[0] not in have]
        if missing:
            try:
                db.execute("BEGIN IMMEDIATE")
                for column in missing:
                    db.execute(f"ALTER TABLE outbox ADD COLUMN {column}")
                db.execute("COMMIT")
            except sqlite3.OperationalError as err:
                _rollback(db)
                log.warning("outbox %s: cannot add the rows' boot (%s); they are aged by the "
                            "wall clock, which a clock step moves, until maskd starts with room",
                            self.path, err)
                return False
            log.info("outbox %s: rows now carry their boot, so a clock step cannot age them out",
                     self.path)
        try:  # the index only makes pruning fast
            db.execute("CREATE INDEX IF NOT EXISTS outbox_uptime ON outbox (boot, uptime)")
        except sqlite3.OperationalError as err:
            _rollback(db)
            log.warning("outbox %s: cannot build the index on the rows' boot (%s); pruning is "
                        "slower until maskd starts with room for it", self.path, err)
        return True

    # ---- the reserve: room for the deletes that drain a full disk ----

    def _hold_reserve(self) -> bool:
        """Allocate the reserve file (True when it is whole); a partial one is given back."""
        if self.reserve_bytes <= 0:
            return True
        try:
            os.posix_fallocate(self._reserve_fd, 0, self.reserve_bytes)
            return True
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):  # cannot here: do without
                log.warning("outbox %s: cannot allocate a reserve here (%s); a full disk may "
                            "then stop acknowledged events from being deleted", self.path,
                            failed_write(err, self.dir))
                self.reserve_bytes = 0
                return True
            with suppress(OSError):  # a read-only remount: nothing to give back
                os.ftruncate(self._reserve_fd, 0)
            self._warn(logging.ERROR, "reserve",
                       "outbox %s: cannot reserve %d KiB (mqtt.outbox_reserve_kb) in the state "
                       "dir (%s); new events are kept in memory (at most %d, "
                       "mqtt.memory_queue_max) until there is room",
                       self.path, self.reserve_bytes // 1024, err.strerror or err, self.memory_max)
            return False

    def _release_reserve(self) -> bool:
        """Give the reserve back to the file system (so a delete can commit); False if not held."""
        if self.reserve_bytes <= 0 or not self._reserve_held:
            return False
        try:
            os.ftruncate(self._reserve_fd, 0)
        except OSError:  # a read-only remount (was: a traceback from close()): nothing is freed
            return False
        self._set_held(False)
        return True

    def _set_held(self, held: bool) -> None:
        if held != self._reserve_held:
            self._short_since = None if held else time.time()
        self._reserve_held = held

    def _draining(self, fn: Callable[[], T]) -> T:
        """Run a write that frees outbox space; when the disk is full use the reserve, retry once.
        An I/O error is taken for a full disk only where there is no room (a failing card with
        room: the error is said as it is, and the reserve kept)."""
        try:
            return fn()
        except sqlite3.Error as err:
            _rollback(self._db)
            full = sqlite_code(err) == _FULL_OR_IO[0] or (_full_or_io(err) and not self._room())
            if not (full and self._release_reserve()):
                raise
        log.warning("outbox %s: disk full; released the %d KiB reserve so acknowledged events "
                    "can be deleted; new events are kept in memory until there is room again",
                    self.path, self.reserve_bytes // 1024)
        return fn()

    # ---- storage fault bookkeeping ----

    def _failed(self, kind: str, what: str, err: sqlite3.Error | OSError) -> bool:
        """Record and log a storage fault, retried later; True when it was a damaged file, which
        is replaced at once instead (the caller may try again)."""
        if self._damage(err):
            return True
        if self._db is not None:
            _rollback(self._db)
        since = self._errors.get(kind, ("", time.time()))[1]
        why = failed_write(err, self.dir)
        self._errors[kind] = (why, since)
        self._warn(logging.ERROR, f"fail:{what}:{why}",
                   "outbox %s: cannot %s: %s; retrying, events not stored are kept in memory "
                   "(at most %d, mqtt.memory_queue_max)", self.path, what, why, self.memory_max)
        return False

    def _succeeded(self, kind: str) -> None:
        gone = self._errors.pop(kind, None)
        if gone is not None and not self._errors and self._reserve_held:
            log.warning("outbox %s: storage works again (it failed since %s: %s)", self.path,
                        local_iso(gone[1]), gone[0])

    @property
    def fault(self) -> str | None:
        """Why new events are not stored durably right now; None when they are."""
        if self._errors:
            return next(iter(self._errors.values()))[0]
        if not self._reserve_held:
            return f"disk full: less than {self.reserve_bytes // 1024} KiB free"
        return None

    @property
    def fault_since(self) -> float | None:
        times = [t for _, t in self._errors.values()]
        times += [self._short_since] if self._short_since is not None else []
        return min(times) if times else None

    # ---- the queue ----

    def put(self, topic: str, payload: dict, track: Track | None = None) -> int:
        """Store one message (committed on return), or keep it in memory when storage fails;
        returns its id. ``track`` = (event id, still open) keeps the open-violations record."""
        return self.put_all([(topic, payload, track)])[0]

    def put_all(self, messages: list[tuple[str, dict, Track | None]]) -> list[int]:
        """``put`` for several messages, in order, in one commit (one wait for the disk, not
        one each: seconds on an SD card for a group of people starting at once)."""
        if not messages:
            return []
        wall, uptime = self._clock()
        with self._lock:
            items = []
            for topic, payload, track in messages:
                self._last_id += 1
                items.append((Row(self._last_id, topic, payload, wall, uptime), track))
            # Behind an unstored event nothing may be stored, or it would overtake it.
            stored = (not self._memory and self._reserve_held and self._db is not None
                      and self._store(items, "store an event"))
            if not stored:
                for item in items:
                    self._keep_in_memory(item)
                    if item[1] is not None:
                        self._tracks[item[1][0]] = (item[0], item[1][1])
        if stored:
            self.prune()
        self._report_drops(0, 0)
        return [row.id for row, _ in items]

    def _store(self, items: list[tuple[Row, Track | None]], what: str, again: bool = True) -> bool:
        """Insert rows (with their ids) in one transaction; False (and recorded) on failure. A
        damaged file is replaced and the rows are stored in the new one."""
        db = self._db
        assert db is not None, "callers store only into an outbox that exists"
        try:
            offset = _offset(self._clock())
            db.execute("BEGIN IMMEDIATE")
            for row, track in items:
                if row.uptime is not None and abs(row.created - row.uptime - offset) >= STEP_S:
                    row = replace(row, created=row.uptime + offset)  # held over a step
                values = (row.id, row.topic, _dumps(row.payload), row.created)
                if self._by_boot:
                    db.execute("INSERT INTO outbox (id, topic, payload, created, boot, uptime) "
                               "VALUES (?, ?, ?, ?, ?, ?)", (*values, self._boot, row.uptime))
                else:
                    db.execute("INSERT INTO outbox (id, topic, payload, created) "
                               "VALUES (?, ?, ?, ?)", values)
                if track is not None:
                    _record(db, row, *track)
            db.execute("COMMIT")
        except sqlite3.Error as err:
            if self._failed("store", what, err) and again and self._db is not None:
                return self._store(items, what, again=False)
            return False
        for row, track in items:  # a pending record this row is as new as is written now
            if track is not None and track[0] in self._tracks \
                    and self._tracks[track[0]][0].id <= row.id:
                del self._tracks[track[0]]
        self._drop_records_file()
        self._count += len(items)
        self._succeeded("store")
        return True

    def _keep_in_memory(self, item: tuple[Row, Track | None]) -> None:
        self._memory[item[0].id] = item
        while len(self._memory) > self.memory_max:
            self._memory.popitem(last=False)
            self.memory_dropped += 1
            self.memory_dropped_at = time.monotonic()
            self._dropped_why = self.fault or self._dropped_why
            self._unlogged_memory += 1

    def pending(self, after_id: int = 0, limit: int = 100) -> list[Row]:
        """Rows with id > after_id, oldest first (stored ones, then the ones held in memory)."""
        with self._lock:
            ask = limit + len(self._unremoved)
            rows = self._read("read events", "SELECT id, topic, payload, created FROM outbox "
                              "WHERE id > ? ORDER BY id LIMIT ?", (after_id, ask))
            if rows is None:
                return []  # not the memory ones either: they must not overtake stored rows
            self._succeeded("read")
            out = [Row(r[0], r[1], json.loads(r[2]), r[3]) for r in rows
                   if r[0] not in self._unremoved][:limit]
            if len(rows) < ask:
                out += [row for i, (row, _) in self._memory.items() if i > after_id]
        return out[:limit]

    def _read(self, what: str, sql: str, args: tuple = ()) -> list[tuple] | None:
        """A read's rows (under the lock; none before the outbox exists), None when it failed
        (recorded); one that finds the file damaged is made again on the new file."""
        for _ in range(2):
            if self._db is None:
                return []
            try:
                return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as err:
                if not self._failed("read", what, err):
                    return None
        return None

    def rows(self, ids: Collection[int]) -> list[Row]:
        """The pending rows among ``ids`` (stored or in memory), oldest first."""
        out: list[Row] = []
        with self._lock:
            want = sorted(set(ids) - self._unremoved)
            stored = [] if self._db is None else [i for i in want if i not in self._memory]
            try:
                for k in range(0, len(stored), 500):
                    chunk = stored[k:k + 500]
                    out += [Row(r[0], r[1], json.loads(r[2]), r[3]) for r in self._db.execute(
                        f"SELECT id, topic, payload, created FROM outbox WHERE id IN "
                        f"({','.join('?' * len(chunk))})", chunk)]
            except sqlite3.Error as err:
                self._failed("read", "read events", err)
            out += [self._memory[i][0] for i in want if i in self._memory]
        return sorted(out, key=lambda r: r.id)

    def remove(self, row_id: int) -> None:
        """Forget a row the broker acknowledged (a no-op when it was already dropped). A delete
        that fails is retried by maintain(); until then the row is not handed out again."""
        with self._lock:
            if self._memory.pop(row_id, None) is None and self._db is not None:
                self._delete([row_id])

    def _delete(self, ids: list[int]) -> None:
        marks = ",".join("?" * len(ids))

        def delete() -> int:
            return self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids).rowcount

        try:
            n = self._draining(delete)
        except sqlite3.Error as err:
            self._unremoved.update(ids)
            self._failed("delete", "delete acknowledged events", err)
            return
        self._unremoved.difference_update(ids)
        self._count -= n
        self._succeeded("delete")

    def depth(self) -> int:
        """Events waiting for the broker's acknowledgement, stored or in memory."""
        with self._lock:
            return self._count - len(self._unremoved) + len(self._memory)

    def in_memory(self) -> int:
        """Events held only in memory (not stored): lost if the process dies."""
        with self._lock:
            return len(self._memory)

    def max_id(self) -> int:
        """The highest id handed out so far."""
        with self._lock:
            return self._last_id

    def oldest_age(self) -> float | None:
        """Seconds since the oldest pending row was stored, None when empty."""
        now = self._clock()
        with self._lock:
            try:
                cols = "boot, uptime" if self._by_boot else "NULL, NULL"
                rows = [] if self._db is None else self._db.execute(
                    f"SELECT id, created, {cols} FROM outbox ORDER BY id LIMIT ?",
                    (len(self._unremoved) + 1,)).fetchall()
            except sqlite3.Error as err:
                self._damage(err)
                rows = []
            first: tuple[float, str | None, float | None] | None = next(
                ((c, b, u) for i, c, b, u in rows if i not in self._unremoved), None)
            if first is None and self._memory:
                row = next(iter(self._memory.values()))[0]
                first = (row.created, self._boot, row.uptime)
        if first is None:
            return None
        created, boot, uptime = first
        return row_age(created, boot, uptime, self._boot, now)

    def open_events(self) -> list[Row]:
        """The last stored message of each violation with no stored `end` (id 0); the records
        the last stop could not store, not stored yet (``_take_back_records``), stand over the
        stored ones."""
        with self._lock:
            rows = self._read("read the open violations", "SELECT event_id, topic, payload, "
                              "updated FROM open_events ORDER BY updated")
            pending = {k: v for k, v in self._tracks.items() if k in self._taken_back}
        # What is not a JSON object (a damaged record) is no violation to end.
        found = {r[0]: Row(0, r[1], json.loads(r[2]), r[3]) for r in rows or () if _sound(*r[1:])}
        for event_id, (row, still_open) in pending.items():
            found.pop(event_id, None)
            if still_open:
                found[event_id] = replace(row, id=0)
        return sorted(found.values(), key=lambda row: row.created)

    def _take_back_records(self) -> None:
        """The records the last stop could not store (RECORDS_FILE), pending again: stored once
        the outbox takes writes, kept in the file again at a stop that still cannot. A clean
        stop whose card failed the outbox's writes after a violation's end was delivered from
        memory left its start stored as open, and the next start ended it `restart` (`stopped
        uncleanly`), a second `end` for consumers."""
        path = self.dir / RECORDS_FILE
        try:
            data = json.loads(read_again_once(path))  # a one-off I/O error: not removed unread
            tracks = {str(r["event_id"]): (Row(0, str(r["topic"]), dict(r["payload"]),
                                               float(r["updated"])), bool(r["open"]))
                      for r in data}
        except FileNotFoundError:
            return
        except (OSError, ValueError, TypeError, KeyError) as err:
            log.warning("outbox %s: cannot read what the last stop could not store (%s); "
                        "its violations are ended as the outbox has them", path, err)
            tracks = {}
        with self._lock:
            self._tracks.update(tracks)
            self._taken_back, self._records_left = set(tracks), True
            self._store_tracks()

    def _drop_records_file(self) -> None:
        """Remove RECORDS_FILE once what it held is stored (under the lock), not as it is read:
        a start on the card still failing the writes, killed (a power cut, the watchdog), lost
        them, and the start after ended a violation the broker had the end of again."""
        if not self._records_left or self._taken_back & self._tracks.keys():
            return
        self._records_left = False
        path = self.dir / RECORDS_FILE
        try:
            path.unlink(missing_ok=True)
        except OSError as err:
            log.warning("outbox %s: cannot remove it (%s); a later start may end a violation "
                        "of it again", path, err.strerror or err)

    def _keep_records(self) -> bool:
        """The records ``close`` could not store, in RECORDS_FILE for the next start."""
        records = [{"event_id": event_id, "topic": row.topic, "payload": row.payload,
                    "updated": row.created, "open": still_open}
                   for event_id, (row, still_open) in self._tracks.items()]
        try:
            write_atomically(self.dir / RECORDS_FILE, json.dumps(records).encode("utf-8"))
        except OSError:
            return False
        return True

    # ---- bounds and repairs ----

    def prune(self) -> int:
        """Apply the bounds (oldest first); returns how many rows were dropped. Rows of this
        boot are aged by the time since boot, those of earlier boots by the wall clock unless
        it was not set when they were stored (``row_age``)."""
        wall, uptime = self._clock()
        redate = False
        done = [0, 0, 0]  # re-dated, dropped by age, dropped by count: each part's as it commits

        def in_parts(kind: int, change: str, where: str, args: tuple,
                     most: int | None = None) -> None:
            """``change`` (an UPDATE or DELETE; ``args`` its values, then ``where``'s) on the
            rows ``where`` picks, the oldest ``most`` if given, PRUNE_ROWS a commit: one commit
            for a week's backlog wrote the whole file to the WAL again, room a full card does not
            have (the prune then failed at every try, the bounds never applied). All of them
            go, so only ``most`` orders them: sorting every match again for each part took
            seconds for 100 000 rows (x12 the one commit's time), the loop held up."""
            order = "" if most is None else "ORDER BY id"
            while most is None or done[kind] < most:
                part = PRUNE_ROWS if most is None else min(PRUNE_ROWS, most - done[kind])
                n = self._db.execute(
                    f"{change} WHERE id IN (SELECT id FROM outbox WHERE {where} {order} "
                    "LIMIT ?)", (*args, part)).rowcount
                done[kind] += n
                if n < part:
                    return

        def redate_in_parts() -> None:
            """The next boot ages this boot's rows by their dates: a date from before a step (a
            clock ten days behind until NTP) dropped minutes-old events there. PRUNE_ROWS ids a
            commit, walked by id: rows re-dated stay where ``in_parts`` would look again."""
            after: int | None = 0
            while after is not None:
                upto = self._db.execute("SELECT id FROM outbox WHERE id > ? ORDER BY id LIMIT 1 "
                                        "OFFSET ?", (after, PRUNE_ROWS - 1)).fetchone()
                done[0] += self._db.execute(
                    "UPDATE outbox NOT INDEXED SET created = uptime + ? WHERE id > ? AND id <= ? "
                    "AND boot = ? AND uptime IS NOT NULL AND abs(created - uptime - ?) >= ?",
                    (wall - uptime, after, upto[0] if upto else 1 << 62, self._boot,
                     wall - uptime, STEP_S)).rowcount
                after = upto[0] if upto else None

        def delete_old() -> None:
            if redate:
                redate_in_parts()
            if self._by_boot:
                in_parts(1, "DELETE FROM outbox", "boot = ? AND uptime < ?",
                         (self._boot, uptime - self.max_age_s))
                in_parts(1, "DELETE FROM outbox", "boot IS NOT ? AND created >= ? AND created < ?",
                         (self._boot, CLOCK_FLOOR, wall - self.max_age_s))
            else:
                in_parts(1, "DELETE FROM outbox", "created >= ? AND created < ?",
                         (CLOCK_FLOOR, wall - self.max_age_s))
            over = self._count - done[1] - self.max_events
            if over > 0:
                in_parts(2, "DELETE FROM outbox", "1", (), over)

        with self._lock:
            if self._db is None:  # nothing stored; the memory queue has its own bound
                return 0
            redate = self._by_boot and bool(self._steps.step(wall, uptime) or not self._redated)
            replaced = False  # a damaged file: the new one's count is its own
            try:
                self._draining(delete_old)
            except sqlite3.Error as err:
                replaced = self._failed("delete", "drop events beyond the outbox bounds", err)
                self._redated = self._redated and not redate  # the step is looked for again
            else:
                self._succeeded("delete")
                self._redated = self._redated or redate
            # The parts committed before a failure are done too.
            moved, n_age, n_count = (0, 0, 0) if replaced else done
            self._count -= n_age + n_count
            self.dropped += n_age + n_count
            if (n_age or n_count) and self._unremoved:
                self._forget_dropped()
        if moved:
            log.warning("outbox: the clock stepped; %d stored event(s) of this boot were re-dated "
                        "with it, so their age is kept after a restart", moved)
        self._report_drops(n_age, n_count)
        return n_age + n_count

    def _forget_dropped(self) -> None:
        """Undeleted acknowledged rows that the bounds dropped meanwhile are gone for good."""
        marks = ",".join("?" * len(self._unremoved))
        try:
            found = self._db.execute(f"SELECT id FROM outbox WHERE id IN ({marks})",
                                     list(self._unremoved)).fetchall()
        except sqlite3.Error as err:
            self._damage(err)
            return  # kept; the next successful delete sorts it out
        self._unremoved = {r[0] for r in found}

    def maintain(self) -> None:
        """Retry what storage faults left undone (deletes, the reserve, storing events held in
        memory) at most every RETRY_S, and prune and shrink once a minute; the publisher calls it."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + RETRY_S
            with self._lock:
                self._check_still_there()
        if now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_S
            self.prune()
            self.shrink()
        with self._lock:
            if now < self._next_retry or not (self._unremoved or self._memory or self._errors
                                               or not self._reserve_held or self._exclusive
                                               or self._tracks):
                return
            self._next_retry = now + RETRY_S
            if self._unremoved:
                self._delete(sorted(self._unremoved))
            if not self._reserve_held:
                self._set_held(self._hold_reserve())
                if self._reserve_held:
                    log.warning("outbox %s: there is room again; the %d KiB reserve is held",
                                self.path, self.reserve_bytes // 1024)
            if self._reserve_held and (self._db is None or self._exclusive) and self._room():
                self._reopen()
            if self._memory and self._reserve_held:
                self._store_memory()
            if self._tracks and self._reserve_held:
                self._store_tracks()
            if (not self._memory and not self._tracks and "store" in self._errors
                    and self._reserve_held and self._db is not None and self._room()
                    and not read_only_now(self.dir)):
                # nothing to store now; the next put confirms it. Room alone is no sign on a
                # card the kernel made read-only: "works again" came after every delivery.
                self._succeeded("store")
        self._report_drops(0, 0)

    def _check_still_there(self) -> None:
        """The state dir deleted while maskd runs (under the lock): SQLite goes on writing to
        the unlinked file, so every pending event would vanish at exit while the log says they
        are kept, and a second maskd could take the state dir. Rebuild the outbox where it
        belongs, with everything it holds, and take the lock again."""
        if self._db is None or self._ident is None:
            return
        ident = _file_ident(self.path)
        if ident == self._ident:
            return
        if ident is not None:  # another file in its place: not ours to overwrite
            self._warn(logging.ERROR, "replaced", "outbox %s: the file was replaced while maskd "
                       "runs; pending events stay in the one maskd opened until it stops",
                       self.path)
            return
        self._warn(logging.ERROR, "removed", "outbox %s: removed while maskd runs (the state "
                   "dir deleted?); writing its %d pending event(s) to a new one there",
                   self.path, self._count)
        lock_fd = reserve_fd = -1
        tmp = self.path.with_name(f"{OUTBOX_FILE}.rebuild")
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(self.dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            reserve_fd = os.open(self.dir / RESERVE_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            tmp.unlink(missing_ok=True)
            copy = sqlite3.connect(tmp)
            try:
                self._db.backup(copy)
            finally:
                copy.close()
            os.replace(tmp, self.path)
            try:
                db = self._connect(self._durable)
            except (OSError, sqlite3.Error):
                self.path.unlink(missing_ok=True)  # gone again: the next check tries anew
                raise
        except (OSError, sqlite3.Error) as err:
            for fd in (lock_fd, reserve_fd):
                if fd >= 0:
                    os.close(fd)
            self._failed("store", "rebuild the removed outbox", err)
            return
        self._db.close()
        os.close(self._lock_fd)
        os.close(self._reserve_fd)
        self._db, self._lock_fd, self._reserve_fd = db, lock_fd, reserve_fd
        self._exclusive = False
        self._ident = _file_ident(self.path)
        self._set_held(self._hold_reserve())
        self._succeeded("store")
        log.warning("outbox %s: rebuilt with its %d pending event(s)", self.path, self._count)

    def shrink(self) -> int:
        """Give a drained backlog's space back to the file system; returns the unused bytes given.

        SQLite reuses the pages of deleted rows but never returns them, so after a long outage
        the file would keep its largest backlog's size for good (tens of MiB on an SD card).
        Only an empty outbox is rewritten (VACUUM then copies almost nothing); a failure, such
        as a full disk, is logged and tried again at the next prune."""
        with self._lock:
            if self._db is None or self._count or self._memory or self._errors:
                return 0
            unused = 0
            try:
                page = self._db.execute("PRAGMA page_size").fetchone()[0]
                unused = self._db.execute("PRAGMA freelist_count").fetchone()[0] * page
                if unused < SHRINK_BYTES:
                    return 0
                # The copy is built in memory (it holds only the open violations), so a full
                # disk, or a /tmp on the same full card, does not stop the file shrinking.
                self._db.execute("PRAGMA temp_store=MEMORY")
                self._db.execute("VACUUM")
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as err:
                if self._damage(err):
                    return 0
                self._warn(logging.WARNING, "shrink", "outbox %s: cannot give back %d KiB of "
                           "unused space (%s); trying again later", self.path, unused // 1024, err)
                return 0
        log.info("outbox %s: empty again; gave %d KiB of unused space back", self.path,
                 unused // 1024)
        return unused

    def _room(self) -> bool:
        """Free space beyond the reserve for a few events (a guess; a put is the proof)."""
        try:
            return shutil.disk_usage(self.dir).free >= max(self.reserve_bytes, 64 * 1024)
        except OSError:
            return False

    def _store_tracks(self) -> bool:
        """Write the records of messages that were delivered from memory before they could be
        stored (under the lock; only once memory is empty, so no older message of the same
        violation is stored after them); True when none is left."""
        if not self._tracks:
            self._drop_records_file()
            return True
        if self._memory or self._db is None:
            return False
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            for event_id, (row, still_open) in self._tracks.items():
                _record(db, row, event_id, still_open)
            db.execute("COMMIT")
        except sqlite3.Error as err:
            self._failed("store", "record the open violations", err)
            return False
        self._tracks.clear()
        self._drop_records_file()
        return True

    def _store_memory(self) -> None:
        """Move what waits in memory to disk, in order (under the lock); creates the outbox
        first where a start on a full disk could not."""
        if self._db is None:
            self._reopen()
            if self._db is None:
                return
        items = list(self._memory.values())
        if items and self._store(items, "store events held in memory"):
            self._memory.clear()
            log.warning("outbox %s: stored %d event(s) that were held in memory", self.path,
                        len(items))

    def _report_drops(self, n_age: int, n_count: int, closing: bool = False) -> None:
        """One warning per minute at most: a full outbox during a long outage drops on every put.
        ``closing``: what the minute still held is said now (it was never said)."""
        self._unlogged_age += n_age
        self._unlogged_count += n_count
        if not (self._unlogged_age or self._unlogged_count or self._unlogged_memory) or \
                not (closing or self._warn.due("drops")):
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
        if self._unlogged_memory:
            log.error(
                "outbox: memory queue full (%d events, none of them stored: %s); dropped the %d "
                "oldest", self.memory_max, self.fault or self._dropped_why, self._unlogged_memory,
            )
        self._unlogged_age = self._unlogged_count = self._unlogged_memory = 0

    def close(self) -> None:
        """Store what waits in memory if at all possible (the reserve too), then close. A second
        call does nothing: its file descriptors' numbers may belong to other files by then."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._report_drops(0, 0, closing=True)
                if self._memory:
                    self._store_memory()
                if (self._memory or not self._store_tracks()) and self._release_reserve():
                    self._store_memory()  # the process ends: use the reserve
                if self._memory:
                    log.error("outbox %s: %d event(s) held in memory could not be stored (%s) "
                              "and are lost", self.path, len(self._memory), self.fault)
                elif not self._store_tracks():
                    if self._keep_records():
                        log.warning("outbox %s: which message %d violation(s) sent last could "
                                    "not be stored (%s); kept in %s for the next start",
                                    self.path, len(self._tracks), self.fault, RECORDS_FILE)
                    else:
                        log.error("outbox %s: which message %d violation(s) sent last could "
                                  "not be stored (%s); the next start may end them with a seq "
                                  "already sent", self.path, len(self._tracks), self.fault)
                if self._db is not None:
                    self._db.close()
            finally:
                os.close(self._reserve_fd)
                os.close(self._lock_fd)
