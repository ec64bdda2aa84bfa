"""Train the face detector on the face boxes of the landmark COCO files (one class: face).

    python tools/train_detector.py --ann-root data/dogflw/annotations            # DogFLW's boxes
    python tools/train_detector.py --ann-root data/faces68_scenes/annotations --no-pretrained \\
        --epochs 12 --work-dir work_dirs/detector
    python tools/train_detector.py --resume work_dirs/detector/last.pth

The run folder gets last.pth and best.pth (highest box AP@[.5:.95] on the validation file),
each holding the detector config and weights that tools/predict.py --detector and
evaluate.py --detector need, and metrics.jsonl with the loss, AP@0.5 and AP@[.5:.95] (COCO's
definition, by pycocotools) of every epoch. It shares the landmark trainer's run utilities:
seeding, device choice, annotation preparation, the epoch sampler, the warm-up + cosine
schedule, atomic checkpoints, Ctrl-C to last.pth and --resume.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from tqdm import tqdm  # noqa: E402

from checkpoints import CHECKPOINT_FORMAT, DETECTOR, read_checkpoint, save_checkpoint  # noqa: E402
from dataset import EpochSampler  # noqa: E402
from detector import (DETECTORS, FaceBoxes, box_average_precision, collate_images, create_detector,  # noqa: E402
                      detections)
from errors import (CheckpointError, CommandLineParser, DataError, Interrupted, TrainingStopped,  # noqa: E402
                    UsageError, multiple_of_32, non_negative_float, non_negative_int, positive_float, positive_int,
                    reports_errors)
from run_utils import (MetricsLog, StopRequest, check_writable, choose_work_dir, ignore_ctrl_c,  # noqa: E402
                       pick_device, resumed_settings, seed_everything)
from train_simple import DEFAULT_ANN_ROOT, RunHalted, autocast_dtype, prepare_annotations, warmup_cosine  # noqa: E402

RESUME_MAY_CHANGE = ("resume", "epochs", "work_dir", "data_root", "ann_root", "device", "num_workers")
MAX_BAD_STEPS = 20  # non-finite steps in a row before the run stops
TRAINING_STATE_KEYS = ("optimizer", "scheduler", "scaler", "epoch", "args")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = CommandLineParser(description=__doc__)
    parser.add_argument("--data-root", help="dataset folder (default: the one the annotations record)")
    parser.add_argument("--ann-root", default=DEFAULT_ANN_ROOT, help="folder with train.json and test.json "
                        "(or val.json), as for train_simple.py; their annotation boxes are the faces")
    parser.add_argument("--model", default=DETECTORS[0], choices=DETECTORS, help="detector architecture")
    parser.add_argument("--min-size", type=multiple_of_32, default=320, help="short image side the detector sees")
    parser.add_argument("--max-size", type=multiple_of_32, default=416, help="longest image side it sees")
    parser.add_argument("--no-pretrained", action="store_true", help="start the backbone from random weights "
                        "instead of torchvision's ImageNet weights")
    parser.add_argument("--epochs", type=positive_int, default=24, help="epochs of the whole run")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per step")
    parser.add_argument("--lr", type=positive_float, default=2e-3, help="peak AdamW learning rate")
    parser.add_argument("--weight-decay", type=non_negative_float, default=1e-4, help="AdamW weight decay")
    parser.add_argument("--num-workers", type=non_negative_int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader worker processes (default: %(default)s: the cores, at most 8)")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--work-dir", help="run folder (default: work_dirs/detector_<model>, or -2, -3, ...)")
    parser.add_argument("--resume", help="last.pth to continue from, with its own settings")
    parser.add_argument("--seed", type=int, default=0, help="fixes initialisation, shuffle and augmentation")
    args = parser.parse_args(argv)
    if args.resume:
        saved = read_checkpoint(args.resume, DETECTOR, mmap=True).get("args") or {}
        args = resumed_settings(parser, argv, args, saved, RESUME_MAY_CHANGE)
    return args


@dataclass
class Run:
    """The detector, what updates it and where the run stands."""
    args: argparse.Namespace
    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    best_ap: float = -math.inf
    bad_steps: int = 0  # non-finite steps in a row
    metrics: dict | None = None

    @property
    def work_dir(self) -> Path:
        return Path(self.args.work_dir)

    def inference_state(self, epoch: int) -> dict:
        """best.pth: what tools/predict.py and evaluate.py need to rebuild and trust the detector."""
        config = {"name": self.args.model, "pretrained": not self.args.no_pretrained, "min_size": self.args.min_size,
                  "max_size": self.args.max_size}
        return {"format": CHECKPOINT_FORMAT, "kind": DETECTOR, "detector_config": config,
                "model": self.model.state_dict(), "epoch": epoch, "best_ap": self.best_ap, "metrics": self.metrics,
                "args": vars(self.args)}

    def training_state(self, epoch: int, next_batch: int = 0) -> dict:
        """last.pth: the inference state and what a resume needs."""
        return {**self.inference_state(epoch), "next_batch": next_batch, "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


@dataclass
class Data:
    """The validation images, and the sampler and loaders of both sets."""
    val_set: FaceBoxes
    sampler: EpochSampler
    train_loader: DataLoader
    val_loader: DataLoader


def build_loaders(args: argparse.Namespace, device: torch.device) -> Data:
    """The face boxes of train.json (augmented) and of the validation file, with their loaders."""
    train_ann, val_ann = prepare_annotations(Path(args.ann_root), args.data_root)
    train_set = FaceBoxes(train_ann, args.data_root, augment=True, seed=args.seed)
    val_set = FaceBoxes(val_ann, args.data_root)
    if len(train_set) < args.batch_size:
        raise DataError(f"{train_ann}: {len(train_set)} images, fewer than one batch of {args.batch_size}")
    sampler = EpochSampler(len(train_set), args.batch_size, args.seed)
    workers = dict(num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
                   worker_init_fn=ignore_ctrl_c, pin_memory=device.type == "cuda", collate_fn=collate_images)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True, **workers)
    val_loader = DataLoader(val_set, batch_size=args.batch_size, **workers)
    return Data(val_set, sampler, train_loader, val_loader)


def set_up(args: argparse.Namespace) -> tuple[Run, Data, tuple[int, int]]:
    """Device, run folder, data, detector, AdamW with warm-up + cosine, and a resumed run's state."""
    seed_everything(args.seed)
    device = pick_device(args.device)
    checkpoint = read_checkpoint(args.resume, DETECTOR) if args.resume else None
    if checkpoint is not None and not all(key in checkpoint for key in TRAINING_STATE_KEYS):
        raise CheckpointError(f"{args.resume}: not a training checkpoint of tools/train_detector.py; resume from "
                              "a run's last.pth")
    args.work_dir = choose_work_dir(args.work_dir, f"work_dirs/detector_{args.model}", bool(args.resume))
    data = build_loaders(args, device)
    model = create_detector(args.model, not args.no_pretrained, args.min_size, args.max_size,
                            download=checkpoint is None).to(device)
    check_writable(Path(args.work_dir), 8 * sum(p.numel() * p.element_size() for p in model.parameters()))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                  weight_decay=args.weight_decay)
    steps = data.sampler.batches_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, args.epochs * steps))
    amp_dtype = autocast_dtype(device)
    run = Run(args, device, model, optimizer, scheduler, torch.amp.GradScaler("cuda", enabled=amp_dtype ==
                                                                              torch.float16), amp_dtype)
    start = (1, 0) if checkpoint is None else restore(run, checkpoint)
    print(f"{len(data.train_loader.dataset)} train / {len(data.val_set)} val images; {args.model} on {device}; "
          f"run folder {run.work_dir}")
    return run, data, start


def restore(run: Run, checkpoint: dict) -> tuple[int, int]:
    """Put a resumed run where its checkpoint left it; returns the (epoch, batch) to continue from."""
    if run.args.epochs <= checkpoint["epoch"]:
        raise UsageError(f"--epochs {run.args.epochs}: the run has finished {checkpoint['epoch']} epochs already; "
                         "give a larger --epochs to train longer")
    run.model.load_state_dict(checkpoint["model"])
    for name in ("optimizer", "scheduler", "scaler"):
        getattr(run, name).load_state_dict(checkpoint[name])
    torch.set_rng_state(checkpoint["torch_rng"])
    if checkpoint.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
    run.best_ap, run.metrics = checkpoint["best_ap"], checkpoint["metrics"]
    MetricsLog(run.work_dir / "metrics.jsonl").trim(checkpoint["epoch"])
    print(f"resumed from {run.args.resume} at epoch {checkpoint['epoch']}")
    return checkpoint["epoch"] + 1, checkpoint["next_batch"]


def train_step(run: Run, batch: dict) -> float:
    """One AdamW step on a batch of images and their boxes. A non-finite loss or gradient changes
    nothing, counts in `run.bad_steps` and returns NaN."""
    images = [image.to(run.device, non_blocking=True) for image in batch["images"]]
    targets = [{k: v.to(run.device, non_blocking=True) for k, v in t.items()} for t in batch["targets"]]
    with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
        loss = sum(run.model(images, targets).values())
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), 10.0)  # early FCOS losses spike
    loss_value, norm_value = torch.stack([loss.detach(), norm]).tolist()
    # an fp16 scaler skips its own overflowing steps
    if not math.isfinite(loss_value) or not (run.scaler.is_enabled() or math.isfinite(norm_value)):
        run.bad_steps += 1
        return math.nan
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.bad_steps = 0
    return loss_value


def train_epoch(run: Run, data: Data, epoch: int, start_batch: int, stop: StopRequest) -> tuple[float, int]:
    """One epoch (from `start_batch` when resuming inside it): the mean loss and the number of
    unreadable images; raises RunHalted on Ctrl-C or SIGTERM."""
    run.model.train()
    data.sampler.set_epoch(epoch, start_batch)
    total, steps, unreadable = 0.0, 0, 0
    bar = tqdm(data.train_loader, desc=f"epoch {epoch}/{run.args.epochs}", mininterval=1.0, dynamic_ncols=True)
    for i, batch in enumerate(bar, start=start_batch):
        unreadable += len(batch["unreadable"])
        loss = train_step(run, batch) if batch["images"] else math.nan
        if math.isfinite(loss):
            total, steps = total + loss, steps + 1
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{run.scheduler.get_last_lr()[0]:.2e}", refresh=False)
        elif run.bad_steps >= MAX_BAD_STEPS:
            raise RunHalted(TrainingStopped(f"{run.bad_steps} steps in a row with a non-finite loss or gradient; "
                                            f"stopped ({run.work_dir / 'last.pth'} holds the last good weights; "
                                            "try a lower --lr)"), epoch - 1, i)
        run.scheduler.step()
        if stop.signal_name is not None:
            last = run.work_dir / "last.pth"
            raise RunHalted(Interrupted(f"{stop.signal_name}: saved {last} at epoch {epoch}, batch {i + 1}; "
                                        f"continue with --resume {last}"), epoch - 1, i + 1)
    return (total / steps if steps else math.nan), unreadable


@torch.no_grad()
def validate(run: Run, data: Data) -> dict:
    """Box AP@0.5 and AP@[.5:.95] on the validation file (every detection the model keeps)."""
    run.model.eval()
    ids, boxes, scores = [], [], []
    for batch in data.val_loader:
        found = detections(run.model([image.to(run.device) for image in batch["images"]]))
        for index, (image_boxes, image_scores) in zip(batch["indices"], found):
            ids.append(data.val_set.images[index]["id"])
            boxes.append(image_boxes)
            scores.append(image_scores)
    return box_average_precision(data.val_set.ann_file, ids, boxes, scores)


def finish_epoch(run: Run, data: Data, epoch: int, loss: float, unreadable: int, started: float) -> None:
    """Validate, then write the epoch's metrics.jsonl line, last.pth and, at a new best AP, best.pth."""
    run.metrics = validate(run, data)
    improved = run.metrics["box_ap"] > run.best_ap
    run.best_ap = max(run.best_ap, run.metrics["box_ap"])
    record = {"epoch": epoch, "train_loss": loss, "lr": run.scheduler.get_last_lr()[0], **run.metrics,
              "train_unreadable": unreadable, "epoch_time_s": time.time() - started}
    MetricsLog(run.work_dir / "metrics.jsonl").append(record)
    save_checkpoint(run.training_state(epoch), run.work_dir / "last.pth")
    if improved:
        save_checkpoint(run.inference_state(epoch), run.work_dir / "best.pth")
    print(f"epoch {epoch}: loss {loss:.4f}, box AP@0.5 {run.metrics['box_ap50']:.3f}, AP@[.5:.95] "
          f"{run.metrics['box_ap']:.3f} (best {run.best_ap:.3f}), {record['epoch_time_s']:.0f} s")


def train(args: argparse.Namespace) -> float:
    """The whole run; returns the best box AP@[.5:.95]."""
    run, data, (start_epoch, start_batch) = set_up(args)
    try:
        with StopRequest() as stop:
            for epoch in range(start_epoch, args.epochs + 1):
                started = time.time()
                loss, unreadable = train_epoch(run, data, epoch, start_batch, stop)
                start_batch = 0
                finish_epoch(run, data, epoch, loss, unreadable, started)
    except RunHalted as halt:
        save_checkpoint(run.training_state(halt.epoch, halt.next_batch), run.work_dir / "last.pth")
        raise halt.error from None
    return run.best_ap


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    best = train(args)
    print(f"best box AP@[.5:.95] {best:.3f}; checkpoints in {args.work_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
