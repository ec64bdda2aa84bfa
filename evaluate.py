"""Score a checkpoint on a COCO keypoints file: NME_IOD and friends, in original-image pixels.

    python evaluate.py --checkpoint work_dirs/RUN/best.pth --data-root DIR --ann FILE \\
        [--flip-test] [--out metrics.json] [--vis 20]

--vis N writes ced.png (cumulative error distribution, AUC@10 in the legend) and overlays of
the N worst and N random images (truth green, prediction red, errors yellow) into --vis-dir.

NME_IOD (percent): per image, the mean landmark error divided by the distance between the two
iod_pair landmarks (the outer eye corners), x100, averaged over images. This is the number
the DogFLW paper reports (6.52 for its best ensemble).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader
from tqdm import tqdm

from coco_files import read_meta_file
from dataset import LandmarkDataset, collate_readable
from images import read_image
from errors import CommandLineParser, DataError, UsageError, bounded_int, fraction, non_negative_int, reports_errors
from geometry import box_iou, greedy_match
from inference import FaceDetector, FaceLandmarker, LandmarkPredictor, predict_crops
from model import LandmarkModel
from outputs import check_output_file, check_output_folder, write_json
from visualize import plot_ced, write_visualisations

FAILURE_THRESHOLD = 10.0  # NME_IOD percent above which an image counts as a failure
MATCH_IOU = 0.3  # with --detector, the least overlap of a detected face with the annotated one
PCK_THRESHOLDS = (0.05, 0.10)  # landmark error as a fraction of the inter-ocular distance


@torch.no_grad()
def predict_dataset(model: LandmarkModel, loader: DataLoader, device: torch.device,
                    flip_index: list[int] | None = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Landmarks (N, K, 2) in original pixels and confidences (N, K) in dataset order, NaN
    where the image could not be read, and the paths of those images."""
    model.eval()
    num_keypoints = model.config["num_keypoints"]
    points = np.full((len(loader.dataset), num_keypoints, 2), np.nan)
    confidence = np.full((len(loader.dataset), num_keypoints), np.nan)
    unreadable = []
    for batch in loader:
        unreadable += batch["unreadable"]
        if "image" not in batch:
            continue
        index = batch["index"].numpy()
        images = batch["image"].to(device, non_blocking=True).float()
        points[index], confidence[index] = predict_crops(model, images, batch["affine"].numpy(), flip_index)
    return points, confidence, unreadable


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


def gather_predictions(pred: np.ndarray, confidence: np.ndarray,
                       unreadable: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Under DDP each rank predicts its share of the images (NaN rows elsewhere): combine them on
    every rank. In a single process, returns the arguments."""
    if not (dist.is_available() and dist.is_initialized()):
        return pred, confidence, unreadable
    shares = [None] * dist.get_world_size()
    dist.all_gather_object(shares, (pred, confidence, unreadable))
    for share_pred, share_confidence, _ in shares:
        mine = np.isfinite(share_pred).all(axis=(1, 2))
        pred[mine], confidence[mine] = share_pred[mine], share_confidence[mine]
    return pred, confidence, sorted(path for *_, paths in shares for path in paths)


def evaluate(model: LandmarkModel, loader: DataLoader, device: torch.device,
             flip_test: bool = False) -> tuple[dict, np.ndarray]:
    """Metrics and predictions (original pixels, NaN rows for unreadable images) of a model on an
    evaluation loader. Unreadable images are left out of the metrics and listed in them."""
    dataset = loader.dataset
    meta = dataset.meta
    pred, confidence, unreadable = predict_dataset(model, loader, device, meta["flip_index"] if flip_test else None)
    pred, confidence, unreadable = gather_predictions(pred, confidence, unreadable)
    return scored_metrics(dataset, pred, confidence, unreadable), pred


def scored_metrics(dataset: LandmarkDataset, pred: np.ndarray, confidence: np.ndarray, unreadable: list[str]) -> dict:
    """compute_metrics over the images with a prediction (rows of `pred` that are not NaN)."""
    meta, scored = dataset.meta, np.isfinite(pred).all(axis=(1, 2))
    if not scored.any():
        raise DataError(f"no image of {dataset.ann_file} got a prediction" +
                        (f" ({len(unreadable)} could not be read, e.g. {unreadable[0]})" if unreadable else ""))
    gt, boxes, labelled = (np.stack([r[key] for r in dataset.records])[scored]
                           for key in ("keypoints", "box", "labelled"))
    metrics = compute_metrics(pred[scored], gt, meta["iod_pair"], boxes, meta["keypoints"], meta["regions"],
                              confidence[scored], labelled)
    metrics["unreadable_images"] = unreadable
    return metrics


def evaluate_with_detector(landmarker: FaceLandmarker, dataset: LandmarkDataset, batch_size: int
                           ) -> tuple[dict, np.ndarray]:
    """Metrics with the face boxes the detector finds instead of the annotated ones, as for a user's
    new photos. Each annotated face takes the landmarks of the detected face whose box overlaps
    its box most (IoU >= MATCH_IOU, each detection matched to one face at most); a face without one
    is missed: left out of NME_IOD, counted in `faces_missed` and a failure in
    `failure_rate_10_with_missed`. Detections matched to no face are counted too
    (`unmatched_detections`, and `detections_per_image`)."""
    pred = np.full((len(dataset), dataset.meta["num_keypoints"], 2), np.nan)
    confidence = np.full(pred.shape[:2], np.nan)
    faces_of: dict[str, list[int]] = {}
    for index, record in enumerate(dataset.records):
        faces_of.setdefault(record["file"], []).append(index)
    files, unreadable, detected, unmatched = list(faces_of), [], 0, {}
    for start in tqdm(range(0, len(files), batch_size), desc="detect + landmarks", unit="batch", dynamic_ncols=True):
        chunk, images = [], []
        for file in files[start:start + batch_size]:
            try:
                images.append(read_image(dataset.data_root / file))
                chunk.append(file)
            except DataError:
                unreadable.append(str(dataset.data_root / file))
        for file, found in zip(chunk, landmarker.faces(images)):
            annotated = np.stack([dataset.records[i]["box"] for i in faces_of[file]])
            overlap = box_iou(annotated, np.stack([f.box for f in found])) if found else np.zeros((len(annotated), 0))
            pairs = greedy_match(overlap, MATCH_IOU)
            for row, column in pairs:
                index = faces_of[file][row]
                pred[index], confidence[index] = found[column].landmarks, found[column].confidence
            detected += len(found)
            if len(found) > len(pairs):
                unmatched[file] = len(found) - len(pairs)
    readable = [file for file in files if str(dataset.data_root / file) not in set(unreadable)]
    missed = [r["file"] for r, p in zip(dataset.records, pred) if r["file"] in set(readable) and np.isnan(p).all()]
    if len(missed) == sum(len(faces_of[f]) for f in readable):
        raise DataError(f"the detector found none of the {len(missed)} faces of {dataset.ann_file} at "
                        f"--score-threshold {landmarker.threshold:g}")
    metrics = scored_metrics(dataset, pred, confidence, sorted(unreadable))
    metrics.update(faces_missed=len(missed), missed_images=missed, score_threshold=landmarker.threshold,
                   detections_per_image=detected / len(readable), unmatched_detections=sum(unmatched.values()),
                   images_with_unmatched_detections=sorted(unmatched))
    failures = metrics[f"failure_rate_{FAILURE_THRESHOLD:g}"] / 100 * metrics["num_images"]
    metrics[f"failure_rate_{FAILURE_THRESHOLD:g}_with_missed"] = (failures + len(missed)) / (
        metrics["num_images"] + len(missed)) * 100
    return metrics, pred


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


def build_parser() -> CommandLineParser:
    parser = CommandLineParser(description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="best.pth or last.pth from train_simple.py")
    parser.add_argument("--ann", required=True, help="COCO keypoints file to score against")
    parser.add_argument("--data-root", help="folder the annotation's file names are relative to "
                        "(default: the one recorded by the converter)")
    parser.add_argument("--meta", help="keypoint metadata JSON for a COCO file whose category lacks flip_index "
                        "or iod_pair (the converter's --meta format)")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--batch-size", type=bounded_int(1, 65_536), default=64, help="crops per forward pass")
    parser.add_argument("--num-workers", type=bounded_int(0, 256), default=2, help="DataLoader worker processes")
    parser.add_argument("--flip-test", action="store_true", help="average with the mirrored crop's prediction")
    parser.add_argument("--detector", help="best.pth of tools/train_detector.py: crop around the face boxes it "
                        "finds instead of the annotated ones (faces it misses are counted)")
    parser.add_argument("--score-threshold", type=fraction, default=0.5, help="with --detector, the least score "
                        "of a face")
    parser.add_argument("--refine", type=bounded_int(0, 10), default=0, metavar="N", help="with --detector, cut "
                        "each face's crop N more times around the landmarks placed, padded as the training boxes are")
    parser.add_argument("--out", help="write all metrics to this JSON file")
    parser.add_argument("--vis", type=non_negative_int, default=0, metavar="N",
                        help="write ced.png and overlays of the N worst and N random images")
    parser.add_argument("--vis-dir", help="folder for --vis (default: vis/ beside --out or the checkpoint)")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    if args.refine and not args.detector:
        raise UsageError("--refine recuts the detector's face boxes: give --detector (annotated boxes are scored as given)")
    if args.vis and args.vis_dir is None:
        args.vis_dir = str(Path(args.out or args.checkpoint).parent / "vis")
    return args


def write_pictures(args: argparse.Namespace, metrics: dict, dataset: LandmarkDataset, pred: np.ndarray) -> None:
    """--vis: the CED plot and overlays of the worst and of random images."""
    vis_dir = Path(args.vis_dir)
    label = Path(args.checkpoint).parent.name + (", flip test" if args.flip_test else "")
    plot_ced(metrics, FAILURE_THRESHOLD, vis_dir / "ced.png", label)
    per_image = np.full(len(dataset), np.nan)
    per_image[np.isfinite(pred).all(axis=(1, 2))] = np.array(metrics["per_image_nme"], dtype=float)
    write_visualisations(dataset, pred, per_image, args.vis, vis_dir)
    print(f"wrote {vis_dir / 'ced.png'}")


@reports_errors
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out:
        check_output_file(args.out, "--out")
    if args.vis:
        check_output_folder(args.vis_dir, "--vis-dir")
    predictor = LandmarkPredictor(args.checkpoint, args.device, args.flip_test)
    crop, model = predictor.crop, predictor.model
    dataset = LandmarkDataset(args.ann, args.data_root, crop.input_size, padding=crop.box_padding,
                              meta_override=read_meta_file(args.meta) if args.meta else None)
    if dataset.meta["num_keypoints"] != model.config["num_keypoints"]:
        raise DataError(f"{args.ann}: has {dataset.meta['num_keypoints']} landmarks per face, the "
                        f"checkpoint {args.checkpoint} predicts {model.config['num_keypoints']}")
    if args.detector:
        landmarker = FaceLandmarker(predictor, FaceDetector(args.detector, args.device), args.score_threshold,
                                    args.refine)
        metrics, pred = evaluate_with_detector(landmarker, dataset, args.batch_size)
    else:
        loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers,
                            pin_memory=predictor.device.type == "cuda", collate_fn=collate_readable)
        metrics, pred = evaluate(model, loader, predictor.device, args.flip_test)
    metrics.update(checkpoint=str(args.checkpoint), ann=str(args.ann), flip_test=args.flip_test,
                   detector=args.detector, refine=args.refine, epoch=predictor.checkpoint.get("epoch"))
    for path in metrics["unreadable_images"]:
        print(f"warning: {path}: cannot read image; left out of the metrics", file=sys.stderr)
    print(format_summary(metrics))
    if args.out:
        write_json(args.out, metrics, indent=1)
        print(f"wrote {args.out}")
    if args.vis:
        write_pictures(args, metrics, dataset, pred)
    if metrics["unreadable_images"]:
        raise DataError(f"{len(metrics['unreadable_images'])} of {len(dataset)} images could not be read "
                        "(listed above); the metrics cover the rest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
