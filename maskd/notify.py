"""systemd notifications (sd_notify) over a plain AF_UNIX datagram socket.

No libsystemd binding: the protocol is one datagram of ``KEY=value`` lines to the socket
named in ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). The
:class:`SystemdNotifier` frame observer turns the loop's progress into READY / WATCHDOG /
STATUS, so a stalled loop (not merely a live process) is what systemd's watchdog sees.

The watchdog guards a hung loop, not a missing camera: while the live source is in a
controlled reconnect (camera lost, reopen loop alive), or a file source has ended and the loop
idles until a signal, the loop keeps pinging and says so in STATUS; a loop or driver that hangs
still stops the pings. With several cameras, the pings need every camera's loop to vouch for
itself since the last one, so one hung camera gets the process restarted, and STATUS is one
line naming each camera (``back: camera lost since ...; reconnecting; front: 14.8 fps | ...``),
never one camera's text after the other's.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence

from maskd.annotate import camera_text  # the same line the preview shows on screen
from maskd.env import Environment
from maskd.types import Frame, FrameObserver, LoopStats, Verdict

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 5.0  # STATUS= refresh when no watchdog ping carries it
# systemd ignores a whole datagram of PIPE_BUF (4096) bytes or more, WATCHDOG=1 and READY=1 in
# it too: 16 cameras with long names, all lost, and a fault or two make a longer STATUS= line
DATAGRAM_MAX = 4095


def status_text(stats: LoopStats, camera: str | None = None) -> str:
    """The STATUS= line of one camera (``camera``: its name, said where the line needs it):
    its text, then what keeps events from being delivered (``faults`` from the sinks)."""
    return " | ".join([camera_text(stats, camera), *stats.faults])


def cameras_status_text(stats: dict[str, LoopStats | str], fresh: str | None = None) -> str:
    """The STATUS= line of several cameras (name -> its latest stats, or what it does without
    any: starting, stopped): each named, in the given order, then the faults once each. A
    fault of the parts the cameras share (the broker's line) is said as ``fresh`` (the camera
    sending now) reads it now: another camera's stats hold a copy as old as its last word (a
    lost one's, the broker's line after the broker was back; was: said until that camera
    spoke again, and twice with another count). A camera's own (its paused clip) is said as
    it said it last."""
    parts = [f"{name}: {s if isinstance(s, str) else camera_text(s)}" for name, s in stats.items()]
    now = stats.get(fresh, "")
    faults = [f for s in stats.values() if not isinstance(s, str)
              for f in s.faults if f not in s.shared_faults]
    faults += [] if isinstance(now, str) else now.shared_faults
    return " | ".join(["; ".join(parts), *dict.fromkeys(faults)])


def socket_address(value: str) -> str | bytes:
    """The connect() address for a $NOTIFY_SOCKET value; '@name' is Linux's abstract namespace."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def _fitted(data: bytes) -> bytes:
    """``data`` within DATAGRAM_MAX: its end (the STATUS= line, sent last) cut at a whole
    character and marked "..."."""
    if len(data) <= DATAGRAM_MAX:
        return data
    return data[:DATAGRAM_MAX - 3].decode(errors="ignore").encode() + b"..."


class Notifier:
    """Sends sd_notify datagrams; a no-op when there is no socket (not run by systemd)."""

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._failing = False  # log a failure once, not per frame
        if address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        """Send ``KEY=value`` lines as one datagram; False when it failed (logged once per streak)."""
        if self._sock is None or self.address is None or not lines:
            return False
        try:
            # MSG_DONTWAIT: a full socket queue must not stall the detection loop. A newline in
            # a value (a path in a fault line) would end its assignment and start another one.
            text = "\n".join(ln.replace("\r", "\\r").replace("\n", "\\n") for ln in lines)
            self._sock.sendto(_fitted(text.encode()), socket.MSG_DONTWAIT,
                              socket_address(self.address))
        except OSError as err:
            # systemd gone, queue full or socket path wrong: never let that take the loop down.
            if not self._failing:
                log.warning("sd_notify to %s failed: %s", self.address, err.strerror or err)
            self._failing = True
            return False
        if self._failing:
            log.info("sd_notify to %s works again", self.address)
        self._failing = False
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class SystemdNotifier(FrameObserver):
    """A FrameObserver that tells systemd the loop is alive, only while frames go through.

    READY=1 after the first processed frame (so `systemctl start` returns once the camera and
    models really work); WATCHDOG=1 from on_frame at most every half WATCHDOG_USEC, so if
    frames stop the pings stop and systemd restarts the service; STATUS= with fps. The one
    exception is on_wait: the loop, waiting for a camera that the source is reconnecting, or
    idle after a file's end. Thread-safe: several camera loops share it (``for_cameras``).
    """

    def __init__(
        self,
        env: Environment | None = None,
        clock: Callable[[], float] = time.monotonic,
        camera: str | None = None,
    ) -> None:
        env = Environment.read() if env is None else env
        self._notifier = Notifier(env.notify_socket)
        interval = env.watchdog_s
        self.watchdog_every_s = interval / 2 if interval else None
        self._clock = clock
        self._ready = False
        self._last_ping: float | None = None
        self._last_status: float | None = None
        # camera -> (lost, reconnecting, why lost, no frame for a gap, no frame yet)
        self._outage: dict[str | None, tuple[bool, bool, str | None, bool, bool]] = {}
        self._lock = threading.Lock()
        self._cameras: set[str] = set()  # for_cameras(): the loops that must vouch for a ping
        self._vouched: set[str] = set()  # those that did since the last ping
        # for_cameras() of several: each camera's latest stats for the one STATUS= line
        self._latest: dict[str, LoopStats | str] = {}
        self._only = camera  # the one camera's name (for_cameras() of one sets it too)

    @property
    def enabled(self) -> bool:
        return self._notifier.enabled

    def for_cameras(self, names: Sequence[str]) -> list[FrameObserver]:
        """One observer per camera loop; a ping goes out only once every loop still running
        has vouched for itself since the last one (a frame, a reconnect, an idle end)."""
        self._cameras = set(names)
        self._only = names[0] if len(names) == 1 else None
        if len(names) > 1:  # one camera: its line as without a cameras: map
            self._latest = dict.fromkeys(names, "starting")
        return [_CameraWatch(self, name) for name in names]

    def on_frame(self, frame: Frame, verdicts: list[Verdict], stats: LoopStats) -> None:
        self.vouch(None, stats, ready=True, alive=True)

    def on_wait(self, stats: LoopStats) -> None:
        self.wait(None, stats)

    def wait(self, camera: str | None, stats: LoopStats) -> None:
        """The loop is waiting for a frame: vouch for it only during a controlled reconnect or
        while it idles after a file's end.

        Called from the loop's own thread, so a hung loop sends nothing; a camera read stuck in
        the driver is not a reconnect (``camera_reconnecting`` is False), so it sends no ping,
        only, once that lasts a gap, a STATUS naming it with the time since the last frame; before
        the first frame (READY=1 waits for it) a STATUS naming the camera waited for, and since
        when.
        """
        if stats.source_ended:
            self.vouch(camera, stats, ready=True, alive=True)
        elif stats.camera_lost_since:
            self.vouch(camera, stats, ready=False, alive=stats.camera_reconnecting)
        elif stats.no_frame_since or stats.first_frame_since:
            # a read or an open that blocks (or a camera slow to start): STATUS says so, no ping
            self.vouch(camera, stats, ready=False, alive=False)
        # else merely a slow camera: frames will say it

    def vouch(self, camera: str | None, stats: LoopStats, ready: bool, alive: bool) -> None:
        """``camera`` (None: the only loop) says how it is; a ping needs all of them alive."""
        with self._lock:
            if camera is not None:
                if alive:
                    self._vouched.add(camera)
                alive = self._vouched >= self._cameras
            if self._tell(camera if self._latest else None, stats, ready, alive):
                self._vouched.clear()

    def leave(self, camera: str) -> None:
        """A camera's loop has stopped: it no longer holds the pings back; the last one closes."""
        with self._lock:
            self._cameras.discard(camera)
            if camera in self._latest:
                self._latest[camera] = "stopped"  # in the line the others send
            last = not self._cameras
        if last:
            self.close()

    def _tell(self, camera: str | None, stats: LoopStats, ready: bool, alive: bool) -> bool:
        """Send what is due; True when a watchdog ping went out. ``camera``: whose stats, when
        the line names each camera (None: the only one)."""
        if not self._notifier.enabled:
            return False
        now = self._clock()
        outage = {**self._outage, camera: (bool(stats.camera_lost_since), stats.camera_reconnecting,
                                           stats.camera_lost_why, bool(stats.no_frame_since),
                                           bool(stats.first_frame_since))}
        if camera is not None:
            self._latest[camera] = stats
        lines: list[str] = []
        if ready and not self._ready:
            lines.append("READY=1")
        ping = alive and self.watchdog_every_s is not None and (
            self._last_ping is None or now - self._last_ping >= self.watchdog_every_s)
        if ping:
            lines.append("WATCHDOG=1")
        if (lines or outage != self._outage or self._last_status is None
                or now - self._last_status >= STATUS_INTERVAL_S):
            text = (status_text(stats, self._only) if camera is None
                    else cameras_status_text(self._latest, camera))
            lines.append(f"STATUS={text}")
            if self._notifier.send(*lines):  # on failure, try again with the next frame
                self._ready = self._ready or ready
                self._last_status = now
                self._outage = outage
                if ping:
                    self._last_ping = now
                    return True
        return False

    def close(self) -> None:
        self._notifier.send("STOPPING=1", "STATUS=stopping")
        self._notifier.close()


class _CameraWatch(FrameObserver):
    """One camera loop's part of a SystemdNotifier that several loops share."""

    def __init__(self, hub: SystemdNotifier, camera: str) -> None:
        self._hub = hub
        self._camera = camera

    def on_frame(self, frame: Frame, verdicts: list[Verdict], stats: LoopStats) -> None:
        self._hub.vouch(self._camera, stats, ready=True, alive=True)

    def on_wait(self, stats: LoopStats) -> None:
        self._hub.wait(self._camera, stats)

    def close(self) -> None:
        self._hub.leave(self._camera)
