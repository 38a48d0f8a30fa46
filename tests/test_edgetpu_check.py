"""tools/edgetpu_check.py: the shipped int8 graph passes the static EdgeTPU check, a float one does not."""

from __future__ import annotations

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
