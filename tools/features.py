#!/usr/bin/env python3
"""Give a converted classifier a second output: the head's pooled features.

The tracker compares faces by them, so that two people standing at the same spot one after the
other are told apart (docs/eval_video.md, round twenty-three). The pooled tensor is already in
the converted graph (it feeds the head); this only lists it among the model's outputs, so the
scores stay bit for bit what they were, and records in the sidecar which output is which.
A new conversion would not do: int8 conversion is not byte-reproducible here.

    python tools/features.py models/maskd_mobilenetv2_int8.tflite      # in place
    python tools/features.py runs/m128t/tflite/maskd_mobilenetv2_float32.tflite --out x.tflite
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maskd.classifier import read_sidecar, sidecar_path  # noqa: E402
from maskd.config import model_file_problem  # noqa: E402
from maskd.files import write_together  # noqa: E402
from maskd.tflite import ModelError  # noqa: E402
from tools.inputs import out_file, reason  # noqa: E402

DEFAULT_LAYER = "head_pool"


def pooled_tensor(names: list[str], shapes: list[list[int]], layer: str) -> int:
    """Index of the one tensor written by ``layer`` (its name holds ``/<layer>``, the converter's
    naming) with a shape of (1, 1, 1, C) or (1, C)."""
    hits = [i for i, (n, s) in enumerate(zip(names, shapes, strict=True))
            if f"/{layer}" in n and len(s) in (2, 4) and s[0] == 1 and all(v == 1 for v in s[1:-1])]
    if len(hits) != 1:
        raise ModelError(f"expected one pooled tensor of layer {layer!r}, found {len(hits)}")
    return hits[0]


def expose(model: Path, out: Path, layer: str = DEFAULT_LAYER) -> None:
    """Write ``model`` with ``layer``'s pooled tensor as an extra output to ``out`` (the sidecar
    beside it too: the scores stay output 0, the features are output 1).

    The model is looked for before its sidecar (a missing model used to be reported as a
    missing sidecar) and a file the flatbuffer reader cannot parse is a ModelError naming it
    (was a struct.error traceback).
    """
    if (problem := model_file_problem(model)) is not None:
        raise ModelError(problem)
    info = read_sidecar(model)
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    try:
        m = flatbuffer_utils.read_model(str(model))
    except Exception as err:  # noqa: BLE001 - struct.error, IndexError, ... from a bad buffer
        raise ModelError(f"{model}: not a readable TFLite model ({reason(err)})") from None
    if len(m.subgraphs) != 1:
        raise ModelError(f"{model}: {len(m.subgraphs)} subgraphs; expected one")
    graph = m.subgraphs[0]
    outputs = [int(i) for i in graph.outputs]
    if len(outputs) != 1:
        raise ModelError(f"{model}: has {len(outputs)} outputs already; expected the scores alone")
    names = [t.name.decode() if isinstance(t.name, bytes) else str(t.name) for t in graph.tensors]
    shapes = [[int(v) for v in t.shape] for t in graph.tensors]
    feat = pooled_tensor(names, shapes, layer)
    graph.outputs = outputs + [feat]
    for sig in m.signatureDefs or []:
        entry = schema.TensorMapT()
        entry.name, entry.tensorIndex = "features", feat
        sig.outputs = list(sig.outputs) + [entry]
    side = dict(info.raw, outputs={"scores": 0, "features": 1},
                features={"layer": layer, "size": shapes[feat][-1]})
    if out != model:
        side["model_file"] = out.name
    # Both whole or neither: written in place (or over an earlier --out) on a full disk, the
    # model was cut and its old sidecar left beside it, a model maskd could no longer load.
    try:
        write_together({out: bytes(flatbuffer_utils.convert_object_to_bytearray(m)),
                        sidecar_path(out): json.dumps(side, indent=1).encode("utf-8")})
    except OSError as err:
        raise ModelError(f"{out}: cannot write it ({err.strerror or reason(err)}); the files "
                         "there are left as they were") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", type=Path, help="a .tflite made by tools/convert.py (sidecar beside it)")
    p.add_argument("--out", type=Path, help="write here (default: in place)")
    p.add_argument("--layer", default=DEFAULT_LAYER, help="the pooling layer whose output is exposed")
    args = p.parse_args(argv)
    out = out_file(args.out) if args.out else args.model  # a folder: was a TensorFlow traceback
    try:
        expose(args.model, out, args.layer)
    except (ModelError, OSError) as err:
        raise SystemExit(f"features: {err}") from None
    print(f"{out}: scores and {args.layer} features (sidecar {sidecar_path(out).name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
