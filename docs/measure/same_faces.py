"""Annotated-box NME_IOD on the faces a detector found, beside each detected-box score.

python docs/measure/same_faces.py ANN.json ANNOTATED_METRICS.json DETECTED_METRICS.json ...
(evaluate.py --out files; per_image_nme is in the annotation's record order)."""

import json
import sys
from pathlib import Path

import numpy as np

import _repo  # the repository on sys.path: docs/measure/_repo.py
from basics.coco_files import load_coco

files = [r["file"] for r in load_coco(sys.argv[1]).records]
annotated = np.array(json.loads(Path(sys.argv[2]).read_text())["per_image_nme"])
for path in sys.argv[3:]:
    detected = json.loads(Path(path).read_text())
    found = [i for i, f in enumerate(files) if f not in set(detected["missed_images"])]
    same = annotated[found].mean()
    print(f"{path}: {len(found)} faces found; annotated boxes {same:.3f}, detected {detected['nme_iod']:.3f} "
          f"({(detected['nme_iod'] / same - 1) * 100:+.1f} %)")
