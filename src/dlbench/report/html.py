"""Tables + figures -> one self-contained HTML report (figures embedded as base64 PNG).

One ``<h2>`` per registered section (``dlbench.report.sections``), in order; a section with
nothing in this config says so. Below the intro, one line sums up the findings
(``tables/findings.parquet``, linking to the sections that show them); without that table (results
of an older version) the report says findings were not computed. Provenance (dataset hashes,
package versions, the config) last.
"""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import yaml

from dlbench.io import atomic_path
from dlbench.provenance import dataset_hashes, package_versions
from dlbench.report.figures import read_tables
from dlbench.report.findings.base import read_findings, summary_html
from dlbench.report.sections import Section, load_all

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;font-size:0.85em;margin:1em 0}th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
figure{margin:1.5em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:0.9em;color:#555}
pre{background:#f7f7f7;padding:1em;overflow-x:auto;font-size:0.8em}.empty{color:#888;font-style:italic}
.alert{color:#fff;background:#c00;padding:0.5em 1em;font-weight:bold}table.alert-table td{color:#c00}
table.findings td{text-align:left;vertical-align:top}td.holds{color:#070;white-space:nowrap}
td.fails{color:#c00;font-weight:bold;white-space:nowrap}td.untestable{color:#888;white-space:nowrap}
.findings-summary{background:#f4f4f4;padding:0.5em 1em}
"""


def figure_html(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def section_figures(section: Section, figures: Path) -> list[str]:
    """The section's figures that exist, embedded with their captions, in the section's order."""
    return [figure_html(figures / f.name, f.caption) for f in section.figures if (figures / f.name).exists()]


def write_report(tables_dir: str | Path, figures_dir: str | Path, config_path: str | Path, out: str | Path) -> None:
    tables, figures = read_tables(tables_dir), Path(figures_dir)
    findings = read_findings(tables_dir)
    if findings is not None:  # absent: sections and the summary line say findings were not computed
        tables["findings"] = findings
    sections = load_all()
    metrics = tables["metrics"]
    config_text = Path(config_path).read_text() if Path(config_path).exists() else "(config not found)"
    config = (yaml.safe_load(config_text) if Path(config_path).exists() else None) or {}
    title = (config.get("report") or {}).get("title", "dlbench results report")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p>{metrics['model_id'].nunique()} models x eval splits = {len(metrics)} rows in "
             f"<code>tables/metrics.parquet</code>. Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.</p>",
             summary_html(tables, {s.key: s.title for s in sections})]
    for section in sections:
        parts.append(f"<h2 id='{section.key}'>{html.escape(section.title)}</h2><p>{html.escape(section.blurb)}</p>")
        body = section.render(tables, figures)
        parts += body or ["<p class='empty'>Not in this config yet.</p>"]
    parts.append("<h2 id='provenance'>Provenance</h2><h3>Dataset hashes (dvc.lock)</h3>")
    parts.append(pd.DataFrame(sorted(dataset_hashes().items()), columns=["dataset", "md5"]).to_html(index=False,
                                                                                                    border=0))
    parts.append("<h3>Package versions</h3>")
    parts.append(pd.DataFrame(sorted(package_versions().items()), columns=["package", "version"]).to_html(
        index=False, border=0))
    parts.append(f"<h3>Config</h3><pre>{html.escape(config_text)}</pre>")
    parts.append("</body></html>")
    with atomic_path(out) as tmp:
        tmp.write_text("\n".join(parts))
