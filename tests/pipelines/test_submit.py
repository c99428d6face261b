"""`ncfctl submit`: the kfp.Client calls it plans (no KFP server runs here: the arguments are what is tested), and
where the client sends them."""

from __future__ import annotations

import http.server
import inspect
import threading

import kfp
import pytest
import yaml

from ncf.errors import UserError
from pipelines.submit import KFP_API_PROXY_PATH, Call, Ref, execute, kfp_client, kfp_cron, plan

PARAMS = {"run_date": "2026-03-01", "epochs": 30}


def _plan(**changes):
    kwargs = dict(
        pipeline_name="ncf-recommender", pipeline_exists=False, version="v1", experiment="ncf", namespace="team",
        params=PARAMS, run=True, schedule="0 2 * * *", run_name="ncf-recommender-manual",
    )
    kwargs.update(changes)
    return plan("/tmp/pipeline.yaml", **kwargs)


def test_every_planned_call_matches_the_real_kfp_client_signature():
    for calls in (_plan(), _plan(pipeline_exists=True), _plan(run=False, schedule=None)):
        for call in calls:
            method = getattr(kfp.Client, call.method)
            inspect.signature(method).bind(None, **call.kwargs)  # raises on a wrong or missing argument


def test_a_new_pipeline_is_uploaded_then_versioned_run_and_scheduled():
    calls = _plan()
    assert [c.method for c in calls] == [
        "upload_pipeline", "upload_pipeline_version", "create_experiment", "run_pipeline", "create_recurring_run",
    ]
    upload, version, experiment, run, recurring = calls
    assert upload.kwargs["pipeline_name"] == "ncf-recommender" and upload.kwargs["namespace"] == "team"
    assert version.kwargs["pipeline_version_name"] == "v1" and version.kwargs["pipeline_id"] == Ref("pipeline_id")
    assert experiment.kwargs == {"name": "ncf", "namespace": "team"}
    assert run.kwargs["params"] == PARAMS and run.kwargs["version_id"] == Ref("version_id")
    assert run.kwargs["experiment_id"] == Ref("experiment_id") and run.kwargs["job_name"] == "ncf-recommender-manual"
    assert recurring.kwargs["cron_expression"] == "0 0 2 * * *"
    assert recurring.kwargs["max_concurrency"] == 1 and recurring.kwargs["no_catchup"] is True
    assert recurring.kwargs["params"] == PARAMS


def test_an_existing_pipeline_gets_a_new_version_only():
    methods = [c.method for c in _plan(pipeline_exists=True, run=False, schedule=None)]
    assert methods == ["get_pipeline_id", "upload_pipeline_version", "create_experiment"]


def test_cron_expressions():
    assert kfp_cron("0 2 * * *") == "0 0 2 * * *"  # the seed's 5-field (Airflow) form
    assert kfp_cron("30 0 2 * * 1") == "30 0 2 * * 1"
    with pytest.raises(UserError, match="expected a cron expression of 5 fields"):
        kfp_cron("daily")


def test_execute_passes_earlier_ids_into_later_calls():
    class Recorder:
        def __init__(self):
            self.calls = []

        def __getattr__(self, method):
            def record(**kwargs):
                self.calls.append((method, kwargs))
                return f"{method}-id"
            return record

    client = Recorder()
    ids = execute(client, [
        Call("upload_pipeline", {"pipeline_name": "p"}, "pipeline_id"),
        Call("upload_pipeline_version", {"pipeline_id": Ref("pipeline_id")}, "version_id"),
    ])
    assert ids == {"pipeline_id": "upload_pipeline-id", "version_id": "upload_pipeline_version-id"}
    assert client.calls[1] == ("upload_pipeline_version", {"pipeline_id": "upload_pipeline-id"})


def _kubeconfig(tmp_path, server: str) -> str:
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "laptop",
        "clusters": [{"name": "eks", "cluster": {"server": server}}],
        "users": [{"name": "agent", "user": {"token": "agent-token"}}, {"name": "me", "user": {"token": "my-token"}}],
        "contexts": [{"name": "group/ncf:agent", "context": {"cluster": "eks", "user": "agent"}},
                     {"name": "laptop", "context": {"cluster": "eks", "user": "me"}}],
    }))
    return str(path)


def test_without_a_host_the_kfp_api_is_reached_through_the_kube_contexts_api_server(tmp_path, monkeypatch):
    """CI on EKS: no KFP endpoint, no AWS key; the GitLab agent's kubeconfig context and the API server's Service
    proxy. A real HTTP server on 127.0.0.1 stands in for the API server and records what kfp.Client sends."""
    seen: list[tuple[str, str]] = []

    class APIServer(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization", "")))
            body = b"{}"
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), APIServer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("KUBECONFIG", _kubeconfig(tmp_path, f"http://127.0.0.1:{server.server_address[1]}"))
        client = kfp_client("", "", "group/ncf:agent", None)
        client.get_kfp_healthz()
    finally:
        server.shutdown()
    assert seen and all(auth == "Bearer agent-token" for _, auth in seen)
    assert {path for path, _ in seen} == {KFP_API_PROXY_PATH + "/apis/v2beta1/healthz"}
    assert KFP_API_PROXY_PATH == "/api/v1/namespaces/kubeflow/services/ml-pipeline:http/proxy"


def test_a_context_that_cannot_be_loaded_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", _kubeconfig(tmp_path, "http://127.0.0.1:9"))
    with pytest.raises(UserError, match="--kube-context nope"):
        kfp_client("", "", "nope", None)
