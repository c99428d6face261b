"""The data a model family fits on, made by the core: a partition's training rows and ONE validation split.

The validation split is carved from the training rows exactly as the test split was made (`leave_last_out`: each
user's latest training interaction, users with 2+ of them), ranked among sampled negatives the user never
interacted with in the training rows (training or validation items), so every family is selected on the same rows
and never on the test set: nothing in the validation split depends on the test rows (replacing them changes no
choice; tests/ncf/test_selection.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ncf.errors import UserError
from ncf.sampling import NegativeSampler, leave_last_out, recency_weights, seen_csr

DEFAULT_VALIDATION_NEGATIVES = 99  # when the partition's test rows carry none


@dataclasses.dataclass(frozen=True)
class Interactions:
    """Training rows (user, item, timestamp) in a partition's id space."""

    users: np.ndarray  # int32 [n]
    items: np.ndarray  # int32 [n]
    ts: np.ndarray  # int64 [n]
    num_users: int
    num_items: int

    @classmethod
    def of(cls, partition) -> Interactions:
        """Every training row of a partition."""
        return cls(partition.train_users, partition.train_items, partition.train_ts, partition.num_users,
                   partition.num_items)

    def seen_csr(self) -> tuple[np.ndarray, np.ndarray]:
        """Each user's distinct items, sorted: (indptr int64 [num_users + 1], indices int32)."""
        return seen_csr(self.users, self.items, self.num_users)

    def recency_weights(self, weight: float) -> np.ndarray:
        """float64 [n]: each row's recency weight (`ncf.sampling.recency_weights`), mean 1; all ones for weight 0."""
        return recency_weights(self.users, self.items, self.ts, self.num_users, weight)

    def seen_values(self, values: np.ndarray) -> np.ndarray:
        """`values` (one per row) aligned with `seen_csr()`'s indices: a pair listed twice keeps its largest."""
        keys = self.users.astype(np.int64) * self.num_items + self.items
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        if starts.size == keys.size:
            return np.asarray(values)[order]
        return np.maximum.reduceat(np.asarray(values)[order], starts) if keys.size else np.asarray(values)[:0]

    def weighted_seen_csr(self, recency_weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`seen_csr()` and each entry's recency weight (float32; all ones, without sorting the rows again, for
        weight 0): the history EASE scores with, the confidences iALS weighs."""
        indptr, indices = self.seen_csr()
        if recency_weight == 0:
            return indptr, indices, np.ones(indices.size, dtype=np.float32)
        return indptr, indices, self.seen_values(self.recency_weights(recency_weight)).astype(np.float32)

    def item_counts(self) -> np.ndarray:
        """float32 [num_items]: interactions per item."""
        return np.bincount(self.items, minlength=self.num_items).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class HeldOut:
    """One held-out item per row, with the sampled negatives it is ranked among (validation or test rows)."""

    users: np.ndarray  # int32 [n]
    items: np.ndarray  # int32 [n]
    negatives: np.ndarray  # int32 [n, num_negatives]

    @classmethod
    def test_of(cls, partition) -> HeldOut:
        """A partition's test rows."""
        return cls(partition.test_users, partition.test_items, partition.test_negatives)


@dataclasses.dataclass(frozen=True)
class FitData:
    """What a family fits on.

    `train`: the rows to fit on (the validation rows removed when there is a validation split);
    `validation`: the split that every choice (epochs, early stopping, settings) is made on, or None;
    `all_train`: every training row of the partition (what a refit trains on; `train` when there is no validation);
    `test`: the partition's test rows, for REPORTING only (the seed's per-epoch metric line) -- never a decision;
    None in model selection's tuning trials (`ncf.selection`), which never see them.
    """

    train: Interactions
    validation: HeldOut | None
    all_train: Interactions
    test: HeldOut | None
    partition_uri: str


def fit_data(partition, *, validation: bool, seed: int) -> FitData:
    """The partition's training rows, with the validation split carved out when `validation`.

    Validation negatives avoid every training item of the user (validation item included) and are as many as the
    test rows have (the evaluation protocol); they do not look at the test rows, so the test split cannot steer a
    choice made on validation (the user's test item may rarely be drawn as a validation negative: the same for every
    model compared). Their own generator (`seed + 1`) keeps them independent of any training stream.
    """
    rows = Interactions.of(partition)
    if not validation:
        return FitData(rows, None, rows, HeldOut.test_of(partition), partition.uri)
    held_out = leave_last_out(rows.users, rows.items, rows.ts, rows.num_users)
    if held_out.size == 0:
        raise UserError(f"{partition.uri}: no user has 2+ training interactions to carve a validation split "
                        "from; use --patience 0")
    keep = np.ones(rows.users.size, dtype=bool)
    keep[held_out] = False
    val_users, val_items = rows.users[held_out], rows.items[held_out]
    known = NegativeSampler(rows.users, rows.items, partition.num_users, partition.num_items)
    num_neg = (partition.test_negatives.shape[1] if partition.test_negatives.ndim == 2
               else DEFAULT_VALIDATION_NEGATIVES)
    num_neg = min(num_neg, int(known.num_unseen.min()))
    generator = torch.Generator().manual_seed(seed + 1)
    negatives = known.sample_distinct(torch.from_numpy(val_users.astype(np.int64)), num_neg, generator).numpy()
    train = Interactions(rows.users[keep], rows.items[keep], rows.ts[keep], rows.num_users, rows.num_items)
    return FitData(train, HeldOut(val_users, val_items, negatives.astype(np.int32)), rows, HeldOut.test_of(partition),
                   partition.uri)
