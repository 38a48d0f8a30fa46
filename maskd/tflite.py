"""TFLite plumbing shared by the classifier and the TFLite detectors, pycoral-style small functions.

One loader (``open_interpreter``) so runtime choice and EdgeTPU errors read the same for every
model, and one ``set_input`` / ``get_output`` pair that (de)quantizes with each tensor's OWN
scale and zero point: a model converted with other calibration ranges then still gets the
values it was trained on, with nothing hard-coded per model.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

EDGETPU_LIB = "libedgetpu.so.1"


class ModelError(Exception):
    """The model cannot be used (missing, unreadable, no sidecar, no EdgeTPU); says what to do."""


def import_runtime() -> tuple[Any, Any, str]:
    """(Interpreter, load_delegate, name): ai-edge-litert, else tflite-runtime, else TensorFlow."""
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate

        return Interpreter, load_delegate, "ai_edge_litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter, load_delegate

        return Interpreter, load_delegate, "tflite_runtime"
    except ImportError:
        pass
    try:
        import tensorflow as tf

        return tf.lite.Interpreter, tf.lite.experimental.load_delegate, "tensorflow"
    except ImportError:
        raise ModelError(
            "no TFLite runtime: pip install ai-edge-litert (or tflite-runtime, or tensorflow)"
        ) from None


def edgetpu_delegate(load_delegate: Any) -> Any:
    """The Coral delegate, or ModelError saying whether the library or the device is missing."""
    try:
        ctypes.CDLL(EDGETPU_LIB)
    except OSError:
        raise ModelError(
            f"EdgeTPU requested but {EDGETPU_LIB} is not installed: install the Coral runtime "
            "(apt-get install libedgetpu1-std from https://packages.cloud.google.com/apt "
            "coral-edgetpu-stable), or run without --edgetpu on the CPU"
        ) from None
    try:
        return load_delegate(EDGETPU_LIB)
    except (ValueError, OSError, RuntimeError) as err:
        raise ModelError(
            f"EdgeTPU requested but no Coral device could be opened ({err}): plug in the "
            "USB Accelerator (or check the PCIe/M.2 driver and permissions), or run without --edgetpu"
        ) from None


def open_interpreter(path: Path, threads: int = 2, edgetpu: bool = False) -> tuple[Any, str]:
    """(allocated interpreter, runtime name) for any .tflite: the one loader the classifier and
    the TFLite detectors share, so runtime choice and EdgeTPU errors are the same everywhere."""
    interpreter_cls, load_delegate, runtime = import_runtime()
    kwargs: dict[str, Any] = {"model_path": str(path)}
    if edgetpu:
        kwargs["experimental_delegates"] = [edgetpu_delegate(load_delegate)]
        runtime += "+edgetpu"
    else:
        kwargs["num_threads"] = max(1, int(threads))
    try:
        interp = interpreter_cls(**kwargs)
        interp.allocate_tensors()
    except (ValueError, RuntimeError, OSError) as err:
        raise ModelError(f"{path}: cannot load TFLite model: {err}") from None
    return interp, runtime


def quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Real values -> the tensor's dtype: round(x / scale + zero_point), clipped to its range.

    Values already in the tensor's dtype are taken as quantized (e.g. raw uint8 pixels for
    a Coral model built to take them) and pass unchanged; float tensors just get float values.
    """
    dtype = np.dtype(detail["dtype"])
    x = np.asarray(x)
    if x.dtype == dtype:
        return x
    if not np.issubdtype(dtype, np.integer):
        return x.astype(dtype)
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    q = np.round(x / scale + zero)
    return np.clip(q, info.min, info.max).astype(dtype)


def dequantize(q: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """A tensor's values -> float32 real values: (q - zero_point) * scale; floats pass as they are."""
    q = np.asarray(q)
    if not np.issubdtype(q.dtype, np.integer):
        return q
    scale, zero = detail["quantization"]
    return (q.astype(np.float32) - zero) * np.float32(scale)


def set_input(interpreter: Any, x: np.ndarray, i: int = 0) -> None:
    """Write ``x`` (real values, batch included) into input ``i``, quantized with its own params."""
    detail = interpreter.get_input_details()[i]
    interpreter.set_tensor(detail["index"], quantize(x, detail))


def get_output(interpreter: Any, i: int = 0) -> np.ndarray:
    """Output ``i`` (position among the model's outputs) as real values, dequantized with its own params."""
    detail = interpreter.get_output_details()[i]
    return dequantize(interpreter.get_tensor(detail["index"]), detail)
