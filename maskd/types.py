"""The records that flow one way through maskd: frame -> faces -> verdicts -> tracks -> events -> sinks.

Kept in one small module so every stage agrees on them without importing each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    import threading

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the original frame


@dataclass(frozen=True)
class Frame:
    """One captured image. ``image`` is (H, W, 3) BGR uint8 (OpenCV order), C-contiguous: the
    sources make it so once, as they read it (``maskd.sources.to_bgr``)."""

    image: np.ndarray
    seq: int  # sequence number from the source, counting from 0
    timestamp: float  # capture time, seconds since the epoch
    source: str = ""
    # Seconds since boot at capture (maskd.clock), read with ``timestamp``, so a step of the wall
    # clock between frames can be told from time passing; None where the times are made up from
    # seq / fps (files, a demo played once through) and cannot step.
    since_boot: float | None = None


@dataclass(frozen=True)
class Face:
    """A detected face."""

    box: Box
    score: float  # detector confidence 0..1
    landmarks: np.ndarray | None = None  # (N, 2) pixels, when the detector gives them


Label = Literal["mask", "no_mask"]


def label_for(no_mask: float, cut: float) -> Label:
    """The one labelling rule: no mask at or above the configured cut (classifier.threshold)."""
    return "no_mask" if no_mask >= cut else "mask"


@dataclass(frozen=True)
class Verdict:
    """A face with the classifier's decision; ``no_mask`` is None when the face was too small to judge.

    ``cut`` is the configured label cut (``classifier.threshold``) it was judged with, so every
    box, caption and label drawn or printed later agrees with the decision that was made.
    """

    face: Face
    no_mask: float | None
    cut: float

    @property
    def label(self) -> Label | None:
        return None if self.no_mask is None else label_for(self.no_mask, self.cut)


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
    frame_seq: int | None = None  # the frame of the best crop so far (the snapshot's)
    # How long the violation has lasted at this message, by the time that passed (a step of
    # the wall clock left out); None where no clock timed it (an older record).
    duration_s: float | None = None
    clock_step_s: float = 0.0  # how far the wall clock stepped since start_time
    best_crop: np.ndarray | None = field(default=None, repr=False)  # BGR face crop, for opt-in snapshots


def restart_end_time(last_known: float, start_time: float | None, duration_s: float | None) -> float:
    """When a violation a killed run left open is said to end: the last moment it was known
    open (its record's time), not before its own start_time + duration_s (maskd.events)."""
    return max(last_known, (start_time or 0.0) + (duration_s or 0.0))


@dataclass(frozen=True)
class FaceCounts:
    """What the latest frame showed; sinks publish it as the camera's live state."""

    faces: int
    masked: int
    unmasked: int
    unjudged: int  # too small or cut off by the frame border
    active: int  # open violations
    detect_enabled: bool
    timestamp: float  # the frame's capture time

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LoopStats:
    """The loop's health: one record for the log line, the sinks, the previews and systemd.

    Observers get it after every frame (``fps`` smoothed, ``ms`` of that frame) and while a
    live camera is away; sinks get it once per stats interval (``fps`` and ``ms`` averaged over
    the interval).
    """

    frames: int = 0  # processed since start
    fps: float | None = None  # None: not measured yet
    active: int = 0  # open violations
    # open violations whose face the detector finds in this frame (a violating track seen now);
    # None: not known. Fewer than ``active`` while a violator's face is lost (left, or no longer
    # detected, e.g. a detector that misses masked faces), until the violation ends as gone.
    in_view: int | None = None
    ms: dict[str, float] = field(default_factory=dict)  # capture, detect, classify, track
    skipped: int = 0  # live frames the loop had no time for
    reopens: int = 0  # a live camera reopened (each try)
    loops: int = 0  # a looping file source started again at its end (not a reopen)
    corrupt: int = 0
    camera_lost_since: str | None = None  # ISO 8601 while a live camera is away
    # ... and why, in the source's words: the newest failure (cannot open, read failed, frames
    # maskd cannot use and what they are, frozen); None while frames come
    camera_lost_why: str | None = None
    camera_reconnecting: bool = False
    # While a live camera that is not lost sends no frame for a gap (a read that blocks: a
    # stream that stopped sending without closing, a hung driver): the last frame's time (ISO
    # 8601) and the seconds since it. The loop's one gap rule (maskd.pipeline) decides.
    no_frame_since: str | None = None
    no_frame_s: float | None = None
    # While a live camera that is not lost has sent no frame yet (one whose open or first read
    # hangs): when the loop began waiting for it (ISO 8601). systemd saw no STATUS at all until
    # TimeoutStartSec, READY=1 waiting for that frame.
    first_frame_since: str | None = None
    source_ended: bool = False  # a file source has ended; the loop idles until a signal
    # ... a looping one for want of anything to play (its file emptied or deleted), tried again
    # until it plays: why, in the source's words (`cannot loop: ...`); None otherwise
    cannot_loop: str | None = None
    faces: int = 0
    small_faces: int = 0
    edge_faces: int = 0
    classified: int = 0
    cached: int = 0
    motion_skipped: int = 0  # frames whose face detection the motion gate skipped
    zoned_faces: int = 0  # faces outside the include zones or inside an ignore zone
    static_faces: int = 0  # faces found to be pictures (tracking.static_after_s)
    capped_faces: int = 0  # over detector.max_faces in their frame: not tracked or judged
    grey_frames: int = 0  # frames while the camera sent grey pictures (infrared)
    grey: bool = False  # it sends them now (maskd.night): faces are found and judged less well
    detect_in_force: str = "on"  # on, or what keeps detection off: switch or schedule
    violations_started: int = 0
    events: int = 0
    detect_enabled: bool = True
    faults: tuple[str, ...] = ()  # what keeps sinks from delivering (disk full, refused)
    # those of ``faults`` said by parts the other cameras share (the broker's line): systemd's
    # one STATUS line takes them from the camera telling it now, never a stale copy of another
    shared_faults: tuple[str, ...] = ()

    def outage(self, camera: str | None = None) -> str | None:
        """Why no frame comes (a live camera lost, none yet, not answering for a gap; a file
        source ended), or None: systemd's STATUS, the previews' header, the journal's stats line
        and ``problems`` say it in these words. ``camera``: the name, where the line would not
        say whose it is otherwise."""
        if since := self.camera_lost_since:
            state = "reconnecting" if self.camera_reconnecting else "reconnect stalled"
            why = f" ({self.camera_lost_why})" if self.camera_lost_why else ""
            return f"camera lost since {since}{why}; {state}"
        if self.source_ended:
            return (f"end of the source ({self.cannot_loop}); trying it again until it plays"
                    if self.cannot_loop else "end of the source; idle until stopped")
        if since := self.first_frame_since:
            return f"waiting for the first frame{f' from camera {camera}' if camera else ''} since {since}"
        if self.no_frame_since and self.no_frame_s is not None:
            return (f"no frame for {self.no_frame_s:.0f} s (since {self.no_frame_since}); "
                    "camera not answering")
        return None

    def problems(self) -> list[str]:
        """What a person should look at: a camera lost or not answering, and what keeps the
        sinks from delivering (``faults``). Home Assistant's problem sensor is on while there is
        any. Waiting for the first frame is not one: every start waits a moment (a camera lost
        at the start is); nor is a file source that ended, unless it was to loop and cannot."""
        ended = self.source_ended and not self.cannot_loop
        idle = (self.first_frame_since or ended) and not self.camera_lost_since
        line = None if idle else self.outage()
        return [line, *self.faults] if line else list(self.faults)

    def to_dict(self) -> dict:
        d = {**asdict(self), "faults": list(self.faults), "problems": self.problems()}
        del d["shared_faults"]  # systemd's business (maskd.notify), not the stats'
        return d


class EventSink(Protocol):
    """Where violation events go (JSON lines, MQTT, ...).

    A sink may subclass this protocol to inherit the no-op ``on_state``, ``on_stats`` and
    ``faults``; the loop calls every member on every sink.
    """

    label: str = "a sink"  # what the journal calls it: `MQTT`, `JSON lines`, ...

    def emit(self, event: ViolationEvent) -> None:
        """Accept an event; must not block the detection loop for long."""

    def emit_all(self, events: list[ViolationEvent]) -> None:
        """Accept a frame's events, in order: one ``emit`` each unless the sink can take them
        together (MQTT: one durable commit for a group starting at once, not one each). One
        that raises does not keep the frame's other events from this sink (as when the loop
        called ``emit`` for each); the first error is raised once all were tried."""
        failed: Exception | None = None
        for event in events:
            try:
                self.emit(event)
            except Exception as err:  # noqa: BLE001 - raised below, for the loop to log
                failed = failed or err
        if failed is not None:
            raise failed

    def on_state(self, state: FaceCounts) -> None:
        """The latest frame's counts, after every frame; a sink rate-limits them itself."""

    def on_stats(self, stats: LoopStats) -> None:
        """The loop's health, once per stats interval."""

    def faults(self) -> list[str]:
        """Short lines saying what keeps events from being delivered now; empty when all is well."""
        return []

    def flush(self, timeout: float, cancel: threading.Event | None = None) -> bool:
        """Wait up to ``timeout`` s until everything accepted is delivered; True when it was.
        A sink that waits stops waiting once ``cancel`` is set (a second stop request)."""

    def left_open(self) -> list[ViolationEvent]:
        """The `restart` ends of the violations a killed run left open that only this sink's own
        record knows (the MQTT outbox of a version before maskd.ledger), so the other sinks end
        them too; this sink has ended them already."""
        return []

    def on_stop(self, stop: str, why: str) -> None:
        """How the loop ends, told before ``flush`` and ``close``: ``stop`` is one of STOPS
        (``clean`` for a stop asked for: a signal, the end of a clip, --max-frames) and ``why``
        the loop's words for it. A sink that outlives the process (MQTT's retained status)
        keeps it, so a restart after a crash is not taken for an ordinary one."""

    def close(self) -> None:
        """Release resources; accepted-but-undelivered events must not be lost."""


# How a run ended, from the best to the worst: asked for; the loop failed (exit 70); the
# Coral stopped answering (exit 75). The words the MQTT status/detail and the next start's
# previous_stop say (docs/mqtt.md).
STOPS = ("clean", "coral_lost", "failed")


@dataclass
class RunControl:
    """Whether detection runs: the switch (MQTT ``detect/set``, Home Assistant) and the
    configured schedule must both allow it."""

    switch: bool = True
    scheduled: bool = True  # inside a schedule window (or no schedule)

    @property
    def detect_enabled(self) -> bool:
        return self.switch and self.scheduled

    @detect_enabled.setter
    def detect_enabled(self, on: bool) -> None:
        self.switch = on

    @property
    def in_force(self) -> Literal["on", "switch", "schedule"]:
        """What decides now: detection on, or off by the switch, or off by the schedule."""
        if not self.switch:
            return "switch"
        return "on" if self.scheduled else "schedule"


class FrameObserver(Protocol):
    """Something that watches frames go by (systemd watchdog, preview); must never block the loop.

    An observer may subclass this protocol to inherit the no-op ``on_wait`` and ``faults``.
    """

    def on_frame(self, frame: Frame, verdicts: list[Verdict], stats: LoopStats) -> None:
        """Called after every processed frame."""

    def on_wait(self, stats: LoopStats) -> None:
        """Called while a live source has no frame (camera lost, reconnecting)."""

    def faults(self) -> list[str]:
        """Short lines saying what it cannot do now (a paused recording), listed with the
        sinks' in the loop's problems; empty when all is well."""
        return []

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

    def describe(self) -> str:
        """One line for `maskd doctor`: model file, input size, tiling."""


class MaskClassifier(Protocol):
    """Judges face crops; maskd.classifier.Classifier has this shape. One that also has
    ``predict_embedded`` (scores and pooled features in one call) gives the tracker features
    to tell people apart by (``scores_and_features``)."""

    input_size: int

    def predict(self, crops_rgb: Sequence[np.ndarray]) -> np.ndarray:
        """P(no_mask) per RGB uint8 crop."""


def scores_and_features(classifier: MaskClassifier,
                        crops_rgb: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
    """P(no_mask) per RGB crop and the pooled features (a row per crop) in one call; None for
    the features of a classifier without ``predict_embedded``."""
    embed = getattr(classifier, "predict_embedded", None)
    if embed is None:
        return classifier.predict(crops_rgb), None
    return embed(crops_rgb)
