"""Ranking: the one implementation of both evaluation protocols, for evaluation, the train step and the gate.

- sampled (the paper's): each held-out item ranked among its sampled negatives (99 in a partition);
- full ranking: each held-out item ranked among every item the user has not trained on.

Rank of the held-out item = number of competing candidates scoring >= it (0 = top). Ties therefore count AGAINST
the held-out item (pessimistic): a model that scores everything equal gets HR = 0, never 1. A NaN score counts as
-inf. Items the scorer does not know (`known_items` False; the gate's id mapping) score -inf, below every item it
knows, and a held-out item it does not know gets rank `UNRANKED`: a miss at every K, whatever the number of
candidates. HR@K = [rank < K]; NDCG@K = [rank < K] / log2(rank + 2).

A scorer is anything with `num_items`, `device`, `score_all(users)` -> [B, num_items] and
`score_candidates(users, items)` -> [B, C] (`ncf.families.base.Scorer`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import numpy as np
import torch

UNRANKED = np.iinfo(np.int64).max  # the rank of a held-out item the scorer does not know
_SCORES_PER_CHUNK = 1 << 24  # scores materialised at once (64 MB of float32)


def hit_ndcg(ranks: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-row HR@k and NDCG@k (float64 arrays) from 0-based ranks."""
    ranks = np.asarray(ranks.cpu() if isinstance(ranks, torch.Tensor) else ranks, dtype=np.float64)
    hit = (ranks < k).astype(np.float64)
    return hit, hit / np.log2(ranks + 2.0)


def _clean(scores: torch.Tensor, known: torch.Tensor | None) -> torch.Tensor:
    """float32 scores with NaN -> -inf and unknown items -> -inf (`known` broadcasts against `scores`)."""
    scores = torch.nan_to_num(scores.float(), nan=float("-inf"))
    return scores if known is None else scores.masked_fill_(~known, float("-inf"))


def _unknown_positives(ranks: np.ndarray, pos_items: np.ndarray, known_items: torch.Tensor | None) -> np.ndarray:
    if known_items is not None:
        ranks[~known_items.cpu().numpy()[pos_items]] = UNRANKED
    return ranks


def sampled_scores(scorer, users, pos_items, neg_items, known_items: torch.Tensor | None = None
                   ) -> Iterator[tuple[int, torch.Tensor]]:
    """Each row's held-out item's score, then its negatives' ([n, num_neg]), a chunk of rows at a time:
    (first row, float32 [rows, 1 + num_neg]) with NaN and unknown items at -inf, on the scorer's device."""
    users = np.asarray(users, dtype=np.int64)
    pos_items = np.asarray(pos_items, dtype=np.int64)
    candidates = np.concatenate([pos_items[:, None], np.asarray(neg_items, dtype=np.int64).reshape(len(users), -1)],
                                axis=1)
    device = scorer.device
    known = None if known_items is None else known_items.to(device)
    step = max(1, _SCORES_PER_CHUNK // max(1, candidates.shape[1]))
    for lo in range(0, users.size, step):
        cand = torch.as_tensor(candidates[lo:lo + step], device=device)
        yield lo, _clean(scorer.score_candidates(torch.as_tensor(users[lo:lo + step], device=device), cand),
                         None if known is None else known[cand])


def held_out_ranks(scores: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    """Rank of column 0 (the held-out item) among the other columns of each row (ties count against it)."""
    return (scores[:, 1:] >= scores[:, :1]).sum(1)


def sampled_ranks(scorer, users, pos_items, neg_items, known_items: torch.Tensor | None = None) -> np.ndarray:
    """Rank of each row's held-out item `pos_items[r]` among its negatives `neg_items[r]` ([n, num_neg]);
    int64 [n]. `known_items`: bool [num_items], False for items the scorer does not know."""
    out = np.empty(len(users), dtype=np.int64)
    for lo, scores in sampled_scores(scorer, users, pos_items, neg_items, known_items):
        out[lo:lo + len(scores)] = held_out_ranks(scores).cpu().numpy()
    return _unknown_positives(out, np.asarray(pos_items, dtype=np.int64), known_items)


def full_ranks(scorer, users, pos_items, seen_indptr: np.ndarray, seen_indices: np.ndarray,
               known_items: torch.Tensor | None = None) -> np.ndarray:
    """Rank of each row's held-out item among all items except the user's seen ones (CSR `seen_indptr`,
    `seen_indices`) and itself; int64 [n]. `known_items` as in `sampled_ranks`."""
    users = np.asarray(users, dtype=np.int64)
    pos_items = np.asarray(pos_items, dtype=np.int64)
    device = scorer.device
    known = None if known_items is None else known_items.to(device)
    step = max(1, _SCORES_PER_CHUNK // max(1, scorer.num_items))
    out = np.empty(users.size, dtype=np.int64)
    for lo in range(0, users.size, step):
        u = users[lo:lo + step]
        scores = _clean(scorer.score_all(torch.as_tensor(u, device=device)), known)
        rows = torch.arange(len(u), device=device)
        pos = torch.as_tensor(pos_items[lo:lo + step], device=device)
        competes = torch.ones_like(scores, dtype=torch.bool)
        counts = seen_indptr[u + 1] - seen_indptr[u]
        flat = np.repeat(seen_indptr[u] - np.cumsum(np.r_[0, counts[:-1]]), counts) + np.arange(counts.sum())
        competes[torch.as_tensor(np.repeat(np.arange(len(u)), counts), device=device),
                 torch.as_tensor(seen_indices[flat].astype(np.int64), device=device)] = False
        competes[rows, pos] = False  # the held-out item does not compete with itself
        out[lo:lo + step] = ((scores >= scores[rows, pos][:, None]) & competes).sum(dim=1).cpu().numpy()
    return _unknown_positives(out, pos_items, known_items)


def process_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@contextlib.contextmanager
def all_cores() -> Iterator[None]:
    """Score with every core of this process (the train step trains small batches on one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(process_cores())
    try:
        yield
    finally:
        torch.set_num_threads(before)
