import pytest
import torch

from dlbench.models.backbones import UnknownBackboneError, build_classifier, check_backbone_spec
from dlbench.models.checkpoint import CheckpointError, load_model, save_model

SPEC = {"timm": "resnet18", "kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8},
        "cifar_stem": True, "stem_stride": 2}


def test_timm_backbone_with_kwargs_and_cifar_stem():
    model = build_classifier(SPEC, 10)
    assert model.backbone.conv1.kernel_size == (3, 3) and model.backbone.conv1.stride == (2, 2)
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 10) and model.features(x).shape == (2, 64)


def test_vit_backbone():
    model = build_classifier({"timm": "vit_tiny_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2}}, 5)
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_unknown_backbone_names_key():
    with pytest.raises(UnknownBackboneError, match=r"backbones\.mine\.timm: unknown timm model 'resnet_nope'"):
        check_backbone_spec("mine", {"timm": "resnet_nope"})


def test_save_load_round_trip_and_truncation(tmp_path):
    model = build_classifier(SPEC, 3)
    save_model(tmp_path, model, {"backbone_spec": SPEC, "num_classes": 3, "input_size": [32, 32]})
    loaded, meta = load_model(tmp_path)
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated or corrupt"):
        load_model(tmp_path)
