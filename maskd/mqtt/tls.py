"""TLS for the broker connection. A client certificate is renewed months into a run (certbot
or step-ca renew every few weeks, some every day, writing the files in place): maskd reads the
files again before a connection when one changed on disk, so a renewal needs no restart."""

from __future__ import annotations

import logging
import ssl
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt

from maskd.certs import BROKER, expiry_line, expiry_lines
from maskd.clock import local_iso
from maskd.config import MqttConfig

log = logging.getLogger(__name__)

# what identifies a file's version: a renewal by rename changes the inode, one in place the
# time or size; a file that cannot be read is its error
_Stamp = tuple[tuple[int, int, int] | str, ...]


def broker_certificate_end(c: mqtt.Client) -> datetime | None:
    """When the certificate the broker showed on this connection ends; None when not TLS or
    not connected. Only a connection shows it, so the sink and doctor ask after one."""
    sock = c.socket()
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        after = (sock.getpeercert() or {}).get("notAfter")
        return datetime.fromtimestamp(ssl.cert_time_to_seconds(after), UTC) if after else None
    except (OSError, ValueError):  # closed meanwhile, or a date Python cannot read
        return None


def apply_tls(c: mqtt.Client, mq: MqttConfig) -> None:
    """TLS as maskd uses it (certificate required; client cert optional), for `maskd doctor`'s
    one connection. Raises ValueError naming the keys whose files do not load."""
    c.tls_set_context(mq.tls_context())


class TlsFiles:
    """The TLS files of ``mqtt.*`` as the next connection uses them (thread-safe: paho's
    thread asks before each connection, the loop's status line between).

    Files that changed but do not load (half written, a key of another certificate) leave the
    last good ones in use and are a fault until they load; what was connected stays connected
    (a broker checks certificates only at the handshake)."""

    def __init__(self, mq: MqttConfig) -> None:
        self._mq = mq
        self._paths = [Path(p) for p in (mq.ca_file, mq.cert_file, mq.key_file) if p is not None]
        self._lock = threading.Lock()
        self._stamp = self._stamps()
        self._context = mq.tls_context()
        self._ends = mq.certificate_ends()
        self._read_at = local_iso(time.time())
        self._failed: tuple[_Stamp, str] | None = None  # the version that did not load, why
        self._url = str(mq.broker)
        self._broker_end: datetime | None = None  # of the certificate the last connection saw
        self._warned: datetime | None = None  # that certificate's end, once logged

    def _stamps(self) -> _Stamp:
        out: list[tuple[int, int, int] | str] = []
        for p in self._paths:
            try:
                st = p.stat()
            except OSError as err:
                out.append(str(err))
            else:
                out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def context(self) -> ssl.SSLContext:
        """The context for the next connection, from the files read again first when one
        changed since (a version that failed is tried again only once it changes)."""
        with self._lock:
            stamp = self._stamps()
            if stamp == self._stamp or (self._failed and self._failed[0] == stamp):
                return self._context
            try:
                ctx = self._mq.tls_context()
            except ValueError as err:
                self._failed = (stamp, str(err))
                log.warning("MQTT: %s; connections go on with the files read at %s", err,
                            self._read_at)
                return self._context
            self._stamp, self._context, self._failed = stamp, ctx, None
            self._ends = self._mq.certificate_ends()
            self._read_at = local_iso(time.time())
            until = ", ".join(f"{key} until {end:%Y-%m-%d}" for key, (_, end) in self._ends.items())
            log.info("MQTT: read the changed TLS files%s; the next connection uses them",
                     f" ({until})" if until else "")
            return ctx

    def connected(self, c: mqtt.Client) -> None:
        """After each CONNACK: the broker's own certificate, logged once as its end comes near
        (then the status line keeps it), so its admin can be told before maskd is cut off."""
        end = broker_certificate_end(c)
        line = expiry_line(BROKER, self._url, end, datetime.now(UTC)) if end else None
        with self._lock:
            self._broker_end = end or self._broker_end
            if line is None or end == self._warned:
                return
            self._warned = end
        log.warning("MQTT: %s", line)

    def faults(self) -> list[str]:
        """Certificates near or past their end (maskd's files as the next connection would
        send them, the broker's as the last one showed it), and changed files that do not load."""
        self.context()  # a renewal is seen here too, not only when a connection drops
        with self._lock:
            ends: dict[str, tuple[Path | str, datetime]] = {**self._ends}
            if self._broker_end is not None:
                ends[BROKER] = (self._url, self._broker_end)
            out = expiry_lines(ends, datetime.now(UTC))
            if self._failed:
                out.append(f"MQTT: {self._failed[1]}; connections go on with the files read "
                           f"at {self._read_at}")
        return out
