"""The landmark codec: how landmarks become training targets and heatmaps become landmarks.

The pieces that must agree with each other live here, together:
- targets: Gaussian maps (peak 1, `sigma` heatmap pixels) centred on sub-pixel landmark positions;
- the loss: heatmap MSE against those targets plus L1 on the soft-argmax coordinates;
- decoding: a soft-argmax whose sharpness (beta) is learned per landmark, giving landmarks in
  input pixels, and the heatmap peak as a confidence;
- the mirror offset: crops that were mirrored before the network saw them (flip augmentation,
  the flip test) are decoded with a learned per-landmark offset. Labels of a mirrored face need
  not be exactly the mirrored labels, and the offset absorbs that difference instead of biasing
  every prediction by half of it. Both loss terms train it.
Heatmaps have stride `stride` (HEATMAP_STRIDE, 4, by default; 2 with the model's fine head);
geometry.py defines how their pixels relate to the input's.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from basics.geometry import heatmap_to_input, input_to_heatmap

HEATMAP_STRIDE = 4


def heatmap_targets(points: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """Gaussian maps (B, K, H, W), peak 1, centred at sub-pixel heatmap points (B, K, 2)."""
    xs = torch.arange(width, device=points.device, dtype=points.dtype)
    ys = torch.arange(height, device=points.device, dtype=points.dtype)
    gx = torch.exp(-((xs - points[..., 0:1]) ** 2) / (2 * sigma**2))  # (B, K, W)
    gy = torch.exp(-((ys - points[..., 1:2]) ** 2) / (2 * sigma**2))  # (B, K, H)
    return gy[..., :, None] * gx[..., None, :]


def soft_argmax(logits: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Expected (x, y) heatmap-pixel position under softmax(beta * logits) over each map (B, K, H, W)."""
    b, k, h, w = logits.shape
    prob = torch.softmax(logits.float().flatten(2) * beta.view(1, -1, 1), dim=-1).view(b, k, h, w)
    xs = torch.arange(w, device=logits.device, dtype=prob.dtype)
    ys = torch.arange(h, device=logits.device, dtype=prob.dtype)
    return torch.stack([(prob.sum(dim=2) * xs).sum(dim=-1), (prob.sum(dim=3) * ys).sum(dim=-1)], dim=-1)


class HeatmapCodec(nn.Module):
    """Targets, loss and decoding for K landmarks, with the two learned decoding parameters:
    `log_beta` (K,), the soft-argmax sharpness, and `mirror_offset` (K, 2) in heatmap pixels,
    where a mirrored crop's labels lie relative to what the network sees."""

    def __init__(self, num_keypoints: int, sigma: float = 2.0, beta_init: float = 16.0, stride: int = HEATMAP_STRIDE):
        super().__init__()
        self.sigma, self.stride = sigma, stride
        self.log_beta = nn.Parameter(torch.full((num_keypoints,), math.log(beta_init)))
        self.mirror_offset = nn.Parameter(torch.zeros(num_keypoints, 2))

    def mirror_shift(self, mirrored: torch.Tensor | bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The learned offset in input pixels for mirrored crops, zero for the others: (B|1, K, 2)."""
        mask = torch.as_tensor(mirrored, dtype=dtype, device=self.mirror_offset.device).reshape(-1, 1, 1)
        return mask * self.mirror_offset.to(dtype) * self.stride

    def decode(self, logits: torch.Tensor, mirrored: torch.Tensor | bool | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Landmarks in input pixels (B, K, 2) and confidences (B, K) from heatmap logits.

        `mirrored` (a bool, or one per crop) says which crops are horizontal mirrors of the
        image; their landmarks get the learned mirror offset. None: no crop is mirrored. The
        confidence is the heatmap's peak, clamped to 0..1 (the targets peak at 1).
        """
        points = heatmap_to_input(soft_argmax(logits, self.log_beta.exp()), self.stride)
        if mirrored is not None:
            points = points + self.mirror_shift(mirrored, points.dtype)
        confidence = logits.float().flatten(2).amax(dim=-1).clamp(0.0, 1.0)
        return points, confidence

    def loss(self, logits: torch.Tensor, keypoints: torch.Tensor, mirrored: torch.Tensor,
             heatmap_weight: float = 1.0, coord_weight: float = 1.0, keypoint_weights: torch.Tensor | None = None,
             labelled: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Heatmap MSE against Gaussian targets plus L1 on the soft-argmax coordinates: the loss
        and its two terms (detached 0-d tensors, so that the caller reads every figure in one
        host sync).

        Both are measured in heatmap pixels and weighted per landmark (`keypoint_weights`, mean
        1). The heatmap term is the squared error summed over a map divided by the target's
        energy (pi sigma^2), so it starts near 1 for any map size. Landmarks that augmentation
        pushed out of the crop get no coordinate loss: the soft-argmax cannot reach them, while
        their heatmap target (empty or cut) is still learned. For `mirrored` crops both terms
        place the landmark at its label minus the learned mirror offset. Landmarks whose
        `labelled` (B, K) is False (COCO visibility 0) get no loss at all.
        """
        logits = logits.float()
        height, width = logits.shape[-2:]
        weights = torch.ones(logits.shape[1], device=logits.device) if keypoint_weights is None else keypoint_weights
        if labelled is not None:
            weights = weights * labelled  # (B, K)
        heatmap_loss = coord_loss = logits.new_zeros(())
        if heatmap_weight > 0:
            seen_points = keypoints - self.mirror_shift(mirrored)  # where the network should see each landmark
            targets = heatmap_targets(input_to_heatmap(seen_points, self.stride), height, width, self.sigma)
            per_map = ((logits - targets) ** 2).sum(dim=(-2, -1)) / (math.pi * self.sigma**2)  # (B, K)
            heatmap_loss = (per_map * weights).mean()
        if coord_weight > 0:
            input_side = width * self.stride
            inside = ((keypoints >= -0.5) & (keypoints <= input_side - 0.5)).all(dim=-1)
            error = F.l1_loss(self.decode(logits, mirrored)[0], keypoints, reduction="none").sum(dim=-1) / self.stride
            coord_loss = (error * weights * inside).sum() / (weights * inside).sum().clamp_min(1e-6)
        loss = heatmap_weight * heatmap_loss + coord_weight * coord_loss
        return loss, {"heatmap": heatmap_loss.detach(), "coord": coord_loss.detach()}
