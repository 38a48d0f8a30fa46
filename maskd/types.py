"""The records that flow one way through maskd: frame -> faces -> verdicts -> tracks -> events -> sinks.

Kept in one small module so every stage agrees on them without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the original frame


@dataclass(frozen=True)
class Frame:
    """One captured image. ``image`` is BGR uint8 (OpenCV order)."""

    image: np.ndarray
    seq: int  # sequence number from the source, counting from 0
    timestamp: float  # capture time, seconds since the epoch
    source: str = ""


@dataclass(frozen=True)
class Face:
    """A detected face."""

    box: Box
    score: float  # detector confidence 0..1
    landmarks: np.ndarray | None = None  # (N, 2) pixels, when the detector gives them


@dataclass(frozen=True)
class Verdict:
    """A face with the classifier's decision; ``no_mask`` is None when the face was too small to judge."""

    face: Face
    no_mask: float | None

    @property
    def label(self) -> Literal["mask", "no_mask"] | None:
        if self.no_mask is None:
            return None
        return "no_mask" if self.no_mask >= 0.5 else "mask"


EventType = Literal["start", "update", "end"]
EndReason = Literal["masked", "gone", "shutdown", "restart"]  # restart: left open by a crash


@dataclass
class ViolationEvent:
    """One message in a violation's life: start, rate-limited updates, end."""

    event_type: EventType
    event_id: str  # stable for the violation's whole life
    seq: int  # 0 for start, then 1, 2, ... per message of this event
    camera: str
    track_id: int
    start_time: float
    score: float  # smoothed no-mask score now
    top_score: float  # best smoothed score so far
    box: Box  # normalised 0..1 to the frame size
    end_time: float | None = None
    end_reason: EndReason | None = None
    frame_seq: int | None = None
    best_crop: np.ndarray | None = field(default=None, repr=False)  # BGR face crop, for opt-in snapshots

    def to_dict(self) -> dict:
        """JSON-ready fields (no image)."""
        return {
            "event_type": self.event_type,
            "event_id": self.event_id,
            "seq": self.seq,
            "camera": self.camera,
            "track_id": self.track_id,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "score": round(float(self.score), 4),
            "top_score": round(float(self.top_score), 4),
            "box": [round(float(v), 4) for v in self.box],
            "end_reason": self.end_reason,
            "frame_seq": self.frame_seq,
        }


class EventSink(Protocol):
    """Where violation events go (JSON lines, MQTT, ...)."""

    def emit(self, event: ViolationEvent) -> None:
        """Accept an event; must not block the detection loop for long."""

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until everything accepted is delivered; True when it was."""

    def close(self) -> None:
        """Release resources; accepted-but-undelivered events must not be lost."""


@dataclass
class RunControl:
    """Run-time switches shared between the loop and remote control (MQTT ``detect/set``)."""

    detect_enabled: bool = True


class FrameObserver(Protocol):
    """Something that watches frames go by (systemd watchdog, preview); must never block the loop."""

    def on_frame(self, frame: Frame, verdicts: list[Verdict], stats: dict) -> None:
        """Called after every processed frame; ``stats`` holds fps, per-stage ms, active count."""

    def close(self) -> None:
        """Called once when the loop stops."""


class SourceError(Exception):
    """A permanent source problem (missing file, empty folder, picamera2 not installed)."""


class Source(Protocol):
    """What the run loop reads frames from."""

    name: str
    is_live: bool
    stats: dict

    def read(self) -> Frame | None:
        """The next frame; None when a file source has ended (or the source was closed)."""

    def close(self) -> None:
        """Stop and release the device; safe to call from another thread and more than once."""


class FaceDetector(Protocol):
    """Finds faces; every detector in maskd.detectors has this shape."""

    name: str

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        """Faces in a BGR uint8 image, boxes in that image's pixels."""


class MaskClassifier(Protocol):
    """Judges face crops; maskd.classifier.Classifier has this shape."""

    input_size: int

    def predict(self, crops_rgb: Sequence[np.ndarray]) -> np.ndarray:
        """P(no_mask) per RGB uint8 crop."""
