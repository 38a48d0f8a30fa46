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
