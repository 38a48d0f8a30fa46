#!/usr/bin/env python3
"""What maskd writes to the SD card: bytes that reach the block device per MQTT message and
per idle hour, printed (not a test).

A Pi's card wears with every block written, and maskd stores every message in its outbox
(SQLite, synchronous) before sending it. This measures it the way a card sees it: a real ext4
(a loop-mounted image with its journal, ``noatime`` as Raspberry Pi OS mounts its root) holds
``state_dir`` (and with ``--jsonl`` the JSON lines file), a real ``maskd run`` writes to it and
a real mosquitto takes the messages; the device's own count of sectors written (after a
``sync``) is read before and after each phase:

  idle:  a clip of a grey wall, looped: no face, the service waiting at an empty door;
  busy:  the demo clip, looped (its people come and go as fast as this machine runs it).

The detector is ``auto`` (YuNet when its file is found, else BlazeFace); which one does not
change what a message costs. Root only (mount, losetup).

    sudo .venv/bin/python tools/bench_writes.py [--seconds 120] [--per-day 500] [--jsonl]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from maskd.env import DEMO_FAST
from tools.inputs import positive_float, positive_int
from tools.mosquitto import Broker, Subscriber

WARMUP_S = 15.0  # models loaded, discovery sent, the outbox created: not what a day costs


def grey_wall(path: Path) -> Path:
    """A short MJPG clip of a plain grey picture at the camera's size: nothing to find."""
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15.0, (640, 480))
    for _ in range(150):
        out.write(np.full((480, 640, 3), 96, np.uint8))
    out.release()
    return path


def sectors_written(device: str) -> int:
    """The block device's count of 512-byte sectors written since it was set up
    (Documentation/block/stat.rst, field 7), after a sync puts the dirty pages there."""
    subprocess.run(["sync"], check=True)
    return int(Path(f"/sys/block/{os.path.basename(device)}/stat").read_text().split()[6])


def measure(what: str, source: str, card: Path, device: str, broker: Broker, seconds: float,
            jsonl: bool) -> tuple[float, int, int]:
    """One phase: (KiB written, violation messages, violations started) over ``seconds``."""
    sub = Subscriber(broker, ["maskd/#"])
    cmd = [sys.executable, "-m", "maskd", "run", "--source", source, "--loop", "--mqtt",
           broker.url, "--state-dir", str(card / "state"), "--camera", what]
    if jsonl:
        cmd += ["--jsonl", str(card / "events.jsonl")]
    log = (card.parent / f"{what}.log").open("w")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log,
                            env=os.environ | {DEMO_FAST: "1"})  # the demo as fast as it runs
    try:
        time.sleep(WARMUP_S)
        if proc.poll() is not None:
            raise SystemExit(f"maskd run ({what}) ended with {proc.returncode}: see "
                             f"{card.parent / f'{what}.log'}")

        def violations() -> list[dict]:
            return [m.json() for m in list(sub.messages) if m.topic.endswith("/violation")]

        before, seen = sectors_written(device), len(violations())
        time.sleep(seconds)
        after, got = sectors_written(device), violations()[seen:]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        log.close()
        sub.close()
    starts = sum(m["event_type"] == "start" for m in got)
    return (after - before) * 512 / 1024, len(got), starts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=positive_float, default=120.0,
                    help="each phase's measured time (over a minute: the outbox's prune and the "
                         "stats come once a minute)")
    ap.add_argument("--per-day", type=positive_int, default=500,
                    help="violations a day for the estimate (a busy door)")
    ap.add_argument("--jsonl", action="store_true", help="JSON lines on the card too")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench_writes: needs root (it loop-mounts an ext4 image)")
    with tempfile.TemporaryDirectory(prefix="maskd-writes-") as tmp:
        root = Path(tmp)
        image, card = root / "card.img", root / "card"
        card.mkdir()
        subprocess.run(["truncate", "-s", "256M", str(image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
        device = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                                capture_output=True, text=True).stdout.strip()
        try:
            subprocess.run(["mount", "-o", "noatime", device, str(card)], check=True)
            try:
                with Broker(root / "broker") as broker:
                    idle = measure("idle", str(grey_wall(root / "wall.avi")), card, device,
                                   broker, args.seconds, args.jsonl)
                    busy = measure("busy", "demo", card, device, broker, args.seconds,
                                   args.jsonl)
            finally:
                subprocess.run(["umount", str(card)], check=False)
        finally:
            subprocess.run(["losetup", "-d", device], check=False)
    hours = args.seconds / 3600
    kib, messages, starts = busy
    print(f"ext4 on {device} (journal, noatime); state_dir"
          f"{' and JSON lines' if args.jsonl else ''} on it; {args.seconds:.0f} s a phase")
    print(f"idle (no face):  {idle[0]:9,.0f} KiB written = {idle[0] / hours:9,.0f} KiB an hour "
          f"({idle[1]} violation messages)")
    if messages == 0 or starts == 0:
        print("busy (demo):     no violation message came: nothing to divide by")
        return 1
    per_msg, per_violation = kib / messages, kib / starts
    print(f"busy (demo):     {kib:9,.0f} KiB written, {messages} violation messages, {starts} "
          f"violations: {per_msg:,.1f} KiB a message, {per_violation:,.1f} KiB a violation")
    day = per_violation * args.per_day + idle[0] / hours * 24
    print(f"a day with {args.per_day} violations: {day / 1024:,.1f} MiB; a year: "
          f"{day * 365 / 2**20:,.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
