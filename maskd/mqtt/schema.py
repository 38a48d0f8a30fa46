"""The `<camera>/violation` payload: one pydantic model is the payload, its builder and its
published JSON Schema (docs/mqtt.md carries the same text; a test keeps them equal).

The outbox stores the payload without the delivery fields (``sent_at``, ``buffered``), which
each publish sets (``on_wire``); the JSON lines sink writes only the event's own fields
(``event_fields``), having no device context.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import core_schema

from maskd import __version__
from maskd.types import ViolationEvent

SCHEMA_ID = "maskd.violation/1"

#: What a ViolationEvent itself carries (no device, software or delivery context).
EVENT_FIELDS = frozenset({
    "event_type", "event_id", "seq", "camera", "track_id", "start_time", "end_time", "score",
    "top_score", "box", "end_reason", "frame_seq", "duration_s", "clock_step_s",
})
#: Set at each publish, so a replayed event says when it was really sent and that it waited.
DELIVERY_FIELDS = frozenset({"sent_at", "buffered"})


class _PlainSchema(GenerateJsonSchema):
    """The schema as consumers read it: no titles or defaults, nullable as ``[type, "null"]``
    and literals as bare const/enum, so the published text stays small and stable."""

    def generate(self, schema: core_schema.CoreSchema,
                 mode: JsonSchemaMode = "validation") -> JsonSchemaValue:
        out = super().generate(schema, mode)
        out.pop("description", None)  # the model's docstring is for maskd's readers
        return out

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        inner = self.generate_inner(schema["schema"])
        if "enum" in inner:
            return {"enum": [*inner["enum"], None]}
        return {**inner, "type": [inner["type"], "null"]}

    def literal_schema(self, schema: core_schema.LiteralSchema) -> JsonSchemaValue:
        out = super().literal_schema(schema)
        out.pop("type", None)
        return out

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])


class ViolationPayload(BaseModel):
    """One violation message as published on `<camera>/violation`."""

    model_config = ConfigDict(
        title="maskd violation event",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema",
                           "$id": SCHEMA_ID},
    )

    # "schema" would shadow BaseModel.schema(); the alias is the wire name.
    schema_id: Literal["maskd.violation/1"] = Field(alias="schema")
    event_type: Literal["start", "update", "end"]
    event_id: str
    seq: int = Field(ge=0)
    device_id: str
    camera: str
    track_id: int
    start_time: float
    end_time: float | None
    score: float = Field(ge=0, le=1)
    top_score: float = Field(ge=0, le=1)
    box: list[float] = Field(min_length=4, max_length=4)
    end_reason: Literal["masked", "gone", "shutdown", "restart"] | None
    frame_seq: int | None = None
    # Additive (not required: rows an older version stored go out without them).
    duration_s: float | None = Field(default=None, ge=0)
    clock_step_s: float = 0.0
    model: str | None
    sw_version: str
    snapshot: bool = False
    sent_at: float
    buffered: bool

    @classmethod
    def model_json_schema(  # type: ignore[override]
        cls, by_alias: bool = True, ref_template: str = "#/$defs/{model}",
        schema_generator: type[GenerateJsonSchema] = _PlainSchema,
        mode: JsonSchemaMode = "serialization", **kwargs: Any,
    ) -> dict[str, Any]:
        """The published schema (what a consumer receives, hence serialization mode)."""
        return super().model_json_schema(by_alias, ref_template, schema_generator, mode, **kwargs)

    @classmethod
    def build(cls, event: ViolationEvent, *, device_id: str, model: str | None,
              snapshot: bool) -> ViolationPayload:
        """The payload of ``event`` from this device, as if sent now and not buffered."""
        return cls.model_validate({
            "schema": SCHEMA_ID, **_event_values(event), "device_id": device_id,
            "model": model, "sw_version": __version__, "snapshot": snapshot,
            "sent_at": round(time.time(), 3), "buffered": False,
        })

    def stored(self) -> dict[str, Any]:
        """What the outbox keeps: all but the delivery fields, which each publish sets."""
        return self.model_dump(mode="json", by_alias=True, exclude=set(DELIVERY_FIELDS))


def on_wire(stored: dict[str, Any], buffered: bool, snapshot_follows: bool) -> dict[str, Any]:
    """An outbox row's payload as published now (rows from older versions pass unchanged).
    ``snapshot`` stays true only when its snapshot follows this publish: one dropped from
    memory, sent after an earlier copy, or gone with a restart (never stored) is not promised."""
    wire = {**stored, "sent_at": round(time.time(), 3), "buffered": buffered}
    if wire.get("snapshot") and not snapshot_follows:
        wire["snapshot"] = False
    return wire


def event_fields(event: ViolationEvent) -> dict[str, Any]:
    """The event's own payload fields, JSON-ready, as the model names and rounds them."""
    part = ViolationPayload.model_construct(**_event_values(event))
    return part.model_dump(mode="json", include=set(EVENT_FIELDS))


def _event_values(event: ViolationEvent) -> dict[str, Any]:
    return {
        "event_type": event.event_type,
        "event_id": event.event_id,
        "seq": event.seq,
        "camera": event.camera,
        "track_id": event.track_id,
        "start_time": event.start_time,
        "end_time": event.end_time,
        "score": round(float(event.score), 4),
        "top_score": round(float(event.top_score), 4),
        "box": [round(float(v), 4) for v in event.box],
        "end_reason": event.end_reason,
        "frame_seq": event.frame_seq,
        "duration_s": event.duration_s,
        "clock_step_s": event.clock_step_s,
    }
