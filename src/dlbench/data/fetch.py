"""Obtain a dataset through DVC: pull it from the remote if the remote has it, else build and push.

This is what the Snakemake ``dataset`` rule runs. A stage whose code or parameters changed
since dvc.lock was written is rebuilt rather than pulled, so stale bytes are never used.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

DVC_LOCK_RETRIES = 30


def _dvc(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``dvc`` (retrying while another DVC process holds the repo lock)."""
    cmd = [sys.executable, "-m", "dvc", *args]
    # stage commands call `dlbench`: make this interpreter's scripts directory visible to them
    env = {**os.environ, "PATH": os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])}
    for attempt in range(DVC_LOCK_RETRIES):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        out = proc.stdout + proc.stderr
        if proc.returncode != 0 and "Unable to acquire lock" in out and attempt + 1 < DVC_LOCK_RETRIES:
            time.sleep(2)
            continue
        if check and proc.returncode != 0:
            raise RuntimeError(f"`dvc {' '.join(args)}` failed ({proc.returncode}):\n{out}")
        return proc
    raise AssertionError("unreachable")


def stage_inputs_changed(stage: str) -> bool:
    """True when the stage's code/params/command differ from dvc.lock (or it has no lock entry)."""
    proc = _dvc("status", stage, "--json")
    status = json.loads(proc.stdout or "{}")
    for change in status.get(stage, []):
        if isinstance(change, str):  # e.g. "changed command", "always changed"
            return True
        if "changed deps" in change:
            return True
    return False


def fetch(stage: str, log=print) -> str:
    """Make ``data/<stage>`` match dvc.lock; return "pulled" or "built"."""
    if not stage_inputs_changed(stage):
        pull = _dvc("pull", "--force", stage, check=False)
        if pull.returncode == 0:
            log(f"dataset {stage}: pulled from the DVC remote")
            return "pulled"
        log(f"dataset {stage}: not on the DVC remote yet; building")
    else:
        log(f"dataset {stage}: code or params changed since dvc.lock; building")
    _dvc("repro", "--single-item", "--force", stage)
    log(f"dataset {stage}: built")
    _dvc("push", stage)
    log(f"dataset {stage}: pushed to the DVC remote")
    return "built"
