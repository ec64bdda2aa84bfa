#!/usr/bin/env bash
# The video measurements on the faces68 clips; run from the repository root.
set -u
source .venv/bin/activate
: "${FACES68:?set FACES68 to the faces68 folder (docs/RESULTS.md)}"
: "${PROXY_TOOLS:?set PROXY_TOOLS to the folder of the proxy's make_scenes.py, make_videos.py and score_videos.py}"
L=work_dirs/f68_default/best.pth; D=work_dirs/scenes_detector/best.pth; V=work_dirs/videos
mkdir -p $V
score() { python $PROXY_TOOLS/score_videos.py --truth data/faces68_videos --pred "$1" --meta $FACES68/meta.json --json "$1.score.json"; }
echo "== batched (16), filtered, labelled video"; /usr/bin/time -f "wall %e s" python tools/predict.py --checkpoint $L --detector $D data/faces68_videos --out $V/b16 --save-video --device cpu 2>&1 | grep -v "it/s\|batch/s" | tail -8
echo "== one frame per pass"; /usr/bin/time -f "wall %e s" python tools/predict.py --checkpoint $L --detector $D data/faces68_videos --out $V/b1 --batch-size 1 --no-filter --device cpu 2>&1 | grep -v "it/s\|batch/s" | tail -8
echo "== raw"; score $V/b16
mkdir -p $V/b16_filtered; for f in $V/b16/clip0?_filtered.csv; do n=$(basename $f _filtered.csv); cp $f $V/b16_filtered/$n.csv; done
echo "== filtered"; score $V/b16_filtered
echo "== raw b1"; score $V/b1
echo "== stills: scenes val with detected boxes"; python evaluate.py --checkpoint $L --detector $D --ann data/faces68_scenes/annotations/val.json --device cpu --out $V/stills_detected.json 2>&1 | grep -v "it/s" | tail -4
