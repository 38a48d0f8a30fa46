"""tools/bench.py: it runs, its JSON holds measured positive numbers, and it runs without TF."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tools.benchlib import common, macs

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "tools" / "bench.py"


# Runs bench.py in a fresh interpreter where TensorFlow and Keras cannot be imported, as on a Pi.
NO_TF = (
    "import sys, runpy; sys.modules['tensorflow'] = None; sys.modules['keras'] = None; "
    "sys.argv = [{bench!r}] + {args!r}; runpy.run_path({bench!r}, run_name='__main__')"
)


def run_bench(args: list[str], block_tf: bool = False, timeout: int = 300,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", NO_TF.format(bench=str(BENCH), args=args)] if block_tf else (
        [sys.executable, str(BENCH), *args])
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_cpu_peak_from_this_machine():
    pk = macs.cpu_peak()
    assert pk["cores"] >= 1
    assert pk["int8_macs_per_cycle_per_core"] >= 1
    if pk["mhz"]:
        assert pk["peak_int8_gmacs"] == pytest.approx(
            pk["int8_macs_per_cycle_per_core"] * pk["mhz"] / 1000 * pk["cores"])


def test_measure_reports_ordered_positive_times():
    t = common.measure(lambda: sum(range(2000)), warmup=1, repeats=9)
    assert t["n"] == 9
    assert 0 < t["p10_ms"] <= t["median_ms"] <= t["p90_ms"]


def test_quick_without_tensorflow_writes_json(default_model, tmp_path):
    """The Pi case: TFLite and MACs measured, Keras rows skipped with a note, numbers positive."""
    out = tmp_path / "bench.json"
    r = run_bench(["--quick", "--sections", "face,macs,estimates", "--json", str(out)], block_tf=True)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert {"machine", "face", "macs", "estimates", "notes"} <= set(res)
    assert any("Keras rows skipped" in n for n in res["notes"])
    rows = res["face"]["rows"]
    assert not any(row["runtime"] == "keras" for row in rows)
    int8 = {row["threads"]: row for row in rows if row["name"] == "TFLite int8"}
    assert {1, 2} <= set(int8)
    for row in rows:
        assert row["median_ms"] > 0 and row["invoke_median_ms"] > 0 and row["faces_per_s"] > 0
        assert 0.0 <= row["p_no_mask"] <= 1.0
    m = res["macs"]["model"]
    assert m["macs"] == sum(m["by_op"].values()) > 0
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"} <= set(m["by_op"])
    for u in res["macs"]["utilisation"]:
        assert 0 < u["fraction_of_peak"] < 1.5  # a nominal peak can be beaten a little by boost clocks
    assert all(e["estimate"] is True and e["est_ms_low"] > 0 for e in res["estimates"]["rows"])
    assert "Per face" in r.stdout and "ESTIMATES" in r.stdout


@pytest.mark.parametrize("sections", ["face,macs,estimates", "estimates"])
def test_estimates_are_scaled_by_macs_without_tensorflow(default_model, tmp_path, sections):
    """On a Pi without TF (the command docs/performance.md gives it), the Pi 4 estimate for
    the 128 px model was MobileNetV2-224's 17-20 ms unscaled ('model is MobileNetV2-224: no
    scaling'), 3x too slow; with TF it was scaled by 0.327. Now both are scaled the same."""
    out = tmp_path / "bench.json"
    r = run_bench(["--sections", sections, "--no-keras", "--repeats", "3", "--json", str(out)],
                  block_tf=True)
    assert r.returncode == 0, r.stderr[-2000:]
    ratio = macs.tflite_macs(default_model)["macs"] / 299.5e6  # MobileNetV2-224, Keras count
    assert 0.3 < ratio < 0.35  # the shipped 128 px model
    pi4 = json.loads(out.read_text())["estimates"]["rows"][0]
    assert pi4["scaling"] == f"scaled by our MACs / MobileNetV2-224 MACs = {ratio:.3f}"
    assert (pi4["est_ms_low"], pi4["est_ms_high"]) == pytest.approx((17.0 * ratio, 20.0 * ratio),
                                                                    rel=1e-3)
    assert f"scaling: scaled by our MACs / MobileNetV2-224 MACs = {ratio:.3f}" in r.stdout


@pytest.mark.parametrize("flag, model, said", [
    ("--float-model", "maskd_mobilenetv2_int8.tflite", "int8"),
    ("--model", "maskd_mobilenetv2_float32.tflite", "float32"),
    ("--model", "maskd_mobilenetv2_int8_s43.tflite", None)])
def test_a_model_of_the_wrong_kind_is_refused(default_model, flag, model, said):
    """--model float32 / --float-model int8 were timed and shown as 'TFLite int8' / 'TFLite
    float32' (swapped rows, MAC utilisation of a float model against the int8 peak). Now the
    sidecar's quantization is checked first: a usage error naming the flag and the file."""
    path = f"models/{model}"
    r = run_bench(["--sections", "face", "--no-keras", "--repeats", "3", flag, path])
    if said is None:  # an int8 model is what --model takes
        assert r.returncode == 0, r.stderr[-2000:]
        return
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.splitlines()[-1].endswith(
        f"error: {flag} {path} is a {said} model (its sidecar's quantization); {flag} takes a "
        f"{'int8' if flag == '--model' else 'float32'} model")


@pytest.mark.parametrize("keras, says", [
    ("/tmp/none.keras", "/tmp/none.keras: model not found"),
    ("models/maskd_mobilenetv2_int8.tflite",
     "models/maskd_mobilenetv2_int8.tflite: not a readable .keras model (not a zip archive)")])
def test_a_bad_keras_model_is_one_line(default_model, keras, says):
    """--keras naming no file, or a .tflite, was Keras' ValueError traceback after the TFLite
    rows were timed; now one line naming the file, before any timing."""
    pytest.importorskip("keras")
    r = run_bench(["--sections", "face", "--repeats", "3", "--keras", keras])
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(says)


@pytest.mark.parametrize("args, says", [
    (["--detectors", "centerface"], "--detectors centerface: needs a CenterFace .onnx model"),
    (["--detectors", "ssd"], "--detectors ssd: needs an SSD model file"),
    (["--detectors", "bogus"], "--detectors bogus: unknown detector; choose from yunet, "),
    (["--detectors", "none.tflite"], "--detectors none.tflite: no such TFLite SSD model file"),
    (["--sections", ","], "--sections ',' names nothing"),
    (["--clips", ","], "--clips ',' names nothing"),
    (["--clips", "scenes,bogus"], "unknown clip(s) ['bogus']")])
def test_frame_names_it_cannot_time_are_usage_errors(args, says):
    """--detectors centerface / ssd / bogus was taken for a TFLite SSD file: 'SSD model file not
    found' as a note, an empty table, exit 0; --sections , and --clips , ran nothing, exit 0."""
    r = run_bench(["--sections", "frame", "--quick", *args] if "--sections" not in args
                  else ["--quick", *args])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert says in r.stderr.splitlines()[-1]


def test_e2e_clip_names_the_photos_it_used(scenes_dir):
    """The e2e header said '9 scenes-dev photos' for 120 frames at 15 per photo: it named the
    photos picked, of which 8 were used. Now it names the photos the frames come from."""
    from tools.benchlib.inputs import scene_frames

    frames, what = scene_frames(120, (640, 480))
    assert len(frames) == 120 and what == "8 scenes-dev photos, 15 panned frames each"
    frames, what = scene_frames(20, (320, 240))
    assert len(frames) == 20 and frames[0].shape == (240, 320, 3)
    assert what == "2 scenes-dev photos, 15 panned frames each (the last 5)"


def test_without_scenes_dev_it_says_the_demo_clip_stands_in(default_model, tmp_path):
    """Without ../shared, e2e's scenes clip was the demo clip under the demo clip's name: the
    default scenes,demo printed the same table twice and no note said scenes-dev was missing."""
    out = tmp_path / "bench.json"
    r = run_bench(["--quick", "--no-keras", "--sections", "frame,e2e", "--detectors", "blazeface",
                   "--frames", "4", "--repeats", "2", "--warmup", "1", "--clips", "scenes,demo",
                   "--json", str(out)], env={"MASKD_SHARED": str(tmp_path / "none")})
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert [clip["clip"] for clip in res["e2e"]["clips"]] == ["maskd demo source"]
    missing = f"{tmp_path / 'none' / 'data' / 'scenes-dev' / 'images'} absent"
    said = [n for n in res["notes"] if missing in n]
    assert len(said) == 2 and said[1].startswith("e2e scenes clip skipped: ")  # frame's, e2e's
    assert res["frame"]["rows"]


@pytest.mark.slow
def test_tflite_mac_count_matches_keras_layers(default_model):
    """Two independent counts of the shipped model: its TFLite graph and its Keras layers."""
    pytest.importorskip("keras")
    from tools import train

    t = macs.tflite_macs(default_model)
    model, _ = train.build_model(t["input_size"], 1.0, None, 0)
    assert macs.keras_macs(model) == t["macs"]
    # MobileNetV2-224 is about 300 M MACs in the literature; counted here, not assumed, and
    # the constant a Pi without TF scales the estimates by is that count.
    assert macs.mobilenetv2_macs(224) == macs.MOBILENETV2_224_MACS
    assert 290e6 < macs.MOBILENETV2_224_MACS < 310e6


@pytest.mark.slow
def test_end_to_end_and_frame_sections(default_model, scenes_dir, yunet_model, tmp_path):
    """Same clip through maskd (cache on/off) and the seed-style Keras pipeline: fps and ratios."""
    pytest.importorskip("keras")
    out = tmp_path / "bench.json"
    r = run_bench(["--quick", "--sections", "frame,e2e", "--frames", "6", "--detectors", "yunet",
                   "--clips", "scenes,demo", "--json", str(out)])
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    frame = res["frame"]["rows"]
    assert {row["mode"] for row in frame} == {"plain", "upscale x2", "tiles 2x2"}
    assert all(row["median_ms"] > 0 for row in frame)
    clips = res["e2e"]["clips"]
    assert len(clips) == 2
    for e2e in clips:
        assert e2e["frames"] == 6
        names = [row["name"] for row in e2e["rows"]]
        assert names[0].startswith("seed-style") and any("no classification cache" in n for n in names)
        for row in e2e["rows"]:
            assert row["fps"] > 0 and row["speedup_vs_seed"] > 0
    # The demo clip is one person in full view: both pipelines see the face in every frame.
    demo = {row["name"]: row for row in clips[1]["rows"]}
    assert all(row["faces"] >= 5 for row in demo.values())


def test_bench_frames_times_each_kind_of_frame_with_and_without_mqtt():
    """tools/bench_frames.py (docs/performance.md, what a frame with events waits for) runs as
    the docs say, strace slowing each fsync, and prints a row per crowd with and without MQTT."""
    from test_faults_mqtt import strace_injecting

    strace_injecting()
    done = subprocess.run([sys.executable, "tools/bench_frames.py", "--fsync-ms", "5", "--crowds",
                           "1,3", "--reps", "1"], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if "at once:" in line]
    assert [(r[1], r[2]) for r in rows] == [("off", "1"), ("off", "3"), ("on", "1"), ("on", "3")]
    # JSON lines and the open violations' two syncs at least, each 5 ms slower
    assert all(float(ms) >= 10 for r in rows for ms in r[6::2]), done.stdout
