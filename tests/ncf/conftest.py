"""Tiny in-memory partitions for the ncf unit tests."""

from __future__ import annotations

import numpy as np
import pytest

from ncf.data import Partition


def make_partition(num_users: int = 30, num_items: int = 60, per_user: int = 10, num_neg: int = 20,
                   seed: int = 0) -> Partition:
    """A random leave-one-out partition whose test item and negatives are never in the user's train items."""
    rng = np.random.default_rng(seed)
    train_u, train_i, test_i, negs = [], [], [], []
    for u in range(num_users):
        items = rng.choice(num_items, per_user + 1 + num_neg, replace=False)
        train_u += [u] * per_user
        train_i += items[:per_user].tolist()
        test_i.append(items[per_user])
        negs.append(items[per_user + 1:])
    n = len(train_u)
    return Partition(
        uri="memory://tiny",
        train_users=np.asarray(train_u, dtype=np.int32),
        train_items=np.asarray(train_i, dtype=np.int32),
        train_ts=rng.integers(0, 10_000, n).astype(np.int64),
        test_users=np.arange(num_users, dtype=np.int32),
        test_items=np.asarray(test_i, dtype=np.int32),
        test_negatives=np.asarray(negs, dtype=np.int32),
        user_ids=np.asarray([f"user-{u}" for u in range(num_users)], dtype=object),
        item_ids=np.asarray([f"item-{i}" for i in range(num_items)], dtype=object),
        stats={"schema_version": 1, "num_users": num_users, "num_items": num_items},
    )


@pytest.fixture
def tiny_partition() -> Partition:
    return make_partition()


def write_partition(partition: Partition, uri) -> str:
    """Write `partition` per the partition contract (Parquet tables, stats.json, `_SUCCESS` last)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ncf import storage

    with storage.staged_output(uri) as root:
        tables = {
            "train": {"user_idx": pa.array(partition.train_users, pa.int32()),
                      "item_idx": pa.array(partition.train_items, pa.int32()),
                      "ts": pa.array(partition.train_ts, pa.int64())},
            "test": {"user_idx": pa.array(partition.test_users, pa.int32()),
                     "item_idx": pa.array(partition.test_items, pa.int32())},
            "test_negatives": {"user_idx": pa.array(partition.test_users, pa.int32()),
                               "neg_items": pa.array(partition.test_negatives.tolist(), pa.list_(pa.int32()))},
            "user_map": {"user_id": pa.array(partition.user_ids.tolist(), pa.string()),
                         "user_idx": pa.array(np.arange(partition.num_users), pa.int32())},
            "item_map": {"item_id": pa.array(partition.item_ids.tolist(), pa.string()),
                         "item_idx": pa.array(np.arange(partition.num_items), pa.int32())},
        }
        for name, columns in tables.items():
            (root / name).mkdir()
            pq.write_table(pa.table(columns), root / name / "part-0.parquet")
        storage.write_json(root / "stats.json", {**partition.stats, "schema_version": 1, "run_date": "2026-01-01",
                                                  "num_train": int(partition.train_users.size)})
    return str(uri)


@pytest.fixture(scope="session")
def tiny_partition_uri(tmp_path_factory) -> str:
    return write_partition(make_partition(num_users=40, num_items=80, per_user=12),
                           tmp_path_factory.mktemp("data") / "dt=2026-01-01")
