"""Pictures: landmarks drawn on images, the cumulative error distribution and training curves.

Used by evaluate.py (overlays, CED), train_simple.py (curves.png at the end of a run) and the
prediction tools (overlays of new photos).
"""
from __future__ import annotations

import math

from pathlib import Path

import cv2
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from basics.run_utils import MetricsLog

OVERLAY_MIN_SIDE = 800  # overlays of small images are enlarged to this long side before drawing


class Drawing:
    """An RGB canvas to draw on in image pixels: a copy of the image, enlarged (when `enlarge`) to
    OVERLAY_MIN_SIDE on its long side so that dozens of landmarks stay apart, with mark sizes
    that follow the face size `face_side` (image pixels)."""

    def __init__(self, image: np.ndarray, face_side: float, enlarge: bool = True):
        self.zoom = max(1.0, OVERLAY_MIN_SIDE / max(image.shape[:2])) if enlarge else 1.0
        self.canvas = (cv2.resize(image, None, fx=self.zoom, fy=self.zoom, interpolation=cv2.INTER_CUBIC)
                       if self.zoom > 1 else image.copy())
        self.radius = max(2, round(face_side * self.zoom / 100))
        self.width = max(1, round(face_side * self.zoom / 300))

    def at(self, point: np.ndarray) -> tuple[int, int]:
        """Image pixels (centres at integers) to canvas pixels."""
        return tuple(int(v) for v in np.round((np.asarray(point) + 0.5) * self.zoom - 0.5))

    def box(self, box: np.ndarray, colour=(40, 120, 255)) -> None:
        cv2.rectangle(self.canvas, self.at(box[:2]), self.at(box[2:]), colour, self.width, cv2.LINE_AA)

    def points(self, points: np.ndarray, colour, grow: int = 0) -> None:
        """Filled discs at the points; points that are not finite (not found, hidden) are skipped."""
        for point in points[np.isfinite(points).all(axis=-1)]:
            cv2.circle(self.canvas, self.at(point), self.radius + grow, colour, -1, cv2.LINE_AA)

    def text(self, text: str, origin: tuple[int, int] | None = None, scale: float | None = None) -> None:
        """White text on a dark outline, at the top left unless `origin` (canvas pixels) says."""
        scale = scale or max(self.canvas.shape[:2]) / 900
        origin = origin or (round(10 * scale), round(34 * scale))
        for colour, width in (((0, 0, 0), max(3, round(6 * scale))), ((255, 255, 255), max(1, round(2 * scale)))):
            cv2.putText(self.canvas, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, width, cv2.LINE_AA)


def draw_landmarks(image: np.ndarray, pred: np.ndarray, gt: np.ndarray | None = None,
                   box: np.ndarray | None = None, text: str | None = None) -> np.ndarray:
    """An RGB overlay (enlarged, see Drawing): ground truth (green), predictions (red), error lines
    (yellow), the face box (blue) and a caption."""
    face = max(box[2] - box[0], box[3] - box[1]) if box is not None else max(image.shape[:2]) / 2
    drawing = Drawing(image, face)
    if box is not None:
        drawing.box(box)
    if gt is not None:
        for p, g in zip(pred, gt):
            cv2.line(drawing.canvas, drawing.at(p), drawing.at(g), (255, 220, 0), drawing.width, cv2.LINE_AA)
        drawing.points(gt, (0, 200, 0), grow=1)
    drawing.points(pred, (230, 0, 0))
    if text:
        drawing.text(text)
    return drawing.canvas


def draw_faces(image: np.ndarray, faces: list, enlarge: bool = True) -> np.ndarray:
    """An RGB picture of found faces (inference.Face): each box (blue) labelled with its id (in a
    video) or number and the detector's score, and its landmarks (red)."""
    sides = [max(f.box[2] - f.box[0], f.box[3] - f.box[1]) for f in faces if np.isfinite(f.box).all()]
    sides = sides or [max(image.shape[:2]) / 2]
    drawing = Drawing(image, float(np.median(sides)), enlarge)
    for number, face in enumerate(faces, start=1):
        drawing.box(face.box)
        drawing.points(face.landmarks, (230, 0, 0))
        label = f"{'id ' + str(face.face_id) if face.face_id is not None else '#' + str(number)}"
        label += f" {face.score:.2f}" if np.isfinite(face.score) else ""
        x, y = drawing.at(face.box[:2])
        drawing.text(label, (x, max(12, y - 6)), scale=max(0.4, drawing.radius / 5))
    return drawing.canvas


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
        if key in records[epochs[0]]:  # an epoch resumed after its last step has no loss of its own: a gap
            loss_ax.plot(epochs, [records[e].get(key, math.nan) for e in epochs], marker=".",
                         label=key.removeprefix("train_"))
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
