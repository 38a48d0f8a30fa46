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


# What maskd misses when it may not subscribe to ``ha_status`` (the sink's log, `maskd doctor`)
UNSEEN_RESTARTS = ("Home Assistant's restarts go unseen, so maskd sends its discovery again "
                   "only when it reconnects")


@dataclass(frozen=True)
class Topics:
    """Every topic of one camera, derived once from prefix, device id and camera.

    ``status`` is the process's availability (its last will): the device-level
    ``<prefix>/<device_id>/status`` for a process that runs a ``cameras:`` map, the camera's own
    ``<camera>/status`` for a single-camera config, so two single-camera processes on one device
    never mark each other offline. ``availability`` is the camera's: ``online`` while its loop
    runs. Home Assistant needs both (``availability_mode: all``); in the single-camera layout
    they are the same topic.
    """

    status: str
    status_detail: str
    availability: str
    violation: str
    active: str
    attributes: str
    event: str
    violations: str
    faces: str
    snapshot: str
    state: str
    stats: str
    detect_set: str
    detect_state: str
    detect_attributes: str
    discovery: str
    ha_status: str  # Home Assistant's birth/last will: `online` asks for discovery again
    # Home Assistant's ids: the prefix is part of them, as of the discovery topic, so two sites
    # on one broker told apart by it (or a changed prefix) are separate devices and entities.
    object_id: str  # <prefix>_<device_id>_<camera>: the camera's entities' unique_id stem
    device_key: str  # <prefix>_<device_id>: the device's identifier

    @classmethod
    def build(cls, mq: MqttConfig, device_id: str, camera: str, device_status: bool = False
              ) -> Topics:
        """``device_status``: the process runs a ``cameras:`` map and owns the device's status."""
        base = f"{mq.prefix}/{device_id}"
        cam = f"{base}/{camera}"
        status = f"{base}/status" if device_status else f"{cam}/status"
        return cls(
            status=status,
            status_detail=f"{status}/detail",
            availability=f"{cam}/status",
            violation=f"{cam}/violation",
            active=f"{cam}/violation/active",
            attributes=f"{cam}/violation/attributes",
            event=f"{cam}/violation/event",
            violations=f"{cam}/violations",
            faces=f"{cam}/faces",
            snapshot=f"{cam}/snapshot",
            state=f"{cam}/state",
            stats=f"{cam}/stats",
            detect_set=f"{cam}/detect/set",
            detect_state=f"{cam}/detect/state",
            detect_attributes=f"{cam}/detect/attributes",
            discovery=f"{mq.discovery_prefix}/device/{mq.prefix}_{device_id}_{camera}/config",
            ha_status=f"{mq.discovery_prefix}/status",
            object_id=f"{mq.prefix}_{device_id}_{camera}",
            device_key=f"{mq.prefix}_{device_id}",
        )

    def retained(self) -> list[str]:
        """The camera's retained topics (what ``maskd mqtt-clear`` removes)."""
        own = [self.availability, self.active, self.attributes, self.violations, self.faces,
               self.snapshot, self.state, self.stats, self.detect_state, self.detect_attributes,
               self.discovery]
        if self.status == self.availability:
            own.append(self.status_detail)
        return own


# No command is longer, whitespace around it included: a longer message is not decoded (1 MB
# that is not UTF-8 takes 11 ms, holding the interpreter: a flood of them slowed the loop)
LONGEST_SWITCH = 64


def parse_switch(payload: bytes) -> bool | None:
    """ON/OFF (and true/false, 1/0, enable(d)/disable(d)) as sent by Home Assistant or a
    person; None if neither."""
    if len(payload) > LONGEST_SWITCH:
        return None
    text = payload.decode("utf-8", "replace").strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


PRODUCT = "maskd face-mask detector"
EVENT_TYPES = ["start", "end"]  # the event entity's types: a violation began / ended


def discovery_config(
    topics: Topics, device_id: str, camera: str, snapshots: bool,
    configuration_url: str | None = None,
) -> dict:
    """Home Assistant device-based discovery: one retained message for all of a camera's
    entities, each available while both the process and the camera are."""
    uid = topics.object_id

    def sensor(key: str, name: str, topic: str, template: str, **extra: Any) -> tuple[str, dict]:
        return f"{uid}_{key}", {
            "platform": "sensor", "name": name, "unique_id": f"{uid}_{key}",
            "state_topic": topic, "value_template": template, "qos": 1, **extra,
        }

    cmps = dict([
        (f"{uid}_violation", {
            "platform": "binary_sensor", "name": f"{camera} mask violation",
            "unique_id": f"{uid}_violation", "device_class": "problem",
            "state_topic": topics.active, "payload_on": "ON", "payload_off": "OFF",
            "json_attributes_topic": topics.attributes, "qos": 1,
        }),
        (f"{uid}_violation_event", {
            "platform": "event", "name": f"{camera} violation", "unique_id": f"{uid}_violation_event",
            "state_topic": topics.event, "event_types": EVENT_TYPES, "qos": 1,
        }),
        (f"{uid}_detect", {
            "platform": "switch", "name": f"{camera} detection", "unique_id": f"{uid}_detect",
            "command_topic": topics.detect_set, "state_topic": topics.detect_state,
            "payload_on": "ON", "payload_off": "OFF", "state_on": "ON", "state_off": "OFF",
            "json_attributes_topic": topics.detect_attributes, "qos": 1,
        }),
        sensor("violations", f"{camera} people in violation", topics.violations, "{{ value }}",
               state_class="measurement"),
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
        # on while the camera is lost or not answering, or something keeps events from the
        # broker (a full disk, a refused topic, a certificate near its end): what an
        # automation can tell a person about; the lines themselves as an attribute
        (f"{uid}_problem", {
            "platform": "binary_sensor", "name": f"{camera} problem",
            "unique_id": f"{uid}_problem", "device_class": "problem",
            "entity_category": "diagnostic", "state_topic": topics.stats,
            "value_template": "{{ 'ON' if value_json.problems | default([]) else 'OFF' }}",
            "json_attributes_topic": topics.stats,
            "json_attributes_template": "{{ {'problems': value_json.problems | default([])} "
                                        "| tojson }}",
            "qos": 1,
        }),
    ])
    # Without snapshots the platform alone: Home Assistant keeps a component that a device
    # payload merely omits, and removes one given as {"platform": ...} (a no-op if never had).
    cmps[f"{uid}_snapshot"] = {"platform": "camera"}
    if snapshots:
        cmps[f"{uid}_snapshot"].update({
            "name": f"{camera} last violation", "unique_id": f"{uid}_snapshot",
            "topic": topics.snapshot, "qos": 1,
        })
    availability = [{"topic": t, "payload_available": "online", "payload_not_available": "offline"}
                    for t in dict.fromkeys((topics.status, topics.availability))]
    device: dict[str, Any] = {
        "identifiers": [topics.device_key], "name": f"maskd {device_id}",
        "manufacturer": "maskd", "model": PRODUCT, "sw_version": __version__,
    }
    if configuration_url:
        device["configuration_url"] = configuration_url
    return {
        "device": device,
        "origin": {"name": "maskd", "sw_version": __version__},
        "availability": availability,
        "availability_mode": "all",
        "qos": 1,
        "components": cmps,
    }
