"""A plain wheel, installed outside the checkout, finds its own model: `classify` and `run` work.

The wheel is built from this checkout without build isolation (setuptools comes from the dev
extra, so no network), installed with ``--no-deps`` into a fresh venv in a temporary folder,
and run from there with the checkout nowhere on ``sys.path``. Its dependencies (numpy, OpenCV,
the TFLite runtime, ...) are not downloaded again: a ``.pth`` file lets the fresh venv see this
venv's site-packages *after* its own, where ``maskd`` itself is only an editable-install hook
(not processed from a ``.pth`` path), so ``import maskd`` finds the wheel's copy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import cv2
import pytest

REPO = Path(__file__).resolve().parents[1]


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MASKD_") and k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    dist = base / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(dist), str(REPO)], check=True, capture_output=True, text=True,
                   timeout=120)
    (wheel,) = dist.glob("maskd-*.whl")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    py = venv / "bin" / "python"
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                    "--no-index", str(wheel)], check=True, capture_output=True, text=True,
                   timeout=120, env=_clean_env())  # no PYTHONPATH: pip must see the fresh venv
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "zz_maskd_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv


def _maskd(venv: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "maskd"), *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd, env=_clean_env())


@pytest.mark.slow
def test_wheel_ships_the_model_and_runs_outside_the_checkout(wheel_venv: Path, tmp_path: Path):
    py = wheel_venv / "bin" / "python"
    where = subprocess.run(
        [str(py), "-c", "import maskd, maskd.classifier as c; print(maskd.__file__); "
                        "print(c.default_model_path()); print(c.sidecar_path(c.default_model_path()))"],
        capture_output=True, text=True, cwd=tmp_path, env=_clean_env(), check=True).stdout.split()
    assert all(p.startswith(str(wheel_venv)) for p in where), where  # not the checkout's files
    model, sidecar = Path(where[1]), Path(where[2])
    assert model.is_file() and not model.is_symlink() and sidecar.is_file()

    from maskd.demo import astronaut_bgr

    face = tmp_path / "face.png"
    cv2.imwrite(str(face), astronaut_bgr()[50:190, 160:290])
    r = _maskd(wheel_venv, "classify", str(face), "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    (rec,) = [json.loads(line) for line in r.stdout.splitlines()]
    assert rec["label"] == "no_mask", rec  # the bare-faced astronaut

    r = _maskd(wheel_venv, "run", "--source", "demo", "--exit-at-end", "--jsonl", "-", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["event_type"] for e in events][0] == "start" and events[-1]["event_type"] == "end"
    assert "model file not found" not in r.stderr


@pytest.mark.slow
def test_model_dir_override_still_wins_for_the_wheel(wheel_venv: Path, tmp_path: Path):
    env = dict(_clean_env(), MASKD_MODEL_DIR=str(tmp_path / "empty"))
    r = subprocess.run([str(wheel_venv / "bin" / "maskd"), "classify", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert r.returncode == 2 and "empty/maskd_mobilenetv2_int8.tflite: model file not found" in r.stderr
