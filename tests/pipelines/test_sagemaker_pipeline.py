"""The SageMaker adapter (SDK 3.x): offline, deterministic definition; accepted by moto (in-process and server)."""

from __future__ import annotations

import json

import pytest

from pipelines import definition
from pipelines.definition import AdapterError
from pipelines.sagemaker_pipeline import SageMakerSettings, build_pipeline, definition_json
from tests.conftest import REPO_ROOT

from .conftest import OVERRIDES

ROLE = "arn:aws:iam::123456789012:role/ncf-sagemaker-execution"


def _steps(sm: dict) -> dict[str, dict]:
    flat = {}
    for step in sm["Steps"]:
        flat[step["Name"]] = step
        for branch in ("IfSteps", "ElseSteps"):
            for inner in step["Arguments"].get(branch, []) if step["Type"] == "Condition" else []:
                flat[inner["Name"]] = inner
    return flat


def test_definition_needs_no_aws_access_and_is_byte_identical(monkeypatch, sagemaker_json):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata credential lookups
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    assert definition_json(overrides=OVERRIDES) == sagemaker_json
    assert definition_json(overrides=OVERRIDES) == sagemaker_json


def test_parameters_are_the_declared_ones(sagemaker_definition):
    kinds = {str: "String", int: "Integer", float: "Float", bool: "Boolean"}
    got = {p["Name"]: p for p in sagemaker_definition["Parameters"]}
    assert list(got) == [p.name for p in definition.parameters()]
    for p in definition.parameters():
        assert got[p.name]["Type"] == kinds[p.type]
        default = OVERRIDES.get(p.name, None if p.required else p.default)
        assert got[p.name].get("DefaultValue") == default, p.name


def test_steps_map_onto_sagemaker_step_types(sagemaker_definition):
    steps = _steps(sagemaker_definition)
    assert {n: s["Type"] for n, s in steps.items()} == {
        "preprocess": "Processing", "train": "Training", "gate": "Processing", "gate-promoted": "Condition",
        "deploy-register": "RegisterModel", "deploy-model": "Model", "deploy-endpoint-config": "EndpointConfig",
        "deploy": "Endpoint", "recommend": "Processing",
    }
    entry = steps["preprocess"]["Arguments"]["AppSpecification"]["ContainerEntrypoint"]
    assert entry == ["python", "-m", "pipelines.sagemaker_entry", "preprocess"]


def test_recommend_runs_after_the_gate_whatever_it_decided(sagemaker_definition):
    steps = _steps(sagemaker_definition)
    recommend = sagemaker_definition["Steps"][[s["Name"] for s in sagemaker_definition["Steps"]].index("recommend")]
    assert recommend is steps["recommend"] or recommend == steps["recommend"]  # top level: not in the condition
    assert recommend["DependsOn"] == ["gate"]
    arguments = recommend["Arguments"]
    assert arguments["AppSpecification"]["ContainerEntrypoint"] == [
        "python", "-m", "pipelines.sagemaker_entry", "recommend"]
    args = arguments["AppSpecification"]["ContainerArguments"]
    pairs = dict(zip(args[::2], args[1::2], strict=True))
    assert pairs["--storage-root"] == {"Get": "Parameters.storage_root"}
    assert pairs["--run-date"]["Std:JsonGet"]["Path"] == "run_date"
    assert pairs["--skip-without-champion"] == "true"
    assert {"--recommend-k", "--tracking-uri", "--model-name"} <= set(pairs)
    assert recommend.get("RetryPolicies") and not recommend.get("CacheConfig", {}).get("Enabled")


def test_training_step_metric_definitions_channels_and_hyperparameters(sagemaker_definition):
    train = _steps(sagemaker_definition)["train"]["Arguments"]
    assert train["AlgorithmSpecification"]["MetricDefinitions"] == [
        {"Name": "HR", "Regex": "HR=(.*?);"}, {"Name": "NDCG", "Regex": "NDCG=(.*?);"},
        {"Name": "Loss", "Regex": "Loss=(.*?);"},
    ]
    assert [c["ChannelName"] for c in train["InputDataConfig"]] == ["train", "test"]
    hyper = train["HyperParameters"]
    for name in ("epochs", "lr", "batch_size", "top_k", "dropout", "factor_num", "num_layers"):
        assert name in hyper
    assert hyper["lr"] == {"Std:Join": {"On": "", "Values": [{"Get": "Parameters.lr"}]}}  # strings at run time
    assert "partition_uri" in hyper and "output_uri" in hyper


def test_gate_writes_an_evaluation_json_the_condition_reads(sagemaker_definition):
    steps = _steps(sagemaker_definition)
    assert steps["gate"]["PropertyFiles"] == [
        {"FilePath": "evaluation.json", "OutputName": "evaluation", "PropertyFileName": "GateEvaluation"}
    ]
    condition = steps["gate-promoted"]["Arguments"]
    assert condition["Conditions"] == [{
        "Type": "Equals", "RightValue": True,
        "LeftValue": {"Std:JsonGet": {"Path": "promoted",
                                       "PropertyFile": {"Get": "Steps.gate.PropertyFiles.GateEvaluation"}}},
    }]
    assert [s["Name"] for s in condition["IfSteps"]] == [
        "deploy-register", "deploy-model", "deploy-endpoint-config", "deploy",
    ]
    # A kept champion is a successful run: nothing on the else branch marks the execution Failed.
    assert condition["ElseSteps"] == []
    assert "Fail" not in {step["Type"] for step in _steps(sagemaker_definition).values()}
    register = steps["deploy-register"]["Arguments"]
    assert register["ModelPackageGroupName"] == "NCF"
    assert register["ModelApprovalStatus"] == "Approved"


def test_every_s3_uri_is_explicit_no_default_bucket(sagemaker_json):
    assert "sagemaker-us-east-1" not in sagemaker_json  # the SDK's default bucket name pattern
    outputs = [
        o["S3Output"]["S3Uri"]
        for s in _steps(json.loads(sagemaker_json)).values()
        for o in s["Arguments"].get("ProcessingOutputConfig", {}).get("Outputs", [])
    ]
    assert outputs and all(o["Std:Join"]["Values"][0] == {"Get": "Parameters.storage_root"} for o in outputs)


def test_a_local_storage_root_is_refused_with_a_clear_message():
    with pytest.raises(AdapterError, match="storage_root must be an s3:// URI"):
        build_pipeline(overrides={"storage_root": "runs/demo"})


def _upsert_and_start(sm_client_factory):
    pipeline = build_pipeline(SageMakerSettings(role_arn=ROLE), overrides=OVERRIDES)
    created = pipeline.upsert(role_arn=ROLE, description="NCF retraining")
    assert created["PipelineArn"].endswith(f"pipeline/{definition.PIPELINE_NAME}")
    updated = pipeline.upsert(role_arn=ROLE)  # second time: update_pipeline
    assert updated["PipelineArn"] == created["PipelineArn"]
    execution = pipeline.start(parameters={"run_date": "2026-03-01", "epochs": 3})
    client = sm_client_factory()
    described = client.describe_pipeline(PipelineName=definition.PIPELINE_NAME)
    assert json.loads(described["PipelineDefinition"]) == json.loads(pipeline.definition())
    run = client.describe_pipeline_execution(PipelineExecutionArn=execution.arn)
    assert run["PipelineExecutionStatus"] in ("Executing", "Succeeded")
    params = client.list_pipeline_parameters_for_execution(PipelineExecutionArn=execution.arn)["PipelineParameters"]
    assert {"Name": "epochs", "Value": "3"} in params


def test_upsert_and_start_against_moto_in_process(monkeypatch):
    import boto3
    from moto import mock_aws

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        _upsert_and_start(lambda: boto3.client("sagemaker", region_name="us-east-1"))


def test_upsert_and_start_against_a_moto_server(moto_server, monkeypatch):
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    _upsert_and_start(lambda: boto3.client("sagemaker", region_name="us-east-1"))
    # the server really holds it: a fresh client sees it
    names = [p["PipelineName"] for p in boto3.client("sagemaker").list_pipelines()["PipelineSummaries"]]
    assert definition.PIPELINE_NAME in names


def _resolve(obj, values: dict[str, str]):
    """Replace the definition's run-time expressions by what they would be at run time."""
    if isinstance(obj, dict):
        if set(obj) == {"Get"}:
            return values[obj["Get"]]
        if set(obj) == {"Std:JsonGet"}:
            return values["JsonGet:" + obj["Std:JsonGet"]["Path"]]
        return {k: _resolve(v, values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_resolve(v, values) for v in obj]
    return obj


def test_model_package_group_and_registration_with_the_register_steps_arguments(moto_server, monkeypatch,
                                                                                sagemaker_definition):
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = boto3.client("sagemaker")
    register = _steps(sagemaker_definition)["deploy-register"]["Arguments"]
    artifact = "s3://ncf-test/platform/sagemaker/train/job/output/model.tar.gz"
    arguments = _resolve(register, {
        "Steps.train.ModelArtifacts.S3ModelArtifacts": artifact,
        "Parameters.model_name": "ncf",
        "JsonGet:run_date": "2026-03-01",
    })
    client.create_model_package_group(ModelPackageGroupName=register["ModelPackageGroupName"],
                                      ModelPackageGroupDescription="NCF recommender")
    arn = client.create_model_package(**arguments)["ModelPackageArn"]
    described = client.describe_model_package(ModelPackageName=arn)
    assert described["ModelPackageGroupName"] == "NCF"
    assert described["ModelApprovalStatus"] == "Approved"
    container = described["InferenceSpecification"]["Containers"][0]
    assert container["ModelDataUrl"] == artifact
    assert container["Image"] == SageMakerSettings().image("serving")
    versions = client.list_model_packages(ModelPackageGroupName="NCF")["ModelPackageSummaryList"]
    assert [v["ModelPackageVersion"] for v in versions] == [1]


# ---- fresh data every run (issue #12, defect 1) ---------------------------------------------------------------
def test_preprocess_is_never_cached_and_defaults_to_the_executions_day(sagemaker_definition):
    """SageMaker's processing cache key is the job's arguments and image: the same every day while the logs grow."""
    preprocess = _steps(sagemaker_definition)["preprocess"]
    assert not preprocess.get("CacheConfig", {}).get("Enabled")
    args = preprocess["Arguments"]["AppSpecification"]["ContainerArguments"]
    assert args[args.index("--scheduled-time") + 1] == {"Get": "Execution.StartDateTime"}
    assert args[args.index("--run-date") + 1] == {"Get": "Parameters.run_date"}
    assert not [s for s in _steps(sagemaker_definition).values() if s.get("CacheConfig", {}).get("Enabled")]


# ---- SageMaker reality (defect 6) -----------------------------------------------------------------------------
def _images(sm: dict) -> list[str]:
    found = []
    for step in _steps(sm).values():
        args = step["Arguments"]
        found += [args.get("AppSpecification", {}).get("ImageUri"), args.get("AlgorithmSpecification", {}).get("TrainingImage")]
        found += [c.get("Image") for c in args.get("InferenceSpecification", {}).get("Containers", [])]
        found += [args.get("PrimaryContainer", {}).get("Image")]
    return [i for i in found if i]


def test_every_job_image_is_the_root_variant_in_ecr(sagemaker_definition):
    """SageMaker pulls processing/training images from ECR only, and mounts /opt/ml/processing/* and /opt/ml/model
    owned by root: the -sagemaker variants (docker/sagemaker.Dockerfile) run as root."""
    from pipelines import images

    found = _images(sagemaker_definition)
    assert len(found) >= 4
    registry = SageMakerSettings().image_registry
    for ref in found:
        assert ref.startswith(registry + "/") and ref.endswith(":" + images.tag() + images.SAGEMAKER_SUFFIX), ref
    dockerfile = (REPO_ROOT / "docker" / "sagemaker.Dockerfile").read_text()
    assert [line for line in dockerfile.splitlines() if line.startswith("USER")] == ["USER 0:0"]


def test_a_registry_sagemaker_cannot_pull_from_is_refused():
    settings = SageMakerSettings(image_registry="ghcr.io/ncf-platform")
    with pytest.raises(AdapterError, match="ECR"):
        build_pipeline(settings, overrides=OVERRIDES)


@pytest.mark.parametrize("uri", ["", "http://mlflow.ncf.svc.cluster.local:5000", "http://mlflow:5000",
                                 "http://localhost:5000", "runs/mlflow.db", "sqlite:///mlflow.db"])
def test_a_tracking_uri_a_sagemaker_job_cannot_reach_is_refused(uri):
    with pytest.raises(AdapterError, match="tracking_uri"):
        build_pipeline(overrides={**OVERRIDES, "tracking_uri": uri})


def test_jobs_run_in_the_vpc_that_reaches_mlflow():
    settings = SageMakerSettings(subnets=("subnet-0a1b2c3d",), security_group_ids=("sg-0123abcd",))
    sm = json.loads(definition_json(settings, overrides=OVERRIDES))
    vpc = {"Subnets": ["subnet-0a1b2c3d"], "SecurityGroupIds": ["sg-0123abcd"]}
    steps = _steps(sm)
    for name in ("preprocess", "gate"):
        assert steps[name]["Arguments"]["NetworkConfig"]["VpcConfig"] == vpc, name
    assert steps["train"]["Arguments"]["VpcConfig"] == vpc
    hyper = steps["train"]["Arguments"]["HyperParameters"]
    assert hyper["tracking_uri"] == {"Get": "Parameters.tracking_uri"}
    tracking = next(p for p in sm["Parameters"] if p["Name"] == "tracking_uri")
    assert tracking["DefaultValue"] == OVERRIDES["tracking_uri"]
    with pytest.raises(AdapterError, match="both"):
        build_pipeline(SageMakerSettings(subnets=("subnet-0a1b2c3d",)), overrides=OVERRIDES)


def test_training_channels_copy_nothing(sagemaker_definition):
    """The trainer reads the partition from partition_uri itself; File-mode channels would copy both tables first."""
    train = _steps(sagemaker_definition)["train"]["Arguments"]
    assert train["AlgorithmSpecification"]["TrainingInputMode"] == "FastFile"
    assert {c["ChannelName"]: c.get("InputMode") for c in train["InputDataConfig"]} == {"train": "FastFile", "test": "FastFile"}
