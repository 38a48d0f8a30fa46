"""MQTT test helpers on top of tools/mosquitto.py (the real broker and subscriber, shared with
tools/bench_mqtt.py, re-exported here): an openssl-made CA, relays that make mosquitto look
like a broker that only speaks MQTT 3.1.1, one that enforces its Receive Maximum, one that
acknowledges nothing or one whose quota is exceeded, and a small real tmpfs to fill, so MQTT
and outbox tests run against the real thing. Skips (pytest) with a clear reason when
mosquitto or openssl is not installed, or a tmpfs cannot be mounted.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tools.mosquitto import (
    MOSQUITTO,
    Broker,
    Msg,
    Subscriber,
    Tls,
    free_port,
    require,
    retained_now,
    retained_once,
    unique_events,
    wait_until,
)

__all__ = ["MOSQUITTO", "Broker", "HangsUpOnMqtt5", "Msg", "Mqtt311Only", "NoPubacks",
           "QuotaExceeded", "RetainedExactOnly", "SilentOnMqtt5Will", "StrictReceiveMaximum", "Subscriber", "Tls",
           "fill_disk", "free_port", "make_ca", "require", "retained_now", "retained_once",
           "small_disk", "unique_events", "wait_until"]


def make_ca(d: Path, days: int = 365, name: str = "maskd test CA") -> Tls:
    """A throw-away CA, a server cert for 127.0.0.1/localhost and a client cert (openssl CLI),
    valid for ``days`` (maskd warns of certificates that end within a month). CAs trusted side
    by side need their own ``name``: a verifier picks the issuer by it."""
    openssl = require(shutil.which("openssl"), "openssl")
    d.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, cwd=d)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", str(days), "-subj", f"/CN={name}",
        "-keyout", "ca.key", "-out", "ca.crt")
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, cn in (("server", "localhost"), ("client", "maskd-client")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")
        extra = ["-extfile", "san.ext"] if name == "server" else []
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", str(days), "-out", f"{name}.crt", *extra)
    return Tls(d / "ca.crt", d / "server.crt", d / "server.key", d / "client.crt", d / "client.key")


class _Relay:
    """A listener on a free loopback port in front of `broker`: each connection is handed to
    ``_serve`` on a thread of its own (what a subclass makes of it)."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, name=type(self).__name__, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def _upstream(self, wait_s: float = 10.0) -> socket.socket:
        """A connection to `broker`, waited for while it restarts (``b.stop(); b.start()``): the
        one broker this relay stands for holds the client meanwhile, as a broker slow to start
        does (was: the client hung up on, on a loaded machine an old broker's 3.1.1 CONNECT
        unanswered, which maskd rightly calls an error)."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return socket.create_connection(("127.0.0.1", self.broker.port))
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @staticmethod
    def _down(up: socket.socket, conn: socket.socket,
              forward: Callable[[int, bytes, bytes], bytes | None]) -> threading.Thread:
        """A started thread relaying the broker's packets to the client: what
        ``forward(packet type, body, the packet)`` makes of each, None to hold it back."""
        def run() -> None:
            for kind, body, raw in _packets(up):
                if (out := forward(kind, body, raw)) is not None:
                    with contextlib.suppress(OSError):
                        conn.sendall(out)
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_WR)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        self._server.close()


class Mqtt311Only(_Relay):
    """A broker that speaks only MQTT 3.1.1, made of `broker` behind a relay: an MQTT 5 CONNECT
    gets what the 3.1.1 spec prescribes (CONNACK 0x01 "unacceptable protocol version", then
    close); everything else is relayed both ways untouched."""

    def __init__(self, broker: Broker) -> None:
        self.refused = 0  # MQTT 5 connection attempts turned away
        self.old = True  # False: MQTT 5 is relayed too (a broker that only seemed old)
        self.answer_s = 0.0  # how long its answer to a 3.1.1 CONNECT takes (a loaded host)
        super().__init__(broker)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while len(head) < 12:  # fixed header + remaining length + "\0\4MQTT" + level
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            n_len = next(i for i in range(1, 5) if not head[i] & 0x80)  # remaining-length bytes
            if head[n_len + 7] == 5 and self.old:
                self.refused += 1
                self._refuse(conn, head[n_len + 8])
                return
            with self._upstream() as up:
                up.sendall(head)
                back = threading.Thread(target=_pump, args=(up, conn, self.answer_s), daemon=True)
                back.start()
                _pump(conn, up)
                back.join(5)


    def _refuse(self, conn: socket.socket, flags: int) -> None:
        conn.sendall(b"\x20\x02\x00\x01")


class HangsUpOnMqtt5(Mqtt311Only):
    """A 3.1.1-only broker that cannot parse an MQTT 5 CONNECT and closes the connection without
    a CONNACK, as RabbitMQ 3 does (Debian bookworm's 3.10: `MQTT cannot parse a frame`)."""

    def _refuse(self, conn: socket.socket, flags: int) -> None:
        pass  # closed by the caller


class SilentOnMqtt5Will(Mqtt311Only):
    """A 3.1.1-only broker that reads an MQTT 5 CONNECT as a 3.1.1 one, as amqtt 0.12 does: one
    with a last will (maskd run's) then lacks the bytes its will properties took, so it waits for
    them without a word until the client gives up; one without (doctor's probe) is refused 0x01."""

    def _refuse(self, conn: socket.socket, flags: int) -> None:
        if not flags & 0x04:  # no will flag: it parses, and the level is refused
            super()._refuse(conn, flags)
            return
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass


class StrictReceiveMaximum(_Relay):
    """`broker` (start it with mosquitto's `max_inflight_messages N`: its CONNACK then announces
    Receive Maximum N) made as strict as MQTT 5 lets a server be, as HiveMQ and Moquette are:
    a client with more than N QoS 1/2 PUBLISHes unacknowledged gets DISCONNECT 0x93 "Receive
    Maximum exceeded" and is closed. mosquitto itself takes them all."""

    def __init__(self, broker: Broker, receive_maximum: int) -> None:
        self.receive_maximum = receive_maximum
        self.exceeded = 0  # connections closed for it
        super().__init__(broker)

    def _serve(self, conn: socket.socket) -> None:
        inflight: set[int] = set()  # packet ids of the client's QoS > 0 PUBLISHes not yet acked
        lock = threading.Lock()
        def forward(kind: int, body: bytes, raw: bytes) -> bytes:  # PUBACKs off the count
            if kind == 4:  # PUBACK
                with lock:
                    inflight.discard(int.from_bytes(body[:2], "big"))
            return raw

        with conn, socket.create_connection(("127.0.0.1", self.broker.port)) as up:
            back = self._down(up, conn, forward)
            for kind, body, raw in _packets(conn):
                if kind == 3 and raw[0] & 0x06:  # PUBLISH at QoS 1 or 2
                    topic_len = int.from_bytes(body[:2], "big")
                    with lock:
                        inflight.add(int.from_bytes(body[2 + topic_len:4 + topic_len], "big"))
                        over = len(inflight) > self.receive_maximum
                    if over:
                        self.exceeded += 1
                        with contextlib.suppress(OSError):
                            conn.sendall(b"\xe0\x01\x93")  # DISCONNECT, Receive Maximum exceeded
                        break
                up.sendall(raw)
            with contextlib.suppress(OSError):
                up.shutdown(socket.SHUT_RDWR)
            back.join(5)


class NoPubacks(_Relay):
    """`broker` behind a relay that holds back every PUBACK while ``hold`` is set: a broker that
    takes the connection, the PINGs and the PUBLISHes and acknowledges none of them (stuck in
    its storage or an auth plugin). Cleared, the PUBACKs of the messages sent since flow again."""

    def __init__(self, broker: Broker) -> None:
        self.hold = threading.Event()
        self.hold.set()
        super().__init__(broker)

    def _serve(self, conn: socket.socket) -> None:
        try:
            up = socket.create_connection(("127.0.0.1", self.broker.port))
        except OSError:  # the broker stopped: closed at once, as its own port would refuse it
            conn.close()
            return
        with conn, up:
            back = self._down(up, conn, lambda kind, _, raw:
                              None if kind == 4 and self.hold.is_set() else raw)  # 4: PUBACK
            _pump(conn, up)
            back.join(5)


class QuotaExceeded(_Relay):
    """`broker` behind a relay that, while ``exceeded`` is set, answers every PUBLISH with the
    PUBACK reason 0x97 "Quota exceeded" (a cloud broker's rate limit or quota), the message
    still delivered to subscribers; cleared, the broker's own PUBACKs pass."""

    def __init__(self, broker: Broker) -> None:
        self.exceeded = threading.Event()
        self.exceeded.set()
        super().__init__(broker)

    def _serve(self, conn: socket.socket) -> None:
        def forward(kind: int, body: bytes, raw: bytes) -> bytes:
            if kind == 4 and self.exceeded.is_set():  # PUBACK: its packet id, reason 0x97
                return b"\x40\x03" + body[:2] + b"\x97"
            return raw

        with conn, socket.create_connection(("127.0.0.1", self.broker.port)) as up:
            back = self._down(up, conn, forward)
            _pump(conn, up)
            back.join(5)


class RetainedExactOnly(_Relay):
    """`broker` handing out retained messages as RabbitMQ 3's MQTT plugin does: only to a
    subscription that names their topic, never to a wildcard one (`#`, `+`). A retained
    PUBLISH for a topic no plain filter of this client names is held back (and acknowledged to
    the broker); everything else is relayed untouched."""

    def _serve(self, conn: socket.socket) -> None:
        exact: set[str] = set()  # the client's filters without wildcards
        mqtt5 = False

        def forward(kind: int, body: bytes, raw: bytes) -> bytes | None:
            if kind == 3 and raw[0] & 0x01:  # a retained PUBLISH
                n = int.from_bytes(body[:2], "big")
                if body[2:2 + n].decode() not in exact:
                    if raw[0] & 0x06:  # QoS 1: the broker waits for its PUBACK
                        with contextlib.suppress(OSError):
                            up.sendall(b"\x40\x02" + body[2 + n:4 + n])
                    return None
            return raw

        with conn, socket.create_connection(("127.0.0.1", self.broker.port)) as up:
            back = self._down(up, conn, forward)
            for kind, body, raw in _packets(conn):
                if kind == 1:  # CONNECT: "\0\4MQTT", then the protocol level
                    mqtt5 = body[6] == 5
                elif kind == 8:  # SUBSCRIBE: packet id, (MQTT 5: properties), filters
                    i = 2
                    if mqtt5:  # the properties' length, a variable byte integer
                        size = shift = 0
                        while True:
                            size |= (body[i] & 0x7F) << shift
                            shift += 7
                            i += 1
                            if not body[i - 1] & 0x80:
                                break
                        i += size
                    while i < len(body):
                        n = int.from_bytes(body[i:i + 2], "big")
                        topic = body[i + 2:i + 2 + n].decode()
                        if "#" not in topic and "+" not in topic:
                            exact.add(topic)
                        i += 3 + n  # length, filter, options
                up.sendall(raw)
            with contextlib.suppress(OSError):
                up.shutdown(socket.SHUT_RDWR)
            back.join(5)


def _pump(src: socket.socket, dst: socket.socket, first_s: float = 0.0) -> None:
    """``src``'s bytes to ``dst``; the first of them held ``first_s`` seconds."""
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            time.sleep(first_s)
            first_s = 0.0
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _packets(sock: socket.socket) -> Iterator[tuple[int, bytes, bytes]]:
    """The MQTT packets read from ``sock``, as (packet type, body, the packet's bytes), until
    it closes."""
    buf = b""
    while True:
        while True:  # a whole packet in buf: yield it
            n_len = next((i for i in range(1, min(len(buf), 5)) if not buf[i] & 0x80), None)
            if n_len is None:
                break
            size = sum((buf[i] & 0x7F) << (7 * (i - 1)) for i in range(1, n_len + 1))
            if len(buf) < 1 + n_len + size:
                break
            raw, buf = buf[:1 + n_len + size], buf[1 + n_len + size:]
            yield raw[0] >> 4, raw[1 + n_len:], raw
        try:
            chunk = sock.recv(65536)
        except OSError:
            return
        if not chunk:
            return
        buf += chunk


@contextlib.contextmanager
def _mounted(path: Path, mount: list[str], what: str) -> Iterator[Path]:
    """`mount` run (root only: the test is skipped when it fails, saying so), `path` yielded,
    and unmounted lazily afterwards: it goes once the last file on it is closed, even after a
    failed test."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(mount, capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount {what} at {path} (needs root or CAP_SYS_ADMIN): "
                    f"{r.stderr.strip() or r.returncode}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def small_disk(path: Path, size: str = "256k",
               inodes: int | None = None) -> contextlib.AbstractContextManager[Path]:
    """A real tmpfs of `size` (and `inodes` files and folders, its root one of them) mounted at
    `path`."""
    limit = "" if inodes is None else f",nr_inodes={inodes}"
    return _mounted(path, ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700{limit}",
                           "tmpfs", str(path)], f"a {size} tmpfs")


def read_only_disk(path: Path) -> contextlib.AbstractContextManager[Path]:
    """An empty tmpfs mounted read-only at `path` (what a card the kernel gave up on looks
    like at a start)."""
    return _mounted(path, ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)],
                    "a read-only tmpfs")


@contextlib.contextmanager
def sd_card(path: Path, size: str = "32M", errors: str = "remount-ro") -> Iterator[Path]:
    """A real ext4 file system in an image file beside `path`, loop-mounted there with the
    kernel's `errors=remount-ro` (`fail_card` then makes it fail; `card_error` records an
    error, with `errors="continue"` one that leaves it writable)."""
    import pytest

    image = path.with_name(f"{path.name}.img")
    subprocess.run(["truncate", "-s", size, str(image)], check=True)
    try:
        made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True,
                              text=True)
        if made.returncode != 0:
            pytest.skip(f"cannot make an ext4 image: {made.stderr.strip() or made.returncode}")
        with _mounted(path, ["mount", "-o", f"loop,errors={errors}", str(image), str(path)],
                      "an ext4 image on a loop device") as card:
            yield card
    finally:
        image.unlink(missing_ok=True)


def fail_card(path: Path) -> None:
    """What a failing SD card does to a Pi's ext4: a storage error, after which the kernel
    remounts it read-only with files still open for writing (ext4's `abort` mount option
    raises that error on purpose; a plain `remount,ro` refuses while files are open)."""
    subprocess.run(["mount", "-o", "remount,abort", str(path)], check=True, capture_output=True)
    try:
        (path / "still-writable").touch()
    except OSError as err:
        assert err.errno == errno.EROFS, err
    else:
        raise AssertionError(f"{path} is still writable")


def card_error(path: Path) -> None:
    """An error recorded by the ext4 file system mounted at `path`, as a failing card's read
    or write makes one (the kernel's own test knob, /sys/fs/ext4/DEV/trigger_fs_error)."""
    import pytest

    from maskd.files import ext4_dir

    knob = ext4_dir(path) / "trigger_fs_error"
    if not knob.exists():
        pytest.skip(f"this kernel has no {knob}")
    knob.write_text("maskd test: a failing card")


def fill_disk(d: Path) -> Path:
    """Take every free byte of d's file system into one file; unlink it to give them back."""
    filler = d / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return filler
