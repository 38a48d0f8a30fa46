"""`maskd doctor`: check everything the service needs, one table line per check with a verdict.

Run it as the service user on the device (`sudo -u maskd maskd doctor`; as root a `user` row
warns that its rows are root's view: ``root_row``) after installing or when
something is off: it opens the real camera, loads the real models, talks to the real broker and
times a few frames, so what it says is what the service will meet. Exit 0 when every required
check passed, 78 when the config is invalid, 1 when another required check failed, 74 when the
table could not be written (a full disk, a closed stdout: cli.main says so on stderr).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import logging
import os
import shlex
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from maskd.certs import BROKER, expiry_line, expiry_lines
from maskd.clock import not_set as clock_not_set
from maskd.commands import print_line
from maskd.config import (
    DEFAULT_CONFIG_PATH,
    EX_CONFIG,
    SERVICE_DIR,
    Config,
    ConfigError,
    SourceConfig,
    given_or_installed,
    load_config,
)
from maskd.files import CardWatch, cannot_create, captured_stderr_fd, depends_on_user
from maskd.journal import error_line
from maskd.ledger import foreign_ledger
from maskd.pins import PINS_FILE, differences, installed_pins_file, read_pins, unpinned
from maskd.tflite import (
    EDGETPU_LIB,
    NO_CORAL_FOUND,
    coral_absent,
    coral_devices,
    edgetpu_library_problem,
)

OK, WARN, FAIL, INFO = "OK", "WARN", "FAIL", "--"
CAMERA_TIMEOUT_S = 15.0
BROKER_TIMEOUT_S = 8.0
# The installed unit (systemd/maskd.service): its ProtectSystem=strict leaves only its
# StateDirectory= and the ReadWritePaths= of a drop-in writable, and PrivateTmp= gives it a /tmp
# of its own. Doctor, run outside that sandbox, cannot see this by writing.
UNIT_FILE = Path("/etc/systemd/system/maskd.service")
PROTECT_HOME = ("/home", "/root", "/run/user")  # the unit's ProtectHome=yes hides them
PRIVATE_TMP = ("/tmp", "/var/tmp")  # the unit's own (PrivateTmp=yes)
# ProtectSystem= leaves the API file system /dev as it is, and the unit has no PrivateDevices=
# (the camera): a /dev/shm folder was said to fail at start, where the service writes it
API_WRITABLE = ("/dev",)


@dataclass
class Check:
    name: str
    verdict: str
    detail: str
    required: bool = True

    @property
    def failed(self) -> bool:
        return self.verdict == FAIL and self.required


def table(checks: list[Check]) -> str:
    """Fixed-width table: CHECK | RESULT | DETAIL."""
    w = max(len("CHECK"), *(len(c.name) for c in checks))
    lines = [f"{'CHECK':<{w}}  RESULT  DETAIL"]
    lines += [f"{c.name:<{w}}  {c.verdict:<6}  {c.detail}" for c in checks]
    return "\n".join(lines)


# ---------------------------------------------------------------- helpers


def _check_fb(fb: Path) -> tuple[str, str]:
    from maskd.preview import FramebufferAbsent, PreviewUnavailable, check_framebuffer

    try:
        geo = check_framebuffer(fb)
    except FramebufferAbsent as err:  # run detects without it, shows it once a monitor comes
        return WARN, _err(err)
    except PreviewUnavailable as err:
        return FAIL, _err(err)
    writable = os.access(fb, os.W_OK)
    return (OK if writable else FAIL, f"{fb}: {geo.width}x{geo.height} {geo.pixel_format}"
            + ("" if writable else " but not writable (video group?)"))


def _check_window(_on: bool) -> tuple[str, str]:
    from maskd.preview import opencv_gui_backend

    backend = opencv_gui_backend()
    return ((OK, f"OpenCV GUI: {backend}") if backend
            else (FAIL, "OpenCV has no GUI support (headless)"))


def _check_http(listen: str) -> tuple[str, str]:
    """Free to listen on, or held by a maskd already serving there (the running service:
    doctor may run beside it)."""
    import errno

    from maskd.preview import (
        PreviewUnavailable,
        listen_refused,
        listen_warning,
        parse_listen,
        port_in_use,
        privileged_port,
    )

    try:
        if warning := listen_warning(listen):  # a late network: run waits or listens anyway
            return WARN, warning
        host, port = parse_listen(listen)
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
        if why := privileged_port(listen):  # root here: the service has no capability
            return WARN, f"{listen}: {why}"
        return OK, f"can listen on {listen}"
    except PreviewUnavailable as err:
        return FAIL, f"{listen}: {_err(err)}"
    except OSError as err:
        if err.errno == errno.EADDRINUSE and (why := privileged_port(listen)):
            return WARN, f"{listen}: {why}"  # the service is refused it before it is found in use
        if err.errno == errno.EADDRINUSE and _maskd_serves(host, port):
            return OK, f"{listen}: in use by a running maskd (the service?)"
        if err.errno == errno.EADDRINUSE:  # run detects without the page, and tries again
            return WARN, port_in_use(listen)
        return FAIL, listen_refused(listen, err)


def _maskd_serves(host: str, port: int) -> bool:
    """Whether the HTTP server on host:port says it is maskd (any answer, even 401)."""
    import http.client

    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    conn = http.client.HTTPConnection(host, port, timeout=2.0)
    try:
        conn.request("HEAD", "/api/status")
        return conn.getresponse().getheader("Server") == "maskd"
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


_PREVIEW_CHECKS: dict[str, Callable[[Any], tuple[str, str]]] = {
    "fb": _check_fb, "window": _check_window, "http": _check_http}


class _LastWarning(logging.Handler):
    """Remembers the last warning a stage logged (e.g. why the camera did not open)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.last = record.getMessage()


def missing_video_device(src: SourceConfig) -> str | None:
    """The device the source names (``uri`` N for /dev/videoN, or any /dev/ path such as a
    /dev/v4l/by-id/ link; kind opencv without uri: 0) when it does not exist; None when it
    exists or the source is not a local video device. Kind auto without uri may pick the Pi
    camera, so it is left to the real open."""
    if src.kind not in ("auto", "opencv") or not Path("/dev").is_dir():
        return None
    uri = src.uri if src.uri else ("0" if src.kind == "opencv" else None)
    if uri is None:
        return None
    dev = f"/dev/video{uri}" if uri.isdigit() else uri
    if not dev.startswith("/dev/"):
        return None
    return None if Path(dev).exists() else dev


def in_thread(fn: Callable[[], Any], timeout: float) -> tuple[bool, Any]:
    """(finished, result or exception) of fn() run in a daemon thread for at most timeout s."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as err:  # noqa: BLE001 - reported as the check's detail
            box["result"] = err

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    return (not t.is_alive()), box.get("result")


def _err(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


# ---------------------------------------------------------------- the checks


def _unit_lines(text: str) -> list[str]:
    """A unit file's lines as systemd reads them: comment lines skipped, one ending in a
    backslash (not an escaped one) goes on with the next, the backslash a space (a long
    ReadWritePaths= list over several lines)."""
    lines: list[str] = []
    held: str | None = None
    for line in text.splitlines():
        if line.lstrip()[:1] in ("#", ";"):
            continue
        line = line if held is None else held + line
        if (len(line) - len(line.rstrip("\\"))) % 2:
            held = line[:-1] + " "
            continue
        held = None
        lines.append(line)
    return lines if held is None else [*lines, held]


def _leads_to(path: Path) -> Path:
    """Where ``path`` leads, its links followed as systemd's mounts follow them; a link loop
    leads nowhere and is left as written (Path.resolve raises for it)."""
    return Path(os.path.realpath(path))


def _there(folder: Path) -> Path:
    """``folder`` or the nearest folder above it that is there now, for a ReadWritePaths= to
    name: run makes the rest, and systemd leaves a missing - folder out, so one run had still
    to make stayed read-only (exit 78) though doctor then said nothing. Where only root may
    write that folder (/media, /srv, /: no service makes a folder there) the first one missing
    below it is named, a stick's mount point: /media/usb for /media/usb/snaps, the stick out
    (was: -/media, every stick opened to the service, which still stopped at start)."""
    below = folder
    for p in (folder, *folder.parents):
        if p.is_dir():
            st = p.stat()
            return p if p == folder or st.st_uid != 0 or st.st_mode & 0o022 else below
        below = p
    return folder


def _under(path: Path, tops: Iterable[str | Path]) -> str | Path | None:
    """The first of ``tops`` that ``path`` is in (whole parts: /home2 is not under /home)."""
    return next((top for top in tops if path.is_relative_to(top)), None)


# Where the sandbox row says to move what the service cannot see under /home or in its /tmp.
_FILE_GOES = "/etc/maskd (root:maskd 0640) or /var/lib/maskd"  # a model, a password file
_SOURCE_GOES = "a folder outside /home and /root, such as /srv"  # a clip or images played
_WRITTEN_GOES = "/var/lib/maskd, or a folder outside /home and /root with its ReadWritePaths="


def _unit_values(unit: Path, setting: str) -> list[str]:
    """Each value ``unit`` and its drop-ins (``systemctl edit``) give ``setting``, in
    systemd's order (the last one wins for a setting that takes one)."""
    values = []
    for f in [unit, *sorted(unit.with_name(unit.name + ".d").glob("*.conf"))]:
        for line in _unit_lines(f.read_text(errors="replace")):
            key, eq, value = line.strip().partition("=")
            if eq and key.strip() == setting:
                values.append(value.strip())
    return values


def unit_read_write_paths(unit: Path) -> list[Path]:
    """The ReadWritePaths= of ``unit`` and its drop-ins (``systemctl edit``), in systemd's
    order; a leading - or + is only a flag (``read_write_word``)."""
    return [Path(path) for _, path in _judged_words(unit) if path]


# The specifiers systemd's system manager fills in with the same text on every machine
# (systemd.unit(5), SPECIFIERS): %h is root's home, whatever User= says. Any other one (%H, %m,
# %d, ...) is not guessed: the word is named as one doctor cannot judge (``Unjudged``).
_SPECIFIERS = {"S": "/var/lib", "C": "/var/cache", "L": "/var/log", "t": "/run", "T": "/tmp",
               "V": "/var/tmp", "E": "/etc", "h": "/root", "%": "%"}


class Unjudged(ValueError):
    """A ReadWritePaths= word with a specifier doctor does not fill in as systemd would."""


def unit_specifiers(text: str, unit_name: str = "maskd.service") -> str:
    """``text`` with its systemd specifiers filled in as the system manager fills them in a
    path (%S/maskd-usb: /var/lib/maskd-usb; %N: the unit's name; a % at its end stays, as
    systemd keeps it), or ``Unjudged``."""
    known = {**_SPECIFIERS, "n": unit_name, "N": unit_name.rpartition(".")[0], "": "%"}
    out, rest = [], text
    while (at := rest.find("%")) >= 0:
        letter = rest[at + 1:at + 2]
        if letter not in known:
            raise Unjudged(f"%{letter}")
        out += [rest[:at], known[letter]]
        rest = rest[at + 2:]
    return "".join([*out, rest])


def read_write_word(word: str, unit_name: str = "maskd.service") -> tuple[bool, str | None]:
    """A ReadWritePaths= word as systemd reads it: whether a missing path is passed over (a
    leading -), and the path, after a + (RootDirectory='s, the host's here) and its specifiers
    filled in (-%S/maskd-usb was taken for a path not absolute: a folder the service writes said
    read-only; ``Unjudged`` for one doctor does not know); None for a word it ignores ('path is
    not absolute, ignoring'), such as +-PATH: the - is taken before the + only, so the stick
    stayed read-only where doctor and tools/sandbox.py took it as -PATH; and one with a .. in
    it ('path is not normalized, ignoring': /var/lib/../media/usb)."""
    bare = word.removeprefix("-")
    path = unit_specifiers(bare.removeprefix("+"), unit_name)
    absolute = path.startswith("/") and ".." not in path.split("/")
    return bare != word, path if absolute else None


def _judged_words(unit: Path) -> list[tuple[bool, str | None]]:
    """``read_write_word`` of each ReadWritePaths= word of ``unit`` doctor can judge."""
    words = []
    for word in _read_write_words(unit):
        with contextlib.suppress(Unjudged):
            words.append(read_write_word(word, unit.name))
    return words


def unit_unjudged(unit: Path) -> list[tuple[str, str]]:
    """The ReadWritePaths= words of ``unit`` and its drop-ins whose folder doctor cannot tell
    (a specifier it does not fill in), each with that specifier."""
    found = []
    for word in _read_write_words(unit):
        try:
            read_write_word(word, unit.name)
        except Unjudged as err:
            found.append((word, str(err)))
    return found


def _read_write_words(unit: Path) -> list[str]:
    """The ReadWritePaths= of ``unit`` and its drop-ins as written, flags and all: an empty
    assignment clears the list, a path in quotes may hold a space ("/media/pi/USB DISK": a
    stick mounted under its label); a quote left open ends the line there, the words before it
    kept (systemd adds word by word: 'Failed to extract first word, ignoring')."""
    words: list[str] = []
    for value in _unit_values(unit, "ReadWritePaths"):
        words = [*words, *_unit_words(value)] if value.strip() else []
    return words


def _unit_words(value: str) -> list[str]:
    """The words of a unit's value as systemd's extract_first_word takes them: a quote, ' or ",
    may open anywhere in a word; a backslash takes the next character as it is, inside quotes
    too ('/srv/it\\'s': shlex keeps it and leaves the quote open); a quote left open ends the
    value, the words before it kept."""
    words: list[str] = []
    word: list[str] | None = None  # None: between words
    quote = ""
    chars = iter(value)
    for c in chars:
        if c == "\\":
            if (c := next(chars, "")) == "":
                return words
        elif c == quote:
            quote = ""
            continue
        elif not quote and c in "'\"":
            quote, word = c, [] if word is None else word
            continue
        elif not quote and c in " \t\r\n":
            if word is not None:
                words.append("".join(word))
            word = None
            continue
        word = [] if word is None else word
        word.append(c)
    if word is not None and not quote:
        words.append("".join(word))
    return words


def unit_missing_paths(unit: Path) -> list[Path]:
    """The ReadWritePaths= of ``unit`` and its drop-ins that are missing (links followed, as
    systemd follows them) and written without the - that lets systemd pass over them: it then
    fails the whole start (226/NAMESPACE), a stick not mounted, a folder not made yet."""
    def missing(path: str) -> bool:
        try:
            os.stat(path)
        except FileNotFoundError:
            return True
        except OSError:  # a link loop, no permission: not what the - passes over
            pass
        return False

    return [Path(path) for passed_over, path in _judged_words(unit)
            if path and not passed_over and missing(path)]


# The words systemd takes for a unit's yes and no (ProtectSystem=, ProtectHome=, PrivateTmp=).
_UNIT_YES = ("1", "yes", "y", "true", "t", "on")
_UNIT_NO = ("0", "no", "n", "false", "f", "off")


def _unit_last(unit: Path, setting: str, names: tuple[str, ...]) -> str | None:
    """The unit's last ``setting`` systemd can parse, as "yes", "no" or one of ``names``; None
    where none is given. A boolean in any case ("No"), a name only as written: systemd
    ignores ProtectSystem=Full ('Failed to parse', the one before stands)."""
    found = None
    for value in _unit_values(unit, setting):
        word = value.lower()
        if word in _UNIT_YES or word in _UNIT_NO:
            found = "yes" if word in _UNIT_YES else "no"
        elif value in names:
            found = value
    return found


def unit_read_only(unit: Path) -> tuple[str, tuple[str, ...]]:
    """The unit's last ProtectSystem= systemd can parse and the folders it makes read-only
    (strict: all of them; full: /usr, /boot, /efi and /etc; yes: not /etc; no: none): a
    drop-in's `full` leaves /srv writable, where the sandbox row said it failed at start."""
    found = _unit_last(unit, "ProtectSystem", ("full", "strict")) or "strict"
    tops = {"strict": ("/",), "full": ("/usr", "/boot", "/efi", "/etc"), "no": ()}.get(
        found, ("/usr", "/boot", "/efi"))
    return found, tops


def unit_hides(unit: Path) -> tuple[str | None, bool]:
    """The unit's last ProtectHome= that hides /home, /root and /run/user (yes, tmpfs; None
    for no or read-only: readable, written only with a ReadWritePaths=), and whether its
    PrivateTmp= gives it a /tmp of its own; a value systemd cannot parse is ignored, as it
    ignores it (a drop-in of `systemctl edit` may say either)."""
    home = _unit_last(unit, "ProtectHome", ("read-only", "tmpfs"))
    tmp = _unit_last(unit, "PrivateTmp", ("disconnected",))
    return home if home in ("yes", "tmpfs") else None, tmp not in (None, "no")



def _library_for(key: str, on: bool) -> None:
    """A missing libedgetpu in `run`'s words for the key that wants it ('set detector.edgetpu:
    false'), checked before the model opens: the loader alone knows no key and names them all."""
    from maskd.tflite import need_edgetpu_library

    if on:
        need_edgetpu_library([key])

class Doctor:
    def __init__(self, cfg: Config, frames: int, file: Path | str | None = None) -> None:
        self.cfg = cfg
        self.file = file  # the config file, for its own mode (open_secrets)
        self.frames = max(1, frames)
        self.checks: list[Check] = []
        self.detector: Any = None
        self.classifier: Any = None
        self.source: Any = None
        self.first_frame: Any = None
        self.rotate = 0  # source.rotate of the camera whose frames the timing uses
        # ... and that camera's whole config (a cameras: map's own source fps, tracking, zones):
        # the top level's source is no camera's there, so the budget was judged at its 15 fps
        self.timed = cfg

    def add(self, name: str, verdict: str, detail: str, required: bool = True) -> None:
        self.checks.append(Check(name, verdict, detail, required))

    def run_all(self) -> list[Check]:
        for step in (self.clock, self.secrets, self.device_id_check, self.certificates,
                     self.state_dir, self.writes, self.cards, self.sandbox,
                     self.runtime, self.packages, self.classifier_check, self.edgetpu,
                     self.detector_check, self.camera, self.broker, self.outbox, self.preview,
                     self.timing):
            try:
                step()
            except Exception as err:  # noqa: BLE001 - one broken check must not hide the rest
                self.add(step.__name__.removesuffix("_check"), FAIL, f"{type(err).__name__}: {_err(err)}")
        if self.source is not None:
            self.source.close()
        return self.checks

    def clock(self) -> None:
        """A wall clock that is not set (1970: no real-time clock, no NTP yet), as `run` warns."""
        line = clock_not_set(time.time())
        self.add("clock", OK if line is None else WARN,
                 time.strftime("%Y-%m-%d %H:%M %Z") if line is None else line, required=False)

    def secrets(self) -> None:
        """A password, token or key file every user can read, in the words check-config and
        the journal of `run` use (a warning there too: run starts)."""
        for line in self.cfg.open_secrets(self.file):
            self.add("secret file", WARN, line, required=False)

    def device_id_check(self) -> None:
        """With MQTT on, the device id other devices must not share: a stock host name such as
        raspberrypi is a warning, in check-config's and run's words."""
        if not self.cfg.mqtt.url:
            return
        lines = self.cfg.shared_device_id()
        self.add("device id", WARN if lines else OK,
                 lines[0] if lines else f"{self.cfg.device_id} (MQTT client id and topics)",
                 required=False)

    def certificates(self) -> None:
        """The MQTT TLS files' end dates: expired, or within certs.WARN_DAYS, is a warning in
        check-config's and run's words (run starts: the outbox keeps the events)."""
        ends = self.cfg.mqtt.certificate_ends()  # the files read once
        if not ends:
            return
        lines = expiry_lines(ends, datetime.now(UTC))
        self.add("certificates", WARN if lines else OK, "; ".join(lines) if lines else ", ".join(
            f"{k.removeprefix('mqtt.')} until {e:%Y-%m-%d}" for k, (_, e) in ends.items()),
            required=False)

    def writes(self) -> None:
        """jsonl.path, snapshots.dir and each preview.annotate_dir by `run`'s own rule
        (check-config's ``write_problems``): a place nothing can be created in stops `run` (exit
        78), so it fails here too (was: not looked at, doctor said OK to a config run refuses);
        one closed only to this user, or a link to a stick not mounted yet, is a warning."""
        from maskd.commands.check_config import write_problems

        errors, warnings = write_problems(self.cfg, state_dir=False)
        for line in errors:
            self.add("writes", FAIL, line)
        for line in warnings:
            self.add("writes", WARN, line, required=False)

    def state_dir(self) -> None:
        """Where `run` keeps the MQTT outbox (required) and the open violations (whenever
        ``state_dir`` is set). Without MQTT, a folder run cannot create or write stops it (exit
        78, as check-config says) and fails here too (was a warning and exit 0 for a config run
        refuses); one merely full, or closed to this user only, is a warning."""
        d = self.cfg.state_dir
        if not self.cfg.keeps_state:
            self.add("state dir", INFO, f"{d}: not used (neither set in the config nor mqtt.url)",
                     required=False)
            return
        mqtt = bool(self.cfg.mqtt.url)
        # run's rule (cannot_create, as check-config): a folder it can make is no fault
        err = cannot_create(d, True)
        stops = mqtt or (err is not None and not depends_on_user(err))  # required: run stops
        bad = FAIL if stops else WARN
        use = "MQTT outbox, open violations" if mqtt else "open violations"
        if not d.is_dir():
            if err is None:
                self.add("state dir", INFO, f"{d} does not exist yet: run creates it ({use})",
                         required=False)
                return
            hint = (" (the unit's StateDirectory= creates it; or mkdir it, owned by the service "
                    "user)" if depends_on_user(err) else "")
            self.add("state dir", bad, f"{d} cannot be created: {err.strerror or err}{hint} "
                     f"({use})", required=stops)
            return
        try:
            with tempfile.NamedTemporaryFile(dir=d, prefix=".doctor-"):
                pass
        except OSError as err:
            who = " by this user" if depends_on_user(err) else ""  # ENOSPC: a full disk
            self.add("state dir", bad, f"{d} is not writable{who}: {err.strerror} ({use}"
                     + ("" if stops else ": those open when maskd is killed are never ended")
                     + ")", required=stops)
            return
        # run keeps no open violation there, or lets a second run on a camera in: its words
        if foreign := foreign_ledger(d, [c.camera for c in self.cfg.cameras_resolved()]):
            self.add("state dir", WARN, f"{foreign} ({use})", required=False)
            return
        free = shutil.disk_usage(d).free / 2**20
        verdict = OK if free >= 100 else WARN
        self.add("state dir", verdict, f"{d} writable, {free:,.0f} MiB free ({use})")

    def cards(self) -> None:
        """Errors the file systems maskd writes to have recorded: a failing card says so
        before the kernel makes it read-only (`run` says it once a minute, as a problem)."""
        for line in CardWatch(self.cfg.written()).look():
            self.add("card", WARN, line, required=False)

    def sandbox(self) -> None:
        """A path maskd writes outside what the installed unit leaves writable: the service
        fails at start ("Read-only file system", exit 78) where doctor found it writable. A
        file it reads under /home or /root (a model, a password file): the service sees those
        empty and closed (ProtectHome=yes) and stops with 'Permission denied' of a file
        doctor, run as its user, read; one in /tmp it does not see (PrivateTmp=, its own). A
        drop-in's ProtectHome= and PrivateTmp= are followed, and links where they lead; a
        ReadWritePaths= missing without its - (systemd then refuses the start) is named."""
        if not UNIT_FILE.is_file():
            return  # no installed service to run under that sandbox
        from maskd.sources import source_file

        written = {key for key, _, _ in self.cfg.written()}
        hidden = set()
        home, private_tmp = unit_hides(UNIT_FILE)
        private = PRIVATE_TMP if private_tmp else ()
        read = {f"{key}.uri": p for key, src in self.cfg.sources() if (p := source_file(src))}
        for key, path in {**self.cfg.paths(), **read}.items():
            real = _leads_to(SERVICE_DIR / path)
            link = f" (a link to {real})" if real != SERVICE_DIR / path else ""
            if home and (top := _under(real, PROTECT_HOME)):
                hidden.add(key)  # a ReadWritePaths= there is dropped by systemd (#7153)
                closed = " and closed" if home == "yes" else ""
                where = (_WRITTEN_GOES if key in written else _SOURCE_GOES if key in read
                         else _FILE_GOES)
                self.add("sandbox", WARN, f"{key}: {path}{link} is under {top}, which the "
                         f"service does not see (ProtectHome={home}: empty{closed} to it, "
                         f"whatever ReadWritePaths= says), so it then fails at start; move it to "
                         f"{where}", required=False)
            elif key not in written and (tmp := _under(real, private)):
                self.add("sandbox", WARN, f"{key}: {path}{link} is in {tmp}, of which the "
                         "service has its own, empty at each start (PrivateTmp=): it does not see "
                         f"this file, so it then fails at start; move it to "
                         f"{_SOURCE_GOES if key in read else _FILE_GOES}",
                         required=False)
        for missing in unit_missing_paths(UNIT_FILE):
            self.add("sandbox", WARN, f"ReadWritePaths={missing} (`systemctl cat maskd`) is "
                     "missing, so systemd refuses to start the service (226/NAMESPACE); create "
                     f"it, or write ReadWritePaths=-{shlex.quote(str(_there(missing)))} in its "
                     "place (the - lets the service start while it is missing)", required=False)
        # systemd's mounts follow links: a link under /var/lib/maskd to a stick is the stick's.
        # A ReadWritePaths= not there now is left out (-) or fails the start (226/NAMESPACE): a
        # folder run is still to make under it stayed read-only, and the row said nothing.
        named = unit_read_write_paths(UNIT_FILE)
        writable = [*API_WRITABLE, *(_leads_to(w) for w in (SERVICE_DIR, *named)
                                     if w == SERVICE_DIR or w.exists())]
        protect, read_only = unit_read_only(UNIT_FILE)
        # a word doctor cannot fill in may open any folder: a read-only row is then a maybe
        unjudged = "".join(f"; unless ReadWritePaths={shlex.quote(word)} opens it (doctor "
                           f"cannot tell which folder systemd makes of {spec}: `systemctl show "
                           "maskd -p ReadWritePaths` says)" for word, spec in unit_unjudged(UNIT_FILE))
        for key, path, is_dir in self.cfg.written():
            p = SERVICE_DIR / path  # a relative path is the unit's WorkingDirectory='s
            real = _leads_to(p)
            if key in hidden or _under(real, writable):
                continue
            if _under(real, private):
                self.add("sandbox", WARN, f"{key}: {p} is in the service's own /tmp "
                         "(PrivateTmp=): other users do not see it, and it is emptied at each stop",
                         required=False)
                continue
            if not (top := _under(real, read_only)):
                continue
            folder = _there(real if is_dir else real.parent)
            link = f" (a link to {real})" if real != p else ""
            if folder in named and not folder.exists():  # the advice, followed, the stick out
                self.add("sandbox", WARN, f"{key}: {p}{link} is read-only to the service while "
                         f"its ReadWritePaths={shlex.quote(str(folder))} is missing (a stick not "
                         "mounted?), which then fails at start; mount or create it",
                         required=False)
                continue
            why = ("only /var/lib/maskd is writable" if top == "/" else f"{top} is read-only")
            self.add("sandbox", INFO if unjudged else WARN, f"{key}: {p}{link} is read-only to "
                     f"the service (ProtectSystem={protect}: {why}), which then fails at "
                     f"start; put it under /var/lib/maskd, or `systemctl edit maskd` and add "
                     f"[Service] ReadWritePaths=-{shlex.quote(str(folder))} (the - lets the "
                     "service start while the folder is missing, a stick not mounted: without it "
                     f"systemd fails the whole start, 226/NAMESPACE){unjudged}", required=False)

    def runtime(self) -> None:
        from maskd.tflite import ModelError, import_runtime

        try:
            _, _, name = import_runtime()
        except ModelError as err:
            self.add("tflite runtime", FAIL, _err(err))
            return
        dist = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}.get(name, name)
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        self.add("tflite runtime", OK, f"{dist} {version}")

    def packages(self, pins_file: Path | None = None) -> None:
        """Whether the venv still holds the wheels install.sh pinned for this release: a later
        `pip install -U` in it replaces tested versions (numpy 2 breaks Bookworm's picamera2)."""
        path = pins_file or installed_pins_file()
        if not path.exists():
            self.add("packages", INFO, f"no {PINS_FILE} in {path.parent}: not installed by "
                     "deploy/install.sh, nothing to compare", required=False)
            return
        try:
            pins = read_pins(path)
        except (OSError, ValueError) as err:
            self.add("packages", WARN, f"{path}: {_err(err)}", required=False)
            return
        wrong = differences(pins)
        extra = unpinned(pins, path.parent)  # the pins file lies in the venv's root
        if wrong or extra:
            said = wrong + [f"{name} installed, not pinned" for name in extra]
            more = f" and {len(said) - 4} more" if len(said) > 4 else ""
            counts = ([f"{len(wrong)} of {len(pins)} not as tested"] if wrong else []) + (
                [f"{len(extra)} not pinned"] if extra else [])
            self.add("packages", WARN, f"{', '.join(counts)}: {', '.join(said[:4])}{more}; "
                     "`sudo deploy/install.sh` puts the tested versions back (a package it "
                     "did not install stays: `pip uninstall` it)", required=False)
        else:
            self.add("packages", OK, f"all {len(pins)} as pinned in {path}", required=False)

    def classifier_check(self) -> None:
        from maskd.classifier import ModelError
        from maskd.service import build_classifier

        c = self.cfg.classifier
        try:
            _library_for("classifier.edgetpu", c.edgetpu)
            with captured_stderr_fd() as native:
                clf = build_classifier(self.cfg)
                clf.predict([np.zeros((64, 64, 3), np.uint8)])  # delegates apply on first invoke
        except ModelError as err:
            self.add("classifier", FAIL, _err(err))
            return
        self.classifier = clf
        self.add("classifier", OK, clf.describe())
        self.scan_extras()
        text = "".join(native)
        if c.edgetpu:
            self.add("xnnpack", INFO, "not used: the classifier runs on the EdgeTPU", required=False)
        elif "XNNPACK" in text:
            self.add("xnnpack", OK, "XNNPACK CPU delegate applied to the classifier", required=False)
        else:
            self.add("xnnpack", WARN, "XNNPACK delegate not reported by the runtime: CPU inference "
                     "may be slower", required=False)

    def scan_extras(self) -> None:
        """The models `scan` averages with the classifier: a missing one fails only `scan`."""
        from maskd.classifier import still_extra_paths

        c = self.cfg.classifier
        paths = still_extra_paths(c.model, c.still_extra_models)
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            self.add("scan models", WARN, f"not found: {', '.join(missing)} (`maskd scan` fails; "
                     "classifier.still_extra_models: [] scans with the classifier alone)",
                     required=False)
        elif paths:
            self.add("scan models", OK, "scan averages the classifier with "
                     + ", ".join(p.name for p in paths), required=False)

    def edgetpu(self) -> None:
        """The library (a setup mistake when missing: `run` exits 78) and the device (`run`
        waits for it, then exits 75), in `run`'s words (maskd.tflite)."""
        wanted = bool(self.cfg.edgetpu_keys())
        problem = edgetpu_library_problem(self.cfg.edgetpu_keys())
        if problem is None:
            self.add("edgetpu library", OK, f"{EDGETPU_LIB} loads", required=wanted)
        elif wanted:
            self.add("edgetpu library", FAIL, problem)
        else:
            self.add("edgetpu library", INFO, f"{EDGETPU_LIB} not installed (not needed: edgetpu "
                     "off)", required=False)
        from maskd.commands.check_config import edgetpu_model_warnings

        for line in edgetpu_model_warnings(self.cfg):
            self.add("edgetpu model", WARN, line, required=False)
        found = coral_devices()
        if found:
            self.add("edgetpu device", OK, "; ".join(found), required=wanted)
        elif wanted:
            self.add("edgetpu device", FAIL, coral_absent(NO_CORAL_FOUND, waits=True))
        else:
            self.add("edgetpu device", INFO, f"{NO_CORAL_FOUND} (not needed: edgetpu off)", required=False)

    def detector_check(self) -> None:
        from maskd.detectors import DetectorError
        from maskd.service import build_detector
        from maskd.tflite import ModelError

        try:
            _library_for("detector.edgetpu", self.cfg.detector.edgetpu)
            with captured_stderr_fd():
                det = build_detector(self.cfg)
        except (DetectorError, ModelError) as err:
            self.add("detector", FAIL, _err(err))
            return
        self.detector = det
        self.add("detector", OK, det.describe())
        from maskd.commands.run import detector_notes

        for note in detector_notes(self.cfg, demo=False)[1:]:  # auto without YuNet: what it means
            self.add("yunet", WARN, note, required=False)

    def camera(self) -> None:
        """Every camera of the config gives a frame (one check each with a `cameras:` map); the
        first that does is kept for the timing check."""
        cams = self.cfg.cameras_resolved()
        for cam in cams:
            label = f"camera {cam.camera}" if self.cfg.multi_camera else "camera"
            got = self._one_camera(label, cam.source)
            if got is None:
                continue
            if self.source is None:
                self.source, self.first_frame = got
                self.rotate = cam.source.rotate  # its frames turned for the timing as in `run`
                self.timed = cam
            else:
                got[0].close()

    def _one_camera(self, label: str, src_cfg: SourceConfig) -> tuple[Any, Any] | None:
        """(the open source, its first frame, turned by source.rotate), or None after adding
        the failed check."""
        from maskd.sources import open_source, turned
        from maskd.types import SourceError

        missing = missing_video_device(src_cfg)
        if missing is not None:  # at once, not after CAMERA_TIMEOUT_S of reconnect attempts
            where = "another number? ls /dev/video*" if missing.startswith("/dev/video") else (
                f"another name? ls {Path(missing).parent}")
            self.add(label, FAIL, f"{missing}: no such device (camera unplugged, or {where})")
            return None
        watcher = _LastWarning()
        logger = logging.getLogger("maskd.sources")
        # doctor's root logger shows errors only; the sources' warnings (why a camera does not
        # open) must still reach the watcher, and only the watcher
        was = logger.level, logger.propagate
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        logger.addHandler(watcher)
        try:
            try:
                source = open_source(src_cfg)
            except SourceError as err:
                self.add(label, FAIL, _err(err))
                return None
            t0 = time.perf_counter()
            done, result = in_thread(source.read, CAMERA_TIMEOUT_S)
            ms = (time.perf_counter() - t0) * 1e3
        finally:
            logger.removeHandler(watcher)
            logger.setLevel(was[0])
            logger.propagate = was[1]
        name = getattr(source, "name", src_cfg.kind)
        if not done:
            # why the source holds the camera lost, without its log line's "retrying in N s":
            # doctor stops trying here
            lost = getattr(source, "stats", {}).get("camera_lost_why") or watcher.last
            why = f": {lost}" if lost else ""
            self.add(label, FAIL, f"{name}: no frame within {CAMERA_TIMEOUT_S:.0f} s{why}")
        elif isinstance(result, BaseException) or result is None:
            why = _err(result) if isinstance(result, BaseException) else (watcher.last or "source ended")
            self.add(label, FAIL, f"{name}: no frame ({why})")
        else:
            result = turned(result, src_cfg.rotate)  # as `run` sees it
            h, w = result.image.shape[:2]
            self.add(label, OK, f"{name}: {w}x{h} first frame in {ms:.0f} ms")
            return source, result
        source.close()
        return None

    def broker(self) -> None:
        mq = self.cfg.mqtt
        if not mq.url:
            self.add("broker", INFO, "mqtt.url not set: events go to the log/jsonl only", required=False)
            return
        verdict, detail = probe_broker(self.cfg)
        self.add("broker", verdict, detail)

    def outbox(self) -> None:
        if self.cfg.mqtt.url:
            verdict, detail = inspect_outbox(self.cfg)
            self.add("outbox", verdict, detail, required=verdict != INFO)

    def preview(self) -> None:
        """Every camera's previews (a `cameras:` map keeps them per camera), each framebuffer
        and listen address once."""
        seen: set[object] = set()
        for cam in self.cfg.cameras_resolved():
            p = cam.preview
            suffix = f" ({cam.camera})" if self.cfg.multi_camera else ""
            for kind, value in (("fb", p.framebuffer), ("window", p.window), ("http", p.http)):
                if value and (kind, value) not in seen:
                    seen.add((kind, value))
                    verdict, detail = _PREVIEW_CHECKS[kind](value)
                    self.add(f"preview {kind}{suffix}", verdict, detail)

    def timing(self) -> None:
        if self.detector is None or self.classifier is None or self.first_frame is None:
            self.add("timing", INFO, "skipped: needs camera, detector and classifier", required=False)
            return
        from maskd.pipeline import Pipeline
        from maskd.sources import turned

        pipe = Pipeline(self.timed, self.detector, self.classifier)
        ms: dict[str, list[float]] = {"capture": [], "detect": [], "classify": [], "track": []}
        frame, faces = self.first_frame, 0
        short = ""  # why fewer frames than asked for were timed; a stall is a warning
        for i in range(self.frames):
            if i:
                t0 = time.perf_counter()
                done, nxt = in_thread(self.source.read, CAMERA_TIMEOUT_S)
                if not done:
                    short = f"the camera gave no frame for {CAMERA_TIMEOUT_S:.0f} s"
                elif isinstance(nxt, BaseException):
                    short = f"the camera failed: {_err(nxt)}"
                if not done or nxt is None or isinstance(nxt, BaseException):
                    break
                ms["capture"].append((time.perf_counter() - t0) * 1e3)
                frame = turned(nxt, self.rotate)
            r = pipe.process(frame)
            faces += len(r.verdicts)
            for k in ("detect", "classify", "track"):
                ms[k].append(r.timings_ms[k])
        n = len(ms["detect"])
        # one face crop, so the classifier's cost shows even with nobody in front of the camera
        crop = np.full((112, 112, 3), 128, np.uint8)
        t0 = time.perf_counter()
        for _ in range(5):
            self.classifier.predict([crop])
        per_face = (time.perf_counter() - t0) / 5 * 1e3
        mean = {k: (sum(v) / len(v) if v else 0.0) for k, v in ms.items()}
        loop = mean["detect"] + mean["classify"] + mean["track"]
        stopped = f"; stopped after {n} of {self.frames} frames: {short}" if short else ""
        self.add("timing", OK if n and not short else WARN,
                 f"{n} frames{stopped}, mean ms: capture {mean['capture']:.1f}, detect {mean['detect']:.1f}, "
                 f"classify {mean['classify']:.1f} ({faces} faces), track {mean['track']:.1f}; "
                 f"classifier {per_face:.1f} ms/face; ~{1000 / max(loop, 1e-3):.0f} fps without capture",
                 required=False)
        self.budget(frame.image, mean["track"])

    def budget(self, image: np.ndarray, track_ms: float) -> None:
        """docs/performance.md's per-stage budget (0/1/2/4 faces at the configured fps),
        measured on this device: the first real Pi replaces the estimate."""
        from maskd.motion import MotionGate

        def ms(fn: Callable[[], object], n: int = 5) -> float:
            fn()
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            return (time.perf_counter() - t0) / n * 1e3

        m = self.timed.motion  # the configured gate: its cost grows with frame_height
        gate = MotionGate(m.threshold, m.min_area, m.frame_height, m.alpha, m.idle_every)
        motion = ms(lambda: gate.moving(image))
        detect = ms(lambda: self.detector.detect(image), 3)
        crop = np.full((112, 112, 3), 128, np.uint8)
        h, w = image.shape[:2]
        # the cameras of a map share the detector (one camera at a time) and the CPU: their
        # frames together must fit, not the timed camera's alone
        cams = self.cfg.cameras_resolved() if self.cfg.multi_camera else [self.timed]
        fps = sum(c.source.fps for c in cams)
        together = f", {len(cams)} cameras together" if len(cams) > 1 else ""
        parts = []
        for faces in (0, 1, 2, 4):
            clf = ms(lambda k=faces: self.classifier.predict([crop] * k), 3) if faces else 0.0
            total = motion + detect + clf + track_ms
            parts.append(f"{faces} face{'' if faces == 1 else 's'} {total:.1f} ms ({1000 / max(total, 1e-3):.0f} fps)")
        ok = motion + detect + ms(lambda: self.classifier.predict([crop] * 2), 3) + track_ms <= 1000 / fps
        self.add("budget", OK if ok else WARN,
                 f"{w}x{h} at {fps:g} fps{together} (budget {1000 / fps:.1f} ms/frame): "
                 f"motion {motion:.2f}, "
                 f"detect {detect:.1f}, track {track_ms:.1f} ms; frame with " + ", ".join(parts)
                 + ("" if ok else f"; 2 faces do not fit {fps:g} fps here"), required=False)


def probe_broker(cfg: Config) -> tuple[str, str]:
    """Connect once with the service's credentials and TLS settings (MQTT 5, else 3.1.1) and
    check that maskd may publish; (verdict, detail). The config is validated, so its url,
    password and TLS files are usable here."""
    probe, failed = connect_probe(cfg)
    if probe is None:
        return FAIL, failed
    try:
        return probe.publish_rights()
    finally:
        probe.close()


def connect_probe(cfg: Config, tool: str = "doctor") -> tuple[_Probe | None, str]:
    """A connected probe (MQTT 5, else 3.1.1 where the broker speaks only that) with the
    service's credentials and TLS settings, or (None, why not): the one way `maskd doctor` and
    `maskd mqtt-clear` connect. The caller closes it.

    Its client id ``maskd-<device_id>.<tool>`` has a dot, which no name in a run's client id
    (``maskd-<device_id>-<camera>``) may have: a broker drops the older of two clients with one
    id, so ``maskd-<device_id>-doctor`` knocked a running camera named ``doctor`` offline."""
    import paho.mqtt.client as mqtt

    from maskd.mqtt import UNSUPPORTED_PROTOCOL

    mq = cfg.mqtt
    url, password = mq.broker, mq.password()  # validated by the config: url set, files readable
    first = ""
    for version in (mqtt.MQTTv5, mqtt.MQTTv311):
        probe = _Probe(cfg, url, password, version, f"maskd-{cfg.device_id}.{tool}")
        failed = probe.connect()
        if failed is None and probe.reason.value == UNSUPPORTED_PROTOCOL and version == mqtt.MQTTv5:
            probe.close()
            continue  # a 3.1.1-only broker: try again in its language
        if failed is not None and probe.hung_up and version == mqtt.MQTTv5:
            # one that cannot parse MQTT 5 may hang up rather than refuse it (RabbitMQ 3), as
            # `run` finds too; if 3.1.1 fares no better, MQTT 5's failure is the one told
            probe.close()
            first = failed
            continue
        if first and failed is not None:
            failed = first
        if failed is None and probe.reason.is_failure:
            failed = f"{url}: refused: {probe.reason} (check mqtt.username / password)"
        if failed is not None:
            probe.close()
            return None, failed
        return probe, ""
    return None, f"{url}: refused both MQTT 5 and 3.1.1"


class _Probe:
    """One doctor connection; publish rights are checked on ``<prefix>/<device>/<camera>/doctor``
    and, with discovery on, beside the camera's discovery config: for each camera `run` would
    publish for (a ``cameras:`` map's, not the unused top-level ``camera``). A ``cameras:`` map's
    process also publishes the device's ``status`` (and ``status/detail``): checked beside it,
    on ``<prefix>/<device>/status/doctor``, never on the retained topic Home Assistant reads."""

    def __init__(self, cfg: Config, url: Any, password: str | None, version: Any,
                 client_id: str) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        from maskd.mqtt.homeassistant import Topics

        self.cfg, self.mq, self.url, self.version = cfg, cfg.mqtt, url, version
        cams = [c.camera for c in cfg.cameras_resolved()]
        self.topics = [f"{cfg.mqtt.prefix}/{cfg.device_id}/{cam}/doctor" for cam in cams]
        if cfg.cameras:  # such a process also owns <prefix>/<device>/status (its last will)
            self.topics.insert(0, f"{cfg.mqtt.prefix}/{cfg.device_id}/status/doctor")
        # beside the discovery config (Home Assistant reads only .../config there)
        self.discovery_topics = [Topics.build(cfg.mqtt, cfg.device_id, cam).discovery
                                 .removesuffix("/config") + "/doctor" for cam in cams]
        # beside each camera's detect/set, never on it (that would flip the live switch)
        self.switch_topics = [Topics.build(cfg.mqtt, cfg.device_id, cam).detect_set
                              .removesuffix("/set") + "/doctor" for cam in cams]
        self.ha_status = Topics.build(cfg.mqtt, cfg.device_id, cams[0]).ha_status
        self.token = f"maskd doctor {os.getpid()} {time.time()}".encode()
        self.reason: Any = None
        self.properties: Any = None  # the CONNACK's (MQTT 5): the broker's limits
        self.connected = threading.Event()
        # PUBACKs and SUBACKs by message id: a late PUBACK of one check is no answer to the next
        self._answers: dict[int, Any] = {}
        self._answered = threading.Condition()
        self.echoed: set[str] = set()  # topics our test message came back on (3.1.1)
        self.started = False
        self.hung_up = False  # closed the connection without answering CONNECT
        self.t0 = 0.0
        self.socket_error = ""  # why paho's read failed (a broker's TLS alert), as run logs it
        self.client_id = client_id
        # why the broker closed the connection, once it did ("": it has not): a second doctor
        # or mqtt-clear at the same time takes over the client id (mosquitto 2.0 gives no reason)
        self.dropped = ""
        c = self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=version,
                                      client_id=client_id)
        if self.mq.username is not None:
            c.username_pw_set(self.mq.username, password)
        c.on_connect = self._on_connect
        c.on_publish = self._on_answer
        c.on_subscribe = self._on_answer
        c.on_message = self._on_message
        c.on_disconnect = self._on_disconnect
        c.on_log = self._on_log

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self.reason, self.properties = reason_code, properties
        self.connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        from maskd.mqtt.sink import SESSION_TAKEN_OVER

        if self.reason is not None:  # after the CONNACK, before close(): the broker's doing
            self.dropped = ("another client connected with this client id"
                            if getattr(reason_code, "value", None) == SESSION_TAKEN_OVER
                            else f"{reason_code}")
        self.connected.set()  # without .reason when it came before any CONNACK

    def _on_log(self, client, userdata, level, buf: str) -> None:  # noqa: ANN001
        from maskd.mqtt.sink import receive_error

        if (why := receive_error(buf)) is not None:
            self.socket_error = why

    def _on_answer(self, client, userdata, mid, reason, properties) -> None:  # noqa: ANN001
        with self._answered:
            self._answers[mid] = reason[0] if isinstance(reason, list) else reason
            self._answered.notify_all()

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ANN001
        if msg.payload == self.token:
            with self._answered:
                self.echoed.add(msg.topic)
                self._answered.notify_all()

    def _wait(self, done: Callable[[], bool], timeout: float) -> bool:
        with self._answered:
            return self._answered.wait_for(done, timeout)

    def _answer(self, mid: int) -> Any:
        """The broker's answer to message ``mid`` (None when none came in time)."""
        self._wait(lambda: mid in self._answers, BROKER_TIMEOUT_S)
        return self._answers.get(mid)

    def connect(self) -> str | None:
        """None once the broker answered CONNECT (see .reason), else why not."""
        from maskd.mqtt import apply_tls, plain_listener_hint
        from maskd.mqtt.credentials import broker_certificate_hint, client_certificate_hint

        self.t0 = time.perf_counter()
        try:
            if self.url.tls:
                apply_tls(self.client, self.mq)  # ValueError: a file changed since the check
            self.client.connect(self.url.host, self.url.port, keepalive=max(5, self.mq.keepalive_s))
        except (OSError, ValueError) as err:
            hint = (plain_listener_hint(self.url, err) or client_certificate_hint(self.mq, str(err))
                    or broker_certificate_hint(self.mq, str(err)))
            return f"{self.url}: cannot connect: {_err(err)}{hint}"
        self.client.loop_start()
        self.started = True
        answered = self.connected.wait(BROKER_TIMEOUT_S)
        if self.reason is not None:
            return None
        if answered:  # a TLS listener hangs up on a plain CONNECT; a broker refusing the
            # client certificate under TLS 1.3 sends its alert in answer to CONNECT
            self.hung_up = True
            why = self.socket_error
            hint = (client_certificate_hint(self.mq, why, handshook=True) if self.url.tls else
                    "; is that port a TLS listener? Then use mqtts://")
            return (f"{self.url}: closed the connection without answering CONNECT"
                    f"{f' ({why})' if why else ''}{hint}")
        # one that keeps the connection and says nothing is stuck (or no broker), as `run` says
        return (f"{self.url}: took the connection but sent no CONNACK within "
                f"{BROKER_TIMEOUT_S:.0f} s: check that an MQTT broker listens there and is not "
                "stuck")

    def publish_rights(self) -> tuple[str, str]:
        """Publish rights under the device's prefix and, with discovery on, under Home
        Assistant's discovery_prefix (an ACL that grants only ``maskd/#`` hides the device from
        Home Assistant); the first failure, else OK. Then whether maskd may subscribe to its
        switches and to Home Assistant's status (a WARN: events flow without them)."""
        import paho.mqtt.client as mqtt

        from maskd.mqtt.credentials import broker_certificate_end
        from maskd.mqtt.homeassistant import UNSEEN_RESTARTS

        ms = (time.perf_counter() - self.t0) * 1e3
        who = f"as {self.mq.username!r}" if self.mq.username else "anonymously"
        done = (f"{self.url}: connected {who}{' over TLS' if self.url.tls else ''} in {ms:.0f} ms, "
                f"MQTT {'5' if self.version == mqtt.MQTTv5 else '3.1.1'}")
        # the broker's own certificate near its end: a warning in the sink's words
        end = broker_certificate_end(self.client)
        cert = expiry_line(BROKER, str(self.url), end, datetime.now(UTC)) if end else None
        if end is not None:
            done += f", the broker's certificate until {end:%Y-%m-%d}"
        said = [cert] if cert else []
        if (beyond := self._beyond_limits()) is not None:
            return FAIL, f"{done}; {beyond}"
        topics = [*self.topics, *(self.discovery_topics if self.mq.discovery else [])]
        for topic in topics:
            verdict, detail = self._may_publish(topic)
            if verdict != OK:
                return verdict, f"{done}; {detail}"
            said.append(detail)
        for topic in self.switch_topics:
            verdict, detail = self._may_receive(topic)
            said.append(detail)
            if verdict != OK:
                return verdict, f"{done}; {'; '.join(said)}"
        if self.mq.discovery:
            answer = self._may_subscribe(self.ha_status)
            if answer is None or answer.is_failure:
                said.append(f"may not subscribe to {self.ha_status} ({answer or 'no SUBACK'}): "
                            f"{UNSEEN_RESTARTS}")
                return WARN, f"{done}; {'; '.join(said)}"
        return WARN if cert else OK, f"{done}; {'; '.join(said)}"

    def _beyond_limits(self) -> str | None:
        """What `run` would send beyond the limits the broker's CONNACK announces (MQTT 5), or
        None: a listener that takes only QoS 0 refuses maskd's QoS 1 last will, and a discovery
        config over the maximum packet size is never sent (Home Assistant never sees maskd)."""
        from maskd.mqtt.sink import discovery_messages, publish_size

        if getattr(self.properties, "MaximumQoS", 2) == 0:
            return ("the broker takes only QoS 0 here (mosquitto: max_qos 0), and maskd sends "
                    "its last will and every message at QoS 1: allow QoS 1 on that listener")
        limit = getattr(self.properties, "MaximumPacketSize", None)
        if limit is None or not self.mq.discovery:
            return None
        for topic, payload in discovery_messages(self.cfg).items():
            if (size := publish_size(topic, payload)) > limit:
                return (f"the broker takes packets of at most {limit} bytes (its maximum packet "
                        f"size) and the discovery config on {topic} is {size} bytes: it is not "
                        "sent and Home Assistant does not find maskd; raise the limit "
                        "(mosquitto: max_packet_size) or set mqtt.discovery: false")
        return None

    def _may_publish(self, topic: str) -> tuple[str, str]:
        """MQTT 5: the PUBACK's reason code. 3.1.1 acknowledges a denied publish like any
        other, so there: subscribe, publish, and see whether the message comes back."""
        import paho.mqtt.client as mqtt

        hint = ("the broker's ACL must let this user publish under Home Assistant's "
                f"discovery_prefix ({self.mq.discovery_prefix}/#) or Home Assistant never sees "
                "the device; or set mqtt.discovery: false" if topic in self.discovery_topics
                else "the broker's ACL must let this user publish under the device's prefix")
        if self.version == mqtt.MQTTv5:
            answer = self._answer(self.client.publish(topic, self.token, qos=1).mid)
            if answer is None:
                return FAIL, f"no PUBACK for a test publish on {topic}"
            if answer.is_failure:
                return FAIL, f"publishing refused on {topic}: {answer} ({hint})"
            return OK, f"may publish on {topic}"
        failed = self._round_trip(topic)
        if failed == "subscribe":
            return WARN, f"cannot check publish rights: may not subscribe to {topic}"
        if failed:
            return FAIL, (f"a test message on {topic} never came back: {hint} (MQTT 3.1.1 "
                          "cannot say whether it was denied)")
        return OK, f"publish rights checked by a round trip on {topic}"

    def _may_receive(self, topic: str) -> tuple[str, str]:
        """Whether maskd would receive its detect/set. A broker may refuse that SUBSCRIBE
        (an ACL of mosquitto's dynamic-security plugin, EMQX, ...): asked on detect/set itself,
        which only listens. Or grant it and never deliver (mosquitto's acl_file): a round trip
        on ``topic``, beside detect/set (a publish there would flip the live switch), tells. A
        WARN: detection and events work without the switch."""
        switch = f"{topic.removesuffix('/doctor')}/set"
        hint = (f"the broker's ACL must let this user subscribe to and read {switch}, or the "
                "detection switch (Home Assistant) does nothing")
        answer = self._may_subscribe(switch)
        if answer is None or answer.is_failure:
            return WARN, f"may not subscribe to {switch} ({answer or 'no SUBACK'}): {hint}"
        failed = self._round_trip(topic)
        if not failed:
            return OK, f"may receive on {topic}"
        what = ("may not subscribe to" if failed == "subscribe"
                else "a test message never came back on")
        return WARN, f"{what} {topic}: {hint}"

    def _may_subscribe(self, topic: str) -> Any:
        """The broker's SUBACK reason for ``topic`` (None: no SUBACK in time), leaving it again
        at once: doctor only listens there, on topics `run` uses."""
        answer = self._answer(self.client.subscribe(topic, qos=1)[1])
        self.client.unsubscribe(topic)
        return answer

    def _round_trip(self, topic: str) -> str | None:
        """Subscribe to ``topic``, publish there and wait for it to come back; None when it
        did, else what failed: "subscribe" (refused or no SUBACK) or "echo"."""
        answer = self._answer(self.client.subscribe(topic, qos=1)[1])
        if answer is None or answer.is_failure:
            return "subscribe"
        self.client.publish(topic, self.token, qos=1)
        return None if self._wait(lambda: topic in self.echoed, 3.0) else "echo"

    def close(self) -> None:
        if self.started:
            self.client.disconnect()
            self.client.loop_stop()


def inspect_outbox(cfg: Config) -> tuple[str, str]:
    """What the MQTT outbox holds and whether it can store events; read-only, so it works while
    the service runs. (verdict, detail)"""
    import sqlite3

    from maskd.clock import boot_id, system_clock
    from maskd.files import READ_ONLY_NOW, read_only_now
    from maskd.outbox import (
        OUTBOX_FILE,
        RESERVE_FILE,
        foreign_outbox,
        newer_outbox,
        row_age,
        sqlite_code,
    )

    mq, d = cfg.mqtt, cfg.state_dir
    if not d.is_dir():
        return INFO, f"{d} does not exist yet"
    free = shutil.disk_usage(d).free
    need = max(mq.outbox_reserve_kb, 64) * 1024
    parts = []
    path = d / OUTBOX_FILE
    if refused := newer_outbox(d) or foreign_outbox(d):  # `run` stops on them, in these words
        return FAIL, refused
    if path.exists() and path.stat().st_size > 0:
        try:
            with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True,
                                                    timeout=2.0)) as db:
                n = db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
                try:  # aged as maskd ages it
                    first = db.execute("SELECT created, boot, uptime FROM outbox ORDER BY id "
                                       "LIMIT 1").fetchone()
                except sqlite3.OperationalError:  # written by an older maskd
                    first = db.execute("SELECT created, NULL, NULL FROM outbox ORDER BY id "
                                       "LIMIT 1").fetchone()
                try:
                    still_open = db.execute("SELECT COUNT(*) FROM open_events").fetchone()[0]
                except sqlite3.OperationalError:  # written by an older maskd
                    still_open = 0
        except sqlite3.Error as err:
            busy = sqlite_code(err) == 5  # SQLITE_BUSY: "locked"
            hint = ("; maskd holds it alone after starting on a full disk, until there is room "
                    "again" if busy else "")
            return FAIL, f"{path}: unreadable: {err}{hint}"
        age = ""
        if first is not None:
            created, boot, uptime = first
            age = f" (oldest {row_age(created, boot, uptime, boot_id(), system_clock()):,.0f} s)"
        parts.append(f"{n} event(s) pending{age}")
        if still_open:
            parts.append(f"{still_open} violation(s) open")
    elif path.exists():  # the empty file a start on a full disk leaves
        parts.append("not created yet (maskd creates it once there is room)")
    else:
        parts.append("empty (created by the first run)")
    reserve = d / RESERVE_FILE
    held = reserve.exists() and reserve.stat().st_blocks * 512 >= mq.outbox_reserve_kb * 1024
    room = f"{free / 2**20:,.0f} MiB" if free >= 10 * 2**20 else f"{free / 1024:,.0f} KiB"
    parts.append(f"{room} free" + (", reserve held" if held else ""))
    detail = f"{path}: {', '.join(parts)}"
    if read_only_now(d):  # `free` says nothing then: no byte can be written
        return FAIL, (f"{detail}; {READ_ONLY_NOW}: new events are kept in memory only (at most "
                      f"{mq.memory_queue_max}); what the broker has not taken by a stop is lost")
    if free < need:
        return FAIL, (f"{detail}; the disk is full: new events are kept in memory only (at most "
                      f"{mq.memory_queue_max}) until {need // 1024} KiB are free")
    return OK, detail


def root_row(path: Path | None) -> Check | None:
    """A WARN row when doctor runs as root (`sudo maskd doctor`): root reads and writes what the
    service's user (the unit's User=, else maskd) may not, so the file rows are root's view, not
    the service's; None as any other user, and where that user is root too or no such account
    is there (maskd run by root, no unit: `sudo -u maskd` would be 'unknown user'; a UID with
    none too: `sudo -u '#4242'` is)."""
    import pwd

    if os.geteuid() != 0:
        return None
    try:
        user = (_unit_values(UNIT_FILE, "User") or ["maskd"])[-1]
    except OSError:
        user = "maskd"
    try:  # User= takes a UID, which sudo -u takes as a name: the account's name it knows
        account = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:  # also User= emptied in a drop-in: root, as with none
        return None
    if account.pw_uid == 0:
        return None
    user = account.pw_name
    config = f" --config {shlex.quote(str(path))}" if path else ""
    return Check("user", WARN, f"run as root, which reads what the service's user {user} may "
                 f"not: the rows below are root's view; run `sudo -u {shlex.quote(user)} maskd "
                 f"doctor{config}`", required=False)


def main(args: argparse.Namespace) -> int:
    path = given_or_installed(args.config)
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(path)
    except ConfigError as err:
        print_line(table([Check("config", FAIL, line) for line in str(err).splitlines()]))
        for line in str(err).splitlines():  # stderr names every failure, as for exit 1
            error_line(f"maskd doctor: {line}")
        return EX_CONFIG
    checks = [Check("config", OK, str(path) if path else "built-in defaults (no --config, no "
                    f"{DEFAULT_CONFIG_PATH})")]
    checks += [row] if (row := root_row(path)) else []
    checks += Doctor(cfg, args.frames, path).run_all()
    print_line(table(checks))
    failed = [c.name for c in checks if c.failed]
    if failed:
        error_line(f"\nrequired checks failed: {', '.join(failed)}")
        return 1
    return 0
