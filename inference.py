"""Landmarks for new images: the one path from an image and a face box to landmarks in its pixels.

tools/predict.py and evaluate.py call it; crops are cut exactly as in training, with the crop
geometry the checkpoint carries (geometry.CropGeometry).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from geometry import apply_affine, invert_affine, warp_image
from model import LandmarkModel, load_landmark_model
from run_utils import pick_device


@torch.no_grad()
def predict_crops(model: LandmarkModel, images: torch.Tensor, affines: np.ndarray,
                  flip_index: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks in original-image pixels (B, K, 2) and confidences (B, K) for float crops.

    `affines` (B, 2, 3) map original pixels to crop pixels; flip_index turns on the flip test
    (LandmarkModel.predict).
    """
    points, confidence = model.predict(images, flip_index)
    return apply_affine(points.cpu().double().numpy(), invert_affine(affines)), confidence.cpu().numpy()


class LandmarkPredictor:
    """A landmark checkpoint ready for new images: `landmarks(images, boxes)` places the landmarks
    of one face box per image, in that image's pixels."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", flip_test: bool = False):
        self.model, self.checkpoint, self.crop = load_landmark_model(checkpoint, map_location="cpu")
        self.device = pick_device(device)
        self.model.to(self.device)
        self.meta = self.checkpoint["keypoint_meta"]
        self.flip_index = self.meta["flip_index"] if flip_test else None

    def landmarks(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks (N, K, 2) in original pixels and confidences (N, K) for N (RGB image, face box
        x1, y1, x2, y2) pairs, predicted as one batch."""
        size = self.crop.input_size
        affines = np.stack([self.crop.affine(box) for box in boxes])
        crops = np.stack([warp_image(image, affine, size) for image, affine in zip(images, affines)])
        crops = torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2))).to(self.device).float()
        return predict_crops(self.model, crops, affines, self.flip_index)
