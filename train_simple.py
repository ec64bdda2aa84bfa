"""Train a facial-landmark model on COCO keypoints (DogFLW by default).

    python train_simple.py                      # downloads and converts DogFLW, trains the best recipe
    python train_simple.py --data-root DIR --ann-root ANN_DIR --backbone resnet18 --input-size 128 \\
        --no-pretrained --epochs 20 --work-dir work_dirs/run
    python train_simple.py --resume work_dirs/run/last.pth --epochs 40
    torchrun --nproc_per_node=4 train_simple.py ...     # DistributedDataParallel, --batch-size per process

The run folder gets last.pth and best.pth (lowest validation NME_IOD), each holding the model
config, crop geometry, keypoint metadata and weights that evaluate.py needs (checkpoints.py),
and metrics.jsonl, a line per epoch.

Reading order: `train` is the run as its steps (data, model and optimiser, then per epoch
`train_epoch` and `finish_epoch`); `train_step` is one optimisation step, which
tools/benchmark.py times as it is.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from checkpoints import CHECKPOINT_FORMAT, LANDMARKS, TRAINING_STATE_KEYS, read_checkpoint, save_checkpoint
from codec import COORD_LOSSES
from dataset import Augmentation, EpochSampler, LandmarkDataset, collate_readable, read_meta_file
from errors import (CheckpointError, CommandLineParser, DataError, Interrupted, TrainingStopped, UsageError,
                    UserFacingError, fraction, multiple_of_32, non_negative_float, non_negative_int, number_type,
                    positive_float, positive_int, reports_errors)
from evaluate import evaluate
from geometry import CropGeometry
from model import LandmarkModel
from run_utils import (MetricsLog, StopRequest, broadcast_buffers, broadcast_from_rank0, check_output_folder,
                       check_writable, choose_work_dir, ignore_ctrl_c, resumed_settings, seed_everything,
                       setup_distributed, sum_across_ranks)
from visualize import plot_training_curves

DEFAULT_ANN_ROOT = "data/dogflw/annotations"
MIRROR_OFFSET_LR_MULT = 10.0


AUGMENTATION_LIMITS = {"scale": (0, 0.9), "rotation": (0, 180), "shift": (0, 1), "flip_prob": (0, 1),
                       "color": (0, 0.9), "blur_prob": (0, 1), "noise_prob": (0, 1), "erase_prob": (0, 1)}
AUGMENTATION_HELP = {"scale": "crop side times a factor in 1 +- this", "rotation": "degrees, uniform in +- this",
                     "shift": "crop centre moved by up to this fraction of the crop side",
                     "flip_prob": "horizontal mirror, landmarks reordered with flip_index",
                     "color": "brightness, contrast and saturation factors in 1 +- this",
                     "blur_prob": "Gaussian blur", "noise_prob": "Gaussian pixel noise",
                     "erase_prob": "one random rectangle filled with noise"}
# what --resume takes from the command line; every other setting comes from the resumed run
RESUME_MAY_CHANGE = ("resume", "epochs", "work_dir", "data_root", "ann_root", "meta", "device", "num_workers",
                     "crop_cache", "no_crop_cache", "compile", "max_nonfinite_steps", "max_unreadable")


def build_parser() -> CommandLineParser:
    parser = CommandLineParser(description=__doc__)
    data = parser.add_argument_group("data")
    data.add_argument("--data-root", help="dataset folder (default: the one the annotations record; "
                      "with no annotations yet, DogFLW is converted from here or downloaded)")
    data.add_argument("--ann-root", default=DEFAULT_ANN_ROOT,
                      help="folder with train.json and test.json (or val.json) from tools/convert_dogflw_to_coco.py")
    data.add_argument("--meta", help="keypoint metadata JSON for COCO files whose category lacks flip_index or "
                      "iod_pair (the converter's --meta format)")
    data.add_argument("--input-size", type=multiple_of_32, default=256, help="crop side in pixels")
    data.add_argument("--box-padding", type=positive_float, default=1.25, help="crop side = box side x this")
    data.add_argument("--num-workers", type=non_negative_int, default=min(8, os.cpu_count() or 1),
                      help="DataLoader worker processes (default: %(default)s: the cores, at most 8)")
    data.add_argument("--crop-cache", help="folder for the decoded face crops, reused across epochs and runs "
                      "(default: crop_cache beside the annotations)")
    data.add_argument("--no-crop-cache", action="store_true", help="decode every image at every epoch instead")
    aug = parser.add_argument_group("augmentation (0 switches a piece off)")
    for name, default in vars(Augmentation()).items():
        aug.add_argument(f"--aug-{name.replace('_', '-')}", dest=f"aug_{name}", default=default,
                         type=number_type(float, *AUGMENTATION_LIMITS[name]), help=AUGMENTATION_HELP[name])
    net = parser.add_argument_group("model")
    net.add_argument("--backbone", default="hrnet_w32", help="hrnet_w32, tf_efficientnetv2_s or any timm "
                     "model with features_only")
    net.add_argument("--neck-channels", type=positive_int, default=64, help="width of the FPN and heatmap head")
    net.add_argument("--heatmap-stride", type=int, choices=(2, 4), default=4, help="4: heatmaps at a quarter of the "
                     "input; 2: a fine head adds the stride-2 features and doubles their resolution")
    net.add_argument("--no-pretrained", action="store_true", help="start the backbone from random weights")
    net.add_argument("--pretrained-path", help="local backbone state dict instead of downloading")
    loss = parser.add_argument_group("loss")
    loss.add_argument("--sigma", type=positive_float, default=2.0, help="Gaussian target sigma in heatmap pixels")
    loss.add_argument("--heatmap-loss-weight", type=non_negative_float, default=1.0,
                      help="MSE against Gaussian heatmap targets")
    loss.add_argument("--coord-loss-weight", type=non_negative_float, default=1.0,
                      help="the coordinate term on the soft-argmax landmarks")
    loss.add_argument("--coord-loss", choices=COORD_LOSSES, default="l1", help="l1: L1 distance; star: the "
                      "distance in the predicted distribution's spread (an edge's ambiguity costs less); star-shape: "
                      "L1 weighted by that spread's direction alone, codec.py")
    loss.add_argument("--spread-weight", type=non_negative_float, default=0.01, help="with --coord-loss star, the "
                      "weight of the distribution's variance (heatmap px^2)")
    loss.add_argument("--keypoint-weights", help="JSON file with one weight per landmark for both losses "
                      "(default: the annotations' keypoint_weights, else all 1)")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=positive_int, default=210, help="epochs of the whole run (days of CPU for "
                     "hrnet_w32 at 256: use a GPU, or --backbone resnet18 --input-size 128 --epochs 20)")
    opt.add_argument("--batch-size", type=positive_int, default=32, help="per process under torchrun")
    opt.add_argument("--lr", type=positive_float, default=4e-3, help="peak AdamW learning rate of the head")
    opt.add_argument("--backbone-lr-mult", type=non_negative_float, default=0.1,
                     help="backbone learning rate = lr x this when it starts from pretrained weights")
    opt.add_argument("--weight-decay", type=non_negative_float, default=1e-4, help="AdamW weight decay (not on "
                     "norms, biases and the mirror offset)")
    opt.add_argument("--warmup-epochs", type=non_negative_float, default=1.0, help="linear warm-up before the cosine "
                     "decay")
    opt.add_argument("--ema-decay", type=number_type(float, 0, 1, high_open=True), default=0.999,
                     help="EMA of weights for validation and best.pth; 0 turns it off")
    add_run_flags(parser.add_argument_group("run"))
    return parser


def add_run_flags(run: argparse._ArgumentGroup) -> None:
    """The flags of where and how the run goes, as opposed to what it trains."""
    run.add_argument("--work-dir", help="run folder (default: work_dirs/<backbone>_<input-size>, or -2, -3, ... "
                     "when that holds an earlier run; with --resume, the checkpoint's folder)")
    run.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")
    run.add_argument("--resume", help="last.pth to continue from: the run goes on with its own settings; "
                     f"of the other flags only {', '.join('--' + f.replace('_', '-') for f in RESUME_MAY_CHANGE[1:])} "
                     "are taken from this command line")
    run.add_argument("--compile", action="store_true", help="torch.compile the training forward pass "
                     "(minutes of compiling first; pays off on long GPU runs)")
    run.add_argument("--seed", type=int, default=0, help="fixes initialisation, shuffle and augmentation")
    run.add_argument("--max-nonfinite-steps", type=positive_int, default=20,
                     help="stop after this many steps in a row with a non-finite loss or gradient")
    run.add_argument("--max-unreadable", type=fraction, default=0.02,
                     help="stop when more than this fraction of an epoch's images cannot be read")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The run's settings: the command line, or with --resume the resumed run's own settings, with
    only the flags of RESUME_MAY_CHANGE taken from the command line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.coord_loss_weight == 0 and args.heatmap_loss_weight == 0:
        parser.error("--heatmap-loss-weight and --coord-loss-weight are both 0: nothing would be learned")
    if args.resume:
        saved = read_checkpoint(args.resume, LANDMARKS, mmap=True).get("args") or {}
        args = resumed_settings(parser, argv, args, saved, RESUME_MAY_CHANGE)
    return args


def prepare_annotations(ann_root: Path, data_root: str | None) -> tuple[Path, Path]:
    """Train and validation annotation files; converts DogFLW first if there are none."""
    if not (ann_root / "train.json").exists():
        from tools.convert_dogflw_to_coco import DOGFLW_META, convert, download_dogflw
        print(f"{ann_root / 'train.json'} not found: converting DogFLW "
              f"{'from ' + data_root if data_root else '(downloading it first)'}")
        convert(Path(data_root) if data_root else download_dogflw(), ann_root, DOGFLW_META)
    for name in ("test.json", "val.json"):
        if (ann_root / name).exists():
            return ann_root / "train.json", ann_root / name
    raise DataError(f"{ann_root}: has train.json but neither test.json nor val.json to validate on")


def default_cache_dir(train_ann: str | Path) -> Path:
    """Where the crop cache goes unless --crop-cache says: beside the annotations."""
    return Path(train_ann).parent / "crop_cache"


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


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA, fp16 (with a gradient scaler) on GPUs without bf16, full precision elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def place_model(model: LandmarkModel, device: torch.device) -> torch.memory_format:
    """Move the model to the device; on CUDA in channels-last layout with cuDNN autotuning (the input
    size is fixed). Returns the memory format its input batches should have."""
    cuda = device.type == "cuda"
    torch.backends.cudnn.benchmark = cuda
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    return memory_format


def build_optimizer(model: LandmarkModel, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms, biases and the mirror offset; a lower rate for a pretrained
    backbone. The mirror offset (heatmap pixels) learns at MIRROR_OFFSET_LR_MULT x the head's rate:
    Adam moves a parameter by about its rate per step, and at the head's rate a 1-pixel offset
    would take most of a 20-epoch run to learn."""
    pretrained = not args.no_pretrained or args.pretrained_path is not None
    backbone_lr = args.lr * (args.backbone_lr_mult if pretrained else 1.0)
    groups = {}
    for name, param in model.named_parameters():
        offset = param is model.codec.mirror_offset
        lr = backbone_lr if name.startswith("backbone.") else args.lr
        lr *= MIRROR_OFFSET_LR_MULT if offset else 1.0
        decay = args.weight_decay if param.ndim > 1 and not offset else 0.0
        groups.setdefault((lr, decay), []).append(param)
    # on CUDA the fused kernel updates every tensor at once instead of a few kernels per tensor
    return torch.optim.AdamW([{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()],
                             fused=next(model.parameters()).is_cuda or None)


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LR factor: linear warm-up from 1 % to 100 %, then cosine decay to 1 %."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


class WeightAverage:
    """Keeps `ema` an exponential moving average of `model`: after each step ema = decay * ema +
    (1 - decay) * model over float weights and buffers, and the other buffers copied. The tensor
    lists are gathered once: state_dict() walks every module, milliseconds per call on HRNet."""

    def __init__(self, ema: torch.nn.Module, model: torch.nn.Module):
        ema_state, state = ema.state_dict(), model.state_dict()  # tensors sharing the modules' storage
        floats = [k for k, v in ema_state.items() if v.dtype.is_floating_point]
        others = [k for k, v in ema_state.items() if not v.dtype.is_floating_point]
        self.ema_floats, self.floats = [ema_state[k] for k in floats], [state[k] for k in floats]
        self.ema_others, self.others = [ema_state[k] for k in others], [state[k] for k in others]

    @torch.no_grad()
    def update(self, decay: float) -> None:
        torch._foreach_lerp_(self.ema_floats, self.floats, 1.0 - decay)
        if self.others:
            copy_tensors(self.ema_others, self.others)


@torch.no_grad()
def gradient_norm(model: torch.nn.Module) -> torch.Tensor:
    """L2 norm of all gradients together, as a 0-d tensor on their device (no host sync)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


@torch.no_grad()
def copy_tensors(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    """targets[i] <- sources[i], in one fused call where torch has it."""
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(targets, sources)
    else:
        for target, source in zip(targets, sources):
            target.copy_(source)


def checkpoint_bytes(model: LandmarkModel) -> int:
    """Disk needed by last.pth, best.pth and a temporary copy: each holds the weights four times
    (inference EMA, training weights, two AdamW moments)."""
    tensors = [*model.parameters(), *model.buffers()]
    return 3 * 4 * sum(t.numel() * t.element_size() for t in tensors)


def read_resume_checkpoint(args: argparse.Namespace) -> dict:
    """The training checkpoint --resume names (parse_args took the run's settings from it)."""
    checkpoint = read_checkpoint(args.resume, LANDMARKS)
    missing = [k for k in TRAINING_STATE_KEYS if k not in checkpoint]
    if missing:
        raise CheckpointError(f"{args.resume}: not a training checkpoint of train_simple.py (no "
                              f"{', '.join(missing)}); resume from a run's last.pth (best.pth holds the "
                              "inference weights only)")
    if args.epochs <= checkpoint["epoch"]:
        raise UsageError(f"--epochs {args.epochs}: the run has finished {checkpoint['epoch']} epochs already; "
                         "give a larger --epochs to train longer")
    return checkpoint


def load_datasets(args: argparse.Namespace, world_size: int) -> tuple[LandmarkDataset, LandmarkDataset]:
    """The annotations (converted first if missing) as training and validation sets, checked before
    any image is decoded: the same landmarks in both, a batch per process, and validation images
    that NME_IOD can score."""
    train_ann, val_ann = prepare_annotations(Path(args.ann_root), args.data_root)
    meta = read_meta_file(args.meta) if args.meta else None
    augmentation = Augmentation(**{f: getattr(args, f"aug_{f}") for f in vars(Augmentation())})
    train_set = LandmarkDataset(train_ann, args.data_root, args.input_size, args.box_padding, augmentation,
                                seed=args.seed, meta_override=meta)
    val_set = LandmarkDataset(val_ann, args.data_root, args.input_size, args.box_padding, meta_override=meta)
    if val_set.meta["num_keypoints"] != train_set.meta["num_keypoints"]:
        raise DataError(f"{val_ann}: {val_set.meta['num_keypoints']} landmarks, "
                        f"{train_ann}: {train_set.meta['num_keypoints']}")
    if len(train_set) < args.batch_size * world_size:
        raise DataError(f"{train_ann}: {len(train_set)} images, fewer than one batch of {args.batch_size} "
                        f"per process")
    first, second = val_set.meta["iod_pair"]
    if not any(r["labelled"][[first, second]].all() and np.linalg.norm(r["keypoints"][first] - r["keypoints"][second])
               > 1e-6 for r in val_set.records):
        raise DataError(f"{val_ann}: no image has a usable inter-ocular distance (landmarks {first} and {second} "
                        "labelled and apart), so NME_IOD cannot score it")
    return train_set, val_set


def check_same_annotations(checkpoint: dict, train_set: LandmarkDataset, val_set: LandmarkDataset) -> None:
    """Refuse to resume a run on annotations other than its own (same landmarks or not)."""
    for name, dataset in (("train", train_set), ("val", val_set)):
        saved = (checkpoint.get("annotations") or {}).get(name)
        if saved is not None and saved != dataset.annotation_digest():
            raise DataError(f"{dataset.ann_file}: not the annotations the run being resumed was trained on (the "
                            "file has changed, or --ann-root names another); --resume continues a run on its own data")


@dataclass
class Data:
    """Both annotation sets as datasets and loaders, and the sampler that orders the epochs."""
    train_set: LandmarkDataset
    val_set: LandmarkDataset
    sampler: EpochSampler
    train_loader: DataLoader
    val_loader: DataLoader


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


def build_loaders(args: argparse.Namespace, train_set: LandmarkDataset, val_set: LandmarkDataset, rank: int,
                  world_size: int, device: torch.device) -> Data:
    """The crop caches and loaders: each rank trains on its share of every epoch and validates on its
    share of the validation set."""
    if not args.no_crop_cache:
        cache_dir = args.crop_cache or default_cache_dir(train_set.ann_file)
        if rank == 0:
            check_output_folder(cache_dir, "--crop-cache")
        use_crop_caches([train_set, val_set], cache_dir, rank, world_size, args.num_workers)
    sampler = EpochSampler(len(train_set), args.batch_size, args.seed, rank, world_size)
    workers = dict(num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
                   worker_init_fn=ignore_ctrl_c, pin_memory=device.type == "cuda", collate_fn=collate_readable)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True, **workers)
    val_loader = DataLoader(val_set, batch_size=args.batch_size * 2, sampler=range(rank, len(val_set), world_size),
                            **workers)
    return Data(train_set, val_set, sampler, train_loader, val_loader)


@dataclass
class Run:
    """The model and everything that updates it, and where the run stands."""
    args: argparse.Namespace
    device: torch.device
    rank: int
    world_size: int
    meta: dict
    keypoint_weights: torch.Tensor
    model: LandmarkModel
    forward: Callable  # the model, wrapped by DDP and torch.compile where they are on
    ema: LandmarkModel | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    memory_format: torch.memory_format
    annotations: dict[str, str] = field(default_factory=dict)  # digest of each annotation file
    best_nme: float = math.inf
    metrics: dict | None = None  # the last validation's
    bad_steps: int = 0  # non-finite steps in a row
    average: WeightAverage | None = field(init=False)
    buffers: list[torch.Tensor] = field(init=False)
    buffers_before_step: list[torch.Tensor] = field(init=False)

    def __post_init__(self):
        self.average = WeightAverage(self.ema, self.model) if self.ema is not None else None
        # a skipped step must not leave its forward pass in the BatchNorm statistics either
        self.buffers = list(self.model.buffers())
        self.buffers_before_step = [b.clone() for b in self.buffers]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def eval_model(self) -> LandmarkModel:
        return self.ema if self.ema is not None else self.model

    @property
    def work_dir(self) -> Path:
        return Path(self.args.work_dir)

    def log(self, message: str) -> None:
        if self.is_main:
            print(message)

    def inference_state(self, epoch: int) -> dict:
        """best.pth (checkpoints.py): the inference model, its crops and metadata, and where the
        run stood; enough for evaluation, prediction and export."""
        return {
            "format": CHECKPOINT_FORMAT, "kind": LANDMARKS, "model_config": self.model.config,
            "model": self.eval_model.state_dict(),
            "crop": asdict(CropGeometry(self.args.input_size, self.args.box_padding)),
            "keypoint_meta": self.meta, "epoch": epoch, "best_nme": self.best_nme, "metrics": self.metrics,
            "args": vars(self.args), "annotations": self.annotations,
        }

    def training_state(self, epoch: int, next_batch: int = 0) -> dict:
        """last.pth: the inference state and everything a resume needs. `epoch` is the last finished
        epoch; `next_batch` > 0 means epoch + 1 stopped after that many batches."""
        return {
            **self.inference_state(epoch), "train_model": self.model.state_dict(), "next_batch": next_batch,
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }


def create_model(args: argparse.Namespace, num_keypoints: int, checkpoint: dict | None) -> LandmarkModel:
    """The network to train: rebuilt from a resumed checkpoint's config (its weights are restored
    later), else new, with the backbone weights --no-pretrained and --pretrained-path ask for."""
    if checkpoint is None:
        return LandmarkModel(args.backbone, num_keypoints, args.neck_channels, sigma=args.sigma,
                             coord_loss=args.coord_loss, spread_weight=args.spread_weight,
                             heatmap_stride=args.heatmap_stride,
                             pretrained=not args.no_pretrained, pretrained_path=args.pretrained_path)
    if checkpoint["model_config"]["num_keypoints"] != num_keypoints:
        raise CheckpointError(f"{args.resume}: predicts {checkpoint['model_config']['num_keypoints']} "
                              f"landmarks, {args.ann_root} has {num_keypoints}")
    return LandmarkModel(**checkpoint["model_config"])


def build_run(args: argparse.Namespace, model: LandmarkModel, meta: dict, keypoint_weights: torch.Tensor,
              steps_per_epoch: int, device: torch.device, rank: int = 0, world_size: int = 1) -> Run:
    """The model on `device` with its EMA, the AdamW optimiser, the warm-up + cosine schedule and
    the gradient scaler."""
    model.codec.log_beta.requires_grad_(args.coord_loss_weight > 0)  # only the coordinate loss trains beta
    memory_format = place_model(model, device)
    ema = copy.deepcopy(model).requires_grad_(False) if args.ema_decay > 0 else None
    forward = model if world_size == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        forward = torch.compile(forward)
    optimizer = build_optimizer(model, args)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        round(args.warmup_epochs * steps_per_epoch), args.epochs * steps_per_epoch))
    amp_dtype = autocast_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    return Run(args, device, rank, world_size, meta, keypoint_weights.to(device), model, forward, ema, optimizer,
               scheduler, scaler, amp_dtype, memory_format)


def restore(run: Run, checkpoint: dict) -> tuple[int, int]:
    """Put the run where `checkpoint` left it (weights, optimiser, schedule, random stream, best
    score, metrics.jsonl); returns the epoch and the batch within it to continue from."""
    run.model.load_state_dict(checkpoint["train_model"])
    if run.ema is not None:
        run.ema.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scheduler.load_state_dict(checkpoint["scheduler"])
    run.scaler.load_state_dict(checkpoint["scaler"])
    if checkpoint.get("torch_rng") is not None:
        torch.set_rng_state(checkpoint["torch_rng"])
    if checkpoint.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
    run.best_nme, run.metrics = checkpoint["best_nme"], checkpoint["metrics"]
    epoch, next_batch = checkpoint["epoch"], checkpoint.get("next_batch", 0)
    planned = (checkpoint.get("args") or {}).get("epochs", run.args.epochs)
    if planned != run.args.epochs:  # the schedule's lambda is this run's; its place is the checkpoint's
        factor = run.scheduler.lr_lambdas[0](run.scheduler.last_epoch)
        run.log(f"--epochs {run.args.epochs}: the run was planned for {planned}, so its warm-up + cosine schedule "
                f"is stretched to {run.args.epochs} epochs and the learning rate goes from "
                f"{run.scheduler.get_last_lr()[0]:.2e} to {run.scheduler.base_lrs[0] * factor:.2e} now")
    if run.is_main:
        MetricsLog(run.work_dir / "metrics.jsonl").trim(epoch)
    run.log(f"resumed from {run.args.resume} at epoch {epoch}" + (f" + {next_batch} batches" if next_batch else "")
            + f" (best NME_IOD {run.best_nme:.3f})")
    return epoch + 1, next_batch


@dataclass
class StepResult:
    """What the loop needs to know of a step: the loss and its terms (averaged over ranks), whether
    it was finite (and so taken), and whether any rank was asked to stop."""
    loss: float
    parts: dict[str, float]
    finite: bool
    stop: bool


def train_step(run: Run, batch: dict, stop_requested: bool = False) -> StepResult:
    """One optimisation step on a batch of crops, as the loop runs it and tools/benchmark.py times
    it: forward under autocast, loss, backward, one host sync for the figures the decisions need,
    then the AdamW step and the EMA update. A step whose loss or gradient is not finite changes
    nothing, BatchNorm statistics included. Under DDP every rank takes the same decisions."""
    images = batch["image"].to(run.device, non_blocking=True).float().contiguous(memory_format=run.memory_format)
    keypoints = batch["keypoints"].to(run.device, non_blocking=True)
    mirrored = batch["mirrored"].to(run.device, non_blocking=True)
    labelled = batch["labelled"].to(run.device, non_blocking=True)
    copy_tensors(run.buffers_before_step, run.buffers)
    with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
        logits = run.forward(images)
    loss, parts = run.model.codec.loss(logits, keypoints, mirrored, run.args.heatmap_loss_weight,
                                       run.args.coord_loss_weight, run.keypoint_weights, labelled)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(run.optimizer)
    # the step's one host sync: every figure the decisions below need
    loss_value, grad_norm, heatmap, coord = torch.stack(
        [loss.detach(), gradient_norm(run.model), parts["heatmap"], parts["coord"]]).tolist()
    loss_value, heatmap, coord, stops = sum_across_ranks([loss_value, heatmap, coord, float(stop_requested)],
                                                         run.device)
    # an fp16 scaler overflows on purpose now and then; it skips those steps itself
    finite = math.isfinite(loss_value) and (run.scaler.is_enabled() or math.isfinite(grad_norm))
    if finite:
        run.scaler.step(run.optimizer)
        run.scaler.update()
        if run.average is not None:
            step = run.scheduler.last_epoch + 1  # batches of the run so far, this one included
            run.average.update(min(run.args.ema_decay, (1 + step) / (10 + step)))
    else:
        copy_tensors(run.buffers, run.buffers_before_step)
    n = run.world_size
    return StepResult(loss_value / n, {"heatmap": heatmap / n, "coord": coord / n}, finite, stops > 0)


class RunHalted(Exception):
    """Raised inside the loop to stop the run: `train` saves last.pth at (epoch, next_batch), then
    raises `error` to the user."""

    def __init__(self, error: UserFacingError, epoch: int, next_batch: int):
        super().__init__(str(error))
        self.error, self.epoch, self.next_batch = error, epoch, next_batch


def check_unreadable(run: Run, unreadable: list[str], limit: float, batch: dict) -> None:
    """Stop when too many of the epoch's images could not be read, or a DDP rank got none of a batch."""
    if len(unreadable) > limit:
        raise TrainingStopped(f"{len(unreadable)} training images could not be read this epoch "
                              f"(limit {run.args.max_unreadable:.0%}), e.g. {unreadable[0]}")
    if "image" not in batch and run.world_size > 1:
        raise TrainingStopped(f"no image of a batch could be read, e.g. {unreadable[-1]}")


def count_bad_step(run: Run, epoch: int, batch_index: int) -> None:
    """A non-finite step was skipped: warn, and halt after --max-nonfinite-steps in a row."""
    run.bad_steps += 1
    if run.is_main:
        tqdm.write(f"warning: epoch {epoch} batch {batch_index}: non-finite loss or gradient, step skipped")
    if run.bad_steps >= run.args.max_nonfinite_steps:
        raise RunHalted(TrainingStopped(
            f"{run.bad_steps} steps in a row with a non-finite loss or gradient; stopped. "
            f"{run.work_dir / 'last.pth'} holds the last good weights (try a lower --lr)"), epoch - 1, batch_index)


@dataclass
class EpochResult:
    """An epoch of training: its mean losses by name, speed, duration and the images it could not read."""
    losses: dict[str, float]
    images_per_s: float
    seconds: float
    unreadable: list[str]


def train_epoch(run: Run, data: Data, epoch: int, start_batch: int, stop: StopRequest) -> EpochResult:
    """Train one epoch, from batch `start_batch` when resuming inside it. Returns the epoch's mean
    losses, the images it could not read and its speed; raises RunHalted to stop the run."""
    run.model.train()
    data.sampler.set_epoch(epoch, start_batch)
    start, sums, steps_done, unreadable = time.time(), {"loss": 0.0, "heatmap": 0.0, "coord": 0.0}, 0, []
    limit = run.args.max_unreadable * data.sampler.batches_per_epoch * run.args.batch_size
    bar = tqdm(data.train_loader, desc=f"epoch {epoch}/{run.args.epochs}", mininterval=1.0, dynamic_ncols=True,
               disable=not run.is_main)
    for i, batch in enumerate(bar, start=start_batch):
        unreadable += batch["unreadable"]
        check_unreadable(run, unreadable, limit, batch)
        stop_now = stop.signal_name is not None
        if "image" in batch:  # else nothing in the batch could be read (counted above)
            result = train_step(run, batch, stop_now)
            stop_now = result.stop
            if result.finite:
                run.bad_steps, steps_done = 0, steps_done + 1
                for key, value in [("loss", result.loss), *result.parts.items()]:
                    sums[key] += value
            else:
                count_bad_step(run, epoch, i)
            bar.set_postfix(loss=f"{result.loss:.4f}", lr=f"{run.scheduler.get_last_lr()[0]:.2e}", refresh=False)
        run.scheduler.step()
        if stop_now:
            raise RunHalted(Interrupted(
                f"{stop.signal_name or 'a stop request'}: saved {run.work_dir / 'last.pth'} at epoch {epoch}, "
                f"batch {i + 1}/{data.sampler.batches_per_epoch}; continue with "
                f"--resume {run.work_dir / 'last.pth'}"), epoch - 1, i + 1)
    seconds = time.time() - start
    return EpochResult({f"train_{k}": v / max(1, steps_done) for k, v in sums.items()},
                       steps_done * run.args.batch_size * run.world_size / seconds, seconds, unreadable)


def finish_epoch(run: Run, data: Data, epoch: int, trained: EpochResult) -> None:
    """Validate, then write the epoch's line in metrics.jsonl, last.pth and (at a new best) best.pth."""
    start = time.time()
    broadcast_buffers(run.eval_model)  # the model rank 0 saves is the one every rank evaluates
    run.metrics, _ = evaluate(run.eval_model, data.val_loader, run.device)
    val_unreadable = run.metrics["unreadable_images"]
    # mean learned offset (input px) between a mirrored face's labels and the mirrored labels
    offset_x, offset_y = run.eval_model.codec.mirror_shift(True).mean(dim=(0, 1)).tolist()
    record = {"epoch": epoch, **trained.losses, "lr": run.scheduler.get_last_lr()[0],
              "val_nme_iod": run.metrics["nme_iod"], "val_failure_rate": run.metrics["failure_rate_10"],
              "val_auc": run.metrics["auc_10"], "mirror_offset_x": offset_x, "mirror_offset_y": offset_y,
              "train_unreadable": len(trained.unreadable), "val_unreadable": len(val_unreadable),
              "train_images_per_s": trained.images_per_s, "epoch_time_s": trained.seconds + time.time() - start}
    improved = run.metrics["nme_iod"] < run.best_nme
    run.best_nme = min(run.best_nme, run.metrics["nme_iod"])
    if run.is_main:
        MetricsLog(run.work_dir / "metrics.jsonl").append(record)
        save_checkpoint(run.training_state(epoch), run.work_dir / "last.pth")
        if improved:
            save_checkpoint(run.inference_state(epoch), run.work_dir / "best.pth")
    skipped = f", {len(trained.unreadable)} unreadable images skipped" if trained.unreadable else ""
    run.log(f"epoch {epoch}: loss {record['train_loss']:.4f}, val NME_IOD {run.metrics['nme_iod']:.3f} "
            f"(best {run.best_nme:.3f}), {trained.images_per_s:.0f} img/s, {record['epoch_time_s']:.0f} s{skipped}")
    for path in trained.unreadable + val_unreadable:
        run.log(f"warning: {path}: cannot read image; skipped")


def set_up(args: argparse.Namespace) -> tuple[Run, Data, tuple[int, int]]:
    """Everything before the first step, ordered so that a mistake is refused before slow work:
    device and run folder, annotations, model (and backbone weights), disk space, keypoint
    weights, crop caches and loaders, optimiser, and a resumed run's state. Returns the run, its
    data and the (epoch, batch) to start from."""
    seed_everything(args.seed)
    rank, world_size, device = setup_distributed(args.device)
    checkpoint = read_resume_checkpoint(args) if args.resume else None
    default = f"work_dirs/{args.backbone}_{args.input_size}"
    args.work_dir = broadcast_from_rank0(choose_work_dir(args.work_dir, default, args.resume) if rank == 0 else None)
    train_set, val_set = load_datasets(args, world_size)
    meta = train_set.meta
    model = create_model(args, meta["num_keypoints"], checkpoint)
    if checkpoint is not None:
        check_same_annotations(checkpoint, train_set, val_set)
    if rank == 0:
        check_writable(Path(args.work_dir), checkpoint_bytes(model))
    keypoint_weights = load_keypoint_weights(args.keypoint_weights, meta)
    data = build_loaders(args, train_set, val_set, rank, world_size, device)
    run = build_run(args, model, meta, keypoint_weights, data.sampler.batches_per_epoch, device, rank, world_size)
    run.annotations = {"train": train_set.annotation_digest(), "val": val_set.annotation_digest()}
    start = restore(run, checkpoint) if checkpoint is not None else (1, 0)
    run.log(f"{len(train_set)} train / {len(val_set)} val images, {meta['num_keypoints']} landmarks; "
            f"{args.backbone} at {args.input_size} on {device}"
            + (f" x {world_size} processes" if world_size > 1 else "") + f"; run folder {run.work_dir}")
    return run, data, start


def train(args: argparse.Namespace) -> float:
    """The whole run; returns the best validation NME_IOD. Under torchrun every rank trains on its
    share of each epoch; rank 0 alone prints, writes metrics.jsonl and saves checkpoints."""
    run, data, (start_epoch, start_batch) = set_up(args)
    try:
        with StopRequest() as stop:
            for epoch in range(start_epoch, args.epochs + 1):
                trained = train_epoch(run, data, epoch, start_batch, stop)
                start_batch = 0
                finish_epoch(run, data, epoch, trained)
                if sum_across_ranks([float(stop.signal_name is not None)], run.device)[0] > 0:
                    raise RunHalted(Interrupted(
                        f"{stop.signal_name or 'a stop request'}: saved {run.work_dir / 'last.pth'} after epoch "
                        f"{epoch}; continue with --resume {run.work_dir / 'last.pth'}"), epoch, 0)
    except RunHalted as halt:
        if run.is_main:
            save_checkpoint(run.training_state(halt.epoch, halt.next_batch), run.work_dir / "last.pth")
        raise halt.error from None
    if run.is_main and (run.work_dir / "metrics.jsonl").exists():
        plot_training_curves(run.work_dir / "metrics.jsonl", run.work_dir / "curves.png")
    return run.best_nme


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        best_nme = train(args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if os.environ.get("RANK", "0") == "0":
        print(f"best val NME_IOD {best_nme:.3f}; checkpoints in {args.work_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
