import subprocess
import sys

import pytest
import torch

from basics.backbone_weights import IMAGENET_MEAN
from basics.errors import CheckpointError, UsageError
from conftest import REPO
from model import LandmarkModel, load_landmark_model
from test_backbone_weights import packaged_lite0


@pytest.mark.parametrize("backbone", ["hrnet_w32", "tf_efficientnetv2_s", "resnet18"])
def test_output_shapes(backbone):
    model = LandmarkModel(backbone, 46).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 64, 64) * 255)
    assert logits.shape == (2, 46, 16, 16)
    points, confidence = model.codec.decode(logits)
    assert points.shape == (2, 46, 2) and confidence.shape == (2, 46)


def test_pretrained_weights_offline_says_how_to_continue():
    code = ("from model import create_backbone, WeightsUnavailable\n"
            "try:\n    create_backbone('resnet18', 'resnet18', True, None)\n"
            "except WeightsUnavailable as err:\n    print(err)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={"HF_HUB_OFFLINE": "1", "PATH": ""})
    assert "--no-pretrained" in result.stdout and "--pretrained-path" in result.stdout
    assert "--backbone efficientnet_lite0" in result.stdout  # the way out that needs no download


def test_pretrained_path_loads_a_local_state_dict(tmp_path, capsys):
    import timm
    source = timm.create_model("resnet18", pretrained=False)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = LandmarkModel("resnet18", 4, pretrained_path=str(tmp_path / "resnet18.pth"))
    assert torch.equal(model.backbone.conv1.weight, source.conv1.weight)
    assert "backbone tensors from" in capsys.readouterr().out


def test_unknown_backbone_is_refused():
    with pytest.raises(UsageError, match="not a timm model"):
        LandmarkModel("no_such_net", 4)


def test_broken_checkpoints_give_a_clear_error(tmp_path):
    truncated = tmp_path / "truncated.pth"
    torch.save({"model": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    foreign = tmp_path / "foreign.pth"
    torch.save({"state_dict": {}}, foreign)
    for path in (truncated, foreign, tmp_path / "missing.pth"):
        with pytest.raises(CheckpointError, match=str(path)):
            load_landmark_model(path)


def test_the_fine_head_gives_stride_2_heatmaps_that_decode_to_input_pixels():
    model = LandmarkModel("resnet18", 5, heatmap_stride=2).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 64, 64) * 255)
    assert logits.shape == (2, 5, 32, 32) and model.codec.stride == 2
    points = torch.tensor([[[10.0, 20.0], [33.3, 41.7], [50.0, 8.5], [31.5, 31.5], [3.0, 60.0]]])
    from basics.codec import heatmap_targets
    from basics.geometry import input_to_heatmap
    maps = heatmap_targets(input_to_heatmap(points, 2), 32, 32, sigma=3.0)
    assert torch.allclose(model.codec.decode(maps)[0], points, atol=0.2)
    with pytest.raises(UsageError, match="heatmap stride 8"):
        LandmarkModel("resnet18", 5, heatmap_stride=8)


def test_efficientnet_lite0_starts_from_the_packaged_imagenet_weights_without_a_download(capsys):
    model = LandmarkModel("efficientnet_lite0", 46, pretrained=True)
    assert "ImageNet weights from its pip package" in capsys.readouterr().out
    assert model.config["host"] == "tf_efficientnet_lite0"
    assert torch.equal(model.backbone.state_dict()["conv_stem.weight"], packaged_lite0()["_conv_stem.weight"])


def test_each_backbone_is_fed_as_its_weights_were_trained_and_the_model_records_it():
    lite = LandmarkModel("efficientnet_lite0", 5)
    assert lite.config["input_mean"] == lite.config["input_std"] == (127.5,) * 3
    for name in ("resnet18", "tf_efficientnetv2_s"):  # timm's hub weights: ImageNet's, unchanged
        assert LandmarkModel(name, 5).config["input_mean"] == IMAGENET_MEAN
    rebuilt = LandmarkModel(**lite.config)
    assert torch.equal(rebuilt.mean, lite.mean) and torch.equal(rebuilt.std, lite.std)


