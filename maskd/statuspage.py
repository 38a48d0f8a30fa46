"""The status page: a small local web page per ``preview.http`` address, with the live view of
every camera wired to it, the active violations, the last 50 events and the health numbers.

    /                the page (HTML; it polls the two JSON documents below once a second)
    /api/status      health and active violations, JSON
    /api/events      the last 50 events, newest first, JSON
    /metrics         Prometheus text (prometheus-client, a private registry)
    /stream.mjpg     a camera's live view, multipart JPEG (``?camera=NAME``; default: the first)
    /frame.jpg       a camera's newest frame, one JPEG (``?camera=NAME``)

One server per address: cameras whose resolved config has the same ``preview.http`` share it
(in the ``cameras:`` layout the top-level ``preview`` is the first camera's). Each camera is a
``CameraView``: an EventSink (events, stats) and a FrameObserver (frames) of that camera's loop,
cheap on the loop's side; rendering, encoding and HTTP run in the server's threads.

Bound beyond loopback, every request needs the basic-auth password (any user name) or the bearer
token from ``preview.http_password_file`` / ``preview.http_token_file`` (maskd.config refuses
a non-loopback address without one). A token may also come as ``?token=`` once; the answer then
sets an HttpOnly cookie so the page's own requests carry it (and the page passes its
``?token=`` on with them: no cookie goes from a frame of another site).
Bound to loopback nothing is asked, but the Host header must name loopback (a DNS-rebinding
page elsewhere gets 403).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import html
import http.client
import json
import logging
import math
import select
import socket
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterator
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from maskd import __version__, watch
from maskd.clock import Clock, Uptime, system_clock
from maskd.config import Config, PreviewConfig, is_loopback, read_secret, read_token, redact
from maskd.lograte import RateLimitedLog, Throttle
from maskd.preview import (
    BOUNDARY,
    LISTEN_RETRY_S,
    RETRIED,
    ListenNotReady,
    MjpegFeed,
    PreviewUnavailable,
    listen_refused,
    listen_warning,
    parse_listen,
    port_in_use,
)
from maskd.types import (
    EventSink,
    FaceCounts,
    Frame,
    FrameObserver,
    LoopStats,
    Verdict,
    ViolationEvent,
)
from maskd.watch import WatchedFiles

log = logging.getLogger(__name__)

MAX_EVENTS = 50  # the page's event list
IDLE_TIMEOUT_S = 20.0  # a connection that sends no request (or takes no data) this long is closed
MAX_CONNECTIONS = 32  # open at once (stream viewers included); more are answered 503
MAX_HEADER_BYTES = 64 * 1024  # a request's header lines in all; more are answered 431
SLOW_REQUEST_S = 1.0  # when full, a connection still without its request after this is cut
LISTEN_BACKLOG = 512  # connections the kernel holds until accepted (each then served or 503)
MS_SMOOTHING = 0.1  # per-stage milliseconds: exponential average over frames
COOKIE = "maskd_token"  # + "_<port>" (cookie_name); the bare name is still read (set until 2026-12)
# Guessing the page's password: this many different wrong passwords or tokens from one address
# within GUESS_WINDOW_S, and its requests get 429 for GUESS_WINDOW_S (a strong token stands
# any rate; a password a person chose does not stand thousands a second).
MAX_GUESSES = 10
GUESS_WINDOW_S = 60.0
MAX_GUESSERS = 1024  # addresses remembered at once (the oldest is forgotten)


def _iso(t: float | None) -> str | None:
    """Local time with its UTC offset, to the millisecond."""
    if t is None:
        return None
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")


# ---------------------------------------------------------------- authentication


def _digest(secret: bytes | None) -> bytes | None:
    # compared as SHA-256 digests with hmac.compare_digest: constant time, whatever the length
    return None if secret is None else hashlib.sha256(secret).digest()


_READ = {"password": read_secret, "token": read_token}  # preview.http_<kind>_file's rules


class Credentials:
    """What a request must carry when the page is bound beyond loopback (none: open). Read
    from files (``from_config``), it follows them: a password or token rotated on disk is
    asked for from the next requests on, without a restart; a changed file that holds none
    (empty, a token with a space) leaves the last one in use, with one warning and a fault on
    the page (maskd.watch)."""

    def __init__(self, password: bytes | None = None, token: bytes | None = None) -> None:
        self._digests = {"password": _digest(password), "token": _digest(token)}
        self._files: dict[str, WatchedFiles[bytes | None]] = {}
        self._lock = threading.Lock()
        self._look = Throttle(watch.LOOK_EVERY_S)  # every request asks

    @classmethod
    def from_config(cls, p: PreviewConfig) -> Credentials:
        paths = {"password": p.http_password_file, "token": p.http_token_file}
        creds = cls()
        for kind, path in paths.items():
            if path is None:
                continue
            try:
                digest = _digest(_READ[kind](path))
            except ValueError as err:
                raise PreviewUnavailable(f"preview.http_{kind}_file: {err}") from None
            creds._digests[kind] = digest
            creds._files[kind] = WatchedFiles([Path(path)], kind, digest, "status page",
                                              "the page goes on")
        return creds

    def _refresh(self) -> None:
        """Files changed since they were read are read again (under the lock), once a second
        at most: every request asks."""
        if not (self._files and self._look.due()):
            return
        for k, files in self._files.items():
            if files.reload(lambda k=k, f=files: _digest(_READ[k](f.paths[0])),
                            f"preview.http_{k}_file "):
                self._digests[k] = files.value
                log.info("status page: read the changed preview.http_%s_file; requests need the "
                         "new %s from now on", k, k)

    def _now(self, kind: str) -> bytes | None:
        """The digest a request is held against now."""
        with self._lock:
            self._refresh()
            return self._digests[kind]

    def faults(self) -> list[str]:
        """Changed files that do not hold a password or token (the old one is still asked)."""
        with self._lock:
            self._refresh()
            return [line for files in self._files.values() for line in files.fault()]

    @property
    def required(self) -> bool:
        return any(d is not None for d in self._digests.values())

    def key(self) -> tuple:
        """Cameras sharing a page must ask for the same: the same files (they may change), or
        the same fixed secrets."""
        return (tuple((k, f.paths) for k, f in sorted(self._files.items())) if self._files
                else tuple(sorted(self._digests.items())))

    @staticmethod
    def _same(given: bytes, digest: bytes | None) -> bool:
        return digest is not None and hmac.compare_digest(hashlib.sha256(given).digest(), digest)

    def token_ok(self, token: str | None) -> bool:
        return token is not None and self._same(token.encode("utf-8", "replace"), self._now("token"))

    def allows(self, authorization: str | None, cookies: list[str], query_token: str | None) -> bool:
        """Whether a request carries the password or the token: ``cookies`` are the values of
        this page's token cookie (``cookie_name``)."""
        if not self.required:
            return True
        scheme, _, value = (authorization or "").strip().partition(" ")
        value = value.strip()
        if scheme.lower() == "basic" and self._digests["password"] is not None:
            try:
                _user, _, password = base64.b64decode(value, validate=True).partition(b":")
            except ValueError:
                return False
            return self._same(password, self._now("password"))
        if scheme.lower() == "bearer":
            return self.token_ok(value)
        if any(self.token_ok(v) for v in cookies):
            return True
        return self.token_ok(query_token)

    def hint(self) -> str:
        """What a person who reached the page without its secret needs (no secret in it)."""
        ways = (["the page's password (any user name)"] if self._digests["password"] else []) + (
            ["its token (?token=... in the address, once)"] if self._digests["token"] else [])
        return "open this page with " + " or ".join(ways)

    def challenge(self) -> str:
        if self._digests["password"] is not None:
            return 'Basic realm="maskd", charset="UTF-8"'
        return 'Bearer realm="maskd"'


class Guesses:
    """Wrong credentials per client address. Only different values count: a page left open
    with a cookie of the old token after a rotation, or Prometheus with the old one, repeats
    the same value every second and must not lock its owner out; a guesser's values differ."""

    def __init__(self, now: Callable[[], float] = time.monotonic) -> None:
        self.now = now  # seconds, for the windows (a test steps it)
        # address: when its window began, the different wrong values in it, locked until
        self._by: OrderedDict[str, tuple[float, set[bytes], float]] = OrderedDict()
        self._lock = threading.Lock()

    def locked(self, addr: str) -> float:
        """Seconds this address must still wait (0: none)."""
        now = self.now()
        with self._lock:
            entry = self._by.get(addr)
            return max(0.0, entry[2] - now) if entry else 0.0

    def wrong(self, addr: str, offered: bytes) -> bool:
        """Count a request that carried a wrong credential; True when it locks the address."""
        digest, now = hashlib.sha256(offered).digest(), self.now()
        with self._lock:
            start, values, until = self._by.pop(addr, (now, set(), 0.0))
            if now - start > GUESS_WINDOW_S or 0 < until <= now:  # a window over, a lock served
                start, values, until = now, set(), 0.0
            values.add(digest)
            locks = len(values) >= MAX_GUESSES and until <= now
            self._by[addr] = (start, values, now + GUESS_WINDOW_S if locks else until)
            while len(self._by) > MAX_GUESSERS:
                self._by.popitem(last=False)
            return locks

    def right(self, addr: str) -> None:
        """A request that got in: its owner's typos so far are forgiven."""
        with self._lock:
            self._by.pop(addr, None)


def cookie_name(port: int) -> str:
    """The token cookie of the page on ``port``: a browser keeps cookies per host, not per
    port, so one name for every page let two pages with different tokens (two cameras' ports,
    two maskd) replace each other's cookie, each logging the other out."""
    return f"{COOKIE}_{port}"


def token_cookies(header: str | None, port: int) -> list[str]:
    """The values of the page's token cookie in a Cookie header, its own name's first."""
    return [*cookie_values(header, cookie_name(port)), *cookie_values(header, COOKIE)]


def cookie_values(header: str | None, name: str) -> list[str]:
    """The values of one cookie in a Cookie header. By hand: SimpleCookie drops the whole
    header when any other cookie (another web app on the same host) holds a space or a quote."""
    out = []
    for piece in (header or "").split(";"):
        key, eq, value = piece.partition("=")
        if eq and key.strip() == name:
            out.append(value.strip().strip('"'))
    return out


def local_host(header: str | None) -> bool:
    """True for a Host header naming this machine's loopback (any port), or none (HTTP/1.0;
    browsers always send one). A page bound to loopback has no password: any other name is
    a web page whose DNS name was rebound to 127.0.0.1 to read the camera through the
    visitor's browser."""
    if header is None:
        return True
    host = header.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".") == "localhost" or (host != "" and is_loopback(host))


# ---------------------------------------------------------------- one camera


class CameraView(EventSink, FrameObserver):
    """One camera on a status page: its events, stats and frames, handed over without waiting."""

    label = "status page"

    def __init__(self, server: StatusServer, name: str, detector: str, classifier: str,
                 feed: MjpegFeed) -> None:
        self.server = server
        self.name = name
        self.detector = detector
        self.classifier = classifier
        self.feed = feed
        self.stats = LoopStats()  # the latest frame's (or the wait's)
        self.ms: dict[str, float] = {}  # smoothed per-stage milliseconds
        self.counts: FaceCounts | None = None
        self.last_frame_t: float | None = None  # wall clock of the latest frame handed over
        self._last_frame_boot = 0.0  # and the time since boot then, which ages it
        self._closed = False

    # EventSink
    def emit(self, event: ViolationEvent) -> None:
        self.server.add_event(event)

    def on_state(self, state: FaceCounts) -> None:
        self.counts = state

    def on_stats(self, stats: LoopStats) -> None:
        pass  # the page keeps its own per-frame numbers (on_frame)

    def flush(self, timeout: float, cancel: threading.Event | None = None) -> bool:
        return True

    # FrameObserver
    def on_frame(self, frame: Frame, verdicts: list[Verdict], stats: LoopStats) -> None:
        self.feed.on_frame(frame, verdicts, stats)
        ms = dict(self.ms)
        for k, v in stats.ms.items():
            ms[k] = v if k not in ms else ms[k] + MS_SMOOTHING * (v - ms[k])
        self.ms = ms  # replaced, never changed in place: readers in other threads see a whole dict
        self.stats = stats
        self.last_frame_t, self._last_frame_boot = self.server.clock()

    def on_wait(self, stats: LoopStats) -> None:
        self.feed.on_wait(stats)  # the live view's header says why no frame comes
        self.stats = stats

    def close(self) -> None:
        """Called by the loop as observer and as sink; the first call counts."""
        if self._closed:
            return
        self._closed = True
        self.feed.close()
        self.server.release(self)

    def last_frame_age(self) -> float | None:
        """Seconds since the latest frame, by the time since boot (a wall clock step ages nothing)."""
        if self.last_frame_t is None:
            return None
        return self.server.clock()[1] - self._last_frame_boot

    def status(self) -> dict:
        s = self.stats
        age = self.last_frame_age()
        d = s.to_dict()
        d.pop("ms", None)
        return {
            "camera": self.name,
            **d,
            "fps": None if s.fps is None else round(s.fps, 2),
            "ms": {k: round(v, 2) for k, v in self.ms.items()},
            "last_frame": _iso(self.last_frame_t),
            "last_frame_age_s": None if age is None else round(age, 2),
            "counts": None if self.counts is None else self.counts.to_dict(),
            "viewers": self.feed.watchers,  # /stream.mjpg clients
            "detector": self.detector,
            "classifier": self.classifier,
        }


# ---------------------------------------------------------------- Prometheus


class _Metrics:
    """Collects the page's numbers at scrape time (registered in the server's own registry)."""

    def __init__(self, server: StatusServer) -> None:
        self.server = server

    def collect(self) -> Iterator:
        srv = self.server
        info = InfoMetricFamily("maskd", "maskd version, detector and classifier",
                                labels=["camera"])
        up = GaugeMetricFamily("maskd_uptime_seconds", "Seconds since the status page started")
        up.add_metric([], srv.uptime())
        yield up
        g = {name: GaugeMetricFamily(f"maskd_{name}", text, labels=["camera"]) for name, text in [
            ("fps", "Frames per second (smoothed)"),
            ("active_violations", "Open violations"),
            ("violations_in_view", "Open violations whose face is detected in the latest frame"),
            ("detect_enabled", "1 while detection runs (the switch and the schedule allow it)"),
            ("camera_up", "0 while a live camera is lost"),
            ("last_frame_age_seconds", "Seconds since the latest frame"),
            ("problems", "Lines of Home Assistant's problem entity: the camera's outage, faults"),
        ]}
        c = {name: CounterMetricFamily(f"maskd_{name}", text, labels=["camera"]) for name, text in [
            ("frames", "Frames processed"),
            ("skipped_frames", "Live frames the loop had no time for"),
            ("faces", "Faces detected"),
            ("faces_classified", "Faces classified"),
            ("faces_cached", "Faces whose cached score was reused"),
            ("violations", "Violations started"),
            ("events", "Violation events emitted (start, update, end)"),
            ("camera_reopens", "Times a live camera was reopened"),
        ]}
        stage = GaugeMetricFamily("maskd_stage_seconds", "Time per frame in a stage (smoothed)",
                                  labels=["camera", "stage"])
        for view in srv.views():
            s, cam = view.stats, [view.name]
            info.add_metric(cam, {"version": __version__, "detector": view.detector,
                                  "classifier": view.classifier})
            g["fps"].add_metric(cam, s.fps or 0.0)
            g["active_violations"].add_metric(cam, s.active)
            g["violations_in_view"].add_metric(cam, s.active if s.in_view is None else s.in_view)
            g["detect_enabled"].add_metric(cam, int(s.detect_enabled))
            g["camera_up"].add_metric(cam, int(s.camera_lost_since is None))
            g["problems"].add_metric(cam, len(s.problems()))
            if (age := view.last_frame_age()) is not None:
                g["last_frame_age_seconds"].add_metric(cam, age)
            for name, value in [("frames", s.frames), ("skipped_frames", s.skipped),
                                ("faces", s.faces), ("faces_classified", s.classified),
                                ("faces_cached", s.cached), ("violations", s.violations_started),
                                ("events", s.events), ("camera_reopens", s.reopens)]:
                c[name].add_metric(cam, value)
            for k, v in view.ms.items():
                stage.add_metric([view.name, k], v / 1e3)
        yield info
        yield from g.values()
        yield from c.values()
        yield stage
        health = srv.mqtt_health()
        if health is not None:
            for name, text, value, kind in [
                ("mqtt_connected", "1 while connected to the broker", int(bool(health.get("connected"))), "g"),
                ("mqtt_outbox_depth", "Events stored, not yet acknowledged by the broker", health.get("outbox_depth"), "g"),
                ("mqtt_published", "Messages handed to the broker", health.get("published"), "c"),
                ("mqtt_reconnects", "Reconnects to the broker", health.get("reconnects"), "c"),
                ("mqtt_outbox_dropped", "Events dropped from the outbox (limits)", health.get("outbox_dropped"), "c"),
            ]:
                if value is None:
                    continue
                fam = (GaugeMetricFamily if kind == "g" else CounterMetricFamily)(f"maskd_{name}", text)
                fam.add_metric([], value)
                yield fam


# ---------------------------------------------------------------- the server


class _Server(ThreadingHTTPServer):
    """A thread per connection, but at most MAX_CONNECTIONS of them (a Pi runs out of threads
    and memory long before a browser needs that many), and a connection must finish its
    request's headers within idle_timeout_s in all: the socket timeout alone lets a client
    that sends a header line now and then hold its thread for ever, without credentials."""

    daemon_threads = True
    # The standard library listens with a backlog of 5: in a burst (a scanner, a room of
    # browsers) the kernel dropped the other handshakes, retried by the clients after 1, 3,
    # 7 ... s, so some waited a minute for what the accept loop answers at once (a 503 at worst).
    request_queue_size = LISTEN_BACKLOG

    def __init__(self, address: tuple[str, int], handler: type, idle_timeout_s: float) -> None:
        self.idle_timeout_s = idle_timeout_s
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        # each connection still without its request: (when its headers are due, its address)
        self._waiting: dict[socket.socket, tuple[float, str]] = {}
        self._deadline_lock = threading.Lock()
        self._throttle = Throttle()
        self.refused = 0  # connections answered 503 because all slots were taken
        super().__init__(address, handler)

    def server_bind(self) -> None:
        """Bind with IP_FREEBIND (Linux): an address DHCP or Wi-Fi has not given this machine
        yet is taken now and answered on once it arrives, instead of failing the start."""
        if sys.platform == "linux":
            level, option = FREEBIND[self.address_family]
            self.socket.setsockopt(level, option, 1)
        super().server_bind()

    def process_request(self, request, client_address) -> None:  # noqa: ANN001
        host = str(client_address[0])
        if not self._slots.acquire(blocking=False) and not self._make_room(host):
            self.refused += 1
            self._log_error("full", "status page: %d connections open (the most it serves); "
                            "answering 503", MAX_CONNECTIONS)
            try:
                request.sendall(b"HTTP/1.0 503 Service Unavailable\r\nServer: maskd\r\n"
                                b"Content-Length: 0\r\nRetry-After: 5\r\n\r\n")
            except OSError:
                pass
            self.shutdown_request(request)
            return
        with self._deadline_lock:
            self._waiting[request] = (time.monotonic() + self.idle_timeout_s, host)
        try:
            super().process_request(request, client_address)
        except Exception:
            self._done(request)
            raise

    def _make_room(self, host: str) -> bool:
        """Every slot is taken: cut the connection that has waited longest for its request, if
        that is over SLOW_REQUEST_S (a browser sends its request at once), else the oldest of
        the address holding the most connections still without their request, if that is more
        than ``host`` holds; and take its slot. Else anyone, without a password, kept the page
        at 503 for everyone by holding every slot with connections that never finish their
        headers, reopened as each was cut (faster than SLOW_REQUEST_S: 50 a second did)."""
        cutoff = time.monotonic() + self.idle_timeout_s - SLOW_REQUEST_S
        with self._deadline_lock:
            due = {r: t for r, (t, _) in self._waiting.items()}
            victim = min(due, key=due.__getitem__, default=None)
            if victim is not None and due[victim] > cutoff:
                held = Counter(h for _, h in self._waiting.values())
                top, most = held.most_common(1)[0]
                victim = None if most <= held[host] else min(
                    (r for r, (_, h) in self._waiting.items() if h == top), key=due.__getitem__)
            if victim is None:
                return False
            del self._waiting[victim]
        try:
            victim.shutdown(socket.SHUT_RDWR)  # its thread's read returns; it frees its slot
        except OSError:
            pass
        return self._slots.acquire(timeout=1.0)

    def process_request_thread(self, request, client_address) -> None:  # noqa: ANN001
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done(request)

    def _done(self, request: socket.socket) -> None:
        with self._deadline_lock:
            self._waiting.pop(request, None)
        self._slots.release()

    def headers_read(self, request: socket.socket) -> None:
        """The request is in: from here only the socket's idle timeout applies (a stream)."""
        with self._deadline_lock:
            self._waiting.pop(request, None)

    def service_actions(self) -> None:
        """Every poll of serve_forever (0.5 s): cut connections whose headers are overdue."""
        now = time.monotonic()
        with self._deadline_lock:
            late = [r for r, (t, _) in self._waiting.items() if t <= now]
            for r in late:
                del self._waiting[r]
        for r in late:
            try:
                r.shutdown(socket.SHUT_RDWR)  # its thread's read returns; it then ends
            except OSError:
                pass

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        """One line (at most once a minute), not a traceback per connection in the journal."""
        import sys

        self._log_error("error", "status page: request from %s failed: %s", client_address[0],
                        sys.exc_info()[1])

    def _log_error(self, key: str, msg: str, *args: object) -> None:
        if self._throttle.due(key):
            log.warning(msg, *args)


class _HeaderBudget:
    """The request's stream while its header lines are read: past ``left`` bytes in all it
    raises, and http.server answers 431. The standard library allows 100 lines of 64 KiB each:
    32 connections holding that kept about 300 MB, enough for the OOM killer on a small Pi."""

    def __init__(self, rfile: object, left: int) -> None:
        self._rfile = rfile
        self._left = left

    def readline(self, limit: int = -1) -> bytes:
        line = self._rfile.readline(limit)  # type: ignore[attr-defined]
        self._left -= len(line)
        if self._left < 0:
            raise http.client.HTTPException(f"headers over {MAX_HEADER_BYTES} bytes")
        return line


# Linux's IP_FREEBIND and IPV6_FREEBIND (<linux/in.h>, <linux/in6.h>): the socket module
# of Python 3.11 names neither.
FREEBIND = {socket.AF_INET: (socket.IPPROTO_IP, getattr(socket, "IP_FREEBIND", 15)),
            socket.AF_INET6: (socket.IPPROTO_IPV6, getattr(socket, "IPV6_FREEBIND", 78))}


class _V6Server(_Server):
    address_family = socket.AF_INET6


class StatusServer:
    """One HTTP server: the page, its JSON, /metrics and the live views of its cameras."""

    def __init__(self, listen: str, credentials: Credentials | None = None,
                 title: str = "maskd", idle_timeout_s: float = IDLE_TIMEOUT_S,
                 clock: Clock = system_clock) -> None:
        """``clock`` is for tests that step the wall clock."""
        self.listen = listen
        self.host, port = parse_listen(listen)
        self.credentials = credentials or Credentials()
        self.loopback = is_loopback(self.host)  # no credentials: the Host header is checked
        self.title = title
        self.idle_timeout_s = idle_timeout_s
        self.clock = clock
        self.uptime = Uptime(clock)
        self.guesses = Guesses()
        # one line a minute for every address locked (with how many more), not one each: a
        # guesser with many addresses (an IPv6 /64) flooded the journal, 1 line per 10 requests
        self.locked_log = RateLimitedLog(log, clock=lambda: self.guesses.now())
        self._lock = threading.Lock()
        self._views: dict[str, CameraView] = {}
        self._attached = 0
        self._events: deque[dict] = deque(maxlen=MAX_EVENTS)
        self._active: dict[str, dict] = {}
        self._health: Callable[[], dict] | None = None
        self.registry = CollectorRegistry(auto_describe=False)  # private: no global side effects
        self.registry.register(_Metrics(self))  # type: ignore[arg-type]
        self.port = port
        self._server: _Server | None = None  # None while another program holds the port
        self._closing = threading.Event()
        try:
            self._server = self._bind()
        except OSError:  # in use: said and tried again by the server thread
            log.warning("%s", port_in_use(listen))
        self._thread = threading.Thread(target=self._serve, name="maskd-status", daemon=True)
        self._closed = False

    def _bind(self) -> _Server:
        """The listening server; raises ListenNotReady (a late network), PreviewUnavailable (a
        setup error, e.g. a port below 1024), or OSError EADDRINUSE (another program has it)."""
        server_cls = _V6Server if ":" in self.host else _Server
        try:
            server = server_cls((self.host, self.port), self._make_handler(), self.idle_timeout_s)
        except socket.gaierror as err:  # DNS not up yet, or a name that will never resolve
            raise ListenNotReady(f"preview.http: cannot listen on {self.listen}: {err.strerror}; "
                                 f"{RETRIED}") from None
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise
            why = listen_refused(self.listen, err)
            if err.errno == errno.EADDRNOTAVAIL:  # despite IP_FREEBIND (not Linux)
                raise ListenNotReady(f"{why}; {RETRIED}") from None
            raise PreviewUnavailable(why) from None
        self.port = server.server_address[1]
        return server

    def _serve(self) -> None:
        """Serve; a port another program held at start is tried again every LISTEN_RETRY_S
        (that program may stop), while detection runs without the page."""
        while self._server is None:
            if self._closing.wait(LISTEN_RETRY_S):
                return
            try:
                server = self._bind()
            except (OSError, ListenNotReady):  # still in use, or the network is away a moment
                continue
            except PreviewUnavailable as err:  # the address changed under it: say so, give up
                log.error("%s; detection runs without the status page", err)
                return
            with self._lock:
                if self._closed:
                    server.server_close()
                    return
                self._server = server
            log.info("status page at %s: the port is free now", self.url)
        self._server.serve_forever()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self) -> StatusServer:
        self._thread.start()
        if self._server is None:
            return self  # said at the port in use; the thread says when it listens
        if warning := listen_warning(self.listen):
            log.warning("%s", warning)
        if is_loopback(self.host):
            log.info("status page at %s", self.url)
        else:
            log.info("status page at %s (%s required)", self.url,
                     "password or token" if self.credentials.required else "nothing")
            if not self.credentials.required:  # only a hand-built server (tests) gets here
                log.warning("status page at %s is reachable from the network without a password",
                            self.url)
        return self

    # ---- cameras

    def attach(self, name: str, detector: str, classifier: str,
               health: Callable[[], dict] | None = None, feed: MjpegFeed | None = None) -> CameraView:
        """A camera's view on this page (started); the server closes with its last view."""
        view = CameraView(self, name, detector, classifier, (feed or MjpegFeed()).start())
        with self._lock:
            self._views[name] = view
            self._attached += 1
            if self._health is None:
                self._health = health
        return view

    def release(self, view: CameraView) -> None:
        with self._lock:
            self._attached -= 1
            last = self._attached <= 0
        if last:
            self.close()

    def views(self) -> list[CameraView]:
        with self._lock:
            return list(self._views.values())

    def mqtt_health(self) -> dict | None:
        if self._health is None:
            return None
        try:
            return self._health()
        except Exception:  # noqa: BLE001 - the page must answer even if the sink is odd
            log.exception("MQTT health failed")
            return None

    # ---- events

    def add_event(self, ev: ViolationEvent) -> None:
        now = time.time()
        when = {"start": ev.start_time, "end": ev.end_time}.get(ev.event_type) or now
        rec = {
            "time": _iso(when), "timestamp": round(when, 3), "camera": ev.camera,
            "type": ev.event_type, "event_id": ev.event_id, "seq": ev.seq,
            "track_id": ev.track_id, "score": round(ev.score, 3), "top_score": round(ev.top_score, 3),
            "start_time": _iso(ev.start_time),
            "end_time": _iso(ev.end_time), "end_reason": ev.end_reason,
        }
        with self._lock:
            self._events.appendleft(rec)
            if ev.event_type == "end":
                self._active.pop(ev.event_id, None)
            else:
                self._active[ev.event_id] = {
                    "camera": ev.camera, "event_id": ev.event_id, "track_id": ev.track_id,
                    "since": _iso(ev.start_time), "since_ts": round(ev.start_time, 3),
                    "score": round(ev.score, 3), "top_score": round(ev.top_score, 3),
                    "updated": _iso(now),
                }

    def events(self) -> list[dict]:
        with self._lock:
            return list(self._events)

    def status(self) -> dict:
        with self._lock:
            active = sorted(self._active.values(), key=lambda a: a["since_ts"])
        cams = [v.status() for v in self.views()]
        health = self.mqtt_health()
        first = cams[0] if cams else {}
        return {
            "title": self.title,
            "version": __version__,
            "time": _iso(time.time()),
            "uptime_s": round(self.uptime(), 1),
            "detector": first.get("detector"),
            "classifier": first.get("classifier"),
            "broker": "off" if health is None else
            "connected" if health.get("connected") else "disconnected",
            "outbox_depth": None if health is None else health.get("outbox_depth"),
            "mqtt": health,
            "cameras": cams,
            "active_violations": active,
            "page_problems": self.credentials.faults(),  # a rotated password file that failed
        }

    # ---- HTTP

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            server_version = "maskd"
            timeout = server.idle_timeout_s  # socket timeout: idle clients do not pile up

            def version_string(self) -> str:
                return self.server_version  # not the Python version: no help to an attacker

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                log.debug("http %s: %s", self.client_address[0], redact(format % args))

            head_only = False  # a HEAD request: headers as for GET, no body

            def parse_request(self) -> bool:
                rfile, self.rfile = self.rfile, _HeaderBudget(self.rfile, MAX_HEADER_BYTES)
                try:
                    ok = super().parse_request()  # reads the request line's headers too
                finally:
                    self.rfile = rfile
                server._server.headers_read(self.connection)  # type: ignore[union-attr]
                return ok

            def do_HEAD(self) -> None:  # noqa: N802
                """GET's answer without its body (uptime checks ask so)."""
                self.head_only = True
                self.do_GET()

            def _not_allowed(self) -> None:
                """The page changes nothing: a method other than GET and HEAD is a clear 405
                naming them (was: 501, a server error in a scanner's or a proxy's log). The
                connection closes, so a body sent with it is never read as a next request."""
                self._send(HTTPStatus.METHOD_NOT_ALLOWED, "text/plain",
                           b"method not allowed: this page answers GET and HEAD only\n",
                           {"Allow": "GET, HEAD", "Connection": "close"})

            do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed
            do_OPTIONS = do_TRACE = do_CONNECT = _not_allowed

            def handle(self) -> None:
                try:
                    super().handle()
                except (BrokenPipeError, ConnectionResetError, TimeoutError):
                    pass  # the client went away mid-reply: no traceback in the journal for it

            def _send(self, code: int, ctype: str, body: bytes,
                      headers: dict[str, str] | None = None) -> None:
                if code >= 400 and "text/html" in self.headers.get("Accept", ""):
                    ctype, body = "text/html; charset=utf-8", error_page(code, body.decode())
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("X-Content-Type-Options", "nosniff")
                # a ?token= in the address never travels on as a Referer (no framing header: a
                # Home Assistant dashboard may show the page in an iframe card)
                self.send_header("Referrer-Policy", "no-referrer")
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if not self.head_only:
                    self.wfile.write(body)

            def _json(self, data: object) -> None:
                self._send(200, "application/json", json.dumps(data, indent=1).encode())

            def do_GET(self) -> None:  # noqa: N802
                if server.loopback and not local_host(self.headers.get("Host")):
                    self._send(HTTPStatus.FORBIDDEN, "text/plain",
                               b"forbidden: on a loopback address the Host must be localhost, "
                               b"127.x.x.x or [::1]\n")
                    return
                try:
                    parts = urlsplit(self.path)
                except ValueError:  # an absolute-form address whose [IPv6] host is not closed
                    self._send(HTTPStatus.BAD_REQUEST, "text/plain", b"bad request: no such URL\n")
                    return
                query = parse_qs(parts.query)
                creds = server.credentials
                qtoken = query.get("token", [None])[0]
                if creds.required and not self._let_in(creds, qtoken):
                    return
                extra = {}
                if creds.required and creds.token_ok(qtoken):  # the page's own requests carry it
                    extra["Set-Cookie"] = (f"{cookie_name(server.port)}={qtoken}; HttpOnly; "
                                           "SameSite=Strict; Path=/")
                path = parts.path
                if path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", PAGE.encode(), extra)
                elif path == "/api/status":
                    self._json(server.status())
                elif path == "/api/events":
                    self._json({"events": server.events(), "max": MAX_EVENTS})
                elif path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(server.registry))
                elif path in ("/frame.jpg", "/stream.mjpg"):
                    view = self._camera(query.get("camera", [None])[0])
                    if view is None:
                        self._send(404, "text/plain", b"no such camera\n")
                    elif path == "/frame.jpg":
                        jpeg = view.feed.frame_jpeg(timeout=5.0)
                        if jpeg is None:
                            self._send(HTTPStatus.SERVICE_UNAVAILABLE, "text/plain", b"no frame yet\n")
                        else:
                            self._send(200, "image/jpeg", jpeg)
                    else:
                        self._stream(view.feed)
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _let_in(self, creds: Credentials, qtoken: str | None) -> bool:
                """Whether the request carries the password or token; else it is answered
                401, or 429 while its address is locked for guessing (Guesses)."""
                addr = self.client_address[0]
                if wait := server.guesses.locked(addr):
                    self._send(HTTPStatus.TOO_MANY_REQUESTS, "text/plain",
                               f"too many wrong passwords or tokens from {addr}: try again in "
                               f"{math.ceil(wait)} s\n".encode(), {"Retry-After": str(math.ceil(wait))})
                    return False
                auth = self.headers.get("Authorization")
                cookies = token_cookies(self.headers.get("Cookie"), server.port)
                if creds.allows(auth, cookies, qtoken):
                    server.guesses.right(addr)
                    return True
                offered = [auth or "", *cookies, qtoken or ""]
                if any(offered) and server.guesses.wrong(
                        addr, "\0".join(offered).encode("utf-8", "replace")):
                    server.locked_log(logging.WARNING, "locked", "status page: %d different "
                                      "wrong passwords or tokens from %s within %d s; its "
                                      "requests get 429 for %d s", MAX_GUESSES, addr,
                                      GUESS_WINDOW_S, GUESS_WINDOW_S)
                self._send(HTTPStatus.UNAUTHORIZED, "text/plain", b"authentication required: "
                           + creds.hint().encode() + b"\n", {"WWW-Authenticate": creds.challenge()})
                return False

            def _camera(self, name: str | None) -> CameraView | None:
                views = server.views()
                if name is None:
                    return views[0] if views else None
                return next((v for v in views if v.name == name), None)

            def _stream(self, feed: MjpegFeed) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                if self.head_only:
                    return
                feed.watch(+1)
                seq = feed.seq  # from the next encoded frame on ...
                first = feed.frame_jpeg(timeout=0.0)  # ... after the newest one, right away
                try:
                    self.wfile.write(f"--{BOUNDARY}\r\n".encode())
                    while not feed.stopping:
                        if first is not None:
                            jpeg, first = first, None
                        else:
                            got = feed.next_jpeg(seq, timeout=1.0)
                            if got is not None:
                                seq, jpeg = got
                            else:  # no new frame (a file that ended, a camera away): the
                                # newest again, so the browser shows it and a client that
                                # left is noticed
                                jpeg = feed.frame_jpeg(timeout=0.0)
                                if jpeg is None:  # nothing to write, so no broken pipe
                                    if self._client_left():  # would tell it left: ask
                                        return
                                    continue
                        # Each part is followed by the next boundary at once: a browser shows
                        # a part only once it sees the boundary after it, and a source that
                        # ended sends no next frame.
                        self.wfile.write(f"Content-Type: image/jpeg\r\n"
                                         f"Content-Length: {len(jpeg)}\r\n\r\n".encode())
                        self.wfile.write(jpeg)
                        self.wfile.write(f"\r\n--{BOUNDARY}\r\n".encode())
                        self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError, TimeoutError):
                    pass  # the browser went away
                finally:
                    feed.watch(-1)

            def _client_left(self) -> bool:
                """True once the client closed its end (an orderly FIN or a reset): a stream
                with no frame to send never writes, and would keep its thread and slot. What
                it sent after its request is read and dropped (the stream is the last answer
                on this connection), else its FIN would wait behind those bytes."""
                sock = self.connection
                try:
                    readable, _, _ = select.select([sock], [], [], 0)
                    return bool(readable) and sock.recv(1 << 16) == b""
                except (OSError, ValueError):  # reset, or the socket is closed already
                    return True

        return Handler

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            server = self._server
        self._closing.set()
        for view in self.views():
            view.feed.close()
        if server is None:
            return
        if self._thread.is_alive():
            server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- wiring (maskd.service)


def attach(pages: dict[str, StatusServer], cfg: Config, detector: object, classifier: object,
           sinks: list, mqtt: object | None = None) -> CameraView:
    """Camera ``cfg.camera`` on the status page at ``cfg.preview.http``: the server for that
    address is started on first use and kept in ``pages``. Its events and frames reach the view
    as a sink and an observer of the loop; broker state comes from ``mqtt`` (the shared MQTT
    connection) or an MQTT sink among ``sinks``."""
    p = cfg.preview
    key = str(parse_listen(p.http or ""))
    creds = Credentials.from_config(p)
    server = pages.get(key)
    if server is None:
        server = pages[key] = StatusServer(p.http or "", creds, title=cfg.device_id).start()
    elif server.credentials.key() != creds.key():
        raise PreviewUnavailable(f"preview.http {p.http}: camera {cfg.camera} has other "
                                 "credentials than the cameras already on this page")
    health = getattr(mqtt, "health", None) or next(
        (s.health for s in sinks if callable(getattr(s, "health", None))), None)
    feed = MjpegFeed()
    feed.zones = cfg.zones  # outlined on the live view, to check them against the picture
    return server.attach(cfg.camera, _describe(detector), _describe(classifier), health, feed)


def error_page(code: int, text: str) -> bytes:
    """An error answer as a browser shows it: a page with a title, a heading and a way back
    (its plain text alone was shown by Chromium's text viewer, with no title or language for a
    screen reader). Machine clients, which do not ask for HTML, get the plain text."""
    title = f"{code} {HTTPStatus(code).phrase}"
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>maskd: {title}'
            '</title>\n<meta name="viewport" content="width=device-width, initial-scale=1">'
            '<meta name="color-scheme" content="light dark"></head>\n<body style="font:16px/1.4 '
            f'system-ui,sans-serif;margin:1em"><main><h1>{title}</h1>\n'
            f'<p>{html.escape(text.strip())}</p>\n<p><a href="/">The status page</a></p>'
            '</main></body></html>\n').encode()


def _describe(model: object) -> str:
    try:
        return str(model.describe())  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001 - a description is not worth failing a start for
        return type(model).__name__ if model is not None else "none"


# ---------------------------------------------------------------- the page

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>maskd status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{margin:0;font:14px/1.35 system-ui,sans-serif;background:#f4f5f7;color:#1d2430}
header{background:#1d2430;color:#fff;padding:8px 14px;display:flex;flex-wrap:wrap;column-gap:18px;align-items:baseline}
header h1,#clock{margin:0;overflow-wrap:anywhere}
header h1{font-size:17px}
header .muted{color:#b8c0cc}
main{display:grid;grid-template-columns:minmax(320px,660px) minmax(350px,1fr);gap:14px;padding:14px}
section{background:#fff;border:1px solid #d8dce3;border-radius:6px;padding:8px 12px;margin-bottom:14px}
h2{font-size:15px;margin:2px 0 8px;overflow-wrap:anywhere}
img.live{display:block;width:100%;max-width:640px;background:#000}
table{border-collapse:collapse;width:100%}
td,th{text-align:left;padding:2px 6px;border-bottom:1px solid #eceef2}
th{font-weight:600;color:#4a5568}
.bad{color:#b42318;font-weight:600}.ok{color:#067647;font-weight:600}.muted{color:#6b7280}
#events{max-height:430px;overflow:auto}
#health td:last-child{white-space:normal;overflow-wrap:anywhere}
#health td:first-child,#active td:first-child,#eventlist td:nth-child(2){white-space:normal;overflow-wrap:anywhere;min-width:6em}
/* a phone, or narrower than both columns (320 + 350, the active violations need 322; and
   a desktop browser's scrollbar, 15): one column */
@media (max-width:729px){main{grid-template-columns:minmax(0,1fr);padding:8px}}
/* a small phone (320-420): tighter cells, so the active violations' five columns fit */
@media (max-width:420px){section{padding:8px}td,th{padding:2px 3px}#active td:first-child{min-width:4.5em}}
</style></head>
<body>
<header><h1 id="title">maskd</h1><span id="clock" class="muted"></span></header>
<main>
<div id="cameras"></div>
<div>
<section><h2>Active violations</h2><table id="active"><tr><td class="muted">loading</td></tr></table></section>
<section><h2>Health</h2><table id="health"></table></section>
<section><h2>Last events</h2><div id="events" tabindex="0" role="region" aria-label="last events, newest first"><table id="eventlist"></table></div></section>
</div>
</main>
<noscript>This page needs JavaScript; the data is at /api/status, /api/events and /metrics.</noscript>
<script>
"use strict";
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => ({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
// a time of the page's day (the server's, st.time) as 14:03:22, one of another day with its
// date: the last events outlive midnight, and "14:03:22" alone read as today's
let today = "";
const hms = iso => iso ? esc((iso.slice(0, 10) === today ? "" : iso.slice(0, 10) + " ") +
                             iso.slice(11, 19)) : "";
const num = (v, d) => (v === null || v === undefined) ? "-" : Number(v).toFixed(d);
const row = cells => "<tr>" + cells.map(c => "<td>" + c + "</td>").join("") + "</tr>";
const head = cells => "<tr>" + cells.map(c => "<th>" + c + "</th>").join("") + "</tr>";
// Chromium opens at most 6 connections per host and a stream holds one for good: up to 4
// cameras stream, more show a still each second (/frame.jpg, at most 3 asked at once), so
// the two JSON requests always get a connection.
const STREAMS_UP_TO = 4, STILLS_AT_ONCE = 3;
// requests go to the page's origin: a relative address keeps a user:password@ the page was
// opened with, and Chromium refuses such a request (the browser signs in to the origin anyway)
const base = new URL(location.href);
base.username = base.password = "";
// a page opened with ?token= passes it on: in a frame of another site (a Home Assistant
// iframe card) the browser never sends the page's SameSite cookie, and every request got 401
const token = base.searchParams.get("token");
const at = (path, query = {}) => {
  const u = new URL(path, base);
  for (const [k, v] of Object.entries(token ? {...query, token} : query)) u.searchParams.set(k, v);
  return u.href;
};
let shown = "", stills = false, asking = 0, serial = 0;
function load(img) {  // (re)request the picture; a new query, so no cache answers it
  clearTimeout(img.timer);
  if (!img.isConnected) { done(img, false); return; }
  if (stills && !img.asking) {
    if (asking >= STILLS_AT_ONCE) { img.timer = setTimeout(() => load(img), 200); return; }
    asking++;
    img.asking = true;
  }
  if (stills) img.timer = setTimeout(() => load(img), 10000);  // no answer: ask again
  img.src = at(stills ? "/frame.jpg" : "/stream.mjpg", {camera: img.dataset.camera, r: ++serial});
}
function done(img, again) {  // a still came (or failed), or a stream failed
  clearTimeout(img.timer);
  if (img.asking) { img.asking = false; asking--; }
  if (again && img.isConnected) img.timer = setTimeout(() => load(img), 1000);
}
function cameras(list, restarted) {
  const names = list.map(c => c.camera).join("\\n");
  if (names !== shown) {
    shown = names;
    for (const img of document.querySelectorAll("img.live")) { done(img, false); img.src = ""; }
    stills = list.length > STREAMS_UP_TO;
    const box = document.getElementById("cameras");
    box.innerHTML = list.map(c =>
      '<section><h2>Camera ' + esc(c.camera) + '</h2><img class="live" alt="live view of ' +
      esc(c.camera) + '"></section>').join("");
    box.querySelectorAll("img.live").forEach((img, i) => {
      img.dataset.camera = list[i].camera;
      img.onerror = () => done(img, true);
      if (stills) img.onload = () => done(img, true);
      load(img);
    });
    return;
  }
  if (stills) return;  // stills ask again by themselves
  // A stream that ended shows its last picture for ever, with no event: ask again after a
  // restart, after the page lost the service, or once the service has had no viewer for 3 s.
  document.querySelectorAll("img.live").forEach((img, i) => {
    img.idle = list[i].viewers === 0 ? (img.idle || 0) + 1 : 0;
    if (restarted || img.idle >= 3) { img.idle = 0; load(img); }
  });
}
function up(s) {
  const u = Math.floor(s), d = Math.floor(u / 86400), h = Math.floor(u % 86400 / 3600),
        m = Math.floor(u % 3600 / 60);
  return (d ? d + " d " : "") + h + " h " + m + " min " + (u % 60) + " s";
}
// a table is rebuilt only when it changed: text someone selected to copy stays selected
const built = new Map();
function put(id, html) {
  if (built.get(id) === html) return;
  built.set(id, html);
  document.getElementById(id).innerHTML = html;
}
let uptime = null, lost = false, polling = false;
async function refresh() {
  if (polling) return;  // the last poll is still waiting (for at most 5 s): no pile of them
  polling = true;
  const stop = new AbortController(), timer = setTimeout(() => stop.abort(), 5000);
  try {
    const [st, ev] = await Promise.all(["/api/status", "/api/events"].map(u =>
      fetch(at(u), {signal: stop.signal}).then(r => { if (!r.ok) throw new Error(r.status); return r.json(); })));
    document.getElementById("title").textContent = "maskd status: " + st.title;
    document.getElementById("clock").textContent = st.time.slice(0, 19).replace("T", " ");
    today = st.time.slice(0, 10);
    cameras(st.cameras, lost || (uptime !== null && st.uptime_s < uptime));
    uptime = st.uptime_s;
    lost = false;
    const act = st.active_violations;
    put("active", act.length ?
      head(["camera", "since", "track", "no-mask score", "top"]) + act.map(a =>
        row([esc(a.camera), hms(a.since), a.track_id, '<span class="bad">' + num(a.score, 2) + "</span>",
             num(a.top_score, 2)])).join("") :
      row(['<span class="ok">none</span>']));
    const h = [row(["uptime", up(st.uptime_s)]), row(["detector", esc(st.detector)]),
               row(["classifier", esc(st.classifier)]),
               row(["broker", st.broker === "connected" ? '<span class="ok">connected</span>' :
                    st.broker === "off" ? '<span class="muted">off (no MQTT)</span>' :
                    '<span class="bad">' + esc(st.broker) + "</span>"]),
               row(["outbox depth", st.outbox_depth ?? "-"])];
    if ((st.page_problems || []).length)
      h.push(row(["this page", '<span class="bad">' + st.page_problems.map(esc).join("<br>") + "</span>"]));
    for (const c of st.cameras) {
      const ms = ["capture", "detect", "classify", "track"].map(k => k + " " + num(c.ms[k], 1)).join(", ");
      h.push(row(["<b>" + esc(c.camera) + "</b>", num(c.fps, 1) + " fps, " + c.frames + " frames" +
                  (c.skipped ? ", " + c.skipped + " skipped (no time for them)" : "") +
                  (c.camera_lost_since ? ', <span class="bad">camera lost' +
                   (c.camera_lost_why ? ": " + esc(c.camera_lost_why) : "") + "</span>" : "") +
                  (c.detect_enabled ? "" : ', <span class="muted">detection off by the ' +
                   esc(c.detect_in_force) + "</span>") +
                  (c.grey ? ', <span class="muted">grey pictures (infrared?): judged less well</span>' : "")]));
      h.push(row(["ms per stage", ms]));
      h.push(row(["active", c.active + (c.in_view !== null && c.in_view < c.active ?
                  " (" + (c.active - c.in_view) + " not detected now)" : "")]));
      // the lines of Home Assistant's problem entity: the outage, a full disk, a certificate
      if ((c.problems || []).length)
        h.push(row(["problems", '<span class="bad">' + c.problems.map(esc).join("<br>") + "</span>"]));
    }
    put("health", h.join(""));
    put("eventlist", ev.events.length ?
      head(["time", "camera", "event", "track", "score", "end reason"]) + ev.events.map(e =>
        row([hms(e.time), esc(e.camera), esc(e.type), e.track_id, num(e.score, 2), esc(e.end_reason)])).join("") :
      row(['<span class="muted">no events yet</span>']));
  } catch (err) {
    lost = true;
    // a rotated token leaves this page's cookie behind; a guess lock answers 429
    document.getElementById("clock").textContent = err.message === "401" ?
      "not signed in: the password or token changed? open the page again (with ?token=)" :
      err.message === "429" ? "too many wrong passwords or tokens from here: try again in a minute" :
      "not reachable: " + err;
  } finally {
    clearTimeout(timer);
    polling = false;
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body></html>
"""
