"""KFP component: the champion's top-K for every user -> <root>/recommendations/dt=<run date> (wraps
ncf/recommend.py). Runs after the gate whatever it decided: the champion (new or kept) recommends every night."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from pipelines.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def recommend(
    partition: Input[Dataset],
    tracking_uri: str,
    model_name: str,
    recommend_k: int,
    recommendations: Output[Dataset],
):
    """Writes `<storage_root>/recommendations/dt=<run_date>` (resumable: a retried task continues from the parts
    the killed one wrote); the artifact carries its URI and counts. No champion yet (the first gate rejected): the
    task succeeds and says so."""
    args = dict(locals())  # first statement: the parameters, by name, for the step's config
    import dataclasses
    import json

    from ncf.config import pipeline_fields
    from ncf.recommend import RecommendConfig, run, summary_line

    result = run(
        RecommendConfig(
            storage_root=partition.metadata["storage_root"],
            run_date=partition.metadata["run_date"],
            skip_without_champion=True,
            **{f.name: args[f.name] for f in pipeline_fields(RecommendConfig)},
        )
    )
    recommendations.metadata.update({
        "output_uri": result.output_uri if result.published else "",
        "users": result.users,
        "rows": result.rows,
        "model": result.model,
        "recommend_k": recommend_k,
        "skipped": result.skipped,
    })
    with open(recommendations.path, "w") as out:
        json.dump(dataclasses.asdict(result), out, indent=2, default=str)
    print(summary_line(result))
