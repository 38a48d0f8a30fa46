"""tools/edgetpu_check.py: the shipped int8 graph passes the static EdgeTPU check, a float one does not."""

from __future__ import annotations

from pathlib import Path

from maskd.classifier import packaged_model_path
from tools.benchlib.common import FLOAT_MODEL
from tools.edgetpu_check import EDGETPU_OPS, check, main


def test_shipped_int8_model_is_edgetpu_compilable(capsys):
    problems, facts = check(packaged_model_path())
    assert problems == []
    assert set(facts["ops"]) <= EDGETPU_OPS and facts["ops"]["CONV_2D"] > 0
    assert all(shape[0] == 1 for _, _, shape, _ in facts["io"])
    assert main([str(packaged_model_path())]) == 0
    assert "EdgeTPU-compilable" in capsys.readouterr().out


def test_float_model_is_refused_with_the_reason():
    problems, _ = check(FLOAT_MODEL)
    assert any("float32, not int8/uint8" in m for m in problems)


def test_a_model_whose_name_is_not_utf8_is_one_line(tmp_path):
    """The shipped int8 model copied as m\\xe9.tflite (a Latin-1 name): the TFLite runtime's
    binding refused the name with a TypeError traceback, in edgetpu_check (whose exit 2 is 'a
    model file it cannot read') and in evaluate.py. Now both say what is wrong in one line."""
    import os
    import shutil
    import subprocess
    import sys

    import pytest

    from tools import edgetpu_check
    from tools.evaluate import open_model

    odd = os.fsdecode(bytes(tmp_path) + b"/m\xe9.tflite")
    shutil.copyfile(packaged_model_path(), odd)
    shutil.copyfile(packaged_model_path().with_suffix(".json"), odd[:-len(".tflite")] + ".json")
    run = subprocess.run([sys.executable, edgetpu_check.__file__, odd], capture_output=True,
                         cwd=Path(edgetpu_check.__file__).parents[1], timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert (b"m\\udce9.tflite: its name is not UTF-8, which the model runtimes cannot open: "
            b"rename the file") in run.stderr
    with pytest.raises(SystemExit) as exc:
        open_model(Path(odd))
    assert "its name is not UTF-8" in str(exc.value.code)
