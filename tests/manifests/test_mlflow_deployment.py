"""The MLflow Deployment as the cluster runs it: its init container and server container commands, with the
environment Kubernetes would give them (Secret / ConfigMap values, `$(VAR)` expansion), against a real
PostgreSQL; then the probe path and the Host-header allow-list, as in-cluster clients reach the Service."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from ncf.ports import free_port
from tests.manifests.validation import MANIFESTS, build
from tests.mlflow_fixtures import postgres_url, stop_process_group  # noqa: F401

pytestmark = [
    pytest.mark.slow,  # schema migrations on PostgreSQL + a 2-worker server: ~30 s on an idle 2-core machine
]

IN_CLUSTER_HOST = "mlflow.ncf.svc.cluster.local:5000"


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are substituted, others left as written."""
    return re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def _container_env(container: dict[str, Any], objects, secrets: dict[str, dict[str, str]],
                   config_overrides: dict[str, dict[str, str]]) -> dict[str, str]:
    maps = {o["metadata"]["name"]: {**o["data"], **config_overrides.get(o["metadata"]["name"].rsplit("-", 1)[0], {})}
            for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["namespace"] == "ncf"}
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(maps[source["configMapRef"]["name"]])
        elif source["secretRef"]["name"] in secrets or not source["secretRef"].get("optional"):
            env.update(secrets[source["secretRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = _expand(var["value"], env)
        elif "secretKeyRef" in var["valueFrom"]:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
        else:
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = maps[ref["name"]][ref["key"]]
    return env


def _request(url: str, host: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Host": host, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read().decode()
            return response.status, json.loads(text) if text.startswith("{") else {}
    except urllib.error.HTTPError as exc:
        return exc.code, {}


def test_mlflow_deployment_runs_against_postgresql_and_answers_in_cluster_hosts(postgres_url, tmp_path):  # noqa: F811
    objects = build(MANIFESTS / "overlays" / "local")
    deployment = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
    pod = deployment["spec"]["template"]["spec"]
    (init,), (server,) = pod["initContainers"], pod["containers"]
    # What a cluster would hold: the Secret (the test cluster trusts local connections, any password works) and
    # the overlay's ConfigMaps with this PostgreSQL's address in place of the in-cluster Service.
    db = urlparse(postgres_url)
    secrets = {"mlflow-db": {"username": db.username, "password": "not-checked-by-trust-auth"}}
    overrides = {"mlflow-db-connection": {"host": db.hostname, "port": str(db.port), "database": db.path.lstrip("/")}}
    base_env = {"PATH": os.environ["PATH"], "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    bin_dir = Path(sys.executable).parent

    def argv(container: dict[str, Any], env: dict[str, str]) -> list[str]:
        words = [_expand(w, env) for w in [*container["command"], *container.get("args", [])]]
        return [str(bin_dir / words[0]), *words[1:]]

    init_env = _container_env(init, objects, secrets, overrides)
    assert init_env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://postgres:")
    subprocess.run(argv(init, init_env), env={**base_env, **init_env}, check=True, capture_output=True, timeout=180)

    env = _container_env(server, objects, secrets, overrides)
    port = free_port()
    words = [w.replace("--host=0.0.0.0", "--host=127.0.0.1").replace("--port=5000", f"--port={port}")
             for w in argv(server, env)]
    assert f"--port={port}" in words, "the server's port flag changed: update this test"
    log = tmp_path / "mlflow.log"
    with log.open("w") as out:
        proc = subprocess.Popen(words, env={**base_env, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    probe = server["readinessProbe"]["httpGet"]["path"]
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"mlflow server exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            try:
                if _request(url + probe, "10.244.1.7:5000")[0] == 200:  # kubelet probes with the pod IP
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"not healthy after 120 s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        status, body = _request(url + "/api/2.0/mlflow/experiments/create", IN_CLUSTER_HOST, {"name": "k8s-test"})
        assert status == 200, log.read_text()[-3000:]
        status, body = _request(url + f"/api/2.0/mlflow/experiments/get?experiment_id={body['experiment_id']}",
                                IN_CLUSTER_HOST)
        root = env["MLFLOW_DEFAULT_ARTIFACT_ROOT"]
        assert status == 200 and body["experiment"]["artifact_location"].startswith(root)
        assert _request(url + "/api/2.0/mlflow/experiments/search?max_results=5", "attacker.example.com")[0] == 403
    finally:
        stop_process_group(proc)
