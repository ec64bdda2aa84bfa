"""Export a checkpoint to ONNX and check ONNX Runtime's output against PyTorch.

    python tools/export_onnx.py --checkpoint work_dirs/RUN/best.pth --out model.onnx

The ONNX model takes float RGB crops in 0..255, shape (N, 3, S, S) with any batch size N, and
returns `points` (N, K, 2), landmarks in crop pixels, and `confidence` (N, K). Crops are made as
in training: the face box padded by `box_padding` to a square that fills the S x S input (see
basics/geometry.py); the model's metadata holds input_size, box_padding, keypoints and flip_index.
Needs the onnx package; the check needs onnxruntime (pip install onnx onnxruntime).
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import _repo  # the repository on sys.path: tools/_repo.py
from basics.cli import CommandLineParser, bounded_int, number_type
from basics.errors import UsageError, UserFacingError, reports_errors
from basics.outputs import check_output_file, check_outputs
from model import LandmarkModel, load_landmark_model

TOLERANCE_PX = 1e-3  # largest accepted |ONNX Runtime - PyTorch| landmark difference, crop pixels


class ExportError(UserFacingError):
    """The exported model does not compute what the checkpoint does."""


class LandmarksInCrop(nn.Module):
    """The network plus its decoding: crops (N, 3, S, S) -> points (N, K, 2), confidence (N, K)."""

    def __init__(self, model: LandmarkModel):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.predict(images)


def export(wrapper: LandmarksInCrop, size: int, out: Path, metadata: dict[str, str], opset: int) -> None:
    """TorchScript-based export (torch >= 2.1) of size x size crops with a dynamic batch axis, plus metadata."""
    import onnx

    # torch >= 2.9 defaults to the torch.export-based exporter (which needs onnxscript) and warns
    # that this one is deprecated; torch < 2.5 has no `dynamo` argument
    options = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(wrapper, torch.rand(1, 3, size, size) * 255, str(out), input_names=["images"],
                          output_names=["points", "confidence"], opset_version=opset,
                          dynamic_axes={name: {0: "batch"} for name in ("images", "points", "confidence")},
                          **options)
    proto = onnx.load(str(out))
    onnx.helper.set_model_props(proto, metadata)
    onnx.save(proto, str(out))


def check_parity(wrapper: LandmarksInCrop, size: int, exported: Path, batch_size: int) -> None:
    """Refuse an export whose ONNX Runtime output differs from PyTorch's by more than TOLERANCE_PX."""
    try:
        point_diff, confidence_diff = max_difference(wrapper, size, exported, batch_size)
    except ImportError:
        raise UsageError("onnxruntime is not installed, so the export cannot be checked (and was not "
                         "written): pip install onnxruntime") from None
    print(f"ONNX Runtime vs PyTorch on a random batch of {batch_size}: max |difference| "
          f"{point_diff:.2e} px (points), {confidence_diff:.2e} (confidence)")
    if not point_diff <= TOLERANCE_PX or not confidence_diff <= TOLERANCE_PX:
        raise ExportError(f"ONNX Runtime differs from PyTorch by more than {TOLERANCE_PX:g}; nothing was "
                          "written (a previous file at --out is unchanged)")


def max_difference(wrapper: LandmarksInCrop, size: int, out: Path, batch_size: int) -> tuple[float, float]:
    """Largest |ONNX Runtime - PyTorch| of points and of confidences on random size x size crops."""
    import onnxruntime

    images = torch.rand(batch_size, 3, size, size, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        points, confidence = wrapper(images)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    onnx_points, onnx_confidence = session.run(None, {"images": images.numpy()})
    return (float(np.abs(onnx_points - points.numpy()).max()),
            float(np.abs(onnx_confidence - confidence.numpy()).max()))


def build_parser() -> CommandLineParser:
    parser = CommandLineParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="best.pth or last.pth from train_simple.py")
    parser.add_argument("--out", required=True, help="ONNX file to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--opset", type=number_type(int, 13, 23), default=17, help="ONNX opset version")
    parser.add_argument("--check-batch", type=bounded_int(1, 1024), default=3,
                        help="batch size of the parity check (the export itself uses 1)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_outputs({"--checkpoint": args.checkpoint}, {"--out": args.out}, args.overwrite)
    out = check_output_file(args.out, "--out")
    if importlib.util.find_spec("onnx") is None:
        raise UsageError("exporting needs the onnx package: pip install onnx onnxruntime")
    model, checkpoint, crop = load_landmark_model(args.checkpoint, map_location="cpu")
    meta, size, k = checkpoint["keypoint_meta"], crop.input_size, model.config["num_keypoints"]
    wrapper = LandmarksInCrop(model).eval()
    metadata = {"input_size": str(size), "box_padding": str(crop.box_padding),
                "keypoints": json.dumps(meta["keypoints"]), "flip_index": json.dumps(meta["flip_index"]),
                "input": "float32 RGB 0..255 (N, 3, S, S)", "outputs": "points (N, K, 2) in crop pixels, "
                "confidence (N, K)", "checkpoint": str(args.checkpoint)}
    candidate = out.with_name(f".{out.name}.{os.getpid()}.checking.onnx")  # moved to --out once it passes
    try:
        export(wrapper, size, candidate, metadata, args.opset)
        check_parity(wrapper, size, candidate, args.check_batch)
        os.replace(candidate, out)
    finally:
        candidate.unlink(missing_ok=True)
    print(f"wrote {out}: images (N, 3, {size}, {size}) float RGB 0..255 -> points (N, {k}, 2) in crop "
          f"pixels, confidence (N, {k}); box padding {crop.box_padding}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
