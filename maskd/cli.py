"""The `maskd` command line: argument parsing only; each sub-command lives in maskd.commands."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib
import sys
from pathlib import Path
from typing import NoReturn

from maskd import __version__, env, modelfiles
from maskd.commands import EX_IOERR, OutputError
from maskd.journal import error_line

# Each command's --help ends with its exit codes and one example (tests/test_cli_help.py).
EPILOGS = {
    "classify": """exit codes:
  0  at least one image was classified
  1  none was (every path unreadable or not an image)
  2  the model or config could not be loaded; or a bad command line (usage on stderr)
  74 the output could not be written (a full disk), named on stderr
  75 the Coral stopped answering part-way: the lines written stay, and stderr says
     up to which image they go; run it again once the Coral answers

example:
  maskd classify --json photos/""",
    "scan": """exit codes:
  0  at least one image or frame was scanned
  1  none was
  2  the config, detector or model could not be loaded; or a bad command line (usage
     on stderr)
  73 scanned, but some --annotate images could not be written, each named on stderr
  74 the output could not be written (a full disk), named on stderr
  75 the Coral stopped answering part-way: the lines and annotations written stay,
     and stderr says up to which image they go; run it again once the Coral answers

example:
  maskd scan --json --annotate out/scan photos/ door.mp4""",
    "run": """exit codes:
  0   clean stop (a signal; the end of a file with --exit-at-end or of the demo, every
      event delivered)
  2   a bad command line (an unknown option, a value out of range): usage on stderr
  70  the loop crashed (systemd restarts it)
  75  --exit-at-end, or the end of the demo (which stops as with --exit-at-end): events
      still in the MQTT outbox after --flush-timeout (the broker down), or event
      lines a sink could not deliver (--jsonl - to a full disk); or the network is not
      up yet (a preview.http host name unresolved for 90 s), or the Coral does not
      answer (none within 90 s at the start, or it stopped answering while running),
      or the state_dir's card fails the MQTT outbox's reads at the start: systemd retries
  78  bad config or start-up error (model, detector, source, preview), one line on
      stderr; also an option's value that its config key refuses (--threads 0, --mqtt
      http://x: 'command line: ...')

example:
  maskd run --source demo --jsonl - --annotate out/demo""",
    "models": """exit codes: those of the action (maskd models fetch --help)

example:
  maskd models fetch""",
    "fetch": """exit codes:
  0   the checked file is in place (downloaded, or there already)
  2   a bad command line (a malformed sha256, a URL that is not http(s):// or file://,
      a --timeout of 0, an unknown option): usage on stderr
  65  the download's sha256 is not the expected one; nothing saved
  69  the URL could not be reached (no network), or its server answered with an HTTP
      error (404 Not Found, 503); detector auto then uses BlazeFace
  73  the folder cannot be written, or something is in the way of the file (a folder
      with its name, a file there already that cannot be read)
  74  the file is in place, but the line saying so could not be written (a full disk)

example:
  maskd models fetch --dest /usr/share/maskd/models""",
    "check-config": """exit codes:
  0   valid ("OK")
  2   a bad command line (an unknown option, a value out of range): usage on stderr
  78  invalid: one line per bad key on stderr; also a preview.framebuffer or
      preview.window this machine cannot show (run it on the device); a /dev/fbN
      missing now (no monitor since boot) is a warning: run detects without it
  74  valid, but the "OK" line could not be written (a full disk, a closed stdout)

example:
  maskd check-config /etc/maskd/config.yaml""",
    "doctor": """exit codes:
  0   every required check passed
  1   a required check failed (named on stderr)
  2   a bad command line (an unknown option, a value out of range): usage on stderr
  74  the table could not be written (a full disk, a closed stdout), named on stderr
  78  the config is invalid

example:
  sudo -u maskd maskd doctor --config /etc/maskd/config.yaml""",
    "mqtt-clear": """exit codes:
  0   done: every retained topic found (and every one maskd's layout names) is empty now
  1   the broker could not be reached, refused the connection, or a topic is still retained
  2   a bad command line (an unknown option, a value out of range): usage on stderr
  74  the output could not be written (a full disk, a closed stdout), named on stderr;
      nothing is cleared when its first line cannot be (a reader gone after it, as
      `| head -1`, changes nothing: the check afterwards decides)
  75  the camera (or the process) is online: stop maskd first, or --force
  78  the config is invalid, or has no mqtt.url (with --if-configured: exit 0)

example:
  maskd mqtt-clear --config /etc/maskd/config.yaml --camera old-door""",
}


def _seconds(text: str) -> float:
    """A wait on the command line: finite, 0 to 3600 s, as every wait in the config."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0.0 <= v <= 3600.0:  # also NaN
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 3600 seconds")
    return v


def _time_out(text: str) -> float:
    """A network time-out: 0 would make every socket non-blocking, so the download failed at
    once as "Operation now in progress" (exit 69, as if there were no network), never "no
    time-out" as 0 often means elsewhere."""
    v = _seconds(text)
    if v == 0:
        raise argparse.ArgumentTypeError("0 is no time-out here: give the seconds to wait "
                                         "(up to 3600)")
    return v


def _text(text: str) -> str:
    """A name, address or file: an empty one would silently mean "the default"."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty")
    return text


def _level(text: str) -> str:
    """A log level in any case; empty (an unset shell variable) is a usage error as for _text."""
    return _text(text).upper()


def _path(text: str) -> Path:
    """A file or folder; Path("") would be ".", so an empty one is refused, not guessed."""
    return Path(_text(text))


def _dest_folder(text: str) -> Path:
    """models fetch's folder: a new name ending in .onnx was made a folder by that name, with
    the file inside it, and detector.model pointed at the folder then failed."""
    path = _path(text)
    if path.suffix.lower() == ".onnx" and not path.is_dir():
        raise argparse.ArgumentTypeError(
            f"{text!r} is a file name; --dest takes the folder to save into (the file is named "
            f"{modelfiles.yunet_name(modelfiles.YUNET_SHA256)} there)")
    return path


def _url(text: str) -> str:
    """A download address: http(s)://HOST/... or file:///path, refused here (exit 2) rather
    than reported later as a network that cannot be reached (exit 69)."""
    if (why := modelfiles.url_problem(_text(text))) is not None:
        raise argparse.ArgumentTypeError(why)
    return text


def _count(text: str) -> int:
    """How many of something: a whole number, at least 1."""
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{v} is less than 1")
    return v


def _doc(name: str) -> dict:
    """add_parser keywords for a command: its epilog, printed as written."""
    return {"epilog": EPILOGS[name], "formatter_class": argparse.RawDescriptionHelpFormatter}


# config.DetectorConfig.kind's values (a test keeps them equal): the parser must not import the
# config module, because `maskd models fetch` runs without the venv's packages (pyyaml).
DETECTOR_KINDS = ("auto", "yunet", "centerface", "blazeface", "ssd")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=_path, help="classifier .tflite (default: the shipped model)")
    p.add_argument("--threads", type=int, default=None, help="TFLite CPU threads")
    p.add_argument("--edgetpu", action="store_true", help="run the classifier on a Coral EdgeTPU")


def _add_detector_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detector", choices=DETECTOR_KINDS, default=None,
                   help="face detector (default: the config's; auto = YuNet when its file is "
                        "found, else BlazeFace)")
    p.add_argument("--detector-model", type=_path, default=None, help="detector model file")


class Parser(argparse.ArgumentParser):
    """argparse's, whose usage and error (exit 2: an option in the unit's ExecStart= that
    `maskd run` does not know) are at err in the journal, as any start that fails."""

    def error(self, message: str) -> NoReturn:
        error_line(f"{self.format_usage().rstrip()}\n{self.prog}: error: {message}")
        self.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="maskd", description="Find people without a face mask in a camera feed; report them.",
        epilog="exit codes: those of the command (maskd COMMAND --help)\n\nexample:\n"
               "  maskd run --source demo --jsonl -",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"maskd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="what to do (maskd COMMAND --help for its options)")

    p = sub.add_parser("classify", help="classify face images as mask / no_mask", **_doc("classify"))
    p.add_argument("paths", nargs="+", type=_path, metavar="PATH", help="image or folder (recursive)")
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--config", type=_path, help="YAML config (classifier section: model, threshold, threads, edgetpu)")

    p = sub.add_parser("scan", help="detect faces and masks in images, folders or videos",
                       **_doc("scan"))
    p.add_argument("paths", nargs="+", type=_path, metavar="PATH",
                   help="image, video or folder (recursive)")
    _add_detector_args(p)
    _add_model_args(p)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--annotate", type=_path, metavar="OUTDIR", help="write annotated images here")
    p.add_argument("--config", type=_path, help="YAML config (detector/classifier sections)")

    p = sub.add_parser("run", help="run the camera loop until SIGTERM/SIGINT", **_doc("run"))
    p.add_argument("--config", type=_path,
                   help="YAML config (default: none, the built-in defaults; the service passes "
                        "/etc/maskd/config.yaml)")
    p.add_argument("--source", type=_text, help="override source: demo (the built-in clip), a camera index, "
                                    "/dev/videoN, rtsp:// or http:// URL, video file or folder")
    p.add_argument("--device-id", type=_text, help="override device_id")
    p.add_argument("--camera", type=_text, help="override camera name")
    _add_detector_args(p)
    _add_model_args(p)
    end = p.add_mutually_exclusive_group()  # a looping source has no end to stop at
    end.add_argument("--loop", action="store_true", help="file sources: loop at the end")
    end.add_argument("--exit-at-end", action="store_true",
                     help="file sources: stop at the end (not with a looping source)")
    p.add_argument("--jsonl", type=_text, help="write events as JSON lines to FILE, or - for stdout")
    p.add_argument("--annotate", type=_path, metavar="OUTDIR", help="write an annotated clip here")
    p.add_argument("--mqtt", type=_text, help="broker URL mqtt://host:port or mqtts://host:port")
    p.add_argument("--state-dir", type=_path, help="state directory (MQTT outbox)")
    p.add_argument("--flush-timeout", type=_seconds, default=30.0,
                   help="with --exit-at-end (and the demo's end): seconds to wait for the outbox to drain "
                        "(default: %(default)g)")
    p.add_argument("--preview", action="store_true", help="show the live view (framebuffer/window)")
    p.add_argument("--http", type=_text, metavar="ADDR:PORT",
                   help="serve the status page (live view, violations, events, health, "
                        "/api/status, /metrics) here, e.g. 127.0.0.1:8080 (preview.http; another "
                        "address than loopback needs preview.http_password_file or _token_file)")
    p.add_argument("--max-frames", type=_count, default=None,
                   help="stop after N frames, counted per camera; with a cameras: map the run "
                        "ends once every camera has reached N or gets no frame (lost, never "
                        "found, its file ended)")
    p.add_argument("--log-level", type=_level, default=None,
                   help="DEBUG, INFO, WARNING, ERROR (any case)")

    p = sub.add_parser("models", help="download model files that cannot come from git (YuNet)",
                       **_doc("models"))
    msub = p.add_subparsers(dest="models_command", required=True, metavar="ACTION",
                            help="fetch: download YuNet")
    p = msub.add_parser("fetch", help="download YuNet, checked against its pinned sha256",
                        **_doc("fetch"))
    p.add_argument("--dest", type=_dest_folder, default=None, metavar="DIR",
                   help="folder to save it in (default: models/ in a checkout, else "
                        "/usr/share/maskd/models; both are where the detector looks)")
    p.add_argument("--yunet-url", type=_url, default=modelfiles.YUNET_URL, metavar="URL",
                   help="download from here instead (http(s):// or file://; default: %(default)s)")
    p.add_argument("--yunet-sha256", type=_text, default=modelfiles.YUNET_SHA256, metavar="HEX",
                   help="expect this sha256 instead of the pinned one (default: %(default)s); "
                        "the file is named after its content, never after the URL")
    p.add_argument("--timeout", type=_time_out, default=60.0, metavar="S",
                   help="network time-out in seconds for each wait (default: %(default)s); "
                        f"the whole download may take {modelfiles.DEADLINE_TIMEOUTS} times it")

    p = sub.add_parser("check-config", help="validate a config file and exit (78 when invalid)",
                       **_doc("check-config"))
    p.add_argument("config", type=_path, help="the YAML config file to check")
    p.add_argument("--was", type=_path, metavar="EXAMPLE",
                   help="the example this config was made from (an update's install.sh gives "
                        "the one the earlier install copied): a note for each key still at that "
                        "example's value where this version's default is another")

    p = sub.add_parser("doctor", help="check camera, models, runtime, broker and state dir",
                       **_doc("doctor"))
    p.add_argument("--config", type=_path, help="YAML config (default: /etc/maskd/config.yaml if present)")
    p.add_argument("--frames", type=_count, default=5,
                   help="frames to time per stage (default: %(default)s)")

    p = sub.add_parser("mqtt-clear", help="remove a camera's retained topics (Home Assistant "
                                          "discovery, state) from the broker", **_doc("mqtt-clear"))
    p.add_argument("--config", type=_path,
                   help="YAML config: broker, credentials, device_id, cameras (default: "
                        "/etc/maskd/config.yaml if present)")
    p.add_argument("--camera", type=_text, metavar="NAME",
                   help="only this camera, which need not be in the config any more (renamed "
                        "or removed); default: every camera in the config and the process status")
    p.add_argument("--force", action="store_true",
                   help="clear even when the camera's status says online (maskd is not really "
                        "running, e.g. it was killed)")
    p.add_argument("--dry-run", action="store_true", help="list what is retained; clear nothing")
    p.add_argument("--if-configured", action="store_true",
                   help="a config without mqtt.url is nothing to clear (exit 0), not an error "
                        "(exit 78); deploy/uninstall.sh uses it")
    p.add_argument("--wait", type=_seconds, default=2.0, metavar="S",
                   help="listen at most this long for retained messages, and at least until "
                        "they stop coming (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # A crash inside native code (OpenCV, TFLite, libedgetpu: a segfault, an abort) kills the
    # process before any Python handler runs, and the journal held only the signal's number;
    # faulthandler first writes every thread's Python stack to stderr, so it says where. Not
    # when already on (pytest, python -X faulthandler): it keeps its own file then.
    if not faulthandler.is_enabled():
        with contextlib.suppress(RuntimeError, ValueError, OSError, AttributeError):  # no stderr
            faulthandler.enable(all_threads=True)
    # before cv2 loads: the service, retrying a camera for months; and the still commands, where
    # YuNet's "[ WARN:0@0.16] ... setPreferableTarget ..." on every call looked like a fault;
    # check-config opens the detector as `run` does, and says only what `run` would say
    if args.command in ("run", "scan", "classify", "check-config"):
        env.quiet_opencv()
    try:
        # inside: a Ctrl-C while cv2, TFLite and pydantic load (seconds on a Pi) was a traceback
        module = importlib.import_module(f"maskd.commands.{args.command.replace('-', '_')}")
        args.process_ends = True  # `run` ignores a late stop signal while the process exits
        return int(module.main(args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        with contextlib.suppress(AttributeError):  # none to close (2>&-)
            sys.stderr.close()
        return 0
    except OutputError as err:  # stdout on a full disk, or closed
        error_line(f"maskd {args.command}: {err}")
        return EX_IOERR


if __name__ == "__main__":
    raise SystemExit(main())
