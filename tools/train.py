#!/usr/bin/env python3
"""Train the mask / no-mask classifier (the seed recipe by default).

MobileNetV2 (alpha 1.0) from ImageNet weights, frozen, with the head
AveragePooling2D(S/32) -> Flatten -> Dense(128, relu) -> Dropout(0.5) -> Dense(2, softmax),
trained with augmentation that imitates what the device feeds it: face-detector crops
(shifted, zoomed, tilted), small faces blown up from few pixels, JPEG artefacts, lighting,
grey IR-like frames. Optionally the top of the base is fine-tuned afterwards.

    python tools/train.py --out runs/m224                     # 224 px, 20 epochs
    python tools/train.py --size 96 --epochs 1 --limit 60 --out runs/tiny
    python tools/train.py --size 160 --fine-tune-epochs 5 --out runs/m160

The run folder gets: model.keras, split.json, history.csv, curves.png, record.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dataset  # noqa: E402

DEFAULT_WEIGHTS = dataset.REPO.parent / "shared" / "pretrained" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=dataset.DEFAULT_DATA, help="class-folder dataset")
    p.add_argument("--out", type=Path, required=True, help="run folder (created)")
    p.add_argument("--size", type=int, default=224, help="input size S (multiple of 32: 224/160/128/96)")
    p.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width multiplier")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS),
                   help="base weights .h5 (include_top=False), or 'none' for random init")
    p.add_argument("--epochs", type=int, default=20, help="epochs with the base frozen")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (head)")
    p.add_argument("--fine-tune-epochs", type=int, default=0,
                   help="extra epochs with the top of the base unfrozen (0 = seed recipe)")
    p.add_argument("--fine-tune-from", default="block_13_expand",
                   help="first base layer to unfreeze when fine-tuning")
    p.add_argument("--fine-tune-lr", type=float, default=1e-5)
    p.add_argument("--augment", choices=["none", "seed", "device"], default="device",
                   help="seed: flips/rotation/zoom/shift; device: also small faces, JPEG, light, grey")
    p.add_argument("--val", type=float, default=0.1, help="validation fraction")
    p.add_argument("--test", type=float, default=0.1, help="test fraction (never trained on)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--limit", type=int, default=None, help="at most N images per class (trials)")
    p.add_argument("--quiet", action="store_true", help="one line per epoch, no progress bar")
    args = p.parse_args(argv)
    if args.size % 32 or args.size < 32:
        p.error("--size must be a multiple of 32 (the head pools the S/32 feature map)")
    return args


def build_model(size: int, alpha: float, weights: str | None, seed: int):
    """The seed architecture on normalised [-1, 1] RGB input."""
    import keras
    from keras import layers

    base = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), alpha=alpha, include_top=False, weights=None
    )
    if weights:
        base.load_weights(weights)
    base.trainable = False
    inputs = keras.Input((size, size, 3), name="image")
    x = base(inputs, training=False)  # BatchNorm stays in inference mode, also when fine-tuning
    x = layers.AveragePooling2D(pool_size=(size // 32, size // 32), name="head_pool")(x)
    x = layers.Flatten(name="head_flatten")(x)
    x = layers.Dense(128, activation="relu", name="head_dense")(x)
    x = layers.Dropout(0.5, seed=seed, name="head_dropout")(x)
    outputs = layers.Dense(2, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=f"maskd_mobilenetv2_{size}"), base


def make_augmenter(kind: str, size: int, seed: int):
    """A function (uint8 image batch, labels) -> (normalised float batch, labels)."""
    import keras
    import tensorflow as tf
    from keras import layers

    from maskd.classifier import DEFAULT_OFFSET, DEFAULT_SCALE

    geometric = keras.Sequential(
        [
            layers.RandomFlip("horizontal", seed=seed),
            layers.RandomRotation(0.04, fill_mode="reflect", seed=seed + 1),  # about +-15 deg
            layers.RandomZoom((-0.15, 0.2), fill_mode="reflect", seed=seed + 2),
            layers.RandomTranslation(0.08, 0.08, fill_mode="reflect", seed=seed + 3),
        ],
        name="geometric",
    )
    photometric = keras.Sequential(
        [
            layers.RandomBrightness(0.25, value_range=(0, 255), seed=seed + 4),
            layers.RandomContrast(0.3, seed=seed + 5),
        ],
        name="photometric",
    )
    def small_faces(x):
        """Half the batch: shrink to 16..S px and blow up again, like a far face from the camera."""
        n = tf.shape(x)[0]
        side = tf.random.uniform((), 16, size, dtype=tf.int32)
        low = tf.image.resize(tf.image.resize(x, (side, side), method="area"), (size, size))
        pick = tf.random.uniform((n, 1, 1, 1)) < 0.5
        return tf.where(pick, low, x)

    def jpeg(x):
        """Camera-like compression on each image (quality 30..95)."""
        q = tf.random.uniform((), 30, 95, dtype=tf.int32)
        return tf.map_fn(
            lambda im: tf.cast(
                tf.image.adjust_jpeg_quality(tf.cast(im, tf.uint8), q), tf.float32
            ),
            x,
        )

    def grey(x):
        """A few grey frames, as from an IR/night camera."""
        n = tf.shape(x)[0]
        g = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x))
        return tf.where(tf.random.uniform((n, 1, 1, 1)) < 0.1, g, x)

    def apply(images, labels):
        x = tf.cast(images, tf.float32)
        if kind != "none":
            x = geometric(x, training=True)
        if kind == "device":
            x = small_faces(x)
            x = photometric(x, training=True)
            x = tf.clip_by_value(x, 0.0, 255.0)
            x = jpeg(x)
            x = grey(x)
        x = tf.clip_by_value(x, 0.0, 255.0)
        return x * DEFAULT_SCALE + DEFAULT_OFFSET, labels

    return apply


class EpochLog:
    """Per-epoch CSV row + a readable progress line (works under nohup, unlike a bar)."""

    def __init__(self, path: Path, total_epochs: int, quiet: bool):
        import keras

        self.rows: list[dict] = []
        self.path = path
        self.total = total_epochs
        self.t0 = time.time()
        log = self

        class _CB(keras.callbacks.Callback):
            def on_epoch_begin(self, epoch, logs=None):
                self.t = time.time()

            def on_epoch_end(self, epoch, logs=None):
                log.add(epoch + 1, logs or {}, time.time() - self.t)

        self.callback = _CB()
        self.quiet = quiet

    def add(self, epoch: int, logs: dict, seconds: float) -> None:
        row = {
            "epoch": epoch,
            "train_loss": float(logs["loss"]),
            "train_acc": float(logs["accuracy"]),
            "val_loss": float(logs["val_loss"]),
            "val_acc": float(logs["val_accuracy"]),
        }
        self.rows.append(row)
        with self.path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            w.writeheader()
            for r in self.rows:
                w.writerow({k: (f"{v:.5f}" if isinstance(v, float) else v) for k, v in r.items()})
        elapsed = time.time() - self.t0
        eta = elapsed / len(self.rows) * (self.total - len(self.rows))
        print(
            f"epoch {epoch:3d}/{self.total}  loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}  "
            f"val_loss {row['val_loss']:.4f} val_acc {row['val_acc']:.4f}  {seconds:5.0f}s  "
            f"eta {eta / 60:.1f} min",
            flush=True,
        )


def plot_curves(rows: list[dict], path: Path, fine_tune_start: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, title in ((axes[0], "loss", "Loss"), (axes[1], "acc", "Accuracy")):
        ax.plot(ep, [r[f"train_{key}"] for r in rows], "o-", ms=3, label="train")
        ax.plot(ep, [r[f"val_{key}"] for r in rows], "s-", ms=3, label="validation")
        if fine_tune_start:
            ax.axvline(fine_tune_start - 0.5, color="grey", ls="--", lw=1, label="fine-tuning")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    print(f"[1/5] scanning {args.data} (dedupe exact duplicates, then stratified split)", flush=True)
    split = dataset.make_split(args.data, args.val, args.test, args.seed, args.limit)
    dataset.save_split(split, out / "split.json")
    print(
        f"      {split['files_found']} files, {len(split['unreadable'])} unreadable, "
        f"{len(split['duplicates_dropped'])} duplicates dropped; counts {split['counts']}",
        flush=True,
    )

    import keras
    import tensorflow as tf
    from evaluate import binary_metrics

    from maskd.classifier import DEFAULT_OFFSET, DEFAULT_SCALE

    keras.utils.set_random_seed(args.seed)

    print(f"[2/5] loading images at {args.size}x{args.size}", flush=True)
    data = {}
    for part in ("train", "val", "test"):
        paths, labels = dataset.subset_files(split, part)
        data[part] = (dataset.load_resized(paths, args.size, progress=True), labels)

    augment = make_augmenter(args.augment, args.size, args.seed)
    x_tr, y_tr = data["train"]
    ds_train = (
        tf.data.Dataset.from_tensor_slices((x_tr, y_tr))
        .shuffle(len(x_tr), seed=args.seed, reshuffle_each_iteration=True)
        .batch(args.batch)
        .map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(2)
    )

    def plain(part):
        x, y = data[part]
        return (
            tf.data.Dataset.from_tensor_slices((x, y))
            .batch(args.batch)
            .map(lambda a, b: (tf.cast(a, tf.float32) * DEFAULT_SCALE + DEFAULT_OFFSET, b))
        )

    ds_val = plain("val")

    weights = None if args.weights.lower() == "none" else args.weights
    if weights and not Path(weights).is_file():
        raise SystemExit(f"base weights not found: {weights} (pass --weights FILE or --weights none)")
    model, base = build_model(args.size, args.alpha, weights, args.seed)
    total_epochs = args.epochs + args.fine_tune_epochs
    log = EpochLog(out / "history.csv", total_epochs, args.quiet)
    best = keras.callbacks.ModelCheckpoint(
        str(out / "best.weights.h5"), monitor="val_loss", save_best_only=True, save_weights_only=True
    )
    verbose = 0 if args.quiet or not sys.stdout.isatty() else 1

    print(f"[3/5] training the head, base frozen: {args.epochs} epochs", flush=True)
    model.compile(
        optimizer=keras.optimizers.Adam(args.lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    model.fit(ds_train, validation_data=ds_val, epochs=args.epochs, callbacks=[log.callback, best],
              verbose=verbose)

    fine_tune_start = None
    if args.fine_tune_epochs > 0:
        names = [layer.name for layer in base.layers]
        if args.fine_tune_from not in names:
            raise SystemExit(f"--fine-tune-from {args.fine_tune_from}: no such base layer")
        start = names.index(args.fine_tune_from)
        base.trainable = True
        for layer in base.layers[:start]:
            layer.trainable = False
        for layer in base.layers[start:]:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False  # keep ImageNet statistics; small data would wreck them
        fine_tune_start = args.epochs + 1
        print(f"[3b/5] fine-tuning base from {args.fine_tune_from}: {args.fine_tune_epochs} epochs",
              flush=True)
        model.compile(
            optimizer=keras.optimizers.Adam(args.fine_tune_lr),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        model.fit(ds_train, validation_data=ds_val, initial_epoch=args.epochs, epochs=total_epochs,
                  callbacks=[log.callback, best], verbose=verbose)

    # Keep the epoch with the lowest validation loss (the test split plays no part in this).
    best_epoch = min(log.rows, key=lambda r: r["val_loss"])["epoch"]
    model.load_weights(str(out / "best.weights.h5"))
    base.trainable = False
    model.save(out / "model.keras")
    plot_curves(log.rows, out / "curves.png", fine_tune_start)

    print("[4/5] scoring the kept model on val and test", flush=True)
    metrics = {}
    for part in ("val", "test"):
        probs = model.predict(plain(part), verbose=0)[:, dataset.LABELS.index("no_mask")]
        metrics[part] = binary_metrics(data[part][1], probs)
        m = metrics[part]
        print(f"      {part}: accuracy {m['accuracy']:.4f} precision {m['precision']:.4f} "
              f"recall {m['recall']:.4f} f1 {m['f1']:.4f}", flush=True)

    record = {
        "model": "model.keras",
        "argv": sys.argv,
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": {
            "root": split["root"],
            "fingerprint": split["fingerprint"],
            "files_found": split["files_found"],
            "unreadable": len(split["unreadable"]),
            "duplicates_dropped": len(split["duplicates_dropped"]),
            "split_file": "split.json",
            "counts": split["counts"],
        },
        "labels": dataset.LABELS,
        "input_size": args.size,
        "normalization": {"scale": DEFAULT_SCALE, "offset": DEFAULT_OFFSET, "color": "RGB"},
        "best_epoch": best_epoch,
        "fine_tune_start_epoch": fine_tune_start,
        "history": log.rows,
        "metrics": metrics,
        "wall_time_s": round(time.time() - t_start, 1),
        "environment": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        },
    }
    (out / "record.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    print(f"[5/5] done in {record['wall_time_s'] / 60:.1f} min; best epoch {best_epoch}; "
          f"wrote {out}/model.keras, history.csv, curves.png, record.json", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
