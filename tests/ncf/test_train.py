from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

from ncf import train
from ncf.contracts import metric_line
from ncf.errors import UserError
from ncf.families.ncf import load_model
from ncf.package import load_package
from ncf.sampling import recency_rank
from ncf.splits import Interactions
from ncf.train import TrainConfig, apply_preset, main, run
from tests.tiny_data import make_partition, write_partition

SEED_REGEXES = [r"HR=(.*?);", r"NDCG=(.*?);", r"Loss=(.*?);"]  # the seed dashboard's metric definitions
FAST = ["--epochs", "3", "--batch-size", "64", "--factor-num", "8", "--num-layers", "2", "--progress", "off",
        "--candidates", ""]
# Pretrained NeuMF with a refit pass; on the tiny partition every selection stage stops early and selects an
# epoch before its last one (the kill points below rely on it, so the sampling and weighting are pinned).
REFIT = dict(pretrain=True, refit=True, epochs=8, patience=1, lr=0.01, num_neg=4, weight_decay=0.0,
             recency_weight=4.0, recency_power=1.0)
TIMING = ("train_seconds", "samples_per_second")


def _config(partition_uri, output, **overrides) -> TrainConfig:
    values = dict(partition_uri=partition_uri, output_uri=str(output), epochs=3, batch_size=64, factor_num=8,
                  num_layers=2, patience=2, ensemble=1, progress="off", candidates="")
    values.update(overrides)
    return TrainConfig(**values)


def _weights(uri):
    return load_package(uri).weights


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _without_timing(metrics):
    return {k: v for k, v in metrics.items() if k not in TIMING}


def _record_epochs(monkeypatch) -> dict[str, list]:
    """Every epoch record, by stage label (`GMF`, ..., `NeuMF-refit`), in training order."""
    by_stage: dict[str, list] = {}
    monkeypatch.setattr(train, "_after_epoch",
                        lambda stage, epoch, record: by_stage.setdefault(stage, []).append(record))
    return by_stage


def test_cli_prints_seed_metric_lines_and_exports_a_package(tiny_partition_uri, tmp_path, capsys):
    out = tmp_path / "models" / "run-1"
    assert main(["--partition-uri", tiny_partition_uri, "--output-uri", str(out), "--patience", "0", *FAST]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    # The default ensemble of 3: the last member's 3 epochs, then the exported ensemble's line.
    assert len(lines) == 4
    for line in lines:
        assert re.fullmatch(r"HR=0\.\d{4}; NDCG=0\.\d{4}; Loss=\d+\.\d{4};", line)
        assert all(0 <= float(re.search(rx, line).group(1)) for rx in SEED_REGEXES)
    pkg = load_package(out)
    assert pkg.config["model_type"] == "NeuMF" and pkg.config["hyperparameters"]["epochs"] == 3
    assert pkg.config["members"] == 3
    assert {"hr@10", "ndcg@10", "full_hr@10", "full_ndcg@10", "loss", "epochs"} <= set(pkg.metrics)
    assert pkg.metrics["epochs"] == 3
    assert lines[-1].startswith(f"HR={pkg.metrics['hr@10']:.4f}; NDCG={pkg.metrics['ndcg@10']:.4f};")
    assert sorted(p.name for p in (tmp_path / "models" / "run-1.checkpoint").iterdir()) == sorted(
        f"{stage}{member}.pt" for stage in ("GMF", "MLP", "NeuMF") for member in ("", "-m1", "-m2"))


def test_seed_preset_fills_only_defaulted_fields():
    config = apply_preset(TrainConfig(partition_uri="p", output_uri="o", preset="seed", epochs=4))
    assert (config.epochs, config.lr, config.batch_size, config.dropout, config.factor_num, config.num_layers,
            config.top_k, config.patience) == (4, 0.001, 256, 0.3, 32, 3, 10, 0)


def test_pipeline_parameters_are_the_seed_hyperparameters_plus_model_and_tracking():
    from ncf.config import pipeline_fields

    assert [f.name for f in pipeline_fields(TrainConfig)] == [
        "epochs", "lr", "batch_size", "top_k", "dropout", "factor_num", "num_layers", "model", "tracking_uri",
        "candidates", "blend", "tune_trials", "tune_trials_ncf"]


def test_same_seed_same_model(tiny_partition_uri, tmp_path):
    a = run(_config(tiny_partition_uri, tmp_path / "a", model="MLP"))
    b = run(_config(tiny_partition_uri, tmp_path / "b", model="MLP"))
    _assert_same_weights(_weights(a.model_uri), _weights(b.model_uri))
    assert a.metrics["hr@10"] == b.metrics["hr@10"]


class _Killed(Exception):
    pass


@pytest.mark.parametrize("overrides, kill_at", [
    (dict(pretrain=False), ("NeuMF", 2)),
    (dict(pretrain=True), ("MLP", 1)),
    (REFIT, ("NeuMF", 2)),  # the selection pass's last (early-stopped) epoch: the refit has not started
    (REFIT, ("GMF-refit", 1)),
    (REFIT, ("MLP-refit", 1)),  # GMF-refit is complete, MLP-refit (2 epochs) is not
    ({**REFIT, "ensemble": 2}, ("MLP-refit-m1", 1)),  # member 0 is complete, member 1 is not
], ids=["neumf", "pretrain", "refit-after-selection", "refit-gmf", "refit-mlp", "ensemble-member"])
def test_resume_after_kill_is_bit_identical(tiny_partition_uri, tmp_path, monkeypatch, overrides, kill_at):
    settings = {"epochs": 3, "patience": 5, **overrides}
    full = run(_config(tiny_partition_uri, tmp_path / "full", **settings))

    def kill(stage, epoch, record):
        if (stage, epoch) == kill_at:
            raise _Killed

    killed = _config(tiny_partition_uri, tmp_path / "resumed", **settings)
    monkeypatch.setattr(train, "_after_epoch", kill)
    with pytest.raises(_Killed):
        run(killed)
    assert not (tmp_path / "resumed").exists()  # nothing half-written
    monkeypatch.undo()
    resumed = run(TrainConfig(**{**killed.__dict__, "resume": True}))
    _assert_same_weights(_weights(full.model_uri), _weights(resumed.model_uri))
    assert _without_timing(full.metrics) == _without_timing(resumed.metrics)
    assert ("refit_epochs" in full.metrics) == (killed.refit and killed.patience > 0)


def test_resume_with_a_different_config_is_refused(tiny_partition_uri, tmp_path):
    run(_config(tiny_partition_uri, tmp_path / "m", epochs=1))
    with pytest.raises(UserError, match="different configuration"):
        run(_config(tiny_partition_uri, tmp_path / "m", epochs=1, lr=0.01, resume=True))


def test_resume_with_another_training_step_is_refused(tiny_partition_uri, tmp_path):
    """A checkpoint from a GPU / DDP run (autograd step) cannot continue on the CPU step: other optimizer state."""
    config = _config(tiny_partition_uri, tmp_path / "m", epochs=1, patience=0, model="GMF")
    run(config)
    ckpt = tmp_path / "m.checkpoint" / "GMF.pt"
    state = torch.load(ckpt, weights_only=False)
    assert state["step_kind"] == "cpu-lazy-adam"
    torch.save({**state, "step_kind": "autograd-adam"}, ckpt)
    with pytest.raises(UserError, match="written by the autograd-adam training step, this run uses the cpu-lazy-adam"):
        run(TrainConfig(**{**config.__dict__, "resume": True}))


def test_early_stopping_selects_on_validation(tiny_partition_uri, tmp_path, capsys):
    result = run(_config(tiny_partition_uri, tmp_path / "m", epochs=30, patience=1, lr=0.05))
    assert result.metrics["epochs"] < 30
    assert 1 <= result.metrics["best_epoch"] <= result.metrics["epochs"]
    assert "val_ndcg@10" in result.metrics
    assert "early stop" in capsys.readouterr().err


def test_pretrained_neumf(tiny_partition_uri, tmp_path, capsys):
    result = run(_config(tiny_partition_uri, tmp_path / "m", epochs=2, pretrain=True, refit=False))
    assert load_package(result.model_uri).config["model_type"] == "NeuMF"
    captured = capsys.readouterr()
    assert "[GMF] epoch 2/2" in captured.err and "[MLP] epoch 2/2" in captured.err
    assert "[NeuMF] epoch 2/2" in captured.err
    # Only the final NeuMF's epochs reach stdout, the seed dashboards' metric lines.
    assert 2 <= captured.out.count("HR=") <= 3


def test_mlflow_logging(tiny_partition_uri, tmp_path, monkeypatch):
    import mlflow

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    result = run(_config(tiny_partition_uri, tmp_path / "m", epochs=2, tracking_uri=tracking, experiment="t",
                         refit=True))
    client = mlflow.MlflowClient(tracking)
    mlflow_run = client.get_run(result.mlflow_run_id)
    assert mlflow_run.data.params["lr"] == "0.002" and mlflow_run.data.params["pretrain"] == "True"
    assert mlflow_run.data.params["refit"] == "True"

    def steps(key):
        return [m.step for m in client.get_metric_history(result.mlflow_run_id, key)]

    # The selection pass keeps its keys; the refit pass, which repeats its steps, logs under `refit_` ones.
    assert steps("gmf_hr") == [1, 2] and steps("hr") == [1, 2] and steps("val_ndcg") == [1, 2]
    for stage, epochs in result.metrics["refit_epochs"].items():
        prefix = "refit_" if stage == "NeuMF" else f"refit_{stage.lower()}_"
        assert steps(f"{prefix}hr") == steps(f"{prefix}loss") == list(range(1, epochs + 1)), stage
        assert steps(f"{prefix}val_ndcg") == []  # no validation split in the refit pass
    assert mlflow_run.data.metrics["full_hr_at_10"] == pytest.approx(result.metrics["full_hr@10"])
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id, "package")}
    assert "package/weights.safetensors" in artifacts
    # The run's artifacts sit beside the database, not in ./mlruns of the directory the step ran in.
    assert mlflow_run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    assert not (workdir / "mlruns").exists()
    assert load_package(result.model_uri).config["mlflow_run_id"] == result.mlflow_run_id
    assert "MLFLOW_TRACKING_URI" not in os.environ, "the store must not leak into later defaults"


def test_missing_or_incomplete_partition(tmp_path, tiny_partition, capsys):
    out = tmp_path / "models" / "m"
    assert main(["--partition-uri", str(tmp_path / "none"), "--output-uri", str(out), *FAST]) == 2
    assert "no such partition" in capsys.readouterr().err
    uri = write_partition(tiny_partition, tmp_path / "dt=2026-01-02")
    (tmp_path / "dt=2026-01-02" / "_SUCCESS").unlink()
    assert main(["--partition-uri", uri, "--output-uri", str(out), *FAST]) == 2
    assert "incomplete" in capsys.readouterr().err
    assert not out.exists()


def test_out_of_range_indices_are_refused(tmp_path, capsys):
    partition = make_partition()
    partition.train_items[5] = partition.num_items + 3
    uri = write_partition(partition, tmp_path / "dt=2026-01-03")
    assert main(["--partition-uri", uri, "--output-uri", str(tmp_path / "m"), *FAST]) == 2
    assert "train.item_idx out of range" in capsys.readouterr().err


def test_diverging_loss_is_a_clear_error(tiny_partition_uri, tmp_path, capsys):
    code = main(["--partition-uri", tiny_partition_uri, "--output-uri", str(tmp_path / "m"), *FAST,
                 "--lr", "1e38", "--patience", "0"])
    assert code == 2
    assert re.search(r"training loss is (nan|inf); lower --lr", capsys.readouterr().err)
    assert not (tmp_path / "m").exists()


def test_bad_hyperparameters(tiny_partition_uri, tmp_path, capsys):
    assert main(["--partition-uri", tiny_partition_uri, "--output-uri", str(tmp_path / "m"), "--batch-size", "0"]) == 2
    assert "batch_size: must be positive" in capsys.readouterr().err
    assert main(["--partition-uri", tiny_partition_uri, "--output-uri", str(tmp_path / "m"),
                 "--recency-power", "0"]) == 2
    assert "recency_power: must be positive" in capsys.readouterr().err
    gmf = run(_config(tiny_partition_uri, tmp_path / "gmf", model="GMF", pretrain=True, epochs=1))
    assert load_package(gmf.model_uri).config["model_type"] == "GMF"  # pretraining only applies to NeuMF


def test_metrics_json_matches_result(tiny_partition_uri, tmp_path):
    result = run(_config(tiny_partition_uri, tmp_path / "m", epochs=1, model="GMF"))
    on_disk = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert on_disk["hr@10"] == result.metrics["hr@10"]
    assert np.isclose(on_disk["full_ndcg@10"], result.metrics["full_ndcg@10"])


@pytest.mark.parametrize("power", [1.0, 4.0])
def test_recency_weights_follow_weight_and_power(tiny_partition, power):
    settings = train.NCFSettings(recency_weight=8.0, recency_power=power)
    data = train._prepare_data(Interactions.of(tiny_partition), settings, torch.device("cpu"))
    ranks = recency_rank(tiny_partition.train_users, tiny_partition.train_items, tiny_partition.train_ts,
                         tiny_partition.num_users)
    raw = 1.0 + 8.0 * ranks**power
    np.testing.assert_allclose(data.weights.numpy(), raw / raw.mean(), rtol=1e-6)
    assert data.weights.mean().item() == pytest.approx(1.0)


def test_recency_weighted_training_runs(tiny_partition_uri, tmp_path):
    result = run(_config(tiny_partition_uri, tmp_path / "m", epochs=1, recency_weight=4.0))
    assert load_package(result.model_uri).config["hyperparameters"]["recency_weight"] == 4.0


def test_refit_retrains_each_stage_on_all_of_train_for_its_selected_epochs(tiny_partition_uri, tmp_path,
                                                                          monkeypatch, capsys):
    by_stage = _record_epochs(monkeypatch)
    result = run(_config(tiny_partition_uri, tmp_path / "m", **REFIT))
    # Each selection stage's choice: its best validation NDCG, the earlier epoch on ties.
    selected = {stage: max(by_stage[stage], key=lambda r: r.val_ndcg) for stage in ("GMF", "MLP", "NeuMF")}
    expected = {stage: record.epoch for stage, record in selected.items()}
    # A real choice was made: some stage selected an epoch before its last one.
    assert any(record.epoch < len(by_stage[stage]) for stage, record in selected.items())
    pkg = load_package(result.model_uri)
    assert pkg.metrics["refit_epochs"] == result.metrics["refit_epochs"] == expected
    assert pkg.config["hyperparameters"]["refit"] is True
    for stage, epochs in expected.items():
        refit_records = by_stage[f"{stage}-refit"]
        assert [r.epoch for r in refit_records] == list(range(1, epochs + 1)), stage
        assert all(r.val_hr is None for r in refit_records)  # no validation split: nothing to select on
        assert (tmp_path / "m.checkpoint" / f"{stage}.pt").exists()
        assert (tmp_path / "m.checkpoint" / f"{stage}-refit.pt").exists()
    final = by_stage["NeuMF-refit"]
    # Validation metrics are the selection pass's selected epoch's; everything else is the refit model's.
    assert (result.metrics["val_hr@10"], result.metrics["val_ndcg@10"]) == (selected["NeuMF"].val_hr,
                                                                          selected["NeuMF"].val_ndcg)
    assert result.metrics["loss"] == final[-1].loss
    assert result.metrics["best_epoch"] == result.metrics["epochs"] == expected["NeuMF"]
    assert pkg.metrics["hr@10"] == pytest.approx(final[-1].hr)
    # The dashboards scrape stdout: only the exported (refit) model's epochs go there.
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [metric_line(r.hr, r.ndcg, r.loss) for r in final]
    for stage in ("GMF", "MLP", "NeuMF", "GMF-refit", "MLP-refit"):
        for r in by_stage[stage]:
            assert metric_line(r.hr, r.ndcg, r.loss) in captured.err, stage
    assert "[NeuMF] early stop" in captured.err
    assert f"[NeuMF-refit] epoch {expected['NeuMF']}/{expected['NeuMF']}" in captured.err


def test_refit_is_a_plain_run_of_the_selected_length_on_all_of_train(tiny_partition_uri, tmp_path):
    settings = dict(model="GMF", epochs=10, patience=1, lr=0.05)
    refit = run(_config(tiny_partition_uri, tmp_path / "refit", refit=True, **settings))
    selection_only = run(_config(tiny_partition_uri, tmp_path / "selection", refit=False, **settings))
    # The refit does not change the selection pass.
    assert refit.metrics["refit_epochs"] == {"GMF": selection_only.metrics["best_epoch"]}
    assert refit.metrics["val_ndcg@10"] == selection_only.metrics["val_ndcg@10"]
    # Same seeds, all training interactions, the selected epoch count, no selection: exactly a patience-0 run.
    plain = run(_config(tiny_partition_uri, tmp_path / "plain",
                        **{**settings, "patience": 0, "epochs": refit.metrics["refit_epochs"]["GMF"]}))
    _assert_same_weights(_weights(refit.model_uri), _weights(plain.model_uri))
    assert refit.metrics["hr@10"] == plain.metrics["hr@10"]
    # Same seeds and epoch count as the selection pass's pick: only the validation rows, back in, differ.
    refit_weights, selected_weights = _weights(refit.model_uri), _weights(selection_only.model_uri)
    assert any(not torch.equal(refit_weights[k], selected_weights[k]) for k in refit_weights)


def test_refit_is_ignored_without_a_validation_split(tiny_partition_uri, tmp_path, capsys):
    with_refit = run(_config(tiny_partition_uri, tmp_path / "a", pretrain=True, epochs=2, patience=0,
                             refit=True))
    out_with_refit = capsys.readouterr().out
    without = run(_config(tiny_partition_uri, tmp_path / "b", pretrain=True, epochs=2, patience=0))
    assert capsys.readouterr().out == out_with_refit and len(out_with_refit.splitlines()) == 2
    _assert_same_weights(_weights(with_refit.model_uri), _weights(without.model_uri))
    assert _without_timing(with_refit.metrics) == _without_timing(without.metrics)
    assert "refit_epochs" not in with_refit.metrics
    assert sorted(p.name for p in (tmp_path / "a.checkpoint").iterdir()) == ["GMF.pt", "MLP.pt", "NeuMF.pt"]


def test_ensemble_refits_each_member_with_its_own_seed(tiny_partition_uri, tmp_path, monkeypatch, capsys):
    by_stage = _record_epochs(monkeypatch)
    settings = dict(model="GMF", epochs=10, patience=1, lr=0.05, refit=True)
    ensemble = run(_config(tiny_partition_uri, tmp_path / "ensemble", ensemble=3, **settings))
    stdout = capsys.readouterr().out.splitlines()
    # One selection pass picks the epochs; every member is refit for exactly that many.
    epochs = ensemble.metrics["refit_epochs"]["GMF"]
    assert [len(by_stage[label]) for label in ("GMF-refit", "GMF-refit-m1", "GMF-refit-m2")] == [epochs] * 3
    assert "GMF-m1" not in by_stage  # members share the selection pass
    single = run(_config(tiny_partition_uri, tmp_path / "single", ensemble=1, **settings))
    assert ensemble.metrics["refit_epochs"] == single.metrics["refit_epochs"]
    pkg = load_package(ensemble.model_uri)
    assert pkg.config["members"] == 3 and pkg.config["hyperparameters"]["ensemble"] == 3
    members = load_model(pkg).members
    # Member 0 is the single model; the others are different models (their own seeds).
    _assert_same_weights(members[0].state_dict(), _weights(single.model_uri))
    assert not torch.equal(members[1].embed_user_GMF.weight, members[0].embed_user_GMF.weight)
    assert not torch.equal(members[2].embed_user_GMF.weight, members[1].embed_user_GMF.weight)
    # The exported metrics are the ensemble's; stdout has the last member's epochs, then the ensemble's line.
    assert ensemble.metrics["hr@10"] == pkg.metrics["hr@10"]
    assert stdout[:-1] == [metric_line(r.hr, r.ndcg, r.loss) for r in by_stage["GMF-refit-m2"]]
    assert stdout[-1] == metric_line(pkg.metrics["hr@10"], pkg.metrics["ndcg@10"], pkg.metrics["loss"])


def test_ensemble_without_refit_trains_every_member_in_full(tiny_partition_uri, tmp_path, monkeypatch):
    by_stage = _record_epochs(monkeypatch)
    result = run(_config(tiny_partition_uri, tmp_path / "m", model="GMF", epochs=2, patience=0, ensemble=2))
    assert [len(by_stage[label]) for label in ("GMF", "GMF-m1")] == [2, 2]
    # Member 1 is the single run of its seed.
    seed_1 = run(_config(tiny_partition_uri, tmp_path / "seed", model="GMF", epochs=2, patience=0,
                         seed=42 + train._member_seed(0, 1)))
    _assert_same_weights(load_model(load_package(result.model_uri)).members[1].state_dict(), _weights(seed_1.model_uri))


def test_a_model_over_the_memory_budget_is_refused_with_its_estimate(tiny_partition_uri, tmp_path, capsys):
    """`--num-layers 20` makes a 33-million-wide tower input: refused before anything is allocated."""
    out = tmp_path / "models" / "huge"
    assert main(["--partition-uri", tiny_partition_uri, "--output-uri", str(out), "--num-layers", "20",
                 "--progress", "off", "--candidates", ""]) == 2
    err = capsys.readouterr().err
    assert re.search(r"error: model: NeuMF x3 for 40 users x 80 items, factor_num 32, mlp_layers \[33554432, .*"
                     r"needs an estimated [\d,.]+ TB \(parameters [\d,.]+ TB, optimizer .*\), over the memory budget "
                     r"of [\d,.]+ GB \(--memory-budget-gb\)", err), err
    assert not out.exists() and not (tmp_path / "models" / "huge.checkpoint").exists()
    # The budget is a setting: the default model fits in a gigabyte, not in a kilobyte.
    assert main(["--partition-uri", tiny_partition_uri, "--output-uri", str(out), "--memory-budget-gb", "1e-6",
                 *FAST]) == 2
    assert "over the memory budget of 1.0 KB" in capsys.readouterr().err


def test_a_diverging_loss_stops_the_run_and_publishes_nothing(tiny_partition_uri, tmp_path, capsys):
    out = tmp_path / "m"
    code = main(["--partition-uri", tiny_partition_uri, "--output-uri", str(out), *FAST, "--lr", "1e6",
                 "--patience", "0"])
    assert code == 2
    err = capsys.readouterr().err
    assert re.search(r"error: \[GMF\] epoch 1: training loss [\d.e+]+ is above --max-loss 6\.931 \(predicting 0\.5 "
                     r"everywhere scores 0\.6931\): the training diverged; lower --lr \(now 1000000\.0\)", err), err
    assert not out.exists()


def test_loss_guard_rules():
    settings = train.NCFSettings(lr=0.1)
    train._check_loss("NeuMF", 3, 0.3, 0.2, settings)  # noise around a low loss is fine
    train._check_loss("NeuMF", 3, 0.6, 0.2, settings)  # more than doubled, but below a coin's loss: not divergence
    with pytest.raises(UserError, match=r"\[NeuMF\] epoch 3: training loss 0\.9000 more than doubled from the "
                                        r"stage's lowest 0\.3000: the training diverged; lower --lr \(now 0\.1\)"):
        train._check_loss("NeuMF", 3, 0.9, 0.3, settings)
    with pytest.raises(UserError, match="above --max-loss"):
        train._check_loss("NeuMF", 1, 7.0, None, settings)
    with pytest.raises(UserError, match="training loss is nan; lower --lr"):
        train._check_loss("NeuMF", 1, float("nan"), None, settings)


class _RecordingStep:
    """A training step that records the batches it is given (the samples an epoch feeds the model)."""

    def __init__(self):
        self.batches: list[tuple[torch.Tensor, ...]] = []

    def __call__(self, users, items, targets, weights=None):
        self.batches.append((users.clone(), items.clone(), targets.clone(),
                             torch.ones_like(targets) if weights is None else weights.clone()))
        return targets.sum()

    def push(self):
        pass


def _epoch_batches(rows: Interactions, num_neg: int, batch_size: int, weights: torch.Tensor | None, seed: int = 3,
                   rank: int = 0, world_size: int = 1):
    users = torch.from_numpy(rows.users.astype(np.int64))
    items = torch.from_numpy(rows.items.astype(np.int64))
    step = _RecordingStep()
    runner = train.EpochRunner(step, users, items, train.NegativeSampler(users, items, rows.num_users, rows.num_items),
                               num_neg, batch_size, rank, world_size, weights)
    loss = runner.run(torch.Generator().manual_seed(seed))
    return step.batches, loss, runner.steps


@pytest.mark.parametrize("chunk_samples", [1, 100, 1 << 20])
def test_an_epoch_is_every_positive_once_and_num_neg_unseen_negatives_each_whatever_the_chunk(tiny_partition,
                                                                                               monkeypatch,
                                                                                               chunk_samples):
    rows = Interactions.of(tiny_partition)
    weights = torch.linspace(0.5, 1.5, rows.users.size)
    reference, reference_loss, _ = _epoch_batches(rows, 3, 32, weights)
    monkeypatch.setattr(train.EpochRunner, "CHUNK_SAMPLES", chunk_samples)
    batches, loss, steps = _epoch_batches(rows, 3, 32, weights)

    # The chunk size changes how much is gathered at once, never which samples form which batch.
    assert len(batches) == len(reference) == steps
    for got, expected in zip(batches, reference, strict=True):
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b)
    assert torch.equal(loss, reference_loss)

    users, items, targets, sample_weights = (torch.cat(parts) for parts in zip(*batches, strict=True))
    assert len(batches[0][0]) == 32 and users.numel() == rows.users.size * 4
    positive = targets == 1
    got_positives = sorted(zip(users[positive].tolist(), items[positive].tolist(), sample_weights[positive].tolist(),
                               strict=True))
    assert got_positives == sorted(zip(rows.users.tolist(), rows.items.tolist(), weights.tolist(), strict=True))
    assert torch.equal(sample_weights[~positive], torch.ones(int((~positive).sum())))
    seen = set(zip(rows.users.tolist(), rows.items.tolist(), strict=True))
    negatives = list(zip(users[~positive].tolist(), items[~positive].tolist(), strict=True))
    assert not seen & set(negatives)
    per_user = np.bincount([u for u, _ in negatives], minlength=rows.num_users)
    assert np.array_equal(per_user, 3 * np.bincount(rows.users, minlength=rows.num_users))


def test_ranks_train_disjoint_shards_of_one_epoch(tiny_partition):
    rows = Interactions.of(tiny_partition)
    shards = [_epoch_batches(rows, 2, 16, None, rank=rank, world_size=2)[0] for rank in (0, 1)]
    whole, _, _ = _epoch_batches(rows, 2, 16, None)
    per_rank = rows.users.size * 3 // 2

    def samples(batches):
        return list(zip(*(torch.cat(parts).tolist() for parts in zip(*batches, strict=True)), strict=True))

    # The same permutation and negatives (same seed), split in two halves: rank 0 the first, rank 1 the second.
    assert samples(shards[0]) == samples(whole)[:per_rank]
    assert samples(shards[1]) == samples(whole)[per_rank:2 * per_rank]
