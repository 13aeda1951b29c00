"""The expansion of a checked config into the grid of models: ids, recipes, jobs, eval splits.

``Plan(cfg)`` is computed once per Snakemake invocation (``workflow/rules/common.smk``) and is
the only place that knows which models a config makes. Named variants with sweeps expand to
one variant per point (``finetune-lr0.001``), each point's values are *knobs* (a metrics column
each). An adapt variant with a ``pretrain:`` list runs only for those pretrain variants (base
names). Every model gets a self-contained *recipe*: what its stage needs to train it, and nothing
that another variant's change could touch, so Snakemake reruns exactly the jobs whose recipe
changed (its ``params`` rerun trigger).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from dlbench.config import VARIANT_KEYS, get_path, pretrain_variant_config, set_path, sweep_points
from dlbench.ids import NONE, ModelId, sweep_name

SUPERVISED = "supervised"
SUPERVISED_KNOBS = {"lr": "train.lr", "epochs": "train.epochs", "weight_decay": "train.weight_decay"}


@dataclass(frozen=True)
class Variant:
    """One point of a named variant: ``name`` (with the sweep suffix), its kind, config entry and knobs."""

    name: str
    base: str
    kind: str
    entry: dict[str, Any]  # the variant's config with the sweep values applied (no kind / sweep / of / pretrain)
    knobs: dict[str, Any]
    of: str | None = None
    pretrain: tuple[str, ...] | None = None  # adapt variants: the pretrain variants (base names) it runs for; None: all
    point: dict[str, Any] = field(default_factory=dict)  # its sweep values (knob -> value), {} without a sweep

    def runs_for(self, pretrain_base: str) -> bool:
        return self.pretrain is None or pretrain_base in self.pretrain


@dataclass
class Entry:
    """One model of the plan."""

    id: ModelId
    stage: str  # supervised | pretrain | adapt
    job: str  # supervised | pretrain | frozen | train: which rule makes it
    kind: str
    recipe: dict[str, Any]
    source: str | None = None  # the model id the job reads (pretrained backbone, or the ``of`` model)
    evaluated: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override`` recursively (nested dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for k, val in override.items():
        out[k] = merge(out[k], val) if isinstance(val, dict) and isinstance(out.get(k), dict) else copy.deepcopy(val)
    return out


def _knob_values(knobs: dict[str, str], resolved: dict[str, Any]) -> dict[str, Any]:
    return {k: get_path(resolved, path) for k, path in knobs.items()}


def expand(base: str, entry: dict[str, Any], kind: str,
           knobs: dict[str, str]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, entry with the sweep values set, the point) for every point of ``entry``'s sweep."""
    points = sweep_points(entry.get("sweep"))
    plain = {k: v for k, v in entry.items() if k not in VARIANT_KEYS}
    out = []
    for point in points:
        e = copy.deepcopy(plain)
        for knob, value in point.items():
            set_path(e, knobs[knob], value)
        out.append((sweep_name(base, point) if point else base, e, point))
    return out


def group_key(model_id: str) -> str:
    """The evaluation group of a model: its id without the seed part."""
    return model_id.rsplit("/", 1)[0]


class Plan:
    """Every model a config makes, by id, with its recipe and job (see module doc)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.entries: dict[str, Entry] = {}
        self._add_supervised()
        self._add_pretrained()
        self._add_adapted()

    # ---- variants --------------------------------------------------------------------------

    @cached_property
    def pretrain_variants(self) -> dict[str, list[Variant]]:
        """base name -> its points (one without a sweep), for every name a pretrain run lists."""
        from dlbench.pretrain.base import load_all

        methods, pre = load_all(), self.cfg.get("pretrain") or {}
        names = dict.fromkeys(v for run in pre.get("runs", []) for v in run["variants"])
        out = {}
        for base in names:
            entry = pretrain_variant_config(self.cfg, base)
            cls = methods.get(entry.get("kind", base))
            points = []
            for name, e, _ in expand(base, entry, cls.name, cls.knobs):
                train = {**pre["train"], **e.get("train", {})}
                resolved = {"train": train, "params": cls.resolve_params(e.get("params"))}
                points.append(Variant(name, base, cls.name, e, _knob_values(cls.knobs, resolved)))
            out[base] = points
        return out

    @cached_property
    def adapt_variants(self) -> dict[str, Variant]:
        """Expanded adapt variants in config order (name -> variant).

        A variant whose ``of`` is a sweep gets one point per point of it, named with that point's suffix
        and carrying its sweep values as knobs (``wiseft_shots`` of ``finetune_shots`` ->
        ``wiseft_shots-shots1`` of ``finetune_shots-shots1``, knob ``shots`` 1, ...).
        """
        from dlbench.adapt.base import load_all

        kinds, variants, out = load_all(), (self.cfg.get("adapt") or {}).get("variants") or {}, {}
        points: dict[str, list[Variant]] = {}
        for base, entry in variants.items():
            kind = kinds.get(entry.get("kind", base))
            restrict = tuple(entry["pretrain"]) if entry.get("pretrain") else None
            for name, e, point in expand(base, entry, kind.name, kind.knobs):
                params = {**copy.deepcopy(kind.defaults), **e}
                points.setdefault(base, []).append(Variant(name, base, kind.name, params,
                                                           _knob_values(kind.knobs, params), entry.get("of"),
                                                           restrict, point))
        for base, vs in points.items():
            for v in vs:
                of_points = points.get(v.of, []) if v.of else []
                if len(of_points) <= 1 and not (of_points and of_points[0].point):
                    out[v.name] = v
                    continue
                for o in of_points:
                    name = sweep_name(v.name, o.point)
                    out[name] = replace(v, name=name, of=o.name, knobs={**v.knobs, **o.point},
                                        point={**v.point, **o.point})
        return out

    @cached_property
    def pretrain_base(self) -> dict[str, str]:
        """Pretrain variant point name (the model id's pretrain slot) -> its base name."""
        return {p.name: base for base, points in self.pretrain_variants.items() for p in points}

    @staticmethod
    def run_variant(v: Variant, overrides: dict[str, Any]) -> Variant:
        """``v`` with its pretrain run's overrides for its base variant merged in (``runs[i].adapt``):
        one backbone may need its own recipe (a ViT fine-tunes with AdamW at a lower lr and layer-wise
        decay, as in the MAE paper) without a second variant name for the same protocol."""
        if v.base not in overrides:
            return v
        from dlbench.adapt.base import load_all

        entry = merge(v.entry, overrides[v.base])
        return replace(v, entry=entry, knobs={**v.knobs, **_knob_values(load_all().get(v.kind).knobs, entry)})

    def adapt_job(self, variant: str) -> str:
        from dlbench.adapt.base import load_all

        return load_all().get(self.adapt_variants[variant].kind).job

    @cached_property
    def frozen_variants(self) -> list[str]:
        return [v for v in self.adapt_variants if self.adapt_job(v) == "frozen"]

    @cached_property
    def trained_variants(self) -> list[str]:
        return [v for v in self.adapt_variants if self.adapt_job(v) == "train"]

    def frozen_variants_of(self, pretrain: str) -> list[str]:
        """The frozen variants a pretrained model of pretrain variant ``pretrain`` (the id's slot, a sweep
        point included) gets: every frozen variant whose ``pretrain:`` list (if any) names its base."""
        base = self.pretrain_base.get(pretrain, pretrain)
        return [v for v in self.frozen_variants if self.adapt_variants[v].runs_for(base)]

    @cached_property
    def frozen_sets(self) -> list[tuple[tuple[str, ...], tuple[str, ...]]]:
        """(frozen variants, the pretrain slots that get exactly these): one frozen job rule (and one frozen
        evaluate rule) per entry, since a rule's outputs are fixed. One entry unless an adapt variant's
        ``pretrain:`` list makes the frozen variants differ between pretrain variants; slots without any
        frozen variant are left out. In order of first appearance."""
        sets: dict[tuple[str, ...], list[str]] = {}
        for pid in self.ids(stage="pretrain"):
            slot = ModelId.parse(pid).pretrain
            frozen = tuple(self.frozen_variants_of(slot))
            if frozen and slot not in sets.setdefault(frozen, []):
                sets[frozen].append(slot)
        return [(frozen, tuple(slots)) for frozen, slots in sets.items()]

    # ---- entries ----------------------------------------------------------------------------

    def _splits(self, dataset: str) -> dict[str, Any]:
        ds = self.cfg["datasets"][dataset]
        return {"train_split": ds["train_split"], "val_split": ds["val_split"]}

    def _add(self, entry: Entry) -> None:
        key = str(entry.id)
        if key in self.entries:
            raise ValueError(f"two models of the config have the id {key}")
        self.entries[key] = entry

    def _add_supervised(self) -> None:
        sup = self.cfg.get("supervised")
        for run in (sup or {}).get("runs", []):
            params = {"train": {**sup["train"], **run.get("train", {})},
                      "augment": {**sup.get("augment", {}), **run.get("augment", {})},
                      "label_smoothing": float(sup.get("label_smoothing", 0.0))}
            for seed in run.get("seeds", self.cfg["seeds"]):
                mid = ModelId(run["dataset"], run["backbone"], NONE, SUPERVISED, seed=int(seed))
                recipe = {"id": str(mid), "kind": SUPERVISED, "dataset": run["dataset"], "backbone": run["backbone"],
                          "backbone_spec": self.cfg["backbones"][run["backbone"]], "seed": int(seed),
                          **self._splits(run["dataset"]), "params": params,
                          "knobs": _knob_values(SUPERVISED_KNOBS, params)}
                self._add(Entry(mid, "supervised", "supervised", SUPERVISED, recipe))

    def _add_pretrained(self) -> None:
        pre = self.cfg.get("pretrain") or {}
        for run in pre.get("runs", []):
            ds = self.cfg["datasets"][run["dataset"]]
            for base in run["variants"]:
                for v in self.pretrain_variants[base]:
                    for seed in run.get("seeds", self.cfg["seeds"]):
                        mid = ModelId(run["dataset"], run["backbone"], v.name, seed=int(seed))
                        recipe = {"id": str(mid), "kind": v.kind, "variant": v.name, "dataset": run["dataset"],
                                  "backbone": run["backbone"], "backbone_spec": self.cfg["backbones"][run["backbone"]],
                                  "seed": int(seed), "unlabeled_split": ds["unlabeled_split"],
                                  **self._splits(run["dataset"]),
                                  "train": {**pre["train"], **v.entry.get("train", {})},
                                  "views": {**pre.get("views", {}), **v.entry.get("views", {})},
                                  "params": dict(v.entry.get("params") or {}), "knobs": v.knobs}
                        self._add(Entry(mid, "pretrain", "pretrain", v.kind, recipe, evaluated=False,
                                        extra={"adapt": run.get("adapt") or {}}))

    def _add_adapted(self) -> None:
        for pre in [e for e in self.entries.values() if e.stage == "pretrain"]:
            pid = pre.id
            for name, v in self.adapt_variants.items():
                if not v.runs_for(self.pretrain_base[pid.pretrain]):  # the variant's `pretrain:` list
                    continue
                v = self.run_variant(v, pre.extra.get("adapt", {}))
                mid = pid.with_(adapt=name)
                source = pid.with_(adapt=v.of) if v.of else pid
                recipe = {"id": str(mid), "kind": v.kind, "variant": name, "dataset": pid.dataset,
                          "seed": pid.seed, **self._splits(pid.dataset), "params": v.entry, "knobs": v.knobs,
                          "source": str(source)}
                self._add(Entry(mid, "adapt", self.adapt_job(name), v.kind, recipe, source=str(source)))

    # ---- views of the plan --------------------------------------------------------------------

    def ids(self, stage: str | None = None, job: str | None = None) -> list[str]:
        return [k for k, e in self.entries.items() if (stage is None or e.stage == stage)
                and (job is None or e.job == job)]

    @cached_property
    def evaluated_ids(self) -> list[str]:
        return [k for k, e in self.entries.items() if e.evaluated]

    @cached_property
    def eval_groups(self) -> dict[str, list[str]]:
        """Evaluated models by group: one group per id without its seed (``d/b/p/a/e/c``), seeds in order.

        A group is what one evaluate job evaluates. Its models differ only in their seed, so every
        recipe change (of a pretrain or an adapt variant) changes all of them or none: grouping saves
        the per-job start-up (torch + timm imports: seconds per process) and never re-evaluates a
        model whose recipe did not change.
        """
        groups: dict[str, list[str]] = {}
        for mid in self.evaluated_ids:
            groups.setdefault(group_key(mid), []).append(mid)
        return groups

    def recipe(self, model_id: str) -> dict[str, Any]:
        try:
            return self.entries[model_id].recipe
        except KeyError:
            raise KeyError(f"model {model_id} is not in this config's plan") from None

    def frozen_recipes(self, pretrained_id: str) -> list[dict[str, Any]]:
        pid = ModelId.parse(pretrained_id)
        return [self.recipe(str(pid.with_(adapt=v))) for v in self.frozen_variants_of(pid.pretrain)]

    @cached_property
    def used_datasets(self) -> list[str]:
        """Every dataset a job of this config reads (training sets and eval sets)."""
        return sorted({d for name in self.cfg["datasets"] for d in self.eval_datasets(name)})

    def eval_datasets(self, dataset: str) -> list[str]:
        """Every dataset an evaluation of a ``dataset`` model reads."""
        return sorted({dataset} | {e.get("dataset", dataset) for e in self.cfg["datasets"][dataset]["eval"]})

    def eval_split_specs(self, dataset: str) -> list[str]:
        """Eval splits of ``dataset`` models as ``NAME=DATASET:SPLIT[:CORRUPTION:SEVERITY[:MAX]]``."""
        ds = self.cfg["datasets"][dataset]
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
        for name, corruption, severity in self.corruption_splits(dataset):
            c = ds["corruptions"]
            tail = f":{c['max_images']}" if c.get("max_images") else ""
            specs.append(f"{name}={dataset}:{c['source']}:{corruption}:{severity}{tail}")
        return specs

    def corruption_splits(self, dataset: str) -> list[tuple[str, str, int]]:
        """(split name, corruption, severity) of the dataset's computed corruption suite."""
        c = self.cfg["datasets"][dataset].get("corruptions")
        if not c:
            return []
        return [(f"{c['source']}.{t}-{s}", t, int(s)) for t in c["types"] for s in c["severities"]]

    def embedding_split(self, dataset: str) -> str:
        """The split whose class-balanced subset's embeddings every evaluation caches: the first ID split."""
        for entry in self.cfg["datasets"][dataset]["eval"]:
            if "split" in entry and entry.get("dataset", dataset) == dataset:
                return entry["split"]
        return self.cfg["datasets"][dataset]["eval"][0].get("split", "test")

    @cached_property
    def tsne_models(self) -> dict[str, str]:
        """model id -> t-SNE panel ('pretrained' or 'finetuned') for the SSL section: per pretrained
        backbone (first seed), its first frozen variant (the frozen features) and its first ``finetune``,
        preferring variants trained on the whole labeled split (no ``fraction`` below 1)."""
        out: dict[str, str] = {}

        def full_first(names: list[str]) -> list[str]:
            full = [v for v in names if (self.adapt_variants[v].knobs.get("fraction") or 1.0) >= 1]
            return full + [v for v in names if v not in full]

        seen = set()
        for pid in self.ids(stage="pretrain"):
            m = ModelId.parse(pid)
            if (m.dataset, m.backbone, m.pretrain) in seen:
                continue
            seen.add((m.dataset, m.backbone, m.pretrain))
            frozen = full_first(self.frozen_variants_of(m.pretrain))
            if frozen:
                out[str(m.with_(adapt=frozen[0]))] = "pretrained"
            fts = full_first([v for v in self.trained_variants if self.adapt_variants[v].kind == "finetune"
                              and str(m.with_(adapt=v)) in self.entries])
            if fts:
                out[str(m.with_(adapt=fts[0]))] = "finetuned"
        return out
