"""The JSON lines event sink: each event's own payload fields (maskd.mqtt.schema), one line each."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import select
import stat
import sys
import threading
import time
from collections import deque
from pathlib import Path

from maskd.clock import local_iso
from maskd.config import shown_path
from maskd.files import append_line, cannot_create, create_failure, failed_write, open_regular
from maskd.lograte import Throttle
from maskd.mqtt.schema import event_fields
from maskd.types import EventSink, LoopStats, ViolationEvent

log = logging.getLogger(__name__)

MEMORY_MAX = 1000  # lines kept while the file cannot be written; beyond, the oldest are dropped
MB = 1024 * 1024
OLD_SUFFIX = ".old"  # the file before the current one (jsonl.max_mb); not logrotate's ".1"


READER_WAIT_S = 5.0  # how long a named pipe may take to get its reader at the start
PIPE_FULL = "the pipe is full: its reader has stopped reading"


def cannot_write_lines(p: Path | str, why: str) -> str:
    """The one wording, for `run` and check-config, of a jsonl.path that cannot be written."""
    return f"jsonl.path {shown_path(p)}: cannot write there: {why}"


def _open_once(p: Path) -> int:
    """One try at opening p to append to (created with its folders); a pipe without a reader
    is ENXIO at once instead of a hang."""
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # its folder is a file: said as check-config says it (cannot_create)
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)) from None
    fd = os.open(p, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK, 0o666)
    os.set_blocking(fd, True)
    return fd


def _linked_file(target: str) -> str | None:
    """The file a symlinked ``jsonl.path`` names (``target`` itself when it is no link), so the
    cap moves that file and the new one begins there, not beside the link. None for a link into
    ``/proc`` (``/dev/stdout`` with maskd's output sent to a file): it names an open descriptor,
    not a place a new file could be begun, and the cap moved the link itself (``/dev/stdout``
    renamed to ``/dev/stdout.old`` and a plain file made in its place, run as root), the events
    then leaving the file the output was sent to."""
    path = target
    for _ in range(40):  # the kernel's own limit on links in a row
        if not os.path.islink(path):
            return path
        nxt = os.path.join(os.path.dirname(path), os.readlink(path))
        if os.path.normpath(nxt).startswith("/proc/"):
            return None
        path = nxt
    return path


def _open_for_lines(p: Path) -> int:
    """The file (or pipe) to append lines to, or OSError naming jsonl.path and why. A pipe
    gets READER_WAIT_S for its reader (started alongside maskd, it may come a moment later);
    then it is an error, as a plain blocking open would hang the start for ever."""
    deadline = time.monotonic() + READER_WAIT_S
    while True:
        try:
            return _open_once(p)
        except OSError as err:
            # ENXIO is a pipe without its reader, or a socket (cannot_create says which)
            pipe = err.errno == errno.ENXIO and cannot_create(p, False) is None
            if pipe and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            why = ("a pipe nobody reads (start its reader first)" if pipe
                   else create_failure(p, False, err))
            raise OSError(cannot_write_lines(p, why)) from None


def _ends_in_a_cut_line(fd: int) -> bool:
    """Whether the regular file open as ``fd`` ends in a line without its newline, where the
    next write goes at its end: a power cut can leave the last line cut part-way (the card got
    the page with its first half only), and the next line was written on at its end, an event
    a reader lost. False for anything else, and for a file this user cannot read."""
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            return False
        if not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND and (
                os.lseek(fd, 0, os.SEEK_CUR) != st.st_size):
            return False  # written at its start (systemd's file:): a newline would overwrite
        with open_regular(Path(f"/proc/self/fd/{fd}")) as f:  # this file, whatever its name now
            f.seek(st.st_size - 1)
            return f.read(1) not in (b"", b"\n")
    except OSError:
        return False


def _said_cut(name: str) -> None:
    log.warning("jsonl %s: its last line was cut off (a power cut while it was written?); it "
                "is ended here, so the next event is a line of its own", name)


def _own_stdout_pipe() -> int | None:
    """Standard output opened anew when it is a pipe (``maskd run --jsonl - | consumer``), as
    a description of this process's own, so it can be written without blocking (its flag is not
    the shell's or the consumer's); None for anything else (a file, a terminal, the journal's
    socket) or when it cannot be had (no /proc, the reader gone already: stdout says why)."""
    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return None
        sys.stdout.flush()
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (OSError, ValueError, AttributeError):  # a stdout with no descriptor (a StringIO:
        return None  # io.UnsupportedOperation; an object with write alone): written as before


class JsonlSink(EventSink):
    """Events as JSON lines on stdout (``-``) or appended to a file, one write per line.

    A consumer tailing the file or reading the pipe sees each event as soon as it happens;
    nothing waits in a buffer when the process is killed. A line the file cannot take (a full
    disk) waits in memory, in order, and is written with the next event, at the next stats
    interval or at the end; at most MEMORY_MAX lines wait, the oldest beyond are dropped.
    Every line not written is logged and counted in ``failed``. Thread-safe.

    A regular file follows a rotation: before writing, the path is looked at again, and when it
    names another file or none (moved or deleted by logrotate) a new file is opened there, so no
    line goes on to the old one or to a deleted inode. A pipe or ``-`` is never reopened.

    With ``max_mb``, a regular file that a line would take past it is renamed to ``PATH.old``
    (replacing the one before) and a new file begun: at most twice ``max_mb`` on the disk,
    whatever the months, without logrotate (a line bigger than the cap still goes whole).
    """

    label = "JSON lines"

    def __init__(self, target: str, max_mb: float | None = None) -> None:
        self.target = target
        self.max_bytes = None if max_mb is None else int(max_mb * MB)
        self.failed = 0  # lines never written: stdout refused them, or dropped while waiting
        self._fd: int | None = None  # None: stdout
        self._waiting: deque[bytes] = deque()
        self._error: tuple[str, float] | None = None  # why lines wait, since when
        self._throttle = Throttle()
        self._lock = threading.Lock()
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) of a regular file
        # A named pipe is written without blocking: a reader that keeps it open and reads
        # nothing (a consumer that hung) filled it, and the next write held the camera's loop
        # for good (no detection, no MQTT alarm, a SIGTERM that never ended the process). Its
        # lines wait as on a full disk; the head of ``_waiting`` may be a line's rest.
        self._pipe = False
        self._partial = False  # the head of ``_waiting`` is the rest of a line begun already
        self._full = False  # the last write found the pipe full (not broken): worth waiting for
        if target == "-" and sys.stdout is None:  # started with it closed (>&-): Python's None
            raise OSError(cannot_write_lines("-", "standard output is closed"))
        if target == "-":
            self._fd = _own_stdout_pipe()
            self._pipe = self._fd is not None
            if self._fd is None:  # a file (`>> events.jsonl`, systemd's append:), a terminal
                self._end_stdouts_cut_line()
        else:
            self._fd = _open_for_lines(Path(target))
            st = os.fstat(self._fd)
            if stat.S_ISREG(st.st_mode):
                self._file = (st.st_dev, st.st_ino)
                if _ends_in_a_cut_line(self._fd):
                    with contextlib.suppress(OSError):
                        append_line(self._fd, b"\n")
                        _said_cut(self.target)
            elif stat.S_ISFIFO(st.st_mode):  # this open's own description: no one else's
                os.set_blocking(self._fd, False)
                self._pipe = True

    def _end_stdouts_cut_line(self) -> None:
        """``_ends_in_a_cut_line`` for standard output sent to a file (``-``)."""
        try:
            sys.stdout.flush()
            fd = sys.stdout.fileno()
            if _ends_in_a_cut_line(fd):
                sys.stdout.write("\n")
                sys.stdout.flush()
                _said_cut(f"- ({os.readlink(f'/proc/self/fd/{fd}')})")
        except (OSError, ValueError, AttributeError):  # as _own_stdout_pipe: written as before
            return

    def emit(self, event: ViolationEvent) -> None:
        line = json.dumps(event_fields(event)) + "\n"
        with self._lock:
            if self._fd is None:
                self._to_stdout(line)
                return
            self._waiting.append(line.encode())
            if len(self._waiting) > MEMORY_MAX:
                # the rest of a line begun in a pipe goes first: the reader gets whole lines
                del self._waiting[1 if self._partial else 0]
                self.failed += 1
            self._drain()

    def _to_stdout(self, line: str) -> None:
        """Write ``line`` to stdout (under the lock). A pipe whose reader is gone refuses every
        line for good: said at once and then once a minute with the count lost, the loop kept
        up (was: an ERROR line per event, for as long as maskd ran)."""
        try:
            sys.stdout.write(line)
            sys.stdout.flush()
        except (OSError, ValueError) as err:  # ValueError: stdout closed
            self.failed += 1
            if self._error is None:
                self._throttle.reset()
                why = getattr(err, "strerror", None) or str(err)
                if isinstance(err, BrokenPipeError):
                    why += " (whatever read maskd's standard output has stopped)"
                self._error = (why, time.time())
            if self._throttle.due():
                log.error("jsonl %s: cannot write to standard output: %s; %d event line(s) "
                          "lost so far (said once a minute)", self.target, self._error[0],
                          self.failed)
            return
        self._writing_again(lost=True)

    def _follow_rotation(self) -> None:
        """Open the path again when it no longer names the open file (under the lock): one
        stat per write; OSError when the new file cannot be opened (the lines then wait)."""
        if self._file is None or self._fd is None:
            return
        try:
            st = os.stat(self.target)
            now: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            now = None
        if now == self._file:
            return
        self._reopen()
        log.info("jsonl %s: %s (rotated?); writing to %s now", self.target,
                 "the file was moved or deleted" if now is None else "the path names another file",
                 "a new file" if now is None else "that file")

    def _reopen(self) -> None:
        """Open the path anew in place of the open file (under the lock); OSError when it
        cannot be opened, the old one then staying open (lines wait until it can)."""
        assert self._fd is not None
        fd = _open_once(Path(self.target))
        os.close(self._fd)
        st = os.fstat(fd)
        self._fd, self._file = fd, (st.st_dev, st.st_ino)

    def _roll_over(self, size: int) -> None:
        """Begin a new file when ``size`` more bytes would take this one past ``max_bytes``
        (under the lock, after ``_follow_rotation``). A rename that fails is a WARNING a
        minute and the line goes on to the same file: a file over its cap loses nothing.

        Another process appending to the same file (a maskd per camera) may reach the cap at
        the same moment: the move is made holding the file's flock, and only while the path
        still names it, or the second move would put the first one's new file over
        ``PATH.old``, deleting the older half. The one that finds it locked or moved writes its
        line where it is and follows the move with the next."""
        if self._file is None or self._fd is None or self.max_bytes is None:
            return
        have = os.fstat(self._fd).st_size
        if have == 0 or have + size <= self.max_bytes:
            return
        locked = True
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # another process is moving it now
        except OSError:  # a file system without locks (NFS without its lock service)
            locked = False
        try:
            path = _linked_file(self.target)
            if path is None:  # an open descriptor's (/dev/stdout): whoever opened it caps it
                return
            try:
                st = os.stat(path)
            except OSError:  # gone meanwhile (followed at the next line), or cannot be looked at
                return
            if (st.st_dev, st.st_ino) != self._file:
                return  # moved meanwhile
            old = path + OLD_SUFFIX
            try:
                os.replace(path, old)
            except OSError as err:
                if self._throttle.due("roll"):
                    log.warning("jsonl %s: cannot rename it to %s at max_mb (%s); it grows on",
                                self.target, old, err.strerror or err)
                return
        finally:
            if locked:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        log.info("jsonl %s: reached max_mb (%.0f KiB), moved to %s; writing to a new file now",
                 self.target, have / 1024, old)
        self._reopen()  # OSError: the lines wait, and the next try follows the move as above

    def _drain(self) -> bool:
        """Append what waits, in order (under the lock); False when a line cannot be written."""
        if self._fd is None:  # stdout: nothing waits, and its fault is _to_stdout's to clear
            return self._error is None
        while self._waiting:
            try:
                if self._pipe:
                    self._to_pipe()
                    continue
                self._follow_rotation()
                self._roll_over(len(self._waiting[0]))
                append_line(self._fd, self._waiting[0])
            except OSError as err:
                self._full = isinstance(err, BlockingIOError)
                if isinstance(err, BrokenPipeError) and self.target == "-":
                    self._reader_gone()  # a named pipe's next reader would take what waits
                    return False
                if self._error is None:
                    self._throttle.reset()  # a new fault: said at once
                if self._throttle.due():  # and why, looked at again once a minute
                    why = (PIPE_FULL if self._full and self._pipe
                           else failed_write(err, Path(self.target).parent))
                    self._error = (why, time.time() if self._error is None else self._error[1])
                    log.error("jsonl %s: cannot write: %s; %d event line(s) wait in memory (at "
                              "most %d, then the oldest are dropped; %d dropped so far)",
                              self.target, why, len(self._waiting), MEMORY_MAX, self.failed)
                return False
            self._waiting.popleft()
        self._writing_again()
        return True

    def _reader_gone(self) -> None:
        """Standard output's pipe has lost its reader, for good (no one can open it again): its
        own description is closed and the lines go the way of any stdout, refused and counted
        lost there (under the lock)."""
        assert self._fd is not None
        os.close(self._fd)
        self._fd, self._pipe = None, False
        if self._partial:  # a line begun: its rest cannot be read by anyone now
            self._waiting.popleft()
            self._partial = False
            self.failed += 1
        if self._error is not None and self._error[0] == PIPE_FULL:
            self._error = None  # the fault is another one now, said afresh
        while self._waiting:
            self._to_stdout(self._waiting.popleft().decode())

    def _to_pipe(self) -> None:
        """Write the head of ``_waiting`` to the pipe, as much as it takes now (under the lock):
        taken whole, it leaves the queue; in part, its rest stays at the head for the next try;
        not at all, BlockingIOError (the pipe is full: its reader is not reading)."""
        assert self._fd is not None
        head = self._waiting[0]
        n = os.write(self._fd, head)
        if n < len(head):
            self._waiting[0], self._partial = head[n:], True
            raise BlockingIOError(errno.EAGAIN, PIPE_FULL)
        self._waiting.popleft()
        self._partial = False

    def _writing_again(self, lost: bool = False) -> None:
        """The fault is over (under the lock): said once, with since when and why (and, for
        stdout, which keeps nothing, how many lines were lost)."""
        if self._error is not None:
            log.warning("jsonl %s: writing again (it failed since %s: %s%s)", self.target,
                        local_iso(self._error[1]),
                        self._error[0], f"; {self.failed} event line(s) lost" if lost else "")
            self._error = None

    def on_stats(self, stats: LoopStats) -> None:
        """Retry waiting lines even when no new event comes."""
        with self._lock:
            if self._waiting:
                self._drain()

    def faults(self) -> list[str]:
        with self._lock:
            if self._error is None:
                return []
            if self.target == "-" and not self._pipe:  # stdout keeps nothing: lines are lost
                return [f"jsonl -: {self._error[0]}, {self.failed} event line(s) lost"]
            return [f"jsonl {self.target}: {self._error[0]}, {len(self._waiting)} event line(s) "
                    "waiting"]

    def flush(self, timeout: float, cancel: threading.Event | None = None) -> bool:
        """Lines are written as they come; True when every accepted one was written. A pipe's
        reader gets up to ``timeout`` to take what waits (a slow consumer at the stop); a full
        disk is not waited for."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                if self._drain():
                    return self.failed == 0
                fd = self._fd if self._pipe and self._full else None  # a reader gone: no wait
            left = deadline - time.monotonic()
            if fd is None or left <= 0 or (cancel is not None and cancel.is_set()):
                return False
            with contextlib.suppress(OSError, ValueError):  # closed meanwhile: drain says
                select.select([], [fd], [], min(left, 0.1))  # woken as soon as it has room

    def close(self) -> None:
        with self._lock:
            if self._fd is None:
                return
            if not self._drain():
                self.failed += len(self._waiting)
                log.error("jsonl %s: %d event line(s) could not be written (%s) and are lost",
                          self.target, len(self._waiting), self._error[0] if self._error else "?")
                self._waiting.clear()
            os.close(self._fd)
            self._fd = None
