import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import evaluate
from conftest import BROKEN_CHECKPOINTS, DOGFLW_META, write_broken_checkpoint
from codec import HEATMAP_STRIDE, heatmap_targets
from dataset import LandmarkDataset, collate_readable
from images import read_image
from evaluate import compute_metrics
from inference import FaceLandmarker, LandmarkPredictor, predict_crops
from model import LandmarkModel, load_landmark_model
from dogflw import convert


def two_images():
    """Two faces, 3 landmarks, inter-ocular pair (0, 1) 10 px apart in both."""
    gt = np.array([[[0, 0], [10, 0], [5, 5]], [[0, 0], [0, 10], [5, 5]]], dtype=float)
    pred = gt.copy()
    pred[0, 2] += [3, 4]         # image 0: errors 0, 0, 5 px     -> NME (5 / 3) / 10 = 16.67 %
    pred[1, :] += [0.24, 0.32]   # image 1: errors 0.4 px each    -> NME 4 %
    return pred, gt


class BlobFinder(LandmarkModel):
    """A 'network' that maps each image's red channel, pooled to stride 4, to the heatmap of its one
    landmark: exactly mirror-equivariant, so the flip test changes only what the mirror offset adds."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(images[:, :1], HEATMAP_STRIDE) / 255


def test_flip_test_unmirrors_with_the_learned_mirror_offset():
    model = BlobFinder("resnet18", 1)
    blob = torch.tensor([[[21.3, 40.6]]])  # (B, K, 2) input pixels
    images = (heatmap_targets(blob, 64, 64, sigma=3.0) * 255).expand(1, 3, 64, 64)
    identity = np.eye(2, 3)[None]
    plain, _ = predict_crops(model, images, identity)
    unbiased, _ = predict_crops(model, images, identity, flip_index=[0])
    np.testing.assert_allclose(unbiased, plain, atol=1e-4)
    with torch.no_grad():
        model.codec.mirror_offset.copy_(torch.tensor([[1.0, 0.5]]))  # heatmap px: (4, 2) input px
    shifted, _ = predict_crops(model, images, identity, flip_index=[0])
    # the mirrored branch's +4 px in x is -4 px once unmirrored, +2 px in y stays; each counts half
    np.testing.assert_allclose(shifted - plain, [[[-2.0, 1.0]]], atol=1e-4)


def test_nme_iod_failure_rate_and_pck_by_hand():
    pred, gt = two_images()
    metrics = compute_metrics(pred, gt, [0, 1])
    assert metrics["nme_iod"] == pytest.approx((50 / 3 + 4) / 2)
    assert metrics["failure_rate_10"] == pytest.approx(50.0)  # only 16.67 > 10
    # errors / IOD: image 0 -> 0, 0, 0.5; image 1 -> 0.04, 0.04, 0.04
    assert metrics["pck_0.05"] == pytest.approx(100 * 5 / 6)
    assert metrics["pck_0.1"] == pytest.approx(100 * 5 / 6)
    assert metrics["per_landmark_nme"] == pytest.approx({"0": 2.0, "1": 2.0, "2": 27.0})
    # CED: 0 below 4 %, 0.5 from 4 % to 10 % -> area 0.5 * 6 / 10
    assert metrics["auc_10"] == pytest.approx(30.0, abs=0.1)
    # signed errors / IOD: image 0 -> (0.3, 0.4) on one landmark of three, image 1 -> (0.024, 0.032) on all
    assert metrics["mean_error_x"] == pytest.approx(100 * (0.3 / 3 + 0.024) / 2)
    assert metrics["mean_error_y"] == pytest.approx(100 * (0.4 / 3 + 0.032) / 2)


def test_confidence_auroc_rewards_low_confidence_on_the_bad_landmark():
    pred, gt = two_images()  # only landmark 2 of image 0 is off by more than 10 % IOD
    good = np.array([[0.9, 0.8, 0.1], [0.7, 0.6, 0.5]])
    assert compute_metrics(pred, gt, [0, 1], confidence=good)["confidence_auroc_10"] == pytest.approx(1.0)
    assert compute_metrics(pred, gt, [0, 1], confidence=1 - good)["confidence_auroc_10"] == pytest.approx(0.0)
    assert compute_metrics(pred, gt, [0, 1], confidence=np.ones((2, 3)))["confidence_auroc_10"] == pytest.approx(0.5)
    assert evaluate.rank_auroc(np.array([3.0, 1.0, 2.0, 2.0]), np.array([True, False, True, False])) == 0.875


def test_auc_of_a_perfect_and_a_failed_image():
    gt = np.array([[[0, 0], [10, 0]], [[0, 0], [10, 0]]], dtype=float)
    pred = gt.copy()
    pred[1] += 5  # 70.7 % of IOD: a failure
    metrics = compute_metrics(pred, gt, [0, 1])
    assert metrics["auc_10"] == pytest.approx(50.0, abs=0.1)  # half the images at 0 error
    assert metrics["failure_rate_10"] == pytest.approx(50.0)


def test_zero_inter_ocular_distance_is_excluded_and_counted():
    pred, gt = two_images()
    gt = np.concatenate([gt, [[[3, 3], [3, 3], [4, 4]]]])
    pred = np.concatenate([pred, [[[9, 9], [3, 3], [4, 4]]]])
    metrics = compute_metrics(pred, gt, [0, 1])
    assert metrics["excluded_zero_iod"] == 1 and metrics["num_images"] == 2
    assert np.isfinite(metrics["nme_iod"]) and metrics["nme_iod"] == pytest.approx((50 / 3 + 4) / 2)


def test_regions_and_box_size_groups():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 100, size=(9, 4, 2))
    pred = gt + rng.normal(0, 1, size=gt.shape)
    boxes = np.array([[0, 0, s, s] for s in range(10, 100, 10)], dtype=float)
    metrics = compute_metrics(pred, gt, [0, 1], boxes, ["a", "b", "c", "d"], {"ab": [0, 1], "cd": [2, 3]})
    per_landmark = metrics["per_landmark_nme"]
    assert metrics["per_region_nme"]["ab"] == pytest.approx((per_landmark["a"] + per_landmark["b"]) / 2)
    assert len(metrics["nme_by_box_size"]) == 3
    assert np.mean(list(metrics["nme_by_box_size"].values())) == pytest.approx(metrics["nme_iod"])


def test_per_image_nme_is_listed_in_input_order():
    pred, gt = two_images()
    gt = np.concatenate([gt[:1], [[[3, 3], [3, 3], [4, 4]]], gt[1:]])  # a zero-IOD image in the middle
    pred = np.concatenate([pred[:1], [[[9, 9], [3, 3], [4, 4]]], pred[1:]])
    assert compute_metrics(pred, gt, [0, 1])["per_image_nme"] == [pytest.approx(50 / 3), None, pytest.approx(4)]


def test_evaluate_vis_writes_ced_and_overlays(tiny_run, tmp_path):
    out = tmp_path / "eval" / "metrics.json"
    assert evaluate.main(["--checkpoint", str(tiny_run["checkpoint"]), "--ann", str(tiny_run["ann"] / "val.json"),
                          "--out", str(out), "--vis", "2", "--device", "cpu", "--num-workers", "0"]) == 0
    metrics = json.loads(out.read_text())
    assert len(metrics["per_image_nme"]) == 8
    names = sorted(p.name for p in (tmp_path / "eval" / "vis").iterdir())
    assert names[0] == "ced.png" and len(names) == 5
    assert sum(n.startswith("worst_") for n in names) == 2 and sum(n.startswith("random_") for n in names) == 2


def evaluate_args(checkpoint, ann, *extra: str) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--ann", str(ann), "--device", "cpu", "--num-workers", "0", *extra]


@pytest.mark.parametrize("kind", BROKEN_CHECKPOINTS)
def test_broken_checkpoint_gives_one_error_line(tiny_run, tmp_path, capsys, kind):
    path = write_broken_checkpoint(tmp_path / "best.pth", kind, tiny_run["checkpoint"])
    assert evaluate.main(evaluate_args(path, tiny_run["ann"] / "val.json")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: ")


def test_annotations_with_another_landmark_count_are_refused(tiny_run, dogflw_root, tmp_path, capsys):
    convert(dogflw_root, tmp_path / "ann46", DOGFLW_META)
    assert evaluate.main(evaluate_args(tiny_run["checkpoint"], tmp_path / "ann46" / "test.json")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has 46 landmarks per face" in err[0] and "predicts 8" in err[0]


def test_unreadable_image_is_named_left_out_and_fails_the_run(tiny_run, tmp_path, capsys):
    dataset = LandmarkDataset(tiny_run["ann"] / "val.json", None, 64)
    path = dataset.data_root / dataset.records[2]["file"]
    original = path.read_bytes()
    path.write_bytes(b"truncated")
    try:
        code = evaluate.main(evaluate_args(tiny_run["checkpoint"], tiny_run["ann"] / "val.json",
                                           "--out", str(tmp_path / "m.json")))
    finally:
        path.write_bytes(original)
    out, err = capsys.readouterr()
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert code == 1 and f"warning: {path}: cannot read image" in err and "1 of 8 images could not be read" in err
    assert metrics["num_images"] == 7 and metrics["unreadable_images"] == [str(path)]


def test_unlabelled_landmarks_are_left_out_of_every_metric_and_counted():
    pred, gt = two_images()
    labelled = np.ones((2, 3), dtype=bool)
    labelled[0, 2] = False  # image 0's only wrong landmark is not labelled: image 0 is now perfect
    gt_unlabelled = gt.copy()
    gt_unlabelled[0, 2] = 0.0  # stored as 0, 0, 0
    metrics = compute_metrics(pred, gt_unlabelled, [0, 1], labelled=labelled, confidence=np.ones((2, 3)))
    assert metrics["nme_iod"] == pytest.approx((0 + 4) / 2) and metrics["unlabelled_landmarks"] == 1
    assert metrics["per_landmark_nme"]["2"] == pytest.approx(4.0) and metrics["pck_0.05"] == 100.0
    labelled[1, 0] = False  # image 1 loses an eye corner: it cannot be normalised
    metrics = compute_metrics(pred, gt_unlabelled, [0, 1], labelled=labelled)
    assert metrics["num_images"] == 1 and metrics["excluded_iod_unlabelled"] == 1
    assert metrics["per_image_nme"] == [0.0, None]


def test_evaluate_honours_coco_visibility_and_writes_strict_json(tiny_run, tmp_path):
    coco = json.loads((tiny_run["ann"] / "val.json").read_text())
    for annotation in coco["annotations"]:
        annotation["keypoints"][12:15] = [0, 0, 0]  # landmark 4 (nose) not labelled anywhere
    (tmp_path / "val.json").write_text(json.dumps(coco))
    out = tmp_path / "m.json"
    assert evaluate.main(evaluate_args(tiny_run["checkpoint"], tmp_path / "val.json", "--out", str(out))) == 0
    metrics = json.loads(out.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in {out}"))
    model, _, crop = load_landmark_model(tiny_run["checkpoint"])
    dataset = LandmarkDataset(tiny_run["ann"] / "val.json", None, crop.input_size)
    _, pred = evaluate.evaluate(model, DataLoader(dataset, batch_size=4, collate_fn=collate_readable), "cpu")
    gt = np.stack([r["keypoints"] for r in dataset.records])
    iod = np.linalg.norm(gt[:, 0] - gt[:, 1], axis=-1)
    others = [i for i in range(8) if i != 4]
    expected = (np.linalg.norm(pred - gt, axis=-1)[:, others].mean(axis=1) / iod).mean() * 100
    assert metrics["nme_iod"] == pytest.approx(expected) and metrics["unlabelled_landmarks"] == 8
    assert metrics["per_landmark_nme"]["nose"] is None and metrics["per_region_nme"]["lower"] is not None


def test_with_the_detector_each_face_takes_its_best_overlapping_detection_and_misses_are_counted(tiny_run):
    """A stand-in detector that returns each image's annotated box (plus a far-off one), except for
    image 3, where it finds nothing: the metrics equal those with the annotated boxes, less image 3."""
    dataset = LandmarkDataset(tiny_run["ann"] / "val.json", None, 64)
    boxes = {str(dataset.data_root / r["file"]): r["box"] for r in dataset.records}
    decoy = np.array([[0.0, 0.0, 8.0, 8.0]])

    class AnnotatedBoxes:
        def boxes(self, images, threshold):
            found = [next(b for f, b in boxes.items() if np.array_equal(read_image(f), image)) for image in images]
            return [(np.empty((0, 4)), np.empty(0)) if np.array_equal(box, dataset.records[3]["box"])
                    else (np.concatenate([decoy, box[None]]), np.array([0.95, 0.9])) for box in found]

    landmarker = FaceLandmarker(LandmarkPredictor(tiny_run["checkpoint"], "cpu"), AnnotatedBoxes())
    metrics, pred = evaluate.evaluate_with_detector(landmarker, dataset, batch_size=3)
    model, _, _ = load_landmark_model(tiny_run["checkpoint"])
    _, annotated = evaluate.evaluate(model, DataLoader(dataset, batch_size=4, collate_fn=collate_readable), "cpu")
    kept = [i for i in range(8) if i != 3]
    np.testing.assert_allclose(pred[kept], annotated[kept], atol=1e-4)
    assert np.isnan(pred[3]).all() and metrics["num_images"] == 7 and metrics["faces_missed"] == 1
    assert metrics["missed_images"] == [dataset.records[3]["file"]]
    failures = metrics["failure_rate_10"] / 100 * 7
    assert metrics["failure_rate_10_with_missed"] == pytest.approx((failures + 1) / 8 * 100)
    assert metrics["unmatched_detections"] == 7 and metrics["detections_per_image"] == pytest.approx(14 / 8)
    assert metrics["images_with_unmatched_detections"] == sorted(r["file"] for i, r in enumerate(dataset.records)
                                                                 if i != 3)  # each decoy is a false positive
