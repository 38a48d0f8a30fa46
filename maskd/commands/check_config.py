"""`maskd check-config FILE`: validate a config the way `maskd run` would, then exit.

Exit 0 and "OK" when valid, else one line per bad key on stderr and exit 78 (EX_CONFIG), the
status systemd's RestartPreventExitStatus= keys on. It loads the config as `run` does, so both
reject the same configs: with MQTT on, that includes the password file or variable and the TLS
files (maskd.config.MqttConfig), read when the config is loaded. It also checks the preview
devices of this machine with the function `run` calls at start (maskd.preview.check_previews):
a path that is no framebuffer, or a window with an OpenCV without GUI support, would stop
`run` here whoever starts it; a /dev/fbN missing now (no monitor since boot) is a warning, as
`run` detects without it. What depends on the user or session (writing the framebuffer, a
desktop session for the window) and the model files are warnings only: the service may run as
another user, with another environment, or on another machine; `maskd doctor` checks them, and
`run` stops with exit 78 when one is missing. A classifier or detector model that is here is
opened as `run` opens it (not one for the Coral): one `run` would refuse is an error in its words. The state dir (with MQTT on) and jsonl.path are
looked at as `run` creates them, without creating anything: what no user could create there is
an error in `run`'s words, a permission a warning. With classifier.edgetpu or detector.edgetpu,
a libedgetpu missing on this machine is an error and no Coral on the USB bus a warning (`run`
waits for it, then exits 75 for systemd to retry: maskd.tflite.coral_problems). A file or
folder a source reads is looked at as `run` opens it (maskd.sources.check_source_path): one
missing is a warning, as a model file is. Cameras, the Coral and the broker are not opened.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import sys
from collections.abc import Callable
from pathlib import Path

from maskd.commands import names_as_bytes_on_stdout, print_line
from maskd.config import (
    EX_CONFIG,
    SERVICE_DIR,
    Config,
    ConfigError,
    extra_model_problem,
    model_file_problem,
    parse_config,
    read_yaml,
    shown_path,
)
from maskd.files import (
    cannot_create,
    captured_stderr_fd,
    dangling_link,
    depends_on_user,
    existing_place,
    files_mode,
    ownerless_fs,
)
from maskd.journal import error_line, warning_line
from maskd.jsonl import cannot_write_lines
from maskd.ledger import foreign_ledger
from maskd.outbox import (
    foreign_outbox,
    left_by_another_user,
    mounted_for_another,
    newer_outbox,
    no_outbox_there,
)
from maskd.preview import PreviewUnavailable, check_previews, listen_warning, privileged_port
from maskd.tflite import coral_problems, not_compiled_for_edgetpu


def file_warnings(cfg: Config) -> list[str]:
    """One line per named model file that this user cannot read, and one for a file the
    detector reads that is not there (YuNet found nowhere for ``kind: yunet``, a wheel not
    installed, the .pbtxt beside a .pb): `run` looks for them the same way and stops; ``auto``
    falls back to BlazeFace, `run` says so."""
    out = []
    detector_model_said = False
    from maskd.classifier import classifier_file_problem

    for key, path in cfg.model_files().items():
        problem = (classifier_file_problem if key == "classifier.model" else model_file_problem)(
            path, key)
        if problem is not None:  # `run` says it so, and stops
            detector_model_said |= key == "detector.model"
            # auto takes YuNet's file whenever it is one (run then stops on it if unreadable)
            fallback = " (auto falls back to BlazeFace)" if (
                key == "detector.model" and cfg.detector.kind == "auto"
                and not os.path.isfile(path)) else ""
            out.append(f"warning: {problem}{fallback}")
    if cfg.classifier.model is None:
        from maskd.classifier import default_model_problem

        if (problem := default_model_problem()) is not None:
            out.append(f"warning: {problem}")
    for extra in cfg.classifier.still_extra_models or []:  # `scan`'s, not `run`'s
        if (problem := extra_model_problem(extra)) is not None:
            out.append(f"warning: {problem}")
    if not detector_model_said:
        from maskd.detectors import missing_detector_file

        if (problem := missing_detector_file(cfg.detector)) is not None:
            out.append(f"warning: 'detector.kind': {cfg.detector.kind}: {problem}")
    return out


def model_problems(cfg: Config) -> list[str]:
    """What `run` stops on (78) in a model that is here and readable, found by the functions
    `run` opens them with (maskd.service.build_classifier, build_detector): a classifier file
    that is no TFLite model (an .h5, an .onnx renamed), one without its sidecar, a 3-class or
    wrong-size model; a detector file of another kind (the classifier's .tflite as BlazeFace, a
    CenterFace .onnx as YuNet), truncated or empty. check-config said OK of each, and
    `check-config && systemctl restart maskd` started a service that stopped at once. A file
    missing here is the warning of ``file_warnings`` instead; a model for the Coral runs only
    there, so `maskd doctor` checks it."""
    from maskd.classifier import ModelError, classifier_file_problem, default_model_problem
    from maskd.detectors import DetectorError, missing_detector_file
    from maskd.service import build_classifier, build_detector

    c, d = cfg.classifier, cfg.detector
    opens: list[Callable[[], object]] = []
    if not c.edgetpu and (classifier_file_problem(c.model) if c.model is not None
                          else default_model_problem()) is None:
        opens.append(lambda: build_classifier(cfg))
    if not d.edgetpu and (d.model is None or d.kind == "auto"  # auto: BlazeFace without it
                          or model_file_problem(d.model) is None) and missing_detector_file(d) is None:
        opens.append(lambda: build_detector(cfg))
    problems: list[str] = []
    for open_model in opens:
        native: list[str] = []
        try:
            with captured_stderr_fd() as native:  # TFLite's 'Created ... XNNPACK' line: not news
                open_model()
        except (ModelError, DetectorError) as err:
            problems.append(str(err).strip())  # OpenCV ends its words with a newline
        finally:
            kept = "".join(line for line in "".join(native).splitlines(keepends=True)
                           if "XNNPACK delegate" not in line)
            if kept:
                with contextlib.suppress(OSError, AttributeError, ValueError):  # no stderr
                    sys.stderr.write(kept)
    return problems


def source_problems(cfg: Config) -> tuple[list[str], list[str]]:
    """What `run` would stop on (78) in the files and folders the sources name, in its words
    (maskd.sources.check_source_path), found without opening anything: (errors, warnings). One
    missing is a warning, as a model file is (it may be there on the device, or in the service's
    working directory), and so is one this user may not read, a clip or every image of a folder
    (the service's user may); one that no machine can read frames from (a single image, a name too
    long to look up) is an error. Cameras and streams are not opened: one may come later."""
    from maskd.sources import ClosedSource, MissingSource, check_source_path
    from maskd.types import SourceError

    errors, warnings = [], []
    for key, src in cfg.sources():
        try:
            check_source_path(src)
        except ClosedSource as err:
            warnings.append(f"warning: {key}: {err} (as user {_user()}; the service may run as "
                            "another)")
        except MissingSource as err:
            warnings.append(f"warning: {key}: {err}")
        except SourceError as err:
            errors.append(f"{key}: {err}")
    return errors, warnings


def edgetpu_model_warnings(cfg: Config) -> list[str]:
    """One line per model put on the Coral that edgetpu_compiler did not make (it runs on the
    CPU; `run` warns the same: maskd.tflite.not_compiled_for_edgetpu)."""
    from maskd.classifier import model_path

    models = {"classifier.edgetpu": model_path(cfg.classifier.model),
              "detector.edgetpu": cfg.detector.model}
    return [f"{key}: {line}" for key in cfg.edgetpu_keys()
            if (path := models[key]) is not None
            and (line := not_compiled_for_edgetpu(Path(path))) is not None]


def relative_warning(cfg: Config) -> list[str]:
    """One line naming the relative path keys, when the working directory they are read from
    is not the service's (the unit's WorkingDirectory=): a file found here may be missing there."""
    keys = [k for k, p in cfg.paths().items() if not p.is_absolute()]
    try:
        here = Path.cwd()
    except OSError:  # the working directory was removed: nothing relative is found there
        here = Path(".")
    if not keys or here == SERVICE_DIR:
        return []
    return [f"warning: relative paths ({', '.join(keys)}) are read from the working directory, "
            f"here {here}; the service reads them from {SERVICE_DIR}"]


def _user() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return f"uid {os.geteuid()}"


def write_targets(cfg: Config,
                  state_dir: bool = True) -> list[tuple[Path, bool, Callable[[Path, str], str]]]:
    """Every file and folder `run` writes into with this config (path, whether a folder, the
    words its failure gets): the MQTT outbox's state_dir (or, MQTT off, the open violations'
    one when kept), jsonl.path, snapshots.dir, each camera's preview.annotate_dir. A folder
    the service's sandbox leaves read-only (ProtectSystem=strict outside ReadWritePaths=) stops
    the start (exit 78), as docs/service.md says, rather than being told at the first snapshot
    or clip as a card the kernel made read-only. ``state_dir`` False leaves the state_dir out
    (doctor's own row says more of it)."""
    targets: list[tuple[Path, bool, Callable[[Path, str], str]]] = []
    if state_dir and cfg.mqtt.url:
        targets.append((cfg.state_dir, True, no_outbox_there))
    elif state_dir and cfg.keeps_state:
        targets.append((cfg.state_dir, True, lambda p, why: (
            f"state_dir {shown_path(p)}: cannot keep the open violations there: {why}")))
    if cfg.jsonl.path and cfg.jsonl.path != "-":
        targets.append((Path(cfg.jsonl.path), False, cannot_write_lines))
    if cfg.snapshots.dir is not None:
        targets.append((cfg.snapshots.dir, True, lambda p, why: (
            f"snapshots.dir {shown_path(p)}: cannot save snapshots there: {why}")))
    for named, preview in cfg.previews():  # the key the file has: a first camera's may be top-level
        if preview.annotate_dir is not None:
            targets.append((preview.annotate_dir, True, lambda p, why, named=named: (
                f"{named}.annotate_dir {shown_path(p)}: cannot record clips there: {why}")))
    return targets


def unwritable(cfg: Config, state_dir: bool = True) -> list[tuple[str, OSError, bool]]:
    """`run`'s line for each place of ``write_targets`` nothing can be created in now, with the
    OS's reason (found without creating anything) and whether it may come later: a snapshot or
    clip folder that is a link to nowhere (a stick not mounted yet) is retried by its writer,
    which records once the link leads somewhere; stopping the start on it (exit 78, no restart)
    would leave the door without alarms for want of a place to keep pictures."""
    out = []
    for path, directory, say in write_targets(cfg, state_dir):
        if (err := cannot_create(path, directory)) is not None:
            # a link to a stick not mounted yet leads somewhere later; /proc never does
            later = dangling_link(path) is not None and path in (
                cfg.snapshots.dir, *(c.preview.annotate_dir for c in cfg.cameras_resolved()))
            why = depends_on_user(err) and (left_by_another_user(path) or (  # `sudo maskd run`'s
                (mount := mounted_for_another(path)) and f"{err.strerror}: {mount}"))  # a stick's
            out.append((say(path, why or err.strerror or str(err)), err, later))
    return out


def pictures_open_to_all(cfg: Config) -> list[str]:
    """A line for each picture folder (snapshots.dir, annotate_dir) on a stick whose mount lets
    every user of this machine read there: FAT, exFAT and NTFS keep no modes, the mount's
    umask= gives them (an fstab line without it: 0755), not the 0640 and 0750 maskd asks for.
    Its files' mode is judged where it is told (``files_mode``): one mounted fmask=077 shows its
    folders 0755 but lets no one else read a picture, and was warned of; a folder others may
    not go in (no x for them: dmask=023) opens none of its files to them, whatever their mode."""
    folders = [("snapshots.dir", cfg.snapshots.dir), *(
        (f"{named}.annotate_dir", preview.annotate_dir) for named, preview in cfg.previews())]
    out = []
    for key, folder in folders:
        if folder is None or (fs := ownerless_fs(folder)) is None:
            continue
        try:
            mode = os.stat(existing_place(folder) or folder).st_mode & 0o777
        except OSError:
            continue
        if not mode & 0o001:
            continue  # others may not go in (dmask=023: 0754), so open no picture there
        if (files := files_mode(folder)) is not None and not files & 0o004:
            continue  # others may go in, but read no picture there
        out.append(f"{key} {shown_path(folder)}: every user of this machine may read the "
                   f"pictures there: its file system ({fs}) keeps no modes of its own, its "
                   f"mount gives mode {mode:04o}; mount it with umask=027 (docs/config.md, a "
                   "USB stick)")
    return out


def write_problems(cfg: Config, state_dir: bool = True) -> tuple[list[str], list[str]]:
    """What `run` creates at start and would stop on (``write_targets``), in its words, found
    without creating anything: (errors, warnings). A permission is a warning: the service may
    run as another user."""
    errors, warnings = [], []
    for line, err, later in unwritable(cfg, state_dir):
        if later:
            warnings.append(f"{line} (recorded once it leads somewhere)")
        elif depends_on_user(err):
            warnings.append(f"{line} (as user {_user()}; the service may run as another)")
        else:
            errors.append(line)
    if state_dir and cfg.mqtt.url and (newer := newer_outbox(cfg.state_dir)):
        errors.append(newer)  # a downgrade: install.sh stops before it restarts maskd
    for foreign in (foreign_outbox(cfg.state_dir) if state_dir and cfg.mqtt.url else None,
                    foreign_ledger(cfg.state_dir, [c.camera for c in cfg.cameras_resolved()])
                    if state_dir and cfg.keeps_state else None):
        if foreign:
            warnings.append(f"{foreign} (as user {_user()}; the service may run as another)")
    return errors, warnings + pictures_open_to_all(cfg)


def _leaves(data: object, pre: str = "") -> dict[str, object]:
    """A YAML mapping's keys as dotted paths to their values (lists are values); the cameras:
    map is left out (no example writes one)."""
    out: dict[str, object] = {}
    if isinstance(data, dict):
        for key, value in data.items():
            if not isinstance(key, str) or f"{pre}{key}" == "cameras":
                continue
            if isinstance(value, dict):
                out.update(_leaves(value, f"{pre}{key}."))
            else:
                out[f"{pre}{key}"] = value
    return out


def _default(key: str) -> object:
    """This version's default of a dotted key (an old name too: tracking.min_frames), or
    ``_leaves`` itself where there is none to compare with (a required or computed one)."""
    from pydantic import AliasChoices, BaseModel

    model: type[BaseModel] = Config
    *sections, last = key.split(".")
    for part in sections:
        sub = model.model_fields.get(part)
        if sub is None or not (isinstance(sub.annotation, type)
                               and issubclass(sub.annotation, BaseModel)):
            return _leaves
        model = sub.annotation
    for name, field in model.model_fields.items():
        alias = field.validation_alias
        if name == last or (isinstance(alias, AliasChoices) and last in alias.choices):
            if field.default_factory is not None or field.is_required():
                return _leaves  # device_id: the host name
            return str(field.default) if isinstance(field.default, Path) else field.default
    return _leaves


def kept_defaults(mine: object, was: Path) -> list[str]:
    """Keys the config holds at the value the example it was made from (``was``: the one an
    earlier install copied to /etc/maskd/config.example.yaml, before an update replaces it)
    gave them, where this version's default is another. That example wrote every key with its
    default, so a default retuned since (classifier.threshold 0.7 -> 0.6, tracking.window
    5 -> 9 with the model of 2026-12-01) never reached a config made from it, and nothing said
    so: one note each, at the update that changes it (install.sh), never again after.
    ``mine``: the config's YAML as read for its check (a pipe is read once)."""
    try:
        old = _leaves(read_yaml(was))
    except ConfigError:
        return []  # an old example that does not read says nothing about the config
    out = []
    for key, value in _leaves(mine).items():
        new = _default(key)
        if (key in old and type(old[key]) is type(value) and old[key] == value
                and new is not _leaves and new != value):
            out.append(f"note: '{key}': {value!r} is the default of the example this config "
                       f"was made from; this version's default is {new!r}. Delete the line "
                       "to take the new default, or keep it if you chose it")
    return out


def main(args: argparse.Namespace) -> int:
    try:
        data = read_yaml(Path(args.config))  # once: a pipe (`check-config <(...)`) reads once
        cfg = parse_config(data, str(args.config))
    except ConfigError as err:
        error_line(str(err))
        return EX_CONFIG
    try:
        lacking = check_previews(cfg, strict=False)
        # run waits for a late network (or listens anyway): a warning, not a refusal; a
        # name that does not exist raises, as run refuses it after its wait
        lacking += [w for key, p in cfg.previews() if p.http and (w := listen_warning(p.http, key))]
        lacking += [f"{key}.http: {p.http}: {w}" for key, p in cfg.previews()
                    if p.http and (w := privileged_port(p.http))]
    except PreviewUnavailable as err:
        error_line(f"{args.config}: {err}")
        return EX_CONFIG
    errors, not_for_me = write_problems(cfg)
    bad_sources, missing_sources = source_problems(cfg)
    errors += bad_sources + model_problems(cfg)
    missing_lib, no_coral = coral_problems(cfg.edgetpu_keys())  # run: 78, and a wait
    errors += [missing_lib] if missing_lib else []
    lacking += [no_coral] if no_coral else []
    for line in errors:
        error_line(f"{args.config}: {line}")
    if errors:
        return EX_CONFIG
    for line in (relative_warning(cfg) + file_warnings(cfg) + missing_sources
                 + [f"warning: {w}" for w in cfg.startup_warnings(args.config)
                    + lacking + not_for_me + edgetpu_model_warnings(cfg)]):
        warning_line(f"{args.config}: {line}")
    if getattr(args, "was", None) is not None:
        for line in kept_defaults(data, args.was):
            warning_line(f"{args.config}: {line}")
    # as every command's records: a full disk or closed stdout is one line and 74, a file
    # name not in UTF-8 its own bytes (was a traceback, or OK lost with exit 0)
    names_as_bytes_on_stdout()
    print_line(f"OK: {args.config}")
    return 0
