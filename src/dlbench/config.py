"""Config validation and the expansion of a config into the grid of models and eval splits.

Both the Snakefile (``workflow/rules/common.smk``) and the CLI call ``load_config``/``check``,
so a bad config fails the same way everywhere, before any job runs, naming the key.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


class ConfigError(ValueError):
    """The config is invalid; the message names the offending key."""


def _schema() -> dict[str, Any]:
    path = SCHEMA_PATH
    if not path.exists():  # installed without the repo: the schema ships as package data
        path = Path(__file__).with_name("config.schema.yaml")
    return yaml.safe_load(path.read_text())


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Schema-check ``config`` and fill defaults; raise ConfigError naming the first bad key."""
    validator = jsonschema.Draft7Validator(_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if errors:
        e = errors[0]
        if e.validator == "additionalProperties":
            extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
            where = _key_path(e)
            keys = ", ".join(f"{where}.{k}" if where != "(top level)" else k for k in extra)
            raise ConfigError(f"unknown config key {keys}; allowed here: {sorted(e.schema.get('properties', {}))}")
        raise ConfigError(f"config key {_key_path(e)}: {e.message}")
    cfg = copy.deepcopy(config)
    cfg.setdefault("device", "auto")
    cfg.setdefault("data_root", "data")
    cfg.setdefault("threads", {})
    cfg["threads"].setdefault("train", 1)
    cfg["threads"].setdefault("evaluate", 1)
    cfg.setdefault("report", {})
    for ds in cfg["datasets"].values():
        ds.setdefault("unlabeled_split", "unlabeled")
        ds.setdefault("train_split", "train")
        ds.setdefault("val_split", "val")
        if "corruptions" in ds:
            ds["corruptions"].setdefault("source", "test")
    return cfg


def check(config: dict[str, Any]) -> dict[str, Any]:
    """Full check: schema, then registry names (datasets, backbones, corruptions) and cross-references."""
    from dlbench.data.registry import load_all
    from dlbench.models.backbones import UnknownBackboneError, check_backbone_spec

    cfg = validate(config)
    datasets = load_all()
    for name, ds in cfg["datasets"].items():
        if name not in datasets:
            raise ConfigError(f"datasets.{name}: unknown dataset {name!r}; known: {', '.join(datasets.names())}")
        for i, entry in enumerate(ds["eval"]):
            other = entry.get("dataset", name)
            if other not in datasets:
                raise ConfigError(f"datasets.{name}.eval[{i}].dataset: unknown dataset {other!r}")
            if "split" not in entry and "types" not in entry:
                raise ConfigError(f"datasets.{name}.eval[{i}]: needs 'split' or 'types' + 'severities'")
        if "corruptions" in ds:
            from dlbench.data.corruptions import corruption_names

            known = corruption_names()
            for t in ds["corruptions"]["types"]:
                if t not in known:
                    raise ConfigError(f"datasets.{name}.corruptions.types: unknown corruption {t!r}; known: {', '.join(known)}")
    for name, spec in cfg["backbones"].items():
        try:
            check_backbone_spec(name, spec)
        except UnknownBackboneError as e:
            raise ConfigError(str(e)) from None
    seen = set()
    for i, run in enumerate(cfg["supervised"]["runs"]):
        if run["dataset"] not in cfg["datasets"]:
            raise ConfigError(f"supervised.runs[{i}].dataset: {run['dataset']!r} is not under datasets:")
        if run["backbone"] not in cfg["backbones"]:
            raise ConfigError(f"supervised.runs[{i}].backbone: unknown backbone {run['backbone']!r}; "
                              f"defined: {', '.join(cfg['backbones'])}")
        key = (run["dataset"], run["backbone"])
        if key in seen:
            raise ConfigError(f"supervised.runs[{i}]: {key} is listed twice (model ids would collide)")
        seen.add(key)
    if "pretrain" in cfg:
        _check_pretrain(cfg)
    return cfg


def _is_vit(spec: dict[str, Any]) -> bool:
    """Whether timm builds a ``VisionTransformer`` (or subclass) for this name: by the module that
    registers it, not by the name (mobilevit, fastvit, levit are not ViTs in this sense)."""
    from timm.models import is_model_in_modules

    return is_model_in_modules(spec["timm"], ["vision_transformer", "deit", "vision_transformer_hybrid"])


def _check_pretrain(cfg: dict[str, Any]) -> None:
    """Registry names of methods and protocols, ViT-only methods on ViTs, runs against datasets/backbones."""
    from dlbench.adapt.base import load_all as load_protocols
    from dlbench.pretrain.base import load_all as load_methods

    methods, protocols = load_methods(), load_protocols()
    for name in cfg["pretrain"].get("methods", {}):
        if name not in methods:
            raise ConfigError(f"pretrain.methods.{name}: unknown pretrain method {name!r}; known: {', '.join(methods.names())}")
    seen = set()
    for i, run in enumerate(cfg["pretrain"]["runs"]):
        where = f"pretrain.runs[{i}]"
        if run["dataset"] not in cfg["datasets"]:
            raise ConfigError(f"{where}.dataset: {run['dataset']!r} is not under datasets:")
        if run["backbone"] not in cfg["backbones"]:
            raise ConfigError(f"{where}.backbone: unknown backbone {run['backbone']!r}; defined: {', '.join(cfg['backbones'])}")
        for m in run["methods"]:
            if m not in methods:
                raise ConfigError(f"{where}.methods: unknown pretrain method {m!r}; known: {', '.join(methods.names())}")
            if methods.get(m).requires == "vit" and not _is_vit(cfg["backbones"][run["backbone"]]):
                raise ConfigError(f"{where}.methods: {m!r} needs a Vision Transformer backbone; "
                                  f"{run['backbone']!r} is timm {cfg['backbones'][run['backbone']]['timm']!r}")
            key = (run["dataset"], run["backbone"], m)
            if key in seen:
                raise ConfigError(f"{where}: {key} is listed twice (model ids would collide)")
            seen.add(key)
    adapt = cfg.get("adapt") or {}
    if not adapt:
        raise ConfigError("pretrain: needs an adapt: section with protocols (a pretrained backbone alone is never evaluated)")
    for p in adapt["protocols"]:
        if p not in protocols:
            raise ConfigError(f"adapt.protocols: unknown adapt protocol {p!r}; known: {', '.join(protocols.names())}")
    for key in adapt:
        if key not in ("protocols", "tsne_points") and key not in protocols:
            raise ConfigError(f"unknown config key adapt.{key}; allowed here: protocols, tsne_points, "
                              f"{', '.join(protocols.names())}")
    for p in ("finetune", "lpft"):
        if p in adapt["protocols"] and "train" not in adapt.get(p, {}):
            raise ConfigError(f"adapt.{p}.train: required when {p!r} is in adapt.protocols")


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return check(raw or {})


# ---- expansion: what the DAG builds -------------------------------------------------------------

def eval_split_specs(cfg: dict[str, Any], dataset: str) -> list[str]:
    """Eval splits of ``dataset`` as ``NAME=DATASET:SPLIT[:CORRUPTION:SEVERITY]`` strings."""
    ds = cfg["datasets"][dataset]
    specs = []
    for entry in ds["eval"]:
        other = entry.get("dataset", dataset)
        prefix = "" if other == dataset else f"{other}."
        if "split" in entry:
            specs.append(f"{prefix}{entry['split']}={other}:{entry['split']}")
        else:
            for t in entry["types"]:
                for s in entry.get("severities", [1, 2, 3, 4, 5]):
                    specs.append(f"{prefix}{t}-{s}={other}:{t}-{s}")
    if "corruptions" in ds:
        c = ds["corruptions"]
        tail = f":{c['max_images']}" if c.get("max_images") else ""
        for t in c["types"]:
            for s in c["severities"]:
                specs.append(f"{c['source']}.{t}-{s}={dataset}:{c['source']}:{t}:{s}{tail}")
    return specs


def eval_datasets(cfg: dict[str, Any], dataset: str) -> list[str]:
    """Every dataset an evaluation of a ``dataset`` model reads (for the DAG's inputs)."""
    names = {dataset} | {e.get("dataset", dataset) for e in cfg["datasets"][dataset]["eval"]}
    return sorted(names)


def supervised_recipe(cfg: dict[str, Any], dataset: str, backbone: str, seed: int) -> dict[str, Any]:
    """The full, self-contained recipe of one supervised model (also its provenance)."""
    sup = cfg["supervised"]
    run = next(r for r in sup["runs"] if r["dataset"] == dataset and r["backbone"] == backbone)
    ds = cfg["datasets"][dataset]
    return {
        "dataset": dataset, "backbone": backbone, "backbone_spec": cfg["backbones"][backbone],
        "pretrain": "none", "adapt": "supervised", "seed": int(seed),
        "train_split": ds["train_split"], "val_split": ds["val_split"],
        "train": {**sup["train"], **run.get("train", {})},
        "augment": {**sup.get("augment", {}), **run.get("augment", {})},
        "label_smoothing": sup.get("label_smoothing", 0.0),
    }


def pretrain_runs(cfg: dict[str, Any]) -> list[tuple[str, str, str, int]]:
    """(dataset, backbone, method, seed) for every pretraining run of the config."""
    return [(r["dataset"], r["backbone"], m, s) for r in (cfg.get("pretrain") or {}).get("runs", [])
            for m in r["methods"] for s in r.get("seeds", cfg["seeds"])]


def pretrain_recipe(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int) -> dict[str, Any]:
    """The self-contained recipe of one pretraining run (method overrides on top of the shared settings)."""
    pre = cfg["pretrain"]
    over = (pre.get("methods") or {}).get(method, {})
    ds = cfg["datasets"][dataset]
    return {
        "dataset": dataset, "backbone": backbone, "backbone_spec": cfg["backbones"][backbone],
        "pretrain": method, "seed": int(seed),
        "unlabeled_split": ds["unlabeled_split"], "train_split": ds["train_split"], "val_split": ds["val_split"],
        "train": {**pre["train"], **over.get("train", {})},
        "views": {**pre.get("views", {}), **over.get("views", {})},
        "params": dict(over.get("params", {})),
    }


def adapt_recipe(cfg: dict[str, Any], dataset: str, backbone: str, method: str, seed: int) -> dict[str, Any]:
    """The recipe of one adapt job: every configured protocol's params for one pretrained backbone."""
    adapt = cfg["adapt"]
    ds = cfg["datasets"][dataset]
    return {
        "dataset": dataset, "backbone": backbone, "pretrain": method, "seed": int(seed),
        "train_split": ds["train_split"], "val_split": ds["val_split"],
        "protocols": {p: adapt.get(p, {}) for p in adapt["protocols"]},
        "tsne_points": int(adapt.get("tsne_points", 500)),
    }


def recipe_json(recipe: dict[str, Any]) -> str:
    return json.dumps(recipe, sort_keys=True, separators=(",", ":"))
