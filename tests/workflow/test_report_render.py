"""The report's figures render in headless Chromium (skipped where no chromium is installed)."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.workflow


def test_report_figures_decode_in_chromium(smoke_repo, first_run, tmp_path):
    if not (shutil.which("chromium") or shutil.which("chromium-browser")):
        if os.environ.get("DLBENCH_REQUIRE_CHROMIUM"):  # CI installs it: a missing browser is a failure there
            pytest.fail("chromium is required (DLBENCH_REQUIRE_CHROMIUM is set) but not installed")
        pytest.skip("no chromium installed (apt-get install -y chromium)")
    shot = tmp_path / "report.png"
    proc = subprocess.run(["bash", "scripts/check-report-render.sh", "results/report.html", str(shot)],
                          cwd=smoke_repo, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    widths = proc.stdout.split("widths in px:")[1].splitlines()[0].strip().split(",")
    assert len(widths) == 9 and all(int(w) > 100 for w in widths)
    assert shot.stat().st_size > 10_000
