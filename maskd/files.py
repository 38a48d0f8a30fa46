"""Files a command reads or writes: never hang on a named pipe, never leave half a file.

A named pipe (FIFO) with an image's or a config's name blocks ``open()`` until something writes
to it, forever; a device such as /dev/zero never ends. ``open_regular`` opens without blocking
and refuses anything but a regular file; ``read_limited`` also takes a pipe that has a writer,
so ``maskd check-config <(...)`` keeps working. ``write_atomically`` writes under a hidden
temporary name and renames, so a full disk leaves the old file or none, never a cut one
(``write_together`` does it for a set of files), and a power cut the old file or the new;
``append_line`` adds a line whole (its room taken first) or cuts it back (the JSON lines sink,
scan's and classify's output). ``cannot_create`` says why a folder or file `run` would make
could not be made, without making it (check-config).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from maskd.lograte import Throttle

log = logging.getLogger(__name__)

# Pictures of people (snapshots, the annotated clip) and their folders: the maskd user, its
# group and root, whatever the umask of whoever started maskd (the unit's is 0027, a shell's 022).
PRIVATE_FILE = 0o640
PRIVATE_DIR = 0o750


class NotRegularFile(OSError):
    """A path that is not a regular file (a named pipe, a device, a socket, a directory)."""


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _open_nonblocking(path: Path) -> tuple[int, os.stat_result]:
    """Open for reading without waiting for a pipe's writer; fstat, so no race with a stat first."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return fd, os.fstat(fd)
    except OSError:
        os.close(fd)
        raise


def _refuse(path: Path, mode: int) -> NotRegularFile:
    kind = _kind(mode)
    what = kind if kind.startswith("not") else f"{kind}, not a regular file"
    return NotRegularFile(errno.EINVAL, what, str(path))


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading (binary, blocking); NotRegularFile when it is not a regular
    file."""
    fd, st = _open_nonblocking(path)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _refuse(path, st.st_mode)
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_limited(path: Path, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file or of a pipe that has a writer (``<(...)``);
    NotRegularFile for a pipe nobody writes to, a device, a socket or a directory."""
    fd, st = _open_nonblocking(path)
    with os.fdopen(fd, "rb", buffering=0) as f:
        if stat.S_ISFIFO(st.st_mode):
            try:
                first = os.read(fd, limit)
            except BlockingIOError:  # a writer, nothing written yet: wait for it
                first = None
            else:
                if not first:  # end of file at once: no writer (or one that wrote nothing)
                    raise NotRegularFile(errno.EINVAL, "a named pipe with nothing to read (no "
                                                       "writer)", str(path))
            os.set_blocking(fd, True)
            return _read_rest(f, first or b"", limit)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, st.st_mode)
        os.set_blocking(fd, True)
        return _read_rest(f, b"", limit)


def _read_rest(f: BinaryIO, got: bytes, limit: int) -> bytes:
    parts = [got]
    n = len(got)
    while n < limit and (block := f.read(limit - n)):
        parts.append(block)
        n += len(block)
    return b"".join(parts)


READ_AGAIN_S = 0.1  # a read that failed is tried once more after this


def read_again_once(path: Path) -> bytes:
    """``path``'s bytes, a read that fails (a card's one-off I/O error) tried once more: a state
    file a start could not read left a killed run's violation to be ended late, or twice."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError:
        time.sleep(READ_AGAIN_S)
        return path.read_bytes()


def append_line(fd: int, data: bytes) -> None:
    """Append ``data`` whole or not at all. Its room is taken first (``reserve``), so a full
    disk refuses the line before a byte is written: a reader tailing the file (`tail -F`, a
    log shipper) saw the part that fit, then the cut back as a truncated file, and read it all
    again. Where the file system cannot reserve, a write that fails part-way is cut back, so
    the file never holds half a line. A pipe or a terminal (``/dev/stdout``) cannot be cut back;
    there a line is written as far as it goes. A regular file's EAGAIN (a network or FUSE file
    system's) passes: tried again a few times, not taken for a full pipe."""
    try:
        start: int | None = os.lseek(fd, 0, os.SEEK_END)
    except OSError:  # ESPIPE: not a regular file
        start = None
    if start is not None:
        reserve(fd, start, len(data))
    view = memoryview(data)
    again = AGAIN_TRIES if start is not None else 0
    try:
        while view:
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                if again <= 0:
                    raise
                again -= 1
                time.sleep(AGAIN_WAIT_S)
    except OSError:
        if start is not None:
            try:
                os.ftruncate(fd, start)
            except OSError:
                pass
        raise


AGAIN_TRIES = 5  # a regular file's passing EAGAIN: writes tried again (a pipe's is its reader's)
AGAIN_WAIT_S = 0.01

_FALLOC_FL_KEEP_SIZE = 1  # linux/falloc.h: blocks taken, the file's size left as it is


def _fallocate() -> Callable[[int, int, int, int], int] | None:
    """glibc's fallocate64 (off_t is 64 bits whatever the platform), or None."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.fallocate64
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    fn.restype = ctypes.c_int

    def call(fd: int, mode: int, offset: int, length: int) -> int:
        return 0 if fn(fd, mode, offset, length) == 0 else ctypes.get_errno()

    return call


_FALLOCATE = _fallocate()


def reserve(fd: int, offset: int, length: int) -> None:
    """Take the disk blocks for ``length`` bytes at ``offset`` of a regular file without
    changing its size (readers see nothing); OSError (ENOSPC) when there is no room. A file
    system that cannot do it (or a C library without fallocate) is left to the write."""
    if _FALLOCATE is None or length <= 0:
        return
    err = _FALLOCATE(fd, _FALLOC_FL_KEEP_SIZE, offset, length)
    if err in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS):
        raise OSError(err, os.strerror(err))


def write_atomically(path: Path, data: bytes, sync: bool = True) -> None:
    """Write ``path`` whole: a hidden temporary file in its folder, renamed over it. On an error
    (a full disk, a folder in the way) the temporary file is removed and OSError raised.
    ``sync``: see ``write_together``."""
    write_together({path: data}, sync)


def write_together(files: dict[Path, bytes], sync: bool = True) -> None:
    """``write_atomically`` for files that belong together (a model and its sidecar): every one
    is written in full under a hidden temporary name first, and only then are they renamed into
    place, so a full disk leaves all the old files (temporaries removed) and never a new model
    beside an old sidecar. Each is on the card before it replaces the old one, and the folder
    after: a power cut left open_violations.json empty (its data never written before the
    rename) or the version before (the rename never written), and a killed run's violation
    was never ended. Not with ``sync`` False, for a file made again by running the command
    again (scan's annotated copies): two syncs, about 40 ms of an SD card's, each."""
    tmps: dict[Path, Path] = {}
    try:
        for path, data in files.items():
            tmps[path], fd = _new_temporary(path.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                if sync:
                    f.flush()
                    os.fsync(f.fileno())
        for path, tmp in tmps.items():
            os.replace(tmp, path)
        for folder in {path.parent for path in tmps} if sync else ():
            _sync_folder(folder)
    except BaseException:
        for tmp in tmps.values():
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
        raise


def _sync_folder(folder: Path) -> None:
    """The folder's entries (a rename) on the card; a file system that cannot sync a folder
    (EINVAL: some FUSE and network ones), or a folder this user may write but not read, has
    nothing more to do: the rename is made, and a failure here would say it was not."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except PermissionError:
        return
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _new_temporary(folder: Path) -> tuple[Path, int]:
    """A new hidden file in ``folder`` and its descriptor. The name is short and fixed in
    length, so that a file whose own name is near the 255-byte limit can still be written
    (``.{name}.{pid}.tmp`` was too long); created like open() would, the umask deciding its
    mode (mkstemp's 0600 would lock others out of a model or an annotation)."""
    while True:
        tmp = folder / f".maskd-{secrets.token_hex(6)}.tmp"
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue


def _error(code: int, why: str | None = None) -> OSError:
    return OSError(code, why or os.strerror(code))


def _unwritable_fs(folder: Path) -> OSError | None:
    """A read-only mount, or a virtual one (/proc, /sys: no blocks) where nothing is created."""
    try:
        fs = os.statvfs(folder)
    except OSError as err:
        return err
    if fs.f_flag & os.ST_RDONLY:
        return _error(errno.EROFS)
    if fs.f_blocks == 0:
        return _error(errno.ENOENT, "a virtual file system: nothing can be created there")
    return None


# What the kernel's read-only remount means, said wherever a write fails because of it.
READ_ONLY_NOW = ("its file system is read-only now (the kernel remounts it so after a storage "
                 "error: a failing SD card? `dmesg` says why; it lasts until a reboot)")


def read_only_now(folder: Path) -> bool:
    """The file system holding ``folder`` refuses writes as read-only: on a Pi most often the
    kernel's remount after a storage error, which SQLite reports as a bare 'disk I/O error'.
    Tried by creating a file: ext4's emergency remount (kernel 6.x) leaves the mount flags rw,
    so statvfs alone does not see it. For failure paths only."""
    # one name per thread: the outbox's, the clip's and the snapshots' threads may probe one
    # folder at once, and another's unlink would read as writable
    probe = folder / f".maskd-write-probe-{os.getpid()}-{threading.get_native_id()}"
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return True
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
        probe.unlink()
    except OSError as err:
        return err.errno == errno.EROFS
    return False


def failed_write(err: Exception, folder: Path) -> str:
    """Why a write in ``folder`` failed, in the OS's words, and what a read-only remount means
    when that is the cause: said where the write fails (JSON lines, snapshots, the open
    violations, the session file, the outbox), not only by CardWatch's look a minute later.
    Failure paths only: it probes with a file (``read_only_now``). SQLite's errors carry no
    errno: their words stay."""
    words = getattr(err, "strerror", None) or str(err)
    if getattr(err, "errno", None) in (errno.EEXIST, errno.ENOENT) and (
            link := dangling_link(folder)) is not None:
        return link  # mkdir's 'File exists' named neither the link nor where it points
    try:
        there = existing_place(folder)  # a folder not made yet: the one it would be made in
    except OSError:  # a name too long to look up, say: the OS's words alone
        there = None
    if there is None or not read_only_now(there):
        return words
    return READ_ONLY_NOW if getattr(err, "errno", None) == errno.EROFS else f"{words}: {READ_ONLY_NOW}"


SYS = Path("/sys")  # the kernel's view of block devices and their ext4 file systems


def ext4_dir(folder: Path) -> Path:
    """The kernel's folder of facts about the file system holding ``folder``, named after its
    block device (``/sys/fs/ext4/mmcblk0p2``); it exists only for an ext4 one."""
    st = os.stat(folder)
    dev = SYS / "dev" / "block" / f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    return SYS / "fs" / "ext4" / Path(os.path.realpath(dev)).name


def recorded_errors(fs: Path) -> str | None:
    """What the ext4 file system whose folder in /sys is ``fs`` (``ext4_dir``) has recorded of
    its own errors (the superblock's count, kept until an fsck repairs them), or None when none
    or not ext4. A card that starts failing records them before the kernel remounts it
    read-only."""
    from maskd.clock import local_iso

    try:
        count = int((fs / "errors_count").read_text())
        if count <= 0:
            return None
        first, last = (int((fs / f"{w}_error_time").read_text()) for w in ("first", "last"))
        where = (fs / "last_error_func").read_text().strip()
    except (OSError, ValueError):
        return None
    when = (f"at {local_iso(last)}" if count == 1 or first == last else
            f"from {local_iso(first)} to {local_iso(last)}")
    return (f"its file system (ext4 on {fs.name}) has recorded {count} error(s) {when} (the last "
            f"in {where}): a failing SD card? `dmesg` says more; back up /etc/maskd and replace "
            "the card soon (the kernel makes it read-only at such an error, if not already)")


def existing_place(path: Path) -> Path | None:
    """``path`` or its nearest folder that exists: where a file not made yet will be."""
    return next((p for p in (path, *path.parents) if p.exists()), None)


# File systems that keep no owners (a stick as it comes from the shop or a Windows PC): the
# mount's uid=, gid= and umask= give every file its owner and mode, and chown fails (kernel FAT
# and exFAT: EPERM) or does nothing (ntfs-3g). fuseblk: ntfs-3g and exfat-fuse; but ntfs-3g with
# -o permissions keeps them (``owners_kept``).
OWNERLESS = frozenset({"vfat", "msdos", "exfat", "ntfs", "ntfs3", "fuseblk"})
MOUNTINFO = Path("/proc/self/mountinfo")
FSTAB = Path("/etc/fstab")


# FAT (FAT12, FAT16 and FAT32 alike: vfat names a FAT16 card too) keeps a file's size in 32
# bits: a file stops growing at 4 GiB (EFBIG)
FAT = frozenset({"vfat", "msdos"})


def _mount(path: Path) -> tuple[str, list[str], str] | None:
    """The type, the super options and the mount point (octal-escaped, as fstab writes it too)
    of the file system holding ``path`` (or the folder it would be made in), as
    /proc/self/mountinfo says them; None where that cannot be told."""
    try:
        st = os.stat(existing_place(Path(path)) or path)
        lines = MOUNTINFO.read_text().splitlines()
    except OSError:
        return None
    dev = f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    for line in lines:  # 'ID PARENT MAJ:MIN ROOT POINT OPTIONS [TAGS] - TYPE SOURCE SUPER'
        fields, _, after = line.partition(" - ")
        if fields.split()[2:3] == [dev] and after:
            words = after.split()
            return words[0], (words[2].split(",") if len(words) > 2 else []), fields.split()[4]
    return None


def fs_type(path: Path) -> str | None:
    """The type of the file system holding ``path`` (or the folder it would be made in), as
    /proc/self/mountinfo says it; None where that cannot be told."""
    return mount[0] if (mount := _mount(path)) else None


def owners_kept(options: list[str], point: str) -> bool:
    """Whether a fuseblk mount keeps owners and modes: ntfs-3g with -o permissions, where
    chown and chmod work as on ext4. Its mount says only default_permissions, as with umask=
    (and exfat-fuse), where they do not: its fstab line (docs/config.md, a USB stick) tells."""
    if "default_permissions" not in options:
        return False
    try:
        lines = FSTAB.read_text(errors="replace").splitlines()
    except OSError:
        return False
    # 'SOURCE POINT TYPE OPTIONS ...'; POINT where mount takes it (a / at its end, a link
    # followed, a space written \040), looked at on a line with permissions only
    return any(len(words) > 3 and not words[0].startswith("#") and "permissions" in
               words[3].split(",") and links_followed(unescaped(words[1])) == unescaped(point)
               for words in map(str.split, lines))


def unescaped(point: str) -> str:
    """A mount point as fstab and mountinfo write it, its space, tab, newline or backslash an
    octal escape (\\040), as the path it is: a link is found and followed by that path alone."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), point)


def links_followed(path: str) -> str:
    """``path`` (absolute) with its links followed by readlink alone, part by part: realpath's
    lstat of a mount point asks the file system there, and another stick's ntfs-3g that did not
    answer held check-config, doctor and run at their start. A part that is no link, or not
    there, stays as written; a path not absolute (fstab's none of a swap line) too."""
    if not path.startswith("/"):
        return path
    done, todo, hops = "/", [p for p in reversed(path.split("/")) if p], 0
    while todo:
        part = todo.pop()
        if part in (".", ".."):
            done = done if part == "." else os.path.dirname(done)
            continue
        here = os.path.join(done, part)
        try:
            target = os.readlink(here)
        except OSError:  # EINVAL: no link (a mount point's root too, without asking it)
            done = here
            continue
        hops += 1
        if hops > 40:  # a loop of links: ELOOP to the kernel, the line names no mount
            return path
        done = "/" if target.startswith("/") else done
        todo.extend(p for p in reversed(target.split("/")) if p)
    return done


def files_mode(folder: Path) -> int | None:
    """The mode an ownerless file system (``OWNERLESS``) gives the files made in ``folder`` (or
    the folder it would be made in), whatever mode they are made with: 0777 less the mount's
    fmask= where the kernel says it (FAT, exFAT, NTFS3), else a file's already there (a FUSE
    mount says none of its options); None where neither tells."""
    for option in (mount[1] if (mount := _mount(folder)) else []):
        if option.startswith("fmask="):
            with contextlib.suppress(ValueError):
                return 0o777 & ~int(option.removeprefix("fmask="), 8)
    try:
        with os.scandir(existing_place(folder) or folder) as entries:
            return next((e.stat().st_mode & 0o777 for e in entries
                         if e.is_file(follow_symlinks=False)), None)
    except OSError:
        return None


def ownerless_fs(path: Path) -> str | None:
    """The type of the file system holding ``path`` (or the folder it would be made in) where
    it keeps no owners (``OWNERLESS``; not ntfs-3g's ``owners_kept``), else None."""
    if not (mount := _mount(path)) or mount[0] not in OWNERLESS:
        return None
    return None if mount[0] == "fuseblk" and owners_kept(mount[1], mount[2]) else mount[0]


class CardWatch:
    """The errors recorded by the file systems a run writes to (state_dir, JSON lines,
    snapshots: ``Config.written``), looked at once a minute from the loop's health report, one
    line per file system with errors, and one WARNING when a line changes. A card failing under
    a run without MQTT (no outbox) was said by doctor only; reading /sys writes nothing."""

    def __init__(self, places: list[tuple[str, Path, bool]], every_s: float = 60.0) -> None:
        self._places = places  # Config.written's (key, path, is_dir): the first key names a file system
        self._due = Throttle(every_s)
        self._lock = threading.Lock()  # the cameras' loops share one
        self._lines: list[str] = []

    def faults(self) -> list[str]:
        with self._lock:
            if self._due.due():
                lines = self.look()
                for line in lines:
                    if line not in self._lines:
                        log.warning("%s", line)
                self._lines = lines
            return list(self._lines)

    def look(self) -> list[str]:
        """Now, unthrottled and unlogged (doctor's look)."""
        by_fs: dict[Path, list[tuple[str, Path]]] = {}
        for key, path, _ in self._places:
            try:
                if (there := existing_place(Path(path))) is not None:
                    by_fs.setdefault(ext4_dir(there), []).append((key, path))
            except OSError:  # gone meanwhile: looked at again next minute
                continue
        lines = []
        for fs, places in by_fs.items():
            (key, path), also = places[0], [k for k, _ in places[1:]]
            if (said := recorded_errors(fs)) is not None:
                more = f" (and {', '.join(also)})" if also else ""
                lines.append(f"{key} {path}{more}: {said}")
        return lines


def depends_on_user(err: OSError) -> bool:
    """EACCES/EPERM: another user (the service's) may be let in where this one is not; any
    other errno (a full disk, a read-only file system) is the same for every user."""
    return err.errno in (errno.EACCES, errno.EPERM)


def dangling_link(path: Path) -> str | None:
    """'P is a link to T, which is not there' for ``path`` or a folder above it that is a link
    whose target is gone (a stick not mounted): mkdir says 'File exists' of it, and nothing
    is made there until the target is back."""
    for p in (path, *path.parents):
        try:
            if p.is_symlink() and not p.exists():
                return f"{p} is a link to {os.readlink(p)}, which is not there"
        except OSError:
            return None
    return None


# A socket cannot be opened as a file: `/dev/stdout` under systemd (its output is the journal's
# socket), or a log shipper's socket.
SOCKET_NOT_FILE = ("a socket, which cannot be opened as a file (standard output sent to the "
                   "journal? `-` writes to standard output)")


def cannot_create(path: Path, directory: bool) -> OSError | None:
    """Why ``path`` could not be made as `run` makes it (a folder with its parents, or a file to
    append to, with its folders), or None; found without creating anything, so check-config can
    say it. EACCES/EPERM depend on the user asking; the errno tells the caller."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
        if (link := dangling_link(path)) is not None:
            return _error(errno.ENOENT, link)
    except OSError as err:
        return err
    if st is not None:
        if directory and not stat.S_ISDIR(st.st_mode):
            return _error(errno.EEXIST)  # what mkdir(exist_ok=True) says of a file
        if not directory and stat.S_ISDIR(st.st_mode):
            return _error(errno.EISDIR)
        if not directory and stat.S_ISSOCK(st.st_mode):  # open() says only ENXIO, as for a
            return _error(errno.ENXIO, SOCKET_NOT_FILE)  # pipe without its reader
        # the file system before the permission: access() says EACCES on a read-only mount,
        # which made a read-only card a warning here and exit 78 in `run`
        if (fs := _unwritable_fs(path if directory else path.parent)) is not None:
            return fs
        if not os.access(path, os.W_OK | (os.X_OK if directory else 0)):
            return _error(errno.EACCES)
        return None
    for above in path.parents:
        try:
            st = os.stat(above)
        except FileNotFoundError:
            continue
        except OSError as err:
            return err
        if not stat.S_ISDIR(st.st_mode):
            return _error(errno.ENOTDIR)
        if (fs := _unwritable_fs(above)) is not None:
            return fs
        if not os.access(above, os.W_OK | os.X_OK):
            return _error(errno.EACCES)
        return None
    return None


def file_in_the_way(folder: Path) -> str | None:
    """'F is a file, not a folder' when a file holds the place of ``folder`` or of a folder
    above it (mkdir says only 'File exists' or 'Not a directory'), else None."""
    for place in (folder, *folder.parents):
        try:
            st = os.stat(place)
        except OSError:
            continue
        return None if stat.S_ISDIR(st.st_mode) else f"{place} is a file, not a folder"
    return None


def create_failure(path: Path, directory: bool, err: OSError) -> str:
    """Why making ``path`` failed with ``err``, in check-config's words where it finds a reason
    (``cannot_create``: 'a virtual file system ...' where the OS says only 'No such file or
    directory'), else the OS's, so `run` and check-config say one line."""
    found = cannot_create(path, directory) or err
    return found.strerror or str(found)


@contextlib.contextmanager
def captured_stderr_fd() -> Iterator[list[str]]:
    """Collect what native code (TFLite's 'Created ... XNNPACK delegate') writes to fd 2; for
    a command's own single thread only: fd 2 is the process's."""
    out: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, AttributeError, ValueError):  # no stderr (`2>&-`): nothing to keep off it
        yield out
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode(errors="replace"))
