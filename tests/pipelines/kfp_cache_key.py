"""The cache key a KFP v2 backend computes for a task of a compiled pipeline, reproduced from its source.

kubeflow/pipelines 2.17.0, backend/src/v2:
- driver/cache.go `getFingerPrint`: CacheKey from the executor input's inputs and outputs, the output parameter
  types, the container's command + args as compiled (placeholders unresolved) and image, the PVC names.
- cacheutils/cache.go `GenerateCacheKey` / `GenerateFingerPrint`: input artifact names, input parameter values,
  output artifacts with the URI wiped (name, type, metadata), output parameter types, ContainerSpec; marshalled
  with protojson, re-marshalled by Go's encoding/json (sorted keys, compact, HTML-escaped), then sha256.
- driver/resolve.go `resolveInputParameter`: a `componentInputParameter` is the run's value (else the pipeline's
  default); a `runtimeValue.constant` equal to one of the pipeline-job placeholders becomes the run's value
  (`{{$.pipeline_job_schedule_time_utc}}`: the scheduled time, the creation time for a run nobody scheduled).
- driver/driver.go `provisionOutputs`: each output artifact is named after its output key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import yaml


@dataclasses.dataclass(frozen=True)
class Run:
    """What differs between two runs of the same compiled pipeline, as the driver sees it."""

    run_id: str
    created_utc: str  # RFC 3339
    scheduled_utc: str = ""  # recurring runs; manual runs fall back to the creation time
    parameters: dict[str, Any] = dataclasses.field(default_factory=dict)
    run_name: str = "ncf-recommender-run"


def _placeholders(run: Run, task: str) -> dict[str, str]:
    return {
        "{{$.pipeline_job_name}}": run.run_name,
        "{{$.pipeline_job_resource_name}}": run.run_name,
        "{{$.pipeline_job_uuid}}": run.run_id,
        "{{$.pipeline_task_name}}": task,
        "{{$.pipeline_job_create_time_utc}}": run.created_utc,
        "{{$.pipeline_job_schedule_time_utc}}": run.scheduled_utc or run.created_utc,
    }


def resolved_inputs(ir: str, task: str, run: Run) -> dict[str, Any]:
    """The input parameter values the driver hands `task` (a root-DAG task) in `run`."""
    spec = next(yaml.safe_load_all(ir))
    defaults = {name: p.get("defaultValue") for name, p in spec["root"]["inputDefinitions"]["parameters"].items()}
    values: dict[str, Any] = {}
    for name, source in spec["root"]["dag"]["tasks"][task]["inputs"].get("parameters", {}).items():
        if "componentInputParameter" in source:
            key = source["componentInputParameter"]
            values[name] = run.parameters.get(key, defaults[key])
        elif "runtimeValue" in source:
            constant = source["runtimeValue"]["constant"]
            values[name] = _placeholders(run, task).get(constant, constant) if isinstance(constant, str) else constant
        else:
            raise NotImplementedError(f"{task}.{name}: upstream outputs are not reproduced here ({source})")
    return values


def cache_key(ir: str, task: str, run: Run, input_artifact_names: dict[str, list[str]] | None = None) -> dict:
    """The CacheKey message (as protojson would write it) for `task` in `run`."""
    spec = next(yaml.safe_load_all(ir))
    task_spec = spec["root"]["dag"]["tasks"][task]
    component = spec["components"][task_spec["componentRef"]["name"]]
    container = spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]
    outputs = component.get("outputDefinitions", {})
    key: dict[str, Any] = {
        "inputArtifactNames": {k: {"artifactNames": v} for k, v in (input_artifact_names or {}).items()},
        "inputParameterValues": resolved_inputs(ir, task, run),
        "outputArtifactsSpec": {
            name: {"name": name, "type": {k: v for k, v in a["artifactType"].items() if k in ("schemaTitle", "schemaVersion")}}
            for name, a in outputs.get("artifacts", {}).items()
        },
        "outputParametersSpec": {name: p["parameterType"] for name, p in outputs.get("parameters", {}).items()},
        "containerSpec": {"image": container["image"], "cmdArgs": container.get("command", []) + container.get("args", [])},
    }
    return {k: v for k, v in key.items() if v}  # protojson leaves out empty maps


def fingerprint(key: dict) -> str:
    """sha256 of the key as Go's encoding/json writes it."""
    text = json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escaped)
    return hashlib.sha256(text.encode()).hexdigest()
