"""Landmark metrics in original-image pixels: NME_IOD (DogFLW's), failure rate, AUC, PCK, per landmark
and per region; pure NumPy."""
from __future__ import annotations

import warnings

import numpy as np

from basics.errors import DataError

FAILURE_THRESHOLD = 10.0  # NME_IOD percent above which an image counts as a failure


PCK_THRESHOLDS = (0.05, 0.10)  # landmark error as a fraction of the inter-ocular distance


def rank_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of `scores` for telling positives from negatives (ties count half)."""
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + ends - 1) / 2)[inverse.ravel()]  # 0-based, ties share their mean rank
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    return float((ranks[positive].sum() - n_pos * (n_pos - 1) / 2) / (n_pos * n_neg))


def normalised_offsets(pred: np.ndarray, gt: np.ndarray, iod_pair: list[int], labelled: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Prediction minus truth in inter-ocular distances (N, K, 2), NaN where a landmark is not
    labelled or its image cannot be normalised; which images can (both iod_pair landmarks
    labelled and apart); and the images whose pair is labelled but coincides."""
    pair_labelled = labelled[:, iod_pair[0]] & labelled[:, iod_pair[1]]
    iod = np.linalg.norm(gt[:, iod_pair[0]] - gt[:, iod_pair[1]], axis=-1)
    valid = pair_labelled & (iod > 1e-6)
    offsets = (pred - gt) / np.where(valid, iod, np.nan)[:, None, None]
    return np.where(labelled[..., None], offsets, np.nan), valid, pair_labelled & ~valid


def nme_by_box_size(per_image: np.ndarray, boxes: np.ndarray) -> dict[str, float]:
    """Mean NME_IOD of the images in each third of the face-box sizes (sqrt of the area)."""
    box_side = np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    edges = np.quantile(box_side, [0, 1 / 3, 2 / 3, 1])
    bins = np.clip(np.searchsorted(edges, box_side, side="right") - 1, 0, 2)
    return {f"{name} ({edges[i]:.0f}-{edges[i + 1]:.0f} px)": float(per_image[bins == i].mean())
            for i, name in enumerate(("small", "medium", "large")) if (bins == i).any()}


def compute_metrics(pred: np.ndarray, gt: np.ndarray, iod_pair: list[int], boxes: np.ndarray | None = None,
                    keypoint_names: list[str] | None = None, regions: dict | None = None,
                    confidence: np.ndarray | None = None, labelled: np.ndarray | None = None) -> dict:
    """Metrics for predictions and ground truth (N, K, 2) in the same pixels.

    Landmarks not `labelled` (N, K; COCO visibility 0) are left out of every figure and counted
    in `unlabelled_landmarks`. Images whose inter-ocular distance is zero, or whose iod_pair is
    not labelled, cannot be normalised: they are left out and counted (`excluded_zero_iod`,
    `excluded_iod_unlabelled`). `per_image_nme` lists each image's NME_IOD in input order (None
    for those left out).
    """
    labelled = np.ones(gt.shape[:2], dtype=bool) if labelled is None else labelled
    offsets, valid, zero_iod = normalised_offsets(pred, gt, iod_pair, labelled)
    if not valid.any():
        raise DataError(f"no image has a usable inter-ocular distance (landmarks {iod_pair[0]} and "
                        f"{iod_pair[1]} labelled and apart): NME_IOD cannot be computed")
    offsets, scored = offsets[valid], labelled[valid]
    errors = np.linalg.norm(offsets, axis=-1)  # (N', K), NaN where not labelled
    per_image = np.nanmean(errors, axis=1) * 100
    thresholds = np.linspace(0, FAILURE_THRESHOLD, 1001)
    ced = (per_image[None, :] <= thresholds[:, None]).mean(axis=1)
    metrics = {
        "nme_iod": float(per_image.mean()),
        "num_images": int(valid.sum()),
        "excluded_zero_iod": int(zero_iod.sum()),
        "excluded_iod_unlabelled": int((~valid & ~zero_iod).sum()),
        "unlabelled_landmarks": int((~scored).sum()),
        f"failure_rate_{FAILURE_THRESHOLD:g}": float((per_image > FAILURE_THRESHOLD).mean() * 100),
        f"auc_{FAILURE_THRESHOLD:g}": float((ced[1:] + ced[:-1]).mean() / 2 * 100),  # uniform steps
    }
    for t in PCK_THRESHOLDS:
        metrics[f"pck_{t:g}"] = float((errors[scored] < t).mean() * 100)
    # a systematic offset (coordinate convention, labels that are not mirror-consistent) shows here
    metrics["mean_error_x"], metrics["mean_error_y"] = (float(v) for v in offsets[scored].mean(axis=0) * 100)
    if confidence is not None:  # does a low confidence flag a landmark that is off by more than 10 % IOD?
        off = errors[scored] > FAILURE_THRESHOLD / 100
        metrics["confidence_auroc_10"] = rank_auroc(-confidence[valid][scored], off)
    names = keypoint_names or [str(i) for i in range(gt.shape[1])]
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a landmark never labelled has no mean: None
        metrics["per_landmark_nme"] = {n: float(e) for n, e in zip(names, np.nanmean(errors, axis=0) * 100)}
        if regions:
            metrics["per_region_nme"] = {r: float(np.nanmean(errors[:, idx]) * 100) for r, idx in regions.items()}
    per_image_all = np.full(len(gt), np.nan)
    per_image_all[valid] = per_image
    metrics["per_image_nme"] = [None if np.isnan(e) else float(e) for e in per_image_all]  # input order
    if boxes is not None:
        metrics["nme_by_box_size"] = nme_by_box_size(per_image, boxes[valid])
    return metrics


def format_summary(metrics: dict) -> str:
    """The headline metrics on a few lines."""
    lines = [f"NME_IOD {metrics['nme_iod']:.3f}  ({metrics['num_images']} faces, "
             f"failure rate@{FAILURE_THRESHOLD:g} {metrics[f'failure_rate_{FAILURE_THRESHOLD:g}']:.2f}%, "
             f"AUC@{FAILURE_THRESHOLD:g} {metrics[f'auc_{FAILURE_THRESHOLD:g}']:.2f}, "
             + ", ".join(f"PCK@{t:g} {metrics[f'pck_{t:g}']:.1f}%" for t in PCK_THRESHOLDS) + ")"]
    lines.append(f"mean signed error (x, y): {metrics['mean_error_x']:+.2f}, {metrics['mean_error_y']:+.2f} % IOD"
                 + (f"; confidence AUROC for landmarks off by > {FAILURE_THRESHOLD:g} % IOD: "
                    f"{metrics['confidence_auroc_10']:.3f}" if "confidence_auroc_10" in metrics else ""))
    for key in ("nme_by_box_size", "per_region_nme"):
        if key in metrics:
            lines.append(f"{key}: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics[key].items()))
    if "faces_missed" in metrics:
        lines.append(f"with the detector's boxes (score >= {metrics['score_threshold']:g}): {metrics['faces_missed']} "
                     f"faces missed; failure rate@{FAILURE_THRESHOLD:g} counting them "
                     f"{metrics[f'failure_rate_{FAILURE_THRESHOLD:g}_with_missed']:.2f}%; "
                     f"{metrics['detections_per_image']:.2f} detections per image, {metrics['unmatched_detections']} "
                     f"matched no annotated face (in {len(metrics['images_with_unmatched_detections'])} images)")
    if metrics.get("unlabelled_landmarks"):
        lines.append(f"{metrics['unlabelled_landmarks']} landmarks not labelled (COCO visibility 0) were left out")
    return "\n".join(lines)
