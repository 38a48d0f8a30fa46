"""Local live views of the annotated camera feed: Linux framebuffer (HDMI console), OpenCV
window, and the JPEG/MJPEG feed that the status page (maskd.statuspage) serves.

Every preview is a FrameObserver whose on_frame only drops the newest frame into a one-slot
mailbox; rendering and output happen in the preview's own thread. A slow screen or browser
therefore loses frames, never slows the detection loop.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from maskd.annotate import camera_text, draw_verdicts, draw_zones
from maskd.clock import local_iso
from maskd.config import Config, PreviewConfig, ZonesConfig, shown_path
from maskd.config import parse_listen as _parse_listen
from maskd.env import Environment
from maskd.geometry import letterbox
from maskd.mailbox import Mailbox
from maskd.types import Frame, FrameObserver, LoopStats, Verdict

log = logging.getLogger(__name__)

DEFAULT_FB = Path("/dev/fb0")
DEFAULT_MAX_FPS = 10.0  # preview frame rate cap; the loop itself is not capped
NO_FRAME_SIZE = (640, 480)  # the black picture under the header of a camera lost before any frame


class PreviewUnavailable(RuntimeError):
    """A configured preview cannot work here; the message says why and what to use instead."""


class ListenNotReady(PreviewUnavailable):
    """preview.http names a host that does not resolve, or an address this machine does not
    have, yet: a network that comes up late (DHCP, Wi-Fi after a power cut), not a setup
    error, so `maskd run` exits 75 (EX_TEMPFAIL) and systemd starts it again."""


class FramebufferAbsent(PreviewUnavailable):
    """/dev/fbN is not there now: with the vc4 KMS driver a Pi booted without its HDMI monitor
    has none until one is plugged in. Not a setup error: `run` warns and detects without the
    preview, which opens the device once it is there (FramebufferPreview)."""


FB_DIR = Path("/dev")  # where the kernel makes fbN when a display comes
FB_RETRY_S = 10.0  # a framebuffer absent or failing is tried again this often
RETRYING = f"detection runs without this preview, which is tried again every {FB_RETRY_S:g} s"

RETRIED = "exit 75, systemd starts maskd again (is the network up yet?)"
NAME_WAIT_S = 90.0  # `run` waits this long for a preview.http host name to resolve, then exits 75
NAME_POLL_S = 2.0


# ---------------------------------------------------------------- rendering (pure)


def render(
    frame: Frame,
    verdicts: list[Verdict],
    stats: LoopStats,
    size: tuple[int, int] | None = None,
    zones: ZonesConfig | None = None,
    header: str | None = None,
) -> np.ndarray:
    """The annotated BGR image every preview shows, with the camera's zones outlined; its
    header says when the camera is lost (or the file ended) and this is the last picture
    (``header``, when given, instead: maskd stopped).

    With ``size`` (width, height) the frame is letterboxed to it first and the boxes are drawn
    at that resolution, so lines and text stay crisp on a big screen.
    """
    image = frame.image
    h, w = image.shape[:2]
    region = (0.0, 0.0, float(w), float(h))
    if size is not None:
        image, lb = letterbox(image, *size, centre=True)
        region = tuple(float(c) for c in lb.to_canvas(region))
        verdicts = [
            replace(v, face=replace(v.face, box=tuple(float(c) for c in lb.to_canvas(v.face.box))))
            for v in verdicts
        ]
    out = draw_verdicts(image, verdicts, header=header or camera_text(stats))
    if zones is not None and (zones.include is not None or zones.ignore):
        draw_zones(out, zones.include, zones.ignore, region)  # type: ignore[arg-type]
    return out


# ---------------------------------------------------------------- framebuffer (pure part)

PixelFormat = Literal["RGB565", "XRGB8888", "BGR888"]


@dataclass(frozen=True)
class FbGeometry:
    """Visible size, memory layout and pixel format of a Linux framebuffer."""

    width: int
    height: int
    bits_per_pixel: int
    stride: int  # bytes per row in memory (>= width * bytes per pixel)

    def __post_init__(self) -> None:
        need = self.width * self.bits_per_pixel // 8
        if self.width <= 0 or self.height <= 0 or self.stride < need:
            raise PreviewUnavailable(
                f"unusable geometry {self.width}x{self.height}, "
                f"{self.bits_per_pixel} bits per pixel, rows of {self.stride} bytes (need >= "
                f"{need}): is the HDMI display connected and set up?")

    @property
    def pixel_format(self) -> PixelFormat:
        """The Pi's fbdev formats: 16 bpp is RGB565, 32 bpp is XRGB8888 (bytes B,G,R,X), 24 is BGR."""
        fmt = {16: "RGB565", 24: "BGR888", 32: "XRGB8888"}.get(self.bits_per_pixel)
        if fmt is None:
            raise PreviewUnavailable(f"{self.bits_per_pixel} bits per pixel is not supported "
                                     "(allowed: 16, 24, 32)")
        return fmt  # type: ignore[return-value]

    @property
    def size_bytes(self) -> int:
        return self.stride * self.height


def _read_sys(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as err:
        raise PreviewUnavailable(f"cannot read {path}: {err.strerror or err}") from None


# The messages below name no key: the caller puts the key in front (``preview.framebuffer``, or a
# camera's ``cameras.NAME.preview.framebuffer``), as check_previews does.


def require_fb(fb: Path, device: bool = True) -> None:
    """The framebuffer is there and, with ``device``, is a character device (FbGeometry given
    by a test or tools/bench_preview.py: any file). A missing /dev/fbN raises FramebufferAbsent,
    since it comes with the monitor; anything else raises PreviewUnavailable (a setup mistake:
    a regular /dev/fb0 is left by writing to it while it was absent)."""
    try:
        mode = fb.stat().st_mode
    except FileNotFoundError:
        if fb.parent == FB_DIR and re.fullmatch(r"fb\d+", fb.name):
            raise FramebufferAbsent(f"{fb} does not exist now (no HDMI monitor since boot?); "
                                    f"{RETRYING}") from None
        raise PreviewUnavailable(f"{fb} does not exist, and only {FB_DIR}/fbN comes with a "
                                 "monitor (no HDMI framebuffer; use preview.http instead)") from None
    except OSError as err:
        raise PreviewUnavailable(f"cannot look at {shown_path(fb)}: {err.strerror or err}") from None
    if device and not stat.S_ISCHR(mode):
        what = "a folder" if stat.S_ISDIR(mode) else "a regular file" if stat.S_ISREG(mode) else "no device"
        raise PreviewUnavailable(f"{fb} is not a framebuffer device ({what}; {FB_DIR}/fbN is a "
                                 "character device)")


def read_fb_geometry(fb: Path, sysfs: Path = Path("/sys/class/graphics")) -> FbGeometry:
    """Geometry of /dev/fbN from /sys/class/graphics/fbN/{virtual_size,bits_per_pixel,stride}.

    The visible size comes from the first of ``modes`` ("U:1920x1080p-0") when present, since
    the virtual size may be taller for double buffering; we draw at pan offset 0.
    """
    d = sysfs / fb.name
    if not (d / "virtual_size").exists():
        raise PreviewUnavailable(f"{fb} is not a framebuffer device (no {d / 'virtual_size'})")
    raw = {name: _read_sys(d / name) for name in ("virtual_size", "bits_per_pixel", "stride")}
    try:
        vw, vh = (int(v) for v in raw["virtual_size"].split(","))
        bpp, stride = int(raw["bits_per_pixel"]), int(raw["stride"])
    except ValueError:
        raise PreviewUnavailable(f"{d} holds no usable geometry ("
                                 + ", ".join(f"{k} {v!r}" for k, v in raw.items()) + ")") from None
    w, h = vw, vh
    try:
        first = (d / "modes").read_text().split("\n", 1)[0]
        m = re.search(r"(\d+)x(\d+)", first)
        if m and int(m.group(1)) <= vw and int(m.group(2)) <= vh:
            w, h = int(m.group(1)), int(m.group(2))
    except OSError:
        pass
    return FbGeometry(width=w, height=h, bits_per_pixel=bpp, stride=stride)


def check_framebuffer(fb: Path, geometry: FbGeometry | None = None) -> FbGeometry:
    """The geometry of ``fb`` (or the one given) once ``fb`` exists and maskd can draw in its
    format: what FramebufferPreview checks before it opens the device, and check_previews
    before `run` or `check-config` says a config works here."""
    require_fb(fb, device=geometry is None)
    geometry = geometry or read_fb_geometry(fb)
    geometry.pixel_format  # noqa: B018 - raises on unsupported depths
    return geometry


def to_fb_bytes(bgr: np.ndarray, geometry: FbGeometry) -> bytes:
    """A BGR image, letterboxed to the screen, in the framebuffer's memory layout (rows of ``stride``)."""
    img, _ = letterbox(bgr, geometry.width, geometry.height, centre=True)
    fmt = geometry.pixel_format
    if fmt == "RGB565":
        # OpenCV's "BGR565" is the 16-bit value R<<11 | G<<5 | B stored little-endian: fbdev RGB565.
        pixels = cv2.cvtColor(img, cv2.COLOR_BGR2BGR565).reshape(geometry.height, geometry.width * 2)
    elif fmt == "XRGB8888":
        pixels = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA).reshape(geometry.height, geometry.width * 4)
    else:
        pixels = img.reshape(geometry.height, geometry.width * 3)
    row = pixels.shape[1]
    if geometry.stride < row:
        raise PreviewUnavailable(f"framebuffer: stride {geometry.stride} < row of {row} bytes")
    if geometry.stride == row:
        return pixels.tobytes()
    padded = np.zeros((geometry.height, geometry.stride), np.uint8)
    padded[:, :row] = pixels
    return padded.tobytes()


# ---------------------------------------------------------------- threading base


class ThreadedPreview(FrameObserver):
    """Base for previews: on_frame hands over the frame without copying or waiting.

    The loop's sources hand out a fresh array per frame, so keeping a reference is safe.
    """

    name = "preview"

    def __init__(self, max_fps: float | None = DEFAULT_MAX_FPS) -> None:
        # Rendering and encoding cost CPU the loop could use: a person watching needs no more.
        self.min_interval_s = 1.0 / max_fps if max_fps else 0.0
        self._box: Mailbox[tuple] = Mailbox()
        self._closing = threading.Event()
        self.output_size: tuple[int, int] | None = None  # render at this (width, height)
        self.zones: ZonesConfig | None = None  # outlined on the picture
        self.shown = 0
        self.cpu_s = 0.0  # CPU time this preview's thread spent rendering and showing
        self._thread = threading.Thread(target=self._run, name=f"maskd-{self.name}", daemon=True)
        self._last: tuple | None = None  # (frame, verdicts, stats) handed over last

    def start(self) -> ThreadedPreview:
        self._thread.start()
        return self

    @property
    def dropped(self) -> int:
        return self._box.dropped

    def on_frame(self, frame: Frame, verdicts: list[Verdict], stats: LoopStats) -> None:
        self._last = (frame, list(verdicts), stats)
        self._box.put(self._last)

    def on_wait(self, stats: LoopStats) -> None:
        """No frame comes (a camera lost, a file that ended, a read that blocks for a gap): the
        last picture is shown again under a header that says why, once per change of that line;
        it otherwise stayed on screen with its fps and violations, looking live, for the whole
        outage. A camera lost before its first frame, or not answering yet, gets a black picture
        with that header (the page had none)."""
        if not (stats.camera_lost_since or stats.source_ended or stats.no_frame_since
                or stats.first_frame_since):
            return  # a pause between two frames of a slow camera: its header flickered to 0 fps
        last = self._last
        if last is None:  # lost since the start: a black picture
            blank = np.zeros((NO_FRAME_SIZE[1], NO_FRAME_SIZE[0], 3), np.uint8)
            last = (Frame(blank, 0, time.time()), [], LoopStats())
        if camera_text(stats) != camera_text(last[2]):
            self.on_frame(last[0], last[1], stats)

    def _run(self) -> None:
        try:
            while True:
                item = self._box.get()
                if item is None:
                    if self._box.closed:
                        return
                    continue
                if not self.ready():
                    continue
                t0, c0 = time.monotonic(), time.thread_time()
                self.show(render(*item, size=self.output_size, zones=self.zones))
                if not self.available:
                    continue  # the output went away in show(); ready() tries it again
                self.shown += 1
                self.cpu_s += time.thread_time() - c0
                rest = self.min_interval_s - (time.monotonic() - t0)
                if rest > 0 and self._closing.wait(rest):
                    return
        except Exception:  # a broken preview must not take the daemon down
            log.exception("%s preview stopped", self.name)
        finally:
            try:
                if self._closing.is_set() and self._last is not None and self.available:
                    self.farewell(self._last)
            except Exception:  # noqa: BLE001 - the stop goes on
                log.exception("%s preview: the last picture could not be shown", self.name)
            self.teardown()

    def farewell(self, last: tuple) -> None:
        """At a stop: what the output keeps showing once maskd is gone (nothing here: a window
        closes, a stream ends)."""

    def ready(self) -> bool:
        """Whether the output can take a picture now; a frame is not rendered otherwise."""
        return True

    @property
    def available(self) -> bool:
        """Whether the output is there now (a framebuffer may be away for a while)."""
        return True

    def show(self, image: np.ndarray) -> None:
        raise NotImplementedError

    def teardown(self) -> None:
        """Release the output; runs in the preview thread."""

    def close(self) -> None:
        self._closing.set()
        self._box.close()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


# ---------------------------------------------------------------- framebuffer


class FramebufferPreview(ThreadedPreview):
    """Writes annotated frames to a Linux framebuffer (HDMI console without a desktop).

    A framebuffer absent at start (FramebufferAbsent: no monitor since boot), or that fails a
    write later, stops only this preview, with a warning: detection goes on, and the device is
    opened again every FB_RETRY_S once it is there (monitor plugged in), logged once each way.
    """

    name = "framebuffer"
    geometry: FbGeometry  # set once the device is open

    def __init__(self, path: Path, geometry: FbGeometry | None = None,
                 max_fps: float | None = DEFAULT_MAX_FPS, key: str = "preview.framebuffer") -> None:
        super().__init__(max_fps)
        self.path, self.key, self._given = path, key, geometry
        self._fd: int | None = None
        self._retry_at = 0.0
        self._said: str | None = None  # the reason last logged while the screen is away
        try:  # a setup mistake fails now, not in the thread
            self._open()
        except FramebufferAbsent as err:
            self._away(str(err))
        except PreviewUnavailable as err:
            raise PreviewUnavailable(f"{key}: {err}") from None

    def _open(self) -> None:
        """Check and open the device (raises PreviewUnavailable, FramebufferAbsent when gone)."""
        geometry = check_framebuffer(self.path, self._given)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise FramebufferAbsent(f"{self.path} went away while opening it; {RETRYING}") from None
        except OSError as err:
            raise PreviewUnavailable(f"cannot open {self.path}: {err.strerror} "
                                     "(the maskd user needs the 'video' group)") from None
        self.geometry, self._fd = geometry, fd
        self.output_size = (geometry.width, geometry.height)

    def _away(self, why: str) -> None:
        """The screen is unusable now: say so once per reason, try again later."""
        if why != self._said:
            log.warning("%s: %s", self.key, why if RETRYING in why else f"{why}; {RETRYING}")
            self._said = why
        self._retry_at = time.monotonic() + FB_RETRY_S

    def ready(self) -> bool:
        if self._fd is None and time.monotonic() >= self._retry_at:
            try:
                self._open()
            except PreviewUnavailable as err:
                self._away(str(err))
        return self._fd is not None

    @property
    def available(self) -> bool:
        return self._fd is not None

    def show(self, image: np.ndarray) -> None:
        assert self._fd is not None
        try:
            os.pwrite(self._fd, to_fb_bytes(image, self.geometry), 0)
        except OSError as err:  # the display went away (ENODEV, ENXIO, EIO)
            self.teardown()
            self._away(f"writing {self.path} failed: {err.strerror or err}")
            return
        if self._said is not None:  # said once it works: a device that opens may still fail
            log.info("%s: %s is back (%dx%d); showing the preview again", self.key, self.path,
                     self.geometry.width, self.geometry.height)
            self._said = None

    def farewell(self, last: tuple) -> None:
        """The screen keeps its last picture after the process ends (nothing redraws the
        console): it showed '14.8 fps | 0 active violations' over it for as long as maskd was
        stopped, looking live. It now shows that picture, without its boxes, under a line
        saying maskd stopped and when."""
        frame, _, stats = last
        self.show(render(frame, [], stats, size=self.output_size, zones=self.zones,
                         header=f"maskd stopped at {local_iso(time.time())}; not detecting"))

    def teardown(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# ---------------------------------------------------------------- window


def opencv_gui_backend(build_info: str | None = None) -> str | None:
    """The HighGUI backend compiled into this OpenCV (e.g. 'GTK3', 'QT5'), None for headless builds.

    opencv-python-headless reports 'GUI: NONE'; older builds list 'GTK+: YES' under 'GUI:'.
    """
    info = cv2.getBuildInformation() if build_info is None else build_info
    lines = info.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"(\s*)GUI:\s*(.*)$", line)
        if not m:
            continue
        value = m.group(2).strip()
        if value:
            return None if value.upper() == "NONE" else value
        indent = len(m.group(1))
        for sub in lines[i + 1:]:
            if len(sub) - len(sub.lstrip()) <= indent:  # the next section starts
                break
            sm = re.match(r"\s+(GTK\+?\w*|QT\w*|Win32 UI|Cocoa|Wayland)\s*:\s*YES", sub, re.IGNORECASE)
            if sm:
                return sm.group(1).strip()
        return None
    return None


NO_DISPLAY = "no desktop session ($DISPLAY / $WAYLAND_DISPLAY unset); use preview.framebuffer or preview.http"


def require_gui() -> None:
    """This OpenCV can open a window (else PreviewUnavailable, saying what to use instead)."""
    if opencv_gui_backend() is None:
        raise PreviewUnavailable(
            "the installed OpenCV has no GUI support (opencv-python-headless); install "
            "opencv-python or apt python3-opencv, or use preview.framebuffer / preview.http")


class WindowPreview(ThreadedPreview):
    """An OpenCV HighGUI window; all GUI calls stay in the preview thread."""

    name = "window"
    title = "maskd"

    def __init__(self, max_fps: float | None = DEFAULT_MAX_FPS) -> None:
        super().__init__(max_fps)
        try:
            require_gui()
        except PreviewUnavailable as err:
            raise PreviewUnavailable(f"preview.window: {err}") from None
        if not Environment.read().display:
            raise PreviewUnavailable(f"preview.window: {NO_DISPLAY}")

    def show(self, image: np.ndarray) -> None:
        cv2.imshow(self.title, image)
        cv2.waitKey(1)

    def teardown(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass


# ---------------------------------------------------------------- MJPEG (the status page's live view)

BOUNDARY = "maskdframe"


def parse_listen(value: str) -> tuple[str, int]:
    """'8080' or ':8080' -> ('127.0.0.1', 8080); 'HOST:PORT' and '[v6]:PORT' as given."""
    try:
        return _parse_listen(value)
    except ValueError as err:
        raise PreviewUnavailable(f"preview.http: {value!r} {err}") from None


def _family(host: str) -> socket.AddressFamily:
    """The status page's socket family for ``host``: IPv6 for a v6 literal, else IPv4."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


LISTEN_RETRY_S = 30.0  # a preview.http port another program holds is tried again this often


def port_in_use(listen: str) -> str:
    """What `run` logs and doctor warns of a preview.http port another program holds: maybe one
    that lets it go (started before maskd at boot), maybe a setup clash; detection runs either
    way, and the page is served once the port is free."""
    return (f"preview.http: cannot listen on {listen}: Address already in use (by another "
            f"program?); detection runs without the status page, which tries again every "
            f"{LISTEN_RETRY_S:g} s")


def privileged_port(listen: str) -> str | None:
    """Why the service cannot listen on ``listen``'s port whoever checks it, or None: a port
    below net.ipv4.ip_unprivileged_port_start (1024) is root's alone, and the unit gives maskd
    no capability (CapabilityBoundingSet=). check-config warns, doctor and `run` say it."""
    try:
        start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):  # not Linux
        start = 1024
    if not 0 < parse_listen(listen)[1] < start:  # 0: the system picks a free one
        return None
    host = listen.rpartition(":")[0] or "127.0.0.1"
    return (f"a port below {start} needs a privilege the service does not have (no "
            f"capabilities); use one from {start} up, e.g. {host}:8080")


def listen_refused(listen: str, err: OSError) -> str:
    """What `run` stops on (78) and doctor fails of a preview.http it cannot listen on
    ('Permission denied' alone did not say why a port below 1024 is refused)."""
    why = f"preview.http: cannot listen on {listen}: {err.strerror or err}"
    if err.errno == errno.EACCES and (tail := privileged_port(listen)):
        why += f": {tail}"
    return why


def name_unknown(host: str, err: socket.gaierror) -> bool:
    """Whether the resolver answered that ``host`` does not exist (EAI_NONAME: a typo, or a
    name never given), not that it could not ask (EAI_AGAIN: no network yet, retried). A
    `.local` name is mDNS, which says "no such name" for this Pi's own name until its
    interface is up (Wi-Fi back after a power cut may take hours), so it is always waited for."""
    return err.errno == socket.EAI_NONAME and not host.rstrip(".").lower().endswith(".local")


def no_such_name(key: str, host: str, err: socket.gaierror) -> str:
    """What check-config, doctor and `run` (after its wait) say of a name that does not exist."""
    return (f"{key}.http: {host} does not exist (the name server answers: {err.strerror}): a "
            "typo? Name this machine (its name, an IP address of it, or 0.0.0.0 for all)")


def listen_warning(listen: str, key: str = "preview") -> str | None:
    """Why preview.http cannot be served *now* although the setting is fine: a host name
    that does not resolve, an address this machine does not have (yet). None when it can;
    check-config and doctor warn with it, `run` waits or listens anyway (IP_FREEBIND).
    Raises PreviewUnavailable for a name the resolver says does not exist (`name_unknown`),
    which `run` refuses too, after its wait."""
    host, port = parse_listen(listen)
    if host.strip("[]") in ("", "0.0.0.0", "::"):
        return None
    family = _family(host)
    try:
        infos = socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    except socket.gaierror as err:
        if name_unknown(host, err):
            raise PreviewUnavailable(no_such_name(key, host, err)) from None
        return (f"{key}.http: {host} does not resolve now ({err.strerror}); `maskd run` "
                f"waits {NAME_WAIT_S:g} s for it, then {RETRIED}")
    address = infos[0][4]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((address[0], 0, *address[2:]))
        except OSError as err:
            if err.errno == errno.EADDRNOTAVAIL:
                return (f"preview.http: {address[0]} is not an address of this machine now; "
                        "the status page listens anyway and answers once it is")
    return None


def wait_for_listen_names(cfg: Config, wait_s: float | None = None,
                          waiting: Callable[[str], None] | None = None,
                          cancelled: Callable[[], bool] = lambda: False) -> None:
    """Wait up to ``wait_s`` for every preview.http host name to resolve (a late network),
    so a boot before DHCP does not restart maskd at once and hit systemd's start limit;
    raises ListenNotReady, one line, if one still does not, or PreviewUnavailable (exit 78,
    not retried) where the resolver says that name does not exist (`name_unknown`). ``waiting`` hears each one
    waited for (the systemd STATUS); ``cancelled`` (a stop signal) ends the wait early."""
    wait_s = NAME_WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    for key, p in cfg.previews():
        if not p.http:
            continue
        host, port = parse_listen(p.http)
        said = False
        while True:
            try:
                socket.getaddrinfo(host, port, _family(host), socket.SOCK_STREAM)
                break
            except socket.gaierror as err:
                if cancelled():
                    return
                if time.monotonic() >= deadline:
                    if name_unknown(host, err):  # a mistake, not a late network: exit 78
                        raise PreviewUnavailable(f"{no_such_name(key, host, err)} (after "
                                                 f"{wait_s:g} s)") from None
                    raise ListenNotReady(f"{key}.http: {host} does not resolve ({err.strerror}) "
                                         f"after {wait_s:g} s; {RETRIED}") from None
                if not said:
                    said = True
                    log.warning("%s.http: %s does not resolve yet (%s); waiting up to %g s",
                                key, host, err.strerror, wait_s)
                    if waiting is not None:
                        waiting(f"waiting for {host} to resolve ({key}.http)")
            time.sleep(max(0.0, min(NAME_POLL_S, deadline - time.monotonic())))


def encode_jpeg(image: np.ndarray, quality: int = 80) -> bytes | None:
    """A BGR image as JPEG bytes; 4:4:4, since chroma subsampling would smear the 1-px red and
    green box lines into grey."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality,
                                           cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                           cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])
    return buf.tobytes() if ok else None


STILL_WAIT_S = 5.0  # MjpegFeed.close waits this long for a still being rendered


class MjpegFeed(ThreadedPreview):
    """One camera's annotated frames as JPEGs for HTTP clients (maskd.statuspage serves them).

    For the MJPEG stream the preview thread encodes only while a stream client is watching
    (``watching``); each client sends the newest JPEG when it is ready, so a slow client skips
    frames instead of queueing them. ``frame_jpeg`` (a single picture) renders the newest frame
    the loop handed over, on request, whether or not a stream is running: it is never older
    than the loop's latest frame.
    """

    name = "mjpeg"

    def __init__(self, jpeg_quality: int = 80, max_fps: float | None = DEFAULT_MAX_FPS) -> None:
        super().__init__(max_fps)
        self.jpeg_quality = jpeg_quality
        self._cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._seq = 0
        self._watchers = 0
        self._stopping = False
        self._have_frame = threading.Event()
        # (the item it was made from, JPEG, time.monotonic() when it was rendered)
        self._still: tuple[tuple, bytes, float] | None = None
        self._still_at = -float("inf")  # when the latest still was begun (the rate's clock)
        self._still_lock = threading.Lock()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def seq(self) -> int:
        """How many stream JPEGs were encoded so far."""
        return self._seq

    def on_frame(self, frame: Frame, verdicts: list[Verdict], stats: LoopStats) -> None:
        self._last = (frame, list(verdicts), stats)  # a reference, no copy
        self._have_frame.set()
        if self._watchers:  # no stream client: nothing to render in the preview thread
            self._box.put(self._last)

    def show(self, image: np.ndarray) -> None:
        jpeg = encode_jpeg(image, self.jpeg_quality)
        if jpeg is None:
            return
        with self._cond:
            self._jpeg = jpeg
            self._seq += 1
            self._cond.notify_all()

    def next_jpeg(self, after: int, timeout: float) -> tuple[int, bytes] | None:
        """The first stream JPEG newer than sequence ``after``, waiting up to ``timeout`` s."""
        with self._cond:
            self._cond.wait_for(lambda: self._seq > after or self._stopping, timeout)
            if self._seq > after and self._jpeg is not None:
                return self._seq, self._jpeg
            return None

    @property
    def watchers(self) -> int:
        """Stream clients now (the page re-requests its stream when it sees none)."""
        return self._watchers

    def watch(self, delta: int) -> None:
        """A stream client arrives (+1) or leaves (-1)."""
        with self._cond:
            self._watchers += delta

    def frame_jpeg(self, timeout: float = 5.0) -> bytes | None:
        """The newest frame, annotated, as a JPEG (None when no frame came within ``timeout``).

        Rendered here, in the caller's thread, from the loop's latest frame; the same frame is
        encoded only once however often it is asked for (a file source that ended keeps its
        last frame). At most ``max_fps`` stills are rendered a second, as for the stream: one
        asked for sooner waits for the rest of that interval, and every request waiting then
        gets the still rendered after it came. Rendering takes CPU from the loop: one client
        asking in a tight loop (a script, a scanner) had a still rendered for each of its
        requests, about 30 a second from the demo loop on the build machine.
        """
        if not self._have_frame.wait(timeout):
            return None
        asked = time.monotonic()
        with self._still_lock:
            if self._still is not None and (self._still[0] is self._last
                                            or self._still[2] >= asked):
                return self._still[1]  # the newest frame, or one rendered since it was asked
            if self._stopping:  # the process is ending: no new render (see close)
                return self._still[1] if self._still is not None else None
            rest = self._still_at + self.min_interval_s - time.monotonic()
            if rest > 0:
                time.sleep(rest)
            return self._render_still()

    def _render_still(self) -> bytes | None:
        """Render and keep a still of the newest frame; under ``_still_lock``."""
        item = self._last
        assert item is not None
        self._still_at = begun = time.monotonic()
        jpeg = encode_jpeg(render(*item, size=self.output_size, zones=self.zones),
                           self.jpeg_quality)
        if jpeg is not None:
            self._still = (item, jpeg, begun)
        return jpeg

    def close(self) -> None:
        """Stop the stream, and wait (up to STILL_WAIT_S) for a still a client's thread is
        rendering: those threads are daemons, and one still inside OpenCV when the process
        exits aborts it ("terminate called without an active exception", exit -6, after a
        clean stop), which a /frame.jpg or stream client at the moment of a SIGTERM did."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._still_lock.acquire(timeout=STILL_WAIT_S):  # no render begins after this
            try:  # but the still kept is of the newest frame (a map's camera that ended first)
                if self._last is not None and (self._still is None or
                                               self._still[0] is not self._last):
                    self._render_still()
            finally:
                self._still_lock.release()
        super().close()


# ---------------------------------------------------------------- construction


def resolve_preview_flag(preview: PreviewConfig, fb: Path = DEFAULT_FB) -> PreviewConfig:
    """What `maskd run --preview` means: the framebuffer when it exists, else a window when
    OpenCV has GUI support, else an error telling the user about preview.http."""
    if fb.exists():
        return preview.model_copy(update={"framebuffer": fb})
    if opencv_gui_backend() is not None:
        return preview.model_copy(update={"window": True})
    raise PreviewUnavailable(
        f"--preview: no framebuffer at {fb} and the installed OpenCV has no GUI support; "
        "set preview.http: 127.0.0.1:8080 in the config and open http://127.0.0.1:8080/ in a browser")


def check_previews(cfg: Config, strict: bool = True) -> list[str]:
    """Check every camera's framebuffer and window on this machine before anything opens:
    `run` calls it at start and `check-config` too, so both refuse a config with the same line.

    Raises PreviewUnavailable, one line naming the key, for what no process here can use: a
    framebuffer path that is no framebuffer (a folder, a regular file, a missing path not named
    /dev/fbN) or has no usable geometry, an OpenCV without GUI support. What depends on the
    user or the session (a framebuffer this user cannot write, no desktop session), which the
    service may have when the checking shell has not, raises too when ``strict`` (`run`); else
    it is returned, one line each (`check-config` warns). A /dev/fbN that is missing now (no
    monitor since boot) is returned either way, never raised: `run` detects without it and
    opens it once it comes (FramebufferPreview), so a Pi booted without its monitor still works.
    """
    lacking: list[str] = []
    later: list[str] = []
    for key, p in cfg.previews():
        try:
            if p.framebuffer is not None:
                check_framebuffer(p.framebuffer)
                if not os.access(p.framebuffer, os.W_OK):
                    lacking.append(f"{key}.framebuffer: {p.framebuffer} is not writable by this "
                                   "user (the maskd user needs the 'video' group)")
        except FramebufferAbsent as err:
            later.append(f"{key}.framebuffer: {err}")
        except PreviewUnavailable as err:
            raise PreviewUnavailable(f"{key}.framebuffer: {err}") from None
        if p.window:
            try:
                require_gui()
            except PreviewUnavailable as err:
                raise PreviewUnavailable(f"{key}.window: {err}") from None
            if not Environment.read().display:
                lacking.append(f"{key}.window: {NO_DISPLAY}")
    if strict and lacking:
        raise PreviewUnavailable(lacking[0])
    return later + ([] if strict else lacking)


def make_observers(cfg: Config, key: str = "preview") -> list[FrameObserver]:
    """Start every preview that cfg.preview (``key`` in the file) asks for (raises
    PreviewUnavailable with the reason).

    preview.annotate_dir is not a live view; the run loop writes that clip itself.
    preview.http is the status page (maskd.statuspage), wired by the service per address.
    """
    p = cfg.preview
    started: list[ThreadedPreview] = []
    try:
        views: list[ThreadedPreview] = []
        if p.framebuffer is not None:
            views.append(FramebufferPreview(p.framebuffer, key=f"{key}.framebuffer"))
        if p.window:
            views.append(WindowPreview())
        for view in views:
            view.zones = cfg.zones
            started.append(view.start())
    except Exception:
        for obs in started:
            obs.close()
        raise
    return list(started)

