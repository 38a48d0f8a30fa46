"""When the MQTT TLS certificates (maskd's files and the broker's own) stop being valid.

A building's broker certificates are renewed once a year or so, and a client certificate that
expires makes the broker refuse every connection from then on: events wait in the outbox
until someone notices. maskd says so ahead of time (check-config, doctor, run's start and its
status line) from the files' notAfter dates. The standard library has no public parser for a
certificate file, and X.509's validity is a few DER fields in, so they are read here.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

WARN_DAYS = 30  # a renewal takes a ticket and a visit: a month ahead

BROKER = "broker"  # the broker's own certificate, as a TLS connection shows it

# what an expired certificate stops, by config key (or BROKER)
EXPIRED = {"mqtt.cert_file": "the broker refuses the connection",
           "mqtt.ca_file": "maskd cannot verify the broker, so it does not connect",
           BROKER: "maskd cannot verify the broker, so it does not connect"}

# OpenSSL's TRUSTED CERTIFICATE (`openssl x509 -trustout`), which it loads as a certificate too,
# is the certificate's DER followed by its trust settings
_PEM = re.compile(r"-----BEGIN (TRUSTED |)CERTIFICATE-----(.*?)-----END \1CERTIFICATE-----", re.S)


class CertificateFormatError(ValueError):
    """Not the DER structure of an X.509 certificate."""


def _tlv(der: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of the contents, end of the contents) of the DER element at ``i``."""
    if i + 2 > len(der):
        raise CertificateFormatError("truncated")
    tag, n = der[i], der[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        if not 0 < k <= 4 or i + k > len(der):
            raise CertificateFormatError("bad length")
        n = int.from_bytes(der[i:i + k], "big")
        i += k
    if i + n > len(der):
        raise CertificateFormatError("truncated")
    return tag, i, i + n


def _time(tag: int, text: bytes) -> datetime:
    """UTCTime (YYMMDDHHMMSSZ, years 1950-2049) or GeneralizedTime (YYYYMMDDHHMMSSZ)."""
    s = text.decode("ascii")
    if tag == 0x17:
        year = int(s[:2])
        s = f"{1900 + year if year >= 50 else 2000 + year}{s[2:]}"
    elif tag != 0x18:
        raise CertificateFormatError(f"tag {tag:#x} is no time")
    return datetime.strptime(s, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)


def not_after(der: bytes) -> datetime:
    """The end of a DER certificate's validity: Certificate > tbsCertificate > [0] version
    (optional), serialNumber, signature, issuer, validity > notBefore, notAfter."""
    tag, start, _ = _tlv(der, 0)
    if tag != 0x30:
        raise CertificateFormatError("not a SEQUENCE")
    tag, i, _ = _tlv(der, start)  # tbsCertificate
    if tag != 0x30:
        raise CertificateFormatError("no tbsCertificate")
    tag, _, end = _tlv(der, i)
    if tag == 0xA0:  # explicit version
        i = end
    for _ in range(3):  # serialNumber, signature, issuer
        _, _, i = _tlv(der, i)
    tag, i, _ = _tlv(der, i)
    if tag != 0x30:
        raise CertificateFormatError("no validity")
    _, _, i = _tlv(der, i)  # notBefore
    tag, start, end = _tlv(der, i)
    try:
        return _time(tag, der[start:end])
    except (UnicodeDecodeError, ValueError) as err:
        raise CertificateFormatError(f"bad notAfter: {err}") from None


def pem_not_after(text: str) -> list[datetime]:
    """notAfter of every certificate in a PEM text, in file order (TRUSTED ones too: they were
    no certificate, so their end was never warned of and a wrong key was 'no PEM certificate')."""
    return [not_after(base64.b64decode(m.group(2))) for m in _PEM.finditer(text)]


def expiry_line(key: str, path: Path | str, ends: datetime, now: datetime) -> str | None:
    """The warning for a certificate that ends at ``ends``, or None while it is more than
    WARN_DAYS away. One wording for check-config, doctor, run and the status line. maskd's own
    files are read again before a connection; the broker's certificate is its admin's to renew."""
    left = ends - now
    date = ends.strftime("%Y-%m-%d %H:%M UTC")
    who, tail = (("the broker's administrator must renew it", "") if key == BROKER else
                 ("renew it", " (a running maskd reads the new file before its next connection)"))
    if left.total_seconds() <= 0:
        return (f"{key} {path}: the certificate expired on {date}: "
                f"{EXPIRED.get(key, 'TLS connections fail')}; {who}{tail}")
    if left.days >= WARN_DAYS:
        return None
    days = f"in {left.days} day{'s' if left.days != 1 else ''}" if left.days else "today"
    return f"{key} {path}: the certificate expires on {date} ({days}); {who} before then{tail}"


def expiry_lines(ends: Mapping[str, tuple[Path | str, datetime]], now: datetime) -> list[str]:
    """``expiry_line`` of each file in ``ends`` (key -> path, end) that is due one."""
    lines = (expiry_line(key, path, end, now) for key, (path, end) in ends.items())
    return [line for line in lines if line]
