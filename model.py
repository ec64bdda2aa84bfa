"""The landmark network (timm backbone, FPN to stride 4, heatmap head) and its decoding.

The model takes uint8-range RGB crops (B, 3, S, S) as float and returns K heatmap logits at
stride 4. `decode` turns them into sub-pixel landmark coordinates in input pixels with a
soft-argmax whose sharpness (beta) is learned, plus a confidence per landmark. Crops that were
mirrored before the network saw them are decoded with a learned per-landmark offset
(`mirror_offset`): labels of a mirrored face need not be exactly the mirrored labels, and the
offset absorbs that difference instead of biasing every prediction by half of it.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from geometry import heatmap_to_input

HEATMAP_STRIDE = 4
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class WeightsUnavailable(RuntimeError):
    """Pretrained weights could not be obtained; the message says how to continue."""


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used; the message names the file."""


def create_backbone(name: str, pretrained: bool, pretrained_path: str | None) -> nn.Module:
    """A timm feature extractor (features_only) for the named backbone."""
    import timm

    if name not in timm.list_models():
        raise ValueError(f"backbone {name!r} is not a timm model name")
    kwargs = {"features_only": True}
    if name.startswith("hrnet"):
        kwargs["feature_location"] = ""  # the four HRNet branches themselves, not the stem
    if pretrained and pretrained_path is None:
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as err:
            raise WeightsUnavailable(
                f"could not get pretrained weights for {name} ({type(err).__name__}: {err}). "
                "Train from scratch with --no-pretrained, or pass --pretrained-path FILE with a "
                "local state dict") from None
    backbone = timm.create_model(name, pretrained=False, **kwargs)
    if pretrained_path is not None:
        load_backbone_weights(backbone, pretrained_path)
    return backbone


def load_backbone_weights(backbone: nn.Module, path: str) -> None:
    """Load a classification or feature state dict for the backbone; refuse if nothing fits."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsUnavailable(f"{path}: not a readable state dict ({err})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = backbone.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise WeightsUnavailable(f"{path}: no tensor in it matches the backbone's parameters")
    backbone.load_state_dict(matched, strict=False)
    print(f"loaded {len(matched)}/{len(own)} backbone tensors from {path}")


class LandmarkModel(nn.Module):
    """Backbone -> top-down FPN fused at stride 4 -> K heatmap logits."""

    def __init__(self, backbone: str, num_keypoints: int, input_size: int, neck_channels: int = 64,
                 beta_init: float = 16.0, pretrained: bool = False, pretrained_path: str | None = None):
        super().__init__()
        self.config = {"backbone": backbone, "num_keypoints": num_keypoints, "input_size": input_size,
                       "neck_channels": neck_channels, "beta_init": beta_init}
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.backbone = create_backbone(backbone, pretrained, pretrained_path)
        reductions = self.backbone.feature_info.reduction()
        self.feature_indices = [i for i, r in enumerate(reductions) if r >= HEATMAP_STRIDE]
        if not self.feature_indices or reductions[self.feature_indices[0]] != HEATMAP_STRIDE:
            raise ValueError(f"backbone {backbone!r} has no stride-{HEATMAP_STRIDE} feature map")
        channels = [self.backbone.feature_info.channels()[i] for i in self.feature_indices]
        self.lateral = nn.ModuleList(nn.Conv2d(c, neck_channels, 1) for c in channels)
        self.head = nn.Sequential(
            nn.Conv2d(neck_channels, neck_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(neck_channels), nn.ReLU(inplace=True),
            nn.Conv2d(neck_channels, neck_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(neck_channels), nn.ReLU(inplace=True),
            nn.Conv2d(neck_channels, num_keypoints, 1),
        )
        self.log_beta = nn.Parameter(torch.full((num_keypoints,), math.log(beta_init)))
        # (K, 2) in heatmap pixels: where a mirrored crop's labels lie relative to what the network sees
        self.mirror_offset = nn.Parameter(torch.zeros(num_keypoints, 2))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Heatmap logits (B, K, S/4, S/4) for float images in 0..255, RGB, (B, 3, S, S)."""
        all_features = self.backbone((images - self.mean) / self.std)
        features = [all_features[i] for i in self.feature_indices]
        fused = self.lateral[-1](features[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            fused = lateral(feature) + F.interpolate(fused, size=feature.shape[-2:], mode="bilinear",
                                                     align_corners=False)
        return self.head(fused)

    def decode(self, logits: torch.Tensor, mirrored: torch.Tensor | bool | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Landmarks in input pixels (B, K, 2) and confidences (B, K) from heatmap logits.

        `mirrored` (a bool, or one per crop) says which crops are horizontal mirrors of the
        image; their landmarks get the learned mirror offset. None: no crop is mirrored.
        """
        points, confidence = decode_heatmaps(logits, self.log_beta.exp())
        if mirrored is not None:
            points = points + self.mirror_shift(mirrored, points.dtype)
        return points, confidence

    def mirror_shift(self, mirrored: torch.Tensor | bool, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The learned offset in input pixels for mirrored crops, zero for the others: (B|1, K, 2)."""
        mask = torch.as_tensor(mirrored, dtype=dtype, device=self.mirror_offset.device).reshape(-1, 1, 1)
        return mask * self.mirror_offset.to(dtype) * HEATMAP_STRIDE


def soft_argmax(logits: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """Expected (x, y) heatmap-pixel position under softmax(beta * logits) over each map."""
    b, k, h, w = logits.shape
    prob = torch.softmax(logits.float().flatten(2) * beta.view(1, -1, 1), dim=-1).view(b, k, h, w)
    xs = torch.arange(w, device=logits.device, dtype=prob.dtype)
    ys = torch.arange(h, device=logits.device, dtype=prob.dtype)
    x = (prob.sum(dim=2) * xs).sum(dim=-1)
    y = (prob.sum(dim=3) * ys).sum(dim=-1)
    return torch.stack([x, y], dim=-1)


def decode_heatmaps(logits: torch.Tensor, beta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-argmax landmarks in input pixels and the heatmap peak (clamped to 0..1) as confidence."""
    points = heatmap_to_input(soft_argmax(logits, beta), HEATMAP_STRIDE)
    confidence = logits.float().flatten(2).amax(dim=-1).clamp(0.0, 1.0)
    return points, confidence


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[LandmarkModel, dict]:
    """Rebuild the inference model a checkpoint describes; returns it (eval mode) and the checkpoint."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        config, weights, meta = checkpoint["model_config"], checkpoint["model"], checkpoint["keypoint_meta"]
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except Exception as err:
        raise CheckpointError(f"{path}: not a checkpoint written by train_simple.py "
                              f"({type(err).__name__}: {err})") from None
    if meta["num_keypoints"] != config["num_keypoints"]:
        raise CheckpointError(f"{path}: keypoint metadata and model disagree on the number of landmarks")
    model = LandmarkModel(**config)
    model.load_state_dict(weights)
    return model.eval(), checkpoint
