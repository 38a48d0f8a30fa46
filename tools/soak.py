#!/usr/bin/env python3
"""Soak run: the real `maskd run` process for a long time, watched from outside (not a test).

A device at a door runs for months; what fails then is what grows a little per frame or per
event: memory, open files, threads, the outbox. This runs `python -m maskd run` as the service
does (its own process, the status page on, events to a real mosquitto), on the built-in demo
source looped (one bare-faced person, then the same person masked, every 8 s of video), as fast
as the machine allows, so one wall-clock hour covers several hours of video. Every
``--sample-s`` it reads the process's memory, file descriptors and threads from /proc, the
frames from the status page's /api/status and the size of the state directory, and at the end
prints what grew, the growth rate over the run's second half, and how many violations the
broker saw against how many passes of the person the loop made (each pass is one person
without a mask: one ``start`` and one ``end``).

    python tools/soak.py --minutes 30                  # YuNet from ../shared/models when there
    python tools/soak.py --minutes 5 --json runs/soak.json --max-rss-growth-mib-h 20

Exit 0 when the run ended cleanly (exit 0 or 75 after SIGTERM), every pass of the person got
exactly one violation, each violation ended, and the limits given held; 1 otherwise, saying
why; 2 for bad arguments or a mosquitto that is missing or does not start.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maskd.demo import FPS, DemoSource, pass_frames  # noqa: E402
from maskd.env import DEMO_FAST  # noqa: E402
from tools.eval_scenes import SHARED_YUNET  # noqa: E402
from tools.inputs import non_negative_float, out_file, positive_float, write_out  # noqa: E402
from tools.ipcamera import IpCamera  # noqa: E402
from tools.mosquitto import Broker, Msg, Subscriber, free_port, unique_events, wait_until  # noqa: E402
from tools.viewers import Viewer  # noqa: E402
from tools.viewers import report as viewers_report  # noqa: E402

WARMUP_SHARE = 0.2  # samples in the first fifth (models loading, caches filling) are not judged
STOP_WAIT_S = 60.0
# After the camera's last outage: maskd's reconnect backoff (reopen_max_s 30) plus a stream's
# open time-out (10 s), and some slack.
CAMERA_BACK_WAIT_S = 45.0
UNSETTLED_S = 2.0  # a pass this close to a camera outage is not judged (tracks were cut)
# --local-files: small caps, so a long run reaches them many times over.
SNAPSHOTS_KEEP_MB = 2.0
CLIP_SEGMENT_MB, CLIP_KEEP_MB = 2.0, 6.0
# What the folder may hold: both caps, plus a file being written past its segment size (a
# frame and the muxer's buffer) and a snapshot written before the retention that follows it.
FILES_CAP_KIB = int((SNAPSHOTS_KEEP_MB + CLIP_SEGMENT_MB + CLIP_KEEP_MB) * 1024)
UNIT = REPO / "systemd" / "maskd.service"
# What of the unit's environment the soak gives maskd: how glibc's malloc behaves changes how
# the memory grows (without the unit's cap on arenas, a loaded run stepped up ~150 MiB/h).
UNIT_ENV_KEYS = ("MALLOC_ARENA_MAX",)


def unit_environment(unit: Path = UNIT, keys: tuple[str, ...] = UNIT_ENV_KEYS) -> dict[str, str]:
    """The unit's ``Environment=KEY=VALUE`` lines for ``keys``, so the soak runs maskd as the
    service does without a second copy of the values."""
    env: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            if key in keys:
                env[key] = value
    return env


def child_environment(arena_max: int | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """maskd's environment: this one, with the unit's malloc arena cap (``arena_max`` None) or
    the one given (0: none, glibc's default of 8 per core)."""
    env = dict(os.environ if base is None else base)
    env.pop("MALLOC_ARENA_MAX", None)
    value = unit_environment().get("MALLOC_ARENA_MAX") if arena_max is None else str(arena_max)
    if value and value != "0":
        env["MALLOC_ARENA_MAX"] = value
    return env


CAMERA = "door"  # the first camera's name; --cameras N adds door2, door3, ...


def camera_names(n: int) -> list[str]:
    return [CAMERA] + [f"{CAMERA}{i}" for i in range(2, n + 1)]


def topic(camera: str) -> str:
    return f"maskd/soak/{camera}/violation"  # device_id soak (soak_config)


@dataclass
class Sample:
    """One look at the process from outside."""

    t: float  # seconds since the process started
    rss_kib: int
    fds: int
    threads: int
    frames: int | None  # from /api/status; None while the page is not up yet
    state_kib: int  # everything under state_dir (the outbox, its reserve)
    broker_up: bool = True
    files_kib: int = 0  # snapshots and the annotated clip, with --local-files


def proc_status(pid: int) -> tuple[int, int]:
    """(VmRSS in KiB, threads) of ``pid`` from /proc/PID/status."""
    rss = threads = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
        elif line.startswith("Threads:"):
            threads = int(line.split()[1])
    return rss, threads


def sample(pid: int, t: float, port: int, state: Path, broker_up: bool, files: Path) -> Sample:
    rss, threads = proc_status(pid)
    return Sample(round(t, 1), rss, len(os.listdir(f"/proc/{pid}/fd")), threads, api_frames(port),
                  tree_kib(state) if state.is_dir() else 0, broker_up,
                  tree_kib(files) if files.is_dir() else 0)


class Outages:
    """Something goes away for ``length_s`` every ``every_s`` (never when ``every_s`` is 0): the
    broker, as a building's broker does for updates and reboots (the outbox must fill, drain and
    shrink back, cycle after cycle), or the network camera. ``down(n)`` takes it away for the
    n-th time (from 0), ``up()`` brings it back."""

    def __init__(self, down: Callable[[int], object], up: Callable[[], object], every_s: float,
                 length_s: float, t0: float) -> None:
        self.down, self.bring_up, self.every_s, self.length_s = down, up, every_s, length_s
        self.up = True
        self.count = 0
        self.next = t0 + every_s if every_s > 0 else float("inf")

    def step(self, now: float) -> float:
        """Take it away or bring it back when due; returns when the next change is due."""
        if now >= self.next:
            if self.up:
                self.down(self.count)
                self.count += 1
                self.next = now + self.length_s
            else:
                self.bring_up()
                self.next = now + self.every_s - self.length_s
            self.up = not self.up
        return self.next


def _balanced(msgs: list[Msg]) -> bool:
    """Every start seen has its end (the stop ends open violations with ``shutdown``)."""
    kinds = Counter(e.get("event_type") for e in unique_events(m.json() for m in msgs))
    return kinds["start"] == kinds["end"]


def tree_kib(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) // 1024


def api_frames(port: int) -> int | None:
    """Frames the loops have processed (all cameras), from the status page; None when it does
    not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=2) as r:
            cams = json.loads(r.read())["cameras"]
    except (OSError, ValueError, KeyError):
        return None
    return sum(int(c["frames"]) for c in cams) if cams else None


def slope_per_hour(ts: np.ndarray, ys: np.ndarray) -> float | None:
    """Least-squares growth of ``ys`` per hour of ``ts`` (seconds); None for under 3 points."""
    if len(ts) < 3 or np.ptp(ts) <= 0:
        return None
    return float(np.polyfit(ts, ys, 1)[0] * 3600.0)


def per_100k_frames(samples: list[Sample]) -> float | None:
    """Least-squares RSS growth (MiB) per 100,000 frames processed; None without 3 points."""
    pts = [(s.frames, s.rss_kib / 1024) for s in samples if s.frames is not None]
    if len(pts) < 3 or len({f for f, _ in pts}) < 2:
        return None
    f, r = np.array(pts, float).T
    return float(np.polyfit(f, r, 1)[0] * 1e5)


def soak_config(work: Path, broker_url: str, http_port: int, detector_model: Path | None,
                video: Path | None = None, stream_url: str | None = None,
                files: Path | None = None, cameras: int = 1) -> Path:
    """The config of the run under test: the service's shape, the demo source (or ``video``)
    looped, or a network camera at ``stream_url`` (the source's shipped reconnect settings);
    with ``files``, snapshots (whole frames) and the annotated clip there, under small caps.
    With several ``cameras``, each its own demo source (a loop of its own), all on the one
    status page; the annotated clip is the first camera's (the top-level ``preview``)."""
    source = ({"kind": "opencv", "uri": stream_url} if stream_url is not None else
              {"kind": "demo", "loop": True} if video is None else
              {"kind": "opencv", "uri": str(video.resolve()), "loop": True})
    cfg = {
        "device_id": "soak", "camera": CAMERA, "state_dir": str(work / "state"),
        "source": source,
        "mqtt": {"url": broker_url},
        "preview": {"http": f"127.0.0.1:{http_port}"},
    }
    if files is not None:
        cfg["snapshots"] = {"dir": str(files / "snapshots"), "what": "frame",
                            "keep_mb": SNAPSHOTS_KEEP_MB}
        cfg["preview"].update(annotate_dir=str(files / "clip"), annotate_segment_mb=CLIP_SEGMENT_MB,
                              annotate_keep_mb=CLIP_KEEP_MB)
    if detector_model is not None:
        cfg["detector"] = {"kind": "yunet", "model": str(detector_model)}
    if cameras > 1:
        del cfg["camera"], cfg["source"]
        cfg["cameras"] = {name: {"source": source} | ({"preview": {"http": cfg["preview"]["http"]}}
                                                       if name != CAMERA else {})
                          for name in camera_names(cameras)}
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


def per_pass(start_frames: list[int], frames_per_pass: int,
             excluded: frozenset[int] = frozenset()) -> dict[str, int]:
    """How many passes of the demo person, from the first with a start to the last, got
    exactly one start, none, or more (a person counted twice); passes in ``excluded`` (the
    camera was away) are left out and counted."""
    if not start_frames:
        return {"passes": 0, "one": 0, "none": 0, "more": 0, "excluded": 0}
    counts = Counter(f // frames_per_pass for f in start_frames)
    whole = range(min(counts), max(counts) + 1)
    span = [p for p in whole if p not in excluded]
    return {"passes": len(span), "one": sum(counts[p] == 1 for p in span),
            "none": sum(counts[p] == 0 for p in span), "more": sum(counts[p] > 1 for p in span),
            "excluded": len(whole) - len(span)}


def unsettled_passes(cam: IpCamera, end: float) -> frozenset[int]:
    """The passes of the person that overlap a camera outage, from its start until
    UNSETTLED_S after the first frame sent again (``end`` when none was)."""
    n, out = pass_frames(), set()
    for o in cam.outages:
        back = o.first_frame if o.first_frame is not None else end
        out.update(range(cam.frame_index(o.start) // n, cam.frame_index(back + UNSETTLED_S) // n + 1))
    return frozenset(out)


def camera_report(cam: IpCamera) -> dict:
    """Each outage of the network camera and how long after it came back maskd read again."""
    rec = [None if o.end is None or o.first_frame is None else round(o.first_frame - o.end, 2)
           for o in cam.outages]
    return {"outages": len(cam.outages), "kinds": dict(Counter(o.kind for o in cam.outages)),
            "connections": cam.connections, "read_again_after_s": rec}


def summarize(samples: list[Sample], start_frames: list[int] | dict[str, list[int]], ends: int,
              rc: int | None, wall_s: float, demo: bool = True,
              excluded: frozenset[int] = frozenset()) -> dict:
    """What grew and how fast, and whether each pass of the person gave one violation
    (``start_frames`` by camera with several: each camera's demo person passes by itself)."""
    by_camera = start_frames if isinstance(start_frames, dict) else {CAMERA: start_frames}
    passes = [per_pass(f, pass_frames(), excluded) for f in by_camera.values()]
    judged = [s for s in samples if s.t >= WARMUP_SHARE * wall_s] or samples[-1:]
    half = [s for s in samples if s.t >= 0.5 * wall_s]
    ts = np.array([s.t for s in half], float)
    frames = max((s.frames for s in samples if s.frames is not None), default=0)
    first, last = judged[0], samples[-1]
    mib = 1 / 1024
    return {
        "wall_s": round(wall_s, 1), "samples": len(samples), "exit_code": rc,
        "frames": frames, "video_hours": round(frames / FPS / 3600, 3),
        "fps": round(frames / wall_s, 1) if wall_s > 0 else None,
        "rss_mib": {"after_warmup": round(first.rss_kib * mib, 1), "end": round(last.rss_kib * mib, 1),
                    "max": round(max(s.rss_kib for s in samples) * mib, 1),
                    "growth_mib_per_h": _round(slope_per_hour(ts, np.array([s.rss_kib * mib for s in half]))),
                    "growth_mib_per_100k_frames": _round(per_100k_frames(half))},
        "fds": {"after_warmup": first.fds, "end": last.fds, "max": max(s.fds for s in samples)},
        "threads": {"after_warmup": first.threads, "end": last.threads,
                    "max": max(s.threads for s in samples)},
        "state_kib": {"after_warmup": first.state_kib, "end": last.state_kib,
                      "max": max(s.state_kib for s in samples)},
        "files_kib": {"after_warmup": first.files_kib, "end": last.files_kib,
                      "max": max(s.files_kib for s in samples)},
        "starts": sum(map(len, by_camera.values())), "ends": ends,
        "per_pass": {k: sum(pp[k] for pp in passes) for k in passes[0]} if demo else None,
    }


def _round(v: float | None, nd: int = 2) -> float | None:
    return None if v is None else round(v, nd)


def _arenas(cap: str | None) -> str:
    return f" (malloc arenas at most {cap})" if cap else " (malloc arenas: glibc's default, 8 per core)"


def render(r: dict) -> str:
    g, gf = r["rss_mib"]["growth_mib_per_h"], r["rss_mib"]["growth_mib_per_100k_frames"]
    lines = [
        f"soak: {r['wall_s']:.0f} s, {r['frames']} frames ({r['video_hours']:.2f} h of 15 fps video, "
        f"{r['fps']} frames/s), {r['samples']} samples, exit {r['exit_code']}",
        f"  memory (RSS)  after warm-up {r['rss_mib']['after_warmup']} MiB, end {r['rss_mib']['end']} MiB, "
        f"max {r['rss_mib']['max']} MiB; second half {'n/a' if g is None else f'{g:+.2f} MiB/h'}"
        f"{'' if gf is None else f', {gf:+.2f} MiB per 100k frames'}"
        f"{_arenas(r['malloc_arena_max']) if 'malloc_arena_max' in r else ''}",
        f"  open files    after warm-up {r['fds']['after_warmup']}, end {r['fds']['end']}, max {r['fds']['max']}",
        f"  threads       after warm-up {r['threads']['after_warmup']}, end {r['threads']['end']}, "
        f"max {r['threads']['max']}",
        f"  state dir     after warm-up {r['state_kib']['after_warmup']} KiB, end {r['state_kib']['end']} KiB, "
        f"max {r['state_kib']['max']} KiB",
        *([f"  local files   after warm-up {r['files_kib']['after_warmup']} KiB, end "
           f"{r['files_kib']['end']} KiB, max {r['files_kib']['max']} KiB (cap {FILES_CAP_KIB} KiB)"]
          if r["files_kib"]["max"] else []),
        f"  violations    {r['starts']} start / {r['ends']} end at the broker",
    ]
    pp = r["per_pass"]
    if pp is not None:
        lines[-1] += (f"; of the {pp['passes']} passes of the unmasked person from the first start "
                      f"to the last, {pp['one']} got one start, {pp['none']} none, {pp['more']} more")
        if pp["excluded"]:
            lines[-1] += f" ({pp['excluded']} more passes not judged: the camera was away)"
    if r.get("cameras", 1) > 1:
        lines[-1] += f" ({r['cameras']} cameras, frames and passes of all of them)"
    if r.get("outages"):
        lines.append(f"  broker away   {r['outages']} times; {r['buffered_events']} events arrived from the "
                     f"outbox (buffered); state dir at the last sample with the broker up: "
                     f"{r['state_kib']['broker_up_end']} KiB")
    cam = r.get("camera")
    if cam and cam["outages"]:
        got = [s for s in cam["read_again_after_s"] if s is not None]
        lines.append(f"  camera away   {cam['outages']} times ("
                     + ", ".join(f"{k} {v}" for k, v in sorted(cam["kinds"].items()))
                     + f"); read again {len(got)} times, at most {max(got, default=0):.1f} s after it "
                     f"came back; {cam['connections']} connections")
    w = r.get("viewers")
    if w:
        lines.append(f"  web viewers   {w['viewers']} watching the status page: {w['visits']} visits of the "
                     f"live view ({w['abrupt']} left mid-picture), {w['jpegs']} pictures, {w['pages']} "
                     f"other pages; {w['blank']} visits without a picture, {w['errors']} errors")
    return "\n".join(lines)


def problems(r: dict, max_growth: float | None, max_fd_growth: int) -> list[str]:
    out = []
    if r["exit_code"] not in (0, 75):
        out.append(f"maskd run ended with exit {r['exit_code']} (0 or 75 expected after SIGTERM)")
    g = r["rss_mib"]["growth_mib_per_h"]
    if max_growth is not None and g is not None and g > max_growth:
        out.append(f"memory grew {g:.2f} MiB/h over the second half (limit {max_growth:g})")
    if r["fds"]["end"] - r["fds"]["after_warmup"] > max_fd_growth:
        out.append(f"open files went from {r['fds']['after_warmup']} to {r['fds']['end']}")
    if r["frames"] == 0:
        out.append("the loop processed no frames")
    if r["files_kib"]["max"] > FILES_CAP_KIB:
        out.append(f"snapshots and the annotated clip grew to {r['files_kib']['max']} KiB "
                   f"(their caps allow {FILES_CAP_KIB})")
    if r["ends"] != r["starts"]:
        out.append(f"{r['starts']} violations started and {r['ends']} ended")
    pp = r["per_pass"]
    if pp is not None and not r["starts"]:
        out.append("no violation reached the broker: the demo person without a mask got none")
    if pp is not None and (pp["none"] or pp["more"]):
        out.append(f"{pp['none']} passes of the person got no violation and {pp['more']} more than one")
    w = r.get("viewers")
    if w and (w["errors"] or w["blank"] or not w["visits"]):
        out.append(f"the status page failed its viewers: {w['visits']} visits, {w['blank']} without "
                   f"a picture, {w['errors']} errors {w['first_errors']}")
    cam = r.get("camera")
    lost = [i for i, s in enumerate(cam["read_again_after_s"] if cam else []) if s is None]
    if lost:
        out.append(f"maskd did not read the camera again after its outage(s) {lost} (counted from 0)")
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=positive_float, default=30.0, help="how long maskd runs (default 30)")
    p.add_argument("--sample-s", type=positive_float, default=10.0, help="seconds between samples")
    p.add_argument("--video", type=Path, default=None,
                   help="loop this video file instead of the demo (no per-person count then)")
    p.add_argument("--local-files", action="store_true",
                   help=f"also write snapshots (whole frames, keep_mb {SNAPSHOTS_KEEP_MB:g}) and the "
                        f"annotated clip (segments of {CLIP_SEGMENT_MB:g} MB, {CLIP_KEEP_MB:g} MB kept), "
                        "and check that they stay under those caps")
    p.add_argument("--cameras", type=int, default=1, metavar="N",
                   help="N cameras in the one process (the cameras: layout), each its own demo "
                        "source, one status page (default 1)")
    p.add_argument("--watch", type=int, default=0, metavar="N",
                   help="N people watching the status page: each opens the live view for 1-12 s "
                        "(some leave mid-picture), then the other pages, again and again")
    p.add_argument("--camera", choices=("demo", "stream"), default="demo",
                   help="demo: the built-in source in maskd's process, as fast as the CPU allows "
                        "(default); stream: the same person from a network camera (MJPEG over HTTP "
                        "on a loopback port, 15 fps in real time), read as an http:// source")
    p.add_argument("--camera-outage-every-min", type=non_negative_float, default=0.0,
                   help="with --camera stream: take the camera away every this many minutes, "
                        "first stalled (connection open and silent), then gone (closed and "
                        "refused), and so on (default 0: never)")
    p.add_argument("--camera-outage-s", type=positive_float, default=30.0,
                   help="for this many seconds each time (default 30)")
    p.add_argument("--detector-model", type=Path, default=None,
                   help="YuNet .onnx (default: ../shared's when present, else maskd's `auto`)")
    p.add_argument("--json", type=Path, default=None, help="write the samples and the summary here")
    p.add_argument("--max-rss-growth-mib-h", type=non_negative_float, default=None,
                   help="fail when RSS grows faster than this over the second half")
    p.add_argument("--max-fd-growth", type=int, default=8,
                   help="fail when open files grow by more than this after warm-up (default 8)")
    p.add_argument("--malloc-arena-max", type=int, default=None, metavar="N",
                   help="glibc malloc arenas maskd may use (default: the unit's MALLOC_ARENA_MAX, as "
                        "on the device; 0: glibc's own default, 8 per core)")
    p.add_argument("--outage-every-min", type=non_negative_float, default=0.0,
                   help="stop the broker every this many minutes (default 0: never)")
    p.add_argument("--outage-s", type=positive_float, default=60.0,
                   help="for this many seconds each time (default 60)")
    a = p.parse_args(argv)  # NaN and inf are refused by the types (nan never ended the run)
    if a.malloc_arena_max is not None and a.malloc_arena_max < 0:
        p.error("--malloc-arena-max must be 0 or more")
    if a.watch < 0:
        p.error("--watch must be 0 or more")
    if a.cameras < 1 or (a.cameras > 1 and (a.video is not None or a.camera == "stream")):
        p.error("--cameras N: N from 1, and more than 1 only with the demo source")
    for every, length, name in ((a.outage_every_min, a.outage_s, "--outage"),
                                (a.camera_outage_every_min, a.camera_outage_s, "--camera-outage")):
        if every < 0 or length <= 0 or (every and length >= every * 60):
            p.error(f"{name}-s must be positive and shorter than {name}-every-min")
    if a.camera == "stream" and a.video is not None:
        p.error("--video and --camera stream are two different sources: give one")
    if a.camera_outage_every_min and a.camera != "stream":
        p.error("--camera-outage-every-min needs --camera stream (the demo source cannot go away)")
    if a.json is not None:
        out_file(a.json)  # its folder now: not a traceback after the whole run
    return a


def start_camera() -> IpCamera:
    """The demo person, looped, from a network camera in this process."""
    demo = DemoSource(loop=True)
    return IpCamera(lambda i: demo.render(i % demo.frames_per_pass), fps=FPS).start()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model = args.detector_model or (SHARED_YUNET if SHARED_YUNET.is_file() else None)
    for name, f in (("--detector-model", model), ("--video", args.video)):
        if f is not None and not f.is_file():
            print(f"soak: {name} {f}: no such file", file=sys.stderr)
            return 2
    with tempfile.TemporaryDirectory(prefix="maskd-soak-") as tmp:
        work = Path(tmp)
        try:
            broker = Broker(work / "broker", persistence=True).start()
        except (SystemExit, RuntimeError) as err:  # missing (says what to install) or failed
            print(f"soak: {err}", file=sys.stderr)
            return 2
        # a kept session on a persistent broker: nothing published is missed across its restarts
        names = camera_names(args.cameras)
        sub = Subscriber(broker, [topic(c) for c in names], client_id="soak-subscriber", clean=False)
        port = free_port()
        cam = start_camera() if args.camera == "stream" else None
        files = work / "files"
        cfg = soak_config(work, broker.url, port, model, args.video, cam.url if cam else None,
                          files if args.local_files else None, args.cameras)
        log = (work / "maskd.log").open("w")
        env = child_environment(args.malloc_arena_max) | {DEMO_FAST: "1"}  # not real time
        proc = subprocess.Popen([sys.executable, "-m", "maskd", "run", "--config", str(cfg)],
                                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        t0 = time.monotonic()
        samples: list[Sample] = []
        viewers = [Viewer(port, seed) for seed in range(args.watch)]
        try:
            end = t0 + args.minutes * 60
            outages = Outages(lambda _: broker.stop(), broker.start, args.outage_every_min * 60,
                              args.outage_s, t0)
            # stalled, gone, stalled, ...; only stepped with a camera (parse_args sees to it)
            cam_outages = Outages(lambda n: (cam.stall if n % 2 == 0 else cam.gone)(),
                                  lambda: cam.back(),
                                  args.camera_outage_every_min * 60, args.camera_outage_s, t0)
            next_sample = t0
            while proc.poll() is None:
                now = time.monotonic()
                if now >= next_sample:
                    try:
                        samples.append(sample(proc.pid, now - t0, port, work / "state", outages.up,
                                              files))
                    except OSError:  # it exited between poll() and the read of /proc
                        break
                    next_sample = now + args.sample_s
                    if samples[-1].frames and viewers and viewers[0].ident is None:
                        for v in viewers:  # once the page answers (started once only)
                            v.start()
                if now >= end:
                    break
                change = min(outages.step(now), cam_outages.step(now))
                time.sleep(max(0.0, min(next_sample, end, change) - time.monotonic()))
            if not outages.up:  # the last events need a broker to arrive
                outages.step(float("inf"))
            if not cam_outages.up:  # and the camera's last outage its end, read again
                cam_outages.step(float("inf"))
                wait_until(lambda: cam.outages[-1].first_frame is not None or proc.poll() is not None,
                           CAMERA_BACK_WAIT_S)
            for v in viewers:  # before maskd stops: its page going away is no viewer's error
                v.stop()
            for v in viewers:
                if v.is_alive():
                    v.join(timeout=30.0)
            died = proc.poll() is not None
            wall = time.monotonic() - t0
            if not died:
                proc.send_signal(signal.SIGTERM)
            try:
                rc = proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = None
            sub.wait(lambda ms: _balanced(ms), timeout=30.0)
            events = unique_events(m.json() for c in names for m in sub.on(topic(c)))
        finally:
            if proc.poll() is None:
                proc.kill()
            if cam is not None:
                cam.close()
            sub.close()
            broker.stop()
            log.close()
        tail = (work / "maskd.log").read_text(errors="replace").splitlines()[-15:]
    if not samples:
        print("soak: maskd run ended before the first sample:\n" + "\n".join(tail), file=sys.stderr)
        return 1
    starts: dict[str, list[int]] = {c: [] for c in names}
    for e in events:
        if e.get("event_type") == "start":  # the demo's frames are numbered from its first, a
            # live camera's by the time they were shown
            starts[e["camera"]].append(int(e["frame_seq"]) if cam is None
                                       else cam.frame_at_wall(float(e["start_time"])))
    ends = sum(e.get("event_type") == "end" for e in events)
    report = summarize(samples, starts, ends, rc, wall, demo=args.video is None,
                       excluded=unsettled_passes(cam, t0 + wall) if cam else frozenset())
    report["cameras"] = len(names)
    report["malloc_arena_max"] = env.get("MALLOC_ARENA_MAX")
    if cam is not None:
        report["camera"] = camera_report(cam)
    if viewers:
        report["viewers"] = viewers_report(viewers)
    report["end_reasons"] = dict(Counter(str(e.get("end_reason")) for e in events
                                         if e.get("event_type") == "end"))
    report["outages"] = outages.count
    report["buffered_events"] = sum(bool(e.get("buffered")) for e in events)
    report["state_kib"]["broker_up_end"] = next((s.state_kib for s in reversed(samples)
                                                 if s.broker_up), None)
    print(render(report))
    bad = problems(report, args.max_rss_growth_mib_h, args.max_fd_growth)
    if died:
        bad.insert(0, "maskd run stopped by itself before the end")
    for b in bad:
        print(f"soak: FAIL {b}", file=sys.stderr)
    if bad:
        print("last lines of maskd's log:\n" + "\n".join(tail), file=sys.stderr)
    # the checks first: a report that cannot be written (a full disk) must not hide them
    if args.json:
        write_out(args.json, json.dumps({"summary": report, "config": {"detector_model": str(model),
                                                                       "video": str(args.video),
                                                                       "camera": args.camera,
                                                                       "local_files": args.local_files,
                                                                       "watch": args.watch,
                                                                       "cameras": args.cameras},
                                         "samples": [asdict(s) for s in samples],
                                         "events": events}, indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
