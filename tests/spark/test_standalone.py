"""Spark on a real standalone cluster (master + 2 workers on 127.0.0.1): the same partition as local[*]."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ncf import contracts, storage
from ncf.data import load_partition
from spark.preprocess import PreprocessConfig, run
from spark.standalone import standalone_cluster

pytestmark = [pytest.mark.spark, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
RUN_DATE = "2026-04-01"


def _sorted_tables(partition) -> dict[str, np.ndarray]:
    """The partition's arrays with train in (user, item) order: Parquet row order is not part of the contract."""
    order = np.lexsort((partition.train_items, partition.train_users))
    arrays = {name: getattr(partition, name)[order] for name in ("train_users", "train_items", "train_ts")}
    for name in ("test_users", "test_items", "test_negatives", "user_ids", "item_ids"):
        arrays[name] = getattr(partition, name)
    return arrays


def test_ml100k_partition_on_a_standalone_cluster_is_identical_to_local(spark, ml100k_path, tmp_path):
    flags = ["--input-uri", str(ml100k_path), "--run-date", RUN_DATE, "--min-user-interactions", "0",
             "--min-item-interactions", "0"]
    with standalone_cluster(workers=2, cores_per_worker=1, work_dir=tmp_path / "cluster") as cluster:
        assert cluster.master_url.startswith("spark://127.0.0.1:") and cluster.alive_workers() == 2
        result = subprocess.run(
            [PYTHON, "-m", "ncfctl", "preprocess", *flags, "--storage-root", str(tmp_path / "on-cluster"),
             "--master", cluster.master_url, "--scratch-dir", str(cluster.shared_dir)],
            capture_output=True, text=True, timeout=900, cwd=REPO, env=cluster.driver_env(),
        )
        assert result.returncode == 0, result.stderr[-3000:]
        executors = cluster.executor_dirs()
        applications = cluster.state()["completedapps"] + cluster.state()["activeapps"]
        daemons = list(cluster.processes)
    assert daemons and all(p.poll() is not None for p in daemons)  # master and workers stopped with the block
    # two executors, one per worker, each in its own JVM, ran the job
    assert len(executors) == 2 and len({p.parent.parent.name for p in executors}) == 2, executors
    assert [app["name"] for app in applications] == ["ncf-preprocess"]
    assert not any(cluster.shared_dir.iterdir())  # the run's scratch (tables included) was cleaned up

    local = run(PreprocessConfig(input_uri=str(ml100k_path), storage_root=str(tmp_path / "local"), run_date=RUN_DATE,
                                 min_user_interactions=0, min_item_interactions=0))
    on_cluster = storage.read_json(contracts.partition_uri(tmp_path / "on-cluster", RUN_DATE) + "/stats.json")
    assert on_cluster["spark_master"] == cluster.master_url and local.stats["spark_master"].startswith("local")
    assert on_cluster["fingerprint"] == local.stats["fingerprint"]
    assert on_cluster["fingerprint_tables"] == local.stats["fingerprint_tables"]
    ours = _sorted_tables(load_partition(local.partition_uri))
    theirs = _sorted_tables(load_partition(contracts.partition_uri(tmp_path / "on-cluster", RUN_DATE)))
    for name, values in ours.items():
        assert np.array_equal(values, theirs[name]), name
