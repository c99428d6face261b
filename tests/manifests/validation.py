"""Offline validation of Kubernetes objects, shared by the manifest tests and the deploy-step InferenceService test.

- Core kinds: `kubernetes-validate` strict schemas for the Kubernetes version the docs target (unknown fields
  are errors, as with `kubectl apply --validate=strict`).
- Custom resources (KServe, Kubeflow Trainer, Spark Operator): the CRDs' `openAPIV3Schema` from
  `../shared/schemas/`, made strict the way the API server prunes: an object schema that lists `properties` and
  neither `additionalProperties` nor `x-kubernetes-preserve-unknown-fields` rejects other fields. Their
  `metadata` is checked against the core ObjectMeta schema. (CEL `x-kubernetes-validations` rules are not
  evaluated offline.)
- Every object: names are RFC 1123 (what the API server enforces; the JSON schemas do not).
"""

from __future__ import annotations

import copy
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.conftest import REPO_ROOT, SHARED

KUBERNETES_VERSION = "1.32"
SCHEMAS_DIR = SHARED / "schemas"
MANIFESTS = REPO_ROOT / "manifests"
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Kinds whose names the API server checks as DNS labels (63 chars, no dots) rather than subdomains.
_LABEL_NAMED_KINDS = {"Namespace", "Service", "InferenceService"}


class ManifestError(AssertionError):
    pass


def kustomization_dirs() -> list[Path]:
    """Every kustomization under manifests/ that is meant to be applied (overlays and jobs; base via overlays)."""
    return sorted(p.parent for p in MANIFESTS.rglob("kustomization.yaml"))


def kubectl() -> str:
    """kubectl next to the interpreter (where scripts/ensure_kubectl.sh installs the pinned one) or on PATH.

    Missing, it fails the test rather than skipping it: `make test` installs it, so a missing one is a broken setup.
    """
    beside = Path(sys.executable).with_name("kubectl")
    found = str(beside) if beside.exists() else shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is neither next to the interpreter nor on PATH: `bash scripts/ensure_kubectl.sh "
                    f"{sys.executable}` installs it (`make test` runs that)", pytrace=False)
    return found


@functools.cache
def build(directory: Path) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize <dir>` -> the rendered objects (cached: each directory is built once per session)."""
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ManifestError(f"kubectl kustomize {directory.relative_to(REPO_ROOT)} failed:\n{result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def describe(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata", {})
    return f"{obj.get('kind')}/{meta.get('name')}"


def _strict(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _strict(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema, for every served version of every CRD in ../shared/schemas."""
    schemas: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(SCHEMAS_DIR.rglob("*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        if not crd or crd.get("kind") != "CustomResourceDefinition":
            continue
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version.get("served"):
                schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                schema.setdefault("properties", {}).pop("status", None)
                schemas[(f"{group}/{version['name']}", kind)] = _strict(schema)
    return schemas


def crd_kinds_known() -> bool:
    return SCHEMAS_DIR.is_dir() and bool(crd_schemas())


@functools.cache
def _object_meta_validator() -> jsonschema.Draft202012Validator:
    from importlib.resources import files

    from referencing import Registry, Resource

    root = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}.0-local-strict"
    definitions = json.loads((root / "_definitions.json").read_text())
    registry = Resource.from_contents(definitions) @ Registry()
    ref = f"{definitions['$id']}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    return jsonschema.Draft202012Validator({"$ref": ref}, registry=registry)


def _check_name(obj: dict[str, Any]) -> None:
    name = obj.get("metadata", {}).get("name", "")
    if obj.get("kind") in _LABEL_NAMED_KINDS:
        ok = len(name) <= 63 and _DNS_LABEL.match(name)
    else:
        ok = len(name) <= 253 and _DNS_SUBDOMAIN.match(name)
    if not ok:
        raise ManifestError(f"{describe(obj)}: metadata.name {name!r} is not a valid Kubernetes name")


# API groups served by the CRDs in ../shared/schemas (Kubernetes' own groups are validated as core kinds).
CUSTOM_GROUPS = {"serving.kserve.io", "trainer.kubeflow.org", "sparkoperator.k8s.io"}


def is_custom_resource(obj: dict[str, Any]) -> bool:
    return obj["apiVersion"].rpartition("/")[0] in CUSTOM_GROUPS


def validate_custom_resource(obj: dict[str, Any]) -> None:
    schema = crd_schemas().get((obj["apiVersion"], obj["kind"]))
    if schema is None:
        raise ManifestError(f"{describe(obj)}: no CRD for {obj['apiVersion']} {obj['kind']} in {SCHEMAS_DIR}")
    errors = [(list(e.path), e.message) for e in jsonschema.Draft202012Validator(schema).iter_errors(obj)]
    errors += [(["metadata", *e.path], e.message) for e in _object_meta_validator().iter_errors(obj.get("metadata", {}))]
    if errors:
        lines = [f"  {'.'.join(map(str, path)) or '<root>'}: {message[:300]}" for path, message in sorted(errors, key=str)[:10]]
        raise ManifestError(f"{describe(obj)} does not match its CRD schema:\n" + "\n".join(lines))


def validate_core(obj: dict[str, Any]) -> None:
    import kubernetes_validate

    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(map(str, exc.path)) or "<root>"
        raise ManifestError(f"{describe(obj)}: {path}: {exc.message[:300]}") from None
    except kubernetes_validate.SchemaNotFoundError as exc:
        raise ManifestError(f"{describe(obj)}: {exc.message}") from None


def validate(obj: dict[str, Any]) -> None:
    """Raise ManifestError naming the object and the field when `obj` would not be accepted."""
    _check_name(obj)
    if is_custom_resource(obj):
        validate_custom_resource(obj)
    else:
        validate_core(obj)
