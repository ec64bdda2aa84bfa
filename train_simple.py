"""Train a facial-landmark model on COCO keypoints (DogFLW by default).

    python train_simple.py                      # downloads and converts DogFLW, trains the best recipe
    python train_simple.py --data-root DIR --ann-root ANN_DIR --backbone resnet18 --input-size 128 \\
        --no-pretrained --epochs 20 --work-dir work_dirs/run
    python train_simple.py --resume work_dirs/run/last.pth --epochs 40

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
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset import Augmentation, DataError, LandmarkDataset, heatmap_targets
from evaluate import evaluate, pick_device
from geometry import input_to_heatmap
from model import HEATMAP_STRIDE, CheckpointError, LandmarkModel, WeightsUnavailable

DEFAULT_ANN_ROOT = "data/dogflw/annotations"


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
    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--epochs", type=int, default=210)
    opt.add_argument("--batch-size", type=int, default=32)
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
    run.add_argument("--seed", type=int, default=0)
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


def seed_worker(worker_id: int) -> None:
    """Give each DataLoader worker its own NumPy random stream, derived from torch's seed."""
    np.random.seed(torch.initial_seed() % 2**32)


def landmark_loss(model: LandmarkModel, logits: torch.Tensor, keypoints: torch.Tensor, sigma: float,
                  heatmap_weight: float, coord_weight: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Heatmap MSE against Gaussian targets plus L1 on the soft-argmax coordinates.

    Both are measured in heatmap pixels. The heatmap term is the squared error summed over a
    map divided by the target's energy (pi sigma^2), so it starts near 1 for any map size.
    Landmarks that augmentation pushed out of the crop get no coordinate loss: the soft-argmax
    cannot reach them, while their heatmap target (empty or cut) is still learned.
    """
    logits = logits.float()
    height, width = logits.shape[-2:]
    target_points = input_to_heatmap(keypoints, HEATMAP_STRIDE)
    heatmap_loss = coord_loss = logits.new_zeros(())
    if heatmap_weight > 0:
        targets = heatmap_targets(target_points, height, width, sigma)
        heatmap_loss = ((logits - targets) ** 2).sum(dim=(-2, -1)).mean() / (math.pi * sigma**2)
    if coord_weight > 0:
        pred_points = model.decode(logits)[0]
        inside = ((keypoints >= -0.5) & (keypoints <= model.config["input_size"] - 0.5)).all(dim=-1)
        error = F.l1_loss(pred_points, keypoints, reduction="none").sum(dim=-1) / HEATMAP_STRIDE
        coord_loss = (error * inside).sum() / inside.sum().clamp_min(1)
    loss = heatmap_weight * heatmap_loss + coord_weight * coord_loss
    return loss, {"heatmap": heatmap_loss.item(), "coord": coord_loss.item()}


def build_optimizer(model: LandmarkModel, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW; no weight decay on norms and biases; a lower rate for a pretrained backbone."""
    pretrained = not args.no_pretrained or args.pretrained_path is not None
    backbone_lr = args.lr * (args.backbone_lr_mult if pretrained else 1.0)
    groups = {}
    for name, param in model.named_parameters():
        lr = backbone_lr if name.startswith("backbone.") else args.lr
        decay = args.weight_decay if param.ndim > 1 else 0.0
        groups.setdefault((lr, decay), []).append(param)
    return torch.optim.AdamW([{"params": p, "lr": lr, "weight_decay": wd} for (lr, wd), p in groups.items()])


def warmup_cosine(warmup_steps: int, total_steps: int):
    """LR factor: linear warm-up from 1 % to 100 %, then cosine decay to 1 %."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return factor


@torch.no_grad()
def update_ema(ema: LandmarkModel, model: LandmarkModel, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model, over all float weights and buffers."""
    ema_state, state = ema.state_dict(), model.state_dict()
    floats = [k for k, v in ema_state.items() if v.dtype.is_floating_point]
    torch._foreach_lerp_([ema_state[k] for k in floats], [state[k] for k in floats], 1.0 - decay)
    for k, v in ema_state.items():
        if not v.dtype.is_floating_point:
            v.copy_(state[k])


def save_checkpoint(state: dict, path: Path) -> None:
    """torch.save to a temporary file, then an atomic rename: never a half-written checkpoint."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def check_writable(work_dir: Path) -> None:
    """Fail at start-up, not after an epoch, if the run folder cannot be written."""
    try:
        work_dir.mkdir(parents=True, exist_ok=True)
        probe = work_dir / ".write_test"
        probe.write_bytes(b"\0" * 1024)
        probe.unlink()
    except OSError as err:
        raise DataError(f"{work_dir}: cannot write to the run folder ({err.strerror})") from None


def train(args: argparse.Namespace) -> float:
    """The whole run; returns the best validation NME_IOD."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    work_dir = Path(args.work_dir)
    check_writable(work_dir)
    checkpoint = None
    if args.resume:
        try:
            checkpoint = torch.load(args.resume, map_location="cpu", weights_only=False)
            model_config, saved_args = checkpoint["model_config"], checkpoint["args"]
        except Exception as err:
            raise CheckpointError(f"{args.resume}: cannot resume from it ({type(err).__name__}: {err})") from None
        # the model and its crops are defined by the checkpoint, not by this command line
        args.backbone, args.input_size = model_config["backbone"], model_config["input_size"]
        args.neck_channels, args.box_padding = model_config["neck_channels"], saved_args["box_padding"]
    train_ann, val_ann = prepare_annotations(Path(args.ann_root), args.data_root)

    augmentation = Augmentation(**{f: getattr(args, f"aug_{f}") for f in vars(Augmentation())})
    train_set = LandmarkDataset(train_ann, args.data_root, args.input_size, args.box_padding, augmentation)
    val_set = LandmarkDataset(val_ann, args.data_root, args.input_size, args.box_padding)
    meta = train_set.meta
    if val_set.meta["num_keypoints"] != meta["num_keypoints"]:
        raise DataError(f"{val_ann}: {val_set.meta['num_keypoints']} landmarks, {train_ann}: {meta['num_keypoints']}")

    if checkpoint is not None:
        if model_config["num_keypoints"] != meta["num_keypoints"]:
            raise CheckpointError(f"{args.resume}: predicts {model_config['num_keypoints']} landmarks, "
                                  f"{train_ann} has {meta['num_keypoints']}")
        model = LandmarkModel(**model_config)
    else:
        model = LandmarkModel(args.backbone, meta["num_keypoints"], args.input_size, args.neck_channels,
                              pretrained=not args.no_pretrained, pretrained_path=args.pretrained_path)
    model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False) if args.ema_decay > 0 else None
    eval_model = ema if ema is not None else model

    pin = device.type == "cuda"
    workers = dict(num_workers=args.num_workers, persistent_workers=args.num_workers > 0,
                   worker_init_fn=seed_worker, pin_memory=pin)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
                              generator=torch.Generator().manual_seed(args.seed), **workers)
    val_loader = DataLoader(val_set, batch_size=args.batch_size * 2, **workers)
    if len(train_loader) == 0:
        raise DataError(f"{train_ann}: {len(train_set)} images, fewer than one batch of {args.batch_size}")

    optimizer = build_optimizer(model, args)
    steps_per_epoch = len(train_loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(
        round(args.warmup_epochs * steps_per_epoch), args.epochs * steps_per_epoch))
    amp_dtype = None
    if device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)

    start_epoch, best_nme = 1, float("inf")
    if checkpoint is not None:
        model.load_state_dict(checkpoint["train_model"])
        if ema is not None:
            ema.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        start_epoch, best_nme = checkpoint["epoch"] + 1, checkpoint["best_nme"]
        print(f"resumed from {args.resume} at epoch {checkpoint['epoch']} (best NME_IOD {best_nme:.3f})")

    print(f"{len(train_set)} train / {len(val_set)} val images, {meta['num_keypoints']} landmarks; "
          f"{model.config['backbone']} at {model.config['input_size']} on {device}; run folder {work_dir}")
    for epoch in range(start_epoch, args.epochs + 1):
        model.train()
        start = time.time()
        sums = {"loss": 0.0, "heatmap": 0.0, "coord": 0.0}
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{args.epochs}", mininterval=1.0, dynamic_ncols=True)
        for i, batch in enumerate(bar):
            images = batch["image"].to(device, non_blocking=True).float()
            keypoints = batch["keypoints"].to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                logits = model(images)
            loss, parts = landmark_loss(model, logits, keypoints, args.sigma,
                                        args.heatmap_loss_weight, args.coord_loss_weight)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            if ema is not None:
                step = (epoch - 1) * steps_per_epoch + i + 1
                update_ema(ema, model, min(args.ema_decay, (1 + step) / (10 + step)))
            sums["loss"] += loss.item()
            for k, v in parts.items():
                sums[k] += v
            seen = (i + 1) * args.batch_size
            bar.set_postfix(loss=f"{loss.item():.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}",
                            img_s=f"{seen / (time.time() - start):.0f}", refresh=False)
        train_time = time.time() - start
        metrics, _ = evaluate(eval_model, val_loader, device)
        record = {"epoch": epoch, **{f"train_{k}": v / steps_per_epoch for k, v in sums.items()},
                  "lr": scheduler.get_last_lr()[0], "val_nme_iod": metrics["nme_iod"],
                  "val_failure_rate": metrics["failure_rate_10"], "val_auc": metrics["auc_10"],
                  "train_images_per_s": steps_per_epoch * args.batch_size / train_time,
                  "epoch_time_s": time.time() - start}
        with open(work_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        improved = metrics["nme_iod"] < best_nme
        best_nme = min(best_nme, metrics["nme_iod"])
        state = {
            "model": eval_model.state_dict(), "train_model": model.state_dict(),
            "model_config": model.config, "keypoint_meta": meta, "epoch": epoch, "best_nme": best_nme,
            "metrics": metrics, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "args": vars(args),
        }
        save_checkpoint(state, work_dir / "last.pth")
        if improved:
            save_checkpoint(state, work_dir / "best.pth")
        print(f"epoch {epoch}: loss {record['train_loss']:.4f}, val NME_IOD {metrics['nme_iod']:.3f} "
              f"(best {best_nme:.3f}), {record['train_images_per_s']:.0f} img/s, {record['epoch_time_s']:.0f} s")
    return best_nme


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        best_nme = train(args)
    except (DataError, CheckpointError, WeightsUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"best val NME_IOD {best_nme:.3f}; checkpoints in {args.work_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
