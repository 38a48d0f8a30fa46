"""The open violations, kept in ``state_dir`` whatever the sinks are.

A run killed with a violation open (``kill -9``, power loss) never sends its `end`. The next
start must end it with reason ``restart`` in every sink, JSON lines as much as MQTT, and only
once. So the run loop notes each start and update here before any sink gets it, and an end
after every sink got it; at start the service ends what is still noted (``restart_ends``),
and each of those ends, once given to every sink, leaves the file like any other end.

A camera removed from the config (or renamed) between runs has no loop to end its violations:
``removed_ends`` gives them to the first camera's loop, which ends them the same way (reason
``restart``, as the MQTT outbox ends them on that camera's topic), so the file does not keep
them and JSON lines gets their `end` too.

One small JSON file, read and rewritten under a lock file, so several processes sharing a
``state_dir`` (one per camera) keep each other's entries. Each camera is claimed (a lock file of
its own, ``claim``) before its start reads the file: a second process with the same camera there
would take the running one's open violations for a killed run's and end them. A change the
file cannot take (a full disk) is held in memory and written with the next one that succeeds:
an end lost there left its start in the file for good, and the next start ended it `restart` a
second time.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, fields, replace
from pathlib import Path

from maskd.files import failed_write, read_again_once, write_atomically
from maskd.types import ViolationEvent, restart_end_time

log = logging.getLogger(__name__)

LEDGER_FILE = "open_violations.json"
LOCK_FILE = f".{LEDGER_FILE}.lock"
_FIELDS = {f.name for f in fields(ViolationEvent)} - {"best_crop", "box"}


def foreign_ledger(state_dir: Path, cameras: Iterable[str] = ()) -> str | None:
    """'open violations F belongs to root:root ...' (``maskd.outbox.another_users_file``) where
    the open violations' lock in ``state_dir`` is another user's that this process cannot open
    (`sudo maskd run`): `run` keeps no open violation there, and check-config says so. Else
    the first of ``cameras`` whose lock is such a file (``foreign_camera_lock``)."""
    from maskd.outbox import another_users_file

    why = another_users_file(Path(state_dir) / LOCK_FILE)
    if why is not None:
        return f"open violations {why}"
    return next((line for c in cameras if (line := foreign_camera_lock(state_dir, c))), None)


def foreign_camera_lock(state_dir: Path, camera: str) -> str | None:
    """'camera C: a second maskd run on it is not refused: F belongs to root:root ...' where
    ``camera``'s lock in ``state_dir`` is another user's this process cannot open (`sudo maskd
    run` leaves it root's, 0600): `run` warns so, check-config and doctor too (was: the claim
    gave up in silence, and a second run on the camera was let in)."""
    from maskd.outbox import another_users_file

    why = another_users_file(Path(state_dir) / camera_lock(camera))
    return None if why is None else (
        f"camera {camera}: a second maskd run on it with this state_dir is not refused: {why}")


def camera_lock(camera: str) -> str:
    """The name of ``camera``'s lock file in ``state_dir`` (``OpenViolations.claim``)."""
    return f".camera-{camera}.lock"


class CameraInUse(OSError):
    """Another process runs this camera on this ``state_dir``: a setup problem (exit 78)."""


def _noted(rec: object) -> float:
    """When an entry was last noted; 0.0 for one that does not say (a damaged file)."""
    noted = rec.get("noted") if isinstance(rec, dict) else None
    return float(noted) if isinstance(noted, (int, float)) else 0.0


class OpenViolations:
    """``state_dir``'s record of the violations open now, by event id."""

    def __init__(self, state_dir: Path, cameras: tuple[str, ...] = (), outbox: bool = False
                 ) -> None:
        """``cameras``: every camera of this process, noted with each entry, so a later start
        knows which process left an entry of a camera it does not have (``removed_ends``).
        ``outbox``: this process holds ``state_dir``'s MQTT outbox (its lock: no other process
        with MQTT runs on the folder), also noted: a later start that holds it knows the
        process that left such an entry is gone. A process without MQTT takes no lock, so it
        may run beside one with it."""
        self.path = Path(state_dir) / LEDGER_FILE
        self.cameras = sorted(cameras)
        self.outbox = outbox
        self._lock = threading.Lock()  # camera threads of one process
        self._warned = False
        self._said_damaged = False  # the file is no JSON: said once (``_read``)
        # Changes not written yet, by event id (None: ended), and the ids the file held when
        # last read: an end of a violation the file never held needs no record while it waits.
        self._held: dict[str, dict | None] = {}
        self._on_file: set[str] = set()
        # The file's last read failed: what it holds is not known, so an end waits as a removal
        # (a killed run's violation the outbox ended at a start that could not read it stayed
        # in it, and the start after ended it a second time).
        self._unread = False
        # Ends this run (without the outbox) gives to entries a run with it noted: the outbox
        # still holds them open, so each leaves a mark (``ended``) that keeps the next start
        # with MQTT from ending it in the other sinks a second time (``ended_elsewhere``).
        self._marked: set[str] = set()
        self._claims: dict[str, int] = {}  # camera -> its lock file's descriptor

    def claim(self, camera: str) -> None:
        """Hold ``camera``'s lock file in ``state_dir`` until ``release``: raises CameraInUse
        when another process holds it. Without MQTT no outbox lock keeps a second `maskd run`
        off the folder, and its start took the running camera's open violations for a killed
        run's (``restart_ends``). A folder that cannot take the lock is left to the warning
        the record gives (``_under_lock``)."""
        path = self.path.with_name(camera_lock(camera))
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            if isinstance(err, PermissionError) and (
                    line := foreign_camera_lock(self.path.parent, camera)) is not None:
                log.warning("%s", line)
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise CameraInUse(
                f"camera {camera} is running in another maskd process on state_dir "
                f"{self.path.parent} (its open violations are kept there): give each instance "
                "its own state_dir, or its own camera name") from None
        except OSError:
            os.close(fd)
            return
        self._claims[camera] = fd

    def release(self, camera: str) -> None:
        """Let ``camera`` go (its loop has stopped)."""
        fd = self._claims.pop(camera, None)
        if fd is not None:
            os.close(fd)

    def note(self, *events: ViolationEvent) -> None:
        """A start or update: the violation is open now; an end: it is not any more. A frame's
        events come together, written once (a crowd of 200 starting at once, each a rewrite of
        the whole file, held the loop for 0.6 s here)."""
        for event in events:
            self._hold(event)
        self._under_lock(self._apply_held)

    def _hold(self, event: ViolationEvent) -> None:
        rec = None
        if event.event_type != "end":
            rec = asdict(replace(event, best_crop=None))
            del rec["best_crop"]
            rec["noted"] = time.time()
            rec["cameras"] = self.cameras
            rec["outbox"] = self.outbox
        elif event.event_id in self._marked:
            rec = {"ended": event.end_reason, "camera": event.camera, "noted": time.time(),
                   "outbox": True}
        with self._lock:
            if rec is not None:
                self._held[event.event_id] = rec
            elif event.event_id in self._on_file or self._unread:
                self._held[event.event_id] = None
            else:
                self._held.pop(event.event_id, None)

    def _apply_held(self, entries: dict) -> None:
        """Every change not written yet, in the entries read now (another process's stay)."""
        for event_id, rec in self._held.items():
            if rec is None:
                entries.pop(event_id, None)
            else:
                entries[event_id] = rec

    def restart_ends(self, cameras: set[str]) -> list[ViolationEvent]:
        """The `end` (reason ``restart``) of every violation of ``cameras`` a killed run left
        open; its end time is when it was last noted, the last moment it was known open (not
        earlier than its start plus the ``duration_s`` noted then: the clock may have stepped
        back since the start)."""
        # another process's camera (a shared state_dir): it ends its own
        return self._ends(lambda rec: rec.get("camera") in cameras)

    def removed_ends(self, cameras: set[str]) -> list[ViolationEvent]:
        """The `restart` ends of the violations a killed run left open on cameras this config
        no longer has (``cameras``: all of this process's): removed or renamed since. Only those
        this process's earlier runs left: noted by a process that shared a camera with this
        one, or, when this process holds the outbox, by one that held it too (or by a maskd
        that did not say); an entry of a process without MQTT sharing the folder (other
        cameras) stays for it, even beside this process's outbox. One INFO line per camera."""
        def removed(rec: dict) -> bool:
            if rec.get("camera") in cameras:
                return False
            noted_by = rec.get("cameras")
            if not isinstance(noted_by, list):  # an older maskd's
                return self.outbox
            return not cameras.isdisjoint(noted_by) or (self.outbox and rec.get("outbox") is True)

        ends = self._ends(removed)
        for camera in sorted({e.camera for e in ends}):
            n = sum(e.camera == camera for e in ends)
            log.info("camera %s is no longer in the config: ending its %d open violation%s "
                     "(reason restart) and forgetting %s", camera, n, "s" * (n != 1),
                     "them" if n != 1 else "it")
        return ends

    def ended_elsewhere(self) -> set[str]:
        """The violations a run without MQTT ended (``restart``) that the MQTT outbox still
        holds open: its start ends them in MQTT, and must not end them in the other sinks
        again (JSON lines got a second `end`)."""
        return {i for i, rec in self._entries() if isinstance(rec, dict) and rec.get("ended")}

    def forget_ended(self) -> None:
        """Drop the marks ``ended_elsewhere`` reads, once this process (holding the outbox) has
        ended those violations in MQTT."""
        if self.outbox and self.ended_elsewhere():
            self._under_lock(lambda entries: [entries.pop(i) for i, rec in list(entries.items())
                                              if isinstance(rec, dict) and rec.get("ended")])

    def _entries(self) -> list[tuple[str, dict]]:
        """The file's entries as they are now (read under its lock, nothing written)."""
        found: list[tuple[str, dict]] = []
        self._under_lock(lambda entries: found.extend(entries.items()), write=False)
        return found

    def _ends(self, which: Callable[[dict], bool]) -> list[ViolationEvent]:
        """The `restart` ends of the entries ``which`` picks, oldest first; entries that are
        no violation are removed (said once)."""
        found = self._entries()
        ends, bad = [], []
        for event_id, rec in sorted(found, key=lambda item: _noted(item[1])):
            if isinstance(rec, dict) and (rec.get("ended") or not which(rec)):
                continue
            if isinstance(rec, dict) and rec.get("outbox") is True and not self.outbox:
                self._marked.add(event_id)
            try:
                # Only the fields this version knows: a newer one's extra keys do not keep the
                # violation from being ended.
                ev = ViolationEvent(**{k: rec[k] for k in _FIELDS if k in rec},
                                    box=tuple(rec["box"]))
                ends.append(replace(ev, event_type="end", seq=ev.seq + 1, end_reason="restart",
                                    end_time=restart_end_time(_noted(rec), ev.start_time, ev.duration_s),
                                    frame_seq=None))
            except (TypeError, ValueError, KeyError) as err:
                log.warning("%s: an entry that is no violation removed (%s)", self.path, err)
                bad.append(event_id)
        if bad:  # said once: a damaged entry is not read again at every start
            self._under_lock(lambda entries: [entries.pop(i, None) for i in bad])
        return ends

    def _under_lock(self, change: Callable[[dict], object], write: bool = True) -> None:
        """``change`` the entries read under the lock file, then write them back; where
        ``state_dir`` cannot keep them, a warning (once) and nothing else."""
        with self._lock:
            try:  # exists() too: a state_dir too long to look up stopped `run` (exit 78)
                if not write and not self.path.exists():
                    return  # nothing noted yet: no folder made, no warning before a violation
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path.with_name(LOCK_FILE), "a") as lock:
                    fcntl.flock(lock, fcntl.LOCK_EX)
                    try:
                        entries = self._read()
                    except OSError as err:  # nothing written: that would drop what it holds
                        self._unread = True
                        self._say_unread(err)
                        return
                    self._unread = False
                    change(entries)
                    if write:
                        write_atomically(self.path, json.dumps(entries).encode("utf-8"))
                        self._held.clear()
                    self._on_file = set(entries)
            except (OSError, TypeError, ValueError) as err:
                if not self._warned:
                    self._warned = True
                    log.warning("cannot keep the open violations in %s (%s): violations open "
                                "when maskd is killed will not be ended at the next start",
                                self.path, self._why_not(err))
                return
            if write and self._warned:
                self._warned = False
                log.info("the open violations are kept in %s again", self.path)

    def _why_not(self, err: Exception) -> str:
        """Why the file or its lock cannot be written: a file left by maskd run as another user
        (`sudo maskd run`: root's lock, 0644) named with its owner and the chown, as the outbox's
        are (was: 'Permission denied' of open_violations.json, a file maskd may replace)."""
        from maskd.outbox import another_users_file

        failed = getattr(err, "filename", None)
        if isinstance(err, PermissionError) and failed is not None and (
                why := another_users_file(Path(failed))) is not None:
            return why
        return failed_write(err, self.path.parent)

    def _say_unread(self, err: OSError) -> None:
        """A read of the file failed (an I/O error on the card): once, in words that say so and
        what it means for a killed run's violations (the write's warning promised nothing of
        them, and 'will not be ended at the next start' was wrong both ways)."""
        if self._warned:
            return
        self._warned = True
        now = ("now where the MQTT outbox has them (in every sink), else " if self.outbox
               else "")
        log.warning("cannot read %s (%s): what a killed run left open there is ended %sat a "
                    "later start that reads it; changes are written once it reads again",
                    self.path, err.strerror or err, now)

    def _read(self) -> dict:
        try:  # a card's one-off I/O error: a start then ended a killed run's violations one
            text = read_again_once(self.path)  # start later, days after (decoded by json)
        except FileNotFoundError:
            return {}
        try:
            data = json.loads(text)
        except ValueError:  # said once: a start reads it several times before it is rewritten
            if not self._said_damaged:
                self._said_damaged = True
                log.warning("%s is not readable JSON; starting it afresh", self.path)
            return {}
        self._said_damaged = False  # damaged again later: said again
        return data if isinstance(data, dict) else {}
