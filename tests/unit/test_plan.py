"""The expansion of a config into models: ids, named variants and sweeps, knobs, recipes, jobs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from dlbench.config import check, load_config
from dlbench.evaluate.predict import EvalSplit
from dlbench.ids import BadIdError, ModelId, check_name, format_value, sweep_name
from dlbench.plan import Plan

ROOT = Path(__file__).resolve().parents[2]


def raw(name: str = "configs/smoke.yaml") -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.fixture(scope="module")
def smoke() -> Plan:
    return Plan(load_config(ROOT / "configs/smoke.yaml"))


# ---- ids --------------------------------------------------------------------------------------

def test_model_id_round_trip_and_errors():
    text = "shapes/resnet10s/simclr/finetune-lr0.001/none/none/seed3"
    mid = ModelId.parse(text)
    assert str(mid) == text and mid.adapt == "finetune-lr0.001" and mid.seed == 3 and mid.last_stage == "adapt"
    assert ModelId("d", "b").last_stage == "backbone" and str(ModelId("d", "b")) == "d/b/none/none/none/none/seed0"
    assert mid.with_(adapt="none").last_stage == "pretrain"
    for bad in ["a/b/c", "a/b/c/d/e/f/g", "a/b/c/d/e/f/seedX", "a/b/c d/e/f/g/seed0"]:
        with pytest.raises(BadIdError):
            ModelId.parse(bad)
    with pytest.raises(BadIdError):
        ModelId("d", "b", seed=-1)


def test_sweep_names_carry_decimals_the_wildcards_accept():
    import re

    from dlbench.ids import NAME_REGEX

    assert [format_value(v) for v in (0.001, 1e-05, 20, 20.0, 0.5, 2.5e-3)] == ["0.001", "1e-05", "20", "20", "0.5",
                                                                              "0.0025"]
    assert sweep_name("ft", {"lr": 1e-05, "epochs": 10}) == "ft-lr1e-05-epochs10"
    for name in ("ft-lr1e-05-epochs10", "wise-alpha0.5", "a+b"):
        assert re.fullmatch(NAME_REGEX, name) and check_name(name) == name
    for bad in ("a/b", ".x", "x.", "", "a b"):
        with pytest.raises(BadIdError):
            check_name(bad)


# ---- variants and sweeps ------------------------------------------------------------------------

def test_smoke_plan_ids_and_jobs(smoke):
    assert len(smoke.ids(stage="supervised")) == 3 and len(smoke.ids(stage="pretrain")) == 6
    assert list(smoke.adapt_variants) == ["linear", "knn", "linear_10pct", "finetune-lr0.001", "finetune-lr0.002",
                                          "lpft", "zeroshot", "finetune_zs", "wiseft-alpha0", "wiseft-alpha0.5",
                                          "wiseft-alpha1"]
    assert smoke.frozen_variants == ["linear", "knn", "linear_10pct", "zeroshot"]
    assert smoke.trained_variants == ["finetune-lr0.001", "finetune-lr0.002", "lpft", "finetune_zs",
                                      "wiseft-alpha0", "wiseft-alpha0.5", "wiseft-alpha1"]
    # linear_10pct runs for simclr only (its `pretrain:` list): 5 variants x 6 backbones + 1, and the CLIP
    # variants (zero-shot, fine-tuning from it, WiSE-FT at 3 alphas) for clip only
    assert len(smoke.ids(stage="adapt")) == 5 * 6 + 1 + 5 and len(smoke.evaluated_ids) == 3 + 36
    wise = smoke.recipe("shapes/clip_tiny/clip/wiseft-alpha0.5/none/none/seed0")
    assert wise["source"] == "shapes/clip_tiny/clip/finetune_zs/none/none/seed0" and wise["knobs"] == {"alpha": 0.5}
    assert (smoke.recipe("shapes/clip_tiny/clip/finetune_zs/none/none/seed0")["source"]
            == "shapes/clip_tiny/clip/zeroshot/none/none/seed0")
    assert [i for i in smoke.ids(stage="adapt") if "/linear_10pct/" in i] == ["shapes/tiny/simclr/linear_10pct/none/none/seed0"]
    assert set(smoke.ids(job="frozen")) == {i for i in smoke.ids(stage="adapt")
                                           if any(f"/{v}/" in i for v in ("linear", "knn", "linear_10pct", "zeroshot"))}


def test_a_sweep_makes_one_variant_per_value_with_its_knob(smoke):
    a, b = (smoke.adapt_variants[f"finetune-lr{v}"] for v in ("0.001", "0.002"))
    assert (a.kind, a.base, b.base) == ("finetune", "finetune", "finetune")
    assert a.knobs == {"lr": 0.001, "epochs": 1, "weight_decay": 0.05, "fraction": 1.0, "shots": None} and b.knobs["lr"] == 0.002
    assert a.entry["train"] == {**b.entry["train"], "lr": 0.001}  # they differ only in lr
    ra = smoke.recipe("shapes/tiny/simclr/finetune-lr0.001/none/none/seed0")
    rb = smoke.recipe("shapes/tiny/simclr/finetune-lr0.002/none/none/seed0")
    assert ra["params"]["train"]["lr"] == 0.001 and rb["params"]["train"]["lr"] == 0.002
    assert ra["knobs"]["lr"] == 0.001 and ra["kind"] == "finetune" and ra["variant"] == "finetune-lr0.001"


def test_changing_one_variant_changes_only_its_recipes(smoke):
    """What makes `snakemake -n` rerun only that variant's jobs: no other recipe moves."""
    cfg = raw()
    cfg["adapt"]["variants"]["lpft"]["train"]["lr"] = 0.0007
    other = Plan(check(cfg))
    changed = {i for i in smoke.entries if smoke.recipe(i) != other.recipe(i)}
    assert changed == {i for i in smoke.ids(stage="adapt") if "/lpft/" in i}
    cfg = raw()
    cfg["adapt"]["variants"]["finetune"]["sweep"]["lr"] = [0.001, 0.003]
    other = Plan(check(cfg))
    assert set(other.entries) - set(smoke.entries) == {i.replace("lr0.002", "lr0.003") for i in smoke.entries
                                                          if "finetune-lr0.002" in i}
    assert all(other.recipe(i) == smoke.recipe(i) for i in set(smoke.entries) & set(other.entries))


def test_lpft_reads_the_linear_model_and_others_the_backbone(smoke):
    e = smoke.entries["shapes/tiny/byol/lpft/none/none/seed0"]
    assert e.source == "shapes/tiny/byol/linear/none/none/seed0" == e.recipe["source"] and e.job == "train"
    assert smoke.entries["shapes/tiny/byol/knn/none/none/seed0"].source == "shapes/tiny/byol/none/none/none/seed0"
    assert [r["variant"] for r in smoke.frozen_recipes("shapes/tiny/byol/none/none/none/seed0")] == ["linear", "knn"]


def test_pretrain_variants_merge_shared_settings_and_sweep():
    cfg = raw()
    cfg["pretrain"]["views"] = {"crop_scale": [0.2, 1.0], "grayscale_p": 0.2}
    cfg["pretrain"]["variants"] = {
        "simclr": {"train": {"lr": 0.5, "epochs": 3}, "views": {"grayscale_p": 0.0, "solarize_p": 0.1},
                   "params": {"temperature": 0.2}},
        "byol_ep": {"kind": "byol", "sweep": {"epochs": [1, 2]}}}
    cfg["pretrain"]["runs"][0]["variants"] = ["simclr", "byol_ep", "rotation"]
    plan = Plan(check(copy.deepcopy(cfg)))
    shared = cfg["pretrain"]["train"]
    r = plan.recipe("shapes/tiny/simclr/none/none/none/seed0")
    assert r["train"] == {**shared, "lr": 0.5, "epochs": 3} and r["params"] == {"temperature": 0.2}
    assert r["views"] == {"crop_scale": [0.2, 1.0], "grayscale_p": 0.0, "solarize_p": 0.1}
    assert r["knobs"] == {"epochs": 3, "lr": 0.5} and r["kind"] == "simclr"
    assert plan.recipe("shapes/tiny/rotation/none/none/none/seed0")["train"] == shared  # no entry: the kind as is
    ep = [i for i in plan.ids(stage="pretrain") if "byol_ep" in i]
    assert ep == ["shapes/tiny/byol_ep-epochs1/none/none/none/seed0", "shapes/tiny/byol_ep-epochs2/none/none/none/seed0"]
    assert plan.recipe(ep[1])["train"]["epochs"] == 2 and plan.recipe(ep[1])["kind"] == "byol"
    assert cfg["pretrain"]["train"] == shared  # nothing leaks into the config


def test_per_run_seeds_and_stl10_val_split():
    cfg = raw()
    cfg["seeds"] = [0, 1, 2]
    cfg["pretrain"]["runs"] = [{"dataset": "shapes", "backbone": "tiny", "variants": ["random"], "seeds": [5]},
                               {"dataset": "shapes", "backbone": "vit_tiny", "variants": ["mae"]}]
    plan = Plan(check(cfg))
    assert [ModelId.parse(i).seed for i in plan.ids(stage="pretrain")] == [5, 0, 1, 2]
    stl = Plan(load_config(ROOT / "configs/stl10.yaml"))
    assert all(stl.recipe(i)["val_split"] is None for i in stl.entries)
    assert stl.cfg["results_dir"] == "results/stl10"


def test_eval_split_specs(smoke):
    assert smoke.eval_split_specs("shapes") == [
        "test=shapes:test", "style=shapes:style", "test.gaussian_noise-1=shapes:test:gaussian_noise:1",
        "test.gaussian_noise-5=shapes:test:gaussian_noise:5", "test.contrast-1=shapes:test:contrast:1",
        "test.contrast-5=shapes:test:contrast:5"]
    default = Plan(load_config(ROOT / "config.yaml"))
    specs = default.eval_split_specs("shapes")
    assert len([s for s in specs if s.startswith("test.")]) == 14 * 5
    assert all(str(EvalSplit.parse(s)) == s for s in specs)
    assert all(EvalSplit.parse(s).max_images == 50 for s in specs if s.startswith("test."))
    assert smoke.embedding_split("shapes") == "test" and smoke.used_datasets == ["digits", "shapes"]


def test_tsne_models_first_seed_frozen_and_finetuned(smoke):
    panels = smoke.tsne_models
    assert panels["shapes/tiny/simclr/linear/none/none/seed0"] == "pretrained"
    assert panels["shapes/tiny/simclr/finetune-lr0.001/none/none/seed0"] == "finetuned"
    assert len(panels) == 2 * 6 and set(panels.values()) == {"pretrained", "finetuned"}


def test_reserved_and_bad_variant_names_fail():
    from dlbench.config import ConfigError

    cfg = raw()
    cfg["adapt"]["variants"]["supervised"] = {"kind": "knn"}
    with pytest.raises(ConfigError, match=r"adapt\.variants\.supervised: the name 'supervised' is reserved"):
        check(cfg)
    cfg = raw()
    cfg["adapt"]["variants"]["knn"]["sweep"] = {"k": ["a/b"]}
    with pytest.raises(ConfigError, match=r"adapt\.variants\.knn\.sweep"):
        check(cfg)


def test_evaluation_groups_are_the_seeds_of_one_model():
    """One evaluate job per group: the models of a group differ only in their seed, so a recipe change
    re-evaluates all of a group or none of it."""
    plan = Plan(load_config(ROOT / "config.yaml"))
    groups = plan.eval_groups
    assert sum(len(g) for g in groups.values()) == len(plan.evaluated_ids)
    assert groups["shapes/resnet10s/simclr/finetune/none/none"] == [
        "shapes/resnet10s/simclr/finetune/none/none/seed0", "shapes/resnet10s/simclr/finetune/none/none/seed1"]
    for key, ids in groups.items():
        recipes = [{k: v for k, v in plan.recipe(i).items() if k not in ("id", "seed", "source")} for i in ids]
        assert all(r == recipes[0] for r in recipes), key


def test_run_adapt_overrides_change_only_that_runs_models():
    """A pretrain run's `adapt` overrides (the ViT's fine-tuning recipe) reach its models only, as knobs too."""
    plan = Plan(load_config(ROOT / "config.yaml"))
    vit = plan.recipe("shapes/vit_t/mae/finetune/none/none/seed0")
    res = plan.recipe("shapes/resnet10s/simclr/finetune/none/none/seed0")
    assert vit["params"]["train"]["layer_decay"] == 0.75 and vit["knobs"]["lr"] == 0.001
    assert vit["params"]["train"]["batch_size"] == res["params"]["train"]["batch_size"]  # merged, not replaced
    assert "layer_decay" not in res["params"]["train"] and res["knobs"]["lr"] == 0.004
    vit_lpft = plan.recipe("shapes/vit_t/mae/lpft/none/none/seed0")["params"]
    res_lpft = plan.recipe("shapes/resnet10s/simclr/lpft/none/none/seed0")["params"]
    assert vit_lpft["train"]["layer_decay"] == 0.75 and "layer_decay" not in res_lpft["train"]
    assert vit_lpft["head_temperature"] == res_lpft["head_temperature"] == 16  # the variant's own, not overridden


# ---- label fractions and `pretrain:` restrictions -----------------------------------------------

def restricted_plan() -> Plan:
    """The smoke config plus label-fraction variants for two of its five pretrained backbones."""
    cfg = raw()
    cfg["adapt"]["variants"].pop("linear_10pct")  # smoke's own label-fraction variant: these tests bring theirs
    cfg["adapt"]["variants"]["lin_frac"] = {"kind": "linear", "sweep": {"fraction": [0.01, 0.1]},
                                            "pretrain": ["random", "simclr"]}
    cfg["adapt"]["variants"]["ft_1pct"] = {"kind": "finetune", "fraction": 0.01, "pretrain": ["simclr", "mae"],
                                           "train": {"epochs": 2, "batch_size": 100}}
    return Plan(check(cfg))


def test_pretrain_list_restricts_an_adapt_variant_to_those_methods(smoke):
    plan = restricted_plan()
    frac = {i for i in plan.ids(stage="adapt") if "/lin_frac-" in i or "/ft_1pct/" in i}
    assert frac == {f"shapes/{b}/{p}/{v}/none/none/seed0" for b, p, v in [
        ("tiny", "random", "lin_frac-fraction0.01"), ("tiny", "random", "lin_frac-fraction0.1"),
        ("tiny", "simclr", "lin_frac-fraction0.01"), ("tiny", "simclr", "lin_frac-fraction0.1"),
        ("tiny", "simclr", "ft_1pct"), ("vit_tiny", "mae", "ft_1pct")]}
    smoke_rest = {i for i in smoke.ids(stage="adapt") if "/linear_10pct/" not in i}  # popped in restricted_plan
    assert set(plan.ids(stage="adapt")) - frac == smoke_rest  # the rest is unchanged
    # recipes: `pretrain` is not a parameter; the fraction is a parameter and a knob
    r = plan.recipe("shapes/tiny/simclr/lin_frac-fraction0.01/none/none/seed0")
    assert r["params"]["fraction"] == 0.01 and r["knobs"] == {"fraction": 0.01, "shots": None} and "pretrain" not in r["params"]
    assert plan.adapt_variants["ft_1pct"].pretrain == ("simclr", "mae")
    assert plan.recipe("shapes/tiny/simclr/ft_1pct/none/none/seed0")["knobs"]["fraction"] == 0.01
    assert plan.recipe("shapes/tiny/byol/linear/none/none/seed0")["knobs"] == {"fraction": 1.0, "shots": None}
    # frozen jobs: one per pretrained model with exactly its frozen variants, one rule per distinct set
    assert plan.frozen_variants_of("simclr") == ["linear", "knn", "lin_frac-fraction0.01", "lin_frac-fraction0.1"]
    assert plan.frozen_variants_of("byol") == ["linear", "knn"]
    assert plan.frozen_sets == [(("linear", "knn", "lin_frac-fraction0.01", "lin_frac-fraction0.1"),
                                 ("random", "simclr")), (("linear", "knn"), ("rotation", "byol", "mae")),
                                (("linear", "knn", "zeroshot"), ("clip",))]
    assert smoke.frozen_sets == [(("linear", "knn"), ("random", "rotation", "byol", "mae")),
                                 (("linear", "knn", "linear_10pct"), ("simclr",)),
                                 (("linear", "knn", "zeroshot"), ("clip",))]
    assert [r["variant"] for r in plan.frozen_recipes("shapes/tiny/byol/none/none/none/seed0")] == ["linear", "knn"]
    assert len(plan.frozen_recipes("shapes/tiny/random/none/none/none/seed0")) == 4
    # t-SNE panels stay on the full-data variants
    assert plan.tsne_models == smoke.tsne_models


def test_frozen_evaluate_jobs_follow_the_restriction():
    from dlbench import dag

    plan = restricted_plan()
    assert dag.frozen_job_groups(plan, "shapes/tiny/byol/knn/none/none") == [
        "shapes/tiny/byol/linear/none/none", "shapes/tiny/byol/knn/none/none"]
    assert len(dag.frozen_job_groups(plan, "shapes/tiny/simclr/linear/none/none")) == 4
    assert set(plan.eval_groups) >= {"shapes/tiny/simclr/lin_frac-fraction0.1/none/none",
                                     "shapes/vit_tiny/mae/ft_1pct/none/none"}


def test_pretrain_list_of_a_swept_pretrain_variant_covers_its_points():
    cfg = raw()
    cfg["pretrain"]["variants"] = {"simclr": {"sweep": {"lr": [0.001, 0.002]}}}
    cfg["adapt"]["variants"]["lin_frac"] = {"kind": "linear", "fraction": 0.1, "pretrain": ["simclr"]}
    plan = Plan(check(cfg))
    assert sorted(i for i in plan.ids(stage="adapt") if "/lin_frac/" in i) == [
        "shapes/tiny/simclr-lr0.001/lin_frac/none/none/seed0", "shapes/tiny/simclr-lr0.002/lin_frac/none/none/seed0"]
