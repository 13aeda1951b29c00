""""Any timm backbone" holds: seven families through supervised training and one method per SSL family.

Each family trains (one short epoch) through the real stages — supervised from scratch, and
pretraining with a pretext, a contrastive, a self-distillation and (ViTs only) a masked method —
then reloads from its directory alone with identical outputs.
"""

from __future__ import annotations

import pytest
import torch

from dlbench.models.checkpoint import load_backbone, load_model
from dlbench.models.inference import embed, predict_logits
from dlbench.pretrain.run import pretrain
from dlbench.supervised import train_supervised

from .ssl_helpers import make_colour_dataset

FAMILIES = {
    "resnet": {"model": "resnet18", "kwargs": {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64]}},
    "convnext": {"model": "convnext_atto", "kwargs": {"depths": [1, 1, 1, 1], "dims": [16, 32, 48, 64]}},
    "mobilenetv3": {"model": "mobilenetv3_small_050"},
    "deit": {"model": "deit_tiny_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48,
                                                         "depth": 2, "num_heads": 3}},
    "regnet": {"model": "regnetx_002"},
    "swin": {"model": "swin_tiny_patch4_window7_224", "kwargs": {"img_size": 32, "window_size": 4, "embed_dim": 24,
                                                                 "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1]}},
    "densenet": {"model": "densenet121", "kwargs": {"growth_rate": 8, "block_config": [2, 2, 2, 2]}},
}
SSL = {"pretext": "rotation", "contrastive": "simclr", "self_distillation": "byol"}
SMALL = {"simclr": {"proj_hidden": 32, "proj_dim": 16}, "byol": {"proj_hidden": 32, "proj_dim": 16, "pred_hidden": 32},
         "rotation": {}, "mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}}
TRAIN = {"epochs": 1, "batch_size": 16, "optimizer": "adamw", "lr": 1e-3, "warmup_epochs": 0}
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_colour_dataset(tmp_path_factory.mktemp("families"), {"unlabeled": 32, "train": 32, "val": 8,
                                                                       "test": 8}, size=32)


def spec(family: str) -> dict:
    return {"source": "timm", **FAMILIES[family]}


def methods(family: str) -> list[str]:
    return [*SSL.values(), *(["mae"] if family == "deit" else [])]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_supervised_then_reload(family, data, tmp_path):
    recipe = {"id": f"toy/{family}/none/supervised/none/none/seed0", "kind": "supervised", "dataset": "toy",
              "backbone": family, "backbone_spec": spec(family), "seed": 0, "train_split": "train", "val_split": "val",
              "params": {"train": TRAIN, "augment": {}, "label_smoothing": 0.0}, "knobs": {}}
    card = train_supervised(recipe, data, tmp_path / "sup", device="cpu")
    model, _ = load_model(tmp_path / "sup")
    x = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    logits = predict_logits(model, x)
    assert logits.shape == (4, 4) and torch.isfinite(logits).all()
    assert card["model"]["feature_dim"] == model.backbone.num_features == model.head.in_features


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_one_method_per_ssl_family(family, data, tmp_path):
    x = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8)
    for method in methods(family):
        recipe = {"id": f"toy/{family}/{method}/none/none/none/seed0", "kind": method, "variant": method,
                  "dataset": "toy", "backbone": family, "backbone_spec": spec(family), "seed": 0,
                  "unlabeled_split": "unlabeled", "train_split": "train", "val_split": "val", "train": TRAIN,
                  "views": {}, "params": SMALL[method], "knobs": {}}
        card = pretrain(recipe, data, tmp_path / method, device="cpu")
        history = __import__("json").loads((tmp_path / method / "history.json").read_text())
        assert history[-1]["train_loss"] == history[-1]["train_loss"], (family, method)  # finite, not NaN
        bb, _ = load_backbone(tmp_path / method)
        assert bb.num_features == card["model"]["feature_dim"]
        assert torch.isfinite(embed(bb, x)).all()
