import json

import numpy as np
import pytest

from dataset import LandmarkDataset
from evaluate import compute_metrics
from test_evaluate import two_images
from visualize import ced_curve, draw_landmarks, plot_ced, plot_training_curves, write_visualisations


def test_draw_landmarks_marks_prediction_and_truth():
    image = np.zeros((50, 50, 3), dtype=np.uint8)
    canvas = draw_landmarks(image, np.array([[10.0, 10.0]]), np.array([[40.0, 40.0]]))
    assert canvas[10, 10, 0] > 200 and canvas[40, 40, 1] > 150 and image.max() == 0


def test_ced_curve_is_what_auc_and_failure_rate_measure():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0, 100, size=(40, 5, 2))
    pred = gt + rng.normal(0, 1, size=gt.shape) * rng.uniform(0.5, 12, size=(40, 1, 1))
    metrics = compute_metrics(pred, gt, [0, 1])
    x, y = ced_curve(np.array(metrics["per_image_nme"]), 10.0)
    assert x[0] == 0 and x[-1] == 10 and np.all(np.diff(x) >= 0) and np.all(np.diff(y) >= 0)
    area = np.sum(y[:-1] * np.diff(x))  # the step curve drawn with where="post"
    assert area / 10 * 100 == pytest.approx(metrics["auc_10"], abs=0.1)
    assert y[-1] == pytest.approx(1 - metrics["failure_rate_10"] / 100)


def test_ced_and_training_curve_pngs_are_written(tmp_path):
    pred, gt = two_images()
    metrics = compute_metrics(pred, gt, [0, 1])
    figure = plot_ced(metrics, 10.0, tmp_path / "plots" / "ced.png", "toy")
    assert figure.axes[0].get_legend().get_texts()[0].get_text() == f"toy (AUC@10 {metrics['auc_10']:.2f})"
    lines = [{"epoch": e, "train_loss": 2.0 / e, "train_heatmap": 1.0 / e, "train_coord": 1.0 / e,
              "lr": 1e-3 / e, "val_nme_iod": 20.0 / e} for e in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "plots" / "curves.png")
    for name in ("ced.png", "curves.png"):
        data = (tmp_path / "plots" / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000


def test_overlays_show_the_worst_images_and_skip_unread_ones(tiny_run, tmp_path):
    dataset = LandmarkDataset(tiny_run["ann"] / "val.json", None, 64)
    pred = np.stack([r["keypoints"] for r in dataset.records]) + 1.0
    per_image = np.arange(len(dataset), dtype=float)  # image 7 is the worst...
    pred[7], per_image[7] = np.nan, np.nan  # ...but was not read
    write_visualisations(dataset, pred, per_image, 2, tmp_path / "vis")
    names = sorted(p.name for p in (tmp_path / "vis").iterdir())
    assert names[-2:] == ["worst_01_val_0006.png", "worst_02_val_0005.png"]
    assert len(names) == 4 and all(n.startswith("random_val_000") and n[-5] in "01234" for n in names[:2])
