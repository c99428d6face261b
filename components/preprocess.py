"""KFP component: raw logs -> the run date's partition (wraps spark/preprocess.py)."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Dataset, Output

from pipelines.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def preprocess(input_uri: str, storage_root: str, run_date: str, input_schema_uri: str, overwrite: bool,
               scheduled_time: str, partition: Output[Dataset]):
    """Writes `<storage_root>/data/dt=<run_date>`; the artifact carries its URI and stats for the UI.

    `scheduled_time`: the run's, from the KFP backend (pipelines/kfp_pipeline.py); an empty run_date: its day."""
    args = dict(locals())  # first statement: the parameters, by name, for the step's config
    import json

    from ncf.config import pipeline_fields
    from pipelines.run_date import resolve
    from spark.preprocess import PreprocessConfig, run

    args["run_date"] = resolve(run_date, scheduled_time)
    config = PreprocessConfig(**{f.name: args[f.name] for f in pipeline_fields(PreprocessConfig)})
    result = run(config)
    partition.metadata.update(
        {
            **{k: v for k, v in result.stats.items() if isinstance(v, (int, float, str))},
            "partition_uri": result.partition_uri,
            "storage_root": storage_root,
            "run_date": result.stats["run_date"],  # resolved: an empty run_date means today (UTC)
        }
    )
    with open(partition.path, "w") as out:
        json.dump({"partition_uri": result.partition_uri, "stats": result.stats}, out, indent=2, default=str)
