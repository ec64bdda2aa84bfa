"""Convert DogFLW (per-image JSON labels) into COCO keypoint files, one per split.

Layout read: ROOT/<split>/images/NAME.{png,jpg,...} beside ROOT/<split>/labels/NAME.json,
each label being {"landmarks": [[x, y], ...], "bounding_boxes": [x1, y1, x2, y2]} (the key
may be "labels"; box values may be strings). Every split folder found is written as
OUT_DIR/<split>.json (train.json and test.json for DogFLW).

Coordinates are in the image as displayed (its EXIF orientation applied, as every reader of this
project does). A landmark that is not labelled is [x, y, 0] (or 0 in a "visibility" list beside
"landmarks") and becomes COCO visibility 0. A label or image that cannot be used is left out and
reported; a face box that cannot be trusted (malformed, inverted, outside the image, missing the
landmarks) is repaired from the landmarks and reported: no image is dropped for its box.

    python tools/convert_dogflw_to_coco.py --download
    python tools/convert_dogflw_to_coco.py --dogflw_root DIR --out_dir data/dogflw/annotations
    python tools/convert_dogflw_to_coco.py --dogflw_root DIR --meta meta.json --out_dir OUT
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's modules, when run as a script
from dataset import read_image, read_meta_file  # noqa: E402
from errors import CommandLineParser, DataError, reports_errors  # noqa: E402
from run_utils import check_output_folder, write_json  # noqa: E402

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
KAGGLE_DATASET = "georgemartvel/dogflw"
# DogFLW's facts (see the project README): 46 landmarks, mirror permutation, outer eye corners, regions.
DOGFLW_META = {
    "name": "dogflw",
    "num_keypoints": 46,
    "keypoints": [f"landmark_{i}" for i in range(46)],
    "flip_index": [1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14, 17, 16, 19, 18, 21, 20,
                   23, 22, 24, 25, 27, 26, 29, 28, 31, 30, 32, 34, 33, 35, 37, 36, 38, 40, 39,
                   41, 42, 44, 43, 45],
    "iod_pair": [18, 19],
    # grouped by where each landmark lies on a real DogFLW label (even/odd pairs are right/left)
    "regions": {"ears": list(range(0, 14)), "forehead": [14, 15], "eyes": list(range(16, 24)),
                "nose": [24, 25, 26, 27, 28, 29, 32, 33, 34], "cheeks": [30, 31], "mouth": list(range(35, 46))},
}
# a face box repaired without good boxes to learn from is padded as DogFLW's are: (left, top, right,
# bottom) as fractions of the landmarks' extent (measured on a real DogFLW label)
DOGFLW_BOX_PADDING = (0.19, 0.06, 0.19, 0.21)


class LabelError(DataError):
    """A label or image file that cannot be converted; the message names the problem."""


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


def parse_points(points: list, num_keypoints: int, visibility) -> tuple[list[list[float]], list[int]]:
    """Landmarks (K x [x, y]) and COCO visibility flags (K; 0 = not labelled, 2 = labelled) from a
    label's point list, whose entries are [x, y] or [x, y, v], and an optional separate list of
    flags. A landmark with v = 0 may have null coordinates."""
    if len(points) != num_keypoints:
        raise LabelError(f"has {len(points)} landmarks, expected {num_keypoints}")
    if visibility is not None and (not isinstance(visibility, list) or len(visibility) != num_keypoints):
        raise LabelError(f"'visibility' is not a list of {num_keypoints} flags")
    landmarks, flags = [], []
    for i, point in enumerate(points):
        if not isinstance(point, (list, tuple)) or len(point) not in (2, 3):
            raise LabelError(f"landmark {i} is not an [x, y] pair: {str(point)[:40]}")
        flag = point[2] if len(point) == 3 else (visibility[i] if visibility is not None else 2)
        flag = int(parse_number(flag, f"landmark {i}'s visibility"))
        if flag not in (0, 1, 2):
            raise LabelError(f"landmark {i}'s visibility is {flag}, not 0, 1 or 2")
        landmarks.append([0.0, 0.0] if flag == 0 else [parse_number(v, f"landmark {i}") for v in point[:2]])
        flags.append(flag)
    return landmarks, flags


def parse_label_box(box) -> list[float] | str:
    """[x1, y1, x2, y2] from a label's bounding_boxes (corners in either order), or why it cannot be used."""
    if isinstance(box, list) and len(box) == 1 and isinstance(box[0], list):
        box = box[0]  # some copies nest the single box in a list
    if not isinstance(box, list) or len(box) != 4:
        return f"box is not 4 values ({str(box)[:60]})"
    try:
        x1, y1, x2, y2 = (parse_number(v, "box") for v in box)
    except LabelError as err:
        return str(err)
    if x1 == x2 or y1 == y2:
        return f"box has zero size ({str(box)[:60]})"
    return [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]


def parse_label(path: Path, num_keypoints: int) -> tuple[list[list[float]], list[int], list[float] | str]:
    """Landmarks, visibility flags and the box (or why the box is unusable) of one label file,
    or LabelError."""
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
    landmarks, flags = parse_points(points, num_keypoints, label.get("visibility"))
    if not any(flags):
        raise LabelError("no landmark is labelled")
    return landmarks, flags, parse_label_box(label.get("bounding_boxes"))


def check_inside(landmarks: list[list[float]], flags: list[int], width: int, height: int) -> None:
    """LabelError if a labelled landmark lies far outside the image (more than its size away)."""
    for (x, y), flag in zip(landmarks, flags):
        if flag and not (-width <= x <= 2 * width and -height <= y <= 2 * height):
            raise LabelError(f"point ({x:.4g}, {y:.4g}) lies far outside the {width}x{height} image")


def box_problem(box: list[float] | str, landmarks: np.ndarray, width: int, height: int) -> str | None:
    """Why a face box cannot be trusted (unusable, outside the image, missing the labelled
    landmarks), or None."""
    if isinstance(box, str):
        return box
    x1, y1, x2, y2 = box
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return f"box {[round(v, 1) for v in box]} lies outside the {width}x{height} image"
    margin_x, margin_y = 0.25 * (x2 - x1), 0.25 * (y2 - y1)
    inside = ((landmarks[:, 0] >= x1 - margin_x) & (landmarks[:, 0] <= x2 + margin_x)
              & (landmarks[:, 1] >= y1 - margin_y) & (landmarks[:, 1] <= y2 + margin_y))
    if inside.mean() < 0.9:
        return (f"box {[round(v, 1) for v in box]} misses the face ({int(inside.sum())} of {len(inside)} "
                "landmarks in it)")
    return None


def box_padding_of(boxes: list[list[float]], extents: list[np.ndarray]) -> np.ndarray:
    """Median padding of good boxes around their landmarks' extent, as fractions of the extent's
    width and height: (left, top, right, bottom). DogFLW's typical padding when there are none."""
    ratios = [[(e[0] - b[0]) / (e[2] - e[0]), (e[1] - b[1]) / (e[3] - e[1]), (b[2] - e[2]) / (e[2] - e[0]),
               (b[3] - e[3]) / (e[3] - e[1])] for b, e in zip(boxes, extents) if e[2] > e[0] and e[3] > e[1]]
    return np.median(ratios, axis=0) if ratios else np.array(DOGFLW_BOX_PADDING)


def repaired_box(extent: np.ndarray, padding: np.ndarray) -> list[float]:
    """A face box around the labelled landmarks' extent (x1, y1, x2, y2), padded as the split's good boxes are."""
    width, height = max(extent[2] - extent[0], 1.0), max(extent[3] - extent[1], 1.0)
    return [float(extent[0] - padding[0] * width), float(extent[1] - padding[1] * height),
            float(extent[2] + padding[2] * width), float(extent[3] + padding[3] * height)]


def find_splits(root: Path) -> list[Path]:
    """Split folders under root: those holding both images/ and labels/."""
    return sorted(p for p in root.iterdir() if (p / "images").is_dir() and (p / "labels").is_dir())


def read_split(split_dir: Path, meta: dict) -> tuple[list[dict], list[str]]:
    """Each usable (image, label) pair of a split as {stem, image, width, height, landmarks, flags,
    box}, and the problems ('file: reason') of the others, which are left out."""
    images = {p.stem: p for p in (split_dir / "images").iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    labels = {p.stem: p for p in (split_dir / "labels").iterdir() if p.suffix.lower() == ".json"}
    problems = [f"{images[s]}: image without label" for s in sorted(images.keys() - labels.keys())]
    problems += [f"{labels[s]}: label without image" for s in sorted(labels.keys() - images.keys())]
    items = []
    for stem in sorted(images.keys() & labels.keys()):
        try:
            landmarks, flags, box = parse_label(labels[stem], meta["num_keypoints"])
            height, width = read_image(images[stem]).shape[:2]  # as displayed: EXIF orientation applied
            check_inside(landmarks, flags, width, height)
        except LabelError as err:
            problems.append(f"{labels[stem]}: {err}")
            continue
        except DataError as err:  # the image
            problems.append(f"{images[stem]}: unreadable image ({str(err).rsplit('(', 1)[-1].rstrip(')')})")
            continue
        items.append({"stem": stem, "image": images[stem], "width": width, "height": height,
                      "landmarks": landmarks, "flags": flags, "box": box})
    return items, problems


def check_boxes(items: list[dict], labels_dir: Path) -> list[str]:
    """Replace each box that cannot be trusted by one around its labelled landmarks, padded as the
    split's good boxes are; returns a 'file: box repaired' line for each (no image is dropped)."""
    problems, extents = [], []
    for item in items:
        points = np.array(item["landmarks"])[np.array(item["flags"]) > 0]
        extents.append(np.array([*points.min(axis=0), *points.max(axis=0)]))
        problems.append(box_problem(item["box"], points, item["width"], item["height"]))
    good = [(item["box"], extent) for item, extent, problem in zip(items, extents, problems) if problem is None]
    padding = box_padding_of([box for box, _ in good], [extent for _, extent in good])
    repaired = []
    for item, extent, problem in zip(items, extents, problems):
        if problem is not None:
            item["box"] = repaired_box(extent, padding)
            repaired.append(f"{labels_dir / (item['stem'] + '.json')}: {problem}; repaired from the landmarks "
                            f"to {[round(v, 1) for v in item['box']]}")
    return repaired


def convert_split(root: Path, split_dir: Path, meta: dict) -> tuple[dict, list[str]]:
    """COCO keypoints dict for one split and the list of problems ('file: reason')."""
    items, problems = read_split(split_dir, meta)
    problems += check_boxes(items, split_dir / "labels")
    coco_images, annotations = [], []
    for image_id, item in enumerate(items, start=1):
        coco_images.append({"id": image_id, "file_name": item["image"].relative_to(root).as_posix(),
                            "width": item["width"], "height": item["height"]})
        x1, y1, x2, y2 = item["box"]
        annotations.append({
            "id": image_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
            "keypoints": [v for (x, y), flag in zip(item["landmarks"], item["flags"]) for v in (x, y, flag)],
            "num_keypoints": sum(flag > 0 for flag in item["flags"]),
        })
    category = {"id": 1, "name": meta.get("name", "face"), "supercategory": "face",
                "keypoints": meta["keypoints"], "skeleton": [],
                "flip_index": meta["flip_index"], "iod_pair": meta.get("iod_pair")}
    for key in ("regions", "keypoint_weights"):
        if meta.get(key):
            category[key] = meta[key]
    coco = {"info": {"description": f"{meta.get('name', 'dataset')} {split_dir.name}",
                     "data_root": str(root.resolve())},
            "images": coco_images, "annotations": annotations, "categories": [category]}
    return coco, problems


def report(problems: list[str], limit: int = 10) -> None:
    """Print the problems, one line each; a reason shared by more than `limit` files is shown for
    three of them and then counted (a wrong --meta makes every label fail the same way)."""
    by_reason: dict[str, list[str]] = {}
    for problem in problems:
        file, _, reason = problem.partition(": ")
        by_reason.setdefault(reason, []).append(file)
    for reason, files in by_reason.items():
        for file in files if len(files) <= limit else files[:3]:
            print(f"{file}: {reason}", file=sys.stderr)
        if len(files) > limit:
            print(f"... and {len(files) - 3} more files: {reason}", file=sys.stderr)


def convert(root: str | Path, out_dir: str | Path, meta: dict, strict: bool = False) -> dict[str, int]:
    """Convert every split under root; returns {split: images written}.

    Problems are reported (see `report`). With strict=True any problem raises LabelError before
    a file is written; otherwise unusable files are left out and counted, and boxes that cannot be
    trusted are repaired.
    """
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise LabelError(f"{root}: not a folder")
    splits = find_splits(root)
    if not splits:
        raise LabelError(f"{root}: no split folder with images/ and labels/ inside")
    results = {split.name: convert_split(root, split, meta) for split in splits}
    all_problems = [p for _, problems in results.values() for p in problems]
    report(all_problems)
    if strict and all_problems:
        raise LabelError(f"{len(all_problems)} problem(s) found; nothing written (--strict)")
    empty = [name for name, (coco, _) in results.items() if not coco["images"]]
    if empty:
        raise LabelError(f"{root / empty[0]}: no usable image; nothing written (for a dataset other than DogFLW, "
                         "give its keypoint metadata with --meta)")
    counts = {}
    for name, (coco, problems) in results.items():
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_json(out_dir / f"{name}.json", coco)
        except OSError as err:
            raise DataError(f"{out_dir / name}.json: cannot write it ({err.strerror or err})") from None
        counts[name] = len(coco["images"])
        repaired = sum("repaired from the landmarks" in p for p in problems)
        print(f"{name}: {counts[name]} images written to {out_dir / (name + '.json')}, "
              f"{len(problems) - repaired} left out, {repaired} boxes repaired")
    return counts


def download_dogflw() -> Path:
    """Download DogFLW with kagglehub; returns the folder that holds train/ and test/."""
    try:
        import kagglehub
        path = Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as err:  # kagglehub's network, credential and file errors are of many types
        raise LabelError(
            f"could not download DogFLW from Kaggle ({type(err).__name__}: {err}). Check the network, or "
            f"download https://www.kaggle.com/datasets/{KAGGLE_DATASET} by hand and pass the folder that holds "
            "train/ and test/ (train_simple.py --data-root DIR, tools/convert_dogflw_to_coco.py --dogflw_root DIR)"
        ) from None
    for folder in [path, *sorted(p for p in path.rglob("*") if p.is_dir())]:
        if (folder / "train").is_dir() and (folder / "test").is_dir():
            return folder
    raise LabelError(f"{path}: downloaded, but no folder with train/ and test/ inside")


@reports_errors
def main(argv: list[str] | None = None) -> int:
    parser = CommandLineParser(description=__doc__)
    parser.add_argument("--dogflw_root", help="folder holding the split folders (train/, test/)")
    parser.add_argument("--out_dir", default="data/dogflw/annotations", help="where <split>.json go")
    parser.add_argument("--download", action="store_true", help="download DogFLW with kagglehub first")
    parser.add_argument("--meta", help="keypoint metadata JSON for another dataset (default: DogFLW's)")
    parser.add_argument("--strict", action="store_true", help="stop with an error on any bad file")
    args = parser.parse_args(argv)
    if not args.download and not args.dogflw_root:
        parser.error("give --dogflw_root DIR or --download")
    meta = read_meta_file(args.meta) if args.meta else DOGFLW_META
    check_output_folder(args.out_dir, "--out_dir")
    root = download_dogflw() if args.download else Path(args.dogflw_root)
    convert(root, args.out_dir, meta, strict=args.strict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
