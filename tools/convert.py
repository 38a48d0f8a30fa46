#!/usr/bin/env python3
"""Convert a trained .keras classifier to TFLite: float32, dynamic-range and full-integer int8.

    python tools/convert.py runs/m224/model.keras --out runs/m224/tflite
    python tools/convert.py runs/m160/model.keras --out runs/m160/tflite --name maskd_mobilenetv2_160
    python tools/convert.py runs/m224/model.keras --out models --force   # replace the shipped model

Each .tflite gets a sidecar JSON (labels, input size, normalisation, provenance) that
maskd.classifier reads, so the device never guesses. The int8 model has uint8 input and
output and is calibrated on images of the TRAIN part of the run's split.json. When
``edgetpu_compiler`` is on PATH the int8 model is also compiled for the Coral EdgeTPU.
Each model also gets the head's pooled features as a second output (``tools/features.py``),
which the tracker compares faces by.

A model or sidecar already in ``--out`` is never replaced without ``--force`` (the default
``--out models`` holds the shipped model), and with it each model and its sidecar are written in
full under temporary names before they are renamed into place: a failure leaves the old pair.
The replaced int8 model's ``_edgetpu.tflite`` (it shares the sidecar) is removed, said on
stderr; the compiler, when on PATH, makes a new one.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from maskd.classifier import SIDECAR_FORMAT, ModelInfo
from maskd.files import write_together
from maskd.tflite import ModelError
from tools import dataset, features
from tools.inputs import (
    keras_file,
    load_keras_classifier,
    non_negative_int,
    out_dir,
    positive_int,
    probability,
    read_json,
    reason,
)

FORMATS = ("float32", "dynamic", "int8")
EDGETPU_HELP = (
    "edgetpu_compiler is not on PATH, so no EdgeTPU model was made. It exists only for x86-64 "
    "Debian/Ubuntu: add the Coral apt repository (https://coral.ai/docs/edgetpu/compiler/: "
    "'deb https://packages.cloud.google.com/apt coral-edgetpu-stable main'), "
    "apt-get install edgetpu-compiler, then run: edgetpu_compiler -s -o {out} {int8} "
    "(the result {stem}_edgetpu.tflite uses {stem}.json as its sidecar)"
)


def edgetpu_file(int8_model: Path) -> Path:
    """Where edgetpu_compiler puts the Coral model compiled from ``int8_model``."""
    return int8_model.with_name(int8_model.stem + "_edgetpu.tflite")


def drop_stale_edgetpu(int8_model: Path) -> None:
    """Remove the Coral model compiled from the int8 model just replaced (--force), saying so:
    it shares the new int8 model's sidecar, so left there it would be run as if it were the new
    model. The compiler, when on PATH, makes a new one next."""
    stale = edgetpu_file(int8_model)
    if stale.exists():
        try:
            stale.unlink()
        except OSError as err:
            raise SystemExit(f"{stale}: cannot remove the EdgeTPU model of the replaced int8 "
                             f"model ({err.strerror or err}); delete it before using "
                             f"{int8_model.with_suffix('.json')}") from None
        print(f"removed {stale}: it was compiled from the int8 model just replaced "
              f"(recompile: edgetpu_compiler -s -o {int8_model.parent} {int8_model})",
              file=sys.stderr)


def representative_images(split: dict, size: int, count: int, seed: int, data_root: Path | None,
                          augmented: float = 0.5):
    """``count`` train-split images (seeded choice), preprocessed as on the device.

    A fraction ``augmented`` goes through train.py's device-like augmentation first (small
    blurry faces, JPEG, light): int8 ranges must cover what the camera delivers, not only
    the clean web photos, or out-of-range activations get clipped on real crops.

    An unreadable image is skipped with a warning, as training skips it; none left (a wrong
    ``--data-root``, an empty train part) stops the tool: an empty representative set makes
    the converter write a float model under the int8 name.
    """
    from maskd.classifier import normalize, resize_square
    from maskd.images import ImageError, load_image_rgb
    from tools.train import augment_image

    paths, _ = dataset.subset_files(split, "train", data_root)
    rng = np.random.default_rng(seed)
    chosen = [paths[i] for i in sorted(rng.choice(len(paths), min(count, len(paths)), replace=False))]
    out, used = [], []
    for p in chosen:
        try:
            img = resize_square(load_image_rgb(p), size)
        except ImageError as err:
            print(f"warning: calibration skips unreadable {err}", file=sys.stderr)
            continue
        if rng.random() < augmented:
            img = augment_image(img, rng, "device")
        out.append(normalize(img)[None])
        used.append(p)
    if not out:
        raise SystemExit(f"no readable calibration image among {len(chosen)} of the split's train "
                         f"part under {data_root or split['root']} (pass --data-root where the "
                         "dataset lives now)")
    return out, used


def scene_calibration(scenes: Path, size: int, count: int, seed: int) -> list[np.ndarray]:
    """``count`` face crops of the scene set's train part, cut as the device cuts them
    (tools/scene_crops.py), preprocessed as on the device: int8 ranges must cover real camera
    faces (blur, crowds, small faces), not only the web photos of the paper's set."""
    from maskd.classifier import normalize
    from tools import scene_crops

    crops = scene_crops.scene_crops(scenes, "train", size)
    rng = np.random.default_rng([seed, 1])
    chosen = sorted(rng.choice(len(crops.labels), min(count, len(crops.labels)), replace=False))
    return [normalize(crops.images[i])[None] for i in chosen]


@contextlib.contextmanager
def scratch_folder():
    """The temporary folder for the SavedModel and the new models before they are checked. A
    full or unwritable one (a small tmpfs /tmp, TMPDIR) stops the tool with one line naming it
    and what to do, not a TensorFlow traceback; a model not yet replaced in --out stays."""
    import tensorflow as tf

    where = tempfile.gettempdir()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            yield Path(tmp)
    except (OSError, tf.errors.OpError) as err:
        # TensorFlow's message is '<op> <file>; No space left on device [Op:SaveV2]'
        cause = (err.strerror if isinstance(err, OSError) and err.strerror
                 else reason(err, 10_000).rsplit("; ", 1)[-1])
        raise SystemExit(f"{where}: cannot write the conversion's temporary files there "
                         f"({cause}); make room or set TMPDIR to a folder with room "
                         "(a few times the .keras model's size); models in --out not yet "
                         "replaced are left as they were") from None


def export_saved_model(model, size: int, folder: Path) -> None:
    """Keras 3 -> SavedModel with a fixed batch of 1 (what TFLite and the EdgeTPU want)."""
    import tensorflow as tf

    model.export(str(folder), format="tf_saved_model",
                 input_signature=[tf.TensorSpec((1, size, size, 3), tf.float32)], verbose=False)


def convert(saved_model: Path, kind: str, rep: list[np.ndarray] | None) -> bytes:
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    if kind == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif kind == "int8":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = lambda: ([x.astype(np.float32)] for x in rep)
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = tf.uint8
        conv.inference_output_type = tf.uint8
    return conv.convert()


def op_report(path: Path) -> dict:
    """Which ops the model uses and whether every op works on integers only (EdgeTPU needs that)."""
    from maskd.tflite import import_runtime

    interpreter_cls, _, _ = import_runtime()
    interp = interpreter_cls(model_path=str(path))
    dtypes = {t["index"]: np.dtype(t["dtype"]).name for t in interp.get_tensor_details()}
    ops: dict[str, int] = {}
    float_ops: set[str] = set()
    for op in interp._get_ops_details():  # noqa: SLF001 - the only op listing the runtime offers
        name = op["op_name"]
        ops[name] = ops.get(name, 0) + 1
        tensors = [i for i in list(op["inputs"]) + list(op["outputs"]) if i >= 0]
        if any(dtypes.get(i, "").startswith("float") for i in tensors):
            float_ops.add(name)
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    return {
        "ops": dict(sorted(ops.items())),
        "float_ops": sorted(float_ops),
        "all_integer": not float_ops,
        "input": {"dtype": np.dtype(inp["dtype"]).name, "shape": [int(v) for v in inp["shape"]],
                  "quantization": [float(v) for v in inp["quantization"]]},
        "output": {"dtype": np.dtype(out["dtype"]).name,
                   "quantization": [float(v) for v in out["quantization"]]},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("keras_model", type=Path, help="model.keras from tools/train.py")
    p.add_argument("--out", type=Path, default=Path("models"),
                   help="output folder (default models/, where the shipped model is)")
    p.add_argument("--force", action="store_true",
                   help="replace a model or sidecar of the same name already in --out")
    p.add_argument("--name", default="maskd_mobilenetv2", help="file stem: <name>_<format>.tflite")
    p.add_argument("--formats", default=",".join(FORMATS), help="comma list of " + ", ".join(FORMATS))
    p.add_argument("--split", type=Path, help="split.json for calibration (default: next to the model)")
    p.add_argument("--data-root", type=Path, help="where the split's dataset lives now")
    p.add_argument("--calibration-images", type=positive_int, default=1000,
                   help="train images for int8 ranges (>= 1)")
    p.add_argument("--calibration-augmented", type=probability, default=0.5,
                   help="fraction of calibration images given train.py's device-like augmentation")
    p.add_argument("--calibration-scenes", type=Path,
                   help="also calibrate on face crops of this scene set's train part "
                        "(e.g. ../shared/data/scenes-dev)")
    p.add_argument("--calibration-scene-crops", type=non_negative_int, default=500,
                   help="how many scene crops join the calibration images")
    p.add_argument("--features-layer", default=features.DEFAULT_LAYER,
                   help="pooling layer exposed as the features output ('' for scores only)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    args = p.parse_args(argv)

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        p.error(f"unknown format(s) {bad}; choose from {FORMATS}" if bad else
                f"--formats {args.formats!r} names no format; choose from {FORMATS}")
    if not args.force:
        for kind in formats:
            model_file = args.out / f"{args.name}_{kind}.tflite"
            for path in (model_file, model_file.with_suffix(".json"),
                         *([edgetpu_file(model_file)] if kind == "int8" else [])):
                if path.exists():
                    p.error(f"{path} exists; pass --force to replace it (or choose --out/--name)")
    out_dir(args.out)
    keras_file(args.keras_model)  # a .tflite given here was first asked for its split.json
    split_path = args.split or args.keras_model.parent / "split.json"
    if "int8" in formats and not split_path.is_file():
        raise SystemExit(f"int8 needs calibration images: {split_path} not found (pass --split)")

    record_path = args.keras_model.parent / "record.json"
    if not record_path.is_file() and (args.keras_model.parent / "split.json").is_file():
        raise SystemExit(f"{args.keras_model.parent}: tools/train.py's run without its "
                         "record.json: its training did not finish (stopped, or failed after "
                         "saving model.keras); train again into a new --out")
    record = read_json(record_path) if record_path.is_file() else {}
    labels = record.get("labels", dataset.LABELS)
    model, size = load_keras_classifier(args.keras_model, labels)
    norm = record.get("normalization", {})
    info = ModelInfo.from_dict({"labels": labels, "input_size": size, "normalization": norm},
                               str(args.keras_model))

    rep = calib = None
    if "int8" in formats:
        split = dataset.load_split(split_path)
        rep, calib = representative_images(split, size, args.calibration_images, args.seed,
                                           args.data_root, args.calibration_augmented)
        print(f"calibration: {len(rep)} train-split images from {split_path}")
        if args.calibration_scenes:
            extra = scene_calibration(args.calibration_scenes, size,
                                      args.calibration_scene_crops, args.seed)
            rep += extra
            print(f"calibration: + {len(extra)} scene crops of {args.calibration_scenes} (train part)")

    keras_sha = hashlib.sha256(args.keras_model.read_bytes()).hexdigest()
    int8_path = None
    with scratch_folder() as tmp:
        saved = tmp / "saved_model"
        export_saved_model(model, size, saved)
        for kind in formats:
            out = args.out / f"{args.name}_{kind}.tflite"
            made = tmp / out.name  # checked before it replaces an older model
            made.write_bytes(convert(saved, kind, rep))
            ops = op_report(made)
            if kind == "int8" and ops["input"]["dtype"] not in ("uint8", "int8"):
                raise SystemExit(f"int8 conversion gave a model with {ops['input']['dtype']} "
                                 f"input (calibration set of {len(rep)}); {out} not written")
            side = info.to_dict()
            side.update(
                format=SIDECAR_FORMAT,
                quantization=kind,
                model_file=out.name,
                input_dtype=ops["input"]["dtype"],
                all_integer_ops=ops["all_integer"],
                source={"keras_model": str(args.keras_model), "keras_sha256": keras_sha,
                        "data_fingerprint": record.get("data", {}).get("fingerprint"),
                        "train_params": record.get("params")},
                calibration=({"split": str(split_path), "subset": "train", "images": len(rep),
                              "augmented_fraction": args.calibration_augmented, "seed": args.seed,
                              "scenes": (str(args.calibration_scenes)
                                         if args.calibration_scenes else None),
                              "scene_crops": (args.calibration_scene_crops
                                              if args.calibration_scenes else 0)}
                             if kind == "int8" else None),
            )
            try:  # the model and its sidecar whole, or the old pair left as it was
                made.with_suffix(".json").write_text(json.dumps(side, indent=1), encoding="utf-8")
                if args.features_layer:
                    try:
                        features.expose(made, made, args.features_layer)
                    except ModelError as err:
                        if args.features_layer != features.DEFAULT_LAYER:  # a name the user gave
                            raise SystemExit(f"--features-layer {args.features_layer}: {err}; "
                                             "nothing was written") from None
                        print(f"  scores only, no features output: {err}")
                write_together({out: made.read_bytes(),
                                out.with_suffix(".json"): made.with_suffix(".json").read_bytes()})
            except OSError as err:
                raise SystemExit(f"{out}: cannot write ({err.strerror or err}); "
                                 "the earlier files are left as they were") from None
            if kind == "int8":
                drop_stale_edgetpu(out)
            kb = out.stat().st_size / 1024
            print(f"{out}: {kb:.0f} KiB, input {ops['input']['dtype']}, "
                  f"ops {', '.join(f'{k}x{v}' for k, v in ops['ops'].items())}")
            if kind == "int8":
                int8_path = out
                if ops["all_integer"]:
                    print("  every op is integer-only (EdgeTPU-compatible types)")
                else:
                    print(f"  NOT integer-only: float tensors in {ops['float_ops']}")

    if int8_path is not None:
        compiler = shutil.which("edgetpu_compiler")
        stem = int8_path.stem
        if compiler is None:
            print(EDGETPU_HELP.format(out=args.out, int8=int8_path, stem=stem))
        else:
            res = subprocess.run([compiler, "-s", "-o", str(args.out), str(int8_path)],
                                 capture_output=True, text=True)
            print(res.stdout + res.stderr)
            if res.returncode != 0:
                print(f"edgetpu_compiler failed with status {res.returncode}", file=sys.stderr)
                return 1
            print(f"EdgeTPU model: {edgetpu_file(int8_path)} (sidecar {stem}.json)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
