"""Bad configs fail before any job runs, with a message naming the offending key (acceptance 6)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from .conftest import snakemake

pytestmark = pytest.mark.workflow


def smoke(repo_root: Path) -> dict:
    return yaml.safe_load((repo_root / "configs/smoke.yaml").read_text())


def mutate_backbone(c):
    c["backbones"]["tiny"]["timm"] = "resnet_does_not_exist"


def mutate_dataset(c):
    c["datasets"]["imagenot"] = copy.deepcopy(c["datasets"]["digits"])


def mutate_key(c):
    c["supervised"]["train"]["epocs"] = 3


def mutate_epochs(c):
    c["supervised"]["train"]["epochs"] = -2


@pytest.mark.parametrize("mutate, message", [
    (mutate_backbone, "backbones.tiny.timm: unknown timm model 'resnet_does_not_exist'"),
    (mutate_dataset, "datasets.imagenot: unknown dataset 'imagenot'"),
    (mutate_key, "unknown config key supervised.train.epocs"),
    (mutate_epochs, "config key supervised.train.epochs: -2 is less than the minimum of 1"),
])
def test_bad_config_fails_before_any_job(tmp_path, smoke_repo, repo_root, mutate, message):
    cfg = smoke(repo_root)
    mutate(cfg)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = snakemake(smoke_repo, "--dry-run", config=str(path), check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert message in out, out[-3000:]
    assert "rule supervised" not in out  # nothing was scheduled


@pytest.mark.parametrize("config", ["config.yaml", *sorted(p.name for p in Path(__file__).parents[2].glob("configs/*.yaml"))])
def test_every_config_dry_runs(smoke_repo, config):
    path = config if config == "config.yaml" else f"configs/{config}"
    proc = snakemake(smoke_repo, "--dry-run", config=path)
    assert "rule evaluate" in proc.stdout or "evaluate" in proc.stdout


def test_lint_is_clean(smoke_repo):
    proc = snakemake(smoke_repo, "--lint", config="config.yaml", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
