"""``macs``: the classifier's multiply-accumulates (TFLite graph and Keras layers) against this
CPU's nominal int8 peak."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np

from tools.benchlib.common import rel
from tools.benchlib.face import keras_model_for, load_keras


def tflite_macs(path: Path) -> dict[str, Any]:
    """Multiply-accumulates per inference, counted op by op from the TFLite graph.

    CONV_2D: H_out*W_out*C_out*kh*kw*C_in; DEPTHWISE_CONV_2D: H_out*W_out*C_out*kh*kw;
    FULLY_CONNECTED: in*out. Everything else (adds, pooling, activations) is not a MAC.
    Works from the .tflite alone, so it runs on a Pi without TensorFlow.
    """
    from maskd.classifier import ModelError
    from maskd.tflite import open_interpreter

    try:  # the loader the classifier and detectors use: its one line for a file it cannot load
        interp, _ = open_interpreter(path, threads=1)
    except ModelError as err:  # a truncated file: was a traceback after the timings
        raise SystemExit(str(err)) from None
    shapes = {t["index"]: [int(v) for v in t["shape"]] for t in interp.get_tensor_details()}
    by_op: dict[str, int] = {}
    for op in interp._get_ops_details():
        name = op["op_name"]
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        w = shapes[int(op["inputs"][1])]
        out = shapes[int(op["outputs"][0])]
        if name == "CONV_2D":  # weights [C_out, kh, kw, C_in], out [1, H, W, C_out]
            macs = out[1] * out[2] * w[0] * w[1] * w[2] * w[3]
        elif name == "DEPTHWISE_CONV_2D":  # weights [1, kh, kw, C_out]
            macs = out[1] * out[2] * out[3] * w[1] * w[2]
        else:  # weights [out, in]
            macs = w[0] * w[1]
        by_op[name] = by_op.get(name, 0) + macs
    size = int(interp.get_input_details()[0]["shape"][1])
    return {"model": str(rel(path)), "input_size": size, "macs": sum(by_op.values()), "by_op": by_op}


def keras_macs(model: Any) -> int:
    """The same count from a Keras model's own layers (nested models included); needs TF."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            total += keras_macs(layer)
        elif isinstance(layer, keras.layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c * kh * kw
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return int(total)


# MobileNetV2-224 (alpha 1, no top), counted by keras_macs on keras.applications.MobileNetV2:
# the reference the estimates scale by where TensorFlow is absent (a Pi). The paper gives
# "300M" multiply-adds with the 1000-class top (Sandler et al. 2018, arXiv:1801.04381, Table
# 4); the top adds 1.28 M. tests/test_bench.py recounts it from the Keras layers.
MOBILENETV2_224_MACS = 299_494_272


def mobilenetv2_macs(size: int) -> int | None:
    """MACs of the bare MobileNetV2 (alpha 1, no top) at ``size`` from its Keras layers."""
    try:
        import keras
    except ImportError:
        return None
    base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=None)
    return keras_macs(base)


# int8 multiply-accumulates one core can issue per cycle, by the best instruction the
# TFLite/XNNPACK int8 kernels can use on that CPU (2 vector pipes assumed: an upper bound).
PEAK_TABLE = [
    ("avx512_vnni", 2 * 64, "AVX-512 VNNI VPDPBUSD zmm: 64 int8 MACs/instr, 2 pipes"),
    ("avx_vnni", 2 * 32, "AVX-VNNI VPDPBUSD ymm: 32 int8 MACs/instr, 2 pipes"),
    ("avx2", 2 * 16, "AVX2 VPMADDWD ymm on int8 widened to int16: 16 MACs/instr, 2 pipes"),
    ("sse4_1", 2 * 8, "SSE4.1 PMADDWD xmm: 8 MACs/instr, 2 pipes"),
    ("asimddp", 2 * 16, "Armv8.2 SDOT 128-bit: 16 int8 MACs/instr, 2 NEON pipes (Cortex-A76, Pi 5)"),
    ("asimd", 2 * 8, "NEON SMLAL 8x16-bit MACs/instr, 2 pipes (Cortex-A72, Pi 4)"),
]


def cpu_peak() -> dict[str, Any]:
    """Nominal int8 MAC/s of this CPU: MACs/cycle/core (from its ISA flags) x cores x clock."""
    text = Path("/proc/cpuinfo").read_text(errors="replace") if Path("/proc/cpuinfo").exists() else ""
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    mhz = None
    for line in text.splitlines():
        key, _, val = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(val.split())
        elif key in ("model name", "model") and val.strip() and not val.strip().isdigit():
            model = val.strip()
        elif key == "cpu mhz" and mhz is None:
            mhz = float(val)
    max_freq = Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if max_freq.exists():  # kHz; the clock it boosts to under load (a Pi's 1.5/1.8/2.4 GHz)
        mhz = int(max_freq.read_text()) / 1000.0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if "neon" in flags or platform.machine() in ("aarch64", "arm64"):
        flags.add("asimd")
    per_cycle, how = next(((m, h) for f, m, h in PEAK_TABLE if f in flags), (1, "scalar: 1 MAC/cycle"))
    out: dict[str, Any] = {"cpu": model, "cores": cores, "mhz": mhz, "int8_macs_per_cycle_per_core": per_cycle,
                           "isa": how}
    if mhz:
        out["peak_int8_gmacs_per_core"] = per_cycle * mhz / 1000.0
        out["peak_int8_gmacs"] = out["peak_int8_gmacs_per_core"] * cores
    return out


def model_macs(args: argparse.Namespace, notes: list[str]) -> dict[str, Any]:
    """The int8 model's MACs (from its .tflite, no TensorFlow needed) and MobileNetV2-224's:
    what the estimates scale published MobileNetV2-224 latencies by."""
    out: dict[str, Any] = {}
    if args.model.is_file():
        out["model"] = tflite_macs(args.model)
    else:
        notes.append(f"MAC count from TFLite skipped: no int8 model {rel(args.model)}")
    out["mobilenetv2_224_macs"] = MOBILENETV2_224_MACS
    out["mobilenetv2_224_source"] = ("MobileNetV2-224 base (no top), its Keras layers' count "
                                     "kept in tools/benchlib/macs.py (the paper: 300M with top)")
    return out


def bench_macs(args: argparse.Namespace, face: dict[str, Any] | None, notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"peak": cpu_peak(), **model_macs(args, notes)}
    size = out.get("model", {}).get("input_size", 224)
    if not args.no_keras:
        # Cross-check from Keras layers: the bare MobileNetV2-224 (the number the issue asks
        # for) and, when a trained Keras model is at hand, the whole classifier.
        ref = mobilenetv2_macs(224)
        if ref is not None:
            out["mobilenetv2_224_macs"] = ref
            out["mobilenetv2_224_source"] = "MobileNetV2-224 base (no top), from its Keras layers"
            keras_model = args.keras or keras_model_for(args.model)
            loaded = load_keras(keras_model, size, []) if keras_model else None
            if loaded is not None:
                out["keras_count"] = {"model": loaded[1], "macs": keras_macs(loaded[0])}
    peak = out["peak"].get("peak_int8_gmacs_per_core")
    if face and "model" in out and peak:
        uses = []
        for r in face["rows"]:
            if r["name"] == "TFLite int8" and isinstance(r["threads"], int):
                gmacs = out["model"]["macs"] / (r["invoke_median_ms"] / 1000.0) / 1e9
                cores = min(r["threads"], out["peak"]["cores"])
                uses.append({"threads": r["threads"], "achieved_gmacs": gmacs,
                             "peak_gmacs": peak * cores, "fraction_of_peak": gmacs / (peak * cores)})
        out["utilisation"] = uses
    return out
