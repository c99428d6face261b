"""The SageMaker adapter: the declared pipeline (pipelines/definition.py) as a SageMaker Pipeline (SDK 3.x).

  preprocess -> ProcessingStep (pipeline image, `python -m pipelines.sagemaker_entry preprocess ...`); never
                cached (it reads logs that grow every day); an empty run_date means the execution's start day
  train      -> TrainingStep (train-cuda image; metric definitions HR/NDCG/Loss; channels train/test in FastFile
                mode: lineage only, nothing is copied, the trainer reads the partition itself)
  gate       -> ProcessingStep writing evaluation.json, read by a PropertyFile
                + ConditionStep `gate-promoted` on its `promoted` field
  deploy     -> (if promoted) register into the model package group, create the model, endpoint config and
                endpoint; a kept champion ends the execution as Succeeded (the gate's reason is in
                evaluation.json and MLflow)
  recommend  -> ProcessingStep (pipeline image, `python -m pipelines.sagemaker_entry recommend ...`) after the gate,
                whatever it decided: the champion's top-K for every user under <storage_root>/recommendations/

What a real account needs, checked when the definition is built (AdapterError naming the setting):
- images from ECR (`SageMakerSettings.image_registry`; SageMaker pulls nothing else for processing jobs), the
  `-sagemaker` variants (pipelines/images.py: run as root, the only user that can write /opt/ml/processing/*
  and /opt/ml/model);
- a `tracking_uri` jobs can reach: http(s), not a Kubernetes Service name or localhost; with `subnets` and
  `security_group_ids` the jobs run in that VPC (NetworkConfig / VpcConfig), e.g. next to an internal MLflow.

`definition()` needs no AWS access: every URI is explicit (built from the `storage_root` parameter, which must
be an s3:// URI), the SDK never looks up a default bucket, telemetry is off, role validation is off, and the
output is deterministic.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

from pipelines import definition, images
from pipelines.definition import GATE, STEPS, AdapterError, Step
from pipelines.sagemaker_entry import EVALUATION_FILE, PARTITION_FILE

# The SDK validates the role against IAM unless told not to; definition() must work offline.
os.environ.setdefault("SAGEMAKER_VALIDATE_ROLE", "false")

PARTITION_DIR = "/opt/ml/processing/partition"
EVALUATION_DIR = "/opt/ml/processing/evaluation"
# SageMaker scrapes these from the training job's log; pipelines/sagemaker_entry.py prints them.
METRIC_DEFINITIONS = (("HR", "HR=(.*?);"), ("NDCG", "NDCG=(.*?);"), ("Loss", "Loss=(.*?);"))
_TELEMETRY_OFF = {"SchemaVersion": "1.0", "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}


@dataclasses.dataclass(frozen=True)
class SageMakerSettings:
    role_arn: str = "arn:aws:iam::000000000000:role/ncf-sagemaker-execution"
    region: str = "us-east-1"
    pipeline_name: str = definition.PIPELINE_NAME
    model_package_group: str = "NCF"
    endpoint_name: str = "ncf"
    processing_instance_type: str = "ml.m5.xlarge"
    training_instance_type: str = "ml.g5.xlarge"
    endpoint_instance_type: str = "ml.m5.large"
    max_runtime_s: int = 6 * 3600
    retries: int = 2
    # ECR repository prefix holding the `-sagemaker` image variants (docs/cluster.md, "SageMaker").
    image_registry: str = "000000000000.dkr.ecr.us-east-1.amazonaws.com/ncf-platform"
    # The VPC the jobs run in (both or neither): what reaches a private MLflow. Jobs then need S3 through a VPC
    # endpoint or NAT.
    subnets: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()

    def image(self, name: str) -> str:
        return images.sagemaker_image(name, self.image_registry)

    def network(self) -> dict[str, Any]:
        if not self.subnets:
            return {}
        return {"subnets": list(self.subnets), "security_group_ids": list(self.security_group_ids)}


@dataclasses.dataclass
class _Context:
    settings: SageMakerSettings
    session: Any
    params: dict[str, Any]  # parameter name -> SageMaker Parameter
    steps: dict[str, Any] = dataclasses.field(default_factory=dict)  # declared step -> its last SDK step
    property_files: dict[str, Any] = dataclasses.field(default_factory=dict)


def _validate_our_config_once() -> None:
    """SDK 3.27 re-validates the session's config against its JSON schema on every config lookup (~0.5 s each,
    ~75 lookups per definition: half a minute). Ours is a constant: validate it once, skip the repeats."""
    from sagemaker.core.config.config_manager import SageMakerConfig

    validate = SageMakerConfig.validate_sagemaker_config
    if getattr(validate, "ncf_validated_once", False):
        return
    validate(_TELEMETRY_OFF)

    def validate_unless_ours(sagemaker_config: dict | None = None) -> None:
        if sagemaker_config is not _TELEMETRY_OFF:
            validate(sagemaker_config)

    validate_unless_ours.ncf_validated_once = True  # type: ignore[attr-defined]
    SageMakerConfig.validate_sagemaker_config = staticmethod(validate_unless_ours)


def _session(settings: SageMakerSettings):
    import boto3
    from sagemaker.core.workflow.pipeline_context import PipelineSession

    _validate_our_config_once()
    return PipelineSession(boto_session=boto3.Session(region_name=settings.region), sagemaker_config=_TELEMETRY_OFF)


def _parameter(p: definition.Parameter, default: Any):
    from sagemaker.core.workflow.parameters import (
        ParameterBoolean,
        ParameterFloat,
        ParameterInteger,
        ParameterString,
    )

    cls = {str: ParameterString, int: ParameterInteger, float: ParameterFloat, bool: ParameterBoolean}[p.type]
    if default is dataclasses.MISSING:
        return cls(name=p.name)
    return cls(name=p.name, default_value=p.type(default))


def _as_string(var: Any) -> Any:
    """Container arguments and hyperparameters are strings; non-string parameters are rendered at run time."""
    return var if var.parameter_type.python_type is str else var.to_string()


def _flags(ctx: _Context, step: Step) -> list[Any]:
    """`--name <parameter>` for each of the step's user-facing parameters."""
    out: list[Any] = []
    for name in definition.step_parameters(step):
        out += ["--" + name.replace("_", "-"), _as_string(ctx.params[name])]
    return out


def _join(*values: Any):
    from sagemaker.core.workflow.functions import Join

    return Join(on="", values=list(values))


def _from_preprocess(ctx: _Context, field: str):
    """A field of the preprocess step's partition.json (the run date resolved, the partition's URI)."""
    from sagemaker.core.workflow.functions import JsonGet

    return JsonGet(step_name="preprocess", property_file=ctx.property_files["preprocess"], json_path=field)


def _model_uri(ctx: _Context):
    """`<storage_root>/models/<run id>`: the layout the gate derives the storage root from."""
    from sagemaker.core.workflow.execution_variables import ExecutionVariables

    return _join(ctx.params["storage_root"], "/models/", ExecutionVariables.PIPELINE_EXECUTION_ID)


def _output(ctx: _Context, name: str, local_path: str, prefix: str):
    """A processing output under `<storage_root><prefix><execution id>` (explicit: no default bucket)."""
    from sagemaker.core.shapes import ProcessingOutput, ProcessingS3Output
    from sagemaker.core.workflow.execution_variables import ExecutionVariables

    return ProcessingOutput(
        output_name=name,
        s3_output=ProcessingS3Output(
            s3_uri=_join(ctx.params["storage_root"], prefix, ExecutionVariables.PIPELINE_EXECUTION_ID),
            local_path=local_path,
            s3_upload_mode="EndOfJob",
        ),
    )


def _retry_policies(ctx: _Context, job: bool):
    from sagemaker.mlops.workflow.retry import (
        SageMakerJobExceptionTypeEnum,
        SageMakerJobStepRetryPolicy,
        StepExceptionTypeEnum,
        StepRetryPolicy,
    )

    if not ctx.settings.retries:
        return []
    policies = [
        StepRetryPolicy(
            exception_types=[StepExceptionTypeEnum.SERVICE_FAULT, StepExceptionTypeEnum.THROTTLING],
            interval_seconds=60, backoff_rate=2.0, max_attempts=ctx.settings.retries,
        )
    ]
    if job:
        policies.append(
            SageMakerJobStepRetryPolicy(
                exception_types=[SageMakerJobExceptionTypeEnum.INTERNAL_ERROR,
                                 SageMakerJobExceptionTypeEnum.CAPACITY_ERROR],
                interval_seconds=60, backoff_rate=2.0, max_attempts=ctx.settings.retries,
            )
        )
    return policies


def _processor(ctx: _Context, step: str):
    from sagemaker.core.network import NetworkConfig
    from sagemaker.core.processing import Processor

    network = ctx.settings.network()
    return Processor(
        role=ctx.settings.role_arn,
        image_uri=ctx.settings.image("pipeline"),
        network_config=NetworkConfig(**network) if network else None,
        instance_count=1,
        instance_type=ctx.settings.processing_instance_type,
        entrypoint=["python", "-m", "pipelines.sagemaker_entry", step],
        max_runtime_in_seconds=ctx.settings.max_runtime_s,
        base_job_name=f"ncf-{step}",
        sagemaker_session=ctx.session,
    )


def _build_preprocess(ctx: _Context, step: Step) -> list:
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.properties import PropertyFile
    from sagemaker.mlops.workflow import ProcessingStep

    # The partition itself goes to storage_root through ncf.storage; this output is only its address.
    out = _output(ctx, "partition", PARTITION_DIR, "/sagemaker/preprocess/")
    arguments = _flags(ctx, step) + [
        "--scheduled-time", ExecutionVariables.START_DATETIME, "--output-dir", PARTITION_DIR,
    ]
    step_args = _processor(ctx, "preprocess").run(outputs=[out], arguments=arguments)
    ctx.property_files["preprocess"] = PropertyFile(name="Partition", output_name="partition", path=PARTITION_FILE)
    return [
        ProcessingStep(
            name="preprocess", step_args=step_args, property_files=[ctx.property_files["preprocess"]],
            retry_policies=_retry_policies(ctx, job=True),
            # No cache: its key (arguments, image) is the same every day while the logs it reads are not.
        )
    ]


def _build_train(ctx: _Context, step: Step) -> list:
    from sagemaker.core.shapes import (
        Channel,
        DataSource,
        MetricDefinition,
        OutputDataConfig,
        S3DataSource,
        StoppingCondition,
    )
    from sagemaker.mlops.workflow import TrainingStep
    from sagemaker.train.configs import Compute, Networking
    from sagemaker.train.model_trainer import ModelTrainer

    # Hyperparameters: the step's user-facing parameters plus the wiring; the trainer reads the partition
    # itself. The channels are lineage only: FastFile (per channel: the SDK's InputData would say File, which
    # copies both tables to the instance before the trainer starts).
    hyperparameters = {name: _as_string(ctx.params[name]) for name in definition.step_parameters(step)}
    partition_uri = _from_preprocess(ctx, "partition_uri")
    hyperparameters.update(partition_uri=partition_uri, output_uri=_model_uri(ctx))
    trainer = ModelTrainer(
        training_image=ctx.settings.image("train-cuda"),
        role=ctx.settings.role_arn,
        sagemaker_session=ctx.session,
        base_job_name="ncf-train",
        compute=Compute(instance_type=ctx.settings.training_instance_type, instance_count=1),
        stopping_condition=StoppingCondition(max_runtime_in_seconds=ctx.settings.max_runtime_s),
        output_data_config=OutputDataConfig(s3_output_path=_join(ctx.params["storage_root"], "/sagemaker/train")),
        hyperparameters=hyperparameters,
        training_input_mode="FastFile",
        networking=Networking(**ctx.settings.network()) if ctx.settings.network() else None,
    ).with_metric_definitions([MetricDefinition(name=n, regex=r) for n, r in METRIC_DEFINITIONS])
    def channel(name: str) -> Channel:
        source = S3DataSource(s3_data_type="S3Prefix", s3_uri=_join(partition_uri, "/" + name),
                              s3_data_distribution_type="FullyReplicated")
        return Channel(channel_name=name, data_source=DataSource(s3_data_source=source), input_mode="FastFile")

    step_args = trainer.train(input_data_config=[channel("train"), channel("test")])
    return [TrainingStep(name="train", step_args=step_args, retry_policies=_retry_policies(ctx, job=True))]


def _build_gate(ctx: _Context, step: Step) -> list:
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.core.workflow.properties import PropertyFile
    from sagemaker.mlops.workflow import ProcessingStep

    evaluation = _output(ctx, "evaluation", EVALUATION_DIR, "/sagemaker/gate/")
    arguments = _flags(ctx, step) + [
        "--model-uri", _model_uri(ctx),
        "--partition-uri", _from_preprocess(ctx, "partition_uri"),
        "--run-date", _from_preprocess(ctx, "run_date"),
        "--pipeline-run-id", ExecutionVariables.PIPELINE_EXECUTION_ID,
        "--evaluation-dir", EVALUATION_DIR,
    ]
    step_args = _processor(ctx, "gate").run(outputs=[evaluation], arguments=arguments)
    ctx.property_files["gate"] = PropertyFile(name="GateEvaluation", output_name="evaluation", path=EVALUATION_FILE)
    # Not cached and not retried: the gate registers a version and may move the champion alias.
    return [ProcessingStep(name="gate", step_args=step_args, property_files=[ctx.property_files["gate"]])]


def _build_deploy(ctx: _Context, step: Step) -> list:
    from sagemaker.core.workflow.execution_variables import ExecutionVariables
    from sagemaker.mlops.workflow import EndpointConfigStep, EndpointStep, ModelStep
    from sagemaker.serve.model_builder import ModelBuilder

    model_data = ctx.steps["train"].properties.ModelArtifacts.S3ModelArtifacts

    def builder() -> ModelBuilder:
        # dependencies={} : nothing to package; otherwise the SDK uploads code to a default bucket.
        return ModelBuilder(
            image_uri=ctx.settings.image("serving"),
            s3_model_data_url=model_data,
            role_arn=ctx.settings.role_arn,
            sagemaker_session=ctx.session,
            instance_type=ctx.settings.endpoint_instance_type,
            dependencies={},
            env_vars={"MODEL_NAME": ctx.params["model_name"]},
            log_level=logging.ERROR,  # its default is DEBUG on the SDK's own logger
        )

    register = ModelStep(
        name="deploy-register",
        step_args=builder().register(
            model_package_group_name=ctx.settings.model_package_group,
            content_types=["application/json"],
            response_types=["application/json"],
            inference_instances=[ctx.settings.endpoint_instance_type],
            approval_status="Approved",  # the gate is the approval
            customer_metadata_properties={
                "run_date": _from_preprocess(ctx, "run_date"),
                "model_name": ctx.params["model_name"],
            },
        ),
    )
    model = ModelStep(name="deploy-model", step_args=builder().build(), depends_on=[register])
    config = EndpointConfigStep(
        name="deploy-endpoint-config",
        step_args=ctx.session.create_endpoint_config(
            name=_join(ctx.settings.endpoint_name, "-", ExecutionVariables.PIPELINE_EXECUTION_ID),
            production_variants=[
                {
                    "VariantName": "AllTraffic",
                    "ModelName": model.properties.ModelName,
                    "InitialInstanceCount": 1,
                    "InstanceType": ctx.settings.endpoint_instance_type,
                }
            ],
        ),
    )
    endpoint = EndpointStep(
        name="deploy",
        step_args=ctx.session.create_endpoint(
            endpoint_name=ctx.settings.endpoint_name, config_name=config.properties.EndpointConfigName
        ),
    )
    return [register, model, config, endpoint]


def _build_recommend(ctx: _Context, step: Step) -> list:
    from sagemaker.mlops.workflow import ProcessingStep

    # The output goes to <storage_root>/recommendations/dt=<run date> through ncf.storage (resumable, atomic), not
    # through a processing output. DependsOn gate (from the declaration): after the gate whatever it decided.
    arguments = _flags(ctx, step) + [
        "--storage-root", ctx.params["storage_root"],
        "--run-date", _from_preprocess(ctx, "run_date"),
        "--skip-without-champion", "true",
    ]
    step_args = _processor(ctx, "recommend").run(arguments=arguments)
    # Retried: a retry resumes from the parts the failed job wrote. Not cached: it reads the champion, which moves.
    return [ProcessingStep(name="recommend", step_args=step_args, retry_policies=_retry_policies(ctx, job=True))]


# (context, declared step) -> the SageMaker steps that implement it; the last one stands for the step
Builder = Callable[[_Context, Step], list]

# How this backend builds each declared step (the last SDK step of each list stands for the declared step).
BUILDERS: dict[str, Builder] = {
    "preprocess": _build_preprocess,
    "train": _build_train,
    "gate": _build_gate,
    "deploy": _build_deploy,
    "recommend": _build_recommend,
}


def _gate_branch(ctx: _Context, guarded: list) -> Any:
    from sagemaker.core.workflow.conditions import ConditionEquals
    from sagemaker.core.workflow.functions import JsonGet
    from sagemaker.mlops.workflow import ConditionStep

    report = ctx.property_files.get(GATE.step)
    if report is None:
        raise AdapterError(f"the sagemaker adapter's {GATE.step!r} builder must register an evaluation PropertyFile")
    gate_step = ctx.steps[GATE.step]

    def field(path: str) -> Any:
        return JsonGet(step_name=gate_step.name, property_file=report, json_path=path)

    # Nothing on the else branch: keeping the champion is a successful retraining run, not a failure.
    return ConditionStep(
        name=f"{GATE.step}-{GATE.output}",
        conditions=[ConditionEquals(left=field(GATE.output), right=GATE.equals)],
        if_steps=guarded,
        else_steps=[],
    )


_ECR = re.compile(r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?/[a-z0-9][a-z0-9._/-]*$")
_CLUSTER_ONLY_SUFFIXES = (".svc", ".svc.cluster.local", ".cluster.local", ".local", ".localhost")


def check_settings(settings: SageMakerSettings, tracking_uri: str) -> None:
    """Refuse, naming the setting, what a SageMaker job could not use (see the module docstring)."""
    if not _ECR.match(settings.image_registry):
        raise AdapterError(
            f"SageMaker image_registry {settings.image_registry!r}: SageMaker jobs pull from ECR only "
            f"(<account>.dkr.ecr.<region>.amazonaws.com/<prefix>); push the -sagemaker images there "
            f"(docs/cluster.md, SageMaker) and pass --sagemaker-image-registry"
        )
    if bool(settings.subnets) != bool(settings.security_group_ids):
        raise AdapterError("SageMaker VPC: give both subnets and security groups, or neither")
    url = urlparse(tracking_uri)
    host = url.hostname or ""
    if url.scheme not in ("http", "https") or not host:
        raise AdapterError(
            f"tracking_uri {tracking_uri!r}: SageMaker jobs log to an MLflow tracking server over HTTP; set "
            f"tracking_uri to an http(s):// address they can reach (--param tracking_uri=...)"
        )
    if "." not in host or host.endswith(_CLUSTER_ONLY_SUFFIXES) or host.startswith("127.") or host == "::1":
        raise AdapterError(
            f"tracking_uri {tracking_uri!r}: {host} resolves only inside a Kubernetes cluster or on one machine, "
            f"never from a SageMaker job; use an address in the jobs' VPC (--sagemaker-subnet / "
            f"--sagemaker-security-group) or a public one (docs/cluster.md, SageMaker)"
        )


def build_pipeline(
    settings: SageMakerSettings = SageMakerSettings(),
    steps: tuple[Step, ...] = STEPS,
    builders: dict[str, Builder] | None = None,
    overrides: dict[str, Any] | None = None,
):
    """The SageMaker Pipeline object (call `.definition()`, `.upsert()`, `.start()` on it)."""
    # SDK 3.27 builds a boto3 client while importing sagemaker.serve: without a region that import fails.
    os.environ.setdefault("AWS_DEFAULT_REGION", settings.region)
    from sagemaker.mlops.workflow import Pipeline

    builders = BUILDERS if builders is None else builders
    definition.check_adapter("sagemaker", builders, steps)
    overrides = overrides or {}
    declared = definition.parameters(steps)
    unknown = sorted(set(overrides) - {p.name for p in declared})
    if unknown:
        raise AdapterError(f"unknown pipeline parameter(s) {unknown}; known: {[p.name for p in declared]}")
    root = overrides.get("storage_root", next((p.default for p in declared if p.name == "storage_root"), ""))
    if not str(root).startswith("s3://"):
        raise AdapterError(
            f"storage_root must be an s3:// URI for SageMaker (got {root!r}); set it in the parameters file "
            f"(config/pipeline-params.yaml) or with --param storage_root=s3://bucket/prefix"
        )
    tracking = overrides.get("tracking_uri", next((p.default for p in declared if p.name == "tracking_uri"), ""))
    check_settings(settings, str(tracking))
    ctx = _Context(
        settings=settings,
        session=_session(settings),
        params={p.name: _parameter(p, overrides.get(p.name, p.default)) for p in declared},
    )
    top_level: list = []
    guarded: list = []
    by_name = {s.name: s for s in steps}
    for name in definition.dependency_order(steps):
        built = builders[name](ctx, by_name[name])
        for upstream in by_name[name].after:
            if not (name in GATE.guarded and upstream == GATE.step):  # the condition step orders those
                built[0].add_depends_on([ctx.steps[upstream]])
        ctx.steps[name] = built[-1]
        (guarded if name in GATE.guarded else top_level).extend(built)
    top_level.append(_gate_branch(ctx, guarded))
    return Pipeline(
        name=settings.pipeline_name,
        parameters=list(ctx.params.values()),
        steps=top_level,
        sagemaker_session=ctx.session,
    )


def quiet_sdk_logs(region: str = SageMakerSettings.region) -> None:
    """The SDK logs every field it drops from a definition and warns that nothing runs; neither is news when
    compiling. Call before building."""
    import warnings

    os.environ.setdefault("AWS_DEFAULT_REGION", region)
    import sagemaker.mlops.workflow  # noqa: F401  (creates the SDK's loggers)
    import sagemaker.serve  # noqa: F401

    for name in list(logging.root.manager.loggerDict):
        if name.startswith("sagemaker"):
            logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="Running within a PipelineSession")


def definition_json(settings: SageMakerSettings = SageMakerSettings(), **kwargs) -> str:
    """The pipeline definition JSON, canonical (sorted keys) so the same input gives byte-identical output."""
    import json

    return json.dumps(json.loads(build_pipeline(settings, **kwargs).definition()), indent=2, sort_keys=True) + "\n"
