"""The face detector: a torchvision detection model with one class, trained on the face boxes of
the same COCO files the landmarks come from (tools/train_detector.py).

DETECTORS names the models, all FCOS (anchor-free, one class) on a body with an FPN:
`fcos_lite0_fpn` (the default), EfficientNet-Lite0 from timm, whose ImageNet weights come with
pip (basics/backbone_weights.py) and so need no download; `fcos_mobilenet_v3_fpn` and
`fcos_resnet18_fpn` on torchvision's bodies, whose ImageNet weights torchvision downloads. These
three have an FPN of 64 channels and two convolutions per head branch, light enough to train on
a CPU; `fcos_resnet50_fpn`, torchvision's FCOS-ResNet-50 layout, is for a GPU. With `pretrained`
the body starts from ImageNet weights, its normalisation layers frozen; the detection layers
always start new. A checkpoint's `detector_config` holds `create_detector`'s arguments, so
`load_detector` rebuilds the model from the file without downloading anything.
"""
from __future__ import annotations

import contextlib
import io
import json
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torchvision
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7

from basics.backbone_weights import PACKAGED, input_normalisation, load_packaged_weights, timm_host
from basics.checkpoints import DETECTOR, read_checkpoint
from basics.coco_files import face_category
from basics.errors import CheckpointError, UsageError, WeightsUnavailable
from basics.geometry import from_pixel_edges
from detector.scenes import image_tensor

# name -> the body (a backbone with packaged weights, else a torchvision model), its torchvision ImageNet
# weights, its layers of strides 8, 16 and 32, their channels, the FPN's width and the head's convolutions per branch
BODIES = {
    "fcos_lite0_fpn": ("efficientnet_lite0", None, (2, 3, 4), [40, 112, 320], 64, 2),
    "fcos_mobilenet_v3_fpn": ("mobilenet_v3_large", "MobileNet_V3_Large_Weights", {"6": "0", "12": "1", "16": "2"},
                              [40, 112, 960], 64, 2),
    "fcos_resnet18_fpn": ("resnet18", "ResNet18_Weights", {"layer2": "0", "layer3": "1", "layer4": "2"},
                          [128, 256, 512], 64, 2),
    "fcos_resnet50_fpn": ("resnet50", "ResNet50_Weights", {"layer2": "0", "layer3": "1", "layer4": "2"},
                          [512, 1024, 2048], 256, 4),
}
DETECTORS = tuple(BODIES)
FROZEN_STAGES = 2  # with ImageNet weights, a timm body's stem and first two stages (strides 2 and 4) stay as trained


class PackagedBodyWithFPN(nn.Module):
    """torchvision's BackboneWithFPN for a timm body whose ImageNet weights come with pip: the
    feature maps of `out_indices` under an FPN with the P6 and P7 levels FCOS uses."""

    def __init__(self, backbone: str, out_indices: tuple[int, ...], channels: list[int], width: int,
                 pretrained: bool, load_weights: bool) -> None:
        import timm
        from timm.layers import freeze_batch_norm_2d

        super().__init__()
        self.body = timm.create_model(timm_host(backbone), features_only=True, out_indices=out_indices)
        if load_weights:
            count = load_packaged_weights(backbone, self.body)
            print(f"detector body {backbone}: ImageNet weights from its pip package ({count} tensors), no download")
        if pretrained:  # as torchvision's detectors keep their first layers (docs/measure/detector_step.py)
            self.body = freeze_batch_norm_2d(self.body)
            for module in (self.body.conv_stem, self.body.bn1, *self.body.blocks[:FROZEN_STAGES]):
                module.requires_grad_(False)
        self.fpn = FeaturePyramidNetwork(channels, width, extra_blocks=LastLevelP6P7(width, width))
        self.out_channels = width

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), features) for i, features in enumerate(self.body(images))))


def torchvision_body_with_fpn(name: str, pretrained: bool, download: bool) -> BackboneWithFPN:
    """The FPN over a torchvision body; with `pretrained`, its normalisation layers frozen and, with
    `download`, torchvision's ImageNet weights fetched."""
    body_name, weights_name, return_layers, channels, width, _ = BODIES[name]
    weights = getattr(torchvision.models, weights_name).IMAGENET1K_V1 if pretrained and download else None
    frozen = {"norm_layer": FrozenBatchNorm2d} if pretrained else {}
    try:
        body = getattr(torchvision.models, body_name)(weights=weights, **frozen)
    except (OSError, RuntimeError) as err:  # the download, or a file that does not match its hash
        raise WeightsUnavailable(f"could not get ImageNet weights for the {name} backbone ({type(err).__name__}: "
                                 f"{err}). Use --model fcos_lite0_fpn, whose ImageNet weights come with pip "
                                 "install -r requirements.txt, or train from scratch with --no-pretrained") from None
    body = body.features if body_name.startswith("mobilenet") else body
    return BackboneWithFPN(body, return_layers, channels, width, extra_blocks=LastLevelP6P7(width, width))


def create_detector(name: str, pretrained: bool, min_size: int = 320, max_size: int = 416,
                    download: bool = True) -> FCOS:
    """A one-class FCOS face detector on the named body, with an FPN over strides 8 to 128. Images
    are resized inside the model to a short side of min_size, at most max_size long, and
    normalised as the body's ImageNet weights were trained. `pretrained`: the body starts from
    ImageNet weights and, as in torchvision's detectors, its normalisation layers are frozen;
    `download`: load those weights now (not when a checkpoint will supply every weight)."""
    if name not in BODIES:
        raise UsageError(f"--model {name}: not a detector here (choose from {', '.join(DETECTORS)})")
    body_name, _, out_indices, channels, width, convs = BODIES[name]
    if body_name in PACKAGED:
        backbone = PackagedBodyWithFPN(body_name, out_indices, channels, width, pretrained, pretrained and download)
    else:
        backbone = torchvision_body_with_fpn(name, pretrained, download)
    mean, std = input_normalisation(body_name)  # 0..255 units; the detector's images are in 0..1
    return FCOS(backbone, num_classes=2, head=FCOSHead(width, 1, 2, num_convs=convs), min_size=min_size,
                max_size=max_size, image_mean=[m / 255 for m in mean], image_std=[s / 255 for s in std])


def load_detector(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """The detector a checkpoint of tools/train_detector.py describes (eval mode), and the checkpoint."""
    checkpoint = read_checkpoint(path, DETECTOR, map_location)
    model = create_detector(**{"pretrained": False, **checkpoint["detector_config"]}, download=False)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: its weights do not fit its detector config ({str(err)[:200]})") from None
    return model.eval(), checkpoint


def detections(outputs: list[dict]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Face boxes (N, 4: x1, y1, x2, y2 in the project's pixel convention, as annotation boxes) and
    scores (N,), best first, from a detector's outputs for a batch of images."""
    return [(from_pixel_edges(out["boxes"].cpu().double().numpy()), out["scores"].cpu().double().numpy())
            for out in outputs]


@torch.no_grad()
def detect_faces(model: nn.Module, images: list[np.ndarray], device: torch.device
                 ) -> list[tuple[np.ndarray, np.ndarray]]:
    """`detections` for RGB uint8 images."""
    return detections(model([image_tensor(image).to(device) for image in images]))


SIZE_RANGES = ("small", "medium", "large")  # COCO's: box area below 32^2, 32^2 to 96^2, above 96^2 pixels


def box_average_precision(ann_file: str | Path, image_ids: list[int], boxes: list[np.ndarray],
                          scores: list[np.ndarray]) -> dict[str, float | None]:
    """COCO box AP@0.5 and AP@[.5:.95] (pycocotools) of detections (boxes in the project's pixel
    convention, as the annotations) for the given images of a COCO file, and AP@[.5:.95] and
    recall (AR, up to 100 detections) by face size (COCO's small, medium, large; None where the
    file has no face of that size)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    coco = json.loads(Path(ann_file).read_text(encoding="utf-8"))
    for ann in coco["annotations"]:  # COCO files of other tools may leave these out; COCOeval needs them
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))
    category = face_category(coco)["id"]
    results = [{"image_id": int(image_id), "category_id": category, "score": float(score),
                "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]}
               for image_id, image_boxes, image_scores in zip(image_ids, boxes, scores)
               for (x1, y1, x2, y2), score in zip(image_boxes, image_scores)]
    if not results:
        return {"box_ap": 0.0, "box_ap50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        truth = COCO()
        truth.dataset = coco
        truth.createIndex()
        evaluation = COCOeval(truth, truth.loadRes(results), "bbox")
        evaluation.params.imgIds = [int(i) for i in image_ids]
        evaluation.params.catIds = [category]
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = [None if value < 0 else float(value) for value in evaluation.stats]  # -1: no face of that size
    by_size = {f"box_ap_{name}": stats[3 + i] for i, name in enumerate(SIZE_RANGES)}
    by_size.update({f"box_recall_{name}": stats[9 + i] for i, name in enumerate(SIZE_RANGES)})
    return {"box_ap": stats[0] or 0.0, "box_ap50": stats[1] or 0.0, **by_size}
