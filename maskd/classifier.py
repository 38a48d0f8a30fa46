"""Mask / no-mask classifier: a TFLite MobileNetV2 that gives P(no_mask) per face crop.

The model file never stands alone: a sidecar JSON next to it (``model.tflite`` ->
``model.json``, written by tools/convert.py) says the labels, the input size and the
normalisation, so the runtime never guesses them. A crop becomes network input in two
steps shared with the tools, which is what makes training and the device agree:
``resize_square`` (the geometry) and ``normalize`` (the values; tools/train.py imports it).
``Classifier`` folds normalize and the input's quantization into one look-up table
(``input_table``); ``preprocess`` (both steps, float32) feeds Keras in the tools.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from maskd import env
from maskd.config import model_file_problem
from maskd.env import Environment
from maskd.tflite import ModelError, get_output, invoke, open_interpreter, quantize

log = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "maskd_mobilenetv2_int8.tflite"
# The same recipe trained with another seed: `scan` averages the two (docs/eval_video.md, round
# thirteen); the door runs DEFAULT_MODEL_NAME alone.
SECOND_DRAW_NAME = "maskd_mobilenetv2_int8_s43.tflite"
SIDECAR_FORMAT = "maskd-classifier/1"

# MobileNetV2's own normalisation: pixel / 127.5 - 1 -> [-1, 1].
DEFAULT_SCALE = 1.0 / 127.5
DEFAULT_OFFSET = -1.0

# Faces per interpreter call. One batched invoke for all the faces of a frame (or a chunk of
# `classify`'s files) saves the per-call overhead; above this the batch is split. Measured in
# docs/performance.md (batching).
MAX_BATCH = 16


def packaged_model_path(name: str = DEFAULT_MODEL_NAME) -> Path:
    """An int8 model that ships inside the package (``maskd/models/``, package data), with its
    sidecar next to it; a link to ``models/`` in a checkout, a real file in a wheel."""
    return Path(str(resources.files("maskd").joinpath("models", name)))


def default_model_path(name: str = DEFAULT_MODEL_NAME) -> Path:
    """A shipped int8 model: ``$MASKD_MODEL_DIR/<name>`` when set, else the packaged one."""
    folder = Environment.read().model_dir
    return folder / name if folder is not None else packaged_model_path(name)


def model_path(model: Path | str | None) -> Path:
    """The classifier file a config names (``classifier.model``), else the shipped one: the
    one rule run, check-config, the MQTT events' ``model`` and the tools follow."""
    return Path(model) if model is not None else default_model_path()


def default_model_problem() -> str | None:
    """Why the shipped model (no ``classifier.model``) cannot be opened here, or None: `run`'s
    line, which check-config gives as a warning."""
    problem = classifier_file_problem(default_model_path())
    return None if problem is None else f"{problem} (set {env.MODEL_DIR} to the folder holding it)"


def classifier_file_problem(model: Path | str, named: str | None = None) -> str | None:
    """``model_file_problem`` of a classifier model, and of its sidecar, which it is never read
    without: one this user cannot read is the same warning in check-config (the service's user
    may read it) and the same stop in `run` (was: check-config's exit 78 and `[Errno 13]
    Permission denied: '...'`, where the model itself was a warning). A sidecar not there is
    ``read_sidecar``'s error: the model came without one."""
    if (problem := model_file_problem(model, named)) is not None:
        return problem
    side = sidecar_path(Path(model))
    return model_file_problem(side, named, "model sidecar") if os.path.lexists(side) else None


def still_extra_paths(model: Path | None, extras: Sequence[Path] | None) -> list[Path]:
    """The models `scan` averages with ``classifier.model``: ``classifier.still_extra_models``
    when set; else the shipped second draw, but only beside the model it is a second draw of (a
    model of one's own is not averaged with ours, nor is one put where the shipped one was)."""
    if extras is not None:
        return [Path(p) for p in extras]
    if model is not None:
        return []
    twin = default_model_path(SECOND_DRAW_NAME)
    return [twin] if _second_draw_of(default_model_path(), twin) else []


def _second_draw_of(model: Path, twin: Path) -> bool:
    """Whether ``twin`` is another training draw of ``model``'s recipe: their sidecars record
    the same data and training parameters but for the seed and the run folder. Anything that
    cannot be read says no: `scan` then judges with ``model`` alone."""
    try:
        sources = [json.loads(sidecar_path(p).read_text(encoding="utf-8"))["source"]
                   for p in (model, twin)]
        params = [{k: v for k, v in s["train_params"].items() if k not in ("seed", "out")}
                  for s in sources]
        return (params[0] == params[1]
                and sources[0]["data_fingerprint"] == sources[1]["data_fingerprint"]
                and sources[0]["keras_sha256"] != sources[1]["keras_sha256"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def resize_square(rgb: np.ndarray, size: int) -> np.ndarray:
    """RGB uint8 of any size -> (size, size, 3) uint8, the geometry step of ``preprocess``.

    Squashes to a square (face crops are square already; training images are not and were
    squashed the same way), area-averaging when shrinking so fine noise does not alias,
    bilinear when enlarging a small face.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    interp = cv2.INTER_AREA if h * w > size * size else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(rgb), (size, size), interpolation=interp)


def normalize(x: np.ndarray, scale: float = DEFAULT_SCALE, offset: float = DEFAULT_OFFSET) -> np.ndarray:
    """Pixel values (uint8 or float 0..255) -> float32 network values (default [-1, 1])."""
    return x.astype(np.float32) * np.float32(scale) + np.float32(offset)


def preprocess(
    rgb: np.ndarray, size: int, scale: float = DEFAULT_SCALE, offset: float = DEFAULT_OFFSET
) -> np.ndarray:
    """RGB uint8 crop of any size -> float32 (size, size, 3) network input, as in training."""
    return normalize(resize_square(rgb, size), scale, offset)


def input_table(detail: dict[str, Any], scale: float = DEFAULT_SCALE,
                offset: float = DEFAULT_OFFSET) -> np.ndarray:
    """The input tensor's value for each of the 256 pixel values: ``normalize`` then
    ``quantize`` with the tensor's own parameters, computed once. ``table[pixels]`` is then the
    whole per-pixel step in one pass, identical to ``quantize(normalize(pixels), detail)``."""
    return quantize(normalize(np.arange(256, dtype=np.uint8), scale, offset), detail)


@dataclass(frozen=True)
class ModelInfo:
    """What the sidecar JSON says about a model."""

    labels: list[str]
    input_size: int
    scale: float
    offset: float
    raw: dict[str, Any]

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str) -> ModelInfo:
        try:
            labels = [str(x) for x in d["labels"]]
            size = int(d["input_size"])
            norm = d.get("normalization") or {}  # absent or null: the defaults
            if not isinstance(norm, dict):
                raise ModelError(f"{source}: sidecar 'normalization' must be an object with "
                                 f"scale and offset, got {norm!r}")
            scale = float(norm.get("scale", DEFAULT_SCALE))
            offset = float(norm.get("offset", DEFAULT_OFFSET))
        except (KeyError, TypeError, ValueError) as err:
            raise ModelError(f"{source}: bad model sidecar ({err!r})") from None
        # A zero or NaN scale makes every crop the same input, so every face would be no_mask.
        for field, value in (("scale", scale), ("offset", offset)):
            if not math.isfinite(value) or (field == "scale" and value <= 0):
                raise ModelError(f"{source}: sidecar 'normalization.{field}' must be a finite "
                                 f"number{' > 0' * (field == 'scale')}, got {value}")
        if not isinstance(d.get("features") or {}, dict):  # `maskd doctor` reads its size
            raise ModelError(f"{source}: sidecar 'features' must be an object or null, got "
                             f"{d['features']!r}")
        if "no_mask" not in labels or "mask" not in labels:
            raise ModelError(f"{source}: labels must include 'mask' and 'no_mask', got {labels}")
        return cls(labels, size, scale, offset, d)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.raw)
        d.update(
            format=SIDECAR_FORMAT,
            labels=self.labels,
            input_size=self.input_size,
            normalization={"scale": self.scale, "offset": self.offset, "color": "RGB"},
            positive="no_mask",
        )
        return d


def sidecar_path(model: Path) -> Path:
    """``x.tflite`` -> ``x.json`` (the EdgeTPU compiler's ``x_edgetpu.tflite`` falls back to ``x.json``)."""
    own = model.with_suffix(".json")
    if own.exists() or not model.stem.endswith("_edgetpu"):
        return own
    return model.with_name(model.stem[: -len("_edgetpu")] + ".json")


def _is_zip(path: Path) -> bool:
    """Whether the file starts as a zip does (what tools/train.py's model.keras is)."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def read_sidecar(model: Path) -> ModelInfo:
    p = sidecar_path(model)
    try:
        d = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if _is_zip(model):  # was: asked for the sidecar, then 'not a valid Flatbuffer' with one
            raise ModelError(f"{model}: a Keras model (a zip archive), not a TFLite one; "
                             "tools/convert.py makes the .tflite and its sidecar from it") from None
        raise ModelError(
            f"{model}: its sidecar {p.name} (labels, input size, normalisation) is missing; "
            "models made by tools/convert.py come with one"
        ) from None
    except (OSError, ValueError) as err:  # ValueError: not JSON, or not UTF-8
        raise ModelError(f"{p}: cannot read model sidecar: {err}") from None
    return ModelInfo.from_dict(d, str(p))


class Classifier:
    """A loaded TFLite classifier; ``predict`` gives P(no_mask) per RGB crop, ``predict_embedded``
    also the pooled features when the model has that second output (sidecar ``outputs``)."""

    def __init__(self, interpreter: Any, info: ModelInfo, path: Path, runtime: str) -> None:
        self.interpreter = interpreter
        self.info = info
        self.path = path
        self.runtime = runtime
        self.labels = info.labels
        self.input_size = info.input_size
        self._no_mask = info.labels.index("no_mask")
        self._in = interpreter.get_input_details()[0]
        sizes = [int(np.prod(d["shape"][1:])) for d in interpreter.get_output_details()]
        self._scores, self._features = sidecar_outputs(info, sizes, path)
        self._table = input_table(self._in, info.scale, info.offset)
        self._batch = int(self._in["shape"][0])
        self.edgetpu = "edgetpu" in runtime
        # An EdgeTPU graph is compiled for batch 1; a CPU interpreter's batch can be resized.
        self.max_batch = 1 if self.edgetpu else MAX_BATCH
        shape = tuple(int(v) for v in self._in["shape"])
        if shape[1:] != (info.input_size, info.input_size, 3):
            raise ModelError(
                f"{path}: model input {shape} does not match the sidecar's input_size "
                f"{info.input_size}"
            )

    @classmethod
    def open(cls, path: Path | None = None, threads: int = 2, edgetpu: bool = False) -> Classifier:
        """Load ``path`` (default: the shipped model) with ``threads`` CPU threads or on a Coral."""
        p = model_path(path)
        problem = classifier_file_problem(p) if path is not None else default_model_problem()
        if problem is not None:  # the commands name its key first
            raise ModelError(problem)
        info = read_sidecar(p)
        interp, runtime = open_interpreter(p, threads, edgetpu)
        return cls(interp, info, p, runtime)

    def describe(self) -> str:
        """One line for `maskd doctor`: file, input, labels and where it runs."""
        s, dtype = self.input_size, np.dtype(self._in["dtype"]).name
        looks = (f"features {(self.info.raw.get('features') or {}).get('size', '?')} (faces told apart "
                 "by colour and features)" if self.has_features else "no features output (faces "
                 "told apart by colour alone)")
        return (f"{self.path.name}: input {s}x{s}x3 {dtype}, labels {'/'.join(self.labels)}, "
                f"{looks}, on {self.runtime}")

    def _set_batch(self, n: int) -> bool:
        """Resize the input's batch dimension to ``n`` (only when it changes). False when the
        graph cannot take ``n`` crops: the converter fixed the batch at 1 in a RESHAPE (a
        ``--size 32`` model flattens its 1x1 feature map so), which was a RuntimeError in
        ``classify``, ``scan`` and ``run`` as soon as two faces came at once. Such a model is
        then run one crop per invoke (``max_batch`` 1), said once."""
        if n != self._batch:
            s = self.input_size
            self.interpreter.resize_tensor_input(self._in["index"], [n, s, s, 3])
            try:
                self.interpreter.allocate_tensors()
            except RuntimeError as err:
                if n == 1:
                    raise
                log.warning("%s: takes one face per invoke, not %d (%s)", self.path.name, n,
                            " ".join(str(err).split()))
                self.max_batch = 1
                self._batch = 0
                self._set_batch(1)
                return False
            self._batch = n
        return True

    @property
    def has_features(self) -> bool:
        """Whether ``predict_embedded`` gives features (the model has the second output)."""
        return self._features is not None

    def predict(self, crops_rgb: Sequence[np.ndarray]) -> np.ndarray:
        """P(no_mask) in [0, 1], one float per RGB uint8 crop (any size)."""
        return self.predict_embedded(crops_rgb)[0]

    def predict_embedded(self, crops_rgb: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """P(no_mask) per crop and the pooled features (one row per crop; None when the model
        has no such output), in batched invokes of up to ``max_batch`` crops. Each crop is
        resized once (``resize_square``) and turned into the input tensor's values by one table
        look-up (``input_table``)."""
        out = np.empty(len(crops_rgb), dtype=np.float32)
        feats: list[np.ndarray] = []
        size, step = self.input_size, max(1, self.max_batch)
        for start in range(0, len(crops_rgb), step):
            chunk = crops_rgb[start:start + step]
            if not self._set_batch(len(chunk)):
                return self.predict_embedded(crops_rgb)  # again, one crop per invoke
            x = self._table[np.stack([resize_square(c, size) for c in chunk])]
            self.interpreter.set_tensor(self._in["index"], x)
            invoke(self.interpreter, self.edgetpu, "the classifier")
            y = get_output(self.interpreter, self._scores)
            out[start:start + len(chunk)] = y[:, self._no_mask]
            if self._features is not None:
                f = get_output(self.interpreter, self._features)
                feats.append(f.reshape(len(chunk), -1).astype(np.float32))
        scores = np.clip(out, 0.0, 1.0)
        if self._features is None:
            return scores, None
        return scores, np.concatenate(feats) if feats else np.empty((0, 0), np.float32)


def sidecar_outputs(info: ModelInfo, sizes: Sequence[int], path: Path) -> tuple[int, int | None]:
    """(scores output, features output or None) from the sidecar's ``outputs``, checked against
    the model's outputs (``sizes``: values per face of each); a model made before features
    existed has one output, the scores.

    The two outputs differ in size (one value per label against the pooled features), so a model
    whose outputs come in the other order than its sidecar says (``edgetpu_compiler`` does not
    promise to keep the order) is read the right way round, with a warning, instead of giving
    feature values as scores.
    """
    roles = info.raw.get("outputs") or {"scores": 0}
    try:
        scores = int(roles["scores"])
        features = int(roles["features"]) if roles.get("features") is not None else None
    except (KeyError, TypeError, ValueError):
        raise ModelError(f"{path}: bad sidecar 'outputs' {roles!r}: expected "
                         "{{'scores': N, 'features': M}}") from None
    n_outputs = len(sizes)
    for role, i in (("scores", scores), ("features", features)):
        if i is not None and not 0 <= i < n_outputs:
            raise ModelError(f"{path}: sidecar says the {role} are output {i}, but the model "
                             f"has {n_outputs} output(s)")
    want = len(info.labels)
    if sizes[scores] == want:
        return scores, features
    if features is not None and sizes[features] == want:
        log.warning("%s: the scores are output %d, not %d as the sidecar says (a compiler may "
                    "reorder outputs); reading them from output %d", path.name, features, scores,
                    features)
        return features, scores
    raise ModelError(f"{path}: output {scores} has {sizes[scores]} values per face, but the "
                     f"sidecar's labels {info.labels} need {want}: model and sidecar do not match")


class MeanClassifier:
    """P(no_mask) averaged over several classifiers. Two training draws of one recipe disagree
    by about 0.014 in per-photo F1; their mean is steadier than either (`scan`, round thirteen
    in docs/eval_video.md). Each member resizes the crops to its own input."""

    def __init__(self, members: Sequence[Classifier]) -> None:
        if not members:
            raise ValueError("MeanClassifier needs at least one classifier")
        self.members = list(members)
        self.input_size = self.members[0].input_size  # MaskClassifier's field; members resize alike

    def describe(self) -> str:
        """The members' lines joined: `maskd doctor` shows every file that votes."""
        return "mean of " + "; ".join(m.describe() for m in self.members)

    def predict(self, crops_rgb: Sequence[np.ndarray]) -> np.ndarray:
        """The members' P(no_mask) per crop, averaged."""
        return np.mean([m.predict(crops_rgb) for m in self.members], axis=0).astype(np.float32)
