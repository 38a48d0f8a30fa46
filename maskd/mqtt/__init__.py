"""Violation events, availability and state to the building's MQTT broker (docs/mqtt.md).

- ``sink``: MqttSink, the publisher thread over the durable outbox (maskd.outbox) and the
  clean/unclean session marker;
- ``credentials``: the password and TLS files, read again before a connection once changed
  on disk, and the broker's own certificate;
- ``homeassistant``: topic names, Home Assistant discovery and the detection switch;
- ``schema``: the violation payload model, whose JSON Schema is the published one.

Connection settings (url, credentials, TLS files) are validated by maskd.config.MqttConfig.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from maskd.mqtt.homeassistant import Topics, discovery_config, parse_switch
from maskd.mqtt.schema import SCHEMA_ID, ViolationPayload

if TYPE_CHECKING:
    from maskd.mqtt.credentials import apply_tls
    from maskd.mqtt.sink import UNSUPPORTED_PROTOCOL, MqttSink, plain_listener_hint

__all__ = [
    "SCHEMA_ID",
    "UNSUPPORTED_PROTOCOL",
    "MqttSink",
    "Topics",
    "ViolationPayload",
    "apply_tls",
    "discovery_config",
    "parse_switch",
    "plain_listener_hint",
]


def __getattr__(name: str) -> Any:
    """The sink (paho, sqlite) loads on first use, so the JSON lines sink's use of the schema
    does not slow a start without MQTT."""
    if name in ("UNSUPPORTED_PROTOCOL", "MqttSink", "plain_listener_hint"):
        from maskd.mqtt import sink

        return getattr(sink, name)
    if name == "apply_tls":
        from maskd.mqtt.credentials import apply_tls

        return apply_tls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
