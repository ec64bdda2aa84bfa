"""How large are the faces the detector trains on, against those it is scored on, and how well does
it box each size? Face side (the box's longer side) over the image's short side: quantiles for the
val images and for training scenes composed with the given scene augmentation (two epochs of
every other image); then, with a detector, its best-scoring box in each val image against the
annotated one (side ratios and IoU), by thirds of face width over image width.

    python docs/measure/face_sizes.py data/dogflw_mini/annotations $DOGFLW_MINI \
        [--detector DET.pth] [--mosaic-prob P] [--zoom-prob P]
"""
import argparse

import numpy as np
import torch

import _repo  # the repository on sys.path: docs/measure/_repo.py
from basics.geometry import box_iou
from detector.model import detect_faces, load_detector
from detector.scenes import FaceBoxes, SceneAugmentation

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def relative_sides(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Each face box's longer side over its image's short side."""
    return np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / min(height, width)


def report_sizes(name: str, sides: np.ndarray) -> None:
    print(f"{name}: face side / short side, quantiles {QUANTILES}: {np.round(np.quantile(sides, QUANTILES), 2)}; "
          f"above 0.6: {np.mean(sides > 0.6):.3f}")


def report_detector(path: str, val: FaceBoxes, images: list[np.ndarray]) -> None:
    model, _ = load_detector(path)
    rows = []  # width ratio, height ratio, IoU, face width / image width
    for entry, image in zip(val.images, images):
        (boxes, _), = detect_faces(model, [image], torch.device("cpu"))
        truth = entry["boxes"][0]
        if not len(boxes):
            rows.append((0.0, 0.0, 0.0, (truth[2] - truth[0]) / image.shape[1]))
            continue
        found = boxes[0]
        rows.append(((found[2] - found[0]) / (truth[2] - truth[0]), (found[3] - found[1]) / (truth[3] - truth[1]),
                     box_iou(found[None], truth[None])[0, 0], (truth[2] - truth[0]) / image.shape[1]))
    rows = np.array(rows)
    print(f"{path}, best box in each val image: width {rows[:, 0].mean():.3f}, height {rows[:, 1].mean():.3f} "
          f"of the annotated box, IoU mean {rows[:, 2].mean():.3f}")
    for third in np.array_split(np.argsort(rows[:, 3]), 3):
        part = rows[third]
        print(f"  faces {part[:, 3].min():.2f}-{part[:, 3].max():.2f} of the image width: width "
              f"{part[:, 0].mean():.3f}, height {part[:, 1].mean():.3f}, IoU {part[:, 2].mean():.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ann_root")
    parser.add_argument("data_root")
    parser.add_argument("--detector")
    parser.add_argument("--mosaic-prob", type=float, default=SceneAugmentation.mosaic_prob)
    parser.add_argument("--zoom-prob", type=float, default=SceneAugmentation.zoom_prob)
    args = parser.parse_args()
    val = FaceBoxes(f"{args.ann_root}/val.json", args.data_root)
    images = [val.read(index) for index in range(len(val))]  # read once, for the sizes and the detector
    report_sizes("val images", np.concatenate([relative_sides(entry["boxes"], *image.shape[:2])
                                               for entry, image in zip(val.images, images)]))
    scenes = FaceBoxes(f"{args.ann_root}/train.json", args.data_root,
                       SceneAugmentation(mosaic_prob=args.mosaic_prob, zoom_prob=args.zoom_prob))
    items = (scenes[(i, epoch)] for i in range(0, len(scenes), 2) for epoch in range(2))
    sides = [relative_sides(item["target"]["boxes"].numpy(), *item["image"].shape[1:]) for item in items]
    report_sizes(f"training scenes (--mosaic-prob {args.mosaic_prob} --zoom-prob {args.zoom_prob})",
                 np.concatenate(sides))
    if args.detector:
        report_detector(args.detector, val, images)


if __name__ == "__main__":
    main()
