"""The champion/challenger gate: the pure rule, fair scoring across id maps, and real gate runs on sqlite MLflow."""

from __future__ import annotations

import dataclasses
import json
import math
import tempfile

import numpy as np
import pytest

from ncf import gate, registry
from ncf.errors import UserError
from tests.mlflow_fixtures import (  # noqa: F401  (fixtures)
    assert_gates_serialised,
    make_package,
    mlflow_server,
    oracle_model,
    postgres_url,
    run_concurrent_gates,
    s3_env,
)
from tests.tiny_data import make_partition, write_partition

# ---- the pure rule -------------------------------------------------------------------------------------------


def test_first_model_needs_only_the_floor():
    assert gate.decide(0.3, None, min_delta=0.5, floor=0.2).promoted
    rejected = gate.decide(0.1, None, min_delta=0.0, floor=0.2)
    assert not rejected.promoted and "below the floor" in rejected.reason


@pytest.mark.parametrize(("challenger", "champion", "min_delta", "floor", "promoted", "why"), [
    (0.50, 0.40, 0.05, 0.0, True, "gain"),
    (0.40, 0.50, 0.00, 0.0, False, "not better"),
    (0.40, 0.40, 0.00, 0.0, False, "not better"),          # equal: no promotion, even with min_delta 0
    (0.42, 0.40, 0.05, 0.0, False, "below min_delta"),
    (0.50, 0.40, 0.00, 0.6, False, "below the floor"),     # better than the champion but under the floor
    (float("nan"), 0.40, 0.0, 0.0, False, "nan"),
])
def test_decisions(challenger, champion, min_delta, floor, promoted, why):
    decision = gate.decide(challenger, champion, min_delta=min_delta, floor=floor)
    assert decision.promoted is promoted
    assert why in decision.reason


def test_negative_min_delta_is_refused():
    with pytest.raises(UserError, match="min_delta"):
        gate.decide(0.3, 0.4, min_delta=-0.2, floor=0.0)


def test_never_promotes_a_worse_or_equal_model_property():
    rng = np.random.default_rng(7)
    for _ in range(5000):
        champion = None if rng.random() < 0.1 else float(rng.choice([rng.random(), 0.5]))
        challenger = float(rng.choice([rng.random(), 0.5, champion if champion is not None else 0.5]))
        decision = gate.decide(challenger, champion, min_delta=float(rng.choice([0.0, rng.random() * 0.2])),
                               floor=float(rng.random() * 0.3))
        if decision.promoted and champion is not None:
            assert challenger > champion


# ---- the popularity baseline in the rule ----


@pytest.mark.parametrize(("challenger", "champion", "baseline", "min_baseline_gain", "promoted", "why"), [
    (0.30, None, 0.35, 0.0, False, "not better than the popularity baseline 0.3500"),  # first model below popularity
    (0.35, None, 0.35, 0.0, False, "not better than the popularity baseline"),         # equal: strictly, not promoted
    (0.40, None, 0.35, 0.0, True, "first model: 0.4000 clears the floor 0.0000; +0.0500 over the popularity baseline"),
    (0.40, None, 0.35, 0.10, False, "is +0.0500 against the popularity baseline 0.3500, below min_baseline_gain 0.1000"),
    (0.50, 0.20, 0.45, 0.10, False, "below min_baseline_gain"),  # beats the champion, not popularity by the margin
    (0.40, 0.20, 0.45, 0.0, False, "not better than the popularity baseline"),  # beats the champion, not popularity
    (0.60, 0.50, 0.45, 0.10, True, "gain 0.1000 >= min_delta 0.0000; +0.1500 over the popularity baseline 0.4500"),
    (0.40, 0.50, 0.30, 0.0, False, "not better than champion"),  # beats popularity, not the champion
    (0.30, None, 0.35, -0.1, True, "first model"),  # a negative margin tolerates a model that much below popularity
    (0.20, None, 0.35, -0.1, False, "below min_baseline_gain -0.1000"),
    (0.40, None, float("nan"), 0.0, False, "baseline score is nan"),
])
def test_baseline_decisions(challenger, champion, baseline, min_baseline_gain, promoted, why):
    decision = gate.decide(challenger, champion, min_delta=0.0, floor=0.0, baseline=baseline,
                           min_baseline_gain=min_baseline_gain)
    assert decision.promoted is promoted, decision
    assert why in decision.reason, decision.reason
    assert decision.baseline_gain == (None if math.isnan(baseline) else pytest.approx(challenger - baseline))


def test_without_a_baseline_the_rule_is_unchanged():
    assert gate.decide(0.3, None, min_delta=0.0, floor=0.0).baseline_gain is None
    assert gate.decide(0.3, None, min_delta=0.0, floor=0.0, min_baseline_gain=0.5).promoted


def test_the_floor_is_checked_before_the_baseline():
    decision = gate.decide(0.1, None, min_delta=0.0, floor=0.2, baseline=0.5)
    assert not decision.promoted and "below the floor" in decision.reason


def test_a_non_finite_min_baseline_gain_is_refused():
    for bad in (float("nan"), float("-inf")):
        with pytest.raises(UserError, match="min_baseline_gain"):
            gate.decide(0.3, None, min_delta=0.0, floor=0.0, baseline=0.2, min_baseline_gain=bad)


def test_never_promotes_a_model_not_above_the_baseline_property():
    rng = np.random.default_rng(11)
    promoted = 0
    for _ in range(5000):
        baseline = float(rng.choice([rng.random(), 0.5]))
        champion = None if rng.random() < 0.3 else float(rng.random())
        challenger = float(rng.choice([rng.random(), 0.5, baseline]))
        margin = float(rng.choice([0.0, rng.random() * 0.2]))
        decision = gate.decide(challenger, champion, min_delta=0.0, floor=0.0, baseline=baseline,
                               min_baseline_gain=margin)
        if decision.promoted:
            promoted += 1
            assert challenger > baseline and challenger - baseline >= margin
            assert champion is None or challenger > champion
    assert promoted > 500  # the property is exercised, not vacuous


def test_paired_bootstrap_separates_real_gains_from_noise():
    rng = np.random.default_rng(0)
    champion = rng.random(400)
    clearly_better = np.clip(champion + 0.1, 0, 1)
    noisy = champion + rng.normal(0, 0.3, 400)
    noisy += 0.001 - (noisy.mean() - champion.mean())  # tiny mean gain, large per-user noise
    assert gate.paired_bootstrap_p(clearly_better, champion, 500) < 0.01
    decision = gate.decide(float(noisy.mean()), float(champion.mean()), min_delta=0.0, floor=0.0,
                           challenger_per_user=noisy, champion_per_user=champion, bootstrap_samples=500)
    assert not decision.promoted and "not significant" in decision.reason
    assert decision.p_value > 0.05


def test_gate_metric_names():
    assert gate.parse_metric("full_ndcg@10") == (True, "ndcg", 10)
    assert gate.parse_metric("hr@5") == (False, "hr", 5)
    with pytest.raises(UserError, match="gate_metric"):
        gate.parse_metric("auc")


# ---- fair scoring: the same rows for every model, whatever ids it knows ------------------------------------------


def test_champion_is_scored_in_its_own_id_space():
    """A champion trained when ids had other indices ranks the same users the same way; users it never saw are
    still scored (popularity fallback), so both models are compared on every row."""
    from ncf.evaluate import evaluate
    from ncf.package import load_package
    from ncf.scoring import ItemScorer

    old = make_partition(num_users=30, seed=3)
    model = oracle_model(old, noise=0.8)
    # The newest partition: the same users under shuffled indices, plus 10 users the champion never saw.
    new = make_partition(num_users=40, seed=3)
    perm = np.random.default_rng(1).permutation(30)
    user_ids = new.user_ids.copy()
    user_ids[:30] = old.user_ids[perm]
    new = dataclasses.replace(
        new, user_ids=user_ids,
        test_items=np.r_[old.test_items[perm], new.test_items[30:]].astype(np.int32),
        test_negatives=np.r_[old.test_negatives[perm], new.test_negatives[30:]].astype(np.int32))
    with tempfile.TemporaryDirectory() as tmp:
        champion = load_package(make_package(f"{tmp}/old", old, model))
        (scores,) = gate.score_packages([champion], new, "ndcg@10")
    direct = evaluate(ItemScorer(model), old, 10)
    assert scores.coverage == gate.Coverage(rows=40, known_user=30, known_test_item=40, native=30)
    assert scores.per_user.shape == (40,)
    np.testing.assert_allclose(scores.per_user[:30], direct.ndcg_per_user[perm], rtol=1e-6)


def test_fully_known_rows_score_exactly_as_ncf_evaluate():
    """With no unknown ids the gate's scoring is `ncf.evaluate`, both protocols."""
    from ncf.evaluate import evaluate
    from ncf.package import load_package
    from ncf.scoring import ItemScorer

    partition = make_partition(num_users=50, num_items=90, seed=4)
    model = oracle_model(partition, noise=1.0)
    with tempfile.TemporaryDirectory() as tmp:
        (scores,) = gate.score_packages([load_package(make_package(f"{tmp}/m", partition, model))], partition,
                                        "full_ndcg@10")
    direct = evaluate(ItemScorer(model), partition, 10)
    assert scores.metrics == pytest.approx(direct.metrics())
    np.testing.assert_allclose(scores.per_user, direct.full_ndcg_per_user)


def test_full_ranking_uses_the_same_sampled_rows_for_every_model(store):
    """With more test rows than full_eval_users, both models are ranked on one fixed sample of rows, and the report
    carries its size and the metrics' intervals."""
    from ncf.evaluate import ci95, evaluate, sample_rows
    from ncf.package import load_package

    root, partition, packages = store
    models = [load_package(packages[name]) for name in ("medium", "better")]
    scores = gate.score_packages(models, partition, "full_ndcg@10", full_eval_users=25)
    for package, score in zip(models, scores, strict=True):
        assert score.metrics["full_eval_users"] == 25 and score.per_user.shape == (25,)
        direct = evaluate(package.scorer, partition, 10, full_eval_users=25)
        np.testing.assert_array_equal(direct.full_users, sample_rows(partition.test_users.size, 25))
        np.testing.assert_allclose(score.per_user, direct.full_ndcg_per_user)
        assert score.metrics["full_ndcg@10_ci95"] == pytest.approx(ci95(score.per_user))
    result = _gate(store, "better", full_eval_users=25, tracking_uri=registry.default_tracking_uri(root / "sample"),
                   report_uri=str(root / "sample-report"))
    report = json.loads((root / "sample-report" / "gate.json").read_text())
    assert result.full_eval_users == report["full_eval_users"] == 25 and result.num_users == 60
    assert report["challenger_metrics"]["full_eval_users"] == 25
    assert "full_hr@10_ci95" in report["challenger_metrics"]


def _hand_package(directory, *, user_ids, item_ids, item_scores, popularity):
    """A GMF with one factor: logit(user, item) = item_scores[item] for every known user."""
    import torch

    from ncf.families.ncf import export
    from ncf.models import ModelSpec, build_model
    from ncf.package import load_package, save_package

    model = build_model(ModelSpec("GMF", len(user_ids), len(item_ids), factor_num=1))
    with torch.no_grad():
        model.embed_user_GMF.weight.fill_(1.0)
        model.embed_item_GMF.weight.copy_(torch.tensor(item_scores, dtype=torch.float32)[:, None])
        model.predict_layer.weight.fill_(1.0)
        model.predict_layer.bias.zero_()
    save_package(directory, export(model.eval()), user_ids=user_ids, item_ids=item_ids,
                 seen_indptr=np.zeros(len(user_ids) + 1, dtype=np.int64), seen_indices=np.zeros(0, dtype=np.int32),
                 popularity=np.asarray(popularity, dtype=np.float32), metrics={})
    return load_package(directory)


def test_unknown_users_and_items_hand_checked():
    """Unknown items rank below every known item, the held-out item loses ties, an unknown held-out item is a miss
    at every K, and a user the model never saw gets its popularity ranking."""
    from ncf.data import Partition

    items = np.asarray(["a", "b", "c", "d", "e"], dtype=object)
    a, b, c, d, e = range(5)
    partition = Partition(
        uri="memory://hand", train_users=np.asarray([0, 1, 2], dtype=np.int32),
        train_items=np.asarray([a, e, d], dtype=np.int32), train_ts=np.zeros(3, dtype=np.int64),
        test_users=np.asarray([0, 1, 2], dtype=np.int32), test_items=np.asarray([b, d, c], dtype=np.int32),
        test_negatives=np.asarray([[a, c, d], [a, b, c], [a, b, e]], dtype=np.int32),
        user_ids=np.asarray(["u0", "u1", "u2"], dtype=object), item_ids=items, stats={})
    with tempfile.TemporaryDirectory() as tmp:
        # Knows u0, u1 and items a, b, c (and x, which left the catalogue); d and e are new.
        champion = _hand_package(f"{tmp}/champion", user_ids=["u0", "u1"], item_ids=["x", "c", "b", "a"],
                                 item_scores=[9.0, 2.0, 2.0, 3.0], popularity=[7.0, 5.0, 10.0, 1.0])
        sampled, full = (gate.score_packages([champion], partition, metric)[0] for metric in ("hr@10", "full_ndcg@10"))

    # Sampled ranks (competitors scoring >= the held-out item):
    #   u0: b=2 vs a=3 (above), c=2 (tie: b loses), d unknown (-inf)            -> rank 2
    #   u1: held-out d is unknown                                               -> miss, even though K=10 > 4 candidates
    #   u2: unknown user -> popularity: c=5 vs a=1, b=10 (above), e unknown     -> rank 1
    np.testing.assert_array_equal(sampled.per_user, [1.0, 0.0, 1.0])
    assert sampled.metrics["ndcg@10"] == pytest.approx((1 / np.log2(4) + 0 + 1 / np.log2(3)) / 3)
    # Full ranks among every partition item but the user's training items:
    #   u0 (trained a): b=2 vs c=2 (tie), d, e unknown                          -> rank 1
    #   u1 (trained e): d unknown                                                -> miss
    #   u2 (trained d; popularity): c=5 vs a=1, b=10, e unknown                 -> rank 1
    np.testing.assert_allclose(full.per_user, [1 / np.log2(3), 0.0, 1 / np.log2(3)])
    assert sampled.coverage == gate.Coverage(rows=3, known_user=2, known_test_item=2, native=0)


def test_catalogue_shift_gives_a_decision(tmp_path):
    """A champion trained before items and users crossed the preprocess filter: no test row of the newest partition
    is fully known to it (the old rule failed with "no test user can be ranked by every model"), yet the gate
    scores both models on every row and decides."""
    old = make_partition(num_users=50, num_items=100, seed=11, uri=str(tmp_path / "data" / "dt=2026-11-26"))
    new = make_partition(num_users=60, num_items=120, seed=12, uri=str(tmp_path / "data" / "dt=2026-11-27"))
    # Every test row of the newest partition has a candidate the champion never saw.
    new.test_negatives[:, 0] = 100 + np.arange(60) % 20
    for partition in (old, new):
        write_partition(partition, partition.uri)
    champion_uri = make_package(str(tmp_path / "models" / "old"), old, oracle_model(old, 1.0, 0))
    challenger_uri = make_package(str(tmp_path / "models" / "new"), new, oracle_model(new, 0.5, 1))
    assert gate.run(gate.GateConfig(model_uri=champion_uri, partition_uri=old.uri)).promoted

    result = gate.run(gate.GateConfig(model_uri=challenger_uri, partition_uri=new.uri, bootstrap_samples=200))
    assert result.promoted and result.challenger_score > result.champion_score
    assert result.p_value is not None and result.p_value <= 0.05  # paired over the same 60 rows
    assert result.num_users == 60
    assert result.challenger_coverage == gate.Coverage(rows=60, known_user=60, known_test_item=60, native=60)
    champion = result.champion_coverage
    assert (champion.rows, champion.known_user, champion.native) == (60, 50, 0)
    assert champion.known_test_item == int(np.count_nonzero(new.test_items < 100))
    report = json.loads((tmp_path / "reports" / "gate" / f"ncf-v{result.version}" / "gate.json").read_text())
    assert report["champion_coverage"]["native"] == 0 and report["challenger_coverage"]["native"] == 60
    tags = registry.alias_version(registry.default_tracking_uri(tmp_path), "ncf", "champion").tags
    assert tags["gate.champion_native_rows"] == "0" and tags["gate.challenger_native_rows"] == "60"
    assert "0 of 60 rows ranked natively" in (tmp_path / "reports" / "gate" / f"ncf-v{result.version}"
                                                / "gate.html").read_text()


# ---- the popularity baseline: same rows, same candidates, the partition's training counts -----------------------


def _hand_partition():
    from ncf.data import Partition

    a, b, c, d, e = range(5)
    return Partition(
        uri="memory://hand", train_users=np.asarray([0, 1, 2], dtype=np.int32),
        train_items=np.asarray([a, e, d], dtype=np.int32), train_ts=np.zeros(3, dtype=np.int64),
        test_users=np.asarray([0, 1, 2], dtype=np.int32), test_items=np.asarray([b, d, c], dtype=np.int32),
        test_negatives=np.asarray([[a, c, d], [a, b, c], [a, b, e]], dtype=np.int32),
        user_ids=np.asarray(["u0", "u1", "u2"], dtype=object),
        item_ids=np.asarray(["a", "b", "c", "d", "e"], dtype=object), stats={})


def test_baseline_is_the_partitions_training_counts_hand_checked():
    """Counts of the training rows: a=1, d=1, e=1, b=0, c=0; the held-out item loses ties."""
    sampled = gate.score_baseline(_hand_partition(), "ndcg@10")
    # u0: b=0 vs a=1, d=1 (above), c=0 (tie)  -> rank 3
    # u1: d=1 vs a=1 (tie), b=0, c=0           -> rank 1
    # u2: c=0 vs a=1, e=1 (above), b=0 (tie)  -> rank 3
    np.testing.assert_allclose(sampled.per_user, [1 / np.log2(5), 1 / np.log2(3), 1 / np.log2(5)])
    assert sampled.coverage == gate.Coverage(rows=3, known_user=3, known_test_item=3, native=3)
    # Full ranking, every partition item but the user's training items:
    # u0 (trained a): b=0 vs d=1, e=1 (above), c=0 (tie) -> rank 3;  u1 (trained e): d=1 vs a=1 (tie) -> rank 1
    # u2 (trained d): c=0 vs a=1, e=1 (above), b=0 (tie) -> rank 3
    full = gate.score_baseline(_hand_partition(), "full_hr@2")
    np.testing.assert_array_equal(full.per_user, [0.0, 1.0, 0.0])


def _item_score_model(num_users: int, item_scores):
    """A GMF with one factor whose logit for every user is `item_scores[item]`."""
    import torch

    from ncf.models import ModelSpec, build_model

    model = build_model(ModelSpec("GMF", num_users, len(item_scores), factor_num=1))
    with torch.no_grad():
        model.embed_user_GMF.weight.fill_(1.0)
        model.embed_item_GMF.weight.copy_(torch.as_tensor(np.asarray(item_scores), dtype=torch.float32)[:, None])
        model.predict_layer.weight.fill_(1.0)
        model.predict_layer.bias.zero_()
    return model.eval()


def skewed_partition(uri: str, num_users: int = 80, num_items: int = 60, per_user: int = 8, num_neg: int = 20,
                     seed: int = 0):
    """A partition whose users pick items with Zipf-like popularity (held-out items too) and whose negatives are
    uniform: popularity is a strong baseline here, as on real interaction logs."""
    from ncf.data import Partition

    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, num_items + 1) ** 1.1
    train_u, train_i, test_i, negs = [], [], [], []
    for u in range(num_users):
        items = rng.choice(num_items, per_user + 1, replace=False, p=weights / weights.sum())
        train_u += [u] * per_user
        train_i += items[:per_user].tolist()
        test_i.append(items[per_user])
        negs.append(rng.choice(np.setdiff1d(np.arange(num_items), items), num_neg, replace=False))
    return Partition(
        uri=uri, train_users=np.asarray(train_u, dtype=np.int32), train_items=np.asarray(train_i, dtype=np.int32),
        train_ts=rng.integers(0, 10_000, len(train_u)).astype(np.int64),
        test_users=np.arange(num_users, dtype=np.int32), test_items=np.asarray(test_i, dtype=np.int32),
        test_negatives=np.asarray(negs, dtype=np.int32),
        user_ids=np.asarray([f"u{u}" for u in range(num_users)], dtype=object),
        item_ids=np.asarray([f"i{i}" for i in range(num_items)], dtype=object),
        stats={"schema_version": 1, "num_users": num_users, "num_items": num_items, "run_date": "2026-11-27"})


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    """A skewed partition and packages of known quality against popularity: reversed popularity (worst), random
    scores (between), popularity's own ranking as an NCF package (equal) and a near-oracle (best)."""
    from ncf.splits import Interactions

    root = tmp_path_factory.mktemp("baseline-root")
    partition = skewed_partition(str(root / "data" / "dt=2026-11-27"))
    write_partition(partition, partition.uri)
    counts = Interactions.of(partition).item_counts()
    models = {"reversed": _item_score_model(partition.num_users, -counts),
              "random": oracle_model(partition, noise=100.0, seed=3),
              "popularity": _item_score_model(partition.num_users, counts),
              "oracle": oracle_model(partition, noise=0.5, seed=4)}
    packages = {name: make_package(str(root / "models" / name), partition, model) for name, model in models.items()}
    return root, partition, packages


def test_baseline_scores_like_a_package_that_ranks_by_the_partitions_counts(skewed):
    """The baseline and an NCF package that ranks by the same counts go through the gate's scoring the same way:
    the same rows, the same candidates, the same full-ranking sample."""
    from ncf.evaluate import sample_rows
    from ncf.package import load_package

    _, partition, packages = skewed
    for metric, users in (("ndcg@10", 0), ("full_ndcg@10", 25), ("full_hr@5", 0)):
        (package,) = gate.score_packages([load_package(packages["popularity"])], partition, metric, users)
        baseline = gate.score_baseline(partition, metric, users)
        assert baseline.metrics == pytest.approx(package.metrics)
        np.testing.assert_allclose(baseline.per_user, package.per_user)
    assert baseline.metrics["full_eval_users"] == partition.test_users.size
    sample = gate.score_baseline(partition, "full_ndcg@10", 25)
    assert sample.per_user.shape == (25,) and sample.metrics["full_eval_users"] == 25
    assert sample_rows(partition.test_users.size, 25).size == 25


def test_the_gate_never_ships_a_model_worse_than_popularity(skewed, capsys):
    """A first model below popularity is refused; one that beats the champion but not popularity (by
    min_baseline_gain) is refused; one that beats both is promoted. Scores, tags, gate.json and gate.html carry the
    baseline."""
    root, partition, packages = skewed
    tracking_uri = registry.default_tracking_uri(root)

    def gated(name: str, **overrides) -> gate.GateResult:
        return gate.run(gate.GateConfig(model_uri=packages[name], partition_uri=partition.uri, **overrides))

    reversed_ = gated("reversed")
    assert not reversed_.promoted and reversed_.champion_version is None
    assert reversed_.challenger_score < reversed_.baseline_score
    assert "not better than the popularity baseline" in reversed_.reason
    assert registry.alias_version(tracking_uri, "ncf", "champion") is None
    tags = registry.client(tracking_uri).get_model_version("ncf", reversed_.version).tags
    assert tags["gate"] == "rejected" and tags["gate.baseline"] == "popularity"
    assert float(tags["gate.baseline_score"]) == pytest.approx(reversed_.baseline_score, abs=1e-6)
    report_dir = root / "reports" / "gate" / f"ncf-v{reversed_.version}"
    report = json.loads((report_dir / "gate.json").read_text())
    assert report["baseline_score"] == pytest.approx(report["baseline_metrics"]["ndcg@10"])
    assert report["min_baseline_gain"] == 0.0 and report["challenger_candidates"] is None
    assert {"hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10", "full_eval_users"} <= set(report["baseline_metrics"])
    page = (report_dir / "gate.html").read_text()
    assert "REJECTED" in page and "<th>baseline (popularity)</th>" in page and "Model selection" not in page

    # Popularity's own ranking, shipped as an NCF package, ties the baseline: not promoted by default.
    tie = gated("popularity")
    assert not tie.promoted and tie.challenger_score == pytest.approx(tie.baseline_score)

    # A champion from before the baseline rule (admitted here by an explicit negative margin).
    tolerated = gated("reversed", min_baseline_gain=-1.0)
    assert tolerated.promoted and "first model" in tolerated.reason

    assert gate.main(["--model-uri", packages["random"], "--partition-uri", partition.uri]) == 0
    line = capsys.readouterr().out
    version = registry.alias_version(tracking_uri, "ncf", "challenger")
    random_ = registry.client(tracking_uri).get_model_version("ncf", version.version).tags
    challenger, champion, baseline = (float(random_[f"gate.{role}_score"])
                                      for role in ("challenger", "champion", "baseline"))
    assert champion < challenger < baseline  # beats the champion, not popularity
    assert random_["gate"] == "rejected" and "not better than the popularity baseline" in random_["gate.reason"]
    assert f"popularity baseline {baseline:.4f}" in line and "not promoted" in line
    assert str(registry.alias_version(tracking_uri, "ncf", "champion").version) == tolerated.version

    margin = gated("oracle", min_baseline_gain=0.99)
    assert not margin.promoted and "below min_baseline_gain 0.9900" in margin.reason
    assert margin.challenger_score > margin.baseline_score > margin.champion_score

    best = gated("oracle")
    assert best.promoted and best.challenger_score > best.baseline_score > best.champion_score
    assert f"over the popularity baseline {best.baseline_score:.4f}" in best.reason
    assert str(registry.alias_version(tracking_uri, "ncf", "champion").version) == best.version


def test_gate_refuses_a_non_finite_min_baseline_gain(store, capsys):
    _, partition, packages = store
    assert gate.main(["--model-uri", packages["medium"], "--partition-uri", partition.uri,
                      "--min-baseline-gain", "nan"]) == 2
    assert "min_baseline_gain" in capsys.readouterr().err


# ---- real gate runs (sqlite MLflow, local storage) -------------------------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A storage root with one partition and packages of known quality (noise: lower is better)."""
    root = tmp_path_factory.mktemp("gate-root")
    partition = make_partition(num_users=60, num_items=120, uri=str(root / "data" / "dt=2026-11-27"))
    write_partition(partition, partition.uri)
    packages = {}
    for name, noise, seed in [("medium", 1.2, 0), ("worse", 3.0, 1), ("better", 0.5, 2), ("medium_copy", 1.2, 0)]:
        packages[name] = make_package(str(root / "models" / name), partition, oracle_model(partition, noise, seed))
    return root, partition, packages


def _gate(store, package: str, **overrides) -> gate.GateResult:
    root, partition, packages = store
    config = gate.GateConfig(model_uri=packages[package], partition_uri=partition.uri, pipeline_run_id="run-42",
                             **overrides)
    return gate.run(config)


def test_gate_sequence_aliases_tags_and_reports(store):
    root, partition, _ = store
    tracking_uri = registry.default_tracking_uri(root)

    below = _gate(store, "medium", floor=0.99)
    assert not below.promoted and "floor" in below.reason
    assert registry.alias_version(tracking_uri, "ncf", "champion") is None
    assert str(registry.alias_version(tracking_uri, "ncf", "challenger").version) == below.version

    first = _gate(store, "medium")
    assert first.promoted and first.champion_version is None and "first model" in first.reason
    assert str(registry.alias_version(tracking_uri, "ncf", "champion").version) == first.version

    worse = _gate(store, "worse")
    assert not worse.promoted and worse.champion_version == first.version
    assert worse.challenger_score < worse.champion_score
    assert str(registry.alias_version(tracking_uri, "ncf", "champion").version) == first.version
    assert str(registry.alias_version(tracking_uri, "ncf", "challenger").version) == worse.version

    equal = _gate(store, "medium_copy")
    assert not equal.promoted and equal.challenger_score == equal.champion_score

    too_small = _gate(store, "better", min_delta=0.9)
    assert not too_small.promoted and "min_delta" in too_small.reason

    better = _gate(store, "better", min_delta=0.01)
    assert better.promoted and better.challenger_score > better.champion_score
    champion = registry.alias_version(tracking_uri, "ncf", "champion")
    assert str(champion.version) == better.version

    tags = champion.tags
    assert tags["gate"] == "passed" and tags["gate.champion_version"] == first.version
    assert float(tags["gate.challenger_score"]) == pytest.approx(better.challenger_score, abs=1e-6)
    assert tags["partition_uri"] == partition.uri and tags["run_date"] == "2026-11-27"
    assert tags["pipeline_run_id"] == "run-42" and tags["hp.factor_num"] == "32"
    assert {"eval.ndcg_at_10", "eval.hr_at_10", "eval.full_ndcg_at_10", "eval.full_hr_at_10"} <= {
        k.removeprefix("metric.") for k in tags}
    rejected = registry.client(tracking_uri).get_model_version("ncf", worse.version).tags
    assert rejected["gate"] == "rejected" and "not better" in rejected["gate.reason"]

    report = json.loads((root / "reports" / "gate" / f"ncf-v{better.version}" / "gate.json").read_text())
    assert report["promoted"] and report["champion_version"] == first.version
    html = (root / "reports" / "gate" / f"ncf-v{better.version}" / "gate.html").read_text()
    assert "PROMOTED" in html and "ndcg@10" in html


def test_gate_never_moves_champion_to_a_worse_model(store):
    """Whatever order challengers arrive in, the champion's score on the same data never goes down."""
    root, partition, _ = store
    tracking_uri = registry.default_tracking_uri(root / "order")
    best = -1.0
    for name in ["worse", "better", "medium", "worse"]:
        result = _gate(store, name, tracking_uri=tracking_uri, report_uri=str(root / "order-reports" / name))
        champion_score = result.challenger_score if result.promoted else result.champion_score
        assert champion_score >= best
        if result.promoted:
            assert result.champion_score is None or result.challenger_score > result.champion_score
        best = champion_score


def test_gate_rejects_bad_input(store, capsys):
    root, partition, packages = store
    assert gate.main(["--model-uri", str(root / "models" / "missing"), "--partition-uri", partition.uri]) == 2
    assert "no such model package" in capsys.readouterr().err
    assert gate.main(["--model-uri", packages["medium"], "--gate-metric", "auc"]) == 2
    assert "gate_metric" in capsys.readouterr().err
    assert gate.main(["--model-uri", packages["medium"], "--min-delta", "-1"]) == 2
    assert "min_delta" in capsys.readouterr().err


# ---- concurrent gates: several processes at once, real stores, repeated tries ------------------------------------


@pytest.fixture(scope="module")
def race(tmp_path_factory):
    """A partition, a weak first champion and three challengers of known, different quality (full_ndcg@10)."""
    from ncf.package import load_package

    root = tmp_path_factory.mktemp("race-root")
    partition = make_partition(num_users=60, num_items=120, uri=str(root / "data" / "dt=2026-11-27"))
    write_partition(partition, partition.uri)
    uris = [make_package(str(root / "models" / f"noise-{noise}"), partition, oracle_model(partition, noise, seed))
            for seed, noise in enumerate((6.0, 4.0, 3.0, 2.0))]
    scores = gate.score_packages([load_package(u) for u in uris], partition, "full_ndcg@10")
    known = {uri: s.metrics["full_ndcg@10"] for uri, s in zip(uris, scores, strict=True)}
    assert len(set(known.values())) == len(known), "the challengers must be distinguishable"
    return partition, uris, known


def _race(race, tracking_uri: str, workdir, challengers: list[str], model_name: str = "ncf", env=None) -> None:
    """Gate the weakest package first, then `challengers` all at once; check the never-worse property."""
    partition, uris, known = race

    def config(uri: str, name: str) -> dict:
        return {"model_uri": uri, "partition_uri": partition.uri, "tracking_uri": tracking_uri,
                "model_name": model_name, "gate_metric": "full_ndcg@10", "report_uri": str(workdir / "reports" / name),
                "lock_timeout_s": 300.0}

    first = gate.run(gate.GateConfig(**config(uris[0], "first")))
    assert first.promoted and first.challenger_score == pytest.approx(known[uris[0]])
    results = run_concurrent_gates([config(uri, f"c{i}") for i, uri in enumerate(challengers)], workdir / "procs",
                                   env=env)
    for result in results:
        assert result["score"] == pytest.approx(known[result["model_uri"]])
    assert_gates_serialised(results, (first.version, first.challenger_score),
                            registry.alias_version(tracking_uri, model_name, registry.CHAMPION))


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(2))
def test_concurrent_gates_on_sqlite_never_leave_a_worse_champion(race, tmp_path, attempt):
    """Three gates at once on one sqlite store (the failure: all compared against v1, all "promoted", and the last
    alias move won, whichever model that was)."""
    _, uris, _ = race
    _race(race, registry.default_tracking_uri(tmp_path), tmp_path, uris[1:])


@pytest.mark.slow
@pytest.mark.parametrize("attempt", range(2))
def test_concurrent_gates_on_the_postgres_server_never_leave_a_worse_champion(
        race, tmp_path, attempt, mlflow_server, moto_server, monkeypatch):  # noqa: F811
    """Two gates at once through `mlflow server` on PostgreSQL (S3 artifacts): the gate has only the HTTP URI."""
    import os

    env = s3_env(moto_server)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    _, uris, _ = race
    _race(race, mlflow_server[0], tmp_path, [uris[3], uris[1]], model_name=f"ncf-race-{attempt}",
          env={**os.environ, **env})


# ---- immutable inputs: a package's training partition rewritten under it ---------------------------------------


def test_gate_reports_a_training_partition_rewritten_under_the_champion(tmp_path):
    """The champion was trained on dt=2026-11-27; that date is re-run (--overwrite) and a challenger trained on the
    new data: the gate scores both on it, and says the champion's partition is not the data it was trained on."""
    import shutil

    day = str(tmp_path / "data" / "dt=2026-11-27")
    before = make_partition(num_users=60, num_items=120, seed=5, uri=day)
    before.stats["fingerprint"] = "sha256:aaaa"
    write_partition(before, day)
    champion = make_package(str(tmp_path / "models" / "before"), before, oracle_model(before, 3.0, 0),
                            extra={"partition_fingerprint": "sha256:aaaa"})
    first = gate.run(gate.GateConfig(model_uri=champion))
    assert first.promoted and first.training_partitions["challenger"].status == "unchanged"
    assert "changed" not in first.reason

    rerun = make_partition(num_users=60, num_items=120, seed=6, uri=day)
    rerun.stats["fingerprint"] = "sha256:bbbb"
    shutil.rmtree(day)
    write_partition(rerun, day)
    challenger = make_package(str(tmp_path / "models" / "after"), rerun, oracle_model(rerun, 1.0, 1),
                              extra={"partition_fingerprint": "sha256:bbbb"})
    result = gate.run(gate.GateConfig(model_uri=challenger))

    checks = result.training_partitions
    assert checks["challenger"] == gate.PartitionCheck("unchanged", day, "sha256:bbbb", "sha256:bbbb",
                                                       "the data it was trained on")
    assert (checks["champion"].status, checks["champion"].recorded, checks["champion"].current) == (
        "changed", "sha256:aaaa", "sha256:bbbb")
    assert "champion's training partition changed" in result.reason and "never saw" in result.reason
    tags = registry.client(registry.default_tracking_uri(tmp_path)).get_model_version("ncf", result.version).tags
    assert tags["gate.champion_partition"] == "changed" and tags["gate.challenger_partition"] == "unchanged"
    assert "champion's training partition changed" in tags["gate.reason"]
    report_dir = tmp_path / "reports" / "gate" / f"ncf-v{result.version}"
    report = json.loads((report_dir / "gate.json").read_text())
    assert report["training_partitions"]["champion"]["status"] == "changed"
    assert "champion changed" in (report_dir / "gate.html").read_text()


@pytest.mark.parametrize(("package_fp", "partition_fp", "detail"), [
    (None, None, "no fingerprint in the package"),
    (None, "sha256:aaaa", "no fingerprint in the package"),
    ("sha256:aaaa", None, "no fingerprint in the partition's stats.json"),
])
def test_missing_fingerprints_mean_unknown(tmp_path, package_fp, partition_fp, detail):
    """Packages and partitions from before fingerprints: "unknown", never an error."""
    from ncf.data import load_partition
    from ncf.package import load_package

    partition = make_partition(uri=str(tmp_path / "data" / "dt=2026-11-27"))
    if partition_fp:
        partition.stats["fingerprint"] = partition_fp
    write_partition(partition, partition.uri)
    extra = {"partition_fingerprint": package_fp} if package_fp else {}
    package = load_package(make_package(str(tmp_path / "models" / "m"), partition, oracle_model(partition, 1.0),
                                        extra=extra))
    check = gate.check_training_partition(package, load_partition(partition.uri))
    assert check.status == "unknown" and detail in check.detail
    # Scored on another partition: the training one is read from storage; gone, that is "unknown" too.
    other = make_partition(uri=str(tmp_path / "data" / "dt=2026-11-28"))
    assert gate.check_training_partition(package, other).status == "unknown"
    (tmp_path / "data" / "dt=2026-11-27" / "_SUCCESS").unlink()
    gone = gate.check_training_partition(package, other)
    assert gone.status == "unknown" and "gone or incomplete" in gone.detail


def test_training_partition_read_from_storage_when_scored_elsewhere(tmp_path):
    from ncf.package import load_package

    old = make_partition(uri=str(tmp_path / "data" / "dt=2026-11-26"))
    old.stats["fingerprint"] = "sha256:1111"
    write_partition(old, old.uri)
    package = load_package(make_package(str(tmp_path / "models" / "m"), old, oracle_model(old, 1.0),
                                        extra={"partition_fingerprint": "sha256:1111"}))
    newest = make_partition(uri=str(tmp_path / "data" / "dt=2026-11-27"))
    assert gate.check_training_partition(package, newest).status == "unchanged"
    stats = json.loads((tmp_path / "data" / "dt=2026-11-26" / "stats.json").read_text())
    (tmp_path / "data" / "dt=2026-11-26" / "stats.json").write_text(json.dumps({**stats, "fingerprint": "x"}))
    assert gate.check_training_partition(package, newest).status == "changed"
