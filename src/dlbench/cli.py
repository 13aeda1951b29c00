"""``dlbench <verb>``: one verb per Snakemake rule, each usable by hand without Snakemake."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _recipe(text: str) -> dict[str, Any]:
    """A recipe given inline as JSON or as ``@path/to/recipe.json``."""
    raw = Path(text[1:]).read_text() if text.startswith("@") else text
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--recipe: not valid JSON: {e}") from None


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
        print(f"{name:12s} {'offline' if spec.offline else 'download'}  {spec.description}")


def cmd_config_check(args: argparse.Namespace) -> None:
    from dlbench.config import load_config

    cfg = load_config(args.config)
    print(f"{args.config}: OK ({len(cfg['datasets'])} datasets, {len(cfg['seeds'])} seeds)")


def cmd_train_supervised(args: argparse.Namespace) -> None:
    from dlbench.train.engine import set_threads
    from dlbench.train.supervised import train_supervised

    set_threads(args.threads)
    meta = train_supervised(_recipe(args.recipe), args.data_root, args.out, args.checkpoint, device=args.device)
    print(f"trained {meta['model_id']} in {meta['train_seconds']:.1f}s")


def cmd_train_pretrain(args: argparse.Namespace) -> None:
    from dlbench.pretrain.run import pretrain
    from dlbench.train.engine import set_threads

    set_threads(args.threads)
    meta = pretrain(_recipe(args.recipe), args.data_root, args.out, args.checkpoint, device=args.device)
    print(f"pretrained {meta['model_id']} in {meta['train_seconds']:.1f}s")


def cmd_train_adapt(args: argparse.Namespace) -> None:
    from dlbench.adapt.run import adapt
    from dlbench.train.engine import set_threads

    set_threads(args.threads)
    outs = dict(item.split("=", 1) for item in args.out)
    recipe = _recipe(args.recipe)
    if args.checkpoint_dir:
        recipe["checkpoints"] = {name: str(Path(args.checkpoint_dir) / f"{name}.pt") for name in outs}
    results = adapt(recipe, args.pretrained, args.data_root, outs, args.tsne, device=args.device)
    for name, meta in results.items():
        print(f"adapted {meta['model_id']} in {meta['adapt_seconds']:.1f}s")


def cmd_train_list(args: argparse.Namespace) -> None:
    from dlbench.adapt.base import load_all as load_protocols
    from dlbench.pretrain.base import load_all as load_methods

    print("pretrain methods (config: pretrain.runs[].methods):")
    for name in load_methods().names():
        cls = load_methods().get(name)
        print(f"  {name:<20} {cls.family:<13} {'(ViT only)' if cls.requires == 'vit' else ''}")
    print("adapt protocols (config: adapt.protocols):")
    for name in load_protocols().names():
        print(f"  {name:<20} {load_protocols().get(name).description}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from dlbench.evaluate.predict import EvalSplit, evaluate_models
    from dlbench.train.engine import set_threads

    set_threads(args.threads)
    try:
        splits = [EvalSplit.parse(s) for s in args.split]
    except ValueError as e:
        raise SystemExit(f"--split: {e}") from None
    if not (len(args.model) == len(args.out) == len(args.costs)):
        raise SystemExit("--model, --out and --costs need the same number of values (one per model)")
    evaluate_models(list(zip(args.model, args.out, args.costs)), splits, args.data_root, device=args.device)


def cmd_report_aggregate(args: argparse.Namespace) -> None:
    from dlbench.report.aggregate import aggregate

    aggregate(args.models, args.predictions, args.out_dir)


def cmd_report_figures(args: argparse.Namespace) -> None:
    from dlbench.report.figures import make_figures

    make_figures(args.tables, args.out_dir, tsne_dir=args.tsne)


def cmd_report_html(args: argparse.Namespace) -> None:
    from dlbench.report.html import write_report

    write_report(args.tables, args.figures, args.config, args.out)


def _training_args(p: argparse.ArgumentParser, out_help: str) -> None:
    """The arguments every single-model training verb takes (one recipe in, one model directory out)."""
    p.add_argument("--recipe", required=True, help="recipe JSON, inline or @file")
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", required=True, help=out_help)
    p.add_argument("--checkpoint", help="resumable checkpoint path (resumed if present)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="auto")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dlbench", description=__doc__)
    sub = p.add_subparsers(dest="verb", required=True)

    data = sub.add_parser("data", help="datasets: build, fetch through DVC, list").add_subparsers(dest="data_verb", required=True)
    b = data.add_parser("build", help="build one dataset into the array format (what a dvc.yaml stage runs)")
    b.add_argument("name")
    b.add_argument("--out", help="output directory (default: <data-root>/<name>)")
    b.add_argument("--data-root", default="data")
    b.add_argument("--raw-dir", help="where original files are (or are downloaded to), for real datasets")
    b.set_defaults(fn=cmd_data_build)
    f = data.add_parser("fetch", help="pull the dataset from the DVC remote, or build it with dvc repro and push it")
    f.add_argument("name")
    f.set_defaults(fn=cmd_data_fetch)
    ls = data.add_parser("list", help="list registered datasets")
    ls.set_defaults(fn=cmd_data_list)

    c = sub.add_parser("config", help="config tools").add_subparsers(dest="config_verb", required=True)
    cc = c.add_parser("check", help="validate a config file (schema + registry names)")
    cc.add_argument("config")
    cc.set_defaults(fn=cmd_config_check)

    t = sub.add_parser("train", help="training stages").add_subparsers(dest="train_verb", required=True)
    s = t.add_parser("supervised", help="train backbone + head from scratch on the labeled train split")
    _training_args(s, out_help="model directory to write")
    s.set_defaults(fn=cmd_train_supervised)
    pt = t.add_parser("pretrain", help="self-supervised pretraining of a backbone on the unlabeled split")
    _training_args(pt, out_help="model directory to write (backbone only)")
    pt.set_defaults(fn=cmd_train_pretrain)
    ad = t.add_parser("adapt", help="adapt a pretrained backbone with evaluation protocols (one model each)")
    ad.add_argument("--recipe", required=True, help="recipe JSON, inline or @file")
    ad.add_argument("--pretrained", required=True, help="pretrained model directory")
    ad.add_argument("--data-root", default="data")
    ad.add_argument("--out", nargs="+", required=True, help="PROTOCOL=MODEL_DIR for each protocol to write")
    ad.add_argument("--tsne", help="Parquet file for the t-SNE of test embeddings (before/after fine-tuning)")
    ad.add_argument("--checkpoint-dir", help="directory for resumable fine-tuning checkpoints")
    ad.add_argument("--threads", type=int, default=0)
    ad.add_argument("--device", default="auto")
    ad.set_defaults(fn=cmd_train_adapt)
    tl = t.add_parser("list", help="list registered pretrain methods and adapt protocols")
    tl.set_defaults(fn=cmd_train_list)

    e = sub.add_parser("evaluate", help="run a model once on eval splits, cache logits (Parquet) and costs")
    e.add_argument("--model", nargs="+", required=True, help="model directories (several share the eval data)")
    e.add_argument("--split", nargs="+", required=True,
                   help="NAME=DATASET:SPLIT[:CORRUPTION:SEVERITY[:MAX_IMAGES]] ...")
    e.add_argument("--data-root", default="data")
    e.add_argument("--out", nargs="+", required=True, help="logits Parquet file to write, one per model")
    e.add_argument("--costs", nargs="+", required=True, help="costs JSON file to write, one per model")
    e.add_argument("--threads", type=int, default=0)
    e.add_argument("--device", default="auto")
    e.set_defaults(fn=cmd_evaluate)

    r = sub.add_parser("report", help="tables, figures, HTML report").add_subparsers(dest="report_verb", required=True)
    a = r.add_parser("aggregate", help="cached logits -> results/tables/*.parquet")
    a.add_argument("--models", default="results/models")
    a.add_argument("--predictions", default="results/predictions")
    a.add_argument("--out-dir", default="results/tables")
    a.set_defaults(fn=cmd_report_aggregate)
    fg = r.add_parser("figures", help="tables -> figures (PNG)")
    fg.add_argument("--tables", default="results/tables")
    fg.add_argument("--out-dir", default="results/figures")
    fg.add_argument("--tsne", default=None, help="t-SNE directory of the adapt jobs (results/tsne)")
    fg.set_defaults(fn=cmd_report_figures)
    h = r.add_parser("html", help="tables + figures -> self-contained results/report.html")
    h.add_argument("--tables", default="results/tables")
    h.add_argument("--figures", default="results/figures")
    h.add_argument("--config", default="config.yaml")
    h.add_argument("--out", default="results/report.html")
    h.set_defaults(fn=cmd_report_html)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from dlbench.config import ConfigError
    from dlbench.data.store import DatasetError
    from dlbench.models.checkpoint import CheckpointError as ModelCheckpointError
    from dlbench.registry import UnknownNameError
    from dlbench.train.engine import CheckpointError

    try:
        args.fn(args)
    except (ConfigError, DatasetError, CheckpointError, ModelCheckpointError, UnknownNameError) as e:
        print(f"dlbench: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
