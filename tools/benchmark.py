"""Throughput of training, evaluation and the data pipeline, and peak memory, for one setting.

    python tools/benchmark.py --backbone hrnet_w32 --input-size 256 --batch-size 64          # synthetic crops
    python tools/benchmark.py --backbone resnet18 --input-size 128 --batch-size 32 --device cpu \\
        --ann data/faces68/annotations/train.json --num-workers 2 --json                   # real images too
    python tools/benchmark.py --backbone resnet18 --input-size 128 --heatmap-stride 2   # + train_simple.py flags

Training images/s is train_simple.train_step itself (autocast forward, loss, backward, gradient
norm, the one host sync, AdamW step, EMA update, BatchNorm snapshot) on one batch already on the
device; evaluation images/s is the forward pass and soft-argmax decoding without gradients; with
--ann, the data pipeline (crop from the crop cache or decode, augment, collate in --num-workers
workers) is timed alone. Each figure is the median of --repeats timings of --steps batches, after
--warmup batches.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

import _repo  # the repository on sys.path: tools/_repo.py
import train_simple
from basics.cli import CommandLineParser, bounded_int, multiple_of_32
from basics.errors import DataError, reports_errors
from basics.run_utils import pick_device
from dataset import Augmentation, LandmarkDataset, collate_readable
from model import LandmarkModel


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(run_batch, device: torch.device, batch_size: int, steps: int, warmup: int, repeats: int) -> float:
    """Median images/s of `repeats` timings of `steps` calls of run_batch, after `warmup` calls."""
    for _ in range(warmup):
        run_batch()
    synchronize(device)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            run_batch()
        synchronize(device)
        rates.append(steps * batch_size / (time.perf_counter() - start))
    return statistics.median(rates)


def training_rate(run: train_simple.LandmarkRun, batch: dict, steps: int, warmup: int, repeats: int) -> float:
    """Images/s of train_simple's training step on one batch (moved to the device by the step, as
    in training; pinned on CUDA)."""
    run.model.train()
    return timed(lambda: train_simple.train_step(run, batch), run.device, len(batch["image"]), steps, warmup, repeats)


@torch.no_grad()
def evaluation_rate(model: LandmarkModel, images: torch.Tensor, steps: int, warmup: int, repeats: int) -> float:
    """Images/s of the forward pass and decoding, as in evaluate.py."""
    model.eval()
    return timed(lambda: model.predict(images), images.device, len(images), steps, warmup, repeats)


def pipeline_rate(loader: DataLoader, steps: int, warmup: int, repeats: int) -> float:
    """Images/s the data loader delivers alone (workers started before the timing)."""
    batches = iter(loader)
    return timed(lambda: next(batches), torch.device("cpu"), loader.batch_size, steps, warmup, repeats)


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated by tensors on CUDA; the process's peak resident memory elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if platform.system() == "Darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """This tool's flags, and the rest, which are train_simple.py's model, loss and optimiser flags
    (e.g. --heatmap-stride 2, --sigma 3) for the step being timed."""
    return build_parser().parse_known_args(argv)


def build_parser() -> CommandLineParser:
    parser = CommandLineParser(description=__doc__)
    parser.add_argument("--backbone", default="hrnet_w32", help="timm backbone, as train_simple.py --backbone")
    parser.add_argument("--input-size", type=multiple_of_32, default=256, help="crop side in pixels")
    parser.add_argument("--batch-size", type=bounded_int(1, 65_536), default=64, help="crops per step")
    parser.add_argument("--num-keypoints", type=bounded_int(1, 1000), default=46, help="landmarks of the synthetic data")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cuda, mps or cpu")
    parser.add_argument("--ann", help="COCO keypoints file: time its data pipeline and train on its crops")
    parser.add_argument("--data-root", help="folder the annotation's file names are relative to")
    parser.add_argument("--num-workers", type=bounded_int(0, 256), default=min(8, os.cpu_count() or 1),
                        help="DataLoader worker processes of the data pipeline timing")
    parser.add_argument("--no-crop-cache", action="store_true", help="time the pipeline decoding every image "
                        "instead of reading train_simple.py's crop cache (built beside --ann if missing)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the training forward, as "
                        "train_simple.py --compile")
    parser.add_argument("--steps", type=bounded_int(1, 10**6), default=20, help="batches per timing")
    parser.add_argument("--warmup", type=bounded_int(0, 10**6), default=3, help="batches before the timings")
    parser.add_argument("--repeats", type=bounded_int(1, 1000), default=3, help="timings per figure (the median is reported)")
    parser.add_argument("--json", action="store_true", help="print one JSON line instead of text")
    return parser


def real_batch(args: argparse.Namespace) -> tuple[dict, float]:
    """A training batch of --ann's augmented crops and the data pipeline's images/s."""
    dataset = LandmarkDataset(args.ann, args.data_root, args.input_size, augmentation=Augmentation())
    if not args.no_crop_cache:
        dataset.use_cache(Path(args.ann).parent / "crop_cache", num_workers=args.num_workers)
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                        num_workers=args.num_workers, collate_fn=collate_readable,
                        persistent_workers=args.num_workers > 0)
    needed = args.warmup + args.steps * args.repeats
    if len(loader) < needed:
        raise DataError(f"{args.ann}: {len(loader)} batches of {args.batch_size}, the timings need {needed}")
    return next(iter(loader)), pipeline_rate(loader, args.steps, args.warmup, args.repeats)


def synthetic_batch(args: argparse.Namespace) -> dict:
    """A training batch of random crops and landmarks, half of them mirrored as flip augmentation does."""
    size = args.input_size
    return {"image": torch.randint(0, 256, (args.batch_size, 3, size, size), dtype=torch.uint8),
            "keypoints": torch.rand(args.batch_size, args.num_keypoints, 2) * (size - 1),
            "mirrored": torch.arange(args.batch_size) % 2 == 1,
            "labelled": torch.ones(args.batch_size, args.num_keypoints, dtype=torch.bool)}


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args, training_flags = parse_args(argv)
    device = pick_device(args.device)
    torch.manual_seed(0)
    result = {"backbone": args.backbone, "input_size": args.input_size, "batch_size": args.batch_size,
              "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "compile": args.compile}
    if args.ann:
        batch, data_rate = real_batch(args)
        result.update(data_images_per_s=data_rate, num_workers=args.num_workers, crop_cache=not args.no_crop_cache)
    else:
        batch = synthetic_batch(args)
    num_keypoints = batch["keypoints"].shape[1]
    train_args = train_simple.parse_args(["--backbone", args.backbone, "--input-size", str(args.input_size),
                                          "--no-pretrained", *(["--compile"] if args.compile else []),
                                          *training_flags])
    model = train_simple.create_model(train_args, num_keypoints, checkpoint=None)
    run = train_simple.build_run(train_args, model, {"num_keypoints": num_keypoints}, torch.ones(num_keypoints),
                                 steps_per_epoch=1000, device=device)
    result.update(training_flags=training_flags, model_config=model.config)
    batch = {key: batch[key].to(device) for key in ("image", "keypoints", "mirrored", "labelled")}
    result["train_images_per_s"] = training_rate(run, batch, args.steps, args.warmup, args.repeats)
    images = batch["image"].float().contiguous(memory_format=run.memory_format)
    result["eval_images_per_s"] = evaluation_rate(model, images, args.steps, args.warmup, args.repeats)
    result["peak_memory_mb"] = peak_memory_mb(device)
    if args.json:
        print(json.dumps(result))
        return 0
    line = (f"{args.backbone} at {args.input_size}, batch {args.batch_size}, {device} ({result['threads']} threads): "
            f"train {result['train_images_per_s']:.1f} img/s, eval {result['eval_images_per_s']:.1f} img/s")
    if args.ann:
        line += (f", data pipeline {data_rate:.1f} img/s with {args.num_workers} workers "
                 f"({data_rate / result['train_images_per_s']:.1f}x training)")
    print(line + f", peak memory {result['peak_memory_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
