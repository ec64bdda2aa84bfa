"""Train a facial-landmark model on COCO keypoints (DogFLW by default).

    python train_simple.py                      # downloads and converts DogFLW, trains the best recipe
    python train_simple.py --data-root DIR --ann-root ANN_DIR --backbone resnet18 --input-size 128 \\
        --no-pretrained --epochs 20 --work-dir work_dirs/run
    python train_simple.py --resume work_dirs/run/last.pth --epochs 40
    torchrun --nproc_per_node=4 train_simple.py ...     # DistributedDataParallel, --batch-size per process

The run folder gets last.pth and best.pth (lowest validation NME_IOD), each holding the model
config, keypoint metadata and weights that evaluate.py needs, and metrics.jsonl, a line per epoch.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

from dataset import Augmentation, DataError, LandmarkDataset, collate_readable, heatmap_targets
from evaluate import evaluate, pick_device, plot_training_curves
from geometry import input_to_heatmap
from model import HEATMAP_STRIDE, CheckpointError, LandmarkModel, WeightsUnavailable

DEFAULT_ANN_ROOT = "data/dogflw/annotations"
MIRROR_OFFSET_LR_MULT = 10.0
RESUME_KEYS = ("model", "train_model", "model_config", "keypoint_meta", "optimizer", "scheduler", "scaler",
               "epoch", "best_nme", "args")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--data-root", help="dataset folder (default: the one the annotations record; "
                      "with no annotations yet, DogFLW is converted from here or downloaded)")
    data.add_argument("--ann-root", default=DEFAULT_ANN_ROOT,
                      help="folder with train.json and test.json (or val.json) from tools/convert_dogflw_to_coco.py")
    data.add_argument("--input-size", type=int, default=256, help="crop side in pixels")
    data.add_argument("--box-padding", type=float, default=1.25, help="crop side = box side x this")
    data.add_argument("--num-workers", type=int, default=min(8, os.cpu_count() or 1))
    data.add_argument("--crop-cache", help="folder for the decoded face crops, reused across epochs and runs "
                      "(default: crop_cache beside the annotations)")
    data.add_argument("--no-crop-cache", action="store_true", help="decode every image at every epoch instead")
    aug = parser.add_argument_group("augmentation (0 switches a piece off)")
    for field, default in vars(Augmentation()).items():
        aug.add_argument(f"--aug-{field.replace('_', '-')}", dest=f"aug_{field}", type=float, default=default)
    net = parser.add_argument_group("model")
    net.add_argument("--backbone", default="hrnet_w32", help="hrnet_w32, tf_efficientnetv2_s or any timm "
                     "model with features_only")
    net.add_argument("--neck-channels", type=int, default=64, help="width of the FPN and heatmap head")
    net.add_argument("--no-pretrained", action="store_true", help="start the backbone from random weights")
    net.add_argument("--pretrained-path", help="local backbone state dict instead of downloading")
    loss = parser.add_argument_group("loss")
    loss.add_argument("--sigma", type=float, default=2.0, help="Gaussian target sigma in heatmap pixels")
    loss.add_argument("--heatmap-loss-weight", type=float, default=1.0)
    loss.add_argument("--coord-loss-weight", type=float, default=1.0, help="L1 on soft-argmax coordinates")
    loss.add_argument("--keypoint-weights", help="JSON file with one weight per landmark for both losses "
                      "(default: the annotations' keypoint_weights, else all 1)")
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=210)
    opt.add_argument("--batch-size", type=int, default=32, help="per process under torchrun")
    opt.add_argument("--lr", type=float, default=1e-3, help="peak AdamW learning rate of the head")
    opt.add_argument("--backbone-lr-mult", type=float, default=0.1,
                     help="backbone learning rate = lr x this when it starts from pretrained weights")
    opt.add_argument("--weight-decay", type=float, default=1e-4)
    opt.add_argument("--warmup-epochs", type=float, default=1.0)
    opt.add_argument("--ema-decay", type=float, default=0.999, help="EMA of weights for validation and "
                     "best.pth; 0 turns it off")
    run = parser.add_argument_group("run")
    run.add_argument("--work-dir", help="run folder (default: work_dirs/<backbone>_<input-size>)")
    run.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cuda, mps or cpu")
    run.add_argument("--resume", help="last.pth to continue from (backbone, input size and crop "
                     "padding come from it)")
    run.add_argument("--compile", action="store_true", help="torch.compile the training forward pass "
                     "(minutes of compiling first; pays off on long GPU runs)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--max-nonfinite-steps", type=int, default=20,
                     help="stop after this many steps in a row with a non-finite loss or gradient")
    run.add_argument("--max-unreadable", type=float, default=0.02,
                     help="stop when more than this fraction of an epoch's images cannot be read")
    args = parser.parse_args(argv)
    if args.work_dir is None:
        args.work_dir = str(Path(args.resume).parent) if args.resume else f"work_dirs/{args.backbone}_{args.input_size}"
    return args


def prepare_annotations(ann_root: Path, data_root: str | None) -> tuple[Path, Path]:
    """Train and validation annotation files; converts DogFLW first if there are none."""
    if not (ann_root / "train.json").exists():
        from tools.convert_dogflw_to_coco import DOGFLW_META, LabelError, convert, download_dogflw
        print(f"{ann_root / 'train.json'} not found: converting DogFLW "
              f"{'from ' + data_root if data_root else '(downloading it first)'}")
        try:
            convert(Path(data_root) if data_root else download_dogflw(), ann_root, DOGFLW_META)
        except LabelError as err:
            raise DataError(str(err)) from None
    for name in ("test.json", "val.json"):
        if (ann_root / name).exists():
            return ann_root / "train.json", ann_root / name
    raise DataError(f"{ann_root}: has train.json but neither test.json nor val.json to validate on")


def default_cache_dir(train_ann: str | Path) -> Path:
    """Where the crop cache goes unless --crop-cache says: beside the annotations."""
    return Path(train_ann).parent / "crop_cache"


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (non-finite loss, unreadable data, a checkpoint it cannot write)."""


class Interrupted(TrainingStopped):
    """SIGINT or SIGTERM arrived; last.pth was saved first."""


class EpochSampler(Sampler):
    """A seeded shuffle per epoch, shared out across DDP ranks, yielding (index, epoch).

    The epoch travels with each index so that a sample's augmentation is fixed by
    (seed, epoch, index), even in persistent workers. `start_batch` skips the batches a
    resumed run has already trained on.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = size // (batch_size * world_size)
        self.epoch, self.start_batch = 1, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        mine = order[: self.batches_per_epoch * self.batch_size * self.world_size][self.rank::self.world_size]
        return iter([(int(i), self.epoch) for i in mine[self.start_batch * self.batch_size:]])

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.batch_size


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


def landmark_loss(model: LandmarkModel, logits: torch.Tensor, keypoints: torch.Tensor, mirrored: torch.Tensor,
                  sigma: float, heatmap_weight: float, coord_weight: float,
                  keypoint_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Heatmap MSE against Gaussian targets plus L1 on the soft-argmax coordinates: the loss and
    its two terms (detached 0-d tensors, so that the caller reads every figure in one host sync).

    Both are measured in heatmap pixels and weighted per landmark (`keypoint_weights`, mean 1).
    The heatmap term is the squared error summed over a map divided by the target's energy
    (pi sigma^2), so it starts near 1 for any map size. Landmarks that augmentation pushed out
    of the crop get no coordinate loss: the soft-argmax cannot reach them, while their heatmap
    target (empty or cut) is still learned. For `mirrored` crops both terms place the landmark
    at its label minus the model's learned mirror offset, which both terms train.
    """
    logits = logits.float()
    height, width = logits.shape[-2:]
    weights = torch.ones(logits.shape[1], device=logits.device) if keypoint_weights is None else keypoint_weights
    seen_points = keypoints - model.mirror_shift(mirrored)  # where the network should see each landmark
    heatmap_loss = coord_loss = logits.new_zeros(())
    if heatmap_weight > 0:
        targets = heatmap_targets(input_to_heatmap(seen_points, HEATMAP_STRIDE), height, width, sigma)
        per_map = ((logits - targets) ** 2).sum(dim=(-2, -1)) / (math.pi * sigma**2)  # (B, K)
        heatmap_loss = (per_map * weights).mean()
    if coord_weight > 0:
        pred_points = model.decode(logits, mirrored)[0]
        inside = ((keypoints >= -0.5) & (keypoints <= model.config["input_size"] - 0.5)).all(dim=-1)
        error = F.l1_loss(pred_points, keypoints, reduction="none").sum(dim=-1) / HEATMAP_STRIDE
        coord_loss = (error * weights * inside).sum() / (weights * inside).sum().clamp_min(1e-6)
    loss = heatmap_weight * heatmap_loss + coord_weight * coord_loss
    return loss, {"heatmap": heatmap_loss.detach(), "coord": coord_loss.detach()}


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 on CUDA, fp16 (with a gradient scaler) on GPUs without bf16, full precision elsewhere."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def batch_loss(forward, model: LandmarkModel, images: torch.Tensor, keypoints: torch.Tensor,
               mirrored: torch.Tensor, args: argparse.Namespace, amp_dtype: torch.dtype | None,
               keypoint_weights: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training loss of one batch: `forward` (the model, or its DDP wrapper) under autocast."""
    with torch.autocast(images.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = forward(images)
    return landmark_loss(model, logits, keypoints, mirrored, args.sigma, args.heatmap_loss_weight,
                         args.coord_loss_weight, keypoint_weights)


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
        lr = backbone_lr if name.startswith("backbone.") else args.lr
        lr *= MIRROR_OFFSET_LR_MULT if name == "mirror_offset" else 1.0
        decay = args.weight_decay if param.ndim > 1 and name != "mirror_offset" else 0.0
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


def save_checkpoint(state: dict, path: Path) -> None:
    """torch.save to a temporary file, then an atomic rename: never a half-written checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as RuntimeError
        tmp.unlink(missing_ok=True)
        raise TrainingStopped(f"{path}: cannot write the checkpoint ({err}); the previous one is intact") from None


def check_writable(work_dir: Path, needed_bytes: int) -> None:
    """Fail at start-up, not after an epoch, if the run folder cannot take the checkpoints."""
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        probe = work_dir / ".write_test"
        probe.write_bytes(b"\0" * 1024)
        probe.unlink()
        free = shutil.disk_usage(work_dir).free
    except OSError as err:
        raise DataError(f"{work_dir}: cannot write to the run folder ({err.strerror or err})") from None
    if free < needed_bytes:
        raise DataError(f"{work_dir}: {free / 2**20:.0f} MB free, the checkpoints need about "
                        f"{needed_bytes / 2**20:.0f} MB; free some space or choose another --work-dir")


def checkpoint_bytes(model: LandmarkModel) -> int:
    """Disk needed by last.pth, best.pth and a temporary copy: each holds the weights four times
    (inference EMA, training weights, two AdamW moments)."""
    tensors = [*model.parameters(), *model.buffers()]
    return 3 * 4 * sum(t.numel() * t.element_size() for t in tensors)


def trim_metrics_log(path: Path, last_epoch: int) -> None:
    """Drop lines of epochs after `last_epoch` (written before a crash, redone after resuming)."""
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines()
        kept = [line for line in lines if line.strip() and json.loads(line)["epoch"] <= last_epoch]
        path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def ignore_ctrl_c(worker_id: int) -> None:
    """Ctrl-C reaches every process of the terminal's group: DataLoader workers leave it to the
    main process, which stops cleanly. (SIGTERM keeps its default: it is how workers are ended.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class StopRequest:
    """Turns SIGINT (Ctrl-C) and SIGTERM (spot or job preemption) into a flag checked between steps,
    so the run can save a checkpoint at a clean point instead of dying mid-update."""

    def __init__(self):
        self.signal_name = None
        self.previous = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.previous[sig] = signal.signal(sig, self.request)
        return self

    def request(self, signum: int, frame) -> None:
        if self.signal_name:
            raise KeyboardInterrupt  # a second Ctrl-C quits at once
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name}: saving last.pth after this step (again to quit at once)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


def training_state(model: LandmarkModel, ema: LandmarkModel | None, optimizer, scheduler, scaler, meta: dict,
                   args: argparse.Namespace, epoch: int, next_batch: int, best_nme: float,
                   metrics: dict | None) -> dict:
    """Everything a checkpoint holds: the inference model and its config, and the full training state.

    `epoch` is the last finished epoch; `next_batch` > 0 means epoch + 1 stopped after that many batches.
    """
    return {
        "model": (ema or model).state_dict(), "train_model": model.state_dict(),
        "model_config": model.config, "keypoint_meta": meta, "epoch": epoch, "next_batch": next_batch,
        "best_nme": best_nme, "metrics": metrics, "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "args": vars(args),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world size, device): from torchrun's environment (NCCL on GPUs, gloo on CPU), else (0, 1, device)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, pick_device(device_name)
    local_rank = int(os.environ["LOCAL_RANK"])
    if torch.cuda.is_available() and device_name in ("auto", "cuda"):
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    dist.init_process_group(backend)
    return dist.get_rank(), world_size, device


def sum_across_ranks(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over all DDP ranks (the values themselves in a single process)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every DDP rank rank 0's BatchNorm statistics (each rank's last batches moved its own)."""
    if dist.is_initialized():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def train(args: argparse.Namespace) -> float:
    """The whole run; returns the best validation NME_IOD. Under torchrun every rank trains on its
    share of each epoch; rank 0 alone prints, writes metrics.jsonl and saves checkpoints."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    rank, world_size, device = setup_distributed(args.device)
    is_main = rank == 0
    log = print if is_main else (lambda *a, **k: None)
    work_dir = Path(args.work_dir)
    checkpoint = None
    if args.resume:
        try:
            checkpoint = torch.load(args.resume, map_location="cpu", weights_only=False)
        except Exception as err:
            raise CheckpointError(f"{args.resume}: cannot resume from it ({type(err).__name__}: {err})") from None
        missing = [k for k in RESUME_KEYS if k not in checkpoint] if isinstance(checkpoint, dict) else RESUME_KEYS
        if missing:
            raise CheckpointError(f"{args.resume}: not a training checkpoint of train_simple.py "
                                  f"(no {', '.join(missing)})")
        model_config, saved_args = checkpoint["model_config"], checkpoint["args"]
        # the model and its crops are defined by the checkpoint, not by this command line
        args.backbone, args.input_size = model_config["backbone"], model_config["input_size"]
        args.neck_channels, args.box_padding = model_config["neck_channels"], saved_args["box_padding"]
    train_ann, val_ann = prepare_annotations(Path(args.ann_root), args.data_root)

    augmentation = Augmentation(**{f: getattr(args, f"aug_{f}") for f in vars(Augmentation())})
    train_set = LandmarkDataset(train_ann, args.data_root, args.input_size, args.box_padding, augmentation,
                                seed=args.seed)
    val_set = LandmarkDataset(val_ann, args.data_root, args.input_size, args.box_padding)
    if not args.no_crop_cache:
        cache_dir = args.crop_cache or default_cache_dir(train_ann)
        for dataset in (train_set, val_set):
            if is_main:
                dataset.use_cache(cache_dir, num_workers=args.num_workers)
            if world_size > 1:
                dist.barrier()  # rank 0 has built the cache
            if not is_main:
                dataset.use_cache(cache_dir, build=False)
    meta = train_set.meta
    if val_set.meta["num_keypoints"] != meta["num_keypoints"]:
        raise DataError(f"{val_ann}: {val_set.meta['num_keypoints']} landmarks, {train_ann}: {meta['num_keypoints']}")
    keypoint_weights = load_keypoint_weights(args.keypoint_weights, meta).to(device)

    if checkpoint is not None:
        if model_config["num_keypoints"] != meta["num_keypoints"]:
            raise CheckpointError(f"{args.resume}: predicts {model_config['num_keypoints']} landmarks, "
                                  f"{train_ann} has {meta['num_keypoints']}")
        model = LandmarkModel(**model_config)
    else:
        model = LandmarkModel(args.backbone, meta["num_keypoints"], args.input_size, args.neck_channels,
                              pretrained=not args.no_pretrained, pretrained_path=args.pretrained_path)
    if is_main:
        check_writable(work_dir, checkpoint_bytes(model))
    model.log_beta.requires_grad_(args.coord_loss_weight > 0)  # only the coordinate loss trains beta
    memory_format = place_model(model, device)
    ema = copy.deepcopy(model).requires_grad_(False) if args.ema_decay > 0 else None
    average = WeightAverage(ema, model) if ema is not None else None
    eval_model = ema if ema is not None else model
    forward = model if world_size == 1 else DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        forward = torch.compile(forward)

    sampler = EpochSampler(len(train_set), args.batch_size, args.seed, rank, world_size)
    if sampler.batches_per_epoch == 0:
        raise DataError(f"{train_ann}: {len(train_set)} images, fewer than one batch of {args.batch_size} "
                        f"per process")
    workers = dict(num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
                   worker_init_fn=ignore_ctrl_c, pin_memory=device.type == "cuda", collate_fn=collate_readable)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, sampler=sampler, drop_last=True, **workers)
    val_loader = DataLoader(val_set, batch_size=args.batch_size * 2, sampler=range(rank, len(val_set), world_size),
                            **workers)

    optimizer = build_optimizer(model, args)
    steps_per_epoch = sampler.batches_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        round(args.warmup_epochs * steps_per_epoch), args.epochs * steps_per_epoch))
    amp_dtype = autocast_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_epoch, start_batch, best_nme, metrics = 1, 0, float("inf"), None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["train_model"])
        if ema is not None:
            ema.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        if checkpoint.get("torch_rng") is not None:
            torch.set_rng_state(checkpoint["torch_rng"])
        if checkpoint.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(checkpoint["cuda_rng"])
        start_epoch, start_batch = checkpoint["epoch"] + 1, checkpoint.get("next_batch", 0)
        best_nme, metrics = checkpoint["best_nme"], checkpoint["metrics"]
        if is_main:
            trim_metrics_log(work_dir / "metrics.jsonl", checkpoint["epoch"])
        log(f"resumed from {args.resume} at epoch {checkpoint['epoch']}"
              + (f" + {start_batch} batches" if start_batch else "") + f" (best NME_IOD {best_nme:.3f})")

    def state(epoch: int, next_batch: int = 0) -> dict:
        return training_state(model, ema, optimizer, scheduler, scaler, meta, args, epoch, next_batch,
                              best_nme, metrics)

    log(f"{len(train_set)} train / {len(val_set)} val images, {meta['num_keypoints']} landmarks; "
        f"{model.config['backbone']} at {model.config['input_size']} on {device}"
        + (f" x {world_size} processes" if world_size > 1 else "") + f"; run folder {work_dir}")
    # a skipped step must not leave its forward pass in the BatchNorm statistics either
    buffers = list(model.buffers())
    buffers_before_step = [b.clone() for b in buffers]
    bad_steps = 0
    with StopRequest() as stop:
        for epoch in range(start_epoch, args.epochs + 1):
            model.train()
            sampler.set_epoch(epoch, start_batch)
            start = time.time()
            sums = {"loss": 0.0, "heatmap": 0.0, "coord": 0.0}
            steps_done, unreadable = 0, []
            bar = tqdm(train_loader, desc=f"epoch {epoch}/{args.epochs}", mininterval=1.0, dynamic_ncols=True,
                       disable=not is_main)
            for i, batch in enumerate(bar, start=start_batch):
                unreadable += batch["unreadable"]
                if len(unreadable) > args.max_unreadable * sampler.batches_per_epoch * args.batch_size:
                    raise TrainingStopped(f"{len(unreadable)} training images could not be read this epoch "
                                          f"(limit {args.max_unreadable:.0%}), e.g. {unreadable[0]}")
                if "image" not in batch and world_size > 1:
                    raise TrainingStopped(f"no image of a batch could be read, e.g. {unreadable[-1]}")
                if "image" in batch:
                    images = batch["image"].to(device, non_blocking=True).float().contiguous(memory_format=memory_format)
                    keypoints = batch["keypoints"].to(device, non_blocking=True)
                    mirrored = batch["mirrored"].to(device, non_blocking=True)
                    copy_tensors(buffers_before_step, buffers)
                    loss, parts = batch_loss(forward, model, images, keypoints, mirrored, args, amp_dtype,
                                             keypoint_weights)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    # the step's one host sync: every figure the decisions below need
                    loss_value, grad_norm, parts["heatmap"], parts["coord"] = torch.stack(
                        [loss.detach(), gradient_norm(model), parts["heatmap"], parts["coord"]]).tolist()
                    # every rank must take the same decisions: average the loss, count the stop requests
                    loss_value, parts["heatmap"], parts["coord"], stops = sum_across_ranks(
                        [loss_value, parts["heatmap"], parts["coord"], float(stop.signal_name is not None)], device)
                    loss_value, parts = loss_value / world_size, {k: v / world_size for k, v in parts.items()}
                    stop_now = stops > 0
                    # an fp16 scaler overflows on purpose now and then; it skips those steps itself
                    finite = math.isfinite(loss_value) and (scaler.is_enabled() or math.isfinite(grad_norm))
                    bad_steps = 0 if finite else bad_steps + 1
                    if finite:
                        scaler.step(optimizer)
                        scaler.update()
                        if average is not None:
                            step = (epoch - 1) * steps_per_epoch + i + 1
                            average.update(min(args.ema_decay, (1 + step) / (10 + step)))
                        steps_done += 1
                        sums["loss"] += loss_value
                        for k, v in parts.items():
                            sums[k] += v
                    else:
                        copy_tensors(buffers, buffers_before_step)
                        if is_main:
                            tqdm.write(f"warning: epoch {epoch} batch {i}: non-finite loss or gradient, step skipped")
                        if bad_steps >= args.max_nonfinite_steps:
                            if is_main:
                                save_checkpoint(state(epoch - 1, i), work_dir / "last.pth")
                            raise TrainingStopped(
                                f"{bad_steps} steps in a row with a non-finite loss or gradient; stopped. "
                                f"{work_dir / 'last.pth'} holds the last good weights (try a lower --lr)")
                    bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}", refresh=False)
                else:
                    stop_now = stop.signal_name is not None
                scheduler.step()
                if stop_now:
                    if is_main:
                        save_checkpoint(state(epoch - 1, i + 1), work_dir / "last.pth")
                    raise Interrupted(f"{stop.signal_name or 'a stop request'}: saved {work_dir / 'last.pth'} at epoch {epoch}, "
                                          f"batch {i + 1}/{steps_per_epoch}; continue with "
                                          f"--resume {work_dir / 'last.pth'}")
            train_time = time.time() - start
            start_batch = 0
            broadcast_buffers(eval_model)  # the model rank 0 saves is the one every rank evaluates
            metrics, _ = evaluate(eval_model, val_loader, device)
            record = {"epoch": epoch, **{f"train_{k}": v / max(1, steps_done) for k, v in sums.items()},
                      "lr": scheduler.get_last_lr()[0], "val_nme_iod": metrics["nme_iod"],
                      "val_failure_rate": metrics["failure_rate_10"], "val_auc": metrics["auc_10"],
                      # mean learned offset (input px) between a mirrored face's labels and the mirrored labels
                      **dict(zip(("mirror_offset_x", "mirror_offset_y"),
                                 eval_model.mirror_shift(True).mean(dim=(0, 1)).tolist())),
                      "train_unreadable": len(unreadable), "val_unreadable": len(metrics["unreadable_images"]),
                      "train_images_per_s": steps_done * args.batch_size * world_size / train_time,
                      "epoch_time_s": time.time() - start}
            improved = metrics["nme_iod"] < best_nme
            best_nme = min(best_nme, metrics["nme_iod"])
            if is_main:
                with open(work_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                save_checkpoint(state(epoch), work_dir / "last.pth")
                if improved:
                    save_checkpoint(state(epoch), work_dir / "best.pth")
            skipped = f", {len(unreadable)} unreadable images skipped" if unreadable else ""
            log(f"epoch {epoch}: loss {record['train_loss']:.4f}, val NME_IOD {metrics['nme_iod']:.3f} "
                  f"(best {best_nme:.3f}), {record['train_images_per_s']:.0f} img/s, "
                  f"{record['epoch_time_s']:.0f} s{skipped}")
            for path in unreadable + metrics["unreadable_images"]:
                log(f"warning: {path}: cannot read image; skipped")
            if sum_across_ranks([float(stop.signal_name is not None)], device)[0] > 0:
                raise Interrupted(f"{stop.signal_name or 'a stop request'}: saved {work_dir / 'last.pth'} after epoch {epoch}; "
                                      f"continue with --resume {work_dir / 'last.pth'}")
    if is_main and (work_dir / "metrics.jsonl").exists():
        plot_training_curves(work_dir / "metrics.jsonl", work_dir / "curves.png")
    return best_nme


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        best_nme = train(args)
    except Interrupted as err:
        print(f"interrupted by {err}", file=sys.stderr)
        return 130
    except (DataError, CheckpointError, WeightsUnavailable, TrainingStopped) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if os.environ.get("RANK", "0") == "0":
        print(f"best val NME_IOD {best_nme:.3f}; checkpoints in {args.work_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
