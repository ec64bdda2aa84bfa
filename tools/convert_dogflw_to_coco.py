"""Convert DogFLW (per-image JSON labels) into COCO keypoint files, one per split.

Layout read: ROOT/<split>/images/NAME.{png,jpg,...} beside ROOT/<split>/labels/NAME.json,
each label being {"landmarks": [[x, y], ...], "bounding_boxes": [x1, y1, x2, y2]} (the key
may be "labels"; box values may be strings). Every split folder found is written as
OUT_DIR/<split>.json (train.json and test.json for DogFLW).

    python tools/convert_dogflw_to_coco.py --download
    python tools/convert_dogflw_to_coco.py --dogflw_root DIR --out_dir data/dogflw/annotations
    python tools/convert_dogflw_to_coco.py --dogflw_root DIR --meta meta.json --out_dir OUT
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules, when run as a script
from dataset import validate_keypoint_meta  # noqa: E402
from errors import DataError, reports_errors  # noqa: E402

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
KAGGLE_DATASET = "georgemartvel/dogflw"
# DogFLW's facts (see the project README): 46 landmarks, mirror permutation, outer eye corners.
DOGFLW_META = {
    "name": "dogflw",
    "num_keypoints": 46,
    "keypoints": [f"landmark_{i}" for i in range(46)],
    "flip_index": [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14, 17, 16, 19, 18, 21, 20,
                   23, 22, 24, 25, 27, 26, 29, 28, 31, 30, 32, 34, 33, 35, 37, 36, 38, 40, 39,
                   41, 42, 44, 43, 45],
    "iod_pair": [18, 19],
}


class LabelError(DataError):
    """A label or image file that cannot be converted; the message names the problem."""


def load_meta(path: str | None) -> dict:
    """Keypoint metadata from a JSON file, or DogFLW's built-in facts when path is None."""
    if path is None:
        return dict(DOGFLW_META)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
        num_keypoints = int(meta.get("num_keypoints", len(meta.get("flip_index", []))))
        if num_keypoints <= 0:
            raise LabelError(f"{path}: needs num_keypoints or flip_index")
        meta["num_keypoints"] = num_keypoints
        meta.setdefault("keypoints", [f"landmark_{i}" for i in range(num_keypoints)])
        meta.setdefault("flip_index", list(range(num_keypoints)))
        if len(meta["keypoints"]) != num_keypoints:
            raise LabelError(f"{path}: {len(meta['keypoints'])} keypoint names for {num_keypoints} landmarks")
        validate_keypoint_meta(meta, path)
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise LabelError(f"{path}: not usable keypoint metadata ({err})") from None
    return meta


def parse_number(value, what: str) -> float:
    """A finite float from a number or numeric string, else LabelError."""
    if isinstance(value, bool):
        raise LabelError(f"{what} is not a number: {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise LabelError(f"{what} is not a number: {str(value)[:40]}") from None
    if not math.isfinite(number):
        raise LabelError(f"{what} is not finite: {str(value)[:40]}")
    return number


def parse_label(path: Path, num_keypoints: int) -> tuple[list[list[float]], list[float]]:
    """Landmarks (K x [x, y]) and box [x1, y1, x2, y2] from one label file, or LabelError."""
    try:
        with open(path, encoding="utf-8") as f:
            label = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise LabelError(f"not readable JSON ({type(err).__name__}: {str(err)[:80]})") from None
    if not isinstance(label, dict):
        raise LabelError("not a JSON object")
    points = label.get("landmarks", label.get("labels"))
    if not isinstance(points, list):
        raise LabelError("no 'landmarks' (or 'labels') list")
    if len(points) != num_keypoints:
        raise LabelError(f"has {len(points)} landmarks, expected {num_keypoints}")
    landmarks = []
    for i, point in enumerate(points):
        if not isinstance(point, (list, tuple)) or len(point) != 2:
            raise LabelError(f"landmark {i} is not an [x, y] pair: {str(point)[:40]}")
        landmarks.append([parse_number(v, f"landmark {i}") for v in point])
    box = label.get("bounding_boxes")
    if isinstance(box, list) and len(box) == 1 and isinstance(box[0], list):
        box = box[0]  # some copies nest the single box in a list
    if not isinstance(box, list) or len(box) != 4:
        raise LabelError(f"'bounding_boxes' is not 4 values: {str(box)[:60]}")
    x1, y1, x2, y2 = (parse_number(v, "bounding_boxes") for v in box)
    if x2 <= x1 or y2 <= y1:
        raise LabelError(f"box has x2 <= x1 or y2 <= y1: {str(box)[:60]}")
    return landmarks, [x1, y1, x2, y2]


def check_inside(landmarks: list[list[float]], box: list[float], width: int, height: int) -> None:
    """LabelError if a landmark or box corner lies far outside the image (more than its size away)."""
    for x, y in [*landmarks, box[:2], box[2:]]:
        if not (-width <= x <= 2 * width and -height <= y <= 2 * height):
            raise LabelError(f"point ({x:.4g}, {y:.4g}) lies far outside the {width}x{height} image")


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image that decodes completely, else LabelError."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.size
    except Exception as err:  # PIL raises many types for corrupt files
        raise LabelError(f"unreadable image ({err})") from None


def find_splits(root: Path) -> list[Path]:
    """Split folders under root: those holding both images/ and labels/."""
    return sorted(p for p in root.iterdir() if (p / "images").is_dir() and (p / "labels").is_dir())


def convert_split(root: Path, split_dir: Path, meta: dict) -> tuple[dict, list[str]]:
    """COCO keypoints dict for one split and the list of problems ('file: reason')."""
    images_dir, labels_dir = split_dir / "images", split_dir / "labels"
    images = {p.stem: p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    labels = {p.stem: p for p in labels_dir.iterdir() if p.suffix.lower() == ".json"}
    problems = [f"{images[s]}: image without label" for s in sorted(images.keys() - labels.keys())]
    problems += [f"{labels[s]}: label without image" for s in sorted(labels.keys() - images.keys())]
    coco_images, annotations = [], []
    for stem in sorted(images.keys() & labels.keys()):
        try:
            landmarks, (x1, y1, x2, y2) = parse_label(labels[stem], meta["num_keypoints"])
        except LabelError as err:
            problems.append(f"{labels[stem]}: {err}")
            continue
        try:
            width, height = image_size(images[stem])
        except LabelError as err:
            problems.append(f"{images[stem]}: {err}")
            continue
        try:
            check_inside(landmarks, [x1, y1, x2, y2], width, height)
        except LabelError as err:
            problems.append(f"{labels[stem]}: {err}")
            continue
        image_id = len(coco_images) + 1
        coco_images.append({"id": image_id, "file_name": images[stem].relative_to(root).as_posix(),
                            "width": width, "height": height})
        keypoints = [v for x, y in landmarks for v in (x, y, 2)]
        annotations.append({
            "id": image_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
            "keypoints": keypoints, "num_keypoints": meta["num_keypoints"],
        })
    category = {"id": 1, "name": meta.get("name", "face"), "supercategory": "face",
                "keypoints": meta["keypoints"], "skeleton": [],
                "flip_index": meta["flip_index"], "iod_pair": meta.get("iod_pair")}
    for key in ("regions", "keypoint_weights"):
        if key in meta:
            category[key] = meta[key]
    coco = {"info": {"description": f"{meta.get('name', 'dataset')} {split_dir.name}",
                     "data_root": str(root.resolve())},
            "images": coco_images, "annotations": annotations, "categories": [category]}
    return coco, problems


def write_json_atomic(data: dict, path: Path) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def convert(root: str | Path, out_dir: str | Path, meta: dict, strict: bool = False) -> dict[str, int]:
    """Convert every split under root; returns {split: images written}.

    Problems are printed one line each. With strict=True any problem raises LabelError
    before a file is written; otherwise bad files are skipped and counted.
    """
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise LabelError(f"{root}: not a folder")
    splits = find_splits(root)
    if not splits:
        raise LabelError(f"{root}: no split folder with images/ and labels/ inside")
    results = {split.name: convert_split(root, split, meta) for split in splits}
    all_problems = [p for _, problems in results.values() for p in problems]
    for problem in all_problems:
        print(problem, file=sys.stderr)
    if strict and all_problems:
        raise LabelError(f"{len(all_problems)} problem(s) found; nothing written (--strict)")
    empty = [name for name, (coco, _) in results.items() if not coco["images"]]
    if empty:
        raise LabelError(f"{root / empty[0]}: no usable image; nothing written")
    counts = {}
    for name, (coco, problems) in results.items():
        write_json_atomic(coco, out_dir / f"{name}.json")
        counts[name] = len(coco["images"])
        print(f"{name}: {counts[name]} images written to {out_dir / (name + '.json')}, "
              f"{len(problems)} skipped")
    return counts


def download_dogflw() -> Path:
    """Download DogFLW with kagglehub; returns the folder that holds train/ and test/."""
    try:
        import kagglehub
        path = Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as err:
        raise LabelError(
            f"could not download DogFLW from Kaggle ({type(err).__name__}: {err}). Check the "
            f"network, or download https://www.kaggle.com/datasets/{KAGGLE_DATASET} by hand "
            "and pass --dogflw_root DIR") from None
    for folder in [path, *sorted(p for p in path.rglob("*") if p.is_dir())]:
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return folder
    raise LabelError(f"{path}: downloaded, but no folder with train/ and test/ inside")


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dogflw_root", help="folder holding the split folders (train/, test/)")
    parser.add_argument("--out_dir", default="data/dogflw/annotations", help="where <split>.json go")
    parser.add_argument("--download", action="store_true", help="download DogFLW with kagglehub first")
    parser.add_argument("--meta", help="keypoint metadata JSON for another dataset (default: DogFLW's)")
    parser.add_argument("--strict", action="store_true", help="stop with an error on any bad file")
    args = parser.parse_args(argv)
    if not args.download and not args.dogflw_root:
        parser.error("give --dogflw_root DIR or --download")
    meta = load_meta(args.meta)
    root = download_dogflw() if args.download else Path(args.dogflw_root)
    try:
        convert(root, args.out_dir, meta, strict=args.strict)
    except OSError as err:
        raise DataError(f"{err.filename or args.out_dir}: {err.strerror or err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
