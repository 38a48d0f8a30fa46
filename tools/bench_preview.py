"""What the live previews cost the detection loop: loop fps and on_frame time, with and without.

The loop here is real work (the demo clip through a real face detector); the previews are the
real ones: the framebuffer writer (to a regular file with a 1920x1080 RGB565 geometry, the
Pi's HDMI console default) and the status page's MJPEG stream with one client reading it.
Previews run in their own threads and drop frames, so on_frame must stay in microseconds; what
remains is CPU they take from the loop on a busy machine, which this prints as a ratio.

    python tools/bench_preview.py [--frames 150] [--detector blazeface] [--rounds 3] [--max-fps 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from maskd.config import ClassifierConfig, DetectorConfig, SourceConfig
from maskd.demo import open_demo_source
from maskd.detectors import DetectorError, make_detector
from maskd.preview import FbGeometry, FramebufferPreview, MjpegFeed, render
from maskd.statuspage import StatusServer
from maskd.types import LoopStats, Verdict
from tools.inputs import non_negative_float, positive_int

CUT = ClassifierConfig().threshold


def mjpeg_reader(url: str, stop: threading.Event, counter: list[int]) -> None:
    """A browser stand-in: reads the stream as fast as it comes."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        while not stop.is_set():
            chunk = resp.read(65536)
            if not chunk:
                return
            counter[0] += chunk.count(b"--maskdframe")


def run(frames, detector, observers) -> dict:
    on_frame_us: list[float] = []
    cpu0 = time.thread_time()
    t0 = time.perf_counter()
    for f in frames:
        verdicts = [Verdict(face, 0.9, CUT) for face in detector.detect(f.image)]
        stats = LoopStats(fps=0.0, active=len(verdicts))
        t1 = time.perf_counter()
        for obs in observers:
            obs.on_frame(f, verdicts, stats)
        on_frame_us.append((time.perf_counter() - t1) * 1e6)
    elapsed = time.perf_counter() - t0
    for obs in observers:
        obs.close()  # the preview's CPU count is final once its thread has stopped
    loop_cpu = time.thread_time() - cpu0
    preview_cpu = sum(getattr(getattr(o, "feed", o), "cpu_s", 0.0) for o in observers)
    return {"fps": len(frames) / elapsed, "preview_cpu_pct": 100 * preview_cpu / loop_cpu,
            "on_frame_us_mean": statistics.fmean(on_frame_us),
            "on_frame_us_p99": sorted(on_frame_us)[int(0.99 * (len(on_frame_us) - 1))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=positive_int, default=150)
    ap.add_argument("--detector", default="blazeface", choices=["blazeface", "yunet", "auto"])
    ap.add_argument("--rounds", type=positive_int, default=3)
    ap.add_argument("--max-fps", type=non_negative_float, default=10.0, help="preview cap (0: none)")
    args = ap.parse_args()
    try:  # before the frames: YuNet absent (no `maskd models fetch` yet) is one line, no traceback
        detector = make_detector(DetectorConfig(kind=args.detector))
    except DetectorError as err:
        raise SystemExit(f"bench_preview: --detector {args.detector}: {err}") from None

    src = open_demo_source(SourceConfig(kind="demo"))
    frames = []
    while len(frames) < args.frames and (f := src.read()) is not None:
        frames.append(f)
    geo = FbGeometry(1920, 1080, 16, 3840)

    # the preview thread's own cost per frame, for reference
    t0 = time.perf_counter()
    for f in frames[:20]:
        render(f, [], LoopStats(), size=(geo.width, geo.height))
    render_ms = (time.perf_counter() - t0) / 20 * 1e3

    results: dict[str, list[dict]] = {"none": [], "framebuffer": [], "http+client": []}
    shown_fb = got_http = 0
    with tempfile.TemporaryDirectory() as tmp:
        fb = Path(tmp) / "fb0"
        fb.write_bytes(b"\0" * geo.size_bytes)
        for _ in range(args.rounds):  # interleaved, so load changes hit every variant alike
            results["none"].append(run(frames, detector, []))

            p = FramebufferPreview(fb, geometry=geo, max_fps=args.max_fps).start()
            results["framebuffer"].append(run(frames, detector, [p]))
            shown_fb += p.shown

            srv = StatusServer("127.0.0.1:0").start()
            h = srv.attach("bench", "-", "-", feed=MjpegFeed(max_fps=args.max_fps))
            stop, got = threading.Event(), [0]
            reader = threading.Thread(target=mjpeg_reader, args=(srv.url + "stream.mjpg", stop, got),
                                      daemon=True)
            reader.start()
            time.sleep(0.3)
            results["http+client"].append(run(frames, detector, [h]))
            stop.set()
            got_http += got[0]

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    base = med("none", "fps")
    n = len(frames) * args.rounds
    print(f"{len(frames)} demo frames x {args.rounds} rounds, detector {args.detector}, preview cap "
          f"{f'{args.max_fps:g} fps' if args.max_fps else 'off'}; render at 1920x1080: {render_ms:.1f} ms/frame (preview thread)")
    print(f"{'preview':<13} {'loop fps':>9} {'vs none':>8} {'on_frame mean us':>17} {'p99 us':>8} "
          f"{'preview CPU / loop CPU':>23}  (medians)")
    for name in results:
        print(f"{name:<13} {med(name, 'fps'):>9.1f} {med(name, 'fps') / base:>8.2f} "
              f"{med(name, 'on_frame_us_mean'):>17.1f} {med(name, 'on_frame_us_p99'):>8.1f} "
              f"{med(name, 'preview_cpu_pct'):>22.0f}%")
    print(f"framebuffer showed {shown_fb}/{n} frames; the MJPEG client received {got_http}/{n} "
          "(the rest were dropped, not queued)")


if __name__ == "__main__":
    main()
