"""YuNet (``cv2.FaceDetectorYN``, an .onnx file): accurate, with landmarks; the default when its
model file is around."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from maskd.config import DetectorConfig, empty_model_problem
from maskd.detectors.base import DetectorError, faces_from_arrays, scaled_input, score_cut
from maskd.detectors.centerface import CenterFace
from maskd.env import YUNET, Environment
from maskd.geometry import letterbox
from maskd.modelfiles import (
    REPO_MODELS,
    SYSTEM_MODELS,
    YUNET_GLOB,
    damaged_yunet,
    find_yunet,
    not_onnx,
)
from maskd.types import Face


def find_yunet_model(cfg_model: Path | None = None) -> Path | None:
    """The YuNet .onnx: the configured file, else $MASKD_YUNET, else the one `maskd models fetch`
    saved in models/ (a checkout) or /usr/share/maskd/models (the pinned version first)."""
    if cfg_model is not None:  # os.path: a name too long to look up is not found, as
        # check-config says (auto falls back to BlazeFace), not an OSError out of `run`
        return Path(cfg_model) if os.path.isfile(cfg_model) else None
    chosen = Environment.read().yunet
    if chosen is not None:  # a file named on purpose is never silently replaced by another
        return chosen if chosen.is_file() else None
    return find_yunet((REPO_MODELS, SYSTEM_MODELS))


def where_yunet_was_looked_for(cfg_model: Path | None = None) -> str:
    """Where :func:`find_yunet_model` looked, for a message saying it found nothing."""
    if cfg_model is not None:
        return f"detector.model {cfg_model}"
    chosen = Environment.read().yunet
    if chosen is not None:
        return f"${YUNET}={chosen}"
    return f"{REPO_MODELS}/{YUNET_GLOB} or {SYSTEM_MODELS}/{YUNET_GLOB}"


def yunet_not_found(cfg_model: Path | None = None) -> str:
    """The one wording, for `run` and check-config, of a YuNet model found nowhere."""
    return (f"YuNet model not found ({where_yunet_was_looked_for(cfg_model)}): set detector.model "
            "to the face_detection_yunet .onnx file (`maskd models fetch` downloads it), or use "
            "detector kind blazeface")


def yunet_file_problem(model: Path, contents: bool = True) -> str | None:
    """Why OpenCV must not be handed ``model`` as YuNet (it can crash the process on a wrong
    or damaged file), in `run`'s words, or None: not an .onnx ($MASKD_YUNET; the config's is
    refused), damaged by its name's checksum, unreadable. Found by reading the file only.
    ``contents`` False: not whether it is damaged (``files_needed``: a file that is here but
    damaged is what `run` stops on, which check-config says by opening it, not a warning)."""
    if (wrong := not_onnx(model)) is not None:
        return f"{model}: {wrong}"
    try:
        if not contents:
            open(model, "rb").close()
        damage = damaged_yunet(model) if contents else None
    except OSError as err:
        return f"{model}: cannot read the YuNet model: {err.strerror or err}"
    return f"{model}: {damage}" if damage else None


def _centerface_hint(model: Path) -> str:
    """'; it is a CenterFace model: ...' where the .onnx YuNet could not use loads as one (its
    four outputs): the kind that reads it, not 'not a YuNet model' alone. OpenCV loaded it
    already, so reading it again cannot crash."""
    try:
        CenterFace(model)
    except DetectorError:
        return ""
    return "; it is a CenterFace model: set detector.kind centerface (--detector centerface)"


class YuNet:
    """YuNet through cv2.FaceDetectorYN at a fixed input size (the frame is letterboxed into it)."""

    # Higher than the others: YuNet's low-score faces are mostly blurred crowd faces that the
    # classifier misjudges (measured on scenes-dev, docs/detectors.md).
    DEFAULT_SCORE_THRESHOLD = 0.8
    FIXED_INPUT = False  # any input size: ``upscale`` enlarges it

    def __init__(self, model: Path, input_size: tuple[int, int] = (320, 240),
                 score_threshold: float = DEFAULT_SCORE_THRESHOLD, nms_threshold: float = 0.3, top_k: int = 5000):
        if not Path(model).is_file():
            raise DetectorError(f"{model}: YuNet model file not found")
        self.name = "yunet"
        self.path = Path(model)
        self.input_size = input_size
        if (problem := yunet_file_problem(self.path) or empty_model_problem(self.path)) is not None:
            raise DetectorError(problem)  # detector.model's empty file: build_detector names it
        try:
            self._net = cv2.FaceDetectorYN.create(str(model), "", input_size, score_threshold,
                                                  nms_threshold, top_k)
        except cv2.error as err:
            raise DetectorError(f"{model}: OpenCV cannot load this YuNet model: {err}") from None
        try:  # another .onnx (CenterFace) loads too, then fails on the first frame of a run
            self._net.detect(np.zeros((input_size[1], input_size[0], 3), np.uint8))
        except cv2.error as err:
            if err.code == cv2.Error.StsNoMem:  # the input size, not the file (upscale x4 of 4096)
                raise DetectorError(
                    f"{model}: not enough memory for YuNet at input {input_size[0]}x"
                    f"{input_size[1]} (detector.input_width/height times upscale): use a "
                    "smaller input") from None
            raise DetectorError(f"{model}: not a YuNet model (OpenCV cannot detect faces with "
                                f"it){_centerface_hint(self.path)}") from None

    @classmethod
    def available(cls, cfg: DetectorConfig) -> bool:
        """Whether ``auto`` can pick YuNet: its model file is found."""
        return find_yunet_model(cfg.model) is not None

    @classmethod
    def files_needed(cls, cfg: DetectorConfig) -> list[Path]:
        """The file it reads, found without reading it; DetectorError when there is none."""
        model = find_yunet_model(cfg.model)
        if model is None:
            raise DetectorError(yunet_not_found(cfg.model))
        if (problem := yunet_file_problem(model, contents=False)) is not None:  # check-config: a warning
            raise DetectorError(problem)
        return [model]

    @classmethod
    def from_config(cls, cfg: DetectorConfig) -> YuNet:
        (model,) = cls.files_needed(cfg)
        return cls(model, scaled_input(cfg), score_cut(cfg, cls.DEFAULT_SCORE_THRESHOLD),
                   cfg.nms_threshold)

    def describe(self) -> str:
        """'yunet (file.onnx), input 320x240' for `maskd doctor`."""
        return f"{self.name} ({self.path.name}), input {self.input_size[0]}x{self.input_size[1]}"

    def detect(self, image_bgr: np.ndarray) -> list[Face]:
        h, w = image_bgr.shape[:2]
        boxed, lb = letterbox(image_bgr, *self.input_size)
        _, out = self._net.detect(boxed)
        if out is None or not len(out):
            return []
        out = np.asarray(out, np.float64)
        boxes = np.stack([out[:, 0], out[:, 1], out[:, 0] + out[:, 2], out[:, 1] + out[:, 3]], 1)
        return faces_from_arrays(lb.to_original(boxes), out[:, 14], w, h,
                                 lb.to_original(out[:, 4:14].reshape(-1, 5, 2)))
