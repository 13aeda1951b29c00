"""Backbones, sources, heads, model cards and load_model: every model rebuilds from its directory alone."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from dlbench.cards import model_section
from dlbench.device import autocast
from dlbench.errors import CheckpointError
from dlbench.models.backbones import BackboneSpecError, Classifier, build_backbone, build_classifier, check_spec
from dlbench.models.checkpoint import load_backbone, load_model, read_card, save_model
from dlbench.models.inference import embed, predict_logits
from dlbench.models.transforms import TRANSFORMS, register_transform

SPEC = {"source": "timm", "model": "resnet18", "kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64],
                                                         "stem_width": 8}, "cifar_stem": True, "stem_stride": 2}
VIT = {"source": "timm", "model": "vit_tiny_patch16_224",
       "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 3}}
pytestmark = pytest.mark.usefixtures("one_thread")


def images(n: int = 6, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def save(tmp_path, model, classes=("a", "b", "c")):
    save_model(tmp_path, model, {"id": "toy/x/none/supervised/none/none/seed0",
                                 "model": model_section(model, list(classes))})
    return tmp_path


def test_timm_backbone_with_kwargs_and_cifar_stem():
    model = build_classifier(SPEC, 10, (32, 32))
    net = model.backbone.net
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (2, 2)
    x = torch.rand(2, 3, 32, 32)
    assert model(x).shape == (2, 10) and model.features(x).shape == (2, 64)
    assert model.input_size == (32, 32) and not model.backbone.fixed_size


def test_vit_backbone_has_a_fixed_size_and_resizes_to_it():
    bb = build_backbone(VIT, (16, 16))  # the ViT's position grid wins over the data size
    assert bb.fixed_size and bb.input_size == (32, 32)
    x = torch.rand(2, 3, 16, 16)
    up = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    bb.eval()
    with torch.no_grad():
        torch.testing.assert_close(bb(x), bb(up))


def test_feature_width_is_the_real_pooled_output():
    """MobileNetV3's pooled output goes through a conv head: timm's num_features (576) is not its width."""
    bb = build_backbone({"source": "timm", "model": "mobilenetv3_small_100"}, (32, 32))
    assert bb.net.num_features == 576 and bb.num_features == 1024
    assert build_classifier({"source": "timm", "model": "mobilenetv3_small_100"}, 5, (32, 32))(
        torch.rand(2, 3, 32, 32)).shape == (2, 5)


def test_unknown_model_and_keys_name_the_key():
    with pytest.raises(BackboneSpecError, match=r"backbones\.mine\.model: unknown timm model 'resnet_nope'"):
        check_spec("mine", {"source": "timm", "model": "resnet_nope"})
    with pytest.raises(BackboneSpecError, match=r"backbones\.mine\.source: unknown backbone source 'hub'"):
        check_spec("mine", {"source": "hub", "model": "resnet18"})
    with pytest.raises(BackboneSpecError, match=r"unknown config key backbones\.mine\.timm"):
        check_spec("mine", {"timm": "resnet18", "model": "resnet18"})
    with pytest.raises(BackboneSpecError, match=r"backbones\.mine\.weights: file '/no/such.safetensors' not found"):
        check_spec("mine", {"model": "resnet18", "weights": "/no/such.safetensors"})


def test_pretrained_weights_from_a_local_file(tmp_path):
    """A timm backbone loads weights from a file named in config (timm's own format, classifier dropped)."""
    import timm

    torch.manual_seed(5)
    full = timm.create_model("resnet18", num_classes=7, **{k: tuple(v) if isinstance(v, list) else v for k, v in SPEC["kwargs"].items()})
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, str(tmp_path / "w.safetensors"))
    spec = {k: v for k, v in SPEC.items() if k not in ("cifar_stem", "stem_stride")}
    spec["weights"] = str(tmp_path / "w.safetensors")
    check_spec("pre", spec)
    bb = build_backbone(spec, (32, 32))
    for k, v in bb.net.state_dict().items():
        assert torch.equal(v, full.state_dict()[k]), k
    torch.save(full.state_dict(), tmp_path / "w.pth")  # a tensors-only torch file loads too (weights_only)
    bb2 = build_backbone({**spec, "weights": str(tmp_path / "w.pth")}, (32, 32))
    assert all(torch.equal(a, b) for a, b in zip(bb.state_dict().values(), bb2.state_dict().values()))
    bad = {**spec, "weights": str(tmp_path / "w.safetensors"), "kwargs": {**SPEC["kwargs"], "channels": [8, 16, 32, 32]}}
    with pytest.raises(Exception, match="weights do not fit|size mismatch"):
        build_backbone(bad, (32, 32))


def test_model_owns_its_normalisation_through_every_path(tmp_path):
    """A CLIP-like model with its own mean/std: training-time forward, evaluation and reload agree exactly."""
    spec = {**SPEC, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    torch.manual_seed(0)
    model = build_classifier(spec, 3, (32, 32)).eval()
    assert model.backbone.preprocess_spec()["mean"] == [0.5, 0.5, 0.5]
    x = images()
    # under the evaluate path's autocast policy (bf16 on CPUs with native bf16 kernels), so the three
    # paths differ only in where the normalisation happens
    with torch.no_grad(), autocast(torch.device("cpu")):
        train_path = model(x.permute(0, 3, 1, 2).float().div(255)).float()  # what an objective feeds: [0, 1]
        by_hand = model.head(model.backbone.net((x.permute(0, 3, 1, 2).float().div(255) - 0.5) / 0.25)).float()
    eval_path = predict_logits(model, x)
    assert torch.equal(train_path, eval_path) and torch.equal(train_path, by_hand)
    loaded, card = load_model(save(tmp_path, model))
    assert card["model"]["preprocess"]["std"] == [0.25, 0.25, 0.25]
    assert torch.equal(predict_logits(loaded, x), eval_path)
    assert torch.equal(embed(loaded.backbone, x), embed(model.backbone, x))


def test_save_load_round_trip_and_truncation(tmp_path):
    model = build_classifier(SPEC, 3, (32, 32))
    loaded, card = load_model(save(tmp_path, model))
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert card["model"]["classes"] == ["a", "b", "c"] and card["model"]["feature_dim"] == 64
    bb, _ = load_backbone(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(bb.state_dict().values(), model.backbone.state_dict().values()))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated or corrupt"):
        load_model(tmp_path)


def test_a_card_without_a_model_section_is_refused(tmp_path):
    (tmp_path / "model.json").write_text('{"model_id": "old"}')
    with pytest.raises(CheckpointError, match="not a model card"):
        read_card(tmp_path)


class ScaledHead(nn.Module):
    def __init__(self, head: nn.Module, scale: float) -> None:
        super().__init__()
        self.inner = head
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.inner(f) * self.scale


def test_load_model_replays_recorded_transforms(tmp_path):
    """A structure-changing transform recorded in the card is replayed before the weights load."""
    if "test_scale_head" not in TRANSFORMS:
        @register_transform("test_scale_head")
        def scale_head(model: Classifier, spec: dict) -> Classifier:
            model.head = ScaledHead(model.head, spec["scale"])
            return model

    torch.manual_seed(0)
    model = build_classifier(SPEC, 3, (32, 32))
    spec = {"kind": "test_scale_head", "scale": 2.0}
    model = TRANSFORMS.get("test_scale_head")(model, spec).eval()
    with torch.no_grad():
        model.head.scale.fill_(3.0)  # a trained value, stored in the weights
    save_model(tmp_path, model, {"id": "x", "model": {**model_section(model.backbone, ["a", "b", "c"]),
                                                      "head": {"kind": "linear"}, "num_classes": 3,
                                                      "transforms": [spec]}})
    loaded, _ = load_model(tmp_path)
    assert isinstance(loaded.head, ScaledHead) and float(loaded.head.scale) == 3.0
    assert torch.equal(predict_logits(loaded, images()), predict_logits(model, images()))
