"""Coordinate conventions and transforms shared by training, evaluation and prediction.

Conventions (the "unbiased" pixel-centre convention, UDP):
- A pixel with integer index i covers [i - 0.5, i + 0.5]; its centre is at i. Landmarks in
  label files, in crops and in heatmaps all use this convention.
- A square crop of side `size` around `center` is mapped onto an input of S x S pixels so
  that the crop's edges land on -0.5 and S - 0.5 (the outer edges of the outer pixels).
- A heatmap of stride r relates to the input by x_heatmap = (x_input + 0.5) / r - 0.5, so
  pixel edges line up and a horizontal flip of the input is a flip of the heatmap.
- Mirroring a row of `width` pixels maps x to width - 1 - x.
- torchvision's detectors put pixel edges at integers instead (an image spans 0..width);
  `to_pixel_edges` and `from_pixel_edges` convert face boxes between the two.

Functions accept NumPy arrays and, where noted, torch tensors.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np


def box_to_center_size(box_xyxy: np.ndarray, padding: float) -> tuple[np.ndarray, float]:
    """Centre and side of the square crop that holds `box_xyxy` enlarged by `padding`."""
    x1, y1, x2, y2 = (float(v) for v in box_xyxy)
    center = np.array([(x1 + x2) / 2.0, (y1 + y2) / 2.0])
    return center, max(x2 - x1, y2 - y1) * padding


def points_extent(points: np.ndarray) -> np.ndarray:
    """The box (x1, y1, x2, y2) spanned by points (N, 2)."""
    points = np.asarray(points, dtype=np.float64)
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


def padding_around(boxes: list, extents: list, default: tuple[float, float, float, float] | None = None
                   ) -> tuple[float, float, float, float] | None:
    """Median padding of face boxes around their landmarks' extents (x1, y1, x2, y2 each), as
    fractions of the extent's width and height: (left, top, right, bottom); `default` without an
    extent of some width and height."""
    ratios = [[(e[0] - b[0]) / (e[2] - e[0]), (e[1] - b[1]) / (e[3] - e[1]), (b[2] - e[2]) / (e[2] - e[0]),
               (b[3] - e[3]) / (e[3] - e[1])] for b, e in zip(boxes, extents) if e[2] > e[0] and e[3] > e[1]]
    return tuple(float(v) for v in np.median(ratios, axis=0)) if ratios else default


def box_around(extent: np.ndarray, padding) -> np.ndarray:
    """The face box (x1, y1, x2, y2) around a landmarks' extent, padded by (left, top, right,
    bottom) fractions of its width and height (padding_around's)."""
    width, height = max(extent[2] - extent[0], 1.0), max(extent[3] - extent[1], 1.0)
    return np.array([extent[0] - padding[0] * width, extent[1] - padding[1] * height,
                     extent[2] + padding[2] * width, extent[3] + padding[3] * height], dtype=np.float64)


def box_for_landmarks(points: np.ndarray, padding=None, reference: tuple[np.ndarray, np.ndarray] | None = None
                      ) -> np.ndarray:
    """The face box (x1, y1, x2, y2) for landmarks (K, 2), placed as known boxes sit around theirs:
    with `padding` (padding_around's), their extent padded as the training boxes are; with
    `reference` (box, landmarks) of one face, that box moved with the landmarks' centre and scaled
    with their spread (the mean of their standard deviations along x and y)."""
    if reference is None:
        return box_around(points_extent(points), padding)
    box, landmarks = reference
    (centre, spread), (ref_centre, ref_spread) = [(p.mean(axis=0), p.std(axis=0).mean() + 1e-6)
                                                  for p in (points, landmarks)]
    return ((np.asarray(box).reshape(2, 2) - ref_centre) * (spread / ref_spread) + centre).reshape(4)


def crop_affine(center: np.ndarray, size: float, output_size: int, rotation_deg: float = 0.0) -> np.ndarray:
    """2x3 matrix mapping original-image points into the output_size x output_size crop.

    The square of side `size` centred at `center`, rotated by `rotation_deg`
    (counter-clockwise on screen), fills the crop exactly.
    """
    scale = output_size / size
    theta = math.radians(rotation_deg)
    a, b = scale * math.cos(theta), scale * math.sin(theta)
    half = (output_size - 1) / 2.0
    cx, cy = float(center[0]), float(center[1])
    return np.array(
        [[a, b, half - a * cx - b * cy],
         [-b, a, half + b * cx - a * cy]],
        dtype=np.float64,
    )


@dataclass(frozen=True)
class CropGeometry:
    """How a face crop is cut: the face box, enlarged by `box_padding` to a square, fills an
    input_size x input_size crop. Checkpoints carry it; every reader cuts crops with it.
    `face_padding` (left, top, right, bottom; padding_around's) is how the training boxes sit
    around their landmarks, so that a box can be drawn again around placed landmarks."""
    input_size: int
    box_padding: float = 1.25
    face_padding: tuple[float, float, float, float] | None = None

    def affine(self, box_xyxy: np.ndarray, scale: float = 1.0, shift: tuple[float, float] = (0.0, 0.0),
               rotation_deg: float = 0.0) -> np.ndarray:
        """The 2x3 matrix from original-image pixels into the crop of this face box; training
        augmentation scales the square by `scale`, moves its centre by `shift` of its (scaled)
        side and turns it by `rotation_deg`."""
        center, size = box_to_center_size(box_xyxy, self.box_padding)
        size *= scale
        return crop_affine(center + np.asarray(shift) * size, size, self.input_size, rotation_deg)

    def cut(self, image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """The input_size x input_size crop of `image` that `matrix` (one of `affine`'s) maps."""
        return warp_image(image, matrix, self.input_size)

    def enlarged(self, side: int) -> "CropGeometry":
        """The same crops at the same scale on a larger canvas of `side` pixels (the crop cache's)."""
        return replace(self, input_size=side, box_padding=self.box_padding * side / self.input_size)

    def box_around_landmarks(self, points: np.ndarray) -> np.ndarray:
        """The face box a training label would give these landmarks (K, 2): their extent, padded
        by face_padding (FaceLandmarker refuses to refine without it)."""
        return box_for_landmarks(points, self.face_padding)


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of one 2x3 affine matrix or of a batch of them (..., 2, 3)."""
    linear, shift = matrix[..., :2], matrix[..., 2:]
    linear_inv = np.linalg.inv(linear)
    return np.concatenate([linear_inv, -linear_inv @ shift], axis=-1)


def compose_affine(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """The 2x3 matrix that applies `inner` first, then `outer`."""
    return np.concatenate([outer[:, :2] @ inner[:, :2], outer[:, :2] @ inner[:, 2:] + outer[:, 2:]], axis=1)


def apply_affine(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 2x3 matrix to points (..., K, 2); a batch of matrices (B, 2, 3) to (B, K, 2)."""
    return points @ np.swapaxes(matrix[..., :2], -1, -2) + matrix[..., None, :, 2]


def warp_image(image: np.ndarray, matrix: np.ndarray, output_size: int) -> np.ndarray:
    """Warp an image with a 2x3 matrix into an output_size square (bilinear, black border)."""
    return cv2.warpAffine(
        image, matrix, (output_size, output_size), flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
    )


def flip_points(points, flip_index, width: int):
    """Landmarks (..., K, 2) of the horizontally mirrored image (NumPy or torch).

    Point i of the mirror image is point flip_index[i] of the original, mirrored in x.
    Applying it twice gives the original points back.
    """
    flipped = points[..., list(flip_index), :]
    flipped[..., 0] = (width - 1) - flipped[..., 0]
    return flipped


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in a (N, 4) with every box in b (M, 4): (N, M)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)
    area = lambda boxes: np.prod(boxes[:, 2:] - boxes[:, :2], axis=-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def greedy_match(overlap: np.ndarray, min_overlap: float) -> list[tuple[int, int]]:
    """One-to-one pairs (row, column) of an overlap matrix, best first, each at least min_overlap."""
    pairs, rows, columns = [], set(), set()
    for row, column in zip(*np.unravel_index(np.argsort(-overlap, axis=None), overlap.shape)):
        if overlap[row, column] < min_overlap:
            break
        if row not in rows and column not in columns:
            pairs.append((int(row), int(column)))
            rows.add(row)
            columns.add(column)
    return pairs


def to_pixel_edges(boxes: np.ndarray) -> np.ndarray:
    """Boxes (..., 4) in this project's convention to torchvision's detectors' (pixel edges at integers)."""
    return boxes + 0.5


def from_pixel_edges(boxes: np.ndarray) -> np.ndarray:
    """Boxes (..., 4) from torchvision's detectors' convention to this project's (pixel centres at integers)."""
    return boxes - 0.5


def input_to_heatmap(points, stride: float):
    """Input-pixel coordinates to heatmap-pixel coordinates (NumPy or torch)."""
    return (points + 0.5) / stride - 0.5


def heatmap_to_input(points, stride: float):
    """Heatmap-pixel coordinates to input-pixel coordinates (NumPy or torch)."""
    return (points + 0.5) * stride - 0.5
