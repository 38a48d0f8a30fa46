"""Hostile and wrong configs (issue 15, items 6-8): `maskd check-config` answers every one with
exit 0, or exit 78 and one line per problem naming the key (or the YAML line); never a traceback,
never a hang, and never an OK for a config that `maskd run` would reject or die on.

A seeded fuzzer runs in-process through the check-config entry point (fast); a handful of the
worst cases also go through the real CLI.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from maskd.commands import check_config
from maskd.config import EX_CONFIG, MAX_CONFIG_BYTES, BrokerUrl, Config, Section, load_config
from maskd.mqtt import Topics
from maskd.preview import parse_listen

REPO = Path(__file__).resolve().parents[1]
SEED = 1515
RANDOM_CASES = 240
LIMIT_S = 5.0

# What a user (or an attacker) might put in any key. Raw YAML forms go in as text.
PALETTE = [
    None, True, False, 0, 1, -1, 7, 30, 640, 65535, 65536, 10**30, -(10**30), 0.001, 0.5, 1.5,
    1e308, float("inf"), float("-inf"), float("nan"), "", " ", "0", "1.5", "auto", "yunet",
    "DEBUG", "a" * 3000, "x\0y", "\ud800", "\u00fcmlaut", "#", "+", "a/b", "/", "$SYS/x",
    "home+assistant", "mqtt://localhost:1883", "mqtt://h:0", "mqtt://h:99999", "mqtt://u:p@h",
    "mqtt://[::1", "mqtts://h:8883/", "mqtt://bad host", "127.0.0.1:8080", "[::1]:80", ":0",
    "a:b:c", "host", "/tmp/model.onnx", "../etc/passwd", "-", "/" + "d" * 5000, [], [1, "a"], {},
    {"k": 1}, {"fps": 5},
]
RAW = [
    "2024-01-01", "0x1F", "1_000", "017", "yes", "off", "~", ".NaN", "-.inf", "!!binary aGk=",
    "!!set {a, b}", "!!float 1e400", "!!str 5", "[1, [2, [3]]]", "{a: {b: {c: 1}}}", "'#'",
]

# User names mosquitto answers no CONNECT for (so `run` retried for ever, delivering nothing),
# and odd ones it takes: test_user_names_the_config_refuses_are_those_mosquitto_refuses.
BAD_USERS = ["a\tb", "a\x7fb", "\x85x", "x\ufdd0", "x\U0010ffff"]
GOOD_USERS = ["", " ", "\u00fcser", "\u202efoo", "user@example.com"]

# Values `run` accepts, so check-config must too.
GOOD = {
    "mqtt.username": GOOD_USERS,
    "mqtt.url": ["mqtt://localhost", "mqtts://broker.example.com:8883", "mqtt://192.168.1.5:1883",
                 "mqtt://[::1]:1883", "mqtt://my_broker/"],
    "mqtt.discovery_prefix": ["homeassistant", "ha/discovery", "home assistant"],
    "preview.http": ["8080", ":8080", "[::1]:8080", "localhost:8080"],
    "source.reopen_min_s": [0.01, 5, 3600],
    "source.frozen_after_s": [0.5, 3600, None],
    "mqtt.password_env": ["MQTT_PW", "_X1"],
    "camera": ["front-door_1"],
}
# Values `run` rejects at start-up or dies on later (the list and its neighbours).
BAD = {
    "mqtt.url": ["mqtt://h:0", "mqtt://h:65536", "mqtt://h:99999", "mqtt://h:port",
                 "http://h:1883", "mqtt://u:p@h", "mqtt://u@h", "mqtt://[::1", "mqtt://bad host",
                 "mqtt://h/path", "mqtt://h?x=1", "mqtt://", "tcp://h", "mqtt://h\n",
                 "mqtt://192.168.1.300"],  # never resolves: was retried for ever
    "mqtt.discovery_prefix": ["#", "home+assistant", "ha/#", "", "/ha", "ha/", "a//b", "$SYS",
                              "ha\x01", "x" * 300, "ha\uffff", "ha\ufdd0"],
    "mqtt.outbox_reserve_kb": [10**16, (1 << 20) + 1],  # 10**16: an OverflowError in fallocate
    "preview.http": ["host", "1.2.3.4:99999", "a:b:c", "::1:80", "bad host:80", "127.0.0.1:-1",
                     "127.0.0.1:\uff18\uff10", ":", "", "192.168.1.300:8080", "0.0.0.:8080",
                     "0.0.0.0:8080"],  # beyond loopback without preview.http_password_file
    "source.reopen_min_s": [float("inf"), float("-inf"), float("nan"), 0, -1, 1e300, "soon"],
    "source.reopen_max_s": [float("inf"), 1e308],
    "source.frozen_after_s": [0, -1, float("inf"), float("nan"), "never"],
    "mqtt.reconnect_max_s": [float("inf"), 1e10],
    "tracking.end_after_s": [float("inf"), float("nan")],
    "classifier.margin": [float("nan")],
    "detector.upscale": [float("inf")],
    "camera": ["a\0b", "front door", ""],
    "classifier.model": ["x\0y"],
    "jsonl.path": ["\ud800"],
    "mqtt.password_env": ["A=B", "", "1X"],
    "mqtt.username": ["u\0", *BAD_USERS],
}


def _bomb(width: int, depth: int) -> str:
    lines = [f"a0: &a0 [{', '.join(['lol'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, depth)]
    return "\n".join(lines) + f"\nsource: *a{depth - 1}\n"


# (name, file content, the key or text the one-line answer must name)
STRUCTURAL: list[tuple[str, bytes, str]] = [
    ("billion laughs", _bomb(9, 10).encode(), "more than 5000 values"),
    ("billion laughs via merge keys",
     ("b0: &b0 {x: 1}\n" + "".join(f"b{i}: &b{i} [*b{i - 1}, *b{i - 1}, *b{i - 1}, *b{i - 1}]\n"
                                   for i in range(1, 12)) + "source: {<<: *b11}\n").encode(),
     "more than 5000 values"),
    ("deep flow nesting", ("source: " + "[" * 5000 + "]" * 5000 + "\n").encode(), "nested deeper"),
    ("deep block nesting",
     "".join(f"{'  ' * i}k{i}:\n" for i in range(40)).encode() + b"  " * 40 + b"x\n",
     "nested deeper"),
    ("recursive alias", b"source: &s\n  fps: *s\n", "refers to the mapping or list it is in"),
    ("duplicate top-level key", b"camera: a\ndevice_id: d\ncamera: b\n", "duplicate key 'camera'"),
    ("duplicate key in a section", b"source:\n  fps: 5\n  fps: 6\n", "duplicate key 'fps'"),
    ("duplicate section", b"mqtt: {}\nsource: {}\nmqtt: {}\n", "duplicate key 'mqtt'"),
    ("not UTF-8", b"camera: caf\xe9\n", "not UTF-8 text: byte 0xe9 at line 1"),
    ("UTF-16", "camera: x\n".encode("utf-16"), "not UTF-8 text"),
    ("NUL byte", b"camera: a\x00b\n", "not valid YAML"),
    ("too big", b"# " + b"x" * MAX_CONFIG_BYTES + b"\n", "larger than 64 KiB"),
    ("python tag", b"camera: !!python/object/apply:os.system ['true']\n", "not valid YAML at line 1"),
    ("undefined alias", b"camera: *nope\n", "undefined alias"),
    ("two documents", b"camera: a\n---\ncamera: b\n", "not valid YAML"),
    ("tab indentation", b"source:\n\tfps: 5\n", "not valid YAML at line 2"),
    ("integer with 5000 digits", b"source:\n  width: " + b"9" * 5000 + b"\n", "not a usable config"),
    ("top level a list", b"- camera\n", "top level must be a mapping"),
    ("unknown key", b"source:\n  fsp: 5\n", "unknown key 'source.fsp'"),
]
# Odd but valid files: defaults.
HARMLESS: list[tuple[str, bytes]] = [
    ("empty", b""), ("only comments", b"# nothing\n"), ("null", b"null\n"),
    ("byte order mark", "\ufeffcamera: front\n".encode()),
    ("anchor and alias", b"source: {fps: &n 5, width: 640}\ntracking: {window: *n}\n"),
]


def leaf_keys(model: type = Config, prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        sub = isinstance(ann, type) and issubclass(ann, Section)
        out += leaf_keys(ann, f"{prefix}{name}.") if sub else [f"{prefix}{name}"]
    return out


def config_text(assign: dict[str, object]) -> str:
    """YAML setting each dotted key; values that are RawYaml go in verbatim."""
    data: dict = {}
    raw: dict[str, str] = {}
    for key, value in assign.items():
        *sections, leaf = key.split(".")
        target = data
        for s in sections:
            target = target.setdefault(s, {})
        if isinstance(value, RawYaml):
            raw[f"RAW{len(raw)}X"] = value.text
            value = f"RAW{len(raw) - 1}X"
        target[leaf] = value
    text = yaml.safe_dump(data, allow_unicode=False, sort_keys=False, width=10**6)
    for marker, value in raw.items():
        text = text.replace(marker, value)
    return text


class RawYaml:
    def __init__(self, text: str) -> None:
        self.text = text


def random_cases(n: int) -> list[tuple[str, bytes, list[str]]]:
    rng = random.Random(SEED)
    keys = leaf_keys()
    sections = sorted({k.split(".")[0] for k in keys if "." in k})
    cases = []
    for i in range(n):
        if rng.random() < 0.1:
            chosen = [rng.choice(sections)]
        else:
            chosen = rng.sample(keys, rng.randint(1, 3))
        assign = {k: _random_value(rng, k) for k in chosen}
        cases.append((f"random {i}: {', '.join(chosen)}", config_text(assign).encode(), chosen))
    return cases


def _random_value(rng: random.Random, key: str) -> object:
    """Mostly hostile; a quarter of the time the key's default (in YAML), which must pass."""
    roll = rng.random()
    if roll < 0.25:
        value = Config().model_dump(mode="json")
        for part in key.split("."):
            value = value[part]
        return value
    return RawYaml(rng.choice(RAW)) if roll < 0.45 else rng.choice(PALETTE)


_paho = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)  # never connected


def run_accepts(cfg: Config) -> None:
    """What `maskd run` derives from the config before it needs a camera, model or broker."""
    mq = cfg.mqtt
    if mq.url:
        BrokerUrl.parse(mq.url)
    topics = Topics.build(mq, cfg.device_id, cfg.camera)
    for topic in vars(topics).values():
        _paho.publish(topic, b"x")  # ValueError for a topic paho's thread would die on
    _paho.subscribe(topics.ha_status)
    if cfg.preview.http:
        parse_listen(cfg.preview.http)
    lock = threading.Lock()
    for wait in (cfg.source.reopen_min_s, cfg.source.reopen_max_s, mq.reconnect_min_s,
                 mq.reconnect_max_s):
        assert lock.acquire(timeout=wait)  # OverflowError for a wait threading cannot take
        lock.release()
    for path in (cfg.state_dir, cfg.detector.model, cfg.classifier.model, cfg.jsonl.path):
        if path is not None:
            os.fsencode(path)


def check(tmp_path: Path, capsys, content: bytes) -> tuple[Path, int, str, list[str]]:
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    t0 = time.monotonic()
    rc = check_config.main(argparse.Namespace(config=path))
    took = time.monotonic() - t0
    out, err = capsys.readouterr()
    assert took < LIMIT_S, f"check-config took {took:.1f} s"
    assert "Traceback" not in err and rc in (0, EX_CONFIG), (rc, err[-2000:])
    lines = err.splitlines()
    if rc == 0:
        assert out == f"OK: {path}\n"
        run_accepts(load_config(path))
    else:
        assert out == "" and lines
        assert all(line.startswith(f"{path}: ") and len(line) < 1000 for line in lines), lines
    return path, rc, err, lines


def test_fuzzed_configs_answer_fast_and_name_the_key(tmp_path, capsys):
    cases = random_cases(RANDOM_CASES)
    cases += [(f"good {k}={v!r}", config_text({k: v}).encode(), [k])
              for k, vs in GOOD.items() for v in vs]
    cases += [(f"bad {k}={v!r}"[:80], config_text({k: v}).encode(), [k])
              for k, vs in BAD.items() for v in vs]
    assert len(cases) >= 300
    answers = {0: 0, EX_CONFIG: 0}
    for name, content, keys in cases:
        _, rc, err, lines = check(tmp_path, capsys, content)
        answers[rc] += 1
        if name.startswith("good"):
            assert rc == 0, (name, err)
        if name.startswith("bad"):
            assert rc == EX_CONFIG, name
        if rc == EX_CONFIG:
            for line in lines:
                assert any(k in line for k in keys), (name, line)
    assert min(answers.values()) > 50, answers  # the fuzzer exercises both answers


@pytest.mark.parametrize(("name", "content", "expected"), STRUCTURAL, ids=[s[0] for s in STRUCTURAL])
def test_unreadable_configs_are_one_line_and_exit_78(tmp_path, capsys, name, content, expected):
    _, rc, _, lines = check(tmp_path, capsys, content)
    assert rc == EX_CONFIG and len(lines) == 1 and expected in lines[0], lines


@pytest.mark.parametrize(("name", "content"), HARMLESS, ids=[h[0] for h in HARMLESS])
def test_odd_but_valid_files_are_accepted(tmp_path, capsys, name, content):
    assert check(tmp_path, capsys, content)[1] == 0


def test_error_lines_show_a_bounded_excerpt(tmp_path, capsys):
    huge = "x" * 30_000
    _, rc, _, lines = check(tmp_path, capsys, f"camera: {huge}\nsource: [{huge}]\n".encode())
    assert rc == EX_CONFIG and len(lines) == 2
    for text, key in ((f"schedule: [{{start: '{huge}'}}]", "'schedule.0.start': "),
                      (f"preview: {{framebuffer: '/dev/{huge}'}}", "preview.framebuffer: "),
                      (f"state_dir: /tmp/{huge}\nmqtt: {{url: 'mqtt://127.0.0.1:1'}}",
                       "state_dir '/tmp/"),
                      (f"jsonl: {{path: /tmp/{huge}}}", "jsonl.path '/tmp/")):
        # was: the whole value, once or twice, on the one line (a 'state dir' line, not the key)
        _, rc, _, lines = check(tmp_path, capsys, f"{text}\n".encode())
        assert rc == EX_CONFIG and len(lines) == 1 and key in lines[0], lines
        assert len(lines[0]) < 300, lines
    many = "".join(f"k{i}: 1\n" for i in range(200)).encode()
    _, rc, _, lines = check(tmp_path, capsys, many)
    assert rc == EX_CONFIG and len(lines) == 21 and lines[-1].endswith("and 180 more errors")


# The worst cases through the real command line, as systemd's ExecStartPre would run them.
CLI = [
    ("billion laughs", _bomb(9, 10).encode(), "more than 5000 values"),
    ("not UTF-8", b"camera: caf\xe9\n", "not UTF-8 text"),
    ("deep nesting", ("source: " + "[" * 5000 + "]" * 5000 + "\n").encode(), "nested deeper"),
    ("discovery prefix #", b"mqtt:\n  url: mqtt://localhost\n  discovery_prefix: '#'\n",
     "'mqtt.discovery_prefix': must not contain '#'"),
    ("reopen .inf", b"source:\n  reopen_min_s: .inf\n", "'source.reopen_min_s'"),
    ("duplicate key", b"camera: a\ncamera: b\n", "duplicate key 'camera'"),
]


@pytest.mark.parametrize(("name", "content", "expected"), CLI, ids=[c[0] for c in CLI])
def test_real_cli_check_config(tmp_path, name, content, expected):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "maskd", "check-config", str(path)],
                       capture_output=True, text=True, timeout=60, cwd=REPO)
    assert time.monotonic() - t0 < 30
    assert r.returncode == EX_CONFIG and r.stdout == "", r.stderr
    assert r.stderr.count("\n") == 1 and expected in r.stderr, r.stderr


@pytest.mark.parametrize(("name", "content", "expected"), CLI[:2], ids=[c[0] for c in CLI[:2]])
def test_real_cli_run_refuses_before_starting(tmp_path, name, content, expected):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    r = subprocess.run([sys.executable, "-m", "maskd", "run", "--config", str(path), "--source",
                        "demo", "--max-frames", "1"], capture_output=True, text=True, timeout=60,
                       cwd=REPO)
    assert r.returncode == EX_CONFIG and r.stderr.startswith("maskd run: "), r.stderr
    assert r.stderr.count("\n") == 1 and expected in r.stderr


def test_keys_under_cameras_and_schedule_say_what_is_allowed(tmp_path, capsys):
    """A section inside the `cameras:` map or the `schedule:` list names its keys as any other
    (was: an empty list, and no 'did you mean')."""
    _, rc, _, lines = check(tmp_path, capsys, b"cameras:\n  a: {source: {fsp: 3}}\n  b: null\n"
                                              b"schedule: [5]\n")
    assert rc == EX_CONFIG
    assert any("unknown key 'cameras.a.source.fsp' (allowed: kind, uri," in ln
               and "did you mean 'fps'?" in ln for ln in lines), lines
    assert any("'cameras.b' must be a section with keys: source, tracking," in ln
               for ln in lines), lines
    assert any("'schedule.0' must be a section with keys: days, start, end" in ln
               for ln in lines), lines


def test_user_names_the_config_refuses_are_those_mosquitto_refuses(tmp_path):
    """mqtt.username with a tab (or another control character, or a Unicode noncharacter)
    passed check-config, and mosquitto answered no CONNECT: `run` retried for ever, asking 'is
    that port a TLS listener?', and no event was delivered. The real broker decides here."""
    from mqtt_broker import Broker

    from maskd.config import ConfigError, parse_config

    def refused_by_config(user: str) -> bool:
        try:
            parse_config({"mqtt": {"username": user}})
        except ConfigError as err:
            assert "'mqtt.username': must not contain" in str(err), err
            return True
        return False

    def refused_by_broker(port: int, user: str) -> bool:
        """No CONNACK within 2 s. mosquitto hangs up on a name it refuses: that ends the wait,
        and the loop is run here, not in paho's thread, so no reconnect delay is sat out."""
        answered, over = threading.Event(), threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.username_pw_set(user, "pw")
        client.on_connect = lambda *_: (answered.set(), over.set())
        client.on_disconnect = lambda *_: over.set()
        client.connect("127.0.0.1", port)
        end = time.monotonic() + 2.0
        while not over.is_set() and time.monotonic() < end:
            client.loop(0.1)
        client.disconnect()
        return not answered.is_set()

    with Broker(tmp_path / "broker") as broker:
        for user in BAD_USERS + GOOD_USERS:
            assert refused_by_config(user) == refused_by_broker(broker.port, user) == (
                user in BAD_USERS), repr(user)
