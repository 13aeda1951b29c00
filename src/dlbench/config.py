"""Config validation: a bad config fails before any job runs, with a message naming the key.

Both the Snakefile (``workflow/rules/common.smk``) and the CLI call ``load_config``/``check``.
The JSON schema (``workflow/schemas/config.schema.yaml``) checks the shape; ``check`` then checks
every name against its registry (datasets and their splits, backbone sources and models,
corruptions, pretraining and adaptation kinds, schedules) and every variant's parameters
against its registered kind, and that every view a method feeds a backbone survives the
backbone's reduction. The expansion of a valid config into models and recipes is ``dlbench.plan``.
"""

from __future__ import annotations

import copy
import itertools
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


def _key_path(path: Any) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _schema_errors(instance: Any, schema: dict[str, Any], prefix: str = "") -> None:
    """Raise ConfigError for the shallowest schema violation, naming its key (under ``prefix``)."""
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(instance), key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if not errors:
        return
    e = errors[0]
    where = _key_path([*([prefix] if prefix else []), *e.absolute_path])
    if e.validator == "additionalProperties":
        extra = sorted(set(e.instance) - set(e.schema.get("properties", {})))
        keys = ", ".join(f"{where}.{k}" if where != "(top level)" else k for k in extra)
        raise ConfigError(f"unknown config key {keys}; allowed here: {sorted(e.schema.get('properties', {}))}")
    if e.validator == "pattern" and where == "device":
        raise ConfigError(f"config key device: {e.instance!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    raise ConfigError(f"config key {where}: {e.message}")


def validate(config: dict[str, Any]) -> dict[str, Any]:
    """Schema-check ``config`` and fill defaults; raise ConfigError naming the first bad key."""
    _schema_errors(config, _schema())
    cfg = copy.deepcopy(config)
    cfg.setdefault("device", "auto")
    cfg.setdefault("results_dir", "results")
    cfg["results_dir"] = cfg["results_dir"].rstrip("/")
    cfg.setdefault("threads", {})
    cfg["threads"].setdefault("train", 1)
    cfg["threads"].setdefault("evaluate", 1)
    cfg.setdefault("evaluate", {})
    cfg.setdefault("cluster", {})
    cfg.setdefault("report", {})
    for ds in cfg["datasets"].values():
        ds.setdefault("unlabeled_split", "unlabeled")
        ds.setdefault("train_split", "train")
        ds.setdefault("val_split", "val")
        if "corruptions" in ds:
            ds["corruptions"].setdefault("source", "test")
    for spec in cfg["backbones"].values():
        spec.setdefault("source", "timm")
    return cfg


# ---- helpers used by the checks below and by dlbench.plan --------------------------------------

def get_path(d: dict[str, Any], path: str) -> Any:
    """``get_path(d, "train.lr")`` -> d["train"]["lr"] (None when absent)."""
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def set_path(d: dict[str, Any], path: str, value: Any) -> None:
    *head, last = path.split(".")
    for part in head:
        d = d.setdefault(part, {})
    d[last] = value


def sweep_points(sweep: dict[str, list[Any]] | None) -> list[dict[str, Any]]:
    """The combinations of a ``sweep`` (knob -> values), in config order; ``[{}]`` without one."""
    if not sweep:
        return [{}]
    keys = list(sweep)
    return [dict(zip(keys, values)) for values in itertools.product(*(sweep[k] for k in keys))]


def check_train(train: dict[str, Any], where: str) -> None:
    """The engine's own check of a training recipe (unknown keys, schedule name and parameters)."""
    from dlbench.train.engine import TrainConfig

    try:
        TrainConfig.from_dict(train, seed=0)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(f"{where}: {e}") from None


RESERVED = {"pretrain": ("none",), "adapt": ("none", "supervised")}
# variant keys that are not the kind's parameters: its kind, the variant it starts from, its sweep,
# and (adapt variants) the pretrain variants it runs for (default: all); dlbench.plan strips the same
VARIANT_KEYS = ("kind", "of", "sweep", "pretrain")


def _check_variant_name(slot: str, name: str, sweep: dict[str, Any] | None) -> None:
    """A variant name (and each of its sweep points' names) must be a model-id slot no rule claims."""
    from dlbench.ids import BadIdError, sweep_name

    if name in RESERVED[slot]:
        raise ConfigError(f"{slot}.variants.{name}: the name {name!r} is reserved; choose another")
    for point in sweep_points(sweep):
        try:
            sweep_name(name, point)
        except BadIdError as e:
            raise ConfigError(f"{slot}.variants.{name}.sweep: {e}") from None


def _check_sweep(sweep: dict[str, Any] | None, knobs: dict[str, str], where: str, kind: str) -> None:
    for knob in sweep or {}:
        if knob not in knobs:
            raise ConfigError(f"{where}.sweep.{knob}: not a knob of kind {kind!r}; knobs: "
                              f"{', '.join(sorted(knobs)) or '(none)'}")


# ---- the full check ----------------------------------------------------------------------------

def check(config: dict[str, Any]) -> dict[str, Any]:
    """Full check: schema, then registry names, parameters and cross-references; returns the filled config."""
    cfg = validate(config)
    _check_datasets(cfg)
    _check_backbones(cfg)
    _check_supervised(cfg)
    if "pretrain" in cfg:
        _check_pretrain(cfg)
    if "adapt" in cfg:
        _check_adapt(cfg)
    if "pretrain" in cfg and "adapt" not in cfg:
        raise ConfigError("pretrain: needs an adapt: section with variants (a pretrained backbone alone is never "
                          "evaluated)")
    return cfg


def _dataset_split(cfg: dict[str, Any], name: str, split: str | None, where: str) -> None:
    from dlbench.data.registry import load_all

    spec = load_all().get(name)
    if split is not None and spec.splits is not None and split not in spec.splits:
        raise ConfigError(f"{where}: dataset {name!r} has no split {split!r}; splits: {', '.join(spec.splits)}")


def _check_datasets(cfg: dict[str, Any]) -> None:
    from dlbench.data.corruptions import corruption_names
    from dlbench.data.registry import load_all

    datasets = load_all()
    for name, ds in cfg["datasets"].items():
        where = f"datasets.{name}"
        if name not in datasets:
            raise ConfigError(f"{where}: unknown dataset {name!r}; known: {', '.join(datasets.names())}")
        for key in ("train_split", "val_split"):
            _dataset_split(cfg, name, ds[key], f"{where}.{key}")
        for i, entry in enumerate(ds["eval"]):
            other = entry.get("dataset", name)
            if other not in datasets:
                raise ConfigError(f"{where}.eval[{i}].dataset: unknown dataset {other!r}; known: "
                                  f"{', '.join(datasets.names())}")
            if "split" not in entry and "types" not in entry:
                raise ConfigError(f"{where}.eval[{i}]: needs 'split' or 'types' + 'severities'")
            if "split" in entry:
                _dataset_split(cfg, other, entry["split"], f"{where}.eval[{i}].split")
        if "corruptions" in ds:
            known = corruption_names()
            _dataset_split(cfg, name, ds["corruptions"]["source"], f"{where}.corruptions.source")
            for t in ds["corruptions"]["types"]:
                if t not in known:
                    raise ConfigError(f"{where}.corruptions.types: unknown corruption {t!r}; known: {', '.join(known)}")


def _check_backbones(cfg: dict[str, Any]) -> None:
    from dlbench.models.sources import BackboneSpecError, check_spec

    for name, spec in cfg["backbones"].items():
        try:
            check_spec(name, spec)
        except BackboneSpecError as e:
            raise ConfigError(str(e)) from None


def _check_run(cfg: dict[str, Any], run: dict[str, Any], where: str) -> None:
    if run["dataset"] not in cfg["datasets"]:
        raise ConfigError(f"{where}.dataset: {run['dataset']!r} is not under datasets:")
    if run["backbone"] not in cfg["backbones"]:
        raise ConfigError(f"{where}.backbone: unknown backbone {run['backbone']!r}; defined: "
                          f"{', '.join(cfg['backbones'])}")


def _check_supervised(cfg: dict[str, Any]) -> None:
    sup = cfg.get("supervised")
    if not sup:
        return
    seen = set()
    for i, run in enumerate(sup["runs"]):
        where = f"supervised.runs[{i}]"
        _check_run(cfg, run, where)
        check_train({**sup["train"], **run.get("train", {})}, f"{where}.train")
        key = (run["dataset"], run["backbone"])
        if key in seen:
            raise ConfigError(f"{where}: {key} is listed twice (model ids would collide)")
        seen.add(key)


def _is_vit(spec: dict[str, Any]) -> bool:
    """Whether timm builds a ``VisionTransformer`` (or subclass) for this name: by the module that
    registers it, not by the name (mobilevit, fastvit, levit are not ViTs in this sense)."""
    from timm.models import is_model_in_modules

    return spec.get("source", "timm") == "timm" and is_model_in_modules(
        spec["model"], ["vision_transformer", "deit", "vision_transformer_hybrid"])


def pretrain_variant_config(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    """A pretrain variant's entry, ``{}`` when the run names a kind that has no entry (kind = name)."""
    return dict((cfg["pretrain"].get("variants") or {}).get(name) or {})


def _check_pretrain(cfg: dict[str, Any]) -> None:
    from dlbench.pretrain.base import load_all as load_methods
    from dlbench.pretrain.views import ViewConfig

    methods, pre = load_methods(), cfg["pretrain"]
    check_train(pre["train"], "pretrain.train")
    for name, variant in (pre.get("variants") or {}).items():
        where = f"pretrain.variants.{name}"
        kind = variant.get("kind", name)
        if kind not in methods:
            raise ConfigError(f"{where}.kind: unknown pretrain kind {kind!r}; known: {', '.join(methods.names())}")
        cls = methods.get(kind)
        try:
            cls.resolve_params(variant.get("params"))
        except ValueError as e:
            raise ConfigError(f"{where}.params: {e}") from None
        check_train({**pre["train"], **variant.get("train", {})}, f"{where}.train")
        try:
            ViewConfig.from_dict({**pre.get("views", {}), **variant.get("views", {})})
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{where}.views: {e}") from None
        _check_sweep(variant.get("sweep"), cls.knobs, where, kind)
        _check_variant_name("pretrain", name, variant.get("sweep"))
    seen = set()
    for i, run in enumerate(pre["runs"]):
        where = f"pretrain.runs[{i}]"
        _check_run(cfg, run, where)
        ds = cfg["datasets"][run["dataset"]]
        _dataset_split(cfg, run["dataset"], ds["unlabeled_split"], f"datasets.{run['dataset']}.unlabeled_split")
        spec = cfg["backbones"][run["backbone"]]
        for v in run["variants"]:
            entry = pretrain_variant_config(cfg, v)
            kind = entry.get("kind", v)
            if kind not in methods:
                raise ConfigError(f"{where}.variants: {v!r} is neither a variant under pretrain.variants nor a "
                                  f"pretrain kind; kinds: {', '.join(methods.names())}")
            cls = methods.get(kind)
            if cls.requires == "vit" and not _is_vit(spec):
                raise ConfigError(f"{where}.variants: {v!r} (kind {kind}) needs a Vision Transformer backbone; "
                                  f"{run['backbone']!r} is {spec.get('source', 'timm')} "
                                  f"{spec.get('model', 'config')!r}")
            if cls.requires == "open_clip" and spec.get("source", "timm") != "open_clip":
                raise ConfigError(f"{where}.variants: {v!r} (kind {kind}) needs an open_clip backbone; "
                                  f"{run['backbone']!r} is {spec.get('source', 'timm')} {spec.get('model')!r}")
            if cls.needs_weights and not spec.get("weights"):
                raise ConfigError(f"{where}.variants: {v!r} (kind {kind}) is a released model as it is: "
                                  f"backbones.{run['backbone']}.weights must name its weights file")
            if cls.needs_captions:
                split = cls.resolve_params(entry.get("params"))["caption_split"]
                _dataset_split(cfg, run["dataset"], split, f"pretrain.variants.{v}.params.caption_split")
            _check_sides(cfg, run, v, cls, entry)
            key = (run["dataset"], run["backbone"], v)
            if key in seen:
                raise ConfigError(f"{where}: {key} is listed twice (model ids would collide)")
            seen.add(key)
        _check_run_adapt(cfg, run, where)
        _check_adapt_requires(cfg, run, where)


def _is_clip_vit(spec: dict[str, Any]) -> bool:
    """An open_clip spec with a ViT image tower: a ViT model name, or an inline config whose vision
    tower's ``layers`` is a depth (a ResNet tower's is a list of blocks per stage)."""
    if "config" in spec:
        return not isinstance(spec["config"].get("vision_cfg", {}).get("layers", 12), (list, tuple))
    return "vit" in str(spec.get("model", "")).lower()


def _check_adapt_requires(cfg: dict[str, Any], run: dict[str, Any], where: str) -> None:
    """Adapt variants that need a CLIP backbone (zero-shot) run only on runs with one: restrict them with
    their ``pretrain:`` list, or the job would fail after the pretraining it waited for."""
    from dlbench.adapt.base import load_all as load_kinds

    spec = cfg["backbones"][run["backbone"]]
    source = spec.get("source", "timm")
    kinds = load_kinds()
    for name, variant in ((cfg.get("adapt") or {}).get("variants") or {}).items():
        if not isinstance(variant, dict) or variant.get("kind", name) not in kinds:
            continue  # reported by the adapt check
        kind = kinds.get(variant.get("kind", name))
        runs_here = [v for v in run["variants"] if not variant.get("pretrain") or v in variant["pretrain"]]
        needs_clip = kind.requires in ("open_clip", "open_clip_vit")
        if needs_clip and source != "open_clip" and runs_here:
            raise ConfigError(f"adapt.variants.{name} (kind {kind.name}) needs an open_clip backbone, and would run on "
                              f"{where} ({run['backbone']!r}, {source}) for {', '.join(runs_here)}; give it a "
                              f"`pretrain:` list of CLIP pretrain variants")
        if kind.requires == "open_clip_vit" and source == "open_clip" and not _is_clip_vit(spec) and runs_here:
            raise ConfigError(f"adapt.variants.{name} (kind {kind.name}) needs a CLIP with a ViT image tower, and "
                              f"{where} ({run['backbone']!r}) has a ResNet one; give it a `pretrain:` list of runs "
                              f"on a ViT CLIP")


def _check_run_adapt(cfg: dict[str, Any], run: dict[str, Any], where: str) -> None:
    """A run's ``adapt`` overrides name adapt variants and leave each a valid recipe."""
    from dlbench.adapt.base import load_all as load_kinds
    from dlbench.plan import merge

    variants = (cfg.get("adapt") or {}).get("variants") or {}
    for name, override in (run.get("adapt") or {}).items():
        if name not in variants:
            raise ConfigError(f"{where}.adapt.{name}: not an adapt variant; variants: {', '.join(variants) or '(none)'}")
        kind = load_kinds().get(variants[name].get("kind", name))
        merged = merge({**kind.defaults, **variants[name]}, override)
        unknown = sorted(set(override) - set(kind.defaults))
        if unknown:
            raise ConfigError(f"{where}.adapt.{name}: unknown parameter {unknown[0]!r} of adapt kind {kind.name!r}")
        if isinstance(merged.get("train"), dict):
            check_train(merged["train"], f"{where}.adapt.{name}.train")
        if "fraction" in override:
            _check_fraction(override["fraction"], f"{where}.adapt.{name}.fraction")


def _check_sides(cfg: dict[str, Any], run: dict[str, Any], variant: str, cls: type, entry: dict[str, Any]) -> None:
    """Every input a method feeds the backbone must survive the backbone's reduction (checked by shape
    inference on the meta device: no weights, no compute), or the job would die deep in training."""
    from dlbench.data.registry import load_all
    from dlbench.pretrain.views import ViewConfig

    side = load_all().get(run["dataset"]).image_size
    views = ViewConfig.from_dict({**cfg["pretrain"].get("views", {}), **entry.get("views", {})})
    bad = _failing_side(cfg["backbones"][run["backbone"]], side,
                        cls.input_sides(entry.get("params") or {}, views, side))
    if bad:
        what, px, err = bad
        spec = cfg["backbones"][run["backbone"]]
        raise ConfigError(f"pretrain variant {variant!r} (kind {cls.name}) feeds backbone {run['backbone']!r} "
                          f"({spec.get('source', 'timm')} {spec.get('model', 'config')}) {what} of {px} px, which the backbone "
                          f"reduces to nothing ({err}); use larger crops (the kind's params or views) or a "
                          f"backbone with a smaller total stride")


_SIDE_CACHE: dict[tuple[str, int, int], str | None] = {}


def _failing_side(spec: dict[str, Any], image_side: int, sides: list[tuple[str, int]]) -> tuple[str, int, str] | None:
    import torch

    from dlbench.models.backbones import build_backbone

    key = yaml.safe_dump(spec, sort_keys=True)
    for what, px in sides:
        cache_key = (key, image_side, px)
        if cache_key not in _SIDE_CACHE:
            with torch.device("meta"):
                backbone = build_backbone({k: v for k, v in spec.items() if k != "weights"}, (image_side, image_side))
                try:
                    with torch.no_grad():
                        backbone(torch.empty(2, 3, px, px))
                    _SIDE_CACHE[cache_key] = None
                except RuntimeError as e:
                    _SIDE_CACHE[cache_key] = str(e).splitlines()[0]
        if _SIDE_CACHE[cache_key] is not None:
            return what, px, _SIDE_CACHE[cache_key]
    return None


def _check_adapt(cfg: dict[str, Any]) -> None:
    from dlbench.adapt.base import load_all as load_kinds
    from dlbench.data.augment import AugmentConfig

    kinds = load_kinds()
    variants = cfg["adapt"]["variants"]
    for name, variant in variants.items():
        where = f"adapt.variants.{name}"
        kind_name = variant.get("kind", name)
        if kind_name not in kinds:
            raise ConfigError(f"{where}.kind: unknown adapt kind {kind_name!r}; known: {', '.join(kinds.names())}")
        kind = kinds.get(kind_name)
        params = {k: v for k, v in variant.items() if k not in VARIANT_KEYS}
        for key in params:
            if key not in kind.defaults:
                raise ConfigError(f"unknown config key {where}.{key}: not a parameter of adapt kind {kind.name!r}; "
                                  f"parameters: {', '.join(sorted(kind.defaults)) or '(none)'}")
        for key in kind.required:
            if key not in params:
                raise ConfigError(f"{where}.{key}: required by adapt kind {kind.name!r}")
        schema = _schema()["definitions"]
        for key in ("train", "augment"):
            if key in params:
                _schema_errors(params[key], {**schema[key], "definitions": schema}, f"{where}.{key}")
        if "train" in params:
            check_train(params["train"], f"{where}.train")
        if "augment" in params:
            AugmentConfig.from_dict(params["augment"])
        _check_sweep(variant.get("sweep"), kind.knobs, where, kind.name)
        _check_variant_name("adapt", name, variant.get("sweep"))
        if "fraction" in params:
            _check_fraction(params["fraction"], f"{where}.fraction")
        for value in (variant.get("sweep") or {}).get("fraction", []):
            _check_fraction(value, f"{where}.sweep.fraction")
        if params.get("shots") is not None:
            _check_shots(params["shots"], f"{where}.shots")
        for value in (variant.get("sweep") or {}).get("shots", []):
            _check_shots(value, f"{where}.sweep.shots")
        shots = params.get("shots") is not None or "shots" in (variant.get("sweep") or {})
        fractions = [params.get("fraction", 1), *(variant.get("sweep") or {}).get("fraction", [])]
        if shots and any(f is not None and f < 1 for f in fractions):
            raise ConfigError(f"{where}: a variant trains on a fraction of the train split or on shots per class, "
                              f"not both")
        if "pretrain" in variant:
            _check_adapt_pretrain(cfg, variant["pretrain"], f"{where}.pretrain")
        base = None
        if kind.of and (variant.get("of") is not None or not kind.of_optional):
            of = variant.get("of")
            starts = " or ".join(repr(k) for k in kind.of)
            if of is None:
                raise ConfigError(f"{where}.of: adapt kind {kind.name!r} starts from a {starts} variant; name it")
            base = next((b for b in variants if of == b or of.startswith(f"{b}-")), None)
            if base is None or variants[base].get("kind", base) not in kind.of:
                raise ConfigError(f"{where}.of: {of!r} is not an adapt variant of kind {starts}")
            # `of` a sweep: one model per point of it (dlbench.plan), e.g. WiSE-FT of every k-shot fine-tune
        elif "of" in variant and variant["of"] is not None:
            raise ConfigError(f"{where}.of: adapt kind {kind.name!r} does not start from another variant")
        if base is not None:
            _check_of_pretrain(cfg, variants, name, base)


def _check_shots(value: Any, where: str) -> None:
    """Images per class (adapt kinds' ``shots``): a positive integer (null: the whole train split)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: shots (labeled train images per class) must be an integer >= 1, got {value!r}")


def _check_fraction(value: Any, where: str) -> None:
    """A label fraction (adapt kinds' ``fraction``): a number with 0 < fraction <= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"{where}: the fraction of the labeled train split must be a number with "
                          f"0 < fraction <= 1, got {value!r}")


def pretrain_base_names(cfg: dict[str, Any]) -> list[str]:
    """Every pretrain variant name some pretrain run lists (base names: a sweep's points share it)."""
    return list(dict.fromkeys(v for run in (cfg.get("pretrain") or {}).get("runs", []) for v in run["variants"]))


def _check_adapt_pretrain(cfg: dict[str, Any], names: list[str], where: str) -> None:
    """An adapt variant's ``pretrain:`` list names registered pretraining methods or configured pretrain
    variants (a typo fails here). It need not name one that a run trains: trimming ``pretrain.runs``
    (e.g. to one method) must not break the config; such a name just makes no models."""
    from dlbench.pretrain.base import load_all as load_methods

    known = set(load_methods().names()) | set(((cfg.get("pretrain") or {}).get("variants") or {}))
    for n in names:
        if n not in known:
            raise ConfigError(f"{where}: {n!r} is neither a registered pretraining method nor a pretrain variant; "
                              f"pretrain runs list: {', '.join(pretrain_base_names(cfg)) or 'none'}")


def _check_of_pretrain(cfg: dict[str, Any], variants: dict[str, Any], name: str, of_base: str) -> None:
    """A variant with ``of`` runs only where the variant it starts from runs (its ``pretrain:`` list
    within that one's)."""
    allowed = variants[name].get("pretrain") or pretrain_base_names(cfg)
    start = variants[of_base].get("pretrain")
    missing = [n for n in allowed if start is not None and n not in start]
    if missing:
        raise ConfigError(f"adapt.variants.{name}.pretrain: runs for {', '.join(missing)}, but its `of` variant "
                          f"{of_base!r} does not (its pretrain: list is {', '.join(start)})")


def load_config(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    return check(raw or {})
