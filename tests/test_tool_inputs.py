"""Bad input to the offline tools (tools/train.py, convert.py, evaluate.py ...): one line naming
what is wrong, a non-zero exit, no traceback, and nothing already produced lost.

Each case stops in validation, before TensorFlow work, unless it says otherwise.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import noise_dataset

from tools import dataset, train

REPO = Path(__file__).resolve().parents[1]


def _image(path: Path, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((8, 8, 3), value, np.uint8))
    return path


def _dataset(root: Path, per_class: int = 3, classes=("with_mask", "without_mask")) -> Path:
    for c, cls in enumerate(classes):
        for i in range(per_class):
            _image(root / cls / f"{i}.png", 10 * i + 100 * c)  # distinct bytes: no duplicates
    return root


def _exit_message(excinfo: pytest.ExceptionInfo) -> str:
    return str(excinfo.value.code)


@pytest.mark.parametrize("bad, says", [
    (["--epochs", "0"], "--epochs"), (["--epochs", "-1"], "--epochs"),
    (["--batch", "0"], "--batch"), (["--val", "1.2"], "--val"), (["--test", "-0.1"], "--test"),
    (["--val", "0.5", "--test", "0.5"], "sum must be < 1"), (["--val", "0"], "--val"),
    (["--limit", "0"], "--limit"), (["--limit", "-1"], "--limit"),
    (["--lr", "nan"], "--lr"), (["--lr", "0"], "--lr"), (["--fine-tune-lr", "-1"], "--fine-tune-lr"),
    (["--views", "-1"], "--views"), (["--scene-weight", "0"], "--scene-weight"),
    # a detector score: NaN, 5 or -1 were taken and cut no (or every) scene crop
    (["--scene-score", "nan"], "--scene-score"), (["--scene-score", "5"], "--scene-score"),
    (["--scene-score", "-1"], "--scene-score"),
])
def test_train_refuses_bad_numbers_while_parsing(bad: list[str], says: str, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        train.parse_args(["--out", "runs/never"] + bad)
    assert exc.value.code == 2
    assert says in capsys.readouterr().err


def test_a_file_name_that_is_not_utf8_is_split_and_read_back(tmp_path: Path) -> None:
    """A training image named in Latin-1 (caf\\xe9.png) stopped make_split with a
    UnicodeEncodeError traceback in the data fingerprint, before training began. Now it is split
    like the others, saved in split.json and read back from it; a UTF-8 name's fingerprint is
    what it was (the shipped models' records name theirs)."""
    import hashlib

    data = noise_dataset(tmp_path / "data", 5, 24)
    os.rename(data / "with_mask" / "0.png", os.fsdecode(bytes(data / "with_mask") + b"/caf\xe9.png"))
    split = dataset.make_split(data, 0.2, 0.2)
    dataset.save_split(split, tmp_path / "split.json")
    again = dataset.load_split(tmp_path / "split.json")
    paths = [p for part in ("train", "val", "test") for p in dataset.subset_files(again, part)[0]]
    assert len(paths) == 10 and bytes(data / "with_mask") + b"/caf\xe9.png" in map(bytes, paths)
    assert dataset.load_resized(paths, 8).shape == (10, 8, 8, 3)
    item = dataset.Item("with_mask/x.png", 0, "ab")
    assert dataset.fingerprint([item]) == hashlib.sha256(
        b"with_mask/x.png\t0\tab\n").hexdigest()

def test_make_split_refuses_unusable_data(tmp_path: Path) -> None:
    allbad = tmp_path / "allbad"
    (allbad / "with_mask").mkdir(parents=True)
    (allbad / "with_mask" / "a.jpg").write_bytes(b"no")
    (allbad / "without_mask").mkdir()
    (allbad / "without_mask" / "b.jpg").write_bytes(b"image")
    with pytest.raises(SystemExit) as exc:
        dataset.make_split(allbad)
    assert "none of its 2 files is a readable image" in _exit_message(exc)

    one = _dataset(tmp_path / "one", 5, classes=("with_mask",))
    with pytest.raises(SystemExit) as exc:
        dataset.make_split(one, 0.2, 0.2)
    assert "train part of the split has no no_mask images" in _exit_message(exc)

    tiny = _dataset(tmp_path / "tiny", 3)
    with pytest.raises(SystemExit) as exc:  # 3 x 0.1 rounds to no val image at all
        dataset.make_split(tiny, 0.1, 0.1)
    assert "val part of the split has no mask and no no_mask images" in _exit_message(exc)
    split = dataset.make_split(tiny, 0.34, 0.0, limit=3)
    assert split["limit_per_class"] == 3 and len(split["val"]) == 2


def test_make_split_of_a_link_loop_names_it(tmp_path: Path) -> None:
    """--data naming a link that points at itself (a loop): Path.resolve raised 'RuntimeError:
    Symlink loop' in make_split, a traceback after the model was built and the run folder made.
    Now it is the one line of any dataset folder that cannot be read."""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(SystemExit) as exc:
        dataset.make_split(tmp_path / "loop")
    assert _exit_message(exc) == f"dataset folder not found: {tmp_path / 'loop'}"


def test_linked_folders_are_read_and_what_is_left_out_is_named(tmp_path: Path) -> None:
    """A folder of images linked into a class folder (from another disk) was left out without a
    word, and so were a broken link and a named pipe: a training set smaller than the folder
    looked, counted as if complete. Now a linked folder is read (as maskd classify reads it),
    each folder once, and a file or link left out is listed with the unreadable ones."""
    import os

    data = _dataset(tmp_path / "data", 4)
    extra = _dataset(tmp_path / "extra", 3, classes=("more",))
    for i, f in enumerate(sorted((extra / "more").iterdir())):  # bytes unlike data's
        _image(f, 200 + i)
    (data / "without_mask" / "linked").symlink_to(extra / "more")
    (data / "with_mask" / "loop").symlink_to(data / "with_mask")
    (data / "with_mask" / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    os.mkfifo(data / "with_mask" / "pipe.jpg")
    split = dataset.make_split(data, 0.25, 0.25)
    assert sum(split["counts"][part]["no_mask"] for part in split["counts"]) == 4 + 3
    assert sum(split["counts"][part]["mask"] for part in split["counts"]) == 4
    assert {u["rel"]: u["reason"].split(": ", 1)[1] for u in split["unreadable"]} == {
        "with_mask/gone.jpg": "not a regular file (a broken link, a named pipe)",
        "with_mask/pipe.jpg": "not a regular file (a broken link, a named pipe)",
        "with_mask/loop": "a link to a folder searched already, not searched again"}


def test_a_folder_and_a_link_to_it_give_the_same_split_on_every_disk(tmp_path: Path) -> None:
    """A folder with a second link to it was read under whichever name the disk listed first
    (ext4 hashes names, with a seed of its own; tmpfs lists the newest first): the same data
    copied to another disk gave other paths, another fingerprint and another split, and the
    real folder was listed as 'a link to a folder read already'. Now, as maskd classify reads
    them, the names are taken in sorted order."""
    data = _dataset(tmp_path / "data", 4)
    for k in range(8):  # eight pairs: a listing order that happens to be sorted passes 1 in 256
        real = data / "without_mask" / f"a{k}"
        for i in range(2):
            _image(real / f"{i}.png", 140 + 12 * k + i)
        (data / "without_mask" / f"b{k}").symlink_to(real)
    split = dataset.make_split(data, 0.25, 0.25)
    rows = [rel for part in ("train", "val", "test") for rel, _ in split[part]]
    assert len(rows) == 8 + 16
    assert not [rel for rel in rows if "/b" in rel]
    assert sorted(u["rel"] for u in split["unreadable"]) == [f"without_mask/b{k}" for k in range(8)]


def test_load_split_names_the_broken_file(tmp_path: Path) -> None:
    cases = {"missing.json": None, "trunc.json": '{"root": "/x", "tr',
             "nokey.json": '{"a": 1}', "rows.json": json.dumps(
                 {"root": "/x", "train": [["a.png", 0]], "val": [["b.png"]], "test": []})}
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        with pytest.raises(SystemExit) as exc:
            dataset.load_split(path)
        assert _exit_message(exc).startswith(f"{path}: ")
    assert '"val" is not a list of [path, label] rows' in _exit_message(exc)


def test_train_refuses_a_folder_that_holds_a_run(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "split.json").write_text("the earlier run's split")
    with pytest.raises(SystemExit) as exc:
        train.main(["--out", str(run), "--data", str(tmp_path / "nodata")])
    assert "holds a run already (split.json); choose a new --out folder" in _exit_message(exc)
    assert (run / "split.json").read_text() == "the earlier run's split"


def test_train_out_inside_a_file(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as exc:
        train.main(["--out", str(tmp_path / "afile" / "run")])
    assert _exit_message(exc).startswith(f"{tmp_path / 'afile' / 'run'}: cannot create the output folder")


@pytest.mark.slow
def test_train_stopped_for_missing_data_leaves_no_empty_out_folder(tmp_path: Path) -> None:
    """`train.py --data MISSING --out runs/x` stopped with 'dataset folder not found' and left
    runs/x behind, empty, as if a run had been made there; so are the folders above it that it
    created (runs/ was left, empty). A folder it found stays."""
    pytest.importorskip("tensorflow")
    for out in (tmp_path / "runs" / "new", tmp_path):
        r = subprocess.run([sys.executable, "tools/train.py", "--data", str(tmp_path / "none"),
                            "--weights", "none", "--size", "32", "--out", str(out)],
                           capture_output=True, text=True, timeout=300, cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
        assert r.returncode == 1 and r.stderr.splitlines()[-1] == (
            f"dataset folder not found: {tmp_path / 'none'}"), r.stderr
    assert not (tmp_path / "runs").exists()
    assert tmp_path.is_dir()


@pytest.mark.slow
def test_train_checks_weights_and_layer_before_writing(tmp_path: Path) -> None:
    """A truncated --weights and an unknown --fine-tune-from stop before split.json is written
    (they used to show after it, the layer only after the head phase). Builds a 32 px base."""
    pytest.importorskip("tensorflow")
    data = _dataset(tmp_path / "data", 3)
    trunc = tmp_path / "trunc.weights.h5"
    trunc.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(100))
    base = ["--data", str(data), "--size", "32", "--epochs", "1", "--val", "0.34", "--test", "0"]
    with pytest.raises(SystemExit) as exc:
        train.main(base + ["--out", str(tmp_path / "r1"), "--weights", str(trunc)])
    assert _exit_message(exc).startswith(f"{trunc}: cannot load as MobileNetV2")
    assert not (tmp_path / "r1" / "split.json").exists()
    with pytest.raises(SystemExit) as exc:
        train.main(base + ["--out", str(tmp_path / "r2"), "--weights", "none",
                           "--fine-tune-epochs", "1", "--fine-tune-from", "nope"])
    assert "--fine-tune-from nope: no such layer" in _exit_message(exc)
    assert not (tmp_path / "r2" / "split.json").exists()


def test_a_corrupt_keras_model_is_named_by_every_tool(tmp_path: Path) -> None:
    """evaluate, convert and explain share one loader: 'PATH: not a readable .keras model'
    (Keras itself says 'File not found' for a file that is there)."""
    from tools import convert, evaluate, explain

    bad = tmp_path / "model.keras"
    bad.write_bytes(b"PK no zip")
    data = _dataset(tmp_path / "data", 1)
    face = _image(tmp_path / "face.png")
    for call in (lambda: evaluate.main(["--model", str(bad), "--data", str(data)]),
                 lambda: convert.main([str(bad), "--formats", "float32", "--out", str(tmp_path / "o")]),
                 lambda: explain.main(["--model", str(bad), str(face), "--out", str(tmp_path / "x")])):
        with pytest.raises(SystemExit) as exc:
            call()
        assert _exit_message(exc) == f"{bad}: not a readable .keras model (not a zip archive)"


def test_convert_checks_the_model_before_asking_for_calibration(tmp_path: Path) -> None:
    """convert.py given the shipped .tflite said 'int8 needs calibration images:
    models/split.json not found (pass --split)': the input is no Keras model at all, which
    it said only once --split was given. Now the model is checked first."""
    from tools import convert

    tflite = Path(__file__).resolve().parents[1] / "models" / "maskd_mobilenetv2_int8.tflite"
    with pytest.raises(SystemExit) as exc:
        convert.main([str(tflite), "--out", str(tmp_path / "cw")])
    assert _exit_message(exc) == f"{tflite}: not a readable .keras model (not a zip archive)"
    with pytest.raises(SystemExit) as exc:
        convert.main([str(tmp_path / "none.keras"), "--out", str(tmp_path / "cw")])
    assert _exit_message(exc).startswith(f"{tmp_path / 'none.keras'}: model not found")


@pytest.mark.slow
def test_a_zip_that_is_no_keras_model_is_named(tmp_path: Path) -> None:
    import zipfile

    from tools.inputs import load_keras

    pytest.importorskip("keras")
    bad = tmp_path / "other.keras"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("readme.txt", "not a model")
    with pytest.raises(SystemExit) as exc:
        load_keras(bad)
    assert _exit_message(exc).startswith(f"{bad}: not a readable .keras model (")


@pytest.mark.parametrize("bad, says", [
    (["--calibration-images", "0"], "--calibration-images"),
    (["--calibration-images", "-5"], "--calibration-images"),
    (["--calibration-augmented", "1.5"], "--calibration-augmented"),
    (["--formats", ""], "names no format"), (["--formats", " , "], "names no format"),
])
def test_convert_refuses_bad_options(tmp_path: Path, bad: list[str], says: str, capsys) -> None:
    from tools import convert

    model = tmp_path / "model.keras"
    model.write_bytes(b"not read: the options fail first")
    with pytest.raises(SystemExit) as exc:
        convert.main([str(model), "--out", str(tmp_path / "o")] + bad)
    assert exc.value.code == 2 and says in capsys.readouterr().err


def test_convert_never_replaces_a_model_without_force(tmp_path: Path, monkeypatch, capsys) -> None:
    """--out defaults to models/, where the shipped model and its sidecar live: run from the repo
    root, convert.py used to replace both. Now an existing model or sidecar stops it (exit 2,
    naming the file) before any work, unless --force."""
    from tools import convert

    model = tmp_path / "model.keras"
    model.write_bytes(b"PK not read unless --force")
    shipped = tmp_path / "models"
    shipped.mkdir()
    (shipped / "maskd_mobilenetv2_float32.tflite").write_bytes(b"the shipped model")
    (shipped / "maskd_mobilenetv2_int8.json").write_text("the shipped sidecar")
    monkeypatch.chdir(tmp_path)
    for formats, name in (("float32", "maskd_mobilenetv2_float32.tflite"),
                          ("int8", "maskd_mobilenetv2_int8.json")):
        with pytest.raises(SystemExit) as exc:
            convert.main([str(model), "--formats", formats])
        assert exc.value.code == 2
        err = capsys.readouterr().err.splitlines()[-1]
        assert f"{Path('models') / name} exists; pass --force" in err
    assert (shipped / "maskd_mobilenetv2_float32.tflite").read_bytes() == b"the shipped model"
    assert (shipped / "maskd_mobilenetv2_int8.json").read_text() == "the shipped sidecar"
    with pytest.raises(SystemExit) as exc:  # --force passes the check; the fake model stops it
        convert.main([str(model), "--formats", "float32", "--force"])
    assert "not a readable .keras model" in _exit_message(exc)
    with pytest.raises(SystemExit) as exc:  # another --name in the same folder is fine
        convert.main([str(model), "--formats", "float32", "--name", "other"])
    assert "not a readable .keras model" in _exit_message(exc)


def test_convert_out_inside_a_file_and_calibration_from_a_wrong_data_root(tmp_path: Path,
                                                                          capsys) -> None:
    from tools import convert

    (tmp_path / "afile").write_text("")
    model = tmp_path / "model.keras"
    model.write_bytes(b"not read: the output folder fails first")
    with pytest.raises(SystemExit) as exc:
        convert.main([str(model), "--out", str(tmp_path / "afile" / "o")])
    assert "cannot create the output folder" in _exit_message(exc)

    data = _dataset(tmp_path / "data", 2)
    split = {"root": str(data), "train": [["with_mask/0.png", 0], ["without_mask/1.png", 1]]}
    rep, used = convert.representative_images(split, 32, 10, 0, None, 0.0)
    assert len(rep) == 2 and rep[0].shape == (1, 32, 32, 3)
    (data / "with_mask" / "0.png").write_bytes(b"cut")
    rep, used = convert.representative_images(split, 32, 10, 0, None, 0.0)
    assert used == [data / "without_mask" / "1.png"]
    assert "calibration skips unreadable" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        convert.representative_images(split, 32, 10, 0, tmp_path / "elsewhere", 0.0)
    assert "no readable calibration image among 2" in _exit_message(exc)


def _voc(root: Path, boxes: dict[str, str], image: bool = True) -> Path:
    """A scene folder: one 64x48 photo per entry, its XML holding ``boxes`` (raw <object> text)."""
    (root / "annotations").mkdir(parents=True)
    for stem, objects in boxes.items():
        (root / "annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.png</filename>{objects}</annotation>")
        if image:
            _image(root / "images" / f"{stem}.png")
    return root


def _obj(name: str, x0: int, y0: int, x1: int, y1: int) -> str:
    return (f"<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
            f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>")


def test_evaluate_voc_leaves_out_broken_photos_with_a_reason(tmp_path: Path, capsys) -> None:
    from tools import evaluate

    root = _voc(tmp_path / "voc", {
        "good": _obj("without_mask", 1, 1, 7, 7) + _obj("mask_weared_incorrect", 0, 0, 4, 4),
        "badxml": "<object>", "nobox": "<object><name>with_mask</name></object>",
        "zero": _obj("with_mask", 3, 3, 3, 6), "outside": _obj("with_mask", 500, 1, 600, 7),
        "trunc": _obj("with_mask", 1, 1, 7, 7)})
    (root / "images" / "trunc.png").write_bytes((root / "images" / "trunc.png").read_bytes()[:30])
    crops, labels, skipped = evaluate.voc_crops(root, 0.1, 1)
    assert [c.name for c in crops] == ["good.png#0"] and labels.tolist() == [1]
    assert skipped == {"small": 0, "mask_weared_incorrect": 1, "photos": 5}
    err = capsys.readouterr().err
    for stem, why in (("badxml", "not valid XML"), ("nobox", "no whole <bndbox>"),
                      ("zero", "empty box"), ("outside", "lies outside the 8x8 photo"),
                      ("trunc", "trunc.png")):
        assert any(line.startswith("evaluate: skipped") and f"{stem}." in line and why in line
                   for line in err.splitlines()), (stem, err)
    with pytest.raises(SystemExit) as exc:  # only crops below --min-face-px left
        evaluate.voc_crops(root, 0.1, 20)
    assert "no face crop left to score" in _exit_message(exc)


def test_a_photo_without_an_annotation_is_named_not_dropped(tmp_path: Path, capsys) -> None:
    """The loader walked annotations/ only: a photo without its XML was left out unseen and
    counted nowhere. Now it is a skipped photo ('no annotation') in every tool that loads."""
    from tools import evaluate
    from tools.eval_scenes import load_scenes

    root = _voc(tmp_path / "voc", {"b_good": _obj("without_mask", 1, 1, 7, 7)})
    _image(root / "images" / "a_lonely.png")
    crops, labels, skipped = evaluate.voc_crops(root, 0.1, 1)
    assert [c.name for c in crops] == ["b_good.png#0"] and skipped["photos"] == 1
    err = capsys.readouterr().err
    assert (f"evaluate: skipped {root / 'images' / 'a_lonely.png'}: no annotation (no "
            f"{root / 'annotations' / 'a_lonely'}.xml)") in err
    why: list[str] = []
    assert [sc.image.name for sc in load_scenes(root, skipped=why)] == ["b_good.png"]
    assert len(why) == 1 and "a_lonely.png: no annotation" in why[0]
    with pytest.raises(FileNotFoundError):  # the first photo by name has no annotation
        load_scenes(root, limit=1, skipped=[])


@pytest.mark.parametrize("layout", ["no annotations", "empty annotations", "no images"])
def test_evaluate_voc_without_usable_photos_stops(tmp_path: Path, layout: str) -> None:
    from tools import evaluate

    root = tmp_path / "voc"
    if layout == "no images":
        _voc(root, {"a": _obj("with_mask", 1, 1, 7, 7)}, image=False)
    else:
        (root / "images").mkdir(parents=True)
        if layout == "empty annotations":
            (root / "annotations").mkdir()
    with pytest.raises(SystemExit) as exc:
        evaluate.voc_crops(root, 0.1, 1)
    assert _exit_message(exc).startswith(f"evaluate: {root}")


@pytest.mark.parametrize("bad", [["--threshold", "1.5"], ["--threshold", "nan"], ["--margin", "nan"],
                                 ["--margin", "-0.1"], ["--threads", "0"]])
def test_evaluate_refuses_bad_numbers(bad: list[str], capsys) -> None:
    from tools import evaluate

    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--model", "m.tflite", "--data", "d"] + bad)
    assert exc.value.code == 2 and bad[0] in capsys.readouterr().err


def test_evaluate_with_nothing_readable_keeps_the_earlier_report(tmp_path: Path,
                                                                 default_model: Path) -> None:
    from tools import evaluate

    data = tmp_path / "data"
    for cls in ("with_mask", "without_mask"):
        (data / cls).mkdir(parents=True)
        (data / cls / "x.jpg").write_bytes(b"not an image")
    out = tmp_path / "eval"
    out.mkdir()
    (out / "metrics.json").write_text('{"earlier": "good run"}')
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--model", str(default_model), "--data", str(data), "--out", str(out)])
    assert "none of the 2 images" in _exit_message(exc) and "nothing was scored" in _exit_message(exc)
    assert (out / "metrics.json").read_text() == '{"earlier": "good run"}'
    (tmp_path / "afile").write_text("")
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--model", str(default_model), "--data", str(data),
                       "--out", str(tmp_path / "afile" / "eval")])
    assert "cannot create the output folder" in _exit_message(exc)



def test_evaluate_writes_predictions_of_an_image_whose_name_is_not_utf8(
        tmp_path: Path, default_model: Path) -> None:
    """A file named in Latin-1 (an old zip, a Windows copy: b'caf\\xe9.png') is scored like any
    other, but predictions.csv then failed to encode its name: a UnicodeEncodeError traceback
    after the scoring, and no predictions.csv nor confusion.png. Now the name is written as the
    file system has it, so the row still leads to the file."""
    from tools import evaluate

    data = tmp_path / "data"
    rng = np.random.default_rng(0)
    for cls in ("with_mask", "without_mask"):
        (data / cls).mkdir(parents=True)
        cv2.imwrite(str(data / cls / "a.png"), rng.integers(0, 256, (40, 40, 3), np.uint8))
    odd = os.fsdecode(bytes(data / "with_mask") + b"/caf\xe9.png")
    Path(odd).write_bytes(cv2.imencode(".png", rng.integers(0, 256, (40, 40, 3), np.uint8))[1])
    out = tmp_path / "eval"
    assert evaluate.main(["--model", str(default_model), "--data", str(data), "--out",
                          str(out)]) == 0
    rows = (out / "predictions.csv").read_bytes().splitlines()
    assert len(rows) == 4 and any(row.startswith(os.fsencode(odd) + b",") for row in rows)
    assert (out / "confusion.png").is_file()

def _strict_json(path: Path) -> dict:
    """JSON as a strict reader takes it: NaN / Infinity are not JSON."""
    def refuse(constant: str) -> None:
        raise ValueError(f"{path}: {constant} is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def test_metrics_of_one_class_are_null_in_json_and_na_when_printed(
        tmp_path: Path, facemask_dir: Path, default_model: Path) -> None:
    """evaluate.py --out on a folder of one class wrote "precision": NaN (not JSON: strict
    readers refuse the whole file) and printed 'precision nan'. Now null and 'n/a'; the one
    JSON writer of the tools (tools/inputs.write_json) does it for train.py and explain.py too."""
    import subprocess
    import sys

    data = tmp_path / "one" / "with_mask"
    data.mkdir(parents=True)
    for src in sorted((facemask_dir / "with_mask").iterdir())[:3]:
        (data / src.name).write_bytes(src.read_bytes())
    run = subprocess.run([sys.executable, "tools/evaluate.py", "--model", str(default_model),
                          "--data", str(data.parent), "--out", str(tmp_path / "eval")],
                         cwd=default_model.parents[1], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "precision n/a  recall n/a  f1 n/a" in run.stdout and "nan" not in run.stdout
    met = _strict_json(tmp_path / "eval" / "metrics.json")["models"][0]["metrics"]
    assert met["precision"] is None and met["accuracy"] == 1.0


def test_a_zero_grad_cam_map_is_null_in_json(tmp_path: Path) -> None:
    """explain.py --json wrote NaN for a zero Grad-CAM map (lower_half_share of nothing)."""
    from tools.explain import lower_half_share
    from tools.inputs import write_json

    share = lower_half_share(np.zeros((4, 4)))
    write_json(tmp_path / "x.json", {"images": [{"gradcam_lower_half": share}],
                                     "n": np.int64(3), "mean": np.float32(0.5)})
    assert _strict_json(tmp_path / "x.json") == {"images": [{"gradcam_lower_half": None}],
                                                 "n": 3, "mean": 0.5}


def test_features_names_a_missing_model_before_its_sidecar(tmp_path: Path) -> None:
    from tools import features

    (tmp_path / "m.json").write_text("{}")  # a sidecar without its model
    with pytest.raises(SystemExit) as exc:
        features.main([str(tmp_path / "m.tflite")])
    assert _exit_message(exc) == f"features: {tmp_path / 'm.tflite'}: model file not found"


@pytest.mark.slow
def test_features_names_a_truncated_model(tmp_path: Path) -> None:
    from tools import features

    pytest.importorskip("tensorflow")
    side = Path(__file__).resolve().parents[1] / "models" / "maskd_mobilenetv2_int8.json"
    if not side.is_file():
        pytest.skip(f"needs {side} (the shipped model's sidecar)")
    (tmp_path / "m.json").write_text(side.read_text())
    (tmp_path / "m.tflite").write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(992))
    with pytest.raises(SystemExit) as exc:
        features.main([str(tmp_path / "m.tflite")])
    assert _exit_message(exc).startswith(f"features: {tmp_path / 'm.tflite'}: not a readable TFLite")


@pytest.mark.slow
def test_features_out_a_folder_or_in_a_missing_folder(tmp_path: Path, capsys) -> None:
    """--out naming a folder, or a file in a folder not there yet, was a TensorFlow traceback
    (FailedPreconditionError / NotFoundError) after the work; now a folder is one line before
    it and a missing folder is made, as the other tools' outputs are."""
    from tools import features

    pytest.importorskip("tensorflow")
    model = Path(__file__).resolve().parents[1] / "models" / "maskd_mobilenetv2_int8_s43.tflite"
    if not model.is_file():
        pytest.skip(f"needs {model}")
    (tmp_path / "fd").mkdir()
    with pytest.raises(SystemExit) as exc:
        features.main([str(model), "--out", str(tmp_path / "fd")])
    assert _exit_message(exc) == f"{tmp_path / 'fd'}: is a folder; give a file name for the output"
    out = tmp_path / "nodir" / "x.tflite"
    assert features.main([str(model), "--out", str(out)]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["outputs"] == {"scores": 0,
                                                                         "features": 1}


@pytest.mark.slow
def test_features_on_a_full_disk_leaves_the_earlier_model_and_sidecar(tmp_path: Path) -> None:
    """--out over a model written before (or in place, as models/MODEL_CARD.md runs it) on a
    disk without room for the new one: the old model was cut where the disk filled, its old
    sidecar left beside it, and maskd could no longer load it. Now the model and its sidecar
    are written whole or not at all (a real 1 MiB tmpfs)."""
    from mqtt_broker import small_disk

    from tools import features

    pytest.importorskip("tensorflow")
    model = Path(__file__).resolve().parents[1] / "models" / "maskd_mobilenetv2_int8_s43.tflite"
    if not model.is_file():
        pytest.skip(f"needs {model}")
    with small_disk(tmp_path / "disk", "1m") as disk:
        out = disk / "b.tflite"
        out.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(100_000))  # the earlier model
        out.with_suffix(".json").write_text(model.with_suffix(".json").read_text())
        before = {p.name: p.read_bytes() for p in disk.iterdir()}
        with pytest.raises(SystemExit) as exc:
            features.main([str(model), "--out", str(out)])
        assert _exit_message(exc) == (f"features: {out}: cannot write it (No space left on "
                                      "device); the files there are left as they were")
        assert {p.name: p.read_bytes() for p in disk.iterdir()} == before


@pytest.mark.parametrize("bad", [["--iou", "nan"], ["--iou", "0"], ["--iou", "1.5"],
                                 ["--threshold", "2"], ["--limit", "0"]])
def test_eval_scenes_refuses_bad_numbers(bad: list[str], capsys) -> None:
    from tools import eval_scenes

    with pytest.raises(SystemExit) as exc:
        eval_scenes.parse_args(bad)
    assert exc.value.code == 2 and bad[0] in capsys.readouterr().err


def test_eval_video_checks_frames_and_outputs_first(tmp_path: Path, capsys) -> None:
    from tools import eval_video

    # --queue-people -2 sliced 'all but the last 2' photos into the queue and recorded -2
    for bad in (["--frames", "0"], ["--queue-people", "-2"], ["--queue-people", "0"],
                ["--jobs", "0"], ["--jobs", "-1"], ["--queue-context", "-1"]):
        with pytest.raises(SystemExit) as exc:
            eval_video.parse_args(bad)
        assert exc.value.code == 2 and bad[0] in capsys.readouterr().err
    (tmp_path / "afile").write_text("")
    for opt in ("--json", "--sheet", "--plot"):
        with pytest.raises(SystemExit) as exc:  # before any scene is read or clip rendered
            name = "x.png" if opt == "--sheet" else "x"
            eval_video.main([opt, str(tmp_path / "afile" / name), "--scenes", str(tmp_path / "no")])
        assert _exit_message(exc).startswith(f"{tmp_path / 'afile'}")
        assert "cannot create the output folder" in _exit_message(exc)


@pytest.mark.parametrize("bad", [["--size", "0"], ["--limit", "-1"], ["--limit", "0"],
                                 ["--zooms", "0"], ["--zooms", "1,-2"],
                                 ["--score-threshold", "7"], ["--score-threshold", "nan"],
                                 ["--min-px", "-1"]])
def test_scene_crops_refuses_bad_numbers(bad: list[str], capsys) -> None:
    """Each was a traceback after the scenes were read, or taken silently (--limit -1)."""
    from tools import scene_crops

    with pytest.raises(SystemExit) as exc:
        scene_crops.parse_args(bad)
    assert exc.value.code == 2 and bad[0] in capsys.readouterr().err


def test_scene_crops_checks_the_sheet_before_the_work(tmp_path: Path) -> None:
    """--sheet sheet.txt was a cv2.error traceback after every crop was cut; nodir/x.png said
    'wrote' and wrote nothing. Now the type is checked and the folder made while parsing, and a
    write that fails all the same stops the tool naming the file."""
    from tools import scene_crops
    from tools.inputs import write_image

    with pytest.raises(SystemExit) as exc:
        scene_crops.parse_args(["--sheet", str(tmp_path / "sheet.txt")])
    assert _exit_message(exc).startswith(f"{tmp_path / 'sheet.txt'}: cannot write an image")
    args = scene_crops.parse_args(["--sheet", str(tmp_path / "nodir" / "x.png")])
    assert (tmp_path / "nodir").is_dir() and args.zooms == (1.0, 2.0)
    assert scene_crops.parse_args(["--zooms", "1,3"]).zooms == (1.0, 3.0)
    with pytest.raises(SystemExit) as exc:
        write_image(tmp_path / "gone" / "x.png", np.zeros((4, 4, 3), np.uint8))
    assert _exit_message(exc) == (f"{tmp_path / 'gone' / 'x.png'}: cannot write the image "
                                  "(No such file or directory)")


@pytest.mark.parametrize("bad, says", [
    (["-o", "score_threshold=7"], "-o 'score_threshold=7': Input should be less than or equal to 1"),
    (["-o", "input_width=abc"], "-o 'input_width=abc': Input should be a valid integer"),
    (["--thresholds", "1.5,-2"], "--thresholds"), (["--thresholds", "0.5,nan"], "--thresholds"),
])
def test_eval_scenes_checks_overrides_and_thresholds_while_parsing(bad: list[str], says: str,
                                                                   capsys) -> None:
    """-o values were a pydantic traceback once the first variant was built; --thresholds 1.5
    was taken and scored."""
    from tools import eval_scenes

    with pytest.raises(SystemExit) as exc:
        eval_scenes.parse_args(bad)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and says in err and "Traceback" not in err
    args = eval_scenes.parse_args(["-o", "score_threshold=0.4", "--thresholds", "0.5,0.9"])
    assert args.overrides == {"score_threshold": "0.4"} and args.thresholds == [0.5, 0.9]


@pytest.mark.parametrize("tool, bad", [
    ("train", ["--seed", "-1"]), ("convert", ["--seed", "-1"]),
    ("bench", ["--repeats", "0"]), ("bench", ["--warmup", "-1"]), ("bench", ["--frames", "0"]),
])
def test_seeds_and_repeats_are_checked_while_parsing(tmp_path: Path, tool: str, bad: list[str],
                                                     capsys) -> None:
    """--seed -1 failed in numpy/Keras after the split was written; bench --repeats 0 was a
    StatisticsError after the models were loaded."""
    import importlib

    mod = importlib.import_module(f"tools.{tool}")
    argv = {"train": ["--out", str(tmp_path / "run")], "bench": [],
            "convert": [str(tmp_path / "m.keras"), "--out", str(tmp_path / "o")]}[tool]
    with pytest.raises(SystemExit) as exc:
        mod.parse_args(argv + bad) if tool != "convert" else mod.main(argv + bad)
    assert exc.value.code == 2 and bad[0] in capsys.readouterr().err
    assert not (tmp_path / "run").exists() and not (tmp_path / "o").exists()


@pytest.mark.parametrize("tool, bad", [
    ("eval_video", ["--seed", "-1"]),
    ("eval_scenes", ["--small-px", "nan"]), ("eval_scenes", ["--small-px", "-3"]),
    ("eval_scenes", ["--min-face-px", "-5"]),
    ("tradeoff", ["report", "--split", "s.json", "--sizes", "abc"]),
    ("tradeoff", ["report", "--split", "s.json", "--model", "abc=m.tflite"]),
    ("tradeoff", ["report", "--split", "s.json", "--model", "m.tflite"]),
    ("tradeoff", ["report", "--split", "s.json", "--repeats", "0"]),
    ("tradeoff", ["train", "--sizes", "128,-1"]),
    ("soak", ["--minutes", "nan"]), ("soak", ["--sample-s", "inf"]),
    ("bench_clip", ["--frames", "0"]), ("bench_clip", ["--work-s", "0"]),
    ("bench_motion", ["--empty", "0"]), ("bench_site", ["--frames", "0"]),
    ("bench_site", ["--faces", "-1"]), ("bench_preview", ["--rounds", "0"]),
    ("bench_mqtt", ["--events", "0"]), ("bench_writes", ["--seconds", "0"]),
    ("bench_frames", ["--reps", "0"]), ("bench_frames", ["--fsync-ms", "-1"]),
])
def test_every_tools_numbers_are_checked_while_parsing(tool: str, bad: list[str], monkeypatch,
                                                       capsys) -> None:
    """Each was a traceback (ZeroDivisionError, StatisticsError, numpy's 'expected non-negative
    integer', int('abc')) or taken silently (--small-px -3; soak --minutes nan never ended)."""
    import importlib
    import sys

    mod = importlib.import_module(f"tools.{tool}")
    monkeypatch.setattr(sys, "argv", [f"{tool}.py", *bad])
    with pytest.raises(SystemExit) as exc:
        mod.main(bad) if tool in ("eval_video", "tradeoff", "soak") else mod.main()
    err = capsys.readouterr().err
    opt = next(a for a in bad if a.startswith("--") and a != "--split")
    assert exc.value.code == 2 and opt in err and "Traceback" not in err, err


def test_bench_preview_without_yunet_says_so(tmp_path: Path, monkeypatch) -> None:
    """--detector yunet where YuNet was never fetched (a clean clone offline) was a traceback
    out of make_detector; now one line naming what is missing."""
    import sys

    from tools import bench_preview

    monkeypatch.setenv("MASKD_YUNET", str(tmp_path / "none.onnx"))
    monkeypatch.setattr(sys, "argv", ["bench_preview.py", "--detector", "yunet"])
    with pytest.raises(SystemExit) as exc:
        bench_preview.main()
    said = _exit_message(exc)
    assert said.startswith("bench_preview: --detector yunet: ") and "maskd models fetch" in said


def test_reports_and_sheets_are_checked_before_the_work(tmp_path: Path, monkeypatch) -> None:
    """A --sheet of no image type (eval_video: a cv2.error after every clip had run) and --json
    or --plot in a folder that cannot be made (bench, tradeoff, soak: a traceback after the
    timings) now stop at once naming the path; a report that cannot be written at the end is
    one line too."""
    import sys

    from tools import bench, eval_video, soak, tradeoff
    from tools.inputs import write_out

    (tmp_path / "afile").write_text("")
    inside = tmp_path / "afile" / "x"
    with pytest.raises(SystemExit) as exc:
        eval_video.main(["--sheet", str(tmp_path / "s.txt"), "--scenes", str(tmp_path / "no")])
    assert _exit_message(exc).startswith(f"{tmp_path / 's.txt'}: cannot write an image")
    for call in (lambda: bench.parse_args(["--json", str(inside / "b.json")]),
                 lambda: bench.parse_args(["--plot", str(inside)]),
                 lambda: tradeoff.main(["report", "--split", "s.json", "--json",
                                        str(inside / "t.json")]),
                 lambda: soak.main(["--json", str(inside / "s.json")])):
        monkeypatch.setattr(sys, "argv", ["tool"])
        with pytest.raises(SystemExit) as exc:
            call()
        said = _exit_message(exc)
        assert said.startswith(f"{tmp_path / 'afile'}") and "cannot create the output folder" in said
    with pytest.raises(SystemExit) as exc:
        tradeoff.main(["report", "--split", "s.json", "--plot", str(tmp_path / "p.txt")])
    assert _exit_message(exc).startswith(f"{tmp_path / 'p.txt'}: cannot save a figure of type")
    with pytest.raises(SystemExit) as exc:
        write_out(tmp_path / "gone" / "r.json", "{}")
    assert _exit_message(exc).startswith(f"{tmp_path / 'gone' / 'r.json'}: cannot write it (")


def test_a_model_file_that_cannot_be_read_is_named_by_every_tool(tmp_path: Path) -> None:
    """edgetpu_check, bench's MAC count and tradeoff (through evaluate's open_model) showed a
    ValueError traceback from the runtime for a missing, empty or truncated model."""
    import subprocess
    import sys

    from tools import edgetpu_check
    from tools.benchlib.macs import tflite_macs
    from tools.evaluate import open_model

    shipped = Path(__file__).resolve().parents[1] / "models" / "maskd_mobilenetv2_int8.tflite"
    if not shipped.is_file():
        pytest.skip(f"needs {shipped}")
    trunc = tmp_path / "m.tflite"
    trunc.write_bytes(shipped.read_bytes()[:1000])
    (tmp_path / "m.json").write_text(shipped.with_suffix(".json").read_text())
    (tmp_path / "empty.tflite").write_bytes(b"")
    for model, says in ((tmp_path / "gone.tflite", "model file not found"),
                        (tmp_path, "a folder, not a model file"),
                        (trunc, "not a readable TFLite model"),
                        (tmp_path / "empty.tflite", "not a readable TFLite model")):
        r = subprocess.run([sys.executable, edgetpu_check.__file__, str(model)],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (model, r.stdout, r.stderr)
        assert f"edgetpu_check: {model}: {says}" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(SystemExit) as exc:
        tflite_macs(trunc)
    assert _exit_message(exc).startswith(f"{trunc}: cannot load TFLite model: ")
    with pytest.raises(SystemExit) as exc:
        open_model(trunc)
    assert _exit_message(exc).startswith(f"{trunc}:") and "Traceback" not in _exit_message(exc)


def test_a_missing_scene_set_is_named_as_missing(tmp_path: Path) -> None:
    """A --scenes folder that is not there said '<it>/annotations: no .xml files'."""
    from tools.eval_scenes import load_scenes

    with pytest.raises(FileNotFoundError, match=r"no such folder \(a VOC scene set has images/"):
        load_scenes(tmp_path / "nonexist")
    (tmp_path / "set").mkdir()
    with pytest.raises(FileNotFoundError, match="no annotations folder in it"):
        load_scenes(tmp_path / "set")
    (tmp_path / "set" / "annotations").mkdir()
    with pytest.raises(FileNotFoundError, match=r"set/annotations: no .xml files"):
        load_scenes(tmp_path / "set")


def test_a_report_that_does_not_fit_leaves_the_old_one_or_none(tmp_path: Path) -> None:
    """write_out wrote in place: a full disk left half a JSON report (12 KiB of invalid JSON
    from eval_video --json), presented as the report. Now the old file stays, or none is there."""
    from mqtt_broker import fill_disk, small_disk

    from tools.inputs import write_json

    big = {"clips": ["x" * 100] * 2000}  # ~200 KiB, more than the disk has left
    with small_disk(tmp_path / "disk") as disk:
        (disk / "old.json").write_text('{"old": 1}\n')
        fill_disk(disk)
        for name in ("new.json", "old.json"):
            with pytest.raises(SystemExit) as exc:
                write_json(disk / name, big)
            assert _exit_message(exc) == f"{disk / name}: cannot write it (No space left on device)"
        assert sorted(p.name for p in disk.iterdir()) == ["filler", "old.json"]  # no temp left
        assert json.loads((disk / "old.json").read_text()) == {"old": 1}
        (disk / "filler").unlink()
        write_json(disk / "old.json", big)
        assert json.loads((disk / "old.json").read_text()) == big
        assert sorted(p.name for p in disk.iterdir()) == ["old.json"]


def test_convert_calibrates_int8_on_the_train_parts_and_records_what_it_used(
        tmp_path: Path, monkeypatch, capsys) -> None:
    """The int8 ranges come from the split's train part plus, with --calibration-scenes, scene
    crops of the scene set's train part (the select part chooses models: never calibrated on);
    the sidecar records how many images that was. No TensorFlow: the converter is a stand-in."""
    import zipfile

    from tools import convert, scene_crops

    data = _dataset(tmp_path / "data", 2)
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"root": str(data), "train": [["with_mask/0.png", 0],
                                 ["without_mask/1.png", 1]], "val": [], "test": []}))
    run = tmp_path / "run"
    run.mkdir()
    model = run / "model.keras"
    with zipfile.ZipFile(model, "w") as z:
        z.writestr("config.json", "{}")
    with pytest.raises(SystemExit) as exc:  # int8 without a split: said before any work
        convert.main([str(model), "--out", str(tmp_path / "o"), "--formats", "int8"])
    assert _exit_message(exc).startswith(f"int8 needs calibration images: {run / 'split.json'}")
    (run / "record.json").write_text(json.dumps({"labels": dataset.LABELS}))
    monkeypatch.setattr(convert, "load_keras_classifier", lambda path, labels: (None, 32))
    monkeypatch.setattr(convert, "export_saved_model", lambda model, size, folder: None)
    fed: list[list[np.ndarray]] = []
    monkeypatch.setattr(convert, "convert", lambda saved, kind, rep: fed.append(rep) or b"tfl")
    monkeypatch.setattr(convert, "op_report", lambda path: {
        "ops": {"CONV_2D": 1}, "float_ops": [], "all_integer": True,
        "input": {"dtype": "uint8"}, "output": {"dtype": "uint8"}})
    parts: list[str] = []

    def crops(root: Path, part: str, size: int) -> scene_crops.SceneCrops:
        parts.append(part)
        n = 5
        return scene_crops.SceneCrops(np.zeros((n, size, size, 3), np.uint8), np.zeros(n, np.int64),
                                      ["p"] * n, ["annotated"] * n, np.ones(n), ["p"])

    monkeypatch.setattr(scene_crops, "scene_crops", crops)
    out = tmp_path / "o"
    assert convert.main([str(model), "--out", str(out), "--formats", "int8", "--split",
                         str(split), "--calibration-images", "10", "--calibration-augmented",
                         "0", "--calibration-scenes", str(tmp_path / "scenes"),
                         "--calibration-scene-crops", "3", "--features-layer", ""]) == 0
    assert parts == ["train"]
    assert len(fed) == 1 and len(fed[0]) == 2 + 3  # both train images, then 3 scene crops
    side = json.loads((out / "maskd_mobilenetv2_int8.json").read_text())
    assert side["calibration"]["images"] == 5 and side["calibration"]["subset"] == "train"
    assert side["calibration"]["scene_crops"] == 3


def test_dataset_folders_splits_and_limits(tmp_path: Path) -> None:
    """mask/no_mask folders read as with_mask/without_mask; one file in both classes leaves
    both out; val and test take their own fractions, train the rest, no file twice; --limit
    keeps at most n a class; a split row of a third label is refused."""
    root = _dataset(tmp_path / "a", 10, classes=("mask", "no_mask"))
    items = dataset.scan(root)
    assert {(it.rel.split("/")[0], it.label) for it in items} == {("mask", 0), ("no_mask", 1)}
    (root / "no_mask" / "same.png").write_bytes((root / "mask" / "0.png").read_bytes())
    kept, dropped = dataset.dedupe(dataset.scan(root))
    assert {d["rel"] for d in dropped} == {"mask/0.png", "no_mask/same.png"}
    assert all(d["reason"] == "same bytes in both classes" for d in dropped) and len(kept) == 19
    parts = dataset.stratified_split(items, val=0.2, test=0.4, seed=1)
    assert {k: len(v) for k, v in parts.items()} == {"train": 8, "val": 4, "test": 8}
    assert len({it.rel for v in parts.values() for it in v}) == 20
    assert len(dataset.limit_per_class(items, 3, seed=0)) == 6
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"root": "/x", "train": [["a.png", 2]], "val": [], "test": []}))
    with pytest.raises(SystemExit) as exc:
        dataset.load_split(bad)
    assert '"train" is not a list of [path, label] rows' in _exit_message(exc)


def test_binary_metrics_at_the_threshold_and_the_confusion_orientation() -> None:
    """P(no_mask) exactly at the threshold is no_mask (maskd.types.label_for); the matrix's
    rows are the truth (mask, no_mask), its columns the prediction, with fp != fn to tell."""
    from tools import evaluate

    m = evaluate.binary_metrics(np.array([0, 0, 1, 1, 1, 1]),
                                np.array([0.5, 0.1, 0.5, 0.2, 0.3, 0.9]), 0.5)
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (2, 1, 1, 2)
    assert m["confusion"] == [[1, 1], [2, 2]]


def test_evaluate_voc_cuts_rgb_crops_from_min_face_px_up(tmp_path: Path, capsys,
                                                        default_model: Path) -> None:
    """--voc cuts RGB crops (a red face stays red) of faces whose shorter side is at least
    --min-face-px (default 24, eval_scenes' small_px): 24 px in, 23 px out; and a folder with
    an unreadable file scores the rest, each label with its own image."""
    from tools import evaluate

    root = tmp_path / "voc"
    (root / "images").mkdir(parents=True)
    photo = np.zeros((60, 120, 3), np.uint8)
    photo[:] = (0, 0, 255)  # BGR red
    cv2.imwrite(str(root / "images" / "p.png"), photo)
    (root / "annotations").mkdir()
    (root / "annotations" / "p.xml").write_text(
        f"<annotation>{_obj('without_mask', 10, 10, 34, 40)}"
        f"{_obj('with_mask', 60, 10, 83, 40)}</annotation>")
    crops, labels, skipped = evaluate.voc_crops(root, 0.0, 24)
    assert [c.face_px for c in crops] == [24] and skipped["small"] == 1
    assert tuple(crops[0].rgb[12, 12]) == (255, 0, 0)
    assert evaluate.main(["--model", str(default_model), "--voc", str(root)]) == 0
    assert ">= 24 px" in capsys.readouterr().out
    data = _dataset(tmp_path / "data", 2)
    (data / "with_mask" / "0.png").write_bytes(b"cut")
    out = tmp_path / "eval"
    assert evaluate.main(["--model", str(default_model), "--data", str(data), "--out",
                          str(out)]) == 0
    rows = (out / "predictions.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:2] for r in rows] == [[str(data / "with_mask" / "1.png"), "mask"],
                                               [str(data / "without_mask" / "0.png"), "no_mask"],
                                               [str(data / "without_mask" / "1.png"), "no_mask"]]


def test_number_types_refuse_the_edges_and_infinity() -> None:
    """A fraction is below 1 (--val 1 leaves nothing), a probability at most 1, and no number
    type takes inf (a --scene-weight inf made every loss inf)."""
    import argparse

    from tools.inputs import fraction, positive_float, probability

    for parse, text in ((fraction, "1"), (fraction, "inf"), (positive_float, "inf"),
                        (probability, "1.01"), (positive_float, "-inf")):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(text)
    assert fraction("0") == 0 and fraction("0.999") == 0.999 and probability("1") == 1


def test_an_output_folder_that_takes_no_file_stops_before_the_work(tmp_path: Path,
                                                                   monkeypatch) -> None:
    """A folder that is there but cannot take a file (a read-only disk; root passes the mode
    bits, so it is faked here) is named at once, not after the work."""
    import errno
    import tempfile

    from tools.inputs import out_dir

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(SystemExit) as exc:
        out_dir(tmp_path)
    assert _exit_message(exc) == f"{tmp_path}: cannot write in the output folder (Read-only file system)"
