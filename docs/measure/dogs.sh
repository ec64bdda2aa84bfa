#!/usr/bin/env bash
# Issue 25: the recipe on real dog faces (dogflw_mini, 323 train / 36 val); run from the repository root.
set -u
source .venv/bin/activate
A=data/dogflw_mini/annotations; R=../shared/data/dogflw_mini
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
