"""The run loop: source -> pipeline (detect, classify, track, violations) -> sinks, until the
file ends or a signal.

Everything is built from the one Config (``build``), then ``CameraLoop.run`` takes frames as
they come. A live source is already wrapped in ``LatestFrame`` by maskd.sources, so the loop
always gets the newest frame and the ones it had no time for are counted as skipped.
SIGTERM/SIGINT/SIGHUP stop it cleanly: open violations end with reason ``shutdown``, sinks are
flushed and closed, so nothing accepted is lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import TYPE_CHECKING

import numpy as np

from maskd import clock, schedule
from maskd.annotate import detection_off
from maskd.clip import ClipWriter
from maskd.config import (
    EXTRA_MODELS_WAY_OUT,
    Config,
    empty_model_problem,
    excerpt,
    extra_model_problem,
    model_file_problem,
    still_detector,
)
from maskd.env import Environment
from maskd.files import CardWatch
from maskd.jsonl import JsonlSink
from maskd.ledger import OpenViolations
from maskd.pipeline import FrameResult, Pipeline
from maskd.snapshots import SnapshotStore
from maskd.sources import Backoff, open_source, turned
from maskd.tflite import CORAL_LOST_NEXT, CoralLost
from maskd.types import (
    EventSink,
    FaceCounts,
    FaceDetector,
    FrameObserver,
    LoopStats,
    MaskClassifier,
    RunControl,
    Source,
    SourceError,
    ViolationEvent,
    scores_and_features,
)

if TYPE_CHECKING:
    from maskd.classifier import Classifier, MeanClassifier
    from maskd.notify import SystemdNotifier

log = logging.getLogger("maskd.service")

EX_OK = 0
EX_SOFTWARE = 70  # sysexits.h: the loop crashed (systemd restarts it)
EX_TEMPFAIL = 75  # sysexits.h: events are still in a sink's outbox; try again later
STATS_EVERY_S = 30.0  # the stats log line
IDLE_POLL_S = 0.5  # while idle after a file's end, observers (the watchdog) hear this often
FIRST_STATS_S = 2.0  # sinks hear the first stats this soon (then every mqtt.stats_interval_s)
STOP_FLUSH_S = 5.0  # flush budget on a signal stop (the MQTT outbox keeps the rest on disk)
STAGES = ("capture", "detect", "classify", "track")


@dataclass
class _StatsWindow:
    """Per-stage time and frame counts since the last stats line."""

    start: float = field(default_factory=time.monotonic)
    end: float | None = None  # the source ended: idle time after it is not frame time
    frames: int = 0
    ms: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    def add(self, ms: dict[str, float]) -> None:
        self.frames += 1
        for k in STAGES:
            self.ms[k] += ms[k]


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
        ledger: OpenViolations | None = None,
        restart_ends: list[ViolationEvent] | None = None,
        cards: CardWatch | None = None,
        shared: Collection[object] = (),
    ) -> None:
        self.cfg = cfg
        self.source = source
        self.pipeline = pipeline
        self.sinks = sinks
        self.observers = observers
        self.control = control
        self.exit_at_end = exit_at_end
        self.max_frames = max_frames
        self.ledger = ledger
        self._restart_ends = restart_ends or []  # what a killed run left open (maskd.ledger)
        self._cards = cards  # errors the cards it writes to recorded: problems, as the sinks'
        self._shared = shared  # its parts other cameras' loops use too (LoopStats.shared_faults)
        self.frames = 0
        self.events = 0
        self.stop_reason: str | None = None
        self._stop = threading.Event()
        self._hurry = threading.Event()  # asked again while stopping: stop waiting for delivery
        self._ended = False  # a file source ended and the loop idles
        self._cannot_loop: str | None = None  # why a looping one did: a problem until it plays
        self._began = time.time()  # wall time the loop began waiting for frames (run() sets it)
        self.finished = threading.Event()  # run() has returned: a stop now is no second stop
        self.coral_lost = False  # run() ended because the Coral stopped answering (exit 75)
        self.failure: str | None = None  # why the loop or its stop failed (exit 70)
        self._coral_err = ""  # the runtime's words when the Coral stopped answering
        self._fps = 0.0
        self._dt: float | None = None  # the frames' average interval
        self._last_t: float | None = None
        self._state: FaceCounts | None = None  # the counts the sinks were given last
        self._windows = [w.window() for w in cfg.schedule]
        self._said_inside = True  # what the log said of the windows (nothing yet: inside)
        self._zone = clock.ZoneWatch()
        self._window = _StatsWindow()  # the log line's
        self._sink_window = _StatsWindow()  # the sinks' (mqtt.stats_interval_s)
        self._next_sink_stats = time.monotonic() + min(FIRST_STATS_S, cfg.mqtt.stats_interval_s)
        if hasattr(source, "on_wait"):  # a live source: hear from it while the camera is away
            source.on_wait = self._source_waiting

    # ------------------------------------------------------------------ control

    def stop(self, reason: str = "stop requested", hurry: bool = True) -> None:
        """Ask the loop to end; safe from a signal handler or another thread. Asked again while
        it stops (a second Ctrl-C), it stops waiting for the sinks to deliver: what they hold
        stays where they keep it (the MQTT outbox). ``hurry`` False: a stop that nobody asked
        twice (another camera's loop failed), which leaves a loop already stopping alone."""
        if self._stop.is_set():
            if hurry and not self._hurry.is_set():
                self._hurry.set()
                log.warning("%s: %s while stopping: not waiting for delivery any longer",
                            self.cfg.camera, reason)
            return
        self.stop_reason = reason
        self._stop.set()
        # A live source may be blocked waiting for a camera that is gone: closing it from
        # another thread makes read() return None at once.
        if self.source.is_live:
            threading.Thread(target=self.source.close, name="stop-source", daemon=True).start()

    # ------------------------------------------------------------------ the loop

    def also_end(self, events: list[ViolationEvent]) -> None:
        """More `restart` ends to give this loop's sinks first (another camera's: removed)."""
        self._restart_ends.extend(events)

    def run(self, flush_timeout: float = 30.0) -> int:
        """Process frames until the end or a stop; returns the exit status (0, 70 or 75).

        An exception out of this camera's loop (a bug its frames hit) is one ERROR line naming
        the camera and the exception, its traceback below, then the usual stop (``_shutdown``)
        and 70, so that systemd restarts maskd (``Service``: the other cameras stop too)."""
        self._began = time.time()
        try:
            self._emit(self._restart_ends)
            if self.source.is_live:
                self._tell_nobody_yet()
            self._loop()
        except CoralLost as err:  # the hardware, not a bug: one line, and 75 for the boot wait
            log.error("%s: %s: %s", self.cfg.camera, err, CORAL_LOST_NEXT)
            self.stop_reason = "the Coral stopped answering"
            self.coral_lost = True
            self._coral_err = str(err)
        except Exception as err:  # noqa: BLE001 - still end events and flush sinks, then report
            log.exception("%s: the loop failed: %s; maskd stops with exit status %d (systemd "
                          "restarts it)", self.cfg.camera, _named(err), EX_SOFTWARE)
            self.stop_reason = "error"
            self.failure = f"the loop failed: {_named(err)}"
        try:
            code = self._shutdown(flush_timeout)
        finally:
            self.finished.set()
        if self.failure is not None or code == EX_SOFTWARE:  # a bug, in the loop or its stop
            return EX_SOFTWARE
        return EX_TEMPFAIL if self.coral_lost else code

    @property
    def reached_max_frames(self) -> bool:
        """--max-frames N counts this camera's frames."""
        return self.max_frames is not None and self.frames >= self.max_frames

    @property
    def stopping(self) -> bool:
        """Asked to stop (or stopped): asking again means "stop waiting for delivery"."""
        return self._stop.is_set()

    @property
    def idle_at_end(self) -> bool:
        """Its file ended and the loop idles (a camera of a map, without --exit-at-end)."""
        return self._ended

    @property
    def without_frames(self) -> bool:
        """No frame comes now: the camera is lost or was never found (reconnecting), or the
        file ended and the loop idles."""
        return self._ended or self.source.stats.get("camera_lost_since") is not None

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            frame = self.source.read()
            if frame is not None:  # turned before anything sees it
                frame = turned(frame, self.cfg.source.rotate)
            capture_ms = (time.perf_counter() - t0) * 1e3
            if frame is None:
                if self._source_ended():
                    continue
                return
            self._follow_schedule(frame.timestamp)
            result = self.pipeline.process(frame, detect=self.control.detect_enabled)
            self._emit(result.events)
            self._after_frame(result, capture_ms)
            self._maybe_report()
            if self.reached_max_frames:
                self.stop_reason = f"--max-frames {self.max_frames} reached"
                return

    def _follow_schedule(self, timestamp: float) -> None:
        """Detection on or off by the configured weekly windows, at the frame's time."""
        zone = self._zone.poll()
        if zone:
            log.info("%s: the machine's time zone changed (now %s): schedule and log times follow it",
                     self.cfg.camera, zone)
        if not self._windows:
            return
        inside = self.control.scheduled = schedule.allows(self._windows, timestamp)
        if inside != self._said_inside:
            self._said_inside = inside
            nxt = schedule.next_change(self._windows, timestamp)
            log.info("%s: schedule turns detection %s%s", self.cfg.camera,
                     "on" if inside else "off",
                     f" until {schedule.when(nxt, timestamp)}" if nxt else "")

    def _source_ended(self) -> bool:
        """The source gave no frame: stop, or idle until stopped; True when a looping file that
        could not loop plays again (tried as a lost camera is reopened, ``source.reopen_*``)."""
        if self._stop.is_set():
            return False
        if self.source.is_live:
            self.stop_reason = "live source closed"
            return False
        why = getattr(self.source, "why_ended", None)  # a looping file with nothing left to play
        if why:  # the camera's name first, as every line of its loop (a map has several)
            log.warning("%s: %s; %s", self.cfg.camera, why, "stopping" if self.exit_at_end else
                        "idle, trying it again until it plays")
        if self.exit_at_end:
            self.stop_reason = "end of source"
            return False
        if why:  # not an end asked for: a problem (status line, page, problem sensor, stats)
            self._cannot_loop = why
        # nobody is looked at any more: not "active" while it idles; a loop tried again goes
        # on, as after a lost camera (`gone`), an end asked for is a stop (`shutdown`)
        if why:
            self._emit_ends(self.pipeline.source_gone())
        else:
            self._end_violations()
            log.info("%s: end of source (%s); idle until SIGTERM/SIGINT (use --exit-at-end, "
                     "or source.loop to play it again: --loop without a cameras: map)",
                     self.cfg.camera, self.source.name)
        self._window.end = self._sink_window.end = time.monotonic()
        self._ended = True
        retry = Backoff(self.cfg.source.reopen_min_s, self.cfg.source.reopen_max_s, self._stop)
        while not self._stop.wait(IDLE_POLL_S):  # idle by design: the watchdog hears so,
            self._source_waiting()  # and the sinks get stats (fps 0) and their retries
            if why and retry.due() and self.source.again():  # type: ignore[attr-defined]
                log.warning("%s: %s plays again", self.cfg.camera, self.source.name)
                self._cannot_loop, self._ended = None, False
                self._window, self._sink_window = _StatsWindow(), _StatsWindow()
                return True
            now = getattr(self.source, "why_ended", None)
            if why and now and now != self._cannot_loop:
                # why it cannot play now (a folder made again empty, a copy cut short): the
                # first reason, kept, named what was no longer so
                log.warning("%s: %s; idle, trying it again until it plays", self.cfg.camera, now)
                self._cannot_loop = now
        return False

    def _emit(self, events: list[ViolationEvent]) -> None:
        """To every sink; the ledger notes a start or update before any sink has it and an end
        once every sink has it, so a kill in between leaves it open there (ended `restart` at
        the next start), never ended before every sink knows. The frame's events are noted
        together: one write of the ledger for a crowd, not one each."""
        if self.ledger is not None and (opened := [ev for ev in events if ev.event_type != "end"]):
            self.ledger.note(*opened)
        for ev in events:
            self.events += 1
            # ev.camera, not this loop's: a removed camera's restart end goes out through the
            # first loop's sinks (``also_end``) and its line names the camera it belongs to
            log.info("%s: violation %s %s track=%d score=%.2f%s", ev.camera, ev.event_type,
                     ev.event_id, ev.track_id, ev.score,
                     f" reason={ev.end_reason}" if ev.end_reason else "")
        if events:
            self._to_sinks(lambda sink: sink.emit_all(events), "emit")
        if self.ledger is not None and (ended := [ev for ev in events if ev.event_type == "end"]):
            self.ledger.note(*ended)

    def _to_sinks(self, call: Callable[[EventSink], object], what: str) -> None:
        """Call every sink; one broken sink must not stop the rest."""
        for sink in self.sinks:
            try:
                call(sink)
            except Exception:  # noqa: BLE001
                log.exception("sink %s failed in %s", sink.label, what)

    def _to_observers(self, call: Callable[[FrameObserver], object]) -> None:
        """Call every observer; a broken one is removed, not fatal."""
        for obs in list(self.observers):
            try:
                call(obs)
            except Exception:  # noqa: BLE001 - a broken preview must not stop detection
                log.exception("observer %s failed; removing it", type(obs).__name__)
                self.observers.remove(obs)
                _close_observer(obs)

    def _after_frame(self, result: FrameResult, capture_ms: float) -> None:
        frame = result.frame
        self.frames += 1
        now = time.monotonic()
        if self._last_t is not None:
            # the average interval, then its inverse: an average of 1/interval is inflated by
            # the short ones (frames that come unevenly, as several cameras' loops on few cores)
            dt = max(now - self._last_t, 1e-6)
            self._dt = dt if self._dt is None else 0.9 * self._dt + 0.1 * dt
            self._fps = 1.0 / self._dt
        self._last_t = now
        ms = dict(result.timings_ms, capture=capture_ms)
        self._window.add(ms)
        self._sink_window.add(ms)
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
        self._tell_state(state)
        stats = self._stats(fps=self._fps, ms=ms)
        self._to_observers(lambda obs: obs.on_frame(frame, result.verdicts, stats))

    def _tell_nobody_yet(self) -> None:
        """A live camera's counts before its first frame: nobody seen and nothing open, at
        the wall clock's time (its frames' clock), the schedule applied. What a previous run
        left retained (a violation it was killed in, its faces) is not true now, also when
        the camera never delivers. (A file delivers at once, on its own clock.)"""
        now = time.time()
        self._follow_schedule(now)
        self._tell_state(FaceCounts(0, 0, 0, 0, active=self.pipeline.violations.active,
                                    detect_enabled=self.control.detect_enabled, timestamp=now))

    def _tell_state(self, state: FaceCounts) -> None:
        self._state = state
        self._to_sinks(lambda sink: sink.on_state(state), "on_state")

    def _end_violations(self) -> None:
        """End every open violation (the stop), and tell the sinks the counts that follow: the
        last frame's, with no violation open. Their retained state must not go on saying
        ``active: 1`` next to an `end` and ``violation/active`` OFF."""
        self._emit_ends(self.pipeline.close())

    def _emit_ends(self, ended: list[ViolationEvent], always: bool = False, **counts: int
                   ) -> None:
        """The ends, then the last counts with what is still open (and ``counts`` changed);
        with ``always`` the counts even when nothing ended."""
        self._emit(ended)
        if (ended or always) and self._state is not None:
            self._tell_state(replace(self._state, active=self.pipeline.violations.active,
                                     **counts))

    def _end_gone(self) -> None:
        """No frame for a gap while the camera is away: its open violations end `gone` now
        (``Pipeline.end_gone``), and the sinks hear that nobody is seen and nothing is open, or
        their retained state would say ``active: 1`` for the whole outage; with no violation
        open too, once (was: the last frame's faces for the whole outage)."""
        ended = self.pipeline.end_gone()
        seen = self._state is not None and self._state.faces > 0
        self._emit_ends(ended, always=seen and self.pipeline.no_frame_for() is not None,
                        faces=0, masked=0, unmasked=0, unjudged=0)

    def _source_waiting(self) -> None:
        """No frame now (a live camera lost and reconnecting, or a file source that ended and
        idles): the loop is not hung, so observers (systemd's watchdog) and the periodic stats
        (the sinks' retries too: JSON lines a full disk held back) still hear from it, and a
        wait as long as a gap ends what was open (``_end_gone``). After a wait without frames
        (the camera lost, the file ended) the frame rate is counted afresh, not from an interval
        as long as the wait; not after each call (every 0.5 s without a frame), which is between
        any two frames of a camera slower than 2 fps."""
        if self.without_frames:
            self._last_t = self._dt = None
        self._end_gone()
        self._schedule_while_waiting()
        self._tell_waiting()
        self._maybe_report()

    def _schedule_while_waiting(self) -> None:
        """A live camera away: the schedule follows the wall clock (its frames' clock), and the
        sinks hear a turn at once. It followed frames only, so a window that ended during an
        outage left Home Assistant's detection switch ON until the camera came back. (A file
        that ended keeps its own clock's last word.)"""
        if not self.source.is_live or self._state is None:
            return
        before = self.control.scheduled  # told with the switch OFF too (detect/attributes)
        now = time.time()
        self._follow_schedule(now)
        if self.control.scheduled != before:
            self._tell_state(replace(self._state, detect_enabled=self.control.detect_enabled,
                                     timestamp=now))

    def _tell_waiting(self) -> None:
        """Observers hear that the loop waits without a frame (and why: ``LoopStats``): at
        0 fps once no frame comes, else at the rate of the frames (this wait is between two
        frames of a camera slower than 2 fps)."""
        stats = self._stats(fps=0.0 if self.without_frames else self._fps, ms={})
        self._to_observers(lambda obs: obs.on_wait(stats))

    def _faults(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """What keeps the sinks from delivering, what the observers cannot do (a paused clip;
        a part that is both is asked once) and what the cards written to recorded; then those
        of them that parts shared with other cameras said (``LoopStats.shared_faults``)."""
        parts = [*self.sinks, *(o for o in self.observers if o not in self.sinks)]
        said = [(f, part in self._shared) for part in parts
                for f in getattr(part, "faults", list)()]  # a structural observer may lack it
        said += [(f, True) for f in (self._cards.faults() if self._cards is not None else ())]
        return tuple(f for f, _ in said), tuple(f for f, shared in said if shared)

    def _stats(self, fps: float, ms: dict[str, float]) -> LoopStats:
        """The loop's numbers now, with the given rate and stage times."""
        src = self.source.stats
        c = self.pipeline.counts
        lost = src.get("camera_lost_since")
        # A live camera neither lost nor sending for a gap: a read that blocks (a stream silent
        # but open, a hung driver). Named, or systemd's STATUS, the previews and the stats
        # showed the last frame's fps until the stream's time-out or the watchdog's kill. (A
        # file's frame times are made up: a loop slower than the file is no stall.)
        waited = (self.pipeline.no_frame_for() if self.source.is_live and not lost else None)
        # Before its first frame (READY=1 waits for it) a camera whose open or read hangs was
        # nameless in systemd's STATUS until TimeoutStartSec: named, since the loop began.
        first = (self._began if self.source.is_live and not lost and not self.frames else None)
        faults, shared = self._faults()
        return LoopStats(
            frames=self.frames, fps=fps, active=self.pipeline.violations.active, ms=ms,
            in_view=sum(t.violating and t.seen_now for t in self.pipeline.tracker.tracks),
            skipped=src.get("skipped", 0), reopens=src.get("reopens", 0),
            loops=src.get("loops", 0),
            corrupt=src.get("corrupt", 0), camera_lost_since=lost,
            camera_lost_why=src.get("camera_lost_why") if lost else None,
            no_frame_since=None if waited is None else clock.local_iso(waited[0].timestamp),
            no_frame_s=None if waited is None else round(waited[1], 1),
            first_frame_since=None if first is None else clock.local_iso(first),
            camera_reconnecting=bool(src.get("camera_reconnecting", False)),
            source_ended=self._ended, cannot_loop=self._cannot_loop, faces=c.faces,
            small_faces=c.small_faces, edge_faces=c.edge_faces,
            classified=c.classified, cached=c.cached, motion_skipped=c.motion_skipped,
            zoned_faces=c.zoned_faces, static_faces=c.static_faces, capped_faces=c.capped_faces,
            grey_frames=c.grey_frames, grey=self.pipeline.night.grey,
            detect_in_force=self.control.in_force,
            violations_started=self.pipeline.violations.started, events=self.events,
            detect_enabled=self.control.detect_enabled,
            faults=faults, shared_faults=shared,
        )

    def _maybe_report(self) -> None:
        now = time.monotonic()
        if now - self._window.start >= STATS_EVERY_S:
            self._log_stats()
        if now >= self._next_sink_stats:
            self._sink_stats()

    def stats(self, window: _StatsWindow | None = None) -> LoopStats:
        """Health numbers over a stats window (the log line's by default)."""
        window = window or self._window
        elapsed = max((window.end or time.monotonic()) - window.start, 1e-6)
        n = max(window.frames, 1)
        lost = self.source.stats.get("camera_lost_since") is not None  # no frames come now
        return self._stats(fps=0.0 if lost else round(window.frames / elapsed, 2),
                           ms={k: round(v / n, 2) for k, v in window.ms.items()})

    def _sink_stats(self) -> None:
        """Sinks' ``on_stats``: fresh numbers at the configured interval, and the last ones at
        the end."""
        s = self.stats(self._sink_window)
        self._to_sinks(lambda sink: sink.on_stats(s), "on_stats")
        self._sink_window = _StatsWindow()
        self._next_sink_stats = time.monotonic() + self.cfg.mqtt.stats_interval_s

    def _last_words(self) -> bool:
        """The stop's own steps: end what is open, the last stats; False when they failed.
        They read the loop's state, which the bug that failed the loop may have left broken;
        failing here too must not leave the sinks unflushed and open (was: the camera's thread
        died, the process ran on with the other cameras and this one's entities online). What
        stays open is kept by the ledger (and the MQTT outbox) and ended `restart` at the
        next start."""
        try:
            self._end_violations()
            self._log_stats()
            self._sink_stats()
        except Exception as err:  # noqa: BLE001 - see above
            kept = ("the next start ends them `restart`" if self.ledger is not None else
                    "they get no end (no state_dir, no MQTT: nothing keeps them)")
            log.error("%s: the stop could not end the open violations: %s; %s",
                      self.cfg.camera, _named(err), kept)
            self.failure = self.failure or (f"the stop could not end the open violations: "
                                            f"{_named(err)}")
            return False
        return True

    def _log_stats(self) -> None:
        """The journal's line every STATS_EVERY_S; it ends with what keeps faces unjudged
        (detection switched off, as in the header) and frames away (a camera's outage in
        systemd's STATUS words, a file played to its end), so a 0.0 fps or 'faces 0' line is
        not read as an empty hall."""
        s = self.stats()
        self._window = _StatsWindow()
        ms = s.ms
        outage = s.outage()
        away = f" | {outage}" if outage else ""
        log.info(
            "%s: %.1f fps | ms capture %.1f detect %.1f classify %.1f track %.1f | frames %d "
            "skipped %d | faces %d small %d classified %d cached %d | active %d%s%s%s",
            self.cfg.camera, s.fps, ms["capture"], ms["detect"], ms["classify"], ms["track"],
            s.frames, s.skipped, s.faces, s.small_faces, s.classified, s.cached, s.active,
            detection_off(s), " | grey pictures (infrared?)" if s.grey else "", away,
        )

    def _shutdown(self, flush_timeout: float) -> int:
        log.info("%s: stopping: %s", self.cfg.camera, self.stop_reason or "error")
        self._stop.set()  # from here a stop request means "stop waiting"
        ended = self._last_words()
        stop, why = self._how_it_ends()
        self._to_sinks(lambda sink: sink.on_stop(stop, f"{self.cfg.camera}: {why}"), "on_stop")
        for obs in self.observers:
            _close_observer(obs)
        self.source.close()
        budget = flush_timeout if self.exit_at_end else min(flush_timeout, STOP_FLUSH_S)
        deadline = time.monotonic() + budget
        drained = True
        for sink in self.sinks:
            name = sink.label
            try:
                ok = sink.flush(max(0.0, deadline - time.monotonic()), cancel=self._hurry)
            except Exception:  # noqa: BLE001 - still close the others
                log.exception("sink %s failed to flush", name)
                ok = False
            if not ok:
                # What is kept or lost is the sink's to say (the outbox keeps its events).
                log.warning("%s: %s: not everything accepted was delivered", self.cfg.camera,
                            name)
            drained = drained and ok
            try:
                sink.close()
            except Exception:  # noqa: BLE001
                log.exception("sink %s failed to close", name)
        if self.ledger is not None:
            self.ledger.release(self.cfg.camera)
        if not ended:
            return EX_SOFTWARE
        if self.exit_at_end and not drained:
            return EX_TEMPFAIL
        return EX_OK

    def _how_it_ends(self) -> tuple[str, str]:
        """The stop as the sinks tell it (``EventSink.on_stop``): one of STOPS, and why; the
        same order as the exit status (70 before 75 before 0)."""
        if self.failure is not None:
            return "failed", self.failure
        if self.coral_lost:
            return "coral_lost", self._coral_err
        return "clean", self.stop_reason or "stop requested"


def _named(err: BaseException) -> str:
    """An exception as one line: its type and its message."""
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def stop_signals() -> list[signal.Signals]:
    """The signals that stop maskd: SIGTERM, SIGINT, and SIGHUP unless it is ignored (`nohup`)."""
    sigs = [signal.SIGTERM, signal.SIGINT]
    if signal.getsignal(signal.SIGHUP) != signal.SIG_IGN:
        sigs.append(signal.SIGHUP)
    return sigs


class Service:
    """The process: one CameraLoop per camera, each in its own thread, sharing the models.

    A camera that is lost stops only its own loop while it reconnects. A loop that crashes
    stops the others, and a hung one starves systemd's watchdog (``SystemdNotifier.for_cameras``),
    so systemd restarts the process as it would with one camera. The process ends when every
    loop has ended, with the worst exit status (70 before 75 before 0). One camera runs in the
    calling thread, exactly as a lone CameraLoop.
    """

    def __init__(self, loops: list[CameraLoop]) -> None:
        self.loops = loops

    def stop(self, reason: str = "stop requested", hurry: bool = True) -> None:
        """Stop every loop that still runs; one that has returned (its file ended) is done, and
        a stop would read as a second one (``CameraLoop.stop``: not waiting for delivery;
        ``hurry`` False for a stop that is no second request, which hurries no loop)."""
        for loop in self.loops:
            if not loop.finished.is_set():
                loop.stop(reason, hurry)

    def _max_frames_done(self) -> None:
        """--max-frames N counts per camera: once some camera is done (it reached N, or its
        file ended short of it: it never will) and every other one is too or gets no frame now
        (a camera never found, a stream that is down), the run ends; it would wait for ever for
        a camera that never delivers (was: with no camera at N, for ever beside a file that
        ended: the file idles in a map)."""
        if all(loop.max_frames is None for loop in self.loops):
            return  # without --max-frames a file that ended idles beside the others, by design
        done = [loop for loop in self.loops if loop.reached_max_frames or loop.idle_at_end]
        if not done:
            return
        waiting = [loop for loop in self.loops if loop not in done and not loop.stopping]
        if all(loop.without_frames for loop in waiting):
            for loop in waiting + [lp for lp in done if lp.idle_at_end and not lp.stopping]:
                loop.stop(f"--max-frames {loop.max_frames} reached by the cameras with frames")

    def install_signal_handlers(self) -> Callable[[], None]:
        """SIGTERM/SIGINT/SIGHUP -> stop() every loop; returns a function restoring the old
        handlers. SIGHUP too: a terminal (SSH session) that closes must not kill maskd with
        violations left open (there is no configuration to reload); unless it is ignored
        (`nohup`), which asks to outlive the terminal."""

        # The handler runs in the main thread between two of its steps, maybe inside a lock
        # (an Event.wait: a file's idle end; a log line): stopping there (Event.set, logging)
        # could wait for ever for that very lock. So it only writes the signal's number to a
        # pipe, which takes no lock, and a thread of its own stops the loops.
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)

        def handler(signum: int, _frame: FrameType | None) -> None:
            with contextlib.suppress(BlockingIOError):  # a full pipe holds enough stops
                os.write(write_fd, bytes([signum]))

        def relay() -> None:
            while data := os.read(read_fd, 64):  # b"": restore() closed the pipe
                for signum in data:
                    name = signal.Signals(signum).name
                    log.info("%s received: stopping", name)
                    self.stop(name)

        thread = threading.Thread(target=relay, name="maskd-signals", daemon=True)
        thread.start()
        old = {s: signal.signal(s, handler) for s in stop_signals()}

        def restore() -> None:
            for s, h in old.items():
                signal.signal(s, h)
            os.close(write_fd)
            thread.join(5.0)
            if not thread.is_alive():
                os.close(read_fd)

        return restore

    def run(self, flush_timeout: float = 30.0) -> int:
        if len(self.loops) == 1:
            return self.loops[0].run(flush_timeout)
        codes: dict[str, int] = {}

        def run_one(loop: CameraLoop) -> None:
            code = codes[loop.cfg.camera] = loop.run(flush_timeout)
            # A camera stopping already (it failed too, or a signal came) is not hurried by
            # this one's failure: it is nobody's second stop request.
            if code == EX_SOFTWARE:  # a crashed loop: the process fails, so systemd restarts it
                self.stop(f"camera {loop.cfg.camera} failed", hurry=False)
            elif loop.coral_lost:  # the cameras share the Coral: all wait for it at the start
                self.stop(f"camera {loop.cfg.camera} lost the Coral", hurry=False)

        threads = [threading.Thread(target=run_one, args=(loop,), name=f"camera-{loop.cfg.camera}")
                   for loop in self.loops]
        for t in threads:
            t.start()
        while any(t.is_alive() for t in threads):  # joined in slices: signals stay deliverable
            for t in threads:
                t.join(timeout=0.5)
            self._max_frames_done()
        for name, code in codes.items():
            if code != EX_OK:
                log.warning("camera %s ended with status %d", name, code)
        worst = [c for c in (EX_SOFTWARE, EX_TEMPFAIL) if c in codes.values()]
        return worst[0] if worst else EX_SOFTWARE if len(codes) < len(self.loops) else EX_OK


class _Serialized:
    """A model shared by several camera threads: one call at a time (TFLite interpreters and
    OpenCV's detectors are not safe to call from two threads at once)."""

    def __init__(self, inner: object) -> None:
        self._inner = inner
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def detect(self, image_bgr: np.ndarray) -> list:
        with self._lock:
            return self._inner.detect(image_bgr)  # type: ignore[attr-defined]

    def predict(self, crops_rgb: list[np.ndarray]) -> np.ndarray:
        with self._lock:
            return self._inner.predict(crops_rgb)  # type: ignore[attr-defined]

    def predict_embedded(self, crops_rgb: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Scores and features under the lock (``__getattr__`` would hand out the inner model's
        method unlocked)."""
        with self._lock:
            return scores_and_features(self._inner, crops_rgb)  # type: ignore[arg-type]


class _Shared(EventSink):
    """A sink used by several camera loops (the JSON lines file): calls are serialized, and it
    closes when the last loop closes it."""

    def __init__(self, inner: EventSink, users: int) -> None:
        self._inner = inner
        self._users = users
        self._lock = threading.Lock()
        self.label = inner.label

    def emit(self, event: ViolationEvent) -> None:
        with self._lock:
            self._inner.emit(event)

    def emit_all(self, events: list[ViolationEvent]) -> None:
        with self._lock:
            self._inner.emit_all(events)

    def faults(self) -> list[str]:
        return self._inner.faults()

    def on_stats(self, stats: LoopStats) -> None:
        with self._lock:
            self._inner.on_stats(stats)

    def flush(self, timeout: float, cancel: threading.Event | None = None) -> bool:
        return self._inner.flush(timeout, cancel)

    def close(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._inner.close()


def build_sinks(cfg: Config, control: RunControl) -> list[EventSink]:
    """JSON lines and/or MQTT, as the config says."""
    sinks: list[EventSink] = []
    if cfg.jsonl.path:
        sinks.append(JsonlSink(cfg.jsonl.path, cfg.jsonl.max_mb))
    if cfg.mqtt.url:
        from maskd.classifier import model_path
        from maskd.mqtt import MqttSink

        sinks.append(MqttSink.from_config(cfg, control, model_path(cfg.classifier.model).name))
    return sinks


def _close_observer(obs: FrameObserver) -> None:
    """Close one observer; one that raises is said, and the stop goes on to the others, the
    source and the sinks (their flush of the end events), as a failing sink's close does."""
    try:
        obs.close()
    except Exception:  # noqa: BLE001 - see above
        log.exception("observer %s failed to close", type(obs).__name__)


def _systemd_notifier(camera: str | None = None) -> SystemdNotifier | None:
    """systemd's watchdog and status, when systemd started us (one per process); ``camera``:
    the one camera's name, which its status names before the first frame."""
    if not Environment.read().notify_socket:
        return None
    from maskd.notify import SystemdNotifier

    return SystemdNotifier(camera=camera)


def build_observers(cfg: Config, source_fps: float, notifier: FrameObserver | None = None,
                    key: str = "preview") -> list[FrameObserver]:
    """Previews (maskd.preview; ``key``: cfg.preview's key in the file, for their messages),
    the annotated clip, and systemd's ``notifier``."""
    observers: list[FrameObserver] = []
    p = cfg.preview
    if p.framebuffer is not None or p.window:
        from maskd.preview import make_observers

        observers += make_observers(cfg, key)
    if p.annotate_dir is not None:
        observers.append(ClipWriter(p.annotate_dir, cfg.camera, source_fps, p.annotate_segment_s,
                                    p.annotate_segment_mb, p.annotate_keep_mb))
    if notifier is not None:
        observers.append(notifier)
    return observers


def build_classifier(cfg: Config, still: bool = False,
                     options: Mapping[str, str] | None = None) -> Classifier | MeanClassifier:
    """The classifier as the config says (raises ModelError); `run`, `scan`, `classify` and
    `doctor` all open it here. ``still`` (`scan`): averaged with ``still_extra_models``, which
    run on the CPU (an EdgeTPU graph is compiled for one model). ``options``: the keys the
    command line set, with the option that set them (config.options_given): a model file it
    cannot open is said naming that option, else its key, as check-config says it."""
    from maskd.classifier import (
        Classifier,
        MeanClassifier,
        ModelError,
        classifier_file_problem,
        model_path,
        still_extra_paths,
    )

    c = cfg.classifier
    named = (options or {}).get("classifier.model", "classifier.model")
    if c.model is not None and (problem := classifier_file_problem(c.model, named)) is not None:
        raise ModelError(problem)
    if (problem := empty_model_problem(model_path(c.model), named if c.model else None)
            ) is not None:  # the shipped one's too: an install onto a full card
        raise ModelError(problem)
    try:
        first = Classifier.open(c.model, c.threads, c.edgetpu)
    except OSError as err:
        raise ModelError(_unusable(named, err)) from None
    extras = still_extra_paths(c.model, c.still_extra_models) if still else []
    members = [first]
    for p in extras:
        if (problem := extra_model_problem(p)) is not None:
            raise ModelError(problem)
        try:
            members.append(Classifier.open(p, c.threads, False))
        except ModelError as err:
            raise ModelError(f"{err} (classifier.still_extra_models; {EXTRA_MODELS_WAY_OUT})"
                             ) from None
    return MeanClassifier(members) if len(members) > 1 else first


def build_detector(cfg: Config, still: bool = False,
                   options: Mapping[str, str] | None = None) -> FaceDetector:
    """The face detector as the config says (raises DetectorError); ``still`` for single
    photos (``detector.still_input_*``); ``options`` as for build_classifier. ``auto``'s
    model is YuNet's, and without it auto is BlazeFace (check-config says so), not an error."""
    from maskd.detectors import DetectorError, make_detector

    d = cfg.detector
    named = (options or {}).get("detector.model", "detector.model")
    if d.model is not None and d.kind != "auto" and (
            problem := model_file_problem(d.model, named)) is not None:
        raise DetectorError(problem)
    if d.model is not None and (problem := empty_model_problem(d.model, named)) is not None:
        raise DetectorError(problem)  # auto's too: YuNet's, and `run` would stop on it
    try:
        return make_detector(still_detector(d) if still else d)
    except OSError as err:
        raise DetectorError(_unusable(named, err)) from None


def _unusable(key: str, err: OSError) -> str:
    """A model path the system refuses to look up (a name too long for the file system): the
    key (or option) and a bounded excerpt, not a bare '[Errno 36] File name too long: <the
    whole name>'."""
    name = f"{excerpt(str(err.filename))}: " if err.filename is not None else ""
    return f"{key}: {name}{err.strerror or err}"


def build(cfg: Config, exit_at_end: bool = False, max_frames: int | None = None,
          options: Mapping[str, str] | None = None) -> Service:
    """Open every part the config names; models first so a bad path fails before a camera.

    Raises ConfigError / ModelError / DetectorError / SourceError / PreviewUnavailable with a
    message naming the problem (a model file by the option that gave it, in ``options``, else
    by its key); whatever was opened before the failure is closed again.
    """
    names = tuple(c.camera for c in cfg.cameras_resolved())
    ledger = OpenViolations(cfg.state_dir, names, outbox=bool(cfg.mqtt.url)) if cfg.keeps_state else None
    cards = CardWatch(cfg.written())
    if not cfg.multi_camera:
        control = _control(cfg)
        classifier = build_classifier(cfg, options=options)
        detector = build_detector(cfg, options=options)
        store = SnapshotStore.from_config(cfg.snapshots)
        try:
            return _end_removed(Service([_camera_loop(
                cfg, detector, classifier, control, lambda: build_sinks(cfg, control),
                _systemd_notifier(cfg.camera), exit_at_end, max_frames, store, ledger=ledger,
                cards=cards)]),
                ledger)
        except BaseException:
            if store is not None:
                store.close()
            raise
    cams = cfg.cameras_resolved()
    shared_classifier: MaskClassifier = _Serialized(build_classifier(cfg, options=options))  # type: ignore[assignment]
    shared_detector: FaceDetector = _Serialized(build_detector(cfg, options=options))  # type: ignore[assignment]
    controls = {c.camera: _control(c) for c in cams}
    shared: list[EventSink] = []
    mqtt = None
    if cfg.jsonl.path:
        shared.append(_Shared(JsonlSink(cfg.jsonl.path, cfg.jsonl.max_mb), len(cams)))
    if cfg.mqtt.url:
        from maskd.classifier import model_path
        from maskd.mqtt import MqttSink

        mqtt = MqttSink.for_cameras(cfg, controls, model_path(cfg.classifier.model).name)
    notifier = _systemd_notifier()
    watchdogs = (notifier.for_cameras([c.camera for c in cams]) if notifier is not None
                 else [None] * len(cams))
    store = SnapshotStore.from_config(cfg.snapshots, users=len(cams))  # one folder, files per camera
    loops: list[CameraLoop] = []
    pages: dict = {}  # status pages by preview.http address (maskd.statuspage)
    try:
        keys = [key for key, _ in cfg.previews()]
        source_keys = [key for key, _ in cfg.sources()]
        for c, watchdog, key, source_key in zip(cams, watchdogs, keys, source_keys, strict=True):
            def sinks(c: Config = c) -> list[EventSink]:
                return shared + ([mqtt.for_camera(c.camera)] if mqtt is not None else [])

            loops.append(_camera_loop(c, shared_detector, shared_classifier, controls[c.camera], sinks,
                                      watchdog, exit_at_end, max_frames, store, pages, mqtt,
                                      ledger, key, source_key, cards, several=True))
    except BaseException:
        for loop in loops:
            loop.source.close()
            for obs in loop.observers:
                obs.close()
        for sink in shared + ([mqtt] if mqtt is not None else []):
            sink.close()
        if store is not None:
            store.close()
        raise
    return _end_removed(Service(loops), ledger)


def _control(cfg: Config) -> RunControl:
    """A camera's switch, on at every start, and its schedule as the wall clock says now: the
    MQTT sink tells Home Assistant both as it connects, before the loop's first look at the
    clock (it said detection ON at every start outside the windows, then OFF)."""
    windows = [w.window() for w in cfg.schedule]
    return RunControl(scheduled=not windows or schedule.allows(windows, time.time()))


def _end_removed(service: Service, ledger: OpenViolations | None) -> Service:
    """The first camera's loop also ends what a killed run left open on cameras removed from
    the config (or renamed) since: no loop of theirs would, and their violations stayed open
    in JSON lines and in open_violations.json for good. Once every part is open, so a start
    that fails (another maskd holds the outbox) says and ends nothing. Which entries are this
    process's: ``OpenViolations.removed_ends``."""
    first = service.loops[0]
    names = {loop.cfg.camera for loop in service.loops}
    ends = ledger.removed_ends(names) if ledger is not None else []
    ended = ledger.ended_elsewhere() if ledger is not None else set()
    first.also_end(ends + _outbox_only(first.sinks, ends, lambda camera: camera not in names,
                                       ended))
    if ledger is not None:
        ledger.forget_ended()  # the outbox ended them in MQTT now
    return service


def _outbox_only(sinks: list[EventSink], ends: list[ViolationEvent],
                 which: Callable[[str], bool], ended: set[str] | None = None
                 ) -> list[ViolationEvent]:
    """After an update from a version before open_violations.json, what it left open at a kill
    is known to the MQTT outbox alone, which ends it there: the `restart` ends of those of the
    cameras ``which`` picks, for every other sink, unless ``ends`` (the ledger's) has them or a
    run without MQTT ended them already (``ended``: ``OpenViolations.ended_elsewhere``)."""
    noted = {e.event_id for e in ends} | (ended or set())
    return [e for sink in sinks for e in sink.left_open()
            if which(e.camera) and e.event_id not in noted]


def _camera_loop(cfg: Config, detector: FaceDetector, classifier: MaskClassifier,
                 control: RunControl, sinks: Callable[[], list[EventSink]],
                 notifier: FrameObserver | None, exit_at_end: bool, max_frames: int | None,
                 snapshots: SnapshotStore | None = None, pages: dict | None = None,
                 mqtt: EventSink | None = None, ledger: OpenViolations | None = None,
                 preview_key: str = "preview", source_key: str = "source",
                 cards: CardWatch | None = None, several: bool = False) -> CameraLoop:
    """One camera's loop around shared models; its source, sinks and views opened here, and its
    snapshot taker (a sink for the events and an observer for their frames) on ``snapshots``.
    ``several`` (the ``cameras:`` layout): its sinks, but for its status page (a page may be
    this camera's alone), are the other cameras' too.
    A source that cannot be opened is said with its key (``source_key``): with several cameras
    'no such file' alone did not say whose."""
    try:
        source = open_source(cfg.source, camera=cfg.camera)
    except SourceError as err:
        raise type(err)(f"{source_key}: {err}") from None
    opened: list = [source]
    try:
        own = sinks()
        opened += own
        observers = build_observers(cfg, float(getattr(source, "fps", cfg.source.fps)),
                                    notifier, preview_key)
        if snapshots is not None:
            taker = snapshots.taker(cfg.camera, cfg.snapshots.what)
            own.append(taker)
            observers.append(taker)
        view = None
        if cfg.preview.http:  # the status page: one server per address, shared by its cameras
            from maskd.statuspage import attach

            view = attach({} if pages is None else pages, cfg, detector, classifier, own, mqtt)
            own.append(view)
            observers.append(view)
        if ledger is not None:  # before its record is read: another process may run it
            ledger.claim(cfg.camera)
    except BaseException:
        for part in reversed(opened):
            part.close()
        raise
    pipeline = Pipeline(cfg, detector, classifier, live=source.is_live)
    ends = ledger.restart_ends({cfg.camera}) if ledger is not None else []
    ends += _outbox_only(own, ends, lambda camera: camera == cfg.camera,
                         ledger.ended_elsewhere() if ledger is not None else None)
    shared = [part for part in own if part is not view] if several else []
    return CameraLoop(cfg, source, pipeline, own, observers, control, exit_at_end, max_frames,
                      ledger, ends, cards, shared)
