"""Where on the picture faces count: include and ignore zones, pure functions on boxes.

A zone is a polygon in normalised 0..1 frame coordinates (so it survives a change of capture
size). A face counts by its box centre: inside an ``include`` zone when there are any, and in
no ``ignore`` zone. A face that does not count is dropped right after detection: it is never
tracked, classified or reported (a poster behind the desk, a monitor showing faces).
"""

from __future__ import annotations

from collections.abc import Sequence

from maskd.types import Box

Polygon = Sequence[tuple[float, float]]


MIN_AREA = 1e-6  # a share of the frame; less is a line or a point, never a zone


def area(polygon: Polygon) -> float:
    """The polygon's area in frame shares (shoelace; meaningful for a simple polygon only: a
    self-intersecting one's lobes may cancel, which is why the config refuses those first,
    see ``crossing``)."""
    total = 0.0
    px, py = polygon[-1]
    for qx, qy in polygon:
        total += px * qy - qx * py
        px, py = qx, qy
    return abs(total) / 2.0


def _side(a: tuple[float, float], b: tuple[float, float], c: tuple[float, float]) -> int:
    """Which side of the line a->b the point c is on: 1 left, -1 right, 0 on it."""
    d = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    return (d > 1e-12) - (d < -1e-12)


def crossing(polygon: Polygon) -> tuple[int, int] | None:
    """Two edges that cross (edge k runs from point k to the next), or None. A crossing
    polygon (a bowtie: points not listed around the zone) counts by the even-odd rule, so its
    overlap falls outside it. Only proper crossings: a polygon on one line has none (``area``
    names that one)."""
    pts = [tuple(p) for p in polygon]
    n = len(pts)
    for i in range(n):
        a, b = pts[i], pts[(i + 1) % n]
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:  # neighbours through the closing edge
                continue
            c, d = pts[j], pts[(j + 1) % n]
            if (_side(a, b, c) * _side(a, b, d) < 0 and _side(c, d, a) * _side(c, d, b) < 0):
                return i, j
    return None


def inside(x: float, y: float, polygon: Polygon) -> bool:
    """Point in polygon by ray casting (even-odd rule); points on an edge may fall either way.

    Plain Python: zones have a handful of corners, and numpy's per-call overhead would cost
    more than the arithmetic (tools/bench_site.py).
    """
    hit = False
    px, py = polygon[-1]
    for qx, qy in polygon:
        if (qy > y) != (py > y) and x < qx + (y - qy) * (px - qx) / (py - qy):
            hit = not hit
        px, py = qx, qy
    return hit


def counts(box: Box, width: int, height: int, include: Sequence[Polygon] | None,
           ignore: Sequence[Polygon]) -> bool:
    """Whether a face with this pixel box counts, by its centre (module docstring)."""
    cx = (box[0] + box[2]) / 2 / max(width, 1)
    cy = (box[1] + box[3]) / 2 / max(height, 1)
    if include and not any(inside(cx, cy, p) for p in include):
        return False
    return not any(inside(cx, cy, p) for p in ignore)
