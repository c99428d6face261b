"""iALS through implicit, on CPU: deterministic for a seed, exact inner products, better than chance."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from ncf.errors import UserError
from ncf.evaluate import sampled_metrics
from ncf.families import get
from ncf.families.base import FitContext, Runtime
from ncf.families.ials import IALSSettings
from ncf.splits import HeldOut, Interactions
from tests.tiny_data import make_partition


def test_fits_on_cpu_deterministically_without_the_blas_warning():
    partition = make_partition(num_users=60, num_items=50, per_user=8, num_neg=20, seed=3)
    rows = Interactions.of(partition)
    context = FitContext(Runtime(torch.device("cpu")), seed=5)
    settings = IALSSettings(ials_factors=6, ials_iterations=5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # implicit warns when a threaded BLAS would run inside its own threads
        scorer, exported = get("ials").fit_rows(rows, settings, context)
    again, _ = get("ials").fit_rows(rows, settings, context)
    assert torch.equal(scorer.user_vectors(), again.user_vectors())
    assert exported.weights["user_factors"].shape == (60, 6) and exported.weights["item_factors"].shape == (50, 6)
    assert exported.config["factors"] == 6 and scorer.inner_product == "exact"
    users = torch.arange(60)
    torch.testing.assert_close(scorer.score_all(users), scorer.user_vectors() @ scorer.item_vectors().t())
    # It learns the training rows: their items outscore the rest.
    train = HeldOut(rows.users, rows.items, np.tile(np.arange(50), (rows.users.size, 1)))
    hr, _ = sampled_metrics(scorer, train, 10)
    assert hr > 0.5


def test_bad_settings_are_user_errors():
    with pytest.raises(UserError, match="ials_factors and ials_iterations must be positive"):
        IALSSettings(ials_factors=0)
    with pytest.raises(UserError, match="ials_alpha > 0"):
        IALSSettings(ials_alpha=0)


def test_a_recency_weight_fits_each_users_latest_interactions_closer():
    """Confidence 1 + alpha * recency weight: the latest items of a history outscore its oldest by more."""
    partition = make_partition(num_users=60, num_items=50, per_user=8, num_neg=20, seed=3)
    rows = Interactions.of(partition)
    context = FitContext(Runtime(torch.device("cpu")), seed=5)
    order = np.lexsort((rows.ts, rows.users))  # make_partition's timestamps have no ties within a user
    oldest, latest = order[::8], order[7::8]

    def latest_lead(weight: float) -> float:
        scorer, _ = get("ials").fit_rows(rows, IALSSettings(ials_factors=6, ials_iterations=5,
                                                            ials_recency_weight=weight), context)
        scores = scorer.score_all(torch.arange(60)).numpy()
        return float((scores[rows.users[latest], rows.items[latest]] - scores[rows.users[oldest],
                                                                                rows.items[oldest]]).mean())

    assert latest_lead(64.0) > latest_lead(0.0) + 0.05
    with pytest.raises(UserError, match="ials_recency_weight: must be >= 0"):
        IALSSettings(ials_recency_weight=-1.0)
