"""The deploy step's KServe side: the InferenceService manifest, create-vs-patch arguments, readiness, errors.

(The local target is exercised for real by tests/serving/conftest.py (start) and the hot-swap test (swap).)
No Kubernetes API server exists here, so nothing below pretends to be one.
"""

from __future__ import annotations

import pytest

from ncf import registry
from ncf.errors import UserError
from serving import deploy
from tests.mlflow_fixtures import make_package, oracle_model
from tests.tiny_data import make_partition

S3_PACKAGE = "s3://ncf/platform/mlflow/1/models/m-abc/artifacts/artifacts/package"


def test_manifest_with_the_serving_runtime():
    manifest = deploy.inference_service_manifest("ncf-recommender", "ml", S3_PACKAGE, model_version="7")
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    assert manifest["metadata"] == {"name": "ncf-recommender", "namespace": "ml",
                                    "annotations": {deploy.MODEL_VERSION_ANNOTATION: "7"}}
    model = manifest["spec"]["predictor"]["model"]
    assert model["storageUri"] == S3_PACKAGE and model["runtime"] == "ncf-predictor"
    assert model["modelFormat"] == {"name": "ncf-package", "version": "1"}
    assert model["readinessProbe"]["httpGet"]["path"] == "/v1/models/ncf-recommender"


def test_manifest_with_a_custom_predictor_container():
    from pipelines.images import SERVING_IMAGE

    manifest = deploy.inference_service_manifest("recs", "default", S3_PACKAGE, runtime="")
    (container,) = manifest["spec"]["predictor"]["containers"]
    assert container["image"] == SERVING_IMAGE and container["name"] == "kserve-container"
    assert {"name": "STORAGE_URI", "value": S3_PACKAGE} in container["env"]
    assert "--model-name=recs" in container["args"] and "--model-uri=/mnt/models" in container["args"]


def test_manifest_rejects_a_local_package_uri():
    with pytest.raises(UserError, match="storage initializer"):
        deploy.inference_service_manifest("ncf", "default", "file:///tmp/mlartifacts/package")


def test_create_when_absent_patch_only_what_deploy_owns():
    manifest = deploy.inference_service_manifest("ncf", "default", S3_PACKAGE, model_version="3")
    assert deploy.apply_arguments(None, manifest) == ("create", manifest)
    existing = {"metadata": {"name": "ncf", "generation": 4}, "spec": {"predictor": {"minReplicas": 2}}}
    action, body = deploy.apply_arguments(existing, manifest)
    assert action == "patch"
    assert body == {"metadata": {"annotations": {deploy.MODEL_VERSION_ANNOTATION: "3"}},
                    "spec": {"predictor": {"model": {"storageUri": S3_PACKAGE}}}}
    custom = deploy.inference_service_manifest("ncf", "default", S3_PACKAGE, runtime="", image="img:1")
    _, body = deploy.apply_arguments(existing, custom)
    assert body["spec"]["predictor"]["containers"] == custom["spec"]["predictor"]["containers"]


@pytest.mark.parametrize(("obj", "ready", "why"), [
    ({}, False, "no Ready condition"),
    ({"status": {"conditions": [{"type": "Ready", "status": "True"}]}}, True, ""),
    ({"status": {"conditions": [{"type": "Ready", "status": "False", "message": "RevisionFailed: pull"}]}},
     False, "RevisionFailed"),
    ({"metadata": {"generation": 5}, "status": {"observedGeneration": 4, "conditions": [
        {"type": "Ready", "status": "True"}]}}, False, "generation 5 not observed"),
    ({"metadata": {"generation": 5}, "status": {"observedGeneration": 5, "conditions": [
        {"type": "Ready", "status": "True"}]}}, True, ""),
])
def test_readiness(obj, ready, why):
    is_ready, reason = deploy.readiness(obj)
    assert is_ready is ready and why in reason


def test_deploy_without_a_champion_fails_clearly(tmp_path, capsys):
    code = deploy.main(["--tracking-uri", registry.default_tracking_uri(tmp_path), "--serving-target", "local"])
    assert code == 2 and "no version has the alias 'champion'" in capsys.readouterr().err


def test_kserve_target_errors_name_the_problem(tmp_path, monkeypatch):
    partition = make_partition(num_users=10, num_items=30, per_user=4, num_neg=5)
    package = make_package(str(tmp_path / "models" / "run"), partition, oracle_model(partition, 1.0))
    tracking_uri = registry.default_tracking_uri(tmp_path)
    version = registry.register_package(package, tracking_uri=tracking_uri).version
    registry.set_alias(tracking_uri, "ncf", registry.CHAMPION, version)
    config = deploy.DeployConfig(tracking_uri=tracking_uri, serving_target="kserve", timeout_s=1)
    # The embedded store's artifacts are local files: nothing a cluster could download.
    with pytest.raises(UserError, match="storage initializer"):
        deploy.run(config)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    config.storage_uri = S3_PACKAGE
    with pytest.raises(UserError, match="no Kubernetes cluster configured"):
        deploy.run(config)
