"""Pictures: landmarks drawn on images, the cumulative error distribution and training curves.

Used by evaluate.py (overlays, CED), train_simple.py (curves.png at the end of a run) and the
prediction tools (overlays of new photos).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from dataset import LandmarkDataset, read_image
from run_utils import MetricsLog


OVERLAY_MIN_SIDE = 800  # overlays of small images are enlarged to this long side before drawing


def draw_landmarks(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None,
                   box: np.ndarray | None = None, text: str | None = None) -> np.ndarray:
    """An RGB overlay: ground truth (green), predictions (red), error lines (yellow), the face box
    (blue) and a caption in white on a dark outline. A small image is enlarged first (to
    OVERLAY_MIN_SIDE on its long side) so that dozens of landmarks stay apart; the overlay is then
    that size, and the points are scaled with it."""
    zoom = max(1.0, OVERLAY_MIN_SIDE / max(image.shape[:2]))
    canvas = cv2.resize(image, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC) if zoom > 1 else image.copy()
    face = (max(box[2] - box[0], box[3] - box[1]) if box is not None else max(image.shape[:2]) / 2) * zoom
    radius, line = max(2, round(face / 100)), max(1, round(face / 300))

    def at(point: np.ndarray) -> tuple[int, int]:  # sub-pixel centre convention -> drawing pixels
        return tuple(int(v) for v in np.round((np.asarray(point) + 0.5) * zoom - 0.5))
    if box is not None:
        cv2.rectangle(canvas, at(box[:2]), at(box[2:]), (40, 120, 255), line, cv2.LINE_AA)
    if gt is not None:
        for p, g in zip(pred, gt):
            cv2.line(canvas, at(p), at(g), (255, 220, 0), line, cv2.LINE_AA)
        for g in gt:
            cv2.circle(canvas, at(g), radius + 1, (0, 200, 0), -1, cv2.LINE_AA)
    for p in pred:
        cv2.circle(canvas, at(p), radius, (230, 0, 0), -1, cv2.LINE_AA)
    if text:
        scale = max(canvas.shape[:2]) / 900
        origin = (round(10 * scale), round(34 * scale))
        for colour, width in (((0, 0, 0), max(3, round(6 * scale))), ((255, 255, 255), max(1, round(2 * scale)))):
            cv2.putText(canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, width, cv2.LINE_AA)
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
        overlay = draw_landmarks(image, pred[i], record["keypoints"], record["box"],
                                 f"NME_IOD {per_image_nme[i]:.1f} %")
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
    ax.step(x, y, where="post", linewidth=2, label=f"{label} (AUC@{max_error:g} {auc:.2f})")
    ax.set(xlim=(0, max_error), ylim=(-0.02, 1.02), xlabel="NME_IOD (%)", ylabel="fraction of images",
           title=f"Cumulative error distribution ({len(per_image)} images)")
    if not (per_image <= max_error).any():  # the curve lies flat on the axis
        ax.text(max_error / 2, 0.5, f"no image at or below {max_error:g} %:\nall {len(per_image)} fail",
                ha="center", va="center", fontsize=12, color="darkred")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return fig


def plot_training_curves(metrics_jsonl: Path, out_png: Path, title: str | None = None) -> Figure:
    """Training losses, learning rate and validation NME_IOD per epoch from train_simple's
    metrics.jsonl (the last line of an epoch wins, as after a resume), under `title` (default:
    the run folder's name); returns the figure."""
    records = {record["epoch"]: record for record in MetricsLog(metrics_jsonl).read()}
    epochs = sorted(records)
    fig = Figure(figsize=(12, 3.8), dpi=100, layout="tight")
    fig.suptitle(title or Path(metrics_jsonl).parent.name)
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
    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 6, not 6x10^0, on the log axis
    loss_ax.yaxis.set_major_formatter(plain)
    loss_ax.yaxis.set_minor_formatter(plain)
    for ax in (loss_ax, lr_ax, nme_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
        ax.grid(alpha=0.3)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    return fig
