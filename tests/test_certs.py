"""The MQTT TLS files' end dates (maskd.certs), read as openssl reads them."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mqtt_broker import require

from maskd.certs import BROKER, CertificateFormatError, expiry_line, not_after, pem_not_after
from maskd.config import MqttConfig


def _cert(d: Path, name: str, days: int) -> Path:
    openssl = require(shutil.which("openssl"), "openssl")
    out = d / f"{name}.crt"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", str(days), "-subj",
                    f"/CN={name}", "-keyout", str(d / f"{name}.key"), "-out", str(out)],
                   check=True, capture_output=True)
    return out


def _openssl_end(path: Path) -> datetime:
    text = subprocess.run(["openssl", "x509", "-in", str(path), "-noout", "-enddate"],
                          check=True, capture_output=True, text=True).stdout
    return datetime.strptime(text.strip().removeprefix("notAfter="),
                             "%b %d %H:%M:%S %Y GMT").replace(tzinfo=UTC)


def test_not_after_is_what_openssl_reads_in_utctime_and_generalizedtime(tmp_path):
    """Ends before 2050 are UTCTime (two-digit years), later ones GeneralizedTime; a file may
    hold a chain, read in order."""
    short, far = _cert(tmp_path, "short", 10), _cert(tmp_path, "far", 40000)
    assert _openssl_end(far).year > 2050
    for path in (short, far):
        assert pem_not_after(path.read_text()) == [_openssl_end(path)]
    chain = tmp_path / "chain.pem"
    chain.write_text(far.read_text() + "some text between\n" + short.read_text())
    assert pem_not_after(chain.read_text()) == [_openssl_end(far), _openssl_end(short)]
    assert pem_not_after("no certificate here") == []


def test_what_is_no_certificate_is_a_format_error_not_a_crash():
    for der in (b"", b"\x30", b"\x02\x01\x01", b"\x30\x03\x02\x01\x01", b"\x30\x84\xff\xff\xff\xff",
                b"\x30\x0a\x30\x08\x02\x01\x01\x30\x00\x30\x00\x30\x00"):
        with pytest.raises(CertificateFormatError):
            not_after(der)


def test_the_warning_says_expired_today_or_days_left_and_nothing_a_month_ahead():
    now = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
    path = Path("/etc/maskd/client.crt")
    assert expiry_line("mqtt.cert_file", path, now + timedelta(days=30), now) is None
    line = expiry_line("mqtt.cert_file", path, now + timedelta(days=29, hours=23), now)
    assert line == ("mqtt.cert_file /etc/maskd/client.crt: the certificate expires on "
                    "2027-03-31 11:00 UTC (in 29 days); renew it before then (a running maskd "
                    "reads the new file before its next connection)")
    assert "(in 1 day);" in expiry_line("k", path, now + timedelta(days=1, hours=1), now)
    assert "(today);" in expiry_line("k", path, now + timedelta(hours=1), now)
    gone = expiry_line("mqtt.cert_file", path, now, now)
    assert gone == ("mqtt.cert_file /etc/maskd/client.crt: the certificate expired on 2027-03-01 "
                    "12:00 UTC: the broker refuses the connection; renew it (a running maskd "
                    "reads the new file before its next connection)")
    ca = expiry_line("mqtt.ca_file", Path("/etc/maskd/ca.crt"), now - timedelta(days=3), now)
    assert ca.startswith("mqtt.ca_file /etc/maskd/ca.crt: the certificate expired on 2027-02-26 "
                         "12:00 UTC: maskd cannot verify the broker, so it does not connect; "), ca
    # the broker's own certificate is its administrator's to renew, not a file of maskd's
    url = "mqtts://mqtt.example:8883"
    assert expiry_line(BROKER, url, now + timedelta(days=2, hours=1), now) == (
        "broker mqtts://mqtt.example:8883: the certificate expires on 2027-03-03 13:00 UTC (in 2 "
        "days); the broker's administrator must renew it before then")
    assert expiry_line(BROKER, url, now - timedelta(hours=1), now) == (
        "broker mqtts://mqtt.example:8883: the certificate expired on 2027-03-01 11:00 UTC: maskd "
        "cannot verify the broker, so it does not connect; the broker's administrator must renew "
        "it")


def test_the_config_takes_a_chains_first_end_and_a_ca_bundles_last(tmp_path):
    """The whole client chain is sent, so its first end counts; of a CA bundle one CA that
    still holds is enough."""
    soon, late = _cert(tmp_path, "soon", 5), _cert(tmp_path, "late", 400)
    both = tmp_path / "both.pem"
    both.write_text(late.read_text() + soon.read_text())
    key = tmp_path / "late.key"
    mq = MqttConfig(url="mqtts://broker.example:8883", ca_file=both, cert_file=late, key_file=key)
    ends = mq.certificate_ends()
    assert ends == {"mqtt.cert_file": (late, _openssl_end(late)),
                    "mqtt.ca_file": (both, _openssl_end(late))}
    assert mq.expiring_certificates() == []
    later = datetime.now(UTC) + timedelta(days=380)
    assert [ln.split(":")[0] for ln in mq.expiring_certificates(later)] == [
        f"mqtt.cert_file {late}", f"mqtt.ca_file {both}"]
    assert "expired on" in mq.expiring_certificates(later + timedelta(days=30))[0]
    assert MqttConfig(url="mqtts://broker.example").certificate_ends() == {}  # system CAs


def test_a_trusted_certificate_is_read_as_a_certificate(tmp_path):
    """OpenSSL writes `BEGIN TRUSTED CERTIFICATE` (`openssl x509 -trustout`), and loads it as a
    client certificate or a CA: its end was never warned of, and with the wrong key check-config
    said `no PEM certificate in it`, sending the operator after the right file."""
    short, other = _cert(tmp_path, "short", 10), _cert(tmp_path, "other", 400)
    trusted = tmp_path / "trusted.pem"
    subprocess.run(["openssl", "x509", "-in", str(short), "-trustout", "-out", str(trusted)],
                   check=True, capture_output=True)
    assert trusted.read_text().startswith("-----BEGIN TRUSTED CERTIFICATE-----")
    assert pem_not_after(trusted.read_text()) == [_openssl_end(short)]
    for key, said in ((tmp_path / "short.key", f"mqtt.cert_file {trusted}: the certificate "
                       "expires on"),
                      (tmp_path / "other.key", f"mqtt.key_file {tmp_path / 'other.key'} is not "
                       f"the private key of mqtt.cert_file {trusted}")):
        config = tmp_path / "maskd.yaml"
        config.write_text(f"mqtt: {{url: 'mqtts://broker.example:8883', ca_file: {other}, "
                          f"cert_file: {trusted}, key_file: {key}}}\n")
        r = subprocess.run([sys.executable, "-m", "maskd", "check-config", str(config)],
                           capture_output=True, text=True, timeout=120)
        assert said in r.stdout + r.stderr, r.stdout + r.stderr
