"""COCO keypoint files and keypoint metadata: the data layer every reader of annotations uses.

A landmark record is one annotated face: {"file", "box" (x1, y1, x2, y2), "keypoints" (K, 2),
"labelled" (K,)}; keypoint metadata is {"keypoints" (names), "num_keypoints", "flip_index",
"iod_pair", "regions", "keypoint_weights"}, held in the COCO category of the faces (the converter
writes it there; `face_category` finds it in a file of several) or given by a --meta file. DOGFLW_META
is DogFLW's.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from basics.errors import DataError

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


def validate_keypoint_meta(meta: dict, source: str) -> None:
    """Refuse metadata whose flip_index or iod_pair cannot be right."""
    k = meta["num_keypoints"]
    flip = meta["flip_index"]
    if sorted(flip) != list(range(k)):
        raise DataError(f"{source}: flip_index is not a permutation of 0..{k - 1}")
    if any(flip[flip[i]] != i for i in range(k)):
        raise DataError(f"{source}: flip_index is not its own inverse (flip twice must be identity)")
    iod = meta.get("iod_pair")
    if iod is None or len(iod) != 2 or not all(0 <= int(i) < k for i in iod) or iod[0] == iod[1]:
        raise DataError(f"{source}: iod_pair {iod} must be two different landmark indices below {k}")
    for name, indices in (meta.get("regions") or {}).items():
        if not indices or not all(isinstance(i, int) and 0 <= i < k for i in indices):
            raise DataError(f"{source}: region {name!r} must list landmark indices below {k}")


def read_meta_file(path: str | Path) -> dict:
    """Keypoint metadata from a JSON file (num_keypoints, keypoints, flip_index, iod_pair, optional
    regions): the converter's --meta, and --meta of the trainer and the evaluator for COCO files
    whose category lacks those fields."""
    try:
        meta = json.loads(Path(path).read_text(encoding="utf-8"))
        num_keypoints = int(meta.get("num_keypoints", len(meta.get("flip_index", []))))
        if num_keypoints <= 0:
            raise DataError(f"{path}: needs num_keypoints or flip_index")
        meta["num_keypoints"] = num_keypoints
        meta.setdefault("keypoints", [f"landmark_{i}" for i in range(num_keypoints)])
        meta.setdefault("flip_index", list(range(num_keypoints)))
        if len(meta["keypoints"]) != num_keypoints:
            raise DataError(f"{path}: {len(meta['keypoints'])} keypoint names for {num_keypoints} landmarks")
    except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: not usable keypoint metadata ({type(err).__name__}: {err})") from None
    return keypoint_meta(meta, str(path)) | {k: v for k, v in meta.items() if k == "name"}


META_FIELDS = {"keypoints": "the K landmark names", "flip_index": "the mirror permutation of the landmarks",
               "iod_pair": "the two outer eye-corner landmarks NME_IOD is normalised by"}


def keypoint_meta(category: dict, source: str) -> dict:
    """The keypoint metadata of a COCO category (or of a --meta file), checked."""
    missing = [name for name in META_FIELDS if name not in category]
    if missing:
        fields = "; ".join(f"{name} ({META_FIELDS[name]})" for name in missing)
        raise DataError(f"{source}: the keypoint category has no {fields}: add them to the category, or "
                        "pass --meta FILE with them (the converter's --meta format)")
    try:
        meta = {"keypoints": [str(name) for name in category["keypoints"]],
                "num_keypoints": len(category["keypoints"]),
                "flip_index": [int(i) for i in category["flip_index"]],
                "iod_pair": [int(i) for i in category["iod_pair"]],
                "regions": {str(k): [int(i) for i in v] for k, v in (category.get("regions") or {}).items()},
                "keypoint_weights": category.get("keypoint_weights")}
    except (TypeError, ValueError, AttributeError) as err:
        raise DataError(f"{source}: keypoint metadata of the wrong type ({err})") from None
    validate_keypoint_meta(meta, source)
    return meta


def coco_box(ann: dict, name: str, source: str) -> np.ndarray:
    """An annotation's COCO bbox (x, y, w, h) as (x1, y1, x2, y2); refused, naming the image, if it is
    not finite with positive width and height."""
    x, y, w, h = (float(v) for v in ann["bbox"])
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        raise DataError(f"{source}: image {name}: face box {ann['bbox']} is not finite with positive width "
                        "and height")
    return np.array([x, y, x + w, y + h])


def parse_annotation(ann: dict, images: dict, num_keypoints: int, source: str) -> dict:
    """One record: image file, face box (x1, y1, x2, y2), keypoints (K, 2) and `labelled` (K,),
    False where COCO's visibility flag is 0 (not labelled: coordinates 0, left out of training and
    metrics). Refuses a box of zero size and a non-finite number, naming the image."""
    name = images[ann["image_id"]]["file_name"]
    box = coco_box(ann, name, source)
    values = np.asarray(ann["keypoints"], dtype=np.float64)
    if values.shape != (3 * num_keypoints,):
        raise DataError(f"{source}: image {name} does not have {num_keypoints} keypoints")
    values = values.reshape(-1, 3)
    labelled = values[:, 2] > 0
    if not np.isfinite(values[labelled, :2]).all():
        bad = int(np.flatnonzero(labelled & ~np.isfinite(values[:, :2]).all(axis=1))[0])
        raise DataError(f"{source}: image {name}: keypoint {bad} is NaN or infinite")
    keypoints = np.where(labelled[:, None], values[:, :2], 0.0)
    return {"file": name, "box": box, "keypoints": keypoints, "labelled": labelled}


def category_annotations(coco: dict, category: dict) -> list[dict]:
    """The annotations of a COCO file that name `category` (category_id), or name none."""
    return [ann for ann in coco["annotations"] if ann.get("category_id", category.get("id")) == category.get("id")]


def face_category(coco: dict) -> dict:
    """The category of a COCO file's faces: of the categories with keypoints (all, if none has any), the
    one most annotations name with keypoints of its count, else the one most annotations name; the first
    of a tie."""
    def score(category: dict) -> tuple[int, int]:
        named, size = category_annotations(coco, category), 3 * len(category.get("keypoints") or [])
        return sum(len(ann.get("keypoints") or []) == size for ann in named), len(named)
    return max([c for c in coco["categories"] if c.get("keypoints")] or coco["categories"], key=score)


@dataclass
class CocoKeypoints:
    """A COCO keypoints file as read: its records (see parse_annotation), keypoint metadata, the
    data root it names (None if it names none) and the SHA-1 of its bytes (which annotations a
    run was trained on)."""
    records: list[dict]
    meta: dict
    data_root: str | None
    digest: str


def load_coco(ann_file: str | Path, meta_override: dict | None = None) -> CocoKeypoints:
    """A COCO keypoints file's records and metadata. `meta_override` (a --meta file) supplies or
    replaces the category's keypoint fields. Of several categories, the faces' is read (`face_category`),
    and named in the message if it cannot be used."""
    try:
        data = Path(ann_file).read_bytes()
        coco = json.loads(data.decode("utf-8"))
        category = face_category(coco)
        images = {image["id"]: image for image in coco["images"]}
        annotations = category_annotations(coco, category)
        several = len(coco["categories"]) > 1
        source = f"{ann_file}: category {category.get('id')} {category.get('name')!r}" if several else str(ann_file)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
        raise DataError(f"{ann_file}: not a usable COCO keypoints file ({type(err).__name__}: {err})") from None
    meta = keypoint_meta({**category, **(meta_override or {})}, source)
    try:
        records = [parse_annotation(ann, images, meta["num_keypoints"], str(ann_file)) for ann in annotations]
    except (KeyError, ValueError, TypeError) as err:
        raise DataError(f"{ann_file}: an annotation is not usable ({type(err).__name__}: {err})") from None
    info = coco.get("info") if isinstance(coco.get("info"), dict) else {}
    return CocoKeypoints(records, meta, info.get("data_root"), hashlib.sha1(data).hexdigest())


def image_keys(ann_file: str | Path) -> dict[tuple, str]:
    """A COCO file's images by what makes two entries one photo: the file name (without its folder)
    and the size in pixels; each key's file name as the file gives it."""
    try:
        coco = json.loads(Path(ann_file).read_text(encoding="utf-8"))
        return {(Path(image["file_name"]).name.lower(), image.get("width"), image.get("height")): image["file_name"]
                for image in coco["images"]}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{ann_file}: not a usable COCO file ({type(err).__name__}: {err})") from None


def shared_images(files: list[tuple[str, Path]]) -> list[tuple[str, str, int, str]]:
    """For every two of the (role, COCO file) pairs that hold the same photos (`image_keys`): the
    two roles, how many photos they share and one of them."""
    keys = [(role, image_keys(path)) for role, path in files]
    found = []
    for i, (role, images) in enumerate(keys):
        for other, other_images in keys[i + 1:]:
            shared = images.keys() & other_images.keys()
            if shared:
                found.append((role, other, len(shared), images[min(shared)]))
    return found


def load_coco_images(ann_file: str | Path) -> tuple[list[dict], str | None]:
    """Each image of a COCO file with the boxes of all its annotations, {"id", "file", "boxes"
    (N, 4) x1, y1, x2, y2} (N may be 0), and the data root the file names: what a face detector
    learns from."""
    try:
        coco = json.loads(Path(ann_file).read_text(encoding="utf-8"))
        images = {image["id"]: {"id": image["id"], "file": image["file_name"], "boxes": []} for image in coco["images"]}
        for ann in coco["annotations"]:
            images[ann["image_id"]]["boxes"].append(coco_box(ann, images[ann["image_id"]]["file"], str(ann_file)))
    except (OSError, UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError) as err:
        raise DataError(f"{ann_file}: not a usable COCO file ({type(err).__name__}: {err})") from None
    for image in images.values():
        image["boxes"] = np.array(image["boxes"], dtype=np.float64).reshape(-1, 4)
    info = coco.get("info") if isinstance(coco.get("info"), dict) else {}
    return list(images.values()), info.get("data_root")


def group_of(file_name: str) -> str:
    """The group a file name says an image belongs to: DogFLW's names are ImageNet ids,
    BREED_NUMBER (n02099712_4074), so the part before the first underscore is the breed."""
    return Path(file_name).stem.split("_")[0]


def held_out_ids(images: list[dict], fraction: float, seed: int = 0) -> set[int]:
    """Ids of a seeded, group-stratified `fraction` of the images (every group gives about its
    share, at least one image of a group of 1 / fraction or more), for validation."""
    groups: dict[str, list[int]] = {}
    for image in images:
        groups.setdefault(group_of(image["file_name"]), []).append(image["id"])
    rng = np.random.default_rng(seed)
    chosen, owed = set(), 0.0
    for name in sorted(groups):
        ids = sorted(groups[name])
        owed += fraction * len(ids)
        take = min(len(ids), int(owed + 0.5))
        owed -= take
        chosen.update(int(i) for i in rng.permutation(ids)[:take])
    return chosen


def split_coco(coco: dict, ids: set[int]) -> tuple[dict, dict]:
    """A COCO dict as two: the images (and their annotations) whose id is not in `ids`, and those that are."""
    parts = []
    for keep in (lambda i: i not in ids, lambda i: i in ids):
        parts.append({**coco, "images": [im for im in coco["images"] if keep(im["id"])],
                      "annotations": [a for a in coco["annotations"] if keep(a["image_id"])]})
    return parts[0], parts[1]


def merge_coco(files: list[Path], data_roots: list[str | None]) -> dict:
    """Several COCO keypoints files of the same landmarks as one: each file's images under its own
    data root (the one given, else the one the file names), file names made absolute; the first
    file's face category (`face_category`), and each file's annotations of its own."""
    merged = {"info": {"description": "merged: " + ", ".join(map(str, files)), "data_root": "/"}, "images": [],
              "annotations": [], "categories": None}
    for path, root in zip(files, data_roots):
        coco = json.loads(Path(path).read_text(encoding="utf-8"))
        if not coco["images"]:
            raise DataError(f"{path}: holds no images")
        folder = root or (coco.get("info") or {}).get("data_root")
        if folder is None:
            raise DataError(f"{path}: names no data root; it cannot be merged with the training set")
        category = face_category(coco)
        if merged["categories"] is None:
            merged["categories"] = [category]
        elif len(category["keypoints"]) != len(merged["categories"][0]["keypoints"]):
            raise DataError(f"{path}: {len(category['keypoints'])} landmarks, the training set has "
                            f"{len(merged['categories'][0]['keypoints'])}")
        ids = {}
        for image in coco["images"]:
            ids[image["id"]] = len(merged["images"]) + 1
            merged["images"].append({**image, "id": ids[image["id"]],
                                     "file_name": str((Path(folder) / image["file_name"]).resolve())})
        face_id = merged["categories"][0].get("id")
        for ann in category_annotations(coco, category):
            number = len(merged["annotations"]) + 1
            merged["annotations"].append({**ann, "id": number, "image_id": ids[ann["image_id"]],
                                          "category_id": face_id})
    return merged
