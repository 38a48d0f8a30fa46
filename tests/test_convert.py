"""The offline chain on real parts: dedupe/split of the real set, Keras -> TFLite float32/int8
conversion, pre-processing parity (TFLite via maskd.classifier vs Keras via the training
pipeline, same real images), and tools/evaluate.py on the converted models.

The model is the real architecture (MobileNetV2 1.0 from the shared ImageNet weights, at
96 px to stay fast) with an untrained, seeded head: its outputs vary from image to image,
so a pre-processing mismatch would show.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path

pytest.importorskip("tensorflow")

from maskd.classifier import Classifier, preprocess  # noqa: E402
from maskd.images import load_image_rgb  # noqa: E402
from tools import convert, dataset, evaluate, train  # noqa: E402

SIZE = 96
N_PER_CLASS = 20


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> dict:
    """A run folder as train.py leaves it (model.keras, split.json, record.json), converted."""
    data = shared_path("data/facemask-4095")
    weights = shared_path("pretrained/mobilenet_v2_1.0_224_imagenet_no_top.weights.h5")
    run = tmp_path_factory.mktemp("run")
    items, _ = dataset.dedupe(dataset.scan(data))
    items = dataset.limit_per_class(items, N_PER_CLASS, seed=3)
    parts = dataset.stratified_split(items, val=0.25, test=0.25, seed=3)
    split = {"root": str(data), "labels": dataset.LABELS, "fingerprint": dataset.fingerprint(items),
             **{k: [[it.rel, it.label] for it in v] for k, v in parts.items()}}
    dataset.save_split(split, run / "split.json")
    model, _ = train.build_model(SIZE, 1.0, str(weights), seed=0)
    model.save(run / "model.keras")
    (run / "record.json").write_text(json.dumps({"labels": dataset.LABELS, "data": {
        "fingerprint": split["fingerprint"]}}))
    out = run / "tflite"
    rc = convert.main([str(run / "model.keras"), "--out", str(out), "--formats", "float32,int8",
                       "--calibration-images", "20", "--calibration-augmented", "0",
                       "--name", "tiny"])
    assert rc == 0
    paths, labels = dataset.subset_files(split, "test")
    paths += dataset.subset_files(split, "val")[0]
    return {"run": run, "out": out, "model": model, "split": split, "paths": paths}


@pytest.mark.shared
@pytest.mark.slow
def test_conversion_writes_models_with_sidecars(tiny_run: dict) -> None:
    out = tiny_run["out"]
    for kind in ("float32", "int8"):
        model = out / f"tiny_{kind}.tflite"
        side = json.loads((out / f"tiny_{kind}.json").read_text())
        assert model.stat().st_size > 100_000
        assert side["labels"] == ["mask", "no_mask"] and side["input_size"] == SIZE
        assert side["quantization"] == kind
        assert side["normalization"]["scale"] == pytest.approx(1 / 127.5)
    int8 = json.loads((out / "tiny_int8.json").read_text())
    assert int8["input_dtype"] == "uint8" and int8["all_integer_ops"] is True
    assert int8["calibration"]["images"] == 20
    report = convert.op_report(out / "tiny_int8.tflite")
    assert report["all_integer"] and report["output"]["dtype"] == "uint8"
    assert not convert.op_report(out / "tiny_float32.tflite")["all_integer"]


@pytest.mark.shared
@pytest.mark.slow
def test_a_failed_write_leaves_the_earlier_model_and_sidecar(tiny_run: dict, tmp_path: Path,
                                                             monkeypatch) -> None:
    """The disk fills while the new model is written (here: while its features output is added):
    the earlier model and sidecar stay as they were, no temporary is left, one line says so.
    convert.py used to copy the model over the old one first, then write the sidecar."""
    from tools import features

    out = tmp_path / "models"
    out.mkdir()
    for suffix in (".tflite", ".json"):
        (out / f"tiny_float32{suffix}").write_bytes((tiny_run["out"] / f"tiny_float32{suffix}"
                                                     ).read_bytes()[:-1] + b"!")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(model: Path, dest: Path, layer: str) -> None:
        raise OSError(28, "No space left on device", str(dest))

    monkeypatch.setattr(features, "expose", full_disk)
    with pytest.raises(SystemExit) as exc:
        convert.main([str(tiny_run["run"] / "model.keras"), "--out", str(out), "--formats",
                      "float32", "--name", "tiny", "--force"])
    assert str(exc.value.code) == (f"{out / 'tiny_float32.tflite'}: cannot write (No space left "
                                   "on device); the earlier files are left as they were")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.shared
@pytest.mark.slow
def test_a_full_temporary_disk_is_one_line_and_leaves_the_earlier_model(
        tiny_run: dict, tmp_path: Path, monkeypatch) -> None:
    """The SavedModel and the new models are made in the temporary folder first: a full one (a
    real 2 MiB tmpfs as TMPDIR, the SavedModel of the model needs ~10 MB) was a 60-line
    TensorFlow traceback ending in ResourceExhaustedError. Now one line names the folder and
    says what to do; the model already in --out is left as it was, no temporary stays."""
    import tempfile

    from mqtt_broker import small_disk

    out = tmp_path / "models"
    out.mkdir()
    for suffix in (".tflite", ".json"):
        (out / f"tiny_float32{suffix}").write_bytes(
            (tiny_run["out"] / f"tiny_float32{suffix}").read_bytes())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with small_disk(tmp_path / "tmp", "2m") as scratch:
        monkeypatch.setattr(tempfile, "tempdir", str(scratch))
        with pytest.raises(SystemExit) as exc:
            convert.main([str(tiny_run["run"] / "model.keras"), "--out", str(out), "--formats",
                          "float32", "--name", "tiny", "--force"])
        message = str(exc.value.code)
        assert message.startswith(f"{scratch}: cannot write the conversion's temporary files "
                                  "there (") and "No space left on device" in message
        assert "set TMPDIR to a folder with room" in message
        assert list(scratch.iterdir()) == []
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.shared
@pytest.mark.slow
def test_force_leaves_no_edgetpu_model_of_the_replaced_int8(tiny_run: dict, tmp_path: Path,
                                                            capsys) -> None:
    """--force replaced <name>_int8.tflite and its sidecar but left the old
    <name>_int8_edgetpu.tflite, which shares that sidecar: the Coral ran a model of another
    training run under the new one's sidecar. Now it is removed and said on stderr; without
    --force it stops the tool like the model itself would."""
    out = tmp_path / "models"
    out.mkdir()
    stale = out / "tiny_int8_edgetpu.tflite"
    stale.write_bytes((tiny_run["out"] / "tiny_int8.tflite").read_bytes())
    args = [str(tiny_run["run"] / "model.keras"), "--out", str(out), "--formats", "int8",
            "--calibration-images", "4", "--calibration-augmented", "0", "--name", "tiny"]
    with pytest.raises(SystemExit) as exc:
        convert.main(args)
    assert exc.value.code == 2 and f"{stale} exists; pass --force" in capsys.readouterr().err
    assert convert.main(args + ["--force"]) == 0
    err = capsys.readouterr().err
    assert f"removed {stale}: it was compiled from the int8 model just replaced" in err
    assert not stale.exists() or stale.read_bytes() != (tiny_run["out"] / "tiny_int8.tflite"
                                                         ).read_bytes()  # or compiled anew
    assert (out / "tiny_int8.json").is_file()


@pytest.mark.shared
@pytest.mark.slow
def test_a_features_layer_given_by_name_must_exist_and_a_broken_record_is_named(
        tiny_run: dict, tmp_path: Path) -> None:
    """--features-layer bogus wrote every model without its features output and exited 0 (a
    note only; the tracker tells people apart by that output); a record.json that is not JSON
    beside the model was a JSONDecodeError traceback."""
    out = tmp_path / "models"
    with pytest.raises(SystemExit) as exc:
        convert.main([str(tiny_run["run"] / "model.keras"), "--out", str(out), "--formats",
                      "float32", "--name", "tiny", "--features-layer", "bogus_layer"])
    said = str(exc.value.code)
    assert said.startswith("--features-layer bogus_layer: ") and "nothing was written" in said
    assert not list(out.glob("tiny*"))
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes((tiny_run["run"] / "model.keras").read_bytes())
    (run / "record.json").write_text("{bad")
    with pytest.raises(SystemExit) as exc:
        convert.main([str(run / "model.keras"), "--out", str(out), "--formats", "float32"])
    assert str(exc.value.code).startswith(f"{run / 'record.json'}: cannot read it as JSON (")


@pytest.mark.shared
@pytest.mark.slow
def test_training_pipeline_input_equals_runtime_preprocess(tiny_run: dict) -> None:
    """What train.py feeds the network (no augmentation) is exactly maskd's preprocess()."""
    paths = tiny_run["paths"]
    x = dataset.load_resized(paths, SIZE)
    batch, _ = train.make_batches(x, np.zeros(len(x), np.int64), len(x), "none", seed=0)[0]
    order = train.make_batches(x, np.zeros(len(x), np.int64), len(x), "none", seed=0).order
    runtime = np.stack([preprocess(load_image_rgb(paths[i]), SIZE) for i in order])
    np.testing.assert_array_equal(batch, runtime)


@pytest.mark.shared
@pytest.mark.slow
def test_tflite_matches_keras_on_real_images(tiny_run: dict) -> None:
    paths = tiny_run["paths"]
    keras_p = tiny_run["model"].predict(np.stack([preprocess(load_image_rgb(p), SIZE) for p in paths]),
                                        verbose=0)[:, 1]
    assert keras_p.std() > 0.05  # outputs differ per image, so a mismatch would show
    crops = [load_image_rgb(p) for p in paths]
    f32 = Classifier.open(tiny_run["out"] / "tiny_float32.tflite").predict(crops)
    np.testing.assert_allclose(f32, keras_p, atol=1e-4)
    int8 = Classifier.open(tiny_run["out"] / "tiny_int8.tflite").predict(crops)
    # int8 of an untrained head calibrated on 20 images: close, not equal.
    assert np.abs(int8 - keras_p).mean() < 0.08
    assert np.abs(int8 - keras_p).max() < 0.3


@pytest.mark.shared
@pytest.mark.slow
def test_evaluate_reports_metrics_agreement_and_files(tiny_run: dict, capsys) -> None:
    out = tiny_run["run"] / "eval"
    rc = evaluate.main(["--model", str(tiny_run["out"] / "tiny_float32.tflite"),
                        "--model2", str(tiny_run["run"] / "model.keras"),
                        "--split", str(tiny_run["run"] / "split.json"), "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "accuracy" in text and "agreement: 1.0000" in text
    report = json.loads((out / "metrics.json").read_text())
    assert report["n_images"] == len(tiny_run["split"]["test"])
    m1, m2 = (r["metrics"] for r in report["models"])
    assert m1["confusion"] == m2["confusion"]
    rows = (out / "predictions.csv").read_text().splitlines()
    assert len(rows) == 1 + report["n_images"]
    assert (out / "confusion.png").stat().st_size > 1000
    assert (out / "confusion_2.png").is_file()
    # Again with one model into the same folder: the two-model run's second matrix stayed
    # beside a report of one. And a full disk at predictions.csv was an OSError traceback
    # after the work, half a file left.
    one = ["--model", str(tiny_run["out"] / "tiny_float32.tflite"),
           "--split", str(tiny_run["run"] / "split.json"), "--out", str(out)]
    assert evaluate.main(one) == 0
    assert not (out / "confusion_2.png").exists()
    (out / "predictions.csv").unlink()
    (out / "predictions.csv").symlink_to("/dev/full")
    with pytest.raises(SystemExit) as exc:
        evaluate.main(one)
    assert str(exc.value.code) == (f"{out / 'predictions.csv'}: cannot write it (No space "
                                   "left on device)")


def test_binary_metrics_no_mask_is_positive() -> None:
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.9, 0.8, 0.7, 0.4, 0.6])
    m = evaluate.binary_metrics(y, p)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (3, 1, 2, 1)
    assert m["precision"] == pytest.approx(0.75) and m["recall"] == pytest.approx(0.75)
    assert m["specificity"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(5 / 7)
    assert m["confusion"] == [[2, 1], [1, 3]]


@pytest.mark.shared
def test_dedupe_before_a_stratified_seeded_split(facemask_dir: Path) -> None:
    items = dataset.scan(facemask_dir)
    kept, dropped = dataset.dedupe(items)
    assert len(items) == 4094 and len(dropped) == len(items) - len(kept) > 100
    assert len({it.sha256 for it in kept}) == len(kept)
    a = dataset.stratified_split(kept, 0.1, 0.1, seed=42)
    b = dataset.stratified_split(kept, 0.1, 0.1, seed=42)
    assert a == b
    hashes = {k: {it.sha256 for it in v} for k, v in a.items()}
    assert not (hashes["train"] & hashes["test"]) and not (hashes["train"] & hashes["val"])
    ratio = {k: sum(it.label for it in v) / len(v) for k, v in a.items()}
    assert max(ratio.values()) - min(ratio.values()) < 0.01


@pytest.mark.shared
@pytest.mark.slow
def test_evaluate_on_scene_crops_cut_like_the_device(tiny_run: dict, scenes_dir: Path) -> None:
    crops, labels, skipped = evaluate.voc_crops(scenes_dir, margin=0.15, min_px=80)
    assert len(crops) == len(labels) > 50 and skipped["small"] > 0
    assert all(c.rgb.shape[0] == c.rgb.shape[1] >= 80 for c in crops)  # square, with margin
    assert all(c.rgb.shape[0] > c.face_px >= 80 for c in crops)
    assert set(labels.tolist()) == {0, 1}
    out = tiny_run["run"] / "eval_voc"
    rc = evaluate.main(["--model", str(tiny_run["out"] / "tiny_int8.tflite"), "--voc", str(scenes_dir),
                        "--min-face-px", "80", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["n_images"] == len(crops)
    assert "#" in (out / "predictions.csv").read_text().splitlines()[1]
    bands = report["models"][0]["metrics"]["by_face_px"]
    assert bands[">=80"]["n"] == len(crops) and bands["24-32"]["n"] == 0


def test_accuracy_by_size_bands() -> None:
    labels = np.array([0, 1, 1, 0, 1])
    probs = np.array([0.1, 0.9, 0.2, 0.8, 0.7])
    sizes = np.array([25, 30, 40, 100, 80])
    out = evaluate.accuracy_by_size(labels, probs, sizes, 0.5)
    assert out["24-32"] == {"n": 2, "accuracy": 1.0}
    assert out["32-48"] == {"n": 1, "accuracy": 0.0}
    assert out["48-80"]["n"] == 0
    assert out[">=80"] == {"n": 2, "accuracy": 0.5}


@pytest.mark.shared
@pytest.mark.slow
def test_converted_models_give_the_head_pool_as_features(tiny_run: dict) -> None:
    """convert.py exposes the pooled head as the second output: float32 gives Keras's values,
    int8 the same up to its quantization, and the scores are still output 0."""
    import keras

    paths = tiny_run["paths"][:8]
    x = np.stack([preprocess(load_image_rgb(p), SIZE) for p in paths])
    pooled = keras.Model(tiny_run["model"].inputs, tiny_run["model"].get_layer("head_pool").output)
    want = np.asarray(pooled.predict(x, verbose=0)).reshape(len(paths), -1)
    crops = [load_image_rgb(p) for p in paths]
    # int8 calibrated on 20 images (the tiny run): near, not equal
    for kind, min_cos in (("float32", 0.9999), ("int8", 0.9)):
        side = json.loads((tiny_run["out"] / f"tiny_{kind}.json").read_text())
        assert side["outputs"] == {"scores": 0, "features": 1}
        assert side["features"] == {"layer": "head_pool", "size": want.shape[1]}
        clf = Classifier.open(tiny_run["out"] / f"tiny_{kind}.tflite")
        scores, feats = clf.predict_embedded(crops)
        np.testing.assert_array_equal(scores, clf.predict(crops))
        cos = (feats * want).sum(1) / np.linalg.norm(feats, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() > min_cos


def _small_keras(path: Path, shape: tuple, units: int, activation: str = "softmax") -> Path:
    import keras

    inp = keras.Input(shape=shape)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    keras.Model(inp, keras.layers.Dense(units, activation=activation)(x)).save(path)
    return path


def test_a_model_maskd_cannot_use_is_named_before_anything_is_written(tmp_path: Path) -> None:
    """A non-square or open-sized input was a Keras traceback; a 3-class or one-sigmoid model
    was converted with a two-label sidecar maskd then refused, and evaluate read its second
    column as P(no_mask) (or an IndexError); a run stopped before record.json (Ctrl-C, a full
    disk at curves.png) was converted as if finished, its sidecar without data or params."""
    out = tmp_path / "models"
    cases = [
        (_small_keras(tmp_path / "wide.keras", (96, 128, 3), 2), "input (None, 96, 128, 3): "),
        (_small_keras(tmp_path / "open.keras", (None, None, 3), 2), "input (None, None, None, 3): "),
        (_small_keras(tmp_path / "three.keras", (32, 32, 3), 3), "output (None, 3): "),
        (_small_keras(tmp_path / "one.keras", (32, 32, 3), 1, "sigmoid"), "output (None, 1): "),
    ]
    for path, says in cases:
        for call in (lambda p=path: convert.main([str(p), "--out", str(out), "--formats",
                                                  "float32"]),
                     lambda p=path: evaluate.KerasModel(p)):
            with pytest.raises(SystemExit) as exc:
                call()
            assert str(exc.value.code).startswith(f"{path}: {says}"), exc.value.code
    assert not out.exists() or not list(out.iterdir())
    run = tmp_path / "run"  # as train.py leaves a run stopped after model.keras
    run.mkdir()
    _small_keras(run / "model.keras", (32, 32, 3), 2)
    (run / "split.json").write_text("{}")
    with pytest.raises(SystemExit) as exc:
        convert.main([str(run / "model.keras"), "--out", str(out), "--formats", "float32"])
    assert str(exc.value.code).startswith(f"{run}: tools/train.py's run without its record.json")
    assert not out.exists() or not list(out.iterdir())


@pytest.mark.slow
def test_a_model_whose_batch_cannot_grow_is_run_a_face_at_a_time(tmp_path: Path, caplog) -> None:
    """A --size 32 model (train.py allows it) converts to a graph whose RESHAPE fixes the batch
    at 1: two crops at once were a RuntimeError (XNNPack 'failed to reshape'), a traceback
    that ended maskd classify of a folder (every caller of Classifier.predict meets it with two
    crops). Now it is run a crop at a time, said once, with the scores each crop gets alone."""
    model, _ = train.build_model(32, 1.0, None, seed=0)
    model.save(tmp_path / "model.keras")
    out = tmp_path / "tflite"
    assert convert.main([str(tmp_path / "model.keras"), "--out", str(out), "--formats",
                         "float32", "--name", "t32"]) == 0
    clf = Classifier.open(out / "t32_float32.tflite")
    rng = np.random.default_rng(0)
    crops = [rng.integers(0, 256, (40 + 9 * i, 36, 3), dtype=np.uint8) for i in range(5)]
    alone = np.array([clf.predict([c])[0] for c in crops])
    with caplog.at_level("WARNING"):
        together = clf.predict(crops)
    np.testing.assert_allclose(together, alone, atol=1e-6)
    assert clf.max_batch == 1
    assert "t32_float32.tflite: takes one face per invoke, not 5" in caplog.text
