"""SSD face detectors, both behind kind ``ssd`` and told apart by the model file:

* a TFLite SSD with the standard ``TFLite_Detection_PostProcess`` outputs (boxes, classes,
  scores, count), so Coral's EdgeTPU face model drops in (``edgetpu: true``);
* OpenCV's ResNet-10 SSD (``.pb`` + ``.pbtxt``): the seeds' baseline, kept for comparison.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from maskd.config import DetectorConfig
from maskd.detectors.base import (
    TFLITE_THREADS,
    DetectorError,
    faces_from_arrays,
    scaled_input,
    score_cut,
)
from maskd.geometry import Letterbox, letterbox, nms
from maskd.tflite import get_output, invoke, open_interpreter, set_input
from maskd.types import Face

SSD_DEFAULT_SCORE_THRESHOLD = 0.6


def merged(boxes: np.ndarray, scores: np.ndarray, nms_threshold: float | None
           ) -> tuple[np.ndarray, np.ndarray]:
    """An SSD's boxes after ``detector.nms_threshold``: its graph merges at its own overlap
    (0.45 in OpenCV's face SSD), so the key changed nothing for kind ssd without this; a value
    above the graph's own can merge no more than it did (None: the graph's alone)."""
    if nms_threshold is None or len(scores) < 2:
        return boxes, scores
    keep = nms(boxes, scores, nms_threshold)
    return np.asarray(boxes)[keep], np.asarray(scores)[keep]

def decode_ssd_postprocess(boxes: np.ndarray, classes: np.ndarray, scores: np.ndarray,
                           count: float, score_threshold: float, lb: Letterbox,
                           input_w: int, input_h: int, face_class: int | None = 0
                           ) -> tuple[np.ndarray, np.ndarray]:
    """TFLite_Detection_PostProcess outputs -> boxes (K, 4) in original pixels, scores (K,).

    ``boxes`` are (N, 4) ymin, xmin, ymax, xmax normalised to the network input (which holds the
    letterboxed image); only the first ``count`` rows are valid.
    """
    n = int(count)
    # Rows past ``count`` hold whatever the output buffer held: a signalling NaN there made the
    # cast warn "invalid value" (seen in a test run). Only the valid rows are cast.
    b = np.asarray(boxes).reshape(-1, 4)[:n].astype(np.float64)
    s = np.asarray(scores).reshape(-1)[:n].astype(np.float64)
    c = np.asarray(classes).reshape(-1)[:n].astype(np.float64)
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

    DEFAULT_SCORE_THRESHOLD = SSD_DEFAULT_SCORE_THRESHOLD
    FIXED_INPUT = True  # the model's own input size: ``upscale`` can only become tiles

    def __init__(self, model: Path, score_threshold: float = DEFAULT_SCORE_THRESHOLD, edgetpu: bool = False,
                 face_class: int | None = 0, nms_threshold: float | None = None):
        self.path = _tflite_ssd_file(Path(model))
        self.name = "ssd-edgetpu" if edgetpu else "ssd"
        self.score_threshold = score_threshold
        self.face_class = face_class
        self.edgetpu = edgetpu
        self.nms_threshold = nms_threshold
        self._interp, _ = open_interpreter(self.path, TFLITE_THREADS, edgetpu)
        self._in = self._interp.get_input_details()[0]
        shape = tuple(int(v) for v in self._in["shape"])
        if len(shape) != 4 or shape[0] != 1 or shape[3] != 3:  # else a traceback at start, or
            # on the first frame (exit 70, a restart loop under systemd)
            raise DetectorError(f"{model}: its input {shape} is not one colour image (1, H, W, 3): "
                                "not a face SSD")
        _, self.input_h, self.input_w, _ = shape
        try:
            self._outs = postprocess_output_order(self._interp.get_output_details())
        except DetectorError as err:
            raise DetectorError(f"{model}: {err}") from None

    @classmethod
    def from_config(cls, cfg: DetectorConfig) -> TfliteSsd:
        assert cfg.model is not None
        return cls(Path(cfg.model), score_cut(cfg, cls.DEFAULT_SCORE_THRESHOLD), cfg.edgetpu,
                   nms_threshold=cfg.nms_threshold)

    def describe(self) -> str:
        """'ssd (file.tflite), input 320x320' for `maskd doctor`."""
        return f"{self.name} ({self.path.name}), input {self.input_w}x{self.input_h}"

    def _input(self, boxed_rgb: np.ndarray) -> np.ndarray:
        """Network input for ``set_input``: uint8 models (Coral's) take the pixels as they are;
        the others get MobileNet's [-1, 1], which set_input quantizes with the input tensor's
        own scale and zero point when the model is int8."""
        if self._in["dtype"] == np.uint8:
            return boxed_rgb[None]
        return (boxed_rgb.astype(np.float32) / 127.5 - 1.0)[None]

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        h, w = image_bgr.shape[:2]
        boxed, lb = letterbox(image_bgr, self.input_w, self.input_h)
        set_input(self._interp, self._input(cv2.cvtColor(boxed, cv2.COLOR_BGR2RGB)))
        invoke(self._interp, self.edgetpu, "the face detector")
        boxes, classes, scores, count = (get_output(self._interp, i) for i in self._outs)
        b, s = decode_ssd_postprocess(boxes, classes, scores, float(np.ravel(count)[0]),
                                      self.score_threshold, lb, self.input_w, self.input_h,
                                      self.face_class)
        return faces_from_arrays(*merged(b, s, self.nms_threshold), w, h)



class OpenCvSsd:
    """OpenCV's ResNet-10 SSD face detector (TensorFlow .pb + .pbtxt): the seeds' baseline.

    Trained on stretched 300x300 inputs with BGR mean subtraction, so it is fed stretched
    frames too (not letterboxed), at the configured input size (300x300 in the seeds).
    """

    MEAN = (104.0, 177.0, 123.0)
    DEFAULT_SCORE_THRESHOLD = SSD_DEFAULT_SCORE_THRESHOLD
    FIXED_INPUT = False  # blobFromImage stretches to any size: ``upscale`` enlarges it

    def __init__(self, model: Path, config: Path | None = None, score_threshold: float = DEFAULT_SCORE_THRESHOLD,
                 input_size: tuple[int, int] = (300, 300), nms_threshold: float | None = None):
        model, config = _opencv_ssd_files(Path(model), config)
        self.name = "opencv-ssd"
        self.path = model
        self.input_size = input_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        read = getattr(cv2.dnn, "readNetFromTensorflow", None)
        if read is None:
            raise DetectorError(
                f"{model}: this OpenCV ({cv2.__version__}) has no TensorFlow importer (removed "
                "in 5.1), so it cannot load the SSD; install opencv-python-headless<5.1 "
                "(maskd's own requirement) or use another detector.kind")
        try:
            self._net = read(str(model), str(config))
        except cv2.error as err:
            raise DetectorError(f"{model}: OpenCV cannot load this SSD: {err}") from None

    @classmethod
    def from_config(cls, cfg: DetectorConfig) -> OpenCvSsd:
        assert cfg.model is not None
        return cls(Path(cfg.model), score_threshold=score_cut(cfg, cls.DEFAULT_SCORE_THRESHOLD),
                   input_size=scaled_input(cfg), nms_threshold=cfg.nms_threshold)

    def describe(self) -> str:
        """'opencv-ssd (file.pb), input 300x300' for `maskd doctor`."""
        return f"{self.name} ({self.path.name}), input {self.input_size[0]}x{self.input_size[1]}"

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        h, w = image_bgr.shape[:2]
        blob = cv2.dnn.blobFromImage(image_bgr, 1.0, self.input_size, self.MEAN, swapRB=False)
        self._net.setInput(blob)
        out = np.asarray(self._net.forward(), np.float64).reshape(-1, 7)
        out = out[out[:, 2] >= self.score_threshold]
        boxes = out[:, 3:7] * np.array([w, h, w, h])
        return faces_from_arrays(*merged(boxes, out[:, 2], self.nms_threshold), w, h)


def _pbtxt_for(pb: Path) -> Path:
    """``opencv_face_detector_uint8.pb`` -> ``opencv_face_detector.pbtxt`` (or same stem)."""
    same = pb.with_suffix(".pbtxt")
    return same if same.is_file() else pb.with_name(pb.stem.removesuffix("_uint8") + ".pbtxt")


def _opencv_ssd_files(model: Path, config: Path | None = None) -> tuple[Path, Path]:
    """The .pb and its .pbtxt (the one beside it unless given); DetectorError for one missing."""
    config = config or _pbtxt_for(model)
    for p in (model, config):
        if not p.is_file():
            raise DetectorError(f"{p}: OpenCV SSD model file not found")
    return model, config


def _tflite_ssd_file(model: Path) -> Path:
    if not model.is_file():
        raise DetectorError(f"{model}: SSD model file not found")
    return model


def _is_pb(model: Path) -> bool:
    """OpenCV's .pb SSD, else a TFLite one; any case, as the config's EdgeTPU rule reads it."""
    return model.suffix.lower() == ".pb"



class Ssd:
    """Kind ``ssd``: OpenCV's .pb face SSD or a TFLite post-process SSD, told apart by the file."""

    DEFAULT_SCORE_THRESHOLD = SSD_DEFAULT_SCORE_THRESHOLD

    @staticmethod
    def available(cfg: DetectorConfig) -> bool:
        """Only with a configured model file: there is no default SSD to find."""
        return cfg.model is not None

    @staticmethod
    def files_needed(cfg: DetectorConfig) -> list[Path]:
        """The files it reads (a .pb's .pbtxt too), found without reading them."""
        assert cfg.model is not None, "DetectorConfig refuses kind ssd without a model"
        model = Path(cfg.model)
        return list(_opencv_ssd_files(model)) if _is_pb(model) else [_tflite_ssd_file(model)]

    @staticmethod
    def from_config(cfg: DetectorConfig) -> TfliteSsd | OpenCvSsd:
        assert cfg.model is not None, "DetectorConfig refuses kind ssd without a model"
        if _is_pb(Path(cfg.model)):
            return OpenCvSsd.from_config(cfg)
        return TfliteSsd.from_config(cfg)
