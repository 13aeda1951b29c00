"""The smoke DAG end to end through the real snakemake + DVC (acceptance 2, 3, 4, 5, 6)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import MODEL, sha, snakemake

pytestmark = pytest.mark.workflow

METRIC_COLUMNS = ["model_id", "dataset", "backbone", "pretrain", "adapt", "ensemble", "compress", "seed", "split",
                  "shift", "severity", "acc", "ece", "nll", "brier", "n", "params", "nonzero_params", "size_bytes",
                  "latency_ms", "train_seconds"]

METRIC_VALUES = ["model_id", "split", "acc", "ece", "nll", "brier"]


def assert_same_metrics(first_run: dict, repo: Path) -> None:
    """The metric values in ``repo``'s metrics.parquet equal those of the first smoke run, exactly."""
    again = pd.read_parquet(repo / "results/tables/metrics.parquet")
    pd.testing.assert_frame_equal(first_run["metrics"][METRIC_VALUES], again[METRIC_VALUES])


def test_outputs_follow_the_contracts(smoke_repo, first_run):
    m = first_run["metrics"]
    for col in METRIC_COLUMNS:
        assert col in m.columns, col
    assert m.loc[m["adapt"] == "supervised", "model_id"].nunique() == 4  # 2 datasets x 2 seeds
    assert m["model_id"].nunique() == 4 + 17 * 4  # + 17 pretrained backbones (1 seed) x 4 protocols
    shapes = m[m["model_id"] == MODEL]
    assert set(shapes["split"]) == {"test", "style", "test.gaussian_noise-1", "test.gaussian_noise-5",
                                    "test.contrast-1", "test.contrast-5"}
    assert set(shapes["shift"]) == {"id", "style", "corruption"}
    assert shapes.loc[shapes["split"] == "test.contrast-5", "severity"].item() == 5
    assert shapes.loc[shapes["split"] == "test", "severity"].isna().all()
    assert (m[m["adapt"] == "supervised"]["pretrain"] == "none").all()
    assert m["acc"].between(0, 1).all() and (m["n"] > 0).all() and (m["latency_ms"] > 0).all()
    report = (smoke_repo / "results/report.html").read_text()
    assert report.count("data:image/png;base64,") == 6 and "Supervised baseline" in report
    for log in ("shapes", "digits"):
        assert "built" in (smoke_repo / f"results/logs/dataset/{log}.log").read_text()
    meta = yaml.safe_load((smoke_repo / f"results/models/{MODEL}/model.json").read_text())
    lock = yaml.safe_load((smoke_repo / "dvc.lock").read_text())
    assert meta["provenance"]["data_hash"] == lock["stages"]["shapes"]["outs"][0]["md5"]


def test_snakemake_report_has_figures_with_captions(smoke_repo, first_run):
    snakemake(smoke_repo, "--report", "smk-report.html")
    text = (smoke_repo / "smk-report.html").read_text()
    for figure in ("id_vs_ood.png", "corruption_severity.png", "training_curves.png"):
        assert figure in text
    assert "Accuracy against corruption severity" in text


def test_dataset_bytes_match_committed_dvc_lock(smoke_repo, first_run, repo_root):
    committed = yaml.safe_load((repo_root / "dvc.lock").read_text())["stages"]
    rebuilt = yaml.safe_load((smoke_repo / "dvc.lock").read_text())["stages"]
    for name in ("shapes", "digits"):
        assert rebuilt[name]["outs"][0]["md5"] == committed[name]["outs"][0]["md5"], name


def test_second_run_does_nothing_quickly(smoke_repo, first_run):
    t0 = time.time()
    proc = snakemake(smoke_repo)
    elapsed = time.time() - t0
    assert "Nothing to be done" in proc.stdout + proc.stderr
    assert elapsed < 15, elapsed


def test_deleted_data_is_pulled_and_rerun_from_scratch_is_identical(smoke_repo, first_run):
    shutil.rmtree(smoke_repo / "data")
    shutil.rmtree(smoke_repo / ".dvc/cache")
    snakemake(smoke_repo, "datasets")
    for name in ("shapes", "digits"):
        log = (smoke_repo / f"results/logs/dataset/{name}.log").read_text()
        assert "pulled from the DVC remote" in log and "built" not in log, log
    shutil.rmtree(smoke_repo / "data")
    shutil.rmtree(smoke_repo / ".dvc/cache")
    shutil.rmtree(smoke_repo / "results")
    shutil.rmtree(smoke_repo / ".snakemake")
    snakemake(smoke_repo)
    for name in ("shapes", "digits"):
        log = (smoke_repo / f"results/logs/dataset/{name}.log").read_text()
        assert "pulled from the DVC remote" in log and "built" not in log, log
    assert_same_metrics(first_run, smoke_repo)
    assert sha(smoke_repo / f"results/models/{MODEL}/model.safetensors") == first_run["weights"]


def training_pids(repo: Path) -> list[int]:
    """PIDs of `dlbench train supervised` processes running in ``repo``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if "train supervised" in cmdline and Path(os.readlink(entry / "cwd")) == repo:
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return pids


def test_sigkill_midway_then_resume_gives_identical_model(smoke_repo, first_run):
    """SIGKILL the training process after its first checkpoint; the rerun resumes and ends identical."""
    repo = smoke_repo
    target = f"results/models/{MODEL}/model.safetensors"
    ckpt = repo / f"results/checkpoints/{MODEL}.pt"
    (repo / target).unlink()
    cmd = ["snakemake", target, "--cores", "1", "--configfile", "configs/smoke.yaml"]
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert ckpt.exists(), "training never wrote a checkpoint"
    pids = training_pids(repo)
    assert pids, "training process not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=60) != 0  # snakemake saw the job die
    assert not (repo / target).exists() and ckpt.exists()
    snakemake(repo, target)
    log = (repo / "results/logs/supervised/shapes/tiny/seed0.log").read_text()
    assert "resuming from checkpoint" in log
    assert sha(repo / target) == first_run["weights"]
    assert not ckpt.exists()  # removed once the final model is written
    snakemake(repo)  # evaluation of the resumed model gives the same metrics
    assert_same_metrics(first_run, repo)
