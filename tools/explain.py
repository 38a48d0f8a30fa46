#!/usr/bin/env python3
"""Why does the classifier say mask / no mask? Grad-CAM and plain CAM heat maps.

Grad-CAM (Selvaraju et al. 2017, used for mask detectors by Ornek et al.) weighs each channel
of the base's last conv block (MobileNetV2 ``out_relu``, 7x7x1280 at 224 px) by the mean
gradient of the class score and keeps the positive part. Plain CAM (Zhou et al. 2016) needs
the head to be pooling -> one Dense layer; with a hidden Dense+ReLU (the seed head) it would
be wrong, so it is only drawn where the head allows it.

    # overlays for some face images (RGB crops or photos of one face)
    python tools/explain.py --model runs/m224/model.keras face1.jpg face2.png --out out/cam
    # the docs sheet, from images that ship with installed packages (never ../shared)
    python tools/explain.py --model runs/m224/model.keras --sheet docs/img/gradcam_sheet.png
    # the check number: share of CAM energy in the lower half of the face, over a split
    python tools/explain.py --model runs/m224/model.keras --split runs/m224/split.json --json out/cam.json

Needs TensorFlow (an offline tool, like train.py); images go through maskd's own preprocess.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from maskd.classifier import preprocess
from maskd.images import ImageError, load_image_rgb
from tools.benchlib.common import SHARED  # ../shared, or $MASKD_SHARED
from tools.inputs import (
    figure_out,
    load_keras,
    number,
    out_dir,
    out_file,
    positive_int,
    save_figure,
    write_image,
    write_json,
)

LABELS = ["mask", "no_mask"]  # the classifier's output order (tools/dataset.py LABELS)


# --------------------------------------------------------------------------- pure numpy


def upsample(cam: np.ndarray, height: int, width: int) -> np.ndarray:
    """Feature-map heat map (h, w) -> (height, width), bilinear, as float32."""
    return cv2.resize(cam.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)


def normalise(cam: np.ndarray) -> np.ndarray:
    """Scale to [0, 1] by the maximum (an all-zero map stays zero)."""
    m = float(cam.max()) if cam.size else 0.0
    return cam / m if m > 0 else np.zeros_like(cam)


def lower_half_share(cam: np.ndarray) -> float:
    """Share of the (non-negative) heat map's energy in the lower half of the rows; NaN if empty.

    On a face crop the lower half holds nose, mouth and chin: where a mask is, or is not.
    Odd heights split the middle row evenly.
    """
    cam = np.clip(np.asarray(cam, np.float64), 0, None)
    total = cam.sum()
    if total <= 0:
        return float("nan")
    h = cam.shape[0]
    rows = cam.sum(axis=1)
    lower = rows[(h + 1) // 2 :].sum() + (rows[h // 2] / 2 if h % 2 else 0.0)
    return float(lower / total)


def overlay(rgb: np.ndarray, cam: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The heat map (any size, >= 0) as a JET colour layer over an RGB image."""
    h, w = rgb.shape[:2]
    heat = normalise(upsample(cam, h, w))
    colour = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[:, :, ::-1]
    return (rgb.astype(np.float32) * (1 - alpha) + colour.astype(np.float32) * alpha).astype(np.uint8)


# --------------------------------------------------------------------------- Keras side


class Explainer:
    """Grad-CAM (and plain CAM when the head allows) for a Keras image classifier.

    Works on the maskd layout (input -> nested MobileNetV2 base -> head layers) by running
    the base and then the head layer by layer under a GradientTape, which Keras 3 needs
    because a nested model's inner tensors are not reachable from the outer graph. A flat
    model is split at ``layer`` (default: the last layer with a 4-D output).
    """

    def __init__(self, model: Any, layer: str | None = None):
        import keras

        self.keras = keras
        self.model = model
        self.size = int(model.input_shape[1])
        layers = [ly for ly in model.layers if not isinstance(ly, keras.layers.InputLayer)]
        nested = [i for i, ly in enumerate(layers) if isinstance(ly, keras.Model)]
        if layer is None and nested:
            i = nested[-1]
            self.pre, self.features, self.head = layers[:i], layers[i], layers[i + 1 :]
            self.layer_name = f"{layers[i].name} (output: {layers[i].layers[-1].name})"
        else:
            if layer is None:
                four_d = [i for i, ly in enumerate(layers) if len(ly.output.shape) == 4]
                i = four_d[-1]
            else:
                names = [ly.name for ly in layers]
                if layer not in names:
                    raise SystemExit(f"--layer {layer}: the model has no layer of that name (its "
                                     f"layers: {', '.join(names)})")
                i = names.index(layer)
            self.features = keras.Model(model.inputs, layers[i].output)
            self.pre, self.head = [], layers[i + 1 :]
            self.layer_name = layers[i].name
        self.cam_weights = self._cam_weights()

    def _cam_weights(self) -> np.ndarray | None:
        """(channels, classes) weights of the single Dense after global pooling, else None."""
        kl = self.keras.layers
        dense = [ly for ly in self.head if isinstance(ly, kl.Dense)]
        passive = (kl.GlobalAveragePooling2D, kl.AveragePooling2D, kl.Flatten, kl.Dropout, kl.Dense)
        if len(dense) != 1 or not all(isinstance(ly, passive) for ly in self.head):
            return None
        if self.head[-1] is not dense[0]:
            return None
        return np.asarray(dense[0].kernel)

    @property
    def why_no_cam(self) -> str | None:
        if self.cam_weights is not None:
            return None
        names = " -> ".join(type(ly).__name__ for ly in self.head)
        return f"plain CAM needs pooling -> one Dense after the conv block; this head is {names}"

    def _features(self, x: Any) -> Any:
        y = x
        for ly in self.pre:
            y = ly(y, training=False)
        return self.features(y, training=False)

    def _head(self, feats: Any) -> tuple[Any, Any]:
        """(class logits, probabilities) from the feature maps."""
        import tensorflow as tf

        y = feats
        for ly in self.head[:-1]:
            y = ly(y, training=False)
        last = self.head[-1]
        if isinstance(last, self.keras.layers.Dense):
            logits = tf.matmul(y, last.kernel) + last.bias  # pre-softmax class scores
        else:
            logits = last(y, training=False)
        act = getattr(last, "activation", None)
        return logits, (act(logits) if act is not None else logits)

    def explain(self, x: np.ndarray, classes: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Heat maps for a batch ``x`` (N, S, S, 3) already preprocessed.

        ``classes`` picks, per image, the class to explain (default: the predicted one).
        Returns ``gradcam`` (N, h, w) >= 0, ``cam`` (N, h, w) >= 0 when the head allows,
        ``probs`` (N, C), ``classes`` (N,) and ``per_class`` (N, C, h, w): Grad-CAM of
        every class, from one pass through the base.
        """
        import tensorflow as tf

        feats = self._features(tf.convert_to_tensor(x, tf.float32))
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(feats)
            logits, probs = self._head(feats)
            scores = [tf.reduce_sum(logits[:, c]) for c in range(int(logits.shape[1]))]
        a = np.asarray(feats)
        per_class = []
        for score in scores:
            grads = np.asarray(tape.gradient(score, feats))  # (N, h, w, K)
            alpha = grads.mean(axis=(1, 2), keepdims=True)  # one weight per channel and image
            per_class.append(np.maximum((alpha * a).sum(axis=-1), 0.0))
        del tape
        per = np.stack(per_class, axis=1)
        probs_np = np.asarray(probs)
        cls = np.argmax(probs_np, axis=1) if classes is None else np.asarray(classes)
        idx = np.arange(len(cls))
        out = {"gradcam": per[idx, cls], "per_class": per, "probs": probs_np, "classes": cls}
        if self.cam_weights is not None:
            w = self.cam_weights[:, cls].T[:, None, None, :]  # (N, 1, 1, K)
            out["cam"] = np.maximum((w * a).sum(axis=-1), 0.0)
        return out


def prepare(rgbs: list[np.ndarray], size: int) -> np.ndarray:
    return np.stack([preprocess(im, size) for im in rgbs]).astype(np.float32)


# --------------------------------------------------------------------------- the check number


def split_numbers(ex: Explainer, split_path: Path, subset: str, root: Path | None,
                  batch: int = 16, limit: int | None = None) -> dict[str, Any]:
    """Lower-half CAM energy over one part of a saved split, per true class (numbers only)."""
    from tools import dataset

    split = dataset.load_split(split_path)
    paths, labels = dataset.subset_files(split, subset, root)
    if limit:
        paths, labels = paths[:limit], labels[:limit]
    shares: dict[str, list[float]] = {"gradcam_pred": [], "gradcam_true": [], "cam_pred": []}
    per_class: dict[int, dict[str, list[float]]] = {c: {k: [] for k in shares} for c in (0, 1)}
    correct = 0
    skipped = []
    for start in range(0, len(paths), batch):
        rgbs, labs = [], []
        for p, lab in zip(paths[start : start + batch], labels[start : start + batch], strict=True):
            try:
                rgbs.append(load_image_rgb(p))
                labs.append(int(lab))
            except ImageError as err:
                skipped.append(str(err))
        if not rgbs:
            continue
        pred = ex.explain(prepare(rgbs, ex.size))
        correct += int(np.sum(pred["classes"] == np.array(labs)))
        for i, lab in enumerate(labs):
            vals = {"gradcam_pred": lower_half_share(pred["gradcam"][i]),
                    "gradcam_true": lower_half_share(pred["per_class"][i, lab])}
            if "cam" in pred:
                vals["cam_pred"] = lower_half_share(pred["cam"][i])
            for k, v in vals.items():
                per_class[lab][k].append(v)

    def summary(vals: list[float]) -> dict[str, float] | None:
        v = np.array([s for s in vals if np.isfinite(s)])
        if not len(v):
            return None
        return {"n": int(len(v)), "mean": float(v.mean()), "median": float(np.median(v)),
                "share_above_half": float(np.mean(v > 0.5)), "empty_maps": len(vals) - len(v)}

    n = sum(len(per_class[c]["gradcam_pred"]) for c in per_class)
    return {
        "split": str(split_path), "subset": subset, "images": n, "skipped": skipped,
        "accuracy": correct / n if n else float("nan"),
        "layer": ex.layer_name, "plain_cam": ex.why_no_cam or "yes",
        "lower_half_share": {LABELS[c]: {k: summary(v) for k, v in per_class[c].items() if v}
                             for c in per_class},
    }


# --------------------------------------------------------------------------- overlays and sheet


def explain_files(ex: Explainer, files: list[Path], out: Path) -> list[dict[str, Any]]:
    """One overlay PNG per image (image | Grad-CAM | CAM) and a line of numbers each.

    An overlay is named by the image's place in ``files``, its folder and its name
    (``003_with_mask_0_cam.png``): by the name alone, class folders' ``0.jpg`` overwrote each other.
    """
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for n, p in enumerate(files, 1):
        try:
            rgb = load_image_rgb(p)
        except ImageError as err:
            print(f"skipped: {err}", file=sys.stderr)
            continue
        r = ex.explain(prepare([rgb], ex.size))
        panels = [cv2.resize(rgb, (ex.size, ex.size), interpolation=cv2.INTER_AREA),
                  overlay(cv2.resize(rgb, (ex.size, ex.size)), r["gradcam"][0])]
        if "cam" in r:
            panels.append(overlay(cv2.resize(rgb, (ex.size, ex.size)), r["cam"][0]))
        dst = out / ("_".join(part for part in (f"{n:03d}", p.parent.name, p.stem) if part)
                     + "_cam.png")
        write_image(dst, np.hstack(panels)[:, :, ::-1])
        p_no = float(r["probs"][0][LABELS.index("no_mask")])
        rows.append({"image": str(p), "overlay": str(dst), "p_no_mask": p_no,
                     "label": LABELS[int(r["classes"][0])],
                     "gradcam_lower_half": lower_half_share(r["gradcam"][0])})
    return rows


def _face_box(det: Any, rgb: np.ndarray) -> tuple[float, float, float, float] | None:
    faces = det.detect(np.ascontiguousarray(rgb[:, :, ::-1]))
    if not faces:
        return None
    return max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1])).box


def sheet_faces() -> list[tuple[str, np.ndarray]]:
    """Face crops from photos that ship inside installed packages (free to render into docs).

    The astronaut appears bare and wearing maskd.demo's drawn mask (same box, a paired
    comparison), each also as a far face of 28 px; Grace Hopper (matplotlib) and the
    cameraman (scikit-image) are bare faces. Faces are found by YuNet and cut with maskd's
    crop_face, as on the device.
    """
    from maskd.config import ClassifierConfig, DetectorConfig
    from maskd.demo import astronaut_bgr, draw_mask
    from maskd.detectors import find_yunet_model, make_detector
    from maskd.geometry import crop_face

    model = find_yunet_model() or SHARED / "models" / "face_detection_yunet_2026may.onnx"
    det = make_detector(DetectorConfig(kind="yunet", model=model, input_width=640, input_height=640,
                                       score_threshold=0.5))
    margin = ClassifierConfig().margin
    out: list[tuple[str, np.ndarray]] = []
    bgr = astronaut_bgr()
    box = _face_box(det, bgr[:, :, ::-1])
    if box is not None:
        bare = crop_face(bgr[:, :, ::-1], box, margin)
        masked = crop_face(draw_mask(bgr)[:, :, ::-1], box, margin)
        far = [cv2.resize(c, (28, 28), interpolation=cv2.INTER_AREA) for c in (bare, masked)]
        out += [("astronaut, bare", bare), ("astronaut, drawn mask", masked),
                ("astronaut, bare, 28 px", far[0]), ("astronaut, drawn mask, 28 px", far[1])]
    photos = []
    try:
        import matplotlib

        hopper = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
        if hopper.is_file():
            photos.append(("Grace Hopper (matplotlib), bare", load_image_rgb(hopper)))
    except ImportError:
        pass
    try:
        from skimage import data

        photos.append(("cameraman (scikit-image), bare", np.repeat(data.camera()[..., None], 3, axis=2)))
    except ImportError:
        pass
    for name, rgb in photos:
        box = _face_box(det, rgb)
        if box is None:
            print(f"sheet: no face found in {name}", file=sys.stderr)
            continue
        out.append((name, crop_face(rgb, box, margin)))
    return out


def make_sheet(ex: Explainer, dst: Path) -> list[dict[str, Any]]:
    """Rows of bare and masked faces: image | Grad-CAM | CAM (when the head allows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = sheet_faces()
    if not items:
        raise SystemExit("no package face images found (install scikit-image / matplotlib)")
    panels_per = 3 if ex.cam_weights is not None else 2
    per_row = 2  # two faces side by side keeps the sheet readable
    n_rows = (len(items) + per_row - 1) // per_row
    fig, axes = plt.subplots(n_rows, panels_per * per_row, figsize=(2.6 * panels_per * per_row, 2.9 * n_rows),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    rows = []
    for k, (name, crop) in enumerate(items):
        res = ex.explain(prepare([crop], ex.size))
        shown = cv2.resize(crop, (ex.size, ex.size), interpolation=cv2.INTER_AREA
                           if crop.shape[0] > ex.size else cv2.INTER_LINEAR)
        p_no = float(res["probs"][0][LABELS.index("no_mask")])
        label = LABELS[int(res["classes"][0])]
        panels = [(shown, f"{name}\nP(no_mask)={p_no:.2f} -> {label}"),
                  (overlay(shown, res["gradcam"][0]),
                   f"Grad-CAM ({label})\nlower half {number(lower_half_share(res['gradcam'][0]), '.0%')}")]
        if "cam" in res:
            panels.append((overlay(shown, res["cam"][0]),
                           f"CAM\nlower half {number(lower_half_share(res['cam'][0]), '.0%')}"))
        r, c0 = divmod(k, per_row)
        for c, (img, title) in enumerate(panels):
            ax = axes[r][c0 * panels_per + c]
            ax.imshow(img)
            ax.set_title(title, fontsize=8)
        rows.append({"image": name, "p_no_mask": p_no, "label": label,
                     "gradcam_lower_half": lower_half_share(res["gradcam"][0])})
    fig.suptitle(f"Grad-CAM on {ex.layer_name}", fontsize=9)
    fig.tight_layout()
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, dst, dpi=90)
    plt.close(fig)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, required=True, help="Keras model (runs/<run>/model.keras)")
    p.add_argument("images", nargs="*", type=Path, help="face images to explain")
    p.add_argument("--out", type=Path, default=Path("out/explain"), help="overlay folder")
    p.add_argument("--layer", default=None, help="conv layer of a flat model (default: last 4-D)")
    p.add_argument("--sheet", type=Path, help="write the example sheet PNG here")
    p.add_argument("--split", type=Path, help="split.json: report lower-half CAM energy numbers")
    p.add_argument("--subset", default="test", choices=["train", "val", "test"])
    p.add_argument("--data-root", type=Path, default=None, help="where the split's images live now")
    p.add_argument("--limit", type=positive_int, default=None, help="at most N split images")
    p.add_argument("--json", type=Path, help="write all numbers as JSON")
    args = p.parse_args(argv)
    if not (args.images or args.sheet or args.split):
        p.error("give face images, --sheet or --split")
    # Output places are made now, not after the model has run (a path inside a file).
    if args.images:
        out_dir(args.out)
    if args.sheet:
        figure_out(args.sheet)
    if args.json:
        out_file(args.json)
    ex = Explainer(load_keras(args.model), args.layer)
    result: dict[str, Any] = {"model": str(args.model), "layer": ex.layer_name,
                              "plain_cam": ex.why_no_cam or "yes"}
    print(f"explaining {args.model} at layer {ex.layer_name}")
    if ex.why_no_cam:
        print(f"plain CAM not drawn: {ex.why_no_cam}")
    if args.images:
        result["images"] = explain_files(ex, args.images, args.out)
        if not result["images"]:
            raise SystemExit(f"explain: none of the {len(args.images)} images could be read")
        for r in result["images"]:
            print(f"{r['image']}: P(no_mask)={r['p_no_mask']:.3f} {r['label']}, Grad-CAM lower half "
                  f"{number(r['gradcam_lower_half'], '.0%')} -> {r['overlay']}")
    if args.sheet:
        result["sheet"] = make_sheet(ex, args.sheet)
        for r in result["sheet"]:
            print(f"sheet: {r['image']}: P(no_mask)={r['p_no_mask']:.3f} {r['label']}, "
                  f"Grad-CAM lower half {number(r['gradcam_lower_half'], '.0%')}")
        print(f"wrote {args.sheet}")
    if args.split:
        num = split_numbers(ex, args.split, args.subset, args.data_root, limit=args.limit)
        result["split"] = num
        if not num["images"]:
            raise SystemExit(f"explain: none of the {args.subset} images of {args.split} could "
                             "be read (pass --data-root where the dataset lives now)")
        print(f"{num['subset']} split: {num['images']} images, accuracy {num['accuracy']:.4f}")
        for cls, stats in num["lower_half_share"].items():
            for kind, s in stats.items():
                if s:
                    print(f"  true {cls:8s} {kind:13s}: lower-half energy mean {s['mean']:.3f} "
                          f"median {s['median']:.3f}, maps mostly in the lower half {s['share_above_half']:.0%}"
                          f" (n={s['n']})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
