"""KFP component: serve the champion (wraps serving/deploy.py). Runs only when the gate promoted."""

# No `from __future__ import annotations`: KFP reads the annotations as types.
from kfp import dsl

from pipelines.images import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def deploy(model_name: str, tracking_uri: str, serving_target: str) -> str:
    """local: start or hot-swap the predictor on 127.0.0.1; kserve: create/patch the InferenceService and wait
    until Ready (the task fails if it is not). Returns the endpoint URL."""
    args = dict(locals())  # first statement: the parameters, by name, for the step's config
    from ncf.config import pipeline_fields
    from serving.deploy import DeployConfig, run

    result = run(DeployConfig(**{f.name: args[f.name] for f in pipeline_fields(DeployConfig)}))
    print(f"deployed {model_name} -> {result.endpoint}")
    return result.endpoint
