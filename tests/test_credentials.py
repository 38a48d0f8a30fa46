"""maskd.mqtt.credentials without a broker: which version of the TLS files the next connection
uses as they change on disk (the broker side is in test_mqtt.py's renewal tests)."""

from __future__ import annotations

import os
import shutil

from mqtt_broker import make_ca

from maskd import watch
from maskd.config import MqttConfig
from maskd.mqtt import credentials


def test_a_bad_change_then_the_old_files_restored_clears_the_fault(tmp_path, monkeypatch):
    """An admin writes a certificate of another key, sees the fault, and puts the old file
    back with its times (`cp -p`, a backup): the version loaded at start is back, and the
    fault must go (it stayed: only a version other than the loaded one was looked at)."""
    monkeypatch.setattr(watch, "SETTLE_S", 0.0)
    monkeypatch.setattr(watch, "LOOK_EVERY_S", 0.0)
    ours, other = make_ca(tmp_path / "ours"), make_ca(tmp_path / "other", name="other CA")
    cert, key = tmp_path / "client.crt", tmp_path / "client.key"
    shutil.copy2(ours.client_cert, cert)
    shutil.copy2(ours.client_key, key)
    files = credentials.CredentialFiles(MqttConfig(
        url="mqtts://127.0.0.1:8883", ca_file=ours.ca, cert_file=cert, key_file=key))
    assert files.faults() == []
    saved, st = cert.read_bytes(), cert.stat()
    cert.write_bytes(other.client_cert.read_bytes())  # in place: the same inode
    [fault] = files.faults()
    assert fault.startswith("MQTT: mqtt.ca_file/cert_file/key_file do not load: "), fault
    assert "KEY_VALUES_MISMATCH" in fault and "connections go on with the TLS files" in fault
    cert.write_bytes(saved)
    os.utime(cert, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert files.faults() == []


def test_without_a_ca_file_an_updated_system_ca_bundle_is_read_again(tmp_path, monkeypatch):
    """mqtts:// without mqtt.ca_file trusts the system's CAs: a CA that update-ca-certificates
    adds to the bundle (the broker's new public CA) is trusted from the next connection on
    (was: the bundle was read at start only, so maskd needed a restart after the update)."""
    monkeypatch.setattr(watch, "SETTLE_S", 0.0)
    monkeypatch.setattr(watch, "LOOK_EVERY_S", 0.0)
    old, new = make_ca(tmp_path / "old", name="old CA"), make_ca(tmp_path / "new", name="new CA")
    bundle = tmp_path / "ca-certificates.crt"
    shutil.copy2(old.ca, bundle)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))  # where OpenSSL finds the system bundle
    files = credentials.CredentialFiles(MqttConfig(url="mqtts://127.0.0.1:8883"))

    def trusted() -> list[str]:
        return sorted(dict(part[0] for part in ca["subject"])["commonName"]
                      for ca in files.tls_context().get_ca_certs())

    assert trusted() == ["old CA"]
    bundle.write_bytes(old.ca.read_bytes() + new.ca.read_bytes())
    assert files.faults() == []  # the status line's look reads the changed bundle
    assert trusted() == ["new CA", "old CA"]
