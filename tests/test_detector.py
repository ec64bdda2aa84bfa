import json
import os
import signal

import numpy as np
import pytest
import torch

from basics.checkpoints import read_checkpoint
from basics.errors import CheckpointError, UsageError
from detector.model import DETECTORS, box_average_precision, create_detector, detect_faces, load_detector
from detector.scenes import FaceBoxes
from model import load_landmark_model
from detector import train as train_detector


def test_the_detector_trains_and_its_checkpoint_rebuilds_it(tiny_run, tiny_detector, tmp_path):
    model, checkpoint = load_detector(tiny_detector)
    assert checkpoint["detector_config"] == {"name": DETECTORS[0], "pretrained": False, "min_size": 64, "max_size": 96}
    assert 0.0 <= checkpoint["metrics"]["box_ap50"] <= 1.0 and "optimizer" not in checkpoint
    records = [json.loads(line) for line in (tiny_detector.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1] and {"box_ap", "box_ap50", "train_loss"} <= records[0].keys()
    image = np.random.default_rng(0).integers(0, 255, size=(80, 90, 3), dtype=np.uint8)
    trained = read_checkpoint(tiny_detector.parent / "last.pth", "face detector")
    again = create_detector(**trained["detector_config"], download=False).eval()
    again.load_state_dict(trained["model"])
    for (boxes, scores), (boxes_again, scores_again) in zip(detect_faces(model, [image], "cpu"),
                                                            detect_faces(again, [image], "cpu")):
        np.testing.assert_allclose(boxes, boxes_again)
        np.testing.assert_allclose(scores, scores_again)


DETECTOR_RUN = ["--no-pretrained", "--batch-size", "4", "--num-workers", "0", "--min-size", "64", "--max-size", "96"]


def test_ctrl_c_mid_epoch_then_resume_gives_the_weights_of_the_run_nothing_interrupted(tiny_run, tmp_path,
                                                                                         monkeypatch, capsys):
    whole, halted = tmp_path / "whole", tmp_path / "halted"
    args = ["--ann-root", str(tiny_run["ann"]), *DETECTOR_RUN, "--epochs", "2"]
    real_step, steps = train_detector.train_step, []

    def counted_step(*step_args):
        steps.append(1)
        if halt_at and len(steps) == halt_at:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*step_args)
    monkeypatch.setattr(train_detector, "train_step", counted_step)
    halt_at = 0
    assert train_detector.main([*args, "--work-dir", str(whole)]) == 0
    per_epoch = len(steps) // 2
    assert per_epoch >= 3
    steps.clear()
    halt_at = per_epoch + 2  # during epoch 2's second step; the next step sees it, runs (ranks agree), stops
    assert train_detector.main([*args, "--work-dir", str(halted)]) == 130
    assert "interrupted by SIGINT: saved" in capsys.readouterr().err
    saved = torch.load(halted / "last.pth", weights_only=True)
    assert (saved["epoch"], saved["next_batch"]) == (1, 3)
    halt_at = 0
    assert train_detector.main(["--resume", str(halted / "last.pth")]) == 0
    resumed, uninterrupted = (torch.load(d / "last.pth", weights_only=True) for d in (halted, whole))
    assert resumed["epoch"] == uninterrupted["epoch"] == 2
    for key in ("model", "train_model"):  # the EMA and the trained weights
        different = [k for k in uninterrupted[key] if not torch.equal(resumed[key][k], uninterrupted[key][k])]
        assert not different, f"{key}: {len(different)} tensors differ, e.g. {different[0]}"


def test_the_saved_detector_is_the_ema_of_the_trained_weights_unless_ema_decay_is_0(tiny_run, tiny_detector,
                                                                                   tmp_path):
    last = torch.load(tiny_detector.parent / "last.pth", weights_only=True)
    best = torch.load(tiny_detector, weights_only=True)
    trained = [k for k, v in last["train_model"].items() if v.is_floating_point() and "running" not in k]
    assert any(not torch.equal(last["model"][k], last["train_model"][k]) for k in trained)
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in best["model"])  # one epoch: best is last
    plain = tmp_path / "plain"
    assert train_detector.main(["--ann-root", str(tiny_run["ann"]), *DETECTOR_RUN, "--epochs", "1", "--ema-decay",
                                "0", "--work-dir", str(plain)]) == 0
    last = torch.load(plain / "last.pth", weights_only=True)
    assert all(torch.equal(last["model"][k], last["train_model"][k]) for k in last["model"])


def test_a_detector_run_saved_before_it_had_an_ema_resumes_from_its_one_set_of_weights(tiny_detector, tmp_path):
    old = torch.load(tiny_detector.parent / "last.pth", weights_only=False)
    del old["train_model"]
    del old["args"]["ema_decay"]
    (tmp_path / "old").mkdir()
    torch.save(old, tmp_path / "old" / "last.pth")
    assert train_detector.main(["--resume", str(tmp_path / "old" / "last.pth"), "--epochs", "2"]) == 0
    resumed = torch.load(tmp_path / "old" / "last.pth", weights_only=True)
    assert resumed["epoch"] == 2 and resumed["train_model"].keys() == old["model"].keys()


def test_resume_into_a_folder_holding_another_detector_run_is_refused(tiny_run, tiny_detector, tmp_path, capsys):
    other = tmp_path / "other"
    assert train_detector.main(["--ann-root", str(tiny_run["ann"]), *DETECTOR_RUN, "--epochs", "1",
                                "--work-dir", str(other)]) == 0
    before = (other / "last.pth").read_bytes()
    capsys.readouterr()
    assert train_detector.main(["--resume", str(tiny_detector.parent / "last.pth"), "--epochs", "2",
                                "--work-dir", str(other)]) == 1
    assert "holds a run already" in capsys.readouterr().err and (other / "last.pth").read_bytes() == before


def test_box_ap_is_the_coco_definition(tiny_run):
    boxes = FaceBoxes(tiny_run["ann"] / "val.json", None)
    ids = [image["id"] for image in boxes.images]
    truth = [image["boxes"] for image in boxes.images]
    perfect = box_average_precision(boxes.ann_file, ids, truth, [np.ones(len(t)) for t in truth])
    assert (perfect["box_ap"], perfect["box_ap50"]) == (pytest.approx(1.0), pytest.approx(1.0))
    sizes = [perfect[f"box_recall_{size}"] for size in ("small", "medium", "large")]  # by COCO's area ranges
    assert all(r is None or r == pytest.approx(1.0) for r in sizes) and any(r is not None for r in sizes)
    shifted = [t + np.array([0.3, 0.3, 0.3, 0.3]) * (t[:, 2:] - t[:, :2]).repeat(2, axis=1) for t in truth]
    half = box_average_precision(boxes.ann_file, ids, shifted, [np.ones(len(t)) for t in truth])
    assert half["box_ap50"] == pytest.approx(0.0)  # IoU (0.7 x 0.7) / (2 - 0.49) = 0.32 < 0.5
    missing = box_average_precision(boxes.ann_file, ids[:4], truth[:4], [np.ones(len(t)) for t in truth[:4]])
    assert missing["box_ap50"] == pytest.approx(1.0)  # only the images scored count


def test_the_wrong_kind_of_checkpoint_is_one_line(tiny_run, tiny_detector):
    with pytest.raises(CheckpointError, match="a face detector checkpoint, where a landmarks checkpoint"):
        load_landmark_model(tiny_detector)
    with pytest.raises(CheckpointError, match="a landmarks checkpoint, where a face detector checkpoint"):
        load_detector(tiny_run["checkpoint"])
    with pytest.raises(UsageError, match="not a detector here"):
        create_detector("yolo", pretrained=False)


def test_a_pretrained_detector_rebuilds_and_resumes_without_downloading(tiny_run, tmp_path, monkeypatch):
    """ImageNet weights freeze the body's normalisation: the checkpoint says so, and rebuilding it
    (evaluation, prediction, --resume) needs no download."""
    import torchvision
    downloads = []
    real_resnet18 = torchvision.models.resnet18

    def offline_resnet18(weights=None, **kwargs):  # the 'downloaded' weights are a fresh model's
        downloads.append(weights)
        return real_resnet18(weights=None, **kwargs)
    monkeypatch.setattr(torchvision.models, "resnet18", offline_resnet18)
    args = ["--ann-root", str(tiny_run["ann"]), "--model", "fcos_resnet18_fpn", "--batch-size", "4", "--num-workers",
            "0", "--min-size", "64", "--max-size", "96", "--work-dir", str(tmp_path / "run")]
    assert train_detector.main([*args, "--epochs", "1"]) == 0
    model, checkpoint = load_detector(tmp_path / "run" / "best.pth")
    assert checkpoint["detector_config"]["pretrained"] is True
    assert type(model.backbone.body.bn1).__name__ == "FrozenBatchNorm2d"
    assert train_detector.main(["--resume", str(tmp_path / "run" / "last.pth"), "--epochs", "2"]) == 0
    assert [w is not None for w in downloads] == [True, False, False]  # training, then two rebuilds


def test_the_default_detector_body_is_lite0_with_its_packaged_imagenet_weights_and_inputs(capsys):
    from basics.backbone_weights import packaged_file, to_timm_names

    assert DETECTORS[0] == "fcos_lite0_fpn"
    detector = create_detector("fcos_lite0_fpn", pretrained=True)
    assert "no download" in capsys.readouterr().out
    body = detector.backbone.body.state_dict()
    packaged = to_timm_names(torch.load(packaged_file("efficientnet_lite0"), weights_only=True), body)
    assert len(packaged) == len(body) and all(torch.equal(body[name], packaged[name]) for name in packaged)
    assert detector.transform.image_mean == [0.5] * 3 and detector.transform.image_std == [0.5] * 3
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in detector.backbone.body.modules())  # frozen
    network = detector.backbone.body
    trained = {".".join(name.split(".")[:2]) for name, p in network.named_parameters() if p.requires_grad}
    assert trained == {f"blocks.{i}" for i in range(2, 7)}  # the stem and the first two stages stay as trained
    assert all(p.requires_grad for p in detector.backbone.fpn.parameters())
    assert all(p.requires_grad for p in create_detector("fcos_lite0_fpn", pretrained=False).parameters())
    features = detector.backbone(torch.zeros(1, 3, 128, 160))
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    torchvision_body = create_detector("fcos_mobilenet_v3_fpn", pretrained=False)
    assert torchvision_body.transform.image_mean == pytest.approx([0.485, 0.456, 0.406])  # as its checkpoints trained
