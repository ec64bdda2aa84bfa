"""Train a facial-landmark model on COCO keypoints (DogFLW by default).

    python train_simple.py                      # downloads and converts DogFLW, trains the best recipe
    python train_simple.py --data-root DIR --ann-root ANN_DIR --backbone resnet18 --input-size 128 \\
        --no-pretrained --epochs 20 --work-dir work_dirs/run
    python train_simple.py --resume work_dirs/run/last.pth --epochs 40
    python train_simple.py --ann-root MY_FRAMES --init-from work_dirs/run/best.pth --epochs 60
    torchrun --nproc_per_node=4 train_simple.py ...     # DistributedDataParallel, --batch-size per process

The run folder gets last.pth and best.pth (lowest validation NME_IOD), each holding the model
config, crop geometry, keypoint metadata and weights that evaluate.py needs (checkpoints.py),
and metrics.jsonl, a line per epoch. best.pth is chosen on the validation file: val.json, or
for DogFLW (train.json and test.json only) a held-out share of train.json (--val-fraction);
test.json is then scored once, at the end, into test_metrics.json.

Reading order: `train` is the run as its steps (set-up, then per epoch `train_epoch` with
`train_step` and `validate`, then the test score); what every run does, whatever it trains,
is in training.py, which the detector trainer (detector/train.py) shares.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from basics.annotation_files import DEFAULT_ANN_ROOT, AnnotationFiles, prepare_annotations
from basics.checkpoints import CHECKPOINT_FORMAT, LANDMARKS, read_checkpoint
from basics.cli import CommandLineParser, bounded_int, multiple_of_32, number_type
from basics.coco_files import merge_coco, read_meta_file, shared_images
from basics.ema import copy_tensors
from basics.errors import CheckpointError, DataError, reports_errors
from basics.geometry import CropGeometry
from basics.outputs import check_output_folder, check_writable, write_json
from basics.run_utils import broadcast_buffers, given_flags
from basics.sagemaker import publish_model
from basics.visualize import plot_training_curves
from dataset import Augmentation, LandmarkDataset, collate_readable
from inference import evaluate_loader
from model import LandmarkModel, init_from_checkpoint
from training import (EpochResult, RESUME_MAY_CHANGE as RUN_MAY_CHANGE, Run, StepResult, add_ema_flag,
                      adopt_architecture, add_run_flags, begin_run, checkpoint_bytes, evaluation_loader, finish_epoch,
                      loader_settings, optimise, parse_run, run_epochs, training_loader)

AUGMENTATION_LIMITS = {"scale": (0, 0.9), "rotation": (0, 180), "shift": (0, 1), "flip_prob": (0, 1),
                       "color": (0, 0.9), "blur_prob": (0, 1), "noise_prob": (0, 1), "erase_prob": (0, 1)}
AUGMENTATION_HELP = {"scale": "crop side times a factor in 1 +- this", "rotation": "degrees, uniform in +- this",
                     "shift": "crop centre moved by up to this fraction of the crop side",
                     "flip_prob": "horizontal mirror, landmarks reordered with flip_index",
                     "color": "brightness, contrast and saturation factors in 1 +- this",
                     "blur_prob": "Gaussian blur", "noise_prob": "Gaussian pixel noise",
                     "erase_prob": "one random rectangle filled with noise"}
# what --resume takes from the command line besides the run flags; every other setting is the run's own
RESUME_MAY_CHANGE = (*RUN_MAY_CHANGE, "meta", "crop_cache", "no_crop_cache", "compile")
# what --init-from's checkpoint decides: flag destination -> its model config's key
ARCHITECTURE = {name: name for name in ("backbone", "neck_channels", "heatmap_stride")}


def add_data_flags(parser: CommandLineParser) -> None:
    """Where the faces come from and how they are cut and augmented."""
    data = parser.add_argument_group("data")
    data.add_argument("--data-root", help="dataset folder (default: the one the annotations record; "
                      "with no annotations yet, DogFLW is converted from here or downloaded)")
    data.add_argument("--ann-root", default=str(DEFAULT_ANN_ROOT), help="folder with train.json and val.json "
                      "and/or test.json from tools/convert_dogflw_to_coco.py")
    data.add_argument("--val-fraction", type=number_type(float, 0, 0.5), default=0.1, help="with train.json and "
                      "test.json only (DogFLW), the breed-stratified share of train.json held out to choose best.pth "
                      "on; test.json is scored once at the end. 0: validate on test.json (selects on the test set)")
    data.add_argument("--extra-train", nargs="+", metavar="COCO_FILE", help="more training files (e.g. a lab's "
                      "corrected frames, converted) to train on together with train.json, each under the data root "
                      "it names")
    data.add_argument("--allow-overlap", action="store_true", help="train although a photo is in two of the "
                      "training, extra, validation and test files (else refused): said in one line")
    data.add_argument("--meta", help="keypoint metadata JSON for COCO files whose category lacks flip_index or "
                      "iod_pair (the converter's --meta format)")
    data.add_argument("--input-size", type=multiple_of_32, default=256,
                      help="crop side in pixels")
    data.add_argument("--box-padding", type=number_type(float, 0, 10, low_open=True), default=1.25,
                      help="crop side = box side x this")
    data.add_argument("--crop-cache", help="folder for the decoded face crops, reused across epochs and runs "
                      "(default: crop_cache in --ann-root)")
    data.add_argument("--no-crop-cache", action="store_true", help="decode every image at every epoch instead")
    aug = parser.add_argument_group("augmentation (0 switches a piece off)")
    for name, default in vars(Augmentation()).items():
        aug.add_argument(f"--aug-{name.replace('_', '-')}", dest=f"aug_{name}", default=default,
                         type=number_type(float, *AUGMENTATION_LIMITS[name]), help=AUGMENTATION_HELP[name])


def add_model_flags(parser: CommandLineParser) -> None:
    """The network, its loss and its optimisation."""
    net = parser.add_argument_group("model")
    net.add_argument("--backbone", default="hrnet_w32", help="hrnet_w32, tf_efficientnetv2_s or any timm "
                     "model with features_only; efficientnet_lite0 takes its ImageNet weights from a pip package "
                     "(no download: the CPU route)")
    net.add_argument("--neck-channels", type=bounded_int(1, 4096), default=64,
                     help="width of the FPN and heatmap head")
    net.add_argument("--heatmap-stride", type=int, choices=(2, 4), default=4, help="4: heatmaps at a quarter of the "
                     "input; 2: a fine head adds the stride-2 features and doubles their resolution")
    net.add_argument("--no-pretrained", action="store_true", help="start the backbone from random weights")
    net.add_argument("--pretrained-path", help="local backbone state dict instead of downloading")
    net.add_argument("--init-from", help="a landmark checkpoint (best.pth) to start from: its architecture and "
                     "weights (the head's last layer new if the landmarks differ in number); a new optimiser and "
                     "schedule")
    loss = parser.add_argument_group("loss")
    loss.add_argument("--sigma", type=number_type(float, 0, 64, low_open=True), default=2.0,
                      help="Gaussian target sigma in heatmap pixels")
    weight = number_type(float, 0, 1000)
    loss.add_argument("--heatmap-loss-weight", type=weight, default=1.0, help="MSE against Gaussian heatmap targets")
    loss.add_argument("--coord-loss-weight", type=weight, default=1.0, help="L1 on the soft-argmax landmarks")
    loss.add_argument("--keypoint-weights", help="JSON file with one weight per landmark for both losses "
                      "(default: the annotations' keypoint_weights, else all 1)")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=bounded_int(1, 100_000), default=210, help="epochs of the whole run (days of "
                     "CPU for hrnet_w32 at 256: use a GPU, or --backbone efficientnet_lite0 --epochs 40)")
    opt.add_argument("--batch-size", type=bounded_int(1, 65_536), default=32, help="per process under torchrun")
    opt.add_argument("--lr", type=number_type(float, 0, 10, low_open=True), default=4e-3,
                     help="peak AdamW learning rate of the head")
    opt.add_argument("--backbone-lr-mult", type=number_type(float, 0, 100), default=0.1,
                     help="backbone learning rate = lr x this when it starts from pretrained weights or --init-from")
    opt.add_argument("--weight-decay", type=number_type(float, 0, 10), default=1e-4,
                     help="AdamW weight decay (not on norms, biases and the mirror offset)")
    opt.add_argument("--warmup-epochs", type=number_type(float, 0, 100_000), default=1.0,
                     help="linear warm-up before the cosine decay")
    add_ema_flag(opt)


def build_parser() -> CommandLineParser:
    parser = CommandLineParser(description=__doc__, on_off_values=True)
    add_data_flags(parser)
    add_model_flags(parser)
    run = parser.add_argument_group("run")
    add_run_flags(run, "work_dirs/<backbone>_<input-size>", min(8, os.cpu_count() or 1))
    run.add_argument("--compile", action="store_true", help="torch.compile the training forward pass "
                     "(minutes of compiling first; pays off on long GPU runs)")
    return parser


# a backbone's measured best recipe (docs/RESULTS.md), its defaults where the command line leaves them out
BACKBONE_DEFAULTS = {"efficientnet_lite0": {"input_size": 224, "sigma": 3.0, "backbone_lr_mult": 1.0}}


def parse_run_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, dict | None]:
    """The run's settings and, with --resume, its checkpoint: the command line, or the resumed
    run's own settings with only RESUME_MAY_CHANGE taken from the command line. With --init-from,
    the architecture is the checkpoint's. A new run of a backbone in BACKBONE_DEFAULTS (named, or
    the --init-from checkpoint's) takes its recipe for the flags not given."""
    parser = build_parser()
    args, checkpoint = parse_run(parser, argv, LANDMARKS, RESUME_MAY_CHANGE)
    if args.coord_loss_weight == 0 and args.heatmap_loss_weight == 0:
        parser.error("--heatmap-loss-weight and --coord-loss-weight are both 0: nothing would be learned")
    adopt_architecture(parser, argv, args, LANDMARKS, ARCHITECTURE)
    if checkpoint is None:
        given = given_flags(parser, argv)
        for dest, value in BACKBONE_DEFAULTS.get(args.backbone, {}).items():
            if dest not in given:
                setattr(args, dest, value)
    return args, checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The run's settings (parse_run_args without the checkpoint)."""
    return parse_run_args(argv)[0]


def load_keypoint_weights(path: str | None, meta: dict) -> torch.Tensor:
    """Per-landmark loss weights (K,) from a JSON list, the annotations, or all ones; mean 1."""
    k = meta["num_keypoints"]
    weights = meta.get("keypoint_weights")
    if path is not None:
        try:
            weights = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable JSON list of landmark weights ({err})") from None
    if weights is None:
        return torch.ones(k)
    source = path or "the annotations' keypoint_weights"
    try:
        tensor = torch.tensor(weights, dtype=torch.float32)
    except (TypeError, ValueError):
        raise DataError(f"{source}: landmark weights must be a list of {k} numbers") from None
    if tensor.shape != (k,) or not torch.isfinite(tensor).all() or (tensor < 0).any() or tensor.sum() <= 0:
        raise DataError(f"{source}: landmark weights must be {k} finite numbers >= 0, not all 0")
    return tensor * k / tensor.sum()


def place_model(model: LandmarkModel, device: torch.device) -> torch.memory_format:
    """Move the model to the device; on CUDA in channels-last layout with cuDNN autotuning (the input
    size is fixed). Returns the memory format its input batches should have."""
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    return memory_format


def build_optimizer(model: LandmarkModel, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW over the model's parameter groups; a backbone that starts from trained weights
    (ImageNet, --pretrained-path, --init-from) learns at --backbone-lr-mult x the head's rate."""
    trained = not args.no_pretrained or args.pretrained_path is not None or args.init_from is not None
    groups = model.parameter_groups(args.lr, args.weight_decay, args.lr * (args.backbone_lr_mult if trained else 1.0))
    # on CUDA the fused kernel updates every tensor at once instead of a few kernels per tensor
    return torch.optim.AdamW(groups, fused=next(model.parameters()).is_cuda or None)


@dataclass
class LandmarkData:
    """The landmark training and validation sets with their sampler and loaders, and the test file that is
    scored once at the end (None if there is none, or validation is on it)."""
    train_set: LandmarkDataset
    val_set: LandmarkDataset
    train_loader: DataLoader
    val_loader: DataLoader
    test_file: Path | None


def check_no_overlap(files: AnnotationFiles, extra: list[str], allowed: bool) -> None:
    """Refuse (or, `allowed`, say in one line) photos that two of the training, extra, validation and
    test files both hold: trained on and scored, or scored twice."""
    roles = [("train", files.train), *((f"--extra-train {path}", Path(path)) for path in extra), ("val", files.val)]
    roles += [("test", files.test)] if files.test is not None else []
    for role, other, count, example in shared_images([(name, Path(path)) for name, path in roles]):
        said = f"{count} photos are in both {role} and {other} (e.g. {example}; same file name and size)"
        if not allowed:
            raise DataError(f"{said}: a photo trained on and scored, or scored twice, makes the score meaningless; "
                            "remove them from one file, or give --allow-overlap to train anyway")
        print(f"warning: {said}; training anyway (--allow-overlap)")


def load_datasets(args: argparse.Namespace, world_size: int) -> tuple[LandmarkDataset, LandmarkDataset, Path | None]:
    """The annotations (converted first if missing) as training and validation sets, checked before
    any image is decoded: the same landmarks in both, a batch per process, and validation images
    that NME_IOD can score; and the test file."""
    files = prepare_annotations(args.ann_root, args.data_root, args.val_fraction, args.meta)
    check_no_overlap(files, args.extra_train or [], args.allow_overlap)
    if args.extra_train:
        merged = Path(args.work_dir) / "train_with_extra.json"
        merged.parent.mkdir(parents=True, exist_ok=True)
        write_json(merged, merge_coco([files.train, *map(Path, args.extra_train)],
                                      [args.data_root] + [None] * len(args.extra_train)))
        files.train = merged
    meta = read_meta_file(args.meta) if args.meta else None
    augmentation = Augmentation(**{f: getattr(args, f"aug_{f}") for f in vars(Augmentation())})
    train_set = LandmarkDataset(files.train, args.data_root, args.input_size, args.box_padding, augmentation,
                                seed=args.seed, meta_override=meta)
    val_set = LandmarkDataset(files.val, args.data_root, args.input_size, args.box_padding, meta_override=meta)
    if val_set.meta["num_keypoints"] != train_set.meta["num_keypoints"]:
        raise DataError(f"{files.val}: {val_set.meta['num_keypoints']} landmarks, "
                        f"{files.train}: {train_set.meta['num_keypoints']}")
    if len(train_set) < args.batch_size * world_size:
        raise DataError(f"{files.train}: {len(train_set)} images, fewer than one batch of {args.batch_size} "
                        f"per process")
    first, second = val_set.meta["iod_pair"]
    if not any(r["labelled"][[first, second]].all() and np.linalg.norm(r["keypoints"][first] - r["keypoints"][second])
               > 1e-6 for r in val_set.records):
        raise DataError(f"{files.val}: no image has a usable inter-ocular distance (landmarks {first} and {second} "
                        "labelled and apart), so NME_IOD cannot score it")
    return train_set, val_set, files.test


def check_same_annotations(checkpoint: dict, train_set: LandmarkDataset, val_set: LandmarkDataset) -> None:
    """Refuse to resume a run on annotations other than its own (same landmarks or not)."""
    for name, dataset in (("train", train_set), ("val", val_set)):
        saved = (checkpoint.get("annotations") or {}).get(name)
        if saved is not None and saved != dataset.digest:
            raise DataError(f"{dataset.ann_file}: not the annotations the run being resumed was trained on (the "
                            "file has changed, or --ann-root names another); --resume continues a run on its own data")


def use_crop_caches(datasets: list[LandmarkDataset], cache_dir: str | Path, rank: int, world_size: int,
                    num_workers: int) -> None:
    """Read the datasets from their crop caches; rank 0 builds missing ones while the others wait."""
    for dataset in datasets:
        if rank == 0:
            dataset.use_cache(cache_dir, num_workers=num_workers)
        if world_size > 1:
            dist.barrier()  # rank 0 has built the cache
        if rank != 0:
            dataset.use_cache(cache_dir, build=False)


def build_loaders(args: argparse.Namespace, train_set: LandmarkDataset, val_set: LandmarkDataset,
                  test_file: Path | None, rank: int, world_size: int, device: torch.device) -> LandmarkData:
    """The crop caches and loaders: each rank trains on its share of every epoch and validates on its
    share of the validation set."""
    if not args.no_crop_cache:
        cache_dir = args.crop_cache or Path(args.ann_root) / "crop_cache"
        if rank == 0:
            check_output_folder(cache_dir, "--crop-cache")
        use_crop_caches([train_set, val_set], cache_dir, rank, world_size, args.num_workers)
    settings = loader_settings(args, device, collate_readable)
    return LandmarkData(train_set, val_set, training_loader(train_set, args, settings, rank, world_size),
                        evaluation_loader(val_set, args.batch_size * 2, settings, rank, world_size), test_file)


@dataclass
class LandmarkRun(Run):
    """A landmark run: the landmarks' metadata and loss weights, how crops are cut, and the digest
    of each annotation file."""
    meta: dict = field(default_factory=dict)
    keypoint_weights: torch.Tensor | None = None
    forward: Callable | None = None  # the model, wrapped by DDP and torch.compile where they are on
    memory_format: torch.memory_format = torch.contiguous_format
    geometry: CropGeometry | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    buffers: list[torch.Tensor] = field(init=False)
    buffers_before_step: list[torch.Tensor] = field(init=False)
    BEST_KEY: ClassVar[str] = "best_nme"

    def __post_init__(self):
        super().__post_init__()
        # a skipped step must not leave its forward pass in the BatchNorm statistics either
        self.buffers = list(self.model.buffers())
        self.buffers_before_step = [b.clone() for b in self.buffers]

    def inference_state(self, epoch: int) -> dict:
        """best.pth (checkpoints.py): the inference model, its crops and metadata, and where the
        run stood; enough for evaluation, prediction and export."""
        return {
            "format": CHECKPOINT_FORMAT, "kind": LANDMARKS, "model_config": self.model.config,
            "model": self.eval_model.state_dict(), "crop": asdict(self.geometry), "keypoint_meta": self.meta,
            "epoch": epoch, "best_nme": self.best, "metrics": self.metrics, "args": vars(self.args),
            "annotations": self.annotations,
        }


def create_model(args: argparse.Namespace, num_keypoints: int, checkpoint: dict | None) -> LandmarkModel:
    """The network to train: rebuilt from a resumed checkpoint's config (its weights are restored
    later), else new, with the backbone weights --no-pretrained, --pretrained-path or --init-from
    ask for."""
    if checkpoint is not None:
        if checkpoint["model_config"]["num_keypoints"] != num_keypoints:
            raise CheckpointError(f"{args.resume}: predicts {checkpoint['model_config']['num_keypoints']} "
                                  f"landmarks, {args.ann_root} has {num_keypoints}")
        return LandmarkModel(**checkpoint["model_config"])
    model = LandmarkModel(args.backbone, num_keypoints, args.neck_channels, sigma=args.sigma,
                          heatmap_stride=args.heatmap_stride, pretrained=not (args.no_pretrained or args.init_from),
                          pretrained_path=args.pretrained_path)
    if args.init_from:
        print(init_from_checkpoint(model, args.init_from))
    return model


def build_run(args: argparse.Namespace, model: LandmarkModel, meta: dict, keypoint_weights: torch.Tensor,
              steps_per_epoch: int, device: torch.device, rank: int = 0, world_size: int = 1,
              geometry: CropGeometry | None = None) -> LandmarkRun:
    """The model on `device` with its EMA, the AdamW optimiser, the warm-up + cosine schedule and
    the gradient scaler; crops cut by `geometry` (by default the flags')."""
    model.codec.log_beta.requires_grad_(args.coord_loss_weight > 0)  # only the coordinate loss trains beta
    memory_format = place_model(model, device)
    run = LandmarkRun.create(args, device, model, build_optimizer(model, args),
                             round(args.warmup_epochs * steps_per_epoch), args.epochs * steps_per_epoch, rank,
                             world_size, meta=meta, keypoint_weights=keypoint_weights.to(device),
                             memory_format=memory_format,
                             geometry=geometry or CropGeometry(args.input_size, args.box_padding))
    # wrapped after Run.create has copied the bare model into the EMA
    run.forward = model if world_size == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        run.forward = torch.compile(run.forward)
    return run


def train_step(run: LandmarkRun, batch: dict, stop_requested: bool = False) -> StepResult | None:
    """One optimisation step on a batch of crops, as the loop runs it and tools/benchmark.py times
    it: forward under autocast, the codec's loss, then training.optimise (backward, one host sync,
    the AdamW step when finite) and the EMA update. A step whose loss or gradient is not finite
    changes nothing, BatchNorm statistics included. None for a batch of which nothing could be read."""
    if "image" not in batch:
        return None
    images = batch["image"].to(run.device, non_blocking=True).float().contiguous(memory_format=run.memory_format)
    keypoints = batch["keypoints"].to(run.device, non_blocking=True)
    mirrored = batch["mirrored"].to(run.device, non_blocking=True)
    labelled = batch["labelled"].to(run.device, non_blocking=True)
    copy_tensors(run.buffers_before_step, run.buffers)
    with run.autocast():
        logits = run.forward(images)
    loss, parts = run.model.codec.loss(logits, keypoints, mirrored, run.args.heatmap_loss_weight,
                                       run.args.coord_loss_weight, run.keypoint_weights, labelled)
    result = optimise(run, loss, parts, stop_requested)
    if result.finite:
        run.update_average()
    else:
        copy_tensors(run.buffers, run.buffers_before_step)
    return result


def validate(run: LandmarkRun, data: LandmarkData, epoch: int, trained: EpochResult, started: float) -> None:
    """Score the EMA model on the validation set, then training.finish_epoch (metrics.jsonl,
    last.pth, best.pth)."""
    broadcast_buffers(run.eval_model)  # the model rank 0 saves is the one every rank evaluates
    run.metrics, _ = evaluate_loader(run.eval_model, data.val_loader, run.device)
    val_unreadable = run.metrics["unreadable_images"]
    # mean learned offset (input px) between a mirrored face's labels and the mirrored labels
    offset_x, offset_y = run.eval_model.codec.mirror_shift(True).mean(dim=(0, 1)).tolist()
    record = {"val_nme_iod": run.metrics["nme_iod"], "val_failure_rate": run.metrics["failure_rate_10"],
              "val_auc": run.metrics["auc_10"], "mirror_offset_x": offset_x, "mirror_offset_y": offset_y,
              "val_unreadable": len(val_unreadable)}
    finish_epoch(run, epoch, trained, run.metrics["nme_iod"], record, f"val NME_IOD {run.metrics['nme_iod']:.3f}",
                 started)
    for path in val_unreadable:
        run.log(f"warning: {path}: cannot read image; skipped")


def score_test(run: LandmarkRun, data: LandmarkData) -> dict:
    """best.pth, chosen on validation, scored once on the test file, plain and with the flip test,
    into test_metrics.json in the run folder."""
    run.eval_model.load_state_dict(read_checkpoint(run.work_dir / "best.pth", LANDMARKS)["model"])
    test_set = LandmarkDataset(data.test_file, run.args.data_root, run.geometry.input_size, run.geometry.box_padding,
                               meta_override=data.train_set.meta)
    loader = evaluation_loader(test_set, run.args.batch_size * 2,
                               dict(num_workers=run.args.num_workers, collate_fn=collate_readable), run.rank,
                               run.world_size)
    scores = {name: evaluate_loader(run.eval_model, loader, run.device, flip)[0] for name, flip in (("plain", False),
                                                                                         ("flip_test", True))}
    if run.is_main:
        write_json(run.work_dir / "test_metrics.json", {"checkpoint": str(run.work_dir / "best.pth"),
                                                        "ann": str(data.test_file), **scores}, indent=1)
        run.log(f"test NME_IOD of best.pth (chosen on {data.val_set.ann_file}): {scores['plain']['nme_iod']:.3f}, "
                f"{scores['flip_test']['nme_iod']:.3f} with the flip test ({scores['plain']['num_images']} images of "
                f"{data.test_file}); {run.work_dir / 'test_metrics.json'}")
    return scores


def set_up(args: argparse.Namespace, checkpoint: dict | None) -> tuple[LandmarkRun, LandmarkData, tuple[int, int]]:
    """Everything before the first step, ordered so that a mistake is refused before slow work:
    training.begin_run (checkpoint, seed, device and processes, run folder), annotations, model
    (and backbone weights), disk space, keypoint weights, crop caches and loaders, optimiser, and
    a resumed run's state. Returns the run, its data and the (epoch, batch) to start from."""
    checkpoint, rank, world_size, device = begin_run(args, checkpoint, LANDMARKS,
                                                     f"work_dirs/{args.backbone}_{args.input_size}", distributed=True)
    train_set, val_set, test_file = load_datasets(args, world_size)
    meta = train_set.meta
    model = create_model(args, meta["num_keypoints"], checkpoint)
    if checkpoint is not None:
        check_same_annotations(checkpoint, train_set, val_set)
    if rank == 0:
        check_writable(Path(args.work_dir), checkpoint_bytes(model))
    keypoint_weights = load_keypoint_weights(args.keypoint_weights, meta)
    data = build_loaders(args, train_set, val_set, test_file, rank, world_size, device)
    run = build_run(args, model, meta, keypoint_weights, data.train_loader.sampler.batches_per_epoch, device, rank,
                    world_size, train_set.geometry)
    run.annotations = {"train": train_set.digest, "val": val_set.digest}
    start = run.start(checkpoint)
    run.log(f"{len(train_set)} train / {len(val_set)} val images, {meta['num_keypoints']} landmarks; "
            f"{args.backbone} at {args.input_size} on {device}"
            + (f" x {world_size} processes" if world_size > 1 else "") + f"; run folder {run.work_dir}")
    if device.type == "cpu" and args.backbone.startswith("hrnet"):
        run.log(f"{args.backbone} is the GPU recipe: on a CPU a run takes days. The CPU route: --backbone "
                "efficientnet_lite0 (ImageNet weights that come with pip; its recipe: --input-size 224 --sigma 3 "
                "--backbone-lr-mult 1)")
    return run, data, start


def train(args: argparse.Namespace, checkpoint: dict | None = None) -> float:
    """The whole run; returns the best validation NME_IOD. Under torchrun every rank trains on its
    share of each epoch; rank 0 alone prints, writes metrics.jsonl and saves checkpoints."""
    run, data, start = set_up(args, checkpoint)

    run_epochs(run, data, start, train_step, validate)
    if run.is_main and (run.work_dir / "metrics.jsonl").exists():
        plot_training_curves(run.work_dir / "metrics.jsonl", run.work_dir / "curves.png")
    if data.test_file is not None:
        score_test(run, data)
    if run.is_main:
        publish_model(run.work_dir)
    return run.best


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args, checkpoint = parse_run_args(argv)
    try:
        best_nme = train(args, checkpoint)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if os.environ.get("RANK", "0") == "0":
        print(f"best val NME_IOD {best_nme:.3f}; checkpoints in {args.work_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
