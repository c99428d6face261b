from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ncf.evaluate import evaluate, sample_rows
from ncf.models import ModelSpec, build_model
from ncf.ranking import UNRANKED, full_ranks, hit_ndcg, sampled_ranks
from ncf.sampling import seen_csr
from ncf.scoring import ItemScorer
from tests.tiny_data import make_partition


class FixedScorer:
    """Scores from a fixed [num_users, num_items] table, to hand-compute ranks."""

    def __init__(self, table):
        self.table = torch.as_tensor(table, dtype=torch.float32)
        self.num_items = self.table.shape[1]
        self.device = torch.device("cpu")

    def score_all(self, users):
        return self.table[torch.as_tensor(users, dtype=torch.long)].clone()

    def score_candidates(self, users, items):
        users = torch.as_tensor(users, dtype=torch.long)
        return self.table[users[:, None], torch.as_tensor(items, dtype=torch.long)]


def test_hit_ndcg_hand_computed():
    hit, ndcg = hit_ndcg(np.array([0, 1, 2, 9, 10, 50]), k=10)
    assert hit.tolist() == [1, 1, 1, 1, 0, 0]
    expected = [1.0, 1 / math.log2(3), 0.5, 1 / math.log2(11), 0.0, 0.0]
    np.testing.assert_allclose(ndcg, expected)


def test_sampled_ranks_ties_count_against_the_positive():
    table = [[0.5, 0.9, 0.5, 0.1, 0.2],   # user 0: positive item 0; item 1 beats it, item 2 ties
             [0.7, 0.7, 0.7, 0.7, 0.7],   # user 1: everything equal -> worst rank
             [float("nan"), 0.0, 0.1, 0.2, 0.3]]  # user 2: NaN positive ranks below everything
    ranks = sampled_ranks(FixedScorer(table), [0, 1, 2], [0, 0, 0], [[1, 2, 3, 4]] * 3)
    assert ranks.tolist() == [2, 4, 4]
    hit, ndcg = hit_ndcg(ranks, k=3)
    assert hit.tolist() == [1, 0, 0]
    assert ndcg[0] == 0.5


def test_full_ranks_exclude_seen_items_and_nan_competitors():
    table = [[0.1, 0.9, 0.8, 0.3, float("nan"), 0.2],
             [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]]
    # user 0 trained on items 1 and 2 (which outscore the positive item 3) -> they do not compete.
    indptr, indices = seen_csr(np.array([0, 0]), np.array([1, 2]), num_users=2)
    ranks = full_ranks(FixedScorer(table), [0, 1], [3, 5], indptr, indices)
    assert ranks.tolist() == [0, 5]


def test_evaluate_returns_both_protocols_and_per_user_arrays(tiny_partition):
    torch.manual_seed(0)
    model = build_model(ModelSpec("NeuMF", tiny_partition.num_users, tiny_partition.num_items, 8, 2))
    result = evaluate(ItemScorer(model.eval()), tiny_partition, top_k=5)
    metrics = result.metrics()
    assert set(metrics) == {"hr@5", "ndcg@5", "full_hr@5", "full_ndcg@5", "full_hr@5_ci95", "full_ndcg@5_ci95",
                            "full_eval_users"}
    assert metrics["full_eval_users"] == tiny_partition.num_users  # fewer users than the sample size: all of them
    assert result.hr_per_user.shape == result.full_ndcg_per_user.shape == (tiny_partition.num_users,)
    assert metrics["hr@5"] == result.hr_per_user.mean()
    # Cross-check the vectorised sampled protocol against a per-user loop over the model's forward.
    model.eval()
    with torch.no_grad():
        for u, pos, negs, hit in zip(tiny_partition.test_users, tiny_partition.test_items,
                                     tiny_partition.test_negatives, result.hr_per_user, strict=True):
            items = torch.as_tensor(np.r_[pos, negs], dtype=torch.long)
            scores = model(torch.full_like(items, int(u)), items)
            assert hit == float((scores[1:] >= scores[0]).sum() < 5)


@pytest.mark.parametrize("members", [1, 3])
@pytest.mark.parametrize("budget", [None, 500])
def test_scorer_matches_forward_for_all_and_candidates(tiny_partition, members, budget, monkeypatch):
    if budget is not None:  # a budget below one user's row: score_all works in blocks of items
        monkeypatch.setattr("ncf.scoring.ACTIVATION_BUDGET", budget)
    for model_type in ("GMF", "MLP", "NeuMF"):
        model = build_model(ModelSpec(model_type, 30, 60, 8, 3, dropout=0.5, members=members)).eval()
        scorer = ItemScorer(model)
        users = torch.tensor([3, 0, 29])
        with torch.no_grad():
            full = torch.stack([model(torch.full((60,), int(u)), torch.arange(60)) for u in users])
        torch.testing.assert_close(scorer.score_all(users), full, rtol=1e-5, atol=1e-6)
        cands = torch.tensor([[5, 1, 59], [0, 0, 7], [2, 3, 4]])
        torch.testing.assert_close(scorer.score_candidates(users, cands), full.gather(1, cands),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("members", [1, 3])
def test_scorer_vectors_are_the_gmf_part_of_the_logit(members):
    """GMF: logit = <user, item> + bias ("exact"); NeuMF: logit = <user, item> + the MLP tower's term + bias, the
    product being exactly what the GMF branch adds ("partial"); MLP has no vectors."""
    torch.manual_seed(4)
    users = torch.arange(30)
    gmf = build_model(ModelSpec("GMF", 30, 60, 8, members=members)).eval()
    scorer = ItemScorer(gmf)
    assert scorer.inner_product == "exact"
    product = scorer.user_vectors() @ scorer.item_vectors().t()
    assert scorer.user_vectors().shape == (30, 8 * members)
    torch.testing.assert_close(scorer.score_all(users), product + scorer.bias, rtol=1e-5, atol=1e-6)

    neumf = build_model(ModelSpec("NeuMF", 30, 60, 8, 2, members=members)).eval()
    scorer = ItemScorer(neumf)
    assert scorer.inner_product == "partial"
    without_gmf = build_model(neumf.spec).eval()
    without_gmf.load_state_dict(neumf.state_dict())
    with torch.no_grad():
        for name, parameter in without_gmf.named_parameters():
            if "embed_item_GMF" in name:  # the GMF branch then adds nothing
                parameter.zero_()
    rest = ItemScorer(without_gmf).score_all(users)  # the MLP term + bias alone
    product = scorer.user_vectors() @ scorer.item_vectors().t()
    torch.testing.assert_close(scorer.score_all(users), product + rest, rtol=1e-5, atol=1e-5)
    with pytest.raises(NotImplementedError, match="no inner-product vectors"):
        ItemScorer(build_model(ModelSpec("MLP", 30, 60, 8, 2)).eval()).user_vectors()


def test_unknown_items_rank_last_and_an_unknown_held_out_item_is_a_miss():
    table = [[0.5, 0.9, 0.1, float("nan")],   # item 1 (unknown) outscores the positive: it does not count
             [0.2, 0.3, 0.1, 0.0],            # the held-out item 1 is unknown: a miss however few candidates
             [float("nan"), 0.0, 0.1, 0.2]]   # a NaN positive ties with every candidate, unknown ones included
    known = torch.tensor([True, False, True, True])
    scorer = FixedScorer(table)
    sampled = sampled_ranks(scorer, [0, 1, 2], [0, 1, 0], [[1, 2, 3]] * 3, known)
    assert sampled.tolist() == [0, UNRANKED, 3]
    indptr, indices = seen_csr(np.array([2]), np.array([3]), num_users=3)
    assert full_ranks(scorer, [0, 1, 2], [0, 1, 0], indptr, indices, known).tolist() == [0, UNRANKED, 2]
    assert hit_ndcg(np.array([UNRANKED]), 1000)[0].tolist() == [0.0]


def test_full_ranking_samples_a_fixed_set_of_users_with_a_confidence_interval():
    partition = make_partition(num_users=50, num_items=60, per_user=5, num_neg=10, seed=2)
    torch.manual_seed(1)
    scorer = ItemScorer(build_model(ModelSpec("GMF", 50, 60, 8)).eval())
    everyone = evaluate(scorer, partition, 10, full_eval_users=0)
    sampled = evaluate(scorer, partition, 10, full_eval_users=20)
    assert everyone.full_users.tolist() == list(range(50)) and sampled.full_users.size == 20
    np.testing.assert_array_equal(sampled.full_users, sample_rows(50, 20))  # a function of the sizes only
    np.testing.assert_array_equal(sampled.full_users, evaluate(scorer, partition, 10, full_eval_users=20).full_users)
    # The sample's per-user values are the whole population's, restricted to the sampled users.
    np.testing.assert_allclose(sampled.full_hr_per_user, everyone.full_hr_per_user[sampled.full_users])
    assert sampled.hr_per_user.shape == (50,)  # the sampled-99 protocol keeps every user
    metrics = sampled.metrics()
    assert metrics["full_eval_users"] == 20
    per_user = sampled.full_ndcg_per_user
    assert metrics["full_ndcg@10_ci95"] == pytest.approx(1.959964 * per_user.std(ddof=1) / np.sqrt(20), rel=1e-5)
    assert sample_rows(10, 20).tolist() == list(range(10))
