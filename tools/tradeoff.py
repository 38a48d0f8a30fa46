#!/usr/bin/env python3
"""Classifier input size vs accuracy vs speed: train, convert, measure, plot, pick.

Smaller inputs cut MobileNetV2's MACs with the square of the side (224 -> 96 is 5.4x fewer)
but throw away detail; entrance faces are small anyway (scenes-dev median 22 px), so the
question is what a size costs on faces as the device sees them.

    # train + convert 160/128/96 one after another with tools/train.py and tools/convert.py
    mkdir -p runs/tradeoff
    nohup python tools/tradeoff.py train --sizes 160,128,96 > runs/tradeoff/train.log 2>&1 &
    # measure every size (int8 .tflite) and write the table, JSON and the Pareto plot
    python tools/tradeoff.py report --split runs/m224/split.json \\
        --model 224=models/maskd_mobilenetv2_int8.tflite \\
        --json docs/perf/tradeoff.json --plot docs/img/tradeoff_pareto.png

``report`` measures, per model: accuracy on the internal test split (the images training never
saw), accuracy on faces cut from ../shared/data/scenes-dev with maskd's own ``crop_face``
around the annotated with_mask / without_mask boxes, bucketed by the box's shorter side, and
the int8 latency at 1 and 2 threads, all in one run so the timings share the machine's state.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from tools import dataset
from tools.benchlib.common import SHARED, measure
from tools.evaluate import binary_metrics, open_model, run_models
from tools.inputs import (
    comma_list,
    figure_out,
    non_negative_int,
    out_file,
    positive_int,
    read_json,
    save_figure,
    write_out,
)

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent

RUNS = REPO / "runs" / "tradeoff"
SCENES = SHARED / "data" / "scenes-dev"
BUCKETS = [(0, 16), (16, 24), (24, 32), (32, 48), (48, 10_000)]
SCENE_LABELS = {"with_mask": 0, "without_mask": 1}  # mask_weared_incorrect is left out


def run_dir(size: int) -> Path:
    return RUNS / f"m{size}"


def int8_path(size: int) -> Path:
    return run_dir(size) / "tflite" / f"maskd_mobilenetv2_{size}_int8.tflite"


# --------------------------------------------------------------------------- train


def train(args: argparse.Namespace) -> int:
    """Each size in turn with the team's train.py / convert.py; finished sizes are skipped."""
    for size in args.sizes:
        out = run_dir(size)
        if not (out / "model.keras").is_file():
            # train.py's own defaults are the team's recipe; only what is asked for is overridden.
            cmd = [sys.executable, str(TOOLS / "train.py"), "--size", str(size), "--out", str(out),
                   "--quiet"]
            for flag, value in (("--epochs", args.epochs), ("--views", args.views),
                                ("--fine-tune-epochs", args.fine_tune_epochs)):
                if value is not None:
                    cmd += [flag, str(value)]
            print(f"{time.strftime('%H:%M:%S')} training {size}: {' '.join(cmd)}", flush=True)
            if subprocess.call(cmd) != 0:
                print(f"training {size} failed", flush=True)
                return 1
        if not int8_path(size).is_file():
            cmd = [sys.executable, str(TOOLS / "convert.py"), str(out / "model.keras"),
                   "--out", str(out / "tflite"), "--name", f"maskd_mobilenetv2_{size}",
                   "--formats", "float32,int8", "--force"]  # no int8 yet: (re)make both
            print(f"{time.strftime('%H:%M:%S')} converting {size}: {' '.join(cmd)}", flush=True)
            if subprocess.call(cmd) != 0:
                print(f"converting {size} failed", flush=True)
                return 1
        print(f"{time.strftime('%H:%M:%S')} size {size} done", flush=True)
    return 0


# --------------------------------------------------------------------------- measure


def scene_faces(root: Path, margin: float) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """RGB crops (maskd's crop_face), labels and box shorter sides of every annotated face."""
    from maskd.geometry import crop_face, shorter_sides
    from tools.eval_scenes import load_scenes, stored_pixels

    crops, labels, sides = [], [], []
    for scene in load_scenes(root):
        img = stored_pixels(scene.image)
        if img is None:
            continue
        rgb = img[:, :, ::-1]
        for box, name in zip(scene.boxes, scene.labels, strict=True):
            if name not in SCENE_LABELS:
                continue
            crops.append(crop_face(rgb, tuple(box), margin))
            labels.append(SCENE_LABELS[name])
            sides.append(float(shorter_sides(box)))
    return crops, np.array(labels), np.array(sides)


def bucket_name(lo: int, hi: int) -> str:
    return f">={lo}px" if hi >= 10_000 else f"{lo}-{hi}px"


def measure_model(size: int, path: Path, test: tuple[list[Path], np.ndarray],
                  faces: tuple[list[np.ndarray], np.ndarray, np.ndarray] | None,
                  args: argparse.Namespace) -> dict[str, Any]:
    from maskd.classifier import Classifier

    row: dict[str, Any] = {"size": size, "model": str(path), "bytes": path.stat().st_size}
    record = path.parent.parent / "record.json"
    if record.is_file():
        rec = read_json(record)
        prm = rec["params"]
        row["epochs"] = (f"{prm['epochs']} (views {prm.get('views', '-')}), "
                         f"+{prm['fine_tune_epochs']} fine-tune")
        row["split_fingerprint"] = rec["data"]["fingerprint"]
    model = open_model(path, threads=2)
    probs, errors, _, keep = run_models([model], test[0])
    row["test"] = binary_metrics(test[1][keep], probs[0])
    if faces is not None:
        crops, labels, sides = faces
        p = model.predict(crops)
        row["scenes_all"] = binary_metrics(labels, p)
        row["scenes_buckets"] = {}
        for lo, hi in BUCKETS:
            sel = (sides >= lo) & (sides < hi)
            m = binary_metrics(labels[sel], p[sel])
            row["scenes_buckets"][bucket_name(lo, hi)] = {
                "n": m["n"], "no_mask": int(labels[sel].sum()), "accuracy": m["accuracy"],
                "no_mask_recall": m["recall"], "mask_specificity": m["specificity"]}
    for threads in (1, 2):
        clf = Classifier.open(path, threads=threads)
        interp = clf.interpreter
        inp = interp.get_input_details()[0]
        x = np.zeros(inp["shape"], inp["dtype"])

        def invoke(i=interp, d=inp, x=x) -> None:
            i.set_tensor(d["index"], x)
            i.invoke()

        row[f"ms_{threads}t"] = measure(invoke, args.warmup, args.repeats)["median_ms"]
    from tools.benchlib.macs import tflite_macs

    row["macs"] = tflite_macs(path)["macs"]
    return row


def pareto(rows: list[dict[str, Any]], key: str) -> list[int]:
    """Sizes not beaten by another that is both faster (1 thread) and at least as accurate."""
    keep = []
    for r in rows:
        beaten = any(o is not r and o["ms_1t"] <= r["ms_1t"] and _acc(o, key) >= _acc(r, key)
                     and (o["ms_1t"] < r["ms_1t"] or _acc(o, key) > _acc(r, key)) for o in rows)
        if not beaten:
            keep.append(r["size"])
    return keep


def _acc(row: dict[str, Any], key: str) -> float:
    if key == "test":
        return row["test"]["accuracy"]
    if key == "scenes":
        return row["scenes_all"]["accuracy"]
    return row["scenes_buckets"][key]["accuracy"] or 0.0


def plot(rows: list[dict[str, Any]], dst: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    rows = sorted(rows, key=lambda r: r["ms_1t"])
    series = [("test", "internal test split", "o-")]
    if rows and "scenes_all" in rows[0]:
        series += [("scenes", "scenes-dev faces, all sizes", "s--")]
        small = bucket_name(*BUCKETS[1])
        series += [(small, f"scenes-dev faces {small}", "^:")]
    for key, label, style in series:
        xs = [r["ms_1t"] for r in rows]
        ys = [100 * _acc(r, key) for r in rows]
        ax.plot(xs, ys, style, label=label)
        for r, x, y in zip(rows, xs, ys, strict=True):
            ax.annotate(str(r["size"]), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("int8 latency per face, 1 thread (ms, this machine)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Classifier input size: accuracy vs latency", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, dst, dpi=100)
    plt.close(fig)


def render(rows: list[dict[str, Any]]) -> str:
    bucket_names = [bucket_name(lo, hi) for lo, hi in BUCKETS]
    head = ["size", "epochs", "MMACs", "KiB", "int8 ms 1t", "int8 ms 2t", "test acc", "scenes acc"]
    head += [f"acc {b}" for b in bucket_names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [str(r["size"]), r.get("epochs", "?"), f"{r['macs'] / 1e6:.0f}", f"{r['bytes'] / 1024:.0f}",
                 f"{r['ms_1t']:.2f}", f"{r['ms_2t']:.2f}", f"{100 * r['test']['accuracy']:.2f}%"]
        if "scenes_all" in r:
            cells.append(f"{100 * r['scenes_all']['accuracy']:.1f}%")
            for b in bucket_names:
                m = r["scenes_buckets"][b]
                cells.append("-" if m["accuracy"] is None or m["n"] == 0
                             else f"{100 * m['accuracy']:.1f}% (n={m['n']})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report(args: argparse.Namespace) -> int:
    models: dict[int, Path] = {}
    for size in args.sizes:
        if int8_path(size).is_file():
            models[size] = int8_path(size)
    for size, path in args.model:
        models[size] = path
    missing = [f"{s}: {p}" for s, p in models.items() if not p.is_file()]
    if missing or not models:
        raise SystemExit(f"no model for: {missing or 'any size'} (run 'tradeoff.py train' first)")
    split = dataset.load_split(args.split)
    test = dataset.subset_files(split, "test", args.data_root)
    faces = None
    if SCENES.is_dir() and not args.no_scenes:
        from maskd.config import ClassifierConfig

        faces = scene_faces(SCENES, ClassifierConfig().margin)
        print(f"scenes-dev: {len(faces[0])} annotated faces, median side {np.median(faces[2]):.0f}px",
              flush=True)
    rows = []
    for size in sorted(models, reverse=True):
        print(f"measuring {size}: {models[size]}", flush=True)
        rows.append(measure_model(size, models[size], test, faces, args))
    fps = {r.get("split_fingerprint") for r in rows} - {None}
    if len(fps) > 1:
        print("WARNING: the models were trained on different splits; test accuracies differ in images")
    out = {"time": time.time(), "split": str(args.split), "test_images": len(test[0]), "rows": rows,
           "pareto_test": pareto(rows, "test")}
    if faces is not None:
        out["pareto_scenes"] = pareto(rows, "scenes")
        out["scene_faces"] = len(faces[0])
        out["scene_no_mask"] = int(faces[1].sum())
    print(render(rows))
    print(f"Pareto (test split): {out['pareto_test']}; (scenes-dev faces): {out.get('pareto_scenes')}")
    if args.json:
        write_out(args.json, json.dumps(out, indent=1, default=float) + "\n")
    if args.plot:
        plot(rows, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _size_path(text: str) -> tuple[int, Path]:
    """``--model SIZE=PATH``: the input size and the int8 model of that size."""
    size, eq, path = text.partition("=")
    if not eq or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: give SIZE=PATH, e.g. 224=models/m.tflite")
    return positive_int(size), Path(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train + convert each size (sequentially)")
    t.add_argument("--sizes", type=comma_list(positive_int), default=[160, 128, 96])
    t.add_argument("--epochs", type=positive_int, default=None, help="head epochs (default: train.py's)")
    t.add_argument("--views", type=positive_int, default=None, help="augmented views (default: train.py's)")
    t.add_argument("--fine-tune-epochs", type=non_negative_int, default=None, help="(default: train.py's)")
    r = sub.add_parser("report", help="measure the models; table, JSON, Pareto plot")
    r.add_argument("--sizes", type=comma_list(positive_int), default=[160, 128, 96], help="sizes found under runs/tradeoff/")
    r.add_argument("--model", action="append", default=[], metavar="SIZE=PATH", type=_size_path,
                   help="an extra int8 model, e.g. 224=models/maskd_mobilenetv2_int8.tflite")
    r.add_argument("--split", type=Path, required=True, help="split.json whose test part to score")
    r.add_argument("--data-root", type=Path, default=None)
    r.add_argument("--no-scenes", action="store_true", help="skip the scenes-dev faces")
    r.add_argument("--warmup", type=non_negative_int, default=10)
    r.add_argument("--repeats", type=positive_int, default=100)
    r.add_argument("--json", type=Path)
    r.add_argument("--plot", type=Path)
    args = p.parse_args(argv)
    if args.cmd == "report":  # output places now, not a traceback after every model was timed
        if args.json:
            out_file(args.json)
        if args.plot:
            figure_out(args.plot)
    return train(args) if args.cmd == "train" else report(args)


if __name__ == "__main__":
    raise SystemExit(main())
