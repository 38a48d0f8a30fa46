"""`maskd classify PATH... [--model FILE] [--config FILE] [--json]`: P(no_mask) for face images.

The label uses the configured cut (``classifier.threshold``), the same as ``run`` and ``scan``.

Contract (scripts depend on it): one line per image; with --json a JSON object
``{"path", "label", "no_mask"}`` or ``{"path", "error"}`` for an unreadable image, and the
run goes on. Exit 0 when at least one image was classified, 1 when none was, 2 when the
model cannot be loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

from maskd.classifier import ModelError
from maskd.config import MODEL_OPTIONS, ConfigError, load_config, override
from maskd.images import ImageError, find_images, load_image_rgb
from maskd.service import build_classifier
from maskd.types import label_for


def iter_paths(paths: list[Path]) -> Iterator[Path]:
    """Files as given, folders searched recursively for images (sorted)."""
    for p in paths:
        if p.is_dir():
            yield from find_images(p)
        else:
            yield p


def main(args: argparse.Namespace) -> int:
    try:
        cfg = override(load_config(args.config), args, MODEL_OPTIONS)
        ccfg = cfg.classifier
        clf = build_classifier(cfg)
    except (ConfigError, ModelError) as err:
        print(f"maskd classify: {err}", file=sys.stderr)
        return 2
    classified = 0
    for p in iter_paths(args.paths):
        try:
            rgb = load_image_rgb(p)
        except ImageError as err:
            _emit(args.json, {"path": str(p), "error": str(err)})
            continue
        prob = float(clf.predict([rgb])[0])
        label = label_for(prob, ccfg.threshold)
        _emit(args.json, {"path": str(p), "label": label, "no_mask": round(prob, 6)})
        classified += 1
    if classified == 0:
        print("maskd classify: no image was classified", file=sys.stderr)
        return 1
    return 0


def _emit(as_json: bool, rec: dict) -> None:
    if as_json:
        line = json.dumps(rec)
    elif "error" in rec:
        line = f"{rec['path']}\tERROR\t{rec['error']}"
    else:
        line = f"{rec['path']}\t{rec['label']}\t{rec['no_mask']:.4f}"
    print(line, flush=True)
