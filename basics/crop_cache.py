"""The crop cache: every image of an annotation file decoded once into a file of uint8 face crops.

Decoding a photo costs more than warping a crop, and an epoch decodes every photo. The cache
holds each face's crop at the model's scale, cut by a `CropGeometry` larger than the model's
(the dataset sizes it so that every augmented crop lies inside it), in one .npy file that
training memory-maps; samples are then warped from it instead of from the photo. A change to
the annotations, an image file or the crop geometry makes a new cache file. path.json, written
last, lists the unreadable images and marks the cache complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from basics.errors import DataError
from basics.geometry import CropGeometry, warp_image
from basics.images import read_image
from basics.run_utils import ignore_ctrl_c

CACHE_FORMAT = 2  # bump when what a cache file holds changes


def cache_key(records: list[dict], data_root: Path, digest: str, geometry: CropGeometry) -> str:
    """What a cache file depends on: the annotations, each image file's size and modification
    time, the image folder and the cache's crop geometry."""
    files = []
    for record in records:
        try:
            stat = (data_root / record["file"]).stat()
            files.append((stat.st_size, stat.st_mtime_ns))
        except OSError:
            files.append(None)
    key = json.dumps([CACHE_FORMAT, digest, files, str(data_root.resolve()), geometry.input_size,
                      geometry.box_padding])
    return hashlib.sha1(key.encode()).hexdigest()[:16]


class CropCache:
    """A complete cache file: crop i (side x side x 3) of record i, memory-mapped in each process
    on first use, and the records whose image could not be read."""

    def __init__(self, path: Path, geometry: CropGeometry, unreadable: set[int]):
        self.path, self.geometry, self.unreadable = path, geometry, unreadable
        self._crops: np.ndarray | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_crops": None}  # workers map the file themselves

    def crop(self, index: int) -> np.ndarray:
        if self._crops is None:
            self._crops = np.load(self.path, mmap_mode="r")
        return self._crops[index]


def read_listing(path: Path, count: int, side: int) -> set[int] | None:
    """The unreadable images a complete cache file lists, or None if the file or its listing is
    missing, damaged or of another shape."""
    try:
        unreadable = set(json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))["unreadable"])
        shape = np.load(path, mmap_mode="r").shape
    except (OSError, ValueError, EOFError, KeyError, TypeError):
        return None
    return unreadable if shape == (count, side, side, 3) else None


def open_crop_cache(path: Path, records: list[dict], data_root: Path, geometry: CropGeometry, build: bool = True,
                    num_workers: int = 0) -> CropCache:
    """The cache at `path`, built first if it is missing or damaged (`build`), else DataError."""
    side = geometry.input_size
    unreadable = read_listing(path, len(records), side)
    if build and unreadable is None:
        if path.with_suffix(".json").exists():
            print(f"warning: {path}: the crop cache is damaged (truncated?); building it again")
        build_crop_cache(records, data_root, geometry, path, num_workers)
        unreadable = read_listing(path, len(records), side)
    if unreadable is None:
        raise DataError(f"{path}: crop cache missing or damaged; delete {path.parent} to rebuild it")
    return CropCache(path, geometry, unreadable)


class CacheCrops(Dataset):
    """(index, cached crop or None if unreadable) for each record: what `build_crop_cache` writes."""

    def __init__(self, records: list[dict], data_root: Path, geometry: CropGeometry):
        self.records, self.data_root, self.geometry = records, data_root, geometry

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None]:
        try:
            image = read_image(self.data_root / self.records[index]["file"])
        except DataError:
            return index, None
        return index, warp_image(image, self.geometry.affine(self.records[index]["box"]), self.geometry.input_size)


def build_crop_cache(records: list[dict], data_root: Path, geometry: CropGeometry, path: Path,
                     num_workers: int) -> None:
    """Decode every record's image once into `path` (N, side, side, 3) uint8 and list the
    unreadable ones in path.json, which is written last and marks the cache complete."""
    side = geometry.input_size
    needed = len(records) * side * side * 3
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    if free < needed * 1.1:
        raise DataError(f"{path.parent}: the crop cache needs {needed / 2**20:.0f} MB, {free / 2**20:.0f} MB "
                        f"are free; free some space or train with --no-crop-cache")
    print(f"building the crop cache {path} ({len(records)} crops, {needed / 2**20:.0f} MB)")
    # a name of its own: two runs may build the same cache at once
    partial = path.with_name(f"{path.stem}.{os.getpid()}-{secrets.token_hex(4)}.partial.npy")
    partial_listing, listing = partial.with_suffix(".json"), path.with_suffix(".json")
    try:
        crops = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(len(records), side, side, 3))
        unreadable = []
        # its own generator: building the cache must not move the run's seeded random stream
        loader = DataLoader(CacheCrops(records, data_root, geometry), batch_size=None, num_workers=num_workers,
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
