"""Model selection (ncf/selection.py, the train step's --candidates): chosen on the validation split only."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ncf import registry, selection
from ncf.data import Partition
from ncf.errors import UserError
from ncf.families.base import FitContext, Runtime
from ncf.package import load_package
from ncf.splits import fit_data
from ncf.train import DEFAULT_CANDIDATES, TrainConfig, run
from tests.tiny_data import make_partition, write_partition

# Small NCF settings for the tiny partitions (NCF candidates train in seconds).
SMALL_NCF = dict(epochs=3, batch_size=64, factor_num=8, num_layers=2, patience=2, ensemble=1, lr=0.01)


def clustered_partition(seed: int = 0, uri: str = "memory://clustered") -> Partition:
    """Users in 3 taste groups, each interacting only with its group's 30 items (one in ten from anywhere): an
    item-item model (EASE) ranks the held-out items far above popularity."""
    rng = np.random.default_rng(seed)
    num_users, num_items, groups, per_user = 60, 90, 3, 9
    width = num_items // groups
    train_u, train_i, test_i, negs = [], [], [], []
    for u in range(num_users):
        group = u % groups
        own = rng.choice(np.arange(group * width, (group + 1) * width), per_user + 1, replace=False)
        train_u += [u] * per_user
        train_i += own[:per_user].tolist()
        test_i.append(own[per_user])
        others = np.setdiff1d(np.arange(num_items), own)
        negs.append(rng.choice(others, 20, replace=False))
    return Partition(
        uri=uri, train_users=np.asarray(train_u, dtype=np.int32), train_items=np.asarray(train_i, dtype=np.int32),
        train_ts=np.tile(np.arange(per_user, dtype=np.int64), num_users) * 100 + rng.integers(0, 50, len(train_u)),
        test_users=np.arange(num_users, dtype=np.int32), test_items=np.asarray(test_i, dtype=np.int32),
        test_negatives=np.asarray(negs, dtype=np.int32),
        user_ids=np.asarray([f"u{u}" for u in range(num_users)], dtype=object),
        item_ids=np.asarray([f"i{i}" for i in range(num_items)], dtype=object),
        stats={"schema_version": 1, "num_users": num_users, "num_items": num_items, "run_date": "2026-11-27"})


def with_other_test_split(partition: Partition, seed: int) -> Partition:
    """The same training rows; every user's test item and test negatives replaced by other items it never had."""
    rng = np.random.default_rng(seed)
    test_items, negatives = [], []
    for u in partition.test_users:
        unseen = np.setdiff1d(np.arange(partition.num_items), partition.train_items[partition.train_users == u])
        unseen = unseen[unseen != partition.test_items[u]]  # a different test item for every user
        drawn = rng.choice(unseen, 1 + partition.test_negatives.shape[1], replace=False)
        test_items.append(drawn[0])
        negatives.append(drawn[1:])
    return dataclasses.replace(partition, test_items=np.asarray(test_items, dtype=np.int32),
                               test_negatives=np.asarray(negatives, dtype=np.int32))


def _select(partition: Partition, candidates: str, memory_budget: int = 0, **config):
    values = {"partition_uri": "unused", "output_uri": "unused", "progress": "off", **SMALL_NCF, **config}
    train_config = TrainConfig(**values)
    context = FitContext(Runtime(torch.device("cpu")), seed=train_config.seed, top_k=10, memory_budget=memory_budget)
    data = fit_data(partition, validation=True, seed=train_config.seed)
    return selection.select(data, selection.parse_candidates(candidates, train_config.model), train_config, context,
                            {"ncf": train_config.tune_trials_ncf, "*": train_config.tune_trials},
                            blend=train_config.blend)


def test_selection_chooses_the_best_validation_candidate():
    picked = _select(clustered_partition(), "popularity,ials,ease", tune_trials=4, blend="off")
    summary = picked.summary()
    scores = {name: c["val_ndcg@10"] for name, c in summary["candidates"].items()}
    assert summary["chosen"] == max(scores, key=scores.get)
    assert summary["chosen"] in ("ease", "ials") and scores["popularity"] < scores[summary["chosen"]] - 0.2, summary
    assert summary["candidates"]["popularity"]["trials"] == 1  # nothing to tune
    # 4 trials of the search, then the best of them with each other recency weight (the family's refinements)
    assert summary["candidates"]["ease"]["trials"] == 4 + 3 and set(summary["candidates"]["ease"]["settings"]) == {
        "ease_lambda", "ease_recency_weight"}
    assert set(summary["candidates"]["ials"]["settings"]) == {"ials_factors", "ials_regularization", "ials_alpha",
                                                              "ials_recency_weight"}
    # each candidate's best is the best of its trials, and trial 0 fits the configured settings
    for result in picked.candidates:
        assert result.best.val_ndcg == max(t.val_ndcg for t in result.trials)
        assert result.trials[0].params == {}
    json.dumps(summary)  # what metrics.json / config.json record


def test_refinements_try_each_recency_weight_on_the_best_settings_of_the_search():
    picked = _select(clustered_partition(), "ease", tune_trials=4, blend="off")
    (ease,) = picked.candidates
    search, refinements = ease.trials[:4], ease.trials[4:]
    best_lambda = max(search, key=lambda t: t.val_ndcg).params.get("ease_lambda", 500.0)
    assert [t.params for t in refinements] == [{"ease_lambda": best_lambda, "ease_recency_weight": w}
                                               for w in (4.0, 16.0, 64.0)]
    assert ease.best.val_ndcg == max(t.val_ndcg for t in ease.trials)
    assert ease.settings.ease_recency_weight == (ease.best.params.get("ease_recency_weight", 0.0))
    # one trial is the configured settings only: no search, so nothing to refine
    (alone,) = _select(clustered_partition(), "ease", tune_trials=1, blend="off").candidates
    assert [t.params for t in alone.trials] == [{}]


def _without_seconds(summary: dict) -> dict:
    return {**summary, "candidates": {name: {k: v for k, v in c.items() if k != "seconds"}
                                      for name, c in summary["candidates"].items()}}


def test_the_test_split_changes_no_choice():
    """Acceptance (issue 11): replacing every test row changes neither the chosen candidate nor its settings --
    nor any trial's validation score, nor the blend's weights: nothing in selection reads the test rows."""
    partition = make_partition(num_users=40, num_items=80, per_user=10, seed=3)
    other = with_other_test_split(partition, seed=9)
    assert (other.test_items != partition.test_items).all()
    runs = [_select(p, "GMF,ease,ials,popularity", tune_trials=2, tune_trials_ncf=2, epochs=2, blend="on")
            for p in (partition, other)]
    assert _without_seconds(runs[0].summary()) == _without_seconds(runs[1].summary())
    assert runs[0].summary()["candidates"]["blend"]["settings"]  # the weights, compared above
    for a, b in zip(runs[0].candidates, runs[1].candidates, strict=True):
        assert [(t.params, t.val_ndcg, t.val_hr) for t in a.trials] == [(t.params, t.val_ndcg, t.val_hr)
                                                                        for t in b.trials]


def test_train_step_exports_the_chosen_model_and_records_the_candidates(tmp_path, capsys):
    partition = clustered_partition(uri=str(tmp_path / "data" / "dt=2026-11-27"))
    uri = write_partition(partition, partition.uri)
    result = run(TrainConfig(partition_uri=uri, output_uri=str(tmp_path / "models" / "m"), candidates="popularity,ease",
                             tune_trials=3, progress="off", blend="off"))
    summary = result.metrics["candidates"]
    assert summary["chosen"] == "ease" and result.metrics["family"] == "ease"
    package = load_package(result.model_uri)
    assert package.family == "ease" and package.metrics["candidates"] == summary == package.config["candidates"]
    # the exported EASE has the winning trial's lambda, and the package's hyperparameters say so
    chosen_lambda = summary["candidates"]["ease"]["settings"]["ease_lambda"]
    assert package.config["ease_lambda"] == package.config["hyperparameters"]["ease_lambda"] == chosen_lambda
    assert package.config["hyperparameters"]["family"] == "ease"
    err = capsys.readouterr().err
    assert "[select] popularity: best validation" in err and "[select] ease: best validation" in err
    assert "[select] best alone: ease" in err and "[select] blend" not in err


def test_trials_are_mlflow_child_runs(tmp_path):
    partition = clustered_partition(uri=str(tmp_path / "data" / "dt=2026-11-27"))
    uri = write_partition(partition, partition.uri)
    tracking_uri = registry.default_tracking_uri(tmp_path)
    result = run(TrainConfig(partition_uri=uri, output_uri=str(tmp_path / "models" / "m"),
                             candidates="GMF,ease,popularity", tune_trials=2, tune_trials_ncf=2, progress="off",
                             tracking_uri=tracking_uri, **{**SMALL_NCF, "epochs": 2}))
    client = registry.client(tracking_uri)
    parent = client.get_run(result.mlflow_run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'",
                                  order_by=["attributes.start_time ASC"])
    assert [(c.data.tags["candidate"], c.data.params["trial"]) for c in children] == [
        ("GMF", "0"), ("GMF", "1"), *[("ease", str(n)) for n in range(2 + 3)], ("popularity", "0")]
    summary = result.metrics["candidates"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert {"val_ndcg_at_10", "val_hr_at_10", "value"} <= set(child.data.metrics)
        assert child.data.metrics["value"] == child.data.metrics["val_ndcg_at_10"]
        assert not any(k in child.data.metrics for k in ("hr", "ndcg", "gmf_hr")), "a trial logged test metrics"
    ease = [c for c in children if c.data.tags["candidate"] == "ease"]
    assert max(c.data.metrics["val_ndcg_at_10"] for c in ease) == summary["candidates"]["ease"]["val_ndcg@10"]
    assert {"ease_lambda"} <= set(ease[1].data.params)  # a tuned trial records its settings
    # the parent: core settings, then the chosen family's; the summary as an artifact
    assert parent.data.params["candidates"] == "GMF,ease,popularity"
    assert parent.data.params["family"] == result.metrics["family"]
    assert parent.data.tags["chosen_candidate"] == summary["chosen"]
    artifact = Path(client.download_artifacts(result.mlflow_run_id, "candidates.json", str(tmp_path / "dl")))
    assert json.loads(artifact.read_text()) == json.loads(json.dumps(summary))


def test_bad_candidates_name_the_field_and_the_allowed_names(monkeypatch):
    config = dict(partition_uri="never-read", output_uri="unused")
    with pytest.raises(UserError, match=r"candidates: unknown candidate 'lightgcn'; allowed: ncf, ease, ials, "
                                        r"popularity, GMF, MLP, NeuMF"):
        run(TrainConfig(**config, candidates="ease,lightgcn"))
    with pytest.raises(UserError, match="candidates: 'ncf' and 'NeuMF' name the same model"):
        run(TrainConfig(**config, candidates="ncf,NeuMF", model="NeuMF"))
    with pytest.raises(UserError, match="candidates: no candidate"):
        run(TrainConfig(**config, candidates=" , "))
    with pytest.raises(UserError, match="patience: 0 leaves no validation split"):
        run(TrainConfig(**config, candidates="GMF,ease", patience=0))
    with pytest.raises(UserError, match="tune_trials"):
        run(TrainConfig(**config, tune_trials=0))
    with pytest.raises(UserError, match="blend: 'maybe', expected auto, on or off"):
        run(TrainConfig(**config, blend="maybe"))
    assert [c.name for c in selection.parse_candidates("gmf, EASE", "NeuMF")] == ["GMF", "ease"]
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun
    with pytest.raises(UserError, match="candidates: model selection runs in one process, not under torchrun"):
        run(TrainConfig(**config))


def test_the_default_candidates_train_ncf(tmp_path):
    defaults = TrainConfig(partition_uri="p", output_uri="o")
    assert defaults.candidates == DEFAULT_CANDIDATES
    parsed = selection.parse_candidates(defaults.candidates, defaults.model)
    assert any(c.family == "ncf" for c in parsed)
    partition = make_partition(num_users=30, num_items=60, per_user=8, uri=str(tmp_path / "data" / "dt=2026-11-27"))
    uri = write_partition(partition, partition.uri)
    result = run(TrainConfig(partition_uri=uri, output_uri=str(tmp_path / "models" / "m"), progress="off",
                             tune_trials=2, tune_trials_ncf=2, **SMALL_NCF))
    ncf = [name for c, name in zip(parsed, [c.name for c in parsed], strict=True) if c.family == "ncf"]
    summary = result.metrics["candidates"]
    assert set(summary["candidates"]) == {c.name for c in parsed} | {"blend"}  # --blend auto: weights chosen
    for name in ncf:  # NCF was trained (its trials fitted and scored on validation), whichever won
        assert summary["candidates"][name]["trials"] == 2 and summary["candidates"][name]["val_ndcg@10"] > 0


def test_a_chosen_ncf_continues_from_its_trial_and_equals_a_plain_run(tmp_path, capsys):
    """The final fit reuses the winning trial's selection pass: the package is the one a plain run of the chosen
    settings exports (CPU runs are bit-identical), and no trial's epoch line reaches stdout."""
    partition = make_partition(num_users=30, num_items=60, per_user=8, uri=str(tmp_path / "data" / "dt=2026-11-27"))
    uri = write_partition(partition, partition.uri)
    common = dict(partition_uri=uri, progress="off", **{**SMALL_NCF, "ensemble": 2}, refit=True)
    selected = run(TrainConfig(output_uri=str(tmp_path / "models" / "selected"), candidates="GMF",
                               tune_trials_ncf=1, **common))
    selected_out = capsys.readouterr().out
    plain = run(TrainConfig(output_uri=str(tmp_path / "models" / "plain"), candidates="", model="GMF", **common))
    plain_out = capsys.readouterr().out
    a, b = load_package(selected.model_uri), load_package(plain.model_uri)
    assert a.weights.keys() == b.weights.keys()
    for name in a.weights:
        assert (a.weights[name] == b.weights[name]).all(), name
    for key in ("hr@10", "ndcg@10", "val_ndcg@10", "refit_epochs"):
        assert selected.metrics[key] == plain.metrics[key], key
    # stdout (the dashboards' metric lines) carries the exported model's lines only, as in the plain run
    assert selected_out == plain_out


def test_a_candidate_that_cannot_fit_drops_out_and_the_others_compete(capsys):
    """EASE over the memory budget (its N x N matrices) is skipped with the reason; popularity (no estimate) wins."""
    picked = _select(clustered_partition(), "ease,popularity", memory_budget=4096, tune_trials=2)
    summary = picked.summary()
    assert summary["chosen"] == "popularity"
    ease = summary["candidates"]["ease"]
    assert ease["trials"] == 2 and "settings" not in ease and len(ease["failed"]) == 2
    assert "over the memory budget" in ease["failed"][0]
    assert "[select] ease: every trial failed" in capsys.readouterr().err
    with pytest.raises(UserError, match="candidates: every candidate failed to fit: ease: trial 0"):
        _select(clustered_partition(), "ease", memory_budget=4096, tune_trials=1)


def test_a_family_named_alone_turns_the_default_candidates_off(tmp_path):
    partition = clustered_partition(uri=str(tmp_path / "data" / "dt=2026-11-27"))
    partition_uri = write_partition(partition, partition.uri)
    result = run(TrainConfig(partition_uri=partition_uri, output_uri=str(tmp_path / "ease"), family="ease",
                             progress="off"))
    assert result.metrics["family"] == "ease" and "candidates" not in result.metrics
    with pytest.raises(UserError, match="family 'ease' and candidates 'GMF,ials': choose one"):
        run(TrainConfig(partition_uri=partition_uri, output_uri=str(tmp_path / "both"), family="ease",
                        candidates="GMF,ials", progress="off"))
    assert not (tmp_path / "both").exists()


def _scored(name: str, scores: np.ndarray, k: int = 1) -> selection.CandidateResult:
    """A candidate whose best trial scored the validation rows' candidates as `scores` [rows, 1 + negatives]."""
    hit, ndcg = selection._hit_ndcg(scores, k)
    best = selection.Trial(0, {}, hit, ndcg, 0.0)
    return selection.CandidateResult(selection.Candidate(name, name), None, {}, best, [best], [], 0.0,
                                     val_scores=scores)


def test_a_blend_of_members_right_on_different_rows_beats_each_alone():
    """Each member ranks half the rows' held-out items first and the other half at random: weighed together they
    beat both alone (exported under auto); next to a member right on every row the blend gains nothing (not
    exported under auto, exported under on)."""
    rng = np.random.default_rng(0)
    rows, half = 400, 200
    first, second = rng.normal(size=(rows, 10)), rng.normal(size=(rows, 10))
    first[:half, 0] += 3.0
    second[half:, 0] += 3.0
    every = np.arange(rows)
    choice = selection.choose_blend([_scored("first", first), _scored("second", second)], every, 1, "auto")
    assert choice.used and [m.candidate.name for m in choice.members] == ["first", "second"]
    assert choice.val_ndcg > choice.best_alone + 0.1 and all(w > 0 for w in choice.weights)
    assert sum(choice.weights) == pytest.approx(1.0) and choice.grid_points == 11
    perfect = rng.normal(size=(rows, 10))
    perfect[:, 0] = 10.0
    members = [_scored("perfect", perfect), _scored("first", first)]
    assert not selection.choose_blend(members, every, 1, "auto").used
    assert selection.choose_blend(members, every, 1, "on").used
    assert selection.choose_blend(members[:1], every, 1, "on") is None  # one candidate: nothing to blend


def test_the_train_step_exports_a_blend_of_what_each_member_exports_alone(tmp_path, capsys):
    """--blend on: the package's scores are the weighted sum of the models each member's family exports alone with
    the settings selection chose for it (each divided by its scale); the summary, config and metric line say so."""
    partition = make_partition(num_users=40, num_items=80, per_user=10, seed=3,
                               uri=str(tmp_path / "data" / "dt=2026-11-27"))  # where both members get weight
    uri = write_partition(partition, partition.uri)
    result = run(TrainConfig(partition_uri=uri, output_uri=str(tmp_path / "models" / "blend"), candidates="ease,ials",
                             tune_trials=2, blend="on", progress="off"))
    metric_lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("HR=")]
    assert metric_lines[-1] == f"HR={result.metrics['hr@10']:.4f}; NDCG={result.metrics['ndcg@10']:.4f};"
    summary = result.metrics["candidates"]
    assert summary["chosen"] == "blend" and summary["candidates"]["blend"]["exported"]
    package = load_package(result.model_uri)
    assert package.family == "blend" == result.metrics["family"]
    members = package.config["members"]
    assert {m["name"]: m["weight"] for m in members} == summary["candidates"]["blend"]["settings"]
    assert [m["family"] for m in members] == ["ease", "ials"]
    assert sum(m["weight"] for m in members) == pytest.approx(1.0)
    users = torch.arange(partition.num_users)
    expected = torch.zeros(partition.num_users, partition.num_items)
    for member in members:
        alone = run(TrainConfig(partition_uri=uri, output_uri=str(tmp_path / "models" / member["name"]),
                                family=member["name"], candidates="", progress="off",
                                **summary["candidates"][member["name"]]["settings"]))
        assert member["coefficient"] == pytest.approx(member["weight"] / member["scale"])
        expected += member["coefficient"] * load_package(alone.model_uri).scorer.score_all(users)
    torch.testing.assert_close(package.scorer.score_all(users), expected, rtol=1e-5, atol=1e-5)


def test_a_nan_held_out_score_is_a_miss_in_the_blend_rows():
    """A model that scores NaN must not look perfect when the blend's rows are ranked (evaluation ranks NaN last)."""
    from ncf.splits import HeldOut

    class NanScorer:
        device = torch.device("cpu")

        def score_candidates(self, users, items):
            return torch.full(items.shape, float("nan"))

    held_out = HeldOut(np.arange(4, dtype=np.int32), np.zeros(4, dtype=np.int32), np.ones((4, 5), dtype=np.int32))
    scores = selection.validation_scores(NanScorer(), held_out, np.arange(4))
    assert np.isneginf(scores).all() and selection._hit_ndcg(scores, 1) == (0.0, 0.0)
