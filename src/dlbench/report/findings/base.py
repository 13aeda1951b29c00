"""The findings registry: claims the course makes, each checked against this run's tables.

A claim (:class:`Claim`) is registered by the module of its course topic (``findings/ssl.py`` for
the SSL section) with a key, the claim in words, its source (paper or homework), the comparison it
rests on, the report section it belongs to, and a ``check``: a pure function of the tables
(``metrics``, ``history``, ``summary``) returning :class:`Verdict` objects: exactly one claim-level
verdict (``subject=None``) and, where the claim is per method (or per run), one verdict per
subject. ``holds=None`` means "not testable in this config" (e.g. no MAE rows).

``results/tables/findings.parquet`` (:func:`findings_table`) has **one row per claim**, in report
order (section order, then the claim's ``order``):

==============  ==========  ==================================================================
column          dtype       meaning
==============  ==========  ==================================================================
claim_id        string      the registered key, e.g. ``ssl.probe_beats_random``
section         string      key of the report section that shows it
order           int64       position within the section
claim           string      the claim in words
source          string      paper or homework that makes it
comparison      string      the comparison and threshold it rests on
holds           boolean     the claim-level verdict; <NA> = not testable in this config
n_holds         Int64       per-subject verdicts that hold (<NA> for a claim without subjects)
n_total         Int64       per-subject verdicts that could be tested (holds True or False)
n_untestable    Int64       per-subject verdicts that could not be tested
evidence        string      the claim-level verdict in words, with its numbers
evidence_json   string      JSON: ``{"claim": {numbers}, "subjects": [{"subject", "holds",
                            "evidence", "numbers"}, ...]}``
==============  ==========  ==================================================================

Per-subject details live in ``evidence_json`` rather than in a child table: one file, one row per
claim, readable as is; :func:`subject_table` unpacks them. Numbers are means over seeds with the
std over seeds (ddof=1; ``null`` with one seed) and the number of seeds; NaN is written as
``null``, so the JSON is strict.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dlbench.registry import Registry
from dlbench.report.sections import Tables

FINDINGS_FILE = "findings.parquet"
COLUMNS = ["claim_id", "section", "order", "claim", "source", "comparison", "holds", "n_holds", "n_total",
           "n_untestable", "evidence", "evidence_json"]
MARKS = {True: ("holds", "✓ holds"), False: ("fails", "✗ does not hold"), None: ("untestable", "– not testable")}
EPS = 1e-9  # float tolerance of a threshold comparison (.5 - .4 must count as .1); not a margin


@dataclass(frozen=True)
class Verdict:
    holds: bool | None  # None: not testable in this config
    evidence: str  # short human-readable text with the numbers
    numbers: dict[str, Any] = field(default_factory=dict)  # structured evidence (means, stds, seeds ...)
    subject: str | None = None  # None: the claim-level verdict; else the method / run it is about


@dataclass(frozen=True)
class Claim:
    key: str
    claim: str
    source: str
    comparison: str
    section: str
    check: Callable[[Tables], list[Verdict]]
    order: int = 0


CLAIMS: Registry[Claim] = Registry("finding")


def register_claim(claim: Claim) -> Claim:
    return CLAIMS.add(claim.key, claim)


def load_all() -> list[Claim]:
    """Every registered claim (importing each module of this package registers its claims), in
    report order: by section order, then the claim's order, then key."""
    import importlib
    import pkgutil

    import dlbench.report.findings as package
    from dlbench.report.sections import load_all as load_sections

    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"dlbench.report.findings.{info.name}")
    rank = {s.key: s.order for s in load_sections()}
    return sorted((CLAIMS.get(k) for k in CLAIMS), key=lambda c: (rank.get(c.section, math.inf), c.order, c.key))


# ---------------------------------------------------------------- evidence helpers (shared by the topics)


def f3(v: float) -> str:
    """.8134 -> '.813' (as the report's tables write accuracies)."""
    s = f"{v:.3f}"
    return s[1:] if s.startswith("0.") else s.replace("-0.", "-.")


def mean_std(mean: float, std: float, seeds: int) -> str:
    """'.412±.010' over several seeds; '.412 (1 seed, no std)' for one."""
    if pd.isna(mean):
        return "n/a"
    if seeds <= 1 or pd.isna(std):
        return f"{f3(mean)} ({int(seeds)} seed, no std)"
    return f"{f3(mean)}±{f3(std)}"


def points(diff: float) -> str:
    """0.191 -> '+19.1 pts'."""
    return f"{100 * diff:+.1f} pts"


def stats(mean: float, std: float, seeds: int) -> dict[str, Any]:
    """The structured form of a mean over seeds (std: ddof=1, None with one seed)."""
    return {"mean": mean, "std": None if seeds <= 1 or pd.isna(std) else std, "seeds": int(seeds)}


def _plain(x: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN / NA to None."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if x is None or x is pd.NA:
        return None
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x if isinstance(x, str) else str(x)


def _holds(v: Any) -> bool | None:
    return None if v is None or v is pd.NA else bool(v)


# ---------------------------------------------------------------- the table


def evaluate(claim: Claim, tables: Tables) -> dict[str, Any]:
    """One findings row: the claim's verdicts on ``tables``."""
    verdicts = claim.check(tables)
    top = [v for v in verdicts if v.subject is None]
    if len(top) != 1:
        raise ValueError(f"finding {claim.key!r} gave {len(top)} claim-level verdicts (subject=None); needs one")
    subs = [v for v in verdicts if v.subject is not None]
    tested = [_holds(v.holds) for v in subs if _holds(v.holds) is not None]
    evidence = {"claim": top[0].numbers,
                "subjects": [{"subject": v.subject, "holds": _holds(v.holds), "evidence": v.evidence,
                              "numbers": v.numbers} for v in subs]}
    return {"claim_id": claim.key, "section": claim.section, "order": claim.order, "claim": claim.claim,
            "source": claim.source, "comparison": claim.comparison, "holds": _holds(top[0].holds),
            "n_holds": sum(tested) if subs else None, "n_total": len(tested) if subs else None,
            "n_untestable": len(subs) - len(tested) if subs else None, "evidence": top[0].evidence,
            "evidence_json": json.dumps(_plain(evidence), allow_nan=False)}


def findings_table(tables: Tables, claims: Iterable[Claim] | None = None) -> pd.DataFrame:
    """One row per claim (schema: module docstring), from the tables the report reads."""
    rows = [evaluate(c, tables) for c in (load_all() if claims is None else claims)]
    df = pd.DataFrame(rows, columns=COLUMNS)
    types = {c: "string" for c in ("claim_id", "section", "claim", "source", "comparison", "evidence",
                                   "evidence_json")}
    return df.astype({**types, "order": "int64", "holds": "boolean", "n_holds": "Int64", "n_total": "Int64",
                      "n_untestable": "Int64"})


def subject_table(findings: pd.DataFrame, claim_id: str) -> pd.DataFrame:
    """The per-subject verdicts of one claim (columns ``subject``, ``holds``, ``evidence``, ``numbers``)."""
    row = findings[findings["claim_id"] == claim_id]
    if row.empty:
        raise KeyError(f"no finding {claim_id!r} in the table")
    subs = json.loads(row["evidence_json"].iloc[0])["subjects"]
    df = pd.DataFrame(subs, columns=["subject", "holds", "evidence", "numbers"])
    return df.astype({"holds": "boolean"})


def read_findings(tables_dir: str | Path) -> pd.DataFrame | None:
    """findings.parquet, or None when it was never computed (results of an older version)."""
    path = Path(tables_dir) / FINDINGS_FILE
    return pd.read_parquet(path) if path.exists() else None


def write_findings(tables_dir: str | Path, out: str | Path) -> pd.DataFrame:
    """metrics, history, summary of ``tables_dir`` -> ``out`` (findings.parquet), written atomically."""
    from dlbench.report.aggregate import write_parquet
    from dlbench.report.figures import read_tables

    df = findings_table(read_tables(tables_dir))
    write_parquet(df, Path(out))
    for r in df.itertuples():
        print(f"[{MARKS[_holds(r.holds)][1]}] {r.claim_id}: {r.evidence}")
    return df


# ---------------------------------------------------------------- HTML


def _mark(holds: Any) -> str:
    cls, text = MARKS[_holds(holds)]
    return f"<td class='{cls}'>{text}</td>"


def findings_html(tables: Tables, section: str) -> str:
    """A section's findings as a short HTML table (claim and source, verdict mark, this run's
    numbers, per-method details folded); one sentence when findings were not computed."""
    if "findings" not in tables:
        return "<p class='empty'>Findings were not computed for these results (no tables/findings.parquet).</p>"
    f = tables["findings"]
    f = f[f["section"] == section].sort_values("order", kind="stable")
    if f.empty:
        return ""
    rows = []
    for r in f.itertuples():
        subs = json.loads(r.evidence_json)["subjects"] if isinstance(r.evidence_json, str) else []
        details = ""
        if subs:
            items = "".join(f"<li>{MARKS[_holds(s['holds'])][1].split()[0]} {html.escape(s['evidence'])}</li>"
                            for s in subs)
            n_holds, n_total = int(r.n_holds), int(r.n_total)
            summary = f"{len(subs)} per-subject verdicts: {n_holds} of {n_total} testable hold"
            details = f"<details><summary>{summary}</summary><ul>{items}</ul></details>"
        rows.append(f"<tr><td>{html.escape(r.claim)}<br><small>{html.escape(r.source)}. "
                    f"{html.escape(r.comparison)}</small></td>{_mark(r.holds)}"
                    f"<td>{html.escape(r.evidence)}{details}</td></tr>")
    return ("<h3>Findings</h3><table class='findings'><tr><th>claim</th><th>verdict</th>"
            "<th>evidence (this run)</th></tr>" + "".join(rows) + "</table>")


def summary_html(tables: Tables, titles: dict[str, str]) -> str:
    """The report's one-line summary: 'Findings: N of M hold (K not testable in this config)',
    with a link to each section that has findings (``titles``: section key -> title, report order)."""
    if "findings" not in tables:
        return ("<p class='empty'>Findings were not computed for these results (no tables/findings.parquet; "
                "<code>dlbench report findings</code> writes it).</p>")
    f = tables["findings"]
    holds = f["holds"].astype("boolean")
    head = (f"Findings: {int(holds.eq(True).sum())} of {len(f)} hold "
            f"({int(holds.isna().sum())} not testable in this config)")
    links = []
    for key, title in titles.items():
        h = holds[f["section"] == key]
        if len(h):
            links.append(f"<a href='#{html.escape(key)}'>{html.escape(title)}</a>: "
                         f"{int(h.eq(True).sum())} of {len(h)} hold")
    return f"<p class='findings-summary'><b>{head}</b>" + (" — " + "; ".join(links) if links else "") + ".</p>"
