#!/usr/bin/env bash
# Issue 25: the frame loop as the README recommends it: the corrected frames with --extra-train
# beside faces68 train, against a control trained as long without them; run after loop.sh has
# written work_dirs/loop/ann (the 38 corrected frames) and work_dirs/loop/other (clips 03-05).
set -u
source .venv/bin/activate
t() { local s=$(date +%s); "$@"; echo "[$(( $(date +%s) - s )) s: $*]"; }
L=work_dirs/f68_default/best.pth; D=work_dirs/scenes_detector/best.pth; W=work_dirs/loop
EPOCHS=${EPOCHS:-2}
common="--data-root ../shared/data/faces68 --ann-root data/faces68/annotations --init-from $L --epochs $EPOCHS --num-workers 2"
t python train_simple.py $common --extra-train $W/ann/train.json --work-dir $W/extra > work_dirs/logs/loop_extra.log 2>&1
t python train_simple.py $common --work-dir $W/control > work_dirs/logs/loop_control.log 2>&1
for run in extra control; do
  grep "^epoch" work_dirs/logs/loop_$run.log | tail -1
  python tools/predict.py --checkpoint $W/$run/best.pth --detector $D $W/other/clip03.mp4 $W/other/clip04.mp4 \
      $W/other/clip05.mp4 --out $W/after_$run --no-filter --device cpu > /dev/null 2>&1
  echo "== $run"; python ../shared/tools/score_videos.py --truth $W/other --pred $W/after_$run --meta ../shared/data/faces68/meta.json
done
