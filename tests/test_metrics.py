"""basics/metrics.py: NME_IOD and the other landmark metrics, computed by hand on small cases."""
import numpy as np
import pytest

from basics.metrics import compute_metrics, rank_auroc


def two_images():
    """Two faces, 3 landmarks, inter-ocular pair (0, 1) 10 px apart in both."""
    gt = np.array([[[0, 0], [10, 0], [5, 5]], [[0, 0], [0, 10], [5, 5]]], dtype=float)
    pred = gt.copy()
    pred[0, 2] += [3, 4]         # image 0: errors 0, 0, 5 px     -> NME (5 / 3) / 10 = 16.67 %
    pred[1, :] += [0.24, 0.32]   # image 1: errors 0.4 px each    -> NME 4 %
    return pred, gt


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
    assert rank_auroc(np.array([3.0, 1.0, 2.0, 2.0]), np.array([True, False, True, False])) == 0.875


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
