import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import evaluate
from basics.codec import HEATMAP_STRIDE, heatmap_targets
from basics.dogflw import convert
from basics.images import read_image
from conftest import BROKEN_CHECKPOINTS, DOGFLW_META, write_broken_checkpoint
from dataset import LandmarkDataset, collate_readable
from inference import FaceLandmarker, LandmarkPredictor, evaluate_loader, predict_crops
from model import LandmarkModel, load_landmark_model


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
    _, pred = evaluate_loader(model, DataLoader(dataset, batch_size=4, collate_fn=collate_readable), "cpu")
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
    _, annotated = evaluate_loader(model, DataLoader(dataset, batch_size=4, collate_fn=collate_readable), "cpu")
    kept = [i for i in range(8) if i != 3]
    np.testing.assert_allclose(pred[kept], annotated[kept], atol=1e-4)
    assert np.isnan(pred[3]).all() and metrics["num_images"] == 7 and metrics["faces_missed"] == 1
    assert metrics["missed_images"] == [dataset.records[3]["file"]]
    failures = metrics["failure_rate_10"] / 100 * 7
    assert metrics["failure_rate_10_with_missed"] == pytest.approx((failures + 1) / 8 * 100)
    assert metrics["unmatched_detections"] == 7 and metrics["detections_per_image"] == pytest.approx(14 / 8)
    assert metrics["images_with_unmatched_detections"] == sorted(r["file"] for i, r in enumerate(dataset.records)
                                                                 if i != 3)  # each decoy is a false positive


@pytest.mark.parametrize("target", ["checkpoint", "ann"])
def test_the_metrics_file_never_replaces_what_is_scored(tiny_run, tmp_path, capsys, target):
    inputs = {"checkpoint": tmp_path / "ck.pth", "ann": tmp_path / "val.json"}
    inputs["checkpoint"].write_bytes(tiny_run["checkpoint"].read_bytes())
    inputs["ann"].write_bytes((tiny_run["ann"] / "val.json").read_bytes())
    before = {name: path.read_bytes() for name, path in inputs.items()}
    args = evaluate_args(inputs["checkpoint"], inputs["ann"], "--out", str(inputs[target]), "--overwrite")
    assert evaluate.main(args) == 1
    assert capsys.readouterr().err.strip() == (f"error: --out {inputs[target]}: is --{target}, which this command "
                                               "reads; write it elsewhere")
    assert {name: path.read_bytes() for name, path in inputs.items()} == before


def test_metrics_and_pictures_are_replaced_only_with_overwrite(tiny_run, tmp_path, capsys):
    out, vis = tmp_path / "m.json", tmp_path / "pictures"
    out.write_text("an earlier result")
    assert evaluate.main(evaluate_args(tiny_run["checkpoint"], tiny_run["ann"] / "val.json", "--out", str(out))) == 1
    assert f"--out {out}: exists; give --overwrite to replace it" in capsys.readouterr().err
    vis.mkdir()
    (vis / "figure_for_the_paper.png").write_bytes(b"kept")
    args = evaluate_args(tiny_run["checkpoint"], tiny_run["ann"] / "val.json", "--vis", "1", "--vis-dir", str(vis))
    assert evaluate.main(args) == 1
    assert f"--vis-dir {vis}: holds files; give --overwrite to replace them" in capsys.readouterr().err
    assert out.read_text() == "an earlier result" and [p.name for p in vis.iterdir()] == ["figure_for_the_paper.png"]
    assert evaluate.main([*args, "--out", str(out), "--overwrite"]) == 0
    assert json.loads(out.read_text())["num_images"] == 8 and (vis / "ced.png").exists()
