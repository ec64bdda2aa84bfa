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
from basics.geometry import box_around, box_iou, padding_around, points_extent
from detector.model import box_average_precision


def faces(ann_file: Path) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
    """Image ids, the extents of the labelled landmarks and the boxes (x1, y1, x2, y2) of the annotations."""
    ids, extents, boxes = [], [], []
    for ann in json.loads(ann_file.read_text())["annotations"]:
        points = np.array(ann["keypoints"], dtype=float).reshape(-1, 3)
        x, y, w, h = ann["bbox"]
        ids.append(ann["image_id"])
        extents.append(points_extent(points[points[:, 2] > 0, :2]))
        boxes.append(np.array([x, y, x + w, y + h]))
    return ids, extents, boxes


def main(ann_root: str) -> None:
    root = Path(ann_root)
    _, extents, boxes = faces(root / "train.json")
    pads = padding_around(boxes, extents)
    print("median padding of the train boxes (left, top, right, bottom):", np.round(pads, 3))
    ids, extents, boxes = faces(root / "val.json")
    drawn = [box_around(extent, pads) for extent in extents]
    ious = np.array([box_iou(d[None], box[None])[0, 0] for d, box in zip(drawn, boxes)])
    print(f"val: IoU with the annotated box mean {ious.mean():.3f}, median {np.median(ious):.3f}, "
          f"above 0.75 {np.mean(ious > 0.75):.2f}, above 0.9 {np.mean(ious > 0.9):.2f}, "
          f"above 0.95 {np.mean(ious > 0.95):.2f}")
    ap = box_average_precision(root / "val.json", ids, [d[None] for d in drawn], [np.ones(1) for _ in ids])
    print(f"as detections: box AP@0.5 {ap['box_ap50']:.3f}, AP@[.5:.95] {ap['box_ap']:.3f}")


if __name__ == "__main__":
    main(sys.argv[1])
