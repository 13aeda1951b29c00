"""Config checking: every error fails at config time and names the key (no job runs first)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dlbench.config import ConfigError, check, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["config.yaml", "configs/smoke.yaml", "configs/stl10.yaml"]


def raw(name: str = "configs/smoke.yaml") -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def fails(cfg: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        check(cfg)


@pytest.fixture(scope="module")
def methods():
    from dlbench.pretrain.base import load_all

    return load_all()


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / name)
    assert cfg["pretrain"]["runs"] and cfg["adapt"]["variants"]


def test_default_config_runs_every_registered_method_and_kind(methods):
    from dlbench.adapt.base import load_all

    cfg = load_config(ROOT / "config.yaml")
    listed = {v for run in cfg["pretrain"]["runs"] for v in run["variants"]}
    # a released model as it is (clip_weights) needs its weights file: the real-weights configs run it
    offline = {n for n in methods.names() if not methods.get(n).needs_weights}
    assert offline == set(methods.names()) - {"clip_weights"}
    assert listed == offline, sorted(offline - listed)
    kinds = {v.get("kind", k) for k, v in cfg["adapt"]["variants"].items()}
    # VPT and adapters need a ViT image tower: the embedded CLIP's is a ResNet (far better at this size),
    # so they run in the homework config (ViT-B/16) and in the unit tests
    vit_only = {k for k in load_all().names() if load_all().get(k).requires == "open_clip_vit"}
    assert vit_only == {"vpt", "adapter"}
    assert kinds == set(load_all().names()) - vit_only
    homework = yaml.safe_load((ROOT / "configs/clip_domainnet.yaml").read_text())["adapt"]["variants"]
    assert vit_only <= {v.get("kind", k) for k, v in homework.items()}


REAL_CLIP = {"configs/clip_cifar10.yaml": ("cifar10", ["cifar10:test", "cifar10_1:test", "cifar10_2:test",
                                                       "stl10:test_cifar10"]),
             "configs/clip_domainnet.yaml": ("domainnet", ["domainnet:test", "domainnet:clipart",
                                                           "domainnet:infograph", "domainnet:painting",
                                                           "domainnet:quickdraw", "domainnet:sketch"])}


@pytest.mark.parametrize("name", sorted(REAL_CLIP))
def test_real_clip_configs_check_once_their_weights_file_is_in_place(name, tmp_path, monkeypatch):
    from dlbench.plan import Plan

    raw_cfg = yaml.safe_load((ROOT / name).read_text())
    (weights,) = {b["weights"] for b in raw_cfg["backbones"].values()}
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"backbones\.\w+\.weights: file .* not found"):
        load_config(ROOT / name)
    (tmp_path / weights).parent.mkdir(parents=True)
    (tmp_path / weights).write_bytes(b"")  # config checking needs the file to exist (the run reads it)
    cfg = load_config(ROOT / name)
    dataset, evals = REAL_CLIP[name]
    assert [f"{e.get('dataset', dataset)}:{e['split']}" for e in cfg["datasets"][dataset]["eval"]] == evals
    plan = Plan(cfg)
    pre = [e for e in plan.entries.values() if e.stage == "pretrain"]
    assert {e.kind for e in pre} == {"clip_weights"} and all(e.recipe["backbone_spec"]["weights"] == weights
                                                           for e in pre)
    kinds = {e.kind for e in plan.entries.values() if e.stage == "adapt"}
    assert {"zeroshot", "finetune", "wiseft"} <= kinds
    ft = next(e for e in plan.entries.values() if e.id.adapt == "finetune")
    assert ft.source.split("/")[3] == "zeroshot"  # fine-tuning from the zero-shot head


def test_smoke_config_runs_one_method_per_family(methods):
    cfg = load_config(ROOT / "configs/smoke.yaml")
    families = [methods.get(v).family for run in cfg["pretrain"]["runs"] for v in run["variants"]]
    assert set(families) == {m.family for m in (methods.get(n) for n in methods.names())}


# ---- the three configs a new user got past `snakemake -n` before -------------------------------

def test_method_parameter_typo_fails_naming_the_key():
    cfg = raw()
    cfg["pretrain"]["variants"] = {"simclr": {"params": {"temprature": 0.2}}}
    fails(cfg, r"pretrain\.variants\.simclr\.params: unknown parameter 'temprature' of pretrain kind 'simclr'; "
               r"known: .*temperature")


def test_eval_split_the_dataset_lacks_fails_naming_the_key():
    cfg = raw()
    cfg["datasets"]["shapes"]["eval"][0] = {"split": "tset"}
    fails(cfg, r"datasets\.shapes\.eval\[0\]\.split: dataset 'shapes' has no split 'tset'; splits: .*test")


def test_unknown_device_fails_naming_the_key():
    cfg = raw()
    cfg["device"] = "tpu"
    fails(cfg, r"config key device: 'tpu' is not a device; use auto, cpu, cuda, cuda:N or mps")


# ---- more errors that name the key -----------------------------------------------------------

@pytest.mark.parametrize("mutate, pattern", [
    (lambda c: c["backbones"]["tiny"].update(model="resnet_does_not_exist"),
     r"backbones\.tiny\.model: unknown timm model 'resnet_does_not_exist'"),
    (lambda c: c["datasets"].update(imagenot=c["datasets"]["digits"]), r"datasets\.imagenot: unknown dataset"),
    (lambda c: c["supervised"]["train"].update(epocs=3), r"unknown config key supervised\.train\.epocs"),
    (lambda c: c["supervised"]["train"].update(epochs=-2), r"supervised\.train\.epochs: -2 is less than the minimum"),
    (lambda c: c["datasets"]["shapes"].update(train_split="trian"), r"datasets\.shapes\.train_split: .*no split 'trian'"),
    (lambda c: c["datasets"]["shapes"]["corruptions"].update(source="tst"), r"corruptions\.source: .*no split 'tst'"),
    (lambda c: c["datasets"]["shapes"]["corruptions"]["types"].append("frost"), r"unknown corruption 'frost'"),
    (lambda c: c["pretrain"]["runs"][0]["variants"].append("simclrr"),
     r"pretrain\.runs\[0\]\.variants: 'simclrr' is neither a variant"),
    (lambda c: c["pretrain"].update(variants={"x": {"kind": "bogus"}}), r"pretrain\.variants\.x\.kind: unknown pretrain kind"),
    (lambda c: c["pretrain"]["runs"][0]["variants"].append("mae"),
     r"pretrain\.runs\[0\]\.variants: 'mae' \(kind mae\) needs a Vision Transformer"),
    (lambda c: c["pretrain"]["views"].update(blur_p=0.5), r"unknown config key pretrain\.views\.blur_p"),
    (lambda c: c["pretrain"].update(variants={"simclr": {"views": {"blur_p": 0.5}}}),
     r"pretrain\.variants\.simclr\.views\.blur_p"),
    (lambda c: c["pretrain"].update(variants={"simclr": {"sweep": {"temperature": [0.1, 0.2]}}}),
     r"pretrain\.variants\.simclr\.sweep\.temperature: not a knob of kind 'simclr'; knobs: epochs, lr"),
    (lambda c: c["pretrain"]["train"].update(schedule="cosine_wrong"), r"pretrain\.train: .*cosine_wrong"),
    (lambda c: c["adapt"]["variants"].update(prompt={}), r"adapt\.variants\.prompt\.kind: unknown adapt kind 'prompt'"),
    (lambda c: c["adapt"]["variants"]["knn"].update(kk=5),
     r"unknown config key adapt\.variants\.knn\.kk: not a parameter of adapt kind 'knn'"),
    (lambda c: c["adapt"]["variants"]["finetune"].pop("train"), r"adapt\.variants\.finetune\.train: required"),
    (lambda c: c["adapt"]["variants"]["finetune"]["train"].update(lr=-1),
     r"adapt\.variants\.finetune\.train\.lr: -1 is less than or equal to the minimum"),
    (lambda c: c["adapt"]["variants"]["finetune"]["train"].update(epocs=1),
     r"unknown config key adapt\.variants\.finetune\.train\.epocs"),
    (lambda c: c["adapt"]["variants"]["lpft"].pop("of"), r"adapt\.variants\.lpft\.of: adapt kind 'lpft' starts from"),
    (lambda c: c["adapt"]["variants"]["lpft"].update(of="knn"), r"adapt\.variants\.lpft\.of: 'knn' is not an adapt variant "
                                                                r"of kind 'linear'"),
    (lambda c: c["adapt"]["variants"]["knn"].update(of="linear"), r"adapt\.variants\.knn\.of: adapt kind 'knn' does not"),
    (lambda c: c["adapt"]["variants"]["finetune"].update(sweep={"momentum": [0.9]}),
     r"adapt\.variants\.finetune\.sweep\.momentum: not a knob of kind 'finetune'"),
    (lambda c: c.pop("adapt"), r"pretrain: needs an adapt: section"),
    (lambda c: c["pretrain"]["runs"].append({"dataset": "shapes", "backbone": "tiny", "variants": ["simclr"]}),
     r"pretrain\.runs\[3\].*listed twice"),
    (lambda c: c["pretrain"]["runs"][0].update(backbone="huge"), r"pretrain\.runs\[0\]\.backbone: unknown backbone 'huge'"),
    (lambda c: c["datasets"]["shapes"]["corruptions"].update(max_images=0),
     r"datasets\.shapes\.corruptions\.max_images"),
    (lambda c: c.update(results_dir="/abs/path with space"), r"config key results_dir"),
])
def test_bad_config_names_the_key(mutate, pattern):
    cfg = raw()
    mutate(cfg)
    fails(cfg, pattern)


def test_views_that_a_backbone_reduces_to_nothing_fail_at_config_time():
    """DINO's 16 px local crops through a ConvNeXt (total stride 32) at 32 px: caught before any job."""
    cfg = raw()
    cfg["backbones"]["convnext"] = {"source": "timm", "model": "convnext_atto"}
    cfg["pretrain"]["runs"].append({"dataset": "shapes", "backbone": "convnext", "variants": ["simclr", "dino"]})
    fails(cfg, r"pretrain variant 'dino' \(kind dino\) feeds backbone 'convnext' \(timm convnext_atto\) local crops "
               r"of 16 px, which the backbone reduces to nothing")
    cfg["pretrain"]["variants"] = {"dino": {"params": {"local_size": 32}}}  # the way out the message points to
    check(cfg)


def test_jigsaw_tiles_are_checked_too():
    cfg = raw()
    cfg["backbones"]["convnext"] = {"source": "timm", "model": "convnext_atto"}
    cfg["pretrain"]["runs"].append({"dataset": "shapes", "backbone": "convnext", "variants": ["jigsaw"]})
    fails(cfg, r"'jigsaw' \(kind jigsaw\) feeds backbone 'convnext' .* tiles of 16 px")


@pytest.mark.parametrize("model", ["mobilevit_xxs", "fastvit_t8", "levit_128s", "beit_base_patch16_224"])
def test_mae_on_non_vision_transformer_named_like_vit(model):
    cfg = raw()
    cfg["backbones"]["other"] = {"source": "timm", "model": model}
    cfg["pretrain"]["runs"] = [{"dataset": "shapes", "backbone": "other", "variants": ["mae"]}]
    fails(cfg, r"pretrain\.runs\[0\]\.variants: 'mae' \(kind mae\) needs a Vision Transformer")


def test_mae_on_a_vit_passes():
    cfg = raw()
    cfg["pretrain"]["runs"] = [{"dataset": "shapes", "backbone": "vit_tiny", "variants": ["mae", "simclr"]}]
    check(cfg)


def test_check_fills_defaults_without_touching_the_input():
    cfg = raw()
    out = check(cfg)
    assert out["results_dir"] == "results" and out["device"] == "cpu" and out["backbones"]["tiny"]["source"] == "timm"
    assert "results_dir" not in cfg


def test_run_adapt_override_names_a_variant_and_a_valid_recipe():
    cfg = raw()
    cfg["pretrain"]["runs"][0]["adapt"] = {"finetuen": {"train": {"lr": 0.1}}}
    fails(cfg, r"pretrain.runs\[0\].adapt.finetuen: not an adapt variant")
    cfg["pretrain"]["runs"][0]["adapt"] = {"finetune": {"train": {"lr": 0.1, "epochz": 3}}}
    fails(cfg, r"pretrain.runs\[0\].adapt.finetune.train")


# ---- label fractions and `pretrain:` restrictions -----------------------------------------------

@pytest.mark.parametrize("mutate, pattern", [
    (lambda c: c["adapt"]["variants"]["linear"].update(fraction=0), r"adapt\.variants\.linear\.fraction: .*0 < fraction <= 1"),
    (lambda c: c["adapt"]["variants"]["knn"].update(fraction=1.5), r"adapt\.variants\.knn\.fraction: .*got 1\.5"),
    (lambda c: c["adapt"]["variants"]["finetune"].update(fraction="10%"), r"adapt\.variants\.finetune\.fraction"),
    (lambda c: c["adapt"]["variants"]["linear"].update(fraction=True), r"adapt\.variants\.linear\.fraction"),
    (lambda c: c["adapt"]["variants"]["linear"].update(sweep={"fraction": [0.1, -0.5]}),
     r"adapt\.variants\.linear\.sweep\.fraction: .*got -0\.5"),
    (lambda c: c["pretrain"]["runs"][0].update(adapt={"linear": {"fraction": 2}}),
     r"pretrain\.runs\[0\]\.adapt\.linear\.fraction"),
    (lambda c: c["adapt"]["variants"]["linear"].update(pretrain=["simclr", "simclrr"]),
     r"adapt\.variants\.linear\.pretrain: 'simclrr' is neither a registered pretraining method nor a pretrain "
     r"variant"),
    (lambda c: c["adapt"]["variants"]["linear"].update(pretrain=[]), r"adapt\.variants\.linear\.pretrain"),
    (lambda c: c["adapt"]["variants"]["linear"].update(pretrain="simclr"), r"adapt\.variants\.linear\.pretrain"),
    (lambda c: c["adapt"]["variants"]["linear"].update(pretrain=["simclr"]),  # lpft (of linear) runs for all
     r"adapt\.variants\.lpft\.pretrain: runs for random, rotation, byol, mae, clip, but its `of` variant 'linear'"),
])
def test_bad_fraction_or_pretrain_list_names_the_key(mutate, pattern):
    cfg = raw()
    mutate(cfg)
    fails(cfg, pattern)


def test_fraction_and_pretrain_list_pass():
    cfg = raw()
    cfg["adapt"]["variants"]["lin_frac"] = {"kind": "linear", "sweep": {"fraction": [0.01, 0.1]},
                                            "pretrain": ["random", "simclr", "mae"]}
    cfg["adapt"]["variants"]["ft_1pct"] = {"kind": "finetune", "fraction": 0.01, "pretrain": ["simclr"],
                                           "train": {"epochs": 2, "batch_size": 50}}
    cfg["adapt"]["variants"]["lpft_1pct"] = {"kind": "lpft", "of": "lin_frac-fraction0.01", "fraction": 0.01,
                                             "pretrain": ["simclr"], "train": {"epochs": 1}}
    out = check(cfg)
    assert out["adapt"]["variants"]["ft_1pct"]["pretrain"] == ["simclr"]
    # a method no run trains (runs trimmed to one method): the config stays valid, the variant makes no models
    cfg["pretrain"]["runs"] = [{"dataset": "shapes", "backbone": "tiny", "variants": ["random"]}]
    from dlbench.plan import Plan

    plan = Plan(check(cfg))
    assert not [i for i in plan.ids(stage="adapt") if "/ft_1pct/" in i]
    few = [i for i in plan.ids(stage="adapt") if "/lin_frac-fraction0.1/" in i]
    assert few and all(i.startswith("shapes/tiny/random/lin_frac-fraction0.1/none/none/seed") for i in few)
