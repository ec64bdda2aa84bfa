import json

import numpy as np
import pytest

from basics.metrics import compute_metrics
from basics.visualize import ced_curve, draw_landmarks, plot_ced, plot_training_curves
from dataset import LandmarkDataset
from evaluate import write_visualisations
from test_metrics import two_images


def test_draw_landmarks_marks_prediction_and_truth_on_an_enlarged_copy():
    image = np.zeros((50, 50, 3), dtype=np.uint8)
    canvas = draw_landmarks(image, np.array([[10.0, 10.0]]), np.array([[40.0, 40.0]]), text="NME_IOD 3.0 %")
    zoom = 800 / 50  # small images are enlarged so that their landmarks stay apart
    at = lambda v: round((v + 0.5) * zoom - 0.5)  # noqa: E731 (pixel centres scale with the image)
    assert canvas.shape == (800, 800, 3) and image.max() == 0
    assert canvas[at(10), at(10), 0] > 200 and canvas[at(40), at(40), 1] > 150
    assert canvas[:60, :300].max() == 255  # the caption, white on its dark outline


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


def test_ced_of_a_model_that_fails_everywhere_says_so(tmp_path):
    pred, gt = two_images()
    metrics = compute_metrics(pred + 30, gt, [0, 1])  # every image far off
    figure = plot_ced(metrics, 10.0, tmp_path / "ced.png", "bad")
    assert any("all 2 fail" in text.get_text() for text in figure.axes[0].texts)
    assert figure.axes[0].get_ylim()[0] < 0  # the flat curve is drawn above the axis, not hidden by it


def test_training_curves_have_whole_epochs_plain_log_labels_and_the_run_name(tmp_path):
    run = tmp_path / "my_run"
    run.mkdir()
    lines = [{"epoch": e, "train_loss": 8.0 / e, "train_heatmap": 4.0 / e, "train_coord": 4.0 / e,
              "lr": 1e-3, "val_nme_iod": 20.0 / e} for e in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    figure = plot_training_curves(run / "metrics.jsonl", run / "curves.png")
    assert figure._suptitle.get_text() == "my_run"
    for ax in figure.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert all(float(t).is_integer() for t in ticks), ticks
    labels = [label.get_text() for label in figure.axes[0].yaxis.get_ticklabels(which="both") if label.get_text()]
    assert labels and not any("times" in label or "^" in label for label in labels), labels
