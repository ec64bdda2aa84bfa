"""Landmarks for new photos and videos with a trained checkpoint.

    python tools/predict.py --checkpoint LM.pth --detector DET.pth photos/ clip.mp4 --out predictions
    python tools/predict.py --checkpoint LM.pth --detector DET.pth clip.mp4 --detect-every 5 --save-video \\
        --out predictions
    python tools/predict.py --checkpoint LM.pth dog.jpg --bbox 120,80,380,330 --out predictions
    python tools/predict.py --checkpoint LM.pth photos/ --boxes boxes.json --flip-test --out predictions

Faces in photos: the box of --bbox (every photo) or --boxes ({"dog.jpg": [x1, y1, x2, y2], ...},
keyed by file name or path), else every face the --detector (tools/train_detector.py) finds
with a score of at least --score-threshold, else the whole image (a photo cropped to one face).
Each face is cropped around its box exactly as in training. Videos (.mp4, .avi, .mov, .mkv,
...) use the detector or the whole frame.

Outputs, with NAME the input's file name (made distinct where two inputs share one):
- a photo: OUT/NAME.json lists its faces (box, score, landmarks in image pixels, a confidence per
  landmark) and OUT/NAME_overlay.png draws them;
- a video: OUT/NAME.csv has a row per frame and face (frame, time_s, face_id, box, score, then
  <keypoint>_x, <keypoint>_y, <keypoint>_conf), read by pandas.read_csv as it is; the face id
  follows a face across frames. --save-video adds OUT/NAME_labelled.mp4;
- --crop-regions: OUT/NAME_regions/ with a crop per face and region of the keypoint metadata
  (eyes, ears, mouth, ...), FACE_REGION.png for a photo, FRAME_FACE_REGION.png for a video.
An input that cannot be read is reported on one line and skipped, and the exit status is then 1;
in a video, a frame that cannot be decoded is skipped, counted and reported, and the rest goes on.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dataset import read_image  # noqa: E402
from errors import (CommandLineParser, DataError, fraction, non_negative_float, positive_int,  # noqa: E402
                    reports_errors)
from inference import Face, FaceDetector, FaceLandmarker, LandmarkPredictor, save_region_crops  # noqa: E402
from run_utils import check_output_folder, write_json  # noqa: E402
from tools.convert_dogflw_to_coco import IMAGE_EXTENSIONS  # noqa: E402
from video import VIDEO_EXTENSIONS, VideoOptions, analyze_video  # noqa: E402
from visualize import draw_faces  # noqa: E402


def parse_xyxy(values, source: str) -> np.ndarray:
    """[x1, y1, x2, y2] from a list or an "x1,y1,x2,y2" string, or DataError naming `source`."""
    try:
        box = np.array(values.split(",") if isinstance(values, str) else values, dtype=np.float64)
    except (TypeError, ValueError):
        box = np.array([])
    if box.shape != (4,) or not np.isfinite(box).all() or box[0] >= box[2] or box[1] >= box[3]:
        raise DataError(f"{source}: a box must be four numbers x1,y1,x2,y2 with x1 < x2 and y1 < y2, "
                        f"not {values!r}")
    return box


def load_boxes(path: str) -> dict[str, np.ndarray]:
    """boxes.json: {"NAME or PATH": [x1, y1, x2, y2], ...}."""
    try:
        boxes = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable JSON file ({err})") from None
    if not isinstance(boxes, dict):
        raise DataError(f'{path}: must be a JSON object {{"image name": [x1, y1, x2, y2], ...}}')
    return {name: parse_xyxy(box, f"{path}: {name}") for name, box in boxes.items()}


def list_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Image and video files from files and folders (a folder's images and videos, not its
    subfolders), and one message per input that does not exist or holds neither."""
    known = IMAGE_EXTENSIONS + VIDEO_EXTENSIONS
    files, problems = [], []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in known and p.is_file())
            files += found
            if not found:
                problems.append(f"{path}: no image or video ({'/'.join(known)}) in this folder")
        elif path.exists():
            files.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    return files, problems


def output_stems(images: list[Path]) -> list[str]:
    """A distinct file stem per input for its outputs: the image's own stem, or where that is taken
    (the same name in two folders, the same file twice, or a name such as x-2 next to two x's) the
    stem with -2, -3, ... Compared without case, for case-insensitive file systems."""
    taken, stems = set(), []
    for path in images:
        stem, n = path.stem, 1
        while stem.lower() in taken:
            n += 1
            stem = f"{path.stem}-{n}"
        taken.add(stem.lower())
        stems.append(stem)
    return stems


def given_box(path: Path, args: argparse.Namespace, box_table: dict[str, np.ndarray]) -> tuple[np.ndarray | None, str]:
    """The face box given for a photo by --bbox or --boxes, if any, and where its faces come from."""
    if args.bbox is not None:
        return args.bbox, "--bbox"
    for key in (str(path), path.name):
        if key in box_table:
            return box_table[key], "--boxes"
    found_by = "detector" if args.detector else "whole image"
    if args.boxes:
        tqdm.write(f"warning: {path}: not in {args.boxes}; "
                   f"{'the detector finds its faces' if args.detector else 'the whole image is its face box'}",
                   file=sys.stderr)
    return None, found_by


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = CommandLineParser(description=__doc__)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="photos, videos and folders of them")
    parser.add_argument("--checkpoint", required=True, help="best.pth or last.pth from train_simple.py")
    parser.add_argument("--detector", help="best.pth from tools/train_detector.py: find the faces")
    parser.add_argument("--score-threshold", type=fraction, default=0.5, help="least detector score of a face")
    parser.add_argument("--out", required=True, help="folder for the outputs")
    boxes = parser.add_mutually_exclusive_group()
    boxes.add_argument("--bbox", metavar="x1,y1,x2,y2", help="face box for every photo, in pixels")
    boxes.add_argument("--boxes", metavar="boxes.json", help='face box per photo: {"dog.jpg": [x1, y1, x2, y2]}')
    parser.add_argument("--flip-test", action="store_true", help="average with the mirrored crop's prediction")
    parser.add_argument("--crop-regions", action="store_true", help="save a crop of every face region")
    parser.add_argument("--region-size", type=positive_int, default=96, help="side of a region crop in pixels")
    parser.add_argument("--detect-every", type=positive_int, default=1, help="in videos, run the detector "
                        "every N frames; in between a face's box follows its landmarks")
    parser.add_argument("--smooth", type=non_negative_float, default=0.0, metavar="HZ", help="in videos, smooth "
                        "the landmarks over time with a One Euro filter of this cut-off (0: off)")
    parser.add_argument("--save-video", action="store_true", help="write NAME_labelled.mp4 for each video")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="photos per forward pass")
    return parser.parse_args(argv)


def write_photo_outputs(out_dir: Path, path: Path, stem: str, image: np.ndarray, faces: list[Face], source: str,
                        landmarker: FaceLandmarker, args: argparse.Namespace) -> None:
    """OUT/STEM.json, OUT/STEM_overlay.png and, with --crop-regions, OUT/STEM_regions/."""
    result = {"image": str(path), "width": image.shape[1], "height": image.shape[0],
              "faces": [{"box": face.box.round(3).tolist(), "box_source": source, "score": round(face.score, 4),
                         "landmarks": face.landmarks.round(3).tolist(),
                         "confidence": face.confidence.astype(float).round(4).tolist()} for face in faces],
              "keypoint_names": landmarker.predictor.meta["keypoints"], "checkpoint": str(args.checkpoint),
              "detector": args.detector, "flip_test": args.flip_test}
    write_json(out_dir / f"{stem}.json", result)
    cv2.imwrite(str(out_dir / f"{stem}_overlay.png"), cv2.cvtColor(draw_faces(image, faces), cv2.COLOR_RGB2BGR))
    if args.crop_regions:
        save_region_crops(image, faces, landmarker.predictor.meta, out_dir / f"{stem}_regions", "", args.region_size)


def predict_photos(jobs: list[tuple[Path, str]], landmarker: FaceLandmarker, out_dir: Path,
                   args: argparse.Namespace, box_table: dict[str, np.ndarray], problems: list[str]) -> int:
    """Faces and landmarks of every photo, a batch at a time; returns how many were written."""
    written = 0
    with tqdm(total=len(jobs), desc="photos", unit="img", dynamic_ncols=True) as progress:
        for start in range(0, len(jobs), args.batch_size):
            chunk, read = jobs[start:start + args.batch_size], []
            for path, stem in chunk:
                try:
                    read.append((path, stem, read_image(path)))
                except DataError as err:
                    tqdm.write(f"warning: {err}; skipped", file=sys.stderr)
                    problems.append(str(err))
            given = [given_box(path, args, box_table) for path, _, _ in read]
            boxes = [None if box is None else box[None] for box, _ in given]
            for (path, stem, image), faces, (_, source) in zip(read, landmarker.faces([r[2] for r in read], boxes),
                                                              given):
                write_photo_outputs(out_dir, path, stem, image, faces, source, landmarker, args)
            written += len(read)
            progress.update(len(chunk))
    return written


def predict_videos(jobs: list[tuple[Path, str]], landmarker: FaceLandmarker, out_dir: Path,
                   args: argparse.Namespace, problems: list[str]) -> int:
    """The CSV (and labelled video) of every video; returns how many were written."""
    options = VideoOptions(args.detect_every, args.smooth, args.save_video,
                           args.region_size if args.crop_regions else 0)
    written = 0
    for path, stem in jobs:
        try:
            summary = analyze_video(path, landmarker, out_dir / stem, options)
        except DataError as err:
            tqdm.write(f"warning: {err}; skipped", file=sys.stderr)
            problems.append(str(err))
            continue
        print(f"{path}: {summary.frames} frames, {summary.face_rows} face rows in {summary.seconds:.1f} s "
              f"({summary.frames / summary.seconds:.1f} frames/s) -> {', '.join(map(str, summary.outputs))}")
        if summary.undecodable:
            print(f"warning: {path}: {summary.undecodable} frame(s) could not be decoded; skipped (no rows)",
                  file=sys.stderr)
        written += 1
    return written


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.bbox = parse_xyxy(args.bbox, "--bbox") if args.bbox else None
    box_table = load_boxes(args.boxes) if args.boxes else {}
    out_dir = check_output_folder(args.out, "--out")
    predictor = LandmarkPredictor(args.checkpoint, args.device, args.flip_test)
    if args.crop_regions and not predictor.meta.get("regions"):
        raise DataError(f"--crop-regions: {args.checkpoint} has no regions in its keypoint metadata")
    detector = FaceDetector(args.detector, args.device) if args.detector else None
    landmarker = FaceLandmarker(predictor, detector, args.score_threshold)
    files, problems = list_inputs(args.inputs)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    jobs = list(zip(files, output_stems(files)))
    videos = [job for job in jobs if job[0].suffix.lower() in VIDEO_EXTENSIONS]
    photos = [job for job in jobs if job[0].suffix.lower() not in VIDEO_EXTENSIONS]
    written = predict_photos(photos, landmarker, out_dir, args, box_table, problems) if photos else 0
    written += predict_videos(videos, landmarker, out_dir, args, problems) if videos else 0
    print(f"wrote the outputs of {written} input(s) to {out_dir}")
    if problems:
        raise DataError(f"{len(problems)} input(s) failed (listed above); the rest were processed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
