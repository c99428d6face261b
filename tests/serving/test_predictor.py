"""The predictor over real HTTP and gRPC: V1, V2, metadata, errors (400s), fallback, exclusion, metrics, hot swap."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests

from ncf import registry
from ncf.package import load_package
from serving.recommender import Recommender
from tests.mlflow_fixtures import assert_top_k, reference_ranking

_RECOMMENDERS: dict[str, Recommender] = {}


def expected(served, version: str, user_id: str, k: int = 10, exclude_seen: bool = True, candidates=None):
    """The answer computed in-process from the package the server says it serves, by the same `Recommender`."""
    if version not in _RECOMMENDERS:
        _RECOMMENDERS[version] = Recommender(load_package(served.packages[version]))
    rec = _RECOMMENDERS[version]
    return rec.recommend([rec.query(user_id, k, exclude_seen, candidates)])[0]


def reference(served, version: str, user_id: str, exclude_seen: bool = True, candidates=None):
    """The same answer computed without the serving code (`reference_ranking`: plain forward + exclusion + argsort),
    so a fault shared by the predictor and `Recommender` cannot hide."""
    return reference_ranking(load_package(served.packages[version]), user_id, exclude_seen, candidates)


def v1(served, *instances, **body):
    return requests.post(f"{served.url}/v1/models/ncf:predict", json=body or {"instances": list(instances)},
                         timeout=10)


def test_v1_top_k_matches_the_package(served):
    resp = v1(served, {"user_id": "u3", "k": 5}, {"user_id": "u7"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    first, second = body["predictions"]
    want = expected(served, body["model_version"], "u3", 5)
    assert first["item_ids"] == want.item_ids and not first["fallback"]
    assert np.allclose(first["scores"], want.scores, rtol=1e-5)
    assert_top_k(first["item_ids"], first["scores"], reference(served, body["model_version"], "u3"), 5)
    assert_top_k(second["item_ids"], second["scores"], reference(served, body["model_version"], "u7"), 10)


def test_exclude_seen(served):
    rec = Recommender(load_package(next(iter(served.packages.values()))))
    seen = {rec.item_ids[i] for i in rec.seen(rec.user_index["u5"])}
    body = v1(served, {"user_id": "u5", "k": 100, "exclude_seen": False}, {"user_id": "u5", "k": 100}).json()
    with_seen, without_seen = body["predictions"]
    assert with_seen["item_ids"] == expected(served, body["model_version"], "u5", 100, False).item_ids
    assert without_seen["item_ids"] == expected(served, body["model_version"], "u5", 100, True).item_ids
    assert seen & set(with_seen["item_ids"]) and not seen & set(without_seen["item_ids"])
    for pred, exclude in ((with_seen, False), (without_seen, True)):
        assert_top_k(pred["item_ids"], pred["scores"], reference(served, body["model_version"], "u5", exclude), 100)


def test_candidates_are_ranked_and_respected(served):
    candidates = ["i3", "i50", "i199", "i7"]
    resp = v1(served, {"user_id": "u1", "k": 3, "candidates": candidates, "exclude_seen": False})
    body = resp.json()
    (pred,) = body["predictions"]
    want = expected(served, body["model_version"], "u1", 3, False, candidates)
    assert pred["item_ids"] == want.item_ids and set(pred["item_ids"]) <= set(candidates)
    assert_top_k(pred["item_ids"], pred["scores"], reference(served, body["model_version"], "u1", False, candidates), 3)


def test_unknown_user_gets_popular_items_marked_as_fallback(served):
    (pred,) = v1(served, {"user_id": "never-seen", "k": 4}).json()["predictions"]
    popularity = np.bincount(served.partition.train_items, minlength=served.partition.num_items)
    top = [f"i{i}" for i in np.argsort(-popularity, kind="stable")[:4]]
    assert pred["fallback"] is True and pred["item_ids"] == top
    assert pred["scores"] == sorted(popularity, reverse=True)[:4]


@pytest.mark.parametrize(("body", "message"), [
    ({"instances": [{"user_id": "u1", "k": 0}]}, "instances[0].k: must be between 1 and"),
    ({"instances": [{"user_id": "u1", "k": 10_000}]}, "instances[0].k: must be between 1 and"),
    ({"instances": [{"user_id": "u1", "k": "10"}]}, "instances[0].k: expected an integer"),
    ({"instances": [{"user_id": "u1", "k": True}]}, "instances[0].k: expected an integer"),
    ({"instances": [{"user_id": 196}]}, "instances[0].user_id: expected a non-empty string"),
    ({"instances": [{"k": 3}]}, "instances[0].user_id: required"),
    ({"instances": [{"user_id": "u1", "exclude_seen": "yes"}]}, "instances[0].exclude_seen"),
    ({"instances": [{"user_id": "u1", "candidates": ["i1", "nope", "nada"]}]},
     "instances[0].candidates: 2 unknown item id(s): 'nope', 'nada'"),
    ({"instances": [{"user_id": "u1", "candidates": "i1"}]}, "instances[0].candidates: expected a non-empty list"),
    ({"instances": [{"user_id": "u1", "cnadidates": ["i1"]}]}, "unknown field(s) ['cnadidates']"),
    ({"instances": [{"user_id": "u1"}] * 65}, "at most 64 per request"),
    ({"instances": []}, "instances: expected a non-empty list"),
    ({"instances": "u1"}, "instances"),
    ({"users": ["u1"]}, 'expected a JSON object {"instances"'),
    (["u1"], 'expected a JSON object {"instances"'),
])
def test_v1_invalid_requests_are_400_with_a_message(served, body, message):
    resp = requests.post(f"{served.url}/v1/models/ncf:predict", json=body, timeout=10)
    assert resp.status_code == 400, resp.text
    assert message in resp.json()["error"]


def test_v1_malformed_json_is_400(served):
    resp = requests.post(f"{served.url}/v1/models/ncf:predict", data=b"{not json",
                         headers={"Content-Type": "application/json"}, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]


def _v2_body(users, k=None, request_id="req-1"):
    inputs = [{"name": "user_id", "datatype": "BYTES", "shape": [len(users)], "data": users}]
    if k is not None:
        inputs.append({"name": "k", "datatype": "INT32", "shape": [1], "data": [k]})
    return {"id": request_id, "inputs": inputs}


def test_v2_infer(served):
    resp = requests.post(f"{served.url}/v2/models/ncf/infer", json=_v2_body(["u2", "stranger"], k=3), timeout=10)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["id"] == "req-1" and body["model_name"] == "ncf"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["item_ids"]["shape"] == [2, 3] and outputs["scores"]["datatype"] == "FP32"
    assert outputs["fallback"]["data"] == [False, True]
    want = expected(served, body["model_version"], "u2", 3)
    assert outputs["item_ids"]["data"][:3] == want.item_ids
    assert_top_k(outputs["item_ids"]["data"][:3], outputs["scores"]["data"][:3],
                 reference(served, body["model_version"], "u2"), 3)


@pytest.mark.parametrize(("body", "message"), [
    ({"inputs": [{"name": "user_id", "datatype": "INT32", "shape": [1], "data": [1]}]}, "datatype must be BYTES"),
    ({"inputs": [{"name": "users", "datatype": "BYTES", "shape": [1], "data": ["u1"]}]}, "unknown input(s) ['users']"),
    ({"inputs": [{"name": "user_id", "datatype": "BYTES", "shape": [3], "data": ["u1"]}]}, "inputs.user_id"),
    (_v2_body(["u1", "u2"], k=0), "inputs[0].k: must be between 1 and"),
    ({"inputs": "u1"}, "invalid request body"),
])
def test_v2_invalid_requests_are_400_with_a_message(served, body, message):
    resp = requests.post(f"{served.url}/v2/models/ncf/infer", json=body, timeout=10)
    assert resp.status_code == 400, resp.text
    assert message in resp.json()["error"]


def test_grpc_infer(served):
    import grpc
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as pb
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc

    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = pb.ModelInferRequest(model_name="ncf", id="grpc-1", inputs=[
            pb.ModelInferRequest.InferInputTensor(name="user_id", datatype="BYTES", shape=[2],
                                                  contents=pb.InferTensorContents(bytes_contents=[b"u4", b"x"])),
            pb.ModelInferRequest.InferInputTensor(name="k", datatype="INT32", shape=[1],
                                                  contents=pb.InferTensorContents(int_contents=[2])),
        ])
        response = stub.ModelInfer(request, timeout=10)
        assert response.id == "grpc-1"
        outputs = {o.name: o for o in response.outputs}
        assert list(outputs["item_ids"].shape) == [2, 2]
        ids = [b.decode() for b in outputs["item_ids"].contents.bytes_contents]
        assert ids[:2] == expected(served, response.model_version, "u4", 2).item_ids
        assert_top_k(ids[:2], list(outputs["scores"].contents.fp32_contents)[:2],
                     reference(served, response.model_version, "u4"), 2)
        assert list(outputs["fallback"].contents.bool_contents) == [False, True]
        bad = pb.ModelInferRequest(model_name="ncf", inputs=[pb.ModelInferRequest.InferInputTensor(
            name="user_id", datatype="BYTES", shape=[1], contents=pb.InferTensorContents(bytes_contents=[b"u1"])),
            pb.ModelInferRequest.InferInputTensor(name="k", datatype="INT32", shape=[1],
                                                  contents=pb.InferTensorContents(int_contents=[-1]))])
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(bad, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "k: must be between" in err.value.details()


def test_metadata_health_and_metrics(served):
    meta = requests.get(f"{served.url}/v2/models/ncf", timeout=5).json()
    assert [i["name"] for i in meta["inputs"]] == ["user_id", "k", "exclude_seen"]
    assert [o["name"] for o in meta["outputs"]] == ["item_ids", "scores", "fallback"]
    assert requests.get(f"{served.url}/v2/health/live", timeout=5).json()["live"] is True
    assert requests.get(f"{served.url}/v2/models/ncf/ready", timeout=5).json()["ready"] is True
    names = ('ncf_recommendations_total{kind="model",model_name="ncf"}',
             'ncf_recommendations_total{kind="fallback",model_name="ncf"}', 'ncf_invalid_requests_total{model_name="ncf"}')

    def counts() -> list[float]:
        lines = requests.get(f"{served.url}/metrics", timeout=5).text.splitlines()
        return [next(float(ln.rsplit(" ", 1)[1]) for ln in lines if ln.startswith(name + " ")) for name in names]

    before = counts()
    v1(served, {"user_id": "u1"}, {"user_id": "nobody-knows"}, {"user_id": "u2"})
    requests.post(f"{served.url}/v1/models/ncf:predict", json={"instances": [{"user_id": "u1", "k": 0}]}, timeout=5)
    assert [after - was for after, was in zip(counts(), before, strict=True)] == [2, 1, 1]
    assert "request_predict_seconds" in requests.get(f"{served.url}/metrics", timeout=5).text  # KServe's histograms


def test_hot_swap_under_load_has_zero_failed_requests(served):
    """The deploy step hot-swaps the running predictor to the new champion while clients keep calling it."""
    from serving import deploy

    current = deploy.served_version(served.url, "ncf")
    target = next(v for v in served.packages if v != current)
    failures, versions, stop = [], [], threading.Event()

    def client():
        session = requests.Session()
        while not stop.is_set():
            try:
                sent = time.monotonic()
                resp = session.post(f"{served.url}/v1/models/ncf:predict",
                                    json={"instances": [{"user_id": "u9", "k": 5}]}, timeout=10)
                if resp.status_code != 200:
                    failures.append(f"{resp.status_code}: {resp.text}")
                else:
                    versions.append((sent, resp.json()["model_version"]))
            except requests.RequestException as exc:
                failures.append(repr(exc))

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        registry.set_alias(served.tracking_uri, "ncf", registry.CHAMPION, target)
        result = deploy.run(served.config)
        swapped_at = time.monotonic()
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert result.action == "swapped" and result.version == target
    assert failures == []
    assert len(versions) > 20 and min(versions)[1] == current
    # Every request sent after the swap returned is answered by the new champion.
    assert {version for sent, version in versions if sent > swapped_at} == {target}
