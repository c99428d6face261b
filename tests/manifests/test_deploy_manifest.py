"""The InferenceService the pipeline's deploy step creates in code (serving/deploy.py) validates against the KServe
CRD like the manifests do, matches what manifests/ deploys (name, namespace, runtime, service account), and its
patch keeps what the overlays own (canary split, replicas, resources) while moving only the model."""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

import pytest

from tests.manifests.validation import MANIFESTS, SCHEMAS_DIR, build, crd_kinds_known, validate

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("serving.deploy") is None, reason="serving/deploy.py not there yet"),
]

PACKAGE = "s3://ncf-platform-example/mlflow/1/0123456789abcdef/artifacts/package"


def _needs_crds() -> None:
    if not crd_kinds_known():
        pytest.skip(f"KServe CRD schema not found under {SCHEMAS_DIR}")


def _overlay_isvc(overlay: str) -> dict[str, Any]:
    return next(o for o in build(MANIFESTS / "overlays" / overlay) if o["kind"] == "InferenceService")


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what CustomObjectsApi.patch_namespaced_custom_object sends)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


@pytest.mark.parametrize("runtime", ["ncf-predictor", ""], ids=["serving-runtime", "custom-container"])
def test_deploy_step_inferenceservice_validates_against_the_kserve_crd(runtime):
    from serving.deploy import inference_service_manifest

    _needs_crds()
    manifest = inference_service_manifest("ncf-recommender", "ncf", PACKAGE, runtime=runtime, model_version="3")
    validate(manifest)


def test_deploy_step_defaults_match_the_manifests():
    """Created from scratch by the pipeline, the InferenceService lands where manifests/ grants and serves."""
    from serving.deploy import DeployConfig, inference_service_manifest

    defaults = DeployConfig()
    local = build(MANIFESTS / "overlays" / "local")
    isvc = _overlay_isvc("local")
    assert defaults.inference_service == isvc["metadata"]["name"]
    assert defaults.namespace == isvc["metadata"]["namespace"], (
        f"DeployConfig.namespace defaults to {defaults.namespace!r}, but manifests/ deploys the InferenceService, "
        f"its ServingRuntime and the pipeline's RBAC in {isvc['metadata']['namespace']!r}"
    )
    assert defaults.runtime in {o["metadata"]["name"] for o in local if o["kind"] == "ServingRuntime"}
    created = inference_service_manifest(defaults.inference_service, defaults.namespace, PACKAGE, runtime=defaults.runtime)
    ours, theirs = created["spec"]["predictor"], isvc["spec"]["predictor"]
    assert ours["serviceAccountName"] == theirs["serviceAccountName"]
    assert ours["model"]["modelFormat"] == theirs["model"]["modelFormat"]
    assert ours["model"]["runtime"] == theirs["model"]["runtime"]
    assert ours["model"]["readinessProbe"]["httpGet"] == theirs["model"]["readinessProbe"]["httpGet"]


@pytest.mark.parametrize("overlay", ["local", "aws"])
def test_deploy_step_patch_moves_only_the_model(overlay):
    from serving.deploy import apply_arguments, inference_service_manifest

    _needs_crds()
    live = _overlay_isvc(overlay)
    manifest = inference_service_manifest(live["metadata"]["name"], live["metadata"]["namespace"], PACKAGE,
                                          model_version="7")
    action, body = apply_arguments(live, manifest)
    assert action == "patch"
    patched = _merge_patch(live, body)
    validate(patched)
    assert patched["spec"]["predictor"]["model"]["storageUri"] == PACKAGE
    expected = copy.deepcopy(live)
    expected["spec"]["predictor"]["model"]["storageUri"] = PACKAGE
    expected["metadata"].setdefault("annotations", {}).update(manifest["metadata"]["annotations"])
    assert patched == expected, "the patch changed more than the model (overlay settings would be lost)"
    if overlay == "aws":
        assert patched["spec"]["predictor"]["canaryTrafficPercent"] == live["spec"]["predictor"]["canaryTrafficPercent"]
