"""Broken configs: exit 78 and one clear line per bad key, from `maskd check-config` and `maskd run`."""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from maskd.config import (
    EX_CONFIG,
    BoundedLoader,
    Config,
    ConfigError,
    load_config,
    parse_config,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "config.example.yaml"

# (name, YAML text, one list of expected fragments per line of the error message)
BROKEN = [
    ("unknown top-level key", "bogus: 1\n",
     [["unknown key 'bogus'", "allowed: device_id, camera, state_dir"]]),
    ("typo in a section", "source:\n  fsp: 10\n",
     [["unknown key 'source.fsp'", "allowed: kind, uri", "did you mean 'fps'?"]]),
    # the docs' table names keys dotted; written so at the top level it got "did you mean
    # 'source'?", which reads as if the key were wrong
    ("a docs-style dotted key", "source.fps: 5\n",
     [["unknown key 'source.fps'", "write source: {fps: ...}"]]),
    ("wrong type", "source:\n  width: wide\n",
     [["'source.width'", "valid integer", "'wide'"]]),
    ("out of range", "source:\n  fps: 0\n",
     [["'source.fps'", "greater than 0", "got 0"]]),
    ("not one of the choices", "detector:\n  kind: haar\n",
     [["'detector.kind'", "'auto', 'yunet', 'centerface', 'blazeface' or 'ssd'", "'haar'"]]),
    ("bad broker URL", "mqtt:\n  url: http://broker:1883\n",
     [["'mqtt.url'", "must start with mqtt:// or mqtts://"]]),
    ("bad id", "device_id: front door\n",
     [["'device_id'", "pattern", "'front door'"]]),
    ("unknown log level", "log_level: verbose\n",
     [["'log_level'", "'DEBUG', 'INFO', 'WARNING' or 'ERROR'"]]),
    ("threshold above 1", "classifier:\n  threshold: 1.5\n",
     [["'classifier.threshold'", "less than 1"]]),
    ("section that is not a mapping", "tracking: 5\n",
     [["'tracking' must be a section with keys: iou_threshold", "got 5"]]),
    ("two bad keys, two lines", "source:\n  height: 1\npreview:\n  windw: true\n",
     [["'source.height'", "greater than or equal to 16"],
      ["unknown key 'preview.windw'", "did you mean 'window'?"]]),
    ("top level not a mapping", "- a\n- b\n",
     [["top level must be a mapping", "got list"]]),
    ("two YAML documents", "source: {fps: 5}\n---\ncamera: door\n",
     [["not valid YAML at line 2, column 1: expected a single document in the stream, but "
       "found another document"]]),
    ("not YAML", "source: [unclosed\n",
     [["not valid YAML at line 2, column 1", "expected ',' or ']'"]]),
    # An empty path was Path("") == ".", the working directory; an empty jsonl.path: no output.
    ("empty paths", 'state_dir: ""\nsnapshots:\n  dir: " "\njsonl:\n  path: ""\n',
     [["'state_dir'", "is empty"], ["'jsonl.path'", "is empty"],
      ["'snapshots.dir'", "is empty"]]),
    # A trailing slash (or a last "." or ".."): the sink made the file without it and then
    # wrote to the path as written, "Not a directory" for every event; check-config passed it.
    ("a jsonl.path that names a folder", "jsonl: {path: /nonexistent-maskd-test/events/}\n",
     [["'jsonl.path': names a folder", "/var/lib/maskd/events.jsonl"]]),
    ("a jsonl.path ending in a dot", "jsonl: {path: /nonexistent-maskd-test/events/.}\n",
     [["'jsonl.path': names a folder"]]),
    # A `|` block keeps a newline: the file was "not found" (said on two lines) and the
    # address went on into the log and the systemd status, where a newline starts a command.
    ("a camera address with a newline", "source:\n  uri: |\n    rtsp://10.0.0.9/stream\n",
     [["'source.uri': must not contain control characters", "(got 'rtsp://10.0.0.9/stream\\n')"]]),
    # The same in a path: the events went to "events.jsonl\n" beside the file tailed.
    ("a path with a newline", "jsonl:\n  path: |\n    /nonexistent-maskd-test/events.jsonl\n",
     [["'jsonl.path': must not contain control characters", "write the path on the key's"]]),
    ("empty annotate_dir", 'preview:\n  annotate_dir: ""\n',
     [["'preview.annotate_dir'", "is empty: name a file or folder, or leave the key out"]]),
    # YAML 1.1 booleans were taken as 1 and 0: `cooldown_s: off` was no cooldown at all.
    ("booleans where numbers belong",
     "detector: {score_threshold: off}\nclassifier: {threads: yes}\n"
     "tracking: {cooldown_s: off, min_votes: on}\n",
     [["'detector.score_threshold': expected a number, got false", "YAML reads on/off"],
      ["'classifier.threads': expected a number, got true"],
      ["'tracking.min_votes': expected a number, got true"],
      ["'tracking.cooldown_s': expected a number, got false"]]),
    # A string key given a YAML bool or number: refused, saying how to fix it.
    ("a bool or a number where text belongs", "camera: yes\ndevice_id: 0042\n",
     [["'device_id'", "valid string; put it in quotes", "got 34"],
      ["'camera'", "valid string; put it in quotes", "got True"]]),
    # A path the same (was pydantic's "not a valid path for <class 'pathlib.Path'>"); a time
    # said "put it in quotes", and "8" quoted is no time either.
    ("a number where a path or a time belongs", "snapshots: {dir: 2024}\nschedule: [{start: 8}]\n",
     [["'schedule.0.start': expected a time HH:MM, such as 08:00 (got 8)"],
      ["'snapshots.dir': expected a file or folder name; put it in quotes (got 2024)"]]),
    # A newline or an escape sequence in a key split the one line or reached the terminal.
    ("a key with control characters", '"a\\nb\\e[31m": 1\n',
     [["unknown key 'a\\nb\\x1b[31m'"]]),
    ("a key and its old name", "tracking: {min_votes: 3, min_frames: 50}\n",
     [["'tracking.min_frames' is the old name of 'tracking.min_votes' and both are set"]]),
    ("password file and variable both",
     "mqtt: {url: 'mqtt://127.0.0.1:1883', username: u, password_file: pw, password_env: PW}\n",
     [["'mqtt': set mqtt.password_file or mqtt.password_env, not both"]]),
    # The line quotes what was written, and it goes to the journal: no password in it.
    ("a camera address without its section", "source: rtsp://admin:S3cret@cam/live\n",
     [["'source' must be a section", "(got 'rtsp://admin:***@cam/live')"]]),
    ("credentials in the broker URL", "mqtt: {url: 'mqtt://maskd:S3cret@broker:1883'}\n",
     [["'mqtt.url': must contain no credentials", "(got 'mqtt://maskd:***@broker:1883')"]]),
]


def maskd(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maskd", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, **(env or {})})


def check_lines(stderr: str, path: Path, expected: list[list[str]]) -> None:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == len(expected), stderr
    assert "Traceback" not in stderr
    for line, fragments in zip(lines, expected, strict=True):
        if path.name not in line:  # `maskd run` prefixes only the first line
            assert lines.index(line) > 0, line
        for frag in fragments:
            assert frag in line, (frag, line)


@pytest.mark.parametrize(("name", "text", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_check_config_rejects(tmp_path, name, text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    r = maskd("check-config", str(cfg))
    assert r.returncode == EX_CONFIG, (name, r.stdout, r.stderr)
    assert r.stdout == ""
    check_lines(r.stderr, cfg, expected)


@pytest.mark.parametrize(("name", "text", "expected"), BROKEN, ids=[b[0] for b in BROKEN])
def test_run_rejects_before_starting(tmp_path, name, text, expected):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    r = maskd("run", "--config", str(cfg), "--source", "demo", "--max-frames", "1")
    assert r.returncode == EX_CONFIG, (name, r.stdout, r.stderr)
    assert r.stderr.startswith("maskd run: ")
    check_lines(r.stderr.removeprefix("maskd run: "), cfg, expected)


def test_missing_file_is_exit_78(tmp_path):
    r = maskd("check-config", str(tmp_path / "nope.yaml"))
    assert r.returncode == EX_CONFIG
    assert r.stderr.strip() == f"{tmp_path / 'nope.yaml'}: cannot read config: No such file or directory"


def test_valid_config_ok_with_file_warnings(tmp_path):
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(f"classifier:\n  model: {tmp_path / 'missing.tflite'}\n"
                   "mqtt:\n  url: mqtt://localhost:1883\n")
    r = maskd("check-config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"OK: {cfg}"
    assert (f"{cfg}: warning: classifier.model: {tmp_path / 'missing.tflite'}: model file not "
            "found\n") in r.stderr


def dotted_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += dotted_keys(ann, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def flatten(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += flatten(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return out


def test_example_config_documents_every_key():
    assert maskd("check-config", str(EXAMPLE)).returncode == 0
    cfg = load_config(EXAMPLE)
    data = yaml.safe_load(EXAMPLE.read_text())
    model_keys, example_keys = dotted_keys(Config), flatten(data)
    assert sorted(model_keys) == sorted(example_keys), (
        f"missing from the example: {sorted(set(model_keys) - set(example_keys))}")
    # every key carries a comment (on its line, or the section/key is explained right above it)
    lines = EXAMPLE.read_text().splitlines()
    for key in example_keys:
        leaf = key.rsplit(".", 1)[-1]
        hits = [i for i, ln in enumerate(lines) if ln.strip().startswith(f"{leaf}:")]
        assert any("#" in lines[i] or lines[i - 1].lstrip().startswith("#") or
                   "#" in lines[i - 1] for i in hits), f"{key} has no comment"
    # the example is the defaults: installing it changes nothing until the user edits it
    assert cfg == Config()


def test_scan_detects_stills_at_the_still_input_size():
    from maskd.config import DetectorConfig, still_detector

    cfg = DetectorConfig(input_width=320, input_height=240, still_input_width=800,
                         still_input_height=600, score_threshold=0.7)
    still = still_detector(cfg)
    assert (still.input_width, still.input_height) == (800, 600)
    assert still.score_threshold == 0.7 and (cfg.input_width, cfg.input_height) == (320, 240)


def test_device_id_defaults_to_the_host_name():
    """Two Pis left at the defaults must not share an MQTT client id or topics."""
    from maskd.config import host_device_id

    assert parse_config({}).device_id == host_device_id() == parse_config({"device_id": None}).device_id
    assert host_device_id("door-pi.example.org") == "door-pi"
    assert host_device_id("my pi!") == "my-pi" and host_device_id("...") == "maskd"
    assert len(host_device_id("a" * 80)) == 64
    assert parse_config({"device_id": "x"}).device_id == "x"


def test_cli_detector_choices_are_the_configs():
    """`--detector` offers exactly the kinds the config accepts (one rule, kept in two places
    because the parser must not import the config module)."""
    import typing

    from maskd.cli import DETECTOR_KINDS
    from maskd.config import DetectorConfig

    assert DETECTOR_KINDS == typing.get_args(DetectorConfig.model_fields["kind"].annotation)


def test_detector_flag_of_another_kind_leaves_the_files_model_behind(tmp_path):
    """`--detector blazeface` over a file with a YuNet model handed BlazeFace the .onnx."""
    import argparse

    from maskd.config import MODEL_OPTIONS, load_config, override

    path = tmp_path / "c.yaml"
    path.write_text(f"detector: {{kind: yunet, model: {tmp_path / 'y.onnx'}}}\n")
    cfg = load_config(path)

    def flags(**kw):
        return argparse.Namespace(**{k: kw.get(k) for k in MODEL_OPTIONS})

    assert override(cfg, flags(detector="blazeface"), MODEL_OPTIONS).detector.model is None
    # auto's model is YuNet's: `--detector auto` over kind yunet dropped it (BlazeFace ran)
    assert override(cfg, flags(detector="auto"), MODEL_OPTIONS).detector.model == tmp_path / "y.onnx"
    kept = override(cfg, flags(detector="yunet"), MODEL_OPTIONS).detector.model
    assert str(kept) == str(tmp_path / "y.onnx")
    given = override(cfg, flags(detector="blazeface", detector_model=tmp_path / "b.tflite"),
                     MODEL_OPTIONS).detector.model
    assert str(given) == str(tmp_path / "b.tflite")


def test_a_named_pipe_without_a_writer_is_refused_and_process_substitution_works(tmp_path):
    """check-config on a FIFO nobody writes to waited for ever; `check-config <(...)`, a pipe
    with a writer, keeps working."""
    fifo = tmp_path / "c.yaml"
    os.mkfifo(fifo)
    r = maskd("check-config", str(fifo))
    assert r.returncode == EX_CONFIG
    assert r.stderr.strip() == (f"{fifo}: cannot read config: a named pipe with nothing to read "
                                "(no writer)")
    r = subprocess.run(["bash", "-c", f'"{sys.executable}" -m maskd check-config '
                        "<(sleep 0.5; printf 'device_id: door\\n')"], capture_output=True,
                       text=True, timeout=60, cwd=REPO)
    assert r.returncode == 0 and r.stdout.startswith("OK: /dev/fd/"), r.stderr
    r = maskd("check-config", "/dev/zero")
    assert r.returncode == EX_CONFIG
    assert r.stderr.strip() == "/dev/zero: cannot read config: a device, not a regular file"


def test_booleans_still_fill_the_boolean_keys():
    cfg = parse_config(yaml.load("source: {loop: yes}\nmotion: {enabled: off}\n"
                                 "tracking: {predict_motion: on}\n", Loader=BoundedLoader))
    assert (cfg.source.loop, cfg.motion.enabled, cfg.tracking.predict_motion) == (True, False, True)


def test_a_yaml_boolean_in_a_zone_is_refused_in_one_line():
    """[[[off, off], [on, off], [on, on], [off, on]]] was the whole frame (0 and 1): as ignore,
    run raised no event at all, and check-config said OK."""
    for where, text in (("zones.ignore", "zones: {ignore: [[[off, off], [on, off], [on, on], "
                                         "[off, on]]]}"),
                        ("cameras.a.zones.include", "cameras: {a: {source: {kind: demo}, zones: "
                                                    "{include: [[[true, 0.1], [0.5, 0.1], "
                                                    "[0.5, 0.5]]]}}}")):
        with pytest.raises(ConfigError) as err:
            parse_config(yaml.load(text, Loader=BoundedLoader))
        lines = str(err.value).splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"<config>: '{where}': polygon 0: expected a number, got "), lines


def test_source_uri_empty_is_refused_and_a_tilde_is_the_home_folder(monkeypatch, tmp_path):
    """uri: "" opened the default camera without a word (--source "" is a usage error); uri:
    ~/pics was looked for as ./~/pics (every path key expands ~)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for text in ('source: {kind: opencv, uri: ""}', 'source: {uri: "  "}'):
        with pytest.raises(ConfigError, match=r"'source.uri': is empty: name the camera"):
            parse_config(yaml.load(text, Loader=BoundedLoader))
    cfg = parse_config(yaml.load("source: {kind: images, uri: ~/pics}", Loader=BoundedLoader))
    assert cfg.source.uri == str(tmp_path / "pics")


def test_a_tilde_is_the_home_folder_wherever_run_starts(tmp_path):
    """A ``~`` was kept literally: files went to ./~/ of the working directory, and the outbox
    kept 'for the next start' was lost when that start had another one."""
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    cfg = tmp_path / "tilde.yaml"
    cfg.write_text("state_dir: ~/state\njsonl: {path: ~/out/events.jsonl}\n"
                   "snapshots: {dir: ~/snaps}\npreview: {annotate_dir: ~/clips}\n"
                   "detector: {model: ~/m.onnx}\nclassifier: {model: ~/c.tflite}\n")
    loaded = load_config(cfg)
    expanded = [loaded.state_dir, Path(loaded.jsonl.path or ""), loaded.snapshots.dir,
                loaded.preview.annotate_dir, loaded.detector.model, loaded.classifier.model]
    home_now = Path.home()
    assert all(p is not None and p.is_relative_to(home_now) for p in expanded), expanded
    cfg.write_text("jsonl: {path: ~/out/events.jsonl}\n")
    r = subprocess.run([sys.executable, "-m", "maskd", "run", "--config", str(cfg), "--source",
                        "demo", "--max-frames", "1"], capture_output=True, text=True,
                       timeout=120, cwd=work, env={**os.environ, "HOME": str(home),
                                                   "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert (home / "out" / "events.jsonl").is_file()
    assert not (work / "~").exists()


@contextlib.contextmanager
def open_folder():
    """A temporary folder every user of this machine can enter (0755 up to /), where a file's
    own mode decides whether the secret-file warnings apply."""
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        folder.chmod(0o755)
        if not all(p.stat().st_mode & stat.S_IXOTH for p in folder.resolve().parents):
            pytest.skip(f"{folder.parent} is closed to other users")
        yield folder


def test_a_secret_file_every_user_can_read_is_a_warning():
    """An MQTT password or page token written with umask 022 is 0644: check-config and the
    journal say so (folders above it that others cannot enter keep it private: no warning)."""
    with open_folder() as folder:
        token = folder / "http.token"
        token.write_text("0123456789abcdef\n")
        cfg = folder / "c.yaml"
        cfg.write_text(f"preview: {{http_token_file: {token}}}\n")
        warning = f"'preview.http_token_file': {token} is readable by every user of this machine"
        for mode, warned in ((0o644, True), (0o640, False)):
            token.chmod(mode)
            r = maskd("check-config", str(cfg))
            assert r.returncode == 0 and (warning in r.stderr) == warned, (mode, r.stderr)
        token.chmod(0o644)
        r = maskd("run", "--config", str(cfg), "--source", "demo", "--max-frames", "1")
        assert r.returncode == 0, r.stderr[-2000:]
        assert f"WARNING maskd: {warning} (mode 0644); chmod o-rwx it" in r.stderr
        folder.chmod(0o700)
        assert warning not in maskd("check-config", str(cfg)).stderr


def test_a_config_every_user_can_read_is_a_warning_while_it_holds_a_camera_password():
    """An IP camera's password has no file of its own: it is in source.uri, and a config
    written with umask 022 (0644) showed it to every user without a word, while the MQTT
    password in a file beside it was a warning."""
    with open_folder() as folder:
        cfg = folder / "c.yaml"
        cams = "cameras: {door: {source: {kind: opencv, uri: %s}}}\n"
        warning = (f"{cfg} holds a camera password ('cameras.door.source.uri') and is readable by "
                   "every user of this machine (mode 0644); chmod o-rwx it")
        for uri, mode, warned in (("'rtsp://admin:CamPw9@10.0.0.9/stream'", 0o644, True),
                                  ("'http://10.0.0.9/video.cgi?user=admin&pwd=CamPw9'", 0o644, True),
                                  ("'rtsp://admin:CamPw9@10.0.0.9/stream'", 0o640, False),
                                  ("'rtsp://10.0.0.9/stream'", 0o644, False)):
            cfg.write_text(cams % uri)
            cfg.chmod(mode)
            r = maskd("check-config", str(cfg))
            assert r.returncode == 0 and (warning in r.stderr) == warned, (uri, mode, r.stderr)
            assert "CamPw9" not in r.stderr
            # the list run logs and maskd doctor shows (its secret file row)
            assert (warning in load_config(cfg).open_secrets(cfg)) == warned


def test_a_stock_host_name_as_device_id_is_warned_of_when_mqtt_is_on(monkeypatch):
    """device_id defaults to the host name; Raspberry Pi OS names every Pi `raspberrypi`, so two
    Pis left so share an MQTT client id and knock each other off the broker. Was: nothing said
    it before the connections began to drop."""
    import socket

    mqtt = {"url": "mqtt://127.0.0.1:1883"}
    monkeypatch.setattr(socket, "gethostname", lambda: "raspberrypi.lan")
    (line,) = parse_config({"mqtt": mqtt}).shared_device_id()
    assert line.startswith("'device_id': 'raspberrypi' (this machine's host name) is Raspberry "
                           "Pi OS's default host name: a second device with it takes")
    assert "set device_id (or the host name)" in line
    (line,) = parse_config({"device_id": "Debian", "mqtt": mqtt}).shared_device_id()
    assert "'Debian' (set in the config) is Debian's default host name" in line
    assert parse_config({}).shared_device_id() == []  # no MQTT: the id names nothing shared
    assert parse_config({"device_id": "entrance-1", "mqtt": mqtt}).shared_device_id() == []
    monkeypatch.setattr(socket, "gethostname", lambda: "door-pi")
    assert parse_config({"mqtt": mqtt}).shared_device_id() == []


def test_a_password_typed_under_a_key_of_its_own_is_not_repeated_in_an_error(tmp_path):
    """`pass: ...` beside password_file and password_env: the section's error quoted the whole
    section, the password with it ('got {'pass': 'S3cret', ...}')."""
    (tmp_path / "pw").write_text("x\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"mqtt: {{url: 'mqtt://127.0.0.1:1', username: u, password_file: "
                   f"{tmp_path / 'pw'}, password_env: MYPW, pass: S3cretXYZ, token: T0kenXYZ}}\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    said = str(err.value)
    assert "S3cretXYZ" not in said and "T0kenXYZ" not in said, said
    assert "password_file" in said  # what the error is about is still said


# The example of 2026-11-23 as far as these keys go: it wrote every key with its default then.
EXAMPLE_2026_11_23 = """\
device_id: maskd
classifier:
  threshold: 0.7
  margin: 0.15
tracking:
  window: 5
  start_threshold: 0.7
  min_frames: 3
mqtt:
  url: null
"""


def test_an_update_notes_the_keys_a_config_keeps_at_an_older_examples_default(tmp_path):
    """install.sh copies the example, every key written with its default, once: after an update
    that retuned defaults (the 2026-12-01 model: classifier.threshold 0.7 -> 0.6, tracking.window
    5 -> 9, start_threshold 0.7 -> 0.6) a config made from the older example kept the old values
    and nothing said so. check-config --was names each key still at that example's value."""
    was = tmp_path / "was.yaml"
    was.write_text(EXAMPLE_2026_11_23)
    cfg = tmp_path / "config.yaml"
    # made from it: device_id and the url edited, the threshold chosen (0.8), the rest as it was
    cfg.write_text(EXAMPLE_2026_11_23.replace("device_id: maskd", "device_id: door-1")
                   .replace("threshold: 0.7", "threshold: 0.8", 1)
                   .replace("url: null", "url: mqtt://broker.example"))
    r = maskd("check-config", "--was", str(was), str(cfg))
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if "note:" in ln]
    assert [n.split("'")[1] for n in notes] == ["tracking.window", "tracking.start_threshold"], r.stderr
    assert "5 is the default of the example this config was made from; this version's default " \
           "is 9. Delete the line" in notes[0]
    # the same example as this version's (the next update): nothing to say; without --was neither
    r = maskd("check-config", "--was", str(REPO / "deploy" / "config.example.yaml"), str(cfg))
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr
    assert "note:" not in maskd("check-config", str(cfg)).stderr
    # a config read from a pipe (`check-config <(...)`, docs/config.md) is read once: the notes
    # were lost, the second read finding the pipe empty
    piped = subprocess.run([sys.executable, "-m", "maskd", "check-config", "--was", str(was),
                            "/dev/stdin"], input=cfg.read_text(), capture_output=True, text=True,
                           timeout=120, cwd=REPO)
    assert piped.returncode == 0, piped.stderr
    assert [n.split("'")[1] for n in piped.stderr.splitlines() if "note:" in n] == [
        "tracking.window", "tracking.start_threshold"], piped.stderr
