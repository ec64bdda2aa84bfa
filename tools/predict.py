"""Predict landmarks on new photos with a trained checkpoint.

    python tools/predict.py --checkpoint work_dirs/RUN/best.pth photos/ dog.jpg --out predictions
    python tools/predict.py --checkpoint best.pth dog.jpg --bbox 120,80,380,330 --out predictions
    python tools/predict.py --checkpoint best.pth photos/ --boxes boxes.json --flip-test --out predictions

Each image is cropped around its face box exactly as in training (the box padded by the
checkpoint's box_padding to a square). Without --bbox or --boxes the whole image is the face
box, which suits photos already cropped to one face. boxes.json maps image file names (or
paths as given on the command line) to [x1, y1, x2, y2] in pixels, e.g.
{"dog.jpg": [120, 80, 380, 330]}; images it does not list use the whole image.

For each image, OUT/NAME.json holds the landmarks in original-image pixels, a confidence per
landmark (heatmap peak, 0..1) and the box used; OUT/NAME_overlay.png draws them. An image that
cannot be read is reported on one line and skipped; the exit status is then 1.
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
from errors import CommandLineParser, DataError, positive_int, reports_errors  # noqa: E402
from inference import LandmarkPredictor  # noqa: E402
from run_utils import check_output_folder, write_json  # noqa: E402
from tools.convert_dogflw_to_coco import IMAGE_EXTENSIONS  # noqa: E402
from visualize import draw_landmarks  # noqa: E402


def parse_box(values, source: str) -> np.ndarray:
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
    return {name: parse_box(box, f"{path}: {name}") for name, box in boxes.items()}


def list_images(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Image files from files and folders (a folder's images, not its subfolders), and one
    message per input that does not exist or holds no image."""
    images, problems = [], []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
            images += found
            if not found:
                problems.append(f"{path}: no {'/'.join(IMAGE_EXTENSIONS)} image in this folder")
        elif path.exists():
            images.append(path)
        else:
            problems.append(f"{path}: no such file or folder")
    return images, problems


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


def choose_box(path: Path, image: np.ndarray, box_for_all: np.ndarray | None,
               box_table: dict[str, np.ndarray]) -> tuple[np.ndarray, str]:
    """The face box of one image and where it came from: --bbox, --boxes or the whole image."""
    if box_for_all is not None:
        return box_for_all, "--bbox"
    for key in (str(path), path.name):
        if key in box_table:
            return box_table[key], "--boxes"
    height, width = image.shape[:2]
    return np.array([-0.5, -0.5, width - 0.5, height - 0.5]), "whole image"  # the outer pixel edges


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = CommandLineParser(description=__doc__)
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files and folders of images")
    parser.add_argument("--checkpoint", required=True, help="best.pth or last.pth from train_simple.py")
    parser.add_argument("--out", required=True, help="folder for NAME.json and NAME_overlay.png")
    boxes = parser.add_mutually_exclusive_group()
    boxes.add_argument("--bbox", metavar="x1,y1,x2,y2", help="face box for every image, in pixels "
                       "(default: the whole image is the face box)")
    boxes.add_argument("--boxes", metavar="boxes.json", help='face box per image: {"dog.jpg": '
                       "[x1, y1, x2, y2], ...}; images it does not list use the whole image")
    parser.add_argument("--flip-test", action="store_true", help="average with the mirrored crop's prediction")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cuda, mps or cpu")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="faces per forward pass")
    return parser.parse_args(argv)


def read_chunk(chunk: list[tuple[Path, str]], args: argparse.Namespace, box_for_all: np.ndarray | None,
               box_table: dict[str, np.ndarray], problems: list[str]) -> list[tuple]:
    """(path, output stem, image, box, box source) of each image of the chunk that can be read;
    the others are reported and added to `problems`."""
    read = []
    for path, stem in chunk:
        try:
            image = read_image(path)
        except DataError as err:
            tqdm.write(f"warning: {err}; skipped", file=sys.stderr)
            problems.append(str(err))
            continue
        read.append((path, stem, image, *choose_box(path, image, box_for_all, box_table)))
        if args.boxes and read[-1][-1] == "whole image":
            tqdm.write(f"warning: {path}: not in {args.boxes}; the whole image is its face box", file=sys.stderr)
    return read


def write_outputs(out_dir: Path, path: Path, stem: str, image: np.ndarray, box: np.ndarray, source: str,
                  points: np.ndarray, confidence: np.ndarray, predictor: LandmarkPredictor,
                  args: argparse.Namespace) -> None:
    """OUT/STEM.json and OUT/STEM_overlay.png for one image."""
    result = {"image": str(path), "width": image.shape[1], "height": image.shape[0],
              "box": box.tolist(), "box_source": source, "landmarks": points.round(3).tolist(),
              "confidence": confidence.astype(float).round(4).tolist(),
              "keypoint_names": predictor.meta["keypoints"], "checkpoint": str(args.checkpoint),
              "flip_test": args.flip_test}
    write_json(out_dir / f"{stem}.json", result)
    overlay = cv2.cvtColor(draw_landmarks(image, points, box=box), cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(out_dir / f"{stem}_overlay.png"), overlay)


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    box_for_all = parse_box(args.bbox, "--bbox") if args.bbox else None
    box_table = load_boxes(args.boxes) if args.boxes else {}
    out_dir = check_output_folder(args.out, "--out")
    predictor = LandmarkPredictor(args.checkpoint, args.device, args.flip_test)
    images, problems = list_images(args.inputs)
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    jobs = list(zip(images, output_stems(images)))
    written = 0
    with tqdm(total=len(jobs), desc="predict", unit="img", dynamic_ncols=True) as progress:
        for start in range(0, len(jobs), args.batch_size):
            chunk = jobs[start:start + args.batch_size]
            read = read_chunk(chunk, args, box_for_all, box_table, problems)
            if read:
                points, confidence = predictor.landmarks([r[2] for r in read], [r[3] for r in read])
                for (path, stem, image, box, source), pts, conf in zip(read, points, confidence):
                    write_outputs(out_dir, path, stem, image, box, source, pts, conf, predictor, args)
                written += len(read)
            progress.update(len(chunk))
    print(f"wrote NAME.json and NAME_overlay.png for {written} image(s) to {out_dir}")
    if problems:
        raise DataError(f"{len(problems)} input(s) failed (listed above); the other images were processed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
