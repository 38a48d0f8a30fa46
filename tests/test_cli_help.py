"""Commands a person can read: every option and positional has a help line, and every command's
--help ends with its exit codes and one example; `run --http` sets preview.http."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from maskd.cli import build_parser
from maskd.commands.run import run_config


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(words, parser) for the top level and every (sub-)command."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*prefix, name))


ALL = list(commands(build_parser()))


def test_every_command_is_covered():
    names = {" ".join(words) for words, _ in ALL}
    assert {"", "classify", "scan", "run", "models", "models fetch", "check-config",
            "doctor", "mqtt-clear"} <= names


@pytest.mark.parametrize(("words", "parser"), ALL, ids=lambda w: " ".join(w) if isinstance(w, tuple) else "")
def test_every_option_and_positional_has_help(words, parser):
    missing = [a.dest for a in parser._actions if not a.help]
    assert missing == [], f"maskd {' '.join(words)}: no help for {missing}"


@pytest.mark.parametrize(("words", "parser"), ALL, ids=lambda w: " ".join(w) if isinstance(w, tuple) else "")
def test_help_ends_with_exit_codes_and_one_example(words, parser):
    text = parser.format_help()
    tail = text[text.index("exit codes:"):]  # after every option
    assert "options:" not in tail
    example = tail[tail.index("\nexample:\n"):].strip().splitlines()
    assert len(example) == 2 and example[1].strip().split()[0] in ("maskd", "sudo"), example
    assert text.rstrip().endswith(example[1].strip())


def test_help_output_of_the_real_command():
    r = subprocess.run([sys.executable, "-m", "maskd", "run", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0
    flat = " ".join(r.stdout.split())
    assert "demo (the built-in clip)" in flat  # --source
    assert "default: none, the built-in defaults; the service passes /etc/maskd/config.yaml" in flat
    assert "--http ADDR:PORT" in flat
    # the wait docs/mqtt.md promises a script that runs --exit-at-end
    assert "seconds to wait for the outbox to drain (default: 30)" in flat
    assert "78 bad config or start-up error" in flat
    # the unit's RestartPreventExitStatus=2 78 counts on it (docs/service.md)
    assert "2 a bad command line (an unknown option, a value out of range)" in flat
    assert r.stdout.rstrip().endswith("maskd run --source demo --jsonl - --annotate out/demo")


@pytest.mark.parametrize("words", [w for w, _ in ALL if w and w != ("models",)], ids=" ".join)
def test_a_bad_command_line_exits_2_as_help_says(words):
    """check-config, doctor and mqtt-clear listed their exit codes without 2, which argparse
    gives an unknown option; a script (or the unit's RestartPreventExitStatus) reads the list."""
    r = subprocess.run([sys.executable, "-m", "maskd", *words, "--no-such-option"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("usage: ") and "error: " in r.stderr, r.stderr
    parser = dict((w, p) for w, p in ALL)[words]
    codes = parser.format_help().split("exit codes:")[1].split("example:")[0]
    assert "\n  2 " in codes and "command line" in codes, codes


@pytest.mark.parametrize(("words", "option", "default"), [
    (["run"], "--flush-timeout", "30"),  # docs/mqtt.md: "(default 30)"
    (["doctor"], "--frames", "5"),
    (["mqtt-clear"], "--wait", "2.0"),
    (["models", "fetch"], "--timeout", "60.0"),
])
def test_the_defaults_help_shows_are_the_ones_a_command_uses(words, option, default):
    """What `--help` says an option defaults to is what an operator plans with (a script's
    wait, a table's frame count): the number said, and the one parsed without the option."""
    parser = dict((w, p) for w, p in ALL)[tuple(words)]
    text = parser.format_help()
    entry = text[text.index(f"\n  {option} "):].split("\n  -")[1]  # up to the next option
    assert f"(default: {default})" in " ".join(entry.split()), entry
    args = build_parser().parse_args(words)
    assert getattr(args, option[2:].replace("-", "_")) == float(default)


def test_the_config_keys_classify_help_names_are_keys_it_reads():
    """`classify --config` said "(classifier section: model, cut)": no key is called cut
    (check-config refuses `classifier.cut`); the cut is classifier.threshold, and the
    classifier's threads and edgetpu come from there too."""
    import re

    from maskd.config import ClassifierConfig

    parser = dict((w, p) for w, p in ALL)[("classify",)]
    entry = next(a.help for a in parser._actions if a.dest == "config")
    named = re.search(r"classifier section: ([^)]*)\)", entry).group(1).split(", ")
    assert set(named) <= set(ClassifierConfig.model_fields), named
    assert {"model", "threshold", "threads", "edgetpu"} <= set(named), named


def test_run_http_sets_the_status_page():
    args = build_parser().parse_args(["run", "--http", "127.0.0.1:8089", "--source", "demo"])
    assert run_config(args).preview.http == "127.0.0.1:8089"
    assert run_config(build_parser().parse_args(["run"])).preview.http is None


def test_classifier_and_performance_docs_name_the_shipped_model(capsys):
    """docs/classifier.md called the m224d recipe 'the shipped model' and its --limit row left
    out the scene photos --help names; docs/performance.md named runs/m224d as the sidecar's
    source, called the shipped model 224 px and 'faces under 24 px' unjudged (min_face_px is
    20). Each claim is checked against what it describes."""
    import json
    import re
    from pathlib import Path

    from maskd.config import ClassifierConfig
    from tools import train

    repo = Path(__file__).resolve().parents[1]
    card = (repo / "models" / "MODEL_CARD.md").read_text(encoding="utf-8")
    run = re.search(r"^## This model: (\w+)", card, re.M).group(1)
    classifier = (repo / "docs" / "classifier.md").read_text(encoding="utf-8")
    shipped = [line for line in classifier.splitlines() if "# the shipped model" in line]
    assert len(shipped) == 1 and f"--out runs/{run}" in shipped[0]
    limit_row = next(line for line in classifier.splitlines() if line.startswith("| `--limit N`"))
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    limit_help = " ".join(capsys.readouterr().out.split("--limit LIMIT  ", 1)[1].split("--quiet")[0]
                          .split())
    for text in (limit_row, limit_help):  # both say what the code does: scene photos too
        assert "images per class" in text and "scene photos" in text and "train part" in text
    side = json.loads((repo / "models" / "maskd_mobilenetv2_int8.json").read_text())
    perf = (repo / "docs" / "performance.md").read_text(encoding="utf-8")
    defaults = perf[perf.index("Defaults: the shipped"):][:400]
    assert f"`{side['source']['keras_model']}`" in defaults
    assert "The shipped model is still 224 px" not in perf
    px = ClassifierConfig().min_face_px
    assert f"({px} px) counted but not judged" in " ".join(perf.split())


def test_a_ctrl_c_while_the_command_loads_is_exit_130_not_a_traceback(monkeypatch):
    """The command's module (cv2, TFLite, pydantic) loads for seconds on a Pi: a Ctrl-C then
    was a KeyboardInterrupt traceback and death by the signal, where every command says 130."""
    from maskd import cli

    def interrupted(name: str) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli.importlib, "import_module", interrupted)
    assert cli.main(["scan", "nothing-here"]) == 130


@pytest.mark.parametrize("words", [[], ["models"]])
def test_no_command_is_a_usage_error_naming_what_is_missing_not_a_traceback(words):
    """`maskd` alone (or `maskd models`) is exit 2 with the usage and what is missing, as any
    bad command line (the unit's RestartPreventExitStatus=2), not an AttributeError traceback
    from looking up the command None."""
    r = subprocess.run([sys.executable, "-m", "maskd", *words], capture_output=True, text=True,
                       timeout=60)
    missing = "ACTION" if words else "COMMAND"
    assert r.returncode == 2 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr.startswith("usage: maskd") and r.stderr.endswith(
        f"error: the following arguments are required: {missing}\n"), r.stderr
