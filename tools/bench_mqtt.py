#!/usr/bin/env python3
"""MQTT benchmark: publish latency on loopback and outbox throughput, printed (not a test).

Starts its own mosquitto on a free loopback port (tools/mosquitto.py) unless --url is given.
  latency:    emit() cost to the detection loop; emit -> broker PUBACK (row leaves the
              outbox); emit -> a subscriber receives it. One event at a time, p50/p99.
  throughput: Outbox.put rate (durable FULL vs NORMAL sync), and the replay rate: events
              stored while the broker is down, then drained after it comes back.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from maskd.config import MqttConfig
from maskd.mqtt import MqttSink
from maskd.mqtt.schema import event_fields
from maskd.outbox import Outbox
from maskd.types import ViolationEvent
from tools.inputs import out_dir, positive_int
from tools.mosquitto import Broker, Subscriber


def event(i: int) -> ViolationEvent:
    return ViolationEvent(event_type="update", event_id=f"bench-{i}", seq=i, camera="cam",
                          track_id=1, start_time=time.time(), score=0.9, top_score=0.9,
                          box=(0.1, 0.1, 0.2, 0.2))


def pct(xs: list[float]) -> str:
    a = np.array(xs) * 1000
    return f"p50 {np.percentile(a, 50):7.2f} ms   p99 {np.percentile(a, 99):7.2f} ms   (n={len(a)})"


def bench_latency(broker: Broker, state: Path, n: int) -> None:
    sub = Subscriber(broker, ["bench/#"])
    got: dict[int, float] = {}
    done = threading.Condition()

    def on_message(client, userdata, msg):  # noqa: ANN001
        import json

        with done:
            got[json.loads(msg.payload)["seq"]] = time.perf_counter()
            done.notify_all()

    sub.client.message_callback_add("bench/+/cam/violation", on_message)
    sink = MqttSink(MqttConfig(url=broker.url, prefix="bench", discovery=False), "dev", "cam", state)
    deadline = time.monotonic() + 10
    while not sink.connected and time.monotonic() < deadline:
        time.sleep(0.01)
    emit_s, ack_s, recv_s = [], [], []
    for i in range(n):
        t0 = time.perf_counter()
        sink.emit(event(i))
        t1 = time.perf_counter()
        if not sink.flush(10):
            raise SystemExit("broker did not acknowledge within 10 s")
        t2 = time.perf_counter()
        with done:
            done.wait_for(lambda i=i: i in got, timeout=10)
        emit_s.append(t1 - t0)
        ack_s.append(t2 - t0)
        recv_s.append(got[i] - t0)
    sink.close()
    sub.close()
    print(f"emit() call (loop cost)      {pct(emit_s)}")
    print(f"emit -> PUBACK (outbox done) {pct(ack_s)}")
    print(f"emit -> subscriber receives  {pct(recv_s)}")


def bench_outbox(state: Path, n: int) -> None:
    for durable in (True, False):
        d = state / f"put-{durable}"
        ob = Outbox(d, durable=durable)
        payload = event_fields(event(0))
        t0 = time.perf_counter()
        for _ in range(n):
            ob.put("t", payload)
        dt = time.perf_counter() - t0
        ob.close()
        print(f"outbox put, synchronous={'FULL' if durable else 'NORMAL':6} {n / dt:9.0f} events/s")


def bench_replay(broker: Broker, state: Path, n: int) -> None:
    broker.stop()
    sink = MqttSink(MqttConfig(url=broker.url, prefix="bench", discovery=False,
                               reconnect_min_s=0.1, reconnect_max_s=0.2), "dev", "cam", state)
    for i in range(n):
        sink.emit(event(i))
    broker.start()
    t0 = time.perf_counter()
    deadline = time.monotonic() + 30
    while not sink.connected and time.monotonic() < deadline:
        time.sleep(0.005)
    t1 = time.perf_counter()
    ok = sink.flush(120)
    t2 = time.perf_counter()
    sink.close()
    print(f"replay after outage: {n} events drained in {t2 - t1:.2f} s "
          f"= {n / (t2 - t1):.0f} events/s (reconnect took {t1 - t0:.2f} s, drained={ok})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=positive_int, default=300, help="events for the latency run")
    ap.add_argument("--outbox-events", type=positive_int, default=2000, help="events for throughput")
    ap.add_argument("--state-dir", type=Path, default=None,
                    help="where to put the outboxes (default: a temp dir; use the Pi's SD card)")
    args = ap.parse_args()
    if args.state_dir is not None:
        out_dir(args.state_dir)  # one line naming it, not a traceback from mkdtemp
    with tempfile.TemporaryDirectory(dir=args.state_dir) as tmp:
        root = Path(tmp)
        print(f"state dir {root}")
        with Broker(root / "broker") as broker:
            print(f"broker {broker.url} (mosquitto, loopback)")
            bench_latency(broker, root / "lat", args.events)
            bench_outbox(root, args.outbox_events)
            bench_replay(broker, root / "replay", args.outbox_events)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
