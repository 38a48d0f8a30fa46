"""Opt-in local snapshots (the ``snapshots:`` section): one JPEG per violation event, kept by age
and by size.

``SnapshotStore`` is the process's one folder: a writer thread encodes and writes the files
(atomically: a temporary file, then a rename), and enforces retention, oldest first: at start,
after every write (``keep_mb``) and every ``PRUNE_EVERY_S`` (``keep_days``), from an index of
the folder read at start and re-read every ``RESCAN_S``. Only files named like its own are ever
counted or deleted. When the wall clock steps (a Pi's first NTP sync after days switched off),
the files this process wrote before the step are re-dated with it, so that minutes-old
snapshots do not look days old and get deleted.

``SnapshotTaker`` is one camera's EventSink and FrameObserver in one object:

- ``what: crop`` saves the event's best face crop (``ViolationEvent.best_crop``), and saves it
  again when a later message of the event carries a better one;
- ``what: frame`` keeps no frame of its own: an event's message is held until the loop shows
  the observers the frame it was made on (the same frame, right after ``emit``), which is then
  drawn with every face's box (``maskd.annotate.draw_verdicts``) and saved. That is the frame the
  violation started on, replaced when a later message comes on the frame of the event's best
  score; a message whose best frame has already gone by (a rate-limited update, an end) changes
  nothing.

File names: ``<camera>-<YYYYmmdd-HHMMSS>-<event_id>.jpg``, the event's start in UTC.

Nothing here may stop detection: a full disk or an unwritable folder is logged (once a minute
per cause), counted and shown in ``faults()`` (the systemd status line, MQTT stats), and the
snapshot is dropped; a slow disk fills a bounded queue whose overflow is dropped and counted.
"""

from __future__ import annotations

import logging
import os
import queue
import re
import threading
import time
from collections import OrderedDict, deque
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from maskd.annotate import draw_verdicts
from maskd.clock import CLOCK_FLOOR, STEP_S, Clock, StepWatch, oldest_first, system_clock
from maskd.config import ID_CHARS, ID_MAX
from maskd.files import PRIVATE_DIR, PRIVATE_FILE, failed_write
from maskd.lograte import Throttle
from maskd.types import EventSink, Frame, FrameObserver, LoopStats, Verdict, ViolationEvent

if TYPE_CHECKING:
    from maskd.config import SnapshotConfig

log = logging.getLogger("maskd.snapshots")

MB = 1024 * 1024
DAY_S = 86400.0
JPEG_QUALITY = 90
MAX_PENDING = 32  # images waiting for the writer thread; more are dropped and counted ...
MAX_PENDING_BYTES = MAX_PENDING * 640 * 480 * 3  # ... unless they are small: a crowd's crops
PRUNE_EVERY_S = 300.0  # keep_days checked this often (and at start)
RESCAN_S = 3600.0  # the folder's index read again (files added or removed by hand)
RECENT = 100  # deleted files remembered (for logs and tests); a count keeps the rest
_ID = f"[{ID_CHARS}]{{1,{ID_MAX}}}"  # the camera's (config) and the event's (a UUID)
NAME = re.compile(_ID + r"-\d{8}-\d{6}-" + _ID + r"\.jpg")


def on_disk(st: os.stat_result) -> int:
    """The room a file takes on the card, in whole blocks, which keep_mb counts: a far face's
    crop of 2 KB takes a 4 KiB block, and counting its bytes let the folder take twice keep_mb
    and more. Never less than its bytes (a file system that does not count blocks)."""
    return max(st.st_size, st.st_blocks * 512)


def snapshot_name(camera: str, start_time: float, event_id: str) -> str:
    return f"{camera}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime(start_time))}-{event_id}.jpg"


class SnapshotStore:
    """The snapshot folder shared by every camera of the process; ``users`` takers close it."""

    def __init__(self, folder: Path, keep_days: float, keep_mb: float, users: int = 1,
                 clock: Clock = system_clock) -> None:
        self.dir = folder
        self._clock = clock
        self._steps = StepWatch(STEP_S)
        self._steps.step(*clock())
        self._mine: set[Path] = set()  # written by this process: re-dated when the clock steps
        self.keep_s = keep_days * DAY_S
        self.keep_mb = keep_mb
        self.keep_bytes = int(keep_mb * MB)
        self._users = users
        self.written = self.failed = self.dropped = 0
        self.deleted: deque[Path] = deque(maxlen=RECENT)  # the latest only: months of them add up
        self.n_deleted = 0
        self.too_big = 0  # snapshots deleted at once: bigger than keep_mb on their own
        self._fault: str | None = None
        self._throttle = Throttle()
        self._index: OrderedDict[Path, tuple[float, int]] = OrderedDict()  # oldest first
        self._total = 0
        self._q: queue.Queue = queue.Queue()  # bounded by the size of what waits
        self._waiting = 0  # bytes of the images in the queue
        self._lock = threading.Lock()
        self._closed = False
        self._started = threading.Event()  # the start's retention is done
        self._thread = threading.Thread(target=self._run, name="maskd-snapshots", daemon=True)
        self._thread.start()
        log.info("snapshots: one JPEG per violation event in %s, kept %g days and %g MB at most",
                 folder, keep_days, keep_mb)

    @classmethod
    def from_config(cls, cfg: SnapshotConfig, users: int = 1) -> SnapshotStore | None:
        """The store the config asks for; None when snapshots are off (the default)."""
        if cfg.dir is None:
            return None
        return cls(cfg.dir, cfg.keep_days, cfg.keep_mb, users)

    def taker(self, camera: str, what: str) -> SnapshotTaker:
        return SnapshotTaker(self, camera, what)

    # ------------------------------------------------------------------ loop side

    def put(self, name: str, image: np.ndarray, *more: str) -> None:
        """Queue one image to be saved as ``name`` (and as each of ``more``: one frame shared
        by a crowd's events takes one place in the queue and is encoded once); never blocks
        the caller."""
        if self._closed:
            return
        with self._lock:
            full = (self._q.qsize() >= MAX_PENDING
                    and self._waiting + image.nbytes > MAX_PENDING_BYTES)
            if not full:
                self._waiting += image.nbytes
                self._q.put_nowait(((name, *more), image))
        if full:
            self.dropped += 1 + len(more)
            self._report("queue", logging.WARNING, f"snapshots: {self._q.qsize()} images waiting "
                         f"for the disk; {self.dropped} dropped so far")

    def faults(self) -> list[str]:
        return [self._fault] if self._fault else []

    def flush(self, timeout: float, cancel: threading.Event | None = None) -> bool:
        """Wait up to ``timeout`` s for the start's retention and the queue to be written (a
        failed write counts as done)."""
        deadline = time.monotonic() + timeout
        self._started.wait(timeout)
        while (self._q.unfinished_tasks and time.monotonic() < deadline
               and not (cancel and cancel.is_set())):
            time.sleep(0.01)
        return self._started.is_set() and not self._q.unfinished_tasks

    def release(self) -> None:
        """One taker is done; the last one closes the store."""
        with self._lock:
            self._users -= 1
            last = self._users <= 0
        if last:
            self.close()

    def close(self, timeout: float = 5.0) -> None:
        """Let the writer finish the queue for up to ``timeout`` s, then stop it. A disk that
        stalls (an SD card or a network share that stopped answering) must not hold up the
        rest of the stop: what still waits then is dropped, counted and logged."""
        if self._closed:
            return
        self._closed = True
        deadline = time.monotonic() + timeout
        self._q.put_nowait(None)  # after what waits: the writer ends there
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            lost = self._drain()
            self.dropped += lost
            log.warning("snapshots: the disk did not finish within %g s of the stop; %d "
                        "snapshot(s) still waiting were dropped (a write to %s still hangs)",
                        timeout, lost, self.dir)
            self._q.put_nowait(None)  # should the disk wake up, the writer ends
        log.info("snapshots: %d written, %d failed, %d dropped, %d deleted by retention",
                 self.written, self.failed, self.dropped, self.n_deleted)

    def _drain(self) -> int:
        """Take every waiting snapshot off the queue; how many there were."""
        n = 0
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                return n
            if item is not None:
                n += len(item[0])
                self._taken(item)
            self._q.task_done()

    # ------------------------------------------------------------------ writer thread

    def _run(self) -> None:
        try:
            self.prune(rescan=True)
        finally:
            self._started.set()
        next_prune = time.monotonic() + PRUNE_EVERY_S
        next_scan = time.monotonic() + RESCAN_S
        while True:
            try:
                item = self._q.get(timeout=max(0.0, next_prune - time.monotonic()))
            except queue.Empty:
                item = ()
            try:
                if item is None:
                    return
                if item:
                    self._taken(item)
                    self._write(*item)
                if time.monotonic() >= next_prune:
                    now = time.monotonic()
                    self.prune(rescan=now >= next_scan)
                    next_prune = now + PRUNE_EVERY_S
                    if now >= next_scan:
                        next_scan = now + RESCAN_S
            except Exception:  # noqa: BLE001 - the writer must outlive any one file
                log.exception("snapshots: unexpected error")
            finally:
                if item != ():
                    self._q.task_done()

    def _taken(self, item: tuple[tuple[str, ...], np.ndarray]) -> None:
        with self._lock:
            self._waiting -= item[1].nbytes

    def _write(self, names: tuple[str, ...], image: np.ndarray) -> None:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        for name in names:
            self._write_one(name, buf if ok else None)

    def _write_one(self, name: str, buf: np.ndarray | None) -> None:
        now = self._follow_clock()  # before the file gets its time
        path = self.dir / name
        tmp = self.dir / f".{name}.tmp"
        try:
            if buf is None:
                raise ValueError("OpenCV could not encode the image")
            self.dir.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
            with os.fdopen(fd, "wb") as f:
                f.write(buf.tobytes())
                f.flush()
                size = on_disk(os.fstat(fd))
            os.replace(tmp, path)
        except (OSError, ValueError) as err:
            self.failed += 1
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            why = failed_write(err, self.dir)
            self._fault = f"snapshots: cannot write to {self.dir}: {why}"
            self._report(f"write {why}", logging.ERROR,
                         f"{self._fault}; snapshot {name} dropped ({self.failed} so far; "
                         f"detection goes on)")
            return
        if self._fault is not None:
            log.info("snapshots: writing to %s again", self.dir)
        self._fault = None
        self.written += 1
        old = self._index.pop(path, None)
        if old is not None:
            self._total -= old[1]
        self._index[path] = (now, size)
        self._mine.add(path)
        self._total += size
        self._enforce(now, written=path)

    # ------------------------------------------------------------------ retention

    def prune(self, rescan: bool = False) -> None:
        """Apply keep_days and keep_mb now (``rescan``: read the folder first)."""
        now = self._follow_clock()
        if rescan:
            self._scan(now)
        self._enforce(now)

    def _scan(self, now: float) -> None:
        found: list[tuple[float, int, Path]] = []
        unset: list[Path] = []
        try:
            with os.scandir(self.dir) as it:
                for e in it:
                    if (e.name.startswith(".") and e.name.endswith(".tmp")
                            and NAME.fullmatch(e.name[1:-4]) and e.is_file(follow_symlinks=False)):
                        Path(e.path).unlink(missing_ok=True)  # ours, left by a crash mid-write
                    elif NAME.fullmatch(e.name) and e.is_file(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        mtime = st.st_mtime
                        if mtime < CLOCK_FLOOR <= now:
                            unset.append(Path(e.path))
                            mtime = now
                        found.append((mtime, on_disk(st), Path(e.path)))
        except FileNotFoundError:
            pass
        except OSError as err:
            self._report("scan", logging.ERROR, f"snapshots: cannot read {self.dir}: "
                         f"{err.strerror or err}; retention not applied")
            return
        if unset:
            self._from_now(unset, now)
        self._mine &= {p for _, _, p in found}
        self._sort_index({p: (m, s) for m, s, p in found})
        self._total = sum(s for _, s, _ in found)

    def _from_now(self, paths: list[Path], now: float) -> None:
        """Files written while the wall clock was not set (a run before NTP on a Pi that booted
        in 1970) are dated now: their dates say nothing, and by them keep_days deleted at once
        what a run before NTP kept (the outbox keeps such rows too)."""
        for path in paths:
            try:
                os.utime(path, (now, now))  # so the next start or rescan agrees
            except OSError as err:
                self._report("utime", logging.WARNING, f"snapshots: cannot re-date {path}: "
                             f"{err.strerror or err}")
        log.warning("snapshots: %d snapshot(s) dated before the clock was set (a run before NTP) "
                    "were re-dated to now, so keep_days counts from now for them", len(paths))

    def _sort_index(self, index: dict[Path, tuple[float, int]]) -> None:
        """The index oldest first: this process's files after all others, in the order written
        (``clock.oldest_first``), so keep_mb never deletes them before an earlier run's."""
        written = [p for p in self._index if p in self._mine]
        dated = {p: m for p, (m, _) in index.items()}
        self._index = OrderedDict((p, index[p]) for p in oldest_first(dated, written))

    def _follow_clock(self) -> float:
        """The wall time now. When the wall clock stepped since the last call, this process's
        files (and their index entries) are moved by the same step."""
        wall, since_boot = self._clock()
        step = self._steps.step(wall, since_boot)
        if not step:
            return wall
        moved = 0
        for path in self._mine:  # all in the index: a delete or a rescan takes them out
            t, size = self._index[path]
            try:
                os.utime(path, (t + step, t + step))  # so the next start or rescan agrees
            except OSError as err:
                self._report("utime", logging.WARNING, f"snapshots: cannot re-date {path}: "
                             f"{err.strerror or err}")
            self._index[path] = (t + step, size)
            moved += 1
        # an earlier run's files from before the clock was set, kept as new while this run
        # was on that clock too: their age counts from now (as _scan does), not from 1970
        unset = [p for p, (t, _) in self._index.items() if t < CLOCK_FLOOR <= wall
                 and p not in self._mine]
        if unset:
            self._from_now(unset, wall)
            for p in unset:
                self._index[p] = (wall, self._index[p][1])
        self._sort_index(self._index)
        log.warning("snapshots: the clock stepped %+.0f s; %d snapshot(s) written before it were "
                    "re-dated with it, so their age is kept", step, moved)
        return wall

    def _enforce(self, now: float, written: Path | None = None) -> None:
        """Oldest first: everything older than keep_days, then while over keep_mb. Deleting
        ``written`` (the file just written) means keep_mb holds not even that one: said, since
        the folder then stays empty while the log seemed to say snapshots were taken. One that
        cannot be deleted (another user's in a shared folder, an immutable file) is passed
        over: it stopped every deletion after it, and the folder grew past keep_mb for good."""
        for path, (mtime, size) in list(self._index.items()):
            if now - mtime <= self.keep_s and self._total <= self.keep_bytes:
                break
            why = "older than keep_days" if now - mtime > self.keep_s else "over keep_mb"
            try:
                path.unlink(missing_ok=True)
            except OSError as err:
                self._report("delete", logging.WARNING, f"snapshots: cannot delete {path}: "
                             f"{err.strerror or err}; the ones after it are deleted instead")
                continue
            del self._index[path]
            self._mine.discard(path)
            self._total -= size
            self.deleted.append(path)
            self.n_deleted += 1
            log.debug("snapshots: deleted %s (%s)", path.name, why)
            if path == written:
                self.too_big += 1
                self._report("keep_mb", logging.WARNING,
                             f"snapshots: {path.name} ({size / 1024:.0f} KiB) is bigger than "
                             f"snapshots.keep_mb ({self.keep_mb:g} MB) and was deleted "
                             f"right after it was written ({self.too_big} so far); raise keep_mb "
                             f"to keep any snapshot")

    def _report(self, cause: str, level: int, msg: str) -> None:
        if self._throttle.due(cause):
            log.log(level, "%s", msg)


class SnapshotTaker(EventSink, FrameObserver):
    """One camera's snapshots: an EventSink (the events) and a FrameObserver (their frames)."""

    label = "snapshots"

    def __init__(self, store: SnapshotStore, camera: str, what: str) -> None:
        self.store = store
        self.camera = camera
        self.what = what
        self._saved: dict[str, object] = {}  # event id -> the crop object or frame seq saved
        self._pending: list[ViolationEvent] = []  # frame: messages waiting for their frame
        self._closed = False

    # ------------------------------------------------------------------ EventSink

    def emit(self, event: ViolationEvent) -> None:
        if self.what == "crop":
            crop = event.best_crop
            if crop is not None and self._saved.get(event.event_id) is not crop:
                self._saved[event.event_id] = crop
                self.store.put(self._name(event), crop)
            if event.event_type == "end":
                self._saved.pop(event.event_id, None)
        elif (event.frame_seq is not None and self._saved.get(event.event_id) != event.frame_seq
              or event.event_type == "end"):
            # an end always waits for the next frame, so on_frame forgets the event after any
            # of its messages still waiting there (else its entry would stay for good)
            self._pending.append(event)

    def faults(self) -> list[str]:
        return self.store.faults()

    def flush(self, timeout: float, cancel: threading.Event | None = None) -> bool:
        return self.store.flush(timeout, cancel)

    # ------------------------------------------------------------------ FrameObserver

    def on_frame(self, frame: Frame, verdicts: list[Verdict], stats: LoopStats) -> None:
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        names = []
        for ev in pending:
            if ev.frame_seq == frame.seq and self._saved.get(ev.event_id) != frame.seq:
                self._saved[ev.event_id] = frame.seq
                names.append(self._name(ev))
            if ev.event_type == "end":
                self._saved.pop(ev.event_id, None)
        if names:  # a crowd that starts at once: one image in the queue for all of them
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(frame.timestamp))
            image = draw_verdicts(frame.image, verdicts, f"{self.camera} {when}")
            self.store.put(names[0], image, *names[1:])

    def close(self) -> None:
        """Called as a sink and as an observer; the first call releases the store."""
        if not self._closed:
            self._closed = True
            self.store.release()

    def _name(self, event: ViolationEvent) -> str:
        return snapshot_name(self.camera, event.start_time, event.event_id)
