#!/usr/bin/env python3
"""Score face detectors + the mask classifier on annotated scene photos (PASCAL VOC XML).

For each detector variant it reports face recall for annotated faces >= 24 px and < 24 px
(size = the shorter side of the annotated box), detection precision, and violation
precision / recall / F1 on faces >= 24 px and on all faces, plus time per image.

Matching: detections, best score first, each take the unmatched annotated box (any class) with
the highest IoU, if IoU >= 0.3. Then, with "no_mask" meaning the classifier's P(no_mask) >=
threshold (the device's label):
  * a without_mask box matched by a no_mask detection is a true positive; any other
    without_mask box (missed, or labelled mask) is a false negative;
  * a no_mask detection matched to a with_mask box, or to no box at all, is a false positive;
  * a no_mask detection matched to a mask_weared_incorrect box counts neither way.
A detection belongs to the size bin of the box it matched; an unmatched one to its own size.
Photos are detected as `maskd scan` detects them: at the detector's still-image input size
(``detector.still_input_width/height``, 640x480), unless a variant (``yunet-320``: `run`'s
live-video input) or ``-o`` names the input size; the variant ``config`` (``--config``) uses the
file's detector section as `maskd run` applies it. Faces are judged as the device judges them: the classifier config's defaults (threshold,
min_face_px: a detected face below it is not judged) unless told otherwise (``--min-face-px 1``
classifies every face); ``--config`` scores a maskd YAML config's detector and classifier
settings as the device applies them.

    python tools/eval_scenes.py                          # default variants, table
    python tools/eval_scenes.py --variants yunet-640,blazeface-full --json
    python tools/eval_scenes.py --variants yunet -o score_threshold=0.5 -o input_width=480
    python tools/eval_scenes.py --faces-only             # detectors only, no classifier needed
    python tools/eval_scenes.py --variants yunet-640 --thresholds 0.5,0.7,0.9   # no_mask cut sweep
    python tools/eval_scenes.py --config /etc/maskd/config.yaml   # exactly what a device labels
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import cv2
import numpy as np
from pydantic import TypeAdapter, ValidationError

from maskd.config import ClassifierConfig, DetectorConfig, still_detector
from maskd.detectors import (
    DetectorError,
    find_yunet_model,
    make_detector,
    missing_detector_file,
)
from maskd.geometry import box_iou, shorter_sides
from maskd.types import Face
from tools.benchlib.common import SHARED  # ../shared, or $MASKD_SHARED as the tests take it
from tools.inputs import (
    comma_list,
    non_negative_float,
    open_unit,
    positive_float,
    positive_int,
    probability,
    reason,
)

REPO = Path(__file__).resolve().parents[1]

DEFAULT_SCENES = SHARED / "data" / "scenes-dev"
SHARED_YUNET = SHARED / "models" / "face_detection_yunet_2026may.onnx"
SHARED_SSD = SHARED / "models" / "opencv_face_detector_uint8.pb"
CLASSES = ("with_mask", "without_mask", "mask_weared_incorrect")
SUBSETS = ("ge", "lt", "all")  # annotated face >= small_px, < small_px, any size

# name -> DetectorConfig fields; "model" None means "find it" (YuNet) or the shared SSD.
VARIANTS: dict[str, dict[str, Any]] = {
    "yunet": {"kind": "yunet"},
    "yunet-320": {"kind": "yunet", "input_width": 320, "input_height": 240},
    "yunet-640": {"kind": "yunet", "input_width": 640, "input_height": 480},
    "yunet-640-t2": {"kind": "yunet", "input_width": 640, "input_height": 480, "tiles": 2},
    "yunet-x3": {"kind": "yunet", "upscale": 3.0},
    "blazeface-full": {"kind": "blazeface", "variant": "full"},
    "blazeface-full-t2": {"kind": "blazeface", "variant": "full", "tiles": 2},
    "blazeface-short": {"kind": "blazeface", "variant": "short"},
    "opencv-ssd": {"kind": "ssd", "model": str(SHARED_SSD), "input_width": 300,
                   "input_height": 300},
}
DEFAULT_VARIANTS = ["yunet", "yunet-640", "yunet-640-t2", "blazeface-full",
                    "blazeface-full-t2", "opencv-ssd"]


@dataclass
class Scene:
    image: Path
    boxes: np.ndarray  # (N, 4) x0, y0, x1, y1
    labels: list[str]
    left_out: list[str] = field(default_factory=list)  # objects not read, each with why


class LeftOut(str):
    """A line of ``load_scenes``' skipped list about an object left out of a photo that is
    kept (a class maskd does not score), not about a photo: ``report_skipped`` counts apart."""


def _local(tag: object) -> str:
    """An XML tag without its namespace: ``{http://...}object`` is ``object`` (a namespaced
    VOC file read as photos without a face, every event a false alarm)."""
    return str(tag).rsplit("}", 1)[-1]


def _child_text(el: ET.Element, name: str) -> str | None:
    return next((c.text or "" for c in el if _local(c.tag) == name), None)


def stored_pixels(path: Path, grey: bool = False) -> np.ndarray | None:
    """A scene photo as BGR in the pixels its boxes are in (``load_scene``): as stored, an EXIF
    orientation tag not applied, whole however big; None when OpenCV cannot read it. Every tool
    that cuts or shows a scene's boxes reads the photo here. ``grey``: as a camera in infrared
    at night delivers it (three equal channels), to measure the night on the same faces.

    Read by Python, decoded from memory: ``cv2.imread`` given a file name that is not UTF-8 (a
    Latin-1 name, held as surrogates) crashed the process (SIGSEGV), a training run gone
    without a word."""
    try:
        data = np.fromfile(path, np.uint8)
    except (OSError, ValueError):
        return None
    bgr = (cv2.imdecode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION) if data.size
           else None)
    if grey and bgr is not None:
        bgr = cv2.cvtColor(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return bgr


def image_files(images_dir: Path) -> dict[str, list[Path]]:
    """The image files of a scene set's images/ folder by stem, sorted; listed once per set
    (each annotation's lookup listed the whole folder again)."""
    from maskd.images import is_image_name

    by_stem: dict[str, list[Path]] = {}
    try:
        for f in sorted(images_dir.iterdir()):
            if is_image_name(f) and f.is_file():
                by_stem.setdefault(f.stem, []).append(f)
    except OSError as err:
        raise FileNotFoundError(f"{images_dir}: cannot list it ({err.strerror or err})") from None
    return by_stem


def find_image(xml_path: Path, images_dir: Path, filename: str | None,
               photos: dict[str, list[Path]] | None = None) -> Path:
    """The photo of an annotation: the image file of the XML's exact stem (a glob of stem.*
    took p.2.jpg for p.xml, read [1] in photo[1] as a pattern and took a thumbnail x.bmp
    beside x.jpg); of several, the one the XML's <filename> names; raises FileNotFoundError.
    ``photos``: ``image_files(images_dir)``, when the caller has it already."""
    found = (image_files(images_dir) if photos is None else photos).get(xml_path.stem, [])
    if len(found) > 1:
        named = [f for f in found if f.name == (filename or "").strip()]
        if len(named) != 1:
            raise FileNotFoundError(f"{xml_path}: several images named {xml_path.stem}.* in "
                                    f"{images_dir} ({', '.join(f.name for f in found)}) and its "
                                    "<filename> names none of them")
        found = named
    if not found:
        raise FileNotFoundError(f"{xml_path}: no image {xml_path.stem}.* in {images_dir}")
    return found[0]


# How far a box may run past the photo's edge and still be read as it is. VOC coordinates are
# 1-based pixel indices, so a box that ends on the last column may read xmax = width + 1 (six
# scenes-dev boxes do, all by exactly 1 px); one further out is a broken annotation (xmax
# 99999 made the face crop a 50 GB allocation).
EDGE_SLACK_PX = 1


def load_scene(xml_path: Path, images_dir: Path,
               photos: dict[str, list[Path]] | None = None) -> Scene:
    """One annotation file; the image is found by the XML's stem (its <filename> may be stale).

    Boxes are in the photo's stored pixels, as VOC tools write them: an EXIF orientation tag is
    not applied (eval_video renders, and eval_scenes detects, the stored pixels too). Class
    names are read without case or surrounding space; an object of another class (``person``)
    is left out of the photo and named in ``left_out``, not scored either way. Anything that
    would stop an evaluation later (XML that does not parse, an object without a whole box, an
    empty box, one wholly outside the photo or running more than EDGE_SLACK_PX past its edge, a
    missing, truncated or undecodable photo) raises ValueError or FileNotFoundError here,
    naming the file.
    """
    from PIL import Image

    from maskd.images import ImageError, load_image_rgb

    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as err:
        raise ValueError(f"{xml_path}: not valid XML ({err})") from None
    boxes, labels, left_out = [], [], []
    for i, obj in enumerate(el for el in root.iter() if _local(el.tag) == "object"):
        name = (_child_text(obj, "name") or "").strip()
        if name.lower() not in CLASSES:
            left_out.append(f"{xml_path}: object {i} ({name!r}) left out: not one of "
                            f"{', '.join(CLASSES)}")
            continue
        name = name.lower()
        bb = next((c for c in obj if _local(c.tag) == "bndbox"), None)
        try:  # no <bndbox>: TypeError; a missing coordinate: TypeError; not a number: ValueError
            box = [float(_child_text(bb, k)) for k in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(f"{xml_path}: object {i} ({name}) has no whole <bndbox> "
                             "(xmin, ymin, xmax, ymax as numbers)") from None
        if not (box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f"{xml_path}: object {i} ({name}) has an empty box {box}")
        boxes.append(box)
        labels.append(name)
    image = find_image(xml_path, images_dir, _child_text(root, "filename"), photos)
    try:
        load_image_rgb(image)  # decodes whole (a truncated photo fails here, not in a run)
        with Image.open(image) as im:  # the stored size: a photo over 16 MP decodes reduced
            w, h = im.size
    except ImageError as err:
        raise ValueError(str(err)) from None
    except OSError as err:
        raise ValueError(f"{image}: {err}") from None
    for i, (box, name) in enumerate(zip(boxes, labels, strict=True)):
        if box[0] >= w or box[1] >= h or box[2] <= 0 or box[3] <= 0:
            raise ValueError(f"{xml_path}: object {i} ({name}) box {box} lies outside the "
                             f"{w}x{h} photo")
        if (box[0] < -EDGE_SLACK_PX or box[1] < -EDGE_SLACK_PX
                or box[2] > w + EDGE_SLACK_PX or box[3] > h + EDGE_SLACK_PX):
            raise ValueError(f"{xml_path}: object {i} ({name}) box {box} runs past the edge "
                             f"of the {w}x{h} photo (more than {EDGE_SLACK_PX} px)")
    return Scene(image, np.array(boxes, np.float64).reshape(-1, 4), labels, left_out)


# scenes-dev is split by photo into a training part and a selection part: no photo is in both,
# and models and defaults are chosen on the selection part only. The part follows from the
# photo's name alone (a hash), so it never changes when photos are added or removed.
PARTS = ("all", "train", "select")
SELECT_PERCENT = 40


def add_scene_options(p: Any, part: str = "all",
                      why: str = "models and defaults are chosen on 'select'") -> None:
    """--scenes and --part, one way for every tool that reads the scene set."""
    p.add_argument("--scenes", type=Path, default=DEFAULT_SCENES,
                   help="folder with images/ and annotations/ (default ../shared/data/scenes-dev)")
    p.add_argument("--part", choices=PARTS, default=part,
                   help=f"photos of this part of the split by photo ({why})")


def photo_part(stem: str) -> str:
    """'select' for about SELECT_PERCENT % of photos, 'train' for the rest (by name hash)."""
    # the name's bytes: the same as UTF-8 for a UTF-8 name, and a Latin-1 one is no error
    h = int(hashlib.sha256(os.fsencode(stem)).hexdigest()[:8], 16) % 100
    return "select" if h < SELECT_PERCENT else "train"


def load_scenes(root: Path, limit: int | None = None, part: str = "all",
                skipped: list[str] | None = None) -> list[Scene]:
    """The annotated photos of ``root`` (sorted by name), optionally one part of the split.

    With a ``skipped`` list, a photo that cannot be used is left out and the reason appended
    (one broken file must not cost a long run); without one, it raises. A photo in images/
    without an annotation is such a photo too ("no annotation"): it was left out unseen.
    ``limit`` counts photos of either kind. Raises too when no photo is left.
    """
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    xmls = {x.stem: x for x in (root / "annotations").glob("*.xml")}
    if not xmls:
        what = ("no such folder" if not root.is_dir() else
                "no annotations folder in it" if not (root / "annotations").is_dir() else None)
        raise FileNotFoundError(f"{root}: {what} (a VOC scene set has images/ and annotations/)"
                                if what else f"{root}/annotations: no .xml files")
    images = root / "images"
    photos = image_files(images) if images.is_dir() else {}  # Thumbs.db: no photo
    bare = {st: fs[0] for st, fs in photos.items() if not st.startswith(".") and st not in xmls}
    stems = sorted(st for st in {*xmls, *bare} if part == "all" or photo_part(st) == part)[:limit]
    if skipped is not None:
        skipped.extend(f"{bare[st]}: no annotation (no {root / 'annotations' / st}.xml)"
                       for st in stems if st in bare)
    xml_list = [xmls[st] for st in stems if st in xmls]
    if not xml_list:
        raise FileNotFoundError(f"{root}/annotations: no .xml files"
                                + (f" of the {part} part" if part != "all" else ""))
    scenes = []
    reasons: list[str] = []
    for x in xml_list:
        try:
            scenes.append(load_scene(x, images, photos))
        except (OSError, ValueError) as err:
            if skipped is None:
                raise
            reasons.append(str(err))
            skipped.append(str(err))
        else:
            if skipped is not None:
                skipped.extend(LeftOut(line) for line in scenes[-1].left_out)
    if not scenes:  # the reasons too: the tool stops here, before it names what it skipped
        shown = "".join(f"\n  {why}" for why in reasons[:10])
        more = f"\n  ... and {len(reasons) - 10} more" if len(reasons) > 10 else ""
        raise FileNotFoundError(f"{root}: none of its {len(xml_list)} annotated photos can be "
                                f"used{':' if reasons else ''}{shown}{more}")
    return scenes


def report_skipped(tool: str, skipped: list[str]) -> None:
    """Name every photo (and object, ``LeftOut``) a tool left out, on stderr, so a smaller
    count is never silent."""
    photos = [why for why in skipped if not isinstance(why, LeftOut)]
    for why in skipped:
        print(f"{tool}: {'' if isinstance(why, LeftOut) else 'skipped '}{why}", file=sys.stderr)
    if photos:
        print(f"{tool}: {len(photos)} photo(s) skipped; the numbers below are without them",
              file=sys.stderr)


def match(det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray,
          iou_threshold: float) -> np.ndarray:
    """For each detection, the index of the annotated box it matched, or -1 (greedy, one-to-one)."""
    out = np.full(len(det_scores), -1, dtype=np.int64)
    if not len(det_scores) or not len(gt_boxes):
        return out
    iou = box_iou(det_boxes, gt_boxes)
    taken = np.zeros(len(gt_boxes), bool)
    for d in np.argsort(-np.asarray(det_scores), kind="stable"):
        cand = np.where(taken, -1.0, iou[d])
        g = int(np.argmax(cand))
        if cand[g] >= iou_threshold:
            out[d] = g
            taken[g] = True
    return out


def _zero() -> dict[str, int]:
    return {"gt": 0, "found": 0, "dets": 0, "dets_matched": 0, "tp": 0, "fp": 0, "fn": 0,
            "fp_masked": 0, "fp_unmatched": 0, "fn_missed": 0}


@dataclass
class Counts:
    """Per-subset counters; added up over images, turned into rates by ``metrics``."""

    by: dict[str, dict[str, int]] = field(default_factory=lambda: {s: _zero() for s in SUBSETS})

    def add(self, other: Counts) -> None:
        for s in SUBSETS:
            for k, v in other.by[s].items():
                self.by[s][k] += v


def score_image(gt_boxes: np.ndarray, gt_labels: list[str], det_boxes: np.ndarray,
                det_scores: np.ndarray, det_no_mask: list[bool], iou_threshold: float = 0.3,
                small_px: float = 24) -> Counts:
    """Counters for one image (see the module docstring for the rules)."""
    c = Counts()
    m = match(det_boxes, det_scores, gt_boxes, iou_threshold)
    gt_ge = shorter_sides(gt_boxes) >= small_px
    det_ge = shorter_sides(det_boxes) >= small_px

    def subsets(ge: bool) -> tuple[str, str]:
        return ("ge" if ge else "lt", "all")

    matched_by_gt = {int(g): d for d, g in enumerate(m) if g >= 0}
    for g, label in enumerate(gt_labels):
        d = matched_by_gt.get(g)
        for s in subsets(bool(gt_ge[g])):
            c.by[s]["gt"] += 1
            c.by[s]["found"] += int(d is not None)
            if label == "without_mask":
                c.by[s]["tp" if d is not None and det_no_mask[d] else "fn"] += 1
                c.by[s]["fn_missed"] += int(d is None)
    for d, g in enumerate(m):
        ge = bool(gt_ge[g]) if g >= 0 else bool(det_ge[d])
        for s in subsets(ge):
            c.by[s]["dets"] += 1
            c.by[s]["dets_matched"] += int(g >= 0)
            if det_no_mask[d] and (g < 0 or gt_labels[g] == "with_mask"):
                c.by[s]["fp"] += 1
                c.by[s]["fp_unmatched" if g < 0 else "fp_masked"] += 1
    return c


def rate(a: float, b: float) -> float | None:
    """a / b for a report (4 decimals); None when nothing defines it (b is 0). The formula is
    ``ratio``'s, which the bootstrap intervals use on arrays."""
    v = float(ratio(np.float64(a), np.float64(b)))
    return None if np.isnan(v) else round(v, 4)


def f1_rate(p: float | None, r: float | None) -> float | None:
    """F1 of two reported rates (``f1_of`` on scalars); None when either is undefined, 0 when
    both are 0."""
    if p is None or r is None:
        return None
    return round(float(f1_of(np.float64(p), np.float64(r))), 4)


def metrics(c: Counts) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for s in SUBSETS:
        k = c.by[s]
        p = rate(k["tp"], k["tp"] + k["fp"])
        r = rate(k["tp"], k["tp"] + k["fn"])
        f1 = f1_rate(p, r)
        out[s] = {**k, "face_recall": rate(k["found"], k["gt"]),
                  "face_precision": rate(k["dets_matched"], k["dets"]),
                  "violation_precision": p, "violation_recall": r, "violation_f1": f1}
    return out


# How far a rate could move on another set of the same size and kind: the central interval of a
# percentile bootstrap over the units the set is made of (photos here, clips in eval_video;
# faces of one photo are not independent, so whole photos are drawn). Seeded: reproducible.
INTERVAL_LEVEL = 0.9
INTERVAL_DRAWS = 2000


def ratio(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b elementwise, nan where b is 0 (a rate nothing defines)."""
    return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def f1_of(p: np.ndarray, r: np.ndarray) -> np.ndarray:
    """F1 of precision and recall arrays; nan where either is undefined, 0 where both are 0."""
    return np.where(np.isnan(p) | np.isnan(r), np.nan,
                    np.where(p + r > 0, 2 * p * r / np.where(p + r > 0, p + r, 1), 0.0))


def bootstrap_interval(counts: np.ndarray, rates: Callable[[np.ndarray], dict[str, np.ndarray]],
                       draws: int = INTERVAL_DRAWS, level: float = INTERVAL_LEVEL,
                       seed: int = 0) -> dict[str, list[float] | None]:
    """``counts`` (units, K) are per-unit counters; ``rates`` maps summed counters (K, draws)
    to named rate arrays. The units are drawn again with replacement ``draws`` times; each
    rate's central ``level`` interval, None where no draw defines it."""
    counts = np.asarray(counts, np.float64)
    if len(counts):
        idx = np.random.default_rng(seed).integers(0, len(counts), size=(draws, len(counts)))
        sums = np.stack([counts[row].sum(0) for row in idx], axis=1)
    else:
        sums = np.zeros((counts.shape[1], 1))
    tail = 100 * (1 - level) / 2
    out: dict[str, list[float] | None] = {}
    for name, v in rates(sums).items():
        v = v[~np.isnan(v)]
        out[name] = ([round(float(np.percentile(v, tail)), 4),
                      round(float(np.percentile(v, 100 - tail)), 4)] if len(v) else None)
    return out


def violation_interval(per_image: list[Counts], subset: str) -> dict[str, list[float] | None]:
    """Violation precision, recall and F1 of one subset, bootstrapped over photos."""
    m = np.array([[c.by[subset][k] for k in ("tp", "fp", "fn")] for c in per_image],
                 np.float64).reshape(-1, 3)

    def rates(s: np.ndarray) -> dict[str, np.ndarray]:
        tp, fp, fn = s
        p, r = ratio(tp, tp + fp), ratio(tp, tp + fn)
        return {"violation_precision": p, "violation_recall": r, "violation_f1": f1_of(p, r)}
    return bootstrap_interval(m, rates)


def render_interval(name: str, images: int, iv: dict[str, dict[str, list[float] | None]],
                    small_px: float) -> str:
    """One line per variant under the table: its violation F1 intervals."""
    def span(subset: str) -> str:
        b = iv[subset]["violation_f1"]
        return "-" if b is None else f"{b[0]:.3f}-{b[1]:.3f}"
    return (f"{name}: {100 * INTERVAL_LEVEL:.0f} % interval over another {images} photos like "
            f"these (bootstrap, {INTERVAL_DRAWS} draws): vF1>={small_px:g} {span('ge')}, "
            f"vF1 all {span('all')}")


def variant_config(name: str, overrides: dict[str, Any],
                   base: DetectorConfig | None = None) -> DetectorConfig:
    """A variant's DetectorConfig: config defaults < ``base`` (a --config file) < preset < -o.

    The variant ``config`` is the --config file's detector section itself.
    """
    base_fields = {} if base is None else base.model_dump(exclude_unset=True)
    if name == "config":
        fields = dict(base_fields)
    elif name in VARIANTS:
        keep = {k: v for k, v in base_fields.items() if k not in ("kind", "model", "variant")}
        fields = {**keep, **VARIANTS[name]}
    else:
        raise SystemExit(f"unknown variant {name!r}; known: config, {', '.join(VARIANTS)}")
    if fields.get("kind", "auto") in ("yunet", "auto") and not fields.get("model"):
        fields["model"] = find_yunet_model() or SHARED_YUNET
    fields.update(overrides)
    try:
        cfg = DetectorConfig(**fields)
    except ValidationError as err:  # a rule across fields (each -o value is checked alone first)
        raise SystemExit(f"variant {name}: " + "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'detector'}: {e['msg']}" for e in err.errors())
            ) from None
    # Photos are judged as `maskd scan` judges them: at the still-image input size, unless the
    # preset or -o names an input size itself. The variant ``config`` is the file's detector
    # section as the device's loop applies it.
    named = set(VARIANTS.get(name, {})) | set(overrides)
    if name == "config" or named & {"input_width", "input_height"}:
        return cfg
    return still_detector(cfg)


def missing_yunet(det: DetectorConfig) -> str | None:
    """`run`'s line for a YuNet model named in ``det`` that is not there, else None.

    Kind ``auto`` falls back to BlazeFace when its YuNet file is missing (as a Pi does, with a
    warning); these tools exist to score YuNet, so a named file that is missing must stop them
    instead of scoring another detector under the YuNet settings' name."""
    if det.kind not in ("auto", "yunet") or det.model is None:
        return None
    return missing_detector_file(det.model_copy(update={"kind": "yunet"}))


def evaluate(name: str, det_cfg: DetectorConfig, scenes: list[Scene], classifier: Any | None,
             cls_cfg: ClassifierConfig, iou: float, small_px: float,
             thresholds: list[float] | None = None, grey: bool = False) -> dict[str, Any]:
    """Run one detector (and the classifier) over every scene; totals and timings.

    The detections and P(no_mask) are computed once; ``thresholds`` re-score them at other
    no_mask cuts (``sweep`` in the result) without running the networks again.
    """
    from maskd.pipeline import judge_faces

    detector = make_detector(det_cfg)
    runs = []  # per image: boxes, detector scores, P(no_mask) (nan when not judged)
    det_s = cls_s = 0.0
    for sc in scenes:
        image = stored_pixels(sc.image, grey)
        if image is None:
            raise RuntimeError(f"{sc.image}: unreadable image")
        t0 = time.perf_counter()
        faces: list[Face] = detector.detect(image)
        t1 = time.perf_counter()
        p = np.full(len(faces), np.nan)
        if classifier is not None and faces:
            verdicts = judge_faces(image, faces, classifier, cls_cfg)
            p = np.array([np.nan if v.no_mask is None else v.no_mask for v in verdicts])
        cls_s += time.perf_counter() - t1
        det_s += t1 - t0
        runs.append((np.array([f.box for f in faces], np.float64).reshape(-1, 4),
                     np.array([f.score for f in faces]), p))

    def per_image(threshold: float) -> list[Counts]:
        return [score_image(sc.boxes, sc.labels, boxes, scores,
                            [bool(v >= threshold) for v in p],  # nan (not judged): never no_mask
                            iou, small_px)
                for sc, (boxes, scores, p) in zip(scenes, runs, strict=True)]

    def totals(images: list[Counts]) -> dict[str, Any]:
        total = Counts()
        for c in images:
            total.add(c)
        return metrics(total)

    images = per_image(cls_cfg.threshold)

    n = max(1, len(scenes))
    out = {"name": name, "detector": detector.name, "config": det_cfg.model_dump(mode="json"),
           "images": len(scenes), "faces_detected": int(sum(len(r[1]) for r in runs)),
           "ms_detect": round(1000 * det_s / n, 2),
           "ms_classify": round(1000 * cls_s / n, 2) if classifier is not None else None,
           "threshold": cls_cfg.threshold, "subsets": totals(images)}
    if classifier is not None:
        out["intervals"] = {"level": INTERVAL_LEVEL, "draws": INTERVAL_DRAWS,
                            **{s: violation_interval(images, s) for s in ("ge", "all")}}
    if classifier is not None and thresholds:
        out["sweep"] = {f"{t:g}": {s: {k: v for k, v in m.items()
                                       if k.startswith(("violation", "tp", "fp", "fn"))}
                                   for s, m in totals(per_image(t)).items() if s != "lt"}
                        for t in thresholds}
    return out


def render_sweep(results: list[dict[str, Any]], small_px: float) -> str:
    px = f"{small_px:g}"
    lines = [f"{'variant':<18} {'P(no_mask)>=':>12}  vP>={px}  vR>={px}  vF1>={px}  vP all  vR all  vF1 all"]
    for r in results:
        for t, m in r.get("sweep", {}).items():
            ge, al = m["ge"], m["all"]
            lines.append(f"{r['name']:<18} {t:>12}  {_f(ge['violation_precision'])}   "
                         f"{_f(ge['violation_recall'])}   {_f(ge['violation_f1'])}    "
                         f"{_f(al['violation_precision'])}   {_f(al['violation_recall'])}   "
                         f"{_f(al['violation_f1'])}")
    return "\n".join(lines)


def _f(v: float | None) -> str:
    return "  -  " if v is None else f"{v:.3f}"


def render(results: list[dict[str, Any]], small_px: float, with_violations: bool) -> str:
    px = f"{small_px:g}"
    head = ["variant", f"rec>={px}", f"rec<{px}", f"prec>={px}", "prec all"]
    if with_violations:
        head += [f"vP>={px}", f"vR>={px}", f"vF1>={px}", "vP all", "vR all", "vF1 all"]
    head += ["det ms", "cls ms"]
    rows = []
    for r in results:
        ge, lt, al = (r["subsets"][s] for s in SUBSETS)
        row = [r["name"], _f(ge["face_recall"]), _f(lt["face_recall"]), _f(ge["face_precision"]),
               _f(al["face_precision"])]
        if with_violations:
            row += [_f(ge["violation_precision"]), _f(ge["violation_recall"]),
                    _f(ge["violation_f1"]), _f(al["violation_precision"]),
                    _f(al["violation_recall"]), _f(al["violation_f1"])]
        row += [f"{r['ms_detect']:.1f}",
                "-" if r["ms_classify"] is None else f"{r['ms_classify']:.1f}"]
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def parse_overrides(p: argparse.ArgumentParser, items: list[str]) -> dict[str, str]:
    """-o FIELD=VALUE pairs, each VALUE checked against its DetectorConfig field while parsing
    (``score_threshold=7`` was a pydantic traceback once the first variant was built)."""
    out = {}
    for it in items:
        key, sep, value = it.partition("=")
        if not sep or key not in DetectorConfig.model_fields:
            p.error(f"-o {it!r}: expected FIELD=VALUE with FIELD one of "
                    f"{', '.join(DetectorConfig.model_fields)}")
        field_info = DetectorConfig.model_fields[key]
        kind = (Annotated[(field_info.annotation, *field_info.metadata)] if field_info.metadata
                else field_info.annotation)
        try:
            TypeAdapter(kind).validate_python(value)
        except ValidationError as err:
            p.error(f"-o {it!r}: {reason(err.errors()[0]['msg'])}")
        out[key] = value
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scene_options(p)
    p.add_argument("--variants", default=None,
                   help=f"comma-separated, from: config, {', '.join(VARIANTS)} (default: "
                        f"{','.join(DEFAULT_VARIANTS)}; with --config: config)")
    p.add_argument("--config", type=Path,
                   help="a maskd YAML config: score its detector and classifier settings as the "
                        "device would apply them")
    p.add_argument("-o", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="override a detector config field for every variant (repeatable)")
    p.add_argument("--model", type=Path, help="classifier .tflite, scored alone (default: as "
                   "`maskd scan`, the shipped model averaged with its second draw)")
    p.add_argument("--faces-only", action="store_true", help="no classifier: face metrics only")
    p.add_argument("--grey", action="store_true",
                   help="the photos made grey, as an infrared camera sees at night")
    p.add_argument("--threshold", type=probability, default=None,
                   help="P(no_mask) cut for the no_mask label (default: classifier.threshold)")
    p.add_argument("--thresholds", type=comma_list(probability),
                   help="also score violations at these P(no_mask) cuts, e.g. 0.5,0.7,0.9")
    p.add_argument("--margin", type=non_negative_float, default=None,
                   help="crop margin (default: classifier.margin)")
    p.add_argument("--min-face-px", type=positive_int, default=None,
                   help="classify only detected faces this big (default: classifier.min_face_px, "
                        "as the device does; 1 classifies every face)")
    p.add_argument("--iou", type=open_unit, default=0.3, help="match at IoU >= this, in (0, 1]")
    p.add_argument("--small-px", type=positive_float, default=24.0)
    p.add_argument("--limit", type=positive_int, help="only the first N scenes")
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = p.parse_args(argv)
    args.overrides = parse_overrides(p, args.overrides)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = args.overrides
    base_det, base_cls = None, ClassifierConfig()
    if args.config is not None:
        from maskd.config import ConfigError, load_config

        try:
            cfg_file = load_config(args.config)
        except ConfigError as err:
            print(f"eval_scenes: {err}", file=sys.stderr)
            return 2
        base_det, base_cls = cfg_file.detector, cfg_file.classifier
    # Every classifier key of the --config file applies (flip_band too), as in `maskd scan`.
    cls_cfg = base_cls.model_copy(update={
        "model": args.model or base_cls.model,
        "margin": base_cls.margin if args.margin is None else args.margin,
        "threshold": base_cls.threshold if args.threshold is None else args.threshold,
        "min_face_px": base_cls.min_face_px if args.min_face_px is None else args.min_face_px})
    variants = args.variants or ("config" if args.config else ",".join(DEFAULT_VARIANTS))
    det_cfgs = [(name, variant_config(name, overrides, base_det))
                for name in [v.strip() for v in variants.split(",") if v.strip()]]
    for name, det_cfg in det_cfgs:  # a YuNet file named by -o or --config: checked first
        named = "model" in overrides or (name == "config" and base_det is not None
                                         and "model" in base_det.model_fields_set)
        missing = missing_yunet(det_cfg) if named else None
        if missing:
            print(f"eval_scenes: {name}: {missing}", file=sys.stderr)
            return 2
    try:
        skipped: list[str] = []
        scenes = load_scenes(args.scenes, args.limit, args.part, skipped)
    except (OSError, ValueError) as err:
        print(f"eval_scenes: {err}", file=sys.stderr)
        return 2
    report_skipped("eval_scenes", skipped)
    classifier = None
    if not args.faces_only:
        from maskd.classifier import ModelError
        from maskd.config import Config
        from maskd.service import build_classifier

        try:
            # As `maskd scan` opens it: with the still extras (none when --model is given).
            scan_cfg = Config(classifier=cls_cfg.model_copy(update={"edgetpu": False}))
            classifier = build_classifier(scan_cfg, still=True)
        except ModelError as err:
            print(f"eval_scenes: {err} (or run with --faces-only)", file=sys.stderr)
            return 2
    results = []
    for name, cfg in det_cfgs:
        try:
            results.append(evaluate(name, cfg, scenes, classifier, cls_cfg, args.iou,
                                    args.small_px, args.thresholds, args.grey))
        except DetectorError as err:
            print(f"eval_scenes: {name} skipped: {err}", file=sys.stderr)
    report = {"scenes": str(args.scenes), "grey": args.grey, "images": len(scenes),
              "skipped": skipped,
              "iou": args.iou, "small_px": args.small_px,
              "classifier": None if classifier is None else [
                  str(m.path) for m in getattr(classifier, "members", [classifier])],
              "config": None if args.config is None else str(args.config),
              "threshold": cls_cfg.threshold, "margin": cls_cfg.margin,
              "min_face_px": cls_cfg.min_face_px, "overrides": overrides, "results": results}
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        gts = results[0]["subsets"] if results else None
        if gts:
            print(f"{len(scenes)} images{' made grey' if args.grey else ''}; annotated faces >= {args.small_px:g} px: "
                  f"{gts['ge']['gt']}, < {args.small_px:g} px: {gts['lt']['gt']}; IoU >= {args.iou}")
        print(render(results, args.small_px, classifier is not None))
        for r in results:
            if "intervals" in r:
                print(render_interval(r["name"], r["images"], r["intervals"], args.small_px))
        if any("sweep" in r for r in results):
            print()
            print(render_sweep(results, args.small_px))
    return 0 if results else 1


if __name__ == "__main__":
    raise SystemExit(main())
