"""Pictures: landmarks drawn on images, the cumulative error distribution and training curves.

Used by evaluate.py (overlays, CED), train_simple.py (curves.png at the end of a run) and the
prediction tools (overlays of new photos).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure

from dataset import LandmarkDataset, read_image
from run_utils import MetricsLog


def draw_landmarks(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None,
                   box: np.ndarray | None = None, text: str | None = None) -> np.ndarray:
    """RGB image with ground truth (green), predictions (red), error lines (yellow), the face box
    (blue) and a caption. Dots are sized to the face box when there is one, else to the image."""
    canvas = image.copy()
    scale = max(box[2] - box[0], box[3] - box[1]) / 60 if box is not None else max(image.shape[:2]) / 200
    radius = max(1, round(scale))
    if box is not None:
        x1, y1, x2, y2 = np.round(box).astype(int)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (40, 120, 255), max(1, radius // 2))
    if gt is not None:
        for p, g in zip(pred, gt):
            cv2.line(canvas, tuple(np.round(p).astype(int)), tuple(np.round(g).astype(int)), (255, 220, 0), 1)
        for g in gt:
            cv2.circle(canvas, tuple(np.round(g).astype(int)), radius + 1, (0, 200, 0), -1)
    for p in pred:
        cv2.circle(canvas, tuple(np.round(p).astype(int)), radius, (230, 0, 0), -1)
    if text:
        scale = max(image.shape[:2]) / 500
        cv2.putText(canvas, text, (4, 4 + round(22 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255),
                    max(1, round(2 * scale)), cv2.LINE_AA)
    return canvas


def write_visualisations(dataset: LandmarkDataset, pred: np.ndarray, per_image_nme: np.ndarray, count: int,
                         out_dir: Path) -> None:
    """Overlays of the `count` worst images (worst_01_NAME.png, ...) and of `count` others at random
    (random_NAME.png, fixed seed). Images without a prediction or an NME (NaN) are skipped."""
    out_dir.mkdir(parents=True, exist_ok=True)
    scored = np.flatnonzero(np.isfinite(per_image_nme))
    worst = scored[np.argsort(-per_image_nme[scored], kind="stable")[:count]]
    rest = np.setdiff1d(scored, worst)
    chosen = np.random.default_rng(0).choice(rest, size=min(count, len(rest)), replace=False)
    names = [f"worst_{rank:02d}_" for rank in range(1, len(worst) + 1)] + ["random_"] * len(chosen)
    for prefix, i in zip(names, np.concatenate([worst, chosen])):
        record = dataset.records[i]
        image = read_image(dataset.data_root / record["file"])
        overlay = draw_landmarks(image, pred[i], record["keypoints"], record["box"], f"NME {per_image_nme[i]:.1f}")
        overlay = cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(out_dir / f"{prefix}{Path(record['file']).stem}.png"), overlay)
    print(f"wrote {len(worst)} worst and {len(chosen)} random overlays to {out_dir}")


def ced_curve(per_image_nme: np.ndarray, max_error: float) -> tuple[np.ndarray, np.ndarray]:
    """The cumulative error distribution up to max_error as step vertices (x: NME_IOD in percent,
    y: fraction of images with at most that error), to be drawn with where="post"."""
    errors = np.sort(per_image_nme)
    fraction = np.arange(1, len(errors) + 1) / len(errors)
    keep = errors <= max_error
    last = fraction[keep][-1] if keep.any() else 0.0
    return np.concatenate([[0.0], errors[keep], [max_error]]), np.concatenate([[0.0], fraction[keep], [last]])


def plot_ced(metrics: dict, max_error: float, out_png: Path, label: str = "model") -> Figure:
    """Write a CED plot up to `max_error` of evaluate.compute_metrics' per-image NME_IOD, with its
    AUC (`auc_<max_error>`) in the legend; returns the figure."""
    per_image = np.array([e for e in metrics["per_image_nme"] if e is not None])
    x, y = ced_curve(per_image, max_error)
    fig = Figure(figsize=(5, 4), dpi=100, layout="tight")
    ax = fig.subplots()
    auc = metrics[f"auc_{max_error:g}"]
    ax.step(x, y, where="post", label=f"{label} (AUC@{max_error:g} {auc:.2f})")
    ax.set(xlim=(0, max_error), ylim=(0, 1), xlabel="NME_IOD (%)", ylabel="fraction of images",
           title=f"Cumulative error distribution ({len(per_image)} images)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return fig


def plot_training_curves(metrics_jsonl: Path, out_png: Path) -> None:
    """Training losses, learning rate and validation NME_IOD per epoch from train_simple's
    metrics.jsonl (the last line of an epoch wins, as after a resume)."""
    records = {record["epoch"]: record for record in MetricsLog(metrics_jsonl).read()}
    epochs = sorted(records)
    fig = Figure(figsize=(12, 3.5), dpi=100, layout="tight")
    loss_ax, lr_ax, nme_ax = fig.subplots(1, 3)
    for key in ("train_loss", "train_heatmap", "train_coord"):
        if key in records[epochs[0]]:
            loss_ax.plot(epochs, [records[e][key] for e in epochs], marker=".", label=key.removeprefix("train_"))
    loss_ax.set(xlabel="epoch", ylabel="training loss", yscale="log")
    loss_ax.legend()
    lr_ax.plot(epochs, [records[e]["lr"] for e in epochs], marker=".")
    lr_ax.set(xlabel="epoch", ylabel="learning rate (end of epoch)")
    nme = [records[e]["val_nme_iod"] for e in epochs]
    best = int(np.argmin(nme))
    nme_ax.plot(epochs, nme, marker=".")
    nme_ax.plot(epochs[best], nme[best], "r*", markersize=12, label=f"best {nme[best]:.3f} (epoch {epochs[best]})")
    nme_ax.set(xlabel="epoch", ylabel="validation NME_IOD (%)")
    nme_ax.legend()
    for ax in (loss_ax, lr_ax, nme_ax):
        ax.grid(alpha=0.3)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
