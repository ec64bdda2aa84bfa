"""Landmarks for new images: the one path from an image to its faces and their landmarks.

`FaceLandmarker` finds the faces (face detector, given boxes, or the whole image) and places
the landmarks on each; tools/predict.py (photos and videos), tools/extract_frames.py and evaluate.py call it, with the
command-line flags of `add_landmarker_flags` and the landmarker `landmarker_from_args` builds from
them. Crops are cut exactly as in training, with the crop geometry the checkpoint carries
(geometry.CropGeometry).
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from basics.cli import bounded_int, fraction
from basics.errors import DataError
from basics.geometry import apply_affine, crop_affine, from_pixel_edges, invert_affine, warp_image
from basics.metrics import compute_metrics
from basics.run_utils import pick_device
from dataset import LandmarkDataset
from detector.model import detect_faces, load_detector
from model import LandmarkModel, load_landmark_model

MAX_BATCH = 64  # face crops per forward pass of the landmark model


@torch.no_grad()
def predict_crops(model: LandmarkModel, images: torch.Tensor, affines: np.ndarray,
                  flip_index: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Landmarks in original-image pixels (B, K, 2) and confidences (B, K) for float crops.

    `affines` (B, 2, 3) map original pixels to crop pixels; flip_index turns on the flip test
    (LandmarkModel.predict).
    """
    points, confidence = model.predict(images, flip_index)
    return apply_affine(points.cpu().double().numpy(), invert_affine(affines)), confidence.cpu().numpy()


class LandmarkPredictor:
    """A landmark checkpoint ready for new images: `landmarks(images, boxes)` places the landmarks
    of one face box per image, in that image's pixels."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", flip_test: bool = False):
        self.model, self.checkpoint, self.crop = load_landmark_model(checkpoint, map_location="cpu")
        self.path = Path(checkpoint)
        self.device = pick_device(device)
        self.model.to(self.device)
        self.meta = self.checkpoint["keypoint_meta"]
        self.flip_index = self.meta["flip_index"] if flip_test else None

    def landmarks(self, images: list[np.ndarray], boxes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks (N, K, 2) in original pixels and confidences (N, K) for N (RGB image, face box
        x1, y1, x2, y2) pairs, predicted in batches of at most MAX_BATCH crops."""
        size, points, confidence = self.crop.input_size, [], []
        for start in range(0, len(images), MAX_BATCH):
            affines = np.stack([self.crop.affine(box) for box in boxes[start:start + MAX_BATCH]])
            crops = np.stack([warp_image(image, affine, size)
                              for image, affine in zip(images[start:start + MAX_BATCH], affines)])
            crops = torch.from_numpy(np.ascontiguousarray(crops.transpose(0, 3, 1, 2))).to(self.device).float()
            batch_points, batch_confidence = predict_crops(self.model, crops, affines, self.flip_index)
            points.append(batch_points)
            confidence.append(batch_confidence)
        return np.concatenate(points), np.concatenate(confidence)


@dataclass
class Face:
    """A face in an image: its box (x1, y1, x2, y2), the detector's score (1 for a box that was
    given), its landmarks (K, 2) in image pixels and their confidences (K,); in a video, the id of
    the track it belongs to and, for a face followed since its last detection, that detected face
    (`anchor`), whose box-to-landmarks relation the followed boxes keep."""
    box: np.ndarray
    score: float
    landmarks: np.ndarray
    confidence: np.ndarray
    face_id: int | None = None
    anchor: "Face | None" = None


class FaceDetector:
    """A face-detector checkpoint of tools/train_detector.py ready for images."""

    def __init__(self, checkpoint: str | Path, device: str = "auto"):
        self.model, self.checkpoint = load_detector(checkpoint, map_location="cpu")
        self.device = pick_device(device)
        self.model.to(self.device)

    def boxes(self, images: list[np.ndarray], threshold: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """The face boxes (N, 4) and scores (N,) of each image that score at least `threshold`."""
        found = detect_faces(self.model, images, self.device)
        return [(boxes[scores >= threshold], scores[scores >= threshold]) for boxes, scores in found]


class FaceLandmarker:
    """Image in, faces with landmarks out: the one path that prediction, `evaluate.py --detector`
    and the video loop share. Faces come from given boxes, else from the detector (those scoring
    at least `threshold`), else the whole image is taken as the face; the landmark model then
    places the landmarks of all faces of a batch of images in one batch. Each of `refine` more
    passes cuts the crops again around the landmarks placed, padded as the model's training boxes
    are (CropGeometry.box_around_landmarks), for boxes that sit unlike those (a detector's); a
    face keeps the box it was found with. `max_faces` > 0 keeps the detector's best that many
    faces of an image (1 for the videos of one dog)."""

    def __init__(self, predictor: LandmarkPredictor, detector: FaceDetector | None = None, threshold: float = 0.5,
                 refine: int = 0, max_faces: int = 0):
        if refine and predictor.crop.face_padding is None:
            raise DataError(f"{predictor.path}: records no padding of its training boxes around their landmarks "
                            "(trained before refinement existed), so its boxes cannot be refined; train it again")
        self.predictor, self.detector, self.threshold, self.refine = predictor, detector, threshold, refine
        self.max_faces = max_faces

    def find_boxes(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Face boxes and scores per image: the detector's, or the whole image (score 1) without one."""
        if self.detector is not None:
            keep = self.max_faces or None  # detections come best first; 0: all of them
            return [(boxes[:keep], scores[:keep]) for boxes, scores in self.detector.boxes(images, self.threshold)]
        return [(from_pixel_edges(np.array([[0.0, 0.0, image.shape[1], image.shape[0]]])), np.ones(1))
                for image in images]

    def faces(self, images: list[np.ndarray], boxes: list[np.ndarray | None] | None = None) -> list[list[Face]]:
        """The faces of each image. `boxes[i]` (M, 4), where given, are image i's faces (score 1)."""
        boxes = boxes or [None] * len(images)
        missing = [i for i, given in enumerate(boxes) if given is None]
        found = dict(zip(missing, self.find_boxes([images[i] for i in missing]))) if missing else {}
        per_image = [(given, np.ones(len(given))) if given is not None else found[i] for i, given in enumerate(boxes)]
        flat = [(i, box, score) for i, (image_boxes, scores) in enumerate(per_image)
                for box, score in zip(image_boxes, scores)]
        result: list[list[Face]] = [[] for _ in images]
        if flat:
            face_images = [images[i] for i, _, _ in flat]
            points, confidence = self.predictor.landmarks(face_images, [b for _, b, _ in flat])
            for _ in range(self.refine):
                points, confidence = self.predictor.landmarks(
                    face_images, [self.predictor.crop.box_around_landmarks(p) for p in points])
            for (i, box, score), face_points, face_confidence in zip(flat, points, confidence):
                result[i].append(Face(np.asarray(box, dtype=np.float64), float(score), face_points, face_confidence))
        return result


REFINE_HELP = "cut each face's crop N more times around the landmarks placed, padded as the training boxes are"


def add_landmarker_flags(parser: argparse.ArgumentParser, checkpoint_help: str, detector_help: str,
                         boxes_given: bool = False) -> None:
    """The flags of a FaceLandmarker (read by `landmarker_from_args`): --checkpoint, --detector,
    --score-threshold, --max-faces, --flip-test, --refine and --device. `boxes_given`: the faces have boxes
    of their own (evaluate.py's annotated ones), so the detector's flags apply with --detector only."""
    parser.add_argument("--checkpoint", required=True, help=checkpoint_help)
    parser.add_argument("--detector", help=detector_help)
    parser.add_argument("--score-threshold", type=fraction, default=0.5,
                        help="with --detector, the least score of a face" if boxes_given
                        else "least detector score of a face")
    parser.add_argument("--max-faces", type=bounded_int(0, 10_000), default=0, metavar="N",
                        help="with --detector, keep the best N faces of an image (0: all; 1 for a video of one dog)")
    parser.add_argument("--flip-test", action="store_true", help="average with the mirrored crop's prediction")
    parser.add_argument("--refine", type=bounded_int(0, 10), default=0, metavar="N",
                        help=f"with --detector, {REFINE_HELP}" if boxes_given
                        else f"{REFINE_HELP} (for rough or detected boxes)")
    parser.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda, cuda:N or mps")


def landmarker_from_args(args: argparse.Namespace) -> FaceLandmarker:
    """The FaceLandmarker of the flags of `add_landmarker_flags`: the landmark checkpoint, and the
    face detector where --detector names one."""
    predictor = LandmarkPredictor(args.checkpoint, args.device, args.flip_test)
    detector = FaceDetector(args.detector, args.device) if args.detector else None
    return FaceLandmarker(predictor, detector, args.score_threshold, args.refine, args.max_faces)


def region_crops(image: np.ndarray, face: Face, regions: dict[str, list[int]], size: int = 96,
                 margin: float = 0.5) -> dict[str, np.ndarray]:
    """A size x size crop of each region of a face (eyes, ears, mouth, ...), for classifiers trained
    on them: the square around the region's landmarks, grown by `margin` of its side on each side
    and at least a sixth of the face box's side, cut as the landmark crops are (geometry.py)."""
    face_side = max(face.box[2] - face.box[0], face.box[3] - face.box[1])
    crops = {}
    for name, indices in regions.items():
        points = face.landmarks[indices]
        low, high = points.min(axis=0), points.max(axis=0)
        side = max(float((high - low).max()) * (1 + 2 * margin), face_side / 6)
        crops[name] = warp_image(image, crop_affine((low + high) / 2, side, size), size)
    return crops


def save_region_crops(image: np.ndarray, faces: list[Face], meta: dict, folder: Path, prefix: str,
                      size: int) -> None:
    """Each face's region crops (the keypoint metadata's regions) as FOLDER/PREFIXface{id or number}_{region}.png
    (no folder for an image without a face)."""
    if not faces:
        return
    folder.mkdir(exist_ok=True)
    for number, face in enumerate(faces, start=1):
        label = face.face_id if face.face_id is not None else number
        for name, crop in region_crops(image, face, meta["regions"], size).items():
            cv2.imwrite(str(folder / f"{prefix}face{label}_{name}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))


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


def evaluate_loader(model: LandmarkModel, loader: DataLoader, device: torch.device,
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
