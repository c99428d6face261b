"""A registry whose versions went through the real gate with every kind of decision, for the status and report
tests: v1 first (promoted, no champion before), v2 rejected (below the floor), v3 promoted over v1 (its package
records a model selection: `CANDIDATES`), v4 a model
trained for real (ncf.train, logging to the same store, with two tuning trials as nested runs) and gated against
the champion v3 (decision: whatever the gate says)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ncf import gate, registry
from tests.mlflow_fixtures import make_package, oracle_model
from tests.tiny_data import make_partition, write_partition

DATES = ("2026-11-24", "2026-11-25", "2026-11-26", "2026-11-27")
# v3's package records the train step's model selection (metrics.json `candidates`), as a selecting train step does.
CANDIDATES = {"candidates": {"chosen": "ease", "candidates": {
    "ease": {"val_ndcg@10": 0.3912, "val_hr@10": 0.6301, "settings": {"ease_lambda": 250.0}, "trials": 8},
    "ials": {"val_ndcg@10": 0.3507, "val_hr@10": 0.5893, "settings": {"ials_factors": 64}, "trials": 8},
    "popularity": {"val_ndcg@10": 0.1204, "val_hr@10": 0.2750, "settings": {}, "trials": 1}}}}


@dataclasses.dataclass
class GatedStore:
    root: Path
    tracking_uri: str
    results: list  # GateResult per version, v1 first
    train_run_id: str  # v4's training run
    trial_values: list[float]


def build(root: Path) -> GatedStore:
    """v1-v3 are oracle models of known quality (noise: lower is better; 0 ranks every test item first)."""
    import mlflow

    from ncf.train import TrainConfig
    from ncf.train import run as train

    tracking_uri = registry.default_tracking_uri(root)
    partitions = []
    for date in DATES:
        partition = make_partition(num_users=40, num_items=80, per_user=10, uri=str(root / "data" / f"dt={date}"),
                                   run_date=date)
        write_partition(partition, partition.uri)
        partitions.append(partition)

    def gated(package: str, partition, **overrides) -> gate.GateResult:
        return gate.run(gate.GateConfig(model_uri=package, partition_uri=partition.uri, pipeline_run_id="run-7",
                                        git_commit="0123456789abcdef", **overrides))

    results = [
        gated(make_package(str(root / "models" / "v1"), partitions[0], oracle_model(partitions[0], 2.0)), partitions[0]),
        gated(make_package(str(root / "models" / "v2"), partitions[1], oracle_model(partitions[1], 5.0)), partitions[1],
              floor=0.999),
        gated(make_package(str(root / "models" / "v3"), partitions[2], oracle_model(partitions[2], 0.0),
                           metrics={"ndcg@10": 0.9, **CANDIDATES}), partitions[2]),
    ]
    trained = train(TrainConfig(partition_uri=partitions[3].uri, output_uri=str(root / "models" / "v4"), epochs=3,
                                batch_size=64, factor_num=8, num_layers=2, ensemble=1, patience=3, refit=False,
                                pretrain=False, progress="off", tracking_uri=tracking_uri, candidates=""))
    trial_values = [0.21, 0.34]
    run = registry.client(tracking_uri).get_run(trained.mlflow_run_id)
    with registry.active_store(tracking_uri):
        for value in trial_values:  # what Optuna's MLflow callback logs with nested runs: one child run per trial
            with mlflow.start_run(experiment_id=run.info.experiment_id, run_name="trial",
                                  tags={"mlflow.parentRunId": trained.mlflow_run_id}):
                mlflow.log_metric("value", value)
    results.append(gated(trained.model_uri, partitions[3]))
    return GatedStore(root, tracking_uri, results, trained.mlflow_run_id, trial_values)
