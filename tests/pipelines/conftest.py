"""Shared fixtures for the pipeline tests: compiled outputs built once per session (compiling takes seconds)."""

from __future__ import annotations

import json

import pytest

# What a CI-triggered run would use: SageMaker needs an s3:// storage root and an MLflow its jobs can reach.
OVERRIDES = {"input_uri": "s3://ncf-test/raw/events/", "storage_root": "s3://ncf-test/platform",
             "tracking_uri": "http://mlflow.ncf-test.internal:5000"}


@pytest.fixture(scope="session")
def kfp_ir(tmp_path_factory) -> str:
    from pipelines.kfp_pipeline import compile_ir

    path = tmp_path_factory.mktemp("kfp") / "pipeline.yaml"
    return compile_ir(path, overrides=OVERRIDES).read_text()


@pytest.fixture(scope="session")
def sagemaker_json() -> str:
    from pipelines.sagemaker_pipeline import definition_json, quiet_sdk_logs

    quiet_sdk_logs()
    return definition_json(overrides=OVERRIDES)


@pytest.fixture(scope="session")
def sagemaker_definition(sagemaker_json) -> dict:
    return json.loads(sagemaker_json)
