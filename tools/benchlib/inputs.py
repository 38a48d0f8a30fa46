"""Test inputs: a real face photo and camera-like frames (scenes-dev pans, or the demo clip)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tools.benchlib.common import SHARED

SCENE_IMAGES = SHARED / "data" / "scenes-dev" / "images"
NO_SCENES = (f"no scenes-dev photos ({SCENE_IMAGES} absent; ../shared is not in git): "
             "maskd's demo source in their place")


def face_image() -> tuple[np.ndarray, str]:
    """A real face photo (RGB): the scikit-image astronaut's face, else a facemask-4095 image.

    Pixel values do not change CNN timing, but a real face keeps the sample honest and lets
    the printed P(no_mask) be checked by eye.
    """
    try:
        from skimage import data

        img = data.astronaut()  # 512x512 RGB; the face is around (y 30..230, x 140..330)
        return np.ascontiguousarray(img[20:240, 130:350]), "scikit-image astronaut (face crop)"
    except ImportError:
        pass
    folder = SHARED / "data" / "facemask-4095" / "without_mask"
    if folder.is_dir():
        from maskd.images import ImageError, load_image_rgb

        for p in sorted(folder.iterdir())[:20]:
            try:
                return load_image_rgb(p), str(p.relative_to(SHARED))
            except ImageError:
                continue
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (200, 200, 3), dtype=np.uint8), "random pixels (no face image found)"


def scene_frames(n: int, size: tuple[int, int]) -> tuple[list[np.ndarray], str]:
    """``n`` BGR frames of ``size`` (w, h): scenes-dev photos with a slow pan, as from a camera.

    Each photo is held for a run of frames while a window slides across it, so faces move a
    little from frame to frame the way people walking in do (what tracking and the per-track
    cache are for). Falls back to maskd's demo source when ../shared is absent.
    """
    w, h = size
    photos = scene_photos()
    if not photos:
        return demo_frames(n, size)
    per_photo = 15
    chosen = photos[:: max(1, len(photos) // max(1, (n + per_photo - 1) // per_photo))]
    frames: list[np.ndarray] = []
    used = 0  # the photos the frames come from, as the report says (not those picked: 9 for 8)
    for p in chosen:
        if len(frames) == n:
            break
        img = cv2.imread(str(p))
        if img is None:
            continue
        used += 1
        # Scale so the photo covers the frame plus 10% to pan over.
        s = max(w * 1.1 / img.shape[1], h * 1.1 / img.shape[0])
        big = cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)))
        dx, dy = big.shape[1] - w, big.shape[0] - h
        for k in range(min(per_photo, n - len(frames))):
            t = k / (per_photo - 1)
            x, y = round(dx * t), round(dy * t / 2)
            frames.append(np.ascontiguousarray(big[y : y + h, x : x + w]))
    last = len(frames) - (used - 1) * per_photo
    return frames, (f"{used} scenes-dev photos, {per_photo} panned frames each"
                    + (f" (the last {last})" if 0 < last < per_photo else ""))


def scene_photos() -> list[Path]:
    """scenes-dev's photos; none where ../shared is absent."""
    return sorted(SCENE_IMAGES.glob("*.jpg")) if SCENE_IMAGES.is_dir() else []


def clip_or_note(size: tuple[int, int], n: int, notes: list[str]
                 ) -> tuple[list[np.ndarray], str] | None:
    """scene_frames, or None with a note saying what is missing (no ../shared, no demo photo)."""
    try:
        frames, what = scene_frames(n, size)
    except Exception as err:  # noqa: BLE001 - e.g. SourceError: scikit-image missing on a Pi
        notes.append(f"no test frames: ../shared/data/scenes-dev absent and the demo source failed: {err}")
        return None
    if not frames:
        notes.append("no test frames could be read")
        return None
    if not scene_photos() and NO_SCENES not in notes:  # said once, not once per section
        notes.append(NO_SCENES)
    return frames, what


def demo_frames(n: int, size: tuple[int, int]) -> tuple[list[np.ndarray], str]:
    """Frames from maskd's own demo source (no ../shared needed)."""
    from maskd.config import SourceConfig
    from maskd.sources import open_source

    src = open_source(SourceConfig(kind="demo", width=size[0], height=size[1]))
    frames: list[np.ndarray] = []
    try:
        while len(frames) < n:
            frame = src.read()
            if frame is None:
                break
            frames.append(frame.image)
    finally:
        src.close()
    return frames, "maskd demo source"
