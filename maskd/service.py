"""The run loop: source -> pipeline (detect, classify, track, violations) -> sinks, until the
file ends or a signal.

Everything is built from the one Config (``build``), then ``CameraLoop.run`` takes frames as
they come. A live source is already wrapped in ``LatestFrame`` by maskd.sources, so the loop
always gets the newest frame and the ones it had no time for are counted as skipped.
SIGTERM/SIGINT stop it cleanly: open violations end with reason ``shutdown``, sinks are
flushed and closed, so nothing accepted is lost.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import cv2

from maskd.annotate import draw_verdicts, header_text
from maskd.config import Config, still_detector
from maskd.env import Environment
from maskd.jsonl import JsonlSink
from maskd.pipeline import FrameResult, Pipeline
from maskd.sources import open_source
from maskd.types import (
    EventSink,
    FaceCounts,
    FaceDetector,
    Frame,
    FrameObserver,
    LoopStats,
    RunControl,
    Source,
    Verdict,
    ViolationEvent,
)

if TYPE_CHECKING:
    from maskd.classifier import Classifier

log = logging.getLogger("maskd.service")

EX_OK = 0
EX_SOFTWARE = 70  # sysexits.h: the loop crashed (systemd restarts it)
EX_TEMPFAIL = 75  # sysexits.h: events are still in a sink's outbox; try again later
STATS_EVERY_S = 30.0  # stats log line and sinks' on_stats
STOP_FLUSH_S = 5.0  # flush budget on a signal stop (the MQTT outbox keeps the rest on disk)
STAGES = ("capture", "detect", "classify", "track")


class ClipWriter(FrameObserver):
    """FrameObserver writing the annotated frames as an mp4v clip in ``outdir``.

    Opened on the first frame (its size is only known then). Encoding runs in the loop, which
    is acceptable because the clip is an opt-in debugging aid (``run --annotate``).
    """

    def __init__(self, outdir: Path, name: str, fps: float) -> None:
        outdir.mkdir(parents=True, exist_ok=True)
        self.path = outdir / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.mp4"
        self.fps = fps
        self.frames = 0
        self._writer: cv2.VideoWriter | None = None

    def on_frame(self, frame: Frame, verdicts: list[Verdict], stats: LoopStats) -> None:
        h, w = frame.image.shape[:2]
        if self._writer is None:
            self._writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter.fourcc(*"mp4v"),
                                           self.fps, (w, h))
            if not self._writer.isOpened():
                raise OSError(f"{self.path}: OpenCV cannot write an mp4v clip here")
        self._writer.write(draw_verdicts(frame.image, verdicts, header_text(stats)))
        self.frames += 1

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            log.info("annotated clip: %s (%d frames)", self.path, self.frames)


@dataclass
class _StatsWindow:
    """Per-stage time and frame counts since the last stats line."""

    start: float = field(default_factory=time.monotonic)
    end: float | None = None  # the source ended: idle time after it is not frame time
    frames: int = 0
    ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))


class CameraLoop:
    """One camera's loop: read a frame, let the pipeline turn it into verdicts and events, hand
    the events to the sinks and the frame to the observers. Build it with ``build`` or hand it
    ready parts (tests)."""

    def __init__(
        self,
        cfg: Config,
        source: Source,
        pipeline: Pipeline,
        sinks: list[EventSink],
        observers: list[FrameObserver],
        control: RunControl,
        exit_at_end: bool = False,
        max_frames: int | None = None,
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.pipeline = pipeline
        self.sinks = sinks
        self.observers = observers
        self.control = control
        self.exit_at_end = exit_at_end
        self.max_frames = max_frames
        self.frames = 0
        self.events = 0
        self.stop_reason: str | None = None
        self._stop = threading.Event()
        self._fps = 0.0
        self._last_t: float | None = None
        self._window = _StatsWindow()
        if hasattr(source, "on_wait"):  # a live source: hear from it while the camera is away
            source.on_wait = self._source_waiting

    # ------------------------------------------------------------------ control

    def stop(self, reason: str = "stop requested") -> None:
        """Ask the loop to end; safe from a signal handler or another thread."""
        if self._stop.is_set():
            return
        self.stop_reason = reason
        self._stop.set()
        # A live source may be blocked waiting for a camera that is gone: closing it from
        # another thread makes read() return None at once.
        if self.source.is_live:
            threading.Thread(target=self.source.close, name="stop-source", daemon=True).start()

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGTERM/SIGINT -> stop(); returns a function restoring the previous handlers."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("%s received: stopping", signal.Signals(signum).name)
            self.stop(signal.Signals(signum).name)

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)

        return restore

    # ------------------------------------------------------------------ the loop

    def run(self, flush_timeout: float = 30.0) -> int:
        """Process frames until the end or a stop; returns the exit status (0, 70 or 75)."""
        failed = False
        try:
            self._loop()
        except Exception:  # noqa: BLE001 - still end events and flush sinks, then report
            log.exception("run loop failed")
            self.stop_reason = "error"
            failed = True
        code = self._shutdown(flush_timeout)
        return EX_SOFTWARE if failed else code

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            frame = self.source.read()
            capture_ms = (time.perf_counter() - t0) * 1e3
            if frame is None:
                self._source_ended()
                return
            result = self.pipeline.process(frame, detect=self.control.detect_enabled)
            self._emit(result.events)
            self._after_frame(result, capture_ms)
            self._maybe_report()
            if self.max_frames is not None and self.frames >= self.max_frames:
                self.stop_reason = f"--max-frames {self.max_frames} reached"
                return

    def _source_ended(self) -> None:
        if self._stop.is_set():
            return
        if self.source.is_live:
            self.stop_reason = "live source closed"
            return
        if self.exit_at_end:
            self.stop_reason = "end of source"
            return
        log.info("%s: end of source; idle until SIGTERM/SIGINT (use --exit-at-end or --loop)",
                 self.source.name)
        self._window.end = time.monotonic()
        self._stop.wait()

    def _emit(self, events: list[ViolationEvent]) -> None:
        for ev in events:
            self.events += 1
            log.info("violation %s %s track=%d score=%.2f%s", ev.event_type, ev.event_id,
                     ev.track_id, ev.score, f" reason={ev.end_reason}" if ev.end_reason else "")
            self._to_sinks(lambda sink, ev=ev: sink.emit(ev), "emit")

    def _to_sinks(self, call: Callable[[EventSink], object], what: str) -> None:
        """Call every sink; one broken sink must not stop the rest."""
        for sink in self.sinks:
            try:
                call(sink)
            except Exception:  # noqa: BLE001
                log.exception("sink %s failed in %s", type(sink).__name__, what)

    def _to_observers(self, call: Callable[[FrameObserver], object]) -> None:
        """Call every observer; a broken one is removed, not fatal."""
        for obs in list(self.observers):
            try:
                call(obs)
            except Exception:  # noqa: BLE001 - a broken preview must not stop detection
                log.exception("observer %s failed; removing it", type(obs).__name__)
                self.observers.remove(obs)
                obs.close()

    def _after_frame(self, result: FrameResult, capture_ms: float) -> None:
        frame = result.frame
        self.frames += 1
        now = time.monotonic()
        if self._last_t is not None:
            dt = max(now - self._last_t, 1e-6)
            self._fps = 1.0 / dt if self._fps == 0.0 else 0.9 * self._fps + 0.1 / dt
        self._last_t = now
        ms = dict(result.timings_ms, capture=capture_ms)
        window = self._window
        window.frames += 1
        for k in STAGES:
            window.ms[k] += ms[k]
        judged = [v.label for v in result.verdicts if v.label is not None]
        state = FaceCounts(
            faces=len(result.verdicts),
            masked=judged.count("mask"),
            unmasked=judged.count("no_mask"),
            unjudged=len(result.verdicts) - len(judged),
            active=self.pipeline.violations.active,
            detect_enabled=self.control.detect_enabled,
            timestamp=frame.timestamp,
        )
        self._to_sinks(lambda sink: sink.on_state(state), "on_state")
        stats = self._stats(fps=self._fps, ms=ms)
        self._to_observers(lambda obs: obs.on_frame(frame, result.verdicts, stats))

    def _source_waiting(self) -> None:
        """The live source has no frame yet (camera lost, reconnecting): the loop is not hung,
        so observers (systemd's watchdog) and the periodic stats still hear from it."""
        stats = self._stats(fps=0.0, ms={})
        self._to_observers(lambda obs: obs.on_wait(stats))
        self._maybe_report()

    def _stats(self, fps: float, ms: dict[str, float]) -> LoopStats:
        """The loop's numbers now, with the given rate and stage times."""
        src = self.source.stats
        c = self.pipeline.counts
        return LoopStats(
            frames=self.frames, fps=fps, active=self.pipeline.violations.active, ms=ms,
            in_view=sum(t.violating and t.seen_now for t in self.pipeline.tracker.tracks),
            skipped=src.get("skipped", 0), reopens=src.get("reopens", 0),
            corrupt=src.get("corrupt", 0), camera_lost_since=src.get("camera_lost_since"),
            camera_reconnecting=bool(src.get("camera_reconnecting", False)),
            faces=c.faces, small_faces=c.small_faces, edge_faces=c.edge_faces,
            classified=c.classified, cached=c.cached,
            violations_started=self.pipeline.violations.started, events=self.events,
            detect_enabled=self.control.detect_enabled,
            faults=tuple(f for sink in self.sinks for f in sink.faults()),
        )

    def _maybe_report(self) -> None:
        if time.monotonic() - self._window.start >= STATS_EVERY_S:
            self._report()
            self._window = _StatsWindow()

    def stats(self) -> LoopStats:
        """Health numbers over the current stats window, for the log and sinks' ``on_stats``."""
        window = self._window
        elapsed = max((window.end or time.monotonic()) - window.start, 1e-6)
        n = max(window.frames, 1)
        return self._stats(fps=round(window.frames / elapsed, 2),
                           ms={k: round(v / n, 2) for k, v in window.ms.items()})

    def _report(self) -> None:
        s = self.stats()
        ms = s.ms
        log.info(
            "%.1f fps | ms capture %.1f detect %.1f classify %.1f track %.1f | frames %d "
            "skipped %d | faces %d small %d classified %d cached %d | active %d",
            s.fps, ms["capture"], ms["detect"], ms["classify"], ms["track"], s.frames,
            s.skipped, s.faces, s.small_faces, s.classified, s.cached, s.active,
        )
        self._to_sinks(lambda sink: sink.on_stats(s), "on_stats")

    def _shutdown(self, flush_timeout: float) -> int:
        log.info("stopping: %s", self.stop_reason or "error")
        self._emit(self.pipeline.close())
        self._report()
        for obs in self.observers:
            obs.close()
        self.source.close()
        budget = flush_timeout if self.exit_at_end else min(flush_timeout, STOP_FLUSH_S)
        deadline = time.monotonic() + budget
        drained = True
        for sink in self.sinks:
            name = type(sink).__name__
            try:
                ok = sink.flush(max(0.0, deadline - time.monotonic()))
            except Exception:  # noqa: BLE001 - still close the others
                log.exception("sink %s failed to flush", name)
                ok = False
            if not ok:
                log.warning("%s: not everything delivered within %.1f s; kept for the next start",
                            name, budget)
            drained = drained and ok
            try:
                sink.close()
            except Exception:  # noqa: BLE001
                log.exception("sink %s failed to close", name)
        if self.exit_at_end and not drained:
            return EX_TEMPFAIL
        return EX_OK


def build_sinks(cfg: Config, control: RunControl) -> list[EventSink]:
    """JSON lines and/or MQTT, as the config says."""
    sinks: list[EventSink] = []
    if cfg.jsonl.path:
        sinks.append(JsonlSink(cfg.jsonl.path))
    if cfg.mqtt.url:
        from maskd.mqtt import MqttSink

        sinks.append(MqttSink.from_config(cfg, control))
    return sinks


def build_observers(cfg: Config, source_fps: float) -> list[FrameObserver]:
    """Previews (maskd.preview), the annotated clip, and systemd's watchdog when under systemd."""
    observers: list[FrameObserver] = []
    p = cfg.preview
    if p.framebuffer is not None or p.window or p.http:
        from maskd.preview import make_observers

        observers += make_observers(cfg)
    if p.annotate_dir is not None:
        observers.append(ClipWriter(p.annotate_dir, cfg.camera, source_fps))
    if Environment.read().notify_socket:
        from maskd.notify import SystemdNotifier

        observers.append(SystemdNotifier())
    return observers


def build_classifier(cfg: Config) -> Classifier:
    """The classifier as the config says (raises ModelError); `run`, `scan`, `classify` and
    `doctor` all open it here."""
    from maskd.classifier import Classifier

    c = cfg.classifier
    return Classifier.open(c.model, c.threads, c.edgetpu)


def build_detector(cfg: Config, still: bool = False) -> FaceDetector:
    """The face detector as the config says (raises DetectorError); ``still`` for single
    photos (``detector.still_input_*``)."""
    from maskd.detectors import make_detector

    return make_detector(still_detector(cfg.detector) if still else cfg.detector)


def build(cfg: Config, exit_at_end: bool = False, max_frames: int | None = None) -> CameraLoop:
    """Open every part the config names; models first so a bad path fails before the camera.

    Raises ConfigError / ModelError / DetectorError / SourceError / PreviewUnavailable with a
    message naming the problem; whatever was opened before the failure is closed again.
    """
    control = RunControl()
    classifier = build_classifier(cfg)
    detector = build_detector(cfg)
    source = open_source(cfg.source)
    opened: list = [source]
    try:
        sinks = build_sinks(cfg, control)
        opened += sinks
        observers = build_observers(cfg, float(getattr(source, "fps", cfg.source.fps)))
    except BaseException:
        for part in reversed(opened):
            part.close()
        raise
    pipeline = Pipeline(cfg, detector, classifier)
    return CameraLoop(cfg, source, pipeline, sinks, observers, control, exit_at_end, max_frames)
