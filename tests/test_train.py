"""tools/train.py's parts pinned by what they must do, each found by a hand-made mutant the
suite did not kill: the head's layers, the augmentation's draws and colours, the label each
view is drawn with, the weights each batch carries, the scene split and the run's record.

Pure functions on synthetic images and, at the end, short runs of a 32 px model with random
base weights (seconds, no ../shared data).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import noise_dataset

from tools import dataset, train
from tools.scene_crops import SceneCrops

MASK, NO_MASK = dataset.LABELS.index("mask"), dataset.LABELS.index("no_mask")


def _image(size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("size", ["0", "-32", "100"])
def test_size_must_be_a_positive_multiple_of_32(size: str, capsys) -> None:
    """--size 0 and -32 are multiples of 32 too: the check must also refuse them (below 32 the
    head has no S/32 feature map to pool)."""
    with pytest.raises(SystemExit) as exc:
        train.parse_args(["--out", "runs/never", "--size", size])
    assert exc.value.code == 2 and "--size must be a multiple of 32" in capsys.readouterr().err


@pytest.mark.parametrize("spelt", ["none", "None", "NONE"])
def test_weights_none_is_random_init_however_it_is_spelt(monkeypatch, spelt: str) -> None:
    asked = []
    monkeypatch.setattr(train, "build_model", lambda size, alpha, weights, seed: (
        asked.append(weights), (None, None))[1])
    train.checked_model(train.parse_args(["--out", "unused", "--weights", spelt]))
    assert asked == [None]


# --------------------------------------------------------------------------- augmentation


def test_flips_are_left_right_never_upside_down() -> None:
    """A face is mirrored left-right (half the draws), never turned upside down."""
    img = np.zeros((64, 64, 3), np.uint8)
    img[:32, :32] = 255  # bright top-left quarter
    tops, lefts = [], []
    for seed in range(40):
        out = train.augment_image(img, np.random.default_rng(seed), "seed").astype(float)
        tops.append(out[:32].mean() > out[32:].mean())
        lefts.append(out[:, :32].mean() > out[:, 32:].mean())
    assert all(tops)
    assert 10 < sum(lefts) < 30


def _count_calls(monkeypatch, names: list[str]) -> dict[str, list]:
    """Replace train's hard-case functions by ones that record their calls (and change nothing)."""
    calls: dict[str, list] = {n: [] for n in names}
    for name in names:
        def fake(img, rng, *args, _name=name, **kw):
            calls[_name].append(kw.get("bare", args[0] if args else None))
            return img
        monkeypatch.setattr(train, name, fake)
    return calls


HARD_FNS = {"yaw": "yaw_squeeze", "occlude": "occlude", "blur": "motion_blur", "edge": "edge_cut",
            "hue": "hue_jitter"}


@pytest.mark.parametrize("kind", ["none", "seed", "device", "hard", "colour"])
def test_each_hard_case_is_drawn_as_often_as_hard_p_says(monkeypatch, kind: str) -> None:
    """hard: yaw 25 %, occluders 30 %, blur 25 %, frame edges 15 %; colour also hue 50 %; the
    other kinds none of them (a probability compared the wrong way, an edge cut also for
    'device', or a case never applied would each train another model than the recipe says)."""
    calls = _count_calls(monkeypatch, list(HARD_FNS.values()))
    img = _image(32)
    n = 600
    for seed in range(n):
        train.augment_image(img, np.random.default_rng(seed), kind, MASK)
    for case, name in HARD_FNS.items():
        want = train.HARD_P[case] if kind == "colour" or (kind == "hard" and case != "hue") else 0
        assert len(calls[name]) / n == pytest.approx(want, abs=0.06), (case, kind)


def test_occluders_keep_off_the_mouth_of_no_mask_faces_only(monkeypatch) -> None:
    """The bare-mouth rule goes by the label: a no_mask face gets ``bare``, a mask face and an
    unknown label (--occlude-bare-mouths) do not."""
    calls = _count_calls(monkeypatch, ["occlude"])
    for label, bare in ((NO_MASK, True), (MASK, False), (None, False)):
        calls["occlude"].clear()
        for seed in range(30):
            train.augment_image(_image(32), np.random.default_rng(seed), "hard", label)
        assert calls["occlude"] and set(calls["occlude"]) == {bare}, label


def test_motion_blur_keeps_the_brightness() -> None:
    """The line kernel sums to one: a flat face stays as bright as it was."""
    grey = np.full((48, 48, 3), 120, np.uint8)
    for seed in range(10):
        assert np.abs(train.motion_blur(grey, np.random.default_rng(seed)).astype(int) - 120).max() <= 1


def test_hue_jitter_turns_red_by_at_most_40_degrees() -> None:
    """The image is RGB: read as BGR, a red face came back blue."""
    red = np.zeros((8, 8, 3), np.uint8)
    red[:] = (200, 40, 40)
    for seed in range(20):
        out = train.hue_jitter(red, np.random.default_rng(seed))
        hue = int(cv2.cvtColor(out, cv2.COLOR_RGB2HSV)[0, 0, 0])
        assert min(hue, 180 - hue) <= 21, (seed, out[0, 0])
        assert out[0, 0, 0] > out[0, 0, 2]


def test_device_views_keep_the_colours_through_jpeg_and_light() -> None:
    """Every 'device' view of a red face stays red (JPEG is written and read as RGB, the
    light change is clipped, grey frames are grey); a white face is not wrapped round to dark."""
    red = np.zeros((32, 32, 3), np.uint8)
    red[:] = (200, 30, 30)
    white = np.full((32, 32, 3), 255, np.uint8)
    for seed in range(60):
        out = train.augment_image(red, np.random.default_rng(seed), "device").astype(int)
        r, b = out[..., 0].mean(), out[..., 2].mean()
        assert r > b + 50 or abs(r - b) < 2, (seed, r, b)  # red, or a grey (IR-like) frame
        assert train.augment_image(white, np.random.default_rng(seed), "device").min() >= 150


def test_edge_cut_repeats_the_last_kept_row_or_column_over_the_drawn_share() -> None:
    """The band is exactly round(u * S) wide (u the drawn 20-50 %) on every side, and holds
    the row/column next to it, as crop_face pads past the image border."""
    s = 50
    img = _image(s)
    sides = set()
    for seed in range(40):
        rng = np.random.default_rng(seed)
        k, side = int(round(rng.uniform(0.2, 0.5) * s)), int(rng.integers(4))
        sides.add(side)
        out = train.edge_cut(img, np.random.default_rng(seed))
        keep = {0: (slice(None), slice(k, None)), 1: (slice(None), slice(0, s - k)),
                2: (slice(k, None),), 3: (slice(0, s - k),)}[side]
        assert np.array_equal(out[keep], img[keep])
        band = {0: img[:, k : k + 1], 1: img[:, s - k - 1 : s - k], 2: img[k : k + 1],
                3: img[s - k - 1 : s - k]}[side]
        cut = {0: out[:, :k], 1: out[:, s - k :], 2: out[:k], 3: out[s - k :]}[side]
        assert np.array_equal(cut, np.broadcast_to(band, cut.shape)), (seed, side, k)
    assert sides == {0, 1, 2, 3}


# --------------------------------------------------------------------------- batches and views


def _record_labels(monkeypatch) -> list:
    """augment_image replaced by one that records the label it is told and marks the image."""
    seen: list = []

    def fake(img, rng, kind, label=None):
        seen.append(label)
        return img
    monkeypatch.setattr(train, "augment_image", fake)
    return seen


def test_each_view_is_drawn_with_its_own_images_label(monkeypatch) -> None:
    """base_features tells the augmentation each image's own label, batch after batch (the
    bare-mouth rule), and every view is drawn anew (not the same view 'views' times)."""
    images = np.stack([_image(32, seed) for seed in range(10)])
    labels = np.array([MASK] * 4 + [NO_MASK] * 6)
    args = train.parse_args(["--out", "unused", "--views", "3", "--batch", "4"])

    class Echo:
        def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
            return np.asarray(x).reshape(len(x), -1)

    seen = _record_labels(monkeypatch)
    feats = train.base_features(Echo(), images, args, labels)
    assert feats.shape == (3, 10, 32 * 32 * 3)
    assert seen == labels.tolist() * 3
    monkeypatch.undo()
    feats = train.base_features(Echo(), images, args, labels)
    assert not np.array_equal(feats[0], feats[1]) and not np.array_equal(feats[1], feats[2])


def test_batches_carry_their_images_labels_and_weights(monkeypatch) -> None:
    """--views 0: each batch's labels and loss weights are those of its images, in its order,
    and the augmentation is told the label (unless --occlude-bare-mouths)."""
    pytest.importorskip("keras")
    x = np.stack([np.full((8, 8, 3), 10 * i, np.uint8) for i in range(10)])
    y = np.array([MASK, NO_MASK] * 5)
    w = np.arange(10, dtype=np.float32) + 1
    seen = _record_labels(monkeypatch)
    batches = train.make_batches(x, y, 4, "hard", seed=1, weights=w)
    for _ in range(2):
        for i in range(len(batches)):
            imgs, labels, weights = batches[i]
            idx = np.round((imgs[:, 0, 0, 0] + 1) * 127.5 / 10).astype(int)  # which image
            assert labels.tolist() == y[idx].tolist() and weights.tolist() == w[idx].tolist()
        batches.on_epoch_end()
    assert seen == [int(v) for v in y[np.concatenate([
        np.random.default_rng([1, e]).permutation(10) for e in (0, 1)])]]
    seen.clear()
    batches = train.make_batches(x, y, 4, "hard", seed=1, bare_mouth_rule=False)
    batches[0]
    assert seen == [None] * 4


def test_feature_batches_use_every_view_and_carry_the_weights() -> None:
    """Each epoch every image once, through a randomly chosen view (over epochs: all of them),
    with its own label and loss weight."""
    pytest.importorskip("keras")
    views, n = 3, 10
    feats = np.zeros((views, n, 2), np.float32)
    feats[..., 0] = np.arange(views)[:, None]  # which view
    feats[..., 1] = np.arange(n)[None, :]  # which image
    y = np.array([MASK, NO_MASK] * 5)
    w = np.arange(n, dtype=np.float32) + 1
    batches = train.feature_batches(feats, y, 4, seed=0, weights=w)
    used = set()
    for _ in range(4):
        got = []
        for i in range(len(batches)):
            f, labels, weights = batches[i]
            idx = f[:, 1].astype(int)
            assert labels.tolist() == y[idx].tolist() and weights.tolist() == w[idx].tolist()
            got += idx.tolist()
            used |= set(f[:, 0].astype(int).tolist())
        assert sorted(got) == list(range(n))
        batches.on_epoch_end()
    assert used == set(range(views))
    plain = train.feature_batches(feats, y, 4, seed=0)  # no scene crops: no weights
    used = set()
    for _ in range(4):
        for i in range(len(plain)):
            f, labels = plain[i]
            assert labels.tolist() == y[f[:, 1].astype(int)].tolist()
            used |= set(f[:, 0].astype(int).tolist())
        plain.on_epoch_end()
    assert used == set(range(views))


# --------------------------------------------------------------------------- scenes


def _crops(stems: list[str], labels: list[int], size: int = 8) -> SceneCrops:
    n = len(stems)
    return SceneCrops(np.zeros((n, size, size, 3), np.uint8), np.array(labels, np.int64),
                      stems, ["annotated"] * n, np.ones(n), sorted(set(stems)))


def test_scene_val_crops_are_weighed_with_the_training_class_weights() -> None:
    """The val_loss that picks the epoch weighs a scene-val crop as training weighs it: the
    scene weight times the TRAINING set's class weight (not one of its own), and the share of
    the training weight that scene crops hold is theirs, not the first images'."""
    data = {"train": (np.zeros((4, 8, 8, 3), np.uint8), np.array([MASK, MASK, MASK, NO_MASK])),
            "val": (np.zeros((2, 8, 8, 3), np.uint8), np.array([MASK, NO_MASK]))}
    scenes = {"train": _crops(["a", "a", "b"], [MASK, MASK, NO_MASK]),
              "val": _crops(["c", "c"], [MASK, MASK])}
    w_train, w_val, summary = train.join_scenes(data, scenes, 3.0)
    source = np.array([1, 1, 1, 1, 3, 3, 3], float)
    want, cw = train.example_weights(data["train"][1], source)
    assert w_train.tolist() == pytest.approx(want.tolist())
    assert w_val.tolist() == pytest.approx([cw[MASK], cw[NO_MASK], 3 * cw[MASK], 3 * cw[MASK]])
    assert summary["class_weight"] == {"mask": round(cw[MASK], 4), "no_mask": round(cw[NO_MASK], 4)}
    assert summary["scene_share_of_training_weight"] == pytest.approx(
        round(want[4:].sum() / want.sum(), 4))


def test_scene_crops_come_from_the_train_part_only(monkeypatch) -> None:
    """--scenes never reads the select part (the part the model is chosen on)."""
    from tools import scene_crops

    asked = []

    def fake(root, part, size, **kw):
        asked.append(part)
        return _crops(["maksssksksss3", "maksssksksss5"], [MASK, NO_MASK])
    monkeypatch.setattr(scene_crops, "scene_crops", fake)
    args = train.parse_args(["--out", "unused", "--scenes", "somewhere", "--size", "64"])
    crops, sc_train, sc_val = train.scene_data(args)
    assert asked == ["train"]
    assert sc_val.photos == ["maksssksksss3"] and sc_train.photos == ["maksssksksss5"]


# --------------------------------------------------------------------------- the head


@pytest.fixture(scope="module")
def seed_model():
    pytest.importorskip("keras")
    return train.build_model(32, 1.0, None, seed=7)


def test_the_head_is_the_seed_recipes(seed_model) -> None:
    """AveragePooling(S/32) -> Flatten -> Dense(128, relu) -> Dropout(0.5) -> Dense(2, softmax)
    on a frozen base: only the head's 4 weight tensors train while the base is frozen."""
    model, base = seed_model
    names = [ly.name for ly in model.layers]
    assert names[-5:] == ["head_pool", "head_flatten", "head_dense", "head_dropout", "probs"]
    cfg = {n: model.get_layer(n).get_config() for n in names[-5:]}
    assert tuple(cfg["head_pool"]["pool_size"]) == (1, 1)
    assert cfg["head_dense"]["units"] == 128 and cfg["head_dense"]["activation"] == "relu"
    assert cfg["head_dropout"]["rate"] == 0.5
    assert cfg["probs"]["units"] == 2 and cfg["probs"]["activation"] == "softmax"
    assert not base.trainable and len(model.trainable_weights) == 4
    assert model.output_shape == (None, 2)


def test_the_same_seed_gives_the_same_head_whatever_ran_before(seed_model) -> None:
    import keras

    keras.utils.set_random_seed(1234)  # the global state moves on; the head must not
    again, _ = train.build_model(32, 1.0, None, seed=7)
    for name in ("head_dense", "probs"):
        for a, b in zip(seed_model[0].get_layer(name).get_weights(), again.get_layer(name).get_weights(),
                        strict=True):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- whole runs


def _stand_in_base(input_shape, alpha, include_top, weights):
    """A small stand-in for MobileNetV2 (S/32 output, named layers, BatchNorm): a run of it
    takes seconds and, unlike the real base with random weights, gives features that learn."""
    import keras
    from keras import layers

    inp = keras.Input(input_shape)
    x = layers.Conv2D(8, 4, strides=4, name="Conv1")(inp)
    x = layers.BatchNormalization(name="bn_Conv1")(x)
    x = layers.ReLU(name="Conv1_relu")(x)
    x = layers.Conv2D(16, 8, strides=8, name="block_15_expand")(x)
    x = layers.BatchNormalization(name="block_15_expand_BN")(x)
    x = layers.ReLU(6.0, name="out_relu")(x)
    return keras.Model(inp, x, name="mobilenetv2_stand_in")


def _scene_stand_in(args):
    """--scenes without photos or a detector: 4 scene-train and 2 scene-val crops."""
    rng = np.random.default_rng(5)
    labels = np.array([MASK, NO_MASK, MASK, MASK, MASK, NO_MASK])
    imgs = np.stack([np.clip(rng.normal(60 + 120 * lab, 25, (args.size, args.size, 3)), 0, 255)
                     for lab in labels]).astype(np.uint8)
    stems = [f"photo{i}" for i in range(6)]

    def part(idx):
        return SceneCrops(imgs[idx], labels[idx], [stems[i] for i in idx], ["annotated"] * len(idx),
                          np.ones(len(idx)), [stems[i] for i in idx], settings={"root": "stand-in"})
    return part(list(range(6))), part([0, 1, 2, 3]), part([4, 5])


def _run(tmp: Path, name: str, learnable: bool, *extra: str) -> Path:
    """train.main on 10 + 10 images of 32 px with the stand-in base (and scene crops when
    learnable)."""
    import keras

    data = tmp / f"data_{name}"
    rng = np.random.default_rng(0)
    for c, cls in enumerate(("with_mask", "without_mask")):
        for i in range(10):
            p = data / cls / f"{i}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            img = (np.clip(rng.normal(60 + 120 * c, 25, (32, 32, 3)), 0, 255) if learnable
                   else rng.integers(0, 256, (32, 32, 3)))  # noise: nothing to learn, overfits
            cv2.imwrite(str(p), img.astype(np.uint8))
    out = tmp / name
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keras.applications, "MobileNetV2", _stand_in_base)
        mp.setattr(train, "scene_data", _scene_stand_in)
        assert train.main(["--data", str(data), "--out", str(out), "--size", "32",
                           "--weights", "none", "--val", "0.3", "--test", "0.2", "--quiet",
                           *(["--scenes", "stand-in"] if learnable else []), *extra]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("tensorflow")
    tmp = tmp_path_factory.mktemp("train")
    overfit = ("--epochs", "6", "--lr", "0.05", "--views", "2")
    tuned = ("--epochs", "2", "--lr", "0.01", "--views", "0", "--fine-tune-epochs", "2",
             "--fine-tune-from", "block_15_expand", "--fine-tune-lr", "0.01")
    return {"overfit": _run(tmp, "overfit", False, *overfit),
            "tuned": _run(tmp, "tuned", True, *tuned),
            "tuned_again": _run(tmp, "tuned_again", True, *tuned)}


def _history(run: Path) -> list[dict]:
    with (run / "history.csv").open() as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_the_record_keeps_the_epoch_of_the_lowest_validation_loss(runs) -> None:
    """best_epoch is the lowest val_loss's (not train_loss's; noise images overfit), the kept
    model.keras is that epoch's (its loss on the val images is the one logged) and history.csv
    logs the validation loss, not the training loss, in its val_loss column."""
    from tools.inputs import load_keras

    run = runs["overfit"]
    rec = json.loads((run / "record.json").read_text())
    assert rec["argv"][1:3] == ["--data", str(run.parent / "data_overfit")]  # its own command
    hist = _history(run)
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4, 5, 6]
    best = min(hist, key=lambda r: r["val_loss"])
    assert rec["best_epoch"] == best["epoch"] != min(hist, key=lambda r: r["train_loss"])["epoch"]
    assert [r["val_loss"] for r in rec["history"]] == pytest.approx([r["val_loss"] for r in hist],
                                                                    abs=1e-5)
    from maskd.classifier import normalize

    paths, labels = dataset.subset_files(dataset.load_split(run / "split.json"), "val")
    probs = load_keras(run / "model.keras").predict(
        normalize(dataset.load_resized(paths, 32)), verbose=0)
    loss = float(np.mean(-np.log(probs[np.arange(len(labels)), labels])))
    assert loss == pytest.approx(best["val_loss"], abs=2e-4)


@pytest.mark.slow
def test_the_record_scores_each_part_with_no_mask_positive(runs) -> None:
    """metrics: the kept model's P(no_mask) (column no_mask) on the paper val images alone,
    the test images and the scene-val crops, each scored on its own; the input size and the
    normalisation maskd must use."""
    from maskd.classifier import normalize
    from tools.evaluate import binary_metrics
    from tools.inputs import json_safe, load_keras

    run = runs["tuned"]
    rec = json.loads((run / "record.json").read_text())
    model = load_keras(run / "model.keras")
    split = dataset.load_split(run / "split.json")
    for part in ("val", "test"):
        paths, labels = dataset.subset_files(split, part)
        p_no = model.predict(normalize(dataset.load_resized(paths, 32)), verbose=0)[:, NO_MASK]
        assert rec["metrics"][part] == json_safe(binary_metrics(labels, p_no)), part
    sc_val = _scene_stand_in(train.parse_args(["--out", "x", "--size", "32"]))[2]
    assert rec["metrics"]["scene_val"]["n"] == len(sc_val.labels)
    assert rec["metrics"]["val"]["accuracy"] == 1.0  # dark vs bright: learnt
    assert rec["input_size"] == 32 and rec["labels"] == dataset.LABELS
    assert rec["normalization"] == {"scale": pytest.approx(1 / 127.5), "offset": -1.0, "color": "RGB"}


@pytest.mark.slow
def test_fine_tuning_trains_from_the_named_layer_and_keeps_batchnorm(runs) -> None:
    """--fine-tune-from block_15_expand: layers before it and every BatchNorm keep their
    weights (the base is frozen while the head trains, also with --views 0); the named layer
    learns. The same seed gives the same run."""
    import keras

    from tools.inputs import load_keras

    run = runs["tuned"]
    rec = json.loads((run / "record.json").read_text())
    assert rec["fine_tune_start_epoch"] == 3 and rec["best_epoch"] > 2  # fine-tuning won
    keras.utils.set_random_seed(42)
    fresh = _stand_in_base((32, 32, 3), 1.0, False, None)
    kept = load_keras(run / "model.keras").get_layer("mobilenetv2_stand_in")
    for name in ("Conv1", "bn_Conv1", "block_15_expand_BN"):
        for a, b in zip(kept.get_layer(name).get_weights(), fresh.get_layer(name).get_weights(),
                        strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert not np.array_equal(kept.get_layer("block_15_expand").get_weights()[0],
                              fresh.get_layer("block_15_expand").get_weights()[0])
    assert _history(run) == _history(runs["tuned_again"])


@pytest.mark.slow
@pytest.mark.parametrize(("size", "stopped_at"), [("16m", "model.keras"), ("6m", "checkpoint")])
def test_a_full_disk_stops_training_with_one_line_and_no_cut_model(
        tmp_path: Path, size: str, stopped_at: str) -> None:
    """A real tmpfs too small for the run (MobileNetV2 at 32 px, random weights: ~10 MB per
    weights file): at 16 MiB the checkpoints fit and model.keras does not, at 6 MiB a checkpoint
    does not. Keras wrote model.keras in place, so the first left 4.6 MB of a 10 MB model and a
    traceback; the second was a 40-line h5py traceback. Now one line names what could not be
    written, and no model.keras (nor a temporary) is left for convert.py to find."""
    pytest.importorskip("tensorflow")
    from mqtt_broker import small_disk

    data = noise_dataset(tmp_path / "data", 6, 32)
    with small_disk(tmp_path / "disk", size) as disk:
        out = disk / "run"
        with pytest.raises(SystemExit) as exc:
            train.main(["--data", str(data), "--out", str(out), "--size", "32", "--weights",
                        "none", "--epochs", "1", "--views", "1", "--val", "0.34", "--test", "0",
                        "--quiet"])
        message = str(exc.value.code)
        assert "\n" not in message and "No space left on device" in message
        if stopped_at == "model.keras":
            assert message.startswith(f"{out / 'model.keras'}: cannot write the model (")
        else:
            assert message.startswith(f"{out}: training stopped, cannot write its files there (")
        assert not (out / "model.keras").exists()
        assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("inside", ["with_mask/run1", "run1", "."])
def test_a_run_folder_inside_the_dataset_is_refused_before_it_is_made(
        tmp_path: Path, inside: str, capsys) -> None:
    """--out data/with_mask/run1 trained, and the next run on data/ took that run's curves.png
    for a masked face (and changed the data fingerprint); --out data/run1 was made, then refused
    as an unknown class folder, and stayed there to stop every later run. Now --out inside
    --data (also through a link) is an option error and nothing is created."""
    data = tmp_path / "data"
    for cls in ("with_mask", "without_mask"):
        (data / cls).mkdir(parents=True)
    (tmp_path / "link").symlink_to(data)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(SystemExit) as exc:
        train.parse_args(["--data", str(tmp_path / "link"), "--out", str(data / inside)])
    assert exc.value.code == 2
    assert f"--out {data / inside} is inside --data {tmp_path / 'link'}" in capsys.readouterr().err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    train.parse_args(["--data", str(data), "--out", str(tmp_path / "data_run")])  # a neighbour
    (tmp_path / "loop").symlink_to(tmp_path / "loop")  # for main to name, not a traceback here
    train.parse_args(["--data", str(tmp_path / "loop"), "--out", str(tmp_path / "run")])


@pytest.mark.slow
def test_a_training_image_the_disk_cannot_read_is_left_out_not_blamed_on_the_run_folder(
        tmp_path: Path) -> None:
    """A dataset image whose read fails (EIO from a failing disk, injected by strace): train.py
    said '<run folder>: training stopped, cannot write its files there (Input/output error)',
    sending the operator to the wrong disk, with a healthy run folder and nothing trained. The
    image is now left out as unreadable, named with the error, and the run trains on."""
    import subprocess
    import sys

    pytest.importorskip("tensorflow")
    from test_faults_mqtt import strace_injecting

    strace = strace_injecting()
    data = noise_dataset(tmp_path / "data", 6, 32)
    bad = data / "with_mask" / "3.png"
    out = tmp_path / "run"
    r = subprocess.run(
        [strace, "-f", "--seccomp-bpf", "-qq", "-o", "/dev/null", "-e", "trace=read", "-P",
         str(bad), "-e", "inject=read:error=EIO", sys.executable, "tools/train.py", "--data",
         str(data), "--out", str(out), "--size", "32", "--weights", "none", "--epochs", "1",
         "--views", "1", "--val", "0.34", "--test", "0", "--quiet"],
        capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "cannot write its files there" not in r.stderr
    split = json.loads((out / "split.json").read_text())
    assert {"rel": "with_mask/3.png", "reason": f"{bad}: Input/output error"} in split["unreadable"]
    assert (out / "model.keras").is_file()


def test_a_run_folder_in_a_linked_class_folders_target_is_refused(tmp_path: Path,
                                                                 capsys) -> None:
    """data/with_mask a link to another disk's folder of faces, --out inside that folder: it
    was accepted, trained into, and the next run on data/ took its curves.png for a masked
    face. It is inside --data as the scan reads it: an option error, nothing created."""
    faces = tmp_path / "disk" / "masked"
    faces.mkdir(parents=True)
    data = tmp_path / "data"
    (data / "without_mask").mkdir(parents=True)
    (data / "with_mask").symlink_to(faces)
    with pytest.raises(SystemExit) as exc:
        train.parse_args(["--data", str(data), "--out", str(faces / "run1")])
    assert exc.value.code == 2
    assert f"--out {faces / 'run1'} is inside --data {data}" in capsys.readouterr().err
    assert not (faces / "run1").exists()
    train.parse_args(["--data", str(data), "--out", str(tmp_path / "disk" / "run1")])  # beside
