"""The benchmark scripts' own logic, at toy sizes on the CPU (the real runs are the lead's, not tests)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_smoke_on_cpu(tmp_path, capsys):
    from bench import gpu_train

    results = tmp_path / "RESULTS.md"
    assert gpu_train.main(["--device", "cpu", "--tiny", "--epochs", "1", "--results", str(results)]) == 0
    line, payload = capsys.readouterr().out.strip().splitlines()[-2:]
    assert "M samples/s" in line and "target 40M/s" in line
    result = json.loads(payload)
    assert result["samples"] > 0 and result["samples_per_s"] > 0
    assert result["losses"][-1] < result["losses"][0]  # it trains
    assert "GPU training throughput" in results.read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the script would run for real")
def test_gpu_check_script_refuses_without_a_gpu():
    script = REPO / "bench" / "gpu_check.sh"
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": str(REPO / ".venv" / "bin" / "python")})
    assert proc.returncode == 2
    assert "no Python with a CUDA-enabled torch" in proc.stderr
