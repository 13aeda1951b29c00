"""What the Snakefile needs at parse time, computed once per (config, code) and cached on disk.

Every ``snakemake`` call parses the Snakefile: checking the config (meta-device forwards through
each timm backbone), planning the models and estimating each job's runtime import torch, timm
and the report layer, about 10 s here before Snakemake does anything. The result is a pure
function of the config, the package's source, the installed versions and the named weights
files, so it is cached under ``.snakemake/dlbench-dag/`` keyed by a hash of all of them: a repeated
``snakemake -n`` or a rerun with nothing to do skips that work (and imports no torch), while any
edit to the config, the code (a new method module included) or a weights file recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from dlbench.ids import ModelId

CACHE_DIR = Path(".snakemake") / "dlbench-dag"
KEEP = 16  # cached states kept per working directory (one per recently used config/code)
VERSIONED = ("torch", "timm", "open_clip_torch", "dlbench")


@dataclass
class DagState:
    cfg: dict[str, Any]
    plan: Any  # dlbench.plan.Plan with every cached view computed
    figures: list[tuple[str, str]]  # (section title, figure file name), report order
    train_minutes: dict[str, int] = field(default_factory=dict)  # model id -> runtime of its training job
    eval_minutes: dict[str, int] = field(default_factory=dict)  # eval_job_key(groups) -> runtime


def eval_job_key(groups: list[str]) -> str:
    return "|".join(groups)


def frozen_job_groups(plan: Any, group: str) -> list[str]:
    """The evaluation groups the frozen-variant evaluate job of one pretrained model writes (``group``: any
    group id of that model, ``dataset/backbone/pretrain/...``); the Snakefile's evaluate rule uses it too."""
    d, b, p = group.split("/")[:3]
    return [f"{d}/{b}/{p}/{v}/none/none" for v in plan.frozen_variants_of(p)]


def _source_digest() -> str:
    """Content hash of the package's files and the config schema."""
    import dlbench

    pkg = Path(dlbench.__file__).resolve().parent
    files = sorted(p for p in pkg.rglob("*") if p.is_file() and p.suffix in (".py", ".yaml", ".json"))
    schema = pkg.parents[1] / "workflow" / "schemas" / "config.schema.yaml"
    h = hashlib.sha256()
    for p in [*files, *([schema] if schema.is_file() else [])]:
        h.update(str(p.relative_to(pkg.parents[1]) if p.is_relative_to(pkg.parents[1]) else p).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _weights_stats(config: dict[str, Any]) -> list[Any]:
    out = []
    for name, spec in sorted((config.get("backbones") or {}).items()):
        weights = spec.get("weights") if isinstance(spec, dict) else None
        if weights:
            st = os.stat(weights) if os.path.exists(weights) else None
            out.append([name, weights, st and st.st_size, st and st.st_mtime_ns])
    return out


def _versions() -> dict[str, str | None]:
    out = {}
    for pkg in VERSIONED:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def cache_key(config: dict[str, Any]) -> str:
    payload = json.dumps({"config": config, "source": _source_digest(), "versions": _versions(),
                          "weights": _weights_stats(config)}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def compute(config: dict[str, Any]) -> DagState:
    """Check the config and plan it (raises ConfigError/ValueError naming the key)."""
    from dlbench.config import check
    from dlbench.plan import Plan
    from dlbench.report.sections import all_figures
    from dlbench.resources import eval_minutes, job_minutes

    cfg = check(config)
    plan = Plan(cfg)
    for view in ("pretrain_variants", "adapt_variants", "frozen_variants", "trained_variants", "evaluated_ids",
                 "eval_groups", "used_datasets", "tsne_models", "pretrain_base", "frozen_sets"):
        getattr(plan, view)  # computed now: the cached plan never needs a registry (torch) again
    threads = cfg["threads"]["train"]
    state = DagState(cfg, plan, [(s.title, f.name) for s, f in all_figures()])
    for model_id, entry in plan.entries.items():
        state.train_minutes[model_id] = job_minutes(cfg, entry.recipe, entry.stage, threads)
    jobs: dict[str, list[str]] = {}
    for group in plan.eval_groups:
        m = ModelId.parse(plan.eval_groups[group][0])
        frozen = m.adapt in plan.frozen_variants and m.ensemble == "none" and m.compress == "none"
        groups = frozen_job_groups(plan, group) if frozen else [group]
        jobs[eval_job_key(groups)] = groups
    for key, groups in jobs.items():
        dataset, backbone = groups[0].split("/")[:2]
        models = sum(len(plan.eval_groups.get(g, [])) for g in groups)
        state.eval_minutes[key] = eval_minutes(cfg, dataset, cfg["backbones"][backbone],
                                               plan.eval_split_specs(dataset), models)
    return state


def load_state(config: dict[str, Any], cache_dir: str | Path = CACHE_DIR) -> DagState:
    """The cached state of ``config`` if the key matches, else computed and cached (atomically)."""
    cache = Path(cache_dir)
    path = cache / f"{cache_key(config)}.pkl"
    try:
        with path.open("rb") as f:
            state = pickle.load(f)
        os.utime(path)  # recently used: kept when old states are pruned
        return state
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError):
        pass
    state = compute(config)
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        pickle.dump(state, f)
    os.replace(tmp, path)
    for old in sorted(cache.glob("*.pkl"), key=lambda p: p.stat().st_mtime, reverse=True)[KEEP:]:
        old.unlink(missing_ok=True)
    return state
