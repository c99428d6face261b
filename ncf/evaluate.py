"""Leave-one-out evaluation of any family's scorer on a partition's test rows (the protocols: ncf/ranking.py).

- sampled (the paper's): every test user's held-out item ranked among its 99 sampled negatives;
- full ranking: the held-out item ranked among every item the user has not trained on, for a fixed-seed sample of
  at most `full_eval_users` test users (every user when fewer), with a 95% confidence interval. The sample is a
  function of the number of test rows and the cap only, so every model evaluated on a partition (the train step's
  final evaluation, the gate's challenger and champion) is ranked on the same users.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ncf import contracts
from ncf.data import Partition
from ncf.ranking import full_ranks, hit_ndcg, sampled_ranks
from ncf.sampling import seen_csr
from ncf.splits import HeldOut

_Z_95 = 1.959963984540054  # two-sided 95% quantile of the normal distribution


def sample_rows(num_rows: int, max_rows: int, seed: int = contracts.FULL_EVAL_SEED) -> np.ndarray:
    """Sorted indices of at most `max_rows` of `num_rows` rows (all of them when fewer, or `max_rows` 0), drawn
    without replacement with a fixed seed."""
    if max_rows <= 0 or num_rows <= max_rows:
        return np.arange(num_rows)
    return np.sort(np.random.default_rng(seed).choice(num_rows, size=max_rows, replace=False))


def ci95(values: np.ndarray) -> float:
    """Half-width of the normal-approximation 95% confidence interval of the mean of `values` (per-user metrics,
    the users taken as draws from the user population; 0 for fewer than 2 values)."""
    if values.size < 2:
        return 0.0
    return float(_Z_95 * values.std(ddof=1) / np.sqrt(values.size))


def sampled_metrics(scorer, held_out: HeldOut, top_k: int) -> tuple[float, float]:
    """HR@K and NDCG@K of the sampled protocol on `held_out` rows (validation or test), means over rows."""
    hit, ndcg = hit_ndcg(sampled_ranks(scorer, held_out.users, held_out.items, held_out.negatives), top_k)
    return (float(hit.mean()), float(ndcg.mean())) if hit.size else (0.0, 0.0)


@dataclasses.dataclass
class EvalResult:
    """Both protocols' HR@K / NDCG@K, plus per-user values (for paired bootstraps): the sampled ones aligned with
    `users`, the full-ranking ones with `users[full_users]`."""

    top_k: int
    users: np.ndarray
    hr: float
    ndcg: float
    hr_per_user: np.ndarray
    ndcg_per_user: np.ndarray
    full_users: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # rows of `users`
    full_hr: float | None = None
    full_ndcg: float | None = None
    full_hr_per_user: np.ndarray | None = None
    full_ndcg_per_user: np.ndarray | None = None

    def metrics(self) -> dict[str, float]:
        """`{"hr@10", "ndcg@10"}`, and with full ranking `"full_hr@10", "full_ndcg@10"`, their `_ci95`
        half-widths and `"full_eval_users"` (the sample size)."""
        k = self.top_k
        out: dict[str, float] = {contracts.metric_name("hr", k): self.hr, contracts.metric_name("ndcg", k): self.ndcg}
        if self.full_hr is not None:
            for kind, mean, per_user in (("hr", self.full_hr, self.full_hr_per_user),
                                         ("ndcg", self.full_ndcg, self.full_ndcg_per_user)):
                name = contracts.metric_name(kind, k, full=True)
                out.update({name: mean, contracts.ci_name(name): ci95(per_user)})
            out[contracts.FULL_EVAL_USERS] = int(self.full_users.size)
        return out


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else 0.0


@torch.no_grad()
def evaluate(scorer, partition: Partition, top_k: int = 10, *, full_ranking: bool = True,
             full_eval_users: int = contracts.DEFAULT_FULL_EVAL_USERS,
             known_items: torch.Tensor | None = None) -> EvalResult:
    """Evaluate a scorer (`ncf.families.base.Scorer`, in the partition's id space) on the partition's test rows.

    `known_items`: bool [num_items], False for items the scorer does not know (they rank last; the gate's id
    mapping); None: it knows every item.
    """
    users, items = partition.test_users, partition.test_items
    hit, ndcg = hit_ndcg(sampled_ranks(scorer, users, items, partition.test_negatives, known_items), top_k)
    result = EvalResult(top_k, users.copy(), _mean(hit), _mean(ndcg), hit, ndcg)
    if full_ranking:
        rows = sample_rows(users.size, full_eval_users)
        indptr, indices = seen_csr(partition.train_users, partition.train_items, partition.num_users)
        fhit, fndcg = hit_ndcg(full_ranks(scorer, users[rows], items[rows], indptr, indices, known_items), top_k)
        result.full_users = rows
        result.full_hr, result.full_ndcg = _mean(fhit), _mean(fndcg)
        result.full_hr_per_user, result.full_ndcg_per_user = fhit, fndcg
    return result
