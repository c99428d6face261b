"""SageMaker's endpoint contract, over real HTTP: the serving image's ENTRYPOINT with SageMaker's `serve` argument
(on a free 127.0.0.1 port instead of 8080) answers GET /ping and POST /invocations like /v1/models/<name>:predict."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from ncf.config import add_arguments, from_namespace
from ncf.ports import free_port
from serving.sagemaker_routes import SAGEMAKER_COMMAND, SAGEMAKER_MODEL_DIR, SAGEMAKER_PORT, sagemaker_argv
from serving.server import ServeConfig
from tests.conftest import REPO_ROOT
from tests.mlflow_fixtures import make_package, oracle_model, stop_process_group, wait_http
from tests.tiny_data import make_partition


def _parse(argv: list[str]) -> ServeConfig:
    parser = argparse.ArgumentParser()
    add_arguments(parser, ServeConfig)
    return from_namespace(ServeConfig, parser.parse_args(argv))


def test_serve_defaults_follow_sagemaker_and_later_flags_win(monkeypatch):
    monkeypatch.delenv("MODEL_NAME", raising=False)
    config = _parse(sagemaker_argv([]))
    assert (config.model_uri, config.host, config.http_port) == (SAGEMAKER_MODEL_DIR, "0.0.0.0", SAGEMAKER_PORT)
    assert config.sagemaker_routes and not config.enable_grpc and config.model_name == "ncf"
    monkeypatch.setenv("MODEL_NAME", "recs")
    config = _parse(sagemaker_argv(["--http-port=9000", "--model-uri=/elsewhere"]))
    assert (config.model_name, config.http_port, config.model_uri) == ("recs", 9000, "/elsewhere")
    assert not _parse([]).sagemaker_routes, "plain KServe mode does not add the SageMaker routes"


def _call(method: str, url: str, body: bytes | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=body, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


@pytest.fixture(scope="module")
def sagemaker_endpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("sagemaker-serve")
    partition = make_partition(num_users=20, num_items=40, per_user=5, num_neg=5)
    package = make_package(str(root / "model"), partition, oracle_model(partition, 0.0))
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])$", (REPO_ROOT / "docker" / "serving.Dockerfile").read_text(), re.M)
    command = [sys.executable if c == "python" else c for c in json.loads(entrypoint.group(1))]
    port = free_port()
    # Only where it listens and reads changes: a free local port and the package instead of /opt/ml/model.
    command += [SAGEMAKER_COMMAND, f"--model-uri={package}", "--host=127.0.0.1", f"--http-port={port}"]
    log = root / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "MODEL_NAME": "recs"})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/ping", proc, log, what="predictor")
        yield url, partition
    finally:
        stop_process_group(proc)


def test_ping_reports_the_loaded_model(sagemaker_endpoint):
    url, _ = sagemaker_endpoint
    status, body = _call("GET", f"{url}/ping")
    assert status == 200 and body["status"] == "ready" and body["model"] == "recs" and body["model_version"]


def test_invocations_answers_like_the_v1_predict_endpoint(sagemaker_endpoint):
    url, partition = sagemaker_endpoint
    request = json.dumps({"instances": [{"user_id": "u2", "k": 3}, {"user_id": "nobody", "k": 2}]}).encode()
    status, body = _call("POST", f"{url}/invocations", request)
    assert status == 200, body
    known, unknown = body["predictions"]
    assert known["item_ids"][0] == f"i{partition.test_items[2]}"  # the oracle ranks the held-out item first
    assert len(known["item_ids"]) == len(known["scores"]) == 3 and not known["fallback"]
    assert len(unknown["item_ids"]) == 2 and unknown["fallback"]
    assert _call("POST", f"{url}/v1/models/recs:predict", request) == (status, body)


@pytest.mark.parametrize(("body", "message"), [
    (b'{"instances": [{"k": 3}]}', "user_id"),
    (b'{"rows": []}', "instances"),
    (b"not json", "Unrecognized request format"),
])
def test_invocations_rejects_a_bad_request_with_400_and_the_reason(sagemaker_endpoint, body, message):
    url, _ = sagemaker_endpoint
    status, answer = _call("POST", f"{url}/invocations", body)
    assert status == 400 and message in answer["error"], answer


def test_grpc_is_off_and_kserve_routes_stay(sagemaker_endpoint):
    url, _ = sagemaker_endpoint
    assert _call("GET", f"{url}/v2/health/ready")[0] == 200  # the image's HEALTHCHECK path still answers
    assert _call("GET", f"{url}/ping")[0] == 200


def test_the_documented_invocations_query_works_in_a_shell(sagemaker_endpoint):
    url, _ = sagemaker_endpoint
    text = (REPO_ROOT / "docs" / "serving.md").read_text()
    command = re.search(r"`(curl -d '[^`]*' localhost:8085/invocations)`", text).group(1)
    done = subprocess.run(["bash", "-c", command.replace("localhost:8085", url)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    (prediction,) = json.loads(done.stdout)["predictions"]
    assert prediction["user_id"] == "196" and len(prediction["item_ids"]) == 5
