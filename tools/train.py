#!/usr/bin/env python3
"""Train the mask / no-mask classifier (the seed recipe by default).

MobileNetV2 (alpha 1.0) from ImageNet weights, frozen, with the head
AveragePooling2D(S/32) -> Flatten -> Dense(128, relu) -> Dropout(0.5) -> Dense(2, softmax),
trained with augmentation that imitates what the device feeds it: face-detector crops
(shifted, zoomed, tilted), small faces blown up from few pixels, JPEG artefacts, lighting,
grey IR-like frames; by default (--augment hard) also the hard cases of the scene photos:
profiles, hands in front of the face, motion blur, faces cut off at the frame edge.
Optionally the top of the base is fine-tuned afterwards.

--scenes adds the domain: face crops cut from the TRAIN part of annotated scene photos
exactly as the device cuts them (tools/scene_crops.py). About 15 % of those photos, whole,
go to the validation set that picks the epoch; the select part is never read. A scene crop
weighs --scene-weight paper images, and class weights make mask and no_mask weigh the same
in total (scenes are ~80 % masked), in training and in the val_loss alike.

While the base is frozen it is a fixed function, so by default (--views 4) it runs once on
4 augmented views of every training image and the 20 head epochs reuse those features
(each epoch sees every image through one randomly chosen view): 4 augmentations per image
instead of 20, at a fifth of the CPU. --views 0 pushes every epoch through the base.

    python tools/train.py --out runs/m224                     # 224 px, 20 epochs
    python tools/train.py --size 96 --epochs 1 --limit 60 --out runs/tiny
    python tools/train.py --size 160 --fine-tune-epochs 5 --out runs/m160
    python tools/train.py --size 128 --scenes ../shared/data/scenes-dev --out runs/m128s

The run folder gets: model.keras, split.json, history.csv, curves.png, record.json.
"""

from __future__ import annotations

import argparse
import csv
import errno
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import cv2
import numpy as np

from tools import dataset
from tools.inputs import (
    fraction,
    non_negative_int,
    out_dir,
    positive_float,
    positive_int,
    probability,
    reason,
    save_figure,
    save_keras,
    write_json,
)

DEFAULT_WEIGHTS = dataset.SHARED / "pretrained" / "mobilenet_v2_1.0_224_imagenet_no_top.weights.h5"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=dataset.DEFAULT_DATA, help="class-folder dataset")
    p.add_argument("--out", type=Path, required=True, help="run folder (created; one that holds a run already is refused)")
    p.add_argument("--size", type=int, default=224, help="input size S (multiple of 32: 224/160/128/96)")
    p.add_argument("--alpha", type=positive_float, default=1.0, help="MobileNetV2 width multiplier")
    p.add_argument("--weights", default=str(DEFAULT_WEIGHTS),
                   help="base weights .h5 (include_top=False), or 'none' for random init")
    p.add_argument("--epochs", type=positive_int, default=20, help="epochs with the base frozen")
    p.add_argument("--batch", type=positive_int, default=32)
    p.add_argument("--lr", type=positive_float, default=1e-4, help="Adam learning rate (head)")
    p.add_argument("--fine-tune-epochs", type=non_negative_int, default=0,
                   help="extra epochs with the top of the base unfrozen (0 = seed recipe)")
    p.add_argument("--fine-tune-from", default="block_13_expand",
                   help="first base layer to unfreeze when fine-tuning")
    p.add_argument("--fine-tune-lr", type=positive_float, default=1e-5)
    p.add_argument("--augment", choices=["none", "seed", "device", "hard", "colour"], default="hard",
                   help="seed: flips/rotation/zoom/shift; device: also small faces, JPEG, light, "
                        "grey; hard: also profiles, hands in front, motion blur, frame edges; "
                        "colour: also hue and saturation (tinted light, masks of any colour)")
    p.add_argument("--occlude-bare-mouths", action="store_true",
                   help="hard/colour: hands and objects in front also over a no_mask face's mouth, "
                        "as before the bare-mouth rule (m128t's augmentation, "
                        "models/MODEL_CARD.md); default: over its upper half only (m128v's)")
    p.add_argument("--scenes", type=Path, default=None,
                   help="annotated scene photos (images/ + annotations/, e.g. "
                        "../shared/data/scenes-dev): face crops of their train part, cut as the "
                        "device cuts them, join training; those of 15 %% of its photos join "
                        "the validation set that picks the epoch")
    p.add_argument("--scene-weight", type=positive_float, default=3.0,
                   help="loss weight of one scene crop against one paper image")
    p.add_argument("--scene-score", type=probability, default=None,
                   help="YuNet score cut when cutting scene crops (default: the device's; lower "
                        "cuts more hard faces from the detector's box)")
    p.add_argument("--views", type=non_negative_int, default=4,
                   help="frozen phase: augmented views per image whose base features are computed "
                        "once and reused by the epochs (0 = push every epoch through the base)")
    p.add_argument("--val", type=fraction, default=0.1, help="validation fraction")
    p.add_argument("--test", type=fraction, default=0.1, help="test fraction (never trained on)")
    p.add_argument("--seed", type=non_negative_int, default=42)
    p.add_argument("--limit", type=positive_int, default=None,
                   help="at most N (>= 1) images per class and, with --scenes, the first N "
                        "scene photos of its train part (trials; default: all)")
    p.add_argument("--quiet", action="store_true", help="one line per epoch, no progress bar")
    args = p.parse_args(argv)
    if args.size % 32 or args.size < 32:
        p.error("--size must be a multiple of 32 (the head pools the S/32 feature map)")
    if args.val + args.test >= 1:
        p.error(f"--val {args.val} + --test {args.test} leave nothing to train on; their sum must be < 1")
    if args.val == 0:
        p.error("--val must be > 0: the validation part picks the kept epoch")
    out = Path(os.path.realpath(args.out))  # a loop: no error
    if any(out.is_relative_to(folder) for folder in data_folders(args.data)):
        # in a class folder the next run trains on its curves.png; beside them it is a class
        # folder of an unknown name, and the folder made for it breaks every later run
        p.error(f"--out {args.out} is inside --data {args.data}: the run's files would be read "
                "as training data; choose a run folder outside the dataset")
    return args


def build_model(size: int, alpha: float, weights: str | None, seed: int):
    """The seed architecture on normalised [-1, 1] RGB input."""
    import keras
    from keras import layers

    base = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), alpha=alpha, include_top=False, weights=None
    )
    if weights:
        # A file of another width or format makes Keras warn once per layer, then raise:
        # keep the warnings back and give one line naming the file instead.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                base.load_weights(weights)
            except Exception as err:  # noqa: BLE001 - h5py OSError, Keras ValueError ...
                raise SystemExit(f"{weights}: cannot load as MobileNetV2 (alpha {alpha}, no top) "
                                 f"base weights ({reason(err)}); pass a matching --weights FILE "
                                 "or --alpha") from None
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    base.trainable = False
    inputs = keras.Input((size, size, 3), name="image")
    x = base(inputs, training=False)  # BatchNorm stays in inference mode, also when fine-tuning
    x = layers.AveragePooling2D(pool_size=(size // 32, size // 32), name="head_pool")(x)
    x = layers.Flatten(name="head_flatten")(x)
    # Seeded initialisers: the same seed gives the same head, whatever ran before in the process.
    glorot = keras.initializers.GlorotUniform
    x = layers.Dense(128, activation="relu", kernel_initializer=glorot(seed=seed),
                     name="head_dense")(x)
    x = layers.Dropout(0.5, seed=seed, name="head_dropout")(x)
    outputs = layers.Dense(2, activation="softmax", kernel_initializer=glorot(seed=seed + 1),
                           name="probs")(x)
    return keras.Model(inputs, outputs, name=f"maskd_mobilenetv2_{size}"), base


# --augment hard: how often each hard case is imitated (on top of everything "device" does).
HARD_P = {"yaw": 0.25, "occlude": 0.3, "blur": 0.25, "edge": 0.15, "hue": 0.5}
# Skin tones (RGB), light to dark: a hand in front of the face is the commonest occluder.
SKIN_RGB = np.array([[255, 219, 172], [224, 172, 138], [198, 134, 66], [141, 85, 36],
                     [94, 54, 33]], np.float32)


def yaw_squeeze(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A head turned aside (profile-ish): narrower, and shorter on the far side (perspective)."""
    s = img.shape[0]
    dx = (1 - rng.uniform(0.7, 0.95)) * s / 2  # horizontal squeeze, per side
    dy = (1 - rng.uniform(0.8, 0.97)) * s / 2  # far side shorter, per end
    src = np.float32([[0, 0], [s, 0], [s, s], [0, s]])
    dst = np.float32([[dx, dy], [s - dx, 0], [s - dx, s], [dx, s - dy]])  # left side far
    if rng.random() < 0.5:
        dst = np.float32([[dx, 0], [s - dx, dy], [s - dx, s - dy], [dx, s]])
    m = cv2.getPerspectiveTransform(src, dst)
    return cv2.warpPerspective(np.ascontiguousarray(img), m, (s, s), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_REFLECT_101)


def occlude(img: np.ndarray, rng: np.random.Generator, bare: bool = False) -> np.ndarray:
    """A hand or object in front of the face: a filled ellipse or rectangle of 8-30 % of the
    crop. Over the lower half (70 %) it is skin-toned, a hand: a coloured patch over the
    mouth would be a mask labelled no_mask. Over the upper half half of them are any colour.

    ``bare`` (a no_mask face): only the upper half is covered. A skin-toned patch over a bare
    mouth, labelled no_mask, taught the model that a pink or beige mask is skin."""
    s = img.shape[0]
    out = np.ascontiguousarray(img).copy()
    area = rng.uniform(0.08, 0.3) * s * s
    aspect = rng.uniform(0.6, 1.8)  # width / height
    w, h = np.sqrt(area * aspect), np.sqrt(area / aspect)
    cx = rng.uniform(0.25, 0.75) * s
    lower = rng.random() < 0.7 and not bare
    cy = (rng.uniform(0.6, 0.85) if lower else rng.uniform(0.15, 0.4)) * s
    if lower or rng.random() < 0.5:
        colour = SKIN_RGB[rng.integers(len(SKIN_RGB))] * rng.uniform(0.8, 1.1, 3)
    else:
        colour = rng.uniform(0, 255, 3)
    colour = tuple(float(c) for c in np.clip(colour, 0, 255))
    if rng.random() < 0.6:  # an ellipse of the same area: axes scaled by 2/sqrt(pi)
        k = 1 / np.sqrt(np.pi)
        cv2.ellipse(out, (round(cx), round(cy)), (round(w * k), round(h * k)),
                    rng.uniform(0, 180), 0, 360, colour, -1, cv2.LINE_AA)
    else:
        cv2.rectangle(out, (round(cx - w / 2), round(cy - h / 2)),
                      (round(cx + w / 2), round(cy + h / 2)), colour, -1)
    return out


def edge_cut(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A face at the frame edge: 20-50 % of the crop on one side becomes the last row/column
    repeated, the way crop_face pads past the image border (cv2.BORDER_REPLICATE)."""
    s = img.shape[0]
    k = int(round(rng.uniform(0.2, 0.5) * s))
    out = np.ascontiguousarray(img).copy()
    side = int(rng.integers(4))
    if side == 0:
        out[:, :k] = out[:, k : k + 1]
    elif side == 1:
        out[:, s - k :] = out[:, s - k - 1 : s - k]
    elif side == 2:
        out[:k] = out[k : k + 1]
    else:
        out[s - k :] = out[s - k - 1 : s - k]
    return out


def motion_blur(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Someone walking past a slow shutter: a line kernel of 3-11 px at a random angle."""
    k = int(rng.choice([3, 5, 7, 9, 11]))
    kernel = np.zeros((k, k), np.float32)
    kernel[k // 2, :] = 1
    rot = cv2.getRotationMatrix2D(((k - 1) / 2, (k - 1) / 2), rng.uniform(0, 180), 1.0)
    kernel = cv2.warpAffine(kernel, rot, (k, k))
    return cv2.filter2D(np.ascontiguousarray(img), -1, kernel / kernel.sum(),
                        borderType=cv2.BORDER_REFLECT_101)


def hue_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Tinted light and masks of any colour: hue turned by up to +-40 deg, saturation x0.6-1.6.

    A pink-lit bare face and a pink mask both break the cue "skin-coloured lower face = no
    mask"; turning every colour a little makes the shape (mouth, nostrils, a mask's edge) the
    surer cue (docs/eval_video.md, round twenty-eight).
    """
    hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-20, 20)) % 180  # OpenCV hue: 0..180 for 8-bit
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.6, 1.6), 0, 255)
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)


def augment_image(img: np.ndarray, rng: np.random.Generator, kind: str,
                  label: int | None = None) -> np.ndarray:
    """One random variant of an (S, S, 3) uint8 face image, in OpenCV (fast on a busy CPU).

    seed: flip, rotation +-15 deg, zoom 0.85..1.2, shift +-8 % in ONE affine warp.
    device: also (60 %) a small face blown up from 12..0.75*S px, brightness/contrast/white balance,
    grey (IR-like) frames and JPEG compression, which is what the Pi camera path adds.
    hard: also the faces the scene photos show the device gets wrong (HARD_P): profiles
    (yaw_squeeze), hands and objects in front (occlude), motion blur, faces cut off at the
    frame edge (edge_cut), and smaller faces (70 % shrunk, from 10 px). The "device" sequence
    of random draws is unchanged, so old runs reproduce.
    colour: hard, then (HARD_P["hue"]) hue and saturation turned (hue_jitter); "hard" draws
    nothing more, so its runs reproduce too.
    """
    if kind == "none":
        return img
    s = img.shape[0]
    if rng.random() < 0.5:
        img = img[:, ::-1]
    m = cv2.getRotationMatrix2D((s / 2, s / 2), rng.uniform(-15, 15), rng.uniform(0.85, 1.2))
    m[:, 2] += rng.uniform(-0.08, 0.08, 2) * s
    img = cv2.warpAffine(np.ascontiguousarray(img), m, (s, s), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)
    if kind not in ("device", "hard", "colour"):
        return img
    hard = kind in ("hard", "colour")
    if hard and rng.random() < HARD_P["yaw"]:
        img = yaw_squeeze(img, rng)
    if hard and rng.random() < HARD_P["occlude"]:
        img = occlude(img, rng, bare=label == dataset.LABELS.index("no_mask"))
    if rng.random() < (0.7 if hard else 0.6):
        side = int(round(np.exp(rng.uniform(np.log(10 if hard else 12), np.log(0.75 * s)))))
        small = cv2.resize(img, (side, side), interpolation=cv2.INTER_AREA)
        img = cv2.resize(small, (s, s), interpolation=cv2.INTER_LINEAR)
    if hard and rng.random() < HARD_P["blur"]:
        img = motion_blur(img, rng)
    if hard and rng.random() < HARD_P["edge"]:
        img = edge_cut(img, rng)
    x = img.astype(np.float32)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.7, 1.3) + mean + rng.uniform(-40, 40)
    x *= rng.uniform(0.9, 1.1, 3).astype(np.float32)  # white balance
    img = np.clip(x, 0, 255).astype(np.uint8)
    if kind == "colour" and rng.random() < HARD_P["hue"]:
        img = hue_jitter(img, rng)
    if rng.random() < 0.1:
        img = np.repeat(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)
    if rng.random() < 0.5:
        ok, buf = cv2.imencode(".jpg", img[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 96))])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return img


def make_batches(x: np.ndarray, y: np.ndarray, batch: int, kind: str, seed: int,
                 weights: np.ndarray | None = None, bare_mouth_rule: bool = True):
    """A keras PyDataset of augmented, normalised batches; reshuffled and re-drawn each epoch.

    With ``weights`` each batch also carries the examples' loss weights. ``bare_mouth_rule``
    False: the augmentation is not told the label (--occlude-bare-mouths, m128t's draws).
    """
    import keras

    from maskd.classifier import normalize

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0
            self.order = np.random.default_rng([seed, 0]).permutation(len(x))

        def __len__(self):
            return (len(x) + batch - 1) // batch

        def __getitem__(self, i):
            idx = self.order[i * batch : (i + 1) * batch]
            rng = np.random.default_rng([seed, self.epoch, i])
            imgs = np.stack([augment_image(x[j], rng, kind, int(y[j]) if bare_mouth_rule else None)
                             for j in idx])
            if weights is None:
                return normalize(imgs), y[idx]
            return normalize(imgs), y[idx], weights[idx]

        def on_epoch_end(self):
            self.epoch += 1
            self.order = np.random.default_rng([seed, self.epoch]).permutation(len(x))

    return Batches()


def base_features(feat_model, images: np.ndarray, args: argparse.Namespace,
                  labels: np.ndarray | None = None) -> np.ndarray:
    """(views, N, D) features of ``args.views`` augmented views of every training image.

    ``labels`` let the augmentation keep occluders off bare mouths, unless
    ``args.occlude_bare_mouths`` (m128t's recipe: the same draws, the label not used)."""
    from maskd.classifier import normalize

    if getattr(args, "occlude_bare_mouths", False):
        labels = None

    chunks = []
    t0 = time.time()
    total = args.views * len(images)
    for v in range(args.views):
        rng = np.random.default_rng([args.seed, 1000 + v])
        view = []
        for i in range(0, len(images), args.batch):
            lab = labels[i : i + args.batch] if labels is not None else [None] * len(images)
            imgs = np.stack([augment_image(im, rng, args.augment, None if y is None else int(y))
                             for im, y in zip(images[i : i + args.batch], lab, strict=False)])
            view.append(np.asarray(feat_model.predict_on_batch(normalize(imgs))))
            done = v * len(images) + i + len(imgs)
            if (i // args.batch) % 25 == 0 or done == total:
                eta = (time.time() - t0) / done * (total - done)
                print(f"      base features: view {v + 1}/{args.views}, {done}/{total} images, "
                      f"eta {eta / 60:.1f} min", flush=True)
        chunks.append(np.concatenate(view))
    return np.stack(chunks)


def head_model(model):
    """The head alone on base features, sharing its layers (and weights) with ``model``."""
    import keras

    feat = keras.Input(model.get_layer("head_flatten").output.shape[1:], name="features")
    x = model.get_layer("head_dense")(feat)
    x = model.get_layer("head_dropout")(x)
    return keras.Model(feat, model.get_layer("probs")(x), name="head")


def feature_batches(feats: np.ndarray, y: np.ndarray, batch: int, seed: int,
                    weights: np.ndarray | None = None):
    """Each epoch: every image once, through a randomly chosen one of its augmented views."""
    import keras

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0

        def __len__(self):
            return (feats.shape[1] + batch - 1) // batch

        def _draw(self):
            rng = np.random.default_rng([seed, 2000 + self.epoch])
            return rng.permutation(feats.shape[1]), rng.integers(0, feats.shape[0], feats.shape[1])

        def __getitem__(self, i):
            order, views = self._draw()
            idx = order[i * batch : (i + 1) * batch]
            if weights is None:
                return feats[views[idx], idx], y[idx]
            return feats[views[idx], idx], y[idx], weights[idx]

        def on_epoch_end(self):
            self.epoch += 1

    return Batches()


def example_weights(labels: np.ndarray, source: np.ndarray,
                    class_weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Loss weight per example: its source weight (1 for a paper image, --scene-weight for a
    scene crop) times its class's weight; returns (weights, class_weight).

    The class weights (unless given: the training set's, reused for validation) make both
    classes weigh the same in total, so the ~80 % masked scene crops do not swamp no_mask,
    and are scaled so the training weights average 1 (loss values stay comparable).
    """
    source = np.asarray(source, np.float64)
    if class_weight is None:
        totals = np.bincount(labels, weights=source, minlength=len(dataset.LABELS))
        class_weight = totals.sum() / (len(totals) * np.maximum(totals, 1e-9))
        class_weight /= np.mean(source * class_weight[labels])
    return (source * class_weight[labels]).astype(np.float32), class_weight


def scene_data(args: argparse.Namespace):
    """Scene crops of the --scenes train part as (scene-train, scene-val), split by photo."""
    from tools import scene_crops

    crops = scene_crops.scene_crops(args.scenes, "train", args.size,
                                    score_threshold=args.scene_score, limit=args.limit,
                                    progress=True)
    return crops, *scene_crops.split_by_photo(crops)


def join_scenes(data: dict, scenes: dict, scene_weight: float
                ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Append scene-train crops to ``data["train"]`` and scene-val crops to ``data["val"]`` (the
    epoch-picking set); returns (train weights, val weights, summary for record.json).

    Both get the same weighting (source x class weight, ``example_weights``), so the val_loss
    that picks the epoch measures the objective training minimises, on unseen photos.
    """
    source = {}
    for part in ("train", "val"):
        x, y = data[part]
        sc = scenes[part]
        data[part] = (np.concatenate([x, sc.images]), np.concatenate([y, sc.labels]))
        source[part] = np.concatenate([np.ones(len(y)), np.full(len(sc.labels), scene_weight)])
    w_train, class_weight = example_weights(data["train"][1], source["train"])
    w_val, _ = example_weights(data["val"][1], source["val"], class_weight)
    n_scene = len(scenes["train"].labels)
    share = float(w_train[len(w_train) - n_scene:].sum() / w_train.sum()) if n_scene else 0.0
    return w_train, w_val, {
        "photos": {part: len(sc.photos) for part, sc in scenes.items()},
        "counts": {part: sc.counts() for part, sc in scenes.items()},
        "scene_weight": scene_weight,
        "class_weight": {lab: round(float(w), 4)
                         for lab, w in zip(dataset.LABELS, class_weight, strict=True)},
        "scene_share_of_training_weight": round(share, 4),
    }


class EpochLog:
    """Per-epoch CSV row + a readable progress line (works under nohup, unlike a bar)."""

    def __init__(self, path: Path, total_epochs: int, quiet: bool):
        import keras

        self.rows: list[dict] = []
        self.path = path
        self.total = total_epochs
        self.seconds: list[float] = []
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
        self.seconds.append(seconds)
        recent = self.seconds[-3:]  # fine-tuning epochs are slower than head epochs
        eta = sum(recent) / len(recent) * (self.total - len(self.rows))
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
    save_figure(fig, path, dpi=110)
    plt.close(fig)


RUN_FILES = ("split.json", "model.keras", "record.json", "history.csv", "best.weights.h5")


def data_folders(data: Path) -> list[str]:
    """--data and each of its class folders as they really are: a class folder may be a link
    to another disk's (data/with_mask -> /mnt/faces/masked), and a run folder in its target
    was trained into and read as masked faces by the next run (was: only --data was looked at)."""
    folders = [os.path.realpath(data)]
    try:
        folders += [os.path.realpath(sub) for sub in data.iterdir()
                    if not sub.name.startswith(".") and sub.is_dir()]
    except OSError:  # not there, or not a folder: make_split says so
        pass
    return folders


def run_folder(out: Path) -> Path:
    """Create ``out``, refusing one that holds a run already: a new run overwrites split.json
    and the weights file by file, so a failed or stopped one would leave a mix of two runs."""
    held = [f for f in RUN_FILES if (out / f).exists()]
    if held:
        raise SystemExit(f"{out}: holds a run already ({', '.join(held)}); choose a new --out "
                         "folder (or remove that run)")
    return out_dir(out)


def checked_model(args: argparse.Namespace):
    """The model with its base weights loaded and --fine-tune-from found in the base, built
    BEFORE anything is written: a bad --weights or layer name used to show only after the split
    was saved (and the layer only after the head phase had written its weights)."""
    import keras

    weights = None if args.weights.lower() == "none" else args.weights
    if weights and not Path(weights).is_file():
        raise SystemExit(f"base weights not found: {weights} (pass --weights FILE or --weights none)")
    keras.utils.set_random_seed(args.seed)
    model, base = build_model(args.size, args.alpha, weights, args.seed)
    if args.fine_tune_epochs > 0 and args.fine_tune_from not in [ly.name for ly in base.layers]:
        raise SystemExit(f"--fine-tune-from {args.fine_tune_from}: no such layer in the "
                         f"MobileNetV2 base (e.g. block_13_expand, block_16_project)")
    return model, base


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = run_folder(args.out)
    try:
        return run(args, out, argv)
    except OSError as err:
        if err.errno not in WRITE_ERRORS:
            raise
        # a checkpoint Keras writes each epoch (h5py) on a full disk: a 40-line traceback
        raise SystemExit(f"{out}: training stopped, cannot write its files there "
                         f"({reason(err)})") from None


# What a full or failing disk raises under a checkpoint write (h5py keeps the errno).
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG)


def run(args: argparse.Namespace, out: Path, argv: list[str] | None) -> int:
    """The run in ``out`` (created by ``run_folder``): split, train, keep, score, record."""
    t_start = time.time()
    model, base = checked_model(args)

    print(f"[1/5] scanning {args.data} (dedupe exact duplicates, then stratified split)", flush=True)
    split = dataset.make_split(args.data, args.val, args.test, args.seed, args.limit)
    print(
        f"      {split['files_found']} files, {len(split['unreadable'])} unreadable, "
        f"{len(split['duplicates_dropped'])} duplicates dropped; counts {split['counts']}",
        flush=True,
    )
    scenes = None
    if args.scenes is not None:
        print(f"[1b/5] cutting face crops from the train part of {args.scenes} "
              f"(the select part is never read)", flush=True)
        crops, sc_train, sc_val = scene_data(args)
        scenes = {"train": sc_train, "val": sc_val}
        split["scenes"] = {
            "settings": crops.settings, "fingerprint": crops.fingerprint(),
            "skipped": crops.skipped,
            "skipped_photos": crops.skipped_photos,
            "counts": {part: sc.counts() for part, sc in scenes.items()},
            "photos": {part: sc.photos for part, sc in scenes.items()},
        }
        print(f"      {len(crops.photos)} photos, {len(crops.labels)} crops; scene-train "
              f"{len(sc_train.photos)} photos {sc_train.counts()}, scene-val "
              f"{len(sc_val.photos)} photos {sc_val.counts()}; left out {crops.skipped}",
              flush=True)
        del crops
    dataset.save_split(split, out / "split.json")

    import keras
    import tensorflow as tf

    from maskd.classifier import DEFAULT_OFFSET, DEFAULT_SCALE, normalize
    from tools.evaluate import binary_metrics

    print(f"[2/5] loading images at {args.size}x{args.size}", flush=True)
    data = {}
    for part in ("train", "val", "test"):
        paths, labels = dataset.subset_files(split, part)
        data[part] = (dataset.load_resized(paths, args.size, progress=True), labels)

    n_val = len(data["val"][1])
    w_train = w_pick = scene_summary = None
    if scenes is not None:
        w_train, w_pick, scene_summary = join_scenes(data, scenes, args.scene_weight)
        scene_summary.update(root=split["scenes"]["settings"]["root"], split_file="split.json",
                             fingerprint=split["scenes"]["fingerprint"],
                             skipped=split["scenes"]["skipped"])
        print(f"      with scene crops: train {len(data['train'][1])}, val {len(data['val'][1])}; "
              f"class weights {scene_summary['class_weight']}, scene share of the training "
              f"weight {scene_summary['scene_share_of_training_weight']}", flush=True)

    ds_train = make_batches(*data["train"], args.batch, args.augment, args.seed, w_train,
                            bare_mouth_rule=not args.occlude_bare_mouths)
    # Validation/test inputs: exactly the runtime's preprocess() (same resize, same formula).
    # "pick" (paper val + scene-val crops) picks the epoch; its parts are scored separately.
    pick = normalize(data["val"][0])
    plain = {"val": pick[:n_val], "test": normalize(data["test"][0])}
    truth = {"val": data["val"][1][:n_val], "test": data["test"][1]}
    if scenes is not None:
        plain["scene_val"], truth["scene_val"] = pick[n_val:], data["val"][1][n_val:]
    ds_val = (pick, data["val"][1]) if w_pick is None else (pick, data["val"][1], w_pick)

    total_epochs = args.epochs + args.fine_tune_epochs
    log = EpochLog(out / "history.csv", total_epochs, args.quiet)
    best = keras.callbacks.ModelCheckpoint(
        str(out / "best.weights.h5"), monitor="val_loss", save_best_only=True, save_weights_only=True
    )
    verbose = 0 if args.quiet or not sys.stdout.isatty() else 1

    print(f"[3/5] training the head, base frozen: {args.epochs} epochs", flush=True)
    compile_args = {"loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}
    if args.views > 0:
        # The frozen base is a fixed function: run it once per augmented view, then train
        # the head on those features (20x cheaper than pushing every epoch through it).
        feat_model = keras.Model(model.input, model.get_layer("head_flatten").output)
        feats = base_features(feat_model, data["train"][0], args, data["train"][1])
        val_feats = np.asarray(feat_model.predict(pick, batch_size=args.batch, verbose=0))
        head = head_model(model)
        head.compile(optimizer=keras.optimizers.Adam(args.lr), **compile_args)
        best_head = keras.callbacks.ModelCheckpoint(
            str(out / "best_head.weights.h5"), monitor="val_loss", save_best_only=True,
            save_weights_only=True)
        head.fit(feature_batches(feats, data["train"][1], args.batch, args.seed, w_train),
                 validation_data=(val_feats, *ds_val[1:]), epochs=args.epochs,
                 validation_batch_size=args.batch, callbacks=[log.callback, best_head],
                 verbose=verbose)
        head.load_weights(str(out / "best_head.weights.h5"))  # shared layers: lands in model
        model.save_weights(str(out / "best.weights.h5"))
    else:
        model.compile(optimizer=keras.optimizers.Adam(args.lr), **compile_args)
        model.fit(ds_train, validation_data=ds_val, epochs=args.epochs,
                  validation_batch_size=args.batch, callbacks=[log.callback, best],
                  verbose=verbose)

    fine_tune_start = None
    if args.fine_tune_epochs > 0:
        start = [layer.name for layer in base.layers].index(args.fine_tune_from)
        base.trainable = True
        for layer in base.layers[:start]:
            layer.trainable = False
        for layer in base.layers[start:]:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False  # keep ImageNet statistics; small data would wreck them
        fine_tune_start = args.epochs + 1
        model.load_weights(str(out / "best.weights.h5"))
        save_keras(model, out / "head_only.keras")  # the frozen-base candidate, kept for comparison
        print(f"[3b/5] fine-tuning base from {args.fine_tune_from}: {args.fine_tune_epochs} epochs",
              flush=True)
        model.compile(optimizer=keras.optimizers.Adam(args.fine_tune_lr), **compile_args)
        # Overwrite the kept weights only when fine-tuning beats the head-only phase.
        best = keras.callbacks.ModelCheckpoint(
            str(out / "best.weights.h5"), monitor="val_loss", save_best_only=True,
            save_weights_only=True, initial_value_threshold=min(r["val_loss"] for r in log.rows))
        model.fit(ds_train, validation_data=ds_val, initial_epoch=args.epochs, epochs=total_epochs,
                  validation_batch_size=args.batch, callbacks=[log.callback, best], verbose=verbose)

    # Keep the epoch with the lowest validation loss (the test split plays no part in this).
    best_epoch = min(log.rows, key=lambda r: r["val_loss"])["epoch"]
    model.load_weights(str(out / "best.weights.h5"))
    base.trainable = False
    save_keras(model, out / "model.keras")
    plot_curves(log.rows, out / "curves.png", fine_tune_start)

    print(f"[4/5] scoring the kept model on {', '.join(plain)}", flush=True)
    metrics = {}
    for part in [k for k in plain if len(truth[k])]:  # --test 0 leaves no test part
        probs = model.predict(plain[part], batch_size=args.batch, verbose=0)[:, dataset.LABELS.index("no_mask")]
        metrics[part] = binary_metrics(truth[part], probs)
        m = metrics[part]
        print(f"      {part}: accuracy {m['accuracy']:.4f} precision {m['precision']:.4f} "
              f"recall {m['recall']:.4f} f1 {m['f1']:.4f}", flush=True)

    record = {
        "model": "model.keras",
        # the command that made it: main(argv) from Python records its argv, not the caller's
        "argv": sys.argv if argv is None else [sys.argv[0], *argv],
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": {
            "root": split["root"],
            "fingerprint": split["fingerprint"],
            "files_found": split["files_found"],
            "unreadable": len(split["unreadable"]),
            "duplicates_dropped": len(split["duplicates_dropped"]),
            "split_file": "split.json",
            "counts": split["counts"],
            "scenes": scene_summary,
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
    write_json(out / "record.json", record)
    print(f"[5/5] done in {record['wall_time_s'] / 60:.1f} min; best epoch {best_epoch}; "
          f"wrote {out}/model.keras, history.csv, curves.png, record.json", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
