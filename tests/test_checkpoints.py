import pytest
import torch

import train_simple
from basics import checkpoints
from basics.backbone_weights import IMAGENET_MEAN, IMAGENET_STD
from basics.checkpoints import todays_model_config
from basics.dogflw import convert
from basics.errors import TrainingStopped
from basics.geometry import CropGeometry
from conftest import SMALL_META, make_faces
from model import load_landmark_model


def test_checkpoint_write_is_atomic(tmp_path):
    path = tmp_path / "last.pth"
    checkpoints.save_checkpoint({"epoch": 1}, path)
    assert torch.load(path)["epoch"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def test_checkpoint_that_cannot_be_written_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    checkpoints.save_checkpoint({"epoch": 1}, path)

    def disk_full(state, f):
        open(f, "wb").write(b"half")
        raise RuntimeError("PytorchStreamWriter failed writing file: No space left on device")
    monkeypatch.setattr(checkpoints.torch, "save", disk_full)
    with pytest.raises(TrainingStopped, match="previous one is intact"):
        checkpoints.save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path)["epoch"] == 1 and sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def as_format_1(checkpoint: dict) -> dict:
    """The same checkpoint as the code before format 2 (commit 4f1f043) wrote it: no format or kind,
    the input size in model_config, the box padding only in args, the codec's parameters at the top
    of the state dicts."""
    old = {k: v for k, v in checkpoint.items() if k not in ("format", "kind", "crop")}
    config = {k: v for k, v in checkpoint["model_config"].items() if k != "sigma"}
    old["model_config"] = {**config, "input_size": checkpoint["crop"]["input_size"]}
    old["args"] = {**checkpoint["args"], "box_padding": checkpoint["crop"]["box_padding"],
                   "sigma": checkpoint["model_config"]["sigma"]}
    for key in ("model", "train_model"):
        if key in checkpoint:
            old[key] = {name.removeprefix("codec."): value for name, value in checkpoint[key].items()}
    return old


def test_a_format_1_checkpoint_loads_with_its_crop_geometry_and_weights(tiny_run, tmp_path):
    current = torch.load(tiny_run["checkpoint"], weights_only=True)
    current["crop"]["box_padding"] = 1.4
    torch.save(as_format_1(current), tmp_path / "old.pth")
    assert "log_beta" in torch.load(tmp_path / "old.pth", weights_only=True)["model"]  # really the old layout
    model, checkpoint, crop = load_landmark_model(tmp_path / "old.pth")
    assert crop == CropGeometry(input_size=64, box_padding=1.4)
    assert checkpoint["format"] == checkpoints.CHECKPOINT_FORMAT and model.config == current["model_config"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, current["model"][name]), name


def test_a_format_1_last_pth_resumes_to_the_uninterrupted_weights(tmp_path):
    """Resume from epoch 1 of a run whose last.pth is in the old format; the result equals the
    run that nothing interrupted."""
    root = make_faces(tmp_path / "toy", {"train": 16, "val": 4}, SMALL_META)
    convert(root, tmp_path / "ann", SMALL_META)
    args = ["--ann-root", str(tmp_path / "ann"), "--backbone", "resnet18", "--input-size", "64", "--no-pretrained",
            "--batch-size", "8", "--num-workers", "0", "--work-dir"]
    assert train_simple.main([*args, str(tmp_path / "whole"), "--epochs", "2"]) == 0
    assert train_simple.main([*args, str(tmp_path / "part"), "--epochs", "1"]) == 0
    last = tmp_path / "part" / "last.pth"
    torch.save(as_format_1(torch.load(last, weights_only=True)), last)
    assert train_simple.main([*args, str(tmp_path / "part"), "--epochs", "2", "--resume", str(last)]) == 0
    whole, resumed = (torch.load(tmp_path / run / "last.pth", weights_only=True) for run in ("whole", "part"))
    assert resumed["format"] == checkpoints.CHECKPOINT_FORMAT and resumed["epoch"] == 2
    for key in ("model", "train_model"):
        assert all(torch.equal(resumed[key][name], whole[key][name]) for name in whole[key]), key


def test_a_checkpoint_saved_before_normalisation_was_recorded_loads_as_it_was_trained():
    old = {"model_config": {"backbone": "efficientnet_lite0", "num_keypoints": 5}}
    config = todays_model_config(old, "old.pth")["model_config"]
    assert config["host"] == "efficientnet_lite0"
    assert config["input_mean"] == IMAGENET_MEAN and config["input_std"] == IMAGENET_STD
