"""Top-down face crops from COCO keypoint files, with training augmentation.

Each sample is one annotated face: its box is padded to a square, warped (with augmentation
when training) into an input_size x input_size crop, and its landmarks follow the same affine
transform (basics/geometry.py holds the conventions). Images stay uint8; the model normalises them.

Every crop is cut by the dataset's `geometry.CropGeometry`, the one object that evaluation and
prediction cut theirs with and that checkpoints carry. With a crop cache (basics/crop_cache.py),
sized by `augmentation_reach` so that every augmented crop lies inside it, samples are warped
from the cached crop instead of the image; without augmentation a cached sample equals a direct one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from basics.coco_files import load_coco
from basics.crop_cache import CropCache, cache_key, open_crop_cache
from basics.errors import DataError
from basics.geometry import (CropGeometry, apply_affine, compose_affine, flip_points, invert_affine, padding_around,
                             points_extent)
from basics.images import read_image

cv2.setNumThreads(1)  # parallelism comes from DataLoader workers


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


class LandmarkDataset(Dataset):
    """Face crops and their landmarks from one COCO keypoints file, cut by `geometry`.

    Items are fetched by index or by (index, epoch). Augmentation draws from a random stream
    fixed by (seed, epoch, index), so an epoch's samples are the same whatever the number of
    workers and whether a run was resumed. An image that cannot be read yields
    {"unreadable": path, "index": index} for `collate_readable` to set aside.
    """

    def __init__(self, ann_file: str | Path, data_root: str | Path | None, input_size: int,
                 padding: float = 1.25, augmentation: Augmentation | None = None, seed: int = 0,
                 meta_override: dict | None = None):
        self.ann_file = Path(ann_file)
        coco = load_coco(ann_file, meta_override)
        self.records, self.meta, self.digest = coco.records, coco.meta, coco.digest
        if not self.records:
            raise DataError(f"{ann_file}: holds no annotated faces")
        root = data_root if data_root is not None else coco.data_root
        if root is None:
            raise DataError(f"{ann_file}: names no data root; pass --data-root")
        self.data_root = Path(root)
        labelled = [r for r in self.records if r["labelled"].sum() >= 2]  # how the boxes sit around their landmarks
        face_padding = padding_around([r["box"] for r in labelled],
                                      [points_extent(r["keypoints"][r["labelled"]]) for r in labelled])
        self.geometry = CropGeometry(input_size, padding, face_padding)
        self.augmentation = augmentation
        self.seed = seed
        self.cache: CropCache | None = None

    def __len__(self) -> int:
        return len(self.records)

    def cache_side(self) -> int:
        """Side of a cached crop: input_size x augmentation_reach, rounded up so that the two crops
        share pixel centres."""
        size = self.geometry.input_size
        return size + 2 * math.ceil(size * (augmentation_reach(self.augmentation) - 1) / 2)

    def use_cache(self, cache_dir: str | Path, build: bool = True, num_workers: int = 0) -> Path:
        """Read samples from this dataset's crop cache in `cache_dir`, building it first if it is
        missing (`build`) or out of date. Returns the cache file."""
        geometry = self.geometry.enlarged(self.cache_side())
        key = cache_key(self.records, self.data_root, self.digest, geometry)
        path = Path(cache_dir) / f"{self.ann_file.stem}-{self.geometry.input_size}px-{key}.npy"
        self.cache = open_crop_cache(path, self.records, self.data_root, geometry, build, num_workers)
        return path

    def source(self, index: int) -> tuple[np.ndarray, np.ndarray | None] | None:
        """The pixels record `index`'s crops are cut from: its cached crop with the matrix from
        original pixels into it, or the decoded image (matrix None); None if it cannot be read."""
        if self.cache is not None:
            if index in self.cache.unreadable:
                return None
            return self.cache.crop(index), self.cache.geometry.affine(self.records[index]["box"])
        try:
            return read_image(self.data_root / self.records[index]["file"]), None
        except DataError:
            return None

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        record = self.records[index]
        source = self.source(index)
        if source is None:
            return {"unreadable": str(self.data_root / record["file"]), "index": index}
        image, to_source = source
        aug = self.augmentation
        scale, shift, rotation, flip = 1.0, (0.0, 0.0), 0.0, False
        if aug is not None:
            rng = np.random.default_rng((self.seed, epoch, index))
            scale = rng.uniform(1 - aug.scale, 1 + aug.scale)
            shift = rng.uniform(-aug.shift, aug.shift, size=2)
            rotation = rng.uniform(-aug.rotation, aug.rotation)
            flip = rng.random() < aug.flip_prob
        matrix = self.geometry.affine(record["box"], scale, shift, rotation)
        crop = self.geometry.cut(image, matrix if to_source is None else compose_affine(matrix, invert_affine(to_source)))
        keypoints, labelled = apply_affine(record["keypoints"], matrix), record["labelled"]
        if flip:
            crop = crop[:, ::-1]
            keypoints = flip_points(keypoints, self.meta["flip_index"], self.geometry.input_size)
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
