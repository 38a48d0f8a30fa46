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


def test_a_pair_is_the_first_frames_against_frames_a_second_later(monkeypatch):
    """A covers a person's first FIRST frames in view, B the LATER frames from GAP on (never
    overlapping A); a person in view for fewer than SPAN frames, or masked, gives no pair."""
    from types import SimpleNamespace

    frames, people = 100, 3
    truth = np.full((frames, people, 4), np.nan)
    truth[5:, 0] = [10, 10, 50, 50]  # unmasked, in view from frame 5 on
    truth[10:10 + ei.SPAN - 1, 1] = [60, 10, 90, 50]  # unmasked, one frame short of SPAN
    truth[:, 2] = [100, 10, 140, 50]  # masked
    plan = SimpleNamespace(scenes=[SimpleNamespace(labels=np.array(
        ["without_mask", "without_mask", "with_mask"]))])
    monkeypatch.setattr(ei, "clip_truth", lambda p: truth)
    monkeypatch.setattr(ei, "judged_people", lambda t: np.ones(t.shape[1], bool))
    monkeypatch.setattr(ei, "ensure_clip", lambda p, cache: (Path("clip.mp4"), None))
    monkeypatch.setattr(ei, "read_frames", lambda path: [None] * frames)
    asked = []

    def descriptor(frames_, faces, truth_, person, ts, *rest):
        asked.append((person, ts))
        return np.array([1.0])
    monkeypatch.setattr(ei, "descriptor", descriptor)
    detector = SimpleNamespace(detect=lambda f: [])
    pairs = ei.clip_pairs(plan, Path("cache"), detector, 0.15, None, None)
    assert len(pairs) == 1
    assert asked == [(0, range(5, 5 + ei.FIRST)), (0, range(5 + ei.GAP, 5 + ei.GAP + ei.LATER))]
    assert ei.FIRST <= ei.GAP


def _stub_run(monkeypatch, pairs_by_photo: dict[str, list]) -> None:
    """main without photos, clips, detector or classifier: each photo's (A, B) pairs given."""
    from types import SimpleNamespace

    from maskd.config import Config

    monkeypatch.setattr(ei, "load_scenes", lambda *a: [])
    monkeypatch.setattr(ei, "report_skipped", lambda *a: None)
    monkeypatch.setattr(ei, "eval_config", lambda *a: Config())
    monkeypatch.setattr(ei, "build_detector", lambda cfg: None)
    monkeypatch.setattr(ei, "build_classifier", lambda cfg: None)
    monkeypatch.setattr(ei, "build_plans", lambda scenes, kinds, seed: [
        SimpleNamespace(name=n) for n in pairs_by_photo])
    monkeypatch.setattr(ei, "clip_pairs", lambda plan, *a: pairs_by_photo[plan.name])


def test_people_of_one_photo_give_no_threshold(monkeypatch, capsys):
    """Two people of one photo have no different-person pair: exit 2 and say so (was a
    percentile of nothing)."""
    e = np.eye(2)
    _stub_run(monkeypatch, {"p1": [(e[0], e[0]), (e[1], e[1])]})
    assert ei.main([]) == 2
    assert "only 2 people from 1 photos in view for >= 40 frames; need two photos" in (
        capsys.readouterr().err)


def test_the_report_counts_similarities_at_a_candidate_as_reaching_it(monkeypatch, tmp_path):
    """A different-person pair of exactly 0.90 would be merged at 0.90 (the tracker compares
    with >=), so it counts in merged["0.90"]; kept likewise."""
    a0, a1 = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    b1 = np.array([0.9, np.sqrt(1 - 0.81)])
    _stub_run(monkeypatch, {"p1": [(a0, a0)], "p2": [(a1, b1)]})
    out = tmp_path / "id.json"
    assert ei.main(["--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["people"] == 2 and report["different_pairs"] == 2
    assert report["merged"]["0.90"] == 0.5 and report["kept"]["0.90"] == 0.5
    assert report["threshold"] == pytest.approx(ei.threshold_rule(np.array([1.0, b1[1]])))


def test_the_rule_keeps_a_step_that_floats_land_just_below():
    """0.95 / 0.05 is 18.999999999999996 in floats: the same-person similarities all at 0.95
    give 0.95, not 0.90 (likewise 0.70 and 0.60)."""
    for v in (0.95, 0.7, 0.6):
        assert ei.threshold_rule(np.full(20, v)) == pytest.approx(v)
