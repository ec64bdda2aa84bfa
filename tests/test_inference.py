import numpy as np
import pytest
import torch

import evaluate
from basics.cli import CommandLineParser
from basics.errors import DataError
from basics.images import read_image
from dataset import LandmarkDataset
from inference import FaceDetector, FaceLandmarker, LandmarkPredictor, add_landmarker_flags, landmarker_from_args
from tools import extract_frames, predict


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


def landmarker_parser(boxes_given: bool = False) -> CommandLineParser:
    parser = CommandLineParser()
    add_landmarker_flags(parser, "the landmarks", "the faces", boxes_given)
    return parser


@pytest.mark.parametrize("script, required", [
    (evaluate, ["--ann", "a.json"]), (predict, ["x.png", "--out", "o"]), (extract_frames, ["x.mp4", "--out", "o"])])
def test_every_landmarker_script_takes_the_same_landmarker_flags_with_the_same_defaults(script, required):
    keys = ("checkpoint", "detector", "score_threshold", "flip_test", "refine", "device")
    args = vars(script.build_parser().parse_args([*required, "--checkpoint", "c.pth"]))
    assert {k: args[k] for k in keys} == dict(zip(keys, ("c.pth", None, 0.5, False, 0, "auto")))
    args = vars(script.build_parser().parse_args([*required, "--checkpoint", "c.pth", "--detector", "d.pth",
                                                  "--score-threshold", "0.3", "--flip-test", "--refine", "2",
                                                  "--device", "cpu"]))
    assert {k: args[k] for k in keys} == dict(zip(keys, ("c.pth", "d.pth", 0.3, True, 2, "cpu")))


def test_with_boxes_given_the_detector_flags_say_they_apply_with_a_detector_only():
    helps = [{a.dest: a.help for a in landmarker_parser(given)._actions} for given in (False, True)]
    assert helps[0]["score_threshold"] == "least detector score of a face"
    assert helps[1]["score_threshold"] == "with --detector, the least score of a face"
    assert helps[0]["refine"].endswith("(for rough or detected boxes)")
    assert helps[1]["refine"].startswith("with --detector, ")
    assert helps[0]["checkpoint"] == "the landmarks" and helps[0]["detector"] == "the faces"


def test_the_landmarker_of_the_flags_has_their_checkpoint_detector_threshold_flip_test_and_refining(
        tiny_run, tiny_detector):
    args = landmarker_parser().parse_args(["--checkpoint", str(tiny_run["checkpoint"]), "--detector",
                                           str(tiny_detector), "--score-threshold", "0.3", "--flip-test",
                                           "--refine", "2", "--device", "cpu"])
    landmarker = landmarker_from_args(args)
    assert landmarker.predictor.path == tiny_run["checkpoint"] and landmarker.predictor.device.type == "cpu"
    assert landmarker.predictor.flip_index == landmarker.predictor.meta["flip_index"]
    assert isinstance(landmarker.detector, FaceDetector) and landmarker.threshold == 0.3 and landmarker.refine == 2
    plain = landmarker_from_args(landmarker_parser().parse_args(["--checkpoint", str(tiny_run["checkpoint"]),
                                                                "--device", "cpu"]))
    assert plain.detector is None and plain.predictor.flip_index is None and plain.refine == 0


def test_max_faces_keeps_the_detectors_best_faces_of_each_image(tiny_run):
    boxes = np.array([[10.0, 10, 50, 50], [20, 20, 60, 60], [0, 0, 30, 30]])
    scores = np.array([0.9, 0.7, 0.4])  # best first, as detections come
    found = type("Three", (), {"boxes": lambda self, images, threshold: [(boxes, scores) for _ in images]})()
    predictor = LandmarkPredictor(tiny_run["checkpoint"], "cpu")
    image = np.zeros((80, 80, 3), np.uint8)
    one = FaceLandmarker(predictor, found, max_faces=1).faces([image, image])
    assert [[face.score for face in faces] for faces in one] == [[0.9], [0.9]]
    np.testing.assert_array_equal(one[0][0].box, boxes[0])
    assert len(FaceLandmarker(predictor, found).faces([image])[0]) == 3  # 0: all of them
    args = landmarker_parser().parse_args(["--checkpoint", str(tiny_run["checkpoint"]), "--max-faces", "2",
                                           "--device", "cpu"])
    assert landmarker_from_args(args).max_faces == 2
