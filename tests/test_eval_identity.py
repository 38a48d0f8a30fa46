"""tools/eval_identity.py: the pairing and the threshold rule on hand-made numbers, then a short
real run on rendered walk-up clips."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tools import eval_identity as ei


def test_the_rule_takes_the_step_at_or_below_the_fifth_percentile():
    same = np.linspace(0.80, 1.0, 101)  # 5th percentile = 0.81
    assert ei.threshold_rule(same) == pytest.approx(0.80)
    assert ei.threshold_rule(np.full(20, 0.9)) == pytest.approx(0.90)  # on a step: kept
    assert ei.threshold_rule(np.linspace(0.93, 1.0, 50)) == pytest.approx(0.90)


def test_no_same_person_pair_is_an_error_not_a_threshold():
    with pytest.raises(ValueError, match="no same-person pairs"):
        ei.threshold_rule(np.array([]))


def test_people_of_the_same_photo_are_not_counted_as_different():
    a = np.eye(3)
    b = np.array([[1.0, 0, 0], [0.6, 0.8, 0], [0.6, 0, 0.8]])
    same, diff = ei.same_and_different(a, b, ["p1", "p1", "p2"])
    assert same.tolist() == pytest.approx([1.0, 0.8, 0.8])
    # A0.B2 = 0.6, A1.B2, A2.B0, A2.B1 = 0; A0.B1 = 0.6 is left out (one photo)
    assert sorted(diff.tolist()) == pytest.approx([0.0, 0.0, 0.0, 0.6])
    assert len(diff) == 4


def test_one_person_is_more_alike_than_two_on_real_clips(scenes_dir: Path, yunet_model: Path,
                                                        tmp_path: Path, capsys):
    out = tmp_path / "identity.json"
    rc = ei.main(["--scenes", str(scenes_dir), "--part", "train", "--limit", "40",
                  "--cache", str(tmp_path / "clips"), "--json", str(out)])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    same = np.array(report["same"])
    assert report["people"] == len(same) >= 2 and report["different_pairs"] > 0
    assert np.all((same > 0) & (same <= 1.0 + 1e-6))
    # the descriptor must tell people apart: one person a second later stays alike, and at the
    # shipped 0.9 far fewer pairs of different people would merge than people keep their event
    assert np.median(same) > 0.9
    assert report["kept"]["0.90"] >= 0.9 and report["merged"]["0.90"] < 0.05
    assert report["threshold"] == pytest.approx(ei.threshold_rule(same))
    assert "rule:" in capsys.readouterr().out


def test_a_missing_scene_folder_is_named_not_a_traceback(tmp_path: Path, capsys):
    assert ei.main(["--scenes", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "eval_identity:" in err and "nowhere" in err and "Traceback" not in err


def _eval_identity(*args: str):
    import subprocess
    import sys

    return subprocess.run([sys.executable, ei.__file__, *args], capture_output=True, text=True,
                          timeout=300)


def test_limit_and_json_are_checked_before_the_run(tmp_path: Path):
    """--limit 0 said 'no .xml files of the train part' (false), -2 ran on all but the last two
    photos; --json naming a folder was an IsADirectoryError traceback after the whole run."""
    for bad in ("0", "-2"):
        r = _eval_identity("--limit", bad, "--scenes", str(tmp_path / "nowhere"))
        assert r.returncode == 2 and f"argument --limit: '{bad}': must be an integer >= 1" in r.stderr
    (tmp_path / "out.json").mkdir()
    r = _eval_identity("--json", str(tmp_path / "out.json"), "--scenes", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr == f"{tmp_path / 'out.json'}: is a folder; give a file name for the output\n"


@pytest.mark.shared
def test_a_report_that_does_not_fit_is_one_line_and_leaves_nothing(scenes_dir: Path,
                                                                   tmp_path: Path):
    from mqtt_broker import fill_disk, small_disk

    with small_disk(tmp_path / "disk") as disk:
        fill_disk(disk)
        r = _eval_identity("--scenes", str(scenes_dir), "--part", "train", "--limit", "6",
                           "--cache", str(tmp_path / "clips"), "--json", str(disk / "id.json"))
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.splitlines()[-1] == (f"{disk / 'id.json'}: cannot write it "
                                             "(No space left on device)")
        assert "rule:" in r.stdout and [p.name for p in disk.iterdir()] == ["filler"]
