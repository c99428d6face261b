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
