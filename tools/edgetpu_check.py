#!/usr/bin/env python3
"""Is this int8 .tflite EdgeTPU-compilable? A static check for machines without ``edgetpu_compiler``.

The compiler maps an op to the Coral only when the model meets the EdgeTPU's requirements
(coral.ai/docs/edgetpu/models-intro, "Model requirements" and "Supported operations"); the first
op that does not is where the graph splits and everything after it runs on the CPU. This
checks those requirements on the graph as the TFLite runtime reads it:

- every op is in ``EDGETPU_OPS`` (the supported-operations table);
- every tensor has a fixed shape (no -1 in its shape signature: no dynamic tensors), and the
  input and output batch dimension is 1;
- activations are int8/uint8 (quantised); int32 only as the constant bias of a convolution or
  fully-connected op; no float tensor anywhere.

What it cannot see: per-op parameter limits (e.g. no fused activation on pooling, the same
dilation in x and y), the 8 MB parameter cache, compiler version quirks. So "compilable" here
means "nothing in the graph rules it out"; ``edgetpu_compiler -s`` (see docs/classifier.md)
is the final word.

    python tools/edgetpu_check.py [MODEL.tflite]    # default: the shipped int8 classifier

Exit status: 0 compilable, 1 not (the reasons listed), 2 a model file it cannot read.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from maskd.classifier import ModelError
from maskd.config import model_file_problem
from tools.inputs import reason

# The supported-operations table of coral.ai/docs/edgetpu/models-intro (TFLite builtin names).
EDGETPU_OPS = frozenset({
    "ADD", "AVERAGE_POOL_2D", "CONCATENATION", "CONV_2D", "DEPTHWISE_CONV_2D", "EXPAND_DIMS",
    "FULLY_CONNECTED", "L2_NORMALIZATION", "LOGISTIC", "LSTM", "MAXIMUM", "MAX_POOL_2D", "MEAN",
    "MINIMUM", "MUL", "PACK", "PAD", "PRELU", "QUANTIZE", "REDUCE_MAX", "REDUCE_MIN", "RELU",
    "RELU6", "RELU_N1_TO_1", "RESHAPE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR", "RSQRT",
    "SLICE", "SOFTMAX", "SPACE_TO_DEPTH", "SPLIT", "SQUARED_DIFFERENCE", "SQUEEZE",
    "STRIDED_SLICE", "SUB", "SUM", "TANH", "TRANSPOSE", "TRANSPOSE_CONV",
})
BIAS_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV"})
QUANT_DTYPES = (np.int8, np.uint8)


def check(path: Path) -> tuple[list[str], dict[str, Any]]:
    """(problems, facts) for the model at ``path``; no problems = nothing rules compilation out."""
    from maskd.tflite import import_runtime

    interpreter_cls, _, _ = import_runtime()
    try:
        interp = interpreter_cls(model_path=str(path))
    # not maskd.tflite.open_interpreter: it also allocates the tensors (running each op's
    # prepare step), which this static look at the graph neither needs nor should depend on
    except (ValueError, RuntimeError) as err:  # empty, truncated, not a model: a traceback
        raise ModelError(f"{path}: not a readable TFLite model ({reason(err)})") from None
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    ops = interp._get_ops_details()  # the runtime's only view of the graph
    problems: list[str] = []
    ops_count = Counter(op["op_name"] for op in ops)
    for name in sorted(set(ops_count) - EDGETPU_OPS):
        problems.append(f"op {name} (x{ops_count[name]}) is not in the EdgeTPU's supported list: "
                        "the graph would split there and the rest would run on the CPU")
    bias = {op["inputs"][2] for op in ops if op["op_name"] in BIAS_OPS and len(op["inputs"]) > 2}
    for t in tensors.values():
        sig = [int(v) for v in t.get("shape_signature", t["shape"])]
        if any(v < 0 for v in sig):
            problems.append(f"tensor {t['name']!r} has a dynamic shape {sig}")
        dtype = np.dtype(t["dtype"])
        if dtype in [np.dtype(d) for d in QUANT_DTYPES]:
            continue
        if dtype == np.int32 and t["index"] in bias:
            continue
        problems.append(f"tensor {t['name']!r} is {dtype.name}, not int8/uint8 "
                        "(EdgeTPU needs a fully quantised graph)")
    io = [("input", d) for d in interp.get_input_details()] + [("output", d) for d in interp.get_output_details()]
    for kind, d in io:
        shape = [int(v) for v in d["shape"]]
        if not shape or shape[0] != 1:
            problems.append(f"{kind} {d['name']!r} has batch {shape[:1]}, the EdgeTPU needs batch 1")
    facts = {"model": str(path), "ops": dict(ops_count), "tensors": len(tensors),
             "io": [(kind, d["name"], [int(v) for v in d["shape"]], np.dtype(d["dtype"]).name) for kind, d in io]}
    return problems, facts


def main(argv: list[str] | None = None) -> int:
    from maskd.classifier import packaged_model_path

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("model", type=Path, nargs="?", default=packaged_model_path())
    args = p.parse_args(argv)
    try:
        if (problem := model_file_problem(args.model)) is not None:
            raise ModelError(problem)
        problems, facts = check(args.model)
    except ModelError as err:  # bad input, told apart from "not compilable" (1) by its status
        print(f"edgetpu_check: {err}", file=sys.stderr)
        return 2
    print(f"{facts['model']}: {sum(facts['ops'].values())} ops, {facts['tensors']} tensors")
    print("ops: " + ", ".join(f"{k} x{v}" for k, v in sorted(facts["ops"].items())))
    for kind, name, shape, dtype in facts["io"]:
        print(f"{kind}: {name} {shape} {dtype}")
    if problems:
        print("NOT EdgeTPU-compilable as it is:")
        print("\n".join(f"- {m}" for m in problems))
        return 1
    print("EdgeTPU-compilable as far as a static check can tell: every op is on the supported "
          "list, shapes are fixed with batch 1, tensors are int8/uint8 (int32 only as biases). "
          "Expect `edgetpu_compiler -s` to map all ops to the EdgeTPU.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
