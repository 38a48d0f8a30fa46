"""``estimates``: Raspberry Pi 4/5 and Coral figures from published per-model latencies, scaled
by MACs and labelled as estimates with their sources."""

from __future__ import annotations

from typing import Any

# Published per-model latencies for MobileNetV2-224 (1000-class head: its extra MACs are
# under 0.5%), scaled to our model by the MAC ratio. Estimates, not measurements.
PUBLISHED = [
    {"device": "Raspberry Pi 4 (4x Cortex-A72 1.5 GHz), TFLite int8, 4 threads",
     "ms_low": 17.0, "ms_high": 20.0,
     "source": "project brief (issue 6): 'a Pi 4 can run MobileNetV2 int8 in about 17-20 ms'"},
    {"device": "Raspberry Pi 5 (4x Cortex-A76 2.4 GHz), TFLite int8, 4 threads",
     "ms_low": 17.0 * 23.5 / 112.6, "ms_high": 20.0 * 23.5 / 112.6,
     "source": "Pi 4 figure x the Pi 5/Pi 4 TFLite MobileNet v2 ratio 23.5/112.6 ms measured by "
               "A. Allan, github.com/aallan/benchmarking-ml-on-the-edge (a detection model; ratio only)"},
    {"device": "Coral USB Accelerator (USB 3.0) / Dev Board, EdgeTPU int8",
     "ms_low": 2.6, "ms_high": 2.6,
     "source": "coral.ai/docs/edgetpu/benchmarks Table 1, MobileNet v2 (224x224): 2.6 ms "
               "(model only, C++; USB on a Pi 4 adds transfer time)"},
]
REFERENCE_FIGURES = [
    {"what": "seed repositories: Keras model.predict per image, desktop", "s_per_image": 4.7,
     "source": "project brief (issue 6)"},
    {"what": "most-used open-source mask demo (SSD + Keras) on a Pi 4", "s_per_image": 0.49,
     "source": "project brief (issue 6)"},
]


def bench_estimates(macs: dict[str, Any] | None) -> dict[str, Any]:
    """The published rows scaled by ``macs`` (bench_macs or model_macs): our model's MACs over
    MobileNetV2-224's. Without a count they are left unscaled and say so."""
    ratio, why = 1.0, "NOT scaled: no MAC count of the int8 model (see notes)"
    if macs and macs.get("model") and macs.get("mobilenetv2_224_macs"):
        ratio = macs["model"]["macs"] / macs["mobilenetv2_224_macs"]
        why = f"scaled by our MACs / MobileNetV2-224 MACs = {ratio:.3f}"
    rows = []
    for p in PUBLISHED:
        lo, hi = p["ms_low"] * ratio, p["ms_high"] * ratio
        rows.append({**p, "est_ms_low": lo, "est_ms_high": hi, "est_faces_per_s": 1000.0 / hi,
                     "scaling": why, "estimate": True})
    return {"rows": rows, "reference": REFERENCE_FIGURES}
