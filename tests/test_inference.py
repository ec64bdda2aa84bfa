import numpy as np
import pytest
import torch

import evaluate
from basics.errors import DataError
from basics.images import read_image
from dataset import LandmarkDataset
from inference import FaceLandmarker, LandmarkPredictor


def test_a_checkpoint_carries_how_its_training_boxes_sit_around_their_landmarks(tiny_run):
    train = LandmarkDataset(tiny_run["ann"] / "train.json", None, 64)
    crop = LandmarkPredictor(tiny_run["checkpoint"], "cpu").crop
    assert crop.face_padding is not None and crop.face_padding == pytest.approx(train.geometry.face_padding)


def test_each_refine_pass_cuts_the_crop_around_the_landmarks_the_pass_before_placed(tiny_run):
    """Two refine passes: three placements, the second and third cut around the landmarks of the
    one before, and the face keeps the box it was given."""
    predictor = LandmarkPredictor(tiny_run["checkpoint"], "cpu")
    dataset = LandmarkDataset(tiny_run["ann"] / "val.json", None, 64)
    image, box = read_image(dataset.data_root / dataset.records[0]["file"]), dataset.records[0]["box"]
    calls, place = [], predictor.landmarks

    def recording(images, boxes):
        points, confidence = place(images, boxes)
        calls.append((np.stack(boxes), points))
        return points, confidence

    predictor.landmarks = recording
    face = FaceLandmarker(predictor, refine=2).faces([image], [box[None] + [-6.0, 4.0, -6.0, 4.0]])[0][0]
    assert len(calls) == 3
    np.testing.assert_allclose(calls[0][0][0], box + [-6.0, 4.0, -6.0, 4.0])
    for (_, before), (boxes, _) in zip(calls, calls[1:]):
        np.testing.assert_allclose(boxes[0], predictor.crop.box_around_landmarks(before[0]))
    np.testing.assert_allclose(face.landmarks, calls[-1][1][0])
    np.testing.assert_allclose(face.box, box + [-6.0, 4.0, -6.0, 4.0])


def test_refining_with_a_checkpoint_that_records_no_box_padding_names_the_checkpoint(tiny_run, tmp_path):
    checkpoint = torch.load(tiny_run["checkpoint"], weights_only=False)
    del checkpoint["crop"]["face_padding"]
    old = tmp_path / "old.pth"
    torch.save(checkpoint, old)
    predictor = LandmarkPredictor(old, "cpu")
    assert len(FaceLandmarker(predictor).faces([np.zeros((32, 32, 3), np.uint8)])[0]) == 1  # no refining: fine
    with pytest.raises(DataError, match=f"{old}: records no padding"):
        FaceLandmarker(predictor, refine=1)


def test_evaluate_refines_only_detected_boxes(tiny_run, capsys):
    args = ["--checkpoint", str(tiny_run["checkpoint"]), "--ann", str(tiny_run["ann"] / "val.json"), "--refine", "1"]
    assert evaluate.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--refine recuts the detector's face boxes: give --detector" in err[0]
