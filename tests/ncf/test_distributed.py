"""DistributedDataParallel under torchrun: 2 CPU processes on the gloo backend."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ncf.package import load_package

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_gloo_processes_train_and_export(tiny_partition_uri, tmp_path):
    out = tmp_path / "models" / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "ncf.train", "--partition-uri", tiny_partition_uri, "--output-uri", str(out), "--epochs", "2",
           "--batch-size", "64", "--factor-num", "8", "--num-layers", "2", "--device", "cpu", "--progress", "off", "--candidates", ""]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("HR=")]
    pkg = load_package(out)
    # Rank 0 only: the last ensemble member's refit epochs, then the exported ensemble's line.
    assert len(lines) == pkg.metrics["epochs"] + 1
    assert all(re.fullmatch(r"HR=0\.\d{4}; NDCG=0\.\d{4}; Loss=\d+\.\d{4};", line) for line in lines)
    assert pkg.metrics["epochs"] <= 2 and 0 <= pkg.metrics["hr@10"] <= 1
    assert pkg.config["members"] == 3
