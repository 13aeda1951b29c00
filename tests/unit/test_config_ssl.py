"""Config of the self-supervised stages: pretrain/adapt validation (errors name the key) and expansion."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dlbench.config import (ConfigError, adapt_recipe, check, eval_split_specs, load_config, pretrain_recipe,
                            pretrain_runs)
from dlbench.evaluate.predict import EvalSplit

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["config.yaml", "configs/smoke.yaml", "configs/stl10.yaml"]
pytestmark = pytest.mark.usefixtures("one_thread")


def raw(name: str = "configs/smoke.yaml") -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.fixture(scope="module")
def methods():
    from dlbench.pretrain.base import load_all

    return load_all()


@pytest.fixture(scope="module")
def default_cfg():
    return load_config(ROOT / "config.yaml")


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / name)
    assert cfg["pretrain"]["runs"] and cfg["adapt"]["protocols"]


@pytest.mark.parametrize("name", ["config.yaml", "configs/smoke.yaml"])
def test_config_runs_every_registered_method(name, methods):
    cfg = load_config(ROOT / name)
    listed = {m for run in cfg["pretrain"]["runs"] for m in run["methods"]}
    registered = set(methods.names())
    assert listed <= registered
    assert listed == registered, f"{name} misses {sorted(registered - listed)}"


@pytest.mark.parametrize("name", CONFIGS)
def test_vit_only_methods_only_on_vits(name, methods):
    cfg = load_config(ROOT / name)
    for run in cfg["pretrain"]["runs"]:
        timm_name = cfg["backbones"][run["backbone"]]["timm"]
        for m in run["methods"]:
            if methods.get(m).requires == "vit":
                assert timm_name.startswith("vit"), (name, run, m)
    if name == "config.yaml":
        mae_runs = [r for r in cfg["pretrain"]["runs"] if "mae" in r["methods"]]
        assert mae_runs and all(cfg["backbones"][r["backbone"]]["timm"].startswith("vit") for r in mae_runs)


def test_default_adapt_runs_every_protocol(default_cfg):
    from dlbench.adapt.base import load_all

    assert set(default_cfg["adapt"]["protocols"]) == set(load_all().names())


# ---- errors name the key ------------------------------------------------------------------------

def test_unknown_method_in_run():
    cfg = raw()
    cfg["pretrain"]["runs"][0]["methods"].append("simclrr")
    with pytest.raises(ConfigError, match=r"pretrain\.runs\[0\]\.methods: unknown pretrain method 'simclrr'"):
        check(cfg)


def test_unknown_method_override():
    cfg = raw()
    cfg["pretrain"]["methods"] = {"bogus": {"params": {}}}
    with pytest.raises(ConfigError, match=r"pretrain\.methods\.bogus: unknown pretrain method"):
        check(cfg)


def test_unknown_protocol():
    cfg = raw()
    cfg["adapt"]["protocols"].append("prompt_tuning")
    with pytest.raises(ConfigError, match=r"adapt\.protocols: unknown adapt protocol 'prompt_tuning'"):
        check(cfg)


def test_mae_on_resnet():
    cfg = raw()
    cfg["pretrain"]["runs"][0]["methods"].append("mae")  # run 0 is on the ResNet 'tiny'
    with pytest.raises(ConfigError, match=r"pretrain\.runs\[0\]\.methods: 'mae' needs a Vision Transformer"):
        check(cfg)


@pytest.mark.parametrize("protocol", ["finetune", "lpft"])
def test_training_protocol_needs_train(protocol):
    cfg = raw()
    del cfg["adapt"][protocol]
    with pytest.raises(ConfigError, match=rf"adapt\.{protocol}\.train: required"):
        check(cfg)


def test_training_protocol_section_without_train_is_schema_error():
    cfg = raw()
    cfg["adapt"]["finetune"] = {"augment": {"flip": True}}
    with pytest.raises(ConfigError, match=r"adapt\.finetune"):
        check(cfg)


@pytest.mark.parametrize("value", [{}, {"weight_decays": [0.1]}, 3])
def test_unknown_key_under_adapt(value):
    cfg = raw()
    cfg["adapt"]["lineaar"] = value
    with pytest.raises(ConfigError, match=r"adapt\.lineaar"):
        check(cfg)


def test_unknown_param_of_known_protocol():
    cfg = raw()
    cfg["adapt"]["knn"] = {"kk": 5}
    with pytest.raises(ConfigError, match=r"unknown config key adapt\.knn\.kk"):
        check(cfg)


def test_unknown_view_option():
    cfg = raw()
    cfg["pretrain"]["views"]["blur_p"] = 0.5
    with pytest.raises(ConfigError, match=r"unknown config key pretrain\.views\.blur_p"):
        check(cfg)


def test_unknown_view_option_in_method_override():
    cfg = raw()
    cfg["pretrain"]["methods"] = {"simclr": {"views": {"blur_p": 0.5}}}
    with pytest.raises(ConfigError, match=r"pretrain\.methods\.simclr\.views\.blur_p"):
        check(cfg)


def test_pretrain_without_adapt():
    cfg = raw()
    del cfg["adapt"]
    with pytest.raises(ConfigError, match="adapt"):
        check(cfg)


def test_duplicate_pretrain_run():
    cfg = raw()
    cfg["pretrain"]["runs"].append({"dataset": "shapes", "backbone": "tiny", "methods": ["simclr"]})
    with pytest.raises(ConfigError, match=r"pretrain\.runs\[2\].*listed twice"):
        check(cfg)


def test_pretrain_run_unknown_backbone_and_dataset():
    cfg = raw()
    cfg["pretrain"]["runs"][0]["backbone"] = "huge"
    with pytest.raises(ConfigError, match=r"pretrain\.runs\[0\]\.backbone: unknown backbone 'huge'"):
        check(cfg)
    cfg = raw()
    cfg["pretrain"]["runs"][1]["dataset"] = "digits2"
    with pytest.raises(ConfigError, match=r"pretrain\.runs\[1\]\.dataset"):
        check(cfg)


# ---- expansion ----------------------------------------------------------------------------------

def test_pretrain_runs_honour_per_run_seeds():
    cfg = raw()
    cfg["seeds"] = [0, 1, 2]
    cfg["pretrain"]["runs"] = [
        {"dataset": "shapes", "backbone": "tiny", "methods": ["random", "simclr"], "seeds": [5]},
        {"dataset": "shapes", "backbone": "vit_tiny", "methods": ["mae"]},  # top-level seeds
    ]
    cfg = check(cfg)
    assert pretrain_runs(cfg) == [
        ("shapes", "tiny", "random", 5), ("shapes", "tiny", "simclr", 5),
        ("shapes", "vit_tiny", "mae", 0), ("shapes", "vit_tiny", "mae", 1), ("shapes", "vit_tiny", "mae", 2),
    ]


def test_pretrain_runs_of_shipped_configs(default_cfg):
    runs = pretrain_runs(default_cfg)
    expected = sum(len(r["methods"]) * len(r.get("seeds", default_cfg["seeds"]))
                   for r in default_cfg["pretrain"]["runs"])
    assert len(runs) == expected and len(set(runs)) == len(runs)
    smoke = load_config(ROOT / "configs/smoke.yaml")
    assert {s for *_, s in pretrain_runs(smoke)} == {0}
    assert pretrain_runs({"seeds": [0]}) == []


def test_pretrain_recipe_merges_method_overrides():
    cfg = raw()
    cfg["pretrain"]["views"] = {"crop_scale": [0.2, 1.0], "grayscale_p": 0.2}
    cfg["pretrain"]["methods"] = {"simclr": {"train": {"lr": 0.5, "epochs": 3}, "views": {"grayscale_p": 0.0,
                                                                                         "solarize_p": 0.1},
                                             "params": {"temperature": 0.2}}}
    cfg = check(cfg)
    shared_lr = cfg["pretrain"]["train"]["lr"]
    assert shared_lr != 0.5
    r = pretrain_recipe(cfg, "shapes", "tiny", "simclr", 7)
    shared = cfg["pretrain"]["train"]
    assert r["train"] == {**shared, "lr": 0.5, "epochs": 3}
    assert r["train"]["batch_size"] == shared["batch_size"]
    assert r["views"] == {"crop_scale": [0.2, 1.0], "grayscale_p": 0.0, "solarize_p": 0.1}
    assert r["params"] == {"temperature": 0.2}
    assert r["seed"] == 7 and r["pretrain"] == "simclr" and r["backbone_spec"] == cfg["backbones"]["tiny"]
    assert (r["unlabeled_split"], r["train_split"], r["val_split"]) == ("unlabeled", "train", "val")
    other = pretrain_recipe(cfg, "shapes", "tiny", "byol", 7)  # no override: the shared settings
    assert other["train"] == shared and other["views"] == cfg["pretrain"]["views"] and other["params"] == {}
    # the override does not leak into the config
    assert cfg["pretrain"]["train"]["lr"] == shared_lr and "solarize_p" not in cfg["pretrain"]["views"]


def test_pretrain_recipe_of_stl10_keeps_null_val_split():
    cfg = load_config(ROOT / "configs/stl10.yaml")
    r = pretrain_recipe(cfg, "stl10", "resnet18", "simclr", 0)
    assert r["val_split"] is None and r["params"] == {"temperature": 0.2}
    assert adapt_recipe(cfg, "stl10", "resnet18", "simclr", 0)["val_split"] is None


def test_adapt_recipe():
    cfg = load_config(ROOT / "configs/smoke.yaml")
    r = adapt_recipe(cfg, "shapes", "tiny", "simclr", 0)
    assert set(r["protocols"]) == {"linear", "knn", "finetune", "lpft"}
    assert r["protocols"]["linear"] == cfg["adapt"].get("linear", {})
    assert r["protocols"]["finetune"] == cfg["adapt"]["finetune"] and "train" in r["protocols"]["lpft"]
    assert r["tsne_points"] == cfg["adapt"].get("tsne_points", 500) and r["pretrain"] == "simclr"
    assert (r["train_split"], r["val_split"], r["seed"]) == ("train", "val", 0)
    cfg["adapt"].pop("tsne_points", None)
    assert adapt_recipe(cfg, "shapes", "tiny", "simclr", 0)["tsne_points"] == 500


def test_eval_split_specs_max_images():
    cfg = raw()
    cfg["datasets"]["shapes"]["corruptions"]["max_images"] = 200
    cfg = check(cfg)
    specs = eval_split_specs(cfg, "shapes")
    assert specs == ["test=shapes:test", "style=shapes:style",
                     "test.gaussian_noise-1=shapes:test:gaussian_noise:1:200",
                     "test.gaussian_noise-5=shapes:test:gaussian_noise:5:200",
                     "test.contrast-1=shapes:test:contrast:1:200", "test.contrast-5=shapes:test:contrast:5:200"]
    # no max_images: all source images, no 5th part
    assert eval_split_specs(cfg, "digits") == ["test=digits:test", "test.pixelate-3=digits:test:pixelate:3"]
    cfg["datasets"]["shapes"]["corruptions"]["max_images"] = 0
    with pytest.raises(ConfigError, match=r"datasets\.shapes\.corruptions\.max_images"):
        check(cfg)


def test_eval_split_specs_of_default_config(default_cfg):
    max_images = default_cfg["datasets"]["shapes"]["corruptions"].get("max_images")
    specs = eval_split_specs(default_cfg, "shapes")
    corrupted = [s for s in specs if s.startswith("test.")]
    assert len(corrupted) == 14 * 5
    for s in specs:
        spec = EvalSplit.parse(s)
        assert str(spec) == s
        if spec.corruption:
            assert spec.max_images == max_images and (max_images is None or s.endswith(f":{max_images}"))
        else:
            assert spec.max_images is None


def test_mae_on_vit_backbone_passes():
    cfg = raw()
    cfg["pretrain"]["runs"] = [{"dataset": "shapes", "backbone": "vit_tiny", "methods": ["mae", "simclr"]}]
    assert pretrain_runs(check(cfg)) == [("shapes", "vit_tiny", "mae", 0), ("shapes", "vit_tiny", "mae", 1),
                                         ("shapes", "vit_tiny", "simclr", 0), ("shapes", "vit_tiny", "simclr", 1)]


@pytest.mark.parametrize("timm_name", ["mobilevit_xxs", "fastvit_t8", "levit_128s", "beit_base_patch16_224"])
def test_mae_on_non_vision_transformer_named_like_vit(timm_name):
    cfg = raw()
    cfg["backbones"]["other"] = {"timm": timm_name}
    cfg["pretrain"]["runs"] = [{"dataset": "shapes", "backbone": "other", "methods": ["mae"]}]
    with pytest.raises(ConfigError, match=r"pretrain\.runs\[0\]\.methods: 'mae' needs a Vision Transformer"):
        check(cfg)
