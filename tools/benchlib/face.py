"""``face``: per-face latency of Keras predict, Keras call, TFLite float32/int8 and EdgeTPU."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from maskd.classifier import Classifier, ModelError
from tools.benchlib.common import REPO, measure, rel, thread_counts
from tools.benchlib.inputs import face_image


def keras_model_for(tflite: Path) -> Path | None:
    """The Keras model a .tflite was converted from (its sidecar says), when it is here.

    Same weights on both sides keeps the Keras-vs-TFLite comparison about the runtime only.
    """
    try:
        src = json.loads(tflite.with_suffix(".json").read_text())["source"]["keras_model"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    for p in (Path(src), REPO / src):
        if p.is_file():
            return p
    return None


def load_keras(path: Path | None, size: int, notes: list[str]) -> tuple[Any, str] | None:
    """(model, description) or None with a note when TensorFlow/Keras is not installed."""
    try:
        import keras
    except ImportError:
        notes.append("Keras rows skipped: TensorFlow/Keras is not installed (normal on a Pi)")
        return None
    if path is not None:  # a missing or foreign file: one line naming it, not Keras' ValueError
        from tools.inputs import load_keras as read_keras

        return read_keras(path), str(rel(path))
    # No trained model here (fresh clone): the same architecture untrained times the same.
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=None)
    x = keras.layers.GlobalAveragePooling2D()(base.output)
    out = keras.layers.Dense(2, activation="softmax")(x)
    notes.append("no Keras model for the int8 model here (its sidecar's source.keras_model): "
                 "Keras rows use an untrained MobileNetV2 of the same shape")
    return keras.Model(base.input, out), "untrained MobileNetV2 + GAP + Dense(2) (same shape)"


def bench_face(args: argparse.Namespace, notes: list[str]) -> dict[str, Any]:
    """Per-face latency of every runtime, same face, same machine, one run."""
    rgb, what = face_image()
    rows: list[dict[str, Any]] = []
    clfs: dict[str, Classifier] = {}
    size = None
    for kind, path in (("float32", args.float_model), ("int8", args.model)):
        if not path.is_file():
            notes.append(f"TFLite {kind} rows skipped: {rel(path)} not found (tools/convert.py makes it)")
            continue
        for threads in thread_counts():
            try:
                clf = Classifier.open(path, threads=threads)
            except ModelError as err:
                notes.append(f"TFLite {kind}: {err}")
                break
            size = clf.input_size
            clfs[f"{kind}/{threads}"] = clf
            rows.append(_tflite_row(f"TFLite {kind}", clf, rgb, threads, args))
    if args.edgetpu_model.is_file():
        try:
            clf = Classifier.open(args.edgetpu_model, edgetpu=True)
            rows.append(_tflite_row("TFLite int8 EdgeTPU", clf, rgb, 0, args))
        except ModelError as err:
            notes.append(f"EdgeTPU row skipped: {err}")
    else:
        notes.append(f"EdgeTPU row skipped: {rel(args.edgetpu_model)} not found (needs edgetpu_compiler)")

    size = size or 224
    if not args.no_keras:
        loaded = load_keras(args.keras or keras_model_for(args.model), size, notes)
        if loaded is not None:
            model, desc = loaded
            from maskd.classifier import preprocess

            x = preprocess(rgb, int(model.input_shape[1]))[None]
            # Seeds' path: preprocess + model.predict per face.
            t = measure(lambda: model.predict(x, verbose=0), args.warmup, args.repeats)
            p = float(np.asarray(model.predict(x, verbose=0))[0][-1])
            rows.insert(0, {"name": "Keras model.predict(x)", "runtime": "keras", "threads": "all",
                            "model": desc, **t, "p_no_mask": p})
            t = measure(lambda: model(x, training=False), args.warmup, args.repeats)
            rows.insert(1, {"name": "Keras model(x)", "runtime": "keras", "threads": "all",
                            "model": desc, **t, "p_no_mask": p})
    ref = next((r for r in rows if r["name"] == "Keras model.predict(x)"), None)
    for r in rows:
        r["faces_per_s"] = 1000.0 / r["median_ms"]
        if ref is not None:
            r["speedup_vs_keras_predict"] = ref["median_ms"] / r["median_ms"]
    return {"input": what, "input_size": size, "rows": rows}


def _tflite_row(name: str, clf: Classifier, rgb: np.ndarray, threads: int,
                args: argparse.Namespace) -> dict[str, Any]:
    """Time the bare interpreter call and maskd's whole per-face ``predict`` (resize included)."""
    interp = clf.interpreter  # the bare invoke is what the MAC/peak arithmetic needs
    inp = interp.get_input_details()[0]
    x = np.zeros(inp["shape"], dtype=inp["dtype"])

    def invoke() -> None:
        interp.set_tensor(inp["index"], x)
        interp.invoke()

    t_inv = measure(invoke, args.warmup, args.repeats)
    t_pred = measure(lambda: clf.predict([rgb]), args.warmup, args.repeats)
    return {"name": name, "runtime": clf.runtime, "threads": threads if threads else "edgetpu",
            "model": str(rel(clf.path)), **t_pred, "invoke_median_ms": t_inv["median_ms"],
            "p_no_mask": float(clf.predict([rgb])[0])}
