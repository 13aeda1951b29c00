"""Tables + figures -> one self-contained HTML report (figures embedded as base64 PNG)."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import yaml

from dlbench.io import atomic_path
from dlbench.provenance import dataset_hashes, package_versions
from dlbench.report.figures import recipe_label
from dlbench.report.ssl import COLLAPSE_THRESHOLD, collapse_flags, protocol_table, ssl_summary

SECTIONS = [
    ("baseline", "Supervised baseline",
     "Backbone + head trained from scratch on the labeled train split; evaluated ID and on every OOD split."),
    ("ssl", "Self-supervised pretraining", "Pretext tasks, contrastive and non-contrastive methods, MAE; probes and fine-tuning."),
    ("clip", "Robust fine-tuning of CLIP", "Zero-shot, linear probe, fine-tuning, LP-FT, WiSE-FT, Lipsum-FT, PEFT."),
    ("ensembles", "Ensembles and weight averaging", "Deep ensembles, FGE/SSE, SWA/SWAG, model soups."),
    ("compression", "Compression", "Pruning, quantization, distillation."),
]

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;font-size:0.85em;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:0.9em;color:#555}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:0.8em}.empty{color:#888;font-style:italic}
.alert{color:#fff;background:#c00;padding:0.5em 1em;font-weight:bold}table.alert-table td{color:#c00}
"""

CAPTIONS = {
    "id_vs_ood.png": "ID accuracy against mean OOD accuracy per shift kind. Points below the dashed line lose accuracy under shift.",
    "corruption_severity.png": "Accuracy against corruption severity (0 = clean ID test), per corruption type; band: std over seeds.",
    "training_curves.png": "Training loss and accuracy, validation accuracy per epoch; band: std over seeds.",
    "ssl_protocols.png": "ID accuracy (top) and mean OOD accuracy over shift kinds (bottom) per pretraining "
                         "method and evaluation protocol, mean ± std over seeds. Dashed line and band: supervised "
                         "training from scratch on the same backbone. 'random init': the untrained backbone.",
    "ssl_collapse.png": "Pretraining curves. Left: std of l2-normalised validation embeddings x sqrt(dim) "
                        "(~1 well spread, -> 0 collapsed; dashed red: collapse threshold). Right: online kNN "
                        "accuracy on the val split. Mean over seeds, band: std.",
    "ssl_tsne.png": "t-SNE of validation features per method (first seed), coloured by class: frozen pretrained "
                    "features, and after fine-tuning where available.",
}
SSL_FIGURES = ("ssl_protocols.png", "ssl_collapse.png", "ssl_tsne.png")


def _img(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(CAPTIONS.get(path.name, path.stem))}</figcaption></figure>")


def baseline_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Supervised rows of summary.parquet as 'mean ± std over seeds' strings, one row per recipe."""
    sup = summary[summary["adapt"] == "supervised"].reset_index(drop=True)
    out = pd.DataFrame(index=recipe_label(sup).rename("model"))
    for col in [c[:-5] for c in sup.columns if c.endswith("_mean")]:
        mean, std = sup[f"{col}_mean"].to_numpy(), sup[f"{col}_std"].fillna(0).to_numpy()
        fmt = "{:.0f}" if col == "params" else "{:.3f} ± {:.3f}"
        out[col.replace("_", " ")] = [fmt.format(m, s) if m == m else "" for m, s in zip(mean, std)]
    out["seeds"] = sup["seeds"].to_numpy()
    return out


def collapse_html(history: pd.DataFrame, threshold: float = COLLAPSE_THRESHOLD) -> str:
    """The collapsed pretraining runs as a red-flagged table, or one sentence saying none did."""
    flags = collapse_flags(history, threshold)
    bad = flags[flags["collapsed"]]
    if flags.empty:
        return "<p class='empty'>No collapse monitor (val_emb_std_norm) logged by any pretraining run.</p>"
    if bad.empty:
        return (f"<p>No pretraining run collapsed (final std·sqrt(d) ≥ {threshold:g} "
                f"for all {len(flags)} runs).</p>")
    table = bad.drop(columns=["collapsed"]).rename(columns=lambda c: c.replace("_", " "))
    return (f"<p class='alert'>WARNING: {len(bad)} of {len(flags)} pretraining runs collapsed "
            f"(final std·sqrt(d) &lt; {threshold:g}); their probes measure a collapsed representation.</p>"
            + table.to_html(index=False, border=0, classes="alert-table", float_format="{:.4f}".format))


def ssl_section(metrics: pd.DataFrame, history: pd.DataFrame, figures: Path,
                threshold: float = COLLAPSE_THRESHOLD) -> list[str]:
    """HTML parts of the 'ssl' section (empty list when the config has no SSL models)."""
    summary = ssl_summary(metrics)
    if not (summary["pretrain"] != "none").any():
        return []
    parts = ["<h3>Protocols</h3><p>Mean ± std over seeds. OOD: mean over shift kinds of the mean accuracy "
             "over each kind's splits (one style split weighs as much as the whole corruption suite).</p>",
             protocol_table(summary).to_html(classes="results", border=0),
             "<h3>Representation collapse</h3>", collapse_html(history, threshold)]
    parts += [_img(figures / name) for name in SSL_FIGURES if (figures / name).exists()]
    return parts


def write_report(tables_dir: str | Path, figures_dir: str | Path, config_path: str | Path, out: str | Path) -> None:
    tables, figures = Path(tables_dir), Path(figures_dir)
    metrics = pd.read_parquet(tables / "metrics.parquet")
    summary = pd.read_parquet(tables / "summary.parquet")
    history = (pd.read_parquet(tables / "history.parquet") if (tables / "history.parquet").exists()
               else pd.DataFrame(columns=["model_id", "epoch"]))
    config_text = Path(config_path).read_text() if Path(config_path).exists() else "(config not found)"
    config = (yaml.safe_load(config_text) if Path(config_path).exists() else None) or {}
    title = (config.get("report") or {}).get("title", "dlbench results report")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             f"<p>{len(metrics['model_id'].unique())} models x eval splits = {len(metrics)} rows in "
             f"<code>results/tables/metrics.parquet</code>. Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>"]
    for key, heading, blurb in SECTIONS:
        parts.append(f"<h2 id='{key}'>{html.escape(heading)}</h2><p>{html.escape(blurb)}</p>")
        if key == "baseline" and (metrics["adapt"] == "supervised").any():
            parts.append(baseline_table(summary).to_html(classes="results", border=0))
            for name in ("id_vs_ood.png", "corruption_severity.png", "training_curves.png"):
                if (figures / name).exists():
                    parts.append(_img(figures / name))
        elif key == "ssl" and (ssl := ssl_section(metrics, history, figures)):
            parts += ssl
        else:
            parts.append("<p class='empty'>Not in this config yet.</p>")
    versions = package_versions()
    parts.append("<h2 id='provenance'>Provenance</h2><h3>Dataset hashes (dvc.lock)</h3>")
    parts.append(pd.DataFrame(sorted(dataset_hashes().items()), columns=["dataset", "md5"]).to_html(index=False, border=0))
    parts.append("<h3>Package versions</h3>")
    parts.append(pd.DataFrame(sorted(versions.items()), columns=["package", "version"]).to_html(index=False, border=0))
    parts.append(f"<h3>Config</h3><pre>{html.escape(config_text)}</pre>")
    parts.append("</body></html>")
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(parts))
