"""DESIGN.md's import rules, checked on the source (every import, including ones inside functions):
data knows no models or training; the engine knows no method; models know no training; evaluation
is method-blind; the report reads tables and cached outputs, never builds or runs a network."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
METHODS = ("dlbench.pretrain", "dlbench.adapt", "dlbench.ensemble", "dlbench.compress", "dlbench.classify",
           "dlbench.supervised")
STAGES = (*METHODS, "dlbench.stage", "dlbench.plan")
NETWORKS = ("torch", "timm", "open_clip", "torchvision", "dlbench.models", "dlbench.train", "dlbench.evaluate.predict",
            "dlbench.cards", "dlbench.resources")
RULES: dict[str, tuple[str, ...]] = {
    "dlbench.data": ("dlbench.models", "dlbench.train", "dlbench.evaluate", "dlbench.report", "dlbench.cards", *STAGES),
    "dlbench.train": ("dlbench.models", "dlbench.data", "dlbench.evaluate", "dlbench.report", *STAGES),
    "dlbench.models": ("dlbench.train", "dlbench.evaluate", "dlbench.report", *STAGES),
    "dlbench.evaluate": ("dlbench.train", "dlbench.report", *STAGES),
    "dlbench.report": (*NETWORKS, *STAGES),
}


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for every import statement in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            out += [(node.lineno, f"{base}.{a.name}" if node.module is None else base) for a in node.names]
    return out


def violations(src: Path, rules: dict[str, tuple[str, ...]] = RULES) -> list[str]:
    found = []
    for path in sorted(src.rglob("*.py")):
        module = ".".join(path.relative_to(src).with_suffix("").parts).removesuffix(".__init__")
        for layer, forbidden in rules.items():
            if module != layer and not module.startswith(layer + "."):
                continue
            for line, name in imports(path, module):
                if any(name == f or name.startswith(f + ".") for f in forbidden):
                    found.append(f"{path.relative_to(src)}:{line}: {layer} imports {name}")
    return found


def test_the_package_keeps_the_import_rules():
    assert violations(SRC) == []


@pytest.mark.parametrize("layer, source, forbidden", [
    ("data", "from dlbench.models.backbones import Backbone\n", "dlbench.models.backbones"),
    ("data", "def f():\n    import dlbench.train.engine\n", "dlbench.train.engine"),
    ("train", "from dlbench.pretrain import base\n", "dlbench.pretrain"),
    ("report", "from ..evaluate.predict import EvalSplit\n", "dlbench.evaluate.predict"),
    ("report", "import torch\n", "torch"),
    ("evaluate", "from dlbench.adapt.base import KINDS\n", "dlbench.adapt.base"),
])
def test_a_forbidden_import_is_caught(tmp_path, layer, source, forbidden):
    pkg = tmp_path / "dlbench" / layer
    pkg.mkdir(parents=True)
    (tmp_path / "dlbench" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "bad.py").write_text(source)
    found = violations(tmp_path)
    assert len(found) == 1 and found[0].endswith(f"dlbench.{layer} imports {forbidden}"), found


def test_the_report_layer_runs_without_torch():
    """Transitively too: importing every report module loads no torch (it cannot run a network)."""
    code = ("import sys, importlib, pkgutil, dlbench.report as r\n"
            "for m in pkgutil.iter_modules(r.__path__): importlib.import_module('dlbench.report.' + m.name)\n"
            "print(sorted(k for k in sys.modules if k == 'torch' or k.startswith(('torch.', 'timm'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
