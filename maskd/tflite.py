"""TFLite plumbing shared by the classifier and the TFLite detectors, pycoral-style small functions.

One loader (``open_interpreter``) so runtime choice and EdgeTPU errors read the same for every
model, and one ``set_input`` / ``get_output`` pair that (de)quantizes with each tensor's OWN
scale and zero point: a model converted with other calibration ranges then still gets the
values it was trained on, with nothing hard-coded per model.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from maskd.clock import local_iso
from maskd.config import printable

EDGETPU_LIB = "libedgetpu.so.1"

log = logging.getLogger("maskd.tflite")


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


class CoralAbsent(ModelError):
    """libedgetpu loads but no Coral answers: the hardware's state (unplugged, not enumerated yet
    at boot, resetting), not a setup mistake, so `run` waits for it and then exits 75
    (EX_TEMPFAIL) for systemd to start it again, where a missing library is exit 78."""


CORAL_WAIT_S = 90.0  # `run` waits this long for a Coral to answer, then exits 75
CORAL_RETRY_S = 5.0  # and asks again this often meanwhile
CORAL_RETRIED = "exit 75, systemd starts maskd again (is the Coral plugged in?)"
CORAL_USB_IDS = {("1a6e", "089a"), ("18d1", "9302")}  # before and after its firmware is loaded
NO_CORAL_FOUND = "no Coral USB (1a6e:089a / 18d1:9302) or PCIe (/dev/apex_0) found"  # what coral_devices did not find


class CoralLost(Exception):
    """A Coral that answered stopped answering mid-run (pulled out, or reset by a USB
    brown-out): its invoke failed. `run` ends what is open, keeps the outbox and exits 75, so
    systemd's restart lands in the start's wait for the Coral (``wait_for_coral``): a fresh
    process, since libedgetpu's own state after a lost device is not to be trusted."""


CORAL_LOST_NEXT = (f"exit 75, systemd starts maskd again, and the start waits up to "
                   f"{CORAL_WAIT_S:g} s for the Coral")  # what `run` does about CoralLost
RUNTIME_SAID_MAX = 300  # characters of the runtime's own words kept in that one line


def invoke(interpreter: Any, edgetpu: bool, what: str) -> None:
    """``interpreter.invoke()``; on a Coral (``edgetpu``) its failure is CoralLost, naming
    ``what`` ran there (the classifier, the face detector) with the runtime's words on one line:
    a model that cannot run there fails earlier, when it is loaded, so an invoke that fails
    is the device gone. On the CPU an error stays the runtime's own (a bug, not the hardware)."""
    try:
        interpreter.invoke()
    except RuntimeError as err:
        if not edgetpu:
            raise
        said = " ".join(str(err).split())[:RUNTIME_SAID_MAX] or type(err).__name__
        raise CoralLost(f"{what}'s Coral stopped answering ({said}): unplugged, or reset (a "
                        "USB brown-out: check the power supply)") from None


def cpu_instead(keys: Sequence[str] = (), option: bool = False) -> str:
    """How to run on the CPU instead, in the words of what asked for the Coral: ``option``
    (--edgetpu given to scan, classify or run; it sets classifier.edgetpu) is left out, a config
    key (``keys``: the service's file) is set false; with neither known, all of them."""
    ways = (["leave out --edgetpu"] if option else []) + [
        f"set {key}: false" for key in keys if not (option and key == "classifier.edgetpu")]
    if not ways:
        return "turn the EdgeTPU off (--edgetpu, classifier.edgetpu, detector.edgetpu) to run on the CPU"
    return " and ".join(ways) + " to run on the CPU"


def edgetpu_library_problem(keys: Sequence[str] = (), option: bool = False) -> str | None:
    """Why the EdgeTPU runtime cannot be used on this machine (a setup mistake), or None; the way
    to the CPU in the words of what asked for it (``cpu_instead``)."""
    try:
        ctypes.CDLL(EDGETPU_LIB)
    except OSError:
        return (f"EdgeTPU requested but {EDGETPU_LIB} is not installed: install the Coral runtime "
                "(apt-get install libedgetpu1-std from https://packages.cloud.google.com/apt "
                f"coral-edgetpu-stable), or {cpu_instead(keys, option)}")
    return None


def need_edgetpu_library(keys: Sequence[str], option: bool = False) -> None:
    """ModelError naming ``keys`` when they want the Coral and its library is missing: checked
    before any model opens (`run`, `scan`, `classify`), so the message can say which setting or
    option to change; ``option``: --edgetpu was given."""
    if keys and (problem := edgetpu_library_problem(keys, option)) is not None:
        raise ModelError(f"{', '.join(keys)}: {problem}")


def coral_absent(detail: str, waits: bool = False) -> str:
    """The one wording of "no Coral answers"; ``waits``: with what `maskd run` does about it
    (`run`, `check-config` and `doctor` say it; `scan` and `classify` stop at once)."""
    said = (f"no Coral answers ({detail}): plug in the USB Accelerator (or check the PCIe/M.2 "
            "driver and permissions)")
    if waits:
        said += (f"; `maskd run` waits up to {CORAL_WAIT_S:g} s for it, asking every "
                 f"{CORAL_RETRY_S:g} s, then {CORAL_RETRIED}")
    return said


def edgetpu_delegate(load_delegate: Any, waits: bool = False) -> Any:
    """The Coral delegate; ModelError when the library is missing (a setup mistake), CoralAbsent
    when it loads but no device answers (the runtime's ValueError; ``waits``: said by `run`'s
    wait, which goes on asking)."""
    problem = edgetpu_library_problem()
    if problem is not None:
        raise ModelError(problem)
    try:
        return load_delegate(EDGETPU_LIB)
    except (ValueError, OSError, RuntimeError) as err:
        detail = " ".join(str(err).split()) or type(err).__name__
        raise CoralAbsent(f"EdgeTPU requested but {coral_absent(detail, waits)}") from None


def coral_devices(sysfs: Path = Path("/sys/bus/usb/devices"), dev: Path = Path("/dev")) -> list[str]:
    """Coral accelerators on the USB bus or PCIe, with whether this user may open them; read
    from sysfs, never opened (a running maskd holds it: a probe would fail there)."""
    found = []
    for d in sorted(sysfs.glob("*")) if sysfs.is_dir() else []:
        try:
            ids = ((d / "idVendor").read_text().strip(), (d / "idProduct").read_text().strip())
        except OSError:
            continue
        if ids in CORAL_USB_IDS:
            node = dev / "bus/usb" / f"{int((d / 'busnum').read_text()):03d}" / f"{int((d / 'devnum').read_text()):03d}"
            ok = os.access(node, os.R_OK | os.W_OK)
            found.append(f"USB {ids[0]}:{ids[1]} at {node}"
                         + ("" if ok else " NOT accessible (udev rule / plugdev group?)"))
    if (dev / "apex_0").exists():
        found.append("PCIe /dev/apex_0" + ("" if os.access(dev / "apex_0", os.R_OK | os.W_OK)
                                           else " NOT accessible (apex group?)"))
    return found


def coral_problems(keys: list[str]) -> tuple[str | None, str | None]:
    """What `check-config` says of the Coral the config's ``keys`` want, in `run`'s words:
    (error: the library is missing, `run` exits 78; warning: no Coral on the USB bus or PCIe
    now, `run` waits for it). The device is looked for in sysfs, not opened."""
    if not keys:
        return None, None
    problem = edgetpu_library_problem(keys)
    if problem is not None:
        return f"{', '.join(keys)}: {problem}", None
    if coral_devices():
        return None, None
    return None, f"{', '.join(keys)}: EdgeTPU requested but {coral_absent(NO_CORAL_FOUND, waits=True)}"


def wait_for_coral(keys: list[str], wait_s: float | None = None,
                   waiting: Callable[[str], None] | None = None,
                   cancelled: Callable[[], bool] = lambda: False, option: bool = False) -> None:
    """Before `run` opens its models: ask for the Coral (``keys``: the config keys that want it)
    until one answers, every CORAL_RETRY_S for up to ``wait_s`` (CORAL_WAIT_S), so a Coral that
    enumerates late at boot, or was unplugged for a moment, does not stop maskd. Raises ModelError
    at once for a missing library, CoralAbsent after the wait; one ERROR when the wait begins,
    ``waiting`` hears the systemd STATUS; ``cancelled`` (a stop signal) ends it early;
    ``option``: --edgetpu was given (the missing library's message says to leave it out)."""
    wait_s = CORAL_WAIT_S if wait_s is None else wait_s
    named = ", ".join(keys)
    need_edgetpu_library(keys, option)
    _, load_delegate, _ = import_runtime()
    deadline = time.monotonic() + wait_s
    said = False
    while True:
        try:
            edgetpu_delegate(load_delegate, waits=True)  # dropped at once: the models open their own
            if said:
                log.info("%s: the Coral answers now; starting", named)
            return
        except CoralAbsent as err:
            if cancelled():
                return
            if time.monotonic() >= deadline:
                raise CoralAbsent(f"{named}: {err} (none after {wait_s:g} s)") from None
            if not said:
                said = True
                log.error("%s: %s", named, err)
                if waiting is not None:
                    waiting(f"waiting for the Coral ({named}) since {local_iso(time.time())}")
        retry = min(time.monotonic() + CORAL_RETRY_S, deadline)
        while not cancelled() and time.monotonic() < retry:  # a stop is heard within 0.2 s
            time.sleep(max(0.0, min(0.2, retry - time.monotonic())))


EDGETPU_OP = b"edgetpu-custom-op"  # the one op edgetpu_compiler puts its compiled graph in


def not_compiled_for_edgetpu(path: Path) -> str | None:
    """Why a model put on the Coral would in fact run on the CPU (edgetpu_compiler did not make
    it: the delegate then takes none of its ops, without a word), or None; a file that cannot be
    read is said elsewhere. A warning, not a refusal: such a config ran before, on the CPU."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if EDGETPU_OP in data:
        return None
    return (f"{path} is not compiled for the EdgeTPU (no {EDGETPU_OP.decode()} in it), so it "
            "runs on the CPU although the Coral is asked for: compile it with edgetpu_compiler "
            "and name the *_edgetpu.tflite (docs/classifier.md), or set edgetpu: false")


def open_interpreter(path: Path, threads: int = 2, edgetpu: bool = False) -> tuple[Any, str]:
    """(allocated interpreter, runtime name) for any .tflite: the one loader the classifier and
    the TFLite detectors share, so runtime choice and EdgeTPU errors are the same everywhere."""
    interpreter_cls, load_delegate, runtime = import_runtime()
    kwargs: dict[str, Any] = {"model_path": str(path)}
    if edgetpu:
        kwargs["experimental_delegates"] = [edgetpu_delegate(load_delegate)]
        runtime += "+edgetpu"
        if (line := not_compiled_for_edgetpu(path)) is not None:
            log.warning("%s", line)
    else:
        kwargs["num_threads"] = max(1, int(threads))
    try:
        interp = interpreter_cls(**kwargs)
        interp.allocate_tensors()
    except (ValueError, RuntimeError, OSError) as err:
        if not edgetpu and EDGETPU_OP.decode() in str(err):  # the runtime's words name no fix
            raise ModelError(f"{path}: compiled for the EdgeTPU (edgetpu_compiler), so it runs "
                             "only on a Coral: set edgetpu: true for it (classifier.edgetpu, "
                             "detector.edgetpu or --edgetpu), or name the model it was compiled "
                             "from") from None
        # TensorFlow's and ai-edge-litert's before 2.1.6 quote the file's first bytes raw
        # ("model identifier '\\r\\n\\x1a\\n'"): four lines with control bytes in them
        raise ModelError(f"{path}: cannot load TFLite model: {printable(str(err).strip())}") from None
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
