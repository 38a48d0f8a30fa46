"""People watching the status page during a soak: browsers that open the live view, watch it for
a while and leave (some closing the socket mid-picture), and poll the page's JSON, as a
facilities team does for months. What the soak checks is that maskd's web server gives every
viewer pictures, and that thousands of viewers coming and going leave nothing behind.

Each ``Viewer`` is one thread with its own seeded RNG; ``report`` sums what they saw.
"""

from __future__ import annotations

import http.client
import random
import threading
import time
from dataclasses import dataclass, field

JPEG_START = b"\xff\xd8"
WATCH_S = (1.0, 12.0)  # how long one visit watches the live view
PAGES = ("/", "/api/status", "/api/events", "/frame.jpg", "/metrics")
TIMEOUT_S = 10.0  # a visit that hears nothing for this long is an error (the stream repeats
# the newest frame every second even while the camera is away)


@dataclass
class Seen:
    """What one viewer saw."""

    visits: int = 0
    jpegs: int = 0
    pages: int = 0
    abrupt: int = 0  # visits that closed the socket in the middle of a picture
    blank: int = 0  # visits of >= 3 s that got no picture
    errors: list[str] = field(default_factory=list)


def read_part(resp: http.client.HTTPResponse) -> bytes | None:
    """The next picture of a multipart stream (None at its end)."""
    length = None
    while True:
        line = resp.readline()
        if not line:
            return None
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
        elif line in (b"\r\n", b"\n") and length is not None:
            return resp.read(length)


class Viewer(threading.Thread):
    """Visits the page at ``port`` until ``stop()``: the live view for a while, then the pages."""

    def __init__(self, port: int, seed: int) -> None:
        super().__init__(name=f"viewer-{seed}", daemon=True)
        self.port, self.rng, self.seen = port, random.Random(seed), Seen()
        self._quit = threading.Event()

    def stop(self) -> None:
        self._quit.set()

    def run(self) -> None:
        while not self._quit.is_set():
            try:
                self._visit()
            except (OSError, http.client.HTTPException, ValueError) as err:
                self.seen.errors.append(f"{type(err).__name__}: {err}")
                self._quit.wait(1.0)

    def _visit(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT_S)
        try:
            conn.request("GET", "/stream.mjpg")
            resp = conn.getresponse()
            if resp.status != 200:
                raise ValueError(f"/stream.mjpg answered {resp.status}")
            t0, got, rude, cut = time.monotonic(), 0, self.rng.random() < 0.3, False
            until = t0 + self.rng.uniform(*WATCH_S)
            while time.monotonic() < until and not self._quit.is_set():
                if rude and self.rng.random() < 0.2:  # leaves mid-picture: its header, 100 bytes
                    resp.readline()
                    resp.read(100)
                    cut = True
                    break
                part = read_part(resp)
                if part is None:
                    raise ValueError("/stream.mjpg ended")
                if not part.startswith(JPEG_START):
                    raise ValueError(f"/stream.mjpg sent a part that is not a JPEG ({len(part)} bytes)")
                got += 1
            self.seen.visits += 1
            self.seen.jpegs += got
            self.seen.abrupt += cut
            self.seen.blank += got == 0 and time.monotonic() - t0 >= 3.0
        finally:
            conn.close()
        for path in PAGES:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=TIMEOUT_S)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200 or not body:
                    raise ValueError(f"{path} answered {resp.status} with {len(body)} bytes")
                self.seen.pages += 1
            finally:
                conn.close()


def report(viewers: list[Viewer]) -> dict:
    """What all viewers saw together (the first few errors named)."""
    s = [v.seen for v in viewers]
    errors = [e for x in s for e in x.errors]
    return {"viewers": len(s), "visits": sum(x.visits for x in s), "jpegs": sum(x.jpegs for x in s),
            "pages": sum(x.pages for x in s), "abrupt": sum(x.abrupt for x in s),
            "blank": sum(x.blank for x in s), "errors": len(errors), "first_errors": errors[:5]}
