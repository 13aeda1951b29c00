"""``dlbench <verb>``: one verb per Snakemake rule, each usable by hand without Snakemake.

Imports are deferred into each verb: a job pays only for the modules its verb needs (every
job of the DAG starts a fresh process, so start-up time is multiplied by the job count).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def _recipe(text: str) -> Any:
    """A recipe (or a list of them) given inline as JSON or as ``@path/to/recipe.json``."""
    raw = Path(text[1:]).read_text() if text.startswith("@") else text
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--recipe: not valid JSON: {e}") from None


def _threads(args: argparse.Namespace) -> None:
    from dlbench.device import set_threads

    set_threads(args.threads)


# ---- data -----------------------------------------------------------------------------------

def cmd_data_build(args: argparse.Namespace) -> None:
    from dlbench.data.registry import load_all

    spec = load_all().get(args.name)
    out = Path(args.out or Path(args.data_root) / args.name)
    spec.build(out, Path(args.raw_dir) if args.raw_dir else None)
    print(f"built dataset {args.name} into {out}")


def cmd_data_fetch(args: argparse.Namespace) -> None:
    from dlbench.data.fetch import fetch
    from dlbench.data.registry import load_all

    load_all().get(args.name)
    fetch(args.name)


def cmd_data_list(args: argparse.Namespace) -> None:
    from dlbench.data.registry import load_all

    for name in load_all():
        spec = load_all().get(name)
        splits = ", ".join(spec.splits) if spec.splits else "(per file)"
        print(f"{name:12s} {'offline' if spec.offline else 'download'}  {spec.image_size:3d} px  {spec.description}"
              f"  [splits: {splits}]")


def cmd_data_corrupt(args: argparse.Namespace) -> None:
    from dlbench.data.corrupted import write_corrupted

    _threads(args)
    write_corrupted(args.data_root, args.dataset, args.source, args.types, [int(s) for s in args.severities],
                    args.out, max_images=args.max_images, seed=args.seed)


# ---- config ---------------------------------------------------------------------------------

def cmd_config_check(args: argparse.Namespace) -> None:
    from dlbench.config import load_config
    from dlbench.plan import Plan

    cfg = load_config(args.config)
    plan = Plan(cfg)
    print(f"{args.config}: OK ({len(cfg['datasets'])} datasets, {len(cfg['seeds'])} seeds, "
          f"{len(plan.entries)} models, {len(plan.evaluated_ids)} evaluated)")
    if args.ids:
        for mid, entry in plan.entries.items():
            print(f"  {entry.job:10s} {mid}")


# ---- train ----------------------------------------------------------------------------------

def cmd_train_supervised(args: argparse.Namespace) -> None:
    from dlbench.supervised import train_supervised

    _threads(args)
    card = train_supervised(_recipe(args.recipe), args.data_root, args.out, args.checkpoint, device=args.device)
    print(f"trained {card['id']} in {card['train_seconds']:.1f}s")


def cmd_train_pretrain(args: argparse.Namespace) -> None:
    from dlbench.pretrain.run import pretrain

    _threads(args)
    card = pretrain(_recipe(args.recipe), args.data_root, args.out, args.checkpoint, device=args.device)
    print(f"pretrained {card['id']} in {card['train_seconds']:.1f}s")


def cmd_train_adapt(args: argparse.Namespace) -> None:
    from dlbench.adapt.run import adapt

    _threads(args)
    recipes = _recipe(args.recipe)
    recipes = recipes if isinstance(recipes, list) else [recipes]
    for card in adapt(recipes, args.source, args.data_root, args.out, args.checkpoint_dir, device=args.device):
        print(f"adapted {card['id']} in {card['train_seconds']:.1f}s")


def cmd_train_list(args: argparse.Namespace) -> None:
    from dlbench.adapt.base import load_all as load_kinds
    from dlbench.models.sources import SOURCES, register_all
    from dlbench.pretrain.base import load_all as load_methods
    from dlbench.train.schedules import SCHEDULES

    register_all()
    print("pretrain kinds (config: pretrain.variants.<name>.kind):")
    for name in load_methods().names():
        cls = load_methods().get(name)
        needs = {"vit": "(ViT only)", "open_clip": "(open_clip backbones only)"}.get(cls.requires or "", "")
        print(f"  {name:<20} {cls.family:<17} {needs}")
    print("adapt kinds (config: adapt.variants.<name>.kind):")
    for name in load_kinds().names():
        kind = load_kinds().get(name)
        print(f"  {name:<20} {kind.family:<9} {kind.job:<7} {kind.description}")
    print(f"schedules (config: train.schedule): {', '.join(SCHEDULES.names())}")
    print(f"backbone sources (config: backbones.<name>.source): {', '.join(SOURCES.names())}")


# ---- evaluate ---------------------------------------------------------------------------------

def cmd_evaluate(args: argparse.Namespace) -> None:
    from dlbench.evaluate.predict import EvalJob, EvalSplit, evaluate_models

    _threads(args)
    try:
        splits = [EvalSplit.parse(s) for s in args.split]
    except ValueError as e:
        raise SystemExit(f"--split: {e}") from None
    n = len(args.model)
    if not (len(args.out) == len(args.costs) == n) or (args.embeddings and len(args.embeddings) != n):
        raise SystemExit("--model, --out, --costs (and --embeddings) need the same number of values (one per model)")
    embeddings = args.embeddings or [None] * n
    jobs = [EvalJob(Path(m), Path(o), Path(c), Path(e) if e else None)
            for m, o, c, e in zip(args.model, args.out, args.costs, embeddings)]
    evaluate_models(jobs, splits, args.data_root, corrupted_root=args.corrupted_root,
                    embedding_split=args.embedding_split, embedding_points=args.embedding_points,
                    device=args.device, latency_repeats=args.latency_repeats)


# ---- report -----------------------------------------------------------------------------------

def cmd_report_aggregate(args: argparse.Namespace) -> None:
    from dlbench.report.aggregate import aggregate

    aggregate(args.results, args.models, args.history, args.out_dir)


def cmd_report_tsne(args: argparse.Namespace) -> None:
    from dlbench.report.tsne import write_tsne

    write_tsne(args.results, dict(item.split("=", 1) for item in args.model), args.out)


def cmd_report_figures(args: argparse.Namespace) -> None:
    from dlbench.report.figures import make_figures

    make_figures(args.tables, args.out_dir)


def cmd_report_findings(args: argparse.Namespace) -> None:
    from dlbench.report.findings.base import write_findings

    write_findings(args.tables, args.out)


def cmd_report_html(args: argparse.Namespace) -> None:
    from dlbench.report.html import write_report

    write_report(args.tables, args.figures, args.config, args.out)


# ---- parser -----------------------------------------------------------------------------------

def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", default="data")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto")


def _training_args(p: argparse.ArgumentParser, out_help: str) -> None:
    """The arguments every single-model training verb takes (one recipe in, one model directory out)."""
    p.add_argument("--recipe", required=True, help="recipe JSON, inline or @file (see dlbench.plan)")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--checkpoint", help="resumable checkpoint path (resumed if present)")
    _job_args(p)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlbench", description=__doc__)
    sub = p.add_subparsers(dest="verb", required=True)

    data = sub.add_parser("data", help="datasets: build, fetch through DVC, corrupt, list").add_subparsers(
        dest="data_verb", required=True)
    b = data.add_parser("build", help="build one dataset into the array format (what a dvc.yaml stage runs)")
    b.add_argument("name")
    b.add_argument("--out", help="output directory (default: <data-root>/<name>)")
    b.add_argument("--data-root", default="data")
    b.add_argument("--raw-dir", help="where original files are (or are downloaded to), for real datasets")
    b.set_defaults(fn=cmd_data_build)
    f = data.add_parser("fetch", help="pull the dataset from the DVC remote, or build it with dvc repro and push it")
    f.add_argument("name")
    f.set_defaults(fn=cmd_data_fetch)
    co = data.add_parser("corrupt", help="compute a dataset's corruption suite once into a cached dataset directory")
    co.add_argument("--dataset", required=True)
    co.add_argument("--source", default="test", help="the clean split to corrupt")
    co.add_argument("--types", nargs="+", required=True)
    co.add_argument("--severities", nargs="+", required=True)
    co.add_argument("--max-images", type=int, help="a class-balanced subset of this many source images")
    co.add_argument("--seed", type=int, default=0)
    co.add_argument("--out", required=True)
    _job_args(co)
    co.set_defaults(fn=cmd_data_corrupt)
    ls = data.add_parser("list", help="list registered datasets")
    ls.set_defaults(fn=cmd_data_list)

    c = sub.add_parser("config", help="config tools").add_subparsers(dest="config_verb", required=True)
    cc = c.add_parser("check", help="validate a config file (schema, registry names, kind parameters)")
    cc.add_argument("config")
    cc.add_argument("--ids", action="store_true", help="list every model id the config makes")
    cc.set_defaults(fn=cmd_config_check)

    t = sub.add_parser("train", help="training stages").add_subparsers(dest="train_verb", required=True)
    s = t.add_parser("supervised", help="train backbone + head from scratch on the labeled train split")
    _training_args(s, out_help="model directory to write")
    s.set_defaults(fn=cmd_train_supervised)
    pt = t.add_parser("pretrain", help="self-supervised pretraining of a backbone on the unlabeled split")
    _training_args(pt, out_help="model directory to write (backbone only)")
    pt.set_defaults(fn=cmd_train_pretrain)
    ad = t.add_parser("adapt", help="adapt a pretrained backbone (or an `of` model) with one or more variants")
    ad.add_argument("--recipe", required=True, help="a variant recipe or a JSON list of them, inline or @file")
    ad.add_argument("--source", required=True, help="the pretrained model directory (or the `of` variant's)")
    ad.add_argument("--out", nargs="+", required=True, help="one model directory per recipe")
    ad.add_argument("--checkpoint-dir", help="directory for resumable checkpoints (one per variant)")
    _job_args(ad)
    ad.set_defaults(fn=cmd_train_adapt)
    tl = t.add_parser("list", help="list registered pretrain and adapt kinds, schedules, backbone sources")
    tl.set_defaults(fn=cmd_train_list)

    e = sub.add_parser("evaluate", help="run models once on eval splits: logits (Parquet), costs, embeddings")
    e.add_argument("--model", nargs="+", required=True, help="model directories (several share the eval data)")
    e.add_argument("--split", nargs="+", required=True,
                   help="NAME=DATASET:SPLIT[:CORRUPTION:SEVERITY[:MAX_IMAGES]] ...")
    e.add_argument("--out", nargs="+", required=True, help="logits Parquet file to write, one per model")
    e.add_argument("--costs", nargs="+", required=True, help="costs JSON file to write, one per model")
    e.add_argument("--embeddings", nargs="+", help="embeddings Parquet file to write, one per model")
    e.add_argument("--corrupted-root", help="where rule corruptions cached the corrupted splits")
    e.add_argument("--embedding-split", help="DATASET:SPLIT whose class-balanced subset is embedded")
    e.add_argument("--embedding-points", type=int, default=300)
    e.add_argument("--latency-repeats", type=int, default=30)
    _job_args(e)
    e.set_defaults(fn=cmd_evaluate)

    r = sub.add_parser("report", help="tables, t-SNE, figures, HTML report").add_subparsers(
        dest="report_verb", required=True)
    a = r.add_parser("aggregate", help="cached outputs of the given models -> <results>/tables/*.parquet")
    a.add_argument("--results", default="results", help="the config's results directory")
    a.add_argument("--models", nargs="+", required=True, help="model ids evaluated (the metrics table's rows)")
    a.add_argument("--history", nargs="*", default=[], help="further model ids whose training history to collect")
    a.add_argument("--out-dir", default="results/tables")
    a.set_defaults(fn=cmd_report_aggregate)
    ts = r.add_parser("tsne", help="t-SNE of cached embeddings -> one Parquet")
    ts.add_argument("--results", default="results")
    ts.add_argument("--model", nargs="*", default=[], help="MODEL_ID=PANEL ...")
    ts.add_argument("--out", required=True)
    ts.set_defaults(fn=cmd_report_tsne)
    fg = r.add_parser("figures", help="tables -> figures (PNG)")
    fg.add_argument("--tables", default="results/tables")
    fg.add_argument("--out-dir", default="results/figures")
    fg.set_defaults(fn=cmd_report_figures)
    fi = r.add_parser("findings", help="metrics + history + summary tables -> findings.parquet (the course's claims)")
    fi.add_argument("--tables", default="results/tables")
    fi.add_argument("--out", default="results/tables/findings.parquet")
    fi.set_defaults(fn=cmd_report_findings)
    h = r.add_parser("html", help="tables + figures -> self-contained report.html")
    h.add_argument("--tables", default="results/tables")
    h.add_argument("--figures", default="results/figures")
    h.add_argument("--config", default="config.yaml")
    h.add_argument("--out", default="results/report.html")
    h.set_defaults(fn=cmd_report_html)
    return p


def main(argv: list[str] | None = None) -> int:
    """The ``dlbench`` command. With ``DLBENCH_WORKER=1`` or ``auto`` (local Snakemake runs set it) the verb
    runs in a forked child of a server that imported torch and timm once (dlbench.worker), falling back
    to this process if the worker cannot be set up; unset or ``0``: in this process."""
    if os.environ.get("DLBENCH_WORKER", "0").strip().lower() in ("1", "auto"):
        from dlbench.worker import run_via_worker

        code = run_via_worker(sys.argv[1:] if argv is None else list(argv))
        if code is not None:
            return code
    return run_in_process(argv)


def run_in_process(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the verb here; 2 for a config/data/checkpoint/registry error."""
    args = build_parser().parse_args(argv)
    from dlbench.config import ConfigError
    from dlbench.data.store import DatasetError
    from dlbench.errors import CheckpointError
    from dlbench.registry import UnknownNameError

    try:
        args.fn(args)
    except (ConfigError, DatasetError, CheckpointError, UnknownNameError) as e:
        print(f"dlbench: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
