"""The one validated configuration object for maskd.

Loaded once at start (``load_config``) and passed down; nothing reads the YAML file or
the environment behind its back. Every section forbids unknown keys so a typo in
``/etc/maskd/config.yaml`` is reported instead of silently ignored.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import reprlib
import socket
import ssl
import stat
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from yaml.composer import ComposerError
from yaml.events import AliasEvent
from yaml.nodes import ScalarNode

from maskd import certs, env, schedule, zones
from maskd.files import open_regular, read_limited
from maskd.modelfiles import not_onnx

EX_CONFIG = 78  # sysexits.h: configuration error; systemd's RestartPreventExitStatus uses it
DEFAULT_CONFIG_PATH = Path("/etc/maskd/config.yaml")
SERVICE_DIR = Path("/var/lib/maskd")  # the unit's StateDirectory= and WorkingDirectory=

# Bounds on what load_config reads, so a hostile or broken file fails fast with one line instead
# of hanging or eating memory. A full, commented config is about 7 KB, 3 levels and 150 values.
MAX_CONFIG_BYTES = 64 * 1024
MAX_YAML_DEPTH = 16
MAX_YAML_VALUES = 5000  # after expanding aliases: stops "billion laughs"
MAX_ERROR_LINES = 20

ID_CHARS = "A-Za-z0-9_-"  # a camera's or device's id: MQTT topic levels, client ids, file names
ID_MAX = 64
Id = Annotated[str, Field(pattern=f"^[{ID_CHARS}]{{1,{ID_MAX}}}$")]
EnvName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
Seconds = Annotated[float, Field(gt=0, le=3600.0)]  # a wait that threading and paho can take


_CONTROL = ("must not contain control characters, such as the newline a YAML | block keeps: "
            "write the {} on the key's own line")


def _has_control(text: str) -> bool:
    """C0 and C1 control characters (a newline, an escape): what no path, address or MQTT
    string of the config may hold."""
    return any(ord(c) < 32 or 127 <= ord(c) < 160 for c in text)


def _named(v: Any) -> Any:
    """Path("") is ".": an empty path would quietly mean the working directory (or, for
    ``jsonl.path``, no output), so it is refused as the command line refuses ``--state-dir ""``.
    A leading ``~`` is the home folder, as in a shell: kept as it was, files went to ./~/ of
    whatever the working directory was, and check-config and run would see other paths."""
    if isinstance(v, str) and not v.strip():
        raise ValueError("is empty: name a file or folder, or leave the key out")
    if isinstance(v, str) and _has_control(v):  # the newline a YAML | block keeps: the events
        raise ValueError(_CONTROL.format("path"))  # went to "events.jsonl\n", beside the file
    if isinstance(v, str | Path):
        return type(v)(os.path.expanduser(v))
    return v


def _source_uri(v: Any) -> Any:
    """``source.uri`` empty was the default camera without a word (``--source ""`` is a usage
    error); a leading ``~`` is the home folder, as in every path key (no URL begins with one)."""
    if isinstance(v, str) and not v.strip():
        raise ValueError("is empty: name the camera (0, /dev/video0, rtsp://...), a video file or "
                         "a folder")
    # A newline (the one a YAML `|` block keeps) or an escape opens nothing, and it split the
    # log line and the systemd status (where "\nSTOPPING=1" is a notify command of its own).
    if isinstance(v, str) and _has_control(v):
        raise ValueError(_CONTROL.format("address"))
    if isinstance(v, str) and v.startswith("~"):
        return os.path.expanduser(v)
    return v


FsPath = Annotated[Path, BeforeValidator(_named)]  # every file or folder the config names

_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?")


_NUMERIC = re.compile(r"[0-9.]+")


def check_host(host: str) -> str:
    """An IP address or an ASCII DNS name; anything else fails only later, at connect or bind.
    Digits and dots alone are an IPv4 address or a typo ("192.168.1.300", "0.0.0."): no DNS
    name ends in an all-numeric label, so such a host would never resolve, and `run` retried
    it for ever as a late network."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"has a bad host {excerpt(host)}: not a host name or IP address") from None
        if _NUMERIC.fullmatch(host) and _ip(host) is None:
            raise ValueError(f"has a bad host {excerpt(host)}: not an IP address (four numbers "
                             "0-255, e.g. 192.168.1.30)") from None
    return host


def parse_listen(value: str) -> tuple[str, int]:
    """'8080' or ':8080' -> ('127.0.0.1', 8080); 'HOST:PORT' and '[v6]:PORT' as given.

    Raises ValueError; shared by the config model and the HTTP preview so both agree.
    """
    text = value.strip()
    host, _, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host
    if (not (port.isascii() and port.isdigit()) or len(port) > 5 or int(port) > 65535
            or (":" in host and not bracketed)):
        raise ValueError("is not HOST:PORT (e.g. 127.0.0.1:8080)")
    return check_host(host or "127.0.0.1"), int(port)


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``host`` as the address a socket binds: any numeric spelling the C library takes ("0",
    "127.1") included; None for a host name, or for text no address can hold (a NUL or a lone
    surrogate: the status page's Host header is anyone's text, and inet_aton raises ValueError
    for those, not OSError)."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None


def is_loopback(host: str) -> bool:
    """True when only this machine can connect to ``host`` (a host name may be any interface)."""
    if host == "localhost":
        return True
    ip = _ip(host)
    return ip is not None and ip.is_loopback


def is_wildcard(host: str) -> bool:
    """True for a listen host meaning every interface: "", 0.0.0.0, "0", ::."""
    ip = _ip(host)
    return host.strip("[]") == "" or (ip is not None and ip.is_unspecified)


def mqtt_text(value: str) -> str:
    """Text mosquitto takes in an MQTT string (a topic, the user name): it drops the client for
    control characters and Unicode noncharacters."""
    if _has_control(value):
        raise ValueError("must not contain control characters")
    if any(0xFDD0 <= ord(c) <= 0xFDEF or ord(c) & 0xFFFE == 0xFFFE for c in value):
        raise ValueError("must not contain Unicode noncharacters (mosquitto drops the client)")
    return value


def check_topic(value: str) -> str:
    """A topic paho can publish to: a wildcard kills paho's network thread, and mosquitto
    disconnects a client for control characters or empty levels it cannot route."""
    if not value:
        raise ValueError("must not be empty")
    for ch in "+#":
        if ch in value:
            raise ValueError(f"must not contain '{ch}' (an MQTT wildcard)")
    mqtt_text(value)
    if value.startswith("$"):
        raise ValueError("must not start with '$' (reserved for the broker)")
    if "" in value.split("/"):
        raise ValueError("must not have an empty level (a leading, trailing or double '/')")
    if len(value.encode()) > 200:
        raise ValueError("is longer than 200 bytes")
    return value


def _no_bool(v: Any) -> Any:
    """A number's place: YAML 1.1 reads on/off/yes/no as booleans, which pydantic would take
    as 1 and 0 (`cooldown_s: off`, 0 seconds; a zone's [off, on], a corner of the frame)."""
    if isinstance(v, bool):
        raise ValueError(f"expected a number, got {str(v).lower()} (YAML reads on/off, yes/no "
                         "and true/false as booleans)")
    return v


def _wants_number(ann: Any) -> bool:
    """Whether a field's type takes a number and not a boolean (``float | None`` does)."""
    kinds = get_args(ann) if get_origin(ann) in (Union, UnionType) else (ann,)
    kinds = tuple(get_args(k)[0] if get_origin(k) is Annotated else k for k in kinds)
    return bool not in kinds and any(k in (int, float) for k in kinds)


class Section(BaseModel):
    """Every section: unknown keys, non-finite numbers and unusable text are errors."""

    # inf/nan pass gt/le checks and then crash a sleep or a comparison at run time.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_number(cls, v: Any, info: ValidationInfo) -> Any:
        """YAML 1.1 reads on/off/yes/no as booleans, and pydantic would take them as 1 and 0:
        `cooldown_s: off` would silently be 0 seconds."""
        if info.field_name and _wants_number(cls.model_fields[info.field_name].annotation):
            return _no_bool(v)
        return v

    @field_validator("*")
    @classmethod
    def _usable_text(cls, v: Any) -> Any:
        """NUL or a lone surrogate in a name or path fails at open()/encode() in `run`, not here."""
        if isinstance(v, str | Path):
            text = str(v)
            if "\0" in text:
                raise ValueError("must not contain a NUL character")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("is not valid Unicode text") from None
        return v


class SourceConfig(Section):
    """Where frames come from."""

    kind: Literal["auto", "picamera2", "opencv", "images", "demo"] = "auto"
    # OpenCV: device index ("0"), /dev/videoN, rtsp://, http://, or a video file; images: a folder.
    uri: Annotated[str, BeforeValidator(_source_uri)] | None = None
    width: int = Field(640, ge=16, le=7680)
    height: int = Field(480, ge=16, le=4320)
    fps: float = Field(15.0, gt=0, le=240)
    loop: bool = False  # file sources: play again from the start at the end
    # Degrees clockwise every frame is turned before anything sees it: a camera mounted upside
    # down (180) or on its side (90, 270). The detector finds no face upside down.
    rotate: Literal[0, 90, 180, 270] = 0
    # Reconnect backoff; under systemd's watchdog it is capped at half WATCHDOG_USEC.
    reopen_min_s: Seconds = 1.0
    reopen_max_s: Seconds = 30.0
    # A live camera whose picture stays exactly the same this long is frozen (an encoder or
    # driver that hangs while the stream goes on): lost and reopened. Longer than any still
    # run of a real camera's stream (H.264 between key frames, a camera's own restart); null =
    # off. Not for files, folders or the demo, where still frames are real.
    frozen_after_s: Seconds | None = 60.0

    @model_validator(mode="after")
    def _images_need_a_folder(self) -> SourceConfig:
        if self.kind == "images" and not self.uri:
            raise ValueError("source kind images needs uri: a folder of images")
        if self.kind == "picamera2" and self.uri is not None and not (
                self.uri.isascii() and self.uri.isdigit()):
            raise ValueError("source kind picamera2 takes uri only as the camera's number (0, "
                             "1: `rpicam-hello --list-cameras` lists them)")
        return self

    @property
    def camera_num(self) -> int:
        """picamera2's camera number: uri's, else 0 (the first camera libcamera lists)."""
        return int(self.uri) if self.kind == "picamera2" and self.uri else 0


class DetectorConfig(Section):
    """Face detector choice and tuning."""

    kind: Literal["auto", "yunet", "centerface", "blazeface", "ssd"] = "auto"
    model: FsPath | None = None  # yunet/centerface .onnx, ssd .tflite/.pb, blazeface .tflite;
    # null: YuNet found (docs/detectors.md), CenterFace's and BlazeFace's from their wheels
    variant: Literal["short", "full"] = "full"  # blazeface range
    # `run` (live video: per-frame cost matters; 320x240 beat 640x480 on walk-up clips,
    # docs/eval_video.md) ...
    input_width: int = Field(320, ge=32, le=4096)
    input_height: int = Field(240, ge=32, le=4096)
    # ... and `scan` (photos and files judged one by one, offline: finding the small faces
    # matters more than time; 640x480 found 87 % of faces >= 24 px on scenes-dev, 320x240 68 %).
    still_input_width: int = Field(640, ge=32, le=4096)
    still_input_height: int = Field(480, ge=32, le=4096)
    # None: the detector's own default (DEFAULT_SCORE_THRESHOLD in maskd/detectors/<kind>.py): YuNet 0.8,
    # chosen on scenes-dev because low-score YuNet faces are mostly blurred crowd faces the
    # classifier misjudges (docs/detectors.md); 0.6 for the others.
    score_threshold: float | None = Field(None, ge=0.0, le=1.0)
    nms_threshold: float = Field(0.3, ge=0.0, le=1.0)
    # `run` only: a face whose detected box is at least big_face_px (shorter side, in pixels of
    # a 480-line frame such as 640x480; scaled with the frame's shorter side, so 128 at 1280x960)
    # is kept from big_face_score up: someone close to the camera, not the crowd a lower cut
    # brings in everywhere. Smaller faces need the cut above; a big_face_score not under that
    # cut changes nothing; null = off. 64 / 0.7: docs/eval_video.md, round twenty.
    big_face_px: int | None = Field(64, ge=1)
    big_face_score: float = Field(0.7, ge=0.0, le=1.0)
    # `run` only: at most this many faces a frame go on to tracking and classification, the
    # biggest (nearest) first. A safety cap, far above any benchmark (scenes-dev's fullest photo
    # has 83): the tracker is quadratic in faces and each costs a classification, so a frame of
    # thousands (a stadium, a texture the detector takes for faces) would otherwise take longer
    # than the service's WatchdogSec on a Pi (docs/performance.md, Overload).
    max_faces: int = Field(200, ge=1, le=5000)
    # Small faces: run the detector on an upscaled frame (upscale > 1) or on tiles.
    upscale: float = Field(1.0, ge=1.0, le=4.0)
    tiles: int = Field(1, ge=1, le=4)  # tiles per side (1 = whole frame)
    edgetpu: bool = False

    @model_validator(mode="after")
    def _ssd_needs_a_model(self) -> DetectorConfig:
        if self.kind == "ssd" and self.model is None:
            raise ValueError("detector kind ssd needs model: a .tflite SSD with "
                             "TFLite_Detection_PostProcess (or OpenCV's .pb face SSD)")
        return self

    @field_validator("model")
    @classmethod
    def _yunet_reads_onnx(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        """kind yunet's model, and auto's (which is YuNet's): another file would reach OpenCV,
        which can crash on it (maskd.modelfiles.not_onnx)."""
        if v is not None and info.data.get("kind") in ("yunet", "auto") and (
                wrong := not_onnx(v)) is not None:
            raise ValueError(f"{shown_path(v)}: {wrong}")
        return v

    @model_validator(mode="after")
    def _edgetpu_needs_a_tflite_ssd(self) -> DetectorConfig:
        """Only a TFLite SSD runs on a Coral; anything else would leave the Coral the config asks
        for unused without a word (here, so check-config and run refuse it alike)."""
        if self.edgetpu and (self.kind != "ssd" or (self.model is not None
                                                   and self.model.suffix.lower() != ".tflite")):
            raise ValueError(f"detector.edgetpu needs kind ssd with an EdgeTPU-compiled .tflite "
                             f"face SSD; {self.kind} runs on the CPU only (classifier.edgetpu "
                             f"puts the classifier on the Coral)")
        return self


def still_detector(cfg: DetectorConfig) -> DetectorConfig:
    """The detector settings `scan` uses: the still-image input size in place of the video one,
    and one score cut for every face (the big-face cut was chosen on video only)."""
    return cfg.model_copy(update={"input_width": cfg.still_input_width,
                                  "input_height": cfg.still_input_height, "big_face_px": None})


class ClassifierConfig(Section):
    """Mask / no-mask classifier."""

    model: FsPath | None = None  # None: the shipped default in models/
    threads: int = Field(2, ge=1, le=64)
    edgetpu: bool = False
    margin: float = Field(0.15, ge=0.0, le=1.0)  # crop margin around the face box, per side
    # Faces smaller than this (shorter side of the detected box) are counted, not judged. 20, not
    # 24: detected boxes run a little under the annotated size (docs/detectors.md).
    min_face_px: int = Field(20, ge=1)
    # `run`: a face whose box comes within this many pixels of the frame border is cut off by the
    # frame; it is counted, not judged (0 = judge it anyway).
    edge_px: int = Field(0, ge=0)
    # Per-frame label cut on P(no_mask); 0.6 = the tracker's start_threshold, best per-image
    # violation F1 on the scenes-dev select part with the shipped model (docs/eval_video.md).
    threshold: float = Field(0.6, gt=0.0, lt=1.0)
    # A second, mirrored view for a fresh score within this distance of the label cut; the two
    # scores are averaged (0 = off). Costs a classification only for the doubtful faces.
    # `run` and `scan` only: `classify` reports one view of `model` (docs/classifier.md).
    # 0.25: docs/eval_video.md, round twenty-one (walk-up F1 0.871 -> 0.887, scan unchanged).
    flip_band: float = Field(0.25, ge=0.0, le=0.5)
    # `scan` (photos, offline) averages P(no_mask) over `model` and these. null: the shipped
    # model's second training draw, when `model` is unset and the default model is the one it
    # is a second draw of (their sidecars: the same recipe but the seed), else none; []: `model`
    # alone.
    # The mean of the two draws was chosen for photos on scenes-dev (docs/eval_video.md, round
    # thirteen); `run` always uses `model` alone.
    still_extra_models: list[FsPath] | None = None


class TrackingConfig(Section):
    """Tracks and violation lifecycle."""

    iou_threshold: float = Field(0.3, ge=0.0, le=1.0)
    # Match each track where its smoothed velocity says it should be now, not where it was last
    # seen (maskd/tracking.py), so a face crossing the view does not split at a missed frame.
    # Off: on the walk-up clips it cost recall and raised false alarms (docs/eval_video.md).
    predict_motion: bool = False
    max_missed_frames: int = Field(10, ge=0)
    window: int = Field(9, ge=1, le=100)  # median of the last N fresh no-mask scores
    start_threshold: float = Field(0.6, ge=0.0, le=1.0)
    release_threshold: float = Field(0.4, ge=0.0, le=1.0)
    # Evidence to confirm a violation: at least min_votes fresh classifications in a row with the
    # smoothed score >= start_threshold, the first and last of them at least min_span_s apart. A
    # cached score (recheck_every) never counts as a vote. (min_frames is the old name.) The
    # defaults (window 9, start 0.6, 3 votes over 0.6 s) were picked on walk-up clips of the
    # scenes-dev select part by the rule in docs/eval_video.md.
    min_votes: int = Field(3, ge=1, validation_alias=AliasChoices("min_votes", "min_frames"))
    min_span_s: float = Field(0.6, ge=0.0, le=60.0)
    # Overwhelming evidence may start sooner: a track whose smoothed score is at least
    # strong_threshold needs its min_votes over strong_span_s only (a face leaving the view after
    # half a second of sure votes). null = off (docs/eval_video.md, round twelve).
    strong_threshold: float | None = Field(None, ge=0.0, le=1.0)
    strong_span_s: float = Field(0.4, ge=0.0, le=60.0)
    recheck_every: int = Field(5, ge=1)  # re-classify a still, confident track every K frames
    update_interval_s: float = Field(5.0, ge=0.0)
    end_after_s: float = Field(3.0, ge=0.0)  # track gone this long ends the event
    cooldown_s: float = Field(10.0, ge=0.0)
    # Re-attach and cooldown apply only to the same person: a new track near the old box, of a
    # similar size, whose appearance (maskd.tracking.appearance: colour layout and the
    # classifier's pooled features) is at least this similar (0..1; 0 = any face at the same
    # place is the same person, the old rule). 0.9: the rule of docs/eval_video.md (rounds
    # nineteen and twenty-three) on train-photo face pairs, `tools/eval_identity.py`.
    same_person_similarity: float = Field(0.9, ge=0.0, le=1.0)
    # A face whose box stays within static_tolerance (of its size) for static_after_s is a
    # picture (a poster, a screen): it raises no event; null = off. Off by default: a person
    # standing perfectly still for that long would be ignored too (docs/pipeline.md).
    static_after_s: float | None = Field(None, gt=0.0, le=3600.0)
    static_tolerance: float = Field(0.05, ge=0.0, le=0.5)

    @model_validator(mode="after")
    def _thresholds_agree(self) -> TrackingConfig:
        """A release above the start would end a violation at the score that just started it
        (a new start/end pair every cooldown for one person). The strong path trades span for
        certainty; one that asks for less would be a loophole."""
        if self.release_threshold > self.start_threshold:
            raise ValueError(f"release_threshold: {self.release_threshold} is above "
                             f"start_threshold {self.start_threshold}; it must be at most that")
        if self.strong_threshold is None:
            return self
        if self.strong_threshold < self.start_threshold:
            raise ValueError(f"strong_threshold: {self.strong_threshold} is below start_threshold "
                             f"{self.start_threshold}; it must be at least as strict")
        if self.strong_span_s > self.min_span_s:
            raise ValueError(f"strong_span_s: {self.strong_span_s} is longer than min_span_s "
                             f"{self.min_span_s}; the strong path must be the shorter one")
        return self


class MotionConfig(Section):
    """Motion gating (maskd.motion): while nothing moves and no track is alive, the face detector
    runs only every ``idle_every`` frames. Measured in docs/performance.md (motion gating)."""

    enabled: bool = True
    # grey levels a pixel must change by (more than) to count as moving: a difference is at most
    # 255, so 255 would turn motion off for good (faces then found every idle_every frames only)
    threshold: int = Field(25, ge=1, le=254)
    min_area: float = Field(0.001, ge=0.0, le=1.0)  # share of the shrunk frame that must move
    frame_height: int = Field(90, ge=16, le=1080)  # rows of the shrunk grey frame compared
    alpha: float = Field(0.05, gt=0.0, le=1.0)  # how fast the background average follows the scene
    idle_every: int = Field(15, ge=1, le=300)  # detect every N frames while nothing moves


Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


def _numbers(v: Any) -> bool:
    """A non-empty list of plain numbers (a point, a box, or pixels), as YAML gives them."""
    return (isinstance(v, list) and bool(v)
            and all(isinstance(c, int | float) and not isinstance(c, bool) for c in v))


class ZonesConfig(Section):
    """Where faces count (maskd.zones): polygons of [x, y] points in 0..1 of the frame."""

    include: list[list[tuple[Fraction, Fraction]]] | None = None  # None: the whole frame
    ignore: list[list[tuple[Fraction, Fraction]]] = []

    @field_validator("include", "ignore", mode="before")
    @classmethod
    def _not_pixels(cls, v: Any) -> Any:
        """A zone written in pixels (its points read off an image viewer), or as a box's four
        numbers, got one line per coordinate ('less than or equal to 1', 'a valid tuple'),
        none saying what was meant: say it once. So for one polygon or one box written without
        the list of polygons around it (was: told to write the points it already had)."""
        if _numbers(v):
            raise ValueError("is a list of numbers, not of polygons: a zone is a list of polygons "
                             "of [x, y] points; a box x0, y0, x1, y1 is [[[x0, y0], [x1, y0], "
                             "[x1, y1], [x0, y1]]]")
        if isinstance(v, list) and v and all(_numbers(p) and len(p) == 2 for p in v):
            raise ValueError("is one polygon's [x, y] points, not a list of polygons: put it "
                             "in a list of its own, [[[x, y], [x, y], [x, y], ...]]")
        for i, poly in enumerate(v if isinstance(v, list) else []):
            if _numbers(poly):
                raise ValueError(f"polygon {i} is a list of numbers, not of [x, y] points: a box "
                                 "x0, y0, x1, y1 is [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]")
            for p in poly if isinstance(poly, list) else []:  # one line, not one per coordinate
                for c in p if isinstance(p, list) else []:
                    try:
                        _no_bool(c)
                    except ValueError as err:
                        raise ValueError(f"polygon {i}: {err}") from None
            nums = [c for p in (poly if isinstance(poly, list) else []) if isinstance(p, list)
                    for c in p if isinstance(c, int | float) and not isinstance(c, bool)]
            if nums and min(nums) >= 0 and max(nums) >= 2:
                raise ValueError(f"polygon {i} has a point at {max(nums):g}: points are shares "
                                 "0..1 of the frame, not pixels (divide x by the frame's width "
                                 "and y by its height)")
        return v

    @field_validator("include", "ignore")
    @classmethod
    def _polygons(cls, v: list | None) -> list | None:
        for i, poly in enumerate(v or []):
            if len(poly) < 3:
                raise ValueError(f"polygon {i} has {len(poly)} point(s); a zone needs at least 3")
            if (pair := zones.crossing(poly)) is not None:
                raise ValueError(f"polygon {i} crosses itself (edges {pair[0]} and {pair[1]}; "
                                 f"edge k joins point k to the next): list its points in order "
                                 "around the zone")
            if zones.area(poly) < zones.MIN_AREA:
                raise ValueError(f"polygon {i} has no area (its points lie on one line): as "
                                 "include it would drop every face, as ignore do nothing")
        return v

    @field_validator("include")
    @classmethod
    def _some_include(cls, v: list | None) -> list | None:
        """``include: []`` read as the whole frame, though "only faces inside one of these" says
        no face: which was meant is the user's to say."""
        if v is not None and not v:
            raise ValueError("include: [] lists no polygon: leave it out (or null) for the whole "
                             "frame, or list the polygons where faces count")
        return v


MAX_WINDOWS = 64  # per schedule: next_change walks a week of minutes over all of them


class ScheduleWindow(Section):
    """A weekly window in which detection runs (maskd.schedule), in local time."""

    days: Annotated[list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]],
                    Field(min_length=1)] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    start: str = "00:00"  # HH:MM
    end: str = "24:00"  # HH:MM; before start: the window runs past midnight

    @field_validator("start", "end")
    @classmethod
    def _time(cls, v: str) -> str:
        schedule.parse_time(v)
        return v

    @model_validator(mode="after")
    def _length(self) -> ScheduleWindow:
        if self.start == "24:00":
            raise ValueError("start 24:00 is the end of the day; a window starts at 00:00-23:59")
        if schedule.parse_time(self.start) == schedule.parse_time(self.end):
            raise ValueError(f"start and end are both {self.start}: the window is empty (for "
                             "the whole day use start \"00:00\", end \"24:00\")")
        return self

    def window(self) -> schedule.Window:
        return schedule.Window(tuple(schedule.DAYS.index(d) for d in self.days),
                               schedule.parse_time(self.start), schedule.parse_time(self.end))


def _file_named(v: Any) -> Any:
    """A ``jsonl.path`` ending in ``/``, ``/.`` or ``/..`` names a folder, not a file: the
    sink created the file without the slash (pathlib drops it) and then looked at the path as
    written, so check-config passed it and every event line failed with "Not a directory"."""
    if isinstance(v, str) and (v.endswith("/") or v.rsplit("/", 1)[-1] in (".", "..")):
        raise ValueError("names a folder: give the file's name in it (e.g. "
                         "/var/lib/maskd/events.jsonl)")
    return v


class JsonlConfig(Section):
    path: Annotated[str, BeforeValidator(_file_named), BeforeValidator(_named)] | None = None
    # "-": stdout; None: off
    # A file past this is renamed to PATH.old (the one before it deleted) and a new one begun, so
    # months of events never fill the card without logrotate; None: one file growing for ever.
    max_mb: float | None = Field(100.0, gt=0.0, le=1_000_000.0)


@dataclass(frozen=True)
class BrokerUrl:
    """``mqtt.url`` taken apart. Its rules live here only: the config validator uses them, so
    a URL that loads is one the sink and `maskd doctor` can connect to."""

    host: str
    port: int
    tls: bool

    @classmethod
    def parse(cls, url: str) -> BrokerUrl:
        """Like ``split``, raising ConfigError naming the key (for callers outside the config)."""
        try:
            return cls.split(url)
        except ValueError as err:
            raise ConfigError(f"mqtt.url: {excerpt(url)} {err}") from None

    @classmethod
    def split(cls, url: str) -> BrokerUrl:
        """Raises ValueError saying what is wrong: everything paho would reject or silently
        change (a path, a query, credentials in the URL)."""
        if any(c.isspace() or not c.isprintable() for c in url):
            raise ValueError("must not contain spaces or control characters")
        if not url.startswith(("mqtt://", "mqtts://")):
            raise ValueError("must start with mqtt:// or mqtts://")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as err:
            raise ValueError(f"is not mqtt(s)://HOST[:PORT] ({err})") from None
        if parts.username is not None or parts.password is not None:
            raise ValueError("must contain no credentials; use mqtt.username and "
                             "mqtt.password_file / mqtt.password_env")
        if not parts.hostname:
            raise ValueError("has no host")
        check_host(parts.hostname)
        if port == 0:
            raise ValueError("port must be 1-65535")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must be only mqtt(s)://HOST[:PORT], without a path or query")
        tls = parts.scheme == "mqtts"
        return cls(parts.hostname, port or (8883 if tls else 1883), tls)

    def __str__(self) -> str:
        """As logs name the broker; an IPv6 address in brackets, as mqtt.url takes it."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def _same_socket(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Two listen addresses one machine cannot both bind: one port, and the same host (however
    spelled: localhost, 127.1) or a wildcard (0.0.0.0, 0, ::) on either side. Port 0 lets the
    system pick, so it never clashes."""
    if a[1] != b[1] or a[1] == 0:
        return False
    if is_wildcard(a[0]) or is_wildcard(b[0]):
        return True

    def key(host: str) -> str:
        ip = _ip("127.0.0.1" if host == "localhost" else host)
        return host.strip("[]") if ip is None else str(ip)

    return key(a[0]) == key(b[0])


_TOKEN = re.compile(rb"[A-Za-z0-9._~-]+")  # what a URL query and a cookie carry unchanged


MAX_SECRET_BYTES = 4096  # a password or token
MAX_CREDENTIAL_BYTES = 1 << 20  # a key, certificate or CA bundle; /dev/zero is not


def _readable_file(path: Path, limit: int = MAX_CREDENTIAL_BYTES) -> bytes:
    """The content of ``path``; ValueError unless it is a regular file this user can read (what
    `run` opens it with) of at most ``limit`` bytes. A named pipe would hang the start (or be
    emptied by this check before `run` reads it), a device would never end."""
    try:
        with open_regular(path) as f:
            data = f.read(limit + 1)
    except OSError as err:
        raise ValueError(f"cannot read {excerpt(str(path))}: {err.strerror or err}") from None
    if len(data) > limit:
        raise ValueError(f"{excerpt(str(path))} is larger than {limit} bytes")
    return data


def _unreadable(key: str, path: Path | None) -> str | None:
    """Why this user cannot read ``path`` in check-config's words (`KEY: cannot read 'P':
    Permission denied`), or None: a file changed under a running maskd is named as a start
    names it."""
    try:
        if path is not None:
            _readable_file(path)
    except ValueError as err:
        return f"{key}: {err}"
    return None


def _password_in(path: Path) -> str:
    """The password a file holds, as the broker gets it (``read_secret``); ValueError also when
    it is not UTF-8 (MQTT's password field is text)."""
    try:
        return read_secret(path).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{excerpt(str(path))} is not UTF-8 text") from None


_NO_LOAD = "mqtt.ca_file/cert_file/key_file do not load: "  # the fault line's start too


_ENCRYPTED = "the key is encrypted; maskd has no passphrase setting"


def _refuse_passphrase() -> str:
    raise ValueError(_ENCRYPTED)


class MqttConfig(Section):
    """Building broker connection; see docs/mqtt.md."""

    url: str | None = None  # mqtt://host:1883 or mqtts://host:8883; None = off
    prefix: Id = "maskd"
    username: str | None = None
    password_file: FsPath | None = None
    password_env: EnvName | None = None
    ca_file: FsPath | None = None
    cert_file: FsPath | None = None
    key_file: FsPath | None = None
    keepalive_s: int = Field(30, ge=5, le=3600)
    reconnect_min_s: Seconds = 1.0  # backoff between connection attempts
    reconnect_max_s: Seconds = 30.0
    snapshots: bool = False  # opt-in: no image leaves the device by default
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    state_interval_s: float = Field(1.0, ge=1.0, le=3600.0)
    stats_interval_s: float = Field(60.0, ge=1.0, le=86400.0)
    outbox_max_events: int = Field(100_000, ge=1)
    outbox_max_age_s: float = Field(7 * 24 * 3600.0, gt=0)
    outbox_reserve_kb: int = Field(1024, ge=0, le=1 << 20)  # kept free so a full disk can drain
    memory_queue_max: int = Field(1000, ge=1)  # events held in memory while they cannot be stored

    @model_validator(mode="before")
    @classmethod
    def _one_password(cls, data: Any) -> Any:
        """With both, the variable was silently ignored; said before either is read."""
        if isinstance(data, dict) and None not in (data.get("password_file"),
                                                   data.get("password_env")):
            raise ValueError("set mqtt.password_file or mqtt.password_env, not both")
        return data

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None:
            BrokerUrl.split(v)
        return v

    @field_validator("username")
    @classmethod
    def _username(cls, v: str | None) -> str | None:
        """A tab or another control character in it made mosquitto drop every CONNECT: `run`
        retried for ever ('is that port a TLS listener?') and no event was ever delivered."""
        return v if v is None else mqtt_text(v)

    # Credentials and TLS: checked here only, when MQTT is on (`run` ignores them without a
    # url), so `check-config`, `run` and `doctor` reject the same configs with the same words.
    # Field validators see the fields declared above them; url comes first.

    @field_validator("password_file")
    @classmethod
    def _password_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if v is not None and info.data.get("url"):
            _password_in(v)
            if info.data.get("username") is None:
                raise ValueError("a password is configured but mqtt.username is not")
        return v

    @field_validator("password_env")
    @classmethod
    def _password_env(cls, v: str | None, info: ValidationInfo) -> str | None:
        """Read at load time: the config names the variable, and `run` needs it at start."""
        if v is None or not info.data.get("url"):
            return v
        value = env.variable(v)
        if value is None:
            raise ValueError(f"environment variable {v} is not set")
        if not value.strip():
            raise ValueError(f"environment variable {v} is empty")
        if info.data.get("username") is None:
            raise ValueError("a password is configured but mqtt.username is not")
        return v

    @field_validator("ca_file", "cert_file", "key_file")
    @classmethod
    def _tls_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        url = info.data.get("url")
        if v is None or not url:
            return v
        if not BrokerUrl.split(url).tls:
            raise ValueError("is set but mqtt.url is mqtt://; use mqtts://")
        # a cert_file refused by its own check is not in info.data: its line says why
        if info.field_name == "key_file" and "cert_file" in info.data \
                and info.data["cert_file"] is None:
            raise ValueError("needs mqtt.cert_file")
        _readable_file(v)
        return v

    @model_validator(mode="after")
    def _tls_files_load(self) -> MqttConfig:
        """The TLS files load as the sink loads them (CA bundle, client cert and its key)."""
        if not (self.url and BrokerUrl.split(self.url).tls):
            return self
        if self.ca_file is None and self.cert_file is None:
            return self
        self.tls_context()
        return self

    def tls_context(self) -> ssl.SSLContext:
        """A TLS client context from the files as they are on disk now: the broker's
        certificate is required (the system CAs without ca_file), the client certificate is
        sent when set. One builder for this check, the sink (again before a connection when a
        file changed, maskd.mqtt.credentials) and doctor. ValueError names the keys that do not
        load."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
        try:
            if self.ca_file is not None:
                ctx.load_verify_locations(str(self.ca_file))
            else:
                ctx.load_default_certs()
        except (OSError, ValueError) as err:
            why = _unreadable("mqtt.ca_file", self.ca_file) if isinstance(err, OSError) else None
            raise ValueError(f"{_NO_LOAD}{why or f'mqtt.ca_file {self.ca_file}: {err}'}") from None
        if self.cert_file is not None:
            try:
                ctx.load_cert_chain(str(self.cert_file), self.key_file and str(self.key_file),
                                    password=_refuse_passphrase)
            except (OSError, ValueError) as err:
                raise ValueError(f"{_NO_LOAD}{self._client_files_problem(err)}") from None
        return ctx

    def _client_files_problem(self, err: Exception) -> str:
        """Which of cert_file and key_file is wrong: OpenSSL says only `PEM lib` or `key values
        mismatch`, and the line named all three TLS keys, so a CA file, a certificate and a key
        were all suspects."""
        cert, key = f"mqtt.cert_file {self.cert_file}", f"mqtt.key_file {self.key_file}"
        if isinstance(err, OSError):  # OpenSSL's errno names no file: a renewal's 0600 key
            for name, path in (("mqtt.cert_file", self.cert_file), ("mqtt.key_file", self.key_file)):
                if why := _unreadable(name, path):
                    return why
        try:
            has_cert = bool(certs.pem_not_after(Path(self.cert_file or "").read_text(
                errors="replace")))
        except (OSError, ValueError):
            has_cert = False
        if not has_cert:
            return f"{cert}: no PEM certificate in it ({err})"
        # a key of another type than the certificate's (an EC key, an RSA certificate): OpenSSL
        # files it beside the certificate and finds no certificate for it
        if "KEY_VALUES_MISMATCH" in str(err) or "NO_CERTIFICATE_ASSIGNED" in str(err):
            return f"{key} is not the private key of {cert} ({err})"
        if err.args == (_ENCRYPTED,):
            return f"{key if self.key_file is not None else cert}: {err}"
        if "PEM lib" in str(err):
            return (f"{cert}: no private key in it; set mqtt.key_file" if self.key_file is None
                    else f"{key}: no PEM private key in it ({err})")
        return f"{cert}, {key}: {err}"

    def certificate_ends(self) -> dict[str, tuple[Path, datetime]]:
        """When the TLS files stop working, by key: mqtt.cert_file at its first certificate to
        expire (the whole chain is sent), mqtt.ca_file at its last (one CA that still holds
        verifies the broker). Only with mqtts://; a file that cannot be read or parsed is left
        out (the check above says what is wrong with one that does not load)."""
        if not (self.url and BrokerUrl.split(self.url).tls):
            return {}
        out = {}
        for key, path, pick in (("mqtt.cert_file", self.cert_file, min),
                                ("mqtt.ca_file", self.ca_file, max)):
            if path is None:
                continue
            try:
                ends = certs.pem_not_after(Path(path).read_text(errors="replace"))
            except (OSError, ValueError):
                continue
            if ends:
                out[key] = (Path(path), pick(ends))
        return out

    def expiring_certificates(self, now: datetime | None = None) -> list[str]:
        """A line for each TLS file expired or expiring within certs.WARN_DAYS (check-config,
        doctor and run's start; the sink's status line, from the dates read at its start)."""
        return certs.expiry_lines(self.certificate_ends(), now or datetime.now(UTC))

    @field_validator("discovery_prefix")
    @classmethod
    def _discovery_prefix(cls, v: str) -> str:
        return check_topic(v)

    @property
    def broker(self) -> BrokerUrl | None:
        """The validated url taken apart; None when MQTT is off."""
        return BrokerUrl.split(self.url) if self.url else None

    def password(self) -> str | None:
        """The password from its file or environment variable (never stored in YAML). The file
        is read again by the sink before a connection once it changed (maskd.mqtt.credentials):
        ValueError when it then does not hold one."""
        if self.password_file is not None:
            return _password_in(self.password_file)
        if self.password_env is not None:
            return env.variable(self.password_env)
        return None


SECRET_FILE_KEYS = ("password_file", "key_file", "http_password_file", "http_token_file")


def read_secret(path: Path) -> bytes:
    """A password or token file's content without surrounding whitespace, the one rule for
    every such file (``mqtt.password_file``, ``preview.http_password_file``, ``_token_file``):
    the newline an editor or ``echo`` adds and a stray space would otherwise make a password
    nobody types. ValueError when it cannot be read, is empty (the broker or the page would
    only say 'not authorised') or is larger than 4096 bytes."""
    secret = _readable_file(path, MAX_SECRET_BYTES).strip()
    if not secret:
        raise ValueError(f"{excerpt(str(path))} is empty")
    return secret


def read_token(path: Path) -> bytes:
    """The status page's bearer token from its file (``read_secret``); ValueError also when
    it holds a character a URL query or a cookie would change."""
    secret = read_secret(path)
    if not _TOKEN.fullmatch(secret):
        raise ValueError(f"{excerpt(str(path))}: the token travels in a URL and a cookie, so it "
                         "may hold only ASCII letters, digits and - . _ ~ (e.g. openssl rand -hex 32)")
    return secret


class PreviewConfig(Section):
    """Local views; none of them may slow the detection loop."""

    framebuffer: FsPath | None = None  # e.g. /dev/fb0 for HDMI without a desktop
    window: bool = False  # an OpenCV window when the installed OpenCV has GUI support
    http: str | None = None  # "127.0.0.1:8080" serves the status page (maskd.statuspage)
    # Needed to bind preview.http beyond loopback: a file holding the basic-auth password (any
    # user name) and/or a file holding a bearer token. Read on load whenever set, so check-config
    # refuses a bad one even while `--http` alone turns the page on.
    http_password_file: FsPath | None = None
    http_token_file: FsPath | None = None
    annotate_dir: FsPath | None = None  # write annotated frames/clip here
    # The clip (maskd.clip) rotates to a new file after this much video or this size, and this
    # camera's oldest files in annotate_dir are deleted while they total more than keep_mb.
    annotate_segment_s: float = Field(600.0, ge=1.0, le=86400.0)
    annotate_segment_mb: float = Field(100.0, gt=0.0, le=100_000.0)
    annotate_keep_mb: float = Field(1000.0, gt=0.0, le=10_000_000.0)

    @field_validator("http")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is not None:
            parse_listen(v)
        return v

    @field_validator("http_password_file", "http_token_file")
    @classmethod
    def _secret_file(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        """Read whenever set, not only with preview.http: `maskd run --http` serves the page
        with it, so a file check-config passed must be one the page can use."""
        if v is not None:
            (read_token if info.field_name == "http_token_file" else read_secret)(v)
        return v

    @model_validator(mode="after")
    def _auth_beyond_loopback(self) -> PreviewConfig:
        if self.http and not (self.http_password_file or self.http_token_file):
            host, _ = parse_listen(self.http)
            if not is_loopback(host):
                raise ValueError(
                    f"preview.http {self.http} is reachable from other machines: set "
                    "preview.http_password_file or preview.http_token_file (a file holding the "
                    "password or token), or bind 127.0.0.1")
        return self

    @model_validator(mode="after")
    def _clip_cap(self) -> PreviewConfig:
        if self.annotate_keep_mb < self.annotate_segment_mb:
            raise ValueError(f"preview.annotate_keep_mb ({self.annotate_keep_mb:g}) is smaller "
                             f"than preview.annotate_segment_mb ({self.annotate_segment_mb:g}): "
                             "one file would already be over the cap")
        return self


class SnapshotConfig(Section):
    """Opt-in local snapshots (maskd.snapshots): one JPEG per violation event in ``dir``; off
    while ``dir`` is unset. Nothing leaves the device through this section (MQTT's is
    ``mqtt.snapshots``)."""

    dir: FsPath | None = None  # None = off (the default)
    what: Literal["crop", "frame"] = "crop"  # the best face crop, or the whole frame with boxes
    keep_days: float = Field(7.0, gt=0.0, le=3650.0)  # older files are deleted, oldest first
    keep_mb: float = Field(200.0, gt=0.0, le=10_000_000.0)  # then the oldest while over this


def host_device_id(hostname: str | None = None) -> str:
    """The host name as a device id: its first label, characters outside an Id's as '-', at most
    ID_MAX; 'maskd' when nothing usable is left."""
    name = (hostname if hostname is not None else socket.gethostname()).split(".")[0]
    clean = re.sub(f"[^{ID_CHARS}]", "-", name).strip("-")[:ID_MAX]
    return clean or "maskd"


# Host names an OS installs with, which many devices keep: as device_id (the default is the host
# name) two such devices share an MQTT client id and knock each other off the broker.
STOCK_HOST_NAMES = {
    "raspberrypi": "Raspberry Pi OS's default host name",
    "debian": "Debian's default host name",
    "ubuntu": "Ubuntu's default host name",
    "localhost": "a host name many machines have",
    "maskd": "what maskd uses when the host name has nothing usable",
}


def stock_device_id_warning(device_id: str, is_host_name: bool) -> str | None:
    """The line saying a device id is one that other devices likely have too, or None."""
    what = STOCK_HOST_NAMES.get(device_id.lower())
    if what is None:
        return None
    origin = "this machine's host name" if is_host_name else "set in the config"
    return (f"'device_id': {device_id!r} ({origin}) is {what}: a second device with it takes "
            f"this one's MQTT client id, topics and Home Assistant device, and the two knock "
            f"each other off the broker; set device_id (or the host name) to one no other "
            f"device has, e.g. entrance-1")


class CameraConfig(Section):
    """One camera of a ``cameras:`` map: its own source, tracking and local views.

    Detector, classifier, MQTT and the JSON lines file are the process's, shared by all cameras.
    """

    source: SourceConfig  # required: two cameras cannot both be "the default camera"
    tracking: TrackingConfig | None = None  # None: the top-level tracking section
    zones: ZonesConfig | None = None  # None: the top-level zones
    schedule: list[ScheduleWindow] | None = Field(None, max_length=MAX_WINDOWS)  # None: the top level's
    preview: PreviewConfig = PreviewConfig()

    @field_validator("source")
    @classmethod
    def _names_its_source(cls, v: SourceConfig) -> SourceConfig:
        """``source: {}`` (or an opencv one without uri) is the default camera again."""
        if v.kind in ("auto", "opencv") and not v.uri:
            raise ValueError("a camera of a cameras: map must name its source: uri (/dev/video0, "
                             "rtsp://..., a video file or a folder) or kind picamera2 or demo; "
                             "without it two cameras would both open the default camera")
        return v


def source_identity(src: SourceConfig) -> str | None:
    """What a source reads (device, stream, file or folder), one spelling for each: two cameras
    with the same one would fight over a device or double every event. None: the demo (each
    camera gets its own)."""
    if src.kind == "demo":
        return None
    if src.kind == "picamera2":  # two on a Pi 5 (its two camera ports) are two cameras
        return f"the Pi camera {src.camera_num} (picamera2)"
    uri = (src.uri or "").removeprefix("file://")
    if uri.isascii() and uri.isdigit():
        uri = f"/dev/video{int(uri)}"  # OpenCV's camera index N is /dev/videoN
    if "://" in uri:
        return _stream_identity(uri)
    return os.path.realpath(uri)  # symlinks (/dev/v4l/by-id/...), `..`, relative paths


_DEFAULT_PORTS = {"rtsp": 554, "rtsps": 322, "http": 80, "https": 443}
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def _stream_identity(uri: str) -> str:
    """A stream's address as the camera it reaches: whoever logs in (and no password in
    errors), scheme and host in any case, the scheme's default port written or not, and this
    machine by any of its loopback names."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""  # lower-cased, without the brackets of an IPv6 address
    host = "localhost" if host in _LOOPBACK else host
    netloc = f"[{host}]" if ":" in host else host
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
        netloc = f"{netloc}:{port}" if port else netloc
    except ValueError:  # a port that is no number: the address as written names it
        netloc = parts.netloc.rpartition("@")[2].lower()
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def _open_to_all(path: Path) -> int:
    """``path``'s permission bits when every user of this machine can read it (o+r, and o+x on
    each folder above it), else 0; 0 too when it cannot be looked at (the config's own checks
    say why)."""
    try:
        real = path.resolve()
        mode = real.stat().st_mode
        reachable = all(p.stat().st_mode & stat.S_IXOTH for p in real.parents)
    except OSError:
        return 0
    return stat.S_IMODE(mode) if mode & stat.S_IROTH and reachable else 0


def _first_clash(names: Iterable[str], key: Callable[[str], str]) -> tuple[str, str] | None:
    """The first two of ``names`` that ``key`` takes for one (door and Door; front-door and
    front_door), else None: one loop for the camera-name rules."""
    seen: dict[str, str] = {}
    for name in names:
        if (first := seen.setdefault(key(name), name)) != name:
            return first, name
    return None


def _entity_slug(name: str) -> str:
    """A camera name as Home Assistant's slugify makes it part of an entity id."""
    return re.sub(r"[-_]+", "_", name.casefold()).strip("_")


class Config(Section):
    """The whole maskd configuration.

    One camera (``camera`` + ``source``, the original layout) or several (``cameras``, a map
    from camera name to its own source); ``cameras_resolved()`` gives one Config per camera.
    """

    # null (the default): this machine's host name, so two Pis named apart never share an MQTT
    # client id or topics (stock names such as raspberrypi are warned of: shared_device_id).
    device_id: Id = Field(default_factory=lambda: host_device_id())
    camera: Id = "camera"
    state_dir: FsPath = SERVICE_DIR
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    source: SourceConfig = SourceConfig()
    cameras: dict[Id, CameraConfig] = Field(default_factory=dict, max_length=16)
    detector: DetectorConfig = DetectorConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    tracking: TrackingConfig = TrackingConfig()
    zones: ZonesConfig = ZonesConfig()
    # Detection runs only inside these weekly windows (none: always); the MQTT switch can still
    # turn it off inside them.
    schedule: list[ScheduleWindow] = Field(default_factory=list, max_length=MAX_WINDOWS)
    motion: MotionConfig = MotionConfig()
    jsonl: JsonlConfig = JsonlConfig()
    mqtt: MqttConfig = MqttConfig()
    preview: PreviewConfig = PreviewConfig()
    snapshots: SnapshotConfig = SnapshotConfig()

    @field_validator("device_id", mode="before")
    @classmethod
    def _device_id(cls, v: Any) -> Any:
        return host_device_id() if v is None else v

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_any_case(cls, v: Any) -> Any:
        """`log_level: info` means INFO; nothing is gained by refusing it."""
        return v.upper() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _one_layout(self) -> Config:
        """A `cameras:` map replaces `camera` and `source`; both at once would leave one unused."""
        if self.cameras:
            both = sorted({"camera", "source"} & self.model_fields_set)
            if both:
                raise ValueError(f"{' and '.join(both)} cannot be used together with cameras: "
                                 f"put each camera's source under cameras.<name>.source")
        return self

    @model_validator(mode="after")
    def _one_page_one_password(self) -> Config:
        """Cameras with the same preview.http share one status page, so one set of credentials;
        different addresses that are one socket (localhost and 127.0.0.1) cannot both listen."""
        seen: dict[tuple[str, int], tuple[str, tuple]] = {}  # address: first camera, its auth
        for cam in self.cameras_resolved():
            p = cam.preview
            if not p.http:
                continue
            auth = (p.http_password_file, p.http_token_file)
            where = parse_listen(p.http)
            first = seen.setdefault(where, (cam.camera, auth))
            if first[1] != auth:
                raise ValueError(
                    f"cameras {first[0]} and {cam.camera} share preview.http {p.http} (one status "
                    "page) but not its http_password_file / http_token_file: give both the same")
            for other, (name, _) in seen.items():
                if other != where and _same_socket(where, other):
                    raise ValueError(
                        f"cameras {name} and {cam.camera}: preview.http {other[0]}:{other[1]} and "
                        f"{where[0]}:{where[1]} are "
                        "the same port on this machine, so the second page could not listen: "
                        "give both the same address (one page) or different ports")
        return self

    @model_validator(mode="after")
    def _one_camera_per_source(self) -> Config:
        """Two cameras on one device (or stream, file, folder): a device opens once, and a file
        read twice raises every event twice."""
        seen: dict[str, str] = {}
        for name, cam in self.cameras.items():
            what = source_identity(cam.source)
            if what is None:
                continue
            if what in seen:
                raise ValueError(f"cameras {seen[what]} and {name} both read {excerpt(what)}: "
                                 "give each camera its own source")
            seen[what] = name
        return self

    @model_validator(mode="after")
    def _names_apart_in_any_case(self) -> Config:
        """Two names that differ only in case (door, Door) are one file name on a USB stick's
        FAT, exFAT or NTFS, which ignore case: both cameras wrote one damaged clip file in a
        shared annotate_dir, and shared one lock in state_dir."""
        if clash := _first_clash(self.cameras, str.casefold):
            raise ValueError(f"cameras {clash[0]} and {clash[1]} differ only in case: a USB stick "
                             "(FAT, exFAT, NTFS) takes their file names (clips, snapshots, the "
                             "lock in state_dir) for one; give them names apart")
        return self

    @model_validator(mode="after")
    def _names_apart_in_home_assistant(self) -> Config:
        """Home Assistant's entity ids take `-` and runs of `_` for one `_` (its slugify): two
        cameras so named (front-door, front_door) got one id and one with `_2`, whichever
        discovery came first, so an automation written for one fired for the other."""
        if not (self.mqtt.url and self.mqtt.discovery):
            return self
        # (names apart only in case were refused above, by _names_apart_in_any_case)
        if clash := _first_clash(self.cameras, _entity_slug):
            raise ValueError(f"cameras {clash[0]} and {clash[1]} are one name to Home "
                             f"Assistant's entity ids ({_entity_slug(clash[1])}): the second "
                             "would get the first's entities with _2; give them names apart (or "
                             "set mqtt.discovery: false)")
        return self

    @model_validator(mode="after")
    def _one_window(self) -> Config:
        """One camera at most opens the OpenCV window: it is one window ("maskd") for the
        process, and OpenCV's window calls are not safe from several camera threads."""
        shown = [c.camera for c in self.cameras_resolved() if c.preview.window]
        if len(shown) > 1:
            raise ValueError(f"cameras {shown[0]} and {shown[1]} both set preview.window: only "
                             "one camera can have the window (OpenCV's window is not safe from "
                             "several threads); the status page (preview.http) shows them all")
        screens: dict[str, str] = {}
        for c in self.cameras_resolved():
            fb = c.preview.framebuffer
            if fb is None:
                continue
            if (key := os.path.normpath(fb)) in screens:
                raise ValueError(f"cameras {screens[key]} and {c.camera} both draw on "
                                 f"preview.framebuffer {fb}: each would overwrite the other's "
                                 "frames; give one camera the screen, the status page "
                                 "(preview.http) shows them all")
            screens[key] = c.camera
        return self

    def paths(self) -> dict[str, Path]:
        """Every file or folder the config names, by dotted key (``jsonl.path`` "-" is stdout)."""
        out: dict[str, Path] = {}

        def walk(value: Any, key: str) -> None:
            if isinstance(value, BaseModel):
                for name in type(value).model_fields:
                    walk(getattr(value, name), f"{key}{name}.")
            elif isinstance(value, dict | list):
                items = value.items() if isinstance(value, dict) else enumerate(value)
                for k, v in items:
                    walk(v, f"{key}{k}.")
            elif isinstance(value, Path):
                out[key.rstrip(".")] = value

        walk(self, "")
        if self.jsonl.path not in (None, "-"):
            out["jsonl.path"] = Path(self.jsonl.path)
        return out

    def open_secrets(self, file: Path | str | None = None) -> list[str]:
        """One line per password, token or TLS key file every user of this machine can read
        (o+r, and o+x on each folder above it): one written with the usual umask 022 is 0644,
        and the docs ask for root:maskd 0640. So is the config ``file`` the camera addresses
        were read from while one holds a password (``rtsp://user:pass@cam``: it has no file of
        its own)."""
        out = []
        for key, path in self.paths().items():
            if key.rpartition(".")[2] in SECRET_FILE_KEYS and (mode := _open_to_all(path)):
                out.append(f"'{key}': {path} is readable by every user of this machine (mode "
                           f"{mode:04o}); chmod o-rwx it")
        keys = [f"'{key}.uri'" for key, src in self.sources()
                if src.uri is not None and shown_uri(src.uri) != src.uri]
        if keys and file is not None and (mode := _open_to_all(Path(file))):
            out.append(f"{file} holds a camera password ({', '.join(keys)}) and is readable by "
                       f"every user of this machine (mode {mode:04o}); chmod o-rwx it")
        return out

    def startup_warnings(self, file: Path | str | None = None) -> list[str]:
        """What check-config prints and run logs as warnings about the config itself (neither
        refuses to start on them): open secret files (``file``: the config file the camera
        addresses came from), a shared device id, TLS files near their end. One list, so the
        two commands cannot drift apart."""
        return (self.open_secrets(file) + self.shared_device_id()
                + self.mqtt.expiring_certificates() + self.unused_top_level()
                + self.left_out_of_own())

    def unused_top_level(self) -> list[str]:
        """One line per top-level section a ``cameras:`` map leaves to no camera while it sets
        anything: ``preview`` when the first camera has its own (``previews``), ``tracking``,
        ``zones`` and ``schedule`` when every camera has its own. Such a status page, clip
        folder, ignore zone or cooldown did nothing without a word. Keys at their defaults
        (the example's sections, kept beside a cameras: map) are not worth a line."""
        if not self.cameras:
            return []
        cams = list(self.cameras.items())
        first, cam = cams[0]
        out = []
        if "preview" in cam.model_fields_set and (keys := self._written("preview")):
            out.append(f"'{keys}': camera {first}, the first of cameras:, has a preview of its "
                       "own, so the top-level preview is no camera's and is not used; move it "
                       "under cameras.<name>.preview")
        for section in ("tracking", "zones", "schedule"):
            if all(getattr(c, section) is not None for _, c in cams) and (
                    keys := self._written(section)):
                out.append(f"'{keys}': every camera of cameras: has its own {section}, so the "
                           f"top-level {section} is not used; set it under "
                           f"cameras.<name>.{section}")
        return out

    def left_out_of_own(self) -> list[str]:
        """One line per camera whose own ``tracking`` or ``zones`` leaves out keys the top-level
        one sets, while some camera still takes the top level's (else ``unused_top_level`` says
        it): a camera's section replaces the top level's whole, so those keys are their defaults
        for it. A top-level ignore zone (a poster) or cooldown then did nothing on that camera
        without a word."""
        out = []
        for section in ("tracking", "zones"):
            if section not in self.model_fields_set or all(
                    getattr(c, section) is not None for c in self.cameras.values()):
                continue
            top = getattr(self, section).model_dump(exclude_defaults=True)
            for name, cam in self.cameras.items():
                own = getattr(cam, section)
                if own is not None and (left := [k for k in top if k not in own.model_fields_set]):
                    out.append(f"'{', '.join(f'{section}.{k}' for k in left)}': camera {name} has "
                               f"its own {section} section, which replaces the top-level one whole "
                               "(what it leaves out is the default, not the top level's); repeat "
                               f"under cameras.{name}.{section} what that camera should keep")
        return out

    def _written(self, section: str) -> str:
        """The top-level keys of ``section`` set to other than their defaults, joined ('' for
        none)."""
        if section not in self.model_fields_set:
            return ""
        value = getattr(self, section)
        if isinstance(value, BaseModel):
            return ", ".join(f"{section}.{key}" for key in value.model_dump(exclude_defaults=True))
        return section if value else ""

    def shared_device_id(self) -> list[str]:
        """With MQTT on, one line when device_id is a stock host name (raspberrypi, ...) that
        other devices at the site may have too; check-config, doctor and run all say it."""
        if not self.mqtt.url:
            return []
        line = stock_device_id_warning(self.device_id, self.device_id == host_device_id())
        return [line] if line else []

    @property
    def keeps_state(self) -> bool:
        """Whether ``state_dir`` is in use: set in the config (the service's is), or MQTT on (its
        outbox). A quick ``run --source x.mp4 --jsonl -`` without it writes nothing to a system
        folder it may not own (maskd.ledger's open violations then live only in the process)."""
        return "state_dir" in self.model_fields_set or bool(self.mqtt.url)

    @property
    def multi_camera(self) -> bool:
        """The `cameras:` layout: the process owns the device-level status."""
        return bool(self.cameras)

    def model_files(self) -> dict[str, Path]:
        """The model files the config names, by dotted key (`run` opens them; check-config and
        `doctor` look at them)."""
        named = {"detector.model": self.detector.model, "classifier.model": self.classifier.model}
        return {key: Path(p) for key, p in named.items() if p is not None}

    def edgetpu_keys(self) -> list[str]:
        """The keys that put a model on the Coral (`run` waits for one, `check-config` and
        `doctor` look for it)."""
        return [key for key, on in (("classifier.edgetpu", self.classifier.edgetpu),
                                    ("detector.edgetpu", self.detector.edgetpu)) if on]

    def sources(self) -> list[tuple[str, SourceConfig]]:
        """Each camera's source section with its key in the file, in the map's order."""
        if not self.cameras:
            return [("source", self.source)]
        return [(f"cameras.{name}.source", cam.source) for name, cam in self.cameras.items()]

    def previews(self) -> list[tuple[str, PreviewConfig]]:
        """Each camera's preview section with its key in the file, in the map's order: the
        top-level ``preview`` belongs to the first camera unless that camera has its own."""
        if not self.cameras:
            return [("preview", self.preview)]
        return [(f"cameras.{name}.preview", cam.preview)
                if i or "preview" in cam.model_fields_set else ("preview", self.preview)
                for i, (name, cam) in enumerate(self.cameras.items())]

    def written(self) -> list[tuple[str, Path, bool]]:
        """Every place a run writes: its key in the file, path, and whether the path is a
        folder. One list for doctor's sandbox check and the run's look at the cards those places
        are on (maskd.files.CardWatch). All but the annotated clip are shared by the cameras."""
        jsonl = self.jsonl.path if self.jsonl.path not in (None, "-") else None
        out = [("state_dir", self.state_dir if self.keeps_state else None, True),
               ("jsonl.path", None if jsonl is None else Path(jsonl), False),
               ("snapshots.dir", self.snapshots.dir, True),
               *((f"{key}.annotate_dir", p.annotate_dir, True) for key, p in self.previews())]
        return [(key, path, is_dir) for key, path, is_dir in out if path is not None]

    def cameras_resolved(self) -> list[Config]:
        """One single-camera Config per camera, in the map's order (the original layout: itself).

        Each has that camera's name, source, tracking and preview, and the shared sections; the
        top-level preview belongs to the first camera unless that camera has its own.
        """
        if not self.cameras:
            return [self]
        out = []
        previews = self.previews()
        for i, (name, cam) in enumerate(self.cameras.items()):
            preview = previews[i][1]
            out.append(self.model_copy(update={
                "camera": name, "source": cam.source, "cameras": {},
                "tracking": cam.tracking or self.tracking, "preview": preview,
                "zones": cam.zones or self.zones,
                "schedule": self.schedule if cam.schedule is None else cam.schedule,
            }))
        return out


class ConfigError(Exception):
    """A config problem, already phrased as one line per bad key."""


def _section_keys(loc: tuple) -> list[str]:
    """The keys allowed in the section at ``loc`` (so an error can say what is allowed)."""
    model = _section_at(loc)
    return [] if model is None else list(model.model_fields)


def _new_name(loc: tuple) -> str | None:
    """The key that the key at ``loc`` is an old name of (``tracking.min_frames``), or None."""
    model = _section_at(loc[:-1])
    for name, field in (model.model_fields.items() if model is not None else ()):
        alias = field.validation_alias
        if isinstance(alias, AliasChoices) and name != loc[-1] and loc[-1] in alias.choices:
            return name
    return None


def _section_at(loc: tuple) -> type[BaseModel] | None:
    """The section model at ``loc``; a part of ``loc`` under a map or a list
    (``cameras.<name>``, ``schedule.<n>``) is its item."""
    model: Any = Config
    inside: Any = None  # the map or list annotation whose key or index comes next
    for part in loc:
        if inside is not None:
            model, inside = _section_model(get_args(inside)[-1]), None
        else:
            field = model.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            ann = _optional_inner(field.annotation)
            if get_origin(ann) in (dict, list):
                inside = ann
                continue
            model = _section_model(ann)
        if model is None:
            return None
    return None if inside is not None else model


def _optional_inner(ann: Any) -> Any:
    """``X | None`` -> X; anything else as it is."""
    args = [a for a in get_args(ann) if a is not type(None)] if get_origin(ann) in (
        Union, UnionType) else []
    return args[0] if len(args) == 1 else ann


def _section_model(ann: Any) -> Any:
    """The section model an annotation names (through ``| None``), or None."""
    ann = _optional_inner(ann)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


_EXCERPT = reprlib.Repr()
_EXCERPT.maxstring = _EXCERPT.maxother = 60
_EXCERPT.maxlist = _EXCERPT.maxtuple = _EXCERPT.maxdict = _EXCERPT.maxset = 4
_EXCERPT.maxlevel = 2
_EXCERPT.maxlong = 40


def excerpt(value: Any) -> str:
    """A repr short enough for one line, however big or deep the value is, with the password
    of any URL in it hidden: error lines reach the journal (``source: rtsp://user:pass@cam``
    written without its section, ``mqtt.url`` with credentials)."""
    return _EXCERPT.repr(_hide_passwords(value))


def shown_path(path: Path | str) -> str:
    """A path as one message line shows it: as it is, or a bounded excerpt when it is too long
    for a line (a name no file system takes, thousands of characters)."""
    text = str(path)
    return text if len(text) <= 200 else excerpt(text)


EXTRA_MODELS_WAY_OUT = "[] scans with classifier.model alone"  # a still_extra_models file's


def extra_model_problem(path: Path | str) -> str | None:
    """``model_file_problem`` of one of ``classifier.still_extra_models``, with the way out:
    `scan` stops on it, check-config warns with it (it named none of them)."""
    problem = model_file_problem(path, "classifier.still_extra_models")
    return None if problem is None else f"{problem} ({EXTRA_MODELS_WAY_OUT})"


def model_file_problem(path: Path | str, named: str | None = None,
                       what: str = "model file") -> str | None:
    """Why ``path`` cannot be opened as a model file here, or None: the one wording of `run`,
    `scan`, `classify`, `doctor` and `check-config` (a warning there: the file may be on the
    device), led by what set it (``named``: its key, ``classifier.model``, or the option that
    gave it, ``--model``): 'classifier.model: /x.tflite: model file not found'. ``what``: the
    file it is (a classifier's sidecar: ``maskd.classifier.classifier_file_problem``)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        why = f"{what} not found"
    except OSError as err:  # a name too long to look up, a folder above it not searchable
        why = err.strerror or str(err)
    else:
        if stat.S_ISDIR(mode):
            why = f"a folder, not a {what}"
        elif not stat.S_ISREG(mode):
            why = "not a regular file"
        elif not os.access(path, os.R_OK):
            why = f"{what} not readable by this user"
        else:
            try:  # the TFLite runtime's binding raised a TypeError traceback, OpenCV's crashes
                str(path).encode("utf-8")
                return None
            except UnicodeEncodeError:
                why = "its name is not UTF-8, which the model runtimes cannot open: rename the file"
    return f"{named + ': ' if named else ''}{shown_path(path)}: {why}"


def empty_model_problem(path: Path | str, named: str | None = None) -> str | None:
    """A model file of 0 bytes (a copy that failed half-way, a full card), named by its key or
    option (none: a file found, the shipped classifier, YuNet in models/), or None: it is here,
    so `run` stops on it (78) and check-config says so, where the runtimes said 'mmap of size 0
    requested' (TFLite) or 'model_proto.has_graph()' (OpenCV)."""
    try:
        empty = stat.S_ISREG((st := os.stat(path)).st_mode) and st.st_size == 0
    except OSError:  # said by model_file_problem
        return None
    return (f"{named + ': ' if named else ''}{shown_path(path)}: an empty file (0 bytes), not a "
            "model: copy it again") if empty else None


def _hide_passwords(value: Any) -> Any:
    if isinstance(value, Path):  # a command-line option's path: shown as the file's text
        value = str(value)
    if isinstance(value, str):
        return shown_uri(value)
    if isinstance(value, dict):  # a secret typed under a key of its own ('pass:') is hidden
        return {k: "***" if _SECRET_KEY.fullmatch(str(k)) and not isinstance(v, dict | list)
                else _hide_passwords(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_hide_passwords(v) for v in value]
    return value


# A key whose value is a secret itself (password, pass, pw, token, secret), not the name of
# the file or variable that holds one (password_file, password_env: those are said).
_SECRET_KEY = re.compile(r"(?i)(?!.*_(?:file|env)$).*(?:pass|pw|token|secret).*")


def shown_uri(uri: str) -> str:
    """``uri`` as logs and status may show it: a password in it (rtsp://user:pass@cam, or a
    secret query value, ``?pwd=``) is replaced by ***, since the journal and the status page
    are readable by more people."""
    return _SECRET_URI_PARAM.sub(r"\1***", _USERINFO.sub(r"\1:***@", _PASSWORD.sub(r"\1:***@", uri)))


# A slash short (rtsp:/user:pw@cam, a typo that makes it a "file") still hides the password,
# and so does one written with a raw # or ? in it (up to the last @: more hidden, never less).
_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*:/*[^:/@]*):.*@", re.IGNORECASE)
# user:password@ wherever it stands (rtsp//user:pw@cam, rtsp ://...): more hidden, never less
_USERINFO = re.compile(r"(?<=//)([^\s:/@]+):[^@\s]*@")

# A parameter whose name says it holds a secret (``?token=``, ``password``, ``pwd``, ``pw``,
# ``psw``, ``p``, ``loginpas``, ``api_key``, ``credentials``, ``sig``), in a query or in a path
# the way some DVRs take it (``/user=admin_password=...``).
_SECRET_NAME = (r"(?i)((?:^|[?&;\s/_])(?:p|[^=&;\s/_]*(?:token|pas|pw|psw|secret|"
                r"key|auth|cred|sig)[^=&;\s/]*)=)")
_SECRET_PARAM = re.compile(_SECRET_NAME + r"[^&;\s\"']*")  # a quote ends it in a request line
# In a camera's address alone a quote or a ; typed into the password is part of it (what
# followed it was shown): hidden up to the next & (more hidden, never less).
_SECRET_URI_PARAM = re.compile(_SECRET_NAME + r"[^&\s]*")


def redact(text: str) -> str:
    """``text`` (a URL or a request line) with secret query values replaced by ``***``: a
    camera that takes ``?user=admin&pwd=...`` and the status page's ``?token=`` must not reach
    whoever reads the journal."""
    return _SECRET_PARAM.sub(r"\1***", text)


def printable(text: str) -> str:
    """``text`` as one line of plain text: a newline or an escape sequence would split a
    one-line message or reach the terminal, so text that is not plain is escaped as repr does."""
    return text if text.isprintable() else repr(text)[1:-1]


def _key_part(part: Any) -> str:
    """One key as printed (a YAML key may hold anything)."""
    return printable(str(part)[:60])


def _key_name(loc: tuple) -> str:
    return ".".join(_key_part(p) for p in loc) or "<top>"


def _given_by(loc: tuple, given: Collection[str]) -> bool:
    """Whether the command line set the key at ``loc``, a key inside it, or the section around
    it (a rule across keys of that section); the top level's rules span everything."""
    key = _key_name(loc)
    return not loc or any(g == key or g.startswith(f"{key}.") or key.startswith(f"{g}.")
                          for g in given)


def _format_errors(err: ValidationError, source: str, from_file: str | None = None,
                   given: Collection[str] = ()) -> str:
    lines = []
    errors = err.errors()
    for e in errors[:MAX_ERROR_LINES]:
        loc = tuple(e["loc"])
        key = _key_name(loc)
        where = source if from_file is None or _given_by(loc, given) else from_file
        if e["type"] == "extra_forbidden" and (new := _new_name(loc)) is not None:
            lines.append(f"{where}: '{key}' is the old name of '{_key_name(loc[:-1] + (new,))}' "
                         "and both are set: keep one")
        elif e["type"] == "extra_forbidden":
            allowed = _section_keys(loc[:-1])
            close = difflib.get_close_matches(_key_part(loc[-1]), allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            head, dot, rest = str(_key_part(loc[-1])).partition(".")
            if dot and head in allowed:  # the docs' table names keys so: source.fps
                hint = f"; a dotted name is the docs' way of naming it: write {head}: {{{rest}: ...}}"
            lines.append(f"{where}: unknown key '{key}' (allowed: {', '.join(allowed)}){hint}")
        elif e["type"] == "model_type":
            lines.append(f"{where}: '{key}' must be a section with keys: "
                         f"{', '.join(_section_keys(loc))} (got {excerpt(e.get('input'))})")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            value = e.get("input")
            first, _, rest = msg.partition(": ")
            if (e["type"] == "value_error" and loc and rest and isinstance(value, dict)
                    and first in value and first in _section_keys(loc)):
                # a rule between a section's keys that blames one ("strong_threshold: ..."):
                # that key whole, as every other line names it ('tracking.strong_threshold',
                # not 'tracking'), with its value
                key, msg, value = _key_name(loc + (first,)), rest, value[first]
            if e["type"] in ("string_type", "path_type") and isinstance(e.get("input"),
                                                                       bool | int | float):
                # YAML read yes, 0042 or 1234 as a bool or number: quotes make it text, except
                # where the text must be a time (`start: 8` quoted is still not one)
                if "schedule" in loc and loc[-1] in ("start", "end"):
                    msg = "expected a time HH:MM, such as 08:00"
                else:
                    msg = ("expected a file or folder name" if e["type"] == "path_type"
                           else msg) + "; put it in quotes"
            got = f" (got {excerpt(value)})" if loc else ""  # not the whole config
            lines.append(f"{where}: '{key}': {msg}{got}")
    if len(errors) > MAX_ERROR_LINES:
        lines.append(f"{source}: ... and {len(errors) - MAX_ERROR_LINES} more errors")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "<config>", from_file: str | None = None,
                 given: Collection[str] = ()) -> Config:
    """Validate a mapping (as read from YAML) into a Config, or raise ConfigError.

    ``source`` names where the values came from in each error line. For a file with options on
    top (``source`` "command line"), an error about a key the options did not set (``given``,
    dotted keys) names ``from_file`` instead: that key came from the file, not the options.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(data).__name__}")
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, source, from_file, given)) from None


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    section, _, key = dotted.rpartition(".")
    target = data
    for part in filter(None, section.split(".")):
        target = target.setdefault(part, {})
    target[key] = value


def override(cfg: Config, args: Any, mapping: dict[str, str], from_file: Path | str | None = None,
             ) -> Config:
    """Config with the given command-line options (arg name -> dotted key) applied when set.

    Re-validated as a whole, so a bad value on the command line is reported like one in YAML;
    only what the file set and the options are passed on, so layout rules (``cameras:``) see
    what the user wrote, not every default. An error about a key from the file the config came
    from (``from_file``) names that file, not the command line.
    """
    data = cfg.model_dump(exclude_unset=True)
    kind = getattr(args, "detector", None)
    if kind and getattr(args, "detector_model", None) is None:
        det = data.get("detector", {})
        was = det.get("kind", "auto")  # auto's model is YuNet's, either way round
        if was != kind and {was, kind} != {"auto", "yunet"}:
            det.pop("model", None)  # the file's model is another kind's
    given = options_given(args, mapping)
    for arg, key in mapping.items():
        if key in given:
            _set(data, key, getattr(args, arg))
    return parse_config(data, "command line", None if from_file is None else str(from_file),
                        list(given))


def options_given(args: Any, mapping: dict[str, str]) -> dict[str, str]:
    """The config keys the command line set (``mapping``: argparse name -> dotted key), each
    with the option that set it ('classifier.model': '--model'): a message about that setting
    names what the user typed, not a key of a file they may not have."""
    return {key: "--" + arg.replace("_", "-") for arg, key in mapping.items()
            if (value := getattr(args, arg, None)) is not None and value is not False}


# Command-line options (argparse names) and the config keys they set; shared by the commands.
MODEL_OPTIONS = {
    "detector": "detector.kind",
    "detector_model": "detector.model",
    "model": "classifier.model",
    "threads": "classifier.threads",
    "edgetpu": "classifier.edgetpu",
}
RUN_OPTIONS = {
    **MODEL_OPTIONS,
    "device_id": "device_id",
    "camera": "camera",
    "loop": "source.loop",
    "jsonl": "jsonl.path",
    "annotate": "preview.annotate_dir",
    "http": "preview.http",
    "mqtt": "mqtt.url",
    "state_dir": "state_dir",
    "log_level": "log_level",
}


class BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader with limits: nesting depth, values after alias expansion (so a
    "billion laughs" file fails at once instead of hanging), no recursive aliases, and no
    duplicate keys (YAML says a mapping's keys are unique; PyYAML keeps the last silently)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._values = 0
        self._sizes: dict[int, int] = {}  # id(node) -> values it expands to, once complete

    def _fail(self, problem: str, mark: Any) -> None:
        raise ComposerError(None, None, problem, mark)

    def compose_node(self, parent: Any, index: Any) -> Any:
        mark = self.peek_event().start_mark
        if self.check_event(AliasEvent):
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:
                self._fail("an alias refers to the mapping or list it is in", mark)
            self._count(self._sizes[id(node)], mark)
            return node
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            self._fail(f"nested deeper than {MAX_YAML_DEPTH} levels", mark)
        before = self._values
        self._count(1, mark)
        node = super().compose_node(parent, index)
        self._sizes[id(node)] = self._values - before
        self._depth -= 1
        return node

    def _count(self, n: int, mark: Any) -> None:
        self._values += n
        if self._values > MAX_YAML_VALUES:
            self._fail(f"more than {MAX_YAML_VALUES} values once aliases are expanded", mark)

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        seen: dict[tuple[str, str], Any] = {}
        for key, _ in node.value:
            if not isinstance(key, ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            first = seen.setdefault((key.tag, key.value), key.start_mark)
            if first is not key.start_mark:
                self._fail(f"duplicate key {excerpt(key.value)} (first at line {first.line + 1})",
                           key.start_mark)
        return node


# YAML 1.1 reads an unquoted 18:00 as the base-60 number 1080; a config file means the time
# (YAML 1.2 dropped base 60). Such scalars stay strings, so `start: 8:00` is 08:00 and a plain
# number where a time belongs is refused, not taken as minutes.
_INT = "tag:yaml.org,2002:int"
BoundedLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in rules if tag != _INT]
    for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()}
BoundedLoader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)"
                     r"|[-+]?0x[0-9a-fA-F_]+)$"), list("-+0123456789"))


def _read_text(p: Path) -> str:
    """The file as text, refusing what no config can be: too big, or not UTF-8."""
    try:  # never blocks on a named pipe nobody writes to; <(...) still works
        raw = read_limited(p, MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{p}: cannot read config: {err.strerror or err}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{p}: not a config: larger than {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise ConfigError(f"{p}: not UTF-8 text: byte 0x{raw[err.start]:02x} at line {line}") from None


def given_or_installed(path: Path | None) -> Path | None:
    """The config a command that reads the installed one by default means: ``path`` when given,
    else /etc/maskd/config.yaml when it exists, else None (the built-in defaults)."""
    if path is None and DEFAULT_CONFIG_PATH.exists():
        return DEFAULT_CONFIG_PATH
    return path


def read_yaml(p: Path) -> Any:
    """A config file's YAML as Python data, with the limits of a config (not validated)."""
    text = _read_text(p)
    try:
        data = yaml.load(text, Loader=BoundedLoader)  # a SafeLoader, with limits
    except yaml.YAMLError as err:  # one line: where and what, not PyYAML's multi-line dump
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = getattr(err, "problem", None) or str(err).splitlines()[0]
        if what.startswith("but ") and getattr(err, "context", None):  # half a sentence alone
            what = f"{err.context}, {what}"  # 'expected a single document ..., but found ...'
        raise ConfigError(f"{p}: not valid YAML{where}: {what[:200]}") from None
    except (ValueError, RecursionError) as err:  # e.g. an integer with more than 4300 digits
        raise ConfigError(f"{p}: not a usable config: {excerpt(str(err))}") from None
    return data


def load_config(path: Path | str | None) -> Config:
    """Read and validate a YAML config file; None gives the built-in defaults."""
    if path is None:
        return Config()
    p = Path(path)
    return parse_config(read_yaml(p), str(p))
