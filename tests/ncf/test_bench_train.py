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


@pytest.mark.parametrize("variant", ["public", "lean"])
def test_naive_reference_loops_sample_exact_negatives_and_train(variant):
    from bench import train as bench_train
    from tests.tiny_data import make_partition

    partition = make_partition(num_users=20, num_items=40, per_user=8)
    dataset_type, _ = bench_train.NAIVE_LOOPS[variant]
    pairs = list(zip(partition.train_users.tolist(), partition.train_items.tolist(), strict=True))
    dataset = dataset_type(pairs, partition.num_users, partition.num_items, num_neg=4)
    dataset.ng_sample()
    assert len(dataset) == 5 * len(pairs)
    negatives = [dataset[k][:2] for k in range(len(dataset)) if dataset[k][2] == 0]
    assert len(negatives) == 4 * len(pairs) and not set(negatives) & set(pairs)

    result = bench_train.naive_samples_per_second(partition, max_batches=2, variant=variant)
    assert result["samples"] == 2 * 256 and result["samples_per_s"] > 0 and result["samples_per_cpu_s"] > 0


def test_gpu_families_smoke_on_cpu(tmp_path, capsys):
    from bench import gpu_families

    results = tmp_path / "RESULTS.md"
    assert gpu_families.main(["--device", "cpu", "--tiny", "--results", str(results)]) == 0
    table = results.read_text()
    for family in gpu_families.SETTINGS:
        assert f"| {family} |" in table
    assert "| NO |" not in table and table.count("| yes |") == len(gpu_families.SETTINGS)


def test_evaluation_benchmark_smoke(tmp_path, capsys):
    from bench import evaluation

    results = tmp_path / "RESULTS.md"
    assert evaluation.main(["--users", "300", "--items", "400", "--members", "2", "--full-eval-users", "50",
                            "--cores", "1", "--results", str(results)]) == 0
    table = results.read_text()
    assert "full ranking over 50)" in table and "score challenger and champion" in table
    assert "train-step evaluation + gate" in capsys.readouterr().out
