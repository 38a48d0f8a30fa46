"""What the annotated clip (``preview.annotate_dir``) costs a live loop slower than its camera.

A stand-in loop whose work takes ``--work-s`` a frame hands frames stamped with the real time
since boot to the real ``ClipWriter``, which fills the slots
between them by repeating the last picture (the clip plays in real time); the picture is blurred
noise at the camera's size, so mp4v has real work to do. Printed per size and rate: the time
``on_frame`` took in the loop, the loop's period (work included), and what the clip got.

The work is a sleep (the loop waiting on a detector elsewhere: only the clip's own cost shows),
or with ``--cpu`` a fixed count of OpenCV blurs that took ``--work-s`` alone (detection on this
machine's cores: a clip encoded beside it takes CPU from it).

    python tools/bench_clip.py [--frames 15] [--work-s 0.4] [--cpu]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from maskd.clip import ClipWriter
from maskd.types import Frame, LoopStats
from tools.inputs import positive_float, positive_int

CASES = ((1920, 1080, 15.0), (1920, 1080, 30.0), (2592, 1944, 30.0))


def picture(w: int, h: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), np.uint8), (0, 0), 3)


class Work:
    """The loop's own work for one frame: ``work_s`` of sleep, or of OpenCV blurs (``cpu``)."""

    def __init__(self, work_s: float, cpu: bool) -> None:
        self.work_s, self.cpu = work_s, cpu
        self._img = picture(640, 480)
        self.blurs = 0
        if cpu:
            t = time.monotonic()
            n = 0
            while time.monotonic() - t < work_s:
                self._blur()
                n += 1
            self.blurs = n

    def _blur(self) -> None:
        cv2.GaussianBlur(self._img, (0, 0), 5)

    def __call__(self) -> None:
        if not self.cpu:
            time.sleep(self.work_s)
        for _ in range(self.blurs):
            self._blur()


def run(w: int, h: int, fps: float, frames: int, work: Work) -> dict:
    image = picture(w, h)
    work_s = work.work_s
    with tempfile.TemporaryDirectory() as tmp:
        clip = ClipWriter(Path(tmp), "bench", fps, segment_s=3600, segment_mb=1000, keep_mb=10000)
        calls: list[float] = []
        t_start = time.monotonic()
        for i in range(frames):
            work()
            now = time.monotonic()
            frame = Frame(image, i, time.time(), "bench", since_boot=now)
            clip.on_frame(frame, [], LoopStats(fps=1 / work_s))
            calls.append(time.monotonic() - now)
        period = (time.monotonic() - t_start) / frames
        t_close = time.monotonic()
        clip.close()
        close_s = time.monotonic() - t_close
        return {"on_frame_ms": statistics.median(calls) * 1000, "period_s": period,
                "written": clip.frames, "repeats": clip.repeats,
                "behind": getattr(clip, "behind", 0), "close_s": close_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=positive_int, default=15, help="frames per case")
    ap.add_argument("--work-s", type=positive_float, default=0.4, help="the loop's own work per frame")
    ap.add_argument("--cpu", action="store_true", help="the work is OpenCV blurs, not a sleep")
    args = ap.parse_args()
    work = Work(args.work_s, args.cpu)
    kind = f"{work.blurs} blurs" if args.cpu else "a sleep"
    print(f"loop work {args.work_s:.2f} s a frame ({kind}), {args.frames} frames a case")
    t = time.monotonic()
    for _ in range(args.frames):
        work()
    alone = (time.monotonic() - t) / args.frames
    print(f"no clip: loop period {alone:.3f} s")
    for w, h, fps in CASES:
        r = run(w, h, fps, args.frames, work)
        print(f"{w}x{h} @ {fps:g} fps: on_frame {r['on_frame_ms']:.1f} ms (median), loop period "
              f"{r['period_s']:.3f} s (x{r['period_s'] / alone:.2f}); clip frames "
              f"{r['written']} ({r['repeats']} repeats), dropped behind {r['behind']}, close "
              f"{r['close_s']:.2f} s")


if __name__ == "__main__":
    main()
