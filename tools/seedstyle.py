"""The seed-style pipeline: how the seed repositories and the most-used demo process a frame.

Built exactly their way so that tools/bench.py can compare maskd with it on the same frames:
OpenCV's ResNet-10 SSD face detector (``cv2.dnn.readNetFromTensorflow``, a 300x300 blob with
mean (104, 177, 123), confidence 0.5), then for every face the raw box cut out of the frame,
BGR->RGB, resized to 224x224, ``mobilenet_v2.preprocess_input``, and one Keras
``model.predict`` per face. No tracking, no caching, no quantization.

Kept out of maskd/ on purpose: it exists only as a baseline (it needs TensorFlow).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from maskd.detectors import OpenCvSsd

SEED_CONFIDENCE = 0.5


class SeedPipeline:
    """detect (ResNet-10 SSD) -> per-face Keras ``predict``, the seeds' way."""

    def __init__(self, keras_model: Any, ssd_pb: Path, confidence: float = SEED_CONFIDENCE):
        from keras.applications.mobilenet_v2 import preprocess_input

        self.model = keras_model
        self.size = int(keras_model.input_shape[1])
        self._preprocess = preprocess_input
        # maskd's OpenCvSsd feeds the net exactly the seeds' blob (300x300, same mean, no swap).
        self.detector = OpenCvSsd(Path(ssd_pb), score_threshold=confidence)
        self.stats = {"frames": 0, "faces": 0, "classified": 0}

    def process(self, frame_bgr: np.ndarray) -> list[tuple[tuple[int, int, int, int], float]]:
        """(box, model output for the last class) per detected face."""
        h, w = frame_bgr.shape[:2]
        out = []
        for face in self.detector.detect(frame_bgr):
            x0, y0, x1, y1 = face.box
            x0, y0 = max(0, int(x0)), max(0, int(y0))
            x1, y1 = min(w - 1, int(x1)), min(h - 1, int(y1))
            crop = frame_bgr[y0:y1, x0:x1]
            if crop.size == 0:
                continue
            rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
            rgb = cv2.resize(rgb, (self.size, self.size))
            x = self._preprocess(rgb.astype(np.float32))[None]
            pred = np.asarray(self.model.predict(x, verbose=0))[0]
            out.append(((x0, y0, x1, y1), float(pred[-1])))
            self.stats["classified"] += 1
        self.stats["frames"] += 1
        self.stats["faces"] += len(out)
        return out
