"""Model files that cannot come from git: where maskd looks for them, and ``maskd models fetch``.

YuNet's ``.onnx`` may not be committed, so it is downloaded once and checked against a pinned
sha256. The saved file's name follows its content, never the URL: the pinned sha256 is saved as
``YUNET_NAME``, another known one under its own version's name, any other as
``face_detection_yunet_sha256-<first 16 hex>.onnx``. A ``--yunet-url`` of another version is
refused unless its own sha256 is given too, and is then never saved under the pinned name.

Standard library only: ``deploy/install.sh`` runs it with the system Python (``python3 -m
maskd models fetch``) before or without the venv.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import socket
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maskd.files import file_in_the_way  # the standard library alone, as here

# The YuNet the tests use (a copy lives in ../shared/models). Its sha256 was computed here from
# that file (229,738 bytes). The URL is where opencv_zoo keeps its YuNet versions on GitHub, with
# this version's name; it could not be opened from the development machines (no GitHub access),
# so it is an assumption: whatever it serves is only kept if it has this sha256.
YUNET_NAME = "face_detection_yunet_2026may.onnx"
YUNET_SHA256 = "ebafce4e3c118d6554634be5c27ab333b4c047a9a8c3faf1d7cf93101c22f0f0"
YUNET_URL = ("https://github.com/opencv/opencv_zoo/raw/main/models/face_detection_yunet/"
             + YUNET_NAME)
# Versions known by content. 2023mar: the Git LFS object id upstream records for
# face_detection_yunet_2023mar.onnx (232,589 bytes); LFS ids are the sha256 of the content.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
KNOWN_YUNET = {
    YUNET_SHA256: YUNET_NAME,
    "8f2383e4dd3cfbb4553ea8718107fc0423210dc964f9f4280604804ed2552fa4":
        "face_detection_yunet_2023mar.onnx",
}
YUNET_GLOB = "face_detection_yunet*.onnx"

CHECKOUT = Path(__file__).resolve().parents[1]
REPO_MODELS = CHECKOUT / "models"  # a checkout's models/ (git-ignored .onnx files)
SYSTEM_MODELS = Path("/usr/share/maskd/models")  # deploy/install.sh

SHA256_RE = re.compile(r"[0-9a-f]{64}")  # fullmatch: "$" would let a trailing newline in
CHUNK = 1 << 16
# YuNet is ~230 KB: a server streaming more than this (zeros, for ever) is not sending it.
MAX_BYTES = 64 << 20
# The whole download may take this many --timeout's (10 min at the default 60 s): --timeout
# alone bounds each wait, so a server sending a byte a second would never end.
DEADLINE_TIMEOUTS = 10


class FetchError(Exception):
    """A download that did not end in a checked file; ``kind`` is network, server (it answered
    with an HTTP error), checksum or write."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class Fetched:
    path: Path
    changed: bool  # False: the right file was there already


def in_checkout() -> bool:
    """Whether maskd runs from a source checkout (editable install), not from a wheel."""
    return (CHECKOUT / "pyproject.toml").is_file() and REPO_MODELS.is_dir()


def default_dest() -> Path:
    """Where ``maskd models fetch`` saves by default: the checkout's models/, else the system
    folder the installer uses; both are searched by the YuNet lookup."""
    return REPO_MODELS if in_checkout() else SYSTEM_MODELS


def yunet_name(sha256: str) -> str:
    """The file name for YuNet content with this sha256."""
    return KNOWN_YUNET.get(sha256, f"face_detection_yunet_sha256-{sha256[:16]}.onnx")


def damaged_yunet(path: Path) -> str | None:
    """Why a file named as known YuNet content (a version's name, or ``..._sha256-<hex>.onnx``)
    does not have that content, else None. OpenCV can crash the whole process (SIGSEGV,
    SIGFPE) on a damaged .onnx, so this is checked before OpenCV reads it; other names are not
    checked. Raises OSError when the file cannot be read."""
    named = re.fullmatch(r"face_detection_yunet_sha256-([0-9a-f]{16})\.onnx", path.name)
    want = next((sha for sha, name in KNOWN_YUNET.items() if name == path.name),
                named[1] if named else None)  # the whole sha256, or the name's first 16 hex
    if want is None:
        return None
    got = file_sha256(path)
    if got.startswith(want):
        return None
    # a fetch saves in default_dest(); a file elsewhere (detector.model) is mended only there
    where = "" if path.parent.resolve() == default_dest().resolve() else f" --dest {path.parent}"
    # ... and as the pinned version: another version's file (an older one, $MASKD_YUNET or
    # detector.model at it) stays as it is, so maskd is pointed at the one a fetch saves
    mend = (f"run `maskd models fetch{where}` again" if path.name == YUNET_NAME else
            f"`maskd models fetch{where}` saves the current version as "
            f"{path.parent / YUNET_NAME}: run it and set detector.model (or $MASKD_YUNET) to "
            "that file")
    if got == EMPTY_SHA256:  # a fetch or copy cut short: the checksum of nothing says little
        return f"is an empty file (0 bytes); {mend}"
    return f"is damaged (sha256 {got}, its name says {want}{'...' * (len(want) < 64)}); {mend}"


def not_onnx(path: Path | str) -> str | None:
    """Why OpenCV's YuNet must not be handed ``path``, or None. ``cv2.FaceDetectorYN`` picks its
    reader by the file's ending: a ``.pb`` goes to the TensorFlow reader, which kills the whole
    process (SIGSEGV) on anything but a frozen graph, where ``run`` must stop with a line."""
    if Path(path).suffix == ".onnx":  # OpenCV's own test: ".ONNX" is not read as ONNX either
        return None
    return ("YuNet reads an .onnx file (face_detection_yunet_*.onnx) and this is not one; "
            "kind ssd takes a .pb or .tflite SSD, blazeface a .tflite")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _sha256_there(target: Path) -> str:
    """The sha256 of a file already at the target; one that cannot be read is a write error
    (the folder's, like any other), never a traceback."""
    try:
        return file_sha256(target)
    except OSError as err:
        raise FetchError("write", f"cannot check {target}, which is there already: "
                                  f"{err.strerror or err} (remove it, or run as its owner)") from None


def fetch_yunet(dest: Path, url: str = YUNET_URL, sha256: str = YUNET_SHA256,
                timeout: float = 60.0) -> Fetched:
    """Download YuNet from ``url`` into ``dest`` if its content has ``sha256``; raises FetchError.

    Written to a temporary file next to the target and renamed only after the check, so a
    failed or wrong download leaves nothing behind.
    """
    sha256 = sha256.lower()  # one sha256 in either case (PowerShell's Get-FileHash: upper)
    if not SHA256_RE.fullmatch(sha256):
        raise FetchError("usage", f"sha256 must be 64 hex digits, got {sha256!r}")
    if (why := url_problem(url)) is not None:
        raise FetchError("usage", why)
    target = dest / yunet_name(sha256)
    shown = _without_password(url)  # what the lines name: the terminal and logs see them
    if target.is_file() and _sha256_there(target) == sha256:
        _remove_killed_parts(dest)
        return Fetched(_for_everyone(target), changed=False)
    if target.exists() and not target.is_file():  # found before the download, not after it
        what = "a folder" if target.is_dir() else "something that is not a file"
        raise FetchError("write", f"cannot write {target}: {what} is in the way")
    if url.startswith("file:"):  # a named pipe would hang the open itself, beyond --timeout
        local = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
        if local.exists() and not local.is_file():
            raise FetchError("network", f"cannot download {shown}: not a regular file")
    lock = -1
    try:
        made = [d for d in (dest, *dest.parents) if not d.exists()]
        dest.mkdir(parents=True, exist_ok=True)
        for d in made:  # the service's user reads through them, whatever this umask
            d.chmod(0o755)
        lock = _lock_folder(dest)
        if target.is_file() and _sha256_there(target) == sha256:  # the fetch we waited for
            _remove_parts(dest)
            os.close(lock)
            lock = -1
            return Fetched(_for_everyone(target), changed=False)
        # damaged (its name says another sha256): `run` stops on it, so it must not outlive a
        # download that fails, where the line says auto falls back to BlazeFace
        target.unlink(missing_ok=True)
        _remove_parts(dest)
        fd, tmp_name = tempfile.mkstemp(prefix=".fetch-", suffix=".part", dir=dest)
    except OSError as err:
        if lock >= 0:
            os.close(lock)
        why = file_in_the_way(dest) or err.strerror or err  # mkdir said only 'File exists'
        raise FetchError("write", f"cannot write in {dest}: {why}") from None
    tmp = Path(tmp_name)
    try:
        h, size = hashlib.sha256(), 0
        deadline = time.monotonic() + DEADLINE_TIMEOUTS * timeout

        def too_late() -> FetchError:
            return FetchError("network", f"cannot download {shown}: not done after "
                              f"{DEADLINE_TIMEOUTS * timeout:g} s ({DEADLINE_TIMEOUTS} x --timeout)"
                              f"; {size} bytes came")

        watchdog = _Watchdog(DEADLINE_TIMEOUTS * timeout)
        try:
            try:
                with watchdog.open(url, timeout) as resp:
                    promised = resp.headers.get("Content-Length")
                    # read1: what has come, not a whole CHUNK (which a slow server never fills)
                    while block := resp.read1(CHUNK):
                        _write(fd, block, dest)
                        h.update(block)
                        size += len(block)
                        if size > MAX_BYTES:
                            raise FetchError("network", f"cannot download {shown}: more than "
                                             f"{MAX_BYTES >> 20} MiB, not a YuNet model")
                        if time.monotonic() > deadline:
                            raise too_late()
                    if watchdog.fired.is_set():  # headers cut short by it read as complete
                        raise too_late()
            except http.client.HTTPException as err:  # a cut body, an answer that is not HTTP
                if watchdog.fired.is_set():  # what its shutdown made of the answer
                    raise too_late() from None
                said = " ".join(str(err).split())  # one line, whatever the server sent
                raise FetchError("network", f"cannot download {shown}: {type(err).__name__}: "
                                            f"{said}") from None
            except urllib.error.HTTPError as err:  # reached: the server has no such file
                said = " ".join(str(err.reason).split())  # a redirect loop's is 3 lines
                raise FetchError("server", f"cannot download {shown}: HTTP {err.code} "
                                           f"{said}") from None
            except (urllib.error.URLError, OSError, ValueError) as err:
                if watchdog.fired.is_set():
                    raise too_late() from None
                reason = getattr(err, "reason", None) or err
                raise FetchError("network", f"cannot download {shown}: {reason}") from None
        finally:
            watchdog.cancel()
            os.close(fd)
        if promised and promised.isdigit() and size < int(promised):
            # http.client ends a body cut short as if it were complete
            raise FetchError("network", f"cannot download {shown}: the connection closed after "
                                        f"{size} of {promised} bytes")
        got = h.hexdigest()
        if got != sha256:
            raise FetchError("checksum", f"YuNet sha256 mismatch: got {got} ({size} bytes from "
                                         f"{shown}), expected {sha256}; nothing installed")
        try:
            tmp.chmod(0o644)
            os.replace(tmp, target)
        except OSError as err:
            raise FetchError("write", f"cannot write {target}: {err.strerror or err}") from None
    finally:
        tmp.unlink(missing_ok=True)
        os.close(lock)
    return Fetched(target, changed=True)


class _Keeps:
    """An HTTP(S) handler that keeps each connection it makes in ``conns``, and each socket
    they connect in ``socks``: urllib lets go of the socket once the headers came (the
    connection's ``sock`` is None then), and the body still comes on it."""

    conns: list[http.client.HTTPConnection]
    socks: list[socket.socket]

    def do_open(self, http_class: Callable[..., http.client.HTTPConnection],
                req: urllib.request.Request, **kwargs: Any) -> http.client.HTTPResponse:
        def make(*args: Any, **kw: Any) -> http.client.HTTPConnection:
            self.conns.append(conn := http_class(*args, **kw))
            connect = conn.connect

            def connect_kept() -> None:
                connect()
                self.socks.append(conn.sock)

            conn.connect = connect_kept  # type: ignore[method-assign]
            return conn

        return super().do_open(make, req, **kwargs)  # type: ignore[misc]


class _KeptHTTP(_Keeps, urllib.request.HTTPHandler):
    pass


class _KeptHTTPS(_Keeps, urllib.request.HTTPSHandler):
    pass


class _Watchdog:
    """The whole download's deadline: --timeout bounds each wait only, and a server sending
    its headers a byte at a time (a tarpit, a broken proxy) held the fetch for hours. At
    ``seconds`` it shuts the connections (redirects' and a proxy's too), and the body's: its
    loop checks the deadline between blocks only, and a chunked body reads a chunk-size line,
    and every trailer line, inside one block (dripped, they held the fetch for hours too)."""

    def __init__(self, seconds: float) -> None:
        self.fired = threading.Event()
        self.conns: list[http.client.HTTPConnection] = []
        self.socks: list[socket.socket] = []
        handlers = (_KeptHTTP(), _KeptHTTPS())
        for handler in handlers:
            handler.conns, handler.socks = self.conns, self.socks
        self._opener = urllib.request.build_opener(*handlers)
        self._timer = threading.Timer(seconds, self._shut)
        self._timer.daemon = True

    def open(self, url: str, timeout: float) -> Any:  # urlopen's answer, file:// too
        self._timer.start()
        return self._opener.open(url, timeout=timeout)

    def cancel(self) -> None:
        self._timer.cancel()

    def _shut(self) -> None:
        self.fired.set()
        for sock in [conn.sock for conn in self.conns] + self.socks:  # sock: None or closed
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def url_problem(url: str) -> str | None:
    """Why ``url`` cannot be downloaded from, or None: `maskd models fetch --yunet-url` and
    install.sh (before it changes anything) refuse it by this one rule. urllib sends no
    ``user:password@`` (it took them for the host and port, and its error line held the
    password: such a URL is never repeated), only http(s) with a host and file are read, and a
    port that is no number cannot be reached."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is not None or parts.password is not None:
        return ("a user name or password in the URL is not sent by the download: fetch the "
                "file another way and give it as file:///path (checked the same way)")
    if parts.scheme not in ("http", "https", "file") or (parts.scheme != "file" and not parts.netloc):
        return f"{url!r} is not an http://, https:// or file:// URL"
    try:
        _ = parts.port  # urllib reads it only when it connects
    except ValueError:
        return "the URL's port is not a number from 0 to 65535"
    return None


def _without_password(url: str) -> str:
    """``url`` with a password in it (``user:pw@``) replaced by ***."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


def _for_everyone(target: Path) -> Path:
    """``target`` readable by every user (the service runs as its own): one already there
    with its owner's bits only was 'unchanged (sha256 ok)', and run stopped on it."""
    mode = target.stat().st_mode & 0o777
    if mode & 0o444 != 0o444:
        try:
            target.chmod(mode | 0o444)
        except OSError as err:
            raise FetchError("write", f"{target} is readable by its owner only (mode "
                             f"{mode:o}), and this user cannot change that: "
                             f"{err.strerror or err}") from None
    return target


def _lock_folder(dest: Path, wait: bool = True) -> int:
    """An fd of ``dest`` holding its flock, waited for (``wait``; else OSError when another
    holds it): a fetch into the folder holds it until it ends, so a .part found under it is a
    killed fetch's (the kernel frees a dead process's lock), never a running one's, which a
    second fetch at the same time deleted."""
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _remove_parts(dest: Path) -> None:
    """Under the folder's flock: every .part there is a killed fetch's (SIGTERM, a power cut)."""
    for stale in dest.glob(".fetch-*.part"):
        stale.unlink(missing_ok=True)


def _remove_killed_parts(dest: Path) -> None:
    """A killed fetch's .part, where the file is in place and no download is needed: only when
    no fetch holds the folder (a running one's .part stays); nothing said if it cannot be."""
    try:
        fd = _lock_folder(dest, wait=False)
    except OSError:  # held by a fetch now, or a folder this user may not open
        return
    try:
        _remove_parts(dest)
    except OSError:  # a folder this user may not write
        pass
    finally:
        os.close(fd)


def _write(fd: int, block: bytes, dest: Path) -> None:
    """Write to the local file: its errors (a full disk) are the folder's, not the network's."""
    view = memoryview(block)
    try:
        while view:
            view = view[os.write(fd, view):]
    except OSError as err:
        raise FetchError("write", f"cannot write in {dest}: {err.strerror or err}") from None


def find_yunet(folders: tuple[Path, ...]) -> Path | None:
    """The YuNet file in the first folder that has one: the pinned version when present, else
    the last by name. Only files: a link left dangling (or a folder) by that name was taken,
    and `run` stopped on it beside a good file, or instead of falling back to BlazeFace."""
    for folder in folders:
        if (folder / YUNET_NAME).is_file():
            return folder / YUNET_NAME
        if folder.is_dir():
            found = sorted(p for p in folder.glob(YUNET_GLOB) if p.is_file())
            if found:
                return found[-1]
    return None
