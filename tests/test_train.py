import json
import math

import numpy as np
import pytest
import torch

import train_simple
from conftest import SMALL_META, make_faces, run_cli
from dataset import LandmarkDataset, heatmap_targets
from evaluate import compute_metrics
from geometry import apply_affine, box_to_center_size, crop_affine, input_to_heatmap, invert_affine
from model import HEATMAP_STRIDE, LandmarkModel
from tools.convert_dogflw_to_coco import convert

SMALL_RUN = ["--backbone", "resnet18", "--input-size", "64", "--no-pretrained", "--batch-size", "8",
             "--num-workers", "0"]


def test_convert_train_evaluate_resume_from_the_command_line(dogflw_root, tmp_path):
    ann, run = tmp_path / "ann", tmp_path / "run"
    run_cli("tools/convert_dogflw_to_coco.py", "--dogflw_root", str(dogflw_root), "--out_dir", str(ann))
    out = run_cli("train_simple.py", "--data-root", str(dogflw_root), "--ann-root", str(ann), *SMALL_RUN,
                  "--epochs", "2", "--work-dir", str(run)).stdout
    assert "best val NME_IOD" in out
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2]
    assert all(math.isfinite(line["val_nme_iod"]) and line["lr"] > 0 for line in lines)

    best = torch.load(run / "best.pth", weights_only=False)
    assert best["model_config"]["backbone"] == "resnet18" and best["keypoint_meta"]["num_keypoints"] == 46
    run_cli("evaluate.py", "--checkpoint", str(run / "best.pth"), "--ann", str(ann / "test.json"),
            "--out", str(run / "eval.json"), "--vis", "2", "--device", "cpu", "--num-workers", "0")
    evaluated = json.loads((run / "eval.json").read_text())
    assert evaluated["nme_iod"] == pytest.approx(best["metrics"]["nme_iod"], rel=1e-4)
    assert len(list((run / "vis").glob("*.png"))) == 2

    out = run_cli("train_simple.py", "--resume", str(run / "last.pth"), "--data-root", str(dogflw_root),
                  "--ann-root", str(ann), *SMALL_RUN, "--epochs", "3").stdout
    assert "resumed from" in out and "at epoch 2" in out
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["epoch"] for line in lines] == [1, 2, 3]
    assert torch.load(run / "last.pth", weights_only=False)["epoch"] == 3


def test_missing_annotations_are_converted_from_the_data_root(dogflw_root, tmp_path):
    train_ann, val_ann = train_simple.prepare_annotations(tmp_path / "ann", str(dogflw_root))
    assert train_ann.exists() and val_ann.name == "test.json"


def test_bad_data_root_gives_one_clear_line(tmp_path):
    result = run_cli("train_simple.py", "--data-root", str(tmp_path / "nowhere"), "--ann-root",
                     str(tmp_path / "ann"), *SMALL_RUN, "--work-dir", str(tmp_path / "run"), check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "nowhere" in result.stderr


def test_loss_is_small_for_a_perfect_prediction_and_large_otherwise():
    model = LandmarkModel("resnet18", 3, 64)
    keypoints = torch.tensor([[[10.0, 20.0], [30.5, 40.25], [36.0, 12.0]]])
    perfect = heatmap_targets(input_to_heatmap(keypoints, HEATMAP_STRIDE), 16, 16, 2.0)
    loss, parts = train_simple.landmark_loss(model, perfect, keypoints, 2.0, 1.0, 1.0)
    assert parts["heatmap"] == pytest.approx(0.0, abs=1e-6) and parts["coord"] < 0.05
    shifted = torch.roll(perfect, shifts=2, dims=-1)  # 2 heatmap pixels to the right
    worse, worse_parts = train_simple.landmark_loss(model, shifted, keypoints, 2.0, 1.0, 1.0)
    assert worse_parts["coord"] == pytest.approx(2.0, abs=0.1) and worse > loss + 2


def test_landmarks_outside_the_crop_get_no_coordinate_loss():
    model = LandmarkModel("resnet18", 2, 64)
    keypoints = torch.tensor([[[10.0, 20.0], [90.0, 20.0]]])  # the second is right of the 64 px crop
    logits = heatmap_targets(input_to_heatmap(keypoints, HEATMAP_STRIDE), 16, 16, 2.0)
    _, parts = train_simple.landmark_loss(model, logits, keypoints, 2.0, 0.0, 1.0)
    assert parts["coord"] < 0.05


def test_ema_and_schedule():
    model, ema = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.weight.fill_(0.0)
    train_simple.update_ema(ema, model, decay=0.75)
    assert torch.allclose(ema.weight, torch.full_like(ema.weight, 0.25))
    factor = train_simple.warmup_cosine(warmup_steps=10, total_steps=110)
    assert factor(0) == pytest.approx(0.01) and factor(10) == pytest.approx(1.0)
    assert factor(60) == pytest.approx(0.505) and factor(110) == pytest.approx(0.01)


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "last.pth"
    train_simple.save_checkpoint({"epoch": 1}, path)
    assert torch.load(path)["epoch"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def mean_shape_nme(train_set: LandmarkDataset, val_set: LandmarkDataset) -> float:
    """NME_IOD of always predicting the mean training landmarks in crop coordinates."""
    def crop_matrix(record):
        center, size = box_to_center_size(record["box"], train_set.padding)
        return crop_affine(center, size, train_set.input_size)
    mean_crop = np.mean([apply_affine(r["keypoints"], crop_matrix(r)) for r in train_set.records], axis=0)
    pred = np.stack([apply_affine(mean_crop, invert_affine(crop_matrix(r))) for r in val_set.records])
    gt = np.stack([r["keypoints"] for r in val_set.records])
    return compute_metrics(pred, gt, val_set.meta["iod_pair"])["nme_iod"]


def test_short_training_learns_the_landmarks(tmp_path):
    """On synthetic faces with varying pose, training beats the mean shape by a wide margin."""
    root = make_faces(tmp_path / "toy", {"train": 256, "val": 64}, SMALL_META, rotation=40.0)
    convert(root, root / "ann", SMALL_META)
    run = tmp_path / "run"
    best_nme = train_simple.train(train_simple.parse_args([
        "--ann-root", str(root / "ann"), *SMALL_RUN, "--batch-size", "16", "--epochs", "8",
        "--lr", "2e-3", "--work-dir", str(run)]))
    baseline = mean_shape_nme(LandmarkDataset(root / "ann" / "train.json", None, 64),
                              LandmarkDataset(root / "ann" / "val.json", None, 64))
    print(f"val NME_IOD {best_nme:.2f} vs mean shape {baseline:.2f}")
    assert baseline > 15
    assert best_nme < 0.25 * baseline
