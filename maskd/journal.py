"""stderr under systemd: the journal, whose reader filters by priority (``journalctl -p
warning``, a log shipper's ``-p err``).

journald gives every stderr line the unit's ``SyslogLevel=`` (info) unless the line starts
with ``<N>``, a syslog priority, which it reads line by line (sd-daemon(3)). So under the
journal every line gets one: each line of a traceback the priority of the error above it, not
info. systemd says the stream is the journal's by ``$JOURNAL_STREAM`` (``DEV:INODE``,
systemd.exec(5)); compared with stderr itself, so a terminal, a file or a pipe that merely
inherited the variable (a child's stderr redirected) get the plain lines.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import traceback
from types import TracebackType
from typing import TextIO

from maskd.env import Environment

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# the journal stamps each line as it comes (journalctl -o short-precise: to the microsecond)
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"


def is_journal(stream: TextIO, journal_stream: str) -> bool:
    """Whether ``stream`` is the one ``$JOURNAL_STREAM`` (``journal_stream``) names."""
    dev, _, ino = journal_stream.partition(":")
    with contextlib.suppress(AttributeError, OSError, ValueError):  # no fileno, closed, junk
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    return False


def priority(levelno: int) -> int:
    """The syslog priority of a logging level (DEBUG 7, INFO 6, WARNING 4, ERROR 3, CRITICAL 2)."""
    for level, prio in ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
                        (logging.INFO, 6)):
        if levelno >= level:
            return prio
    return 7


def prefixed(text: str, prio: int) -> str:
    """Every line of ``text`` with ``<prio>`` before it."""
    return "\n".join(f"<{prio}>{line}" for line in text.split("\n"))


class JournalFormatter(logging.Formatter):
    """The log line and its traceback, each line at the record's priority."""

    def format(self, record: logging.LogRecord) -> str:
        return prefixed(super().format(record), priority(record.levelno))


def log_to_stderr(level: int | str) -> None:
    """logging.basicConfig on stderr; where stderr is the journal, with priorities and without
    a second time stamp beside the journal's own."""
    journal = is_journal(sys.stderr, Environment.read().journal_stream)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter(JOURNAL_FORMAT) if journal else logging.Formatter(FORMAT))
    if journal:  # a bug nothing caught: its traceback as Python words it, at err
        sys.excepthook = _uncaught
        threading.excepthook = _uncaught_in_thread
    logging.basicConfig(level=level, handlers=[handler])


def error_line(text: str) -> None:
    """A line on stderr that says why the command stops, at priority err in the journal."""
    stderr_line(text, 3)


def warning_line(text: str) -> None:
    """A line on stderr that notes something and lets the command go on, at priority warning in
    the journal."""
    stderr_line(text, 4)


def stderr_line(text: str, prio: int) -> None:
    """A plain line on stderr (not a log record), at priority ``prio`` in the journal (where a
    line without one is journald's info). A stderr that refuses it (a full disk, the journal's
    stream gone) changes not the exit status (as argparse's own error), and with none (2>&-) it
    goes nowhere, not to stdout's events."""
    if sys.stderr is None:
        return
    journal = is_journal(sys.stderr, Environment.read().journal_stream)
    with contextlib.suppress(OSError):
        print(prefixed(text, prio) if journal else text, file=sys.stderr)


def _uncaught(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
    print(prefixed("".join(traceback.format_exception(kind, err, tb)).rstrip("\n"), 3),
          file=sys.stderr)


def _uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:  # as Python's own hook
        return
    name = args.thread.name if args.thread is not None else threading.get_ident()
    print(f"<3>Exception in thread {name}:", file=sys.stderr)
    _uncaught(args.exc_type, args.exc_value, args.exc_traceback)
