"""Landmarks for new photos and videos with a trained checkpoint.

    python tools/predict.py --checkpoint LM.pth --detector DET.pth photos/ clips/ --out predictions
    python tools/predict.py --checkpoint LM.pth --detector DET.pth clip.mp4 --save-video --out predictions
    python tools/predict.py --checkpoint LM.pth dog.jpg --bbox 120,80,380,330 --out predictions
    python tools/predict.py --checkpoint LM.pth photos/ --boxes boxes.json --flip-test --out predictions

Faces in photos: the box of --bbox (every photo) or --boxes ({"dog.jpg": [x1, y1, x2, y2], ...},
keyed by file name or path), else every face the --detector (tools/train_detector.py) finds
with a score of at least --score-threshold, else the whole image (a photo cropped to one face).
Each face is cropped around its box exactly as in training. Videos use the detector or the
whole frame, and each face keeps an id from frame to frame (tracking.py).

Outputs, with NAME the input's file name (made distinct where two inputs share one):
- a photo: NAME.json lists its faces (box, score, landmarks in image pixels, a confidence per
  landmark) and NAME_overlay.png draws them (analysis/photos.py);
- a video: NAME.csv, a row per frame and face (video_tables.py), NAME_dlc.csv, DeepLabCut's
  table, NAME_filtered.csv and NAME_dlc_filtered.csv, the same filtered without lag (filtering.py;
  --no-filter leaves them out), NAME_summary.json, and with --save-video NAME_labelled.mp4
  (drawn from the filtered table; tools/label_video.py draws any table);
- --crop-regions: NAME_regions/ with a crop per face and region of the keypoint metadata.
Before any work the outputs are checked: an output that would be one of the inputs, or two
inputs whose outputs would share a name (clip.mp4's DeepLabCut table and clip_dlc.mp4's table
are both clip_dlc.csv), are refused, naming both; a NAME too long for the file system is
shortened with a stable hash. Every input's outputs are written aside and moved into place when
complete. NAME.json or NAME_summary.json records what produced them (the checkpoints' SHA-256
and the flags that change results); an input whose outputs exist is skipped, said so, when they
came from the same, and the command stops, saying what differs, when not; --overwrite redoes it.
Ctrl-C or SIGTERM stops after the current batch: finished inputs stay complete, the unfinished
one leaves nothing, and the inputs not done are listed. An input that cannot be read is
reported on one line and skipped, and the exit status is then 1; in a video, a frame that
cannot be decoded is skipped, counted and reported, and the rest goes on.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

import _repo  # the repository on sys.path: tools/_repo.py
from analysis.filtering import FilterOptions, METHODS
from analysis.photos import PhotoOptions, analyze_photos
from analysis.video import VideoOptions, analyze_video
from basics.cli import CommandLineParser, bounded_int, fraction
from basics.errors import DataError, Interrupted, UsageError, reports_errors
from basics.images import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, list_media
from basics.outputs import Staging, check_output_folder, check_outputs
from basics.run_utils import StopRequest
from inference import FaceLandmarker, add_landmarker_flags, landmarker_from_args

MAX_COORDINATE = 1e6  # pixels; a box beyond this is a typo
NUMBERS = re.compile(r"^-?[\d.eE+-]+(,-?[\d.eE+-]+){3}$")


def parse_xyxy(values, source: str) -> np.ndarray:
    """[x1, y1, x2, y2] from a list or an "x1,y1,x2,y2" string, or DataError naming `source`."""
    try:
        box = np.array(values.split(",") if isinstance(values, str) else values, dtype=np.float64)
    except (TypeError, ValueError):
        box = np.array([])
    if (box.shape != (4,) or not np.isfinite(box).all() or np.abs(box).max() > MAX_COORDINATE or box[0] >= box[2]
            or box[1] >= box[3]):
        raise DataError(f"{source}: a box must be four numbers x1,y1,x2,y2 with x1 < x2 and y1 < y2, within "
                        f"+-{MAX_COORDINATE:g} pixels, not {values!r}")
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
    """Image and video files from files and folders, and one message per input that holds neither."""
    return list_media(inputs, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS, "image or video")


LONGEST_SUFFIX = len(".partial-4194304") + len("_dlc_filtered.csv")  # the longest name made from a stem


def short_stem(stem: str, name_max: int) -> str:
    """The stem, or where its outputs' names would pass the file system's limit of `name_max`
    bytes, its start and a stable hash of the whole (the summary records the full input name)."""
    if len(stem.encode()) + LONGEST_SUFFIX + 1 <= name_max:
        return stem
    digest = hashlib.sha1(stem.encode()).hexdigest()[:10]
    start = stem.encode()[:name_max - LONGEST_SUFFIX - len(digest) - 2].decode(errors="ignore")
    return f"{start}-{digest}"


def output_stems(inputs: list[Path], name_max: int = 255) -> list[str]:
    """A distinct file stem per input for its outputs: the input's own stem (`short_stem`), or where
    that is taken (the same name in two folders, the same file twice, or a name such as x-2 next to
    two x's) the stem with -2, -3, ... Compared without case, for case-insensitive file systems."""
    taken, stems = set(), []
    for path in inputs:
        own = short_stem(path.stem, name_max)
        stem, n = own, 1
        while stem.lower() in taken:
            n += 1
            stem = f"{own}-{n}"
        taken.add(stem.lower())
        stems.append(stem)
    return stems


def output_names(stem: str, video: bool, args: argparse.Namespace) -> list[str]:
    """The names of what one input writes into --out (tools/predict.py's docstring lists them)."""
    if not video:
        names = [f"{stem}.json", f"{stem}_overlay.png"]
    else:
        names = [f"{stem}.csv", f"{stem}_dlc.csv", f"{stem}_summary.json"]
        names += [] if args.no_filter else [f"{stem}_filtered.csv", f"{stem}_dlc_filtered.csv"]
        names += [f"{stem}_labelled.mp4"] if args.save_video else []
    return names + ([f"{stem}_regions"] if args.crop_regions else [])


def check_output_names(jobs: list[tuple[Path, str]], out_dir: Path, args: argparse.Namespace) -> None:
    """Before any work: no input's output is an input, and no two inputs' outputs share a name
    (basics/outputs.check_outputs); existing outputs are the business of `skip_finished`."""
    outputs = [(f"{path}'s output", out_dir / name) for path, stem in jobs
               for name in output_names(stem, path.suffix.lower() in VIDEO_EXTENSIONS, args)]
    check_outputs([("an input", path) for path, _ in jobs], outputs, overwrite=True)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


RESULT_FLAGS = ("flip_test", "refine", "score_threshold", "max_faces", "bbox", "boxes", "crop_regions", "region_size",
                "detect_every", "no_filter", "filter_min_confidence", "filter_max_jump", "filter_max_gap",
                "filter_window", "filter_method", "save_video", "pcutoff")


def produced_by(args: argparse.Namespace) -> dict:
    """What decides this run's results, recorded in each input's summary (NAME.json for a photo):
    the checkpoints' contents and the flags that change what is written."""
    record = {"checkpoint_sha256": file_sha256(args.checkpoint),
              "detector_sha256": file_sha256(args.detector) if args.detector else None}
    record.update({flag: getattr(args, flag) for flag in RESULT_FLAGS})
    record["bbox"] = None if args.bbox is None else [float(v) for v in args.bbox]
    record["boxes"] = file_sha256(args.boxes) if args.boxes else None
    return record


def build_parser() -> CommandLineParser:
    parser = CommandLineParser(description=__doc__)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="photos, videos and folders of them")
    add_landmarker_flags(parser, "best.pth or last.pth from train_simple.py",
                         "best.pth from tools/train_detector.py: find the faces")
    parser.add_argument("--out", required=True, help="folder for the outputs")
    parser.add_argument("--overwrite", action="store_true", help="redo inputs whose outputs exist (else skipped)")
    boxes = parser.add_mutually_exclusive_group()
    boxes.add_argument("--bbox", metavar="x1,y1,x2,y2", help="face box for every photo, in pixels")
    boxes.add_argument("--boxes", metavar="boxes.json", help='face box per photo: {"dog.jpg": [x1, y1, x2, y2]}')
    parser.add_argument("--crop-regions", action="store_true", help="save a crop of every face region")
    parser.add_argument("--region-size", type=bounded_int(8, 4096), default=96, help="side of a region crop in pixels")
    parser.add_argument("--batch-size", type=bounded_int(1, 4096), default=16, help="photos, or video frames, per "
                        "forward pass of the detector and of the landmark model")
    video = parser.add_argument_group("videos")
    video.add_argument("--detect-every", type=bounded_int(1, 10**6), default=1, help="run the detector every N frames; "
                       "in between a face's box follows its landmarks")
    video.add_argument("--save-video", action="store_true", help="write NAME_labelled.mp4 for each video")
    video.add_argument("--pcutoff", type=fraction, default=0.1, help="the labelled video draws landmarks of at least "
                       "this confidence (DeepLabCut's pcutoff)")
    video.add_argument("--no-filter", action="store_true", help="write the raw tables only")
    defaults = FilterOptions()
    video.add_argument("--filter-min-confidence", type=fraction, default=defaults.min_confidence,
                       help="filtering drops points of lower confidence")
    video.add_argument("--filter-max-jump", type=fraction, default=defaults.max_jump, help="and points further than "
                       "this x the face's box side from the median of the frames around them")
    video.add_argument("--filter-max-gap", type=bounded_int(0, 10_000), default=defaults.max_gap,
                       help="fills gaps of up to this many frames")
    video.add_argument("--filter-window", type=bounded_int(0, 1001), default=defaults.window,
                       help="smoothing window in frames (odd; below 3: no smoothing)")
    video.add_argument("--filter-method", choices=METHODS, default=defaults.method, help="centred smoothing filter")
    return parser


def join_box_values(argv: list[str]) -> list[str]:
    """--bbox -20,-25,70,80 as --bbox=-20,-25,70,80: argparse reads a value starting with '-' as a flag."""
    joined, skip = [], False
    for i, word in enumerate(argv):
        if skip:
            skip = False
            continue
        if word == "--bbox" and i + 1 < len(argv) and NUMBERS.match(argv[i + 1]):
            joined.append(f"--bbox={argv[i + 1]}")
            skip = True
        else:
            joined.append(word)
    return joined


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(join_box_values(sys.argv[1:] if argv is None else argv))
    if args.filter_window and args.filter_window % 2 == 0:
        parser.error(f"--filter-window {args.filter_window}: must be odd (the filter is centred)")
    return args


def predict_videos(jobs: list[tuple[Path, str]], landmarker: FaceLandmarker, out_dir: Path, args: argparse.Namespace,
                   problems: list[str], stop: StopRequest, done: list[Path], producer: dict) -> None:
    """The tables (and labelled video) of every video, each moved into place when complete and
    then added to `done`."""
    filter_options = None if args.no_filter else FilterOptions(
        args.filter_min_confidence, args.filter_max_jump, args.filter_max_gap, args.filter_window,
        method=args.filter_method)
    options = VideoOptions(args.detect_every, args.batch_size, args.region_size if args.crop_regions else 0,
                           filter=filter_options, save_video=args.save_video, pcutoff=args.pcutoff,
                           scorer=Path(args.checkpoint).resolve().parent.name, produced_by=producer)
    for path, stem in jobs:
        try:
            with Staging(out_dir, stem) as staging:
                summary = analyze_video(path, landmarker, staging, stem, options, stop)
                outputs = staging.commit(last=f"{stem}_summary.json")
        except DataError as err:
            tqdm.write(f"warning: {err}; skipped", file=sys.stderr)
            problems.append(str(err))
            continue
        record = summary.record
        print(f"{path}: {summary.frames} frames, {record['frames_with_a_face']} with a face, "
              f"{record['faces_per_frame']:.2f} faces per frame, {record['face_ids']} face ids, in "
              f"{summary.seconds:.1f} s ({record['frames_per_s']:.1f} frames/s) -> {', '.join(p.name for p in outputs)}")
        for problem in summary.problems:
            print(f"warning: {path}: {problem}", file=sys.stderr)
        done.append(path)


def recorded_producer(mark: Path) -> dict | None:
    """The `produced_by` an earlier run recorded in an input's summary, if it can be read."""
    try:
        return json.loads(mark.read_text(encoding="utf-8")).get("produced_by")
    except (OSError, ValueError, AttributeError):
        return None


def skip_finished(jobs: list[tuple[Path, str]], out_dir: Path, overwrite: bool, producer: dict
                  ) -> list[tuple[Path, str]]:
    """The jobs to do: without --overwrite, those whose complete outputs exist and were produced by
    the same checkpoints and flags are skipped, said so; where they were produced otherwise, the
    command stops, saying what differs."""
    todo, differing = [], []
    for path, stem in jobs:
        mark = out_dir / (f"{stem}_summary.json" if path.suffix.lower() in VIDEO_EXTENSIONS else f"{stem}.json")
        if not mark.exists() or overwrite:
            todo.append((path, stem))
            continue
        recorded = recorded_producer(mark) or {}
        changed = [key for key in producer if recorded.get(key) != producer[key]]
        if changed:
            differing.append(f"{mark} ({', '.join(changed)})")
        else:
            print(f"{path}: done already ({mark} exists); skipped (--overwrite redoes it)")
    if differing:
        raise UsageError(f"{len(differing)} input(s) have outputs from another checkpoint or other settings, e.g. "
                         f"{differing[0]}; --overwrite redoes them, or write to another --out")
    return todo


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.bbox = parse_xyxy(args.bbox, "--bbox") if args.bbox else None
    box_table = load_boxes(args.boxes) if args.boxes else {}
    out_dir = check_output_folder(args.out, "--out")
    files, problems = list_inputs(args.inputs)
    jobs = list(zip(files, output_stems(files, os.pathconf(out_dir, "PC_NAME_MAX"))))
    check_output_names(jobs, out_dir, args)
    videos = [job for job in jobs if job[0].suffix.lower() in VIDEO_EXTENSIONS]
    photos = [job for job in jobs if job[0].suffix.lower() not in VIDEO_EXTENSIONS]
    boxed = [str(p) for p, _ in videos if args.bbox is not None or str(p) in box_table or p.name in box_table]
    if boxed:
        raise UsageError(f"--bbox and --boxes give the faces of photos, not of videos ({boxed[0]}): a video's faces "
                         "come from --detector (or, without one, the whole frame)")
    landmarker = landmarker_from_args(args)
    if args.crop_regions and not landmarker.predictor.meta.get("regions"):
        raise DataError(f"--crop-regions: {args.checkpoint} has no regions in its keypoint metadata")
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    producer = produced_by(args)
    todo = set(skip_finished(jobs, out_dir, args.overwrite, producer))
    photos, videos = ([job for job in group if job in todo] for group in (photos, videos))
    done = []
    try:
        with StopRequest("stopping after this batch; finished inputs stay complete") as stop:
            if photos:
                options = PhotoOptions(args.checkpoint, args.detector, args.flip_test, args.batch_size,
                                       args.region_size if args.crop_regions else 0, args.bbox, box_table, args.boxes,
                                       producer)
                analyze_photos(photos, landmarker, out_dir, options, problems, stop, done)
            if videos:
                predict_videos(videos, landmarker, out_dir, args, problems, stop, done, producer)
    except Interrupted as stopped:
        left = [str(p) for p, _ in photos + videos if p not in done]
        raise Interrupted(f"{stopped}: {len(done)} input(s) done and complete in {out_dir}; not done (nothing of "
                          f"them written): {', '.join(left)}") from None
    print(f"wrote the outputs of {len(done)} input(s) to {out_dir}")
    if problems:
        raise DataError(f"{len(problems)} input(s) failed (listed above); the rest were processed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
