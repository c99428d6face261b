"""ncf.data.load_partition: the partition contract read back without Spark (local and S3)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ncf import storage
from ncf.data import load_partition
from ncf.errors import UserError


def _write(root: Path, *, negatives=None, user_idx=(0, 1, 2), stats=None, success=True) -> Path:
    part = root / "data" / "dt=2026-01-01"
    tables = {
        "train": {"user_idx": pa.array([2, 0, 1, 0], pa.int32()), "item_idx": pa.array([0, 1, 2, 3], pa.int32()),
                  "ts": pa.array([5, 6, 7, 8], pa.int64())},
        "test": {"user_idx": pa.array([2, 0, 1], pa.int32()), "item_idx": pa.array([4, 4, 3], pa.int32())},
        "test_negatives": {"user_idx": pa.array([1, 2, 0], pa.int32()),
                           "neg_items": pa.array(negatives or [[0, 4], [1, 2], [0, 2]], pa.list_(pa.int32()))},
        "user_map": {"user_id": pa.array(["c", "a", "b"]), "user_idx": pa.array(user_idx, pa.int32())},
        "item_map": {"item_id": pa.array([f"i{k}" for k in range(5)]), "item_idx": pa.array(range(5), pa.int32())},
    }
    for name, columns in tables.items():
        (part / name).mkdir(parents=True)
        pq.write_table(pa.table(columns), part / name / "part-0.parquet")
    (part / "stats.json").write_text(json.dumps(stats or {"schema_version": 1, "num_test_negatives": 2}))
    if success:
        (part / "_SUCCESS").touch()
    return part


def test_loads_arrays_sorted_by_user(tmp_path):
    p = load_partition(_write(tmp_path))
    assert (p.num_users, p.num_items) == (3, 5)
    assert p.train_users.dtype == np.int32 and p.train_ts.dtype == np.int64
    assert p.test_users.tolist() == [0, 1, 2] and p.test_items.tolist() == [4, 3, 4]
    assert p.test_negatives.dtype == np.int32 and p.test_negatives.tolist() == [[0, 2], [0, 4], [1, 2]]
    assert p.user_ids.tolist() == ["c", "a", "b"] and p.item_ids[3] == "i3"
    assert p.stats["schema_version"] == 1


def test_partition_without_success_does_not_exist(tmp_path):
    with pytest.raises(UserError, match="incomplete .no _SUCCESS marker"):
        load_partition(_write(tmp_path, success=False))
    with pytest.raises(UserError, match="no such partition"):
        load_partition(tmp_path / "missing")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stats": {"schema_version": 2}}, "schema_version 2, expected 1"),
        ({"user_idx": (0, 1, 3)}, "user_idx is not contiguous from 0"),
        ({"negatives": [[0, 4], [1, 2], [0]]}, "different numbers of negatives"),
        ({"negatives": [[0, 9], [1, 2], [0, 2]]}, r"test_negatives.neg_items out of range \[0, 5\)"),
    ],
)
def test_broken_partitions_are_named(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        load_partition(_write(tmp_path, **kwargs))


def test_loads_from_s3(s3_bucket, tmp_path):
    local = _write(tmp_path)
    uri = f"s3://{s3_bucket}/root/data/dt=2026-01-01"
    storage.publish_dir(local, uri)
    p = load_partition(uri)
    assert p.uri == uri and p.test_negatives.tolist() == [[0, 2], [0, 4], [1, 2]]
