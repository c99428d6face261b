"""The family seam's contract, for every registered family: fit on a tiny partition through the train step, export,
load; `score_all` and `score_candidates` agree; evaluation, the gate and the real KServe predictor over HTTP rank
exactly as an independent ranking of `score_all` does. A package written before families existed loads and serves.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
import torch

from ncf import gate, storage
from ncf.evaluate import evaluate
from ncf.families import COMPOSITES, FAMILIES
from ncf.package import load_package
from ncf.ports import free_port
from ncf.train import TrainConfig, run
from tests.tiny_data import make_partition, write_partition

OLD_PACKAGE = Path(__file__).resolve().parents[1] / "data" / "package-before-families"
# Each family's few settings, small enough for seconds; NCF as a seed ensemble of 2 pretrained NeuMF models.
SETTINGS = {
    "ncf": dict(epochs=2, batch_size=64, factor_num=8, num_layers=2, ensemble=2, patience=1),
    "ease": dict(ease_lambda=5.0, ease_recency_weight=16.0),  # history weights travel in the package
    "ials": dict(ials_factors=8, ials_iterations=4, ials_recency_weight=4.0),
    "popularity": {},
    # made by model selection: the three candidates above, tuned once each, weighed on validation (always exported)
    "blend": dict(family="ncf", candidates="GMF,ease,ials", blend="on", tune_trials=1, tune_trials_ncf=1, epochs=2,
                  batch_size=64, factor_num=8, ensemble=2, patience=1, ease_lambda=5.0, ease_recency_weight=16.0,
                  ials_factors=8, ials_iterations=4),
}
EVERY_FAMILY = [*FAMILIES, *COMPOSITES]


def test_every_registered_family_is_covered():
    assert set(SETTINGS) == set(EVERY_FAMILY)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("families")


@pytest.fixture(scope="module")
def partition(root):
    p = make_partition(num_users=40, num_items=90, per_user=10, num_neg=20, seed=7,
                       uri=str(root / "data" / "dt=2026-11-27"))
    p.stats["fingerprint"] = "partition-fingerprint-7"  # the partition's content fingerprint (stats.json)
    write_partition(p, p.uri)
    return p


@pytest.fixture(scope="module")
def packages(root, partition):
    """Family name -> its package, trained on first use."""
    trained: dict[str, str] = {}

    def package(family: str) -> str:
        if family not in trained:
            config = TrainConfig(partition_uri=partition.uri, output_uri=str(root / "models" / family),
                                 progress="off", **{"family": family, "candidates": "", **SETTINGS[family]})
            trained[family] = run(config).model_uri
        return trained[family]

    return package


@pytest.fixture(scope="module")
def predictor(root):
    """A real predictor process serving whatever package was last published at one path (hot swap on publish)."""
    from serving import deploy

    served = root / "served"
    state: dict = {}

    def serve(package_uri: str) -> str:
        with storage.local_copy(package_uri) as local:
            storage.publish_dir(local, served)
        if not state:
            port = free_port()
            state["pid"] = deploy.start_local_server(str(served), model_name="ncf", port=port, grpc_port=free_port(),
                                                     log_path=root / "predictor.log")
            state["url"] = f"http://127.0.0.1:{port}"
        else:
            response = requests.post(f"{state['url']}/v2/repository/models/ncf/load", timeout=120)
            assert response.status_code == 200, response.text
        return state["url"]

    yield serve
    if state:
        deploy.stop_local_server(state["pid"])


def _independent_ranks(scores: np.ndarray, partition, seen: list[set[int]]):
    """Pessimistic ranks of each test row's held-out item, computed directly from a [users, items] score table."""
    scores = np.nan_to_num(scores, nan=-np.inf)
    sampled, full = [], []
    for u, pos, negatives in zip(partition.test_users, partition.test_items, partition.test_negatives, strict=True):
        row = scores[u]
        sampled.append(int((row[negatives] >= row[pos]).sum()))
        competitors = [i for i in range(len(row)) if i != pos and i not in seen[u]]
        full.append(int((row[competitors] >= row[pos]).sum()))
    return np.asarray(sampled), np.asarray(full)


def _check_top_k(prediction: dict, scores: np.ndarray, item_ids: list[str], seen: set[int], k: int) -> None:
    """The predictor's top-k is the k best unseen items of `scores` (any order among exact ties)."""
    expected = np.sort(np.delete(scores, sorted(seen)))[::-1][:k]
    got = np.asarray(prediction["scores"])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    index = {item: i for i, item in enumerate(item_ids)}
    returned = [index[item] for item in prediction["item_ids"]]
    assert not set(returned) & seen and len(set(returned)) == len(returned) == k
    np.testing.assert_allclose(scores[returned], got, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", EVERY_FAMILY)
def test_fit_export_load_score_evaluate_gate_and_serve(family, packages, partition, predictor):
    uri = packages(family)
    package = load_package(uri)
    assert package.family == family and package.config["family"] == family
    # EASE's recency weights (alone or as a blend member) travel in the package, which older readers must refuse
    weighted = any(name.endswith("history_weights") for name in package.weights)
    assert weighted == (family in ("ease", "blend")) and package.config["schema_version"] == (2 if weighted else 1)
    assert package.config["partition_fingerprint"] == "partition-fingerprint-7"
    scorer = package.scorer
    users = torch.arange(partition.num_users)

    # score_all and score_candidates agree, per-user and shared candidate lists alike
    table = scorer.score_all(users)
    assert table.shape == (partition.num_users, partition.num_items) and table.dtype == torch.float32
    candidates = torch.from_numpy(np.random.default_rng(0).integers(0, partition.num_items, (len(users), 7)))
    torch.testing.assert_close(scorer.score_candidates(users, candidates), table.gather(1, candidates),
                               rtol=1e-5, atol=1e-5)
    shared = torch.tensor([3, 0, 89, 41])
    torch.testing.assert_close(scorer.score_candidates(users[:5], shared), table[:5, shared], rtol=1e-5, atol=1e-5)
    if scorer.inner_product == "exact":  # the product is the score up to a per-user constant
        offset = table - scorer.user_vectors() @ scorer.item_vectors().t()
        torch.testing.assert_close(offset, offset[:, :1].expand_as(offset), rtol=1e-4, atol=1e-4)
    elif scorer.inner_product == "partial":
        assert scorer.user_vectors().shape[0] == partition.num_users
        assert scorer.item_vectors().shape[0] == partition.num_items

    # evaluation and the gate rank exactly as an independent ranking of the score table
    seen = [set(partition.train_items[partition.train_users == u].tolist()) for u in range(partition.num_users)]
    sampled, full = _independent_ranks(table.numpy(), partition, seen)
    result = evaluate(scorer, partition, 10, full_eval_users=0)
    np.testing.assert_array_equal(result.hr_per_user, (sampled < 10).astype(float))
    np.testing.assert_allclose(result.full_ndcg_per_user, (full < 10) / np.log2(full + 2.0))
    assert package.metrics["hr@10"] == pytest.approx(result.hr)  # the train step's own final evaluation
    assert package.metrics["full_ndcg@10"] == pytest.approx(result.full_ndcg)
    assert package.metrics["family"] == family and "val_ndcg@10" in package.metrics
    (scores,) = gate.score_packages([package], partition, "full_ndcg@10", full_eval_users=0)
    assert scores.metrics == pytest.approx(result.metrics())
    assert scores.coverage.native == partition.num_users

    # the predictor over HTTP: top-k of the same scores, seen items excluded; unknown users get popularity
    url = predictor(uri)
    body = requests.post(f"{url}/v1/models/ncf:predict", timeout=30, json={"instances": [
        {"user_id": "u3", "k": 5}, {"user_id": "u11", "k": 8, "exclude_seen": False}, {"user_id": "nobody", "k": 3},
    ]}).json()
    first, second, stranger = body["predictions"]
    item_ids = package.item_ids
    _check_top_k(first, table[3].numpy(), item_ids, seen[3], 5)
    _check_top_k(second, table[11].numpy(), item_ids, set(), 8)
    assert stranger["fallback"] and stranger["scores"] == sorted(package.popularity.tolist(), reverse=True)[:3]
    v2 = requests.post(f"{url}/v2/models/ncf/infer", timeout=30, json={"inputs": [
        {"name": "user_id", "datatype": "BYTES", "shape": [1], "data": ["u3"]},
        {"name": "k", "datatype": "INT32", "shape": [1], "data": [5]}]}).json()
    assert next(o for o in v2["outputs"] if o["name"] == "item_ids")["data"] == first["item_ids"]


def test_a_package_written_before_families_loads_and_serves(tmp_path, predictor):
    """tests/ncf/data/package-before-families was written by the trainer before this seam existed (an ensemble of
    2 NeuMF models, no `family` in config.json): it loads as NCF, scores like its own torch modules, and serves."""
    from safetensors.torch import load_file

    from ncf.models import ModelSpec, build_model

    local = shutil.copytree(OLD_PACKAGE, tmp_path / "old")
    package = load_package(local)
    assert "family" not in package.config and package.family == "ncf"
    model = build_model(ModelSpec.from_dict(package.config))
    model.load_state_dict(load_file(local / "weights.safetensors"))
    model.eval()
    num_users, num_items = package.config["num_users"], package.config["num_items"]
    with torch.no_grad():
        forward = torch.stack([model(torch.full((num_items,), u), torch.arange(num_items)) for u in range(num_users)])
    torch.testing.assert_close(package.scorer.score_all(torch.arange(num_users)), forward, rtol=1e-5, atol=1e-6)

    url = predictor(str(local))
    (prediction,) = requests.post(f"{url}/v1/models/ncf:predict", timeout=30,
                                  json={"instances": [{"user_id": package.user_ids[2], "k": 4}]}).json()["predictions"]
    _check_top_k(prediction, forward[2].numpy(), package.item_ids, set(package.seen_items(2).tolist()), 4)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_fit_on_the_validation_split_is_one_call(family, partition, tmp_path, monkeypatch):
    """What a tuner does per trial: fit with some settings on (train, validation) and read the validation score;
    no package, no checkpoint, nothing written."""
    from ncf.families import get
    from ncf.families.base import FitContext, Runtime
    from ncf.splits import fit_data

    chosen = get(family)
    config = TrainConfig(partition_uri=partition.uri, output_uri="unused", family=family,
                         **{**SETTINGS[family], "patience": 1} if family == "ncf" else SETTINGS[family])
    data = fit_data(partition, validation=True, seed=42)
    monkeypatch.chdir(tmp_path)  # anything written to a relative path would land here
    result = chosen.fit(data, chosen.settings(config), FitContext(Runtime(torch.device("cpu")), refit=False))
    assert 0.0 <= result.metrics["val_ndcg@10"] <= result.metrics["val_hr@10"] <= 1.0
    assert list(tmp_path.iterdir()) == []


def test_a_closed_form_family_logs_to_mlflow(partition, tmp_path):
    import mlflow

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = run(TrainConfig(partition_uri=partition.uri, output_uri=str(tmp_path / "models" / "ease"),
                             family="ease", candidates="", ease_lambda=5.0, tracking_uri=tracking,
                             experiment="families", progress="off"))
    client = mlflow.MlflowClient(tracking)
    logged = client.get_run(result.mlflow_run_id).data
    assert logged.params["family"] == "ease" and logged.params["ease_lambda"] == "5.0" and "lr" not in logged.params
    assert logged.metrics["full_ndcg_at_10"] == pytest.approx(result.metrics["full_ndcg@10"])
    assert logged.metrics["val_ndcg"] == pytest.approx(result.metrics["val_ndcg@10"])
    assert {a.path for a in client.list_artifacts(result.mlflow_run_id, "package")} >= {
        "package/weights.safetensors", "package/config.json"}
