"""KFP component: evaluate + gate (wraps ncf/gate.py). Returns ONE bool: was the challenger promoted?

A single return value, not a NamedTuple: kfp.local only evaluates `dsl.If` on a component's single output.
"""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

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
    min_baseline_gain: float,
    pipeline_run_id: str,
    scores: Output[Metrics],
    report: Output[HTML],
) -> bool:
    """Registers the challenger, scores it, the champion and the popularity baseline on the same partition, moves the
    alias or not."""
    args = dict(locals())  # first statement: the parameters, by name, for the step's config
    from ncf import contracts, storage
    from ncf.config import pipeline_fields
    from ncf.gate import GateConfig, run

    result = run(
        GateConfig(
            model_uri=package.metadata["model_uri"],
            partition_uri=partition.metadata["partition_uri"],
            run_date=partition.metadata["run_date"],
            pipeline_run_id=pipeline_run_id,
            **{f.name: args[f.name] for f in pipeline_fields(GateConfig)},
        )
    )
    scores.log_metric("challenger_" + result.gate_metric, result.challenger_score)
    if result.champion_score is not None:
        scores.log_metric("champion_" + result.gate_metric, result.champion_score)
    scores.log_metric("baseline_" + result.gate_metric, result.baseline_score)
    scores.log_metric("promoted", int(result.promoted))
    scores.log_metric("version", int(result.version))
    report.metadata.update({"reason": result.reason, "report_uri": result.report_uri, "version": result.version})
    with open(report.path, "wb") as out:
        out.write(storage.read_bytes(storage.join(result.report_uri, contracts.GATE_REPORT_HTML)))
    print(f"gate: {model_name} v{result.version} {'PROMOTED' if result.promoted else 'kept champion'}: {result.reason}")
    return bool(result.promoted)
