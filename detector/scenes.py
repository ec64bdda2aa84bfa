"""Images and their face boxes for training and scoring the face detector, with the augmentation
that turns one-face photos into what videos show.

DogFLW (and the faces68 scenes) have one face per image, of about one size. Videos have two
faces, small faces, faces filling the frame and frames without a face. `SceneAugmentation`
composes training images like those, as YOLO's mosaic and scale augmentation do:
- a mosaic: 2 to 4 training images tiled into one canvas, each in its cell, boxes carried along;
- zoom: the image moved and scaled so that one of its faces spans a random share of the canvas
  (log-uniform between `face_small` and `face_large`), from small to filling it, over scenery
  cut from another image where it holds no face; boxes cut by the canvas edge keep the visible
  part when at least half of the face is inside, else they are dropped;
- negatives: a crop of an image's background that holds no face, trained on as an image without
  boxes;
then a horizontal flip and brightness and contrast jitter. Every draw comes from a stream fixed
by (seed, epoch, index), so an epoch's images are the same whatever the workers and a resume.
Boxes here are in the project's pixel convention (geometry.py); items hand them to torchvision
in its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from basics.coco_files import load_coco_images
from basics.errors import DataError
from basics.geometry import to_pixel_edges
from basics.images import read_image

FACE_LABEL = 1  # class 0 is the background
FILL = (114, 114, 114)  # grey of the canvas where no image lies, as YOLO's mosaic
MIN_VISIBLE = 0.5  # a box cut by a cell's edge is kept when this share of its area is inside


@dataclass
class SceneAugmentation:
    """Random scene composition for detector training; each probability at 0 switches its piece off."""
    mosaic_prob: float = 0.25  # 2 to 4 training images tiled into one canvas
    zoom_prob: float = 0.5     # else (no mosaic): the image moved and scaled, one face to a random size
    negative_prob: float = 0.1  # a crop of an image's background alone: no face
    face_small: float = 0.08   # face side / canvas short side, log-uniform between these two
    face_large: float = 0.9
    flip_prob: float = 0.5
    canvas: int = 640          # long side of a composed image (the detector resizes it anyway)


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return float(math.exp(rng.uniform(math.log(low), math.log(high))))


def boxes_in_cell(boxes: np.ndarray, matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes (N, 4) moved by a scale-and-shift `matrix` into a width x height cell and cut at its
    edges; those with less than MIN_VISIBLE of their area inside, or under 2 px, are dropped."""
    scale, shift = matrix[0, 0], matrix[:, 2]
    moved = boxes * scale + np.tile(shift, 2)
    cut = np.clip(moved, -0.5, [width - 0.5, height - 0.5, width - 0.5, height - 0.5])
    area = lambda b: np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)  # noqa: E731
    keep = (area(cut) >= MIN_VISIBLE * area(moved)) & ((cut[:, 2:] - cut[:, :2]).min(axis=1) >= 2)
    return cut[keep]


def zoom_into(image: np.ndarray, boxes: np.ndarray, background: np.ndarray, aug: SceneAugmentation,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """`image` scaled and moved onto `background` (a cell of its size) so that one of its faces
    (drawn at random) spans a log-uniform share of the cell's short side and lies where it fits;
    the cell and its boxes."""
    height, width = background.shape[:2]
    short = min(width, height)
    if len(boxes):
        face = boxes[rng.integers(len(boxes))]
        side = max(face[2] - face[0], face[3] - face[1], 1.0)
        target = log_uniform(rng, aug.face_small, min(aug.face_large, 0.95)) * short
        scale = target / side
        centre = (face[:2] + face[2:]) / 2 * scale
        spans = [(target / 2, extent - target / 2) if target < extent else (extent / 2, extent / 2)
                 for extent in (width, height)]
        shift = np.array([rng.uniform(*span) for span in spans]) - centre
    else:
        scale = min(width / image.shape[1], height / image.shape[0]) * rng.uniform(0.5, 1.5)
        shift = np.array([rng.uniform(min(0, width - image.shape[1] * scale), max(0, width - image.shape[1] * scale)),
                          rng.uniform(min(0, height - image.shape[0] * scale),
                                      max(0, height - image.shape[0] * scale))])
    # pixel centres at integers on both sides: x' = scale * (x + 0.5) - 0.5 + shift
    matrix = np.array([[scale, 0.0, shift[0] + (scale - 1) / 2], [0.0, scale, shift[1] + (scale - 1) / 2]])
    cell = cv2.warpAffine(image, matrix, (width, height), dst=background.copy(), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_TRANSPARENT)
    return cell, boxes_in_cell(boxes, matrix, width, height)


def mosaic_cells(width: int, height: int, count: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """`count` (2, 3 or 4) cells (x, y, w, h) tiling a width x height canvas about a random point."""
    cx, cy = (int(round(rng.uniform(0.3, 0.7) * extent)) for extent in (width, height))
    if count == 2:
        return [(0, 0, cx, height), (cx, 0, width - cx, height)] if rng.random() < 0.5 else \
            [(0, 0, width, cy), (0, cy, width, height - cy)]
    quarters = [(0, 0, cx, cy), (cx, 0, width - cx, cy), (0, cy, cx, height - cy), (cx, cy, width - cx, height - cy)]
    if count == 3:  # one half whole, the other in two
        return [(0, 0, cx, height), quarters[1], quarters[3]]
    return quarters


def background_crop(image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator,
                    tries: int = 20) -> np.ndarray | None:
    """A crop of 30-70 % of the image's sides that keeps clear of every face (grown by a fifth),
    or None if none of `tries` random ones does."""
    height, width = image.shape[:2]
    grown = boxes + np.array([-1, -1, 1, 1]) * 0.2 * np.tile(boxes[:, 2:] - boxes[:, :2], 2)
    for _ in range(tries):
        w, h = int(rng.uniform(0.3, 0.7) * width), int(rng.uniform(0.3, 0.7) * height)
        x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        clear = (grown[:, 0] >= x + w) | (grown[:, 2] <= x) | (grown[:, 1] >= y + h) | (grown[:, 3] <= y)
        if w >= 16 and h >= 16 and clear.all():
            return image[y:y + h, x:x + w]
    return None


class FaceBoxes(Dataset):
    """Images and their face boxes from a COCO file (all of an image's annotations), for training
    and scoring a detector. Items are fetched by index or (index, epoch); with `augmentation`,
    training scenes are composed from them (SceneAugmentation)."""

    def __init__(self, ann_file: str | Path, data_root: str | Path | None,
                 augmentation: SceneAugmentation | None = None, seed: int = 0):
        self.ann_file = Path(ann_file)
        self.images, info_root = load_coco_images(ann_file)
        root = data_root if data_root is not None else info_root
        if root is None:
            raise DataError(f"{ann_file}: names no data root; pass --data-root")
        self.data_root, self.augmentation, self.seed = Path(root), augmentation, seed

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> np.ndarray:
        return read_image(self.data_root / self.images[index]["file"])

    def background(self, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
        """A width x height cell of scenery: a face-free crop of a random training image, scaled
        (grey if none is found)."""
        index = int(rng.integers(len(self)))
        try:
            crop = background_crop(self.read(index), self.images[index]["boxes"], rng)
        except DataError:
            crop = None
        if crop is None:
            return np.full((height, width, 3), FILL, dtype=np.uint8)
        return cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR)

    def compose(self, image: np.ndarray, boxes: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A training scene made from `image` (and, for a mosaic, other training images)."""
        aug = self.augmentation
        scale = aug.canvas / max(image.shape[:2])
        width, height = max(32, round(image.shape[1] * scale)), max(32, round(image.shape[0] * scale))
        draw = rng.random()
        if draw < aug.negative_prob:
            crop = background_crop(image, boxes, rng)
            if crop is not None:
                return cv2.resize(crop, (width, height), interpolation=cv2.INTER_LINEAR), np.zeros((0, 4))
        if draw < aug.negative_prob + aug.mosaic_prob:
            canvas, all_boxes = np.full((height, width, 3), FILL, dtype=np.uint8), []
            cells = mosaic_cells(width, height, int(rng.integers(2, 5)), rng)
            others = [int(i) for i in rng.integers(0, len(self), size=len(cells) - 1)]
            for (x, y, w, h), source in zip(cells, [None, *others]):
                try:
                    part, part_boxes = (image, boxes) if source is None else (self.read(source),
                                                                              self.images[source]["boxes"])
                except DataError:
                    continue  # an unreadable neighbour leaves its cell grey
                cell, cell_boxes = zoom_into(part, part_boxes, self.background(w, h, rng), aug, rng)
                canvas[y:y + h, x:x + w] = cell
                all_boxes.append(cell_boxes + np.array([x, y, x, y]))
            return canvas, np.concatenate(all_boxes)
        if rng.random() < aug.zoom_prob:
            return zoom_into(image, boxes, self.background(width, height, rng), aug, rng)
        return image, boxes

    def __getitem__(self, key: int | tuple[int, int]) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        entry = self.images[index]
        try:
            image = self.read(index)
        except DataError:
            return {"unreadable": str(self.data_root / entry["file"]), "index": index}
        boxes = entry["boxes"].copy()
        if self.augmentation is not None:
            rng = np.random.default_rng((self.seed, epoch, index))
            image, boxes = self.compose(image, boxes, rng)
            if rng.random() < self.augmentation.flip_prob:
                image = image[:, ::-1]
                boxes[:, [0, 2]] = image.shape[1] - 1 - boxes[:, [2, 0]]  # pixel centres: x -> width - 1 - x
            gain, bias = rng.uniform(0.7, 1.3), rng.uniform(-25, 25)
            image = np.clip(image.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
        return {"image": image_tensor(image), "index": index,
                "target": {"boxes": torch.from_numpy(to_pixel_edges(boxes)).float().reshape(-1, 4),
                           "labels": torch.full((len(boxes),), FACE_LABEL, dtype=torch.int64)}}


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """An RGB uint8 image (H, W, 3) as the float (3, H, W) tensor in 0..1 that detectors take."""
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float().div_(255)


def collate_images(samples: list[dict]) -> dict:
    """Detection batches are lists (images differ in size); unreadable images are set aside by path."""
    readable = [s for s in samples if "unreadable" not in s]
    return {"images": [s["image"] for s in readable], "targets": [s["target"] for s in readable],
            "indices": [s["index"] for s in readable], "unreadable": [s["unreadable"] for s in samples
                                                                      if "unreadable" in s]}
