"""Pick frames of a lab's videos to label, with the model's landmarks filled in for correcting.

    python tools/extract_frames.py clips/ --checkpoint LM.pth --detector DET.pth --frames 40 --out to_label
    python tools/extract_frames.py clips/ --checkpoint LM.pth --detector DET.pth --frames 40 --out to_fix \\
        --tables predictions            # the frames the model most likely got wrong

DeepLabCut's loop: pick frames, label or correct them, train, analyse, pick the frames the model
gets wrong, correct, retrain. Frames are picked per video, --frames in all (shared out by video
length):
- spread over the video (default): k-means on small grey frames (scipy's kmeans2), the frame
  nearest each cluster's centre, so that every kind of scene the video holds gets a frame;
- with --tables (the folder of tools/predict.py's outputs for these videos): those most likely
  wrong, by the table NAME.csv: low mean landmark confidence, landmarks that jump against the
  frames beside them, or no face found; at least --min-gap frames apart.
The landmarks are placed as tools/predict.py places them, with the same --detector,
--score-threshold, --flip-test and --refine.
Written to --out (a new folder, moved into place when complete):
- train/images/VIDEO_fNNNNNN.png and train/labels/VIDEO_fNNNNNN.json in DogFLW's layout, the
  labels holding the model's landmarks of the frame's most confident face (a frame where no face
  was found has an image and no label: label it from scratch);
- annotations.json, a COCO keypoints file of every face found, which CVAT imports as "COCO
  Keypoints 1.0" (keypoint names and a skeleton in its category), file names relative to
  train/images; meta.json, the model's keypoint metadata (the converter's --meta).
Corrected frames come back with the converter: `--dogflw-root OUT` for the DogFLW layout, or
`--coco CVAT_EXPORT.json --images OUT/train/images --meta OUT/meta.json`; then train with
`train_simple.py --init-from LM.pth` on them alone or with `--extra-train` beside the original set.
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
from scipy.cluster.vq import kmeans2

import _repo  # the repository on sys.path: tools/_repo.py
from analysis.filtering import expected_positions
from analysis.tables import NO_FACE, read_flat_table
from analysis.video import VideoFrames
from basics.cli import CommandLineParser, bounded_int
from basics.dogflw import keypoint_category
from basics.errors import DataError, UsageError, reports_errors
from basics.images import VIDEO_EXTENSIONS, list_media
from basics.outputs import write_json
from inference import FaceLandmarker, add_landmarker_flags, landmarker_from_args

THUMBNAIL = 32  # side of the grey frames k-means compares
MAX_SAMPLES = 2000  # frames of a video k-means looks at (evenly spaced)


def list_videos(inputs: list[str]) -> list[Path]:
    """The videos among files and folders; a missing input, or a folder without a video, is an error."""
    videos, problems = list_media(inputs, VIDEO_EXTENSIONS, "video")
    if problems:
        raise DataError(problems[0])
    return videos


def spread_frames(video: Path, count: int, seed: int) -> list[int]:
    """`count` frame positions spread over the video's content: k-means on small grey frames."""
    frames = VideoFrames(video)
    stride = max(1, math.ceil(frames.claimed / MAX_SAMPLES)) if frames.claimed else 1
    positions, thumbnails = [], []
    for position, _, frame in frames:
        if position % stride == 0:
            grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
            thumbnails.append(cv2.resize(grey, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA).ravel() / 255.0)
            positions.append(position)
    if not positions:
        raise DataError(f"{video}: no frame could be decoded")
    data = np.array(thumbnails)
    count = min(count, len(positions))
    centres, labels = kmeans2(data, count, minit="++", seed=seed)
    chosen = set()
    for cluster in range(count):
        members = np.flatnonzero(labels == cluster)
        if len(members):
            nearest = members[np.argmin(np.linalg.norm(data[members] - centres[cluster], axis=1))]
            chosen.add(positions[nearest])
    return sorted(chosen)


def doubtful_frames(table_path: Path, count: int, min_gap: int) -> list[int]:
    """The `count` frames of a prediction table most likely wrong, at least min_gap apart: a
    frame's doubt is 1 - its faces' lowest mean confidence (1 without a face) plus how far its
    landmarks jump against the frames beside them, in box sides."""
    table = read_flat_table(table_path)
    doubt: dict[int, float] = {}
    for face_id in sorted({int(i) for i in table.face_ids if i != NO_FACE}):
        rows = np.flatnonzero(table.face_ids == face_id)
        side = np.maximum(table.boxes[rows, 2] - table.boxes[rows, 0], table.boxes[rows, 3] - table.boxes[rows, 1])
        with warnings.catch_warnings():  # a frame without neighbours to judge it by has no jump (NaN, then 0)
            warnings.simplefilter("ignore", RuntimeWarning)
            jump = np.nanmean(np.linalg.norm(table.points[rows] - expected_positions(table.points[rows], 3),
                                             axis=-1), axis=1) / side
        unsure = 1 - np.nanmean(table.confidence[rows], axis=1)
        for frame, value in zip(table.frames[rows], np.nan_to_num(unsure) + np.nan_to_num(jump)):
            doubt[int(frame)] = max(doubt.get(int(frame), 0.0), float(value))
    for frame, face_id in zip(table.frames, table.face_ids):
        if face_id == NO_FACE:
            doubt[int(frame)] = 1.0
    chosen = []
    for frame in sorted(doubt, key=lambda f: (-doubt[f], f)):
        if len(chosen) == count:
            break
        if all(abs(frame - other) >= min_gap for other in chosen):
            chosen.append(frame)
    return sorted(chosen)


def share_out(total: int, lengths: list[int]) -> list[int]:
    """`total` frames shared out over videos in proportion to their lengths (each at least 1)."""
    weights = np.array(lengths, dtype=float) + 1
    shares = np.maximum(1, np.floor(total * weights / weights.sum())).astype(int)
    for i in np.argsort(-weights)[: max(0, total - shares.sum())]:
        shares[i] += 1
    return shares.tolist()


def write_frames(video: Path, positions: list[int], landmarker: FaceLandmarker, folder: Path, coco: dict) -> int:
    """The chosen frames of a video as images, labels (the most confident face) and COCO entries;
    returns how many were written."""
    wanted, written = set(positions), 0
    for position, _, frame in VideoFrames(video):
        if position not in wanted:
            continue
        name = f"{video.stem}_f{position:06d}"
        cv2.imwrite(str(folder / "images" / f"{name}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        image_id = len(coco["images"]) + 1
        coco["images"].append({"id": image_id, "file_name": f"{name}.png", "width": frame.shape[1],
                               "height": frame.shape[0]})
        faces = landmarker.faces([frame])[0]
        for face in faces:
            x1, y1, x2, y2 = (float(v) for v in face.box)
            coco["annotations"].append({
                "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "num_keypoints": len(face.landmarks),
                "keypoints": [round(float(v), 2) for point in face.landmarks for v in (*point, 2)]})
        if faces:
            best = max(faces, key=lambda f: float(f.confidence.mean()))
            write_json(folder / "labels" / f"{name}.json",
                       {"landmarks": best.landmarks.round(2).tolist(),
                        "bounding_boxes": [f"{v:.2f}" for v in best.box]})
        written += 1
    return written


def build_parser() -> CommandLineParser:
    parser = CommandLineParser(description=__doc__)
    parser.add_argument("inputs", nargs="+", metavar="VIDEO", help="videos and folders of them")
    add_landmarker_flags(parser, "landmark model (best.pth) whose landmarks are filled in",
                         "face detector (best.pth of tools/train_detector.py); without one the whole frame is the "
                         "face box")
    parser.add_argument("--frames", type=bounded_int(1, 100_000), default=20, help="frames to pick in all")
    parser.add_argument("--tables", help="folder of tools/predict.py's tables for the videos: pick the frames most "
                        "likely wrong instead of spreading them over the videos")
    parser.add_argument("--min-gap", type=bounded_int(0, 10**6), default=10, help="with --tables, frames apart at least")
    parser.add_argument("--seed", type=bounded_int(0, 2**32 - 1), default=0, help="k-means' seed")
    parser.add_argument("--out", required=True, help="a new folder for the frames")
    return parser


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args: argparse.Namespace = build_parser().parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out}: exists and is not empty; frames to label go to a new folder (corrections in "
                         "an old one are never overwritten)")
    videos = list_videos(args.inputs)
    tables = [Path(args.tables) / f"{v.stem}.csv" for v in videos] if args.tables else None
    for table in tables or []:
        if not table.is_file():
            raise DataError(f"{table}: no prediction table for this video (run tools/predict.py on it first)")
    landmarker = landmarker_from_args(args)
    meta = landmarker.predictor.meta
    lengths = [VideoFrames(v).claimed for v in videos]
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        for sub in ("images", "labels"):
            (partial / "train" / sub).mkdir(parents=True)
        coco = {"info": {"description": f"frames to label from {len(videos)} videos"}, "images": [],
                "annotations": [], "categories": [keypoint_category(meta)]}
        for video, share, table in zip(videos, share_out(args.frames, lengths), tables or [None] * len(videos)):
            chosen = doubtful_frames(table, share, args.min_gap) if table else spread_frames(video, share, args.seed)
            count = write_frames(video, chosen, landmarker, partial / "train", coco)
            print(f"{video}: {count} frames ({'most likely wrong' if table else 'spread by k-means'})")
        write_json(partial / "annotations.json", coco, indent=1)
        write_json(partial / "meta.json", {k: meta[k] for k in ("name", "num_keypoints", "keypoints", "flip_index",
                                                                "iod_pair", "regions") if meta.get(k)})
        if out.exists():
            out.rmdir()
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    print(f"wrote {len(coco['images'])} frames with {len(coco['annotations'])} pre-filled faces to {out}; "
          f"import {out / 'annotations.json'} into CVAT as COCO Keypoints 1.0, or correct {out / 'train' / 'labels'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
