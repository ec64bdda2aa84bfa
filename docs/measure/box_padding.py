"""How loose are the annotated face boxes about the landmarks? The median padding of the train
boxes about their landmarks' extent, and how well a box drawn that way from the true landmarks
matches each val box: IoU, and the box AP it would score as a detector (pycocotools).

    python docs/measure/box_padding.py data/dogflw_mini/annotations
"""
import json
import sys
from pathlib import Path

import numpy as np

import _repo  # the repository on sys.path: docs/measure/_repo.py
from detector.model import box_average_precision


def faces(ann_file: Path) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(image id, labelled landmarks (N, 2), box x1 y1 x2 y2) of each annotation."""
    out = []
    for ann in json.loads(ann_file.read_text())["annotations"]:
        points = np.array(ann["keypoints"], dtype=float).reshape(-1, 3)
        x, y, w, h = ann["bbox"]
        out.append((ann["image_id"], points[points[:, 2] > 0, :2], np.array([x, y, x + w, y + h])))
    return out


def padding(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Left, top, right, bottom margins of the box about the points' extent, in shares of that extent."""
    low, high = points.min(0), points.max(0)
    extent = np.tile(high - low, 2)
    return (np.concatenate([low - box[:2], box[2:] - high])) / extent


def padded_box(points: np.ndarray, pads: np.ndarray) -> np.ndarray:
    low, high = points.min(0), points.max(0)
    extent = np.tile(high - low, 2)
    return np.concatenate([low, high]) + np.array([-1, -1, 1, 1]) * pads * extent


def iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.prod(np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None))
    return float(inter / (np.prod(a[2:] - a[:2]) + np.prod(b[2:] - b[:2]) - inter))


def main(ann_root: str) -> None:
    root = Path(ann_root)
    pads = np.median([padding(p, b) for _, p, b in faces(root / "train.json")], axis=0)
    print("median padding of the train boxes (left, top, right, bottom):", np.round(pads, 3))
    val = faces(root / "val.json")
    drawn = [padded_box(points, pads) for _, points, _ in val]
    ious = np.array([iou(d, box) for d, (_, _, box) in zip(drawn, val)])
    print(f"val: IoU with the annotated box mean {ious.mean():.3f}, median {np.median(ious):.3f}, "
          f"above 0.75 {np.mean(ious > 0.75):.2f}, above 0.9 {np.mean(ious > 0.9):.2f}, "
          f"above 0.95 {np.mean(ious > 0.95):.2f}")
    ap = box_average_precision(root / "val.json", [i for i, _, _ in val], [d[None] for d in drawn],
                               [np.ones(1) for _ in val])
    print(f"as detections: box AP@0.5 {ap['box_ap50']:.3f}, AP@[.5:.95] {ap['box_ap']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
