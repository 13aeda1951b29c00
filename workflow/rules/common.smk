# Config validation and target/path helpers. No other Python logic in .smk files.
import json

from snakemake.exceptions import WorkflowError

from dlbench.config import (
    ConfigError,
    adapt_recipe,
    check,
    eval_datasets,
    eval_split_specs,
    pretrain_recipe,
    pretrain_runs,
    recipe_json,
    supervised_recipe,
)
from dlbench.pretrain.base import load_all as load_pretrain_methods
from dlbench.report.figures import FIGURES

try:
    CFG = check(config)
except ConfigError as e:
    raise WorkflowError(f"invalid config: {e}")

DATA = CFG["data_root"]
THREADS = CFG["threads"]

wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",
    backbone="[A-Za-z0-9_-]+",
    pretrain="[A-Za-z0-9_-]+",
    adapt="[A-Za-z0-9_-]+",
    ensemble="[A-Za-z0-9_-]+",
    compress="[A-Za-z0-9_-]+",
    seed="[0-9]+",

MODEL = "{dataset}/{backbone}/{pretrain}/{adapt}/{ensemble}/{compress}/seed{seed}"
# A pretrained backbone (no head: adapted, never evaluated itself) and its adapted classifiers.
PRETRAINED = "{dataset}/{backbone}/{pretrain}/none/none/none/seed{seed}"
PROTOCOLS = (CFG.get("adapt") or {}).get("protocols", [])
PRETRAIN_METHODS = "|".join(load_pretrain_methods().names())


def adapted(pattern, **fixed):
    """One path per configured protocol; ``pattern`` uses {{wildcards}} and {adapt}."""
    return expand(pattern, adapt=PROTOCOLS, **fixed)


def supervised_ids():
    """Model ids of every supervised-from-scratch run x seed in the config."""
    return [
        f"{r['dataset']}/{r['backbone']}/none/supervised/none/none/seed{s}"
        for r in CFG["supervised"]["runs"]
        for s in CFG["seeds"]
    ]


def pretrained_ids():
    return [f"{d}/{b}/{m}/none/none/none/seed{s}" for d, b, m, s in pretrain_runs(CFG)]


def adapted_ids():
    return [f"{d}/{b}/{m}/{a}/none/none/seed{s}" for d, b, m, s in pretrain_runs(CFG) for a in PROTOCOLS]


def tsne_files():
    return [f"results/tsne/{d}/{b}/{m}/seed{s}.parquet" for d, b, m, s in pretrain_runs(CFG)]


def all_model_ids():
    """Every evaluated model of the config."""
    return supervised_ids() + adapted_ids()


def used_datasets():
    """Every dataset a job of this config reads (training sets and eval sets)."""
    return sorted({d for name in CFG["datasets"] for d in eval_datasets(CFG, name)})


def dataset_marker(name):
    return f"{DATA}/{name}/meta.json"


def eval_inputs(wildcards):
    return {
        "model": f"results/models/{MODEL}/model.safetensors".format(**wildcards),
        "data": [dataset_marker(d) for d in eval_datasets(CFG, wildcards.dataset)],
    }


def eval_split_args(wildcards):
    return " ".join(eval_split_specs(CFG, wildcards.dataset))


def supervised_recipe_json(wildcards):
    return recipe_json(supervised_recipe(CFG, wildcards.dataset, wildcards.backbone, int(wildcards.seed)))


def pretrain_recipe_json(wildcards):
    return recipe_json(pretrain_recipe(CFG, wildcards.dataset, wildcards.backbone, wildcards.pretrain,
                                       int(wildcards.seed)))


def adapt_recipe_json(wildcards):
    return recipe_json(adapt_recipe(CFG, wildcards.dataset, wildcards.backbone, wildcards.pretrain, int(wildcards.seed)))
