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
from pathlib import Path

import cv2
import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from basics.cli import CommandLineParser, bounded_int, non_negative_int
from basics.coco_files import read_meta_file
from basics.errors import DataError, UsageError, reports_errors
from basics.geometry import box_iou, greedy_match
from basics.images import read_image
from basics.metrics import FAILURE_THRESHOLD, format_summary
from basics.outputs import check_output_file, check_output_folder, check_outputs, write_json
from basics.visualize import draw_landmarks, plot_ced
from dataset import LandmarkDataset, collate_readable
from inference import FaceLandmarker, add_landmarker_flags, evaluate_loader, landmarker_from_args, scored_metrics

MATCH_IOU = 0.3  # with --detector, the least overlap of a detected face with the annotated one


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


def build_parser() -> CommandLineParser:
    parser = CommandLineParser(description=__doc__)
    add_landmarker_flags(parser, "best.pth or last.pth from train_simple.py",
                         "best.pth of tools/train_detector.py: crop around the face boxes it finds instead of the "
                         "annotated ones (faces it misses are counted)", boxes_given=True)
    parser.add_argument("--ann", required=True, help="COCO keypoints file to score against")
    parser.add_argument("--data-root", help="folder the annotation's file names are relative to "
                        "(default: the one recorded by the converter)")
    parser.add_argument("--meta", help="keypoint metadata JSON for a COCO file whose category lacks flip_index "
                        "or iod_pair (the converter's --meta format)")
    parser.add_argument("--batch-size", type=bounded_int(1, 65_536), default=64, help="crops per forward pass")
    parser.add_argument("--num-workers", type=bounded_int(0, 256), default=2, help="DataLoader worker processes")
    parser.add_argument("--out", help="write all metrics to this JSON file")
    parser.add_argument("--vis", type=non_negative_int, default=0, metavar="N",
                        help="write ced.png and overlays of the N worst and N random images")
    parser.add_argument("--vis-dir", help="folder for --vis (default: vis/ beside --out or the checkpoint)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out and the pictures in "
                        "--vis-dir")
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
    check_outputs({"--checkpoint": args.checkpoint, "--detector": args.detector, "--ann": args.ann,
                   "--meta": args.meta}, {"--out": args.out, "--vis-dir": args.vis_dir if args.vis else None},
                  args.overwrite, folders=("--vis-dir",))
    if args.out:
        check_output_file(args.out, "--out")
    if args.vis:
        check_output_folder(args.vis_dir, "--vis-dir")
    landmarker = landmarker_from_args(args)
    predictor = landmarker.predictor
    crop, model = predictor.crop, predictor.model
    dataset = LandmarkDataset(args.ann, args.data_root, crop.input_size, padding=crop.box_padding,
                              meta_override=read_meta_file(args.meta) if args.meta else None)
    if dataset.meta["num_keypoints"] != model.config["num_keypoints"]:
        raise DataError(f"{args.ann}: has {dataset.meta['num_keypoints']} landmarks per face, the "
                        f"checkpoint {args.checkpoint} predicts {model.config['num_keypoints']}")
    if args.detector:
        metrics, pred = evaluate_with_detector(landmarker, dataset, args.batch_size)
    else:
        loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=args.num_workers,
                            pin_memory=predictor.device.type == "cuda", collate_fn=collate_readable)
        metrics, pred = evaluate_loader(model, loader, predictor.device, args.flip_test)
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


if __name__ == "__main__":
    sys.exit(main())
