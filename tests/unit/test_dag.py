"""The parse-time state of the Snakefile is cached per (config, code) and equal to a fresh computation."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dlbench import dag
from dlbench.config import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def raw(name: str = "configs/smoke.yaml") -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.fixture(scope="module")
def computed() -> dag.DagState:
    return dag.compute(raw())


def test_cached_state_equals_a_fresh_computation(tmp_path, computed):
    first = dag.load_state(raw(), tmp_path)
    assert len(list(tmp_path.glob("*.pkl"))) == 1
    again = dag.load_state(raw(), tmp_path)
    for state in (first, again):
        assert state.cfg == computed.cfg and state.figures == computed.figures
        assert state.plan.entries == computed.plan.entries and state.plan.eval_groups == computed.plan.eval_groups
        assert state.train_minutes == computed.train_minutes and state.eval_minutes == computed.eval_minutes


def test_every_job_has_a_runtime(computed):
    plan = computed.plan
    assert set(computed.train_minutes) == set(plan.entries)
    frozen = [g for g in plan.eval_groups if g.split("/")[3] in plan.frozen_variants]
    trained = [g for g in plan.eval_groups if g not in frozen]
    assert all(dag.eval_job_key([g]) in computed.eval_minutes for g in trained)
    for g in frozen:  # one evaluate job per pretrained backbone writes all its frozen variants' groups
        assert dag.eval_job_key(dag.frozen_job_groups(plan, g)) in computed.eval_minutes
    assert all(m >= 1 for m in [*computed.train_minutes.values(), *computed.eval_minutes.values()])


def test_key_changes_with_the_config_the_code_and_weights_files(tmp_path, monkeypatch):
    cfg = raw()
    changed = copy.deepcopy(cfg)
    changed["adapt"]["variants"]["lpft"]["train"]["lr"] = 0.0007
    assert dag.cache_key(cfg) != dag.cache_key(changed)
    key = dag.cache_key(cfg)
    monkeypatch.setattr(dag, "_source_digest", lambda: "edited")
    assert dag.cache_key(cfg) != key
    monkeypatch.undo()
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"1")
    with_weights = copy.deepcopy(cfg)
    with_weights["backbones"]["tiny"]["weights"] = str(weights)
    before = dag.cache_key(with_weights)
    weights.write_bytes(b"22")
    assert dag.cache_key(with_weights) != before


def test_a_bad_config_is_never_cached(tmp_path):
    cfg = raw()
    cfg["device"] = "tpu"
    with pytest.raises(ConfigError, match="device"):
        dag.load_state(cfg, tmp_path)
    assert not list(tmp_path.glob("*.pkl"))


def test_a_cached_state_loads_without_torch(tmp_path):
    """The point of the cache: a repeated `snakemake` call imports no torch, timm or plotting code."""
    dag.load_state(raw(), tmp_path)
    code = ("import sys, yaml; from dlbench.dag import load_state; "
            f"s = load_state(yaml.safe_load(open({str(ROOT / 'configs/smoke.yaml')!r})), {str(tmp_path)!r}); "
            "s.plan.eval_split_specs('shapes'); s.plan.recipe(next(iter(s.plan.entries))); "
            "print(sorted(m for m in ('torch', 'timm', 'matplotlib', 'seaborn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
