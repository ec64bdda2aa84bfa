#!/usr/bin/env bash
# The frame loop on the faces68 clips; run from the repository root after videos.sh.
set -u
source .venv/bin/activate
: "${FACES68:?set FACES68 to the faces68 folder (docs/RESULTS.md)}"
: "${PROXY_TOOLS:?set PROXY_TOOLS to the folder of the proxy's make_scenes.py, make_videos.py and score_videos.py}"
t() { local s=$(date +%s); "$@"; echo "[$(( $(date +%s) - s )) s: $*]"; }
L=work_dirs/f68_default/best.pth; D=work_dirs/scenes_detector/best.pth; W=work_dirs/loop; V=data/faces68_videos
mkdir -p $W
t python tools/extract_frames.py $V/clip00.mp4 $V/clip01.mp4 $V/clip02.mp4 --checkpoint $L --detector $D --frames 40 --out $W/to_label --device cpu
python docs/measure/correct_from_truth.py $W/to_label $V $FACES68/meta.json
python tools/convert_dogflw_to_coco.py --dogflw-root $W/to_label --meta $W/to_label/meta.json --out-dir $W/ann 2>&1 | tail -2
cp data/faces68/annotations/val.json $W/ann/val.json
t python train_simple.py --ann-root $W/ann --init-from $L --backbone resnet18 --input-size 128 --batch-size 8 --epochs 30 --work-dir $W/run > work_dirs/logs/loop.log 2>&1
grep "^epoch\|started from\|init" work_dirs/logs/loop.log | tail -3
mkdir -p $W/other; for c in 03 04 05; do ln -sf $PWD/$V/clip$c.mp4 $W/other/; cp $V/clip$c.truth.csv $W/other/; done
t python tools/predict.py --checkpoint $W/run/best.pth --detector $D $W/other/clip03.mp4 $W/other/clip04.mp4 $W/other/clip05.mp4 --out $W/after --no-filter --device cpu 2>&1 | grep -v "it/s\|batch/s" | tail -4
mkdir -p $W/before; for c in 03 04 05; do cp work_dirs/videos/b16/clip$c.csv $W/before/; done
echo "== before"; python $PROXY_TOOLS/score_videos.py --truth $W/other --pred $W/before --meta $FACES68/meta.json
echo "== after"; python $PROXY_TOOLS/score_videos.py --truth $W/other --pred $W/after --meta $FACES68/meta.json
