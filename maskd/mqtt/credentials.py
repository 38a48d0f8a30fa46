"""The broker credentials kept in files, and the broker's own certificate.

Months into a run they change on disk: certbot or step-ca renew a client certificate every few
weeks (some every day), a building rotates the MQTT password. maskd reads the files again
before a connection when one changed, so neither needs a restart; files that changed but do not
load (half written, a key of another certificate, an empty password file) leave the last good
ones in use and are a fault until they load. A connection that is up stays as it is: a broker
checks credentials only when a client connects.
"""

from __future__ import annotations

import logging
import ssl
import threading
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt

from maskd import watch
from maskd.certs import BROKER, expiry_line, expiry_lines
from maskd.config import MqttConfig
from maskd.lograte import Throttle
from maskd.watch import WatchedFiles

log = logging.getLogger(__name__)
_SAY = ("MQTT", "connections go on")  # a changed file that does not load: who, and what goes on


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


# TLS alerts a broker sends when it turns down maskd's client certificate (OpenSSL's names, as
# Python's SSLError shows them): what the broker said, what to do
_TRUSTED = "one signed by a CA the broker trusts (mosquitto: cafile)"
_CLIENT_CERT_ALERTS = (
    ("CERTIFICATE_REQUIRED", "the broker requires a client certificate", "set mqtt.cert_file"),
    ("UNKNOWN_CA", "the broker does not trust the CA that signed maskd's client certificate",
     f"give {_TRUSTED}"),
    ("CERTIFICATE_EXPIRED", "the broker says maskd's client certificate expired", "renew it"),
    ("BAD_CERTIFICATE", "the broker refused maskd's client certificate", f"give {_TRUSTED}"),
    ("CERTIFICATE_UNKNOWN", "the broker refused maskd's client certificate", f"give {_TRUSTED}"),
)
# TLS 1.3: the alert comes after the handshake and is lost when maskd's CONNECT reaches the
# closed socket first, so a hang-up right after the handshake says only one of these (asked only
# then, ``handshook``: a hang-up during the handshake is a listener that speaks no TLS)
_HANG_UPS = ("EOF OCCURRED IN VIOLATION", "CONNECTION RESET BY PEER")
_HUNG_UP = ("the broker hung up right after the TLS handshake, as one does that refuses the "
            "client certificate (mosquitto: require_certificate true)",
            f"give {_TRUSTED}, still valid")


def client_certificate_hint(mq: MqttConfig, why: str, handshook: bool = False) -> str:
    """What to do when the broker hung up with a TLS alert about the client certificate: under
    TLS 1.3 that is its answer to CONNECT, so without this the log read like a broker that
    does not speak MQTT. One wording for the sink's log and `maskd doctor`; "" for other
    reasons. A hang-up is taken for one only when ``handshook`` (was: a listener that closed
    during the handshake, one that speaks no TLS, was told to set mqtt.cert_file)."""
    upper = why.upper()
    said = next(((s, do) for alert, s, do in _CLIENT_CERT_ALERTS if alert in upper), None)
    if said is None and handshook and any(hung_up in upper for hung_up in _HANG_UPS):
        said = _HUNG_UP
    if said is None or mq.broker is None or not mq.broker.tls:
        return ""
    what, do = said
    if mq.cert_file is None:
        return f"; {what}: set mqtt.cert_file and mqtt.key_file"
    return f"; {what} (mqtt.cert_file {mq.cert_file}): {do}"


def broker_certificate_hint(mq: MqttConfig, why: str) -> str:
    """What to do when maskd could not verify the broker's certificate: OpenSSL's words name
    no setting (`self-signed certificate in certificate chain` for a broker of another CA).
    One wording for the sink's log and `maskd doctor`; "" for other reasons."""
    if "CERTIFICATE_VERIFY_FAILED" not in why or mq.broker is None:
        return ""
    host = mq.broker.host
    if "unable to get local issuer" in why or "self-signed certificate" in why or \
            "self signed certificate" in why:
        return (f"; mqtt.ca_file {mq.ca_file} holds no CA that signed the broker's certificate"
                if mq.ca_file is not None else
                "; no system CA signed the broker's certificate: set mqtt.ca_file to its CA")
    if "mismatch" in why:
        return (f"; the broker's certificate does not name {host}: give mqtt.url a name it "
                f"holds (subjectAltName), or have it reissued for {host}")
    if "not yet valid" in why:  # a Pi without a real-time clock, before NTP set its time
        return "; is this machine's clock behind? (maskd doctor: clock)"
    if "has expired" in why:
        return ("; the broker's administrator must renew it, unless this machine's clock is "
                "ahead (maskd doctor: clock)")
    return ""


def apply_tls(c: mqtt.Client, mq: MqttConfig) -> None:
    """TLS as maskd uses it (certificate required; client cert optional), for `maskd doctor`'s
    one connection. Raises ValueError naming the keys whose files do not load."""
    c.tls_set_context(mq.tls_context())


def tls_paths(mq: MqttConfig) -> list[Path]:
    """The files the TLS context is made of. Without mqtt.ca_file that is the system's CA
    bundle (its path as OpenSSL finds it, SSL_CERT_FILE too), which update-ca-certificates
    rewrites when a CA is added or withdrawn; a hashed CA folder is read at each handshake
    anyway."""
    ca = mq.ca_file if mq.ca_file is not None else ssl.get_default_verify_paths().cafile
    return [Path(p) for p in (ca, mq.cert_file, mq.key_file) if p]


class CredentialFiles:
    """The credential files of ``mqtt.*`` as the next connection uses them. Thread-safe:
    paho's thread asks before each connection, the loop's status line between."""

    def __init__(self, mq: MqttConfig) -> None:
        self._mq = mq
        self._lock = threading.Lock()
        tls = mq.broker is not None and mq.broker.tls
        self._tls = WatchedFiles(tls_paths(mq), "TLS files", mq.tls_context(),
                                 *_SAY) if tls else None
        self._ends = mq.certificate_ends()
        first = mq.password()  # read once here, for the first connection too
        self._password = (WatchedFiles([Path(mq.password_file)], "password", first or "",
                                       *_SAY) if mq.password_file is not None else None)
        self._env_password = first if mq.password_file is None else None  # password_env's
        self._url = str(mq.broker)
        self._broker_end: datetime | None = None  # of the certificate the last connection saw
        self._warned: datetime | None = None  # that certificate's end, once logged
        self._look = Throttle(watch.LOOK_EVERY_S)  # faults()' looks at the files

    def _refresh(self) -> None:
        """Files changed since they were loaded are loaded again (under the lock)."""
        if self._tls is not None and self._tls.reload(self._mq.tls_context):
            self._ends = self._mq.certificate_ends()
            until = ", ".join(f"{k} until {e:%Y-%m-%d}" for k, (_, e) in self._ends.items())
            log.info("MQTT: read the changed TLS files%s; the next connection uses them",
                     f" ({until})" if until else "")
        if self._password is not None and self._password.reload(
                lambda: self._mq.password() or "", "mqtt.password_file "):
            log.info("MQTT: read the changed mqtt.password_file; the next connection uses it")

    def password(self) -> str | None:
        """The password the next connection sends: the file's last good one, or the
        environment variable's (read at start)."""
        with self._lock:
            return self._password.value if self._password is not None else self._env_password

    def tls_context(self) -> ssl.SSLContext:
        """The TLS context for the client's first connection (mqtts:// only)."""
        if self._tls is None:
            raise ValueError(f"{self._url} is not mqtts://")
        with self._lock:
            return self._tls.value

    def before_connect(self, c: mqtt.Client) -> None:
        """Right before a connection attempt (paho's thread): what changed on disk is used from
        this one on. paho 2 has no public call to swap a TLS context (tls_set_context refuses a
        second), so its attribute is set; its socket is wrapped only after this returns."""
        with self._lock:
            self._refresh()
            if self._tls is not None:
                c._ssl_context = self._tls.value
            if self._password is not None:
                c.username_pw_set(self._mq.username, self._password.value)

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
        send them, the broker's as the last one showed it), and changed files that do not
        load."""
        with self._lock:
            # a change is seen here too, not only when a connection drops; the loop asks every
            # frame, so the files are looked at once a second at most
            if self._look.due():
                self._refresh()
            ends: dict[str, tuple[Path | str, datetime]] = {**self._ends}
            if self._broker_end is not None:
                ends[BROKER] = (self._url, self._broker_end)
            out = expiry_lines(ends, datetime.now(UTC))
            for files in (self._tls, self._password):
                out += files.fault() if files is not None else []
        return out
