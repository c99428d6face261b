"""Deploy the champion: a local predictor on 127.0.0.1, or a KServe InferenceService.

- local: start `serving.server` serving `models:/<name>@champion` as a detached background process (it outlives
  this step) when none runs, or hot-swap the running one (POST /v2/repository/models/<name>/load re-resolves the
  alias) and check it now serves the champion. A state file (pid, ports, url) sits next to the embedded MLflow
  store (or in `state_dir`). The port: `port`, else $NCF_PREDICTOR_PORT (how `ncfctl run --port` reaches this
  step through kfp.local, whose subprocesses inherit the environment), else 8080.
- kserve: create the InferenceService, or patch its storageUri to the champion's package in S3 (the rest of the
  spec belongs to the manifests, manifests/base/inferenceservice.yaml), then wait until it is Ready with the new
  generation; the step fails if that does not happen within `timeout_s`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from ncf import registry, storage
from ncf.config import add_arguments, from_namespace, param
from ncf.errors import UserError, exit_on_user_error

REPO_ROOT = Path(__file__).resolve().parents[1]
ISVC_GROUP, ISVC_VERSION, ISVC_PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
MODEL_VERSION_ANNOTATION = "ncf.io/model-version"
PORT_ENV = "NCF_PREDICTOR_PORT"
DEFAULT_PORT = 8080


@dataclasses.dataclass
class DeployConfig:
    model_name: str = param(registry.DEFAULT_MODEL_NAME, "registered model whose champion is deployed", pipeline=True)
    tracking_uri: str = param("", "MLflow tracking/registry URI (default: $MLFLOW_TRACKING_URI)", pipeline=True)
    serving_target: str = param("local", "local: predictor on 127.0.0.1; kserve: InferenceService", pipeline=True,
                                choices=["local", "kserve"])
    namespace: str = param("ncf", "kserve: namespace of the InferenceService (manifests/ deploy into `ncf`)")
    inference_service: str = param("ncf-recommender", "kserve: InferenceService name (also the URL's model name)")
    storage_uri: str = param("", "kserve: package URI to serve (default: the champion's package in the artifact store)")
    runtime: str = param("ncf-predictor", "kserve: ServingRuntime to use; empty: a custom predictor container")
    timeout_s: float = param(600.0, "kserve: how long to wait for Ready; local: for the predictor to come up")
    port: int = param(0, f"local: REST port, gRPC on port + 1 (0: ${PORT_ENV}, else {DEFAULT_PORT})")
    state_dir: str = param("", "local: where the state file goes (default: beside the sqlite store, else ./.ncf)")


@dataclasses.dataclass
class DeployResult:
    endpoint: str
    version: str
    action: str  # started | swapped | created | patched


def _champion(tracking_uri: str, model_name: str) -> str:
    champion = registry.alias_version(tracking_uri, model_name, registry.CHAMPION)
    if champion is None:
        raise UserError(f"{model_name}: no version has the alias 'champion' yet ({tracking_uri}); run the gate first")
    return str(champion.version)


# ---- local ----------------------------------------------------------------------------------------------------

def state_path(config: DeployConfig, tracking_uri: str) -> Path:
    if config.state_dir:
        base = Path(config.state_dir)
    elif tracking_uri.startswith("sqlite:///"):
        base = Path(tracking_uri[len("sqlite:///"):]).parent / "serving"
    else:
        base = Path(".ncf") / "serving"
    return base / f"{config.model_name}-local.json"


def _http(method: str, url: str, body: dict | None = None, timeout: float = 10.0) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def served_version(url: str, model_name: str) -> str:
    """The version a running predictor serves (an unknown user costs nothing: popularity fallback)."""
    body = {"instances": [{"user_id": "__deploy_probe__", "k": 1}]}
    return str(_http("POST", f"{url}/v1/models/{model_name}:predict", body)["model_version"])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def _running(state: dict) -> bool:
    if not _alive(int(state.get("pid", -1))):
        return False
    try:
        return _http("GET", f"{state['url']}/v2/health/live", timeout=3).get("live") is True
    except (OSError, ValueError):
        return False


def start_local_server(model_uri: str, *, model_name: str, port: int, grpc_port: int, log_path: Path,
                       tracking_uri: str | None = None, timeout_s: float = 120.0, extra_args: list[str] = ()) -> int:
    """Start `serving.server` detached (own session, so it outlives the caller); wait until ready; return pid."""
    command = [sys.executable, "-m", "serving.server", "--model-uri", model_uri, "--model-name", model_name,
               "--http-port", str(port), "--grpc-port", str(grpc_port), *extra_args]
    if tracking_uri:
        command += ["--tracking-uri", tracking_uri]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                cwd=REPO_ROOT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            errors = [line for line in log_path.read_text(errors="replace").splitlines() if line.startswith("error: ")]
            why = errors[-1][len("error: "):] if errors else "no error line"
            raise UserError(f"predictor exited with {proc.returncode}: {why} (log: {log_path})")
        try:
            if _http("GET", f"{url}/v2/models/{model_name}/ready", timeout=2).get("ready"):
                return proc.pid
        except (OSError, ValueError):
            pass
        time.sleep(0.3)
    stop_local_server(proc.pid)
    raise UserError(f"predictor not ready on {url} after {timeout_s:.0f}s; see {log_path}")


def stop_local_server(pid: int, timeout_s: float = 15.0) -> None:
    """SIGTERM the predictor's process group (it runs in its own session), SIGKILL if it lingers."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and _alive(pid):
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child
        except ChildProcessError:
            pass
        time.sleep(0.1)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)


def local_port(config: DeployConfig) -> int:
    text = str(config.port or os.environ.get(PORT_ENV) or DEFAULT_PORT)
    if not text.isdigit() or not 0 < int(text) < 65535:
        raise UserError(f"port: expected 1..65534 (gRPC takes port + 1), got {text!r}")
    return int(text)


def deploy_local(config: DeployConfig, tracking_uri: str, version: str) -> DeployResult:
    path = state_path(config, tracking_uri)
    state = json.loads(path.read_text()) if path.exists() else {}
    if state and _running(state) and state.get("tracking_uri") != tracking_uri:
        stop_local_server(int(state["pid"]))  # it serves another store's champion: replace it
    elif state and _running(state):
        try:
            _http("POST", f"{state['url']}/v2/repository/models/{config.model_name}/load", timeout=config.timeout_s)
        except urllib.error.HTTPError as exc:
            raise UserError(f"hot swap on {state['url']} failed ({exc.code}): "
                            f"{exc.read().decode(errors='replace')}") from exc
        serving = served_version(state["url"], config.model_name)
        if serving != version:
            raise UserError(f"{state['url']} serves version {serving} after the swap, expected champion {version}")
        return DeployResult(state["url"], version, "swapped")
    from serving.server import check_ports_free

    port = local_port(config)
    check_ports_free("127.0.0.1", {"predictor HTTP": port, "predictor gRPC": port + 1})
    url = f"http://127.0.0.1:{port}"
    log_path = path.with_suffix(".log")
    pid = start_local_server(f"models:/{config.model_name}@{registry.CHAMPION}", model_name=config.model_name,
                             port=port, grpc_port=port + 1, log_path=log_path,
                             tracking_uri=tracking_uri, timeout_s=config.timeout_s)
    state = {"pid": pid, "port": port, "grpc_port": port + 1, "url": url, "log": str(log_path),
             "model_name": config.model_name, "tracking_uri": tracking_uri,
             "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    storage.write_json(path, state)
    return DeployResult(url, version, "started")


# ---- kserve ---------------------------------------------------------------------------------------------------

def inference_service_manifest(name: str, namespace: str, storage_uri: str, *, runtime: str = "ncf-predictor",
                               image: str | None = None, model_version: str = "",
                               service_account: str = "ncf-serving") -> dict[str, Any]:
    """The InferenceService for the predictor (pure). `runtime` set: a model of format `ncf-package` served by that
    ServingRuntime; empty: a custom predictor container running the serving image with STORAGE_URI."""
    if not storage.is_s3(storage_uri) and not storage_uri.startswith(("gs://", "pvc://", "https://")):
        raise UserError(f"storage_uri: {storage_uri!r} is not a URI a KServe storage initializer can fetch (s3://...)")
    predictor: dict[str, Any] = {"serviceAccountName": service_account, "minReplicas": 1}
    probe = {"httpGet": {"path": f"/v1/models/{name}", "port": 8080}, "initialDelaySeconds": 5, "periodSeconds": 5}
    if runtime:
        predictor["model"] = {"modelFormat": {"name": "ncf-package", "version": "1"}, "runtime": runtime,
                              "storageUri": storage_uri, "readinessProbe": probe}
    else:
        if image is None:
            from pipelines.images import SERVING_IMAGE

            image = SERVING_IMAGE
        predictor["containers"] = [{
            "name": "kserve-container",
            "image": image,
            "args": [f"--model-name={name}", "--model-uri=/mnt/models", "--host=0.0.0.0", "--http-port=8080"],
            "env": [{"name": "STORAGE_URI", "value": storage_uri}],
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "readinessProbe": probe,
        }]
    return {
        "apiVersion": f"{ISVC_GROUP}/{ISVC_VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": name, "namespace": namespace,
                     "annotations": {MODEL_VERSION_ANNOTATION: model_version} if model_version else {}},
        "spec": {"predictor": predictor},
    }


def apply_arguments(existing: dict | None, manifest: dict) -> tuple[str, dict[str, Any]]:
    """What to send: ("create", full manifest) when absent; else ("patch", merge patch) changing only what the deploy
    step owns: the package URI (model or container env) and the model-version annotation."""
    if existing is None:
        return "create", manifest
    predictor = manifest["spec"]["predictor"]
    if "model" in predictor:
        spec_patch = {"predictor": {"model": {"storageUri": predictor["model"]["storageUri"]}}}
    else:  # a merge patch replaces lists whole: send the container list
        spec_patch = {"predictor": {"containers": predictor["containers"]}}
    return "patch", {"metadata": {"annotations": manifest["metadata"]["annotations"]}, "spec": spec_patch}


def readiness(obj: dict) -> tuple[bool, str]:
    """(ready, why not) for an InferenceService: Ready=True for the current generation."""
    status = obj.get("status") or {}
    generation = (obj.get("metadata") or {}).get("generation")
    observed = status.get("observedGeneration")
    if generation is not None and observed is not None and observed < generation:
        return False, f"generation {generation} not observed yet (at {observed})"
    for cond in status.get("conditions") or []:
        if cond.get("type") == "Ready":
            if cond.get("status") == "True":
                return True, ""
            return False, cond.get("message") or cond.get("reason") or "Ready is not True"
    return False, "no Ready condition yet"


def deploy_kserve(config: DeployConfig, tracking_uri: str, version: str) -> DeployResult:
    from kubernetes import client
    from kubernetes import config as kube_config
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException

    storage_uri = config.storage_uri or registry.package_artifact_uri(tracking_uri, config.model_name, version)
    manifest = inference_service_manifest(config.inference_service, config.namespace, storage_uri,
                                          runtime=config.runtime, model_version=version)
    try:
        kube_config.load_incluster_config()
    except ConfigException:
        try:
            kube_config.load_kube_config()
        except (ConfigException, OSError) as exc:
            raise UserError(f"kserve: no Kubernetes cluster configured (in-cluster or kubeconfig): {exc}") from exc
    api = client.CustomObjectsApi()
    ident = dict(group=ISVC_GROUP, version=ISVC_VERSION, namespace=config.namespace, plural=ISVC_PLURAL)
    try:
        try:
            existing = api.get_namespaced_custom_object(name=config.inference_service, **ident)
        except ApiException as exc:
            if exc.status != 404:
                raise
            existing = None
        action, body = apply_arguments(existing, manifest)
        if action == "create":
            api.create_namespaced_custom_object(body=body, **ident)
        else:
            api.patch_namespaced_custom_object(name=config.inference_service, body=body, **ident)
        deadline, why = time.monotonic() + config.timeout_s, "not checked"
        while time.monotonic() < deadline:
            obj = api.get_namespaced_custom_object(name=config.inference_service, **ident)
            ready, why = readiness(obj)
            if ready:
                url = (obj.get("status") or {}).get("url") or ""
                return DeployResult(url, version, "created" if action == "create" else "patched")
            time.sleep(5)
    except ApiException as exc:
        raise UserError(f"kserve: {config.namespace}/{config.inference_service}: API error {exc.status} "
                        f"{exc.reason}: {exc.body}") from exc
    raise UserError(f"kserve: {config.namespace}/{config.inference_service} not Ready after {config.timeout_s:.0f}s "
                    f"({why})")


# ---- the step -------------------------------------------------------------------------------------------------

def run(config: DeployConfig) -> DeployResult:
    tracking_uri = registry.resolve_tracking_uri(config.tracking_uri)
    version = _champion(tracking_uri, config.model_name)
    if config.serving_target == "local":
        return deploy_local(config, tracking_uri, version)
    if config.serving_target == "kserve":
        return deploy_kserve(config, tracking_uri, version)
    raise UserError(f"serving_target: {config.serving_target!r}; choose local or kserve")


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="ncfctl deploy", description=__doc__.split("\n")[0])
    add_arguments(parser, DeployConfig)
    result = run(from_namespace(DeployConfig, parser.parse_args(argv)))
    print(f"{result.action}: champion v{result.version} at {result.endpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
