#!/usr/bin/env python3
"""How alike the tracker's appearance descriptor finds one person, and two different people.

`tracking.same_person_similarity` decides whether a new violating track is the person of an
open event (re-attach) or of one in its cooldown. Too low, and the next person in a queue is
merged into the previous one's event (a missed alarm); too high, and one person lost for a
moment gets a second event. This tool measures both sides on walk-up clips of the annotated
photos (docs/eval_video.md, round nineteen), not on events:

  * same person, lost and found: for each judged ``without_mask`` person in view for
    >= ``SPAN`` frames, the detector's box (matched to the person, IoU >= 0.3) is cut like the
    classifier's crop and folded into a running mean as a track does (``Tracker.observe``).
    Descriptor A covers the person's first ``FIRST`` frames in view, B ``LATER`` frames from
    frame ``GAP`` after the first (a new track a second later, when it could be confirmed);
  * different people: A of one person against B of each person from another photo.

The rule: the threshold is the largest multiple of ``STEP`` at or below the ``PERCENTILE``-th
percentile of the same-person similarities (>= 95 % of people found again keep their event).

    python tools/eval_identity.py                   # train photos, the rule's threshold
    python tools/eval_identity.py --part select --json runs/identity_select.json
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from maskd.commands.run import startup_errors  # noqa: E402
from maskd.geometry import box_iou, crop_face  # noqa: E402
from maskd.pipeline import embed_crops  # noqa: E402
from maskd.service import build_classifier, build_detector  # noqa: E402
from maskd.tracking import Tracker  # noqa: E402
from maskd.types import MaskClassifier  # noqa: E402
from tools.eval_scenes import DEFAULT_SCENES, load_scenes, report_skipped  # noqa: E402
from tools.eval_video import (  # noqa: E402
    CACHE,
    IOU,
    ClipPlan,
    build_plans,
    clip_truth,
    ensure_clip,
    eval_config,
    judged_people,
)
from tools.inputs import non_negative_int, out_file, positive_int, write_json  # noqa: E402

FIRST = 15  # frames of A: the event's appearance when its track is lost
GAP = 30  # B starts this many frames after the person's first frame (1 s after A ends)
LATER = 10  # frames of B: a new track when it could be confirmed (3 votes over 0.6 s)
SPAN = GAP + LATER  # people in view for fewer frames give no pair
PERCENTILE = 5.0
STEP = 0.05
CANDIDATES = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


@dataclass
class _Looks:
    """Just what ``Tracker.observe`` reads and writes: the running appearance."""

    appearance: np.ndarray | None = None


def same_and_different(a: np.ndarray, b: np.ndarray, groups: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Similarities of A[i] with B[i] (same person) and of A[i] with B[j] for people of other
    photos (different people), from unit descriptors (rows) and each person's photo."""
    s = np.asarray(a) @ np.asarray(b).T
    g = np.asarray(groups)
    return np.diag(s).copy(), s[g[:, None] != g[None, :]]


def threshold_rule(same: np.ndarray, percentile: float = PERCENTILE, step: float = STEP) -> float:
    """The largest multiple of ``step`` at or below the ``percentile``-th same-person similarity."""
    if not len(same):
        raise ValueError("no same-person pairs: no judged unmasked person stays in view long enough")
    p = float(np.percentile(same, percentile))
    return round(float(np.floor(p / step + 1e-9)) * step, 10)


def read_frames(path: Path) -> list[np.ndarray]:
    """Every frame of a rendered clip; a clip OpenCV cannot open is an error, not zero people."""
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            raise OSError(f"{path}: OpenCV cannot open this clip")
        frames = []
        while True:
            ok, frame = cap.read()
            if not ok:
                return frames
            frames.append(frame)
    finally:
        cap.release()


def descriptor(frames: Sequence[np.ndarray], faces: Sequence[list], truth: np.ndarray,
               person: int, ts: range, margin: float, tracker: Tracker,
               classifier: MaskClassifier) -> np.ndarray | None:
    """The running appearance over frames ``ts`` of the detector's boxes on ``person``, with
    the classifier's features of each crop as the pipeline has them (``embed_crops``)."""
    looks = _Looks()
    for t in ts:
        if t >= len(frames) or np.isnan(truth[t, person, 0]) or not faces[t]:
            continue
        iou = box_iou(np.array([f.box for f in faces[t]]), truth[t, person])[:, 0]
        j = int(np.argmax(iou))
        if iou[j] >= IOU:
            crop = crop_face(frames[t], faces[t][j].box, margin)
            _, feats = embed_crops(classifier, [crop])
            tracker.observe(looks, crop, feats[0])  # type: ignore[arg-type]
    return looks.appearance


def clip_pairs(plan: ClipPlan, cache: Path, detector, margin: float, tracker: Tracker,
               classifier: MaskClassifier) -> list[tuple[np.ndarray, np.ndarray]]:
    """(A, B) for each judged unmasked person of a clip in view for >= SPAN frames."""
    truth = clip_truth(plan)
    labels = np.concatenate([sc.labels for sc in plan.scenes])
    seen = (~np.isnan(truth[..., 0])).sum(axis=0)
    people = np.flatnonzero(judged_people(truth) & (labels == "without_mask") & (seen >= SPAN))
    if not len(people):
        return []
    path, _ = ensure_clip(plan, cache)
    frames = read_frames(path)
    faces = [detector.detect(f) for f in frames]
    out = []
    for p in people:
        first = int(np.flatnonzero(~np.isnan(truth[:, p, 0]))[0])
        a = descriptor(frames, faces, truth, p, range(first, first + FIRST), margin, tracker,
                       classifier)
        b = descriptor(frames, faces, truth, p, range(first + GAP, first + SPAN), margin, tracker,
                       classifier)
        if a is not None and b is not None:
            out.append((a, b))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenes", type=Path, default=DEFAULT_SCENES)
    p.add_argument("--part", choices=("all", "train", "select"), default="train",
                   help="photos of this part (the rule uses train; select is for checks)")
    # --limit 0 said 'no .xml files', -3 ran on all but the last 3 photos: checked as
    # eval_video checks it
    p.add_argument("--limit", type=positive_int, help="at most N photos (trials)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--json", type=Path, help="write the similarities and the threshold here")
    args = p.parse_args(argv)
    if args.json:  # a folder or an unwritable place stops it now, not after the whole run
        out_file(args.json)

    a, b, groups = [], [], []
    try:
        skipped: list[str] = []
        scenes = load_scenes(args.scenes, args.limit, args.part, skipped)
        report_skipped("eval_identity", skipped)
        cfg = eval_config(None, [], 1)
        detector = build_detector(cfg)
        classifier = build_classifier(cfg)
        tracker = Tracker(cfg.tracking)
        for plan in build_plans(scenes, ["walkup"], args.seed):
            for da, db in clip_pairs(plan, args.cache, detector, cfg.classifier.margin, tracker,
                                     classifier):
                a.append(da)
                b.append(db)
                groups.append(plan.name)
    except (*startup_errors(), ValueError) as err:
        print(f"eval_identity: {err}", file=sys.stderr)
        return 2
    if len(set(groups)) < 2:
        print(f"eval_identity: only {len(a)} people from {len(set(groups))} photos in view for "
              f">= {SPAN} frames; need two photos at least", file=sys.stderr)
        return 2
    same, diff = same_and_different(np.array(a), np.array(b), groups)
    chosen = threshold_rule(same)
    print(f"part {args.part}: {len(same)} people (in view >= {SPAN} frames), "
          f"{diff.size} different-person pairs")
    print("same person, percentiles 1/5/10/50:     " + " ".join(
        f"{v:.3f}" for v in np.percentile(same, [1, 5, 10, 50])))
    print("different people, percentiles 50/90/99: " + " ".join(
        f"{v:.3f}" for v in np.percentile(diff, [50, 90, 99])))
    print(f"{'threshold':>9s} {'same kept':>10s} {'different merged':>17s}")
    for v in CANDIDATES:
        print(f"{v:9.2f} {np.mean(same >= v):10.3f} {np.mean(diff >= v):17.4f}")
    print(f"rule: {PERCENTILE:g}th percentile of the same person {np.percentile(same, PERCENTILE):.3f}"
          f" -> same_person_similarity {chosen:.2f} (configured: "
          f"{cfg.tracking.same_person_similarity:.2f})")
    if args.json:
        write_json(args.json, {
            "part": args.part, "people": len(same), "same": same.tolist(),
            "different_pairs": int(diff.size),
            "merged": {f"{v:.2f}": float(np.mean(diff >= v)) for v in CANDIDATES},
            "kept": {f"{v:.2f}": float(np.mean(same >= v)) for v in CANDIDATES},
            "threshold": chosen,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
