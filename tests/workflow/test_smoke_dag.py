"""The smoke DAG end to end through the real snakemake + DVC: contracts, determinism, DVC pull,
kills + resume, lineage, load_model over every model, and what a config change reruns."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from .conftest import MODEL, clone_repo, sha, snakemake

pytestmark = pytest.mark.workflow

METRIC_COLUMNS = ["model_id", "dataset", "backbone", "pretrain", "adapt", "ensemble", "compress", "seed", "kind",
                  "family", "stage", "parents", "pretrain_kind", "pretrain_family", "alpha", "epochs", "fraction",
                  "head_temperature", "k", "lr", "shots", "temperature", "weight_decay", "split", "shift", "corruption", "severity", "acc", "ece", "nll", "brier", "n",
                  "num_classes", "params", "trainable_params", "nonzero_params", "size_bytes", "latency_ms",
                  "latency_device", "train_seconds"]
METRIC_VALUES = ["model_id", "split", "acc", "ece", "nll", "brier"]
LPFT = "shapes/tiny/simclr/lpft/none/none/seed0"
FINETUNE = "shapes/tiny/simclr/finetune-lr0.001/none/none/seed0"


def assert_same_logits(first_run: dict, repo: Path, model_id: str) -> None:
    """Re-evaluate ``model_id``'s group (only that job) and compare every split's metrics with the first run's."""
    from dlbench.evaluate.metrics import all_metrics
    from dlbench.evaluate.outputs import read_logits

    snakemake(repo, f"results/predictions/{model_id.rsplit('/', 1)[0]}")
    first = first_run["metrics"].set_index(["model_id", "split"])
    got = read_logits(repo / f"results/predictions/{model_id}/logits.parquet")
    assert sorted(got) == sorted(first.loc[model_id].index)
    for split, (logits, labels, _) in got.items():
        again = all_metrics(logits, labels)
        assert all(again[k] == first.loc[(model_id, split), k] for k in ("acc", "ece", "nll", "brier")), split


def test_outputs_follow_the_contracts(smoke_repo, first_run):
    m = first_run["metrics"]
    assert list(m.columns) == METRIC_COLUMNS
    assert m.loc[m["kind"] == "supervised", "model_id"].nunique() == 3  # shapes x 2 seeds, digits x 1
    # + 5 pretrained backbones (1 seed) x 5 adapt variants, + simclr's linear_10pct, + CLIP: the 5 variants,
    # zero-shot, fine-tuning from it, WiSE-FT at 3 alphas
    assert m["model_id"].nunique() == 3 + 5 * 5 + 1 + 5 + 5
    shapes = m[m["model_id"] == MODEL]
    assert set(shapes["split"]) == {"test", "style", "test.gaussian_noise-1", "test.gaussian_noise-5",
                                    "test.contrast-1", "test.contrast-5"}
    assert set(shapes["shift"]) == {"id", "style", "corruption"}
    assert shapes.loc[shapes["split"] == "test.contrast-5", "severity"].item() == 5
    assert shapes.loc[shapes["split"] == "test", "severity"].isna().all()
    assert m["acc"].between(0, 1).all() and (m["n"] > 0).all() and (m["latency_ms"] > 0).all()
    assert set(m["latency_device"]) == {"cpu"}
    # lineage columns
    lp = m[m["model_id"] == LPFT].iloc[0]
    assert (lp["kind"], lp["family"], lp["stage"]) == ("lpft", "finetune", "adapt")
    assert list(lp["parents"]) == ["shapes/tiny/simclr/linear/none/none/seed0"]
    assert (lp["pretrain_kind"], lp["pretrain_family"]) == ("simclr", "contrastive")
    sup = m[m["kind"] == "supervised"]
    assert sup["pretrain_kind"].isna().all() and (sup["parents"].map(len) == 0).all()
    assert m.loc[m["kind"] == "knn", "trainable_params"].eq(0).all()
    knn_params = m.loc[m["kind"] == "knn", "params"].iloc[0]
    assert knn_params > m.loc[m["kind"] == "linear", "params"].iloc[0]  # the kNN bank is part of the model
    report = (smoke_repo / "results/report.html").read_text()
    assert report.count("data:image/png;base64,") == 9 and "Supervised baseline" in report
    for log in ("shapes", "digits"):
        assert "built" in (smoke_repo / f"results/logs/dataset/{log}.log").read_text()
    card = json.loads((smoke_repo / f"results/models/{MODEL}/model.json").read_text())
    lock = yaml.safe_load((smoke_repo / "dvc.lock").read_text())
    assert card["data_hash"] == lock["stages"]["shapes"]["outs"][0]["md5"]


def test_a_sweep_gives_distinct_models_with_a_knob_column(first_run):
    """Acceptance 1: two fine-tune variants differing only in lr: distinct ids and rows, lr as a knob."""
    m = first_run["metrics"]
    ft = m[m["kind"] == "finetune"].drop_duplicates("model_id")
    # the CLIP run's fine-tune from the zero-shot head is a second named variant of the same kind
    assert set(ft["adapt"]) == {"finetune-lr0.001", "finetune-lr0.002", "finetune_zs"}
    assert ft.loc[ft["adapt"] == "finetune_zs", "parents"].map(lambda p: p[0].split("/")[3]).tolist() == ["zeroshot"]
    ft = ft[ft["adapt"] != "finetune_zs"]
    assert ft.groupby("adapt")["lr"].unique().map(list).to_dict() == {"finetune-lr0.001": [0.001],
                                                                      "finetune-lr0.002": [0.002]}
    assert str(m["lr"].dtype) == "Float64" and str(m["k"].dtype) == "Int64"
    assert m.loc[m["kind"] == "linear", "lr"].isna().all()


def test_snakemake_report_has_figures_with_captions(smoke_repo, first_run):
    snakemake(smoke_repo, "--report", "smk-report.html")
    text = (smoke_repo / "smk-report.html").read_text()
    for figure in ("id_vs_ood.png", "corruption_severity.png", "training_curves.png", "ssl_tsne.png"):
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
    assert elapsed < 20, elapsed


def test_load_model_rebuilds_every_model_from_its_directory(smoke_repo, first_run):
    """Acceptance 5: every evaluated model reloads from its directory alone and gives its cached logits
    exactly; every pretrained backbone reloads with the feature width its card records."""
    from dlbench.data.loader import load_tensors
    from dlbench.evaluate.outputs import read_logits
    from dlbench.models.checkpoint import load_backbone, load_model
    from dlbench.models.inference import predict_logits

    torch.set_num_threads(1)
    results = smoke_repo / "results"
    cards = sorted(results.glob("models/**/model.json"))
    evaluated = set(first_run["metrics"]["model_id"])
    images = {d: load_tensors(smoke_repo / "data", d, "test")[0] for d in ("shapes", "digits")}
    seen = 0
    for card_path in cards:
        model_dir = card_path.parent
        model_id = str(model_dir.relative_to(results / "models"))
        card = json.loads(card_path.read_text())
        if card["model"]["head"] is None:
            backbone, _ = load_backbone(model_dir)
            assert backbone.num_features == card["model"]["feature_dim"]
            continue
        assert model_id in evaluated
        model, _ = load_model(model_dir)
        model = model.to(memory_format=torch.channels_last)  # as the evaluate path runs it
        cached, _, _ = read_logits(results / "predictions" / model_id / "logits.parquet")["test"]
        got = predict_logits(model, images[card["parts"]["dataset"]]).numpy()
        assert np.array_equal(got, cached), model_id
        seen += 1
    assert seen == len(evaluated) == 39


# pretrain, frozen adapt, trained adapt (from the frozen one) and evaluation; supervised training ends
# identical across processes in the SIGKILL/resume test
RERUN_GROUPS = ["shapes/tiny/simclr/linear/none/none", "shapes/tiny/simclr/lpft/none/none"]
RERUN_MODELS = ["shapes/tiny/simclr/none/none/none/seed0", "shapes/tiny/simclr/linear/none/none/seed0",
                "shapes/tiny/simclr/knn/none/none/seed0", LPFT]


def test_fresh_clone_pulls_the_data_and_rerun_from_scratch_is_identical(smoke_repo, first_run):
    """A second clone next to the first (same DVC remote, no data, no cache, no results) pulls the datasets
    instead of building them, and retrains an SSL chain (pretrain, probes, LP-FT) to the same bytes and logits."""
    from dlbench.evaluate.outputs import read_logits

    repo = clone_repo(smoke_repo, smoke_repo.parent / "rerun")
    (repo / ".dvc-remote").symlink_to(smoke_repo / ".dvc-remote")  # the remote url is relative to .dvc/
    snakemake(repo, "datasets")
    for name in ("shapes", "digits"):
        log = (repo / f"results/logs/dataset/{name}.log").read_text()
        assert "pulled from the DVC remote" in log and "built" not in log, log
    snakemake(repo, *(f"results/predictions/{g}" for g in RERUN_GROUPS))
    for model_id in RERUN_MODELS:
        weights = f"results/models/{model_id}/model.safetensors"
        assert sha(repo / weights) == sha(smoke_repo / weights), model_id
    for group in RERUN_GROUPS + ["shapes/tiny/simclr/knn/none/none"]:
        for seed_dir in sorted((smoke_repo / "results/predictions" / group).glob("seed*")):
            first = read_logits(seed_dir / "logits.parquet")
            again = read_logits(repo / "results/predictions" / group / seed_dir.name / "logits.parquet")
            assert first.keys() == again.keys(), seed_dir
            for split in first:
                assert np.array_equal(first[split][0], again[split][0]), (seed_dir, split)


def job_pids(repo: Path, pattern: str) -> list[int]:
    """PIDs of processes running in ``repo`` whose command line contains ``pattern``."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if pattern in cmdline and "snakemake" not in cmdline and Path(os.readlink(entry / "cwd")) == repo:
                pids.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return pids


def kill_after_first_checkpoint(repo: Path, target: str, ckpt: Path, pattern: str) -> None:
    """Run snakemake for ``target``, SIGKILL the training process once its first checkpoint exists."""
    proc = subprocess.Popen(["snakemake", target, "--cores", "1", "--configfile", "configs/smoke.yaml"], cwd=repo,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(repo / "src")})
    deadline = time.time() + 180
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert ckpt.exists(), "training never wrote a checkpoint"
    pids = job_pids(repo, pattern)
    assert pids, "training process not found"
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    assert proc.wait(timeout=60) != 0  # snakemake saw the job die


def test_sigkill_midway_then_resume_gives_identical_model(smoke_repo, first_run):
    """SIGKILL supervised training after its first checkpoint; the rerun resumes and ends identical."""
    repo = smoke_repo
    target = f"results/models/{MODEL}/model.safetensors"
    ckpt = repo / f"results/checkpoints/{MODEL}.pt"
    (repo / target).unlink()
    kill_after_first_checkpoint(repo, target, ckpt, "train supervised")
    assert not (repo / target).exists() and ckpt.exists()
    snakemake(repo, target)
    assert "resuming from checkpoint" in (repo / "results/logs/supervised/shapes/tiny/seed0.log").read_text()
    assert sha(repo / target) == first_run["weights"]
    assert not ckpt.exists()  # removed once the final model is written
    assert_same_logits(first_run, repo, MODEL)  # evaluation of the resumed model gives the same logits


def test_sigkill_of_lpft_keeps_the_finetune_and_resumes_bit_identical(smoke_repo, first_run):
    """Acceptance 3: a killed LP-FT job never touches the finished fine-tune; its rerun resumes and
    ends bit-identical to the uninterrupted run."""
    repo = smoke_repo
    lpft, ft = (repo / f"results/models/{m}/model.safetensors" for m in (LPFT, FINETUNE))
    before = {"lpft": sha(lpft), "ft": sha(ft), "ft_mtime": ft.stat().st_mtime_ns}
    lpft.unlink()
    ckpt = repo / "results/checkpoints/shapes/tiny/simclr/none/none/none/seed0/lpft.pt"
    kill_after_first_checkpoint(repo, f"results/models/{LPFT}/model.safetensors", ckpt, "train adapt")
    assert not lpft.exists() and ckpt.exists()
    assert sha(ft) == before["ft"] and ft.stat().st_mtime_ns == before["ft_mtime"]
    snakemake(repo, f"results/models/{LPFT}/model.safetensors")
    assert "resuming from checkpoint" in (repo / f"results/logs/adapt/{LPFT}.log").read_text()
    assert sha(lpft) == before["lpft"] and not ckpt.exists()
    assert sha(ft) == before["ft"] and ft.stat().st_mtime_ns == before["ft_mtime"]
    assert_same_logits(first_run, repo, LPFT)


def planned_jobs(repo: Path, config: str) -> dict[str, list[str]]:
    """rule -> the outputs of each job ``snakemake -n`` plans (first output per job)."""
    out = snakemake(repo, "--dry-run", config=config).stdout
    jobs: dict[str, list[str]] = {}
    rule = None
    for line in out.splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):", line):
            rule = m.group(1)
        elif rule and line.strip().startswith("output:"):
            jobs.setdefault(rule, []).append(line.split("output:")[1].split(",")[0].strip())
            rule = None
        elif rule and line.strip().startswith("jobid:") and rule == "all":
            jobs.setdefault(rule, [])
    return jobs


REPORT_RULES = {"aggregate", "figures", "findings", "report_html", "all"}


def test_changing_one_variant_reruns_only_its_jobs(smoke_repo, first_run, tmp_path):
    """Acceptance 1: after changing one variant's lr, `snakemake -n` plans only that variant's training
    and evaluation jobs (and the report jobs that read every model)."""
    cfg = yaml.safe_load((smoke_repo / "configs/smoke.yaml").read_text())
    cfg["adapt"]["variants"]["lpft"]["train"]["lr"] = 0.0007
    (smoke_repo / "configs/changed.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    jobs = planned_jobs(smoke_repo, "configs/changed.yaml")
    assert set(jobs) - REPORT_RULES == {"adapt", "evaluate"}, jobs
    assert all("/lpft/" in o for o in jobs["adapt"] + jobs["evaluate"]) and len(jobs["adapt"]) == 6
    assert len(jobs["evaluate"]) == 6  # one group (all seeds) per pretrained backbone (5 SSL, CLIP)
    # a sweep point changed: the new point's jobs only, the other point is untouched
    cfg = yaml.safe_load((smoke_repo / "configs/smoke.yaml").read_text())
    cfg["adapt"]["variants"]["finetune"]["sweep"]["lr"] = [0.001, 0.003]
    (smoke_repo / "configs/changed.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    jobs = planned_jobs(smoke_repo, "configs/changed.yaml")
    assert set(jobs) - REPORT_RULES == {"adapt", "evaluate"}, jobs
    assert all("finetune-lr0.003" in o for o in jobs["adapt"] + jobs["evaluate"]) and len(jobs["adapt"]) == 6


REPORT_OUTPUTS = ("tables", "figures", "report.html")


def copy_any(src: Path, dst: Path) -> None:
    (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)


def test_removing_a_method_removes_its_rows(smoke_repo, first_run, tmp_path):
    """Acceptance 2: the tables and the report hold exactly the models of the current config."""
    cfg = yaml.safe_load((smoke_repo / "configs/smoke.yaml").read_text())
    cfg["pretrain"]["runs"][0]["variants"].remove("byol")
    (smoke_repo / "configs/no_byol.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    results, saved = smoke_repo / "results", tmp_path / "saved"
    saved.mkdir()
    for name in REPORT_OUTPUTS:  # the smoke run's report files, put back afterwards for the tests that read them
        copy_any(results / name, saved / name)
    try:
        snakemake(smoke_repo, config="configs/no_byol.yaml")
        m = pd.read_parquet(results / "tables/metrics.parquet")
        assert "byol" not in set(m["pretrain"]) and m["model_id"].nunique() == 39 - 5
        history = pd.read_parquet(results / "tables/history.parquet")
        assert "byol" not in set(history["pretrain"])
        report = (results / "report.html").read_text()
        assert "byol" not in report.split("<h3>Config</h3>")[0]
        assert (results / "models/shapes/tiny/byol/none/none/none/seed0/model.json").exists()  # not a glob's doing
    finally:
        for name in REPORT_OUTPUTS:
            if (results / name).is_dir():
                shutil.rmtree(results / name)
            copy_any(saved / name, results / name)
    assert "byol" in set(pd.read_parquet(results / "tables/metrics.parquet")["pretrain"])


def test_results_are_namespaced_per_config(smoke_repo, first_run):
    """A second config in the same clone writes its own results directory."""
    cfg = yaml.safe_load((smoke_repo / "configs/stl10.yaml").read_text())
    assert cfg["results_dir"] != "results"
    out = snakemake(smoke_repo, "--dry-run", config="configs/stl10.yaml").stdout
    assert f"{cfg['results_dir']}/report.html" in out and " results/report.html" not in out


@pytest.mark.parametrize("name", ["configs/clip_cifar10.yaml", "configs/clip_domainnet.yaml"])
def test_real_clip_configs_dry_run(smoke_repo, name):
    """Seminar 1 and homework 1 on real weights and data: the DAG plans (datasets are DVC stages, the
    weights a local file that config checking needs in place)."""
    cfg = yaml.safe_load((smoke_repo / name).read_text())
    (weights,) = {b["weights"] for b in cfg["backbones"].values()}
    path = smoke_repo / weights
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    try:
        out = snakemake(smoke_repo, "--dry-run", config=name).stdout
    finally:
        path.unlink()
    assert f"{cfg['results_dir']}/report.html" in out
    for rule in ("pretrain", "adapt", "evaluate", "findings"):
        assert f"rule {rule}" in out or f"localrule {rule}" in out, rule
    assert "wiseft-alpha0.5" in out and "zeroshot" in out
