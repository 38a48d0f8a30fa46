"""Check MQTT discovery payloads with Home Assistant's own code: the steps its MQTT integration
takes on a discovery message (homeassistant/components/mqtt/discovery.py), then the platform's
``DISCOVERY_SCHEMA``, the schema an entity's config must pass before Home Assistant creates it.

Runs inside the Home Assistant venv that tools/ha_venv.py builds (Home Assistant needs a newer
Python than maskd), never in maskd's: it imports only the standard library and homeassistant.

    printf '[{"topic": "homeassistant/device/x/config", "payload": {...}}]' \\
        | <ha-venv>/bin/python tools/ha_validate.py [--json] [--discovery-prefix homeassistant]

Input: a JSON list of {"topic": str, "payload": object or str (the message as sent)}, each
optionally with "samples": {topic: payload text}, messages an entity would receive: its
``value_template`` (on its ``state_topic``) and ``json_attributes_template`` (on its
``json_attributes_topic``) are rendered with them as Home Assistant's MQTT entities do
(``MqttValueTemplate``), and reported under ``rendered``.
Output: a line per entity, ``OK`` or ``FAIL`` with the voluptuous error Home Assistant would log;
``--json`` prints a JSON list instead. Exit status 1 when anything failed.

Per message, as Home Assistant does it:
- the topic: ``<prefix>/<component>/[<node_id>/]<object_id>/config`` (discovery.TOPIC_MATCHER);
  ``<prefix>/device/<id>/config`` is device-based discovery (``components``/``cmps``);
- abbreviations expanded (``_replace_all_abbreviations``: ABBREVIATIONS, DEVICE_ABBREVIATIONS,
  ORIGIN_ABBREVIATIONS); a device payload must pass DEVICE_DISCOVERY_SCHEMA, a single
  component's ``origin`` MQTT_ORIGIN_INFO_SCHEMA;
- each component of a device payload gets the device, the origin and the shared options it
  inherits (``_merge_common_device_options``: availability, state and command topics, ...);
- ``~`` is replaced (``_replace_topic_base``), then the platform's discovery schema validates.

Reported besides errors, because Home Assistant drops them without a word: ``ignored``, the
options a platform's schema removed (unknown to that platform, e.g. a typo), and for a device
payload ``not_inherited``, top-level options that no component inherits (e.g. ``qos``).
Nothing is started: a bare HomeAssistant object (never run) exists only so that template
validation sees the event loop and an instance, as it does inside Home Assistant.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import importlib
import json
import logging
import sys
import tempfile
from typing import Any

import voluptuous as vol
from homeassistant.components.mqtt import discovery as ha_discovery
from homeassistant.components.mqtt.const import CONF_COMPONENTS, CONF_ORIGIN, SUPPORTED_COMPONENTS
from homeassistant.components.mqtt.models import MqttValueTemplate
from homeassistant.components.mqtt.schemas import (
    DEVICE_DISCOVERY_SCHEMA,
    MQTT_ORIGIN_INFO_SCHEMA,
    SHARED_OPTIONS,
)
from homeassistant.const import CONF_DEVICE, CONF_PLATFORM, __version__
from homeassistant.core import HomeAssistant
from homeassistant.helpers import frame
from homeassistant.util.json import json_loads_object


class Records(logging.Handler):
    """What Home Assistant logs at WARNING or above while one payload is validated."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


def schema_for(component: str) -> Any:
    """The discovery schema of an MQTT platform (a module per platform; light's is a package
    with one schema per ``schema:``; device triggers have their own name)."""
    module = importlib.import_module(f"homeassistant.components.mqtt.{component}")
    if component == "device_automation":
        return importlib.import_module(
            "homeassistant.components.mqtt.device_trigger").TRIGGER_DISCOVERY_SCHEMA
    if component == "light":
        return module.validate_mqtt_light_discovery
    return module.DISCOVERY_SCHEMA


def result(topic: str, component: str, object_id: str, error: str | None = None,
           **extra: Any) -> dict:
    return {"topic": topic, "component": component, "object_id": object_id,
            "ok": error is None, "error": error, **extra}


# the templates rendered from samples, and the topic each one reads
RENDERED = {"value_template": "state_topic", "json_attributes_template": "json_attributes_topic"}


def render(config: dict, samples: dict[str, str]) -> dict[str, str]:
    """What the entity's templates make of the sample messages on their topics, as its MQTT
    platform renders a received payload (``value`` and ``value_json``)."""
    out = {}
    for key, topic_key in RENDERED.items():
        template, topic = config.get(key), config.get(topic_key)
        if template is not None and topic in samples:
            out[key] = MqttValueTemplate(template).async_render_with_possible_json_value(
                samples[topic], "<no value>")
    return out


def check_component(topic: str, component: str, object_id: str, payload: dict,
                    records: Records, samples: dict[str, str] | None = None) -> dict:
    """One entity's config, after the device-level steps: ``~``, then the platform schema."""
    if component not in SUPPORTED_COMPONENTS:
        return result(topic, component, object_id,
                      f"'{component}' is not an MQTT platform Home Assistant supports")
    payload = ha_discovery.MQTTDiscoveryPayload(payload)
    if ha_discovery.TOPIC_BASE in payload:
        ha_discovery._replace_topic_base(payload)
    sent = set(payload)
    del records.lines[:]
    try:
        config = schema_for(component)(payload)
    except vol.Invalid as err:  # what Home Assistant logs: "Error '<err>' when processing ..."
        return result(topic, component, object_id, str(err), warnings=list(records.lines))
    ignored = sorted(sent - set(config) - {CONF_PLATFORM})
    extra = {"rendered": render(config, samples)} if samples else {}
    return result(topic, component, object_id, ignored=ignored, warnings=list(records.lines),
                  **extra)


def check_message(topic: str, raw: Any, prefix: str, records: Records,
                  samples: dict[str, str] | None = None) -> list[dict]:
    trimmed = topic.replace(f"{prefix}/", "", 1) if topic.startswith(f"{prefix}/") else None
    match = ha_discovery.TOPIC_MATCHER.match(trimmed) if trimmed is not None else None
    if match is None:
        return [result(topic, "?", "?", f"not a discovery topic under '{prefix}/' that Home "
                       "Assistant accepts (<component>/[<node_id>/]<object_id>/config)")]
    component, node_id, object_id = match.groups()
    if raw in ("", None):  # an empty retained message removes the entity: nothing to validate
        return [result(topic, component, object_id, removal=True)]
    try:
        data = json_loads_object(raw) if isinstance(raw, (str, bytes)) else copy.deepcopy(raw)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        return [result(topic, component, object_id, f"unable to parse JSON: {err}")]

    if component != CONF_DEVICE:
        ha_discovery._replace_all_abbreviations(data)
        if CONF_ORIGIN in data:
            try:
                MQTT_ORIGIN_INFO_SCHEMA(data[CONF_ORIGIN])
            except vol.Invalid as err:
                return [result(topic, component, object_id, f"origin: {err}")]
        return [check_component(topic, component, object_id, data, records, samples)]

    ha_discovery._replace_all_abbreviations(data)
    try:
        DEVICE_DISCOVERY_SCHEMA(data)
    except vol.Invalid as err:  # Home Assistant: "Invalid MQTT device discovery payload ..."
        return [result(topic, CONF_DEVICE, object_id, str(err))]
    top = set(data) - {CONF_DEVICE, CONF_ORIGIN, CONF_COMPONENTS}
    out = [result(topic, CONF_DEVICE, object_id,
                  not_inherited=sorted(top - set(SHARED_OPTIONS)),
                  components=len(data[CONF_COMPONENTS]))]
    for component_id, comp in data[CONF_COMPONENTS].items():
        comp = dict(comp)
        platform = comp.pop(CONF_PLATFORM)
        if not comp:  # {"platform": ...} alone removes that component
            out.append(result(topic, platform, component_id, removal=True))
            continue
        comp[CONF_DEVICE] = data[CONF_DEVICE]
        comp[CONF_ORIGIN] = data.get(CONF_ORIGIN)
        ha_discovery._merge_common_device_options(comp, data)
        out.append(check_component(topic, platform, component_id, comp, records, samples))
    return out


async def check_all(messages: list[dict], prefix: str) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="maskd-ha-") as config_dir:
        # Never started: cv.template and the frame helper look for an instance and its loop.
        hass = HomeAssistant(config_dir)
        frame.async_setup(hass)
        for component in SUPPORTED_COMPONENTS:  # import-time log lines are not about a payload
            schema_for(component)
        records = Records()
        logging.getLogger("homeassistant").addHandler(records)
        out: list[dict] = []
        for i, msg in enumerate(messages):
            for r in check_message(msg["topic"], msg.get("payload"), prefix, records,
                                   msg.get("samples")):
                out.append({"message": i, **r})  # the index of the message in the input
        return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print a JSON list of results")
    ap.add_argument("--discovery-prefix", default="homeassistant")
    args = ap.parse_args(argv)
    # Importing the camera platform logs a traceback when libturbojpeg is missing (only
    # snapshot speed suffers); keep Home Assistant's own logging off the output.
    logging.getLogger().addHandler(logging.NullHandler())
    logging.getLogger().setLevel(logging.WARNING)
    messages = json.load(sys.stdin)
    results = asyncio.run(check_all(messages, args.discovery_prefix))
    if args.json:
        json.dump({"homeassistant": __version__, "results": results}, sys.stdout, indent=1)
        print()
    else:
        print(f"Home Assistant {__version__}: {len(messages)} message(s)")
        for r in results:
            word = "OK  " if r["ok"] else "FAIL"
            line = f"{word} {r['topic']} {r['component']} {r['object_id']}"
            print(line + (f": {r['error']}" if r["error"] else ""))
            for key in ("ignored", "not_inherited", "warnings"):
                if r.get(key):
                    print(f"     {key}: {', '.join(r[key])}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
