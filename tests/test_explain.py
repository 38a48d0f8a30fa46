"""tools/explain.py: Grad-CAM / CAM on a small real Keras model whose answer we know."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tools import explain


def test_lower_half_share_counts_rows():
    cam = np.zeros((4, 4))
    cam[3, 1] = 2.0
    assert explain.lower_half_share(cam) == 1.0
    cam[0, 0] = 2.0
    assert explain.lower_half_share(cam) == 0.5
    odd = np.ones((3, 5))  # the middle row is split evenly
    assert explain.lower_half_share(odd) == pytest.approx(0.5)
    assert np.isnan(explain.lower_half_share(np.zeros((3, 3))))


def test_overlay_keeps_image_shape_and_colours_the_hot_spot():
    rgb = np.full((50, 40, 3), 128, np.uint8)
    cam = np.zeros((5, 4))
    cam[4, 3] = 1.0
    out = explain.overlay(rgb, cam)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    # JET: hot = red, cold = blue
    assert out[48, 38, 0] > out[48, 38, 2]
    assert out[2, 2, 2] > out[2, 2, 0]


@pytest.fixture(scope="module")
def bright_model():
    """input -> nested 'base' (conv, ReLU) -> GAP -> Dense(2, softmax): class 1 = brightness.

    Laid out like maskd's classifier (a nested base model, then the head), with fixed weights,
    so the class-1 evidence is exactly where the input is bright.
    """
    keras = pytest.importorskip("keras")
    size = 32
    inner_in = keras.Input((size, size, 3))
    conv = keras.layers.Conv2D(4, 3, strides=4, padding="same", activation="relu", name="conv")
    base = keras.Model(inner_in, conv(inner_in), name="base")
    inp = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(base(inp))
    out = keras.layers.Dense(2, activation="softmax", name="probs")(x)
    model = keras.Model(inp, out)
    k = np.zeros((3, 3, 3, 4), np.float32)
    k[:, :, :, 0] = 1.0 / 27  # channel 0: local brightness
    k[:, :, :, 1] = -1.0 / 27  # channel 1: local darkness (ReLU'd: zero on a bright/zero input)
    conv.set_weights([k, np.zeros(4, np.float32)])
    w = np.zeros((4, 2), np.float32)
    w[0] = [-3.0, 3.0]
    model.get_layer("probs").set_weights([w, np.zeros(2, np.float32)])
    return model


def _square(y: int, x: int, size: int = 32) -> np.ndarray:
    img = np.zeros((1, size, size, 3), np.float32)
    img[0, y : y + 8, x : x + 8] = 1.0
    return img


@pytest.mark.parametrize("corner", [(0, 0), (0, 24), (24, 0), (24, 24)])
def test_gradcam_follows_the_evidence(bright_model, corner):
    ex = explain.Explainer(bright_model)
    assert "base" in ex.layer_name
    res = ex.explain(_square(*corner), classes=np.array([1]))
    cam = res["gradcam"][0]
    assert cam.shape == (8, 8)  # the base's 32/4 feature map
    y, x = np.unravel_index(np.argmax(cam), cam.shape)
    assert (y * 4, x * 4) == pytest.approx(corner, abs=4)
    big = explain.upsample(cam, 32, 32)
    assert big.shape == (32, 32)
    by, bx = np.unravel_index(np.argmax(big), big.shape)
    assert abs(by - (corner[0] + 4)) <= 6 and abs(bx - (corner[1] + 4)) <= 6
    # Plain CAM applies (GAP -> one Dense) and agrees on where the evidence is.
    assert ex.why_no_cam is None
    assert np.argmax(res["cam"][0]) == np.argmax(cam)


def test_gradcam_lower_half_and_predicted_class(bright_model):
    ex = explain.Explainer(bright_model)
    low = ex.explain(_square(24, 12))
    assert low["classes"][0] == 1  # bright -> class 1 is predicted
    assert explain.lower_half_share(low["gradcam"][0]) > 0.9
    top = ex.explain(_square(0, 12))
    assert explain.lower_half_share(top["gradcam"][0]) < 0.1
    # The other class is pushed down by brightness: nothing positive to show for it.
    other = ex.explain(_square(24, 12), classes=np.array([0]))
    assert other["gradcam"][0].max() == 0.0
    # Every class's map comes from the same pass; the chosen one is picked from it.
    assert np.array_equal(other["per_class"][0, 1], low["gradcam"][0])


def test_seed_head_gets_no_plain_cam():
    keras = pytest.importorskip("keras")
    inp = keras.Input((32, 32, 3))
    base = keras.Model(inp, keras.layers.Conv2D(4, 3, strides=4, padding="same")(inp), name="b")
    i2 = keras.Input((32, 32, 3))
    x = keras.layers.AveragePooling2D(8)(base(i2))
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(8, activation="relu")(x)
    out = keras.layers.Dense(2, activation="softmax")(x)
    ex = explain.Explainer(keras.Model(i2, out))
    assert ex.why_no_cam is not None and "Dense" in ex.why_no_cam
    res = ex.explain(np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32))
    assert res["gradcam"].shape == (2, 8, 8) and "cam" not in res


def test_nothing_readable_is_an_error(bright_model, tmp_path):
    """Every image skipped used to exit 0 with nothing explained; the split case too."""
    import json

    model = tmp_path / "m.keras"
    bright_model.save(model)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"no image")
    with pytest.raises(SystemExit) as exc:
        explain.main(["--model", str(model), str(bad), str(tmp_path / "gone.png"),
                      "--out", str(tmp_path / "cam")])
    assert str(exc.value.code) == "explain: none of the 2 images could be read"
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"root": str(tmp_path / "moved"), "train": [], "val": [],
                                 "test": [["with_mask/a.png", 0]]}))
    with pytest.raises(SystemExit) as exc:
        explain.main(["--model", str(model), "--split", str(split)])
    assert "none of the test images of" in str(exc.value.code)


def test_same_named_images_get_their_own_overlays(bright_model, tmp_path):
    """Class folders both holding 0.png: the second overlay used to overwrite the first."""
    import cv2

    files = []
    for value, cls in ((255, "with_mask"), (0, "without_mask")):
        (tmp_path / cls).mkdir()
        files.append(tmp_path / cls / "0.png")
        cv2.imwrite(str(files[-1]), np.full((32, 32, 3), value, np.uint8))
    rows = explain.explain_files(explain.Explainer(bright_model), files, tmp_path / "cam")
    overlays = [Path(r["overlay"]) for r in rows]
    assert [o.name for o in overlays] == ["001_with_mask_0_cam.png", "002_without_mask_0_cam.png"]
    assert sorted((tmp_path / "cam").iterdir()) == overlays
    assert overlays[0].read_bytes() != overlays[1].read_bytes()


def test_output_inside_a_file_stops_before_the_model_runs(tmp_path):
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as exc:
        explain.main(["--model", str(tmp_path / "m.keras"), "--split", "s.json",
                      "--json", str(tmp_path / "afile" / "cam.json")])
    assert "cannot create the output folder" in str(exc.value.code)


def test_a_sheet_of_no_image_type_and_an_unknown_layer_are_one_line_each(bright_model, tmp_path):
    """--sheet sheet.txt was a Matplotlib traceback after the work, --layer bogus a ValueError
    ('bogus' is not in list); a flat model's layer given by name still works."""
    with pytest.raises(SystemExit) as exc:  # before the model is even looked for
        explain.main(["--model", str(tmp_path / "m.keras"), "--sheet", str(tmp_path / "s.txt")])
    assert str(exc.value.code).startswith(f"{tmp_path / 's.txt'}: cannot save a figure of type .txt")
    keras = pytest.importorskip("keras")
    inp = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, strides=4, padding="same", name="conv")(inp)
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    flat = keras.Model(inp, out)
    with pytest.raises(SystemExit) as exc:
        explain.Explainer(flat, "bogus")
    assert str(exc.value.code).startswith("--layer bogus: the model has no layer of that name")
    assert "conv" in str(exc.value.code)
    assert explain.Explainer(flat, "conv").layer_name == "conv"


def test_overlays_are_written_in_their_colours_with_the_no_mask_score(bright_model, tmp_path):
    """The overlay PNG shows the image in its own colours (RGB turned to OpenCV's BGR once)
    and its row gives P(no_mask), the model's class 1 here, not P(mask)."""
    import cv2

    face = tmp_path / "red.png"
    img = np.zeros((32, 32, 3), np.uint8)
    img[:] = (0, 0, 255)  # BGR on disk: red
    img[16:, :] = (255, 255, 255)  # a bright lower half: class 1 (no_mask) evidence
    cv2.imwrite(str(face), img)
    [row] = explain.explain_files(explain.Explainer(bright_model), [face], tmp_path / "cam")
    written = cv2.imread(row["overlay"])
    assert written.shape == (32, 32 * 3, 3)  # image | Grad-CAM | CAM
    assert written[2, 2].tolist() == [0, 0, 255]  # the image panel, red as it was
    probs = bright_model.predict(explain.prepare([img[:, :, ::-1]], 32), verbose=0)[0]
    assert row["p_no_mask"] == pytest.approx(float(probs[1])) and row["label"] == "no_mask"


def test_split_numbers_use_the_true_class_map_the_limit_and_the_accuracy(bright_model, tmp_path):
    """Bright lower halves labelled mask (class 0): predicted no_mask, so accuracy 0; their
    predicted-class map lies in the lower half, the true class (pushed down) has no map at all;
    --limit counts images."""
    import json

    import cv2

    rows = []
    for i in range(3):
        img = np.zeros((32, 32, 3), np.uint8)
        img[24:, 8 * i : 8 * i + 8] = 255
        (tmp_path / "with_mask").mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / "with_mask" / f"{i}.png"), img)
        rows.append([f"with_mask/{i}.png", 0])
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"root": str(tmp_path), "train": [], "val": [], "test": rows}))
    ex = explain.Explainer(bright_model)
    num = explain.split_numbers(ex, split, "test", None, limit=2)
    assert num["images"] == 2 and num["accuracy"] == 0.0
    mask = num["lower_half_share"]["mask"]
    assert mask["gradcam_pred"]["mean"] > 0.9 and mask["gradcam_pred"]["n"] == 2
    assert "gradcam_true" not in mask or mask["gradcam_true"] is None


def test_gradcam_weighs_the_class_score_before_the_softmax():
    """Grad-CAM follows the class's own score (the logit): evidence that raises both classes,
    class 1 more, still shows in class 0's map. Through the softmax it vanished (and saturates
    for a confident face)."""
    keras = pytest.importorskip("keras")
    inp = keras.Input((32, 32, 3))
    conv = keras.layers.Conv2D(1, 3, strides=4, padding="same", activation="relu", name="conv")
    base = keras.Model(inp, conv(inp), name="base")
    i2 = keras.Input((32, 32, 3))
    out = keras.layers.Dense(2, activation="softmax", name="probs")(
        keras.layers.GlobalAveragePooling2D()(base(i2)))
    model = keras.Model(i2, out)
    conv.set_weights([np.full((3, 3, 3, 1), 1 / 27, np.float32), np.zeros(1, np.float32)])
    model.get_layer("probs").set_weights([np.array([[1.0, 3.0]], np.float32), np.zeros(2, np.float32)])
    res = explain.Explainer(model).explain(_square(24, 12), classes=np.array([0]))
    assert res["gradcam"][0].max() > 0
    assert explain.lower_half_share(res["gradcam"][0]) > 0.9
