#!/usr/bin/env python3
"""Face crops cut from scenes-dev photos the way the device cuts them, for training.

The paper's training set is web close-ups; the device sees street-like frames through YuNet
and ``crop_face``. So each annotated photo is first made into a camera frame: scaled to fit
the device's 640x480 frame (``maskd.config.SourceConfig``), optionally zoomed (people walking
up to the camera: faces grow), and round-tripped through JPEG (the camera's MJPG). Then the
device's detector runs on it with the device's settings (at zoom z the detector input is z
times larger, so every face gets the pixels the device would give it in a 640x480 view), and
every annotated face of at least ``min_px`` (shorter side, in that frame) gives one crop cut
from its annotated box and, when a detection matches it (IoU >= 0.3, ``eval_scenes.match``),
one cut from the detected box: what the device classifies, and faces it needs a lower score
cut to find. with_mask -> mask, without_mask -> no_mask; mask_weared_incorrect is no class
and no violation (as in evaluate.py): left out and counted.

Only the ``train`` part of scenes-dev (``eval_scenes.photo_part``) is for training; the
``select`` part chooses models and must never be trained on. ``scene_val_photo`` splits the
train part again, by photo, for picking the epoch.

    python tools/scene_crops.py                                # counts, train part
    python tools/scene_crops.py --part all --sheet /tmp/crops.png
    python tools/scene_crops.py --score-threshold 0.5 --zooms 1,2,3
"""

from __future__ import annotations

import argparse
import hashlib
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from maskd.classifier import resize_square
from maskd.config import ClassifierConfig, DetectorConfig, SourceConfig
from maskd.detectors import make_detector
from maskd.geometry import crop_face, shorter_sides
from tools import dataset
from tools.eval_scenes import (
    DEFAULT_SCENES,
    LeftOut,
    Scene,
    add_scene_options,
    load_scenes,
    match,
    photo_part,
    report_skipped,
    stored_pixels,
    variant_config,
)
from tools.inputs import (
    comma_list,
    image_out,
    non_negative_float,
    positive_float,
    positive_int,
    probability,
    write_image,
)

FRAME = (SourceConfig().width, SourceConfig().height)  # what the device's camera delivers
ZOOMS = (1.0, 2.0)  # 1: the photo as the whole frame; 2: the same people two times closer
MIN_FACE_PX = 16  # annotated shorter side in the frame; the device judges detected faces >= 20
IOU = 0.3  # as eval_scenes scores a detection
MJPG_QUALITY = 80  # a typical USB/Pi camera MJPG quality
VAL_PERCENT = 15  # of the train part's photos: the scene share of the epoch-picking set


@dataclass
class SceneCrops:
    """Face crops with, per crop, its label, photo, cut (detected/annotated box) and zoom."""

    images: np.ndarray  # (N, S, S, 3) RGB uint8, resized like the runtime resizes a crop
    labels: np.ndarray  # (N,) index into dataset.LABELS
    stems: list[str]
    kinds: list[str]  # "detected" or "annotated"
    zooms: np.ndarray  # (N,) float
    photos: list[str]  # every photo looked at, also those that gave no crop
    skipped: dict[str, int] = field(default_factory=dict)  # faces left out, by reason
    skipped_photos: list[str] = field(default_factory=list)  # photos left out, each with why
    settings: dict[str, Any] = field(default_factory=dict)  # how they were cut (JSON-ready)

    def subset(self, keep: np.ndarray) -> SceneCrops:
        """The crops where ``keep`` is True (photos: those that kept a crop)."""
        idx = np.flatnonzero(keep)
        keep_stems = {self.stems[i] for i in idx}
        return SceneCrops(self.images[idx], self.labels[idx], [self.stems[i] for i in idx],
                          [self.kinds[i] for i in idx], self.zooms[idx],
                          [p for p in self.photos if p in keep_stems], dict(self.skipped),
                          list(self.skipped_photos), dict(self.settings))

    def counts(self) -> dict[str, int]:
        return {lab: int(np.sum(self.labels == i)) for i, lab in enumerate(dataset.LABELS)}

    def fingerprint(self) -> str:
        """sha256 over every crop's photo, cut, zoom, label and pixels: names the data exactly."""
        h = hashlib.sha256()
        for i in range(len(self.labels)):
            h.update(os.fsencode(f"{self.stems[i]}\t{self.kinds[i]}\t{self.zooms[i]:g}\t"
                                 f"{self.labels[i]}\n"))  # a name's bytes, UTF-8 or not
            h.update(self.images[i].tobytes())
        return h.hexdigest()


def scene_val_photo(stem: str, percent: int = VAL_PERCENT) -> bool:
    """True for about ``percent`` % of photos (by name hash, salted so it is independent of
    ``photo_part``): a photo's faces are all on one side, so near-copies never straddle it."""
    h = int(hashlib.sha256(os.fsencode(f"scene-val/{stem}")).hexdigest()[:8], 16) % 100
    return h < percent


def camera_frame(photo_bgr: np.ndarray, zoom: float = 1.0, frame: tuple[int, int] = FRAME,
                 quality: int | None = MJPG_QUALITY) -> tuple[np.ndarray, float]:
    """The photo scaled to fit ``frame`` times ``zoom``, JPEG round-tripped; (image, scale)."""
    h, w = photo_bgr.shape[:2]
    scale = min(frame[0] / w, frame[1] / h) * zoom
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    image = cv2.resize(photo_bgr, size, interpolation=interp)
    if quality is not None:
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok:
            image = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    return image, scale


def cut_faces(frame_bgr: np.ndarray, boxes: np.ndarray, names: list[str], det_boxes: np.ndarray,
              det_scores: np.ndarray, margin: float, min_px: float = MIN_FACE_PX,
              iou: float = IOU) -> tuple[list[tuple[np.ndarray, int, str]], Counter]:
    """Crops of one frame's annotated faces: [(BGR crop, label, kind)] and faces left out.

    ``boxes``/``names``: annotations in frame pixels; ``det_boxes``/``det_scores``: the
    detector's faces. Each face >= ``min_px`` gives an "annotated" crop and, when a detection
    matches it, a "detected" crop (cut from the detector's box, as the device cuts it).
    """
    crops: list[tuple[np.ndarray, int, str]] = []
    skipped: Counter = Counter()
    matched = match(det_boxes, det_scores, boxes, iou)
    det_of = {int(g): d for d, g in enumerate(matched) if g >= 0}
    sides = shorter_sides(boxes)
    for g, name in enumerate(names):
        folder = dataset.FOLDER_LABELS.get(name)
        if folder is None:
            skipped[name] += 1
            continue
        if sides[g] < min_px:
            skipped["small"] += 1
            continue
        label = dataset.LABELS.index(folder)
        crops.append((crop_face(frame_bgr, tuple(boxes[g]), margin), label, "annotated"))
        d = det_of.get(g)
        if d is None:
            skipped["missed"] += 1  # still kept, from its annotated box
        else:
            crops.append((crop_face(frame_bgr, tuple(det_boxes[d]), margin), label, "detected"))
    return crops, skipped


def detector_config(zoom: float, score_threshold: float | None) -> Any:
    """The device's detector settings (DetectorConfig defaults, YuNet) for a frame zoomed
    ``zoom`` times: its input grows with the frame, so a face keeps the device's pixel count.

    The input size is named, so it is `run`'s live one (320x240): eval_scenes' "yunet" variant
    alone is `scan`'s still size (640x480), which silently changed the crops train.py --scenes
    and convert.py --calibration-scenes get (m128t's recorded command no longer gave its data)."""
    live = DetectorConfig()
    overrides: dict[str, Any] = {"upscale": zoom, "input_width": live.input_width,
                                 "input_height": live.input_height}
    if score_threshold is not None:
        overrides["score_threshold"] = score_threshold
    return variant_config("yunet", overrides)


def scene_crops(root: Path = DEFAULT_SCENES, part: str = "train", size: int = 224,
                zooms: tuple[float, ...] = ZOOMS, score_threshold: float | None = None,
                margin: float | None = None, min_px: float = MIN_FACE_PX,
                limit: int | None = None, progress: bool = False) -> SceneCrops:
    """Every crop of one part of the scene set (see the module docstring), resized to S x S.

    ``score_threshold`` None is the device's YuNet cut; lower finds more hard faces. ``limit``:
    only the first N photos of the part (trials). A photo that cannot be used (an unknown
    label, a box outside the photo, a broken file) is left out and named on stderr, as
    eval_scenes.py does: one bad annotation must not stop a training run (it was a traceback).
    """
    margin = ClassifierConfig().margin if margin is None else margin
    bad: list[str] = []
    try:
        scenes: list[Scene] = load_scenes(Path(root), limit, part, bad)
    except FileNotFoundError as err:  # no annotations, or no photo left
        raise SystemExit(f"scene_crops: {err}") from None
    report_skipped("scene_crops", bad)
    configs = {z: detector_config(z, score_threshold) for z in zooms}
    detectors = {z: make_detector(cfg) for z, cfg in configs.items()}
    images, labels, stems, kinds, zs = [], [], [], [], []
    skipped: Counter = Counter()
    for n, sc in enumerate(scenes):
        photo = stored_pixels(sc.image)
        if photo is None:
            raise RuntimeError(f"{sc.image}: unreadable image")
        stem = sc.image.stem
        for z in zooms:
            frame, scale = camera_frame(photo, z)
            faces = detectors[z].detect(frame)
            det_boxes = np.array([f.box for f in faces], np.float64).reshape(-1, 4)
            crops, why = cut_faces(frame, sc.boxes * scale, sc.labels, det_boxes,
                                   np.array([f.score for f in faces]), margin, min_px)
            for reason, k in why.items():
                if reason in ("small", "missed"):
                    skipped[f"{reason}@{z:g}x"] += k
                elif z == zooms[0]:  # not a class: counted once per face, not once per zoom
                    skipped[reason] += k
            for crop, label, kind in crops:
                images.append(resize_square(np.ascontiguousarray(crop[..., ::-1]), size))
                labels.append(label)
                stems.append(stem)
                kinds.append(kind)
                zs.append(z)
        if progress and ((n + 1) % 50 == 0 or n + 1 == len(scenes)):
            print(f"      scene photos: {n + 1}/{len(scenes)}, {len(labels)} crops", flush=True)
    out = np.empty((len(images), size, size, 3), np.uint8)
    for i, im in enumerate(images):
        out[i] = im
    settings = {"root": str(Path(root).resolve()), "part": part, "limit": limit, "size": size,
                "frame": list(FRAME), "zooms": list(zooms), "mjpg_quality": MJPG_QUALITY,
                "margin": margin, "min_face_px": min_px, "iou": IOU,
                "detector": {f"{z:g}x": c.model_dump(mode="json") for z, c in configs.items()}}
    return SceneCrops(out, np.array(labels, np.int64), stems, kinds, np.array(zs, np.float64),
                      [sc.image.stem for sc in scenes], dict(sorted(skipped.items())),
                      [why for why in bad if not isinstance(why, LeftOut)], settings)


def split_by_photo(crops: SceneCrops, percent: int = VAL_PERCENT
                   ) -> tuple[SceneCrops, SceneCrops]:
    """(scene-train, scene-val) of the crops, whole photos on one side (``scene_val_photo``)."""
    is_val = np.array([scene_val_photo(s, percent) for s in crops.stems], bool)
    train, val = crops.subset(~is_val), crops.subset(is_val)
    train.photos = [p for p in crops.photos if not scene_val_photo(p, percent)]
    val.photos = [p for p in crops.photos if scene_val_photo(p, percent)]
    return train, val


def breakdown(crops: SceneCrops) -> dict[str, dict[str, int]]:
    """Crop counts by class within each photo part, cut kind and zoom (for print and JSON)."""
    keys = [[f"part {photo_part(s)}" for s in crops.stems], [f"{k} box" for k in crops.kinds],
            [f"zoom {z:g}x" for z in crops.zooms]]
    out: dict[str, dict[str, int]] = {}
    for column in keys:
        for k in sorted(set(column)):
            out[k] = {lab: sum(c == k and crops.labels[i] == j for i, c in enumerate(column))
                      for j, lab in enumerate(dataset.LABELS)}
    return out


def contact_sheet(crops: SceneCrops, tile: int = 64, cols: int = 16, count: int = 256,
                  seed: int = 0) -> np.ndarray:
    """A BGR grid of a seeded sample of crops, framed green (mask) or red (no_mask)."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.permutation(len(crops.labels))[:count])
    rows = max(1, -(-len(idx) // cols))
    sheet = np.full((rows * tile, cols * tile, 3), 255, np.uint8)
    colours = {0: (0, 160, 0), 1: (0, 0, 220)}
    for k, i in enumerate(idx):
        im = cv2.resize(crops.images[i][..., ::-1], (tile - 4, tile - 4),
                        interpolation=cv2.INTER_AREA)
        im = cv2.copyMakeBorder(im, 2, 2, 2, 2, cv2.BORDER_CONSTANT,
                                value=colours[int(crops.labels[i])])
        r, c = divmod(k, cols)
        sheet[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = im
    return sheet


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scene_options(p, "train", "select: for looking only, never for training")
    p.add_argument("--size", type=positive_int, default=96, help="crop side S")
    p.add_argument("--zooms", type=comma_list(positive_float), default=ZOOMS,
                   help="frame zooms, e.g. 1,2")
    p.add_argument("--score-threshold", type=probability, default=None,
                   help="YuNet score cut in [0, 1] (default: the device's)")
    p.add_argument("--min-px", type=non_negative_float, default=MIN_FACE_PX,
                   help="keep faces whose annotated shorter side in the frame is this big")
    p.add_argument("--limit", type=positive_int, help="only the first N photos")
    p.add_argument("--sheet", type=Path, help="write a contact sheet PNG of a sample of crops")
    args = p.parse_args(argv)
    args.zooms = tuple(args.zooms)
    if args.sheet is not None:
        image_out(args.sheet)  # a .txt name or a folder that cannot be made fails now
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    crops = scene_crops(args.scenes, args.part, args.size, args.zooms, args.score_threshold,
                        min_px=args.min_px, limit=args.limit, progress=True)
    print(f"{len(crops.photos)} photos ({args.part}), {len(crops.labels)} crops {crops.counts()}")
    if not len(crops.labels):  # the table of nothing was a max() traceback
        raise SystemExit(f"scene_crops: no face crop left (faces left out or missed: "
                         f"{crops.skipped})")
    rows = breakdown(crops)
    if args.part != "select":
        train, val = split_by_photo(crops.subset(np.array(
            [photo_part(s) == "train" for s in crops.stems], bool)))
        rows["train part: scene-train"] = train.counts()
        rows["train part: scene-val"] = val.counts()
    width = max(len(k) for k in rows)
    print(f"{'':<{width}}  " + "  ".join(f"{lab:>7}" for lab in dataset.LABELS))
    for k, row in rows.items():
        print(f"{k:<{width}}  " + "  ".join(f"{row[lab]:>7}" for lab in dataset.LABELS))
    print(f"faces left out or missed: {crops.skipped}")
    if args.sheet:
        write_image(args.sheet, contact_sheet(crops))
        print(f"wrote {args.sheet}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
