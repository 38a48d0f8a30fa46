"""Home Assistant's view of a maskd camera: the topics maskd uses, MQTT discovery and the
detection switch's payload (docs/mqtt.md); pure functions of the config, kept apart from the
connection so the sink, `maskd doctor` and the config tests derive the same names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from maskd import __version__
from maskd.config import MqttConfig

_TRUE = {"on", "true", "1", "enable", "enabled"}
_FALSE = {"off", "false", "0", "disable", "disabled"}


@dataclass(frozen=True)
class Topics:
    """Every topic maskd uses, derived once from prefix, device id and camera."""

    status: str
    status_detail: str
    violation: str
    active: str
    snapshot: str
    state: str
    stats: str
    detect_set: str
    detect_state: str
    discovery: str
    ha_status: str

    @classmethod
    def build(cls, mq: MqttConfig, device_id: str, camera: str) -> Topics:
        base = f"{mq.prefix}/{device_id}"
        cam = f"{base}/{camera}"
        return cls(
            status=f"{base}/status",
            status_detail=f"{base}/status/detail",
            violation=f"{cam}/violation",
            active=f"{cam}/violation/active",
            snapshot=f"{cam}/snapshot",
            state=f"{cam}/state",
            stats=f"{cam}/stats",
            detect_set=f"{cam}/detect/set",
            detect_state=f"{cam}/detect/state",
            discovery=f"{mq.discovery_prefix}/device/{mq.prefix}_{device_id}_{camera}/config",
            ha_status=f"{mq.discovery_prefix}/status",
        )


def parse_switch(payload: bytes) -> bool | None:
    """ON/OFF (and true/false, 1/0) as sent by Home Assistant or a person; None if neither."""
    text = payload.decode("utf-8", "replace").strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


def discovery_config(
    topics: Topics, device_id: str, camera: str, model: str | None, snapshots: bool
) -> dict:
    """Home Assistant device-based discovery: one retained message for all entities."""
    uid = f"maskd_{device_id}_{camera}"

    def sensor(key: str, name: str, topic: str, template: str, **extra: Any) -> tuple[str, dict]:
        return f"{uid}_{key}", {
            "platform": "sensor", "name": name, "unique_id": f"{uid}_{key}",
            "state_topic": topic, "value_template": template, **extra,
        }

    cmps = dict([
        (f"{uid}_violation", {
            "platform": "binary_sensor", "name": f"{camera} mask violation",
            "unique_id": f"{uid}_violation", "device_class": "problem",
            "state_topic": topics.active, "payload_on": "ON", "payload_off": "OFF",
        }),
        (f"{uid}_detect", {
            "platform": "switch", "name": f"{camera} detection", "unique_id": f"{uid}_detect",
            "command_topic": topics.detect_set, "state_topic": topics.detect_state,
            "payload_on": "ON", "payload_off": "OFF", "state_on": "ON", "state_off": "OFF",
        }),
        sensor("faces", f"{camera} faces", topics.state, "{{ value_json.faces }}",
               state_class="measurement"),
        sensor("masked", f"{camera} masked", topics.state, "{{ value_json.masked }}",
               state_class="measurement"),
        sensor("unmasked", f"{camera} unmasked", topics.state, "{{ value_json.unmasked }}",
               state_class="measurement"),
        sensor("outbox", f"{camera} outbox depth", topics.stats,
               "{{ value_json.outbox_depth }}", entity_category="diagnostic"),
        sensor("fps", f"{camera} fps", topics.stats, "{{ value_json.fps | default(none) }}",
               entity_category="diagnostic", unit_of_measurement="fps"),
    ])
    if snapshots:
        cmps[f"{uid}_snapshot"] = {
            "platform": "camera", "name": f"{camera} last violation",
            "unique_id": f"{uid}_snapshot", "topic": topics.snapshot,
        }
    return {
        "device": {
            "identifiers": [f"maskd_{device_id}"], "name": f"maskd {device_id}",
            "manufacturer": "maskd", "model": model or "maskd", "sw_version": __version__,
        },
        "origin": {"name": "maskd", "sw_version": __version__},
        "availability_topic": topics.status,
        "payload_available": "online",
        "payload_not_available": "offline",
        "qos": 1,
        "components": cmps,
    }
