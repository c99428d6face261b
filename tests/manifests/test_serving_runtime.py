"""The predictor container as the cluster starts it: the serving image's ENTRYPOINT with the ServingRuntime's
args (KServe substitutes {{.Name}} with the InferenceService name and puts the model package in /mnt/models),
probed on the paths the InferenceService's readinessProbe and the image's HEALTHCHECK use."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

from ncf.ports import free_port
from tests.conftest import REPO_ROOT
from tests.manifests.validation import MANIFESTS, build
from tests.mlflow_fixtures import stop_process_group, wait_http


def _tiny_package(directory: Path) -> Path:
    from ncf.families.ncf import export
    from ncf.models import NCF, ModelSpec
    from ncf.package import package_tables, save_package
    from tests.tiny_data import make_partition

    partition = make_partition()
    model = NCF(ModelSpec("NeuMF", partition.num_users, partition.num_items, factor_num=8, num_layers=2))
    save_package(directory, export(model.eval()), **package_tables(partition), metrics={"ndcg@10": 0.0})
    return directory


def _container_command(model_dir: Path, port: int) -> tuple[list[str], str]:
    objects = build(MANIFESTS / "overlays" / "local")
    (isvc,) = [o for o in objects if o["kind"] == "InferenceService"]
    (runtime,) = [o for o in objects if o["kind"] == "ServingRuntime"]
    (container,) = runtime["spec"]["containers"]
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", (REPO_ROOT / "docker" / "serving.Dockerfile").read_text(), re.M)
    command = container.get("command") or json.loads(entrypoint.group(1))
    name = isvc["metadata"]["name"]
    args = [arg.replace("{{.Name}}", name) for arg in container["args"]]
    # Only where it listens changes: the package directory KServe would mount, and a free local port.
    args = [a.replace("/mnt/models", str(model_dir)).replace("--host=0.0.0.0", "--host=127.0.0.1")
            .replace("--http-port=8080", f"--http-port={port}") for a in args]
    command = [sys.executable if c == "python" else c for c in command]
    return [*command, *args, f"--grpc-port={free_port()}"], name


def _get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status


def test_predictor_starts_with_the_runtime_args_and_answers_its_probes(tmp_path):
    port = free_port()
    command, name = _container_command(_tiny_package(tmp_path / "models"), port)
    isvc = next(o for o in build(MANIFESTS / "overlays" / "local") if o["kind"] == "InferenceService")
    readiness = isvc["spec"]["predictor"]["model"]["readinessProbe"]["httpGet"]["path"]
    healthcheck = re.search(r"http://127\.0\.0\.1:8080(/[\w/]+)", (REPO_ROOT / "docker" / "serving.Dockerfile").read_text())
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    try:
        wait_http(f"http://127.0.0.1:{port}{readiness}", proc, log, what="predictor")
        assert _get(f"http://127.0.0.1:{port}{healthcheck.group(1)}") == 200
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/models/{name}:predict",
            data=json.dumps({"instances": [{"user_id": "u1", "k": 3}]}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            (prediction,) = json.load(response)["predictions"]
        assert len(prediction["item_ids"]) == 3
    finally:
        stop_process_group(proc)
