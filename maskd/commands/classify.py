"""`maskd classify PATH... [--model FILE] [--config FILE] [--json]`: P(no_mask) for face images.

The label uses the configured cut (``classifier.threshold``), the same as ``run`` and ``scan``.

Files are decoded on a worker thread, up to ``DECODE_AHEAD`` files ahead, and squashed there to
the model's input size (held small: 40 phone photos peaked near 900 MB when held whole), while
the interpreter classifies the previous ones in batches of up to ``Classifier.max_batch``.

Contract (scripts depend on it): one line per image; with --json a JSON object
``{"path", "label", "no_mask"}`` or ``{"path", "error"}`` for an unreadable image (or a folder
that cannot be searched), and the run goes on; a folder with no image names is said on
stderr. Exit 0 when at least one image was classified,
1 when none was, 2 when the model cannot be loaded, 74 when stdout cannot be written, 75 when
the Coral (``--edgetpu``, classifier.edgetpu) stopped answering part-way: the lines written
stay, and one line on stderr says up to which image they go and what to do.
"""

from __future__ import annotations

import argparse
import json
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from maskd.classifier import Classifier, ModelError, resize_square
from maskd.commands import coral_lost_exit, names_as_bytes_on_stdout, print_line
from maskd.config import MODEL_OPTIONS, ConfigError, load_config, options_given, override
from maskd.images import (
    FolderError,
    ImageError,
    entry_path,
    hidden_note,
    load_image_rgb,
    no_images,
    one_field,
    search_images,
)
from maskd.journal import error_line, warning_line
from maskd.service import build_classifier
from maskd.tflite import CoralLost, need_edgetpu_library
from maskd.types import label_for

DECODE_AHEAD = 32  # files decoded ahead of the classifier, each held at the model's input size


def iter_paths(paths: list[Path]) -> Iterator[Path | FolderError]:
    """Files as given, folders searched recursively for images (sorted), with the folders
    that could not be searched in their place; a folder without any is said on stderr, and so
    are the hidden ones passed over."""
    for p in paths:
        if p.is_dir():
            hidden: list[Path] = []
            if not (found := search_images(p, hidden=hidden)):
                warning_line(f"maskd classify: {one_field(no_images(p))}")
            if note := hidden_note(p, hidden):
                warning_line(f"maskd classify: {one_field(note)}")
            yield from found
        else:
            yield p


def _decode(p: Path | FolderError, size: int | None = None) -> np.ndarray | ImageError:
    """The RGB image of ``p``, or its error; squashed to ``size`` (the classifier's input) when
    given, the step ``predict`` would take anyway, so read-ahead holds 224x224 arrays, not
    4000x3000 photos (~36 MB each)."""
    if isinstance(p, FolderError):
        return p
    try:
        rgb = load_image_rgb(p)
    except ImageError as err:
        return err
    return rgb if size is None else resize_square(rgb, size)


def decoded(paths: Iterator[Path | FolderError], size: int | None = None,
            ) -> Iterator[tuple[Path, np.ndarray | ImageError]]:
    """(path, RGB image or the error) in the order given, decoded on one worker thread up to
    ``DECODE_AHEAD`` files ahead, so decoding overlaps the interpreter (both release the GIL);
    each image already reduced to ``size`` when given (``_decode``). Left early (Ctrl-C, a
    closed stdout), the files not yet started are cancelled: leaving the pool waits for its
    queue, up to DECODE_AHEAD big photos decoded for nothing (7 s here, half a minute on a Pi)."""
    with ThreadPoolExecutor(1, thread_name_prefix="decode") as pool:
        ahead: deque[tuple[Path, Future]] = deque()
        try:
            for p in paths:
                ahead.append((entry_path(p), pool.submit(_decode, p, size)))
                if len(ahead) >= DECODE_AHEAD:
                    q, fut = ahead.popleft()
                    yield q, fut.result()
            while ahead:
                q, fut = ahead.popleft()
                yield q, fut.result()
        finally:
            for _, fut in ahead:
                fut.cancel()


def classify_files(clf: Classifier, paths: Iterable[Path | FolderError],
                   decode_thread: bool = True) -> Iterator[tuple[Path, float | ImageError]]:
    """(path, P(no_mask) or the decode error) per file, in order: files decoded on a worker
    thread (``decoded``) and classified in batches of ``clf.max_batch``. tools/bench.py times
    this, the command's whole per-file path."""
    batch: list[tuple[Path, np.ndarray]] = []

    def flush() -> Iterator[tuple[Path, float]]:
        if batch:
            probs = clf.predict([rgb for _, rgb in batch])
            yield from ((p, float(prob)) for (p, _), prob in zip(batch, probs, strict=True))
            batch.clear()

    size = clf.input_size  # resized on the decode worker: what predict would do first
    files = (decoded(iter(paths), size) if decode_thread
             else ((entry_path(p), _decode(p, size)) for p in paths))
    for p, got in files:
        if isinstance(got, ImageError):
            yield from flush()  # keep the output in the order of the files
            yield p, got
            continue
        batch.append((p, got))
        if len(batch) >= clf.max_batch:
            yield from flush()
    yield from flush()


def main(args: argparse.Namespace) -> int:
    try:
        cfg = override(load_config(args.config), args, MODEL_OPTIONS, args.config)
        ccfg = cfg.classifier
        need_edgetpu_library(["classifier.edgetpu"] if ccfg.edgetpu else [], args.edgetpu)
        clf = build_classifier(cfg, options=options_given(args, MODEL_OPTIONS))
    except (ConfigError, ModelError) as err:
        error_line(f"maskd classify: {err}")
        return 2
    names_as_bytes_on_stdout()
    classified, last = 0, None
    try:
        for p, got in classify_files(clf, iter_paths(args.paths)):
            last = str(p)
            if isinstance(got, ImageError):
                _emit(args.json, {"path": str(p), "error": str(got)})
                continue
            _emit(args.json, {"path": str(p), "label": label_for(got, ccfg.threshold),
                              "no_mask": round(got, 6)})
            classified += 1
    except CoralLost as err:  # the hardware: one line, not a traceback, and 75 to try again
        return coral_lost_exit("classify", err, classified, last, cfg.edgetpu_keys(), args.edgetpu)
    if classified == 0:
        error_line("maskd classify: no image was classified")
        return 1
    return 0


def _emit(as_json: bool, rec: dict) -> None:
    if as_json:
        line = json.dumps(rec)
    elif "error" in rec:
        line = f"{one_field(rec['path'])}\tERROR\t{one_field(rec['error'])}"
    else:
        line = f"{one_field(rec['path'])}\t{rec['label']}\t{rec['no_mask']:.4f}"
    print_line(line)
