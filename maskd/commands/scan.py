"""`maskd scan PATH... [--json] [--annotate OUTDIR]`: faces and mask verdicts in images and videos.

Contract (scripts depend on it), one line per image or per video frame; with --json:

    {"path": str, "frame": int (videos only), "width": W, "height": H,
     "faces": [{"box": [x0, y0, x1, y1], "score": float, "label": "mask"|"no_mask"|null,
                "no_mask": float|null}]}

``box`` is in pixels of the image as decoded (``width`` x ``height``: the original size, except
that a JPEG (or MPO) over 16 MP is decoded at 1/2, 1/4 or 1/8 to bound memory), ``score`` the
detector's confidence. A face
smaller than ``classifier.min_face_px`` (shorter side) is reported but not judged: its
``label`` and ``no_mask`` are null. An unreadable file (or a video without a readable frame)
gives ``{"path", "error"}`` and the scan goes on; so does a folder that cannot be searched.
A folder with no image names in it is said on stderr (``DIR: no images (.jpg, ...)``).
No tracking: every image/frame is judged on its own.

``--annotate`` never writes over an input or a file it did not write itself (its JPEGs carry
a ``maskd annotate`` comment): that annotation gets ``stem-2.jpg``.

Exit 0 when at least one image/frame was scanned, 1 when none was, 2 when the config,
detector or classifier cannot be loaded, 73 when the scan finished but some annotations could
not be written (each named on stderr, and counted at the end), 74 when stdout cannot be written
(cli.main), 75 when the Coral (``--edgetpu``, classifier.edgetpu, detector.edgetpu) stopped
answering part-way: the lines and annotations written stay, and one line on stderr says up to
which image they go and what to do.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from maskd.annotate import annotation_jpeg, draw_verdicts, is_annotation
from maskd.commands import coral_lost_exit, names_as_bytes_on_stdout, print_line
from maskd.config import MODEL_OPTIONS, Config, ConfigError, load_config, options_given, override
from maskd.files import file_in_the_way, write_atomically
from maskd.images import (
    FolderError,
    ImageError,
    entry_path,
    hidden_note,
    is_image_name,
    load_image_rgb,
    no_images,
    one_field,
    search_images,
)
from maskd.journal import error_line, warning_line
from maskd.pipeline import judge_faces
from maskd.sources import VIDEO_SUFFIXES, VideoFileSource
from maskd.types import SourceError, Verdict

EX_SETUP = 2
EX_CANTCREAT = 73  # sysexits.h: an output file (here an annotation) could not be created


def _inputs(paths: list[Path], outdir: Path | None = None,
            ) -> list[tuple[Path | FolderError, Path]]:
    """Every file to scan (or folder not searched) with the name its annotation mirrors under
    OUTDIR, all listed before anything is written. A folder keeps its own name and layout, found
    on the resolved path so that ``..`` or ``.`` never lead out of OUTDIR. A searched folder's
    files under OUTDIR are left out: they are earlier runs' annotations (``scan . --annotate
    out`` scanned them at the next run, boxes drawn on boxes, one more level each time). Where
    the folder is OUTDIR or inside it (``scan . --annotate .``, ``scan photos --annotate .``),
    only the files there that are maskd's annotations are: its photos are among them."""
    inside = os.path.join(os.path.realpath(outdir), "") if outdir is not None else None
    found: list[tuple[Path | FolderError, Path]] = []
    taken: set[str] = set()  # the folders under OUTDIR given to a folder or a video
    for root in paths:
        if root.is_dir():
            base = _own_folder(root, Path(root.resolve().name), outdir, taken)
            hidden: list[Path] = []
            every = search_images(root, every_file=True, hidden=hidden)  # one walk, links too
            entries = [e for e in every if isinstance(e, FolderError) or is_image_name(e)]
            if not entries:
                warning_line(f"maskd scan: {one_field(no_images(root))}")
            # a hidden OUTDIR in the folder (or one holding it) is this command's output, not a
            # folder passed over; the hidden ones inside an OUTDIR that holds the folder are
            hidden = [h for h in hidden if inside is None
                      or not inside.startswith(os.path.join(os.path.realpath(h), ""))]
            if note := hidden_note(root, hidden):
                warning_line(f"maskd scan: {one_field(note)}")
            here = os.path.join(os.path.realpath(root), "")
            below = inside is not None and inside != here and inside.startswith(here)
            kept = [e for e in entries if inside is None or isinstance(e, FolderError)
                    or not os.path.realpath(e).startswith(inside)
                    or not (below or is_annotation(e))]
            if len(kept) < len(entries):
                warning_line(f"maskd scan: {one_field(str(root))}: {len(entries) - len(kept)} "
                            f"image(s) under the --annotate folder {one_field(str(outdir))} not "
                            "scanned (annotations)")
            found += [(e, base / entry_path(e).relative_to(root)) for e in kept]
            _say_videos_left(root, [e for e in every if isinstance(e, Path)
                                    and e.suffix.lower() in VIDEO_SUFFIXES and e.is_file()])
        elif root.suffix.lower() in VIDEO_SUFFIXES:  # its frames in a folder of its name
            found.append((root, _own_folder(root, Path(root.stem), outdir, taken)))
        else:
            found.append((root, Path(root.name)))
    return found


def _say_videos_left(folder: Path, videos: list[Path]) -> None:
    """A folder is searched for images only (a camera's folder of clips would be hours of
    frames): its ``videos`` (found by the image search's own walk, links to folders followed
    as for its images) are named as not scanned, not passed over without a word."""
    if videos:
        warning_line(f"maskd scan: {one_field(str(folder))}: {len(videos)} video file(s) not "
                    f"scanned, e.g. {one_field(str(videos[0]))} "
                    "(a folder is searched for images only; give a video's own path to scan "
                    "it)")


def _items(inputs: list[tuple[Path | FolderError, Path]],
           ) -> Iterator[tuple[Path, Path, int | None, np.ndarray | str]]:
    """(path, annotate name, frame or None, BGR image or error text) for every image/frame;
    a video's annotate name is the folder of its frames."""
    for entry, name in inputs:
        if isinstance(entry, FolderError):
            yield entry.path, name, None, str(entry)
        elif entry.suffix.lower() in VIDEO_SUFFIXES:  # never a folder's: images only there
            try:
                video = VideoFileSource(entry)
            except SourceError as err:
                yield entry, name, None, str(err)
                continue
            try:
                while (frame := video.read()) is not None:
                    yield entry, name / f"{frame.seq:06d}.jpg", frame.seq, frame.image
            finally:
                video.close()
        else:
            yield from _image(entry, name)


def _own_folder(src: Path, want: Path, outdir: Path | None, taken: set[str]) -> Path:
    """The folder under OUTDIR for the annotations of ``src``, a folder (its layout) or a video
    (its frames): ``want``, or ``want-2``... when another input of this run took it
    (``cam1/day`` and ``cam2/day``, ``cam1/0800.mp4`` and ``cam2/0800.mp4``), said once on
    stderr (was: the second one's files renamed ``08-01-2.jpg``, ``000000-2.jpg`` beside the
    first one's, a line on stderr for each)."""
    if not want.name:  # "/": its layout straight in OUTDIR
        return want
    folder, n = want, 1
    while folder.name.casefold() in taken:
        n += 1
        folder = want.with_name(f"{want.name}-{n}")
    taken.add(folder.name.casefold())
    if n > 1 and outdir is not None:
        warning_line(f"maskd scan: {one_field(str(src))} is annotated in "
                    f"{one_field(str(outdir / folder))} ({one_field(str(outdir / want))} holds "
                    "another input's)")
    return folder


def _image(p: Path, name: Path) -> Iterator[tuple[Path, Path, None, np.ndarray | str]]:
    try:
        rgb = load_image_rgb(p)
    except ImageError as err:
        yield p, name, None, str(err)
        return
    yield p, name, None, np.ascontiguousarray(rgb[:, :, ::-1])


def record(path: Path, frame: int | None, image: np.ndarray, verdicts: list[Verdict]) -> dict:
    """The JSON object of one image/frame (see the module docstring)."""
    rec: dict = {"path": str(path)}
    if frame is not None:
        rec["frame"] = frame
    rec["height"], rec["width"] = (int(v) for v in image.shape[:2])
    rec["faces"] = [
        {
            "box": [round(float(c), 1) for c in v.face.box],
            "score": round(float(v.face.score), 4),
            "label": v.label,
            "no_mask": None if v.no_mask is None else round(float(v.no_mask), 4),
        }
        for v in verdicts
    ]
    return rec


def _human(rec: dict) -> str:
    if "error" in rec:
        return f"{one_field(rec['path'])}\tERROR\t{one_field(rec['error'])}"
    labels = [f["label"] for f in rec["faces"]]
    where = one_field(rec["path"]) + (f"#{rec['frame']}" if "frame" in rec else "")
    return (f"{where}\t{len(labels)} faces\t{labels.count('no_mask')} no_mask\t"
            f"{labels.count('mask')} mask\t{labels.count(None)} too small")


def main(args: argparse.Namespace) -> int:
    from maskd.classifier import ModelError
    from maskd.detectors import DetectorError
    from maskd.service import build_classifier, build_detector
    from maskd.tflite import CoralLost, need_edgetpu_library

    try:
        cfg: Config = override(load_config(args.config), args, MODEL_OPTIONS, args.config)
        ccfg = cfg.classifier
        need_edgetpu_library(cfg.edgetpu_keys(), args.edgetpu)
        given = options_given(args, MODEL_OPTIONS)
        classifier = build_classifier(cfg, still=True, options=given)
        detector = build_detector(cfg, still=True, options=given)
    except (ConfigError, ModelError, DetectorError) as err:
        error_line(f"maskd scan: {err}")
        return EX_SETUP
    from maskd.commands.run import detector_notes

    for note in detector_notes(cfg, demo=False, still=True)[1:]:  # auto without YuNet: which file it missed
        warning_line(f"maskd scan: {note}")
    names_as_bytes_on_stdout()
    scanned = unwritten = 0
    last: str | None = None
    inputs = _inputs(args.paths, args.annotate)
    written = {_real(entry_path(e)) for e, _ in inputs}  # the inputs, then each annotation
    try:
        for path, name, frame, image in _items(inputs):
            if isinstance(image, str):
                _emit(args.json, {"path": str(path), "error": image})
                last = str(path)
                continue
            faces = detector.detect(image)
            verdicts = judge_faces(image, faces, classifier, ccfg)
            _emit(args.json, record(path, frame, image, verdicts))
            scanned += 1
            last = str(path) if frame is None else f"{path} frame {frame}"
            if args.annotate is not None:
                if not _annotate(args.annotate / name, path, draw_verdicts(image, verdicts),
                                 written):
                    unwritten += 1
    except CoralLost as err:  # the hardware: one line, not a traceback, and 75 to try again
        return coral_lost_exit("scan", err, scanned, last, cfg.edgetpu_keys(), args.edgetpu)
    if scanned == 0:
        error_line("maskd scan: nothing was scanned")
        return 1
    if unwritten:  # a script must not take a half-annotated folder for a finished one
        error_line(f"maskd scan: {unwritten} of {scanned} annotations could not be written")
        return EX_CANTCREAT
    return 0


def _real(p: Path) -> str:
    """The file a name leads to (links, ``..`` and ``.`` resolved), case folded, to compare two
    names: on a FAT SD card ``DOOR.JPG`` and ``door.jpg`` are one file."""
    return os.path.realpath(p).casefold()


def _taken(out: Path, written: set[str]) -> bool:
    """True when ``out`` must not be written: an input or an annotation of this run, or an
    existing file that is not maskd's annotation (a user's photo, a link, a folder)."""
    if _real(out) in written:
        return True
    return os.path.lexists(out) and not is_annotation(out)


def _annotate(want: Path, src: Path, image: np.ndarray, written: set[str]) -> bool:
    """Write ``want`` as a JPEG, or ``stem-2.jpg``... when that is an input of this run (``scan
    door.jpg --annotate .``), another input's annotation (``door.jpg`` and ``door.png``; the
    same name given from two folders) or a file maskd did not write (``door.jpg`` beside
    ``scan door.png``), said on stderr; only an earlier annotation (marked) is replaced. Written
    whole (a temporary file renamed): a full disk leaves no cut JPEG. False when it could not be
    written (said on stderr)."""
    out, n = want.with_suffix(".jpg"), 1
    while _taken(out, written):
        n += 1
        out = want.with_name(f"{want.stem}-{n}.jpg")
    if n > 1:
        warning_line(f"maskd scan: {one_field(str(src))} is annotated as {one_field(str(out))} "
                    f"({one_field(str(want.with_suffix('.jpg')))} is an input, another input's "
                    "annotation or a file maskd did not write)")
    data = annotation_jpeg(image)
    try:  # written by Python, not OpenCV: a name that is not UTF-8 works too
        out.parent.mkdir(parents=True, exist_ok=True)
        written.add(_real(out))
        if data is None:
            raise OSError("cannot encode the image")
        # made again by scanning again: not waited for on the card (40 ms an image on an SD card)
        write_atomically(out, data, sync=False)
    except OSError as err:
        why = file_in_the_way(out.parent) or err.strerror or err
        error_line(f"maskd scan: cannot write {one_field(str(out))}: {why}")
        return False
    return True


def _emit(as_json: bool, rec: dict) -> None:
    print_line(json.dumps(rec) if as_json else _human(rec))
