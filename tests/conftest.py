import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))
sys.path.insert(0, str(Path(__file__).parent))  # tests/helpers.py, tests/browser.py

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def executed(tmp_path_factory):
    """The GPU-box batch command with two fake devices: trains every smoke run two at a time, executes
    every chapter with papermill and builds the site (what `make paper GPUS=0,1` does at the paper
    preset)."""
    tmp = tmp_path_factory.mktemp("book")
    r = subprocess.run([sys.executable, "-m", "sslnb.schedule", "--preset", "smoke", "--gpus", "0,1", "--device",
                        "cpu", "--run-root", str(tmp / "runs"), "--stage-dir", str(tmp / "stage"),
                        "--out-dir", str(tmp), "--quiet"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    outs = sorted((tmp / "stage" / "book").glob("[0-9][0-9]_*.ipynb"))
    return tmp, outs, r.stdout
