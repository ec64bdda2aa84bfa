"""Stand-in for a person correcting extracted frames: replace each pre-filled label of
extract_frames.py's output with make_videos.py's truth for that frame (the visible true face
nearest the model's face); a frame without a visible face is removed."""

import csv
import json
import sys
from pathlib import Path

import numpy as np

out, truth_dir, meta = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(Path(sys.argv[3]).read_text())
names = meta["keypoints"]
kept = removed = 0
for image in sorted((out / "train" / "images").iterdir()):
    clip, frame = image.stem.rsplit("_f", 1)
    rows = [r for r in csv.DictReader(open(truth_dir / f"{clip}.truth.csv"))
            if int(r["frame"]) == int(frame) and r["visible"] == "1"]
    label = out / "train" / "labels" / f"{image.stem}.json"
    if not rows:
        image.unlink(); label.unlink(missing_ok=True); removed += 1
        continue
    guess = np.array(json.loads(label.read_text())["landmarks"]).mean(0) if label.exists() else np.zeros(2)
    points = [np.array([[float(r[f"{n}_x"]), float(r[f"{n}_y"])] for n in names]) for r in rows]
    best = min(range(len(rows)), key=lambda i: np.linalg.norm(points[i].mean(0) - guess))
    box = [rows[best][f"box_{c}"] for c in ("x1", "y1", "x2", "y2")]
    label.write_text(json.dumps({"landmarks": points[best].round(2).tolist(), "bounding_boxes": box}))
    kept += 1
print(f"{kept} frames corrected from the truth, {removed} without a visible face removed")
