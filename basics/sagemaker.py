"""SageMaker's training-job environment as the trainers' defaults, and the model it uploads.

Used only where `SM_MODEL_DIR` is set (a SageMaker training container); elsewhere nothing here
changes anything. In a job: the data come from the channel `SM_CHANNEL_TRAINING` (or the one
--channel names), in DogFLW's own layout (converted once into the run folder's annotations/,
reused on a restart) or as COCO files (train.json, ...) with their images; the run folder is
/opt/ml/checkpoints, which SageMaker syncs with the job's checkpoint S3 URI; --resume auto is on,
so a restarted job (managed spot) continues its run; and after each new best and at the end,
best.pth with the metrics, curves and test score beside it are copied into `SM_MODEL_DIR`, the
folder SageMaker uploads when the job ends.
"""
from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from basics.errors import DataError
from basics.outputs import write_atomically

CHECKPOINT_DIR = "/opt/ml/checkpoints"  # SageMaker's default local checkpoint path
MODEL_FILES = ("best.pth", "metrics.jsonl", "curves.png", "test_metrics.json")


def in_training_job() -> bool:
    return "SM_MODEL_DIR" in os.environ


def channel_folder(channel: str) -> Path:
    """The local folder of a job's input channel; DataError naming the variable when it is not set."""
    variable = f"SM_CHANNEL_{channel.upper()}"
    if variable not in os.environ:
        raise DataError(f"--channel {channel}: this SageMaker job has no such input channel ({variable} is not set; "
                        "name the channel of the job's inputs, e.g. training)")
    return Path(os.environ[variable])


def apply_job_defaults(args: argparse.Namespace, given: set[str]) -> None:
    """In a training job, the settings the command line leaves out: --data-root and --ann-root from
    the channel, --work-dir CHECKPOINT_DIR, --resume auto. Flags given are kept."""
    if not in_training_job():
        return
    channel = channel_folder(args.channel)
    if "work_dir" not in given:
        args.work_dir = CHECKPOINT_DIR
    if "resume" not in given:
        args.resume = "auto"
    if "ann_root" not in given:
        coco_files = (channel / "train.json").exists()
        args.ann_root = str(channel if coco_files else Path(args.work_dir) / "annotations")
    if "data_root" not in given:
        args.data_root = str(channel)


def publish_model(work_dir: str | Path) -> None:
    """In a training job, copy best.pth and the files a user needs beside it into SM_MODEL_DIR, each
    written aside and moved into place."""
    if not in_training_job():
        return
    model_dir = Path(os.environ["SM_MODEL_DIR"])
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        source = Path(work_dir) / name
        if source.exists():
            write_atomically(model_dir / name, lambda tmp: shutil.copyfile(source, tmp))
