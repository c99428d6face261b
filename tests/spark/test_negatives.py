"""Negative sampling rules, on the numpy core (no Spark): distinct, unseen, deterministic, scalable."""

from __future__ import annotations

import numpy as np
import pytest

from spark.negatives import sample_negatives


def _histories(rng, num_users: int, num_items: int, max_size: int):
    sizes = rng.integers(1, max_size, num_users)
    history = [np.sort(rng.choice(num_items, s, replace=False)) for s in sizes]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return history, offsets, np.concatenate(history)


def _check(out, history, num_negatives):
    for negatives, seen in zip(out, history, strict=True):
        assert len(set(negatives.tolist())) == num_negatives
        assert not set(negatives.tolist()) & set(seen.tolist())


def test_distinct_unseen_and_exactly_n():
    rng = np.random.default_rng(0)
    history, offsets, flat = _histories(rng, 500, 3000, 200)
    out = sample_negatives(np.arange(500) * 3, offsets, flat, 3000, 99, seed=1)
    assert out.shape == (500, 99) and out.dtype == np.int32
    assert out.min() >= 0 and out.max() < 3000
    _check(out, history, 99)


def test_heavy_users_and_tiny_catalogue_still_get_exactly_n():
    # users who have seen 90% of a small catalogue force re-draws and the whole-catalogue fallback
    rng = np.random.default_rng(1)
    history, offsets, flat = _histories(rng, 50, 1100, 1000)
    out = sample_negatives(np.arange(50), offsets, flat, 1100, 99, seed=1)
    _check(out, history, 99)


def test_user_with_exactly_n_unseen_items_gets_all_of_them():
    history = np.arange(5, 105)  # 100 of 199 items seen -> exactly 99 unseen
    out = sample_negatives(np.array([7]), np.array([0, 100]), history, 199, 99, seed=3)
    assert sorted(out[0].tolist()) == list(range(5)) + list(range(105, 199))


def test_too_few_unseen_items_is_refused():
    with pytest.raises(ValueError, match="fewer than 99 unseen items"):
        sample_negatives(np.array([0]), np.array([0, 2]), np.array([1, 2]), 100, 99, seed=0)


def test_deterministic_by_seed_and_independent_of_batching():
    rng = np.random.default_rng(2)
    history, offsets, flat = _histories(rng, 300, 5000, 300)
    users = np.arange(300) + 1000
    first = sample_negatives(users, offsets, flat, 5000, 99, seed=42)
    assert np.array_equal(first, sample_negatives(users, offsets, flat, 5000, 99, seed=42))
    assert not np.array_equal(first, sample_negatives(users, offsets, flat, 5000, 99, seed=43))
    # the same users in another batch composition and order get the same negatives
    rev = slice(None, None, -1)
    rev_offsets = np.concatenate([[0], np.cumsum([len(h) for h in history[rev]])])
    reversed_out = sample_negatives(users[rev], rev_offsets, np.concatenate(history[rev]), 5000, 99, seed=42)
    assert np.array_equal(first, reversed_out[rev])
    half = sample_negatives(users[:150], offsets[:151], flat[: offsets[150]], 5000, 99, seed=42)
    assert np.array_equal(first[:150], half)


def test_roughly_uniform_over_unseen_items():
    # 2000 users who saw items 0..9 only: every other item should be drawn about equally often
    num_users, num_items = 2000, 500
    offsets = np.arange(0, 10 * num_users + 1, 10)
    flat = np.tile(np.arange(10), num_users)
    out = sample_negatives(np.arange(num_users), offsets, flat, num_items, 99, seed=5)
    counts = np.bincount(out.ravel(), minlength=num_items)
    assert counts[:10].sum() == 0
    expected = num_users * 99 / (num_items - 10)
    assert np.abs(counts[10:] - expected).max() < 6 * np.sqrt(expected)
