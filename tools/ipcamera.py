"""A network camera on a loopback port that can go away: for tools/soak.py and the tests.

Many door cameras are IP cameras that serve MJPEG over HTTP (``multipart/x-mixed-replace``),
and maskd reads them through OpenCV's FFmpeg backend like any ``http://`` source. What such a
camera does wrong in a building is go away, in two ways:

- ``gone``: it reboots or its switch port drops; connections are closed and new ones refused;
- ``stalled``: the network between drops packets without closing anything; the connection
  stays open and no byte arrives (only maskd's read time-out can notice), new ones hang.

And it can freeze (``frozen``): its encoder hangs while its web server goes on, so the stream
keeps its frame rate, on open connections and new ones, with the last picture in every frame.

The picture is a function of time, as on a real camera: frame ``i = (now - t0) * fps`` of
``render`` whoever watches and whenever, so a client that reconnects has missed what happened
meanwhile. ``outages`` records each outage and when the first frame went out again.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cv2
import numpy as np

from tools.mosquitto import free_port

BOUNDARY = "maskdcamera"
SENDING = ("up", "frozen")  # states in which frames go out
STALL_POLL_S = 0.05


@dataclass
class Outage:
    """One time the camera went away, in ``time.monotonic()`` seconds."""

    kind: str  # "gone", "stalled" or "frozen"
    start: float
    end: float | None = None  # when it came back
    first_frame: float | None = None  # the first frame sent after ``end``


class IpCamera:
    """MJPEG over HTTP at ``url``, frame ``i`` being ``render(i)``; ``gone``/``stall``/``freeze``/
    ``back``."""

    def __init__(self, render: Callable[[int], np.ndarray], fps: float = 15.0,
                 quality: int = 90, damage_every: int = 0) -> None:
        """``damage_every`` N > 0: every Nth frame goes out damaged (its bytes after the JPEG
        header replaced by noise, as a lost packet or a failing encoder leaves it)."""
        self.render, self.fps, self.quality = render, fps, quality
        self.damage_every = damage_every
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/stream.mjpg"
        self.t0, self.t0_wall = time.monotonic(), time.time()
        self.state = "up"
        self.outages: list[Outage] = []
        self.connections = 0  # stream requests answered
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._frame: tuple[int, bytes] = (-1, b"")
        self._epoch = 0  # bumped by gone(): handlers of an older epoch close their connection
        self._stop = threading.Event()
        self._producer = threading.Thread(target=self._produce, name="ipcamera", daemon=True)

    def start(self) -> IpCamera:
        self._producer.start()
        self._listen()
        return self

    def frame_index(self, t: float) -> int:
        """The frame the camera shows at monotonic time ``t``."""
        return int((t - self.t0) * self.fps)

    def frame_at_wall(self, ts: float) -> int:
        """The frame the camera showed at wall-clock time ``ts`` (a frame's ``timestamp``)."""
        return int((ts - self.t0_wall) * self.fps)

    def gone(self) -> None:
        """Close every connection and refuse new ones."""
        self._begin("gone")
        self._unlisten()

    def stall(self) -> None:
        """Keep connections open and send nothing, on them or on new ones."""
        self._begin("stalled")

    def freeze(self) -> None:
        """Keep sending frames, each the last picture sent before (the same JPEG bytes)."""
        self._begin("frozen")

    def back(self) -> None:
        with self._cond:
            was, self.state = self.state, "up"
            if self.outages and self.outages[-1].end is None:
                self.outages[-1].end = time.monotonic()
            self._cond.notify_all()
        if was == "gone":
            self._listen()

    def close(self) -> None:
        with self._cond:
            self._stop.set()
            self._epoch += 1
            self._cond.notify_all()
        self._unlisten()

    def __enter__(self) -> IpCamera:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _begin(self, kind: str) -> None:
        with self._cond:
            if self.state != "up":
                raise RuntimeError(f"the camera is already {self.state}")
            self.state = kind
            self._epoch += kind == "gone"
            self.outages.append(Outage(kind, time.monotonic()))
            self._cond.notify_all()

    def _unlisten(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()

    def _listen(self) -> None:
        camera = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] != "/stream.mjpg":
                    self.send_error(404)
                    return
                camera._serve(self)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                         name="ipcamera-http", daemon=True).start()

    def _produce(self) -> None:
        """Render and encode each frame once, on time, whoever watches."""
        while not self._stop.is_set():
            i = self.frame_index(time.monotonic())
            with self._cond:
                frozen, last = self.state == "frozen", self._frame[1]
            if frozen and last:
                data = last
            else:
                ok, jpg = cv2.imencode(".jpg", self.render(i),
                                       [cv2.IMWRITE_JPEG_QUALITY, self.quality])
                data = jpg.tobytes() if ok else b""
                if self.damage_every and i % self.damage_every == 0:
                    noise = np.random.default_rng(i).integers(0, 256, len(data), np.uint8)
                    data = data[:200] + noise.tobytes()[200:]
            with self._cond:
                self._frame = (i, data)
                self._cond.notify_all()
            time.sleep(max(0.0, self.t0 + (i + 1) / self.fps - time.monotonic()))

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        epoch = self._epoch
        if not self._wait_up(epoch):
            return
        self.connections += 1
        h.send_response(200)
        h.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        h.send_header("Cache-Control", "no-cache")
        h.end_headers()
        sent = -1
        try:
            while self._wait_up(epoch):
                with self._cond:
                    self._cond.wait_for(self._news(sent), timeout=1.0)
                    if self.state not in SENDING:
                        continue
                    sent, jpg = self._frame
                h.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                              f"Content-Length: {len(jpg)}\r\n\r\n".encode() + jpg + b"\r\n")
                h.wfile.flush()
                self._sent()
        except OSError:  # the client went away (maskd's read time-out, a reopen)
            pass
        if epoch != self._epoch:  # gone(): the client sees its stream end at once
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _news(self, sent: int) -> Callable[[], bool]:
        """A condition: a frame newer than ``sent``, an outage or the end."""
        return lambda: (self._frame[0] != sent or self._stop.is_set()
                        or self.state not in SENDING)

    def _wait_up(self, epoch: int) -> bool:
        """Block while stalled; False once this connection's camera is gone or closed."""
        with self._cond:
            while self.state == "stalled" and not self._stop.is_set():
                self._cond.wait(STALL_POLL_S)
            return epoch == self._epoch and not self._stop.is_set()

    def _sent(self) -> None:
        o = self.outages[-1] if self.outages else None
        if o is not None and o.end is not None and o.first_frame is None:
            o.first_frame = time.monotonic()
