"""Bad input to the offline tools (tools/train.py, convert.py, evaluate.py ...): one line naming
what is wrong, a non-zero exit, no traceback, and nothing already produced lost.

Each case stops in validation, before TensorFlow work, unless it says otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from tools import dataset


def _image(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), value, np.uint8))
    return path


def _dataset(root: Path, per_class: int = 3, classes=("with_mask", "without_mask")) -> Path:
    for c, cls in enumerate(classes):
        for i in range(per_class):
            _image(root / cls / f"{i}.png", 10 * i + 100 * c)  # distinct bytes: no duplicates
    return root


def _exit_message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value.code)


def test_make_split_refuses_unusable_data(tmp_path: Path) -> None:
    allbad = tmp_path / "allbad"
    (allbad / "with_mask").mkdir(parents=True)
    (allbad / "with_mask" / "a.jpg").write_bytes(b"no")
    (allbad / "without_mask").mkdir()
    (allbad / "without_mask" / "b.jpg").write_bytes(b"image")
    with pytest.raises(SystemExit) as exc:
        dataset.make_split(allbad)
    assert "none of its 2 files is a readable image" in _exit_message(exc)

    one = _dataset(tmp_path / "one", 5, classes=("with_mask",))
    with pytest.raises(SystemExit) as exc:
        dataset.make_split(one, 0.2, 0.2)
    assert "train part of the split has no no_mask images" in _exit_message(exc)

    tiny = _dataset(tmp_path / "tiny", 3)
    with pytest.raises(SystemExit) as exc:  # 3 x 0.1 rounds to no val image at all
        dataset.make_split(tiny, 0.1, 0.1)
    assert "val part of the split has no mask and no no_mask images" in _exit_message(exc)
    split = dataset.make_split(tiny, 0.34, 0.0, limit=3)
    assert split["limit_per_class"] == 3 and len(split["val"]) == 2


def test_load_split_names_the_broken_file(tmp_path: Path) -> None:
    cases = {"missing.json": None, "trunc.json": '{"root": "/x", "tr',
             "nokey.json": '{"a": 1}', "rows.json": json.dumps(
                 {"root": "/x", "train": [["a.png", 0]], "val": [["b.png"]], "test": []})}
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(SystemExit) as exc:
            dataset.load_split(path)
        assert _exit_message(exc).startswith(f"{path}: ")
    assert '"val" is not a list of [path, label] rows' in _exit_message(exc)
