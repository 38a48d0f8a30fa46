#!/usr/bin/env python3
"""What the camera loop waits for on a frame with violation events, printed (not a test).

Every event is on the card before the loop goes on: the MQTT outbox's commit (SQLite,
``synchronous=FULL``) and ``open_violations.json``'s rewrite (its data synced, the rename, the
folder synced), a frame's events together in each. So a frame with events waits for the card's
``fsync``s, whatever the frame's other work. This times the loop's own ``_emit`` of one frame's
events (JSON lines, the open violations, and with ``--mqtt`` the outbox, its broker away: the
store alone) for one person and for a crowd starting, updating, ending while others start,
and ending. Each ``fsync`` and ``fdatasync`` of the process is made ``--fsync-ms`` slower by
strace (an SD card's is about 20 ms; this machine's disk is far faster), so the numbers say
what a card adds.

    .venv/bin/python tools/bench_frames.py [--fsync-ms 20] [--crowds 1,5,20] [--reps 5]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.inputs import comma_list, non_negative_int, positive_int

UNDER_STRACE = "MASKD_BENCH_FRAMES_STRACED"  # set in the process strace runs
FRAMES = ("start", "update", "end+start", "end")


def events(tag: str, n: int, kind: str) -> list:
    """``n`` violations' events of one ``kind`` (seq 0 start, 1 update, 2 end)."""
    from maskd.types import ViolationEvent

    seq = {"start": 0, "update": 1, "end": 2}[kind]
    return [ViolationEvent(event_type=kind, event_id=f"{tag}-{v}", seq=seq, camera="cam1",
                           track_id=v, start_time=1.8e9 + v, score=0.9, top_score=0.95,
                           box=(0.1, 0.2, 0.3, 0.4), end_time=1.8e9 + v + 2 if seq == 2 else None,
                           end_reason="gone" if seq == 2 else None, frame_seq=seq)
            for v in range(n)]


def frame_ms(n: int, mqtt: bool, reps: int) -> dict[str, float]:
    """The median time of each kind of frame, in ms, ``n`` violations at once."""
    from maskd.config import Config, MqttConfig
    from maskd.jsonl import JsonlSink
    from maskd.ledger import OpenViolations
    from maskd.mqtt.sink import MqttSink
    from maskd.service import CameraLoop
    from maskd.types import RunControl

    took: dict[str, list[float]] = {k: [] for k in FRAMES}
    for r in range(reps):
        with tempfile.TemporaryDirectory() as tmp:
            state = Path(tmp)
            sinks: list = [JsonlSink(str(state / "events.jsonl"))]
            if mqtt:  # port 9: nothing there, the events stay in the outbox
                sinks.append(MqttSink(MqttConfig(url="mqtt://127.0.0.1:9", reconnect_min_s=60),
                                      "bench", "cam1", state))
            # _emit touches neither the source nor the pipeline
            loop = CameraLoop(Config(), None, None, sinks, [], RunControl(),  # type: ignore[arg-type]
                              ledger=OpenViolations(state, ("cam1",), outbox=mqtt))
            frames = {"start": events(f"a{r}", n, "start"), "update": events(f"a{r}", n, "update"),
                      "end+start": events(f"a{r}", n, "end") + events(f"b{r}", n, "start"),
                      "end": events(f"b{r}", n, "end")}
            for kind, evs in frames.items():
                t0 = time.perf_counter()
                loop._emit(evs)
                took[kind].append((time.perf_counter() - t0) * 1000)
            for sink in sinks:
                sink.close()
    return {k: statistics.median(v) for k, v in took.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fsync-ms", type=non_negative_int, default=20, metavar="MS",
                    help="added to each fsync by strace, 0 for none (default: 20)")
    ap.add_argument("--crowds", type=comma_list(positive_int), default=[1, 5, 20],
                    help="violations starting on one frame (default: 1,5,20)")
    ap.add_argument("--reps", type=positive_int, default=5, help="default: 5")
    args = ap.parse_args()
    if args.fsync_ms and not os.environ.get(UNDER_STRACE):
        strace = shutil.which("strace")
        if strace is None:
            ap.error("--fsync-ms needs strace (apt-get install strace), or --fsync-ms 0")
        sys.exit(subprocess.call([
            strace, "-f", "-qq", "--seccomp-bpf", "-o", "/dev/null", "-e", "trace=fsync,fdatasync",
            "-e", f"inject=fsync,fdatasync:delay_exit={args.fsync_ms * 1000}", sys.executable,
            *sys.argv], env={**os.environ, UNDER_STRACE: "1"}))
    logging.disable(logging.CRITICAL)  # the events' INFO lines
    print(f"ms of the loop per frame; each fsync {args.fsync_ms} ms slower; median of {args.reps}")
    for mqtt in (False, True):
        for n in args.crowds:
            ms = frame_ms(n, mqtt, args.reps)
            print(f"MQTT {'on ' if mqtt else 'off'} {n:3} at once:"
                  + "".join(f"  {k} {v:4.0f}" for k, v in ms.items()), flush=True)


if __name__ == "__main__":
    main()
