#!/usr/bin/env bash
# The frame loop once on the real dog video, with models that find its face; run from the repository root.
# Args: the landmark checkpoint, the detector checkpoint and the run folder (default work_dirs/dogloop).
# The video has no ground truth, so the frames' filled-in landmarks are trained on as the model
# placed them (nothing corrected): this measures that the loop runs end to end, and what
# uncorrected frames do to the real dogs' val score, against the same fine-tuning without them.
set -eu
source .venv/bin/activate
: "${VIDEOS:?set VIDEOS to the folder holding dog_vidtome.mp4 (docs/RESULTS.md)}"
: "${DOGFLW_MINI:?set DOGFLW_MINI to the dogflw_mini folder (docs/RESULTS.md)}"
L=$1; D=$2; W=${3:-work_dirs/dogloop}; A=data/dogflw_mini/annotations
t() { local s=$(date +%s); "$@"; echo "[$(( $(date +%s) - s )) s: $*]"; }
mkdir -p $W
t python tools/extract_frames.py $VIDEOS/dog_vidtome.mp4 --checkpoint $L --detector $D --max-faces 1 \
    --score-threshold 0.2 --refine 2 --flip-test --frames 12 --out $W/to_label --device cpu
ls $W/to_label/train/labels | wc -l
python tools/convert_dogflw_to_coco.py --dogflw-root $W/to_label --meta $W/to_label/meta.json \
    --out-dir $W/ann 2>&1 | tail -2
common=(--data-root $DOGFLW_MINI --ann-root $A --init-from $L --epochs 10 --num-workers 0 --seed 0)
t python train_simple.py "${common[@]}" --extra-train $W/ann/train.json --work-dir $W/with_frames 2>&1 \
    | grep -v "it/s" | tail -2
t python train_simple.py "${common[@]}" --work-dir $W/without_frames 2>&1 | grep -v "it/s" | tail -2
for run in with_frames without_frames; do
    echo "== $run"
    python evaluate.py --checkpoint $W/$run/last.pth --ann $A/val.json --data-root $DOGFLW_MINI --flip-test \
        --device cpu 2>&1 | grep -i "nme\|region\|failure" | head -4
done
