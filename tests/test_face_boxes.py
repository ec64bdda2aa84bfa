"""The detector's training images: boxes that follow every change of the image, and composed scenes."""

import json
from pathlib import Path

import numpy as np
import torch

from detector.scenes import FaceBoxes, SceneAugmentation


def test_training_flips_the_boxes_with_the_image(tiny_run):
    plain = FaceBoxes(tiny_run["ann"] / "train.json", None)
    augmented = FaceBoxes(tiny_run["ann"] / "train.json", None,
                          SceneAugmentation(mosaic_prob=0, zoom_prob=0, negative_prob=0))
    flips = 0
    for index in range(8):
        a, b = plain[index], augmented[(index, 1)]
        box, width = a["target"]["boxes"], a["image"].shape[-1]
        mirrored = torch.stack([width - box[:, 2], box[:, 1], width - box[:, 0], box[:, 3]], dim=1)  # x -> width - x
        correlation = lambda x, y: torch.corrcoef(torch.stack([x.flatten(), y.flatten()]))[0, 1]  # noqa: E731
        if correlation(b["image"], a["image"].flip(-1)) > correlation(b["image"], a["image"]):  # colours jittered
            flips += 1
            assert torch.allclose(b["target"]["boxes"], mirrored)
        else:
            assert torch.allclose(b["target"]["boxes"], box)
    assert 0 < flips < 8


def scene_boxes(tiny_run, augmentation: SceneAugmentation, epochs=range(1, 4)) -> list[tuple]:
    boxes = FaceBoxes(tiny_run["ann"] / "train.json", None, augmentation)
    return [(boxes[(i, e)], boxes.images[i]["boxes"]) for e in epochs for i in range(len(boxes))]


def test_mosaics_hold_several_faces_each_inside_the_canvas(tiny_run):
    items = scene_boxes(tiny_run, SceneAugmentation(mosaic_prob=1.0, negative_prob=0.0))
    counts = [len(item["target"]["boxes"]) for item, _ in items]
    assert max(counts) >= 3 and np.mean(counts) > 1.5  # one face per training image, 2 to 4 tiled
    for item, _ in items:
        height, width = item["image"].shape[-2:]
        boxes = item["target"]["boxes"]  # torchvision's convention: pixel edges at integers
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all() and item["target"]["labels"].tolist() == [1] * len(boxes)


def test_zoomed_faces_range_from_small_to_filling_the_frame(tiny_run):
    aug = SceneAugmentation(mosaic_prob=0.0, negative_prob=0.0, zoom_prob=1.0, face_small=0.1, face_large=0.9)
    shares = []
    for item, _ in scene_boxes(tiny_run, aug, epochs=range(1, 9)):
        short = min(item["image"].shape[-2:])
        for box in item["target"]["boxes"]:
            shares.append(float(max(box[2] - box[0], box[3] - box[1])) / short)
    assert 0.08 < min(shares) < 0.2 and max(shares) > 0.6  # the drawn share, less what the canvas edge cut


def small_face_file(tmp_path) -> Path:
    """A COCO file of four 200 px photos, each with one 20 px face in a corner."""
    import cv2
    images, annotations = [], []
    for n in range(4):
        picture = np.full((200, 200, 3), 60 * n, np.uint8)
        cv2.imwrite(str(tmp_path / f"{n}.png"), picture)
        images.append({"id": n + 1, "file_name": f"{n}.png", "width": 200, "height": 200})
        annotations.append({"id": n + 1, "image_id": n + 1, "bbox": [10, 10, 20, 20], "keypoints": []})
    path = tmp_path / "faces.json"
    path.write_text(json.dumps({"info": {"data_root": str(tmp_path)}, "images": images, "annotations": annotations,
                                "categories": [{"id": 1, "keypoints": []}]}))
    return path


def test_a_negative_has_no_face_and_every_draw_is_fixed_by_seed_epoch_and_index(tiny_run, tmp_path):
    negatives = FaceBoxes(small_face_file(tmp_path), None, SceneAugmentation(negative_prob=1.0))
    assert all(len(negatives[(i, e)]["target"]["boxes"]) == 0 for i in range(4) for e in range(5))
    again = scene_boxes(tiny_run, SceneAugmentation(), epochs=[2])
    once_more = scene_boxes(tiny_run, SceneAugmentation(), epochs=[2])
    assert all(torch.equal(a["image"], b["image"]) and torch.equal(a["target"]["boxes"], b["target"]["boxes"])
               for (a, _), (b, _) in zip(again, once_more))
