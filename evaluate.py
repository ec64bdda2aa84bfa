"""Score a checkpoint on a COCO keypoints file: NME_IOD and friends, in original-image pixels.

    python evaluate.py --checkpoint work_dirs/RUN/best.pth --data-root DIR --ann FILE \\
        [--flip-test] [--out metrics.json] [--vis 20]

NME_IOD (percent): per image, the mean landmark error divided by the distance between the two
iod_pair landmarks (the outer eye corners), x100, averaged over images. This is the number
the DogFLW paper reports (6.52 for its best ensemble).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from dataset import DataError, LandmarkDataset, read_image
from geometry import apply_affine, flip_points, invert_affine
from model import CheckpointError, LandmarkModel, load_checkpoint

FAILURE_THRESHOLD = 10.0  # NME_IOD percent above which an image counts as a failure
PCK_THRESHOLDS = (0.05, 0.10)  # landmark error as a fraction of the inter-ocular distance


def pick_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(name)


@torch.no_grad()
def predict_dataset(model: LandmarkModel, loader: DataLoader, device: torch.device,
                    flip_index: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks in original-image pixels (N, K, 2) and confidences (N, K) for a dataset.

    With flip_index, each crop is also predicted mirrored and the two sets of coordinates
    are averaged (flip test in coordinate space, never on heatmaps).
    """
    model.eval()
    points_all, confidence_all = [], []
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True).float()
        points, confidence = model.decode(model(images))
        if flip_index is not None:
            points_flip, confidence_flip = model.decode(model(images.flip(-1)))
            points = (points + flip_points(points_flip, flip_index, images.shape[-1])) / 2
            confidence = (confidence + confidence_flip[:, flip_index]) / 2
        inverse = invert_affine(batch["affine"].numpy())
        points_all.append(apply_affine(points.cpu().double().numpy(), inverse))
        confidence_all.append(confidence.cpu().numpy())
    return np.concatenate(points_all), np.concatenate(confidence_all)


def compute_metrics(pred: np.ndarray, gt: np.ndarray, iod_pair: list[int], boxes: np.ndarray | None = None,
                    keypoint_names: list[str] | None = None, regions: dict | None = None) -> dict:
    """Metrics for predictions and ground truth (N, K, 2) in the same pixels.

    Images whose inter-ocular distance is zero cannot be normalised: they are left out and
    counted in `excluded_zero_iod`.
    """
    iod = np.linalg.norm(gt[:, iod_pair[0]] - gt[:, iod_pair[1]], axis=-1)
    valid = iod > 1e-6
    errors = np.linalg.norm(pred - gt, axis=-1)[valid] / iod[valid, None]  # (N, K) in IOD units
    per_image = errors.mean(axis=1) * 100
    if per_image.size == 0:
        raise ValueError("no image with a non-zero inter-ocular distance to evaluate")
    thresholds = np.linspace(0, FAILURE_THRESHOLD, 1001)
    ced = (per_image[None, :] <= thresholds[:, None]).mean(axis=1)
    metrics = {
        "nme_iod": float(per_image.mean()),
        "num_images": int(valid.sum()),
        "excluded_zero_iod": int((~valid).sum()),
        f"failure_rate_{FAILURE_THRESHOLD:g}": float((per_image > FAILURE_THRESHOLD).mean() * 100),
        f"auc_{FAILURE_THRESHOLD:g}": float((ced[1:] + ced[:-1]).mean() / 2 * 100),  # uniform steps
    }
    for t in PCK_THRESHOLDS:
        metrics[f"pck_{t:g}"] = float((errors < t).mean() * 100)
    names = keypoint_names or [str(i) for i in range(gt.shape[1])]
    metrics["per_landmark_nme"] = {n: float(e) for n, e in zip(names, errors.mean(axis=0) * 100)}
    if regions:
        metrics["per_region_nme"] = {r: float(errors[:, idx].mean() * 100) for r, idx in regions.items()}
    if boxes is not None:
        box_side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[valid]
        edges = np.quantile(box_side, [0, 1 / 3, 2 / 3, 1])
        bins = np.clip(np.searchsorted(edges, box_side, side="right") - 1, 0, 2)
        metrics["nme_by_box_size"] = {
            f"{name} ({edges[i]:.0f}-{edges[i + 1]:.0f} px)": float(per_image[bins == i].mean())
            for i, name in enumerate(("small", "medium", "large")) if (bins == i).any()
        }
    return metrics


def draw_landmarks(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None) -> np.ndarray:
    """RGB image with ground truth (green), predictions (red) and error lines (yellow)."""
    canvas = image.copy()
    radius = max(1, round(max(image.shape[:2]) / 200))
    if gt is not None:
        for p, g in zip(pred, gt):
            cv2.line(canvas, tuple(np.round(p).astype(int)), tuple(np.round(g).astype(int)), (255, 220, 0), 1)
        for g in gt:
            cv2.circle(canvas, tuple(np.round(g).astype(int)), radius + 1, (0, 200, 0), -1)
    for p in pred:
        cv2.circle(canvas, tuple(np.round(p).astype(int)), radius, (230, 0, 0), -1)
    return canvas


def write_visualisations(dataset: LandmarkDataset, pred: np.ndarray, count: int, out_dir: Path) -> None:
    """Overlays for `count` images chosen at random (fixed seed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    chosen = np.random.default_rng(0).choice(len(dataset), size=min(count, len(dataset)), replace=False)
    for i in chosen:
        record = dataset.records[i]
        image = read_image(dataset.data_root / record["file"])
        overlay = draw_landmarks(image, pred[i], record["keypoints"])
        cv2.imwrite(str(out_dir / f"{Path(record['file']).stem}.png"), cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
    print(f"wrote {len(chosen)} overlays to {out_dir}")


def evaluate(model: LandmarkModel, loader: DataLoader, device: torch.device,
             flip_test: bool = False) -> tuple[dict, np.ndarray]:
    """Metrics and predictions (original pixels) of a model on an unshuffled evaluation loader."""
    dataset = loader.dataset
    meta = dataset.meta
    pred, _ = predict_dataset(model, loader, device, meta["flip_index"] if flip_test else None)
    gt = np.stack([r["keypoints"] for r in dataset.records])
    boxes = np.stack([r["box"] for r in dataset.records])
    metrics = compute_metrics(pred, gt, meta["iod_pair"], boxes, meta["keypoints"], meta["regions"])
    return metrics, pred


def format_summary(metrics: dict) -> str:
    """The headline metrics on a few lines."""
    lines = [f"NME_IOD {metrics['nme_iod']:.3f}  ({metrics['num_images']} images, "
             f"failure rate@{FAILURE_THRESHOLD:g} {metrics[f'failure_rate_{FAILURE_THRESHOLD:g}']:.2f}%, "
             f"AUC@{FAILURE_THRESHOLD:g} {metrics[f'auc_{FAILURE_THRESHOLD:g}']:.2f}, "
             + ", ".join(f"PCK@{t:g} {metrics[f'pck_{t:g}']:.1f}%" for t in PCK_THRESHOLDS) + ")"]
    for key in ("nme_by_box_size", "per_region_nme"):
        if key in metrics:
            lines.append(f"{key}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics[key].items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="best.pth or last.pth from train_simple.py")
    parser.add_argument("--ann", required=True, help="COCO keypoints file to score against")
    parser.add_argument("--data-root", help="folder the annotation's file names are relative to "
                        "(default: the one recorded by the converter)")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cuda, mps or cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--flip-test", action="store_true", help="average with the mirrored crop's prediction")
    parser.add_argument("--out", help="write all metrics to this JSON file")
    parser.add_argument("--vis", type=int, default=0, metavar="N", help="write N overlay images")
    parser.add_argument("--vis-dir", help="folder for overlays (default: beside --out or the checkpoint)")
    args = parser.parse_args(argv)

    device = pick_device(args.device)
    try:
        model, checkpoint = load_checkpoint(args.checkpoint, map_location="cpu")
        dataset = LandmarkDataset(args.ann, args.data_root, model.config["input_size"],
                                  padding=checkpoint["args"]["box_padding"])
        if dataset.meta["num_keypoints"] != model.config["num_keypoints"]:
            raise DataError(f"{args.ann}: has {dataset.meta['num_keypoints']} landmarks per face, the "
                            f"checkpoint {args.checkpoint} predicts {model.config['num_keypoints']}")
        loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers,
                            pin_memory=device.type == "cuda")
        metrics, pred = evaluate(model.to(device), loader, device, args.flip_test)
    except (CheckpointError, DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    metrics.update(checkpoint=str(args.checkpoint), ann=str(args.ann), flip_test=args.flip_test,
                   epoch=checkpoint.get("epoch"))
    print(format_summary(metrics))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(metrics, indent=1))
        print(f"wrote {args.out}")
    if args.vis:
        default_dir = Path(args.out).parent if args.out else Path(args.checkpoint).parent
        write_visualisations(dataset, pred, args.vis, Path(args.vis_dir) if args.vis_dir else default_dir / "vis")
    return 0


if __name__ == "__main__":
    sys.exit(main())
