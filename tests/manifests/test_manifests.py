"""manifests/: every kustomization builds with `kubectl kustomize`, every object validates (core kinds against
Kubernetes' schemas, custom resources against their CRDs), and the wiring between objects holds: references
resolve, RBAC is least-privilege, secrets are referenced but never rendered, workloads are non-root with
resources and probes, and the jobs' command lines parse with the steps' own CLIs."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT
from tests.manifests.validation import (
    MANIFESTS,
    SCHEMAS_DIR,
    ManifestError,
    build,
    crd_kinds_known,
    describe,
    is_custom_resource,
    kustomization_dirs,
    validate,
)

DIRS = kustomization_dirs()
OVERLAYS = {"local": MANIFESTS / "overlays" / "local", "aws": MANIFESTS / "overlays" / "aws"}
JOBS = [d for d in DIRS if d.parent.name == "jobs"]
EXAMPLE_SECRETS = MANIFESTS / "secrets" / "example-secrets.yaml"
PLACEHOLDER = "REPLACE_ME"
IRSA = "eks.amazonaws.com/role-arn"


def _rel(path: Path) -> str:
    return str(path.relative_to(MANIFESTS))


def _by_kind(objects, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _pod_specs(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Pod specs of the workload kinds that carry one."""
    if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
        yield obj["spec"]["template"]["spec"]


def _containers(obj: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for spec in _pod_specs(obj):
        yield from spec.get("initContainers", [])
        yield from spec.get("containers", [])
    if obj["kind"] == "ServingRuntime":
        yield from obj["spec"]["containers"]


def _walk(node: Any, key: str) -> Iterator[Any]:
    """Every value stored under `key` anywhere in a nested document."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key:
                yield v
            yield from _walk(v, key)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, key)


def test_every_expected_kustomization_exists():
    names = {_rel(d) for d in DIRS}
    assert {"base", "overlays/local", "overlays/aws", "jobs/preprocess-spark", "jobs/train-ddp",
            "jobs/recommend-shards"} <= names


@pytest.mark.parametrize("directory", DIRS, ids=_rel)
def test_kustomization_builds_and_every_object_validates(directory):
    objects = build(directory)
    assert objects, f"{_rel(directory)} renders nothing"
    problems, unchecked = [], []
    for obj in objects:
        if is_custom_resource(obj) and not crd_kinds_known():
            unchecked.append(describe(obj))
            continue
        try:
            validate(obj)
        except ManifestError as exc:
            problems.append(str(exc))
    assert not problems, "\n".join(problems)
    if unchecked:
        pytest.skip(f"core kinds valid; CRD schemas not found at {SCHEMAS_DIR}, so not validated: {unchecked}")


@pytest.mark.parametrize("directory", [*OVERLAYS.values(), *JOBS], ids=_rel)
def test_every_namespaced_object_names_its_namespace(directory):
    """Without one, `kubectl apply` puts it in whatever namespace the user's context points at."""
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass"}
    missing = [describe(o) for o in build(directory) if o["kind"] not in cluster_scoped
               and not o["metadata"].get("namespace")]
    assert not missing, f"{_rel(directory)}: no metadata.namespace on {missing}"


def test_validation_rejects_what_the_api_server_would():
    """The validators are not vacuous: a misspelt field in a core kind and in a custom resource both fail."""
    objects = build(OVERLAYS["aws"])
    deployment = yaml.safe_load(yaml.safe_dump(_by_kind(objects, "Deployment")["mlflow"]))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(ManifestError, match="readinessProbes"):
        validate(deployment)
    if not crd_kinds_known():
        pytest.skip(f"CRD schemas not found at {SCHEMAS_DIR}")
    isvc = yaml.safe_load(yaml.safe_dump(_by_kind(objects, "InferenceService")["ncf-recommender"]))
    isvc["spec"]["predictor"]["minReplica"] = 1
    with pytest.raises(ManifestError, match="minReplica"):
        validate(isvc)


# ---- secrets -------------------------------------------------------------------------------------------------
def _example_secrets() -> dict[str, dict[str, Any]]:
    return {s["metadata"]["name"]: s for s in yaml.safe_load_all(EXAMPLE_SECRETS.read_text()) if s}


def test_no_secret_is_rendered_by_any_kustomization():
    for directory in DIRS:
        secrets = [describe(o) for o in build(directory) if o["kind"] == "Secret"]
        assert not secrets, f"{_rel(directory)} renders {secrets}: secrets are created in the cluster, never committed"


def test_example_secrets_hold_placeholders_only():
    secrets = _example_secrets()
    assert secrets
    for name, secret in secrets.items():
        validate(secret)
        assert "data" not in secret, f"{name}: use stringData with placeholders"
        assert secret["stringData"], name
        for key, value in secret["stringData"].items():
            assert value == PLACEHOLDER, f"{EXAMPLE_SECRETS.name}: {name}.{key} is {value!r}, not {PLACEHOLDER}"


def _secret_references(objects) -> Iterator[tuple[str, str, str | None, bool]]:
    """(where, secret name, key or None, optional) for every reference to a Secret."""
    for obj in objects:
        for ref in _walk(obj, "secretKeyRef"):
            yield describe(obj), ref["name"], ref["key"], bool(ref.get("optional"))
        for ref in _walk(obj, "secretRef"):
            yield describe(obj), ref["name"], None, bool(ref.get("optional"))
        if obj["kind"] == "ServiceAccount":
            for ref in obj.get("secrets", []):
                yield describe(obj), ref["name"], None, False
        for refs in _walk(obj, "imagePullSecrets"):
            for ref in refs:
                yield describe(obj), ref["name"], None, False


def test_every_referenced_secret_and_key_is_described_by_the_example():
    secrets = _example_secrets()
    seen = set()
    for directory in DIRS:
        for where, name, key, _ in _secret_references(build(directory)):
            seen.add(name)
            assert name in secrets, f"{_rel(directory)}: {where} uses Secret {name!r}, missing from {EXAMPLE_SECRETS.name}"
            if key is not None:
                assert key in secrets[name]["stringData"], f"{_rel(directory)}: {where} uses {name}.{key}, not in the example"
    assert seen == set(secrets), f"example secrets nobody uses: {sorted(set(secrets) - seen)}"


# ---- config maps ---------------------------------------------------------------------------------------------
def _configmap_references(objects) -> Iterator[tuple[str, str, str | None, bool]]:
    for obj in objects:
        for ref in _walk(obj, "configMapKeyRef"):
            yield describe(obj), ref["name"], ref["key"], bool(ref.get("optional"))
        for ref in _walk(obj, "configMapRef"):
            yield describe(obj), ref["name"], None, bool(ref.get("optional"))


@pytest.mark.parametrize("directory", [*OVERLAYS.values(), *JOBS], ids=_rel)
def test_configmap_references_resolve(directory):
    """Overlays must define what they use; the jobs run next to either overlay, so both must define it."""
    providers = [build(directory)] if directory in OVERLAYS.values() else [build(d) for d in OVERLAYS.values()]
    references = list(_configmap_references(build(directory)))
    assert references or directory.name == "base"
    for objects in providers:
        maps = _by_kind(objects, "ConfigMap")
        for where, name, key, optional in references:
            if optional:
                continue
            assert name in maps, f"{_rel(directory)}: {where} uses ConfigMap {name!r}, which is not defined"
            if key is not None:
                assert key in maps[name]["data"], f"{_rel(directory)}: {where} uses {name}.{key}, which is not defined"


# ---- RBAC ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pipeline_may_get_create_patch_inferenceservices_and_nothing_else(overlay):
    objects = build(OVERLAYS[overlay])
    roles = _by_kind(objects, "Role")
    assert not [describe(o) for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    for role in roles.values():
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], f"{describe(role)}: wildcard in {field}"
    deployer = [r for r in roles.values() if any("inferenceservices" in rule["resources"] for rule in r["rules"])]
    assert len(deployer) == 1
    assert deployer[0]["rules"] == [
        {"apiGroups": ["serving.kserve.io"], "resources": ["inferenceservices"], "verbs": ["get", "create", "patch"]}
    ]
    bindings = [b for b in _by_kind(objects, "RoleBinding").values() if b["roleRef"]["name"] == deployer[0]["metadata"]["name"]]
    assert len(bindings) == 1
    assert bindings[0]["roleRef"]["kind"] == "Role"  # namespaced: only the InferenceServices in this namespace
    assert [s["kind"] for s in bindings[0]["subjects"]] == ["ServiceAccount"]
    # Nothing else is granted to the pipeline's account.
    subject = (bindings[0]["subjects"][0]["namespace"], bindings[0]["subjects"][0]["name"])
    other = [
        describe(b) for b in _by_kind(objects, "RoleBinding").values()
        if b is not bindings[0] and any((s.get("namespace"), s["name"]) == subject for s in b["subjects"])
    ]
    assert not other, f"the pipeline's service account is also bound by {other}"


# ---- workloads -----------------------------------------------------------------------------------------------
def _non_root(pod_spec: dict[str, Any], container: dict[str, Any]) -> bool:
    pod = pod_spec.get("securityContext", {}) if pod_spec else {}
    own = container.get("securityContext", {})
    return bool(own.get("runAsNonRoot", pod.get("runAsNonRoot"))) and own.get("runAsUser", pod.get("runAsUser", 1)) != 0


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workloads_are_non_root_with_resources_and_probes(overlay):
    for obj in build(OVERLAYS[overlay]):
        pod_spec = next(_pod_specs(obj), None)
        for container in _containers(obj):
            where = f"{overlay}: {describe(obj)} container {container['name']}"
            assert _non_root(pod_spec, container), f"{where}: not runAsNonRoot"
            assert container.get("securityContext", {}).get("allowPrivilegeEscalation") is False, where
            resources = container.get("resources", {})
            assert resources.get("requests", {}).get("memory") and resources.get("requests", {}).get("cpu"), where
            assert resources.get("limits", {}).get("memory"), f"{where}: no memory limit"
        if obj["kind"] in ("Deployment", "StatefulSet"):
            for container in pod_spec["containers"]:
                assert "readinessProbe" in container and "livenessProbe" in container, f"{describe(obj)}: probes"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_inferenceservice_is_wired_to_runtime_account_and_storage(overlay):
    objects = build(OVERLAYS[overlay])
    isvc = _by_kind(objects, "InferenceService")["ncf-recommender"]
    predictor = isvc["spec"]["predictor"]
    runtime = _by_kind(objects, "ServingRuntime")[predictor["model"]["runtime"]]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    model_format = predictor["model"]["modelFormat"]
    assert (model_format["name"], model_format.get("version")) in formats
    assert predictor["serviceAccountName"] in _by_kind(objects, "ServiceAccount")
    assert predictor["model"]["storageUri"].startswith("s3://")
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["model"]["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{isvc['metadata']['name']}"
    args = runtime["spec"]["containers"][0]["args"]
    assert "--model-name={{.Name}}" in args and "--model-uri=/mnt/models" in args
    # The CI deploy job keeps the live model: it rewrites the one storageUri line of the rendered overlay.
    rendered = yaml.safe_dump_all(objects)
    assert len(re.findall(r"^\s*storageUri:", rendered, flags=re.M)) == 1


def test_aws_overlay_adds_canary_irsa_and_external_database():
    aws, local = build(OVERLAYS["aws"]), build(OVERLAYS["local"])
    canary = _by_kind(aws, "InferenceService")["ncf-recommender"]["spec"]["predictor"].get("canaryTrafficPercent")
    assert canary is not None and 0 < canary < 100
    assert "canaryTrafficPercent" not in _by_kind(local, "InferenceService")["ncf-recommender"]["spec"]["predictor"]
    for name, account in _by_kind(aws, "ServiceAccount").items():
        assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@-]+", account["metadata"]["annotations"][IRSA]), name
    assert not [n for n, a in _by_kind(local, "ServiceAccount").items() if IRSA in a["metadata"].get("annotations", {})]
    db = next(m for n, m in _by_kind(aws, "ConfigMap").items() if n.startswith("mlflow-db-connection"))["data"]
    assert db["host"] != "mlflow-postgres" and "sslmode=require" in db["uri-query"]
    assert "mlflow-postgres" not in _by_kind(aws, "StatefulSet")
    assert "mlflow-postgres" in _by_kind(local, "StatefulSet")
    storage = _by_kind(aws, "ConfigMap")["ncf-storage"]["data"]
    assert "AWS_ENDPOINT_URL" not in storage  # real S3 on AWS; MinIO's endpoint only in local
    assert _by_kind(local, "ConfigMap")["ncf-storage"]["data"]["AWS_ENDPOINT_URL"].startswith("http://minio.")


def test_images_are_the_projects_own_or_pinned():
    from pipelines import images

    own = {images.DEFAULT_REGISTRY + "/" + name: name for name in images.NAMES}
    for directory in DIRS:
        for obj in build(directory):
            for ref in _walk(obj, "image"):
                repository, _, tag = ref.rpartition(":")
                assert repository and tag and "/" not in tag, f"{_rel(directory)}: {describe(obj)}: image {ref!r} has no tag"
                if repository not in own:
                    assert tag != "latest" and re.search(r"\d", tag), f"{describe(obj)}: {ref} is not pinned"


# ---- one build, immutably (issue #12, defect 3) ---------------------------------------------------------------
PIN = MANIFESTS / "pin-images.sh"
CI_REGISTRY = "registry.gitlab.example.com/group/ncf"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def pinned(directory: Path, registry: str = CI_REGISTRY, tag: str = COMMIT) -> list[dict[str, Any]]:
    result = subprocess.run([str(PIN), str(directory), registry, tag], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _own_image_fields(obj: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """(the dict holding `image`, its value) for every image of the project's own."""
    from pipelines import images

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("image"), str) and node["image"].rpartition(":")[0].rsplit("/", 1)[-1] in images.NAMES:
                yield node, node["image"]
            for value in node.values():
                yield from walk(value)
        elif isinstance(node, list):
            for item in node:
                yield from walk(item)

    yield from walk(obj)


@pytest.mark.parametrize("directory", [*OVERLAYS.values(), *JOBS], ids=_rel)
def test_what_ci_renders_names_one_build_of_every_project_image(directory):
    """The ServingRuntime, MLflow, the SparkApplication, the TrainJob and the recommend Job all run
    <registry>/<name>:<commit>: a tag CI never reuses (docs/cluster.md), and every object still validates."""
    from pipelines import images

    objects = pinned(directory)
    refs = [ref for obj in objects for _, ref in _own_image_fields(obj)]
    assert refs, _rel(directory)
    for ref in refs:
        assert ref.startswith(CI_REGISTRY + "/") and ref.endswith(":" + COMMIT), f"{_rel(directory)}: {ref}"
        assert ref.rsplit("/", 1)[-1].split(":")[0] in images.NAMES
    kinds = {obj["kind"] for obj in objects for _ in _own_image_fields(obj)}
    assert kinds & {"ServingRuntime", "SparkApplication", "TrainJob", "Deployment", "Job"}
    for obj in objects:
        if is_custom_resource(obj) and not crd_kinds_known():
            continue
        validate(obj)
    script_names = re.search(r"for name in ([\w\s-]+); do", PIN.read_text()).group(1).split()
    assert script_names == list(images.NAMES)


def test_kubernetes_pulls_a_cached_image_only_because_tags_are_immutable():
    """Pods that can say so say IfNotPresent explicitly (with one tag per build a cached image is the right one);
    the TrainJob's trainer has no such field and gets Kubernetes' default for a non-latest tag, the same."""
    for directory in [*OVERLAYS.values(), *JOBS]:
        for obj in pinned(directory):
            for holder, ref in _own_image_fields(obj):
                if obj["kind"] == "TrainJob":
                    assert "imagePullPolicy" not in holder and not ref.endswith(":latest")
                else:
                    assert holder.get("imagePullPolicy") == "IfNotPresent", f"{_rel(directory)}: {describe(obj)} {ref}"


def test_a_private_registry_is_pulled_with_a_secret_on_aws():
    accounts = _by_kind(build(OVERLAYS["aws"]), "ServiceAccount")
    for name in ("ncf-serving", "ncf-mlflow", "ncf-spark", "ncf-trainer"):
        assert accounts[name].get("imagePullSecrets") == [{"name": "ncf-registry"}], name
    assert _example_secrets()["ncf-registry"]["type"] == "kubernetes.io/dockerconfigjson"
    # Every pod running a project image runs under one of those accounts.
    app = _by_kind(build(MANIFESTS / "jobs" / "preprocess-spark"), "SparkApplication")["ncf-preprocess"]["spec"]
    assert app["driver"]["serviceAccount"] == app["executor"]["serviceAccount"] == "ncf-spark"
    isvc = _by_kind(build(OVERLAYS["aws"]), "InferenceService")["ncf-recommender"]
    assert isvc["spec"]["predictor"]["serviceAccountName"] == "ncf-serving"


# ---- jobs: the command lines are the steps' own CLIs ---------------------------------------------------------
def _step_parser(module_name: str, config_name: str) -> argparse.ArgumentParser:
    from ncf.config import add_arguments

    if importlib.util.find_spec(module_name) is None:
        pytest.skip(f"{module_name} does not exist yet")
    module = importlib.import_module(module_name)
    config = getattr(module, config_name)
    assert dataclasses.is_dataclass(config)
    parser = argparse.ArgumentParser(prog=module_name, exit_on_error=False)
    add_arguments(parser, config)
    return parser


def _parse(parser: argparse.ArgumentParser, args: list[str]) -> argparse.Namespace:
    try:
        return parser.parse_args(args)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise AssertionError(f"{parser.prog} rejects {args}: {exc}") from None


def _image_path_to_repo(uri: str) -> Path:
    # The pipeline image copies the repository to /opt/ncf (docker/pipeline.Dockerfile).
    assert uri.startswith("local:///opt/ncf/"), uri
    return REPO_ROOT / uri.removeprefix("local:///opt/ncf/")


def test_spark_application_runs_the_preprocess_step():
    app = _by_kind(build(MANIFESTS / "jobs" / "preprocess-spark"), "SparkApplication")["ncf-preprocess"]["spec"]
    assert _image_path_to_repo(app["mainApplicationFile"]) == REPO_ROOT / "spark" / "preprocess.py"
    assert (REPO_ROOT / "spark" / "preprocess.py").exists()
    args = _parse(_step_parser("spark.preprocess", "PreprocessConfig"), app["arguments"])
    assert args.input_uri.startswith("s3a://"), "large inputs are read by Spark directly (S3A)"
    assert args.storage_root.startswith("s3://") and args.scratch_dir.startswith("s3a://")
    assert app["driver"]["serviceAccount"] == "ncf-spark"
    assert "ncf-spark" in _by_kind(build(OVERLAYS["aws"]), "ServiceAccount")


def test_trainjob_runs_the_trainer_under_torchrun_on_gpu_nodes():
    job = _by_kind(build(MANIFESTS / "jobs" / "train-ddp"), "TrainJob")["ncf-train-ddp"]["spec"]
    assert job["runtimeRef"]["name"] == "torch-distributed"
    trainer = job["trainer"]
    assert trainer["command"] == ["torchrun", "-m", "ncf.train"]
    assert trainer["numNodes"] >= 2 and trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"]
    args = _parse(_step_parser("ncf.train", "TrainConfig"), trainer["args"])
    assert args.device == "cuda"
    assert args.candidates == "", "model selection refuses torchrun: the DDP job trains --family ncf alone"
    pod = job["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]["template"]
    assert pod["spec"]["template"]["spec"]["serviceAccountName"] == "ncf-trainer"


def test_recommend_shards_job_gives_each_pod_its_shard_of_the_users():
    job = _by_kind(build(MANIFESTS / "jobs" / "recommend-shards"), "Job")["ncf-recommend-shards"]["spec"]
    assert job["completionMode"] == "Indexed" and job["maxFailedIndexes"] == 0
    pod = job["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["ncfctl", "recommend"] and pod["serviceAccountName"] == "ncf-trainer"
    env = {e["name"]: e for e in container["env"]}
    # Kubernetes expands $(VAR) in args only from the container's declared env: the index must come from there.
    assert env["SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == \
        "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    for index in (0, job["completions"] - 1):
        args = _parse(_step_parser("ncf.recommend", "RecommendConfig"),
                      [a.replace("$(SHARD_INDEX)", str(index)) for a in container["args"]])
        assert args.shard_index == index
        assert args.num_shards == job["completions"] == job["parallelism"], "every shard runs, each once"
        assert args.storage_root.startswith("s3://") and args.tracking_uri.startswith("http://")


# ---- the compiled KFP pipeline's pods: they run in KFP's namespace, next to the pipeline's service account ----
def _pipeline_subject(objects) -> dict[str, str]:
    (binding,) = [b for b in _by_kind(objects, "RoleBinding").values() if b["roleRef"]["name"] == "ncf-inferenceservice-deployer"]
    return binding["subjects"][0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pipeline_pods_find_the_storage_settings_the_compiled_pipeline_names(overlay):
    from pipelines.kfp_pipeline import KubernetesSettings

    settings = KubernetesSettings()
    objects = build(OVERLAYS[overlay])
    pipeline_namespace = _pipeline_subject(objects)["namespace"]
    maps = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o["data"] for o in objects if o["kind"] == "ConfigMap"}
    assert (pipeline_namespace, settings.storage_config_map) in maps, (
        f"{overlay}: the pipeline reads ConfigMap {settings.storage_config_map!r} in {pipeline_namespace!r}; not defined"
    )
    for_pipeline, for_platform = maps[(pipeline_namespace, settings.storage_config_map)], maps[("ncf", "ncf-storage")]
    assert "AWS_DEFAULT_REGION" in for_pipeline
    for key in settings.storage_config_keys:
        assert for_pipeline.get(key) == for_platform.get(key), f"{overlay}: {key} differs between the namespaces"
    secret = _example_secrets().get(settings.aws_secret)
    assert secret is not None, f"the pipeline reads Secret {settings.aws_secret!r}; {EXAMPLE_SECRETS.name} lacks it"
    assert set(settings.aws_secret_keys) <= set(secret["stringData"])


# ---- S3A with IRSA (defect 4) -----------------------------------------------------------------------------------
def test_the_kfp_preprocess_step_reads_s3a_with_the_spark_applications_credential_chain():
    """The KFP preprocess step runs Spark in its pod (spark/session.py); the SparkApplication sets S3A's provider in
    sparkConf. Both must be the AWS SDK's default chain (it has IRSA's web identity provider; Hadoop's default has
    not). Checked on a real Spark session."""
    import shutil

    from pyspark.sql import SparkSession

    from spark.session import get_spark

    app = _by_kind(build(MANIFESTS / "jobs" / "preprocess-spark"), "SparkApplication")["ncf-preprocess"]["spec"]
    provider = app["sparkConf"]["spark.hadoop.fs.s3a.aws.credentials.provider"]
    assert provider == "software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider"
    if shutil.which("java") is None:
        pytest.skip("no Java: Spark cannot start")
    started = SparkSession.getActiveSession() is None
    spark = get_spark("local[1]", app_name="ncf-s3a-credentials")
    try:
        assert spark.sparkContext.getConf().get("spark.hadoop.fs.s3a.aws.credentials.provider") == provider
    finally:
        if started:
            spark.stop()


# ---- MLflow for SageMaker jobs (defect 6) -----------------------------------------------------------------------
def test_the_scheduled_runs_mlflow_address_is_served_on_aws():
    """config/pipeline-params.yaml's tracking_uri (used by KFP pods and SageMaker jobs) is a name the aws overlay's
    MLflow answers (--allowed-hosts) behind an internal load balancer for the VPC."""
    from urllib.parse import urlparse

    tracking = urlparse(yaml.safe_load((REPO_ROOT / "config" / "pipeline-params.yaml").read_text())["tracking_uri"])
    objects = build(OVERLAYS["aws"])
    args = _by_kind(objects, "Deployment")["mlflow"]["spec"]["template"]["spec"]["containers"][0]["args"]
    hosts = next(a for a in args if a.startswith("--allowed-hosts=")).split("=", 1)[1].split(",")
    assert tracking.netloc in hosts
    service = _by_kind(objects, "Service")["mlflow-vpc"]
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-scheme"] == "internal"
    assert [p["port"] for p in service["spec"]["ports"]] == [tracking.port]
    pod_labels = _by_kind(objects, "Deployment")["mlflow"]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
