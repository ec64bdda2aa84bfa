import subprocess
import sys

import pytest
import torch

from conftest import REPO
from dataset import heatmap_targets
from geometry import input_to_heatmap
from model import HEATMAP_STRIDE, CheckpointError, LandmarkModel, load_checkpoint, soft_argmax


@pytest.mark.parametrize("centre", [(8.0, 8.0), (10.3, 7.71), (21.49, 12.05), (6.5, 24.9)])
def test_soft_argmax_returns_the_centre_of_a_gaussian_target(centre):
    model = LandmarkModel("resnet18", 1, 128)
    target = heatmap_targets(torch.tensor([[centre]]), 32, 32, sigma=2.0)
    decoded = soft_argmax(target, model.log_beta.exp())[0, 0]
    assert torch.allclose(decoded, torch.tensor(centre), atol=0.05)


def test_decode_returns_input_pixels_and_confidence():
    model = LandmarkModel("resnet18", 2, 64)
    points = torch.tensor([[[20.0, 30.0], [41.5, 9.25]]])
    logits = heatmap_targets(input_to_heatmap(points, HEATMAP_STRIDE), 16, 16, sigma=2.0)
    decoded, confidence = model.decode(logits)
    assert torch.allclose(decoded, points, atol=0.2)
    assert torch.allclose(confidence, torch.ones(1, 2), atol=0.05)


def test_decode_adds_the_mirror_offset_to_mirrored_crops_only():
    model = LandmarkModel("resnet18", 2, 64)
    logits = heatmap_targets(torch.tensor([[[20.0, 30.0], [41.5, 9.25]]]), 16, 16, sigma=2.0).repeat(2, 1, 1, 1)
    with torch.no_grad():
        model.mirror_offset.copy_(torch.tensor([[0.5, -0.25], [0.0, 1.0]]))
    plain = model.decode(logits)[0]
    mixed = model.decode(logits, mirrored=torch.tensor([False, True]))[0]
    assert torch.equal(mixed[0], plain[0])
    assert torch.allclose(mixed[1] - plain[1], torch.tensor([[2.0, -1.0], [0.0, 4.0]]))


@pytest.mark.parametrize("backbone", ["hrnet_w32", "tf_efficientnetv2_s", "resnet18"])
def test_output_shapes(backbone):
    model = LandmarkModel(backbone, 46, 64).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 64, 64) * 255)
    assert logits.shape == (2, 46, 16, 16)
    points, confidence = model.decode(logits)
    assert points.shape == (2, 46, 2) and confidence.shape == (2, 46)


def test_pretrained_weights_offline_says_how_to_continue():
    code = ("from model import create_backbone, WeightsUnavailable\n"
            "try:\n    create_backbone('resnet18', True, None)\n"
            "except WeightsUnavailable as err:\n    print(err)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert "--no-pretrained" in result.stdout and "--pretrained-path" in result.stdout


def test_pretrained_path_loads_a_local_state_dict(tmp_path, capsys):
    import timm
    source = timm.create_model("resnet18", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = LandmarkModel("resnet18", 4, 64, pretrained_path=str(tmp_path / "resnet18.pth"))
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)
    assert "backbone tensors from" in capsys.readouterr().out


def test_unknown_backbone_is_refused():
    with pytest.raises(ValueError, match="not a timm model"):
        LandmarkModel("no_such_net", 4, 64)


def test_broken_checkpoints_give_a_clear_error(tmp_path):
    truncated = tmp_path / "truncated.pth"
    torch.save({"model": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {}}, foreign)
    for path in (truncated, foreign, tmp_path / "missing.pth"):
        with pytest.raises(CheckpointError, match=str(path)):
            load_checkpoint(path)
