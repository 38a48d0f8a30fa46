"""Drawing boxes the way the seeds do: green for mask, red for no mask, label and probability.

Pure functions on numpy images, shared by `scan --annotate`, `run --annotate` and the preview.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from maskd.files import open_regular
from maskd.types import LoopStats, Verdict

GREEN = (0, 200, 0)  # BGR
RED = (0, 0, 230)
GREY = (160, 160, 160)


def header_text(stats: LoopStats) -> str:
    """'12.3 fps | 1 active violation': the line the previews, the clip and systemd's STATUS show.

    While an open violation's face is not detected in the frame (it left, or the detector lost
    it), the line says so, '... (1 face not detected now)', so a frame never shows an active
    violation without saying where its face went. With detection off (the MQTT switch, the
    ``schedule:``) it says so and by what, as the status page does.
    """
    n = stats.active
    fps = "--" if stats.fps is None else f"{stats.fps:.1f}"
    text = f"{fps} fps | {n} active violation{'s' if n != 1 else ''}"
    lost = 0 if stats.in_view is None else n - min(stats.in_view, n)
    if lost:
        text += f" ({lost} face{'s' if lost != 1 else ''} not detected now)"
    return text + detection_off(stats)


def detection_off(stats: LoopStats) -> str:
    """' | detection off by the switch' (or schedule), '' while it runs: the end of the header
    and of the journal's stats line, else either read as a door watched while nothing was."""
    return "" if stats.detect_enabled else f" | detection off by the {stats.detect_in_force}"


def camera_text(stats: LoopStats, camera: str | None = None) -> str:
    """``header_text``, or why no frame comes when none does (a camera lost, a file that
    ended, none yet): systemd's STATUS and the previews' header, which shows it over the last
    picture. ``camera``: the name, where the line would not say whose it is otherwise."""
    return stats.outage(camera) or header_text(stats)


def color_for(v: Verdict) -> tuple[int, int, int]:
    if v.label is None:
        return GREY
    return RED if v.label == "no_mask" else GREEN


def caption_for(v: Verdict) -> str:
    """'Mask: 97.1%' / 'No Mask: 88.0%' as the seeds write it; '?' for faces too small to judge."""
    if v.no_mask is None:
        return "?"
    if v.label == "no_mask":
        return f"No Mask: {v.no_mask * 100:.1f}%"
    return f"Mask: {(1 - v.no_mask) * 100:.1f}%"


IGNORE_COLOR = (0, 140, 255)  # BGR orange: faces here never count
INCLUDE_COLOR = (255, 200, 0)  # BGR light blue: only faces here count


def draw_zones(image: np.ndarray, include: list | None, ignore: list,
               region: tuple[float, float, float, float] | None = None) -> None:
    """Outline the zones (normalised polygons) in place, over ``region`` (x0, y0, x1, y1: where
    the frame lies in ``image``; default the whole image), so a person can check them against
    the picture."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = region or (0.0, 0.0, float(w), float(h))
    thick = max(1, round(min(h, w) / 320))
    for polys, color in ((include or [], INCLUDE_COLOR), (ignore, IGNORE_COLOR)):
        for poly in polys:
            # 1.0 is the frame's last pixel, not one past it, so an edge along the border shows
            pts = np.array([[x0 + px * (x1 - x0 - 1), y0 + py * (y1 - y0 - 1)] for px, py in poly],
                           np.float32).round().astype(np.int32)
            cv2.polylines(image, [pts], True, color, thick, cv2.LINE_8)


def draw_verdicts(image: np.ndarray, verdicts: list[Verdict], header: str | None = None) -> np.ndarray:
    """Return a copy of a BGR image with one box and caption per verdict and an optional header
    line; each box is labelled at the cut its verdict was judged with."""
    out = image.copy()
    h, w = out.shape[:2]
    thick = max(1, round(min(h, w) / 320))
    scale = max(0.35, min(h, w) / 900)
    for v in verdicts:
        x0, y0, x1, y1 = (int(round(c)) for c in v.face.box)
        color = color_for(v)
        cv2.rectangle(out, (x0, y0), (x1, y1), color, thick)
        text = caption_for(v)
        ty = y0 - 4 if y0 - 4 > 10 else y1 + int(14 * scale / 0.45)
        cv2.putText(out, text, (x0, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, color, thick, cv2.LINE_AA)
    if header:
        top = 0
        for line in header_lines(header, w - 8, scale, thick):
            (tw, th), base = cv2.getTextSize(line, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
            cv2.rectangle(out, (0, top), (tw + 8, top + th + base + 8), (0, 0, 0), -1)
            cv2.putText(out, line, (4, top + th + 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                        (255, 255, 255), thick, cv2.LINE_AA)
            top += th + base + 8
    return out


def header_lines(text: str, width: int, scale: float, thick: int) -> list[str]:
    """The header cut at spaces into lines no wider than ``width`` pixels (a word wider than
    that stays whole): a lost camera's line says why, which ran off a small picture's edge."""
    lines: list[str] = []
    for word in text.split(" "):
        wider = f"{lines[-1]} {word}" if lines else word
        if lines and cv2.getTextSize(wider, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)[0][0] <= width:
            lines[-1] = wider
        else:
            lines.append(word)
    return lines


# A JPEG comment (COM segment) right after the start-of-image marker: how `scan --annotate`
# knows a file in OUTDIR is its own, and so may be replaced, and not a user's photo.
_MARK = b"maskd annotate"
_MARKED_START = b"\xff\xd8\xff\xfe" + (len(_MARK) + 2).to_bytes(2, "big") + _MARK


def annotation_jpeg(image: np.ndarray) -> bytes | None:
    """A BGR image as JPEG bytes carrying maskd's mark (None when it cannot be encoded)."""
    ok, data = cv2.imencode(".jpg", image)
    if not ok:
        return None
    raw = data.tobytes()
    return _MARKED_START + raw[2:]  # raw[:2] is the start-of-image marker, in _MARKED_START


def is_annotation(path: Path) -> bool:
    """True when ``path`` is a regular file (not a link) that maskd wrote as an annotation;
    anything else, unreadable included, may be a user's and is never replaced."""
    if path.is_symlink():
        return False
    try:
        with open_regular(path) as f:
            return f.read(len(_MARKED_START)) == _MARKED_START
    except OSError:
        return False
