"""Where bench finds models and shared data, and how it times a call."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("MASKD_SHARED", REPO.parent / "shared"))
MODELS = REPO / "models"
INT8_MODEL = MODELS / "maskd_mobilenetv2_int8.tflite"
FLOAT_MODEL = MODELS / "maskd_mobilenetv2_float32.tflite"
EDGETPU_MODEL = MODELS / "maskd_mobilenetv2_int8_edgetpu.tflite"


def measure(fn: Callable[[], Any], warmup: int, repeats: int) -> dict[str, float]:
    """Median / p10 / p90 wall time of ``fn`` in ms after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000.0)
    times.sort()
    return {
        "median_ms": statistics.median(times),
        "p10_ms": times[int(0.1 * (len(times) - 1))],
        "p90_ms": times[int(0.9 * (len(times) - 1))],
        "n": len(times),
    }


def thread_counts() -> list[int]:
    """1 and 2 threads always (the issue asks for both), plus every core when there are more."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return sorted({1, 2, n})


def rel(p: Path) -> Path:
    """``p`` relative to the repository when it is inside it (for notes and reports)."""
    try:
        return p.resolve().relative_to(REPO)
    except ValueError:
        return p
