"""The one validated configuration object for maskd.

Loaded once at start (``load_config``) and passed down; nothing reads the YAML file or
the environment behind its back. Every section forbids unknown keys so a typo in
``/etc/maskd/config.yaml`` is reported instead of silently ignored.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

EX_CONFIG = 78  # sysexits.h: configuration error; systemd's RestartPreventExitStatus uses it
DEFAULT_CONFIG_PATH = Path("/etc/maskd/config.yaml")

Id = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SourceConfig(Section):
    """Where frames come from."""

    kind: Literal["auto", "picamera2", "opencv", "images", "demo"] = "auto"
    # OpenCV: device index ("0"), /dev/videoN, rtsp://, http://, or a video file; images: a folder.
    uri: str | None = None
    width: int = Field(640, ge=16, le=7680)
    height: int = Field(480, ge=16, le=4320)
    fps: float = Field(15.0, gt=0, le=240)
    loop: bool = False  # file sources: play again from the start at the end
    reopen_min_s: float = Field(1.0, gt=0)
    reopen_max_s: float = Field(30.0, gt=0)


class DetectorConfig(Section):
    """Face detector choice and tuning."""

    kind: Literal["auto", "yunet", "blazeface", "ssd"] = "auto"
    model: Path | None = None  # yunet .onnx / ssd .tflite; blazeface reads its wheel
    variant: Literal["short", "full"] = "full"  # blazeface range
    input_width: int = Field(320, ge=32, le=4096)
    input_height: int = Field(240, ge=32, le=4096)
    # None: the detector's own default (DEFAULT_SCORE_THRESHOLD in maskd/detectors.py): YuNet 0.8,
    # chosen on scenes-dev because low-score YuNet faces are mostly blurred crowd faces the
    # classifier misjudges (docs/detectors.md); 0.6 for the others.
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    nms_threshold: float = Field(0.3, ge=0.0, le=1.0)
    # Small faces: run the detector on an upscaled frame (upscale > 1) or on tiles.
    upscale: float = Field(1.0, ge=1.0, le=4.0)
    tiles: int = Field(1, ge=1, le=4)  # tiles per side (1 = whole frame)
    edgetpu: bool = False


class ClassifierConfig(Section):
    """Mask / no-mask classifier."""

    model: Path | None = None  # None: the shipped default in models/
    threads: int = Field(2, ge=1, le=64)
    edgetpu: bool = False
    margin: float = Field(0.15, ge=0.0, le=1.0)  # crop margin around the face box, per side
    # Faces smaller than this (shorter side of the detected box) are counted, not judged. 20, not
    # 24: detected boxes run a little under the annotated size (docs/detectors.md).
    min_face_px: int = Field(20, ge=1)
    # `run`: a face whose box comes within this many pixels of the frame border is cut off by the
    # frame; it is counted, not judged (0 = judge it anyway).
    edge_px: int = Field(0, ge=0)
    # Per-frame label cut on P(no_mask); 0.7 = the tracker's start_threshold, best violation F1
    # on scenes-dev (docs/detectors.md).
    threshold: float = Field(0.7, gt=0.0, lt=1.0)
    # A second, mirrored view for a fresh score within this distance of the label cut; the two
    # scores are averaged (0 = off). Costs a classification only for the doubtful faces.
    flip_band: float = Field(0.0, ge=0.0, le=0.5)


class TrackingConfig(Section):
    """Tracks and violation lifecycle."""

    iou_threshold: float = Field(0.3, ge=0.0, le=1.0)
    max_missed_frames: int = Field(10, ge=0)
    window: int = Field(5, ge=1, le=100)  # median of the last N fresh no-mask scores
    start_threshold: float = Field(0.7, ge=0.0, le=1.0)
    release_threshold: float = Field(0.4, ge=0.0, le=1.0)
    # Evidence to confirm a violation: at least min_votes fresh classifications in a row with the
    # smoothed score >= start_threshold, the first and last of them at least min_span_s apart. A
    # cached score (recheck_every) never counts as a vote. (min_frames is the old name.)
    min_votes: int = Field(3, ge=1, validation_alias=AliasChoices("min_votes", "min_frames"))
    min_span_s: float = Field(0.0, ge=0.0, le=60.0)
    recheck_every: int = Field(5, ge=1)  # re-classify a still, confident track every K frames
    update_interval_s: float = Field(5.0, ge=0.0)
    end_after_s: float = Field(3.0, ge=0.0)  # track gone this long ends the event
    cooldown_s: float = Field(10.0, ge=0.0)
    # Re-attach and cooldown apply only to the same person: a new track near the old box, of a
    # similar size, whose appearance (maskd.tracking.appearance) is at least this similar (0..1;
    # 0 = any face at the same place is the same person, the old rule).
    same_person_similarity: float = Field(0.8, ge=0.0, le=1.0)


class JsonlConfig(Section):
    path: str | None = None  # "-" for stdout, a file path, or None for off


class MqttConfig(Section):
    """Building broker connection; see docs/mqtt.md."""

    url: str | None = None  # mqtt://host:1883 or mqtts://host:8883; None = off
    prefix: Id = "maskd"
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    reconnect_min_s: float = Field(1.0, gt=0)  # backoff between connection attempts
    reconnect_max_s: float = Field(30.0, gt=0)
    snapshots: bool = False  # opt-in: no image leaves the device by default
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    state_interval_s: float = Field(1.0, ge=1.0)
    stats_interval_s: float = Field(60.0, ge=1.0)
    outbox_max_events: int = Field(100_000, ge=1)
    outbox_max_age_s: float = Field(7 * 24 * 3600.0, gt=0)

    @field_validator("url")
    @classmethod
    def _scheme(cls, v: str | None) -> str | None:
        if v is not None and not (v.startswith("mqtt://") or v.startswith("mqtts://")):
            raise ValueError("must start with mqtt:// or mqtts://")
        return v

    def password(self) -> str | None:
        """The password from its file or environment variable (never stored in YAML)."""
        if self.password_file is not None:
            return self.password_file.read_text(encoding="utf-8").strip()
        if self.password_env is not None:
            return os.environ.get(self.password_env)
        return None


class PreviewConfig(Section):
    """Local views; none of them may slow the detection loop."""

    framebuffer: Path | None = None  # e.g. /dev/fb0 for HDMI without a desktop
    window: bool = False  # an OpenCV window when the installed OpenCV has GUI support
    http: str | None = None  # "127.0.0.1:8080" serves an MJPEG page
    annotate_dir: Path | None = None  # write annotated frames/clip here


class Config(Section):
    """The whole maskd configuration."""

    device_id: Id = "maskd"
    camera: Id = "camera"
    state_dir: Path = Path("/var/lib/maskd")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    source: SourceConfig = SourceConfig()
    detector: DetectorConfig = DetectorConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    tracking: TrackingConfig = TrackingConfig()
    jsonl: JsonlConfig = JsonlConfig()
    mqtt: MqttConfig = MqttConfig()
    preview: PreviewConfig = PreviewConfig()


class ConfigError(Exception):
    """A config problem, already phrased as one line per bad key."""


def _section_keys(loc: tuple) -> list[str]:
    """The keys allowed in the section at ``loc`` (so an error can say what is allowed)."""
    model: Any = Config
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        model = field.annotation
    return list(model.model_fields)


def _format_errors(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "<top>"
        if e["type"] == "extra_forbidden":
            allowed = _section_keys(loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            lines.append(f"{source}: unknown key '{key}' (allowed: {', '.join(allowed)}){hint}")
        elif e["type"] == "model_type":
            lines.append(f"{source}: '{key}' must be a section with keys: "
                         f"{', '.join(_section_keys(loc))} (got {e.get('input')!r})")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: '{key}': {msg} (got {e.get('input')!r})")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>") -> Config:
    """Validate a mapping (as read from YAML) into a Config, or raise ConfigError."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source)) from None


def load_config(path: Path | str | None) -> Config:
    """Read and validate a YAML config file; None gives the built-in defaults."""
    if path is None:
        return Config()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{p}: cannot read config: {err.strerror or err}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:  # one line: where and what, not PyYAML's multi-line dump
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{p}: not valid YAML{where}: {what}") from None
    return parse_config(data, str(p))
