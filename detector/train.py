"""Train the face detector on the face boxes of the landmark COCO files (one class: face).

    python tools/train_detector.py --ann-root data/dogflw/annotations            # DogFLW's boxes
    python tools/train_detector.py --ann-root data/faces68_scenes/annotations --no-pretrained \\
        --epochs 12 --work-dir work_dirs/detector
    python tools/train_detector.py --ann-root MY_FRAMES --init-from work_dirs/detector/best.pth --epochs 6
    python tools/train_detector.py --resume work_dirs/detector/last.pth

The run folder gets last.pth and best.pth (highest box AP@[.5:.95] on the validation file),
each holding the detector config and the weights (the EMA of the trained ones) that
tools/predict.py --detector and evaluate.py --detector need, and metrics.jsonl with the loss,
AP@0.5, AP@[.5:.95] and AP and recall by face size (COCO's definitions, by pycocotools) of every
epoch. Training images are composed into scenes with several faces, faces of every size and no
face at all (detector.scenes.SceneAugmentation). The run itself (flags, folder, resume, schedule,
EMA, the epoch loop and its stop protocol) is training.py's, shared with train_simple.py.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import ClassVar

import torch
from torch.utils.data import DataLoader

from basics.annotation_files import DEFAULT_ANN_ROOT, prepare_annotations
from basics.checkpoints import CHECKPOINT_FORMAT, DETECTOR, read_checkpoint
from basics.cli import CommandLineParser, bounded_int, multiple_of_32, number_type
from basics.errors import CheckpointError, DataError, reports_errors
from basics.outputs import check_writable
from detector.model import DETECTORS, box_average_precision, create_detector, detections
from detector.scenes import FaceBoxes, SceneAugmentation, collate_images
from training import (EpochResult, RESUME_MAY_CHANGE, Run, StepResult, add_ema_flag, add_run_flags,
                      adopt_architecture, begin_run, checkpoint_bytes, evaluation_loader, finish_epoch,
                      loader_settings, optimise, parse_run, run_epochs, training_loader)

MAX_GRAD_NORM = 10.0  # early FCOS losses spike
SCENE_HELP = {"mosaic_prob": "2 to 4 training images tiled into one canvas",
              "zoom_prob": "otherwise, the image scaled and moved so that a face spans a random share of it",
              "negative_prob": "a crop of an image's background alone, no face",
              "face_small": "smallest face side / canvas short side of a zoom",
              "face_large": "largest face side / canvas short side of a zoom",
              "flip_prob": "horizontal mirror", "canvas": "long side of a composed image in pixels"}
# what --init-from's checkpoint decides: flag destination -> its detector config's key
ARCHITECTURE = {"model": "name", "min_size": "min_size", "max_size": "max_size"}


def build_parser() -> CommandLineParser:
    parser = CommandLineParser(description=__doc__, on_off_values=True)
    data = parser.add_argument_group("data")
    data.add_argument("--data-root", help="dataset folder (default: the one the annotations record)")
    data.add_argument("--ann-root", default=str(DEFAULT_ANN_ROOT), help="folder with train.json and val.json "
                      "and/or test.json, as for train_simple.py; their annotation boxes are the faces")
    data.add_argument("--val-fraction", type=number_type(float, 0, 0.5), default=0.1, help="as train_simple.py's: "
                      "with train.json and test.json only, the share of train.json held out to choose best.pth on")
    scene = parser.add_argument_group("scene augmentation (0 switches a piece off)")
    for spec in fields(SceneAugmentation):
        kind = (bounded_int(64, 4096) if spec.name == "canvas" else
                number_type(float, 0.01, 1) if spec.name.startswith("face_") else number_type(float, 0, 1))
        scene.add_argument(f"--{spec.name.replace('_', '-')}", type=kind, default=spec.default,
                           help=SCENE_HELP[spec.name])
    net = parser.add_argument_group("model")
    net.add_argument("--model", default=DETECTORS[0], choices=DETECTORS, help="detector architecture")
    net.add_argument("--min-size", type=multiple_of_32, default=320, help="short image side the detector sees")
    net.add_argument("--max-size", type=multiple_of_32, default=416, help="longest image side it sees")
    net.add_argument("--no-pretrained", action="store_true", help="start the backbone from random weights "
                     "instead of ImageNet's (fcos_lite0_fpn's come with pip; torchvision downloads the others')")
    net.add_argument("--init-from", help="a detector checkpoint (best.pth) to start from, with its architecture; "
                     "a new optimiser and schedule")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=bounded_int(1, 100_000), default=24, help="epochs of the whole run")
    opt.add_argument("--batch-size", type=bounded_int(1, 4096), default=8, help="images per step")
    opt.add_argument("--lr", type=number_type(float, 0, 10, low_open=True), default=2e-3, help="peak AdamW learning "
                     "rate")
    opt.add_argument("--weight-decay", type=number_type(float, 0, 10), default=1e-4, help="AdamW weight decay")
    add_ema_flag(opt)
    add_run_flags(parser.add_argument_group("run"), "work_dirs/detector_<model>", min(8, os.cpu_count() or 1))
    return parser


def parse_run_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict | None]:
    """The run's settings and, with --resume, its checkpoint (training.parse_run); with
    --init-from, the architecture is the checkpoint's."""
    parser = build_parser()
    args, checkpoint = parse_run(parser, argv, DETECTOR, RESUME_MAY_CHANGE)
    config = adopt_architecture(parser, argv, args, DETECTOR, ARCHITECTURE)
    if config is not None:
        args.no_pretrained = not config["pretrained"]  # the layout of its normalisation layers (frozen or not)
    if args.min_size > args.max_size:
        parser.error(f"--min-size {args.min_size} is larger than --max-size {args.max_size}")
    if args.face_small > args.face_large:
        parser.error(f"--face-small {args.face_small} is larger than --face-large {args.face_large}")
    return args, checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_run_args(argv)[0]


@dataclass
class DetectorRun(Run):
    """A detector run: best.pth holds what prediction needs to rebuild the detector."""
    BEST_KEY: ClassVar[str] = "best_ap"
    LOWER_IS_BETTER: ClassVar[bool] = False

    def inference_state(self, epoch: int) -> dict:
        """best.pth: what tools/predict.py and evaluate.py need to rebuild and trust the detector."""
        config = {"name": self.args.model, "pretrained": not self.args.no_pretrained,
                  "min_size": self.args.min_size, "max_size": self.args.max_size}
        return {"format": CHECKPOINT_FORMAT, "kind": DETECTOR, "detector_config": config,
                "model": self.eval_model.state_dict(), "epoch": epoch, "best_ap": self.best, "metrics": self.metrics,
                "args": vars(self.args)}


@dataclass
class DetectorData:
    """The validation file's face boxes, and the loaders of the training scenes and of the validation images."""
    val_set: FaceBoxes
    train_loader: DataLoader
    val_loader: DataLoader


def build_loaders(args: argparse.Namespace, device: torch.device) -> DetectorData:
    """The face boxes of the training file (composed into scenes) and of the validation file."""
    files = prepare_annotations(args.ann_root, args.data_root, args.val_fraction)
    scenes = SceneAugmentation(**{spec.name: getattr(args, spec.name) for spec in fields(SceneAugmentation)})
    train_set = FaceBoxes(files.train, args.data_root, scenes, seed=args.seed)
    val_set = FaceBoxes(files.val, args.data_root)
    if len(train_set) < args.batch_size:
        raise DataError(f"{files.train}: {len(train_set)} images, fewer than one batch of {args.batch_size}")
    settings = loader_settings(args, device, collate_images)
    return DetectorData(val_set, training_loader(train_set, args, settings),
                        evaluation_loader(val_set, args.batch_size, settings))


def create_model(args: argparse.Namespace, checkpoint: dict | None) -> torch.nn.Module:
    """The detector: ImageNet weights for a new run unless --no-pretrained, --init-from's weights,
    or (resuming) nothing to download: the checkpoint supplies every weight."""
    model = create_detector(args.model, not args.no_pretrained, args.min_size, args.max_size,
                            download=checkpoint is None and not args.init_from)
    if args.init_from and checkpoint is None:
        try:
            model.load_state_dict(read_checkpoint(args.init_from, DETECTOR)["model"])
        except RuntimeError as err:
            raise CheckpointError(f"--init-from {args.init_from}: its weights do not fit {args.model} "
                                  f"({str(err)[:120]})") from None
        print(f"started from {args.init_from}")
    return model


def set_up(args: argparse.Namespace, checkpoint: dict | None) -> tuple[DetectorRun, DetectorData, tuple[int, int]]:
    """training.begin_run (checkpoint, seed, device, run folder), data, detector, AdamW with
    warm-up + cosine, and a resumed run's state."""
    checkpoint, _, _, device = begin_run(args, checkpoint, DETECTOR, f"work_dirs/detector_{args.model}")
    data = build_loaders(args, device)
    model = create_model(args, checkpoint).to(device)
    check_writable(Path(args.work_dir), checkpoint_bytes(model))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                  weight_decay=args.weight_decay)
    steps = data.train_loader.sampler.batches_per_epoch
    run = DetectorRun.create(args, device, model, optimizer, steps, args.epochs * steps)
    start = run.start(checkpoint)
    run.log(f"{len(data.train_loader.dataset)} train / {len(data.val_set)} val images; {args.model} on {device}; "
            f"run folder {run.work_dir}")
    return run, data, start


def train_step(run: DetectorRun, batch: dict, stop_requested: bool = False) -> StepResult | None:
    """One AdamW step on a batch of images and their boxes (training.optimise, gradient clipped),
    then the EMA's; None for a batch of which no image could be read."""
    if not batch["images"]:
        return None
    images = [image.to(run.device, non_blocking=True) for image in batch["images"]]
    targets = [{k: v.to(run.device, non_blocking=True) for k, v in t.items()} for t in batch["targets"]]
    with run.autocast():
        loss = sum(run.model(images, targets).values())
    result = optimise(run, loss, {}, stop_requested, MAX_GRAD_NORM)
    if result.finite:
        run.update_average()
    return result


@torch.no_grad()
def validate(run: DetectorRun, data: DetectorData, epoch: int, trained: EpochResult, started: float) -> None:
    """Box AP on the validation file (every detection the EMA model keeps), then training.finish_epoch."""
    model = run.eval_model.eval()
    ids, boxes, scores, unreadable = [], [], [], []
    for batch in data.val_loader:
        unreadable += batch["unreadable"]
        found = detections(model([image.to(run.device) for image in batch["images"]])) if batch["images"] else []
        for index, (image_boxes, image_scores) in zip(batch["indices"], found):
            ids.append(data.val_set.images[index]["id"])
            boxes.append(image_boxes)
            scores.append(image_scores)
    run.metrics = box_average_precision(data.val_set.ann_file, ids, boxes, scores)
    finish_epoch(run, epoch, trained, run.metrics["box_ap"], {**run.metrics, "val_unreadable": len(unreadable)},
                 f"box AP@0.5 {run.metrics['box_ap50']:.3f}, AP@[.5:.95] {run.metrics['box_ap']:.3f}", started)
    for path in unreadable:
        run.log(f"warning: {path}: cannot read image; skipped")


def train(args: argparse.Namespace, checkpoint: dict | None = None) -> float:
    """The whole run; returns the best box AP@[.5:.95]."""
    run, data, start = set_up(args, checkpoint)

    run_epochs(run, data, start, train_step, validate)
    return run.best


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args, checkpoint = parse_run_args(argv)
    best = train(args, checkpoint)
    print(f"best box AP@[.5:.95] {best:.3f}; checkpoints in {args.work_dir}")
    return 0

