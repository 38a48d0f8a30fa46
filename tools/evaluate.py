#!/usr/bin/env python3
"""Score a classifier model (Keras .keras, TFLite float/int8, EdgeTPU) on labelled images.

no_mask is the positive class. TFLite models run through maskd.classifier.Classifier, the
device's own code path, so these numbers are what the device computes.

    python tools/evaluate.py --model models/maskd_mobilenetv2_int8.tflite --split runs/m224/split.json
    python tools/evaluate.py --model runs/m224/model.keras --model2 models/maskd_mobilenetv2_int8.tflite \
        --split runs/m224/split.json --out runs/m224/eval_int8
    python tools/evaluate.py --model models/maskd_mobilenetv2_int8.tflite --data path/to/class_folders
    python tools/evaluate.py --model models/maskd_mobilenetv2_int8.tflite --voc ../shared/data/scenes-dev

--split scores one part (default: test) of a split saved by train.py; --data scores every
file of a folder with one sub-folder per class; --voc scores face crops cut from annotated
scene photos the way the device cuts a detected face (another source than the training set). --out writes metrics.json, predictions.csv
and confusion.png (one set per model).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maskd.config import ClassifierConfig
from maskd.images import ImageError, load_image_rgb
from maskd.types import label_for
from tools import dataset
from tools.inputs import (
    load_keras_classifier,
    non_negative_float,
    non_negative_int,
    number,
    out_dir,
    positive_int,
    probability,
    save_figure,
    write_json,
    write_out,
)

NO_MASK = dataset.LABELS.index("no_mask")


def binary_metrics(y_true: np.ndarray, p_no_mask: np.ndarray, threshold: float = 0.5) -> dict:
    """Accuracy, precision, recall/sensitivity, F1, specificity with no_mask positive."""
    y = np.asarray(y_true) == NO_MASK
    pred = np.asarray(p_no_mask) >= threshold
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    tn = int(np.sum(~pred & ~y))
    fn = int(np.sum(~pred & y))
    n = tp + fp + tn + fn

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {
        "n": n,
        "threshold": threshold,
        "accuracy": ratio(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "sensitivity": recall,
        "specificity": ratio(tn, tn + fp),
        "tp": tp, "fp": fp, "tn": tn, "fn": fn,
        # rows: true mask / no_mask; columns: predicted mask / no_mask
        "confusion": [[tn, fp], [fn, tp]],
    }


class KerasModel:
    """A .keras model fed by the runtime's own preprocess()."""

    def __init__(self, path: Path):
        self.model, self.input_size = load_keras_classifier(path, dataset.LABELS)
        self.name = f"{path.name} (keras)"

    def predict(self, crops: list[np.ndarray]) -> np.ndarray:
        from maskd.classifier import preprocess

        x = np.stack([preprocess(c, self.input_size) for c in crops])
        return self.model.predict(x, batch_size=32, verbose=0)[:, NO_MASK]


class TfliteModel:
    """A .tflite model through the device's Classifier."""

    def __init__(self, path: Path, threads: int, edgetpu: bool):
        from maskd.classifier import Classifier

        self.clf = Classifier.open(path, threads=threads, edgetpu=edgetpu)
        self.input_size = self.clf.input_size
        self.name = f"{path.name} ({self.clf.runtime})"

    def predict(self, crops: list[np.ndarray]) -> np.ndarray:
        return self.clf.predict(crops)


def open_model(path: Path, threads: int = 2, edgetpu: bool = False):
    """The model at ``path``, or SystemExit with one line naming it (for every tool that opens
    one: a truncated .tflite was a traceback in tradeoff.py)."""
    from maskd.classifier import ModelError

    if not path.exists():
        raise SystemExit(f"model not found: {path}")
    if path.suffix == ".keras":
        return KerasModel(path)
    if path.suffix == ".tflite":
        try:
            return TfliteModel(path, threads, edgetpu)
        except ModelError as err:  # its words name the file
            raise SystemExit(str(err)) from None
    raise SystemExit(f"{path}: unknown model type (expected .keras or .tflite)")


@dataclass(frozen=True)
class Crop:
    """A face already cut out of a scene photo (``--voc``)."""

    name: str
    rgb: np.ndarray = field(repr=False)
    face_px: int  # the annotated box's shorter side

    def __str__(self) -> str:
        return self.name


def voc_crops(root: Path, margin: float, min_px: int, part: str = "all", grey: bool = False
              ) -> tuple[list[Crop], np.ndarray, dict]:
    """with_mask / without_mask boxes of PASCAL VOC scenes, cut like the device cuts a detection.

    The crop is maskd.geometry.crop_face (square, ``margin`` per side, edge-padded): the
    classifier sees what it sees behind the detector. Boxes with a shorter side below
    ``min_px`` and mask_weared_incorrect boxes are counted and left out. Photos are read by
    tools/eval_scenes.py's loader, so a photo it cannot use (bad XML, a box without
    coordinates, empty, outside the photo or more than 1 px past its edge, a missing or
    truncated image) is left out with its reason printed, as in eval_scenes; none left, or no
    face crop left, stops the tool.
    """
    from maskd.geometry import crop_face
    from tools.eval_scenes import LeftOut, load_scenes, report_skipped, stored_pixels

    reasons: list[str] = []
    try:
        scenes = load_scenes(root, part=part, skipped=reasons)
    except (OSError, ValueError) as err:
        raise SystemExit(f"evaluate: {err}") from None
    report_skipped("evaluate", reasons)
    crops, labels = [], []
    skipped = {"small": 0, "mask_weared_incorrect": 0,
               "photos": sum(not isinstance(r, LeftOut) for r in reasons)}
    for scene in scenes:
        bgr = stored_pixels(scene.image, grey)  # the boxes' pixels (load_scene checked it decodes)
        if bgr is None:
            raise SystemExit(f"evaluate: {scene.image}: OpenCV cannot read it")
        rgb = np.ascontiguousarray(bgr[..., ::-1])
        for k, (box, name) in enumerate(zip(scene.boxes, scene.labels, strict=True)):
            side = min(box[2] - box[0], box[3] - box[1])
            if name not in dataset.FOLDER_LABELS or side < min_px:
                key = "small" if name in dataset.FOLDER_LABELS else name
                skipped[key] = skipped.get(key, 0) + 1
                continue
            crops.append(Crop(f"{scene.image.name}#{k}", crop_face(rgb, tuple(box), margin),
                              int(side)))
            labels.append(dataset.LABELS.index(dataset.FOLDER_LABELS[name]))
    if not crops:
        raise SystemExit(f"evaluate: {root}: no face crop left to score (left out: {skipped})")
    return crops, np.array(labels, dtype=np.int64), skipped


def _load(item: Path | Crop) -> np.ndarray:
    return item.rgb if isinstance(item, Crop) else load_image_rgb(item)


def run_models(models: list, paths: list, chunk: int = 64):
    """P(no_mask) per model per readable file; unreadable files are reported and skipped."""
    probs: list[list[float]] = [[] for _ in models]
    seconds = [0.0 for _ in models]
    errors: list[str] = []
    keep = np.ones(len(paths), dtype=bool)
    for start in range(0, len(paths), chunk):
        crops = []
        for i in range(start, min(start + chunk, len(paths))):
            try:
                crops.append(_load(paths[i]))
            except ImageError as err:
                errors.append(str(err))
                keep[i] = False
        if not crops:
            continue
        for k, m in enumerate(models):
            t = time.perf_counter()
            probs[k] += list(m.predict(crops))
            seconds[k] += time.perf_counter() - t
    n = int(keep.sum())
    ms = [1000.0 * s / max(n, 1) for s in seconds]
    return [np.asarray(p, dtype=np.float64) for p in probs], errors, ms, keep


def format_confusion(m: dict) -> str:
    (tn, fp), (fn, tp) = m["confusion"]
    return (
        "                 pred mask  pred no_mask\n"
        f"  true mask     {tn:10d}  {fp:12d}\n"
        f"  true no_mask  {fn:10d}  {tp:12d}"
    )


def plot_confusion(m: dict, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.array(m["confusion"])
    fig, ax = plt.subplots(figsize=(4.2, 3.8))
    ax.imshow(cm, cmap="Blues")
    for (r, c), v in np.ndenumerate(cm):
        ax.text(c, r, str(v), ha="center", va="center",
                color="white" if v > cm.max() / 2 else "black", fontsize=14)
    ax.set_xticks([0, 1], ["mask", "no_mask"])
    ax.set_yticks([0, 1], ["mask", "no_mask"])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title}\naccuracy {m['accuracy']:.4f}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


SIZE_BANDS = (24, 32, 48, 80)  # --voc: accuracy per band of face size (shorter box side)


def accuracy_by_size(labels: np.ndarray, probs: np.ndarray, face_px: np.ndarray,
                     threshold: float, edges: tuple[int, ...] = SIZE_BANDS) -> dict[str, dict]:
    """Accuracy per face-size band: small faces are where the classifier fails first."""
    bounds = list(edges) + [None]
    out = {}
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        sel = (face_px >= lo) & (face_px < hi if hi is not None else True)
        name = f"{lo}-{hi}" if hi is not None else f">={lo}"
        n = int(sel.sum())
        correct = ((probs[sel] >= threshold).astype(int) == labels[sel]).sum()
        out[name] = {"n": n, "accuracy": float(correct / n) if n else float("nan")}
    return out


def agreement(a: np.ndarray, b: np.ndarray, threshold: float) -> dict:
    same = (a >= threshold) == (b >= threshold)
    diff = np.abs(a - b)
    return {
        "label_agreement": float(same.mean()) if len(a) else float("nan"),
        "disagreements": int((~same).sum()),
        "mean_abs_prob_diff": float(diff.mean()) if len(a) else float("nan"),
        "max_abs_prob_diff": float(diff.max()) if len(a) else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help=".keras or .tflite")
    p.add_argument("--model2", type=Path, help="second model: also report agreement with --model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--split", type=Path, help="split.json saved by train.py")
    src.add_argument("--data", type=Path, help="folder with one sub-folder per class")
    src.add_argument("--voc", type=Path,
                     help="scene photos with PASCAL VOC boxes (images/, annotations/): score "
                          "the classifier on face crops cut as the device cuts them")
    p.add_argument("--margin", type=non_negative_float, default=ClassifierConfig().margin,
                   help="--voc: crop margin per side (default: classifier.margin's, %(default)s)")
    p.add_argument("--min-face-px", type=non_negative_int, default=24, help="--voc: skip smaller boxes")
    p.add_argument("--grey", action="store_true",
                   help="--voc: the photos made grey, as an infrared camera sees at night")
    p.add_argument("--subset", choices=["train", "val", "test"], default="test")
    p.add_argument("--part", choices=["all", "train", "select"], default="all",
                   help="--voc: photos of this part of the scenes split (tools/eval_scenes.py)")
    p.add_argument("--data-root", type=Path, help="with --split: where the dataset lives now")
    p.add_argument("--threshold", type=probability, default=0.5, help="no_mask when P(no_mask) >= this")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--edgetpu", action="store_true", help="run .tflite models on a Coral")
    p.add_argument("--out", type=Path, help="write metrics.json, predictions.csv, confusion.png")
    args = p.parse_args(argv)
    if args.grey and not args.voc:
        p.error("--grey makes scene photos grey: it needs --voc")
    if args.out:
        out_dir(args.out)

    if args.split:
        split = dataset.load_split(args.split)
        paths, labels = dataset.subset_files(split, args.subset, args.data_root)
        where = f"{args.split} [{args.subset}] fingerprint {str(split.get('fingerprint'))[:12]}"
    elif args.voc:
        paths, labels, skipped = voc_crops(args.voc, args.margin, args.min_face_px, args.part,
                                           args.grey)
        where = (f"{args.voc}{' made grey' if args.grey else ''} face crops (margin "
                 f"{args.margin}, >= {args.min_face_px} px; "
                 f"left out: {skipped})")
    else:
        paths, labels = dataset.folder_files(args.data)
        where = str(args.data)

    models = [open_model(m, args.threads, args.edgetpu) for m in (args.model, args.model2) if m]
    probs, errors, ms, keep = run_models(models, paths)
    for e in errors:
        print(f"warning: skipped unreadable {e}", file=sys.stderr)
    labels = labels[keep]
    kept_paths = [p for p, k in zip(paths, keep, strict=True) if k]
    if not kept_paths:  # metrics of nothing are NaN; an --out of an earlier run stays as it was
        raise SystemExit(f"evaluate: none of the {len(paths)} images of {where} could be read; "
                         "nothing was scored")

    print(f"data: {where}: {len(kept_paths)} images ({int((labels == NO_MASK).sum())} no_mask)")
    report = {"data": where, "n_images": len(kept_paths), "unreadable": errors, "models": []}
    for k, (m, path) in enumerate(zip(models, [args.model, args.model2], strict=False)):
        met = binary_metrics(labels, probs[k], args.threshold)
        met["ms_per_image"] = ms[k]
        report["models"].append({"model": str(path), "name": m.name, "metrics": met})
        print(f"\nmodel: {m.name}")
        print(f"  accuracy {number(met['accuracy'])}  precision {number(met['precision'])}  "
              f"recall {number(met['recall'])}  f1 {number(met['f1'])}")
        print(f"  sensitivity {number(met['sensitivity'])}  specificity "
              f"{number(met['specificity'])}  {ms[k]:.1f} ms/image (batch 1 for TFLite, incl. "
              "preprocessing)")
        print(format_confusion(met))
        if args.voc:
            sizes = np.array([c.face_px for c in kept_paths])
            met["by_face_px"] = accuracy_by_size(labels, probs[k], sizes, args.threshold)
            print("  by face size: " + ", ".join(
                f"{b} px {v['accuracy']:.3f} (n {v['n']})" for b, v in met["by_face_px"].items()))
    if len(models) == 2:
        report["agreement"] = agreement(probs[0], probs[1], args.threshold)
        a = report["agreement"]
        print(f"\nagreement: {a['label_agreement']:.4f} of labels equal ({a['disagreements']} differ); "
              f"P(no_mask) diff mean {a['mean_abs_prob_diff']:.4f} max {a['max_abs_prob_diff']:.4f}")

    if args.out:
        write_json(args.out / "metrics.json", report)
        rows = io.StringIO()  # written whole, as the report (a full disk: one line, old file kept)
        w = csv.writer(rows)
        w.writerow(["path", "true"] + [f"p_no_mask_{k + 1}" for k in range(len(models))]
                   + [f"pred_{k + 1}" for k in range(len(models))])
        for i, path in enumerate(kept_paths):
            ps = [float(pr[i]) for pr in probs]
            w.writerow([str(path), dataset.LABELS[labels[i]]] + [f"{x:.6f}" for x in ps]
                       + [label_for(x, args.threshold) for x in ps])
        write_out(args.out / "predictions.csv", rows.getvalue())
        for k, rec in enumerate(report["models"]):
            suffix = "" if k == 0 else "_2"
            plot_confusion(rec["metrics"], rec["name"], args.out / f"confusion{suffix}.png")
        if len(report["models"]) == 1:  # an earlier two-model run's second matrix, not this one's
            (args.out / "confusion_2.png").unlink(missing_ok=True)
        print(f"\nwrote {args.out}/metrics.json, predictions.csv, confusion*.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
