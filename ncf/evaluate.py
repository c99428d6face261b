"""Leave-one-out evaluation, vectorised over all users at once.

Two protocols, both reported because sampled metrics are known to mislead:
- sampled (the paper's): the held-out item ranked among its 99 sampled negatives;
- full ranking: the held-out item ranked among every item the user has not trained on.

Rank of the held-out item = number of competing candidates scoring >= it (0 = top). Ties therefore count
AGAINST the held-out item (pessimistic), so a model that scores everything equal gets HR = 0, never 1; a NaN
score counts as -inf. HR@K = [rank < K]; NDCG@K = [rank < K] / log2(rank + 2).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ncf.data import Partition
from ncf.models import NCF
from ncf.sampling import seen_csr
from ncf.scoring import ItemScorer

_USER_CHUNK_SCORES = 1 << 24  # scores materialised per chunk in full ranking


def hit_ndcg(ranks: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user HR@k and NDCG@k (float64 arrays) from 0-based ranks."""
    ranks = np.asarray(ranks.cpu() if isinstance(ranks, torch.Tensor) else ranks, dtype=np.float64)
    hit = (ranks < k).astype(np.float64)
    return hit, hit / np.log2(ranks + 2.0)


def _ranks_against(pos: torch.Tensor, competitors: torch.Tensor) -> torch.Tensor:
    """Per row: competitors scoring >= the positive (NaN -> -inf; a NaN positive ranks below everything)."""
    neg_inf = float("-inf")
    pos = torch.nan_to_num(pos, nan=neg_inf)
    competitors = torch.nan_to_num(competitors, nan=neg_inf)
    return (competitors >= pos[:, None]).sum(dim=1)


def sampled_ranks(scorer: ItemScorer, users, pos_items, neg_items) -> np.ndarray:
    """Rank of each user's positive among its negatives ([n, num_neg]); int64 [n]."""
    users = torch.as_tensor(users, dtype=torch.long, device=scorer.device)
    candidates = torch.cat([torch.as_tensor(pos_items, dtype=torch.long, device=scorer.device).view(-1, 1),
                            torch.as_tensor(neg_items, dtype=torch.long, device=scorer.device)], dim=1)
    scores = scorer.score_candidates(users, candidates)
    return _ranks_against(scores[:, 0], scores[:, 1:]).cpu().numpy()


def full_ranks(scorer: ItemScorer, users, pos_items, seen_indptr: np.ndarray, seen_indices: np.ndarray) -> np.ndarray:
    """Rank of each user's positive among all items it has not been seen with (CSR); int64 [n]."""
    users = np.asarray(users, dtype=np.int64)
    pos_items = np.asarray(pos_items, dtype=np.int64)
    step = max(1, _USER_CHUNK_SCORES // scorer.num_items)
    out = np.empty(users.size, dtype=np.int64)
    for lo in range(0, users.size, step):
        u = users[lo:lo + step]
        scores = scorer.score_all(u)
        rows = torch.arange(len(u), device=scorer.device)
        pos = torch.as_tensor(pos_items[lo:lo + step], device=scorer.device)
        pos_scores = scores[rows, pos].clone()
        starts, ends = seen_indptr[u], seen_indptr[u + 1]
        counts = ends - starts
        flat = np.repeat(starts - np.cumsum(np.r_[0, counts[:-1]]), counts) + np.arange(counts.sum())
        seen_rows = torch.as_tensor(np.repeat(np.arange(len(u)), counts), device=scorer.device)
        seen_cols = torch.as_tensor(seen_indices[flat].astype(np.int64), device=scorer.device)
        scores[seen_rows, seen_cols] = float("-inf")
        scores[rows, pos] = float("-inf")  # the positive does not compete with itself
        out[lo:lo + step] = _ranks_against(pos_scores, scores).cpu().numpy()
    return out


@dataclasses.dataclass
class EvalResult:
    """Both protocols' HR@K / NDCG@K, plus per-user values aligned with `users` (for paired bootstraps)."""

    top_k: int
    users: np.ndarray
    hr: float
    ndcg: float
    hr_per_user: np.ndarray
    ndcg_per_user: np.ndarray
    full_hr: float | None = None
    full_ndcg: float | None = None
    full_hr_per_user: np.ndarray | None = None
    full_ndcg_per_user: np.ndarray | None = None

    def metrics(self) -> dict[str, float]:
        """`{"hr@10": ..., "ndcg@10": ..., "full_hr@10": ..., "full_ndcg@10": ...}` (full ones when computed)."""
        k = self.top_k
        out = {f"hr@{k}": self.hr, f"ndcg@{k}": self.ndcg}
        if self.full_hr is not None:
            out.update({f"full_hr@{k}": self.full_hr, f"full_ndcg@{k}": self.full_ndcg})
        return out


@torch.no_grad()
def evaluate(model: NCF, partition: Partition, top_k: int = 10, *, full_ranking: bool = True,
             scorer: ItemScorer | None = None) -> EvalResult:
    """Evaluate `model` on the partition's test users: sampled (test negatives) and full-ranking protocols."""
    was_training = model.training
    model.eval()
    try:
        scorer = scorer or ItemScorer(model)
        hit, ndcg = hit_ndcg(sampled_ranks(scorer, partition.test_users, partition.test_items,
                                           partition.test_negatives), top_k)
        result = EvalResult(top_k, partition.test_users.copy(), float(hit.mean()) if hit.size else 0.0,
                            float(ndcg.mean()) if ndcg.size else 0.0, hit, ndcg)
        if full_ranking:
            indptr, indices = seen_csr(partition.train_users, partition.train_items, partition.num_users)
            fhit, fndcg = hit_ndcg(full_ranks(scorer, partition.test_users, partition.test_items, indptr, indices),
                                   top_k)
            result.full_hr = float(fhit.mean()) if fhit.size else 0.0
            result.full_ndcg = float(fndcg.mean()) if fndcg.size else 0.0
            result.full_hr_per_user, result.full_ndcg_per_user = fhit, fndcg
        return result
    finally:
        model.train(was_training)
