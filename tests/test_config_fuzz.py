"""The shipped configs, mutated: `maskd check-config` and `maskd run` give the same answer.

deploy/config.example.yaml and the config examples of docs/config.md are changed one place at a
time (a wrong type, null, empty, huge, negative, NaN/inf, odd Unicode, an unknown or duplicate
key at every level, an alias, bytes that are not UTF-8, ...). check-config must answer each
with exit 0 or 78, never a traceback, each error line bounded and naming the key; `run` must
refuse (78) what check-config refuses and start with what it accepts, unless check-config warned
of what `run` stops on (a missing model or source file: they may be there on the device). A
seeded sample goes through the real `run`, which is stopped once it has started.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import re
import signal
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from mqtt_broker import free_port

from maskd.commands import check_config
from maskd.config import EX_CONFIG

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}  # run from another folder
SEED = 4747
IN_PROCESS_CASES = 400
RUN_CASES = 24
RUN_FOCUS = r"source|model|path|dir|url|user|file"
STARTED = b"maskd run: face detector:"  # printed once every part is open


class Raw:
    """A YAML scalar written as it is (``.nan``, a tag, an anchor)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"Raw({self.text!r})"


def values(tmp: Path) -> list[object]:
    """What a user (or a typo) might put anywhere: each found a bug somewhere once."""
    return [
        None, "", " ", [], {}, 10**30, -(10**30), -1, 0, 1e308, Raw(".nan"), Raw(".inf"),
        Raw("-.inf"), Raw("-0.0"), True, Raw("off"), [1, 2], {"x": 1}, [None], "x" * 300,
        "\u00fc\u00f1\u00ed\u2603", "\u202efoo", "\uff46\uff55\uff4c\uff4c", "\u00b2", "a\tb",
        "\x7f", "\U0001F600", "~", "-", "/", Raw("0x10"), Raw("017"), Raw("2024-01-01"),
        Raw("12:30"), Raw("!!binary aGk="), Raw("!!float 1e400"), Raw("&a 5"),
        str(tmp / "missing.mp4"), str(tmp / "photo.jpg"), str(tmp / "folder"),
        f"{tmp}/{'y' * 300}.tflite",
    ]


def bases(tmp: Path) -> list[tuple[str, dict]]:
    """The shipped configs as parsed, writing under ``tmp``."""
    texts = [("config.example.yaml", (REPO / "deploy/config.example.yaml").read_text())]
    texts += [(f"docs/config.md#{i}", block) for i, block in enumerate(
        re.findall(r"```yaml\n(.*?)```", (REPO / "docs/config.md").read_text(), re.S))]
    out = []
    for name, text in texts:
        data = yaml.safe_load(text.replace("/var/lib/maskd", str(tmp / "state")))
        assert isinstance(data, dict), name
        data.setdefault("state_dir", str(tmp / "state"))
        out.append((name, data))
    return out


def paths(node: object, prefix: tuple = ()) -> list[tuple]:
    """Every place in the tree: sections, lists and values."""
    out = [prefix] if prefix else []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(
        node, list) else []
    for k, v in items:
        out += paths(v, (*prefix, k))
    return out


def at(node: object, path: tuple) -> object:
    for part in path:
        node = node[part]  # type: ignore[index]
    return node


def dump(data: object) -> str:
    raw: dict[str, str] = {}

    def mark(v: object) -> object:
        if isinstance(v, Raw):
            raw[f"RAWMARK{len(raw)}X"] = v.text
            return f"RAWMARK{len(raw) - 1}X"
        if isinstance(v, dict):
            return {k: mark(x) for k, x in v.items()}
        return [mark(x) for x in v] if isinstance(v, list) else v

    text = yaml.safe_dump(mark(data), sort_keys=False, allow_unicode=True, width=10**6)
    for marker, value in raw.items():
        text = text.replace(marker, value)
    return text


def mutations(tmp: Path, rng: random.Random, n: int, focus: str = "",
              ) -> list[tuple[str, bytes, str | None]]:
    """``n`` seeded (name, file content, the dotted key an error must name, or None), changing
    keys that match ``focus`` (a regular expression)."""
    shipped = bases(tmp)
    palette = values(tmp)
    out: list[tuple[str, bytes, str | None]] = []
    while len(out) < n:
        name, data = rng.choice(shipped)
        data = copy.deepcopy(data)
        where = rng.choice([p for p in paths(data) if re.search(focus, ".".join(map(str, p)))])
        key = ".".join(str(p) for p in where)
        roll = rng.random()
        if roll < 0.6:
            value = copy.deepcopy(rng.choice(palette))
            at(data, where[:-1])[where[-1]] = value  # type: ignore[index]
            out.append((f"{name}: {key} = {value!r}"[:120], dump(data).encode(), key))
        elif roll < 0.75 and isinstance(at(data, where), dict):
            unknown = rng.choice(["bogus", "Kind", "f\u0440s", "1", "null"])
            at(data, where)[unknown] = 1  # type: ignore[index]
            out.append((f"{name}: unknown key {key}.{unknown}", dump(data).encode(), key))
        elif roll < 0.85:
            lines = dump(data).splitlines(keepends=True)
            i = rng.randrange(len(lines))
            out.append((f"{name}: line {i + 1} twice", "".join(lines[:i + 1] + lines[i:]).encode(),
                        None))
        elif roll < 0.92:
            other = rng.choice([p for p in paths(data) if isinstance(at(data, p), dict | list)]
                               or [where])
            if other[:len(where)] != where and where[:len(other)] != other:
                at(data, where[:-1])[where[-1]] = at(data, other)  # type: ignore[index]
            out.append((f"{name}: {key} an alias", dump(data).encode(), key))  # &id001 / *id001
        else:
            text = dump(data).encode()
            pos = rng.randrange(len(text) + 1)
            junk = rng.choice([b"\xff", b"\xe9", b"\x00", b"\t", b"\r", b"\x1b[31m"])
            out.append((f"{name}: {junk!r} at byte {pos}", text[:pos] + junk + text[pos:], None))
    return out


MODEL_KEYS = ("classifier.model", "detector.model")
FILE_KEYS = ["source.uri", "cameras.front.source.uri", "classifier.model", "detector.model",
             "jsonl.path", "state_dir", "snapshots.dir", "preview.annotate_dir"]


def file_cases(tmp: Path) -> list[tuple[str, bytes, str | None]]:
    """Every key naming a file, folder or source, set to each kind of name `run` may not use."""
    names = ["missing.mp4", "photo.jpg", "folder", "y" * 300]
    shipped = dict(bases(tmp))
    out: list[tuple[str, bytes, str | None]] = []
    for key in FILE_KEYS:
        base = "docs/config.md#0" if key.startswith("cameras.") else "config.example.yaml"
        for value in [str(tmp / n) for n in names] + ["\u00b2", "x" * 300]:
            data = copy.deepcopy(shipped[base])
            *where, last = key.split(".")
            at(data, tuple(where))[last] = value  # type: ignore[index]
            out.append((f"{base}: {key} = {value!r}"[:120], dump(data).encode(), key))
    return out


def whole_files() -> list[tuple[str, bytes]]:
    return [("empty", b""), ("a list", b"- camera\n"), ("a number", b"5\n"), ("text", b"door\n"),
            ("NaN", b".nan\n"), ("two documents", b"camera: a\n---\ncamera: b\n"),
            ("UTF-16", "camera: door\n".encode("utf-16")), ("bytes", bytes(range(256))),
            ("very long", b"# x\n" * 20000)]


def check_in_process(path: Path, capsys) -> tuple[int, str]:  # noqa: ANN001
    rc = check_config.main(argparse.Namespace(config=path))
    out, err = capsys.readouterr()
    assert rc in (0, EX_CONFIG) and "Traceback" not in err, (rc, err[-2000:])
    assert (out == f"OK: {path}\n") == (rc == 0), out
    return rc, err


def names_the_key(line: str, key: str) -> bool:
    """The line names the key, a section around it or a value under it, or the YAML line."""
    parts = key.split(".")
    return any(".".join(parts[:n]) in line for n in range(1, len(parts) + 1)) or (
        "not valid YAML" in line)


def test_mutated_shipped_configs_get_one_line_per_problem_naming_the_key(tmp_path, capsys):
    (tmp_path / "photo.jpg").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    cases = mutations(tmp_path, random.Random(SEED), IN_PROCESS_CASES)
    cases += [(name, content, None) for name, content in whole_files()]
    answers = {0: 0, EX_CONFIG: 0}
    for i, (name, content, key) in enumerate(cases):
        path = tmp_path / f"m{i}.yaml"
        path.write_bytes(content)
        rc, err = check_in_process(path, capsys)
        answers[rc] += 1
        errors = [ln for ln in err.splitlines() if not ln.startswith(f"{path}: warning: ")]
        assert (rc == EX_CONFIG) == bool(errors), (name, err)
        for line in err.splitlines():
            assert line.startswith(f"{path}: ") and len(line) < 1000, (name, line)
        if key is not None and rc == EX_CONFIG:
            assert any(names_the_key(line, key) for line in errors), (name, errors)
    assert min(answers.values()) > 20, answers  # the mutations reach both answers
    for name, target in (("a folder", tmp_path / "folder"), ("missing", tmp_path / "nope.yaml"),
                         ("a device", Path("/dev/zero"))):
        rc, err = check_in_process(target, capsys)
        assert rc == EX_CONFIG and err.count("\n") == 1, (name, err)


def run_until_started(path: Path) -> tuple[bool, int, str]:
    """`maskd run` on ``path``, stopped (SIGTERM) as soon as it has opened every part: (started,
    exit status, stderr). A live camera or stream that is not there would be waited for."""
    proc = subprocess.Popen([sys.executable, "-m", "maskd", "run", "--config", str(path),
                             "--flush-timeout", "0"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=path.parent, env=ENV)
    lines: list[bytes] = []
    started = threading.Event()

    def read() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            lines.append(line)
            if line.startswith(STARTED):
                started.set()
                proc.send_signal(signal.SIGTERM)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=120)
    finally:
        proc.kill()
    reader.join(10)
    return started.is_set(), rc, b"".join(lines).decode(errors="replace")


def test_mutated_shipped_configs_are_refused_by_run_exactly_when_check_config_refuses(
        tmp_path, capsys, monkeypatch):
    (tmp_path / "photo.jpg").write_bytes(b"")
    (tmp_path / "folder").mkdir()
    # `run` opens what these keys name (files, folders, sources, the broker, the status page)
    cases = file_cases(tmp_path) + mutations(tmp_path, random.Random(SEED + 1), RUN_CASES,
                                             RUN_FOCUS)
    files = []
    for i, (_, content, _) in enumerate(cases):
        for port in (b":8080", b":8081"):  # the status pages of docs/config.md's cameras
            content = content.replace(port, f":{free_port()}".encode())
        (tmp_path / f"r{i}").mkdir()  # each run's own folder: relative paths land there
        files.append(tmp_path / f"r{i}" / "config.yaml")
        # each case its own missing file: a run that creates one (jsonl.path) must not make it
        # exist for another (state_dir) checked before it and run beside it
        files[-1].write_bytes(content.replace(b"/state", f"/state{i}".encode())
                              .replace(b"/missing.mp4", f"/missing{i}.mp4".encode()))
    checked = []
    for path in files:  # in the config's folder: what a relative path names is made there
        monkeypatch.chdir(path.parent)  # in this process: a second each as `maskd check-config`
        checked.append(check_in_process(path, capsys))
    with ThreadPoolExecutor(max_workers=4) as pool:
        ran = list(pool.map(run_until_started, files))
    refused = 0
    for (name, _, key), (code, said), (started, rc, err) in zip(cases, checked, ran, strict=True):
        assert "Traceback" not in said + err, (name, said, err[-3000:])
        if code == EX_CONFIG:
            refused += 1
            assert not started and rc == EX_CONFIG, (name, said, err[-2000:])
        else:
            assert code == 0, (name, said)
            # what run stops on and check-config only warns of (a file missing here), or a
            # model file's contents, which check-config leaves to run and doctor (config.md)
            assert started or (rc == EX_CONFIG and ("warning: " in said or key in MODEL_KEYS)), (
                name, said, err[-2000:])
            assert rc in (0, -signal.SIGTERM, EX_CONFIG), (name, rc, err[-2000:])
    assert 0 < refused < len(cases), refused  # the sample reaches both answers
