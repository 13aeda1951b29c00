import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
os.environ["PATH"] = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"  # `dlbench`, `snakemake`, `dvc`


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT
