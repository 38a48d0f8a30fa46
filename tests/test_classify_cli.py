"""The `maskd classify` contract, run as a real process on real images and a broken file."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _classify(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "maskd", "classify", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture
def image_tree(tmp_path: Path, facemask_dir: Path) -> Path:
    """tmp/{mask/, no_mask/deeper/, broken.jpg, notes.txt} with real images of both classes."""
    root = tmp_path / "imgs"
    (root / "mask").mkdir(parents=True)
    (root / "no_mask" / "deeper").mkdir(parents=True)
    for src in sorted((facemask_dir / "with_mask").glob("*.jpg"))[:3]:
        shutil.copy(src, root / "mask" / src.name)
    for src in sorted((facemask_dir / "without_mask").glob("*.jpg"))[:3]:
        shutil.copy(src, root / "no_mask" / "deeper" / src.name)
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("not an image, not even looked at")
    return root


@pytest.mark.shared
def test_folder_json_lines_with_a_broken_file(default_model: Path, image_tree: Path) -> None:
    res = _classify(str(image_tree), "--model", str(default_model), "--json")
    assert res.returncode == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(recs) == 7  # 6 images + the broken one; notes.txt is not an image name
    broken = [r for r in recs if "error" in r]
    assert len(broken) == 1 and broken[0]["path"] == str(image_tree / "broken.jpg")
    assert "broken.jpg" in broken[0]["error"]
    ok = [r for r in recs if "error" not in r]
    for r in ok:
        assert set(r) == {"path", "label", "no_mask"}
        assert 0.0 <= r["no_mask"] <= 1.0
        assert r["label"] == ("no_mask" if r["no_mask"] >= 0.5 else "mask")
        assert Path(r["path"]).is_file()
    truth = {r["path"]: "/no_mask/" in r["path"] for r in ok}
    correct = sum((r["label"] == "no_mask") == truth[r["path"]] for r in ok)
    assert correct >= 5, ok  # a trained model gets (nearly) all of six clear faces right


@pytest.mark.shared
def test_default_model_and_paths_as_given(default_model: Path, image_tree: Path) -> None:
    one = next((image_tree / "mask").iterdir())
    rel = one.relative_to(image_tree)
    res = _classify(str(rel), "--json", cwd=image_tree)  # no --model: the shipped default
    assert res.returncode == 0, res.stderr
    (rec,) = [json.loads(line) for line in res.stdout.splitlines()]
    assert rec["path"] == str(rel)
    explicit = _classify(str(one), "--model", str(default_model), "--json")
    assert json.loads(explicit.stdout)["no_mask"] == rec["no_mask"]


@pytest.mark.shared
def test_nothing_classified_exits_1(default_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    res = _classify(str(bad), str(tmp_path / "missing.jpg"), "--model", str(default_model), "--json")
    assert res.returncode == 1
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [set(r) for r in recs] == [{"path", "error"}] * 2
    assert "no such file" in recs[1]["error"]


def test_missing_model_exits_2_with_a_message(tmp_path: Path) -> None:
    res = _classify(str(tmp_path), "--model", str(tmp_path / "none.tflite"), "--json")
    assert res.returncode == 2
    assert "none.tflite: model file not found" in res.stderr
    assert res.stdout == ""


def test_a_keras_model_is_named_as_one_to_convert(tmp_path: Path) -> None:
    """tools/train.py's model.keras given where a TFLite model goes (--model, classifier.model)
    was called a model whose sidecar model.json is missing (the same in run and check-config):
    now it is named as a Keras model that tools/convert.py turns into one maskd runs."""
    keras = pytest.importorskip("keras")
    inp = keras.Input((8, 8, 3))
    model = keras.Model(inp, keras.layers.Dense(2, activation="softmax")(
        keras.layers.Flatten()(inp)))
    model.save(tmp_path / "model.keras")
    res = _classify(str(tmp_path), "--model", str(tmp_path / "model.keras"), "--json")
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().endswith(
        f"{tmp_path / 'model.keras'}: a Keras model (a zip archive), not a TFLite one; "
        "tools/convert.py makes the .tflite and its sidecar from it")


def test_odd_file_names_keep_one_line_per_image(default_model: Path, tmp_path: Path) -> None:
    """A name that is not UTF-8 crashed classify under a strict UTF-8 locale (en_GB.UTF-8), and
    a tab or newline in a name broke the tab-separated line into extra fields or lines."""
    import os

    import cv2
    import numpy as np

    grey = np.full((64, 64, 3), 90, np.uint8)
    names = ["a\tb.jpg", "new\nline.jpg", os.fsdecode(b"caf\xe9.jpg"), "z.jpg"]
    for name in names:
        cv2.imwrite(str(tmp_path / "x.png"), grey)
        (tmp_path / "x.png").rename(tmp_path / name)
    for extra in ([], ["--json"]):
        res = subprocess.run(
            [sys.executable, "-m", "maskd", "classify", str(tmp_path), "--model",
             str(default_model), *extra], capture_output=True, timeout=120,
            env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
        assert res.returncode == 0, res.stderr.decode(errors="replace")[-2000:]
        lines = res.stdout.splitlines()
        assert len(lines) == 4, lines
        if extra:
            got = {Path(json.loads(ln)["path"]).name for ln in lines}
            assert got == set(names)
        else:
            assert all(len(ln.split(b"\t")) == 3 for ln in lines), lines
            assert any(b"a\\tb.jpg\t" in ln for ln in lines)
            assert any(b"new\\nline.jpg\t" in ln for ln in lines)
            assert any(b"caf\xe9.jpg\t" in ln for ln in lines)


def test_a_name_the_locales_charset_cannot_hold_is_escaped_not_a_traceback(
        default_model: Path, tmp_path: Path) -> None:
    """Under a Latin-1 locale a photo named 人.jpg ended classify (and scan) with a
    UnicodeEncodeError traceback, the images after it never classified; now it is escaped."""
    import os

    import cv2
    import numpy as np

    names = ["a.jpg", "caf\u00e9.jpg", "\u4eba.jpg", os.fsdecode(b"x\xff.jpg"), "z.jpg"]
    for name in names:
        assert cv2.imwrite(str(tmp_path / "x.png"), np.full((64, 64, 3), 90, np.uint8))
        (tmp_path / "x.png").rename(tmp_path / name)
    res = subprocess.run(
        [sys.executable, "-m", "maskd", "classify", str(tmp_path), "--model", str(default_model)],
        capture_output=True, timeout=120, env={**os.environ, "PYTHONIOENCODING": "latin-1"})
    assert res.returncode == 0 and b"Traceback" not in res.stderr, res.stderr[-2000:]
    lines = res.stdout.splitlines()
    assert len(lines) == 5 and all(len(ln.split(b"\t")) == 3 for ln in lines), lines
    assert {ln.split(b"\t")[0].rsplit(b"/", 1)[1] for ln in lines} == {
        b"a.jpg", b"caf\xe9.jpg", b"\\u4eba.jpg", b"x\xff.jpg", b"z.jpg"}


def test_unsearchable_folder_pipe_and_full_stdout(default_model: Path, tmp_path: Path) -> None:
    """An unreadable sub-folder was skipped silently, a named pipe called b.jpg hung classify
    (Ctrl-C too: the decode thread was joined), and stdout on a full disk was a traceback and
    exit 1. Now: error records in their place, and exit 74 with one line naming the output."""
    import os

    import cv2
    import numpy as np
    from test_scan_cli import without_root_override

    (tmp_path / "locked").mkdir()
    for rel in ("a.jpg", "locked/x.jpg"):
        cv2.imwrite(str(tmp_path / rel), np.full((64, 64, 3), 90, np.uint8))
    os.mkfifo(tmp_path / "b.jpg")
    (tmp_path / "locked").chmod(0)
    try:
        res = subprocess.run([*without_root_override(), sys.executable, "-m", "maskd",
                              "classify", "--json", "--model", str(default_model),
                              str(tmp_path)], capture_output=True, text=True, timeout=60)
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert res.returncode == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert [Path(r["path"]).name for r in recs] == ["a.jpg", "b.jpg", "locked"]
    assert "label" in recs[0]
    assert recs[1]["error"] == f"{tmp_path / 'b.jpg'}: a named pipe, not a regular file"
    assert recs[2]["error"] == f"{tmp_path / 'locked'}: cannot search this folder: Permission denied"
    with open("/dev/full", "w") as full:
        res = subprocess.run([sys.executable, "-m", "maskd", "classify", "--model",
                              str(default_model), str(tmp_path / "a.jpg")], stdout=full,
                             stderr=subprocess.PIPE, text=True, timeout=60)
    assert res.returncode == 74, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        "maskd classify: cannot write to standard output (/dev/full): No space left on device")
    assert "Traceback" not in res.stderr


def test_a_reader_that_goes_away_as_head_ends_classify_quietly_with_0(default_model: Path,
                                                                       tmp_path: Path) -> None:
    """`maskd classify --json photos/ | head -1` under `set -o pipefail` (a script's): the
    reader closing the pipe is no failure of classify's, so exit 0 and nothing on stderr,
    never 1 nor 74 ("cannot write to standard output") nor a BrokenPipeError traceback."""
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "a.jpg"), np.full((64, 64, 3), 90, np.uint8))
    proc = subprocess.Popen([sys.executable, "-m", "maskd", "classify", "--json", "--model",
                             str(default_model), *["a.jpg"] * 2000], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = proc.stdout.readline()
    proc.stdout.close()  # `head -1` has its line and exits
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 0, err
    assert json.loads(first)["path"] == "a.jpg"
    assert [line for line in err.splitlines() if "XNNPACK" not in line] == []


# `maskd classify` in a child process that prints its peak RSS (MB) on stderr's last line.
_PEAK = """
import resource, sys
from maskd.cli import main
rc = main(["classify", *sys.argv[1:]])
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, file=sys.stderr)
sys.exit(rc)
"""


def test_read_ahead_holds_small_images_not_whole_photos(tmp_path: Path) -> None:
    """40 phone photos (4000x3000 JPEG) peaked near 900 MB: up to DECODE_AHEAD of them were
    held decoded at full size (36 MB each) until the classifier came to them. Each is now
    squashed to the model's input on the decode worker, so 40 cost about what one does."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    photo = cv2.resize(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8), (4000, 3000))
    folder = tmp_path / "phone"
    folder.mkdir()
    assert cv2.imwrite(str(folder / "p00.jpg"), photo)
    for i in range(1, 40):
        shutil.copy(folder / "p00.jpg", folder / f"p{i:02d}.jpg")

    def peak_mb(path: Path) -> tuple[int, list[str]]:
        r = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return int(r.stderr.splitlines()[-1]), r.stdout.splitlines()

    one, first = peak_mb(folder / "p00.jpg")
    forty, lines = peak_mb(folder)
    assert len(lines) == 40 and all(ln.split("\t")[1:] == first[0].split("\t")[1:]
                                    for ln in lines)
    assert forty - one < 150, f"one photo {one} MB, forty {forty} MB"


def test_a_coral_lost_part_way_keeps_the_lines_written_and_says_where_it_stopped(tmp_path):
    """The Coral pulled out (or reset) while `classify --edgetpu` works through a folder: it
    ended with CoralLost's traceback. Now the lines of the images done stay, one line says the
    Coral stopped answering, how far the output goes and what to do, and the exit is 75 (try
    again), not 0 as for a whole run."""
    from coral import FakeCoral, lost_part_way

    recs = lost_part_way(FakeCoral(tmp_path / "lib"), tmp_path / "faces", "classify")
    assert all(0.0 <= r["no_mask"] <= 1.0 for r in recs), recs


def test_lines_label_with_the_configured_cut_and_round_as_the_contract_says(
        tmp_path: Path, monkeypatch, capsys) -> None:
    """One line per image: JSON with no_mask to 6 places, or 'path<TAB>label<TAB>0.1235'; the
    label uses classifier.threshold (here 0.3, so 0.4 is no_mask) as run and scan do."""
    import argparse

    import cv2
    import numpy as np

    from maskd.commands import classify

    class Model:
        input_size, max_batch = 8, 4

        def predict(self, crops):
            return np.array([0.123456789, 0.4][:len(crops)])

    monkeypatch.setattr(classify, "build_classifier", lambda *a, **k: Model())
    for name in ("a.png", "b.png"):
        cv2.imwrite(str(tmp_path / name), np.full((8, 8, 3), 90, np.uint8))
    (tmp_path / "c.yaml").write_text("classifier:\n  threshold: 0.3\n")
    paths = [tmp_path / "a.png", tmp_path / "b.png"]

    def run(as_json: bool) -> list[str]:
        args = argparse.Namespace(config=tmp_path / "c.yaml", paths=paths, json=as_json,
                                  model=None, threads=None, edgetpu=False)
        assert classify.main(args) == 0
        return capsys.readouterr().out.splitlines()

    assert [json.loads(line) for line in run(True)] == [
        {"path": str(paths[0]), "label": "mask", "no_mask": 0.123457},
        {"path": str(paths[1]), "label": "no_mask", "no_mask": 0.4}]
    assert run(False) == [f"{paths[0]}\tmask\t0.1235", f"{paths[1]}\tno_mask\t0.4000"]


# `maskd classify` as a terminal runs it: Ctrl-C is KeyboardInterrupt even where the test's
# own shell ran it with SIGINT ignored (a background job), which the child would inherit.
_INTERRUPTIBLE = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
from maskd.cli import main
sys.exit(main(["classify", *sys.argv[1:]]))
"""


def test_ctrl_c_stops_at_once_not_after_the_files_decoded_ahead(tmp_path: Path) -> None:
    """Ctrl-C on a folder of big photos took 7 s here (a Pi: half a minute) to end with 130:
    the decode worker first decoded every file it had been given ahead (DECODE_AHEAD), only for
    them to be thrown away. Those not started are now cancelled, so it waits for one at most."""
    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 255, (3900, 4000, 3), dtype=np.uint8)
    folder = tmp_path / "big"
    folder.mkdir()
    Image.fromarray(noise).save(folder / "p00.png", compress_level=1)  # ~0.2 s to decode
    for i in range(1, 60):
        (folder / f"p{i:02d}.png").hardlink_to(folder / "p00.png")
    proc = subprocess.Popen([sys.executable, "-c", _INTERRUPTIBLE, str(folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith(str(folder / "p00.png"))
    time.sleep(0.5)  # the worker is well ahead again
    proc.send_signal(signal.SIGINT)
    start = time.monotonic()
    rc = proc.wait(timeout=120)
    took = time.monotonic() - start
    err = proc.stderr.read()
    assert rc == 130 and "Traceback" not in err, err
    assert took < 2.0, f"Ctrl-C took {took:.1f} s to end classify"


def test_a_backslash_in_a_name_is_escaped_so_two_files_never_print_alike(
        default_model: Path, tmp_path: Path) -> None:
    """A file named `new` newline `line.jpg` and one named `new\\nline.jpg` (a backslash and an
    n) both printed `new\\nline.jpg`, with different verdicts: nobody could tell which photo was
    which. A backslash is now escaped too (`new\\\\nline.jpg`), so each line names one file."""
    import cv2
    import numpy as np

    for name, grey in (("new\nline.jpg", 40), ("new\\nline.jpg", 200)):
        assert cv2.imwrite(str(tmp_path / "x.png"), np.full((64, 64, 3), grey, np.uint8))
        (tmp_path / "x.png").rename(tmp_path / name)
    res = _classify(str(tmp_path), "--model", str(default_model))
    assert res.returncode == 0, res.stderr
    names = sorted(line.split("\t")[0] for line in res.stdout.splitlines())
    assert names == [str(tmp_path / "new\\\\nline.jpg"), str(tmp_path / "new\\nline.jpg")]
