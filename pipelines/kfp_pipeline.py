"""The KFP adapter: the declared pipeline (pipelines/definition.py) as a KFP pipeline.

The same pipeline object is compiled to IR YAML for a cluster (`ncfctl compile`, `ncfctl submit`) and run
on this machine by kfp.local (`ncfctl run`). Kubernetes settings (GPU, AWS credentials from a Secret,
retries, timeouts, caching, image pull policy and secrets, the run's deadline) are kfp-kubernetes platform
config: the local runner ignores them.

The preprocess task gets the run's scheduled time (`dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER`; the creation
time for a run nobody scheduled) as an input: an empty `run_date` means that day, and the time is part of the
task's cache key, so a daily run never reuses an earlier day's partition (kfp.local gets "": today, UTC).
`BACKEND_FEATURES` lists what the compiled IR needs from the KFP backend, with the release that first provides
it; docs/cluster.md pins one that has them all (tests/manifests/test_cluster_docs.py checks).
"""

from __future__ import annotations

import contextvars
import dataclasses
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kfp import compiler, dsl, kubernetes

from components.deploy import deploy
from components.gate import gate
from components.preprocess import preprocess
from components.recommend import recommend
from components.train import train
from pipelines import definition, images
from pipelines.definition import GATE, STEPS, AdapterError, Step


@dataclasses.dataclass(frozen=True)
class KubernetesSettings:
    """Cluster-side settings of the compiled pipeline (flags of `ncfctl compile` / `ncfctl submit`)."""

    gpu_count: int = 1  # nvidia.com/gpu for the train task; 0 trains on CPU
    # The nvidia.com/gpu request alone puts the pod on a node whose NVIDIA device plugin advertises GPUs (the
    # documented install); a label selector is only for choosing among GPU nodes, e.g. by instance type.
    gpu_node_selector: tuple[tuple[str, str], ...] = ()
    gpu_tolerations: tuple[tuple[str, str], ...] = (("nvidia.com/gpu", "NoSchedule"),)  # (key, effect)
    # The names in manifests/: credentials from a Secret (optional: on EKS the IRSA role applies instead),
    # region and endpoint (MinIO) from a ConfigMap. "" turns either off.
    aws_secret: str = "ncf-s3-credentials"
    aws_secret_keys: tuple[str, ...] = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
    storage_config_map: str = "ncf-storage"
    storage_config_keys: tuple[str, ...] = ("AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")
    retries: int = 2
    backoff: str = "60s"
    backoff_factor: float = 2.0
    backoff_max: str = "1h"
    timeouts_s: tuple[tuple[str, int], ...] = (
        ("preprocess", 2 * 3600),
        ("train", 6 * 3600),
        ("gate", 3600),
        ("deploy", 1200),
        ("recommend", 2 * 3600),
    )
    caching: bool = True  # preprocess and train only: gate and deploy change the registry / serving, recommend
    # reads the champion
    # Argo fails the whole run after this: bounds a task that never starts (a train pod no node can take stays
    # Pending, and a pod's activeDeadlineSeconds only counts once it runs). 0: no deadline.
    run_deadline_s: int = 12 * 3600
    image_pull_secrets: tuple[str, ...] = ()  # docker-registry Secrets in KFP's namespace (private registry)


# (declared step, all pipeline parameters, tasks built so far) -> this step's task
Builder = Callable[[Step, dict[str, Any], dict[str, dsl.PipelineTask]], dsl.PipelineTask]


def _inputs(step: Step, params: dict[str, Any]) -> dict[str, Any]:
    """The pipeline parameters that are this step's user-facing config fields."""
    return {name: params[name] for name in definition.step_parameters(step)}


# Set while build_pipeline runs: is the pipeline for kfp.local? kfp.local (2.17.3) cannot resolve the time
# placeholders (it fails on any `{{$.…}}` it does not know): there preprocess gets "" (an empty run_date: today).
_FOR_KFP_LOCAL: contextvars.ContextVar[bool] = contextvars.ContextVar("for_kfp_local", default=False)


def _build_preprocess(step, params, tasks):
    scheduled_time = "" if _FOR_KFP_LOCAL.get() else dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER
    return preprocess(scheduled_time=scheduled_time, **_inputs(step, params))


def _build_train(step, params, tasks):
    return train(
        partition=tasks["preprocess"].outputs["partition"],
        pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        **_inputs(step, params),
    )


def _build_gate(step, params, tasks):
    return gate(
        partition=tasks["preprocess"].outputs["partition"],
        package=tasks["train"].outputs["package"],
        pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        **_inputs(step, params),
    )


def _build_deploy(step, params, tasks):
    return deploy(**_inputs(step, params))


def _build_recommend(step, params, tasks):
    # After the gate (ordered by `Step.after`), whatever it decided; the partition gives the storage root and date.
    return recommend(partition=tasks["preprocess"].outputs["partition"], **_inputs(step, params))


# How this backend builds each declared step. A step declared in definition.STEPS but missing here makes
# `build_pipeline` fail with a message naming this adapter.
BUILDERS: dict[str, Builder] = {
    "preprocess": _build_preprocess,
    "train": _build_train,
    "gate": _build_gate,
    "deploy": _build_deploy,
    "recommend": _build_recommend,
}


# Side-effecting steps: a cache hit would skip registering a version or rolling out the champion; recommend reads
# the champion, which the gate may just have moved (its inputs alone do not say which model it would use).
NEVER_CACHED = frozenset({"gate", "deploy", "recommend"})
# A retried gate could register the same model twice (deploy is idempotent: retrying it is safe).
NEVER_RETRIED = frozenset({"gate"})


def _apply_kubernetes(task: dsl.PipelineTask, step: str, settings: KubernetesSettings) -> None:
    task.set_caching_options(settings.caching and step not in NEVER_CACHED)
    if settings.retries and step not in NEVER_RETRIED:
        task.set_retry(
            num_retries=settings.retries,
            backoff_duration=settings.backoff,
            backoff_factor=settings.backoff_factor,
            backoff_max_duration=settings.backoff_max,
        )
    timeout = dict(settings.timeouts_s).get(step)
    if timeout:
        kubernetes.set_timeout(task, timeout)
    kubernetes.set_image_pull_policy(task, images.PULL_POLICY)
    if settings.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(settings.image_pull_secrets))
    if settings.aws_secret:
        kubernetes.use_secret_as_env(
            task,
            secret_name=settings.aws_secret,
            secret_key_to_env={k: k for k in settings.aws_secret_keys},
            optional=True,
        )
    if settings.storage_config_map:
        kubernetes.use_config_map_as_env(
            task,
            config_map_name=settings.storage_config_map,
            config_map_key_to_env={k: k for k in settings.storage_config_keys},
            optional=True,
        )
    if step == "train" and settings.gpu_count > 0:
        task.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(settings.gpu_count)
        for key, value in settings.gpu_node_selector:
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for key, effect in settings.gpu_tolerations:
            kubernetes.add_toleration(task, key=key, operator="Exists", effect=effect)


def build_pipeline(
    settings: KubernetesSettings = KubernetesSettings(),
    steps: tuple[Step, ...] = STEPS,
    builders: dict[str, Builder] | None = None,
    overrides: dict[str, Any] | None = None,
    for_kfp_local: bool | None = None,
):
    """The KFP pipeline: one parameter per declared parameter (`overrides` replaces defaults).

    `for_kfp_local`: None = when `kfp.local.init` has run (build the pipeline after it)."""
    if for_kfp_local is None:
        from kfp.local import config as local_config

        for_kfp_local = local_config.LocalExecutionConfig.instance is not None
    builders = BUILDERS if builders is None else builders
    definition.check_adapter("kfp", builders, steps)
    params = definition.parameters(steps)
    overrides = overrides or {}
    unknown = sorted(set(overrides) - {p.name for p in params})
    if unknown:
        raise AdapterError(f"unknown pipeline parameter(s) {unknown}; known: {[p.name for p in params]}")
    order = definition.dependency_order(steps)
    by_name = {s.name: s for s in steps}

    # KFP passes pipeline parameters positionally, in signature order; those without a default come first.
    ordered = sorted(params, key=lambda p: p.name in overrides or not p.required)

    def body(*args):
        values = dict(zip([p.name for p in ordered], args, strict=True))
        tasks: dict[str, dsl.PipelineTask] = {}
        for name in order:
            if name in GATE.guarded:
                with dsl.If(tasks[GATE.step].outputs["Output"] == GATE.equals, name=f"{GATE.step}-{GATE.output}"):
                    task = builders[name](by_name[name], values, tasks)
            else:
                task = builders[name](by_name[name], values, tasks)
            task.set_display_name(name)
            for upstream in by_name[name].after:
                task.after(tasks[upstream])
            _apply_kubernetes(task, name, settings)
            tasks[name] = task

    body.__signature__ = inspect.Signature(
        [
            inspect.Parameter(
                p.name,
                inspect.Parameter.POSITIONAL_OR_KEYWORD,
                default=overrides.get(p.name, inspect.Parameter.empty if p.required else p.default),
                annotation=p.type,
            )
            for p in ordered
        ]
    )
    body.__name__ = definition.PIPELINE_NAME.replace("-", "_")
    config = dsl.PipelineConfig(active_deadline_seconds=settings.run_deadline_s or None)
    token = _FOR_KFP_LOCAL.set(for_kfp_local)
    try:  # the body runs here: the decorator builds the graph
        return dsl.pipeline(name=definition.PIPELINE_NAME, description=definition.DESCRIPTION,
                            pipeline_config=config)(body)
    finally:
        _FOR_KFP_LOCAL.reset(token)


def compile_ir(path: str | Path, settings: KubernetesSettings = KubernetesSettings(), **kwargs) -> Path:
    """Compile the pipeline to KFP IR YAML at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pipeline = build_pipeline(settings, for_kfp_local=False, **kwargs)  # for a cluster, even after kfp.local ran
    compiler.Compiler().compile(pipeline, package_path=str(path))
    return path


# What the compiled IR uses that KFP backends before a given release ignore, each with that release and where in
# kubeflow/pipelines it is implemented. A backend without one still runs the pipeline, wrongly: every optional
# Secret / ConfigMap key becomes required (CreateContainerConfigError), the scheduled time stays the literal
# placeholder (one cache key for every day: day 1's partition for ever), no deadline ends a stuck run.
BACKEND_FEATURES: dict[str, tuple[str, str]] = {
    "optional Secret / ConfigMap env": (
        "2.15.0", "backend/src/v2/driver/k8s.go: SecretKeySelector / ConfigMapKeySelector .Optional"),
    "scheduled / created time placeholders": (
        "2.17.0", "backend/src/v2/cmd/driver/main.go resolvePipelineJobTimes + driver/resolve.go (#13474)"),
    "run deadline (pipelineConfig.activeDeadlineSeconds)": (
        "2.17.0", "backend/src/v2/compiler/argocompiler/argo.go buildActiveDeadlineSeconds"),
}
_TIME_PLACEHOLDERS = (dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER, dsl.PIPELINE_JOB_CREATE_TIME_UTC_PLACEHOLDER)


def backend_features(ir: str) -> dict[str, str]:
    """The BACKEND_FEATURES a compiled IR (YAML text) uses -> the first KFP backend release that provides each."""
    import yaml

    docs = list(yaml.safe_load_all(ir))
    spec, platform = docs[0], (docs[1] if len(docs) > 1 else {}) or {}
    kubernetes_spec = platform.get("platforms", {}).get("kubernetes", {})
    executors = kubernetes_spec.get("deploymentSpec", {}).get("executors", {}).values()
    used = set()
    if any(ref.get("optional") for e in executors for ref in e.get("secretAsEnv", []) + e.get("configMapAsEnv", [])):
        used.add("optional Secret / ConfigMap env")

    def constants(node):
        if isinstance(node, dict):
            if "constant" in node and isinstance(node["constant"], str):
                yield node["constant"]
            for value in node.values():
                yield from constants(value)
        elif isinstance(node, list):
            for value in node:
                yield from constants(value)

    if any(c in _TIME_PLACEHOLDERS for c in constants(spec)):
        used.add("scheduled / created time placeholders")
    if kubernetes_spec.get("pipelineConfig", {}).get("activeDeadlineSeconds"):
        used.add("run deadline (pipelineConfig.activeDeadlineSeconds)")
    return {name: BACKEND_FEATURES[name][0] for name in sorted(used)}
