"""Top-down face crops from COCO keypoint files, with training augmentation.

Each sample is one annotated face: its box is padded to a square, warped (with augmentation
when training) into an input_size x input_size crop, and its landmarks follow the same affine
transform (geometry.py holds the conventions). Images stay uint8; the model normalises them.

A crop cache decodes every image once into a file of uint8 face crops at the model's scale,
large enough that every augmented crop lies inside it (`augmentation_reach`); samples are then
warped from it instead of from the image. Without augmentation a cached sample equals a direct one. A
change to the annotations or to any image file makes a new cache file.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from errors import DataError
from run_utils import ignore_ctrl_c
from geometry import (apply_affine, box_to_center_size, compose_affine, crop_affine, flip_points, invert_affine,
                      warp_image)

cv2.setNumThreads(1)  # parallelism comes from DataLoader workers
CACHE_FORMAT = 2  # bump when what a cache file holds changes


@dataclass
class Augmentation:
    """Random training augmentation; every probability or range at 0 switches its piece off."""
    scale: float = 0.25         # crop side multiplied by a factor in [1 - scale, 1 + scale]
    rotation: float = 30.0      # degrees, uniform in [-rotation, rotation]
    shift: float = 0.1          # crop centre moved by up to this fraction of the crop side
    flip_prob: float = 0.5      # horizontal mirror, landmarks reordered with flip_index
    color: float = 0.3          # brightness, contrast and saturation factors in [1 - c, 1 + c]
    blur_prob: float = 0.1      # Gaussian blur
    noise_prob: float = 0.1     # additive Gaussian pixel noise
    erase_prob: float = 0.3     # occlusion: one random rectangle filled with noise


def augmentation_reach(aug: Augmentation | None) -> float:
    """Side, in crop sides, of the square about the face box's centre that holds every augmented
    crop: the largest scale, turned by the largest angle (the corners reach furthest at 45
    degrees) and moved by the largest shift along both axes. 1 without augmentation."""
    if aug is None:
        return 1.0
    angle = math.radians(min(abs(aug.rotation), 45.0))
    return (1 + aug.scale) * (math.cos(angle) + math.sin(angle) + 2 * aug.shift)


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
        raise DataError(f"{source}: the keypoint category has no {fields}: add them to its categories[0], or "
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


def load_coco(ann_file: str | Path, meta_override: dict | None = None) -> tuple[list[dict], dict, str | None]:
    """Records (see parse_annotation), keypoint metadata and the data root the file names.
    `meta_override` (a --meta file) supplies or replaces the category's keypoint fields."""
    try:
        coco = json.loads(Path(ann_file).read_text(encoding="utf-8"))
        category = {**coco["categories"][0], **(meta_override or {})}
        images = {image["id"]: image for image in coco["images"]}
        annotations = list(coco["annotations"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, IndexError, TypeError) as err:
        raise DataError(f"{ann_file}: not a usable COCO keypoints file ({type(err).__name__}: {err})") from None
    meta = keypoint_meta(category, str(ann_file))
    try:
        records = [parse_annotation(ann, images, meta["num_keypoints"], str(ann_file)) for ann in annotations]
    except (KeyError, ValueError, TypeError) as err:
        raise DataError(f"{ann_file}: an annotation is not usable ({type(err).__name__}: {err})") from None
    info = coco.get("info") if isinstance(coco.get("info"), dict) else {}
    return records, meta, info.get("data_root")


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


def read_image(path: str | Path) -> np.ndarray:
    """The project's one image reader: an RGB uint8 array, turned upright as its EXIF orientation
    says (as image viewers show it and as the converter measures it), or DataError naming the file."""
    try:
        with Image.open(path) as image:
            return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: cannot read image (no such file)") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:  # PIL's "not an image"
        raise DataError(f"{path}: cannot read image ({type(err).__name__})") from None


class LandmarkDataset(Dataset):
    """Face crops and their landmarks from one COCO keypoints file.

    Items are fetched by index or by (index, epoch). Augmentation draws from a random stream
    fixed by (seed, epoch, index), so an epoch's samples are the same whatever the number of
    workers and whether a run was resumed. An image that cannot be read yields
    {"unreadable": path, "index": index} for `collate_readable` to set aside.
    """

    def __init__(self, ann_file: str | Path, data_root: str | Path | None, input_size: int,
                 padding: float = 1.25, augmentation: Augmentation | None = None, seed: int = 0,
                 meta_override: dict | None = None):
        self.ann_file = Path(ann_file)
        self.records, self.meta, info_root = load_coco(ann_file, meta_override)
        root = data_root if data_root is not None else info_root
        if root is None:
            raise DataError(f"{ann_file}: names no data root; pass --data-root")
        self.data_root = Path(root)
        self.input_size = input_size
        self.padding = padding
        self.augmentation = augmentation
        self.seed = seed
        self.cache_path: Path | None = None
        self.cache_unreadable: set[int] = set()
        self._cache: np.ndarray | None = None  # memory map, opened in each process on first use

    def __len__(self) -> int:
        return len(self.records)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}  # workers map the file themselves

    def cache_side(self) -> int:
        """Side of a cached crop: input_size x augmentation_reach, rounded up so that the two crops
        share pixel centres."""
        return self.input_size + 2 * math.ceil(self.input_size * (augmentation_reach(self.augmentation) - 1) / 2)

    def cache_affine(self, index: int, side: int) -> np.ndarray:
        """The matrix from original pixels to record `index`'s cached crop of `side` pixels (the model's scale)."""
        center, size = box_to_center_size(self.records[index]["box"], self.padding)
        return crop_affine(center, size * side / self.input_size, side)

    def annotation_digest(self) -> str:
        """SHA-1 of the annotation file: which annotations a run was trained on."""
        return hashlib.sha1(self.ann_file.read_bytes()).hexdigest()

    def cache_key(self) -> str:
        """What a cache file depends on: the annotations, each image file's size and modification
        time, the image folder and the crop geometry."""
        files = []
        for record in self.records:
            try:
                stat = (self.data_root / record["file"]).stat()
                files.append((stat.st_size, stat.st_mtime_ns))
            except OSError:
                files.append(None)
        key = json.dumps([CACHE_FORMAT, self.annotation_digest(), files,
                          str(self.data_root.resolve()), self.input_size, self.cache_side(), self.padding])
        return hashlib.sha1(key.encode()).hexdigest()[:16]

    def use_cache(self, cache_dir: str | Path, build: bool = True, num_workers: int = 0) -> Path:
        """Read samples from this dataset's crop cache in `cache_dir`, building it first if it is
        missing (`build`) or out of date. Returns the cache file."""
        path = Path(cache_dir) / f"{self.ann_file.stem}-{self.input_size}px-{self.cache_key()}.npy"
        listing = path.with_suffix(".json")
        unreadable = self.read_cache_listing(path)
        if build and unreadable is None:
            if listing.exists():
                print(f"warning: {path}: the crop cache is damaged (truncated?); building it again")
            build_crop_cache(self, path, num_workers)
            unreadable = self.read_cache_listing(path)
        if unreadable is None:
            raise DataError(f"{path}: crop cache missing or damaged; delete {path.parent} to rebuild it")
        self.cache_path, self._cache, self.cache_unreadable = path, None, unreadable
        return path

    def read_cache_listing(self, path: Path) -> set[int] | None:
        """The unreadable images a complete cache file lists, or None if the file or its listing
        is missing, damaged or of another shape."""
        try:
            unreadable = set(json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))["unreadable"])
            shape = np.load(path, mmap_mode="r").shape
        except (OSError, ValueError, EOFError, KeyError, TypeError):
            return None
        side = self.cache_side()
        return unreadable if shape == (len(self), side, side, 3) else None

    def cached_crops(self) -> np.ndarray:
        if self._cache is None:
            self._cache = np.load(self.cache_path, mmap_mode="r")
        return self._cache

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        record = self.records[index]
        if self.cache_path is not None:
            if index in self.cache_unreadable:
                return {"unreadable": str(self.data_root / record["file"]), "index": index}
            crops = self.cached_crops()  # its side, not one recomputed from the augmentation of now
            image, to_image = crops[index], invert_affine(self.cache_affine(index, crops.shape[1]))
        else:
            try:
                image, to_image = read_image(self.data_root / record["file"]), None
            except DataError:
                return {"unreadable": str(self.data_root / record["file"]), "index": index}
        center, size = box_to_center_size(record["box"], self.padding)
        aug = self.augmentation
        rotation, flip = 0.0, False
        if aug is not None:
            rng = np.random.default_rng((self.seed, epoch, index))
            size *= rng.uniform(1 - aug.scale, 1 + aug.scale)
            center = center + rng.uniform(-aug.shift, aug.shift, size=2) * size
            rotation = rng.uniform(-aug.rotation, aug.rotation)
            flip = rng.random() < aug.flip_prob
        matrix = crop_affine(center, size, self.input_size, rotation)
        crop = warp_image(image, matrix if to_image is None else compose_affine(matrix, to_image), self.input_size)
        keypoints, labelled = apply_affine(record["keypoints"], matrix), record["labelled"]
        if flip:
            crop = crop[:, ::-1]
            keypoints = flip_points(keypoints, self.meta["flip_index"], self.input_size)
            labelled = labelled[self.meta["flip_index"]]
        if aug is not None:
            crop = photometric_augment(crop, aug, rng)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))),
            "keypoints": torch.from_numpy(keypoints.astype(np.float32)),
            "labelled": torch.from_numpy(labelled),
            "affine": torch.from_numpy(matrix),
            "mirrored": bool(flip),
            "index": index,
        }


class EpochSampler(Sampler):
    """A seeded shuffle per epoch, shared out across DDP ranks, yielding (index, epoch).

    The epoch travels with each index so that a sample's augmentation is fixed by
    (seed, epoch, index), even in persistent workers. `start_batch` skips the batches a
    resumed run has already trained on.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = size // (batch_size * world_size)
        self.epoch, self.start_batch = 1, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        mine = order[: self.batches_per_epoch * self.batch_size * self.world_size][self.rank::self.world_size]
        return iter([(int(i), self.epoch) for i in mine[self.start_batch * self.batch_size:]])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


class CacheCrops(Dataset):
    """(index, cached crop or None if unreadable) for each record: what `build_crop_cache` writes."""

    def __init__(self, dataset: LandmarkDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None]:
        try:
            image = read_image(self.dataset.data_root / self.dataset.records[index]["file"])
        except DataError:
            return index, None
        side = self.dataset.cache_side()
        return index, warp_image(image, self.dataset.cache_affine(index, side), side)


def build_crop_cache(dataset: LandmarkDataset, path: Path, num_workers: int) -> None:
    """Decode every image of `dataset` once into `path` (N, side, side, 3) uint8 and list the
    unreadable ones in path.json, which is written last and marks the cache complete."""
    side = dataset.cache_side()
    needed = len(dataset) * side * side * 3
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if free < needed * 1.1:
        raise DataError(f"{path.parent}: the crop cache needs {needed / 2**20:.0f} MB, {free / 2**20:.0f} MB "
                        f"are free; free some space or train with --no-crop-cache")
    print(f"building the crop cache {path} ({len(dataset)} crops, {needed / 2**20:.0f} MB)")
    # a name of its own: two runs may build the same cache at once
    partial = path.with_name(f"{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.partial.npy")
    partial_listing, listing = partial.with_suffix(".json"), path.with_suffix(".json")
    try:
        crops = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(dataset), side, side, 3))
        unreadable = []
        # its own generator: building the cache must not move the run's seeded random stream
        loader = DataLoader(CacheCrops(dataset), batch_size=None, num_workers=num_workers,
                            generator=torch.Generator(), worker_init_fn=ignore_ctrl_c)
        for index, crop in loader:
            if crop is None:
                unreadable.append(index)
            else:
                crops[index] = np.asarray(crop)
        crops.flush()
        del crops
        partial_listing.write_text(json.dumps({"unreadable": unreadable}), encoding="utf-8")
        os.replace(partial, path)
        os.replace(partial_listing, listing)
    finally:  # an interrupted build leaves no partial files behind
        partial.unlink(missing_ok=True)
        partial_listing.unlink(missing_ok=True)


def collate_readable(samples: list[dict]) -> dict:
    """Batch the samples whose image could be read; the others' paths go in batch["unreadable"]."""
    readable = [s for s in samples if "unreadable" not in s]
    batch = default_collate(readable) if readable else {}
    batch["unreadable"] = [s["unreadable"] for s in samples if "unreadable" in s]
    return batch


def colour_matrix(image: np.ndarray, brightness: float, contrast: float, saturation: float) -> np.ndarray:
    """The 3x4 affine colour map equal to scaling `image` by brightness, then contrast about its
    mean, then saturation about each pixel's grey (channel mean): one cv2.transform instead of
    five passes over the pixels."""
    mean = brightness * float(np.mean(cv2.mean(image)[:3]))
    keep = brightness * contrast * saturation  # weight of the pixel's own channel
    grey = brightness * contrast * (1 - saturation) / 3  # weight of each channel through the grey
    return np.hstack([np.eye(3) * keep + grey, np.full((3, 1), mean * (1 - contrast))]).astype(np.float32)


def photometric_augment(crop: np.ndarray, aug: Augmentation, rng: np.random.Generator) -> np.ndarray:
    """Colour jitter, blur, noise and a random occluding rectangle on a uint8 RGB crop."""
    image = crop.astype(np.float32)
    if aug.color > 0:
        brightness, contrast, saturation = rng.uniform(1 - aug.color, 1 + aug.color, size=3)
        image = cv2.transform(image, colour_matrix(image, brightness, contrast, saturation))
    if rng.random() < aug.blur_prob:
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=rng.uniform(0.5, 1.5))
    if rng.random() < aug.noise_prob:
        sigma = np.float32(rng.uniform(3, 12))
        image += rng.standard_normal(size=image.shape, dtype=np.float32) * sigma
    if rng.random() < aug.erase_prob:
        side = image.shape[0]
        area = rng.uniform(0.02, 0.15) * side * side
        aspect = np.exp(rng.uniform(np.log(0.3), np.log(3.3)))
        h = int(min(side, round(np.sqrt(area * aspect))))
        w = int(min(side, round(np.sqrt(area / aspect))))
        y, x = rng.integers(0, side - h + 1), rng.integers(0, side - w + 1)
        image[y:y + h, x:x + w] = rng.uniform(0, 255, size=(h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8)
