"""DogFLW's per-image JSON labels into COCO keypoint files, one per split, and the download.

Layout read: ROOT/<split>/images/NAME.{png,jpg,...} beside ROOT/<split>/labels/NAME.json,
each label being {"landmarks": [[x, y], ...], "bounding_boxes": [x1, y1, x2, y2]} (the key
may be "labels"; box values may be strings). Every split folder found is written as
OUT_DIR/<split>.json (train.json and test.json for DogFLW).

Coordinates are in the image as displayed (its EXIF orientation applied, as every reader of this
project does). A landmark that is not labelled is [x, y, 0] (or 0 in a "visibility" list beside
"landmarks") and becomes COCO visibility 0. A label or image that cannot be used is left out and
reported; a face box that cannot be trusted (malformed, inverted, outside the image, missing the
landmarks) is repaired from the landmarks and reported: no image is dropped for its box. An image
with many of its landmarks outside it is left out; when several of a split are, the split's images
were most likely resized after labelling, and the converter says so.
tools/convert_dogflw_to_coco.py is the command line; `prepare_annotations` is what the
trainers call.
"""
from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from basics.errors import DataError
from basics.geometry import box_around, padding_around, points_extent
from basics.images import IMAGE_EXTENSIONS, read_image, special_file_kind
from basics.outputs import write_json

KAGGLE_DATASET = "georgemartvel/dogflw"
# a face box repaired without good boxes to learn from is padded as DogFLW's train boxes are: the median
# (left, top, right, bottom) padding as fractions of the landmarks' extent over the whole real train label
# set (dogflw_mini's 359 real labels give 0.126, 0.162, 0.137, 0.177); DogFLW's test boxes are tighter
# (about 0.07, 0.11, 0.07, 0.11), which the converter prints per split
DOGFLW_BOX_PADDING = (0.12, 0.16, 0.14, 0.17)
MIN_INSIDE = 0.9  # a box must hold this share of the labelled landmarks
FAR_OUTSIDE = 0.1  # and none may lie further outside it than this fraction of its side
MAX_BOX_TO_EXTENT = 4.0  # nor may its side be more than this many times the landmarks' (geometric mean)
REPORT_CLIP = 0.1  # a box cut at the image's edge is reported when it reached past by this share of its side
OUTSIDE_MARGIN = 4.0  # px: a landmark further than this beyond the image's edge lies outside it
OUTSIDE = f"more than a quarter of its labelled landmarks lie outside it (by over {OUTSIDE_MARGIN:g} px)"
RESIZED = (3, 0.1)  # this many images of a split, and this share, with OUTSIDE: resized after labelling


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


@dataclass
class Finding:
    """Something the converter found in a file, and what it did: `action` is "left out" (the
    image is not written), "repaired" (its box replaced), "clipped" (its box cut at the image's
    edge), "reordered" (its box corners put in order) or "unlabelled" (a landmark made visibility 0)."""
    file: Path
    reason: str
    action: str
    quiet: bool = False  # counted in the summary, not printed (a box past the edge by under REPORT_CLIP)

    def __str__(self) -> str:
        return f"{self.file}: {self.reason}"


def parse_points(points: list, num_keypoints: int, visibility) -> tuple[list[list[float]], list[int], list[str]]:
    """Landmarks (K x [x, y]), COCO visibility flags (K; 0 = not labelled, 2 = labelled) and notes
    from a label's point list, whose entries are [x, y] or [x, y, v], and an optional separate
    list of flags. A landmark with v = 0 may have null coordinates; one whose coordinates are
    missing (null) or not finite (NaN, infinite) is not labelled either, and gets a note."""
    if len(points) != num_keypoints:
        raise LabelError(f"has {len(points)} landmarks, expected {num_keypoints}")
    if visibility is not None and (not isinstance(visibility, list) or len(visibility) != num_keypoints):
        raise LabelError(f"'visibility' is not a list of {num_keypoints} flags")
    landmarks, flags, notes = [], [], []
    for i, point in enumerate(points):
        if not isinstance(point, (list, tuple)) or len(point) not in (2, 3):
            raise LabelError(f"landmark {i} is not an [x, y] pair: {str(point)[:40]}")
        flag = point[2] if len(point) == 3 else (visibility[i] if visibility is not None else 2)
        flag = int(parse_number(flag, f"landmark {i}'s visibility"))
        if flag not in (0, 1, 2):
            raise LabelError(f"landmark {i}'s visibility is {flag}, not 0, 1 or 2")
        if flag and any(v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isfinite(v))
                        or (isinstance(v, str) and v.strip().lower() in ("nan", "inf", "-inf", "null", ""))
                        for v in point[:2]):
            notes.append(f"landmark {i} is {str(list(point[:2]))[:40]}, not a finite point: marked not labelled")
            flag = 0
        landmarks.append([0.0, 0.0] if flag == 0 else [parse_number(v, f"landmark {i}") for v in point[:2]])
        flags.append(flag)
    return landmarks, flags, notes


def parse_label_box(box) -> tuple[list[float] | str, str | None]:
    """[x1, y1, x2, y2] from a label's bounding_boxes, or why it cannot be used; and a note if its
    corners were given in the wrong order (they are put in order)."""
    if isinstance(box, list) and len(box) == 1 and isinstance(box[0], list):
        box = box[0]  # some copies nest the single box in a list
    if not isinstance(box, list) or len(box) != 4:
        return f"box is not 4 values ({str(box)[:60]})", None
    try:
        x1, y1, x2, y2 = (parse_number(v, "box") for v in box)
    except LabelError as err:
        return str(err), None
    if x1 == x2 or y1 == y2:
        return f"box has zero size ({str(box)[:60]})", None
    ordered = [min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)]
    note = f"box {[x1, y1, x2, y2]} has its corners inverted: put in order" if ordered != [x1, y1, x2, y2] else None
    return ordered, note


def parse_label(path: Path, num_keypoints: int) -> tuple[list[list[float]], list[int], list[float] | str, list[str],
                                                          str | None]:
    """Landmarks, visibility flags, the box (or why the box is unusable), notes on the landmarks
    and a note on the box of one label file, or LabelError."""
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
    landmarks, flags, notes = parse_points(points, num_keypoints, label.get("visibility"))
    if not any(flags):
        raise LabelError("no landmark is labelled")
    box, box_note = parse_label_box(label.get("bounding_boxes"))
    return landmarks, flags, box, notes, box_note


def check_inside(landmarks: list[list[float]], flags: list[int], width: int, height: int) -> None:
    """LabelError if a labelled landmark lies far outside the image (more than its size away)."""
    for (x, y), flag in zip(landmarks, flags):
        if flag and not (-width <= x <= 2 * width and -height <= y <= 2 * height):
            raise LabelError(f"point ({x:.4g}, {y:.4g}) lies far outside the {width}x{height} image")


def outside_image(image: Path, landmarks: list[list[float]], flags: list[int], width: int, height: int
                  ) -> list[Finding]:
    """A "left out" finding for an image more than a quarter of whose labelled landmarks lie outside it
    (its pixel edges -0.5 .. side - 0.5, by over OUTSIDE_MARGIN), else none."""
    points = np.array(landmarks)[np.array(flags) > 0]
    low, high = -0.5 - OUTSIDE_MARGIN, np.array([width, height]) - 0.5 + OUTSIDE_MARGIN
    outside = ((points < low) | (points > high)).any(axis=1)
    return [Finding(image, OUTSIDE, "left out")] if outside.mean() > 0.25 else []


def resized_images(name: str, findings: list[Finding], written: int) -> str | None:
    """The line saying a split's images were most likely resized after labelling, where at least
    RESIZED of its images have landmarks outside them; None otherwise."""
    count = sum(f.reason == OUTSIDE for f in findings)
    total = count + written
    if count < RESIZED[0] or count < RESIZED[1] * total:
        return None
    return (f"{name}: {count} of {total} images have landmarks far outside the image: the images were most likely "
            "resized after labelling; check they are the originals")


def box_problem(box: list[float] | str, landmarks: np.ndarray, width: int, height: int) -> str | None:
    """Why a face box cannot be trusted, or None: unusable, outside the image, fewer than
    MIN_INSIDE of the labelled landmarks inside it, any landmark further outside it than
    FAR_OUTSIDE of its side, or more than MAX_BOX_TO_EXTENT times the landmarks' extent."""
    if isinstance(box, str):
        return box
    x1, y1, x2, y2 = box
    shown = [round(v, 1) for v in box]
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return f"box {shown} lies outside the {width}x{height} image"
    def within(margin: float) -> np.ndarray:
        mx, my = margin * (x2 - x1), margin * (y2 - y1)
        return ((landmarks[:, 0] >= x1 - mx) & (landmarks[:, 0] <= x2 + mx)
                & (landmarks[:, 1] >= y1 - my) & (landmarks[:, 1] <= y2 + my))
    inside, near = within(0.0), within(FAR_OUTSIDE)
    if inside.mean() < MIN_INSIDE or not near.all():
        return (f"box {shown} misses the face ({int(inside.sum())} of {len(inside)} landmarks in it, "
                f"{int((~near).sum())} far outside)")
    extent = landmarks.max(axis=0) - landmarks.min(axis=0)
    ratio = math.sqrt((x2 - x1) * (y2 - y1) / max(float(extent[0] * extent[1]), 1.0))
    if ratio > MAX_BOX_TO_EXTENT:
        return f"box {shown} is {ratio:.1f} times the landmarks' extent (at most {MAX_BOX_TO_EXTENT:g})"
    return None


def clipped_to_image(box: list[float], width: int, height: int) -> tuple[list[float], float]:
    """The box cut at the image's outer pixel edges (-0.5 .. side - 0.5), as a detector's boxes
    are, and how far it reached past them as a fraction of its longest side."""
    low, high = [-0.5, -0.5, -0.5, -0.5], [width - 0.5, height - 0.5, width - 0.5, height - 0.5]
    cut = [min(max(v, lo), hi) for v, lo, hi in zip(box, low, high)]
    return cut, max(abs(a - b) for a, b in zip(box, cut)) / max(box[2] - box[0], box[3] - box[1])


def find_splits(root: Path) -> list[Path]:
    """Split folders under root: those holding both images/ and labels/."""
    return sorted(p for p in root.iterdir() if (p / "images").is_dir() and (p / "labels").is_dir())


def special_files(paths: list[Path]) -> list[Finding]:
    """A "left out" finding for each special file (a FIFO, a socket, ...) among `paths`, none of them opened."""
    return [Finding(path, f"not a regular file ({kind}); skipped", "left out")
            for path in paths if (kind := special_file_kind(path))]


def read_split(split_dir: Path, meta: dict) -> tuple[list[dict], list[Finding]]:
    """Each usable (image, label) pair of a split as {label, image, width, height, landmarks, flags,
    box}, and the findings: files left out (and why), landmarks made unlabelled, box notes."""
    images: dict[str, list[Path]] = {}
    for path in sorted((split_dir / "images").iterdir()):
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            images.setdefault(path.stem, []).append(path)
    labels = {p.stem: p for p in (split_dir / "labels").iterdir() if p.suffix.lower() == ".json"}
    findings = [Finding(images[s][0], "image without label", "left out") for s in sorted(images.keys() - labels.keys())]
    findings += [Finding(labels[s], "label without image", "left out") for s in sorted(labels.keys() - images.keys())]
    items = []
    for stem in sorted(images.keys() & labels.keys()):
        if len(images[stem]) > 1:
            names = ", ".join(p.name for p in images[stem])
            findings.append(Finding(labels[stem], f"one label for the images {names}: which one it labels is "
                                    "unknown; rename or remove the others", "left out"))
            continue
        image = images[stem][0]
        special = special_files([image, labels[stem]])
        if special:
            findings += special
            continue
        try:
            landmarks, flags, box, notes, box_note = parse_label(labels[stem], meta["num_keypoints"])
            height, width = read_image(image).shape[:2]  # as displayed: EXIF orientation applied
            check_inside(landmarks, flags, width, height)
        except LabelError as err:
            findings.append(Finding(labels[stem], str(err), "left out"))
            continue
        except DataError as err:  # the image
            findings.append(Finding(image, f"unreadable image ({str(err).rsplit('(', 1)[-1].rstrip(')')})", "left out"))
            continue
        outside = outside_image(image, landmarks, flags, width, height)
        if outside:
            findings += outside
            continue
        findings += [Finding(labels[stem], note, "unlabelled") for note in notes]
        findings += [Finding(labels[stem], box_note, "reordered")] if box_note else []
        items.append({"label": labels[stem], "image": image, "width": width, "height": height,
                      "landmarks": landmarks, "flags": flags, "box": box})
    return items, findings


def check_boxes(items: list[dict]) -> tuple[list[Finding], tuple[float, float, float, float]]:
    """Replace each box that cannot be trusted (`box_problem`) by one around its labelled
    landmarks, padded as the split's good boxes are, and cut every box at the image's edge; no
    image is dropped for its box. Returns the findings and the good boxes' median padding
    (DogFLW's typical padding when there are none)."""
    findings, extents, problems = [], [], []
    for item in items:
        points = np.array(item["landmarks"])[np.array(item["flags"]) > 0]
        extents.append(points_extent(points))
        problems.append(box_problem(item["box"], points, item["width"], item["height"]))
    good = [(item["box"], extent) for item, extent, problem in zip(items, extents, problems) if problem is None]
    padding = padding_around([box for box, _ in good], [extent for _, extent in good], DOGFLW_BOX_PADDING)
    for item, extent, problem in zip(items, extents, problems):
        label = item["label"]
        if problem is not None:
            item["box"] = box_around(extent, padding).tolist()
            findings.append(Finding(label, f"{problem}; repaired from the landmarks to "
                                           f"{[round(v, 1) for v in item['box']]}", "repaired"))
        box, past = clipped_to_image(item["box"], item["width"], item["height"])
        if past > 0:
            shown = [round(v, 1) for v in item["box"]]
            findings.append(Finding(label, f"box {shown} reaches past the {item['width']}x{item['height']} image by "
                                           f"{past:.0%} of its side: cut at its edge", "clipped", past <= REPORT_CLIP))
            item["box"] = box
    return findings, padding


def coco_keypoints(items: list[dict], root: Path, meta: dict, description: str) -> dict:
    """The COCO keypoints dict of checked items (one face each; faces of one image share its entry)."""
    coco_images, annotations, image_ids = [], [], {}
    for item in items:
        if item["image"] not in image_ids:
            image_ids[item["image"]] = len(image_ids) + 1
            coco_images.append({"id": image_ids[item["image"]], "file_name": item["image"].relative_to(root).as_posix(),
                                "width": item["width"], "height": item["height"]})
        x1, y1, x2, y2 = item["box"]
        annotations.append({
            "id": len(annotations) + 1, "image_id": image_ids[item["image"]], "category_id": 1, "iscrowd": 0,
            "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
            "keypoints": [v for (x, y), flag in zip(item["landmarks"], item["flags"]) for v in (x, y, flag)],
            "num_keypoints": sum(flag > 0 for flag in item["flags"]),
        })
    return {"info": {"description": description, "data_root": str(root.resolve())},
            "images": coco_images, "annotations": annotations, "categories": [keypoint_category(meta)]}


def convert_split(root: Path, split_dir: Path, meta: dict
                  ) -> tuple[dict, list[Finding], tuple[float, float, float, float]]:
    """COCO keypoints dict for one split, the findings and its good boxes' median padding."""
    items, findings = read_split(split_dir, meta)
    box_findings, padding = check_boxes(items)
    coco = coco_keypoints(items, root, meta, f"{meta.get('name', 'dataset')} {split_dir.name}")
    return coco, findings + box_findings, padding


def read_coco_export(coco_file: Path, images_dir: Path, meta: dict) -> tuple[list[dict], list[Finding]]:
    """The faces of a COCO keypoints file another tool wrote (CVAT's "COCO Keypoints 1.0" export,
    or tools/extract_frames.py's), as the items read_split gives, checked the same way: each
    annotation's keypoints (x, y, v triples, meta's count) and box; image files under images_dir."""
    try:
        coco = json.loads(coco_file.read_text(encoding="utf-8"))
        images = {image["id"]: image for image in coco["images"]}
        annotations = list(coco["annotations"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise LabelError(f"{coco_file}: not a COCO keypoints file ({type(err).__name__}: {str(err)[:80]})") from None
    items, findings, sizes = [], [], {}
    for number, ann in enumerate(annotations, start=1):
        where = f"{coco_file} annotation {ann.get('id', number)}" if isinstance(ann, dict) else str(coco_file)
        try:
            image = images[ann["image_id"]]
            path = images_dir / image["file_name"]
            values = ann["keypoints"]
            if not isinstance(values, list) or len(values) % 3:
                raise LabelError("keypoints is not a list of x, y, v triples")
            landmarks, flags, notes = parse_points([values[i:i + 3] for i in range(0, len(values), 3)],
                                                   meta["num_keypoints"], None)
            if not any(flags):
                raise LabelError("no landmark is labelled")
            x, y, w, h = ann.get("bbox") or [0, 0, 0, 0]
            box, box_note = parse_label_box([x, y, parse_number(x, "box") + parse_number(w, "box"),
                                             parse_number(y, "box") + parse_number(h, "box")])
            if path not in sizes:
                sizes[path] = read_image(path).shape[:2]
            height, width = sizes[path]
            check_inside(landmarks, flags, width, height)
        except (KeyError, TypeError, ValueError) as err:
            findings.append(Finding(Path(where), f"not a usable annotation ({type(err).__name__}: {str(err)[:60]})",
                                    "left out"))
            continue
        except LabelError as err:
            findings.append(Finding(Path(where), str(err), "left out"))
            continue
        except DataError as err:
            findings.append(Finding(path, f"unreadable image ({str(err).rsplit('(', 1)[-1].rstrip(')')})", "left out"))
            continue
        findings += [Finding(Path(where), note, "unlabelled") for note in notes]
        findings += [Finding(Path(where), box_note, "reordered")] if box_note else []
        items.append({"label": Path(where), "image": path,
                      "width": width, "height": height, "landmarks": landmarks, "flags": flags, "box": box})
    return items, findings


def convert_coco_export(coco_file: str | Path, images_dir: str | Path, out_dir: str | Path, meta: dict,
                        split: str = "train", strict: bool = False) -> int:
    """A COCO keypoints export (CVAT, tools/extract_frames.py) into OUT_DIR/<split>.json with this
    project's category fields from `meta` and the same checks and repairs as DogFLW's labels;
    returns the faces written."""
    coco_file, images_dir, out_dir = Path(coco_file), Path(images_dir), Path(out_dir)
    if not images_dir.is_dir():
        raise LabelError(f"--images {images_dir}: not a folder")
    items, findings = read_coco_export(coco_file, images_dir, meta)
    box_findings, padding = check_boxes(items)
    findings += box_findings
    report(findings)
    if strict and any(not f.quiet for f in findings):
        raise LabelError(f"{len(findings)} problem(s) found; nothing written (--strict)")
    if not items:
        raise LabelError(f"{coco_file}: no usable annotation; nothing written (is --meta the export's landmarks?)")
    coco = coco_keypoints(items, images_dir, meta, f"{meta.get('name', 'dataset')} {split} from {coco_file.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / f"{split}.json", coco)
    print(summary(split, coco, findings, padding, out_dir / f"{split}.json"))
    return len(coco["annotations"])


def keypoint_category(meta: dict) -> dict:
    """The COCO category of the faces: keypoint names, a skeleton (each region's landmarks in a
    chain, for annotation tools to draw) and this project's fields (flip_index, iod_pair, ...)."""
    skeleton = [[a + 1, b + 1] for indices in (meta.get("regions") or {}).values() for a, b in zip(indices, indices[1:])]
    category = {"id": 1, "name": meta.get("name", "face"), "supercategory": "face", "keypoints": meta["keypoints"],
                "skeleton": skeleton, "flip_index": meta["flip_index"], "iod_pair": meta.get("iod_pair")}
    for key in ("regions", "keypoint_weights"):
        if meta.get(key):
            category[key] = meta[key]
    return category


def report(findings: list[Finding], limit: int = 10) -> None:
    """Print the findings, one line each; a reason shared by more than `limit` files is shown for
    three of them and then counted (a wrong --meta makes every label fail the same way)."""
    by_reason: dict[str, list[Path]] = {}
    for finding in (f for f in findings if not f.quiet):
        by_reason.setdefault(finding.reason, []).append(finding.file)
    for reason, files in by_reason.items():
        for file in files if len(files) <= limit else files[:3]:
            print(f"{file}: {reason}", file=sys.stderr)
        if len(files) > limit:
            print(f"... and {len(files) - 3} more files: {reason}", file=sys.stderr)


def summary(name: str, coco: dict, findings: list[Finding], padding: tuple[float, float, float, float],
            path: Path) -> str:
    """The line a split's conversion ends with: images written, what was done to how many, and
    how its good boxes are padded."""
    counts = {action: sum(f.action == action for f in findings)
              for action in ("left out", "repaired", "clipped", "reordered", "unlabelled")}
    words = {"left out": "left out", "repaired": "boxes repaired", "clipped": "boxes cut at the image edge",
             "reordered": "boxes with inverted corners", "unlabelled": "non-finite landmarks made unlabelled"}
    done = ", ".join(f"{counts[a]} {words[a]}" for a in counts if counts[a] or a in ("left out", "repaired"))
    pad = "/".join(f"{v:.0%}" for v in padding)
    return (f"{name}: {len(coco['images'])} images written to {path}, {done}; boxes padded around the landmarks by "
            f"{pad} (left/top/right/bottom, median)")


def convert(root: str | Path, out_dir: str | Path, meta: dict, strict: bool = False) -> dict[str, int]:
    """Convert every split under root; returns {split: images written}.

    Findings are reported (see `report`). With strict=True any finding raises LabelError before a
    file is written; otherwise unusable files are left out and counted, and boxes that cannot be
    trusted are repaired.
    """
    root, out_dir = Path(root), Path(out_dir)
    if not root.is_dir():
        raise LabelError(f"{root}: not a folder")
    splits = find_splits(root)
    if not splits:
        raise LabelError(f"{root}: no split folder with images/ and labels/ inside")
    results = {split.name: convert_split(root, split, meta) for split in splits}
    all_findings = [f for _, findings, _ in results.values() for f in findings]
    report(all_findings)
    for name, (coco, findings, _) in results.items():
        if line := resized_images(name, findings, len(coco["images"])):
            print(line, file=sys.stderr)
    all_findings = [f for f in all_findings if not f.quiet]
    if strict and all_findings:
        raise LabelError(f"{len(all_findings)} problem(s) found; nothing written (--strict)")
    empty = [name for name, (coco, _, _) in results.items() if not coco["images"]]
    if empty:
        raise LabelError(f"{root / empty[0]}: no usable image; nothing written (for a dataset other than DogFLW, "
                         "give its keypoint metadata with --meta)")
    counts = {}
    for name, (coco, findings, padding) in results.items():
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            write_json(out_dir / f"{name}.json", coco)
        except OSError as err:
            raise DataError(f"{out_dir / name}.json: cannot write it ({err.strerror or err})") from None
        counts[name] = len(coco["images"])
        print(summary(name, coco, findings, padding, out_dir / f"{name}.json"))
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


