"""Real run-loop parts for fault tests that need no classifier model: the real CameraLoop, Pipeline
and BlazeFace detector around a given source, a camera that can be unplugged, a recording sink.

The frames here hold no face, so the classifier is never asked (NoClassifier says so if it is).
"""

from __future__ import annotations

import threading
import time

import numpy as np

from maskd.config import Config, DetectorConfig
from maskd.detectors import make_detector
from maskd.pipeline import Pipeline
from maskd.service import CameraLoop
from maskd.types import EventSink, FaceCounts, LoopStats, RunControl


class RecordingSink(EventSink):
    """An EventSink that keeps what it got; ``drains`` decides what flush() reports."""

    label = "recording"

    def __init__(self, drains: bool = True) -> None:
        self.drains = drains
        self.events, self.states, self.stats = [], [], []
        self.flushed: list[float] = []
        self.closed = False

    def emit(self, event) -> None:
        self.events.append(event)

    def on_state(self, state: FaceCounts) -> None:
        self.states.append(state.to_dict())

    def on_stats(self, stats: LoopStats) -> None:
        self.stats.append(stats.to_dict())

    def flush(self, timeout: float, cancel: threading.Event | None = None) -> bool:
        self.flushed.append(timeout)
        return self.drains

    def close(self) -> None:
        self.closed = True


class NoClassifier:
    input_size = 224

    def predict(self, crops_rgb):
        raise AssertionError("these frames hold no face; nothing should be classified")


def service_for(source, observers=(), sinks=(), cfg: Config | None = None) -> CameraLoop:
    """The real loop around ``source`` (build() without the classifier model)."""
    cfg = cfg or Config()
    detector = make_detector(DetectorConfig(kind="blazeface"))
    return CameraLoop(cfg, source, Pipeline(cfg, detector, NoClassifier()), list(sinks),
                   list(observers), RunControl())


def close_loops(loops) -> None:  # noqa: ANN001
    """A built service's cameras closed as its stop would, without running them: each source,
    its observers, its sinks (a shared sink counts its users and closes with the last)."""
    for loop in loops:
        loop.source.close()
        for obs in loop.observers:
            obs.close()
        for sink in loop.sinks:
            sink.close()


class BlankCamera:
    """A ``Capture`` giving grey frames at ``fps``. Clear ``present`` to unplug it (reads and
    opens fail); set ``hang_read`` / ``hang_open`` to make the driver block until cleared."""

    def __init__(self, fps: float = 20.0, shape: tuple[int, ...] = (120, 160, 3)) -> None:
        self.period_s = 1.0 / fps
        self.shape = shape
        self.present = threading.Event()
        self.present.set()
        self.hang_read = threading.Event()
        self.hang_open = threading.Event()
        self.opens = 0

    def _hang(self, flag: threading.Event) -> None:
        while flag.is_set():
            time.sleep(0.01)

    def opener(self) -> BlankCamera:
        self._hang(self.hang_open)
        if not self.present.is_set():
            raise OSError("No such device")
        self.opens += 1
        return self

    def read(self) -> tuple[bool, np.ndarray | None]:
        time.sleep(self.period_s)
        self._hang(self.hang_read)
        if not self.present.is_set():
            return False, None
        return True, np.full(self.shape, 90, np.uint8)

    def release(self) -> None:
        pass
