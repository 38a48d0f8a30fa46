"""maskd.classifier: pure pre-processing, model/sidecar errors, the EdgeTPU error path, and
the shipped models on real images of the internal test split."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import REPO

import maskd.classifier as C
from maskd import env, tflite
from maskd.classifier import Classifier, ModelError, default_model_path, preprocess, sidecar_path
from maskd.images import load_image_rgb

SPLIT = REPO / "models" / "maskd_mobilenetv2_split.json"


def test_preprocess_scales_to_minus_one_one() -> None:
    img = np.zeros((50, 70, 3), np.uint8)
    img[:, :, 1] = 255
    x = preprocess(img, 32)
    assert x.shape == (32, 32, 3) and x.dtype == np.float32
    assert np.allclose(x[..., 0], -1.0) and np.allclose(x[..., 1], 1.0)
    assert preprocess(np.full((32, 32, 3), 127, np.uint8), 32)[0, 0, 0] == pytest.approx(-0.5 / 127.5, abs=1e-6)


def test_preprocess_resizes_like_opencv_area_down_linear_up() -> None:
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    want_big = cv2.resize(big, (96, 96), interpolation=cv2.INTER_AREA)
    want_small = cv2.resize(small, (96, 96), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(C.resize_square(big, 96), want_big)
    np.testing.assert_array_equal(C.resize_square(small, 96), want_small)
    np.testing.assert_allclose(preprocess(big, 96), want_big / 127.5 - 1.0, atol=1e-6)


def test_preprocess_rejects_non_rgb() -> None:
    with pytest.raises(ValueError, match="RGB"):
        preprocess(np.zeros((10, 10), np.uint8), 32)
    with pytest.raises(ValueError, match="RGB"):  # RGBA: the alpha would become a fourth channel
        preprocess(np.zeros((10, 10, 4), np.uint8), 32)


def test_input_table_follows_the_sidecars_normalization() -> None:
    """A model trained on pixel / 255 (sidecar normalization scale 1/255, offset 0) gets that
    input, not MobileNetV2's [-1, 1]: the table is built with the sidecar's numbers."""
    detail = {"dtype": np.float32, "quantization": (0.0, 0)}
    table = C.input_table(detail, scale=1 / 255, offset=0.0)
    assert table[0] == 0.0 and table[255] == pytest.approx(1.0)
    assert C.input_table(detail)[0] == -1.0


class _CountingInterpreter:
    """A stand-in TFLite interpreter of a 2-label float model: records each invoke's batch and
    answers scores a little outside 0..1, as rounding in a float model's softmax can."""

    def __init__(self) -> None:
        self.n, self.batches = 1, []

    def get_input_details(self) -> list[dict]:
        return [{"index": 0, "shape": np.array([self.n, 32, 32, 3]), "dtype": np.float32,
                 "quantization": (0.0, 0)}]

    def get_output_details(self) -> list[dict]:
        return [{"index": 1, "shape": np.array([self.n, 2]), "dtype": np.float32,
                 "quantization": (0.0, 0)}]

    def resize_tensor_input(self, index: int, shape: list[int]) -> None:
        self.n = shape[0]

    def allocate_tensors(self) -> None:
        pass

    def set_tensor(self, index: int, x: np.ndarray) -> None:
        assert len(x) == self.n
        self.batches.append(len(x))

    def invoke(self) -> None:
        pass

    def get_tensor(self, index: int) -> np.ndarray:
        return np.tile(np.float32([-0.01, 1.01]), (self.n, 1))


@pytest.mark.parametrize(("runtime", "batches"), [
    ("tflite-runtime", [C.MAX_BATCH, 4]),  # batched invokes on the CPU (docs/performance.md)
    ("tflite-runtime+edgetpu", [1] * (C.MAX_BATCH + 4)),  # an EdgeTPU graph has batch 1
])
def test_predict_batches_on_the_cpu_one_at_a_time_on_a_coral_and_clips(runtime: str,
                                                                       batches: list[int]) -> None:
    assert C.MAX_BATCH > 1
    interp = _CountingInterpreter()
    info = C.ModelInfo(["mask", "no_mask"], 32, C.DEFAULT_SCALE, C.DEFAULT_OFFSET, {})
    clf = Classifier(interp, info, Path("fake.tflite"), runtime)
    p = clf.predict([np.zeros((40, 30, 3), np.uint8)] * (C.MAX_BATCH + 4))
    assert interp.batches == batches
    assert p.tolist() == [1.0] * (C.MAX_BATCH + 4)  # P(no_mask) stays a probability


def test_default_model_path_and_env_override(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv(env.MODEL_DIR, raising=False)
    packaged = default_model_path()
    assert packaged == REPO / "maskd" / "models" / "maskd_mobilenetv2_int8.tflite"
    # in the checkout the packaged files are links to models/, so there is one copy in git
    assert packaged.resolve() == REPO / "models" / "maskd_mobilenetv2_int8.tflite"
    assert sidecar_path(packaged).resolve() == REPO / "models" / "maskd_mobilenetv2_int8.json"
    monkeypatch.setenv(env.MODEL_DIR, str(tmp_path))
    assert default_model_path() == tmp_path / "maskd_mobilenetv2_int8.tflite"
    with pytest.raises(ModelError, match="not found.*MASKD_MODEL_DIR"):
        Classifier.open(None)


def test_missing_model_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"nope\.tflite: model file not found"):
        Classifier.open(tmp_path / "nope.tflite")


def test_edgetpu_sidecar_falls_back_to_the_int8_one(tmp_path: Path) -> None:
    (tmp_path / "m_int8.json").write_text("{}")
    assert sidecar_path(tmp_path / "m_int8_edgetpu.tflite") == tmp_path / "m_int8.json"
    assert sidecar_path(tmp_path / "m_int8.tflite") == tmp_path / "m_int8.json"


def _copy_model(src: Path, dst_dir: Path, sidecar: dict | None) -> Path:
    dst = dst_dir / src.name
    shutil.copy(src, dst)
    if sidecar is not None:
        dst.with_suffix(".json").write_text(json.dumps(sidecar))
    return dst


def test_missing_or_bad_sidecar(default_model: Path, tmp_path: Path) -> None:
    good = json.loads(sidecar_path(default_model).read_text())
    with pytest.raises(ModelError, match="sidecar .* is missing"):
        Classifier.open(_copy_model(default_model, tmp_path, None))
    with pytest.raises(ModelError, match="labels must include"):
        Classifier.open(_copy_model(default_model, tmp_path, {**good, "labels": ["a", "b"]}))
    with pytest.raises(ModelError, match="labels must include"):
        Classifier.open(_copy_model(default_model, tmp_path, {**good, "labels": ["other", "no_mask"]}))
    with pytest.raises(ModelError, match="does not match the sidecar's input_size"):
        Classifier.open(_copy_model(default_model, tmp_path, {**good, "input_size": 123}))


@pytest.mark.parametrize("change, said", [
    ({"normalization": "RGB"}, "'normalization' must be an object with scale and offset, got 'RGB'"),
    ({"normalization": {"scale": 0}}, "'normalization.scale' must be a finite number > 0, got 0.0"),
    ({"normalization": {"scale": float("nan")}}, "'normalization.scale' must be a finite number > 0"),
    ({"normalization": {"offset": float("inf")}}, "'normalization.offset' must be a finite number, "
                                                  "got inf"),
    ({"features": 1280}, "'features' must be an object or null, got 1280"),
])
def test_a_sidecar_field_of_the_wrong_kind_is_named(default_model: Path, tmp_path: Path,
                                                    change: dict, said: str) -> None:
    """A string normalization or features was an AttributeError traceback; scale 0 or NaN (offset
    inf) was accepted and made every face no_mask."""
    good = json.loads(sidecar_path(default_model).read_text())
    model = _copy_model(default_model, tmp_path, {**good, **change})
    with pytest.raises(ModelError, match=re.escape(f"{model.with_suffix('.json')}: sidecar {said}")):
        Classifier.open(model)


def test_null_normalization_and_features_are_the_defaults(default_model: Path, tmp_path: Path) -> None:
    """null reads as absent (was: AttributeError in open, and in `maskd doctor`'s describe)."""
    good = json.loads(sidecar_path(default_model).read_text())
    clf = Classifier.open(_copy_model(default_model, tmp_path, {**good, "normalization": None,
                                                                 "features": None}))
    assert (clf.info.scale, clf.info.offset) == (C.DEFAULT_SCALE, C.DEFAULT_OFFSET)
    assert "features ? (faces told apart by colour and features)" in clf.describe()


def test_a_sidecar_not_in_utf8_is_one_line_exit_78(default_model: Path,
                                                   tmp_path: Path) -> None:
    """A Latin-1 sidecar was a UnicodeDecodeError traceback (exit 1)."""
    model = _copy_model(default_model, tmp_path, None)
    sidecar = model.with_suffix(".json")
    sidecar.write_bytes(sidecar_path(default_model).read_bytes().replace(b'"RGB"', b'"RGB\xe9"'))
    r = subprocess.run([sys.executable, "-m", "maskd", "run", "--model", str(model), "--detector",
                        "blazeface", "--source", "demo", "--max-frames", "1"],
                       capture_output=True, text=True, timeout=120, cwd=REPO)
    assert r.returncode == 78, r.stderr
    assert r.stderr.startswith(f"maskd run: {sidecar}: cannot read model sidecar: 'utf-8' codec "
                               "can't decode byte 0xe9") and len(r.stderr.splitlines()) == 1, r.stderr


def test_edgetpu_missing_library_is_a_clear_error(default_model: Path) -> None:
    try:
        import ctypes

        ctypes.CDLL(tflite.EDGETPU_LIB)
        pytest.skip("libedgetpu is installed here; the missing-library path cannot be shown")
    except OSError:
        pass
    with pytest.raises(ModelError, match=r"libedgetpu\.so\.1 is not installed.*or turn the EdgeTPU off "
                       r"\(--edgetpu, classifier\.edgetpu, detector\.edgetpu\) to run on the CPU"):
        Classifier.open(default_model, edgetpu=True)


def test_edgetpu_library_without_device_is_a_clear_error(default_model, tmp_path,
                                                        monkeypatch) -> None:
    """The library loads but no Coral is plugged in: the runtime's own load_delegate raises
    its ValueError (a stand-in libedgetpu that finds no device), which is CoralAbsent (`run`
    waits for it) with the runtime's words on one line, not the plain ModelError of a setup
    mistake."""
    from coral import FakeCoral

    fake = FakeCoral(tmp_path / "lib")
    monkeypatch.setattr(tflite, "EDGETPU_LIB", str(fake.lib))
    monkeypatch.setenv("FAKE_CORAL_PLUGGED", str(fake.plugged))
    with pytest.raises(tflite.CoralAbsent, match=rf"no Coral answers \(Failed to load delegate "
                       rf"from {fake.lib}\): plug in the USB Accelerator"):
        Classifier.open(default_model, edgetpu=True)
    fake.plug()
    assert Classifier.open(default_model, edgetpu=True).runtime.endswith("+edgetpu")


def test_a_coral_lost_after_the_start_is_coral_lost_naming_the_classifier(default_model, tmp_path,
                                                                         monkeypatch) -> None:
    """An invoke on a Coral that was pulled out is the runtime's RuntimeError, which the loop
    took for a bug (a traceback, exit 70): it is CoralLost, saying what ran there and the
    runtime's words on one line. The stand-in runs the model's last op through its delegate,
    so the scores on the "Coral" are the CPU's to the bit."""
    from coral import FakeCoral

    fake = FakeCoral(tmp_path / "lib")
    monkeypatch.setattr(tflite, "EDGETPU_LIB", str(fake.lib))
    monkeypatch.setenv("FAKE_CORAL_PLUGGED", str(fake.plugged))
    fake.plug()
    coral, cpu = Classifier.open(default_model, edgetpu=True), Classifier.open(default_model)
    rng = np.random.default_rng(3)
    crops = [rng.integers(0, 256, (90, 70, 3), dtype=np.uint8) for _ in range(3)]
    assert np.array_equal(coral.predict(crops), cpu.predict(crops))
    fake.unplug()
    with pytest.raises(tflite.CoralLost) as lost:
        coral.predict(crops)
    assert str(lost.value).startswith(
        "the classifier's Coral stopped answering (Failed to execute request: USB transfer "
        "error (stand-in: the Coral was unplugged). Node number ") and "\n" not in str(lost.value)


def test_shipped_sidecar_describes_the_model(default_model: Path) -> None:
    clf = Classifier.open(default_model)
    assert clf.labels == ["mask", "no_mask"] and clf.input_size in (96, 128, 160, 224)
    assert clf.info.raw["quantization"] == "int8" and clf.info.raw["all_integer_ops"] is True
    assert clf.path == default_model


def test_predict_any_crop_size(default_model: Path) -> None:
    clf = Classifier.open(default_model, threads=1)
    rng = np.random.default_rng(1)
    crops = [rng.integers(0, 256, s, dtype=np.uint8) for s in ((8, 8, 3), (300, 120, 3), (224, 224, 3))]
    p = clf.predict(crops)
    assert p.shape == (3,) and p.dtype == np.float32 and ((p >= 0) & (p <= 1)).all()
    assert clf.predict([]).shape == (0,)


def _test_split(n_per_class: int | None = None) -> tuple[list[Path], np.ndarray]:
    if not SPLIT.exists():
        pytest.skip(f"{SPLIT} not shipped yet")
    split = json.loads(SPLIT.read_text())
    root = Path(split["root"])
    if not root.is_dir():
        from conftest import shared_path

        root = shared_path("data/facemask-4095")
    rows = split["test"]
    if n_per_class:
        rows = [r for r in rows if r[1] == 0][:n_per_class] + [r for r in rows if r[1] == 1][:n_per_class]
    return [root / rel for rel, _ in rows], np.array([lab for _, lab in rows])


@pytest.mark.shared
@pytest.mark.slow
def test_shipped_int8_on_the_internal_test_split(default_model: Path) -> None:
    """The held-out web-photo split: int8 >= 0.985 and within 0.5 points of float32.

    Issue 2 promised >= 0.99 for the web-photo model (m224d: 396/399). The shipped model is
    trained for the door as well (scene crops, hard cases; issue 10) and gives up two of these
    399 web photos (394/399 = 0.9875, model card) for event F1 0.705 -> 0.888 on walk-up clips;
    this bound keeps that trade from sliding further unnoticed.
    """
    paths, labels = _test_split()
    crops = [load_image_rgb(q) for q in paths]
    p = Classifier.open(default_model).predict(crops)
    acc = float(((p >= 0.5) == (labels == 1)).mean())
    assert acc >= 0.985, acc
    f32 = default_model.with_name("maskd_mobilenetv2_float32.tflite")
    if f32.exists():
        acc32 = float(((Classifier.open(f32).predict(crops) >= 0.5) == (labels == 1)).mean())
        assert abs(acc32 - acc) <= 0.005, (acc32, acc)


@pytest.mark.shared
def test_shipped_int8_agrees_with_float32(default_model: Path) -> None:
    f32 = default_model.with_name("maskd_mobilenetv2_float32.tflite")
    if not f32.exists():
        pytest.skip(f"{f32} not shipped")
    paths, labels = _test_split(n_per_class=20)
    crops = [load_image_rgb(q) for q in paths]
    a = Classifier.open(default_model).predict(crops)
    b = Classifier.open(f32).predict(crops)
    assert ((a >= 0.5) == (b >= 0.5)).mean() >= 0.95
    assert np.abs(a - b).mean() < 0.03
    assert ((b >= 0.5) == (labels == 1)).mean() >= 0.95


def test_still_extras_follow_the_model(monkeypatch, tmp_path: Path) -> None:
    """scan's second draw is averaged only with the shipped model; an explicit list wins."""
    monkeypatch.delenv(env.MODEL_DIR, raising=False)
    second = default_model_path(C.SECOND_DRAW_NAME)
    assert second.resolve() == REPO / "models" / C.SECOND_DRAW_NAME
    assert C.still_extra_paths(None, None) == [second]
    assert C.still_extra_paths(tmp_path / "own.tflite", None) == []
    assert C.still_extra_paths(None, []) == []
    assert C.still_extra_paths(None, [tmp_path / "x.tflite"]) == [tmp_path / "x.tflite"]
    monkeypatch.setenv(env.MODEL_DIR, str(tmp_path))
    shipped = REPO / "models"
    for name in (C.DEFAULT_MODEL_NAME, C.SECOND_DRAW_NAME):
        for f in (shipped / name, (shipped / name).with_suffix(".json")):
            shutil.copy(f, tmp_path / f.name)
    assert C.still_extra_paths(None, None) == [tmp_path / C.SECOND_DRAW_NAME]
    # A model of one's own put where the shipped one was (tools/convert.py --out models
    # --force): scan averaged it with our second draw without a word.
    own = json.loads((tmp_path / C.DEFAULT_MODEL_NAME).with_suffix(".json").read_text())
    own["source"]["train_params"]["size"] = 96
    own["source"]["keras_sha256"] = "0" * 64
    (tmp_path / C.DEFAULT_MODEL_NAME).with_suffix(".json").write_text(json.dumps(own))
    assert C.still_extra_paths(None, None) == []
    # ... or without the second draw beside it: scan stopped on a key nobody set
    (tmp_path / C.SECOND_DRAW_NAME).unlink()
    assert C.still_extra_paths(None, None) == []
    # ... nor is the model averaged with a copy of itself (the same Keras file under the
    # second draw's name): that is one vote counted twice, not a second draw
    for name in (C.DEFAULT_MODEL_NAME, C.SECOND_DRAW_NAME):
        shutil.copy(shipped / C.DEFAULT_MODEL_NAME, tmp_path / name)
        shutil.copy((shipped / C.DEFAULT_MODEL_NAME).with_suffix(".json"),
                    (tmp_path / name).with_suffix(".json"))
    assert C.still_extra_paths(None, None) == []


def test_scan_classifier_is_the_mean_of_both_shipped_draws(default_model, scenes_dir,
                                                           tmp_path: Path) -> None:
    """`build_classifier(still=True)`: the mean of the two shipped models on real face crops;
    `run`'s classifier and one with a model of its own stay single."""
    import xml.etree.ElementTree as ET

    from maskd.config import Config
    from maskd.service import build_classifier

    crops = []
    for xml in sorted((scenes_dir / "annotations").glob("*.xml"))[:6]:
        image = load_image_rgb(scenes_dir / "images" / f"{xml.stem}.jpg")
        for o in ET.parse(xml).getroot().iter("object"):
            x0, y0, x1, y1 = (int(float(o.find("bndbox").findtext(k)))
                              for k in ("xmin", "ymin", "xmax", "ymax"))
            crops.append(image[y0:y1, x0:x1])
    assert len(crops) >= 6
    still = build_classifier(Config(), still=True)
    assert isinstance(still, C.MeanClassifier) and len(still.members) == 2
    a, b = (Classifier.open(p) for p in (default_model, REPO / "models" / C.SECOND_DRAW_NAME))
    want = (a.predict(crops) + b.predict(crops)) / 2
    np.testing.assert_allclose(still.predict(crops), want, atol=1e-6)
    assert not np.allclose(a.predict(crops), b.predict(crops))  # two draws, two opinions
    assert "mean of" in still.describe() and C.SECOND_DRAW_NAME in still.describe()
    assert isinstance(build_classifier(Config()), Classifier)
    own = Config(classifier={"model": str(default_model)})
    assert isinstance(build_classifier(own, still=True), Classifier)
    gone = Config(classifier={"still_extra_models": [str(tmp_path / "gone.tflite")]})
    with pytest.raises(ModelError, match=r"^classifier\.still_extra_models: .*gone\.tflite: "
                                         r"model file not found \(\[\] scans with"):
        build_classifier(gone, still=True)


def test_shipped_model_gives_pooled_features_with_the_same_scores(default_model: Path) -> None:
    """The door's model has a second output, the pooled features the tracker compares faces by;
    one invoke gives both, and the scores are those of ``predict``."""
    clf = Classifier.open(default_model, threads=1)
    assert clf.has_features and clf.info.raw["features"] == {"layer": "head_pool", "size": 1280}
    assert "features 1280" in clf.describe()  # what `maskd doctor` shows
    rng = np.random.default_rng(2)
    crops = [rng.integers(0, 256, (70, 60, 3), dtype=np.uint8) for _ in range(20)]  # > MAX_BATCH
    scores, feats = clf.predict_embedded(crops)
    np.testing.assert_array_equal(scores, clf.predict(crops))
    assert feats is not None and feats.shape == (20, 1280) and feats.dtype == np.float32
    assert (feats >= 0).all() and (np.linalg.norm(feats, axis=1) > 0).all()  # pooled ReLU6
    np.testing.assert_array_equal(clf.predict_embedded(crops[3:4])[1][0], feats[3])  # batch-free


def test_features_tool_keeps_the_scores_bit_for_bit(tmp_path: Path, scenes_dir: Path) -> None:
    """tools/features.py on a scores-only model (the shipped second draw): the same scores on
    real face crops, plus features; a model that has them already is refused, clearly."""
    pytest.importorskip("tensorflow")  # the flatbuffer schema
    from tools import features

    src = default_model_path(C.SECOND_DRAW_NAME)
    if not src.is_file():
        pytest.skip(f"{src} not shipped")
    old = Classifier.open(src, threads=1)
    assert not old.has_features and old.predict_embedded([np.zeros((9, 9, 3), np.uint8)])[1] is None
    assert "colour alone" in old.describe()
    out = tmp_path / "with_features.tflite"
    assert features.main([str(src), "--out", str(out)]) == 0
    new = Classifier.open(out, threads=1)
    crops = [load_image_rgb(p)[:160, :160] for p in sorted((scenes_dir / "images").iterdir())[:12]]
    scores, feats = new.predict_embedded(crops)
    np.testing.assert_array_equal(scores, old.predict(crops))
    assert new.has_features and feats.shape == (12, 1280)
    assert json.loads(out.with_suffix(".json").read_text())["outputs"] == {"scores": 0, "features": 1}
    with pytest.raises(SystemExit, match="has 2 outputs already"):
        features.main([str(out)])


def test_bad_sidecar_outputs_are_named(default_model: Path, tmp_path: Path) -> None:
    good = json.loads(sidecar_path(default_model).read_text())
    with pytest.raises(ModelError, match="features are output 5, but the model has 2"):
        Classifier.open(_copy_model(default_model, tmp_path, {**good, "outputs": {"scores": 0, "features": 5}}))
    with pytest.raises(ModelError, match="features are output 2, but the model has 2"):
        Classifier.open(_copy_model(default_model, tmp_path, {**good, "outputs": {"scores": 0, "features": 2}}))
    with pytest.raises(ModelError, match="bad sidecar 'outputs'"):
        Classifier.open(_copy_model(default_model, tmp_path, {**good, "outputs": {"features": 1}}))
    with pytest.raises(ModelError, match="output 1 has 1280 values per face, but the sidecar's labels"):
        Classifier.open(_copy_model(default_model, tmp_path, {**good, "outputs": {"scores": 1}}))


def test_outputs_in_the_other_order_are_read_the_right_way(default_model: Path, tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    """A sidecar whose output order is the other way round than the model's (what an EdgeTPU
    compile may do to a two-output model) still gives P(no_mask), not feature values, and says so."""
    good = json.loads(sidecar_path(default_model).read_text())
    assert good["outputs"] == {"scores": 0, "features": 1}
    right = Classifier.open(default_model, threads=1)
    swapped = Classifier.open(_copy_model(default_model, tmp_path, {**good, "outputs": {"scores": 1, "features": 0}}),
                              threads=1)
    assert "the scores are output 0, not 1 as the sidecar says" in caplog.text
    crops = [np.full((50, 40, 3), v, np.uint8) for v in (0, 90, 200)]
    s1, f1 = right.predict_embedded(crops)
    s2, f2 = swapped.predict_embedded(crops)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(f1, f2)
    assert f2.shape == (3, 1280)


def test_pooled_tensor_is_found_by_layer_name() -> None:
    from tools.features import pooled_tensor

    names = ["m/conv/Relu6", "m/head_pool_1/AvgPool", "m/head_dense/MatMul", "StatefulPartitionedCall:0"]
    shapes = [[1, 4, 4, 1280], [1, 1, 1, 1280], [1, 128], [1, 2]]
    assert pooled_tensor(names, shapes, "head_pool") == 1
    with pytest.raises(ModelError, match="found 0"):
        pooled_tensor(names, shapes, "no_such_layer")


def test_features_tool_sidecar_names_its_model_and_the_feature_size(tmp_path: Path) -> None:
    """The sidecar written beside the new model names that model (not the one it was made
    from) and the features' size, the pooled tensor's channels (1280), not its height."""
    pytest.importorskip("tensorflow")  # the flatbuffer schema
    from tools import features

    src = default_model_path(C.SECOND_DRAW_NAME)
    if not src.is_file():
        pytest.skip(f"{src} not shipped")
    out = tmp_path / "with_features.tflite"
    assert features.main([str(src), "--out", str(out)]) == 0
    side = json.loads(out.with_suffix(".json").read_text())
    assert side["model_file"] == "with_features.tflite"
    assert side["features"] == {"layer": "head_pool", "size": 1280}
    assert side["labels"] == json.loads(sidecar_path(src).read_text())["labels"]


def test_pooled_tensor_is_the_pooled_one_of_its_layer() -> None:
    """Only a (1, 1, 1, C) or (1, C) tensor of the layer is its pooled output: one the layer's
    name also covers with a feature map's shape is not."""
    from tools.features import pooled_tensor

    names = ["m/head_pool/Pad", "m/head_pool_1/AvgPool", "m/head_pool/Reshape"]
    shapes = [[1, 4, 4, 1280], [1, 1, 1, 1280], [4, 1280]]
    assert pooled_tensor(names, shapes, "head_pool") == 1
    assert pooled_tensor(["m/head_pool/Squeeze"], [[1, 1280]], "head_pool") == 0


def test_features_tool_refuses_a_model_of_several_subgraphs(tmp_path: Path) -> None:
    """Which subgraph's pooled tensor would be the features is unknowable: refused, named."""
    pytest.importorskip("tensorflow")
    import copy

    from tensorflow.lite.tools import flatbuffer_utils

    from tools import features

    src = default_model_path(C.SECOND_DRAW_NAME)
    if not src.is_file():
        pytest.skip(f"{src} not shipped")
    m = flatbuffer_utils.read_model(str(src))
    m.subgraphs.append(copy.deepcopy(m.subgraphs[0]))
    two = tmp_path / "two.tflite"
    flatbuffer_utils.write_model(m, str(two))
    shutil.copy(sidecar_path(src), sidecar_path(two))
    with pytest.raises(ModelError, match="2 subgraphs; expected one"):
        features.expose(two, tmp_path / "out.tflite")
    assert not (tmp_path / "out.tflite").exists()
