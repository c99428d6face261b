"""KFP component: train on a partition (model selection among the candidates) -> model package + MLflow run (wraps
ncf/train.py)."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from pipelines.images import TRAIN_IMAGE


# The CUDA image: the pipeline schedules this task on a GPU node (pipelines/kfp_pipeline.py).
@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train(
    partition: Input[Dataset],
    epochs: int,
    lr: float,
    batch_size: int,
    top_k: int,
    dropout: float,
    factor_num: int,
    num_layers: int,
    model: str,
    tracking_uri: str,
    candidates: str,
    blend: str,
    tune_trials: int,
    tune_trials_ncf: int,
    pipeline_run_id: str,
    package: Output[Model],
    metrics: Output[Metrics],
):
    """Writes the model package under `<storage_root>/models/`; the artifact carries its URI and metrics."""
    args = dict(locals())  # first statement: the parameters, by name, for the step's config
    import json

    from ncf import contracts
    from ncf.config import pipeline_fields
    from ncf.train import TrainConfig, run

    user_facing = {f.name: args[f.name] for f in pipeline_fields(TrainConfig)}
    run_name = f"{partition.metadata['run_date']}-{pipeline_run_id}"
    config = TrainConfig(
        partition_uri=partition.metadata["partition_uri"],
        output_uri=contracts.model_uri(partition.metadata["storage_root"], run_name),
        **user_facing,
    )
    result = run(config)
    for name, value in result.metrics.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(name, value)
    selection = result.metrics.get("candidates", {})
    chosen = selection.get("chosen", "")  # model selection's winner, when it ran
    if chosen == "blend":  # its members and weights: "blend of GMF 0.9 + ease 0.1"
        weights = selection["candidates"]["blend"]["settings"]
        chosen = "blend of " + " + ".join(f"{name} {weight:g}" for name, weight in weights.items())
    package.metadata.update({"model_uri": result.model_uri, "model_type": model, **user_facing,
                             "family": result.metrics.get("family", ""), "chosen_candidate": chosen})
    with open(package.path, "w") as out:
        json.dump({"model_uri": result.model_uri, "metrics": result.metrics}, out, indent=2, default=str)
