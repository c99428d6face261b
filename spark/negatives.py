"""Test negatives: for every test user, `num_negatives` distinct items the user never interacted with.

Scalable and deterministic: Spark groups each test user's history into one sorted array (one shuffle of
(user, item) pairs, no collect); Python workers then sample with numpy, vectorized over thousands of users per
Arrow batch. A user's negatives are a pure function of (seed, user, history):

1. draw hash-seeded random candidates (seed, user, round, j) mod num_items,
2. drop duplicates and items in the history,
3. keep the `num_negatives` candidates with the smallest hash(seed, user, item) -- a uniform sample of the
   items the user has not seen,
4. users left short (heavy users, small catalogues) re-draw with twice as many candidates; once the draw would
   cover half the catalogue, the whole catalogue is the candidate set, so every user ends up with exactly
   `num_negatives` (the split only makes users with enough unseen items test users).
"""

from __future__ import annotations

import numpy as np

from spark.hashing import hash_ints

# Candidate rows x columns handled at once: bounds the worker's memory whatever the catalogue size.
_MAX_CELLS = 4_000_000


def _first_draws(num_negatives: int) -> int:
    # enough that a typical user (history << catalogue) is served in one round
    return int(np.ceil(num_negatives * 1.3 + 16))


def _sample_rows(rows, users, hist_keys, num_items, need, seed, round_, draws, out) -> np.ndarray:
    """One round for `rows` (indices into users); fills `out` for rows that got enough, returns the others."""
    if draws * 2 >= num_items:
        candidates = np.broadcast_to(np.arange(num_items, dtype=np.int64), (len(rows), num_items))
    else:
        j = np.arange(draws, dtype=np.int64)
        candidates = (hash_ints(seed, users[rows][:, None], round_, j[None, :]) % np.uint64(num_items)).astype(np.int64)
    keys = np.sort((rows.astype(np.int64)[:, None] * num_items + candidates).ravel())
    keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]  # distinct (np.unique hashes: 20x slower here)
    if hist_keys.size:
        pos = np.searchsorted(hist_keys, keys).clip(max=hist_keys.size - 1)
        keys = keys[hist_keys[pos] != keys]
    row, item = keys // num_items, keys % num_items
    rank = hash_ints(seed + 1, users[row], item)
    # order by (row, rank) with one integer sort: row in the high bits, the rank's top bits below
    row_bits = np.uint64(max(1, int(rows[-1]).bit_length()))
    order = np.argsort((row.astype(np.uint64) << (np.uint64(64) - row_bits)) | (rank >> row_bits), kind="stable")
    row, item = row[order], item[order]
    starts = np.searchsorted(row, rows)
    counts = np.searchsorted(row, rows, side="right") - starts
    within = np.arange(row.size) - np.repeat(starts, counts)
    complete = np.repeat(counts >= need, counts)
    keep = complete & (within < need)
    out[row[keep], within[keep]] = item[keep]
    return rows[counts < need]


def sample_negatives(
    users: np.ndarray, offsets: np.ndarray, history: np.ndarray, num_items: int, num_negatives: int, seed: int
) -> np.ndarray:
    """Negatives for a batch of users: int32 [len(users), num_negatives].

    `history[offsets[i]:offsets[i+1]]` is user i's interacted items, sorted ascending.
    """
    users = np.asarray(users, dtype=np.int64)
    offsets = np.asarray(offsets, dtype=np.int64)
    sizes = np.diff(offsets)
    if np.any(num_items - sizes < num_negatives):
        raise ValueError(f"a user has fewer than {num_negatives} unseen items among {num_items}")
    out = np.full((len(users), num_negatives), -1, dtype=np.int32)
    hist_keys = np.repeat(np.arange(len(users), dtype=np.int64), sizes) * num_items + np.asarray(history, dtype=np.int64)
    pending = np.arange(len(users), dtype=np.int64)
    round_ = 0
    while pending.size:
        draws = _first_draws(num_negatives) << round_
        width = num_items if draws * 2 >= num_items else draws
        chunk = max(1, _MAX_CELLS // width)
        pending = np.concatenate(
            [
                _sample_rows(pending[i : i + chunk], users, hist_keys, num_items, num_negatives, seed, round_, draws, out)
                for i in range(0, pending.size, chunk)
            ]
        )
        round_ += 1
    return out


def test_negatives(interactions, test_users, num_items: int, num_negatives: int, seed: int):
    """DataFrame[user_idx int, neg_items array<int>] for the users in `test_users` (a `user_idx` column).

    `interactions` holds every (user_idx, item_idx) of the partition, test interactions included.
    """
    from pyspark.sql import functions as F

    histories = (
        interactions.join(test_users.select("user_idx"), "user_idx", "left_semi")
        .groupBy("user_idx")
        .agg(F.array_sort(F.collect_list("item_idx")).alias("items"))
    )

    def sample(batches):
        import pyarrow as pa

        for batch in batches:
            if batch.num_rows == 0:
                continue
            lists = batch.column("items")
            offsets = lists.offsets.to_numpy().astype(np.int64)
            negatives = sample_negatives(
                batch.column("user_idx").to_numpy(),
                offsets - offsets[0],
                lists.flatten().to_numpy(),
                num_items,
                num_negatives,
                seed,
            )
            list_offsets = pa.array(np.arange(0, negatives.size + 1, num_negatives, dtype=np.int32))
            yield pa.RecordBatch.from_arrays(
                [batch.column("user_idx"), pa.ListArray.from_arrays(list_offsets, pa.array(negatives.ravel()))],
                names=["user_idx", "neg_items"],
            )

    return histories.mapInArrow(sample, "user_idx int, neg_items array<int>")
