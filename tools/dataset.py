"""The classifier's data, one way for train.py, convert.py and evaluate.py.

A dataset is a folder with one sub-folder per class (``with_mask``/``without_mask`` or
``mask``/``no_mask``). Every file in it is read through maskd.images (RGBA, palette, WEBP,
a PNG with a .jpg name ...). Exact duplicates (same bytes) are dropped BEFORE the split
so that no image sits on both sides of it; the split is stratified and seeded, and is
saved as JSON so evaluate.py scores exactly the images training never saw.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maskd.images import FolderError, ImageError, load_image_rgb, search_images
from tools.benchlib.common import SHARED  # ../shared, or $MASKD_SHARED as the tests take it

REPO = Path(__file__).resolve().parents[1]

LABELS = ["mask", "no_mask"]  # index = class id; no_mask is the positive class
FOLDER_LABELS = {"with_mask": "mask", "mask": "mask", "without_mask": "no_mask", "no_mask": "no_mask"}
DEFAULT_DATA = SHARED / "data" / "facemask-4095"


@dataclass(frozen=True)
class Item:
    rel: str  # path relative to the dataset root, with '/' separators
    label: int  # index into LABELS
    sha256: str


def class_files(folder: Path, root: Path, skipped: list[dict]) -> list[Path]:
    """Every non-hidden regular file under a class folder, found as ``maskd classify`` finds
    images (``search_images``: links to folders followed, each folder once, in sorted order, so
    a split is the same on every disk); what is left out (a named pipe, a broken link, a folder
    not read) is added to ``skipped`` with the reason: it used to be left out without a word."""
    files = []
    for f in search_images(folder, every_file=True):
        if isinstance(f, FolderError):
            skipped.append({"rel": f.path.relative_to(root).as_posix(), "reason": str(f)})
        elif f.is_file():
            files.append(f)
        else:
            skipped.append({"rel": f.relative_to(root).as_posix(),
                            "reason": f"{f}: not a regular file (a broken link, a named pipe)"})
    return files


def scan(root: Path, skipped: list[dict] | None = None) -> list[Item]:
    """Every non-hidden file of every class folder, hashed, sorted by relative path; files and
    folders left out are added to ``skipped`` (``class_files``), so is a file whose bytes
    cannot be read (an I/O error on a failing disk: was an OSError out of here, which train.py
    said as its run folder's, 'cannot write its files there')."""
    root = Path(root)
    skipped = [] if skipped is None else skipped
    if not root.is_dir():
        raise SystemExit(f"dataset folder not found: {root}")
    items = []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        label = FOLDER_LABELS.get(sub.name)
        if label is None:
            raise SystemExit(
                f"{sub}: unknown class folder; expected one of {sorted(FOLDER_LABELS)}"
            )
        for f in class_files(sub, root, skipped):
            try:
                digest = hashlib.sha256(f.read_bytes()).hexdigest()
            except OSError as err:
                skipped.append({"rel": f.relative_to(root).as_posix(),
                                "reason": f"{f}: {err.strerror or err}"})
                continue
            items.append(Item(f.relative_to(root).as_posix(), LABELS.index(label), digest))
    if not items:
        raise SystemExit(f"{root}: no images in its class folders")
    return items


def dedupe(items: list[Item]) -> tuple[list[Item], list[dict]]:
    """Keep the first file (by path) of each byte-identical group; say what was dropped.

    A group spread over both classes is contradictory and dropped entirely.
    """
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(it.sha256, []).append(it)
    kept, dropped = [], []
    for group in groups.values():
        if len({it.label for it in group}) > 1:
            dropped += [{"rel": it.rel, "reason": "same bytes in both classes"} for it in group]
            continue
        kept.append(group[0])
        dropped += [{"rel": it.rel, "reason": f"duplicate of {group[0].rel}"} for it in group[1:]]
    kept.sort(key=lambda it: it.rel)
    return kept, dropped


def fingerprint(items: list[Item]) -> str:
    """sha256 over (path, label, content hash) of the deduplicated set: names the data exactly."""
    h = hashlib.sha256()
    for it in sorted(items, key=lambda it: it.rel):
        h.update(os.fsencode(f"{it.rel}\t{it.label}\t{it.sha256}\n"))  # a name's bytes, UTF-8 or not
    return h.hexdigest()


def stratified_split(
    items: list[Item], val: float, test: float, seed: int
) -> dict[str, list[Item]]:
    """Seeded train/val/test split with the same class ratio in each part."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[Item]] = {"train": [], "val": [], "test": []}
    for label in range(len(LABELS)):
        cls = [it for it in items if it.label == label]
        order = rng.permutation(len(cls))
        n_test = int(round(len(cls) * test))
        n_val = int(round(len(cls) * val))
        parts["test"] += [cls[i] for i in order[:n_test]]
        parts["val"] += [cls[i] for i in order[n_test : n_test + n_val]]
        parts["train"] += [cls[i] for i in order[n_test + n_val :]]
    for k in parts:
        parts[k].sort(key=lambda it: it.rel)
    return parts


def limit_per_class(items: list[Item], n: int, seed: int) -> list[Item]:
    """At most ``n`` items per class (seeded), for quick trial runs."""
    rng = np.random.default_rng(seed + 1)
    out = []
    for label in range(len(LABELS)):
        cls = [it for it in items if it.label == label]
        out += [cls[i] for i in sorted(rng.permutation(len(cls))[:n])]
    return sorted(out, key=lambda it: it.rel)


def make_split(
    root: Path, val: float = 0.1, test: float = 0.1, seed: int = 42, limit: int | None = None
) -> dict:
    """Scan, drop unreadable files and duplicates, split; returns the JSON-ready record."""
    root = Path(os.path.realpath(root))  # resolve() raised RuntimeError on a link loop
    unreadable: list[dict] = []
    items = scan(root, unreadable)
    readable = []
    for it in items:
        try:
            load_image_rgb(root / it.rel)
            readable.append(it)
        except ImageError as err:
            unreadable.append({"rel": it.rel, "reason": str(err)})
    if not readable:
        raise SystemExit(f"{root}: none of its {len(items)} files is a readable image")
    kept, dropped = dedupe(readable)
    if limit is not None:  # 0 is not "no limit": parse_args refuses it
        kept = limit_per_class(kept, limit, seed)
    parts = stratified_split(kept, val, test, seed)
    check_parts(root, parts)
    return {
        "root": str(root),
        "labels": LABELS,
        "seed": seed,
        "fractions": {"val": val, "test": test},
        "limit_per_class": limit,
        "files_found": len(items),
        "unreadable": unreadable,
        "duplicates_dropped": dropped,
        "fingerprint": fingerprint(kept),
        "counts": {
            k: {lab: sum(it.label == i for it in v) for i, lab in enumerate(LABELS)}
            for k, v in parts.items()
        },
        **{k: [[it.rel, it.label] for it in v] for k, v in parts.items()},
    }


def check_parts(root: Path, parts: dict[str, list[Item]]) -> None:
    """Training needs both classes in train and in val (the epoch-picking set): a one-class
    folder or a val fraction that rounds to nothing would train nonsense or fail deep in Keras."""
    for part in ("train", "val"):
        have = {it.label for it in parts[part]}
        missing = [lab for i, lab in enumerate(LABELS) if i not in have]
        if missing:
            raise SystemExit(
                f"{root}: the {part} part of the split has no {' and no '.join(missing)} images "
                f"({len(parts[part])} images in all); both class folders need readable images"
                + (", and --val/--limit enough of them for a validation set" if part == "val" else ""))


def save_split(split: dict, path: Path) -> None:
    Path(path).write_text(json.dumps(split, indent=1), encoding="utf-8")


def load_split(path: Path) -> dict:
    """A split.json saved by train.py; a missing or malformed one stops naming the file
    (SystemExit) instead of a KeyError or TypeError deep in the tool that reads it."""
    try:
        split = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as err:
        raise SystemExit(f"{path}: cannot read the split ({err.strerror or err})") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise SystemExit(f"{path}: not a split.json (not JSON: {err})") from None
    if not isinstance(split, dict) or not isinstance(split.get("root"), str):
        raise SystemExit(f"{path}: not a split.json saved by tools/train.py (no \"root\")")
    for part in ("train", "val", "test"):
        rows = split.get(part)
        if not isinstance(rows, list) or not all(
                isinstance(r, list) and len(r) == 2 and isinstance(r[0], str)
                and r[1] in range(len(LABELS)) for r in rows):
            raise SystemExit(f"{path}: not a split.json saved by tools/train.py "
                             f"(\"{part}\" is not a list of [path, label] rows)")
    return split


def subset_files(split: dict, subset: str, root: Path | None = None) -> tuple[list[Path], np.ndarray]:
    """(paths, labels) of one part of a split (checked by ``load_split``); ``root`` overrides
    where the data lives now."""
    base = Path(root) if root is not None else Path(split["root"])
    rows = split[subset]
    return [base / rel for rel, _ in rows], np.array([lab for _, lab in rows], dtype=np.int64)


def folder_files(root: Path) -> tuple[list[Path], np.ndarray]:
    """(paths, labels) of every file of a class-folder dataset (no dedupe: score what is there)."""
    skipped: list[dict] = []
    items = scan(Path(root), skipped)
    for left_out in skipped:
        print(f"warning: skipped {left_out['reason']}", file=sys.stderr)
    return [Path(root) / it.rel for it in items], np.array([it.label for it in items], np.int64)


def load_resized(paths: list[Path], size: int, progress: bool = False) -> np.ndarray:
    """Decode and squash each image to (size, size, 3) uint8 with the runtime's resize."""
    from maskd.classifier import resize_square

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = resize_square(load_image_rgb(p), size)
        if progress and (i + 1) % 500 == 0:
            print(f"  loaded {i + 1}/{len(paths)} images", flush=True)
    return out
