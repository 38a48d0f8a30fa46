"""A tiny daemon stand-in for MQTT tests: MqttSink fed with scripted ViolationEvents.

Deterministic and fast, so the tests can kill it, restart it and stop the broker under it.
Prints "emitted <event_id> <seq>" per accepted event and "connected" once the broker is up.
Exit: --then exit flushes (0 when drained, 75 otherwise); --then wait runs until SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

from maskd.config import Config, MqttConfig
from maskd.mqtt import MqttSink
from maskd.types import FaceCounts, RunControl, ViolationEvent


def counts(faces: int, masked: int, unmasked: int) -> FaceCounts:
    """A frame's counts as the run loop reports them to sinks."""
    return FaceCounts(faces, masked, unmasked, unjudged=0, active=0, detect_enabled=True,
                      timestamp=time.time())


def script(tag: str, violations: int, updates: int, left_open: int = 0) -> list[ViolationEvent]:
    """start, `updates` updates, end for each violation, in emit order; the last `left_open`
    violations get no end."""
    out = []
    for v in range(violations):
        eid = f"{tag}-{v}"
        t0 = 1_800_000_000.0 + v
        kinds = ["start"] + ["update"] * updates + ["end"] * (v < violations - left_open)
        for seq, kind in enumerate(kinds):
            out.append(ViolationEvent(
                event_type=kind, event_id=eid, seq=seq, camera="cam1", track_id=v,
                start_time=t0, score=0.9, top_score=0.95, box=(0.1, 0.2, 0.3, 0.4),
                end_time=t0 + seq if kind == "end" else None,
                end_reason="gone" if kind == "end" else None, frame_seq=seq,
            ))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--state-dir", type=Path, required=True)
    ap.add_argument("--tag", default="v")
    ap.add_argument("--violations", type=int, default=0)
    ap.add_argument("--updates", type=int, default=1)
    ap.add_argument("--left-open", type=int, default=0, help="violations that get no end")
    ap.add_argument("--period", type=float, default=0.0)
    ap.add_argument("--then", choices=["exit", "wait"], default="exit")
    ap.add_argument("--flush-timeout", type=float, default=30.0)
    ap.add_argument("--reconnect-max", type=float, default=1.0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")

    cfg = Config(device_id="dev1", camera="cam1", state_dir=args.state_dir,
                 mqtt=MqttConfig(url=args.url, reconnect_min_s=0.2,
                                 reconnect_max_s=args.reconnect_max))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    sink = MqttSink.from_config(cfg, RunControl(), model_name="test-model")
    announced = False
    for ev in script(args.tag, args.violations, args.updates, args.left_open):
        sink.emit(ev)
        print(f"emitted {ev.event_id} {ev.seq}", flush=True)
        if not announced and sink.connected:
            print("connected", flush=True)
            announced = True
        sink.on_state(counts(1, 0, 1))
        time.sleep(args.period)
    print("done", flush=True)
    if args.then == "wait":
        while not stop.wait(0.1):
            if not announced and sink.connected:
                print("connected", flush=True)
                announced = True
        sink.close()
        return 0
    drained = sink.flush(args.flush_timeout)
    sink.close()
    return 0 if drained else 75


if __name__ == "__main__":
    raise SystemExit(main())
