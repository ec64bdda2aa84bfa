#!/usr/bin/env bash
# The recipe on real dog faces (dogflw_mini, 323 train / 36 val); run from the repository root.
set -u
source .venv/bin/activate
# Needs DOGFLW_MINI (docs/RESULTS.md) and EPOCHS; each argument is "NAME FLAGS...".
: "${DOGFLW_MINI:?set DOGFLW_MINI to the dogflw_mini folder (323 train / 36 val real DogFLW photos)}"
: "${EPOCHS:?set EPOCHS to the epochs of each run, e.g. EPOCHS=40}"
A=data/dogflw_mini/annotations; R=$DOGFLW_MINI
common="--data-root $R --ann-root $A --backbone resnet18 --input-size 128 --epochs $EPOCHS --num-workers 2"
run() {  # NAME FLAGS...
  name=$1; shift
  echo "== $name: $common $*"
  start=$(date +%s)
  python train_simple.py $common "$@" --work-dir work_dirs/dogs_$name > work_dirs/logs/dogs_$name.log 2>&1
  echo "train exit $? in $(( $(date +%s) - start )) s"; grep "^epoch" work_dirs/logs/dogs_$name.log | tail -2
  python evaluate.py --checkpoint work_dirs/dogs_$name/best.pth --ann $A/val.json --flip-test --device cpu \
      --out work_dirs/dogs_$name/val_flip.json 2>&1 | grep -v "it/s" | tail -6
}
for spec in "$@"; do eval run $spec; done
