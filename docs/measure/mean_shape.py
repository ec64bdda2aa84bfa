"""Baseline: the train set's mean landmark shape placed in each val box (box-normalised), scored with NME_IOD."""

import sys
from pathlib import Path

import numpy as np

import _repo  # the repository on sys.path: docs/measure/_repo.py
from basics.coco_files import load_coco
from basics.metrics import compute_metrics


def normalised(records):
    out = []
    for r in records:
        x1, y1, x2, y2 = r["box"]
        out.append((r["keypoints"] - [x1, y1]) / [x2 - x1, y2 - y1])
    return np.array(out)


ann = Path(sys.argv[1])
train, val = load_coco(ann / "train.json"), load_coco(ann / "val.json")
labelled = np.array([r["labelled"] for r in train.records])
shapes = normalised(train.records)
shapes[~labelled] = np.nan
mean = np.nanmean(shapes, axis=0)
pred = np.array([[r["box"][0], r["box"][1]] + mean * [r["box"][2] - r["box"][0], r["box"][3] - r["box"][1]]
                 for r in val.records])
gt = np.array([r["keypoints"] for r in val.records])
m = compute_metrics(pred, gt, val.meta["iod_pair"], regions=val.meta.get("regions"),
                    labelled=np.array([r["labelled"] for r in val.records]))
print(f"mean shape: NME_IOD {m['nme_iod']:.2f}, failure rate {m['failure_rate_10']:.1f} %, regions",
      {k: round(v, 2) for k, v in m["per_region_nme"].items()})
