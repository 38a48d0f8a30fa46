"""Scene crops for training (tools/scene_crops.py) and train.py's scene and hard-case additions.

Pure functions on synthetic images, except one test on three real train-part photos.
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from maskd.config import DetectorConfig
from maskd.geometry import crop_face
from tools import scene_crops, train
from tools.eval_scenes import photo_part
from tools.scene_crops import SceneCrops


def _image(h: int = 240, w: int = 320, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _crops(stems: list[str], size: int = 8) -> SceneCrops:
    n = len(stems)
    return SceneCrops(np.zeros((n, size, size, 3), np.uint8), np.arange(n, dtype=np.int64) % 2,
                      stems, ["annotated"] * n, np.ones(n), sorted(set(stems)))


def test_cut_faces_cuts_annotated_and_detected_boxes_as_the_device_does() -> None:
    frame = _image()
    boxes = np.array([[40, 40, 100, 110],     # with_mask, detected
                      [150, 50, 200, 110],    # without_mask, missed: annotated crop only
                      [220, 60, 270, 120],    # mask_weared_incorrect: no class
                      [10, 200, 20, 212]],    # with_mask, 10 px: too small
                     np.float64)
    names = ["with_mask", "without_mask", "mask_weared_incorrect", "with_mask"]
    det = np.array([[44, 36, 104, 108], [280, 150, 310, 190]], np.float64)  # 2nd: no face
    crops, skipped = scene_crops.cut_faces(frame, boxes, names, det, np.array([0.9, 0.95]),
                                           margin=0.15)
    assert [(label, kind) for _, label, kind in crops] == [
        (0, "annotated"), (0, "detected"), (1, "annotated")]
    assert np.array_equal(crops[0][0], crop_face(frame, tuple(boxes[0]), 0.15))
    assert np.array_equal(crops[1][0], crop_face(frame, tuple(det[0]), 0.15))
    assert np.array_equal(crops[2][0], crop_face(frame, tuple(boxes[1]), 0.15))
    assert skipped == {"mask_weared_incorrect": 1, "small": 1, "missed": 1}


def test_camera_frame_fits_the_device_frame_and_zooms() -> None:
    photo = _image(300, 400)
    frame, scale = scene_crops.camera_frame(photo, 1.0, quality=None)
    assert frame.shape == (480, 640, 3) and scale == pytest.approx(1.6)
    frame, scale = scene_crops.camera_frame(photo, 2.0)
    assert frame.shape == (960, 1280, 3) and frame.dtype == np.uint8 and scale == pytest.approx(3.2)


def test_split_by_photo_never_puts_a_photo_on_both_sides() -> None:
    stems = [f"photo{i}" for i in range(300) for _ in range(3)]
    train_part, val_part = scene_crops.split_by_photo(_crops(stems))
    assert not set(train_part.stems) & set(val_part.stems)
    assert not set(train_part.photos) & set(val_part.photos)
    assert len(train_part.labels) + len(val_part.labels) == len(stems)
    assert 0.08 < len(val_part.photos) / 300 < 0.22
    # The side follows from the name alone, pinned here so a run's scene-val set never drifts.
    assert len(val_part.photos) == 36
    assert [i for i in range(30) if scene_crops.scene_val_photo(f"maksssksksss{i}")] == [
        3, 22, 24, 26, 27]


def test_example_weights_balance_classes_and_average_one() -> None:
    labels = np.array([0] * 6 + [1] * 2 + [0] * 8 + [1] * 2)
    source = np.array([1.0] * 8 + [3.0] * 10)
    w, class_weight = train.example_weights(labels, source)
    assert w.mean() == pytest.approx(1.0)
    assert w[labels == 0].sum() == pytest.approx(w[labels == 1].sum())
    assert w[10] / w[0] == pytest.approx(3.0)  # a scene crop weighs 3 paper images, same class
    w_val, again = train.example_weights(np.array([0, 1]), np.array([1.0, 3.0]), class_weight)
    assert again is class_weight and w_val.tolist() == pytest.approx(
        [class_weight[0], 3 * class_weight[1]])


def test_join_scenes_appends_crops_to_train_and_val() -> None:
    data = {p: (np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 0, 1, 1])) for p in ("train", "val")}
    scenes = {"train": _crops(["a", "a", "b"]), "val": _crops(["c"])}
    w_train, w_val, summary = train.join_scenes(data, scenes, 3.0)
    assert len(data["train"][1]) == len(w_train) == 7 and len(data["val"][1]) == len(w_val) == 5
    assert data["train"][1][4:].tolist() == scenes["train"].labels.tolist()
    assert summary["counts"] == {"train": {"mask": 2, "no_mask": 1}, "val": {"mask": 1, "no_mask": 0}}
    assert 0 < summary["scene_share_of_training_weight"] < 1


HARD = [train.yaw_squeeze, train.occlude, train.edge_cut, train.motion_blur, train.hue_jitter]


@pytest.mark.parametrize("fn", HARD + ["hard", "device", "colour"], ids=lambda f: getattr(f, "__name__", f))
def test_augmentations_keep_shape_and_dtype_and_are_deterministic_per_seed(fn) -> None:
    img = _image(96, 96)
    if isinstance(fn, str):
        kind = fn

        def fn(im, rng):
            return train.augment_image(im, rng, kind)
    for seed in range(5):
        a = fn(img, np.random.default_rng(seed))
        b = fn(img, np.random.default_rng(seed))
        assert a.shape == img.shape and a.dtype == np.uint8
        assert np.array_equal(a, b)
    assert not np.array_equal(fn(img, np.random.default_rng(1)), img)


def test_edge_cut_repeats_the_edge_row_or_column_over_20_to_50_percent() -> None:
    img = _image(100, 100)
    for seed in range(20):
        out = train.edge_cut(img, np.random.default_rng(seed))
        changed = np.any(out != img, axis=2)
        rows, cols = np.flatnonzero(changed.any(1)), np.flatnonzero(changed.any(0))
        strip = out[:, cols] if len(rows) == 100 else out[rows]  # the padded band
        axis = 1 if len(rows) == 100 else 0
        assert 20 <= strip.shape[axis] <= 50
        assert np.all(strip == np.take(strip, [0], axis=axis))


def test_colour_differs_from_hard_and_hue_jitter_turns_only_coloured_pixels() -> None:
    """"colour" changes what "hard" gives; hue_jitter turns hues and keeps grey pixels grey."""
    img = _image(64, 64)
    n = 40
    hard = [train.augment_image(img, np.random.default_rng(s), "hard") for s in range(n)]
    colour = [train.augment_image(img, np.random.default_rng(s), "colour") for s in range(n)]
    assert sum(np.array_equal(a, b) for a, b in zip(hard, colour, strict=True)) < n // 2
    grey = np.full((32, 32, 3), 100, np.uint8)
    for s in range(10):
        out = train.hue_jitter(grey, np.random.default_rng(s))
        assert np.abs(out.astype(int) - 100).max() <= 1  # no saturation: nothing to turn
    skin = np.zeros((8, 8, 3), np.uint8)
    skin[:] = (200, 140, 110)
    hues = {int(cv2.cvtColor(train.hue_jitter(skin, np.random.default_rng(s)), cv2.COLOR_RGB2HSV)[0, 0, 0])
            for s in range(10)}
    assert len(hues) > 3


def test_crops_are_detected_at_the_door_input_size_at_every_zoom() -> None:
    """`run`'s live input (320x240, times the zoom), as m128t's crops were cut: eval_scenes'
    "yunet" variant turned to scan's 640x480 and changed train --scenes' data without a word."""
    live = DetectorConfig()
    for zoom in scene_crops.ZOOMS:
        cfg = scene_crops.detector_config(zoom, 0.5)
        assert (cfg.input_width, cfg.input_height) == (live.input_width, live.input_height)
        assert cfg.upscale == zoom and cfg.score_threshold == 0.5 and cfg.kind == "yunet"


def test_crops_are_cut_with_the_detector_settings_the_shipped_model_was_trained_on() -> None:
    """The shipped split.json records the detector its scene crops came from: the recorded
    train command (--scene-score 0.5) must cut them with the same settings again."""
    split = Path(__file__).resolve().parents[1] / "models" / "maskd_mobilenetv2_split.json"
    shipped = json.loads(split.read_text())["scenes"]["settings"]["detector"]
    for zoom in scene_crops.ZOOMS:
        cfg = scene_crops.detector_config(zoom, 0.5).model_dump(mode="json")
        want = shipped[f"{zoom:g}x"]
        assert {k: cfg[k] for k in want if k != "model"} == {k: v for k, v in want.items()
                                                              if k != "model"}


def test_occlude_bare_mouths_gives_the_draws_m128t_was_trained_with() -> None:
    """m128t predates the bare-mouth rule (MODEL_CARD: m128v is "as m128t, no occluder over a
    bare mouth"), so its recorded command needs a way back to those views: the same draws, the
    label not used. Without the flag a no_mask face's views differ (the rule)."""
    args = train.parse_args(["--out", "unused", "--views", "2", "--batch", "4",
                             "--occlude-bare-mouths"])
    images = np.random.default_rng(3).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    bare = np.full(8, train.dataset.LABELS.index("no_mask"))

    class Echo:
        def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
            return np.asarray(x).reshape(len(x), -1)

    before_rule = train.base_features(Echo(), images, args)  # no labels: no rule
    assert np.array_equal(train.base_features(Echo(), images, args, bare), before_rule)
    args.occlude_bare_mouths = False
    assert not np.array_equal(train.base_features(Echo(), images, args, bare), before_rule)


def test_occluder_covers_at_most_about_30_percent() -> None:
    img = np.full((96, 96, 3), 128, np.uint8)
    for seed in range(30):
        covered = np.any(train.occlude(img, np.random.default_rng(seed)) != img, axis=2).mean()
        assert 0.0 < covered <= 0.33


@pytest.mark.shared
def test_crops_of_three_real_train_photos(scenes_dir: Path, yunet_model: Path) -> None:
    crops = scene_crops.scene_crops(scenes_dir, "train", size=64, limit=3)
    assert len(crops.photos) == 3 and all(photo_part(p) == "train" for p in crops.photos)
    n = len(crops.labels)
    assert n > 0 and crops.images.shape == (n, 64, 64, 3) and crops.images.dtype == np.uint8
    assert set(crops.labels.tolist()) <= {0, 1} and len(crops.stems) == n
    assert set(crops.stems) <= set(crops.photos)
    assert set(crops.kinds) <= {"annotated", "detected"} and set(crops.zooms) <= {1.0, 2.0}
    assert crops.settings["part"] == "train" and crops.settings["margin"] == 0.15


def _scene_set(root: Path, objects: dict[str, list[tuple[str, int, int, int, int]]]) -> Path:
    """A scene folder: one 320x240 photo per entry and its VOC annotation of ``objects``."""
    (root / "annotations").mkdir(parents=True)
    (root / "images").mkdir()
    for n, (stem, boxes) in enumerate(objects.items()):
        cv2.imwrite(str(root / "images" / f"{stem}.png"), _image(seed=n))
        xml = "".join(f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
                      f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
                      for name, x0, y0, x1, y1 in boxes)
        (root / "annotations" / f"{stem}.xml").write_text(f"<annotation>{xml}</annotation>")
    return root


@pytest.mark.shared
def test_a_bad_annotation_is_left_out_and_named(tmp_path: Path, yunet_model: Path, capsys) -> None:
    """An unknown label or a box outside the photo used to stop scene_crops (and train.py
    --scenes, convert.py --calibration-scenes) with a traceback; now the photo with a box
    outside is left out and named, as eval_scenes.py does, and an object of another class
    (`person`) is left out of its photo, named, the photo's faces kept."""
    root = _scene_set(tmp_path / "scenes", {
        "good": [("with_mask", 40, 40, 100, 110), ("without_mask", 150, 50, 200, 110)],
        "person": [("with_mask", 40, 40, 100, 110), ("person", 150, 50, 200, 110)],
        "outside": [("without_mask", 400, 10, 450, 60)]})
    assert scene_crops.main(["--scenes", str(root), "--part", "all", "--size", "32",
                             "--zooms", "1"]) == 0
    out, err = capsys.readouterr()
    assert "2 photos (all), 3 crops" in out
    assert "person.xml: object 1 ('person') left out: not one of with_mask" in err
    assert "outside.xml" in err and "lies outside the 320x240 photo" in err
    assert "scene_crops: 1 photo(s) skipped" in err
    crops = scene_crops.scene_crops(root, "all", 32, zooms=(1.0,))
    assert crops.photos == ["good", "person"] and len(crops.skipped_photos) == 1
    assert crops.subset(crops.labels >= 0).skipped_photos == crops.skipped_photos


def test_occluder_on_a_bare_face_leaves_the_mouth_alone() -> None:
    """No skin-toned patch over a bare mouth: it would teach that a beige mask is skin."""
    img = np.full((96, 96, 3), 128, np.uint8)

    def mouth_covered(bare: bool) -> float:
        outs = [train.occlude(img, np.random.default_rng(seed), bare=bare) for seed in range(60)]
        return float(np.mean([np.any(o[72:] != img[72:], axis=2).mean() for o in outs]))

    assert mouth_covered(bare=True) < 0.03 < 0.1 < mouth_covered(bare=False)


def test_crops_are_cut_in_frame_pixels_as_rgb_and_counted_once_per_face(
        tmp_path: Path, monkeypatch) -> None:
    """Each crop is the frame's (the photo scaled to the 640x480 frame) cut of the box scaled
    with it, as RGB; a face of exactly min_px is kept, one below is not; a detection at IoU
    0.3-0.5 still gives the "detected" cut (IoU >= 0.3, as eval_scenes); a face of no class is
    counted once however many zooms; a square photo fits the frame's height."""
    from maskd.classifier import resize_square
    from maskd.types import Face
    from tools.eval_scenes import stored_pixels

    root = _scene_set(tmp_path / "scenes", {"p": [  # 320x240: scale 2 to the frame
        ("with_mask", 40, 40, 100, 110), ("without_mask", 150, 50, 158, 58),  # 16 px in frame
        ("with_mask", 200, 50, 207.5, 60), ("mask_weared_incorrect", 220, 60, 270, 120)]})
    det = (140.0, 80.0, 260.0, 220.0)  # the first face's frame box moved by half its width: IoU 1/3

    class Fake:
        def detect(self, image: np.ndarray) -> list[Face]:
            return [Face(det, 0.9)] if image.shape[1] == 640 else []

    monkeypatch.setattr(scene_crops, "make_detector", lambda cfg: Fake())
    crops = scene_crops.scene_crops(root, "all", 32, zooms=(1.0, 2.0), margin=0.15)
    frame, scale = scene_crops.camera_frame(stored_pixels(root / "images" / "p.png"), 1.0)
    assert scale == 2.0
    want = crop_face(frame, (80.0, 80.0, 200.0, 220.0), 0.15)[..., ::-1]
    assert np.array_equal(crops.images[0], resize_square(np.ascontiguousarray(want), 32))
    assert [(k, z) for k, z in zip(crops.kinds, crops.zooms, strict=True)] == [
        ("annotated", 1.0), ("detected", 1.0), ("annotated", 1.0),
        ("annotated", 2.0), ("annotated", 2.0), ("annotated", 2.0)]
    assert crops.skipped["mask_weared_incorrect"] == 1 and crops.skipped["small@1x"] == 1
    assert scene_crops.camera_frame(_image(400, 400), quality=None)[0].shape == (480, 480, 3)


@pytest.mark.shared
def test_a_photo_whose_name_is_not_utf8_is_cut_like_the_others(tmp_path: Path,
                                                               yunet_model: Path) -> None:
    """A scene photo named in Latin-1 (caf\\xe9.png, an old zip): OpenCV's imread given that
    name killed the process with SIGSEGV (scene_crops, and so train.py --scenes and evaluate.py
    --voc, ended without a word), and its train/select part was a UnicodeEncodeError. Run in a
    child process, so that a crash is this test's failure. Now it gives its crops."""
    import os
    import subprocess
    import sys

    boxes = [("with_mask", 40, 40, 100, 110), ("without_mask", 150, 50, 200, 110)]
    root = _scene_set(tmp_path / "scenes", {"good": boxes, "cafe": boxes})
    for sub, suffix in (("images", ".png"), ("annotations", ".xml")):
        os.rename(root / sub / f"cafe{suffix}",
                  os.fsdecode(bytes(root / sub) + b"/caf\xe9" + suffix.encode()))
    run = subprocess.run([sys.executable, scene_crops.__file__, "--scenes", str(root), "--part",
                          "all", "--size", "32", "--zooms", "1"], capture_output=True, text=True,
                         cwd=Path(scene_crops.__file__).parents[1], timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(scene_crops.__file__).parents[1])})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "2 photos (all), 4 crops" in run.stdout and "skipped" not in run.stderr
