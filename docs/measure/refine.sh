#!/usr/bin/env bash
# dogflw_mini val with detected boxes, recut 0, 1 and 2 times around the placed landmarks (--refine).
# Args: the landmark run name and the detector run name (work_dirs/dogs_NAME, work_dirs/dogs_detector_NAME).
set -u
source .venv/bin/activate
L=work_dirs/dogs_$1/best.pth; D=work_dirs/dogs_detector_$2/best.pth
for n in 0 1 2; do
  echo "== detected boxes, --refine $n"
  python evaluate.py --checkpoint $L --detector $D --ann data/dogflw_mini/annotations/val.json --flip-test --refine $n \
      --device cpu --out work_dirs/dogs_$1/val_flip_detected_refine$n.json 2>&1 | grep -v "it/s" | tail -4
done
