"""A real mosquitto on a free loopback port (generated config, stopped by PID) and a recording
subscriber: for tools/bench_mqtt.py and the MQTT tests (tests/mqtt_broker.py adds the test-only
parts). Without mosquitto, a test using it skips and a tool exits, both saying what to install.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
)
# mosquitto's dynamic-security plugin (Debian's mosquitto package ships it): the one way a stock
# mosquitto refuses a SUBSCRIBE (acl_file grants it and then delivers nothing)
DYNSEC = next((str(p) for p in sorted(Path("/usr/lib").glob("*/mosquitto_dynamic_security.so"))),
              None)


def require(tool: str | None, name: str) -> str:
    """``tool``'s path; when it is missing, a skip under pytest and an exit elsewhere."""
    if tool is None:
        why = f"{name} is not installed (apt-get install mosquitto mosquitto-clients)"
        if "pytest" in sys.modules:  # the test suite: skipped with the reason
            import pytest

            pytest.skip(why)
        raise SystemExit(f"error: {why}")
    return tool


def wait_until(done: Callable[[], bool], timeout: float = 10.0, every: float = 0.05) -> bool:
    """Poll ``done`` until it holds or ``timeout`` seconds pass: brokers, cameras and threads
    answer on their own time, and a test or tool should wait for the answer, not a fixed sleep."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return True
        time.sleep(every)
    return bool(done())


def free_port() -> int:
    """A free port outside the kernel's range for clients' source ports.

    bind(0) would give one inside it: while a test's broker is stopped, any outgoing
    connection, even maskd reconnecting to that very port (a TCP self-connect), may take it,
    and the broker then cannot listen there again ("Address already in use")."""
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        lo, hi = 32768, 60999  # Linux's default
    ports = range(max(1024, lo - 12000), lo) if lo > 2048 else range(hi + 1, 65536)
    rng = random.Random()
    for _ in range(200):
        port = rng.choice(ports)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port found in {ports.start}-{ports.stop - 1}")


@dataclass(frozen=True)
class Tls:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


class Broker:
    """mosquitto on 127.0.0.1:<port>; start/stop/restart keep the port (and persistence)."""

    def __init__(
        self,
        workdir: Path,
        users: dict[str, str] | None = None,
        tls: Tls | None = None,
        require_client_cert: bool = False,
        persistence: bool = False,
        acl: str | None = None,
        deny_subscribe: Iterable[str] = (),
    ) -> None:
        self.exe = require(MOSQUITTO, "mosquitto")
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.proc: subprocess.Popen | None = None
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'false' if users else 'true'}",
            f"log_dest file {self.dir / 'mosquitto.log'}",
            "log_type all",
            "user root" if os.geteuid() == 0 else "",
        ]
        if persistence:
            lines += ["persistence true", f"persistence_location {self.dir}/",
                      "autosave_interval 1"]
        if users:
            pw = self.dir / "passwd"
            pw.write_text("")
            for user, password in users.items():
                subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True,
                               capture_output=True)
            lines.append(f"password_file {pw}")
        if acl is not None:  # mosquitto's acl_file syntax, e.g. "topic deny a/b\ntopic readwrite #"
            (self.dir / "acl").write_text(acl + "\n")
            lines.append(f"acl_file {self.dir / 'acl'}")
        deny = list(deny_subscribe)
        if deny:  # for anonymous clients, through the dynamic-security plugin
            self.dynsec = self.dir / "dynsec.json"
            self.deny_subscribe(deny)
            lines += [f"plugin {require(DYNSEC, 'mosquitto_dynamic_security.so')}",
                      f"plugin_opt_config_file {self.dynsec}"]
        if tls:
            lines += [f"cafile {tls.ca}", f"certfile {tls.server_cert}", f"keyfile {tls.server_key}",
                      f"require_certificate {'true' if require_client_cert else 'false'}"]
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(x for x in lines if x) + "\n")

    def deny_subscribe(self, topics: Iterable[str]) -> None:
        """Refuse anonymous clients' SUBSCRIBE to these topic filters (SUBACK 0x87, or 0x80
        in 3.1.1), from the next start on; [] grants every one again. Only for a broker made
        with ``deny_subscribe``."""
        acls = [{"acltype": "subscribePattern", "topic": t, "priority": 0, "allow": False}
                for t in topics]
        grant_all = {"publishClientSend": True, "publishClientReceive": True,
                     "subscribe": True, "unsubscribe": True}
        self.dynsec.write_text(json.dumps({
            "defaultACLAccess": grant_all, "clients": [],
            "groups": [{"groupname": "anonymous", "roles": [{"rolename": "deny"}],
                        "clients": []}],
            "roles": [{"rolename": "deny", "acls": acls}],
            "anonymousGroup": "anonymous"}))

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> Broker:
        """Start mosquitto and wait until it, not another process, listens on the port.

        An answer on the port alone was taken for success: with the port taken by another
        process (between free_port and a start or restart), mosquitto exits with 'Address
        already in use' and the caller talked to whatever held the port."""
        self.proc = subprocess.Popen(
            [self.exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._exited()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            ours = self._listens()
            if ours is None:  # no /proc to ask: alive a moment after the port answered
                time.sleep(0.3)
                ours = self.proc.poll() is None
            if ours:
                return self
            time.sleep(0.05)  # someone else's listener: mosquitto is about to exit
        if self.proc.poll() is not None:
            self._exited()
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} within {timeout} s "
                           f"(last log line: {self._last_line()})")

    def _last_line(self) -> str:
        lines = [x for x in self.log().splitlines() if x.strip()]
        return lines[-1] if lines else "(no log)"

    def _exited(self) -> None:
        """Raise naming why mosquitto stopped: the log's last line ('Error: Address already
        in use'), then what it wrote to stderr."""
        assert self.proc is not None
        rc = self.proc.returncode
        err = self.proc.stderr.read().decode(errors="replace").strip() if self.proc.stderr else ""
        self.stop()
        raise RuntimeError(f"mosquitto exited ({rc}) on port {self.port}: {self._last_line()}"
                           + (f"\n{err}" if err else ""))

    def _listens(self) -> bool | None:
        """Whether the socket listening on the port is this mosquitto's (/proc/net/tcp's
        inode among /proc/PID/fd's sockets); None where /proc cannot say."""
        assert self.proc is not None
        inodes = set()
        try:
            for name in ("tcp", "tcp6"):
                table = Path(f"/proc/net/{name}")
                for line in table.read_text().splitlines()[1:] if table.exists() else ():
                    f = line.split()
                    if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == self.port:
                        inodes.add(f"socket:[{f[9]}]")
            fds = Path(f"/proc/{self.proc.pid}/fd")
            held = {os.readlink(fd) for fd in fds.iterdir()}
        except (OSError, ValueError, IndexError):
            return None
        return bool(inodes & held)

    def stop(self) -> None:
        """SIGTERM by PID (mosquitto saves persistence), SIGKILL if it hangs."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None

    def log(self) -> str:
        p = self.dir / "mosquitto.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Msg:
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> dict:
        return json.loads(self.payload)


def unique_events(events: Iterable[dict]) -> list[dict]:
    """Each event once, the first copy, in arrival order: MQTT QoS 1 delivers at least once, so a
    consumer keys on ``(event_id, seq)`` (docs/mqtt.md)."""
    seen: dict[tuple[str, int], dict] = {}
    for e in events:
        seen.setdefault((e["event_id"], e["seq"]), e)
    return list(seen.values())


class Subscriber:
    """Records every message on `topics`; clean=False keeps its session across broker restarts."""

    def __init__(
        self,
        broker: Broker,
        topics: list[str] | tuple[str, ...] = ("#",),
        client_id: str = "",
        clean: bool = True,
        username: str | None = None,
        password: str | None = None,
        client_cert: bool = False,
    ) -> None:
        self.messages: list[Msg] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean,
                        protocol=mqtt.MQTTv311)
        if username:
            c.username_pw_set(username, password)
        if broker.tls:
            t = broker.tls
            c.tls_set(ca_certs=str(t.ca), certfile=str(t.client_cert) if client_cert else None,
                      keyfile=str(t.client_key) if client_cert else None)
        c.reconnect_delay_set(0.2, 1)  # type: ignore[arg-type]

        def on_connect(client, userdata, flags, rc, props):  # noqa: ANN001
            if not rc.is_failure:
                client.subscribe([(t, 1) for t in topics])

        def on_subscribe(*args):  # noqa: ANN002
            self._subscribed.set()

        def on_message(client, userdata, msg):  # noqa: ANN001
            with self._cond:
                self.messages.append(Msg(msg.topic, msg.payload, bool(msg.retain)))
                self._cond.notify_all()

        c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
        c.connect_async("127.0.0.1", broker.port, keepalive=10)
        c.loop_start()
        self.client = c
        if not self._subscribed.wait(10):
            c.loop_stop()
            raise RuntimeError(f"test subscriber could not subscribe on {broker.url}")

    def on(self, topic: str) -> list[Msg]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def wait(self, pred, timeout: float = 10.0) -> bool:  # noqa: ANN001
        """Wait until pred(messages) is true."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def wait_topic(self, topic: str, n: int = 1, timeout: float = 10.0) -> list[Msg]:
        self.wait(lambda ms: sum(m.topic == topic for m in ms) >= n, timeout)
        return self.on(topic)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def retained_now(broker: Broker, topics: Iterable[str] = ("#",),
                 timeout: float = 10.0) -> dict[str, bytes]:
    """What a client subscribing now gets retained under ``topics`` (payload by topic).

    mosquitto queues a new subscription's retained messages before it reads the client's next
    packet, so a message the client publishes after the SUBACK, to a topic of its own, comes
    back after all of them: its arrival ends the wait, with no settle time to guess (``timeout``
    only where an ACL keeps that topic from the client: then what came meanwhile)."""
    marker = f"maskd-test/retained-done/{random.getrandbits(64):x}"
    sub = Subscriber(broker, [*topics, marker])
    try:
        sub.client.publish(marker, b"done", qos=1)
        sub.wait(lambda ms: any(m.topic == marker for m in ms), timeout)
        return {m.topic: m.payload for m in sub.messages if m.retain}
    finally:
        sub.close()


def retained_once(broker: Broker, ok: Callable[[dict[str, bytes]], bool],
                  topics: Iterable[str] = ("#",), timeout: float = 10.0) -> dict[str, bytes]:
    """``retained_now`` asked again until ``ok`` holds for it (or ``timeout``: then the last
    answer, for the caller's assertion to show). A paho client's publish goes out from its
    network thread, so a broker read right after the call may come before the message."""
    deadline = time.monotonic() + timeout
    while not ok(got := retained_now(broker, topics)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return got
