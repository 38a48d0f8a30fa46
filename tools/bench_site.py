"""Per-frame cost of the site features on the loop: zones and static-face (poster) tracking.

    python tools/bench_site.py [--faces 4] [--zones 4] [--frames 20000]

Times the same calls the pipeline makes per frame (maskd.zones.counts for every face against
every zone; the tracker's match with static_after_s on and off) and prints the added ms per
frame. The issue's budget is 0.2 ms per frame; the script says whether it holds here.
"""

from __future__ import annotations

import argparse
import time

from maskd import zones
from maskd.config import TrackingConfig
from maskd.tracking import Tracker
from tools.inputs import non_negative_int, positive_int

BUDGET_MS = 0.2


def polygon(i: int) -> list[tuple[float, float]]:
    """A six-sided zone somewhere on the frame."""
    x, y = 0.1 + 0.2 * (i % 4), 0.1 + 0.2 * (i // 4 % 4)
    return [(x, y), (x + 0.1, y), (x + 0.15, y + 0.05), (x + 0.1, y + 0.1), (x, y + 0.1),
            (x - 0.05, y + 0.05)]


def boxes(n: int, k: int) -> list[tuple[float, float, float, float]]:
    """n faces drifting a little each frame."""
    return [(50.0 + 120 * j + k % 3, 100.0, 130.0 + 120 * j + k % 3, 180.0) for j in range(n)]


def per_frame_ms(fn, frames: int) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    for k in range(frames):
        fn(k)
    return (time.perf_counter() - t0) / frames * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faces", type=non_negative_int, default=4)
    ap.add_argument("--zones", type=non_negative_int, default=4, help="ignore zones (plus one include zone)")
    ap.add_argument("--frames", type=positive_int, default=20000)
    a = ap.parse_args()
    include = [[(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]]
    ignore = [polygon(i) for i in range(a.zones)]

    def zoned(k: int) -> None:
        for b in boxes(a.faces, k):
            zones.counts(b, 640, 480, include, ignore)

    def tracked(cfg: TrackingConfig):  # noqa: ANN202
        tr = Tracker(cfg)
        return lambda k: tr.match(boxes(a.faces, k), k, k / 15.0)

    zone_ms = per_frame_ms(zoned, a.frames)
    plain = per_frame_ms(tracked(TrackingConfig()), a.frames)
    static = per_frame_ms(tracked(TrackingConfig(static_after_s=5.0)), a.frames)
    static_ms = max(static - plain, 0.0)
    total = zone_ms + static_ms
    print(f"{a.faces} faces, {a.zones} ignore zones + 1 include zone, {a.frames} frames")
    print(f"zones:              {zone_ms:.4f} ms/frame")
    print(f"static-face check:  {static_ms:.4f} ms/frame (tracker {plain:.4f} -> {static:.4f})")
    print(f"together:           {total:.4f} ms/frame = {total / BUDGET_MS:.2f} x the "
          f"{BUDGET_MS} ms budget ({'within' if total < BUDGET_MS else 'OVER'})")


if __name__ == "__main__":
    main()
