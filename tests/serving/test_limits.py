"""Request handling at the edges, over real HTTP: any Content-Type carries JSON, the commands users paste work in a
real shell, body size (413) and id length (400) caps, and readiness that follows the model's state."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import urllib.parse

import pytest
import requests

from ncf.ports import free_port
from pipelines import local_run
from serving import deploy
from tests.conftest import REPO_ROOT
from tests.mlflow_fixtures import make_package, oracle_model
from tests.tiny_data import make_partition


def _predict_url(served) -> str:
    return local_run.predict_url(served.url, "ncf")


def _shell(command: str) -> dict:
    """Run a pasted command line through bash, as a user would; its stdout must be the JSON answer."""
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_json_body_is_accepted_whatever_the_content_type(served):
    body = json.dumps({"instances": [{"user_id": "u3", "k": 4}]})
    want = requests.post(_predict_url(served), data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert want.status_code == 200, want.text
    for content_type in ("application/x-www-form-urlencoded", "text/plain", None):
        headers = {"Content-Type": content_type} if content_type else {}
        got = requests.post(_predict_url(served), data=body.encode(), headers=headers, timeout=10)
        assert got.status_code == 200, (content_type, got.text)
        assert got.json()["predictions"][0]["item_ids"] == want.json()["predictions"][0]["item_ids"]
    v2 = {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["u3"]}]}
    got = requests.post(f"{served.url}/v2/models/ncf/infer", data=json.dumps(v2),
                        headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=10)
    assert got.status_code == 200, got.text


def test_a_form_body_that_is_not_json_is_400(served):
    resp = requests.post(_predict_url(served), data={"user_id": "u3"}, timeout=10)  # a real form encoding
    assert resp.status_code == 400 and "Unrecognized request format" in resp.json()["error"], resp.text


def test_the_curl_line_the_demo_prints_works_in_a_shell(served):
    command = local_run.curl_command(_predict_url(served), "u3")
    assert command.startswith("curl -s ")
    (prediction,) = _shell(command)["predictions"]
    assert prediction["user_id"] == "u3" and len(prediction["item_ids"]) == 5 and not prediction["fallback"]
    # An id a shell would mangle unquoted still arrives intact.
    (odd,) = _shell(local_run.curl_command(_predict_url(served), "it's $HOME"))["predictions"]
    assert odd["user_id"] == "it's $HOME" and odd["fallback"]


def test_the_cluster_guide_query_works_in_a_shell(served):
    text = (REPO_ROOT / "docs" / "cluster.md").read_text()
    command = re.search(r"^curl -s localhost:8081/v1/models/ncf-recommender:predict \\\n.*$", text, re.M).group(0)
    # Only where it points changes: the port-forward's address and the InferenceService's model name.
    command = command.replace("localhost:8081/v1/models/ncf-recommender", f"{served.url}/v1/models/ncf")
    (prediction,) = _shell(command)["predictions"]
    assert prediction["user_id"] == "1" and len(prediction["item_ids"]) == 10


def test_an_oversized_body_is_413_before_it_is_read(served):
    big = json.dumps({"instances": [{"user_id": "u1", "candidates": ["i1"] * 300_000}]}).encode()  # ~2 MB
    assert len(big) > 1 << 20
    resp = requests.post(_predict_url(served), data=big, headers={"Content-Type": "application/json"}, timeout=30)
    assert resp.status_code == 413 and "at most 1048576" in resp.json()["error"], resp.text[:300]
    # Chunked (no Content-Length): counted as it arrives.
    resp = requests.post(_predict_url(served), data=iter([big[i:i + 65536] for i in range(0, len(big), 65536)]),
                         headers={"Content-Type": "application/json"}, timeout=30)
    assert resp.status_code == 413, resp.text[:300]
    # A body under the cap, chunked, is replayed to the handler whole.
    small = json.dumps({"instances": [{"user_id": "u1", "k": 2}]}).encode()
    resp = requests.post(_predict_url(served), data=iter([small[:10], small[10:]]), timeout=10)
    assert resp.status_code == 200 and len(resp.json()["predictions"][0]["item_ids"]) == 2, resp.text


def test_a_lying_content_length_is_refused(served):
    parsed = urllib.parse.urlsplit(served.url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    conn.putrequest("POST", "/v1/models/ncf:predict")
    conn.putheader("Content-Length", str(50 << 20))
    conn.endheaders()  # no body sent: the cap answers from the header alone
    resp = conn.getresponse()
    assert resp.status == 413 and "at most" in json.loads(resp.read())["error"]
    conn.close()


@pytest.mark.parametrize("path", ["v1", "v2"])
def test_an_overlong_id_is_400_and_not_echoed(served, path):
    user = "u" * 5000
    if path == "v1":
        resp = requests.post(_predict_url(served), json={"instances": [{"user_id": "u1"}, {"user_id": user}]},
                             timeout=10)
        field = "instances[1].user_id"
    else:
        body = {"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [1], "data": [user]}]}
        resp = requests.post(f"{served.url}/v2/models/ncf/infer", json=body, timeout=10)
        field = "inputs.user_id[0]"
    assert resp.status_code == 400, resp.text[:300]
    assert resp.json()["error"].endswith(f"{field}: 5000 characters, at most 256") and len(resp.text) < 300
    resp = requests.post(_predict_url(served), json={"instances": [{"user_id": "u1", "candidates": ["i1", user]}]},
                         timeout=10)
    assert resp.status_code == 400 and "instances[0].candidates[1]: 5000 characters" in resp.text


def test_readiness_follows_the_model_after_unload_and_load(tmp_path):
    partition = make_partition(num_users=12, num_items=30, per_user=4, num_neg=5)
    package = make_package(str(tmp_path / "pkg"), partition, oracle_model(partition, 0.0))
    port = free_port()
    pid = deploy.start_local_server(package, model_name="ncf", port=port, grpc_port=free_port(),
                                    log_path=tmp_path / "server.log", timeout_s=120)
    url = f"http://127.0.0.1:{port}"
    try:
        assert requests.get(f"{url}/v2/health/ready", timeout=5).json() == {"ready": True}
        assert requests.post(f"{url}/v2/repository/models/ncf/unload", timeout=10).status_code == 200
        assert requests.get(f"{url}/v2/health/ready", timeout=5).status_code == 503
        assert requests.get(f"{url}/v2/models/ncf/ready", timeout=5).status_code == 404
        assert requests.get(f"{url}/v2/health/live", timeout=5).json()["live"] is True  # alive, just not ready
        assert requests.post(f"{url}/v2/repository/models/ncf/load", timeout=60).status_code == 200
        assert requests.get(f"{url}/v2/health/ready", timeout=5).json() == {"ready": True}
        assert requests.get(f"{url}/v2/models/ncf/ready", timeout=5).json()["ready"] is True
    finally:
        deploy.stop_local_server(pid)
