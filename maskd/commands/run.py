"""`maskd run`: the camera loop until SIGTERM/SIGINT (or the end of a file with --exit-at-end).

``--source demo`` plays the demo clip once and exits, as if with --exit-at-end (``--loop``
replays it until a signal). Exit status: 0 clean stop; 75 (EX_TEMPFAIL) when --exit-at-end (or the demo's end) found a sink that could not
deliver everything within --flush-timeout (the MQTT outbox keeps it for the next start);
78 (EX_CONFIG) for anything wrong at start-up (config, model, detector, source, preview),
reported as one line on stderr so systemd does not restart-loop on it; 75 too when the
network is not up yet for preview.http (a host name that does not resolve within 90 s), or
no Coral answers within 90 s though libedgetpu is installed, or the Coral stopped answering
while running (``maskd.tflite.CoralLost``: open violations end, the outbox keeps the rest), or
the card fails the MQTT outbox's reads at the start (``maskd.outbox.OutboxUnreadable``), so
systemd's Restart=on-failure tries again; 70 if the loop crashed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path

from maskd.clock import boot_id, system_clock
from maskd.clock import not_set as clock_not_set
from maskd.config import (
    EX_CONFIG,
    RUN_OPTIONS,
    Config,
    ConfigError,
    load_config,
    options_given,
    override,
    parse_config,
)
from maskd.journal import error_line, log_to_stderr, stderr_line

log = logging.getLogger("maskd")

# A start after a lost Coral comes at least this long after the start before it. A failing
# power supply resets the Coral again and again; five such exits (75) within five minutes met
# the unit's start limit (StartLimitBurst=5 in StartLimitIntervalSec=300, RestartSec=5) and left
# maskd failed for good, with no detection until someone logged in. A minute apart, that limit
# is never reached by them (tests/test_systemd_unit.py holds the unit to it).
CORAL_RESTART_SPACING_S = 60.0
# In state_dir: this boot, and when the run that used the Coral started; "running" while it
# runs. A run that ends in order removes it, one that lost its Coral leaves it without
# "running", and an abrupt end (an abort inside libedgetpu, as its failed checks do; a kill)
# leaves it as it was: the next start spaces itself from it either way.
CORAL_LOST_FILE = "coral-lost.json"


def _coral_note(cfg: Config) -> Path:
    return Path(cfg.state_dir) / CORAL_LOST_FILE


class CoralRunNote:
    """This run's ``CORAL_LOST_FILE``: written "running" before the Coral is looked for (from
    then on libedgetpu may abort the process), and at the end removed, or written again as
    lost when a loop lost the Coral; an abrupt end leaves it as it was. Only with a state_dir
    (the service's); the next start spaces itself from it (``space_after_coral_loss``)."""

    def __init__(self, cfg: Config, started: float) -> None:
        self.cfg, self.started = cfg, started  # started: seconds since boot
        self.written = self.lost = False

    def begin(self) -> None:
        self.written = self._write(running=True)

    def end(self) -> None:
        if self.lost:
            self._write(running=False)
        elif self.written:
            with contextlib.suppress(OSError):
                _coral_note(self.cfg).unlink(missing_ok=True)

    def _write(self, running: bool) -> bool:
        if not self.cfg.keeps_state:
            return False
        from maskd.files import write_atomically

        path = _coral_note(self.cfg)
        note = {"boot_id": boot_id(), "started": self.started} | (
            {"running": True} if running else {})
        try:
            path.parent.mkdir(parents=True, exist_ok=True)  # before the outbox makes it
            write_atomically(path, json.dumps(note).encode())
        except OSError as err:
            log.warning("cannot write %s: %s; the next start does not wait", path,
                        err.strerror or err)
            return False
        return True


def space_after_coral_loss(cfg: Config, waiting: Callable[[str], None],
                           cancelled: Callable[[], bool]) -> None:
    """A start within CORAL_RESTART_SPACING_S of a run that lost its Coral, or ended abruptly
    while using it (this boot), waits out the rest of it, saying so in systemd's STATUS;
    ``cancelled`` (a stop) ends the wait."""
    if not cfg.keeps_state:
        return
    path = _coral_note(cfg)
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return
    except (OSError, ValueError):  # unreadable or cut: no wait, and gone below
        data = None
    with contextlib.suppress(OSError):
        path.unlink()
    if not isinstance(data, dict) or data.get("boot_id") != boot_id():
        return
    started = data.get("started")
    if not isinstance(started, int | float):
        return
    wait = started + CORAL_RESTART_SPACING_S - system_clock()[1]
    if wait <= 0:
        return
    how = ("ended abruptly while it used the Coral (an abort inside libedgetpu, or a kill: the "
           "journal says which)" if data.get("running") else "lost its Coral")
    log.warning("the run before %s, and it started %.0f s ago: this start waits %.0f s, so that "
                "restarts after a lost Coral come a minute apart and never meet systemd's start "
                "limit", how, CORAL_RESTART_SPACING_S - wait, wait)
    waiting(f"waiting {wait:.0f} s after the lost Coral (restarts a minute apart)")
    _wait_out(wait, cancelled)


def space_failed_start(started: float, why: BaseException, waiting: Callable[[str], None],
                       cancelled: Callable[[], bool]) -> None:
    """A start that failed for the card's state (``maskd.outbox.OutboxUnreadable``, exit 75)
    ends CORAL_RESTART_SPACING_S after it began (``started``: seconds since boot), not at once:
    it failed in under 2 s, so five restarts met systemd's start limit within half a minute and
    left maskd failed for good, as exit 78 did. systemctl status says why (``why``, the error)
    for the minute; ``cancelled`` (a stop) ends the wait."""
    wait = started + CORAL_RESTART_SPACING_S - system_clock()[1]
    if wait <= 0:
        return
    log.warning("this start ends in %.0f s with exit 75, so that systemd's restarts come a "
                "minute apart and go on until the card reads again", wait)
    waiting(f"start failed ({' '.join(str(why).split())}): exits in {wait:.0f} s with 75 "
            "(restarts a minute apart)")
    _wait_out(wait, cancelled)


def _wait_out(wait: float, cancelled: Callable[[], bool]) -> None:
    deadline = time.monotonic() + wait
    while not cancelled() and (left := deadline - time.monotonic()) > 0:
        time.sleep(min(0.2, left))  # a stop is heard within 0.2 s


def run_config(args: argparse.Namespace) -> Config:
    """The config file (or defaults) with the command line on top."""
    cfg = load_config(args.config)
    if cfg.cameras:  # per camera in the file; a flag would reach one camera at most, or none
        for flag, key in (("loop", "source.loop"), ("annotate", "preview.annotate_dir"),
                          ("http", "preview.http"), ("preview", "preview.framebuffer/window")):
            if getattr(args, flag, None):
                raise ConfigError(f"--{flag}: the config has cameras:, each with its own "
                                  f"{key.split('.')[0]}; set {key} per camera there")
        if getattr(args, "camera", None) is not None:
            raise ConfigError(f"--camera {args.camera}: the config has cameras:, each named by "
                              "its key there; use a config without cameras: for one camera")
    cfg = override(cfg, args, RUN_OPTIONS, args.config)
    if args.source is not None:
        if cfg.cameras:
            raise ConfigError(f"--source {args.source}: the config has cameras:, each with its "
                              "own source; give them there, or use a config without cameras:")
        src = {"kind": "demo", "uri": None} if args.source == "demo" else {"kind": "auto", "uri": args.source}
        data = cfg.model_dump(exclude_unset=True)
        data.setdefault("source", {}).update(src)
        cfg = parse_config(data, "command line", None if args.config is None else str(args.config),
                           ("source.kind", "source.uri"))
    if getattr(args, "exit_at_end", False):  # it waited for an end that never came
        looping = [k for k, src in cfg.sources() if src.loop]
        if looping:
            raise ConfigError(f"--exit-at-end: {looping[0]}.loop is true in the config: a looping "
                              "source has no end to stop at; leave out one of them")
    if args.preview:
        from maskd.preview import resolve_preview_flag

        cfg = cfg.model_copy(update={"preview": resolve_preview_flag(cfg.preview)})
    return cfg


def detector_notes(cfg: Config, demo: bool, still: bool = False) -> list[str]:
    """Which face detector runs, said plainly; and when ``auto`` had to fall back to BlazeFace
    because YuNet's file is missing, what that means for masked faces (``still``: for `scan`'s
    photos, which have no events)."""
    from maskd.detectors import find_yunet_model, resolved_kind
    from maskd.detectors.yunet import where_yunet_was_looked_for

    kind = resolved_kind(cfg.detector)
    described = kind
    if kind == "yunet":
        described += f" ({find_yunet_model(cfg.detector.model)})"
    notes = [f"face detector: {described}"]
    if cfg.detector.kind == "auto" and kind == "blazeface":
        missed = (f"YuNet's model file was not found ({where_yunet_was_looked_for(cfg.detector.model)}"
                  "; `maskd models fetch` downloads it), so this is BlazeFace, which often stops "
                  "finding a face once a mask covers nose and mouth")
        notes.append(missed + (": masked faces are often not counted" if still else
                               ": a violation then ends as 'gone' rather than 'masked', and the "
                               "header says '(1 face not detected now)' meanwhile"))
        if demo:
            notes.append("in this demo: expect the masked half to show a box only now and then, "
                         "and the event to end 'gone'; with YuNet it ends 'masked'")
    return notes


def startup_errors() -> tuple[type[BaseException], ...]:
    """The exceptions that mean 'fix the setup', each carrying a message naming the problem."""
    from maskd.classifier import ModelError
    from maskd.detectors import DetectorError
    from maskd.preview import PreviewUnavailable
    from maskd.types import SourceError

    return (ConfigError, ModelError, DetectorError, SourceError, PreviewUnavailable, OSError)


def say(err: BaseException) -> None:
    """A start-up error on stderr, every line of it prefixed (a config gives one per bad key)."""
    for line in str(err).splitlines() or [""]:
        error_line(f"maskd run: {line}")


def start_failed(err: BaseException) -> int:
    """Say why the start failed; 75 for a network or a Coral not there yet, or a card failing
    the outbox's reads (systemd retries), else 78."""
    from maskd.outbox import OutboxUnreadable
    from maskd.preview import ListenNotReady
    from maskd.service import EX_TEMPFAIL
    from maskd.tflite import CoralAbsent

    say(err)
    temporary = ListenNotReady | CoralAbsent | OutboxUnreadable
    return EX_TEMPFAIL if isinstance(err, temporary) else EX_CONFIG


def say_waiting(status: str) -> None:
    """systemctl status shows what the start waits for (nothing without $NOTIFY_SOCKET)."""
    from maskd.env import Environment
    from maskd.notify import Notifier

    notifier = Notifier(Environment.read().notify_socket)
    notifier.send(f"STATUS={status}")
    notifier.close()


def main(args: argparse.Namespace) -> int:
    from maskd.commands.check_config import pictures_open_to_all, unwritable
    from maskd.preview import check_previews

    started = system_clock()[1]
    try:
        cfg = run_config(args)
        check_previews(cfg)  # before the models load; check-config runs the same checks
    except startup_errors() as err:
        say(err)
        return EX_CONFIG
    problems = unwritable(cfg)  # before anything is opened: check-config's rule
    if stop := [line for line, _, later in problems if not later]:
        for line in stop:
            error_line(f"maskd run: {line}")
        return EX_CONFIG
    log_to_stderr(cfg.log_level)
    # the file holds the camera's address unless --source replaced it
    for line in cfg.startup_warnings(args.config if args.source is None else None):
        log.warning("%s", line)
    for line, _, _ in problems:  # only those that may come later are left
        log.warning("%s (recorded once it leads somewhere)", line)
    for line in pictures_open_to_all(cfg):
        log.warning("%s", line)
    if (line := clock_not_set(time.time())) is not None:
        log.warning("%s", line)
    note = CoralRunNote(cfg, started)
    try:
        return _start_and_run(args, cfg, note)
    finally:
        note.end()  # not reached when the process ends abruptly: the note stays


def _start_and_run(args: argparse.Namespace, cfg: Config, note: CoralRunNote) -> int:
    from maskd.outbox import OutboxUnreadable
    from maskd.preview import wait_for_listen_names
    from maskd.service import build, stop_signals
    from maskd.tflite import wait_for_coral

    # The demo is a clip, not a camera: nothing comes after it, so it ends the run unless looped.
    demo = cfg.source.kind == "demo"
    exit_at_end = args.exit_at_end or (demo and not cfg.source.loop)
    # Loading the models takes seconds on a Pi: a stop asked for meanwhile is held, then done
    # the clean way (STOPPING=1, exit 0), not a traceback (SIGINT) or a kill (SIGTERM).
    early: list[signal.Signals] = []
    held = {s: signal.signal(s, lambda n, _f: early.append(signal.Signals(n)))
            for s in stop_signals()}
    try:  # the holding handlers stay until the service's replace them: no moment in between
        # in which a stop kills maskd (SIGTERM) or ends it in a KeyboardInterrupt, sinks open
        try:
            # before the models, camera and MQTT; a stop meanwhile ends the wait
            wait_for_listen_names(cfg, waiting=say_waiting, cancelled=lambda: bool(early))
            if (keys := cfg.edgetpu_keys()) and not early:  # a Coral late at boot: wait, then 75
                space_after_coral_loss(cfg, say_waiting, lambda: bool(early))
                note.begin()
                wait_for_coral(keys, waiting=say_waiting, cancelled=lambda: bool(early),
                               option=args.edgetpu)
            if early:
                logging.getLogger("maskd.service").info("%s received while starting: stopping",
                                                        early[0].name)
                return 0
            service = build(cfg, exit_at_end=exit_at_end, max_frames=args.max_frames,
                            options=options_given(args, RUN_OPTIONS))
        except startup_errors() as err:
            code = start_failed(err)
            if isinstance(err, OutboxUnreadable):
                space_failed_start(note.started, err, say_waiting, lambda: bool(early))
                if early:  # a stop, not the failure, ends it: `systemctl stop` leaves no failed unit
                    logging.getLogger("maskd.service").info(
                        "%s received while waiting after a failed start: stopping", early[0].name)
                    return 0
            return code
        for i, line in enumerate(detector_notes(cfg, demo)):  # after the first: doctor's warnings
            stderr_line(f"maskd run: {line}", 6 if i == 0 else 4)
        restore = service.install_signal_handlers()
        if early:
            logging.getLogger("maskd.service").info("%s received while starting: stopping",
                                                    early[0].name)
            service.stop(early[0].name)
        try:
            code = service.run(flush_timeout=args.flush_timeout)
        finally:
            restore()
        note.lost = any(loop.coral_lost for loop in service.loops)
    finally:
        # The process that ends with this run (`maskd.cli`) only exits from here, which takes
        # tens of ms (TFLite and OpenCV freed, threads joined): a stop signal then (a second
        # Ctrl-C) killed it, -15 or -2 or "Exception ignored ... KeyboardInterrupt", after its
        # clean stop. So there they are ignored (SIG_IGN lasts through Python's own end, a
        # Python handler does not); a caller that goes on gets its handlers back.
        ends = getattr(args, "process_ends", False)
        for sig, handler in held.items():
            signal.signal(sig, signal.SIG_IGN if ends else handler)
    return code
