"""`ncfctl status`: what the platform did, at a glance -- every version of a registered model, why the gate did or
did not promote it, what data and code it came from, which one is `champion`, and what serves it.

    ncfctl status                                  # the demo's store: runs/demo/mlflow.db, model `ncf`
    ncfctl status --storage-root runs/other        # another local storage root (its sqlite store)
    ncfctl status --tracking-uri http://mlflow:5000 --model-name ncf --json

Everything comes from the registry's version tags (written by ncf/registry.lineage_tags and the gate: `run_date`,
`model_type`, `family`, `gate`, `gate.reason`, `gate.metric`, `gate.challenger_score`, `gate.champion_score`,
`gate.champion_version`, `gate.baseline_score`, `partition_uri`, `*fingerprint*`, `git_commit`, `pipeline_run_id`)
and its aliases; serving from the deploy step's local state file and the predictor's `GET /v2/models/<name>`
(its `versions`), and from the InferenceService's status through the Kubernetes API when one is configured.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ncf import registry
from ncf.errors import UserError, exit_on_user_error

# Gate decisions as `ncfctl status` names them.
FIRST, PROMOTED, REJECTED, UNGATED = "first", "promoted", "rejected", "not gated"


@dataclasses.dataclass
class VersionRecord:
    version: str
    registered_at: str  # ISO-8601, UTC
    run_date: str
    family: str
    model_type: str
    aliases: list[str]
    decision: str  # first | promoted | rejected | not gated
    reason: str
    gate_metric: str
    challenger_score: float | None
    champion_score: float | None  # the champion's score on this version's partition, when there was one
    champion_version: str | None
    baseline_score: float | None
    partition_uri: str
    fingerprints: dict[str, str]  # every `*fingerprint*` tag (data and package fingerprints)
    git_commit: str
    pipeline_run_id: str
    package_uri: str
    train_run_id: str

    @property
    def promoted(self) -> bool:
        return self.decision in (FIRST, PROMOTED)


def _score(tags: dict[str, str], key: str) -> float | None:
    try:
        return float(tags[key])
    except (KeyError, ValueError):
        return None


def _decision(tags: dict[str, str]) -> str:
    if tags.get("gate") == "passed":
        return PROMOTED if tags.get("gate.champion_version") else FIRST
    if tags.get("gate") == "rejected":
        return REJECTED
    return UNGATED


def _record(version, aliases: list[str]) -> VersionRecord:
    tags = dict(version.tags or {})
    registered = dt.datetime.fromtimestamp(version.creation_timestamp / 1000, dt.UTC)
    return VersionRecord(
        version=str(version.version), registered_at=registered.isoformat(timespec="seconds"),
        run_date=tags.get("run_date", ""), family=tags.get("family", ""), model_type=tags.get("model_type", ""),
        aliases=sorted(aliases), decision=_decision(tags), reason=tags.get("gate.reason", ""),
        gate_metric=tags.get("gate.metric", ""), challenger_score=_score(tags, "gate.challenger_score"),
        champion_score=_score(tags, "gate.champion_score"), champion_version=tags.get("gate.champion_version"),
        baseline_score=_score(tags, "gate.baseline_score"), partition_uri=tags.get("partition_uri", ""),
        fingerprints={k: v for k, v in sorted(tags.items()) if "fingerprint" in k},
        git_commit=tags.get("git_commit", ""), pipeline_run_id=tags.get("pipeline_run_id", ""),
        package_uri=tags.get("package_uri", ""), train_run_id=tags.get("train_run_id", ""))


def require_store(tracking_uri: str) -> None:
    """Refuse an embedded store that does not exist (opening it would create an empty one)."""
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri[len("sqlite:///"):]).exists():
        raise UserError(f"{tracking_uri}: no MLflow store there yet; run `ncfctl run` (or pass --tracking-uri / "
                        "--storage-root)")


def version_history(tracking_uri: str, model_name: str) -> list[VersionRecord]:
    """Every version of `model_name`, oldest first, with its tags read into a `VersionRecord`."""
    import mlflow

    client = registry.client(tracking_uri)
    try:
        model = client.get_registered_model(model_name)
    except mlflow.exceptions.MlflowException as exc:
        raise UserError(f"{model_name}: no such registered model in {tracking_uri}") from exc
    by_version: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    versions = client.search_model_versions(f"name='{model_name}'")
    return sorted((_record(v, by_version.get(str(v.version), [])) for v in versions), key=lambda r: int(r.version))


# ---- serving ---------------------------------------------------------------------------------------------------

def _get_json(url: str, timeout: float = 3.0) -> dict[str, Any]:
    with urllib.request.urlopen(urllib.request.Request(url), timeout=timeout) as response:
        return json.loads(response.read())


def local_serving(tracking_uri: str, model_name: str) -> dict[str, Any]:
    """The local predictor the deploy step started for this store: its URL and the version it reports."""
    from serving.deploy import DeployConfig, state_path

    path = state_path(DeployConfig(model_name=model_name), tracking_uri)
    if not path.exists():
        return {"state": "not deployed", "detail": f"no state file {path}"}
    state = json.loads(path.read_text())
    url = state.get("url", "")
    try:
        metadata = _get_json(f"{url}/v2/models/{model_name}")
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return {"state": "not running", "url": url, "pid": state.get("pid"),
                "detail": f"GET {url}/v2/models/{model_name}: {reason}"}
    versions = metadata.get("versions") or []
    return {"state": "serving", "url": url, "pid": state.get("pid"), "version": versions[0] if versions else None}


def cluster_serving(model_name: str, namespace: str, name: str) -> dict[str, Any]:
    """The InferenceService's readiness and the model version the deploy step annotated, via the Kubernetes API;
    `unreachable` (with the reason, one line) when there is no cluster or it does not answer."""
    from serving.deploy import ISVC_GROUP, ISVC_PLURAL, ISVC_VERSION, MODEL_VERSION_ANNOTATION, readiness

    where = f"{namespace}/{name}"
    try:
        from kubernetes import client
        from kubernetes import config as kube_config
        from kubernetes.config.config_exception import ConfigException

        try:
            kube_config.load_incluster_config()
        except ConfigException:
            kube_config.load_kube_config()
        configuration = client.Configuration.get_default_copy()
        configuration.retries = 0  # an unreachable API server answers "unreachable" in seconds
        api = client.CustomObjectsApi(client.ApiClient(configuration))
        obj = api.get_namespaced_custom_object(ISVC_GROUP, ISVC_VERSION, namespace, ISVC_PLURAL, name,
                                               _request_timeout=(3, 5))
    except Exception as exc:  # no kubeconfig, connection refused, 403, 404, ...: all say the same to a reader
        status = getattr(exc, "status", None)
        detail = f"HTTP {status} {getattr(exc, 'reason', '')}".strip() if status else str(exc).splitlines()[0]
        return {"state": "unreachable", "inference_service": where, "detail": detail[:200]}
    ready, why = readiness(obj)
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    return {"state": "ready" if ready else "not ready", "inference_service": where,
            "url": (obj.get("status") or {}).get("url"), "version": annotations.get(MODEL_VERSION_ANNOTATION),
            "detail": why}


# ---- output ----------------------------------------------------------------------------------------------------

def _fmt(score: float | None) -> str:
    return "-" if score is None else f"{score:.4f}"


def _short_partition(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1] if uri else "-"


def _serving_line(label: str, info: dict[str, Any], champion: str | None) -> str:
    state = info["state"]
    if state == "serving" or state == "ready":
        version = info.get("version")
        which = "" if version is None else f"v{version}" + (" (champion)" if version == champion else
                                                             f" (champion is v{champion})")
        where = info.get("url") or ""
        pid = f", pid {info['pid']}" if info.get("pid") else ""
        return f"  {label}: {state} {which} at {where}{pid}".rstrip()
    detail = f" ({info['detail']})" if info.get("detail") else ""
    return f"  {label}: {state}{detail}"


def render_text(model_name: str, tracking_uri: str, versions: list[VersionRecord], serving: dict[str, Any]) -> str:
    champion = next((v.version for v in versions if registry.CHAMPION in v.aliases), None)
    metric = next((v.gate_metric for v in reversed(versions) if v.gate_metric), "")
    lines = [f"model {model_name}   store {tracking_uri}   champion {'v' + champion if champion else 'none'}"
             f"   gate metric {metric or '-'}", ""]
    header = ("version", "run date", "registered (UTC)", "type", "decision", "challenger", "champion", "baseline",
              "partition", "fingerprint", "commit", "pipeline run")
    rows = []
    for v in versions:
        name = f"v{v.version}" + (f" [{','.join(v.aliases)}]" if v.aliases else "")
        champ = _fmt(v.champion_score) + (f" (v{v.champion_version})" if v.champion_version else "")
        fingerprint = next(iter(v.fingerprints.values()), "")[:12] or "-"
        rows.append((name, v.run_date or "-", v.registered_at.replace("T", " ")[:16],
                     "/".join(filter(None, (v.family, v.model_type))) or "-", v.decision.upper()
                     if v.promoted else v.decision, _fmt(v.challenger_score), champ, _fmt(v.baseline_score),
                     _short_partition(v.partition_uri), fingerprint, v.git_commit[:8] or "-",
                     v.pipeline_run_id or "-"))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    lines += ["", "decisions:"] + [f"  v{v.version} {v.decision}: {v.reason or '-'}" for v in versions]
    lines += ["", "serving:", _serving_line("local predictor", serving["local"], champion),
              _serving_line("InferenceService", serving["kserve"], champion)]
    return "\n".join(lines)


def collect(tracking_uri: str, model_name: str, namespace: str, inference_service: str) -> dict[str, Any]:
    require_store(tracking_uri)
    versions = version_history(tracking_uri, model_name)
    return {
        "model_name": model_name,
        "tracking_uri": tracking_uri,
        "champion": next((v.version for v in versions if registry.CHAMPION in v.aliases), None),
        "versions": versions,
        "serving": {"local": local_serving(tracking_uri, model_name),
                    "kserve": cluster_serving(model_name, namespace, inference_service)},
    }


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    from serving.deploy import DeployConfig

    defaults = DeployConfig()
    parser = argparse.ArgumentParser(prog="ncfctl status", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-name", default=registry.DEFAULT_MODEL_NAME, help="registered model (default: ncf)")
    parser.add_argument("--tracking-uri", default="", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                                                          "else the sqlite store of --storage-root)")
    parser.add_argument("--storage-root", default="runs/demo", help="local storage root whose store to read "
                                                                   "(default: runs/demo, the demo's)")
    parser.add_argument("--namespace", default=defaults.namespace, help="namespace of the InferenceService")
    parser.add_argument("--inference-service", default=defaults.inference_service, help="InferenceService name")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    args = parser.parse_args(argv)
    tracking_uri = registry.resolve_tracking_uri(args.tracking_uri, args.storage_root)
    status = collect(tracking_uri, args.model_name, args.namespace, args.inference_service)
    if args.json:
        print(json.dumps({**status, "versions": [dataclasses.asdict(v) for v in status["versions"]]}, indent=2))
    else:
        print(render_text(args.model_name, tracking_uri, status["versions"], status["serving"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
