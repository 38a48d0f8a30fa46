"""tools/eval_video.py: clip geometry and the per-person scorer on hand-made cases, then a
short real run through the maskd loop."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskd.config import ConfigError
from maskd.geometry import shorter_sides
from tools import eval_video as ev

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def scene(tmp_path: Path, size: tuple[int, int], boxes: list[list[float]],
          labels: list[str]) -> ev.Scene:
    """A photo on disk (its size is read from the file) with annotated boxes."""
    path = tmp_path / f"photo{len(list(tmp_path.glob('*.jpg')))}.jpg"
    cv2.imwrite(str(path), np.full((size[1], size[0], 3), 90, np.uint8))
    return ev.Scene(path, np.array(boxes, np.float64).reshape(-1, 4), labels)


# --------------------------------------------------------------------------- geometry


def test_a_known_window_moves_a_box_to_a_known_place():
    # A 320x240 window at (100, 50) fills the 640x480 frame: scale 2, shifted by the corner.
    a = ev.window_affine(np.array([100.0, 50.0, 420.0, 290.0]))
    assert ev.move_boxes(np.array([[120, 60, 140, 90]]), a).tolist() == [[40, 20, 80, 80]]
    # A placed face gets the asked size and centre whatever its own.
    a = ev.place_affine(np.array([10.0, 20.0, 30.0, 60.0]), 96, (320, 192))
    moved = ev.move_boxes(np.array([[10.0, 20.0, 30.0, 60.0]]), a)[0]
    assert shorter_sides(moved) == pytest.approx(96)
    assert ((moved[0] + moved[2]) / 2, (moved[1] + moved[3]) / 2) == pytest.approx((320, 192))


def test_visible_fraction_counts_the_frame_edge_and_occluders():
    view = np.array([0.0, 0.0, 640.0, 480.0])
    boxes = np.array([[100, 100, 200, 200], [600, 0, 700, 100], [-70, 0, 30, 100]])
    assert ev.visible_fraction(boxes, view).tolist() == pytest.approx([1.0, 0.4, 0.3])
    # Two overlapping occluders are not subtracted twice.
    occ = [np.array([100, 100, 150, 200]), np.array([120, 100, 170, 200])]
    assert ev.visible_fraction(boxes[:1], view, occ)[0] == pytest.approx(0.3)


def test_a_box_less_than_half_in_view_has_no_truth():
    sc = ev.Scene(Path("unused.jpg"), np.array([[100, 100, 150, 150],     # inside
                                                [610, 100, 660, 150],     # 60 % in view
                                                [620, 100, 670, 150],     # 40 % in view
                                                [300, 300, 350, 350]]),   # under the patch
                  ["without_mask"] * 4)
    patch = ev.Scene(Path("unused2.jpg"), np.zeros((0, 4)), [])
    frames = [[ev.Layer(0, IDENTITY, np.array([0.0, 0.0, 800.0, 600.0]))],
              [ev.Layer(0, IDENTITY, np.array([0.0, 0.0, 800.0, 600.0])),
               ev.Layer(1, IDENTITY, np.array([280.0, 280.0, 400.0, 400.0]))]]
    truth = ev.clip_truth(ev.ClipPlan("test", "t", [sc, patch], frames))
    assert truth.shape == (2, 4, 4)
    assert truth[0, 0].tolist() == [100, 100, 150, 150]
    assert truth[0, 1].tolist() == [610, 100, 640, 150]  # clipped to what is in view
    assert np.isnan(truth[:, 2]).all()
    assert not np.isnan(truth[0, 3]).any() and np.isnan(truth[1, 3]).all()


def test_walkup_starts_whole_and_ends_zoomed_toward_the_face(tmp_path: Path):
    # One face near the top-left corner of a 4:3 photo: the last window is clamped to the photo.
    sc = scene(tmp_path, (400, 300), [[20, 30, 44, 60]], ["without_mask"])
    plan = ev.walkup_clip(sc, seed=1)
    assert len(plan.frames) == ev.FRAMES and plan.size == (640, 480)
    wins = ev.zoom_windows((400, 300), sc.boxes[0])
    assert wins[0].tolist() == pytest.approx([0, 0, 400, 300])  # the whole photo
    widths = wins[:, 2] - wins[:, 0]
    assert widths[0] / widths[-1] == pytest.approx(ev.ZOOM)
    assert np.diff(np.log(widths)) == pytest.approx(np.full(len(widths) - 1, -np.log(2.2) / 44))
    assert wins[-1][:2].tolist() == pytest.approx([0, 0])  # clamped, not showing outside
    truth = ev.clip_truth(plan)
    assert not np.isnan(truth[:, 0]).any()  # the chosen face is in view in every frame
    side = shorter_sides(truth[:, 0])
    assert side[-1] / side[0] == pytest.approx(ev.ZOOM)
    assert (np.diff(side) > 0).all()  # it grows as a person walking up


def test_walkup_letterboxes_a_wide_photo_and_keeps_a_big_face_whole(tmp_path: Path):
    first = ev.fit_window((400, 225))
    assert first[2] - first[0] == pytest.approx(400)  # fits by width ...
    assert first[1] < 0 < 225 < first[3]  # ... with bars above and below
    big = np.array([150.0, 50.0, 290.0, 200.0])  # too big to zoom 2.2x into
    last = ev.zoom_windows((400, 225), big)[-1]
    assert last[0] <= big[0] and last[2] >= big[2] and last[1] <= big[1] and last[3] >= big[3]


def test_walkup_face_choice_depends_only_on_seed_and_photo(tmp_path: Path):
    boxes = [[10 + 40 * i, 10, 40 + 40 * i, 40] for i in range(8)]
    sc = scene(tmp_path, (400, 300), boxes, ["with_mask"] * 8)
    lasts = {ev.walkup_clip(sc, seed).frames[-1][0].affine.tobytes() for seed in range(6)}
    assert len(lasts) > 1  # the seed picks the face ...
    again = ev.walkup_clip(sc, 3).frames[-1][0].affine
    assert np.array_equal(again, ev.walkup_clip(sc, 3).frames[-1][0].affine)  # ... repeatably


def test_walkup_of_a_photo_with_nobody_annotated_zooms_to_its_centre(tmp_path: Path):
    sc = scene(tmp_path, (400, 300), [], [])
    plan = ev.walkup_clip(sc, seed=0)
    assert len(plan.frames) == ev.FRAMES and ev.clip_truth(plan).shape[1] == 0
    last = ev.zoom_windows((400, 300), np.array([180.0, 135.0, 220.0, 165.0]))[-1]
    assert np.array_equal(plan.frames[-1][0].affine, ev.window_affine(last))
    assert (last[:2] + last[2:]).tolist() == pytest.approx([400, 300])  # centred


def test_queue_puts_every_face_at_one_spot_with_gaps(tmp_path: Path):
    people = [(scene(tmp_path, (400, 300), [[50, 60, 80, 100], [200, 50, 230, 90]],
                     ["with_mask", "without_mask"]), 1),
              (scene(tmp_path, (300, 400), [[100, 200, 150, 260]], ["without_mask"]), 0)]
    plan = ev.queue_clip(people, fps=15.0)
    assert len(plan.frames) == 30 + 15 + 30
    assert plan.queued == [1, 2]  # person indices run over the photos' boxes in order
    truth = ev.clip_truth(plan)
    spot = np.array([truth[0, 1], truth[45, 2]])
    centres = (spot[:, :2] + spot[:, 2:]) / 2
    assert centres[0] == pytest.approx(centres[1])  # same place ...
    assert shorter_sides(spot) == pytest.approx([ev.QUEUE_FACE_PX] * 2)  # ... and size
    assert np.isnan(truth[30:45]).all()  # nobody in the gap
    assert np.isnan(truth[45:, :2]).all() and np.isnan(truth[:45, 2]).all()


def test_a_queued_person_is_shown_without_the_people_next_to_them(tmp_path: Path):
    # the neighbour's face is 60 px left of the queued one in the photo: 192 px in the frame
    sc = scene(tmp_path, (400, 300), [[140, 55, 170, 95], [200, 50, 230, 90]],
               ["without_mask", "without_mask"])
    alone, whole = (ev.clip_truth(ev.queue_clip([(sc, 1)], context=c)) for c in (2.5, 0))
    assert not np.isnan(alone[:, 1]).any() and not np.isnan(whole[:, 1]).any()
    assert np.isnan(alone[:, 0]).all()  # cut to 2.5 x the face: less than half of it in view
    assert not np.isnan(whole[:, 0]).any()  # the whole photo: a bystander in the queue
    assert alone[:, 1] == pytest.approx(whole[:, 1])  # the queued face is where it was
    patch = ev.queue_clip([(sc, 1)]).frames[0][0].src
    assert patch.tolist() == pytest.approx([165, 20, 265, 120])  # 2.5 x 40 px around its centre


def test_clips_are_mjpg_and_cached_by_what_makes_them(tmp_path: Path):
    sc = scene(tmp_path, (400, 300), [[20, 30, 44, 60]], ["without_mask"])
    plan = ev.walkup_clip(sc, seed=0, frames=6)
    path, rendered = ev.ensure_clip(plan, tmp_path / "clips")
    cap = cv2.VideoCapture(str(path))
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode()
    assert fourcc == "MJPG" and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (640, 480)
    cap.release()
    assert rendered and ev.ensure_clip(plan, tmp_path / "clips") == (path, False)
    other, rendered = ev.ensure_clip(ev.walkup_clip(sc, seed=0, frames=7), tmp_path / "clips")
    assert rendered and other != path


def test_a_photo_replaced_by_another_of_the_same_name_and_size_is_rendered_again(
        tmp_path: Path):
    """The key held the photo's name and byte size: a hidden set reusing a dev file name (or a
    photo replaced by a picture of the same size) was scored on the old photo's cached clip."""
    sc = scene(tmp_path, (400, 300), [[20, 30, 44, 60]], ["without_mask"])
    plan = ev.walkup_clip(sc, seed=0, frames=6)
    path, _ = ev.ensure_clip(plan, tmp_path / "clips")
    size = sc.image.stat().st_size
    data = bytearray(sc.image.read_bytes())
    data[-3] ^= 0x01  # another picture, same size (a bit of its last scan)
    sc.image.write_bytes(bytes(data))
    assert sc.image.stat().st_size == size
    other, rendered = ev.ensure_clip(ev.walkup_clip(sc, seed=0, frames=6), tmp_path / "clips")
    assert rendered and other != path


def test_a_kind_that_makes_no_clip_from_these_photos_is_said(tmp_path: Path, capsys):
    """--kinds walkup,queue on photos without an unmasked face ran the walk-ups alone: the
    queue was left out of the table and of --json's summary without a word."""
    root = tmp_path / "voc"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    cv2.imwrite(str(root / "images" / "a.jpg"), np.full((120, 160, 3), 90, np.uint8))
    (root / "annotations" / "a.xml").write_text(
        "<annotation><object><name>with_mask</name><bndbox><xmin>10</xmin><ymin>10</ymin>"
        "<xmax>50</xmax><ymax>60</ymax></bndbox></object></annotation>")
    out = tmp_path / "r.json"
    # BlazeFace (it ships in the venv): YuNet is not in a clean clone offline, nor ../shared
    rc = ev.main(["--scenes", str(root), "--kinds", "walkup,queue", "--no-cache", "--json",
                  str(out), "--jobs", "1", "-o", "detector.kind=blazeface"])
    err = capsys.readouterr().err
    assert "eval_video: no queue clip: no without_mask face of >= 24 px in these photos" in err
    assert rc == 0, err
    assert json.loads(out.read_text())["not_made"] == {
        "queue": "no without_mask face of >= 24 px in these photos"}


def test_a_cached_clip_cut_short_is_rendered_again(tmp_path: Path):
    """ensure_clip trusted any file of the clip's name: an empty or truncated clip (a full disk,
    a killed run) was scored for ever as 'cannot open' or 'the loop saw 8 of 45 frames'."""
    sc = scene(tmp_path, (400, 300), [[20, 30, 44, 60]], ["without_mask"])
    plan = ev.walkup_clip(sc, seed=0, frames=6)
    path, _ = ev.ensure_clip(plan, tmp_path / "clips")
    whole = path.read_bytes()
    for cut in (b"", whole[:len(whole) // 2], whole[:-16]):
        path.write_bytes(cut)
        assert ev.ensure_clip(plan, tmp_path / "clips") == (path, True)
        assert path.read_bytes() == whole and ev.clip_frames(path) == 6


def test_a_clip_that_does_not_fit_is_named_and_never_cached(tmp_path: Path):
    """write_clip renamed whatever VideoWriter left on a full disk (it says nothing) into the
    cache: a 0-byte or truncated clip presented as rendered."""
    from mqtt_broker import fill_disk, small_disk

    sc = scene(tmp_path, (400, 300), [[20, 30, 44, 60]], ["without_mask"])
    plan = ev.walkup_clip(sc, seed=0, frames=6)
    with small_disk(tmp_path / "disk") as disk:
        fill_disk(disk)
        with pytest.raises(OSError, match=rf"^{disk / 'clips'}: cannot write the clip walkup-"):
            ev.ensure_clip(plan, disk / "clips")
        assert list((disk / "clips").iterdir()) == []  # neither the clip nor its temp file


@pytest.mark.shared
def test_eval_video_on_a_full_clip_folder_says_so_in_one_line(scenes_dir: Path, tmp_path: Path):
    import subprocess
    import sys

    from mqtt_broker import fill_disk, small_disk

    with small_disk(tmp_path / "disk") as disk:
        fill_disk(disk)
        r = subprocess.run([sys.executable, ev.__file__, "--scenes", str(scenes_dir), "--kinds",
                            "walkup", "--limit", "1", "--jobs", "1", "--cache",
                            str(disk / "clips")], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert f"eval_video: {disk / 'clips'}: cannot write the clip walkup-" in r.stderr
        assert list((disk / "clips").iterdir()) == []


def test_the_memo_is_keyed_by_the_detector_and_classifier_code(tmp_path: Path):
    # A memo of detector outputs must not be replayed after the detector's code changed.
    pkg = tmp_path / "detectors"
    pkg.mkdir()
    (pkg / "yunet.py").write_text("CUT = 0.8\n")
    one = tmp_path / "classifier.py"
    one.write_text("SIZE = 128\n")
    before = ev.code_fingerprint([pkg, one])
    assert ev.code_fingerprint([pkg, one]) == before
    (pkg / "yunet.py").write_text("CUT = 0.7\n")
    after = ev.code_fingerprint([pkg, one])
    assert after != before
    one.write_text("SIZE = 160\n")
    assert ev.code_fingerprint([pkg, one]) not in (before, after)
    # The real paths are the imported package's, so another checkout on PYTHONPATH is hashed.
    import maskd.detectors

    assert ev.memo_code()[0] == Path(maskd.detectors.__file__).parent


# --------------------------------------------------------------------------- scoring


def _person(box: list[float], frames: range, n: int = 20) -> np.ndarray:
    t = np.full((n, 4), np.nan)
    t[list(frames)] = box
    return t


def test_judged_needs_40_px_for_10_frames():
    truth = np.stack([_person([0, 0, 40, 40], range(10)),            # exactly: judged
                      _person([0, 0, 39.9, 60], range(20)),          # too small
                      _person([0, 0, 60, 60], range(9)),             # too short
                      _person([0, 0, 60, 60], [*range(5), *range(12, 17)])], axis=1)  # 10 in all
    assert ev.judged_people(truth).tolist() == [True, False, False, True]


def test_score_clip_hand_made_case():
    labels = ["without_mask", "with_mask", "mask_weared_incorrect", "without_mask",
              "without_mask", "without_mask", "with_mask"]
    truth = np.stack([
        _person([0, 0, 50, 50], range(20)),        # 0 unmasked, judged: TP + a duplicate
        _person([100, 0, 150, 50], range(20)),     # 1 masked, judged: flagged -> false alarm
        _person([200, 0, 250, 50], range(20)),     # 2 incorrect: neither way
        _person([300, 0, 330, 30], range(20)),     # 3 unmasked, 30 px: neither way
        _person([400, 0, 450, 50], range(9)),      # 4 unmasked, 9 frames: neither way
        _person([0, 100, 40, 140], range(10, 20)),  # 5 unmasked, 40 px x 10 frames: missed
        _person([100, 100, 150, 150], range(20)),  # 6 masked, judged, not flagged
    ], axis=1)
    starts = [(5, [2, 2, 52, 52]),       # on 0
              (12, [0, 0, 50, 50]),      # on 0 again: duplicate
              (3, [100, 0, 150, 50]),    # on 1: false alarm (masked)
              (4, [200, 0, 250, 50]),    # on 2: neither
              (6, [300, 0, 330, 30]),    # on 3: neither
              (2, [400, 0, 450, 50]),    # on 4: neither
              (15, [400, 0, 450, 50]),   # where 4 was, but 4 has left: nobody
              (7, [500, 300, 560, 360]),  # on nobody
              (8, [0, 100, 40, 140])]    # where 5 will be, before it is in view: nobody
    s = ev.score_clip(truth, labels, [f for f, _ in starts], np.array([b for _, b in starts]),
                      fps=15.0)
    assert s["person"] == [0, 0, 1, 2, 3, 4, -1, -1, -1]
    assert s["verdicts"] == ["tp", "tp", "fa_masked", "incorrect", "small", "small",
                             "fa_nobody", "fa_nobody", "fa_nobody"]
    c = s["counts"]
    assert (c["unmasked"], c["unmasked_hit"], c["masked"], c["masked_hit"]) == (2, 1, 2, 1)
    assert (c["events"], c["events_unmasked"], c["fa_masked"], c["fa_nobody"]) == (9, 2, 1, 3)
    assert (c["neutral"], c["duplicates"]) == (3, 1)
    assert s["latency_s"] == pytest.approx([5 / 15])
    m = ev.summarize([s])
    assert m["recall"] == 0.5 and m["precision"] == pytest.approx(2 / 6, abs=1e-4)
    assert m["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3), abs=1e-3)
    assert m["masked_flagged"] == 0.5 and m["duplicates_per_person"] == 0.5
    assert m["false_alarms"] == 4 and m["events_per_person"] == 4.5


def test_an_event_belongs_to_the_best_overlap_and_needs_iou_0_3():
    truth = np.stack([_person([0, 0, 100, 100], range(3), 3),
                      _person([60, 0, 160, 100], range(3), 3)], axis=1)
    boxes = np.array([[50, 0, 150, 100], [0, 0, 100, 100], [0, 0, 100, 24], [0, 0, 100, 35]])
    assert ev.assign_starts([1, 1, 1, 1], boxes, truth).tolist() == [1, 0, -1, 0]
    assert ev.assign_starts([3, -1], boxes[:2], truth).tolist() == [-1, -1]  # frame not in clip


def test_summaries_add_clips_and_latency_percentiles():
    a = ev.score_clip(_person([0, 0, 50, 50], range(20))[:, None], ["without_mask"], [3],
                      np.array([[0, 0, 50, 50]]))
    b = ev.score_clip(_person([0, 0, 50, 50], range(5, 20))[:, None], ["without_mask"], [],
                      np.zeros((0, 4)))
    m = ev.summarize([a, b])
    assert (m["clips"], m["unmasked"], m["recall"], m["precision"]) == (2, 2, 0.5, 1.0)
    assert (m["people"], m["events_per_person"]) == (2, 0.5)
    # In a queue the events should number the queued people, bystanders aside.
    two = np.stack([_person([0, 0, 50, 50], range(20)), _person([100, 0, 150, 50], range(20)),
                    _person([200, 0, 250, 50], range(20))], axis=1)
    q = ev.score_clip(two, ["without_mask"] * 3, [4, 4, 9], np.array(
        [[0, 0, 50, 50], [100, 0, 150, 50], [200, 0, 250, 50]]), queued=[0, 2])
    assert (q["counts"]["queued"], q["counts"]["queued_hit"], q["counts"]["people"]) == (2, 2, 2)
    assert q["counts"]["queued_events"] == 2
    line = ev.render_queue(ev.summarize([q]))
    assert line.startswith("queue: 3 events for 2 queued people, 2 of them reached (second events on them: 0")
    assert "1 on others in view, 0 of those false alarms" in line
    again = ev.score_clip(two, ["without_mask"] * 3, [4, 9, 12], np.array(
        [[0, 0, 50, 50], [200, 0, 250, 50], [0, 0, 50, 50]]), queued=[0, 2])
    assert (again["counts"]["queued_hit"], again["counts"]["queued_events"]) == (2, 3)
    assert "2 of them reached (second events on them: 1); 0 on others" in ev.render_queue(
        ev.summarize([again]))
    assert ev.summarize([q])["events_per_person"] == 1.5
    assert m["latency_median_s"] == pytest.approx(0.2)
    empty = ev.summarize([])
    assert empty["recall"] is None and empty["f1"] is None and empty["latency_p90_s"] is None


def test_interval_resamples_clips():
    """Identical clips leave nothing to vary; a hit clip and a missed one span 0..1 for recall;
    a rate nobody defines has no interval; the draws are seeded."""
    hit = ev.score_clip(_person([0, 0, 50, 50], range(20))[:, None], ["without_mask"], [3],
                        np.array([[0, 0, 50, 50]]))
    miss = ev.score_clip(_person([0, 0, 50, 50], range(20))[:, None], ["without_mask"], [],
                         np.zeros((0, 4)))
    same = ev.interval([hit] * 5)
    assert same["recall"] == [1.0, 1.0] and same["precision"] == [1.0, 1.0]
    assert same["masked_flagged"] is None
    mixed = ev.interval([hit, miss] * 10, draws=4000)
    lo, hi = mixed["recall"]
    assert 0.25 < lo < 0.5 < hi < 0.75  # 20 clips: binomial(20, 0.5) / 20, 5th-95th percentile
    assert mixed == ev.interval([hit, miss] * 10, draws=4000)
    assert ev.interval([])["f1"] is None
    line = ev.render_interval(20, mixed)
    assert "recall 0." in line and "masked flagged -" in line


# --------------------------------------------------------------------------- config


def test_eval_config_is_the_device_loop_with_preview_and_mqtt_off(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MASKD_YUNET", str(tmp_path / "none.onnx"))  # none fetched: ../shared's
    cfg = ev.eval_config(None, ["tracking.end_after_s=1", "mqtt.url=mqtt://broker:1883",
                                "classifier.threshold=0.8"], jobs=2, cores=2)
    assert cfg.detector.kind == "yunet" and cfg.detector.model == ev.SHARED_YUNET
    assert cfg.tracking.end_after_s == 1 and cfg.classifier.threshold == 0.8
    assert cfg.mqtt.url is None and not cfg.preview.window and cfg.preview.http is None
    assert cfg.classifier.threads == 1  # 2 jobs x 1 thread on 2 cores
    clip = ev.clip_config(cfg, tmp_path / "c.avi", 15.0, tmp_path)
    assert clip.source.kind == "opencv" and clip.source.uri == str(tmp_path / "c.avi")
    assert clip.jsonl.path == str(tmp_path / "events.jsonl")
    f = tmp_path / "config.yaml"
    f.write_text("detector:\n  kind: blazeface\nclassifier:\n  threads: 4\n")
    cfg = ev.eval_config(f, [], jobs=1, cores=8)
    assert cfg.detector.kind == "blazeface" and cfg.classifier.threads == 4
    for bad in (["tracking.end_after=1"], ["end_after_s=1"], ["tracking.end_after_s"],
                ["tracking.end_after_s=-1"], ["camera.x=1"]):
        with pytest.raises(ConfigError):
            ev.eval_config(None, bad, jobs=1)


def test_eval_config_takes_the_yunet_run_finds(tmp_path: Path, monkeypatch):
    """A clean clone with YuNet fetched (`maskd models fetch`) and no ../shared: eval_video
    stopped with '../shared/models/face_detection_yunet_2026may.onnx: model file not found'
    while `maskd run` and eval_scenes used the fetched file."""
    fetched = tmp_path / "face_detection_yunet_2026may.onnx"
    fetched.write_bytes(b"onnx")
    monkeypatch.setenv("MASKD_YUNET", str(fetched))
    cfg = ev.eval_config(None, [], jobs=1, cores=2)
    assert cfg.detector.kind == "yunet" and cfg.detector.model == fetched


def test_a_config_with_a_cameras_map_runs_as_its_first_camera(tmp_path: Path):
    """eval_config wrote a top-level source into the user's config: a cameras: map (which
    eval_scenes takes) was "'<top>': camera and source cannot be used together with cameras"."""
    f = tmp_path / "config.yaml"
    f.write_text("detector:\n  kind: blazeface\ntracking:\n  end_after_s: 4\ncameras:\n"
                 "  front:\n    source: {kind: opencv, uri: /dev/video0}\n"
                 "    tracking: {end_after_s: 1.5}\n"
                 "  back:\n    source: {kind: opencv, uri: /dev/video1}\n")
    cfg = ev.eval_config(f, ["classifier.threshold=0.8"], jobs=1, cores=2)
    assert cfg.camera == "front" and not cfg.cameras and cfg.tracking.end_after_s == 1.5
    assert cfg.detector.kind == "blazeface" and cfg.classifier.threshold == 0.8
    assert cfg.source.uri is None and cfg.mqtt.url is None
    clip = ev.clip_config(cfg, tmp_path / "c.avi", 15.0, tmp_path)
    assert clip.source.uri == str(tmp_path / "c.avi") and clip.camera == "front"
    assert ev.eval_config(f, ["tracking.end_after_s=2"], jobs=1).tracking.end_after_s == 2


@pytest.mark.shared
def test_a_missing_yunet_file_named_by_o_or_config_stops_the_run(scenes_dir: Path,
                                                                 tmp_path: Path):
    """Kind auto with a named YuNet file that is not there fell back to BlazeFace, and the run
    scored it as if it were YuNet; now it stops before any clip, naming the file."""
    import subprocess
    import sys

    missing = tmp_path / "nonexistent.onnx"
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"detector:\n  model: {missing}\n")
    for args in (["-o", f"detector.model={missing}"], ["--config", str(cfg)]):
        r = subprocess.run([sys.executable, ev.__file__, "--scenes", str(scenes_dir), "--kinds",
                            "walkup", "--limit", "1", "--jobs", "1", "--no-cache", *args],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(f"eval_video: YuNet model not found (detector.model {missing})")
        assert "Traceback" not in r.stderr and r.stdout == ""


def _eval_video(scenes_dir: Path, tmp_path: Path, *args: str):
    """tools/eval_video.py run as a process on one walk-up clip (cached under tmp_path)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, ev.__file__, "--scenes", str(scenes_dir), "--kinds",
                           "walkup", "--limit", "1", "--jobs", "1", "--cache",
                           str(tmp_path / "clips"), *args],
                          capture_output=True, text=True, timeout=300)


@pytest.mark.shared
def test_plots_and_sheet_on_a_read_only_disk_stop_before_the_run(scenes_dir: Path,
                                                                  tmp_path: Path):
    """out_dir only made the folder: a read-only one passed, and fig.savefig / save_sheet were
    a traceback after every clip had run."""
    from mqtt_broker import read_only_disk

    with read_only_disk(tmp_path / "ro") as ro:
        for args, place in ((["--plot", str(ro)], ro), (["--sheet", str(ro / "fa.png")], ro),
                            (["--json", str(ro / "r.json")], ro)):
            r = _eval_video(scenes_dir, tmp_path, *args)
            assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
            assert r.stderr == (f"{place}: cannot write in the output folder "
                                "(Read-only file system)\n")
            assert r.stdout == "" and not (tmp_path / "clips").exists()  # no clip was run


@pytest.mark.shared
def test_plots_and_sheet_that_do_not_fit_are_one_line_and_leave_nothing(scenes_dir: Path,
                                                                         tmp_path: Path):
    from mqtt_broker import fill_disk, small_disk

    with small_disk(tmp_path / "disk") as disk:
        (disk / "plots").mkdir()
        fill_disk(disk)
        for args, says in (
                (["--plot", str(disk / "plots")],
                 f"{disk / 'plots' / 'eval_video_latency.png'}: cannot write the figure"),
                (["--sheet", str(disk / "fa.png")], f"{disk / 'fa.png'}: cannot write the image")):
            r = _eval_video(scenes_dir, tmp_path, *args)
            assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
            assert r.stderr.splitlines()[-1] == f"{says} (No space left on device)"
            assert "walkup" in r.stdout  # the run itself was reported
        assert sorted(p.name for p in disk.rglob("*")) == ["filler", "plots"]


@pytest.mark.shared
def test_a_grid_that_cannot_start_is_one_line_and_refuses_plots(scenes_dir: Path,
                                                                 tmp_path: Path):
    """run_grid had no except for start-up errors: a missing model was a traceback through
    multiprocessing; and --plot/--sheet were silently ignored with --grid."""
    gone = tmp_path / "nonexistent.tflite"
    r = _eval_video(scenes_dir, tmp_path, "--jobs", "2", "--grid",
                    f"classifier.model={gone},{tmp_path / 'nope2.tflite'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines()[-1] == (f"eval_video: classifier.model={gone}: classifier.model: "
                                         f"{gone}: model file not found")
    for opt, value in (("--plot", tmp_path / "plots"), ("--sheet", tmp_path / "fa.png")):
        r = _eval_video(scenes_dir, tmp_path, "--grid", "tracking.end_after_s=1,2", opt,
                        str(value))
        assert r.returncode == 2 and "draw one run, not a --grid" in r.stderr, r.stderr
        assert not value.exists() and r.stdout == ""


def test_unknown_kind_is_refused():
    assert ev.main(["--kinds", "walkup,parade"]) == 2


# --------------------------------------------------------------------------- real run


@pytest.mark.shared
@pytest.mark.slow
def test_walkups_and_a_queue_through_the_real_loop(scenes_dir: Path, yunet_model: Path,
                                                   default_model: Path, tmp_path: Path, capsys):
    out = tmp_path / "report.json"
    args = ["--scenes", str(scenes_dir), "--kinds", "walkup,queue", "--limit", "2",
            "--queue-people", "3", "--jobs", "2", "--cache", str(tmp_path / "clips"),
            "--json", str(out), "--sheet", str(tmp_path / "fa.png")]
    assert ev.main(args) == 0
    table = capsys.readouterr().out
    assert "walkup" in table and "queue" in table and "total" in table
    report = json.loads(out.read_text())
    rows = report["summary"]
    assert (rows["walkup"]["clips"], rows["queue"]["clips"], rows["total"]["clips"]) == (2, 1, 3)
    assert Path(report["config"]["detector"]["model"]).name == yunet_model.name
    queue = [c for c in report["clips"] if c["kind"] == "queue"][0]
    assert len(queue["photos"]) == 3 and queue["frames"] == 3 * 30 + 2 * 15
    assert rows["queue"]["people"] == 3 and len(queue["queued"]) == 3
    for p in queue["queued"]:  # each queued face is judged and unmasked
        assert queue["people"][p]["judged"] and queue["people"][p]["label"] == "without_mask"
    for c in report["clips"]:
        assert c["frames_run"] == c["frames"]  # every frame reached the loop, in order
        assert c["counts"]["events"] == len(c["starts"])
        for s in c["starts"]:
            assert 0 <= s["frame"] < c["frames"]
            assert s["verdict"] in ("tp", "fa_masked", "fa_nobody", "incorrect", "small")
    for kind, m in rows.items():
        for key in ("recall", "precision", "f1", "masked_flagged"):
            assert m[key] is None or 0.0 <= m[key] <= 1.0, (kind, key)
        assert m["unmasked_hit"] <= m["unmasked"] and m["masked_hit"] <= m["masked"]
        if m["latency_median_s"] is not None:
            assert 0.0 <= m["latency_median_s"] <= m["latency_p90_s"] <= m["frames"] / 15
    total = rows["total"]
    assert total["events"] == rows["walkup"]["events"] + rows["queue"]["events"]
    assert total["unmasked"] == rows["walkup"]["unmasked"] + rows["queue"]["unmasked"]
    assert all(c["rendered"] for c in report["clips"])
    assert (tmp_path / "fa.png").is_file()
    # Other settings reuse the rendered clips.
    assert ev.main([*args, "-o", "tracking.end_after_s=1"]) == 0
    again = json.loads(out.read_text())
    assert not any(c["rendered"] for c in again["clips"])
    assert again["config"]["tracking"]["end_after_s"] == 1


def _cand(f1, masked=0.0, dup=0.0, lat=0.2, recall=0.95, queue=(20, 20, 20)):
    total = {"f1": f1, "masked_flagged": masked, "duplicates_per_person": dup,
             "latency_median_s": lat, "recall": recall}
    q = None if queue is None else dict(zip(("events", "queued_hit", "queued"), queue, strict=True))
    return {"total": total, "queue": q}


def test_grid_and_the_selection_rule():
    assert ev.grid_overrides(["a.b=1,2", "c.d=x"]) == [["a.b=1", "c.d=x"], ["a.b=2", "c.d=x"]]
    with pytest.raises(ev.ConfigError):
        ev.grid_overrides(["a.b"])
    cands = [
        _cand(0.95, masked=0.02),              # best F1 but flags 2 % of masked people
        _cand(0.91, lat=0.5),                  # qualifies
        _cand(0.905, lat=0.3),                 # qualifies, within 0.01: tie -> lower latency
        _cand(0.93, queue=(19, 12, 20)),       # queue count fine, but 8 queued people missed
        _cand(0.92, dup=0.1),                  # too many duplicates
    ]
    assert ev.pick(cands) == 2
    # Nobody qualifies: the lowest masked share among recall >= 0.92, else the best F1.
    assert ev.pick([_cand(0.9, masked=0.05), _cand(0.8, masked=0.03)]) == 1
    assert ev.pick([_cand(0.9, masked=0.05, recall=0.9), _cand(0.8, masked=0.03, recall=0.8)]) == 0


def test_a_grey_clip_is_its_own_clip_of_grey_frames(tmp_path: Path):
    """--grey (night: a camera in infrared) renders the same walk-up from the photo made grey,
    cached under its own key; the colour clip's key is what it was without the option."""
    path = tmp_path / "colour.jpg"
    rng = np.random.default_rng(1)
    cv2.imwrite(str(path), rng.integers(0, 256, (300, 400, 3), np.uint8))
    sc = ev.Scene(path, np.array([[20.0, 30.0, 44.0, 60.0]]), ["without_mask"])
    plan = ev.walkup_clip(sc, seed=0, frames=4)
    night = replace(plan, grey=True)
    assert ev.clip_key(night) != ev.clip_key(plan)
    assert ev.clip_key(replace(night, grey=False)) == ev.clip_key(plan)
    clip, _ = ev.ensure_clip(night, tmp_path / "clips")
    cap = cv2.VideoCapture(str(clip))
    ok, frame = cap.read()
    cap.release()
    assert ok
    spread = frame.astype(int).max(axis=2) - frame.astype(int).min(axis=2)
    assert spread.mean() < 2  # equal channels, but for the MJPEG's chroma rounding


# --------------------------------------------------------------------------- mutants that lived


def test_a_big_face_fills_face_fill_of_the_last_window_and_a_huge_one_stays_put():
    """The zoom is capped where the face fills FACE_FILL of the last window (not more, not
    less); a face too big to zoom into at all leaves every window the whole photo (no NaN)."""
    big = np.array([100.0, 50.0, 300.0, 200.0])  # 150 px tall: the cap is 300 * 0.8 / 150 = 1.6
    last = ev.zoom_windows((400, 300), big)[-1]
    assert (last[3] - last[1]) * ev.FACE_FILL == pytest.approx(150.0)
    wins = ev.zoom_windows((400, 300), np.array([0.0, 0.0, 400.0, 300.0]))
    assert np.isfinite(wins).all() and wins == pytest.approx(np.tile([0, 0, 400, 300], (ev.FRAMES, 1)))


def test_a_pan_crosses_the_photo_along_its_longer_free_axis_level_with_the_faces():
    """A wide photo: the half-size window goes from its left edge to its right edge at a
    constant speed (reverse: right to left), its centre at the faces' median height."""
    boxes = np.array([[100, 180, 140, 220], [300, 190, 340, 230], [500, 330, 540, 370]])
    wins = ev.pan_windows((800, 400), boxes, frames=5)
    size = np.array([800.0, 600.0]) / ev.PAN_ZOOM  # the letterboxed whole photo, halved
    assert (wins[:, 2:] - wins[:, :2]) == pytest.approx(np.tile(size, (5, 1)))
    assert wins[0, 0] == pytest.approx(0) and wins[-1, 2] == pytest.approx(800)
    assert np.diff(wins[:, 0]) == pytest.approx([100.0] * 4)
    assert (wins[:, 1] + wins[:, 3]) / 2 == pytest.approx([210.0] * 5)  # median, not mean 253
    back = ev.pan_windows((800, 400), boxes, frames=5, reverse=True)
    assert back == pytest.approx(wins[::-1])
    # a tall photo pans down
    tall = ev.pan_windows((300, 900), boxes[:, [1, 0, 3, 2]], frames=3)
    assert np.ptp(tall[:, 0]) == pytest.approx(0) and np.ptp(tall[:, 1]) > 0


def test_a_box_out_of_view_on_both_axes_is_not_visible_and_exactly_half_is():
    view = np.array([0.0, 0.0, 640.0, 480.0])
    outside = np.array([[-100, -100, -50, -50], [-100, 100, -50, 150], [100, 500, 150, 550]])
    assert ev.visible_fraction(outside, view).tolist() == [0.0, 0.0, 0.0]
    sc = ev.Scene(Path("unused.jpg"), np.array([[620, 100, 660, 150]]), ["without_mask"])
    frames = [[ev.Layer(0, IDENTITY, np.array([0.0, 0.0, 800.0, 600.0]))]]
    truth = ev.clip_truth(ev.ClipPlan("test", "t", [sc], frames))
    assert truth[0, 0].tolist() == [620, 100, 640, 150]  # exactly VISIBLE in view: judged


def test_an_event_on_the_last_frame_and_at_exactly_iou_0_3_counts():
    truth = _person([0, 0, 100, 100], range(3), 3)[:, None]
    assert ev.assign_starts([2, 2], np.array([[0, 0, 100, 100], [0, 0, 100, 30]]),
                            truth).tolist() == [0, 0]


def test_latency_runs_from_when_the_person_came_into_view():
    s = ev.score_clip(_person([0, 0, 50, 50], range(5, 20))[:, None], ["without_mask"], [8],
                      np.array([[0, 0, 50, 50]]), fps=15.0)
    assert s["latency_s"] == pytest.approx([3 / 15])
    many = [ev.score_clip(_person([0, 0, 50, 50], range(20))[:, None], ["without_mask"], [k],
                          np.array([[0, 0, 50, 50]]), fps=1.0) for k in range(11)]
    m = ev.summarize(many)
    assert (m["latency_median_s"], m["latency_p90_s"]) == (5.0, 9.0)
