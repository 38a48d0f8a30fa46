"""One module per `maskd` sub-command; each exposes ``main(args) -> int``."""

import os
import sys
from collections.abc import Sequence
from typing import TextIO

from maskd.files import append_line
from maskd.journal import error_line

# sysexits.h EX_IOERR: standard output could not be written (a full disk, /dev/full); scan and
# classify stop at once (cli.main says so on stderr). 1 keeps meaning "nothing was read".
EX_IOERR = 74


def coral_lost_exit(command: str, err: Exception, done: int, last: str | None,
                    keys: Sequence[str], option: bool) -> int:
    """`scan` or `classify` (``command``) stopped by the Coral lost part-way (``err``, a
    maskd.tflite.CoralLost, in `run`'s words): one line on stderr saying how far the output
    goes (``done`` judged, every line up to the image ``last``) and what to do: the same command
    once the Coral answers (it cannot skip what was done), or the CPU in the words of what asked
    for the Coral; then 75 (EX_TEMPFAIL), as `run` exits on it. Imports inside: `maskd models
    fetch` runs this package without numpy."""
    from maskd.images import one_field
    from maskd.service import EX_TEMPFAIL
    from maskd.tflite import cpu_instead

    verb = "scanned" if command == "scan" else "classified"
    upto = (f"the output holds every image up to {one_field(last)} ({done} {verb}), none after "
            "it" if last is not None else f"nothing was {verb}")
    error_line(f"maskd {command}: {err}; {upto}: run {command} again once the Coral answers (it "
               f"starts over), or {cpu_instead(keys, option)}")
    return EX_TEMPFAIL


class OutputError(Exception):
    """Standard output cannot be written; the message names it and the reason."""


def names_as_bytes_on_stdout() -> None:
    """A file name that is not UTF-8 (a Latin-1 'café.jpg' from a camera's SD card) is printed
    as its own bytes, never a UnicodeEncodeError that ends the command (stdout is strict under
    a UTF-8 locale such as en_GB.UTF-8). Called before the first record: a closed stdout is
    OutputError here, not every result lost with exit 0."""
    _stdout()
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="surrogateescape")


def _stdout() -> TextIO:
    """sys.stdout, or OutputError when the command was started with it closed (``>&-``): Python
    then sets it to None and print() drops every line without a word."""
    if sys.stdout is None:
        raise OutputError("standard output is closed")
    return sys.stdout


def print_line(line: str) -> None:
    """One output record, written whole: on a full disk a redirected file is cut back to the
    last whole line and OutputError raised, never a traceback and half a JSON line."""
    out = _stdout()
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (a test's capture)
        print(line, flush=True)
        return
    try:
        out.flush()
        append_line(fd, _encoded(line + "\n", out))
    except BrokenPipeError:
        raise  # `| head` closed it: cli.main ends quietly
    except OSError as err:
        where = _name_of(fd)
        # What print() still buffers would fail again at exit, with a traceback and exit 120.
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, fd)
        os.close(null)
        raise OutputError(f"cannot write to standard output{where}: "
                          f"{err.strerror or err}") from None


def _encoded(text: str, out: TextIO) -> bytes:
    """``text`` in stdout's charset; a character it cannot hold (a photo named 人.jpg under a
    Latin-1 locale) as a backslash escape, never a UnicodeEncodeError ending the command."""
    try:
        return text.encode(out.encoding, out.errors or "strict")
    except UnicodeEncodeError:
        return text.encode(out.encoding, "backslashreplace")


def _name_of(fd: int) -> str:
    """' (the/file)' that ``fd`` writes to, when the system says (Linux's /proc)."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""
    return f" ({target})" if target.startswith("/") else ""
