"""Shared fixtures: where ../shared lives, and skips with a reason when it is absent."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MASKD_SHARED", REPO.parent / "shared"))
# A looping demo plays in real time in `maskd run` (it stands in for a camera); the tests, and
# the `maskd run` processes they start, want it as fast as before. A test of the real-time
# play takes it out of the environment it gives.
os.environ.setdefault("MASKD_DEMO_FAST", "1")


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Said at the top when this machine's own disk has recorded ext4 errors: every run that
    writes there then (rightly) reports them as a problem (maskd.files.CardWatch), and the
    tests that expect no problem fail for the disk's sake, not maskd's."""
    import tempfile

    from maskd.files import CardWatch

    seen = CardWatch([("TMPDIR", Path(tempfile.gettempdir()), True)]).look()
    return [f"WARNING: {line}; tests that expect no problem in a run's status will fail on "
            "this machine" for line in seen]


def shared_path(rel: str) -> Path:
    """A file under ../shared, or skip the test naming what is missing."""
    p = SHARED / rel
    if not p.exists():
        pytest.skip(f"needs {p} (the team's shared data, not in git)")
    return p


def noise_dataset(root: Path, per_class: int, size: int) -> Path:
    """``root``/{with_mask,without_mask} of ``per_class`` noise PNGs of ``size`` px: data the
    tools read and train on in seconds, where what is learnt does not matter."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    for cls in ("with_mask", "without_mask"):
        (root / cls).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(root / cls / f"{i}.png"), rng.integers(0, 256, (size, size, 3), np.uint8))
    return root


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"needs {SHARED} (the team's shared data, not in git)")
    return SHARED


@pytest.fixture
def yunet_model() -> Path:
    return shared_path("models/face_detection_yunet_2026may.onnx")


@pytest.fixture
def facemask_dir() -> Path:
    return shared_path("data/facemask-4095")


@pytest.fixture
def scenes_dir() -> Path:
    return shared_path("data/scenes-dev")


@pytest.fixture
def default_model() -> Path:
    p = REPO / "models" / "maskd_mobilenetv2_int8.tflite"
    if not p.exists():
        pytest.skip(f"{p} not built yet (tools/train.py + tools/convert.py)")
    return p


@pytest.fixture
def refuse_to_delete(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """``refuse_to_delete(p)``: deleting ``p`` fails as another user's file in a shared sticky
    folder does (EPERM), every other file is deleted as usual: how a cap meets a file it
    cannot remove."""
    unlink = Path.unlink

    def refuse(path: Path) -> None:
        def refusing(self: Path, missing_ok: bool = False) -> None:
            if self == path:
                raise PermissionError(1, "Operation not permitted")
            return unlink(self, missing_ok=missing_ok)

        monkeypatch.setattr(Path, "unlink", refusing)

    return refuse
