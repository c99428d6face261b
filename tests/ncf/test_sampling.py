from __future__ import annotations

import numpy as np
import pytest
import torch

from ncf.errors import UserError
from ncf.sampling import NegativeSampler, leave_last_out, recency_rank, recency_weights, seen_csr


def test_seen_csr_sorted_and_deduplicated():
    indptr, indices = seen_csr(np.array([2, 0, 2, 2, 0]), np.array([5, 1, 3, 5, 0]), num_users=4)
    assert indptr.tolist() == [0, 2, 2, 4, 4]
    assert indices.tolist() == [0, 1, 3, 5]


def test_never_samples_a_positive_and_covers_all_negatives():
    rng = np.random.default_rng(1)
    num_users, num_items = 50, 40
    users = rng.integers(0, num_users, 1500)
    items = rng.integers(0, num_items, 1500)
    users[users == 7] = 8
    users[:39], items[:39] = 7, np.arange(39)  # user 7 has exactly one unseen item: 39
    sampler = NegativeSampler(users, items, num_users, num_items)
    query = torch.arange(num_users).repeat_interleave(200)
    neg = sampler.sample(query, num=5, generator=torch.Generator().manual_seed(0)).numpy()
    positives = set(zip(users.tolist(), items.tolist(), strict=True))
    sampled = set(zip(np.repeat(query.numpy(), 5).tolist(), neg.reshape(-1).tolist(), strict=True))
    assert not (sampled & positives)
    assert (neg[query.numpy() == 7] == 39).all()
    all_negatives = {(u, i) for u in range(num_users) for i in range(num_items)} - positives
    assert sampled == all_negatives  # 1000 draws per user reach every unseen item


def test_uniform_over_unseen_items():
    sampler = NegativeSampler(np.array([0, 0]), np.array([1, 3]), 1, 6)
    neg = sampler.sample(torch.zeros(40_000, dtype=torch.long), generator=torch.Generator().manual_seed(0))
    counts = np.bincount(neg.numpy().ravel(), minlength=6)
    assert counts[1] == counts[3] == 0
    assert np.allclose(counts[[0, 2, 4, 5]] / 40_000, 0.25, atol=0.01)


def test_seeded_sampling_is_deterministic():
    sampler = NegativeSampler(np.arange(10) % 3, np.arange(10), 3, 30)
    users = torch.arange(3).repeat(100)
    a = sampler.sample(users, 4, torch.Generator().manual_seed(5))
    b = sampler.sample(users, 4, torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_distinct_negatives():
    sampler = NegativeSampler(np.zeros(5, dtype=int), np.arange(5), 2, 30)
    out = sampler.sample_distinct(torch.tensor([0, 1, 0]), 24, torch.Generator().manual_seed(0))
    assert all(len(set(row)) == 24 for row in out.tolist())
    assert not set(out[0].tolist()) & set(range(5))
    with pytest.raises(UserError, match="fewer than 26"):
        sampler.sample_distinct(torch.tensor([0]), 26)


def test_distinct_negatives_when_barely_enough_unseen_items():
    # 383 unseen items, 99 distinct draws: redrawing whole rows until distinct would (almost) never finish.
    sampler = NegativeSampler(np.zeros(17, dtype=int), np.arange(17) * 3, 1, 400)
    out = sampler.sample_distinct(torch.zeros(50, dtype=torch.long), 99, torch.Generator().manual_seed(1))
    assert all(len(set(row)) == 99 for row in out.tolist())
    assert not set(out.flatten().tolist()) & set(range(0, 51, 3))
    exact = NegativeSampler(np.zeros(5, dtype=int), np.arange(5), 1, 30)
    assert sorted(exact.sample_distinct(torch.tensor([0]), 25)[0].tolist()) == list(range(5, 30))


def test_distinct_negatives_are_uniform_over_unseen_items():
    sampler = NegativeSampler(np.zeros(2, dtype=int), np.array([3, 7]), 1, 12)
    out = sampler.sample_distinct(torch.zeros(20000, dtype=torch.long), 4, torch.Generator().manual_seed(2))
    counts = np.bincount(out.flatten().numpy(), minlength=12)
    assert counts[[3, 7]].sum() == 0
    unseen = np.delete(counts, [3, 7])
    # each of the 10 unseen items is in a 4-subset with probability 0.4: 8000 expected, sd ~ 69
    assert np.all(np.abs(unseen - 8000) < 400), unseen


def test_user_with_every_item_is_a_user_error():
    with pytest.raises(UserError, match="user_idx 1: has interacted with all 3 items"):
        NegativeSampler(np.array([1, 1, 1, 0]), np.array([0, 1, 2, 0]), 2, 3)


def test_leave_last_out_takes_latest_of_users_with_two_or_more():
    users = np.array([0, 0, 1, 2, 2, 2])
    ts = np.array([5, 9, 1, 3, 7, 7])
    # user 1 has a single interaction: kept for training; user 2's tie goes to the later row.
    assert leave_last_out(users, np.zeros(6), ts, 3).tolist() == [1, 5]


def test_leave_last_out_breaks_timestamp_ties_like_the_test_split():
    # spark/preprocess.py picks the larger item index among a user's latest-timestamp interactions
    users = np.array([0, 0, 0, 1, 1, 1])
    items = np.array([5, 9, 2, 7, 3, 7])
    ts = np.array([10, 20, 20, 5, 5, 1])
    assert leave_last_out(users, items, ts, 2).tolist() == [1, 3]


def test_recency_rank_orders_each_users_history():
    users = np.array([1, 0, 1, 1, 0, 2, 2])
    items = np.array([4, 1, 2, 3, 0, 8, 6])
    ts = np.array([5, 3, 1, 9, 2, 7, 7])
    # user 2's tie: the larger item index counts as the later interaction, as in the splits
    assert recency_rank(users, items, ts, 3).tolist() == [0.5, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]


def test_recency_weights_average_one_and_grow_with_recency():
    users, items, ts = np.array([0, 0, 0, 1]), np.array([3, 1, 2, 0]), np.array([1, 2, 3, 5])
    weights = recency_weights(users, items, ts, 2, 16.0)
    assert weights.mean() == pytest.approx(1.0)
    assert weights[0] < weights[1] < weights[2]  # user 0, oldest to latest
    assert recency_weights(users, items, ts, 2, 0.0).tolist() == [1.0] * 4
