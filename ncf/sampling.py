"""Exact, vectorised negative sampling and the per-user seen-item index (CSR).

A negative for user u is drawn uniformly from the items u has NOT interacted with, without rejection:
with u's seen items sorted, s_0 < s_1 < ..., the r-th unseen item is `r + #{j : s_j - j <= r}`. The values
`s_j - j` are non-decreasing within a user, so offsetting them by `u * num_items` gives one globally sorted key
array and a single `searchsorted` maps a uniform rank r in [0, num_items - n_u) to the item. No collisions to
resample, no host synchronisation, no Python loop over samples; it runs on whatever device the tensors are on.
"""

from __future__ import annotations

import numpy as np
import torch

from ncf.errors import UserError


def seen_csr(users: np.ndarray, items: np.ndarray, num_users: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's distinct items, sorted: (indptr int64 [num_users + 1], indices int32)."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    num_items = int(items.max()) + 1 if items.size else 1
    keys = np.unique(users * num_items + items)
    key_users = keys // num_items
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(key_users, minlength=num_users), out=indptr[1:])
    return indptr, (keys % num_items).astype(np.int32)


class NegativeSampler:
    """Uniform negatives for given users, never one of the user's known items.

    `users`, `items` are the known (user, item) pairs -- typically the training set, plus any held-out items the
    sampler must also avoid. Tensors live on `device`.
    """

    def __init__(self, users, items, num_users: int, num_items: int, device: str | torch.device = "cpu"):
        self.num_users, self.num_items = int(num_users), int(num_items)
        indptr, indices = seen_csr(np.asarray(users), np.asarray(items), self.num_users)
        counts = np.diff(indptr)
        full = np.flatnonzero(counts >= self.num_items)
        if full.size:
            raise UserError(f"user_idx {int(full[0])}: has interacted with all {self.num_items} items, "
                            "so no negative can be sampled for it")
        # s_j - j within each user's sorted segment, offset by user * num_items: globally non-decreasing.
        rank_in_user = np.arange(indices.size, dtype=np.int64) - np.repeat(indptr[:-1], counts)
        user_of = np.repeat(np.arange(self.num_users, dtype=np.int64), counts)
        adjusted = user_of * self.num_items + indices.astype(np.int64) - rank_in_user
        self.device = torch.device(device)
        self.keys = torch.from_numpy(adjusted).to(self.device)
        self.starts = torch.from_numpy(indptr[:-1].copy()).to(self.device)
        self.num_unseen = torch.from_numpy(self.num_items - counts).to(self.device)

    def _item_at_rank(self, users: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
        """The `rank`-th unseen item of each user (`users` shaped [n, 1], `rank` [n, k])."""
        seen_below = torch.searchsorted(self.keys, users * self.num_items + rank, right=True) - self.starts[users]
        return rank + seen_below

    def sample(self, users: torch.Tensor, num: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """`num` negatives per entry of `users` (int tensor on the sampler's device): int64 [len(users), num]."""
        users = users.to(self.device, torch.long).view(-1, 1)
        uniform = torch.rand((users.shape[0], num), dtype=torch.float64, device=self.device, generator=generator)
        unseen = self.num_unseen[users]
        rank = torch.minimum((uniform * unseen).long(), unseen - 1)
        return self._item_at_rank(users, rank)

    def sample_distinct(self, users: torch.Tensor, num: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`num` distinct negatives per user (for evaluation candidate lists): int64 [len(users), num].

        Floyd's algorithm over each user's unseen ranks, vectorised across users: `num` steps, each drawing one
        rank per user, so a uniformly random subset comes out in a fixed number of steps however few unseen
        items a user has (redrawing rows until they happen to be distinct never ends on small catalogues).
        """
        users = users.to(self.device, torch.long).view(-1, 1)
        unseen = self.num_unseen[users]
        too_few = (unseen < num).nonzero()
        if too_few.numel():
            u = int(users[too_few[0, 0], 0])
            raise UserError(f"user_idx {u}: fewer than {num} unseen items to sample evaluation negatives from")
        ranks = torch.empty((users.shape[0], num), dtype=torch.long, device=self.device)
        for step in range(num):
            upper = unseen - num + step  # draw from [0, upper]; `upper` itself is unused so far
            uniform = torch.rand(upper.shape, dtype=torch.float64, device=self.device, generator=generator)
            pick = torch.minimum((uniform * (upper + 1)).long(), upper)
            taken = (ranks[:, :step] == pick).any(dim=1, keepdim=True)
            ranks[:, step : step + 1] = torch.where(taken, upper, pick)
        return self._item_at_rank(users, ranks)


def history_order(users: np.ndarray, items: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row indices sorted by user, then time, oldest first; equal timestamps put the larger item index later (the
    rule of spark/preprocess.py `split_leave_one_out`), then the later row.

    The one definition of "latest" for the validation split and the recency weights. The tie rule matters on
    datasets with coarse timestamps: on MovieLens-100K, 45% of users have several interactions at their latest
    training timestamp.
    """
    return np.lexsort((np.arange(len(users)), np.asarray(items), np.asarray(ts), np.asarray(users)))


RECENCY_WEIGHTS = (0.0, 4.0, 16.0, 64.0)  # the recency weights model selection tries (every family that has one)
RECENCY_POWER = 4.0  # the weights' shape: most of the weight on each user's latest interactions


def recency_rank(users: np.ndarray, items: np.ndarray, ts: np.ndarray, num_users: int) -> np.ndarray:
    """Each interaction's position in its user's history (`history_order`, the order the splits use), scaled to
    [0, 1] (0 oldest, 1 latest)."""
    order = history_order(users, items, ts)
    counts = np.bincount(users, minlength=num_users)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    position = np.empty(len(users), dtype=np.float64)
    sorted_users = np.asarray(users)[order]
    position[order] = np.arange(len(users)) - starts[sorted_users]
    return position / np.maximum(counts[users] - 1, 1)


def recency_weights(users: np.ndarray, items: np.ndarray, ts: np.ndarray, num_users: int, weight: float,
                    power: float = RECENCY_POWER) -> np.ndarray:
    """float64 [n]: 1 + weight * r**power for the interaction at fraction r of its user's history (`recency_rank`),
    divided by the mean so the weights average 1; all ones for weight 0. The one definition every family uses
    (NCF: loss weights; EASE: history weights; iALS: confidence)."""
    if weight == 0 or len(users) == 0:
        return np.ones(len(users))
    raw = 1.0 + weight * recency_rank(users, items, ts, num_users) ** power
    return raw / raw.mean()


def leave_last_out(users: np.ndarray, items: np.ndarray, ts: np.ndarray, num_users: int) -> np.ndarray:
    """Index of each user's latest interaction (`history_order`), for users with >= 2 interactions.

    Used to carve a validation split from the training set the same way the test split was made.
    """
    users = np.asarray(users, dtype=np.int64)
    order = history_order(users, items, ts)
    last = np.flatnonzero(np.r_[users[order][1:] != users[order][:-1], True])
    counts = np.bincount(users, minlength=num_users)
    chosen = order[last]
    return np.sort(chosen[counts[users[chosen]] >= 2])
