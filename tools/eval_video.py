#!/usr/bin/env python3
"""Score maskd the way a door sees it: camera clips made from annotated photos, run through the
real ``maskd run`` loop, scored per person.

A photo scored once (tools/eval_scenes.py) says nothing about tracking, smoothing, event
start-up time or duplicate alarms; a person walking up to a door does. So every clip here is a
640x480, 15 fps MJPG file (as a camera delivers frames) built from ../shared/data/scenes-dev,
and it goes through ``maskd.service.build(cfg).run()``: the device's own code path.

Clip kinds (``--kinds``, default walkup,queue):
  * walkup: one per photo; the camera zooms geometrically from the whole photo (letterboxed)
    about 2.2x toward one face, chosen by a seeded RNG (``--seed`` + the photo's name, so a
    clip never depends on which other photos are in the run): faces grow as people walk up.
  * pan: one per photo with >= 3 faces; a 2x window pans across the photo, faces pass through.
  * crossing: two faces cut out with their context from two photos cross a neutral background.
  * queue: ``--queue-people`` different unmasked people one after another at the same spot
    and size, each in view 2 s, 1 s of empty background between them. Each is shown with a
    square of ``--queue-context`` x the face side of their photo around the face (0: the whole
    photo, bystanders and all), so the right answer is one event per person (events == people).

Truth: each annotated box is moved with the image into every frame; a box less than half in
view (occluders included) has no truth in that frame. A person (one annotated box) is judged
when its face (shorter side in view) is >= 40 px for >= 10 frames. A start event belongs to
the person whose box overlaps its box best (IoU >= 0.3) in the event's frame. Then:
  * recall: share of judged without_mask people with at least one event;
  * false alarm: an event on a judged with_mask person or on nobody; events on
    mask_weared_incorrect or on a non-judged face count neither way;
  * precision: events on judged without_mask people / (those + false alarms);
  * also: share of judged masked people flagged, duplicate events per unmasked person,
    seconds from a face's first frame in view to its first start event (median, p90), and
    events/people: all start events against what they should number (the queued people in a
    queue, the judged unmasked people elsewhere).

    python tools/eval_video.py                                   # walkup + queue, all photos
    python tools/eval_video.py --part select --json runs/eval_video/select.json
    python tools/eval_video.py --kinds walkup --limit 20 -o tracking.end_after_s=1
    python tools/eval_video.py --kinds crossing,pan --plot runs/eval_video/plots \\
        --sheet runs/eval_video/false_alarms.png
    python tools/eval_video.py --config /etc/maskd/config.yaml   # a device's own settings
    (a config with a cameras: map runs as its first camera: its tracking and zones, and the
    shared detector and classifier, which eval_scenes scores of such a file)

Clips are cached under runs/eval_video/clips/ keyed by what makes them (geometry, photos,
encoding), so runs with other maskd settings skip rendering.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import yaml

from maskd.config import Config, ConfigError, PreviewConfig, load_config, parse_config
from maskd.detectors import find_yunet_model
from maskd.geometry import box_iou, shorter_sides
from maskd.types import scores_and_features
from tools.eval_scenes import (
    INTERVAL_DRAWS,
    INTERVAL_LEVEL,
    SHARED_YUNET,
    Scene,
    add_scene_options,
    bootstrap_interval,
    f1_of,
    f1_rate,
    load_scenes,
    missing_yunet,
    rate,
    ratio,
    report_skipped,
    stored_pixels,
)
from tools.inputs import (
    image_out,
    non_negative_float,
    non_negative_int,
    out_dir,
    out_file,
    positive_int,
    save_figure,
    write_image,
    write_out,
)

TOOLS = Path(__file__).resolve().parent
REPO = TOOLS.parent

OUT_W, OUT_H = 640, 480
FPS = 15.0
FRAMES = 45  # walkup, pan and crossing clips: 3 s
ZOOM = 2.2  # walkup: last frame vs the letterboxed first
FACE_FILL = 0.8  # walkup: the chosen face never fills more than this of the last window
PAN_ZOOM = 2.0
BACKGROUND = (114, 114, 114)  # neutral grey: letterbox bars, crossing scene, queue gaps
JPEG_QUALITY = 90
RENDER_VERSION = 1  # bump when rendering changes so cached clips are made again
CACHE = REPO / "runs" / "eval_video" / "clips"
MEMO = REPO / "runs" / "eval_video" / "memo"

VISIBLE = 0.5  # a box less than this much in view has no truth in that frame
JUDGE_PX = 40.0
JUDGE_FRAMES = 10
IOU = 0.3

KINDS = ("walkup", "pan", "crossing", "queue")
DEFAULT_KINDS = ("walkup", "queue")
PAN_MIN_FACES = 3
MIN_SOURCE_PX = 24.0  # crossing/queue faces are enlarged; smaller ones would be mush
# Why a kind asked for made no clip from these photos (said on stderr and in --json's not_made).
NOT_MADE = {
    "queue": f"no without_mask face of >= {MIN_SOURCE_PX:g} px in these photos",
    "pan": f"no photo with >= {PAN_MIN_FACES} annotated faces",
    "crossing": f"fewer than two photos with a face of >= {MIN_SOURCE_PX:g} px",
}
CROSS_FACE_PX = (72.0, 88.0)  # far, near (the near one walks in front)
CROSS_CONTEXT = 2.5  # patch side / face side
CROSS_Y = (0.40, 0.50)  # face centre heights, share of the frame
QUEUE_PEOPLE = 20
QUEUE_IN_VIEW_S = 2.0
QUEUE_GAP_S = 1.0
QUEUE_FACE_PX = 96.0
QUEUE_FACE_AT = (0.5, 0.4)  # share of the frame
QUEUE_CONTEXT = 2.5  # patch side / face side, as a crossing; 0 = the whole photo


# --------------------------------------------------------------------------- geometry (pure)


def fit_window(photo_wh: Sequence[float], out_wh: Sequence[float] = (OUT_W, OUT_H)) -> np.ndarray:
    """The window (photo pixels, x0 y0 x1 y1) that shows the whole photo letterboxed."""
    pw, ph = photo_wh
    s = min(out_wh[0] / pw, out_wh[1] / ph)
    half = np.array([out_wh[0], out_wh[1]]) / s / 2
    c = np.array([pw, ph]) / 2
    return np.concatenate([c - half, c + half])


def place_window(centre: np.ndarray, size: np.ndarray, photo_wh: Sequence[float]) -> np.ndarray:
    """A window of ``size`` near ``centre``, kept inside the photo (centred where it is bigger)."""
    extent = np.asarray(photo_wh, np.float64)
    c = np.where(size <= extent, np.clip(centre, size / 2, extent - size / 2), extent / 2)
    return np.concatenate([c - size / 2, c + size / 2])


def zoom_windows(photo_wh: Sequence[float], face: np.ndarray, frames: int = FRAMES,
                 zoom: float = ZOOM, out_wh: Sequence[float] = (OUT_W, OUT_H)) -> np.ndarray:
    """Per-frame windows (F, 4) zooming geometrically from the whole photo toward ``face``.

    The window's edges move linearly in u = (1 - 1/z(t)) / (1 - 1/Z), which is a zoom toward
    one fixed point; as the first and last windows both hold the face, every window does. The
    zoom is capped so the face fits the last window.
    """
    w0 = fit_window(photo_wh, out_wh)
    size0 = w0[2:] - w0[:2]
    face = np.asarray(face, np.float64)
    fsize = np.maximum(face[2:] - face[:2], 1e-6)
    z = max(1.0, min(zoom, *(FACE_FILL * size0 / fsize)))
    w1 = place_window((face[:2] + face[2:]) / 2, size0 / z, photo_wh)
    zt = z ** (np.arange(frames) / max(frames - 1, 1))
    u = (1 - 1 / zt) / (1 - 1 / z) if z > 1 else np.zeros(frames)
    return w0 + (w1 - w0) * u[:, None]


def pan_windows(photo_wh: Sequence[float], boxes: np.ndarray, frames: int = FRAMES,
                zoom: float = PAN_ZOOM, reverse: bool = False,
                out_wh: Sequence[float] = (OUT_W, OUT_H)) -> np.ndarray:
    """Per-frame windows (F, 4) panning at a constant speed along the photo's longer free axis,
    level with the faces' median centre on the other axis."""
    w0 = fit_window(photo_wh, out_wh)
    size = (w0[2:] - w0[:2]) / zoom
    extent = np.asarray(photo_wh, np.float64)
    axis = int(np.argmax(extent - size))
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    centre = np.median((b[:, :2] + b[:, 2:]) / 2, axis=0) if len(b) else extent / 2
    start, end = centre.copy(), centre.copy()
    start[axis], end[axis] = size[axis] / 2, extent[axis] - size[axis] / 2
    if reverse:
        start, end = end, start
    a, z = place_window(start, size, photo_wh), place_window(end, size, photo_wh)
    return a + (z - a) * np.linspace(0.0, 1.0, frames)[:, None]


def window_affine(window: np.ndarray, out_wh: Sequence[float] = (OUT_W, OUT_H)) -> np.ndarray:
    """The 2x3 affine mapping photo pixels inside ``window`` onto the output frame."""
    s = out_wh[0] / (window[2] - window[0])
    return np.array([[s, 0.0, -window[0] * s], [0.0, s, -window[1] * s]])


def place_affine(face: np.ndarray, face_px: float, at: Sequence[float]) -> np.ndarray:
    """The 2x3 affine that makes ``face``'s shorter side ``face_px`` and centres it at ``at``."""
    face = np.asarray(face, np.float64)
    s = face_px / float(shorter_sides(face))
    c = (face[:2] + face[2:]) / 2
    return np.array([[s, 0.0, at[0] - s * c[0]], [0.0, s, at[1] - s * c[1]]])


def move_boxes(boxes: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Boxes (N, 4) through an axis-aligned affine (scale + shift), as the image moves."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    a = np.asarray(affine, np.float64)
    xs = b[:, [0, 2]] * a[0, 0] + a[0, 2]
    ys = b[:, [1, 3]] * a[1, 1] + a[1, 2]
    return np.stack([xs.min(1), ys.min(1), xs.max(1), ys.max(1)], axis=1)


def _intersect(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.concatenate([np.maximum(a[..., :2], b[..., :2]), np.minimum(a[..., 2:], b[..., 2:])],
                          axis=-1)


def _area(r: np.ndarray) -> np.ndarray:
    return np.clip(r[..., 2] - r[..., 0], 0, None) * np.clip(r[..., 3] - r[..., 1], 0, None)


def visible_fraction(boxes: np.ndarray, view: np.ndarray,
                     occluders: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Share of each box's area inside ``view`` and not under any occluder rectangle.

    Exact (inclusion-exclusion over the occluders; clips have at most a few).
    """
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    inside = _intersect(b, np.asarray(view, np.float64))
    vis = _area(inside)
    occ = [np.asarray(o, np.float64) for o in occluders]
    for k in range(1, len(occ) + 1):
        for combo in itertools.combinations(occ, k):
            r = inside
            for o in combo:
                r = _intersect(r, o)
            vis = vis - (-1) ** (k + 1) * _area(r)
    area = _area(b)
    return np.where(area > 0, vis / np.where(area > 0, area, 1), 0.0)


# --------------------------------------------------------------------------- clips


@dataclass(frozen=True)
class Layer:
    """One photo drawn into a frame: ``src`` (photo pixels) moved by ``affine``."""

    photo: int  # index into ClipPlan.scenes
    affine: np.ndarray  # (2, 3)
    src: np.ndarray  # (4,) the part of the photo shown

    def rect(self) -> np.ndarray:
        """Where the layer lands in the frame (x0, y0, x1, y1, may reach outside)."""
        return move_boxes(self.src, self.affine)[0]


@dataclass
class ClipPlan:
    """Everything that makes a clip; the people are every annotated box of ``scenes``, in order."""

    kind: str
    name: str
    scenes: list[Scene]
    frames: list[list[Layer]]  # per frame, bottom layer first
    size: tuple[int, int] = (OUT_W, OUT_H)
    fps: float = FPS
    queued: list[int] = field(default_factory=list)  # a queue's people (the answer: 1 event each)
    grey: bool = False  # the photos made grey, as a camera in infrared sends them at night

    @property
    def labels(self) -> list[str]:
        return [lab for sc in self.scenes for lab in sc.labels]

    @property
    def person_photo(self) -> list[str]:
        return [sc.image.stem for sc in self.scenes for _ in sc.labels]


@cache
def photo_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the image."""
    from PIL import Image

    with Image.open(path) as im:
        return im.size


def photo_rng(seed: int, *names: str) -> np.random.Generator:
    """An RNG that depends only on the seed and the given names (never on the rest of the run)."""
    words = [int(hashlib.sha256(n.encode("utf-8")).hexdigest()[:8], 16) for n in names]
    return np.random.default_rng([seed, *words])


def _whole(scene: Scene) -> np.ndarray:
    w, h = photo_size(scene.image)
    return np.array([0.0, 0.0, w, h])


def walkup_clip(scene: Scene, seed: int, frames: int = FRAMES, zoom: float = ZOOM) -> ClipPlan:
    """The camera zooms from the whole photo toward one (seeded) face, or toward the photo's
    centre when nobody is annotated in it (any event there is then a false alarm)."""
    wh = photo_size(scene.image)
    if len(scene.labels):
        face = scene.boxes[photo_rng(seed, "walkup", scene.image.stem).integers(len(scene.labels))]
    else:
        face = np.array([0.45 * wh[0], 0.45 * wh[1], 0.55 * wh[0], 0.55 * wh[1]])
    wins = zoom_windows(wh, face, frames, zoom)
    src = _whole(scene)
    return ClipPlan("walkup", f"walkup-{scene.image.stem}", [scene],
                    [[Layer(0, window_affine(w), src)] for w in wins])


def pan_clip(scene: Scene, seed: int, frames: int = FRAMES, zoom: float = PAN_ZOOM) -> ClipPlan:
    """A zoomed-in window pans across a photo of several faces (direction seeded)."""
    reverse = bool(photo_rng(seed, "pan", scene.image.stem).integers(2))
    wins = pan_windows(photo_size(scene.image), scene.boxes, frames, zoom, reverse)
    src = _whole(scene)
    return ClipPlan("pan", f"pan-{scene.image.stem}", [scene],
                    [[Layer(0, window_affine(w), src)] for w in wins])


def _big_faces(scene: Scene, labels: Iterable[str] | None = None) -> np.ndarray:
    ok = shorter_sides(scene.boxes) >= MIN_SOURCE_PX
    if labels is not None:
        ok &= np.isin(scene.labels, list(labels))
    return np.flatnonzero(ok)


def around_face(scene: Scene, face: np.ndarray, context: float) -> np.ndarray:
    """The part of the photo shown with a cut-out face: a square of ``context`` x the face's
    longer side around it (within the photo); ``context`` 0 shows the whole photo."""
    if context <= 0:
        return _whole(scene)
    c = (face[:2] + face[2:]) / 2
    half = context * float(np.max(face[2:] - face[:2])) / 2
    return _intersect(np.concatenate([c - half, c + half]), _whole(scene))


def crossing_clip(far: Scene, near: Scene, seed: int, frames: int = FRAMES) -> ClipPlan:
    """Two faces with their context cross a neutral background; the near one walks in front."""
    rng = photo_rng(seed, "crossing", far.image.stem, near.image.stem)
    left_to_right = bool(rng.integers(2))
    plans = []
    for i, sc in enumerate((far, near)):
        face = sc.boxes[rng.choice(_big_faces(sc))]
        src = around_face(sc, face, CROSS_CONTEXT)
        xs = np.linspace(0.12, 0.88, frames) * OUT_W
        if left_to_right == bool(i):
            xs = xs[::-1]
        plans.append([Layer(i, place_affine(face, CROSS_FACE_PX[i], (x, CROSS_Y[i] * OUT_H)), src)
                      for x in xs])
    return ClipPlan("crossing", f"crossing-{far.image.stem}+{near.image.stem}", [far, near],
                    [list(f) for f in zip(*plans, strict=True)])


def queue_clip(people: Sequence[tuple[Scene, int]], name: str = "queue",
               in_view_s: float = QUEUE_IN_VIEW_S, gap_s: float = QUEUE_GAP_S,
               fps: float = FPS, context: float = QUEUE_CONTEXT) -> ClipPlan:
    """One person after another at the same spot and size, empty background in between. Only
    ``context`` x the face of their photo is shown (around_face): the people next to them in
    the photo are not in the queue, and their events would be counted against it."""
    on, gap = round(in_view_s * fps), round(gap_s * fps)
    at = (QUEUE_FACE_AT[0] * OUT_W, QUEUE_FACE_AT[1] * OUT_H)
    frames: list[list[Layer]] = []
    offsets = np.cumsum([0] + [len(sc.labels) for sc, _ in people])
    for i, (sc, face) in enumerate(people):
        if i:
            frames += [[] for _ in range(gap)]
        box = sc.boxes[face]
        layer = Layer(i, place_affine(box, QUEUE_FACE_PX, at), around_face(sc, box, context))
        frames += [[layer] for _ in range(on)]
    return ClipPlan("queue", name, [sc for sc, _ in people], frames, fps=fps,
                    queued=[int(offsets[i]) + face for i, (_, face) in enumerate(people)])


def queue_people(scenes: Sequence[Scene], n: int, seed: int) -> list[tuple[Scene, int]]:
    """``n`` seeded photos of the part, each with one big enough without_mask face."""
    rng = photo_rng(seed, "queue")
    cands = [sc for sc in scenes if len(_big_faces(sc, ["without_mask"]))]
    picks = [cands[i] for i in rng.permutation(len(cands))[:n]]
    return [(sc, int(rng.choice(_big_faces(sc, ["without_mask"])))) for sc in picks]


def build_plans(scenes: Sequence[Scene], kinds: Sequence[str], seed: int, frames: int = FRAMES,
                limit: int | None = None, queue_n: int = QUEUE_PEOPLE,
                queue_context: float = QUEUE_CONTEXT) -> list[ClipPlan]:
    """The clips of each kind (at most ``limit`` per kind) from one part's photos."""
    plans: list[ClipPlan] = []
    for kind in kinds:
        if kind == "walkup":
            made = [walkup_clip(sc, seed, frames) for sc in scenes[:limit]]
        elif kind == "pan":
            many = [sc for sc in scenes if len(sc.labels) >= PAN_MIN_FACES]
            made = [pan_clip(sc, seed, frames) for sc in many[:limit]]
        elif kind == "crossing":
            cands = [sc for sc in scenes if len(_big_faces(sc))]
            order = photo_rng(seed, "crossing-pairs").permutation(len(cands))
            pairs = list(zip(order[0::2], order[1::2], strict=False))[:limit]
            made = [crossing_clip(cands[a], cands[b], seed, frames) for a, b in pairs]
        elif kind == "queue":
            people = queue_people(scenes, queue_n, seed)
            made = [queue_clip(people, context=queue_context)] if people and limit != 0 else []
        else:
            raise ValueError(f"unknown clip kind {kind!r}; known: {', '.join(KINDS)}")
        plans += made
    return plans


def clip_truth(plan: ClipPlan) -> np.ndarray:
    """Truth boxes (F, P, 4) in frame pixels, clipped to what is in view; NaN = no truth."""
    sizes = [len(sc.labels) for sc in plan.scenes]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    truth = np.full((len(plan.frames), int(offsets[-1]), 4), np.nan)
    frame_rect = np.array([0.0, 0.0, *plan.size])
    for t, layers in enumerate(plan.frames):
        rects = [layer.rect() for layer in layers]
        for j, layer in enumerate(layers):
            moved = move_boxes(plan.scenes[layer.photo].boxes, layer.affine)
            view = _intersect(frame_rect, rects[j])
            ok = visible_fraction(moved, view, rects[j + 1:]) >= VISIBLE
            idx = offsets[layer.photo] + np.flatnonzero(ok)
            truth[t, idx] = _intersect(moved[ok], view)
    return truth


# --------------------------------------------------------------------------- rendering


@functools.lru_cache(maxsize=4096)
def _digest(path: Path, size: int, mtime_ns: int) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def photo_digest(path: Path) -> str:
    """The photo's content hash (read once per run for a file that did not change)."""
    st = path.stat()
    return _digest(path, st.st_size, st.st_mtime_ns)


def clip_key(plan: ClipPlan) -> str:
    """A hash of everything that makes the clip's pixels (so a cached file can be reused)."""
    spec = {
        "v": RENDER_VERSION, "size": plan.size, "fps": plan.fps, "quality": JPEG_QUALITY,
        "background": BACKGROUND,
        # the content, not the name and size: another set's photo of a dev name (or one
        # replaced by a picture of the same size) took the old photo's cached clip
        "photos": [[sc.image.name, photo_digest(sc.image)] for sc in plan.scenes],
        "frames": [[[ly.photo, np.round(ly.affine, 6).tolist(), np.round(ly.src, 3).tolist()]
                    for ly in layers] for layers in plan.frames],
    }
    if plan.grey:  # only then: the colour clips' cached files keep their keys
        spec["grey"] = True
    return hashlib.sha256(json.dumps(spec).encode("utf-8")).hexdigest()[:16]


def _pixel_rect(r: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (int(round(v)) for v in r)
    return max(x0, 0), max(y0, 0), min(x1, size[0]), min(y1, size[1])


def render_frame(plan: ClipPlan, images: Sequence[np.ndarray], t: int) -> np.ndarray:
    """Frame ``t`` as BGR: background, then each layer's part of its photo, bottom first."""
    w, h = plan.size
    frame = np.empty((h, w, 3), np.uint8)
    frame[:] = BACKGROUND
    for layer in plan.frames[t]:
        x0, y0, x1, y1 = _pixel_rect(layer.rect(), plan.size)
        if x1 <= x0 or y1 <= y0:
            continue
        a = layer.affine - np.array([[0, 0, x0], [0, 0, y0]])
        frame[y0:y1, x0:x1] = cv2.warpAffine(
            images[layer.photo], a, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT, borderValue=BACKGROUND)
    return frame


def write_clip(plan: ClipPlan, path: Path) -> None:
    """The clip as an MJPG .avi (OpenCV's own MJPEG writer, fixed quality), written atomically."""
    images = [stored_pixels(sc.image, plan.grey) for sc in plan.scenes]  # the boxes' pixels
    for sc, im in zip(plan.scenes, images, strict=True):
        if im is None:
            raise OSError(f"{sc.image}: unreadable image")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.avi")
    writer = cv2.VideoWriter(str(tmp), cv2.CAP_OPENCV_MJPEG, cv2.VideoWriter.fourcc(*"MJPG"),
                             plan.fps, plan.size)
    if not writer.isOpened():
        raise OSError(f"{tmp}: OpenCV cannot write an MJPG clip here")
    writer.set(cv2.VIDEOWRITER_PROP_QUALITY, JPEG_QUALITY)
    try:
        for t in range(len(plan.frames)):
            writer.write(render_frame(plan, images, t))
    finally:
        writer.release()
    if clip_frames(tmp) != len(plan.frames):  # VideoWriter says nothing of a failed write
        tmp.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free // 1024
        raise OSError(f"{path.parent}: cannot write the clip {path.name} in this clip folder "
                      f"(it does not read back whole; {free} KiB free); free some space or give "
                      "another --cache")
    os.replace(tmp, path)


def clip_frames(path: Path) -> int:
    """Frames in an MJPG .avi by its index; 0 when the file is shorter than its RIFF header says
    (the writer patches the header in place at the end, so a write cut short still claims the
    whole size), has no index (the last thing written) or cannot be opened. Reads no image."""
    try:
        with path.open("rb") as f:
            head = f.read(12)
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return 0
    if len(head) < 12 or head[:4] != b"RIFF" or int.from_bytes(head[4:8], "little") + 8 > size:
        return 0
    cap = cv2.VideoCapture(str(path), cv2.CAP_OPENCV_MJPEG)  # OpenCV's own reader needs the index
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()


def ensure_clip(plan: ClipPlan, folder: Path) -> tuple[Path, bool]:
    """The clip's file in ``folder``, rendered when missing or not whole; (path, rendered now).

    A cached file is checked before use: a clip cut short (a full disk, a killed run) was
    reused for ever as 'cannot open this video file' or 'the loop saw 8 of 45 frames'."""
    path = folder / f"{plan.name}-{clip_key(plan)}.avi"
    if path.is_file() and clip_frames(path) == len(plan.frames):
        return path, False
    write_clip(plan, path)
    return path, True


# --------------------------------------------------------------------------- the maskd loop


def apply_overrides(data: dict[str, Any], items: Sequence[str]) -> None:
    """``SECTION.KEY=VALUE`` overrides (values parsed as YAML) into a config mapping, as if the
    YAML file had them; unknown keys are left for the config's own validation to name."""
    for item in items:
        key, sep, value = item.partition("=")
        *parents, leaf = key.split(".")
        target: Any = data
        for p in parents:
            target = target.setdefault(p, {}) if isinstance(target, dict) else None
        if not sep or not leaf or not isinstance(target, dict):
            raise ConfigError(f"-o/--grid {item!r}: expected SECTION.KEY=VALUE, "
                              "e.g. tracking.end_after_s=1 or detector.score_threshold=0.6")
        target[leaf] = yaml.safe_load(value) if value else None


def eval_config(path: Path | None, overrides: Sequence[str], jobs: int,
                cores: int | None = None) -> Config:
    """The settings every clip runs with: the file (or defaults) + -o, as an installed Pi has
    them (YuNet as `run` finds it, else ../shared's, when no model is set; a named YuNet file that is missing is a
    ConfigError, not BlazeFace), preview and MQTT off, and the classifier limited to its share
    of the cores. A file with a ``cameras:`` map gives its first camera's settings (its
    tracking and zones, and the shared detector and classifier): the clips are one camera's
    view, and writing a top-level source into the map was a '<top>' config error."""
    asked_file = load_config(path)
    if asked_file.cameras:  # the loop is one camera's: the first's (as `run` orders them)
        asked_file = asked_file.cameras_resolved()[0]
    given = asked_file.model_dump(mode="json", exclude_unset=True)
    apply_overrides(given, overrides)
    asked = parse_config(given, "-o/--grid" if overrides else str(path))
    missing = missing_yunet(asked.detector)
    if missing:  # kind auto would score BlazeFace instead of the named YuNet file
        raise ConfigError(missing)
    data = asked.model_dump(mode="json")
    det = data["detector"]
    if det["kind"] in ("auto", "yunet") and det["model"] is None:
        # as `run` finds it (`maskd models fetch`'s models/, $MASKD_YUNET), as eval_scenes does
        det.update(kind="yunet", model=str(find_yunet_model() or SHARED_YUNET))
    cores = cores or len(os.sched_getaffinity(0))
    cls = data["classifier"]
    cls["threads"] = max(1, min(int(cls["threads"]), cores // max(jobs, 1)))
    data["source"].update(kind="opencv", uri=None, loop=False)
    data["jsonl"]["path"] = None
    data["mqtt"]["url"] = None
    data["preview"] = PreviewConfig().model_dump(mode="json")
    return parse_config(data, "eval_video")


def clip_config(cfg: Config, clip: Path, fps: float, workdir: Path) -> Config:
    """``cfg`` reading ``clip`` and writing events to ``workdir``/events.jsonl."""
    data = cfg.model_dump(mode="json")
    data["source"].update(uri=str(clip), fps=fps)
    data["jsonl"]["path"] = str(workdir / "events.jsonl")
    data["state_dir"] = str(workdir)
    return parse_config(data, "eval_video")


def read_starts(jsonl: Path, size: tuple[int, int]) -> list[dict[str, Any]]:
    """The start events of a run: id, frame, box in pixels, score."""
    out = []
    if not jsonl.is_file():
        return out
    for line in jsonl.read_text(encoding="utf-8").splitlines():
        ev = json.loads(line)
        if ev["event_type"] != "start":
            continue
        b = np.asarray(ev["box"], np.float64) * [size[0], size[1], size[0], size[1]]
        frame = -1 if ev.get("frame_seq") is None else int(ev["frame_seq"])
        out.append({"event_id": ev["event_id"], "frame": frame, "box": b.round(1).tolist(),
                    "score": ev["score"]})
    return out


def frame_crops(clip: Path, starts: Sequence[dict[str, Any]], margin: float = 0.3,
                side: int = 96) -> list[np.ndarray]:
    """The face crop of each start event at its frame (for the false-alarm sheet)."""
    from maskd.geometry import crop_face

    cap = cv2.VideoCapture(str(clip))
    out = []
    try:
        for s in starts:
            cap.set(cv2.CAP_PROP_POS_FRAMES, max(s["frame"], 0))
            ok, image = cap.read()
            crop = crop_face(image, tuple(s["box"]), margin) if ok else np.zeros((side, side, 3))
            out.append(cv2.resize(crop.astype(np.uint8), (side, side)))
    finally:
        cap.release()
    return out


@dataclass
class ClipTask:
    plan: ClipPlan
    config: dict[str, Any]  # Config.model_dump(mode="json"); rebuilt (validated) in the worker
    cache: Path | None  # None: render into a temporary folder
    crops: bool = False
    memo: Path | None = None  # --memo: replay the detector's and classifier's outputs


def memo_code() -> tuple[Path, ...]:
    """The detector's and the classifier's source as imported (a ``PYTHONPATH`` checkout of
    another revision included)."""
    import maskd.classifier
    import maskd.detectors

    return (Path(maskd.detectors.__file__).parent, Path(maskd.classifier.__file__))


def code_fingerprint(paths: Sequence[Path]) -> str:
    """A hash of the Python source under ``paths``: a memo made before a change to the
    detector's or the classifier's code must not be replayed after it (their settings and the
    model file alone do not show such a change)."""
    h = hashlib.sha256()
    for root in paths:
        files = sorted(root.rglob("*.py")) if root.is_dir() else [root]
        for f in files:
            rel = f.relative_to(root.parent).as_posix()
            h.update(rel.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


@functools.cache
def memo_code_key() -> str:
    """The fingerprint of :func:`memo_code`, once per process (every clip's memo asks)."""
    return code_fingerprint(memo_code())


class Memo:
    """Replays what the detector and the classifier said for the same input (``--memo``).

    Sweeps of the tracking and event settings re-run the real loop on the same clips many
    times; the detector and classifier are deterministic, so their outputs for the same frame
    and the same crop can be replayed instead of recomputed. Keyed by the clip, the detector
    settings, the classifier (model file and crop bytes) and the source of both: another
    detector, model or code gets its own memo. Never used for reported numbers without saying so.
    """

    def __init__(self, folder: Path, clip: Path, cfg: Config) -> None:
        det = json.dumps(cfg.detector.model_dump(mode="json"), sort_keys=True)
        from maskd.classifier import model_path

        model = model_path(cfg.classifier.model)
        stat = model.stat() if model.is_file() else None
        clf = f"{model.resolve()}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}"
        # v2: faces keyed by the frame's bytes, not by call order (the motion gate skips calls);
        # v3: the classifier's features are replayed too; v4: keyed by the code that computes them
        code = memo_code_key()
        key = hashlib.sha256(f"v4|{clip.name}|{det}|{clf}|{code}".encode()).hexdigest()[:16]
        self.path = folder / f"{clip.stem}-{key}.pkl"
        self.faces: dict[bytes, Any] = {}
        self.scores: dict[bytes, tuple[float, np.ndarray | None]] = {}
        if self.path.is_file():
            self.faces, self.scores = pickle.loads(self.path.read_bytes())

    def wrap(self, service: Any) -> None:
        """Put the memo between the service's pipeline and its detector and classifier."""
        pipe = service.pipeline
        detector, classifier = pipe.detector, pipe.classifier
        memo = self

        class Detector:
            def detect(self, image: np.ndarray) -> list[Any]:
                key = hashlib.sha1(np.ascontiguousarray(image).tobytes()).digest()
                if key not in memo.faces:
                    memo.faces[key] = detector.detect(image)
                return memo.faces[key]

        class Classifier:
            input_size = classifier.input_size

            def predict_embedded(self, crops_rgb: Sequence[np.ndarray]
                                 ) -> tuple[np.ndarray, np.ndarray | None]:
                keys = [hashlib.sha1(np.ascontiguousarray(c).tobytes()
                                     + str(c.shape).encode()).digest() for c in crops_rgb]
                todo = [i for i, k in enumerate(keys) if k not in memo.scores]
                if todo:
                    chunk = [crops_rgb[i] for i in todo]
                    fresh, feats = scores_and_features(classifier, chunk)
                    for n, (i, p) in enumerate(zip(todo, fresh, strict=True)):
                        memo.scores[keys[i]] = (float(p), None if feats is None else feats[n])
                got = [memo.scores[k] for k in keys]
                scores = np.array([g[0] for g in got], np.float32)
                if not got or got[0][1] is None:
                    return scores, None
                return scores, np.stack([g[1] for g in got])

            def predict(self, crops_rgb: Sequence[np.ndarray]) -> np.ndarray:
                return self.predict_embedded(crops_rgb)[0]

        pipe.detector, pipe.classifier = Detector(), Classifier()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps((self.faces, self.scores)))
        tmp.replace(self.path)


def init_worker(threads: int) -> None:
    """Workers share the cores; maskd's per-event log lines (and OpenCV's per-clip warnings
    about DNN targets) would drown the progress."""
    cv2.setNumThreads(threads)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    logging.getLogger("maskd").setLevel(logging.WARNING)
    os.environ.pop("NOTIFY_SOCKET", None)  # never talk to systemd from an evaluation


def run_clip(task: ClipTask) -> dict[str, Any]:
    """Render (or reuse) one clip and run it through ``maskd.service``; its start events."""
    from maskd.service import build

    plan = task.plan
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="eval_video-") as tmp:
        clip, rendered = ensure_clip(plan, task.cache or Path(tmp))
        t1 = time.perf_counter()
        cfg = clip_config(parse_config(task.config), clip, plan.fps, Path(tmp))
        service = build(cfg, exit_at_end=True).loops[0]
        memo = Memo(task.memo, clip, cfg) if task.memo else None
        if memo:
            memo.wrap(service)
        code = service.run()
        if memo:
            memo.save()
        if code != 0:
            raise RuntimeError(f"{plan.name}: the maskd loop ended with status {code}")
        starts = read_starts(Path(tmp) / "events.jsonl", plan.size)
        crops = frame_crops(clip, starts) if task.crops else None
        frames = service.frames
    return {"name": plan.name, "starts": starts, "frames": frames, "rendered": rendered,
            "render_s": t1 - t0, "run_s": time.perf_counter() - t1, "crops": crops}


def run_all(tasks: list[ClipTask], jobs: int, threads: int) -> list[dict[str, Any]]:
    """Every clip, ``jobs`` at a time (spawned workers: no inherited threads or locks)."""
    order = sorted(range(len(tasks)), key=lambda i: -len(tasks[i].plan.frames))  # long first
    results: dict[int, dict[str, Any]] = {}

    def note(done: int) -> None:
        if done % 50 == 0 or done == len(tasks):
            print(f"eval_video: {done}/{len(tasks)} clips", file=sys.stderr, flush=True)

    if jobs <= 1:
        init_worker(threads)
        for n, i in enumerate(order, 1):
            results[i] = run_clip(tasks[i])
            note(n)
    else:
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(jobs, initializer=init_worker, initargs=(threads,)) as pool:
            it = pool.imap(run_clip, [tasks[i] for i in order])
            for n, (i, res) in enumerate(zip(order, it, strict=True), 1):
                results[i] = res
                note(n)
    return [results[i] for i in range(len(tasks))]


# --------------------------------------------------------------------------- scoring (pure)


def judged_people(truth: np.ndarray, min_px: float = JUDGE_PX,
                  min_frames: int = JUDGE_FRAMES) -> np.ndarray:
    """(P,) True for people whose face in view is >= ``min_px`` for >= ``min_frames`` frames."""
    side = shorter_sides(truth)
    return (np.nan_to_num(side, nan=0.0) >= min_px).sum(axis=0) >= min_frames


def assign_starts(frames: Sequence[int], boxes: np.ndarray, truth: np.ndarray,
                  iou_min: float = IOU) -> np.ndarray:
    """For each start event, the person whose truth box overlaps it best in its frame, or -1."""
    out = np.full(len(frames), -1, dtype=np.int64)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    for e, t in enumerate(frames):
        if not 0 <= t < len(truth):
            continue
        present = np.flatnonzero(~np.isnan(truth[t, :, 0]))
        if not len(present):
            continue
        iou = box_iou(b[e], truth[t, present])[0]
        k = int(np.argmax(iou))
        if iou[k] >= iou_min:
            out[e] = present[k]
    return out


COUNTS = ("clips", "frames", "unmasked", "unmasked_hit", "masked", "masked_hit", "events",
          "events_unmasked", "fa_masked", "fa_nobody", "neutral", "duplicates", "queued",
          "queued_hit", "queued_events", "people")


def score_clip(truth: np.ndarray, labels: Sequence[str], start_frames: Sequence[int],
               start_boxes: np.ndarray, fps: float = FPS, iou_min: float = IOU,
               min_px: float = JUDGE_PX, min_frames: int = JUDGE_FRAMES,
               queued: Sequence[int] = ()) -> dict[str, Any]:
    """Counters, latencies and per-event verdicts of one clip (rules: module docstring).

    ``people``, what the events should number, is the queued people in a queue and the judged
    unmasked people in any other clip.
    """
    judged = judged_people(truth, min_px, min_frames)
    person = assign_starts(start_frames, start_boxes, truth, iou_min)
    verdicts = []
    for p in person:
        if p < 0:
            verdicts.append("fa_nobody")
        elif labels[p] == "mask_weared_incorrect":
            verdicts.append("incorrect")
        elif not judged[p]:
            verdicts.append("small")
        else:
            verdicts.append("tp" if labels[p] == "without_mask" else "fa_masked")
    in_view = ~np.isnan(truth[..., 0])
    c = dict.fromkeys(COUNTS, 0)
    c.update(clips=1, frames=len(truth), events=len(person))
    latency: list[float] = []
    n_events = np.bincount(person[person >= 0], minlength=len(labels))
    for p, label in enumerate(labels):
        if not judged[p] or label not in ("with_mask", "without_mask"):
            continue
        key = "unmasked" if label == "without_mask" else "masked"
        c[key] += 1
        c[f"{key}_hit"] += int(n_events[p] > 0)
        if key == "unmasked" and n_events[p]:
            c["duplicates"] += int(n_events[p]) - 1
            first_event = min(int(f) for f, q in zip(start_frames, person, strict=True) if q == p)
            latency.append((first_event - int(np.argmax(in_view[:, p]))) / fps)
    c["events_unmasked"] = verdicts.count("tp")
    c["fa_masked"] = verdicts.count("fa_masked")
    c["fa_nobody"] = verdicts.count("fa_nobody")
    c["neutral"] = verdicts.count("incorrect") + verdicts.count("small")
    c["queued"] = len(queued)
    c["queued_hit"] = sum(int(n_events[p] > 0) for p in queued)
    c["queued_events"] = sum(int(n_events[p]) for p in queued)
    c["people"] = c["queued"] if len(queued) else c["unmasked"]
    return {"counts": c, "latency_s": latency, "person": person.tolist(), "verdicts": verdicts,
            "judged": judged.tolist()}


def summarize(scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Rates over clips: counters added up, latencies pooled."""
    c = dict.fromkeys(COUNTS, 0)
    lat: list[float] = []
    for s in scores:
        for k in COUNTS:
            c[k] += s["counts"][k]
        lat += s["latency_s"]
    fa = c["fa_masked"] + c["fa_nobody"]
    r = rate(c["unmasked_hit"], c["unmasked"])
    p = rate(c["events_unmasked"], c["events_unmasked"] + fa)
    return {**c, "false_alarms": fa, "recall": r, "precision": p, "f1": f1_rate(p, r),
            "masked_flagged": rate(c["masked_hit"], c["masked"]),
            "duplicates_per_person": rate(c["duplicates"], c["unmasked"]),
            "latency_median_s": round(float(np.median(lat)), 3) if lat else None,
            "latency_p90_s": round(float(np.percentile(lat, 90)), 3) if lat else None,
            "events_per_person": rate(c["events"], c["people"])}


# How far each rate could move on another set of photos like these (eval_scenes'
# bootstrap_interval over clips: a walk-up is one photo, and the people of one clip are not
# independent). The selection rule's 0.01 tie margin is far inside these intervals.
INTERVAL_KEYS = ("unmasked", "unmasked_hit", "masked", "masked_hit", "events_unmasked",
                 "fa_masked", "fa_nobody")


def _event_rates(s: np.ndarray) -> dict[str, np.ndarray]:
    u, uh, mk, mh, eu, fm, fn = s
    r, p = ratio(uh, u), ratio(eu, eu + fm + fn)
    return {"recall": r, "precision": p, "f1": f1_of(p, r), "masked_flagged": ratio(mh, mk)}


def interval(scores: Sequence[dict[str, Any]], draws: int = INTERVAL_DRAWS,
             level: float = INTERVAL_LEVEL, seed: int = 0) -> dict[str, list[float] | None]:
    """The central ``level`` interval of recall, precision, F1 and masked flagged when the
    clips are drawn again with replacement; None for a rate no draw defines."""
    m = np.array([[s["counts"][k] for k in INTERVAL_KEYS] for s in scores],
                 np.float64).reshape(-1, len(INTERVAL_KEYS))
    return bootstrap_interval(m, _event_rates, draws, level, seed)


def render_interval(clips: int, iv: dict[str, list[float] | None]) -> str:
    """One line under the table: the total's intervals."""
    def span(name: str, pct: bool = False) -> str:
        b = iv[name]
        return "-" if b is None else f"{_fmt(b[0], pct)}-{_fmt(b[1], pct)}"
    return (f"{100 * INTERVAL_LEVEL:.0f} % interval of the total over another {clips} clips like "
            f"these (bootstrap, {INTERVAL_DRAWS} draws): recall {span('recall')}, precision "
            f"{span('precision')}, F1 {span('f1')}, masked flagged {span('masked_flagged', True)}")


def render_queue(q: dict[str, Any]) -> str:
    """The queue's answer in words: events against the queued people, and where the rest went."""
    return (f"queue: {q['events']} events for {q['queued']} queued people, {q['queued_hit']} of "
            f"them reached (second events on them: {q['queued_events'] - q['queued_hit']}); "
            f"{q['events'] - q['queued_events']} on others in view, {q['false_alarms']} of those "
            f"false alarms")


# --------------------------------------------------------------------------- reports


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.1f}%" if pct else f"{v:.3f}" if isinstance(v, float) else str(v)


def render_table(rows: dict[str, dict[str, Any]]) -> str:
    """One line per clip kind (and the total)."""
    head = ["kind", "clips", "unmasked", "masked", "recall", "precision", "F1", "masked flagged",
            "dup/person", "lat med s", "lat p90 s", "events/people"]
    body = [[k, str(m["clips"]), str(m["unmasked"]), str(m["masked"]), _fmt(m["recall"]),
             _fmt(m["precision"]), _fmt(m["f1"]), _fmt(m["masked_flagged"], pct=True),
             _fmt(m["duplicates_per_person"]), _fmt(m["latency_median_s"]),
             _fmt(m["latency_p90_s"]), f"{m['events']}/{m['people']}"] for k, m in rows.items()]
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in
                       enumerate(zip(row, widths, strict=True))) for row in [head, *body]]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def save_plots(rows: dict[str, dict[str, Any]], latencies: dict[str, list[float]],
               folder: Path) -> list[Path]:
    """eval_video_latency.png (seconds to the first event, per kind) and eval_video_kinds.png (rates per kind)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir(folder)
    fig, ax = plt.subplots(figsize=(7, 4))
    data = [(k, v) for k, v in latencies.items() if v]
    if data:
        top = max(max(v) for _, v in data)
        ax.hist([v for _, v in data], bins=np.linspace(0, max(top, 1 / FPS), 31),
                label=[k for k, _ in data], stacked=True)
        ax.legend()
    ax.set_xlabel("seconds from the face's first frame in view to its start event")
    ax.set_ylabel("judged unmasked people")
    fig.tight_layout()
    try:
        save_figure(fig, folder / "eval_video_latency.png", dpi=120)
    finally:
        plt.close(fig)

    metrics = [("recall", "recall"), ("precision", "precision"), ("f1", "F1"),
               ("masked_flagged", "masked flagged")]
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(metrics)
    x = np.arange(len(rows))
    for i, (key, label) in enumerate(metrics):
        ax.bar(x + i * width, [m[key] or 0.0 for m in rows.values()], width, label=label)
    ax.set_xticks(x + width * (len(metrics) - 1) / 2, list(rows))
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        save_figure(fig, folder / "eval_video_kinds.png", dpi=120)
    finally:
        plt.close(fig)
    return [folder / "eval_video_latency.png", folder / "eval_video_kinds.png"]


def photo_at(plan: ClipPlan, frame: int, box: Sequence[float]) -> str:
    """The photo under a box's centre in a frame (the top layer), or the clip's name."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    if 0 <= frame < len(plan.frames):
        for layer in reversed(plan.frames[frame]):
            x0, y0, x1, y1 = layer.rect()
            if x0 <= cx < x1 and y0 <= cy < y1:
                return plan.scenes[layer.photo].image.stem
    return plan.name


def save_sheet(items: Sequence[tuple[np.ndarray, str, str]], path: Path, cols: int = 8) -> None:
    """A contact sheet of face crops, each with two caption lines below."""
    side, pad, text_h = 96, 4, 30
    cell_w, cell_h = side + 2 * pad, side + text_h + pad
    rows = max(1, -(-len(items) // cols))
    sheet = np.full((rows * cell_h, cols * cell_w, 3), 255, np.uint8)
    for n, (crop, line1, line2) in enumerate(items):
        y, x = (n // cols) * cell_h + pad, (n % cols) * cell_w + pad
        sheet[y:y + side, x:x + side] = cv2.resize(crop, (side, side))
        for k, line in enumerate((line1, line2)):
            cv2.putText(sheet, line[:17], (x, y + side + 12 + 12 * k), cv2.FONT_HERSHEY_SIMPLEX,
                        0.33, (0, 0, 0), 1, cv2.LINE_AA)
    if not items:
        cv2.putText(sheet, "no false alarms", (pad, cell_h // 2), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, (0, 0, 0), 1, cv2.LINE_AA)
    write_image(path, sheet)  # one line on a full disk, not an OSError after every clip ran


@dataclass
class Evaluation:
    """What one run found: per-clip details and the summaries per kind and in total."""

    clips: list[dict[str, Any]] = field(default_factory=list)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    intervals: dict[str, dict[str, list[float] | None]] = field(default_factory=dict)
    false_alarms: list[tuple[np.ndarray, str, str]] = field(default_factory=list)


def evaluate(plans: Sequence[ClipPlan], results: Sequence[dict[str, Any]]) -> Evaluation:
    """Score every clip's run and add them up per kind."""
    ev = Evaluation()
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for plan, res in zip(plans, results, strict=True):
        truth = clip_truth(plan)
        starts = res["starts"]
        s = score_clip(truth, plan.labels, [e["frame"] for e in starts],
                       np.array([e["box"] for e in starts]).reshape(-1, 4), plan.fps,
                       queued=plan.queued)
        by_kind.setdefault(plan.kind, []).append(s)
        ev.latencies.setdefault(plan.kind, []).extend(s["latency_s"])
        judged, photos = s["judged"], plan.person_photo
        n_events = np.bincount([p for p in s["person"] if p >= 0], minlength=len(judged))
        in_view = ~np.isnan(truth[..., 0])
        ev.clips.append({
            "name": plan.name, "kind": plan.kind, "frames": len(plan.frames),
            "queued": plan.queued,
            "frames_run": res["frames"], "photos": [sc.image.stem for sc in plan.scenes],
            "counts": s["counts"], "latency_s": s["latency_s"],
            "people": [{"photo": photos[p], "label": lab, "judged": judged[p],
                        "frames_in_view": int(in_view[:, p].sum()),
                        "first_frame": int(np.argmax(in_view[:, p])) if in_view[:, p].any()
                        else None, "events": int(n_events[p])}
                       for p, lab in enumerate(plan.labels)],
            "starts": [{**{k: e[k] for k in ("frame", "box", "score")}, "person": p, "verdict": v}
                       for e, p, v in zip(starts, s["person"], s["verdicts"], strict=True)],
            "rendered": res["rendered"], "render_s": round(res["render_s"], 3),
            "run_s": round(res["run_s"], 3),
        })
        for e, v, crop in zip(starts, s["verdicts"], res["crops"] or [None] * len(starts),
                              strict=True):
            if v.startswith("fa_") and crop is not None:
                where = "masked" if v == "fa_masked" else "nobody"
                ev.false_alarms.append((crop, photo_at(plan, e["frame"], e["box"]),
                                        f"p={e['score']:.2f} {where} {plan.kind}"))
    for kind in KINDS:
        if kind in by_kind:
            ev.rows[kind] = summarize(by_kind[kind])
            ev.intervals[kind] = interval(by_kind[kind])
    every = [s for v in by_kind.values() for s in v]
    ev.rows["total"] = summarize(every)
    ev.intervals["total"] = interval(every)
    return ev


# --------------------------------------------------------------------------- main


def grid_overrides(items: Sequence[str]) -> list[list[str]]:
    """``KEY=V1,V2`` items -> every combination as a list of ``KEY=V`` overrides."""
    axes = []
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise ConfigError(f"--grid {item!r}: expected SECTION.KEY=V1,V2,...")
        axes.append([f"{key}={v}" for v in values.split(",")])
    return [list(combo) for combo in itertools.product(*axes)]


def qualifies(row: dict[str, Any], queue: dict[str, Any] | None) -> bool:
    """Step 2 of the selection rule (docs/eval_video.md)."""
    ok = ((row["masked_flagged"] or 0.0) <= 0.01 and (row["duplicates_per_person"] or 0.0) <= 0.05)
    if queue is not None:
        people = queue["queued"]
        ok = ok and 0.9 * people <= queue["events"] <= 1.05 * people
        ok = ok and queue["queued_hit"] >= 0.9 * people
    return ok


def pick(candidates: Sequence[dict[str, Any]]) -> int:
    """Steps 2-4 of the selection rule over ``{"total": row, "queue": row|None}`` items;
    returns the index of the pick."""
    def f1(i: int) -> float:
        return candidates[i]["total"]["f1"] or 0.0

    def latency(i: int) -> float:
        return candidates[i]["total"]["latency_median_s"] or 0.0

    good = [i for i, c in enumerate(candidates) if qualifies(c["total"], c["queue"])]
    if good:
        best = max(f1(i) for i in good)
        tied = [i for i in good if f1(i) >= best - 0.01]
        return min(tied, key=lambda i: (latency(i), -f1(i)))
    sure = [i for i, c in enumerate(candidates) if (c["total"]["recall"] or 0.0) >= 0.92]
    if sure:
        return min(sure, key=lambda i: (candidates[i]["total"]["masked_flagged"] or 0.0, -f1(i)))
    return max(range(len(candidates)), key=f1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_scene_options(p)
    p.add_argument("--kinds", default=",".join(DEFAULT_KINDS),
                   help=f"comma-separated clip kinds from {', '.join(KINDS)} (default: "
                        f"{','.join(DEFAULT_KINDS)})")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--grey", action="store_true",
                   help="the photos made grey, as a camera in infrared sends them at night")
    p.add_argument("--limit", type=positive_int, help="at most N clips of each kind (trials)")
    p.add_argument("--frames", type=positive_int, default=FRAMES,
                   help=f"frames per walkup/pan/crossing clip (default {FRAMES})")
    p.add_argument("--queue-people", type=positive_int, default=QUEUE_PEOPLE,
                   help=f"people in the queue clip (default {QUEUE_PEOPLE})")
    p.add_argument("--queue-context", type=non_negative_float, default=QUEUE_CONTEXT,
                   help="how much of each queued person's photo is shown: a square of this x "
                        f"the face side (default {QUEUE_CONTEXT}); 0 = the whole photo, "
                        "bystanders included (their events then count against the queue)")
    p.add_argument("--config", type=Path, help="a maskd YAML config (default: built-in defaults); "
                   "with a cameras: map, its first camera's settings (its tracking and zones, "
                   "the shared detector and classifier), as eval_scenes scores such a file's "
                   "detector and classifier")
    p.add_argument("-o", dest="overrides", action="append", default=[],
                   metavar="SECTION.KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--jobs", type=positive_int, default=2, help="clips run in parallel (default 2)")
    p.add_argument("--cache", type=Path, default=CACHE,
                   help="folder of rendered clips, reused across runs (default runs/eval_video/clips)")
    p.add_argument("--no-cache", action="store_true", help="render every clip into a temp folder")
    p.add_argument("--memo", action="store_true",
                   help="replay detector and classifier outputs from runs/eval_video/memo for "
                        "fast sweeps of tracking/event settings (same clip, detector and model)")
    p.add_argument("--grid", action="append", default=[], metavar="SECTION.KEY=V1,V2",
                   help="run every combination of these settings (repeatable), print one line "
                        "each and the pick of the selection rule in docs/eval_video.md (--json "
                        "gets every line; --plot and --sheet draw one run, so not with --grid: "
                        "run the pick without --grid to draw it)")
    p.add_argument("--json", type=Path, help="write every number and per-clip details here")
    p.add_argument("--plot", type=Path, help="save eval_video_latency.png and eval_video_kinds.png "
                   "in this folder (not with --grid)")
    p.add_argument("--sheet", type=Path, help="save a contact sheet PNG of the false alarms (not "
                   "with --grid)")
    args = p.parse_args(argv)
    if args.grid and (args.plot or args.sheet):  # they were silently left out of a grid
        p.error("--plot and --sheet draw one run, not a --grid of them; run the pick again "
                "without --grid to draw it")
    return args


def main(argv: list[str] | None = None) -> int:
    from maskd.commands.run import startup_errors

    args = parse_args(argv)
    # Output places are made and tried now (a file put there and removed): a path inside a
    # file or a read-only disk used to fail after every clip had run. A disk that fills
    # during the run is still one line at the end, and leaves no half file.
    if args.json:
        out_file(args.json)
    if args.sheet:  # its type too: a .txt was a cv2.error traceback after every clip had run
        image_out(args.sheet)
    if args.plot:
        out_dir(args.plot)
    t0 = time.perf_counter()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        print(f"eval_video: unknown clip kind(s) {unknown}; known: {', '.join(KINDS)}",
              file=sys.stderr)
        return 2
    if args.queue_context < 0:
        print(f"eval_video: --queue-context {args.queue_context}: must be 0 (whole photo) or more",
              file=sys.stderr)
        return 2
    jobs = max(1, args.jobs)
    try:
        cfg = eval_config(args.config, args.overrides, jobs)
        skipped: list[str] = []
        scenes = load_scenes(args.scenes, None, args.part, skipped)
    except (ConfigError, OSError, ValueError) as err:
        print(f"eval_video: {err}", file=sys.stderr)
        return 2
    report_skipped("eval_video", skipped)
    plans = build_plans(scenes, kinds, args.seed, args.frames, args.limit, args.queue_people,
                        args.queue_context)
    if args.grey:
        plans = [replace(p, grey=True) for p in plans]
    not_made = {k: NOT_MADE[k] for k in kinds if k in NOT_MADE
                and not any(p.kind == k for p in plans) and args.limit != 0}
    for kind, why in not_made.items():  # was: left out of the table and the report unsaid
        print(f"eval_video: no {kind} clip: {why}", file=sys.stderr)
    if not plans:
        print("eval_video: no clips to run", file=sys.stderr)
        return 1
    cache = None if args.no_cache else args.cache
    if args.grid:
        return run_grid(args, plans, cache, jobs)
    threads = cfg.classifier.threads
    memo = MEMO if args.memo else None
    tasks = [ClipTask(p, cfg.model_dump(mode="json"), cache, args.sheet is not None, memo)
             for p in plans]
    try:
        results = run_all(tasks, jobs, threads)
    except startup_errors() as err:
        print(f"eval_video: {err}", file=sys.stderr)
        return 2
    for plan, res in zip(plans, results, strict=True):
        if res["frames"] != len(plan.frames):  # truth is indexed by frame number
            print(f"eval_video: {plan.name}: the loop saw {res['frames']} of "
                  f"{len(plan.frames)} frames", file=sys.stderr)
    ev = evaluate(plans, results)
    seconds = time.perf_counter() - t0
    frames = sum(len(p.frames) for p in plans)
    rendered = sum(r["rendered"] for r in results)
    per_kind = ", ".join(f"{k} {m['clips']}" for k, m in ev.rows.items() if k != "total")
    print(f"{len(plans)} clips ({per_kind}), {frames} frames, part {args.part}, seed {args.seed}; judged: face >= {JUDGE_PX:g} px "
          f"for >= {JUDGE_FRAMES} frames; IoU >= {IOU}")
    print(render_table(ev.rows))
    if ev.rows["total"]["clips"] > 1:  # one clip has nothing to draw again
        print(render_interval(ev.rows["total"]["clips"], ev.intervals["total"]))
    if "queue" in ev.rows:
        print(render_queue(ev.rows["queue"]))
    print(f"{seconds:.1f} s in all ({rendered} clips rendered, "
          f"{sum(r['render_s'] for r in results):.1f} s rendering and "
          f"{sum(r['run_s'] for r in results):.1f} s in the maskd loop over {jobs} jobs x "
          f"{threads} classifier threads)")
    if args.json:
        report = {"scenes": str(args.scenes), "part": args.part, "grey": args.grey,
                  "skipped": skipped,
                  "not_made": not_made,
                  "seed": args.seed, "kinds": kinds, "limit": args.limit, "frames": args.frames,
                  "queue_people": args.queue_people, "queue_context": args.queue_context,
                  "jobs": jobs, "seconds": round(seconds, 1),
                  "rules": {"visible": VISIBLE, "judge_px": JUDGE_PX,
                            "judge_frames": JUDGE_FRAMES, "iou": IOU},
                  "config": cfg.model_dump(mode="json"), "overrides": args.overrides,
                  "summary": ev.rows, "intervals": {"level": INTERVAL_LEVEL,
                                                     "draws": INTERVAL_DRAWS, **ev.intervals},
                  "clips": ev.clips}
        write_out(args.json, json.dumps(report, indent=1))
    if args.plot:
        for p in save_plots(ev.rows, ev.latencies, args.plot):
            print(f"plot: {p}")
    if args.sheet:
        save_sheet(ev.false_alarms, args.sheet)
        print(f"false alarms: {len(ev.false_alarms)} on {args.sheet}")
    return 0


def run_grid(args: argparse.Namespace, plans: Sequence[ClipPlan], cache: Path | None,
             jobs: int) -> int:
    """Every --grid combination through the real loop; one line each, then the rule's pick."""
    from maskd.commands.run import startup_errors

    try:
        combos = grid_overrides(args.grid)
        cfgs = [eval_config(args.config, args.overrides + combo, jobs) for combo in combos]
    except ConfigError as err:
        print(f"eval_video: {err}", file=sys.stderr)
        return 2
    memo = MEMO if args.memo else None
    rows = []
    head = (f"{'setting':48s} {'recall':>6s} {'prec':>6s} {'F1':>6s} {'masked':>7s} "
            f"{'dup':>5s} {'lat':>5s} {'queue ev/hit/n':>14s}")
    print(head)
    for combo, cfg in zip(combos, cfgs, strict=True):
        tasks = [ClipTask(p, cfg.model_dump(mode="json"), cache, False, memo) for p in plans]
        try:
            results = run_all(tasks, jobs, cfg.classifier.threads)
        except startup_errors() as err:  # as a single run says it (a missing model ...)
            print(f"eval_video: {' '.join(combo)}: {err}", file=sys.stderr)
            return 2
        ev = evaluate(plans, results)
        total, queue = ev.rows["total"], ev.rows.get("queue")
        rows.append({"setting": combo, "total": total, "queue": queue})
        q = f"{queue['events']}/{queue['queued_hit']}/{queue['queued']}" if queue else "-"
        print(f"{' '.join(combo):48s} {_fmt(total['recall']):>6s} {_fmt(total['precision']):>6s} "
              f"{_fmt(total['f1']):>6s} {_fmt(total['masked_flagged'], True):>7s} "
              f"{_fmt(total['duplicates_per_person']):>5s} {_fmt(total['latency_median_s']):>5s} "
              f"{q:>14s}{'  ok' if qualifies(total, queue) else ''}", flush=True)
    best = pick(rows)
    print(f"pick (docs/eval_video.md rule): {' '.join(rows[best]['setting'])}")
    if args.json:
        write_out(args.json, json.dumps({"part": args.part, "overrides": args.overrides,
                                         "memo": args.memo, "grid": rows, "pick": best},
                                        indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
