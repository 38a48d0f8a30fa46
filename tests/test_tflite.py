"""maskd.tflite: (de)quantization with each tensor's own scale and zero point, on a real model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from maskd.tflite import dequantize, get_output, open_interpreter, quantize, set_input


def test_quantize_uses_the_tensors_scale_and_zero_point() -> None:
    detail = {"dtype": np.int8, "quantization": (0.5, -3)}
    q = quantize(np.array([-100.0, -1.0, 0.0, 0.74, 100.0], np.float32), detail)
    assert q.dtype == np.int8 and q.tolist() == [-128, -5, -3, -2, 127]  # clipped to int8
    assert dequantize(q, detail).tolist() == [-62.5, -1.0, 0.0, 0.5, 65.0]
    raw = np.array([0, 200], np.uint8)  # already the tensor's type: taken as quantized
    assert quantize(raw, {"dtype": np.uint8, "quantization": (0.1, 7)}) is raw
    f = quantize(np.array([1, 2], np.int64), {"dtype": np.float32, "quantization": (0.0, 0)})
    assert f.dtype == np.float32 and dequantize(f, {"quantization": (0.0, 0)}) is f


def test_set_input_and_get_output_on_the_shipped_int8_model(default_model: Path) -> None:
    interp, _ = open_interpreter(default_model, threads=1)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    scale, zero = inp["quantization"]
    assert np.issubdtype(inp["dtype"], np.integer) and scale > 0
    x = np.linspace(-1.0, 1.0, int(np.prod(inp["shape"])), dtype=np.float32).reshape(inp["shape"])
    set_input(interp, x)
    q = interp.get_tensor(inp["index"])
    info = np.iinfo(inp["dtype"])
    assert q.dtype == inp["dtype"]
    np.testing.assert_array_equal(q, np.clip(np.round(x / scale + zero), info.min, info.max))
    assert np.abs((q.astype(np.float32) - zero) * scale - x).max() <= scale / 2 + 1e-6
    interp.invoke()
    y = get_output(interp, 0)
    o_scale, o_zero = out["quantization"]
    raw = interp.get_tensor(out["index"])
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, (raw.astype(np.float32) - o_zero) * o_scale)
    assert y.sum() == pytest.approx(1.0, abs=0.02)  # softmax over mask / no_mask


def test_a_model_compiled_for_the_edgetpu_without_edgetpu_says_how_to_run_it(
        default_model: Path, tmp_path: Path) -> None:
    """An edgetpu_compiler model with edgetpu off was the runtime's 'Encountered unresolved
    custom op: edgetpu-custom-op. See instructions: ...', naming no key (check-config said OK,
    doctor 'edgetpu library not needed'). The shipped model with its first operator renamed to
    the compiler's custom op stands in for a compiled one."""
    import subprocess
    import sys

    flatbuffers = pytest.importorskip("flatbuffers")
    schema = pytest.importorskip("tensorflow.lite.python.schema_py_generated")
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(default_model.read_bytes(), 0))
    op = model.operatorCodes[0]
    op.builtinCode = op.deprecatedBuiltinCode = 32  # CUSTOM
    op.customCode = b"edgetpu-custom-op"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    compiled = tmp_path / f"{default_model.stem}_edgetpu.tflite"
    compiled.write_bytes(builder.Output())
    sidecar = default_model.with_suffix(".json")  # the compiled model's is its source's
    (tmp_path / sidecar.name).write_bytes(sidecar.read_bytes())
    r = subprocess.run([sys.executable, "-m", "maskd", "run", "--source", "demo", "--max-frames",
                        "1", "--model", str(compiled)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 78, r.stderr
    assert r.stderr.splitlines()[-1] == (
        f"maskd run: {compiled}: compiled for the EdgeTPU (edgetpu_compiler), so it runs only on "
        "a Coral: set edgetpu: true for it (classifier.edgetpu, detector.edgetpu or --edgetpu), "
        "or name the model it was compiled from"), r.stderr


def test_a_file_that_is_no_model_is_one_printable_line_whatever_the_runtime(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorFlow's interpreter (the fallback runtime) and ai-edge-litert before 2.1.6 (within
    pyproject's >=1.2) refuse a non-model with its first bytes quoted raw: an .h5 renamed gave
    check-config, run and classify a four-line error with a carriage return and a ^Z in it. The
    runtime here stands in with the message those runtimes raise (seen with litert 1.2.0 and
    tensorflow 2.21)."""
    import maskd.tflite as tflite

    class OldRuntime:
        def __init__(self, model_path: str, **_: object) -> None:
            raise ValueError("Model provided has model identifier '\r\n\x1a\n', should be "
                             "'TFL3'\n")

    monkeypatch.setattr(tflite, "import_runtime", lambda: (OldRuntime, None, "tensorflow"))
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))
    with pytest.raises(tflite.ModelError) as err:
        open_interpreter(garbage)
    assert str(err.value) == (f"{garbage}: cannot load TFLite model: Model provided has model "
                              "identifier '\\r\\n\\x1a\\n', should be 'TFL3'")
