"""Workflow tests run the real `snakemake` (and DVC) on configs/smoke.yaml in a throwaway clone."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import subprocess
from pathlib import Path

import pandas as pd
import pytest

MODEL = "shapes/tiny/none/supervised/none/none/seed0"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def clone_repo(src: Path, dst: Path) -> Path:
    """Copy what git would clone (tracked + untracked-not-ignored files) and make it a git repo."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=src, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for rel in filter(None, files):
        if (src / rel).is_symlink():  # e.g. profiles -> workflow/profiles
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).symlink_to(os.readlink(src / rel))
        elif (src / rel).is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dst, check=True)
    subprocess.run([*git, "commit", "-qm", "test clone"], cwd=dst, check=True)
    return dst


def snakemake(repo: Path, *args: str, config: str = "configs/smoke.yaml", timeout: int = 600,
              check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["snakemake", *args, "--cores", "2", "--configfile", config]  # --configfile takes several values: last
    # the clone's own package first: a test that adds a module to the clone sees it in every job
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo / "src"), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def smoke_repo(tmp_path_factory, repo_root) -> Path:
    return clone_repo(repo_root, tmp_path_factory.mktemp("smoke") / "repo")


@pytest.fixture(scope="session")
def first_run(smoke_repo):
    """Run the smoke config from scratch (empty DVC remote: datasets are built and pushed)."""
    t0 = time.time()
    snakemake(smoke_repo, timeout=1500)
    metrics = pd.read_parquet(smoke_repo / "results/tables/metrics.parquet")
    weights = sha(smoke_repo / f"results/models/{MODEL}/model.safetensors")
    return {"metrics": metrics, "weights": weights, "seconds": time.time() - t0}
