"""KFP component: evaluate + gate (wraps ncf/gate.py). Returns ONE bool: was the challenger promoted?

A single return value, not a NamedTuple: kfp.local only evaluates `dsl.If` on a component's single output.
"""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from pipelines.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def gate(
    partition: Input[Dataset],
    package: Input[Model],
    tracking_uri: str,
    model_name: str,
    gate_metric: str,
    min_delta: float,
    floor: float,
    pipeline_run_id: str,
    scores: Output[Metrics],
    report: Output[Markdown],
) -> bool:
    """Registers the challenger, scores it and the champion on the same partition, moves the alias or not."""
    args = dict(locals())  # first statement: the parameters, by name, for the step's config
    import dataclasses
    import json

    from ncf import storage
    from ncf.config import pipeline_fields
    from ncf.gate import GateConfig, run

    run_date = partition.metadata["run_date"]
    config = GateConfig(
        model_uri=package.metadata["model_uri"],
        partition_uri=partition.metadata["partition_uri"],
        report_uri=storage.join(
            partition.metadata["storage_root"], "reports", f"dt={run_date}", f"gate-{pipeline_run_id}.json"
        ),
        run_date=run_date,
        pipeline_run_id=pipeline_run_id,
        **{f.name: args[f.name] for f in pipeline_fields(GateConfig)},
    )
    result = run(config)
    fields = dataclasses.asdict(result)
    for name, value in fields.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            scores.log_metric(name, value)
    rows = "\n".join(f"| {name} | {json.dumps(value, default=str)} |" for name, value in fields.items())
    decision = "PROMOTED to champion" if result.promoted else "NOT promoted (champion kept)"
    with open(report.path, "w") as out:
        out.write(f"# Gate: {decision}\n\n| field | value |\n|---|---|\n{rows}\n")
    return bool(result.promoted)
