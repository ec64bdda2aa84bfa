#!/usr/bin/env bash
# The dog models on dogflw_mini val with detected boxes, and on the real dog video.
set -u
source .venv/bin/activate
# Args: the landmark run name and the detector run name (work_dirs/dogs_NAME, work_dirs/dogs_detector_NAME).
: "${VIDEOS:?set VIDEOS to the folder holding dog_vidtome.mp4 (docs/RESULTS.md)}"
L=work_dirs/dogs_$1/best.pth; D=work_dirs/dogs_detector_$2/best.pth
echo "== val, detected boxes ($1 + detector $2)"
python evaluate.py --checkpoint $L --detector $D --ann data/dogflw_mini/annotations/val.json --flip-test --device cpu --out work_dirs/dogs_$1/val_flip_detected.json 2>&1 | grep -v "it/s" | tail -4
echo "== dog_vidtome.mp4"
/usr/bin/time -f "wall %e s" python tools/predict.py --checkpoint $L --detector $D $VIDEOS/dog_vidtome.mp4 --out work_dirs/dog_video --save-video --device cpu 2>&1 | grep -v "it/s\|frame/s\]" | tail -4
