"""Load a preprocessed `dt=YYYY-MM-DD` partition into numpy arrays, fast and without Spark.

The layout is the partition contract in docs/ARCHITECTURE.md. A partition without `_SUCCESS` does not exist.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from ncf import contracts, storage
from ncf.errors import UserError


@dataclasses.dataclass
class Partition:
    uri: str
    train_users: np.ndarray  # int32 [n_train]
    train_items: np.ndarray  # int32 [n_train]
    train_ts: np.ndarray  # int64 [n_train]
    test_users: np.ndarray  # int32 [n_test], sorted
    test_items: np.ndarray  # int32 [n_test]
    test_negatives: np.ndarray  # int32 [n_test, num_negatives]
    user_ids: np.ndarray  # object [num_users]: idx -> raw id
    item_ids: np.ndarray  # object [num_items]
    stats: dict[str, Any]

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)


def _read_table(root: Path, name: str, uri: str):
    import pyarrow.parquet as pq

    path = root / name
    if not path.exists():
        raise UserError(f"{uri}: partition has no '{name}/' table")
    try:
        return pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for unreadable files
        raise UserError(f"{uri}/{name}: unreadable Parquet ({exc})") from exc


def _column(table, name: str, uri: str, dtype) -> np.ndarray:
    if name not in table.column_names:
        raise UserError(f"{uri}: missing column '{name}' (has {table.column_names})")
    return table.column(name).to_numpy().astype(dtype, copy=False)


def _id_lookup(table, id_col: str, idx_col: str, uri: str) -> np.ndarray:
    idx = _column(table, idx_col, uri, np.int64)
    if id_col not in table.column_names:
        raise UserError(f"{uri}: missing column '{id_col}' (has {table.column_names})")
    ids = table.column(id_col).to_numpy(zero_copy_only=False).astype(object)
    if len(idx) and (idx.min() != 0 or idx.max() != len(idx) - 1 or len(np.unique(idx)) != len(idx)):
        raise UserError(f"{uri}: {idx_col} is not contiguous from 0")
    lookup = np.empty(len(idx), dtype=object)
    lookup[idx] = ids
    return lookup


def load_partition(uri: str | Path) -> Partition:
    uri = str(uri)
    storage.require_complete(uri, "partition", hint="re-run preprocessing")
    with storage.local_copy(uri) as root:
        stats = storage.read_json(root / contracts.PARTITION_STATS)
        expected = contracts.PARTITION_SCHEMA_VERSION
        if stats.get("schema_version") != expected:
            raise UserError(f"{uri}/{contracts.PARTITION_STATS}: schema_version {stats.get('schema_version')!r}, "
                            f"expected {expected}")
        train, test, negatives, user_map, item_map = (_read_table(root, name, uri) for name in contracts.PARTITION_TABLES)
        user_ids = _id_lookup(user_map, "user_id", "user_idx", uri)
        item_ids = _id_lookup(item_map, "item_id", "item_idx", uri)

    test_users = _column(test, "user_idx", uri, np.int32)
    order = np.argsort(test_users, kind="stable")
    neg_users = _column(negatives, "user_idx", uri, np.int32)
    neg_order = np.argsort(neg_users, kind="stable")
    if not np.array_equal(neg_users[neg_order], test_users[order]):
        raise UserError(f"{uri}: test_negatives users do not match test users")
    test_negatives = _negative_matrix(negatives, uri)[neg_order]

    partition = Partition(
        uri=uri,
        train_users=_column(train, "user_idx", uri, np.int32),
        train_items=_column(train, "item_idx", uri, np.int32),
        train_ts=_column(train, "ts", uri, np.int64),
        test_users=test_users[order],
        test_items=_column(test, "item_idx", uri, np.int32)[order],
        test_negatives=test_negatives,
        user_ids=user_ids,
        item_ids=item_ids,
        stats=stats,
    )
    _check_ranges(partition)
    return partition


def _negative_matrix(table, uri: str) -> np.ndarray:
    """The `neg_items` list column as an int32 [rows, n] matrix (vectorized: no Python loop over users)."""
    import pyarrow.compute as pc

    if "neg_items" not in table.column_names:
        raise UserError(f"{uri}: missing column 'neg_items' (has {table.column_names})")
    lists = table.column("neg_items").combine_chunks()
    if table.num_rows == 0:
        return np.zeros((0, 0), dtype=np.int32)
    if lists.null_count:
        raise UserError(f"{uri}/test_negatives: neg_items has null lists")
    lengths = pc.list_value_length(lists).to_numpy()
    if lengths.min() != lengths.max():
        raise UserError(f"{uri}/test_negatives: users have different numbers of negatives ({lengths.min()}..{lengths.max()})")
    return lists.flatten().to_numpy().astype(np.int32).reshape(len(lengths), int(lengths[0]))


def _check_ranges(p: Partition) -> None:
    for name, values, bound in (
        ("train.user_idx", p.train_users, p.num_users),
        ("train.item_idx", p.train_items, p.num_items),
        ("test.user_idx", p.test_users, p.num_users),
        ("test.item_idx", p.test_items, p.num_items),
        ("test_negatives.neg_items", p.test_negatives, p.num_items),
    ):
        if values.size and (values.min() < 0 or values.max() >= bound):
            raise UserError(f"{p.uri}: {name} out of range [0, {bound})")
    if p.train_users.size == 0:
        raise UserError(f"{p.uri}: empty train set")
