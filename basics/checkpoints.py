"""Checkpoint files: what they hold, how they are written and how they are read.

A landmark checkpoint (`kind` "landmarks", written by train_simple.py) is a dict:
- `format` (CHECKPOINT_FORMAT) and `kind`;
- `model_config`: LandmarkModel's constructor arguments; `model`: the inference weights (the EMA);
- `crop`: {"input_size", "box_padding", "face_padding"}, how face crops are cut for this model and how
  its training boxes sit around their landmarks (geometry.CropGeometry; no face_padding before refining existed);
- `keypoint_meta`: keypoint names, flip_index, iod_pair, regions;
- `epoch`, `best_nme`, `metrics` (the last validation) and `args` (the training arguments);
- for resuming: `train_model`, `optimizer`, `scheduler`, `scaler`, `next_batch`, `torch_rng`, `cuda_rng`.
A face-detector checkpoint (`kind` "face detector", written by tools/train_detector.py) holds
`detector_config` (detector.create_detector's arguments) and `model` (the EMA) instead, the
same run entries and, in last.pth, the same training state (no `train_model` in runs made before
the detector had an EMA: their one `model` is both, and resumed they keep an EMA from there).
Files of format 1 (before `format` existed: input size in model_config, box padding only in the
arguments, the codec's parameters at the top of the state dict) are upgraded when read.
"""
from __future__ import annotations

from pathlib import Path

import torch

from basics.backbone_weights import with_recorded_input
from basics.errors import CheckpointError, TrainingStopped
from basics.outputs import write_atomically

CHECKPOINT_FORMAT = 2
LANDMARKS, DETECTOR = "landmarks", "face detector"
# what last.pth holds beyond best.pth, by kind: a resume needs every one
TRAINING_STATE_KEYS = {LANDMARKS: ("train_model", "optimizer", "scheduler", "scaler", "epoch", "best_nme", "args"),
                       DETECTOR: ("optimizer", "scheduler", "scaler", "epoch", "best_ap", "args")}
REMOVED_LOSSES = ("star", "star-shape")  # coordinate losses that lost (docs/RESULTS.md) and were removed
WRITERS = {LANDMARKS: "train_simple.py", DETECTOR: "tools/train_detector.py"}
CONFIG_KEYS = {LANDMARKS: "model_config", DETECTOR: "detector_config"}


def save_checkpoint(state: dict, path: Path) -> None:
    """torch.save to a temporary file, then an atomic rename: never a half-written checkpoint."""
    try:
        write_atomically(path, lambda tmp: torch.save(state, tmp))
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
        raise TrainingStopped(f"{path}: cannot write the checkpoint ({err}); the previous one is intact") from None


def upgrade_format_1(checkpoint: dict) -> dict:
    """A landmark checkpoint of format 1 in today's layout."""
    config = dict(checkpoint["model_config"])
    args = checkpoint.get("args") or {}
    crop = {"input_size": config.pop("input_size"), "box_padding": args.get("box_padding", 1.25)}
    config.setdefault("sigma", args.get("sigma", 2.0))
    renamed = {"log_beta": "codec.log_beta", "mirror_offset": "codec.mirror_offset"}
    upgraded = {**checkpoint, "format": CHECKPOINT_FORMAT, "kind": LANDMARKS, "model_config": config, "crop": crop}
    for key in ("model", "train_model"):
        if key in checkpoint:
            upgraded[key] = {renamed.get(name, name): value for name, value in checkpoint[key].items()}
    return upgraded


def todays_model_config(checkpoint: dict, path: str | Path) -> dict:
    """A landmark checkpoint with today's model config: without the settings of removed features
    (the L1 coordinate loss, the only one left, was the default; one trained with a removed loss is
    refused), with the timm host and input normalisation it was trained with recorded."""
    config = dict(checkpoint["model_config"])
    loss = config.pop("coord_loss", "l1")
    config.pop("spread_weight", None)
    if loss in REMOVED_LOSSES:
        raise CheckpointError(f"{path}: trained with --coord-loss {loss}, which was removed (it did not beat the L1 "
                              "loss: docs/RESULTS.md); retrain it with today's code")
    return {**checkpoint, "model_config": with_recorded_input(config)}


def read_checkpoint(path: str | Path, kind: str, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict:
    """The checkpoint at `path` in today's layout, or CheckpointError naming the file and what
    it is instead (missing, not a checkpoint, one of another kind or a newer format). With
    `mmap`, tensors stay on disk until used: cheap when only the settings are needed."""
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except IsADirectoryError:
        raise CheckpointError(f"{path}: a folder, not a checkpoint file") from None
    except Exception as err:  # torch.load raises many types for files that are not checkpoints
        raise CheckpointError(f"{path}: not a checkpoint written by {WRITERS[kind]} (it cannot be read as one: "
                              f"{type(err).__name__})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or not CONFIG_KEYS.values() & checkpoint.keys():
        raise CheckpointError(f"{path}: not a checkpoint written by {WRITERS[kind]} (no model or model config)")
    if "format" not in checkpoint:
        checkpoint = upgrade_format_1(checkpoint)
    if checkpoint["format"] > CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {checkpoint['format']} is newer than this code "
                              f"reads ({CHECKPOINT_FORMAT}); update the code")
    if checkpoint["kind"] != kind:
        raise CheckpointError(f"{path}: a {checkpoint['kind']} checkpoint, where a {kind} checkpoint "
                              f"(from {WRITERS[kind]}) is needed")
    return todays_model_config(checkpoint, path) if kind == LANDMARKS else checkpoint
