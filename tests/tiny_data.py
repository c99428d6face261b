"""Tiny leave-one-out partitions for unit tests, in memory and written in the partition contract's layout."""

from __future__ import annotations

import numpy as np

from ncf.data import Partition


def make_partition(num_users: int = 40, num_items: int = 80, per_user: int = 8, num_neg: int = 20, seed: int = 0,
                   uri: str = "memory://tiny", run_date: str = "2026-11-27") -> Partition:
    """A random partition whose test item and negatives are never among the user's training items.

    Raw ids are `u<idx>` / `i<idx>`.
    """
    rng = np.random.default_rng(seed)
    train_u, train_i, test_i, negs = [], [], [], []
    for u in range(num_users):
        items = rng.choice(num_items, per_user + 1 + num_neg, replace=False)
        train_u += [u] * per_user
        train_i += items[:per_user].tolist()
        test_i.append(items[per_user])
        negs.append(items[per_user + 1:])
    return Partition(
        uri=uri,
        train_users=np.asarray(train_u, dtype=np.int32),
        train_items=np.asarray(train_i, dtype=np.int32),
        train_ts=rng.integers(0, 10_000, len(train_u)).astype(np.int64),
        test_users=np.arange(num_users, dtype=np.int32),
        test_items=np.asarray(test_i, dtype=np.int32),
        test_negatives=np.asarray(negs, dtype=np.int32),
        user_ids=np.asarray([f"u{u}" for u in range(num_users)], dtype=object),
        item_ids=np.asarray([f"i{i}" for i in range(num_items)], dtype=object),
        stats={"schema_version": 1, "num_users": num_users, "num_items": num_items, "run_date": run_date},
    )


def write_partition(partition: Partition, uri) -> str:
    """Publish `partition` at `uri` per the partition contract (Parquet tables, stats.json, `_SUCCESS` last)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ncf import storage

    p = partition
    tables = {
        "train": {"user_idx": pa.array(p.train_users, pa.int32()), "item_idx": pa.array(p.train_items, pa.int32()),
                  "ts": pa.array(p.train_ts, pa.int64())},
        "test": {"user_idx": pa.array(p.test_users, pa.int32()), "item_idx": pa.array(p.test_items, pa.int32())},
        "test_negatives": {"user_idx": pa.array(p.test_users, pa.int32()),
                           "neg_items": pa.array(p.test_negatives.tolist(), pa.list_(pa.int32()))},
        "user_map": {"user_id": pa.array(p.user_ids.tolist(), pa.string()),
                     "user_idx": pa.array(np.arange(p.num_users), pa.int32())},
        "item_map": {"item_id": pa.array(p.item_ids.tolist(), pa.string()),
                     "item_idx": pa.array(np.arange(p.num_items), pa.int32())},
    }
    with storage.staged_output(uri) as root:
        for name, columns in tables.items():
            (root / name).mkdir()
            pq.write_table(pa.table(columns), root / name / "part-0.parquet")
        storage.write_json(root / "stats.json", {**p.stats, "schema_version": 1, "num_train": int(p.train_users.size)})
    return str(uri)
